//! The ring protocol on one queue's `SQE128` io_uring: REGISTER and
//! COMMIT_AND_FETCH of [`RingEntries`], and what their completions mean.
//!
//! The queue's `/dev/fuse` fd is the ring's fixed file 0. A completion with
//! result 0 of an entry's command means a request now sits in that entry
//! ([`RingEntries::delivered`] shows it); the reply is stored in the entry
//! and handed back with COMMIT_AND_FETCH, which also waits for the entry's
//! next request. The same ring carries the queue's other I/O (backing I/O,
//! wake-ups) with user data of other kinds.
//!
//! The ring is created with `SINGLE_ISSUER | DEFER_TASKRUN`: it must be
//! created and driven by one thread, and the kernel writes requests into
//! entries only while that thread waits for completions. That is what makes
//! [`RingEntries`]' idle release safe.
//!
//! [`RingQueue`] bundles a ring with its entries behind a safe interface,
//! for probing the kernel (the conformance tests); the serving loop
//! (`uring::queue`) uses the same operations on the ring its guard owns.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use fuse_proto::abi::InHeader;
use io_uring::{IoUring, cqueue, squeue, types};

use super::cmd;
use super::entries::{EntryBusy, RingEntries};
use crate::jobs::{split_user_data, user_data};
use crate::ring_guard::Ring;

/// A queue's ring: `SQE128` entries, counted by the ring guard.
pub(crate) type EntryRing = Ring<squeue::Entry128>;

/// Fixed file index of the queue's `/dev/fuse` fd; other files follow.
pub const DEVICE: types::Fixed = types::Fixed(0);

/// The user-data kind of entry commands (REGISTER, COMMIT_AND_FETCH); the
/// low bits are the entry index.
pub(crate) const KIND_ENTRY: u64 = 0x10;

/// A completion, sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingEvent {
    /// A request was delivered into the entry.
    Delivered(usize),
    /// The entry's command ended without a request: the kernel refused it
    /// or the connection ended (`errno` is positive: `ENOTCONN` after an
    /// unmount or abort, `ECONNABORTED` for a command after an abort,
    /// `EAGAIN` before INIT, `ENOENT` for an unknown commit id ...).
    Ended {
        /// The entry.
        entry: usize,
        /// Why (a positive errno).
        errno: i32,
    },
    /// A completion of something else on the ring.
    Other {
        /// Its user data.
        user_data: u64,
        /// Its result.
        result: i32,
    },
}

/// A request as delivered into an entry: the parts the kernel wrote.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    /// `fuse_in_header` (its `len` counts every argument).
    pub header: InHeader,
    /// The first argument (the opcode's struct; empty for opcodes whose
    /// first argument is empty, such as LOOKUP).
    pub op: &'a [u8],
    /// The remaining arguments (WRITE data, names, values).
    pub payload: &'a [u8],
    /// The id the reply must be committed with (the request's `unique`).
    pub commit_id: u64,
}

/// Why a ring operation could not be done.
#[derive(Debug)]
pub enum RingError {
    /// The entry is not in a state that allows it.
    Busy(EntryBusy),
    /// The entry holds no delivered request.
    NothingDelivered,
    /// The reply does not fit the entry.
    ReplyTooLarge {
        /// Payload bytes of the reply.
        payload: usize,
        /// What the entry holds.
        capacity: usize,
    },
    /// The reply is shorter than its out header.
    ReplyTooShort(usize),
    /// Submitting to the ring failed.
    Io(io::Error),
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingError::Busy(busy) => busy.fmt(f),
            RingError::NothingDelivered => f.write_str("the entry holds no request"),
            RingError::ReplyTooLarge { payload, capacity } => write!(
                f,
                "a {payload}-byte reply payload does not fit the {capacity}-byte entry"
            ),
            RingError::ReplyTooShort(len) => {
                write!(f, "a {len}-byte reply has no complete out header")
            }
            RingError::Io(err) => write!(f, "io_uring: {err}"),
        }
    }
}

impl std::error::Error for RingError {}

impl From<EntryBusy> for RingError {
    fn from(busy: EntryBusy) -> RingError {
        RingError::Busy(busy)
    }
}

