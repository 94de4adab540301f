//! The Wasm guest (guest-wasm/, built by tests/build.rs) booted for real
//! with modules precompiled by vmfork-wasm: output on the console, exit
//! statuses, traps caught by explicit checks, WASI, and load errors.

use std::path::PathBuf;

use vmfork_tests::{exit, vmfork, Run, Scratch};

fn guest_elf() -> String {
    let elf = PathBuf::from(env!("VMFORK_GUEST_WASM_ELF"));
    assert!(elf.exists(), "{} is missing", elf.display());
    elf.to_string_lossy().into_owned()
}

/// Precompiles `wat` into `scratch/name.cwasm` and returns its path.
fn cwasm(scratch: &Scratch, name: &str, wat: &str) -> String {
    let bytes = vmfork_wasm::precompile(wat.as_bytes()).expect("precompile");
    let path = scratch.str(&format!("{name}.cwasm"));
    std::fs::write(&path, bytes).expect("write .cwasm");
    path
}

/// Boots the Wasm guest with `module` as its initrd.
fn boot(module: &str, cmdline: &str) -> Run {
    vmfork(&[
        "boot",
        "--kernel",
        &guest_elf(),
        "--initrd",
        module,
        "--cmdline",
        cmdline,
    ])
}

/// The guest exited with `status` through the exit port.
fn assert_guest_status(run: &Run, status: u8) {
    if status == 0 {
        assert_eq!(run.status, 0, "{run}");
    } else {
        assert_eq!(run.status, exit::GUEST_EXIT_STATUS, "{run}");
        assert!(
            run.stderr
                .contains(&format!("guest exited with status {status}\n")),
            "{run}"
        );
    }
}

/// Where `needle` starts in stdout; fails the test if it is absent.
fn at(run: &Run, needle: &str) -> usize {
    run.stdout
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} missing: {run}"))
}

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Hello from WebAssembly!\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 24))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 7))))"#;

#[test]
fn hello_prints_after_ready_and_exits_with_the_modules_status() {
    let scratch = Scratch::new("wasm-hello");
    let run = boot(&cwasm(&scratch, "hello", HELLO), "wasm_run=1");
    assert_guest_status(&run, 7);
    assert!(at(&run, "vmfork-guest: READY") < at(&run, "Hello from WebAssembly!\n"));
    assert!(run.stdout.contains("_start ran"), "{run}");
}

#[test]
fn returning_from_start_is_status_zero() {
    let scratch = Scratch::new("wasm-return");
    let wat = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
    let run = boot(&cwasm(&scratch, "return", wat), "wasm_run=1 quiet=1");
    assert_guest_status(&run, 0);
    assert!(run.stdout.contains("vmfork-guest: READY"), "{run}");
    assert!(!run.stdout.contains("_start ran"), "quiet=1: {run}");
}

/// Each trap comes from an explicit check in the code (no fault, no
/// ring-0 handler) and ends the guest with status 134.
#[test]
fn traps_are_reported_and_exit_134() {
    let scratch = Scratch::new("wasm-traps");
    let cases = [
        (
            "div",
            "(drop (i32.div_u (i32.const 1) (i32.const 0)))",
            "integer divide by zero",
        ),
        (
            "oob",
            "(drop (i32.load (i32.const 65534)))",
            "out of bounds memory access",
        ),
        (
            "unreachable",
            "unreachable",
            "wasm `unreachable` instruction executed",
        ),
        (
            "stack",
            "(call $deep (i64.const 0)) drop",
            "call stack exhausted",
        ),
    ];
    for (name, body, message) in cases {
        let wat = format!(
            r#"(module
              (memory (export "memory") 1)
              (func $deep (param i64) (result i64)
                (i64.add (call $deep (local.get 0)) (i64.const 1)))
              (func (export "_start") {body}))"#
        );
        let run = boot(&cwasm(&scratch, name, &wat), "wasm_run=1 quiet=1");
        assert_guest_status(&run, 134);
        assert!(
            run.stdout
                .contains(&format!("vmfork-wasm: trap: wasm trap: {message}")),
            "{name}: {run}"
        );
    }
}

