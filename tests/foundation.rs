//! Foundation end-to-end tests: real clients against a real export.
//!
//! Tests that mount need root and /dev/fuse and print `SKIP:` otherwise; the
//! command-line tests run anywhere. Every check that goes through the export
//! is repeated on the image file after the server stopped, so data that only
//! lives in the server (or the page cache of the mount) cannot pass.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustix::io::Errno;
use rustix::process::Signal;

/// `dd` through the export with every block size the kernel splits
/// differently: below, at and above `max_write` (1 MiB by default), with
/// O_DIRECT and through the buffered path.
#[test]
fn dd_writes_at_every_block_size_read_back_identically() {
    if !skip_unless_fuse() {
        return;
    }
    const IMAGE_SIZE: u64 = 64 * MIB;
    const REGION_SIZE: usize = 8 * MIB as usize;
    // Regions do not overlap; the 12 KiB skew keeps the large blocks off
    // 1 MiB boundaries so that requests straddle max_write-sized chunks.
    const REGION_STRIDE: u64 = 10 * MIB + 12 * KIB;
    let dir = TestDir::new("dd-block-sizes");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, IMAGE_SIZE);
    let mut expected = vec![0u8; IMAGE_SIZE as usize];
    let server = Server::export(&dir, &image, &mount, &[]);

    // (block size, O_DIRECT?)
    let writes = [
        ("4k", true),
        ("64k", true),
        ("1M", true),
        ("2M", true),
        ("4M", true),
        ("1M", false),
    ];
    for (index, &(block_size, direct)) in writes.iter().enumerate() {
        let offset = index as u64 * REGION_STRIDE;
        let data = random_bytes(0xdd00 + index as u64, REGION_SIZE);
        let source = dir.join(format!("source-{index}"));
        write_file(&source, &data);
        // seek_bytes: `seek` is a byte offset, independent of the block size.
        let (oflag, conv) = if direct {
            ("direct,seek_bytes", "notrunc")
        } else {
            ("seek_bytes", "notrunc,fsync")
        };
        run_ok(&mut dd(&[
            format!("if={}", source.display()),
            format!("of={}", mount.display()),
            format!("bs={block_size}"),
            format!("seek={offset}"),
            format!("oflag={oflag}"),
            format!("conv={conv}"),
            "status=none".into(),
        ]));
        expected[offset as usize..offset as usize + REGION_SIZE].copy_from_slice(&data);
    }

    let readback = dir.join("readback");
    run_ok(&mut dd(&[
        format!("if={}", mount.display()),
        format!("of={}", readback.display()),
        "bs=1M".into(),
        "iflag=direct".into(),
        "status=none".into(),
    ]));
    assert_same_bytes(
        "dd iflag=direct read of the export",
        &expected,
        &read_file(&readback),
    );
    assert_same_bytes("plain read of the export", &expected, &read_file(&mount));

    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// The headline use: `qemu-img convert` onto the export with O_DIRECT.
#[test]
fn qemu_img_convert_onto_export_matches_source() {
    convert_onto_export_and_compare("qemu-img-convert", &[]);
}

/// The same with O_DIRECT opens served by the kernel's cached-file O_DIRECT
/// path (`--o-direct-opens parallel-chunks`), where one 2 MiB write of
/// `qemu-img` reaches the server as concurrent 1 MiB WRITEs.
#[test]
fn qemu_img_convert_with_parallel_chunks_matches_source() {
    convert_onto_export_and_compare(
        "qemu-img-convert-chunks",
        &["--o-direct-opens", "parallel-chunks"],
    );
}

fn convert_onto_export_and_compare(label: &str, server_args: &[&str]) {
    if !skip_unless_fuse() || !require_tools(&["qemu-img"]) {
        return;
    }
    const SIZE: u64 = 256 * MIB;
    let dir = TestDir::new(label);
    let source = dir.join("source.raw");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_random_file(&source, 0xc0de, SIZE);
    create_sparse_file(&image, SIZE);
    let server = Server::export(&dir, &image, &mount, server_args);

    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-t", "none", "-f", "raw", "-O", "raw"])
            .args([&source, &mount]),
    );
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .args([&source, &mount]),
    );

    server.stop();
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .args([&source, &image]),
    );
    // qemu-img compare treats a missing tail as zeros; this checks the size too.
    assert_files_equal(&source, &image);
}

