//! Parsing requests from the bytes the kernel delivers.
//!
//! A request is `fuse_in_header`, the opcode's arguments, and (for creation
//! requests, since 7.38) extensions whose length is `total_extlen * 8`. The
//! parser checks every length the header and the argument structs declare
//! and never panics: malformed input yields a [`ParseError`] that says what
//! is wrong. Unknown opcodes are not an error: they parse as
//! [`Operation::Other`] so that the server can answer them with ENOSYS.

use core::fmt;
use core::marker::PhantomData;

use zerocopy::FromBytes;

use crate::Opcode;
use crate::abi::{
    AccessIn, BatchForgetIn, BmapIn, COMPAT_INIT_IN_SIZE, COMPAT_SETXATTR_IN_SIZE, CopyFileRangeIn,
    CreateIn, CuseInitIn, EXT_GROUPS, ExtHeader, FallocateIn, FlushIn, ForgetIn, ForgetOne,
    FsyncIn, GetattrIn, GetxattrIn, InHeader, InitIn, InterruptIn, IoctlIn, LinkIn, LkIn, LseekIn,
    MkdirIn, MknodIn, NotifyRetrieveIn, OpenIn, PollIn, ReadIn, ReleaseIn, RemovemappingIn,
    RemovemappingOne, Rename2In, RenameIn, SetattrIn, SetupmappingIn, SetxattrIn, StatxIn,
    SuppGroups, SyncfsIn, WriteIn,
};
use crate::flags::InitFlags;

/// A request: its header and its typed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The `fuse_in_header`, copied out of the buffer.
    pub header: InHeader,
    /// The operation and its arguments.
    pub op: Operation<'a>,
}

/// What the parser must know about the negotiated protocol.
///
/// Only one request layout depends on negotiation rather than on the bytes
/// themselves: the kernel sends the 16-byte `fuse_setxattr_in` only if the
/// INIT reply set `SETXATTR_EXT`, else its first 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// The INIT reply set [`InitFlags::SETXATTR_EXT`].
    pub setxattr_ext: bool,
}

impl ParseOptions {
    /// The options that follow from the flags of the INIT *reply* (what
    /// the server accepted, not what the kernel offered).
    pub const fn negotiated(reply_flags: InitFlags) -> ParseOptions {
        ParseOptions {
            setxattr_ext: reply_flags.contains(InitFlags::SETXATTR_EXT),
        }
    }
}

