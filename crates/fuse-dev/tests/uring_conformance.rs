//! Live conformance of the FUSE-over-io_uring protocol: what the kernel does
//! with ring entries, probed through fuse-dev's own ring layer
//! ([`fuse_dev::uring::RingQueue`]) over a real mount.
//!
//! Each test mounts its own regular file, answers INIT over `/dev/fuse` the
//! way fuse-export does with `--transport uring` (FUSE_OVER_IO_URING asked
//! for), then plays the server on the test thread through one ring per
//! kernel queue while a client thread makes syscalls on the mounted file.
//! When a future kernel changes one of these behaviours, the test named
//! after it fails.
//!
//! The kernel offers the transport only while
//! `/sys/module/fuse/parameters/enable_uring` is `Y`; every test holds an
//! [`EnableUringGuard`] that turns it on and restores the previous value when
//! the last guard on the machine ends (other test processes may hold one at
//! the same time). Needs root, `/dev/fuse` and that parameter; otherwise each
//! test prints `SKIP: ...` and passes. Nothing waits unbounded: every wait has
//! a deadline, and a probe that ends with a client still blocked closes its
//! rings and device fd, which aborts the connection and releases the client.

mod common;

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Client, FUSECTL, Fusectl, ScratchDir, connection_id, fresh_size, mount_probe_file,
    probe_attr_out, report_skip, skip_reason,
};
use fuse_dev::init::{InitRequest, Negotiated, max_pages_limit, negotiate};
use fuse_dev::mount::Mount;
use fuse_dev::uring::{
    EnableUringGuard, GuardError, HEADER_LEN, RingEvent, RingQueue, RingSetup, cpus, payload_len,
};
use fuse_proto::abi::{AttrOut, InHeader, InitIn, OpenOut, ReadIn, WriteIn, WriteOut};
use fuse_proto::reply::{Errno as ReplyErrno, Reply};
use fuse_proto::{Opcode, Request};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use zerocopy::FromBytes;

/// Size the probe server reports for the mounted file.
const FILE_SIZE: u64 = 4 << 20;
/// `max_write` asked for at INIT: fuse-export's default.
const MAX_WRITE: u32 = 1 << 20;
/// Entries registered per queue.
const DEPTH: usize = 2;
/// The longest any single wait may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request that must stay held back is watched.
const HELD_BACK: Duration = Duration::from_millis(300);
/// `FOPEN_DIRECT_IO`.
const FOPEN_DIRECT_IO: u32 = 1 << 0;

/// A mounted probe server: `enable_uring` held on, the mount, its device fd
/// and one ring per kernel queue once created.
///
/// Dropping it first tries a plain unmount (which ends the connection and so
/// completes every registered entry); if a client still holds the file, it
/// closes the rings and the device fd instead (aborting the connection) and
/// detaches the mount. Ring memory the kernel may still touch is never freed
/// (fuse-dev leaks it), so the order is only about releasing clients.
struct Probe {
    test: &'static str,
    rings: Vec<RingQueue>,
    device: Option<OwnedFd>,
    mount: Mount,
    mountpoint: PathBuf,
    negotiated: Option<Negotiated>,
    queues: usize,
    /// Events reaped but not looked at yet.
    pending: VecDeque<(usize, RingEvent)>,
    _dir: ScratchDir,
    _enable: EnableUringGuard,
}

impl Drop for Probe {
    fn drop(&mut self) {
        // The unmount runs on another thread while this one, which owns the
        // rings, keeps reaping and answering: a late request (the RELEASE
        // after a client's close) may still be handed to one of these
        // entries, and with DEFER_TASKRUN that delivery only happens when
        // this thread waits on its ring. Blocked in umount(2) itself, it
        // would never wait again, and the kernel's unmount would wait for
        // that request for good (an unkillable hang, seen on 6.18).
        let mountpoint = self.mountpoint.clone();
        let unmounter = std::thread::spawn(move || {
            rustix::mount::unmount(&mountpoint, rustix::mount::UnmountFlags::NOFOLLOW)
        });
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline
            && (!unmounter.is_finished()
                || self.rings.iter().any(|r| r.entries().in_kernel_count() > 0))
        {
            if let Some((qid, RingEvent::Delivered(entry))) =
                self.next_event(Duration::from_millis(10))
            {
                self.answer_late(qid, entry);
            }
        }
        if !unmounter.is_finished() {
            eprintln!(
                "{}: unmounting {} did not finish in {TIMEOUT:?}",
                self.test,
                self.mountpoint.display()
            );
        }
        self.rings.clear();
        self.device = None;
        if let Err(err) = self.mount.unmount() {
            eprintln!(
                "{}: unmounting {}: {err}",
                self.test,
                self.mountpoint.display()
            );
        }
    }
}

