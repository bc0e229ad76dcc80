//! One queue: a thread, its `/dev/fuse` fd, its io_uring, its buffer pool.
//!
//! The loop posts several `readv`s on the fd (see [`crate::slot`]), hands
//! each request that arrives to the [`Handler`] together with a [`Job`]
//! token, submits the backing I/O the handler asks for on the same ring, and
//! writes replies with `writev` on the same ring. Nothing blocks on a single
//! request: many are in flight while new reads are posted.
//!
//! Every SQE that points at memory points into a job or slot entry that lives
//! in a boxed slice allocated once per queue (stable addresses), and the
//! buffers it references are owned by that entry until the CQE arrives.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuse_proto::reply::{Errno, Reply};
use io_uring::{IoUring, opcode, squeue, types};

use crate::buffer::{Chain, MAX_SEGMENTS, Pool, PoolStats};
use crate::slot::{Incoming, ReadSlot, SpillLayout};

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
#[must_use = "a request must be answered (reply, reply_data or finish)"]
#[derive(Debug)]
pub struct Job {
    index: u32,
    unique: u64,
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

const KIND_SHIFT: u32 = 56;
const KIND_READ: u64 = 1;
const KIND_JOB: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_CANCEL: u64 = 4;

fn user_data(kind: u64, index: usize) -> u64 {
    kind << KIND_SHIFT | index as u64
}

/// Fixed file index of the queue's `/dev/fuse` fd; backing files follow.
const FUSE_FIXED: types::Fixed = types::Fixed(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    /// Held by the handler (e.g. waiting for a lock).
    Handler,
    Backing,
    Replying,
}

struct JobEntry<S> {
    phase: Phase,
    unique: u64,
    state: Option<S>,
    chain: Option<Chain>,
    reply: Option<Reply>,
    iov: [libc::iovec; MAX_SEGMENTS + 1],
}

/// The queue's side of the handler interface: submit backing I/O, reply,
/// take buffers.
pub struct QueueIo<'q, S> {
    core: &'q mut Core<S>,
}

impl<S> std::fmt::Debug for QueueIo<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueIo")
            .field("index", &self.core.index)
            .finish()
    }
}

struct Core<S> {
    index: usize,
    ring: IoUring,
    jobs: Box<[JobEntry<S>]>,
    free_jobs: Vec<u32>,
    pool: Pool,
    error: Option<io::Error>,
}

