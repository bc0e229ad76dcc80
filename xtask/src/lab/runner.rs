//! Executes a plan: interleaved repetitions, one fresh server per run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::host;
use super::plan::{AllocProbe, Duration, Group, Plan, ServerOptions, Target, Workload};
use super::results::{AllocCounts, AllocRecord, Outcome, RunRecord, ServerUsage};
use super::target::{self, ServerProcess, ThreadSampler};
use super::workload::{self, ClientFiles, Measurement};

/// `RUST_LOG` for fuse-export: its per-queue report at exit is a debug line
/// of the binary crate; the libraries stay at info so logging costs nothing
/// per request.
const SERVER_LOG_FILTER: &str = "info,fuse_export=debug";

/// Machine resources a run uses.
#[derive(Debug)]
pub struct Workspace {
    pub image: PathBuf,
    pub image_size: u64,
    pub mountpoint: PathBuf,
    pub logs: PathBuf,
    pub client: ClientFiles,
    /// The fuse-export binary, or why there is none.
    pub server: Result<PathBuf, String>,
    /// The `--features alloc-count` binary, or why there is none.
    pub alloc_server: Result<PathBuf, String>,
    /// Client and peer programs that are missing, with the reason.
    pub missing: BTreeMap<&'static str, String>,
    pub fuse_device: Result<(), String>,
}

/// Runs the plan and reports progress on stdout, one line per run.
#[derive(Debug)]
pub struct Runner<'a> {
    plan: &'a Plan,
    workspace: &'a Workspace,
    ticks_per_sec: f64,
    started: Instant,
    done: usize,
    total: usize,
    estimated_done: f64,
    estimated_total: f64,
}

