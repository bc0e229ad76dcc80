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
//!
//! Whole-image locks (resizes, fallocates that may grow) are served first
//! come, first served: one that has to wait leaves a [`Reservation`], and
//! while any reservation is queued no new lock is granted, so a steady
//! stream of writes cannot keep a resize waiting. The writes in flight
//! finish, the resize runs, and the parked writes follow.

use std::collections::VecDeque;
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

/// A queued whole-image waiter: the caller keeps it and presents it again
/// on every retry, until the lock is granted.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    id: u64,
}

#[derive(Debug)]
struct Queued {
    id: u64,
    /// The queue that parked the waiter (to drop what a dead queue leaves).
    queue: usize,
}

#[derive(Debug, Default)]
struct State {
    held: Vec<Held>,
    next_id: u64,
    /// Whole-image waiters, oldest first.
    reserved: VecDeque<Queued>,
    /// Bit `q` set: queue `q` parked a request on a conflict.
    waiting_queues: u64,
    /// Locks (and whole-image waits) the queues' requests can hold at once:
    /// what `held` and `reserved` have room for.
    room: usize,
}

impl State {
    fn grant(&mut self, start: u64, end: u64, queue: usize) -> LockId {
        self.next_id += 1;
        let id = LockId(self.next_id);
        self.held.push(Held {
            start,
            end,
            id,
            queue,
        });
        id
    }

    fn wait(&mut self, queue: usize) {
        self.waiting_queues |= queue_bit(queue);
    }
}

