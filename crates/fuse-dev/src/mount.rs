//! Mounting and unmounting: `mount(2)` as root, `fusermount3` otherwise.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketFlags, SocketType,
};

use crate::watcher::Watcher;

/// The filesystem type shown in `/proc/mounts` is `fuse.<SUBTYPE>`.
pub const SUBTYPE: &str = "fuse-export";

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Where: an existing regular file (or directory, with `root_is_dir`).
    pub mountpoint: PathBuf,
    /// Shown as the mount's source (`fsname`); usually the image path.
    pub fsname: String,
    /// Mount read-only.
    pub read_only: bool,
    /// Let users other than the mounting user access the mount.
    pub allow_other: bool,
    /// Go through `fusermount3` even when `mount(2)` would work.
    pub force_fusermount: bool,
    /// The root inode is a directory rather than a regular file.
    pub root_is_dir: bool,
    /// Largest READ the kernel may send (`max_read=`).
    pub max_read: u32,
    /// Make the mount go away by itself if the server dies: a watcher
    /// process does it (see [`crate::watcher`]; the program must call
    /// [`crate::watcher::run_if_requested`] first in `main`).
    pub auto_unmount: bool,
}

/// How the mount was made; decides how it is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountMethod {
    /// `mount(2)` by this process.
    Syscall,
    /// `fusermount3`.
    Fusermount,
}

/// A live mount. Unmounted by [`Mount::unmount`] or, as a last resort, on drop.
#[derive(Debug)]
pub struct Mount {
    mountpoint: PathBuf,
    method: MountMethod,
    mounted: bool,
    watcher: Option<Watcher>,
}

/// Opens `/dev/fuse` and mounts it at the mountpoint. Returns the device fd
/// (non-blocking, close-on-exec) and the mount.
pub fn mount(options: &MountOptions) -> io::Result<(OwnedFd, Mount)> {
    let is_root = rustix::process::geteuid().is_root();
    let (fd, method) = if is_root && !options.force_fusermount {
        (mount_syscall(options)?, MountMethod::Syscall)
    } else {
        (mount_fusermount(options)?, MountMethod::Fusermount)
    };
    let mut mount = Mount {
        mountpoint: options.mountpoint.clone(),
        method,
        mounted: true,
        watcher: None,
    };
    if options.auto_unmount {
        match Watcher::spawn(&options.mountpoint) {
            Ok(watcher) => mount.watcher = Some(watcher),
            Err(err) => {
                // Closed first, so that unmounting cannot wait on it.
                drop(fd);
                let _ = mount.unmount();
                return Err(err);
            }
        }
    }
    // Reads from the ring must never block a thread: with O_NONBLOCK an empty
    // queue answers EAGAIN and io_uring waits by polling instead.
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
    Ok((fd, mount))
}

fn open_device() -> io::Result<OwnedFd> {
    rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|err| io::Error::new(err.kind(), format!("cannot open /dev/fuse: {err}")))
}

fn mount_syscall(options: &MountOptions) -> io::Result<OwnedFd> {
    let fd = open_device()?;
    let rootmode = if options.root_is_dir {
        "40000"
    } else {
        "100000"
    };
    let mut data = format!(
        "fd={},rootmode={rootmode},user_id={},group_id={},default_permissions,max_read={}",
        fd.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
        options.max_read,
    );
    if options.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if options.read_only {
        flags |= MountFlags::RDONLY;
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount options"))?;
    rustix::mount::mount(
        options.fsname.as_str(),
        &options.mountpoint,
        format!("fuse.{SUBTYPE}").as_str(),
        flags,
        Some(data.as_c_str()),
    )
    .map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("mount on {}: {err}", options.mountpoint.display()),
        )
    })?;
    Ok(fd)
}

/// Finds `fusermount3` on PATH.
pub fn find_fusermount() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join("fusermount3"))
        .find(|candidate| candidate.is_file())
}

/// `fusermount3 -u -q -z -- <path>`: detaches the topmost mount at `path`
/// if it is a FUSE mount of the calling user (fusermount3 checks that).
pub(crate) fn fusermount_detach(path: &Path) -> io::Result<()> {
    let fusermount = find_fusermount()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "fusermount3 not found"))?;
    let output = Command::new(fusermount)
        .args(["-u", "-q", "-z", "--"])
        .arg(path)
        .stdin(Stdio::null())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fusermount3 -u failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn mount_fusermount(options: &MountOptions) -> io::Result<OwnedFd> {
    let fusermount = find_fusermount().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "fusermount3 not found (install fuse3)",
        )
    })?;
    // Our end keeps CLOEXEC; the child's end must survive exec.
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::empty(),
        None,
    )?;
    rustix::io::fcntl_setfd(&ours, rustix::io::FdFlags::CLOEXEC)?;
    let mut opts = format!(
        "fsname={},subtype={SUBTYPE},default_permissions,max_read={}",
        escape_option(&options.fsname),
        options.max_read
    );
    if options.allow_other {
        opts.push_str(",allow_other");
    }
    if options.read_only {
        opts.push_str(",ro");
    }
    let output = Command::new(&fusermount)
        .arg("-o")
        .arg(&opts)
        .arg("--")
        .arg(&options.mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(theirs);
    let received = receive_fd(&ours);
    let result = output.wait_with_output()?;
    match received {
        Ok(fd) => Ok(fd),
        Err(err) => {
            let stderr = String::from_utf8_lossy(&result.stderr);
            let stderr = stderr.trim();
            Err(io::Error::new(
                err.kind(),
                if stderr.is_empty() {
                    format!("fusermount3 failed ({}): {err}", result.status)
                } else {
                    format!("fusermount3 failed: {stderr}")
                },
            ))
        }
    }
}