/// The operation of a request with its parsed arguments.
///
/// Argument structs are copied out of the buffer (they are small);
/// variable-length parts (names, data, records) borrow from it. Names are
/// given without their terminating NUL.
///
/// With a split buffer ([`Request::parse_prefix`]) bulk data — WRITE and
/// NOTIFY_REPLY data, IOCTL input, a SETXATTR value — may continue past the
/// first buffer; such fields hold the part that is present and the
/// argument struct says how long the whole is. Everything else must lie in
/// the first buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    /// `FUSE_LOOKUP`.
    Lookup {
        /// The name to look up.
        name: &'a [u8],
    },
    /// `FUSE_FORGET` (no reply).
    Forget(ForgetIn),
    /// `FUSE_GETATTR`.
    Getattr(GetattrIn),
    /// `FUSE_SETATTR`.
    Setattr(SetattrIn),
    /// `FUSE_READLINK`.
    Readlink,
    /// `FUSE_SYMLINK`.
    Symlink {
        /// The name of the new link.
        name: &'a [u8],
        /// What it points to.
        target: &'a [u8],
        /// Request extensions (security context, supplementary groups).
        extensions: Extensions<'a>,
    },
    /// `FUSE_MKNOD`.
    Mknod {
        /// The arguments.
        arg: MknodIn,
        /// The name of the new node.
        name: &'a [u8],
        /// Request extensions (security context, supplementary groups).
        extensions: Extensions<'a>,
    },
    /// `FUSE_MKDIR`.
    Mkdir {
        /// The arguments.
        arg: MkdirIn,
        /// The name of the new directory.
        name: &'a [u8],
        /// Request extensions (security context, supplementary groups).
        extensions: Extensions<'a>,
    },
    /// `FUSE_UNLINK`.
    Unlink {
        /// The name to remove.
        name: &'a [u8],
    },
    /// `FUSE_RMDIR`.
    Rmdir {
        /// The name to remove.
        name: &'a [u8],
    },
    /// `FUSE_RENAME`.
    Rename {
        /// The arguments.
        arg: RenameIn,
        /// The old name (in the request's `nodeid`).
        old_name: &'a [u8],
        /// The new name (in `arg.newdir`).
        new_name: &'a [u8],
    },
    /// `FUSE_LINK`.
    Link {
        /// The arguments.
        arg: LinkIn,
        /// The new name (in the request's `nodeid`).
        name: &'a [u8],
    },
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
    /// `FUSE_SETXATTR`.
    Setxattr {
        /// The arguments; without `SETXATTR_EXT` only `size` and `flags`
        /// were sent and the other fields read as zero.
        arg: SetxattrIn,
        /// The attribute name.
        name: &'a [u8],
        /// The part of the `arg.size`-byte value present in the parsed bytes.
        value: &'a [u8],
    },
    /// `FUSE_GETXATTR`.
    Getxattr {
        /// The arguments.
        arg: GetxattrIn,
        /// The attribute name without its terminating NUL.
        name: &'a [u8],
    },
    /// `FUSE_LISTXATTR`.
    Listxattr(GetxattrIn),
    /// `FUSE_REMOVEXATTR`.
    Removexattr {
        /// The attribute name.
        name: &'a [u8],
    },
    /// `FUSE_FLUSH`.
    Flush(FlushIn),
    /// `FUSE_INIT`; pre-7.36 kernels send only the first 16 bytes, the rest reads as zero.
    Init(InitIn),
    /// `FUSE_OPENDIR`.
    Opendir(OpenIn),
    /// `FUSE_READDIR`.
    Readdir(ReadIn),
    /// `FUSE_RELEASEDIR`.
    Releasedir(ReleaseIn),
    /// `FUSE_FSYNCDIR`.
    Fsyncdir(FsyncIn),
    /// `FUSE_GETLK`.
    Getlk(LkIn),
    /// `FUSE_SETLK`.
    Setlk(LkIn),
    /// `FUSE_SETLKW`.
    Setlkw(LkIn),
    /// `FUSE_ACCESS`.
    Access(AccessIn),
    /// `FUSE_CREATE`.
    Create {
        /// The arguments.
        arg: CreateIn,
        /// The name of the new file.
        name: &'a [u8],
        /// Request extensions (security context, supplementary groups).
        extensions: Extensions<'a>,
    },
    /// `FUSE_INTERRUPT`.
    Interrupt(InterruptIn),
    /// `FUSE_BMAP`.
    Bmap(BmapIn),
    /// `FUSE_DESTROY` (no arguments).
    Destroy,
    /// `FUSE_IOCTL`.
    Ioctl {
        /// The arguments.
        arg: IoctlIn,
        /// The part of the `arg.in_size`-byte input present in the parsed bytes.
        data: &'a [u8],
    },
    /// `FUSE_POLL`.
    Poll(PollIn),
    /// `FUSE_NOTIFY_REPLY`: the kernel's answer to a retrieve notification
    /// (`header.unique` is the `notify_unique`; no reply).
    NotifyReply {
        /// The arguments.
        arg: NotifyRetrieveIn,
        /// The part of the `arg.size`-byte data present in the parsed bytes.
        data: &'a [u8],
    },
    /// `FUSE_BATCH_FORGET` (no reply).
    BatchForget {
        /// The arguments.
        arg: BatchForgetIn,
        /// The `arg.count` entries.
        entries: ForgetEntries<'a>,
    },
    /// `FUSE_FALLOCATE`.
    Fallocate(FallocateIn),
    /// `FUSE_READDIRPLUS`.
    Readdirplus(ReadIn),
    /// `FUSE_RENAME2`.
    Rename2 {
        /// The arguments.
        arg: Rename2In,
        /// The old name (in the request's `nodeid`).
        old_name: &'a [u8],
        /// The new name (in `arg.newdir`).
        new_name: &'a [u8],
    },
    /// `FUSE_LSEEK`.
    Lseek(LseekIn),
    /// `FUSE_COPY_FILE_RANGE`.
    CopyFileRange(CopyFileRangeIn),
    /// `FUSE_SETUPMAPPING`.
    Setupmapping(SetupmappingIn),
    /// `FUSE_REMOVEMAPPING`.
    Removemapping {
        /// The arguments.
        arg: RemovemappingIn,
        /// The `arg.count` entries.
        entries: RemovemappingEntries<'a>,
    },
    /// `FUSE_SYNCFS`.
    Syncfs(SyncfsIn),
    /// `FUSE_TMPFILE`.
    Tmpfile {
        /// The arguments.
        arg: CreateIn,
        /// The name the kernel passes for the unnamed file.
        name: &'a [u8],
        /// Request extensions (security context, supplementary groups).
        extensions: Extensions<'a>,
    },
    /// `FUSE_STATX`.
    Statx(StatxIn),
    /// `FUSE_COPY_FILE_RANGE_64`.
    CopyFileRange64(CopyFileRangeIn),
    /// `CUSE_INIT`.
    CuseInit(CuseInitIn),
    /// Any other opcode (unknown to this crate, or reserved); its body is
    /// kept as bytes (the part present in the parsed buffer).
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
            Operation::Lookup { .. } => Opcode::LOOKUP,
            Operation::Forget(_) => Opcode::FORGET,
            Operation::Getattr(_) => Opcode::GETATTR,
            Operation::Setattr(_) => Opcode::SETATTR,
            Operation::Readlink => Opcode::READLINK,
            Operation::Symlink { .. } => Opcode::SYMLINK,
            Operation::Mknod { .. } => Opcode::MKNOD,
            Operation::Mkdir { .. } => Opcode::MKDIR,
            Operation::Unlink { .. } => Opcode::UNLINK,
            Operation::Rmdir { .. } => Opcode::RMDIR,
            Operation::Rename { .. } => Opcode::RENAME,
            Operation::Link { .. } => Opcode::LINK,
            Operation::Open(_) => Opcode::OPEN,
            Operation::Read(_) => Opcode::READ,
            Operation::Write { .. } => Opcode::WRITE,
            Operation::Statfs => Opcode::STATFS,
            Operation::Release(_) => Opcode::RELEASE,
            Operation::Fsync(_) => Opcode::FSYNC,
            Operation::Setxattr { .. } => Opcode::SETXATTR,
            Operation::Getxattr { .. } => Opcode::GETXATTR,
            Operation::Listxattr(_) => Opcode::LISTXATTR,
            Operation::Removexattr { .. } => Opcode::REMOVEXATTR,
            Operation::Flush(_) => Opcode::FLUSH,
            Operation::Init(_) => Opcode::INIT,
            Operation::Opendir(_) => Opcode::OPENDIR,
            Operation::Readdir(_) => Opcode::READDIR,
            Operation::Releasedir(_) => Opcode::RELEASEDIR,
            Operation::Fsyncdir(_) => Opcode::FSYNCDIR,
            Operation::Getlk(_) => Opcode::GETLK,
            Operation::Setlk(_) => Opcode::SETLK,
            Operation::Setlkw(_) => Opcode::SETLKW,
            Operation::Access(_) => Opcode::ACCESS,
            Operation::Create { .. } => Opcode::CREATE,
            Operation::Interrupt(_) => Opcode::INTERRUPT,
            Operation::Bmap(_) => Opcode::BMAP,
            Operation::Destroy => Opcode::DESTROY,
            Operation::Ioctl { .. } => Opcode::IOCTL,
            Operation::Poll(_) => Opcode::POLL,
            Operation::NotifyReply { .. } => Opcode::NOTIFY_REPLY,
            Operation::BatchForget { .. } => Opcode::BATCH_FORGET,
            Operation::Fallocate(_) => Opcode::FALLOCATE,
            Operation::Readdirplus(_) => Opcode::READDIRPLUS,
            Operation::Rename2 { .. } => Opcode::RENAME2,
            Operation::Lseek(_) => Opcode::LSEEK,
            Operation::CopyFileRange(_) => Opcode::COPY_FILE_RANGE,
            Operation::Setupmapping(_) => Opcode::SETUPMAPPING,
            Operation::Removemapping { .. } => Opcode::REMOVEMAPPING,
            Operation::Syncfs(_) => Opcode::SYNCFS,
            Operation::Tmpfile { .. } => Opcode::TMPFILE,
            Operation::Statx(_) => Opcode::STATX,
            Operation::CopyFileRange64(_) => Opcode::COPY_FILE_RANGE_64,
            Operation::CuseInit(_) => Opcode::CUSE_INIT,
            Operation::Other { opcode, .. } => *opcode,
        }
    }
}

