//! The guest's memory: the RAM between the image and the module, less
//! the function mailbox, holds the wasm stack and the global allocator's
//! heap. Linear memories and Wasmtime's "mappings" (platform.rs) are
//! allocations from that heap.

use talc::source::Manual;
use talc::TalcLock;

use crate::abi::{MAILBOX_END, MAILBOX_START};
use crate::engine_config::GUEST_STACK_BYTES;

pub const PAGE: usize = 4096;

/// A maintained allocator (talc) with a spinlock nothing ever contends:
/// the guest has one thread and takes no interrupts that allocate.
#[global_allocator]
static HEAP: TalcLock<spinning_top::RawSpinlock, Manual> = TalcLock::new(Manual);

/// The least heap worth starting with: Wasmtime's engine, the module's
/// metadata and a linear memory of a few MiB.
const MIN_HEAP: u64 = 4 << 20;

/// Where the wasm stack and the heap are.
pub struct Layout {
    pub stack_top: u64,
    pub heap_bytes: u64,
}

/// Takes [start, end) (page-aligned RAM nothing else uses) for the wasm
/// stack and the heap, keeping clear of the function mailbox
/// (docs/guest-abi.md) that the VMM writes. None if too small.
pub fn init(start: u64, end: u64) -> Option<Layout> {
    let stack = GUEST_STACK_BYTES as u64;
    // The stack fits below the mailbox when the image is small enough;
    // the heap goes above it.
    let (stack_top, heap) = if start.checked_add(stack)? <= MAILBOX_START {
        (MAILBOX_START, start.max(MAILBOX_END))
    } else {
        let base = start.max(MAILBOX_END);
        (base + stack, base + stack)
    };
    let heap_bytes = end.checked_sub(heap)?;
    if heap_bytes < MIN_HEAP {
        return None;
    }
    // SAFETY: the caller hands over [start, end): identity-mapped RAM past
    // the image and below the module, used by nothing else from now on;
    // [heap, end) is the allocator's part.
    unsafe { HEAP.lock().claim(heap as *mut u8, heap_bytes as usize) }?;
    Some(Layout {
        stack_top,
        heap_bytes,
    })
}
