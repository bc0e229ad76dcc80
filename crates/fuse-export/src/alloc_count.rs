//! Counting global allocator, compiled in with `--features alloc-count`.
//!
//! The performance lab (`cargo xtask lab`) measures heap allocations per
//! FUSE request with it: the server logs its totals when the stop begins
//! and again at exit, and the lab compares a short and a long run of the
//! same workload, so start-up and warm-up allocations cancel and what
//! remains is the steady-state cost.
//! Counting is three relaxed atomic additions per call, but it is still
//! kept out of normal builds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Calls that may allocate: `alloc`, `alloc_zeroed` and `realloc` (a
/// realloc is an allocator call on the request path even when it grows in
/// place).
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes those calls asked for.
static BYTES: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);

/// The system allocator with counters in front of it.
struct CountingAllocator;

fn count(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the GlobalAlloc contract; the counters do not touch the memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's guarantees for `layout` are System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's guarantees for `layout` are System's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        FREES.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from System with `layout` (we only forward).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from System with `layout`; the caller
        // guarantees `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Logs the totals so far in the line the lab parses: `<what>: N total,
/// ...`.
pub fn log_totals(what: &str) {
    log::info!(
        "{what}: {} total, {} bytes, {} frees",
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
        FREES.load(Ordering::Relaxed)
    );
}