impl Probe {
    /// Turns `enable_uring` on and mounts a fresh file whose INIT is still
    /// queued; `None` (after a `SKIP:` line) where the tests cannot run.
    fn mount_uninitialised(test: &'static str) -> Option<Probe> {
        if let Some(reason) = skip_reason() {
            report_skip(test, reason);
            return None;
        }
        let enable = match EnableUringGuard::acquire() {
            Ok(guard) => guard,
            Err(err @ GuardError::Missing) => {
                report_skip(test, &err.to_string());
                return None;
            }
            Err(err) => {
                report_skip(test, &err.to_string());
                return None;
            }
        };
        let queues = cpus::possible_cpus().expect("reading the possible CPUs");
        let dir = ScratchDir::new("fuse-uring-conformance", test);
        let (mountpoint, mounted) =
            mount_probe_file(&dir, format!("uring-conformance-{test}"), MAX_WRITE);
        let (device, mount) = mounted.unwrap_or_else(|err| panic!("{test}: mounting: {err}"));
        Some(Probe {
            test,
            rings: Vec::new(),
            device: Some(device),
            mount,
            mountpoint,
            negotiated: None,
            queues,
            pending: VecDeque::new(),
            _dir: dir,
            _enable: enable,
        })
    }

    /// Mounts, answers INIT asking for FUSE_OVER_IO_URING, and creates (but
    /// does not register) one ring per kernel queue.
    fn start(test: &'static str) -> Option<Probe> {
        let mut probe = Probe::mount_uninitialised(test)?;
        probe.answer_init();
        probe.create_rings();
        Some(probe)
    }

    fn device(&self) -> &OwnedFd {
        self.device.as_ref().expect("the device is open")
    }

    /// Reads INIT from `/dev/fuse` and answers it the way fuse-export does
    /// with the uring transport.
    fn answer_init(&mut self) {
        let mut buf = vec![0u8; 1 << 16];
        let deadline = Instant::now() + TIMEOUT;
        let n = loop {
            let mut fds = [PollFd::new(self.device(), PollFlags::IN)];
            let wait = Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            let _ = rustix::event::poll(&mut fds, Some(&wait));
            match rustix::io::read(self.device(), &mut buf) {
                Ok(n) => break n,
                Err(Errno::AGAIN | Errno::INTR) => {
                    assert!(Instant::now() < deadline, "{}: no INIT", self.test)
                }
                Err(err) => panic!("{}: reading INIT: {err}", self.test),
            }
        };
        let request = Request::parse(&buf[..n]).expect("parsing INIT");
        assert_eq!(request.header.opcode, Opcode::INIT.0);
        let (offer, _) = InitIn::read_from_prefix(&buf[size_of::<InHeader>()..n]).unwrap();
        let want = InitRequest {
            max_write: MAX_WRITE,
            max_background: 64,
            extra_flags: fuse_proto::flags::InitFlags::OVER_IO_URING,
            max_pages_limit: max_pages_limit(),
            passthrough: false,
        };
        let (out, negotiated) = negotiate(&offer, &want).expect("negotiating INIT");
        assert!(
            negotiated.uring_offered(),
            "{}: enable_uring is Y but INIT does not offer FUSE_OVER_IO_URING",
            self.test
        );
        assert!(negotiated.uring_granted());
        let reply = Reply::init(request.header.unique, &out, negotiated.minor);
        rustix::io::write(self.device(), reply.as_bytes()).expect("answering INIT");
        self.negotiated = Some(negotiated);
    }

