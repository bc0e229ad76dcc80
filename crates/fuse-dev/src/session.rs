//! A FUSE session: mount, INIT, the queue threads, and an orderly end.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use fuse_proto::abi::BackingMap;
use rustix::fs::{Mode, OFlags};

use crate::config::{QueueConfig, QueueReport, QueueSetup, RingQueueOptions};
use crate::handler::{Handler, Waker};
use crate::init::{InitRequest, Negotiated, handshake};
use crate::mount::{Mount, MountOptions, mount};
use crate::readv::run_queue;
use crate::uring::queue::{UringEnding, UringSetup, run_uring_queue};

/// `FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t)`: attaches a fresh
/// `/dev/fuse` fd to the connection of the fd whose number it is given.
const FUSE_DEV_IOC_CLONE: rustix::ioctl::Opcode = fuse_proto::ioctl::DEV_IOC_CLONE;

/// A mounted, initialised connection whose queues have not started yet.
#[derive(Debug)]
pub struct Session {
    device: OwnedFd,
    mount: Mount,
    negotiated: Negotiated,
    stat_path: PathBuf,
}

/// What each queue's handler factory is told.
#[derive(Debug, Clone)]
pub struct QueueContext {
    /// This queue's index.
    pub index: usize,
    /// Wakers of every queue, by index (for cross-queue wake-ups).
    pub wakers: Arc<[Waker]>,
    /// Requests this queue may hold at once (the size of its job table): a
    /// per-request table sized by it at start never grows while serving,
    /// whenever the first request that needs it comes.
    pub max_requests: usize,
}

impl Session {
    /// Opens `/dev/fuse`, mounts, and completes INIT.
    pub fn mount(options: &MountOptions, init: &InitRequest) -> io::Result<Session> {
        let (device, mut mount) = mount(options)?;
        match handshake(&device, init) {
            Ok(negotiated) => Ok(Session {
                device,
                mount,
                negotiated,
                stat_path: options.mountpoint.clone(),
            }),
            Err(err) => {
                drop(device);
                let _ = mount.unmount();
                Err(err)
            }
        }
    }

    /// What INIT settled.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Registers `file` as a passthrough backing file and returns its
    /// `backing_id` for `fuse_open_out` (`FOPEN_PASSTHROUGH`). Needs
    /// `FUSE_PASSTHROUGH` from INIT and CAP_SYS_ADMIN.
    pub fn open_backing(&self, file: BorrowedFd<'_>) -> io::Result<i32> {
        if !self
            .negotiated
            .flags
            .contains(fuse_proto::flags::InitFlags::PASSTHROUGH)
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel did not grant FUSE_PASSTHROUGH",
            ));
        }
        let map = BackingOpen(BackingMap {
            fd: file.as_raw_fd(),
            flags: 0,
            padding: 0,
        });
        // SAFETY: BACKING_OPEN reads one `fuse_backing_map` through the
        // pointer `BackingOpen::as_ptr` returns, which points at `map` for
        // the duration of the call; the result is the ioctl's return value.
        unsafe { rustix::ioctl::ioctl(self.device.as_fd(), map) }
            .map_err(|err| io::Error::new(err.kind(), format!("FUSE_DEV_IOC_BACKING_OPEN: {err}")))
    }

    /// The path to `stat` once queues run so that the kernel learns the
    /// file's size (defaults to the mountpoint).
    pub fn set_stat_path(&mut self, path: PathBuf) {
        self.stat_path = path;
    }

    /// Starts `queues` queue threads (queue 0 on the mount's fd, the others on
    /// clones), each with a handler built by `factory`, then stats the file
    /// so the kernel knows its size before any client asks (see
    /// [`Running::export_answered`] for how that went).
    pub fn start<H, F>(
        self,
        queues: usize,
        config: QueueConfig,
        backing: Vec<RawFd>,
        factory: F,
    ) -> io::Result<Running>
    where
        H: Handler,
        F: Fn(QueueContext) -> H + Send + Sync + 'static,
    {
        let Session {
            device,
            mount,
            stat_path,
            ..
        } = self;
        let queues = queues.max(1);
        let mut fds = Vec::with_capacity(queues);
        for _ in 1..queues {
            fds.push(clone_device(&device)?);
        }
        fds.insert(0, device);
        let mut running = Running {
            queues: serve_readv_fds(fds, config, backing, factory)?,
            mount,
            rings: None,
            export_stat: None,
        };
        running.stat_after_start(&stat_path);
        Ok(running)
    }
}

