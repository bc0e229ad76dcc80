//! Block devices as images: a loop device (over a file in the test's
//! scratch directory) exported as a regular file.
//!
//! The export shows a regular file of the device's size; data written
//! through it is on the device byte for byte; resizing is refused with
//! EOPNOTSUPP (and `--growable` at start); punch-hole and zero-range zero
//! the device; every byte is data for SEEK_DATA/SEEK_HOLE; synchronous
//! writes flush the device itself.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::*;
use rustix::fs::{FallocateFlags, SeekFrom};

/// The loop device's size.
const DEVICE_SIZE: u64 = 64 * MIB;

/// A loop device over a file of random bytes; the bytes are returned too.
fn random_loop_device(dir: &TestDir, seed: u64, losetup_args: &[&str]) -> (LoopDevice, Vec<u8>) {
    let backing = dir.join("backing.raw");
    create_random_file(&backing, seed, DEVICE_SIZE);
    (
        LoopDevice::attach(&backing, losetup_args),
        random_bytes(seed, DEVICE_SIZE as usize),
    )
}

/// The device's contents, read with O_DIRECT (`dd iflag=direct`), so that
/// nothing comes from a page cache.
fn device_contents(device: &Path) -> Vec<u8> {
    let output = run_ok(&mut dd(&[
        format!("if={}", device.display()),
        "bs=1M".into(),
        "iflag=direct".into(),
        "status=none".into(),
    ]));
    output.stdout
}

/// `blockdev --getsize64`.
fn device_size(device: &Path) -> u64 {
    let output = run_ok(Command::new("blockdev").arg("--getsize64").arg(device));
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|err| panic!("blockdev --getsize64 printed {text:?}: {err}"))
}

fn tools_present() -> bool {
    skip_unless_fuse() && require_tools(&["losetup", "blockdev", "dd"])
}

/// For 512- and 4096-byte logical blocks: the export is a regular file of
/// the device's size, aligned to the device's logical block size, fully
/// allocated, all data, on a "filesystem" exactly as large.
#[test]
fn a_loop_device_is_exported_as_a_regular_file_of_its_size() {
    if !tools_present() {
        return;
    }
    for sector in ["512", "4096"] {
        let dir = TestDir::new(&format!("blockdev-size-{sector}"));
        let (device, _) = random_loop_device(&dir, 1, &["--sector-size", sector]);
        let mount = dir.join("export.img");
        let server = Server::export_sized(&dir, device.path(), DEVICE_SIZE, &mount, &[]);
        // The server names the device's alignment.
        server.wait_for_log(&format!("{sector}-byte alignment, block device"));
        let meta = fs::metadata(&mount).expect("stat the export");
        assert!(meta.is_file(), "the export of a device is a regular file");
        assert_eq!(meta.len(), device_size(device.path()));
        assert_eq!(meta.blocks() * 512, DEVICE_SIZE, "fully allocated");

        let file = fs::File::open(&mount).expect("open the export");
        for offset in [0, 12_345, DEVICE_SIZE - 1] {
            let data = rustix::fs::seek(&file, SeekFrom::Data(offset));
            let hole = rustix::fs::seek(&file, SeekFrom::Hole(offset));
            assert_eq!(data, Ok(offset), "SEEK_DATA from {offset}: all data");
            assert_eq!(hole, Ok(DEVICE_SIZE), "SEEK_HOLE from {offset}: the end");
        }
        let vfs = rustix::fs::fstatvfs(&file).expect("statvfs of the export");
        let shown = (vfs.f_blocks, vfs.f_frsize, vfs.f_bfree, vfs.f_bavail);
        assert_eq!(
            (shown.0 * shown.1, shown.2, shown.3),
            (DEVICE_SIZE, 0, 0),
            "statvfs (blocks, frsize, bfree, bavail) = {shown:?}: a full device-sized filesystem"
        );
        drop(file);
        server.stop();
    }
}

