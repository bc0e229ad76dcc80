//! Export semantics end to end: what `stat`, `chmod`, `truncate`,
//! `fallocate`, `lseek`, `mmap`, `dd`, `cp`, `qemu-io` and `qemu-img` see on
//! a mounted export, checked byte for byte against the image file, plus the
//! ways a server ends (SIGINT, fusectl abort) and command-line validation.
//!
//! Tests that mount need root and /dev/fuse and print `SKIP:` otherwise (or
//! when a client tool is missing). Every test that changes data compares the
//! image after the server stopped, so nothing may live only in the server.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use rustix::process::Signal;

// ---------------------------------------------------------------------------
// Local helpers

fn stat_export(path: &Path) -> fs::Metadata {
    let owned = path.to_path_buf();
    bounded("stat of the export", move || fs::metadata(owned))
        .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()))
}

fn read_export(path: &Path) -> Vec<u8> {
    let owned = path.to_path_buf();
    bounded("read of the export", move || read_file(&owned))
}

/// Runs `command`; it must fail, and its stderr must contain `error` (the
/// `strerror` text of the expected errno).
#[track_caller]
fn assert_fails_with(command: &mut Command, error: &str) -> Output {
    let output = run(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(error),
        "`{}` should fail with \"{error}\" ({}):\n{}",
        describe(command),
        output.status,
        output_text(&output)
    );
    output
}

fn command(program: &str, args: &[&str], path: &Path) -> Command {
    let mut command = Command::new(program);
    command.args(args).arg(path);
    command
}

/// Writes `data` at `offset` of `path` (a local file) without truncating.
fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()));
    file.write_all_at(data, offset)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}

/// `python3 -c script args...`, which must succeed.
fn python(script: &str, args: &[String]) -> Output {
    run_ok(Command::new("python3").arg("-c").arg(script).args(args))
}

fn stdout_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `virtual-size` from `qemu-img info --output=json -f raw path`.
fn qemu_img_virtual_size(path: &Path) -> u64 {
    let output = run_ok(&mut command(
        "qemu-img",
        &["info", "--output=json", "-f", "raw"],
        path,
    ));
    let json = stdout_text(&output);
    let value = json.split("\"virtual-size\":").nth(1).and_then(|rest| {
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    });
    value.unwrap_or_else(|| panic!("no virtual-size in qemu-img info output:\n{json}"))
}

// ---------------------------------------------------------------------------
// Attributes

/// GETATTR: mode 0600, the server's owner, the image's size, block count and
/// times; `stat` (statx, which the server answers with ENOSYS) falls back.
#[test]
fn stat_shows_mode_owner_and_the_images_size_blocks_and_times() {
    if !skip_unless_fuse() || !require_tools(&["stat"]) {
        return;
    }
    const SIZE: u64 = 6 * MIB + 512;
    let dir = TestDir::new("stat");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    // Half data, half hole, so that the block count is not just size / 512.
    create_sparse_file(&image, SIZE);
    write_at(&image, 0, &random_bytes(0x57a7, 3 * MIB as usize));
    let server = Server::export(&dir, &image, &mount, &[]);

    let exported = stat_export(&mount);
    let original = fs::metadata(&image).expect("stat the image");
    assert!(exported.is_file(), "the export is not a regular file");
    assert_eq!(exported.mode() & 0o7777, 0o600, "mode of the export");
    assert_eq!(
        (exported.uid(), exported.gid()),
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw()
        ),
        "owner of the export (the server runs with the test's credentials)"
    );
    assert_eq!(exported.len(), SIZE, "size of the export");
    assert_eq!(exported.blocks(), original.blocks(), "st_blocks");
    assert_eq!(
        (exported.mtime(), exported.mtime_nsec()),
        (original.mtime(), original.mtime_nsec()),
        "mtime"
    );
    assert_eq!(
        (exported.ctime(), exported.ctime_nsec()),
        (original.ctime(), original.ctime_nsec()),
        "ctime"
    );

    let output = run_ok(&mut command("stat", &["-c", "%F %a %s"], &mount));
    assert_eq!(
        stdout_text(&output).trim(),
        format!("regular file 600 {SIZE}"),
        "coreutils stat of the export"
    );
    server.stop();
}