impl<S> QueueIo<'_, S> {
    /// This queue's index.
    pub fn queue_index(&self) -> usize {
        self.core.index
    }

    /// The queue's buffer pool (for read destinations and bounce buffers).
    pub fn pool(&mut self) -> &mut Pool {
        &mut self.core.pool
    }

    /// Submits backing I/O for `job`; [`Handler::complete`] gets the result,
    /// the chain and `state` back.
    pub fn submit(&mut self, job: Job, op: BackingOp, mut chain: Chain, state: S) {
        let entry = &mut self.core.jobs[job.index as usize];
        let iov_count = chain.fill_iovecs(&mut entry.iov) as u32;
        let iov = entry.iov.as_ptr();
        let file = |f: BackingFile| types::Fixed(f.0 + 1);
        let sqe = match op {
            BackingOp::Read { file: f, offset } => opcode::Readv::new(file(f), iov, iov_count)
                .offset(offset)
                .build(),
            BackingOp::Write { file: f, offset } => opcode::Writev::new(file(f), iov, iov_count)
                .offset(offset)
                .build(),
            BackingOp::Fsync { file: f, datasync } => {
                let flags = if datasync {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                };
                opcode::Fsync::new(file(f)).flags(flags).build()
            }
            BackingOp::Fallocate {
                file: f,
                offset,
                len,
                mode,
            } => opcode::Fallocate::new(file(f), len)
                .offset(offset)
                .mode(mode)
                .build(),
        };
        entry.phase = Phase::Backing;
        entry.chain = Some(chain);
        entry.state = Some(state);
        let sqe = sqe.user_data(user_data(KIND_JOB, job.index as usize));
        // SAFETY: the iovecs point into `entry.iov` and the chain's buffers,
        // both owned by the job entry (a boxed slice that never moves) until
        // the CQE for this user_data is reaped in `Core::job_done`.
        unsafe { self.core.push(&sqe) };
    }

    /// Answers `job` with an inline reply (error, empty or struct).
    pub fn reply(&mut self, job: Job, reply: Reply) {
        debug_assert_eq!(
            reply.trailing_len(),
            0,
            "data replies go through reply_data"
        );
        self.send(job, reply, None);
    }

    /// Answers `job` with an error.
    pub fn reply_error(&mut self, job: Job, errno: Errno) {
        let unique = job.unique;
        self.send(job, Reply::error(unique, errno), None);
    }

    /// Answers `job` with the bytes in the chain's windows as data (READ).
    pub fn reply_data(&mut self, job: Job, chain: Chain) {
        let reply = Reply::data_header(job.unique, chain.len() as u32);
        self.send(job, reply, Some(chain));
    }

    /// Ends `job` without a reply (FORGET, or a request that cannot be answered).
    pub fn finish(&mut self, job: Job) {
        self.core.free_job(job.index);
    }

    /// Ends `job`, returning its chain to the pool, without a reply.
    pub fn finish_with(&mut self, job: Job, chain: Chain) {
        self.core.pool.give_chain(chain);
        self.core.free_job(job.index);
    }

    fn send(&mut self, job: Job, reply: Reply, chain: Option<Chain>) {
        let entry = &mut self.core.jobs[job.index as usize];
        entry.phase = Phase::Replying;
        let reply = entry.reply.insert(reply);
        let inline = reply.as_bytes();
        entry.iov[0] = libc::iovec {
            iov_base: inline.as_ptr().cast_mut().cast(),
            iov_len: inline.len(),
        };
        let mut count = 1;
        if let Some(mut chain) = chain {
            count += chain.fill_iovecs(&mut entry.iov[1..]);
            entry.chain = Some(chain);
        }
        let sqe = opcode::Writev::new(FUSE_FIXED, entry.iov.as_ptr(), count as u32)
            .build()
            .user_data(user_data(KIND_JOB, job.index as usize));
        // SAFETY: the iovecs point into `entry.reply` and the chain, owned by
        // the job entry (stable address) until the CQE is reaped.
        unsafe { self.core.push(&sqe) };
    }
}

impl<S> Core<S> {
    /// Queues an SQE, submitting first if the ring is full.
    ///
    /// # Safety
    /// Any memory the SQE references must stay valid until its CQE.
    unsafe fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit()
                && !matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EINTR))
            {
                // The ring is broken; the queue ends at the top of its loop.
                self.error.get_or_insert(err);
                return;
            }
        }
    }

    fn alloc_job(&mut self, unique: u64) -> Option<Job> {
        let index = self.free_jobs.pop()?;
        let entry = &mut self.jobs[index as usize];
        entry.phase = Phase::Handler;
        entry.unique = unique;
        Some(Job { index, unique })
    }

    fn free_job(&mut self, index: u32) {
        let entry = &mut self.jobs[index as usize];
        if let Some(chain) = entry.chain.take() {
            self.pool.give_chain(chain);
        }
        entry.reply = None;
        entry.state = None;
        entry.phase = Phase::Free;
        self.free_jobs.push(index);
    }

    fn busy_jobs(&self) -> usize {
        self.jobs.len() - self.free_jobs.len()
    }
}

/// Everything a queue thread needs, built before the thread starts.
pub(crate) struct QueueSetup {
    pub index: usize,
    pub fuse_fd: OwnedFd,
    pub backing: Vec<RawFd>,
    pub config: QueueConfig,
    pub waker: Waker,
    pub stop: Arc<AtomicBool>,
}

