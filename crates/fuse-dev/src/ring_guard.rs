//! The one place that decides what the kernel may still touch when a queue
//! ends, and when that memory may be freed.
//!
//! A queue's io_uring has operations in flight that point into memory the
//! queue owns: posted device reads into read slots, backing I/O into job
//! chains, reply iovecs, the waker's eventfd read. [`RingGuard`] owns the
//! ring together with all of that memory (the transport's [`KernelMemory`])
//! and counts every SQE pushed and every CQE reaped, so it always knows how
//! many operations the kernel still has. It frees the memory only when that
//! count is zero:
//!
//! * a queue that drained (every operation completed) calls
//!   [`RingGuard::finish`]: the registered files are unregistered and the
//!   ring closed right away, so that nothing (in this process or in the
//!   kernel's deferred ring teardown) keeps the image or the device open;
//! * a queue that ends any other way (an error return, a panic unwinding
//!   through the loop) drops the guard, which first cancels everything in
//!   flight and waits until every CQE is reaped, then lets the transport
//!   answer the requests it can no longer serve, then frees;
//! * if the ring cannot be driven any more (`io_uring_enter` keeps failing,
//!   or cancellation is refused), nothing is freed: the ring and the memory
//!   are leaked, since the kernel may still write into it. The queue is
//!   ending and the export with it.
//!
//! Every SQE must produce exactly one CQE (no multishot operations, no
//! `IOSQE_CQE_SKIP_SUCCESS`): that is what makes the count exact. The guard
//! refuses SQEs beyond `capacity` in flight, the bound the transport sizes
//! its submission queue (and the completion queue, twice as large) for; so
//! the submission queue never fills and the completion queue never
//! overflows.

use std::io;

use io_uring::{IoUring, opcode, squeue, types};

/// `user_data` of the guard's own cancellation; transports must not use it.
const GUARD_CANCEL: u64 = u64::MAX;

/// How many failed `io_uring_enter`s in a row the guard sits out while
/// draining before it gives up and leaks (transient errors only: EINTR,
/// EAGAIN, ENOMEM, EBUSY).
const DRAIN_RETRIES: u32 = 10_000;

/// The memory a transport lets the kernel point into, and what the
/// transport does when its queue ends early.
pub(crate) trait KernelMemory {
    /// Whether every operation this memory may have in flight ends once it
    /// is cancelled (`IORING_OP_ASYNC_CANCEL` with `IORING_ASYNC_CANCEL_ANY`)
    /// or completes by itself. If not, an early end leaks instead of waiting.
    fn drains_on_cancel(&self) -> bool;

    /// A CQE reaped while the guard drains after an early end (the queue
    /// loop no longer runs): the memory it names is no longer in use.
    fn reaped(&mut self, user_data: u64, result: i32);

    /// The queue ended early. `drained`: nothing is in flight any more and
    /// the memory is about to be freed; otherwise it is about to be leaked.
    /// Answers what the kernel still waits for, where the device allows.
    fn ended_early(&mut self, drained: bool);
}

/// A queue's io_uring, counting what it has in flight.
pub(crate) struct Ring<S: squeue::EntryMarker = squeue::Entry> {
    ring: IoUring<S>,
    in_flight: usize,
    capacity: usize,
    #[cfg(feature = "fault-injection")]
    faults: Option<std::sync::Arc<crate::fault::Faults>>,
}

impl<S: squeue::EntryMarker + From<squeue::Entry>> Ring<S> {
    /// Wraps `ring`, which must have room for more than `capacity` SQEs in
    /// its submission queue and CQEs in its completion queue (one more is
    /// the guard's own cancellation).
    pub(crate) fn new(ring: IoUring<S>, capacity: usize) -> Ring<S> {
        debug_assert!(ring.params().sq_entries() as usize > capacity);
        debug_assert!(ring.params().cq_entries() as usize > capacity);
        Ring {
            ring,
            in_flight: 0,
            capacity,
            #[cfg(feature = "fault-injection")]
            faults: None,
        }
    }