impl Session {
    /// Starts the FUSE-over-io_uring transport: one ring queue per possible
    /// CPU (the kernel's count), each a thread pinned to its CPU with
    /// `ring.depth` entries on its own clone of the device, plus one `readv`
    /// queue on the mount's fd for what the kernel still sends there
    /// (INTERRUPT, FORGET). Needs `FUSE_OVER_IO_URING` granted at INIT.
    /// Then stats the file, like [`Session::start`] (the kernel holds every
    /// request back until each ring queue has registered its entries).
    pub fn start_uring<H, F>(
        self,
        ring: RingQueueOptions,
        config: QueueConfig,
        backing: Vec<RawFd>,
        factory: F,
    ) -> io::Result<Running>
    where
        H: Handler,
        F: Fn(QueueContext) -> H + Send + Sync + 'static,
    {
        if !self.negotiated.uring_granted() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel did not grant FUSE_OVER_IO_URING at INIT",
            ));
        }
        let ring_queues = crate::uring::cpus::possible_cpus()?;
        let payload_len = crate::uring::payload_len(&self.negotiated);
        let ring = RingQueueOptions {
            depth: ring.depth.max(1),
            wait_batch: ring.wait_batch.max(1),
            ..ring
        };
        let Session {
            device,
            mount,
            stat_path,
            ..
        } = self;
        let (quiet, quiet_rx) = crossbeam_channel::unbounded();
        let ending = Arc::new(UringEnding::new(quiet));
        let wakers = new_wakers(ring_queues + 1)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut runs = Vec::with_capacity(ring_queues + 1);
        for index in 0..ring_queues {
            let qid = u16::try_from(index).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "too many possible CPUs")
            })?;
            runs.push(QueueRun::Uring(UringSetup {
                index,
                qid,
                fuse_fd: clone_device(&device)?,
                backing: backing.clone(),
                config: config.clone(),
                ring,
                payload_len,
                waker: wakers[index].clone(),
                stop: stop.clone(),
                ending: ending.clone(),
                fake_device: false,
            }));
        }
        runs.push(QueueRun::Readv(QueueSetup {
            index: ring_queues,
            fuse_fd: device,
            backing,
            config,
            waker: wakers[ring_queues].clone(),
            stop: stop.clone(),
            load: None,
        }));
        let mut running = Running {
            queues: spawn_queues(runs, wakers, stop, factory)?,
            mount,
            rings: Some(RingShutdown {
                quiet: quiet_rx,
                queues: ring_queues,
                ending,
            }),
            export_stat: None,
        };
        running.stat_after_start(&stat_path);
        Ok(running)
    }
}

/// What one queue thread runs.
enum QueueRun {
    /// A `readv` queue.
    Readv(QueueSetup),
    /// A FUSE-over-io_uring ring queue.
    Uring(UringSetup),
}

impl QueueRun {
    fn index(&self) -> usize {
        match self {
            QueueRun::Readv(setup) => setup.index,
            QueueRun::Uring(setup) => setup.index,
        }
    }

    fn max_requests(&self) -> usize {
        match self {
            QueueRun::Readv(setup) => setup.config.max_in_flight,
            QueueRun::Uring(setup) => crate::uring::queue::job_capacity(setup.ring.depth),
        }
    }
}

fn new_wakers(count: usize) -> io::Result<Arc<[Waker]>> {
    Ok((0..count)
        .map(|_| Waker::new())
        .collect::<io::Result<Vec<_>>>()?
        .into())
}

/// Runs one queue thread per fd, each with a handler built by `factory`,
/// each fd its own source of requests: what tests use with fake devices
/// (one end of a `SOCK_SEQPACKET` socketpair per queue, see [`serve_fd`]).
/// Every queue reads (`config.standby` is for clones of one connection,
/// which share the kernel's input queue). A queue that fails or panics
/// stops the others.
pub fn serve_fds<H, F>(
    fds: Vec<OwnedFd>,
    config: QueueConfig,
    backing: Vec<RawFd>,
    factory: F,
) -> io::Result<Queues>
where
    H: Handler,
    F: Fn(QueueContext) -> H + Send + Sync + 'static,
{
    let config = QueueConfig {
        standby: false,
        ..config
    };
    serve_readv_fds(fds, config, backing, factory)
}