/// O_DIRECT and unaligned writes through the export, in both cache modes,
/// are byte-exact on the device.
#[test]
fn writes_through_the_export_are_byte_exact_on_the_device() {
    if !tools_present() {
        return;
    }
    for (label, args) in [
        ("none", &[][..]),
        ("writeback", &["--cache", "writeback"][..]),
    ] {
        let dir = TestDir::new(&format!("blockdev-data-{label}"));
        let (device, mut expected) = random_loop_device(&dir, 2, &[]);
        let mount = dir.join("export.img");
        let server = Server::export_sized(&dir, device.path(), DEVICE_SIZE, &mount, args);

        let source = dir.join("source.raw");
        create_random_file(&source, 3, 4 * MIB);
        run_ok(&mut dd(&[
            format!("if={}", source.display()),
            format!("of={}", mount.display()),
            "bs=1M".into(),
            "seek=5".into(),
            "oflag=direct".into(),
            "conv=notrunc".into(),
            "status=none".into(),
        ]));
        expected[5 * MIB as usize..9 * MIB as usize]
            .copy_from_slice(&random_bytes(3, 4 * MIB as usize));
        // Unaligned: the export's read-modify-write.
        let small = random_bytes(4, 1000);
        let at = 3 * MIB + 333;
        let file = OpenOptions::new()
            .write(true)
            .open(&mount)
            .expect("open the export");
        file.write_all_at(&small, at).expect("an unaligned write");
        file.sync_all().expect("fsync the export");
        drop(file);
        expected[at as usize..at as usize + small.len()].copy_from_slice(&small);

        let through_export = with_timeout(COMMAND_TIMEOUT, {
            let mount = mount.clone();
            move || read_file(&mount)
        })
        .expect("reading the export hung");
        assert_same_bytes(&format!("the export ({label})"), &expected, &through_export);
        server.stop();
        assert_same_bytes(
            &format!("the device after the export ({label})"),
            &expected,
            &device_contents(device.path()),
        );
    }
}

/// `truncate` to another size fails with "Operation not supported" (as
/// QEMU's host_device answers); to the same size it succeeds.
#[test]
fn resizing_a_device_export_is_refused() {
    if !tools_present() {
        return;
    }
    let dir = TestDir::new("blockdev-resize");
    let (device, expected) = random_loop_device(&dir, 5, &[]);
    let mount = dir.join("export.img");
    let server = Server::export_sized(&dir, device.path(), DEVICE_SIZE, &mount, &[]);
    let file = OpenOptions::new()
        .write(true)
        .open(&mount)
        .expect("open the export");
    for size in [DEVICE_SIZE / 2, DEVICE_SIZE * 2, 0] {
        let err = file.set_len(size).expect_err("resizing a device must fail");
        assert_eq!(
            errno_of(&err),
            Some(rustix::io::Errno::OPNOTSUPP),
            "ftruncate to {size}: {err}"
        );
    }
    file.set_len(DEVICE_SIZE)
        .expect("truncating to the device's own size is a no-op");
    drop(file);
    let output = run(Command::new("truncate").args(["-s", "1M"]).arg(&mount));
    assert!(
        !output.status.success()
            && String::from_utf8_lossy(&output.stderr).contains("Operation not supported"),
        "truncate -s 1M on the export:\n{}",
        output_text(&output)
    );
    assert_eq!(file_size(&mount), DEVICE_SIZE);
    server.stop();
    assert_eq!(device_size(device.path()), DEVICE_SIZE);
    assert_same_bytes("the device", &expected, &device_contents(device.path()));
}

/// `--growable` with a device: exit code 2 and one line saying why.
#[test]
fn growable_is_refused_for_a_device() {
    if !tools_present() {
        return;
    }
    let dir = TestDir::new("blockdev-growable");
    let (device, _) = random_loop_device(&dir, 6, &[]);
    let mount = dir.join("export.img");
    let args = export_args(device.path(), &mount, &["--growable"]);
    let failures = rejected_command_line_failures(&dir, "--growable", &args, &mount, &mount, false);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let mut server = Server::spawn(&dir, &args, &mount);
    server.wait_for_exit(STOP_TIMEOUT);
    let stderr = server.stderr();
    assert!(
        stderr.contains("is a block device, which cannot grow"),
        "the line names the reason:\n{stderr}"
    );
}

