//! `fuse-export`: serve a raw disk image as a regular file over FUSE.
//!
//! The binary only parses arguments, sets up logging and signals, and wires
//! `blockdev` (the image) to `fuse-dev` (the kernel side).

#[cfg(feature = "alloc-count")]
mod alloc_count;
mod readiness;

use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use blockdev::{CacheMode, DirectOpens, Export, ExportOptions, Image, Locking};
use clap::{Parser, ValueEnum};
use fuse_dev::uring::ParamState;
use fuse_dev::{
    InitRequest, MountOptions, QueueConfig, RingQueueOptions, Running, Session, SpillLayout,
};
use readiness::PidFile;

/// The examples at the end of `--help` (the README has more).
const EXAMPLES: &str = "\
Examples:
  # Serve disk.raw as the file /mnt/disk.img until Ctrl-C, SIGTERM or umount
  fuse-export --image disk.raw --mount /mnt/disk.img

  # Read-only, as /mnt/images/disk.raw inside an existing directory
  fuse-export --image disk.raw --mount /mnt/images --read-only

  # In a script: the pidfile appears once the export can be used
  fuse-export --image disk.raw --mount /mnt/disk.img --pidfile /run/disk.pid &
  while [ ! -e /run/disk.pid ]; do kill -0 $! || exit 1; sleep 0.1; done";

/// Serve a raw disk image as a regular file through FUSE (io_uring, O_DIRECT).
#[derive(Debug, Parser)]
#[command(name = "fuse-export", version, about, after_help = EXAMPLES)]
struct Args {
    /// The raw image to serve: a regular file or a block device.
    #[arg(long, value_name = "PATH")]
    image: PathBuf,

    /// Where the image appears: an existing regular file, or a path in an
    /// existing directory (created as an empty file and removed on exit).
    #[arg(long = "mount", value_name = "PATH")]
    mountpoint: PathBuf,

    /// Export read-only (mounted `ro`; writes fail with EROFS).
    #[arg(long, conflicts_with = "growable")]
    read_only: bool,

    /// Writes past the end grow the image (otherwise they are short, and
    /// `dd` reports "No space left on device").
    #[arg(long)]
    growable: bool,

