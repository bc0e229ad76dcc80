//! What a lab run produced, before it is turned into files.

use super::plan::{Group, Plan, Target};
use super::stats::Summary;
use super::workload::Measurement;

/// The export server's cost during one run.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerUsage {
    /// utime + stime of the whole server process during the workload.
    pub cpu_seconds: f64,
    /// VmRSS after mounting, before the workload.
    pub idle_rss_kib: u64,
    /// VmHWM at the end of the workload (the process is fresh per run).
    pub peak_rss_kib: u64,
    pub idle_threads: u64,
    /// Most threads seen while the workload ran (io_uring workers included).
    pub max_threads: u64,
    /// FUSE requests the server read (fuse-export's `QueueReport` lines).
    pub requests: Option<u64>,
    /// WRITE requests that used a spill-over tier.
    pub spilled: Option<u64>,
}

impl ServerUsage {
    /// CPU milliseconds per GiB moved.
    pub fn cpu_ms_per_gib(&self, measurement: &Measurement) -> Option<f64> {
        (measurement.bytes > 0)
            .then(|| self.cpu_seconds * 1000.0 / (measurement.bytes as f64 / (1u64 << 30) as f64))
    }

    /// CPU microseconds per client I/O (fio only).
    pub fn cpu_us_per_io(&self, measurement: &Measurement) -> Option<f64> {
        measurement
            .ios
            .filter(|&ios| ios > 0)
            .map(|ios| self.cpu_seconds * 1e6 / ios as f64)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Measured {
        measurement: Measurement,
        /// `None` for the plain file (no server).
        server: Option<ServerUsage>,
    },
    /// The run started and went wrong.
    Failed(String),
    /// The run could not start (tool or binary missing).
    Unavailable(String),
}

impl Outcome {
    pub fn measurement(&self) -> Option<&Measurement> {
        match self {
            Outcome::Measured { measurement, .. } => Some(measurement),
            _ => None,
        }
    }

    pub fn server(&self) -> Option<&ServerUsage> {
        match self {
            Outcome::Measured { server, .. } => server.as_ref(),
            _ => None,
        }
    }

    /// Why there is no measurement.
    pub fn problem(&self) -> Option<String> {
        match self {
            Outcome::Measured { .. } => None,
            Outcome::Failed(reason) => Some(format!("failed: {reason}")),
            Outcome::Unavailable(reason) => Some(format!("not run: {reason}")),
        }
    }
}

/// One workload run on one target in one repetition.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub group: usize,
    pub target: usize,
    pub repetition: u32,
    pub outcome: Outcome,
}

impl RunRecord {
    /// This record's primary metric ÷ `baseline`'s, if both were measured.
    pub fn ratio_to(&self, baseline: &RunRecord, group: &Group) -> Option<f64> {
        let metric = group.workload.metric();
        let value = self.outcome.measurement()?.value(metric)?;
        let base = baseline.outcome.measurement()?.value(metric)?;
        (base > 0.0).then(|| value / base)
    }
}

/// Allocation counts of the short and the long run of one probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AllocCounts {
    pub short_allocations: u64,
    pub short_requests: u64,
    pub long_allocations: u64,
    pub long_requests: u64,
}

impl AllocCounts {
    /// Allocations per extra request between the short and the long run:
    /// start-up, INIT and pool warm-up are the same in both and cancel.
    pub fn steady_state_per_request(&self) -> Option<f64> {
        let extra_requests = self.long_requests.checked_sub(self.short_requests)?;
        if extra_requests == 0 {
            return None;
        }
        let extra_allocations = self.long_allocations as f64 - self.short_allocations as f64;
        Some(extra_allocations.max(0.0) / extra_requests as f64)
    }

