//! The tasks a shim holds, and what create, start, kill and delete do to
//! them (task_api.rs is the ttrpc face). A task is a module running in a
//! clone, or a pod's sandbox, which runs nothing (docs/kubernetes.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use containerd_shim::api;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal};

use crate::cache;
use crate::error::{io, Error, Result};
use crate::process::{self, Exit, ExitCell, Stdio3};
use crate::spec;
use crate::stdin::Stdin;

mod task_api;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Stopped,
}

struct Container {
    bundle: PathBuf,
    /// The rootfs this shim mounted (and unmounts on delete).
    mounted: Option<PathBuf>,
    stdio: Stdio3,
    /// The stdin FIFO's bytes, collected from create on.
    stdin: Option<Arc<Stdin>>,
    workload: Workload,
    /// vmfork's pid once started; the shim's own for a pod sandbox.
    pid: u32,
    exit: Arc<ExitCell>,
    /// Created before start: a kill then ends it without a process.
    started: bool,
}

/// What a task runs.
enum Workload {
    /// A module, in a clone of its template.
    Clone {
        template: PathBuf,
        program: spec::Program,
    },
    /// A Kubernetes pod's sandbox container: no VM and no process. Every
    /// container of the pod is a clone of its own, so the sandbox has
    /// nothing to hold but its place in the pod's life cycle: it runs
    /// from start until killed.
    PodSandbox,
}

impl Container {
    fn status(&self) -> Status {
        match (self.started, self.exit.get()) {
            (_, Some(_)) => Status::Stopped,
            (true, None) => Status::Running,
            (false, None) => Status::Created,
        }
    }
}

/// Shared by the service's clones (one per ttrpc worker).
pub struct Inner {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: Option<Mutex<RemotePublisher>>,
    containers: Mutex<HashMap<String, Container>>,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl Service {
    pub fn new(
        namespace: String,
        exit: Arc<ExitSignal>,
        publisher: Option<RemotePublisher>,
    ) -> Self {
        Service(Arc::new(Inner {
            namespace,
            exit,
            publisher: publisher.map(Mutex::new),
            containers: Mutex::new(HashMap::new()),
        }))
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.0.containers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Publishes an event to containerd (best effort: logged on failure).
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        let publisher = publisher.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = publisher.publish(Context::default(), topic, &self.namespace, event) {
            log::warn!("publishing {topic}: {e}");
        }
    }
}

fn timestamp(at: std::time::SystemTime) -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(at))
}

fn no_exec(exec_id: &str) -> Result<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(Error::Exec(exec_id.to_string()))
    }
}

/// Mounts containerd's rootfs mounts (usually one overlay) on
/// `BUNDLE/rootfs`. Returns the mount point when anything was mounted.
fn mount_rootfs(
    bundle: &Path,
    mounts: &[containerd_shim::protos::types::mount::Mount],
) -> Result<Option<PathBuf>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(io("creating", &target))?;
    for (i, m) in mounts.iter().enumerate() {
        let mounted = crate::mount::mount(&m.type_, &m.source, &m.options, &target);
        if let Err(e) = mounted {
            if i > 0 {
                unmount(&target);
            }
            return Err(Error::Mount {
                fs_type: m.type_.clone(),
                source_path: m.source.clone(),
                target,
                message: e.to_string(),
            });
        }
    }
    Ok(Some(target))
}

fn unmount(target: &Path) {
    let Some(path) = target.to_str() else {
        return;
    };
    if let Err(e) = containerd_shim::mount::umount_recursive(Some(path), libc::MNT_DETACH) {
        log::warn!("unmounting {path}: {e}");
    }
}

impl Service {
    fn create(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        if self.containers().contains_key(&req.id) {
            return Err(Error::Exists(req.id.clone()));
        }
        let bundle = PathBuf::from(&req.bundle);
        if spec::pod_role(&bundle)?.sandbox {
            // The pause image's rootfs is not mounted: nothing reads it.
            log::info!("create {}: pod sandbox (no VM)", req.id);
            self.insert_created(req, bundle, None, None, Workload::PodSandbox);
            return Ok(0);
        }
        let mounted = mount_rootfs(&bundle, &req.rootfs)?;
        let prepared = spec::load(&bundle).and_then(|program| {
            let template = cache::template_for(&cache::state_dir(), &program.kind)?;
            Ok((program, template))
        });
        let prepared = prepared.and_then(|ok| {
            let stdin = if req.stdin.is_empty() {
                None
            } else {
                Some(Stdin::open(&req.stdin)?)
            };
            Ok((ok, stdin))
        });
        let ((program, template), stdin) = match prepared {
            Ok(ok) => ok,
            Err(e) => {
                if let Some(target) = &mounted {
                    unmount(target);
                }
                return Err(e);
            }
        };
        log::info!(
            "create {}: {:?}, template {}",
            req.id,
            program.kind,
            template.display()
        );
        let workload = Workload::Clone { template, program };
        self.insert_created(req, bundle, mounted, stdin, workload);
        Ok(0)
    }

