//! Attributes: GETATTR, SETATTR, STATX, STATFS and the entry reply.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct fuse_attr`.
///
/// Server → kernel (inside [`AttrOut`] and [`EntryOut`]). Derives
/// `FromBytes` too so that tests and the fake device can read replies back.
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
    /// [`AttrFlags`](crate::flags::AttrFlags) (7.32).
    pub flags: u32,
}
assert_layout!(Attr, 88, { ino @ 0, size @ 8, blocks @ 16, atime @ 24, mtime @ 32,
    ctime @ 40, atimensec @ 48, mtimensec @ 52, ctimensec @ 56, mode @ 60, nlink @ 64,
    uid @ 68, gid @ 72, rdev @ 76, blksize @ 80, flags @ 84 });

/// `struct fuse_attr_out`: reply to GETATTR and SETATTR.
///
/// Server → kernel. Derives `FromBytes` too so that tests and the fake
/// device can read replies back.
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
assert_layout!(AttrOut, 104, { attr_valid @ 0, attr_valid_nsec @ 8, dummy @ 12, attr @ 16 });

/// `FUSE_COMPAT_ATTR_OUT_SIZE`: `fuse_attr_out` size for minor < 9.
pub const COMPAT_ATTR_OUT_SIZE: usize = 96;

/// `struct fuse_entry_out`: reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK
/// and the first part of CREATE/TMPFILE.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct EntryOut {
    /// Inode id.
    pub nodeid: u64,
    /// Inode generation: `nodeid:generation` must be unique for the file system's lifetime.
    pub generation: u64,
    /// Name cache lifetime, seconds.
    pub entry_valid: u64,
    /// Attribute cache lifetime, seconds.
    pub attr_valid: u64,
    /// Name cache lifetime, nanoseconds.
    pub entry_valid_nsec: u32,
    /// Attribute cache lifetime, nanoseconds.
    pub attr_valid_nsec: u32,
    /// The attributes.
    pub attr: Attr,
}
assert_layout!(EntryOut, 128, { nodeid @ 0, generation @ 8, entry_valid @ 16,
    attr_valid @ 24, entry_valid_nsec @ 32, attr_valid_nsec @ 36, attr @ 40 });

/// `FUSE_COMPAT_ENTRY_OUT_SIZE`: `fuse_entry_out` size for minor < 9.
pub const COMPAT_ENTRY_OUT_SIZE: usize = 120;

/// `struct fuse_getattr_in`.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct GetattrIn {
    /// [`GetattrFlags`](crate::flags::GetattrFlags): `FH` when `fh` is valid.
    pub getattr_flags: u32,
    /// Padding.
    pub dummy: u32,
    /// File handle.
    pub fh: u64,
}
assert_layout!(GetattrIn, 16, { getattr_flags @ 0, dummy @ 4, fh @ 8 });

/// `struct fuse_setattr_in`.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct SetattrIn {
    /// [`SetattrValid`](crate::flags::SetattrValid) bits saying which fields are set.
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
assert_layout!(SetattrIn, 88, { valid @ 0, padding @ 4, fh @ 8, size @ 16, lock_owner @ 24,
    atime @ 32, mtime @ 40, ctime @ 48, atimensec @ 56, mtimensec @ 60, ctimensec @ 64,
    mode @ 68, unused4 @ 72, uid @ 76, gid @ 80, unused5 @ 84 });

/// `struct fuse_sx_time`: a timestamp in [`Statx`], as in `statx(2)` (7.39).
///
/// Server → kernel (inside [`StatxOut`]). Derives `FromBytes` too so that
/// tests and the fake device can read replies back.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct SxTime {
    /// Seconds since the epoch.
    pub tv_sec: i64,
    /// Nanoseconds.
    pub tv_nsec: u32,
    /// Reserved (C name `__reserved`).
    pub reserved: i32,
}
assert_layout!(SxTime, 16, { tv_sec @ 0, tv_nsec @ 8, reserved @ 12 });

