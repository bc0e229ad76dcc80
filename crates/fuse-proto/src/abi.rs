//! Wire structs of protocol 7.45, one Rust struct per kernel struct.
//!
//! Every struct is `#[repr(C)]`, has explicit padding (the kernel's layouts
//! never rely on compiler padding) and is checked against the kernel's size
//! and field offsets at compile time below. Host byte order, as the kernel
//! uses.
//!
//! Structs the kernel sends derive `FromBytes` (read with
//! `read_from_prefix`, which copies and so has no alignment requirement);
//! structs the server sends derive `IntoBytes`. Structs that travel both ways
//! in tests or in both directions derive both.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct fuse_in_header`: precedes every request.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct InHeader {
    /// Total request length in bytes, this header included.
    pub len: u32,
    /// The [`Opcode`](crate::Opcode) as a number.
    pub opcode: u32,
    /// Request id; the reply carries it back. Even; odd ids are interrupts.
    pub unique: u64,
    /// Inode the request is about (1 = the mount root).
    pub nodeid: u64,
    /// Caller's fsuid.
    pub uid: u32,
    /// Caller's fsgid.
    pub gid: u32,
    /// Caller's pid (0 for kernel-internal requests).
    pub pid: u32,
    /// Length of request extensions in units of 8 bytes (7.38).
    pub total_extlen: u16,
    /// Padding.
    pub padding: u16,
}

/// `struct fuse_out_header`: precedes every reply.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct OutHeader {
    /// Total reply length in bytes, this header included.
    pub len: u32,
    /// 0 or a negative errno (`-1..=-511`); for notifications, the notify code.
    pub error: i32,
    /// The request's `unique` (0 for notifications).
    pub unique: u64,
}

/// `struct fuse_init_in` (64 bytes since 7.36).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct InitIn {
    /// Kernel's major version.
    pub major: u32,
    /// Kernel's minor version.
    pub minor: u32,
    /// Kernel's maximum readahead in bytes.
    pub max_readahead: u32,
    /// Offered capability flags, bits 0..32.
    pub flags: u32,
    /// Offered capability flags, bits 32..64 (valid with `INIT_EXT`).
    pub flags2: u32,
    /// Reserved.
    pub unused: [u32; 11],
}

/// Size of `fuse_init_in` before 7.36 (major, minor, max_readahead, flags).
pub const COMPAT_INIT_IN_SIZE: usize = 16;

/// `struct fuse_init_out`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct InitOut {
    /// Server's major version.
    pub major: u32,
    /// Server's minor version (the kernel adopts it verbatim).
    pub minor: u32,
    /// Maximum readahead (can only lower the kernel's).
    pub max_readahead: u32,
    /// Accepted capability flags, bits 0..32.
    pub flags: u32,
    /// Maximum number of background requests.
    pub max_background: u16,
    /// Background count at which the kernel reports congestion.
    pub congestion_threshold: u16,
    /// Maximum payload of one WRITE.
    pub max_write: u32,
    /// Timestamp granularity in nanoseconds.
    pub time_gran: u32,
    /// Maximum pages per request (valid with `MAX_PAGES`).
    pub max_pages: u16,
    /// DAX mapping alignment (log2).
    pub map_alignment: u16,
    /// Accepted capability flags, bits 32..64 (valid with `INIT_EXT`).
    pub flags2: u32,
    /// Stacking depth for passthrough (7.40).
    pub max_stack_depth: u32,
    /// Request timeout in seconds (7.43).
    pub request_timeout: u16,
    /// Reserved.
    pub unused: [u16; 11],
}

/// Size of `fuse_init_out` for servers of minor < 23.
pub const COMPAT_22_INIT_OUT_SIZE: usize = 24;

/// `struct fuse_attr`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Access time, seconds.
    pub atime: u64,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Change time, seconds.
    pub ctime: u64,
    /// Access time, nanoseconds.
    pub atimensec: u32,
    /// Modification time, nanoseconds.
    pub mtimensec: u32,
    /// Change time, nanoseconds.
    pub ctimensec: u32,
    /// File type and permission bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for device files.
    pub rdev: u32,
    /// Preferred I/O size (shown as `st_blksize`).
    pub blksize: u32,
    /// `FUSE_ATTR_*` flags.
    pub flags: u32,
}

