//! Page-aligned buffers, the per-queue pool that recycles them, and chains
//! of buffer segments that requests own while they are in flight.
//!
//! Buffers are anonymous `mmap`s: page-aligned (O_DIRECT needs it), zeroed,
//! and lazily backed, so a large spill-over tier that the kernel never writes
//! into costs address space but no resident memory. Allocation only happens
//! while a queue warms up; afterwards buffers cycle through the [`Pool`].

use core::ptr::NonNull;
use core::slice;

use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};

use crate::uring::LentPayload;

/// The page size buffers are aligned to and sized in.
pub const PAGE_SIZE: usize = 4096;

/// An owned, page-aligned, zero-initialised buffer.
///
/// Owning one is the only way to reach its memory, so moving it into a
/// request is what hands the memory over: the slot it came from can no
/// longer touch it.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `AlignedBuf` exclusively owns its mapping (like `Box<[u8]>`); no
// other handle to the memory exists, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of the bytes (`as_slice`).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Maps `len` bytes (rounded up to whole pages; at least one page).
    pub fn new(len: usize) -> std::io::Result<AlignedBuf> {
        let len = len.max(1).next_multiple_of(PAGE_SIZE);
        // SAFETY: an anonymous private mapping with a null hint creates new
        // memory that aliases nothing; rustix checks the result for errors.
        let ptr = unsafe {
            mmap_anonymous(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(AlignedBuf { ptr, len })
    }

    /// The buffer's length in bytes (a multiple of [`PAGE_SIZE`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: buffers have at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zero-filled) bytes that
        // this value owns for its whole life; `&self` forbids writes.
        unsafe { slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access unique.
        unsafe { slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The start address, for building iovecs handed to the kernel. The
    /// caller must keep `self` alive (and unmoved out of its owner) until
    /// the kernel is done with the memory.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `new`,
        // and nothing can use it after drop.
        if let Err(err) = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) } {
            log::error!("munmap of a {}-byte buffer failed: {err}", self.len);
        }
    }
}

/// Counters describing a pool's life, for tests and the lab.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers mapped since the pool was created.
    pub allocated: u64,
    /// Buffers unmapped because their class was at its cap.
    pub released: u64,
    /// Buffers handed out from the free lists (no allocation).
    pub reused: u64,
}

/// How long a queue must have been idle before it gives back the memory a
/// burst of large requests left resident (its idle large buffers, and the
/// pages of its ring entries or of its posted reads' spill-over).
pub(crate) const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// A per-queue free list of buffers, one list per size.
///
/// Not shared between threads: each queue owns one, so taking and giving
/// back costs a `Vec` push/pop. Last in, first out, so the buffers handed out
/// are the ones most recently touched (hot in cache, already resident).
#[derive(Debug)]
pub struct Pool {
    classes: Vec<(usize, Vec<AlignedBuf>)>,
    cap_per_class: usize,
    stats: PoolStats,
    #[cfg(feature = "fault-injection")]
    faults: Option<std::sync::Arc<crate::fault::Faults>>,
}

impl Pool {
    /// A pool that keeps at most `cap_per_class` idle buffers of each size.
    pub fn new(cap_per_class: usize) -> Pool {
        Pool {
            classes: Vec::new(),
            cap_per_class,
            stats: PoolStats::default(),
            #[cfg(feature = "fault-injection")]
            faults: None,
        }
    }

