//! Structs that reach the kernel through the device other than by
//! `read`/`write`: the passthrough ioctl argument and FUSE-over-io_uring.
//!
//! The ioctl numbers are in [`crate::ioctl`], the io_uring command codes in
//! [`crate::uring`].

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// `struct fuse_backing_map`: argument of `FUSE_DEV_IOC_BACKING_OPEN` (7.40).
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct BackingMap {
    /// The backing file's descriptor.
    pub fd: i32,
    /// Reserved flags (must be 0).
    pub flags: u32,
    /// Padding.
    pub padding: u64,
}
assert_layout!(BackingMap, 16, { fd @ 0, flags @ 4, padding @ 8 });

/// `FUSE_URING_IN_OUT_HEADER_SZ`: bytes of [`UringReqHeader::in_out`] (7.42).
pub const URING_IN_OUT_HEADER_SZ: usize = 128;

/// `FUSE_URING_OP_IN_OUT_SZ`: bytes of [`UringReqHeader::op_in`] (7.42).
pub const URING_OP_IN_OUT_SZ: usize = 128;

/// `struct fuse_uring_ent_in_out`: per-entry bookkeeping in the ring
/// header (7.42).
///
/// Travels both ways, so it derives both: the kernel writes `commit_id`
/// and `payload_sz` when it delivers a request, the server writes
/// `payload_sz` when it commits the reply.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct UringEntInOut {
    /// Reserved flags.
    pub flags: u64,
    /// The id to commit the reply with (the request's `unique`).
    pub commit_id: u64,
    /// Bytes used in the payload buffer.
    pub payload_sz: u32,
    /// Padding.
    pub padding: u32,
    /// Reserved.
    pub reserved: u64,
}
assert_layout!(UringEntInOut, 32, { flags @ 0, commit_id @ 8, payload_sz @ 16,
    padding @ 20, reserved @ 24 });

/// `struct fuse_uring_req_header`: the header buffer (`iov[0]`) of a ring
/// entry (7.42).
///
/// Travels both ways, so it derives both: on delivery `in_out` holds the
/// `fuse_in_header` and `op_in` the request's first argument; on commit
/// `in_out` holds the `fuse_out_header` (all reply payload goes to the
/// payload buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct UringReqHeader {
    /// `fuse_in_header` on delivery, `fuse_out_header` on commit.
    pub in_out: [u8; URING_IN_OUT_HEADER_SZ],
    /// The per-opcode argument struct (empty for opcodes without one).
    pub op_in: [u8; URING_OP_IN_OUT_SZ],
    /// Entry bookkeeping.
    pub ring_ent_in_out: UringEntInOut,
}
assert_layout!(UringReqHeader, 288, { in_out @ 0, op_in @ 128, ring_ent_in_out @ 256 });

impl Default for UringReqHeader {
    // std implements `Default` for arrays of at most 32 elements only.
    fn default() -> UringReqHeader {
        UringReqHeader::new_zeroed()
    }
}

/// `struct fuse_uring_cmd_req`: the command area of a FUSE io_uring SQE
/// (inside the 80-byte `SQE128` command field) (7.42).
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct UringCmdReq {
    /// Reserved flags (0).
    pub flags: u64,
    /// For COMMIT_AND_FETCH: the `commit_id` of the request answered.
    pub commit_id: u64,
    /// The queue index (one queue per possible CPU).
    pub qid: u16,
    /// Padding.
    pub padding: [u8; 6],
}
assert_layout!(UringCmdReq, 24, { flags @ 0, commit_id @ 8, qid @ 16, padding @ 18 });
