//! `--cgroup NAME`: put this vmfork process (one VM, or a clone group)
//! into a cgroup with memory, CPU and task limits, before any VM exists so
//! that every allocation is charged to it.
//!
//! cgroup v2 is used when its hierarchy has the controllers the limits
//! need. Hosts that still bind those controllers to v1 hierarchies (this
//! development host is one: systemd "hybrid" mode) get the v1 files with
//! the same meaning. Neither: a clear error. vmfork creates the cgroup if
//! it is missing and leaves it in place: removing it is the job of whoever
//! manages the group (an empty cgroup is a directory rmdir removes).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};

/// The CFS period used for `--cpu-max PCT%` (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Default)]
pub struct CgroupSpec {
    /// Path below the hierarchy root, e.g. `vmfork/group-1`.
    pub name: String,
    pub memory_max: Option<u64>,
    /// CPU time allowed per CPU_PERIOD_US, in microseconds.
    pub cpu_quota_us: Option<u64>,
    pub pids_max: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// As reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// Where the process went, and what it cost.
#[derive(Debug, Clone)]
pub struct Joined {
    pub version: Version,
    pub dirs: Vec<PathBuf>,
    pub setup_us: u64,
}

fn cg_err(what: String) -> Error {
    Error::Isolation(format!("cgroup: {what}"))
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .map_err(|e| cg_err(format!("write {value:?} to {}: {e}", path.display())))
}

/// Checks a cgroup name: relative, no `..`, no empty components.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "--cgroup {name:?}: a relative path like vmfork/group-1 (no '..', no leading '/')"
        )))
    }
}

/// Controllers the requested limits need (always at least one, so the
/// group can be joined and counted even without limits).
fn controllers(spec: &CgroupSpec) -> Vec<&'static str> {
    let mut c = Vec::new();
    if spec.memory_max.is_some() {
        c.push("memory");
    }
    if spec.cpu_quota_us.is_some() {
        c.push("cpu");
    }
    if spec.pids_max.is_some() || c.is_empty() {
        c.push("pids");
    }
    c
}

/// The cgroup v2 mount, if there is one: /sys/fs/cgroup on unified hosts,
/// /sys/fs/cgroup/unified on hybrid ones.
fn v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
}

fn v2_has(root: &Path, wanted: &[&str]) -> bool {
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    wanted
        .iter()
        .all(|c| available.split_whitespace().any(|a| a == *c))
}

/// Creates the cgroup, applies the limits and moves this process into it.
pub fn join(spec: &CgroupSpec) -> Result<Joined> {
    validate_name(&spec.name)?;
    let started = Instant::now();
    let wanted = controllers(spec);
    let (version, dirs) = match v2_root() {
        Some(root) if v2_has(&root, &wanted) => (Version::V2, vec![join_v2(&root, spec, &wanted)?]),
        _ => match join_v1(spec, &wanted) {
            Ok(dirs) => (Version::V1, dirs),
            Err(v1) => {
                return Err(cg_err(format!(
                    "no writable cgroup v2 hierarchy with the {} controller(s), and cgroup v1 failed too ({v1})",
                    wanted.join(", ")
                )))
            }
        },
    };
    Ok(Joined {
        version,
        dirs,
        setup_us: started.elapsed().as_micros() as u64,
    })
}

fn join_v2(root: &Path, spec: &CgroupSpec, wanted: &[&str]) -> Result<PathBuf> {
    // Every ancestor must delegate the controllers to its children.
    let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
    let mut dir = root.to_path_buf();
    for component in spec.name.split('/') {
        write(&dir.join("cgroup.subtree_control"), enable.trim_end())?;
        dir.push(component);
        if !dir.exists() {
            std::fs::create_dir(&dir)
                .map_err(|e| cg_err(format!("mkdir {}: {e}", dir.display())))?;
        }
    }
    if let Some(bytes) = spec.memory_max {
        write(&dir.join("memory.max"), &bytes.to_string())?;
    }
    if let Some(quota) = spec.cpu_quota_us {
        write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
    }
    if let Some(n) = spec.pids_max {
        write(&dir.join("pids.max"), &n.to_string())?;
    }
    write(&dir.join("cgroup.procs"), "0")?;
    Ok(dir)
}

fn join_v1(spec: &CgroupSpec, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for &controller in wanted {
        let root = Path::new("/sys/fs/cgroup").join(controller);
        if !root.join("cgroup.procs").exists() {
            return Err(cg_err(format!(
                "no v1 {controller} hierarchy at {}",
                root.display()
            )));
        }
        let dir = root.join(&spec.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| cg_err(format!("mkdir {}: {e}", dir.display())))?;
        match controller {
            "memory" => {
                if let Some(bytes) = spec.memory_max {
                    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                }
            }
            "cpu" => {
                if let Some(quota) = spec.cpu_quota_us {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            _ => {
                if let Some(n) = spec.pids_max {
                    write(&dir.join("pids.max"), &n.to_string())?;
                }
            }
        }
        write(&dir.join("cgroup.procs"), "0")?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// `--cpu-max`: `PCT%` of one CPU (may exceed 100 for several), or `max`.
pub fn parse_cpu_max(value: &str) -> Result<Option<u64>> {
    if value == "max" {
        return Ok(None);
    }
    let pct = value
        .strip_suffix('%')
        .and_then(|p| p.parse::<u64>().ok())
        .filter(|p| (1..=100_000).contains(p))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--cpu-max {value:?}: a percentage of one CPU such as 50% or 200%, or max"
            ))
        })?;
    Ok(Some(pct * CPU_PERIOD_US / 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_below_the_hierarchy_root() {
        for good in ["vmfork", "vmfork/group-1", "a/b/c"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a/./b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_max_is_a_share_of_the_period() {
        assert_eq!(parse_cpu_max("50%").ok(), Some(Some(50_000)));
        assert_eq!(parse_cpu_max("200%").ok(), Some(Some(200_000)));
        assert_eq!(parse_cpu_max("max").ok(), Some(None));
        for bad in ["0%", "50", "abc%", "-5%"] {
            assert!(parse_cpu_max(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_group_without_limits_still_has_a_controller_to_join() {
        assert_eq!(controllers(&CgroupSpec::default()), vec!["pids"]);
        let all = CgroupSpec {
            memory_max: Some(1),
            cpu_quota_us: Some(1),
            pids_max: Some(1),
            ..Default::default()
        };
        assert_eq!(controllers(&all), vec!["memory", "cpu", "pids"]);
    }
}
