//! Parsing requests from the bytes the kernel delivers.

use core::fmt;

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::Opcode;
use crate::abi::{
    COMPAT_INIT_IN_SIZE, FallocateIn, FlushIn, FsyncIn, GetattrIn, GetxattrIn, InHeader, InitIn,
    InterruptIn, LseekIn, OpenIn, ReadIn, ReleaseIn, SetattrIn, WriteIn,
};

/// A request: its header and its typed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The `fuse_in_header`, copied out of the buffer.
    pub header: InHeader,
    /// The operation and its arguments.
    pub op: Operation<'a>,
}

/// The operation of a request with its parsed arguments.
///
/// Arguments are copied out of the buffer (they are small); variable-length
/// parts (names, write data) borrow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    /// `FUSE_INIT`; pre-7.36 kernels send only the first 16 bytes, the rest reads as zero.
    Init(InitIn),
    /// `FUSE_GETATTR`.
    Getattr(GetattrIn),
    /// `FUSE_SETATTR`.
    Setattr(SetattrIn),
    /// `FUSE_OPEN`.
    Open(OpenIn),
    /// `FUSE_READ`.
    Read(ReadIn),
    /// `FUSE_WRITE`: `arg.size` bytes of data follow the 80-byte header.
    Write {
        /// The write arguments.
        arg: WriteIn,
        /// The part of the data present in the parsed bytes. With a split
        /// buffer (see [`Request::parse_prefix`]) the rest is in later buffers.
        data: &'a [u8],
    },
    /// `FUSE_STATFS`.
    Statfs,
    /// `FUSE_RELEASE`.
    Release(ReleaseIn),
    /// `FUSE_FSYNC`.
    Fsync(FsyncIn),
    /// `FUSE_FLUSH`.
    Flush(FlushIn),
    /// `FUSE_GETXATTR`.
    Getxattr {
        /// The arguments.
        arg: GetxattrIn,
        /// The attribute name without its terminating NUL.
        name: &'a [u8],
    },
    /// `FUSE_INTERRUPT`.
    Interrupt(InterruptIn),
    /// `FUSE_FALLOCATE`.
    Fallocate(FallocateIn),
    /// `FUSE_LSEEK`.
    Lseek(LseekIn),
    /// `FUSE_DESTROY` (no arguments).
    Destroy,
    /// Any other opcode, known or not; its body is kept as bytes (the part
    /// present in the parsed buffer).
    Other {
        /// The opcode as sent.
        opcode: Opcode,
        /// The bytes after the header.
        body: &'a [u8],
    },
}

impl Operation<'_> {
    /// The opcode this operation was parsed from.
    pub fn opcode(&self) -> Opcode {
        match self {
            Operation::Init(_) => Opcode::INIT,
            Operation::Getattr(_) => Opcode::GETATTR,
            Operation::Setattr(_) => Opcode::SETATTR,
            Operation::Open(_) => Opcode::OPEN,
            Operation::Read(_) => Opcode::READ,
            Operation::Write { .. } => Opcode::WRITE,
            Operation::Statfs => Opcode::STATFS,
            Operation::Release(_) => Opcode::RELEASE,
            Operation::Fsync(_) => Opcode::FSYNC,
            Operation::Flush(_) => Opcode::FLUSH,
            Operation::Getxattr { .. } => Opcode::GETXATTR,
            Operation::Interrupt(_) => Opcode::INTERRUPT,
            Operation::Fallocate(_) => Opcode::FALLOCATE,
            Operation::Lseek(_) => Opcode::LSEEK,
            Operation::Destroy => Opcode::DESTROY,
            Operation::Other { opcode, .. } => *opcode,
        }
    }
}

/// Why bytes are not a valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than a `fuse_in_header`.
    ShortHeader {
        /// Bytes available.
        len: usize,
    },
    /// `in_header.len` disagrees with the number of bytes received.
    LengthMismatch {
        /// `len` from the header.
        declared: u32,
        /// Bytes actually received.
        received: usize,
    },
    /// The per-operation struct is cut short.
    Truncated {
        /// The request's opcode.
        opcode: Opcode,
        /// Bytes the operation needs after the header.
        needed: usize,
        /// Bytes available after the header.
        available: usize,
    },
    /// A name argument has no terminating NUL.
    MissingNul {
        /// The request's opcode.
        opcode: Opcode,
    },
    /// A WRITE's `size` disagrees with the data that follows it.
    WriteSizeMismatch {
        /// `size` from `fuse_write_in`.
        declared: u32,
        /// Data bytes in the message.
        received: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParseError::ShortHeader { len } => {
                write!(
                    f,
                    "request of {len} bytes is shorter than fuse_in_header (40)"
                )
            }
            ParseError::LengthMismatch { declared, received } => {
                write!(
                    f,
                    "header says {declared} bytes but {received} were received"
                )
            }
            ParseError::Truncated {
                opcode,
                needed,
                available,
            } => write!(
                f,
                "{opcode} needs {needed} bytes of arguments but only {available} are present"
            ),
            ParseError::MissingNul { opcode } => write!(f, "{opcode} name is not NUL-terminated"),
            ParseError::WriteSizeMismatch { declared, received } => {
                write!(
                    f,
                    "WRITE declares {declared} bytes of data but carries {received}"
                )
            }
        }
    }
}

