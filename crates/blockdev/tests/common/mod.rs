//! Harness shared by the tests that drive the export through a fake device
//! (one end of a `SOCK_SEQPACKET` socketpair in place of `/dev/fuse`): a
//! counting allocator, a temporary directory, the socketpair, the test
//! image and the request arguments every one of them sends.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use blockdev::{CacheMode, Image};
use fuse_dev::QueueReport;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

pub const WRITE: u32 = 16;
pub const READ: u32 = 15;
pub const GETATTR: u32 = 3;

/// Counts allocations made by threads that opted in (the queue thread,
/// through [`count_allocations_here`]). A test binary installs it with
/// `#[global_allocator] static ALLOCATOR: CountingAllocator = CountingAllocator;`.
pub struct CountingAllocator;

static QUEUE_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNT_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Makes the calling thread's allocations count.
pub fn count_allocations_here() {
    COUNT_HERE.with(|c| c.set(true));
}

/// Allocations counted so far, by every thread that opted in.
pub fn queue_allocations() -> u64 {
    QUEUE_ALLOCATIONS.load(Ordering::Relaxed)
}

// SAFETY: defers every operation to the system allocator unchanged; the
// counting touches only an atomic and a const-initialised thread-local,
// neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNT_HERE.with(Cell::get) {
            QUEUE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNT_HERE.with(Cell::get) {
            QUEUE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A directory under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `<temp>/<prefix>-<pid>-<name>-<n>`, unique within the process.
    pub fn new(prefix: &str, name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{name}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The two ends of a fake device: (the test's, the queue's).
pub fn fake_device() -> (OwnedFd, OwnedFd) {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

/// A queue thread serving a test image over a fake device, and the test's
/// end of that device. Dropping it disconnects the device and waits for
/// the queue.
pub struct ServedImage {
    socket: Option<OwnedFd>,
    queue: Option<JoinHandle<std::io::Result<QueueReport>>>,
    pub image_path: PathBuf,
    dir: Option<TempDir>,
}

impl ServedImage {
    /// `queue` serves the image at `image_path` (inside `dir`) over the
    /// other end of `socket`.
    pub fn new(
        socket: OwnedFd,
        queue: JoinHandle<std::io::Result<QueueReport>>,
        image_path: PathBuf,
        dir: TempDir,
    ) -> ServedImage {
        ServedImage {
            socket: Some(socket),
            queue: Some(queue),
            image_path,
            dir: Some(dir),
        }
    }

    pub fn socket(&self) -> &OwnedFd {
        self.socket.as_ref().unwrap()
    }

    /// Disconnects the fake device, waits for the queue to drain, and
    /// returns its report and the image's final bytes.
    pub fn finish(mut self) -> (QueueReport, Vec<u8>) {
        drop(self.socket.take());
        let report = self.queue.take().unwrap().join().unwrap().unwrap();
        let image = std::fs::read(&self.image_path).unwrap();
        drop(self.dir.take());
        (report, image)
    }
}

impl Drop for ServedImage {
    fn drop(&mut self) {
        drop(self.socket.take());
        if let Some(queue) = self.queue.take() {
            let _ = queue.join();
        }
    }
}

/// The bytes every test image starts with: byte `i` is `i % 249`.
pub fn initial_bytes(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 249) as u8).collect()
}

/// Writes a `size`-byte image of [`initial_bytes`] at `path` and opens it
/// with O_DIRECT (failing the test where the filesystem has none).
pub fn direct_test_image(path: &Path, size: usize) -> Image {
    std::fs::write(path, initial_bytes(size)).unwrap();
    let image = Image::open(path, false, CacheMode::None).unwrap();
    assert!(
        image.is_direct(),
        "the test image must be on a filesystem with O_DIRECT"
    );
    image
}

/// A request as `/dev/fuse` delivers it: `fuse_in_header` (node 1, no
/// credentials), then `args`, then `data`.
pub fn request_message(opcode: u32, unique: u64, args: &[u8], data: &[u8]) -> Vec<u8> {
    let len = 40 + args.len() + data.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&opcode.to_ne_bytes());
    msg.extend_from_slice(&unique.to_ne_bytes());
    msg.extend_from_slice(&1u64.to_ne_bytes()); // nodeid
    msg.extend_from_slice(&[0u8; 16]); // uid gid pid extlen padding
    msg.extend_from_slice(args);
    msg.extend_from_slice(data);
    msg
}

