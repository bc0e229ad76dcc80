//! INIT and CUSE_INIT.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct fuse_init_in` (64 bytes since 7.36; 16 before).
///
/// Kernel → server. Derives `IntoBytes` too so that tests and the fake
/// device can build frames as the kernel does.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct InitIn {
    /// Kernel's major version.
    pub major: u32,
    /// Kernel's minor version.
    pub minor: u32,
    /// Kernel's maximum readahead in bytes.
    pub max_readahead: u32,
    /// Offered capability flags, bits 0..32 ([`InitFlags`](crate::flags::InitFlags)).
    pub flags: u32,
    /// Offered capability flags, bits 32..64 (7.36; valid with `INIT_EXT`).
    pub flags2: u32,
    /// Reserved.
    pub unused: [u32; 11],
}
assert_layout!(InitIn, 64, { major @ 0, minor @ 4, max_readahead @ 8, flags @ 12,
    flags2 @ 16, unused @ 20 });

/// Size of `fuse_init_in` sent by kernels before 7.36 (major, minor,
/// max_readahead, flags). Not a kernel macro; the kernel simply sent the
/// smaller struct.
pub const COMPAT_INIT_IN_SIZE: usize = 16;

/// `struct fuse_init_out`.
///
/// Server → kernel. Derives `FromBytes` too so that tests and the fake
/// device can read replies back. The 7.38 header calls bytes 36..64
/// `unused[7]`; 7.40 carved `max_stack_depth` from them and 7.43
/// `request_timeout`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct InitOut {
    /// Server's major version.
    pub major: u32,
    /// Server's minor version (the kernel adopts it verbatim).
    pub minor: u32,
    /// Maximum readahead (can only lower the kernel's).
    pub max_readahead: u32,
    /// Accepted capability flags, bits 0..32.
    pub flags: u32,
    /// Maximum number of background requests (default 12 if 0).
    pub max_background: u16,
    /// Background count at which the kernel reports congestion (default 9 if 0).
    pub congestion_threshold: u16,
    /// Maximum payload of one WRITE (at least 4096 is used).
    pub max_write: u32,
    /// Timestamp granularity in nanoseconds (7.23).
    pub time_gran: u32,
    /// Maximum pages per request (7.28; valid with `MAX_PAGES`).
    pub max_pages: u16,
    /// DAX mapping alignment, log2 (7.31; valid with `MAP_ALIGNMENT`).
    pub map_alignment: u16,
    /// Accepted capability flags, bits 32..64 (7.36; valid with `INIT_EXT`).
    pub flags2: u32,
    /// Stacking depth for passthrough (7.40; valid with `PASSTHROUGH`).
    pub max_stack_depth: u32,
    /// Request timeout in seconds (7.43; valid with `REQUEST_TIMEOUT`).
    pub request_timeout: u16,
    /// Reserved.
    pub unused: [u16; 11],
}
assert_layout!(InitOut, 64, { major @ 0, minor @ 4, max_readahead @ 8, flags @ 12,
    max_background @ 16, congestion_threshold @ 18, max_write @ 20, time_gran @ 24,
    max_pages @ 28, map_alignment @ 30, flags2 @ 32, max_stack_depth @ 36,
    request_timeout @ 40, unused @ 42 });

/// `FUSE_COMPAT_INIT_OUT_SIZE`: `fuse_init_out` size for minor < 5.
pub const COMPAT_INIT_OUT_SIZE: usize = 8;

/// `FUSE_COMPAT_22_INIT_OUT_SIZE`: `fuse_init_out` size for minor < 23.
pub const COMPAT_22_INIT_OUT_SIZE: usize = 24;

/// Bytes of `fuse_init_out` to send to a kernel that speaks `kernel_minor`.
///
/// Since 7.23 the kernel accepts any INIT reply up to 64 bytes (it is
/// "argvar"), but older kernels only know the short struct and reject a
/// reply that is longer than what they expect with EINVAL. The sizes match
/// what libfuse sends: 8 bytes below 7.5, 24 below 7.23, else 64.
pub const fn init_out_len(kernel_minor: u32) -> usize {
    if kernel_minor < 5 {
        COMPAT_INIT_OUT_SIZE
    } else if kernel_minor < 23 {
        COMPAT_22_INIT_OUT_SIZE
    } else {
        size_of::<InitOut>()
    }
}

/// `CUSE_INIT_INFO_MAX`: the maximum size of the device info strings that
/// follow `cuse_init_out`.
pub const CUSE_INIT_INFO_MAX: usize = 4096;

/// `struct cuse_init_in`: the CUSE_INIT request (over `/dev/cuse`).
///
/// Kernel → server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, KnownLayout, Immutable)]
pub struct CuseInitIn {
    /// Kernel's major version.
    pub major: u32,
    /// Kernel's minor version.
    pub minor: u32,
    /// Reserved.
    pub unused: u32,
    /// [`CuseInitFlags`](crate::flags::CuseInitFlags).
    pub flags: u32,
}
assert_layout!(CuseInitIn, 16, { major @ 0, minor @ 4, unused @ 8, flags @ 12 });

/// `struct cuse_init_out`: the CUSE_INIT reply; device info strings follow.
///
/// Server → kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, IntoBytes, Immutable)]
pub struct CuseInitOut {
    /// Server's major version.
    pub major: u32,
    /// Server's minor version.
    pub minor: u32,
    /// Reserved.
    pub unused: u32,
    /// [`CuseInitFlags`](crate::flags::CuseInitFlags).
    pub flags: u32,
    /// Maximum READ size.
    pub max_read: u32,
    /// Maximum WRITE size.
    pub max_write: u32,
    /// Character device major.
    pub dev_major: u32,
    /// Character device minor.
    pub dev_minor: u32,
    /// Reserved.
    pub spare: [u32; 10],
}
assert_layout!(CuseInitOut, 72, { major @ 0, minor @ 4, unused @ 8, flags @ 12,
    max_read @ 16, max_write @ 20, dev_major @ 24, dev_minor @ 28, spare @ 32 });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_reply_length_follows_the_kernel_minor() {
        assert_eq!(init_out_len(4), 8);
        assert_eq!(init_out_len(5), 24);
        assert_eq!(init_out_len(22), 24);
        assert_eq!(init_out_len(23), 64);
        assert_eq!(init_out_len(45), 64);
        assert_eq!(init_out_len(u32::MAX), 64);
    }
}
