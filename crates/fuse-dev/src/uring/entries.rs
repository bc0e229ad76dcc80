//! The memory of one queue's ring entries, and who may touch it when.
//!
//! Each entry has a 288-byte header (`fuse_uring_req_header`) and a payload
//! buffer of the ring's `max_payload_sz`. Both are registered with the kernel
//! once (REGISTER) and stay at the same address for the life of the
//! connection: the kernel writes every request it delivers to that entry
//! into them and reads every reply from them. So the memory is allocated once
//! per queue and never moves; all headers share one mapping, every payload
//! buffer is its own lazily backed mapping (address space, no resident memory
//! until written).
//!
//! Who may touch an entry's memory:
//!
//! * while a command SQE of the entry is in flight, only the kernel;
//! * between the completion that delivers a request and the commit of its
//!   reply, this process: the queue through [`RingEntries`], and the payload
//!   buffer, while it is lent to the request, only through the
//!   [`LentPayload`] that holds it.
//!
//! [`LentPayload`] is the ownership of the payload buffer as a value: there
//! is one per entry at most, the queue cannot read or write the payload
//! while it exists, and dropping it (wherever the request's buffers end up)
//! returns the buffer to the entry. The memory is freed only when neither the
//! queue nor a lease holds it any more and no command of any entry is in
//! flight; otherwise it is leaked (never freed under the kernel).

use core::ptr::NonNull;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuse_proto::abi::{InHeader, OutHeader, UringReqHeader};
use fuse_proto::reply::OUT_HEADER_LEN;
use zerocopy::{FromBytes, IntoBytes};

use super::ring::{Delivered, RingError};
use crate::buffer::{AlignedBuf, PAGE_SIZE};

/// Bytes of one entry's header buffer (`sizeof(struct fuse_uring_req_header)`).
pub const HEADER_LEN: usize = size_of::<UringReqHeader>();

/// Who holds an entry's memory right now.
struct EntryFlags {
    /// A REGISTER or COMMIT_AND_FETCH of this entry is in flight: the kernel
    /// may read or write the header and payload at any moment.
    in_kernel: AtomicBool,
    /// The payload buffer is lent to a request (a [`LentPayload`] exists).
    lent: AtomicBool,
}

/// The mappings, shared by the queue's [`RingEntries`] and the leases.
struct EntryMemory {
    /// Every entry's header, `HEADER_LEN` bytes apart.
    headers: Option<AlignedBuf>,
    headers_base: NonNull<u8>,
    /// One payload mapping per entry.
    payloads: Option<Box<[AlignedBuf]>>,
    payload_bases: Box<[NonNull<u8>]>,
    payload_len: usize,
    /// Each entry's `[header, payload]` iovecs, read by the kernel at
    /// REGISTER (kept here so that they live as long as the buffers).
    iovecs: Box<[[libc::iovec; 2]]>,
    flags: Box<[EntryFlags]>,
}

// SAFETY: the raw pointers point into mappings this value owns. Which thread
// may touch an entry's bytes is decided by its `EntryFlags` (the queue while
// neither flag is set, the single `LentPayload` while `lent` is set, the
// kernel while `in_kernel` is set), and the flags are atomics with
// acquire/release ordering, so sharing the value between the queue thread
// and wherever a lease travels is sound.
unsafe impl Send for EntryMemory {}
// SAFETY: as for `Send`: every access through `&EntryMemory` to entry bytes
// is gated by the flags.
unsafe impl Sync for EntryMemory {}

impl Drop for EntryMemory {
    fn drop(&mut self) {
        let in_kernel = self
            .flags
            .iter()
            .filter(|f| f.in_kernel.load(Ordering::Acquire))
            .count();
        if in_kernel > 0 {
            // The kernel may still write a request into these buffers (or
            // read a reply from them): they must outlive the ring, so they
            // are never unmapped. This happens only when a queue ends without
            // the connection having ended (error, panic, forced stop).
            log::debug!(
                "{in_kernel} ring entries still registered; leaving {} bytes mapped",
                self.flags.len() * (self.payload_len + HEADER_LEN)
            );
            std::mem::forget(self.headers.take());
            std::mem::forget(self.payloads.take());
        }
    }
}

