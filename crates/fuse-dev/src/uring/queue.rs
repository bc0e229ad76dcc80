//! One FUSE-over-io_uring queue: a thread pinned to its CPU, its `SQE128`
//! ring, its ring entries, and the same job table and [`Handler`] as the
//! `readv` transport.
//!
//! A request arrives as the completion of an entry's command. Its header and
//! op struct are copied into a head block from the pool (a few dozen bytes;
//! the parsers want them contiguous) and the entry's payload buffer is lent
//! to the request ([`LentPayload`](super::LentPayload)): a WRITE goes to the
//! image straight from it, a READ is read straight into it. The reply is
//! stored in the entry (see [`super::reply`]) and committed with
//! COMMIT_AND_FETCH, which also waits for the entry's next request; the job
//! ends as soon as the commit is queued.
//!
//! Ending:
//!
//! * the connection ends (unmount, abort): every waiting entry completes
//!   with `ENOTCONN`, commits fail; once nothing is in flight the queue
//!   frees everything and ends;
//! * a stop (SIGTERM): requests delivered from then on are held, not
//!   served; once the ones in progress are answered the queue reports that
//!   it is quiet ([`UringEnding`]) and waits. The session then unmounts,
//!   which ends the connection as above, or, if the mount is busy, tells the
//!   queue to let go: it leaves its entries, which only the end of the
//!   connection completes, to the kernel (the ring guard never frees them)
//!   and ends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Sender;
use fuse_proto::abi::InHeader;
use fuse_proto::{Opcode, WRITE_HEADER_LEN};
use io_uring::{opcode, squeue, types};

use super::device::EntryDevice;
use super::entries::RingEntries;
use super::reply::{Stored, entry_of, store_reply};
use super::ring::{EntryRing, RingError, RingEvent, build_ring};
use crate::buffer::{IDLE_RELEASE, Pool};
use crate::config::{QueueConfig, QueueReport, RingQueueOptions};
use crate::handler::{Handler, Waker};
use crate::jobs::{
    Delivery, JobTable, KIND_JOB, OutgoingReply, QueueIo, Transport, dispatch, job_done,
    split_user_data, user_data,
};
use crate::readv::Incoming;
use crate::readv::slot::{HEAD_BLOCK_LEN, HEAD_LEN, HEAD_OFFSET};
use crate::ring_guard::{KernelMemory, RingGuard};

/// `user_data` kind of the posted eventfd read of the waker.
const KIND_WAKE: u64 = 3;

/// How the session and its ring queues agree on an orderly end.
#[derive(Debug)]
pub(crate) struct UringEnding {
    /// Each queue sends its index once: when, after a stop, it has answered
    /// every request it was serving, or when it ends (whichever is first).
    quiet: Sender<usize>,
    /// Set (then the queues are woken) when the connection will not end
    /// soon: the queues leave their entries to the kernel and end.
    let_go: AtomicBool,
}

impl UringEnding {
    pub(crate) fn new(quiet: Sender<usize>) -> UringEnding {
        UringEnding {
            quiet,
            let_go: AtomicBool::new(false),
        }
    }

    /// Tells the queues to end without waiting for the connection to end.
    pub(crate) fn let_go(&self) {
        self.let_go.store(true, Ordering::Release);
    }
}

/// Sends a queue's "quiet" to the session exactly once: when the loop says
/// so, or, at the latest, when the queue ends however it ends (an error
/// before the loop ran, a panic), so that the session never waits for it.
struct QuietNotice {
    index: usize,
    ending: Arc<UringEnding>,
    sent: bool,
}

impl QuietNotice {
    fn send(&mut self) {
        if !self.sent {
            self.sent = true;
            let _ = self.ending.quiet.send(self.index);
        }
    }
}

impl Drop for QuietNotice {
    fn drop(&mut self) {
        self.send();
    }
}

/// How long a batched wait holds out for the whole batch before it takes
/// what has come.
const BATCH_MIN_WAIT: std::time::Duration = std::time::Duration::from_micros(50);

/// A batched wait's overall limit. Only its presence matters (without it
/// the kernel ends the wait after [`BATCH_MIN_WAIT`] even when nothing
/// came); when it runs out the loop just waits again.
const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits without polling after a poll that came back empty.
const POLL_BACKOFF_WAITS: u32 = 8;

