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
    #[error("the OCI spec has no process.args[0]: the image needs an entrypoint or a command (a Wasm image: the module's path, e.g. \"Entrypoint\": [\"/hello.wasm\"])")]
    NoModule,
    #[error("a Linux image needs the guest kernel, and {} is not a file (set VMFORK_SHIM_KERNEL, or put the kernel there; docs/containerd.md)", .0.display())]
    NoKernel(PathBuf),
    #[error("mounting the rootfs ({fs_type} from {source_path}) on {}: {message}", target.display())]
    Mount {
        fs_type: String,
        source_path: String,
        target: PathBuf,
        message: String,
    },
    #[error("`{what}` failed ({status}): {stderr}")]
    Build {
        what: String,
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
            Error::NoModule => ttrpc::Code::INVALID_ARGUMENT,
            Error::NoKernel(_) => ttrpc::Code::FAILED_PRECONDITION,
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
