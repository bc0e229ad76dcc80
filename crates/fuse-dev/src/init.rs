//! The INIT exchange: what we ask for, and what the kernel grants.

use std::io;
use std::os::fd::OwnedFd;

use fuse_proto::abi::{InitIn, InitOut};
use fuse_proto::flags::InitFlags;
use fuse_proto::reply::{Errno, Reply};
use fuse_proto::{KERNEL_MINOR_VERSION, KERNEL_VERSION, Operation, Request};

use crate::buffer::PAGE_SIZE;

/// What the server wants from INIT.
#[derive(Debug, Clone)]
pub struct InitRequest {
    /// Largest WRITE payload wanted (rounded down to pages, clamped to the
    /// kernel's `max_pages_limit`).
    pub max_write: u32,
    /// Requests the kernel may keep in the background (async DIO, readahead).
    pub max_background: u16,
    /// Extra capability flags wanted on top of the defaults; granted where
    /// offered. `InitFlags::OVER_IO_URING` asks for FUSE-over-io_uring
    /// (offered only while the admin has set
    /// `/sys/module/fuse/parameters/enable_uring`).
    pub extra_flags: InitFlags,
    /// The kernel's page limit per request (`fs.fuse.max_pages_limit`).
    pub max_pages_limit: u32,
    /// Ask for `FUSE_PASSTHROUGH` (the kernel does READ/WRITE on a backing
    /// file itself); granted only if offered.
    pub passthrough: bool,
}

/// The result of INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The minor version both sides use.
    pub minor: u32,
    /// Flags the kernel offered.
    pub offered: InitFlags,
    /// Flags granted (what we replied).
    pub flags: InitFlags,
    /// Negotiated `max_write`.
    pub max_write: u32,
    /// Negotiated `max_pages`.
    pub max_pages: u16,
}

/// Flags every export wants when offered.
///
/// ASYNC_DIO keeps AIO/io_uring clients asynchronous (else QD1); MAX_PAGES
/// allows 1 MiB requests; ABORT_ERROR tells an abort from an unmount;
/// DIRECT_IO_ALLOW_MMAP makes `mmap(MAP_SHARED)` work on our FOPEN_DIRECT_IO
/// file. Not ATOMIC_O_TRUNC: with it the kernel sets its size to 0 after
/// every successful OPEN with O_TRUNC, whatever the server did, so an
/// export that keeps its size would be seen as empty by the other open
/// files' AIO reads and mappings. Without it O_TRUNC arrives as a
/// SETATTR(size 0), whose reply carries the size the kernel then keeps.
pub const WANTED_FLAGS: InitFlags = InitFlags(
    InitFlags::ASYNC_READ.0
        | InitFlags::BIG_WRITES.0
        | InitFlags::ASYNC_DIO.0
        | InitFlags::MAX_PAGES.0
        | InitFlags::ABORT_ERROR.0
        | InitFlags::DIRECT_IO_ALLOW_MMAP.0,
);

/// The kernel's per-request page limit, from the sysctl (256 when unreadable).
pub fn max_pages_limit() -> u32 {
    std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(256)
}

/// Why INIT failed.
#[derive(Debug)]
pub enum InitError {
    /// The kernel's major version is not 7.
    UnsupportedMajor(u32),
}

impl Negotiated {
    /// Whether the kernel offered FUSE-over-io_uring (its `enable_uring`
    /// parameter was on when the connection was made).
    pub fn uring_offered(&self) -> bool {
        self.offered.contains(InitFlags::OVER_IO_URING)
    }

    /// Whether FUSE-over-io_uring was granted: the kernel holds new requests
    /// back until every ring queue has an entry registered, then delivers
    /// them to the rings instead of `/dev/fuse`.
    pub fn uring_granted(&self) -> bool {
        self.flags.contains(InitFlags::OVER_IO_URING)
    }
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitError::UnsupportedMajor(major) => {
                write!(
                    f,
                    "kernel speaks FUSE protocol {major}.x; only 7.x is supported"
                )
            }
        }
    }
}

impl std::error::Error for InitError {}

