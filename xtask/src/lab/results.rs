//! What a lab run produced, before it is turned into files.
//!
//! These machines are noisy, so every number the lab reports is the median
//! of its repetitions, with the minimum and maximum as the spread.

use super::plan::{Group, Plan, Target};
use super::profile::Profile;
use super::workload::Measurement;

/// Median, minimum and maximum of a non-empty sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Summary {
    /// `None` for an empty sample; NaN values are ignored.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Summary> {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let (count, half) = (sorted.len(), sorted.len() / 2);
        let median = if count % 2 == 1 {
            sorted[half]
        } else {
            (sorted[half - 1] + sorted[half]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[count - 1],
            count,
        })
    }

    /// Whether there is a spread to show (more than one repetition).
    pub fn has_spread(&self) -> bool {
        self.count > 1
    }
}

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
    /// Context switches of all its threads during the workload (sampled,
    /// see `target::sample_during`).
    pub context_switches: u64,
    /// FUSE requests the server read (fuse-export's `QueueReport` lines).
    pub requests: Option<u64>,
    /// WRITE requests that used a spill-over tier.
    pub spilled: Option<u64>,
}

impl ServerUsage {
    /// CPU milliseconds per GiB moved.
    pub fn cpu_ms_per_gib(&self, measurement: &Measurement) -> Option<f64> {
        let gib = measurement.bytes as f64 / (1u64 << 30) as f64;
        (measurement.bytes > 0).then(|| self.cpu_seconds * 1000.0 / gib)
    }

    /// CPU microseconds per client I/O (fio only).
    pub fn cpu_us_per_io(&self, measurement: &Measurement) -> Option<f64> {
        let ios = measurement.ios.filter(|&ios| ios > 0)?;
        Some(self.cpu_seconds * 1e6 / ios as f64)
    }

    /// Server context switches per client I/O (fio only): how often the
    /// server slept and woke for each request.
    pub fn context_switches_per_io(&self, measurement: &Measurement) -> Option<f64> {
        let ios = measurement.ios.filter(|&ios| ios > 0)?;
        Some(self.context_switches as f64 / ios as f64)
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

/// `record`'s primary metric ÷ that of plain in the same repetition, found
/// among `records`, if both were measured.
pub fn ratio_to_plain(records: &[RunRecord], record: &RunRecord, group: &Group) -> Option<f64> {
    let plain = group.targets.iter().position(|t| *t == Target::Plain)?;
    let baseline = records
        .iter()
        .find(|r| (r.group, r.target, r.repetition) == (record.group, plain, record.repetition))?;
    let metric = group.workload.metric();
    let value = record.outcome.measurement()?.value(metric)?;
    let base = baseline.outcome.measurement()?.value(metric)?;
    (base > 0.0).then(|| value / base)
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
        let extra_allocations = self.long_allocations as f64 - self.short_allocations as f64;
        (extra_requests > 0).then(|| extra_allocations.max(0.0) / extra_requests as f64)
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

/// The `--profile` run of one server target of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRecord {
    pub group: usize,
    pub target: usize,
    /// The profile and what the workload measured under perf (perf costs
    /// some speed, so this run is not among the repetitions).
    pub outcome: Result<(Profile, Measurement), String>,
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
    pub profiles: Vec<ProfileRecord>,
    pub context: RunContext,
}

impl LabResults {
    /// target ÷ plain of the primary metric for one record, if both measured.
    pub fn ratio(&self, record: &RunRecord) -> Option<f64> {
        ratio_to_plain(&self.records, record, &self.plan.groups[record.group])
    }

    /// The runs of target `target` in group `group`.
    pub fn case(&self, group: usize, target: usize) -> Case<'_> {
        let records = self.records.iter();
        let records = records
            .filter(|r| (r.group, r.target) == (group, target))
            .collect();
        Case {
            results: self,
            group,
            records,
        }
    }

    /// The runs of the target labelled `label` in group `group`, if the
    /// group has it.
    pub fn case_labelled(&self, group: usize, label: &str) -> Option<Case<'_>> {
        let targets = &self.plan.groups[group].targets;
        Some(self.case(group, targets.iter().position(|t| t.label() == label)?))
    }

    /// Index of the first group named `name` running `workload_id`.
    pub fn find_group(&self, name: &str, workload_id: &str) -> Option<usize> {
        let mut groups = self.plan.groups.iter();
        groups.position(|g| g.name == name && g.workload.id() == workload_id)
    }
}

/// The repetitions of one target in one group.
#[derive(Debug)]
pub struct Case<'a> {
    results: &'a LabResults,
    group: usize,
    records: Vec<&'a RunRecord>,
}

impl Case<'_> {
    /// Median and spread of `value` over the measured runs.
    pub fn summary(
        &self,
        value: impl Fn(&Measurement, Option<&ServerUsage>) -> Option<f64>,
    ) -> Option<Summary> {
        let outcomes = self.records.iter().map(|r| &r.outcome);
        Summary::of(outcomes.filter_map(|o| value(o.measurement()?, o.server())))
    }

    /// The primary metric.
    pub fn metric(&self) -> Option<Summary> {
        let metric = self.results.plan.groups[self.group].workload.metric();
        self.summary(|m, _| m.value(metric))
    }

    /// Per repetition target ÷ plain of the primary metric.
    pub fn ratio(&self) -> Option<Summary> {
        Summary::of(self.records.iter().filter_map(|r| self.results.ratio(r)))
    }

    /// A server figure, for runs with a server.
    pub fn server(&self, value: impl Fn(&ServerUsage) -> f64) -> Option<Summary> {
        self.summary(|_, server| server.map(&value))
    }

    /// Distinct reasons for runs without a measurement.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = Vec::new();
        for problem in self.records.iter().filter_map(|r| r.outcome.problem()) {
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        let odd = Summary::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            (odd.median, odd.min, odd.max, odd.count),
            (2.0, 1.0, 3.0, 3)
        );
        let even = Summary::of([4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Summary::of([]).is_none());
        assert!(Summary::of([f64::NAN]).is_none());
        assert!(!Summary::of([1.0]).unwrap().has_spread());
    }

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