#[test]
fn wizer_initialize_runs_before_ready() {
    let scratch = Scratch::new("wasm-wizer");
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "init\n")
      (data (i32.const 32) "start\n")
      (func $say (param i32 i32)
        (i32.store (i32.const 0) (local.get 0))
        (i32.store (i32.const 4) (local.get 1))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
      (func (export "wizer.initialize") (call $say (i32.const 16) (i32.const 5)))
      (func (export "_start") (call $say (i32.const 32) (i32.const 6))))"#;
    let run = boot(&cwasm(&scratch, "wizer", wat), "wasm_run=1 quiet=1");
    assert_guest_status(&run, 0);
    let (init, ready, start) = (
        at(&run, "init\n"),
        at(&run, "vmfork-guest: READY"),
        at(&run, "start\n"),
    );
    assert!(init < ready && ready < start, "{run}");
}

/// Clocks move forward, randomness is not all zeros, and the calls the
/// guest does not support (stdin, seek, preopens) answer as specified.
#[test]
fn wasi_clocks_random_and_stdio() {
    let scratch = Scratch::new("wasm-wasi");
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "clock_time_get" (func $time (param i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func $check (param i32 i32) (if (i32.eqz (local.get 0)) (then (call $exit (local.get 1)))))
      (func (export "_start")
        (call $check (i32.eqz (call $time (i32.const 1) (i64.const 0) (i32.const 0))) (i32.const 1))
        (call $check (i32.eqz (call $time (i32.const 1) (i64.const 0) (i32.const 8))) (i32.const 2))
        (call $check (i64.gt_u (i64.load (i32.const 8)) (i64.load (i32.const 0))) (i32.const 3))
        (call $check (i32.eq (call $time (i32.const 9) (i64.const 0) (i32.const 0)) (i32.const 28)) (i32.const 4))
        (call $check (i32.eqz (call $random (i32.const 16) (i32.const 32))) (i32.const 5))
        (call $check (i64.ne (i64.or (i64.load (i32.const 16)) (i64.load (i32.const 24))) (i64.const 0)) (i32.const 6))
        (i32.store (i32.const 64) (i32.const 99))
        (call $check (i32.eqz (call $read (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 64))) (i32.const 7))
        (call $check (i32.eqz (i32.load (i32.const 64))) (i32.const 8))
        (call $check (i32.eq (call $seek (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 0)) (i32.const 70)) (i32.const 9))
        (call $check (i32.eq (call $prestat (i32.const 3) (i32.const 0)) (i32.const 8)) (i32.const 10))
        (call $check (i32.eq (call $random (i32.const 65530) (i32.const 16)) (i32.const 21)) (i32.const 11))
        (call $exit (i32.const 42))))"#;
    let run = boot(&cwasm(&scratch, "wasi", wat), "wasm_run=1 quiet=1");
    assert_guest_status(&run, 42);
}

/// Code for baseline x86-64 only: Wasm SIMD lowered to SSE2, and the
/// scalar rounding, population count and bit scans that newer extensions
/// would do in one instruction (runtime calls or longer sequences).
#[test]
fn simd_and_rounding_work_on_baseline_x86_64() {
    let scratch = Scratch::new("wasm-simd");
    let run = boot(&cwasm(&scratch, "simd", SIMD), "wasm_run=1 quiet=1");
    assert_guest_status(&run, 42);
}

