//! ioctl request numbers of `/dev/fuse` (`FUSE_DEV_IOC_*`).
//!
//! Computed with the kernel's `_IOC` encoding rather than written as
//! literals, so that they are right on every architecture; on x86-64 they
//! are checked against the values gcc computed from the 7.45 header.
//! Unknown ioctls fail with ENOTTY (also how an older kernel answers
//! `DEV_IOC_SYNC_INIT`).

use crate::abi::BackingMap;

/// `FUSE_DEV_IOC_MAGIC`: the ioctl type byte of `/dev/fuse` (its minor number).
pub const DEV_IOC_MAGIC: u8 = 229;

/// `FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t)`: attach a freshly opened
/// `/dev/fuse` fd to the connection of the fd whose number the argument
/// points to. Replies must go to the fd the request was read from.
pub const DEV_IOC_CLONE: u32 = ioc(IOC_READ, DEV_IOC_MAGIC, 0, size_of::<u32>());

/// `FUSE_DEV_IOC_BACKING_OPEN = _IOW(229, 1, struct fuse_backing_map)`:
/// register a backing file for passthrough; returns the `backing_id` (7.40).
pub const DEV_IOC_BACKING_OPEN: u32 = ioc(IOC_WRITE, DEV_IOC_MAGIC, 1, size_of::<BackingMap>());

/// `FUSE_DEV_IOC_BACKING_CLOSE = _IOW(229, 2, uint32_t)`: unregister a
/// backing id (7.40).
pub const DEV_IOC_BACKING_CLOSE: u32 = ioc(IOC_WRITE, DEV_IOC_MAGIC, 2, size_of::<u32>());

/// `FUSE_DEV_IOC_SYNC_INIT = _IO(229, 3)`: on an unattached fd, make the
/// following `mount(2)` send INIT synchronously (Linux 6.18).
pub const DEV_IOC_SYNC_INIT: u32 = ioc(IOC_NONE, DEV_IOC_MAGIC, 3, 0);

// The `_IOC` bit layout: most architectures use asm-generic's (2 direction
// bits, 14 size bits); powerpc, mips and sparc use 3 direction bits and 13
// size bits with different direction values.
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
mod layout {
    pub const IOC_NONE: u32 = 1;
    pub const IOC_READ: u32 = 2;
    pub const IOC_WRITE: u32 = 4;
    pub const IOC_SIZEBITS: u32 = 13;
}
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod layout {
    pub const IOC_NONE: u32 = 0;
    pub const IOC_READ: u32 = 2;
    pub const IOC_WRITE: u32 = 1;
    pub const IOC_SIZEBITS: u32 = 14;
}
use layout::{IOC_NONE, IOC_READ, IOC_SIZEBITS, IOC_WRITE};

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;

/// The kernel's `_IOC(dir, type, nr, size)`.
const fn ioc(dir: u32, ioc_type: u8, nr: u8, size: usize) -> u32 {
    // Argument sizes here are compile-time constants far below the field's limit.
    assert!(size < 1 << IOC_SIZEBITS);
    dir << IOC_DIRSHIFT
        | (size as u32) << IOC_SIZESHIFT
        | (ioc_type as u32) << IOC_TYPESHIFT
        | (nr as u32) << IOC_NRSHIFT
}

// Values gcc computed from the 7.45 header on x86-64 (reference report §1.6).
#[cfg(target_arch = "x86_64")]
const _: () = {
    assert!(DEV_IOC_CLONE == 0x8004_e500);
    assert!(DEV_IOC_BACKING_OPEN == 0x4010_e501);
    assert!(DEV_IOC_BACKING_CLOSE == 0x4004_e502);
    assert!(DEV_IOC_SYNC_INIT == 0x0000_e503);
};
