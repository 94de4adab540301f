//! vmfork-wasm: the host side of vmfork's Wasm guest (guest-wasm/).
//! It compiles WebAssembly to x86-64 code ahead of time with the one
//! engine configuration the guest also runs with ([`engine_config`]),
//! and refuses modules that import what the guest does not provide.
//! See docs/wasm.md.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod engine_config;
pub mod template;
pub mod wasi;

use wasmtime::{Config, Engine, ExternType, Module, ValType};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not WebAssembly (binary or text): {}", first_line(.0))]
    Parse(#[from] wat::Error),
    #[error("configuring the Wasm engine: {0}")]
    Config(String),
    #[error("compiling the module: {0}")]
    Compile(String),
    #[error("serializing the compiled module: {0}")]
    Serialize(String),
    #[error("the module needs imports the Wasm guest does not provide: {}", .0.join(", "))]
    Imports(Vec<String>),
    /// The guest ended before READY: the module failed to load, trapped
    /// or exited while initializing (`wizer.initialize`).
    #[error("the module failed while initializing (guest exit status {0}: 134 is a trap; its message is on the console)")]
    Init(u8),
    #[error(transparent)]
    Vm(vmfork_machine::error::Error),
}

impl Error {
    /// Whether the module is at fault (a deploy's 4xx), not the host.
    pub fn is_module_error(&self) -> bool {
        !matches!(self, Error::Vm(_) | Error::Config(_) | Error::Serialize(_))
    }
}

/// At the command line's edge, a module's fault is an invalid argument.
impl From<Error> for vmfork_machine::error::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Vm(e) => e,
            other => vmfork_machine::error::Error::InvalidArgument(other.to_string()),
        }
    }
}

/// A parse error's message without the source excerpt wat adds below it.
fn first_line(e: &wat::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Wasmtime's errors carry a chain of causes; `{:#}` prints all of them.
fn chain(e: impl std::fmt::Display) -> String {
    format!("{e:#}")
}

/// The host's configuration: [`engine_config::apply_shared`] plus what
/// only a compiler has. Code targets baseline x86-64 (SSE2, no AVX), the
/// most the guest's ring 3 is built for, whatever the build host's CPU.
pub fn host_config() -> Result<Config, Error> {
    let mut config = Config::new();
    engine_config::apply_shared(&mut config);
    config
        .target(engine_config::TARGET)
        .map_err(|e| Error::Config(chain(e)))?;
    // SAFETY: both settings are Cranelift flags Wasmtime knows. Wasmtime
    // requires them off without signals-based traps, because the
    // mitigation clamps an out-of-bounds address to null and relies on the
    // fault; the explicit bounds check still traps before any access.
    unsafe {
        config.cranelift_flag_set("enable_heap_access_spectre_mitigation", "false");
        config.cranelift_flag_set("enable_table_access_spectre_mitigation", "false");
    }
    config.with_custom_code_memory(Some(std::sync::Arc::new(NeverRun)));
    Ok(config)
}

/// The host engine compiles for the guest and never runs what it compiles
/// (checking a module's imports loads it, though): publishing its code as
/// executable would take mprotect(PROT_EXEC), which vmfork's seccomp lists
/// refuse to every thread, so it is left as it is.
struct NeverRun;

impl wasmtime::CustomCodeMemory for NeverRun {
    fn required_alignment(&self) -> usize {
        4096
    }

    fn publish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }

    fn unpublish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// The host engine, compiling for the guest.
pub fn host_engine() -> Result<Engine, Error> {
    Engine::new(&host_config()?).map_err(|e| Error::Config(chain(e)))
}

/// Compiles `wasm` (binary, or WAT text) into the `.cwasm` the Wasm guest
/// loads, after checking its imports.
pub fn precompile(wasm: &[u8]) -> Result<Vec<u8>, Error> {
    let engine = host_engine()?;
    let module = compile(&engine, wasm)?;
    module.serialize().map_err(|e| Error::Serialize(chain(e)))
}

/// Compiles `wasm` (binary or WAT) with `engine` and checks its imports.
pub fn compile(engine: &Engine, wasm: &[u8]) -> Result<Module, Error> {
    let binary = wat::parse_bytes(wasm)?;
    let module = Module::new(engine, &binary).map_err(|e| Error::Compile(chain(e)))?;
    check_imports(&module)?;
    Ok(module)
}

/// Refuses `module` unless it imports only functions of the guest's WASI
/// subset ([`wasi::FUNCTIONS`]) with their exact signatures; the error
/// names every import that is not.
pub fn check_imports(module: &Module) -> Result<(), Error> {
    let bad: Vec<String> = module
        .imports()
        .filter_map(|import| {
            let what = format!("{}::{}", import.module(), import.name());
            let supported = (import.module() == wasi::MODULE)
                .then(|| wasi::find(import.name()))
                .flatten();
            match (supported, import.ty()) {
                (None, _) => Some(what),
                (Some((_, params, results)), ExternType::Func(ty)) => {
                    let same = tys_match(ty.params(), params) && tys_match(ty.results(), results);
                    (!same).then(|| format!("{what} (with signature {ty})"))
                }
                (Some(_), _) => Some(format!("{what} (not a function)")),
            }
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Imports(bad))
    }
}

fn tys_match(got: impl ExactSizeIterator<Item = ValType>, want: &[wasi::Ty]) -> bool {
    got.len() == want.len()
        && got.zip(want).all(|(g, w)| match w {
            wasi::Ty::I32 => matches!(g, ValType::I32),
            wasi::Ty::I64 => matches!(g, ValType::I64),
        })
}

#[cfg(test)]
mod tests;