/// Computes the INIT reply for the kernel's offer. Pure, for tests.
pub fn negotiate(init: &InitIn, want: &InitRequest) -> Result<(InitOut, Negotiated), InitError> {
    if init.major != KERNEL_VERSION {
        return Err(InitError::UnsupportedMajor(init.major));
    }
    let minor = init.minor.min(KERNEL_MINOR_VERSION);
    let offered = if init.minor >= 36 {
        InitFlags::from_halves(init.flags, init.flags2)
    } else {
        InitFlags::from_halves(init.flags, 0)
    };
    let mut wanted = WANTED_FLAGS | want.extra_flags;
    if want.passthrough {
        wanted |= InitFlags::PASSTHROUGH;
    }
    let mut flags = wanted & offered;
    if flags.high() != 0 && offered.contains(InitFlags::INIT_EXT) {
        flags |= InitFlags::INIT_EXT;
    } else {
        flags = InitFlags::from_halves(flags.low(), 0);
    }
    let page_limit = want.max_pages_limit.clamp(1, u16::MAX as u32);
    let wanted_pages = (want.max_write / PAGE_SIZE as u32).max(1);
    let max_pages = if flags.contains(InitFlags::MAX_PAGES) {
        wanted_pages.min(page_limit)
    } else {
        wanted_pages.min(32)
    };
    let max_write = max_pages * PAGE_SIZE as u32;
    let out = InitOut {
        major: KERNEL_VERSION,
        minor,
        max_readahead: init.max_readahead,
        flags: flags.low(),
        max_background: want.max_background,
        congestion_threshold: (want.max_background as u32 * 3 / 4) as u16,
        max_write,
        time_gran: 1,
        max_pages: max_pages as u16,
        flags2: flags.high(),
        // Passthrough needs a stacking depth; our backing file sits on a
        // regular filesystem, one level below.
        max_stack_depth: if flags.contains(InitFlags::PASSTHROUGH) {
            1
        } else {
            0
        },
        ..InitOut::default()
    };
    Ok((
        out,
        Negotiated {
            minor,
            offered,
            flags,
            max_write,
            max_pages: max_pages as u16,
        },
    ))
}

/// Reads INIT from a freshly mounted device and answers it.
pub fn handshake(device: &OwnedFd, want: &InitRequest) -> io::Result<Negotiated> {
    let mut buf = vec![0u8; fuse_proto::MIN_READ_BUFFER.max(PAGE_SIZE * 2)];
    loop {
        // The fd is non-blocking; wait for the kernel's INIT.
        let mut pollfd = [rustix::event::PollFd::new(
            device,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut pollfd, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(err) => return Err(err.into()),
        }
        let n = match rustix::io::read(device, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(io::Error::new(err.kind(), format!("reading INIT: {err}"))),
        };
        let request = Request::parse(&buf[..n]).map_err(|err| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad INIT: {err}"))
        })?;
        let unique = request.header.unique;
        let Operation::Init(init) = request.op else {
            // Nothing else can come before INIT; answer and keep waiting.
            log::warn!("{:?} before INIT; answering EIO", request.op.opcode());
            write_reply(device, &Reply::error(unique, Errno::EIO))?;
            continue;
        };
        if init.major > KERNEL_VERSION {
            // A newer kernel: state our version; it retries INIT with ours.
            let ours = InitOut {
                major: KERNEL_VERSION,
                minor: KERNEL_MINOR_VERSION,
                ..InitOut::default()
            };
            write_reply(device, &Reply::with(unique, &ours))?;
            continue;
        }
        match negotiate(&init, want) {
            Ok((out, negotiated)) => {
                write_reply(device, &Reply::init(unique, &out, negotiated.minor))?;
                log::debug!(
                    "INIT: kernel 7.{} offered {:?}; granted {:?}",
                    init.minor,
                    negotiated.offered,
                    negotiated.flags
                );
                return Ok(negotiated);
            }
            Err(err) => {
                let _ = write_reply(device, &Reply::error(unique, Errno::EIO));
                return Err(io::Error::new(io::ErrorKind::Unsupported, err.to_string()));
            }
        }
    }
}