impl EntryMemory {
    fn header_ptr(&self, index: usize) -> *mut u8 {
        // SAFETY: `index < depth` (callers index `flags` first, which has
        // `depth` elements) and the header mapping holds `depth * HEADER_LEN`
        // bytes, so the offset stays inside it.
        unsafe { self.headers_base.as_ptr().add(index * HEADER_LEN) }
    }
}

/// The payload buffer of a ring entry, lent to the request the entry
/// delivered. The only handle to the payload's bytes while it exists; its
/// drop returns the buffer to the entry, which may then be committed.
pub struct LentPayload {
    memory: Arc<EntryMemory>,
    index: usize,
    ptr: NonNull<u8>,
    len: usize,
}

impl std::fmt::Debug for LentPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LentPayload")
            .field("entry", &self.index)
            .field("len", &self.len)
            .finish()
    }
}

impl LentPayload {
    /// The buffer's length (the ring's payload size, a multiple of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: payload buffers are at least 8 KiB.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The ring entry it belongs to.
    pub fn entry(&self) -> usize {
        self.index
    }

    /// Whether this is the payload of entry `index` of the queue whose
    /// entries are `entries`.
    pub fn belongs_to(&self, entries: &RingEntries, index: usize) -> bool {
        Arc::ptr_eq(&self.memory, &entries.memory) && self.index == index
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, alive while `memory` is, and
        // while this lease exists nobody else touches it (the queue checks
        // `lent`, the kernel has no command of the entry in flight: an entry
        // is only lent between a delivery and its commit).
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the access unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The start address, for iovecs of backing I/O; valid while `self` lives.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for LentPayload {
    fn drop(&mut self) {
        self.memory.flags[self.index]
            .lent
            .store(false, Ordering::Release);
    }
}

/// Why an entry cannot do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryBusy {
    /// A command of the entry is in flight: the kernel owns its memory.
    InKernel,
    /// Its payload is lent to a request.
    Lent,
}

impl std::fmt::Display for EntryBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EntryBusy::InKernel => "the entry is in the kernel",
            EntryBusy::Lent => "the entry's payload is lent to a request",
        })
    }
}

impl std::error::Error for EntryBusy {}

/// One queue's ring entries: the queue's side of their shared memory.
pub struct RingEntries {
    memory: Arc<EntryMemory>,
    /// The `commit_id` of the request each entry holds (0: none).
    commit_ids: Box<[u64]>,
    /// Entries whose payload held data since it was last given back to the
    /// kernel (see [`RingEntries::release_idle`]).
    dirty: Box<[bool]>,
}

impl std::fmt::Debug for RingEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingEntries")
            .field("depth", &self.depth())
            .field("payload_len", &self.memory.payload_len)
            .finish()
    }
}

