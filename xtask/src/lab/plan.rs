//! What the lab runs: workloads, targets, knob sweeps and allocation probes.
//!
//! The plan is pure data, built without touching the machine, so that
//! `--dry-run` (and the smoke test) can show it anywhere.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// `--quick` for development, or the full run whose results are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Quick,
    Full,
}

/// Sizes and durations of one lab run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    /// Each group runs its targets this many times, interleaved.
    pub repetitions: u32,
    /// The exported image; fio spans all of it.
    pub image_size: u64,
    /// Bytes `qemu-img convert` copies (the seed's headline is 4 GiB).
    pub convert_size: u64,
    /// Bytes one `dd` run moves.
    pub dd_size: u64,
    /// Bytes one `dd` or convert run moves in the knob sweeps, kept smaller
    /// because a 4 KiB max_write makes them slow.
    pub knob_copy_size: u64,
    /// Length of one fio run.
    pub fio_runtime_secs: u32,
    /// fio run lengths of an allocation probe: a short and a long run whose
    /// difference cancels start-up and warm-up allocations.
    pub alloc_probe_secs: (u32, u32),
}

impl Settings {
    pub fn for_mode(mode: Mode) -> Settings {
        match mode {
            Mode::Quick => Settings {
                mode,
                repetitions: 1,
                image_size: 512 * MIB,
                convert_size: 512 * MIB,
                dd_size: 512 * MIB,
                knob_copy_size: 256 * MIB,
                fio_runtime_secs: 2,
                alloc_probe_secs: (1, 3),
            },
            Mode::Full => Settings {
                mode,
                repetitions: 3,
                image_size: 4 * GIB,
                convert_size: 4 * GIB,
                dd_size: 4 * GIB,
                knob_copy_size: GIB,
                fio_runtime_secs: 6,
                alloc_probe_secs: (2, 6),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
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

    fn id(self) -> &'static str {
        match self {
            Pattern::RandRw70 => "randrw70",
            other => other.fio_rw(),
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

/// One fio job, always `--direct=1` over the whole image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FioJob {
    pub pattern: Pattern,
    pub block_size: u64,
    pub iodepth: u32,
    pub engine: Engine,
    pub runtime_secs: u32,
}

/// A client workload run against a target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `qemu-img convert -n` of a random raw image onto the target; `-t none`
    /// (O_DIRECT) when `direct`, else qemu-img's default cache (writeback
    /// plus a flush at the end).
    Convert {
        direct: bool,
        size: u64,
    },
    /// `dd bs=1M` with `iflag=direct` / `oflag=direct`.
    Dd {
        direction: Direction,
        size: u64,
    },
    Fio(FioJob),
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

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Seconds)
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
            Workload::Dd { direction, .. } => format!("dd-{}-1M", direction.name()),
            Workload::Fio(job) => format!(
                "fio-{}-{}-qd{}-{}",
                job.pattern.id(),
                size_short(job.block_size),
                job.iodepth,
                job.engine.fio_name()
            ),
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Workload::Convert { direct, size } => format!(
                "qemu-img convert {} random raw → target, {}",
                size_long(*size),
                if *direct { "-t none" } else { "default cache" }
            ),
            Workload::Dd { direction, size } => format!(
                "dd {} {} bs=1M {}",
                direction.name(),
                size_long(*size),
                match direction {
                    Direction::Read => "iflag=direct",
                    Direction::Write => "oflag=direct",
                }
            ),
            Workload::Fio(job) => format!(
                "fio {} bs={} iodepth={} {} direct=1, {} s",
                job.pattern.fio_rw(),
                size_short(job.block_size),
                job.iodepth,
                job.engine.fio_name(),
                job.runtime_secs
            ),
        }
    }

    pub fn metric(&self) -> Metric {
        match self {
            Workload::Convert { .. } => Metric::Seconds,
            Workload::Dd { .. } => Metric::MibPerSec,
            Workload::Fio(job) if job.block_size <= IOPS_BLOCK_SIZE_LIMIT => Metric::Iops,
            Workload::Fio(_) => Metric::MibPerSec,
        }
    }

