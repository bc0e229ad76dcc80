//! Durability: a write the client was told is stable is on stable storage.
//!
//! The image lives on an ext4 filesystem on a loop device the test makes
//! (over a file in its scratch directory). Every cache flush ext4 sends to
//! make an `fdatasync`/`fsync` or an `O_DSYNC` write durable reaches the
//! loop driver, which counts it in `/sys/block/loopN/stat` ("flush I/Os").
//! The same client writes run on the plain image file (the reference, which
//! shows the layering counts one flush per synchronous write) and through
//! the export; an export that acknowledges an `O_DSYNC` write before its
//! data is durable shows fewer flushes than writes. Plain writes must not
//! each cost a flush: the fix must not make every write synchronous.
//!
//! The loop device uses its default buffered I/O on the backing file: a
//! flush at the loop device is an `fsync` of that file, and the counter
//! sits exactly between ext4 (which decides when to flush) and the storage
//! below, whatever that storage does with it.

mod common;

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use rustix::fs::{Mode, OFlags};
use rustix::io::ReadWriteFlags;

/// `O_DSYNC` (rustix's `OFlags::DSYNC` is `O_SYNC` on Linux).
const O_DSYNC: OFlags = OFlags::from_bits_retain(libc::O_DSYNC as u32);
/// Writes per client run: the 50 `O_DSYNC` 4 KiB writes.
const WRITES: u64 = 50;
/// Bytes per write.
const PAGE: usize = 4096;
/// Where in each page, and how much, an unaligned write writes.
const UNALIGNED_SKIP: usize = 100;
const UNALIGNED_LEN: usize = 1000;
/// The image: small, fully written (so that overwrites change no extents).
const IMAGE_SIZE: u64 = 16 * MIB;
/// The loop device's backing file (ext4 needs some room for its journal).
const BACKING_SIZE: u64 = 128 * MIB;

/// How a client writes its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientWrites {
    /// `open(O_RDWR)`, `pwrite`: nothing asks for durability.
    Plain,
    /// `open(O_RDWR | O_DSYNC)`, `pwrite`.
    OpenDsync,
    /// `open(O_RDWR | O_SYNC)`, `pwrite`.
    OpenSync,
    /// `open(O_RDWR | O_DSYNC)`, `pwrite` of 1000 bytes at offset 100 of
    /// each page (the export's read-modify-write path).
    OpenDsyncUnaligned,
    /// `open(O_RDWR | O_DIRECT)`, `pwritev2(RWF_DSYNC)`.
    DirectRwfDsync,
    /// `open(O_RDWR)`, `pwritev2(RWF_SYNC)`.
    RwfSync,
    /// `open(O_RDWR)`, `pwrite` then `fdatasync` for each page (FSYNC).
    FdatasyncEach,
}

impl ClientWrites {
    const ALL: [ClientWrites; 7] = [
        ClientWrites::Plain,
        ClientWrites::OpenDsync,
        ClientWrites::OpenSync,
        ClientWrites::OpenDsyncUnaligned,
        ClientWrites::DirectRwfDsync,
        ClientWrites::RwfSync,
        ClientWrites::FdatasyncEach,
    ];

    /// Whether each write must be durable before the call returns.
    fn synchronous(self) -> bool {
        self != ClientWrites::Plain
    }

    /// Writes [`WRITES`] pages (or parts of pages) at the start of `path`,
    /// each filled with `fill`, then closes it.
    fn run(self, path: &Path, fill: u8) -> io::Result<()> {
        let mut open_flags = OFlags::RDWR | OFlags::CLOEXEC;
        let mut write_flags = ReadWriteFlags::empty();
        match self {
            ClientWrites::Plain | ClientWrites::FdatasyncEach => {}
            ClientWrites::OpenDsync | ClientWrites::OpenDsyncUnaligned => open_flags |= O_DSYNC,
            ClientWrites::OpenSync => open_flags |= OFlags::SYNC,
            ClientWrites::DirectRwfDsync => {
                open_flags |= OFlags::DIRECT;
                write_flags = ReadWriteFlags::DSYNC;
            }
            ClientWrites::RwfSync => write_flags = ReadWriteFlags::SYNC,
        }
        let file = rustix::fs::open(path, open_flags, Mode::empty())?;
        let mut page = AlignedBuf::zeroed(PAGE);
        page.as_mut_slice().fill(fill);
        let (skip, len) = match self {
            ClientWrites::OpenDsyncUnaligned => (UNALIGNED_SKIP, UNALIGNED_LEN),
            _ => (0, PAGE),
        };
        for index in 0..WRITES {
            let slices = [IoSlice::new(&page.as_slice()[..len])];
            let offset = index * PAGE as u64 + skip as u64;
            let written = rustix::io::pwritev2(&file, &slices, offset, write_flags)?;
            if written != len {
                return Err(io::Error::other(format!(
                    "short write of {written} bytes at page {index}"
                )));
            }
            if self == ClientWrites::FdatasyncEach {
                rustix::fs::fdatasync(&file)?;
            }
        }
        Ok(())
    }
}