impl RingEntries {
    /// Maps `depth` entries with payload buffers of `payload_len` bytes
    /// (rounded up to pages). Only address space: nothing is resident until
    /// the kernel writes into it.
    pub fn new(depth: usize, payload_len: usize) -> io::Result<RingEntries> {
        if depth == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a ring queue needs at least one entry",
            ));
        }
        let payload_len = payload_len.max(1).next_multiple_of(PAGE_SIZE);
        let mut headers = AlignedBuf::new(depth * HEADER_LEN)?;
        let headers_base = NonNull::new(headers.as_mut_ptr()).ok_or(io::ErrorKind::OutOfMemory)?;
        let mut payloads = (0..depth)
            .map(|_| AlignedBuf::new(payload_len))
            .collect::<io::Result<Box<[AlignedBuf]>>>()?;
        let payload_bases = payloads
            .iter_mut()
            .map(|buf| NonNull::new(buf.as_mut_ptr()).ok_or(io::ErrorKind::OutOfMemory))
            .collect::<Result<Box<[NonNull<u8>]>, _>>()?;
        let iovecs = (0..depth)
            .map(|index| {
                [
                    libc::iovec {
                        // SAFETY: `index < depth`, inside the header mapping.
                        iov_base: unsafe { headers_base.as_ptr().add(index * HEADER_LEN) }.cast(),
                        iov_len: HEADER_LEN,
                    },
                    libc::iovec {
                        iov_base: payload_bases[index].as_ptr().cast(),
                        iov_len: payload_len,
                    },
                ]
            })
            .collect();
        let flags = (0..depth)
            .map(|_| EntryFlags {
                in_kernel: AtomicBool::new(false),
                lent: AtomicBool::new(false),
            })
            .collect();
        Ok(RingEntries {
            memory: Arc::new(EntryMemory {
                headers: Some(headers),
                headers_base,
                payloads: Some(payloads),
                payload_bases,
                payload_len,
                iovecs,
                flags,
            }),
            commit_ids: vec![0; depth].into_boxed_slice(),
            dirty: vec![false; depth].into_boxed_slice(),
        })
    }

    /// Number of entries.
    pub fn depth(&self) -> usize {
        self.memory.flags.len()
    }

    /// Bytes of each payload buffer.
    pub fn payload_len(&self) -> usize {
        self.memory.payload_len
    }

    /// Whether a command of entry `index` is in flight.
    pub fn is_in_kernel(&self, index: usize) -> bool {
        self.memory.flags[index].in_kernel.load(Ordering::Acquire)
    }

    /// Whether entry `index`'s payload is lent to a request.
    pub fn is_lent(&self, index: usize) -> bool {
        self.memory.flags[index].lent.load(Ordering::Acquire)
    }

    /// How many entries have a command in flight.
    pub fn in_kernel_count(&self) -> usize {
        (0..self.depth()).filter(|&i| self.is_in_kernel(i)).count()
    }

    fn check_owned(&self, index: usize) -> Result<(), EntryBusy> {
        if self.is_in_kernel(index) {
            Err(EntryBusy::InKernel)
        } else if self.is_lent(index) {
            Err(EntryBusy::Lent)
        } else {
            Ok(())
        }
    }

    /// Marks entry `index` as handed to the kernel by the SQE about to be
    /// pushed; returns its iovec pair (for REGISTER).
    pub(crate) fn hand_to_kernel(
        &mut self,
        index: usize,
    ) -> Result<*const [libc::iovec; 2], EntryBusy> {
        self.check_owned(index)?;
        self.memory.flags[index]
            .in_kernel
            .store(true, Ordering::Release);
        Ok(&raw const self.memory.iovecs[index])
    }

    /// The completion of entry `index`'s command was reaped: the kernel is
    /// done with its memory until the next command. With `delivered`, a
    /// request now sits in the entry. (A command the kernel refused, such
    /// as a commit naming an unknown id, leaves what the entry held.)
    pub(crate) fn returned_from_kernel(&mut self, index: usize, delivered: bool) {
        self.memory.flags[index]
            .in_kernel
            .store(false, Ordering::Release);
        if delivered {
            self.dirty[index] = true;
            self.commit_ids[index] = self
                .header(index)
                .map(|h| h.ring_ent_in_out.commit_id)
                .unwrap_or(0);
        }
    }

    /// The `commit_id` of the request entry `index` holds (0 if none).
    pub fn commit_id(&self, index: usize) -> u64 {
        self.commit_ids[index]
    }

    /// Forgets the request entry `index` held (the kernel ended it).
    pub(crate) fn forget_request(&mut self, index: usize) {
        self.commit_ids[index] = 0;
    }

    /// The request entry `index` holds.
    pub fn delivered(&self, index: usize) -> Result<Delivered<'_>, RingError> {
        if self.commit_ids[index] == 0 {
            return Err(RingError::NothingDelivered);
        }
        let header = self.header(index)?;
        // The payload is read through the lease while it is lent.
        let payload = self.payload(index)?;
        let in_header = InHeader::read_from_prefix(&header.in_out)
            .map(|(h, _)| h)
            .map_err(|_| RingError::NothingDelivered)?;
        let payload_len = self.delivered_payload_len(index);
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

    /// Bytes the kernel wrote into entry `index`'s payload with the request
    /// it holds (0 while it is in the kernel).
    pub fn delivered_payload_len(&self, index: usize) -> usize {
        self.header(index).map_or(0, |h| {
            (h.ring_ent_in_out.payload_sz as usize).min(self.memory.payload_len)
        })
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

    /// Stores a reply whose arguments come in pieces, copying them one after
    /// another into the payload.
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
        let capacity = self.payload_len();
        if total > capacity {
            return Err(RingError::ReplyTooLarge {
                payload: total,
                capacity,
            });
        }
        let payload = self.payload_mut(index)?;
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
        let capacity = self.payload_len();
        if payload_len > capacity {
            return Err(RingError::ReplyTooLarge {
                payload: payload_len,
                capacity,
            });
        }
        let header = self.header_mut(index)?;
        header.in_out[..OUT_HEADER_LEN].copy_from_slice(out.as_bytes());
        header.ring_ent_in_out.payload_sz = payload_len as u32;
        Ok(())
    }

    /// The header of entry `index`, while this process holds the entry.
    pub fn header(&self, index: usize) -> Result<&UringReqHeader, EntryBusy> {
        // The header is never lent, only the payload.
        if self.is_in_kernel(index) {
            return Err(EntryBusy::InKernel);
        }
        // SAFETY: the header is `HEADER_LEN` initialised bytes inside the
        // mapping; the kernel has no command of this entry in flight (checked
        // above) and leases never reach headers, so only this `&self` borrow
        // reads it.
        let bytes = unsafe {
            core::slice::from_raw_parts(self.memory.header_ptr(index).cast_const(), HEADER_LEN)
        };
        // Cannot fail: the size is exact and the offset (a multiple of 288
        // into a page-aligned mapping) is 8-byte aligned.
        UringReqHeader::ref_from_bytes(bytes).map_err(|_| EntryBusy::InKernel)
    }

    /// The header of entry `index`, writable (to store a reply's header).
    pub fn header_mut(&mut self, index: usize) -> Result<&mut UringReqHeader, EntryBusy> {
        if self.is_in_kernel(index) {
            return Err(EntryBusy::InKernel);
        }
        // SAFETY: as in `header`, and `&mut self` makes the access unique.
        let bytes =
            unsafe { core::slice::from_raw_parts_mut(self.memory.header_ptr(index), HEADER_LEN) };
        UringReqHeader::mut_from_bytes(bytes).map_err(|_| EntryBusy::InKernel)
    }

    /// The payload buffer of entry `index`, while the queue holds it.
    pub fn payload(&self, index: usize) -> Result<&[u8], EntryBusy> {
        self.check_owned(index)?;
        // SAFETY: neither the kernel (no command in flight) nor a lease
        // (none exists) touches the buffer, so this borrow is the only access.
        Ok(unsafe {
            core::slice::from_raw_parts(
                self.memory.payload_bases[index].as_ptr().cast_const(),
                self.memory.payload_len,
            )
        })
    }

    /// The payload buffer of entry `index`, writable (to store a reply).
    pub fn payload_mut(&mut self, index: usize) -> Result<&mut [u8], EntryBusy> {
        self.check_owned(index)?;
        self.dirty[index] = true;
        // SAFETY: as in `payload`, and `&mut self` makes the access unique.
        Ok(unsafe {
            core::slice::from_raw_parts_mut(
                self.memory.payload_bases[index].as_ptr(),
                self.memory.payload_len,
            )
        })
    }

    /// Lends entry `index`'s payload buffer to the request it delivered.
    pub fn lend(&mut self, index: usize) -> Result<LentPayload, EntryBusy> {
        self.check_owned(index)?;
        self.memory.flags[index].lent.store(true, Ordering::Release);
        self.dirty[index] = true;
        Ok(LentPayload {
            memory: self.memory.clone(),
            index,
            ptr: self.memory.payload_bases[index],
            len: self.memory.payload_len,
        })
    }

    /// Gives the resident pages of idle entries back to the system: every
    /// entry that held data since its last release and is waiting in the
    /// kernel for a request has its payload discarded (`MADV_DONTNEED`; the
    /// next request faults in fresh zero pages). Returns how many entries
    /// were released.
    ///
    /// # Safety
    /// The kernel must not be able to write into waiting entries while this
    /// runs, nor have a reply left to read from one: the ring must be set up
    /// with `IORING_SETUP_DEFER_TASKRUN` and driven only by the calling
    /// thread, every completion must have been reaped since the thread last
    /// entered the ring, and every command pushed must have been submitted. The kernel copies a
    /// request into an entry only in the ring's deferred task work, which
    /// runs inside this thread's next `io_uring_enter`, so no delivery can
    /// race the discard (a request delivered later lands on fresh pages).
    pub(crate) unsafe fn release_idle(&mut self) -> usize {
        let mut released = 0;
        for index in 0..self.depth() {
            if !self.dirty[index] || !self.is_in_kernel(index) {
                continue;
            }
            // SAFETY: the range is exactly the entry's payload mapping; no
            // lease exists (an entry in the kernel is not lent) and the
            // caller guarantees the kernel cannot write into it during this
            // call. Discarding anonymous private memory only drops contents
            // nobody will read: the kernel overwrites the payload with the
            // next request before the entry is handed back to us.
            let result = unsafe {
                rustix::mm::madvise(
                    self.memory.payload_bases[index].as_ptr().cast(),
                    self.memory.payload_len,
                    rustix::mm::Advice::LinuxDontNeed,
                )
            };
            match result {
                Ok(()) => {
                    self.dirty[index] = false;
                    released += 1;
                }
                Err(err) => log::debug!("madvise of ring entry {index}: {err}"),
            }
        }
        released
    }

    /// Whether some entry holds resident data that the idle release
    /// could give back.
    pub fn has_dirty(&self) -> bool {
        self.dirty.iter().any(|&d| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_payload_locks_the_queue_out_until_dropped() {
        let mut entries = RingEntries::new(2, 8192).unwrap();
        assert_eq!(entries.payload_len(), 8192);
        entries.payload_mut(0).unwrap()[..4].copy_from_slice(b"abcd");
        let mut lease = entries.lend(0).unwrap();
        assert!(lease.belongs_to(&entries, 0));
        assert!(!lease.belongs_to(&entries, 1));
        assert_eq!(&lease.as_slice()[..4], b"abcd");
        assert_eq!(entries.payload(0).err(), Some(EntryBusy::Lent));
        assert_eq!(entries.lend(0).err(), Some(EntryBusy::Lent));
        assert_eq!(entries.hand_to_kernel(0).err(), Some(EntryBusy::Lent));
        // The other entry is unaffected; the header stays with the queue.
        assert!(entries.payload(1).is_ok());
        assert!(entries.header(0).is_ok());
        lease.as_mut_slice()[..4].copy_from_slice(b"wxyz");
        drop(lease);
        assert_eq!(&entries.payload(0).unwrap()[..4], b"wxyz");
    }

    #[test]
    fn an_entry_in_the_kernel_is_untouchable() {
        let mut entries = RingEntries::new(1, 4096).unwrap();
        assert_eq!(entries.payload_len(), 4096);
        let iov = entries.hand_to_kernel(0).unwrap();
        // SAFETY: `iov` points into the entries' memory, alive here.
        let pair = unsafe { *iov };
        assert_eq!(pair[0].iov_len, HEADER_LEN);
        assert_eq!(pair[1].iov_len, 4096);
        assert_eq!(
            pair[1].iov_base as usize % PAGE_SIZE,
            0,
            "payload page-aligned"
        );
        assert_eq!(entries.header(0).err(), Some(EntryBusy::InKernel));
        assert_eq!(entries.payload(0).err(), Some(EntryBusy::InKernel));
        assert_eq!(entries.lend(0).err(), Some(EntryBusy::InKernel));
        assert_eq!(entries.in_kernel_count(), 1);
        entries.returned_from_kernel(0, true);
        assert!(entries.header(0).is_ok());
        assert!(entries.has_dirty());
        // Dropping with nothing in the kernel unmaps normally; with an entry
        // in the kernel it leaks (exercised by leaving one there).
        let _ = entries.hand_to_kernel(0).unwrap();
        drop(entries);
    }

    #[test]
    fn headers_are_laid_out_288_bytes_apart() {
        let mut entries = RingEntries::new(3, 8192).unwrap();
        let first = entries.hand_to_kernel(0).unwrap();
        let third = entries.hand_to_kernel(2).unwrap();
        // SAFETY: both point into the entries' memory, alive here.
        let (first, third) = unsafe { (*first, *third) };
        assert_eq!(
            third[0].iov_base as usize - first[0].iov_base as usize,
            2 * HEADER_LEN
        );
        entries.returned_from_kernel(0, false);
        entries.returned_from_kernel(2, false);
        assert!(!entries.has_dirty());
    }
}