/// [`serve_fds`] for fds that may share one input queue: with
/// `config.standby`, queues beyond the first stand by until there is load
/// for them (`readv::standby`).
fn serve_readv_fds<H, F>(
    fds: Vec<OwnedFd>,
    config: QueueConfig,
    backing: Vec<RawFd>,
    factory: F,
) -> io::Result<Queues>
where
    H: Handler,
    F: Fn(QueueContext) -> H + Send + Sync + 'static,
{
    let wakers = new_wakers(fds.len())?;
    let load = (config.standby && fds.len() > 1)
        .then(|| crate::readv::standby::QueueLoad::new(wakers.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let runs = fds
        .into_iter()
        .enumerate()
        .map(|(index, fuse_fd)| {
            QueueRun::Readv(QueueSetup {
                index,
                fuse_fd,
                backing: backing.clone(),
                config: config.clone(),
                waker: wakers[index].clone(),
                stop: stop.clone(),
                load: load.clone(),
            })
        })
        .collect();
    spawn_queues(runs, wakers, stop, factory)
}

/// Starts a thread per queue, each with a handler built by `factory`. A
/// queue that fails or panics stops the others.
fn spawn_queues<H, F>(
    runs: Vec<QueueRun>,
    wakers: Arc<[Waker]>,
    stop: Arc<AtomicBool>,
    factory: F,
) -> io::Result<Queues>
where
    H: Handler,
    F: Fn(QueueContext) -> H + Send + Sync + 'static,
{
    let (ended_tx, ended) = crossbeam_channel::unbounded();
    let factory = Arc::new(factory);
    let stopper = Stopper {
        stop,
        wakers: wakers.clone(),
    };
    let mut threads = Vec::with_capacity(runs.len());
    for run in runs {
        let index = run.index();
        let context = QueueContext {
            index,
            wakers: wakers.clone(),
            max_requests: run.max_requests(),
        };
        let factory = factory.clone();
        let ended_tx: Sender<usize> = ended_tx.clone();
        let queue_stopper = stopper.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("fuse-queue-{index}"))
            .spawn(move || {
                // Reports the end even if the queue panics, so that the
                // main thread never waits for a queue that is gone.
                let mut notice = EndNotice {
                    index,
                    ended: ended_tx,
                    stopper: queue_stopper,
                    failed: true,
                };
                let mut handler = factory(context);
                let result = match run {
                    QueueRun::Readv(setup) => run_queue(setup, &mut handler),
                    QueueRun::Uring(setup) => run_uring_queue(setup, &mut handler),
                };
                match &result {
                    Ok(_) => notice.failed = false,
                    Err(err) => log::error!("queue {index} failed: {err}"),
                }
                result
            });
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(err) => {
                // The queues already started must not serve a connection
                // that is missing one.
                let started = Queues {
                    threads,
                    stopper,
                    ended,
                };
                let _ = started.shutdown();
                return Err(err);
            }
        }
    }
    Ok(Queues {
        threads,
        stopper,
        ended,
    })
}

/// The waker and handler of a lone queue (index 0, the only waker) that
/// holds up to `max_requests` requests at once.
fn single_queue_handler<H, F>(factory: F, max_requests: usize) -> io::Result<(Waker, H)>
where
    F: FnOnce(QueueContext) -> H,
{
    let waker = Waker::new()?;
    let wakers: Arc<[Waker]> = vec![waker.clone()].into();
    let context = QueueContext {
        index: 0,
        wakers,
        max_requests,
    };
    Ok((waker, factory(context)))
}

