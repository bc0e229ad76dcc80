//! FALLOCATE (plain, keep-size, punch-hole, zero-range) and LSEEK
//! (SEEK_DATA / SEEK_HOLE).

use fuse_dev::{BackingOp, Chain, Job, QueueIo};
use fuse_proto::abi::{FallocateIn, LseekOut};
use fuse_proto::reply::{Errno, Reply};

use super::rw::aligned_range;
use super::{IMAGE, MAX_OFFSET, Parked, Pending, QueueHandler};
use crate::export::errno_of;
use crate::range_lock::LockId;

/// `fallocate(2)` mode bits the export maps onto the image.
const FALLOC_KEEP_SIZE: u32 = 0x01;
const FALLOC_PUNCH_HOLE: u32 = 0x02;
const FALLOC_ZERO_RANGE: u32 = 0x10;

const SEEK_DATA: u32 = 3;
const SEEK_HOLE: u32 = 4;

impl QueueHandler {
    /// FALLOCATE mapped onto the image's `fallocate(2)`.
    pub(super) fn fallocate(&mut self, job: Job, arg: FallocateIn, io: &mut QueueIo<'_, Pending>) {
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
        // Anything that may change the size takes the whole range, like a resize.
        let resizes = !keep_size && end > self.image().size();
        let (start, lock_end) = if resizes {
            (0, u64::MAX)
        } else {
            aligned_range(arg.offset, arg.length, self.image().alignment())
        };
        let Some(lock) = self.export.locks().try_lock(start, lock_end, self.queue) else {
            self.parked.push_back((job, Parked::Fallocate(arg)));
            return;
        };
        let size = self.image().size();
        let mut length = arg.length;
        if keep_size {
            // Nothing to do past the end; don't touch blocks beyond it.
            if arg.offset >= size {
                self.unlock(lock, io);
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
            Pending::Fallocate { lock, resizes },
        );
    }

    /// LSEEK (SEEK_DATA / SEEK_HOLE) from the image's own extents.
    pub(super) fn lseek(&self, unique: u64, offset: u64, whence: u32) -> Reply {
        if whence != SEEK_DATA && whence != SEEK_HOLE {
            return Reply::error(unique, Errno::EINVAL);
        }
        let size = self.image().size();
        if offset >= size {
            return Reply::error(unique, Errno::ENXIO);
        }
        match self.image().seek(offset, whence == SEEK_DATA) {
            // The image file can be longer than the export shows for a moment
            // (never shorter): a hole at the end is the export's end.
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
