//! The export: serves FUSE requests for one image file.
//!
//! One [`QueueHandler`] per queue; they share the [`Export`] (image, range
//! locks). Data never takes a detour: an aligned WRITE goes to the image
//! straight from the buffers the request arrived in, a READ is read into a
//! pool buffer and replied from it. Only requests that are not aligned to
//! the image's O_DIRECT alignment go through a bounce buffer
//! (read-modify-write for writes), under a range lock.

use std::collections::VecDeque;
use std::sync::Arc;

use fuse_dev::{
    BackingFile, BackingOp, Chain, Completion, Handler, Incoming, Job, PAGE_SIZE, QueueContext,
    QueueIo, Segment, Waker,
};
use fuse_proto::abi::{Attr, AttrOut, Kstatfs, OpenOut, SetattrIn, StatfsOut, WriteOut};
use fuse_proto::flags::{FopenFlags, FsyncFlags, SetattrValid};
use fuse_proto::reply::{Errno, Reply};
use fuse_proto::{Opcode, Operation};

use crate::image::Image;
use crate::range_lock::{LockId, RangeLocks};

/// The image is the only backing file, registered first.
const IMAGE: BackingFile = BackingFile(0);

/// How long the kernel may cache attributes. The size only changes through
/// this export, which answers SETATTR with the new attributes.
const ATTR_VALID_SECS: u64 = 1;

/// State shared by every queue.
#[derive(Debug)]
pub struct Export {
    image: Image,
    locks: RangeLocks,
    /// Size of bounce/read buffers: the largest request plus alignment slack.
    bounce_len: usize,
    uid: u32,
    gid: u32,
}

