//! Image ownership: while an image is exported it carries the same OFD
//! byte-range locks QEMU puts on its images (block/file-posix.c), so QEMU's
//! tools, QEMU itself and a second export see it as in use.
//!
//! QEMU's scheme: each permission `p` (bit number in
//! include/block/block-common.h) has two lock bytes. A user takes a shared
//! (read) lock on `100 + p` for every permission it holds, and on `200 + p`
//! for every permission it does not let others have. It may proceed only if
//! no one else locks `200 + p` for a permission it wants, nor `100 + p` for
//! a permission it refuses to share. Locks are taken before they are
//! checked, so of two users starting at once at least one sees the other.
//!
//! An export holds "consistent read", plus "write" and "resize" when it is
//! writable, and shares neither "write" nor "resize": it is the one writer,
//! like a QEMU guest disk. So `qemu-io` and `qemu-img` refuse to write the
//! image (and plain `qemu-img info` refuses to open it, as it would for a
//! running guest), `qemu-img info -U` works, and a second writable export is
//! refused. Read-only exports hold only "consistent read": several may
//! share an image with each other and with QEMU readers, never with a writer.
//!
//! OFD locks belong to the open file description: they go away when the
//! image's last fd is closed, also when the server dies.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, fcntl};

use crate::image::Image;

/// Whether the image is locked while exported (QEMU's `locking=on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locking {
    /// Take QEMU's locks; refuse to export an image someone else uses.
    #[default]
    On,
    /// Neither take nor check locks: share the image with anyone.
    Off,
}

/// QEMU's block permissions, as bit numbers (`BLK_PERM_*` = `1 << bit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permission {
    ConsistentRead = 0,
    Write = 1,
    WriteUnchanged = 2,
    Resize = 3,
}

impl Permission {
    const ALL: [Permission; 4] = [
        Permission::ConsistentRead,
        Permission::Write,
        Permission::WriteUnchanged,
        Permission::Resize,
    ];

    /// The name QEMU prints for it (`bdrv_perm_names`).
    fn name(self) -> &'static str {
        match self {
            Permission::ConsistentRead => "consistent read",
            Permission::Write => "write",
            Permission::WriteUnchanged => "write unchanged",
            Permission::Resize => "resize",
        }
    }

    /// The byte locked by a user that holds this permission
    /// (`RAW_LOCK_PERM_BASE + bit`).
    fn held_byte(self) -> i64 {
        100 + self as i64
    }

    /// The byte locked by a user that does not share this permission
    /// (`RAW_LOCK_SHARED_BASE + bit`).
    fn unshared_byte(self) -> i64 {
        200 + self as i64
    }
}

/// What an export holds and what it refuses to share.
#[derive(Debug, Clone, Copy)]
struct Claim {
    held: &'static [Permission],
    not_shared: &'static [Permission],
}

impl Claim {
    fn for_export(read_only: bool) -> Claim {
        let not_shared = &[Permission::Write, Permission::Resize];
        if read_only {
            Claim {
                held: &[Permission::ConsistentRead],
                not_shared,
            }
        } else {
            Claim {
                held: &[
                    Permission::ConsistentRead,
                    Permission::Write,
                    Permission::Resize,
                ],
                not_shared,
            }
        }
    }
}

