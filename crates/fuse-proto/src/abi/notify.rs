//! Notification bodies (server → kernel, `unique` 0) and the
//! NOTIFY_REPLY request that answers a retrieve.
//!
//! [`crate::notify::Notification`] builds whole messages from these.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct fuse_notify_poll_wakeup_out`: body of `FUSE_NOTIFY_POLL`.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct NotifyPollWakeupOut {
    /// The kernel handle from `fuse_poll_in.kh`.
    pub kh: u64,
}
assert_layout!(NotifyPollWakeupOut, 8, { kh @ 0 });

/// `struct fuse_notify_inval_inode_out`: body of `FUSE_NOTIFY_INVAL_INODE`.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct NotifyInvalInodeOut {
    /// Inode id.
    pub ino: u64,
    /// Start of the cached range to drop; negative: attributes only.
    pub off: i64,
    /// Length of the range; 0 or negative: to the end of the file.
    pub len: i64,
}
assert_layout!(NotifyInvalInodeOut, 24, { ino @ 0, off @ 8, len @ 16 });

/// `struct fuse_notify_inval_entry_out`: body of `FUSE_NOTIFY_INVAL_ENTRY`;
/// `namelen` bytes of name and a NUL follow.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct NotifyInvalEntryOut {
    /// Parent directory inode id.
    pub parent: u64,
    /// Length of the name (without the NUL).
    pub namelen: u32,
    /// [`InvalEntryFlags`](crate::flags::InvalEntryFlags) (7.38).
    pub flags: u32,
}
assert_layout!(NotifyInvalEntryOut, 16, { parent @ 0, namelen @ 8, flags @ 12 });

/// `struct fuse_notify_delete_out`: body of `FUSE_NOTIFY_DELETE`;
/// `namelen` bytes of name and a NUL follow.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct NotifyDeleteOut {
    /// Parent directory inode id.
    pub parent: u64,
    /// Inode id of the deleted entry.
    pub child: u64,
    /// Length of the name (without the NUL).
    pub namelen: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(NotifyDeleteOut, 24, { parent @ 0, child @ 8, namelen @ 16, padding @ 20 });

/// `struct fuse_notify_store_out`: body of `FUSE_NOTIFY_STORE`; `size`
/// bytes of data follow.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct NotifyStoreOut {
    /// Inode id.
    pub nodeid: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes of data that follow.
    pub size: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(NotifyStoreOut, 24, { nodeid @ 0, offset @ 8, size @ 16, padding @ 20 });

/// `struct fuse_notify_retrieve_out`: body of `FUSE_NOTIFY_RETRIEVE`.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct NotifyRetrieveOut {
    /// The id the kernel puts in the NOTIFY_REPLY request's `unique`.
    pub notify_unique: u64,
    /// Inode id.
    pub nodeid: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes wanted.
    pub size: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(NotifyRetrieveOut, 32, { notify_unique @ 0, nodeid @ 8, offset @ 16,
    size @ 24, padding @ 28 });

/// `struct fuse_notify_retrieve_in`: the NOTIFY_REPLY request; `size`
/// bytes of cached data follow. Same size as `fuse_write_in`.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct NotifyRetrieveIn {
    /// Reserved.
    pub dummy1: u64,
    /// Byte offset of the data.
    pub offset: u64,
    /// Bytes of data that follow.
    pub size: u32,
    /// Reserved.
    pub dummy2: u32,
    /// Reserved.
    pub dummy3: u64,
    /// Reserved.
    pub dummy4: u64,
}
assert_layout!(NotifyRetrieveIn, 40, { dummy1 @ 0, offset @ 8, size @ 16, dummy2 @ 20,
    dummy3 @ 24, dummy4 @ 32 });

/// `struct fuse_notify_prune_out`: body of `FUSE_NOTIFY_PRUNE` (7.45);
/// `count` × `u64` inode ids follow.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct NotifyPruneOut {
    /// Number of inode ids that follow.
    pub count: u32,
    /// Padding.
    pub padding: u32,
    /// Reserved.
    pub spare: u64,
}
assert_layout!(NotifyPruneOut, 16, { count @ 0, padding @ 4, spare @ 8 });
