//! Size and attributes: SETATTR (size, mode, owner), OPEN, and resizes
//! under the whole-image lock.
//!
//! `O_TRUNC` reaches the export as a SETATTR to size 0 sent after the OPEN
//! (`FUSE_ATOMIC_O_TRUNC` is not negotiated), without a file handle. On a
//! fixed-size export it is answered with the unchanged attributes, so the
//! kernel keeps the real size: with `ATOMIC_O_TRUNC` the kernel would set
//! its size to 0 after any successful OPEN with `O_TRUNC`, whatever the
//! server did, and asynchronous O_DIRECT reads and mappings of every other
//! open file would then see EOF.

use fuse_dev::{Job, QueueIo};
use fuse_proto::abi::{OpenOut, SetattrIn};
use fuse_proto::flags::{FopenFlags, SetattrValid};
use fuse_proto::reply::{Errno, Reply};

use super::{MAX_OFFSET, Parked, Pending, QueueHandler};
use crate::export::{DirectOpens, PresentationChange, errno_of};
use crate::range_lock::Reservation;

impl QueueHandler {
    /// Sets the image size under the whole-image lock, then applies the
    /// owner/mode `change` that came with it and replies with the
    /// attributes. `waiting` is the reservation of an earlier attempt.
    pub(super) fn resize(
        &mut self,
        job: Job,
        size: u64,
        change: PresentationChange,
        mut waiting: Option<Reservation>,
        io: &mut QueueIo<'_, Pending>,
    ) {
        // The whole range: waits for every write in flight, holds off new ones.
        let Some(lock) = self.export.locks().try_lock_all(self.queue, &mut waiting) else {
            self.parked.push_back((
                job,
                Parked::Resize {
                    size,
                    change,
                    waiting,
                },
            ));
            return;
        };
        let result = match self.export.current_size() {
            Ok(current) if current == size => Ok(()),
            Ok(_) => self.image().set_size(size),
            Err(err) => Err(err),
        };
        self.unlock(lock, io);
        if let Err(err) = result {
            io.reply_error(job, errno_of(&err));
            return;
        }
        log::debug!("image size is now {size}");
        // Applied now, not when the request arrived: a chmod/chown answered
        // while this one waited for its lock must not be undone.
        self.export.change_presentation(change);
        let unique = job.unique();
        io.reply(job, self.export.attr_reply(unique));
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
        let mut change = PresentationChange::default();
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
            change.mode = Some(mode);
        }
        if valid.contains(SetattrValid::UID) {
            change.uid = Some(arg.uid);
        }
        if valid.contains(SetattrValid::GID) {
            change.gid = Some(arg.gid);
        }
        if valid.contains(SetattrValid::SIZE) {
            if read_only {
                io.reply_error(job, Errno::EROFS);
                return;
            }
            if arg.size > MAX_OFFSET {
                io.reply_error(job, Errno::EFBIG);
                return;
            }
            // open(O_TRUNC) (and truncate(2) of the path to 0, which looks
            // the same): no file handle. ftruncate and `truncate -s 0` send
            // one and do resize.
            let truncates_at_open = arg.size == 0 && !valid.contains(SetattrValid::FH);
            if options.growable || !truncates_at_open {
                self.resize(job, arg.size, change, None, io);
                return;
            }
            log::debug!(
                "fixed-size export: keeping the size on a truncation without a file (O_TRUNC)"
            );
        }
        self.export.change_presentation(change);
        let unique = job.unique();
        io.reply(job, self.export.attr_reply(unique));
    }

    pub(super) fn open(&mut self, job: Job, flags: u32, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        let writes = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
        if writes && self.image().is_read_only() {
            return io.reply_error(job, Errno::EROFS);
        }
        // O_TRUNC is not among the flags (no ATOMIC_O_TRUNC): it follows as
        // a SETATTR, see the module comment.
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
