//! The export driven through the FUSE-over-io_uring request path without a
//! kernel: `fuse_dev::serve_fd_as_ring` runs the real ring queue (entries,
//! payloads lent to requests, replies stored in the entry and committed)
//! with a fake device, one end of a `SOCK_SEQPACKET` socketpair, whose
//! messages are laid out the way the kernel fills a ring entry: the 288-byte
//! `fuse_uring_req_header`, then the payload. The real handler, range locks
//! and image I/O serve them.

mod common;

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use blockdev::{Export, ExportOptions};
use common::{
    CountingAllocator, GETATTR, READ, ServedImage, TempDir, WRITE, WriteRead,
    allocations_in_steady_state, assert_reads_match, count_allocations_here, direct_test_image,
    fake_device, pattern, read_args, wait_for_reply, write_args, write_pieces_exactly,
};
use fuse_dev::{QueueConfig, QueueReport, SpillLayout};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const MAX_WRITE: usize = 1 << 20;
/// Entries of the ring queue.
const DEPTH: usize = 8;
/// `sizeof(struct fuse_uring_req_header)` and its parts' offsets.
const HEADER_LEN: usize = 288;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;

/// A reply as the ring entry held it when committed.
struct RingReply {
    unique: u64,
    error: i32,
    payload: Vec<u8>,
}

/// A running ring queue and the test's end of the fake device.
struct FakeRing {
    device: ServedImage,
    next_unique: u64,
}

/// Whether 1 MiB messages fit through the socketpair (raising the socket
/// buffers past `net.core.wmem_max` needs CAP_NET_ADMIN).
fn big_messages_possible(fds: [&OwnedFd; 2]) -> bool {
    fds.iter().all(|fd| {
        rustix::net::sockopt::set_socket_send_buffer_size_force(fd, 16 << 20).is_ok()
            && rustix::net::sockopt::set_socket_recv_buffer_size_force(fd, 16 << 20).is_ok()
    })
}

impl FakeRing {
    fn start(name: &str, size: usize) -> Option<FakeRing> {
        let dir = TempDir::new("fake-ring", name);
        let image_path = dir.0.join("disk.raw");
        let image = direct_test_image(&image_path, size);
        let export = Export::new(image, MAX_WRITE, ExportOptions::default());
        let (ours, theirs) = fake_device();
        if !big_messages_possible([&ours, &theirs]) {
            return None;
        }
        let config = QueueConfig {
            reads: 1,
            max_in_flight: DEPTH,
            layout: SpillLayout::default_for(MAX_WRITE),
            pool_cap: 64,
            standby: false,
        };
        let backing = vec![export.image().raw_fd()];
        let queue = std::thread::spawn(move || {
            count_allocations_here();
            fuse_dev::serve_fd_as_ring(theirs, DEPTH, MAX_WRITE, config, backing, |context| {
                export.queue_handler(context)
            })
        });
        Some(FakeRing {
            device: ServedImage::new(ours, queue, image_path, dir),
            next_unique: 2,
        })
    }

    /// Sends one request the way the kernel fills an entry; returns its
    /// unique.
    fn send(&mut self, opcode: u32, op: &[u8], payload: &[u8]) -> u64 {
        let unique = self.next_unique;
        self.next_unique += 2;
        let mut msg = vec![0u8; HEADER_LEN];
        let len = (40 + op.len() + payload.len()) as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..8].copy_from_slice(&opcode.to_ne_bytes());
        msg[8..16].copy_from_slice(&unique.to_ne_bytes());
        msg[16..24].copy_from_slice(&1u64.to_ne_bytes());
        msg[OP_IN..OP_IN + op.len()].copy_from_slice(op);
        msg[ENT_IN_OUT + 8..ENT_IN_OUT + 16].copy_from_slice(&unique.to_ne_bytes());
        msg[ENT_IN_OUT + 16..ENT_IN_OUT + 20]
            .copy_from_slice(&(payload.len() as u32).to_ne_bytes());
        msg.extend_from_slice(payload);
        let sent = rustix::io::write(self.device.socket(), &msg).unwrap();
        assert_eq!(sent, msg.len());
        unique
    }

    fn send_write(&mut self, offset: u64, data: &[u8]) -> u64 {
        self.send(WRITE, &write_args(offset, data.len()), data)
    }

    fn send_read(&mut self, offset: u64, size: u32) -> u64 {
        self.send(READ, &read_args(offset, size), &[])
    }

    /// The next committed reply. Fails after 10 s.
    fn recv(&self) -> RingReply {
        wait_for_reply(self.device.socket());
        let mut buf = vec![0u8; HEADER_LEN + MAX_WRITE + 4096];
        let n = rustix::io::read(self.device.socket(), &mut buf).unwrap();
        assert!(n >= HEADER_LEN, "reply of {n} bytes");
        let error = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
        let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        let payload_sz =
            u32::from_ne_bytes(buf[ENT_IN_OUT + 16..ENT_IN_OUT + 20].try_into().unwrap()) as usize;
        assert_eq!(
            n,
            HEADER_LEN + payload_sz,
            "the payload is payload_sz bytes"
        );
        if error != 0 {
            assert_eq!(payload_sz, 0, "error replies carry no payload");
        }
        RingReply {
            unique,
            error,
            payload: buf[HEADER_LEN..n].to_vec(),
        }
    }

    /// Disconnects the fake device, waits for the queue to drain, and
    /// returns its report and the image's final bytes.
    fn finish(self) -> (QueueReport, Vec<u8>) {
        self.device.finish()
    }
}

