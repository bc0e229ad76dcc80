//! Live kernel conformance: the kernel behaviours fuse-export relies on,
//! probed against the running kernel over a real mount.
//!
//! Each test mounts its own regular file (`rootmode=0100000`) with
//! [`fuse_dev::mount::mount`] (so with fuse-export's mount options,
//! `default_permissions` included), answers INIT as fuse-export does
//! (`fuse_dev::init::negotiate`, 1 MiB `max_write`), and then plays a tiny
//! single-threaded server on the test thread while a client thread makes
//! syscalls on the mounted file. The test writes hand-made replies to
//! `/dev/fuse` and asserts the errno the kernel gives that `write(2)` and what
//! the client sees. When a future kernel changes one of these behaviours, the
//! test named after it fails. `docs/abi-live.md` explains each row.
//!
//! Needs root and `/dev/fuse`; otherwise every test prints `SKIP: ...` and
//! passes. Nothing waits unbounded: every wait is a poll with a timeout, and
//! the probe closes its device fds before unmounting, which aborts the
//! connection and so releases a client still blocked in a syscall.
//!
//! `capture_golden_frames` (ignored; run it explicitly as root) records real
//! request frames as hex into `crates/fuse-proto/tests/fixtures/captured/`.

mod common;

use std::fs;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{
    Client, ScratchDir, fresh_size, mount_probe_file, probe_attr_out, report_skip, skip_reason,
};
use fuse_dev::init::{InitRequest, Negotiated, max_pages_limit, negotiate};
use fuse_dev::mount::Mount;
use fuse_proto::Opcode;
use fuse_proto::abi::{AttrOut, InHeader, InitIn, OpenOut, ReadIn, WriteIn, WriteOut};
use fuse_proto::flags::InitFlags;
use fuse_proto::reply::{Errno as ReplyErrno, Reply};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{AtFlags, CWD, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use zerocopy::FromBytes;

/// Size the probe server reports for the mounted file.
const FILE_SIZE: u64 = 1 << 20;
/// `max_write` asked for at INIT: fuse-export's default, 1 MiB requests.
const MAX_WRITE: u32 = 1 << 20;
/// The longest any single wait may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The file handle the probe server hands out at OPEN.
const FILE_HANDLE: u64 = 0x1000;
/// `FOPEN_DIRECT_IO`: what fuse-export answers OPEN with.
const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: rustix::ioctl::Opcode = 0x8004_e500;
/// `sizeof(fuse_in_header) + sizeof(fuse_write_in)`.
const WRITE_HEADER_LEN: usize = 80;
/// `FUSE_MIN_READ_BUFFER`.
const MIN_READ_BUFFER: usize = 8192;
/// Index of the mount's own device fd in [`Probe::devices`].
const MOUNT_FD: usize = 0;
/// Bytes per page, the unit of fuse-export's read slots.
const PAGE: usize = 4096;

/// The smallest read buffer the kernel documents accepting.
fn min_read_len(max_write: u32) -> usize {
    MIN_READ_BUFFER.max(WRITE_HEADER_LEN + max_write as usize)
}

/// One request as the kernel delivered it.
#[derive(Clone)]
struct Frame {
    bytes: Vec<u8>,
    header: InHeader,
}

impl Frame {
    fn new(bytes: Vec<u8>) -> Frame {
        let header = match InHeader::read_from_prefix(&bytes) {
            Ok((header, _)) => header,
            Err(_) => panic!("a {}-byte read is shorter than fuse_in_header", bytes.len()),
        };
        assert_eq!(
            header.len as usize,
            bytes.len(),
            "in_header.len must equal the bytes read"
        );
        Frame { bytes, header }
    }

    fn opcode(&self) -> Opcode {
        Opcode(self.header.opcode)
    }

    fn unique(&self) -> u64 {
        self.header.unique
    }

    /// The opcode's argument struct, right after the header.
    fn body<T: FromBytes>(&self) -> T {
        match T::read_from_prefix(&self.bytes[size_of::<InHeader>()..]) {
            Ok((body, _)) => body,
            Err(_) => panic!("{:?} request too short for its argument", self.opcode()),
        }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} (unique {}, {} bytes)",
            self.opcode(),
            self.unique(),
            self.bytes.len()
        )
    }
}

