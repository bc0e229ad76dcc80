//! Serving the requests of one queue.
//!
//! Data never takes a detour: an aligned WRITE goes to the image straight
//! from the buffers the request arrived in (in-place page + spill-over), a
//! READ is read into one pool buffer and replied from it. Only requests that
//! are not aligned to the image's O_DIRECT alignment use a bounce buffer
//! (read-modify-write for writes).
//!
//! Every write, fallocate and resize holds a range lock (see
//! [`crate::range_lock`]) from before it looks at the image size until its
//! effect is on the image. A request that cannot lock is parked and retried
//! when a lock is released.

use std::collections::VecDeque;
use std::sync::Arc;

use fuse_dev::{
    BackingFile, BackingOp, Chain, Completion, Handler, Incoming, Job, QueueContext, QueueIo,
    Segment, Waker,
};
use fuse_proto::abi::{FallocateIn, LseekOut, OpenOut, SetattrIn, WriteOut};
use fuse_proto::flags::{FopenFlags, FsyncFlags, SetattrValid};
use fuse_proto::reply::{DirentBuffer, Errno, Reply};
use fuse_proto::{Opcode, Operation};

use crate::export::{DirectOpens, Export, Presentation, errno_of};
use crate::image::Image;
use crate::range_lock::{LockId, MAX_QUEUES};

/// The image is the only backing file, registered first.
const IMAGE: BackingFile = BackingFile(0);

/// `fallocate(2)` mode bits the export maps onto the image.
const FALLOC_KEEP_SIZE: u32 = 0x01;
const FALLOC_PUNCH_HOLE: u32 = 0x02;
const FALLOC_ZERO_RANGE: u32 = 0x10;

const SEEK_DATA: u32 = 3;
const SEEK_HOLE: u32 = 4;

/// Offsets beyond this cannot be passed to the kernel's file APIs.
const MAX_OFFSET: u64 = i64::MAX as u64;

/// A write waiting for its range lock or in progress.
#[derive(Debug)]
pub struct WriteJob {
    offset: u64,
    len: usize,
    /// The request's data (in-place page + spill-over), windowed to `len`.
    payload: Chain,
}

/// What to answer once a resize is done.
#[derive(Debug, Clone, Copy)]
enum AfterResize {
    /// SETATTR: apply the new owner/mode (if any), reply attributes.
    Setattr(Option<Presentation>),
    /// OPEN with O_TRUNC on a growable export (with the open's flags).
    Open {
        /// The `open(2)` flags.
        flags: u32,
    },
}

/// What a queue parks until a range lock is free.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "parked requests live in a VecDeque that is reused; boxing would allocate per conflict"
)]
enum Parked {
    Write(WriteJob),
    Resize { size: u64, then: AfterResize },
    Fallocate(FallocateIn),
}

/// Per-request state while backing I/O runs.
#[derive(Debug)]
pub enum Pending {
    /// A READ of the aligned range around the requested bytes.
    Read {
        /// Bytes to skip at the start of what was read.
        skip: usize,
        /// Bytes requested (after clamping to the size).
        len: usize,
    },
    /// A WRITE straight from the request's buffers.
    Write {
        /// Held until the data is on the image.
        lock: LockId,
        /// Bytes requested.
        len: usize,
    },
    /// Read-modify-write: reading the partial head or tail block.
    RmwFill {
        /// The write being served.
        write: WriteJob,
        /// Its lock.
        lock: LockId,
        /// Whether the tail block still has to be read after this one.
        tail_next: bool,
    },
    /// Read-modify-write: writing the merged blocks.
    RmwWrite {
        /// Its lock.
        lock: LockId,
        /// The write's data, returned to the pool at the end.
        payload: Chain,
        /// Offset of the write in the merged range.
        skip: usize,
        /// Bytes requested.
        len: usize,
    },
    /// FALLOCATE.
    Fallocate {
        /// Its lock.
        lock: LockId,
        /// Whether it may have changed the size.
        resizes: bool,
    },
    /// FLUSH / FSYNC.
    Sync,
}

