//! Open files: open/create, read/write, release/flush/fsync, fallocate,
//! lseek, copy_file_range, interrupt, bmap, locks, ioctl, poll, DAX mappings.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct fuse_open_in`: OPEN and OPENDIR.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct OpenIn {
    /// `open(2)` flags (without `O_CREAT`, `O_EXCL`, `O_NOCTTY`).
    pub flags: u32,
    /// [`OpenInFlags`](crate::flags::OpenInFlags).
    pub open_flags: u32,
}
assert_layout!(OpenIn, 8, { flags @ 0, open_flags @ 4 });

/// `struct fuse_open_out`: reply to OPEN and OPENDIR, second part of CREATE.
///
/// Server → kernel. Derives `FromBytes` too so that tests and the fake
/// device can read replies back. Bytes 12..16 are `padding` in the 7.38
/// header; 7.40 named them `backing_id`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct OpenOut {
    /// File handle the kernel passes back on every request for this open.
    pub fh: u64,
    /// [`FopenFlags`](crate::flags::FopenFlags).
    pub open_flags: u32,
    /// Backing file id for passthrough (7.40, with `FOPEN_PASSTHROUGH`); was padding before.
    pub backing_id: i32,
}
assert_layout!(OpenOut, 16, { fh @ 0, open_flags @ 8, backing_id @ 12 });

/// `struct fuse_create_in`: CREATE and TMPFILE; the NUL-terminated name follows.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct CreateIn {
    /// `open(2)` flags.
    pub flags: u32,
    /// File type and permission bits.
    pub mode: u32,
    /// The caller's umask.
    pub umask: u32,
    /// [`OpenInFlags`](crate::flags::OpenInFlags).
    pub open_flags: u32,
}
assert_layout!(CreateIn, 16, { flags @ 0, mode @ 4, umask @ 8, open_flags @ 12 });

/// `struct fuse_read_in`: READ, READDIR and READDIRPLUS.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct ReadIn {
    /// File handle.
    pub fh: u64,
    /// Byte offset (for directories: the cookie of the last entry returned).
    pub offset: u64,
    /// Bytes wanted.
    pub size: u32,
    /// [`ReadFlags`](crate::flags::ReadFlags).
    pub read_flags: u32,
    /// Lock owner (with `FUSE_READ_LOCKOWNER`).
    pub lock_owner: u64,
    /// The file's open flags.
    pub flags: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(ReadIn, 40, { fh @ 0, offset @ 8, size @ 16, read_flags @ 20,
    lock_owner @ 24, flags @ 32, padding @ 36 });

/// `struct fuse_write_in`; `size` bytes of data follow it.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
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
    /// [`WriteFlags`](crate::flags::WriteFlags).
    pub write_flags: u32,
    /// Lock owner (with `FUSE_WRITE_LOCKOWNER`).
    pub lock_owner: u64,
    /// The file's open flags (plus `O_DSYNC`/`O_SYNC` for `RWF_DSYNC`/`RWF_SYNC`).
    pub flags: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(WriteIn, 40, { fh @ 0, offset @ 8, size @ 16, write_flags @ 20,
    lock_owner @ 24, flags @ 32, padding @ 36 });

/// `FUSE_COMPAT_WRITE_IN_SIZE`: `fuse_write_in` size for minor < 9.
pub const COMPAT_WRITE_IN_SIZE: usize = 24;

/// `struct fuse_write_out`: reply to WRITE and COPY_FILE_RANGE.
///
/// Server → kernel. Derives `FromBytes` too so that tests and the fake
/// device can read replies back.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct WriteOut {
    /// Bytes written (never more than requested: the client would get EIO).
    pub size: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(WriteOut, 8, { size @ 0, padding @ 4 });

/// `struct fuse_release_in`: RELEASE and RELEASEDIR.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct ReleaseIn {
    /// File handle.
    pub fh: u64,
    /// The file's open flags.
    pub flags: u32,
    /// [`ReleaseFlags`](crate::flags::ReleaseFlags).
    pub release_flags: u32,
    /// Lock owner.
    pub lock_owner: u64,
}
assert_layout!(ReleaseIn, 24, { fh @ 0, flags @ 8, release_flags @ 12, lock_owner @ 16 });

