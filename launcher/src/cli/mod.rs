//! The `vmfork` command line.

pub mod args;
pub mod boot;
pub mod floor;
pub mod signals;

use std::time::Instant;

use clap::{Parser, Subcommand};

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
unavailable; 5 host lacks a needed KVM feature; 6 kernel unreadable; 7 kernel format; \
8 guest memory too small; 9 bad rootfs/initrd; 10 guest shutdown/triple fault; 11 KVM internal \
error; 12 guest crash; 13 guest exited non-zero; 14 timeout; 1 other."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cold-boot a VM and stream its console to stdout.
    Boot(boot::BootArgs),
    /// Measure the KVM floor: create a VM and vCPU and run to the first HLT.
    Floor(floor::FloorArgs),
}

pub fn dispatch(cli: Cli, started: Instant) -> crate::Result<()> {
    match cli.command {
        Command::Boot(args) => boot::run(&args, started),
        Command::Floor(args) => floor::run(&args),
    }
}
