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
//!
//! The watcher also makes the server's own stat of the export
//! (`Watcher::stat`): the kernel learns the file's size only from a
//! GETATTR, so the export is stat'ed once its queues serve. A stat from a
//! thread of the server itself can make the server unkillable: once a
//! queue thread has read that GETATTR, the stat waits for its answer
//! uninterruptibly, so a kill -9 at that moment ends every other thread
//! but not that one, the process's `/dev/fuse` fds are never closed, and
//! the connection (which only their release would end) never answers it
//! (seen in a test: a server stuck for good in `request_wait_answer`). From
//! the watcher, a server that dies mid-stat exits at once; its fds close,
//! the connection ends, and the watcher's stat returns ENOTCONN.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write as _};
use std::os::unix::ffi::{OsStrExt, OsStringExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};

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
/// Asks the watcher to stat a path: this byte, the path's length in bytes
/// as a little-endian `u32`, the path. The watcher answers with the stat's
/// errno as a little-endian `i32`, 0 for success.
const STAT: u8 = b'S';
/// How long the server waits for the watcher to report.
const READY_TIMEOUT_SECS: i64 = 10;
/// How long the server waits for the answer to a stat of its own export,
/// which its queues answer in microseconds when they work at all.
const STAT_TIMEOUT_SECS: i64 = 30;

/// The watcher of one mount, seen from the server.
#[derive(Debug)]
pub(crate) struct Watcher {
    child: Child,
    /// The write end of the watcher's stdin.
    control: File,
    /// The read end of the watcher's stdout: its answers.
    answers: ChildStdout,
    /// A stat went unanswered: the watcher may be waiting for the kernel
    /// until the connection ends, so nobody may wait for the watcher.
    stat_unanswered: bool,
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
            Ok(answers) => Ok(Watcher {
                child,
                control: File::from(control),
                answers,
                stat_unanswered: false,
            }),
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
    ///
    /// A watcher whose stat went unanswered is not waited for: it may be
    /// waiting for the kernel until this process's `/dev/fuse` fds close.
    /// It then finds its stdin closed and the mount gone, and exits.
    pub(crate) fn finish(self, unmounted: bool) {
        let Watcher {
            mut child,
            control,
            stat_unanswered,
            ..
        } = self;
        if unmounted {
            let _ = rustix::io::write(&control, &[DISARM]);
        }
        drop(control);
        if stat_unanswered {
            log::warn!("not waiting for the unmount watcher: its stat of the export is unanswered");
            return;
        }
        if let Err(err) = child.wait() {
            log::warn!("waiting for the unmount watcher: {err}");
        }
    }

    /// Stats `path` from the watcher process (see the module doc for why
    /// not from this one): Ok once the kernel answered it.
    pub(crate) fn stat(&mut self, path: &Path) -> io::Result<()> {
        if self.stat_unanswered {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "an earlier stat is still unanswered",
            ));
        }
        let path = std::path::absolute(path)?;
        let bytes = path.as_os_str().as_bytes();
        let len = u32::try_from(bytes.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path too long"))?;
        let mut request = Vec::with_capacity(5 + bytes.len());
        request.push(STAT);
        request.extend_from_slice(&len.to_le_bytes());
        request.extend_from_slice(bytes);
        self.control.write_all(&request)?;
        self.stat_unanswered = true;
        let mut errno = [0u8; 4];
        read_answer(&mut self.answers, &mut errno, STAT_TIMEOUT_SECS)?;
        self.stat_unanswered = false;
        match i32::from_le_bytes(errno) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Waits for the watcher's READY byte; returns the pipe its answers come on.
fn wait_until_ready(child: &mut Child) -> io::Result<ChildStdout> {
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no pipe from the watcher"))?;
    let mut byte = [0u8; 1];
    read_answer(&mut stdout, &mut byte, READY_TIMEOUT_SECS)?;
    if byte[0] != READY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it reported {:#04x} instead of ready", byte[0]),
        ));
    }
    Ok(stdout)
}

/// Fills `answer` from the watcher's stdout, waiting at most `timeout_secs`
/// for each part of it.
fn read_answer(stdout: &mut ChildStdout, answer: &mut [u8], timeout_secs: i64) -> io::Result<()> {
    let timeout = Timespec {
        tv_sec: timeout_secs,
        tv_nsec: 0,
    };
    let mut filled = 0;
    while filled < answer.len() {
        let mut poll = [PollFd::new(&*stdout, PollFlags::IN)];
        match rustix::event::poll(&mut poll, Some(&timeout)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from the watcher within {timeout_secs} s"),
                ));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
        match stdout.read(&mut answer[filled..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the watcher exited without answering",
                ));
            }
            Ok(read) => filled += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
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
    if serve_until_released() {
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

/// Answers the server's stat requests until it disarms us (`true`) or is
/// gone (`false`; also for anything that is not a request).
fn serve_until_released() -> bool {
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout();
    loop {
        let mut byte = [0u8; 1];
        if stdin.read_exact(&mut byte).is_err() {
            return false;
        }
        match byte[0] {
            DISARM => return true,
            STAT => {
                let Some(path) = read_stat_request(&mut stdin) else {
                    return false;
                };
                let errno = match rustix::fs::stat(&path) {
                    Ok(_) => 0,
                    Err(err) => err.raw_os_error(),
                };
                // A server gone meanwhile shows as end-of-file next.
                let _ = stdout
                    .write_all(&errno.to_le_bytes())
                    .and_then(|()| stdout.flush());
            }
            _ => return false,
        }
    }
}

/// The path of a stat request, after its [`STAT`] byte.
fn read_stat_request(stdin: &mut impl Read) -> Option<PathBuf> {
    let mut len = [0u8; 4];
    stdin.read_exact(&mut len).ok()?;
    let mut path = vec![0u8; usize::try_from(u32::from_le_bytes(len)).ok()?];
    stdin.read_exact(&mut path).ok()?;
    let path = PathBuf::from(std::ffi::OsString::from_vec(path));
    path.is_absolute().then_some(path)
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
