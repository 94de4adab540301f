//! The one error type of the builder. Every message is a single line that
//! says what to do next; the binary prints it and exits non-zero.

use std::path::PathBuf;
use std::process::ExitStatus;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Linux source {} not found; install linux-source-6.12 (scripts/setup-host.sh)",
        .0.display()
    )]
    MissingLinuxSource(PathBuf),

    #[error(
        "busybox {} not found; install busybox-static (scripts/setup-host.sh)",
        .0.display()
    )]
    MissingBusybox(PathBuf),

    #[error(
        "{} is dynamically linked; the rootfs has no libc, install busybox-static",
        .0.display()
    )]
    BusyboxNotStatic(PathBuf),

    #[error("`{tool}` not found in PATH; run scripts/setup-host.sh")]
    MissingTool { tool: String },

    /// `log` holds the command's full output; the binary prints its tail.
    #[error("{step} failed ({status}); log: {}", log.display())]
    CommandFailed {
        step: String,
        status: ExitStatus,
        log: PathBuf,
    },

    /// kconfig drops an option whose dependencies are unmet without a word;
    /// this is that silence turned into an error.
    #[error(
        "kernel config lost {} option(s) of {fragment} after olddefconfig (unmet dependencies?): {}",
        missing.len(),
        missing.join(", ")
    )]
    ConfigOptionsLost {
        fragment: String,
        missing: Vec<String>,
    },

    #[error("{} does not exist; give the directory tree to build the image from", .0.display())]
    TreeMissing(PathBuf),

    #[error("{} is not a directory; give the directory tree to build the image from", .0.display())]
    TreeNotDirectory(PathBuf),

    #[error("{} already exists; pass --force to overwrite it", .0.display())]
    OutputExists(PathBuf),

    #[error("{} is a directory; --out needs an image file name", .0.display())]
    OutputIsDirectory(PathBuf),

    #[error("{}: {why}", path.display())]
    TreeConflict { path: PathBuf, why: String },

    #[error(
        "image size {0} bytes is not a non-zero multiple of 2 MiB, which the VMM maps the image in"
    )]
    BadImageSize(u64),

    #[error(
        "image size {} MiB is too small for the tree: it needs at least {} MiB",
        size >> 20,
        needed >> 20
    )]
    ImageTooSmall { size: u64, needed: u64 },

    #[error("no cache directory: set HOME or XDG_CACHE_HOME, or pass --cache DIR")]
    NoCacheDir,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done, e.g. "read /x".
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The log file worth showing the end of, if any.
    pub fn log_path(&self) -> Option<&std::path::Path> {
        match self {
            Error::CommandFailed { log, .. } => Some(log),
            _ => None,
        }
    }

    /// The last `lines` lines of that log, to print before the error line.
    pub fn log_tail(&self, lines: usize) -> Option<String> {
        self.log_path().map(|log| tail(log, lines))
    }
}

/// The last `lines` lines of a log, for showing next to an error. Reads only
/// the end of the file: a kernel build log runs to megabytes.
pub(crate) fn tail(log: &std::path::Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX)));
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
