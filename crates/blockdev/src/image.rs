//! The backing image: opening it (O_DIRECT when possible), its alignment,
//! its size and attributes.
//!
//! The image is a regular file or a block device (an LVM volume, a loop or
//! NBD device). A device's size and alignment come from the device (its size
//! at open, its logical block size); it cannot be resized, every byte of it
//! is data, and it offers only the fallocate modes `blkdev_fallocate` has.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};

/// How the image's page cache is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// O_DIRECT: no host page cache; requests go to the disk as they are.
    #[default]
    None,
    /// Buffered I/O through the host page cache; FLUSH/FSYNC call fdatasync.
    Writeback,
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
        })
    }
}

/// An image's timestamps from `statx`.
#[derive(Debug, Clone, Copy)]
pub struct StatxTimes {
    /// Last access.
    pub atime: rustix::fs::StatxTimestamp,
    /// Creation, where the filesystem records it.
    pub btime: Option<rustix::fs::StatxTimestamp>,
    /// Last status change.
    pub ctime: rustix::fs::StatxTimestamp,
    /// Last modification.
    pub mtime: rustix::fs::StatxTimestamp,
}

/// Why an image could not be opened. Each names the path and the cause in
/// one line, for the CLI.
#[derive(Debug)]
pub struct OpenError {
    path: PathBuf,
    message: String,
    /// The underlying I/O error kind, when there is one.
    pub kind: io::ErrorKind,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "image {}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for OpenError {}

/// An open image.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    fd: OwnedFd,
    direct: AtomicBool,
    alignment: AtomicU64,
    size: AtomicU64,
    read_only: bool,
    /// A block device rather than a regular file.
    block_device: bool,
    /// Serialises size changes so that a grow never undoes a larger grow.
    resize: Mutex<()>,
}

/// The alignment assumed when O_DIRECT works but the filesystem does not
/// report `STATX_DIOALIGN`: the largest common logical block size.
const FALLBACK_DIO_ALIGN: u64 = 4096;

impl Image {
    /// Opens the image at `path`.
    ///
    /// With [`CacheMode::None`] it tries O_DIRECT; if the filesystem refuses
    /// it (tmpfs) or the image's size is not a multiple of the O_DIRECT
    /// alignment, it falls back to buffered I/O with a warning.
    pub fn open(path: &Path, read_only: bool, cache: CacheMode) -> Result<Image, OpenError> {
        let fail = |message: String, kind: io::ErrorKind| OpenError {
            path: path.to_path_buf(),
            message,
            kind,
        };
        let meta = std::fs::metadata(path).map_err(|err| fail(describe(&err), err.kind()))?;
        if meta.is_dir() {
            return Err(fail(
                "is a directory, not a disk image".into(),
                io::ErrorKind::InvalidInput,
            ));
        }
        let block_device = meta.file_type().is_block_device();
        if !meta.is_file() && !block_device {
            return Err(fail(
                "is neither a regular file nor a block device".into(),
                io::ErrorKind::InvalidInput,
            ));
        }
        let access = if read_only {
            OFlags::RDONLY
        } else {
            OFlags::RDWR
        };
        let base = access | OFlags::CLOEXEC;
        let open =
            |flags: OFlags| rustix::fs::open(path, flags, Mode::empty()).map_err(io::Error::from);
        let (fd, mut direct) = match cache {
            CacheMode::Writeback => (open(base).map_err(|e| fail(describe(&e), e.kind()))?, false),
            CacheMode::None => match open(base | OFlags::DIRECT) {
                Ok(fd) => (fd, true),
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                    log::warn!(
                        "{}: the filesystem does not support O_DIRECT; using buffered I/O",
                        path.display()
                    );
                    (open(base).map_err(|e| fail(describe(&e), e.kind()))?, false)
                }
                Err(err) => return Err(fail(describe(&err), err.kind())),
            },
        };
        let stat = rustix::fs::statx(
            &fd,
            "",
            AtFlags::EMPTY_PATH,
            StatxFlags::BASIC_STATS | StatxFlags::DIOALIGN,
        )
        .map_err(|e| fail(format!("statx: {e}"), io::Error::from(e).kind()))?;
        // The path may have been replaced between the stat and the open.
        let expected = if block_device {
            FileType::BlockDevice
        } else {
            FileType::RegularFile
        };
        if FileType::from_raw_mode(stat.stx_mode as u32) != expected {
            return Err(fail(
                "changed type while being opened".into(),
                io::ErrorKind::InvalidInput,
            ));
        }
        let device_error = |what: &str, err: rustix::io::Errno| {
            fail(format!("{what}: {err}"), io::Error::from(err).kind())
        };
        let size = if block_device {
            rustix::fs::seek(&fd, rustix::fs::SeekFrom::End(0))
                .map_err(|e| device_error("reading the device size", e))?
        } else {
            stat.stx_size
        };
        let mut alignment = 1;
        if direct {
            let reported = StatxFlags::from_bits_retain(stat.stx_mask)
                .contains(StatxFlags::DIOALIGN)
                && stat.stx_dio_offset_align != 0;
            alignment = if block_device {
                // O_DIRECT on a device works in its logical blocks.
                rustix::fs::ioctl_blksszget(&fd)
                    .map_err(|e| device_error("BLKSSZGET", e))?
                    .into()
            } else if reported {
                stat.stx_dio_offset_align as u64
            } else {
                FALLBACK_DIO_ALIGN
            };
            if stat.stx_dio_mem_align as usize > fuse_dev::PAGE_SIZE {
                log::warn!(
                    "{}: O_DIRECT needs {}-byte aligned memory; using buffered I/O",
                    path.display(),
                    stat.stx_dio_mem_align
                );
                direct = false;
            } else if size % alignment != 0 {
                log::warn!(
                    "{}: size {size} is not a multiple of the O_DIRECT alignment {alignment}; \
                     using buffered I/O",
                    path.display()
                );
                direct = false;
            }
            if !direct {
                alignment = 1;
                let flags = rustix::fs::fcntl_getfl(&fd)
                    .map_err(|e| fail(e.to_string(), io::Error::from(e).kind()))?;
                rustix::fs::fcntl_setfl(&fd, flags - OFlags::DIRECT)
                    .map_err(|e| fail(e.to_string(), io::Error::from(e).kind()))?;
            }
        }
        Ok(Image {
            path: path.to_path_buf(),
            fd,
            direct: AtomicBool::new(direct),
            alignment: AtomicU64::new(alignment),
            size: AtomicU64::new(size),
            read_only,
            block_device,
            resize: Mutex::new(()),
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's fd (for registering it as a passthrough backing file).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The raw fd, to register with the queues' rings.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Acquire)
    }

