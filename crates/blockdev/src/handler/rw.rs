//! READ and WRITE, with read-modify-write for unaligned writes, and
//! FLUSH/FSYNC.

use fuse_dev::{BackingOp, Chain, Completion, Incoming, Job, QueueIo};
use fuse_proto::abi::WriteOut;
use fuse_proto::reply::{Errno, Reply};

use super::{IMAGE, MAX_OFFSET, Parked, Pending, QueueHandler};
use crate::export::errno_of;
use crate::range_lock::LockId;

/// A write waiting for its range lock or in progress.
#[derive(Debug)]
pub struct WriteJob {
    offset: u64,
    len: usize,
    /// The request's data (in-place page + spill-over), windowed to `len`.
    payload: Chain,
}

/// Aligned range `[start, end)` around `offset..offset+len`.
pub(super) fn aligned_range(offset: u64, len: u64, alignment: u64) -> (u64, u64) {
    let start = offset - offset % alignment;
    let end = (offset + len).next_multiple_of(alignment);
    (start, end)
}

impl QueueHandler {
    /// WRITE: refused on a read-only export, then locked and issued.
    pub(super) fn write(
        &mut self,
        job: Job,
        offset: u64,
        incoming: Incoming,
        io: &mut QueueIo<'_, Pending>,
    ) {
        if self.image().is_read_only() {
            io.pool().give_chain(incoming.into_buffers());
            return io.reply_error(job, Errno::EROFS);
        }
        let payload = incoming.into_write_data();
        if offset
            .checked_add(payload.len() as u64)
            .is_none_or(|end| end > MAX_OFFSET)
        {
            io.pool().give_chain(payload);
            return io.reply_error(job, Errno::EFBIG);
        }
        let len = payload.len();
        self.start_write(
            job,
            WriteJob {
                offset,
                len,
                payload,
            },
            io,
        );
    }

    /// READ finished: reply with the requested part of what was read.
    pub(super) fn read_done(
        &mut self,
        job: Job,
        result: i32,
        mut chain: Chain,
        skip: usize,
        len: usize,
        io: &mut QueueIo<'_, Pending>,
    ) {
        if result < 0 {
            io.pool().give_chain(chain);
            return io.reply_error(job, Errno::from_any(result));
        }
        let available = (result as usize).saturating_sub(skip).min(len);
        chain.narrow(skip, available);
        io.reply_data(job, chain);
    }

    /// An aligned WRITE is on the image.
    pub(super) fn write_done(
        &mut self,
        job: Job,
        result: i32,
        chain: Chain,
        lock: LockId,
        len: usize,
        io: &mut QueueIo<'_, Pending>,
    ) {
        let unique = job.unique();
        io.pool().give_chain(chain);
        self.unlock(lock, io);
        if result < 0 {
            io.reply_error(job, Errno::from_any(result));
        } else {
            io.reply(job, write_reply(unique, (result as usize).min(len)));
        }
    }

    /// The merged blocks of a read-modify-write are on the image. `placed`
    /// is the lock, the write's offset in the merged range and its length.
    pub(super) fn rmw_written(
        &mut self,
        job: Job,
        result: i32,
        chain: Chain,
        payload: Chain,
        placed: (LockId, usize, usize),
        io: &mut QueueIo<'_, Pending>,
    ) {
        let (lock, skip, len) = placed;
        let unique = job.unique();
        io.pool().give_chain(payload);
        io.pool().give_chain(chain);
        self.unlock(lock, io);
        if result < 0 {
            io.reply_error(job, Errno::from_any(result));
        } else {
            io.reply(
                job,
                write_reply(unique, (result as usize).saturating_sub(skip).min(len)),
            );
        }
    }

    /// FLUSH / FSYNC: reach the image (nothing to do when read-only).
    pub(super) fn sync(&mut self, job: Job, datasync: bool, io: &mut QueueIo<'_, Pending>) {
        if self.image().is_read_only() {
            let unique = job.unique();
            io.reply(job, Reply::empty(unique));
        } else {
            let op = BackingOp::Fsync {
                file: IMAGE,
                datasync,
            };
            io.submit(job, op, Chain::new(), Pending::Sync);
        }
    }

    /// FLUSH / FSYNC finished.
    pub(super) fn sync_done(
        &mut self,
        job: Job,
        result: i32,
        chain: Chain,
        io: &mut QueueIo<'_, Pending>,
    ) {
        io.pool().give_chain(chain);
        if result < 0 {
            io.reply_error(job, Errno::from_any(result));
        } else {
            let unique = job.unique();
            io.reply(job, Reply::empty(unique));
        }
    }

    pub(super) fn read(&mut self, job: Job, offset: u64, size: u32, io: &mut QueueIo<'_, Pending>) {
        let image_size = self.image().size();
        if offset >= image_size || size == 0 {
            io.reply_data(job, Chain::new());
            return;
        }
        let len = (size as u64).min(image_size - offset);
        let (start, end) = aligned_range(offset, len, self.image().alignment());
        let span = (end - start) as usize;
        if span > self.export.bounce_len() {
            log::error!("READ of {size} bytes exceeds the negotiated maximum");
            io.reply_error(job, Errno::EIO);
            return;
        }
        match self.bounce(io, span) {
            Ok(chain) => io.submit(
                job,
                BackingOp::Read {
                    file: IMAGE,
                    offset: start,
                },
                chain,
                Pending::Read {
                    skip: (offset - start) as usize,
                    len: len as usize,
                },
            ),
            Err(err) => io.reply_error(job, errno_of(&err)),
        }
    }

