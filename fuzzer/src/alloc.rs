//! The largest single allocation since the last reset, to catch a length
//! field that makes a decoder allocate what its input does not contain.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator plus a record of the largest request. A harness
/// installs it with
/// `#[global_allocator] static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;`;
/// without it the allocation check is off (and the fuzzer says so).
pub struct PeakAlloc;

static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with its arguments unchanged;
// the only addition is a relaxed atomic max, which cannot allocate.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        PEAK.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

pub(crate) fn reset() {
    PEAK.store(0, Ordering::Relaxed);
}

pub(crate) fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Whether the running binary installed [`PeakAlloc`].
pub(crate) fn installed() -> bool {
    reset();
    let probe = std::hint::black_box(vec![0u8; 1 << 20]);
    let seen = peak() >= probe.len();
    drop(probe);
    seen
}
