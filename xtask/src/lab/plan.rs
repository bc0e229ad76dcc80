//! What the lab runs: workloads, targets, knob sweeps and allocation probes.
//!
//! The plan is pure data, built without touching the machine, so that
//! `--dry-run` (and the smoke test) can show it anywhere.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Sizes and durations of one lab run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `--quick` for development, else the full run whose results are published.
    pub quick: bool,
    /// Each group runs its targets this many times, interleaved.
    pub repetitions: u32,
    /// The exported image; fio spans all of it, convert and dd move as much.
    pub image_size: u64,
    /// Bytes one `dd` or convert run moves in the knob sweeps, kept smaller
    /// because a 4 KiB max_write makes them slow.
    pub knob_copy_size: u64,
    pub fio_runtime_secs: u32,
    /// fio run lengths of an allocation probe: a short and a long run whose
    /// difference cancels start-up and warm-up allocations.
    pub alloc_probe_secs: (u32, u32),
    /// `--profile`: after its repetitions, each server target of a group
    /// runs once more under `perf record` (not counted in the numbers).
    pub profile: bool,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        Settings {
            quick,
            repetitions: if quick { 1 } else { 3 },
            image_size: if quick { 512 * MIB } else { 4 * GIB },
            knob_copy_size: if quick { 256 * MIB } else { GIB },
            fio_runtime_secs: if quick { 2 } else { 6 },
            alloc_probe_secs: if quick { (1, 3) } else { (2, 6) },
            profile: false,
        }
    }

    fn fio(&self, pattern: Pattern, block_size: u64, iodepth: u32, engine: Engine) -> FioJob {
        let runtime_secs = self.fio_runtime_secs;
        FioJob {
            pattern,
            block_size,
            iodepth,
            engine,
            runtime_secs,
        }
    }
}

/// fio's access pattern (`--rw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
    /// 70 % reads, 30 % writes, random.
    RandRw70,
}

impl Pattern {
    pub fn fio_rw(self) -> &'static str {
        match self {
            Pattern::RandRead => "randread",
            Pattern::RandWrite => "randwrite",
            Pattern::SeqRead => "read",
            Pattern::SeqWrite => "write",
            Pattern::RandRw70 => "randrw",
        }
    }

    /// Which side's latency the report shows: reads for the mixed job.
    pub fn reports_writes(self) -> bool {
        matches!(self, Pattern::RandWrite | Pattern::SeqWrite)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Libaio,
    IoUring,
}

impl Engine {
    pub fn fio_name(self) -> &'static str {
        match self {
            Engine::Libaio => "libaio",
            Engine::IoUring => "io_uring",
        }
    }
}

/// One fio job, always `--direct=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FioJob {
    pub pattern: Pattern,
    pub block_size: u64,
    pub iodepth: u32,
    pub engine: Engine,
    pub runtime_secs: u32,
}

impl FioJob {
    fn id(&self) -> String {
        let rw = match self.pattern {
            Pattern::RandRw70 => "randrw70",
            other => other.fio_rw(),
        };
        let (bs, qd) = (size_short(self.block_size), self.iodepth);
        format!("fio-{rw}-{bs}-qd{qd}-{}", self.engine.fio_name())
    }

    fn describe(&self) -> String {
        format!(
            "fio {} bs={} iodepth={} {} direct=1, {} s",
            self.pattern.fio_rw(),
            size_short(self.block_size),
            self.iodepth,
            self.engine.fio_name(),
            self.runtime_secs
        )
    }
}

/// A client workload run against a target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `qemu-img convert -n` of a random raw image onto the target; `-t none`
    /// (O_DIRECT) when `direct`, else qemu-img's default cache (writeback
    /// plus a flush at the end).
    Convert { direct: bool, size: u64 },
    /// `dd bs=1M`, reading with `iflag=direct` or writing with `oflag=direct`.
    Dd { write: bool, size: u64 },
    /// fio over the whole target.
    Fio(FioJob),
    /// fio in a `file_size` file on ext4, made fresh on a direct-I/O loop
    /// device over the target: what a VM's filesystem sees.
    Ext4Fio { job: FioJob, file_size: u64 },
}

/// What a workload is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Wall time of the client; lower is better.
    Seconds,
    /// Bytes moved per second, in MiB/s; higher is better.
    MibPerSec,
    /// I/O operations per second; higher is better.
    Iops,
}

impl Metric {
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Seconds => "s",
            Metric::MibPerSec => "MiB/s",
            Metric::Iops => "IOPS",
        }
    }
}

/// Block sizes up to this are judged by IOPS, larger ones by throughput.
const IOPS_BLOCK_SIZE_LIMIT: u64 = 16 * KIB;

impl Workload {
    /// Stable, filterable name, e.g. `fio-randread-4k-qd32-io_uring`.
    pub fn id(&self) -> String {
        match self {
            Workload::Convert { direct: true, .. } => "convert-direct".into(),
            Workload::Convert { direct: false, .. } => "convert-cache".into(),
            Workload::Dd { write, .. } => {
                format!("dd-{}-1M", if *write { "write" } else { "read" })
            }
            Workload::Fio(job) => job.id(),
            Workload::Ext4Fio { job, .. } => format!("ext4-{}", job.id()),
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match *self {
            Workload::Convert { direct, size } => format!(
                "qemu-img convert {} random raw → target, {}",
                size_long(size),
                if direct { "-t none" } else { "default cache" }
            ),
            Workload::Dd { write, size } => {
                let (rw, flag) = if write { ("write", "o") } else { ("read", "i") };
                format!("dd {rw} {} bs=1M {flag}flag=direct", size_long(size))
            }
            Workload::Fio(job) => job.describe(),
            Workload::Ext4Fio { job, file_size } => format!(
                "{} on a {} file in ext4 on a direct-I/O loop device",
                job.describe(),
                size_long(file_size)
            ),
        }
    }

    /// The fio job, on the bare target or on ext4.
    pub fn fio_job(&self) -> Option<&FioJob> {
        match self {
            Workload::Fio(job) | Workload::Ext4Fio { job, .. } => Some(job),
            _ => None,
        }
    }

    pub fn metric(&self) -> Metric {
        let small_blocks = |job: &FioJob| job.block_size <= IOPS_BLOCK_SIZE_LIMIT;
        match self {
            Workload::Convert { .. } => Metric::Seconds,
            _ if self.fio_job().is_some_and(small_blocks) => Metric::Iops,
            _ => Metric::MibPerSec,
        }
    }

    /// The programs the workload needs.
    pub fn tools(&self) -> &'static [&'static str] {
        match self {
            Workload::Convert { .. } => &["qemu-img"],
            Workload::Dd { .. } => &["dd"],
            Workload::Fio(_) => &["fio"],
            Workload::Ext4Fio { .. } => &["fio", "losetup", "mkfs.ext4"],
        }
    }

