//! Flag sets as typed newtypes.
//!
//! Each set keeps unknown bits: a kernel newer than this crate may offer bits
//! we do not name, and they must round-trip unchanged.

use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign};

macro_rules! flag_set {
    (
        $(#[$meta:meta])*
        $name:ident($repr:ty) { $($flag:ident = $bit:expr),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub $repr);

        impl $name {
            $(
                #[doc = concat!("`", stringify!($flag), "`")]
                pub const $flag: $name = $name($bit);
            )*
            /// No bits set.
            pub const EMPTY: $name = $name(0);
            /// Every named flag with its name.
            pub const NAMED: &'static [(&'static str, $name)] = &[$((stringify!($flag), $name::$flag)),*];

            /// The raw bits.
            pub const fn bits(self) -> $repr { self.0 }
            /// Whether every bit of `other` is set.
            pub const fn contains(self, other: $name) -> bool { self.0 & other.0 == other.0 }
            /// Bits set in both.
            pub const fn intersection(self, other: $name) -> $name { $name(self.0 & other.0) }
            /// Bits set in either.
            pub const fn union(self, other: $name) -> $name { $name(self.0 | other.0) }
            /// Bits in `self` but not in `other`.
            pub const fn difference(self, other: $name) -> $name { $name(self.0 & !other.0) }
        }

        impl BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name { self.union(rhs) }
        }

        impl BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: $name) { *self = self.union(rhs); }
        }

        impl BitAnd for $name {
            type Output = $name;
            fn bitand(self, rhs: $name) -> $name { self.intersection(rhs) }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut rest = self.0;
                let mut first = true;
                write!(f, "{}(", stringify!($name))?;
                for (label, flag) in Self::NAMED {
                    if flag.0 != 0 && self.contains(*flag) && rest & flag.0 != 0 {
                        if !first { f.write_str(" | ")?; }
                        f.write_str(label)?;
                        rest &= !flag.0;
                        first = false;
                    }
                }
                if rest != 0 {
                    if !first { f.write_str(" | ")?; }
                    write!(f, "{:#x}", rest)?;
                }
                f.write_str(")")
            }
        }
    };
}

flag_set! {
    /// INIT capability flags: `flags | flags2 << 32` of `fuse_init_in`/`fuse_init_out`.
    InitFlags(u64) {
        ASYNC_READ = 1 << 0, POSIX_LOCKS = 1 << 1, FILE_OPS = 1 << 2, ATOMIC_O_TRUNC = 1 << 3,
        EXPORT_SUPPORT = 1 << 4, BIG_WRITES = 1 << 5, DONT_MASK = 1 << 6, SPLICE_WRITE = 1 << 7,
        SPLICE_MOVE = 1 << 8, SPLICE_READ = 1 << 9, FLOCK_LOCKS = 1 << 10,
        HAS_IOCTL_DIR = 1 << 11, AUTO_INVAL_DATA = 1 << 12, DO_READDIRPLUS = 1 << 13,
        READDIRPLUS_AUTO = 1 << 14, ASYNC_DIO = 1 << 15, WRITEBACK_CACHE = 1 << 16,
        NO_OPEN_SUPPORT = 1 << 17, PARALLEL_DIROPS = 1 << 18, HANDLE_KILLPRIV = 1 << 19,
        POSIX_ACL = 1 << 20, ABORT_ERROR = 1 << 21, MAX_PAGES = 1 << 22,
        CACHE_SYMLINKS = 1 << 23, NO_OPENDIR_SUPPORT = 1 << 24, EXPLICIT_INVAL_DATA = 1 << 25,
        MAP_ALIGNMENT = 1 << 26, SUBMOUNTS = 1 << 27, HANDLE_KILLPRIV_V2 = 1 << 28,
        SETXATTR_EXT = 1 << 29, INIT_EXT = 1 << 30, INIT_RESERVED = 1 << 31,
        SECURITY_CTX = 1 << 32, HAS_INODE_DAX = 1 << 33, CREATE_SUPP_GROUP = 1 << 34,
        HAS_EXPIRE_ONLY = 1 << 35, DIRECT_IO_ALLOW_MMAP = 1 << 36, PASSTHROUGH = 1 << 37,
        NO_EXPORT_SUPPORT = 1 << 38, HAS_RESEND = 1 << 39, ALLOW_IDMAP = 1 << 40,
        OVER_IO_URING = 1 << 41, REQUEST_TIMEOUT = 1 << 42,
    }
}

impl InitFlags {
    /// Combines the two 32-bit halves of an INIT message.
    pub const fn from_halves(flags: u32, flags2: u32) -> InitFlags {
        InitFlags(flags as u64 | (flags2 as u64) << 32)
    }
    /// The low half (`flags`).
    pub const fn low(self) -> u32 {
        self.0 as u32
    }
    /// The high half (`flags2`).
    pub const fn high(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

flag_set! {
    /// `FOPEN_*`: flags of `fuse_open_out.open_flags`.
    FopenFlags(u32) {
        DIRECT_IO = 1 << 0, KEEP_CACHE = 1 << 1, NONSEEKABLE = 1 << 2, CACHE_DIR = 1 << 3,
        STREAM = 1 << 4, NOFLUSH = 1 << 5, PARALLEL_DIRECT_WRITES = 1 << 6,
        PASSTHROUGH = 1 << 7,
    }
}

flag_set! {
    /// `FATTR_*`: which fields of `fuse_setattr_in` are valid.
    SetattrValid(u32) {
        MODE = 1 << 0, UID = 1 << 1, GID = 1 << 2, SIZE = 1 << 3, ATIME = 1 << 4,
        MTIME = 1 << 5, FH = 1 << 6, ATIME_NOW = 1 << 7, MTIME_NOW = 1 << 8,
        LOCKOWNER = 1 << 9, CTIME = 1 << 10, KILL_SUIDGID = 1 << 11,
    }
}

flag_set! {
    /// `FUSE_WRITE_*`: flags of `fuse_write_in.write_flags`.
    WriteFlags(u32) {
        CACHE = 1 << 0, LOCKOWNER = 1 << 1, KILL_SUIDGID = 1 << 2,
    }
}

flag_set! {
    /// `FUSE_FSYNC_*`: flags of `fuse_fsync_in.fsync_flags`.
    FsyncFlags(u32) {
        FDATASYNC = 1 << 0,
    }
}

flag_set! {
    /// `FUSE_GETATTR_*`: flags of `fuse_getattr_in.getattr_flags`.
    GetattrFlags(u32) {
        FH = 1 << 0,
    }
}
