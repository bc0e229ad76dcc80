//! One ring queue: an `SQE128` io_uring, the queue's `/dev/fuse` fd as its
//! fixed file 0, and the queue's [`RingEntries`].
//!
//! [`RingQueue`] speaks the ring protocol: [`RingQueue::register`] hands an
//! entry to the kernel, a completion with result 0 means a request now sits
//! in that entry ([`RingQueue::delivered`] shows it),
//! [`RingQueue::write_reply`] stores a reply in the entry and
//! [`RingQueue::commit`] hands it back (COMMIT_AND_FETCH), which also waits
//! for the entry's next request. The same ring carries any other I/O the
//! queue wants completed on its thread (backing I/O, wake-ups), with user
//! data outside [`ENTRY_KIND`].
//!
//! The ring is created with `SINGLE_ISSUER | DEFER_TASKRUN`: it must be
//! created and driven by one thread, and the kernel writes requests into
//! entries only while that thread waits in [`RingQueue::submit_and_wait`].
//! That is what makes [`RingQueue::release_idle`] safe.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use fuse_proto::abi::{InHeader, OutHeader};
use fuse_proto::reply::OUT_HEADER_LEN;
use io_uring::{IoUring, cqueue, squeue, types};
use zerocopy::{FromBytes, IntoBytes};

use super::cmd;
use super::entries::{EntryBusy, RingEntries};

/// Fixed file index of the queue's `/dev/fuse` fd; other files follow.
pub const DEVICE: types::Fixed = types::Fixed(0);

/// Bits of user data that say what a completion belongs to.
pub const KIND_SHIFT: u32 = 56;
/// The user-data kind of entry commands (REGISTER, COMMIT_AND_FETCH); the
/// low bits are the entry index.
pub const ENTRY_KIND: u64 = 0x10;

/// User data of entry `index`'s commands.
fn entry_user_data(index: usize) -> u64 {
    ENTRY_KIND << KIND_SHIFT | index as u64
}

/// A completion, sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingEvent {
    /// A request was delivered into the entry.
    Delivered(usize),
    /// The entry's command ended without a request: the kernel refused it
    /// or the connection ended (`errno` is positive: `ENOTCONN` after an
    /// unmount, `ECONNABORTED` after an abort, `EAGAIN` before INIT ...).
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
    /// Submission slots beyond one per entry (for other I/O on the ring).
    pub extra_sqes: u32,
}

