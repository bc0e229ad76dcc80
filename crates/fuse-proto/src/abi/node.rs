//! Names and directories: lookup references, creation, rename, link,
//! access, directory entries, syncfs.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::EntryOut;

/// `struct fuse_forget_in`: the FORGET request.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct ForgetIn {
    /// Number of lookups to drop.
    pub nlookup: u64,
}
assert_layout!(ForgetIn, 8, { nlookup @ 0 });

/// `struct fuse_forget_one`: one entry of BATCH_FORGET.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct ForgetOne {
    /// Inode id.
    pub nodeid: u64,
    /// Number of lookups to drop.
    pub nlookup: u64,
}
assert_layout!(ForgetOne, 16, { nodeid @ 0, nlookup @ 8 });

/// `struct fuse_batch_forget_in`: `count` × [`ForgetOne`] follow.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct BatchForgetIn {
    /// Number of entries that follow.
    pub count: u32,
    /// Padding.
    pub dummy: u32,
}
assert_layout!(BatchForgetIn, 8, { count @ 0, dummy @ 4 });

/// `struct fuse_mknod_in`; the NUL-terminated name follows.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct MknodIn {
    /// File type and permission bits.
    pub mode: u32,
    /// Device number.
    pub rdev: u32,
    /// The caller's umask (7.12).
    pub umask: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(MknodIn, 16, { mode @ 0, rdev @ 4, umask @ 8, padding @ 12 });

/// `FUSE_COMPAT_MKNOD_IN_SIZE`: `fuse_mknod_in` size for minor < 12.
pub const COMPAT_MKNOD_IN_SIZE: usize = 8;

/// `struct fuse_mkdir_in`; the NUL-terminated name follows.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct MkdirIn {
    /// Permission bits.
    pub mode: u32,
    /// The caller's umask.
    pub umask: u32,
}
assert_layout!(MkdirIn, 8, { mode @ 0, umask @ 4 });

/// `struct fuse_rename_in`; old and new NUL-terminated names follow.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct RenameIn {
    /// Inode id of the new parent directory.
    pub newdir: u64,
}
assert_layout!(RenameIn, 8, { newdir @ 0 });

/// `struct fuse_rename2_in`; old and new NUL-terminated names follow.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct Rename2In {
    /// Inode id of the new parent directory.
    pub newdir: u64,
    /// `RENAME_*` flags of `renameat2(2)`.
    pub flags: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(Rename2In, 16, { newdir @ 0, flags @ 8, padding @ 12 });

/// `struct fuse_link_in`; the new NUL-terminated name follows.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct LinkIn {
    /// Inode id of the existing file.
    pub oldnodeid: u64,
}
assert_layout!(LinkIn, 8, { oldnodeid @ 0 });

/// `struct fuse_access_in`.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct AccessIn {
    /// `R_OK | W_OK | X_OK` mask.
    pub mask: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(AccessIn, 8, { mask @ 0, padding @ 4 });

/// `struct fuse_syncfs_in`.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct SyncfsIn {
    /// Padding.
    pub padding: u64,
}
assert_layout!(SyncfsIn, 8, { padding @ 0 });

/// `struct fuse_dirent` without its trailing name: one READDIR record is
/// this header, `namelen` bytes of name (no NUL), and zero padding up to a
/// multiple of 8 ([`dirent_size`]).
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct Dirent {
    /// Inode number.
    pub ino: u64,
    /// Offset of the next entry (the cookie the kernel sends back in `fuse_read_in.offset`).
    pub off: u64,
    /// Length of the name that follows.
    pub namelen: u32,
    /// File type (`DT_*`, i.e. `mode >> 12`).
    pub dirent_type: u32,
}
assert_layout!(Dirent, 24, { ino @ 0, off @ 8, namelen @ 16, dirent_type @ 20 });

/// `struct fuse_direntplus` without the trailing name: one READDIRPLUS
/// record is this header, the name, and padding ([`direntplus_size`]).
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct Direntplus {
    /// The entry, as LOOKUP would return it.
    pub entry_out: EntryOut,
    /// The directory entry.
    pub dirent: Dirent,
}
assert_layout!(Direntplus, 152, { entry_out @ 0, dirent @ 128 });

/// `FUSE_NAME_OFFSET`: offset of the name in a READDIR record.
pub const NAME_OFFSET: usize = size_of::<Dirent>();

/// `FUSE_NAME_OFFSET_DIRENTPLUS`: offset of the name in a READDIRPLUS record.
pub const NAME_OFFSET_DIRENTPLUS: usize = size_of::<Direntplus>();

/// `FUSE_REC_ALIGN`: rounds up to a multiple of 8, the alignment of
/// directory records and request extensions. Saturates at the largest
/// multiple of 8 instead of overflowing.
pub const fn rec_align(len: usize) -> usize {
    match len.checked_add(7) {
        Some(padded) => padded & !7,
        None => usize::MAX & !7,
    }
}

/// `FUSE_DIRENT_SIZE`: bytes of a READDIR record with a name of `namelen` bytes.
pub const fn dirent_size(namelen: usize) -> usize {
    rec_align(NAME_OFFSET.saturating_add(namelen))
}

/// `FUSE_DIRENTPLUS_SIZE`: bytes of a READDIRPLUS record with a name of `namelen` bytes.
pub const fn direntplus_size(namelen: usize) -> usize {
    rec_align(NAME_OFFSET_DIRENTPLUS.saturating_add(namelen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_are_eight_byte_aligned() {
        assert_eq!(rec_align(0), 0);
        assert_eq!(rec_align(1), 8);
        assert_eq!(rec_align(8), 8);
        assert_eq!(rec_align(usize::MAX), usize::MAX & !7);
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
        assert_eq!(direntplus_size(5), 160);
    }
}
