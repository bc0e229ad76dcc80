//! FALLOCATE (plain, keep-size, punch-hole, zero-range) and LSEEK
//! (SEEK_DATA / SEEK_HOLE).

use fuse_dev::{BackingOp, Chain, Job, QueueIo};
use fuse_proto::abi::{FallocateIn, LseekOut};
use fuse_proto::reply::{Errno, Reply};

use super::rw::aligned_range;
use super::{IMAGE, MAX_OFFSET, Parked, Pending, QueueHandler};
use crate::export::errno_of;
use crate::range_lock::{LockId, Reservation};

/// `fallocate(2)` mode bits the export maps onto the image.
const FALLOC_KEEP_SIZE: u32 = 0x01;
const FALLOC_PUNCH_HOLE: u32 = 0x02;
const FALLOC_ZERO_RANGE: u32 = 0x10;

const SEEK_DATA: u32 = 3;
const SEEK_HOLE: u32 = 4;

/// Which lock a FALLOCATE takes. One that may change the size takes the
/// whole image, like a resize; whether it may is decided under a lock,
/// since only a whole-image lock keeps the size from shrinking.
#[derive(Debug)]
pub(super) enum FallocateLock {
    /// First attempt: decided from the size.
    Undecided,
    /// The block-aligned range it touches.
    Range,
    /// The whole image, with the reservation of an earlier attempt.
    Whole(Option<Reservation>),
}

impl QueueHandler {
    /// FALLOCATE mapped onto the image's `fallocate(2)`.
    pub(super) fn fallocate(
        &mut self,
        job: Job,
        arg: FallocateIn,
        lock: FallocateLock,
        io: &mut QueueIo<'_, Pending>,
    ) {
        if self.image().is_read_only() {
            return io.reply_error(job, Errno::EROFS);
        }
        let mode = arg.mode;
        if mode & !(FALLOC_KEEP_SIZE | FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE) != 0
            || !self.image().fallocate_supported(mode)
        {
            return io.reply_error(job, Errno::EOPNOTSUPP);
        }
        if mode & FALLOC_PUNCH_HOLE != 0 && mode & FALLOC_KEEP_SIZE == 0 {
            return io.reply_error(job, Errno::EINVAL);
        }
        let Some(end) = arg
            .offset
            .checked_add(arg.length)
            .filter(|&end| end <= MAX_OFFSET)
        else {
            return io.reply_error(job, Errno::EFBIG);
        };
        if arg.length == 0 {
            return io.reply_error(job, Errno::EINVAL);
        }
        let keep_size = mode & FALLOC_KEEP_SIZE != 0;
        let size = match self.export.current_size() {
            Ok(size) => size,
            Err(err) => return io.reply_error(job, errno_of(&err)),
        };
        let may_grow = |size: u64| !keep_size && end > size;
        let lock = match lock {
            // A hint only: checked again under the lock.
            FallocateLock::Undecided if may_grow(size) => FallocateLock::Whole(None),
            FallocateLock::Undecided => FallocateLock::Range,
            decided => decided,
        };
        let (held, resizes) = match lock {
            FallocateLock::Whole(mut waiting) => {
                let Some(held) = self.export.locks().try_lock_all(self.queue, &mut waiting) else {
                    let lock = FallocateLock::Whole(waiting);
                    self.parked.push_back((job, Parked::Fallocate(arg, lock)));
                    return;
                };
                (held, true)
            }
            _ => {
                let (start, lock_end) =
                    aligned_range(arg.offset, arg.length, self.image().alignment());
                let Some(held) = self.export.locks().try_lock(start, lock_end, self.queue) else {
                    self.parked
                        .push_back((job, Parked::Fallocate(arg, FallocateLock::Range)));
                    return;
                };
                (held, false)
            }
        };
        // Under the lock the size can only have grown (a shrink needs the
        // whole image), unless this lock is the whole image.
        let size = match self.export.current_size() {
            Ok(size) => size,
            Err(err) => {
                self.unlock(held, io);
                return io.reply_error(job, errno_of(&err));
            }
        };
        if !resizes && may_grow(size) {
            // It shrank before this lock was taken: start over for the whole image.
            self.unlock(held, io);
            return self.fallocate(job, arg, FallocateLock::Whole(None), io);
        }
        let mut length = arg.length;
        if keep_size {
            // Nothing to do past the end; don't touch blocks beyond it.
            if arg.offset >= size {
                self.unlock(held, io);
                let unique = job.unique();
                return io.reply(job, Reply::empty(unique));
            }
            length = length.min(size - arg.offset);
        }
        io.submit(
            job,
            BackingOp::Fallocate {
                file: IMAGE,
                offset: arg.offset,
                len: length,
                mode: mode as i32,
            },
            Chain::new(),
            Pending::Fallocate {
                lock: held,
                resizes,
            },
        );
    }

    /// LSEEK (SEEK_DATA / SEEK_HOLE) from the image's own extents.
    pub(super) fn lseek(&self, unique: u64, offset: u64, whence: u32) -> Reply {
        if whence != SEEK_DATA && whence != SEEK_HOLE {
            return Reply::error(unique, Errno::EINVAL);
        }
        let size = match self.export.current_size() {
            Ok(size) => size,
            Err(err) => return Reply::error(unique, errno_of(&err)),
        };
        if offset >= size {
            return Reply::error(unique, Errno::ENXIO);
        }
        let data = whence == SEEK_DATA;
        match self.image().seek(offset, data) {
            // The image file can be longer than the export for a moment
            // (a growing write in flight) or behind its back; the export
            // ends at its size: data found beyond it is no data, a hole
            // beyond it is the hole at the end.
            Ok(position) if data && position >= size => Reply::error(unique, Errno::ENXIO),
            Ok(position) => Reply::with(
                unique,
                &LseekOut {
                    offset: position.min(size),
                },
            ),
            Err(err) => Reply::error(unique, errno_of(&err)),
        }
    }

    /// FALLOCATE finished: re-read the size if it may have changed.
    pub(super) fn fallocate_done(
        &mut self,
        job: Job,
        result: i32,
        chain: Chain,
        lock: LockId,
        resizes: bool,
        io: &mut QueueIo<'_, Pending>,
    ) {
        let unique = job.unique();
        io.pool().give_chain(chain);
        let refreshed = if resizes && result >= 0 {
            self.image().refresh_size().map(drop)
        } else {
            Ok(())
        };
        self.unlock(lock, io);
        match (result, refreshed) {
            (r, _) if r < 0 => io.reply_error(job, Errno::from_any(r)),
            (_, Err(err)) => io.reply_error(job, errno_of(&err)),
            _ => io.reply(job, Reply::empty(unique)),
        }
    }
}
