//! A queue that dies on a live mount: a handler panics on a client's FSYNC.
//! The client gets EIO instead of waiting forever, the other queue stops,
//! `Running::shutdown` returns the error and leaves nothing mounted, and a
//! client that still had the file open is released when the device fds
//! close. Needs root and /dev/fuse; skips (with a `SKIP:` line) otherwise.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use common::{ScratchDir, small_session};
use fuse_dev::{Completion, Handler, Incoming, Job, QueueIo};
use fuse_proto::Opcode;
use fuse_proto::abi::{Attr, AttrOut, OpenOut};
use fuse_proto::flags::FopenFlags;
use fuse_proto::reply::{Errno, Reply};

/// Serves a 1 MiB regular file (attributes and opens only); panics on FSYNC.
struct PanicsOnFsync;

impl Handler for PanicsOnFsync {
    type State = ();

    fn request(&mut self, job: Job, incoming: Incoming, io: &mut QueueIo<'_, ()>) {
        let unique = job.unique();
        let opcode = incoming.request().map(|r| r.op.opcode());
        io.pool().give_chain(incoming.into_buffers());
        match opcode {
            Ok(Opcode::GETATTR) => {
                let out = AttrOut {
                    attr: Attr {
                        ino: fuse_proto::ROOT_ID,
                        size: 1 << 20,
                        blocks: (1 << 20) / 512,
                        mode: libc::S_IFREG | 0o600,
                        nlink: 1,
                        blksize: 4096,
                        ..Attr::default()
                    },
                    ..AttrOut::default()
                };
                io.reply(job, Reply::with(unique, &out));
            }
            Ok(Opcode::OPEN) => {
                let out = OpenOut {
                    open_flags: FopenFlags::DIRECT_IO.bits(),
                    ..OpenOut::default()
                };
                io.reply(job, Reply::with(unique, &out));
            }
            Ok(Opcode::FLUSH | Opcode::RELEASE) => io.reply(job, Reply::empty(unique)),
            Ok(Opcode::FSYNC) => panic!("the test handler panics on FSYNC"),
            Ok(op) if op.is_no_reply() => io.finish(job),
            _ => io.reply_error(job, Errno::ENOSYS),
        }
    }

    fn complete(&mut self, job: Job, done: Completion<()>, io: &mut QueueIo<'_, ()>) {
        io.finish_with(job, done.chain);
    }
}

fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(path.as_ref()))
    })
}

#[test]
fn panicking_queue_on_a_live_mount_ends_with_an_error_and_no_mount() {
    if !rustix::process::getuid().is_root() || !Path::new("/dev/fuse").exists() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: live_early_exit: needs root and /dev/fuse"
        );
        return;
    }
    let dir = ScratchDir::new("live-early-exit", "panicking-queue");
    let mountpoint = dir.0.join("file");
    fs::write(&mountpoint, b"").unwrap();
    let (session, config) = small_session(&mountpoint, "live-early-exit");
    let running = session
        .start(2, config, Vec::new(), |_| PanicsOnFsync)
        .unwrap();

    // The client keeps the file open across the queue's death, in a thread:
    // its close (FLUSH) only returns once the connection is gone.
    let client = std::thread::spawn({
        let mountpoint = mountpoint.clone();
        move || {
            let file = OpenOptions::new().write(true).open(&mountpoint)?;
            let synced = file.sync_all();
            drop(file);
            Ok::<_, std::io::Error>(synced)
        }
    });
    // The panicking queue stops the other one.
    running
        .ended()
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a queue ends after its handler panicked");
    let error = running.shutdown().expect_err("a queue panicked");
    assert!(error.to_string().contains("panicked"), "{error}");
    assert!(!is_mounted(&mountpoint), "shutdown left the export mounted");
    let synced = client.join().unwrap().expect("the open succeeds");
    let err = synced.expect_err("the FSYNC whose handler panicked fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}