/// `struct fuse_flush_in`.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
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
assert_layout!(FlushIn, 24, { fh @ 0, unused @ 8, padding @ 12, lock_owner @ 16 });

/// `struct fuse_fsync_in`: FSYNC and FSYNCDIR.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FsyncIn {
    /// File handle.
    pub fh: u64,
    /// [`FsyncFlags`](crate::flags::FsyncFlags): `FDATASYNC` for fdatasync.
    pub fsync_flags: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(FsyncIn, 16, { fh @ 0, fsync_flags @ 8, padding @ 12 });

/// `struct fuse_fallocate_in`.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
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
    /// [`FallocateMode`](crate::flags::FallocateMode) bits of `fallocate(2)`.
    pub mode: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(FallocateIn, 32, { fh @ 0, offset @ 8, length @ 16, mode @ 24, padding @ 28 });

/// `struct fuse_lseek_in`.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LseekIn {
    /// File handle.
    pub fh: u64,
    /// Starting offset.
    pub offset: u64,
    /// `SEEK_DATA` (3) or `SEEK_HOLE` (4); the kernel handles the others itself.
    pub whence: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(LseekIn, 24, { fh @ 0, offset @ 8, whence @ 16, padding @ 20 });

/// `struct fuse_lseek_out`.
///
/// Server → kernel. Derives `FromBytes` too so that tests and the fake
/// device can read replies back.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LseekOut {
    /// Resulting offset.
    pub offset: u64,
}
assert_layout!(LseekOut, 8, { offset @ 0 });

/// `struct fuse_copy_file_range_in`: COPY_FILE_RANGE and COPY_FILE_RANGE_64.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct CopyFileRangeIn {
    /// Source file handle (the request's `nodeid` is the source inode).
    pub fh_in: u64,
    /// Source offset.
    pub off_in: u64,
    /// Destination inode id.
    pub nodeid_out: u64,
    /// Destination file handle.
    pub fh_out: u64,
    /// Destination offset.
    pub off_out: u64,
    /// Bytes to copy.
    pub len: u64,
    /// `copy_file_range(2)` flags.
    pub flags: u64,
}
assert_layout!(CopyFileRangeIn, 56, { fh_in @ 0, off_in @ 8, nodeid_out @ 16, fh_out @ 24,
    off_out @ 32, len @ 40, flags @ 48 });

/// `struct fuse_copy_file_range_out`: reply to COPY_FILE_RANGE_64 (7.45).
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct CopyFileRangeOut {
    /// Bytes copied.
    pub bytes_copied: u64,
}
assert_layout!(CopyFileRangeOut, 8, { bytes_copied @ 0 });

/// `struct fuse_interrupt_in`.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct InterruptIn {
    /// `unique` of the request to interrupt.
    pub unique: u64,
}
assert_layout!(InterruptIn, 8, { unique @ 0 });

/// `struct fuse_bmap_in`.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct BmapIn {
    /// Logical block.
    pub block: u64,
    /// Block size.
    pub blocksize: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(BmapIn, 16, { block @ 0, blocksize @ 8, padding @ 12 });

/// `struct fuse_bmap_out`.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct BmapOut {
    /// Physical block.
    pub block: u64,
}
assert_layout!(BmapOut, 8, { block @ 0 });

/// `struct fuse_file_lock`.
///
/// Travels both ways: inside [`LkIn`] (kernel → server) and [`LkOut`]
/// (server → kernel), so it derives both.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FileLock {
    /// First byte.
    pub start: u64,
    /// Last byte.
    pub end: u64,
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    pub lock_type: u32,
    /// Owning process (tgid).
    pub pid: u32,
}
assert_layout!(FileLock, 24, { start @ 0, end @ 8, lock_type @ 16, pid @ 20 });

/// `struct fuse_lk_in`: GETLK, SETLK and SETLKW.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct LkIn {
    /// File handle.
    pub fh: u64,
    /// Lock owner.
    pub owner: u64,
    /// The lock.
    pub lk: FileLock,
    /// [`LkFlags`](crate::flags::LkFlags).
    pub lk_flags: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(LkIn, 48, { fh @ 0, owner @ 8, lk @ 16, lk_flags @ 40, padding @ 44 });

