//! Crash cleanup: when the server dies for any reason (kill -9, an OOM
//! kill, an aborting panic), its mount goes away by itself instead of
//! answering ENOTCONN until someone runs `umount` (what libfuse calls
//! `auto_unmount`).
//!
//! The watcher is this same program, re-executed from `/proc/self/exe` with
//! [`WATCHER_ARG`] right after the mount is made; the program must therefore
//! call [`run_if_requested`] first thing in `main`. It holds no fd of the
//! image or of `/dev/fuse` (everything the server opens is close-on-exec),
//! runs in `/` and in its own process group (a Ctrl-C meant for the server
//! does not reach it), and outlives SIGTERM, SIGINT and SIGHUP (a service
//! manager stopping the unit of a dead server signals it too). Its stdin is
//! a pipe whose write end only the server holds: end-of-file means the
//! server is gone, a `D` byte means the server unmounted by itself. When the server is gone, it detaches the
//! mountpoint only if the topmost mount there is still the one it was
//! started for (same mount ID and superblock device in
//! `/proc/self/mountinfo`), so it never touches a later mount on the path:
//! `umount2(MNT_DETACH)` as root, `fusermount3 -u -z` otherwise.
//!
//! fusermount3's own `auto_unmount` is not used: it unmounts only if opening
//! the mountpoint fails with ENOTCONN right when the socket closes, but the
//! kernel tears a dead server's io_uring rings down asynchronously, tens of
//! milliseconds after the process is gone, and until then the connection is
//! still up (measured: it left the mount behind after kill -9).

use std::ffi::{CString, OsString};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::mount::SUBTYPE;
use crate::mountinfo::{self, MountEntry};
use crate::stale::detach;

/// The hidden first argument that makes the program a watcher.
pub const WATCHER_ARG: &str = "--internal-unmount-watcher";

/// Sent by the server after it unmounted by itself: exit, touch nothing.
const DISARM: u8 = b'D';
/// Sent by the watcher once it waits for the server.
const READY: u8 = b'R';
/// How long the server waits for the watcher to report.
const READY_TIMEOUT_SECS: i64 = 10;

/// The watcher of one mount, seen from the server.
#[derive(Debug)]
pub(crate) struct Watcher {
    child: Child,
    /// The write end of the watcher's stdin.
    control: OwnedFd,
}

impl Watcher {
    /// Starts a watcher for the mount just made at `mountpoint`.
    pub(crate) fn spawn(mountpoint: &Path) -> io::Result<Watcher> {
        let mountpoint = std::path::absolute(mountpoint)?;
        let fstype = format!("fuse.{SUBTYPE}");
        let mount = mountinfo::topmost_at(&mountpoint)?
            .filter(|entry| entry.fstype == fstype)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{} is not a {fstype} mount in /proc/self/mountinfo after mounting",
                    mountpoint.display()
                ))
            })?;
        let (watcher_stdin, control) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let program = std::env::args_os()
            .next()
            .unwrap_or_else(|| OsString::from("fuse-export"));
        let mut child = Command::new("/proc/self/exe")
            .arg0(program)
            .arg(WATCHER_ARG)
            .arg(mount.mount_id.to_string())
            .arg(format!("{}:{}", mount.device.0, mount.device.1))
            .arg(&mountpoint)
            .stdin(Stdio::from(watcher_stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .current_dir("/")
            .process_group(0)
            .spawn()
            .map_err(|err| {
                io::Error::new(err.kind(), format!("starting the unmount watcher: {err}"))
            })?;
        match wait_until_ready(&mut child) {
            Ok(()) => Ok(Watcher { child, control }),
            Err(err) => {
                // We started it; it is not a watcher that could clean up.
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::new(
                    err.kind(),
                    format!(
                        "the unmount watcher did not start ({err}); the program must call \
                         fuse_dev::watcher::run_if_requested first in main"
                    ),
                ))
            }
        }
    }

    /// Called once the server is done with the mount. `unmounted`: the
    /// server's own unmount worked (or the mount was already gone), so the
    /// watcher just exits; otherwise it is released as if the server had
    /// died, and detaches the mount if it is still there. Waits for it.
    pub(crate) fn finish(self, unmounted: bool) {
        let Watcher { mut child, control } = self;
        if unmounted {
            let _ = rustix::io::write(&control, &[DISARM]);
        }
        drop(control);
        if let Err(err) = child.wait() {
            log::warn!("waiting for the unmount watcher: {err}");
        }
    }
}

fn wait_until_ready(child: &mut Child) -> io::Result<()> {
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no pipe from the watcher"))?;
    let timeout = Timespec {
        tv_sec: READY_TIMEOUT_SECS,
        tv_nsec: 0,
    };
    let mut poll = [PollFd::new(&stdout, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut poll, Some(&timeout)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {READY_TIMEOUT_SECS} s"),
                ));
            }
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    let mut byte = [0u8; 1];
    match stdout.read(&mut byte)? {
        1 if byte[0] == READY => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "it exited without reporting",
        )),
    }
}

