//! Reply encoding (and, for tests and the fake device, reply parsing).
//!
//! A reply is `fuse_out_header` followed by the operation's payload. The
//! kernel fails the client's syscall with EIO when the length is wrong or an
//! error reply carries a payload, so the builders here compute `len`
//! themselves: an error reply is always exactly 16 bytes, a struct reply is
//! always header + a struct that is a reply payload ([`ReplyPayload`]), and
//! a data reply's header is derived from the data length it will precede.

use core::fmt;
use core::num::NonZeroU16;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::abi::{
    AttrOut, BmapOut, CopyFileRangeOut, CuseInitOut, Dirent, Direntplus, EntryOut, GetxattrOut,
    InitOut, IoctlOut, LkOut, LseekOut, OpenOut, OutHeader, PollOut, StatfsOut, StatxOut, WriteOut,
    dirent_size, direntplus_size, init_out_len,
};

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
    /// Result too large (xattr buffer too small).
    pub const ERANGE: Errno = Errno::known(34);
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
        if positive <= 511
            && let Some(errno) = Errno::new(positive as i32)
        {
            return errno;
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

mod sealed {
    pub trait Sealed {}
}

/// A struct that is, on its own, the whole payload of some reply.
///
/// Sealed: only the kernel's reply structs implement it, so
/// [`Reply::with`] cannot send a request struct or a nested struct (such
/// as `fuse_attr` without its `fuse_attr_out`) by mistake.
pub trait ReplyPayload: IntoBytes + Immutable + sealed::Sealed {}

macro_rules! reply_payloads {
    ($($ty:ty),* $(,)?) => {
        $(
            impl sealed::Sealed for $ty {}
            impl ReplyPayload for $ty {}
            const _: () = assert!(size_of::<$ty>() <= MAX_STRUCT_PAYLOAD);
        )*
    };
}

reply_payloads!(
    InitOut,
    CuseInitOut,
    AttrOut,
    EntryOut,
    OpenOut,
    WriteOut,
    StatfsOut,
    GetxattrOut,
    LkOut,
    BmapOut,
    IoctlOut,
    PollOut,
    LseekOut,
    CopyFileRangeOut,
    StatxOut,
);

/// An encoded reply whose bytes live inline (no allocation): an error, an
/// empty success, fixed-size structs, or the header of a data reply whose
/// data the sender appends from its own buffers.
#[derive(Clone, Copy)]
pub struct Reply {
    bytes: [u8; OUT_HEADER_LEN + MAX_STRUCT_PAYLOAD],
    inline_len: u16,
    trailing_len: u32,
}

impl Reply {
    /// Encodes the header and the inline payload parts. Callers guarantee
    /// (by compile-time asserts) that the parts fit; were they not to, the
    /// excess would be cut rather than panic, and `len` would still match
    /// the bytes produced.
    fn new(unique: u64, error: i32, parts: &[&[u8]], trailing_len: u32) -> Reply {
        let mut bytes = [0u8; OUT_HEADER_LEN + MAX_STRUCT_PAYLOAD];
        let mut inline_len = OUT_HEADER_LEN;
        for part in parts {
            let end = inline_len.saturating_add(part.len()).min(bytes.len());
            let take = end - inline_len;
            if let (Some(target), Some(source)) = (bytes.get_mut(inline_len..end), part.get(..take))
            {
                target.copy_from_slice(source);
            }
            inline_len = end;
        }
        let header = OutHeader {
            len: (inline_len as u32).saturating_add(trailing_len),
            error,
            unique,
        };
        if let Some(target) = bytes.get_mut(..OUT_HEADER_LEN) {
            target.copy_from_slice(header.as_bytes());
        }
        Reply {
            bytes,
            inline_len: inline_len as u16,
            trailing_len: header.len - inline_len as u32,
        }
    }

    /// An error reply: exactly 16 bytes. Also the (header-only) answer to
    /// an INTERRUPT, whose `unique` has bit 0 set.
    pub fn error(unique: u64, errno: Errno) -> Reply {
        Reply::new(unique, -errno.get(), &[], 0)
    }

    /// A success with no payload (FLUSH, FSYNC, RELEASE, ...).
    pub fn empty(unique: u64) -> Reply {
        Reply::new(unique, 0, &[], 0)
    }

    /// A success carrying one reply struct.
    pub fn with<T: ReplyPayload>(unique: u64, value: &T) -> Reply {
        Reply::new(unique, 0, &[value.as_bytes()], 0)
    }

    /// A success carrying a struct of which only the first `len` bytes are
    /// sent. `len` is clamped to the struct's size. Prefer [`Reply::init`]
    /// for INIT.
    pub fn with_prefix<T: ReplyPayload>(unique: u64, value: &T, len: usize) -> Reply {
        let bytes = value.as_bytes();
        Reply::new(unique, 0, &[bytes.get(..len).unwrap_or(bytes)], 0)
    }

    /// The INIT reply for a kernel that speaks `kernel_minor`: 64 bytes of
    /// `fuse_init_out` since 7.23, 24 before, 8 before 7.5
    /// ([`init_out_len`]).
    pub fn init(unique: u64, value: &InitOut, kernel_minor: u32) -> Reply {
        Reply::with_prefix(unique, value, init_out_len(kernel_minor))
    }

    /// The CREATE/TMPFILE reply: `fuse_entry_out` then `fuse_open_out`.
    pub fn create(unique: u64, entry: &EntryOut, open: &OpenOut) -> Reply {
        Reply::new(unique, 0, &[entry.as_bytes(), open.as_bytes()], 0)
    }

    /// The header of a success whose payload is `data_len` bytes of data
    /// (READ, READLINK, GETXATTR/LISTXATTR values, READDIR records). The
    /// sender must append exactly `data_len` bytes after
    /// [`Reply::as_bytes`]; [`Reply::trailing_len`] says how many.
    pub fn data_header(unique: u64, data_len: u32) -> Reply {
        Reply::new(unique, 0, &[], data_len)
    }

    /// A success carrying a reply struct followed by `data_len` bytes of
    /// data that the sender appends (IOCTL: `fuse_ioctl_out` then output
    /// data or iovecs). `data_len` is capped so that `len` fits in 32 bits.
    pub fn with_data<T: ReplyPayload>(unique: u64, value: &T, data_len: u32) -> Reply {
        Reply::new(unique, 0, &[value.as_bytes()], data_len)
    }

    /// The inline bytes: the header and any struct payload.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes
            .get(..self.inline_len as usize)
            .unwrap_or(&self.bytes)
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
        self.header().unique
    }

    /// The `error` field (0 or a negative errno).
    pub fn error_code(&self) -> i32 {
        self.header().error
    }

    fn header(&self) -> OutHeader {
        OutHeader::read_from_prefix(&self.bytes)
            .map(|(header, _)| header)
            .unwrap_or_default()
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

/// A reply or notification as the kernel reads it, checked the way
/// `fuse_dev_do_write` checks it. For tests and fake devices: the kernel
/// side of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyView<'a> {
    /// The header.
    pub header: OutHeader,
    /// The bytes after the header.
    pub payload: &'a [u8],
}

/// Why bytes are not a reply the kernel would accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// Fewer than 16 bytes (the kernel answers EINVAL).
    ShortHeader {
        /// Bytes available.
        len: usize,
    },
    /// `len` differs from the bytes written (EINVAL).
    LengthMismatch {
        /// `len` from the header.
        declared: u32,
        /// Bytes written.
        received: usize,
    },
    /// `error` is positive or below -511 (EINVAL).
    InvalidError {
        /// The `error` field.
        error: i32,
    },
    /// An error reply carries a payload (EINVAL, the client gets EIO).
    ErrorWithPayload {
        /// Payload bytes.
        payload_len: usize,
    },
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ReplyError::ShortHeader { len } => {
                write!(
                    f,
                    "reply of {len} bytes is shorter than fuse_out_header (16)"
                )
            }
            ReplyError::LengthMismatch { declared, received } => {
                write!(
                    f,
                    "reply header says {declared} bytes but {received} were written"
                )
            }
            ReplyError::InvalidError { error } => {
                write!(f, "reply error {error} is outside 0 and -1..=-511")
            }
            ReplyError::ErrorWithPayload { payload_len } => {
                write!(f, "error reply carries {payload_len} bytes of payload")
            }
        }
    }
}

