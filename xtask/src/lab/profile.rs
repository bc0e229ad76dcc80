//! `--profile`: where the machine's time goes while a workload runs on a
//! server, from `perf record -a -g` (every CPU: the client, the server and
//! the kernel share them, and a bound can sit in any of the three).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use wait_timeout::ChildExt as _;

use super::host;
use super::workload::{last_lines, spawn_logged};

/// Samples per second per CPU: enough for a few thousand samples in a 6 s
/// run without perf itself showing up in the profile.
const SAMPLE_HZ: &str = "999";
/// perf needs a moment to open its events on every CPU; samples before that
/// are lost, so the workload waits for it.
const STARTUP: Duration = Duration::from_millis(500);
/// How long perf may take to write its data after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries the summary lists per profiled run; the full report is in its
/// own file.
pub const TOP_LINES: usize = 12;

/// A running `perf record -a -g`: a guard that stops perf (by PID) when
/// dropped, on errors and panics too.
pub struct Recording {
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
}

impl Recording {
    /// Starts recording every CPU into `data`, perf's own messages into
    /// `log`.
    pub fn start(data: &Path, log: &Path) -> Result<Recording, String> {
        if which::which("perf").is_err() {
            return Err("perf is not installed (package linux-perf)".into());
        }
        let mut command = Command::new("perf");
        // -B: no build-id collection, which takes seconds at the end and is
        // only needed to read the data on another machine.
        command
            .args(["record", "-a", "-g", "-B", "-F", SAMPLE_HZ, "-o"])
            .arg(data);
        let child = spawn_logged(&mut command, log, "start perf record")?;
        let mut recording = Recording {
            child: Some(child),
            data: data.to_path_buf(),
            log: log.to_path_buf(),
        };
        std::thread::sleep(STARTUP);
        if let Some(status) = recording.exited()? {
            return Err(format!(
                "perf record exited at once ({status}): {}",
                last_lines(log, 2)
            ));
        }
        Ok(recording)
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>, String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child
            .try_wait()
            .map_err(|err| format!("cannot wait for perf: {err}"))?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Stops perf and waits until it has written the data file.
    pub fn stop(mut self) -> Result<PathBuf, String> {
        self.stop_child()?;
        Ok(self.data.clone())
    }

    fn stop_child(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Err(format!(
                "perf record ended early: {}",
                last_lines(&self.log, 2)
            ));
        };
        host::terminate(child.id())?;
        match child.wait_timeout(STOP_TIMEOUT) {
            // perf record exits with the signal's status or 0; either way
            // the data is written once it has exited.
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "perf record did not stop within {} s; killed",
                    STOP_TIMEOUT.as_secs()
                ))
            }
            Err(err) => Err(format!("cannot wait for perf: {err}")),
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(err) = self.stop_child()
        {
            eprintln!("lab: stopping perf: {err}");
        }
    }
}

/// One line of a flat profile: a share of all samples on all CPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileLine {
    pub percent: f64,
    /// The thread's name (`fio`, `fuse-queue-0`, `iou-wrk-…`, `swapper`
    /// for an idle CPU).
    pub command: String,
    /// `[k] name` for the kernel, `[.] name` for user space.
    pub symbol: String,
}

/// What a profiled run leaves: the flat profile, and the full report with
/// call chains in `report` (relative to the lab's output directory).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Every `comm,sym` entry, largest first.
    pub entries: Vec<ProfileLine>,
    pub report: PathBuf,
}

/// Whom a thread works for, told by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `swapper`: a CPU with nothing to run.
    Idle,
    /// The export's threads: fuse-export's queues, qemu-storage-daemon.
    Server,
    /// The workload: fio, dd, qemu-img, mkfs.
    Client,
    /// The kernel's own threads, io_uring workers (either side's), the lab.
    Other,
}

impl Role {
    pub fn of(command: &str) -> Role {
        const SERVERS: [&str; 3] = ["fuse-queue-", "fuse-export", "qemu-storage-da"];
        const CLIENTS: [&str; 4] = ["fio", "dd", "qemu-img", "mkfs.ext4"];
        if command == "swapper" {
            Role::Idle
        } else if SERVERS.iter().any(|name| command.starts_with(name)) {
            Role::Server
        } else if CLIENTS.contains(&command) {
            Role::Client
        } else {
            Role::Other
        }
    }
}

