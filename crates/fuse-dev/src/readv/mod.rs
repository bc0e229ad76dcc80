//! The `readv` transport: a queue reads requests from its `/dev/fuse` fd
//! with `READV`s posted on its io_uring and writes replies with `WRITEV`.
//!
//! The loop posts several reads on the fd (see [`slot`]), hands each request
//! that arrives to the [`Handler`] together with a [`Job`](crate::Job) token, submits
//! the backing I/O the handler asks for on the same ring, and writes replies
//! on the same ring. Nothing blocks on a single request: many are in flight
//! while new reads are posted.
//!
//! Every SQE that points at memory points into a job or slot entry that lives
//! in a boxed slice allocated once per queue (stable addresses), and the
//! buffers it references are owned by that entry until the CQE arrives.

pub mod slot;
pub(crate) mod standby;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuse_proto::reply::{Errno, Reply};
use io_uring::{IoUring, opcode, squeue, types};

pub use slot::{Incoming, LayoutError, SpillLayout};

use crate::buffer::{IDLE_RELEASE, Pool};
use crate::config::{QueueConfig, QueueReport, QueueSetup};
use crate::handler::{Handler, Waker};
use crate::jobs::{
    Delivery, JobTable, KIND_JOB, OutgoingReply, QueueIo, Transport, dispatch, job_done,
    split_user_data, user_data,
};
use crate::ring_guard::{KernelMemory, Ring, RingGuard};
use slot::{HEAD_BLOCK_LEN, ReadSlot};

/// `user_data` kind of a posted device read (index: the slot).
const KIND_READ: u64 = 1;
/// `user_data` kind of the posted eventfd read of the waker.
const KIND_WAKE: u64 = 3;
/// `user_data` kind of the cancellation of a posted read.
const KIND_CANCEL: u64 = 4;

/// Fixed file index of the queue's device fd; backing files follow.
const DEVICE: types::Fixed = types::Fixed(0);

/// The most operations a queue has in flight at once, which its ring is
/// sized for: a read per slot (`reads`), one operation per job entry
/// (`max_in_flight`: a backing operation or a reply; never both), the
/// waker's eventfd read, and, once stopping, one cancellation per posted
/// read. The ring guard refuses anything beyond (see `ring_guard`).
fn in_flight_bound(config: &QueueConfig) -> usize {
    2 * config.reads + config.max_in_flight + 1
}

/// Everything of a queue the kernel may point into while its operations
/// are in flight; owned by the queue's [`RingGuard`].
struct ReadvMemory<S> {
    /// The device (fixed file 0 of the ring); closed only after the ring.
    device: OwnedFd,
    jobs: JobTable<S>,
    /// Posted reads (a boxed slice: stable addresses for their iovecs).
    slots: Box<[ReadSlot]>,
    /// Where the waker's eventfd read lands.
    wake_buf: Box<[u8; 8]>,
}

impl<S> KernelMemory for ReadvMemory<S> {
    fn drains_on_cancel(&self) -> bool {
        // Device reads and the eventfd read wait by polling (non-blocking
        // fds, or io_uring's poll on a socket), so cancellation ends them;
        // backing I/O and reply WRITEVs finish by themselves.
        true
    }

    fn reaped(&mut self, user_data: u64, _result: i32) {
        let (kind, index) = split_user_data(user_data);
        if kind == KIND_JOB {
            self.jobs.reaped_after_end(index);
        }
        // Device reads, the eventfd read and cancellations leave nothing to
        // answer; their buffers are freed with the memory.
    }

    fn ended_early(&mut self, drained: bool) {
        // Replies go straight to the device with write(2): the ring is done
        // (or broken), the fd still works. A request answered twice (a
        // reply of a broken ring that did reach the kernel after all) only
        // costs an ENOENT.
        let mut answered = 0;
        for unique in self.jobs.unanswered(!drained) {
            let reply = Reply::error(unique, Errno::EIO);
            match rustix::io::write(&self.device, reply.as_bytes()) {
                Ok(_) => answered += 1,
                Err(err) => log::debug!("EIO reply to {unique} not delivered: {err}"),
            }
        }
        if answered > 0 {
            log::warn!("answered {answered} requests of a queue that ended early with EIO");
        }
    }
}

/// The `readv` transport's half of the job table's seam: backing I/O and
/// reply `WRITEV`s go on the queue's ring.
struct WritevReplies<'r> {
    ring: &'r mut Ring,
}

