//! The job table every transport shares: one entry per request in flight,
//! [`QueueIo`] (what a handler uses to submit backing I/O and to reply), and
//! the SQEs built for backing operations.
//!
//! A request moves through its entry's phases:
//!
//! ```text
//!  Free ─alloc─▶ Handler ─submit─▶ Backing ─CQE─▶ Handler ─reply─▶ Replying ─CQE─▶ Free
//!                   │                                  └─finish────────────────────▶ Free
//! ```
//!
//! While an entry is `Backing` or `Replying`, an SQE in flight points into
//! it (its iovecs, its reply bytes, its chain's buffers). Entries live in a
//! boxed slice allocated once per queue, so their addresses never change;
//! the table itself lives in the transport's [`KernelMemory`], which the
//! ring guard frees only once no SQE can point into it any more.
//!
//! How a reply reaches the kernel is the transport's business
//! ([`Transport::deliver_reply`]): the table encodes it once (header in the
//! entry, data in the chain) and the transport sends it its way.
//!
//! [`KernelMemory`]: crate::ring_guard::KernelMemory

use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use fuse_proto::reply::{Errno, Reply};
use io_uring::{opcode, squeue, types};

use crate::buffer::{Chain, MAX_SEGMENTS, Pool};
use crate::handler::{BackingFile, BackingOp, Completion, Handler, Job};
use crate::readv::Incoming;

/// Bits of `user_data` above this carry the kind of operation; below, an index.
pub(crate) const KIND_SHIFT: u32 = 56;
/// `user_data` kind of a job's backing operation or reply.
pub(crate) const KIND_JOB: u64 = 2;

/// Tags an SQE with its kind and an index (job, slot).
pub(crate) fn user_data(kind: u64, index: usize) -> u64 {
    kind << KIND_SHIFT | index as u64
}

/// Splits a CQE's `user_data` into kind and index.
pub(crate) fn split_user_data(data: u64) -> (u64, usize) {
    (
        data >> KIND_SHIFT,
        (data & ((1 << KIND_SHIFT) - 1)) as usize,
    )
}

/// Identifies one queue for the life of the process, so that a [`Job`] can
/// only be used on the queue that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueId(u64);

impl QueueId {
    fn unique() -> QueueId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        QueueId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    /// Held by the handler (e.g. waiting for a lock, or its backing I/O done).
    Handler,
    /// A backing operation is in flight.
    Backing,
    /// The reply is in flight.
    Replying,
}

struct JobEntry<S> {
    phase: Phase,
    unique: u64,
    state: Option<S>,
    chain: Option<Chain>,
    reply: Option<Reply>,
    /// The result a refused backing operation reports (it was replaced by a
    /// NOP, so the CQE's own result means nothing).
    refused: Option<i32>,
    /// `iov[0]`: a reply's header; `iov[1..]`: the chain's windows.
    iov: [libc::iovec; MAX_SEGMENTS + 1],
}

impl<S> JobEntry<S> {
    fn new() -> JobEntry<S> {
        JobEntry {
            phase: Phase::Free,
            unique: 0,
            state: None,
            chain: None,
            reply: None,
            refused: None,
            iov: [libc::iovec {
                iov_base: core::ptr::null_mut(),
                iov_len: 0,
            }; MAX_SEGMENTS + 1],
        }
    }
}

/// Every request a queue has taken and not finished.
pub(crate) struct JobTable<S> {
    queue: QueueId,
    index: usize,
    entries: Box<[JobEntry<S>]>,
    free: Vec<u32>,
    /// Backing files registered after the device (fixed files 1..=n).
    backing_files: u32,
    /// Why the queue must end (a submission failed).
    failure: Option<io::Error>,
}

impl<S> JobTable<S> {
    /// A table of `capacity` entries for queue `index`, whose ring has
    /// `backing_files` backing files registered after the device.
    pub(crate) fn new(index: usize, capacity: usize, backing_files: u32) -> JobTable<S> {
        JobTable {
            queue: QueueId::unique(),
            index,
            entries: (0..capacity).map(|_| JobEntry::new()).collect(),
            free: (0..capacity as u32).rev().collect(),
            backing_files,
            failure: None,
        }
    }