/// Requests in progress for which a queue polls (see
/// `UringLoop::polls_next_wait`).
const LONE_REQUEST: usize = 1;

/// Completions one wait must bring for the next wait to be batched: more
/// than one means they come faster than the thread wakes for them.
const DENSE_COMPLETIONS: usize = 2;

/// Requests a ring queue of `depth` entries may hold at once: a request per
/// entry, plus, for a moment, the job of a deferred reply whose entry already
/// took the next request (its NOP not reaped yet): twice the depth is always
/// enough.
pub(crate) fn job_capacity(depth: usize) -> usize {
    2 * depth
}

/// Everything a ring queue's thread needs.
pub(crate) struct UringSetup {
    /// The queue's index among the session's queues.
    pub index: usize,
    /// The kernel's queue id (the CPU the thread is pinned to).
    pub qid: u16,
    /// The queue's `/dev/fuse` fd (a clone).
    pub fuse_fd: OwnedFd,
    pub backing: Vec<RawFd>,
    pub config: QueueConfig,
    /// Depth, wait batch and busy poll. Batching needs completions coming
    /// densely: the last wait brought [`DENSE_COMPLETIONS`] or more.
    pub ring: RingQueueOptions,
    /// Bytes of each entry's payload buffer.
    pub payload_len: usize,
    pub waker: Waker,
    pub stop: Arc<AtomicBool>,
    pub ending: Arc<UringEnding>,
    /// Entry commands go to a fake device (tests without a kernel) rather
    /// than to the kernel's FUSE-over-io_uring.
    pub fake_device: bool,
}

/// What the kernel may point into while the queue's operations are in
/// flight; owned by the queue's [`RingGuard`].
struct UringMemory<S> {
    /// The device (fixed file 0 of the ring); closed only after the ring.
    _device: OwnedFd,
    jobs: JobTable<S>,
    entries: RingEntries,
    /// Where entry commands go.
    device: EntryDevice,
    /// Jobs whose reply waits for their entry's payload to come back, with
    /// the entry.
    deferred: Vec<(usize, usize)>,
    /// Where the waker's eventfd read lands.
    wake_buf: Box<[u8; 8]>,
}

impl<S> KernelMemory for UringMemory<S> {
    fn drains_on_cancel(&self) -> bool {
        // Backing I/O, the eventfd read and NOPs end; an entry waiting for
        // a request does not (cancellation does not reach ring commands,
        // only the end of the connection does).
        self.entries.in_kernel_count() == 0
    }

    fn reaped(&mut self, user_data: u64, result: i32) {
        let (kind, index) = split_user_data(user_data);
        if kind == KIND_JOB {
            self.jobs.reaped_after_end(index);
        } else {
            let _ = self.device.sort(&mut self.entries, user_data, result);
        }
    }

    fn ended_early(&mut self, _drained: bool) {
        // A request held in an entry can only be answered through the ring,
        // which is gone: the kernel fails it when the connection ends (the
        // session ends it, since this queue failed).
        let held = self.jobs.unanswered(true).count();
        if held > 0 {
            log::warn!("{held} requests of a ring queue that ended early are left to the kernel");
        }
    }
}

impl<S> UringMemory<S> {
    /// The job table and the transport that sends its replies through this
    /// queue's entries, borrowed together: a `QueueIo` needs both.
    fn job_io_parts<'a>(
        &'a mut self,
        ring: &'a mut EntryRing,
        qid: u16,
    ) -> (&'a mut JobTable<S>, RingReplies<'a>) {
        let replies = RingReplies {
            ring,
            entries: &mut self.entries,
            device: &mut self.device,
            deferred: &mut self.deferred,
            qid,
        };
        (&mut self.jobs, replies)
    }
}

/// The ring transport's half of the job table's seam.
struct RingReplies<'r> {
    ring: &'r mut EntryRing,
    entries: &'r mut RingEntries,
    device: &'r mut EntryDevice,
    deferred: &'r mut Vec<(usize, usize)>,
    qid: u16,
}