impl<'a> Runner<'a> {
    pub fn new(plan: &'a Plan, workspace: &'a Workspace) -> Runner<'a> {
        Runner {
            plan,
            workspace,
            ticks_per_sec: host::clock_ticks_per_sec(),
            started: Instant::now(),
            done: 0,
            total: plan.run_count(),
            estimated_done: 0.0,
            estimated_total: plan.estimate_secs(),
        }
    }

    /// Every group, repetitions interleaved (plain, fuse-export, qsd, plain,
    /// ...), the target order rotated per repetition so no target always
    /// runs right after the same neighbour. Stops early on Ctrl-C.
    pub fn run_groups(&mut self) -> Vec<RunRecord> {
        let mut records = Vec::new();
        for (group_index, group) in self.plan.groups.iter().enumerate() {
            for repetition in 0..self.plan.settings.repetitions {
                let count = group.targets.len();
                for offset in 0..count {
                    if host::interrupted() {
                        return records;
                    }
                    let target_index = (offset + repetition as usize) % count;
                    let target = &group.targets[target_index];
                    let outcome = self.run_case(group, target, repetition);
                    let record = RunRecord {
                        group: group_index,
                        target: target_index,
                        repetition,
                        outcome,
                    };
                    let ratio = baseline_ratio(self.plan, &records, &record);
                    self.estimated_done += self.plan.run_estimate_secs(group, target);
                    self.progress(&group.case_id(target), repetition, &record.outcome, ratio);
                    records.push(record);
                }
            }
        }
        records
    }

    fn progress(&mut self, case: &str, repetition: u32, outcome: &Outcome, ratio: Option<f64>) {
        self.done += 1;
        let elapsed = self.started.elapsed().as_secs_f64();
        // Scale the plan's estimate by how fast the runs so far went.
        let speed = if self.estimated_done > 0.0 {
            elapsed / self.estimated_done
        } else {
            1.0
        };
        let remaining = (self.estimated_total - self.estimated_done).max(0.0) * speed;
        let width = self.total.to_string().len();
        let detail = match outcome {
            Outcome::Measured {
                measurement,
                server,
            } => describe_measurement(measurement, server.as_ref(), ratio),
            other => other.problem().unwrap_or_default(),
        };
        println!(
            "[{:>width$}/{}] {case} rep {}/{}: {detail}  (eta {})",
            self.done,
            self.total,
            repetition + 1,
            self.plan.settings.repetitions,
            Duration(remaining),
        );
    }

    /// Why `target` cannot run `workload` here, if it cannot.
    fn unavailable(&self, workload: &Workload, target: &Target) -> Option<String> {
        if let Some(reason) = self.workspace.missing.get(workload.tool()) {
            return Some(reason.clone());
        }
        match target {
            Target::Plain => None,
            Target::FuseExport(_) => self
                .workspace
                .fuse_device
                .as_ref()
                .err()
                .or(self.workspace.server.as_ref().err())
                .cloned(),
            Target::Qsd => self
                .workspace
                .fuse_device
                .as_ref()
                .err()
                .cloned()
                .or_else(|| self.workspace.missing.get("qemu-storage-daemon").cloned()),
        }
    }

    fn run_case(&self, group: &Group, target: &Target, repetition: u32) -> Outcome {
        if let Some(reason) = self.unavailable(&group.workload, target) {
            return Outcome::Unavailable(reason);
        }
        let stem = format!(
            "{}-{}-{}-rep{}",
            group.name,
            group.workload.id(),
            target.label(),
            repetition + 1
        )
        .replace(['/', '[', ']', '=', ',', '+'], "_");
        match self.measure(&group.workload, target, &stem, None) {
            Ok((measurement, server, _log)) => Outcome::Measured {
                measurement,
                server,
            },
            Err(reason) => Outcome::Failed(reason),
        }
    }

    /// Starts the target, runs the workload, stops the target. `binary`
    /// overrides the fuse-export binary (the alloc-count build).
    fn measure(
        &self,
        workload: &Workload,
        target: &Target,
        stem: &str,
        binary: Option<&Path>,
    ) -> Result<(Measurement, Option<ServerUsage>, String), String> {
        let ws = self.workspace;
        host::drop_caches()?;
        let client = ClientFiles {
            log: ws.logs.join(format!("{stem}.client.log")),
            fio_report: ws.logs.join(format!("{stem}.fio.json")),
            ..ws.client.clone()
        };
        let server_log = ws.logs.join(format!("{stem}.server.log"));
        let server = match target {
            Target::Plain => {
                let measurement = workload::run(workload, &ws.image, ws.image_size, &client)?;
                return Ok((measurement, None, String::new()));
            }
            Target::FuseExport(options) => {
                let binary = match binary {
                    Some(binary) => binary,
                    None => ws.server.as_deref().map_err(Clone::clone)?,
                };
                ServerProcess::start(
                    "fuse-export",
                    fuse_export_command(binary, &ws.image, &ws.mountpoint, options),
                    &ws.mountpoint,
                    ws.image_size,
                    &server_log,
                    false,
                )?
            }
            Target::Qsd => ServerProcess::start(
                "qemu-storage-daemon",
                qsd_command(&ws.image, &ws.mountpoint),
                &ws.mountpoint,
                ws.image_size,
                &server_log,
                true,
            )?,
        };
        let pid = server.pid();
        let idle_rss_kib = host::status_field(pid, "VmRSS").unwrap_or(0);
        let idle_threads = host::status_field(pid, "Threads").unwrap_or(0);
        let cpu_before = host::cpu_seconds(pid, self.ticks_per_sec);
        let sampler = ThreadSampler::start(pid);
        let result = workload::run(workload, &ws.mountpoint, ws.image_size, &client);
        let max_threads = sampler.finish();
        let cpu_after = host::cpu_seconds(pid, self.ticks_per_sec);
        let peak_rss_kib = host::status_field(pid, "VmHWM").unwrap_or(0);
        let stopped = server.stop();
        let measurement = result?;
        let log = stopped.map_err(|err| format!("server: {err}"))?;
        let (requests, spilled) = match target::queue_totals(&log) {
            Some((requests, spilled)) => (Some(requests), Some(spilled)),
            None => (None, None),
        };
        let usage = ServerUsage {
            cpu_seconds: match (cpu_before, cpu_after) {
                (Some(before), Some(after)) => after - before,
                _ => f64::NAN,
            },
            idle_rss_kib,
            peak_rss_kib,
            idle_threads,
            max_threads,
            requests,
            spilled,
        };
        Ok((measurement, Some(usage), log))
    }

    /// Runs each allocation probe twice (short, long) on the alloc-count
    /// build with the lab's default options.
    pub fn run_alloc_probes(&mut self) -> Vec<AllocRecord> {
        let mut records = Vec::new();
        for (index, probe) in self.plan.alloc_probes.iter().enumerate() {
            if host::interrupted() {
                break;
            }
            let outcome = self.run_alloc_probe(probe);
            let detail = match &outcome {
                Ok(counts) => format!(
                    "{} allocations / {} requests, then {} / {}: {} per request in steady state",
                    counts.short_allocations,
                    counts.short_requests,
                    counts.long_allocations,
                    counts.long_requests,
                    counts
                        .steady_state_per_request()
                        .map_or("n/a".into(), |v| format!("{v:.4}")),
                ),
                Err(reason) => format!("failed: {reason}"),
            };
            self.done += 2;
            println!(
                "[{:>w$}/{}] {}: {detail}",
                self.done,
                self.total,
                probe.case_id(),
                w = self.total.to_string().len()
            );
            records.push(AllocRecord {
                probe: index,
                outcome,
            });
        }
        records
    }

    fn run_alloc_probe(&self, probe: &AllocProbe) -> Result<AllocCounts, String> {
        let binary = self
            .workspace
            .alloc_server
            .as_deref()
            .map_err(Clone::clone)?;
        if let Some(reason) = self.unavailable(
            &Workload::Fio(probe.job),
            &Target::FuseExport(ServerOptions::default()),
        ) {
            return Err(reason);
        }
        let mut counts = [(0, 0); 2];
        for (slot, secs) in [probe.short_secs, probe.long_secs].into_iter().enumerate() {
            let mut job = probe.job;
            job.runtime_secs = secs;
            let stem = format!("alloc-{}-{secs}s", Workload::Fio(job).id());
            let (_, usage, log) = self.measure(
                &Workload::Fio(job),
                &Target::FuseExport(ServerOptions::default()),
                &stem,
                Some(binary),
            )?;
            let allocations = target::allocations(&log)
                .ok_or("the alloc-count build logged no `allocations:` line at exit")?;
            let requests = usage
                .and_then(|u| u.requests)
                .ok_or("the server logged no QueueReport lines")?;
            counts[slot] = (allocations, requests);
        }
        Ok(AllocCounts {
            short_allocations: counts[0].0,
            short_requests: counts[0].1,
            long_allocations: counts[1].0,
            long_requests: counts[1].1,
        })
    }
}