    fn insert_created(
        &self,
        req: &api::CreateTaskRequest,
        bundle: PathBuf,
        mounted: Option<PathBuf>,
        stdin: Option<Arc<Stdin>>,
        workload: Workload,
    ) {
        let container = Container {
            bundle,
            mounted,
            stdio: Stdio3 {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
            },
            stdin,
            workload,
            pid: 0,
            exit: Arc::new(ExitCell::default()),
            started: false,
        };
        self.containers().insert(req.id.clone(), container);
        self.0.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
    }

    fn start(&self, id: &str) -> Result<u32> {
        let mut containers = self.containers();
        let c = containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        if c.status() != Status::Created {
            return Err(Error::Precondition {
                id: id.to_string(),
                message: "already started",
            });
        }
        let (template, program) = match &c.workload {
            Workload::Clone { template, program } => (template, program),
            Workload::PodSandbox => {
                // The shim is what holds the sandbox, so its pid is the
                // sandbox's: the namespace paths containerd writes into
                // the pod's other specs (/proc/PID/ns/...) then name live
                // namespaces (the host's; none of them reach a clone).
                let pid = std::process::id();
                c.pid = pid;
                c.started = true;
                drop(containers);
                self.publish_start(id, pid);
                return Ok(pid);
            }
        };
        let cmd = process::command(&crate::vmfork::bin(), template, program, c.stdin.is_some());
        let inner = Arc::clone(&self.0);
        let cid = id.to_string();
        // The pid is only known after the spawn; the exit event needs it.
        let pid_slot = Arc::new(Mutex::new(0u32));
        let pid_for_exit = Arc::clone(&pid_slot);
        let pid = process::spawn(
            cmd,
            &c.stdio,
            c.stdin.clone(),
            Arc::clone(&c.exit),
            move |exit: Exit| {
                let pid = *pid_for_exit.lock().unwrap_or_else(|p| p.into_inner());
                log::info!("{cid}: vmfork (pid {pid}) exited with {}", exit.status);
                inner.publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: cid.clone(),
                        id: cid,
                        pid,
                        exit_status: exit.status,
                        exited_at: timestamp(exit.at),
                        ..Default::default()
                    }),
                );
            },
        )?;
        *pid_slot.lock().unwrap_or_else(|p| p.into_inner()) = pid;
        c.pid = pid;
        c.started = true;
        drop(containers);
        self.publish_start(id, pid);
        Ok(pid)
    }

    fn publish_start(&self, id: &str, pid: u32) {
        self.0.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id.to_string(),
                pid,
                ..Default::default()
            }),
        );
    }

    /// Ends a task that has no process (not started, or a pod sandbox)
    /// with `status`, as its waiters and containerd's exit event see it.
    fn end_without_process(&self, id: &str, pid: u32, cell: &ExitCell, status: u32) {
        let exit = Exit {
            status,
            at: std::time::SystemTime::now(),
        };
        cell.set(exit);
        self.0.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.to_string(),
                id: id.to_string(),
                pid,
                exit_status: exit.status,
                exited_at: timestamp(exit.at),
                ..Default::default()
            }),
        );
    }

    fn kill(&self, id: &str, signal: u32) -> Result<()> {
        let containers = self.containers();
        let c = containers
            .get(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        match c.status() {
            Status::Stopped => Err(Error::NotFound(format!("{id}: process already finished"))),
            Status::Created => {
                // Nothing runs yet: the task just ends, as if killed.
                let cell = Arc::clone(&c.exit);
                drop(containers);
                self.end_without_process(id, 0, &cell, 128 + signal);
                Ok(())
            }
            Status::Running if matches!(c.workload, Workload::PodSandbox) => {
                let (pid, cell) = (c.pid, Arc::clone(&c.exit));
                drop(containers);
                if let Some(status) = sandbox_exit(signal) {
                    log::info!("{id}: pod sandbox ends on signal {signal} (status {status})");
                    self.end_without_process(id, pid, &cell, status);
                }
                Ok(())
            }
            Status::Running => {
                let sig = libc::c_int::try_from(signal).map_err(|_| Error::Kill {
                    signal,
                    pid: c.pid,
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                })?;
                let pid = libc::pid_t::try_from(c.pid).map_err(|_| Error::Kill {
                    signal,
                    pid: c.pid,
                    source: std::io::Error::from_raw_os_error(libc::ESRCH),
                })?;
                let sent = match process::delivery(sig) {
                    process::Delivery::Ignore => return Ok(()),
                    process::Delivery::Pass(sig) => sig,
                    process::Delivery::End => {
                        c.exit.note_kill(signal);
                        libc::SIGKILL
                    }
                };
                // SAFETY: kill(2) takes plain integers and touches no memory
                // of ours. The pid is our own child's, not yet reported as
                // exited (its waiter sets the exit after reaping it, so the
                // window for a reused pid is that thread's few instructions).
                let rc = unsafe { libc::kill(pid, sent) };
                if rc != 0 {
                    return Err(Error::Kill {
                        signal,
                        pid: c.pid,
                        source: std::io::Error::last_os_error(),
                    });
                }
                Ok(())
            }
        }
    }

    fn delete(&self, id: &str) -> Result<(u32, Exit)> {
        let mut containers = self.containers();
        let c = containers
            .get(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let exit = match (c.status(), c.exit.get()) {
            (Status::Running, _) => {
                return Err(Error::Precondition {
                    id: id.to_string(),
                    message: "still running: kill it first",
                })
            }
            (_, Some(exit)) => exit,
            (_, None) => Exit {
                status: 0,
                at: std::time::SystemTime::now(),
            },
        };
        let Some(c) = containers.remove(id) else {
            return Err(Error::NotFound(id.to_string()));
        };
        drop(containers);
        if let Some(target) = &c.mounted {
            unmount(target);
        }
        log::info!("delete {id} (bundle {})", c.bundle.display());
        self.0.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: c.pid,
                exit_status: exit.status,
                exited_at: timestamp(exit.at),
                ..Default::default()
            }),
        );
        Ok((c.pid, exit))
    }

    /// (pid, wait cell) of a container.
    fn lookup(&self, id: &str) -> Result<(u32, Arc<ExitCell>)> {
        let containers = self.containers();
        let c = containers
            .get(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        Ok((c.pid, Arc::clone(&c.exit)))
    }

    /// The pids of the processes a task runs: vmfork's, or none (not
    /// started, ended, or a pod sandbox, which runs nothing of its own).
    fn processes(&self, id: &str) -> Result<Vec<u32>> {
        let containers = self.containers();
        let c = containers
            .get(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let runs = c.status() == Status::Running && matches!(c.workload, Workload::Clone { .. });
        Ok(if runs { vec![c.pid] } else { Vec::new() })
    }
}

/// How a pod sandbox ends on `signal`, as the pause container it stands in
/// for would: SIGINT and SIGTERM are its clean shutdown (status 0), other
/// signals that end a process end it as killed (128 + signal), and the
/// rest (stop, continue, SIGCHLD, ...) leave it running.
fn sandbox_exit(signal: u32) -> Option<u32> {
    let sig = libc::c_int::try_from(signal).ok()?;
    match process::delivery(sig) {
        process::Delivery::End if sig == libc::SIGINT || sig == libc::SIGTERM => Some(0),
        process::Delivery::End => Some(128 + signal),
        process::Delivery::Pass(_) | process::Delivery::Ignore => None,
    }
}

#[cfg(test)]
mod tests {
    use super::sandbox_exit;

    #[test]
    fn a_sandbox_ends_as_pause_would() {
        assert_eq!(sandbox_exit(libc::SIGTERM as u32), Some(0));
        assert_eq!(sandbox_exit(libc::SIGINT as u32), Some(0));
        assert_eq!(sandbox_exit(libc::SIGKILL as u32), Some(128 + 9));
        assert_eq!(sandbox_exit(libc::SIGHUP as u32), Some(128 + 1));
        assert_eq!(sandbox_exit(libc::SIGSTOP as u32), None);
        assert_eq!(sandbox_exit(libc::SIGCHLD as u32), None);
    }
}
