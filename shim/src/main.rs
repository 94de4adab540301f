//! `containerd-shim-vmfork-v1`: a containerd runtime v2 shim (runtime type
//! `io.containerd.vmfork.v1`) that runs Wasm and Linux images in vmfork
//! clones.
//!
//! When `process.args[0]` names a WASI module in the image, the container
//! is that module; otherwise the image is a Linux root filesystem and the
//! container is its program, run by the guest agent. On create the shim
//! builds (once per module or tree, cached by SHA-256) a vmfork template;
//! on start it runs `vmfork clone TEMPLATE -n 1 -- ARGS`, whose output and
//! exit status are the program's. See docs/containerd.md.

#![deny(unsafe_op_in_unsafe_fn)]

mod cache;
mod error;
mod linux;
mod mount;
mod process;
mod service;
mod spec;
mod stdin;
mod vmfork;

use std::sync::Arc;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.vmfork.v1";

struct Shim {
    namespace: String,
    /// The ttrpc socket this shim serves (empty for `start` and `delete`).
    socket: String,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Shim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim {
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim per Kubernetes pod, one per container otherwise: the
    /// socket address is derived from the grouping id, and a shim started
    /// for an address that already answers hands containerd that address
    /// and exits (the crate's server start), as runc's shim does for a pod.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = std::env::current_dir()
            .ok()
            .and_then(|bundle| spec::pod_role(&bundle).ok())
            .and_then(|role| role.sandbox_id)
            .unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd's cleanup after a shim that died: the working directory
    /// is the bundle; unmount its rootfs if a mount is left there.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        if let Ok(bundle) = std::env::current_dir() {
            let rootfs = bundle.join("rootfs");
            if let Some(path) = rootfs.to_str() {
                let _ = containerd_shim::mount::umount_recursive(Some(path), libc::MNT_DETACH);
            }
        }
        Ok(DeleteResponse {
            exit_status: 128 + 9,
            exited_at: MessageField::some(Timestamp::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The crate removes the socket named in BUNDLE/address, read from
        // the working directory: the first container's bundle, which
        // containerd may delete as soon as Shutdown answers (a pod's
        // sandbox is deleted last). The address is known here, so the
        // socket goes now; the listener keeps working until the server
        // stops.
        if let Some(path) = self.socket.strip_prefix("unix://") {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("removing the shim socket {path}: {e}");
            }
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        service::Service::new(
            self.namespace.clone(),
            Arc::clone(&self.exit),
            Some(publisher),
        )
    }
}

fn main() {
    // The shim waits for its own children (std::process::Child::wait): the
    // crate's SIGCHLD reaper would take their exit statuses first. (The
    // crate reads these before Shim::new, so they are set here.)
    let config = Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    };
    containerd_shim::run::<Shim>(RUNTIME_ID, Some(config));
}
