//! Readiness end to end: `--pidfile` and systemd's notification socket
//! (`NOTIFY_SOCKET`) tell a script or a service manager that the export is
//! usable, at the moment it is: mounted, with the image's size known.
//!
//! Tests need root and /dev/fuse and print `SKIP:` otherwise.

mod common;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// `--image <image> --mount <mount> --pidfile <pidfile> --fusermount`.
fn pidfile_export_args(image: &Path, mount: &Path, pidfile: &Path) -> Vec<OsString> {
    let mut args = export_args(image, mount, &["--pidfile"]);
    args.push(pidfile.into());
    args.push("--fusermount".into());
    args
}

/// Asserts that the export is usable at `mount` right now: mounted as an
/// export, and `stat` reports the image's size.
#[track_caller]
fn assert_export_is_up(mount: &Path, image_size: u64, when: &str) {
    match find_mount(mount) {
        Some(entry) if entry.fstype == EXPORT_FSTYPE => {}
        other => panic!(
            "{when}, {} is not mounted as an export: {other:?}",
            mount.display()
        ),
    }
    let path = mount.to_path_buf();
    let size = bounded("stat of the export", move || fs::metadata(path))
        .unwrap_or_else(|err| panic!("{when}, stat of {} failed: {err}", mount.display()))
        .len();
    assert_eq!(size, image_size, "{when}, the size stat reports");
}

/// Holds the server's mount until the test lets it go: the server mounts
/// through a `fusermount3` (`--fusermount`) that waits for a file before it
/// runs the real one, so the test can look at the server while it is
/// surely not mounted yet.
struct MountGate {
    /// The server's PATH: the waiting fusermount3 first.
    path: OsString,
    started: PathBuf,
    release: PathBuf,
}

impl MountGate {
    /// `None` (after `SKIP:`, or a failure under CI) without fusermount3.
    fn new(dir: &TestDir) -> Option<MountGate> {
        if !require_tools(&["fusermount3"]) {
            return None;
        }
        let (started, release) = (dir.join("gate-started"), dir.join("gate-release"));
        // It gives up when the server (its parent) is gone, so that a test
        // that fails before opening the gate leaves no process behind.
        let prelude = format!(
            ": > '{}'\nwhile [ ! -e '{}' ]; do\n    kill -0 $PPID 2>/dev/null || exit 1\n    sleep 0.01\ndone",
            started.display(),
            release.display(),
        );
        Some(MountGate {
            path: path_with_fusermount3_wrapper(dir, &prelude),
            started,
            release,
        })
    }

    /// Waits until the server is held in its mount.
    fn wait_until_held(&self, server: &mut Server<'_>) {
        let held = poll_until(READY_TIMEOUT, || {
            if let Some(status) = server.wait_for_exit(Duration::ZERO) {
                panic!(
                    "the server exited ({status}) before mounting; stderr:\n{}",
                    server.stderr()
                );
            }
            self.started.exists().then_some(())
        });
        assert!(
            held.is_some(),
            "the server did not start mounting within {READY_TIMEOUT:?}; stderr:\n{}",
            server.stderr()
        );
    }

    fn open(&self) {
        write_file(&self.release, b"");
    }
}

