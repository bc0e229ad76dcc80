//! The machine: /proc readings, caches, mounts, signals, tools.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use procfs::Current as _;
use procfs::process::{Process, Status};
use rustix::mount::UnmountFlags;
use rustix::process::{Pid, Signal};

/// Whether the effective user is root (mounting and dropping caches need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

/// User plus system CPU time of a process and all its threads (including
/// io_uring's io-wq workers, which belong to the thread group), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = process(pid)?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// /proc/PID/status: `vmrss` and `vmhwm` (KiB), `threads`.
pub fn status(pid: u32) -> Option<Status> {
    process(pid)?.status().ok()
}

/// Context switches (voluntary plus involuntary) of each live thread of
/// process `pid`, by thread id; empty when the process is gone.
pub fn context_switches_by_thread(pid: u32) -> HashMap<i32, u64> {
    let Some(tasks) = process(pid).and_then(|p| p.tasks().ok()) else {
        return HashMap::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let status = task.status().ok()?;
            let switches = status.voluntary_ctxt_switches? + status.nonvoluntary_ctxt_switches?;
            Some((task.tid, switches))
        })
        .collect()
}

/// `path` as /proc/self/mountinfo writes it: space, tab, newline and
/// backslash as octal escapes.
fn as_in_mountinfo(path: &Path) -> PathBuf {
    let mut escaped = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => escaped.push_str(&format!("\\{:03o}", c as u32)),
            c => escaped.push(c),
        }
    }
    PathBuf::from(escaped)
}

pub fn is_mounted(path: &Path) -> bool {
    let wanted = as_in_mountinfo(path);
    Process::myself()
        .and_then(|me| me.mountinfo())
        .is_ok_and(|mounts| mounts.into_iter().any(|m| m.mount_point == wanted))
}

/// linux/magic.h; libc has TMPFS_MAGIC but not this one.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// `tmpfs` or `ramfs` when `path` is on a memory filesystem.
pub fn memory_filesystem(path: &Path) -> Option<&'static str> {
    // f_type's type differs between libc targets; i64 holds every value.
    #[allow(clippy::unnecessary_cast)]
    match rustix::fs::statfs(path).ok()?.f_type as i64 {
        libc::TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    }
}

/// `umount -l`: detaches even while busy, so nothing stays mounted.
pub fn lazy_unmount(path: &Path) -> Result<(), String> {
    rustix::mount::unmount(path, UnmountFlags::DETACH)
        .map_err(|err| format!("umount -l {}: {err}", path.display()))
}

/// Sends SIGTERM to a process this lab started (and has not reaped yet, so
/// the PID cannot have been reused).
pub fn terminate(pid: u32) -> Result<(), String> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(format!("PID {pid} out of range"))?;
    rustix::process::kill_process(pid, Signal::TERM)
        .map_err(|err| format!("kill -TERM {}: {err}", pid.as_raw_nonzero()))
}

/// `syncfs` of the filesystem that holds `image`, then `echo 3 >
/// /proc/sys/vm/drop_caches`: every run starts with no dirty data from the
/// previous one (it all lives there: the image, and through it the ext4
/// workloads' loop devices) and a cold page cache. Not sync(2): one stuck
/// filesystem elsewhere on the machine (a FUSE mount whose server hangs)
/// would stall the lab for good.
pub fn drop_caches(image: &Path) -> Result<(), String> {
    let file = fs::File::open(image).map_err(|err| format!("open {}: {err}", image.display()))?;
    rustix::fs::syncfs(&file).map_err(|err| format!("syncfs {}: {err}", image.display()))?;
    fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|err| format!("cannot drop caches (/proc/sys/vm/drop_caches): {err}"))
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn available_bytes(path: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(path).ok()?;
    Some(stats.f_bavail * stats.f_frsize)
}

static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// Turns SIGINT and SIGTERM into a flag the lab checks between runs, so
/// that Ctrl-C still stops every server, unmounts and writes the partial
/// report. (Ctrl-C also reaches the servers and clients in the foreground
/// process group; both servers handle it by unmounting.)
pub fn install_interrupt_handler() -> Result<(), String> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&INTERRUPTED))
            .map_err(|err| format!("cannot handle signal {signal}: {err}"))?;
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The client and peer programs the lab runs, and the packages with them.
pub const TOOLS: [(&str, &str); 6] = [
    ("dd", "coreutils"),
    ("fio", "fio (run `make setup`)"),
    ("losetup", "mount"),
    ("mkfs.ext4", "e2fsprogs"),
    ("qemu-img", "qemu-utils"),
    ("qemu-storage-daemon", "qemu-utils"),
];

/// Why `program` (one of [`TOOLS`]) cannot run, if it is not installed.
pub fn missing(program: &str) -> Option<String> {
    let (_, package) = TOOLS.iter().find(|(name, _)| *name == program)?;
    let missing = which::which(program).is_err();
    missing.then(|| format!("{program} is not installed (package {package})"))
}

/// Runs `command` (no stdin) to completion and returns its standard
/// output; failing to start it, or its failing, is an error that names
/// `what` and ends with the last line of its standard error.
pub fn stdout_of(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run {what}: {err}"))?;
    if !output.status.success() {
        let errors = String::from_utf8_lossy(&output.stderr);
        let last = errors.lines().rfind(|l| !l.trim().is_empty());
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            last.map_or("no output", str::trim)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// First line of a successful command's output (stdout, else stderr),
/// for versions.
pub fn first_line_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    let text = String::from_utf8_lossy(&text);
    text.lines().next().map(|line| line.trim().to_string())
}

/// `Linux 6.18.0, 2 × <CPU model>, 24 GiB RAM`, for the report.
pub fn describe() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |text| text.trim().to_string());
    let cpu_model = procfs::CpuInfo::current()
        .ok()
        .and_then(|info| info.model_name(0).map(str::to_string))
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_gib =
        procfs::Meminfo::current().map_or(0.0, |info| info.mem_total as f64 / (1u64 << 30) as f64);
    format!("Linux {kernel}, {cpus} × {cpu_model}, {memory_gib:.0} GiB RAM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_escaped_like_mountinfo() {
        assert_eq!(
            as_in_mountinfo(Path::new("/a b\\c\td")),
            Path::new(r"/a\040b\134c\011d")
        );
        assert!(is_mounted(Path::new("/")));
        assert!(!is_mounted(Path::new("/surely/not/a/mount point")));
    }

    #[test]
    fn command_output_or_its_error() {
        let script = |text: &str| {
            let mut command = Command::new("sh");
            command.args(["-c", text]);
            command
        };
        assert_eq!(
            stdout_of(&mut script("echo out; echo warning >&2"), "it"),
            Ok("out\n".into())
        );
        let failed = stdout_of(&mut script("echo first >&2; echo last >&2; exit 3"), "it");
        assert_eq!(failed, Err("it failed (exit status: 3): last".into()));
        let missing = stdout_of(&mut Command::new("/nonexistent/program"), "nothing");
        assert!(missing.is_err_and(|err| err.starts_with("cannot run nothing: ")));
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(status(pid).is_some_and(|s| s.threads >= 1 && s.vmrss.is_some()));
        assert!(describe().starts_with("Linux "));
    }
}