impl Profile {
    /// Share of all samples (percent) taken in threads of `role`.
    pub fn share(&self, role: Role) -> f64 {
        self.of(role).map(|line| line.percent).sum()
    }

    /// The entries of threads of `role`, largest first.
    pub fn of(&self, role: Role) -> impl Iterator<Item = &ProfileLine> {
        self.entries
            .iter()
            .filter(move |line| Role::of(&line.command) == role)
    }

    /// The symbols of threads of `role` with their shares summed over
    /// those threads (both queues' copies are one cost), largest first.
    pub fn symbols_of(&self, role: Role) -> Vec<(&str, f64)> {
        summed(
            self.of(role)
                .map(|line| (line.symbol.as_str(), line.percent)),
        )
    }

    /// Share of all samples by kind of thread ([`thread_kind`]), largest
    /// first: who had the CPUs (`swapper` is an idle CPU).
    pub fn by_thread(&self) -> Vec<(String, f64)> {
        let kinds = self.entries.iter();
        summed(kinds.map(|line| (thread_kind(&line.command), line.percent)))
    }
}

/// The shares of equal keys added up, largest first (ties in first-seen
/// order).
fn summed<K: PartialEq>(shares: impl IntoIterator<Item = (K, f64)>) -> Vec<(K, f64)> {
    let mut sums: Vec<(K, f64)> = Vec::new();
    for (key, share) in shares {
        match sums.iter_mut().find(|(seen, _)| *seen == key) {
            Some((_, sum)) => *sum += share,
            None => sums.push((key, share)),
        }
    }
    sums.sort_by(|a, b| b.1.total_cmp(&a.1));
    sums
}

/// A thread name with its numbers replaced by `N`, so that one role on
/// every CPU or queue adds up: `fuse-queue-N`, `iou-wrk-N`,
/// `kworker/N:NH-kblockd`.
pub fn thread_kind(command: &str) -> String {
    let mut kind = String::with_capacity(command.len());
    let mut in_number = false;
    for c in command.chars() {
        if !c.is_ascii_digit() {
            kind.push(c);
        } else if !in_number {
            kind.push('N');
        }
        in_number = c.is_ascii_digit();
    }
    kind
}

fn perf_report(data: &Path, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("perf");
    command
        .arg("report")
        .arg("-i")
        .arg(data)
        .args(["--stdio", "--no-children"])
        .args(args);
    host::stdout_of(&mut command, "perf report")
}

/// Reads `data` into a [`Profile`]; writes the full report (call chains
/// of every entry over 1 %) to `out_dir/report`.
pub fn summarize(data: &Path, out_dir: &Path, report: &Path) -> Result<Profile, String> {
    let flat = perf_report(
        data,
        &["--sort", "comm,sym", "-g", "none", "--field-separator", ";"],
    )?;
    let entries = flat_lines(&flat);
    if entries.is_empty() {
        return Err(format!("perf report of {} has no samples", data.display()));
    }
    let full = perf_report(
        data,
        &[
            "--sort",
            "comm,dso,sym",
            "-g",
            "caller,0.5,callee",
            "--percent-limit",
            "1",
        ],
    )?;
    let path = out_dir.join(report);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    }
    fs::write(&path, full).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    Ok(Profile {
        entries,
        report: report.to_path_buf(),
    })
}

