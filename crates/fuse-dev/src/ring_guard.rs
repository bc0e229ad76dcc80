//! What the kernel may still touch when a queue ends early.
//!
//! A queue whose ring failed may still have operations in flight in the
//! kernel: the memory they point into (job entries, the transport's own
//! buffers) and the ring itself are leaked rather than freed under the
//! kernel's feet. The process is about to stop serving anyway.

use std::io;

use crate::jobs::Core;

/// Ends a queue whose ring failed, leaking `core` (ring, job entries, pool)
/// and `transport_memory` (what the transport posted to the kernel).
pub(crate) fn abandon<S, M>(core: Core<S>, transport_memory: M, err: io::Error) -> io::Error {
    log::error!(
        "queue {}: io_uring failed ({err}); abandoning its buffers",
        core.index
    );
    std::mem::forget(core);
    std::mem::forget(transport_memory);
    err
}