/// Without --allow-other only the owner bits may change (QEMU's rule:
/// nobody else can reach the file anyway); owner and times cannot change.
#[test]
fn chmod_without_allow_other_accepts_owner_bits_only() {
    if !skip_unless_fuse() || !require_tools(&["chmod", "chown", "touch"]) {
        return;
    }
    let dir = TestDir::new("chmod");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 4 * MIB);
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).expect("chmod the image");
    let image_before = fs::metadata(&image).expect("stat the image");
    let server = Server::export(&dir, &image, &mount, &[]);
    let mode_of = |path: &Path| stat_export(path).mode() & 0o7777;

    run_ok(&mut command("chmod", &["0600"], &mount));
    assert_eq!(mode_of(&mount), 0o600);
    assert_fails_with(
        &mut command("chmod", &["0644"], &mount),
        "Operation not permitted",
    );
    assert_fails_with(
        &mut command("chmod", &["0606"], &mount),
        "Operation not permitted",
    );
    assert_eq!(mode_of(&mount), 0o600, "a refused chmod changed the mode");
    run_ok(&mut command("chmod", &["0400"], &mount));
    assert_eq!(mode_of(&mount), 0o400);
    run_ok(&mut command("chmod", &["0600"], &mount));
    assert_eq!(mode_of(&mount), 0o600);

    assert_fails_with(
        &mut command("chown", &["1:1"], &mount),
        "Operation not supported",
    );
    assert_fails_with(
        &mut command("touch", &[], &mount),
        "Operation not supported",
    );
    assert_fails_with(
        &mut command("touch", &["-m", "-d", "@0"], &mount),
        "Operation not supported",
    );
    let exported = stat_export(&mount);
    assert_eq!(
        (exported.uid(), exported.gid()),
        (image_before.uid(), image_before.gid()),
        "a refused chown changed the owner"
    );

    server.stop();
    let image_after = fs::metadata(&image).expect("stat the image");
    assert_eq!(
        image_after.mode() & 0o7777,
        0o644,
        "chmod of the export changed the image's own mode"
    );
}

/// With --allow-other group/other bits and owner changes are allowed; times
/// still are not.
#[test]
fn chmod_and_chown_with_allow_other() {
    if !skip_unless_fuse() || !require_tools(&["chmod", "chown", "touch"]) {
        return;
    }
    let dir = TestDir::new("chmod-allow-other");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 4 * MIB);
    let server = Server::export(&dir, &image, &mount, &["--allow-other"]);

    let entry = find_mount(&mount).expect("the export is mounted");
    assert!(
        entry.has_option("allow_other"),
        "--allow-other export not mounted allow_other: {entry:?}"
    );
    run_ok(&mut command("chmod", &["0644"], &mount));
    assert_eq!(stat_export(&mount).mode() & 0o7777, 0o644);
    run_ok(&mut command("chmod", &["0664"], &mount));
    assert_eq!(stat_export(&mount).mode() & 0o7777, 0o664);
    run_ok(&mut command("chown", &["1234:5678"], &mount));
    let exported = stat_export(&mount);
    assert_eq!((exported.uid(), exported.gid()), (1234, 5678), "owner");
    assert_eq!(exported.mode() & 0o7777, 0o664, "chown changed the mode");
    assert_fails_with(
        &mut command("touch", &[], &mount),
        "Operation not supported",
    );

    server.stop();
    let image_meta = fs::metadata(&image).expect("stat the image");
    assert_eq!(
        (image_meta.uid(), image_meta.gid()),
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw()
        ),
        "chown of the export changed the image's owner"
    );
}

/// A read-only export shows 0400 and refuses every change, with EROFS.
#[test]
fn read_only_export_shows_0400_and_refuses_mode_and_size_changes() {
    if !skip_unless_fuse() || !require_tools(&["chmod", "truncate", "fallocate"]) {
        return;
    }
    let dir = TestDir::new("read-only-attrs");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let original = random_bytes(0x0400, 2 * MIB as usize);
    write_file(&image, &original);
    let server = Server::export(&dir, &image, &mount, &["--read-only"]);

    assert_eq!(stat_export(&mount).mode() & 0o7777, 0o400, "mode");
    let read_only = "Read-only file system";
    assert_fails_with(&mut command("chmod", &["0600"], &mount), read_only);
    assert_fails_with(&mut command("truncate", &["-s", "1M"], &mount), read_only);
    assert_fails_with(&mut command("truncate", &["-s", "3M"], &mount), read_only);
    assert_fails_with(
        &mut command(
            "fallocate",
            &["--punch-hole", "-o", "0", "-l", "1M"],
            &mount,
        ),
        read_only,
    );
    let exported = stat_export(&mount);
    assert_eq!(exported.mode() & 0o7777, 0o400, "mode after refusals");
    assert_eq!(exported.len(), original.len() as u64, "size after refusals");

    server.stop();
    assert_same_bytes("image of a read-only export", &original, &read_file(&image));
}

// ---------------------------------------------------------------------------
// Size changes

