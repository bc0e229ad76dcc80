//! Serving the requests of one queue: decoding, dispatch by opcode, and the
//! range-lock bookkeeping every concern shares.
//!
//! Each concern has its own file, found from the opcode:
//! - [`rw`]: READ, WRITE (aligned and read-modify-write), FLUSH/FSYNC;
//! - [`size`]: SETATTR, OPEN (O_TRUNC) and resizes;
//! - [`space`]: FALLOCATE and LSEEK;
//! - [`directory`]: the directory that holds the image in directory mode.
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

mod directory;
mod rw;
mod size;
mod space;

use std::collections::VecDeque;
use std::sync::Arc;

use fuse_dev::{
    BackingFile, Chain, Completion, Handler, Incoming, Job, QueueContext, QueueIo, Segment, Waker,
};
use fuse_proto::abi::{FallocateIn, SetattrIn};
use fuse_proto::flags::FsyncFlags;
use fuse_proto::reply::{Errno, Reply};
use fuse_proto::{Opcode, Operation};

use crate::export::{Export, PresentationChange};
use crate::image::Image;
use crate::range_lock::{LockId, Reservation, queue_bit};

use rw::Durability;
pub use rw::{Merge, WriteJob};
use space::FallocateLock;

/// The image is the only backing file, registered first.
const IMAGE: BackingFile = BackingFile(0);

/// Offsets beyond this cannot be passed to the kernel's file APIs.
const MAX_OFFSET: u64 = i64::MAX as u64;

/// What a queue parks until a range lock is free.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "parked requests live in a VecDeque that is reused; boxing would allocate per conflict"
)]
enum Parked {
    Write(WriteJob),
    Resize {
        size: u64,
        change: PresentationChange,
        waiting: Option<Reservation>,
    },
    Fallocate(FallocateIn, FallocateLock),
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
        /// Where it writes.
        offset: u64,
        /// Bytes requested.
        len: usize,
        /// Whether it extends the image (the size follows when it is done).
        grows: bool,
    },
    /// Read-modify-write: reading the partial block at `block`.
    RmwFill {
        /// The merge being served.
        merge: Merge,
        /// Offset of the block being read.
        block: u64,
    },
    /// Read-modify-write: writing the merged blocks.
    RmwWrite {
        /// The merge being served.
        merge: Merge,
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
    Write { offset: u64, durability: Durability },
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
        // Sized for every request the queue can hold, so that neither grows
        // when a first conflict or a new peak of writes comes while serving.
        export.locks().make_room_for_queue(context.max_requests);
        QueueHandler {
            export,
            queue: context.index,
            wakers: context.wakers,
            parked: VecDeque::with_capacity(context.max_requests),
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

    /// Releases a lock and lets every queue that waited for one retry.
    fn unlock(&mut self, lock: LockId, io: &mut QueueIo<'_, Pending>) {
        let waiting = self.export.locks().unlock(lock);
        for queue in 0..self.wakers.len() {
            if waiting & queue_bit(queue) == 0 {
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
                Parked::Resize {
                    size,
                    change,
                    waiting,
                } => self.resize(job, size, change, waiting, io),
                Parked::Fallocate(arg, lock) => self.fallocate(job, arg, lock, io),
            }
        }
    }
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
            Operation::Write { arg, .. } => Op::Write {
                offset: arg.offset,
                durability: Durability::of_write_flags(arg.flags),
            },
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
        if let Op::Write { offset, durability } = op {
            return self.write(job, offset, durability, incoming, io);
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
            Op::Sync { datasync } => self.sync(job, datasync, io),
            Op::Fallocate(arg) => self.fallocate(job, arg, FallocateLock::Undecided, io),
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
        let Completion {
            result,
            chain,
            state,
        } = done;
        match state {
            Pending::Read { skip, len } => self.read_done(job, result, chain, skip, len, io),
            Pending::Write {
                lock,
                offset,
                len,
                grows,
            } => self.write_done(job, result, chain, (lock, offset, len, grows), io),
            Pending::RmwFill { merge, block } => {
                self.rmw_filled(job, result, chain, merge, block, io)
            }
            Pending::RmwWrite { merge } => self.rmw_written(job, result, chain, merge, io),
            Pending::Fallocate { lock, resizes } => {
                self.fallocate_done(job, result, chain, lock, resizes, io)
            }
            Pending::Sync => self.sync_done(job, result, chain, io),
        }
    }

    fn wake(&mut self, io: &mut QueueIo<'_, Pending>) {
        self.retry_parked(io);
    }
}

impl Drop for QueueHandler {
    /// The queue ended (the handler goes with it). If it ended early
    /// (it failed or panicked), requests it will never finish may hold
    /// range locks or whole-image reservations that writes and resizes on
    /// the other queues wait for: release them and wake those queues.
    fn drop(&mut self) {
        let waiting = self.export.locks().release_queue(self.queue);
        for (queue, waker) in self.wakers.iter().enumerate() {
            if queue != self.queue && waiting & queue_bit(queue) != 0 {
                waker.wake();
            }
        }
    }
}

impl Export {
    /// The handler for one queue (given to `fuse_dev::Session::start`).
    pub fn queue_handler(self: &Arc<Self>, context: QueueContext) -> QueueHandler {
        QueueHandler::new(self.clone(), context)
    }
}
