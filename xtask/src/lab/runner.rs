//! Executes a plan: interleaved repetitions, one fresh server per run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::host;
use super::plan::{AllocProbe, Duration, FioJob, Group, Plan, Target, Workload};
use super::profile::{self, Profile, Recording};
use super::report::compact;
use super::results::ratio_to_plain;
use super::results::{AllocCounts, AllocRecord, Outcome, ProfileRecord, RunRecord, ServerUsage};
use super::target::{self, ServerProcess};
use super::workload::{self, ClientFiles, Measurement};

/// Machine resources a run uses.
#[derive(Debug)]
pub struct Workspace {
    pub image: PathBuf,
    pub image_size: u64,
    pub mountpoint: PathBuf,
    pub logs: PathBuf,
    /// Where the report goes (profiles are written under it).
    pub out_dir: PathBuf,
    /// Random raw image `qemu-img convert` reads (at least as large as any
    /// convert workload).
    pub source: PathBuf,
    /// Where the ext4 workloads mount their filesystem.
    pub ext4_dir: PathBuf,
    /// The fuse-export binary, or why there is none.
    pub server: Result<PathBuf, String>,
    /// The `--features alloc-count` binary, or why there is none.
    pub alloc_server: Result<PathBuf, String>,
}

/// Runs the plan and reports progress on stdout, one line per run.
#[derive(Debug)]
pub struct Runner<'a> {
    plan: &'a Plan,
    workspace: &'a Workspace,
    started: Instant,
    done: usize,
    estimated_done: f64,
}

