//! The Linux FUSE kernel ABI, protocol 7.45 (Linux 6.18), as plain Rust.
//!
//! This crate describes the bytes that travel over `/dev/fuse`: the wire
//! structs ([`abi`]), opcodes ([`Opcode`]), flag sets ([`flags`]), request
//! parsing ([`Request::parse`]), reply encoding ([`reply`]), notifications
//! ([`notify`]), the device ioctls ([`ioctl`]) and the FUSE-over-io_uring
//! commands ([`uring`]). It performs no I/O and contains no `unsafe`; every
//! parser returns an error instead of panicking, whatever the input.
//!
//! The layouts come from the 7.45 kernel header, not from the system's
//! `<linux/fuse.h>` (which is 7.38 on Debian 12 and differs in
//! `fuse_open_out` and `fuse_init_out`). `docs/abi.md` lists the checks
//! that tie these definitions to the kernel.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[macro_use]
mod macros;

pub mod abi;
pub mod flags;
pub mod ioctl;
pub mod notify;
mod opcode;
pub mod reply;
mod request;
pub mod uring;

pub use opcode::Opcode;
pub use request::{
    Extension, Extensions, ForgetEntries, Operation, ParseError, ParseOptions, Records,
    RemovemappingEntries, Request,
};

/// The major protocol version this crate speaks (`FUSE_KERNEL_VERSION`).
pub const KERNEL_VERSION: u32 = 7;
/// The newest minor protocol version this crate describes (`FUSE_KERNEL_MINOR_VERSION`).
pub const KERNEL_MINOR_VERSION: u32 = 45;
/// The node id of the mount's root inode (`FUSE_ROOT_ID`).
pub const ROOT_ID: u64 = 1;
/// The kernel rejects reads of `/dev/fuse` with buffers smaller than this
/// (`FUSE_MIN_READ_BUFFER`).
pub const MIN_READ_BUFFER: usize = 8192;
/// Bytes of `fuse_in_header` plus `fuse_write_in`: what precedes a WRITE's data.
pub const WRITE_HEADER_LEN: usize = size_of::<abi::InHeader>() + size_of::<abi::WriteIn>();

/// Smallest read buffer the kernel accepts once `max_write` is negotiated:
/// `max(8192, 80 + max_write)`.
pub const fn min_read_buffer(max_write: u32) -> usize {
    let needed = WRITE_HEADER_LEN + max_write as usize;
    if needed > MIN_READ_BUFFER {
        needed
    } else {
        MIN_READ_BUFFER
    }
}
