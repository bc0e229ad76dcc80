//! Running one client workload (qemu-img, dd, fio) against a path.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::host;
use super::json::{self, Value};
use super::plan::{FioJob, MIB, Metric, Pattern, Workload, size_short};
use super::target::last_lines;

/// What one client run achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Wall time (fio: its own runtime).
    pub seconds: f64,
    pub bytes: u64,
    /// I/O operations (fio only).
    pub ios: Option<u64>,
    pub iops: Option<f64>,
    /// fio completion latency percentiles, microseconds.
    pub lat_p50_us: Option<f64>,
    pub lat_p99_us: Option<f64>,
}

impl Measurement {
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.seconds
    }

    pub fn value(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Seconds => Some(self.seconds),
            Metric::MibPerSec => Some(self.mib_per_sec()),
            Metric::Iops => self.iops,
        }
    }
}

/// Files a client run uses besides its target.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// Random raw image `qemu-img convert` reads (at least as large as any
    /// convert workload).
    pub source: PathBuf,
    /// Where fio writes its JSON report.
    pub fio_report: PathBuf,
    /// stdout and stderr of the client.
    pub log: PathBuf,
}

/// Runs `workload` against `path` (a file of `size` bytes).
pub fn run(
    workload: &Workload,
    path: &Path,
    size: u64,
    files: &ClientFiles,
) -> Result<Measurement, String> {
    match *workload {
        Workload::Convert {
            direct,
            size: bytes,
        } => {
            // A raw driver with a size limit reads the first `bytes` of the
            // source, so one source file serves every convert size.
            let source = format!(
                "driver=raw,size={bytes},file.driver=file,file.filename={}",
                files.source.display()
            );
            let mut command = Command::new("qemu-img");
            command.args(["convert", "-n", "--image-opts", &source, "-O", "raw"]);
            if direct {
                command.args(["-t", "none"]);
            }
            command.arg(path);
            let seconds = run_command(command, timeout_for_copy(bytes), &files.log)?;
            Ok(copy_measurement(seconds, bytes))
        }
        Workload::Dd {
            direction,
            size: bytes,
        } => {
            let count = (bytes / MIB).to_string();
            let mut command = Command::new("dd");
            match direction {
                super::plan::Direction::Read => {
                    command
                        .arg(format!("if={}", path.display()))
                        .args(["of=/dev/null", "iflag=direct"]);
                }
                super::plan::Direction::Write => {
                    command
                        .arg("if=/dev/zero")
                        .arg(format!("of={}", path.display()))
                        .args(["oflag=direct", "conv=notrunc"]);
                }
            }
            command.args(["bs=1M", &format!("count={count}"), "status=none"]);
            let seconds = run_command(command, timeout_for_copy(bytes), &files.log)?;
            Ok(copy_measurement(seconds, bytes))
        }
        Workload::Fio(job) => run_fio(&job, path, size, files),
    }
}

fn copy_measurement(seconds: f64, bytes: u64) -> Measurement {
    Measurement {
        seconds,
        bytes,
        ios: None,
        iops: None,
        lat_p50_us: None,
        lat_p99_us: None,
    }
}

/// Generous: an export at 20 MiB/s still finishes; a hang does not block
/// the lab forever.
fn timeout_for_copy(bytes: u64) -> Duration {
    Duration::from_secs(120 + bytes / (20 * MIB))
}

/// fio's command line for `job` on `path`.
pub fn fio_args(job: &FioJob, path: &Path, size: u64, report: &Path) -> Vec<String> {
    let mut args = vec![
        "--name=lab".to_string(),
        format!("--filename={}", path.display()),
        format!("--size={size}"),
        "--direct=1".into(),
        format!("--ioengine={}", job.engine.fio_name()),
        format!("--iodepth={}", job.iodepth),
        format!("--rw={}", job.pattern.fio_rw()),
        format!("--bs={}", size_short(job.block_size)),
        "--time_based".into(),
        format!("--runtime={}", job.runtime_secs),
        "--numjobs=1".into(),
        // Different offsets every run, so no run profits from a cache a
        // previous one warmed; no random map to keep fio's own CPU low.
        "--randrepeat=0".into(),
        "--norandommap".into(),
        // The image exists at its full size; fio must not try to lay it out.
        "--fallocate=none".into(),
        "--percentile_list=50:99".into(),
        "--output-format=json".into(),
        format!("--output={}", report.display()),
    ];
    if job.pattern == Pattern::RandRw70 {
        args.push("--rwmixread=70".into());
    }
    args
}

fn run_fio(
    job: &FioJob,
    path: &Path,
    size: u64,
    files: &ClientFiles,
) -> Result<Measurement, String> {
    let _ = fs::remove_file(&files.fio_report);
    let mut command = Command::new("fio");
    command.args(fio_args(job, path, size, &files.fio_report));
    let timeout = Duration::from_secs(u64::from(job.runtime_secs) + 120);
    run_command(command, timeout, &files.log)?;
    let text = fs::read_to_string(&files.fio_report)
        .map_err(|err| format!("no fio report {}: {err}", files.fio_report.display()))?;
    parse_fio_report(&text, job.pattern)
}