    fn setup(&self, qid: usize) -> RingSetup {
        let negotiated = self.negotiated.expect("INIT answered");
        RingSetup {
            qid: qid as u16,
            depth: DEPTH,
            payload_len: payload_len(&negotiated),
            extra_sqes: 0,
        }
    }

    fn create_rings(&mut self) {
        for qid in 0..self.queues {
            let setup = self.setup(qid);
            let ring = RingQueue::new(self.device().as_fd(), &[], &setup)
                .unwrap_or_else(|err| panic!("{}: creating ring {qid}: {err}", self.test));
            self.rings.push(ring);
        }
    }

    /// Registers every entry of queue `qid` and submits.
    fn register_queue(&mut self, qid: usize) {
        let ring = &mut self.rings[qid];
        for index in 0..DEPTH {
            ring.register(index).expect("registering an entry");
        }
        ring.submit().expect("submitting REGISTERs");
    }

    fn register_all(&mut self) {
        for qid in 0..self.queues {
            self.register_queue(qid);
        }
    }

    /// Waits up to `timeout` for the next event on any ring.
    fn next_event(&mut self, timeout: Duration) -> Option<(usize, RingEvent)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            for (qid, ring) in self.rings.iter_mut().enumerate() {
                let _ = ring.wait(Duration::from_millis(5));
                let pending = &mut self.pending;
                ring.reap(|event| pending.push_back((qid, event)));
            }
            if self.pending.is_empty() && Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// The next delivered request; fails the test on anything else.
    fn expect_delivery(&mut self) -> (usize, usize) {
        match self.next_event(TIMEOUT) {
            Some((qid, RingEvent::Delivered(entry))) => (qid, entry),
            other => panic!("{}: expected a delivery, got {other:?}", self.test),
        }
    }

    /// Answers a request that arrives while the probe ends (RELEASE, FLUSH)
    /// with an empty reply, without panicking: this runs in `Drop`, maybe
    /// while a failed test unwinds, and the connection may be going away
    /// (a refused commit is then expected).
    fn answer_late(&mut self, qid: usize, entry: usize) {
        let ring = &mut self.rings[qid];
        let Ok(delivered) = ring.delivered(entry) else {
            return;
        };
        let reply = Reply::empty(delivered.header.unique);
        if ring.write_reply(entry, reply.as_bytes()).is_ok() && ring.commit(entry).is_ok() {
            let _ = ring.submit();
        }
    }

    /// Answers the request in `entry` of queue `qid` like a working server.
    fn answer(&mut self, qid: usize, entry: usize) -> Opcode {
        let ring = &mut self.rings[qid];
        let delivered = ring.delivered(entry).expect("a delivered request");
        let header = delivered.header;
        let opcode = Opcode(header.opcode);
        let unique = header.unique;
        match opcode {
            Opcode::READ => {
                let (read, _) = ReadIn::read_from_prefix(delivered.op).unwrap();
                let len = read.size.min(FILE_SIZE.saturating_sub(read.offset) as u32);
                let data = pattern(read.offset, len as usize);
                let out = Reply::data_header(unique, len);
                ring.write_reply_parts(entry, out.as_bytes(), &[&data])
                    .expect("storing READ data");
            }
            _ => {
                let reply = default_reply(opcode, unique, delivered.op);
                ring.write_reply(entry, &reply).expect("storing a reply");
            }
        }
        ring.commit(entry).expect("committing");
        ring.submit().expect("submitting the commit");
        opcode
    }

    /// Answers deliveries until the client finishes; returns its result and
    /// the opcodes answered with their queue.
    fn serve_until_done<T: Send + 'static>(
        &mut self,
        client: &Client<T>,
    ) -> (T, Vec<(usize, Opcode)>) {
        let deadline = Instant::now() + TIMEOUT;
        let mut answered = Vec::new();
        loop {
            if let Some(result) = client.try_result() {
                return (result, answered);
            }
            assert!(
                Instant::now() < deadline,
                "{}: the client is still blocked; answered so far: {answered:?}",
                self.test
            );
            match self.next_event(Duration::from_millis(20)) {
                Some((qid, RingEvent::Delivered(entry))) => {
                    let opcode = self.answer(qid, entry);
                    answered.push((qid, opcode));
                }
                Some(other) => panic!("{}: unexpected {other:?}", self.test),
                None => {}
            }
        }
    }
}

