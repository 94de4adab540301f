//! The Wasm guest (guest-wasm/, embedded in vmfork by vmfork-wasm) booted
//! for real with modules precompiled by vmfork-wasm: output on the console,
//! exit statuses, traps caught by explicit checks, WASI, and load errors.

use std::sync::OnceLock;

use vmfork_tests::{exit, vmfork, Run, Scratch};

/// The embedded Wasm guest as a file `vmfork boot --kernel` can take: in
/// the temporary directory (the rig's checkout is read-only), named by its
/// content so every test process and run of one build shares one copy,
/// and placed by an atomic rename so processes never see half of one.
fn guest_elf() -> String {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let elf = vmfork_wasm::template::GUEST_ELF;
        let digest: String = Sha256::digest(elf)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = std::env::temp_dir();
        let path = dir.join(format!("vmfork-guest-wasm-{digest}.elf"));
        if !path.exists() {
            let tmp = dir.join(format!("vmfork-guest-wasm-{digest}.{}", std::process::id()));
            std::fs::write(&tmp, elf).expect("write the guest");
            std::fs::rename(&tmp, &path).expect("place the guest");
        }
        path.to_string_lossy().into_owned()
    })
    .clone()
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
        "_start ran before any EXEC: {build}"
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

// ---------------------------------------------------------------------
// The exec protocol: `vmfork clone DIR -n N -- ARGS` sends EXEC to every
// clone of a template taken at READY, and the guest runs `_start` with
// the request's argv, environment and stdin, capturing its output.

/// WASI imports and helpers every exec module below shares: `$write`
/// (fd, ptr, len), `$dec` (a u64 in decimal and a newline, to fd 1) and
/// `$hex` (bytes at ptr in hex and a newline, to fd 1). Scratch memory:
/// the iovec at 0, number digits below 4000, hex digits at 4096, hex
/// output from 4200; callers use 8192 and up.
const EXEC_PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $env_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $time (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 4096) "0123456789abcdef")
  (func $write (param $fd i32) (param $p i32) (param $n i32)
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $dec (param $v i64) (local $p i32)
    (i32.store8 (i32.const 4000) (i32.const 10))
    (local.set $p (i32.const 4000))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (call $write (i32.const 1) (local.get $p) (i32.sub (i32.const 4001) (local.get $p))))
  (func $hex (param $p i32) (param $n i32) (local $i i32) (local $b i32)
    (block $done (loop $byte
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $b (i32.load8_u (i32.add (local.get $p) (local.get $i))))
      (i32.store8 (i32.add (i32.const 4200) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 4096) (i32.shr_u (local.get $b) (i32.const 4)))))
      (i32.store8 (i32.add (i32.const 4201) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 4096) (i32.and (local.get $b) (i32.const 15)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $byte)))
    (i32.store8 (i32.add (i32.const 4200) (i32.shl (local.get $n) (i32.const 1))) (i32.const 10))
    (call $write (i32.const 1) (i32.const 4200) (i32.add (i32.shl (local.get $n) (i32.const 1)) (i32.const 1))))
"#;

/// A module of `EXEC_PRELUDE` and `body`, the rest of the module's fields.
fn exec_module(body: &str) -> String {
    format!("(module {EXEC_PRELUDE} {body})")
}

/// A template of the Wasm guest with `wat` loaded, taken at READY.
fn exec_template(scratch: &Scratch, name: &str, wat: &str) -> String {
    let module = cwasm(scratch, name, wat);
    let template = scratch.str(&format!("{name}-tpl"));
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
    template
}

/// `vmfork clone TEMPLATE -n N OPTIONS -- COMMAND`.
fn clone_exec(template: &str, n: usize, options: &[&str], command: &[&str]) -> Run {
    let count = n.to_string();
    let mut args = vec!["clone", template, "-n", &count];
    args.extend_from_slice(options);
    args.push("--");
    args.extend_from_slice(command);
    vmfork(&args)
}