    /// Offsets and lengths of I/O must be multiples of this (1 when buffered).
    pub fn alignment(&self) -> u64 {
        self.alignment.load(Ordering::Acquire)
    }

    /// Current size in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Whether the export is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the image is a block device (not a regular file).
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Whether the image's size can change: a regular file can be resized,
    /// a block device cannot (resizes fail with `EOPNOTSUPP`, as QEMU's
    /// `host_device` answers "Cannot resize device files").
    pub fn resizable(&self) -> bool {
        !self.block_device
    }

    /// Fails unless the image can be resized.
    fn check_resizable(&self) -> io::Result<()> {
        if self.resizable() {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        }
    }

    /// Resizes the image to exactly `size` (callers hold the whole-image
    /// range lock, so no write is in flight).
    pub fn set_size(&self, size: u64) -> io::Result<()> {
        self.check_resizable()?;
        let _resizing = self.resize.lock().unwrap_or_else(|p| p.into_inner());
        self.keep_size_aligned(size)?;
        rustix::fs::ftruncate(&self.fd, size)?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    /// Readies the image for a write that will extend it to `end`. The
    /// write itself extends the file; the size is only taken over once it
    /// is done ([`Image::grew_to`]), so nothing changes here but the I/O
    /// mode: O_DIRECT cannot write a partial last block, so an `end` that
    /// is not a multiple of the alignment switches to buffered I/O first.
    pub fn prepare_growth(&self, end: u64) -> io::Result<()> {
        self.check_resizable()?;
        let _resizing = self.resize.lock().unwrap_or_else(|p| p.into_inner());
        self.keep_size_aligned(end)
    }

    /// A write that extended the file to `end` is done: the size is at
    /// least `end` now (never shrinks; writes finish in any order).
    pub fn grew_to(&self, end: u64) {
        let _resizing = self.resize.lock().unwrap_or_else(|p| p.into_inner());
        if end > self.size() {
            self.size.store(end, Ordering::Release);
        }
    }

    /// Re-reads the size after an operation that may have changed it
    /// (fallocate without KEEP_SIZE).
    pub fn refresh_size(&self) -> io::Result<u64> {
        if self.block_device {
            // Fixed while exported: the size the device had at open.
            return Ok(self.size());
        }
        let _resizing = self.resize.lock().unwrap_or_else(|p| p.into_inner());
        let size = rustix::fs::fstat(&self.fd)?.st_size as u64;
        self.keep_size_aligned(size)?;
        self.size.store(size, Ordering::Release);
        Ok(size)
    }

    /// O_DIRECT cannot reach the bytes of a partial last block without
    /// extending the file, so a size that is not a multiple of the
    /// alignment switches the image to buffered I/O, for good. Requests in
    /// flight keep their O_DIRECT semantics; new ones see alignment 1.
    fn keep_size_aligned(&self, size: u64) -> io::Result<()> {
        let alignment = self.alignment();
        if !self.is_direct() || size.is_multiple_of(alignment) {
            return Ok(());
        }
        let flags = rustix::fs::fcntl_getfl(&self.fd)?;
        rustix::fs::fcntl_setfl(&self.fd, flags - OFlags::DIRECT)?;
        self.direct.store(false, Ordering::Release);
        self.alignment.store(1, Ordering::Release);
        log::warn!(
            "{}: size {size} is not a multiple of the O_DIRECT alignment {alignment}; \
             switching to buffered I/O",
            self.path.display()
        );
        Ok(())
    }

    /// `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)` on the image. Every byte of
    /// a block device is data.
    pub fn seek(&self, offset: u64, data: bool) -> io::Result<u64> {
        if self.block_device {
            return Ok(if data { offset } else { self.size() });
        }
        let whence = if data {
            rustix::fs::SeekFrom::Data(offset)
        } else {
            rustix::fs::SeekFrom::Hole(offset)
        };
        Ok(rustix::fs::seek(&self.fd, whence)?)
    }

    /// `fstat` of the image.
    pub fn stat(&self) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::fstat(&self.fd)?)
    }

    /// The image's timestamps, with the birth time where the filesystem has one.
    pub fn statx_times(&self) -> io::Result<StatxTimes> {
        let stat = rustix::fs::statx(
            &self.fd,
            "",
            AtFlags::EMPTY_PATH,
            StatxFlags::BASIC_STATS | StatxFlags::BTIME,
        )?;
        let has_btime = StatxFlags::from_bits_retain(stat.stx_mask).contains(StatxFlags::BTIME);
        Ok(StatxTimes {
            atime: stat.stx_atime,
            btime: has_btime.then_some(stat.stx_btime),
            ctime: stat.stx_ctime,
            mtime: stat.stx_mtime,
        })
    }

    /// `fstatvfs` of the filesystem holding the image.
    pub fn statvfs(&self) -> io::Result<rustix::fs::StatVfs> {
        Ok(rustix::fs::fstatvfs(&self.fd)?)
    }

    /// Whether `fallocate(2)` with `mode` can work on this image. A block
    /// device offers zeroing only (`blkdev_fallocate`): `ZERO_RANGE` (with
    /// or without `KEEP_SIZE`) and `PUNCH_HOLE | KEEP_SIZE` (if the device
    /// can unmap; otherwise it answers `EOPNOTSUPP` itself); allocating
    /// (mode 0, `KEEP_SIZE` alone) is not supported.
    pub fn fallocate_supported(&self, mode: u32) -> bool {
        const KEEP_SIZE: u32 = libc::FALLOC_FL_KEEP_SIZE as u32;
        const PUNCH_HOLE: u32 = libc::FALLOC_FL_PUNCH_HOLE as u32;
        const ZERO_RANGE: u32 = libc::FALLOC_FL_ZERO_RANGE as u32;
        !self.block_device
            || mode == ZERO_RANGE
            || mode == ZERO_RANGE | KEEP_SIZE
            || mode == PUNCH_HOLE | KEEP_SIZE
    }

    /// Writes everything to stable storage (at shutdown).
    pub fn sync(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        Ok(rustix::fs::fdatasync(self.fd.as_fd())?)
    }
}

