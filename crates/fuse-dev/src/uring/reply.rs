//! Storing a reply in the ring entry of its request.
//!
//! The kernel reads a committed reply from the entry: `fuse_out_header`
//! from the header buffer, every argument from the start of the payload
//! buffer (`payload_sz` bytes). So the inline part of the reply (a struct)
//! and its data (READ) are laid out there, in that order.
//!
//! A READ's data is normally already in place: it was read from the image
//! into the entry's own payload, lent to the request, and the reply's data
//! chain holds that lease with its window at offset 0. Then nothing is
//! copied: the lease is ended and the entry committed. A window that starts
//! later (an unaligned read) is moved down within the payload; data in other
//! buffers (a bounce buffer, a directory listing) is copied in.
//!
//! The payload may only be written once the lease has ended. A reply whose
//! entry's payload is still lent elsewhere (the handler kept some buffer of
//! the request) waits until it comes back ([`Stored::LeaseOut`]).

use fuse_proto::abi::OutHeader;
use fuse_proto::reply::{Errno, OUT_HEADER_LEN, Reply};
use zerocopy::FromBytes;

use super::entries::RingEntries;
use super::ring::RingError;
use crate::buffer::Chain;

/// What [`store_reply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The reply is in the entry; it can be committed.
    Ready,
    /// The entry's payload is lent to something else than the reply: try
    /// again once it is back.
    LeaseOut,
}

/// The entry holding the request `unique`.
pub(crate) fn entry_of(entries: &RingEntries, unique: u64) -> Option<usize> {
    (0..entries.depth()).find(|&e| entries.commit_id(e) == unique && !entries.is_in_kernel(e))
}