/// Bytes at file offset `offset`: each is its offset modulo 251, so shifts show.
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|pos| (pos % 251) as u8)
        .collect()
}

fn attr_out() -> AttrOut {
    probe_attr_out(FILE_SIZE)
}

fn default_reply(opcode: Opcode, unique: u64, op: &[u8]) -> Vec<u8> {
    match opcode {
        Opcode::GETATTR => Reply::with(unique, &attr_out()).as_bytes().to_vec(),
        Opcode::OPEN => Reply::with(
            unique,
            &OpenOut {
                fh: 1,
                open_flags: FOPEN_DIRECT_IO,
                ..OpenOut::default()
            },
        )
        .as_bytes()
        .to_vec(),
        Opcode::FLUSH | Opcode::RELEASE => Reply::empty(unique).as_bytes().to_vec(),
        Opcode::WRITE => {
            let (write, _) = WriteIn::read_from_prefix(op).unwrap();
            Reply::with(
                unique,
                &WriteOut {
                    size: write.size,
                    padding: 0,
                },
            )
            .as_bytes()
            .to_vec()
        }
        _ => Reply::error(unique, ReplyErrno::ENOSYS).as_bytes().to_vec(),
    }
}

#[test]
fn register_before_the_init_reply_is_eagain_and_works_after_it() {
    let Some(mut probe) = Probe::mount_uninitialised("register_before_init") else {
        return;
    };
    // The ring can exist before INIT; registering cannot (the kernel does
    // not know max_write yet). A stand-in setup with the default sizes.
    let setup = RingSetup {
        qid: 0,
        depth: DEPTH,
        payload_len: MAX_WRITE as usize,
        extra_sqes: 0,
    };
    let mut early = RingQueue::new(probe.device().as_fd(), &[], &setup).expect("creating a ring");
    early.register(0).expect("queueing REGISTER");
    early.wait(TIMEOUT).expect("submitting");
    let mut events = Vec::new();
    early.reap(|event| events.push(event));
    assert_eq!(
        events,
        vec![RingEvent::Ended {
            entry: 0,
            errno: libc::EAGAIN
        }],
        "REGISTER before the INIT reply"
    );
    assert_eq!(
        early.entries().in_kernel_count(),
        0,
        "a refused entry comes back"
    );
    drop(early);

    probe.answer_init();
    probe.create_rings();
    probe.register_all();
    // Registered entries wait for requests: no completion without one.
    assert!(
        probe.next_event(HELD_BACK).is_none(),
        "a registered entry completed without a request"
    );
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || fresh_size(&path));
    let (size, answered) = probe.serve_until_done(&client);
    assert_eq!(size, Ok(FILE_SIZE));
    assert!(
        answered.iter().any(|(_, op)| *op == Opcode::GETATTR),
        "GETATTR came through the ring: {answered:?}"
    );
}

#[test]
fn requests_wait_until_every_queue_has_an_entry() {
    let Some(mut probe) = Probe::start("requests_wait_for_every_queue") else {
        return;
    };
    if probe.queues < 2 {
        report_skip(probe.test, "needs two possible CPUs (one ring queue each)");
        return;
    }
    let last = probe.queues - 1;
    for qid in 0..last {
        probe.register_queue(qid);
    }
    // A client on the last CPU: its request would go to the last queue,
    // which has no entry yet. Until it has, the kernel holds every request
    // back (nothing on the rings, nothing on /dev/fuse).
    let path = probe.mountpoint.clone();
    let client = Client::spawn_on(Some(last), move || fresh_size(&path));
    assert!(
        probe.next_event(HELD_BACK).is_none(),
        "a request flowed early"
    );
    assert!(client.try_result().is_none(), "the client finished early");
    let mut fds = [PollFd::new(probe.device(), PollFlags::IN)];
    let _ = rustix::event::poll(&mut fds, Some(&Timespec::default()));
    assert!(
        !fds[0].revents().contains(PollFlags::IN),
        "the request went to /dev/fuse instead of waiting"
    );

    probe.register_queue(last);
    let (size, answered) = probe.serve_until_done(&client);
    assert_eq!(size, Ok(FILE_SIZE));
    assert!(
        answered.iter().all(|(qid, _)| *qid == last),
        "requests of a client on CPU {last} go to queue {last}: {answered:?}"
    );
}