/// A run of fixed-size records after a request's argument struct
/// (BATCH_FORGET entries, REMOVEMAPPING entries, supplementary groups).
///
/// The records need not be aligned in the buffer: each is copied out when
/// read.
pub struct Records<'a, T> {
    bytes: &'a [u8],
    record: PhantomData<T>,
}

/// The entries of a BATCH_FORGET request.
pub type ForgetEntries<'a> = Records<'a, ForgetOne>;

/// The entries of a REMOVEMAPPING request.
pub type RemovemappingEntries<'a> = Records<'a, RemovemappingOne>;

impl<'a, T: FromBytes> Records<'a, T> {
    /// Takes the first `count` records of `bytes`, or `None` if there are fewer.
    fn new(bytes: &'a [u8], count: usize) -> Option<Records<'a, T>> {
        let len = count.checked_mul(size_of::<T>())?;
        Some(Records {
            bytes: bytes.get(..len)?,
            record: PhantomData,
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.bytes.len().checked_div(size_of::<T>()).unwrap_or(0)
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The record at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<T> {
        let start = index.checked_mul(size_of::<T>())?;
        let (value, _) = T::read_from_prefix(self.bytes.get(start..)?).ok()?;
        Some(value)
    }

    /// The records in order.
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        self.bytes
            .chunks_exact(size_of::<T>().max(1))
            .filter_map(|chunk| T::read_from_bytes(chunk).ok())
    }

    /// The raw bytes of all records.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl<T> Clone for Records<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Records<'_, T> {}

impl<T> PartialEq for Records<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<T> Eq for Records<'_, T> {}

impl<T: FromBytes + fmt::Debug> fmt::Debug for Records<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The extensions at the end of a creation request (7.38): a sequence of
/// records, each starting with `fuse_ext_header` and 8-byte aligned.
///
/// The parser has checked that the records tile the area exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extensions<'a> {
    bytes: &'a [u8],
}

/// One request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// `fuse_ext_header.type`: 0..=`MAX_NR_SECCTX` for a security-context
    /// block (then it is the number of contexts), `EXT_GROUPS` for
    /// supplementary groups; other values are kept as they are.
    pub ext_type: u32,
    /// The bytes after the 8-byte header, padding included.
    pub payload: &'a [u8],
}

impl<'a> Extensions<'a> {
    /// Checks that `bytes` is a well-formed sequence of extension records.
    fn parse(bytes: &'a [u8]) -> Result<Extensions<'a>, ParseError> {
        let mut offset = 0;
        while let Some(rest) = bytes.get(offset..).filter(|rest| !rest.is_empty()) {
            let size = ExtHeader::read_from_prefix(rest)
                .ok()
                .map(|(header, _)| header.size as usize)
                .filter(|&size| size >= size_of::<ExtHeader>() && size % 8 == 0)
                .filter(|&size| size <= rest.len());
            match size {
                Some(size) => offset += size,
                None => return Err(ParseError::MalformedExtension { offset }),
            }
        }
        Ok(Extensions { bytes })
    }

    /// Whether the request carries no extensions.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The raw extension area.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The extensions in order.
    pub fn iter(&self) -> impl Iterator<Item = Extension<'a>> + 'a {
        let mut rest = self.bytes;
        core::iter::from_fn(move || {
            let (header, _) = ExtHeader::read_from_prefix(rest).ok()?;
            let size = (header.size as usize).max(size_of::<ExtHeader>());
            let (record, tail) = rest.split_at_checked(size)?;
            rest = tail;
            Some(Extension {
                ext_type: header.ext_type,
                payload: record.get(size_of::<ExtHeader>()..)?,
            })
        })
    }
}

impl<'a> Extension<'a> {
    /// The group ids of a supplementary-group extension (`EXT_GROUPS`), or
    /// `None` for other extensions or a malformed one.
    pub fn supplementary_groups(&self) -> Option<Records<'a, u32>> {
        if self.ext_type != EXT_GROUPS {
            return None;
        }
        let (groups, rest) = SuppGroups::read_from_prefix(self.payload).ok()?;
        Records::new(rest, groups.nr_groups as usize)
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
    /// The arguments are cut short: a fixed-size struct is incomplete, or a
    /// part that must lie in the first buffer (a name, a record array) does not.
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
    /// A size or count in an argument struct disagrees with the bytes that
    /// follow it (IOCTL `in_size`, SETXATTR and NOTIFY_REPLY `size`,
    /// BATCH_FORGET and REMOVEMAPPING `count`).
    DataSizeMismatch {
        /// The request's opcode.
        opcode: Opcode,
        /// Bytes the argument struct declares.
        declared: u64,
        /// Bytes in the message.
        received: usize,
    },
    /// `in_header.total_extlen * 8` is more than the bytes after the header.
    ExtensionsTooLong {
        /// `total_extlen` from the header (units of 8 bytes).
        total_extlen: u16,
        /// Bytes after the header.
        available: usize,
    },
    /// An extension record's size is below 8, not a multiple of 8, or runs
    /// past the extension area.
    MalformedExtension {
        /// Offset of the record within the extension area.
        offset: usize,
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
            ParseError::DataSizeMismatch {
                opcode,
                declared,
                received,
            } => write!(
                f,
                "{opcode} declares {declared} bytes of data but carries {received}"
            ),
            ParseError::ExtensionsTooLong {
                total_extlen,
                available,
            } => write!(
                f,
                "total_extlen {total_extlen} ({} bytes) exceeds the {available} bytes after the header",
                usize::from(total_extlen) * 8
            ),
            ParseError::MalformedExtension { offset } => {
                write!(f, "malformed request extension at offset {offset}")
            }
        }
    }
}

impl core::error::Error for ParseError {}

const HEADER_LEN: usize = size_of::<InHeader>();

impl<'a> Request<'a> {
    /// Parses one whole request held contiguously in `msg`.
    pub fn parse(msg: &'a [u8]) -> Result<Request<'a>, ParseError> {
        Request::parse_prefix_with(msg, msg.len(), ParseOptions::default())
    }

    /// Parses a request of `total_len` bytes of which `head` holds the first
    /// `head.len()` (the rest, if any, went to later buffers of a vectored
    /// read). Fixed-size arguments, names and record arrays must lie in
    /// `head`; bulk data may continue past it (see [`Operation`]).
    pub fn parse_prefix(head: &'a [u8], total_len: usize) -> Result<Request<'a>, ParseError> {
        Request::parse_prefix_with(head, total_len, ParseOptions::default())
    }

    /// [`Request::parse_prefix`] for a connection whose negotiation changed
    /// a request layout (see [`ParseOptions`]).
    pub fn parse_prefix_with(
        head: &'a [u8],
        total_len: usize,
        options: ParseOptions,
    ) -> Result<Request<'a>, ParseError> {
        let Ok((header, after_header)) = InHeader::read_from_prefix(head) else {
            return Err(ParseError::ShortHeader { len: head.len() });
        };
        if header.len as usize != total_len || head.len() > total_len {
            return Err(ParseError::LengthMismatch {
                declared: header.len,
                received: total_len,
            });
        }
        let opcode = Opcode(header.opcode);
        // total_len >= head.len() >= HEADER_LEN, so this cannot underflow.
        let body_len = total_len.saturating_sub(HEADER_LEN);
        let ext_len = usize::from(header.total_extlen) * 8;
        let Some(args_len) = body_len.checked_sub(ext_len) else {
            return Err(ParseError::ExtensionsTooLong {
                total_extlen: header.total_extlen,
                available: body_len,
            });
        };
        let body = Body {
            opcode,
            after_header,
            body_len,
            args_len,
        };
        let args = body.args();
        let op = match opcode {
            Opcode::LOOKUP => Operation::Lookup {
                name: args.name()?.0,
            },
            Opcode::FORGET => Operation::Forget(args.take()?.0),
            Opcode::GETATTR => Operation::Getattr(args.take()?.0),
            Opcode::SETATTR => Operation::Setattr(args.take()?.0),
            Opcode::READLINK => Operation::Readlink,
            Opcode::SYMLINK => {
                let (name, rest) = args.name()?;
                let (target, _) = rest.name()?;
                Operation::Symlink {
                    name,
                    target,
                    extensions: body.extensions()?,
                }
            }
            Opcode::MKNOD => {
                let (arg, rest) = args.take()?;
                Operation::Mknod {
                    arg,
                    name: rest.name()?.0,
                    extensions: body.extensions()?,
                }
            }
            Opcode::MKDIR => {
                let (arg, rest) = args.take()?;
                Operation::Mkdir {
                    arg,
                    name: rest.name()?.0,
                    extensions: body.extensions()?,
                }
            }
            Opcode::UNLINK => Operation::Unlink {
                name: args.name()?.0,
            },
            Opcode::RMDIR => Operation::Rmdir {
                name: args.name()?.0,
            },
            Opcode::RENAME => {
                let (arg, rest) = args.take()?;
                let (old_name, rest) = rest.name()?;
                Operation::Rename {
                    arg,
                    old_name,
                    new_name: rest.name()?.0,
                }
            }
            Opcode::LINK => {
                let (arg, rest) = args.take()?;
                Operation::Link {
                    arg,
                    name: rest.name()?.0,
                }
            }
            Opcode::OPEN => Operation::Open(args.take()?.0),
            Opcode::READ => Operation::Read(args.take()?.0),
            Opcode::WRITE => {
                let (arg, data): (WriteIn, _) = args.take()?;
                if arg.size as usize != data.total {
                    return Err(ParseError::WriteSizeMismatch {
                        declared: arg.size,
                        received: data.total,
                    });
                }
                Operation::Write {
                    arg,
                    data: data.present,
                }
            }
            Opcode::STATFS => Operation::Statfs,
            Opcode::RELEASE => Operation::Release(args.take()?.0),
            Opcode::FSYNC => Operation::Fsync(args.take()?.0),
            Opcode::SETXATTR => {
                let (arg, rest): (SetxattrIn, _) = if options.setxattr_ext {
                    args.take()?
                } else {
                    args.take_partial(COMPAT_SETXATTR_IN_SIZE)?
                };
                let (name, value) = rest.name()?;
                Operation::Setxattr {
                    arg,
                    name,
                    value: value.sized_data(u64::from(arg.size))?,
                }
            }
            Opcode::GETXATTR => {
                let (arg, rest) = args.take()?;
                Operation::Getxattr {
                    arg,
                    name: rest.name()?.0,
                }
            }
            Opcode::LISTXATTR => Operation::Listxattr(args.take()?.0),
            Opcode::REMOVEXATTR => Operation::Removexattr {
                name: args.name()?.0,
            },
            Opcode::FLUSH => Operation::Flush(args.take()?.0),
            Opcode::INIT => {
                // INIT has one argument: all of it up to 64 bytes is
                // fuse_init_in, of which kernels before 7.36 send 16.
                let len = args
                    .present
                    .len()
                    .clamp(COMPAT_INIT_IN_SIZE, size_of::<InitIn>());
                Operation::Init(args.take_partial(len)?.0)
            }
            Opcode::OPENDIR => Operation::Opendir(args.take()?.0),
            Opcode::READDIR => Operation::Readdir(args.take()?.0),
            Opcode::RELEASEDIR => Operation::Releasedir(args.take()?.0),
            Opcode::FSYNCDIR => Operation::Fsyncdir(args.take()?.0),
            Opcode::GETLK => Operation::Getlk(args.take()?.0),
            Opcode::SETLK => Operation::Setlk(args.take()?.0),
            Opcode::SETLKW => Operation::Setlkw(args.take()?.0),
            Opcode::ACCESS => Operation::Access(args.take()?.0),
            Opcode::CREATE => {
                let (arg, rest) = args.take()?;
                Operation::Create {
                    arg,
                    name: rest.name()?.0,
                    extensions: body.extensions()?,
                }
            }
            Opcode::INTERRUPT => Operation::Interrupt(args.take()?.0),
            Opcode::BMAP => Operation::Bmap(args.take()?.0),
            Opcode::DESTROY => Operation::Destroy,
            Opcode::IOCTL => {
                let (arg, data): (IoctlIn, _) = args.take()?;
                Operation::Ioctl {
                    arg,
                    data: data.sized_data(u64::from(arg.in_size))?,
                }
            }
            Opcode::POLL => Operation::Poll(args.take()?.0),
            Opcode::NOTIFY_REPLY => {
                let (arg, data): (NotifyRetrieveIn, _) = args.take()?;
                Operation::NotifyReply {
                    arg,
                    data: data.sized_data(u64::from(arg.size))?,
                }
            }
            Opcode::BATCH_FORGET => {
                let (arg, rest): (BatchForgetIn, _) = args.take()?;
                Operation::BatchForget {
                    arg,
                    entries: rest.records(arg.count)?,
                }
            }
            Opcode::FALLOCATE => Operation::Fallocate(args.take()?.0),
            Opcode::READDIRPLUS => Operation::Readdirplus(args.take()?.0),
            Opcode::RENAME2 => {
                let (arg, rest) = args.take()?;
                let (old_name, rest) = rest.name()?;
                Operation::Rename2 {
                    arg,
                    old_name,
                    new_name: rest.name()?.0,
                }
            }
            Opcode::LSEEK => Operation::Lseek(args.take()?.0),
            Opcode::COPY_FILE_RANGE => Operation::CopyFileRange(args.take()?.0),
            Opcode::SETUPMAPPING => Operation::Setupmapping(args.take()?.0),
            Opcode::REMOVEMAPPING => {
                let (arg, rest): (RemovemappingIn, _) = args.take()?;
                Operation::Removemapping {
                    arg,
                    entries: rest.records(arg.count)?,
                }
            }
            Opcode::SYNCFS => Operation::Syncfs(args.take()?.0),
            Opcode::TMPFILE => {
                let (arg, rest) = args.take()?;
                Operation::Tmpfile {
                    arg,
                    name: rest.name()?.0,
                    extensions: body.extensions()?,
                }
            }
            Opcode::STATX => Operation::Statx(args.take()?.0),
            Opcode::COPY_FILE_RANGE_64 => Operation::CopyFileRange64(args.take()?.0),
            Opcode::CUSE_INIT => Operation::CuseInit(args.take()?.0),
            _ => Operation::Other {
                opcode,
                body: after_header,
            },
        };
        Ok(Request { header, op })
    }

    /// The request's opcode.
    pub fn opcode(&self) -> Opcode {
        Opcode(self.header.opcode)
    }
}

/// The bytes after the header: arguments, then extensions.
#[derive(Clone, Copy)]
struct Body<'a> {
    opcode: Opcode,
    /// What the first buffer holds after the header.
    after_header: &'a [u8],
    /// Bytes after the header in the whole request.
    body_len: usize,
    /// Bytes of arguments (the body without the extensions).
    args_len: usize,
}

impl<'a> Body<'a> {
    fn args(&self) -> Args<'a> {
        Args {
            opcode: self.opcode,
            present: self
                .after_header
                .get(..self.args_len)
                .unwrap_or(self.after_header),
            consumed: 0,
            total: self.args_len,
        }
    }

    /// The extensions, which must lie in the first buffer.
    fn extensions(&self) -> Result<Extensions<'a>, ParseError> {
        if self.args_len == self.body_len {
            return Ok(Extensions::default());
        }
        if self.after_header.len() < self.body_len {
            return Err(truncated(
                self.opcode,
                self.body_len,
                self.after_header.len(),
            ));
        }
        let area = self.after_header.get(self.args_len..).unwrap_or_default();
        Extensions::parse(area)
    }
}