    /// Entries free for new requests.
    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Entries in use.
    pub(crate) fn busy(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Whether the handler holds some job (not waiting for the kernel).
    pub(crate) fn any_held_by_handler(&self) -> bool {
        self.entries.iter().any(|e| e.phase == Phase::Handler)
    }

    /// Why the queue must end, if a submission failed.
    pub(crate) fn take_failure(&mut self) -> Option<io::Error> {
        self.failure.take()
    }

    fn fail(&mut self, err: io::Error) {
        self.failure.get_or_insert(err);
    }

    fn job(&self, index: usize) -> Job {
        Job {
            index: index as u32,
            unique: self.entries[index].unique,
            queue: self.queue,
            not_send: PhantomData,
        }
    }

    fn alloc(&mut self, unique: u64) -> Option<Job> {
        let index = self.free.pop()? as usize;
        let entry = &mut self.entries[index];
        entry.phase = Phase::Handler;
        entry.unique = unique;
        Some(self.job(index))
    }

    /// The entry of a job coming back from the handler, if it is one this
    /// table issued and holds in the handler's phase. A job of another
    /// queue (or a stale one) is refused: it must not touch this table.
    fn claim(&mut self, job: Job) -> Option<usize> {
        let index = job.index as usize;
        let valid = job.queue == self.queue
            && self
                .entries
                .get(index)
                .is_some_and(|e| e.phase == Phase::Handler && e.unique == job.unique);
        if !valid {
            log::error!(
                "queue {}: refused job {} of request {}: not issued by this queue or no longer held",
                self.index,
                job.index,
                job.unique
            );
            return None;
        }
        Some(index)
    }

    fn release(&mut self, index: usize, pool: &mut Pool) {
        let entry = &mut self.entries[index];
        if let Some(chain) = entry.chain.take() {
            pool.give_chain(chain);
        }
        entry.reply = None;
        entry.state = None;
        entry.refused = None;
        entry.phase = Phase::Free;
        self.free.push(index as u32);
    }

    /// After an early end, while the ring guard drains: the CQE of job
    /// `index` arrived. A reply is then delivered (or refused by the
    /// kernel, which fails the request itself); a backing operation is
    /// over, its request still unanswered.
    pub(crate) fn reaped_after_end(&mut self, index: usize) {
        if let Some(entry) = self.entries.get_mut(index) {
            entry.phase = match entry.phase {
                Phase::Replying => Phase::Free,
                Phase::Backing => Phase::Handler,
                other => other,
            };
        }
    }

    /// After an early end: the requests that are not answered, as
    /// `unique`s. `with_replies_in_flight`: also those whose reply was
    /// pushed but may never have reached the kernel (the ring failed).
    pub(crate) fn unanswered(&self, with_replies_in_flight: bool) -> impl Iterator<Item = u64> {
        self.entries
            .iter()
            .filter(move |e| match e.phase {
                Phase::Free => false,
                Phase::Handler | Phase::Backing => true,
                Phase::Replying => with_replies_in_flight,
            })
            .map(|e| e.unique)
    }
}

impl<S> JobTable<S> {
    /// The reply job `index` is sending, for a transport that delivers it
    /// later than [`Transport::deliver_reply`] (it returned
    /// [`Delivery::InFlight`] and will end the job with a CQE of its own).
    pub(crate) fn outgoing(&mut self, index: usize) -> Option<OutgoingReply<'_>> {
        let entry = self.entries.get_mut(index)?;
        if entry.phase != Phase::Replying {
            return None;
        }
        Some(OutgoingReply {
            header: entry.reply.as_ref()?.as_bytes(),
            data: entry.chain.as_mut(),
            iov: &mut entry.iov,
        })
    }
}

/// A reply encoded in a job entry, for the transport to send.
pub(crate) struct OutgoingReply<'e> {
    /// The header and inline argument (error, struct, data header).
    pub(crate) header: &'e [u8],
    /// The data that follows (READ), if any.
    pub(crate) data: Option<&'e mut Chain>,
    /// Room for the iovecs of one SQE sending both: `[header, data windows...]`.
    pub(crate) iov: &'e mut [libc::iovec; MAX_SEGMENTS + 1],
}

/// What became of a reply handed to the transport.
pub(crate) enum Delivery {
    /// An SQE tagged `user_data(KIND_JOB, index)` points into the reply; its
    /// CQE ends the job.
    InFlight,
    /// The reply was copied out of the entry; the job ends now.
    Done,
}

/// How a transport moves what the job table prepared to the kernel: the
/// seam between the shared job table and the transport's own ring.
pub(crate) trait Transport {
    /// Queues the SQE of a job's backing operation (already tagged).
    ///
    /// # Safety
    /// Any memory the SQE references must stay valid until its CQE.
    unsafe fn submit_backing(&mut self, sqe: &squeue::Entry) -> io::Result<()>;