impl Transport for WritevReplies<'_> {
    unsafe fn submit_backing(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.ring.push(sqe) }
    }

    unsafe fn deliver_reply(
        &mut self,
        index: usize,
        reply: OutgoingReply<'_>,
    ) -> io::Result<Delivery> {
        let iov = reply.iov;
        let [header, windows @ ..] = &mut *iov;
        *header = libc::iovec {
            iov_base: reply.header.as_ptr().cast_mut().cast(),
            iov_len: reply.header.len(),
        };
        let count = 1 + reply.data.map_or(0, |chain| chain.fill_iovecs(windows));
        let sqe = opcode::Writev::new(DEVICE, iov.as_ptr(), count as u32)
            .build()
            .user_data(user_data(KIND_JOB, index));
        // SAFETY: the iovecs point into the reply's header bytes, its chain
        // and `iov` itself, which the caller keeps valid until this job's
        // CQE (we return `InFlight`).
        unsafe { self.ring.push(&sqe) }?;
        Ok(Delivery::InFlight)
    }
}

/// Runs a queue until it is stopped or the connection ends.
///
/// Every way out of here that is not a full drain (an error returned with
/// `?`, a panic in the handler) drops the [`RingGuard`], which cancels and
/// reaps what is in flight (or leaks it) before anything is freed, and
/// answers the requests the queue had taken.
pub(crate) fn run_queue<H: Handler>(setup: QueueSetup, handler: &mut H) -> io::Result<QueueReport> {
    let QueueSetup {
        index,
        fuse_fd,
        backing,
        config,
        waker,
        stop,
        load,
    } = setup;
    #[cfg(feature = "fault-injection")]
    let faults = crate::fault::for_device(std::os::fd::AsFd::as_fd(&fuse_fd));
    let bound = in_flight_bound(&config);
    // One more than the bound: the guard's own cancellation.
    let entries = u32::try_from((bound + 1).next_power_of_two())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "queue too deep"))?;
    // No setup flags and no CPU pinning, measured (fio 4k QD1/QD32 and 1M
    // QD16, paired with the plain file, 2026-12-01): SINGLE_ISSUER +
    // DEFER_TASKRUN, COOP_TASKRUN + TASKRUN_FLAG and pinning each queue to
    // a CPU were each slower than this plain ring in most workloads (e.g.
    // 4k randwrite QD32: 0.70x, 0.78x, 0.87x against 0.97x; noisy, but no
    // variant won anywhere by more than the noise). See docs/performance.md.
    let uring = IoUring::builder()
        .setup_cqsize(entries * 2)
        .build(entries)?;
    let mut fixed = vec![fuse_fd.as_raw_fd()];
    fixed.extend_from_slice(&backing);
    uring.submitter().register_files(&fixed)?;
    #[allow(unused_mut, reason = "mutated only with fault injection")]
    let mut ring = Ring::new(uring, bound);
    #[cfg(feature = "fault-injection")]
    ring.set_faults(faults.clone());
    let backing_files = u32::try_from(backing.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many backing files"))?;
    let memory = ReadvMemory {
        device: fuse_fd,
        jobs: JobTable::new(index, config.max_in_flight, backing_files),
        slots: (0..config.reads).map(|_| ReadSlot::new()).collect(),
        wake_buf: Box::new([0u8; 8]),
    };
    let mut guard = RingGuard::new(index, ring, memory);

    let mut pool = Pool::new(config.pool_cap);
    #[cfg(feature = "fault-injection")]
    pool.set_faults(faults.clone());
    pool.prefill(HEAD_BLOCK_LEN, config.reads * 2)?;

    let mut queue = ReadvLoop {
        index,
        config,
        waker,
        stop,
        #[cfg(feature = "fault-injection")]
        faults,
        report: QueueReport {
            index,
            ..QueueReport::default()
        },
        wake_posted: false,
        stopping: false,
        disconnected: false,
        posted_reads: 0,
        load,
        spilled_since_release: false,
        releasing: false,
    };
    queue.serve(&mut guard, &mut pool, handler)?;

    let mut memory = guard.finish()?;
    for slot in memory.slots.iter_mut() {
        slot.release(&mut pool);
    }
    let mut report = queue.report;
    report.pool = pool.stats();
    report.disconnected = queue.disconnected;
    // The device closes here, after the ring let go of it.
    drop(memory);
    Ok(report)
}