/// Why the image could not be locked. One line for the CLI.
#[derive(Debug)]
pub enum LockError {
    /// Another user holds a lock byte that conflicts with the export.
    InUse {
        /// The image path.
        path: std::path::PathBuf,
        /// The conflicting byte.
        byte: i64,
        /// QEMU's wording of the conflict, e.g. `Failed to get "write" lock`.
        qemu_wording: String,
    },
    /// The filesystem refused the lock calls.
    Unsupported {
        /// The image path.
        path: std::path::PathBuf,
        /// What the kernel said.
        error: io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::InUse {
                path,
                byte,
                qemu_wording,
            } => write!(
                f,
                "image {}: in use by another process (another export or QEMU): \
                 it holds QEMU's lock byte {byte} ({qemu_wording})",
                path.display()
            ),
            LockError::Unsupported { path, error } => write!(
                f,
                "image {}: cannot take QEMU's byte-range locks on it: {error}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for LockError {}

impl Image {
    /// Locks the image for an export of it (read-only or not, as opened),
    /// or, with [`Locking::Off`], does nothing. The locks last as long as
    /// the image's fd; on a conflict none are left behind. A conflict is
    /// reported only once it has lasted a second (see `RELEASE_GRACE`).
    pub fn lock_for_export(&self, locking: Locking) -> Result<(), LockError> {
        if locking == Locking::Off {
            return Ok(());
        }
        let fd = self.as_fd();
        let claim = Claim::for_export(self.is_read_only());
        let unsupported = |error: nix::Error| LockError::Unsupported {
            path: self.path().to_path_buf(),
            error: io::Error::from(error),
        };
        let deadline = Instant::now() + RELEASE_GRACE;
        loop {
            let result = apply(fd, claim)
                .map_err(unsupported)
                .and_then(|()| find_conflict(fd, claim).map_err(unsupported));
            let conflict = match result {
                Ok(None) => return Ok(()),
                Ok(Some(conflict)) => conflict,
                Err(err) => {
                    release(fd);
                    return Err(err);
                }
            };
            release(fd);
            if Instant::now() >= deadline {
                let (byte, qemu_wording) = conflict;
                return Err(LockError::InUse {
                    path: self.path().to_path_buf(),
                    byte,
                    qemu_wording,
                });
            }
            std::thread::sleep(RETRY_INTERVAL);
        }
    }
}

impl Image {
    /// Drops the export's locks once the export is over (unmounted,
    /// flushed), so that a QEMU tool or a new export started right after
    /// this process exits does not find them: they would otherwise last
    /// until the kernel has torn down the rings that still hold the file.
    pub fn release_export_lock(&self) {
        release(self.as_fd());
    }
}

/// How long a conflict is re-checked before it is reported. A server that
/// has just exited (or was killed) still holds its locks for a while: its
/// io_uring rings hold the image's file, and the kernel tears them down
/// asynchronously after the process is gone (measured: 20 to 60 ms).
const RELEASE_GRACE: Duration = Duration::from_secs(1);
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Takes the shared locks of `claim`.
fn apply(fd: BorrowedFd<'_>, claim: Claim) -> nix::Result<()> {
    for permission in claim.held {
        set_lock(fd, permission.held_byte(), libc::F_RDLCK)?;
    }
    for permission in claim.not_shared {
        set_lock(fd, permission.unshared_byte(), libc::F_RDLCK)?;
    }
    Ok(())
}

/// The first lock byte another open file holds against `claim`, with
/// QEMU's wording of that conflict.
fn find_conflict(fd: BorrowedFd<'_>, claim: Claim) -> nix::Result<Option<(i64, String)>> {
    for permission in claim.held {
        let byte = permission.unshared_byte();
        if locked_by_others(fd, byte)? {
            let wording = format!("Failed to get \"{}\" lock", permission.name());
            return Ok(Some((byte, wording)));
        }
    }
    for permission in claim.not_shared {
        let byte = permission.held_byte();
        if locked_by_others(fd, byte)? {
            let wording = format!("Failed to get shared \"{}\" lock", permission.name());
            return Ok(Some((byte, wording)));
        }
    }
    Ok(None)
}

/// Drops every lock byte of the scheme this fd may hold (after a conflict).
fn release(fd: BorrowedFd<'_>) {
    for permission in Permission::ALL {
        for byte in [permission.held_byte(), permission.unshared_byte()] {
            if let Err(err) = set_lock(fd, byte, libc::F_UNLCK) {
                log::warn!("unlocking byte {byte} of the image: {err}");
            }
        }
    }
}

/// A one-byte OFD lock request (`l_pid` must be 0 for OFD locks).
fn one_byte(byte: i64, kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

fn set_lock(fd: BorrowedFd<'_>, byte: i64, kind: libc::c_int) -> nix::Result<()> {
    let lock = one_byte(byte, kind);
    fcntl(fd, FcntlArg::F_OFD_SETLK(&lock)).map(drop)
}

/// Whether another open file description locks `byte` in any mode: a write
/// lock would conflict with it (QEMU's `qemu_lock_fd_test(.., true)`). This
/// fd's own locks never conflict with it.
fn locked_by_others(fd: BorrowedFd<'_>, byte: i64) -> nix::Result<bool> {
    let mut probe = one_byte(byte, libc::F_WRLCK);
    fcntl(fd, FcntlArg::F_OFD_GETLK(&mut probe))?;
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::image::CacheMode;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("blockdev-lock-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let image = dir.join("disk.raw");
            std::fs::write(&image, vec![0u8; 8192]).unwrap();
            Scratch(dir)
        }

        fn image(&self) -> PathBuf {
            self.0.join("disk.raw")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open(path: &Path, read_only: bool) -> Image {
        Image::open(path, read_only, CacheMode::Writeback).unwrap()
    }

    /// Opens and locks; an `Err` is the conflict message.
    fn export(path: &Path, read_only: bool, locking: Locking) -> Result<Image, String> {
        let image = open(path, read_only);
        image
            .lock_for_export(locking)
            .map(|()| image)
            .map_err(|err| err.to_string())
    }

    #[test]
    fn a_second_writable_export_is_refused_naming_the_lock() {
        let scratch = Scratch::new("writers");
        let _first = export(&scratch.image(), false, Locking::On).unwrap();
        let err = export(&scratch.image(), false, Locking::On).unwrap_err();
        assert!(
            err.contains("lock byte 201") && err.contains("Failed to get \"write\" lock"),
            "{err}"
        );
    }

    #[test]
    fn writer_and_reader_exclude_each_other_in_both_orders() {
        let scratch = Scratch::new("mixed");
        {
            let _writer = export(&scratch.image(), false, Locking::On).unwrap();
            let err = export(&scratch.image(), true, Locking::On).unwrap_err();
            // The reader refuses to share writes; the writer holds them.
            assert!(err.contains("lock byte 101"), "{err}");
        }
        let _reader = export(&scratch.image(), true, Locking::On).unwrap();
        let err = export(&scratch.image(), false, Locking::On).unwrap_err();
        assert!(err.contains("lock byte 201"), "{err}");
    }

    #[test]
    fn read_only_exports_share_the_image() {
        let scratch = Scratch::new("readers");
        let _first = export(&scratch.image(), true, Locking::On).unwrap();
        let _second = export(&scratch.image(), true, Locking::On).unwrap();
    }

    #[test]
    fn locks_go_with_the_fd_and_a_refused_export_leaves_none() {
        let scratch = Scratch::new("release");
        let first = export(&scratch.image(), false, Locking::On).unwrap();
        // Refused: must not leave its own locks behind, or the next export
        // would be refused because of it after `first` is gone.
        let refused = open(&scratch.image(), true);
        assert!(refused.lock_for_export(Locking::On).is_err());
        drop(first);
        let _next = export(&scratch.image(), false, Locking::On).unwrap();
        drop(refused);
    }

    #[test]
    fn a_released_lock_lets_the_next_export_in_while_the_fd_is_open() {
        let scratch = Scratch::new("released");
        let first = export(&scratch.image(), false, Locking::On).unwrap();
        first.release_export_lock();
        let _next = export(&scratch.image(), false, Locking::On).unwrap();
        drop(first);
    }

    #[test]
    fn locking_off_neither_takes_nor_checks() {
        let scratch = Scratch::new("off");
        let unlocked = export(&scratch.image(), false, Locking::Off).unwrap();
        let locked = export(&scratch.image(), false, Locking::On).unwrap();
        let _shared = export(&scratch.image(), false, Locking::Off).unwrap();
        drop((unlocked, locked));
    }
}