fn write_reply(device: &OwnedFd, reply: &Reply) -> io::Result<()> {
    rustix::io::write(device, reply.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_618() -> InitIn {
        InitIn {
            major: 7,
            minor: 45,
            max_readahead: 131072,
            flags: 0x73ff_fffb,
            flags2: 0x0000_05fd,
            ..InitIn::default()
        }
    }

    fn want(max_write: u32) -> InitRequest {
        InitRequest {
            max_write,
            max_background: 512,
            extra_flags: InitFlags::EMPTY,
            max_pages_limit: 256,
            passthrough: false,
        }
    }

    /// The 6.18 offer with `enable_uring=Y`: bit 41 is set (flags2 0x7fd).
    fn kernel_618_with_uring() -> InitIn {
        InitIn {
            flags2: 0x0000_07fd,
            ..kernel_618()
        }
    }

    #[test]
    fn io_uring_is_granted_only_when_offered_and_wanted() {
        let mut w = want(1 << 20);
        w.extra_flags = InitFlags::OVER_IO_URING;
        let (out, n) = negotiate(&kernel_618_with_uring(), &w).unwrap();
        assert!(n.uring_offered());
        assert!(n.uring_granted());
        let granted = InitFlags::from_halves(out.flags, out.flags2);
        assert!(granted.contains(InitFlags::OVER_IO_URING));
        assert!(
            granted.contains(InitFlags::INIT_EXT),
            "bit 41 needs INIT_EXT"
        );

        // Offered but not wanted (the readv transport): not granted, so the
        // kernel keeps delivering over /dev/fuse.
        let (out, n) = negotiate(&kernel_618_with_uring(), &want(1 << 20)).unwrap();
        assert!(n.uring_offered());
        assert!(!n.uring_granted());
        assert!(!InitFlags::from_halves(out.flags, out.flags2).contains(InitFlags::OVER_IO_URING));

        // Wanted but not offered (enable_uring=N): not granted.
        let (out, n) = negotiate(&kernel_618(), &w).unwrap();
        assert!(!n.uring_offered());
        assert!(!n.uring_granted());
        assert!(!InitFlags::from_halves(out.flags, out.flags2).contains(InitFlags::OVER_IO_URING));
    }

    #[test]
    fn grants_large_writes_async_dio_and_init_ext() {
        let (out, n) = negotiate(&kernel_618(), &want(1 << 20)).unwrap();
        assert_eq!(Reply::init(2, &out, n.minor).as_bytes().len(), 16 + 64);
        assert_eq!(out.minor, 45);
        assert_eq!(n.max_write, 1 << 20);
        assert_eq!(out.max_pages, 256);
        let granted = InitFlags::from_halves(out.flags, out.flags2);
        for flag in [
            InitFlags::ASYNC_DIO,
            InitFlags::MAX_PAGES,
            InitFlags::ASYNC_READ,
            InitFlags::INIT_EXT,
            InitFlags::DIRECT_IO_ALLOW_MMAP,
        ] {
            assert!(granted.contains(flag), "{flag:?} missing from {granted:?}");
        }
        assert!(!granted.contains(InitFlags::WRITEBACK_CACHE));
        assert!(
            !granted.contains(InitFlags::ATOMIC_O_TRUNC),
            "O_TRUNC must come as a SETATTR, whose reply sets the kernel's size"
        );
        assert_eq!(
            granted.difference(n.offered),
            InitFlags::EMPTY,
            "never grant what was not offered"
        );
        assert_eq!(out.max_background, 512);
    }

    #[test]
    fn max_write_is_clamped_to_the_page_limit() {
        let mut w = want(4 << 20);
        w.max_pages_limit = 256;
        let (out, n) = negotiate(&kernel_618(), &w).unwrap();
        assert_eq!(n.max_write, 1 << 20);
        assert_eq!(out.max_write, 1 << 20);
    }

    #[test]
    fn old_kernels_get_old_reply_sizes_and_no_high_flags() {
        let mut init = kernel_618();
        init.minor = 31;
        init.flags2 = 0xffff_ffff; // must be ignored before 7.36
        let (out, n) = negotiate(&init, &want(1 << 20)).unwrap();
        assert_eq!(out.minor, 31);
        assert_eq!(Reply::init(2, &out, n.minor).as_bytes().len(), 16 + 64);
        assert_eq!(out.flags2, 0);
        assert_eq!(n.flags.high(), 0);
    }

    #[test]
    fn passthrough_comes_with_a_stack_depth() {
        let mut w = want(1 << 20);
        w.passthrough = true;
        let (out, n) = negotiate(&kernel_618(), &w).unwrap();
        assert!(n.flags.contains(InitFlags::PASSTHROUGH));
        assert_eq!(out.max_stack_depth, 1);
        let (out, n) = negotiate(&kernel_618(), &want(1 << 20)).unwrap();
        assert!(!n.flags.contains(InitFlags::PASSTHROUGH));
        assert_eq!(out.max_stack_depth, 0);
    }

    #[test]
    fn rejects_other_majors() {
        let mut init = kernel_618();
        init.major = 8;
        assert!(matches!(
            negotiate(&init, &want(1 << 20)),
            Err(InitError::UnsupportedMajor(8))
        ));
    }

    #[test]
    fn pre_7_23_kernels_get_the_short_reply() {
        let mut init = kernel_618();
        init.minor = 22;
        let (out, n) = negotiate(&init, &want(1 << 20)).unwrap();
        assert_eq!(Reply::init(2, &out, n.minor).as_bytes().len(), 16 + 24);
        assert_eq!(out.minor, 22);
        assert!(!n.flags.contains(InitFlags::INIT_EXT));
    }
}
