//! The edges of the export's semantics, end to end with real clients:
//! `O_TRUNC` while other processes use the export (AIO readers, a shared
//! mapping), writes at the end of a fixed-size image (dd, fio), a growing
//! write that fails on a full filesystem, passthrough and the image size,
//! `SEEK_DATA` at the end, and `--spill-tiers` validation.
//!
//! Tests that mount need root and /dev/fuse and print `SKIP:` otherwise (or
//! when a client tool is missing).

mod common;

use std::fs;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

// ---------------------------------------------------------------------------
// Local helpers

fn export_size(path: &Path) -> u64 {
    let owned = path.to_path_buf();
    bounded("stat of the export", move || fs::metadata(owned))
        .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()))
        .len()
}

/// `python3 -c script args...` (output captured, not checked).
fn python(script: &str, args: &[&Path]) -> Output {
    run(Command::new("python3").arg("-c").arg(script).args(args))
}

/// `python3 -c script args...`, which must succeed; returns its stdout.
fn python_ok(script: &str, args: &[&Path]) -> String {
    let output = run_ok(Command::new("python3").arg("-c").arg(script).args(args));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A `qemu-io` that holds `path` open with O_DIRECT and the given AIO
/// engine (`native` = Linux AIO, `io_uring`), like a VM's disk.
fn qemu_io_holding(path: &Path, aio: &str) -> Interactive {
    Interactive::spawn(
        Command::new("qemu-io")
            .args(["-f", "raw", "-t", "none", "--aio", aio])
            .arg(path),
        "qemu-io> ",
    )
}

/// Asserts that a `qemu-io` `read -P` succeeded: all bytes read and equal
/// to the pattern (qemu pads a short read with zeros, which then fail the
/// pattern check).
#[track_caller]
fn assert_pattern_read(what: &str, answer: &str) {
    assert!(
        answer.contains("read 4096/4096 bytes") && !answer.contains("Pattern verification failed"),
        "{what}: {answer}"
    );
}

/// A process that maps the file given as its argument `MAP_SHARED` and
/// answers `OFFSET LEN BYTE` with `ok` if the mapped bytes there are all
/// BYTE. A page past the kernel's idea of the size kills it with SIGBUS.
const MAPPER: &str = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
print("mmap> ", end="", flush=True)
for line in sys.stdin:
    offset, length, byte = map(int, line.split())
    data = m[offset:offset + length]
    print("ok" if data == bytes([byte]) * length else "differs: " + data[:16].hex(), flush=True)
    print("mmap> ", end="", flush=True)
"#;

// ---------------------------------------------------------------------------
// O_TRUNC (issue 11, item 7)

/// `dd of=export` without conv=notrunc opens with O_TRUNC. On a fixed-size
/// export that keeps the size, and the kernel must agree: AIO O_DIRECT
/// readers (qemu-io with Linux AIO and io_uring, as a VM uses) that hold the
/// export open and a second process's shared mapping go on reading the
/// image instead of EOF, zeros or SIGBUS.
#[test]
fn o_trunc_on_a_fixed_size_export_keeps_the_size_for_aio_readers_and_mappings() {
    if !skip_unless_fuse() || !require_tools(&["qemu-io", "python3"]) {
        return;
    }
    const SIZE: usize = 4 * MIB as usize;
    const FILL: u8 = 0xab;
    const WRITTEN: u8 = 0x5a;
    let dir = TestDir::new("o-trunc-aio");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let block = dir.join("block");
    write_file(&image, &vec![FILL; SIZE]);
    write_file(&block, &[WRITTEN; 4096]);
    let server = Server::export(&dir, &image, &mount, &[]);

    let mut readers = [
        ("Linux AIO", qemu_io_holding(&mount, "native")),
        ("io_uring", qemu_io_holding(&mount, "io_uring")),
    ];
    for (engine, reader) in &mut readers {
        let answer = reader.ask(&format!("read -P {FILL:#x} 1M 4k"));
        assert_pattern_read(&format!("{engine} read before the O_TRUNC open"), &answer);
    }
    let mut mapper = Interactive::spawn(
        Command::new("python3").arg("-c").arg(MAPPER).arg(&mount),
        "mmap> ",
    );
    assert_eq!(
        mapper.ask(&format!("{} 4096 {FILL}", MIB)).trim(),
        "ok",
        "mapped bytes before the O_TRUNC open"
    );

    // Another process opens the export with O_TRUNC and writes one block.
    run_ok(&mut dd(&[
        format!("if={}", block.display()),
        format!("of={}", mount.display()),
        "bs=4k".into(),
        "status=none".into(),
    ]));

    for (engine, reader) in &mut readers {
        let answer = reader.ask(&format!("read -P {FILL:#x} 1M 4k"));
        assert_pattern_read(&format!("{engine} read after the O_TRUNC open"), &answer);
        let answer = reader.ask(&format!("read -P {FILL:#x} 4092k 4k"));
        assert_pattern_read(&format!("{engine} read of the last block"), &answer);
        let answer = reader.ask(&format!("read -P {WRITTEN:#x} 0 4k"));
        assert_pattern_read(&format!("{engine} read of what dd wrote"), &answer);
    }
    // Pages the mapping had not touched yet, and the one it had.
    for offset in [2 * MIB, SIZE as u64 - 4096, MIB] {
        assert_eq!(
            mapper.ask(&format!("{offset} 4096 {FILL}")).trim(),
            "ok",
            "mapped bytes at {offset} after the O_TRUNC open"
        );
    }
    let [(_, native), (_, uring)] = readers;
    for client in [native, uring, mapper] {
        let status = client.finish();
        assert!(
            status.is_some_and(|status| status.success()),
            "client exit: {status:?}"
        );
    }
    assert_eq!(export_size(&mount), SIZE as u64, "export size");

    server.stop();
    let mut expected = vec![FILL; SIZE];
    expected[..4096].fill(WRITTEN);
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// The rule on a fixed-size export: a truncation to 0 without an open file
/// (open with O_TRUNC, and `truncate(2)` of the path, which the kernel
/// sends the same way) keeps the size; `ftruncate` resizes.
#[test]
fn fixed_size_export_keeps_its_size_on_o_trunc_and_path_truncation_to_zero() {
    if !skip_unless_fuse() || !require_tools(&["python3"]) {
        return;
    }
    const SIZE: u64 = 2 * MIB;
    let dir = TestDir::new("o-trunc-rule");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let data = random_bytes(0x7e57, SIZE as usize);
    write_file(&image, &data);
    let server = Server::export(&dir, &image, &mount, &[]);

    let sizes = python_ok(
        r#"
import os, sys
path = sys.argv[1]
for flags in (os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | os.O_TRUNC, os.O_RDWR | os.O_TRUNC):
    fd = os.open(path, flags)
    print(os.fstat(fd).st_size, os.lseek(fd, 0, os.SEEK_END))
    os.close(fd)
os.truncate(path, 0)
print(os.stat(path).st_size)
"#,
        &[&mount],
    );
    let both = format!("{SIZE} {SIZE}");
    let only = SIZE.to_string();
    assert_eq!(
        sizes.lines().collect::<Vec<_>>(),
        [&both, &both, &both, &only],
        "sizes after the O_TRUNC opens and truncate(path, 0)"
    );
    assert_eq!(file_size(&image), SIZE, "image size");
    assert_same_bytes("export after O_TRUNC opens", &data, &read_file(&mount));

    // ftruncate (what `truncate -s` does) resizes.
    let resized = python_ok(
        r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.ftruncate(fd, 0)
print(os.fstat(fd).st_size)
"#,
        &[&mount],
    );
    assert_eq!(resized.trim(), "0", "size after ftruncate(0)");
    server.stop();
    assert_eq!(file_size(&image), 0, "image size after ftruncate(0)");
}

/// On a growable export O_TRUNC truncates, whatever the access mode, as on
/// Linux files (O_RDONLY|O_TRUNC included); the kernel and the image agree.
#[test]
fn o_trunc_truncates_a_growable_export_in_every_access_mode() {
    if !skip_unless_fuse() || !require_tools(&["python3"]) {
        return;
    }
    let dir = TestDir::new("o-trunc-growable-modes");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    write_file(&image, &random_bytes(0x7e58, MIB as usize));
    let server = Server::export(&dir, &image, &mount, &["--growable"]);

    for (name, flags) in [
        ("O_RDONLY", "os.O_RDONLY"),
        ("O_WRONLY", "os.O_WRONLY"),
        ("O_RDWR", "os.O_RDWR"),
    ] {
        let script = format!(
            r#"
import os, sys
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY)
os.pwrite(fd, b"x" * 5000, 0)
os.close(fd)
fd = os.open(path, {flags} | os.O_TRUNC)
print(os.fstat(fd).st_size, os.lseek(fd, 0, os.SEEK_END), os.stat(path).st_size)
"#
        );
        assert_eq!(
            python_ok(&script, &[&mount]).trim(),
            "0 0 0",
            "{name}|O_TRUNC on a growable export"
        );
        assert_eq!(file_size(&image), 0, "image after {name}|O_TRUNC");
    }
    server.stop();
    assert_eq!(file_size(&image), 0, "image after the server stopped");
}

// ---------------------------------------------------------------------------
// Writes at the end of a fixed-size image (item 8)

/// At or past the end of a fixed-size image nothing fits: every kind of
/// client gets ENOSPC ("No space left on device"), not EIO: dd with
/// O_DIRECT in both `--o-direct-opens` modes (the second sends the pieces
/// of a large write in parallel, as AIO), buffered dd, and fio with libaio.
/// A write that crosses the end writes what fits.
#[test]
fn writes_at_the_end_of_a_fixed_size_export_fail_with_enospc_for_every_client() {
    if !skip_unless_fuse() || !require_tools(&["fio"]) {
        return;
    }
    const SIZE: u64 = 4 * MIB;
    for mode in ["parallel-writers", "parallel-chunks"] {
        let dir = TestDir::new("enospc-clients");
        let image = dir.join("disk.raw");
        let mount = dir.join("disk.img");
        let source = dir.join("source");
        let original = random_bytes(0xe05e, SIZE as usize);
        let incoming = random_bytes(0xe05f, 2 * MIB as usize);
        write_file(&image, &original);
        write_file(&source, &incoming);
        let server = Server::export(&dir, &image, &mount, &["--o-direct-opens", mode]);

        let dd_to = |block: &str, seek: u64, oflag: Option<&str>| {
            let mut operands = vec![
                format!("if={}", source.display()),
                format!("of={}", mount.display()),
                format!("bs={block}"),
                format!("seek={seek}"),
                "count=1".into(),
                "conv=notrunc".into(),
            ];
            operands.extend(oflag.map(|flag| format!("oflag={flag}")));
            run(&mut dd(&operands))
        };
        let expect_enospc = |what: &str, output: &Output| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success() && stderr.contains("No space left on device"),
                "{mode}: {what} should fail with ENOSPC:\n{}",
                output_text(output)
            );
        };
        // At the end, O_DIRECT: 64 KiB (one request) and 2 MiB (two 1 MiB
        // pieces, sent in parallel with parallel-chunks).
        expect_enospc(
            "dd oflag=direct bs=64K at the end",
            &dd_to("64K", 64, Some("direct")),
        );
        expect_enospc(
            "dd oflag=direct bs=2M at the end",
            &dd_to("2M", 2, Some("direct")),
        );
        expect_enospc("buffered dd bs=64K at the end", &dd_to("64K", 64, None));
        // Past the end.
        expect_enospc(
            "dd oflag=direct bs=1M past the end",
            &dd_to("1M", 6, Some("direct")),
        );
        // fio with libaio and io_uring, one 64 KiB write at the end
        // (create_on_open: no layout, which would unlink or truncate the
        // file to make it long enough).
        for engine in ["libaio", "io_uring"] {
            let fio = run(Command::new("fio")
                .args([
                    "--name=end",
                    &format!("--ioengine={engine}"),
                    "--direct=1",
                    "--rw=write",
                    "--bs=64k",
                    "--size=64k",
                    "--offset=4m",
                    "--iodepth=1",
                    "--create_on_open=1",
                    "--allow_file_create=0",
                ])
                .arg(format!("--filename={}", mount.display())));
            let fio_text = output_text(&fio);
            assert!(
                fio_text.contains("error=No space left on device"),
                "{mode}: fio {engine} write at the end should fail with ENOSPC:\n{fio_text}"
            );
        }

        // Across the end, synchronously: the part that fits is written,
        // then dd reports ENOSPC for the rest.
        let output = run(&mut dd(&[
            format!("if={}", source.display()),
            format!("of={}", mount.display()),
            "bs=64K".into(),
            format!("seek={}", SIZE / (64 * KIB) - 1),
            "count=2".into(),
            "oflag=direct".into(),
            "conv=notrunc".into(),
        ]));
        expect_enospc("dd oflag=direct across the end", &output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("1+0 records out"),
            "{mode}: dd across the end should write one block:\n{stderr}"
        );
        let mut expected = original.clone();
        expected[(SIZE - 64 * KIB) as usize..].copy_from_slice(&incoming[..(64 * KIB) as usize]);

        assert_eq!(export_size(&mount), SIZE, "{mode}: export size");
        server.stop();
        assert_eq!(file_size(&image), SIZE, "{mode}: image size");
        assert_same_bytes(
            &format!("{mode}: image after the server stopped"),
            &expected,
            &read_file(&image),
        );
    }
}