    /// The client program the workload needs.
    pub fn tool(&self) -> &'static str {
        match self {
            Workload::Convert { .. } => "qemu-img",
            Workload::Dd { .. } => "dd",
            Workload::Fio(_) => "fio",
        }
    }

    /// A rough duration for the plan's time estimate (plain-file speed on a
    /// virtio disk; exports take longer, which `Target::slowdown` adds).
    fn estimate_secs(&self) -> f64 {
        match self {
            Workload::Convert { size, .. } => *size as f64 / (1.2 * GIB as f64),
            Workload::Dd { size, .. } => *size as f64 / (1.5 * GIB as f64),
            Workload::Fio(job) => f64::from(job.runtime_secs) + 0.3,
        }
    }
}

/// `4k`, `64k`, `1M`: the short form used in ids.
pub fn size_short(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{}G", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{}M", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{}k", bytes / KIB)
    } else {
        bytes.to_string()
    }
}

/// `4 GiB`, `512 MiB`: the long form used in prose.
pub fn size_long(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// `--cache` of fuse-export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    None,
    Writeback,
}

impl CacheMode {
    fn name(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
        }
    }
}

/// Server options of one fuse-export target. `None` leaves the server's
/// default; the lab's own default is 2 queues (one per core here, and the
/// configuration the idle-RSS goal names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    pub queues: u16,
    pub transport: Option<&'static str>,
    /// `--o-direct-opens`: how the export serves O_DIRECT opens.
    pub direct_opens: Option<&'static str>,
    pub max_write: Option<u64>,
    pub spill_tiers: Option<&'static str>,
    pub cache: Option<CacheMode>,
    pub reads_per_queue: Option<u16>,
}

pub const LAB_DEFAULT_QUEUES: u16 = 2;

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            queues: LAB_DEFAULT_QUEUES,
            transport: None,
            direct_opens: None,
            max_write: None,
            spill_tiers: None,
            cache: None,
            reads_per_queue: None,
        }
    }
}

impl ServerOptions {
    /// The command-line options, in the order the server documents them.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--queues".to_string(), self.queues.to_string()];
        if let Some(transport) = self.transport {
            args.extend(["--transport".into(), transport.into()]);
        }
        if let Some(mode) = self.direct_opens {
            args.extend(["--o-direct-opens".into(), mode.into()]);
        }
        if let Some(max_write) = self.max_write {
            args.extend(["--max-write".into(), size_short(max_write).to_uppercase()]);
        }
        if let Some(tiers) = self.spill_tiers {
            args.extend(["--spill-tiers".into(), tiers.into()]);
        }
        if let Some(cache) = self.cache {
            args.extend(["--cache".into(), cache.name().into()]);
        }
        if let Some(reads) = self.reads_per_queue {
            args.extend(["--reads-per-queue".into(), reads.to_string()]);
        }
        args
    }

    /// The options that differ from the lab default, e.g. `queues=4`.
    fn variations(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if self.queues != LAB_DEFAULT_QUEUES {
            parts.push(format!("queues={}", self.queues));
        }
        if let Some(transport) = self.transport {
            parts.push(format!("transport={transport}"));
        }
        if let Some(mode) = self.direct_opens {
            parts.push(format!("o_direct={mode}"));
        }
        if let Some(max_write) = self.max_write {
            parts.push(format!("max_write={}", size_short(max_write)));
        }
        if let Some(tiers) = self.spill_tiers {
            // '+' keeps labels free of the commas that separate CSV fields.
            parts.push(format!("spill={}", tiers.replace(',', "+")));
        }
        if let Some(cache) = self.cache {
            parts.push(format!("cache={}", cache.name()));
        }
        if let Some(reads) = self.reads_per_queue {
            parts.push(format!("reads={reads}"));
        }
        parts
    }

    /// Option values that are names (not numbers), as `(option, value)`:
    /// a server build may offer the option without every value.
    fn named_values(&self) -> Vec<(&'static str, &'static str)> {
        let mut values = Vec::new();
        if let Some(transport) = self.transport {
            values.push(("--transport", transport));
        }
        if let Some(mode) = self.direct_opens {
            values.push(("--o-direct-opens", mode));
        }
        values
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
            Target::FuseExport(options) => {
                let variations = options.variations();
                if variations.is_empty() {
                    "fuse-export".into()
                } else {
                    format!("fuse-export[{}]", variations.join(","))
                }
            }
        }
    }

    /// How much longer than plain a copy workload is assumed to take, for
    /// the time estimate only.
    fn slowdown(&self) -> f64 {
        match self {
            Target::Plain => 1.0,
            Target::FuseExport(options) if options.max_write == Some(4 * KIB) => 6.0,
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

/// A fio job run twice on a fuse-export built with `--features alloc-count`.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocProbe {
    pub job: FioJob,
    pub short_secs: u32,
    pub long_secs: u32,
}

impl AllocProbe {
    pub fn case_id(&self) -> String {
        format!("alloc/{}/fuse-export", Workload::Fio(self.job).id())
    }
}

/// A part of the matrix that will not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub what: String,
    pub reason: String,
}

