//! `cargo xtask lab`: the performance lab, where every performance claim
//! comes from (docs/performance.md describes it for users).
//!
//! Each case runs a client workload (qemu-img convert, dd, fio on the
//! target or on ext4 over it) on a target (the plain image file,
//! fuse-export with some options, or qemu-storage-daemon's FUSE export) and
//! is reported as a ratio to the plain file measured in the same
//! repetition: these machines are noisy, so targets are interleaved,
//! repeated, and summarised by median and spread.
//!
//! - [`plan`]: what runs (pure data; `--dry-run` prints it)
//! - [`runner`]: runs it, one fresh server per run, with progress lines
//! - [`target`], [`workload`], [`fio`], [`loop_fs`], [`host`]: servers,
//!   clients, the machine
//! - [`profile`]: `--profile`, perf profiles of extra runs
//! - [`results`], [`report`], [`plot`]: numbers to files

mod fio;
mod host;
mod loop_fs;
pub mod plan;
mod plot;
mod profile;
mod report;
mod results;
mod runner;
mod target;
mod workload;

use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;

use plan::{Duration, GIB, MIB, Plan, QUEUE_DEPTH, ServerCapabilities, ServerOptions};
use plan::{Settings, TRANSPORT, Target, Workload, size_long};
use results::{LabResults, RunContext};
use runner::{Runner, Workspace};

/// Options of `cargo xtask lab`.
#[derive(Debug, Clone, Default, Args)]
pub struct LabArgs {
    /// Small images, short runs, one repetition, three knobs: a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Print the plan (every case id and the estimated time) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Run only cases whose id (`group/workload/target`, see --dry-run)
    /// contains PATTERN, case-insensitive; repeatable. The plain baseline of
    /// a selected case always runs.
    #[arg(long, value_name = "PATTERN")]
    pub only: Vec<String>,
    /// Repetitions per case [default: 3, or 1 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repetitions: Option<u32>,
    /// Seconds per fio run [default: 6, or 2 with --quick].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=600))]
    pub fio_runtime: Option<u32>,
    /// Use this fuse-export binary instead of building target/release/fuse-export.
    #[arg(long, value_name = "PATH")]
    pub server: Option<PathBuf>,
    /// Use this `--features alloc-count` build instead of building one.
    #[arg(long, value_name = "PATH")]
    pub alloc_server: Option<PathBuf>,
    /// Run every fuse-export target with `--transport T`, once per value
    /// (comma-separated or repeated) [default: the server's default].
    #[arg(long, value_name = "T", value_delimiter = ',')]
    pub transport: Vec<String>,
    /// Run every fuse-export target with `--queue-depth N`, once per value
    /// (comma-separated or repeated; combined with each --transport).
    #[arg(long, value_name = "N", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_depth: Vec<u32>,
    /// After the repetitions of each case, run each server target once
    /// more under `perf record -a -g` (not counted in the numbers) and put
    /// where the time went in the report (needs perf: package linux-perf).
    #[arg(long)]
    pub profile: bool,
}

impl LabArgs {
    fn settings(&self) -> Settings {
        let mut settings = Settings::new(self.quick);
        settings.repetitions = self.repetitions.unwrap_or(settings.repetitions);
        settings.fio_runtime_secs = self.fio_runtime.unwrap_or(settings.fio_runtime_secs);
        settings.profile = self.profile;
        settings
    }

    /// The fuse-export options every workload runs with: one per
    /// combination of `--transport` and `--queue-depth` values.
    fn variants(&self) -> Vec<ServerOptions> {
        let queue_depths = self.queue_depth.iter().map(u32::to_string).collect();
        let mut variants = vec![ServerOptions::default()];
        for (knob, values) in [
            (TRANSPORT, self.transport.clone()),
            (QUEUE_DEPTH, queue_depths),
        ] {
            if !values.is_empty() {
                variants = variants
                    .iter()
                    .flat_map(|v| values.iter().map(|value| v.clone().with(knob, value)))
                    .collect();
            }
        }
        variants
    }
}

/// The plan these arguments select, for a server with `capabilities`.
pub fn plan_for(args: &LabArgs, capabilities: &ServerCapabilities) -> Result<Plan, String> {
    let variants = args.variants();
    for variant in &variants {
        for knob in [TRANSPORT, QUEUE_DEPTH] {
            if let Some(value) = variant.get(knob)
                && !capabilities.offers(&knob.flag(), value)
            {
                let flag = knob.flag();
                return Err(format!(
                    "this fuse-export build does not offer {flag} {value}"
                ));
            }
        }
    }
    let mut plan = Plan::build(&args.settings(), capabilities, &variants);
    plan.filter(&args.only);
    Ok(plan)
}