/// If this process was started as a watcher (first argument
/// [`WATCHER_ARG`]), runs it to the end and returns its exit code; returns
/// `None` otherwise. A program that mounts with
/// [`MountOptions::auto_unmount`](crate::MountOptions::auto_unmount) calls
/// this first thing in `main`, before parsing its own arguments.
pub fn run_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_default();
    if args.next()?.as_bytes() != WATCHER_ARG.as_bytes() {
        return None;
    }
    let name = Path::new(&program).file_name().map_or_else(
        || "fuse-export".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    Some(run_watcher(&name, args.collect()))
}

/// The mount a watcher was started for, from `MOUNT_ID MAJOR:MINOR PATH`.
fn watched_mount(args: &[OsString]) -> Option<MountEntry> {
    let [id, device, path] = args else {
        return None;
    };
    let mount_id = id.to_str()?.parse().ok()?;
    let (major, minor) = device.to_str()?.split_once(':')?;
    let mountpoint = PathBuf::from(path);
    if !mountpoint.is_absolute() {
        return None;
    }
    Some(MountEntry {
        mount_id,
        device: (major.parse().ok()?, minor.parse().ok()?),
        mountpoint,
        fstype: format!("fuse.{SUBTYPE}"),
    })
}

fn run_watcher(name: &str, args: Vec<OsString>) -> ExitCode {
    // `ps` and `pgrep` show the server's name rather than "exe".
    if let Ok(comm) = CString::new(
        name.as_bytes()
            .iter()
            .copied()
            .take(15)
            .collect::<Vec<u8>>(),
    ) {
        let _ = rustix::thread::set_name(&comm);
    }
    // A service manager that stops the unit after the server died signals
    // every process left, this one too: it must finish its one job first.
    // It ends by itself once the server is gone (SIGKILL still ends it).
    let ignored = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(err) = signal_hook::flag::register(signal, ignored.clone()) {
            eprintln!("{name}: warning: the unmount watcher cannot catch signal {signal}: {err}");
        }
    }
    let Some(watched) = watched_mount(&args) else {
        eprintln!("{name}: {WATCHER_ARG} takes MOUNT_ID MAJOR:MINOR ABSOLUTE_PATH");
        return ExitCode::from(2);
    };
    let mut stdout = io::stdout();
    // If this fails the server is already gone, which the read below sees.
    let _ = stdout.write_all(&[READY]).and_then(|()| stdout.flush());
    if server_disarmed() {
        return ExitCode::SUCCESS;
    }
    match detach_if_still_ours(&watched) {
        Ok(Detach::Detached) => {
            eprintln!(
                "{name}: warning: the server of {} is gone; detached its mount",
                watched.mountpoint.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Detach::Gone) => ExitCode::SUCCESS,
        Ok(Detach::Covered) => {
            eprintln!(
                "{name}: warning: the server of {} is gone, but another mount now covers \
                 its mount; leaving both alone",
                watched.mountpoint.display()
            );
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!(
                "{name}: error: the server of {path} is gone and its mount could not be \
                 detached ({err}); run: umount -l {path}",
                path = watched.mountpoint.display()
            );
            ExitCode::from(1)
        }
    }
}

/// Blocks until the server disarms us (`true`) or is gone (`false`).
fn server_disarmed() -> bool {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(fd, &mut byte) {
            Ok(0) => return false,
            Ok(_) => return byte[0] == DISARM,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

enum Detach {
    Detached,
    /// Our mount is not there any more.
    Gone,
    /// Our mount is there, under a later one.
    Covered,
}

fn detach_if_still_ours(ours: &MountEntry) -> io::Result<Detach> {
    let mounts = mountinfo::read()?;
    let mut at_path = mounts
        .iter()
        .filter(|entry| entry.mountpoint == ours.mountpoint);
    if !at_path.clone().any(|entry| entry.is_same_mount(ours)) {
        return Ok(Detach::Gone);
    }
    match at_path.next_back() {
        Some(top) if top.is_same_mount(ours) => {
            detach(&ours.mountpoint)?;
            Ok(Detach::Detached)
        }
        _ => Ok(Detach::Covered),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_arguments_are_checked() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        let watched = watched_mount(&args(&["98", "0:51", "/tmp/disk.img"])).unwrap();
        assert_eq!(watched.mount_id, 98);
        assert_eq!(watched.device, (0, 51));
        assert!(watched_mount(&args(&["98", "0:51", "relative"])).is_none());
        assert!(watched_mount(&args(&["x", "0:51", "/a"])).is_none());
        assert!(watched_mount(&args(&["98", "51", "/a"])).is_none());
        assert!(watched_mount(&args(&["98", "0:51"])).is_none());
    }
}