/// `struct fuse_lk_out`: reply to GETLK.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct LkOut {
    /// The conflicting lock, or `F_UNLCK`.
    pub lk: FileLock,
}
assert_layout!(LkOut, 24, { lk @ 0 });

/// `struct fuse_ioctl_in`; `in_size` bytes of input follow.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct IoctlIn {
    /// File handle.
    pub fh: u64,
    /// [`IoctlFlags`](crate::flags::IoctlFlags).
    pub flags: u32,
    /// The ioctl command.
    pub cmd: u32,
    /// The ioctl argument (a user pointer or a value).
    pub arg: u64,
    /// Bytes of input that follow.
    pub in_size: u32,
    /// Bytes of output the caller can take.
    pub out_size: u32,
}
assert_layout!(IoctlIn, 32, { fh @ 0, flags @ 8, cmd @ 12, arg @ 16, in_size @ 24,
    out_size @ 28 });

/// `struct fuse_ioctl_iovec`: an iovec in an unrestricted ioctl's retry reply.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct IoctlIovec {
    /// User address.
    pub base: u64,
    /// Length.
    pub len: u64,
}
assert_layout!(IoctlIovec, 16, { base @ 0, len @ 8 });

/// `struct fuse_ioctl_out`; output data (or, with `RETRY`, iovecs) follow.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct IoctlOut {
    /// The ioctl's return value.
    pub result: i32,
    /// [`IoctlFlags`](crate::flags::IoctlFlags) (`RETRY`).
    pub flags: u32,
    /// Number of input iovecs (with `RETRY`).
    pub in_iovs: u32,
    /// Number of output iovecs (with `RETRY`).
    pub out_iovs: u32,
}
assert_layout!(IoctlOut, 16, { result @ 0, flags @ 4, in_iovs @ 8, out_iovs @ 12 });

/// `FUSE_IOCTL_MAX_IOV`: the maximum of `in_iovs + out_iovs`.
pub const IOCTL_MAX_IOV: usize = 256;

/// `struct fuse_poll_in`.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct PollIn {
    /// File handle.
    pub fh: u64,
    /// Kernel handle for `FUSE_NOTIFY_POLL`.
    pub kh: u64,
    /// [`PollFlags`](crate::flags::PollFlags).
    pub flags: u32,
    /// Requested `POLL*` events.
    pub events: u32,
}
assert_layout!(PollIn, 24, { fh @ 0, kh @ 8, flags @ 16, events @ 20 });

/// `struct fuse_poll_out`.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct PollOut {
    /// Ready `POLL*` events.
    pub revents: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(PollOut, 8, { revents @ 0, padding @ 4 });

/// `struct fuse_setupmapping_in`: SETUPMAPPING (DAX, virtiofs).
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct SetupmappingIn {
    /// An already open file handle.
    pub fh: u64,
    /// Offset into the file where the mapping starts.
    pub foffset: u64,
    /// Length of the mapping.
    pub len: u64,
    /// [`SetupmappingFlags`](crate::flags::SetupmappingFlags).
    pub flags: u64,
    /// Offset in the DAX memory window.
    pub moffset: u64,
}
assert_layout!(SetupmappingIn, 40, { fh @ 0, foffset @ 8, len @ 16, flags @ 24,
    moffset @ 32 });

/// `struct fuse_removemapping_in`: REMOVEMAPPING (DAX, virtiofs); `count` ×
/// [`RemovemappingOne`] follow, at offset 4 (so not 8-byte aligned).
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct RemovemappingIn {
    /// Number of entries that follow.
    pub count: u32,
}
assert_layout!(RemovemappingIn, 4, { count @ 0 });

/// `struct fuse_removemapping_one`.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct RemovemappingOne {
    /// Offset in the DAX window where the unmapping starts.
    pub moffset: u64,
    /// Length of the mapping.
    pub len: u64,
}
assert_layout!(RemovemappingOne, 16, { moffset @ 0, len @ 8 });