/// `fuse_write_in` of a WRITE of `len` bytes at `offset`.
pub fn write_args(offset: u64, len: usize) -> Vec<u8> {
    let mut args = Vec::new();
    args.extend_from_slice(&0u64.to_ne_bytes()); // fh
    args.extend_from_slice(&offset.to_ne_bytes());
    args.extend_from_slice(&(len as u32).to_ne_bytes());
    args.extend_from_slice(&[0u8; 20]); // write_flags lock_owner flags padding
    args
}

/// `fuse_read_in` of a READ of `size` bytes at `offset`.
pub fn read_args(offset: u64, size: u32) -> Vec<u8> {
    let mut args = Vec::new();
    args.extend_from_slice(&0u64.to_ne_bytes()); // fh
    args.extend_from_slice(&offset.to_ne_bytes());
    args.extend_from_slice(&size.to_ne_bytes());
    args.extend_from_slice(&[0u8; 20]); // read_flags lock_owner flags padding
    args
}

/// Waits until `socket` has a message; fails the test after 10 s (a hang
/// guard, not a timing assertion).
pub fn wait_for_reply(socket: &OwnedFd) {
    let mut pollfd = [rustix::event::PollFd::new(
        socket,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    let ready = rustix::event::poll(&mut pollfd, Some(&timeout)).unwrap();
    assert_eq!(ready, 1, "no reply within 10 s");
}

/// What the exactness tests do through a fake device: a WRITE that must
/// succeed, returning the bytes written, and a READ that must succeed,
/// returning its data.
pub trait WriteRead {
    fn write(&mut self, offset: u64, data: &[u8]) -> u32;
    fn read(&mut self, offset: u64, size: u32) -> Vec<u8>;
}

/// Writes aligned and unaligned pieces into a `size`-byte image of
/// [`initial_bytes`] (at least 4 MiB), reading each back at once, and
/// returns what the image must hold now.
pub fn write_pieces_exactly(device: &mut impl WriteRead, size: usize) -> Vec<u8> {
    let mut shadow = initial_bytes(size);
    let cases: &[(u64, usize)] = &[
        (0, 4096),
        (4096, 65536),
        (1 << 20, 1 << 20),
        (1, 1),
        (511, 2),
        (4095, 4097),
        (12345, 70000),
        ((3 << 20) - 3, (1 << 20) - 100),
        (size as u64 - 10, 10),
    ];
    for (i, &(offset, len)) in cases.iter().enumerate() {
        let data = pattern(len, i as u64 + 1);
        assert_eq!(
            device.write(offset, &data),
            len as u32,
            "write at {offset}+{len}"
        );
        shadow[offset as usize..offset as usize + len].copy_from_slice(&data);
        let back = device.read(offset, len as u32);
        assert!(back == data, "read back at {offset}+{len} differs");
    }
    shadow
}

/// Runs 50 rounds of six requests (writes of 1 MiB, 64 KiB, 4 KiB and 777
/// bytes, two reads) over a 16 MiB image to warm the queue up, then 200
/// more; returns the allocations the queue thread made during those 200.
pub fn allocations_in_steady_state(device: &mut impl WriteRead) -> u64 {
    let big = pattern(1 << 20, 1);
    let mid = pattern(65536, 2);
    let small = pattern(4096, 3);
    let odd = pattern(777, 4);
    let mut round = |i: u64| {
        let base = (i % 8) << 20;
        assert_eq!(device.write(base, &big), 1 << 20);
        assert_eq!(device.write(base + 65536, &mid), 65536);
        assert_eq!(device.write(base + 4096, &small), 4096);
        assert_eq!(device.write(base + 13, &odd), 777);
        assert_eq!(device.read(base, 1 << 20).len(), 1 << 20);
        assert_eq!(device.read(base + 5, 4000).len(), 4000);
    };
    for i in 0..50 {
        round(i);
    }
    let before = queue_allocations();
    for i in 0..200 {
        round(i);
    }
    queue_allocations() - before
}

/// Reads each `(offset, len)` and compares it with what `shadow` holds
/// there (a read past its end returns only what is inside).
pub fn assert_reads_match(device: &mut impl WriteRead, shadow: &[u8], reads: &[(u64, u32)]) {
    for &(offset, len) in reads {
        let back = device.read(offset, len);
        let end = (offset as usize + len as usize).min(shadow.len());
        assert!(
            back == shadow[offset as usize..end],
            "read at {offset}+{len} differs"
        );
    }
}

/// Deterministic pseudo-random bytes (xorshift) for `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
