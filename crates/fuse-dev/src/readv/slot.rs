//! Read slots: the buffers posted to the kernel for one `readv` of
//! `/dev/fuse`, and the hand-over of those buffers to the request they
//! received.
//!
//! Each posted read is a multi-iovec `readv`:
//!
//! ```text
//!  head block (2 pages)                      spill-over tiers
//!  ┌───────────────────┬──────────────────┐  ┌────────┐ ┌─────────────────┐
//!  │ unused │ 80 B hdr │ in-place page    │  │ tier 0 │ │ tier 1 ...      │
//!  └───────────────────┴──────────────────┘  └────────┘ └─────────────────┘
//!           ^ iov[0] starts here (4096-80)     iov[1]     iov[2]
//! ```
//!
//! `fuse_in_header` + `fuse_write_in` are 80 bytes, so a WRITE's payload
//! starts exactly on the page-aligned in-place page and continues into the
//! tiers: it can go to an O_DIRECT image without a copy. Every other request
//! fits in `iov[0]` and simply continues past the 80 bytes.
//!
//! The byte count the read returns says which tiers the kernel wrote into.
//! Only those move into the request; the slot takes fresh ones from the pool.
//! A 4 KiB write therefore never takes a tier, and a 64 KiB write only the
//! first.

use core::fmt;

use fuse_proto::{ParseError, Request, WRITE_HEADER_LEN};

use crate::buffer::{AlignedBuf, Chain, PAGE_SIZE, Pool, Segment};

/// Bytes of the head block: the header area's page and the in-place page.
pub const HEAD_BLOCK_LEN: usize = 2 * PAGE_SIZE;
/// Offset in the head block where `iov[0]` starts.
pub const HEAD_OFFSET: usize = PAGE_SIZE - WRITE_HEADER_LEN;
/// Length of `iov[0]`: the 80-byte header area plus the in-place page.
pub const HEAD_LEN: usize = WRITE_HEADER_LEN + PAGE_SIZE;
/// The most spill-over tiers a slot may have.
pub const MAX_TIERS: usize = 4;

/// How the spill-over of each read is split into tiers.
#[derive(Clone, PartialEq, Eq)]
pub struct SpillLayout {
    tiers: Vec<usize>,
}

/// Why a tier layout was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// A threshold is not a multiple of 4 KiB.
    Unaligned(usize),
    /// Thresholds must grow strictly and start above 4 KiB.
    NotIncreasing(usize),
    /// More tiers than [`MAX_TIERS`].
    TooMany(usize),
    /// A threshold at or above `max_write`: the last tier always ends at
    /// `max_write`, so such a bound would have no effect.
    NotBelowMaxWrite {
        /// The bound.
        bound: usize,
        /// The `max_write` it was checked against.
        max_write: usize,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Unaligned(t) => {
                write!(f, "spill tier bound {t} is not a multiple of 4096")
            }
            LayoutError::NotIncreasing(t) => {
                write!(
                    f,
                    "spill tier bound {t} must be above 4096 and above the previous bound"
                )
            }
            LayoutError::TooMany(n) => {
                write!(f, "{n} spill tiers given, at most {MAX_TIERS} allowed")
            }
            LayoutError::NotBelowMaxWrite { bound, max_write } => write!(
                f,
                "spill tier bound {bound} must be below max_write {max_write} \
                 (the last tier always ends at max_write)"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

impl SpillLayout {
    /// A layout for writes of up to `max_write` bytes, with tiers ending at
    /// the given write sizes (each a multiple of 4 KiB, increasing, below
    /// `max_write`); the last tier always ends at `max_write`. The read must
    /// also reach the kernel's 8 KiB minimum, so there is always at least
    /// one tier.
    pub fn new(max_write: usize, bounds: &[usize]) -> Result<SpillLayout, LayoutError> {
        let mut previous = PAGE_SIZE;
        let mut tiers = Vec::new();
        for &bound in bounds {
            if bound % PAGE_SIZE != 0 {
                return Err(LayoutError::Unaligned(bound));
            }
            if bound <= previous {
                return Err(LayoutError::NotIncreasing(bound));
            }
            if bound >= max_write {
                return Err(LayoutError::NotBelowMaxWrite { bound, max_write });
            }
            tiers.push(bound - previous);
            previous = bound;
        }
        // The last tier covers the rest of max_write, and at least one page
        // so that the whole read is >= MIN_READ_BUFFER (8192).
        let minimum_total = fuse_proto::min_read_buffer(max_write as u32);
        let rest = minimum_total
            .saturating_sub(HEAD_LEN + tiers.iter().sum::<usize>())
            .next_multiple_of(PAGE_SIZE)
            .max(PAGE_SIZE);
        tiers.push(rest);
        if tiers.len() > MAX_TIERS {
            return Err(LayoutError::TooMany(tiers.len()));
        }
        Ok(SpillLayout { tiers })
    }

    /// The default: a first tier for writes up to 64 KiB (the common large
    /// write of `qemu-img` and the page cache), the rest in a second.
    pub fn default_for(max_write: usize) -> SpillLayout {
        SpillLayout::new(max_write, &[64 * 1024]).unwrap_or_else(|_| {
            SpillLayout::new(max_write, &[]).unwrap_or(SpillLayout {
                tiers: vec![PAGE_SIZE],
            })
        })
    }

    /// Sizes of the tiers in order.
    pub fn tiers(&self) -> &[usize] {
        &self.tiers
    }

    /// Total bytes one read offers the kernel.
    pub fn read_len(&self) -> usize {
        HEAD_LEN + self.tiers.iter().sum::<usize>()
    }

    /// How many tiers a read of `n` bytes wrote into.
    pub fn tiers_touched(&self, n: usize) -> usize {
        let mut spilled = n.saturating_sub(HEAD_LEN);
        let mut touched = 0;
        for &tier in &self.tiers {
            if spilled == 0 {
                break;
            }
            touched += 1;
            spilled = spilled.saturating_sub(tier);
        }
        touched
    }
}

impl fmt::Debug for SpillLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kib: Vec<usize> = self.tiers.iter().map(|t| t / 1024).collect();
        write!(f, "SpillLayout(tiers KiB {kib:?})")
    }
}