/// Runs a single queue on the calling thread over an already connected fd
/// until the peer goes away: a `/dev/fuse` fd after INIT, or a test's fake
/// device (one end of a `SOCK_SEQPACKET` socketpair, one message per
/// request, where end-of-file stands for the unmount).
pub fn serve_fd<H, F>(
    fd: OwnedFd,
    config: QueueConfig,
    backing: Vec<RawFd>,
    factory: F,
) -> io::Result<QueueReport>
where
    H: Handler,
    F: FnOnce(QueueContext) -> H,
{
    let (waker, mut handler) = single_queue_handler(factory, config.max_in_flight)?;
    let setup = QueueSetup {
        index: 0,
        fuse_fd: fd,
        backing,
        config,
        waker,
        stop: Arc::new(AtomicBool::new(false)),
        load: None,
    };
    run_queue(setup, &mut handler)
}

/// Runs a single FUSE-over-io_uring queue on the calling thread with a
/// fake device instead of the kernel (tests): one end of a
/// `SOCK_SEQPACKET` socketpair, where each message the peer sends is laid out
/// the way the kernel fills a ring entry (the 288-byte
/// `fuse_uring_req_header`, then the payload) and each reply comes back in
/// the same layout (header, then `payload_sz` bytes). The peer closing is the
/// end of the connection. The queue has `depth` entries with payload
/// buffers of `payload_len` bytes.
pub fn serve_fd_as_ring<H, F>(
    fd: OwnedFd,
    depth: usize,
    payload_len: usize,
    config: QueueConfig,
    backing: Vec<RawFd>,
    factory: F,
) -> io::Result<QueueReport>
where
    H: Handler,
    F: FnOnce(QueueContext) -> H,
{
    let (waker, mut handler) =
        single_queue_handler(factory, crate::uring::queue::job_capacity(depth.max(1)))?;
    let (quiet, _quiet_rx) = crossbeam_channel::unbounded();
    let setup = UringSetup {
        index: 0,
        qid: 0,
        fuse_fd: fd,
        backing,
        config,
        // The fake-device queue waits for one completion at a time and
        // never polls.
        ring: RingQueueOptions {
            depth: depth.max(1),
            wait_batch: 1,
            busy_poll: std::time::Duration::ZERO,
        },
        payload_len,
        waker,
        stop: Arc::new(AtomicBool::new(false)),
        ending: Arc::new(UringEnding::new(quiet)),
        fake_device: true,
    };
    run_uring_queue(setup, &mut handler)
}

/// The `FUSE_DEV_IOC_BACKING_OPEN` ioctl: its argument is read by the
/// kernel, its result is the new backing id.
struct BackingOpen(BackingMap);

// SAFETY: the opcode is BACKING_OPEN, whose argument is exactly one
// `fuse_backing_map` that the kernel only reads (hence not mutating), and
// whose output is the ioctl's return value, not the argument.
unsafe impl rustix::ioctl::Ioctl for BackingOpen {
    type Output = i32;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> rustix::ioctl::Opcode {
        fuse_proto::ioctl::DEV_IOC_BACKING_OPEN
    }

    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        (&raw mut self.0).cast()
    }

    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _argument: *mut core::ffi::c_void,
    ) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

fn clone_device(device: &OwnedFd) -> io::Result<OwnedFd> {
    let clone = rustix::fs::open(
        "/dev/fuse",
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let source = device.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the source fd number) through
    // the pointer `Setter` passes, which points at `source` for the call.
    unsafe {
        rustix::ioctl::ioctl(
            clone.as_fd(),
            rustix::ioctl::Setter::<FUSE_DEV_IOC_CLONE, u32>::new(source),
        )
    }
    .map_err(|err| io::Error::new(err.kind(), format!("FUSE_DEV_IOC_CLONE: {err}")))?;
    Ok(clone)
}

/// Sent when a queue thread ends, however it ends. A queue that failed (or
/// panicked) stops the others too: the export cannot serve with a queue
/// missing, since the kernel hands requests to every clone.
struct EndNotice {
    index: usize,
    ended: Sender<usize>,
    stopper: Stopper,
    failed: bool,
}

impl Drop for EndNotice {
    fn drop(&mut self) {
        if self.failed {
            self.stopper.stop();
        }
        let _ = self.ended.send(self.index);
    }
}

/// Asks every queue to stop: no new reads, finish what is in flight.
#[derive(Debug, Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    wakers: Arc<[Waker]>,
}

impl Stopper {
    /// Requests the stop (idempotent, callable from any thread).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for waker in self.wakers.iter() {
            waker.wake();
        }
    }
}

