//! A queue that dies while one of its requests holds a range lock: the lock
//! must be released so that a write parked on it on another queue goes
//! through, and shutdown must end (with the dead queue's error) instead of
//! waiting forever for that parked write.
//!
//! Two queues run the real export over fake devices (one end of a
//! `SOCK_SEQPACKET` socketpair each). A wrapper around the export's handler
//! keeps queue 0's first write completion (so its lock stays held) and
//! panics when queue 0 is woken, like a handler bug would.

mod common;

use std::os::fd::OwnedFd;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockdev::{CacheMode, Export, ExportOptions, Image, Pending, QueueHandler};
use common::{TempDir, WRITE, fake_device, request_message, write_args};
use fuse_dev::{
    Completion, Handler, Incoming, Job, QueueConfig, QueueContext, QueueIo, SpillLayout, Waker,
};
use rustix::event::{PollFd, PollFlags, Timespec};

const MAX_WRITE: usize = 64 * 1024;

/// How long the test waits for an event before it fails: a hang guard, not
/// a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// Queue 0 kept a write's completion: its range lock stays held.
    Kept,
    /// A queue's handler returned from `request` for this unique.
    Handled { queue: usize, unique: u64 },
}

/// The export's handler, with queue 0 made to keep its first completion
/// and to panic when it is woken while keeping it.
struct Gate {
    inner: QueueHandler,
    queue: usize,
    kept: Option<(Job, Completion<Pending>)>,
    events: Sender<Event>,
}

impl Handler for Gate {
    type State = Pending;

    fn request(&mut self, job: Job, incoming: Incoming, io: &mut QueueIo<'_, Pending>) {
        let unique = job.unique();
        self.inner.request(job, incoming, io);
        let _ = self.events.send(Event::Handled {
            queue: self.queue,
            unique,
        });
    }

    fn complete(&mut self, job: Job, done: Completion<Pending>, io: &mut QueueIo<'_, Pending>) {
        if self.queue == 0 && self.kept.is_none() {
            self.kept = Some((job, done));
            let _ = self.events.send(Event::Kept);
            return;
        }
        self.inner.complete(job, done, io);
    }

    fn wake(&mut self, io: &mut QueueIo<'_, Pending>) {
        if self.kept.is_some() {
            panic!("the test's handler panics while queue 0 holds a range lock");
        }
        self.inner.wake(io);
    }
}

fn send_write(socket: &OwnedFd, unique: u64, offset: u64, data: &[u8]) {
    let msg = request_message(WRITE, unique, &write_args(offset, data.len()), data);
    assert_eq!(rustix::io::write(socket, &msg).unwrap(), msg.len());
}

/// Every reply (unique, error) until the queue closes its end.
fn replies_until_end(socket: &OwnedFd) -> Vec<(u64, i32)> {
    let mut replies = Vec::new();
    loop {
        let mut fds = [PollFd::new(socket, PollFlags::IN)];
        let guard = Timespec {
            tv_sec: HANG_GUARD.as_secs() as i64,
            tv_nsec: 0,
        };
        let ready = rustix::event::poll(&mut fds, Some(&guard)).unwrap();
        assert_eq!(
            ready, 1,
            "no reply and no end within {HANG_GUARD:?}; so far {replies:?}"
        );
        let mut buf = [0u8; 4096];
        let n = match rustix::io::read(socket, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::CONNRESET) => continue,
            Err(err) => panic!("reading the fake device: {err}"),
        };
        if n == 0 {
            return replies;
        }
        let error = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
        let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        replies.push((unique, error));
    }
}

fn expect(events: &Receiver<Event>, expected: Event) {
    let event = events
        .recv_timeout(HANG_GUARD)
        .unwrap_or_else(|_| panic!("no {expected:?} within {HANG_GUARD:?}"));
    assert_eq!(event, expected);
}

#[test]
fn locks_of_a_queue_that_died_are_released() {
    let dir = TempDir::new("dead-queue", "locks");
    let image_path = dir.0.join("disk.raw");
    std::fs::write(&image_path, vec![0u8; 1 << 20]).unwrap();
    let image = Image::open(&image_path, false, CacheMode::None).unwrap();
    let export = Export::new(image, MAX_WRITE, ExportOptions::default());

    let (ours0, theirs0) = fake_device();
    let (ours1, theirs1) = fake_device();
    let (events_tx, events) = channel();
    let wakers: Arc<Mutex<Option<Arc<[Waker]>>>> = Arc::default();
    let config = QueueConfig {
        reads: 2,
        max_in_flight: 16,
        layout: SpillLayout::default_for(MAX_WRITE),
        pool_cap: 16,
        standby: false,
    };
    let backing = vec![export.image().raw_fd()];
    let factory_wakers = wakers.clone();
    let events_tx = Mutex::new(events_tx);
    let queues = fuse_dev::serve_fds(
        vec![theirs0, theirs1],
        config,
        backing,
        move |context: QueueContext| {
            *factory_wakers.lock().unwrap() = Some(context.wakers.clone());
            Gate {
                queue: context.index,
                inner: export.queue_handler(context),
                kept: None,
                events: events_tx.lock().unwrap().clone(),
            }
        },
    )
    .unwrap();

    // Queue 0's write takes the lock on [0, 4096) and keeps it.
    send_write(&ours0, 2, 0, &[0xaa; 4096]);
    expect(
        &events,
        Event::Handled {
            queue: 0,
            unique: 2,
        },
    );
    expect(&events, Event::Kept);
    // Queue 1's write of the same block parks behind that lock.
    send_write(&ours1, 4, 0, &[0xbb; 4096]);
    expect(
        &events,
        Event::Handled {
            queue: 1,
            unique: 4,
        },
    );

    // Queue 0 panics while it holds the lock.
    let wakers = wakers.lock().unwrap().clone().unwrap();
    wakers[0].wake();
    // The dead queue answered its write with EIO; queue 1's write, no
    // longer blocked, went through before the stop ended queue 1.
    assert_eq!(replies_until_end(&ours0), [(2, -libc::EIO)]);
    assert_eq!(replies_until_end(&ours1), [(4, 0)]);
    let error = queues.shutdown().expect_err("a queue panicked");
    assert!(error.to_string().contains("panicked"), "{error}");
    let image = std::fs::read(&image_path).unwrap();
    assert!(image[..4096].iter().all(|&b| b == 0xbb));
}