impl core::error::Error for ReplyError {}

impl<'a> ReplyView<'a> {
    /// Checks and splits one reply or notification (`unique` 0).
    pub fn parse(bytes: &'a [u8]) -> Result<ReplyView<'a>, ReplyError> {
        let Ok((header, payload)) = OutHeader::read_from_prefix(bytes) else {
            return Err(ReplyError::ShortHeader { len: bytes.len() });
        };
        if header.len as usize != bytes.len() {
            return Err(ReplyError::LengthMismatch {
                declared: header.len,
                received: bytes.len(),
            });
        }
        if header.unique != 0 {
            if header.error > 0 || header.error <= -512 {
                return Err(ReplyError::InvalidError {
                    error: header.error,
                });
            }
            if header.error != 0 && !payload.is_empty() {
                return Err(ReplyError::ErrorWithPayload {
                    payload_len: payload.len(),
                });
            }
        }
        Ok(ReplyView { header, payload })
    }

    /// Whether this is a notification (`unique` 0; `error` is the code).
    pub fn is_notification(&self) -> bool {
        self.header.unique == 0
    }

    /// The payload as a `T`, if it is exactly `size_of::<T>()` bytes.
    pub fn payload_as<T: FromBytes>(&self) -> Option<T> {
        T::read_from_bytes(self.payload).ok()
    }
}

/// Fills a caller's buffer with READDIR or READDIRPLUS records, each padded
/// to 8 bytes with zeros, never past the buffer's end. Size the buffer to
/// `fuse_read_in.size` so the reply never exceeds what the kernel asked for;
/// send the result with [`Reply::data_header`].
#[derive(Debug)]
pub struct DirentBuffer<'b> {
    buf: &'b mut [u8],
    used: usize,
}

