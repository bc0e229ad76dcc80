//! ext4 on a direct-I/O loop device over a target, for the ext4 workloads.
//!
//! A [`LoopFilesystem`] is a guard: dropping it (after the workload, on an
//! error or a panic) unmounts the filesystem and detaches the loop device,
//! so that the export under it can stop and nothing stays attached.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, UnmountFlags};

use super::host;
use super::workload::run_command;

/// A fresh ext4 on a loop device, mounted.
#[derive(Debug)]
pub struct LoopFilesystem {
    /// `/dev/loopN`, once attached.
    device: Option<String>,
    /// Where it is mounted, once mounted.
    mounted_on: Option<PathBuf>,
}

impl LoopFilesystem {
    /// Attaches `backing` (the image file or an export) to a free loop
    /// device with direct I/O, makes a fresh ext4 on it (output to `log`)
    /// and mounts it on `dir`.
    pub fn create(
        backing: &Path,
        dir: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<LoopFilesystem, String> {
        let mut losetup = Command::new("losetup");
        losetup
            .args(["--find", "--show", "--direct-io=on"])
            .arg(backing);
        let what = format!("losetup --direct-io=on {}", backing.display());
        let device = host::stdout_of(&mut losetup, &what)?.trim().to_string();
        let mut filesystem = LoopFilesystem {
            device: Some(device.clone()),
            mounted_on: None,
        };
        // The kernel quietly falls back to buffered I/O when the backing
        // file refuses O_DIRECT; that would measure the page cache.
        let name = device.trim_start_matches("/dev/");
        let dio = fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap_or_default();
        if dio.trim() != "1" {
            return Err(format!(
                "{device} over {} runs without direct I/O (the file refuses O_DIRECT)",
                backing.display()
            ));
        }
        let mut mkfs = Command::new("mkfs.ext4");
        // nodiscard: a discard would punch holes into the image, and later
        // runs would measure block allocation. Tables written now, not by
        // a background thread during the workload.
        let options = "nodiscard,lazy_itable_init=0,lazy_journal_init=0";
        mkfs.args(["-q", "-F", "-E", options]).arg(&device);
        run_command(mkfs, timeout, log)?;
        fs::create_dir_all(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        rustix::mount::mount(&device, dir, "ext4", MountFlags::empty(), None).map_err(|err| {
            let corrupt = if err == rustix::io::Errno::UCLEAN {
                ": the ext4 that mkfs.ext4 wrote through this target reads back corrupt"
            } else {
                ""
            };
            format!("mount {device} on {}: {err}{corrupt}", dir.display())
        })?;
        filesystem.mounted_on = Some(dir.to_path_buf());
        Ok(filesystem)
    }
}

impl Drop for LoopFilesystem {
    fn drop(&mut self) {
        if let Some(dir) = self.mounted_on.take()
            && let Err(err) = rustix::mount::unmount(&dir, UnmountFlags::empty())
        {
            eprintln!("lab: umount {}: {err}; detaching it lazily", dir.display());
            if let Err(err) = host::lazy_unmount(&dir) {
                eprintln!("lab: {err}");
            }
        }
        if let Some(device) = self.device.take() {
            detach(&device);
        }
    }
}

/// `losetup -d`, then waits (briefly) until the device has let go of its
/// file: the export under it can only stop cleanly after that.
pub fn detach(device: &str) {
    match Command::new("losetup").args(["-d", device]).status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("lab: losetup -d {device} failed ({status})"),
        Err(err) => eprintln!("lab: cannot run losetup -d {device}: {err}"),
    }
    let backing_file = format!(
        "/sys/block/{}/loop/backing_file",
        device.trim_start_matches("/dev/")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&backing_file).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Loop devices whose backing file is under `dir`, e.g. left attached by
/// a lab that was killed hard.
pub fn devices_backed_under(dir: &Path) -> Vec<String> {
    let Ok(output) = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.trim().split_once(char::is_whitespace))
        .filter(|(_, file)| Path::new(file.trim()).starts_with(dir))
        .map(|(device, _)| device.to_string())
        .collect()
}
