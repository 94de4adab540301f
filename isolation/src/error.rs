/// Every way isolation can fail. The CLI maps each to its exit status
/// through [`Error::exit_code`] (README, "Errors").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The jail or cgroup could not be set up.
    #[error("{0}")]
    Isolation(String),
    /// A jail directory root cannot safely build in: not root's, writable
    /// by others, or reached through a symlink.
    #[error("{0}")]
    UnsafeJail(String),
    /// A seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error(
        "cannot open /dev/kvm: {0} (is KVM loaded, and does this user have access to /dev/kvm?)"
    )]
    KvmUnavailable(std::io::Error),
}

/// Exit status of a seccomp failure: a filter that could not be installed
/// (`Error::Seccomp`), or a thread that made a system call its list forbids
/// (reported by the SIGSYS handler in seccomp/report.rs, which exits
/// directly).
pub const EXIT_SECCOMP: i32 = 18;

/// Exit status of a `--jail` directory that is unsafe to build in.
pub const EXIT_UNSAFE_JAIL: i32 = 24;

impl Error {
    /// Process exit status; the same numbers as the VMM's errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidArgument(_) => 3,
            Error::KvmUnavailable(_) => 4,
            Error::Seccomp(_) => EXIT_SECCOMP,
            Error::Isolation(_) => 19,
            Error::UnsafeJail(_) => EXIT_UNSAFE_JAIL,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
