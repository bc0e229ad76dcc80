//! Extended attributes.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct fuse_setxattr_in`; the NUL-terminated name and `size` bytes of
/// value follow.
///
/// Kernel → server. The kernel sends only the first
/// [`COMPAT_SETXATTR_IN_SIZE`] bytes unless the INIT reply set
/// `SETXATTR_EXT` (7.33); see [`ParseOptions`](crate::ParseOptions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct SetxattrIn {
    /// Size of the value.
    pub size: u32,
    /// `XATTR_CREATE` / `XATTR_REPLACE`.
    pub flags: u32,
    /// [`SetxattrFlags`](crate::flags::SetxattrFlags) (7.33, with `SETXATTR_EXT`).
    pub setxattr_flags: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(SetxattrIn, 16, { size @ 0, flags @ 4, setxattr_flags @ 8, padding @ 12 });

/// `FUSE_COMPAT_SETXATTR_IN_SIZE`: `fuse_setxattr_in` size without `SETXATTR_EXT`.
pub const COMPAT_SETXATTR_IN_SIZE: usize = 8;

/// `struct fuse_getxattr_in`: GETXATTR (a NUL-terminated name follows) and LISTXATTR.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
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
assert_layout!(GetxattrIn, 8, { size @ 0, padding @ 4 });

/// `struct fuse_getxattr_out`: reply to GETXATTR/LISTXATTR with `size` 0.
///
/// Server → kernel. Derives `FromBytes` too so that tests and the fake
/// device can read replies back.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct GetxattrOut {
    /// Size of the value (or of the name list).
    pub size: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(GetxattrOut, 8, { size @ 0, padding @ 4 });
