//! Reply encoding.
//!
//! A reply is `fuse_out_header` followed by the operation's payload. The
//! kernel fails the client's syscall with EIO when the length is wrong or an
//! error reply carries a payload, so the builders here compute `len`
//! themselves: an error reply is always exactly 16 bytes, a struct reply is
//! always header + the struct, and a data reply's header is derived from the
//! data length it will precede.

use core::fmt;
use core::num::NonZeroU16;

use zerocopy::{Immutable, IntoBytes};

use crate::abi::OutHeader;

/// Header length of every reply.
pub const OUT_HEADER_LEN: usize = size_of::<OutHeader>();

/// The largest fixed-size reply payload (`fuse_statx_out`, 288 bytes).
pub const MAX_STRUCT_PAYLOAD: usize = 288;

/// A positive errno value the kernel accepts in a reply (1..=511).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(NonZeroU16);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno::known(1);
    /// No such file or directory.
    pub const ENOENT: Errno = Errno::known(2);
    /// Interrupted system call.
    pub const EINTR: Errno = Errno::known(4);
    /// I/O error.
    pub const EIO: Errno = Errno::known(5);
    /// No such device or address (LSEEK past the end).
    pub const ENXIO: Errno = Errno::known(6);
    /// Bad file descriptor.
    pub const EBADF: Errno = Errno::known(9);
    /// Try again.
    pub const EAGAIN: Errno = Errno::known(11);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno::known(12);
    /// Permission denied.
    pub const EACCES: Errno = Errno::known(13);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno::known(22);
    /// File too large.
    pub const EFBIG: Errno = Errno::known(27);
    /// No space left on device.
    pub const ENOSPC: Errno = Errno::known(28);
    /// Read-only file system.
    pub const EROFS: Errno = Errno::known(30);
    /// Function not implemented (sticky for most opcodes: the kernel stops asking).
    pub const ENOSYS: Errno = Errno::known(38);
    /// No data available (xattr not found).
    pub const ENODATA: Errno = Errno::known(61);
    /// Operation not supported.
    pub const EOPNOTSUPP: Errno = Errno::known(95);

    const fn known(value: u16) -> Errno {
        match NonZeroU16::new(value) {
            Some(v) => Errno(v),
            None => panic!("errno 0"),
        }
    }

    /// An errno from its positive value; `None` outside 1..=511.
    pub const fn new(value: i32) -> Option<Errno> {
        if value >= 1 && value <= 511 {
            match NonZeroU16::new(value as u16) {
                Some(v) => Some(Errno(v)),
                None => None,
            }
        } else {
            None
        }
    }

    /// An errno from a value of unknown quality: a negative result code
    /// (`-errno`, as io_uring reports) or a positive errno. Anything the
    /// kernel would reject becomes `EIO`, so a reply is always valid.
    pub const fn from_any(value: i32) -> Errno {
        let positive = value.unsigned_abs();
        if positive <= 511 {
            if let Some(errno) = Errno::new(positive as i32) {
                return errno;
            }
        }
        Errno::EIO
    }

    /// The positive value.
    pub const fn get(self) -> i32 {
        self.0.get() as i32
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({})", self.get())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}", self.get())
    }
}

/// An encoded reply whose bytes live inline (no allocation): an error, an
/// empty success, a fixed-size struct, or the header of a data reply whose
/// data the sender appends from its own buffers.
#[derive(Clone, Copy)]
pub struct Reply {
    bytes: [u8; OUT_HEADER_LEN + MAX_STRUCT_PAYLOAD],
    inline_len: u16,
    trailing_len: u32,
}

impl Reply {
    fn new(unique: u64, error: i32, payload: &[u8], trailing_len: u32) -> Reply {
        let inline_len = OUT_HEADER_LEN + payload.len();
        let header = OutHeader {
            len: inline_len as u32 + trailing_len,
            error,
            unique,
        };
        let mut bytes = [0u8; OUT_HEADER_LEN + MAX_STRUCT_PAYLOAD];
        bytes[..OUT_HEADER_LEN].copy_from_slice(header.as_bytes());
        bytes[OUT_HEADER_LEN..inline_len].copy_from_slice(payload);
        Reply {
            bytes,
            inline_len: inline_len as u16,
            trailing_len,
        }
    }

