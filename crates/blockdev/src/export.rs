//! What every queue of an export shares: the image, the range locks, and
//! the file's presented owner and mode.

use std::sync::{Arc, Mutex};

use fuse_dev::PAGE_SIZE;
use fuse_proto::abi::{Attr, AttrOut, EntryOut, Kstatfs, StatfsOut, Statx, StatxOut, SxTime};
use fuse_proto::reply::{Errno, Reply};

use crate::image::Image;
use crate::range_lock::RangeLocks;

/// How long the kernel may cache attributes. The size only changes through
/// this export, which answers SETATTR with the new attributes.
const ATTR_VALID_SECS: u64 = 1;

/// How long the kernel may cache the image's name in directory mode.
const ENTRY_VALID_SECS: u64 = 3600;

/// The image's inode number when the mount root is a directory.
const FILE_IN_DIRECTORY_INO: u64 = 2;

/// `STATX_BASIC_STATS` and `STATX_BTIME` (`<linux/stat.h>`).
const STATX_BASIC_STATS: u32 = 0x7ff;
const STATX_BTIME: u32 = 0x800;

/// How opens with O_DIRECT are answered. The kernel handles a large O_DIRECT
/// request differently depending on the open's `FOPEN_DIRECT_IO` flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DirectOpens {
    /// `FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES`, like every other
    /// open: writers on the file run concurrently, but the kernel sends the
    /// `max_write`-sized pieces of one large request one after the other.
    #[default]
    ParallelWriters,
    /// No `FOPEN_DIRECT_IO` for O_DIRECT opens: the kernel's O_DIRECT path
    /// sends the pieces of one large request in parallel (a 2 MiB
    /// `qemu-img convert -t none` write becomes two concurrent 1 MiB
    /// WRITEs), but synchronous writers on the file take turns (AIO and
    /// io_uring clients still overlap).
    ParallelChunks,
}

/// Export behaviour chosen on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Writes past the end grow the image (otherwise they are short).
    pub growable: bool,
    /// The mount allows other users (enables owner changes, group/other modes).
    pub allow_other: bool,
    /// Passthrough: the kernel reads and writes the image itself through
    /// this backing id (`FOPEN_PASSTHROUGH`); only metadata reaches us.
    pub passthrough: Option<i32>,
    /// The mountpoint is a directory holding the image under this name
    /// (otherwise the mount root is the image itself).
    pub directory_entry: Option<Vec<u8>>,
    /// How opens with O_DIRECT are answered.
    pub direct_opens: DirectOpens,
}

/// The owner and permission bits the file shows. They live only in the
/// export (like QEMU's): `chmod`/`chown` on the export never touch the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presentation {
    /// Permission bits (without the file type).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The owner/mode fields a SETATTR asks to change; the others stay as they
/// are when it is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PresentationChange {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
}

impl PresentationChange {
    fn apply(self, to: Presentation) -> Presentation {
        Presentation {
            mode: self.mode.unwrap_or(to.mode),
            uid: self.uid.unwrap_or(to.uid),
            gid: self.gid.unwrap_or(to.gid),
        }
    }
}

/// State shared by every queue.
#[derive(Debug)]
pub struct Export {
    image: Image,
    locks: RangeLocks,
    options: ExportOptions,
    /// Size of bounce/read buffers: the largest request plus alignment slack.
    bounce_len: usize,
    presentation: Mutex<Presentation>,
}

