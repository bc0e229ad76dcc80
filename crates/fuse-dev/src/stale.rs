//! A dead mount found at start: an earlier server died without its crash
//! cleanup (its watcher was killed too, or the kernel had no time), and the
//! mountpoint answers ENOTCONN. A dead `fuse.fuse-export` mount is provably
//! ours to remove: it is detached with an info line. Anything else in the
//! way is named, with the command that removes it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, StatxFlags};
use rustix::mount::UnmountFlags;

use crate::mount::{SUBTYPE, fusermount_detach};
use crate::mountinfo;

/// How long a live FUSE server gets to answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Dead mounts stacked on one path that are cleared before giving up.
const MAX_STACKED: usize = 8;

/// Why the mountpoint cannot be used. One line for the CLI.
#[derive(Debug)]
pub enum StaleMountError {
    /// A dead FUSE mount that is not a fuse-export mount.
    DeadForeign {
        /// The mountpoint.
        path: PathBuf,
        /// Its filesystem type.
        fstype: String,
    },
    /// A FUSE mount whose server does not answer.
    NotAnswering {
        /// The mountpoint.
        path: PathBuf,
        /// Its filesystem type.
        fstype: String,
    },
    /// A dead fuse-export mount that could not be detached.
    CannotDetach {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// `/proc/self/mountinfo` could not be read.
    MountTable(io::Error),
}

impl fmt::Display for StaleMountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleMountError::DeadForeign { path, fstype } => write!(
                f,
                "mountpoint {}: a dead FUSE mount ({fstype}, \"Transport endpoint is not \
                 connected\") is in the way; remove it with: {}",
                path.display(),
                detach_command(path)
            ),
            StaleMountError::NotAnswering { path, fstype } => write!(
                f,
                "mountpoint {}: the FUSE mount on it ({fstype}) does not answer within {} s; \
                 if its server is gone for good, remove it with: {}",
                path.display(),
                PROBE_TIMEOUT.as_secs(),
                detach_command(path)
            ),
            StaleMountError::CannotDetach { path, error } => write!(
                f,
                "mountpoint {}: cannot detach the dead fuse-export mount on it ({error}); \
                 remove it with: {}",
                path.display(),
                detach_command(path)
            ),
            StaleMountError::MountTable(error) => {
                write!(f, "reading /proc/self/mountinfo: {error}")
            }
        }
    }
}

impl std::error::Error for StaleMountError {}

/// What a probe of the mount's root found.
enum Probe {
    /// The server answered (or the kernel refused us, e.g. another user's
    /// mount): a live mount, not ours to judge.
    Live,
    /// ENOTCONN (or ECONNABORTED): the connection is gone.
    Dead,
    /// No answer in time.
    Silent,
}

/// Detaches every dead fuse-export mount stacked on `path`, topmost first,
/// until the path is free or holds a live mount (which stays). Fails, naming
/// the command to run, when a dead mount of another kind or a silent one is
/// in the way.
pub fn clear_dead_mounts(path: &Path) -> Result<(), StaleMountError> {
    let path = std::path::absolute(path).map_err(StaleMountError::MountTable)?;
    let ours = format!("fuse.{SUBTYPE}");
    for _ in 0..MAX_STACKED {
        let Some(mount) = mountinfo::topmost_at(&path).map_err(StaleMountError::MountTable)? else {
            return Ok(());
        };
        if !mount.fstype.starts_with("fuse") {
            return Ok(());
        }
        match probe(&path) {
            Probe::Live => return Ok(()),
            Probe::Silent => {
                return Err(StaleMountError::NotAnswering {
                    path,
                    fstype: mount.fstype,
                });
            }
            Probe::Dead if mount.fstype != ours => {
                return Err(StaleMountError::DeadForeign {
                    path,
                    fstype: mount.fstype,
                });
            }
            Probe::Dead => {
                detach(&path).map_err(|error| StaleMountError::CannotDetach {
                    path: path.clone(),
                    error,
                })?;
                log::info!(
                    "{}: detached a dead {ours} mount (mount ID {}) left by a server that is gone",
                    path.display(),
                    mount.mount_id
                );
            }
        }
    }
    Ok(())
}

/// A GETATTR that the kernel must send (FORCE_SYNC: no cached answer),
/// from a helper thread, as it blocks for as long as a live server takes.
/// A dead connection fails it at once with ENOTCONN.
fn probe(path: &Path) -> Probe {
    let (sender, receiver) = crossbeam_channel::bounded(1);
    let target = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("mount-probe".into())
        .spawn(move || {
            let result = rustix::fs::statx(
                rustix::fs::CWD,
                &target,
                AtFlags::STATX_FORCE_SYNC,
                StatxFlags::TYPE,
            );
            let _ = sender.send(result.map(drop));
        });
    if spawned.is_err() {
        return Probe::Silent;
    }
    match receiver.recv_timeout(PROBE_TIMEOUT) {
        // ECONNABORTED: the connection was aborted while we waited (a
        // server that just died, whose rings the kernel was tearing down).
        Ok(Err(rustix::io::Errno::NOTCONN | rustix::io::Errno::CONNABORTED)) => Probe::Dead,
        Ok(_) => Probe::Live,
        // The thread stays blocked in the kernel; the caller exits soon.
        Err(_) => Probe::Silent,
    }
}

/// Detaches the topmost mount at `path`: `umount2(MNT_DETACH)` as root,
/// `fusermount3 -u -z` otherwise (which checks the mount is the user's).
pub(crate) fn detach(path: &Path) -> io::Result<()> {
    if rustix::process::geteuid().is_root() {
        return rustix::mount::unmount(path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
            .map_err(io::Error::from);
    }
    fusermount_detach(path)
}

/// The command a user runs to remove a mount at `path` by hand.
fn detach_command(path: &Path) -> String {
    let quoted = shell_quote(&path.to_string_lossy());
    if rustix::process::geteuid().is_root() {
        format!("umount -l {quoted}")
    } else {
        format!("fusermount3 -u -z {quoted}")
    }
}

/// `text` as one shell word.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%=,".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_quote_paths_for_the_shell() {
        assert_eq!(shell_quote("/tmp/disk.img"), "/tmp/disk.img");
        assert_eq!(shell_quote("/tmp/my disk"), "'/tmp/my disk'");
        assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
    }

    #[test]
    fn a_path_without_a_mount_is_left_alone() {
        let dir = std::env::temp_dir().join(format!("fuse-dev-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        clear_dead_mounts(&dir.join("nothing-here")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