/// Byte-granular I/O from Rust: every write lands exactly where it was
/// asked, whatever its alignment; the server's read-modify-write must not
/// shift or tear anything around it.
#[test]
fn unaligned_pwrite_pread_match_shadow_copy() {
    if !skip_unless_fuse() {
        return;
    }
    const IMAGE_SIZE: usize = 4 * MIB as usize;
    const OFFSETS: [u64; 5] = [1, 511, 4095, 4097, MIB - 3];
    const SIZES: [usize; 6] = [1, 13, 4095, 4097, 70_000, MIB as usize + 7];
    // Moves each (offset, size) case to its own 64 KiB slot so that the cases
    // overlap only partly; a multiple of 4096 keeps the offsets' alignment.
    const CASE_STRIDE: u64 = 64 * KIB;
    let dir = TestDir::new("unaligned-io");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let mut shadow = random_bytes(0x0dd, IMAGE_SIZE);
    write_file(&image, &shadow);
    let server = Server::export(&dir, &image, &mount, &[]);
    let mut rng = Xorshift::new(0x0dd5);

    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&mount)
        .expect("open the export");
    let cases = OFFSETS
        .iter()
        .flat_map(|&offset| SIZES.iter().map(move |&size| (offset, size)));
    for (case, (offset, size)) in cases.clone().enumerate() {
        let position = offset + case as u64 * CASE_STRIDE;
        let data = rng.bytes(size);
        file.write_all_at(&data, position)
            .unwrap_or_else(|err| panic!("pwrite of {size} bytes at {position}: {err}"));
        shadow[position as usize..position as usize + size].copy_from_slice(&data);
        let mut back = vec![0; size];
        file.read_exact_at(&mut back, position)
            .unwrap_or_else(|err| panic!("pread of {size} bytes at {position}: {err}"));
        assert_same_bytes(
            &format!("pread right after pwrite of {size} at {position}"),
            &data,
            &back,
        );
    }
    // Reads at odd places, including data that was never written.
    for (offset, size) in cases {
        let position = offset + 3 * MIB / 2;
        let mut back = vec![0; size];
        file.read_exact_at(&mut back, position)
            .unwrap_or_else(|err| panic!("pread of {size} bytes at {position}: {err}"));
        let expected = &shadow[position as usize..position as usize + size];
        assert_same_bytes(&format!("pread of {size} at {position}"), expected, &back);
    }

    // O_DIRECT needs an aligned user buffer; FUSE passes any offset and size
    // on, so 512-byte granularity exercises the server's unaligned path too.
    let direct = open_direct(&mount);
    let direct_cases: [(u64, usize); 5] = [
        (0, 4096),
        (512, 512),
        (3 * 4096 + 512, 5 * 4096 + 1024),
        (MIB - 4096, 2 * 4096),
        (2 * MIB + 4096, MIB as usize + 3 * 4096),
    ];
    for (position, size) in direct_cases {
        let data = AlignedBuf::from_slice(&rng.bytes(size));
        direct
            .write_all_at(data.as_slice(), position)
            .unwrap_or_else(|err| panic!("O_DIRECT pwrite of {size} bytes at {position}: {err}"));
        shadow[position as usize..position as usize + size].copy_from_slice(data.as_slice());
        let mut back = AlignedBuf::zeroed(size);
        direct
            .read_exact_at(back.as_mut_slice(), position)
            .unwrap_or_else(|err| panic!("O_DIRECT pread of {size} bytes at {position}: {err}"));
        let what = format!("O_DIRECT pread right after pwrite of {size} at {position}");
        assert_same_bytes(&what, data.as_slice(), back.as_slice());
    }
    drop((file, direct));

    assert_same_bytes("whole export after all writes", &shadow, &read_file(&mount));
    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &shadow,
        &read_file(&image),
    );
}

