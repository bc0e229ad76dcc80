//! End-to-end: which transport serves, and that each one says so. The rest
//! of the suite runs once per transport (`FUSE_EXPORT_TEST_TRANSPORT`); the
//! tests here pick the transport themselves.

mod common;

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use common::*;

/// Waits for the server to log `text` (the startup line comes right after
/// the export became ready).
/// Holds `enable_uring` on for the test, or prints `SKIP: <test>: <why>`
/// and returns `None` where it cannot be turned on.
fn enable_uring_or_skip() -> Option<fuse_dev::uring::EnableUringGuard> {
    fuse_dev::uring::EnableUringGuard::acquire()
        .inspect_err(|err| eprintln!("SKIP: {}: {err}", current_test_name()))
        .ok()
}

/// `--transport auto` serves with readv even where the kernel offers
/// FUSE-over-io_uring (the lab's pick, see docs/performance.md), and says
/// so in one info line.
#[test]
fn auto_serves_with_readv_even_where_the_kernel_offers_uring() {
    if !skip_unless_fuse() {
        return;
    }
    let Some(_uring) = enable_uring_or_skip() else {
        return;
    };
    let dir = TestDir::new("auto-readv");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 4 * MIB);
    let server = Server::export(&dir, &image, &mount, &["--transport", "auto"]);
    server.wait_for_log("; readv, ");
    let log = server.stderr();
    assert!(
        log.contains("--transport auto serves with readv, also where the kernel offers"),
        "the choice is explained; log:\n{log}"
    );
    assert!(!log.contains("FUSE-over-io_uring, "), "{log}");
    server.stop();
}

/// `--transport uring` serves through one ring queue per possible CPU,
/// named in the startup line, and data goes through the ring entries both
/// ways.
#[test]
fn uring_serves_through_a_ring_queue_per_cpu() {
    if !skip_unless_fuse() {
        return;
    }
    let Some(_uring) = enable_uring_or_skip() else {
        return;
    };
    let queues = fuse_dev::uring::cpus::possible_cpus().expect("possible CPUs");
    let dir = TestDir::new("uring-queues");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_random_file(&image, 0xa070, 16 * MIB);
    let server = Server::export(
        &dir,
        &image,
        &mount,
        &["--transport", "uring", "--queue-depth", "4"],
    );
    let described = format!(
        "FUSE-over-io_uring, {queues} ring {} of 4 entries each",
        if queues == 1 { "queue" } else { "queues" }
    );
    server.wait_for_log(&described);
    // Unaligned and aligned writes and reads through the export, compared
    // with the image afterwards.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&mount)
        .unwrap();
    let data = random_bytes(0xa071, 3 * MIB as usize + 17);
    file.write_all_at(&data, 4096 * 3 + 5).unwrap();
    let mut back = vec![0u8; data.len()];
    file.read_exact_at(&mut back, 4096 * 3 + 5).unwrap();
    assert_same_bytes("read back through the ring", &data, &back);
    drop(file);
    server.stop();
    let image_bytes = read_file(&image);
    assert_same_bytes(
        "image after the ring export",
        &data,
        &image_bytes[4096 * 3 + 5..4096 * 3 + 5 + data.len()],
    );
}

/// The startup line names the transport with its queues in words, whatever
/// the kernel offers.
#[test]
fn the_startup_line_names_the_readv_transport_and_its_queues() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("readv-line");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 4 * MIB);
    let server = Server::export(
        &dir,
        &image,
        &mount,
        &[
            "--transport",
            "readv",
            "--queues",
            "3",
            "--reads-per-queue",
            "2",
        ],
    );
    server.wait_for_log(
        "; readv, 3 queues with 2 posted reads each (all but the first only under load),",
    );
    server.stop();
}