/// An ext4 filesystem on a loop device over a file in the test directory,
/// holding a fully written image.
struct FlushCounter {
    // Unmounted before the device is detached (fields drop in order).
    _fs: MountedFs,
    device: LoopDevice,
    image: PathBuf,
}

impl FlushCounter {
    fn new(dir: &TestDir) -> FlushCounter {
        let backing = dir.join("backing.raw");
        create_sparse_file(&backing, BACKING_SIZE);
        let device = LoopDevice::attach(&backing, &[]);
        assert_eq!(
            device.sysfs("dio"),
            "0",
            "the loop device must use buffered I/O"
        );
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(device.path()),
        );
        let fs_dir = dir.join("ext4");
        std::fs::create_dir(&fs_dir).expect("create the ext4 mountpoint");
        // A long commit interval keeps jbd2's periodic commits (each a
        // flush) out of the counts; syncs still commit at once.
        let fs = MountedFs::mount(device.path(), &fs_dir, Some("commit=300"));
        let image = fs_dir.join("disk.raw");
        create_random_file(&image, 9, IMAGE_SIZE);
        run_ok(Command::new("sync").arg("-f").arg(&image));
        FlushCounter {
            _fs: fs,
            device,
            image,
        }
    }

    /// Flushes the device saw while `how` wrote through `path`.
    fn flushes_during(&self, how: ClientWrites, path: &Path, fill: u8) -> u64 {
        let before = self.device.flushes();
        let target = path.to_path_buf();
        let result = with_timeout(COMMAND_TIMEOUT, move || how.run(&target, fill))
            .unwrap_or_else(|| panic!("{how:?} writes to {} hung", path.display()));
        result.unwrap_or_else(|err| panic!("{how:?} writes to {}: {err}", path.display()));
        self.device.flushes() - before
    }
}

/// Runs every kind of client write on the plain image and through an export
/// started with `server_args`, and checks the flush counts.
fn synchronous_writes_reach_stable_storage(label: &str, server_args: &[&str]) {
    if !skip_unless_fuse() || !require_tools(&["losetup", "mkfs.ext4", "sync"]) {
        return;
    }
    let dir = TestDir::new(label);
    let counter = FlushCounter::new(&dir);
    let mount = dir.join("export.img");
    let reference: Vec<u64> = ClientWrites::ALL
        .iter()
        .map(|&how| counter.flushes_during(how, &counter.image, 0x11))
        .collect();

    let server = Server::export(&dir, &counter.image, &mount, server_args);
    if server.stderr().contains("passthrough unavailable") {
        eprintln!(
            "SKIP: {}: the kernel refused passthrough here:\n{}",
            current_test_name(),
            server.stderr()
        );
        return;
    }
    let exported: Vec<u64> = ClientWrites::ALL
        .iter()
        .enumerate()
        .map(|(i, &how)| counter.flushes_during(how, &mount, 0x20 + i as u8))
        .collect();
    server.stop();

    let table: String = ClientWrites::ALL
        .iter()
        .zip(reference.iter().zip(&exported))
        .map(|(how, (plain, export))| format!("\n  {how:?}: plain file {plain}, export {export}"))
        .collect();
    eprintln!("flushes for {WRITES} writes of {PAGE} bytes ({server_args:?}):{table}");
    for (&how, (&plain, &export)) in ClientWrites::ALL
        .iter()
        .zip(reference.iter().zip(&exported))
    {
        if how.synchronous() {
            assert!(
                plain >= WRITES,
                "{how:?} on the plain file caused {plain} flushes for {WRITES} writes: \
                 this layering does not count flushes, so the test proves nothing:{table}"
            );
            assert!(
                export >= WRITES,
                "{how:?} through the export ({server_args:?}) caused {export} flushes for \
                 {WRITES} acknowledged writes: some were answered before they were durable:{table}"
            );
        } else {
            assert!(
                export < WRITES / 2,
                "{how:?} through the export ({server_args:?}) caused {export} flushes for \
                 {WRITES} writes that asked for no durability:{table}"
            );
        }
    }
    // The last run's data is on the image.
    let image = read_file(&counter.image);
    let last = 0x20 + (ClientWrites::ALL.len() - 1) as u8;
    let expected = vec![last; WRITES as usize * PAGE];
    assert_same_bytes(
        "the pages written through the export",
        &expected,
        &image[..expected.len()],
    );
}

#[test]
fn synchronous_writes_reach_stable_storage_with_cache_none() {
    synchronous_writes_reach_stable_storage("dsync-none", &[]);
}

#[test]
fn synchronous_writes_reach_stable_storage_with_cache_writeback() {
    synchronous_writes_reach_stable_storage("dsync-writeback", &["--cache", "writeback"]);
}

#[test]
fn synchronous_writes_reach_stable_storage_with_parallel_chunk_o_direct_opens() {
    synchronous_writes_reach_stable_storage(
        "dsync-chunks",
        &["--o-direct-opens", "parallel-chunks"],
    );
}

#[test]
fn synchronous_writes_reach_stable_storage_on_the_passthrough_transport() {
    synchronous_writes_reach_stable_storage("dsync-passthrough", &["--transport", "passthrough"]);
}