/// A swept server option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knob {
    pub name: &'static str,
    /// The server option it needs.
    pub flag: &'static str,
    /// What it does, for the report.
    pub about: &'static str,
}

pub const KNOBS: [Knob; 7] = [
    Knob {
        name: "transport",
        flag: "--transport",
        about: "how requests reach the server: readv on /dev/fuse, FUSE-over-io_uring \
                (uring-cmd), or kernel passthrough to the image",
    },
    Knob {
        name: "o_direct_opens",
        flag: "--o-direct-opens",
        about: "how O_DIRECT opens are served: parallel-writers (FOPEN_DIRECT_IO: writers \
                run concurrently, but the kernel sends the max_write pieces of one large \
                request one after the other) or parallel-chunks (the kernel's O_DIRECT path \
                sends the pieces of a large request together)",
    },
    Knob {
        name: "queues",
        flag: "--queues",
        about: "queue threads, each with its own /dev/fuse fd and io_uring",
    },
    Knob {
        name: "max_write",
        flag: "--max-write",
        about: "largest WRITE (and READ) the kernel sends; larger client I/O is split",
    },
    Knob {
        name: "spill_tiers",
        flag: "--spill-tiers",
        about: "how the spill-over buffer behind each posted read is cut into tiers; \
                a write only takes the tiers it fills",
    },
    Knob {
        name: "cache",
        flag: "--cache",
        about: "none = O_DIRECT on the image, writeback = host page cache",
    },
    Knob {
        name: "reads_per_queue",
        flag: "--reads-per-queue",
        about: "reads kept posted on /dev/fuse per queue (requests the kernel can hand \
                over without waiting)",
    },
];

/// The options a server binary accepts, read from its `--help`; unknown
/// when the binary is not built yet (dry run), then everything is assumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerCapabilities {
    /// Every word of the help text (options, and the possible values clap
    /// lists for them).
    pub words: Option<BTreeSet<String>>,
}

impl ServerCapabilities {
    pub fn from_help(help: &str) -> ServerCapabilities {
        let words = help
            .split(|c: char| c.is_whitespace() || matches!(c, ',' | '=' | '[' | ']' | '`'))
            .map(|word| word.trim_end_matches(|c: char| !c.is_alphanumeric()))
            .filter(|word| !word.is_empty())
            .map(str::to_string)
            .collect();
        ServerCapabilities { words: Some(words) }
    }

    /// Whether the server has the option `flag` (e.g. `--queues`).
    pub fn supports(&self, flag: &str) -> bool {
        self.words.as_ref().is_none_or(|words| words.contains(flag))
    }