/// A pidfile is not there while the server mounts, appears once the export
/// is mounted and has its size, holds the server's pid, is written whole
/// (no temporary file stays beside it), and is gone after the server
/// exited on SIGTERM.
#[test]
fn pidfile_appears_once_the_export_is_ready_and_goes_at_exit() {
    if !skip_unless_fuse() {
        return;
    }
    const IMAGE_SIZE: u64 = 6 * MIB + 4096;
    let dir = TestDir::new("pidfile");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let run_dir = dir.join("run");
    let pidfile = run_dir.join("export.pid");
    create_sparse_file(&image, IMAGE_SIZE);
    fs::create_dir(&run_dir).expect("create the pidfile's directory");
    let Some(gate) = MountGate::new(&dir) else {
        return;
    };
    let args = pidfile_export_args(&image, &mount, &pidfile);
    let mut server = Server::spawn_with_env(&dir, &args, &mount, &[("PATH", &gate.path)]);

    gate.wait_until_held(&mut server);
    assert!(!pidfile.exists(), "the pidfile exists before the mount");
    gate.open();
    let appeared = poll_until(READY_TIMEOUT, || {
        if let Some(status) = server.wait_for_exit(Duration::ZERO) {
            panic!(
                "the server exited ({status}) before writing its pidfile; stderr:\n{}",
                server.stderr()
            );
        }
        pidfile.exists().then_some(())
    });
    assert!(
        appeared.is_some(),
        "no pidfile within {READY_TIMEOUT:?}; stderr:\n{}",
        server.stderr()
    );
    assert_export_is_up(&mount, IMAGE_SIZE, "once the pidfile exists");
    assert_eq!(
        fs::read_to_string(&pidfile).expect("read the pidfile"),
        format!("{}\n", server.pid()),
        "the pidfile's content"
    );
    assert_eq!(
        names_in(&run_dir),
        ["export.pid"],
        "only the pidfile is left in its directory"
    );

    server.stop();
    assert!(!pidfile.exists(), "the pidfile is still there after exit");
    assert_eq!(names_in(&run_dir), [] as [&str; 0], "left in the directory");
}

/// The notification socket of a service manager, bound by the test: the
/// datagrams the server sends, each a list of `KEY=VALUE` lines.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> NotifySocket {
        let socket = UnixDatagram::bind(&path)
            .unwrap_or_else(|err| panic!("cannot bind {}: {err}", path.display()));
        NotifySocket { socket, path }
    }

    /// The next datagram's lines, or `None` when none comes within
    /// `timeout`.
    fn next(&self, timeout: Duration) -> Option<Vec<String>> {
        let mut buffer = vec![0; 4096];
        let timeout = timeout.max(Duration::from_millis(1));
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("set the socket's timeout");
        match self.socket.recv(&mut buffer) {
            Ok(n) => Some(
                String::from_utf8_lossy(&buffer[..n])
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            ),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(err) => panic!("cannot receive on {}: {err}", self.path.display()),
        }
    }

    /// Receives datagrams until one carries `state` (e.g. `READY=1`);
    /// returns every line received on the way, that one's included. Fails
    /// the test if the server exits first or `timeout` passes.
    fn wait_for(&self, state: &str, server: &mut Server<'_>, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = left.min(Duration::from_millis(100));
            if let Some(datagram) = self.next(slice) {
                let found = datagram.iter().any(|line| line == state);
                lines.extend(datagram);
                if found {
                    return lines;
                }
            } else if let Some(status) = server.wait_for_exit(Duration::ZERO) {
                panic!(
                    "the server exited ({status}) without sending {state}; got {lines:?}; stderr:\n{}",
                    server.stderr()
                );
            }
            assert!(
                !left.is_zero(),
                "no {state} within {timeout:?}; got {lines:?}; stderr:\n{}",
                server.stderr()
            );
        }
    }
}