/// `struct fuse_attr_out`: reply to GETATTR and SETATTR.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct AttrOut {
    /// Attribute cache lifetime, seconds.
    pub attr_valid: u64,
    /// Attribute cache lifetime, nanoseconds.
    pub attr_valid_nsec: u32,
    /// Padding.
    pub dummy: u32,
    /// The attributes.
    pub attr: Attr,
}

/// `struct fuse_getattr_in`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct GetattrIn {
    /// `FUSE_GETATTR_FH` when `fh` is valid.
    pub getattr_flags: u32,
    /// Padding.
    pub dummy: u32,
    /// File handle.
    pub fh: u64,
}

/// `struct fuse_setattr_in`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct SetattrIn {
    /// `FATTR_*` bits saying which fields are set.
    pub valid: u32,
    /// Padding.
    pub padding: u32,
    /// File handle (with `FATTR_FH`).
    pub fh: u64,
    /// New size (with `FATTR_SIZE`).
    pub size: u64,
    /// Lock owner (with `FATTR_LOCKOWNER`).
    pub lock_owner: u64,
    /// Access time, seconds.
    pub atime: u64,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Change time, seconds.
    pub ctime: u64,
    /// Access time, nanoseconds.
    pub atimensec: u32,
    /// Modification time, nanoseconds.
    pub mtimensec: u32,
    /// Change time, nanoseconds.
    pub ctimensec: u32,
    /// New mode (with `FATTR_MODE`).
    pub mode: u32,
    /// Reserved.
    pub unused4: u32,
    /// New owner (with `FATTR_UID`).
    pub uid: u32,
    /// New group (with `FATTR_GID`).
    pub gid: u32,
    /// Reserved.
    pub unused5: u32,
}

/// `struct fuse_open_in`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct OpenIn {
    /// `open(2)` flags (without O_CREAT/O_EXCL/O_NOCTTY).
    pub flags: u32,
    /// `FUSE_OPEN_*` flags.
    pub open_flags: u32,
}

/// `struct fuse_open_out`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct OpenOut {
    /// File handle the kernel passes back on every request for this open.
    pub fh: u64,
    /// `FOPEN_*` flags.
    pub open_flags: u32,
    /// Backing file id for passthrough (7.40); was padding before.
    pub backing_id: i32,
}

/// `struct fuse_read_in`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct ReadIn {
    /// File handle.
    pub fh: u64,
    /// Byte offset.
    pub offset: u64,
    /// Bytes wanted.
    pub size: u32,
    /// `FUSE_READ_*` flags.
    pub read_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
    /// The file's open flags.
    pub flags: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_write_in`; the data follows it.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct WriteIn {
    /// File handle.
    pub fh: u64,
    /// Byte offset.
    pub offset: u64,
    /// Bytes of data following this struct.
    pub size: u32,
    /// `FUSE_WRITE_*` flags.
    pub write_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
    /// The file's open flags (plus O_DSYNC/O_SYNC for RWF_DSYNC/RWF_SYNC).
    pub flags: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_write_out`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct WriteOut {
    /// Bytes written (never more than requested).
    pub size: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_release_in` (RELEASE and RELEASEDIR).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct ReleaseIn {
    /// File handle.
    pub fh: u64,
    /// The file's open flags.
    pub flags: u32,
    /// `FUSE_RELEASE_*` flags.
    pub release_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
}

/// `struct fuse_flush_in`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FlushIn {
    /// File handle.
    pub fh: u64,
    /// Reserved.
    pub unused: u32,
    /// Padding.
    pub padding: u32,
    /// Lock owner.
    pub lock_owner: u64,
}

/// `struct fuse_fsync_in` (FSYNC and FSYNCDIR).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FsyncIn {
    /// File handle.
    pub fh: u64,
    /// `FUSE_FSYNC_FDATASYNC` for fdatasync.
    pub fsync_flags: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_kstatfs`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Kstatfs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
    /// Padding.
    pub padding: u32,
    /// Reserved.
    pub spare: [u32; 6],
}

/// `struct fuse_statfs_out`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct StatfsOut {
    /// The filesystem statistics.
    pub st: Kstatfs,
}

/// `struct fuse_interrupt_in`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct InterruptIn {
    /// `unique` of the request to interrupt.
    pub unique: u64,
}

/// `struct fuse_getxattr_in` (GETXATTR and LISTXATTR); a NUL-terminated name follows for GETXATTR.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct GetxattrIn {
    /// Size of the caller's value buffer (0 = query the size).
    pub size: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_fallocate_in`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FallocateIn {
    /// File handle.
    pub fh: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// `fallocate(2)` mode bits.
    pub mode: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_lseek_in`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LseekIn {
    /// File handle.
    pub fh: u64,
    /// Starting offset.
    pub offset: u64,
    /// `SEEK_DATA` (3) or `SEEK_HOLE` (4).
    pub whence: u32,
    /// Padding.
    pub padding: u32,
}

