//! Harness shared by the tests that mount a real FUSE file: skip lines,
//! the scratch directory, the mount of a probe file, a bounded client
//! thread, and the session the live queue tests serve.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;

use fuse_dev::mount::{Mount, MountOptions, mount};
use fuse_dev::uring::cpus;
use fuse_dev::{InitRequest, QueueConfig, Session, SpillLayout};
use fuse_proto::abi::{Attr, AttrOut};
use fuse_proto::flags::InitFlags;
use rustix::fs::{AtFlags, CWD, StatxFlags};
use rustix::io::Errno;

/// Why a test that mounts cannot run here, if it cannot.
pub fn skip_reason() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (mount(2) of a FUSE file system)");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    None
}

/// Prints `SKIP: <test>: <reason>` straight to the process's stderr, past
/// libtest's output capture, so that a skipped test is seen as skipped.
pub fn report_skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: {test}: {reason}");
}

/// A unique scratch directory, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// `<temp>/<prefix>-<pid>-<n>-<test>`.
    pub fn new(prefix: &str, test: &str) -> ScratchDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{test}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Creates the regular file `<dir>/file` and mounts it (`rootmode=0100000`,
/// fuse-export's options, no unmount watcher: a test binary cannot
/// re-execute itself as one). Returns the device fd, the mount and the
/// mountpoint; INIT is still queued on the device.
pub fn mount_probe_file(
    dir: &ScratchDir,
    fsname: String,
    max_read: u32,
) -> (PathBuf, std::io::Result<(OwnedFd, Mount)>) {
    let mountpoint = dir.0.join("file");
    fs::write(&mountpoint, b"")
        .unwrap_or_else(|err| panic!("creating {}: {err}", mountpoint.display()));
    let options = MountOptions {
        mountpoint: mountpoint.clone(),
        fsname,
        read_only: false,
        allow_other: false,
        force_fusermount: false,
        root_is_dir: false,
        max_read,
        auto_unmount: false,
    };
    let mounted = mount(&options);
    (mountpoint, mounted)
}

/// A client thread making syscalls on the mounted file. Its result comes
/// back over a channel, so waiting for it is bounded.
pub struct Client<T> {
    result: mpsc::Receiver<T>,
    thread: thread::JoinHandle<()>,
}

impl<T: Send + 'static> Client<T> {
    pub fn spawn(work: impl FnOnce() -> T + Send + 'static) -> Client<T> {
        Client::spawn_on(None, work)
    }

    /// A client pinned to `cpu`: the kernel delivers its requests to the
    /// ring queue of that CPU.
    pub fn spawn_on(cpu: Option<usize>, work: impl FnOnce() -> T + Send + 'static) -> Client<T> {
        let (sender, result) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("probe-client".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    cpus::pin_current_thread(cpu).expect("pinning the client");
                }
                let _ = sender.send(work());
            })
            .expect("spawning the client thread");
        Client { result, thread }
    }

    /// The result if the client has finished.
    pub fn try_result(&self) -> Option<T> {
        match self.result.try_recv() {
            Ok(result) => Some(result),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => panic!("the client thread panicked"),
        }
    }

    pub fn pthread(&self) -> libc::pthread_t {
        self.thread.as_pthread_t()
    }
}

/// The attributes of a probe's `size`-byte file.
pub fn probe_attr_out(size: u64) -> AttrOut {
    AttrOut {
        // 0: never cached, so every forced stat asks again.
        attr_valid: 0,
        attr: Attr {
            ino: fuse_proto::ROOT_ID,
            size,
            blocks: size / 512,
            mode: libc::S_IFREG | 0o644,
            nlink: 1,
            blksize: 4096,
            ..Attr::default()
        },
        ..AttrOut::default()
    }
}

/// `stat` that always asks the server; wanting only the basic fields makes
/// that a single GETATTR (no permission check on the file itself, no OPEN).
pub fn fresh_size(path: &Path) -> Result<u64, Errno> {
    let stat = rustix::fs::statx(
        CWD,
        path,
        AtFlags::STATX_FORCE_SYNC,
        StatxFlags::BASIC_STATS,
    )?;
    Ok(stat.stx_size)
}

/// Mounts the empty file `mountpoint` as `fsname` with 128 KiB requests
/// and answers INIT; returns the session and a queue configuration to
/// start it with (two reads, sixteen requests in flight).
pub fn small_session(mountpoint: &Path, fsname: &str) -> (Session, QueueConfig) {
    small_session_with(mountpoint, fsname, false).unwrap()
}

/// [`small_session`], with the unmount watcher if `auto_unmount` (only for
/// a program whose `main` answers the watcher's re-execution first).
pub fn small_session_with(
    mountpoint: &Path,
    fsname: &str,
    auto_unmount: bool,
) -> std::io::Result<(Session, QueueConfig)> {
    let options = MountOptions {
        mountpoint: mountpoint.to_path_buf(),
        fsname: fsname.into(),
        read_only: false,
        allow_other: false,
        force_fusermount: false,
        root_is_dir: false,
        max_read: 128 * 1024,
        auto_unmount,
    };
    let init = InitRequest {
        max_write: 128 * 1024,
        max_background: 16,
        extra_flags: InitFlags::EMPTY,
        max_pages_limit: fuse_dev::init::max_pages_limit(),
        passthrough: false,
    };
    let session = Session::mount(&options, &init)?;
    let config = QueueConfig {
        reads: 2,
        max_in_flight: 16,
        layout: SpillLayout::default_for(session.negotiated().max_write as usize),
        pool_cap: 16,
        // As the server runs by default.
        standby: true,
    };
    Ok((session, config))
}

/// Where the kernel lists FUSE connections (the fusectl filesystem).
pub const FUSECTL: &str = "/sys/fs/fuse/connections";

/// The fusectl connection directory of the mount at `mountpoint` (its
/// device minor), from mountinfo (a stat of the mountpoint would itself be
/// a request).
pub fn connection_id(mountpoint: &Path) -> Option<u32> {
    Some(fuse_dev::mountinfo::topmost_at(mountpoint).ok()??.device.1)
}

/// fusectl mounted at [`FUSECTL`] while the guard lives (unmounted on drop
/// only if this guard mounted it).
pub struct Fusectl {
    mounted_here: bool,
}

impl Fusectl {
    /// Mounts fusectl unless it is mounted already.
    pub fn ensure() -> std::io::Result<Fusectl> {
        let mounted = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|line| line.split(' ').nth(1) == Some(FUSECTL));
        if mounted {
            return Ok(Fusectl {
                mounted_here: false,
            });
        }
        rustix::mount::mount(
            "none",
            FUSECTL,
            "fusectl",
            rustix::mount::MountFlags::empty(),
            None,
        )?;
        Ok(Fusectl { mounted_here: true })
    }

    /// Aborts connection `id`: its requests fail, its server's reads end.
    pub fn abort(&self, id: u32) -> std::io::Result<()> {
        fs::write(format!("{FUSECTL}/{id}/abort"), "1")
    }
}

impl Drop for Fusectl {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = rustix::mount::unmount(FUSECTL, rustix::mount::UnmountFlags::empty());
        }
    }
}
