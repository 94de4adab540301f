use super::*;

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")))"#;

#[test]
fn precompiles_wat_into_a_cwasm_this_engine_loads() {
    let cwasm = precompile(HELLO.as_bytes()).expect("precompile");
    let engine = host_engine().expect("engine");
    // SAFETY: the bytes are what `precompile` wrote just now.
    let module = unsafe { Module::deserialize(&engine, &cwasm) }.expect("deserialize");
    assert_eq!(module.imports().count(), 1);
}

#[test]
fn precompiles_binary_wasm_too() {
    let binary = wat::parse_str(HELLO).expect("wat");
    precompile(&binary).expect("precompile a binary");
}

#[test]
fn refuses_garbage_with_a_parse_error() {
    let err = precompile(b"(module (func").expect_err("garbage");
    assert!(matches!(err, Error::Parse(_)), "{err}");
}

#[test]
fn names_every_unsupported_import() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "env" "host_call" (func))
      (import "env" "mem" (memory 1)))"#;
    let err = precompile(wat.as_bytes()).expect_err("unsupported imports");
    let msg = err.to_string();
    for name in [
        "wasi_snapshot_preview1::path_open",
        "env::host_call",
        "env::mem",
    ] {
        assert!(msg.contains(name), "{msg} lacks {name}");
    }
    assert!(!msg.contains("fd_write"), "{msg}");
}

#[test]
fn refuses_a_supported_name_with_the_wrong_signature() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "proc_exit" (func (param i64))))"#;
    let err = precompile(wat.as_bytes()).expect_err("bad signature");
    assert!(
        err.to_string().contains("proc_exit (with signature"),
        "{err}"
    );
}

#[test]
fn accepts_the_whole_subset() {
    let mut wat = String::from("(module\n");
    for (name, params, results) in wasi::FUNCTIONS {
        let tys = |ts: &[wasi::Ty]| {
            ts.iter()
                .map(|t| match t {
                    wasi::Ty::I32 => " i32",
                    wasi::Ty::I64 => " i64",
                })
                .collect::<String>()
        };
        wat.push_str(&format!(
            "(import \"{}\" \"{name}\" (func (param{}) (result{})))\n",
            wasi::MODULE,
            tys(params),
            tys(results)
        ));
    }
    wat.push(')');
    precompile(wat.as_bytes()).expect("the whole subset");
}

#[test]
fn host_runs_what_it_compiles_with_explicit_checks() {
    // Out of bounds and division by zero must trap through the explicit
    // checks this configuration asks for (no signal handlers involved).
    let wat = r#"(module
      (memory 1)
      (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
      (func (export "div") (param i32) (result i32) (i32.div_u (i32.const 7) (local.get 0))))"#;
    // Runs the code here, on the host: unlike the host engine, this one
    // must publish it executable.
    let mut config = host_config().expect("config");
    config.with_custom_code_memory(None);
    let engine = Engine::new(&config).expect("engine");
    let module = compile(&engine, wat.as_bytes()).expect("compile");
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiate");
    let load = instance
        .get_typed_func::<i32, i32>(&mut store, "load")
        .expect("load");
    let div = instance
        .get_typed_func::<i32, i32>(&mut store, "div")
        .expect("div");
    assert_eq!(load.call(&mut store, 0).expect("in bounds"), 0);
    let trap = load.call(&mut store, 65536).expect_err("out of bounds");
    assert_eq!(
        trap.downcast_ref::<wasmtime::Trap>(),
        Some(&wasmtime::Trap::MemoryOutOfBounds)
    );
    assert_eq!(div.call(&mut store, 2).expect("7/2"), 3);
    let trap = div.call(&mut store, 0).expect_err("divide by zero");
    assert_eq!(
        trap.downcast_ref::<wasmtime::Trap>(),
        Some(&wasmtime::Trap::IntegerDivisionByZero)
    );
}

#[test]
fn the_guest_configuration_loads_the_code() {
    // What guest-wasm/ does: the shared settings, no compiler, and a CPU
    // that reports no feature past baseline x86-64. Loading checks every
    // ISA flag the code was compiled with against that report, so this
    // fails if precompiled code needed SSE4.1, AVX, POPCNT or the like.
    let cwasm = precompile(HELLO.as_bytes()).expect("precompile");
    let mut config = Config::new();
    engine_config::apply_shared(&mut config);
    config.enable_compiler(false);
    // SAFETY: claims fewer features than any x86-64 host has.
    unsafe { config.detect_host_feature(|_| Some(false)) };
    let engine = Engine::new(&config).expect("guest-like engine");
    // SAFETY: the bytes are what `precompile` wrote just now.
    unsafe { Module::deserialize(&engine, &cwasm) }.expect("guest-like engine loads the code");
}