/// `struct fuse_lseek_out`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LseekOut {
    /// Resulting offset.
    pub offset: u64,
}

/// Compile-time checks of size and field offsets against the 7.45 header.
macro_rules! assert_layout {
    ($ty:ty, $size:expr, { $($field:ident @ $off:expr),* $(,)? }) => {
        const _: () = {
            assert!(size_of::<$ty>() == $size);
            $( assert!(core::mem::offset_of!($ty, $field) == $off); )*
        };
    };
}

assert_layout!(InHeader, 40, { len @ 0, opcode @ 4, unique @ 8, nodeid @ 16, uid @ 24, gid @ 28,
    pid @ 32, total_extlen @ 36, padding @ 38 });
assert_layout!(OutHeader, 16, { len @ 0, error @ 4, unique @ 8 });
assert_layout!(InitIn, 64, { major @ 0, minor @ 4, max_readahead @ 8, flags @ 12, flags2 @ 16,
    unused @ 20 });
assert_layout!(InitOut, 64, { major @ 0, minor @ 4, max_readahead @ 8, flags @ 12,
    max_background @ 16, congestion_threshold @ 18, max_write @ 20, time_gran @ 24,
    max_pages @ 28, map_alignment @ 30, flags2 @ 32, max_stack_depth @ 36,
    request_timeout @ 40, unused @ 42 });
assert_layout!(Attr, 88, { ino @ 0, size @ 8, blocks @ 16, atime @ 24, mtime @ 32, ctime @ 40,
    atimensec @ 48, mtimensec @ 52, ctimensec @ 56, mode @ 60, nlink @ 64, uid @ 68, gid @ 72,
    rdev @ 76, blksize @ 80, flags @ 84 });
assert_layout!(AttrOut, 104, { attr_valid @ 0, attr_valid_nsec @ 8, dummy @ 12, attr @ 16 });
assert_layout!(GetattrIn, 16, { getattr_flags @ 0, dummy @ 4, fh @ 8 });
assert_layout!(SetattrIn, 88, { valid @ 0, padding @ 4, fh @ 8, size @ 16, lock_owner @ 24,
    atime @ 32, mtime @ 40, ctime @ 48, atimensec @ 56, mtimensec @ 60, ctimensec @ 64,
    mode @ 68, unused4 @ 72, uid @ 76, gid @ 80, unused5 @ 84 });
assert_layout!(OpenIn, 8, { flags @ 0, open_flags @ 4 });
assert_layout!(OpenOut, 16, { fh @ 0, open_flags @ 8, backing_id @ 12 });
assert_layout!(ReadIn, 40, { fh @ 0, offset @ 8, size @ 16, read_flags @ 20, lock_owner @ 24,
    flags @ 32, padding @ 36 });
assert_layout!(WriteIn, 40, { fh @ 0, offset @ 8, size @ 16, write_flags @ 20, lock_owner @ 24,
    flags @ 32, padding @ 36 });
assert_layout!(WriteOut, 8, { size @ 0, padding @ 4 });
assert_layout!(ReleaseIn, 24, { fh @ 0, flags @ 8, release_flags @ 12, lock_owner @ 16 });
assert_layout!(FlushIn, 24, { fh @ 0, unused @ 8, padding @ 12, lock_owner @ 16 });
assert_layout!(FsyncIn, 16, { fh @ 0, fsync_flags @ 8, padding @ 12 });
assert_layout!(Kstatfs, 80, { blocks @ 0, bfree @ 8, bavail @ 16, files @ 24, ffree @ 32,
    bsize @ 40, namelen @ 44, frsize @ 48, padding @ 52, spare @ 56 });
assert_layout!(StatfsOut, 80, { st @ 0 });
assert_layout!(InterruptIn, 8, { unique @ 0 });
assert_layout!(GetxattrIn, 8, { size @ 0, padding @ 4 });
assert_layout!(FallocateIn, 32, { fh @ 0, offset @ 8, length @ 16, mode @ 24, padding @ 28 });
assert_layout!(LseekIn, 24, { fh @ 0, offset @ 8, whence @ 16, padding @ 20 });
assert_layout!(LseekOut, 8, { offset @ 0 });