impl core::error::Error for ParseError {}

const HEADER_LEN: usize = size_of::<InHeader>();

impl<'a> Request<'a> {
    /// Parses one whole request held contiguously in `msg`.
    pub fn parse(msg: &'a [u8]) -> Result<Request<'a>, ParseError> {
        Request::parse_prefix(msg, msg.len())
    }

    /// Parses a request of `total_len` bytes of which `head` holds the first
    /// `head.len()` (the rest, if any, went to later buffers of a vectored
    /// read). Fixed-size arguments must lie in `head`; a WRITE's data may
    /// continue past it.
    pub fn parse_prefix(head: &'a [u8], total_len: usize) -> Result<Request<'a>, ParseError> {
        let Ok((header, _)) = InHeader::read_from_prefix(head) else {
            return Err(ParseError::ShortHeader { len: head.len() });
        };
        if header.len as usize != total_len || head.len() > total_len {
            return Err(ParseError::LengthMismatch {
                declared: header.len,
                received: total_len,
            });
        }
        let body = &head[HEADER_LEN..];
        let opcode = Opcode(header.opcode);
        let op = match opcode {
            Opcode::INIT => {
                if body.len() < COMPAT_INIT_IN_SIZE {
                    return Err(truncated(opcode, COMPAT_INIT_IN_SIZE, body.len()));
                }
                // Pre-7.36 kernels send 16 bytes; the fields they lack read as zero.
                let mut init = InitIn::new_zeroed();
                let present = body.len().min(size_of::<InitIn>());
                init.as_mut_bytes()[..present].copy_from_slice(&body[..present]);
                Operation::Init(init)
            }
            Opcode::GETATTR => Operation::Getattr(arg(opcode, body)?),
            Opcode::SETATTR => Operation::Setattr(arg(opcode, body)?),
            Opcode::OPEN => Operation::Open(arg(opcode, body)?),
            Opcode::READ => Operation::Read(arg(opcode, body)?),
            Opcode::WRITE => {
                let arg: WriteIn = arg(opcode, body)?;
                let data_len = total_len - HEADER_LEN - size_of::<WriteIn>();
                if arg.size as usize != data_len {
                    return Err(ParseError::WriteSizeMismatch {
                        declared: arg.size,
                        received: data_len,
                    });
                }
                Operation::Write {
                    arg,
                    data: &body[size_of::<WriteIn>()..],
                }
            }
            Opcode::STATFS => Operation::Statfs,
            Opcode::RELEASE => Operation::Release(arg(opcode, body)?),
            Opcode::FSYNC => Operation::Fsync(arg(opcode, body)?),
            Opcode::FLUSH => Operation::Flush(arg(opcode, body)?),
            Opcode::GETXATTR => {
                let arg: GetxattrIn = arg(opcode, body)?;
                let rest = &body[size_of::<GetxattrIn>()..];
                if head.len() < total_len {
                    return Err(truncated(opcode, total_len - HEADER_LEN, body.len()));
                }
                let name = match rest.iter().position(|&b| b == 0) {
                    Some(nul) => &rest[..nul],
                    None => return Err(ParseError::MissingNul { opcode }),
                };
                Operation::Getxattr { arg, name }
            }
            Opcode::INTERRUPT => Operation::Interrupt(arg(opcode, body)?),
            Opcode::FALLOCATE => Operation::Fallocate(arg(opcode, body)?),
            Opcode::LSEEK => Operation::Lseek(arg(opcode, body)?),
            Opcode::DESTROY => Operation::Destroy,
            _ => Operation::Other { opcode, body },
        };
        Ok(Request { header, op })
    }
}

fn truncated(opcode: Opcode, needed: usize, available: usize) -> ParseError {
    ParseError::Truncated {
        opcode,
        needed,
        available,
    }
}

/// Reads the fixed-size argument struct at the start of `body`.
fn arg<T: FromBytes>(opcode: Opcode, body: &[u8]) -> Result<T, ParseError> {
    T::read_from_prefix(body)
        .map(|(value, _)| value)
        .map_err(|_| truncated(opcode, size_of::<T>(), body.len()))
}
