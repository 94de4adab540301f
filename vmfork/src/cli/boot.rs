//! `vmfork boot`: cold-boot a pc-lite VM.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::json;

use super::args::{count, format_size, parse_duration, parse_size, Parsed};
use super::isolation::IsolationArgs;
use super::signals;
use vmfork_guest_abi::{BuiltinFunction, FUNCTION_NAMES};
use vmfork_machine::boot::loader::{BootProtocol, KernelSource};
use vmfork_machine::control::StopReason;
use vmfork_machine::devices::console::Console;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::kvm_host::KvmHost;
use vmfork_machine::machine::{vmm_rss_kib, Machine, MachineConfig, MAX_VCPUS};
use vmfork_machine::stop::stop_result;
use vmfork_template::{api, owner};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    /// 64-bit direct entry (ELF) or the bzImage 64-bit entry.
    Linux64,
    /// PVH entry of an ELF kernel with a PVH note.
    Pvh,
}

/// What describes a VM to boot; shared by `boot` and `template build`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Kernel: an ELF (64-bit or PVH entry) or a bzImage. Default: the
    /// guest embedded in vmfork.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk for Linux kernels.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// ext4 image (4 KiB blocks) mapped read-only as persistent memory for
    /// a DAX root filesystem (/dev/pmem0).
    #[arg(long, value_name = "IMG")]
    pub rootfs: Option<PathBuf>,
    /// Guest RAM, e.g. 128M or 1G.
    #[arg(long, default_value = "128M", value_name = "SIZE", value_parser = Parsed(parse_size))]
    pub mem: u64,
    /// Number of vCPUs (one thread each).
    #[arg(long, default_value = "1", value_name = "N", value_parser = count::<u8>(1, MAX_VCPUS as u64))]
    pub vcpus: u8,
    /// Kernel command line. Default: none for the embedded guest;
    /// "console=ttyS0 earlyprintk=serial,ttyS0 reboot=t panic=-1" (plus a DAX root
    /// with --rootfs) otherwise.
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Built-in function of the embedded guest that INVOKE runs (echo,
    /// sha256, json-upper, counter; for tests crash, spin, triple-fault,
    /// no-ack, port-flood, mmio-flood, interrupt-storm, page-table-write,
    /// page-table-build, msr-write, fpu-write); adds
    /// `function=NAME` to the command line. See `vmfork serve`.
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    /// Boot protocol for ELF kernels.
    #[arg(long, value_enum, default_value = "linux64")]
    pub boot_protocol: ProtocolArg,
    /// Discard the guest console instead of streaming it to stdout.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Stop the VM as soon as the guest signals ready.
    #[arg(long)]
    pub exit_on_ready: bool,
    /// Fail if the guest is not ready within this time (e.g. 30, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = Parsed(parse_duration))]
    pub timeout: Option<Duration>,
    /// Print one JSON object with timings on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Listen for control requests (snapshot, ping, pause, resume, stop) on
    /// this Unix socket; see `vmfork ctl`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    #[command(flatten)]
    pub isolation: IsolationArgs,
}

const LINUX_DEFAULT_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 reboot=t panic=-1";
const DAX_ROOT_CMDLINE: &str = "root=/dev/pmem0 ro rootwait rootflags=dax init=/init";

impl VmArgs {
    pub fn kernel_source(&self) -> KernelSource {
        match &self.kernel {
            Some(p) => KernelSource::File(p.clone()),
            None => KernelSource::Embedded(vmfork_machine::EMBEDDED_GUEST),
        }
    }

    pub fn cmdline(&self) -> String {
        let mut cmdline = match (&self.cmdline, &self.kernel) {
            (Some(c), _) => c.clone(),
            (None, None) => String::new(),
            (None, Some(_)) => LINUX_DEFAULT_CMDLINE.to_string(),
        };
        if let Some(name) = &self.function {
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str("function=");
            cmdline.push_str(name);
        }
        if self.rootfs.is_some() && !cmdline.split_whitespace().any(|w| w.starts_with("root=")) {
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(DAX_ROOT_CMDLINE);
        }
        cmdline
    }

