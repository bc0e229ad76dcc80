//! FUSE-over-io_uring command codes (7.42, Linux 6.14+).
//!
//! An entry is an `IORING_OP_URING_CMD` SQE (ring set up with
//! `IORING_SETUP_SQE128`) on the `/dev/fuse` fd, with `cmd_op` set to a
//! [`UringCmd`], `addr`/`len` pointing to two iovecs (the
//! [`UringReqHeader`](crate::abi::UringReqHeader) buffer and the payload
//! buffer) and a [`UringCmdReq`](crate::abi::UringCmdReq) in the command
//! area. Its completion is the delivery of a request.

code_newtype! {
    /// `enum fuse_uring_cmd`: the `cmd_op` of a FUSE io_uring SQE.
    UringCmd(u32), kernel prefix "FUSE_IO_URING_CMD_" {
        /// Invalid.
        INVALID = 0,
        /// Register the entry's buffers and wait for a request.
        REGISTER = 1,
        /// Commit the reply for `commit_id` and wait for the next request.
        COMMIT_AND_FETCH = 2,
    }
}