impl From<RingError> for io::Error {
    fn from(err: RingError) -> io::Error {
        match err {
            RingError::Io(err) => err,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// How a ring queue is built.
#[derive(Debug, Clone)]
pub struct RingSetup {
    /// The kernel's queue id (one queue per possible CPU).
    pub qid: u16,
    /// Entries (queue depth).
    pub depth: usize,
    /// Bytes of each payload buffer: at least the ring's `max_payload_sz`,
    /// `max(8192, max_write, max_pages * 4096)`.
    pub payload_len: usize,
    /// Operations in flight beyond one command per entry (other I/O).
    pub extra_sqes: u32,
}

/// Creates a queue's `SQE128` ring on the calling thread (which must be the
/// only one to drive it), with `device` as fixed file 0 and `extra_files`
/// after it, for up to `capacity` operations in flight.
pub(crate) fn build_ring(
    device: BorrowedFd<'_>,
    extra_files: &[RawFd],
    capacity: usize,
) -> io::Result<EntryRing> {
    // One more than the capacity: the ring guard's own cancellation.
    let sq = u32::try_from((capacity + 1).next_power_of_two())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ring queue too deep"))?;
    let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_cqsize(sq * 2)
        .setup_single_issuer()
        .setup_defer_taskrun()
        // Shows pending deferred work in the SQ flags, so a queue can poll
        // for it without entering the kernel (`Ring::poll_for_work`).
        .setup_taskrun_flag()
        .build(sq)?;
    let mut files = vec![device.as_raw_fd()];
    files.extend_from_slice(extra_files);
    ring.submitter().register_files(&files)?;
    Ok(Ring::new(ring, capacity))
}

/// Queues a REGISTER of entry `index` for queue `qid`.
pub(crate) fn push_register(
    ring: &mut EntryRing,
    entries: &mut RingEntries,
    qid: u16,
    index: usize,
) -> Result<(), RingError> {
    let iovecs = entries.hand_to_kernel(index)?;
    entries.forget_request(index);
    // SAFETY: `iovecs` and the buffers they describe live in the entries'
    // shared memory, which is never unmapped while an entry is marked as in
    // the kernel (it was just marked); the mark is cleared only when this
    // command's completion is sorted by `sort_completion`.
    let sqe = unsafe { cmd::register(DEVICE, iovecs, qid) };
    push_entry_command(
        ring,
        entries,
        index,
        sqe.user_data(user_data(KIND_ENTRY, index)),
    )
}

/// Queues COMMIT_AND_FETCH of entry `index` for queue `qid` for the request
/// it holds: the kernel takes the reply stored in the entry and the entry
/// waits for its next request.
pub(crate) fn push_commit(
    ring: &mut EntryRing,
    entries: &mut RingEntries,
    qid: u16,
    index: usize,
) -> Result<(), RingError> {
    let commit_id = entries.commit_id(index);
    if commit_id == 0 {
        return Err(RingError::NothingDelivered);
    }
    // SAFETY: the id is the one the kernel delivered into this entry, so
    // the kernel commits this entry.
    unsafe { push_commit_with_id(ring, entries, qid, index, commit_id) }?;
    // Answered: the entry holds no request any more (if the kernel refuses
    // the commit, the request is gone on its side too).
    entries.forget_request(index);
    Ok(())
}

/// COMMIT_AND_FETCH through entry `index` naming `commit_id`.
///
/// # Safety
/// `commit_id` must not be the id of a request delivered to any other entry
/// of queue `qid` on this connection: the kernel finds the entry to commit
/// by the request, and would hand that entry's buffers to the next request
/// while this process believes it owns them.
pub(crate) unsafe fn push_commit_with_id(
    ring: &mut EntryRing,
    entries: &mut RingEntries,
    qid: u16,
    index: usize,
    commit_id: u64,
) -> Result<(), RingError> {
    let _ = entries.hand_to_kernel(index)?;
    // SAFETY: the entry's buffers were registered and live in the entries'
    // shared memory, never unmapped while the entry is marked as in the
    // kernel (just marked, cleared when this command's completion is
    // sorted); the caller guarantees that a request the kernel finds for
    // the id sits in this entry.
    let sqe = unsafe { cmd::commit_and_fetch(DEVICE, qid, commit_id) };
    push_entry_command(
        ring,
        entries,
        index,
        sqe.user_data(user_data(KIND_ENTRY, index)),
    )
}

fn push_entry_command(
    ring: &mut EntryRing,
    entries: &mut RingEntries,
    index: usize,
    sqe: squeue::Entry128,
) -> Result<(), RingError> {
    // SAFETY: the memory the command references is the entries' (see the
    // callers), kept mapped while the entry is marked as in the kernel.
    match unsafe { ring.push(&sqe) } {
        Ok(()) => Ok(()),
        Err(err) => {
            // Nothing was queued: the entry is ours again.
            entries.returned_from_kernel(index, false);
            Err(RingError::Io(err))
        }
    }
}

/// Sorts a completion reaped from the ring, updating the entries.
pub(crate) fn sort_completion(entries: &mut RingEntries, user_data: u64, result: i32) -> RingEvent {
    let (kind, index) = split_user_data(user_data);
    if kind != KIND_ENTRY || index >= entries.depth() {
        return RingEvent::Other { user_data, result };
    }
    let delivered = result == 0;
    entries.returned_from_kernel(index, delivered);
    if delivered {
        RingEvent::Delivered(index)
    } else {
        RingEvent::Ended {
            entry: index,
            errno: -result,
        }
    }
}

/// One ring queue with its entries, as a safe interface for probing the
/// kernel's ring protocol. Dropping it closes the ring; entries the kernel
/// may still write into are never freed (see [`RingEntries`]).
pub struct RingQueue {
    ring: EntryRing,
    entries: RingEntries,
    qid: u16,
}

impl std::fmt::Debug for RingQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingQueue")
            .field("qid", &self.qid)
            .field("entries", &self.entries)
            .finish()
    }
}

impl RingQueue {
    /// Creates the ring on the calling thread (which must be the only one to
    /// drive it) with `device` as fixed file 0 and `extra_files` after it.
    pub fn new(
        device: BorrowedFd<'_>,
        extra_files: &[RawFd],
        setup: &RingSetup,
    ) -> io::Result<RingQueue> {
        let entries = RingEntries::new(setup.depth, setup.payload_len)?;
        let ring = build_ring(device, extra_files, setup.depth + setup.extra_sqes as usize)?;
        Ok(RingQueue {
            ring,
            entries,
            qid: setup.qid,
        })
    }

