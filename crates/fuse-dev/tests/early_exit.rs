//! Queues that end early (a failing pool allocation, a failing submit, a
//! panicking handler, a failing device read, a device that cannot be read)
//! with requests in flight on them and on another queue.
//!
//! The devices are fake: one end of a `SOCK_SEQPACKET` socketpair per queue
//! (one message = one request or reply). The test handler serves READ from a
//! pipe (one per queue), so a backing read stays in flight in the kernel
//! until the test writes into that pipe: exactly the operations that must
//! not outlive the memory they write into. Faults come from the
//! `fault-injection` feature, which this crate's dev-dependency on itself
//! turns on for its tests.
//!
//! What every early end must guarantee, and what the tests check:
//! * the queue ends with an error (and `Queues::shutdown` returns it) instead
//!   of hanging, and the other queues drain and end too;
//! * every request the dead queue had taken is answered (EIO) while its fd
//!   still works, so that no client waits for it;
//! * no operation is left posted into memory that was freed: either it was
//!   cancelled and reaped before the memory went (a pipe read that was in
//!   flight no longer consumes what is written into the pipe), or the memory
//!   was leaked (it is still mapped).

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use fuse_dev::fault::{self, Faults};
use fuse_dev::{
    BackingFile, BackingOp, Completion, Handler, Incoming, Job, QueueConfig, QueueContext, QueueIo,
    Queues, SpillLayout, Waker,
};
use fuse_proto::reply::{Errno, Reply};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

const GETATTR: u32 = 3;
const READ: u32 = 15;
const FSYNC: u32 = 20;
const FLUSH: u32 = 25;

const EIO: i32 = -libc::EIO;

/// How long a test waits for a reply or an end before it fails. A hang
/// guard, not a timing assertion: a working queue answers in microseconds.
const HANG_GUARD: Timespec = Timespec {
    tv_sec: 10,
    tv_nsec: 0,
};

fn config() -> QueueConfig {
    QueueConfig {
        reads: 2,
        max_in_flight: 16,
        layout: SpillLayout::default_for(64 * 1024),
        pool_cap: 16,
        standby: false,
    }
}

// ---------------------------------------------------------------------------
// The fake device

/// The test's end of a fake device.
struct Device {
    socket: OwnedFd,
    next_unique: u64,
}

fn fake_device() -> (Device, OwnedFd) {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    (
        Device {
            socket: ours,
            next_unique: 2,
        },
        theirs,
    )
}

/// A reply as the queue wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    unique: u64,
    error: i32,
    data: Vec<u8>,
}

impl Device {
    fn send(&mut self, opcode: u32, args: &[u8]) -> u64 {
        self.try_send(opcode, args)
            .unwrap_or_else(|err| panic!("sending a request failed: {err}"))
    }

    /// Sends a request; fails once the queue closed its end.
    fn try_send(&mut self, opcode: u32, args: &[u8]) -> rustix::io::Result<u64> {
        let unique = self.next_unique;
        self.next_unique += 2;
        let len = 40 + args.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&opcode.to_ne_bytes());
        msg.extend_from_slice(&unique.to_ne_bytes());
        msg.extend_from_slice(&1u64.to_ne_bytes()); // nodeid
        msg.extend_from_slice(&[0u8; 16]); // uid gid pid extlen padding
        msg.extend_from_slice(args);
        assert_eq!(rustix::io::write(&self.socket, &msg)?, msg.len());
        Ok(unique)
    }

    fn getattr(&mut self) -> u64 {
        self.send(GETATTR, &[0u8; 16])
    }

    /// A READ of `size` bytes that the test handler serves from backing
    /// file `file` (carried in the offset field).
    fn read(&mut self, file: u32, size: u32) -> u64 {
        self.send(READ, &read_args(file, size))
    }
}

fn read_args(file: u32, size: u32) -> Vec<u8> {
    {
        let mut args = Vec::new();
        args.extend_from_slice(&0u64.to_ne_bytes()); // fh
        args.extend_from_slice(&u64::from(file).to_ne_bytes()); // offset
        args.extend_from_slice(&size.to_ne_bytes());
        args.extend_from_slice(&[0u8; 20]); // read_flags lock_owner flags padding
        args
    }
}

impl Device {
    /// An FSYNC: the test handler panics on it.
    fn fsync(&mut self) -> u64 {
        self.send(FSYNC, &[0u8; 16])
    }