    /// Makes submissions fail when the test says so.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn set_faults(&mut self, faults: Option<std::sync::Arc<crate::fault::Faults>>) {
        self.faults = faults;
    }

    /// Operations pushed whose CQE has not been reaped yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues an SQE. Fails (and queues nothing) if `capacity` operations
    /// are in flight already: the transport's sizing is wrong.
    ///
    /// # Safety
    /// Any memory the SQE references must stay valid until its CQE is
    /// reaped; the guard that owns this ring makes sure it is never freed
    /// before (it is leaked instead).
    pub(crate) unsafe fn push(&mut self, sqe: &S) -> io::Result<()> {
        if self.in_flight >= self.capacity {
            return Err(io::Error::other(format!(
                "io_uring: more than {} operations in flight",
                self.capacity
            )));
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.ring.submission().push(sqe) }.map_err(|_| {
            // Cannot happen: at most `capacity` SQEs are unsubmitted.
            io::Error::other("io_uring submission queue full")
        })?;
        self.in_flight += 1;
        Ok(())
    }

    /// Submits what was queued and waits for at least `want` completions.
    /// Transient failures (EINTR, EAGAIN, ENOMEM, EBUSY: "reap and retry")
    /// return `Ok`: the caller reaps what is there and calls again. Other
    /// failures mean the ring is broken.
    pub(crate) fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        match self.enter(want) {
            Ok(()) => Ok(()),
            Err(err) if is_transient(&err) => {
                log::debug!("io_uring_enter: {err}; retrying");
                // Let whatever holds the resource make progress.
                std::thread::yield_now();
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Like [`Ring::submit_and_wait`], but waits at most `timeout` (which
    /// needs `IORING_FEAT_EXT_ARG`, Linux 5.11). Returns false when the time
    /// ran out before `want` completions arrived.
    pub(crate) fn submit_and_wait_for(
        &mut self,
        want: usize,
        timeout: std::time::Duration,
    ) -> io::Result<bool> {
        let ts = types::Timespec::from(timeout);
        self.enter_with_args(want, &types::SubmitArgs::new().timespec(&ts))
    }

    /// Submits, then waits for `want` completions for up to `min_wait`, and
    /// after that for the first one, for at most `timeout` in all
    /// (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12; an older kernel refuses the
    /// argument with EINVAL). Returns false when `timeout` ran out.
    ///
    /// The overall timeout is what makes the kernel keep waiting after
    /// `min_wait`: without one, the minimum wait ends the call even when
    /// nothing completed (`io_cqring_min_timer_wakeup`), so a thread waiting
    /// on slow operations would wake every `min_wait` for nothing.
    pub(crate) fn submit_and_wait_batch(
        &mut self,
        want: usize,
        min_wait: std::time::Duration,
        timeout: std::time::Duration,
    ) -> io::Result<bool> {
        let usec = u32::try_from(min_wait.as_micros()).unwrap_or(u32::MAX);
        let ts = types::Timespec::from(timeout);
        self.enter_with_args(
            want,
            &types::SubmitArgs::new().min_wait_usec(usec).timespec(&ts),
        )
    }

    /// `io_uring_enter` with extended arguments: false when a time limit
    /// ran out (ETIME); transient errors count as a wait that ended early.
    fn enter_with_args(
        &mut self,
        want: usize,
        args: &types::SubmitArgs<'_, '_>,
    ) -> io::Result<bool> {
        #[cfg(feature = "fault-injection")]
        if let Some(faults) = &self.faults {
            faults.submit()?;
        }
        match self.ring.submitter().submit_with_args(want, args) {
            Ok(_) => Ok(true),
            Err(err) if err.raw_os_error() == Some(libc::ETIME) => Ok(false),
            Err(err) if is_transient(&err) => {
                log::debug!("io_uring_enter: {err}; retrying");
                std::thread::yield_now();
                Ok(true)
            }
            Err(err) => Err(err),
        }
    }

    /// Waits up to `budget` without sleeping for the kernel to have
    /// something for this ring: a completion, or deferred task work (seen
    /// through `IORING_SQ_TASKRUN`, so only on a ring set up with
    /// `IORING_SETUP_TASKRUN_FLAG`). Yields the CPU on every round, so a
    /// runnable thread on this CPU (often the client) is not held up.
    /// Returns whether something came.
    pub(crate) fn poll_for_work(&mut self, budget: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            if self.ring.submission().taskrun() || !self.ring.completion().is_empty() {
                return true;
            }
            if start.elapsed() >= budget {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// Whether completions wait to be reaped.
    pub(crate) fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Whether SQEs were pushed that the kernel has not taken yet.
    pub(crate) fn has_unsubmitted(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Submits what was queued without waiting.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        self.submit_and_wait(0)
    }

    fn enter(&mut self, want: usize) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(faults) = &self.faults {
            faults.submit()?;
        }
        self.ring.submit_and_wait(want).map(drop)
    }

    /// Takes up to `out.len()` completions as `(user_data, result)`.
    pub(crate) fn reap(&mut self, out: &mut [(u64, i32)]) -> usize {
        let mut count = 0;
        for (slot, cqe) in out.iter_mut().zip(self.ring.completion()) {
            *slot = (cqe.user_data(), cqe.result());
            count += 1;
        }
        self.in_flight -= count.min(self.in_flight);
        count
    }

    /// Cancels everything in flight and reaps until nothing is. Returns
    /// whether that worked; if not, operations may still be in flight.
    fn cancel_and_drain(&mut self, memory: &mut impl KernelMemory) -> bool {
        if self.in_flight == 0 {
            return true;
        }
        if !memory.drains_on_cancel() {
            return false;
        }
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(GUARD_CANCEL);
        // The cancel is one more operation than the transport may have in
        // flight; the ring has room for it (see `Ring::new`).
        self.capacity += 1;
        // SAFETY: a cancellation references no memory.
        if unsafe { self.push(&cancel.into()) }.is_err() {
            return false;
        }
        let mut retries = 0;
        let mut reaped = [(0u64, 0i32); 64];
        while self.in_flight > 0 {
            match self.enter(1) {
                Ok(()) => retries = 0,
                Err(err) if is_transient(&err) && retries < DRAIN_RETRIES => {
                    retries += 1;
                    std::thread::yield_now();
                }
                Err(err) => {
                    log::error!("io_uring_enter failed while draining: {err}");
                    return false;
                }
            }
            let count = self.reap(&mut reaped);
            for &(user_data, result) in &reaped[..count] {
                if user_data == GUARD_CANCEL {
                    // The result is how many were cancelled, or ENOENT if
                    // nothing matched; anything else means cancellation
                    // does not work here and waiting could last forever.
                    if result < 0 && result != -libc::ENOENT {
                        log::error!(
                            "io_uring cancellation failed: {}",
                            io::Error::from_raw_os_error(-result)
                        );
                        return false;
                    }
                } else {
                    memory.reaped(user_data, result);
                }
            }
        }
        true
    }

    /// Closes a ring with nothing in flight: registered files first, so that
    /// they are released now rather than in the kernel's deferred teardown.
    fn close(self) {
        if let Err(err) = self.ring.submitter().unregister_files()
            && err.raw_os_error() != Some(libc::ENXIO)
        {
            log::warn!("io_uring: unregistering files failed: {err}");
        }
        drop(self.ring);
    }
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::ENOMEM | libc::EBUSY)
    )
}

/// Owns a ring and the memory its operations point into; frees the memory
/// only once the kernel is done with it (see the module documentation).
pub(crate) struct RingGuard<
    M: KernelMemory,
    S: squeue::EntryMarker + From<squeue::Entry> = squeue::Entry,
> {
    index: usize,
    parts: Option<(Ring<S>, M)>,
}

impl<M: KernelMemory, S: squeue::EntryMarker + From<squeue::Entry>> RingGuard<M, S> {
    /// Guards `memory` for queue `index`'s ring.
    pub(crate) fn new(index: usize, ring: Ring<S>, memory: M) -> RingGuard<M, S> {
        RingGuard {
            index,
            parts: Some((ring, memory)),
        }
    }

    /// The ring and the memory, for the queue loop.
    pub(crate) fn parts(&mut self) -> (&mut Ring<S>, &mut M) {
        match &mut self.parts {
            Some((ring, memory)) => (ring, memory),
            // `parts` is only taken by `finish` (which consumes the guard)
            // and by drop.
            None => unreachable!("ring guard used after it ended"),
        }
    }

    /// The queue drained: closes the ring and hands the memory back to be
    /// freed normally. If operations are still in flight (a bug in the
    /// loop), this is an early end instead and fails.
    pub(crate) fn finish(mut self) -> io::Result<M> {
        let Some((ring, memory)) = self.parts.take() else {
            return Err(io::Error::other("ring guard already ended"));
        };
        if ring.in_flight() != 0 {
            let in_flight = ring.in_flight();
            self.parts = Some((ring, memory));
            return Err(io::Error::other(format!(
                "queue {} ended with {in_flight} operations in flight",
                self.index
            )));
        }
        ring.close();
        Ok(memory)
    }

    /// The queue ends while the kernel still holds operations that only the
    /// end of the connection completes (FUSE-over-io_uring entries waiting
    /// for a request: cancellation does not reach them). The ring and the
    /// memory are left to the kernel: never freed, the ring fd never
    /// closed, so nothing the kernel may still write into is reused. The
    /// process is about to exit.
    pub(crate) fn leave_to_kernel(mut self) {
        if let Some((ring, memory)) = self.parts.take() {
            log::debug!(
                "queue {}: leaving {} operations to the kernel until the connection ends",
                self.index,
                ring.in_flight()
            );
            std::mem::forget(ring);
            std::mem::forget(memory);
        }
    }
}

impl<M: KernelMemory, S: squeue::EntryMarker + From<squeue::Entry>> Drop for RingGuard<M, S> {
    fn drop(&mut self) {
        let Some((mut ring, mut memory)) = self.parts.take() else {
            return;
        };
        let in_flight = ring.in_flight();
        let drained = ring.cancel_and_drain(&mut memory);
        memory.ended_early(drained);
        if drained {
            log::debug!(
                "queue {}: ended early; {in_flight} operations cancelled or completed",
                self.index
            );
            ring.close();
            drop(memory);
        } else {
            log::error!(
                "queue {}: ended with operations the kernel may still complete; \
                 leaking its ring and buffers",
                self.index
            );
            std::mem::forget(ring);
            std::mem::forget(memory);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::os::fd::AsRawFd;
    use std::rc::Rc;

    use super::*;

    /// What the guard told the memory: CQEs reaped, and how it ended.
    #[derive(Default)]
    struct Told {
        reaped: Vec<u64>,
        ended: Option<bool>,
    }

    struct Recorder(Rc<RefCell<Told>>);

    impl KernelMemory for Recorder {
        fn drains_on_cancel(&self) -> bool {
            true
        }
        fn reaped(&mut self, user_data: u64, _result: i32) {
            self.0.borrow_mut().reaped.push(user_data);
        }
        fn ended_early(&mut self, drained: bool) {
            self.0.borrow_mut().ended = Some(drained);
        }
    }

    fn nop(user_data: u64) -> squeue::Entry {
        opcode::Nop::new().build().user_data(user_data)
    }

    #[test]
    fn ring_refuses_operations_beyond_its_capacity() {
        let mut ring = Ring::new(IoUring::new(8).unwrap(), 4);
        for n in 0..4 {
            // SAFETY: a NOP references no memory.
            unsafe { ring.push(&nop(n)) }.unwrap();
        }
        // SAFETY: as above.
        assert!(unsafe { ring.push(&nop(4)) }.is_err());
        assert_eq!(ring.in_flight(), 4);
        ring.submit_and_wait(4).unwrap();
        let mut out = [(0, 0); 8];
        assert_eq!(ring.reap(&mut out), 4);
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn batched_wait_sleeps_past_its_minimum_until_something_completes() {
        let mut ring = Ring::new(IoUring::new(8).unwrap(), 4);
        let delay = std::time::Duration::from_millis(30);
        let ts = types::Timespec::from(delay);
        let sqe = opcode::Timeout::new(&ts).build().user_data(9);
        // SAFETY: `ts` outlives the ring, and the kernel copies it when it
        // takes the SQE.
        unsafe { ring.push(&sqe) }.unwrap();
        let start = std::time::Instant::now();
        let min_wait = std::time::Duration::from_micros(50);
        let within = std::time::Duration::from_secs(5);
        match ring.submit_and_wait_batch(4, min_wait, within) {
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("SKIP: this kernel has no IORING_FEAT_MIN_TIMEOUT (6.12+)");
                return;
            }
            other => assert!(other.unwrap(), "the overall limit ran out"),
        }
        // The wait held on after its minimum until the timeout fired (a
        // wait that ended at the minimum would come back empty).
        assert!(start.elapsed() >= delay - std::time::Duration::from_millis(5));
        let mut out = [(0, 0); 8];
        assert_eq!(ring.reap(&mut out), 1);
        assert_eq!(out[0], (9, -libc::ETIME));
    }

    #[test]
    fn guard_that_ends_early_cancels_and_reaps_before_freeing() {
        let (read, write) = rustix::pipe::pipe().unwrap();
        let mut ring = Ring::new(IoUring::new(8).unwrap(), 4);
        let mut buf = Box::new([0u8; 8]);
        let sqe = opcode::Read::new(types::Fd(read.as_raw_fd()), buf.as_mut_ptr(), 8)
            .build()
            .user_data(7);
        // SAFETY: `buf` outlives the guard, which reaps the read before it
        // ends (the test checks that it did).
        unsafe { ring.push(&sqe) }.unwrap();
        ring.submit_and_wait(0).unwrap();
        let told = Rc::new(RefCell::new(Told::default()));
        let guard = RingGuard::new(0, ring, Recorder(told.clone()));
        // A read is in flight: `finish` refuses and the guard ends early.
        assert!(guard.finish().is_err());
        assert_eq!(told.borrow().reaped, [7]);
        assert_eq!(told.borrow().ended, Some(true));
        // The read was cancelled: what is written now stays in the pipe.
        assert_eq!(rustix::io::write(&write, b"12345678").unwrap(), 8);
        let mut back = [0u8; 8];
        assert_eq!(rustix::io::read(&read, &mut back).unwrap(), 8);
        assert_eq!(&back, b"12345678");
        assert_eq!(*buf, [0u8; 8]);
    }

    #[test]
    fn guard_with_nothing_in_flight_finishes() {
        let ring = Ring::new(IoUring::new(8).unwrap(), 4);
        let told = Rc::new(RefCell::new(Told::default()));
        let guard = RingGuard::new(0, ring, Recorder(told.clone()));
        assert!(guard.finish().is_ok());
        assert_eq!(told.borrow().ended, None);
    }
}