/// The state of a queue's loop.
struct ReadvLoop {
    index: usize,
    config: QueueConfig,
    waker: Waker,
    stop: Arc<AtomicBool>,
    #[cfg(feature = "fault-injection")]
    faults: Option<Arc<crate::fault::Faults>>,
    report: QueueReport,
    wake_posted: bool,
    stopping: bool,
    disconnected: bool,
    posted_reads: usize,
    /// Shared with the connection's other queues: whether this one keeps
    /// reads posted (`standby`); `None`: it always does.
    load: Option<Arc<standby::QueueLoad>>,
    /// A request spilled since the last release: the tiers a slot re-armed
    /// with may be resident (the pool hands out the buffers it got back
    /// last).
    spilled_since_release: bool,
    /// Giving back idle memory: the posted reads are withdrawn, and once
    /// none is left the slots' spill-over and the pool's idle large buffers
    /// are unmapped and the reads posted again with fresh, unbacked tiers.
    releasing: bool,
}

impl ReadvLoop {
    /// Serves until the queue has drained after a stop or the end of the
    /// connection: nothing posted, no job, nothing in flight.
    fn serve<H: Handler>(
        &mut self,
        guard: &mut RingGuard<ReadvMemory<H::State>>,
        pool: &mut Pool,
        handler: &mut H,
    ) -> io::Result<()> {
        let mut reaped = [(0u64, 0i32); 64];
        loop {
            let (ring, memory) = guard.parts();
            let ending = self.stopping || self.disconnected;
            let reading = match &self.load {
                Some(load) => load.update(self.index, memory.jobs.busy()),
                None => true,
            };
            if self.releasing && self.posted_reads == 0 {
                self.releasing = false;
                if !ending {
                    self.give_back_idle_memory(memory, pool);
                }
            }
            if ending || !reading || self.releasing {
                // Standing by, ending or giving memory back: the posted
                // reads are withdrawn.
                Self::cancel_posted_reads(ring, memory)?;
            } else {
                self.post_reads(ring, memory, pool)?;
            }
            if let Some(err) = memory.jobs.take_failure() {
                return Err(err);
            }
            let drained = ending && self.posted_reads == 0 && memory.jobs.busy() == 0;
            if drained {
                if ring.in_flight() == 0 {
                    return Ok(());
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
                unsafe { ring.push(&sqe) }?;
                self.wake_posted = true;
            }

            let release_when_idle = !ending
                && !self.releasing
                && memory.jobs.busy() == 0
                && (self.spilled_since_release || pool.has_idle_above(HEAD_BLOCK_LEN));
            if release_when_idle {
                // Nothing for a whole second: what the last burst left
                // resident goes back (the next iterations withdraw the reads).
                self.releasing = !ring.submit_and_wait_for(1, IDLE_RELEASE)?;
            } else {
                ring.submit_and_wait(1)?;
            }
            let count = ring.reap(&mut reaped);
            for &(data, result) in &reaped[..count] {
                self.completed(ring, memory, pool, handler, data, result)?;
            }
            if (self.stopping || self.disconnected) && memory.jobs.any_held_by_handler() {
                // Jobs still held by the handler (waiting for locks) get a
                // chance to move on.
                let mut transport = WritevReplies { ring };
                handler.wake(&mut QueueIo::new(&mut memory.jobs, pool, &mut transport));
            }
        }
    }

    /// Unmaps the spill-over of every slot (no read is posted) and the
    /// pool's idle buffers larger than a head block: what a burst of large
    /// writes (or reads) left resident. The slots are armed again from
    /// fresh, unbacked mappings when their reads are posted next.
    fn give_back_idle_memory<S>(&mut self, memory: &mut ReadvMemory<S>, pool: &mut Pool) {
        for slot in memory.slots.iter_mut() {
            slot.release(pool);
        }
        self.spilled_since_release = false;
        let bytes = pool.release_idle_above(HEAD_BLOCK_LEN);
        if bytes > 0 {
            log::debug!(
                "queue {}: gave back {} KiB of idle buffers",
                self.index,
                bytes / 1024
            );
        }
    }

    /// Cancels every posted read that has no cancellation in flight yet.
    /// A read that completes first delivers its request as usual.
    fn cancel_posted_reads<S>(ring: &mut Ring, memory: &mut ReadvMemory<S>) -> io::Result<()> {
        for (slot_index, slot) in memory.slots.iter_mut().enumerate() {
            if !slot.posted || slot.cancelling {
                continue;
            }
            let sqe = opcode::AsyncCancel::new(user_data(KIND_READ, slot_index))
                .build()
                .user_data(user_data(KIND_CANCEL, slot_index));
            // SAFETY: a cancellation references no memory.
            unsafe { ring.push(&sqe) }?;
            slot.cancelling = true;
        }
        Ok(())
    }

    /// Keeps reads posted while every posted read can get a job when it
    /// completes.
    fn post_reads<S>(
        &mut self,
        ring: &mut Ring,
        memory: &mut ReadvMemory<S>,
        pool: &mut Pool,
    ) -> io::Result<()> {
        for (slot_index, slot) in memory.slots.iter_mut().enumerate() {
            if slot.posted || memory.jobs.free_count() <= self.posted_reads {
                continue;
            }
            let (iov, count) = slot.arm(&self.config.layout, pool)?;
            let sqe = opcode::Readv::new(DEVICE, iov, count)
                .build()
                .user_data(user_data(KIND_READ, slot_index));
            // SAFETY: the iovecs live in the slot and point at buffers the
            // slot owns; both are guarded memory, freed only once this
            // read's CQE is reaped (or leaked).
            unsafe { ring.push(&sqe) }?;
            slot.posted = true;
            self.posted_reads += 1;
        }
        Ok(())
    }

    fn completed<H: Handler>(
        &mut self,
        ring: &mut Ring,
        memory: &mut ReadvMemory<H::State>,
        pool: &mut Pool,
        handler: &mut H,
        data: u64,
        result: i32,
    ) -> io::Result<()> {
        let queue = self.index;
        let (kind, index) = split_user_data(data);
        match kind {
            KIND_READ => {
                #[cfg(feature = "fault-injection")]
                let result = self
                    .faults
                    .as_ref()
                    .map_or(result, |f| f.device_read_result(result));
                let Some(slot) = memory.slots.get_mut(index) else {
                    log::error!(
                        "queue {queue}: completion for read slot {index}, which does not exist"
                    );
                    return Ok(());
                };
                slot.posted = false;
                self.posted_reads -= 1;
                slot.cancelling = false;
                if result > 0 {
                    let Some(incoming) = slot.take(result as usize, &self.config.layout) else {
                        log::error!("queue {queue}: read slot {index} lost its buffers");
                        return Ok(());
                    };
                    self.report.requests += 1;
                    if incoming.spill_tiers() > 0 {
                        self.report.spilled += 1;
                        self.spilled_since_release = true;
                    }
                    let mut transport = WritevReplies { ring };
                    let mut io = QueueIo::new(&mut memory.jobs, pool, &mut transport);
                    dispatch(&mut io, handler, incoming);
                    return Ok(());
                }
                match -result {
                    libc::ENODEV => {
                        if !self.disconnected {
                            log::info!("queue {queue}: connection ended (unmounted)");
                        }
                        self.disconnected = true;
                    }
                    libc::ECONNABORTED => {
                        if !self.disconnected {
                            log::warn!("queue {queue}: connection aborted");
                        }
                        self.disconnected = true;
                    }
                    libc::ECANCELED => {}
                    libc::EINTR | libc::EAGAIN | libc::ENOENT => {}
                    // /dev/fuse never returns 0; a fake device's peer
                    // closing does, and means the same as an unmount.
                    0 => self.disconnected = true,
                    errno => return Err(io::Error::from_raw_os_error(errno)),
                }
            }
            KIND_JOB => {
                let mut transport = WritevReplies { ring };
                let mut io = QueueIo::new(&mut memory.jobs, pool, &mut transport);
                job_done(&mut io, handler, index, result);
            }
            KIND_WAKE => {
                self.wake_posted = false;
                if self.stop.load(Ordering::Acquire) {
                    // The loop withdraws the posted reads.
                    self.stopping = true;
                }
                let mut transport = WritevReplies { ring };
                handler.wake(&mut QueueIo::new(&mut memory.jobs, pool, &mut transport));
            }
            KIND_CANCEL => {}
            _ => log::error!("queue {queue}: unexpected completion {data:#x}"),
        }
        Ok(())
    }
}