#[test]
fn commit_of_an_unknown_id_is_enoent_and_changes_nothing() {
    let Some(mut probe) = Probe::start("commit_of_unknown_id") else {
        return;
    };
    probe.register_all();
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || fresh_size(&path));
    let (qid, entry) = probe.expect_delivery();
    let unique = probe.rings[qid].commit_id(entry);
    assert_eq!(
        probe.rings[qid].delivered(entry).unwrap().header.unique,
        unique,
        "commit_id is the request's unique"
    );
    // Request ids are even; an odd one was never issued.
    let unknown = unique | 1;
    // SAFETY: `unknown` is odd, so no request of this connection has it:
    // the kernel cannot find (and so cannot commit) any entry's request.
    unsafe { probe.rings[qid].commit_with_id(entry, unknown) }.unwrap();
    probe.rings[qid].submit().unwrap();
    match probe.next_event(TIMEOUT) {
        Some((q, RingEvent::Ended { entry: e, errno })) => {
            assert_eq!((q, e), (qid, entry));
            assert_eq!(errno, libc::ENOENT, "commit of an unknown id");
        }
        other => panic!("expected the commit to fail, got {other:?}"),
    }
    assert!(client.try_result().is_none(), "the request is still open");
    // The entry still holds its request; the right commit answers it.
    assert_eq!(
        probe.rings[qid].delivered(entry).unwrap().header.unique,
        unique
    );
    assert_eq!(probe.answer(qid, entry), Opcode::GETATTR);
    let (size, _) = probe.serve_until_done(&client);
    assert_eq!(size, Ok(FILE_SIZE));
}

