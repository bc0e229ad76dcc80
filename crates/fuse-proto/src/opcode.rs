use core::fmt;

/// A FUSE opcode (`enum fuse_opcode`).
///
/// A newtype rather than an enum so that opcodes this crate does not know
/// survive parsing unchanged and can be answered with `ENOSYS`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Opcode(pub u32);

macro_rules! opcodes {
    ($($name:ident = $value:expr),* $(,)?) => {
        impl Opcode {
            $(
                #[doc = concat!("`FUSE_", stringify!($name), "` (", stringify!($value), ").")]
                pub const $name: Opcode = Opcode($value);
            )*

            /// Every opcode of protocol 7.45, in numeric order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// The kernel's name without the `FUSE_` prefix, or `None` if unknown.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

opcodes! {
    LOOKUP = 1, FORGET = 2, GETATTR = 3, SETATTR = 4, READLINK = 5, SYMLINK = 6, MKNOD = 8,
    MKDIR = 9, UNLINK = 10, RMDIR = 11, RENAME = 12, LINK = 13, OPEN = 14, READ = 15,
    WRITE = 16, STATFS = 17, RELEASE = 18, FSYNC = 20, SETXATTR = 21, GETXATTR = 22,
    LISTXATTR = 23, REMOVEXATTR = 24, FLUSH = 25, INIT = 26, OPENDIR = 27, READDIR = 28,
    RELEASEDIR = 29, FSYNCDIR = 30, GETLK = 31, SETLK = 32, SETLKW = 33, ACCESS = 34,
    CREATE = 35, INTERRUPT = 36, BMAP = 37, DESTROY = 38, IOCTL = 39, POLL = 40,
    NOTIFY_REPLY = 41, BATCH_FORGET = 42, FALLOCATE = 43, READDIRPLUS = 44, RENAME2 = 45,
    LSEEK = 46, COPY_FILE_RANGE = 47, SETUPMAPPING = 48, REMOVEMAPPING = 49, SYNCFS = 50,
    TMPFILE = 51, STATX = 52, COPY_FILE_RANGE_64 = 53, CUSE_INIT = 4096,
}

impl Opcode {
    /// Whether the kernel expects no reply to this opcode.
    pub const fn is_no_reply(self) -> bool {
        matches!(self, Opcode::FORGET | Opcode::BATCH_FORGET)
    }
}

impl fmt::Debug for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Opcode({})", self.0),
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