/// One ring queue (see the module documentation).
pub struct RingQueue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    entries: RingEntries,
    qid: u16,
    /// The `commit_id` of the request each entry holds (0: none).
    commit_ids: Box<[u64]>,
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
        let sq = (setup.depth as u32 + setup.extra_sqes)
            .max(1)
            .next_power_of_two();
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(sq * 2)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(sq)?;
        let mut files = vec![device.as_raw_fd()];
        files.extend_from_slice(extra_files);
        ring.submitter().register_files(&files)?;
        Ok(RingQueue {
            ring,
            entries,
            qid: setup.qid,
            commit_ids: vec![0; setup.depth].into_boxed_slice(),
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

    /// The entries, mutably (to lend payloads).
    pub fn entries_mut(&mut self) -> &mut RingEntries {
        &mut self.entries
    }

    /// Queues a REGISTER of entry `index` (submitted with the next
    /// [`Self::submit_and_wait`]).
    pub fn register(&mut self, index: usize) -> Result<(), RingError> {
        let iovecs = self.entries.hand_to_kernel(index)?;
        // SAFETY: `iovecs` and the buffers they describe live in the entries'
        // shared memory, which is never unmapped while an entry is marked as
        // in the kernel (it was just marked); the mark is cleared only when
        // this command's completion is reaped in `reap`.
        let sqe = unsafe { cmd::register(DEVICE, iovecs, self.qid) };
        self.commit_ids[index] = 0;
        self.push_entry_command(sqe.user_data(entry_user_data(index)))
    }

    /// The request entry `index` holds.
    pub fn delivered(&self, index: usize) -> Result<Delivered<'_>, RingError> {
        if self.commit_ids[index] == 0 {
            return Err(RingError::NothingDelivered);
        }
        let header = self.entries.header(index)?;
        let payload = self.entries.payload(index)?;
        let in_header = InHeader::read_from_prefix(&header.in_out)
            .map(|(h, _)| h)
            .map_err(|_| RingError::NothingDelivered)?;
        let payload_len =
            (header.ring_ent_in_out.payload_sz as usize).min(self.entries.payload_len());
        let op_len = (in_header.len as usize)
            .saturating_sub(size_of::<InHeader>() + payload_len)
            .min(header.op_in.len());
        Ok(Delivered {
            header: in_header,
            op: &header.op_in[..op_len],
            payload: &payload[..payload_len],
            commit_id: header.ring_ent_in_out.commit_id,
        })
    }

    /// The `commit_id` of the request entry `index` holds (0 if none).
    pub fn commit_id(&self, index: usize) -> u64 {
        self.commit_ids[index]
    }

    /// Stores a reply (`fuse_out_header` + arguments, as sent on
    /// `/dev/fuse`) in entry `index`: the header goes to the header buffer,
    /// the arguments to the payload buffer.
    pub fn write_reply(&mut self, index: usize, reply: &[u8]) -> Result<(), RingError> {
        let Some((out, args)) = reply.split_at_checked(OUT_HEADER_LEN) else {
            return Err(RingError::ReplyTooShort(reply.len()));
        };
        self.write_reply_parts(index, out, &[args])
    }

    /// Stores a reply whose arguments come in pieces (a data reply's header
    /// and its data), copying them one after another into the payload.
    pub fn write_reply_parts(
        &mut self,
        index: usize,
        out_header: &[u8],
        args: &[&[u8]],
    ) -> Result<(), RingError> {
        let Ok((out, _)) = OutHeader::read_from_prefix(out_header) else {
            return Err(RingError::ReplyTooShort(out_header.len()));
        };
        let total: usize = args.iter().map(|a| a.len()).sum();
        let capacity = self.entries.payload_len();
        if total > capacity {
            return Err(RingError::ReplyTooLarge {
                payload: total,
                capacity,
            });
        }
        let payload = self.entries.payload_mut(index)?;
        let mut at = 0;
        for arg in args {
            payload[at..at + arg.len()].copy_from_slice(arg);
            at += arg.len();
        }
        self.set_reply_header(index, out, total)
    }

    /// Stores the out header of a reply whose `payload_len` argument bytes
    /// are already at the start of the entry's payload buffer.
    pub fn set_reply_header(
        &mut self,
        index: usize,
        out: OutHeader,
        payload_len: usize,
    ) -> Result<(), RingError> {
        let capacity = self.entries.payload_len();
        if payload_len > capacity {
            return Err(RingError::ReplyTooLarge {
                payload: payload_len,
                capacity,
            });
        }
        let header = self.entries.header_mut(index)?;
        header.in_out[..OUT_HEADER_LEN].copy_from_slice(out.as_bytes());
        header.ring_ent_in_out.payload_sz = payload_len as u32;
        Ok(())
    }

    /// Queues COMMIT_AND_FETCH of entry `index` for the request it holds:
    /// the kernel takes the reply stored with [`Self::write_reply`] and the
    /// entry waits for its next request.
    pub fn commit(&mut self, index: usize) -> Result<(), RingError> {
        let commit_id = self.commit_ids[index];
        if commit_id == 0 {
            return Err(RingError::NothingDelivered);
        }
        // SAFETY: the id is the one the kernel delivered into this entry, so
        // the kernel commits this entry.
        unsafe { self.commit_with_id(index, commit_id) }
    }

    /// Queues COMMIT_AND_FETCH through entry `index` naming `commit_id`,
    /// whatever request the entry holds. The kernel finds the entry to
    /// commit by the request with that id, not by the SQE; an id it does not
    /// know fails with `ENOENT` and leaves every entry as it was. For probing
    /// the kernel (conformance tests).
    ///
    /// # Safety
    /// `commit_id` must not be the id of a request delivered to any other
    /// entry of queue `qid` on this connection (through this or another
    /// `RingQueue`): the kernel would then hand *that* entry's buffers to the
    /// next request while this process believes it owns them.
    pub unsafe fn commit_with_id(&mut self, index: usize, commit_id: u64) -> Result<(), RingError> {
        let _ = self.entries.hand_to_kernel(index)?;
        // SAFETY: the entry's buffers were registered by `register` and live
        // in the entries' shared memory, never unmapped while the entry is
        // marked as in the kernel (just marked, cleared when this command's
        // completion is reaped in `reap`); the caller guarantees that the
        // kernel, if it finds a request for the id, finds it in this entry.
        let sqe = unsafe { cmd::commit_and_fetch(DEVICE, self.qid, commit_id) };
        self.push_entry_command(sqe.user_data(entry_user_data(index)))
    }

    fn push_entry_command(&mut self, sqe: squeue::Entry128) -> Result<(), RingError> {
        // SAFETY: the memory the command references is the entries' (see the
        // callers), kept mapped while the entry is marked as in the kernel;
        // the user data is an entry's.
        unsafe { self.push_sqe(sqe) }.map_err(RingError::Io)
    }

    /// Queues any SQE, submitting first when the submission queue is full.
    ///
    /// # Safety
    /// Memory the SQE references must stay valid until its completion, and
    /// its user data must not use [`ENTRY_KIND`].
    pub unsafe fn push(&mut self, sqe: squeue::Entry128) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.push_sqe(sqe) }
    }

    /// # Safety
    /// As for [`Self::push`], except that entry commands may use [`ENTRY_KIND`].
    unsafe fn push_sqe(&mut self, sqe: squeue::Entry128) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                // The kernel is busy with completions we have not reaped (the
                // completion queue is sized so that this only slows us down).
                Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Submits what is queued and waits for at least `want` completions, or
    /// until `timeout` passes. Returns false on timeout.
    ///
    /// The ring defers the kernel's completion work to this wait
    /// (`DEFER_TASKRUN`): deliveries into entries are posted only while this
    /// thread waits here with `want > 0`. With `want == 0` it only submits.
    pub fn submit_and_wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<bool> {
        let result = match timeout {
            _ if want == 0 => self.ring.submit(),
            None => self.ring.submit_and_wait(want),
            Some(timeout) => {
                let ts = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(err) if err.raw_os_error() == Some(libc::ETIME) => Ok(false),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(true),
            Err(err) => Err(err),
        }
    }

    /// Reaps every completion now in the completion queue, updating the
    /// entries, and passes each one on.
    pub fn reap(&mut self, mut each: impl FnMut(&mut RingQueue, RingEvent)) {
        loop {
            let next = self.ring.completion().next();
            let Some(cqe) = next else { break };
            let event = self.sort(cqe.user_data(), cqe.result());
            each(self, event);
        }
    }

    fn sort(&mut self, user_data: u64, result: i32) -> RingEvent {
        if user_data >> KIND_SHIFT != ENTRY_KIND {
            return RingEvent::Other { user_data, result };
        }
        let index = (user_data & ((1 << KIND_SHIFT) - 1)) as usize;
        if index >= self.entries.depth() {
            return RingEvent::Other { user_data, result };
        }
        // A command that the kernel answered with -ENOENT (unknown commit
        // id) never reached the entry's request: the entry still holds it.
        let delivered = result == 0;
        self.entries.returned_from_kernel(index, delivered);
        if delivered {
            self.commit_ids[index] = self
                .entries
                .header(index)
                .map(|h| h.ring_ent_in_out.commit_id)
                .unwrap_or(0);
            RingEvent::Delivered(index)
        } else {
            RingEvent::Ended {
                entry: index,
                errno: -result,
            }
        }
    }

    /// Gives the resident pages of idle entries back (see
    /// [`RingEntries::release_idle`]). Call only after [`Self::reap`] and
    /// before the next [`Self::submit_and_wait`]. Returns how many entries
    /// were released.
    pub fn release_idle(&mut self) -> usize {
        // SAFETY: the ring is DEFER_TASKRUN and SINGLE_ISSUER (see `new`), so
        // the kernel only delivers into entries inside this thread's
        // `submit_and_wait`, which cannot run during this call (`&mut self`);
        // completions delivered before were reaped by `reap` (the caller's
        // contract), and `release_idle` only discards entries that are in the
        // kernel, i.e. whose delivery has not happened yet.
        unsafe { self.entries.release_idle() }
    }
}
