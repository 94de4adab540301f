//! What the shim takes from a bundle's OCI spec: what to run (a Wasm
//! module, when process.args[0] resolved inside the root filesystem is
//! one; otherwise the image is a Linux one and the whole root filesystem
//! is what runs), its arguments, environment and working directory, and,
//! for a container of a Kubernetes pod, its place in the pod.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{io, Error, Result};

/// The four bytes every WebAssembly binary module starts with.
const WASM_MAGIC: &[u8; 4] = b"\0asm";

#[derive(Debug, Clone)]
pub struct Program {
    pub kind: Kind,
    /// process.args as given: args[0] is the program's argv[0].
    pub args: Vec<String>,
    /// process.env entries, NAME=VALUE.
    pub env: Vec<String>,
    /// process.cwd (the image's WorkingDir, or `/`).
    pub cwd: PathBuf,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// A Wasm image: the module on the host (inside the mounted rootfs).
    Wasm { module: PathBuf },
    /// A Linux image: its root filesystem on the host, as mounted.
    Linux { root: PathBuf },
}

/// The annotations containerd's CRI plugin puts on every container it
/// creates (containerd 1.6, pkg/cri/annotations): "sandbox" for the pod's
/// sandbox ("pause") container, "container" for the others.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The pod's sandbox id, on the sandbox and on every container of the pod.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A container's place in a Kubernetes pod (nothing, outside CRI).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRole {
    /// The pod's sandbox container itself.
    pub sandbox: bool,
    /// The pod it belongs to.
    pub sandbox_id: Option<String>,
}

fn read(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|source| Error::Spec { path, source })
}

/// The pod role `BUNDLE/config.json` gives its container.
pub fn pod_role(bundle: &Path) -> Result<PodRole> {
    let spec = read(bundle)?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    Ok(PodRole {
        sandbox: annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox"),
        sandbox_id: annotations
            .get(SANDBOX_ID)
            .filter(|id| !id.is_empty())
            .cloned(),
    })
}

/// Reads `BUNDLE/config.json` and finds the module it names.
pub fn load(bundle: &Path) -> Result<Program> {
    let spec = read(bundle)?;
    let process = spec.process().as_ref().ok_or(Error::NoModule)?;
    let args = process.args().clone().unwrap_or_default();
    let arg0 = args
        .first()
        .filter(|a| !a.is_empty())
        .ok_or(Error::NoModule)?;
    let root = match spec.root() {
        Some(root) if root.path().is_absolute() => root.path().clone(),
        Some(root) => bundle.join(root.path()),
        None => bundle.join("rootfs"),
    };
    let kind = match resolve_in_root(&root, process.cwd(), arg0) {
        Some(module) if is_wasm(&module)? => Kind::Wasm { module },
        // A program the guest finds on its PATH, a script, an ELF: the
        // guest's agent resolves and runs it, and says so when it cannot.
        _ => Kind::Linux { root },
    };
    Ok(Program {
        kind,
        args,
        env: process.env().clone().unwrap_or_default(),
        cwd: process.cwd().clone(),
    })
}

/// How many symlinks a lookup follows before giving up (the kernel's
/// limit for one path).
const MAX_LINKS: usize = 40;

/// `arg0` looked up inside `root` as if `root` were `/` (chroot
/// semantics): absolute paths and absolute symlink targets start at the
/// root, relative ones at the process's `cwd` or the link's directory,
/// and `..` never climbs above the root. None when it does not lead to a
/// regular file. The result is a path with no symlink in it, under
/// `root`: nothing outside the container's root filesystem is ever read.
fn resolve_in_root(root: &Path, cwd: &Path, arg0: &str) -> Option<PathBuf> {
    let arg = Path::new(arg0);
    // What is still to walk, next last, and the path walked so far
    // (relative to the root, free of symlinks).
    let mut todo: Vec<Part> = Vec::new();
    push_parts(&mut todo, arg);
    if !arg.is_absolute() {
        push_parts(&mut todo, cwd);
        todo.push(Part::Root);
    }
    let mut walked = PathBuf::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part {
            Part::Root => walked = PathBuf::new(),
            Part::Parent => {
                walked.pop();
            }
            Part::Name(name) => {
                let next = walked.join(name);
                let meta = std::fs::symlink_metadata(root.join(&next)).ok()?;
                if !meta.file_type().is_symlink() {
                    walked = next;
                    continue;
                }
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                let target = std::fs::read_link(root.join(&next)).ok()?;
                push_parts(&mut todo, &target);
                if target.is_absolute() {
                    todo.push(Part::Root);
                }
            }
        }
    }
    let path = root.join(walked);
    path.is_file().then_some(path)
}

