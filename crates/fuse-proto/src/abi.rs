//! Wire structs of protocol 7.45, one Rust struct per kernel struct.
//!
//! Every struct is `#[repr(C)]`, has explicit padding (the kernel's layouts
//! never rely on compiler padding) and is checked against the kernel's size
//! and every field offset at compile time (`assert_layout!` next to each
//! definition; the numbers come from the 7.45 header as compiled by gcc on
//! x86-64). Host byte order, as the kernel uses. Field names are the
//! kernel's, except that C's reserved `__name` fields drop the underscores.
//!
//! # Derives follow the direction of travel
//!
//! * Structs the kernel sends (request arguments) derive `FromBytes`,
//!   `KnownLayout` and `Immutable`: they can be read from any byte slice
//!   (`read_from_prefix` copies and so has no alignment requirement).
//! * Structs the server sends (reply payloads, notifications, ioctl
//!   arguments) derive `IntoBytes` and `Immutable`.
//! * A struct derives both only when it travels both ways (say so in its
//!   documentation), or when the requests and replies this project serves
//!   must be built or read back by tests and the fake device; the struct's
//!   documentation says which.
//!
//! The structs group by topic in private submodules; all of them are
//! re-exported here, so the path is always `fuse_proto::abi::Name`.

/// Compile-time checks of size and every field offset against the 7.45 header.
macro_rules! assert_layout {
    ($ty:ty, $size:expr, { $($field:ident @ $off:expr),* $(,)? }) => {
        const _: () = {
            assert!(size_of::<$ty>() == $size);
            $( assert!(core::mem::offset_of!($ty, $field) == $off); )*
        };
    };
}

mod attr;
mod device;
mod file;
mod header;
mod init;
mod node;
mod notify;
mod xattr;

pub use attr::*;
pub use device::*;
pub use file::*;
pub use header::*;
pub use init::*;
pub use node::*;
pub use notify::*;
pub use xattr::*;