    /// Whether the help text names `value` (e.g. a `--transport` value).
    pub fn mentions(&self, value: &str) -> bool {
        self.words
            .as_ref()
            .is_none_or(|words| words.contains(value))
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

fn fio(
    settings: &Settings,
    pattern: Pattern,
    block_size: u64,
    iodepth: u32,
    engine: Engine,
) -> Workload {
    Workload::Fio(FioJob {
        pattern,
        block_size,
        iodepth,
        engine,
        runtime_secs: settings.fio_runtime_secs,
    })
}

/// Dropping caches, starting and stopping a server, spawning the client.
const OVERHEAD_PER_RUN: f64 = 1.5;

/// Sequential fio jobs share one queue depth so block sizes compare.
const SEQ_IODEPTH: u32 = 16;

/// The workloads every main target runs.
fn matrix_workloads(settings: &Settings) -> Vec<Workload> {
    let quick = settings.mode == Mode::Quick;
    let mut workloads = vec![
        Workload::Convert {
            direct: false,
            size: settings.convert_size,
        },
        Workload::Convert {
            direct: true,
            size: settings.convert_size,
        },
        Workload::Dd {
            direction: Direction::Read,
            size: settings.dd_size,
        },
        Workload::Dd {
            direction: Direction::Write,
            size: settings.dd_size,
        },
    ];
    // IOPS against queue depth (io_uring draws the plot; libaio at the two
    // depths the goals name).
    let depths: &[u32] = if quick { &[1, 32] } else { &[1, 4, 16, 32] };
    for pattern in [Pattern::RandRead, Pattern::RandWrite] {
        for &depth in depths {
            workloads.push(fio(settings, pattern, 4 * KIB, depth, Engine::IoUring));
        }
        let libaio_depths: &[u32] = if quick { &[32] } else { &[1, 32] };
        for &depth in libaio_depths {
            workloads.push(fio(settings, pattern, 4 * KIB, depth, Engine::Libaio));
        }
    }
    // Throughput against block size.
    let block_sizes: &[u64] = if quick {
        &[64 * KIB, MIB]
    } else {
        &[4 * KIB, 64 * KIB, MIB]
    };
    for pattern in [Pattern::SeqRead, Pattern::SeqWrite] {
        for &block_size in block_sizes {
            workloads.push(fio(
                settings,
                pattern,
                block_size,
                SEQ_IODEPTH,
                Engine::IoUring,
            ));
        }
    }
    workloads.push(fio(
        settings,
        Pattern::RandRw70,
        4 * KIB,
        32,
        Engine::IoUring,
    ));
    workloads
}

/// The values a knob sweeps and the workloads that show its effect.
fn knob_sweep(knob: &Knob, settings: &Settings) -> Option<(Vec<ServerOptions>, Vec<Workload>)> {
    let quick = settings.mode == Mode::Quick;
    let randread_qd32 = fio(settings, Pattern::RandRead, 4 * KIB, 32, Engine::IoUring);
    let randwrite_qd32 = fio(settings, Pattern::RandWrite, 4 * KIB, 32, Engine::IoUring);
    let base = ServerOptions::default();
    let sweep = match knob.name {
        "transport" if !quick => (
            ["readv", "uring-cmd", "passthrough"]
                .map(|transport| ServerOptions {
                    transport: Some(transport),
                    ..base.clone()
                })
                .to_vec(),
            vec![
                randread_qd32,
                randwrite_qd32,
                fio(
                    settings,
                    Pattern::SeqRead,
                    MIB,
                    SEQ_IODEPTH,
                    Engine::IoUring,
                ),
                // The headline: passthrough takes the server off the data path.
                Workload::Convert {
                    direct: true,
                    size: settings.knob_copy_size,
                },
            ],
        ),
        "o_direct_opens" => {
            let mut workloads = vec![Workload::Convert {
                direct: true,
                size: settings.knob_copy_size,
            }];
            if !quick {
                workloads.extend([
                    Workload::Dd {
                        direction: Direction::Write,
                        size: settings.knob_copy_size,
                    },
                    randwrite_qd32,
                    fio(
                        settings,
                        Pattern::SeqWrite,
                        MIB,
                        SEQ_IODEPTH,
                        Engine::IoUring,
                    ),
                ]);
            }
            (
                ["parallel-writers", "parallel-chunks"]
                    .map(|mode| ServerOptions {
                        direct_opens: Some(mode),
                        ..base.clone()
                    })
                    .to_vec(),
                workloads,
            )
        }
        "queues" => {
            let counts: &[u16] = if quick { &[1, 2] } else { &[1, 2, 4] };
            let workloads = if quick {
                vec![randread_qd32]
            } else {
                vec![randread_qd32, randwrite_qd32]
            };
            (
                counts
                    .iter()
                    .map(|&queues| ServerOptions {
                        queues,
                        ..base.clone()
                    })
                    .collect(),
                workloads,
            )
        }
        "max_write" => {
            let sizes: &[u64] = if quick {
                &[64 * KIB, MIB]
            } else {
                &[4 * KIB, 64 * KIB, MIB]
            };
            let mut workloads = vec![Workload::Dd {
                direction: Direction::Write,
                size: settings.knob_copy_size,
            }];
            if !quick {
                workloads.push(Workload::Convert {
                    direct: true,
                    size: settings.knob_copy_size,
                });
            }
            (
                sizes
                    .iter()
                    .map(|&size| ServerOptions {
                        max_write: Some(size),
                        ..base.clone()
                    })
                    .collect(),
                workloads,
            )
        }
        "spill_tiers" if !quick => (
            // 64K is the server's default layout, 1M a single tier.
            ["1M", "64K", "16K,64K,256K"]
                .map(|tiers| ServerOptions {
                    spill_tiers: Some(tiers),
                    ..base.clone()
                })
                .to_vec(),
            vec![
                fio(
                    settings,
                    Pattern::SeqWrite,
                    64 * KIB,
                    SEQ_IODEPTH,
                    Engine::IoUring,
                ),
                fio(
                    settings,
                    Pattern::SeqWrite,
                    MIB,
                    SEQ_IODEPTH,
                    Engine::IoUring,
                ),
            ],
        ),
        "cache" if !quick => (
            [CacheMode::None, CacheMode::Writeback]
                .map(|cache| ServerOptions {
                    cache: Some(cache),
                    ..base.clone()
                })
                .to_vec(),
            vec![
                randread_qd32,
                fio(
                    settings,
                    Pattern::SeqWrite,
                    MIB,
                    SEQ_IODEPTH,
                    Engine::IoUring,
                ),
            ],
        ),
        "reads_per_queue" if !quick => (
            [2, 8, 32]
                .map(|reads| ServerOptions {
                    reads_per_queue: Some(reads),
                    ..base.clone()
                })
                .to_vec(),
            vec![randread_qd32, randwrite_qd32],
        ),
        _ => return None,
    };
    Some(sweep)
}

impl Plan {
    /// The plan for `settings`; knobs the server does not offer are listed
    /// in `skipped` instead of silently missing.
    pub fn build(settings: &Settings, capabilities: &ServerCapabilities) -> Plan {
        let mut groups = Vec::new();
        let mut skipped = Vec::new();
        for workload in matrix_workloads(settings) {
            groups.push(Group {
                name: "matrix".into(),
                workload,
                targets: vec![
                    Target::Plain,
                    Target::FuseExport(ServerOptions::default()),
                    Target::Qsd,
                ],
            });
        }
        for knob in &KNOBS {
            let Some((mut variants, workloads)) = knob_sweep(knob, settings) else {
                skipped.push(Skipped {
                    what: format!("knob {}", knob.name),
                    reason: "not swept in --quick (the full run sweeps it)".into(),
                });
                continue;
            };
            if !capabilities.supports(knob.flag) {
                skipped.push(Skipped {
                    what: format!("knob {}", knob.name),
                    reason: format!("this fuse-export build has no {} option", knob.flag),
                });
                continue;
            }
            variants.retain(|options| {
                let missing = options
                    .named_values()
                    .into_iter()
                    .find(|(_, value)| !capabilities.mentions(value));
                if let Some((flag, value)) = missing {
                    skipped.push(Skipped {
                        what: format!("knob {}={value}", knob.name),
                        reason: format!("this fuse-export build does not offer {flag} {value}"),
                    });
                }
                missing.is_none()
            });
            for workload in workloads {
                let mut targets = vec![Target::Plain];
                targets.extend(variants.iter().cloned().map(Target::FuseExport));
                groups.push(Group {
                    name: format!("knob-{}", knob.name),
                    workload,
                    targets,
                });
            }
        }
        let probe_jobs: Vec<(Pattern, u64, u32)> = if settings.mode == Mode::Quick {
            vec![
                (Pattern::RandWrite, 4 * KIB, 32),
                (Pattern::SeqWrite, MIB, SEQ_IODEPTH),
            ]
        } else {
            vec![
                (Pattern::RandRead, 4 * KIB, 32),
                (Pattern::RandWrite, 4 * KIB, 32),
                (Pattern::SeqRead, MIB, SEQ_IODEPTH),
                (Pattern::SeqWrite, MIB, SEQ_IODEPTH),
                (Pattern::RandRw70, 4 * KIB, 32),
            ]
        };
        let alloc_probes = probe_jobs
            .into_iter()
            .map(|(pattern, block_size, iodepth)| AllocProbe {
                job: FioJob {
                    pattern,
                    block_size,
                    iodepth,
                    engine: Engine::IoUring,
                    runtime_secs: settings.alloc_probe_secs.1,
                },
                short_secs: settings.alloc_probe_secs.0,
                long_secs: settings.alloc_probe_secs.1,
            })
            .collect();
        Plan {
            settings: settings.clone(),
            groups,
            alloc_probes,
            skipped,
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
        let matches = |id: &str| {
            let id = id.to_lowercase();
            patterns.iter().any(|pattern| id.contains(pattern.as_str()))
        };
        self.groups.retain_mut(|group| {
            let keep: Vec<bool> = group
                .targets
                .iter()
                .map(|target| matches(&group.case_id(target)))
                .collect();
            if !keep.contains(&true) {
                return false;
            }
            let mut flags = keep.into_iter();
            group
                .targets
                .retain(|target| flags.next().unwrap_or(false) || *target == Target::Plain);
            true
        });
        self.alloc_probes.retain(|probe| matches(&probe.case_id()));
    }

    /// Workload runs in total (every target, every repetition).
    pub fn run_count(&self) -> usize {
        let per_rep: usize = self.groups.iter().map(|group| group.targets.len()).sum();
        per_rep * self.settings.repetitions as usize + self.alloc_probes.len() * 2
    }

    /// A rough duration of one run of `target` in `group`.
    pub fn run_estimate_secs(&self, group: &Group, target: &Target) -> f64 {
        let work = match group.workload {
            Workload::Fio(_) => group.workload.estimate_secs(),
            _ => group.workload.estimate_secs() * target.slowdown(),
        };
        work + OVERHEAD_PER_RUN
    }

    /// A rough duration of the whole plan, to decide whether to start it now.
    pub fn estimate_secs(&self) -> f64 {
        let mut total = 0.0;
        for group in &self.groups {
            for target in &group.targets {
                total +=
                    self.run_estimate_secs(group, target) * f64::from(self.settings.repetitions);
            }
        }
        for probe in &self.alloc_probes {
            total += f64::from(probe.short_secs + probe.long_secs) + 2.0 * OVERHEAD_PER_RUN;
        }
        total
    }

    /// The listing `--dry-run` prints.
    pub fn describe(&self) -> String {
        let settings = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "lab plan ({}): {} repetition(s) interleaved per group, image {}, fio {} s per run",
            match settings.mode {
                Mode::Quick => "quick",
                Mode::Full => "full",
            },
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
            let _ = writeln!(
                out,
                "  {}  ({})",
                group.workload.id(),
                group.workload.describe()
            );
            for target in &group.targets {
                let _ = writeln!(out, "    {}", group.case_id(target));
            }
        }
        if !self.alloc_probes.is_empty() {
            let _ = writeln!(
                out,
                "\nalloc (fuse-export built with --features alloc-count; short and long run):"
            );
            for probe in &self.alloc_probes {
                let _ = writeln!(
                    out,
                    "  {}  ({} s and {} s)",
                    probe.case_id(),
                    probe.short_secs,
                    probe.long_secs
                );
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\nnot run:");
            for skipped in &self.skipped {
                let _ = writeln!(out, "  {}: {}", skipped.what, skipped.reason);
            }
        }
        let _ = writeln!(
            out,
            "\n{} runs, estimated {}",
            self.run_count(),
            Duration(self.estimate_secs())
        );
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
    use super::*;

    fn full_plan() -> Plan {
        Plan::build(
            &Settings::for_mode(Mode::Full),
            &ServerCapabilities::default(),
        )
    }

    #[test]
    fn every_group_starts_with_the_plain_baseline_and_ids_are_unique() {
        for mode in [Mode::Quick, Mode::Full] {
            let plan = Plan::build(&Settings::for_mode(mode), &ServerCapabilities::default());
            let mut ids = BTreeSet::new();
            for group in &plan.groups {
                assert_eq!(group.targets[0], Target::Plain, "{}", group.workload.id());
                for target in &group.targets {
                    assert!(
                        ids.insert(group.case_id(target)),
                        "{}",
                        group.case_id(target)
                    );
                }
            }
        }
    }

    #[test]
    fn full_plan_covers_the_issue_matrix() {
        let plan = full_plan();
        let ids: Vec<String> = plan
            .groups
            .iter()
            .flat_map(|g| g.targets.iter().map(|t| g.case_id(t)))
            .collect();
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
            "knob-transport/fio-randread-4k-qd32-io_uring/fuse-export[transport=uring-cmd]",
            "knob-queues/fio-randread-4k-qd32-io_uring/fuse-export[queues=4]",
            "knob-o_direct_opens/convert-direct/fuse-export[o_direct=parallel-chunks]",
            "knob-o_direct_opens/fio-randwrite-4k-qd32-io_uring/fuse-export[o_direct=parallel-writers]",
            "knob-max_write/dd-write-1M/fuse-export[max_write=4k]",
            "knob-spill_tiers/fio-write-64k-qd16-io_uring/fuse-export[spill=1M]",
            "knob-cache/fio-write-1M-qd16-io_uring/fuse-export[cache=writeback]",
            "knob-reads_per_queue/fio-randwrite-4k-qd32-io_uring/fuse-export[reads=32]",
        ] {
            assert!(ids.iter().any(|id| id == wanted), "missing {wanted}");
        }
        assert!(plan.skipped.is_empty());
        assert!(
            plan.estimate_secs() < 55.0 * 60.0,
            "{}",
            Duration(plan.estimate_secs())
        );
    }

    #[test]
    fn quick_plan_is_small() {
        let plan = Plan::build(
            &Settings::for_mode(Mode::Quick),
            &ServerCapabilities::default(),
        );
        assert!(
            plan.estimate_secs() < 6.0 * 60.0,
            "{}",
            Duration(plan.estimate_secs())
        );
        assert!(plan.groups.iter().any(|g| g.name.starts_with("knob-")));
    }

    #[test]
    fn missing_server_options_are_reported_not_dropped() {
        let capabilities = ServerCapabilities::from_help(
            "Usage: fuse-export [OPTIONS] --image <PATH>\n  --queues <N>\n  --max-write <BYTES>\n\
             --spill-tiers <SIZES>\n  --cache <CACHE>\n  --reads-per-queue <N>\n  -h, --help",
        );
        assert!(capabilities.supports("--queues"));
        assert!(!capabilities.supports("--transport"));
        let plan = Plan::build(&Settings::for_mode(Mode::Full), &capabilities);
        assert!(!plan.groups.iter().any(|g| g.name == "knob-transport"));
        let reasons: Vec<&str> = plan.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "this fuse-export build has no --transport option",
                "this fuse-export build has no --o-direct-opens option"
            ]
        );

        let capabilities = ServerCapabilities::from_help(
            "--queues <N>\n--transport <TRANSPORT>\n  Possible values:\n  - readv: x\n  \
             - passthrough: y\n--o-direct-opens <MODE>\n  parallel-writers, parallel-chunks\n\
             --max-write\n--spill-tiers\n--cache\n--reads-per-queue",
        );
        let plan = Plan::build(&Settings::for_mode(Mode::Full), &capabilities);
        let transport = plan
            .groups
            .iter()
            .find(|g| g.name == "knob-transport")
            .unwrap();
        let labels: Vec<String> = transport.targets.iter().map(Target::label).collect();
        assert_eq!(
            labels,
            [
                "plain",
                "fuse-export[transport=readv]",
                "fuse-export[transport=passthrough]"
            ]
        );
        assert_eq!(plan.skipped.len(), 1);
        assert!(plan.skipped[0].what.contains("uring-cmd"));
    }

    #[test]
    fn filter_keeps_matching_cases_and_their_baseline() {
        let mut plan = full_plan();
        plan.filter(&["RANDREAD-4k-qd32-io_uring/qsd".into()]);
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
        let options = ServerOptions {
            max_write: Some(64 * KIB),
            spill_tiers: Some("16K,64K"),
            cache: Some(CacheMode::Writeback),
            reads_per_queue: Some(4),
            ..ServerOptions::default()
        };
        assert_eq!(
            options.args().join(" "),
            "--queues 2 --max-write 64K --spill-tiers 16K,64K --cache writeback --reads-per-queue 4"
        );
        assert_eq!(
            Target::FuseExport(options).label(),
            "fuse-export[max_write=64k,spill=16K+64K,cache=writeback,reads=4]"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(Duration(45.2).to_string(), "45 s");
        assert_eq!(Duration(750.0).to_string(), "12m 30s");
        assert_eq!(Duration(3720.0).to_string(), "1h 02m");
    }
}