impl Export {
    /// An export of `image` for requests of up to `max_request` bytes.
    pub fn new(image: Image, max_request: usize, options: ExportOptions) -> Arc<Export> {
        let slack = 2 * (image.alignment() as usize).max(PAGE_SIZE);
        // QEMU's defaults: owner read, plus write when writable; owned by
        // the user running the server.
        let mode = if image.is_read_only() { 0o400 } else { 0o600 };
        Arc::new(Export {
            bounce_len: (max_request + slack).next_multiple_of(PAGE_SIZE),
            image,
            locks: RangeLocks::new(),
            options,
            presentation: Mutex::new(Presentation {
                mode,
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
            }),
        })
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The options.
    pub fn options(&self) -> &ExportOptions {
        &self.options
    }

    /// The image's inode number: the root itself, or the one entry of the
    /// root directory.
    pub fn file_ino(&self) -> u64 {
        if self.options.directory_entry.is_some() {
            FILE_IN_DIRECTORY_INO
        } else {
            fuse_proto::ROOT_ID
        }
    }

    /// Whether `nodeid` is the directory that holds the image.
    pub fn is_directory(&self, nodeid: u64) -> bool {
        self.options.directory_entry.is_some() && nodeid == fuse_proto::ROOT_ID
    }

    /// The range locks (public so that tests can hold one from outside).
    pub fn locks(&self) -> &RangeLocks {
        &self.locks
    }

    /// Bytes in one bounce buffer.
    pub(crate) fn bounce_len(&self) -> usize {
        self.bounce_len
    }

    /// The presented owner and mode.
    pub fn presentation(&self) -> Presentation {
        *self.presentation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to what the file shows now.
    pub(crate) fn change_presentation(&self, change: PresentationChange) {
        let mut shown = self.presentation.lock().unwrap_or_else(|p| p.into_inner());
        *shown = change.apply(*shown);
    }

    /// The image size as it is now. With passthrough the kernel writes the
    /// image itself and may have extended it, so the file is asked;
    /// otherwise only this export changes the size and the cached value is
    /// exact.
    pub(crate) fn current_size(&self) -> std::io::Result<u64> {
        if self.options.passthrough.is_some() {
            self.image.refresh_size()
        } else {
            Ok(self.image.size())
        }
    }

    /// The file's attributes as the kernel should see them.
    pub fn attr(&self) -> std::io::Result<Attr> {
        let stat = self.image.stat()?;
        let shown = self.presentation();
        let size = self.current_size()?;
        // A device presents itself as a fully allocated regular file.
        let blocks = if self.image.is_block_device() {
            size.div_ceil(512)
        } else {
            stat.st_blocks as u64
        };
        Ok(Attr {
            ino: self.file_ino(),
            size,
            blocks,
            atime: stat.st_atime as u64,
            mtime: stat.st_mtime as u64,
            ctime: stat.st_ctime as u64,
            atimensec: stat.st_atime_nsec as u32,
            mtimensec: stat.st_mtime_nsec as u32,
            ctimensec: stat.st_ctime_nsec as u32,
            mode: libc::S_IFREG | shown.mode,
            nlink: 1,
            uid: shown.uid,
            gid: shown.gid,
            rdev: 0,
            blksize: PAGE_SIZE.max(self.image.alignment() as usize) as u32,
            flags: 0,
        })
    }

    /// The attributes of the directory holding the image (directory mode):
    /// read and search for whoever may reach the image.
    pub fn directory_attr(&self) -> std::io::Result<Attr> {
        let mut attr = self.attr()?;
        let shown = self.presentation();
        // r-x wherever the file grants any access, so that those who may
        // use the image can also reach it.
        let mut mode = 0;
        for shift in [6, 3, 0] {
            if shown.mode >> shift & 0o7 != 0 {
                mode |= 0o5 << shift;
            }
        }
        attr.ino = fuse_proto::ROOT_ID;
        attr.mode = libc::S_IFDIR | mode;
        attr.nlink = 2;
        attr.size = 0;
        attr.blocks = 0;
        Ok(attr)
    }

    /// A GETATTR reply for `nodeid`.
    pub(crate) fn getattr_reply(&self, unique: u64, nodeid: u64) -> Reply {
        let attr = if self.is_directory(nodeid) {
            self.directory_attr()
        } else {
            self.attr()
        };
        match attr {
            Ok(attr) => Reply::with(
                unique,
                &AttrOut {
                    attr_valid: ATTR_VALID_SECS,
                    attr_valid_nsec: 0,
                    dummy: 0,
                    attr,
                },
            ),
            Err(err) => Reply::error(unique, errno_of(&err)),
        }
    }

    /// The LOOKUP reply for the image's entry in the directory.
    pub(crate) fn entry_reply(&self, unique: u64) -> Reply {
        match self.attr() {
            Ok(attr) => Reply::with(
                unique,
                &EntryOut {
                    nodeid: FILE_IN_DIRECTORY_INO,
                    generation: 1,
                    // The name never changes while mounted.
                    entry_valid: ENTRY_VALID_SECS,
                    attr_valid: ATTR_VALID_SECS,
                    entry_valid_nsec: 0,
                    attr_valid_nsec: 0,
                    attr,
                },
            ),
            Err(err) => Reply::error(unique, errno_of(&err)),
        }
    }

    /// A STATX reply: what GETATTR says, plus the image's birth time, so
    /// that `stat` needs one round trip instead of STATX, ENOSYS, GETATTR.
    pub(crate) fn statx_reply(&self, unique: u64, nodeid: u64) -> Reply {
        let attr = if self.is_directory(nodeid) {
            self.directory_attr()
        } else {
            self.attr()
        };
        let (attr, times) = match (attr, self.image.statx_times()) {
            (Ok(attr), Ok(times)) => (attr, times),
            (Err(err), _) | (_, Err(err)) => return Reply::error(unique, errno_of(&err)),
        };
        let time = |t: rustix::fs::StatxTimestamp| SxTime {
            tv_sec: t.tv_sec,
            tv_nsec: t.tv_nsec,
            reserved: 0,
        };
        let mut mask = STATX_BASIC_STATS;
        let btime = match times.btime {
            Some(btime) => {
                mask |= STATX_BTIME;
                time(btime)
            }
            None => SxTime::default(),
        };
        let stat = Statx {
            mask,
            blksize: attr.blksize,
            nlink: attr.nlink,
            uid: attr.uid,
            gid: attr.gid,
            mode: attr.mode as u16,
            ino: attr.ino,
            size: attr.size,
            blocks: attr.blocks,
            atime: time(times.atime),
            btime,
            ctime: time(times.ctime),
            mtime: time(times.mtime),
            ..Statx::default()
        };
        Reply::with(
            unique,
            &StatxOut {
                attr_valid: ATTR_VALID_SECS,
                attr_valid_nsec: 0,
                flags: 0,
                spare: [0; 2],
                stat,
            },
        )
    }

    /// A GETATTR/SETATTR reply with the image's current attributes.
    pub(crate) fn attr_reply(&self, unique: u64) -> Reply {
        self.getattr_reply(unique, self.file_ino())
    }

    /// A STATFS reply describing the filesystem that holds the image; for a
    /// block device (whose node lives on devtmpfs) a full filesystem exactly
    /// the device's size.
    pub(crate) fn statfs_reply(&self, unique: u64) -> Reply {
        if self.image.is_block_device() {
            let bsize = PAGE_SIZE.max(self.image.alignment() as usize) as u64;
            return Reply::with(
                unique,
                &StatfsOut {
                    st: Kstatfs {
                        blocks: self.image.size() / bsize,
                        bfree: 0,
                        bavail: 0,
                        files: 1,
                        ffree: 0,
                        bsize: bsize as u32,
                        namelen: 255,
                        frsize: bsize as u32,
                        padding: 0,
                        spare: [0; 6],
                    },
                },
            );
        }
        match self.image.statvfs() {
            Ok(vfs) => Reply::with(
                unique,
                &StatfsOut {
                    st: Kstatfs {
                        blocks: vfs.f_blocks,
                        bfree: vfs.f_bfree,
                        bavail: vfs.f_bavail,
                        files: vfs.f_files,
                        ffree: vfs.f_ffree,
                        bsize: vfs.f_bsize as u32,
                        namelen: vfs.f_namemax as u32,
                        frsize: vfs.f_frsize as u32,
                        padding: 0,
                        spare: [0; 6],
                    },
                },
            ),
            Err(err) => Reply::error(unique, errno_of(&err)),
        }
    }
}

/// The errno to send for an I/O error (EIO when it has none).
pub(crate) fn errno_of(err: &std::io::Error) -> Errno {
    err.raw_os_error()
        .map(Errno::from_any)
        .unwrap_or(Errno::EIO)
}