    /// Makes the pool's allocations fail when the test says so.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn set_faults(&mut self, faults: Option<std::sync::Arc<crate::fault::Faults>>) {
        self.faults = faults;
    }

    /// Maps a new buffer of `len` bytes (already rounded to pages).
    fn allocate(&mut self, len: usize) -> std::io::Result<AlignedBuf> {
        #[cfg(feature = "fault-injection")]
        if let Some(faults) = &self.faults {
            faults.pool_allocation()?;
        }
        self.stats.allocated += 1;
        AlignedBuf::new(len)
    }

    /// A buffer of exactly `len` bytes (rounded up to pages), reused if one is idle.
    pub fn take(&mut self, len: usize) -> std::io::Result<AlignedBuf> {
        let len = len.max(1).next_multiple_of(PAGE_SIZE);
        if let Some(buf) = self.class(len).pop() {
            self.stats.reused += 1;
            return Ok(buf);
        }
        self.allocate(len)
    }

    /// Returns a buffer for reuse (or unmaps it if its size class is full).
    pub fn give(&mut self, buf: AlignedBuf) {
        let cap = self.cap_per_class;
        let class = self.class(buf.len());
        if class.len() < cap {
            class.push(buf);
        } else {
            self.stats.released += 1;
            drop(buf);
        }
    }

    /// Returns every buffer of a chain: pooled ones for reuse, a lent ring
    /// payload to its entry.
    pub fn give_chain(&mut self, chain: Chain) {
        for segment in chain.into_segments() {
            match segment.buf {
                SegmentBuf::Pooled(buf) => self.give(buf),
                // Dropping the lease hands the buffer back to its entry.
                SegmentBuf::Lent(payload) => drop(payload),
            }
        }
    }

    /// Maps buffers until `count` of size `len` are idle, so the first
    /// requests do not pay for allocation.
    pub fn prefill(&mut self, len: usize, count: usize) -> std::io::Result<()> {
        let len = len.max(1).next_multiple_of(PAGE_SIZE);
        while self.class(len).len() < count.min(self.cap_per_class) {
            let buf = self.allocate(len)?;
            self.class(len).push(buf);
        }
        Ok(())
    }

    /// Whether buffers larger than `keep_len` bytes are idle in the pool.
    pub fn has_idle_above(&self, keep_len: usize) -> bool {
        self.classes
            .iter()
            .any(|(len, list)| *len > keep_len && !list.is_empty())
    }

    /// Unmaps every idle buffer larger than `keep_len` bytes (what a burst of
    /// large requests left resident); returns the bytes given back.
    pub fn release_idle_above(&mut self, keep_len: usize) -> usize {
        let mut bytes = 0;
        for (len, list) in self.classes.iter_mut().filter(|(len, _)| *len > keep_len) {
            bytes += *len * list.len();
            self.stats.released += list.len() as u64;
            // Keeps the list's capacity: the next burst pushes without
            // allocating.
            list.clear();
        }
        bytes
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Idle buffers of each size, as `(size, count)`.
    pub fn idle(&self) -> Vec<(usize, usize)> {
        self.classes
            .iter()
            .map(|(len, list)| (*len, list.len()))
            .collect()
    }

    fn class(&mut self, len: usize) -> &mut Vec<AlignedBuf> {
        let index = match self.classes.iter().position(|(size, _)| *size == len) {
            Some(index) => index,
            None => {
                self.classes
                    .push((len, Vec::with_capacity(self.cap_per_class)));
                self.classes.len() - 1
            }
        };
        &mut self.classes[index].1
    }
}

/// The most segments one chain holds: the in-place page, the spill-over
/// tiers, and a few pages for alignment slack.
pub const MAX_SEGMENTS: usize = 8;

/// The buffer a [`Segment`] windows: one from a pool, or the payload buffer
/// of a FUSE-over-io_uring ring entry lent to the request it delivered.
#[derive(Debug)]
enum SegmentBuf {
    Pooled(AlignedBuf),
    Lent(LentPayload),
}

impl SegmentBuf {
    fn len(&self) -> usize {
        match self {
            SegmentBuf::Pooled(buf) => buf.len(),
            SegmentBuf::Lent(payload) => payload.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            SegmentBuf::Pooled(buf) => buf.as_slice(),
            SegmentBuf::Lent(payload) => payload.as_slice(),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            SegmentBuf::Pooled(buf) => buf.as_mut_slice(),
            SegmentBuf::Lent(payload) => payload.as_mut_slice(),
        }
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            SegmentBuf::Pooled(buf) => buf.as_mut_ptr(),
            SegmentBuf::Lent(payload) => payload.as_mut_ptr(),
        }
    }
}

/// A window `[start, start + len)` of an owned buffer.
///
/// The buffer is a pool's [`AlignedBuf`], or a ring entry's payload lent to
/// the request ([`LentPayload`]); the window works the same on both. Given
/// back to a [`Pool`], a pooled buffer is kept for reuse and a lent one goes
/// back to its ring entry.
#[derive(Debug)]
pub struct Segment {
    buf: SegmentBuf,
    start: usize,
    len: usize,
}