    /// A rough duration for the plan's time estimate (plain-file speed on a
    /// virtio disk; exports take longer, which `Target::slowdown` adds).
    fn estimate_secs(&self) -> f64 {
        let copy_secs = |bytes: u64, gib_per_sec: f64| bytes as f64 / (gib_per_sec * GIB as f64);
        match *self {
            Workload::Convert { size, .. } => copy_secs(size, 1.2),
            Workload::Dd { size, .. } => copy_secs(size, 1.5),
            Workload::Fio(job) => f64::from(job.runtime_secs) + 0.3,
            // mkfs, fio's layout of the file, unmount.
            Workload::Ext4Fio { job, file_size } => {
                f64::from(job.runtime_secs) + 2.0 + copy_secs(file_size, 0.5)
            }
        }
    }
}

/// `bytes` as a count of the largest unit (B, KiB, MiB, GiB) that divides it.
fn scaled(bytes: u64) -> (u64, usize) {
    let (mut count, mut unit) = (bytes, 0);
    while unit < 3 && count >= 1024 && count.is_multiple_of(1024) {
        count /= 1024;
        unit += 1;
    }
    (count, unit)
}

/// `4k`, `64k`, `1M`: the short form used in ids.
pub fn size_short(bytes: u64) -> String {
    let (count, unit) = scaled(bytes);
    format!("{count}{}", ["", "k", "M", "G"][unit])
}

/// `4 GiB`, `512 MiB`: the long form used in prose.
pub fn size_long(bytes: u64) -> String {
    let (count, unit) = scaled(bytes);
    format!("{count} {}", ["B", "KiB", "MiB", "GiB"][unit])
}

/// A workload of the knob sweeps and allocation probes, sized by the
/// settings: an io_uring fio job (pattern, block size, iodepth) or a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preset {
    Fio(Pattern, u64, u32),
    ConvertDirect,
    DdWrite,
}

/// Sequential fio jobs share one queue depth so block sizes compare.
const SEQ_IODEPTH: u32 = 16;
const RAND_READ: Preset = Preset::Fio(Pattern::RandRead, 4 * KIB, 32);
const RAND_WRITE: Preset = Preset::Fio(Pattern::RandWrite, 4 * KIB, 32);
const RAND_READ_QD1: Preset = Preset::Fio(Pattern::RandRead, 4 * KIB, 1);
const RAND_WRITE_QD1: Preset = Preset::Fio(Pattern::RandWrite, 4 * KIB, 1);
const RAND_READ_QD4: Preset = Preset::Fio(Pattern::RandRead, 4 * KIB, 4);
const RAND_RW70: Preset = Preset::Fio(Pattern::RandRw70, 4 * KIB, 32);
const SEQ_READ_1M: Preset = Preset::Fio(Pattern::SeqRead, MIB, SEQ_IODEPTH);
const SEQ_WRITE_64K: Preset = Preset::Fio(Pattern::SeqWrite, 64 * KIB, SEQ_IODEPTH);
const SEQ_WRITE_1M: Preset = Preset::Fio(Pattern::SeqWrite, MIB, SEQ_IODEPTH);
const CONVERT_DIRECT: Preset = Preset::ConvertDirect;
const DD_WRITE: Preset = Preset::DdWrite;

impl Preset {
    fn workload(self, settings: &Settings) -> Workload {
        let size = settings.knob_copy_size;
        match self {
            Preset::Fio(pattern, block_size, iodepth) => {
                Workload::Fio(settings.fio(pattern, block_size, iodepth, Engine::IoUring))
            }
            Preset::ConvertDirect => Workload::Convert { direct: true, size },
            Preset::DdWrite => Workload::Dd { write: true, size },
        }
    }
}

/// A server option the lab sets: swept in a `knob-<name>` group, and for
/// transport and queue depth also settable for every workload (`--transport`,
/// `--queue-depth`).
#[derive(Debug, PartialEq, Eq)]
pub struct Knob {
    /// Also the server's option, with `-` for `_`.
    pub name: &'static str,
    /// Its name in target labels, e.g. `o_direct` in
    /// `fuse-export[o_direct=parallel-chunks]`.
    label: &'static str,
    /// What it does, for the report.
    pub about: &'static str,
    /// Values the full run sweeps, and `--quick` (none: not swept there).
    values: &'static [&'static str],
    quick_values: &'static [&'static str],
    /// The workloads that show its effect; `--quick` runs the first.
    workloads: &'static [Preset],
    /// The one transport the option acts on, if it acts on one only: the
    /// sweep runs every fuse-export variant with that transport, since on
    /// another it would repeat one server under several labels.
    transport: Option<&'static str>,
}

impl Knob {
    /// The server's option, e.g. `--queue-depth`.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }

