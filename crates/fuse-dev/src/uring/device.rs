//! Where a ring queue's entry commands go: the kernel's FUSE-over-io_uring,
//! or a fake device for tests that run the ring queue without a kernel.
//!
//! The fake device is one end of a `SOCK_SEQPACKET` socketpair. Each
//! message is laid out the way the kernel fills an entry: the 288-byte
//! `fuse_uring_req_header` (in header at 0, op struct at 128,
//! `fuse_uring_ent_in_out` at 256 with `commit_id` and `payload_sz`), then
//! the payload. REGISTER becomes a `READV` of one message straight into the
//! entry's two registered buffers; COMMIT_AND_FETCH becomes a `WRITEV` of the
//! entry's header and its `payload_sz` payload bytes, linked to the next
//! `READV`. Everything between (the lease of the payload, the handler, the
//! reply stored in the entry) is the real queue's.

use io_uring::{opcode, squeue};

use super::entries::{HEADER_LEN, RingEntries};
use super::ring::{
    DEVICE, EntryRing, KIND_ENTRY, RingError, RingEvent, push_commit, push_register,
    sort_completion,
};
use crate::jobs::{split_user_data, user_data};

/// `user_data` kind of a fake device's reply write (index: the entry).
const KIND_FAKE_REPLY: u64 = 0x11;

/// Marks entry `index` as in the kernel with no request, and builds the
/// `READV` of the fake device's next message into the entry's two buffers;
/// returns the entry's iovec pair with it.
fn hand_to_fake(
    entries: &mut RingEntries,
    index: usize,
) -> Result<(*const [libc::iovec; 2], squeue::Entry), RingError> {
    let iovecs = entries.hand_to_kernel(index)?;
    entries.forget_request(index);
    let fetch = opcode::Readv::new(DEVICE, iovecs.cast(), 2)
        .build()
        .user_data(user_data(KIND_ENTRY, index));
    Ok((iovecs, fetch))
}

/// Where entry commands go.
pub(crate) enum EntryDevice {
    /// `IORING_OP_URING_CMD` on `/dev/fuse`.
    Kernel,
    /// Reads and writes of messages on a socket (see the module docs).
    Fake {
        /// Each entry's reply iovecs (header, payload bytes), kept here
        /// while its write is in flight.
        replies: Box<[[libc::iovec; 2]]>,
    },
}

impl EntryDevice {
    /// A fake device for `depth` entries.
    pub(crate) fn fake(depth: usize) -> EntryDevice {
        let empty = libc::iovec {
            iov_base: core::ptr::null_mut(),
            iov_len: 0,
        };
        EntryDevice::Fake {
            replies: vec![[empty; 2]; depth].into_boxed_slice(),
        }
    }

    /// Whether idle entries may give their pages back. Not with the fake
    /// device: its commit is a socket write that may wait for room and read
    /// the reply later, so a committed entry may still hold an unread reply
    /// (the kernel reads a commit's reply while it is submitted).
    pub(crate) fn releases_idle_entries(&self) -> bool {
        matches!(self, EntryDevice::Kernel)
    }

    /// Operations one entry may have in flight at once.
    pub(crate) fn operations_per_entry(&self) -> usize {
        match self {
            EntryDevice::Kernel => 1,
            EntryDevice::Fake { .. } => 2,
        }
    }

    /// Hands entry `index` to the device to wait for a request.
    pub(crate) fn register(
        &mut self,
        ring: &mut EntryRing,
        entries: &mut RingEntries,
        qid: u16,
        index: usize,
    ) -> Result<(), RingError> {
        match self {
            EntryDevice::Kernel => push_register(ring, entries, qid, index),
            EntryDevice::Fake { .. } => {
                let (_, fetch) = hand_to_fake(entries, index)?;
                // SAFETY: the iovecs and the buffers they describe are the
                // entries' shared memory, never unmapped while the entry is
                // marked as in the kernel (just marked; cleared when this
                // read's completion is sorted).
                unsafe { ring.push(&fetch.into()) }.map_err(|err| {
                    entries.returned_from_kernel(index, false);
                    RingError::Io(err)
                })
            }
        }
    }

    /// Commits the reply stored in entry `index` and waits for the next
    /// request on it.
    pub(crate) fn commit(
        &mut self,
        ring: &mut EntryRing,
        entries: &mut RingEntries,
        qid: u16,
        index: usize,
    ) -> Result<(), RingError> {
        let EntryDevice::Fake { replies } = self else {
            return push_commit(ring, entries, qid, index);
        };
        if entries.commit_id(index) == 0 {
            return Err(RingError::NothingDelivered);
        }
        let payload_len = entries.header(index)?.ring_ent_in_out.payload_sz as usize;
        let (iovecs, fetch) = hand_to_fake(entries, index)?;
        // SAFETY: `iovecs` points to the entry's iovec pair in the entries'
        // shared memory, alive and not written by anyone while we read it.
        let [header, payload] = unsafe { *iovecs };
        replies[index] = [
            libc::iovec {
                iov_base: header.iov_base,
                iov_len: HEADER_LEN,
            },
            libc::iovec {
                iov_base: payload.iov_base,
                iov_len: payload_len.min(payload.iov_len),
            },
        ];
        let reply = opcode::Writev::new(DEVICE, replies[index].as_ptr(), 2)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(user_data(KIND_FAKE_REPLY, index));
        // SAFETY: the reply iovecs live in this device, part of the queue's
        // guarded memory, and point into the entry's buffers (as do the
        // fetch's): none is freed before both completions are reaped, and
        // the entry stays marked as in the kernel until the fetch's is.
        let pushed = unsafe { ring.push(&reply.into()) }
            // SAFETY: as above.
            .and_then(|()| unsafe { ring.push(&fetch.into()) });
        pushed.map_err(RingError::Io)
    }

    /// Sorts a completion; `None` for one that needs nothing (a fake
    /// device's reply write: its fetch reports what happened).
    pub(crate) fn sort(
        &self,
        entries: &mut RingEntries,
        user_data: u64,
        result: i32,
    ) -> Option<RingEvent> {
        match self {
            EntryDevice::Kernel => Some(sort_completion(entries, user_data, result)),
            EntryDevice::Fake { .. } => {
                let (kind, _) = split_user_data(user_data);
                if kind == KIND_FAKE_REPLY {
                    if result < 0 {
                        log::debug!("fake ring device: reply not written: errno {}", -result);
                    }
                    return None;
                }
                // A message is a delivery; end of file (the peer closed) or
                // a fetch cancelled by its failed reply is the end of the
                // connection.
                let result = match result {
                    r if r > 0 => 0,
                    0 => -libc::ENOTCONN,
                    r if r == -libc::ECANCELED || r == -libc::EPIPE => -libc::ENOTCONN,
                    r => r,
                };
                Some(sort_completion(entries, user_data, result))
            }
        }
    }
}
