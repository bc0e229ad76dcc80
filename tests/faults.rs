//! Faults end to end: what happens when the server, the image's filesystem
//! or another user of the image misbehaves.
//!
//! * kill -9 under write load: the watcher removes the mount, fsynced data
//!   is on the image, a new server starts on the same mountpoint; a dead
//!   mount whose watcher died too is cleared by the next server; a dead
//!   FUSE mount of another kind is named with the command to remove it.
//! * Image locks (QEMU's OFD scheme): a second export, `qemu-io` writers and
//!   readers, `qemu-img info -U`, read-only sharing, `--locking off`.
//! * The image's filesystem fails: ENOSPC reaches the client and the server
//!   lives; an ext4 `remount,abort` fails clients, and the server still
//!   stops (exit 1: it could not flush).
//! * Unprivileged mounts through fusermount3 keep other users and root out,
//!   and are cleaned up after kill -9 too.
//! * SIGTERM while a client holds the file open: exit 0, lazy detach, the
//!   data is on the image.
//! * `soak` (ignored; `make soak`): fio verify rounds with restarts.
//!
//! Tests need root and /dev/fuse (and the tools they name) and print
//! `SKIP:` otherwise.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::{Pid, Signal};

// ---------------------------------------------------------------------------
// Local helpers

/// The hidden argument of the server's unmount watcher.
const WATCHER_ARG: &str = "--internal-unmount-watcher";

/// The server's log lines that are not info lines.
fn complaints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("fuse-export: info:"))
        .collect()
}

/// Waits for `server` to exit and checks it exited with code 2 and printed
/// exactly one line, which is returned.
#[track_caller]
fn assert_refused(server: &mut Server<'_>, what: &str) -> String {
    let Some(status) = server.wait_for_exit(STOP_TIMEOUT) else {
        panic!("{what}: still running after {STOP_TIMEOUT:?}");
    };
    let log = server.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        status.code() == Some(2) && lines.len() == 1 && lines[0].starts_with("fuse-export: "),
        "{what}: expected exit 2 with one `fuse-export: ` line; got {status}:\n{log}"
    );
    lines[0].to_owned()
}

/// Pids of the unmount watchers started for `mount`.
fn watchers_of(mount: &Path) -> Vec<Pid> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let words: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_watcher = words.get(1) == Some(&WATCHER_ARG.as_bytes())
                && words.last().is_some_and(|w| w.is_empty())
                && words
                    .iter()
                    .rev()
                    .nth(1)
                    .is_some_and(|w| *w == mount.as_os_str().as_encoded_bytes());
            is_watcher.then(|| Pid::from_raw(pid)).flatten()
        })
        .collect()
}

/// Whether the local file `path` has data (not a hole) at or after `offset`.
fn has_data_from(path: &Path, offset: u64) -> bool {
    File::open(path)
        .is_ok_and(|file| rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(offset)).is_ok())
}

/// Where each thread of `pid` waits in the kernel, for messages.
fn kernel_stacks(pid: u32) -> String {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let stack = fs::read_to_string(path.join("stack")).unwrap_or_default();
            let wchan = fs::read_to_string(path.join("wchan")).unwrap_or_default();
            Some(format!("{}: {wchan}\n{stack}", path.display()))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every thread whose kernel stack mentions one of `words`.
fn kernel_waits_in(words: &[&str]) -> String {
    let mut found = Vec::new();
    for process in fs::read_dir("/proc").into_iter().flatten().flatten() {
        for task in fs::read_dir(process.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let stack = fs::read_to_string(task.path().join("stack")).unwrap_or_default();
            if words.iter().any(|w| stack.contains(w)) {
                let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                found.push(format!(
                    "{} ({}):\n{stack}",
                    task.path().display(),
                    comm.trim()
                ));
            }
        }
    }
    found.join("\n")
}

/// Whether any process still has the image locked (`/proc/locks`).
fn image_locked(image: &Path) -> bool {
    let meta = fs::metadata(image).expect("stat the image");
    let dev = meta.dev();
    let key = format!(
        " {:02x}:{:02x}:{} ",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        meta.ino()
    );
    fs::read_to_string("/proc/locks").is_ok_and(|locks| locks.contains(&key))
}

/// A command's stderr and stdout in one string, for matching messages.
fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    )
}

/// A system user created for this test; removed on drop.
#[derive(Debug)]
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

static NEXT_USER: AtomicU64 = AtomicU64::new(0);

impl TestUser {
    fn create() -> TestUser {
        let name = format!(
            "fxt{}u{}",
            std::process::id(),
            NEXT_USER.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(
            Command::new("useradd")
                .args(["--system", "--no-create-home", "--user-group"])
                .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
                .arg(&name),
        );
        // The guard exists from here on, so the user goes even if `id` fails.
        let mut user = TestUser {
            name,
            uid: u32::MAX,
            gid: u32::MAX,
        };
        let id = |flag: &str| -> u32 {
            let output = run_ok(Command::new("id").arg(flag).arg(&user.name));
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .expect("id prints a number")
        };
        (user.uid, user.gid) = (id("-u"), id("-g"));
        user
    }

    fn ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// `program args` run as this user.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--"])
            .arg(program);
        command
    }

    fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|err| panic!("chown {}: {err}", path.display()));
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let removed = Command::new("userdel")
            .arg(&self.name)
            .stdin(Stdio::null())
            .output();
        if !removed.is_ok_and(|o| o.status.success()) {
            eprintln!("userdel {} failed", self.name);
        }
    }
}

/// /dev/fuse opened to every user (fusermount3 opens it as the calling
/// user), restored on drop. A lock file serialises the tests of all test
/// processes that do this, so each restores the mode it found.
#[derive(Debug)]
struct DevFuseForEveryone {
    _lock: File,
    mode: u32,
}

impl DevFuseForEveryone {
    const DEVICE: &str = "/dev/fuse";

    fn open() -> DevFuseForEveryone {
        let lock = File::create(std::env::temp_dir().join("fuse-export-tests-dev-fuse.lock"))
            .expect("create the /dev/fuse lock file");
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .expect("lock the /dev/fuse lock file");
        let mode = fs::metadata(Self::DEVICE)
            .expect("stat /dev/fuse")
            .permissions()
            .mode()
            & 0o7777;
        fs::set_permissions(Self::DEVICE, fs::Permissions::from_mode(0o666))
            .expect("chmod /dev/fuse");
        DevFuseForEveryone { _lock: lock, mode }
    }
}

impl Drop for DevFuseForEveryone {
    fn drop(&mut self) {
        if let Err(err) = fs::set_permissions(Self::DEVICE, fs::Permissions::from_mode(self.mode)) {
            eprintln!(
                "cannot restore the mode of /dev/fuse to {:o}: {err}",
                self.mode
            );
        }
    }
}

/// Writes `CHUNK`-sized chunks of `chunk_data(i)` at `i * CHUNK` with
/// O_DIRECT, each followed by fdatasync, until a write fails or `stop` is
/// set; `synced` counts the chunks whose fdatasync returned. Returns the
/// error that ended it, if any.
fn synced_writer(
    path: PathBuf,
    chunks: u64,
    synced: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Option<io::Error>> {
    thread::spawn(move || {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) => return Some(err),
        };
        let mut round = 0u64;
        while !stop.load(Ordering::Acquire) {
            let index = round % chunks;
            let data = AlignedBuf::from_slice(&chunk_data(round, index));
            let result = file
                .write_all_at(data.as_slice(), index * CHUNK)
                .and_then(|()| file.sync_data());
            if let Err(err) = result {
                return Some(err);
            }
            round += 1;
            synced.store(round, Ordering::Release);
        }
        None
    })
}

const CHUNK: u64 = MIB;

/// What round `round` writes into chunk `index`.
fn chunk_data(round: u64, index: u64) -> Vec<u8> {
    random_bytes(0xfa17 ^ (round << 16) ^ index, CHUNK as usize)
}

/// The content each of `chunks` chunks must have after `synced` rounds:
/// the last round that wrote it, or zeros.
fn expected_chunk(synced: u64, chunks: u64, index: u64) -> Vec<u8> {
    let last = (0..synced).rev().find(|round| round % chunks == index);
    match last {
        Some(round) => chunk_data(round, index),
        None => vec![0; CHUNK as usize],
    }
}

fn read_chunk(path: &Path, index: u64) -> Vec<u8> {
    let file = File::open(path).unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
    let mut buf = vec![0; CHUNK as usize];
    file.read_exact_at(&mut buf, index * CHUNK)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    buf
}

// ---------------------------------------------------------------------------
// Crash cleanup