/// Runs a queue until it is stopped or the connection ends.
pub(crate) fn run_queue<H: Handler>(setup: QueueSetup, handler: &mut H) -> io::Result<QueueReport> {
    let QueueSetup {
        index,
        fuse_fd,
        backing,
        config,
        waker,
        stop,
    } = setup;
    let entries = (config.reads + config.max_in_flight + 8).next_power_of_two() as u32;
    let ring = IoUring::builder()
        .setup_cqsize(entries * 2)
        .build(entries)?;
    let mut fixed = vec![fuse_fd.as_raw_fd()];
    fixed.extend_from_slice(&backing);
    ring.submitter().register_files(&fixed)?;

    let jobs: Box<[JobEntry<H::State>]> = (0..config.max_in_flight)
        .map(|_| JobEntry {
            phase: Phase::Free,
            unique: 0,
            state: None,
            chain: None,
            reply: None,
            iov: [libc::iovec {
                iov_base: core::ptr::null_mut(),
                iov_len: 0,
            }; MAX_SEGMENTS + 1],
        })
        .collect();
    let free_jobs = (0..config.max_in_flight as u32).rev().collect();
    let mut pool = Pool::new(config.pool_cap);
    pool.prefill(crate::slot::HEAD_BLOCK_LEN, config.reads * 2)?;
    let mut core = Core {
        index,
        ring,
        jobs,
        free_jobs,
        pool,
        error: None,
    };
    let mut slots: Box<[ReadSlot]> = (0..config.reads).map(|_| ReadSlot::new()).collect();
    let mut wake_buf = Box::new([0u8; 8]);
    let mut report = QueueReport {
        index,
        ..QueueReport::default()
    };

    let mut wake_posted = false;
    let mut stopping = false;
    let mut disconnected = false;
    let mut posted_reads = 0usize;

    loop {
        // Keep reads posted while every posted read can get a job when it completes.
        if !(stopping || disconnected) {
            for (slot_index, slot) in slots.iter_mut().enumerate() {
                if slot.posted || core.free_jobs.len() <= posted_reads {
                    continue;
                }
                let (iov, count) = slot.arm(&config.layout, &mut core.pool)?;
                let sqe = opcode::Readv::new(FUSE_FIXED, iov, count)
                    .build()
                    .user_data(user_data(KIND_READ, slot_index));
                // SAFETY: the iovecs live in the slot (a boxed slice that never
                // moves) and point at buffers the slot owns until the CQE.
                unsafe { core.push(&sqe) };
                slot.posted = true;
                posted_reads += 1;
            }
        }
        if let Some(err) = core.error.take() {
            return Err(abandon(core, slots, err));
        }
        let drained = (stopping || disconnected) && posted_reads == 0 && core.busy_jobs() == 0;
        if drained {
            if !wake_posted {
                break;
            }
            // Completes the posted eventfd read so that the loop can end.
            waker.wake();
        } else if !wake_posted {
            let sqe = opcode::Read::new(
                types::Fd(waker.eventfd.as_raw_fd()),
                wake_buf.as_mut_ptr(),
                8,
            )
            .build()
            .user_data(user_data(KIND_WAKE, 0));
            // SAFETY: `wake_buf` is boxed and lives until the loop ends, and the
            // loop only ends once this read has completed (wake_posted false).
            unsafe { core.push(&sqe) };
            wake_posted = true;
        }

        match core.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
            Err(err) => return Err(abandon(core, slots, err)),
        }

        // Collect completions first: handling them needs `&mut core`.
        let mut cqes: [(u64, i32); 64] = [(0, 0); 64];
        let mut count = 0;
        for cqe in core.ring.completion() {
            cqes[count] = (cqe.user_data(), cqe.result());
            count += 1;
            if count == cqes.len() {
                break;
            }
        }

        for &(data, result) in &cqes[..count] {
            let kind = data >> KIND_SHIFT;
            let index = (data & ((1 << KIND_SHIFT) - 1)) as usize;
            match kind {
                KIND_READ => {
                    let slot = &mut slots[index];
                    slot.posted = false;
                    posted_reads -= 1;
                    if result > 0 {
                        let Some(incoming) = slot.take(result as usize, &config.layout) else {
                            log::error!("queue {index}: read slot lost its buffers");
                            continue;
                        };
                        report.requests += 1;
                        if incoming.spill_tiers() > 0 {
                            report.spilled += 1;
                        }
                        dispatch(&mut core, handler, incoming);
                    } else {
                        match -result {
                            libc::ENODEV => {
                                if !disconnected {
                                    log::info!(
                                        "queue {}: connection ended (unmounted)",
                                        core.index
                                    );
                                }
                                disconnected = true;
                            }
                            libc::ECONNABORTED => {
                                if !disconnected {
                                    log::warn!("queue {}: connection aborted", core.index);
                                }
                                disconnected = true;
                            }
                            libc::ECANCELED => {}
                            libc::EINTR | libc::EAGAIN | libc::ENOENT => {}
                            // /dev/fuse never returns 0; a fake device's peer
                            // closing does, and means the same as an unmount.
                            0 => disconnected = true,
                            errno => {
                                let err = io::Error::from_raw_os_error(errno);
                                return Err(abandon(core, slots, err));
                            }
                        }
                    }
                }
                KIND_JOB => job_done(&mut core, handler, index as u32, result),
                KIND_WAKE => {
                    wake_posted = false;
                    if stop.load(Ordering::Acquire) && !stopping {
                        stopping = true;
                        for (slot_index, slot) in slots.iter().enumerate() {
                            if slot.posted {
                                let sqe =
                                    opcode::AsyncCancel::new(user_data(KIND_READ, slot_index))
                                        .build()
                                        .user_data(user_data(KIND_CANCEL, slot_index));
                                // SAFETY: a cancel references no memory.
                                unsafe { core.push(&sqe) };
                            }
                        }
                    }
                    handler.wake(&mut QueueIo { core: &mut core });
                }
                KIND_CANCEL => {}
                _ => log::error!("queue {}: unexpected completion {data:#x}", core.index),
            }
        }
        if (stopping || disconnected) && core.jobs.iter().any(|j| j.phase == Phase::Handler) {
            // Jobs still held by the handler (waiting for locks) get a chance to move on.
            handler.wake(&mut QueueIo { core: &mut core });
        }
    }
    for slot in slots.iter_mut() {
        slot.release(&mut core.pool);
    }
    report.pool = core.pool.stats();
    report.disconnected = disconnected;
    drop(fuse_fd);
    Ok(report)
}