/// A mounted probe server: the mount, its device fd and any clones.
///
/// Dropping it closes every device fd first (aborting the connection, which
/// fails any request a blocked client waits for), then unmounts (lazily if a
/// client still holds the file open), then removes the scratch directory.
struct Probe {
    test: &'static str,
    /// `devices[MOUNT_FD]` is the mount's fd; the others are clones.
    devices: Vec<OwnedFd>,
    mount: Mount,
    mountpoint: PathBuf,
    /// 0 until INIT is answered.
    max_write: u32,
    _dir: ScratchDir,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.devices.clear();
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
    /// Mounts a fresh file whose INIT is still queued; `None` (after a
    /// visible `SKIP:` line) where the tests cannot run.
    fn mount_uninitialised(test: &'static str) -> Option<Probe> {
        if let Some(reason) = skip_reason() {
            report_skip(test, reason);
            return None;
        }
        let dir = ScratchDir::new("fuse-conformance", test);
        let (mountpoint, mounted) =
            mount_probe_file(&dir, format!("conformance-{test}"), MAX_WRITE);
        match mounted {
            Ok((device, mount)) => Some(Probe {
                test,
                devices: vec![device],
                mount,
                mountpoint,
                max_write: 0,
                _dir: dir,
            }),
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                report_skip(test, &format!("mounting is not permitted here: {err}"));
                None
            }
            Err(err) => panic!("{test}: mounting {}: {err}", mountpoint.display()),
        }
    }

    /// Mounts a fresh file and answers INIT.
    fn start(test: &'static str) -> Option<Probe> {
        let mut probe = Probe::mount_uninitialised(test)?;
        let init = probe.expect_request(MOUNT_FD, Opcode::INIT);
        probe.answer_init(&init);
        Some(probe)
    }

    /// Answers INIT the way fuse-export does (1 MiB `max_write`).
    fn answer_init(&mut self, init: &Frame) {
        self.answer_init_with(init, false);
    }

    /// [`Probe::answer_init`], asking for FUSE_PASSTHROUGH if `passthrough`;
    /// returns what was negotiated.
    fn answer_init_with(&mut self, init: &Frame, passthrough: bool) -> Negotiated {
        assert_eq!(init.opcode(), Opcode::INIT);
        let offer: InitIn = init.body();
        let want = InitRequest {
            max_write: MAX_WRITE,
            max_background: 64,
            extra_flags: InitFlags::EMPTY,
            max_pages_limit: max_pages_limit(),
            passthrough,
        };
        let (out, negotiated) = negotiate(&offer, &want).expect("negotiating INIT");
        self.reply(
            MOUNT_FD,
            Reply::init(init.unique(), &out, negotiated.minor).as_bytes(),
        );
        self.max_write = negotiated.max_write;
        negotiated
    }

    /// Attaches a new `/dev/fuse` fd to the connection; returns its index.
    fn clone_device(&mut self) -> usize {
        let clone = rustix::fs::open(
            "/dev/fuse",
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .expect("opening /dev/fuse");
        let source = self.devices[MOUNT_FD].as_raw_fd() as u32;
        // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the source fd number)
        // through the pointer `Setter` passes, which points at `source` for
        // the duration of the call.
        unsafe {
            rustix::ioctl::ioctl(
                clone.as_fd(),
                rustix::ioctl::Setter::<FUSE_DEV_IOC_CLONE, u32>::new(source),
            )
        }
        .expect("FUSE_DEV_IOC_CLONE");
        self.devices.push(clone);
        self.devices.len() - 1
    }

    fn device(&self, index: usize) -> BorrowedFd<'_> {
        self.devices[index].as_fd()
    }

    /// Polls one device fd for input; returns the events seen (empty on timeout).
    fn poll(&self, index: usize, timeout: Duration) -> PollFlags {
        let timespec = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.devices[index], PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timespec)) {
            Ok(_) => fds[0].revents(),
            Err(Errno::INTR) => PollFlags::empty(),
            Err(err) => panic!("{}: poll on /dev/fuse: {err}", self.test),
        }
    }

    /// Waits until a request is queued, without taking it.
    fn wait_readable(&self, index: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while !self
            .poll(index, Duration::from_millis(50))
            .contains(PollFlags::IN)
        {
            assert!(
                Instant::now() < deadline,
                "{}: no request queued within {TIMEOUT:?}",
                self.test
            );
        }
    }

    /// One `read(2)` of `len` bytes.
    fn read_with_len(&self, index: usize, len: usize) -> Result<Frame, Errno> {
        let mut buf = vec![0u8; len];
        let n = rustix::io::read(self.device(index), &mut buf)?;
        buf.truncate(n);
        Ok(Frame::new(buf))
    }

    /// One `readv(2)` into buffers of the given lengths.
    fn readv_with_lens(&self, index: usize, lens: &[usize]) -> Result<Frame, Errno> {
        let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&len| vec![0u8; len]).collect();
        let mut slices: Vec<IoSliceMut<'_>> =
            bufs.iter_mut().map(|buf| IoSliceMut::new(buf)).collect();
        let n = rustix::io::readv(self.device(index), &mut slices)?;
        drop(slices);
        let mut bytes = bufs.concat();
        bytes.truncate(n);
        Ok(Frame::new(bytes))
    }

    /// The next request on a device fd, waiting at most [`TIMEOUT`].
    fn read_request(&self, index: usize) -> Frame {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.wait_readable(index);
            match self.read_with_len(index, min_read_len(self.max_write)) {
                Ok(frame) => return frame,
                Err(Errno::AGAIN | Errno::INTR) => assert!(
                    Instant::now() < deadline,
                    "{}: no request within {TIMEOUT:?}",
                    self.test
                ),
                Err(err) => panic!("{}: reading /dev/fuse: {err}", self.test),
            }
        }
    }

    /// The next request, which must have the given opcode.
    fn expect_request(&self, index: usize, opcode: Opcode) -> Frame {
        let frame = self.read_request(index);
        assert_eq!(
            frame.opcode(),
            opcode,
            "{}: expected {opcode:?}, the kernel sent {frame:?}",
            self.test
        );
        frame
    }

    /// The next request with the given opcode, answering the GETATTRs a
    /// permission check (`default_permissions`, expired attributes) sends first.
    fn expect_request_after_getattrs(&self, index: usize, opcode: Opcode) -> Frame {
        loop {
            let frame = self.read_request(index);
            if frame.opcode() == opcode || frame.opcode() != Opcode::GETATTR {
                assert_eq!(
                    frame.opcode(),
                    opcode,
                    "{}: expected {opcode:?}, the kernel sent {frame:?}",
                    self.test
                );
                return frame;
            }
            self.answer_default(index, &frame);
        }
    }

    /// One `write(2)` of a reply; the kernel's verdict.
    fn write_raw(&self, index: usize, bytes: &[u8]) -> Result<usize, Errno> {
        rustix::io::write(self.device(index), bytes)
    }

    /// Writes a reply the kernel must accept.
    fn reply(&self, index: usize, bytes: &[u8]) {
        assert_eq!(
            self.write_raw(index, bytes),
            Ok(bytes.len()),
            "{}: the kernel refused a well-formed reply",
            self.test
        );
    }

    /// Answers a request the way a working server would.
    fn answer_default(&self, index: usize, frame: &Frame) {
        if let Some(reply) = default_reply(frame) {
            self.reply(index, &reply);
        }
    }

    /// Answers requests with [`default_reply`] until the client finishes;
    /// returns its result and the opcodes answered, in order.
    fn serve_until_done<T: Send + 'static>(&self, client: &Client<T>) -> (T, Vec<Opcode>) {
        let deadline = Instant::now() + TIMEOUT;
        let mut answered = Vec::new();
        loop {
            if let Some(result) = client.try_result() {
                return (result, answered);
            }
            assert!(
                Instant::now() < deadline,
                "{}: the client is still blocked after {TIMEOUT:?}; answered so far: {answered:?}",
                self.test
            );
            if !self
                .poll(MOUNT_FD, Duration::from_millis(10))
                .contains(PollFlags::IN)
            {
                continue;
            }
            match self.read_with_len(MOUNT_FD, min_read_len(self.max_write)) {
                Ok(frame) => {
                    answered.push(frame.opcode());
                    self.answer_default(MOUNT_FD, &frame);
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(err) => panic!("{}: reading /dev/fuse: {err}", self.test),
            }
        }
    }

    fn unmount(&mut self) {
        self.mount
            .unmount()
            .unwrap_or_else(|err| panic!("{}: unmounting: {err}", self.test));
    }
}

/// The attributes of the probe's file.
fn file_attr_out() -> AttrOut {
    probe_attr_out(FILE_SIZE)
}

fn open_reply(unique: u64) -> Vec<u8> {
    let out = OpenOut {
        fh: FILE_HANDLE,
        open_flags: FOPEN_DIRECT_IO,
        ..OpenOut::default()
    };
    Reply::with(unique, &out).as_bytes().to_vec()
}

fn attr_reply(unique: u64) -> Vec<u8> {
    Reply::with(unique, &file_attr_out()).as_bytes().to_vec()
}