/// The bit that stands for `queue` in the wait masks this module returns.
/// Queues beyond 64 share bits with lower ones, which only costs them a
/// spurious wake-up (a parked request retries and parks again).
pub fn queue_bit(queue: usize) -> u64 {
    1 << (queue % u64::BITS as usize)
}

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

    /// Makes room for the locks of one more queue, which holds up to
    /// `requests` requests at once, so that no lock it takes allocates while
    /// it serves: otherwise the table grows whenever a new peak of
    /// concurrent writes first comes, at a different moment in every run.
    pub fn make_room_for_queue(&self, requests: usize) {
        let mut state = self.state();
        state.room += requests;
        let (room, held, reserved) = (state.room, state.held.len(), state.reserved.len());
        state.held.reserve(room.saturating_sub(held));
        state.reserved.reserve(room.saturating_sub(reserved));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this mutex cannot leave the Vec inconsistent
        // (every mutation is a single push/remove), so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks `[start, end)` if nothing overlapping is held and no
    /// whole-image waiter is queued. Otherwise records that `queue` waits
    /// and returns `None`.
    pub fn try_lock(&self, start: u64, end: u64, queue: usize) -> Option<LockId> {
        let mut state = self.state();
        let conflict = state.held.iter().any(|h| h.start < end && start < h.end);
        if conflict || !state.reserved.is_empty() {
            state.wait(queue);
            return None;
        }
        Some(state.grant(start, end, queue))
    }

    /// Locks the whole image once nothing is held and every older
    /// whole-image waiter has had its turn. A caller that has to wait gets
    /// a reservation in `waiting` (which holds off new locks) and passes it
    /// back on each retry; it is consumed when the lock is granted.
    pub fn try_lock_all(&self, queue: usize, waiting: &mut Option<Reservation>) -> Option<LockId> {
        let mut state = self.state();
        let first = match (waiting.as_ref(), state.reserved.front()) {
            (_, None) => true,
            (Some(mine), Some(oldest)) => mine.id == oldest.id,
            (None, Some(_)) => false,
        };
        if first && state.held.is_empty() {
            if waiting.take().is_some() {
                state.reserved.pop_front();
            }
            return Some(state.grant(0, u64::MAX, queue));
        }
        if waiting.is_none() {
            state.next_id += 1;
            let id = state.next_id;
            state.reserved.push_back(Queued { id, queue });
            *waiting = Some(Reservation { id });
        }
        state.wait(queue);
        None
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

    /// Releases every lock `queue` holds and drops the whole-image
    /// reservations it left: the queue ended early (an error or a panic)
    /// and will never finish or retry the requests behind them, which
    /// would otherwise hold off the other queues' writes for good. Returns
    /// the queues that waited and must retry (cleared), or 0 if `queue`
    /// held and reserved nothing.
    pub fn release_queue(&self, queue: usize) -> u64 {
        let mut state = self.state();
        let (held, reserved) = (state.held.len(), state.reserved.len());
        state.held.retain(|h| h.queue != queue);
        state.reserved.retain(|queued| queued.queue != queue);
        if state.held.len() == held && state.reserved.len() == reserved {
            return 0;
        }
        if state.held.len() < held {
            log::warn!(
                "released {} range locks of queue {queue}, which ended early",
                held - state.held.len()
            );
        }
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
    fn room_made_for_the_queues_holds_all_their_locks_without_growing() {
        let locks = RangeLocks::new();
        locks.make_room_for_queue(8);
        locks.make_room_for_queue(8);
        let capacity = locks.state().held.capacity();
        assert!(capacity >= 16);
        let held: Vec<LockId> = (0..16)
            .map(|i| locks.try_lock(i * 4096, (i + 1) * 4096, 0).unwrap())
            .collect();
        assert_eq!(locks.state().held.capacity(), capacity);
        for id in held {
            locks.unlock(id);
        }
        assert!(locks.state().reserved.capacity() >= 16);
    }

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
    fn a_waiting_resize_holds_off_new_locks_until_it_ran() {
        let locks = RangeLocks::new();
        let write = locks.try_lock(0, 4096, 0).unwrap();
        let mut resize = None;
        assert!(locks.try_lock_all(1, &mut resize).is_none());
        assert!(resize.is_some(), "a waiting resize keeps a reservation");
        // A write that does not overlap the one in flight still waits.
        assert!(
            locks.try_lock(8192, 12288, 2).is_none(),
            "a new write overtook the waiting resize"
        );
        assert_eq!(locks.unlock(write), 0b110);
        let all = locks.try_lock_all(1, &mut resize).unwrap();
        assert!(resize.is_none(), "the reservation is used up");
        assert!(locks.try_lock(8192, 12288, 2).is_none());
        assert_eq!(locks.unlock(all), 0b100);
        assert!(locks.try_lock(8192, 12288, 2).is_some());
    }

    #[test]
    fn whole_image_waiters_take_turns_in_arrival_order() {
        let locks = RangeLocks::new();
        let write = locks.try_lock(0, 4096, 0).unwrap();
        let (mut first, mut second) = (None, None);
        assert!(locks.try_lock_all(1, &mut first).is_none());
        assert!(locks.try_lock_all(2, &mut second).is_none());
        locks.unlock(write);
        assert!(
            locks.try_lock_all(2, &mut second).is_none(),
            "the younger waiter went first"
        );
        let lock = locks.try_lock_all(1, &mut first).unwrap();
        locks.unlock(lock);
        let lock = locks.try_lock_all(2, &mut second).unwrap();
        locks.unlock(lock);
        assert!(locks.try_lock(0, 1, 0).is_some());
    }

    #[test]
    fn reservations_of_an_ended_queue_are_dropped() {
        let locks = RangeLocks::new();
        let write = locks.try_lock(0, 4096, 0).unwrap();
        let (mut live, mut dead) = (None, None);
        assert!(locks.try_lock_all(3, &mut dead).is_none());
        assert!(locks.try_lock_all(1, &mut live).is_none());
        assert_eq!(locks.release_queue(3), 0b1010);
        locks.unlock(write);
        // The live waiter is now first in line.
        let lock = locks.try_lock_all(1, &mut live).unwrap();
        locks.unlock(lock);
        assert!(locks.try_lock(8192, 12288, 2).is_some());
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
