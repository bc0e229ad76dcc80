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

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use io_uring::{IoUring, opcode, types};

pub use slot::{Incoming, LayoutError, SpillLayout};

use crate::buffer::{MAX_SEGMENTS, Pool};
use crate::config::{QueueReport, QueueSetup};
use crate::handler::Handler;
use crate::jobs::{
    Core, FUSE_FIXED, JobEntry, KIND_JOB, Phase, QueueIo, dispatch, job_done, split_user_data,
    user_data,
};
use crate::ring_guard::abandon;
use slot::{HEAD_BLOCK_LEN, ReadSlot};

/// `user_data` kind of a posted device read (index: the slot).
const KIND_READ: u64 = 1;
/// `user_data` kind of the posted eventfd read of the waker.
const KIND_WAKE: u64 = 3;
/// `user_data` kind of the cancellation of a posted read.
const KIND_CANCEL: u64 = 4;

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
    pool.prefill(HEAD_BLOCK_LEN, config.reads * 2)?;
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
                types::Fd(waker.eventfd().as_raw_fd()),
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
            let (kind, index) = split_user_data(data);
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