impl<'a> Runner<'a> {
    pub fn new(plan: &'a Plan, workspace: &'a Workspace) -> Runner<'a> {
        Runner {
            plan,
            workspace,
            started: Instant::now(),
            done: 0,
            estimated_done: 0.0,
        }
    }

    /// Every group, repetitions interleaved (plain, fuse-export, qsd, plain,
    /// ...), the target order rotated per repetition so no target always
    /// runs right after the same neighbour; then, with `--profile`, each
    /// server target once more under perf. Stops early on Ctrl-C.
    pub fn run_groups(&mut self) -> (Vec<RunRecord>, Vec<ProfileRecord>) {
        let mut records: Vec<RunRecord> = Vec::new();
        let mut profiles = Vec::new();
        for (group_index, group) in self.plan.groups.iter().enumerate() {
            self.run_repetitions(group_index, group, &mut records);
            if self.plan.settings.profile {
                self.run_profiles(group_index, group, &mut profiles);
            }
        }
        (records, profiles)
    }

    fn run_profiles(&mut self, group_index: usize, group: &Group, out: &mut Vec<ProfileRecord>) {
        for (target_index, target) in group.targets.iter().enumerate() {
            if *target == Target::Plain || host::interrupted() {
                continue;
            }
            let outcome = match self.unavailable(&group.workload, target) {
                Some(reason) => Err(reason),
                None => self.profile_case(group, target),
            };
            let detail = match &outcome {
                Ok((profile, _)) => {
                    let top = profile.entries.iter().take(3).map(|line| {
                        format!("{:.1}% {} {}", line.percent, line.command, line.symbol)
                    });
                    format!(
                        "{}; {}",
                        top.collect::<Vec<_>>().join(", "),
                        profile.report.display()
                    )
                }
                Err(reason) => format!("failed: {reason}"),
            };
            self.estimated_done += self.plan.profile_estimate_secs(group, target);
            let case = group.case_id(target);
            self.progress(1, &format!("{case} profiled: {detail}"));
            out.push(ProfileRecord {
                group: group_index,
                target: target_index,
                outcome,
            });
        }
    }

    fn profile_case(
        &self,
        group: &Group,
        target: &Target,
    ) -> Result<(Profile, Measurement), String> {
        let stem = run_stem(group, target, "profile");
        let data = self.workspace.logs.join(format!("{stem}.perf.data"));
        let (measurement, _, _) =
            self.measure(&group.workload, target, &stem, None, Some(&data))?;
        let report = PathBuf::from("profiles").join(format!("{stem}.txt"));
        let profile = profile::summarize(&data, &self.workspace.out_dir, &report)?;
        Ok((profile, measurement))
    }

    fn run_repetitions(&mut self, group_index: usize, group: &Group, records: &mut Vec<RunRecord>) {
        let repetitions = self.plan.settings.repetitions;
        for repetition in 0..repetitions {
            let count = group.targets.len();
            for target_index in (0..count).map(|offset| (offset + repetition as usize) % count) {
                if host::interrupted() {
                    return;
                }
                let target = &group.targets[target_index];
                let outcome = self.run_case(group, target, repetition);
                let record = RunRecord {
                    group: group_index,
                    target: target_index,
                    repetition,
                    outcome,
                };
                let detail = match &record.outcome {
                    Outcome::Measured {
                        measurement,
                        server,
                    } => {
                        let ratio = ratio_to_plain(records, &record, group);
                        describe_measurement(measurement, server.as_ref(), ratio)
                    }
                    other => other.problem().unwrap_or_default(),
                };
                self.estimated_done += self.plan.run_estimate_secs(group, target);
                let case = group.case_id(target);
                let rep = repetition + 1;
                self.progress(1, &format!("{case} rep {rep}/{repetitions}: {detail}"));
                records.push(record);
            }
        }
    }

    /// One progress line, with the plan's estimate of what is left scaled
    /// by how fast the runs so far went.
    fn progress(&mut self, runs: usize, line: &str) {
        self.done += runs;
        let elapsed = self.started.elapsed().as_secs_f64();
        let speed = if self.estimated_done > 0.0 {
            elapsed / self.estimated_done
        } else {
            1.0
        };
        let remaining = (self.plan.estimate_secs() - self.estimated_done).max(0.0) * speed;
        let (done, total) = (self.done, self.plan.run_count());
        let width = total.to_string().len();
        println!(
            "[{done:>width$}/{total}] {line}  (eta {})",
            Duration(remaining)
        );
    }

    /// Why `target` cannot run `workload` here, if it cannot.
    fn unavailable(&self, workload: &Workload, target: &Target) -> Option<String> {
        let fuse = || (!Path::new("/dev/fuse").exists()).then(|| "/dev/fuse is missing".into());
        workload
            .tools()
            .iter()
            .find_map(|tool| host::missing(tool))
            .or_else(|| match target {
                Target::Plain => None,
                Target::FuseExport(_) => fuse().or(self.workspace.server.clone().err()),
                Target::Qsd => fuse().or_else(|| host::missing("qemu-storage-daemon")),
            })
    }

    fn run_case(&self, group: &Group, target: &Target, repetition: u32) -> Outcome {
        if let Some(reason) = self.unavailable(&group.workload, target) {
            return Outcome::Unavailable(reason);
        }
        let stem = run_stem(group, target, &format!("rep{}", repetition + 1));
        match self.measure(&group.workload, target, &stem, None, None) {
            Ok((measurement, server, _log)) => Outcome::Measured {
                measurement,
                server,
            },
            Err(reason) => Outcome::Failed(reason),
        }
    }

    /// Starts the target, sets the workload up, runs it, takes it down and
    /// stops the target; returns the server's log too. `binary` overrides
    /// the fuse-export binary (the alloc-count build); with `perf_data`,
    /// perf records every CPU into it while the workload runs.
    fn measure(
        &self,
        workload: &Workload,
        target: &Target,
        stem: &str,
        binary: Option<&Path>,
        perf_data: Option<&Path>,
    ) -> Result<(Measurement, Option<ServerUsage>, String), String> {
        let ws = self.workspace;
        let client = ClientFiles {
            source: ws.source.clone(),
            fio_report: ws.logs.join(format!("{stem}.fio.json")),
            log: ws.logs.join(format!("{stem}.client.log")),
            ext4_dir: ws.ext4_dir.clone(),
        };
        let (name, command, owns_mountpoint) = match target {
            Target::Plain => {
                let prepared = workload::prepare(workload, &ws.image, ws.image_size, client)?;
                host::drop_caches(&ws.image)?;
                return Ok((prepared.run()?, None, String::new()));
            }
            Target::FuseExport(options) => {
                let binary = match binary {
                    Some(binary) => binary,
                    None => ws.server.as_deref().map_err(Clone::clone)?,
                };
                let command =
                    target::fuse_export_command(binary, &ws.image, &ws.mountpoint, options);
                ("fuse-export", command, false)
            }
            Target::Qsd => {
                let command = target::qsd_command(&ws.image, &ws.mountpoint);
                ("qemu-storage-daemon", command, true)
            }
        };
        let log = ws.logs.join(format!("{stem}.server.log"));
        let server = ServerProcess::start(
            name,
            command,
            &ws.mountpoint,
            ws.image_size,
            &log,
            owns_mountpoint,
        )?;
        let pid = server.pid();
        let idle = host::status(pid);
        // Declared after the server, so dropped (unmounted, detached)
        // before it, on errors too.
        let prepared = workload::prepare(workload, &ws.mountpoint, ws.image_size, client)?;
        host::drop_caches(&ws.image)?;
        let perf_log = ws.logs.join(format!("{stem}.perf.log"));
        let recording = perf_data
            .map(|data| Recording::start(data, &perf_log))
            .transpose()?;
        let cpu_before = host::cpu_seconds(pid);
        let (result, samples) = target::sample_during(pid, || prepared.run());
        let cpu_after = host::cpu_seconds(pid);
        recording.map(Recording::stop).transpose()?;
        let peak_rss_kib = host::status(pid).and_then(|s| s.vmhwm).unwrap_or(0);
        drop(prepared);
        let stopped = server.stop();
        let measurement = result?;
        let log = stopped.map_err(|err| format!("server: {err}"))?;
        let (requests, spilled) = target::queue_totals(&log).unzip();
        let usage = ServerUsage {
            cpu_seconds: cpu_after
                .zip(cpu_before)
                .map_or(f64::NAN, |(after, before)| after - before),
            idle_rss_kib: idle.as_ref().and_then(|s| s.vmrss).unwrap_or(0),
            peak_rss_kib,
            idle_threads: idle.map_or(0, |s| s.threads),
            max_threads: samples.max_threads,
            context_switches: samples.context_switches,
            requests,
            spilled,
        };
        Ok((measurement, Some(usage), log))
    }

    /// Runs each allocation probe twice (short, long) on the alloc-count
    /// build.
    pub fn run_alloc_probes(&mut self) -> Vec<AllocRecord> {
        let mut records = Vec::new();
        let (short, long) = self.plan.settings.alloc_probe_secs;
        for (index, probe) in self.plan.alloc_probes.iter().enumerate() {
            if host::interrupted() {
                break;
            }
            let outcome = self.run_alloc_probe(probe, [short, long]);
            let detail = match &outcome {
                Ok(c) => format!(
                    "{} allocations / {} requests, then {} / {}: {} per request in steady state",
                    c.short_allocations,
                    c.short_requests,
                    c.long_allocations,
                    c.long_requests,
                    c.steady_state_per_request()
                        .map_or("n/a".into(), |v| format!("{v:.4}")),
                ),
                Err(reason) => format!("failed: {reason}"),
            };
            self.estimated_done += f64::from(short + long);
            self.progress(2, &format!("{}: {detail}", probe.case_id()));
            records.push(AllocRecord {
                probe: index,
                outcome,
            });
        }
        records
    }

    fn run_alloc_probe(&self, probe: &AllocProbe, secs: [u32; 2]) -> Result<AllocCounts, String> {
        let binary = self
            .workspace
            .alloc_server
            .as_deref()
            .map_err(Clone::clone)?;
        let target = Target::FuseExport(probe.options.clone());
        if let Some(reason) = self.unavailable(&Workload::Fio(probe.job), &target) {
            return Err(reason);
        }
        let run = |secs| {
            let job = Workload::Fio(FioJob {
                runtime_secs: secs,
                ..probe.job
            });
            let stem = format!("{}-{secs}s", probe.case_id()).replace(['/', '[', ']', '='], "_");
            let (_, usage, log) = self.measure(&job, &target, &stem, Some(binary), None)?;
            let allocations = target::allocations(&log)
                .ok_or("the alloc-count build logged no allocation count")?;
            let requests = usage
                .and_then(|u| u.requests)
                .ok_or("the server logged no QueueReport lines")?;
            Ok::<_, String>((allocations, requests))
        };
        let (short_allocations, short_requests) = run(secs[0])?;
        let (long_allocations, long_requests) = run(secs[1])?;
        Ok(AllocCounts {
            short_allocations,
            short_requests,
            long_allocations,
            long_requests,
        })
    }
}

