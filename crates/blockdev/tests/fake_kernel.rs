//! The export driven through a fake device: one end of a `SOCK_SEQPACKET`
//! socketpair stands in for `/dev/fuse` (one message = one request, one
//! message = one reply), so the real queue loop, buffers, spill-over
//! hand-over, range locks and image I/O run without a kernel mount.

mod common;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use blockdev::{CacheMode, Export, ExportOptions, Image};
use common::{
    CountingAllocator, GETATTR, READ, ServedImage, TempDir, WRITE, WriteRead,
    allocations_in_steady_state, assert_reads_match, count_allocations_here, direct_test_image,
    fake_device, pattern, read_args, request_message, wait_for_reply, write_args,
    write_pieces_exactly,
};
use fuse_dev::{QueueConfig, QueueReport, SpillLayout, Waker};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const MAX_WRITE: usize = 1 << 20;
const SETATTR: u32 = 4;
/// `FATTR_*` bits of `fuse_setattr_in.valid`.
const FATTR_MODE: u32 = 1;
const FATTR_UID: u32 = 2;
const FATTR_SIZE: u32 = 8;
/// Offsets in a `fuse_attr_out` reply of the size, mode and uid.
const ATTR_OUT_SIZE: usize = 16 + 8;
const ATTR_OUT_MODE: usize = 16 + 60;
const ATTR_OUT_UID: usize = 16 + 68;

/// A running queue and the test's end of the fake device.
struct FakeKernel {
    device: ServedImage,
    next_unique: u64,
    /// The export the queue serves (to hold range locks from outside).
    export: Arc<Export>,
    /// Makes the queue retry what it parked.
    waker: Waker,
}

/// The largest message of the tests that send whole 1 MiB requests and
/// replies (header and WRITE arguments included, with room to spare).
const LARGE_MESSAGES: usize = MAX_WRITE + 4096;
/// The largest message of every other test; fits the default socket
/// buffers (net.core.wmem_default, 208 KiB on common systems).
const SMALL_MESSAGES: usize = 64 << 10;

/// Makes room for messages of up to `largest` bytes on both ends of the
/// socketpair, or says why there is none. A SOCK_SEQPACKET message must fit
/// its sender's buffer (less 32 bytes of overhead); the buffers grow up to
/// `net.core.wmem_max` for anyone and past it with CAP_NET_ADMIN.
fn make_room_for(fds: [&OwnedFd; 2], largest: usize) -> Result<(), String> {
    use rustix::net::sockopt;
    const WANTED: usize = 8 << 20;
    for fd in fds {
        for forced in [true, false] {
            let raised = if forced {
                sockopt::set_socket_send_buffer_size_force(fd, WANTED)
                    .and_then(|()| sockopt::set_socket_recv_buffer_size_force(fd, WANTED))
            } else {
                sockopt::set_socket_send_buffer_size(fd, WANTED)
                    .and_then(|()| sockopt::set_socket_recv_buffer_size(fd, WANTED))
            };
            if raised.is_ok() {
                break;
            }
        }
        let send_buffer = sockopt::socket_send_buffer_size(fd).unwrap();
        if send_buffer < largest + 32 {
            return Err(format!(
                "{largest}-byte SOCK_SEQPACKET messages do not fit a {send_buffer}-byte socket \
                 buffer (without CAP_NET_ADMIN it stops at net.core.wmem_max)"
            ));
        }
    }
    Ok(())
}

impl FakeKernel {
    /// `Err` (saying why) when messages of up to `largest` bytes cannot be
    /// carried.
    fn start(
        name: &str,
        size: usize,
        options: ExportOptions,
        largest: usize,
    ) -> Result<FakeKernel, String> {
        let dir = TempDir::new("fake-kernel", name);
        let image_path = dir.0.join("disk.raw");
        let image = direct_test_image(&image_path, size);
        let export = Export::new(image, MAX_WRITE, options);
        let (ours, theirs) = fake_device();
        make_room_for([&ours, &theirs], largest)?;
        let config = QueueConfig {
            reads: 4,
            max_in_flight: 64,
            layout: SpillLayout::default_for(MAX_WRITE),
            pool_cap: 64,
            standby: false,
        };
        let backing = vec![export.image().raw_fd()];
        let served = export.clone();
        let (waker_tx, waker_rx) = std::sync::mpsc::channel();
        let queue = std::thread::spawn(move || {
            count_allocations_here();
            fuse_dev::serve_fd(theirs, config, backing, |context| {
                let _ = waker_tx.send(context.wakers[0].clone());
                served.queue_handler(context)
            })
        });
        let waker = waker_rx.recv().expect("the queue hands out its waker");
        Ok(FakeKernel {
            device: ServedImage::new(ours, queue, image_path, dir),
            next_unique: 2,
            export,
            waker,
        })
    }