fn error_reply(unique: u64, errno: ReplyErrno) -> Vec<u8> {
    Reply::error(unique, errno).as_bytes().to_vec()
}

/// READ data: each byte is its file offset modulo 251, so shifts show.
fn data_reply(unique: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut bytes = Reply::data_header(unique, len).as_bytes().to_vec();
    bytes.extend((offset..offset + u64::from(len)).map(|pos| (pos % 251) as u8));
    bytes
}

/// What a working single-file server answers; `None` for requests that take
/// no reply (an INTERRUPT may go unanswered).
fn default_reply(frame: &Frame) -> Option<Vec<u8>> {
    let unique = frame.unique();
    Some(match frame.opcode() {
        Opcode::GETATTR => attr_reply(unique),
        Opcode::OPEN => open_reply(unique),
        Opcode::FLUSH | Opcode::RELEASE => Reply::empty(unique).as_bytes().to_vec(),
        Opcode::READ => {
            let read: ReadIn = frame.body();
            let len = read.size.min(FILE_SIZE.saturating_sub(read.offset) as u32);
            data_reply(unique, read.offset, len)
        }
        Opcode::WRITE => {
            let write: WriteIn = frame.body();
            let out = WriteOut {
                size: write.size,
                ..WriteOut::default()
            };
            Reply::with(unique, &out).as_bytes().to_vec()
        }
        Opcode::INTERRUPT | Opcode::FORGET | Opcode::BATCH_FORGET => return None,
        _ => error_reply(unique, ReplyErrno::ENOSYS),
    })
}

/// Overwrites `fuse_out_header.len`.
fn set_len(reply: &mut [u8], len: u32) {
    reply[..4].copy_from_slice(&len.to_ne_bytes());
}

/// Makes `fuse_out_header.len` agree with the bytes that will be written.
fn set_len_to_actual(reply: &mut [u8]) {
    let len = reply.len() as u32;
    set_len(reply, len);
}

fn open_file(path: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty())
}

/// The size the kernel has cached (`i_size`), without asking the server.
fn cached_size(path: &Path) -> Result<u64, Errno> {
    let stat = rustix::fs::statx(CWD, path, AtFlags::STATX_DONT_SYNC, StatxFlags::SIZE)?;
    Ok(stat.stx_size)
}

/// One `IORING_OP_READ` (an asynchronous kiocb, as AIO/io_uring clients
/// issue); returns the CQE result (bytes or a negative errno).
fn io_uring_read(file: &OwnedFd, len: u32, offset: u64) -> Result<i32, Errno> {
    let mut buf = vec![0u8; len as usize];
    let entry =
        io_uring::opcode::Read::new(io_uring::types::Fd(file.as_raw_fd()), buf.as_mut_ptr(), len)
            .offset(offset)
            .build();
    // SAFETY: `entry` reads into `buf` only, which is handed over with it.
    unsafe { io_uring_once(&entry, buf) }
}

/// Submits `entry` on a fresh ring and waits for its CQE; returns the CQE
/// result.
///
/// # Safety
///
/// Every buffer `entry` points to lies in `buffer`'s heap allocation.
unsafe fn io_uring_once(entry: &io_uring::squeue::Entry, buffer: Vec<u8>) -> Result<i32, Errno> {
    let mut ring =
        io_uring::IoUring::new(2).map_err(|err| Errno::from_io_error(&err).unwrap_or(Errno::IO))?;
    // SAFETY: `buffer` (whose allocation holds what `entry` points to, by
    // this function's contract) stays alive until the operation completes:
    // the loop below returns only after its CQE arrived, or leaks `buffer`
    // when waiting fails.
    unsafe { ring.submission().push(entry) }.expect("an empty submission queue has room");
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => break,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                std::mem::forget(buffer);
                return Err(Errno::from_io_error(&err).unwrap_or(Errno::IO));
            }
        }
    }
    let cqe = ring
        .completion()
        .next()
        .expect("submit_and_wait(1) returned a CQE");
    Ok(cqe.result())
}

#[test]
fn read_buffer_below_minimum_is_einval() {
    let Some(mut probe) = Probe::mount_uninitialised("read_buffer_below_minimum_is_einval") else {
        return;
    };
    // Before INIT, max_write is 0: the minimum is FUSE_MIN_READ_BUFFER.
    probe.wait_readable(MOUNT_FD);
    assert_eq!(
        probe.read_with_len(MOUNT_FD, 4096).err(),
        Some(Errno::INVAL)
    );
    assert_eq!(
        probe.read_with_len(MOUNT_FD, MIN_READ_BUFFER - 1).err(),
        Some(Errno::INVAL)
    );
    let init = probe
        .read_with_len(MOUNT_FD, MIN_READ_BUFFER)
        .expect("a read of exactly 8192 bytes takes INIT");
    assert_eq!(
        init.opcode(),
        Opcode::INIT,
        "the refused reads left INIT queued"
    );
    probe.answer_init(&init);

    // After INIT: max(8192, 80 + max_write), checked before a request is taken.
    let minimum = min_read_len(probe.max_write);
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || fresh_size(&path));
    probe.wait_readable(MOUNT_FD);
    if minimum > MIN_READ_BUFFER {
        assert_eq!(
            probe.read_with_len(MOUNT_FD, MIN_READ_BUFFER).err(),
            Some(Errno::INVAL)
        );
    }
    assert_eq!(
        probe.read_with_len(MOUNT_FD, minimum - 1).err(),
        Some(Errno::INVAL),
        "max_write {}: read of {} bytes",
        probe.max_write,
        minimum - 1
    );
    // fuse-export's read slot: header area + in-place page, then the
    // spill-over; the total of all iovecs is what counts.
    let slot = WRITE_HEADER_LEN + PAGE;
    assert_eq!(
        probe
            .readv_with_lens(MOUNT_FD, &[slot, minimum - 1 - slot])
            .err(),
        Some(Errno::INVAL)
    );
    let getattr = probe
        .readv_with_lens(MOUNT_FD, &[slot, minimum - slot])
        .expect("a readv totalling the minimum takes the request");
    assert_eq!(
        getattr.opcode(),
        Opcode::GETATTR,
        "the refused reads left GETATTR queued"
    );
    probe.answer_default(MOUNT_FD, &getattr);
    let (size, _) = probe.serve_until_done(&client);
    assert_eq!(size, Ok(FILE_SIZE));
}