/// Aligned range `[start, end)` around `offset..offset+len`.
fn aligned_range(offset: u64, len: u64, alignment: u64) -> (u64, u64) {
    let start = offset - offset % alignment;
    let end = (offset + len).next_multiple_of(alignment);
    (start, end)
}

/// Serves one queue.
#[derive(Debug)]
pub struct QueueHandler {
    export: Arc<Export>,
    queue: usize,
    wakers: Arc<[Waker]>,
    parked: VecDeque<(Job, Parked)>,
}

/// What a request asks, copied out of its buffer so that the buffer can move.
enum Op {
    Getattr,
    Statx,
    Lookup { found: bool },
    Opendir,
    Readdir { offset: u64, size: u32 },
    Releasedir,
    Setattr(SetattrIn),
    Open { flags: u32 },
    Read { offset: u64, size: u32 },
    Write { offset: u64 },
    Statfs,
    Release,
    Sync { datasync: bool },
    Fallocate(FallocateIn),
    Lseek { offset: u64, whence: u32 },
    Interrupt,
    Forget,
    Unsupported(Opcode),
}

impl QueueHandler {
    pub(crate) fn new(export: Arc<Export>, context: QueueContext) -> QueueHandler {
        QueueHandler {
            export,
            queue: context.index,
            wakers: context.wakers,
            parked: VecDeque::new(),
        }
    }

    fn image(&self) -> &Image {
        self.export.image()
    }

    /// A pool buffer windowed to `len` bytes.
    fn bounce(&self, io: &mut QueueIo<'_, Pending>, len: usize) -> std::io::Result<Chain> {
        let buf = io.pool().take(self.export.bounce_len())?;
        let mut chain = Chain::of(Segment::whole(buf));
        chain.select(0, len);
        Ok(chain)
    }