    fn frame(&mut self, opcode: u32, args: &[u8], data: &[u8]) -> (u64, Vec<u8>) {
        let unique = self.next_unique;
        self.next_unique += 2;
        (unique, request_message(opcode, unique, args, data))
    }

    fn send_raw(&self, msg: &[u8]) {
        let sent = rustix::io::write(self.device.socket(), msg).unwrap();
        assert_eq!(sent, msg.len());
    }

    fn send(&mut self, opcode: u32, args: &[u8], data: &[u8]) -> u64 {
        let (unique, msg) = self.frame(opcode, args, data);
        self.send_raw(&msg);
        unique
    }

    fn send_write(&mut self, offset: u64, data: &[u8]) -> u64 {
        self.send(WRITE, &write_args(offset, data.len()), data)
    }

    fn send_read(&mut self, offset: u64, size: u32) -> u64 {
        self.send(READ, &read_args(offset, size), &[])
    }

    fn send_setattr(&mut self, valid: u32, size: u64, mode: u32, uid: u32) -> u64 {
        let mut args = vec![0u8; 88];
        args[0..4].copy_from_slice(&valid.to_ne_bytes());
        args[16..24].copy_from_slice(&size.to_ne_bytes());
        args[68..72].copy_from_slice(&mode.to_ne_bytes());
        args[76..80].copy_from_slice(&uid.to_ne_bytes());
        self.send(SETATTR, &args, &[])
    }

    /// The next reply: (unique, error, payload). Fails after 10 s.
    fn recv(&self) -> (u64, i32, Vec<u8>) {
        wait_for_reply(self.device.socket());
        let mut buf = vec![0u8; MAX_WRITE + 4096];
        let n = rustix::io::read(self.device.socket(), &mut buf).unwrap();
        assert!(n >= 16, "reply of {n} bytes");
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, n, "reply header length must equal the message length");
        let error = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
        let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        if error != 0 {
            assert_eq!(n, 16, "error replies are exactly 16 bytes");
        }
        (unique, error, buf[16..n].to_vec())
    }

    /// Disconnects the fake device, waits for the queue to drain, and
    /// returns its report and the image's final bytes.
    fn finish(self) -> (QueueReport, Vec<u8>) {
        self.device.finish()
    }
}

impl WriteRead for FakeKernel {
    fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        let unique = self.send_write(offset, data);
        let (got, error, payload) = self.recv();
        assert_eq!((got, error), (unique, 0));
        u32::from_ne_bytes(payload[0..4].try_into().unwrap())
    }

    fn read(&mut self, offset: u64, size: u32) -> Vec<u8> {
        let unique = self.send_read(offset, size);
        let (got, error, payload) = self.recv();
        assert_eq!((got, error), (unique, 0));
        payload
    }
}

/// Starts a [`FakeKernel`], or prints `SKIP: <test>: <reason>` and returns
/// from the test when its messages (of up to `largest` bytes, default
/// [`SMALL_MESSAGES`]) cannot be carried here.
macro_rules! start_or_skip {
    ($name:expr, $size:expr, $options:expr) => {
        start_or_skip!($name, $size, $options, SMALL_MESSAGES)
    };
    ($name:expr, $size:expr, $options:expr, $largest:expr) => {
        match FakeKernel::start($name, $size, $options, $largest) {
            Ok(kernel) => kernel,
            Err(reason) => {
                let thread = std::thread::current();
                eprintln!("SKIP: {}: {reason}", thread.name().unwrap_or($name));
                return;
            }
        }
    };
}

