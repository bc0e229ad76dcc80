//! results.csv, allocations.csv, summary.md and the SVG plots.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::plan::size_long;
use super::plan::{AllocProbe, Duration, KNOBS, Metric, ServerOptions, TRANSPORT, Workload};
use super::plot;
use super::profile::{Role, TOP_LINES};
use super::results::{AllocCounts, Case, LabResults, Outcome, ProfileRecord, ServerUsage, Summary};

/// `950`, `52.1k`, `1.23M`: IOPS in progress lines, tables and plots.
pub fn compact(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else if value >= 1e3 {
        format!("{:.2}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// A number in the metric's precision.
fn format_value(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Seconds => format!("{value:.2}"),
        Metric::MibPerSec => format!("{value:.0}"),
        Metric::Iops => compact(value),
    }
}

/// ` (min–max)` when there are several repetitions, each number written by
/// `format`.
fn spread(summary: &Summary, format: impl Fn(f64) -> String) -> String {
    if summary.has_spread() {
        format!(" ({}–{})", format(summary.min), format(summary.max))
    } else {
        String::new()
    }
}

fn two_decimals(value: f64) -> String {
    format!("{value:.2}")
}

fn ratio_text(ratio: &Summary) -> String {
    format!("{:.2}×{}", ratio.median, spread(ratio, two_decimals))
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// A table cell for a target: ratio with spread, then the absolute value;
/// or the reason there is no number.
fn ratio_cell(metric: Metric, case: &Case, is_plain: bool) -> String {
    let Some(value) = case.metric() else {
        return problem_text(case);
    };
    let absolute = format!("{} {}", format_value(metric, value.median), metric.unit());
    if is_plain {
        return absolute + &spread(&value, |v| format_value(metric, v));
    }
    match case.ratio() {
        Some(ratio) => format!(
            "**{:.2}×**{} · {absolute}",
            ratio.median,
            spread(&ratio, two_decimals)
        ),
        None => format!("{absolute} (no plain baseline to compare)"),
    }
}

fn problem_text(case: &Case) -> String {
    let problems = case.problems();
    if problems.is_empty() {
        "—".into()
    } else {
        problems.join("; ")
    }
}

/// Appends a Markdown table; `|` inside a cell would end it, so it becomes
/// `/`.
fn table(md: &mut String, header: Vec<String>, rows: impl IntoIterator<Item = Vec<String>>) {
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "/")).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    md.push_str(&line(&header));
    md.push_str(&format!("|{}\n", " --- |".repeat(header.len())));
    for row in rows {
        md.push_str(&line(&row));
    }
}

/// Appends a table with a row per group of `groups`, headed by `head`, and
/// a column per label, where `cell` writes the label's case and `missing`
/// stands for a label the group lacks.
fn grid(
    md: &mut String,
    results: &LabResults,
    groups: &[usize],
    labels: &[String],
    head: impl Fn(&Workload) -> String,
    cell: impl Fn(&Workload, &Case, &str) -> String,
    missing: &str,
) {
    let header = [vec!["workload".to_string()], labels.to_vec()].concat();
    let rows = groups.iter().map(|&index| {
        let workload = &results.plan.groups[index].workload;
        let cells = labels
            .iter()
            .map(|label| match results.case_labelled(index, label) {
                Some(case) => cell(workload, &case, label),
                None => missing.to_string(),
            });
        std::iter::once(head(workload)).chain(cells).collect()
    });
    table(md, header, rows);
}

/// Writes every output file into `dir`; returns their paths.
pub fn write_all(results: &LabResults, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let mut write = |name: &str, contents: String| -> Result<(), String> {
        let path = dir.join(name);
        fs::write(&path, contents)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        written.push(path);
        Ok(())
    };
    write("results.csv", results_csv(results)?)?;
    write("allocations.csv", allocations_csv(results)?)?;
    let plots = plot::plots(results);
    for plot in &plots {
        write(&plot.file, plot::render(plot)?)?;
    }
    write("summary.md", summary_markdown(results, &plots))?;
    Ok(written)
}

/// Three decimals are plenty and keep the file readable; NaN is no number.
fn rounded(value: Option<f64>) -> Option<f64> {
    let finite = value.filter(|v| v.is_finite());
    finite.map(|v| (v * 1000.0).round() / 1000.0)
}

/// One row of results.csv; the field names are its header.
#[derive(Serialize)]
struct ResultRow<'a> {
    group: &'a str,
    workload: String,
    target: String,
    repetition: u32,
    status: &'static str,
    problem: &'a str,
    metric: &'static str,
    value: Option<f64>,
    ratio_to_plain: Option<f64>,
    seconds: Option<f64>,
    bytes: Option<u64>,
    ios: Option<u64>,
    mib_per_s: Option<f64>,
    iops: Option<f64>,
    lat_p50_us: Option<f64>,
    lat_p99_us: Option<f64>,
    server_cpu_s: Option<f64>,
    cpu_ms_per_gib: Option<f64>,
    cpu_us_per_io: Option<f64>,
    idle_rss_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
    idle_threads: Option<u64>,
    max_threads: Option<u64>,
    server_context_switches: Option<u64>,
    context_switches_per_io: Option<f64>,
    fuse_requests: Option<u64>,
    spilled_writes: Option<u64>,
}

/// One row of allocations.csv.
#[derive(Serialize)]
struct AllocationRow<'a> {
    workload: String,
    status: &'static str,
    problem: &'a str,
    short_allocations: Option<u64>,
    short_requests: Option<u64>,
    long_allocations: Option<u64>,
    long_requests: Option<u64>,
    steady_state_per_request: Option<f64>,
    total_per_request: Option<f64>,
}

fn csv_text<T: Serialize>(rows: impl IntoIterator<Item = T>) -> Result<String, String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer
            .serialize(row)
            .map_err(|err| format!("cannot write CSV: {err}"))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|err| format!("cannot write CSV: {err}"))?;
    String::from_utf8(bytes).map_err(|err| format!("CSV is not UTF-8: {err}"))
}

