//! Exclusive byte-range locks shared by all queues.
//!
//! Every write holds the block-aligned range it touches until its data is
//! on the image, so a read-modify-write never interleaves with another
//! write of the same blocks (which would put stale bytes back), and a resize
//! (which locks everything) waits for the writes in flight. Reads take no
//! lock: a read racing a write of the same bytes may see either version of
//! each block, exactly as with the image file itself.
//!
//! Nothing blocks: a request that cannot lock is parked by its queue, and
//! the queue is woken when a lock it waited for goes away.

use std::sync::Mutex;

/// Identifies a held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockId(u64);

#[derive(Debug)]
struct Held {
    start: u64,
    end: u64,
    id: LockId,
    /// The queue whose request holds it.
    queue: usize,
}

#[derive(Debug, Default)]
struct State {
    held: Vec<Held>,
    next_id: u64,
    /// Bit `q` set: queue `q` parked a request on a conflict.
    waiting_queues: u64,
}

/// The most queues whose waits can be tracked (one bit each).
pub const MAX_QUEUES: usize = 64;

/// Byte-range locks over the image.
#[derive(Debug, Default)]
pub struct RangeLocks {
    state: Mutex<State>,
}

impl RangeLocks {
    /// No locks held.
    pub fn new() -> RangeLocks {
        RangeLocks::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this mutex cannot leave the Vec inconsistent
        // (every mutation is a single push/remove), so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks `[start, end)` if nothing overlapping is held. On a conflict,
    /// records that `queue` waits and returns `None`.
    pub fn try_lock(&self, start: u64, end: u64, queue: usize) -> Option<LockId> {
        let mut state = self.state();
        let conflict = state.held.iter().any(|h| h.start < end && start < h.end);
        if conflict {
            state.waiting_queues |= 1 << (queue % MAX_QUEUES);
            return None;
        }
        state.next_id += 1;
        let id = LockId(state.next_id);
        state.held.push(Held {
            start,
            end,
            id,
            queue,
        });
        Some(id)
    }

    /// Releases a lock. Returns the set of queues (bit mask) that were
    /// waiting for some lock and must retry; the set is cleared.
    pub fn unlock(&self, id: LockId) -> u64 {
        let mut state = self.state();
        if let Some(position) = state.held.iter().position(|h| h.id == id) {
            state.held.swap_remove(position);
        } else {
            log::error!("unlock of a range lock that is not held: {id:?}");
        }
        std::mem::take(&mut state.waiting_queues)
    }

    /// Releases every lock `queue` holds: the queue ended early and will
    /// never finish the requests that took them. Returns the queues that
    /// waited and must retry (cleared), or 0 if `queue` held nothing.
    pub fn release_queue(&self, queue: usize) -> u64 {
        let mut state = self.state();
        let before = state.held.len();
        state.held.retain(|h| h.queue != queue);
        if state.held.len() == before {
            return 0;
        }
        log::warn!(
            "released {} range locks of queue {queue}, which ended early",
            before - state.held.len()
        );
        std::mem::take(&mut state.waiting_queues)
    }

    /// Number of locks held (for tests and diagnostics).
    pub fn held(&self) -> usize {
        self.state().held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ranges_conflict_and_adjacent_ones_do_not() {
        let locks = RangeLocks::new();
        let a = locks.try_lock(0, 4096, 0).unwrap();
        assert!(locks.try_lock(4095, 8192, 1).is_none());
        let b = locks.try_lock(4096, 8192, 1).unwrap();
        assert_eq!(locks.held(), 2);
        // Queue 1 waited: unlocking reports it once.
        assert_eq!(locks.unlock(a), 0b10);
        assert_eq!(locks.unlock(b), 0);
        assert_eq!(locks.held(), 0);
    }

    #[test]
    fn releasing_a_queue_frees_only_its_locks_and_reports_waiters() {
        let locks = RangeLocks::new();
        let _ = locks.try_lock(0, 4096, 0).unwrap();
        let _ = locks.try_lock(8192, 12288, 0).unwrap();
        let other = locks.try_lock(4096, 8192, 1).unwrap();
        assert!(locks.try_lock(0, 4096, 2).is_none());
        assert_eq!(locks.release_queue(0), 0b100);
        assert_eq!(locks.held(), 1);
        assert!(locks.try_lock(0, 4096, 2).is_some());
        // Nothing held: nothing to report, and no waiter is forgotten.
        assert!(locks.try_lock(4096, 8192, 3).is_none());
        assert_eq!(locks.release_queue(0), 0);
        assert_eq!(locks.unlock(other), 0b1000);
    }

    #[test]
    fn whole_range_lock_excludes_everything() {
        let locks = RangeLocks::new();
        let all = locks.try_lock(0, u64::MAX, 3).unwrap();
        assert!(locks.try_lock(1 << 40, (1 << 40) + 1, 0).is_none());
        assert_eq!(locks.unlock(all), 0b1);
        assert!(locks.try_lock(1 << 40, (1 << 40) + 1, 0).is_some());
    }
}