// ---------------------------------------------------------------------------
// Growing writes that fail (item 9)

/// A growing write that fails (the image's filesystem is full) leaves the
/// size as it was, in the export and in the image, with O_DIRECT and
/// buffered writes, aligned and not.
#[test]
fn a_growable_write_that_fails_leaves_the_size_as_it_was() {
    if !skip_unless_fuse() {
        return;
    }
    const SIZE: u64 = 256 * KIB;
    let dir = TestDir::new("grow-enospc");
    let small = dir.join("small");
    fs::create_dir(&small).expect("create the tmpfs mountpoint");
    let filesystem = SmallFilesystem::mount(&small, 2 * MIB);
    let image = small.join("disk.raw");
    let mount = dir.join("disk.img");
    let source = dir.join("source");
    let original = random_bytes(0x9f0, SIZE as usize);
    write_file(&image, &original);
    write_file(&source, &random_bytes(0x9f1, MIB as usize));
    filesystem.fill("filler");
    let server = Server::export(&dir, &image, &mount, &["--growable"]);

    // dd's oflag=seek_bytes makes seek= a byte offset: right at the end.
    for (what, operands) in [
        ("O_DIRECT 64 KiB", ["bs=64K", "oflag=direct,seek_bytes"]),
        ("O_DIRECT 1 MiB", ["bs=1M", "oflag=direct,seek_bytes"]),
        ("buffered 1000 bytes", ["bs=1000", "oflag=seek_bytes"]),
    ] {
        let mut arguments = vec![
            format!("if={}", source.display()),
            format!("of={}", mount.display()),
            format!("seek={SIZE}"),
            "count=1".into(),
            "conv=notrunc".into(),
        ];
        arguments.extend(operands.iter().map(|operand| operand.to_string()));
        let output = run(&mut dd(&arguments));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("No space left on device"),
            "{what}: dd onto a full filesystem should fail with ENOSPC:\n{}",
            output_text(&output)
        );
        assert_eq!(
            export_size(&mount),
            SIZE,
            "{what}: export size after the failed write"
        );
        assert_eq!(
            file_size(&image),
            SIZE,
            "{what}: image size after the failed write"
        );
    }
    assert_same_bytes(
        "export after the failed writes",
        &original,
        &read_file(&mount),
    );
    server.stop();
    assert_eq!(
        file_size(&image),
        SIZE,
        "image size after the server stopped"
    );
    assert_same_bytes(
        "image after the server stopped",
        &original,
        &read_file(&image),
    );
}