/// kill -9 while a client writes with fdatasync and fio writes elsewhere
/// (and the watcher got a SIGTERM): the mount is gone without anyone
/// running umount, every chunk whose
/// fdatasync returned is on the image, and a new server starts on the same
/// mountpoint and serves the same data.
#[test]
fn kill_9_under_write_load_leaves_no_dead_mount_and_keeps_fsynced_data() {
    if !skip_unless_fuse() || !require_tools(&["fio"]) {
        return;
    }
    const CHUNKS: u64 = 16;
    /// Rounds of synced writes before the kill (more than one pass).
    const SYNCED_BEFORE_KILL: u64 = CHUNKS + 4;
    let dir = TestDir::new("kill9");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 2 * CHUNKS * CHUNK);
    let mut server = Server::export(&dir, &image, &mount, &["--queues", "2"]);

    let fio_output = dir.join("fio.out");
    let output_file = File::create(&fio_output).expect("create fio's output file");
    let mut fio = KillOnDrop::spawn(
        Command::new("fio")
            .args(["--name=load", "--thread"])
            .arg(format!("--filename={}", mount.display()))
            .args(["--ioengine=io_uring", "--direct=1", "--rw=randwrite"])
            .args([
                "--bsrange=4k-256k",
                "--iodepth=16",
                "--time_based",
                "--runtime=300",
            ])
            .arg(format!("--offset={}", CHUNKS * CHUNK))
            .arg(format!("--size={}", CHUNKS * CHUNK))
            .stdin(Stdio::null())
            .stdout(output_file.try_clone().expect("duplicate the output fd"))
            .stderr(output_file),
    );
    let synced = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = synced_writer(mount.clone(), CHUNKS, synced.clone(), stop.clone());

    // fio must be writing through the export (not yet started, it would
    // open the mountpoint file underneath once the mount is gone): its
    // region of the image has data.
    let reached = poll_until(COMMAND_TIMEOUT, || {
        let loaded = synced.load(Ordering::Acquire) >= SYNCED_BEFORE_KILL
            && has_data_from(&image, CHUNKS * CHUNK);
        (loaded || writer.is_finished() || fio.try_wait().is_some()).then_some(())
    });
    assert!(
        reached.is_some() && !writer.is_finished(),
        "the writer did not get {SYNCED_BEFORE_KILL} synced chunks in, or fio wrote \
         nothing; stderr:\n{}",
        server.stderr()
    );
    assert!(fio.try_wait().is_none(), "fio ended before the kill");
    // As a service manager would when it stops the unit: the watcher must
    // outlive SIGTERM to do its job.
    let watchers = watchers_of(&mount);
    assert_eq!(watchers.len(), 1, "one watcher for {}", mount.display());
    rustix::process::kill_process(watchers[0], Signal::TERM).expect("SIGTERM to the watcher");
    server.kill_9();

    let gone = poll_until(STOP_TIMEOUT, || (!is_mounted(&mount)).then_some(()));
    assert!(
        gone.is_some(),
        "{} is still mounted {STOP_TIMEOUT:?} after kill -9: {:?}",
        mount.display(),
        find_mount(&mount)
    );
    stop.store(true, Ordering::Release);
    let ended_with = bounded("the writer after the kill", move || writer.join());
    let ended_with = ended_with.expect("the writer thread panicked");
    assert!(
        ended_with.is_some(),
        "the writer went on writing after the kill"
    );
    // Every round below this returned from fdatasync; this one did not.
    let synced_at_kill = synced.load(Ordering::Acquire);
    if fio.wait_for_exit(STOP_TIMEOUT).is_none() {
        panic!(
            "fio still runs {STOP_TIMEOUT:?} after the server died; the writer ended with \
             {ended_with:?} (threads: {}); kernel threads in io_uring or fuse: {}\n{}",
            kernel_stacks(fio.child.id()),
            kernel_waits_in(&["io_ring", "fuse", "io_uring"]),
            fs::read_to_string(&fio_output).unwrap_or_default()
        );
    }
    assert!(
        server.stderr().contains("is gone; detached its mount"),
        "no watcher line in the log:\n{}",
        server.stderr()
    );

    // A write that was in flight at the kill may or may not have landed;
    // every chunk synced before it must be there, from its last round.
    let in_flight = synced_at_kill % CHUNKS;
    for index in (0..CHUNKS).filter(|&i| i != in_flight) {
        assert_same_bytes(
            &format!("chunk {index} on the image after kill -9"),
            &expected_chunk(synced_at_kill, CHUNKS, index),
            &read_chunk(&image, index),
        );
    }

    drop(server);
    let restarted = Server::export(&dir, &image, &mount, &[]);
    for index in (0..CHUNKS).filter(|&i| i != in_flight) {
        let mount = mount.clone();
        assert_same_bytes(
            &format!("chunk {index} through the new export"),
            &expected_chunk(synced_at_kill, CHUNKS, index),
            &bounded("a read through the new export", move || {
                read_chunk(&mount, index)
            }),
        );
    }
    restarted.stop();
}

/// If the watcher is killed along with the server, the mount is left dead
/// (ENOTCONN); the next server on the mountpoint detaches it with an info
/// line and serves.
#[test]
fn a_dead_mount_whose_watcher_died_too_is_cleared_at_the_next_start() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("stale-mount");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_random_file(&image, 7, 4 * MIB);
    write_file(&mount, b"");
    let mut server = Server::export(&dir, &image, &mount, &[]);
    let watchers = watchers_of(&mount);
    assert_eq!(watchers.len(), 1, "one watcher for {}", mount.display());
    rustix::process::kill_process(watchers[0], Signal::KILL).expect("kill the watcher");
    server.kill_9();
    // The watcher was killed first, so nothing cleans up: a dead mount
    // (once the kernel has torn the server's rings down).
    let dead = poll_until(STOP_TIMEOUT, || {
        let probe = mount.clone();
        let stat = bounded("stat of the dead mount", move || fs::metadata(probe));
        (stat.as_ref().err().and_then(errno_of) == Some(rustix::io::Errno::NOTCONN)).then_some(())
    });
    assert!(
        dead.is_some(),
        "{} did not become a dead mount",
        mount.display()
    );
    assert!(is_mounted(&mount), "the dead mount went away by itself");
    // `server` is kept: its guard would detach the dead mount when dropped.

    let restarted = Server::export(&dir, &image, &mount, &[]);
    assert!(
        restarted
            .stderr()
            .contains("detached a dead fuse.fuse-export mount"),
        "no line about the dead mount:\n{}",
        restarted.stderr()
    );
    let exported = mount.clone();
    let content = bounded("reading the export", move || read_file(&exported));
    assert_same_bytes(
        "the new export",
        &random_bytes(7, 4 * MIB as usize),
        &content,
    );
    restarted.stop();
    assert_not_mounted(&mount);
}