    /// A value as target labels show it: `+` keeps spill tier lists free of
    /// the commas that separate options, and max_write reads like the block
    /// sizes of workload ids (`4k`).
    fn shown(&self, value: &str) -> String {
        match self.name {
            "spill_tiers" => value.replace(',', "+"),
            "max_write" => value.replace('K', "k"),
            _ => value.to_string(),
        }
    }
}

pub static TRANSPORT: &Knob = &KNOBS[0];
pub static QUEUE_DEPTH: &Knob = &KNOBS[1];
pub static QUEUES: &Knob = &KNOBS[3];
pub static MAX_WRITE: &Knob = &KNOBS[4];

pub static KNOBS: [Knob; 10] = [
    Knob {
        name: "transport",
        label: "transport",
        about: "how requests reach the server: readv on /dev/fuse, FUSE-over-io_uring \
                (uring), or kernel passthrough to the image",
        // The transports the lab knows; the sweep adds every other one a
        // build's `--help` lists, and reports those it lacks as not run.
        values: &["readv", "uring", "passthrough"],
        quick_values: &[],
        // The last is the headline: passthrough takes the server off the
        // data path.
        workloads: &[RAND_READ, RAND_WRITE, SEQ_READ_1M, CONVERT_DIRECT],
        transport: None,
    },
    Knob {
        name: "queue_depth",
        label: "queue_depth",
        about: "requests each queue can hold at once (the server's --queue-depth)",
        // 8 (and 4) were clearly behind in 2026-12-07's runs; dropped to
        // keep the full plan under an hour.
        values: &["16", "32"],
        quick_values: &[],
        // 4k randwrite QD32 was swept on 2026-12-07 too (0.76x with both)
        // and gave its place to keep the full plan under an hour.
        workloads: &[RAND_READ, SEQ_READ_1M],
        transport: Some("uring"),
    },
    Knob {
        name: "o_direct_opens",
        label: "o_direct",
        about: "how O_DIRECT opens are served: parallel-writers (FOPEN_DIRECT_IO: writers \
                run concurrently, but the kernel sends the max_write pieces of one large \
                request one after the other) or parallel-chunks (the kernel's O_DIRECT path \
                sends the pieces of a large request together)",
        values: &["parallel-writers", "parallel-chunks"],
        quick_values: &["parallel-writers", "parallel-chunks"],
        workloads: &[CONVERT_DIRECT, DD_WRITE, RAND_WRITE, SEQ_WRITE_1M],
        transport: None,
    },
    Knob {
        name: "queues",
        label: "queues",
        about: "queue threads, each with its own /dev/fuse fd and io_uring",
        values: &["1", "2", "4"],
        quick_values: &["1", "2"],
        workloads: &[RAND_READ, RAND_WRITE],
        transport: Some("readv"),
    },
    Knob {
        name: "max_write",
        label: "max_write",
        about: "largest WRITE (and READ) the kernel sends; larger client I/O is split",
        values: &["4K", "64K", "1M"],
        quick_values: &["64K", "1M"],
        workloads: &[DD_WRITE, CONVERT_DIRECT],
        transport: None,
    },
    Knob {
        name: "spill_tiers",
        label: "spill",
        about: "how the spill-over buffer behind each posted read is cut into tiers; \
                a write only takes the tiers it fills",
        // 64K is the server's default layout, `none` a single tier. A third
        // layout, 16K,64K,256K, was no different on 2026-12-07 and was
        // dropped to keep the full plan under an hour.
        values: &["none", "64K"],
        quick_values: &[],
        workloads: &[SEQ_WRITE_64K, SEQ_WRITE_1M],
        transport: Some("readv"),
    },
    Knob {
        name: "cache",
        label: "cache",
        about: "none = O_DIRECT on the image, writeback = host page cache",
        values: &["none", "writeback"],
        quick_values: &[],
        workloads: &[RAND_READ, SEQ_WRITE_1M],
        transport: None,
    },
    // `reads_per_queue` (2 / 8 / 32) was swept on 2026-11-26 and twice on
    // 2026-12-07, 2 ahead each time; it gave its place in the hour to:
    Knob {
        name: "standby_queues",
        label: "standby",
        about: "readv queues beyond the first post reads only while queue 0 has 2 or \
                more requests in progress (on) or always (off)",
        values: &["off", "on"],
        quick_values: &[],
        // Low depth is what it is for; QD4, where the second queue is called
        // in and stands down again, and QD32 are what it must not cost (the
        // matrix has every depth with the default, on). 4k randwrite QD4 was
        // level too (0.59x both, 5 repetitions, 2026-12-07) and gave its
        // place back to keep the full plan under an hour.
        workloads: &[RAND_READ_QD1, RAND_READ_QD4, RAND_READ],
        transport: Some("readv"),
    },
    Knob {
        name: "uring_wait_batch",
        label: "wait_batch",
        about: "ring queue threads with at least N requests in progress wait for N \
                completions at once (up to 50 µs) while completions come densely, \
                instead of waking for each",
        // 8 was no better than 4 in the run that measured it (2026-12-07).
        values: &["1", "4"],
        quick_values: &[],
        // The second shows that slow requests do not pay for it (a lone
        // request never waits for a batch: fewer than N in progress).
        workloads: &[RAND_READ, SEQ_READ_1M],
        transport: Some("uring"),
    },
    Knob {
        name: "uring_busy_poll",
        label: "busy_poll",
        about: "µs a ring queue polls for requests waiting on the image before it \
                sleeps (CPU time for latency)",
        // 100 was within the noise of 50 on 2026-12-07 (4k QD1 reads 0.84x
        // against 0.79x, writes 0.72x against 0.68x) for more CPU, and gave
        // its place to keep the full plan under an hour.
        values: &["0", "50"],
        quick_values: &[],
        // Low depth is where a wake-up per completion shows; the matrix
        // shows the rest.
        workloads: &[RAND_READ_QD1, RAND_WRITE_QD1],
        transport: Some("uring"),
    },
];

