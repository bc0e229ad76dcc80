//! Flag sets as typed newtypes.
//!
//! Each set keeps unknown bits: a kernel newer than this crate may offer bits
//! we do not name, and they must round-trip unchanged. Every named flag also
//! carries the kernel's macro name ([`InitFlags::KERNEL_NAMES`] etc.), which
//! the C header probe in `tests/` compares against `<linux/fuse.h>`.

use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign};

/// The kernel macro name of a flag: the set's prefix plus the Rust name,
/// unless the flag spells out its own name (`=> "FUSE_IOCTL_32BIT"`).
macro_rules! kernel_name {
    ($prefix:literal, $flag:ident) => {
        concat!($prefix, stringify!($flag))
    };
    ($prefix:literal, $flag:ident, $cname:literal) => {
        $cname
    };
}

macro_rules! flag_set {
    (
        $(#[$meta:meta])*
        $name:ident($repr:ty), kernel prefix $prefix:literal {
            $(
                $(#[$fmeta:meta])*
                $flag:ident = $bit:expr $(=> $cname:literal)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub $repr);

        impl $name {
            $(
                $(#[$fmeta])*
                #[doc = concat!("\n\nKernel name: `", kernel_name!($prefix, $flag $(, $cname)?), "`.")]
                pub const $flag: $name = $name($bit);
            )*
            /// No bits set.
            pub const EMPTY: $name = $name(0);
            /// Every named flag with its Rust name.
            pub const NAMED: &'static [(&'static str, $name)] =
                &[$((stringify!($flag), $name::$flag)),*];
            /// Every named flag with the kernel's macro name.
            pub const KERNEL_NAMES: &'static [(&'static str, $name)] =
                &[$((kernel_name!($prefix, $flag $(, $cname)?), $name::$flag)),*];
            /// The union of every named flag.
            pub const KNOWN: $name = {
                let mut bits: $repr = 0;
                let mut index = 0;
                while index < Self::NAMED.len() {
                    bits |= Self::NAMED[index].1 .0;
                    index += 1;
                }
                $name(bits)
            };

            /// The raw bits.
            pub const fn bits(self) -> $repr { self.0 }
            /// Whether no bit is set.
            pub const fn is_empty(self) -> bool { self.0 == 0 }
            /// Whether every bit of `other` is set.
            pub const fn contains(self, other: $name) -> bool { self.0 & other.0 == other.0 }
            /// Whether any bit of `other` is set.
            pub const fn intersects(self, other: $name) -> bool { self.0 & other.0 != 0 }
            /// Bits set in both.
            pub const fn intersection(self, other: $name) -> $name { $name(self.0 & other.0) }
            /// Bits set in either.
            pub const fn union(self, other: $name) -> $name { $name(self.0 | other.0) }
            /// Bits in `self` but not in `other`.
            pub const fn difference(self, other: $name) -> $name { $name(self.0 & !other.0) }
            /// The bits this crate has no name for (kept, never dropped).
            pub const fn unknown(self) -> $name { self.difference(Self::KNOWN) }
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
                    // Aliases share bits: print each bit under its first name only.
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
    ///
    /// The kernel acts on the reply's bits as they are (it does not intersect
    /// them with its offer), so a server must reply with a subset of the
    /// offer. Bits 32 and up are only honoured when the reply sets
    /// [`InitFlags::INIT_EXT`].
    InitFlags(u64), kernel prefix "FUSE_" {
        /// READs for readahead are sent asynchronously (in parallel).
        ASYNC_READ = 1 << 0,
        /// The server implements POSIX locks (GETLK/SETLK).
        POSIX_LOCKS = 1 << 1,
        /// Never implemented by the kernel.
        FILE_OPS = 1 << 2,
        /// OPEN carries `O_TRUNC` instead of a separate SETATTR.
        ATOMIC_O_TRUNC = 1 << 3,
        /// The server handles LOOKUP of `.` and `..` (NFS export).
        EXPORT_SUPPORT = 1 << 4,
        /// Buffered writes may be larger than 4 KiB.
        BIG_WRITES = 1 << 5,
        /// The kernel does not apply the umask on create.
        DONT_MASK = 1 << 6,
        /// Informational: the kernel supports splice write on the device.
        SPLICE_WRITE = 1 << 7,
        /// Informational: the kernel supports splice move on the device.
        SPLICE_MOVE = 1 << 8,
        /// Informational: the kernel supports splice read on the device.
        SPLICE_READ = 1 << 9,
        /// The server implements BSD `flock` locks.
        FLOCK_LOCKS = 1 << 10,
        /// Informational: the kernel supports ioctl on directories.
        HAS_IOCTL_DIR = 1 << 11,
        /// Refresh attributes on cached reads and invalidate on mtime change.
        AUTO_INVAL_DATA = 1 << 12,
        /// Use READDIRPLUS.
        DO_READDIRPLUS = 1 << 13,
        /// Use READDIRPLUS adaptively.
        READDIRPLUS_AUTO = 1 << 14,
        /// Direct I/O of one syscall is split into parallel background
        /// requests; without it AIO clients degrade to one request in flight.
        ASYNC_DIO = 1 << 15,
        /// Buffered writes go through the page cache and are written back later.
        WRITEBACK_CACHE = 1 << 16,
        /// Informational: an ENOSYS answer to OPEN makes opens message-free.
        NO_OPEN_SUPPORT = 1 << 17,
        /// Parallel LOOKUP/READDIR in one directory.
        PARALLEL_DIROPS = 1 << 18,
        /// The server clears suid/sgid/caps on write, chown and truncate.
        HANDLE_KILLPRIV = 1 << 19,
        /// The server supports POSIX ACLs.
        POSIX_ACL = 1 << 20,
        /// Reading the device after a fusectl abort fails with ECONNABORTED, not ENODEV.
        ABORT_ERROR = 1 << 21,
        /// `fuse_init_out.max_pages` is valid.
        MAX_PAGES = 1 << 22,
        /// Cache READLINK replies.
        CACHE_SYMLINKS = 1 << 23,
        /// Informational: an ENOSYS answer to OPENDIR makes opendirs message-free.
        NO_OPENDIR_SUPPORT = 1 << 24,
        /// Invalidate cached data only on explicit notification.
        EXPLICIT_INVAL_DATA = 1 << 25,
        /// `fuse_init_out.map_alignment` is valid (DAX).
        MAP_ALIGNMENT = 1 << 26,
        /// The kernel supports submounts (virtiofs).
        SUBMOUNTS = 1 << 27,
        /// VFS-like suid/sgid killing by the server (7.33).
        HANDLE_KILLPRIV_V2 = 1 << 28,
        /// The server understands the extended `fuse_setxattr_in` (7.33).
        SETXATTR_EXT = 1 << 29,
        /// `flags2` is valid (7.36).
        INIT_EXT = 1 << 30,
        /// Reserved; never set.
        INIT_RESERVED = 1 << 31,
        /// Security contexts are sent with create requests (7.36).
        SECURITY_CTX = 1 << 32,
        /// Per-inode DAX (7.36).
        HAS_INODE_DAX = 1 << 33,
        /// Supplementary groups are sent with create requests (7.38).
        CREATE_SUPP_GROUP = 1 << 34,
        /// Informational: the kernel supports expire-only entry invalidation (7.38).
        HAS_EXPIRE_ONLY = 1 << 35,
        /// `MAP_SHARED` mmap is allowed on `FOPEN_DIRECT_IO` files (7.39).
        DIRECT_IO_ALLOW_MMAP = 1 << 36,
        /// The kernel may pass READ/WRITE through to a backing file (7.40).
        PASSTHROUGH = 1 << 37,
        /// The file system cannot be exported over NFS (7.40).
        NO_EXPORT_SUPPORT = 1 << 38,
        /// Informational: the kernel supports `FUSE_NOTIFY_RESEND` (7.40).
        HAS_RESEND = 1 << 39,
        /// The server supports idmapped mounts (7.41).
        ALLOW_IDMAP = 1 << 40,
        /// Requests may be delivered over FUSE-over-io_uring (7.42).
        OVER_IO_URING = 1 << 41,
        /// `fuse_init_out.request_timeout` is valid (7.43).
        REQUEST_TIMEOUT = 1 << 42,
    }
}

impl InitFlags {
    /// Old name of [`InitFlags::DIRECT_IO_ALLOW_MMAP`] (`FUSE_DIRECT_IO_RELAX`).
    pub const DIRECT_IO_RELAX: InitFlags = InitFlags::DIRECT_IO_ALLOW_MMAP;

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
    /// `FOPEN_*`: flags of `fuse_open_out.open_flags` (reply to OPEN/CREATE/OPENDIR).
    FopenFlags(u32), kernel prefix "FOPEN_" {
        /// Bypass the page cache for this open file.
        DIRECT_IO = 1 << 0,
        /// Do not invalidate the page cache on open.
        KEEP_CACHE = 1 << 1,
        /// The file is not seekable.
        NONSEEKABLE = 1 << 2,
        /// Allow caching this directory.
        CACHE_DIR = 1 << 3,
        /// The file is stream-like (no file position at all).
        STREAM = 1 << 4,
        /// Do not send FLUSH on close (unless writeback cache is on).
        NOFLUSH = 1 << 5,
        /// Allow parallel direct writes on one inode (with `DIRECT_IO`).
        PARALLEL_DIRECT_WRITES = 1 << 6,
        /// Pass READ/WRITE through to the backing file in `backing_id` (7.40).
        PASSTHROUGH = 1 << 7,
    }
}

flag_set! {
    /// `FATTR_*`: which fields of `fuse_setattr_in` are valid.
    SetattrValid(u32), kernel prefix "FATTR_" {
        /// `mode` is set.
        MODE = 1 << 0,
        /// `uid` is set.
        UID = 1 << 1,
        /// `gid` is set.
        GID = 1 << 2,
        /// `size` is set (truncate).
        SIZE = 1 << 3,
        /// `atime` is set.
        ATIME = 1 << 4,
        /// `mtime` is set.
        MTIME = 1 << 5,
        /// `fh` is valid (ftruncate and friends).
        FH = 1 << 6,
        /// Set atime to the current time.
        ATIME_NOW = 1 << 7,
        /// Set mtime to the current time.
        MTIME_NOW = 1 << 8,
        /// `lock_owner` is valid.
        LOCKOWNER = 1 << 9,
        /// `ctime` is set.
        CTIME = 1 << 10,
        /// Kill suid/sgid (with `HANDLE_KILLPRIV_V2`).
        KILL_SUIDGID = 1 << 11,
    }
}

flag_set! {
    /// `FUSE_WRITE_*`: flags of `fuse_write_in.write_flags`.
    WriteFlags(u32), kernel prefix "FUSE_WRITE_" {
        /// Delayed write from the page cache; `fh` is guessed.
        CACHE = 1 << 0,
        /// `lock_owner` is valid.
        LOCKOWNER = 1 << 1,
        /// Kill suid and sgid bits (with `HANDLE_KILLPRIV_V2`).
        KILL_SUIDGID = 1 << 2,
    }
}

impl WriteFlags {
    /// Old name of [`WriteFlags::KILL_SUIDGID`] (`FUSE_WRITE_KILL_PRIV`).
    pub const KILL_PRIV: WriteFlags = WriteFlags::KILL_SUIDGID;
}

flag_set! {
    /// `FUSE_READ_*`: flags of `fuse_read_in.read_flags`.
    ReadFlags(u32), kernel prefix "FUSE_READ_" {
        /// `lock_owner` is valid.
        LOCKOWNER = 1 << 1,
    }
}

flag_set! {
    /// `FUSE_FSYNC_*`: flags of `fuse_fsync_in.fsync_flags`.
    FsyncFlags(u32), kernel prefix "FUSE_FSYNC_" {
        /// Sync data only, not metadata (`fdatasync`).
        FDATASYNC = 1 << 0,
    }
}

flag_set! {
    /// `FUSE_GETATTR_*`: flags of `fuse_getattr_in.getattr_flags` and `fuse_statx_in.getattr_flags`.
    GetattrFlags(u32), kernel prefix "FUSE_GETATTR_" {
        /// `fh` is valid.
        FH = 1 << 0,
    }
}

flag_set! {
    /// `FUSE_RELEASE_*`: flags of `fuse_release_in.release_flags`.
    ReleaseFlags(u32), kernel prefix "FUSE_RELEASE_" {
        /// Flush before releasing.
        FLUSH = 1 << 0,
        /// Release the `flock` lock held through this file.
        FLOCK_UNLOCK = 1 << 1,
    }
}

flag_set! {
    /// `FUSE_LK_*`: flags of `fuse_lk_in.lk_flags`.
    LkFlags(u32), kernel prefix "FUSE_LK_" {
        /// The lock is a BSD `flock` lock.
        FLOCK = 1 << 0,
    }
}

flag_set! {
    /// `FUSE_OPEN_*`: flags of `fuse_open_in.open_flags` and `fuse_create_in.open_flags`.
    OpenInFlags(u32), kernel prefix "FUSE_OPEN_" {
        /// Kill suid and sgid if executable (with `HANDLE_KILLPRIV_V2`).
        KILL_SUIDGID = 1 << 0,
    }
}

flag_set! {
    /// `FUSE_ATTR_*`: flags of `fuse_attr.flags`.
    AttrFlags(u32), kernel prefix "FUSE_ATTR_" {
        /// The object is a submount root.
        SUBMOUNT = 1 << 0,
        /// Enable DAX for this file in per-inode DAX mode.
        DAX = 1 << 1,
    }
}

flag_set! {
    /// `FUSE_SETXATTR_*`: flags of `fuse_setxattr_in.setxattr_flags`.
    SetxattrFlags(u32), kernel prefix "FUSE_SETXATTR_" {
        /// Clear SGID when `system.posix_acl_access` is set.
        ACL_KILL_SGID = 1 << 0,
    }
}

flag_set! {
    /// Flags of `fuse_notify_inval_entry_out.flags`.
    InvalEntryFlags(u32), kernel prefix "FUSE_" {
        /// Only expire the entry, do not drop it (7.38, `HAS_EXPIRE_ONLY`).
        EXPIRE_ONLY = 1 << 0,
    }
}

flag_set! {
    /// `FUSE_POLL_*`: flags of `fuse_poll_in.flags`.
    PollFlags(u32), kernel prefix "FUSE_POLL_" {
        /// The kernel wants a `FUSE_NOTIFY_POLL` when the file becomes ready.
        SCHEDULE_NOTIFY = 1 << 0,
    }
}

flag_set! {
    /// `FUSE_IOCTL_*`: flags of `fuse_ioctl_in.flags` and `fuse_ioctl_out.flags`.
    IoctlFlags(u32), kernel prefix "FUSE_IOCTL_" {
        /// 32-bit compat ioctl on a 64-bit machine.
        COMPAT = 1 << 0,
        /// Not restricted to well-formed ioctls; retry allowed.
        UNRESTRICTED = 1 << 1,
        /// Reply: retry with the iovecs that follow `fuse_ioctl_out`.
        RETRY = 1 << 2,
        /// 32-bit ioctl.
        IOCTL_32BIT = 1 << 3 => "FUSE_IOCTL_32BIT",
        /// The file is a directory.
        DIR = 1 << 4,
        /// x32 compat ioctl on a 64-bit machine (64-bit `time_t`).
        COMPAT_X32 = 1 << 5,
    }
}

flag_set! {
    /// `FUSE_SETUPMAPPING_FLAG_*`: flags of `fuse_setupmapping_in.flags` (DAX).
    SetupmappingFlags(u64), kernel prefix "FUSE_SETUPMAPPING_FLAG_" {
        /// Map for writing.
        WRITE = 1 << 0,
        /// Map for reading.
        READ = 1 << 1,
    }
}

flag_set! {
    /// `CUSE_*`: flags of `cuse_init_in.flags` / `cuse_init_out.flags`.
    CuseInitFlags(u32), kernel prefix "CUSE_" {
        /// Use unrestricted ioctl.
        UNRESTRICTED_IOCTL = 1 << 0,
    }
}

flag_set! {
    /// `FALLOC_FL_*` from `<linux/falloc.h>`: `fuse_fallocate_in.mode`.
    ///
    /// Not part of the FUSE header: the kernel copies `fallocate(2)`'s mode
    /// verbatim. It forwards only `KEEP_SIZE`, `PUNCH_HOLE` (always with
    /// `KEEP_SIZE`) and `ZERO_RANGE`; other modes fail locally with EOPNOTSUPP.
    FallocateMode(u32), kernel prefix "FALLOC_FL_" {
        /// Do not change the file size.
        KEEP_SIZE = 0x01,
        /// Deallocate the range (always with `KEEP_SIZE`).
        PUNCH_HOLE = 0x02,
        /// Remove the range and shift the rest down (never forwarded).
        COLLAPSE_RANGE = 0x08,
        /// Zero the range.
        ZERO_RANGE = 0x10,
        /// Insert a hole and shift the rest up (never forwarded).
        INSERT_RANGE = 0x20,
        /// Unshare shared blocks (never forwarded).
        UNSHARE_RANGE = 0x40,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_round_trip_the_live_6_18_offer() {
        let offer = InitFlags::from_halves(0x73ff_fffb, 0x0000_05fd);
        assert_eq!(offer.low(), 0x73ff_fffb);
        assert_eq!(offer.high(), 0x0000_05fd);
        assert!(offer.contains(InitFlags::ASYNC_DIO | InitFlags::MAX_PAGES));
        assert!(offer.contains(InitFlags::DIRECT_IO_ALLOW_MMAP));
        assert!(!offer.contains(InitFlags::OVER_IO_URING));
        // Every bit the 6.18 kernel offers has a name.
        assert!(offer.unknown().is_empty());
    }

    #[test]
    fn unknown_bits_survive_and_are_printed() {
        let flags = FopenFlags(FopenFlags::DIRECT_IO.bits() | 1 << 20);
        assert_eq!(flags.unknown(), FopenFlags(1 << 20));
        assert_eq!(format!("{flags:?}"), "FopenFlags(DIRECT_IO | 0x100000)");
    }

    #[test]
    fn kernel_names_use_the_prefix_or_the_override() {
        assert!(InitFlags::KERNEL_NAMES.contains(&("FUSE_ASYNC_READ", InitFlags::ASYNC_READ)));
        assert!(IoctlFlags::KERNEL_NAMES.contains(&("FUSE_IOCTL_32BIT", IoctlFlags::IOCTL_32BIT)));
        assert!(
            InvalEntryFlags::KERNEL_NAMES
                .contains(&("FUSE_EXPIRE_ONLY", InvalEntryFlags::EXPIRE_ONLY))
        );
    }
}
