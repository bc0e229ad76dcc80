//! The `/dev/fuse` side of the export: mounting, INIT, and the queues that
//! read requests with io_uring and write replies.
//!
//! This crate knows FUSE and io_uring, not disk images: it hands each parsed
//! request to a [`Handler`] together with the buffers it arrived in, and
//! gives the handler a way to submit backing I/O on the same ring and to
//! reply.
//!
//! * [`handler`]: what a handler sees (the trait, [`Job`], [`BackingOp`]).
//! * `jobs`: the job table and [`QueueIo`], shared by every transport.
//! * `ring_guard`: what the kernel may still touch when a queue ends early.
//! * [`readv`]: the transport that reads `/dev/fuse` with posted `READV`s.
//! * [`uring`]: the FUSE-over-io_uring transport (ring entries per CPU).
//!
//! `unsafe` is confined to [`buffer`] (the mapped memory), pushing SQEs
//! (`ring_guard`) that point into memory the ring guard owns (built in
//! `jobs`, [`readv`] and [`uring`]), the ring entries' shared memory and its
//! idle release ([`uring::entries`]), and the ioctls in [`session`].

pub mod buffer;
pub mod config;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod handler;
pub mod init;
mod jobs;
pub mod mount;
pub mod mountinfo;
pub mod readv;
mod ring_guard;
pub mod session;
pub mod stale;
pub mod uring;
pub mod watcher;

pub use buffer::{AlignedBuf, Chain, PAGE_SIZE, Pool, PoolStats, Segment};
pub use config::{QueueConfig, QueueReport, RingQueueOptions};
pub use handler::{BackingFile, BackingOp, Completion, Handler, Job, Waker};
pub use init::{InitRequest, Negotiated};
pub use jobs::QueueIo;
pub use mount::{MountMethod, MountOptions};
pub use readv::{Incoming, SpillLayout};
pub use session::{
    QueueContext, Queues, Running, Session, Stopper, serve_fd, serve_fd_as_ring, serve_fds,
};