#[test]
fn aligned_and_unaligned_writes_land_exactly() {
    let size = 8 << 20;
    let mut kernel = start_or_skip!("exact", size, ExportOptions::default(), LARGE_MESSAGES);
    let shadow = write_pieces_exactly(&mut kernel, size);
    // Odd reads around what was written.
    assert_reads_match(
        &mut kernel,
        &shadow,
        &[
            (3u64, 5000u32),
            (4000, 200),
            (1 << 20, 1 << 20),
            (size as u64 - 7, 100),
        ],
    );
    let (report, image) = kernel.finish();
    assert!(report.disconnected);
    assert!(image == shadow, "image differs from the shadow copy");
}

#[test]
fn writes_past_the_end_are_short_and_reads_stop_there() {
    let size = 1 << 20;
    let mut kernel = start_or_skip!("eof", size, ExportOptions::default());
    assert_eq!(kernel.write(size as u64 - 4096, &[7u8; 8192]), 4096);
    // Nothing fits: ENOSPC (a 0-byte write is EIO for asynchronous clients).
    for offset in [size as u64, size as u64 + 12345] {
        let unique = kernel.send_write(offset, &[7u8; 4096]);
        assert_eq!(kernel.recv(), (unique, -28, vec![]), "write at {offset}");
    }
    assert_eq!(kernel.read(size as u64 - 100, 4096).len(), 100);
    assert!(kernel.read(size as u64, 4096).is_empty());
    let (_, image) = kernel.finish();
    assert_eq!(image.len(), size);
}

#[test]
fn growable_export_grows_on_writes_past_the_end() {
    let size = 1 << 20;
    let options = ExportOptions {
        growable: true,
        ..ExportOptions::default()
    };
    let mut kernel = start_or_skip!("grow", size, options);
    let data = pattern(10_000, 9);
    assert_eq!(kernel.write(size as u64 + 100, &data), 10_000);
    assert!(kernel.read(size as u64 + 100, 10_000) == data);
    let (_, image) = kernel.finish();
    assert_eq!(image.len(), size + 10_100);
    assert!(image[size + 100..] == data);
}

#[test]
fn overlapping_writes_in_flight_never_resurrect_old_bytes() {
    let mut kernel = start_or_skip!("overlap", 4 << 20, ExportOptions::default());
    let original = kernel.read(0, 40_000);
    // Pipelined without waiting: unaligned writes sharing blocks. Without
    // the range lock, a read-modify-write could put old bytes back over a
    // write that finished in between.
    let writes: Vec<(usize, Vec<u8>)> = (0..64)
        .map(|i| (1000 + i * 331, pattern(5000 + i * 7, 100 + i as u64)))
        .collect();
    let mut uniques = Vec::new();
    for (offset, data) in &writes {
        uniques.push(kernel.send_write(*offset as u64, data));
    }
    let mut answered = Vec::new();
    for _ in &writes {
        let (unique, error, payload) = kernel.recv();
        assert_eq!(error, 0);
        let written = u32::from_ne_bytes(payload[0..4].try_into().unwrap()) as usize;
        let index = uniques.iter().position(|&u| u == unique).unwrap();
        assert_eq!(written, writes[index].1.len());
        answered.push(unique);
    }
    answered.sort_unstable();
    assert_eq!(answered, uniques);
    let result = kernel.read(0, 40_000);
    for (position, &byte) in result.iter().enumerate() {
        let candidates: Vec<u8> = writes
            .iter()
            .filter(|(offset, data)| (*offset..offset + data.len()).contains(&position))
            .map(|(offset, data)| data[position - offset])
            .collect();
        if candidates.is_empty() {
            assert_eq!(
                byte, original[position],
                "byte {position} outside every write changed"
            );
        } else {
            assert!(
                candidates.contains(&byte),
                "byte {position} holds data no write put there"
            );
        }
    }
}

/// A growing write that starts inside a block past the end and ends on a
/// block boundary stays O_DIRECT: the partial head block is zeros without
/// a read, and the gap before it reads as zeros too.
#[test]
fn growing_write_with_an_unaligned_start_past_the_end() {
    let size = 1 << 20;
    let options = ExportOptions {
        growable: true,
        ..ExportOptions::default()
    };
    let mut kernel = start_or_skip!("grow-unaligned-start", size, options);
    let offset = size as u64 + 8192 + 100;
    let data = pattern(4096 - 100, 11);
    assert_eq!(kernel.write(offset, &data), data.len() as u32);
    assert!(
        kernel.export.image().is_direct(),
        "an aligned end keeps O_DIRECT"
    );
    assert_eq!(kernel.export.image().size(), size as u64 + 3 * 4096);
    let gap = kernel.read(size as u64, 8192 + 100);
    assert!(
        gap.iter().all(|&b| b == 0),
        "the gap before the write reads zeros"
    );
    assert!(kernel.read(offset, data.len() as u32) == data);
    let (_, image) = kernel.finish();
    assert_eq!(image.len(), size + 3 * 4096);
    assert!(image[size..size + 8192 + 100].iter().all(|&b| b == 0));
}