/// `struct fuse_statx`: bit-for-bit the `statx(2)` result layout (7.39).
///
/// Server → kernel (inside [`StatxOut`]). Derives `FromBytes` too so that
/// tests and the fake device can read replies back.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Statx {
    /// `STATX_*` bits saying which fields are filled in.
    pub mask: u32,
    /// Preferred I/O size.
    pub blksize: u32,
    /// `STATX_ATTR_*` attributes.
    pub attributes: u64,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// File type and permission bits.
    pub mode: u16,
    /// Reserved (C name `__spare0`).
    pub spare0: [u16; 1],
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Which `attributes` bits are supported.
    pub attributes_mask: u64,
    /// Access time.
    pub atime: SxTime,
    /// Creation (birth) time.
    pub btime: SxTime,
    /// Change time.
    pub ctime: SxTime,
    /// Modification time.
    pub mtime: SxTime,
    /// Device major for device files.
    pub rdev_major: u32,
    /// Device minor for device files.
    pub rdev_minor: u32,
    /// Major of the device holding the file.
    pub dev_major: u32,
    /// Minor of the device holding the file.
    pub dev_minor: u32,
    /// Reserved (C name `__spare2`).
    pub spare2: [u64; 14],
}
assert_layout!(Statx, 256, { mask @ 0, blksize @ 4, attributes @ 8, nlink @ 16, uid @ 20,
    gid @ 24, mode @ 28, spare0 @ 30, ino @ 32, size @ 40, blocks @ 48,
    attributes_mask @ 56, atime @ 64, btime @ 80, ctime @ 96, mtime @ 112,
    rdev_major @ 128, rdev_minor @ 132, dev_major @ 136, dev_minor @ 140, spare2 @ 144 });

/// `struct fuse_statx_in`: the STATX request (7.39).
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct StatxIn {
    /// [`GetattrFlags`](crate::flags::GetattrFlags): `FH` when `fh` is valid.
    pub getattr_flags: u32,
    /// Reserved.
    pub reserved: u32,
    /// File handle.
    pub fh: u64,
    /// `AT_STATX_*` sync flags (6.18 sends 0).
    pub sx_flags: u32,
    /// `STATX_*` fields wanted (6.18 sends `STATX_BASIC_STATS | STATX_BTIME`).
    pub sx_mask: u32,
}
assert_layout!(StatxIn, 24, { getattr_flags @ 0, reserved @ 4, fh @ 8, sx_flags @ 16,
    sx_mask @ 20 });

/// `struct fuse_statx_out`: the STATX reply (7.39).
///
/// Server → kernel. Derives `FromBytes` too so that tests and the fake
/// device can read replies back.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct StatxOut {
    /// Attribute cache lifetime, seconds.
    pub attr_valid: u64,
    /// Attribute cache lifetime, nanoseconds.
    pub attr_valid_nsec: u32,
    /// Reserved flags.
    pub flags: u32,
    /// Reserved.
    pub spare: [u64; 2],
    /// The attributes.
    pub stat: Statx,
}
assert_layout!(StatxOut, 288, { attr_valid @ 0, attr_valid_nsec @ 8, flags @ 12,
    spare @ 16, stat @ 32 });

/// `struct fuse_kstatfs`.
///
/// Server → kernel (inside [`StatfsOut`]). Derives `FromBytes` too so that
/// tests and the fake device can read replies back.
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
assert_layout!(Kstatfs, 80, { blocks @ 0, bfree @ 8, bavail @ 16, files @ 24, ffree @ 32,
    bsize @ 40, namelen @ 44, frsize @ 48, padding @ 52, spare @ 56 });

/// `struct fuse_statfs_out`: reply to STATFS.
///
/// Server → kernel. Derives `FromBytes` too so that tests and the fake
/// device can read replies back.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct StatfsOut {
    /// The file system statistics.
    pub st: Kstatfs,
}
assert_layout!(StatfsOut, 80, { st @ 0 });

/// `FUSE_COMPAT_STATFS_SIZE`: `fuse_statfs_out` size for minor < 4.
pub const COMPAT_STATFS_SIZE: usize = 48;