/// The lab's own default: 2 queues (one per core here, and the
/// configuration the idle-RSS goal names).
const LAB_DEFAULT_QUEUES: &str = "2";

/// Server options of one fuse-export target, in command-line order.
/// `--queues` is always given (the lab's default unless a knob changes it);
/// every other option is the server's default unless set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions(Vec<(&'static Knob, String)>);

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions(vec![(QUEUES, LAB_DEFAULT_QUEUES.into())])
    }
}

impl ServerOptions {
    /// These options with `knob` set to `value`.
    pub fn with(mut self, knob: &'static Knob, value: &str) -> ServerOptions {
        match self.0.iter_mut().find(|(k, _)| *k == knob) {
            Some((_, old)) => *old = value.into(),
            None => self.0.push((knob, value.into())),
        }
        self
    }

    pub fn get(&self, knob: &Knob) -> Option<&str> {
        let mut options = self.0.iter();
        options
            .find(|(k, _)| *k == knob)
            .map(|(_, value)| value.as_str())
    }

    pub fn args(&self) -> Vec<String> {
        let options = self.0.iter();
        options
            .flat_map(|(knob, value)| [knob.flag(), value.clone()])
            .collect()
    }

    /// `fuse-export`, or `fuse-export[queues=4,...]` with every option that
    /// differs from the lab default.
    pub fn label(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .filter(|(knob, value)| !(*knob == QUEUES && value == LAB_DEFAULT_QUEUES))
            .map(|(knob, value)| format!("{}={}", knob.label, knob.shown(value)))
            .collect();
        if parts.is_empty() {
            "fuse-export".into()
        } else {
            format!("fuse-export[{}]", parts.join(","))
        }
    }
}

/// Where a workload runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The image file itself: the baseline every ratio divides by.
    Plain,
    FuseExport(ServerOptions),
    /// qemu-storage-daemon's FUSE export (aio=io_uring, cache.direct=on).
    Qsd,
}

impl Target {
    pub fn label(&self) -> String {
        match self {
            Target::Plain => "plain".into(),
            Target::Qsd => "qsd".into(),
            Target::FuseExport(options) => options.label(),
        }
    }

    /// How much longer than plain a copy workload is assumed to take, for
    /// the time estimate only.
    fn slowdown(&self) -> f64 {
        match self {
            Target::Plain => 1.0,
            Target::FuseExport(options) if options.get(MAX_WRITE) == Some("4K") => 6.0,
            Target::FuseExport(_) => 1.5,
            Target::Qsd => 3.5,
        }
    }
}

/// One workload on a list of targets, plain first, repeated interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// `matrix`, or `knob-<name>` for a sweep.
    pub name: String,
    pub workload: Workload,
    pub targets: Vec<Target>,
}

impl Group {
    /// The id `--only` matches: `<group>/<workload>/<target>`.
    pub fn case_id(&self, target: &Target) -> String {
        format!("{}/{}/{}", self.name, self.workload.id(), target.label())
    }
}

/// A fio job run twice, short and long (`Settings::alloc_probe_secs`), on
/// a fuse-export built with `--features alloc-count`.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocProbe {
    pub job: FioJob,
    pub options: ServerOptions,
}

impl AllocProbe {
    pub fn case_id(&self) -> String {
        format!("alloc/{}/{}", self.job.id(), self.options.label())
    }
}

/// A part of the matrix that will not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub what: String,
    pub reason: String,
}

/// The options a server binary accepts and the values clap lists for them,
/// read from its `--help`; unknown when the binary is not built yet (a dry
/// run), and then every option and value is assumed to be there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerCapabilities {
    pub options: Option<BTreeMap<String, Vec<String>>>,
}

impl ServerCapabilities {
    /// Reads clap's long help: an option line (`  --transport <TRANSPORT>`,
    /// `  -h, --help`), then its description, where `Possible values:` is
    /// followed by one `- value: meaning` line per value.
    pub fn from_help(help: &str) -> ServerCapabilities {
        let mut options: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let (mut current, mut in_values) = (None, false);
        for line in help.lines().map(str::trim) {
            if line.starts_with('-') && !line.starts_with("- ") {
                current = line.split([' ', ',']).find(|word| word.starts_with("--"));
                in_values = false;
                if let Some(flag) = current {
                    options.entry(flag.into()).or_default();
                }
            } else if line == "Possible values:" {
                in_values = true;
            } else if let (Some(flag), Some(item), true) =
                (current, line.strip_prefix("- "), in_values)
            {
                let value = item.split(':').next().unwrap_or(item).trim();
                options.entry(flag.into()).or_default().push(value.into());
            }
        }
        ServerCapabilities {
            options: Some(options),
        }
    }

    /// Whether the server has the option `flag` (e.g. `--queues`).
    pub fn supports(&self, flag: &str) -> bool {
        self.options
            .as_ref()
            .is_none_or(|options| options.contains_key(flag))
    }

    /// Whether the server accepts `flag value`: it has the option, and
    /// `value` is one of its listed values if the help lists any.
    pub fn offers(&self, flag: &str, value: &str) -> bool {
        let values = self.values(flag);
        self.supports(flag) && (values.is_empty() || values.iter().any(|v| v == value))
    }

    /// The values the help lists for `flag` (none for free-form options).
    pub fn values(&self, flag: &str) -> &[String] {
        let values = self.options.as_ref().and_then(|options| options.get(flag));
        values.map_or(&[], Vec::as_slice)
    }
}

/// Everything one lab run does, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub settings: Settings,
    pub groups: Vec<Group>,
    pub alloc_probes: Vec<AllocProbe>,
    pub skipped: Vec<Skipped>,
}

/// Dropping caches, starting and stopping a server, spawning the client.
const OVERHEAD_PER_RUN: f64 = 1.5;
/// perf's start-up wait, writing its data and the two `perf report`s.
const PROFILE_REPORT_SECS: f64 = 8.0;