    pub fn machine_config(&self, started: Instant, exit_on_ready: bool) -> Result<MachineConfig> {
        if let Some(name) = &self.function {
            if self.kernel.is_some() {
                return Err(Error::InvalidArgument(
                    "--function needs the embedded guest (leave out --kernel)".into(),
                ));
            }
            if BuiltinFunction::parse(name.as_bytes()).is_none() {
                return Err(Error::InvalidArgument(format!(
                    "--function {name}: unknown; the embedded guest has {FUNCTION_NAMES}"
                )));
            }
        }
        Ok(MachineConfig {
            kernel: self.kernel_source(),
            initrd: self.initrd.clone(),
            rootfs: self.rootfs.clone(),
            mem_size: self.mem,
            vcpus: self.vcpus,
            cmdline: self.cmdline(),
            protocol: match self.boot_protocol {
                ProtocolArg::Linux64 => BootProtocol::Linux64,
                ProtocolArg::Pvh => BootProtocol::Pvh,
            },
            console: if self.quiet {
                Console::Discard
            } else {
                Console::stdout()
            },
            exit_on_ready,
            started,
        })
    }
}

pub fn stop_name(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::ReadyReached => "ready",
        StopReason::GuestExit(_) => "guest_exit",
        StopReason::GuestShutdown { .. } => "guest_shutdown",
        StopReason::GuestEmulation(_) => "kvm_internal_error",
        StopReason::GuestCrash { .. } => "guest_crash",
        StopReason::Requested => "requested",
        StopReason::Timeout(_) => "timeout",
        StopReason::VcpuFailed(_) => "vcpu_failed",
        StopReason::Unresponsive(_) => "unresponsive",
        StopReason::PageServerDied(_) => "page_server_died",
    }
}

pub fn run(args: &BootArgs, started: Instant) -> Result<()> {
    args.isolation.apply()?;
    // The jail needs system calls no list allows: the main thread's filter
    // goes on right after it, before any VM exists.
    vmfork_isolation::seccomp::install(vmfork_isolation::seccomp::ThreadKind::Vmm)?;
    let timeout = args.timeout;
    let config = args.vm.machine_config(started, args.exit_on_ready)?;
    let machine = Machine::cold_boot(config)?;
    let dirty_logging = machine.vm().dirty_logging();
    let phases = phases_json(&machine.phases);
    let control = machine.control();
    let latch = control.latch().clone();
    let _api = args
        .api_sock
        .as_deref()
        .map(|p| api::serve(p, control.latch().clone(), control.requests().clone()))
        .transpose()?;
    let commands = control.commands().clone();
    // Stop signals stay pending until the signal thread waits for them:
    // it starts once the vCPUs run, off the way to the ready point.
    let (reason, machine) = owner::run_then(machine, timeout, || {
        signals::forward_to(latch);
        Ok(())
    })?;
    let rss = vmm_rss_kib();
    let unclaimed = machine.unclaimed_accesses();
    drop(machine);
    if args.json {
        outln!(
            "{}",
            json!({
                "ready_us": commands.ready_at().map(|d| d.as_micros() as u64),
                "vmm_rss_kib": rss,
                "stop": stop_name(&reason),
                "kernel": args.vm.kernel_source().describe(),
                "vcpus": args.vm.vcpus.to_string(),
                "mem": format_size(args.vm.mem),
                "host_virt": KvmHost::get()?.virt.name(),
                "dirty_logging": dirty_logging,
                "unclaimed_io": unclaimed,
                "phases_us": phases,
            })
        );
    }
    stop_result(&reason).map_err(|e| match e {
        // A guest stopped from outside may have been flooding unclaimed
        // ports or MMIO all along; say so, since nothing else will.
        Error::Timeout(why) if unclaimed.total() > 0 => {
            Error::Timeout(format!("{why}; meanwhile it made {unclaimed}"))
        }
        e => e,
    })
}

pub fn phases_json(phases: &[(&'static str, u64)]) -> serde_json::Value {
    serde_json::Value::Object(
        phases
            .iter()
            .map(|(name, us)| (name.to_string(), json!(us)))
            .collect(),
    )
}
