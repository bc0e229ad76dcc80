//! Concurrency end to end: many clients and queues at once on one export.
//!
//! * `fio --verify=crc32c` with io_uring and libaio, O_DIRECT and buffered,
//!   block sizes from 512 B to 4 MiB and unaligned ones, on two queues;
//!   verified again on the image after the server stopped.
//! * ext4 on a loop device over the export: mkfs, files, fsck, remount, and
//!   the files read back from the image itself with debugfs.
//! * SIGTERM while fio writes on two queues: clean exit, and every write fio
//!   saw complete is in the image.
//!
//! Tests need root and /dev/fuse (and the client tools) and print `SKIP:`
//! otherwise.

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::Signal;

// ---------------------------------------------------------------------------
// Local helpers

/// Asserts fio reported `jobs` jobs, each with `err= 0`, and no verify
/// failure; and that every job read back (verified) as many blocks as it
/// wrote.
#[track_caller]
fn assert_fio_verified(what: &str, output: &str, jobs: usize) {
    let clean_jobs = output.lines().filter(|l| l.contains("): err= 0:")).count();
    let verify_failures: Vec<&str> = output
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("verify") && (l.contains("fail") || l.contains("bad"))
        })
        .collect();
    assert!(
        clean_jobs == jobs && verify_failures.is_empty(),
        "{what}: {clean_jobs} of {jobs} jobs without error, verify failures {verify_failures:?}:\n{output}"
    );
    let issued: Vec<(u64, u64)> = output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("issued rwts: total="))
        .map(|counts| {
            let mut numbers = counts.split([',', ' ']).map(|n| n.parse().unwrap_or(0));
            (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
        })
        .collect();
    assert!(
        issued.len() == jobs
            && issued
                .iter()
                .all(|&(reads, writes)| writes > 0 && reads == writes),
        "{what}: every job must verify (read) each block it wrote; issued (reads, writes): {issued:?}\n{output}"
    );
}

// ---------------------------------------------------------------------------
// fio --verify

/// Four fio jobs at once, each in its own 512 MiB range: io_uring and libaio
/// with O_DIRECT (512 B to 4 MiB blocks on 512-byte boundaries), io_uring
/// and libaio buffered with unaligned sizes and offsets (the server's
/// read-modify-write path). fio reads back and checks every block; then the
/// same check runs on the image after the server stopped.
#[test]
fn fio_verify_mixed_block_sizes_on_two_queues() {
    if !skip_unless_fuse() || !require_tools(&["fio"]) {
        return;
    }
    const REGION: u64 = 512 * MIB;
    const JOBS: [(&str, &str); 4] = [
        (
            "uring-direct",
            "ioengine=io_uring\ndirect=1\nbsrange=512-4m\nblockalign=512",
        ),
        (
            "libaio-direct",
            "ioengine=libaio\ndirect=1\nbsrange=512-4m\nblockalign=512",
        ),
        (
            "uring-buffered-unaligned",
            "ioengine=io_uring\ndirect=0\nbsrange=1000-1m\nbs_unaligned=1",
        ),
        (
            "libaio-buffered-unaligned",
            "ioengine=libaio\ndirect=0\nbsrange=1000-1m\nbs_unaligned=1",
        ),
    ];
    let dir = TestDir::new("fio-verify");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, REGION * JOBS.len() as u64);
    let server = Server::export(&dir, &image, &mount, &["--queues", "2"]);

    let job_file = |target: &Path| {
        let mut text = format!(
            "[global]\nfilename={}\nrw=randwrite\niodepth=32\nsize={REGION}\n\
             verify=crc32c\nverify_fatal=1\nverify_state_save=0\n",
            target.display()
        );
        for (index, (name, options)) in JOBS.iter().enumerate() {
            text += &format!("[{name}]\noffset={}\n{options}\n", index as u64 * REGION);
        }
        let name = target.file_name().expect("a file name").to_string_lossy();
        let path = dir.join(format!("{name}.fio"));
        write_file(&path, text.as_bytes());
        path
    };

    let output = run_ok(
        Command::new("fio")
            .current_dir(dir.path())
            .arg(job_file(&mount)),
    );
    assert_fio_verified(
        "fio through the export",
        &String::from_utf8_lossy(&output.stdout),
        JOBS.len(),
    );
    server.stop();

    // The same jobs regenerate the same blocks; --verify_only checks them
    // on the image without writing.
    let output = run_ok(
        Command::new("fio")
            .current_dir(dir.path())
            .arg("--verify_only")
            .arg(job_file(&image)),
    );
    assert_fio_verified(
        "fio --verify_only on the image",
        &String::from_utf8_lossy(&output.stdout),
        JOBS.len(),
    );
}