    /// READ: the aligned range around the request is read into `own` (the
    /// buffers the request arrived in) when its first buffer holds it, else
    /// into a bounce buffer, and replied from there.
    fn read(
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
    fn start_write(&mut self, job: Job, mut write: WriteJob, io: &mut QueueIo<'_, Pending>) {
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
    fn rmw_filled(&mut self, job: Job, done: Completion<Pending>, io: &mut QueueIo<'_, Pending>) {
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

    /// Releases a lock and lets every queue that waited for one retry.
    fn unlock(&mut self, lock: LockId, io: &mut QueueIo<'_, Pending>) {
        let waiting = self.export.locks().unlock(lock);
        for queue in 0..self.wakers.len() {
            if waiting & (1 << queue) == 0 {
                continue;
            }
            if queue == self.queue {
                self.retry_parked(io);
            } else {
                self.wakers[queue].wake();
            }
        }
    }

    /// Tries every parked request again, oldest first.
    fn retry_parked(&mut self, io: &mut QueueIo<'_, Pending>) {
        for _ in 0..self.parked.len() {
            let Some((job, parked)) = self.parked.pop_front() else {
                break;
            };
            // Each re-parks itself at the back if still blocked.
            match parked {
                Parked::Write(write) => self.start_write(job, write, io),
                Parked::Resize { size, then } => self.resize(job, size, then, io),
                Parked::Fallocate(arg) => self.fallocate(job, arg, io),
            }
        }
    }

    /// Sets the image size under the whole-image lock, then answers.
    fn resize(&mut self, job: Job, size: u64, then: AfterResize, io: &mut QueueIo<'_, Pending>) {
        // The whole range: waits for every write in flight, holds off new ones.
        let Some(lock) = self.export.locks().try_lock(0, u64::MAX, self.queue) else {
            self.parked.push_back((job, Parked::Resize { size, then }));
            return;
        };
        let result = if size == self.image().size() {
            Ok(())
        } else {
            self.image().set_size(size)
        };
        self.unlock(lock, io);
        if let Err(err) = result {
            io.reply_error(job, errno_of(&err));
            return;
        }
        log::debug!("image size is now {size}");
        let unique = job.unique();
        match then {
            AfterResize::Setattr(presentation) => {
                if let Some(presentation) = presentation {
                    self.export.set_presentation(presentation);
                }
                io.reply(job, self.export.attr_reply(unique));
            }
            AfterResize::Open { flags } => io.reply(job, self.open_reply(unique, flags)),
        }
    }

    /// SETATTR with QEMU's rules: size and mode; owner only with
    /// allow_other; a mode that grants access nobody can use is refused.
    fn setattr(&mut self, job: Job, arg: SetattrIn, io: &mut QueueIo<'_, Pending>) {
        let valid = SetattrValid(arg.valid);
        // Bookkeeping bits that come along with real changes (ftruncate
        // sends SIZE|FH|LOCKOWNER).
        let ignored = SetattrValid::FH | SetattrValid::LOCKOWNER | SetattrValid::KILL_SUIDGID;
        let mut supported = SetattrValid::SIZE | SetattrValid::MODE;
        let options = self.export.options();
        if options.allow_other {
            supported |= SetattrValid::UID | SetattrValid::GID;
        }
        if valid.difference(ignored).difference(supported) != SetattrValid::EMPTY {
            io.reply_error(job, Errno::EOPNOTSUPP);
            return;
        }
        let read_only = self.image().is_read_only();
        let mut presentation = self.export.presentation();
        let mut changed = false;
        if valid.contains(SetattrValid::MODE) {
            let mode = arg.mode & 0o7777;
            if !options.allow_other && mode & 0o077 != 0 {
                // Without allow_other nobody but the owner can reach the file.
                io.reply_error(job, Errno::EPERM);
                return;
            }
            if read_only && mode & 0o222 != 0 {
                io.reply_error(job, Errno::EROFS);
                return;
            }
            presentation.mode = mode;
            changed = true;
        }
        if valid.contains(SetattrValid::UID) {
            presentation.uid = arg.uid;
            changed = true;
        }
        if valid.contains(SetattrValid::GID) {
            presentation.gid = arg.gid;
            changed = true;
        }
        let presentation = changed.then_some(presentation);
        if valid.contains(SetattrValid::SIZE) {
            if read_only {
                io.reply_error(job, Errno::EROFS);
                return;
            }
            if arg.size > MAX_OFFSET {
                io.reply_error(job, Errno::EFBIG);
                return;
            }
            self.resize(job, arg.size, AfterResize::Setattr(presentation), io);
            return;
        }
        if let Some(presentation) = presentation {
            self.export.set_presentation(presentation);
        }
        let unique = job.unique();
        io.reply(job, self.export.attr_reply(unique));
    }

    /// FALLOCATE mapped onto the image's `fallocate(2)`.
    fn fallocate(&mut self, job: Job, arg: FallocateIn, io: &mut QueueIo<'_, Pending>) {
        if self.image().is_read_only() {
            return io.reply_error(job, Errno::EROFS);
        }
        let mode = arg.mode;
        if mode & !(FALLOC_KEEP_SIZE | FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE) != 0 {
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
    fn lseek(&self, unique: u64, offset: u64, whence: u32) -> Reply {
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

    fn open(&mut self, job: Job, flags: u32, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        let writes = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
        if writes && self.image().is_read_only() {
            return io.reply_error(job, Errno::EROFS);
        }
        // O_TRUNC arrives here (ATOMIC_O_TRUNC). On a fixed-size export it is
        // ignored: `dd of=export` without conv=notrunc must not wipe the
        // image. A growable export behaves like a file.
        if flags & libc::O_TRUNC as u32 != 0 && writes && self.export.options().growable {
            return self.resize(job, 0, AfterResize::Open { flags }, io);
        }
        io.reply(job, self.open_reply(unique, flags));
    }

    fn open_reply(&self, unique: u64, flags: u32) -> Reply {
        let options = self.export.options();
        let o_direct = flags & libc::O_DIRECT as u32 != 0;
        let open = match options.passthrough {
            // The kernel serves READ and WRITE on the image itself.
            Some(backing_id) => OpenOut {
                fh: 0,
                open_flags: FopenFlags::PASSTHROUGH.bits(),
                backing_id,
            },
            // The kernel's O_DIRECT path for a cached file: the pieces of a
            // large request go out in parallel; the client asked for O_DIRECT,
            // so the export's page cache stays out of the way anyway.
            None if o_direct && options.direct_opens == DirectOpens::ParallelChunks => OpenOut {
                fh: 0,
                open_flags: 0,
                backing_id: 0,
            },
            // DIRECT_IO: the page cache of the export would only duplicate
            // the image's; PARALLEL_DIRECT_WRITES: writers run concurrently.
            None => OpenOut {
                fh: 0,
                open_flags: (FopenFlags::DIRECT_IO | FopenFlags::PARALLEL_DIRECT_WRITES).bits(),
                backing_id: 0,
            },
        };
        Reply::with(unique, &open)
    }
}

fn write_reply(unique: u64, written: usize) -> Reply {
    Reply::with(
        unique,
        &WriteOut {
            size: written as u32,
            padding: 0,
        },
    )
}

impl QueueHandler {
    /// What a parsed request asks for, copied out of the request buffer.
    fn op_of(&self, op: Operation<'_>) -> Op {
        match op {
            Operation::Getattr(_) => Op::Getattr,
            Operation::Statx(_) => Op::Statx,
            Operation::Lookup { name } => Op::Lookup {
                found: self.export.options().directory_entry.as_deref() == Some(name),
            },
            Operation::Opendir(_) => Op::Opendir,
            Operation::Readdir(arg) => Op::Readdir {
                offset: arg.offset,
                size: arg.size,
            },
            Operation::Releasedir(_) => Op::Releasedir,
            Operation::Setattr(arg) => Op::Setattr(arg),
            Operation::Open(arg) => Op::Open { flags: arg.flags },
            Operation::Read(arg) => Op::Read {
                offset: arg.offset,
                size: arg.size,
            },
            Operation::Write { arg, .. } => Op::Write { offset: arg.offset },
            Operation::Statfs => Op::Statfs,
            Operation::Release(_) | Operation::Destroy => Op::Release,
            Operation::Flush(_) => Op::Sync { datasync: true },
            Operation::Fsync(arg) => Op::Sync {
                datasync: FsyncFlags(arg.fsync_flags).contains(FsyncFlags::FDATASYNC),
            },
            Operation::Fallocate(arg) => Op::Fallocate(arg),
            Operation::Lseek(arg) => Op::Lseek {
                offset: arg.offset,
                whence: arg.whence,
            },
            Operation::Interrupt(_) => Op::Interrupt,
            other if other.opcode().is_no_reply() => Op::Forget,
            other => Op::Unsupported(other.opcode()),
        }
    }

    /// Requests about the directory that holds the image (directory mode).
    fn directory_request(&mut self, job: Job, op: Op, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        let root = fuse_proto::ROOT_ID;
        match op {
            Op::Getattr => io.reply(job, self.export.getattr_reply(unique, root)),
            Op::Statx => io.reply(job, self.export.statx_reply(unique, root)),
            Op::Lookup { found: true } => io.reply(job, self.export.entry_reply(unique)),
            Op::Lookup { found: false } => io.reply_error(job, Errno::ENOENT),
            Op::Opendir => io.reply(
                job,
                Reply::with(
                    unique,
                    &OpenOut {
                        fh: 0,
                        open_flags: 0,
                        backing_id: 0,
                    },
                ),
            ),
            Op::Readdir { offset, size } => self.readdir(job, offset, size, io),
            Op::Releasedir | Op::Release => io.reply(job, Reply::empty(unique)),
            Op::Statfs => io.reply(job, self.export.statfs_reply(unique)),
            Op::Interrupt => io.reply_error(job, Errno::ENOSYS),
            Op::Forget => io.finish(job),
            // The directory's contents are fixed.
            Op::Setattr(_) | Op::Fallocate(_) => io.reply_error(job, Errno::EPERM),
            Op::Open { .. } | Op::Read { .. } | Op::Write { .. } | Op::Lseek { .. } => {
                io.reply_error(job, Errno::new(libc::EISDIR).unwrap_or(Errno::EIO))
            }
            Op::Sync { .. } => io.reply(job, Reply::empty(unique)),
            // The directory's contents are fixed: nothing is created,
            // removed or renamed in it.
            Op::Unsupported(
                Opcode::CREATE
                | Opcode::MKNOD
                | Opcode::MKDIR
                | Opcode::SYMLINK
                | Opcode::LINK
                | Opcode::UNLINK
                | Opcode::RMDIR
                | Opcode::RENAME
                | Opcode::RENAME2
                | Opcode::TMPFILE,
            ) => io.reply_error(job, Errno::EPERM),
            Op::Unsupported(opcode) => {
                log::debug!("{opcode} on the directory not supported");
                io.reply_error(job, Errno::ENOSYS);
            }
        }
    }

    /// READDIR of the directory: `.`, `..` and the image, resumable at any
    /// offset (an entry's offset cookie is its index + 1).
    fn readdir(&mut self, job: Job, offset: u64, size: u32, io: &mut QueueIo<'_, Pending>) {
        let Some(name) = self.export.options().directory_entry.clone() else {
            return io.reply_error(job, Errno::EIO);
        };
        let entries: [(u64, u32, &[u8]); 3] = [
            (fuse_proto::ROOT_ID, libc::DT_DIR as u32, b"."),
            (fuse_proto::ROOT_ID, libc::DT_DIR as u32, b".."),
            (self.export.file_ino(), libc::DT_REG as u32, &name),
        ];
        let mut buf = match io.pool().take(self.export.bounce_len()) {
            Ok(buf) => buf,
            Err(err) => return io.reply_error(job, errno_of(&err)),
        };
        let limit = (size as usize).min(buf.len());
        let mut records = DirentBuffer::new(&mut buf.as_mut_slice()[..limit]);
        for (index, &(ino, kind, entry)) in entries.iter().enumerate().skip(offset as usize) {
            if records.push(ino, index as u64 + 1, kind, entry).is_err() {
                break;
            }
        }
        let used = records.len();
        io.reply_data(job, Chain::of(Segment::new(buf, 0, used)));
    }
}

/// The queue ended (the handler goes with it). If it ended early, requests
/// it will never finish may hold range locks that writes and resizes on the
/// other queues wait for: release them and wake those queues.
impl Drop for QueueHandler {
    fn drop(&mut self) {
        let waiting = self.export.locks().release_queue(self.queue);
        for (queue, waker) in self.wakers.iter().enumerate() {
            if queue != self.queue && waiting & (1 << (queue % MAX_QUEUES)) != 0 {
                waker.wake();
            }
        }
    }
}

impl Handler for QueueHandler {
    type State = Pending;

    fn request(&mut self, job: Job, incoming: Incoming, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        let (nodeid, op) = match incoming.request() {
            Ok(request) => (request.header.nodeid, self.op_of(request.op)),
            Err(err) => {
                log::warn!("malformed request {unique}: {err}");
                io.pool().give_chain(incoming.into_buffers());
                return io.reply_error(job, Errno::EIO);
            }
        };
        if self.export.is_directory(nodeid) {
            io.pool().give_chain(incoming.into_buffers());
            return self.directory_request(job, op, io);
        }
        if let Op::Write { offset } = op {
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
            return self.start_write(
                job,
                WriteJob {
                    offset,
                    len,
                    payload,
                },
                io,
            );
        }
        if let Op::Read { offset, size } = op {
            // The request's own buffers may take the data.
            return self.read(job, offset, size, incoming.into_buffers(), io);
        }
        io.pool().give_chain(incoming.into_buffers());
        match op {
            Op::Getattr => io.reply(job, self.export.getattr_reply(unique, nodeid)),
            Op::Statx => io.reply(job, self.export.statx_reply(unique, nodeid)),
            // The image is not a directory.
            Op::Lookup { .. } | Op::Opendir | Op::Readdir { .. } | Op::Releasedir => {
                io.reply_error(job, Errno::new(libc::ENOTDIR).unwrap_or(Errno::EIO))
            }
            Op::Setattr(arg) => self.setattr(job, arg, io),
            Op::Open { flags } => self.open(job, flags, io),

            Op::Statfs => io.reply(job, self.export.statfs_reply(unique)),
            Op::Release => io.reply(job, Reply::empty(unique)),
            Op::Sync { datasync } => {
                if self.image().is_read_only() {
                    io.reply(job, Reply::empty(unique));
                } else {
                    let op = BackingOp::Fsync {
                        file: IMAGE,
                        datasync,
                    };
                    io.submit(job, op, Chain::new(), Pending::Sync);
                }
            }
            Op::Fallocate(arg) => self.fallocate(job, arg, io),
            Op::Lseek { offset, whence } => io.reply(job, self.lseek(unique, offset, whence)),
            // ENOSYS tells the kernel to stop sending interrupts; requests
            // here finish quickly anyway.
            Op::Interrupt => io.reply_error(job, Errno::ENOSYS),
            Op::Forget => io.finish(job),
            Op::Unsupported(opcode) => {
                // ENOSYS is sticky for most opcodes: the kernel stops asking
                // (GETXATTR before every write, STATX before every stat).
                log::debug!("{opcode} not supported");
                io.reply_error(job, Errno::ENOSYS);
            }
            // Handled above, with the request's buffers.
            Op::Write { .. } | Op::Read { .. } => {}
        }
    }

    fn complete(&mut self, job: Job, done: Completion<Pending>, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        let result = done.result;
        match done.state {
            Pending::Read { skip, len } => {
                let mut chain = done.chain;
                if result < 0 {
                    io.pool().give_chain(chain);
                    return io.reply_error(job, Errno::from_any(result));
                }
                let available = (result as usize).saturating_sub(skip).min(len);
                chain.narrow(skip, available);
                io.reply_data(job, chain);
            }
            Pending::Write { lock, len } => {
                io.pool().give_chain(done.chain);
                self.unlock(lock, io);
                if result < 0 {
                    io.reply_error(job, Errno::from_any(result));
                } else {
                    io.reply(job, write_reply(unique, (result as usize).min(len)));
                }
            }
            state @ Pending::RmwFill { .. } => self.rmw_filled(
                job,
                Completion {
                    result,
                    chain: done.chain,
                    state,
                },
                io,
            ),
            Pending::RmwWrite {
                lock,
                payload,
                skip,
                len,
            } => {
                io.pool().give_chain(payload);
                io.pool().give_chain(done.chain);
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
            Pending::Fallocate { lock, resizes } => {
                io.pool().give_chain(done.chain);
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
            Pending::Sync => {
                io.pool().give_chain(done.chain);
                if result < 0 {
                    io.reply_error(job, Errno::from_any(result));
                } else {
                    io.reply(job, Reply::empty(unique));
                }
            }
        }
    }

    fn wake(&mut self, io: &mut QueueIo<'_, Pending>) {
        self.retry_parked(io);
    }
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
