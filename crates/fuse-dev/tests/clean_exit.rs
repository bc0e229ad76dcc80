//! Issue 9, clean exit: once `Running::shutdown` returns (and the caller
//! closes its own fd of the image), nothing in the process or the kernel
//! holds the image open. io_uring frees a ring asynchronously after its fd
//! is closed, so a ring that still has the image registered would keep the
//! image's filesystem busy for a moment after the server is done.
//!
//! The image lives on an ext4 filesystem made for the test on a loop
//! device; after every shutdown that filesystem is unmounted at once
//! (plain `umount2`, no `MNT_DETACH`), which fails with EBUSY while any
//! file on it is open. Needs root, /dev/fuse, `mkfs.ext4` and a free loop
//! device; skips (with a `SKIP:` line) otherwise. The guard unmounts and
//! detaches everything, also when the test fails.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::small_session;
use fuse_dev::{
    BackingFile, BackingOp, Chain, Completion, Handler, Incoming, Job, QueueIo, Segment,
};
use fuse_proto::reply::Errno;
use rustix::mount::UnmountFlags;

const ROUNDS: usize = 8;
const GETATTR: u32 = 3;

/// Prints the `SKIP:` line straight to stderr, past libtest's capture.
fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: clean_exit: {reason}");
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty())
}

fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|err| format!("{command:?}: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A scratch directory with an ext4 filesystem on a loop device mounted at
/// `ext4`; unmounts, detaches and removes everything on drop.
struct LoopExt4 {
    dir: PathBuf,
    device: Option<String>,
    ext4: PathBuf,
}

impl LoopExt4 {
    fn new() -> Result<LoopExt4, String> {
        let dir = std::env::temp_dir().join(format!("clean-exit-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
        let mut made = LoopExt4 {
            ext4: dir.join("ext4"),
            dir,
            device: None,
        };
        let backing = made.dir.join("ext4.img");
        File::create(&backing)
            .and_then(|f| f.set_len(64 << 20))
            .map_err(|err| err.to_string())?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&backing))?;
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing))?;
        made.device = Some(device);
        fs::create_dir_all(&made.ext4).map_err(|err| err.to_string())?;
        made.mount()?;
        Ok(made)
    }

    fn mount(&self) -> Result<(), String> {
        let device = self.device.as_deref().unwrap_or_default();
        run(Command::new("mount")
            .args(["-t", "ext4", device])
            .arg(&self.ext4))
        .map(drop)
    }

    fn is_mounted(&self) -> bool {
        fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
            let path = self.ext4.to_string_lossy();
            mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(path.as_ref()))
        })
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if self.is_mounted() && rustix::mount::unmount(&self.ext4, UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(&self.ext4, UnmountFlags::DETACH);
        }
        if let Some(device) = self.device.take() {
            let _ = run(Command::new("losetup").args(["-d", &device]));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Answers every request with ENOSYS, GETATTR only after reading the
/// image's first block through the ring (so the image is in use there).
struct ReadsTheImage;

impl Handler for ReadsTheImage {
    type State = ();

    fn request(&mut self, job: Job, incoming: Incoming, io: &mut QueueIo<'_, ()>) {
        let opcode = u32::from_ne_bytes(incoming.head_bytes()[4..8].try_into().unwrap());
        io.pool().give_chain(incoming.into_buffers());
        if opcode != GETATTR {
            return io.reply_error(job, Errno::ENOSYS);
        }
        match io.pool().take(4096) {
            Ok(buf) => {
                let op = BackingOp::Read {
                    file: BackingFile(0),
                    offset: 0,
                };
                io.submit(job, op, Chain::of(Segment::whole(buf)), ());
            }
            Err(_) => io.reply_error(job, Errno::EIO),
        }
    }

    fn complete(&mut self, job: Job, done: Completion<()>, io: &mut QueueIo<'_, ()>) {
        assert_eq!(done.result, 4096, "reading the image through the ring");
        io.pool().give_chain(done.chain);
        io.reply_error(job, Errno::ENOSYS);
    }
}

fn serve_once(image_path: &Path, mountpoint: &Path) {
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image_path)
        .unwrap();
    let (session, config) = small_session(mountpoint, "clean-exit");
    let running = session
        .start(2, config, vec![image.as_raw_fd()], |_| ReadsTheImage)
        .unwrap();
    for _ in 0..4 {
        // GETATTR: one backing read of the image on some queue.
        let _ = fs::metadata(mountpoint);
    }
    running.shutdown().unwrap();
    drop(image);
}

#[test]
fn image_filesystem_unmounts_right_after_shutdown() {
    if !rustix::process::getuid().is_root() || !Path::new("/dev/fuse").exists() {
        return skip("needs root and /dev/fuse");
    }
    if !have("mkfs.ext4") || !have("losetup") {
        return skip("needs mkfs.ext4 and losetup");
    }
    let scratch = match LoopExt4::new() {
        Ok(scratch) => scratch,
        Err(err) => return skip(&format!("no loop-mounted ext4 here: {err}")),
    };
    let image_path = scratch.ext4.join("disk.raw");
    let mountpoint = scratch.dir.join("export");
    fs::write(&mountpoint, b"").unwrap();
    for round in 0..ROUNDS {
        File::create(&image_path)
            .and_then(|f| f.set_len(1 << 20))
            .unwrap();
        serve_once(&image_path, &mountpoint);
        if let Err(err) = rustix::mount::unmount(&scratch.ext4, UnmountFlags::empty()) {
            panic!(
                "round {round}: the image's filesystem is still busy right after shutdown: {err}"
            );
        }
        scratch.mount().unwrap();
    }
}
