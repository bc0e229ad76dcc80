//! The two ring commands, as SQE128 submission entries.
//!
//! Both are `IORING_OP_URING_CMD` on the queue's `/dev/fuse` fd (a fixed
//! file) with a `fuse_uring_cmd_req` in the command area:
//!
//! * `REGISTER` hands the kernel an entry's two buffers (`addr` points to two
//!   iovecs, `len` must be 2) and waits for the first request;
//! * `COMMIT_AND_FETCH` tells the kernel that the reply for `commit_id` is in
//!   the entry's buffers and waits for the next request on the same entry.
//!
//! The SQE completes when a request has been delivered into the entry (result
//! 0), or with `-errno` when the command is refused or the connection ends.

use io_uring::{opcode, squeue, types};
use zerocopy::IntoBytes;

use fuse_proto::abi::UringCmdReq;
use fuse_proto::uring::UringCmd;

/// Byte offset of `len` in `struct io_uring_sqe` (kernel ABI: opcode,
/// flags, ioprio, fd, off, addr, then len).
const SQE_LEN_OFFSET: usize = 24;

/// `REGISTER` for one entry of queue `qid`. `iovecs` must point to the
/// entry's `[header, payload]` iovec pair.
///
/// # Safety
/// The iovecs and both buffers they describe must stay valid, unmoved and
/// untouched by anyone else until this SQE's completion; the buffers stay
/// registered with the kernel for the life of the connection.
pub(crate) unsafe fn register(
    device: types::Fixed,
    iovecs: *const [libc::iovec; 2],
    qid: u16,
) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(device, UringCmd::REGISTER.0)
        .cmd(command_area(qid, 0))
        .addr(Some(iovecs as u64))
        .build();
    with_len(sqe, 2)
}

/// `COMMIT_AND_FETCH` of the reply to `commit_id` on an entry of queue
/// `qid`; the kernel finds the entry by the request it delivered.
///
/// # Safety
/// The entry's buffers (registered with `register`) must hold the reply and
/// stay untouched by anyone else until this SQE's completion.
pub(crate) unsafe fn commit_and_fetch(
    device: types::Fixed,
    qid: u16,
    commit_id: u64,
) -> squeue::Entry128 {
    opcode::UringCmd80::new(device, UringCmd::COMMIT_AND_FETCH.0)
        .cmd(command_area(qid, commit_id))
        .build()
}

/// The 80-byte command area: a `fuse_uring_cmd_req`, then zeros.
fn command_area(qid: u16, commit_id: u64) -> [u8; 80] {
    let request = UringCmdReq {
        flags: 0,
        commit_id,
        qid,
        padding: [0; 6],
    };
    let mut area = [0u8; 80];
    area[..size_of::<UringCmdReq>()].copy_from_slice(request.as_bytes());
    area
}

/// Sets `sqe->len`, which `UringCmd80` (io-uring 0.7) has no setter for;
/// the kernel requires it to be 2 for REGISTER.
fn with_len(mut sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    const _: () = assert!(size_of::<squeue::Entry128>() == 128);
    let base = (&raw mut sqe).cast::<u8>();
    // SAFETY: `Entry128` is `#[repr(C)]` over the kernel's 128-byte
    // `io_uring_sqe` (64-byte base + 64-byte command tail, size checked
    // above); bytes 24..28 are its `len` field, a plain u32 with no
    // invariants, inside the value we own mutably here.
    unsafe { base.add(SQE_LEN_OFFSET).cast::<u32>().write_unaligned(len) };
    sqe
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(sqe: &squeue::Entry128) -> [u8; 128] {
        let mut out = [0u8; 128];
        // SAFETY: `Entry128` is 128 bytes of plain integers (the kernel's
        // SQE layout, no padding), so every byte is initialised and may be
        // read as u8; `out` does not overlap `sqe`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (sqe as *const squeue::Entry128).cast::<u8>(),
                out.as_mut_ptr(),
                128,
            )
        };
        out
    }

    #[test]
    fn register_sqe_has_the_kernel_layout() {
        let iovecs = [libc::iovec {
            iov_base: core::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        // SAFETY: the SQE is only inspected, never submitted.
        let sqe = unsafe { register(types::Fixed(0), &iovecs, 3) };
        let b = bytes(&sqe.user_data(0x1234));
        assert_eq!(b[0], opcode::UringCmd80::CODE, "opcode");
        assert_eq!(b[1] & 1, 1, "IOSQE_FIXED_FILE");
        assert_eq!(i32::from_ne_bytes(b[4..8].try_into().unwrap()), 0, "fd");
        assert_eq!(
            u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            1,
            "cmd_op REGISTER"
        );
        assert_eq!(
            u64::from_ne_bytes(b[16..24].try_into().unwrap()),
            iovecs.as_ptr() as u64,
            "addr"
        );
        assert_eq!(u32::from_ne_bytes(b[24..28].try_into().unwrap()), 2, "len");
        assert_eq!(
            u64::from_ne_bytes(b[32..40].try_into().unwrap()),
            0x1234,
            "user_data"
        );
        // The command area starts at byte 48: flags, commit_id, qid.
        assert_eq!(u64::from_ne_bytes(b[48..56].try_into().unwrap()), 0);
        assert_eq!(u64::from_ne_bytes(b[56..64].try_into().unwrap()), 0);
        assert_eq!(u16::from_ne_bytes(b[64..66].try_into().unwrap()), 3, "qid");
        assert!(b[66..128].iter().all(|&x| x == 0));
    }

    #[test]
    fn commit_sqe_carries_the_commit_id() {
        // SAFETY: the SQE is only inspected, never submitted.
        let sqe = unsafe { commit_and_fetch(types::Fixed(0), 1, 0xdead_beef_0000_0002) };
        let b = bytes(&sqe);
        assert_eq!(
            u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            2,
            "cmd_op COMMIT_AND_FETCH"
        );
        assert_eq!(
            u64::from_ne_bytes(b[16..24].try_into().unwrap()),
            0,
            "no addr"
        );
        assert_eq!(
            u32::from_ne_bytes(b[24..28].try_into().unwrap()),
            0,
            "no len"
        );
        assert_eq!(
            u64::from_ne_bytes(b[56..64].try_into().unwrap()),
            0xdead_beef_0000_0002,
            "commit_id"
        );
        assert_eq!(u16::from_ne_bytes(b[64..66].try_into().unwrap()), 1, "qid");
    }
}