// ---------------------------------------------------------------------------
// Passthrough and the size (item 10)

/// With passthrough the kernel extends the image itself; LSEEK and resizes
/// must see the size it wrote, not a size cached before: `SEEK_DATA` in the
/// new part finds it, and `ftruncate` back to the old size shrinks the
/// image. One process does it all on one fd, so nothing refreshes the
/// attributes in between.
#[test]
fn passthrough_lseek_and_truncate_follow_the_size_the_kernel_wrote() {
    if !skip_unless_fuse() || !require_tools(&["python3"]) {
        return;
    }
    const SIZE: u64 = MIB;
    let dir = TestDir::new("passthrough-size");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    write_file(&image, &random_bytes(0x9a55, SIZE as usize));
    let server = Server::export(&dir, &image, &mount, &["--transport", "passthrough"]);
    if server.stderr().contains("passthrough unavailable") {
        eprintln!(
            "SKIP: {}: the kernel refused passthrough",
            current_test_name()
        );
        return;
    }

    let answers = python_ok(
        r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
old = os.fstat(fd).st_size
block = mmap.mmap(-1, 65536)
block.write(b"\x5a" * 65536)
print("wrote", os.pwritev(fd, [block], old))
try:
    print("data", os.lseek(fd, old, os.SEEK_DATA) - old)
except OSError as err:
    print("data error", err.errno)
try:
    print("hole", os.lseek(fd, old, os.SEEK_HOLE) - old)
except OSError as err:
    print("hole error", err.errno)
os.ftruncate(fd, old)
print("size", os.fstat(fd).st_size - old)
"#,
        &[&mount],
    );
    assert_eq!(
        answers.lines().collect::<Vec<_>>(),
        ["wrote 65536", "data 0", "hole 65536", "size 0"],
        "passthrough: a write past the end, then SEEK_DATA/SEEK_HOLE and ftruncate back"
    );
    assert_eq!(export_size(&mount), SIZE, "export size");
    server.stop();
    assert_eq!(file_size(&image), SIZE, "image size after ftruncate back");
}

