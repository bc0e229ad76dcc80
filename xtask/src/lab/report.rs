//! results.csv, allocations.csv, summary.md and the SVG plots.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::plan::{Engine, FioJob, KNOBS, Metric, Pattern, Target, Workload, size_short};
use super::results::{CaseSummary, LabResults, Outcome};
use super::stats::Summary;
use super::svg::{self, Plot, Series};

/// `950`, `52.1k`, `1.23M`: IOPS in progress lines and tables.
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

fn format_value(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Seconds => format!("{value:.2} s"),
        Metric::MibPerSec => format!("{value:.0} MiB/s"),
        Metric::Iops => format!("{} IOPS", compact(value)),
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

fn ratio_spread(summary: &Summary) -> String {
    spread(summary, |v| format!("{v:.2}"))
}

/// A bare number in the metric's precision, for spreads.
fn format_number(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Seconds => format!("{value:.2}"),
        Metric::MibPerSec => format!("{value:.0}"),
        Metric::Iops => compact(value),
    }
}

/// A table cell for a target: ratio with spread, then the absolute value;
/// or the reason there is no number.
fn ratio_cell(metric: Metric, case: &CaseSummary, is_plain: bool) -> String {
    let Some(value) = case.metric else {
        return problem_text(case);
    };
    let absolute = format!(
        "{}{}",
        format_value(metric, value.median),
        spread(&value, |v| format_number(metric, v))
    );
    if is_plain {
        return absolute;
    }
    match case.ratio {
        Some(ratio) => format!(
            "**{:.2}×**{} · {}",
            ratio.median,
            ratio_spread(&ratio),
            format_value(metric, value.median)
        ),
        None => format!(
            "{} (no plain baseline to compare)",
            format_value(metric, value.median)
        ),
    }
}

