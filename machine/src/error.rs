use std::path::PathBuf;

/// Every way the launcher can fail. Each variant maps to a distinct process
/// exit status (see [`Error::exit_code`]) so scripts can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(
        "cannot open /dev/kvm: {0} (is KVM loaded, and does this user have access to /dev/kvm?)"
    )]
    KvmUnavailable(std::io::Error),
    #[error("this host cannot run what was asked: {0}")]
    HostUnsupported(String),
    #[error("cannot read kernel {path}: {source}")]
    KernelUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is neither an ELF nor a bzImage kernel")]
    KernelFormat { path: PathBuf },
    #[error("cannot load kernel: {0}")]
    KernelLoad(String),
    #[error("guest memory too small: {0}")]
    MemoryTooSmall(String),
    #[error("cannot use {what} {path}: {source}")]
    Image {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A template's rootfs image is missing or not the file the template
    /// was built with (identity, or with --verify its digest).
    #[error("rootfs image {path}: {what} since the template was built; refusing it (rebuild the template)")]
    RootfsChanged { path: PathBuf, what: String },
    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("guest memory: {0}")]
    GuestMemory(String),
    #[error("MP table: {0}")]
    MpTable(String),
    #[error("{what} at RIP={rip:#x}")]
    GuestShutdown { what: String, rip: u64 },
    /// The guest ended the VM cleanly (`EX` 0: poweroff, halt or reboot
    /// through its agent) while something was still expected of it.
    #[error("{0}")]
    GuestEnded(String),
    #[error("{0}")]
    GuestEmulation(String),
    #[error("guest crashed: {0}")]
    GuestCrash(String),
    #[error("guest exited with status {0}")]
    GuestExitStatus(u8),
    #[error("vCPU {index}: {reason}")]
    Vcpu { index: usize, reason: String },
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("template {path}: {reason}")]
    Template { path: PathBuf, reason: String },
    #[error("control socket {0}")]
    Control(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// Seccomp, the jail or a cgroup failed (vmfork-isolation).
    #[error(transparent)]
    Isolation(#[from] vmfork_isolation::Error),
    /// A uffd clone's page server ended abnormally, so the clone was
    /// stopped rather than run on memory nobody serves.
    #[error("the userfaultfd page server died: {0}")]
    PageServer(String),
    /// `template push` or `pull`: the registry failed or refused, or
    /// what it holds is not a template this vmfork can use
    /// (vmfork-registry).
    #[error("{0}")]
    Registry(String),
    /// The registry wants credentials, or refused the ones given.
    #[error("{0}")]
    RegistryAuth(String),
    /// A Lambda function failed during its init phase, so no template
    /// could be taken (its output follows the first line).
    #[error("{0}")]
    FunctionInit(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A stop signal ended the work early. The CLI exits with 128 + the
    /// signal; 130 (SIGINT's) where the signal is not known.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A child process (a `clone --processes` worker) already printed its
    /// one-line error; exit with its status without adding another line.
    #[error("exit status {0}, already reported")]
    Reported(i32),
}

/// Exit status of a seccomp failure (vmfork-isolation).
pub use vmfork_isolation::error::EXIT_SECCOMP;

impl Error {
    /// Process exit status for this error. Documented in the README; keep
    /// them stable because scripts and tests match on them.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io(_) | Error::Kvm { .. } | Error::GuestMemory(_) | Error::Vcpu { .. } => 1,
            // 2 is clap's status for a malformed command line.
            Error::InvalidArgument(_) => 3,
            Error::KvmUnavailable(_) => 4,
            Error::HostUnsupported(_) => 5,
            Error::KernelUnreadable { .. } => 6,
            Error::KernelFormat { .. } | Error::KernelLoad(_) => 7,
            Error::MemoryTooSmall(_) | Error::MpTable(_) => 8,
            Error::Image { .. } => 9,
            Error::GuestShutdown { .. } | Error::GuestEnded(_) => 10,
            Error::GuestEmulation(_) => 11,
            Error::GuestCrash(_) => 12,
            Error::GuestExitStatus(_) => 13,
            Error::Timeout(_) => 14,
            Error::Snapshot(_) => 15,
            Error::Template { .. } => 16,
            Error::Control(_) => 17,
            Error::Isolation(e) => e.exit_code(),
            Error::PageServer(_) => 20,
            Error::RootfsChanged { .. } => 21,
            Error::Registry(_) => 25,
            Error::RegistryAuth(_) => 26,
            Error::FunctionInit(_) => 27,
            Error::Interrupted(_) => 130,
            Error::Reported(code) => *code,
        }
    }

    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