impl WriteRead for FakeRing {
    fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        let unique = self.send_write(offset, data);
        let reply = self.recv();
        assert_eq!((reply.unique, reply.error), (unique, 0));
        u32::from_ne_bytes(reply.payload[0..4].try_into().unwrap())
    }

    fn read(&mut self, offset: u64, size: u32) -> Vec<u8> {
        let unique = self.send_read(offset, size);
        let reply = self.recv();
        assert_eq!((reply.unique, reply.error), (unique, 0));
        reply.payload
    }
}

macro_rules! start_or_skip {
    ($name:expr, $size:expr) => {
        match FakeRing::start($name, $size) {
            Some(ring) => ring,
            None => {
                eprintln!("SKIP: 1 MiB SOCK_SEQPACKET messages need CAP_NET_ADMIN (run as root)");
                return;
            }
        }
    };
}

#[test]
fn ring_entries_carry_aligned_and_unaligned_io_exactly() {
    let size = 8 << 20;
    let mut ring = start_or_skip!("exact", size);
    let shadow = write_pieces_exactly(&mut ring, size);
    // Reads around what was written, aligned and not, up to a whole entry.
    assert_reads_match(
        &mut ring,
        &shadow,
        &[
            (3u64, 5000u32),
            (4000, 200),
            (1 << 20, 1 << 20),
            ((1 << 20) + 1, (1 << 20) - 4096),
            (size as u64 - 7, 100),
        ],
    );
    let (report, image) = ring.finish();
    assert!(report.disconnected, "the peer closing ends the queue");
    assert_eq!(report.spilled, 0, "ring requests use no spill-over");
    assert!(image == shadow, "image differs from the shadow copy");
}

#[test]
fn every_entry_serves_a_request_at_once() {
    let size = 8 << 20;
    let mut ring = start_or_skip!("depth", size);
    // As many requests as entries before any reply: each sits in its own
    // entry; the replies may come in any order.
    let mut expected = HashMap::new();
    for i in 0..DEPTH as u64 {
        let data = pattern(256 << 10, i + 100);
        let unique = ring.send_write(i << 20, &data);
        expected.insert(unique, (i << 20, data));
    }
    for _ in 0..DEPTH {
        let reply = ring.recv();
        assert_eq!(reply.error, 0);
        let (_, data) = expected
            .get(&reply.unique)
            .expect("a reply to a request sent");
        assert_eq!(
            u32::from_ne_bytes(reply.payload[0..4].try_into().unwrap()),
            data.len() as u32
        );
    }
    let mut reads = HashMap::new();
    for (offset, data) in expected.values() {
        reads.insert(ring.send_read(*offset, data.len() as u32), data.clone());
    }
    for _ in 0..DEPTH {
        let reply = ring.recv();
        assert_eq!(reply.error, 0);
        assert!(
            reply.payload == reads[&reply.unique],
            "READ {} returned other bytes",
            reply.unique
        );
    }
    // Struct replies come from the payload too: GETATTR's fuse_attr_out.
    let unique = ring.send(GETATTR, &[0u8; 16], &[]);
    let reply = ring.recv();
    assert_eq!((reply.unique, reply.error), (unique, 0));
    assert_eq!(reply.payload.len(), 104, "sizeof(fuse_attr_out)");
    let attr_size = u64::from_ne_bytes(reply.payload[24..32].try_into().unwrap());
    assert_eq!(attr_size, size as u64);
    let (report, _) = ring.finish();
    assert_eq!(report.requests, 2 * DEPTH as u64 + 1);
}

#[test]
fn ring_steady_state_serves_without_allocating() {
    let mut ring = start_or_skip!("alloc", 16 << 20);
    assert_eq!(
        allocations_in_steady_state(&mut ring),
        0,
        "the ring queue thread allocated in steady state"
    );
    let (report, _) = ring.finish();
    assert!(report.requests >= 250 * 6);
}

#[test]
fn aligned_io_goes_through_the_entry_without_a_bounce_buffer() {
    let mut ring = start_or_skip!("zero-copy", 8 << 20);
    for (i, len) in [4096usize, 65536, 1 << 20].into_iter().enumerate() {
        let data = pattern(len, i as u64 + 7);
        let offset = (i as u64) << 20;
        assert_eq!(ring.write(offset, &data), len as u32);
        assert!(ring.read(offset, len as u32) == data);
    }
    let (report, _) = ring.finish();
    // WRITE data went to the image from the entry's payload and READ data
    // came from the image into it: the pool only ever mapped the head
    // blocks it starts with, never a bounce buffer.
    assert!(
        report.pool.allocated <= DEPTH as u64,
        "aligned requests needed pool buffers: {:?}",
        report.pool
    );
}
