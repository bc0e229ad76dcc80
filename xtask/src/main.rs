//! Repository automation, run as `cargo xtask <task>` (see `.cargo/config.toml`).
//!
//! - `run`: build the server in release mode and run it in the foreground,
//!   with a sparse demo image when no image is given.
//! - `tidy`: check the repository's own code rules.
//! - `lab`: the performance lab (docs/performance.md).

mod lab;
mod tidy;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Args, Parser, Subcommand};

/// Size of the demo image `cargo xtask run` creates when no image is given.
const DEMO_IMAGE_SIZE: u64 = 1 << 30;

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Repository automation for fuse-export"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build fuse-export (release) and run it in the foreground.
    Run(RunArgs),
    /// Check the repository's code rules and list every violation.
    Tidy,
    /// Run the performance lab (docs/performance.md); try `--quick --dry-run`.
    Lab(lab::LabArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Raw image to export [default: a sparse 1 GiB demo image, target/demo/disk.raw].
    #[arg(long)]
    image: Option<PathBuf>,
    /// File to mount the export on [default: target/demo/disk.img].
    #[arg(long)]
    mount: Option<PathBuf>,
    /// Extra server arguments, after `--` (e.g. `-- --read-only --queues 2`).
    #[arg(last = true)]
    server_args: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Run(args) => run(args),
        Task::Tidy => tidy::run(&workspace_root()),
        Task::Lab(args) => lab::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Where Cargo puts build output: `CARGO_TARGET_DIR` when set (Cargo reads a
/// relative value against the current directory, and so does `PathBuf`), else
/// `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root.join("target"),
    }
}

/// `cargo build --release -p fuse-export [--features ...]`, into
/// `target_dir` when given.
fn build_server(root: &Path, target_dir: Option<&Path>, features: &[&str]) -> Result<(), String> {
    // `cargo run` hands its own path to the program; using it keeps the
    // toolchain chosen by rust-toolchain.toml.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--package", "fuse-export"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"));
    if let Some(dir) = target_dir {
        command.arg("--target-dir").arg(dir);
    }
    let mut shown = "cargo build --release -p fuse-export".to_string();
    if !features.is_empty() {
        let features = features.join(",");
        command.args(["--features", &features]);
        shown += &format!(" --features {features}");
    }
    let status = command
        .status()
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

fn run(args: RunArgs) -> Result<(), String> {
    let root = workspace_root();
    let target = target_dir(&root);
    build_server(&root, None, &[])?;

    let demo_dir = target.join("demo");
    let image = match args.image {
        Some(image) => image,
        None => {
            let image = demo_dir.join("disk.raw");
            create_sparse_image_if_missing(&image, DEMO_IMAGE_SIZE)?;
            image
        }
    };
    let mount = match args.mount {
        Some(mount) => mount,
        None => {
            fs::create_dir_all(&demo_dir)
                .map_err(|err| format!("cannot create {}: {err}", demo_dir.display()))?;
            // The server creates a missing mountpoint file itself.
            demo_dir.join("disk.img")
        }
    };

    let mount_shown = mount.display();
    println!("try: qemu-img info {mount_shown}");
    println!("     dd if=/dev/urandom of={mount_shown} bs=1M count=16 oflag=direct conv=notrunc");
    println!("stop with Ctrl-C");
    // exec() replaces this process, so output buffered here would be lost.
    io::stdout()
        .flush()
        .map_err(|err| format!("cannot write to stdout: {err}"))?;

    // Replacing xtask with the server keeps things simple: Ctrl-C reaches the
    // server alone (nothing here has to outlive or ignore it) and the server's
    // exit code is the exit code of `cargo xtask run`.
    let server = target.join("release").join("fuse-export");
    let err = Command::new(&server)
        .arg("--image")
        .arg(&image)
        .arg("--mount")
        .arg(&mount)
        .args(&args.server_args)
        .exec();
    Err(format!("cannot run {}: {err}", server.display()))
}

fn create_sparse_image_if_missing(image: &Path, size: u64) -> Result<(), String> {
    if image.exists() {
        return Ok(());
    }
    if let Some(dir) = image.parent() {
        fs::create_dir_all(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    }
    let file = File::create_new(image)
        .map_err(|err| format!("cannot create {}: {err}", image.display()))?;
    file.set_len(size)
        .map_err(|err| format!("cannot size {} to {size} bytes: {err}", image.display()))?;
    println!(
        "created sparse demo image {} ({size} bytes)",
        image.display()
    );
    Ok(())
}