// ---------------------------------------------------------------------------
// ext4 on a loop device

/// Files written to an ext4 created on a loop device over the export.
fn ext4_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = [5 * MIB + 123, 17 * MIB, MIB, 4096, 1]
        .into_iter()
        .enumerate()
        .map(|(i, len)| {
            (
                format!("file-{i}"),
                random_bytes(0xe474 + i as u64, len as usize),
            )
        })
        .collect();
    let mut sizes = Xorshift::new(0xe475);
    files.extend((0..100).map(|i| {
        let len = (sizes.next_u64() % (64 * KIB)) as usize;
        (format!("small/{i:03}"), random_bytes(0xe500 + i, len))
    }));
    files
}

/// mkfs.ext4 on a loop device over the export, write files, fsck, remount
/// and read them back; finally read them from the image with debugfs.
fn ext4_on_loop_device_roundtrip(label: &str, server_args: &[&str], losetup_args: &[&str]) {
    if !skip_unless_fuse()
        || !require_tools(&["losetup", "mkfs.ext4", "fsck.ext4", "debugfs", "blockdev"])
    {
        return;
    }
    let dir = TestDir::new(label);
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let fs_dir = dir.join("fs");
    fs::create_dir(&fs_dir).expect("create the ext4 mountpoint");
    create_sparse_file(&image, 256 * MIB);
    let server = Server::export(&dir, &image, &mount, server_args);
    let files = ext4_files();

    let loop_device = LoopDevice::attach(&mount, losetup_args);
    let direct_io = if losetup_args.contains(&"--direct-io=on") {
        "1"
    } else {
        "0"
    };
    assert_eq!(
        loop_device.sysfs("dio"),
        direct_io,
        "direct I/O state of {}",
        loop_device.path().display()
    );
    let device = loop_device.path().to_path_buf();
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&device));

    let mounted = MountedFs::mount(&device, &fs_dir, None);
    fs::create_dir(fs_dir.join("small")).expect("create a directory on ext4");
    let written = {
        let (fs_dir, files) = (fs_dir.clone(), files.clone());
        bounded("writing files on ext4", move || {
            for (name, data) in &files {
                fs::write(fs_dir.join(name), data)?;
            }
            std::io::Result::Ok(())
        })
    };
    written.expect("write files on ext4");
    run_ok(Command::new("sync").arg("-f").arg(&fs_dir));
    mounted.unmount_at_once();
    // Nothing of the device may come from its page cache from here on.
    run_ok(Command::new("blockdev").arg("--flushbufs").arg(&device));
    run_ok(Command::new("fsck.ext4").arg("-fn").arg(&device));

    let mounted = MountedFs::mount(&device, &fs_dir, None);
    for (name, data) in &files {
        let path = fs_dir.join(name);
        let back = bounded("reading a file on ext4", move || read_file(&path));
        assert_same_bytes(&format!("{name} after remount"), data, &back);
    }
    mounted.unmount_at_once();
    drop(loop_device);
    server.stop();

    // The image itself holds a clean filesystem with the same files.
    run_ok(Command::new("fsck.ext4").arg("-fn").arg(&image));
    let dumped = dir.join("dumped");
    for (name, data) in files.iter().step_by(7) {
        let _ = fs::remove_file(&dumped);
        let request = format!("dump /{name} {}", dumped.display());
        run_ok(Command::new("debugfs").args(["-R", &request]).arg(&image));
        assert_same_bytes(&format!("{name} in the image"), data, &read_file(&dumped));
    }
}

/// The loop driver's default (buffered I/O on the backing file) on four
/// queues.
#[test]
fn ext4_on_a_loop_device_over_the_export_survives_fsck_and_remount() {
    ext4_on_loop_device_roundtrip("ext4-loop", &["--queues", "4"], &[]);
}

/// The loop driver with `--direct-io=on` (O_DIRECT on the export) on two
/// queues.
#[test]
fn ext4_on_a_direct_io_loop_device_over_the_export_survives_fsck_and_remount() {
    ext4_on_loop_device_roundtrip("ext4-loop-dio", &["--queues", "2"], &["--direct-io=on"]);
}

// ---------------------------------------------------------------------------
// Shutdown under load