impl Transport for RingReplies<'_> {
    unsafe fn submit_backing(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.ring.push(&squeue::Entry128::from(sqe.clone())) }
    }

    unsafe fn deliver_reply(
        &mut self,
        index: usize,
        reply: OutgoingReply<'_>,
    ) -> io::Result<Delivery> {
        let unique = reply
            .header
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes);
        let Some(entry) = entry_of(self.entries, unique) else {
            // The job came from another transport's request: impossible here.
            log::error!("queue {}: no ring entry holds request {unique}", self.qid);
            return Ok(Delivery::Done);
        };
        match store_reply(self.entries, entry, reply.header, reply.data)? {
            Stored::Ready => {
                self.device
                    .commit(self.ring, self.entries, self.qid, entry)?;
                Ok(Delivery::Done)
            }
            Stored::LeaseOut => {
                // The job keeps its reply; a NOP tagged with it ends the job
                // once the reply is committed (see `UringLoop::deferred`).
                self.deferred.push((index, entry));
                Ok(Delivery::InFlight)
            }
        }
    }
}

/// Runs a ring queue until the connection ends, or until a stop once the
/// session lets it go.
pub(crate) fn run_uring_queue<H: Handler>(
    setup: UringSetup,
    handler: &mut H,
) -> io::Result<QueueReport> {
    let UringSetup {
        index,
        qid,
        fuse_fd,
        backing,
        config,
        ring: options,
        payload_len,
        waker,
        stop,
        ending,
        fake_device,
    } = setup;
    let depth = options.depth;
    let quiet = QuietNotice {
        index,
        ending: ending.clone(),
        sent: false,
    };
    if let Err(err) = super::cpus::pin_current_thread(qid as usize) {
        log::debug!("queue {index}: not pinned to CPU {qid}: {err}");
    }
    let device = if fake_device {
        EntryDevice::fake(depth)
    } else {
        EntryDevice::Kernel
    };
    let jobs = job_capacity(depth);
    // The entry commands of each entry, a backing operation (or a deferred
    // reply's NOP) per job, and the waker's read.
    let bound = device.operations_per_entry() * depth + jobs + 1;
    let ring = build_ring(fuse_fd.as_fd(), &backing, bound)?;
    let backing_files = u32::try_from(backing.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many backing files"))?;
    let memory = UringMemory {
        _device: fuse_fd,
        jobs: JobTable::new(index, jobs, backing_files),
        entries: RingEntries::new(depth, payload_len)?,
        device,
        deferred: Vec::with_capacity(depth),
        wake_buf: Box::new([0u8; 8]),
    };
    let mut guard = RingGuard::new(index, ring, memory);
    let mut pool = Pool::new(config.pool_cap);
    pool.prefill(HEAD_BLOCK_LEN, depth.min(config.pool_cap))?;

    let mut queue = UringLoop {
        index,
        qid,
        waker,
        stop,
        ending,
        report: QueueReport {
            index,
            ..QueueReport::default()
        },
        wake_posted: false,
        stopping: false,
        disconnected: false,
        quiet,
        wait_batch: options.wait_batch,
        last_reaped: 0,
        busy_poll: options.busy_poll,
        poll_backoff: 0,
    };
    {
        let (ring, memory) = guard.parts();
        for entry in 0..depth {
            memory
                .device
                .register(ring, &mut memory.entries, qid, entry)?;
        }
    }
    let outcome = queue.serve(&mut guard, &mut pool, handler);
    queue.quiet.send();
    let let_go = outcome?;
    let mut report = queue.report;
    report.pool = pool.stats();
    report.disconnected = queue.disconnected;
    if let_go {
        guard.leave_to_kernel();
    } else {
        // The device closes here, after the ring let go of it.
        drop(guard.finish()?);
    }
    Ok(report)
}

/// The state of a ring queue's loop.
struct UringLoop {
    index: usize,
    qid: u16,
    waker: Waker,
    stop: Arc<AtomicBool>,
    ending: Arc<UringEnding>,
    report: QueueReport,
    wake_posted: bool,
    stopping: bool,
    disconnected: bool,
    quiet: QuietNotice,
    /// See [`RingQueueOptions::wait_batch`].
    wait_batch: usize,
    /// Completions the last wait brought.
    last_reaped: usize,
    /// See [`RingQueueOptions::busy_poll`].
    busy_poll: std::time::Duration,
    /// Waits left before polling again after a poll that came back empty.
    poll_backoff: u32,
}

impl UringLoop {
    /// Serves until the connection has ended and everything drained
    /// (`Ok(false)`), or until the session lets the queue go after a stop
    /// (`Ok(true)`: entries are still registered).
    fn serve<H: Handler>(
        &mut self,
        guard: &mut RingGuard<UringMemory<H::State>, squeue::Entry128>,
        pool: &mut Pool,
        handler: &mut H,
    ) -> io::Result<bool> {
        let mut reaped = [(0u64, 0i32); 64];
        loop {
            let (ring, memory) = guard.parts();
            self.retry_deferred(ring, memory)?;
            if let Some(err) = memory.jobs.take_failure() {
                return Err(err);
            }
            let quiet = memory.jobs.busy() == 0 && memory.deferred.is_empty();
            if self.stopping && quiet {
                self.quiet.send();
                if self.ending.let_go.load(Ordering::Acquire) && !self.disconnected {
                    return Ok(true);
                }
            }
            let drained = self.disconnected && quiet && memory.entries.in_kernel_count() == 0;
            if drained {
                if ring.in_flight() == 0 {
                    return Ok(false);
                }
                // Completes the posted eventfd read, the last operation.
                if self.wake_posted {
                    self.waker.wake();
                }
            } else if !self.wake_posted {
                let sqe = opcode::Read::new(
                    types::Fd(self.waker.eventfd().as_raw_fd()),
                    memory.wake_buf.as_mut_ptr(),
                    8,
                )
                .build()
                .user_data(user_data(KIND_WAKE, 0));
                // SAFETY: `wake_buf` is part of the guarded memory: it is
                // freed only once this read's CQE is reaped, or leaked.
                unsafe { ring.push(&sqe.into()) }?;
                self.wake_posted = true;
            }

            let idle = quiet && !self.stopping && !self.disconnected;
            let release_when_idle = idle
                && ((memory.device.releases_idle_entries() && memory.entries.has_dirty())
                    || pool.has_idle_above(HEAD_BLOCK_LEN));
            let timed_out = if release_when_idle {
                !ring.submit_and_wait_for(1, IDLE_RELEASE)?
            } else {
                if self.batches_next_wait(memory.jobs.busy()) {
                    ring.submit_and_wait_batch(self.wait_batch, BATCH_MIN_WAIT, BATCH_TIMEOUT)?;
                } else if self.polls_next_wait(memory.jobs.busy()) {
                    // A lone request waits on the image (or on the handler).
                    // Sleeping now would cost a wake-up for its completion
                    // (measured: 4k QD1, docs/performance.md).
                    ring.submit()?;
                    if !ring.poll_for_work(self.busy_poll) {
                        self.poll_backoff = POLL_BACKOFF_WAITS;
                    }
                    ring.submit_and_wait(1)?;
                } else {
                    ring.submit_and_wait(1)?;
                }
                false
            };
            self.last_reaped = 0;
            loop {
                let count = ring.reap(&mut reaped);
                self.last_reaped += count;
                for &(data, result) in &reaped[..count] {
                    self.completed(ring, memory, pool, handler, data, result)?;
                }
                if count < reaped.len() {
                    break;
                }
            }
            // Idle for a whole wait: nothing came back, so nothing was
            // pushed since the wait submitted everything (a commit's reply
            // is read by the kernel while it is submitted).
            let idle_wait = timed_out && self.last_reaped == 0;
            if idle_wait
                && memory.jobs.busy() == 0
                && !ring.has_completions()
                && !ring.has_unsubmitted()
            {
                let released = if memory.device.releases_idle_entries() {
                    // SAFETY: the ring is DEFER_TASKRUN and SINGLE_ISSUER
                    // (`build_ring`), so the kernel delivers into entries only
                    // inside this thread's waits; the last wait produced no
                    // completion and none is pending (checked), so an entry
                    // marked as in the kernel has no delivery posted; and every
                    // pushed command was submitted (checked), so the kernel has
                    // already taken the reply of each committed entry. Only such
                    // entries, waiting for their next request, are discarded.
                    unsafe { memory.entries.release_idle() }
                } else {
                    0
                };
                let bytes = pool.release_idle_above(HEAD_BLOCK_LEN);
                if released > 0 || bytes > 0 {
                    log::debug!(
                        "queue {}: gave back the pages of {released} idle ring entries and {} KiB \
                         of idle buffers",
                        self.index,
                        bytes / 1024
                    );
                }
            }
            if (self.stopping || self.disconnected) && memory.jobs.any_held_by_handler() {
                // Jobs still held by the handler (waiting for locks) get a
                // chance to move on.
                let (jobs, mut transport) = memory.job_io_parts(ring, self.qid);
                handler.wake(&mut QueueIo::new(jobs, pool, &mut transport));
            }
        }
    }

    /// Whether the next wait is for a batch of completions: batching is on,
    /// a whole batch is in progress, and completions are coming densely.
    /// Slow requests (1 MiB) complete one per wait, so their replies are
    /// not held back for a batch that will not come.
    fn batches_next_wait(&self, busy: usize) -> bool {
        self.wait_batch > 1 && busy >= self.wait_batch && self.last_reaped >= DENSE_COMPLETIONS
    }

    /// Whether the thread polls before its next wait: polling is on, one
    /// request is in progress, and no recent poll came back empty (slow
    /// backing I/O, such as 1 MiB requests, would make every poll a miss:
    /// CPU burnt for nothing). Counts the back-off down.
    ///
    /// Only a lone request: its client is most likely asleep until it is
    /// answered, so this CPU is free. With more in progress the client is
    /// often runnable on this same CPU (the kernel queues its requests to
    /// the ring of its CPU), and a polling thread would take turns with it
    /// (measured: 4k randread QD4 and 1M writes QD16 were slower).
    fn polls_next_wait(&mut self, busy: usize) -> bool {
        if self.busy_poll.is_zero() || busy != LONE_REQUEST {
            return false;
        }
        if self.poll_backoff > 0 {
            self.poll_backoff -= 1;
            return false;
        }
        true
    }

    /// Commits deferred replies whose entry's payload came back.
    fn retry_deferred<S>(
        &mut self,
        ring: &mut EntryRing,
        memory: &mut UringMemory<S>,
    ) -> io::Result<()> {
        let mut position = 0;
        while position < memory.deferred.len() {
            let (job, entry) = memory.deferred[position];
            if memory.entries.is_lent(entry) {
                position += 1;
                continue;
            }
            memory.deferred.swap_remove(position);
            let Some(reply) = memory.jobs.outgoing(job) else {
                continue;
            };
            match store_reply(&mut memory.entries, entry, reply.header, reply.data)? {
                Stored::Ready => {
                    memory
                        .device
                        .commit(ring, &mut memory.entries, self.qid, entry)?
                }
                Stored::LeaseOut => {
                    memory.deferred.push((job, entry));
                    continue;
                }
            }
            // The job's reply is out of its entry: a NOP tagged with the
            // job ends it through the job table, like a sent reply.
            let nop = opcode::Nop::new()
                .build()
                .user_data(user_data(KIND_JOB, job));
            // SAFETY: a NOP references no memory.
            unsafe { ring.push(&nop.into()) }?;
        }
        Ok(())
    }

    fn completed<H: Handler>(
        &mut self,
        ring: &mut EntryRing,
        memory: &mut UringMemory<H::State>,
        pool: &mut Pool,
        handler: &mut H,
        data: u64,
        result: i32,
    ) -> io::Result<()> {
        let (kind, index) = split_user_data(data);
        match kind {
            KIND_JOB => {
                let (jobs, mut transport) = memory.job_io_parts(ring, self.qid);
                let mut io = QueueIo::new(jobs, pool, &mut transport);
                job_done(&mut io, handler, index, result);
            }
            KIND_WAKE => {
                self.wake_posted = false;
                if self.stop.load(Ordering::Acquire) && !self.stopping {
                    self.stopping = true;
                }
                let (jobs, mut transport) = memory.job_io_parts(ring, self.qid);
                handler.wake(&mut QueueIo::new(jobs, pool, &mut transport));
            }
            _ => match memory.device.sort(&mut memory.entries, data, result) {
                None => {}
                Some(RingEvent::Delivered(entry)) => {
                    self.report.requests += 1;
                    if self.stopping {
                        // Held: answered by the kernel (ECONNABORTED) when
                        // the connection ends.
                        return Ok(());
                    }
                    self.deliver(ring, memory, pool, handler, entry)?;
                }
                Some(RingEvent::Ended { entry, errno }) => {
                    self.entry_ended(ring, memory, entry, errno)?
                }
                Some(RingEvent::Other { .. }) => {
                    log::error!("queue {}: unexpected completion {data:#x}", self.index)
                }
            },
        }
        Ok(())
    }

    /// Hands the request delivered into `entry` to the handler.
    fn deliver<H: Handler>(
        &mut self,
        ring: &mut EntryRing,
        memory: &mut UringMemory<H::State>,
        pool: &mut Pool,
        handler: &mut H,
        entry: usize,
    ) -> io::Result<()> {
        let mut head = match pool.take(HEAD_BLOCK_LEN) {
            Ok(head) => head,
            Err(err) => {
                log::error!("queue {}: no buffer for a request: {err}", self.index);
                return self.answer_directly(ring, memory, entry, fuse_proto::reply::Errno::ENOMEM);
            }
        };
        let delivered = memory.entries.delivered(entry)?;
        let header = delivered.header;
        let header_bytes = zerocopy::IntoBytes::as_bytes(&header);
        let area = &mut head.as_mut_slice()[HEAD_OFFSET..HEAD_OFFSET + HEAD_LEN];
        let mut head_len = 0;
        for part in [header_bytes, delivered.op] {
            area[head_len..head_len + part.len()].copy_from_slice(part);
            head_len += part.len();
        }
        if header.opcode != Opcode::WRITE.0 {
            // Names and values follow the op struct; the parsers want them
            // contiguous. A WRITE's data stays where it is.
            let room = (HEAD_LEN - head_len).min(delivered.payload.len());
            area[head_len..head_len + room].copy_from_slice(&delivered.payload[..room]);
            head_len += room;
        } else {
            debug_assert_eq!(head_len, WRITE_HEADER_LEN);
        }
        debug_assert!(head_len >= size_of::<InHeader>());
        let payload_len = delivered.payload.len();
        let len = header.len as usize;
        let lease = memory.entries.lend(entry).map_err(RingError::from)?;
        let incoming = Incoming::from_ring(head, head_len, lease, payload_len, len);
        let (jobs, mut transport) = memory.job_io_parts(ring, self.qid);
        let mut io = QueueIo::new(jobs, pool, &mut transport);
        dispatch(&mut io, handler, incoming);
        Ok(())
    }

    /// Answers the request in `entry` with an error without the handler.
    fn answer_directly<S>(
        &mut self,
        ring: &mut EntryRing,
        memory: &mut UringMemory<S>,
        entry: usize,
        errno: fuse_proto::reply::Errno,
    ) -> io::Result<()> {
        let unique = memory.entries.commit_id(entry);
        let reply = fuse_proto::reply::Reply::error(unique, errno);
        memory.entries.write_reply(entry, reply.as_bytes())?;
        memory
            .device
            .commit(ring, &mut memory.entries, self.qid, entry)?;
        Ok(())
    }

    /// An entry's command ended without a request.
    fn entry_ended<S>(
        &mut self,
        ring: &mut EntryRing,
        memory: &mut UringMemory<S>,
        entry: usize,
        errno: i32,
    ) -> io::Result<()> {
        match errno {
            libc::ENOTCONN | libc::ECONNABORTED => {
                if !self.disconnected {
                    let why = if errno == libc::ENOTCONN {
                        "unmounted or aborted"
                    } else {
                        "aborted"
                    };
                    // After a stop the session unmounts: that is expected.
                    let level = if self.stopping {
                        log::Level::Debug
                    } else {
                        log::Level::Info
                    };
                    log::log!(level, "queue {}: connection ended ({why})", self.index);
                }
                self.disconnected = true;
                memory.entries.forget_request(entry);
            }
            // The request this entry held is gone (the kernel ended it), or
            // a transient refusal: the entry waits for the next one.
            libc::ENOENT | libc::EINTR | libc::EAGAIN => {
                if !(self.stopping || self.disconnected) {
                    memory
                        .device
                        .register(ring, &mut memory.entries, self.qid, entry)?;
                }
            }
            errno => {
                return Err(io::Error::new(
                    io::Error::from_raw_os_error(errno).kind(),
                    format!(
                        "the kernel refused ring entry {entry} of queue {}: {}",
                        self.qid,
                        io::Error::from_raw_os_error(errno)
                    ),
                ));
            }
        }
        Ok(())
    }
}