    /// Largest WRITE the kernel sends: bytes, or with a K/M suffix; a
    /// multiple of 4 KiB from 4K to 16M (capped by fs.fuse.max_pages_limit).
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_max_write)]
    max_write: usize,

    /// How requests reach this server: `auto` (readv, the lab's pick: see
    /// docs/performance.md), `uring` (FUSE-over-io_uring: one ring
    /// queue per CPU; needs /sys/module/fuse/parameters/enable_uring set to
    /// Y by the admin), `readv` (io_uring READV on /dev/fuse with spill-over
    /// buffers) or `passthrough` (the kernel does READ and WRITE on the image
    /// itself, through FUSE_PASSTHROUGH; needs root; size limits and
    /// alignment handling are then the image file's own: writes past the end
    /// grow it).
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,

    /// Ring entries per queue with FUSE-over-io_uring: requests each CPU's
    /// queue holds at once (each entry maps a payload buffer of max_write
    /// bytes, backed only while used).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    queue_depth: u16,

    /// FUSE-over-io_uring only: while completions come densely and at least
    /// N requests are in progress, a ring queue waits for N completions at
    /// once (for up to 50 µs, then takes what came) instead of waking for
    /// each; 1 wakes for each. The default, 4, was the lab's best at 4k
    /// queue depth 32 and costs slow (1 MiB) requests nothing
    /// (docs/performance.md).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    uring_wait_batch: u16,

    /// FUSE-over-io_uring only: while a lone request waits on the image, a
    /// ring queue polls up to this many microseconds for it before it
    /// sleeps, and sleeps at once for a while after a poll that came back
    /// empty; 0 never polls. Polling
    /// trades CPU time for latency at low queue depth: at 4k QD1, 50 µs
    /// (the default) took reads from 0.58x to 0.79x of the plain file for
    /// a third more CPU per request (docs/performance.md).
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 50, value_parser = clap::value_parser!(u16).range(0..=1000))]
    uring_busy_poll: u16,

    /// How opens with O_DIRECT are served: `parallel-writers` (writers on
    /// the file run concurrently; the kernel sends the max_write pieces of a
    /// larger request one after the other) or `parallel-chunks` (the pieces
    /// of a large request go out together, which speeds up `qemu-img convert
    /// -t none`; synchronous writers take turns, AIO/io_uring still overlap).
    #[arg(long, value_enum, default_value_t = DirectOpensArg::ParallelWriters)]
    o_direct_opens: DirectOpensArg,

    /// Host page cache use: `none` (O_DIRECT) or `writeback` (buffered).
    #[arg(long, value_enum, default_value_t = Cache::None)]
    cache: Cache,

    /// Mount through fusermount3 even when running as root.
    #[arg(long)]
    fusermount: bool,

    /// Let other users access the export (needs user_allow_other in
    /// /etc/fuse.conf when not root).
    #[arg(long)]
    allow_other: bool,

    /// Queue threads, each with its own /dev/fuse fd and io_uring
    /// [default: the number of CPUs, at most 16].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: Option<u16>,

    /// Reads kept posted on /dev/fuse per queue. Few is better: every posted
    /// read waits on the device, a new request wakes them all, and each one
    /// that loses the race costs a wasted attempt (the lab measured 2 ahead
    /// of 8 for small random I/O and equal for large I/O).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    reads_per_queue: u16,

    /// readv only: whether queues beyond the first wait for load. `on`:
    /// they post no reads until queue 0 has 2 requests in progress, and
    /// withdraw them once every queue is idle, so that at low queue depth
    /// one thread takes every request (each request wakes every posted
    /// read); `off`: every queue always reads.
    #[arg(long, value_enum, default_value_t = StandbyArg::On)]
    standby_queues: StandbyArg,

    /// Lock the image while it is exported, with QEMU's OFD byte-range
    /// locks (`on`): QEMU's tools then see it in use, and a second export is
    /// refused. `off` shares it with anyone, like QEMU's `locking=off`.
    #[arg(long, value_enum, default_value_t = LockingArg::On)]
    locking: LockingArg,

    /// Spill-over tier bounds as write sizes, e.g. `64K` or `64K,256K`: a
    /// write of up to the first bound takes only the first tier; `none`: no
    /// bound, one tier for every write that spills over.
    #[arg(long, value_name = "SIZES", value_parser = parse_spill_tiers)]
    spill_tiers: Option<SpillBounds>,

    /// Write the process id to PATH once the export is mounted and the
    /// kernel knows its size; removed at exit. (With NOTIFY_SOCKET set, as
    /// under systemd's Type=notify, READY=1 is sent at the same moment.)
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// The transport the lab measured best overall: readv (FUSE-over-io_uring
    /// is about level with it at queue depths 1-4 and slower from 16 on).
    Auto,
    /// FUSE-over-io_uring (IORING_OP_URING_CMD, so also accepted as
    /// uring-cmd): ring entries per CPU; this server does the image I/O.
    #[value(alias = "uring-cmd")]
    Uring,
    /// io_uring READV on /dev/fuse; this server does the image I/O.
    Readv,
    /// FUSE_PASSTHROUGH: the kernel does READ/WRITE on the image.
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DirectOpensArg {
    /// FOPEN_DIRECT_IO with parallel direct writes.
    ParallelWriters,
    /// The kernel's O_DIRECT path: a large request's pieces in parallel.
    ParallelChunks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StandbyArg {
    /// Queues beyond the first read only under load.
    On,
    /// Every queue always reads.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LockingArg {
    /// Take QEMU's image locks; refuse an image in use.
    On,
    /// Take and check no locks.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Cache {
    /// O_DIRECT on the image.
    None,
    /// Buffered I/O on the image; FLUSH and FSYNC call fdatasync.
    Writeback,
}

fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let multiplier: usize = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        _ => return Err(format!("unknown size suffix {unit:?} (use K or M)")),
    };
    let value: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The tier bounds `--spill-tiers` asks for (none: one tier).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpillBounds(Vec<usize>);

