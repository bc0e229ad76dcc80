//! The `/dev/fuse` side of the export: mounting, INIT, and the queues that
//! read requests with io_uring and write replies.
//!
//! This crate knows FUSE and io_uring, not disk images: it hands each parsed
//! request to a [`Handler`] together with the buffers it arrived in, and
//! gives the handler a way to submit backing I/O on the same ring and to
//! reply. `unsafe` is confined to [`buffer`] (the mapped memory), the SQE
//! building in [`queue`] and [`slot`], and one ioctl in [`session`].

pub mod buffer;
pub mod init;
pub mod mount;
pub mod queue;
pub mod session;
pub mod slot;
pub mod uring;

pub use buffer::{AlignedBuf, Chain, PAGE_SIZE, Pool, PoolStats, Segment};
pub use init::{InitRequest, Negotiated};
pub use mount::{MountMethod, MountOptions};
pub use queue::{
    BackingFile, BackingOp, Completion, Handler, Job, QueueConfig, QueueIo, QueueReport, Waker,
};
pub use session::{QueueContext, Running, Session, Stopper, serve_fd};
pub use slot::{Incoming, SpillLayout};