/// The entries of `perf report --field-separator ';' --sort comm,sym -g
/// none`, largest first: `  17.47%  ;fuse-queue-0  ;[k] __pi_memcpy`.
fn flat_lines(text: &str) -> Vec<ProfileLine> {
    let mut lines: Vec<ProfileLine> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(';').map(str::trim);
            let percent = fields.next()?.strip_suffix('%')?.parse().ok()?;
            let command = fields.next()?.to_string();
            let symbol = fields.next()?.to_string();
            Some(ProfileLine {
                percent,
                command,
                symbol,
            })
        })
        .collect();
    lines.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_report_lines_are_read_largest_first() {
        let text = "# Samples: 12K of event 'cpu-clock:ppp'\n\
            #\n\
            \x20   3.10%  ;fio            ;[k] fuse_copy_folio\n\
            \x20  41.52%  ;swapper        ;[k] pv_native_safe_halt\n\
            \x20  17.47%  ;fuse-queue-0   ;[k] __pi_memcpy\n\
            \n\
            # (Tip: a tip)\n";
        let lines = flat_lines(text);
        let summary: Vec<(f64, &str, &str)> = lines
            .iter()
            .map(|l| (l.percent, l.command.as_str(), l.symbol.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (41.52, "swapper", "[k] pv_native_safe_halt"),
                (17.47, "fuse-queue-0", "[k] __pi_memcpy"),
                (3.10, "fio", "[k] fuse_copy_folio"),
            ]
        );
        assert!(flat_lines("# only comments\n\n").is_empty());
    }

    /// A profile of these (share, thread) entries, all of one symbol.
    fn profile_of(entries: &[(f64, &str)]) -> Profile {
        let line = |&(percent, command): &(f64, &str)| ProfileLine {
            percent,
            command: command.into(),
            symbol: "[k] x".into(),
        };
        Profile {
            entries: entries.iter().map(line).collect(),
            report: PathBuf::new(),
        }
    }

    #[test]
    fn threads_are_told_apart_by_name() {
        assert_eq!(Role::of("swapper"), Role::Idle);
        assert_eq!(Role::of("fuse-queue-1"), Role::Server);
        assert_eq!(Role::of("qemu-storage-da"), Role::Server);
        assert_eq!(Role::of("fio"), Role::Client);
        assert_eq!(Role::of("qemu-img"), Role::Client);
        assert_eq!(Role::of("iou-wrk-123"), Role::Other);
        assert_eq!(Role::of("kworker/1:2H-kb"), Role::Other);
        let profile = profile_of(&[
            (50.0, "swapper"),
            (20.0, "fuse-queue-0"),
            (15.0, "fio"),
            (10.0, "fuse-queue-1"),
            (5.0, "kworker/0:1"),
        ]);
        assert_eq!(profile.share(Role::Server), 30.0);
        assert_eq!(profile.share(Role::Idle), 50.0);
        let server: Vec<f64> = profile.of(Role::Server).map(|l| l.percent).collect();
        assert_eq!(server, [20.0, 10.0]);
        assert_eq!(profile.symbols_of(Role::Server), [("[k] x", 30.0)]);
    }

    #[test]
    fn threads_of_one_role_add_up() {
        assert_eq!(thread_kind("fuse-queue-12"), "fuse-queue-N");
        assert_eq!(thread_kind("kworker/1:2H-kblockd"), "kworker/N:NH-kblockd");
        assert_eq!(thread_kind("fio"), "fio");
        assert_eq!(thread_kind("QN12"), "QNN");
        let profile = profile_of(&[
            (10.0, "fuse-queue-0"),
            (30.0, "swapper"),
            (15.0, "fuse-queue-1"),
            (5.0, "fio"),
            (12.5, "fuse-queue-0"),
        ]);
        assert_eq!(
            profile.by_thread(),
            [
                ("fuse-queue-N".to_string(), 37.5),
                ("swapper".to_string(), 30.0),
                ("fio".to_string(), 5.0),
            ]
        );
    }

    /// Records this test's own busy loop, when perf is installed and
    /// allowed to sample every CPU (root); skips otherwise.
    #[test]
    fn a_recording_of_a_busy_loop_shows_it() {
        if which::which("perf").is_err() || !host::is_root() {
            eprintln!("SKIP: needs perf and root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("lab-profile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let data = dir.join("perf.data");
        let recording = Recording::start(&data, &dir.join("perf.log")).unwrap();
        let spinner = std::thread::Builder::new()
            .name("lab-busy-loop".into())
            .spawn(|| {
                let busy_until = std::time::Instant::now() + Duration::from_millis(600);
                let mut spins = 0u64;
                while std::time::Instant::now() < busy_until {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            })
            .unwrap();
        spinner.join().unwrap();
        let data = recording.stop().unwrap();
        let profile = summarize(&data, &dir, Path::new("profiles/busy.txt")).unwrap();
        let full = fs::read_to_string(dir.join("profiles/busy.txt")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        // The spinner had most of one CPU's samples: about half of all
        // samples on two CPUs.
        let ours: f64 = profile
            .entries
            .iter()
            .filter(|line| line.command == "lab-busy-loop")
            .map(|line| line.percent)
            .sum();
        assert!(ours > 5.0, "{profile:?}");
        assert!(full.contains("Samples"), "{full}");
    }
}