/// Punch-hole (keep-size) and zero-range read back as zeros, through the
/// export and on the device; plain allocation is not supported.
#[test]
fn punch_hole_and_zero_range_zero_the_device() {
    if !tools_present() {
        return;
    }
    let dir = TestDir::new("blockdev-fallocate");
    let (device, mut expected) = random_loop_device(&dir, 7, &[]);
    let mount = dir.join("export.img");
    let server = Server::export_sized(&dir, device.path(), DEVICE_SIZE, &mount, &[]);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&mount)
        .expect("open the export");
    let ranges = [
        (
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            MIB,
            256 * KIB,
        ),
        (FallocateFlags::ZERO_RANGE, 8 * MIB, 64 * KIB),
        (
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
            DEVICE_SIZE - 4 * KIB,
            4 * KIB,
        ),
    ];
    for (mode, offset, len) in ranges {
        rustix::fs::fallocate(&file, mode, offset, len)
            .unwrap_or_else(|err| panic!("fallocate {mode:?} at {offset}: {err}"));
        expected[offset as usize..(offset + len) as usize].fill(0);
    }
    for mode in [FallocateFlags::empty(), FallocateFlags::KEEP_SIZE] {
        assert_eq!(
            rustix::fs::fallocate(&file, mode, 0, MIB),
            Err(rustix::io::Errno::OPNOTSUPP),
            "allocating ({mode:?}) on a device"
        );
    }
    drop(file);
    assert_eq!(file_size(&mount), DEVICE_SIZE);
    let through_export = with_timeout(COMMAND_TIMEOUT, {
        let mount = mount.clone();
        move || read_file(&mount)
    })
    .expect("reading the export hung");
    assert_same_bytes("the export", &expected, &through_export);
    server.stop();
    assert_same_bytes("the device", &expected, &device_contents(device.path()));
}

/// `O_DSYNC` writes through the export flush the device itself (one flush
/// per write at least); plain writes do not.
#[test]
fn synchronous_writes_to_a_device_export_flush_the_device() {
    if !tools_present() {
        return;
    }
    const WRITES: u64 = 50;
    const PAGE: u64 = 4096;
    let dir = TestDir::new("blockdev-dsync");
    let (device, _) = random_loop_device(&dir, 8, &[]);
    let mount = dir.join("export.img");
    let server = Server::export_sized(&dir, device.path(), DEVICE_SIZE, &mount, &[]);
    let flushes_during = |dsync: bool| {
        let before = device.flushes();
        let mount = mount.clone();
        with_timeout(COMMAND_TIMEOUT, move || {
            let mut options = OpenOptions::new();
            options.write(true);
            if dsync {
                std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_DSYNC);
            }
            let file = options.open(&mount)?;
            let page = random_bytes(9, PAGE as usize);
            for index in 0..WRITES {
                file.write_all_at(&page, index * PAGE)?;
            }
            std::io::Result::Ok(())
        })
        .expect("writing hung")
        .expect("writing through the export");
        device.flushes() - before
    };
    let synced = flushes_during(true);
    let plain = flushes_during(false);
    server.stop();
    assert!(
        synced >= WRITES,
        "{WRITES} O_DSYNC writes caused {synced} flushes of the device"
    );
    assert!(
        plain < WRITES / 2,
        "{WRITES} plain writes caused {plain} flushes of the device"
    );
}

/// Passthrough cannot use a device as its backing file: the server says so
/// and serves READ/WRITE itself.
#[test]
fn passthrough_on_a_device_falls_back_to_readv() {
    if !tools_present() {
        return;
    }
    let dir = TestDir::new("blockdev-passthrough");
    let (device, mut expected) = random_loop_device(&dir, 10, &[]);
    let mount = dir.join("export.img");
    let server = Server::export_sized(
        &dir,
        device.path(),
        DEVICE_SIZE,
        &mount,
        &["--transport", "passthrough"],
    );
    let log = server.stderr();
    assert!(
        log.contains("passthrough needs a regular file"),
        "the server explains the fallback:\n{log}"
    );
    let data = random_bytes(11, 64 * KIB as usize);
    let file = open_direct(&mount);
    file.write_all_at(AlignedBuf::from_slice(&data).as_slice(), MIB)
        .expect("an O_DIRECT write");
    drop(file);
    expected[MIB as usize..MIB as usize + data.len()].copy_from_slice(&data);
    server.stop();
    assert_same_bytes("the device", &expected, &device_contents(device.path()));
}