#[test]
fn reply_on_other_clone_is_enoent() {
    let Some(mut probe) = Probe::start("reply_on_other_clone_is_enoent") else {
        return;
    };
    let clone = probe.clone_device();
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || (fresh_size(&path), fresh_size(&path)));

    // Read on the mount's fd, answered on the clone: refused, still pending.
    let first = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    let reply = attr_reply(first.unique());
    assert_eq!(probe.write_raw(clone, &reply), Err(Errno::NOENT));
    assert!(
        client.try_result().is_none(),
        "GETATTR must still be pending"
    );
    probe.reply(MOUNT_FD, &reply);

    // Read on the clone, answered on the mount's fd: the same.
    let second = probe.expect_request(clone, Opcode::GETATTR);
    let reply = attr_reply(second.unique());
    assert_eq!(probe.write_raw(MOUNT_FD, &reply), Err(Errno::NOENT));
    assert!(
        client.try_result().is_none(),
        "GETATTR must still be pending"
    );
    probe.reply(clone, &reply);

    let (sizes, _) = probe.serve_until_done(&client);
    assert_eq!(sizes, (Ok(FILE_SIZE), Ok(FILE_SIZE)));
}

#[test]
fn error_reply_with_payload_is_einval_and_client_gets_eio() {
    let Some(probe) = Probe::start("error_reply_with_payload_is_einval_and_client_gets_eio") else {
        return;
    };
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || fresh_size(&path));
    let getattr = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    let mut reply = error_reply(getattr.unique(), ReplyErrno::ENOENT);
    reply.extend_from_slice(&[0; 16]);
    set_len_to_actual(&mut reply);
    assert_eq!(probe.write_raw(MOUNT_FD, &reply), Err(Errno::INVAL));
    let (result, _) = probe.serve_until_done(&client);
    assert_eq!(
        result,
        Err(Errno::IO),
        "the kernel completes the request with EIO, not the error sent"
    );
    // The request is gone.
    assert_eq!(
        probe.write_raw(MOUNT_FD, &error_reply(getattr.unique(), ReplyErrno::ENOENT)),
        Err(Errno::NOENT)
    );
}

#[test]
fn reply_length_mismatch_is_einval() {
    let Some(probe) = Probe::start("reply_length_mismatch_is_einval") else {
        return;
    };
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || fresh_size(&path));
    let getattr = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    let reply = attr_reply(getattr.unique());
    for claimed in [reply.len() as u32 + 1, reply.len() as u32 - 1, 16] {
        let mut lying = reply.clone();
        set_len(&mut lying, claimed);
        assert_eq!(
            probe.write_raw(MOUNT_FD, &lying),
            Err(Errno::INVAL),
            "out_header.len {claimed} on a {}-byte write",
            reply.len()
        );
    }
    assert!(
        client.try_result().is_none(),
        "GETATTR must still be pending"
    );
    probe.reply(MOUNT_FD, &reply);
    let (result, _) = probe.serve_until_done(&client);
    assert_eq!(result, Ok(FILE_SIZE));
}

#[test]
fn struct_reply_of_wrong_size_is_einval_and_client_gets_eio() {
    let Some(probe) = Probe::start("struct_reply_of_wrong_size_is_einval_and_client_gets_eio")
    else {
        return;
    };
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || (fresh_size(&path), fresh_size(&path)));
    // Consistent len, but only 8 of fuse_attr_out's 104 bytes.
    let getattr = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    let mut short = attr_reply(getattr.unique());
    short.truncate(16 + 8);
    set_len_to_actual(&mut short);
    assert_eq!(probe.write_raw(MOUNT_FD, &short), Err(Errno::INVAL));
    // Consistent len, 8 bytes more than fuse_attr_out.
    let getattr = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    let mut long = attr_reply(getattr.unique());
    long.extend_from_slice(&[0; 8]);
    set_len_to_actual(&mut long);
    assert_eq!(probe.write_raw(MOUNT_FD, &long), Err(Errno::INVAL));
    let (result, _) = probe.serve_until_done(&client);
    assert_eq!(result, (Err(Errno::IO), Err(Errno::IO)));
}

#[test]
fn reply_error_out_of_range_is_einval() {
    let Some(probe) = Probe::start("reply_error_out_of_range_is_einval") else {
        return;
    };
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || fresh_size(&path));
    let getattr = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    for error in [5i32, -512, i32::MIN] {
        let mut reply = error_reply(getattr.unique(), ReplyErrno::EIO);
        reply[4..8].copy_from_slice(&error.to_ne_bytes());
        assert_eq!(
            probe.write_raw(MOUNT_FD, &reply),
            Err(Errno::INVAL),
            "out_header.error {error}"
        );
    }
    assert!(
        client.try_result().is_none(),
        "GETATTR must still be pending"
    );
    probe.reply(MOUNT_FD, &attr_reply(getattr.unique()));
    let (result, _) = probe.serve_until_done(&client);
    assert_eq!(result, Ok(FILE_SIZE));
}

#[test]
fn duplicate_reply_is_enoent() {
    let Some(probe) = Probe::start("duplicate_reply_is_enoent") else {
        return;
    };
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || fresh_size(&path));
    let getattr = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    let reply = attr_reply(getattr.unique());
    probe.reply(MOUNT_FD, &reply);
    assert_eq!(probe.write_raw(MOUNT_FD, &reply), Err(Errno::NOENT));
    let (result, _) = probe.serve_until_done(&client);
    assert_eq!(result, Ok(FILE_SIZE));
}

#[test]
fn reply_to_never_issued_unique_is_enoent() {
    let Some(probe) = Probe::start("reply_to_never_issued_unique_is_enoent") else {
        return;
    };
    // Even (a request id, not an interrupt) and far beyond any issued id.
    let unique = 0x7fff_0000_0000_0000;
    assert_eq!(
        probe.write_raw(MOUNT_FD, &attr_reply(unique)),
        Err(Errno::NOENT)
    );
    assert_eq!(
        probe.write_raw(MOUNT_FD, &error_reply(unique, ReplyErrno::EIO)),
        Err(Errno::NOENT)
    );
}

#[test]
fn unmount_is_seen_as_enodev() {
    let Some(mut probe) = Probe::start("unmount_is_seen_as_enodev") else {
        return;
    };
    let clone = probe.clone_device();
    probe.unmount();
    for index in [MOUNT_FD, clone] {
        let events = probe.poll(index, TIMEOUT);
        assert!(
            events.contains(PollFlags::ERR),
            "device fd {index}: poll after unmount gave {events:?}, not POLLERR"
        );
        assert_eq!(
            probe
                .read_with_len(index, min_read_len(probe.max_write))
                .err(),
            Some(Errno::NODEV),
            "device fd {index}: read after unmount"
        );
        // Late replies (requests in flight at unmount) find nothing.
        assert_eq!(
            probe.write_raw(index, &error_reply(2, ReplyErrno::EIO)),
            Err(Errno::NOENT),
            "device fd {index}: reply after unmount"
        );
    }
}