/// Log file names of one run: `group-workload-target-suffix`, with the
/// characters of ids that are awkward in file names replaced.
fn run_stem(group: &Group, target: &Target, suffix: &str) -> String {
    let (name, workload) = (&group.name, group.workload.id());
    format!("{name}-{workload}-{}-{suffix}", target.label())
        .replace(['/', '[', ']', '=', ',', '+'], "_")
}

fn describe_measurement(
    measurement: &Measurement,
    server: Option<&ServerUsage>,
    ratio: Option<f64>,
) -> String {
    let mib_per_sec = measurement.mib_per_sec();
    let mut parts = vec![match measurement.iops {
        Some(iops) => format!("{} IOPS, {mib_per_sec:.0} MiB/s", compact(iops)),
        None => format!("{:.2} s, {mib_per_sec:.0} MiB/s", measurement.seconds),
    }];
    parts.extend(ratio.map(|ratio| format!("{ratio:.2}× plain")));
    parts.extend(measurement.lat_p99_us.map(|p99| format!("p99 {p99:.0} µs")));
    if let Some(server) = server {
        if let Some(us) = server.cpu_us_per_io(measurement) {
            parts.push(format!("cpu {us:.1} µs/io"));
            if let Some(switches) = server.context_switches_per_io(measurement) {
                parts.push(format!("{switches:.2} cs/io"));
            }
        } else if let Some(ms) = server.cpu_ms_per_gib(measurement) {
            parts.push(format!("cpu {ms:.0} ms/GiB"));
        }
        let (idle, peak) = (server.idle_rss_kib as f64, server.peak_rss_kib as f64);
        parts.push(format!("rss {:.1}/{:.1} MiB", idle / 1024.0, peak / 1024.0));
        parts.push(format!("threads {}", server.max_threads));
    }
    parts.join(", ")
}
