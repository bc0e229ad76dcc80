//! A server killed with SIGKILL while the stat it makes after starting its
//! queues (so that the kernel learns the file's size) waits for its answer
//! exits at once, and its mount goes away.
//!
//! That stat used to come from the server's own main thread. Once a queue
//! thread has read the GETATTR, the stat waits for the answer
//! uninterruptibly; a SIGKILL then ended every thread but that one, the
//! `/dev/fuse` fds stayed open, the connection never ended and the process
//! never exited. The stat now comes from the unmount watcher, a separate
//! process that holds no fd of the connection.
//!
//! The server half (this same binary, started with [`SERVER_ENV`]) never
//! answers GETATTR and says on stdout when it has read one; the test kills
//! it right then. This test has its own `main` (`harness = false`, run by
//! libtest-mimic) because the server mounts with the unmount watcher, which
//! re-executes the program with `--internal-unmount-watcher`: `main`
//! answers that first, as fuse-export's does. Needs root and /dev/fuse;
//! skips (with a `SKIP:` line) otherwise.

mod common;

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use common::{Fusectl, ScratchDir, connection_id, report_skip, skip_reason, small_session_with};
use fuse_dev::{Completion, Handler, Incoming, Job, QueueIo, mountinfo};
use fuse_proto::Opcode;
use fuse_proto::reply::Errno;
use libtest_mimic::{Arguments, Failed, Trial};
use wait_timeout::ChildExt as _;

/// Set (to the mountpoint) in the environment of the server half.
const SERVER_ENV: &str = "FUSE_DEV_TEST_STARTUP_KILL_MOUNTPOINT";
/// What the server half prints once it has read a GETATTR.
const GETATTR_SEEN: &str = "getattr read, not answering";

fn main() -> ExitCode {
    if let Some(code) = fuse_dev::watcher::run_if_requested() {
        return code;
    }
    if let Some(mountpoint) = std::env::var_os(SERVER_ENV) {
        return serve_without_answering_getattr(Path::new(&mountpoint));
    }
    let tests = vec![Trial::test(
        "killed_during_its_startup_stat_the_server_exits_and_its_mount_goes",
        killed_during_its_startup_stat,
    )];
    libtest_mimic::run(&Arguments::from_args(), tests).exit_code()
}

/// Holds every GETATTR unanswered (and says so on stdout); anything else
/// but INIT's followers is ENOSYS.
struct HoldsGetattr {
    held: Vec<Job>,
}

impl Handler for HoldsGetattr {
    type State = ();

    fn request(&mut self, job: Job, incoming: Incoming, io: &mut QueueIo<'_, ()>) {
        let opcode = incoming.request().map(|r| r.op.opcode());
        io.pool().give_chain(incoming.into_buffers());
        match opcode {
            Ok(Opcode::GETATTR) => {
                self.held.push(job);
                let mut stdout = std::io::stdout();
                let _ = writeln!(stdout, "{GETATTR_SEEN}").and_then(|()| stdout.flush());
            }
            Ok(op) if op.is_no_reply() => io.finish(job),
            _ => io.reply_error(job, Errno::ENOSYS),
        }
    }

    fn complete(&mut self, job: Job, done: Completion<()>, io: &mut QueueIo<'_, ()>) {
        io.finish_with(job, done.chain);
    }
}

/// The server half: mounts with the unmount watcher, as fuse-export does,
/// and starts its queues, which stats the file. Never returns on its own:
/// the test kills it during that stat.
fn serve_without_answering_getattr(mountpoint: &Path) -> ExitCode {
    let (session, config) = match small_session_with(mountpoint, "startup-kill", true) {
        Ok(mounted) => mounted,
        Err(err) => {
            eprintln!("server half: mounting {}: {err}", mountpoint.display());
            return ExitCode::FAILURE;
        }
    };
    match session.start(1, config, Vec::new(), |_| HoldsGetattr { held: Vec::new() }) {
        Ok(running) => {
            eprintln!(
                "server half: the start-up stat ended without an answer: {:?}",
                running.export_answered()
            );
            let _ = running.shutdown();
        }
        Err(err) => eprintln!("server half: starting the queue: {err}"),
    }
    ExitCode::FAILURE
}