/// The buffers of one posted read.
#[derive(Debug)]
pub(crate) struct ReadSlot {
    head: Option<AlignedBuf>,
    tiers: [Option<AlignedBuf>; MAX_TIERS],
    /// The iovecs the kernel reads; must stay at a stable address while the
    /// read is posted (slots live in a boxed slice that never moves).
    iov: [libc::iovec; 1 + MAX_TIERS],
    pub(crate) posted: bool,
    /// A cancellation of the posted read is in flight.
    pub(crate) cancelling: bool,
}

impl ReadSlot {
    pub(crate) fn new() -> ReadSlot {
        ReadSlot {
            head: None,
            tiers: Default::default(),
            iov: [libc::iovec {
                iov_base: core::ptr::null_mut(),
                iov_len: 0,
            }; 1 + MAX_TIERS],
            posted: false,
            cancelling: false,
        }
    }

    /// Fills missing buffers from the pool and builds the iovecs. Returns
    /// the iovec array to post and its length.
    pub(crate) fn arm(
        &mut self,
        layout: &SpillLayout,
        pool: &mut Pool,
    ) -> std::io::Result<(*const libc::iovec, u32)> {
        let head = match &mut self.head {
            Some(head) => head,
            slot => slot.insert(pool.take(HEAD_BLOCK_LEN)?),
        };
        self.iov[0] = libc::iovec {
            // SAFETY: the head block is HEAD_BLOCK_LEN bytes and
            // HEAD_OFFSET + HEAD_LEN == HEAD_BLOCK_LEN, so the range is inside it.
            iov_base: unsafe { head.as_mut_ptr().add(HEAD_OFFSET) }.cast(),
            iov_len: HEAD_LEN,
        };
        for (i, &size) in layout.tiers().iter().enumerate() {
            let tier = match &mut self.tiers[i] {
                Some(tier) => tier,
                slot => slot.insert(pool.take(size)?),
            };
            self.iov[1 + i] = libc::iovec {
                iov_base: tier.as_mut_ptr().cast(),
                iov_len: size,
            };
        }
        Ok((self.iov.as_ptr(), 1 + layout.tiers().len() as u32))
    }