#[test]
fn size_is_zero_until_getattr() {
    let Some(probe) = Probe::start("size_is_zero_until_getattr") else {
        return;
    };
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || {
        let before = cached_size(&path)?;
        let fresh = fresh_size(&path)?;
        let after = cached_size(&path)?;
        Ok::<_, Errno>((before, fresh, after))
    });
    let (sizes, answered) = probe.serve_until_done(&client);
    let (before, fresh, after) = sizes.expect("the client's statx calls");
    assert_eq!(before, 0, "i_size after mount and INIT, before any GETATTR");
    assert_eq!(fresh, FILE_SIZE);
    assert_eq!(after, FILE_SIZE, "i_size once a GETATTR answered");
    assert_eq!(
        answered,
        [Opcode::GETATTR],
        "only the forced stat asks the server"
    );
}

#[test]
fn io_uring_read_at_size_is_eof_without_request() {
    let Some(probe) = Probe::start("io_uring_read_at_size_is_eof_without_request") else {
        return;
    };
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || {
        let size = fresh_size(&path)?;
        let file = open_file(&path, OFlags::RDONLY)?;
        assert_eq!(size, FILE_SIZE);
        let at_size = io_uring_read(&file, PAGE as u32, FILE_SIZE)?;
        let inside = io_uring_read(&file, PAGE as u32, FILE_SIZE - PAGE as u64)?;
        Ok::<_, Errno>((at_size, inside))
    });
    let (results, answered) = probe.serve_until_done(&client);
    let (at_size, inside) = results.expect("the client's syscalls");
    assert_eq!(
        at_size, 0,
        "io_uring read at offset == i_size on a FOPEN_DIRECT_IO open"
    );
    assert_eq!(inside, PAGE as i32, "io_uring read of the last page");
    let reads = answered.iter().filter(|&&op| op == Opcode::READ).count();
    assert_eq!(
        reads, 1,
        "only the read inside the file reaches the server ({answered:?})"
    );
}

#[test]
fn open_under_default_permissions_sends_getattr_first() {
    let Some(probe) = Probe::start("open_under_default_permissions_sends_getattr_first") else {
        return;
    };
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || {
        let file = open_file(&path, OFlags::RDONLY)?;
        let size = cached_size(&path)?;
        drop(file);
        Ok::<_, Errno>(size)
    });
    let (size, answered) = probe.serve_until_done(&client);
    assert_eq!(
        &answered[..2],
        &[Opcode::GETATTR, Opcode::OPEN],
        "the permission check refreshes the root's expired attributes before OPEN"
    );
    assert_eq!(size, Ok(FILE_SIZE), "so the first open learns i_size");
}

#[test]
fn statx_falls_back_to_getattr_after_enosys() {
    let Some(probe) = Probe::start("statx_falls_back_to_getattr_after_enosys") else {
        return;
    };
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || {
        // Asking for a field beyond the basic ones makes the kernel use STATX.
        let mask = StatxFlags::BASIC_STATS | StatxFlags::BTIME;
        let first = rustix::fs::statx(CWD, &path, AtFlags::STATX_FORCE_SYNC, mask)?;
        let second = rustix::fs::statx(CWD, &path, AtFlags::STATX_FORCE_SYNC, mask)?;
        Ok::<_, Errno>([
            (first.stx_size, first.stx_mask),
            (second.stx_size, second.stx_mask),
        ])
    });
    let statx = probe.expect_request(MOUNT_FD, Opcode::STATX);
    probe.reply(MOUNT_FD, &error_reply(statx.unique(), ReplyErrno::ENOSYS));
    let fallback = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    probe.reply(MOUNT_FD, &attr_reply(fallback.unique()));
    // ENOSYS is sticky: the next forced statx goes straight to GETATTR.
    let again = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    probe.reply(MOUNT_FD, &attr_reply(again.unique()));
    let (result, _) = probe.serve_until_done(&client);
    for (size, mask) in result.expect("both statx calls succeed") {
        assert_eq!(size, FILE_SIZE);
        assert_eq!(
            mask & StatxFlags::BTIME.bits(),
            0,
            "no btime without STATX (mask {mask:#x})"
        );
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs a no-op SIGUSR1 handler: the signal then interrupts a blocked
/// syscall (making the kernel send FUSE_INTERRUPT) without killing anyone.
fn install_sigusr1_handler() {
    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: `action` is initialised and names a handler that does nothing
    // (async-signal-safe); the old action is not wanted.
    let rc = unsafe { libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "sigaction(SIGUSR1)");
}

/// `YYYY-MM-DD` (UTC) of now.
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    // Howard Hinnant's civil_from_days.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Writes one frame as `<dir>/<name>.hex`: a header comment line, a line
/// describing the frame, then 16 hex bytes per line.
fn write_fixture(dir: &Path, name: &str, syscall: &str, frame: &Frame) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mut text = format!("# captured from Linux {release}, {syscall}, {}\n", today());
    text.push_str(&format!(
        "# FUSE_{:?} (opcode {}), {} bytes, unique {:#x}, nodeid {}, uid {}, gid {}, pid {}; \
         hex bytes in wire order, whitespace-insensitive, '#' lines are comments\n",
        frame.opcode(),
        frame.header.opcode,
        frame.bytes.len(),
        frame.unique(),
        frame.header.nodeid,
        frame.header.uid,
        frame.header.gid,
        frame.header.pid,
    ));
    for chunk in frame.bytes.chunks(16) {
        let line: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&line.join(" "));
        text.push('\n');
    }
    let path = dir.join(format!("{name}.hex"));
    fs::write(&path, text).unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
    eprintln!("captured {frame:?} into {}", path.display());
}