/// The workloads every main target runs.
fn matrix_workloads(settings: &Settings) -> Vec<Workload> {
    let size = settings.image_size;
    let fio = |pattern, block_size, iodepth, engine| {
        Workload::Fio(settings.fio(pattern, block_size, iodepth, engine))
    };
    let mut workloads = vec![
        Workload::Convert {
            direct: false,
            size,
        },
        Workload::Convert { direct: true, size },
        Workload::Dd { write: false, size },
        Workload::Dd { write: true, size },
    ];
    // IOPS against queue depth (io_uring draws the plot; libaio at the
    // depths the goals name), then throughput against block size.
    let (depths, libaio_depths, block_sizes): (&[u32], &[u32], &[u64]) = if settings.quick {
        (&[1, 32], &[32], &[64 * KIB, MIB])
    } else {
        (&[1, 4, 16, 32], &[1, 32], &[4 * KIB, 64 * KIB, MIB])
    };
    for pattern in [Pattern::RandRead, Pattern::RandWrite] {
        workloads.extend(
            depths
                .iter()
                .map(|&qd| fio(pattern, 4 * KIB, qd, Engine::IoUring)),
        );
        workloads.extend(
            libaio_depths
                .iter()
                .map(|&qd| fio(pattern, 4 * KIB, qd, Engine::Libaio)),
        );
    }
    for pattern in [Pattern::SeqRead, Pattern::SeqWrite] {
        let jobs = block_sizes
            .iter()
            .map(|&bs| fio(pattern, bs, SEQ_IODEPTH, Engine::IoUring));
        workloads.extend(jobs);
    }
    workloads.push(RAND_RW70.workload(settings));
    for pattern in [Pattern::RandWrite, Pattern::RandRead] {
        workloads.push(Workload::Ext4Fio {
            job: settings.fio(pattern, 4 * KIB, 32, Engine::IoUring),
            // A quarter of the image: the filesystem has room and fio's
            // layout of the file stays short.
            file_size: size / 4,
        });
    }
    workloads
}

impl Plan {
    /// The plan for `settings`, with fuse-export run once per entry of
    /// `variants` (the lab default alone unless `--transport` or
    /// `--queue-depth` ask for more). Knobs or values the server does not
    /// offer are listed in `skipped` instead of silently missing.
    pub fn build(
        settings: &Settings,
        capabilities: &ServerCapabilities,
        variants: &[ServerOptions],
    ) -> Plan {
        let mut plan = Plan {
            settings: settings.clone(),
            groups: Vec::new(),
            alloc_probes: Vec::new(),
            skipped: Vec::new(),
        };
        let fuse_exports = variants.iter().cloned().map(Target::FuseExport);
        let targets: Vec<Target> = std::iter::once(Target::Plain)
            .chain(fuse_exports)
            .chain([Target::Qsd])
            .collect();
        for workload in matrix_workloads(settings) {
            plan.groups.push(Group {
                name: "matrix".into(),
                workload,
                targets: targets.clone(),
            });
        }
        for knob in &KNOBS {
            plan.sweep(knob, capabilities, variants);
        }
        let probes: &[Preset] = if settings.quick {
            &[RAND_WRITE, SEQ_WRITE_1M]
        } else {
            &[RAND_READ, RAND_WRITE, SEQ_READ_1M, SEQ_WRITE_1M, RAND_RW70]
        };
        for job in probes
            .iter()
            .filter_map(|p| p.workload(settings).fio_job().copied())
        {
            let job = FioJob {
                runtime_secs: settings.alloc_probe_secs.1,
                ..job
            };
            let probes = variants.iter().map(|options| AllocProbe {
                job,
                options: options.clone(),
            });
            plan.alloc_probes.extend(probes);
        }
        plan
    }

    /// Adds the groups of one knob's sweep: each of its values on every
    /// variant, next to plain.
    fn sweep(
        &mut self,
        knob: &'static Knob,
        capabilities: &ServerCapabilities,
        variants: &[ServerOptions],
    ) {
        let flag = knob.flag();
        let quick = self.settings.quick;
        let own = if quick {
            knob.quick_values
        } else {
            knob.values
        };
        let mut values: Vec<String> = own.iter().map(|v| v.to_string()).collect();
        let mut skip = |what: String, reason: String| self.skipped.push(Skipped { what, reason });
        if values.is_empty() {
            let reason = "not swept in --quick (the full run sweeps it)".into();
            return skip(format!("knob {}", knob.name), reason);
        }
        if !capabilities.supports(&flag) {
            let reason = format!("this fuse-export build has no {flag} option");
            return skip(format!("knob {}", knob.name), reason);
        }
        if knob == TRANSPORT {
            // Every transport the server lists, so a new one needs no change
            // here; `auto` picks one of the others (the matrix runs it).
            for offered in capabilities.values(&flag) {
                if !values.contains(offered) && offered != "auto" {
                    values.push(offered.clone());
                }
            }
        }
        let mut targets = vec![Target::Plain];
        for value in values {
            if !capabilities.offers(&flag, &value) {
                let reason = format!("this fuse-export build does not offer {flag} {value}");
                skip(format!("knob {}={value}", knob.name), reason);
                continue;
            }
            for variant in variants {
                let variant = match knob.transport {
                    // A variant without a transport serves with `auto`,
                    // which is readv.
                    Some("readv") if variant.get(TRANSPORT).is_none() => variant.clone(),
                    Some(transport) => variant.clone().with(TRANSPORT, transport),
                    None => variant.clone(),
                };
                let target = Target::FuseExport(variant.with(knob, &value));
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
        }
        let count = if quick { 1 } else { knob.workloads.len() };
        for preset in &knob.workloads[..count] {
            self.groups.push(Group {
                name: format!("knob-{}", knob.name),
                workload: preset.workload(&self.settings),
                targets: targets.clone(),
            });
        }
    }

    /// Keeps the cases whose id contains one of `patterns` (case-insensitive).
    /// A kept group always keeps its plain baseline, since every ratio needs
    /// it. No patterns keeps everything.
    pub fn filter(&mut self, patterns: &[String]) {
        if patterns.is_empty() {
            return;
        }
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_lowercase()).collect();
        let matches = |id: String| {
            let id = id.to_lowercase();
            patterns.iter().any(|pattern| id.contains(pattern.as_str()))
        };
        self.groups.retain_mut(|group| {
            let keep: Vec<bool> = group
                .targets
                .iter()
                .map(|target| matches(group.case_id(target)))
                .collect();
            let mut flags = keep.iter();
            group
                .targets
                .retain(|target| *flags.next().unwrap_or(&false) || *target == Target::Plain);
            keep.contains(&true)
        });
        self.alloc_probes.retain(|probe| matches(probe.case_id()));
    }

