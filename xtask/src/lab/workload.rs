//! Running one client workload (qemu-img, dd, fio) against a path.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt as _;

use super::fio;
use super::loop_fs::LoopFilesystem;
use super::plan::{MIB, Metric, Workload};

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
    /// stdout and stderr of every client command of the run.
    pub log: PathBuf,
    /// Where the ext4 workloads mount their filesystem.
    pub ext4_dir: PathBuf,
}

/// A workload set up on its target, ready to be measured; for ext4 the
/// filesystem is made and mounted and fio's file laid out, so that the run
/// (and the server CPU charged to it) is the job alone.
#[derive(Debug)]
pub struct Prepared {
    workload: Workload,
    /// What the client opens: the target, or the fio file on ext4.
    path: PathBuf,
    size: u64,
    files: ClientFiles,
    /// Unmounted and detached when this is dropped.
    _filesystem: Option<LoopFilesystem>,
}

/// Sets `workload` up on `target`, a file of `size` bytes.
pub fn prepare(
    workload: &Workload,
    target: &Path,
    size: u64,
    files: ClientFiles,
) -> Result<Prepared, String> {
    let (workload, path) = (*workload, target.to_path_buf());
    let Workload::Ext4Fio { job, file_size } = workload else {
        return Ok(Prepared {
            workload,
            path,
            size,
            files,
            _filesystem: None,
        });
    };
    let filesystem =
        LoopFilesystem::create(target, &files.ext4_dir, &files.log, copy_timeout(size))?;
    let path = files.ext4_dir.join("fio.data");
    let mut layout = Command::new("fio");
    layout
        .args(fio::args(&job, &path, file_size, &files.fio_report))
        .arg("--create_only=1");
    run_command(layout, copy_timeout(file_size), &files.log)?;
    let _filesystem = Some(filesystem);
    Ok(Prepared {
        workload,
        path,
        size: file_size,
        files,
        _filesystem,
    })
}

impl Prepared {
    pub fn run(&self) -> Result<Measurement, String> {
        let (path, files) = (&self.path, &self.files);
        let (command, size) = match self.workload {
            Workload::Convert { direct, size } => {
                // A raw driver with a size limit reads the first `size` bytes
                // of the source, so one source file serves every size.
                let source = files.source.display();
                let source =
                    format!("driver=raw,size={size},file.driver=file,file.filename={source}");
                let mut command = Command::new("qemu-img");
                command.args(["convert", "-n", "--image-opts", &source, "-O", "raw"]);
                if direct {
                    command.args(["-t", "none"]);
                }
                command.arg(path);
                (command, size)
            }
            Workload::Dd { write, size } => {
                let path = path.display();
                let mut command = Command::new("dd");
                if write {
                    command.args([
                        "if=/dev/zero",
                        &format!("of={path}"),
                        "oflag=direct",
                        "conv=notrunc",
                    ]);
                } else {
                    command.args([&format!("if={path}"), "of=/dev/null", "iflag=direct"]);
                }
                command.args(["bs=1M", &format!("count={}", size / MIB), "status=none"]);
                (command, size)
            }
            Workload::Fio(job) | Workload::Ext4Fio { job, .. } => {
                let report = &files.fio_report;
                let _ = fs::remove_file(report);
                let mut command = Command::new("fio");
                command.args(fio::args(&job, path, self.size, report));
                let timeout = Duration::from_secs(u64::from(job.runtime_secs) + 120);
                run_command(command, timeout, &files.log)?;
                let text = fs::read_to_string(report)
                    .map_err(|err| format!("no fio report {}: {err}", report.display()))?;
                return fio::parse_report(&text, job.pattern);
            }
        };
        let seconds = run_command(command, copy_timeout(size), &files.log)?;
        Ok(Measurement {
            seconds,
            bytes: size,
            ios: None,
            iops: None,
            lat_p50_us: None,
            lat_p99_us: None,
        })
    }
}

/// Generous: an export at 20 MiB/s still finishes; a hang does not block
/// the lab forever.
fn copy_timeout(bytes: u64) -> Duration {
    Duration::from_secs(120 + bytes / (20 * MIB))
}