    /// Locks the write's range, settles it against the size, and issues it;
    /// or parks it.
    pub(super) fn start_write(
        &mut self,
        job: Job,
        mut write: WriteJob,
        io: &mut QueueIo<'_, Pending>,
    ) {
        let (start, end) = aligned_range(write.offset, write.len as u64, self.image().alignment());
        let Some(lock) = self.export.locks().try_lock(start, end, self.queue) else {
            self.parked.push_back((job, Parked::Write(write)));
            return;
        };
        // The size is read under the lock: a concurrent shrink holds the
        // whole range, so it is either done or not started.
        let size = self.image().size();
        let write_end = write.offset + write.len as u64;
        if write_end > size {
            if self.export.options().growable {
                if let Err(err) = self.image().grow_to(write_end) {
                    self.unlock(lock, io);
                    io.pool().give_chain(write.payload);
                    io.reply_error(job, errno_of(&err));
                    return;
                }
            } else if write.offset >= size {
                // Past the end of a fixed-size image: nothing written (dd: ENOSPC).
                self.unlock(lock, io);
                io.pool().give_chain(write.payload);
                let unique = job.unique();
                io.reply(
                    job,
                    Reply::with(
                        unique,
                        &WriteOut {
                            size: 0,
                            padding: 0,
                        },
                    ),
                );
                return;
            } else {
                write.len = (size - write.offset) as usize;
                write.payload.narrow(0, write.len);
            }
        }
        // Growing may have switched the image to buffered I/O (alignment 1);
        // the new range is inside the locked one either way.
        let alignment = self.image().alignment();
        let (start, end) = aligned_range(write.offset, write.len as u64, alignment);
        if start == write.offset && end == write.offset + write.len as u64 {
            // Aligned: straight from the request's buffers, no copy.
            let WriteJob {
                offset,
                len,
                payload,
            } = write;
            io.submit(
                job,
                BackingOp::Write {
                    file: IMAGE,
                    offset,
                },
                payload,
                Pending::Write { lock, len },
            );
            return;
        }
        // Unaligned: merge into whole blocks. Read the partial head block,
        // then the partial tail block (unless it is the same block).
        let span = (end - start) as usize;
        let mut bounce = match self.bounce(io, span) {
            Ok(bounce) => bounce,
            Err(err) => {
                self.unlock(lock, io);
                io.pool().give_chain(write.payload);
                io.reply_error(job, errno_of(&err));
                return;
            }
        };
        let block = alignment as usize;
        let head_partial = write.offset != start;
        let tail_partial = write.offset + write.len as u64 != end;
        let (fill_offset, tail_next) = if head_partial {
            bounce.select(0, block);
            (start, tail_partial && end - alignment != start)
        } else {
            bounce.select(span - block, block);
            (end - alignment, false)
        };
        io.submit(
            job,
            BackingOp::Read {
                file: IMAGE,
                offset: fill_offset,
            },
            bounce,
            Pending::RmwFill {
                write,
                lock,
                tail_next,
            },
        );
    }

    /// Read-modify-write: a partial block was read; read the next one, or
    /// merge the data in and write the blocks.
    pub(super) fn rmw_filled(
        &mut self,
        job: Job,
        done: Completion<Pending>,
        io: &mut QueueIo<'_, Pending>,
    ) {
        let Completion {
            result,
            mut chain,
            state,
        } = done;
        let Pending::RmwFill {
            write,
            lock,
            tail_next,
        } = state
        else {
            return io.finish_with(job, chain);
        };
        if result < 0 {
            self.unlock(lock, io);
            io.pool().give_chain(write.payload);
            io.pool().give_chain(chain);
            io.reply_error(job, Errno::from_any(result));
            return;
        }
        // A short read means the block crosses the end of the file: the
        // missing bytes read as zeros (the pool buffer may hold old data).
        let read = result as usize;
        let window = chain.len();
        if read < window {
            chain.copy_in(read, &vec![0u8; window - read]);
        }
        // The alignment cannot have changed: this write holds a lock that
        // every resize needs.
        let alignment = self.image().alignment();
        let (start, end) = aligned_range(write.offset, write.len as u64, alignment);
        let span = (end - start) as usize;
        if tail_next {
            let block = alignment as usize;
            chain.select(span - block, block);
            io.submit(
                job,
                BackingOp::Read {
                    file: IMAGE,
                    offset: end - alignment,
                },
                chain,
                Pending::RmwFill {
                    write,
                    lock,
                    tail_next: false,
                },
            );
            return;
        }
        chain.select(0, span);
        let skip = (write.offset - start) as usize;
        chain.copy_from_chain(skip, &write.payload);
        io.submit(
            job,
            BackingOp::Write {
                file: IMAGE,
                offset: start,
            },
            chain,
            Pending::RmwWrite {
                lock,
                payload: write.payload,
                skip,
                len: write.len,
            },
        );
    }
}

pub(super) fn write_reply(unique: u64, written: usize) -> Reply {
    Reply::with(
        unique,
        &WriteOut {
            size: written as u32,
            padding: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::aligned_range;

    #[test]
    fn aligned_range_covers_the_request() {
        assert_eq!(aligned_range(0, 4096, 512), (0, 4096));
        assert_eq!(aligned_range(1, 1, 512), (0, 512));
        assert_eq!(aligned_range(511, 2, 512), (0, 1024));
        assert_eq!(
            aligned_range(4097, 70000, 4096),
            (4096, 4096 + 69632 + 4096)
        );
        assert_eq!(aligned_range(10, 5, 1), (10, 15));
    }
}
