//! What travels through a machine's control state: why it stopped, and
//! what its owner is asked and answers.

use std::time::Duration;

/// Why a VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `--exit-on-ready` and the guest signalled ready.
    ReadyReached,
    /// The guest asked to exit with this status.
    GuestExit(u8),
    /// KVM_EXIT_SHUTDOWN (triple fault), a system event or an i8042 reset.
    GuestShutdown { what: String, rip: u64 },
    /// KVM could not run guest code (internal error, failed entry).
    GuestEmulation(String),
    /// The guest's kernel reported an unexpected exception.
    GuestCrash { vector: u8 },
    /// The owner asked (Ctrl-C, SIGTERM, end of a hold period).
    Requested,
    /// The owner's deadline passed before the guest was ready.
    Timeout(Duration),
    /// A vCPU ioctl failed in a way that is not the guest's doing.
    VcpuFailed(String),
    /// The guest took a command from the ready port and never acknowledged
    /// it, which the ABI requires (docs/guest-abi.md); the string says which.
    Unresponsive(String),
    /// The userfaultfd handler serving a clone's memory ended abnormally;
    /// the clone must not run on (clone/uffd.rs). The string says why.
    PageServerDied(String),
}

/// What the owner of a running VM is asked to do, by its control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    Snapshot {
        out: std::path::PathBuf,
        diff: bool,
    },
    /// Send a command word to the parked guest and wait for its
    /// acknowledgement (PING, DIRTY n).
    Command(u32),
    Pause,
    Resume,
}

pub struct OwnerRequest {
    pub kind: RequestKind,
    /// Where the owner sends its answer.
    pub reply: std::sync::mpsc::Sender<Answer>,
}

/// The owner's answer to a request: what was done, or why not.
pub type Answer = std::result::Result<Reply, Refusal>;

/// What the owner did for a request (cli/api.rs puts it on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Paused,
    Resumed,
    /// The guest acknowledged the command this long after the request.
    Acknowledged {
        ack_us: u64,
    },
    Snapshot(SnapshotDone),
}

/// A template written on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDone {
    pub out: std::path::PathBuf,
    pub snapshot_us: u64,
    pub state_bytes: u64,
    pub memory_bytes: u64,
    pub memory_written_bytes: u64,
    pub dirty_pages: Option<u64>,
    pub dirty_scan_us: Option<u64>,
}

/// Why the owner did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the VM is paused")]
    Paused,
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("the guest did not wait for a command within {:.1} s", .0.as_secs_f64())]
    NotWaiting(Duration),
    #[error("the VM stopped before the guest acknowledged")]
    StoppedBeforeAck,
    #[error("the guest did not take the command")]
    NotTaken,
    /// The guest took a command and stayed silent, so it was stopped
    /// (`StopReason::Unresponsive` with the same words).
    #[error("{0}; the VM is stopped")]
    Unresponsive(String),
    #[error("{0}")]
    Snapshot(crate::error::Error),
}

/// What woke the owner up.
pub enum OwnerEvent {
    Stopped(StopReason),
    Request(OwnerRequest),
}