    /// Workload runs in total (every target, every repetition).
    pub fn run_count(&self) -> usize {
        let per_rep: usize = self.groups.iter().map(|group| group.targets.len()).sum();
        per_rep * self.settings.repetitions as usize
            + self.alloc_probes.len() * 2
            + self.profiled_runs().count()
    }

    /// The extra runs of `--profile`: each server target of each group.
    pub fn profiled_runs(&self) -> impl Iterator<Item = (&Group, &Target)> {
        let groups = if self.settings.profile {
            &self.groups[..]
        } else {
            &[]
        };
        groups.iter().flat_map(|group| {
            let servers = group.targets.iter().filter(|t| **t != Target::Plain);
            servers.map(move |target| (group, target))
        })
    }

    /// A rough duration of one run of `target` in `group`.
    pub fn run_estimate_secs(&self, group: &Group, target: &Target) -> f64 {
        let work = group.workload.estimate_secs();
        let slowdown = match group.workload {
            Workload::Convert { .. } | Workload::Dd { .. } => target.slowdown(),
            _ => 1.0,
        };
        work * slowdown + OVERHEAD_PER_RUN
    }

    /// A rough duration of the `--profile` run of `target` in `group`.
    pub fn profile_estimate_secs(&self, group: &Group, target: &Target) -> f64 {
        self.run_estimate_secs(group, target) + PROFILE_REPORT_SECS
    }

    /// A rough duration of both runs of an allocation probe.
    pub fn probe_estimate_secs(&self) -> f64 {
        let (short, long) = self.settings.alloc_probe_secs;
        f64::from(short + long) + 2.0 * OVERHEAD_PER_RUN
    }

    /// A rough duration of the whole plan, to decide whether to start it now.
    pub fn estimate_secs(&self) -> f64 {
        let repetitions = f64::from(self.settings.repetitions);
        let runs = self
            .groups
            .iter()
            .flat_map(|group| group.targets.iter().map(move |t| (group, t)));
        let groups: f64 = runs
            .map(|(group, target)| self.run_estimate_secs(group, target) * repetitions)
            .sum();
        let probes: f64 = self
            .alloc_probes
            .iter()
            .map(|_| self.probe_estimate_secs())
            .sum();
        let profiles: f64 = self
            .profiled_runs()
            .map(|(group, target)| self.profile_estimate_secs(group, target))
            .sum();
        groups + probes + profiles
    }

    /// The listing `--dry-run` prints.
    pub fn describe(&self) -> String {
        let settings = &self.settings;
        let mut out = format!(
            "lab plan ({}): {} repetition(s) interleaved per group, image {}, fio {} s per run\n",
            if settings.quick { "quick" } else { "full" },
            settings.repetitions,
            size_long(settings.image_size),
            settings.fio_runtime_secs,
        );
        let mut last_group = "";
        for group in &self.groups {
            if group.name != last_group {
                let _ = writeln!(out, "\n{}:", group.name);
                last_group = &group.name;
            }
            let workload = &group.workload;
            let _ = writeln!(out, "  {}  ({})", workload.id(), workload.describe());
            for target in &group.targets {
                let _ = writeln!(out, "    {}", group.case_id(target));
            }
        }
        if !self.alloc_probes.is_empty() {
            out.push_str(
                "\nalloc (fuse-export built with --features alloc-count; short and long run):\n",
            );
            let (short, long) = settings.alloc_probe_secs;
            for probe in &self.alloc_probes {
                let _ = writeln!(out, "  {}  ({short} s and {long} s)", probe.case_id());
            }
        }
        if settings.profile {
            let runs = self.profiled_runs().count();
            let _ = writeln!(
                out,
                "\nprofiled: {runs} more run(s), each server target of each group once under \
                 `perf record -a -g`"
            );
        }
        if !self.skipped.is_empty() {
            out.push_str("\nnot run:\n");
            for skipped in &self.skipped {
                let _ = writeln!(out, "  {}: {}", skipped.what, skipped.reason);
            }
        }
        let (runs, estimate) = (self.run_count(), Duration(self.estimate_secs()));
        let _ = writeln!(out, "\n{runs} runs, estimated {estimate}");
        out
    }
}