/// A resize that has to wait for a write in flight applies its mode change
/// when it runs, on top of what changed meanwhile: a chown answered while
/// it waited stays.
#[test]
fn a_resize_that_waited_keeps_owner_changes_answered_meanwhile() {
    let options = ExportOptions {
        allow_other: true,
        ..ExportOptions::default()
    };
    let mut kernel = start_or_skip!("parked-setattr", 1 << 20, options);
    // A write in flight, as far as the locks know.
    let write = kernel.export.locks().try_lock(0, 4096, 0).unwrap();
    let resize = kernel.send_setattr(FATTR_SIZE | FATTR_MODE, 2 << 20, 0o640, 0);
    let chown = kernel.send_setattr(FATTR_UID, 0, 0, 1234);
    let (got, error, attr) = kernel.recv();
    assert_eq!((got, error), (chown, 0), "the chown is answered first");
    let field = |attr: &[u8], at: usize| u32::from_ne_bytes(attr[at..at + 4].try_into().unwrap());
    assert_eq!(field(&attr, ATTR_OUT_UID), 1234);
    kernel.export.locks().unlock(write);
    kernel.waker.wake();
    let (got, error, attr) = kernel.recv();
    assert_eq!((got, error), (resize, 0));
    let size = u64::from_ne_bytes(attr[ATTR_OUT_SIZE..ATTR_OUT_SIZE + 8].try_into().unwrap());
    assert_eq!(size, 2 << 20);
    assert_eq!(field(&attr, ATTR_OUT_MODE) & 0o7777, 0o640);
    assert_eq!(
        field(&attr, ATTR_OUT_UID),
        1234,
        "the resize undid the chown"
    );
    let (_, image) = kernel.finish();
    assert_eq!(image.len(), 2 << 20);
}

/// A read-modify-write whose fill read comes back short inside the image
/// (here: the file was truncated behind the export's back) fails with EIO
/// instead of writing zeros over the missing part.
#[test]
fn a_short_fill_read_inside_the_image_is_an_error_not_zeros() {
    let size = 1 << 20;
    let mut kernel = start_or_skip!("short-fill", size, ExportOptions::default());
    let shrunk = 512 << 10;
    std::fs::File::options()
        .write(true)
        .open(&kernel.device.image_path)
        .and_then(|file| file.set_len(shrunk))
        .unwrap();
    let unique = kernel.send_write(600_000 + 100, &[9u8; 100]);
    assert_eq!(kernel.recv(), (unique, -5, vec![]));
    let (_, image) = kernel.finish();
    assert_eq!(
        image.len() as u64,
        shrunk,
        "the failed write extended the image"
    );
}

#[test]
fn malformed_and_unknown_requests_get_error_replies() {
    let mut kernel = start_or_skip!("bad", 1 << 20, ExportOptions::default());
    // Unknown opcode: ENOSYS.
    let unique = kernel.send(9999, &[1, 2, 3], &[]);
    assert_eq!(kernel.recv(), (unique, -38, vec![]));
    // Header length disagrees with the message: EIO, still answered.
    let (unique, mut msg) = kernel.frame(GETATTR, &[0u8; 16], &[]);
    msg[0] = 99;
    kernel.send_raw(&msg);
    assert_eq!(kernel.recv(), (unique, -5, vec![]));
    // READ whose arguments are cut short: EIO.
    let (unique, msg) = kernel.frame(READ, &[0u8; 10], &[]);
    kernel.send_raw(&msg);
    assert_eq!(kernel.recv(), (unique, -5, vec![]));
    // Too short to carry a header: dropped, and the queue keeps serving.
    kernel.send_raw(&[1, 2, 3]);
    let unique = kernel.send(GETATTR, &[0u8; 16], &[]);
    let (got, error, payload) = kernel.recv();
    assert_eq!((got, error, payload.len()), (unique, 0, 104));
    let size = u64::from_ne_bytes(payload[24..32].try_into().unwrap());
    assert_eq!(size, 1 << 20);
}