    /// Hands the reply of job `index` to the kernel (`readv`: a `WRITEV` on
    /// the device; FUSE-over-io_uring: copy into the request's ring entry
    /// and commit).
    ///
    /// # Safety
    /// If this returns [`Delivery::InFlight`], the memory `reply` refers to
    /// must stay valid and unmoved until the CQE tagged for job `index`.
    unsafe fn deliver_reply(
        &mut self,
        index: usize,
        reply: OutgoingReply<'_>,
    ) -> io::Result<Delivery>;
}

/// The queue's side of the handler interface: submit backing I/O, reply,
/// take buffers.
pub struct QueueIo<'q, S> {
    jobs: &'q mut JobTable<S>,
    pool: &'q mut Pool,
    transport: &'q mut dyn Transport,
}

impl<S> std::fmt::Debug for QueueIo<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueIo")
            .field("index", &self.jobs.index)
            .finish()
    }
}

impl<'q, S> QueueIo<'q, S> {
    pub(crate) fn new(
        jobs: &'q mut JobTable<S>,
        pool: &'q mut Pool,
        transport: &'q mut dyn Transport,
    ) -> QueueIo<'q, S> {
        QueueIo {
            jobs,
            pool,
            transport,
        }
    }
}

impl<S> QueueIo<'_, S> {
    /// This queue's index.
    pub fn queue_index(&self) -> usize {
        self.jobs.index
    }

    /// The queue's buffer pool (for read destinations and bounce buffers).
    pub fn pool(&mut self) -> &mut Pool {
        self.pool
    }

    /// Submits backing I/O for `job`; [`Handler::complete`] gets the result,
    /// the chain and `state` back. A file that is not registered completes
    /// with `-EBADF`.
    pub fn submit(&mut self, job: Job, op: BackingOp, mut chain: Chain, state: S) {
        let Some(index) = self.jobs.claim(job) else {
            self.pool.give_chain(chain);
            return;
        };
        let backing_files = self.jobs.backing_files;
        let entry = &mut self.jobs.entries[index];
        let [_, windows @ ..] = &mut entry.iov;
        let count = chain.fill_iovecs(windows) as u32;
        let sqe = match backing_sqe(op, windows.as_ptr(), count, backing_files) {
            Some(sqe) => sqe,
            None => {
                log::error!(
                    "queue {}: backing file of {op:?} is not registered",
                    self.jobs.index
                );
                entry.refused = Some(-libc::EBADF);
                opcode::Nop::new().build()
            }
        };
        entry.phase = Phase::Backing;
        entry.chain = Some(chain);
        entry.state = Some(state);
        let sqe = sqe.user_data(user_data(KIND_JOB, index));
        // SAFETY: the iovecs point into `entry.iov` and the chain's buffers,
        // both owned by the job entry (a boxed slice that never moves) until
        // the CQE for this user_data is reaped (`job_done`, or the ring
        // guard after an early end, which frees the table only after that).
        if let Err(err) = unsafe { self.transport.submit_backing(&sqe) } {
            // Nothing is in flight for it: the request is unanswered, and the
            // queue ends (answering it on its way out).
            self.jobs.entries[index].phase = Phase::Handler;
            self.jobs.fail(err);
        }
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
        if let Some(index) = self.jobs.claim(job) {
            self.jobs.release(index, self.pool);
        }
    }

    /// Ends `job`, returning its chain to the pool, without a reply.
    pub fn finish_with(&mut self, job: Job, chain: Chain) {
        self.pool.give_chain(chain);
        self.finish(job);
    }

    fn send(&mut self, job: Job, reply: Reply, chain: Option<Chain>) {
        let Some(index) = self.jobs.claim(job) else {
            if let Some(chain) = chain {
                self.pool.give_chain(chain);
            }
            return;
        };
        let entry = &mut self.jobs.entries[index];
        entry.phase = Phase::Replying;
        entry.chain = chain;
        let outgoing = OutgoingReply {
            header: entry.reply.insert(reply).as_bytes(),
            data: entry.chain.as_mut(),
            iov: &mut entry.iov,
        };
        // SAFETY: the reply, its chain and the iovecs stay in the job entry
        // (stable address) until the CQE of this job is reaped: `job_done`
        // releases the entry only then, and the ring guard frees the table
        // only once nothing is in flight.
        match unsafe { self.transport.deliver_reply(index, outgoing) } {
            Ok(Delivery::InFlight) => {}
            Ok(Delivery::Done) => self.jobs.release(index, self.pool),
            Err(err) => {
                // Nothing is in flight for it: the request is unanswered,
                // and the queue ends (answering it on its way out).
                self.jobs.entries[index].phase = Phase::Handler;
                self.jobs.fail(err);
            }
        }
    }
}