/// The export's mount in this process's mount table, if it is there.
fn mount_at(mountpoint: &Path) -> Option<mountinfo::MountEntry> {
    mountinfo::topmost_at(mountpoint)
        .ok()
        .flatten()
        .filter(|entry| entry.fstype == format!("fuse.{}", fuse_dev::mount::SUBTYPE))
}

/// Ends what the test started, whatever happened: the server (by its PID);
/// a mount still there, whose connection is aborted first (through
/// fusectl, mounted for that if it is not and unmounted again), since a
/// server stuck in its own stat exits only once its connection ends; and
/// the watcher, which this process reaps as the server's subreaper.
struct Cleanup {
    server: Child,
    mountpoint: PathBuf,
    /// The connection of the server's mount.
    connection: Option<u32>,
}

impl Cleanup {
    /// Aborts the server's connection, if it is still there.
    fn abort_connection(&self) {
        if let (Some(id), Ok(fusectl)) = (self.connection, Fusectl::ensure()) {
            let _ = fusectl.abort(id);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.server.kill();
        if self
            .server
            .wait_timeout(Duration::from_secs(2))
            .ok()
            .flatten()
            .is_none()
        {
            self.abort_connection();
            let _ = self.server.wait_timeout(Duration::from_secs(10));
        }
        if mount_at(&self.mountpoint).is_some() {
            self.abort_connection();
            let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
        reap_orphans(Duration::from_secs(10));
    }
}

/// Reaps the children orphaned to this process (the server's watcher,
/// which exits once it has dealt with the mount), for up to `limit`.
fn reap_orphans(limit: Duration) {
    use rustix::process::{WaitOptions, wait};
    // ECHILD once none is left.
    within(limit, || wait(WaitOptions::NOHANG).is_err());
}

/// Polls `done` every 20 ms for up to `limit`.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

fn killed_during_its_startup_stat() -> Result<(), Failed> {
    if let Some(reason) = skip_reason() {
        report_skip("startup_kill", reason);
        return Ok(());
    }
    // The server's watcher outlives the server: as the subreaper of what
    // this process starts, the test reaps it instead of leaving a zombie.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|err| format!("PR_SET_CHILD_SUBREAPER: {err}"))?;
    let dir = ScratchDir::new("startup-kill", "stat");
    let mountpoint = dir.0.join("file");
    fs::write(&mountpoint, b"").map_err(|err| format!("creating the mountpoint: {err}"))?;
    let server = Command::new(std::env::current_exe()?)
        .env(SERVER_ENV, &mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut cleanup = Cleanup {
        server,
        mountpoint: mountpoint.clone(),
        connection: None,
    };
    let stdout = cleanup.server.stdout.take().ok_or("no stdout pipe")?;
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = said.send(line);
    });
    let line = heard
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "the server half read no GETATTR within 20 s")?;
    if line.trim_end() != GETATTR_SEEN {
        return Err(format!("the server half said {line:?} instead of {GETATTR_SEEN:?}").into());
    }
    cleanup.connection = mount_at(&mountpoint).and_then(|_| connection_id(&mountpoint));
    if cleanup.connection.is_none() {
        return Err("the server half reads requests, but its mount is not in mountinfo".into());
    }
    let pid = cleanup.server.id();
    cleanup.server.kill()?;
    let status = cleanup.server.wait_timeout(Duration::from_secs(10))?;
    if status.is_none() {
        let state = fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
        return Err(format!(
            "the server (pid {pid}) did not exit within 10 s of SIGKILL: stuck in its own \
             stat of the export; kernel stack:\n{state}"
        )
        .into());
    }
    // The connection ended with the server's fds; the watcher's stat got
    // its ENOTCONN, and the watcher found the server gone.
    if !within(Duration::from_secs(10), || mount_at(&mountpoint).is_none()) {
        return Err("the watcher left the dead server's mount behind".into());
    }
    Ok(())
}
