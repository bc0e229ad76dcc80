//! The backing image: opening it (O_DIRECT when possible), its alignment,
//! its size and attributes.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    direct: bool,
    alignment: u64,
    size: AtomicU64,
    read_only: bool,
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
        if !meta.is_file() {
            return Err(fail(
                "is not a regular file (only raw image files are supported)".into(),
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
        if FileType::from_raw_mode(stat.stx_mode as u32) != FileType::RegularFile {
            return Err(fail(
                "is not a regular file".into(),
                io::ErrorKind::InvalidInput,
            ));
        }
        let size = stat.stx_size;
        let mut alignment = 1;
        if direct {
            let reported = StatxFlags::from_bits_retain(stat.stx_mask)
                .contains(StatxFlags::DIOALIGN)
                && stat.stx_dio_offset_align != 0;
            alignment = if reported {
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
            direct,
            alignment,
            size: AtomicU64::new(size),
            read_only,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw fd, to register with the queues' rings.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Offsets and lengths of I/O must be multiples of this (1 when buffered).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Current size in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Whether the export is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Resizes the image (callers hold the whole-image lock).
    pub fn set_size(&self, size: u64) -> io::Result<()> {
        rustix::fs::ftruncate(&self.fd, size)?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    /// `fstat` of the image.
    pub fn stat(&self) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::fstat(&self.fd)?)
    }

    /// `fstatvfs` of the filesystem holding the image.
    pub fn statvfs(&self) -> io::Result<rustix::fs::StatVfs> {
        Ok(rustix::fs::fstatvfs(&self.fd)?)
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