/// Stores the reply `header` (out header + inline argument) and `data` in
/// ring entry `entry`. Data the entry's own lent payload holds is moved in
/// place; that lease is ended (taken out of `data`).
pub(crate) fn store_reply(
    entries: &mut RingEntries,
    entry: usize,
    header: &[u8],
    data: Option<&mut Chain>,
) -> Result<Stored, RingError> {
    let Some((out, inline)) = header.split_at_checked(OUT_HEADER_LEN) else {
        return Err(RingError::ReplyTooShort(header.len()));
    };
    let Ok((out, _)) = OutHeader::read_from_prefix(out) else {
        return Err(RingError::ReplyTooShort(header.len()));
    };
    let mut empty = Chain::new();
    let data = data.unwrap_or(&mut empty);
    // Where the entry's own payload sits among the data, if it does.
    let own = data.segments().position(|segment| {
        segment
            .lease()
            .is_some_and(|l| l.belongs_to(entries, entry))
    });
    if own.is_none() && entries.is_lent(entry) {
        return Ok(Stored::LeaseOut);
    }
    let total = inline.len() + data.len();
    if total > entries.payload_len() {
        // Cannot happen for the kernel's requests (a reply never exceeds
        // max_read or the size asked for); answer EIO rather than truncate.
        log::error!(
            "a {total}-byte reply to {} does not fit its ring entry",
            out.unique
        );
        if let Some(position) = own {
            drop(data.take_at(position));
        }
        let error = Reply::error(out.unique, Errno::EIO);
        entries.write_reply(entry, error.as_bytes())?;
        return Ok(Stored::Ready);
    }
    if let Some(position) = own {
        let at = inline.len()
            + data
                .segments()
                .take(position)
                .map(|segment| segment.len())
                .sum::<usize>();
        let taken = data.take_at(position);
        let (start, len) = taken.as_ref().map_or((0, 0), |s| (s.start(), s.len()));
        // The lease ends here; the payload is the queue's again.
        drop(taken);
        if start != at {
            entries
                .payload_mut(entry)?
                .copy_within(start..start + len, at);
        }
        // The other pieces go around it, in order.
        let payload = entries.payload_mut(entry)?;
        payload[..inline.len()].copy_from_slice(inline);
        let mut offset = inline.len();
        for (index, segment) in data.segments().enumerate() {
            if index == position {
                offset += len;
            }
            payload[offset..offset + segment.len()].copy_from_slice(segment.bytes());
            offset += segment.len();
        }
    } else {
        let payload = entries.payload_mut(entry)?;
        payload[..inline.len()].copy_from_slice(inline);
        data.copy_out(0, &mut payload[inline.len()..total]);
    }
    let out = OutHeader {
        len: (OUT_HEADER_LEN + total) as u32,
        ..out
    };
    entries.set_reply_header(entry, out, total)?;
    Ok(Stored::Ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{AlignedBuf, Segment};
    use fuse_proto::abi::AttrOut;

    /// Entries whose entry 0 holds a request with `unique` 8 (as if the
    /// kernel had delivered it).
    fn entries_with_request() -> RingEntries {
        let mut entries = RingEntries::new(2, 16384).unwrap();
        let header = entries.header_mut(0).unwrap();
        header.ring_ent_in_out.commit_id = 8;
        let _ = entries.hand_to_kernel(0).unwrap();
        entries.returned_from_kernel(0, true);
        entries
    }

    fn stored_payload(entries: &RingEntries, entry: usize) -> (OutHeader, Vec<u8>) {
        let header = entries.header(entry).unwrap();
        let (out, _) = OutHeader::read_from_prefix(&header.in_out).unwrap();
        let len = header.ring_ent_in_out.payload_sz as usize;
        (out, entries.payload(entry).unwrap()[..len].to_vec())
    }

    #[test]
    fn a_struct_reply_goes_to_the_payload_and_its_header_to_the_header() {
        let mut entries = entries_with_request();
        assert_eq!(entry_of(&entries, 8), Some(0));
        assert_eq!(entry_of(&entries, 10), None);
        let reply = Reply::with(8, &AttrOut::default());
        let stored = store_reply(&mut entries, 0, reply.as_bytes(), None).unwrap();
        assert_eq!(stored, Stored::Ready);
        let (out, payload) = stored_payload(&entries, 0);
        assert_eq!(out.unique, 8);
        assert_eq!(out.error, 0);
        assert_eq!(payload, &reply.as_bytes()[OUT_HEADER_LEN..]);
    }

    #[test]
    fn data_in_the_entrys_own_payload_is_moved_in_place_not_copied_in() {
        let mut entries = entries_with_request();
        let mut lease = entries.lend(0).unwrap();
        // A READ read its aligned range into the payload; the reply is the
        // window from byte 100.
        for (i, byte) in lease.as_mut_slice()[..8192].iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        let mut data = Chain::of(Segment::lent(lease, 100, 5000));
        let header = Reply::data_header(8, 5000);
        let stored = store_reply(&mut entries, 0, header.as_bytes(), Some(&mut data)).unwrap();
        assert_eq!(stored, Stored::Ready);
        assert!(!entries.is_lent(0), "the lease ended");
        assert_eq!(data.segment_count(), 0, "the lease left the chain");
        let (out, payload) = stored_payload(&entries, 0);
        assert_eq!(out.len as usize, OUT_HEADER_LEN + 5000);
        let expected: Vec<u8> = (100..5100).map(|i| (i % 251) as u8).collect();
        assert_eq!(payload, expected);
    }

    #[test]
    fn data_in_other_buffers_is_copied_after_the_inline_part() {
        let mut entries = entries_with_request();
        let lease = entries.lend(0).unwrap();
        // The payload comes back first (the handler gave it to the pool).
        drop(lease);
        let mut bounce = AlignedBuf::new(4096).unwrap();
        bounce.as_mut_slice()[..3].copy_from_slice(b"abc");
        let mut data = Chain::of(Segment::new(bounce, 0, 3));
        let header = Reply::data_header(8, 3);
        let stored = store_reply(&mut entries, 0, header.as_bytes(), Some(&mut data)).unwrap();
        assert_eq!(stored, Stored::Ready);
        assert_eq!(stored_payload(&entries, 0).1, b"abc");
        assert_eq!(
            data.segment_count(),
            1,
            "the bounce buffer stays for the pool"
        );
    }

    #[test]
    fn a_reply_waits_while_the_payload_is_lent_elsewhere() {
        let mut entries = entries_with_request();
        let lease = entries.lend(0).unwrap();
        let reply = Reply::error(8, Errno::EIO);
        let stored = store_reply(&mut entries, 0, reply.as_bytes(), None).unwrap();
        assert_eq!(stored, Stored::LeaseOut);
        drop(lease);
        let stored = store_reply(&mut entries, 0, reply.as_bytes(), None).unwrap();
        assert_eq!(stored, Stored::Ready);
        let (out, payload) = stored_payload(&entries, 0);
        assert_eq!(out.error, -5);
        assert!(payload.is_empty(), "an error reply has no payload");
    }

    #[test]
    fn a_reply_too_large_for_the_entry_becomes_eio() {
        let mut entries = entries_with_request();
        let big = AlignedBuf::new(32768).unwrap();
        let mut data = Chain::of(Segment::whole(big));
        let header = Reply::data_header(8, 32768);
        let stored = store_reply(&mut entries, 0, header.as_bytes(), Some(&mut data)).unwrap();
        assert_eq!(stored, Stored::Ready);
        let (out, payload) = stored_payload(&entries, 0);
        assert_eq!(out.error, -5);
        assert!(payload.is_empty());
    }
}