    /// A FLUSH: the test handler keeps its job without answering.
    fn flush(&mut self) -> u64 {
        self.send(FLUSH, &[0u8; 24])
    }

    /// The next reply, or `None` at end of file (the queue closed its fd).
    fn next(&self) -> Option<Answer> {
        let mut fds = [PollFd::new(&self.socket, PollFlags::IN)];
        let ready = rustix::event::poll(&mut fds, Some(&HANG_GUARD)).unwrap();
        assert!(ready > 0, "no reply and no end within {HANG_GUARD:?}");
        let mut buf = vec![0u8; 1 << 17];
        let n = match rustix::io::read(&self.socket, &mut buf) {
            Ok(n) => n,
            // The queue closed its end with requests it never read: the
            // error comes first, the replies queued before it after.
            Err(rustix::io::Errno::CONNRESET) => return self.next(),
            Err(err) => panic!("reading the device failed: {err}"),
        };
        if n == 0 {
            return None;
        }
        assert!(n >= 16, "short reply of {n} bytes");
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, n, "reply length field");
        Some(Answer {
            error: i32::from_ne_bytes(buf[4..8].try_into().unwrap()),
            unique: u64::from_ne_bytes(buf[8..16].try_into().unwrap()),
            data: buf[16..n].to_vec(),
        })
    }

    /// Every reply until the queue closes its fd.
    fn until_end(&self) -> Vec<Answer> {
        std::iter::from_fn(|| self.next()).collect()
    }

    /// Replies until one for each of `uniques` has arrived (and no more
    /// than that; the queue's fd may stay open, e.g. when it was leaked).
    fn answers_for(&self, uniques: &[u64]) -> HashMap<u64, Answer> {
        let mut answers = HashMap::new();
        while !uniques.iter().all(|u| answers.contains_key(u)) {
            let answer = self
                .next()
                .unwrap_or_else(|| panic!("device closed; answers so far: {answers:?}"));
            let previous = answers.insert(answer.unique, answer.clone());
            assert!(previous.is_none(), "answered twice: {answer:?}");
        }
        answers
    }
}