/// `--spill-tiers`: `none`, or sizes separated by commas.
fn parse_spill_tiers(text: &str) -> Result<SpillBounds, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(SpillBounds(Vec::new()));
    }
    text.split(',')
        .map(parse_size)
        .collect::<Result<_, _>>()
        .map(SpillBounds)
}

fn parse_max_write(text: &str) -> Result<usize, String> {
    let bytes = parse_size(text)?;
    if bytes % 4096 != 0 || !(4096..=16 << 20).contains(&bytes) {
        return Err(format!(
            "{bytes} is not a multiple of 4096 between 4K and 16M"
        ));
    }
    Ok(bytes)
}

/// An error for the user: one line, then exit code 2 (bad input) or 1.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 2,
        }
    }
    fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

fn main() -> ExitCode {
    // A re-executed copy of this program that unmounts after a crash.
    if let Some(code) = fuse_dev::watcher::run_if_requested() {
        return code;
    }
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            writeln!(
                buf,
                "fuse-export: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("fuse-export: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// A mountpoint file this process created; removed when dropped.
struct CreatedMountpoint(PathBuf);

impl Drop for CreatedMountpoint {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.0) {
            log::warn!("removing {}: {err}", self.0.display());
        }
    }
}

/// What kind of mountpoint the export sits on.
enum Mountpoint {
    /// A regular file: the mount root is the image. A file this process
    /// created is removed when this value drops.
    File { _created: Option<CreatedMountpoint> },
    /// A directory: the image appears in it under its own file name.
    Directory,
}

/// Checks the mountpoint; creates it if missing.
fn prepare_mountpoint(path: &Path) -> Result<Mountpoint, Failure> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(Mountpoint::File { _created: None }),
        Ok(meta) if meta.is_dir() => Ok(Mountpoint::Directory),
        Ok(_) => Err(Failure::usage(format!(
            "mountpoint {}: is not a regular file",
            path.display()
        ))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(Failure::usage(format!(
                    "mountpoint {}: directory {} does not exist",
                    path.display(),
                    parent.display()
                )));
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|err| {
                    Failure::usage(format!(
                        "mountpoint {}: cannot create it: {err}",
                        path.display()
                    ))
                })?;
            Ok(Mountpoint::File {
                _created: Some(CreatedMountpoint(path.to_path_buf())),
            })
        }
        Err(err) => Err(Failure::usage(format!(
            "mountpoint {}: {err}",
            path.display()
        ))),
    }
}

