//! The subcommands as clap sees them, written out instead of derived so
//! that each one's arguments are built only when its name is on the
//! command line (`Command::defer`): clap's derive builds every
//! subcommand's arguments first, about 0.2 ms of every `vmfork` start
//! here, most of it first touches of code and heap. Help, completions and
//! errors build the whole tree as before.

use std::sync::atomic::{AtomicBool, Ordering};

use clap::builder::Command as ClapCommand;
use clap::error::{Error, ErrorKind};
use clap::{ArgMatches, Args, FromArgMatches, Subcommand};

use super::{boot, clone_args, ctl, export, floor, restore, rootfs, serve, template, Command};

/// Set for completion scripts: clap lists `help`'s own subcommands
/// (`vmfork help ctl ping`) from the subcommands built when `help` is, so a
/// script needs every subcommand defined up front.
static EAGER: AtomicBool = AtomicBool::new(false);

/// The whole command line built up front, for completion scripts.
pub fn eager() -> ClapCommand {
    EAGER.store(true, Ordering::Relaxed);
    super::command()
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// A subcommand: its name, one-line help, examples, and how to add its
/// arguments (or its own subcommands).
struct Entry {
    name: &'static str,
    about: &'static str,
    after_help: Option<&'static str>,
    /// `template` and `rootfs` take a subcommand of their own.
    nested: bool,
    define: fn(ClapCommand) -> ClapCommand,
}

const ENTRIES: [Entry; 10] = [
    Entry {
        name: "boot",
        about: "Cold-boot a VM and stream its console to stdout",
        after_help: Some(
            "Examples:
  vmfork boot --exit-on-ready --json       the embedded guest, to its ready point
  vmfork boot --mem 1G --vcpus 2 --kernel vmlinux --rootfs rootfs.ext4",
        ),
        nested: false,
        define: boot::BootArgs::augment_args,
    },
    Entry {
        name: "template",
        about: "Work with templates (VMs saved at their ready point)",
        after_help: None,
        nested: true,
        define: template::TemplateCommand::augment_subcommands,
    },
    Entry {
        name: "restore",
        about: "Restore a VM from a template and resume it",
        after_help: Some(
            "Examples:
  vmfork restore /tmp/tpl --exit-on-ready --json
  vmfork restore /tmp/tpl --api-sock /tmp/vm.sock &   then: vmfork ctl /tmp/vm.sock ping",
        ),
        nested: false,
        define: restore::RestoreArgs::augment_args,
    },
    Entry {
        name: "clone",
        about: "Start N clones of a template, each in well under a millisecond",
        after_help: Some(
            "Examples:
  vmfork clone /tmp/tpl -n 1000 --json            1000 live clones, then stop them
  vmfork clone /tmp/tpl -n 2 --console --hold 5   show their consoles, keep them 5 s
  vmfork clone /tmp/linux-tpl -n 20 -- cat /run/vmfork/clone-id
                                                  run a command in each clone (guests with the agent)",
        ),
        nested: false,
        define: clone_args::CloneArgs::augment_args,
    },
    Entry {
        name: "ctl",
        about: "Send a request to a running VM's control socket",
        after_help: None,
        nested: false,
        define: ctl::CtlArgs::augment_args,
    },
    Entry {
        name: "serve",
        about: "Serve functions over HTTP, each invocation in a fresh clone",
        after_help: Some(
            "Examples:
  vmfork template build --function sha256 --cmdline quiet=1 --mem 32M --out /tmp/sha256
  vmfork serve --template sha256=/tmp/sha256 --warm 8 &
  curl --data-binary hello http://127.0.0.1:8080/v1/functions/sha256/invoke",
        ),
        nested: false,
        define: serve::ServeArgs::augment_args,
    },
    Entry {
        name: "floor",
        about: "Measure the KVM floor: create a VM and vCPU and run to the first HLT",
        after_help: None,
        nested: false,
        define: floor::FloorArgs::augment_args,
    },
    Entry {
        name: "rootfs",
        about: "Build root filesystem images for the Linux guest",
        after_help: None,
        nested: true,
        define: rootfs::RootfsCommand::augment_subcommands,
    },
    Entry {
        name: "export-guest",
        about: "Write the embedded guest ELF to a file",
        after_help: None,
        nested: false,
        define: export::ExportArgs::augment_args,
    },
    Entry {
        name: "completions",
        about: "Print a shell completion script, e.g. `vmfork completions bash > /etc/bash_completion.d/vmfork`",
        after_help: None,
        nested: false,
        define: CompletionsArgs::augment_args,
    },
];

/// The help `e` shows in the list of subcommands, and on its own.
fn describe(e: &Entry, cmd: ClapCommand) -> ClapCommand {
    let mut cmd = cmd.about(e.about);
    if let Some(text) = e.after_help {
        cmd = cmd.after_help(text);
    }
    if e.nested {
        cmd = cmd.subcommand_required(true).arg_required_else_help(true);
    }
    cmd
}

/// A subcommand's arguments, when clap first needs them. An Args struct's
/// own doc comment would replace the subcommand's help, so that is set
/// again after.
fn define(cmd: ClapCommand) -> ClapCommand {
    match ENTRIES.iter().find(|e| e.name == cmd.get_name()) {
        Some(e) => describe(e, (e.define)(cmd)),
        None => cmd,
    }
}

impl Subcommand for Command {
    fn augment_subcommands(cmd: ClapCommand) -> ClapCommand {
        let eager = EAGER.load(Ordering::Relaxed);
        ENTRIES
            .iter()
            .fold(cmd, |cmd, e| {
                let sub = ClapCommand::new(e.name);
                cmd.subcommand(match eager {
                    true => define(sub),
                    false => describe(e, sub).defer(define),
                })
            })
            .subcommand_required(true)
            .arg_required_else_help(true)
    }

    fn augment_subcommands_for_update(cmd: ClapCommand) -> ClapCommand {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        ENTRIES.iter().any(|e| e.name == name)
    }
}

impl FromArgMatches for Command {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, Error> {
        let Some((name, m)) = matches.subcommand() else {
            return Err(Error::raw(
                ErrorKind::MissingSubcommand,
                "a subcommand is required",
            ));
        };
        Ok(match name {
            "boot" => Command::Boot(FromArgMatches::from_arg_matches(m)?),
            "template" => Command::Template(FromArgMatches::from_arg_matches(m)?),
            "restore" => Command::Restore(FromArgMatches::from_arg_matches(m)?),
            "clone" => Command::Clone(FromArgMatches::from_arg_matches(m)?),
            "ctl" => Command::Ctl(FromArgMatches::from_arg_matches(m)?),
            "serve" => Command::Serve(FromArgMatches::from_arg_matches(m)?),
            "floor" => Command::Floor(FromArgMatches::from_arg_matches(m)?),
            "rootfs" => Command::Rootfs(FromArgMatches::from_arg_matches(m)?),
            "export-guest" => Command::ExportGuest(FromArgMatches::from_arg_matches(m)?),
            "completions" => Command::Completions(FromArgMatches::from_arg_matches(m)?),
            other => {
                return Err(Error::raw(
                    ErrorKind::InvalidSubcommand,
                    format!("unrecognized subcommand '{other}'"),
                ))
            }
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::command;

    #[test]
    fn the_whole_tree_passes_clap_s_own_checks() {
        // Builds every deferred subcommand, as help and completions do.
        command().debug_assert();
    }

    #[test]
    fn every_subcommand_is_reachable_and_parses() {
        for (args, want) in [
            (&["vmfork", "floor", "--rounds", "3"][..], "floor"),
            (&["vmfork", "restore", "/t", "--exit-on-ready"], "restore"),
            (
                &["vmfork", "template", "flatten", "/t", "--out", "/f"],
                "template",
            ),
            (&["vmfork", "completions", "bash"], "completions"),
            (&["vmfork", "export-guest", "/g"], "export-guest"),
        ] {
            let parsed = command().try_get_matches_from(args);
            assert!(parsed.is_ok(), "{args:?}: {:?}", parsed.err());
            let m = parsed.unwrap_or_default();
            assert_eq!(m.subcommand_name(), Some(want));
            let cli = <super::super::Cli as clap::FromArgMatches>::from_arg_matches(&m);
            assert!(cli.is_ok(), "{args:?}: {:?}", cli.err());
        }
    }
}