/// Why a directory record was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirentError {
    /// The record does not fit in what is left of the buffer.
    Full,
    /// The name is empty, longer than 1024 bytes (`FUSE_NAME_MAX`), or
    /// contains `/` or NUL: the kernel fails the whole READDIR with EIO.
    InvalidName,
}

/// The kernel's `FUSE_NAME_MAX` for directory entries.
const NAME_MAX: usize = 1024;

impl<'b> DirentBuffer<'b> {
    /// An empty record list writing into `buf`.
    pub fn new(buf: &'b mut [u8]) -> DirentBuffer<'b> {
        DirentBuffer { buf, used: 0 }
    }

    /// Appends a READDIR record. `off` is the cookie the kernel sends back
    /// to continue after this entry; `dirent_type` is `mode >> 12`.
    pub fn push(
        &mut self,
        ino: u64,
        off: u64,
        dirent_type: u32,
        name: &[u8],
    ) -> Result<(), DirentError> {
        let dirent = Dirent {
            ino,
            off,
            namelen: valid_name_len(name)?,
            dirent_type,
        };
        self.append(dirent.as_bytes(), name, dirent_size(name.len()))
    }

    /// Appends a READDIRPLUS record (the entry as LOOKUP would return it).
    pub fn push_plus(
        &mut self,
        entry_out: &EntryOut,
        off: u64,
        dirent_type: u32,
        name: &[u8],
    ) -> Result<(), DirentError> {
        let record = Direntplus {
            entry_out: *entry_out,
            dirent: Dirent {
                ino: entry_out.attr.ino,
                off,
                namelen: valid_name_len(name)?,
                dirent_type,
            },
        };
        self.append(record.as_bytes(), name, direntplus_size(name.len()))
    }

    fn append(&mut self, header: &[u8], name: &[u8], size: usize) -> Result<(), DirentError> {
        let end = self.used.checked_add(size).ok_or(DirentError::Full)?;
        let record = self.buf.get_mut(self.used..end).ok_or(DirentError::Full)?;
        record.fill(0);
        let (header_area, name_area) = record.split_at_mut(header.len().min(size));
        header_area.copy_from_slice(header.get(..header_area.len()).unwrap_or_default());
        if let Some(target) = name_area.get_mut(..name.len()) {
            target.copy_from_slice(name);
        }
        self.used = end;
        Ok(())
    }

    /// Bytes of records written so far.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether no record was written.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The records written so far: the READDIR/READDIRPLUS reply payload.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.used).unwrap_or_default()
    }
}

