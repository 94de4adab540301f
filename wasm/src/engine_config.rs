//! The one Wasmtime configuration of vmfork's Wasm guest.
//!
//! A `.cwasm` loads only into an engine whose settings match the ones it
//! was compiled with, so the host (precompiling, with Cranelift) and the
//! guest (running, without a compiler) must apply exactly these. This file
//! is the host crate's module and is also compiled into guest-wasm/ as is
//! (`#[path]`), which is why it uses nothing but `core` and the `Config`
//! methods a runtime-only, `no_std` Wasmtime has.

use wasmtime::Config;

/// The code is x86-64 Linux-ABI machine code: the guest app is built for
/// this target (without std), and naming it here also stops Cranelift
/// from inferring the build host's CPU features.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The most wasm stack a call may use. The guest runs wasm on a stack of
/// its own of [`GUEST_STACK_BYTES`]; the rest is for the host frames
/// (Wasmtime's entry trampolines and the WASI functions).
pub const MAX_WASM_STACK: usize = 1 << 20;

/// The stack the guest switches to before it enters Wasmtime.
pub const GUEST_STACK_BYTES: usize = 2 << 20;

/// Linear memories get no reservation and no guard pages: the guest has
/// no page faults to catch, so every access is bounds-checked in code
/// anyway. Without reservation, guard or copy-on-write image, Wasmtime
/// backs a linear memory with a plain allocation from the global
/// allocator instead of a virtual-memory mapping.
pub const MEMORY_RESERVATION: u64 = 0;
pub const MEMORY_GUARD: u64 = 0;
/// Capacity allocated beyond a memory's initial size, so that
/// `memory.grow` (wasi-libc's malloc grows a page or a few at a time)
/// stays in place until it is used up; then the allocation is resized.
pub const MEMORY_GROWTH_RESERVE: u64 = 4 << 20;

/// Applies the settings both sides share. Each of them is recorded in
/// the `.cwasm` and checked when the guest loads it.
pub fn apply_shared(config: &mut Config) {
    // The guest's ring 0 is emulated on PVM hosts and has no handler for
    // faults from Wasm code, so code must never trap by faulting: explicit
    // bounds checks, division checks and stack-limit checks instead.
    config.signals_based_traps(false);
    config.memory_reservation(MEMORY_RESERVATION);
    config.memory_guard_size(MEMORY_GUARD);
    config.memory_reservation_for_growth(MEMORY_GROWTH_RESERVE);
    config.guard_before_linear_memory(false);
    // Copy-on-write memory images need page mappings the guest does not
    // have; data segments are copied at instantiation instead.
    config.memory_init_cow(false);
    config.max_wasm_stack(MAX_WASM_STACK);
    // Cranelift lowers Wasm SIMD with baseline SSE2 but relaxed SIMD's
    // results would then differ from a host with newer extensions; keep
    // modules deterministic across CPUs.
    config.wasm_relaxed_simd(false);
}
