//! `--jail`, `--uid`, `--gid` and the `--cgroup` limits shared by `boot`,
//! `restore`, `clone` and `serve`.

use std::path::PathBuf;

use clap::Args;

use super::args::{count, parse_size, Parsed};
use vmfork_isolation::cgroup::{self, CgroupSpec, Joined};
use vmfork_isolation::jail::{self, JailSpec};
use vmfork_machine::error::{Error, Result};

#[derive(Debug, Args, Default)]
pub struct IsolationArgs {
    /// Run jailed (needs root): new mount, PID and network namespaces with
    /// DIR as the root, as --uid:--gid with no capabilities. Paths given
    /// to the command (templates, kernels) are then inside DIR.
    #[arg(long, value_name = "DIR", requires_all = ["uid", "gid"])]
    pub jail: Option<PathBuf>,
    /// The user the jailed VMM runs as.
    #[arg(long, value_name = "UID", requires = "jail")]
    pub uid: Option<u32>,
    /// The group the jailed VMM runs as.
    #[arg(long, value_name = "GID", requires = "jail")]
    pub gid: Option<u32>,
    /// Join (creating it if needed) the cgroup NAME, a path below the
    /// hierarchy root (v2, or v1 where the controllers are still bound to
    /// v1), before any VM exists.
    #[arg(long, value_name = "NAME")]
    pub cgroup: Option<String>,
    /// memory.max of the cgroup, e.g. 512M.
    #[arg(long, value_name = "SIZE", requires = "cgroup", value_parser = Parsed(parse_size))]
    pub memory_max: Option<u64>,
    /// cpu.max of the cgroup as a share of one CPU, e.g. 50% or 200%.
    #[arg(long, value_name = "PCT", requires = "cgroup", value_parser = Parsed(cpu_max))]
    pub cpu_max: Option<CpuQuota>,
    /// pids.max of the cgroup (threads count: one per vCPU).
    #[arg(long, value_name = "N", requires = "cgroup", value_parser = count::<u64>(1, 1 << 22))]
    pub pids_max: Option<u64>,
}

/// `--cpu-max`: microseconds of CPU per period, or None for `max`.
#[derive(Debug, Clone, Copy)]
pub struct CpuQuota(Option<u64>);

fn cpu_max(text: &str) -> std::result::Result<CpuQuota, String> {
    cgroup::parse_cpu_max(text)
        .map(CpuQuota)
        .map_err(|_| "a percentage of one CPU such as 50% or 200%, or max".into())
}

impl IsolationArgs {
    /// Joins the cgroup (from the host's view, so before the jail hides
    /// it), then enters the jail. Returns in the process that goes on to
    /// run VMs; with --jail the original process waits and exits with its
    /// status.
    pub fn apply(&self) -> Result<Option<Joined>> {
        let joined = match &self.cgroup {
            Some(name) => Some(cgroup::join(&CgroupSpec {
                name: name.clone(),
                memory_max: self.memory_max,
                cpu_quota_us: self.cpu_max.and_then(|CpuQuota(quota)| quota),
                pids_max: self.pids_max,
            })?),
            None => None,
        };
        if let Some(root) = &self.jail {
            let (Some(uid), Some(gid)) = (self.uid, self.gid) else {
                return Err(Error::InvalidArgument(
                    "--jail needs --uid and --gid".into(),
                ));
            };
            // /sys and /proc/cpuinfo are out of sight once inside.
            vmfork_machine::kvm_host::HostVirt::detect();
            jail::enter(&JailSpec {
                root: root.clone(),
                uid,
                gid,
            })?;
        }
        Ok(joined)
    }
}
