//! READ and WRITE, with read-modify-write for unaligned writes, and
//! FLUSH/FSYNC.
//!
//! A WRITE from a client that asked for synchronous writes (`O_DSYNC` or
//! `O_SYNC` at open, or `RWF_DSYNC` / `RWF_SYNC` on the call: the kernel
//! forwards all four as `O_DSYNC` / `O_SYNC` in `fuse_write_in.flags`) is
//! answered only once its data is on stable storage: the image write itself
//! carries `RWF_DSYNC` / `RWF_SYNC`, so the kernel completes it only when
//! durable (a FUA write or a write and a flush with O_DIRECT; the write and
//! an `fdatasync`/`fsync` of the range when buffered). Other writes are
//! answered once the image has them, which with `--cache none` may still
//! mean the disk's volatile cache; FLUSH and FSYNC make those durable.

use fuse_dev::{BackingOp, Chain, Completion, Incoming, Job, QueueIo};
use fuse_proto::abi::WriteOut;
use fuse_proto::reply::{Errno, Reply};
use rustix::io::ReadWriteFlags;

use super::{IMAGE, MAX_OFFSET, Parked, Pending, QueueHandler};
use crate::export::errno_of;
use crate::range_lock::LockId;

/// What a WRITE must reach before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// The image has the data (with `--cache none` possibly only in the
    /// disk's volatile cache; a later FLUSH/FSYNC makes it durable).
    Written,
    /// `O_DSYNC`: the data is on stable storage (`fdatasync`).
    Data,
    /// `O_SYNC`: data and metadata are on stable storage (`fsync`).
    DataAndMetadata,
}

impl Durability {
    /// From `fuse_write_in.flags`: the file's open flags, with `O_DSYNC` /
    /// `O_SYNC` added by the kernel for `RWF_DSYNC` / `RWF_SYNC` writes.
    pub(super) fn of_write_flags(flags: u32) -> Durability {
        // O_SYNC is __O_SYNC | O_DSYNC on Linux: test all of its bits.
        let o_sync = libc::O_SYNC as u32;
        if flags & o_sync == o_sync {
            Durability::DataAndMetadata
        } else if flags & libc::O_DSYNC as u32 != 0 {
            Durability::Data
        } else {
            Durability::Written
        }
    }

    /// The `RWF_*` flags that make the image write complete only once it
    /// is this durable.
    fn rw_flags(self) -> ReadWriteFlags {
        match self {
            Durability::Written => ReadWriteFlags::empty(),
            Durability::Data => ReadWriteFlags::DSYNC,
            Durability::DataAndMetadata => ReadWriteFlags::SYNC,
        }
    }
}

/// A write waiting for its range lock or in progress.
#[derive(Debug)]
pub struct WriteJob {
    offset: u64,
    len: usize,
    durability: Durability,
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
        durability: Durability,
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
                durability,
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

    /// An aligned WRITE is on the image (durable if it asked for that).
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

    /// The merged blocks of a read-modify-write are on the image (durable
    /// if the write asked for that). `placed` is the lock, the write's
    /// offset in the merged range and its length.
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
                durability,
                payload,
            } = write;
            io.submit(
                job,
                BackingOp::Write {
                    file: IMAGE,
                    offset,
                    rw_flags: durability.rw_flags(),
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
                rw_flags: write.durability.rw_flags(),
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
    use super::{Durability, aligned_range};

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

    #[test]
    fn durability_follows_the_forwarded_flags() {
        let rdwr = libc::O_RDWR as u32;
        let direct = libc::O_DIRECT as u32;
        assert_eq!(Durability::of_write_flags(rdwr), Durability::Written);
        assert_eq!(
            Durability::of_write_flags(rdwr | direct),
            Durability::Written
        );
        assert_eq!(
            Durability::of_write_flags(rdwr | libc::O_DSYNC as u32),
            Durability::Data
        );
        assert_eq!(
            Durability::of_write_flags(rdwr | direct | libc::O_SYNC as u32),
            Durability::DataAndMetadata
        );
        // __O_SYNC alone (never sent by Linux, which always adds O_DSYNC)
        // is not O_SYNC.
        let o_sync_only = (libc::O_SYNC & !libc::O_DSYNC) as u32;
        assert_eq!(
            Durability::of_write_flags(rdwr | o_sync_only),
            Durability::Written
        );
    }
}
