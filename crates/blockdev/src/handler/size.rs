//! Size and attributes: SETATTR (size, mode, owner), OPEN (O_TRUNC and the
//! open flags), and resizes under the whole-image lock.

use fuse_dev::{Job, QueueIo};
use fuse_proto::abi::{OpenOut, SetattrIn};
use fuse_proto::flags::{FopenFlags, SetattrValid};
use fuse_proto::reply::{Errno, Reply};

use super::{MAX_OFFSET, Parked, Pending, QueueHandler};
use crate::export::{DirectOpens, Presentation, errno_of};

/// What to answer once a resize is done.
#[derive(Debug, Clone, Copy)]
pub(super) enum AfterResize {
    /// SETATTR: apply the new owner/mode (if any), reply attributes.
    Setattr(Option<Presentation>),
    /// OPEN with O_TRUNC on a growable export (with the open's flags).
    Open {
        /// The `open(2)` flags.
        flags: u32,
    },
}

impl QueueHandler {
    /// Sets the image size under the whole-image lock, then answers.
    pub(super) fn resize(
        &mut self,
        job: Job,
        size: u64,
        then: AfterResize,
        io: &mut QueueIo<'_, Pending>,
    ) {
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
    pub(super) fn setattr(&mut self, job: Job, arg: SetattrIn, io: &mut QueueIo<'_, Pending>) {
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

    pub(super) fn open(&mut self, job: Job, flags: u32, io: &mut QueueIo<'_, Pending>) {
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

    pub(super) fn open_reply(&self, unique: u64, flags: u32) -> Reply {
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