/// SIGTERM while two fio jobs write (io_uring, O_DIRECT, iodepth 32) on two
/// queues: the server exits 0 and unmounts; every write fio logged as
/// completed is in the image; every block is either untouched or fully
/// written (fio writes one fixed pattern).
#[test]
fn sigterm_under_fio_load_keeps_every_completed_write() {
    if !skip_unless_fuse() || !require_tools(&["fio"]) {
        return;
    }
    const REGION: u64 = 128 * MIB;
    const BLOCK: usize = 4096;
    /// fio's buffer_pattern, in memory order.
    const PATTERN: [u8; 4] = [0x5a, 0xa5, 0xc3, 0x3c];
    /// Allocated in the image before the signal, so that fio is in the
    /// middle of its run (two jobs at 32 MiB/s each need 4 s in total).
    const WRITTEN_BEFORE_SIGNAL: u64 = 24 * MIB;
    let dir = TestDir::new("sigterm-fio");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 2 * REGION);
    let mut server = Server::export(&dir, &image, &mount, &["--queues", "2"]);

    let log_prefix = dir.join("completed");
    let job_file = dir.join("load.fio");
    let pattern_hex: String = PATTERN.iter().map(|b| format!("{b:02x}")).collect();
    let jobs = format!(
        "[global]\nfilename={}\nioengine=io_uring\ndirect=1\nrw=randwrite\n\
         bsrange=4k-1m\niodepth=32\nsize={REGION}\nrate=32m\nbuffer_pattern=0x{pattern_hex}\n\
         write_lat_log={}\nlog_offset=1\n[first]\noffset=0\n[second]\noffset={REGION}\n",
        mount.display(),
        log_prefix.display()
    );
    write_file(&job_file, jobs.as_bytes());
    let fio_output = dir.join("fio.out");
    let output_file = File::create(&fio_output).expect("create fio's output file");
    let mut fio = KillOnDrop::spawn(
        Command::new("fio")
            .current_dir(dir.path())
            .arg(&job_file)
            .stdin(Stdio::null())
            .stdout(output_file.try_clone().expect("duplicate the output fd"))
            .stderr(output_file),
    );
    let fio_text = || fs::read_to_string(&fio_output).unwrap_or_default();

    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while allocated_bytes(&image) < WRITTEN_BEFORE_SIGNAL {
        if let Some(status) = fio.try_wait() {
            panic!("fio ended ({status}) before the signal:\n{}", fio_text());
        }
        assert!(
            Instant::now() < deadline,
            "fio did not write {WRITTEN_BEFORE_SIGNAL} bytes in time"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(fio.try_wait().is_none(), "fio finished before the signal");
    server.signal(Signal::TERM);
    server.assert_exits_cleanly("SIGTERM under fio load");
    if fio.wait_for_exit(STOP_TIMEOUT).is_none() {
        panic!("fio still runs {STOP_TIMEOUT:?} after the server exited");
    }

    assert_eq!(file_size(&image), 2 * REGION, "the image changed size");
    let content = read_file(&image);
    let pattern_block: Vec<u8> = PATTERN.iter().copied().cycle().take(BLOCK).collect();
    let mut completed = 0u64;
    for job in 1..=2 {
        let log = PathBuf::from(format!("{}_lat.{job}.log", log_prefix.display()));
        let entries = fs::read_to_string(&log).unwrap_or_else(|err| {
            panic!("cannot read {}: {err}; fio:\n{}", log.display(), fio_text())
        });
        for line in entries.lines() {
            // time, latency, direction, block size, offset, priority
            let fields: Vec<u64> = line
                .split(',')
                .map(|f| {
                    f.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("bad fio log line {line:?}"))
                })
                .collect();
            let (direction, len, offset) = (fields[2], fields[3] as usize, fields[4] as usize);
            assert_eq!(direction, 1, "fio logged a non-write: {line:?}");
            let written = &content[offset..offset + len];
            if let Some(at) = written
                .chunks(BLOCK)
                .position(|block| block != &pattern_block[..block.len()])
            {
                panic!(
                    "a write fio saw complete ({len} bytes at {offset}) is not in the image: \
                     block {at} differs; fio:\n{}",
                    fio_text()
                );
            }
            completed += len as u64;
        }
    }
    assert!(
        completed > 0,
        "fio logged no completed write:\n{}",
        fio_text()
    );
    let zero_block = [0u8; BLOCK];
    if let Some(at) = content
        .chunks(BLOCK)
        .position(|block| block != zero_block && block != pattern_block)
    {
        panic!(
            "block at {} is neither untouched nor fully written",
            at * BLOCK
        );
    }
}