/// A dead FUSE mount that is not fuse-export's is not ours to remove: the
/// server exits 2 with one line naming the command that removes it.
#[test]
fn a_dead_foreign_fuse_mount_is_named_with_the_command_to_remove_it() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("foreign-mount");
    let image = dir.join("disk.raw");
    let mount = dir.join("other.img");
    create_sparse_file(&image, MIB);
    write_file(&mount, b"");
    let foreign = ForeignDeadMount::create(&mount);
    let mut server = Server::spawn(&dir, &export_args(&image, &mount, &[]), &mount);
    let line = assert_refused(&mut server, "a server on a dead foreign mount");
    assert!(
        line.contains("dead FUSE mount (fuse,")
            && line.contains(&format!("umount -l {}", mount.display())),
        "{line}"
    );
    assert_eq!(
        find_mount(&mount).map(|m| m.fstype),
        Some("fuse".to_owned()),
        "the foreign mount must stay"
    );
    drop(server);
    drop(foreign);
}

/// A plain `fuse` mount (no subtype) whose device fd is closed before INIT:
/// dead from the start. Detached on drop.
struct ForeignDeadMount {
    path: PathBuf,
}

impl ForeignDeadMount {
    fn create(path: &Path) -> ForeignDeadMount {
        use rustix::fs::{Mode, OFlags};
        use rustix::mount::MountFlags;
        let device = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .expect("open /dev/fuse");
        let data = format!(
            "fd={},rootmode=100000,user_id=0,group_id=0",
            std::os::fd::AsRawFd::as_raw_fd(&device)
        );
        let data = std::ffi::CString::new(data).expect("no NUL");
        rustix::mount::mount(
            "foreign",
            path,
            "fuse",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(data.as_c_str()),
        )
        .expect("mount a plain fuse filesystem");
        drop(device);
        ForeignDeadMount {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for ForeignDeadMount {
    fn drop(&mut self) {
        if let Err(err) = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH) {
            eprintln!("umount -l {}: {err}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Image locks

/// A second export of an exported image exits 2 with one line naming the
/// lock and `--locking off`, and leaves the first alone; with `--locking
/// off` it is served anyway.
#[test]
fn a_second_export_of_the_same_image_is_refused_unless_locking_is_off() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("second-export");
    let image = dir.join("disk.raw");
    let first_mount = dir.join("first.img");
    let second_mount = dir.join("second.img");
    create_random_file(&image, 11, 2 * MIB);
    let first = Server::export(&dir, &image, &first_mount, &[]);

    let mut second = Server::spawn(
        &dir,
        &export_args(&image, &second_mount, &[]),
        &second_mount,
    );
    let line = assert_refused(&mut second, "a second export");
    assert!(
        line.contains("in use by another process")
            && line.contains("lock byte 201")
            && line.contains("--locking off"),
        "{line}"
    );
    assert_not_mounted(&second_mount);
    assert!(
        !second_mount.exists(),
        "the refused export left its mountpoint"
    );
    drop(second);

    let exported = first_mount.clone();
    let content = bounded("reading the first export", move || read_file(&exported));
    assert_same_bytes(
        "the first export",
        &random_bytes(11, 2 * MIB as usize),
        &content,
    );

    let shared = Server::export(&dir, &image, &second_mount, &["--locking", "off"]);
    let exported = second_mount.clone();
    let content = bounded("reading the unlocked export", move || read_file(&exported));
    assert_same_bytes(
        "the unlocked export",
        &random_bytes(11, 2 * MIB as usize),
        &content,
    );
    shared.stop();
    first.stop();
}

/// While an image is exported writable, QEMU sees a writer: `qemu-io`
/// cannot write it ("Failed to get \"write\" lock"); `qemu-io -r` and
/// `qemu-img info -U` read it.
#[test]
fn qemu_sees_a_writable_export_as_a_writer() {
    if !skip_unless_fuse() || !require_tools(&["qemu-io", "qemu-img"]) {
        return;
    }
    let dir = TestDir::new("qemu-lock");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_random_file(&image, 13, 4 * MIB);
    let server = Server::export(&dir, &image, &mount, &[]);

    let qemu_io = |extra: &[&str], command: &str| {
        run(Command::new("qemu-io")
            .args(["-f", "raw"])
            .args(extra)
            .args(["-c", command])
            .arg(&image))
    };
    let write = qemu_io(&[], "write -P 0x55 0 4k");
    assert!(
        !write.status.success() && all_output(&write).contains("Failed to get \"write\" lock"),
        "qemu-io write on an exported image:\n{}",
        output_text(&write)
    );
    // A reader shares the image with the writer, as with a running guest.
    let read = qemu_io(&["-r"], "read 0 4k");
    assert!(
        read.status.success() && all_output(&read).contains("read 4096/4096"),
        "qemu-io -r on an exported image:\n{}",
        output_text(&read)
    );
    let info = run_ok(
        Command::new("qemu-img")
            .args(["info", "-U", "-f", "raw"])
            .arg(&image),
    );
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("4 MiB"),
        "qemu-img info -U:\n{}",
        output_text(&info)
    );
    server.stop();
    assert_same_bytes(
        "the image after qemu-io was refused",
        &random_bytes(13, 4 * MIB as usize),
        &read_file(&image),
    );
    // Once the export is gone, qemu-io may write again.
    let write = qemu_io(&[], "write -P 0x55 0 4k");
    assert!(
        write.status.success() && all_output(&write).contains("wrote 4096/4096"),
        "qemu-io write after the export stopped:\n{}",
        output_text(&write)
    );
}

/// A read-only export holds only "consistent read": QEMU readers (without
/// -U) and a second read-only export share the image; writers — qemu-io or
/// a writable export — are refused.
#[test]
fn a_read_only_export_shares_the_image_with_readers_only() {
    if !skip_unless_fuse() || !require_tools(&["qemu-io", "qemu-img"]) {
        return;
    }
    let dir = TestDir::new("read-only-lock");
    let image = dir.join("disk.raw");
    let first_mount = dir.join("first.img");
    let second_mount = dir.join("second.img");
    let writable_mount = dir.join("writable.img");
    create_random_file(&image, 17, 2 * MIB);
    let first = Server::export(&dir, &image, &first_mount, &["--read-only"]);

    let read = run(Command::new("qemu-io")
        .args(["-f", "raw", "-r", "-c", "read 0 4k"])
        .arg(&image));
    assert!(
        read.status.success() && all_output(&read).contains("read 4096/4096"),
        "qemu-io -r on a read-only export:\n{}",
        output_text(&read)
    );
    run_ok(
        Command::new("qemu-img")
            .args(["info", "-f", "raw"])
            .arg(&image),
    );
    let write = run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k"])
        .arg(&image));
    assert!(
        !write.status.success() && all_output(&write).contains("Failed to get \"write\" lock"),
        "qemu-io write on a read-only export:\n{}",
        output_text(&write)
    );

    let second = Server::export(&dir, &image, &second_mount, &["--read-only"]);
    let mut writable = Server::spawn(
        &dir,
        &export_args(&image, &writable_mount, &[]),
        &writable_mount,
    );
    let line = assert_refused(
        &mut writable,
        "a writable export of a read-only export's image",
    );
    assert!(line.contains("lock byte 201"), "{line}");
    drop(writable);
    second.stop();
    first.stop();
}

/// An image `qemu-io` has open for writing is not exported: exit 2, one
/// line naming the lock byte, with QEMU's own wording of the conflict.
#[test]
fn an_image_that_qemu_writes_is_not_exported() {
    if !skip_unless_fuse() || !require_tools(&["qemu-io"]) {
        return;
    }
    let dir = TestDir::new("qemu-holds");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, MIB);
    let mut qemu = KillOnDrop::spawn(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "sleep 120000"])
            .arg(&image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let locked = poll_until(COMMAND_TIMEOUT, || {
        (image_locked(&image) || qemu.try_wait().is_some()).then_some(())
    });
    assert!(
        locked.is_some() && qemu.try_wait().is_none(),
        "qemu-io did not lock the image: {}",
        qemu.stderr()
    );
    let mut server = Server::spawn(&dir, &export_args(&image, &mount, &[]), &mount);
    let line = assert_refused(&mut server, "an export of an image qemu-io writes");
    // qemu-io holds "write", which an export does not share.
    assert!(
        line.contains("lock byte 101")
            && line.contains("Failed to get shared \"write\" lock")
            && line.contains("--locking off"),
        "{line}"
    );
    assert_not_mounted(&mount);
}

// ---------------------------------------------------------------------------
// The image's filesystem fails

/// The image lives on a tmpfs smaller than the image: a client writing past
/// the free space gets ENOSPC, the server lives on (it still reads and
/// rewrites what was written) and stops cleanly; the bytes the client was
/// told were written are on the image.
#[test]
fn enospc_on_the_images_filesystem_reaches_the_client_and_the_server_lives() {
    if !skip_unless_fuse() || !require_tools(&["mount", "dd"]) {
        return;
    }
    const FS_SIZE: u64 = 8 * MIB;
    let dir = TestDir::new("enospc");
    let source = dir.join("source.bin");
    create_random_file(&source, 19, 4 * FS_SIZE);
    fs::create_dir_all(dir.join("small")).expect("create the mount directory");
    let small = MountedFs::mount_typed(
        Path::new("tmpfs"),
        Some("tmpfs"),
        &dir.join("small"),
        Some(&format!("size={FS_SIZE}")),
    );
    let image = small.dir().join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 4 * FS_SIZE);
    let server = Server::export(&dir, &image, &mount, &[]);

    let output = run(&mut dd(&[
        format!("if={}", source.display()),
        format!("of={}", mount.display()),
        "bs=64k".into(),
        "oflag=direct".into(),
        "conv=notrunc".into(),
    ]));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success() && stderr.contains("No space left on device"),
        "dd onto a full filesystem:\n{}",
        output_text(&output)
    );
    // "N bytes (...) copied": what dd was told is written.
    let copied: u64 = stderr
        .lines()
        .find_map(|l| l.split_once(" bytes")?.0.trim().parse().ok())
        .unwrap_or_else(|| panic!("no byte count in dd's output:\n{stderr}"));
    assert!(
        copied > 0 && copied < 4 * FS_SIZE,
        "dd copied {copied} bytes"
    );