/// Entry point of `cargo xtask lab`.
pub fn run(args: LabArgs) -> Result<(), String> {
    let root = crate::workspace_root();
    let target_dir = crate::target_dir(&root);
    let default_server = target_dir.join("release").join("fuse-export");
    let server_path = args.server.clone().unwrap_or(default_server);

    if args.dry_run {
        // Without a built server every knob is assumed available.
        let capabilities = server_capabilities(&server_path).unwrap_or_default();
        print!("{}", plan_for(&args, &capabilities)?.describe());
        if capabilities.options.is_none() {
            let server = server_path.display();
            println!("({server} is not built; assuming it has every knob's option)");
        }
        return Ok(());
    }

    if !host::is_root() {
        return Err(
            "the lab must run as root (it mounts exports and drops the page cache); \
                    `cargo xtask lab --dry-run` shows the plan without it"
                .into(),
        );
    }
    host::install_interrupt_handler()?;
    let (started, start_time) = (Instant::now(), jiff::Timestamp::now());

    let lab_dir = target_dir.join("lab");
    let scratch = lab_dir.join("scratch");
    create_dir(&scratch)?;
    // One lab at a time: two would share the image and the mountpoint.
    let lock_path = scratch.join("lock");
    let lock = File::create(&lock_path)
        .map_err(|err| format!("cannot create {}: {err}", lock_path.display()))?;
    lock.try_lock()
        .map_err(|_| format!("another lab is running ({} is locked)", lock_path.display()))?;
    clean_stale_mounts(&scratch);

    let server = match &args.server {
        Some(path) => existing_file(path, "--server"),
        None => build_server(&root, None, &[]).map(|()| server_path.clone()),
    };
    let capabilities = match &server {
        Ok(path) => server_capabilities(path)?,
        Err(_) => ServerCapabilities::default(),
    };
    let plan = plan_for(&args, &capabilities)?;
    if plan.run_count() == 0 {
        return Err(format!(
            "no case matches --only {}",
            args.only.join(" --only ")
        ));
    }
    let alloc_server = match &args.alloc_server {
        _ if plan.alloc_probes.is_empty() => Err("no allocation probe selected".to_string()),
        Some(path) => existing_file(path, "--alloc-server"),
        None => {
            let dir = lab_dir.join("alloc-count-build");
            build_server(&root, Some(&dir), &["alloc-count"])
                .map(|()| dir.join("release").join("fuse-export"))
        }
    };

    let out_dir = unique_dir(&lab_dir.join(start_time.strftime("%Y-%m-%d_%H%M%S").to_string()))?;
    let logs = out_dir.join("logs");
    create_dir(&logs)?;

    let size = plan.settings.image_size;
    let image = scratch.join("image.raw");
    check_image_filesystem(&scratch)?;
    println!(
        "lab: preparing {} image {}",
        size_long(size),
        image.display()
    );
    prepare_image(&image, size)?;
    let (source, source_note) = convert_source_path(&scratch, size);
    let needs_source = plan
        .groups
        .iter()
        .any(|g| matches!(g.workload, Workload::Convert { .. }));
    let _source_guard = if needs_source {
        println!(
            "lab: writing {} random convert source {}",
            size_long(size),
            source.display()
        );
        write_random_file(&source, size, 0x5eed_0fc0_47e7)?;
        Some(RemoveOnDrop(source.clone()))
    } else {
        None
    };

    let mut notes = vec![source_note];
    notes.extend(
        server
            .as_ref()
            .err()
            .map(|err| format!("fuse-export unavailable: {err}")),
    );
    if !plan.alloc_probes.is_empty()
        && let Err(err) = &alloc_server
    {
        notes.push(format!("allocation probes unavailable: {err}"));
    }
    notes.extend(
        host::TOOLS
            .iter()
            .filter_map(|(program, _)| host::missing(program)),
    );
    notes.extend(uring_note(&plan));
    for note in &notes {
        println!("lab: {note}");
    }
    let (runs, estimate) = (plan.run_count(), Duration(plan.estimate_secs()));
    println!(
        "lab: {runs} runs, estimated {estimate}; results in {}",
        out_dir.display()
    );

    // Read now, not after the run: the tree the binary was built from is
    // the one to name, and people keep committing while the lab runs.
    let versions = versions(&root, &server);
    let workspace = Workspace {
        image,
        image_size: size,
        mountpoint: scratch.join("export.img"),
        logs,
        out_dir: out_dir.clone(),
        source,
        ext4_dir: scratch.join("ext4"),
        server,
        alloc_server,
    };
    let mut runner = Runner::new(&plan, &workspace);
    let (records, profiles) = runner.run_groups();
    let allocs = runner.run_alloc_probes();
    let interrupted = host::interrupted();

    let context = RunContext {
        started: start_time.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        host: host::describe(),
        versions,
        notes,
        interrupted,
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    let results = LabResults {
        plan,
        records,
        allocs,
        profiles,
        context,
    };
    let written = report::write_all(&results, &out_dir)?;
    let latest = lab_dir.join("latest");
    let _ = fs::remove_file(&latest);
    let _ = std::os::unix::fs::symlink(&out_dir, &latest);
    println!("lab: done in {}", Duration(started.elapsed().as_secs_f64()));
    for path in written {
        println!("  {}", path.display());
    }
    if interrupted {
        return Err("interrupted; partial results written".into());
    }
    Ok(())
}

/// Removes a file when dropped (the convert source lives in /dev/shm).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn create_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))
}