/// With NOTIFY_SOCKET set (systemd's Type=notify), the server sends
/// nothing while it mounts, `READY=1` (with its MAINPID) when the export is
/// usable and the pidfile is in place, and `STOPPING=1` when it shuts down, here after an external
/// umount; the pidfile is gone after the exit.
#[test]
fn notify_socket_gets_ready_then_stopping() {
    if !skip_unless_fuse() {
        return;
    }
    const IMAGE_SIZE: u64 = 3 * MIB;
    let dir = TestDir::new("notify");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let pidfile = dir.join("export.pid");
    create_sparse_file(&image, IMAGE_SIZE);
    let notify = NotifySocket::bind(dir.join("notify.sock"));
    let Some(gate) = MountGate::new(&dir) else {
        return;
    };
    let args = pidfile_export_args(&image, &mount, &pidfile);
    let mut server = Server::spawn_with_env(
        &dir,
        &args,
        &mount,
        &[
            ("NOTIFY_SOCKET", notify.path.as_os_str()),
            ("PATH", &gate.path),
        ],
    );

    gate.wait_until_held(&mut server);
    let while_mounting: Vec<Vec<String>> =
        std::iter::from_fn(|| notify.next(Duration::ZERO)).collect();
    assert!(
        while_mounting.is_empty(),
        "notifications before the mount: {while_mounting:?}"
    );
    gate.open();
    let before_ready = notify.wait_for("READY=1", &mut server, READY_TIMEOUT);
    assert!(
        !before_ready.iter().any(|line| line == "STOPPING=1"),
        "STOPPING=1 before READY=1: {before_ready:?}"
    );
    let main_pid: Vec<&String> = before_ready
        .iter()
        .filter(|line| line.starts_with("MAINPID="))
        .collect();
    assert!(
        main_pid
            .iter()
            .all(|line| **line == format!("MAINPID={}", server.pid())),
        "MAINPID is not the server's pid {}: {main_pid:?}",
        server.pid()
    );
    assert_export_is_up(&mount, IMAGE_SIZE, "at READY=1");
    assert_eq!(
        fs::read_to_string(&pidfile).ok(),
        Some(format!("{}\n", server.pid())),
        "at READY=1, the pidfile"
    );

    run_ok(Command::new("umount").arg(&mount));
    let before_stopping = notify.wait_for("STOPPING=1", &mut server, STOP_TIMEOUT);
    assert!(
        !before_stopping.iter().any(|line| line == "READY=1"),
        "READY=1 a second time: {before_stopping:?}"
    );
    server.assert_exits_cleanly("an external umount");
    assert!(!pidfile.exists(), "the pidfile is still there after exit");
}

/// A server that cannot mount announces nothing: it never creates the
/// pidfile, not even for a moment, and sends no READY=1.
#[test]
fn a_server_that_cannot_mount_writes_no_pidfile_and_sends_no_ready() {
    if !skip_unless_fuse() {
        return;
    }
    let dir = TestDir::new("notify-failed-mount");
    let image = dir.join("disk.raw");
    let mount = dir.join("disk.img");
    let pidfile = dir.join("export.pid");
    create_sparse_file(&image, MIB);
    let notify = NotifySocket::bind(dir.join("notify.sock"));
    let creation = CreationWatch::new(&pidfile);
    // --fusermount with no fusermount3 in PATH: the mount itself fails.
    let args = pidfile_export_args(&image, &mount, &pidfile);
    let empty_path = dir.join("no-programs");
    fs::create_dir(&empty_path).expect("create an empty PATH directory");
    let mut server = Server::spawn_with_env(
        &dir,
        &args,
        &mount,
        &[
            ("NOTIFY_SOCKET", notify.path.as_os_str()),
            ("PATH", empty_path.as_os_str()),
        ],
    );

    let Some(status) = server.wait_for_exit(STOP_TIMEOUT) else {
        panic!("the server still runs; stderr:\n{}", server.stderr());
    };
    let stderr = server.stderr();
    assert!(
        status.code() == Some(2) && stderr.contains("fusermount3"),
        "the mount through a missing fusermount3 should fail with exit 2, got {status}:\n{stderr}"
    );
    assert!(
        !creation.was_created(),
        "the pidfile was created by a server that never mounted"
    );
    let left: Vec<String> = names_in(dir.path())
        .into_iter()
        .filter(|name| name.contains("export.pid"))
        .collect();
    assert!(left.is_empty(), "left beside the pidfile's path: {left:?}");
    let datagrams: Vec<Vec<String>> = std::iter::from_fn(|| notify.next(Duration::ZERO)).collect();
    assert!(
        !datagrams.iter().flatten().any(|line| line == "READY=1"),
        "READY=1 from a server that never mounted: {datagrams:?}"
    );
    assert_not_mounted(&mount);
}
