//! The block export: serving one raw image (a file or a block device) through FUSE.
//!
//! [`Image`] opens the image (O_DIRECT when possible) and knows its size and
//! alignment; [`Export`] holds what all queues share; [`QueueHandler`]
//! implements `fuse_dev::Handler` for one queue. Requests own their buffers
//! (moved out of the read slot they arrived in), so no buffer can be reused
//! while the kernel or the image still uses it.

mod export;
mod handler;
mod image;
mod image_lock;
pub mod range_lock;

pub use export::{DirectOpens, Export, ExportOptions, Presentation};
pub use handler::{Merge, Pending, QueueHandler, WriteJob};
pub use image::{CacheMode, Image, OpenError};
pub use image_lock::{LockError, Locking};