impl Segment {
    /// A window over `buf`; clamped to the buffer.
    pub fn new(buf: AlignedBuf, start: usize, len: usize) -> Segment {
        Segment::over(SegmentBuf::Pooled(buf), start, len)
    }

    /// The whole buffer.
    pub fn whole(buf: AlignedBuf) -> Segment {
        let len = buf.len();
        Segment::new(buf, 0, len)
    }

    /// A window over a ring entry's lent payload; clamped to the buffer.
    pub(crate) fn lent(payload: LentPayload, start: usize, len: usize) -> Segment {
        Segment::over(SegmentBuf::Lent(payload), start, len)
    }

    fn over(buf: SegmentBuf, start: usize, len: usize) -> Segment {
        let start = start.min(buf.len());
        let len = len.min(buf.len() - start);
        Segment { buf, start, len }
    }

    /// The lent ring-entry payload this segment windows, if it is one.
    pub(crate) fn lease(&self) -> Option<&LentPayload> {
        match &self.buf {
            SegmentBuf::Lent(payload) => Some(payload),
            SegmentBuf::Pooled(_) => None,
        }
    }

    /// The window's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf.as_slice()[self.start..self.start + self.len]
    }

    /// The window's bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let (start, len) = (self.start, self.len);
        &mut self.buf.as_mut_slice()[start..start + len]
    }

    /// Length of the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length of the underlying buffer.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Offset of the window in its buffer.
    pub fn start(&self) -> usize {
        self.start
    }

    /// An iovec over the window, for the kernel. Valid while `self` lives.
    pub(crate) fn iovec(&mut self) -> libc::iovec {
        let (start, len) = (self.start, self.len);
        libc::iovec {
            // SAFETY: `start <= buf.len()` (kept by every constructor and
            // `set_window`), so the offset stays inside the mapping.
            iov_base: unsafe { self.buf.as_mut_ptr().add(start) }.cast(),
            iov_len: len,
        }
    }

    fn set_window(&mut self, start: usize, len: usize) {
        self.start = start.min(self.buf.len());
        self.len = len.min(self.buf.len() - self.start);
    }
}

/// An ordered list of up to [`MAX_SEGMENTS`] segments that together hold one
/// request's data.
///
/// Chains are what requests own: the data of a WRITE (in-place page plus the
/// spill-over tiers it used), the destination of a READ, or a bounce buffer.
/// Backing I/O and replies are built from a chain's iovecs; the chain comes
/// back to its owner when the kernel is done with it. The segments live
/// inline, so building a chain never allocates.
#[derive(Debug, Default)]
pub struct Chain {
    slots: [Option<Segment>; MAX_SEGMENTS],
    count: usize,
}

impl Chain {
    /// An empty chain.
    pub fn new() -> Chain {
        Chain::default()
    }

    /// A chain of one segment.
    pub fn of(segment: Segment) -> Chain {
        let mut chain = Chain::new();
        chain.slots[0] = Some(segment);
        chain.count = 1;
        chain
    }

    /// Appends a segment. Fails (returning it) if the chain is full.
    pub fn push(&mut self, segment: Segment) -> Result<(), Segment> {
        if self.count == MAX_SEGMENTS {
            return Err(segment);
        }
        self.slots[self.count] = Some(segment);
        self.count += 1;
        Ok(())
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.count
    }