/// Queue threads that are serving (see [`serve_fds`]).
#[derive(Debug)]
pub struct Queues {
    threads: Vec<JoinHandle<io::Result<QueueReport>>>,
    stopper: Stopper,
    ended: Receiver<usize>,
}

impl Queues {
    /// A handle that stops the queues.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Receives the index of each queue as it ends (after an unmount, an
    /// abort, a failure or a stop).
    pub fn ended(&self) -> &Receiver<usize> {
        &self.ended
    }

    /// Stops the queues and waits for them to finish every request in
    /// flight. Returns each queue's report, or the first error.
    pub fn shutdown(mut self) -> io::Result<Vec<QueueReport>> {
        self.stopper.stop();
        let mut reports = Vec::new();
        let mut first_error = None;
        for thread in self.threads.drain(..) {
            match thread.join() {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(err)) => {
                    first_error.get_or_insert(err);
                }
                Err(_) => {
                    first_error.get_or_insert(io::Error::other("a queue thread panicked"));
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(reports),
        }
    }
}

/// Queues that are serving a mount.
#[derive(Debug)]
pub struct Running {
    queues: Queues,
    mount: Mount,
    /// With FUSE-over-io_uring: how its ring queues are brought to an end.
    rings: Option<RingShutdown>,
    /// Why the stat after start failed, if it did.
    export_stat: Option<io::Error>,
}

/// The ring queues' side of an orderly end (see [`Running::shutdown`]).
#[derive(Debug)]
struct RingShutdown {
    quiet: Receiver<usize>,
    queues: usize,
    ending: Arc<UringEnding>,
}

impl Running {
    /// A handle that stops the queues.
    pub fn stopper(&self) -> Stopper {
        self.queues.stopper()
    }

    /// Receives the index of each queue as it ends (after an unmount, an
    /// abort, a failure or a stop).
    pub fn ended(&self) -> &Receiver<usize> {
        self.queues.ended()
    }

    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        self.mount.mountpoint()
    }

    /// The kernel keeps i_size at 0 until a GETATTR; until then O_DIRECT
    /// AIO reads see EOF. So once the queues serve, the file is stat'ed
    /// (from the mount's watcher process where it has one, see
    /// [`Mount::stat_export`]).
    fn stat_after_start(&mut self, stat_path: &Path) {
        self.export_stat =
            self.mount.stat_export(stat_path).err().map(|err| {
                io::Error::new(err.kind(), format!("stat {}: {err}", stat_path.display()))
            });
    }

    /// Whether the export answered the stat made when the queues started:
    /// an export that did not cannot be used, and nobody should be told it
    /// is ready.
    pub fn export_answered(&self) -> io::Result<()> {
        match &self.export_stat {
            None => Ok(()),
            Some(err) => Err(io::Error::new(err.kind(), err.to_string())),
        }
    }

    /// Stops the queues, waits for them to finish every request in flight,
    /// then unmounts. Returns each queue's report, or the first error.
    ///
    /// With FUSE-over-io_uring, the ring entries waiting for requests end
    /// only with the connection: once every ring queue has answered what it
    /// was serving, the mount is unmounted right away if nothing uses it,
    /// which ends the connection and lets the queues free their entries. A
    /// busy mount (a client has the file open) is detached lazily after the
    /// queues, told to let go, have left their entries to the kernel.
    pub fn shutdown(self) -> io::Result<Vec<QueueReport>> {
        let Running {
            queues,
            mut mount,
            rings,
            ..
        } = self;
        if let Some(rings) = rings {
            queues.stopper.stop();
            for _ in 0..rings.queues {
                // Every ring queue sends once, however it ends.
                if rings.quiet.recv().is_err() {
                    break;
                }
            }
            let gone = mount.try_unmount().unwrap_or_else(|err| {
                log::warn!("unmounting {}: {err}", mount.mountpoint().display());
                false
            });
            if !gone {
                // The lazy unmount below says so.
                rings.ending.let_go();
                queues.stopper.stop();
            }
        }
        let result = queues.shutdown();
        // Every device fd is closed now (the queues own them), so unmounting
        // cannot wait on this process.
        let unmounted = mount.unmount();
        result.and_then(|reports| unmounted.map(|()| reports))
    }
}