    // Still serving: reads, and rewrites of blocks that are allocated.
    let rewrite = random_bytes(23, 64 * KIB as usize);
    let exported = mount.clone();
    let data = rewrite.clone();
    bounded("a rewrite after ENOSPC", move || {
        let file = OpenOptions::new()
            .write(true)
            .open(&exported)
            .expect("open the export");
        file.write_all_at(&data, 0)
            .expect("rewrite the first 64 KiB");
        file.sync_data().expect("fdatasync the export");
    });
    let exported = mount.clone();
    let head = bounded("a read after ENOSPC", move || {
        let mut buf = vec![0; 64 * KIB as usize];
        File::open(&exported)
            .and_then(|f| f.read_exact_at(&mut buf, 0))
            .expect("read the export");
        buf
    });
    assert_same_bytes("the rewrite read back", &rewrite, &head);
    server.stop();

    let mut expected = read_file(&source);
    expected.truncate(copied as usize);
    expected[..rewrite.len()].copy_from_slice(&rewrite);
    let mut on_image = read_file(&image);
    on_image.truncate(copied as usize);
    assert_same_bytes("what dd was told is written", &expected, &on_image);
    drop(small);
}

/// The ext4 holding the image is aborted (`mount -o remount,abort`) while a
/// client writes: the client gets an error instead of hanging, and SIGTERM
/// still stops the server, with exit 1 because the final flush fails (the
/// image is not known to be on disk) and nothing left mounted.
#[test]
fn ext4_abort_under_load_fails_clients_and_the_server_still_stops() {
    if !skip_unless_fuse() || !require_tools(&["mount", "losetup", "mkfs.ext4"]) {
        return;
    }
    let dir = TestDir::new("ext4-abort");
    let backing = dir.join("ext4.raw");
    create_sparse_file(&backing, 128 * MIB);
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&backing));
    let device = LoopDevice::attach(&backing, &[]);
    fs::create_dir_all(dir.join("ext4")).expect("create the mount directory");
    let ext4 = MountedFs::mount_typed(device.path(), Some("ext4"), &dir.join("ext4"), Some("rw"));
    let image = ext4.dir().join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 32 * MIB);
    let mut server = Server::export(&dir, &image, &mount, &[]);

    let synced = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = synced_writer(mount.clone(), 32, synced.clone(), stop.clone());
    let started = poll_until(COMMAND_TIMEOUT, || {
        (synced.load(Ordering::Acquire) >= 4 || writer.is_finished()).then_some(())
    });
    assert!(
        started.is_some() && !writer.is_finished(),
        "the writer did not get going"
    );
    run_ok(
        Command::new("mount")
            .args(["-o", "remount,abort"])
            .arg(ext4.dir()),
    );
    let ended_with = bounded("the writer after the abort", move || writer.join())
        .expect("the writer thread panicked");
    stop.store(true, Ordering::Release);
    let err = ended_with.expect("the writer saw no error after the abort");
    assert!(
        matches!(
            errno_of(&err),
            Some(rustix::io::Errno::ROFS | rustix::io::Errno::IO)
        ),
        "the client's error after the abort: {err}"
    );

    // The server still serves (reads work on an aborted ext4).
    let exported = mount.clone();
    bounded("a read after the abort", move || {
        let mut buf = vec![0; 4096];
        File::open(&exported)
            .and_then(|f| f.read_exact_at(&mut buf, 0))
            .expect("read the export after the abort");
    });
    server.signal(Signal::TERM);
    let status = server
        .wait_for_exit(STOP_TIMEOUT)
        .unwrap_or_else(|| panic!("the server hangs after SIGTERM:\n{}", server.stderr()));
    let log = server.stderr();
    assert_eq!(status.code(), Some(1), "exit status; log:\n{log}");
    assert!(
        complaints(&log)
            .last()
            .is_some_and(|l| l.starts_with("fuse-export: flushing the image:")),
        "the last line must say the flush failed:\n{log}"
    );
    assert_not_mounted(&mount);
    drop(server);
    drop(ext4);
    drop(device);
}