    /// Moves the buffers a read of `n` bytes filled into an [`Incoming`].
    /// Untouched tiers stay in the slot for the next read.
    pub(crate) fn take(&mut self, n: usize, layout: &SpillLayout) -> Option<Incoming> {
        let head = self.head.take()?;
        let mut spill = Chain::new();
        let mut left = n.saturating_sub(HEAD_LEN);
        for (i, &size) in layout
            .tiers()
            .iter()
            .take(layout.tiers_touched(n))
            .enumerate()
        {
            let tier = self.tiers[i].take()?;
            let used = left.min(size);
            left -= used;
            // Cannot fail: MAX_TIERS < MAX_SEGMENTS.
            let _ = spill.push(Segment::new(tier, 0, used));
        }
        Some(Incoming {
            head,
            spill,
            len: n,
            place: DataPlace::HeadThenSpill,
        })
    }

    /// Gives every buffer back to the pool (queue shutdown).
    pub(crate) fn release(&mut self, pool: &mut Pool) {
        if let Some(head) = self.head.take() {
            pool.give(head);
        }
        for tier in self.tiers.iter_mut().filter_map(Option::take) {
            pool.give(tier);
        }
    }
}

/// A request as the kernel delivered it, owning the buffers it arrived in,
/// whatever the transport:
///
/// * `readv`: the head block the read filled (header, op struct, and a
///   WRITE's first page in its in-place page) and the spill-over tiers the
///   read wrote into;
/// * FUSE-over-io_uring: a head block from the pool holding a copy of the
///   header and op struct (and, except for WRITE, the first bytes of the
///   arguments after it), and the ring entry's payload buffer, lent to the
///   request ([`LentPayload`](crate::uring::LentPayload)) until its buffers
///   are given back.
#[derive(Debug)]
pub struct Incoming {
    head: AlignedBuf,
    spill: Chain,
    len: usize,
    place: DataPlace,
}

/// Where the bytes after a request's op struct live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataPlace {
    /// Contiguous from the head block on: its in-place page, then `spill`.
    HeadThenSpill,
    /// In `spill` alone (a ring entry's payload); the head block holds
    /// `head_len` bytes from `HEAD_OFFSET`.
    Payload { head_len: usize },
}