/// A pipe whose read end is a backing file: a READ served from it stays in
/// flight until the test writes into it.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> Pipe {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        Pipe { read, write }
    }

    fn feed(&self, bytes: &[u8]) {
        assert_eq!(rustix::io::write(&self.write, bytes).unwrap(), bytes.len());
    }

    /// After the queue that read this pipe has ended: what is written now
    /// must stay in the pipe, since no read may still be posted on it.
    fn assert_no_read_posted(&self) {
        let probe = *b"no-one!!";
        self.feed(&probe);
        let mut fds = [PollFd::new(&self.read, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        assert_eq!(
            rustix::event::poll(&mut fds, Some(&zero)).unwrap(),
            1,
            "a read still posted on the pipe took what was written into it"
        );
        let mut back = [0u8; 8];
        assert_eq!(rustix::io::read(&self.read, &mut back).unwrap(), 8);
        assert_eq!(back, probe);
    }
}

/// Whether the page at `address` is mapped in this process.
fn is_mapped(address: usize) -> bool {
    let page = address & !(fuse_dev::PAGE_SIZE - 1);
    // SAFETY: msync with MS_ASYNC only asks whether the range is mapped
    // (ENOMEM if not); it does not read or change the memory.
    unsafe {
        rustix::mm::msync(
            page as *mut core::ffi::c_void,
            fuse_dev::PAGE_SIZE,
            rustix::mm::MsyncFlags::ASYNC,
        )
    }
    .is_ok()
}

// ---------------------------------------------------------------------------
// The test handler

/// What the handlers of a test share with it.
#[derive(Default)]
struct Seen {
    /// (queue, unique) of every request a handler received.
    requests: Vec<(usize, u64)>,
    /// (queue, start address of the buffer) of every backing read submitted.
    read_buffers: Vec<(usize, usize)>,
    /// (queue, thread id) of each queue's thread (handlers are built on it).
    threads: Vec<(usize, i32)>,
}

/// Serves GETATTR (empty reply), READ (from the pipe named in the offset),
/// FLUSH (kept, not answered), FSYNC (panics).
struct Probe {
    queue: usize,
    seen: Arc<Mutex<Seen>>,
    /// Jobs kept by FLUSH.
    kept: Rc<RefCell<Vec<Job>>>,
    /// Switched on when a FLUSH arrives.
    faults_on_flush: Option<Arc<Faults>>,
}

impl Probe {
    fn new(context: &QueueContext, seen: &Arc<Mutex<Seen>>) -> Probe {
        let thread = rustix::thread::gettid().as_raw_nonzero().get();
        seen.lock().unwrap().threads.push((context.index, thread));
        Probe {
            queue: context.index,
            seen: seen.clone(),
            kept: Rc::default(),
            faults_on_flush: None,
        }
    }
}

fn opcode_of(incoming: &Incoming) -> u32 {
    u32::from_ne_bytes(incoming.head_bytes()[4..8].try_into().unwrap())
}

impl Handler for Probe {
    type State = ();

    fn request(&mut self, job: Job, incoming: Incoming, io: &mut QueueIo<'_, ()>) {
        let unique = job.unique();
        self.seen
            .lock()
            .unwrap()
            .requests
            .push((self.queue, unique));
        let opcode = opcode_of(&incoming);
        let read = match incoming.request().map(|r| r.op) {
            Ok(fuse_proto::Operation::Read(arg)) => Some(arg),
            _ => None,
        };
        match opcode {
            READ => {
                let arg = read.unwrap();
                let mut chain = incoming.into_buffers();
                chain.narrow(0, arg.size as usize);
                let address = chain.segments().next().unwrap().bytes().as_ptr() as usize;
                self.seen
                    .lock()
                    .unwrap()
                    .read_buffers
                    .push((self.queue, address));
                let op = BackingOp::Read {
                    file: BackingFile(arg.offset as u32),
                    offset: 0,
                };
                io.submit(job, op, chain, ());
            }
            FLUSH => {
                io.pool().give_chain(incoming.into_buffers());
                if let Some(faults) = &self.faults_on_flush {
                    faults.fail_device_reads();
                }
                self.kept.borrow_mut().push(job);
            }
            FSYNC => panic!("the test handler panics on FSYNC"),
            _ => {
                io.pool().give_chain(incoming.into_buffers());
                io.reply(job, Reply::empty(unique));
            }
        }
    }

    fn complete(&mut self, job: Job, done: Completion<()>, io: &mut QueueIo<'_, ()>) {
        let Completion { result, chain, .. } = done;
        if result < 0 {
            io.pool().give_chain(chain);
            io.reply_error(job, Errno::from_any(result));
        } else {
            let mut chain = chain;
            chain.narrow(0, result as usize);
            io.reply_data(job, chain);
        }
    }
}

/// Two queues on fake devices, each reading its own pipe; faults armed on
/// queue 0.
struct TwoQueues {
    devices: [Device; 2],
    pipes: [Pipe; 2],
    faults: Arc<Faults>,
    seen: Arc<Mutex<Seen>>,
    queues: Option<Queues>,
}

impl TwoQueues {
    fn start() -> TwoQueues {
        let (device0, theirs0) = fake_device();
        let (device1, theirs1) = fake_device();
        let faults = fault::arm(theirs0.as_fd()).unwrap();
        let pipes = [Pipe::new(), Pipe::new()];
        let backing = pipes.iter().map(|p| p.read.as_raw_fd()).collect();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let factory_seen = seen.clone();
        let queues = fuse_dev::serve_fds(vec![theirs0, theirs1], config(), backing, move |c| {
            Probe::new(&c, &factory_seen)
        })
        .unwrap();
        let mut started = TwoQueues {
            devices: [device0, device1],
            pipes,
            faults,
            seen,
            queues: Some(queues),
        };
        // Both queues serve before any fault is switched on.
        for device in &mut started.devices {
            let unique = device.getattr();
            assert_eq!(device.answers_for(&[unique])[&unique].error, 0);
        }
        started
    }

    /// Puts a READ in flight on each queue's pipe; returns their uniques.
    fn reads_in_flight(&mut self) -> [u64; 2] {
        let uniques = [self.devices[0].read(0, 8), self.devices[1].read(1, 8)];
        // Wait until both handlers have submitted them.
        while self.seen.lock().unwrap().read_buffers.len() < 2 {
            std::thread::yield_now();
        }
        uniques
    }

    /// Waits until queue `queue`'s thread sleeps in `io_uring_enter(2)`: it
    /// has submitted what it had queued and passed the fault checks made
    /// before entering the kernel, so what it does next starts with a
    /// completion.
    fn wait_until_queue_sleeps_in_the_kernel(&self, queue: usize) {
        const IO_URING_ENTER: &str = "426";
        let thread = self
            .seen
            .lock()
            .unwrap()
            .threads
            .iter()
            .find(|(q, _)| *q == queue)
            .map(|(_, tid)| *tid)
            .expect("the queue's handler was built");
        let path = format!("/proc/self/task/{thread}/syscall");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let syscall = std::fs::read_to_string(&path).unwrap_or_default();
            if syscall.split_whitespace().next() == Some(IO_URING_ENTER) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "queue {queue} never waited in io_uring_enter: {path} says {syscall:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Queue 1 was stopped by queue 0's end: its READ completes with what
    /// the test feeds, then it ends cleanly; `shutdown` reports queue 0's error.
    fn other_queue_drains_and_shutdown_fails(&mut self, read_on_1: u64) -> std::io::Error {
        self.pipes[1].feed(b"queue 1!");
        let answers = self.devices[1].until_end();
        assert_eq!(
            answers,
            vec![Answer {
                unique: read_on_1,
                error: 0,
                data: b"queue 1!".to_vec()
            }]
        );
        let error = self
            .queues
            .take()
            .unwrap()
            .shutdown()
            .expect_err("a queue failed, so shutdown must fail");
        self.pipes[1].assert_no_read_posted();
        error
    }

    fn requests_on(&self, queue: usize) -> Vec<u64> {
        let seen = self.seen.lock().unwrap();
        let requests = seen.requests.iter();
        requests
            .filter(|(q, _)| *q == queue)
            .map(|(_, unique)| *unique)
            .collect()
    }
}

/// Every request queue 0's handler took (but the first GETATTR, answered
/// before the fault) is answered exactly once, with EIO.
fn assert_taken_requests_answered_eio(taken: &[u64], answers: &[Answer]) {
    let mut expected: Vec<u64> = taken.iter().skip(1).copied().collect();
    expected.sort_unstable();
    let mut answered: Vec<u64> = answers.iter().map(|a| a.unique).collect();
    answered.sort_unstable();
    assert_eq!(answered, expected, "answers {answers:?}");
    for answer in answers {
        assert_eq!(answer.error, EIO, "{answer:?}");
    }
}

// ---------------------------------------------------------------------------
// The tests

/// Issue 11.2: an mmap failure while re-arming a read slot.
#[test]
fn failing_pool_allocation_answers_and_drains() {
    let mut test = TwoQueues::start();
    let [_, read_on_1] = test.reads_in_flight();
    test.faults.fail_pool_allocations();
    // Each READ keeps its head block while its pipe read is in flight, so
    // the slots soon need a fresh buffer from the pool, which fails.
    for _ in 0..8 {
        if test.devices[0].try_send(READ, &read_args(0, 8)).is_err() {
            break; // the queue has ended and closed its end
        }
    }
    let answers = test.devices[0].until_end();
    assert_taken_requests_answered_eio(&test.requests_on(0), &answers);
    let error = test.other_queue_drains_and_shutdown_fails(read_on_1);
    assert!(error.to_string().contains("pool allocation"), "{error}");
    test.pipes[0].assert_no_read_posted();
}

/// Issue 11.3: a panic in a handler callback.
#[test]
fn panicking_handler_answers_and_drains() {
    let mut test = TwoQueues::start();
    let [_, read_on_1] = test.reads_in_flight();
    test.devices[0].fsync();
    let answers = test.devices[0].until_end();
    assert_taken_requests_answered_eio(&test.requests_on(0), &answers);
    let error = test.other_queue_drains_and_shutdown_fails(read_on_1);
    assert!(error.to_string().contains("panicked"), "{error}");
    test.pipes[0].assert_no_read_posted();
}

/// A device read that fails ends the queue.
#[test]
fn failing_device_read_answers_and_drains() {
    let mut test = TwoQueues::start();
    let [_, read_on_1] = test.reads_in_flight();
    test.faults.fail_device_reads();
    // The read that delivers this request is reported as failed.
    test.devices[0].getattr();
    let answers = test.devices[0].until_end();
    // The request lost with the failed read never reached the handler.
    assert_taken_requests_answered_eio(&test.requests_on(0), &answers);
    let error = test.other_queue_drains_and_shutdown_fails(read_on_1);
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    test.pipes[0].assert_no_read_posted();
}

/// A ring that can no longer submit cannot be drained: what the kernel may
/// still write into is leaked, and the requests are answered anyway.
#[test]
fn failing_submit_leaks_what_the_kernel_may_touch() {
    let mut test = TwoQueues::start();
    let [read_on_0, read_on_1] = test.reads_in_flight();
    // Only once queue 0 waits in the kernel (its READ submitted) may its
    // submits fail: otherwise it could end before it read the GETATTR below,
    // which would then never be answered.
    test.wait_until_queue_sleeps_in_the_kernel(0);
    test.faults.fail_submits();
    // Wakes the loop: the reply to this GETATTR cannot be submitted.
    let getattr = test.devices[0].getattr();
    let answers = test.devices[0].answers_for(&[read_on_0, getattr]);
    assert_eq!(answers[&read_on_0].error, EIO);
    assert_eq!(answers[&getattr].error, EIO);
    let error = test.other_queue_drains_and_shutdown_fails(read_on_1);
    assert!(error.to_string().contains("io_uring_enter"), "{error}");
    // The pipe read of queue 0 was posted into this buffer: it was leaked.
    let seen = test.seen.lock().unwrap();
    let mut buffers = seen.read_buffers.iter();
    let (_, buffer) = *buffers.find(|(queue, _)| *queue == 0).unwrap();
    assert!(
        is_mapped(buffer),
        "the in-flight read's buffer was unmapped"
    );
}

/// Issue 11.1: the eventfd read of an abandoned queue stays posted. If its
/// 8-byte buffer were freed, waking the queue afterwards would make the
/// kernel write into whatever was allocated there next.
#[test]
fn ended_queue_leaves_no_wake_read_into_freed_memory() {
    // The write end of a pipe: every read of it fails (EBADF), so the queue
    // ends early right after it started, its eventfd read posted.
    let pipe = Pipe::new();
    let device = pipe.write.try_clone().unwrap();
    let waker: RefCell<Option<Waker>> = RefCell::new(None);
    let seen = Arc::new(Mutex::new(Seen::default()));
    // The queue runs on this thread, which stays alive afterwards: the
    // kernel cancels a thread's io_uring requests only when it exits.
    let result = fuse_dev::serve_fd(device, config(), Vec::new(), |context| {
        *waker.borrow_mut() = Some(context.wakers[0].clone());
        Probe::new(&context, &seen)
    });
    let error = result.expect_err("reads of a write-only fd fail");
    assert_eq!(error.raw_os_error(), Some(libc::EBADF), "{error}");
    // Fresh 8-byte allocations: a freed wake buffer is among them.
    let fresh: Vec<Box<[u8; 8]>> = (0..4096).map(|_| Box::new([0u8; 8])).collect();
    waker.borrow().as_ref().unwrap().wake();
    // The read completes when this thread returns from the write above.
    let written: Vec<usize> = fresh
        .iter()
        .enumerate()
        .filter(|(_, b)| ***b != [0u8; 8])
        .map(|(i, _)| i)
        .collect();
    assert!(
        written.is_empty(),
        "the kernel wrote into fresh allocations {written:?}"
    );
}

/// Issue 11.6: a backing file index past the registered ones is refused
/// with EBADF (it used to wrap around to fixed file 0, the device itself).
#[test]
fn backing_file_out_of_range_completes_with_ebadf() {
    let (mut device, theirs) = fake_device();
    let pipe = Pipe::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let queue = std::thread::spawn({
        let backing = vec![pipe.read.as_raw_fd()];
        let seen = seen.clone();
        move || fuse_dev::serve_fd(theirs, config(), backing, |c| Probe::new(&c, &seen))
    });
    let too_far = device.read(u32::MAX, 8);
    let one_past = device.read(1, 8);
    let answers = device.answers_for(&[too_far, one_past]);
    assert_eq!(answers[&too_far].error, -libc::EBADF);
    assert_eq!(answers[&one_past].error, -libc::EBADF);
    // The queue still serves.
    let unique = device.getattr();
    assert_eq!(device.answers_for(&[unique])[&unique].error, 0);
    rustix::net::shutdown(&device.socket, rustix::net::Shutdown::Write).unwrap();
    assert_eq!(device.until_end(), Vec::new());
    let report = queue.join().unwrap().unwrap();
    assert!(report.disconnected);
}

/// Issue 11.6: `io_uring_enter` failing with EAGAIN or ENOMEM is retried.
#[test]
fn transient_submit_failures_are_retried() {
    for errno in [libc::EAGAIN, libc::ENOMEM, libc::EINTR, libc::EBUSY] {
        let (mut device, theirs) = fake_device();
        let faults = fault::arm(theirs.as_fd()).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let queue = std::thread::spawn({
            let seen = seen.clone();
            move || fuse_dev::serve_fd(theirs, config(), Vec::new(), |c| Probe::new(&c, &seen))
        });
        let unique = device.getattr();
        assert_eq!(device.answers_for(&[unique])[&unique].error, 0);
        faults.fail_next_submits(errno, 3);
        let unique = device.getattr();
        assert_eq!(
            device.answers_for(&[unique])[&unique].error,
            0,
            "errno {errno}"
        );
        rustix::net::shutdown(&device.socket, rustix::net::Shutdown::Write).unwrap();
        assert_eq!(device.until_end(), Vec::new());
        assert!(queue.join().unwrap().unwrap().disconnected, "errno {errno}");
    }
}

/// Issue 11.4: a job kept from a queue that ended cannot touch the job
/// table of a later queue (on the same thread: jobs are not `Send`).
#[test]
fn job_from_an_ended_queue_is_refused() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let kept: Rc<RefCell<Vec<Job>>> = Rc::default();

    // Queue A keeps the job of a FLUSH, then its next device read fails.
    let (mut device_a, theirs_a) = fake_device();
    let faults = fault::arm(theirs_a.as_fd()).unwrap();
    let flush = device_a.flush();
    device_a.getattr();
    let result = fuse_dev::serve_fd(theirs_a, config(), Vec::new(), |context| {
        let mut probe = Probe::new(&context, &seen);
        probe.kept = kept.clone();
        probe.faults_on_flush = Some(faults.clone());
        probe
    });
    assert!(result.is_err());
    // A answered the FLUSH itself when it ended.
    let answers = device_a.until_end();
    assert_eq!(
        answers,
        vec![Answer {
            unique: flush,
            error: EIO,
            data: Vec::new()
        }]
    );
    assert_eq!(kept.borrow().len(), 1);

    // Queue B's handler answers its first request with A's job first.
    struct Misuser {
        stale: Rc<RefCell<Vec<Job>>>,
    }
    impl Handler for Misuser {
        type State = ();
        fn request(&mut self, job: Job, incoming: Incoming, io: &mut QueueIo<'_, ()>) {
            io.pool().give_chain(incoming.into_buffers());
            if let Some(stale) = self.stale.borrow_mut().pop() {
                io.reply_error(stale, Errno::EIO);
            }
            let unique = job.unique();
            io.reply(job, Reply::empty(unique));
        }
        fn complete(&mut self, job: Job, done: Completion<()>, io: &mut QueueIo<'_, ()>) {
            io.finish_with(job, done.chain);
        }
    }
    let (mut device_b, theirs_b) = fake_device();
    let getattr = device_b.getattr();
    rustix::net::shutdown(&device_b.socket, rustix::net::Shutdown::Write).unwrap();
    let report = fuse_dev::serve_fd(theirs_b, config(), Vec::new(), |_| Misuser {
        stale: kept.clone(),
    })
    .unwrap();
    assert!(report.disconnected);
    assert_eq!(
        device_b.until_end(),
        vec![Answer {
            unique: getattr,
            error: 0,
            data: Vec::new()
        }]
    );
    assert!(kept.borrow().is_empty());
}

/// Queue ends with nothing in flight still shut down cleanly (the guard
/// does not get in the way of a full drain).
#[test]
fn clean_end_reports_and_closes_the_device() {
    let (mut device, theirs) = fake_device();
    let pipe = Pipe::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let queues = fuse_dev::serve_fds(
        vec![theirs],
        config(),
        vec![pipe.read.as_raw_fd()],
        move |c| Probe::new(&c, &seen),
    )
    .unwrap();
    let read = device.read(0, 5);
    pipe.feed(b"hello");
    assert_eq!(device.answers_for(&[read])[&read].data, b"hello");
    let reports = queues.shutdown().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].requests, 1);
    assert_eq!(device.until_end(), Vec::new());
    pipe.assert_no_read_posted();
}
