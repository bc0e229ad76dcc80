//! Telling scripts and service managers that the export is up.
//!
//! Two channels, both announced at the same moment (the mount is up and the
//! kernel has the image's size) so that no client has to poll
//! `/proc/mounts`:
//!
//! * `--pidfile PATH`: the process id, written atomically (a temporary file
//!   in the same directory, renamed into place) and removed at exit;
//! * systemd's notification socket (`NOTIFY_SOCKET`, `Type=notify`):
//!   `READY=1` then, when shutting down, `STOPPING=1`.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use sd_notify::NotifyState;

/// A pidfile: prepared before mounting (which proves its directory is
/// writable), published once the export is ready, removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    /// The temporary file beside `path` that becomes the pidfile, while it
    /// has not been renamed into place.
    pending: Option<(PathBuf, File)>,
    published: bool,
}

impl PidFile {
    /// Checks `path` and creates the temporary file beside it. The error is
    /// a sentence for the user.
    pub fn prepare(path: &Path) -> Result<PidFile, String> {
        let shown = path.display();
        if path.is_dir() {
            return Err(format!("--pidfile {shown}: is a directory"));
        }
        let Some(name) = path.file_name() else {
            return Err(format!("--pidfile {shown}: has no file name"));
        };
        let directory = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !directory.is_dir() {
            return Err(format!(
                "--pidfile {shown}: directory {} does not exist",
                directory.display()
            ));
        }
        // A hidden name in the same directory, so that the rename is atomic
        // and a reader never sees a half-written pidfile. Our pid makes it
        // ours: one left by a dead process with the same pid is replaced,
        // and O_EXCL never follows a symlink planted in its place.
        let mut temporary_name = OsString::from(".");
        temporary_name.push(name);
        temporary_name.push(format!(".{}.tmp", std::process::id()));
        let temporary = directory.join(temporary_name);
        let _ = std::fs::remove_file(&temporary);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temporary)
            .map_err(|err| {
                format!(
                    "--pidfile {shown}: cannot write in {}: {err}",
                    directory.display()
                )
            })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pending: Some((temporary, file)),
            published: false,
        })
    }

    /// Writes this process's id and moves the file into place.
    pub fn publish(&mut self) -> io::Result<()> {
        let Some((temporary, mut file)) = self.pending.take() else {
            return Ok(());
        };
        let written = writeln!(file, "{}", std::process::id())
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        match written {
            Ok(()) => self.published = true,
            Err(_) => {
                let _ = std::fs::remove_file(&temporary);
            }
        }
        written
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some((temporary, _)) = self.pending.take() {
            let _ = std::fs::remove_file(temporary);
        }
        if !self.published {
            return;
        }
        // Only our own: a second server started with the same path may have
        // replaced it since.
        let ours = format!("{}\n", std::process::id());
        match std::fs::read_to_string(&self.path) {
            Ok(content) if content == ours => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    log::warn!("removing pidfile {}: {err}", self.path.display());
                }
            }
            Ok(_) => log::warn!(
                "pidfile {} now names another process; leaving it",
                self.path.display()
            ),
            Err(err) => log::warn!("reading pidfile {}: {err}", self.path.display()),
        }
    }
}

/// Tells the service manager (if `NOTIFY_SOCKET` is set) that the export
/// is ready; `status` is shown by `systemctl status`.
pub fn notify_ready(status: &str) {
    notify(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status(status),
    ]);
}

/// Tells the service manager (if `NOTIFY_SOCKET` is set) that the server
/// is shutting down.
pub fn notify_stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("finishing requests in flight and unmounting"),
    ]);
}

fn notify(states: &[NotifyState]) {
    // Without NOTIFY_SOCKET this does nothing and succeeds. A service
    // manager that cannot be told is no reason to stop serving.
    if let Err(err) = sd_notify::notify(states) {
        log::warn!("notifying the service manager (NOTIFY_SOCKET): {err}");
    }
}