/// `--read-only`: mounted `ro`, every way of writing is refused, the image
/// is untouched.
#[test]
fn read_only_export_rejects_writes() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("read-only");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let original = random_bytes(0x40, 4 * MIB as usize);
    write_file(&image, &original);
    let server = Server::export(&dir, &image, &mount, &["--read-only"]);

    let entry = find_mount(&mount).expect("the export is mounted");
    assert!(
        entry.has_option("ro"),
        "--read-only export is not mounted ro: {entry:?}"
    );
    assert_same_bytes(
        "read of the read-only export",
        &original,
        &read_file(&mount),
    );

    let is_refusal =
        |err: &std::io::Error| matches!(errno_of(err), Some(Errno::ROFS | Errno::ACCESS));
    // The refusal may come at open or at the first write; both are fine.
    match OpenOptions::new().write(true).open(&mount) {
        Err(err) => assert!(
            is_refusal(&err),
            "opening for writing failed with {err}, not EROFS/EACCES"
        ),
        Ok(file) => match file.write_at(b"overwritten", 4096) {
            Ok(n) => panic!("a write of {n} bytes to a read-only export succeeded"),
            Err(err) => assert!(
                is_refusal(&err),
                "write failed with {err}, not EROFS/EACCES"
            ),
        },
    }
    let output = run(&mut dd(&[
        "if=/dev/zero".into(),
        format!("of={}", mount.display()),
        "bs=64k".into(),
        "count=4".into(),
        "oflag=direct".into(),
        "conv=notrunc".into(),
    ]));
    assert!(
        !output.status.success(),
        "dd onto a read-only export succeeded:\n{}",
        output_text(&output)
    );

    server.stop();
    assert_same_bytes("image of a read-only export", &original, &read_file(&image));
}

/// `--fusermount` mounts through fusermount3 even as root. A wrapper placed
/// first in the server's PATH records that fusermount3 really mounted it.
#[test]
fn fusermount3_mount_roundtrip() {
    if !skip_unless_fuse() || !require_tools(&["fusermount3"]) {
        return;
    }
    let dir = TestDir::new("fusermount");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let mut expected = random_bytes(0xf05e, 2 * MIB as usize);
    write_file(&image, &expected);
    let calls = dir.join("fusermount3-calls");
    let path =
        path_with_fusermount3_wrapper(&dir, &format!("echo \"$*\" >> '{}'", calls.display()));
    let server =
        Server::export_with_env(&dir, &image, &mount, &["--fusermount"], &[("PATH", &path)]);
    let recorded = fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        recorded
            .lines()
            .any(|call| call.contains(&*mount.to_string_lossy())),
        "--fusermount did not mount through fusermount3; its calls: {recorded:?}"
    );

    let data = random_bytes(0xf05f, 256 * KIB as usize);
    let position = 64 * KIB + 7;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&mount)
        .expect("open the export");
    file.write_all_at(&data, position)
        .expect("write through a fusermount3 mount");
    expected[position as usize..position as usize + data.len()].copy_from_slice(&data);
    drop(file);
    assert_same_bytes(
        "read through a fusermount3 mount",
        &expected,
        &read_file(&mount),
    );

    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// A non-growable export behaves like a block device at its end: writes
