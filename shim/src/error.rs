//! The one error type of the shim, and how each kind reaches containerd
//! (a ttrpc status code with the message).

use std::path::PathBuf;

use containerd_shim::protos::ttrpc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the OCI spec {}: {source}", path.display())]
    Spec {
        path: PathBuf,
        source: oci_spec::OciSpecError,
    },
    #[error("the OCI spec has no process.args[0]: a Wasm image needs the module's path as its entrypoint (e.g. \"Entrypoint\": [\"/hello.wasm\"])")]
    NoModule,
    #[error("the module path {0:?} leaves the container's root filesystem")]
    OutsideRootfs(String),
    #[error("{} (process.args[0] {arg0:?}) is not a WebAssembly module: it does not start with \\0asm (vmfork runs Wasm images only)", path.display())]
    NotWasm { arg0: String, path: PathBuf },
    #[error("mounting the rootfs ({fs_type} from {source_path}) on {}: {message}", target.display())]
    Mount {
        fs_type: String,
        source_path: String,
        target: PathBuf,
        message: String,
    },
    #[error("`vmfork template build --wasm {}` failed ({status}): {stderr}", module.display())]
    Build {
        module: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("running {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("task {0} not found")]
    NotFound(String),
    #[error("task {0} already exists")]
    Exists(String),
    #[error("task {id}: {message}")]
    Precondition { id: String, message: &'static str },
    #[error("exec processes (exec id {0:?}) are not supported by the vmfork shim")]
    Exec(String),
    #[error("sending signal {signal} to pid {pid}: {source}")]
    Kill {
        signal: u32,
        pid: u32,
        source: std::io::Error,
    },
}

impl Error {
    fn code(&self) -> ttrpc::Code {
        match self {
            Error::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Error::Exists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::Precondition { .. } => ttrpc::Code::FAILED_PRECONDITION,
            Error::Exec(_) => ttrpc::Code::UNIMPLEMENTED,
            Error::NoModule | Error::NotWasm { .. } | Error::OutsideRootfs(_) => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            Error::Spec { .. } => ttrpc::Code::INVALID_ARGUMENT,
            _ => ttrpc::Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        log::warn!("{e}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `map_err` helper: an io::Error with what was being done and to which path.
pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
