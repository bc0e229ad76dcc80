//! The job table every transport shares: one entry per request in flight,
//! [`QueueIo`] (what a handler uses to submit backing I/O and to reply), and
//! the SQEs built for backing operations.
//!
//! Every SQE that points at memory points into a job entry that lives in a
//! boxed slice allocated once per queue (stable addresses), and the buffers
//! it references are owned by that entry until the CQE arrives.

use std::io;

use fuse_proto::reply::{Errno, Reply};
use io_uring::{IoUring, opcode, squeue, types};

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

/// Fixed file index of the queue's `/dev/fuse` fd; backing files follow.
pub(crate) const FUSE_FIXED: types::Fixed = types::Fixed(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Free,
    /// Held by the handler (e.g. waiting for a lock).
    Handler,
    Backing,
    Replying,
}

pub(crate) struct JobEntry<S> {
    pub(crate) phase: Phase,
    pub(crate) unique: u64,
    pub(crate) state: Option<S>,
    pub(crate) chain: Option<Chain>,
    pub(crate) reply: Option<Reply>,
    pub(crate) iov: [libc::iovec; MAX_SEGMENTS + 1],
}

/// The queue's side of the handler interface: submit backing I/O, reply,
/// take buffers.
pub struct QueueIo<'q, S> {
    pub(crate) core: &'q mut Core<S>,
}

impl<S> std::fmt::Debug for QueueIo<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueIo")
            .field("index", &self.core.index)
            .finish()
    }
}

pub(crate) struct Core<S> {
    pub(crate) index: usize,
    pub(crate) ring: IoUring,
    pub(crate) jobs: Box<[JobEntry<S>]>,
    pub(crate) free_jobs: Vec<u32>,
    pub(crate) pool: Pool,
    pub(crate) error: Option<io::Error>,
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
    pub(crate) unsafe fn push(&mut self, sqe: &squeue::Entry) {
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

    pub(crate) fn busy_jobs(&self) -> usize {
        self.jobs.len() - self.free_jobs.len()
    }
}

pub(crate) fn dispatch<H: Handler>(core: &mut Core<H::State>, handler: &mut H, incoming: Incoming) {
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

pub(crate) fn job_done<H: Handler>(
    core: &mut Core<H::State>,
    handler: &mut H,
    index: u32,
    result: i32,
) {
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