/// stop at EOF (dd reports ENOSPC), reads come back short.
#[test]
fn writes_past_eof_are_short_and_reads_stop_at_eof() {
    if !skip_unless_fuse() {
        return;
    }
    const BLOCK: usize = 4096;
    const BLOCKS: usize = 256;
    const SIZE: usize = BLOCK * BLOCKS;
    let dir = TestDir::new("past-eof");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let source = dir.join("two-blocks");
    let original = random_bytes(0xe0f, SIZE);
    let two_blocks = random_bytes(0xe10, 2 * BLOCK);
    write_file(&image, &original);
    write_file(&source, &two_blocks);
    let server = Server::export(&dir, &image, &mount, &[]);

    // Two blocks starting at the last one: the first fits, the second does not.
    let output = run(&mut dd(&[
        format!("if={}", source.display()),
        format!("of={}", mount.display()),
        format!("bs={BLOCK}"),
        format!("seek={}", BLOCKS - 1),
        "count=2".into(),
        "oflag=direct".into(),
        "conv=notrunc".into(),
    ]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("No space left on device"),
        "dd across EOF should fail with ENOSPC:\n{}",
        output_text(&output)
    );
    assert!(
        stderr.contains("1+0 records out"),
        "dd across EOF should write exactly one block:\n{stderr}"
    );

    let file = fs::File::open(&mount).expect("open the export");
    let read_at = |position: u64, len: usize| {
        let mut buf = vec![0; len];
        let mut filled = 0;
        loop {
            match file.read_at(&mut buf[filled..], position + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) => panic!("read of {len} bytes at {position}: {err}"),
            }
        }
        buf.truncate(filled);
        buf
    };
    let mut expected = original.clone();
    expected[SIZE - BLOCK..].copy_from_slice(&two_blocks[..BLOCK]);
    let tail = read_at(SIZE as u64 - 100, BLOCK);
    assert_same_bytes("read across EOF (short)", &expected[SIZE - 100..], &tail);
    assert!(
        read_at(SIZE as u64, BLOCK).is_empty(),
        "read at EOF returned data"
    );
    assert!(
        read_at(SIZE as u64 + 10 * BLOCK as u64, BLOCK).is_empty(),
        "read past EOF returned data"
    );
    drop(file);

    let readback = dir.join("readback");
    run_ok(&mut dd(&[
        format!("if={}", mount.display()),
        format!("of={}", readback.display()),
        format!("bs={BLOCK}"),
        format!("skip={}", BLOCKS - 1),
        "count=2".into(),
        "iflag=direct".into(),
        "status=none".into(),
    ]));
    assert_same_bytes(
        "dd iflag=direct across EOF",
        &expected[SIZE - BLOCK..],
        &read_file(&readback),
    );
    assert_eq!(file_size(&mount), SIZE as u64, "the export changed size");

    server.stop();
    assert_eq!(file_size(&image), SIZE as u64, "the image changed size");
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// Bad paths and unknown options are refused before anything is created
/// or mounted: exit code 2 and an error that names what is wrong (one
/// `fuse-export: ` line from the server, or clap's usage error). Runs
/// without root; a server that wrongly mounts is stopped and unmounted by
/// the guard.
#[test]
fn bad_command_lines_exit_2_naming_what_is_wrong() {
    use RefusedBy::{Clap, Server};
    let dir = TestDir::new("bad-cli");
    let image = dir.join("disk.raw");
    let subdir = dir.join("subdir");
    let fresh_mount = dir.join("fresh.img");
    create_sparse_file(&image, MIB);
    fs::create_dir(&subdir).expect("create a directory");
    let missing_dir = dir.join("missing-dir");
    let pidfile_in_missing_dir = missing_dir.join("export.pid");
    let refused = |name, image: &Path, mount: &Path, extra: &[&str], by, says: &[&str]| {
        RefusedCommandLine::new(name, image, mount, extra, by, says)
    };
    let as_text = |path: &Path| path.display().to_string();
    let cases = [
        refused(
            "missing image",
            &dir.join("missing.raw"),
            &fresh_mount,
            &[],
            Server,
            &["missing.raw", "No such file or directory"],
        ),
        refused(
            "directory as image",
            &subdir,
            &fresh_mount,
            &[],
            Server,
            &["subdir", "is a directory"],
        ),
        refused(
            "mountpoint in a missing directory",
            &image,
            &missing_dir.join("disk.img"),
            &[],
            Server,
            &["missing-dir", "does not exist"],
        ),
        refused(
            "character device as mountpoint",
            &image,
            Path::new("/dev/null"),
            &[],
            Server,
            &["/dev/null", "is not a regular file"],
        ),
        refused(
            "--pidfile in a missing directory",
            &image,
            &fresh_mount,
            &["--pidfile", &as_text(&pidfile_in_missing_dir)],
            Server,
            &["--pidfile", "missing-dir", "does not exist"],
        ),
        refused(
            "--pidfile that is a directory",
            &image,
            &fresh_mount,
            &["--pidfile", &as_text(&subdir)],
            Server,
            &["--pidfile", "is a directory"],
        ),
        // Not even root may create files in /proc.
        refused(
            "--pidfile where nothing can be written",
            &image,
            &fresh_mount,
            &["--pidfile", "/proc/fuse-export.pid"],
            Server,
            &["--pidfile", "cannot write in /proc"],
        ),
        refused(
            "unknown option",
            &image,
            &fresh_mount,
            &["--no-such-option"],
            Clap,
            &["unexpected argument '--no-such-option'"],
        ),
        refused(
            "--max-write 1000 (not a multiple of 4096)",
            &image,
            &fresh_mount,
            &["--max-write", "1000"],
            Clap,
            &["--max-write", "1000", "not a multiple of 4096"],
        ),
        refused(
            "--cache bogus",
            &image,
            &fresh_mount,
            &["--cache", "bogus"],
            Clap,
            &["invalid value 'bogus' for '--cache"],
        ),
    ];

    let failures: Vec<String> = cases
        .iter()
        .flat_map(|case| refused_command_line_failures(&dir, case, &fresh_mount))
        .collect();
    assert!(
        failures.is_empty(),
        "expected exit code 2 and an error naming the problem, nothing created or mounted:\n{}",
        failures.join("\n")
    );
}

/// `umount` from outside ends the server like a signal does; the
/// mountpoint the server created is removed again.
#[test]
fn external_umount_stops_server() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("external-umount");
    let image = dir.join("disk.raw");
    let mount = dir.join("created-by-server.img");
    create_sparse_file(&image, 16 * MIB);
    let mut server = Server::export(&dir, &image, &mount, &[]);

    assert_mounted(&mount);
    run_ok(Command::new("umount").arg(&mount));
    server.assert_exits_cleanly("an external umount");
    assert!(
        !mount.exists(),
        "the mountpoint the server created was not removed"
    );
}