// ---------------------------------------------------------------------------
// SEEK_DATA at the end (item 11)

/// The image file may be longer than the export shows (a growing write in
/// flight, or someone extending the file behind the export's back). Data
/// beyond the export's end is not the export's: `SEEK_DATA` from a hole
/// that runs to the end answers ENXIO (`SEEK_HOLE` the offset itself).
#[test]
fn seek_data_finds_no_data_past_the_exports_end() {
    if !skip_unless_fuse() || !require_tools(&["python3"]) {
        return;
    }
    const SIZE: u64 = MIB;
    let dir = TestDir::new("seek-data-end");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    // Data in the first 64 KiB, a hole from there to the end.
    create_sparse_file(&image, SIZE);
    let image_file = fs::File::options()
        .write(true)
        .open(&image)
        .expect("open the image");
    image_file
        .write_all_at(&random_bytes(0x5eed, 64 * KIB as usize), 0)
        .expect("write the image's data");
    let server = Server::export(&dir, &image, &mount, &[]);
    // Extend the image file itself beyond the export's end, with data.
    image_file
        .write_all_at(&[1u8; 4096], SIZE + 64 * KIB)
        .expect("write past the export's end");

    let answers = python(
        r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for whence, name in ((os.SEEK_DATA, "data"), (os.SEEK_HOLE, "hole")):
    try:
        print(name, os.lseek(fd, 128 * 1024, whence))
    except OSError as err:
        print(name, "errno", err.errno)
"#,
        &[&mount],
    );
    let text = String::from_utf8_lossy(&answers.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["data errno 6", "hole 131072"],
        "SEEK_DATA/SEEK_HOLE from a hole that runs to the export's end:\n{}",
        output_text(&answers)
    );
    server.stop();
}