/// `path`, given as `option`, if it is a file.
fn existing_file(path: &Path, option: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(format!("{option} {}: no such file", path.display()))
    }
}

/// The kernel offers FUSE-over-io_uring only when the admin enabled it;
/// the lab leaves that setting alone and says why `uring` runs would fail.
fn uring_note(plan: &Plan) -> Option<String> {
    const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";
    let uses_uring = plan.groups.iter().flat_map(|g| &g.targets).any(|target| {
        matches!(target, Target::FuseExport(options) if options.get(TRANSPORT) == Some("uring"))
    });
    let enabled = fs::read_to_string(ENABLE_URING).is_ok_and(|value| value.trim() == "Y");
    (uses_uring && !enabled).then(|| {
        format!(
            "FUSE-over-io_uring is off ({ENABLE_URING} is not Y), so `transport=uring` runs \
             will fail; `echo Y > {ENABLE_URING}` turns it on"
        )
    })
}

/// Runs `fuse-export --help` and collects its options.
fn server_capabilities(server: &Path) -> Result<ServerCapabilities, String> {
    let what = format!("{} --help", server.display());
    let help = host::stdout_of(Command::new(server).arg("--help"), &what)?;
    Ok(ServerCapabilities::from_help(&help))
}

/// Builds fuse-export, into `target_dir` when given (the alloc-count build
/// must not replace the binary the lab times).
fn build_server(root: &Path, target_dir: Option<&Path>, features: &[&str]) -> Result<(), String> {
    let with = if features.is_empty() {
        ""
    } else {
        " --features "
    };
    println!("lab: building fuse-export{with}{}", features.join(","));
    crate::build_server(root, target_dir, features)
}

/// A lab killed hard may leave its ext4 mounted, loop devices attached and
/// its export mounted, in that order; nothing else uses them.
fn clean_stale_mounts(scratch: &Path) {
    let unmount = |path: &Path| {
        if host::is_mounted(path) {
            match host::lazy_unmount(path) {
                Ok(()) => println!("lab: detached a stale mount at {}", path.display()),
                Err(err) => eprintln!("lab: {err}"),
            }
        }
    };
    unmount(&scratch.join("ext4"));
    for device in loop_fs::devices_backed_under(scratch) {
        println!("lab: detaching stale loop device {device}");
        loop_fs::detach(&device);
    }
    let export = scratch.join("export.img");
    unmount(&export);
    let _ = fs::remove_file(export);
}

/// `dir`, or `dir-2`, `dir-3`, ... if it exists; created.
fn unique_dir(dir: &Path) -> Result<PathBuf, String> {
    let mut candidate = dir.to_path_buf();
    for suffix in 2.. {
        if !candidate.exists() {
            break;
        }
        candidate = PathBuf::from(format!("{}-{suffix}", dir.display()));
    }
    create_dir(&candidate)?;
    Ok(candidate)
}

/// O_DIRECT numbers from tmpfs would be meaningless (and the export falls
/// back to buffered I/O there).
fn check_image_filesystem(dir: &Path) -> Result<(), String> {
    match host::memory_filesystem(dir) {
        Some(fstype) => Err(format!(
            "{} is on {fstype}; the lab's image must live on a disk filesystem \
             (set CARGO_TARGET_DIR to one)",
            dir.display()
        )),
        None => Ok(()),
    }
}

/// The image, fully written with data: random writes to unwritten extents
/// or holes would measure the filesystem's allocator, not the export.
/// An existing image of the right size with every block allocated is kept.
fn prepare_image(image: &Path, size: u64) -> Result<(), String> {
    match fs::metadata(image) {
        Ok(meta) if meta.len() == size && meta.blocks() * 512 >= size => Ok(()),
        _ => write_random_file(image, size, 0x1a6e_5eed),
    }
}

