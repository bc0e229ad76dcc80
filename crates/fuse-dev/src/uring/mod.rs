//! The FUSE-over-io_uring transport (Linux 6.14+, `enable_uring`).
//!
//! After INIT grants `FUSE_OVER_IO_URING`, requests no longer come from
//! `read(2)` on `/dev/fuse`: each ring queue (one per possible CPU) has
//! entries (a header and a payload buffer, registered once) that the kernel
//! fills with a request and completes as a CQE; the reply is written into the
//! same entry and handed back with COMMIT_AND_FETCH, which also waits for the
//! next request. The classic device keeps carrying INTERRUPT, FORGET and
//! notifications.
//!
//! * `cmd`: the two commands as SQE128 entries;
//! * [`entries`]: the entries' memory and who may touch it when
//!   ([`LentPayload`] is the payload lent to a request);
//! * [`ring`]: the protocol on one queue's ring ([`RingQueue`] for probing);
//! * `queue`: a serving ring queue (the same [`Handler`](crate::Handler) and
//!   job table as `readv`), `reply`: storing a reply in its entry;
//! * [`cpus`]: how many queues the kernel wants, pinning;
//! * [`enable`]: the kernel's `enable_uring` switch (read by the server,
//!   turned on for tests and the lab by [`EnableUringGuard`]).

mod cmd;
pub mod cpus;
mod device;
pub mod enable;
pub mod entries;
pub(crate) mod queue;
mod reply;
pub mod ring;

pub use enable::{EnableUringGuard, GuardError, PARAM_PATH, ParamState, param_state};
pub use entries::{EntryBusy, HEADER_LEN, LentPayload, RingEntries};
pub use ring::{Delivered, RingError, RingEvent, RingQueue, RingSetup};

use crate::init::Negotiated;

/// The payload buffer size the kernel requires of every entry:
/// `max(FUSE_MIN_READ_BUFFER, max_write, max_pages * PAGE_SIZE)`.
pub fn payload_len(negotiated: &Negotiated) -> usize {
    fuse_proto::MIN_READ_BUFFER
        .max(negotiated.max_write as usize)
        .max(negotiated.max_pages as usize * crate::buffer::PAGE_SIZE)
}