/// The SQE of a backing operation over the iovecs `iov[..count]`, or `None`
/// if its file is not one of the `backing_files` registered ones.
fn backing_sqe(
    op: BackingOp,
    iov: *const libc::iovec,
    count: u32,
    backing_files: u32,
) -> Option<squeue::Entry> {
    // Backing file n is fixed file n + 1 (0 is the device); n < backing_files
    // <= u32::MAX, so n + 1 cannot overflow.
    let fixed = |file: BackingFile| (file.0 < backing_files).then(|| types::Fixed(file.0 + 1));
    let sqe = match op {
        BackingOp::Read { file, offset } => opcode::Readv::new(fixed(file)?, iov, count)
            .offset(offset)
            .build(),
        BackingOp::Write {
            file,
            offset,
            rw_flags,
        } => opcode::Writev::new(fixed(file)?, iov, count)
            .offset(offset)
            .rw_flags(rw_flags.bits() as i32)
            .build(),
        BackingOp::Fsync { file, datasync } => {
            let flags = if datasync {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            opcode::Fsync::new(fixed(file)?).flags(flags).build()
        }
        BackingOp::Fallocate {
            file,
            offset,
            len,
            mode,
        } => opcode::Fallocate::new(fixed(file)?, len)
            .offset(offset)
            .mode(mode)
            .build(),
    };
    Some(sqe)
}

/// Hands a request that arrived to the handler (or answers it if it is
/// malformed).
pub(crate) fn dispatch<H: Handler>(
    io: &mut QueueIo<'_, H::State>,
    handler: &mut H,
    incoming: Incoming,
) {
    let index = io.jobs.index;
    let unique = match incoming.request() {
        Ok(request) => request.header.unique,
        Err(err) => {
            // Answer if the header is intact enough to name the request.
            let head = incoming.head_bytes();
            let unique = head
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes);
            log::warn!("queue {index}: malformed request ({err}); unique {unique:?}");
            io.pool.give_chain(incoming.into_buffers());
            if let Some(job) = unique.filter(|&u| u != 0).and_then(|u| io.jobs.alloc(u)) {
                io.reply_error(job, Errno::EIO);
            }
            return;
        }
    };
    let Some(job) = io.jobs.alloc(unique) else {
        // Cannot happen: reads are only posted while jobs are available.
        log::error!("queue {index}: no job entry for request {unique}");
        io.pool.give_chain(incoming.into_buffers());
        return;
    };
    handler.request(job, incoming, io);
}

/// The CQE of job `index` arrived: a backing operation finished (the
/// handler continues) or a reply was written (the job ends).
pub(crate) fn job_done<H: Handler>(
    io: &mut QueueIo<'_, H::State>,
    handler: &mut H,
    index: usize,
    result: i32,
) {
    let queue = io.jobs.index;
    let Some(entry) = io.jobs.entries.get_mut(index) else {
        log::error!("queue {queue}: completion for job {index}, which does not exist");
        return;
    };
    match entry.phase {
        Phase::Backing => {
            let result = entry.refused.take().unwrap_or(result);
            let chain = entry.chain.take().unwrap_or_default();
            entry.phase = Phase::Handler;
            let Some(state) = entry.state.take() else {
                // Cannot happen: `submit` stores the state with the SQE.
                log::error!("queue {queue}: backing completion without state");
                io.jobs.release(index, io.pool);
                return;
            };
            let job = io.jobs.job(index);
            handler.complete(
                job,
                Completion {
                    result,
                    chain,
                    state,
                },
                io,
            );
        }
        Phase::Replying => {
            if result < 0 {
                match -result {
                    // The request was interrupted or the connection went away.
                    libc::ENOENT | libc::ENODEV | libc::ECONNABORTED => log::debug!(
                        "queue {queue}: reply to {} not delivered: errno {}",
                        entry.unique,
                        -result
                    ),
                    errno => log::error!(
                        "queue {queue}: kernel rejected reply to {}: {}",
                        entry.unique,
                        io::Error::from_raw_os_error(errno)
                    ),
                }
            }
            io.jobs.release(index, io.pool);
        }
        Phase::Free | Phase::Handler => {
            log::error!("queue {queue}: completion for idle job {index}");
        }
    }
}
