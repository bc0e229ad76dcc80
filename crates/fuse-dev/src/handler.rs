//! What a [`Handler`] sees of a queue, whatever transport delivered the
//! request: the [`Job`] token, backing operations and their [`Completion`],
//! and the [`Waker`] other queues use to nudge this one.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::buffer::Chain;
use crate::jobs::{QueueId, QueueIo};
use crate::readv::Incoming;

/// A backing file registered with every queue's ring, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackingFile(pub u32);

/// Backing I/O a handler can submit for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingOp {
    /// `preadv` into the chain's windows.
    Read {
        /// The file.
        file: BackingFile,
        /// Byte offset.
        offset: u64,
    },
    /// `pwritev` from the chain's windows.
    Write {
        /// The file.
        file: BackingFile,
        /// Byte offset.
        offset: u64,
    },
    /// `fsync` / `fdatasync`.
    Fsync {
        /// The file.
        file: BackingFile,
        /// Only data (fdatasync).
        datasync: bool,
    },
    /// `fallocate(2)`.
    Fallocate {
        /// The file.
        file: BackingFile,
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Mode bits.
        mode: i32,
    },
}

/// The token of one request being served.
///
/// It is handed to the [`Handler`] with the request and must come back to
/// the queue exactly once through [`QueueIo::reply`], [`QueueIo::reply_data`]
/// or [`QueueIo::finish`] (possibly after backing I/O). Not `Clone`: a request
/// cannot be answered twice.
///
/// A job belongs to the queue that issued it. It is not `Send`, so it cannot
/// reach another queue's thread, and a queue refuses (with an error in the
/// log) a job it did not issue, such as one kept from a queue that ended:
///
/// ```compile_fail
/// fn needs_send<T: Send>() {}
/// needs_send::<fuse_dev::Job>();
/// ```
#[must_use = "a request must be answered (reply, reply_data or finish)"]
#[derive(Debug)]
pub struct Job {
    pub(crate) index: u32,
    pub(crate) unique: u64,
    pub(crate) queue: QueueId,
    /// Keeps `Job` from being `Send` (and `Sync`).
    pub(crate) not_send: PhantomData<*const ()>,
}

impl Job {
    /// The request's `unique`.
    pub fn unique(&self) -> u64 {
        self.unique
    }
}

/// What a finished backing operation gives back.
#[derive(Debug)]
pub struct Completion<S> {
    /// The result: bytes transferred, 0, or `-errno`.
    pub result: i32,
    /// The chain the operation used, returned to the handler.
    pub chain: Chain,
    /// The handler's state for this request.
    pub state: S,
}

/// Serves requests. One handler value per queue; share state between
/// queues through `Arc`s inside it.
///
/// If the queue ends early (its ring fails, a device read fails, a buffer
/// cannot be mapped, or a callback panics), no further callback comes: the
/// queue answers every request it had taken with `EIO` itself, and then the
/// handler value is dropped (during unwinding too). Whatever the handler
/// holds on behalf of requests (locks other queues wait for) must therefore
/// be released by its `Drop`.
pub trait Handler {
    /// What the handler keeps about a request while its backing I/O runs.
    type State;

    /// A request arrived. `incoming` owns the buffers it arrived in.
    fn request(&mut self, job: Job, incoming: Incoming, io: &mut QueueIo<'_, Self::State>);

    /// A backing operation submitted with [`QueueIo::submit`] finished.
    fn complete(
        &mut self,
        job: Job,
        done: Completion<Self::State>,
        io: &mut QueueIo<'_, Self::State>,
    );

    /// Another thread called [`Waker::wake`] for this queue (for example
    /// because a range lock this queue waits for was released).
    fn wake(&mut self, io: &mut QueueIo<'_, Self::State>) {
        let _ = io;
    }
}

/// Wakes a queue from another thread.
#[derive(Debug, Clone)]
pub struct Waker {
    eventfd: Arc<OwnedFd>,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Waker {
            eventfd: Arc::new(fd),
        })
    }

    /// Makes the queue call [`Handler::wake`] (and re-check its stop flag).
    pub fn wake(&self) {
        // EAGAIN means the counter is saturated: a wake-up is pending anyway.
        let _ = rustix::io::write(&*self.eventfd, &1u64.to_ne_bytes());
    }
}

impl Waker {
    /// The eventfd a queue's ring reads to learn about wake-ups.
    pub(crate) fn eventfd(&self) -> BorrowedFd<'_> {
        self.eventfd.as_fd()
    }
}
