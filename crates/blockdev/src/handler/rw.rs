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

use fuse_dev::{BackingOp, Chain, Incoming, Job, QueueIo};
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

/// A read-modify-write in progress: the write, its lock, and the geometry
/// fixed when it started (a concurrent growing write may switch the image
/// to buffered I/O meanwhile; this merge keeps the blocks it locked).
#[derive(Debug)]
pub struct Merge {
    write: WriteJob,
    lock: LockId,
    /// The block-aligned range written: `[start, end)`.
    start: u64,
    end: u64,
    /// The block size (the image's alignment when the merge started).
    block: u64,
    /// The image size under the lock: bytes at or past it read as zeros.
    size: u64,
    /// Whether the write extends the image (the size follows once it is done).
    grows: bool,
}

impl Merge {
    /// The partial blocks to read before merging, in order: the head block
    /// if the write starts inside it, the tail block if the write ends
    /// inside it (and it is not the head block).
    fn partial_blocks(&self) -> [Option<u64>; 2] {
        let head = (self.write.offset != self.start).then_some(self.start);
        let tail_block = self.end - self.block;
        let write_end = self.write.offset + self.write.len as u64;
        let tail = (write_end != self.end && head != Some(tail_block)).then_some(tail_block);
        [head, tail]
    }
}