/// Reads fio's JSON report (one job, `--group_reporting` not needed).
pub fn parse_fio_report(text: &str, pattern: Pattern) -> Result<Measurement, String> {
    // fio may print notices before the JSON document even with --output.
    let start = text.find('{').ok_or("fio report has no JSON")?;
    let doc = json::parse(&text[start..]).map_err(|err| format!("fio report: {err}"))?;
    let job = doc
        .get("jobs")
        .and_then(|jobs| jobs.at(0))
        .ok_or("fio report has no job")?;
    let number = |value: Option<&Value>| value.and_then(Value::as_f64);
    if let Some(error) = number(job.get("error"))
        && error != 0.0
    {
        return Err(format!("fio job failed with error {error}"));
    }
    let mut bytes = 0.0;
    let mut ios = 0.0;
    let mut iops = 0.0;
    for side in ["read", "write"] {
        bytes += number(job.path(&[side, "io_bytes"])).unwrap_or(0.0);
        ios += number(job.path(&[side, "total_ios"])).unwrap_or(0.0);
        iops += number(job.path(&[side, "iops"])).unwrap_or(0.0);
    }
    if ios == 0.0 {
        return Err("fio completed no I/O".into());
    }
    let runtime_ms = number(job.get("job_runtime"))
        .filter(|ms| *ms > 0.0)
        .ok_or("fio report has no job_runtime")?;
    let side = if pattern.reports_writes() {
        "write"
    } else {
        "read"
    };
    let percentile =
        |key: &str| number(job.path(&[side, "clat_ns", "percentile", key])).map(|ns| ns / 1000.0);
    Ok(Measurement {
        seconds: runtime_ms / 1000.0,
        bytes: bytes as u64,
        ios: Some(ios as u64),
        iops: Some(iops),
        lat_p50_us: percentile("50.000000"),
        lat_p99_us: percentile("99.000000"),
    })
}

/// Runs a client to completion with its output in `log`; returns its wall
/// time in seconds. A client still running after `timeout` is killed.
pub fn run_command(mut command: Command, timeout: Duration, log: &Path) -> Result<f64, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let log_file =
        File::create(log).map_err(|err| format!("cannot create {}: {err}", log.display()))?;
    let log_for_stderr = log_file
        .try_clone()
        .map_err(|err| format!("cannot duplicate a file handle: {err}"))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_for_stderr));
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot run {program}: {err}"))?;
    let pid = child.id();
    // A thread blocks in wait() so the end time is exact (polling would add
    // up to one interval to short runs) while this thread can time out.
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = done_tx.send((status, Instant::now()));
    });
    let (status, ended) = match done_rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => {
            // Not reaped yet, so the PID is still this child's.
            let _ = host::send_signal(pid, libc::SIGKILL);
            let _ = waiter.join();
            return Err(format!(
                "{program} did not finish within {} s; killed",
                timeout.as_secs()
            ));
        }
    };
    let _ = waiter.join();
    let status = status.map_err(|err| format!("waiting for {program}: {err}"))?;
    if !status.success() {
        return Err(format!(
            "{program} failed ({status}): {}",
            last_lines(log, 2)
        ));
    }
    Ok(ended.duration_since(started).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{Engine, KIB};

    #[test]
    fn fio_report_numbers() {
        let report = r#"fio: some notice
        {"jobs": [{"jobname": "lab", "error": 0, "job_runtime": 2000,
          "read": {"io_bytes": 548839424, "total_ios": 133994, "iops": 66963.5,
                   "clat_ns": {"percentile": {"50.000000": 370688, "99.000000": 2932736}}},
          "write": {"io_bytes": 0, "total_ios": 0, "iops": 0.0,
                    "clat_ns": {"percentile": {"50.000000": 0, "99.000000": 0}}}}]}"#;
        let m = parse_fio_report(report, Pattern::RandRead).unwrap();
        assert_eq!(m.seconds, 2.0);
        assert_eq!(m.ios, Some(133_994));
        assert_eq!(m.iops, Some(66963.5));
        assert_eq!(m.lat_p50_us, Some(370.688));
        assert_eq!(m.lat_p99_us, Some(2932.736));
        assert!(parse_fio_report("garbage", Pattern::RandRead).is_err());
        assert!(parse_fio_report(r#"{"jobs": [{"error": 5}]}"#, Pattern::RandRead).is_err());
    }

    #[test]
    fn fio_command_line() {
        let job = FioJob {
            pattern: Pattern::RandRw70,
            block_size: 4 * KIB,
            iodepth: 32,
            engine: Engine::Libaio,
            runtime_secs: 5,
        };
        let args = fio_args(&job, Path::new("/x/img"), 1 << 30, Path::new("/tmp/r.json")).join(" ");
        for part in [
            "--filename=/x/img",
            "--size=1073741824",
            "--ioengine=libaio",
            "--iodepth=32",
            "--rw=randrw",
            "--rwmixread=70",
            "--bs=4k",
            "--runtime=5",
            "--direct=1",
        ] {
            assert!(args.contains(part), "{part} missing from {args}");
        }
    }

    #[test]
    fn commands_are_timed_and_failures_explained() {
        let dir = std::env::temp_dir().join(format!("lab-cmd-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let mut ok = Command::new("sh");
        ok.args(["-c", "sleep 0.05"]);
        let secs = run_command(ok, Duration::from_secs(10), &log).unwrap();
        assert!(secs >= 0.05, "{secs}");
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo broken >&2; exit 3"]);
        let err = run_command(failing, Duration::from_secs(10), &log).unwrap_err();
        assert!(err.contains("broken"), "{err}");
        let mut slow = Command::new("sleep");
        slow.arg("10");
        let err = run_command(slow, Duration::from_millis(100), &log).unwrap_err();
        assert!(err.contains("killed"), "{err}");
        let missing = Command::new("/nonexistent/program");
        assert!(run_command(missing, Duration::from_secs(1), &log).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