    /// The kernel's queue id.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// The entries.
    pub fn entries(&self) -> &RingEntries {
        &self.entries
    }

    /// The entries, mutably (to store replies, lend payloads).
    pub fn entries_mut(&mut self) -> &mut RingEntries {
        &mut self.entries
    }

    /// Queues a REGISTER of entry `index` (submitted with the next
    /// [`Self::submit`] or [`Self::wait`]).
    pub fn register(&mut self, index: usize) -> Result<(), RingError> {
        push_register(&mut self.ring, &mut self.entries, self.qid, index)
    }

    /// The request entry `index` holds.
    pub fn delivered(&self, index: usize) -> Result<Delivered<'_>, RingError> {
        self.entries.delivered(index)
    }

    /// The `commit_id` of the request entry `index` holds (0 if none).
    pub fn commit_id(&self, index: usize) -> u64 {
        self.entries.commit_id(index)
    }

    /// Stores a reply in entry `index` (see [`RingEntries::write_reply`]).
    pub fn write_reply(&mut self, index: usize, reply: &[u8]) -> Result<(), RingError> {
        self.entries.write_reply(index, reply)
    }

    /// Stores a reply from pieces (see [`RingEntries::write_reply_parts`]).
    pub fn write_reply_parts(
        &mut self,
        index: usize,
        out_header: &[u8],
        args: &[&[u8]],
    ) -> Result<(), RingError> {
        self.entries.write_reply_parts(index, out_header, args)
    }

    /// Queues COMMIT_AND_FETCH of entry `index` for the request it holds.
    pub fn commit(&mut self, index: usize) -> Result<(), RingError> {
        push_commit(&mut self.ring, &mut self.entries, self.qid, index)
    }