/// SIGTERM while dd streams O_DIRECT writes: the server finishes what is in
/// flight, unmounts and exits 0; dd, still in the middle of its stream,
/// fails on its next write; the image holds a prefix of dd's stream that
/// covers every write dd had completed before the signal, and nothing
/// after it.
#[test]
fn sigterm_during_dd_write_exits_cleanly_and_keeps_completed_writes() {
    if !skip_unless_fuse() {
        return;
    }
    const IMAGE_SIZE: u64 = 128 * MIB;
    /// dd's block size: with the default max_write one WRITE request each.
    const BLOCK: u64 = MIB;
    /// The feeder's unit (a multiple of 8, so the stream stays the same).
    const CHUNK: usize = 64 * KIB as usize;
    /// Fed before the signal, so that dd is well into its run.
    const FED_BEFORE_SIGNAL: u64 = 16 * MIB;
    /// The feeder stops here until the signal has gone out, so dd cannot
    /// reach the end of its input (and exit 0) before it.
    const HELD_BACK_FROM: u64 = 32 * MIB;
    const STREAM_SEED: u64 = 0x5167;
    let dir = TestDir::new("sigterm-during-dd");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, IMAGE_SIZE);
    create_sparse_file(&mount, 0); // a pre-existing mountpoint must survive
    let mut server = Server::export(&dir, &image, &mount, &[]);

    let mut writer = KillOnDrop::spawn(
        Command::new("dd")
            .args([
                format!("of={}", mount.display()).as_str(),
                "bs=1M",
                "iflag=fullblock",
            ])
            .args(["oflag=direct", "conv=notrunc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let mut pipe = writer.child.stdin.take().expect("dd's stdin");
    // A small pipe keeps what the feeder handed over close to what dd read.
    let pipe_capacity =
        rustix::pipe::fcntl_setpipe_size(&pipe, 4096).expect("set the pipe's capacity") as u64;
    let fed = Arc::new(AtomicU64::new(0));
    let (signal_sent, signal_sent_here) = mpsc::channel::<()>();
    let feeder = {
        let fed = Arc::clone(&fed);
        thread::spawn(move || {
            let mut stream = Xorshift::new(STREAM_SEED);
            let mut chunk = vec![0; CHUNK];
            while fed.load(Ordering::Relaxed) < IMAGE_SIZE {
                // An error: the test gave up before signalling.
                if fed.load(Ordering::Relaxed) == HELD_BACK_FROM && signal_sent_here.recv().is_err()
                {
                    break;
                }
                stream.fill(&mut chunk);
                // Fails once dd has exited (EPIPE; Rust ignores SIGPIPE).
                if pipe.write_all(&chunk).is_err() {
                    break;
                }
                fed.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
        })
    };

    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while fed.load(Ordering::Relaxed) < FED_BEFORE_SIGNAL {
        if let Some(status) = writer.try_wait() {
            panic!("dd exited early ({status}): {}", writer.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "dd did not take {FED_BEFORE_SIGNAL} bytes in time"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let fed_before_signal = fed.load(Ordering::Relaxed);
    if let Some(status) = writer.try_wait() {
        panic!(
            "dd exited before the signal ({status}): {}",
            writer.stderr()
        );
    }
    server.signal(Signal::TERM);
    signal_sent
        .send(())
        .expect("the feeder waits for the signal");
    server.assert_exits_cleanly("SIGTERM during a dd write");
    assert_eq!(
        fs::metadata(&mount)
            .map(|meta| meta.is_file() && meta.len() == 0)
            .ok(),
        Some(true),
        "the pre-existing mountpoint file was removed or written to"
    );

    // dd was in the middle of its input, so a write of its (one that was
    // queued when the server stopped reading, or the next one) failed.
    let Some(status) = writer.wait_for_exit(STOP_TIMEOUT) else {
        panic!("dd is still running {STOP_TIMEOUT:?} after the server exited");
    };
    let dd_stderr = writer.stderr();
    let write_failed = format!("error writing '{}'", mount.display());
    assert!(
        !status.success() && dd_stderr.contains(&write_failed),
        "dd should fail writing {} once the server is gone; it exited {status}:\n{dd_stderr}",
        mount.display()
    );
    feeder.join().expect("the feeder thread panicked");

    // dd had read all but what was in the pipe, and completed the write of
    // every block it had read except perhaps the one under way.
    let read_before_signal = fed_before_signal.saturating_sub(pipe_capacity);
    let completed_before_signal = (read_before_signal / BLOCK).saturating_sub(1) * BLOCK;
    let fed_total = fed.load(Ordering::Relaxed) as usize;
    assert_eq!(file_size(&image), IMAGE_SIZE, "the image changed size");
    let content = read_file(&image);
    let stream = random_bytes(STREAM_SEED, fed_total);
    let written = first_difference(&stream, &content[..fed_total]).unwrap_or(fed_total);
    assert!(
        written as u64 >= completed_before_signal,
        "the image holds dd's stream only up to {written}, but dd had completed \
         {completed_before_signal} bytes before SIGTERM"
    );
    if let Some(at) = content[written..].iter().position(|&byte| byte != 0) {
        panic!(
            "the image holds dd's stream up to {written}, then data that is not zero at {}",
            written + at
        );
    }
}

/// A directory mountpoint shows the image inside it under its own name; the
/// directory cannot be changed, and the data goes to the image.
#[test]
fn directory_mountpoint_exposes_the_image_by_name() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("directory-mountpoint");
    let image = dir.join("disk.raw");
    let mount = dir.join("mnt");
    create_random_file(&image, 21, 8 * MIB);
    fs::create_dir(&mount).expect("create the mountpoint directory");
    let server = Server::export(&dir, &image, &mount, &[]);

    assert_eq!(names_in(&mount), ["disk.raw"]);
    let exported = mount.join("disk.raw");
    let meta = fs::metadata(&exported).expect("stat the exported image");
    assert!(meta.is_file());
    assert_eq!(meta.len(), 8 * MIB);
    assert!(
        fs::metadata(mount.join("other")).is_err(),
        "only the image exists in the directory"
    );
    let created = fs::File::create(mount.join("new-file"));
    assert!(
        created.is_err(),
        "creating a file in the export directory must fail"
    );

    let data = random_bytes(22, 64 * 1024);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&exported)
        .expect("open the image");
    file.write_all_at(&data, MIB)
        .expect("write through the directory export");
    let mut back = vec![0u8; data.len()];
    file.read_exact_at(&mut back, MIB).expect("read back");
    assert_same_bytes("read back through the export", &data, &back);
    drop(file);
    server.stop();

    let on_image = read_file(&image);
    assert_same_bytes(
        "the image after stop",
        &data,
        &on_image[MIB as usize..MIB as usize + data.len()],
    );
    assert!(mount.is_dir(), "the mountpoint directory is left as it was");
}