fn problem_text(case: &CaseSummary) -> String {
    if case.problems.is_empty() {
        "—".into()
    } else {
        case.problems
            .iter()
            .map(|p| p.replace('|', "/"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
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
    write("results.csv", results_csv(results))?;
    write("allocations.csv", allocations_csv(results))?;
    let plots = plots(results);
    for (file, plot) in &plots {
        write(file, svg::render(plot))?;
    }
    let plot_files: Vec<(String, String)> = plots
        .iter()
        .map(|(file, plot)| (file.clone(), plot.title.clone()))
        .collect();
    write("summary.md", summary_markdown(results, &plot_files))?;
    Ok(written)
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn optional(value: Option<f64>) -> String {
    value
        .filter(|v| v.is_finite())
        .map_or(String::new(), |v| format!("{v:.3}"))
}

/// One row per run.
pub fn results_csv(results: &LabResults) -> String {
    let mut out = String::from(
        "group,workload,target,repetition,status,problem,metric,value,ratio_to_plain,\
         seconds,bytes,ios,mib_per_s,iops,lat_p50_us,lat_p99_us,server_cpu_s,cpu_ms_per_gib,\
         cpu_us_per_io,idle_rss_kib,peak_rss_kib,idle_threads,max_threads,fuse_requests,\
         spilled_writes\n",
    );
    for record in &results.records {
        let group = &results.plan.groups[record.group];
        let metric = group.workload.metric();
        let target = &group.targets[record.target];
        let (status, problem) = match &record.outcome {
            Outcome::Measured { .. } => ("ok", String::new()),
            Outcome::Failed(reason) => ("failed", reason.clone()),
            Outcome::Unavailable(reason) => ("unavailable", reason.clone()),
        };
        let m = record.outcome.measurement();
        let s = record.outcome.server();
        let fields = [
            group.name.clone(),
            group.workload.id(),
            target.label(),
            (record.repetition + 1).to_string(),
            status.to_string(),
            problem,
            metric.unit().to_string(),
            optional(m.and_then(|m| m.value(metric))),
            optional(results.ratio(record)),
            optional(m.map(|m| m.seconds)),
            m.map_or(String::new(), |m| m.bytes.to_string()),
            m.and_then(|m| m.ios)
                .map_or(String::new(), |v| v.to_string()),
            optional(m.map(|m| m.mib_per_sec())),
            optional(m.and_then(|m| m.iops)),
            optional(m.and_then(|m| m.lat_p50_us)),
            optional(m.and_then(|m| m.lat_p99_us)),
            optional(s.map(|s| s.cpu_seconds)),
            optional(m.zip(s).and_then(|(m, s)| s.cpu_ms_per_gib(m))),
            optional(m.zip(s).and_then(|(m, s)| s.cpu_us_per_io(m))),
            s.map_or(String::new(), |s| s.idle_rss_kib.to_string()),
            s.map_or(String::new(), |s| s.peak_rss_kib.to_string()),
            s.map_or(String::new(), |s| s.idle_threads.to_string()),
            s.map_or(String::new(), |s| s.max_threads.to_string()),
            s.and_then(|s| s.requests)
                .map_or(String::new(), |v| v.to_string()),
            s.and_then(|s| s.spilled)
                .map_or(String::new(), |v| v.to_string()),
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// One row per allocation probe.
pub fn allocations_csv(results: &LabResults) -> String {
    let mut out = String::from(
        "workload,status,problem,short_allocations,short_requests,long_allocations,\
         long_requests,steady_state_per_request,total_per_request\n",
    );
    for record in &results.allocs {
        let probe = &results.plan.alloc_probes[record.probe];
        let id = Workload::Fio(probe.job).id();
        let row = match &record.outcome {
            Ok(c) => format!(
                "{id},ok,,{},{},{},{},{},{}",
                c.short_allocations,
                c.short_requests,
                c.long_allocations,
                c.long_requests,
                optional(c.steady_state_per_request()),
                optional(c.total_per_request())
            ),
            Err(reason) => format!("{id},failed,{},,,,,,", csv_field(reason)),
        };
        out.push_str(&row);
        out.push('\n');
    }
    out
}

/// Medians of the matrix's fio jobs matching `select`, as one series per
/// target with `x_of` on the x axis.
fn matrix_series(
    results: &LabResults,
    select: impl Fn(&FioJob) -> bool,
    x_of: impl Fn(&FioJob) -> f64,
    metric: Metric,
) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for (group_index, group) in results.plan.groups.iter().enumerate() {
        let Workload::Fio(job) = group.workload else {
            continue;
        };
        if group.name != "matrix" || !select(&job) {
            continue;
        }
        for (target_index, target) in group.targets.iter().enumerate() {
            let values = results
                .records_of(group_index, target_index)
                .filter_map(|r| r.outcome.measurement()?.value(metric));
            let Some(summary) = Summary::of(values) else {
                continue;
            };
            let label = target.label();
            let point = (x_of(&job), summary.median);
            match series.iter_mut().find(|s| s.label == label) {
                Some(existing) => existing.points.push(point),
                None => series.push(Series {
                    label,
                    points: vec![point],
                }),
            }
        }
    }
    series
}

fn ticks_of(series: &[Series], label: impl Fn(f64) -> String) -> Vec<(f64, String)> {
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(x, _)| *x))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    xs.into_iter().map(|x| (x, label(x))).collect()
}

/// Throughput against block size and IOPS against queue depth.
pub fn plots(results: &LabResults) -> Vec<(String, Plot)> {
    let mut plots = Vec::new();
    for (pattern, name, title) in [
        (
            Pattern::SeqRead,
            "throughput-seq-read.svg",
            "Sequential read, O_DIRECT, io_uring QD16",
        ),
        (
            Pattern::SeqWrite,
            "throughput-seq-write.svg",
            "Sequential write, O_DIRECT, io_uring QD16",
        ),
    ] {
        let series = matrix_series(
            results,
            |job| job.pattern == pattern && job.engine == Engine::IoUring,
            |job| job.block_size as f64,
            Metric::MibPerSec,
        );
        if series.is_empty() {
            continue;
        }
        plots.push((
            name.to_string(),
            Plot {
                title: title.into(),
                x_label: "block size".into(),
                y_label: "MiB/s".into(),
                x_ticks: ticks_of(&series, |x| size_short(x as u64)),
                series,
            },
        ));
    }
    for (pattern, name, title) in [
        (
            Pattern::RandRead,
            "iops-randread.svg",
            "4k random read, O_DIRECT, io_uring",
        ),
        (
            Pattern::RandWrite,
            "iops-randwrite.svg",
            "4k random write, O_DIRECT, io_uring",
        ),
    ] {
        let series = matrix_series(
            results,
            |job| job.pattern == pattern && job.engine == Engine::IoUring && job.block_size == 4096,
            |job| f64::from(job.iodepth),
            Metric::Iops,
        );
        if series.is_empty() {
            continue;
        }
        plots.push((
            name.to_string(),
            Plot {
                title: title.into(),
                x_label: "queue depth".into(),
                y_label: "IOPS".into(),
                x_ticks: ticks_of(&series, |x| format!("{x:.0}")),
                series,
            },
        ));
    }
    plots
}

/// A goal from the issue and how to judge it.
struct GoalRow {
    goal: String,
    fuse_export: String,
    qsd: String,
    status: String,
}

fn status(met: Option<bool>, why_not: &str) -> String {
    match met {
        Some(true) => "met".into(),
        Some(false) => "**not met**".into(),
        None => format!("not measured: {why_not}"),
    }
}

/// Ratio goals on matrix groups.
fn ratio_goal(
    results: &LabResults,
    workload_id: &str,
    goal: &str,
    bound: f64,
    at_most: bool,
) -> GoalRow {
    let Some((index, group)) = results.find_group("matrix", workload_id) else {
        return GoalRow {
            goal: goal.into(),
            fuse_export: "—".into(),
            qsd: "—".into(),
            status: status(None, "not in this plan (filtered or --quick)"),
        };
    };
    let cell = |label: &str| -> (String, Option<f64>) {
        let Some(target) = group.targets.iter().position(|t| t.label() == label) else {
            return ("not in plan".into(), None);
        };
        let case = results.summarize(index, target);
        match case.ratio {
            Some(ratio) => (
                format!("{:.2}×{}", ratio.median, ratio_spread(&ratio)),
                Some(ratio.median),
            ),
            None => (problem_text(&case), None),
        }
    };
    let (fuse_export, value) = cell("fuse-export");
    let (qsd, _) = cell("qsd");
    let met = value.map(|v| if at_most { v <= bound } else { v >= bound });
    GoalRow {
        goal: goal.into(),
        fuse_export,
        qsd,
        status: status(met, "no ratio (see below)"),
    }
}

fn goal_rows(results: &LabResults) -> Vec<GoalRow> {
    let mut rows = vec![ratio_goal(
        results,
        "convert-direct",
        "qemu-img convert -t none ≤ 1.3× plain time",
        1.3,
        true,
    )];
    for (pattern, name) in [
        (Pattern::RandRead, "randread"),
        (Pattern::RandWrite, "randwrite"),
    ] {
        for engine in [Engine::IoUring, Engine::Libaio] {
            let id = Workload::Fio(FioJob {
                pattern,
                block_size: 4096,
                iodepth: 32,
                engine,
                runtime_secs: 0,
            })
            .id();
            rows.push(ratio_goal(
                results,
                &id,
                &format!("4k {name} QD32 ({}) ≥ 0.85× plain IOPS", engine.fio_name()),
                0.85,
                false,
            ));
        }
    }
    rows.push(ratio_goal(
        results,
        "fio-read-1M-qd16-io_uring",
        "1M sequential read (fio QD16) ≥ 0.95× plain",
        0.95,
        false,
    ));
    rows.push(ratio_goal(
        results,
        "dd-read-1M",
        "1M sequential read (dd, QD1) ≥ 0.95× plain",
        0.95,
        false,
    ));

    // Idle RSS over every matrix run of the 2-queue default.
    let idle = |label: &str| {
        Summary::of(results.records.iter().filter_map(|r| {
            let group = &results.plan.groups[r.group];
            (group.name == "matrix" && group.targets[r.target].label() == label)
                .then(|| r.outcome.server().map(|s| s.idle_rss_kib as f64))
                .flatten()
        }))
    };
    let fuse_idle = idle("fuse-export");
    let qsd_idle = idle("qsd");
    let show = |s: Option<Summary>| {
        s.map_or("—".into(), |s| {
            format!(
                "{}{}",
                mib(s.median),
                spread(&s, |kib| format!("{:.1}", kib / 1024.0))
            )
        })
    };
    rows.push(GoalRow {
        goal: "idle RSS ≤ 8 MiB with 2 queues".into(),
        fuse_export: show(fuse_idle),
        qsd: show(qsd_idle),
        status: status(
            fuse_idle.map(|s| s.median <= 8.0 * 1024.0),
            "no fuse-export run",
        ),
    });

    // Allocations: every probe must show none in steady state.
    let measured: Vec<_> = results
        .allocs
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .collect();
    let extra: Vec<(u64, u64)> = measured
        .iter()
        .map(|c| {
            (
                c.long_allocations.saturating_sub(c.short_allocations),
                c.long_requests.saturating_sub(c.short_requests),
            )
        })
        .collect();
    let worst = measured
        .iter()
        .filter_map(|c| c.steady_state_per_request())
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    let first_error = results
        .allocs
        .iter()
        .find_map(|r| r.outcome.as_ref().err().cloned())
        .unwrap_or_else(|| "no allocation probe ran".into());
    rows.push(GoalRow {
        goal: "zero allocations per request in steady state".into(),
        fuse_export: match worst {
            Some(worst) => format!(
                "worst {worst:.4}/request ({} extra allocations over {} extra requests)",
                extra.iter().map(|e| e.0).sum::<u64>(),
                extra.iter().map(|e| e.1).sum::<u64>()
            ),
            None => "—".into(),
        },
        qsd: "—".into(),
        status: status(
            (!measured.is_empty()).then(|| extra.iter().all(|e| e.0 == 0)),
            &first_error,
        ),
    });
    rows
}

pub fn summary_markdown(results: &LabResults, plots: &[(String, String)]) -> String {
    let plan = &results.plan;
    let settings = &plan.settings;
    let context = &results.context;
    let mut md = String::new();
    let _ = writeln!(md, "# fuse-export performance lab, {}\n", context.started);
    if context.interrupted {
        let _ = writeln!(md, "**Interrupted: partial results.**\n");
    }
    let _ = writeln!(
        md,
        "- run: {}, {} repetition(s) per case interleaved with the plain file, \
         image {}, fio {} s per run, {} in total",
        match settings.mode {
            super::plan::Mode::Quick => "`--quick`",
            super::plan::Mode::Full => "full",
        },
        settings.repetitions,
        super::plan::size_long(settings.image_size),
        settings.fio_runtime_secs,
        super::plan::Duration(context.elapsed_secs),
    );
    let _ = writeln!(md, "- host: {}", context.host);
    for (name, version) in &context.versions {
        let _ = writeln!(md, "- {name}: {version}");
    }
    for note in &context.notes {
        let _ = writeln!(md, "- {note}");
    }
    md.push_str(
        "\nRatios are target ÷ plain image file for the same workload in the same \
         repetition; median over repetitions, (min–max) when there are several. For \
         convert (seconds) lower is better, everywhere else higher is better. \
         fuse-export runs with `--queues 2` unless a knob says otherwise; \
         qsd = qemu-storage-daemon `--export fuse` (aio=io_uring, cache.direct=on).\n",
    );

    md.push_str("\n## Goals\n\n| goal | fuse-export | qsd | status |\n| --- | --- | --- | --- |\n");
    for row in goal_rows(results) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            row.goal, row.fuse_export, row.qsd, row.status
        );
    }

    let matrix: Vec<usize> = plan
        .groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.name == "matrix")
        .map(|(i, _)| i)
        .collect();
    if !matrix.is_empty() {
        let labels = ["plain", "fuse-export", "qsd"];
        md.push_str(
            "\n## Workloads\n\n| workload | plain | fuse-export | qsd |\n| --- | --- | --- | --- |\n",
        );
        for &index in &matrix {
            let group = &plan.groups[index];
            let metric = group.workload.metric();
            let cells: Vec<String> = labels
                .iter()
                .map(
                    |label| match group.targets.iter().position(|t| t.label() == *label) {
                        Some(target) => ratio_cell(
                            metric,
                            &results.summarize(index, target),
                            group.targets[target] == Target::Plain,
                        ),
                        None => "not in plan".into(),
                    },
                )
                .collect();
            let _ = writeln!(
                md,
                "| `{}` {}{} | {} |",
                group.workload.id(),
                group.workload.describe(),
                if metric.higher_is_better() {
                    ""
                } else {
                    " (time: lower is better)"
                },
                cells.join(" | ")
            );
        }

        md.push_str(
            "\n## Latency (fio completion latency, µs, p50 / p99)\n\n\
             | workload | plain | fuse-export | qsd |\n| --- | --- | --- | --- |\n",
        );
        for &index in &matrix {
            let group = &plan.groups[index];
            if !matches!(group.workload, Workload::Fio(_)) {
                continue;
            }
            let cells: Vec<String> = labels
                .iter()
                .map(|label| {
                    group
                        .targets
                        .iter()
                        .position(|t| t.label() == *label)
                        .map(|target| results.summarize(index, target))
                        .and_then(|case| Some((case.lat_p50_us?, case.lat_p99_us?)))
                        .map_or("—".into(), |(p50, p99)| {
                            format!("{:.0} / {:.0}", p50.median, p99.median)
                        })
                })
                .collect();
            let _ = writeln!(md, "| `{}` | {} |", group.workload.id(), cells.join(" | "));
        }

        md.push_str(
            "\n## Server cost (median per run)\n\n\
             CPU is user+system time of the whole server process (all threads, io_uring \
             workers included) during the workload, per client I/O for fio and per GiB \
             otherwise; RSS is VmHWM of a server started fresh for the run; threads is the \
             most seen while it ran.\n\n\
             | workload | fuse-export CPU | qsd CPU | fuse-export RSS idle / peak | \
             qsd RSS idle / peak | threads idle → max, fuse-export / qsd |\n\
             | --- | --- | --- | --- | --- | --- |\n",
        );
        for &index in &matrix {
            let group = &plan.groups[index];
            let case = |label: &str| {
                group
                    .targets
                    .iter()
                    .position(|t| t.label() == label)
                    .map(|target| results.summarize(index, target))
                    .unwrap_or_default()
            };
            let (fe, qsd) = (case("fuse-export"), case("qsd"));
            let cpu = |c: &CaseSummary| match (c.cpu_us_per_io, c.cpu_ms_per_gib) {
                (Some(us), _) => format!("{:.1} µs/io", us.median),
                (None, Some(ms)) => format!("{:.0} ms/GiB", ms.median),
                _ => "—".into(),
            };
            let rss = |c: &CaseSummary| match (c.idle_rss_kib, c.peak_rss_kib) {
                (Some(idle), Some(peak)) => format!("{} / {}", mib(idle.median), mib(peak.median)),
                _ => "—".into(),
            };
            let threads = |c: &CaseSummary| match (c.idle_threads, c.max_threads) {
                (Some(idle), Some(max)) => format!("{:.0} → {:.0}", idle.median, max.median),
                _ => "—".into(),
            };
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {} / {} |",
                group.workload.id(),
                cpu(&fe),
                cpu(&qsd),
                rss(&fe),
                rss(&qsd),
                threads(&fe),
                threads(&qsd)
            );
        }
    }

    let mut knob_names: Vec<&str> = plan
        .groups
        .iter()
        .filter_map(|g| g.name.strip_prefix("knob-"))
        .collect();
    knob_names.dedup();
    if !knob_names.is_empty() {
        md.push_str(
            "\n## Knobs\n\nEach cell: ratio to plain · absolute value · peak RSS of the server.\n",
        );
    }
    for name in knob_names {
        let about = KNOBS
            .iter()
            .find(|k| k.name == name)
            .map_or("", |k| k.about);
        let _ = writeln!(md, "\n### {name}\n\n{about}.\n");
        let groups: Vec<usize> = plan
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.name == format!("knob-{name}"))
            .map(|(i, _)| i)
            .collect();
        let Some(&first) = groups.first() else {
            continue;
        };
        let labels: Vec<String> = plan.groups[first]
            .targets
            .iter()
            .map(Target::label)
            .collect();
        let _ = writeln!(md, "| workload | {} |", labels.join(" | "));
        let _ = writeln!(md, "| --- |{}", " --- |".repeat(labels.len()));
        for index in groups {
            let group = &plan.groups[index];
            let metric = group.workload.metric();
            let cells: Vec<String> = group
                .targets
                .iter()
                .enumerate()
                .map(|(target, t)| {
                    let case = results.summarize(index, target);
                    let mut cell = ratio_cell(metric, &case, *t == Target::Plain);
                    if let Some(rss) = case.peak_rss_kib {
                        let _ = write!(cell, " · {}", mib(rss.median));
                    }
                    cell
                })
                .collect();
            let _ = writeln!(
                md,
                "| `{}` {} | {} |",
                group.workload.id(),
                group.workload.describe(),
                cells.join(" | ")
            );
        }
    }

    if !plan.alloc_probes.is_empty() {
        md.push_str(
            "\n## Allocations per request\n\n\
             fuse-export built with `--features alloc-count` (a counting global allocator \
             that logs `allocations: N total` at exit), default lab options. Each fio job \
             runs twice in fresh servers, short and long; start-up, INIT and pool warm-up \
             are the same in both runs, so (long − short allocations) ÷ (long − short \
             FUSE requests) is the steady-state cost per request. Requests come from the \
             server's own `QueueReport` counters.\n\n\
             | workload | short run: allocations / requests | long run: allocations / requests | \
             steady state per request | all allocations per request (long run) |\n\
             | --- | --- | --- | --- | --- |\n",
        );
        for record in &results.allocs {
            let probe = &plan.alloc_probes[record.probe];
            let id = Workload::Fio(probe.job).id();
            match &record.outcome {
                Ok(c) => {
                    let _ = writeln!(
                        md,
                        "| `{id}` | {} / {} | {} / {} | {} | {} |",
                        c.short_allocations,
                        c.short_requests,
                        c.long_allocations,
                        c.long_requests,
                        c.steady_state_per_request()
                            .map_or("n/a".into(), |v| format!("{v:.4}")),
                        c.total_per_request()
                            .map_or("n/a".into(), |v| format!("{v:.4}")),
                    );
                }
                Err(reason) => {
                    let _ = writeln!(
                        md,
                        "| `{id}` | not measured: {} | | | |",
                        reason.replace('|', "/")
                    );
                }
            }
        }
    }

    let mut problems = Vec::new();
    for (index, group) in plan.groups.iter().enumerate() {
        for (target, t) in group.targets.iter().enumerate() {
            for problem in results.summarize(index, target).problems {
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
        md.push_str("\n## Plots\n\n");
        for (file, title) in plots {
            let _ = writeln!(md, "![{title}]({file})\n");
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
    use crate::lab::plan::{Mode, Plan, ServerCapabilities, Settings};
    use crate::lab::results::{AllocCounts, AllocRecord, RunContext, RunRecord, ServerUsage};
    use crate::lab::workload::Measurement;

    /// A quick plan where plain does 100 units, fuse-export 90, and qsd fails.
    fn fake_results() -> LabResults {
        let plan = Plan::build(
            &Settings::for_mode(Mode::Quick),
            &ServerCapabilities::default(),
        );
        let mut records = Vec::new();
        for (g, group) in plan.groups.iter().enumerate() {
            for (t, target) in group.targets.iter().enumerate() {
                let outcome = match target {
                    Target::Qsd => Outcome::Failed("qsd broke".into()),
                    _ => {
                        let is_plain = *target == Target::Plain;
                        let scale = if is_plain { 1.0 } else { 0.9 };
                        let seconds = if group.workload.metric() == Metric::Seconds {
                            if is_plain { 1.0 } else { 1.2 }
                        } else {
                            2.0
                        };
                        Outcome::Measured {
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
                                requests: Some(1000),
                                spilled: Some(0),
                            }),
                        }
                    }
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
        LabResults {
            plan,
            records,
            allocs,
            context: RunContext::default(),
        }
    }

    #[test]
    fn summary_reports_goals_ratios_and_failures() {
        let results = fake_results();
        let md = summary_markdown(&results, &[("iops-randread.svg".into(), "IOPS".into())]);
        assert!(
            md.contains("| qemu-img convert -t none ≤ 1.3× plain time | 1.20× |"),
            "{md}"
        );
        assert!(md.contains("**0.90×**"), "{md}");
        assert!(md.contains("failed: qsd broke"), "{md}");
        assert!(
            md.contains("idle RSS ≤ 8 MiB with 2 queues | 2.9 MiB"),
            "{md}"
        );
        assert!(
            md.contains("zero allocations per request in steady state | worst 0.0000"),
            "{md}"
        );
        assert!(md.contains("not measured: no alloc-count feature"), "{md}");
        assert!(
            md.contains("knob spill_tiers: not swept in --quick"),
            "{md}"
        );
        assert!(md.contains("![IOPS](iops-randread.svg)"), "{md}");
    }

    #[test]
    fn csv_has_one_row_per_run_and_quotes_fields() {
        let results = fake_results();
        let csv = results_csv(&results);
        let header_fields = csv.lines().next().unwrap().split(',').count();
        assert_eq!(csv.lines().count(), results.records.len() + 1);
        for line in csv.lines().filter(|l| !l.contains('"')) {
            assert_eq!(line.split(',').count(), header_fields, "{line}");
        }
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert!(allocations_csv(&results).contains("failed,no alloc-count feature"));
    }

    #[test]
    fn plots_have_a_line_per_target() {
        let results = fake_results();
        let plots = plots(&results);
        let names: Vec<&str> = plots.iter().map(|(n, _)| n.as_str()).collect();
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
        let labels: Vec<&str> = plots[2].1.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["plain", "fuse-export"]);
        assert_eq!(plots[2].1.series[0].points.len(), 2);
    }

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(950.0), "950");
        assert_eq!(compact(1234.0), "1.23k");
        assert_eq!(compact(52_100.0), "52.1k");
        assert_eq!(compact(1_234_000.0), "1.23M");
    }
}