    /// All allocations of the long run (start-up included) per request.
    pub fn total_per_request(&self) -> Option<f64> {
        (self.long_requests > 0).then(|| self.long_allocations as f64 / self.long_requests as f64)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AllocRecord {
    pub probe: usize,
    pub outcome: Result<AllocCounts, String>,
}

/// Facts about the run the report states.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub started: String,
    pub host: String,
    pub versions: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub interrupted: bool,
    pub elapsed_secs: f64,
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct LabResults {
    pub plan: Plan,
    pub records: Vec<RunRecord>,
    pub allocs: Vec<AllocRecord>,
    pub context: RunContext,
}

/// Median and spread of one target in one group.
#[derive(Debug, Clone, Default)]
pub struct CaseSummary {
    pub metric: Option<Summary>,
    /// Per repetition target ÷ plain of the primary metric.
    pub ratio: Option<Summary>,
    pub lat_p50_us: Option<Summary>,
    pub lat_p99_us: Option<Summary>,
    pub cpu_ms_per_gib: Option<Summary>,
    pub cpu_us_per_io: Option<Summary>,
    pub idle_rss_kib: Option<Summary>,
    pub peak_rss_kib: Option<Summary>,
    pub idle_threads: Option<Summary>,
    pub max_threads: Option<Summary>,
    /// Distinct reasons for runs without a measurement.
    pub problems: Vec<String>,
}

impl LabResults {
    pub fn records_of(&self, group: usize, target: usize) -> impl Iterator<Item = &RunRecord> {
        self.records
            .iter()
            .filter(move |r| r.group == group && r.target == target)
    }

    /// target ÷ plain of the primary metric for one record, if both measured.
    pub fn ratio(&self, record: &RunRecord) -> Option<f64> {
        let group = &self.plan.groups[record.group];
        let plain = group.targets.iter().position(|t| *t == Target::Plain)?;
        let baseline = self
            .records_of(record.group, plain)
            .find(|r| r.repetition == record.repetition)?;
        record.ratio_to(baseline, group)
    }

    pub fn summarize(&self, group: usize, target: usize) -> CaseSummary {
        let metric = self.plan.groups[group].workload.metric();
        let records: Vec<&RunRecord> = self.records_of(group, target).collect();
        let measured: Vec<(&Measurement, Option<&ServerUsage>)> = records
            .iter()
            .filter_map(|r| r.outcome.measurement().map(|m| (m, r.outcome.server())))
            .collect();
        let of = |f: &dyn Fn(&Measurement, Option<&ServerUsage>) -> Option<f64>| {
            Summary::of(measured.iter().filter_map(|(m, s)| f(m, *s)))
        };
        let mut problems: Vec<String> = Vec::new();
        for record in &records {
            if let Some(problem) = record.outcome.problem()
                && !problems.contains(&problem)
            {
                problems.push(problem);
            }
        }
        CaseSummary {
            metric: of(&|m, _| m.value(metric)),
            ratio: Summary::of(records.iter().filter_map(|r| self.ratio(r))),
            lat_p50_us: of(&|m, _| m.lat_p50_us),
            lat_p99_us: of(&|m, _| m.lat_p99_us),
            cpu_ms_per_gib: of(&|m, s| s?.cpu_ms_per_gib(m)),
            cpu_us_per_io: of(&|m, s| s?.cpu_us_per_io(m)),
            idle_rss_kib: of(&|_, s| s.map(|s| s.idle_rss_kib as f64)),
            peak_rss_kib: of(&|_, s| s.map(|s| s.peak_rss_kib as f64)),
            idle_threads: of(&|_, s| s.map(|s| s.idle_threads as f64)),
            max_threads: of(&|_, s| s.map(|s| s.max_threads as f64)),
            problems,
        }
    }

    /// Index of the first group named `name` running `workload_id`.
    pub fn find_group(&self, name: &str, workload_id: &str) -> Option<(usize, &Group)> {
        self.plan
            .groups
            .iter()
            .enumerate()
            .find(|(_, g)| g.name == name && g.workload.id() == workload_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_state_allocations_cancel_start_up() {
        let counts = AllocCounts {
            short_allocations: 1000,
            short_requests: 10_000,
            long_allocations: 1000,
            long_requests: 30_000,
        };
        assert_eq!(counts.steady_state_per_request(), Some(0.0));
        assert_eq!(counts.total_per_request(), Some(1000.0 / 30_000.0));
        let growing = AllocCounts {
            long_allocations: 21_000,
            ..counts
        };
        assert_eq!(growing.steady_state_per_request(), Some(1.0));
        let no_extra = AllocCounts {
            long_requests: 10_000,
            ..counts
        };
        assert_eq!(no_extra.steady_state_per_request(), None);
    }
}