    /// Queues COMMIT_AND_FETCH through entry `index` naming `commit_id`,
    /// whatever request the entry holds. The kernel finds the entry to
    /// commit by the request with that id, not by the SQE; an id it does not
    /// know fails with `ENOENT` and leaves every entry as it was.
    ///
    /// # Safety
    /// `commit_id` must not be the id of a request delivered to any other
    /// entry of queue `qid` on this connection (through this or another
    /// `RingQueue`): the kernel would then hand *that* entry's buffers to the
    /// next request while this process believes it owns them.
    pub unsafe fn commit_with_id(&mut self, index: usize, commit_id: u64) -> Result<(), RingError> {
        // SAFETY: forwarded from the caller.
        unsafe {
            push_commit_with_id(
                &mut self.ring,
                &mut self.entries,
                self.qid,
                index,
                commit_id,
            )
        }
    }

    /// Submits what is queued without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.ring.submit()
    }

    /// Submits what is queued and waits up to `timeout` for a completion;
    /// returns false on timeout. The ring defers the kernel's completion
    /// work to this wait (`DEFER_TASKRUN`): deliveries into entries are
    /// posted only while this thread waits here.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        self.ring.submit_and_wait_for(1, timeout)
    }

    /// Reaps every completion now in the completion queue, updating the
    /// entries, and passes each one on.
    pub fn reap(&mut self, mut each: impl FnMut(RingEvent)) {
        let mut reaped = [(0u64, 0i32); 32];
        loop {
            let count = self.ring.reap(&mut reaped);
            for &(user_data, result) in &reaped[..count] {
                each(sort_completion(&mut self.entries, user_data, result));
            }
            if count < reaped.len() {
                break;
            }
        }
    }

    /// Gives the resident pages of idle entries back (see
    /// [`RingEntries`]); does nothing while completions wait to be reaped
    /// or commands to be submitted.
    /// Returns how many entries were released.
    pub fn release_idle(&mut self) -> usize {
        if self.ring.has_completions() || self.ring.has_unsubmitted() {
            // A delivery may be among the completions, or a commit whose
            // reply the kernel has not read yet among the unsubmitted.
            return 0;
        }
        // SAFETY: the ring is DEFER_TASKRUN and SINGLE_ISSUER (see
        // `build_ring`), so the kernel delivers into entries only inside this
        // thread's waits, which cannot run during this call (`&mut self`).
        // Every completion of earlier waits has been reaped and every
        // command submitted (checked above; a commit's reply is read while
        // it is submitted), so an entry marked as in the kernel has neither a
        // delivery posted nor a reply unread, and `release_idle` discards
        // only such entries.
        unsafe { self.entries.release_idle() }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::time::Instant;

    use super::*;

    /// A ring queue's ring sees deferred task work without entering the
    /// kernel, which is what lets `--uring-busy-poll` poll without sleeping:
    /// a timeout's completion is task work, run only inside a wait.
    #[test]
    fn queue_ring_shows_deferred_work_to_a_poller() {
        let (device, _other_end) = rustix::pipe::pipe().unwrap();
        let mut ring = build_ring(device.as_fd(), &[], 4).unwrap();
        let ts = types::Timespec::from(Duration::from_millis(2));
        let sqe = io_uring::opcode::Timeout::new(&ts).build().user_data(5);
        // SAFETY: `ts` outlives the ring, and the kernel copies it when it
        // takes the SQE.
        unsafe { ring.push(&sqe.into()) }.unwrap();
        ring.submit().unwrap();
        let start = Instant::now();
        assert!(ring.poll_for_work(Duration::from_secs(5)), "nothing came");
        assert!(start.elapsed() >= Duration::from_millis(1));
        // The work is deferred: no completion until the thread enters.
        assert!(!ring.has_completions());
        ring.submit_and_wait(1).unwrap();
        let mut out = [(0, 0); 4];
        assert_eq!(ring.reap(&mut out), 1);
        assert_eq!(out[0], (5, -libc::ETIME));
        // With nothing in flight, polling gives up after its budget.
        let start = Instant::now();
        assert!(!ring.poll_for_work(Duration::from_millis(3)));
        assert!(start.elapsed() >= Duration::from_millis(3));
    }
}
