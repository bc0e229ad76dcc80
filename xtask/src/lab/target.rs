//! Export servers under test: start, wait until mounted, measure, stop.
//!
//! A [`ServerProcess`] is a guard: dropping it (on an error, a panic or an
//! early return) stops the server by PID and makes sure nothing stays
//! mounted, with `umount -l` as the last resort.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use wait_timeout::ChildExt as _;

use super::host;
use super::plan::ServerOptions;
use super::workload::{last_lines, spawn_logged};

/// How long a server may take to mount and show the image size.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server may take to finish its requests and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
const THREAD_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// `RUST_LOG` for fuse-export: its per-queue report at exit is a debug line
/// of the binary crate; the libraries stay at info so logging costs nothing
/// per request.
const SERVER_LOG_FILTER: &str = "info,fuse_export=debug";

pub fn fuse_export_command(
    binary: &Path,
    image: &Path,
    mountpoint: &Path,
    options: &ServerOptions,
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("--image")
        .arg(image)
        .arg("--mount")
        .arg(mountpoint);
    command
        .args(options.args())
        .env("RUST_LOG", SERVER_LOG_FILTER);
    command
}

/// The peer, configured as the issue asks: writable, io_uring, O_DIRECT.
pub fn qsd_command(image: &Path, mountpoint: &Path) -> Command {
    let (image, mountpoint) = (image.display(), mountpoint.display());
    let mut command = Command::new("qemu-storage-daemon");
    command.args([
        "--blockdev",
        &format!("node-name=file0,driver=file,filename={image},aio=io_uring,cache.direct=on"),
        "--blockdev",
        "node-name=fmt0,driver=raw,file=file0",
        "--export",
        &format!("type=fuse,id=exp0,node-name=fmt0,mountpoint={mountpoint},writable=on"),
    ]);
    command
}

/// A running export server.
#[derive(Debug)]
pub struct ServerProcess {
    name: &'static str,
    child: Option<Child>,
    pid: u32,
    mountpoint: PathBuf,
    /// The lab created the mountpoint file (qemu-storage-daemon needs an
    /// existing one) and removes it after the server is gone.
    owns_mountpoint: bool,
    log_path: PathBuf,
}