/// One row per run.
pub fn results_csv(results: &LabResults) -> Result<String, String> {
    csv_text(results.records.iter().map(|record| {
        let group = &results.plan.groups[record.group];
        let metric = group.workload.metric();
        let (status, problem) = match &record.outcome {
            Outcome::Measured { .. } => ("ok", ""),
            Outcome::Failed(reason) => ("failed", reason.as_str()),
            Outcome::Unavailable(reason) => ("unavailable", reason.as_str()),
        };
        let m = record.outcome.measurement();
        let s = record.outcome.server();
        ResultRow {
            group: &group.name,
            workload: group.workload.id(),
            target: group.targets[record.target].label(),
            repetition: record.repetition + 1,
            status,
            problem,
            metric: metric.unit(),
            value: rounded(m.and_then(|m| m.value(metric))),
            ratio_to_plain: rounded(results.ratio(record)),
            seconds: rounded(m.map(|m| m.seconds)),
            bytes: m.map(|m| m.bytes),
            ios: m.and_then(|m| m.ios),
            mib_per_s: rounded(m.map(|m| m.mib_per_sec())),
            iops: rounded(m.and_then(|m| m.iops)),
            lat_p50_us: rounded(m.and_then(|m| m.lat_p50_us)),
            lat_p99_us: rounded(m.and_then(|m| m.lat_p99_us)),
            server_cpu_s: rounded(s.map(|s| s.cpu_seconds)),
            cpu_ms_per_gib: rounded(m.zip(s).and_then(|(m, s)| s.cpu_ms_per_gib(m))),
            cpu_us_per_io: rounded(m.zip(s).and_then(|(m, s)| s.cpu_us_per_io(m))),
            idle_rss_kib: s.map(|s| s.idle_rss_kib),
            peak_rss_kib: s.map(|s| s.peak_rss_kib),
            idle_threads: s.map(|s| s.idle_threads),
            max_threads: s.map(|s| s.max_threads),
            server_context_switches: s.map(|s| s.context_switches),
            context_switches_per_io: rounded(
                m.zip(s).and_then(|(m, s)| s.context_switches_per_io(m)),
            ),
            fuse_requests: s.and_then(|s| s.requests),
            spilled_writes: s.and_then(|s| s.spilled),
        }
    }))
}

/// `fio-…` for a probe on the lab's default options, else `fio-… on
/// fuse-export[…]`.
fn probe_name(probe: &AllocProbe) -> String {
    let id = Workload::Fio(probe.job).id();
    if probe.options == ServerOptions::default() {
        id
    } else {
        format!("{id} on {}", probe.options.label())
    }
}

/// One row per allocation probe.
pub fn allocations_csv(results: &LabResults) -> Result<String, String> {
    csv_text(results.allocs.iter().map(|record| {
        let counts = record.outcome.as_ref().ok();
        AllocationRow {
            workload: probe_name(&results.plan.alloc_probes[record.probe]),
            status: if counts.is_some() { "ok" } else { "failed" },
            problem: record.outcome.as_ref().err().map_or("", String::as_str),
            short_allocations: counts.map(|c| c.short_allocations),
            short_requests: counts.map(|c| c.short_requests),
            long_allocations: counts.map(|c| c.long_allocations),
            long_requests: counts.map(|c| c.long_requests),
            steady_state_per_request: rounded(counts.and_then(|c| c.steady_state_per_request())),
            total_per_request: rounded(counts.and_then(|c| c.total_per_request())),
        }
    }))
}

/// Indexes of the groups named `name`.
fn groups_named(results: &LabResults, name: &str) -> Vec<usize> {
    let groups = results.plan.groups.iter().enumerate();
    groups
        .filter(|(_, g)| g.name == name)
        .map(|(i, _)| i)
        .collect()
}