/// What clone `id` printed on `stream`, its prefix taken off.
fn clone_lines(stream: &str, id: usize) -> Vec<String> {
    let prefix = format!("clone {id}: ");
    stream
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// Prints each argument, each environment entry and the bytes of stdin,
/// one per line: `arg: ...`, `env: ...`, `stdin: N`.
const ARGS_ENV_STDIN: &str = r#"
  (data (i32.const 8000) "arg: env: stdin: ")
  (func $strings (param $ptrs i32) (param $n i32) (param $label i32) (local $i i32) (local $s i32) (local $len i32)
    (block $done (loop $each
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $s (i32.load (i32.add (local.get $ptrs) (i32.shl (local.get $i) (i32.const 2)))))
      (local.set $len (i32.const 0))
      (block $end (loop $scan
        (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $s) (local.get $len)))))
        (local.set $len (i32.add (local.get $len) (i32.const 1)))
        (br $scan)))
      ;; the NUL becomes the line's newline
      (i32.store8 (i32.add (local.get $s) (local.get $len)) (i32.const 10))
      (call $write (i32.const 1) (local.get $label) (i32.const 5))
      (call $write (i32.const 1) (local.get $s) (i32.add (local.get $len) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $each))))
  (func (export "_start") (local $total i64)
    (drop (call $args_sizes (i32.const 8192) (i32.const 8196)))
    (drop (call $args_get (i32.const 8200) (i32.const 12288)))
    (call $strings (i32.const 8200) (i32.load (i32.const 8192)) (i32.const 8000))
    (drop (call $env_sizes (i32.const 8192) (i32.const 8196)))
    (drop (call $env_get (i32.const 8200) (i32.const 12288)))
    (call $strings (i32.const 8200) (i32.load (i32.const 8192)) (i32.const 8005))
    ;; stdin, read to its end in chunks of at most 1000 bytes
    (i32.store (i32.const 16) (i32.const 20000))
    (i32.store (i32.const 20) (i32.const 1000))
    (block $eof (loop $more
      (br_if $eof (i32.ne (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)) (i32.const 0)))
      (br_if $eof (i32.eqz (i32.load (i32.const 24))))
      (local.set $total (i64.add (local.get $total) (i64.extend_i32_u (i32.load (i32.const 24)))))
      (br $more)))
    (call $write (i32.const 1) (i32.const 8010) (i32.const 7))
    (call $dec (local.get $total)))
"#;

#[test]
fn exec_passes_args_env_and_stdin_to_every_clone() {
    let scratch = Scratch::new("wasm-exec-args");
    let template = exec_template(&scratch, "args", &exec_module(ARGS_ENV_STDIN));
    // Longer than one read of the module's, so that it reads several.
    let stdin = scratch.str("stdin");
    std::fs::write(&stdin, vec![b'.'; 2500]).expect("write stdin");
    let run = clone_exec(
        &template,
        3,
        &["--stdin", &stdin, "--env", "GREETING=hello there"],
        &["prog", "a", "b c"],
    );
    assert_eq!(run.status, 0, "{run}");
    for id in 1..=3 {
        let lines = clone_lines(&run.stdout, id);
        let args: Vec<_> = lines.iter().filter(|l| l.starts_with("arg: ")).collect();
        assert_eq!(
            args,
            ["arg: prog", "arg: a", "arg: b c"],
            "clone {id}: {run}"
        );
        assert!(
            lines.iter().any(|l| l == "env: GREETING=hello there"),
            "clone {id}: {run}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("stdin: 2500"),
            "clone {id}: {run}"
        );
    }
}

#[test]
fn exec_random_bytes_differ_in_every_clone() {
    let scratch = Scratch::new("wasm-exec-random");
    let wat = exec_module(
        r#"(func (export "_start")
             (if (call $random (i32.const 8192) (i32.const 16)) (then (call $exit (i32.const 1))))
             (call $hex (i32.const 8192) (i32.const 16)))"#,
    );
    let template = exec_template(&scratch, "random", &wat);
    let run = clone_exec(&template, 20, &[], &["random"]);
    assert_eq!(run.status, 0, "{run}");
    let mut seen = std::collections::HashSet::new();
    for id in 1..=20 {
        let lines = clone_lines(&run.stdout, id);
        assert_eq!(lines.len(), 1, "clone {id}: {run}");
        let hex = &lines[0];
        assert!(
            hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "clone {id}: {hex:?}"
        );
        assert!(seen.insert(hex.clone()), "clone {id} repeats {hex}: {run}");
    }
}

fn unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i128
}

