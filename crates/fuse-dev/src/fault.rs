//! Test-only fault injection (cargo feature `fault-injection`, off in
//! normal builds).
//!
//! A test arms faults for one device fd before the queue serving it starts;
//! the queue finds them by the fd's identity (device and inode number), so
//! tests running in parallel in one process do not see each other's faults.
//! That identity is unique for a fake device (a socketpair); every fd of
//! `/dev/fuse` shares the device node's, so faults armed on one reach every
//! queue on a real mount in the process.
//! Each fault is off until the test switches it on, and then stays on:
//!
//! * [`Faults::fail_pool_allocations`]: every buffer the queue's pool would
//!   map fails with `ENOMEM` (buffers already idle in the pool still serve);
//! * [`Faults::fail_submits`]: every `io_uring_enter` of the queue's ring
//!   fails with `EIO`, as a broken ring would;
//! * [`Faults::fail_next_submits`]: the next few `io_uring_enter`s fail
//!   with a transient error (`EAGAIN`, `ENOMEM`, ...), then it works again;
//! * [`Faults::fail_device_reads`]: every device read that completes is
//!   reported as failed with `EIO`.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The faults of one queue, switched on by the test.
#[derive(Debug, Default)]
pub struct Faults {
    pool_allocations: AtomicBool,
    submits: AtomicBool,
    transient_errno: AtomicI32,
    transient_left: AtomicU32,
    device_reads: AtomicBool,
}

impl Faults {
    /// From now on, mapping a new pool buffer fails.
    pub fn fail_pool_allocations(&self) {
        self.pool_allocations.store(true, Ordering::Release);
    }

    /// From now on, submitting to the ring fails.
    pub fn fail_submits(&self) {
        self.submits.store(true, Ordering::Release);
    }

    /// The next `count` submissions fail with `errno`.
    pub fn fail_next_submits(&self, errno: i32, count: u32) {
        self.transient_errno.store(errno, Ordering::Release);
        self.transient_left.store(count, Ordering::Release);
    }

    /// From now on, every completed device read reports `EIO`.
    pub fn fail_device_reads(&self) {
        self.device_reads.store(true, Ordering::Release);
    }

    pub(crate) fn pool_allocation(&self) -> io::Result<()> {
        if self.pool_allocations.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "injected fault: pool allocation failed",
            ));
        }
        Ok(())
    }

    pub(crate) fn submit(&self) -> io::Result<()> {
        if self.submits.load(Ordering::Acquire) {
            return Err(io::Error::other("injected fault: io_uring_enter failed"));
        }
        let counted_down =
            self.transient_left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    left.checked_sub(1)
                });
        if counted_down.is_ok() {
            let errno = self.transient_errno.load(Ordering::Acquire);
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }

    /// The result a device read's CQE is treated as having.
    pub(crate) fn device_read_result(&self, result: i32) -> i32 {
        if self.device_reads.load(Ordering::Acquire) {
            -libc::EIO
        } else {
            result
        }
    }
}

type DeviceId = (u64, u64);

static ARMED: Mutex<Vec<(DeviceId, Weak<Faults>)>> = Mutex::new(Vec::new());

fn device_id(fd: BorrowedFd<'_>) -> io::Result<DeviceId> {
    let stat = rustix::fs::fstat(fd)?;
    Ok((stat.st_dev as u64, stat.st_ino as u64))
}

/// Arms faults for the queue that will serve `device` (all off until
/// switched on). They stay armed while the returned handle lives.
pub fn arm(device: BorrowedFd<'_>) -> io::Result<Arc<Faults>> {
    let id = device_id(device)?;
    let faults = Arc::new(Faults::default());
    let mut armed = ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    armed.retain(|(_, weak)| weak.strong_count() > 0);
    armed.push((id, Arc::downgrade(&faults)));
    Ok(faults)
}

/// The faults armed for `device`, if any.
pub(crate) fn for_device(device: BorrowedFd<'_>) -> Option<Arc<Faults>> {
    let id = device_id(device).ok()?;
    let armed = ARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    armed
        .iter()
        .filter(|(armed_id, _)| *armed_id == id)
        .find_map(|(_, weak)| weak.upgrade())
}
