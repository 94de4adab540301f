//! The platform functions a `no_std` Wasmtime with `custom-virtual-memory`
//! calls (wasmtime's crates/wasmtime/src/runtime/vm/sys/custom/capi.rs):
//! "virtual memory" and two thread-local slots.
//!
//! The guest has no virtual memory to speak of: ring0/boot.S maps the low
//! 4 GiB once, identity, with 2 MiB pages that are present, writable,
//! executable and user-accessible, and nothing changes them afterwards.
//! So a "mapping" is page-aligned memory from the global allocator, and
//! protection changes are no-ops: a page cannot be made less accessible
//! than RWX without splitting the 2 MiB pages and taking faults in
//! (emulated) ring 0, which this guest never does. Nothing depends on
//! protections for safety either: with signals-based traps off, Wasm code
//! bounds-checks every access instead of relying on a fault.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::heap::PAGE;

/// Any nonzero value is an error to Wasmtime.
const ERR: i32 = 1;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size, PAGE).ok()
}

/// Like an anonymous private mmap: zeroed, page-aligned memory. Every
/// protection is granted (see above), so `prot` does not matter.
#[no_mangle]
pub extern "C" fn wasmtime_mmap_new(size: usize, _prot: u32, ret: &mut *mut u8) -> i32 {
    if size == 0 {
        // Wasmtime never unmaps an empty mapping; any aligned address does.
        *ret = NonNull::<[u8; PAGE]>::dangling().as_ptr().cast();
        return 0;
    }
    let Some(layout) = layout(size) else {
        return ERR;
    };
    // SAFETY: the layout has a nonzero size.
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return ERR;
    }
    *ret = p;
    0
}

/// Replaces a range of a mapping with fresh zeroed pages: zeroing them is
/// the whole effect when protections do not exist.
#[no_mangle]
pub extern "C" fn wasmtime_mmap_remap(addr: *mut u8, size: usize, _prot: u32) -> i32 {
    // SAFETY: Wasmtime passes a range of a mapping it made with
    // wasmtime_mmap_new and still owns.
    unsafe { ptr::write_bytes(addr, 0, size) };
    0
}

/// Wasmtime unmaps only whole mappings (its `Mmap` drops with the pointer
/// and length it was created with), so this is the allocation's free.
#[no_mangle]
pub extern "C" fn wasmtime_munmap(ptr: *mut u8, size: usize) -> i32 {
    let Some(layout) = layout(size) else {
        return ERR;
    };
    // SAFETY: `ptr` came from wasmtime_mmap_new with this same size, hence
    // this same layout, and Wasmtime no longer uses it.
    unsafe { alloc::alloc::dealloc(ptr, layout) };
    0
}

/// A no-op: every page is already RWX and cannot be otherwise (module
/// comment).
#[no_mangle]
pub extern "C" fn wasmtime_mprotect(_ptr: *mut u8, _size: usize, _prot: u32) -> i32 {
    0
}

#[no_mangle]
pub extern "C" fn wasmtime_page_size() -> usize {
    PAGE
}

/// Wasmtime's handle for a memory image; never created (below).
#[allow(non_camel_case_types)]
pub enum wasmtime_memory_image {}

/// Declines copy-on-write images (a null image is "not possible here",
/// not an error): they need page remapping the guest does not have, and
/// the engine configuration turns them off anyway (memory_init_cow).
#[no_mangle]
pub extern "C" fn wasmtime_memory_image_new(
    _ptr: *const u8,
    _len: usize,
    ret: &mut *mut wasmtime_memory_image,
) -> i32 {
    *ret = ptr::null_mut();
    0
}

/// Never called, since no image is ever created.
#[no_mangle]
pub extern "C" fn wasmtime_memory_image_map_at(
    _image: *mut wasmtime_memory_image,
    _addr: *mut u8,
    _len: usize,
) -> i32 {
    ERR
}

#[no_mangle]
pub extern "C" fn wasmtime_memory_image_free(_image: *mut wasmtime_memory_image) {}

/// Wasmtime's thread-local slots (0: runtime state, 1: component-model
/// async state). The guest has exactly one thread, so they are globals.
static TLS: [AtomicPtr<u8>; 2] = [
    AtomicPtr::new(ptr::null_mut()),
    AtomicPtr::new(ptr::null_mut()),
];

#[no_mangle]
pub extern "C" fn wasmtime_tls_get(slot: usize) -> *mut u8 {
    TLS.get(slot)
        .map_or(ptr::null_mut(), |s| s.load(Ordering::Relaxed))
}

#[no_mangle]
pub extern "C" fn wasmtime_tls_set(slot: usize, value: *mut u8) {
    if let Some(s) = TLS.get(slot) {
        s.store(value, Ordering::Relaxed);
    }
}

/// Code memory for modules loaded in place (`Module::deserialize_raw` on
/// the initrd): Wasmtime asks to make their text executable, which it
/// already is, like all memory here. Without this Wasmtime would refuse
/// in-place code, which it cannot mprotect through its own mappings.
pub struct RwxCode;

impl wasmtime::CustomCodeMemory for RwxCode {
    fn required_alignment(&self) -> usize {
        PAGE
    }

    fn publish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }

    fn unpublish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }
}