    /// An error reply: exactly 16 bytes.
    pub fn error(unique: u64, errno: Errno) -> Reply {
        Reply::new(unique, -errno.get(), &[], 0)
    }

    /// A success with no payload (FLUSH, FSYNC, RELEASE, ...).
    pub fn empty(unique: u64) -> Reply {
        Reply::new(unique, 0, &[], 0)
    }

    /// A success carrying one fixed-size struct.
    ///
    /// The payload bound is checked at compile time: a struct larger than
    /// [`MAX_STRUCT_PAYLOAD`] does not build.
    pub fn with<T: IntoBytes + Immutable>(unique: u64, value: &T) -> Reply {
        const { assert!(size_of::<T>() <= MAX_STRUCT_PAYLOAD) };
        Reply::new(unique, 0, value.as_bytes(), 0)
    }

    /// A success carrying a struct of which only the first `len` bytes are
    /// sent (INIT to old kernels). `len` is clamped to the struct's size.
    pub fn with_prefix<T: IntoBytes + Immutable>(unique: u64, value: &T, len: usize) -> Reply {
        const { assert!(size_of::<T>() <= MAX_STRUCT_PAYLOAD) };
        let bytes = value.as_bytes();
        Reply::new(unique, 0, &bytes[..len.min(bytes.len())], 0)
    }

    /// The header of a success whose payload is `data_len` bytes of data
    /// (READ). The sender must append exactly `data_len` bytes after
    /// [`Reply::as_bytes`]; [`Reply::trailing_len`] says how many.
    pub fn data_header(unique: u64, data_len: u32) -> Reply {
        Reply::new(unique, 0, &[], data_len)
    }

    /// The inline bytes: the header and any struct payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.inline_len as usize]
    }

    /// Data bytes that must follow [`Reply::as_bytes`] (non-zero only for data replies).
    pub fn trailing_len(&self) -> u32 {
        self.trailing_len
    }

    /// The `len` field: inline bytes plus trailing data.
    pub fn total_len(&self) -> u32 {
        self.inline_len as u32 + self.trailing_len
    }

    /// The `unique` this reply answers.
    pub fn unique(&self) -> u64 {
        u64::from_ne_bytes(self.bytes[8..16].try_into().unwrap_or([0; 8]))
    }

    /// The `error` field (0 or a negative errno).
    pub fn error_code(&self) -> i32 {
        i32::from_ne_bytes(self.bytes[4..8].try_into().unwrap_or([0; 4]))
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("unique", &self.unique())
            .field("error", &self.error_code())
            .field("inline_len", &self.inline_len)
            .field("trailing_len", &self.trailing_len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{AttrOut, WriteOut};

    #[test]
    fn error_reply_is_exactly_sixteen_bytes() {
        let reply = Reply::error(42, Errno::ENOSYS);
        assert_eq!(reply.as_bytes().len(), 16);
        assert_eq!(reply.total_len(), 16);
        assert_eq!(&reply.as_bytes()[0..4], &16u32.to_ne_bytes());
        assert_eq!(&reply.as_bytes()[4..8], &(-38i32).to_ne_bytes());
        assert_eq!(&reply.as_bytes()[8..16], &42u64.to_ne_bytes());
    }

    #[test]
    fn struct_reply_length_includes_struct() {
        let reply = Reply::with(7, &AttrOut::default());
        assert_eq!(reply.as_bytes().len(), 16 + 104);
        assert_eq!(reply.total_len(), 120);
        let reply = Reply::with(
            7,
            &WriteOut {
                size: 4096,
                padding: 0,
            },
        );
        assert_eq!(
            reply.as_bytes(),
            &[
                24, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn data_header_counts_trailing_data() {
        let reply = Reply::data_header(9, 65536);
        assert_eq!(reply.as_bytes().len(), 16);
        assert_eq!(reply.total_len(), 16 + 65536);
        assert_eq!(reply.trailing_len(), 65536);
    }

    #[test]
    fn errno_from_any_never_yields_invalid_codes() {
        assert_eq!(Errno::from_any(-5), Errno::EIO);
        assert_eq!(Errno::from_any(28), Errno::ENOSPC);
        assert_eq!(Errno::from_any(0), Errno::EIO);
        assert_eq!(Errno::from_any(-600), Errno::EIO);
        assert_eq!(Errno::from_any(i32::MIN), Errno::EIO);
        assert_eq!(Errno::new(512), None);
    }
}