fn valid_name_len(name: &[u8]) -> Result<u32, DirentError> {
    if name.is_empty() || name.len() > NAME_MAX || name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(DirentError::InvalidName);
    }
    u32::try_from(name.len()).map_err(|_| DirentError::InvalidName)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn data_header_length_saturates_instead_of_wrapping() {
        let reply = Reply::data_header(9, u32::MAX);
        assert_eq!(reply.total_len(), u32::MAX);
        assert_eq!(reply.trailing_len(), u32::MAX - 16);
    }

    #[test]
    fn create_reply_carries_entry_then_open() {
        // Distinct, non-zero values, so that the order and offsets show.
        let entry = EntryOut {
            nodeid: 0x1111,
            attr_valid: 7,
            ..EntryOut::default()
        };
        let open = OpenOut {
            fh: 0x2222,
            open_flags: 3,
            backing_id: 0,
        };
        let reply = Reply::create(4, &entry, &open);
        assert_eq!(reply.total_len(), 16 + 128 + 16);
        let bytes = reply.as_bytes();
        assert_eq!(bytes.len(), 16 + 128 + 16);
        assert_eq!(
            &bytes[16..16 + 128],
            entry.as_bytes(),
            "fuse_entry_out first"
        );
        assert_eq!(&bytes[16 + 128..], open.as_bytes(), "then fuse_open_out");
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

    #[test]
    fn reply_view_applies_the_kernels_checks() {
        let ok = Reply::with(2, &WriteOut::default());
        let view = ReplyView::parse(ok.as_bytes()).unwrap();
        assert_eq!(view.payload_as::<WriteOut>(), Some(WriteOut::default()));
        assert_eq!(
            ReplyView::parse(&ok.as_bytes()[..20]),
            Err(ReplyError::LengthMismatch {
                declared: 24,
                received: 20
            })
        );
        let mut bad = ok.as_bytes().to_vec();
        bad[4..8].copy_from_slice(&(-5i32).to_ne_bytes());
        assert_eq!(
            ReplyView::parse(&bad),
            Err(ReplyError::ErrorWithPayload { payload_len: 8 })
        );
        bad[4..8].copy_from_slice(&5i32.to_ne_bytes());
        assert_eq!(
            ReplyView::parse(&bad),
            Err(ReplyError::InvalidError { error: 5 })
        );
        assert_eq!(
            ReplyView::parse(&[0; 8]),
            Err(ReplyError::ShortHeader { len: 8 })
        );
    }

    #[test]
    fn dirent_records_are_padded_and_bounded() {
        let mut storage = [0xffu8; 72];
        let mut records = DirentBuffer::new(&mut storage);
        records.push(5, 1, 8, b"disk.raw").unwrap();
        assert_eq!(records.len(), 32);
        records.push(6, 2, 4, b"dir").unwrap();
        assert_eq!(records.len(), 64);
        assert_eq!(records.push(7, 3, 8, b"x"), Err(DirentError::Full));
        assert_eq!(records.push(7, 3, 8, b"a/b"), Err(DirentError::InvalidName));
        assert_eq!(records.push(7, 3, 8, b""), Err(DirentError::InvalidName));
        let bytes = records.as_bytes();
        assert_eq!(&bytes[16..20], &8u32.to_ne_bytes());
        assert_eq!(&bytes[24..32], b"disk.raw");
        assert_eq!(&bytes[56..64], b"dir\0\0\0\0\0");
    }
}
