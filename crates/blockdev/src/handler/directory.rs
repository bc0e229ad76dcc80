//! The directory that holds the image when the mountpoint is a directory:
//! `.`, `..` and the image, nothing can be created or removed.

use fuse_dev::{Chain, Job, QueueIo, Segment};
use fuse_proto::Opcode;
use fuse_proto::abi::OpenOut;
use fuse_proto::reply::{DirentBuffer, Errno, Reply};

use super::{Op, Pending, QueueHandler};
use crate::export::errno_of;

impl QueueHandler {
    /// Requests about the directory that holds the image (directory mode).
    pub(super) fn directory_request(&mut self, job: Job, op: Op, io: &mut QueueIo<'_, Pending>) {
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
    pub(super) fn readdir(
        &mut self,
        job: Job,
        offset: u64,
        size: u32,
        io: &mut QueueIo<'_, Pending>,
    ) {
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