/// fusermount3 splits options at commas; a comma in the image path would
/// otherwise start a new option.
fn escape_option(value: &str) -> String {
    value.replace('\\', "\\\\").replace(',', "\\,")
}

/// Receives the device fd fusermount3 sends: one data byte plus SCM_RIGHTS.
fn receive_fd(socket: &OwnedFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut space = [core::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    loop {
        let result = rustix::net::recvmsg(
            socket,
            &mut [io::IoSliceMut::new(&mut byte)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        );
        match result {
            Ok(msg) if msg.bytes == 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "fusermount3 closed the socket without sending a device fd",
                ));
            }
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "fusermount3 sent no file descriptor",
    ))
}

impl Mount {
    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// How the mount was made.
    pub fn method(&self) -> MountMethod {
        self.method
    }

    /// Unmounts now if nothing uses the mount, which ends the connection at
    /// once; a busy mount (a client has the file open or is in a syscall on
    /// it) stays mounted. Returns whether the mount is gone.
    pub fn try_unmount(&mut self) -> io::Result<bool> {
        if !self.mounted || !is_fuse_mountpoint(&self.mountpoint) {
            self.mounted = false;
            return Ok(true);
        }
        let gone = match self.method {
            MountMethod::Syscall => {
                match rustix::mount::unmount(&self.mountpoint, UnmountFlags::NOFOLLOW) {
                    Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => true,
                    Err(rustix::io::Errno::BUSY) => false,
                    Err(err) => return Err(err.into()),
                }
            }
            MountMethod::Fusermount => {
                let fusermount = find_fusermount().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "fusermount3 not found")
                })?;
                Command::new(fusermount)
                    .args(["-u", "-q", "--"])
                    .arg(&self.mountpoint)
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?
                    .success()
            }
        };
        if gone {
            self.mounted = false;
        }
        Ok(gone)
    }

    /// Stats `path` (the export, on this mount) so that the kernel learns
    /// its size: from the watcher process where there is one (see
    /// [`crate::watcher`] for why never from a server thread), else from
    /// this thread.
    pub fn stat_export(&mut self, path: &Path) -> io::Result<()> {
        match &mut self.watcher {
            Some(watcher) => watcher.stat(path),
            None => rustix::fs::stat(path).map(drop).map_err(io::Error::from),
        }
    }

    /// Unmounts. A mount that is already gone (external `umount`) is fine;
    /// a busy one (a client still has the file open) is detached lazily.
    /// Then the watcher stands down (or, if unmounting failed, is left to
    /// detach the mount).
    pub fn unmount(&mut self) -> io::Result<()> {
        let result = self.unmount_once();
        if let Some(watcher) = self.watcher.take() {
            watcher.finish(result.is_ok());
        }
        result
    }

    fn unmount_once(&mut self) -> io::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        if !is_fuse_mountpoint(&self.mountpoint) {
            return Ok(());
        }
        match self.method {
            MountMethod::Syscall => {
                match rustix::mount::unmount(&self.mountpoint, UnmountFlags::NOFOLLOW) {
                    Ok(()) => Ok(()),
                    Err(rustix::io::Errno::BUSY) => {
                        log::warn!(
                            "{} is busy (still open by a client); detaching it lazily",
                            self.mountpoint.display()
                        );
                        rustix::mount::unmount(
                            &self.mountpoint,
                            UnmountFlags::DETACH | UnmountFlags::NOFOLLOW,
                        )
                        .map_err(io::Error::from)
                    }
                    Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
                    Err(err) => Err(err.into()),
                }
            }
            MountMethod::Fusermount => fusermount_detach(&self.mountpoint),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(err) = self.unmount() {
            log::error!("unmounting {}: {err}", self.mountpoint.display());
        }
    }
}

/// Whether `path` is the mountpoint of a FUSE filesystem, by
/// `/proc/self/mountinfo` (no syscall on the path itself, which could block
/// on a dead server).
pub fn is_fuse_mountpoint(path: &Path) -> bool {
    crate::mountinfo::read().is_ok_and(|mounts| {
        let Ok(absolute) = std::path::absolute(path) else {
            return false;
        };
        mounts
            .iter()
            .any(|entry| entry.mountpoint == absolute && entry.fstype.starts_with("fuse"))
    })
}