impl ServerProcess {
    /// Spawns `command` (stdout and stderr to `log_path`) and waits until
    /// `mountpoint` is mounted and shows `image_size` bytes.
    pub fn start(
        name: &'static str,
        mut command: Command,
        mountpoint: &Path,
        image_size: u64,
        log_path: &Path,
        owns_mountpoint: bool,
    ) -> Result<ServerProcess, String> {
        if owns_mountpoint {
            File::create(mountpoint)
                .map_err(|err| format!("cannot create {}: {err}", mountpoint.display()))?;
        }
        let child = spawn_logged(&mut command, log_path, &format!("start {name}"))?;
        let mut server = ServerProcess {
            name,
            pid: child.id(),
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            owns_mountpoint,
            log_path: log_path.to_path_buf(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                server.child = None;
                let log = last_lines(log_path, 3);
                return Err(format!("{name} exited during start-up ({status}): {log}"));
            }
            // stat makes the kernel ask the server (GETATTR); a size of 0
            // means the export is not serving yet.
            if host::is_mounted(mountpoint)
                && fs::metadata(mountpoint).is_ok_and(|meta| meta.len() == image_size)
            {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} did not mount {} with size {image_size} within {} s: {}",
                    mountpoint.display(),
                    READY_TIMEOUT.as_secs(),
                    last_lines(log_path, 3)
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM, wait for a clean exit, check nothing stays mounted; returns
    /// the server's log.
    pub fn stop(mut self) -> Result<String, String> {
        let result = self.shutdown();
        result.map(|()| fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    fn shutdown(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        let name = self.name;
        if let Some(child) = self.child.take() {
            problems.extend(self.terminate(child));
        }
        let mountpoint = self.mountpoint.display();
        if host::is_mounted(&self.mountpoint) {
            problems.push(match host::lazy_unmount(&self.mountpoint) {
                Ok(()) => format!("{name} left {mountpoint} mounted; detached it with umount -l"),
                Err(err) => err,
            });
        }
        if std::mem::take(&mut self.owns_mountpoint)
            && let Err(err) = fs::remove_file(&self.mountpoint)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("cannot remove {mountpoint}: {err}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// SIGTERM and a clean exit within [`STOP_TIMEOUT`], else SIGKILL;
    /// returns what went wrong.
    fn terminate(&self, mut child: Child) -> Option<String> {
        let name = self.name;
        if let Ok(Some(status)) = child.try_wait() {
            let log = last_lines(&self.log_path, 2);
            return Some(format!("{name} had already exited ({status}): {log}"));
        }
        let signalled = host::terminate(self.pid);
        match child.wait_timeout(STOP_TIMEOUT) {
            Ok(Some(status)) if status.success() => signalled.err(),
            Ok(Some(status)) => {
                let log = last_lines(&self.log_path, 2);
                Some(format!("{name} exited with {status} after SIGTERM: {log}"))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let secs = STOP_TIMEOUT.as_secs();
                Some(format!(
                    "{name} did not exit within {secs} s of SIGTERM; killed"
                ))
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if (self.child.is_some() || self.owns_mountpoint)
            && let Err(err) = self.shutdown()
        {
            eprintln!("lab: cleaning up {}: {err}", self.name);
        }
    }
}

/// What [`sample_during`] saw of a server process while its workload ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSamples {
    /// Most threads seen at once (io_uring workers included).
    pub max_threads: u64,
    /// Context switches (voluntary and not) of all its threads during the
    /// work: how often the server slept and was woken, or was preempted.
    pub context_switches: u64,
}

/// Runs `work` while sampling the threads of process `pid` every
/// [`THREAD_SAMPLE_INTERVAL`]: io_uring workers come and go, so reading
/// once after the run would miss them and their context switches. A thread
/// that starts and ends between two samples is missed. Returns the work's
/// result and what the samples saw.
pub fn sample_during<T>(pid: u32, work: impl FnOnce() -> T) -> (T, ProcessSamples) {
    let before = host::context_switches_by_thread(pid);
    // Dropping `stop`, after the work or while a panic unwinds, ends the
    // sampler.
    let (stop, stopped) = mpsc::channel::<()>();
    let sampler = thread::spawn(move || {
        let mut max_threads = 0;
        let mut latest = HashMap::new();
        let mut sample = || {
            let now = host::context_switches_by_thread(pid);
            max_threads = max_threads.max(now.len() as u64);
            latest.extend(now);
        };
        sample();
        while stopped.recv_timeout(THREAD_SAMPLE_INTERVAL) == Err(RecvTimeoutError::Timeout) {
            sample();
        }
        sample();
        // A thread born during the work counts from zero.
        let context_switches = latest
            .iter()
            .map(|(tid, &count)| count.saturating_sub(before.get(tid).copied().unwrap_or(0)))
            .sum();
        ProcessSamples {
            max_threads,
            context_switches,
        }
    });
    let result = work();
    drop(stop);
    let samples = sampler.join().unwrap_or(ProcessSamples {
        max_threads: 0,
        context_switches: 0,
    });
    (result, samples)
}

/// Requests and spilled writes summed over the server's `QueueReport` debug
/// lines, e.g. `QueueReport { index: 0, requests: 258, spilled: 0, .. }`.
pub fn queue_totals(log: &str) -> Option<(u64, u64)> {
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("QueueReport {"))
        .collect();
    let total = |key| -> u64 {
        reports
            .iter()
            .filter_map(|line| number_after(line, key))
            .sum()
    };
    (!reports.is_empty()).then(|| (total("requests: "), total("spilled: ")))
}

/// The alloc-count build's count of allocations up to the stop (`allocations
/// while serving: N total, ...`, logged when the stop begins), or, from
/// builds that log only that, up to the exit (`allocations: N total, ...`).
/// The shutdown is left out where possible: how many allocations it makes
/// differs by one or two between runs of the same build.
pub fn allocations(log: &str) -> Option<u64> {
    let last = |key| {
        log.lines()
            .filter_map(|line| number_after(line, key))
            .next_back()
    };
    last("allocations while serving: ").or_else(|| last("allocations: "))
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queue_reports_and_allocations() {
        let log = "fuse-export: info: serving\n\
            fuse-export: debug: QueueReport { index: 0, requests: 258, spilled: 0, pool: PoolStats { allocated: 33, released: 0, reused: 518 }, disconnected: false }\n\
            fuse-export: debug: QueueReport { index: 1, requests: 264, spilled: 256, pool: PoolStats { allocated: 35, released: 0, reused: 784 }, disconnected: false }\n\
            fuse-export: info: allocations: 1234 total, 56789 bytes\n";
        assert_eq!(queue_totals(log), Some((522, 256)));
        assert_eq!(allocations(log), Some(1234));
        let with_stop = format!(
            "fuse-export: info: allocations while serving: 1200 total, 5 bytes, 3 frees\n{log}"
        );
        assert_eq!(allocations(&with_stop), Some(1200));
        assert_eq!(queue_totals("nothing here"), None);
        assert_eq!(allocations("allocations: lots"), None);
    }

    #[test]
    fn sampling_sees_threads_the_work_started_and_their_sleeps() {
        // The workers wait at the barrier until after the sampling ended,
        // so its last sample sees them whatever the scheduling.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let (workers, samples) = sample_during(std::process::id(), || {
            let spawn = |barrier: std::sync::Arc<std::sync::Barrier>| {
                thread::spawn(move || {
                    barrier.wait();
                })
            };
            let workers = (0..3).map(|_| spawn(barrier.clone())).collect::<Vec<_>>();
            // Long enough for the workers to block at the barrier (each
            // one context switch) and for a sample in between.
            thread::sleep(THREAD_SAMPLE_INTERVAL * 3);
            workers
        });
        barrier.wait();
        workers
            .into_iter()
            .for_each(|worker| worker.join().unwrap());
        // The test's own thread, the sampler and the three workers.
        assert!(samples.max_threads >= 5, "{samples:?}");
        // Each worker slept at the barrier at least once.
        assert!(samples.context_switches >= 3, "{samples:?}");
    }
}