/// Ends a queue whose ring failed. Operations may still be in flight in the
/// kernel, so the memory they point into (slots, job entries, buffers) and
/// the ring itself are leaked rather than freed under the kernel's feet.
/// The process is about to stop serving anyway.
fn abandon<S>(core: Core<S>, slots: Box<[ReadSlot]>, err: io::Error) -> io::Error {
    log::error!(
        "queue {}: io_uring failed ({err}); abandoning its buffers",
        core.index
    );
    std::mem::forget(core);
    std::mem::forget(slots);
    err
}

fn dispatch<H: Handler>(core: &mut Core<H::State>, handler: &mut H, incoming: Incoming) {
    let unique = match incoming.request() {
        Ok(request) => request.header.unique,
        Err(err) => {
            // Answer if the header is intact enough to name the request.
            let head = incoming.head_bytes();
            let unique = head
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes);
            log::warn!(
                "queue {}: malformed request ({err}); unique {unique:?}",
                core.index
            );
            match unique {
                Some(unique) if unique != 0 => {
                    if let Some(job) = core.alloc_job(unique) {
                        let mut io = QueueIo { core };
                        io.pool().give_chain(incoming.into_buffers());
                        io.reply_error(job, Errno::EIO);
                    }
                }
                _ => core.pool.give_chain(incoming.into_buffers()),
            }
            return;
        }
    };
    let Some(job) = core.alloc_job(unique) else {
        // Cannot happen: reads are only posted while jobs are available.
        log::error!("queue {}: no job entry for request {unique}", core.index);
        core.pool.give_chain(incoming.into_buffers());
        return;
    };
    handler.request(job, incoming, &mut QueueIo { core });
}

fn job_done<H: Handler>(core: &mut Core<H::State>, handler: &mut H, index: u32, result: i32) {
    let entry = &mut core.jobs[index as usize];
    match entry.phase {
        Phase::Backing => {
            let chain = entry.chain.take().unwrap_or_default();
            let Some(state) = entry.state.take() else {
                log::error!("queue {}: backing completion without state", core.index);
                return;
            };
            entry.phase = Phase::Handler;
            let job = Job {
                index,
                unique: entry.unique,
            };
            handler.complete(
                job,
                Completion {
                    result,
                    chain,
                    state,
                },
                &mut QueueIo { core },
            );
        }
        Phase::Replying => {
            if result < 0 {
                match -result {
                    // The request was interrupted or the connection went away.
                    libc::ENOENT | libc::ENODEV | libc::ECONNABORTED => log::debug!(
                        "queue {}: reply to {} not delivered: errno {}",
                        core.index,
                        entry.unique,
                        -result
                    ),
                    errno => log::error!(
                        "queue {}: kernel rejected reply to {}: {}",
                        core.index,
                        entry.unique,
                        io::Error::from_raw_os_error(errno)
                    ),
                }
            }
            core.free_job(index);
        }
        Phase::Free | Phase::Handler => {
            log::error!("queue {}: completion for idle job {index}", core.index);
        }
    }
}
