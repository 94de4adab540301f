//! What the shim takes from a bundle's OCI spec: the module (process.args[0]
//! resolved inside the root filesystem), its arguments and its environment,
//! and, for a container of a Kubernetes pod, its place in the pod.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{io, Error, Result};

/// The four bytes every WebAssembly binary module starts with.
const WASM_MAGIC: &[u8; 4] = b"\0asm";

#[derive(Debug, Clone)]
pub struct Program {
    /// The module on the host (inside the mounted rootfs).
    pub module: PathBuf,
    /// process.args as given: args[0] is the module's argv[0].
    pub args: Vec<String>,
    /// process.env entries, NAME=VALUE.
    pub env: Vec<String>,
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
    let module = resolve(&root, process.cwd(), arg0)?;
    check_wasm(arg0, &module)?;
    Ok(Program {
        module,
        args,
        env: process.env().clone().unwrap_or_default(),
    })
}

/// `arg0` inside `root`: absolute paths from the root, relative ones from
/// the process's `cwd`. `..` is refused, and so is a path whose real
/// location (after symlinks) is outside the root.
fn resolve(root: &Path, cwd: &Path, arg0: &str) -> Result<PathBuf> {
    let outside = || Error::OutsideRootfs(arg0.to_string());
    let mut inside = PathBuf::new();
    let arg = Path::new(arg0);
    let start = if arg.is_absolute() {
        Path::new("/")
    } else {
        cwd
    };
    for component in start.components().chain(arg.components()) {
        match component {
            Component::Normal(part) => inside.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    let path = root.join(inside);
    let real = path
        .canonicalize()
        .map_err(io("finding the module", &path))?;
    let real_root = root
        .canonicalize()
        .map_err(io("finding the container's rootfs", root))?;
    if !real.starts_with(&real_root) {
        return Err(outside());
    }
    Ok(real)
}

fn check_wasm(arg0: &str, module: &Path) -> Result<()> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(module).map_err(io("opening the module", module))?;
    let read = file
        .read(&mut magic)
        .map_err(io("reading the module", module))?;
    if read < magic.len() || &magic != WASM_MAGIC {
        return Err(Error::NotWasm {
            arg0: arg0.to_string(),
            path: module.to_path_buf(),
        });
    }
    Ok(())
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
    fn resolves_inside_the_root_and_refuses_escapes() {
        let dir = scratch("resolve");
        let root = dir.join("rootfs");
        std::fs::write(root.join("app/m.wasm"), b"\0asm\x01\0\0\0").expect("write");
        std::fs::write(dir.join("secret.wasm"), b"\0asm\x01\0\0\0").expect("write");
        std::os::unix::fs::symlink(dir.join("secret.wasm"), root.join("link.wasm"))
            .expect("symlink");
        let real_root = root.canonicalize().expect("root");
        assert_eq!(
            resolve(&root, Path::new("/"), "/app/m.wasm").expect("absolute"),
            real_root.join("app/m.wasm")
        );
        assert_eq!(
            resolve(&root, Path::new("/app"), "m.wasm").expect("relative"),
            real_root.join("app/m.wasm")
        );
        assert!(matches!(
            resolve(&root, Path::new("/"), "/../secret.wasm"),
            Err(Error::OutsideRootfs(_))
        ));
        assert!(matches!(
            resolve(&root, Path::new("/"), "/link.wasm"),
            Err(Error::OutsideRootfs(_))
        ));
        std::fs::write(root.join("app/sh"), b"#!/bin/sh\n").expect("write");
        assert!(matches!(
            check_wasm("/app/sh", &root.join("app/sh")),
            Err(Error::NotWasm { .. })
        ));
        assert!(check_wasm("/app/m.wasm", &root.join("app/m.wasm")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
