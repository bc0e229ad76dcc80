//! Standby queues: which readv queues keep reads posted.
//!
//! Every posted read waits on the one input queue the kernel shares
//! between all clones of a connection, and every request wakes them all:
//! with two queues at 4k QD1 both threads wake for each request (three
//! server context switches per request where one queue has two), and the
//! request lands on whichever thread wins, often a cold one. One queue
//! serves that load better; several serve depth better. So queue 0 always
//! keeps its reads posted, and the others only while there is load for
//! them: queue 0 calls them in once it has [`CALL_IN`] requests in
//! progress, and each stands down (withdraws its reads) once it has
//! nothing in progress, neither has any other queue, and queue 0 has not
//! called for help in the last [`STAY_IN`] (bursts at low depth would
//! otherwise have them stand down and be called in again every time).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::handler::Waker;

/// Requests in progress on queue 0 that call the other queues in.
pub(crate) const CALL_IN: usize = 2;
/// How long after queue 0 last needed them the other queues stay in.
pub(crate) const STAY_IN: Duration = Duration::from_millis(1);

/// What the queues of one connection share about their load.
#[derive(Debug)]
pub(crate) struct QueueLoad {
    /// Requests each queue has in progress, as it last published.
    in_progress: Box<[AtomicUsize]>,
    /// Whether each queue keeps reads posted (queue 0's entry is unused:
    /// it always does).
    active: Box<[AtomicBool]>,
    wakers: Arc<[Waker]>,
    /// When queue 0 last had [`CALL_IN`] or more requests in progress, in
    /// nanoseconds since `epoch`.
    last_needed: AtomicU64,
    epoch: Instant,
}

impl QueueLoad {
    /// For the queues woken by `wakers` (one each, queue 0 first).
    pub(crate) fn new(wakers: Arc<[Waker]>) -> Arc<QueueLoad> {
        let queues = wakers.len();
        Arc::new(QueueLoad {
            in_progress: (0..queues).map(|_| AtomicUsize::new(0)).collect(),
            active: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            wakers,
            last_needed: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Queue `queue` has `in_progress` requests: publishes it, and decides
    /// whether the queue keeps reads posted from now on.
    pub(crate) fn update(&self, queue: usize, in_progress: usize) -> bool {
        self.in_progress[queue].store(in_progress, Ordering::Relaxed);
        if queue == 0 {
            if in_progress >= CALL_IN {
                self.last_needed.store(self.now(), Ordering::Relaxed);
                self.call_in();
            }
            return true;
        }
        let active = &self.active[queue];
        if active.load(Ordering::Relaxed)
            && in_progress == 0
            && self.total() == 0
            && !self.needed_lately()
        {
            active.store(false, Ordering::Relaxed);
        }
        active.load(Ordering::Relaxed)
    }

    /// Whether queue 0 had [`CALL_IN`] requests in progress within
    /// [`STAY_IN`].
    fn needed_lately(&self) -> bool {
        let since = self
            .now()
            .saturating_sub(self.last_needed.load(Ordering::Relaxed));
        since < STAY_IN.as_nanos() as u64
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn total(&self) -> usize {
        self.in_progress
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// Activates every standby queue and wakes it, so that it posts reads.
    fn call_in(&self) {
        for (active, waker) in self.active.iter().zip(self.wakers.iter()).skip(1) {
            if !active.swap(true, Ordering::Relaxed) {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(queues: usize) -> Arc<QueueLoad> {
        let wakers: Vec<Waker> = (0..queues).map(|_| Waker::new().unwrap()).collect();
        QueueLoad::new(wakers.into())
    }

    #[test]
    fn other_queues_serve_only_under_load() {
        let load = load(3);
        // Queue 0 always reads; the others stand by at first.
        assert!(load.update(0, 0));
        assert!(!load.update(1, 0));
        assert!(!load.update(2, 0));
        // One request in progress on queue 0: still alone.
        assert!(load.update(0, 1));
        assert!(!load.update(1, 0));
        // Two: every queue is called in.
        assert!(load.update(0, CALL_IN));
        assert!(load.update(1, 0));
        assert!(load.update(2, 3));
        // Queue 1 idle while others still work: stays in.
        assert!(load.update(1, 0));
        // All idle, but queue 0 needed help just now: they stay in a while.
        assert!(load.update(0, 0));
        assert!(load.update(2, 0));
        std::thread::sleep(STAY_IN);
        // Then each stands down when it next looks.
        assert!(!load.update(2, 0));
        assert!(!load.update(1, 0));
        // Until queue 0 needs them again.
        assert!(load.update(0, CALL_IN));
        assert!(load.update(1, 1));
    }

    #[test]
    fn calling_in_wakes_each_standby_queue_once() {
        let load = load(2);
        load.update(0, CALL_IN);
        load.update(0, CALL_IN + 1);
        let mut count = [0u8; 8];
        // The eventfd counts one write: the second call found queue 1 in.
        rustix::io::read(load.wakers[1].eventfd(), &mut count).unwrap();
        assert_eq!(u64::from_ne_bytes(count), 1);
        // Queue 0 is never woken for this.
        assert!(rustix::io::read(load.wakers[0].eventfd(), &mut count).is_err());
    }
}