/// Labels of the targets of `groups` in plan order (`plain` first), each
/// once: `--only` may have left a group with fewer targets than others.
fn labels_of(results: &LabResults, groups: &[usize]) -> Vec<String> {
    let mut labels = vec!["plain".to_string()];
    for &index in groups {
        for label in results.plan.groups[index].targets.iter().map(|t| t.label()) {
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
    }
    labels
}

/// One goal's row: a cell and (for fuse-export columns) whether it is met,
/// per column, then the status; `why_not` says why a goal has no verdict.
fn goal_row(
    goal: &str,
    columns: &[String],
    why_not: &str,
    cell: impl Fn(&str) -> (String, Option<bool>),
) -> Vec<String> {
    let status = |met: Option<bool>| match met {
        Some(true) => "met".to_string(),
        Some(false) => "**not met**".to_string(),
        None => format!("not measured: {why_not}"),
    };
    let mut row = vec![goal.to_string()];
    let mut verdicts = Vec::new();
    for label in columns {
        let (text, met) = cell(label);
        row.push(text);
        if label.starts_with("fuse-export") {
            verdicts.push((label, met));
        }
    }
    row.push(match verdicts.as_slice() {
        [] => status(None),
        [(_, met)] => status(*met),
        several => several
            .iter()
            .map(|(label, met)| format!("{label}: {}", status(*met)))
            .collect::<Vec<_>>()
            .join("; "),
    });
    row
}

/// A goal on the ratio to plain of a matrix workload, judged on the
/// summary of its repetitions (median, or the worst one where the goal says
/// "every repetition").
fn ratio_goal(
    results: &LabResults,
    columns: &[String],
    workload_id: &str,
    goal: &str,
    met: impl Fn(&Summary) -> bool,
) -> Vec<String> {
    let Some(index) = results.find_group("matrix", workload_id) else {
        let why_not = "not in this plan (filtered or --quick)";
        return goal_row(goal, columns, why_not, |_| ("—".into(), None));
    };
    goal_row(goal, columns, "no ratio (see below)", |label| {
        let Some(case) = results.case_labelled(index, label) else {
            return ("not in plan".into(), None);
        };
        match case.ratio() {
            Some(ratio) => (ratio_text(&ratio), Some(met(&ratio))),
            None => (problem_text(&case), None),
        }
    })
}

/// The 4k random workloads on which fuse-export must be ahead of qsd.
const AHEAD_OF_QSD_DEPTHS: [u32; 4] = [1, 4, 16, 32];

/// "Ahead of qsd at QD1, 4, 16 and 32": per column, the median ratio of
/// each 4k random io_uring workload against qsd's median ratio.
fn ahead_of_qsd_goal(results: &LabResults, columns: &[String]) -> Vec<String> {
    let goal = "4k randread and randwrite: ahead of qsd at QD1, 4, 16 and 32 (medians)";
    let workloads: Vec<(String, usize)> = ["randread", "randwrite"]
        .iter()
        .flat_map(|rw| AHEAD_OF_QSD_DEPTHS.map(|qd| format!("fio-{rw}-4k-qd{qd}-io_uring")))
        .filter_map(|id| Some((id.clone(), results.find_group("matrix", &id)?)))
        .collect();
    let median =
        |index: usize, label: &str| Some(results.case_labelled(index, label)?.ratio()?.median);
    goal_row(goal, columns, "no workload with both ratios", |label| {
        if !label.starts_with("fuse-export") {
            return ("—".into(), None);
        }
        let compared: Vec<(&str, f64, f64)> = workloads
            .iter()
            .filter_map(|(id, index)| {
                Some((id.as_str(), median(*index, label)?, median(*index, "qsd")?))
            })
            .collect();
        if compared.is_empty() {
            return ("—".into(), None);
        }
        let behind: Vec<String> = compared
            .iter()
            .filter(|(_, ours, qsd)| ours <= qsd)
            .map(|(id, ours, qsd)| format!("{id} {ours:.2}× vs {qsd:.2}×"))
            .collect();
        let ahead = compared.len() - behind.len();
        let mut text = format!("ahead in {ahead} of {}", compared.len());
        if !behind.is_empty() {
            let _ = write!(text, "; behind: {}", behind.join(", "));
        }
        (text, Some(behind.is_empty()))
    })
}

/// How FUSE-over-io_uring compares with readv on one matrix workload
/// (`--transport auto` may pick uring only where it is never behind).
struct UringAgainstReadv {
    workload: String,
    readv: Summary,
    uring: Summary,
    /// The workload is judged by time.
    lower_is_better: bool,
}

impl UringAgainstReadv {
    /// uring's median is worse than readv's (lower ratio; higher for time).
    fn behind(&self) -> bool {
        if self.lower_is_better {
            self.uring.median > self.readv.median
        } else {
            self.uring.median < self.readv.median
        }
    }

    /// Behind in every repetition: uring's best is worse than readv's worst.
    fn clearly_behind(&self) -> bool {
        if self.lower_is_better {
            self.uring.min > self.readv.max
        } else {
            self.uring.max < self.readv.min
        }
    }
}

/// The labels of the plain readv and uring variants, when the run has both.
fn transport_labels(columns: &[String]) -> Option<(String, String)> {
    let label = |transport| ServerOptions::default().with(TRANSPORT, transport).label();
    let (readv, uring) = (label("readv"), label("uring"));
    (columns.contains(&readv) && columns.contains(&uring)).then_some((readv, uring))
}

/// Every matrix workload measured on both transports.
fn uring_against_readv(results: &LabResults, columns: &[String]) -> Vec<UringAgainstReadv> {
    let Some((readv, uring)) = transport_labels(columns) else {
        return Vec::new();
    };
    groups_named(results, "matrix")
        .into_iter()
        .filter_map(|index| {
            let workload = &results.plan.groups[index].workload;
            let ratio = |label: &str| results.case_labelled(index, label)?.ratio();
            Some(UringAgainstReadv {
                workload: workload.id(),
                readv: ratio(&readv)?,
                uring: ratio(&uring)?,
                lower_is_better: workload.metric() == Metric::Seconds,
            })
        })
        .collect()
}

/// "No workload slower with auto than with readv", where the run has both.
fn auto_goal(results: &LabResults, columns: &[String]) -> Vec<String> {
    let goal = "uring no slower than readv in any workload (for `auto` to pick it)";
    let compared = uring_against_readv(results, columns);
    let mut row = vec![goal.to_string()];
    let Some((_, uring)) = transport_labels(columns) else {
        row.extend(columns.iter().map(|_| "—".to_string()));
        row.push("not measured: needs `--transport readv,uring`".into());
        return row;
    };
    let behind = compared.iter().filter(|c| c.behind()).count();
    let clearly = compared.iter().filter(|c| c.clearly_behind()).count();
    for label in columns {
        row.push(if *label == uring {
            format!(
                "behind readv in {behind} of {} medians, {clearly} in every repetition",
                compared.len()
            )
        } else {
            "—".into()
        });
    }
    row.push(match (compared.len(), clearly, behind) {
        (0, _, _) => "not measured: no workload ran on both".into(),
        (_, 0, 0) => "met".into(),
        (_, 0, _) => "met within the spread (see uring against readv)".into(),
        _ => "**not met** (see uring against readv)".into(),
    });
    row
}

fn goal_rows(results: &LabResults, columns: &[String]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for rw in ["randread", "randwrite"] {
        let id = format!("fio-{rw}-4k-qd1-io_uring");
        let goal = format!("4k {rw} QD1 ≥ 0.80× plain IOPS in every repetition");
        rows.push(ratio_goal(results, columns, &id, &goal, |r| r.min >= 0.80));
    }
    for rw in ["randread", "randwrite"] {
        let id = format!("fio-{rw}-4k-qd32-io_uring");
        let goal = format!("4k {rw} QD32 ≥ 0.90× plain IOPS");
        rows.push(ratio_goal(results, columns, &id, &goal, |r| {
            r.median >= 0.90
        }));
    }
    rows.push(ahead_of_qsd_goal(results, columns));
    let goal = "qemu-img convert -n -t none ≤ 1.3× plain time";
    rows.push(ratio_goal(results, columns, "convert-direct", goal, |r| {
        r.median <= 1.3
    }));
    for (id, goal) in [
        ("dd-read-1M", "1M sequential read, QD1 (dd) ≥ 0.95× plain"),
        ("dd-write-1M", "1M sequential write, QD1 (dd) ≥ 0.95× plain"),
        (
            "fio-read-1M-qd16-io_uring",
            "1M sequential read, QD16 (fio) ≥ 0.95× plain",
        ),
        (
            "fio-write-1M-qd16-io_uring",
            "1M sequential write, QD16 (fio) ≥ 0.95× plain",
        ),
    ] {
        rows.push(ratio_goal(results, columns, id, goal, |r| r.median >= 0.95));
    }
    rows.push(auto_goal(results, columns));

    // Idle RSS over every matrix run of each target.
    let goal = "idle RSS ≤ 8 MiB with 2 queues";
    rows.push(goal_row(goal, columns, "no fuse-export run", |label| {
        let idle = Summary::of(results.records.iter().filter_map(|r| {
            let group = &results.plan.groups[r.group];
            let wanted = group.name == "matrix" && group.targets[r.target].label() == label;
            wanted.then(|| r.outcome.server().map(|s| s.idle_rss_kib as f64))?
        }));
        let Some(idle) = idle else {
            return ("—".into(), None);
        };
        let text = mib(idle.median) + &spread(&idle, |kib| format!("{:.1}", kib / 1024.0));
        (text, Some(idle.median <= 8.0 * 1024.0))
    }));

    // Allocations: every probe must show none in steady state.
    let why_not = results
        .allocs
        .iter()
        .find_map(|r| r.outcome.as_ref().err().cloned())
        .unwrap_or_else(|| "no allocation probe ran".into());
    let goal = "zero allocations per request in steady state";
    rows.push(goal_row(goal, columns, &why_not, |label| {
        let measured: Vec<&AllocCounts> = results
            .allocs
            .iter()
            .filter(|r| results.plan.alloc_probes[r.probe].options.label() == label)
            .filter_map(|r| r.outcome.as_ref().ok())
            .collect();
        let worst = measured
            .iter()
            .filter_map(|c| c.steady_state_per_request())
            .reduce(f64::max);
        let extra = |f: fn(&AllocCounts) -> u64| measured.iter().map(|c| f(c)).sum::<u64>();
        let allocations = extra(|c| c.long_allocations.saturating_sub(c.short_allocations));
        let requests = extra(|c| c.long_requests.saturating_sub(c.short_requests));
        let Some(worst) = worst else {
            return ("—".into(), None);
        };
        let text = format!(
            "worst {worst:.4}/request ({allocations} extra allocations over {requests} \
             extra requests)"
        );
        (text, Some(allocations == 0))
    }));
    rows
}

fn workload_cell(workload: &Workload) -> String {
    format!("`{}` {}", workload.id(), workload.describe())
}

const INTRODUCTION: &str = "\nRatios are target ÷ plain image file for the same workload in the \
    same repetition; median over repetitions, (min–max) when there are several. For convert \
    (seconds) lower is better, everywhere else higher is better. fuse-export runs with \
    `--queues 2` unless a knob says otherwise; qsd = qemu-storage-daemon `--export fuse` \
    (aio=io_uring, cache.direct=on). `ext4-` workloads run fio in a file on a fresh ext4 on a \
    direct-I/O loop device over the target.\n";

const URING_AGAINST_READV: &str = "\n## uring against readv\n\n`--transport auto` serves \
    with readv; it could take FUSE-over-io_uring where the kernel offers it only if no workload \
    were slower with uring than with readv. Each transport's ratio to plain (median, min–max), \
    and uring's median over readv's (for time, above 1 is slower).\n\n";

const SERVER_COST: &str = "\n## Server cost (median per run)\n\nCPU is user+system time of the \
    whole server process (all threads, io_uring workers included) during the workload, per \
    client I/O for fio and per GiB otherwise; for fio also the server's context switches \
    per client I/O (cs/io: how often its threads slept and woke, summed over threads \
    sampled every 50 ms); RSS is VmHWM of a server started fresh for the \
    run; threads is the most seen while it ran.\n\n";

const ALLOCATIONS: &str = "\n## Allocations per request\n\nfuse-export built with `--features \
    alloc-count` (a counting global allocator that logs its count when the stop begins, \
    which is the one used, and at exit: the shutdown's own allocations differ by one or two \
    between runs). Each fio job runs twice in fresh servers, short and long; start-up, INIT \
    and pool warm-up are the same in both runs, so (long − short allocations) ÷ (long − short \
    FUSE requests) is the steady-state cost per request. Requests come from the server's own \
    `QueueReport` counters.\n\n";

const PROFILES: &str = "\n## Profiles\n\nWith `--profile`, each server target ran once more \
    after its repetitions with `perf record -a -g` sampling every CPU (the client, the server \
    and the kernel share them). Shares are of all samples on all CPUs; `swapper` is an idle \
    CPU; thread names have their numbers replaced by N. The full reports, with call chains, \
    are in `profiles/`.\n\nWhere the time went: a case whose CPUs were mostly idle is bound \
    by waiting (wake-ups, the disk, a copy that cannot overlap), not by CPU; the server's \
    largest entries say what its own time went to. Server: fuse-export's queue threads or \
    qemu-storage-daemon; client: fio, dd, qemu-img; the rest (kernel threads, io_uring \
    workers, the lab) is not shown.\n\n";

/// One row per profiled case: the shares of idle, server and client, and
/// the server's largest entries.
fn profiles_overview(md: &mut String, results: &LabResults) {
    let header = [
        "case",
        "ratio to plain",
        "CPUs idle",
        "server",
        "client",
        "server's largest entries",
    ];
    let rows = results.profiles.iter().filter_map(|record| {
        let (profile, _) = record.outcome.as_ref().ok()?;
        let group = &results.plan.groups[record.group];
        let case = results.case(record.group, record.target);
        let largest: Vec<String> = profile
            .symbols_of(Role::Server)
            .into_iter()
            .take(3)
            .map(|(symbol, share)| format!("`{symbol}` {share:.1} %"))
            .collect();
        let percent = |role| format!("{:.0} %", profile.share(role));
        Some(vec![
            format!("`{}`", group.case_id(&group.targets[record.target])),
            case.ratio().map_or("—".into(), |ratio| ratio_text(&ratio)),
            percent(Role::Idle),
            percent(Role::Server),
            percent(Role::Client),
            largest.join(", "),
        ])
    });
    table(md, header.map(String::from).to_vec(), rows);
}

/// One profiled case: who had the CPUs, and the top symbols.
fn profile_section(md: &mut String, results: &LabResults, record: &ProfileRecord) {
    let group = &results.plan.groups[record.group];
    let target = &group.targets[record.target];
    let _ = write!(md, "\n### `{}`\n\n", group.case_id(target));
    let (profile, measurement) = match &record.outcome {
        Ok(outcome) => outcome,
        Err(reason) => {
            let _ = writeln!(md, "Not profiled: {reason}");
            return;
        }
    };
    let metric = group.workload.metric();
    let unprofiled = results
        .case(record.group, record.target)
        .summary(|m, _| m.value(metric));
    if let Some(value) = measurement.value(metric) {
        let _ = write!(
            md,
            "Profiled run: {} {}",
            format_value(metric, value),
            metric.unit()
        );
        if let Some(unprofiled) = unprofiled {
            let median = format_value(metric, unprofiled.median);
            let _ = write!(md, " (without perf: median {median})");
        }
        md.push_str(". ");
    }
    let threads: Vec<String> = profile
        .by_thread()
        .iter()
        .take(6)
        .map(|(kind, share)| format!("{kind} {share:.1} %"))
        .collect();
    let _ = writeln!(
        md,
        "By thread: {}. [Full report]({})\n",
        threads.join(", "),
        profile.report.display()
    );
    let rows = profile.entries.iter().take(TOP_LINES).map(|line| {
        vec![
            format!("{:.1} %", line.percent),
            format!("`{}`", line.command),
            format!("`{}`", line.symbol),
        ]
    });
    table(
        md,
        ["share", "thread", "symbol"].map(String::from).to_vec(),
        rows,
    );
}

pub fn summary_markdown(results: &LabResults, plots: &[plot::Plot]) -> String {
    let plan = &results.plan;
    let settings = &plan.settings;
    let context = &results.context;
    let mut md = format!("# fuse-export performance lab, {}\n\n", context.started);
    if context.interrupted {
        md.push_str("**Interrupted: partial results.**\n\n");
    }
    let _ = writeln!(
        md,
        "- run: {}, {} repetition(s) per case interleaved with the plain file, \
         image {}, fio {} s per run, {} in total",
        if settings.quick { "`--quick`" } else { "full" },
        settings.repetitions,
        size_long(settings.image_size),
        settings.fio_runtime_secs,
        Duration(context.elapsed_secs),
    );
    let _ = writeln!(md, "- host: {}", context.host);
    for (name, version) in &context.versions {
        let _ = writeln!(md, "- {name}: {version}");
    }
    for note in &context.notes {
        let _ = writeln!(md, "- {note}");
    }
    md.push_str(INTRODUCTION);

    let matrix = groups_named(results, "matrix");
    let labels = labels_of(results, &matrix);
    let servers = &labels[1..];
    // The goals' columns: the matrix's servers, and those of allocation
    // probes run without the matrix (`--only alloc`).
    let mut goal_columns = servers.to_vec();
    for probe in &results.plan.alloc_probes {
        let label = probe.options.label();
        if !goal_columns.contains(&label) {
            goal_columns.push(label);
        }
    }
    md.push_str("\n## Goals\n\n");
    let mut header = vec!["goal".to_string()];
    header.extend_from_slice(&goal_columns);
    header.push("status".into());
    table(&mut md, header, goal_rows(results, &goal_columns));

    if !matrix.is_empty() {
        md.push_str("\n## Workloads\n\n");
        let head = |workload: &Workload| match workload.metric() {
            Metric::Seconds => workload_cell(workload) + " (time: lower is better)",
            _ => workload_cell(workload),
        };
        let cell =
            |w: &Workload, case: &Case, label: &str| ratio_cell(w.metric(), case, label == "plain");
        grid(
            &mut md,
            results,
            &matrix,
            &labels,
            head,
            cell,
            "not in plan",
        );

        let compared = uring_against_readv(results, servers);
        if !compared.is_empty() {
            md.push_str(URING_AGAINST_READV);
            let header = [
                "workload",
                "readv",
                "uring",
                "uring ÷ readv (medians)",
                "uring is",
            ];
            let rows = compared.iter().map(|c| {
                let verdict = if c.clearly_behind() {
                    "**behind in every repetition**"
                } else if c.behind() {
                    "behind (spreads overlap)"
                } else {
                    "level or ahead"
                };
                vec![
                    format!("`{}`", c.workload),
                    ratio_text(&c.readv),
                    ratio_text(&c.uring),
                    format!("{:.2}", c.uring.median / c.readv.median),
                    verdict.to_string(),
                ]
            });
            table(&mut md, header.map(String::from).to_vec(), rows);
        }

        md.push_str("\n## Latency (fio completion latency, µs, p50 / p99)\n\n");
        let fio: Vec<usize> = matrix
            .iter()
            .copied()
            .filter(|&index| plan.groups[index].workload.fio_job().is_some())
            .collect();
        let head = |workload: &Workload| format!("`{}`", workload.id());
        let cell = |_: &Workload, case: &Case, _: &str| {
            let p50 = case.summary(|m, _| m.lat_p50_us);
            let p99 = case.summary(|m, _| m.lat_p99_us);
            p50.zip(p99).map_or("—".into(), |(p50, p99)| {
                format!("{:.0} / {:.0}", p50.median, p99.median)
            })
        };
        grid(&mut md, results, &fio, &labels, head, cell, "—");

        md.push_str(SERVER_COST);
        let mut header = vec!["workload".to_string()];
        header.extend(servers.iter().map(|l| format!("{l} CPU")));
        header.extend(servers.iter().map(|l| format!("{l} RSS idle / peak")));
        header.push(format!("threads idle → max, {}", servers.join(" / ")));
        let rows = matrix.iter().map(|&index| {
            let cases: Vec<Option<Case>> = servers
                .iter()
                .map(|label| results.case_labelled(index, label))
                .collect();
            let medians =
                |case: &Option<Case>, a: fn(&ServerUsage) -> f64, b: fn(&ServerUsage) -> f64| {
                    let case = case.as_ref()?;
                    Some((case.server(a)?.median, case.server(b)?.median))
                };
            let mut row = vec![format!("`{}`", plan.groups[index].workload.id())];
            row.extend(cases.iter().map(|case| {
                let per_io = |c: &Case| c.summary(|m, s| s?.cpu_us_per_io(m));
                let per_gib = |c: &Case| c.summary(|m, s| s?.cpu_ms_per_gib(m));
                match (
                    case.as_ref().and_then(per_io),
                    case.as_ref().and_then(per_gib),
                ) {
                    (Some(us), _) => {
                        let switches = case
                            .as_ref()
                            .and_then(|c| c.summary(|m, s| s?.context_switches_per_io(m)));
                        match switches {
                            Some(cs) => format!("{:.1} µs/io, {:.2} cs/io", us.median, cs.median),
                            None => format!("{:.1} µs/io", us.median),
                        }
                    }
                    (None, Some(ms)) => format!("{:.0} ms/GiB", ms.median),
                    _ => "—".into(),
                }
            }));
            row.extend(cases.iter().map(|case| {
                let rss = medians(case, |s| s.idle_rss_kib as f64, |s| s.peak_rss_kib as f64);
                rss.map_or("—".into(), |(idle, peak)| {
                    format!("{} / {}", mib(idle), mib(peak))
                })
            }));
            let threads: Vec<String> = cases
                .iter()
                .map(|case| {
                    let threads =
                        medians(case, |s| s.idle_threads as f64, |s| s.max_threads as f64);
                    threads.map_or("—".into(), |(idle, max)| format!("{idle:.0} → {max:.0}"))
                })
                .collect();
            row.push(threads.join(" / "));
            row
        });
        table(&mut md, header, rows);
    }

    let swept: Vec<_> = KNOBS
        .iter()
        .map(|knob| (knob, groups_named(results, &format!("knob-{}", knob.name))))
        .filter(|(_, groups)| !groups.is_empty())
        .collect();
    if !swept.is_empty() {
        md.push_str(
            "\n## Knobs\n\nEach cell: ratio to plain · absolute value · peak RSS of the server.\n",
        );
    }
    for (knob, groups) in swept {
        let _ = writeln!(md, "\n### {}\n\n{}.\n", knob.name, knob.about);
        let cell = |w: &Workload, case: &Case, label: &str| {
            let mut cell = ratio_cell(w.metric(), case, label == "plain");
            if let Some(rss) = case.server(|s| s.peak_rss_kib as f64) {
                let _ = write!(cell, " · {}", mib(rss.median));
            }
            cell
        };
        let labels = labels_of(results, &groups);
        grid(
            &mut md,
            results,
            &groups,
            &labels,
            workload_cell,
            cell,
            "not in plan",
        );
    }

    if !plan.alloc_probes.is_empty() {
        md.push_str(ALLOCATIONS);
        let header = [
            "workload",
            "short run: allocations / requests",
            "long run: allocations / requests",
            "steady state per request",
            "all allocations per request (long run)",
        ];
        let per_request = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.4}"));
        let rows = results.allocs.iter().map(|record| {
            let id = format!("`{}`", probe_name(&plan.alloc_probes[record.probe]));
            match &record.outcome {
                Ok(c) => vec![
                    id,
                    format!("{} / {}", c.short_allocations, c.short_requests),
                    format!("{} / {}", c.long_allocations, c.long_requests),
                    per_request(c.steady_state_per_request()),
                    per_request(c.total_per_request()),
                ],
                Err(reason) => {
                    let mut row = vec![id, format!("not measured: {reason}")];
                    row.resize(5, String::new());
                    row
                }
            }
        });
        table(&mut md, header.map(String::from).to_vec(), rows);
    }

    if !results.profiles.is_empty() {
        md.push_str(PROFILES);
        profiles_overview(&mut md, results);
        for record in &results.profiles {
            profile_section(&mut md, results, record);
        }
    }

    let mut problems = Vec::new();
    for (index, group) in plan.groups.iter().enumerate() {
        for (target, t) in group.targets.iter().enumerate() {
            for problem in results.case(index, target).problems() {
                problems.push(format!("`{}`: {problem}", group.case_id(t)));
            }
        }
    }
    if !problems.is_empty() || !plan.skipped.is_empty() {
        md.push_str("\n## Not measured\n\n");
        for skipped in &plan.skipped {
            let _ = writeln!(md, "- {}: {}", skipped.what, skipped.reason);
        }
        for problem in problems {
            let _ = writeln!(md, "- {problem}");
        }
    }

    if !plots.is_empty() {
        md.push_str(
            "\n## Plots\n\nLines join the medians; bars show the min–max of the repetitions.\n\n",
        );
        for plot in plots {
            let _ = writeln!(md, "![{}]({})\n", plot.title, plot.file);
        }
    }
    md.push_str(
        "\nRaw numbers: `results.csv` (one row per run), `allocations.csv`; server and \
         client logs in `logs/`.\n",
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{Plan, ServerCapabilities, Settings, Target};
    use crate::lab::profile::{Profile, ProfileLine};
    use crate::lab::results::{AllocRecord, RunContext, RunRecord, ServerUsage};
    use crate::lab::workload::Measurement;

    /// A quick plan where plain does 100 units, fuse-export 90, and qsd fails.
    fn fake_results() -> LabResults {
        let plan = Plan::build(
            &Settings::new(true),
            &ServerCapabilities::default(),
            &[ServerOptions::default()],
        );
        let mut records = Vec::new();
        for (g, group) in plan.groups.iter().enumerate() {
            for (t, target) in group.targets.iter().enumerate() {
                let is_plain = *target == Target::Plain;
                let scale = if is_plain { 1.0 } else { 0.9 };
                let seconds = match (group.workload.metric(), is_plain) {
                    (Metric::Seconds, true) => 1.0,
                    (Metric::Seconds, false) => 1.2,
                    _ => 2.0,
                };
                let outcome = match target {
                    Target::Qsd => Outcome::Failed("qsd broke | badly".into()),
                    _ => Outcome::Measured {
                        measurement: Measurement {
                            seconds,
                            bytes: (200.0 * 1048576.0 * scale) as u64,
                            ios: Some(1000),
                            iops: Some(100_000.0 * scale),
                            lat_p50_us: Some(100.0),
                            lat_p99_us: Some(300.0),
                        },
                        server: (!is_plain).then_some(ServerUsage {
                            cpu_seconds: 0.5,
                            idle_rss_kib: 3000,
                            peak_rss_kib: 9000,
                            idle_threads: 4,
                            max_threads: 8,
                            context_switches: 2000,
                            requests: Some(1000),
                            spilled: Some(0),
                        }),
                    },
                };
                records.push(RunRecord {
                    group: g,
                    target: t,
                    repetition: 0,
                    outcome,
                });
            }
        }
        let allocs = vec![
            AllocRecord {
                probe: 0,
                outcome: Ok(AllocCounts {
                    short_allocations: 500,
                    short_requests: 1000,
                    long_allocations: 500,
                    long_requests: 3000,
                }),
            },
            AllocRecord {
                probe: 1,
                outcome: Err("no alloc-count feature".into()),
            },
        ];
        let profiles = fake_profiles(&plan);
        LabResults {
            plan,
            profiles,
            records,
            allocs,
            context: RunContext::default(),
        }
    }

    /// The first group's fuse-export target profiled, its qsd not.
    fn fake_profiles(plan: &Plan) -> Vec<ProfileRecord> {
        let target =
            |wanted: fn(&Target) -> bool| plan.groups[0].targets.iter().position(wanted).unwrap();
        let line = |percent, command: &str, symbol: &str| ProfileLine {
            percent,
            command: command.into(),
            symbol: symbol.into(),
        };
        let entries = vec![
            line(30.0, "swapper", "[k] pv_native_safe_halt"),
            line(17.5, "fuse-queue-0", "[k] __pi_memcpy"),
            line(12.5, "fuse-queue-1", "[k] __pi_memcpy"),
            line(10.0, "qemu-img", "[k] _copy_to_iter"),
        ];
        let profile = Profile {
            entries,
            report: PathBuf::from("profiles/x.txt"),
        };
        let measurement = Measurement {
            seconds: 2.0,
            bytes: 1 << 20,
            ios: Some(1000),
            iops: Some(95_000.0),
            lat_p50_us: None,
            lat_p99_us: None,
        };
        vec![
            ProfileRecord {
                group: 0,
                target: target(|t| matches!(t, Target::FuseExport(_))),
                outcome: Ok((profile, measurement)),
            },
            ProfileRecord {
                group: 0,
                target: target(|t| *t == Target::Qsd),
                outcome: Err("perf is not installed (package linux-perf)".into()),
            },
        ]
    }

    #[test]
    fn allocation_probes_without_the_matrix_still_judge_their_goal() {
        let mut results = fake_results();
        for group in &mut results.plan.groups {
            if group.name == "matrix" {
                group.name = "knob-elsewhere".into();
            }
        }
        let md = summary_markdown(&results, &plot::plots(&results));
        assert!(
            md.contains(
                "| zero allocations per request in steady state | worst 0.0000/request (0 extra \
                 allocations over 2000 extra requests) | met |"
            ),
            "{md}"
        );
    }

    #[test]
    fn summary_reports_goals_ratios_and_failures() {
        let results = fake_results();
        let md = summary_markdown(&results, &plot::plots(&results));
        for wanted in [
            "| goal | fuse-export | qsd | status |\n| --- | --- | --- | --- |\n",
            "| 4k randread QD1 ≥ 0.80× plain IOPS in every repetition | 0.90× | failed: qsd \
             broke / badly | met |",
            "| 4k randwrite QD32 ≥ 0.90× plain IOPS | 0.90× | failed: qsd broke / badly | met |",
            "| 4k randread and randwrite: ahead of qsd at QD1, 4, 16 and 32 (medians) | — | — | \
             not measured: no workload with both ratios |",
            "| qemu-img convert -n -t none ≤ 1.3× plain time | 1.20× | failed: qsd broke / badly \
             | met |",
            "| 1M sequential read, QD16 (fio) ≥ 0.95× plain | 0.90× | failed: qsd broke / badly | \
             **not met** |",
            "| uring no slower than readv in any workload (for `auto` to pick it) | — | — | not measured: \
             needs `--transport readv,uring` |",
            "idle RSS ≤ 8 MiB with 2 queues | 2.9 MiB (2.9–2.9) | — | met |",
            "zero allocations per request in steady state | worst 0.0000/request (0 extra \
             allocations over 2000 extra requests) | — | met |",
            "| workload | plain | fuse-export | qsd |",
            "| `ext4-fio-randread-4k-qd32-io_uring` fio randread bs=4k iodepth=32 io_uring \
             direct=1, 2 s on a 128 MiB file in ext4 on a direct-I/O loop device | 100.0k IOPS \
             | **0.90×** · 90.0k IOPS |",
            "| `fio-randread-4k-qd1-io_uring` | 100 / 300 | 100 / 300 | — |",
            "| workload | fuse-export CPU | qsd CPU | fuse-export RSS idle / peak | qsd RSS idle \
             / peak | threads idle → max, fuse-export / qsd |",
            "| `dd-read-1M` | 500.0 µs/io, 2.00 cs/io | — | 2.9 MiB / 8.8 MiB | — | 4 → 8 / — |",
            "Profiled run: 2.00 s (without perf: median 1.20). By thread: swapper 30.0 %, \
             fuse-queue-N 30.0 %, qemu-img 10.0 %. [Full report](profiles/x.txt)\n\n\
             | share | thread | \
             symbol |\n| --- | --- | --- |\n| 30.0 % | `swapper` | `[k] pv_native_safe_halt` |\n\
             | 17.5 % | `fuse-queue-0` | `[k] __pi_memcpy` |\n",
            "/qsd`\n\nNot profiled: perf is not installed (package linux-perf)\n",
            "| case | ratio to plain | CPUs idle | server | client | server's largest entries |\n\
             | --- | --- | --- | --- | --- | --- |\n\
             | `matrix/convert-cache/fuse-export` | 1.20× | 30 % | 30 % | 10 % | \
             `[k] __pi_memcpy` 30.0 % |\n",
            "### queues",
            "| workload | plain | fuse-export[queues=1] | fuse-export |",
            "| `fio-randwrite-4k-qd32-io_uring` | 500 / 1000 | 500 / 3000 | 0.0000 | 0.1667 |",
            "| `fio-write-1M-qd16-io_uring` | not measured: no alloc-count feature |  |  |  |",
            "- knob spill_tiers: not swept in --quick",
            "- `matrix/convert-cache/qsd`: failed: qsd broke | badly",
            "![4k random read, O_DIRECT, io_uring](iops-randread.svg)",
        ] {
            assert!(md.contains(wanted), "missing {wanted:?} in\n{md}");
        }
    }

    #[test]
    fn goals_judge_every_fuse_export_variant() {
        let mut results = fake_results();
        let uring = ServerOptions::default().with(crate::lab::plan::TRANSPORT, "uring");
        for group in &mut results.plan.groups {
            group.targets.push(Target::FuseExport(uring.clone()));
        }
        let md = summary_markdown(&results, &[]);
        assert!(
            md.contains("| goal | fuse-export | qsd | fuse-export[transport=uring] | status |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 1.20× | failed: qsd broke / badly | — | fuse-export: met; \
                 fuse-export[transport=uring]: not measured: no ratio (see below) |"
            ),
            "{md}"
        );
    }

    /// fuse-export, qsd (failed) and the two transports: readv at 0.9×
    /// like the lab default, uring at `uring_scale` of plain, qsd at 0.5×.
    fn results_with_transports(uring_scale: f64) -> LabResults {
        let mut results = fake_results();
        let variant = |t| ServerOptions::default().with(crate::lab::plan::TRANSPORT, t);
        let extra = [(variant("readv"), 0.9), (variant("uring"), uring_scale)];
        let mut records = Vec::new();
        for (g, group) in results.plan.groups.iter_mut().enumerate() {
            let lower_is_better = group.workload.metric() == Metric::Seconds;
            for (options, scale) in &extra {
                group.targets.push(Target::FuseExport(options.clone()));
                let mut record = results
                    .records
                    .iter()
                    .find(|r| r.group == g && r.target == 1)
                    .unwrap()
                    .clone();
                record.target = group.targets.len() - 1;
                if let Outcome::Measured { measurement, .. } = &mut record.outcome {
                    measurement.seconds = if lower_is_better { 1.0 / scale } else { 2.0 };
                    measurement.bytes = (200.0 * 1048576.0 * scale) as u64;
                    measurement.iops = Some(100_000.0 * scale);
                }
                records.push(record);
            }
        }
        results.records.extend(records);
        results
    }

    #[test]
    fn uring_is_judged_against_readv() {
        let behind = summary_markdown(&results_with_transports(0.8), &[]);
        assert!(
            behind.contains(
                "| uring no slower than readv in any workload (for `auto` to pick it) | — | — | — | behind \
                 readv in 17 of 17 medians, 17 in every repetition | **not met** (see uring \
                 against readv) |"
            ),
            "{behind}"
        );
        assert!(
            behind.contains(
                "| `fio-randread-4k-qd1-io_uring` | 0.90× | 0.80× | 0.89 | **behind in every \
                 repetition** |"
            ),
            "{behind}"
        );
        assert!(
            behind.contains(
                "| `convert-direct` | 1.11× | 1.25× | 1.12 | **behind in every repetition** |"
            ),
            "{behind}"
        );
        let level = summary_markdown(&results_with_transports(0.9), &[]);
        assert!(
            level.contains("behind readv in 0 of 17 medians, 0 in every repetition | met |"),
            "{level}"
        );
        assert!(
            level.contains("| 0.90× | 0.90× | 1.00 | level or ahead |"),
            "{level}"
        );
    }

    #[test]
    fn csv_has_a_row_per_run_with_every_column() {
        let results = fake_results();
        let csv = results_csv(&results).unwrap();
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header.len(), 27);
        assert_eq!(header[..3], ["group", "workload", "target"]);
        assert_eq!(
            header[23..25],
            ["server_context_switches", "context_switches_per_io"]
        );
        assert_eq!(header[26], "spilled_writes");
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), results.records.len());
        let failed = rows.iter().find(|r| &r[4] == "failed").unwrap();
        assert_eq!(&failed[5], "qsd broke | badly");
        let measured = rows
            .iter()
            .find(|r| &r[2] == "fuse-export" && &r[6] == "IOPS")
            .unwrap();
        assert_eq!(&measured[8], "0.9");
        // 2000 switches over 1000 client I/Os.
        assert_eq!(&measured[24], "2.0");

        let allocations = allocations_csv(&results).unwrap();
        let mut lines = allocations.lines();
        assert_eq!(
            lines.next(),
            Some(
                "workload,status,problem,short_allocations,short_requests,\
                 long_allocations,long_requests,steady_state_per_request,total_per_request"
            )
        );
        assert_eq!(
            lines.next(),
            Some("fio-randwrite-4k-qd32-io_uring,ok,,500,1000,500,3000,0.0,0.167")
        );
        assert_eq!(
            lines.next(),
            Some("fio-write-1M-qd16-io_uring,failed,no alloc-count feature,,,,,,")
        );
    }

    #[test]
    fn plots_have_a_line_per_target() {
        let results = fake_results();
        let plots = plot::plots(&results);
        let names: Vec<&str> = plots.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            names,
            [
                "throughput-seq-read.svg",
                "throughput-seq-write.svg",
                "iops-randread.svg",
                "iops-randwrite.svg"
            ]
        );
        // qsd failed everywhere, so only plain and fuse-export have lines.
        let labels: Vec<&str> = plots[2].series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["plain", "fuse-export"]);
        assert_eq!(plots[2].series[0].points.len(), 2);
    }

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(950.0), "950");
        assert_eq!(compact(1234.0), "1.23k");
        assert_eq!(compact(52_100.0), "52.1k");
        assert_eq!(compact(1_234_000.0), "1.23M");
    }
}
