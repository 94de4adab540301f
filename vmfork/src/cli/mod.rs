//! The `vmfork` command line.

/// `println!` that does not panic when stdout is closed (`vmfork ... | head`):
/// a reader going away is not a VMM failure.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod args;
pub mod boot;
pub mod clone;
pub mod clone_args;
pub mod clone_exec;
pub mod clone_procs;
mod commands;
pub mod ctl;
pub mod export;
pub mod floor;
pub mod isolation;
pub mod progress;
pub mod restore;
pub mod rootfs;
pub mod serve;
pub mod signals;
pub mod template;

use std::time::Instant;

use clap::{ColorChoice, CommandFactory, Parser};

use vmfork_isolation::seccomp::{self, ThreadKind};

#[derive(Debug, Parser)]
#[command(
    name = "vmfork",
    version,
    about = "Boot, snapshot and instantly clone minimal KVM virtual machines",
    long_about = "vmfork is a minimal KVM virtual machine monitor. It cold-boots a pc-lite \
machine (no BIOS, in-kernel irqchip and PIT, one UART, a DAX rootfs on persistent memory) \
straight into a kernel, runs it to the ready point the guest signals, and can snapshot it there.\n\n\
With no --kernel it boots its embedded unikernel guest.",
    after_help = "Exit status: 0 ok; 2 bad command line; 3 invalid argument value; 4 /dev/kvm \
unavailable; 5 host lacks a needed KVM feature or tool; 6 kernel unreadable; 7 kernel format; \
8 guest memory too small; 9 bad rootfs/initrd (or a rootfs image build failed); 10 guest shutdown/triple fault; 11 KVM internal \
error; 12 guest crash; 13 guest exited non-zero; 14 timeout; 15 snapshot; 16 bad template; 17 control socket; \
18 seccomp (a thread made a forbidden system call); 19 jail or cgroup setup failed; 20 a uffd clone's page server died; 21 a template's rootfs image changed or is missing; \
24 a --jail directory that is unsafe to build in (not root's, writable by others, or a symlink on the way); \
25 registry (template push/pull: unreachable, not found, corrupt or not a vmfork template, or a template it cannot carry yet); \
26 registry authentication refused or needed; 1 other."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Run without the seccomp filters every thread installs (debugging
    /// only; prints a warning). See docs/seccomp.md.
    #[arg(long, global = true)]
    pub no_seccomp: bool,
    /// Test hook: threads of one kind make a forbidden system call right
    /// after installing their filter (RULE: vcpu-socket, the default,
    /// vcpu-write, http-kvm, http-clone3, http-clone, http-open).
    #[arg(long, global = true, hide = true, value_name = "RULE", num_args = 0..=1, require_equals = true,
          default_missing_value = "vcpu-socket", value_parser = violation)]
    pub test_seccomp_violation: Option<seccomp::Violation>,
}

/// The command line as clap sees it: the derive, plus what is known only at
/// run time (the template format in the version line, NO_COLOR).
pub fn command() -> clap::Command {
    Cli::command()
        .version(format!(
            "{} (template format {})",
            env!("CARGO_PKG_VERSION"),
            vmfork_template::manifest::FORMAT_VERSION
        ))
        .color(color_choice())
}

/// No colour when NO_COLOR is set and not empty (no-color.org), even if
/// CLICOLOR_FORCE asks for it; otherwise colour on terminals.
fn color_choice() -> ColorChoice {
    match std::env::var_os("NO_COLOR") {
        Some(v) if !v.is_empty() => ColorChoice::Never,
        _ => ColorChoice::Auto,
    }
}

/// The subcommands. Their `clap` definitions are in `commands.rs`, built
/// only for the one a command line names (most of a restore's or boot's
/// argument parsing went into building the other ten).
#[derive(Debug)]
pub enum Command {
    Boot(boot::BootArgs),
    Template(template::TemplateCommand),
    Restore(restore::RestoreArgs),
    Clone(clone_args::CloneArgs),
    Ctl(ctl::CtlArgs),
    Serve(serve::ServeArgs),
    Floor(floor::FloorArgs),
    Rootfs(rootfs::RootfsCommand),
    ExportGuest(export::ExportArgs),
    Completions(commands::CompletionsArgs),
}

/// Writes the completion script for `shell` to stdout.
fn completions(shell: clap_complete::Shell) -> vmfork_machine::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut commands::eager(), "vmfork", &mut script);
    // A reader that goes away (`| head`) is not a failure.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
    Ok(())
}

fn violation(rule: &str) -> std::result::Result<seccomp::Violation, String> {
    seccomp::Violation::parse(rule).ok_or_else(|| format!("unknown rule {rule:?}"))
}

pub fn dispatch(cli: Cli, started: Instant) -> vmfork_machine::Result<()> {
    // Before any filter: no list but the launcher's allows rt_sigaction.
    vmfork_machine::vcpu::kick::install_kick_handler()?;
    seccomp::init(&seccomp::Options {
        enabled: !cli.no_seccomp,
        test_violation: cli.test_seccomp_violation,
    })?;
    // boot, restore, clone and serve may enter a jail first, which takes system
    // calls no list allows: they install the main thread's filter
    // themselves, right after. `rootfs` runs mkfs.ext4 and debugfs, which
    // no list allows either, and touches nothing a guest controls, so it
    // runs unfiltered. `template push` and `pull` open network sockets,
    // which no list allows, to talk to a registry; they touch nothing a
    // guest controls (a pulled template is checked as any other before it
    // is used), so they run unfiltered too. Every other command installs
    // the filter here.
    if !matches!(
        cli.command,
        Command::Boot(_)
            | Command::Restore(_)
            | Command::Clone(_)
            | Command::Serve(_)
            | Command::Rootfs(_)
            | Command::Template(
                template::TemplateCommand::Push(_) | template::TemplateCommand::Pull(_)
            )
    ) {
        seccomp::install(ThreadKind::Vmm)?;
    }
    match cli.command {
        Command::Boot(args) => boot::run(&args, started),
        Command::Template(command) => template::run(&command, started),
        Command::Restore(args) => restore::run(&args, started),
        Command::Clone(args) => clone::run(&args, started),
        Command::Ctl(args) => ctl::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Floor(args) => floor::run(&args),
        Command::Rootfs(command) => rootfs::run(&command),
        Command::ExportGuest(args) => export::run(&args),
        Command::Completions(args) => completions(args.shell),
    }
}