fn run(args: Args) -> Result<(), Failure> {
    // A dead mount of a crashed server would fail every step below.
    for path in [&args.mountpoint, &args.image] {
        fuse_dev::stale::clear_dead_mounts(path).map_err(|err| Failure::usage(err.to_string()))?;
    }
    let cache = match args.cache {
        Cache::None => CacheMode::None,
        Cache::Writeback => CacheMode::Writeback,
    };
    let image = Image::open(&args.image, args.read_only, cache)
        .map_err(|err| Failure::usage(err.to_string()))?;
    if args.growable && !image.resizable() {
        return Err(Failure::usage(format!(
            "image {}: is a block device, which cannot grow; --growable needs a regular file",
            args.image.display()
        )));
    }
    let locking = match args.locking {
        LockingArg::On => Locking::On,
        LockingArg::Off => Locking::Off,
    };
    image
        .lock_for_export(locking)
        .map_err(|err| Failure::usage(format!("{err}; --locking off exports it anyway")))?;
    let max_pages_limit = fuse_dev::init::max_pages_limit();
    let max_write = args
        .max_write
        .min(max_pages_limit as usize * fuse_dev::PAGE_SIZE);
    let capped = (max_write < args.max_write).then(|| {
        format!(
            "--max-write {} capped to {max_write} by fs.fuse.max_pages_limit={max_pages_limit}",
            args.max_write
        )
    });
    // Checked against the max_write the kernel will allow, before mounting.
    if let Some(SpillBounds(bounds)) = &args.spill_tiers {
        SpillLayout::new(max_write, bounds).map_err(|err| {
            let why = capped
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            Failure::usage(format!("--spill-tiers: {err}{why}"))
        })?;
    }
    if let Some(capped) = &capped {
        log::info!("{capped}");
    }
    // Before anything is mounted: a pidfile that cannot be written is a
    // usage error, not something a script finds out by waiting forever.
    let mut pidfile = args
        .pidfile
        .as_deref()
        .map(PidFile::prepare)
        .transpose()
        .map_err(Failure::usage)?;
    // Before anything is mounted: an explicit uring the kernel does not
    // offer is bad input.
    let want_uring = match args.transport {
        Transport::Uring => {
            uring_offered(fuse_dev::uring::param_state())
                .map_err(|why| Failure::usage(format!("--transport uring: {why}")))?;
            true
        }
        // The lab's pick (docs/performance.md): readv, also where the
        // kernel offers FUSE-over-io_uring, so uring is not asked for.
        Transport::Auto | Transport::Readv | Transport::Passthrough => false,
    };
    let mountpoint = prepare_mountpoint(&args.mountpoint)?;
    let directory_entry = match &mountpoint {
        Mountpoint::File { .. } => None,
        Mountpoint::Directory => {
            let name = args.image.file_name().ok_or_else(|| {
                Failure::usage(format!("image {}: has no file name", args.image.display()))
            })?;
            Some(name.as_encoded_bytes().to_vec())
        }
    };
    // The file clients use: the mount root, or the image's entry in it.
    let exported_file = match &directory_entry {
        Some(name) => args.mountpoint.join(std::ffi::OsStr::from_bytes(name)),
        None => args.mountpoint.clone(),
    };

    // Signals first, so that a Ctrl-C during start-up still ends cleanly.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|err| Failure::runtime(format!("installing signal handlers: {err}")))?;
    let signal_handle = signals.handle();
    let (signal_tx, signal_rx) = crossbeam_channel::bounded::<i32>(4);
    let signal_thread = std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_tx.send(signal).is_err() {
                break;
            }
        }
    });

    let mount_options = MountOptions {
        mountpoint: args.mountpoint.clone(),
        fsname: args.image.display().to_string(),
        read_only: args.read_only,
        allow_other: args.allow_other,
        force_fusermount: args.fusermount,
        root_is_dir: directory_entry.is_some(),
        max_read: max_write as u32,
        auto_unmount: true,
    };
    let init = InitRequest {
        max_write: max_write as u32,
        max_background: 256,
        extra_flags: if want_uring {
            fuse_proto::flags::InitFlags::OVER_IO_URING
        } else {
            fuse_proto::flags::InitFlags::EMPTY
        },
        max_pages_limit,
        passthrough: args.transport == Transport::Passthrough,
    };
    let mut session = Session::mount(&mount_options, &init)
        .map_err(|err| Failure::usage(format!("mounting {}: {err}", args.mountpoint.display())))?;
    let negotiated = *session.negotiated();
    let serve_uring = match args.transport {
        Transport::Uring if !negotiated.uring_granted() => {
            // Switched off between the check and the mount. (Dropping the
            // session unmounts.)
            return Err(Failure::usage(format!(
                "--transport uring: the kernel did not offer FUSE-over-io_uring at INIT; \
                 is {} still Y?",
                fuse_dev::uring::PARAM_PATH
            )));
        }
        Transport::Uring => true,
        Transport::Auto => {
            if fuse_dev::uring::param_state() == ParamState::On {
                log::info!(
                    "--transport auto serves with readv, also where the kernel offers \
                     FUSE-over-io_uring: in the lab uring was faster only at queue depths of 1 to \
                     4 and slower from 16 on (docs/performance.md); --transport uring serves \
                     with it"
                );
            }
            false
        }
        Transport::Readv | Transport::Passthrough => false,
    };
    let max_write = negotiated.max_write as usize;
    let layout = match &args.spill_tiers {
        Some(SpillBounds(bounds)) => SpillLayout::new(max_write, bounds)
            .map_err(|err| Failure::usage(format!("--spill-tiers: {err}")))?,
        None => SpillLayout::default_for(max_write),
    };
    let reads = args.reads_per_queue as usize;
    let config = QueueConfig {
        reads,
        max_in_flight: reads * 8 + 128,
        layout: layout.clone(),
        pool_cap: reads * 4 + 64,
        standby: args.standby_queues == StandbyArg::On,
    };
    let passthrough = match args.transport {
        Transport::Auto | Transport::Uring | Transport::Readv => None,
        // FUSE_DEV_IOC_BACKING_OPEN refuses a block device (EINVAL on 6.18).
        Transport::Passthrough if image.is_block_device() => {
            log::warn!(
                "passthrough needs a regular file as the image, not a block device; \
                 serving READ/WRITE with readv"
            );
            None
        }
        Transport::Passthrough => match session.open_backing(image.as_fd()) {
            Ok(backing_id) => Some(backing_id),
            Err(err) => {
                log::warn!("passthrough unavailable ({err}); serving READ/WRITE with readv");
                None
            }
        },
    };
    if directory_entry.is_some() {
        // The kernel learns the size from a stat of the file, not the directory.
        session.set_stat_path(exported_file.clone());
    }
    let options = ExportOptions {
        growable: args.growable,
        allow_other: args.allow_other,
        passthrough,
        directory_entry,
        direct_opens: match args.o_direct_opens {
            DirectOpensArg::ParallelWriters => DirectOpens::ParallelWriters,
            DirectOpensArg::ParallelChunks => DirectOpens::ParallelChunks,
        },
    };
    let export = Export::new(image, max_write, options);
    let backing = vec![export.image().raw_fd()];
    let factory_export = export.clone();
    let started = if serve_uring {
        let ring_queues = fuse_dev::uring::cpus::possible_cpus()
            .map_err(|err| Failure::runtime(format!("starting queues: {err}")))?;
        if let Some(queues) = args.queues {
            log::info!(
                "--queues {queues} does not apply to FUSE-over-io_uring: the kernel has one \
                 ring queue per possible CPU ({ring_queues})"
            );
        }
        let depth = args.queue_depth as usize;
        session
            .start_uring(
                RingQueueOptions {
                    depth,
                    wait_batch: args.uring_wait_batch as usize,
                    busy_poll: Duration::from_micros(args.uring_busy_poll.into()),
                },
                config,
                backing,
                move |context| factory_export.queue_handler(context),
            )
            .map(|running| {
                let transport = format!(
                    "FUSE-over-io_uring, {} of {depth} {} each (one per CPU), \
                     and /dev/fuse for interrupts and forgets",
                    plural(ring_queues, "ring queue", "ring queues"),
                    if depth == 1 { "entry" } else { "entries" },
                );
                (running, transport)
            })
    } else {
        let queues = match args.queues {
            Some(queues) => queues as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(16)),
        };
        let standby = match (config.standby, queues) {
            (false, _) | (_, 1) => "",
            (true, 2) => " (the second only under load)",
            (true, _) => " (all but the first only under load)",
        };
        session
            .start(queues, config, backing, move |context| {
                factory_export.queue_handler(context)
            })
            .map(|running| {
                let transport = format!(
                    "readv, {} with {} each{standby}, {}",
                    plural(queues, "queue", "queues"),
                    plural(reads, "posted read", "posted reads"),
                    describe_spill_over(&layout, max_write),
                );
                (running, transport)
            })
    };
    let (running, transport) =
        started.map_err(|err| Failure::runtime(format!("starting queues: {err}")))?;
    let image = export.image();
    log::info!(
        "serving {} ({} bytes; {}) at {}: writes of up to {}; {transport}",
        image.path().display(),
        image.size(),
        describe_image(image, args.growable, passthrough.is_some()),
        args.mountpoint.display(),
        describe_size(max_write),
    );

    // Session::start has stat'ed the exported file, so the kernel knows its
    // size; only now may anyone be told to use it.
    let status = format!(
        "serving {} at {}",
        image.path().display(),
        exported_file.display()
    );
    let startup_failure = announce_ready(&running, pidfile.as_mut(), &status).err();
    if startup_failure.is_none() {
        crossbeam_channel::select! {
            recv(signal_rx) -> signal => {
                if let Ok(signal) = signal {
                    let name = match signal {
                        signal_hook::consts::SIGINT => "SIGINT",
                        signal_hook::consts::SIGTERM => "SIGTERM",
                        _ => "a signal",
                    };
                    log::info!("{name}: finishing requests in flight and unmounting");
                }
            }
            recv(running.ended()) -> _ => log::info!("connection ended; shutting down"),
        }
    }
    // The lab's steady state ends here: the shutdown that follows allocates
    // a little differently from one run to the next (which queue sees the
    // unmount first, which threads end when).
    #[cfg(feature = "alloc-count")]
    alloc_count::log_totals("allocations while serving");
    readiness::notify_stopping();
    let result = running.shutdown();
    signal_handle.close();
    let _ = signal_thread.join();
    let synced = export.image().sync();
    export.image().release_export_lock();
    drop(mountpoint);
    drop(pidfile);
    if let Some(failure) = startup_failure {
        return Err(failure);
    }
    let reports = result.map_err(|err| Failure::runtime(format!("serving failed: {err}")))?;
    for report in &reports {
        log::debug!("{report:?}");
    }
    #[cfg(feature = "alloc-count")]
    alloc_count::log_totals("allocations");
    synced.map_err(|err| Failure::runtime(format!("flushing the image: {err}")))?;
    Ok(())
}