/// An I/O error as one readable phrase ("No such file or directory").
fn describe(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("blockdev-image-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_image_is_a_clear_error() {
        let err =
            Image::open(Path::new("/nonexistent/disk.raw"), false, CacheMode::None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image /nonexistent/disk.raw: No such file or directory"
        );
        assert_eq!(err.kind, io::ErrorKind::NotFound);
    }

    #[test]
    fn directory_is_rejected() {
        let dir = temp_dir("dir");
        let err = Image::open(&dir, false, CacheMode::None).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is a directory, not a disk image"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unaligned_size_falls_back_to_buffered_io() {
        let dir = temp_dir("odd");
        let path = dir.join("odd.raw");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        let image = Image::open(&path, false, CacheMode::None).unwrap();
        assert!(!image.is_direct());
        assert_eq!(image.alignment(), 1);
        assert_eq!(image.size(), 1000);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn character_device_is_rejected() {
        let err = Image::open(Path::new("/dev/null"), true, CacheMode::None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image /dev/null: is neither a regular file nor a block device"
        );
        assert_eq!(err.kind, io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_file_is_resizable_and_allocates() {
        let dir = temp_dir("file-kind");
        let path = dir.join("file.raw");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let image = Image::open(&path, false, CacheMode::Writeback).unwrap();
        assert!(!image.is_block_device());
        assert!(image.resizable());
        assert!(image.fallocate_supported(0));
        assert!(image.fallocate_supported(libc::FALLOC_FL_KEEP_SIZE as u32));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn writeback_is_buffered() {
        let dir = temp_dir("wb");
        let path = dir.join("wb.raw");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let image = Image::open(&path, true, CacheMode::Writeback).unwrap();
        assert!(!image.is_direct());
        assert!(image.is_read_only());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