/// Seconds shown as `1h 02m`, `12m 30s` or `45 s`.
pub struct Duration(pub f64);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.max(0.0).round() as u64;
        let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
        if hours > 0 {
            write!(f, "{hours}h {minutes:02}m")
        } else if minutes > 0 {
            write!(f, "{minutes}m {seconds:02}s")
        } else {
            write!(f, "{seconds} s")
        }
    }
}
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The first group called `name` (a knob sweep has one per workload).
    fn group_named<'p>(plan: &'p Plan, name: &str) -> &'p Group {
        let found = plan.groups.iter().find(|g| g.name == name);
        found.unwrap_or_else(|| panic!("no group {name}"))
    }

    fn plan(quick: bool, capabilities: &ServerCapabilities) -> Plan {
        let variants = [ServerOptions::default()];
        Plan::build(&Settings::new(quick), capabilities, &variants)
    }

    fn full_plan() -> Plan {
        plan(false, &ServerCapabilities::default())
    }

    fn case_ids(plan: &Plan) -> Vec<String> {
        plan.groups
            .iter()
            .flat_map(|g| g.targets.iter().map(|t| g.case_id(t)))
            .collect()
    }

    /// A help text in clap's long format.
    fn help(options: &[(&str, &[&str])]) -> ServerCapabilities {
        let mut text = String::from("Usage: fuse-export [OPTIONS]\n\nOptions:\n");
        for (flag, values) in options {
            text.push_str(&format!("      {flag} <X>\n          What it does\n\n"));
            if !values.is_empty() {
                text.push_str("          Possible values:\n");
                for value in *values {
                    text.push_str(&format!("          - {value}: meaning\n"));
                }
            }
        }
        text.push_str("  -h, --help\n          Print help\n");
        ServerCapabilities::from_help(&text)
    }

    const NUMERIC_OPTIONS: [(&str, &[&str]); 5] = [
        ("--queues", &[]),
        ("--max-write", &[]),
        ("--spill-tiers", &[]),
        ("--cache", &["none", "writeback"]),
        ("--standby-queues", &["on", "off"]),
    ];

    #[test]
    fn every_group_starts_with_the_plain_baseline_and_ids_are_unique() {
        for quick in [true, false] {
            let plan = plan(quick, &ServerCapabilities::default());
            let mut ids = BTreeSet::new();
            for group in &plan.groups {
                assert_eq!(group.targets[0], Target::Plain, "{}", group.workload.id());
            }
            for id in case_ids(&plan) {
                assert!(ids.insert(id.clone()), "{id}");
            }
        }
    }

    #[test]
    fn full_plan_covers_the_issue_matrix() {
        let plan = full_plan();
        let ids = case_ids(&plan);
        for wanted in [
            "matrix/convert-cache/qsd",
            "matrix/convert-direct/fuse-export",
            "matrix/dd-read-1M/plain",
            "matrix/dd-write-1M/qsd",
            "matrix/fio-randread-4k-qd1-libaio/fuse-export",
            "matrix/fio-randwrite-4k-qd32-io_uring/qsd",
            "matrix/fio-read-64k-qd16-io_uring/fuse-export",
            "matrix/fio-write-1M-qd16-io_uring/fuse-export",
            "matrix/fio-randrw70-4k-qd32-io_uring/fuse-export",
            "matrix/ext4-fio-randwrite-4k-qd32-io_uring/plain",
            "matrix/ext4-fio-randread-4k-qd32-io_uring/qsd",
            "knob-transport/fio-randread-4k-qd32-io_uring/fuse-export[transport=uring]",
            "knob-queue_depth/fio-read-1M-qd16-io_uring/fuse-export[transport=uring,queue_depth=32]",
            "knob-queues/fio-randread-4k-qd32-io_uring/fuse-export[queues=4]",
            "knob-o_direct_opens/convert-direct/fuse-export[o_direct=parallel-chunks]",
            "knob-o_direct_opens/fio-randwrite-4k-qd32-io_uring/fuse-export[o_direct=parallel-writers]",
            "knob-max_write/dd-write-1M/fuse-export[max_write=4k]",
            "knob-spill_tiers/fio-write-64k-qd16-io_uring/fuse-export[spill=none]",
            "knob-spill_tiers/fio-write-64k-qd16-io_uring/fuse-export[spill=64K]",
            "knob-cache/fio-write-1M-qd16-io_uring/fuse-export[cache=writeback]",
            "knob-standby_queues/fio-randread-4k-qd1-io_uring/fuse-export[standby=off]",
            "knob-uring_wait_batch/fio-read-1M-qd16-io_uring/fuse-export[transport=uring,wait_batch=4]",
            "knob-uring_busy_poll/fio-randwrite-4k-qd1-io_uring/fuse-export[transport=uring,busy_poll=0]",
        ] {
            assert!(ids.iter().any(|id| id == wanted), "missing {wanted}");
        }
        assert!(plan.skipped.is_empty());
        assert!(
            plan.estimate_secs() < 60.0 * 60.0,
            "{}",
            Duration(plan.estimate_secs())
        );
    }

    #[test]
    fn profiling_adds_one_run_per_server_target() {
        let mut settings = Settings::new(true);
        let unprofiled = Plan::build(
            &settings,
            &ServerCapabilities::default(),
            &[ServerOptions::default()],
        );
        settings.profile = true;
        let profiled = Plan::build(
            &settings,
            &ServerCapabilities::default(),
            &[ServerOptions::default()],
        );
        let servers: usize = profiled
            .groups
            .iter()
            .map(|g| g.targets.iter().filter(|t| **t != Target::Plain).count())
            .sum();
        assert!(servers > 0);
        assert_eq!(profiled.profiled_runs().count(), servers);
        assert_eq!(unprofiled.profiled_runs().count(), 0);
        assert_eq!(profiled.run_count(), unprofiled.run_count() + servers);
        assert!(profiled.estimate_secs() > unprofiled.estimate_secs());
        assert!(
            profiled
                .describe()
                .contains(&format!("profiled: {servers} more run(s)"))
        );
        assert!(!unprofiled.describe().contains("profiled:"));
    }

    #[test]
    fn quick_plan_is_small() {
        let plan = plan(true, &ServerCapabilities::default());
        assert!(
            plan.estimate_secs() < 6.0 * 60.0,
            "{}",
            Duration(plan.estimate_secs())
        );
        assert!(plan.groups.iter().any(|g| g.name.starts_with("knob-")));
        assert!(
            plan.groups
                .iter()
                .any(|g| g.workload.id().starts_with("ext4-"))
        );
    }

    #[test]
    fn help_text_gives_options_and_their_values() {
        let capabilities = help(&[
            ("--transport", &["auto", "readv", "uring"]),
            ("--queues", &[]),
        ]);
        assert!(capabilities.supports("--queues"));
        assert!(capabilities.supports("--help"));
        assert!(!capabilities.supports("--cache"));
        assert_eq!(
            capabilities.values("--transport"),
            ["auto", "readv", "uring"]
        );
        assert!(capabilities.offers("--transport", "uring"));
        assert!(!capabilities.offers("--transport", "passthrough"));
        assert!(capabilities.offers("--queues", "7"));
        assert!(ServerCapabilities::default().offers("--anything", "at-all"));
    }

    #[test]
    fn missing_server_options_are_reported_not_dropped() {
        let plan = plan(false, &help(&NUMERIC_OPTIONS));
        assert!(!plan.groups.iter().any(|g| g.name == "knob-transport"));
        let reasons: Vec<&str> = plan.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "this fuse-export build has no --transport option",
                "this fuse-export build has no --queue-depth option",
                "this fuse-export build has no --o-direct-opens option",
                "this fuse-export build has no --uring-wait-batch option",
                "this fuse-export build has no --uring-busy-poll option"
            ]
        );
    }

    #[test]
    fn transports_come_from_the_lab_and_the_server() {
        let mut options = NUMERIC_OPTIONS.to_vec();
        options.push(("--transport", &["auto", "readv", "passthrough", "future"]));
        let plan = plan(false, &help(&options));
        let transport = group_named(&plan, "knob-transport");
        let labels: Vec<String> = transport.targets.iter().map(Target::label).collect();
        assert_eq!(
            labels,
            [
                "plain",
                "fuse-export[transport=readv]",
                "fuse-export[transport=passthrough]",
                "fuse-export[transport=future]"
            ]
        );
        let uring = plan
            .skipped
            .iter()
            .find(|s| s.what == "knob transport=uring")
            .unwrap();
        assert_eq!(
            uring.reason,
            "this fuse-export build does not offer --transport uring"
        );
    }

    #[test]
    fn variants_run_on_every_workload() {
        let variants: Vec<ServerOptions> = ["readv", "uring"]
            .iter()
            .map(|t| ServerOptions::default().with(TRANSPORT, t))
            .collect();
        let settings = Settings::new(false);
        let plan = Plan::build(&settings, &ServerCapabilities::default(), &variants);
        for group in plan.groups.iter().filter(|g| g.name != "knob-transport") {
            let labels: Vec<String> = group.targets.iter().map(Target::label).collect();
            let knob = KNOBS
                .iter()
                .find(|k| group.name == format!("knob-{}", k.name));
            match knob.and_then(|k| k.transport) {
                // A knob of one transport runs on that one only.
                Some(transport) => assert!(
                    labels[1..]
                        .iter()
                        .all(|l| l.contains(&format!("transport={transport}"))),
                    "{}: {labels:?}",
                    group.name
                ),
                None => assert!(
                    labels.iter().any(|l| l.contains("transport=uring")),
                    "{}: {labels:?}",
                    group.workload.id()
                ),
            }
        }
        let queues = group_named(&plan, "knob-queues");
        assert_eq!(queues.targets.len(), 1 + 3);
        assert!(
            queues
                .targets
                .contains(&Target::FuseExport(variants[0].clone().with(QUEUES, "4")))
        );
        let depth = group_named(&plan, "knob-queue_depth");
        assert_eq!(
            depth.targets.len(),
            1 + 2,
            "uring only: {:?}",
            depth.targets
        );
        // The transport sweep sets the transport itself: no duplicates.
        let sweep = group_named(&plan, "knob-transport");
        assert_eq!(sweep.targets.len(), 1 + TRANSPORT.values.len());
        assert_eq!(plan.alloc_probes.len(), 5 * 2);
        assert!(
            plan.alloc_probes[1]
                .case_id()
                .ends_with("[transport=uring]")
        );
    }

    #[test]
    fn filter_keeps_matching_cases_and_their_baseline() {
        let mut plan = full_plan();
        plan.filter(&["matrix/fio-RANDREAD-4k-qd32-io_uring/qsd".into()]);
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(plan.groups[0].targets, vec![Target::Plain, Target::Qsd]);
        assert!(plan.alloc_probes.is_empty());

        let mut plan = full_plan();
        plan.filter(&["knob-queues".into(), "alloc/".into()]);
        assert!(plan.groups.iter().all(|g| g.name == "knob-queues"));
        assert_eq!(plan.alloc_probes.len(), 5);

        let mut plan = full_plan();
        plan.filter(&["no such case".into()]);
        assert_eq!(plan.run_count(), 0);
    }

    #[test]
    fn server_arguments_follow_the_options() {
        let spill = KNOBS.iter().find(|k| k.name == "spill_tiers").unwrap();
        let options = ServerOptions::default()
            .with(MAX_WRITE, "64K")
            .with(spill, "16K,64K")
            .with(TRANSPORT, "uring");
        assert_eq!(
            options.args().join(" "),
            "--queues 2 --max-write 64K --spill-tiers 16K,64K --transport uring"
        );
        assert_eq!(
            options.label(),
            "fuse-export[max_write=64k,spill=16K+64K,transport=uring]"
        );
        assert_eq!(
            options.with(QUEUES, "1").label(),
            "fuse-export[queues=1,max_write=64k,spill=16K+64K,transport=uring]"
        );
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(size_short(4 * KIB), "4k");
        assert_eq!(size_short(MIB), "1M");
        assert_eq!(size_short(1000), "1000");
        assert_eq!(size_long(4 * GIB), "4 GiB");
        assert_eq!(size_long(1536 * KIB), "1536 KiB");
        assert_eq!(Duration(45.2).to_string(), "45 s");
        assert_eq!(Duration(750.0).to_string(), "12m 30s");
        assert_eq!(Duration(3720.0).to_string(), "1h 02m");
    }
}