/// Spawns `command` with no stdin and its stdout and stderr appended to
/// `log`; `what` names it in errors (`cannot run fio: ...`).
pub fn spawn_logged(command: &mut Command, log: &Path, what: &str) -> Result<Child, String> {
    let output = File::options().create(true).append(true).open(log);
    let output = output.map_err(|err| format!("cannot open {}: {err}", log.display()))?;
    let errors = output
        .try_clone()
        .map_err(|err| format!("cannot duplicate a file handle: {err}"))?;
    command.stdin(Stdio::null()).stdout(output).stderr(errors);
    command
        .spawn()
        .map_err(|err| format!("cannot {what}: {err}"))
}

/// Runs a client to completion with its output appended to `log`; returns
/// its wall time in seconds. A client still running after `timeout` is
/// killed.
pub fn run_command(mut command: Command, timeout: Duration, log: &Path) -> Result<f64, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    let mut child = spawn_logged(&mut command, log, &format!("run {program}"))?;
    let waited = child.wait_timeout(timeout);
    let seconds = started.elapsed().as_secs_f64();
    let failure = match waited {
        Ok(Some(status)) if status.success() => return Ok(seconds),
        Ok(Some(status)) => {
            return Err(format!(
                "{program} failed ({status}): {}",
                last_lines(log, 2)
            ));
        }
        Ok(None) => format!(
            "{program} did not finish within {} s; killed",
            timeout.as_secs()
        ),
        Err(err) => format!("waiting for {program}: {err}"),
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(failure)
}

/// The last `count` non-empty lines of a log, joined, for error messages.
pub fn last_lines(path: &Path, count: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(count)..];
    if tail.is_empty() {
        format!("(no output; log {})", path.display())
    } else {
        tail.join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_timed_and_failures_explained() {
        let dir = std::env::temp_dir().join(format!("lab-cmd-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo first; sleep 0.05"]);
        let secs = run_command(ok, Duration::from_secs(10), &log).unwrap();
        assert!(secs >= 0.05, "{secs}");
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo broken >&2; exit 3"]);
        let err = run_command(failing, Duration::from_secs(10), &log).unwrap_err();
        assert!(err.contains("broken"), "{err}");
        // Every command of a run ends up in its log.
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.contains("first") && text.contains("broken"), "{text}");
        let mut slow = Command::new("sleep");
        slow.arg("10");
        let err = run_command(slow, Duration::from_millis(100), &log).unwrap_err();
        assert!(err.contains("killed"), "{err}");
        let missing = Command::new("/nonexistent/program");
        assert!(run_command(missing, Duration::from_secs(1), &log).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// dd and qemu-img on a small plain file: the command lines work and
    /// convert copies the source's first `size` bytes onto the target.
    #[test]
    fn copy_workloads_run_on_a_plain_file() {
        let dir = std::env::temp_dir().join(format!("lab-copy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (image, source) = (dir.join("image.raw"), dir.join("source.raw"));
        fs::write(&image, vec![1u8; 2 * MIB as usize]).unwrap();
        let data: Vec<u8> = (0..3 * MIB).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&source, &data).unwrap();
        let files = ClientFiles {
            source: source.clone(),
            fio_report: dir.join("fio.json"),
            log: dir.join("client.log"),
            ext4_dir: dir.join("ext4"),
        };
        let size = 2 * MIB;
        for workload in [
            Workload::Dd { write: false, size },
            Workload::Dd { write: true, size },
            Workload::Convert { direct: true, size },
            Workload::Convert {
                direct: false,
                size,
            },
        ] {
            if let Some(reason) = workload
                .tools()
                .iter()
                .find_map(|tool| crate::lab::host::missing(tool))
            {
                println!("SKIP: {}: {reason}", workload.id());
                continue;
            }
            let prepared = prepare(&workload, &image, size, files.clone()).unwrap();
            let measurement = prepared.run().unwrap();
            assert_eq!(measurement.bytes, size, "{}", workload.id());
            assert!(measurement.seconds > 0.0, "{}", workload.id());
            if let Workload::Dd { write: true, .. } = workload {
                assert_eq!(fs::read(&image).unwrap(), vec![0u8; size as usize]);
            }
            if let Workload::Convert { .. } = workload {
                assert_eq!(fs::read(&image).unwrap(), data[..size as usize]);
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