impl Incoming {
    /// Builds an incoming request from one contiguous message (for tests and
    /// fake devices): the message is laid out exactly as a `readv` would.
    pub fn from_message(
        msg: &[u8],
        layout: &SpillLayout,
        pool: &mut Pool,
    ) -> std::io::Result<Incoming> {
        let mut slot = ReadSlot::new();
        slot.arm(layout, pool)?;
        let mut rest = msg;
        let head_part = rest.len().min(HEAD_LEN);
        if let Some(head) = &mut slot.head {
            head.as_mut_slice()[HEAD_OFFSET..HEAD_OFFSET + head_part]
                .copy_from_slice(&rest[..head_part]);
        }
        rest = &rest[head_part..];
        for tier in slot.tiers.iter_mut().flatten() {
            let n = rest.len().min(tier.len());
            tier.as_mut_slice()[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "message larger than a read slot",
            ));
        }
        let incoming = slot
            .take(msg.len(), layout)
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        slot.release(pool);
        Ok(incoming)
    }

    /// A request delivered into a FUSE-over-io_uring ring entry: `head`
    /// holds `head_len` bytes (header, op struct, a copy of the first
    /// arguments) from `HEAD_OFFSET`; the entry's payload (`payload_len`
    /// bytes delivered) is lent to the request; `len` is the header's.
    pub(crate) fn from_ring(
        head: AlignedBuf,
        head_len: usize,
        payload: crate::uring::LentPayload,
        payload_len: usize,
        len: usize,
    ) -> Incoming {
        Incoming {
            head,
            spill: Chain::of(Segment::lent(payload, 0, payload_len)),
            len,
            place: DataPlace::Payload {
                head_len: head_len.min(HEAD_LEN),
            },
        }
    }

    /// Bytes the kernel delivered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was delivered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The request's first bytes, contiguous: header, op struct, and as
    /// much of what follows as the head block holds (`iov[0]` of a read).
    pub fn head_bytes(&self) -> &[u8] {
        let in_head = match self.place {
            DataPlace::HeadThenSpill => self.len.min(HEAD_LEN),
            DataPlace::Payload { head_len } => head_len,
        };
        &self.head.as_slice()[HEAD_OFFSET..HEAD_OFFSET + in_head]
    }

    /// Parses the request. Its fixed-size arguments are always in the head
    /// block; only a WRITE's data (or an oversized unsupported request)
    /// continues into the spill-over.
    pub fn request(&self) -> Result<Request<'_>, ParseError> {
        Request::parse_prefix(self.head_bytes(), self.len)
    }

    /// Number of spill-over tiers this request took from its read slot (0
    /// for a request delivered into a ring entry).
    pub fn spill_tiers(&self) -> usize {
        match self.place {
            DataPlace::HeadThenSpill => self.spill.segment_count(),
            DataPlace::Payload { .. } => 0,
        }
    }

    /// The data of a WRITE as a chain, without copying a byte: the in-place
    /// page (from its aligned start) followed by the spill-over it used, or
    /// the ring entry's payload buffer (page-aligned too).
    pub fn into_write_data(self) -> Chain {
        if let DataPlace::Payload { .. } = self.place {
            let mut chain = self.spill;
            // The head block travels along, empty, so that it goes back to
            // the pool with the data. Cannot fail: the chain has one segment.
            let _ = chain.push(Segment::new(self.head, 0, 0));
            return chain;
        }
        let in_page = self.len.saturating_sub(WRITE_HEADER_LEN).min(PAGE_SIZE);
        let mut chain = Chain::of(Segment::new(self.head, PAGE_SIZE, in_page));
        for segment in self.spill.into_segments() {
            // Cannot fail: 1 + MAX_TIERS <= MAX_SEGMENTS.
            let _ = chain.push(segment);
        }
        chain
    }

    /// Every buffer, for reuse (e.g. as the destination of a READ), largest
    /// first where it matters: a ring entry's payload (whole buffer) then
    /// the head block's in-place page; or the in-place page (window = the
    /// page), then the spill-over tiers (window = whole tier). A READ
    /// answered from a ring entry's own payload needs no copy.
    pub fn into_buffers(self) -> Chain {
        if let DataPlace::Payload { .. } = self.place {
            let mut chain = self.spill;
            let _ = chain.push(Segment::new(self.head, PAGE_SIZE, PAGE_SIZE));
            chain.set_len(chain.capacity_from_starts());
            return chain;
        }
        let mut chain = Chain::of(Segment::new(self.head, PAGE_SIZE, PAGE_SIZE));
        for segment in self.spill.into_segments() {
            let _ = chain.push(segment);
        }
        chain.set_len(chain.capacity_from_starts());
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    #[test]
    fn default_layout_for_one_mebibyte() {
        let layout = SpillLayout::default_for(1024 * KIB);
        assert_eq!(layout.tiers(), &[60 * KIB, 960 * KIB]);
        assert_eq!(layout.read_len(), 1024 * KIB + 80);
    }

    #[test]
    fn small_max_write_still_reaches_the_kernel_minimum() {
        let layout = SpillLayout::default_for(4 * KIB);
        assert!(layout.read_len() >= fuse_proto::MIN_READ_BUFFER);
        let layout = SpillLayout::default_for(64 * KIB);
        assert_eq!(layout.tiers(), &[60 * KIB]);
        assert_eq!(layout.read_len(), 64 * KIB + 80);
    }

    #[test]
    fn layout_rejects_bad_bounds() {
        assert_eq!(
            SpillLayout::new(1 << 20, &[5000]),
            Err(LayoutError::Unaligned(5000))
        );
        assert_eq!(
            SpillLayout::new(1 << 20, &[4096]),
            Err(LayoutError::NotIncreasing(4096))
        );
        assert_eq!(
            SpillLayout::new(1 << 20, &[64 * KIB, 32 * KIB]),
            Err(LayoutError::NotIncreasing(32 * KIB))
        );
        assert!(SpillLayout::new(1 << 20, &[8 * KIB, 16 * KIB, 32 * KIB, 64 * KIB]).is_err());
        for bound in [1 << 20, 2 << 20] {
            assert_eq!(
                SpillLayout::new(1 << 20, &[64 * KIB, bound]),
                Err(LayoutError::NotBelowMaxWrite {
                    bound,
                    max_write: 1 << 20
                })
            );
        }
        let three = SpillLayout::new(1 << 20, &[16 * KIB, 128 * KIB]).unwrap();
        assert_eq!(three.tiers(), &[12 * KIB, 112 * KIB, 896 * KIB]);
    }

    /// Which buffers move for each request size around the boundaries.
    #[test]
    fn tiers_touched_at_every_boundary() {
        let layout = SpillLayout::default_for(1024 * KIB);
        let write = |payload: usize| WRITE_HEADER_LEN + payload;
        assert_eq!(layout.tiers_touched(40), 0);
        assert_eq!(layout.tiers_touched(write(4 * KIB)), 0);
        assert_eq!(layout.tiers_touched(write(4 * KIB) + 1), 1);
        assert_eq!(layout.tiers_touched(write(64 * KIB)), 1);
        assert_eq!(layout.tiers_touched(write(64 * KIB) + 1), 2);
        assert_eq!(layout.tiers_touched(write(1024 * KIB)), 2);
    }

    fn write_message(payload: &[u8]) -> Vec<u8> {
        let mut msg = Vec::new();
        let len = (WRITE_HEADER_LEN + payload.len()) as u32;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&16u32.to_ne_bytes()); // WRITE
        msg.extend_from_slice(&2u64.to_ne_bytes()); // unique
        msg.extend_from_slice(&1u64.to_ne_bytes()); // nodeid
        msg.extend_from_slice(&[0; 16]); // uid gid pid extlen pad
        msg.extend_from_slice(&0u64.to_ne_bytes()); // fh
        msg.extend_from_slice(&8192u64.to_ne_bytes()); // offset
        msg.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&[0; 20]); // write_flags lock_owner flags padding
        msg.extend_from_slice(payload);
        msg
    }

    #[test]
    fn slot_hands_over_only_the_tiers_a_write_used() {
        let layout = SpillLayout::default_for(1024 * KIB);
        let mut pool = Pool::new(8);
        for payload_len in [
            0,
            1,
            4 * KIB,
            4 * KIB + 1,
            64 * KIB,
            64 * KIB + 1,
            1024 * KIB,
        ] {
            let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 % 253) as u8).collect();
            let msg = write_message(&payload);
            let mut slot = ReadSlot::new();
            slot.arm(&layout, &mut pool).unwrap();
            // Simulate the kernel's readv scatter.
            let mut rest = &msg[..];
            for iov in &slot.iov[..1 + layout.tiers().len()] {
                let n = rest.len().min(iov.iov_len);
                // SAFETY: the iovecs point into the slot's live buffers and
                // `n` does not exceed their lengths.
                unsafe { core::ptr::copy_nonoverlapping(rest.as_ptr(), iov.iov_base.cast(), n) };
                rest = &rest[n..];
            }
            let incoming = slot.take(msg.len(), &layout).unwrap();
            let expected_tiers = layout.tiers_touched(msg.len());
            assert_eq!(
                incoming.spill_tiers(),
                expected_tiers,
                "payload {payload_len}"
            );
            // Untouched tiers stay with the slot; used ones are gone from it.
            for (i, tier) in slot.tiers.iter().enumerate().take(layout.tiers().len()) {
                assert_eq!(
                    tier.is_some(),
                    i >= expected_tiers,
                    "payload {payload_len} tier {i}"
                );
            }
            assert!(slot.head.is_none());
            let request = incoming.request().unwrap();
            assert!(matches!(request.op, fuse_proto::Operation::Write { .. }));
            let data = incoming.into_write_data();
            assert_eq!(data.len(), payload_len);
            let first = data.segments().next().unwrap();
            assert_eq!(
                first.bytes().as_ptr() as usize % PAGE_SIZE,
                0,
                "payload starts page-aligned"
            );
            let mut out = vec![0u8; payload_len];
            data.copy_out(0, &mut out);
            assert_eq!(out, payload);
            pool.give_chain(data);
            slot.release(&mut pool);
        }
    }

    #[test]
    fn from_message_matches_the_readv_layout() {
        let layout = SpillLayout::default_for(128 * KIB);
        let mut pool = Pool::new(8);
        let payload = vec![0xab; 100 * KIB];
        let incoming =
            Incoming::from_message(&write_message(&payload), &layout, &mut pool).unwrap();
        assert_eq!(incoming.spill_tiers(), 2);
        assert_eq!(incoming.into_write_data().len(), 100 * KIB);
    }
}