/// REALTIME in each clone is the host's time: between the host's clock
/// read before `vmfork clone` started and after it ended, give or take
/// 50 ms. Without the clone-info page's time it would count from the
/// template's boot, decades off.
#[test]
fn exec_realtime_is_the_hosts_time() {
    let scratch = Scratch::new("wasm-exec-clock");
    let wat = exec_module(
        r#"(func (export "_start")
             (if (call $time (i32.const 0) (i64.const 0) (i32.const 8192)) (then (call $exit (i32.const 1))))
             (call $dec (i64.load (i32.const 8192)))
             ;; MONOTONIC moves forward
             (if (call $time (i32.const 1) (i64.const 0) (i32.const 8200)) (then (call $exit (i32.const 2))))
             (if (call $time (i32.const 1) (i64.const 0) (i32.const 8208)) (then (call $exit (i32.const 3))))
             (if (i64.le_u (i64.load (i32.const 8208)) (i64.load (i32.const 8200))) (then (call $exit (i32.const 4)))))"#,
    );
    let template = exec_template(&scratch, "clock", &wat);
    let slack = 50_000_000i128;
    let before = unix_ns();
    let run = clone_exec(&template, 3, &[], &["clock"]);
    let after = unix_ns();
    assert_eq!(run.status, 0, "{run}");
    for id in 1..=3 {
        let lines = clone_lines(&run.stdout, id);
        let guest: i128 = lines
            .first()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("clone {id}: no time: {run}"));
        assert!(
            before - slack <= guest && guest <= after + slack,
            "clone {id}: {guest} not within 50 ms of [{before}, {after}] ({} ms wide): {run}",
            (after - before) / 1_000_000
        );
    }
}

#[test]
fn exec_trap_is_the_trapped_outcome() {
    let scratch = Scratch::new("wasm-exec-trap");
    let wat = exec_module(
        r#"(data (i32.const 8192) "before the trap\n")
           (func (export "_start")
             (call $write (i32.const 2) (i32.const 8192) (i32.const 16))
             unreachable)"#,
    );
    let template = exec_template(&scratch, "trap", &wat);
    let run = clone_exec(&template, 1, &[], &["trap"]);
    assert_eq!(run.status, 134, "{run}");
    assert!(run.stderr.contains("clone 1: trap trapped"), "{run}");
    let err = clone_lines(&run.stderr, 1);
    assert_eq!(
        err.first().map(String::as_str),
        Some("before the trap"),
        "{run}"
    );
    let last = err
        .iter()
        .rfind(|l| l.starts_with("vmfork-wasm: "))
        .unwrap_or_else(|| panic!("no trap line: {run}"));
    assert_eq!(
        last, "vmfork-wasm: trap: wasm trap: wasm `unreachable` instruction executed",
        "{run}"
    );
}

#[test]
fn exec_proc_exit_is_the_exit_status() {
    let scratch = Scratch::new("wasm-exec-exit");
    let wat = exec_module(
        r#"(data (i32.const 8192) "exiting\n")
           (func (export "_start")
             (call $write (i32.const 1) (i32.const 8192) (i32.const 8))
             (call $exit (i32.const 3)))"#,
    );
    let template = exec_template(&scratch, "exit", &wat);
    let run = clone_exec(&template, 2, &[], &["exit"]);
    assert_eq!(run.status, 3, "{run}");
    for id in 1..=2 {
        assert_eq!(clone_lines(&run.stdout, id), ["exiting"], "{run}");
        assert!(
            run.stderr
                .contains(&format!("clone {id}: exit exited with status 3")),
            "{run}"
        );
    }
}

/// 300 bytes on each stream, in three writes, kept to the first 100.
#[test]
fn exec_output_past_the_cap_is_cut_and_flagged() {
    let scratch = Scratch::new("wasm-exec-cap");
    let wat = exec_module(
        r#"(func (export "_start") (local $i i32)
             (memory.fill (i32.const 8192) (i32.const 111) (i32.const 99))
             (i32.store8 (i32.const 8291) (i32.const 10))
             (memory.fill (i32.const 8300) (i32.const 101) (i32.const 99))
             (i32.store8 (i32.const 8399) (i32.const 10))
             (loop $again
               (call $write (i32.const 1) (i32.const 8192) (i32.const 100))
               (call $write (i32.const 2) (i32.const 8300) (i32.const 100))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $again (i32.lt_u (local.get $i) (i32.const 3)))))"#,
    );
    let template = exec_template(&scratch, "cap", &wat);
    let run = clone_exec(&template, 1, &["--output-cap", "150"], &["cap"]);
    assert_eq!(run.status, 0, "{run}");
    let (o, e) = ("o".repeat(99), "e".repeat(99));
    assert_eq!(clone_lines(&run.stdout, 1), [o.as_str(), &o[..50]], "{run}");
    assert_eq!(
        clone_lines(&run.stderr, 1)
            .iter()
            .filter(|l| l.starts_with('e'))
            .collect::<Vec<_>>(),
        [e.as_str(), &e[..50]],
        "{run}"
    );
    for stream in ["stdout", "stderr"] {
        assert!(
            run.stderr
                .contains(&format!("clone 1: {stream} cut at 150 bytes")),
            "{run}"
        );
    }
}
