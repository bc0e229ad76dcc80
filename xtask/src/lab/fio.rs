//! fio: the command line of a job and the numbers of its JSON report.

use std::path::Path;

use serde::Deserialize;

use super::plan::{FioJob, Pattern, size_short};
use super::workload::Measurement;

/// fio's command line for `job` on `path`, a file of `size` bytes.
pub fn args(job: &FioJob, path: &Path, size: u64, report: &Path) -> Vec<String> {
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
        // An existing file is used as it is; a new one (on ext4) is
        // written in full, so reads find data and writes overwrite it.
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

/// The part of `--output-format=json` the lab reads.
#[derive(Debug, Deserialize)]
struct Report {
    jobs: Vec<Job>,
}

#[derive(Debug, Deserialize)]
struct Job {
    error: i64,
    /// Milliseconds the job ran (without fio's start-up and file layout).
    job_runtime: u64,
    read: Side,
    write: Side,
}

#[derive(Debug, Deserialize)]
struct Side {
    io_bytes: u64,
    total_ios: u64,
    iops: f64,
    clat_ns: Latency,
}

/// Completion latency; fio leaves out the percentiles of a side that did
/// no I/O.
#[derive(Debug, Deserialize)]
struct Latency {
    #[serde(default)]
    percentile: Percentiles,
}

/// The ones `--percentile_list=50:99` asks for, in nanoseconds.
#[derive(Debug, Default, Deserialize)]
struct Percentiles {
    #[serde(rename = "50.000000")]
    p50: Option<f64>,
    #[serde(rename = "99.000000")]
    p99: Option<f64>,
}

/// Reads fio's JSON report of one job.
pub fn parse_report(text: &str, pattern: Pattern) -> Result<Measurement, String> {
    // fio may print notices before the JSON document even with --output.
    let start = text.find('{').ok_or("fio report has no JSON")?;
    let report: Report =
        serde_json::from_str(&text[start..]).map_err(|err| format!("fio report: {err}"))?;
    let job = report.jobs.first().ok_or("fio report has no job")?;
    if job.error != 0 {
        return Err(format!("fio job failed with error {}", job.error));
    }
    let sides = [&job.read, &job.write];
    let ios: u64 = sides.iter().map(|side| side.total_ios).sum();
    if ios == 0 {
        return Err("fio completed no I/O".into());
    }
    if job.job_runtime == 0 {
        return Err("fio report has no job_runtime".into());
    }
    let latency = &if pattern.reports_writes() {
        &job.write
    } else {
        &job.read
    }
    .clat_ns
    .percentile;
    Ok(Measurement {
        seconds: job.job_runtime as f64 / 1000.0,
        bytes: sides.iter().map(|side| side.io_bytes).sum(),
        ios: Some(ios),
        iops: Some(sides.iter().map(|side| side.iops).sum()),
        lat_p50_us: latency.p50.map(|ns| ns / 1000.0),
        lat_p99_us: latency.p99.map(|ns| ns / 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{Engine, KIB};

    /// Real reports of fio 3.33 with the lab's options (see `args`).
    const RANDREAD: &str = include_str!("../../tests/fixtures/fio-randread-4k.json");
    const RANDRW70: &str = include_str!("../../tests/fixtures/fio-randrw70-4k.json");

    #[test]
    fn reads_a_real_read_only_report() {
        let m = parse_report(RANDREAD, Pattern::RandRead).unwrap();
        assert_eq!(m.seconds, 1.0);
        assert_eq!(m.bytes, 262_004_736);
        assert_eq!(m.ios, Some(63_966));
        assert_eq!(m.iops, Some(63_902.097902));
        assert_eq!(m.lat_p50_us, Some(48.384));
        assert_eq!(m.lat_p99_us, Some(148.48));
        // The write side did nothing and has no percentiles.
        let writes = parse_report(RANDREAD, Pattern::RandWrite).unwrap();
        assert_eq!(writes.lat_p99_us, None);
    }

    #[test]
    fn mixed_jobs_add_both_sides_and_show_read_latency() {
        let m = parse_report(RANDRW70, Pattern::RandRw70).unwrap();
        assert_eq!(m.bytes, 213_315_584 + 90_537_984);
        assert_eq!(m.ios, Some(52_079 + 22_104));
        assert_eq!(m.iops, Some(52_026.973027 + 22_081.918082));
        assert_eq!(m.lat_p99_us, Some(280.576));
    }

    #[test]
    fn notices_before_the_document_are_skipped() {
        let text = format!("fio: some notice\n{RANDREAD}");
        assert!(parse_report(&text, Pattern::RandRead).is_ok());
    }

    #[test]
    fn bad_reports_are_errors() {
        for (text, wanted) in [
            ("garbage", "no JSON"),
            ("{\"jobs\": [", "fio report: "),
            ("{\"jobs\": []}", "no job"),
            ("{\"jobs\": [{\"error\": 5}]}", "missing field"),
        ] {
            let err = parse_report(text, Pattern::RandRead).unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
        let failed = RANDREAD.replacen("\"error\" : 0", "\"error\" : 5", 1);
        assert_eq!(
            parse_report(&failed, Pattern::RandRead).unwrap_err(),
            "fio job failed with error 5"
        );
        let idle = RANDREAD.replace("\"total_ios\" : 63966", "\"total_ios\" : 0");
        assert_eq!(
            parse_report(&idle, Pattern::RandRead).unwrap_err(),
            "fio completed no I/O"
        );
    }

    #[test]
    fn command_line() {
        let job = FioJob {
            pattern: Pattern::RandRw70,
            block_size: 4 * KIB,
            iodepth: 32,
            engine: Engine::Libaio,
            runtime_secs: 5,
        };
        let args = args(&job, Path::new("/x/img"), 1 << 30, Path::new("/tmp/r.json")).join(" ");
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
            "--output=/tmp/r.json",
        ] {
            assert!(args.contains(part), "{part} missing from {args}");
        }
    }
}