impl Export {
    /// An export of `image` for requests of up to `max_request` bytes.
    pub fn new(image: Image, max_request: usize) -> Arc<Export> {
        let slack = 2 * (image.alignment() as usize).max(PAGE_SIZE);
        Arc::new(Export {
            bounce_len: (max_request + slack).next_multiple_of(PAGE_SIZE),
            image,
            locks: RangeLocks::new(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        })
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The handler for one queue.
    pub fn queue_handler(self: &Arc<Self>, context: QueueContext) -> QueueHandler {
        QueueHandler {
            export: self.clone(),
            queue: context.index,
            wakers: context.wakers,
            parked: VecDeque::new(),
        }
    }

    /// The file's attributes as the kernel should see them.
    fn attr(&self) -> std::io::Result<Attr> {
        let stat = self.image.stat()?;
        let permissions = if self.image.is_read_only() {
            0o400
        } else {
            0o600
        };
        Ok(Attr {
            ino: fuse_proto::ROOT_ID,
            size: self.image.size(),
            blocks: stat.st_blocks as u64,
            atime: stat.st_atime as u64,
            mtime: stat.st_mtime as u64,
            ctime: stat.st_ctime as u64,
            atimensec: stat.st_atime_nsec as u32,
            mtimensec: stat.st_mtime_nsec as u32,
            ctimensec: stat.st_ctime_nsec as u32,
            mode: libc::S_IFREG | permissions,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: PAGE_SIZE.max(self.image.alignment() as usize) as u32,
            flags: 0,
        })
    }

    fn attr_reply(&self, unique: u64) -> Reply {
        match self.attr() {
            Ok(attr) => Reply::with(
                unique,
                &AttrOut {
                    attr_valid: ATTR_VALID_SECS,
                    attr_valid_nsec: 0,
                    dummy: 0,
                    attr,
                },
            ),
            Err(err) => Reply::error(unique, errno_of(&err)),
        }
    }
}

fn errno_of(err: &std::io::Error) -> Errno {
    err.raw_os_error()
        .map(Errno::from_any)
        .unwrap_or(Errno::EIO)
}

/// A write waiting for its range lock or in progress.
#[derive(Debug)]
pub struct WriteJob {
    offset: u64,
    len: usize,
    /// The request's data (in-place page + spill-over), windowed to `len`.
    payload: Chain,
}

/// What a queue parks until a range lock is free.
#[derive(Debug)]
enum Parked {
    Write(WriteJob),
    Resize { unique: u64, size: u64 },
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

impl QueueHandler {
    fn image(&self) -> &Image {
        &self.export.image
    }

    fn bounce(&self, io: &mut QueueIo<'_, Pending>, len: usize) -> std::io::Result<Chain> {
        let buf = io.pool().take(self.export.bounce_len)?;
        let mut chain = Chain::of(Segment::whole(buf));
        chain.select(0, len);
        Ok(chain)
    }

    fn read(&mut self, job: Job, offset: u64, size: u32, io: &mut QueueIo<'_, Pending>) {
        let image_size = self.image().size();
        if offset >= image_size || size == 0 {
            io.reply_data(job, Chain::new());
            return;
        }
        let len = (size as u64).min(image_size - offset);
        let (start, end) = aligned_range(offset, len, self.image().alignment());
        let span = (end - start) as usize;
        if span > self.export.bounce_len {
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

    fn write(&mut self, job: Job, offset: u64, mut payload: Chain, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        let image_size = self.image().size();
        if offset >= image_size {
            // Past the end of a fixed-size image: nothing written (dd: ENOSPC).
            io.pool().give_chain(payload);
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
        }
        let len = (payload.len() as u64).min(image_size - offset) as usize;
        payload.narrow(0, len);
        let write = WriteJob {
            offset,
            len,
            payload,
        };
        self.start_write(job, write, io);
    }

    /// Locks the write's range and issues it, or parks it.
    fn start_write(&mut self, job: Job, write: WriteJob, io: &mut QueueIo<'_, Pending>) {
        let alignment = self.image().alignment();
        let (start, end) = aligned_range(write.offset, write.len as u64, alignment);
        let Some(lock) = self.export.locks.try_lock(start, end, self.queue) else {
            self.parked.push_back((job, Parked::Write(write)));
            return;
        };
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
        let head_partial = write.offset != start;
        let tail_partial = write.offset + write.len as u64 != end;
        let tail_is_head = end - alignment == start;
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
        if head_partial {
            bounce.select(0, block);
            let tail_next = tail_partial && !tail_is_head;
            io.submit(
                job,
                BackingOp::Read {
                    file: IMAGE,
                    offset: start,
                },
                bounce,
                Pending::RmwFill {
                    write,
                    lock,
                    tail_next,
                },
            );
        } else {
            // Only the tail is partial.
            bounce.select(span - block, block);
            io.submit(
                job,
                BackingOp::Read {
                    file: IMAGE,
                    offset: end - alignment,
                },
                bounce,
                Pending::RmwFill {
                    write,
                    lock,
                    tail_next: false,
                },
            );
        }
    }

    /// Read-modify-write: a partial block was read; read the next or merge and write.
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
            return;
        };
        if result < 0 {
            self.unlock(lock, io);
            io.pool().give_chain(write.payload);
            io.pool().give_chain(chain);
            io.reply_error(job, Errno::from_any(result));
            return;
        }
        // A short read means the block crosses the end of the file: the
        // missing bytes read as zeros.
        let read = result as usize;
        let window = chain.len();
        if read < window {
            let zeros = vec![0u8; window - read];
            chain.copy_in(read, &zeros);
        }
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

    fn unlock(&mut self, lock: LockId, io: &mut QueueIo<'_, Pending>) {
        let waiting = self.export.locks.unlock(lock);
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
            match parked {
                // Re-parks itself at the back if still blocked.
                Parked::Write(write) => self.start_write(job, write, io),
                Parked::Resize { unique, size } => self.resize(job, unique, size, io),
            }
        }
    }

    fn resize(&mut self, job: Job, unique: u64, size: u64, io: &mut QueueIo<'_, Pending>) {
        // The whole range: waits for every write in flight, holds off new ones.
        let Some(lock) = self.export.locks.try_lock(0, u64::MAX, self.queue) else {
            self.parked
                .push_back((job, Parked::Resize { unique, size }));
            return;
        };
        let result = self.image().set_size(size);
        self.unlock(lock, io);
        match result {
            Ok(()) => {
                log::info!("image resized to {size} bytes");
                io.reply(job, self.export.attr_reply(unique));
            }
            Err(err) => io.reply_error(job, errno_of(&err)),
        }
    }

    fn setattr(&mut self, job: Job, arg: SetattrIn, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        let valid = SetattrValid(arg.valid);
        let changes =
            SetattrValid::SIZE | SetattrValid::MODE | SetattrValid::UID | SetattrValid::GID;
        if self.image().is_read_only() && valid.intersection(changes) != SetattrValid::EMPTY {
            io.reply_error(job, Errno::EROFS);
            return;
        }
        let attr = match self.export.attr() {
            Ok(attr) => attr,
            Err(err) => return io.reply_error(job, errno_of(&err)),
        };
        let unchanged_owner = (!valid.contains(SetattrValid::UID) || arg.uid == attr.uid)
            && (!valid.contains(SetattrValid::GID) || arg.gid == attr.gid)
            && (!valid.contains(SetattrValid::MODE) || arg.mode & 0o7777 == attr.mode & 0o7777);
        if !unchanged_owner {
            io.reply_error(job, Errno::EOPNOTSUPP);
            return;
        }
        if valid.contains(SetattrValid::SIZE) && arg.size != self.image().size() {
            let alignment = self.image().alignment();
            if arg.size % alignment != 0 {
                log::warn!(
                    "refusing resize to {} (not a multiple of {alignment})",
                    arg.size
                );
                io.reply_error(job, Errno::EINVAL);
                return;
            }
            self.resize(job, unique, arg.size, io);
            return;
        }
        // Times and the rest are accepted and not stored: the image's own
        // times are what GETATTR shows.
        io.reply(job, self.export.attr_reply(unique));
    }

    fn statfs(&self, unique: u64) -> Reply {
        match self.image().statvfs() {
            Ok(vfs) => Reply::with(
                unique,
                &StatfsOut {
                    st: Kstatfs {
                        blocks: vfs.f_blocks,
                        bfree: vfs.f_bfree,
                        bavail: vfs.f_bavail,
                        files: vfs.f_files,
                        ffree: vfs.f_ffree,
                        bsize: vfs.f_bsize as u32,
                        namelen: vfs.f_namemax as u32,
                        frsize: vfs.f_frsize as u32,
                        padding: 0,
                        spare: [0; 6],
                    },
                },
            ),
            Err(err) => Reply::error(unique, errno_of(&err)),
        }
    }
}

/// What a request asks, copied out of its buffer so that the buffer can move.
enum Op {
    Getattr,
    Setattr(SetattrIn),
    Open { flags: u32 },
    Read { offset: u64, size: u32 },
    Write { offset: u64 },
    Statfs,
    Release,
    Sync { datasync: bool },
    Interrupt,
    Forget,
    Destroy,
    Unsupported(Opcode),
}

impl Handler for QueueHandler {
    type State = Pending;

    fn request(&mut self, job: Job, incoming: Incoming, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        let op = match incoming.request() {
            Ok(request) => match request.op {
                Operation::Getattr(_) => Op::Getattr,
                Operation::Setattr(arg) => Op::Setattr(arg),
                Operation::Open(arg) => Op::Open { flags: arg.flags },
                Operation::Read(arg) => Op::Read {
                    offset: arg.offset,
                    size: arg.size,
                },
                Operation::Write { arg, .. } => Op::Write { offset: arg.offset },
                Operation::Statfs => Op::Statfs,
                Operation::Release(_) => Op::Release,
                Operation::Flush(_) => Op::Sync { datasync: true },
                Operation::Fsync(arg) => Op::Sync {
                    datasync: FsyncFlags(arg.fsync_flags).contains(FsyncFlags::FDATASYNC),
                },
                Operation::Interrupt(_) => Op::Interrupt,
                Operation::Destroy => Op::Destroy,
                other if other.opcode().is_no_reply() => Op::Forget,
                other => Op::Unsupported(other.opcode()),
            },
            Err(err) => {
                log::warn!("malformed request {unique}: {err}");
                io.pool().give_chain(incoming.into_buffers());
                io.reply_error(job, Errno::EIO);
                return;
            }
        };
        if let Op::Write { offset } = op {
            if self.image().is_read_only() {
                io.pool().give_chain(incoming.into_buffers());
                io.reply_error(job, Errno::EROFS);
                return;
            }
            let payload = incoming.into_write_data();
            self.write(job, offset, payload, io);
            return;
        }
        io.pool().give_chain(incoming.into_buffers());
        match op {
            Op::Getattr => io.reply(job, self.export.attr_reply(unique)),
            Op::Setattr(arg) => self.setattr(job, arg, io),
            Op::Open { flags } => {
                let writes = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
                if writes && self.image().is_read_only() {
                    io.reply_error(job, Errno::EROFS);
                    return;
                }
                // O_TRUNC (passed with ATOMIC_O_TRUNC) is ignored: truncating
                // a disk image by opening it is never what the user wants.
                let open_flags = FopenFlags::DIRECT_IO | FopenFlags::PARALLEL_DIRECT_WRITES;
                io.reply(
                    job,
                    Reply::with(
                        unique,
                        &OpenOut {
                            fh: 0,
                            open_flags: open_flags.bits(),
                            backing_id: 0,
                        },
                    ),
                );
            }
            Op::Read { offset, size } => self.read(job, offset, size, io),
            Op::Statfs => io.reply(job, self.statfs(unique)),
            Op::Release | Op::Destroy => io.reply(job, Reply::empty(unique)),
            Op::Sync { datasync } => {
                if self.image().is_read_only() {
                    io.reply(job, Reply::empty(unique));
                } else {
                    io.submit(
                        job,
                        BackingOp::Fsync {
                            file: IMAGE,
                            datasync,
                        },
                        Chain::new(),
                        Pending::Sync,
                    );
                }
            }
            // ENOSYS tells the kernel to stop sending interrupts; requests
            // here finish quickly anyway.
            Op::Interrupt => io.reply_error(job, Errno::ENOSYS),
            Op::Forget => io.finish(job),
            Op::Unsupported(opcode) => {
                log::debug!("{opcode} not supported");
                io.reply_error(job, Errno::ENOSYS);
            }
            // Handled above, before the buffers were given back.
            Op::Write { .. } => {}
        }
    }

    fn complete(&mut self, job: Job, done: Completion<Pending>, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        match done.state {
            Pending::Read { skip, len } => {
                let mut chain = done.chain;
                if done.result < 0 {
                    io.pool().give_chain(chain);
                    io.reply_error(job, Errno::from_any(done.result));
                    return;
                }
                let available = (done.result as usize).saturating_sub(skip).min(len);
                chain.narrow(skip, available);
                io.reply_data(job, chain);
            }
            Pending::Write { lock, len } => {
                io.pool().give_chain(done.chain);
                self.unlock(lock, io);
                if done.result < 0 {
                    io.reply_error(job, Errno::from_any(done.result));
                } else {
                    let written = (done.result as usize).min(len) as u32;
                    io.reply(
                        job,
                        Reply::with(
                            unique,
                            &WriteOut {
                                size: written,
                                padding: 0,
                            },
                        ),
                    );
                }
            }
            Pending::RmwFill { .. } => self.rmw_filled(job, done, io),
            Pending::RmwWrite {
                lock,
                payload,
                skip,
                len,
            } => {
                io.pool().give_chain(payload);
                io.pool().give_chain(done.chain);
                self.unlock(lock, io);
                if done.result < 0 {
                    io.reply_error(job, Errno::from_any(done.result));
                } else {
                    let written = (done.result as usize).saturating_sub(skip).min(len) as u32;
                    io.reply(
                        job,
                        Reply::with(
                            unique,
                            &WriteOut {
                                size: written,
                                padding: 0,
                            },
                        ),
                    );
                }
            }
            Pending::Sync => {
                io.pool().give_chain(done.chain);
                if done.result < 0 {
                    io.reply_error(job, Errno::from_any(done.result));
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