// ---------------------------------------------------------------------------
// Unprivileged mounts

/// A user exports its image through fusermount3: it can use the export,
/// another user and root cannot (no allow_other); SIGTERM stops it with the
/// data on the image; after kill -9 its watcher removes the mount with
/// fusermount3.
#[test]
fn a_fusermount3_mount_keeps_other_users_and_root_out() {
    if !skip_unless_fuse()
        || !require_tools(&["fusermount3", "setpriv", "useradd", "userdel", "dd", "cat"])
    {
        return;
    }
    let _dev_fuse = DevFuseForEveryone::open();
    let owner = TestUser::create();
    let stranger = TestUser::create();
    let dir = TestDir::new("fusermount-users");
    let home = dir.join("owner");
    fs::create_dir(&home).expect("create the owner's directory");
    owner.chown(&home);
    let image = home.join("disk.raw");
    let mount = home.join("disk.img");
    let source = home.join("source.bin");
    create_sparse_file(&image, 4 * MIB);
    write_file(&mount, b"");
    create_random_file(&source, 29, MIB);
    for path in [&image, &mount, &source] {
        owner.chown(path);
    }
    fs::set_permissions(&image, fs::Permissions::from_mode(0o600)).expect("chmod the image");
    let server_args = export_args(&image, &mount, &["--fusermount"]);

    let mut server = Server::spawn_as_user(&dir, owner.ids(), &server_args, &mount);
    wait_until_served_to(&owner, &mut server, &mount, 4 * MIB);

    let copy = run(owner
        .command("dd")
        .arg(format!("if={}", source.display()))
        .arg(format!("of={}", mount.display()))
        .args(["bs=64k", "oflag=direct", "conv=notrunc,fsync"]));
    assert!(
        copy.status.success(),
        "dd as the owner:\n{}",
        output_text(&copy)
    );
    let refused = run(stranger.command("cat").arg(&mount));
    assert!(
        !refused.status.success() && all_output(&refused).contains("Permission denied"),
        "another user read the export:\n{}",
        output_text(&refused)
    );
    let probe = mount.clone();
    let as_root = bounded("stat as root", move || fs::metadata(probe));
    assert_eq!(
        as_root.as_ref().err().and_then(errno_of),
        Some(rustix::io::Errno::ACCESS),
        "root without allow_other: {as_root:?}"
    );
    server.signal(Signal::TERM);
    server.assert_exits_cleanly("SIGTERM to an unprivileged server");
    drop(server);
    let mut expected = random_bytes(29, MIB as usize);
    expected.resize(4 * MIB as usize, 0);
    assert_same_bytes(
        "the image after the user's export",
        &expected,
        &read_file(&image),
    );

    // kill -9 only once the server is past its own start-up stats of the
    // export (the pidfile comes after them): a server killed while one of
    // its threads waits for its own mount's answer cannot finish exiting
    // (the thread waits in the kernel for a reply no thread is left to
    // send, and the connection ends only when the process's files go),
    // which only a fusectl abort ends. See the closing note of this phase.
    let pidfile = home.join("server.pid");
    let mut killed_args = server_args.clone();
    killed_args.extend(["--pidfile".into(), pidfile.clone().into()]);
    let mut server = Server::spawn_as_user(&dir, owner.ids(), &killed_args, &mount);
    wait_until_served_to(&owner, &mut server, &mount, 4 * MIB);
    let published = poll_until(READY_TIMEOUT, || pidfile.exists().then_some(()));
    assert!(
        published.is_some(),
        "no pidfile {}; log:\n{}",
        pidfile.display(),
        server.stderr()
    );
    server.kill_9();
    let gone = poll_until(STOP_TIMEOUT, || (!is_mounted(&mount)).then_some(()));
    assert!(
        gone.is_some(),
        "the unprivileged mount survived kill -9: {:?}; log:\n{}",
        find_mount(&mount),
        server.stderr()
    );
    drop(server);
}

