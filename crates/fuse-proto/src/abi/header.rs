//! Message headers and request extensions.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct fuse_in_header`: precedes every request.
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct InHeader {
    /// Total request length in bytes, this header and extensions included.
    pub len: u32,
    /// The [`Opcode`](crate::Opcode) as a number.
    pub opcode: u32,
    /// Request id; the reply carries it back. Even for requests, target | 1
    /// for INTERRUPT, bit 63 ([`UNIQUE_RESEND`]) set on resent requests.
    pub unique: u64,
    /// Inode the request is about (1 = the mount root; 0 for INIT/INTERRUPT).
    pub nodeid: u64,
    /// Caller's fsuid ([`INVALID_UIDGID`] if it cannot be mapped).
    pub uid: u32,
    /// Caller's fsgid ([`INVALID_UIDGID`] if it cannot be mapped).
    pub gid: u32,
    /// Caller's pid (0 for kernel-internal requests).
    pub pid: u32,
    /// Length of the request extensions at the end, in units of 8 bytes (7.38).
    pub total_extlen: u16,
    /// Padding.
    pub padding: u16,
}
assert_layout!(InHeader, 40, { len @ 0, opcode @ 4, unique @ 8, nodeid @ 16, uid @ 24,
    gid @ 28, pid @ 32, total_extlen @ 36, padding @ 38 });

/// `struct fuse_out_header`: precedes every reply and notification.
///
/// Server → kernel. Derives `FromBytes` too so that tests and the fake
/// device can read replies back.
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
assert_layout!(OutHeader, 16, { len @ 0, error @ 4, unique @ 8 });

/// `FUSE_UNIQUE_RESEND`: set in `in_header.unique` of requests the kernel
/// resends after `FUSE_NOTIFY_RESEND` (7.40).
pub const UNIQUE_RESEND: u64 = 1 << 63;

/// Bit 0 of `in_header.unique` marks an INTERRUPT (the kernel's
/// `FUSE_INT_REQ_BIT`). Not in the uapi header, but visible on the wire:
/// request ids are even, an INTERRUPT's id is its target's id with this bit
/// set, and a reply to that id answers the interrupt, not the request.
pub const UNIQUE_INTERRUPT_BIT: u64 = 1;

/// `FUSE_INVALID_UIDGID`: `in_header.uid`/`gid` when the caller's id cannot
/// be mapped into an idmapped mount (7.41).
pub const INVALID_UIDGID: u32 = u32::MAX;

/// `struct fuse_ext_header`: starts each request extension (7.38).
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct ExtHeader {
    /// Size of this extension in bytes, this header included (a multiple of 8).
    pub size: u32,
    /// Extension type (C name `type`): 0..=[`MAX_NR_SECCTX`] is a
    /// security-context block (the value is the number of contexts),
    /// [`EXT_GROUPS`] the supplementary groups.
    pub ext_type: u32,
}
assert_layout!(ExtHeader, 8, { size @ 0, ext_type @ 4 });

/// `FUSE_MAX_NR_SECCTX` (`enum fuse_ext_type`): extension types up to this
/// value are [`SecctxHeader`] blocks.
pub const MAX_NR_SECCTX: u32 = 31;

/// `FUSE_EXT_GROUPS` (`enum fuse_ext_type`): the [`SuppGroups`] extension (7.38).
pub const EXT_GROUPS: u32 = 32;

/// `struct fuse_secctx_header`: the security-context extension (7.36).
///
/// Kernel → server. Overlays [`ExtHeader`]: `nr_secctx` is in the type slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct SecctxHeader {
    /// Total size of all contexts, this header included.
    pub size: u32,
    /// Number of [`Secctx`] records that follow.
    pub nr_secctx: u32,
}
assert_layout!(SecctxHeader, 8, { size @ 0, nr_secctx @ 4 });

/// `struct fuse_secctx`: one security context; the NUL-terminated xattr
/// name and `size` bytes of context follow, padded to 8 bytes.
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct Secctx {
    /// Size of the context value.
    pub size: u32,
    /// Padding.
    pub padding: u32,
}
assert_layout!(Secctx, 8, { size @ 0, padding @ 4 });

/// `struct fuse_supp_groups`: the supplementary-group extension (7.38);
/// `nr_groups` × `u32` group ids follow (a C flexible array, not part of
/// this struct).
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct SuppGroups {
    /// Number of group ids that follow.
    pub nr_groups: u32,
}
assert_layout!(SuppGroups, 4, { nr_groups @ 0 });