/// The not yet parsed rest of a request's arguments.
#[derive(Clone, Copy)]
struct Args<'a> {
    opcode: Opcode,
    /// The part present in the first buffer.
    present: &'a [u8],
    /// Argument bytes already parsed (for error messages).
    consumed: usize,
    /// Bytes left in the whole request (`present.len() <= total`).
    total: usize,
}

impl<'a> Args<'a> {
    fn advance(self, len: usize) -> Args<'a> {
        Args {
            opcode: self.opcode,
            present: self.present.get(len..).unwrap_or_default(),
            consumed: self.consumed.saturating_add(len),
            total: self.total.saturating_sub(len),
        }
    }

    fn truncated(&self, needed_here: usize) -> ParseError {
        truncated(
            self.opcode,
            self.consumed.saturating_add(needed_here),
            self.consumed.saturating_add(self.present.len()),
        )
    }

    /// Reads a fixed-size argument struct.
    fn take<T: FromBytes>(self) -> Result<(T, Args<'a>), ParseError> {
        match T::read_from_prefix(self.present) {
            Ok((value, _)) => Ok((value, self.advance(size_of::<T>()))),
            Err(_) => Err(self.truncated(size_of::<T>())),
        }
    }

    /// Reads the first `len` bytes of an argument struct that older
    /// protocol versions (or negotiations) send shortened; the bytes not
    /// sent read as zero.
    fn take_partial<T: FromBytes>(self, len: usize) -> Result<(T, Args<'a>), ParseError> {
        const MAX_PARTIAL: usize = 64;
        const { assert!(size_of::<T>() <= MAX_PARTIAL) };
        let len = len.min(size_of::<T>());
        let Some(source) = self.present.get(..len) else {
            return Err(self.truncated(len));
        };
        let mut buffer = [0u8; MAX_PARTIAL];
        if let Some(target) = buffer.get_mut(..len) {
            target.copy_from_slice(source);
        }
        match T::read_from_prefix(&buffer) {
            Ok((value, _)) => Ok((value, self.advance(len))),
            Err(_) => Err(self.truncated(size_of::<T>())),
        }
    }

    /// Reads a NUL-terminated name, which must lie in the first buffer.
    fn name(self) -> Result<(&'a [u8], Args<'a>), ParseError> {
        match self.present.iter().position(|&byte| byte == 0) {
            Some(nul) => {
                let name = self.present.get(..nul).unwrap_or_default();
                Ok((name, self.advance(nul.saturating_add(1))))
            }
            None if self.present.len() < self.total => Err(self.truncated(self.total)),
            None => Err(ParseError::MissingNul {
                opcode: self.opcode,
            }),
        }
    }

    /// The rest as bulk data whose length an argument declared; returns
    /// the part present in the first buffer.
    fn sized_data(self, declared: u64) -> Result<&'a [u8], ParseError> {
        if declared != self.total as u64 {
            return Err(ParseError::DataSizeMismatch {
                opcode: self.opcode,
                declared,
                received: self.total,
            });
        }
        Ok(self.present)
    }

    /// The rest as exactly `count` records, which must lie in the first buffer.
    fn records<T: FromBytes>(self, count: u32) -> Result<Records<'a, T>, ParseError> {
        let declared = u64::from(count) * size_of::<T>() as u64;
        if declared != self.total as u64 {
            return Err(ParseError::DataSizeMismatch {
                opcode: self.opcode,
                declared,
                received: self.total,
            });
        }
        Records::new(self.present, count as usize).ok_or_else(|| self.truncated(self.total))
    }
}

fn truncated(opcode: Opcode, needed: usize, available: usize) -> ParseError {
    ParseError::Truncated {
        opcode,
        needed,
        available,
    }
}