/// Checks that the export answered its stat after start (made from the
/// unmount watcher, never from this process: see fuse_dev::watcher), then
/// publishes the pidfile and tells the service manager.
fn announce_ready(
    running: &Running,
    pidfile: Option<&mut PidFile>,
    status: &str,
) -> Result<(), Failure> {
    running
        .export_answered()
        .map_err(|err| Failure::runtime(format!("the export does not answer: {err}")))?;
    if let Some(pidfile) = pidfile {
        pidfile.publish().map_err(|err| {
            Failure::runtime(format!(
                "writing pidfile {}: {err}",
                pidfile.path().display()
            ))
        })?;
    }
    readiness::notify_ready(status);
    Ok(())
}

/// How the image is served, in words: "O_DIRECT, 512-byte alignment,
/// growable".
fn describe_image(image: &Image, growable: bool, passthrough: bool) -> String {
    let mut traits = vec![if image.is_direct() {
        format!("O_DIRECT, {}-byte alignment", image.alignment())
    } else {
        "buffered".to_string()
    }];
    if image.is_block_device() {
        traits.push("block device".into());
    }
    if image.is_read_only() {
        traits.push("read-only".into());
    }
    if growable {
        traits.push("growable".into());
    }
    if passthrough {
        traits.push("passthrough".into());
    }
    traits.join(", ")
}

