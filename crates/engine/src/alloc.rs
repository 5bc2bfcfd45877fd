//! A counting global allocator: live and peak heap bytes per thread, so that each rank
//! of a threaded data-parallel run can report the memory it really allocated.
//!
//! Install it in a binary (`#[global_allocator] static A: CountingAlloc = CountingAlloc;`);
//! without it every query returns `None`. Bytes are charged to the thread that
//! allocates and credited to the thread that frees, which for a rank's long-lived
//! buffers (allocated and kept by the rank thread) is the rank.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct CountingAlloc;

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

#[inline]
fn charge(delta: isize) {
    // `try_with`: allocations during thread teardown, after the TLS is gone, go uncounted.
    let _ = LIVE.try_with(|live| {
        let v = live.get() + delta;
        live.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and
// only updates thread-local counters (const-initialised, so touching them never
// allocates and cannot recurse into the allocator).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            charge(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            charge(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        charge(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            charge(new_size as isize - layout.size() as isize);
        }
        p
    }
}

impl CountingAlloc {
    /// Marks the allocator as installed; call once from `main`.
    pub fn activate(&self) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

/// Heap bytes this thread has allocated and not freed, if the allocator is installed.
pub fn thread_live() -> Option<isize> {
    INSTALLED.load(Ordering::Relaxed).then(|| LIVE.with(|c| c.get()))
}

/// Highest `thread_live` seen on this thread since the last [`reset_thread_peak`].
pub fn thread_peak() -> Option<isize> {
    INSTALLED.load(Ordering::Relaxed).then(|| PEAK.with(|c| c.get()))
}

pub fn reset_thread_peak() {
    let live = LIVE.with(|c| c.get());
    PEAK.with(|p| p.set(live));
}

/// Runs `f` and returns the heap bytes it left allocated on this thread.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Option<usize>) {
    let before = thread_live();
    let out = f();
    let after = thread_live();
    (out, before.zip(after).map(|(b, a)| (a - b).max(0) as usize))
}