/// One step of a lookup.
enum Part {
    Root,
    Parent,
    Name(std::ffi::OsString),
}

/// Queues `path`'s components so that its first is popped next.
fn push_parts(todo: &mut Vec<Part>, path: &Path) {
    let start = todo.len();
    for component in path.components() {
        match component {
            Component::Normal(name) => todo.push(Part::Name(name.to_os_string())),
            Component::ParentDir => todo.push(Part::Parent),
            // The root is pushed by the caller when it matters; `.` and
            // prefixes (none on Unix) change nothing.
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    todo[start..].reverse();
}

/// Whether the file starts with the WebAssembly magic. A directory or an
/// unreadable file is not a module.
fn is_wasm(path: &Path) -> Result<bool> {
    if !path.is_file() {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(io("opening", path))?;
    let read = file.read(&mut magic).map_err(io("reading", path))?;
    Ok(read == magic.len() && &magic == WASM_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmfork-shim-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/app")).expect("scratch dir");
        dir
    }

    #[test]
    fn lookups_stay_inside_the_root_as_in_a_chroot() {
        let dir = scratch("resolve");
        let root = dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::write(root.join("app/m.wasm"), b"\0asm\x01\0\0\0").expect("write");
        std::fs::write(dir.join("secret.wasm"), b"\0asm\x01\0\0\0").expect("write");
        // A link to the host's file: inside the root it names nothing.
        std::os::unix::fs::symlink(dir.join("secret.wasm"), root.join("escape.wasm"))
            .expect("symlink");
        std::os::unix::fs::symlink("/app/m.wasm", root.join("bin/absolute")).expect("symlink");
        std::os::unix::fs::symlink("../app/m.wasm", root.join("bin/relative")).expect("symlink");
        std::os::unix::fs::symlink("loop-b", root.join("bin/loop-a")).expect("symlink");
        std::os::unix::fs::symlink("loop-a", root.join("bin/loop-b")).expect("symlink");
        let module = root.join("app/m.wasm");
        let look = |cwd: &str, arg0: &str| resolve_in_root(&root, Path::new(cwd), arg0);
        assert_eq!(look("/", "/app/m.wasm"), Some(module.clone()));
        assert_eq!(look("/app", "m.wasm"), Some(module.clone()));
        assert_eq!(look("/app", "./m.wasm"), Some(module.clone()));
        // `..` stops at the root.
        assert_eq!(look("/", "/../../app/m.wasm"), Some(module.clone()));
        assert_eq!(look("/", "/../secret.wasm"), None);
        assert_eq!(look("/", "/escape.wasm"), None);
        assert_eq!(look("/", "/bin/absolute"), Some(module.clone()));
        assert_eq!(look("/bin", "relative"), Some(module.clone()));
        assert_eq!(look("/", "/bin/loop-a"), None);
        // A directory or a missing file is no program to inspect.
        assert_eq!(look("/", "/app"), None);
        assert_eq!(look("/", "sh"), None);
        std::fs::write(root.join("app/sh"), b"#!/bin/sh\n").expect("write");
        assert!(!is_wasm(&root.join("app/sh")).expect("a script"));
        assert!(!is_wasm(&root.join("app")).expect("a directory"));
        assert!(is_wasm(&module).expect("a module"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_the_pod_role_from_cri_annotations() {
        let dir = scratch("role");
        let write = |annotations: &str| {
            let spec = format!(r#"{{"ociVersion":"1.0.2","annotations":{{{annotations}}}}}"#);
            std::fs::write(dir.join("config.json"), spec).expect("write spec");
        };
        write(
            r#""io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"pod1""#,
        );
        let role = pod_role(&dir).expect("sandbox");
        assert!(role.sandbox);
        assert_eq!(role.sandbox_id.as_deref(), Some("pod1"));
        write(
            r#""io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"pod1""#,
        );
        assert_eq!(
            pod_role(&dir).expect("container"),
            PodRole {
                sandbox: false,
                sandbox_id: Some("pod1".into())
            }
        );
        write("");
        assert_eq!(pod_role(&dir).expect("ctr"), PodRole::default());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