/// Steady state allocates nothing: buffers cycle through the pool, job
/// entries are reused, replies are encoded inline.
#[test]
fn steady_state_serves_without_allocating() {
    let mut kernel = start_or_skip!("alloc", 16 << 20, ExportOptions::default(), LARGE_MESSAGES);
    assert_eq!(
        allocations_in_steady_state(&mut kernel),
        0,
        "the queue thread allocated in steady state"
    );
    let (report, _) = kernel.finish();
    assert!(report.requests >= 250 * 6);
    assert!(
        report.spilled >= 250 * 2,
        "1 MiB and 64 KiB writes use the spill-over"
    );
}

#[test]
fn small_writes_never_take_a_spill_tier() {
    let mut kernel = start_or_skip!("tiers", 1 << 20, ExportOptions::default());
    for i in 0..100 {
        assert_eq!(kernel.write(i * 4096, &[i as u8; 4096]), 4096);
    }
    let (report, _) = kernel.finish();
    assert_eq!(report.spilled, 0);
    // Each posted read took one head block; nothing else was mapped.
    assert!(report.pool.allocated < 40, "{:?}", report.pool);
}

#[test]
fn shared_image_state_is_visible_to_the_export() {
    // Export::attr presents the image file as it is: its size, allocation
    // and times, with the presented mode and owner, one link, the root's
    // inode and a block size fit for O_DIRECT on it; and it follows what
    // happens to the file behind the export's back.
    let dir = TempDir::new("fake-kernel", "attr");
    let path = dir.0.join("a.raw");
    // Sparse, so that the block count is not just size / 512.
    let file = std::fs::File::create_new(&path).unwrap();
    file.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[1u8; 8192], 0).unwrap();
    let image = Image::open(&path, true, CacheMode::None).unwrap();
    let export = Export::new(image, MAX_WRITE, ExportOptions::default());
    let matches_the_file = |when: &str| {
        let attr = export.attr().unwrap();
        let stat = rustix::fs::stat(&path).unwrap();
        let times = |attr: &fuse_proto::abi::Attr| {
            [
                (attr.atime, attr.atimensec),
                (attr.mtime, attr.mtimensec),
                (attr.ctime, attr.ctimensec),
            ]
        };
        let file_times = [
            (stat.st_atime as u64, stat.st_atime_nsec as u32),
            (stat.st_mtime as u64, stat.st_mtime_nsec as u32),
            (stat.st_ctime as u64, stat.st_ctime_nsec as u32),
        ];
        assert_eq!(attr.size, 1 << 20, "size {when}");
        assert_eq!(attr.blocks, stat.st_blocks as u64, "blocks {when}");
        assert_eq!(times(&attr), file_times, "atime, mtime, ctime {when}");
        assert_eq!(attr.mode, libc_mode_regular() | 0o400, "mode {when}");
        assert_eq!(attr.nlink, 1, "nlink {when}");
        assert_eq!(
            (attr.uid, attr.gid),
            (
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw()
            ),
            "owner {when}"
        );
        assert_eq!(attr.ino, fuse_proto::ROOT_ID, "ino {when}");
        assert!(
            attr.blksize >= 4096
                && u64::from(attr.blksize).is_multiple_of(export.image().alignment()),
            "blksize {} {when} (alignment {})",
            attr.blksize,
            export.image().alignment()
        );
        (attr.blocks, attr.mtime)
    };
    let (blocks_before, _) = matches_the_file("as opened");

    // Another writer fills a hole and sets the modification time.
    std::os::unix::fs::FileExt::write_all_at(&file, &[2u8; 65536], 512 << 10).unwrap();
    let modified = std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 123_456_789);
    file.set_modified(modified).unwrap();
    let (blocks_after, mtime_after) = matches_the_file("after another writer");
    assert!(
        blocks_after > blocks_before,
        "the attributes did not follow the new allocation ({blocks_before} -> {blocks_after})"
    );
    assert_eq!(mtime_after, 1_000_000_000, "mtime after set_modified");
    let _keep: Arc<Export> = export;
}

fn libc_mode_regular() -> u32 {
    0o100000
}