/// An explicit `--transport uring` that the kernel does not offer is one
/// clear line naming the switch, exit code 2, nothing mounted. Meaningful
/// only while the switch is off: other tests may turn it on at any moment,
/// and a server that saw it on serves instead (then this test skips).
#[test]
fn explicit_uring_without_the_switch_is_one_clear_error() {
    if !skip_unless_fuse() {
        return;
    }
    let skip = |why: &str| eprintln!("SKIP: {}: {why}", current_test_name());
    if fuse_dev::uring::param_state() != fuse_dev::uring::ParamState::Off {
        return skip("the switch is on right now");
    }
    let dir = TestDir::new("uring-off");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, MIB);
    let args: Vec<OsString> = vec![
        "--transport".into(),
        "uring".into(),
        "--image".into(),
        image.clone().into(),
        "--mount".into(),
        mount.clone().into(),
    ];
    let mut server = Server::spawn_with_env(&dir, &args, &mount, &[("RUST_LOG", "info".as_ref())]);
    let status = poll_until(STOP_TIMEOUT, || {
        if server.stderr().contains("info: serving") {
            return Some(None);
        }
        server.wait_for_exit(std::time::Duration::ZERO).map(Some)
    })
    .expect("the server neither exited nor served");
    let Some(status) = status else {
        // Dropping the guard stops it.
        return skip("the switch was turned on by another test meanwhile");
    };
    let log = server.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(status.code(), Some(2), "exit status; log:\n{log}");
    assert_eq!(lines.len(), 1, "one line; log:\n{log}");
    assert!(
        lines[0].starts_with("fuse-export: --transport uring: ")
            && lines[0].contains(fuse_dev::uring::PARAM_PATH),
        "the line names the switch: {log}"
    );
    assert!(!is_mounted(&mount), "nothing stays mounted");
    assert!(
        !mount.exists(),
        "the mountpoint it would have created is gone"
    );
}

/// With FUSE-over-io_uring, the pages a burst of large writes made resident
/// in the ring entries are given back once the export is idle: the queue
/// says so in its log, and the resident memory drops back to about what it
/// was before the burst.
#[test]
fn a_burst_of_large_writes_gives_its_memory_back() {
    if !skip_unless_fuse() || !require_tools(&["dd"]) {
        return;
    }
    let Some(_uring) = enable_uring_or_skip() else {
        return;
    };
    burst_of_large_writes_gives_its_memory_back("uring");
}

/// The same with readv: the spill-over tiers the burst filled, and the pool
/// buffers it left idle, are unmapped once the export is idle, and the
/// posted reads are armed again with fresh, unbacked tiers.
#[test]
fn a_burst_of_large_writes_gives_its_memory_back_with_readv() {
    if !skip_unless_fuse() || !require_tools(&["dd"]) {
        return;
    }
    burst_of_large_writes_gives_its_memory_back("readv");
}

fn burst_of_large_writes_gives_its_memory_back(transport: &str) {
    let dir = TestDir::new(&format!("{transport}-give-back"));
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 256 * MIB);
    let source = dir.join("source");
    create_random_file(&source, 0xb0b, 32 * MIB);
    let server = Server::export_with_env(
        &dir,
        &image,
        &mount,
        &["--transport", transport],
        &[("RUST_LOG", "debug".as_ref())],
    );
    let before = server.resident_kib().expect("the server's VmRSS");
    // Four writers at once, 1 MiB O_DIRECT writes: several requests per
    // queue fill their whole payload buffer or spill-over.
    let writers: Vec<KillOnDrop> = (0..4u64)
        .map(|i| {
            KillOnDrop::spawn(&mut dd(&[
                format!("if={}", source.display()),
                format!("of={}", mount.display()),
                "bs=1M".to_string(),
                format!("seek={}", i * 32),
                "oflag=direct".to_string(),
                "conv=notrunc".to_string(),
                "status=none".to_string(),
            ]))
        })
        .collect();
    for mut writer in writers {
        let status = writer.wait_for_exit(COMMAND_TIMEOUT).expect("dd finished");
        assert!(status.success(), "dd: {}", writer.stderr());
    }
    let during = server.resident_kib().expect("the server's VmRSS");
    assert!(
        during > before + 2048,
        "the burst left {during} KiB resident (before: {before} KiB): nothing to give back, \
         so this test proves nothing"
    );
    let released = poll_until(STOP_TIMEOUT, || {
        server.stderr().contains("gave back").then_some(())
    });
    assert!(
        released.is_some(),
        "no queue gave its idle memory back; log:\n{}",
        server.stderr()
    );
    // Every queue that served the burst gives back what it holds (one log
    // line each); what stays are a few pool buffers of small size.
    let settled = poll_until(STOP_TIMEOUT, || {
        server.resident_kib().filter(|&now| now <= before + 1024)
    });
    assert!(
        settled.is_some(),
        "resident memory stayed at {:?} KiB (before the burst: {before} KiB, after it: \
         {during} KiB)",
        server.resident_kib()
    );
    server.stop();
}