#[test]
fn write_and_read_travel_through_the_payload_buffer() {
    let Some(mut probe) = Probe::start("payload_buffer") else {
        return;
    };
    probe.register_all();
    let path = probe.mountpoint.clone();
    let data = pattern(1 << 20, MAX_WRITE as usize);
    let expected = data.clone();
    let client = Client::spawn(move || -> Result<Vec<u8>, Errno> {
        let file = rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
        let written = rustix::io::pwrite(&file, &data, 1 << 20)?;
        assert_eq!(written, data.len());
        let mut back = vec![0u8; 64 * 1024];
        let n = rustix::io::pread(&file, &mut back, (1 << 20) + 4096)?;
        back.truncate(n);
        Ok(back)
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut saw_write = false;
    loop {
        if let Some(result) = client.try_result() {
            let back = result.expect("client I/O");
            assert_eq!(
                back,
                pattern((1 << 20) + 4096, 64 * 1024),
                "READ data from the payload"
            );
            break;
        }
        assert!(Instant::now() < deadline, "client still blocked");
        let Some((qid, event)) = probe.next_event(Duration::from_millis(20)) else {
            continue;
        };
        let RingEvent::Delivered(entry) = event else {
            panic!("unexpected {event:?}");
        };
        let delivered = probe.rings[qid].delivered(entry).unwrap();
        if delivered.header.opcode == Opcode::WRITE.0 {
            // The op struct in op_in, the data alone in the payload buffer,
            // from its first byte; `len` still counts everything.
            let (write, _) = WriteIn::read_from_prefix(delivered.op).unwrap();
            assert_eq!(delivered.op.len(), size_of::<WriteIn>());
            assert_eq!(write.size as usize, delivered.payload.len());
            assert_eq!(
                delivered.header.len as usize,
                size_of::<InHeader>() + size_of::<WriteIn>() + delivered.payload.len()
            );
            let start = (write.offset - (1 << 20)) as usize;
            assert_eq!(
                delivered.payload,
                &expected[start..start + delivered.payload.len()],
                "WRITE data at offset {}",
                write.offset
            );
            saw_write = true;
        }
        probe.answer(qid, entry);
    }
    assert!(saw_write, "the WRITE came through the ring");
    // A header buffer is exactly fuse_uring_req_header.
    assert_eq!(HEADER_LEN, 288);
}

#[test]
fn unmount_completes_every_waiting_entry_with_enotconn() {
    let Some(mut probe) = Probe::start("unmount_completes_entries") else {
        return;
    };
    probe.register_all();
    assert!(probe.next_event(HELD_BACK).is_none());
    probe.mount.unmount().expect("unmounting");
    let mut ended = Vec::new();
    let total = probe.queues * DEPTH;
    while ended.len() < total {
        match probe.next_event(TIMEOUT) {
            Some((qid, RingEvent::Ended { entry, errno })) => ended.push((qid, entry, errno)),
            other => panic!("after unmount: {other:?}; ended so far {ended:?}"),
        }
    }
    assert!(
        ended.iter().all(|&(_, _, errno)| errno == libc::ENOTCONN),
        "{ended:?}"
    );
    assert!(
        probe
            .rings
            .iter()
            .all(|r| r.entries().in_kernel_count() == 0)
    );
    // Nothing can be registered on the dead connection.
    probe.rings[0].register(0).unwrap();
    probe.rings[0].submit().unwrap();
    match probe.next_event(TIMEOUT) {
        Some((0, RingEvent::Ended { entry: 0, errno })) => {
            assert_eq!(errno, libc::ENOTCONN, "REGISTER after unmount")
        }
        other => panic!("REGISTER after unmount: {other:?}"),
    }
}

#[test]
fn abort_ends_entries_in_flight_and_the_request_held() {
    let Some(mut probe) = Probe::start("abort_with_request_held") else {
        return;
    };
    probe.register_all();
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || fresh_size(&path));
    let (qid, entry) = probe.expect_delivery();
    let fusectl = match Fusectl::ensure() {
        Ok(fusectl) => fusectl,
        Err(err) => {
            report_skip(
                probe.test,
                &format!("cannot mount fusectl on {FUSECTL}: {err}"),
            );
            // Answer so that the probe can unmount cleanly.
            probe.answer(qid, entry);
            let _ = probe.serve_until_done(&client);
            return;
        }
    };
    let id = connection_id(&probe.mountpoint).expect("the mount's connection id");
    fusectl.abort(id).expect("aborting the connection");
    // Every other entry was waiting: each completes, without a request.
    let waiting = probe.queues * DEPTH - 1;
    let mut ended = Vec::new();
    while ended.len() < waiting {
        match probe.next_event(TIMEOUT) {
            Some((q, RingEvent::Ended { entry: e, errno })) => ended.push((q, e, errno)),
            other => panic!("after abort: {other:?}; ended so far {ended:?}"),
        }
    }
    assert!(
        ended.iter().all(|&(_, _, errno)| errno == libc::ENOTCONN),
        "{ended:?}"
    );
    // The request held in userspace was ended by the kernel for its client.
    let deadline = Instant::now() + TIMEOUT;
    let result = loop {
        if let Some(result) = client.try_result() {
            break result;
        }
        assert!(
            Instant::now() < deadline,
            "the client is still blocked after the abort"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        result,
        Err(Errno::CONNABORTED),
        "the client of the held request"
    );
    // A late commit of it is refused: the connection was aborted (and
    // ABORT_ERROR negotiated).
    let reply = Reply::with(probe.rings[qid].commit_id(entry), &attr_out());
    probe.rings[qid]
        .write_reply(entry, reply.as_bytes())
        .unwrap();
    probe.rings[qid].commit(entry).unwrap();
    probe.rings[qid].submit().unwrap();
    match probe.next_event(TIMEOUT) {
        Some((q, RingEvent::Ended { entry: e, errno })) => {
            assert_eq!((q, e), (qid, entry));
            assert_eq!(errno, libc::ECONNABORTED, "commit after an abort");
        }
        other => panic!("commit after abort: {other:?}"),
    }
    drop(fusectl);
}