// ---------------------------------------------------------------------------
// --spill-tiers (item 11)

/// Bounds at or above max_write used to be dropped silently; they are
/// refused, checked against the max_write the kernel will allow
/// (`--max-write 4M` is capped to `fs.fuse.max_pages_limit` pages).
#[test]
fn spill_tier_bounds_at_or_above_max_write_are_refused() {
    let dir = TestDir::new("spill-tiers");
    let image = dir.join("disk.raw");
    create_sparse_file(&image, MIB);
    let mount = dir.join("disk.img");
    let limit = fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(256)
        * 4096;
    let above_the_cap = format!("{}K", (limit + 64 * KIB) / KIB);
    let cases: [(&str, Vec<&str>); 3] = [
        (
            "a bound equal to max_write",
            vec!["--max-write", "1M", "--spill-tiers", "1M"],
        ),
        (
            "a bound above max_write",
            vec!["--max-write", "256K", "--spill-tiers", "64K,512K"],
        ),
        (
            "a bound above the kernel's cap",
            vec!["--max-write", "16M", "--spill-tiers", &above_the_cap],
        ),
    ];
    let mut failures = Vec::new();
    for (name, extra) in cases {
        let args = export_args(&image, &mount, &extra);
        failures.extend(rejected_command_line_failures(
            &dir, name, &args, &mount, &mount, false,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