    /// The segments in order.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.slots.iter().flatten()
    }

    /// The segments in order, writable.
    pub fn segments_mut(&mut self) -> impl Iterator<Item = &mut Segment> {
        self.slots.iter_mut().flatten()
    }

    /// Takes the first segment out (the others move up).
    pub fn take_first(&mut self) -> Option<Segment> {
        self.take_at(0)
    }

    /// Takes the segment at `position` out (the ones after it move up).
    pub(crate) fn take_at(&mut self, position: usize) -> Option<Segment> {
        if position >= self.count {
            return None;
        }
        let taken = self.slots[position].take();
        self.slots[position..self.count].rotate_left(1);
        self.count -= 1;
        taken
    }

    /// Takes the segments out.
    pub fn into_segments(self) -> impl Iterator<Item = Segment> {
        self.slots.into_iter().flatten()
    }

    /// Total bytes in the windows.
    pub fn len(&self) -> usize {
        self.segments().map(Segment::len).sum()
    }

    /// Whether the chain holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes the underlying buffers could hold from each window's start.
    pub fn capacity_from_starts(&self) -> usize {
        self.segments().map(|s| s.capacity() - s.start()).sum()
    }

    /// Re-windows the chain to `len` bytes starting at its current start:
    /// every segment grows to its buffer's end until `len` is reached; the
    /// remaining segments become empty. Returns the length actually set
    /// (less than `len` if the buffers are too small).
    pub fn set_len(&mut self, len: usize) -> usize {
        let mut left = len;
        for segment in self.segments_mut() {
            let room = segment.capacity() - segment.start;
            let take = room.min(left);
            segment.set_window(segment.start, take);
            left -= take;
        }
        len - left
    }

    /// Windows the chain to bytes `[start, start + len)` of its buffers laid
    /// end to end, whatever the current windows are.
    pub fn select(&mut self, start: usize, len: usize) {
        for segment in self.segments_mut() {
            let capacity = segment.capacity();
            segment.set_window(0, capacity);
        }
        self.narrow(start, len);
    }

    /// Narrows the chain to the bytes `[skip, skip + len)` of its current
    /// contents (segments outside become empty but stay owned).
    pub fn narrow(&mut self, skip: usize, len: usize) {
        let mut skip = skip;
        let mut left = len;
        for segment in self.segments_mut() {
            let here = segment.len;
            let drop_front = skip.min(here);
            skip -= drop_front;
            let keep = (here - drop_front).min(left);
            left -= keep;
            let start = segment.start + drop_front;
            segment.set_window(start, keep);
        }
    }

    /// Copies `src` into the chain starting at byte `at` of its contents.
    /// Returns the bytes copied (less if the chain is shorter).
    pub fn copy_in(&mut self, at: usize, src: &[u8]) -> usize {
        let mut at = at;
        let mut copied = 0;
        for segment in self.segments_mut() {
            if copied == src.len() {
                break;
            }
            let bytes = segment.bytes_mut();
            if at >= bytes.len() {
                at -= bytes.len();
                continue;
            }
            let n = (bytes.len() - at).min(src.len() - copied);
            bytes[at..at + n].copy_from_slice(&src[copied..copied + n]);
            copied += n;
            at = 0;
        }
        copied
    }

    /// Copies the chain's bytes `[at, at + dst.len())` into `dst`; returns the count.
    pub fn copy_out(&self, at: usize, dst: &mut [u8]) -> usize {
        let mut at = at;
        let mut copied = 0;
        for segment in self.segments() {
            if copied == dst.len() {
                break;
            }
            let bytes = segment.bytes();
            if at >= bytes.len() {
                at -= bytes.len();
                continue;
            }
            let n = (bytes.len() - at).min(dst.len() - copied);
            dst[copied..copied + n].copy_from_slice(&bytes[at..at + n]);
            copied += n;
            at = 0;
        }
        copied
    }

    /// Copies the whole contents of `other` into this chain at byte `at`.
    pub fn copy_from_chain(&mut self, at: usize, other: &Chain) -> usize {
        let mut at = at;
        let mut copied = 0;
        for segment in other.segments() {
            let n = self.copy_in(at, segment.bytes());
            copied += n;
            at += n;
            if n < segment.len() {
                break;
            }
        }
        copied
    }

    /// Fills iovecs for the non-empty windows into `out`; returns how many.
    /// `out` has room for every segment a chain can hold, so none is ever
    /// left out. The iovecs stay valid while the chain's buffers are alive
    /// and owned.
    pub(crate) fn fill_iovecs(&mut self, out: &mut [libc::iovec; MAX_SEGMENTS]) -> usize {
        let mut count = 0;
        for (segment, iov) in self.segments_mut().filter(|s| !s.is_empty()).zip(out) {
            *iov = segment.iovec();
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(pool: &mut Pool, sizes: &[usize]) -> Chain {
        let mut chain = Chain::new();
        for &size in sizes {
            chain
                .push(Segment::whole(pool.take(size).unwrap()))
                .unwrap();
        }
        chain
    }

    #[test]
    fn buffers_are_page_aligned_and_zeroed() {
        let buf = AlignedBuf::new(10_000).unwrap();
        assert_eq!(buf.len(), 12288);
        assert_eq!(buf.as_slice().as_ptr() as usize % PAGE_SIZE, 0);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
    }

    #[test]
    fn pool_reuses_last_returned_buffer_and_caps_idle_buffers() {
        let mut pool = Pool::new(1);
        let a = pool.take(4096).unwrap();
        let a_addr = a.as_slice().as_ptr();
        let b = pool.take(4096).unwrap();
        pool.give(a);
        pool.give(b); // over the cap of 1: unmapped
        assert_eq!(
            pool.stats(),
            PoolStats {
                allocated: 2,
                released: 1,
                reused: 0
            }
        );
        let again = pool.take(4096).unwrap();
        assert_eq!(again.as_slice().as_ptr(), a_addr);
        assert_eq!(pool.stats().reused, 1);
    }

    #[test]
    fn idle_large_buffers_are_given_back_and_small_ones_kept() {
        let mut pool = Pool::new(4);
        let small = pool.take(2 * PAGE_SIZE).unwrap();
        let large: Vec<AlignedBuf> = (0..3).map(|_| pool.take(1 << 20).unwrap()).collect();
        pool.give(small);
        assert!(!pool.has_idle_above(2 * PAGE_SIZE));
        for buf in large {
            pool.give(buf);
        }
        assert!(pool.has_idle_above(2 * PAGE_SIZE));
        assert_eq!(pool.release_idle_above(2 * PAGE_SIZE), 3 << 20);
        assert!(!pool.has_idle_above(2 * PAGE_SIZE));
        assert_eq!(pool.idle(), vec![(2 * PAGE_SIZE, 1), (1 << 20, 0)]);
        assert_eq!(pool.stats().released, 3);
    }

    #[test]
    fn narrow_and_copy_cross_segment_boundaries() {
        let mut pool = Pool::new(4);
        let mut chain = chain_of(&mut pool, &[4096, 8192]);
        let data: Vec<u8> = (0..12288u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(chain.copy_in(0, &data), data.len());
        chain.narrow(4000, 200);
        assert_eq!(chain.len(), 200);
        let mut out = vec![0u8; 200];
        assert_eq!(chain.copy_out(0, &mut out), 200);
        assert_eq!(&out[..], &data[4000..4200]);
        let lens: Vec<usize> = chain.segments().map(Segment::len).collect();
        assert_eq!(lens, [96, 104]);
    }

    #[test]
    fn select_addresses_buffers_regardless_of_current_windows() {
        let mut pool = Pool::new(4);
        let mut chain = chain_of(&mut pool, &[4096, 8192]);
        chain.narrow(100, 10);
        chain.select(4000, 200);
        let lens: Vec<usize> = chain.segments().map(Segment::len).collect();
        assert_eq!(lens, [96, 104]);
        assert_eq!(chain.segments().next().unwrap().start(), 4000);
    }

    #[test]
    fn fill_iovecs_covers_a_full_chain_and_skips_empty_windows() {
        let mut pool = Pool::new(MAX_SEGMENTS);
        let mut chain = chain_of(&mut pool, &[4096; MAX_SEGMENTS]);
        let mut iov = [libc::iovec {
            iov_base: core::ptr::null_mut(),
            iov_len: 0,
        }; MAX_SEGMENTS];
        assert_eq!(chain.fill_iovecs(&mut iov), MAX_SEGMENTS);
        assert!(iov.iter().all(|v| v.iov_len == 4096));
        chain.narrow(4096, 4096);
        assert_eq!(chain.fill_iovecs(&mut iov), 1);
        assert_eq!(iov[0].iov_len, 4096);
    }

    #[test]
    fn set_len_grows_windows_to_buffer_ends() {
        let mut pool = Pool::new(4);
        let mut chain = chain_of(&mut pool, &[4096, 8192]);
        chain.narrow(0, 10);
        assert_eq!(chain.set_len(5000), 5000);
        let lens: Vec<usize> = chain.segments().map(Segment::len).collect();
        assert_eq!(lens, [4096, 904]);
        assert_eq!(chain.set_len(1 << 20), 12288);
    }
}
