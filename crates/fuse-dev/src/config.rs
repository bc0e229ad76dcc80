//! What a queue is started with and what it reports when it ends.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::buffer::PoolStats;
use crate::handler::Waker;
use crate::readv::SpillLayout;

/// Per-queue settings.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Reads kept posted on the device.
    pub reads: usize,
    /// Requests that may be in flight at once (backing I/O or reply pending).
    pub max_in_flight: usize,
    /// How each read's spill-over is split.
    pub layout: SpillLayout,
    /// Idle buffers kept per size class.
    pub pool_cap: usize,
    /// Queues beyond the first post reads only while there is load for
    /// them (`readv::standby`). Applies to [`Session::start`]'s queues,
    /// which read one connection's input queue; queues whose fds are each
    /// their own source ([`serve_fds`]) always read.
    ///
    /// [`Session::start`]: crate::Session::start
    /// [`serve_fds`]: crate::serve_fds
    pub standby: bool,
}

/// How each FUSE-over-io_uring queue holds requests and waits for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingQueueOptions {
    /// Ring entries per queue: requests each queue holds at once.
    pub depth: usize,
    /// With at least this many requests in progress, and while completions
    /// come densely, a queue waits for this many completions at once (up
    /// to 50 µs); 1: for each as it comes.
    pub wait_batch: usize,
    /// While a lone request is in progress (waiting on backing I/O,
    /// mostly), the queue polls up to this long for its completion before
    /// it sleeps (zero: it sleeps at once).
    pub busy_poll: std::time::Duration,
}

/// What a queue reports when it ends.
#[derive(Debug, Clone, Default)]
pub struct QueueReport {
    /// Queue index.
    pub index: usize,
    /// Requests read from the device.
    pub requests: u64,
    /// Requests whose WRITE data used at least one spill-over tier.
    pub spilled: u64,
    /// The pool's counters at the end.
    pub pool: PoolStats,
    /// The kernel ended the connection (unmount or abort).
    pub disconnected: bool,
}

/// Everything a queue thread needs, built before the thread starts.
pub(crate) struct QueueSetup {
    pub index: usize,
    pub fuse_fd: OwnedFd,
    pub backing: Vec<RawFd>,
    pub config: QueueConfig,
    pub waker: Waker,
    pub stop: Arc<AtomicBool>,
    /// Shared with the connection's other readv queues when they all read
    /// the kernel's one input queue (clones); `None` for a queue whose fd
    /// is its own source of requests (a lone queue, a test's fake device).
    pub load: Option<Arc<crate::readv::standby::QueueLoad>>,
}
