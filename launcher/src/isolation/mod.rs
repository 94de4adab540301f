//! Isolation of the VMM process itself, applied before any VM exists:
//! resource limits through a cgroup, then the jail (namespaces, a private
//! root, an unprivileged user with no capabilities). docs/security.md.

pub mod cgroup;
pub mod jail;