/// Zeroes the chain's bytes from `from` to the end of its window.
fn zero_from(chain: &mut Chain, from: usize) {
    let mut skip = from;
    for segment in chain.segments_mut() {
        let bytes = segment.bytes_mut();
        let here = skip.min(bytes.len());
        bytes[here..].fill(0);
        skip -= here;
    }
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

    /// An aligned WRITE is on the image (durable if it asked for that). `placed` is the lock, the write's
    /// offset and length, and whether it extends the image.
    pub(super) fn write_done(
        &mut self,
        job: Job,
        result: i32,
        chain: Chain,
        placed: (LockId, u64, usize, bool),
        io: &mut QueueIo<'_, Pending>,
    ) {
        let (lock, offset, len, grows) = placed;
        io.pool().give_chain(chain);
        let landed = (result.max(0) as usize).min(len);
        self.end_write(job, result, lock, grows.then_some(offset), landed, io);
    }

    /// The merged blocks of a read-modify-write are on the image (durable
    /// if the write asked for that).
    pub(super) fn rmw_written(
        &mut self,
        job: Job,
        result: i32,
        chain: Chain,
        merge: Merge,
        io: &mut QueueIo<'_, Pending>,
    ) {
        let Merge {
            write,
            lock,
            start,
            grows,
            ..
        } = merge;
        // The merged blocks start before the client's data.
        let skip = (write.offset - start) as usize;
        let landed = (result.max(0) as usize).saturating_sub(skip).min(write.len);
        io.pool().give_chain(write.payload);
        io.pool().give_chain(chain);
        self.end_write(job, result, lock, grows.then_some(start), landed, io);
    }

    /// A write that started at `grows_from` (when it extends the image)
    /// completed with `result` (bytes written, or a negative errno): grows
    /// the image, releases the write's lock, and answers with the `landed`
    /// bytes of the client's data, or the error.
    fn end_write(
        &mut self,
        job: Job,
        result: i32,
        lock: LockId,
        grows_from: Option<u64>,
        landed: usize,
        io: &mut QueueIo<'_, Pending>,
    ) {
        let unique = job.unique();
        if let Some(start) = grows_from
            && result > 0
        {
            // Still under the lock, so no resize runs in between.
            self.image().grew_to(start + result as u64);
        }
        self.unlock(lock, io);
        if result < 0 {
            io.reply_error(job, Errno::from_any(result));
        } else {
            io.reply(job, write_reply(unique, landed));
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

    /// READ: the aligned range around the request is read into `own` (the
    /// buffers the request arrived in) when its first buffer holds it, else
    /// into a bounce buffer, and replied from there.
    pub(super) fn read(
        &mut self,
        job: Job,
        offset: u64,
        size: u32,
        own: Chain,
        io: &mut QueueIo<'_, Pending>,
    ) {
        let image_size = self.image().size();
        if offset >= image_size || size == 0 {
            io.pool().give_chain(own);
            io.reply_data(job, Chain::new());
            return;
        }
        let len = (size as u64).min(image_size - offset);
        let (start, end) = aligned_range(offset, len, self.image().alignment());
        let span = (end - start) as usize;
        if span > self.export.bounce_len() {
            io.pool().give_chain(own);
            log::error!("READ of {size} bytes exceeds the negotiated maximum");
            io.reply_error(job, Errno::EIO);
            return;
        }
        match self.read_destination(own, span, io) {
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

    /// Where an aligned read of `span` bytes goes: the request's own first
    /// buffer if it holds the whole span (no pool buffer needed; when the
    /// request came through a FUSE-over-io_uring entry, that is the entry's
    /// payload, so the data is read straight into the reply), else a bounce
    /// buffer. The rest of `own` goes back to the pool.
    fn read_destination(
        &self,
        mut own: Chain,
        span: usize,
        io: &mut QueueIo<'_, Pending>,
    ) -> std::io::Result<Chain> {
        let first = own.take_first();
        io.pool().give_chain(own);
        match first {
            Some(first) if first.capacity() >= span => {
                let mut chain = Chain::of(first);
                chain.select(0, span);
                Ok(chain)
            }
            other => {
                if let Some(first) = other {
                    io.pool().give_chain(Chain::of(first));
                }
                self.bounce(io, span)
            }
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
        // whole range, so it is either done or not started. Other writes
        // may only grow it meanwhile.
        let size = self.image().size();
        let write_end = write.offset + write.len as u64;
        let mut grows = false;
        if write_end > size {
            if self.export.options().growable {
                // The data goes first and the size follows once it is on
                // the image (`grew_to`): a write that fails leaves the size
                // as it was, and no reader sees the new range before its
                // data. The file itself grows with the write.
                if let Err(err) = self.image().prepare_growth(write_end) {
                    self.unlock(lock, io);
                    io.pool().give_chain(write.payload);
                    io.reply_error(job, errno_of(&err));
                    return;
                }
                grows = true;
            } else if write.offset >= size {
                // Nothing fits. ENOSPC, not a 0-byte write: asynchronous
                // clients (AIO, io_uring, the kernel's parallel O_DIRECT
                // pieces) receive a short write as EIO.
                self.unlock(lock, io);
                io.pool().give_chain(write.payload);
                io.reply_error(job, Errno::ENOSPC);
                return;
            } else {
                // Part fits: a short write, as a block device answers.
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
                Pending::Write {
                    lock,
                    offset,
                    len,
                    grows,
                },
            );
            return;
        }
        // Unaligned: merge into whole blocks.
        let bounce = match self.bounce(io, (end - start) as usize) {
            Ok(bounce) => bounce,
            Err(err) => {
                self.unlock(lock, io);
                io.pool().give_chain(write.payload);
                io.reply_error(job, errno_of(&err));
                return;
            }
        };
        let merge = Merge {
            write,
            lock,
            start,
            end,
            block: alignment,
            size,
            grows,
        };
        self.fill_partial_blocks(job, merge, bounce, None, io);
    }

    /// Read-modify-write: brings in the partial blocks after `done` (the
    /// block just read, if any), then merges the data in and writes the
    /// blocks. Blocks at or past the end of the image are zeros and need
    /// no read.
    fn fill_partial_blocks(
        &mut self,
        job: Job,
        merge: Merge,
        mut bounce: Chain,
        done: Option<u64>,
        io: &mut QueueIo<'_, Pending>,
    ) {
        let block = merge.block as usize;
        for offset in merge.partial_blocks().into_iter().flatten() {
            if done.is_some_and(|done| offset <= done) {
                continue;
            }
            bounce.select((offset - merge.start) as usize, block);
            if offset >= merge.size {
                zero_from(&mut bounce, 0);
                continue;
            }
            io.submit(
                job,
                BackingOp::Read {
                    file: IMAGE,
                    offset,
                },
                bounce,
                Pending::RmwFill {
                    merge,
                    block: offset,
                },
            );
            return;
        }
        bounce.select(0, (merge.end - merge.start) as usize);
        let skip = (merge.write.offset - merge.start) as usize;
        bounce.copy_from_chain(skip, &merge.write.payload);
        io.submit(
            job,
            BackingOp::Write {
                file: IMAGE,
                offset: merge.start,
                rw_flags: merge.write.durability.rw_flags(),
            },
            bounce,
            Pending::RmwWrite { merge },
        );
    }

    /// Read-modify-write: the partial block at `block` was read.
    pub(super) fn rmw_filled(
        &mut self,
        job: Job,
        result: i32,
        mut chain: Chain,
        merge: Merge,
        block: u64,
        io: &mut QueueIo<'_, Pending>,
    ) {
        // Only the bytes inside the image can be read; those past its end
        // (a block that crosses it) are zeros. A read that stops short of
        // the end is a failure, not EOF: filling with zeros would write
        // them over the image's data.
        let inside = (merge.size - block).min(merge.block) as usize;
        if result < 0 || (result as usize) < inside {
            let errno = if result < 0 {
                Errno::from_any(result)
            } else {
                log::error!(
                    "read-modify-write: reading {inside} bytes at {block} of the image returned {result}"
                );
                Errno::EIO
            };
            let Merge { write, lock, .. } = merge;
            self.unlock(lock, io);
            io.pool().give_chain(write.payload);
            io.pool().give_chain(chain);
            io.reply_error(job, errno);
            return;
        }
        zero_from(&mut chain, inside);
        self.fill_partial_blocks(job, merge, chain, Some(block), io);
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