/// Waits until `user` sees the export at `mount` with `size` bytes (root
/// cannot look: the mount is the user's alone).
#[track_caller]
fn wait_until_served_to(user: &TestUser, server: &mut Server<'_>, mount: &Path, size: u64) {
    let ready = poll_until(READY_TIMEOUT, || {
        if server.wait_for_exit(Duration::ZERO).is_some() {
            return Some(false);
        }
        if find_mount(mount).is_none_or(|m| m.fstype != EXPORT_FSTYPE) {
            return None;
        }
        let output = user
            .command("stat")
            .args(["-c", "%s"])
            .arg(mount)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        (String::from_utf8_lossy(&output.stdout).trim() == size.to_string()).then_some(true)
    });
    assert!(
        ready == Some(true),
        "the export at {} was not ready for {}; log:\n{}",
        mount.display(),
        user.name,
        server.stderr()
    );
}

// ---------------------------------------------------------------------------
// Shutdown with clients

/// SIGTERM while a client process and this test hold the exported file
/// open: the server exits 0, the busy mount is detached lazily, and what
/// the client wrote is on the image.
#[test]
fn sigterm_with_a_client_holding_the_file_open_detaches_lazily_and_keeps_the_data() {
    if !skip_unless_fuse() || !require_tools(&["sleep"]) {
        return;
    }
    let dir = TestDir::new("sigterm-open");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, 4 * MIB);
    let mut server = Server::export(&dir, &image, &mount, &[]);

    let exported = mount.clone();
    let held = bounded("opening the export", move || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&exported)
            .expect("open the export")
    });
    let data = random_bytes(31, MIB as usize);
    let writing = held.try_clone().expect("duplicate the fd");
    let payload = data.clone();
    bounded("a write through the held fd", move || {
        writing
            .write_all_at(&payload, MIB)
            .expect("write through the export")
    });
    let holder_fd = held.try_clone().expect("duplicate the fd");
    let _holder = KillOnDrop::spawn(
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::from(holder_fd))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    server.signal(Signal::TERM);
    server.assert_exits_cleanly("SIGTERM with the file held open");
    assert!(
        server.stderr().contains("detaching it lazily"),
        "no lazy detach in the log:\n{}",
        server.stderr()
    );
    let mut expected = vec![0; 4 * MIB as usize];
    expected[MIB as usize..2 * MIB as usize].copy_from_slice(&data);
    assert_same_bytes("the image after SIGTERM", &expected, &read_file(&image));
    // The held fd now belongs to a dead connection.
    let stale = bounded("a read on the detached file", move || {
        let mut buf = [0u8; 16];
        held.read_at(&mut buf, 0).map(drop)
    });
    assert!(stale.is_err(), "a read on the detached file succeeded");
}

