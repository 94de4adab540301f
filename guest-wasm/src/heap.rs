//! The guest's memory: one region of RAM between the image and the
//! module, the wasm stack at its start and the global allocator's heap
//! after it. Wasmtime's "virtual memory" (platform.rs) is carved from the
//! same heap.

use talc::source::Manual;
use talc::TalcLock;

use crate::engine_config::GUEST_STACK_BYTES;

pub const PAGE: usize = 4096;

/// A maintained allocator (talc) with a spinlock nothing ever contends:
/// the guest has one thread and takes no interrupts that allocate.
#[global_allocator]
static HEAP: TalcLock<spinning_top::RawSpinlock, Manual> = TalcLock::new(Manual);

/// The least heap worth starting with: Wasmtime's engine, the module's
/// metadata and a linear memory of a few MiB.
const MIN_HEAP: u64 = 8 << 20;

/// Gives [start, end) (page-aligned RAM nothing else uses) to the stack
/// and the heap; returns the stack's top, or None if it is too small.
pub fn init(start: u64, end: u64) -> Option<u64> {
    let stack_top = start.checked_add(GUEST_STACK_BYTES as u64)?;
    let heap_bytes = end.checked_sub(stack_top)?;
    if heap_bytes < MIN_HEAP {
        return None;
    }
    // SAFETY: the caller hands over [start, end): identity-mapped RAM past
    // the image and below the module, used by nothing else from now on.
    let claimed = unsafe { HEAP.lock().claim(stack_top as *mut u8, heap_bytes as usize) }.is_some();
    claimed.then_some(stack_top)
}