/// Records real request frames for fuse-proto's golden tests.
#[test]
#[ignore = "writes crates/fuse-proto/tests/fixtures/captured/*.hex; run explicitly as root"]
fn capture_golden_frames() {
    let Some(mut probe) = Probe::mount_uninitialised("capture_golden_frames") else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuse-proto/tests/fixtures/captured");
    fs::create_dir_all(&dir).expect("creating the fixture directory");

    let init = probe.expect_request(MOUNT_FD, Opcode::INIT);
    write_fixture(
        &dir,
        "init",
        "mount(2) type fuse.fuse-export on a regular file (rootmode=100000)",
        &init,
    );
    probe.answer_init(&init);

    install_sigusr1_handler();
    let path = probe.mountpoint.clone();
    let client = Client::spawn(move || {
        let file = open_file(&path, OFlags::RDWR)?;
        let mask = StatxFlags::BASIC_STATS | StatxFlags::BTIME;
        rustix::fs::statx(&file, "", AtFlags::EMPTY_PATH, mask)?;
        let mut page = vec![0u8; PAGE];
        rustix::io::pread(&file, &mut page, PAGE as u64)?;
        let data: Vec<u8> = (0..PAGE).map(|i| (i % 251) as u8).collect();
        rustix::io::pwrite(&file, &data, 2 * PAGE as u64)?;
        let mut value = [0u8; 64];
        let xattr = rustix::fs::getxattr(&path, "user.fuse-export", &mut value);
        assert_eq!(xattr, Err(Errno::NODATA));
        // Interrupted by SIGUSR1 while the server holds the READ.
        let interrupted = rustix::io::pread(&file, &mut page, 0)?;
        drop(file);
        Ok::<_, Errno>(interrupted)
    });

    // default_permissions: the open's permission check refreshes the
    // root's (expired) attributes first.
    let open = probe.expect_request_after_getattrs(MOUNT_FD, Opcode::OPEN);
    write_fixture(&dir, "open", "open(O_RDWR)", &open);
    probe.answer_default(MOUNT_FD, &open);

    let statx = probe.expect_request(MOUNT_FD, Opcode::STATX);
    write_fixture(
        &dir,
        "statx",
        "statx(fd, \"\", AT_EMPTY_PATH, STATX_BASIC_STATS|STATX_BTIME)",
        &statx,
    );
    probe.reply(MOUNT_FD, &error_reply(statx.unique(), ReplyErrno::ENOSYS));

    let getattr = probe.expect_request(MOUNT_FD, Opcode::GETATTR);
    write_fixture(
        &dir,
        "getattr",
        "statx(fd, \"\", AT_EMPTY_PATH, STATX_BASIC_STATS|STATX_BTIME) after STATX got ENOSYS",
        &getattr,
    );
    probe.answer_default(MOUNT_FD, &getattr);

    let read = probe.expect_request(MOUNT_FD, Opcode::READ);
    write_fixture(
        &dir,
        "read",
        "pread(fd, 4096 bytes, offset 4096) on a FOPEN_DIRECT_IO open",
        &read,
    );
    probe.answer_default(MOUNT_FD, &read);

    let write = probe.expect_request(MOUNT_FD, Opcode::WRITE);
    write_fixture(
        &dir,
        "write",
        "pwrite(fd, 4096 bytes of i%251, offset 8192) on a FOPEN_DIRECT_IO open",
        &write,
    );
    probe.answer_default(MOUNT_FD, &write);

    // getxattr(2) checks read permission: GETATTR first, as for open.
    let getxattr = probe.expect_request_after_getattrs(MOUNT_FD, Opcode::GETXATTR);
    write_fixture(
        &dir,
        "getxattr",
        "getxattr(path, \"user.fuse-export\", 64-byte buffer)",
        &getxattr,
    );
    probe.reply(
        MOUNT_FD,
        &error_reply(getxattr.unique(), ReplyErrno::ENODATA),
    );

    let held = probe.expect_request(MOUNT_FD, Opcode::READ);
    // SAFETY: the client thread is alive (it is blocked in pread waiting for
    // this READ), and SIGUSR1 has a no-op handler installed above.
    let rc = unsafe { libc::pthread_kill(client.pthread(), libc::SIGUSR1) };
    assert_eq!(rc, 0, "pthread_kill(SIGUSR1)");
    let interrupt = probe.expect_request(MOUNT_FD, Opcode::INTERRUPT);
    assert_eq!(interrupt.unique(), held.unique() | 1);
    write_fixture(
        &dir,
        "interrupt",
        "SIGUSR1 (no-op handler) to a thread blocked in pread(fd, 4096 bytes, offset 0)",
        &interrupt,
    );
    probe.answer_default(MOUNT_FD, &held);

    let flush = probe.expect_request(MOUNT_FD, Opcode::FLUSH);
    write_fixture(&dir, "flush", "close(fd)", &flush);
    probe.answer_default(MOUNT_FD, &flush);

    let release = probe.expect_request(MOUNT_FD, Opcode::RELEASE);
    write_fixture(&dir, "release", "close(fd), last reference", &release);
    probe.answer_default(MOUNT_FD, &release);

    let (result, _) = probe.serve_until_done(&client);
    assert_eq!(result, Ok(PAGE), "the interrupted pread still completes");
}

// ---------------------------------------------------------------------------
// Synchronous writes: what the kernel tells the server about O_DSYNC/O_SYNC

/// `O_DSYNC` (rustix's `OFlags::DSYNC` is `O_SYNC` on Linux).
const O_DSYNC: OFlags = OFlags::from_bits_retain(libc::O_DSYNC as u32);
/// `FOPEN_PASSTHROUGH`.
const FOPEN_PASSTHROUGH: u32 = 1 << 7;
/// `FUSE_FSYNC_FDATASYNC`.
const FSYNC_FDATASYNC: u32 = 1;

/// A client's way of writing one page at offset 0 (then closing the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageWrite {
    /// `pwritev2(flags)` on a file opened with `open_flags`.
    Sync {
        open_flags: OFlags,
        write_flags: rustix::io::ReadWriteFlags,
    },
    /// `IORING_OP_WRITE` with `rw_flags` on a file opened with `open_flags`
    /// (an asynchronous kiocb, as AIO and io_uring clients issue).
    Async {
        open_flags: OFlags,
        rw_flags: rustix::io::ReadWriteFlags,
    },
    /// `pwrite`, then `fsync` (or `fdatasync` when `datasync`).
    ThenSync { datasync: bool },
}

impl PageWrite {
    fn open_flags(self) -> OFlags {
        match self {
            PageWrite::Sync { open_flags, .. } | PageWrite::Async { open_flags, .. } => open_flags,
            PageWrite::ThenSync { .. } => OFlags::RDWR,
        }
    }

    /// Runs the client's syscalls; the page is 4 KiB aligned (O_DIRECT).
    fn run(self, path: &Path) -> Result<(), Errno> {
        let storage = vec![PAGE_FILL; 2 * PAGE];
        let page = &storage[storage.as_ptr().align_offset(PAGE)..][..PAGE];
        let file = open_file(path, self.open_flags())?;
        match self {
            PageWrite::Sync { write_flags, .. } => {
                let written =
                    rustix::io::pwritev2(&file, &[std::io::IoSlice::new(page)], 0, write_flags)?;
                assert_eq!(written, PAGE, "{self:?}: short write");
            }
            PageWrite::Async { rw_flags, .. } => {
                let written = io_uring_write(&file, rw_flags)?;
                assert_eq!(written, PAGE as i32, "{self:?}: io_uring write");
            }
            PageWrite::ThenSync { datasync } => {
                assert_eq!(rustix::io::pwrite(&file, page, 0)?, PAGE);
                if datasync {
                    rustix::fs::fdatasync(&file)?;
                } else {
                    rustix::fs::fsync(&file)?;
                }
            }
        }
        drop(file);
        Ok(())
    }
}