fn fuse_export_command(
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
        .arg(mountpoint)
        .args(options.args())
        .env("RUST_LOG", SERVER_LOG_FILTER);
    command
}

/// The peer, configured as the issue asks: writable, io_uring, O_DIRECT.
fn qsd_command(image: &Path, mountpoint: &Path) -> Command {
    let mut command = Command::new("qemu-storage-daemon");
    command
        .arg("--blockdev")
        .arg(format!(
            "node-name=file0,driver=file,filename={},aio=io_uring,cache.direct=on",
            image.display()
        ))
        .args([
            "--blockdev",
            "node-name=fmt0,driver=raw,file=file0",
            "--export",
        ])
        .arg(format!(
            "type=fuse,id=exp0,node-name=fmt0,mountpoint={},writable=on",
            mountpoint.display()
        ));
    command
}

/// The ratio to plain of a record whose baseline already ran.
fn baseline_ratio(plan: &Plan, earlier: &[RunRecord], record: &RunRecord) -> Option<f64> {
    let group = &plan.groups[record.group];
    if group.targets[record.target] == Target::Plain {
        return None;
    }
    let metric = group.workload.metric();
    let value = record.outcome.measurement()?.value(metric)?;
    let base = earlier
        .iter()
        .find(|r| {
            r.group == record.group
                && r.repetition == record.repetition
                && group.targets[r.target] == Target::Plain
        })?
        .outcome
        .measurement()?
        .value(metric)?;
    (base > 0.0).then(|| value / base)
}

fn describe_measurement(
    measurement: &Measurement,
    server: Option<&ServerUsage>,
    ratio: Option<f64>,
) -> String {
    let mut parts = Vec::new();
    match measurement.iops {
        Some(iops) => parts.push(format!(
            "{} IOPS, {:.0} MiB/s",
            super::report::compact(iops),
            measurement.mib_per_sec()
        )),
        None => parts.push(format!(
            "{:.2} s, {:.0} MiB/s",
            measurement.seconds,
            measurement.mib_per_sec()
        )),
    }
    if let Some(ratio) = ratio {
        parts.push(format!("{ratio:.2}× plain"));
    }
    if let Some(p99) = measurement.lat_p99_us {
        parts.push(format!("p99 {p99:.0} µs"));
    }
    if let Some(server) = server {
        match server.cpu_us_per_io(measurement) {
            Some(us) => parts.push(format!("cpu {us:.1} µs/io")),
            None => {
                if let Some(ms) = server.cpu_ms_per_gib(measurement) {
                    parts.push(format!("cpu {ms:.0} ms/GiB"));
                }
            }
        }
        parts.push(format!(
            "rss {:.1}/{:.1} MiB",
            server.idle_rss_kib as f64 / 1024.0,
            server.peak_rss_kib as f64 / 1024.0
        ));
        parts.push(format!("threads {}", server.max_threads));
    }
    parts.join(", ")
}