const SIMD: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $check (param i32 i32) (if (i32.eqz (local.get 0)) (then (call $exit (local.get 1)))))
  (func (export "_start") (local v128)
    ;; i32x4 add, mul, and lane extract
    (local.set 0 (i32x4.mul (i32x4.add (v128.const i32x4 1 2 3 4) (v128.const i32x4 10 20 30 40)) (v128.const i32x4 2 2 2 2)))
    (call $check (i32.eq (i32x4.extract_lane 3 (local.get 0)) (i32.const 88)) (i32.const 1))
    ;; i64x2.mul, i8x16.popcnt, f32x4.ceil, i8x16.shuffle, i32x4.min_s
    (call $check (i64.eq (i64x2.extract_lane 1 (i64x2.mul (v128.const i64x2 3 5) (v128.const i64x2 7 11))) (i64.const 55)) (i32.const 2))
    (call $check (i32.eq (i8x16.extract_lane_u 0 (i8x16.popcnt (v128.const i8x16 255 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0))) (i32.const 8)) (i32.const 3))
    (call $check (f32.eq (f32x4.extract_lane 0 (f32x4.ceil (v128.const f32x4 1.25 0 0 0))) (f32.const 2)) (i32.const 4))
    (call $check (i32.eq (i8x16.extract_lane_u 0 (i8x16.shuffle 15 1 2 3 4 5 6 7 8 9 10 11 12 13 14 0 (v128.const i8x16 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16) (v128.const i8x16 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0))) (i32.const 16)) (i32.const 5))
    (call $check (i32.eq (i32x4.extract_lane 0 (i32x4.min_s (v128.const i32x4 -5 0 0 0) (v128.const i32x4 3 0 0 0))) (i32.const -5)) (i32.const 6))
    ;; scalar rounding (SSE4.1 roundss otherwise) and popcnt/ctz
    (call $check (f64.eq (f64.floor (f64.const -1.5)) (f64.const -2)) (i32.const 7))
    (call $check (f32.eq (f32.nearest (f32.const 2.5)) (f32.const 2)) (i32.const 8))
    (call $check (f64.eq (f64.trunc (f64.const -3.7)) (f64.const -3)) (i32.const 9))
    (call $check (i32.eq (i32.popcnt (i32.const 0xff00ff)) (i32.const 16)) (i32.const 10))
    (call $check (i64.eq (i64.ctz (i64.const 0x100)) (i64.const 8)) (i32.const 11))
    (call $check (i32.eq (i32.clz (i32.const 1)) (i32.const 31)) (i32.const 12))
    (call $exit (i32.const 42))))"#;

/// READY comes after loading and instantiation, so a template holds an
/// instantiated module; a restored copy answers the VMM's resume.
#[test]
fn a_template_at_ready_restores() {
    let scratch = Scratch::new("wasm-template");
    let module = cwasm(&scratch, "hello", HELLO);
    let template = scratch.str("tpl");
    let build = vmfork(&[
        "template",
        "build",
        "--kernel",
        &guest_elf(),
        "--initrd",
        &module,
        "--cmdline",
        "quiet=1",
        "--out",
        &template,
    ]);
    assert_eq!(build.status, 0, "{build}");
    assert!(
        !build.stdout.contains("Hello"),
        "_start ran before INVOKE: {build}"
    );
    let restore = vmfork(&["restore", &template, "--exit-on-ready"]);
    assert_eq!(restore.status, 0, "{restore}");
}

#[test]
fn without_a_module_the_guest_says_so() {
    let run = vmfork(&["boot", "--kernel", &guest_elf(), "--cmdline", "wasm_run=1"]);
    assert_guest_status(&run, 4);
    assert!(run.stdout.contains("no module"), "{run}");
}

#[test]
fn a_module_not_made_by_vmfork_wasm_is_refused() {
    let scratch = Scratch::new("wasm-garbage");
    // Plain Wasm, not a precompiled module.
    let wasm = scratch.str("plain.wasm");
    std::fs::write(&wasm, b"\0asm\x01\0\0\0").expect("write");
    let run = boot(&wasm, "wasm_run=1");
    assert_guest_status(&run, 5);
    assert!(
        run.stdout
            .contains("vmfork-wasm: error: loading the module"),
        "{run}"
    );
}

#[test]
fn a_bad_command_line_value_is_refused() {
    let scratch = Scratch::new("wasm-cmdline");
    let run = boot(&cwasm(&scratch, "hello", HELLO), "wasm_run=yes");
    assert_guest_status(&run, 2);
    assert!(run.stdout.contains("wasm_run=yes"), "{run}");
}