// ---------------------------------------------------------------------------
// Soak (not in `make test`: `make soak`, SOAK_SECONDS long)

/// Rounds of: export on 2 queues, fio write + verify at QD64 with mixed
/// unaligned sizes (O_DIRECT and buffered), stop; a fresh export and fio
/// verify-only through it; fio verify-only on the image. Until
/// `SOAK_SECONDS` (default 600) have passed; at least one round.
#[test]
#[ignore = "soak: run with `make soak` (SOAK_SECONDS, default 600)"]
fn soak() {
    if !skip_unless_fuse() || !require_tools(&["fio"]) {
        return;
    }
    const REGION: u64 = 256 * MIB;
    const JOBS: [(&str, &str); 2] = [
        (
            "direct",
            "ioengine=io_uring\ndirect=1\nbsrange=512-1m\nblockalign=512",
        ),
        (
            "buffered-unaligned",
            "ioengine=io_uring\ndirect=0\nbsrange=1000-256k\nbs_unaligned=1",
        ),
    ];
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .map(|s| s.parse().expect("SOAK_SECONDS is a number of seconds"))
        .unwrap_or(600);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let dir = TestDir::new("soak");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    create_sparse_file(&image, REGION * JOBS.len() as u64);

    let job_file = |target: &Path, round: u64| {
        let mut text = format!(
            "[global]\nfilename={}\nrw=randwrite\niodepth=64\nsize={REGION}\nrandseed={round}\n\
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
    let fio = |job: &Path, verify_only: bool, what: &str| {
        let mut command = Command::new("fio");
        command.current_dir(dir.path());
        if verify_only {
            command.arg("--verify_only");
        }
        let output = run_ok(command.arg(job));
        let text = String::from_utf8_lossy(&output.stdout);
        let clean = text.lines().filter(|l| l.contains("): err= 0:")).count();
        assert!(
            clean == JOBS.len() && !text.to_ascii_lowercase().contains("verify: bad"),
            "{what}: fio reported errors:\n{text}"
        );
        // (reads, writes) per job: every block written is read back (a
        // verify-only pass counts the writes it regenerates, not doing them).
        let issued: Vec<(u64, u64)> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("issued rwts: total="))
            .map(|counts| {
                let mut numbers = counts.split([',', ' ']).map(|n| n.parse().unwrap_or(0));
                (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
            })
            .collect();
        let verified = issued.len() == JOBS.len()
            && issued
                .iter()
                .all(|&(reads, writes)| reads > 0 && reads == writes);
        assert!(
            verified,
            "{what}: fio issued (reads, writes) {issued:?}:\n{text}"
        );
    };

    let mut round = 0;
    loop {
        round += 1;
        let server = Server::export(&dir, &image, &mount, &["--queues", "2"]);
        fio(
            &job_file(&mount, round),
            false,
            &format!("round {round}: write + verify"),
        );
        server.stop();
        let server = Server::export(&dir, &image, &mount, &["--queues", "2"]);
        fio(
            &job_file(&mount, round),
            true,
            &format!("round {round}: verify through a fresh export"),
        );
        server.stop();
        fio(
            &job_file(&image, round),
            true,
            &format!("round {round}: verify on the image"),
        );
        eprintln!("soak: round {round} verified");
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!("soak: {round} round(s) in {seconds} s, all verified");
}