/// Writes `size` bytes of pseudo-random data (xorshift64*, cheap and
/// incompressible enough that no layer can shortcut it) and syncs them.
fn write_random_file(path: &Path, size: u64, seed: u64) -> Result<(), String> {
    let error =
        |what: &str, err: std::io::Error| format!("cannot {what} {}: {err}", path.display());
    let mut file = File::create(path).map_err(|err| error("create", err))?;
    let mut state = seed | 1;
    let mut chunk = vec![0u8; MIB as usize];
    let mut written = 0;
    while written < size {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let len = (size - written).min(MIB) as usize;
        file.write_all(&chunk[..len])
            .map_err(|err| error("write", err))?;
        written += len as u64;
    }
    file.sync_all().map_err(|err| error("sync", err))
}

/// Where the convert source goes: /dev/shm when it fits, so the source side
/// costs the same for every target and no disk reads add noise.
fn convert_source_path(scratch: &Path, size: u64) -> (PathBuf, String) {
    let shm = Path::new("/dev/shm");
    let fits = host::memory_filesystem(shm) == Some("tmpfs")
        && host::available_bytes(shm).is_some_and(|free| free >= size + GIB);
    if fits {
        let note = "convert source in /dev/shm (tmpfs), so only the target side differs";
        (shm.join("fuse-export-lab-source.raw"), note.into())
    } else {
        let note = "convert source on disk (/dev/shm too small); it is read through the page cache";
        (scratch.join("source.raw"), note.into())
    }
}

/// The tree the server was built from (`git describe`) and the clients'
/// versions.
fn versions(root: &Path, server: &Result<PathBuf, String>) -> Vec<(String, String)> {
    let root = root.to_string_lossy();
    let describe = [
        "-C",
        &root,
        "describe",
        "--always",
        "--dirty= + uncommitted changes",
    ];
    let commit = host::first_line_of("git", &describe).map(|commit| {
        let binary = server
            .as_ref()
            .map_or_else(Clone::clone, |path| path.display().to_string());
        ("fuse-export".to_string(), format!("{commit} ({binary})"))
    });
    let clients = ["fio", "qemu-storage-daemon"]
        .into_iter()
        .filter_map(|program| {
            Some((
                program.to_string(),
                host::first_line_of(program, &["--version"])?,
            ))
        });
    commit.into_iter().chain(clients).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_dry_run_plan_builds_and_lists_cases() {
        let args = LabArgs {
            quick: true,
            dry_run: true,
            ..LabArgs::default()
        };
        let plan = plan_for(&args, &ServerCapabilities::default()).unwrap();
        assert!(plan.settings.quick);
        assert!(plan.run_count() > 10);
        let listing = plan.describe();
        assert!(
            listing.contains("matrix/convert-direct/fuse-export"),
            "{listing}"
        );
        assert!(listing.contains("alloc/"), "{listing}");
    }

    #[test]
    fn overrides_apply() {
        let args = LabArgs {
            repetitions: Some(5),
            fio_runtime: Some(9),
            only: vec!["randwrite".into()],
            ..LabArgs::default()
        };
        let plan = plan_for(&args, &ServerCapabilities::default()).unwrap();
        assert_eq!(plan.settings.repetitions, 5);
        assert_eq!(plan.settings.fio_runtime_secs, 9);
        assert!(
            plan.groups
                .iter()
                .all(|g| g.workload.id().contains("randwrite"))
        );
    }

    #[test]
    fn transports_and_queue_depths_apply_to_every_fuse_export_target() {
        let args = LabArgs {
            transport: vec!["readv".into(), "uring".into()],
            queue_depth: vec![8, 64],
            ..LabArgs::default()
        };
        let labels: Vec<String> = args.variants().iter().map(ServerOptions::label).collect();
        assert_eq!(
            labels,
            [
                "fuse-export[transport=readv,queue_depth=8]",
                "fuse-export[transport=readv,queue_depth=64]",
                "fuse-export[transport=uring,queue_depth=8]",
                "fuse-export[transport=uring,queue_depth=64]"
            ]
        );
        let plan = plan_for(&args, &ServerCapabilities::default()).unwrap();
        let matrix = &plan.groups[0];
        assert_eq!(matrix.targets.len(), 1 + 4 + 1);

        let old_server = ServerCapabilities::from_help(
            "      --transport <T>\n          Possible values:\n          - readv: x\n\
                   --queue-depth <N>\n          Requests per queue\n",
        );
        assert_eq!(
            plan_for(&args, &old_server).unwrap_err(),
            "this fuse-export build does not offer --transport uring"
        );
    }

    #[test]
    fn random_file_has_the_size_and_no_zero_pages() {
        let path = std::env::temp_dir().join(format!("lab-random-{}", std::process::id()));
        write_random_file(&path, 3 * MIB / 2, 7).unwrap();
        let data = fs::read(&path).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(data.len() as u64, 3 * MIB / 2);
        assert!(data.chunks(4096).all(|page| page.iter().any(|&b| b != 0)));
    }
}