/// `truncate` resizes export and image; growth is sparse and reads zeros,
/// also where a shrink cut data off before.
#[test]
fn truncate_grows_and_shrinks_export_and_image() {
    if !skip_unless_fuse() || !require_tools(&["truncate"]) {
        return;
    }
    const ORIGINAL: u64 = 8 * MIB;
    const GROWN: u64 = 20 * MIB;
    /// Not a multiple of any O_DIRECT alignment.
    const SHRUNK: u64 = 3 * MIB + 1000;
    const REGROWN: u64 = 4 * MIB;
    let dir = TestDir::new("truncate");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let mut expected = random_bytes(0x7e0c, ORIGINAL as usize);
    write_file(&image, &expected);
    let allocated_before = allocated_bytes(&image);
    let server = Server::export(&dir, &image, &mount, &[]);

    let resize = |size: u64| run_ok(&mut command("truncate", &["-s", &size.to_string()], &mount));
    resize(GROWN);
    assert_eq!(
        stat_export(&mount).len(),
        GROWN,
        "export size after growing"
    );
    assert_eq!(file_size(&image), GROWN, "image size after growing");
    assert!(
        allocated_bytes(&image) <= allocated_before,
        "growing allocated blocks: {} bytes allocated before, {} after",
        allocated_before,
        allocated_bytes(&image)
    );
    expected.resize(GROWN as usize, 0);
    assert_same_bytes("export after growing", &expected, &read_export(&mount));

    resize(SHRUNK);
    assert_eq!(
        stat_export(&mount).len(),
        SHRUNK,
        "export size after shrinking"
    );
    assert_eq!(file_size(&image), SHRUNK, "image size after shrinking");
    expected.truncate(SHRUNK as usize);
    assert_same_bytes("export after shrinking", &expected, &read_export(&mount));

    // The bytes the shrink cut off must not come back.
    resize(REGROWN);
    assert_eq!(
        stat_export(&mount).len(),
        REGROWN,
        "export size after regrowing"
    );
    expected.resize(REGROWN as usize, 0);
    assert_same_bytes("export after regrowing", &expected, &read_export(&mount));

    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// `fallocate` modes: plain (grows the export), --keep-size, --punch-hole
/// and --zero-range reach the image; collapse and insert are refused.
#[test]
fn fallocate_modes_reach_the_image() {
    if !skip_unless_fuse() || !require_tools(&["fallocate"]) {
        return;
    }
    const SIZE: u64 = 16 * MIB;
    const DATA: usize = 8 * MIB as usize;
    let dir = TestDir::new("fallocate");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    // Data in the first half, a hole in the second.
    create_sparse_file(&image, SIZE);
    let mut expected = vec![0; SIZE as usize];
    expected[..DATA].copy_from_slice(&random_bytes(0xfa11, DATA));
    write_at(&image, 0, &expected[..DATA]);
    let server = Server::export(&dir, &image, &mount, &[]);
    let fallocate = |args: &[&str]| run_ok(&mut command("fallocate", args, &mount));

    // --keep-size in the hole: blocks get allocated, the size stays.
    let before = allocated_bytes(&image);
    fallocate(&["--keep-size", "-o", "9M", "-l", "2M"]);
    assert_eq!(
        stat_export(&mount).len(),
        SIZE,
        "--keep-size changed the size"
    );
    assert!(
        allocated_bytes(&image) >= before + 2 * MIB,
        "--keep-size did not allocate 2 MiB in the image ({before} -> {})",
        allocated_bytes(&image)
    );

    // --punch-hole: zeros, the image gets sparser, the size stays.
    let before = allocated_bytes(&image);
    fallocate(&["--punch-hole", "-o", "1M", "-l", "2M"]);
    expected[MIB as usize..3 * MIB as usize].fill(0);
    assert_eq!(
        stat_export(&mount).len(),
        SIZE,
        "--punch-hole changed the size"
    );
    assert!(
        allocated_bytes(&image) + 2 * MIB <= before,
        "--punch-hole did not free 2 MiB in the image ({before} -> {})",
        allocated_bytes(&image)
    );

    // --zero-range over an unaligned range: exactly those bytes become zero.
    let (offset, len) = (5 * MIB as usize + 100, 70_000);
    fallocate(&[
        "--zero-range",
        "-o",
        &offset.to_string(),
        "-l",
        &len.to_string(),
    ]);
    expected[offset..offset + len].fill(0);
    assert_eq!(
        stat_export(&mount).len(),
        SIZE,
        "--zero-range changed the size"
    );

    // Plain fallocate past the end grows export and image.
    fallocate(&["-o", "15M", "-l", "3M"]);
    expected.resize(18 * MIB as usize, 0);
    assert_eq!(
        stat_export(&mount).len(),
        18 * MIB,
        "export after plain fallocate"
    );
    assert_eq!(file_size(&image), 18 * MIB, "image after plain fallocate");

    for mode in ["--collapse-range", "--insert-range"] {
        assert_fails_with(
            &mut command("fallocate", &[mode, "-o", "0", "-l", "1M"], &mount),
            "Operation not supported",
        );
    }
    assert_eq!(
        stat_export(&mount).len(),
        18 * MIB,
        "a refused mode changed the size"
    );
    assert_same_bytes("export after fallocate", &expected, &read_export(&mount));

    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// SEEK_DATA/SEEK_HOLE on the export answer what they answer on the image;
/// at or past the end ENXIO.
#[test]
fn seek_data_and_hole_follow_the_images_extents() {
    if !skip_unless_fuse() || !require_tools(&["python3"]) {
        return;
    }
    const SCRIPT: &str = r#"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for query in sys.argv[2:]:
    kind, offset = query.split(":")
    whence = os.SEEK_DATA if kind == "data" else os.SEEK_HOLE
    try:
        print(os.lseek(fd, int(offset), whence))
    except OSError as err:
        print(errno.errorcode[err.errno])
"#;
    let dir = TestDir::new("lseek");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 8 * MIB);
    write_at(&image, MIB, &random_bytes(1, MIB as usize));
    write_at(&image, 5 * MIB, &random_bytes(2, 64 * KIB as usize));
    let server = Server::export(&dir, &image, &mount, &[]);

    let (m, k) = (MIB, KIB);
    let cases: Vec<(&str, u64, String)> = vec![
        ("data", 0, m.to_string()),
        ("hole", 0, "0".into()),
        ("hole", m, (2 * m).to_string()),
        ("data", m + 4 * k, (m + 4 * k).to_string()),
        ("data", 2 * m, (5 * m).to_string()),
        ("hole", 5 * m, (5 * m + 64 * k).to_string()),
        ("data", 6 * m, "ENXIO".into()),
        ("hole", 6 * m, (6 * m).to_string()),
        ("hole", 8 * m - 1, (8 * m - 1).to_string()),
        ("data", 8 * m, "ENXIO".into()),
        ("hole", 8 * m, "ENXIO".into()),
        ("hole", 9 * m, "ENXIO".into()),
    ];
    let queries: Vec<String> = cases
        .iter()
        .map(|(kind, offset, _)| format!("{kind}:{offset}"))
        .collect();
    let answers = |path: &Path| -> Vec<String> {
        let args = [vec![path.display().to_string()], queries.clone()].concat();
        stdout_text(&python(SCRIPT, &args))
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let on_export = answers(&mount);
    let on_image = answers(&image);
    server.stop();

    let mut failures = Vec::new();
    for (i, (kind, offset, expected)) in cases.iter().enumerate() {
        let exported = on_export.get(i).map_or("<none>", String::as_str);
        let direct = on_image.get(i).map_or("<none>", String::as_str);
        if exported != expected || exported != direct {
            failures.push(format!(
                "SEEK_{} from {offset}: export {exported}, image {direct}, expected {expected}",
                kind.to_uppercase()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "lseek mismatches:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Writing clients

/// `qemu-io` write-zeroes (with and without unmap) through the export, then
/// `qemu-io read -P 0` of the zeroed range.
#[test]
fn qemu_io_write_zeroes_reads_back_as_zeros() {
    if !skip_unless_fuse() || !require_tools(&["qemu-io"]) {
        return;
    }
    const SIZE: usize = 4 * MIB as usize;
    /// End of the two zeroed ranges (1 MiB + 64 KiB).
    const ZEROED_END: usize = MIB as usize + 64 * KIB as usize;
    let dir = TestDir::new("qemu-io");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    // Data where qemu-io writes zeroes and from 2 MiB on; [1M+64K, 2M) is
    // already zero, so `read -P 0 0 2M` checks exactly the zeroed ranges.
    let mut expected = random_bytes(0x9e10, SIZE);
    expected[ZEROED_END..2 * MIB as usize].fill(0);
    write_file(&image, &expected);
    let allocated_before = allocated_bytes(&image);
    let server = Server::export(&dir, &image, &mount, &[]);

    let qemu_io = |commands: &[&str]| {
        let mut command = Command::new("qemu-io");
        command.args(["-f", "raw"]);
        for c in commands {
            command.args(["-c", c]);
        }
        command.arg(&mount);
        let output = run_ok(&mut command);
        // qemu-io reports a failed command on stdout and still exits 0.
        let stdout = stdout_text(&output);
        assert!(
            !stdout.contains("failed") && !stdout.contains("Pattern verification"),
            "`{}` reported an error:\n{}",
            describe(&command),
            output_text(&output)
        );
    };
    qemu_io(&["write -zu 0 1M", "write -z 1M 64k"]);
    expected[..ZEROED_END].fill(0);
    qemu_io(&["read -P 0 0 2M"]);
    assert_same_bytes("export after write-zeroes", &expected, &read_export(&mount));
    assert!(
        allocated_bytes(&image) < allocated_before,
        "write -zu wrote zeros as data instead of unmapping ({allocated_before} -> {} bytes allocated)",
        allocated_bytes(&image)
    );

    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// `qemu-img info` sees the export's size, also after `qemu-img resize`.
#[test]
fn qemu_img_info_reports_the_virtual_size_and_follows_resize() {
    if !skip_unless_fuse() || !require_tools(&["qemu-img"]) {
        return;
    }
    const SIZE: u64 = 48 * MIB + 64 * KIB;
    const RESIZED: u64 = 50 * MIB;
    let dir = TestDir::new("qemu-img-info");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, SIZE);
    let server = Server::export(&dir, &image, &mount, &[]);

    assert_eq!(
        qemu_img_virtual_size(&mount),
        SIZE,
        "virtual size of the export"
    );
    run_ok(
        Command::new("qemu-img")
            .args(["resize", "-f", "raw"])
            .arg(&mount)
            .arg(RESIZED.to_string()),
    );
    assert_eq!(
        qemu_img_virtual_size(&mount),
        RESIZED,
        "after qemu-img resize"
    );
    assert_eq!(file_size(&image), RESIZED, "image after qemu-img resize");
    server.stop();
}

/// Fixed size: buffered `dd` across and at the end writes what fits, then
/// reports ENOSPC; the size never changes.
#[test]
fn fixed_size_export_write_past_eof_is_short_with_enospc() {
    if !skip_unless_fuse() {
        return;
    }
    const BLOCK: usize = 64 * KIB as usize;
    const SIZE: usize = 16 * BLOCK;
    let dir = TestDir::new("enospc");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let source = dir.join("source");
    let mut expected = random_bytes(0xe05c, SIZE);
    let two_blocks = random_bytes(0xe05d, 2 * BLOCK);
    write_file(&image, &expected);
    write_file(&source, &two_blocks);
    let server = Server::export(&dir, &image, &mount, &[]);

    let dd_at = |block: usize| {
        let mut command = dd(&[
            format!("if={}", source.display()),
            format!("of={}", mount.display()),
            format!("bs={BLOCK}"),
            format!("seek={block}"),
            "conv=notrunc".into(),
        ]);
        let output = assert_fails_with(&mut command, "No space left on device");
        assert_eq!(
            output.status.code(),
            Some(1),
            "exit code of dd past the end"
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    // Across the end: the first block fits.
    let stderr = dd_at(SIZE / BLOCK - 1);
    assert!(
        stderr.contains("1+0 records out"),
        "dd across the end should write one block:\n{stderr}"
    );
    expected[SIZE - BLOCK..].copy_from_slice(&two_blocks[..BLOCK]);
    // Exactly at the end: nothing fits.
    let stderr = dd_at(SIZE / BLOCK);
    assert!(
        stderr.contains("0+0 records out"),
        "dd at the end should write nothing:\n{stderr}"
    );

    assert_eq!(stat_export(&mount).len(), SIZE as u64, "export size");
    assert_eq!(file_size(&image), SIZE as u64, "image size");
    assert_same_bytes("export after dd", &expected, &read_export(&mount));
    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// O_TRUNC on a fixed-size export is ignored: `dd` without conv=notrunc and
/// `cp` onto the export overwrite the start and keep the rest.
#[test]
fn o_trunc_is_ignored_on_a_fixed_size_export() {
    if !skip_unless_fuse() || !require_tools(&["cp"]) {
        return;
    }
    const SIZE: usize = 4 * MIB as usize;
    let dir = TestDir::new("o-trunc-fixed");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let small = dir.join("small");
    let mut expected = random_bytes(0x07c, SIZE);
    write_file(&image, &expected);
    let server = Server::export(&dir, &image, &mount, &[]);

    let block = random_bytes(0x07d, 4096);
    write_file(&small, &block);
    run_ok(&mut dd(&[
        format!("if={}", small.display()),
        format!("of={}", mount.display()),
        "bs=4k".into(),
        "status=none".into(),
    ]));
    expected[..4096].copy_from_slice(&block);
    assert_eq!(
        stat_export(&mount).len(),
        SIZE as u64,
        "size after dd without notrunc"
    );

    let text = b"cp opens its destination with O_TRUNC";
    fs::remove_file(&small).expect("remove the small file");
    write_file(&small, text);
    run_ok(Command::new("cp").arg(&small).arg(&mount));
    expected[..text.len()].copy_from_slice(text);
    assert_eq!(stat_export(&mount).len(), SIZE as u64, "size after cp");

    let truncating_open = {
        let mount = mount.clone();
        bounded("open with O_TRUNC", move || {
            OpenOptions::new().write(true).truncate(true).open(mount)
        })
    };
    drop(truncating_open.expect("open the export with O_TRUNC"));
    assert_eq!(
        stat_export(&mount).len(),
        SIZE as u64,
        "size after open(O_TRUNC)"
    );
    assert_same_bytes(
        "export after O_TRUNC opens",
        &expected,
        &read_export(&mount),
    );

    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// On a growable export O_TRUNC truncates to 0 like on a file.
#[test]
fn o_trunc_truncates_a_growable_export() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("o-trunc-growable");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let source = dir.join("source");
    write_file(&image, &random_bytes(0x6707, 4 * MIB as usize));
    let data = random_bytes(0x6708, 3000);
    write_file(&source, &data);
    let server = Server::export(&dir, &image, &mount, &["--growable"]);

    run_ok(&mut dd(&[
        format!("if={}", source.display()),
        format!("of={}", mount.display()),
        "bs=1000".into(),
        "status=none".into(),
    ]));
    assert_eq!(stat_export(&mount).len(), 3000, "export size after dd");
    assert_eq!(file_size(&image), 3000, "image size after dd");
    assert_same_bytes("export after dd", &data, &read_export(&mount));

    server.stop();
    assert_same_bytes("image after the server stopped", &data, &read_file(&image));
}

/// --growable: writes past the end grow the image (the gap reads zeros),
/// with O_DIRECT and with O_APPEND.
#[test]
fn growable_export_grows_on_writes_past_eof() {
    if !skip_unless_fuse() {
        return;
    }
    const ORIGINAL: usize = MIB as usize;
    const GAP_END: usize = 2 * MIB as usize;
    const BLOCK: usize = 64 * KIB as usize;
    let dir = TestDir::new("growable");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let source = dir.join("source");
    let mut expected = random_bytes(0x6406, ORIGINAL);
    write_file(&image, &expected);
    let server = Server::export(&dir, &image, &mount, &["--growable"]);

    let blocks = random_bytes(0x6407, 4 * BLOCK);
    write_file(&source, &blocks);
    run_ok(&mut dd(&[
        format!("if={}", source.display()),
        format!("of={}", mount.display()),
        format!("bs={BLOCK}"),
        format!("seek={}", GAP_END / BLOCK),
        "oflag=direct".into(),
        "conv=notrunc".into(),
        "status=none".into(),
    ]));
    expected.resize(GAP_END, 0);
    expected.extend_from_slice(&blocks);
    assert_eq!(
        stat_export(&mount).len(),
        expected.len() as u64,
        "export after dd"
    );
    assert_eq!(file_size(&image), expected.len() as u64, "image after dd");

    let tail = random_bytes(0x6408, 1000);
    let appended = {
        let (mount, tail) = (mount.clone(), tail.clone());
        bounded("append to the export", move || {
            use std::io::Write as _;
            let mut file = OpenOptions::new().append(true).open(mount)?;
            file.write_all(&tail)
        })
    };
    appended.expect("append 1000 bytes to the export");
    expected.extend_from_slice(&tail);
    assert_eq!(
        stat_export(&mount).len(),
        expected.len() as u64,
        "after append"
    );
    assert_eq!(
        file_size(&image),
        expected.len() as u64,
        "image after append"
    );
    assert_same_bytes("export after growing", &expected, &read_export(&mount));

    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// `cp` of the export (plain and sparse-aware) is identical to the image.
#[test]
fn cp_of_the_export_equals_the_image() {
    if !skip_unless_fuse() || !require_tools(&["cp"]) {
        return;
    }
    let dir = TestDir::new("cp");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    // Data and holes of various sizes, ending in a hole.
    create_sparse_file(&image, 32 * MIB + 4096);
    for (i, (offset, len)) in [(0, 100 * KIB), (MIB + 512, 3 * MIB), (9 * MIB, 10 * MIB)]
        .into_iter()
        .enumerate()
    {
        write_at(&image, offset, &random_bytes(0xc0 + i as u64, len as usize));
    }
    let server = Server::export(&dir, &image, &mount, &[]);

    for (name, sparse) in [
        ("copy", "--sparse=auto"),
        ("sparse-copy", "--sparse=always"),
    ] {
        let copy = dir.join(name);
        run_ok(Command::new("cp").arg(sparse).arg(&mount).arg(&copy));
        assert_files_equal(&image, &copy);
    }
    server.stop();
}

/// `mmap(MAP_SHARED)` of the export (python): reads see the image, writes
/// reach it after msync.
#[test]
fn mmap_shared_writes_reach_the_image() {
    if !skip_unless_fuse() || !require_tools(&["python3"]) {
        return;
    }
    const SCRIPT: &str = r#"
import mmap, os, sys
path, length = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
sys.stdout.buffer.write(m[:length])
for spec in sys.argv[3:]:
    offset, data = spec.split(":")
    data = bytes.fromhex(data)
    m[int(offset):int(offset) + len(data)] = data
m.flush()
m.close()
os.close(fd)
"#;
    const SIZE: usize = 2 * MIB as usize;
    let dir = TestDir::new("mmap");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let original = random_bytes(0x33a9, SIZE);
    write_file(&image, &original);
    let server = Server::export(&dir, &image, &mount, &[]);

    // Across a page boundary, across the 1 MiB boundary, up to the end.
    let writes = [(4090, 20), (MIB as usize - 3, 5000), (SIZE - 100, 100)];
    let mut expected = original.clone();
    let mut args = vec![mount.display().to_string(), SIZE.to_string()];
    for (i, &(offset, len)) in writes.iter().enumerate() {
        let data = random_bytes(0x33b0 + i as u64, len);
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        args.push(format!("{offset}:{hex}"));
        expected[offset..offset + len].copy_from_slice(&data);
    }
    let output = python(SCRIPT, &args);
    assert_same_bytes("mmap read of the export", &original, &output.stdout);
    assert_same_bytes("export after mmap writes", &expected, &read_export(&mount));
    assert_same_bytes(
        "image after msync, server still running",
        &expected,
        &read_file(&image),
    );

    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// `--image X --mount X`: the image is served over itself, and afterwards
/// the file is still there with the data written through the export.
#[test]
fn export_mounted_over_its_own_image() {
    if !skip_unless_fuse() {
        return;
    }
    const SIZE: usize = 4 * MIB as usize;
    let dir = TestDir::new("over-itself");
    let image = dir.join("disk.raw");
    let mut expected = random_bytes(0x5e1f, SIZE);
    write_file(&image, &expected);
    let server = Server::export(&dir, &image, &image, &[]);

    let entry = find_mount(&image).expect("the image path is mounted");
    assert_eq!(entry.fstype, EXPORT_FSTYPE);
    assert_same_bytes("read through the export", &expected, &read_export(&image));
    let data = random_bytes(0x5e20, 100_000);
    let position = 12_345;
    let written = {
        let (image, data) = (image.clone(), data.clone());
        bounded("write through the export", move || {
            OpenOptions::new()
                .write(true)
                .open(image)?
                .write_all_at(&data, position)
        })
    };
    written.expect("write through the export");
    expected[position as usize..position as usize + data.len()].copy_from_slice(&data);
    assert_same_bytes("export after the write", &expected, &read_export(&image));

    server.stop();
    assert!(
        image.is_file(),
        "the image is gone after the server stopped"
    );
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}

/// GETXATTR/LISTXATTR/SETXATTR get ENOSYS from the server; the kernel turns
/// that into EOPNOTSUPP for good, and other requests keep working.
#[test]
fn xattr_requests_are_unsupported_and_stat_keeps_working() {
    if !skip_unless_fuse() || !require_tools(&["python3"]) {
        return;
    }
    const SCRIPT: &str = r#"
import errno, os, sys
path = sys.argv[1]
calls = [
    ("getxattr", lambda: os.getxattr(path, "user.test")),
    ("getxattr", lambda: os.getxattr(path, "user.test")),
    ("listxattr", lambda: os.listxattr(path)),
    ("setxattr", lambda: os.setxattr(path, "user.test", b"x")),
]
for name, call in calls:
    try:
        print(name, "ok", call())
    except OSError as err:
        # Python names errno 95 ENOTSUP; on Linux it is also EOPNOTSUPP.
        code = err.errno
        print(name, "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode[code])
print("size", os.stat(path).st_size)
"#;
    let dir = TestDir::new("xattr");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 3 * MIB);
    let server = Server::export(&dir, &image, &mount, &[]);

    let output = python(SCRIPT, &[mount.display().to_string()]);
    let expected = format!(
        "getxattr EOPNOTSUPP\ngetxattr EOPNOTSUPP\nlistxattr EOPNOTSUPP\nsetxattr EOPNOTSUPP\nsize {}\n",
        3 * MIB
    );
    assert_eq!(stdout_text(&output), expected, "xattr calls on the export");
    assert_eq!(stat_export(&mount).len(), 3 * MIB);
    server.stop();
}

// ---------------------------------------------------------------------------
// Ending

/// SIGINT ends the server like SIGTERM: exit 0, nothing mounted, the data
/// written before is in the image.
#[test]
fn sigint_stops_the_server_cleanly() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("sigint");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 8 * MIB);
    let mut server = Server::export(&dir, &image, &mount, &[]);

    let data = random_bytes(0x5161, 256 * KIB as usize);
    let source = dir.join("source");
    write_file(&source, &data);
    run_ok(&mut dd(&[
        format!("if={}", source.display()),
        format!("of={}", mount.display()),
        "bs=256k".into(),
        "seek=1".into(),
        "conv=notrunc".into(),
        "status=none".into(),
    ]));
    server.signal(Signal::INT);
    server.assert_exits_cleanly("SIGINT");
    let mut expected = vec![0; 8 * MIB as usize];
    expected[256 * KIB as usize..512 * KIB as usize].copy_from_slice(&data);
    assert_same_bytes("image after SIGINT", &expected, &read_file(&image));
}

/// The FUSE control filesystem mounted on a directory of the test's own
/// (it can be mounted anywhere, and this one is nobody else's to unmount);
/// unmounted on drop.
#[derive(Debug)]
struct FusectlMount {
    dir: PathBuf,
}

impl FusectlMount {
    /// `None` (after a `SKIP:` line; a failure under CI) only where this
    /// machine forbids it or the kernel has no fusectl; any other failure
    /// fails the test.
    fn mount(dir: PathBuf) -> Option<FusectlMount> {
        fs::create_dir(&dir).expect("create the fusectl mountpoint");
        match rustix::mount::mount(
            "fusectl",
            &dir,
            "fusectl",
            rustix::mount::MountFlags::empty(),
            None,
        ) {
            Ok(()) => Some(FusectlMount { dir }),
            Err(err @ (rustix::io::Errno::PERM | rustix::io::Errno::NODEV)) => {
                skip_unless_in_ci(&format!("cannot mount fusectl: {err}"));
                None
            }
            Err(err) => panic!("cannot mount fusectl on {}: {err}", dir.display()),
        }
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for FusectlMount {
    fn drop(&mut self) {
        if let Err(err) = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::empty()) {
            eprintln!("cannot unmount {}: {err}; detaching it", self.dir.display());
            let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Aborting the connection through fusectl ends the server: exit 0, no
/// mount left; data acknowledged before the abort is in the image.
#[test]
fn fusectl_abort_ends_the_server() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("fusectl-abort");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 8 * MIB);
    let mut server = Server::export(&dir, &image, &mount, &[]);

    let data = random_bytes(0xab07, 64 * KIB as usize);
    let written = {
        let (mount, data) = (mount.clone(), data.clone());
        bounded("write through the export", move || {
            let file = OpenOptions::new().write(true).open(mount)?;
            file.write_all_at(&data, 4096)?;
            file.sync_all()
        })
    };
    written.expect("write and fsync through the export");

    // The connection directory is named after the kernel's dev_t of the
    // mount: major << 20 | minor.
    let dev = stat_export(&mount).dev();
    let connection = (u64::from(rustix::fs::major(dev)) << 20) | u64::from(rustix::fs::minor(dev));
    let Some(fusectl) = FusectlMount::mount(dir.join("fusectl")) else {
        return;
    };
    let abort = fusectl.path().join(connection.to_string()).join("abort");
    fs::write(&abort, "1").unwrap_or_else(|err| panic!("cannot write {}: {err}", abort.display()));
    server.assert_exits_cleanly("a fusectl abort");
    drop(fusectl);
    assert!(
        !mount.exists(),
        "the mountpoint the server created was not removed"
    );

    let mut expected = vec![0; 8 * MIB as usize];
    expected[4096..4096 + data.len()].copy_from_slice(&data);
    assert_same_bytes("image after the abort", &expected, &read_file(&image));
}

// ---------------------------------------------------------------------------
// Command line

/// Bad option values and combinations are refused with exit code 2 and an
/// error naming the option and what is wrong, before anything is created
/// or mounted. Runs without root.
#[test]
fn bad_option_combinations_exit_2_before_mounting() {
    use RefusedBy::{Clap, Server};
    let dir = TestDir::new("bad-options");
    let image = dir.join("disk.raw");
    let mount = dir.join("fresh.img");
    create_sparse_file(&image, MIB);
    let cases: [(&[&str], RefusedBy, &[&str]); 8] = [
        (
            &["--read-only", "--growable"],
            Clap,
            &["'--read-only' cannot be used with '--growable'"],
        ),
        (
            &["--spill-tiers", "5000"],
            Server,
            &["--spill-tiers", "5000 is not a multiple of 4096"],
        ),
        (
            &["--spill-tiers", "64K,32K"],
            Server,
            &["--spill-tiers", "32768 must be above", "the previous bound"],
        ),
        (&["--queues", "0"], Clap, &["'0' for '--queues", "1..=64"]),
        (&["--queues", "65"], Clap, &["'65' for '--queues", "1..=64"]),
        (
            &["--reads-per-queue", "0"],
            Clap,
            &["'0' for '--reads-per-queue", "1..=256"],
        ),
        (
            &["--transport", "bogus"],
            Clap,
            &["invalid value 'bogus' for '--transport"],
        ),
        (
            &["--max-write", "32M"],
            Clap,
            &["'32M' for '--max-write", "between 4K and 16M"],
        ),
    ];

    let failures: Vec<String> = cases
        .into_iter()
        .flat_map(|(extra, by, says)| {
            let case = RefusedCommandLine::new(&extra.join(" "), &image, &mount, extra, by, says);
            refused_command_line_failures(&dir, &case, &mount)
        })
        .collect();
    assert!(
        failures.is_empty(),
        "expected exit code 2 and an error naming the problem, nothing created or mounted:\n{}",
        failures.join("\n")
    );
}

/// `--max-write 3M` is valid (a multiple of 4 KiB, at most 16M): the
/// server caps it at fs.fuse.max_pages_limit pages and serves 3 MiB writes.
#[test]
fn max_write_3m_is_accepted_and_capped_to_the_kernel_limit() {
    if !skip_unless_fuse() {
        return;
    }
    const MAX_WRITE: u64 = 3 * MIB;
    const SIZE: usize = 12 * MIB as usize;
    let dir = TestDir::new("max-write-3m");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let source = dir.join("source");
    create_sparse_file(&image, SIZE as u64);
    let data = random_bytes(0x3333, 2 * MAX_WRITE as usize);
    write_file(&source, &data);
    let server = Server::export(&dir, &image, &mount, &["--max-write", "3M"]);

    let pages_limit: u64 = fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(256);
    let expected_max = MAX_WRITE.min(pages_limit * 4096);
    let entry = find_mount(&mount).expect("the export is mounted");
    assert!(
        entry.has_option(&format!("max_read={expected_max}")),
        "expected max_read={expected_max} (3M capped by max_pages_limit={pages_limit}): {entry:?}"
    );

    run_ok(&mut dd(&[
        format!("if={}", source.display()),
        format!("of={}", mount.display()),
        "bs=3M".into(),
        "seek=1".into(),
        "oflag=direct".into(),
        "conv=notrunc".into(),
        "status=none".into(),
    ]));
    let mut expected = vec![0; SIZE];
    expected[MAX_WRITE as usize..3 * MAX_WRITE as usize].copy_from_slice(&data);
    assert_same_bytes("export after 3 MiB writes", &expected, &read_export(&mount));
    server.stop();
    assert_same_bytes(
        "image after the server stopped",
        &expected,
        &read_file(&image),
    );
}