/// `bytes` as "1 MiB", "64 KiB" or "1000 bytes".
fn describe_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The spill-over layout in words, as the write sizes each tier serves:
/// "spill-over in 2 tiers, for writes of up to 64 KiB and 1 MiB".
fn describe_spill_over(layout: &SpillLayout, max_write: usize) -> String {
    // A write's payload fills the in-place page first, then tier by tier.
    let mut reach = fuse_dev::PAGE_SIZE;
    let bounds: Vec<String> = layout
        .tiers()
        .iter()
        .map(|tier| {
            reach += tier;
            describe_size(reach.min(max_write))
        })
        .collect();
    match bounds.as_slice() {
        [] => "no spill-over".to_string(),
        [only] => format!("spill-over in 1 tier, for writes of up to {only}"),
        [first @ .., last] => format!(
            "spill-over in {} tiers, for writes of up to {} and {last}",
            bounds.len(),
            first.join(", ")
        ),
    }
}

/// `count` with the singular or plural noun: "1 queue", "2 queues".
fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// Whether new mounts are offered FUSE-over-io_uring; if not, why, and how
/// to turn it on, in one line.
fn uring_offered(state: ParamState) -> Result<(), String> {
    let path = fuse_dev::uring::PARAM_PATH;
    match state {
        ParamState::On => Ok(()),
        ParamState::Off => Err(format!(
            "the kernel does not offer FUSE-over-io_uring: {path} is N \
             (to turn it on, as root: echo Y > {path})"
        )),
        ParamState::Missing => Err(format!(
            "this kernel has no FUSE-over-io_uring: {path} does not exist \
             (it needs Linux 6.14 or later built with CONFIG_FUSE_IO_URING)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uring_switch_is_explained_in_one_line() {
        assert_eq!(uring_offered(ParamState::On), Ok(()));
        let off = uring_offered(ParamState::Off).unwrap_err();
        assert!(
            off.contains("/sys/module/fuse/parameters/enable_uring is N"),
            "{off}"
        );
        assert!(off.contains("echo Y >"), "{off}");
        let missing = uring_offered(ParamState::Missing).unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
        assert!(!off.contains('\n') && !missing.contains('\n'));
        assert_eq!(plural(1, "queue", "queues"), "1 queue");
        assert_eq!(plural(2, "queue", "queues"), "2 queues");
    }

    #[test]
    fn sizes_accept_suffixes_and_reject_garbage() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("1G").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn spill_tiers_are_sizes_or_none() {
        assert_eq!(
            parse_spill_tiers("64K,256K"),
            Ok(SpillBounds(vec![65536, 262144]))
        );
        assert_eq!(parse_spill_tiers("None"), Ok(SpillBounds(Vec::new())));
        assert!(parse_spill_tiers("64K,").is_err());
        assert!(parse_spill_tiers("").is_err());
        let one_tier = SpillLayout::new(1 << 20, &parse_spill_tiers("none").unwrap().0).unwrap();
        assert_eq!(one_tier.tiers().len(), 1);
        // Through clap, as the server parses its command line.
        let args = Args::try_parse_from([
            "fuse-export",
            "--image",
            "i",
            "--mount",
            "m",
            "--spill-tiers",
            "16K,64K",
        ])
        .unwrap();
        assert_eq!(args.spill_tiers, Some(SpillBounds(vec![16384, 65536])));
    }

    #[test]
    fn spill_over_is_described_by_the_writes_each_tier_serves() {
        let layout = SpillLayout::default_for(1 << 20);
        assert_eq!(
            describe_spill_over(&layout, 1 << 20),
            "spill-over in 2 tiers, for writes of up to 64 KiB and 1 MiB"
        );
        let layout = SpillLayout::new(1 << 20, &[16 << 10, 256 << 10]).unwrap();
        assert_eq!(
            describe_spill_over(&layout, 1 << 20),
            "spill-over in 3 tiers, for writes of up to 16 KiB, 256 KiB and 1 MiB"
        );
        // The last tier may be larger than max_write needs (the kernel's
        // 8 KiB minimum read); it still serves writes of up to max_write.
        let layout = SpillLayout::default_for(4096);
        assert_eq!(
            describe_spill_over(&layout, 4096),
            "spill-over in 1 tier, for writes of up to 4 KiB"
        );
        assert_eq!(describe_size(1000), "1000 bytes");
        assert_eq!(describe_size(3 << 20), "3 MiB");
        assert_eq!(describe_size(1536 << 10), "1536 KiB");
    }

    #[test]
    fn max_write_must_be_page_multiple_in_range() {
        assert_eq!(parse_max_write("1M"), Ok(1 << 20));
        assert!(parse_max_write("1000").is_err());
        assert!(parse_max_write("0").is_err());
        assert!(parse_max_write("32M").is_err());
    }
}