/// The byte every probe page write writes.
const PAGE_FILL: u8 = 0x5a;

/// One `IORING_OP_WRITE` of a 4 KiB-aligned page of [`PAGE_FILL`] at offset
/// 0 with `rw_flags`; returns the CQE result.
fn io_uring_write(file: &OwnedFd, rw_flags: rustix::io::ReadWriteFlags) -> Result<i32, Errno> {
    let storage = vec![PAGE_FILL; 2 * PAGE];
    let page = &storage[storage.as_ptr().align_offset(PAGE)..][..PAGE];
    let entry = io_uring::opcode::Write::new(
        io_uring::types::Fd(file.as_raw_fd()),
        page.as_ptr(),
        PAGE as u32,
    )
    .offset(0)
    .rw_flags(rw_flags.bits() as i32)
    .build();
    // SAFETY: `entry` writes from `page`, inside `storage`, which is handed
    // over with it.
    unsafe { io_uring_once(&entry, storage) }
}

/// What reached the server for one [`PageWrite`]: the `fuse_write_in.flags`
/// of each WRITE and the `fsync_flags` of each FSYNC, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SyncRequest {
    Write { flags: u32 },
    Fsync { fsync_flags: u32 },
    Flush,
}

impl Probe {
    /// Serves until `client` finishes, answering OPEN with `open_out` and
    /// FSYNC with success (a working server's answers otherwise); returns
    /// the WRITE, FSYNC and FLUSH requests seen, in order.
    fn serve_sync_requests(
        &self,
        client: &Client<Result<(), Errno>>,
        open_out: OpenOut,
    ) -> Vec<SyncRequest> {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            if let Some(result) = client.try_result() {
                result.unwrap_or_else(|err| panic!("{}: the client failed: {err}", self.test));
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the client is still blocked after {TIMEOUT:?}; seen so far: {seen:?}",
                self.test
            );
            if !self
                .poll(MOUNT_FD, Duration::from_millis(10))
                .contains(PollFlags::IN)
            {
                continue;
            }
            let frame = match self.read_with_len(MOUNT_FD, min_read_len(self.max_write)) {
                Ok(frame) => frame,
                Err(Errno::AGAIN | Errno::INTR) => continue,
                Err(err) => panic!("{}: reading /dev/fuse: {err}", self.test),
            };
            let unique = frame.unique();
            match frame.opcode() {
                Opcode::OPEN => self.reply(MOUNT_FD, Reply::with(unique, &open_out).as_bytes()),
                Opcode::FSYNC => {
                    let fsync: fuse_proto::abi::FsyncIn = frame.body();
                    seen.push(SyncRequest::Fsync {
                        fsync_flags: fsync.fsync_flags,
                    });
                    self.reply(MOUNT_FD, Reply::empty(unique).as_bytes());
                }
                opcode => {
                    if opcode == Opcode::WRITE {
                        let write: WriteIn = frame.body();
                        seen.push(SyncRequest::Write { flags: write.flags });
                    } else if opcode == Opcode::FLUSH {
                        seen.push(SyncRequest::Flush);
                    }
                    self.answer_default(MOUNT_FD, &frame);
                }
            }
        }
    }

    /// Runs `write` in a client and returns what reached the server.
    fn sync_requests_of(&self, write: PageWrite, open_out: OpenOut) -> Vec<SyncRequest> {
        let path = self.mountpoint.clone();
        let client = Client::spawn(move || write.run(&path));
        self.serve_sync_requests(&client, open_out)
    }
}

/// `fuse_write_in.flags` for a file opened with `open_flags` and written
/// with `extra` added by the kernel (`O_LARGEFILE` is always there on
/// 64-bit).
fn forwarded_flags(open_flags: OFlags, extra: OFlags) -> u32 {
    (open_flags | extra | OFlags::LARGEFILE).bits()
}

fn write_flags_name(flags: u32) -> String {
    let flags = OFlags::from_bits_retain(flags);
    format!("{flags:?}")
}

#[track_caller]
fn assert_sync_requests(what: PageWrite, seen: &[SyncRequest], expected: &[SyncRequest]) {
    let names = |requests: &[SyncRequest]| -> Vec<String> {
        requests
            .iter()
            .map(|request| match request {
                SyncRequest::Write { flags } => format!("WRITE({})", write_flags_name(*flags)),
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(
        seen,
        expected,
        "{what:?}: the kernel sent {:?}, expected {:?}",
        names(seen),
        names(expected)
    );
}

const RWF_NONE: rustix::io::ReadWriteFlags = rustix::io::ReadWriteFlags::empty();
const RWF_DSYNC: rustix::io::ReadWriteFlags = rustix::io::ReadWriteFlags::DSYNC;
const RWF_SYNC: rustix::io::ReadWriteFlags = rustix::io::ReadWriteFlags::SYNC;

/// On a `FOPEN_DIRECT_IO` open (fuse-export's answer to every open by
/// default) the kernel forwards `O_DSYNC`/`O_SYNC`, from the open or from
/// `RWF_DSYNC`/`RWF_SYNC`, in the WRITE's `flags` and sends nothing else:
/// no FSYNC follows, so the server alone makes the write durable before it
/// answers. `fsync`/`fdatasync` arrive as FSYNC (`fsync_flags` 0 / 1), and
/// `close` as FLUSH.
#[test]
fn sync_writes_on_direct_io_opens_carry_their_flags_and_nothing_else() {
    let Some(probe) =
        Probe::start("sync_writes_on_direct_io_opens_carry_their_flags_and_nothing_else")
    else {
        return;
    };
    let direct_io = OpenOut {
        fh: FILE_HANDLE,
        open_flags: FOPEN_DIRECT_IO,
        ..OpenOut::default()
    };
    let rdwr = OFlags::RDWR;
    let write = |open_flags: OFlags, write_flags| PageWrite::Sync {
        open_flags,
        write_flags,
    };
    let cases = [
        (write(rdwr, RWF_NONE), OFlags::empty()),
        (write(rdwr | O_DSYNC, RWF_NONE), OFlags::empty()),
        (write(rdwr | OFlags::SYNC, RWF_NONE), OFlags::empty()),
        (write(rdwr, RWF_DSYNC), O_DSYNC),
        (write(rdwr, RWF_SYNC), OFlags::SYNC),
        (write(rdwr | OFlags::DIRECT, RWF_DSYNC), O_DSYNC),
        (
            PageWrite::Async {
                open_flags: rdwr | OFlags::DIRECT,
                rw_flags: RWF_DSYNC,
            },
            O_DSYNC,
        ),
    ];
    for (page_write, extra) in cases {
        let seen = probe.sync_requests_of(page_write, direct_io);
        let flags = forwarded_flags(page_write.open_flags(), extra);
        assert_sync_requests(
            page_write,
            &seen,
            &[SyncRequest::Write { flags }, SyncRequest::Flush],
        );
    }
    for datasync in [false, true] {
        let page_write = PageWrite::ThenSync { datasync };
        let seen = probe.sync_requests_of(page_write, direct_io);
        assert_sync_requests(
            page_write,
            &seen,
            &[
                SyncRequest::Write {
                    flags: forwarded_flags(OFlags::RDWR, OFlags::empty()),
                },
                SyncRequest::Fsync {
                    fsync_flags: if datasync { FSYNC_FDATASYNC } else { 0 },
                },
                SyncRequest::Flush,
            ],
        );
    }
}

/// On an open without `FOPEN_DIRECT_IO` (what `--o-direct-opens
/// parallel-chunks` answers an O_DIRECT open with) the kernel also forwards
/// the flags, and after a synchronous call it sends an FSYNC of its own
/// (`generic_write_sync`: `fsync_flags` 1 for O_DSYNC, 0 for O_SYNC). An
/// asynchronous (io_uring/AIO) O_DIRECT write gets no FSYNC: there the
/// WRITE's flags are all the server learns.
#[test]
fn sync_writes_on_cached_opens_are_followed_by_fsync_unless_asynchronous() {
    let Some(probe) =
        Probe::start("sync_writes_on_cached_opens_are_followed_by_fsync_unless_asynchronous")
    else {
        return;
    };
    let cached = OpenOut {
        fh: FILE_HANDLE,
        open_flags: 0,
        ..OpenOut::default()
    };
    let direct = OFlags::RDWR | OFlags::DIRECT;
    let write = |open_flags: OFlags, write_flags| PageWrite::Sync {
        open_flags,
        write_flags,
    };
    let datasync = Some(FSYNC_FDATASYNC);
    let cases = [
        (write(direct, RWF_NONE), OFlags::empty(), None),
        (write(direct, RWF_DSYNC), O_DSYNC, datasync),
        (write(direct, RWF_SYNC), OFlags::SYNC, Some(0)),
        (write(direct | O_DSYNC, RWF_NONE), OFlags::empty(), datasync),
        // Buffered writes on a cached open (fuse_perform_write) too.
        (
            write(OFlags::RDWR | O_DSYNC, RWF_NONE),
            OFlags::empty(),
            datasync,
        ),
        (
            PageWrite::Async {
                open_flags: direct,
                rw_flags: RWF_DSYNC,
            },
            O_DSYNC,
            None,
        ),
    ];
    for (page_write, extra, fsync) in cases {
        let seen = probe.sync_requests_of(page_write, cached);
        let mut expected = vec![SyncRequest::Write {
            flags: forwarded_flags(page_write.open_flags(), extra),
        }];
        if let Some(fsync_flags) = fsync {
            expected.push(SyncRequest::Fsync { fsync_flags });
        }
        expected.push(SyncRequest::Flush);
        assert_sync_requests(page_write, &seen, &expected);
    }
}

/// `FUSE_DEV_IOC_BACKING_OPEN`: registers `file` as a passthrough backing
/// file of the connection on `device`; returns the backing id.
fn backing_open(device: BorrowedFd<'_>, file: BorrowedFd<'_>) -> Result<i32, Errno> {
    let map = fuse_proto::abi::BackingMap {
        fd: file.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: BACKING_OPEN reads one `fuse_backing_map` through its
    // argument, which points at `map`, alive and initialised for the whole
    // call; the kernel writes nothing through it. The result is the
    // ioctl's return value.
    let id = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            fuse_proto::ioctl::DEV_IOC_BACKING_OPEN as _,
            &raw const map,
        )
    };
    if id < 0 {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
    } else {
        Ok(id)
    }
}

/// On a passthrough open the kernel writes the backing file itself, with
/// the client's own flags: an O_DSYNC or RWF_DSYNC write reaches the server
/// neither as WRITE nor as FSYNC (the backing file's write syncs it, which
/// `tests/durability.rs` measures). `fsync`/`fdatasync` still arrive as
/// FSYNC, and `close` as FLUSH.
#[test]
fn sync_writes_on_passthrough_opens_never_reach_the_server() {
    let test = "sync_writes_on_passthrough_opens_never_reach_the_server";
    let Some(mut probe) = Probe::mount_uninitialised(test) else {
        return;
    };
    let init = probe.expect_request(MOUNT_FD, Opcode::INIT);
    let negotiated = probe.answer_init_with(&init, true);
    if !negotiated.flags.contains(InitFlags::PASSTHROUGH) {
        report_skip(test, "the kernel does not offer FUSE_PASSTHROUGH");
        return;
    }
    let backing_path = probe._dir.0.join("backing");
    fs::write(&backing_path, vec![0u8; FILE_SIZE as usize]).expect("creating the backing file");
    let backing = open_file(&backing_path, OFlags::RDWR).expect("opening the backing file");
    let backing_id = backing_open(probe.device(MOUNT_FD), backing.as_fd())
        .unwrap_or_else(|err| panic!("{test}: FUSE_DEV_IOC_BACKING_OPEN: {err}"));
    let passthrough = OpenOut {
        fh: FILE_HANDLE,
        open_flags: FOPEN_PASSTHROUGH,
        backing_id,
    };
    let write = |open_flags: OFlags, write_flags| PageWrite::Sync {
        open_flags,
        write_flags,
    };
    for page_write in [
        write(OFlags::RDWR | O_DSYNC, RWF_NONE),
        write(OFlags::RDWR, RWF_DSYNC),
        write(OFlags::RDWR | OFlags::SYNC, RWF_NONE),
    ] {
        let seen = probe.sync_requests_of(page_write, passthrough);
        assert_sync_requests(page_write, &seen, &[SyncRequest::Flush]);
    }
    for datasync in [false, true] {
        let page_write = PageWrite::ThenSync { datasync };
        let seen = probe.sync_requests_of(page_write, passthrough);
        assert_sync_requests(
            page_write,
            &seen,
            &[
                SyncRequest::Fsync {
                    fsync_flags: if datasync { FSYNC_FDATASYNC } else { 0 },
                },
                SyncRequest::Flush,
            ],
        );
    }
    let mut page = vec![0u8; PAGE];
    rustix::io::pread(&backing, &mut page, 0).expect("reading the backing file");
    assert!(
        page.iter().all(|&byte| byte == PAGE_FILL),
        "the passthrough writes landed in the backing file"
    );
}
