//! `vmfork-guest-artifacts linux|rootfs [--cache DIR]`: builds (or finds in
//! the cache) the Linux guest kernel or its DAX rootfs and prints the paths
//! as `name=path` lines on stdout. `tree DIR --out IMG` builds a rootfs of
//! a user's tree instead (not cached), like `vmfork rootfs build`. Progress (a spinner on a terminal, plain
//! periodic lines otherwise, none with --quiet) and errors go to stderr.
#![deny(unsafe_op_in_unsafe_fn)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use guest_artifacts::linux::{self, LinuxOptions};
use guest_artifacts::rootfs::tree::{self, TreeOptions};
use guest_artifacts::rootfs::{self, RootfsOptions};
use guest_artifacts::{cache, Error};

#[derive(Parser)]
#[command(
    name = "vmfork-guest-artifacts",
    about = "Builds the vmfork Linux guest kernel and DAX rootfs, cached by content hash"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// No progress on stderr: no spinner on a terminal, no periodic lines
    /// otherwise. Errors are still printed.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Linux 6.12 vmlinux + bzImage from linux-source-6.12, our config and patches.
    Linux {
        /// Cache root [default: $XDG_CACHE_HOME/vmfork or ~/.cache/vmfork].
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Kernel source tarball.
        #[arg(long, value_name = "TARBALL", default_value = guest_artifacts::assets::LINUX_SOURCE_TARBALL)]
        source: PathBuf,
        /// Parallel make jobs [default: number of CPUs].
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
    },
    /// ext4 (4 KiB blocks) image with busybox-static and /init.
    Rootfs {
        /// Cache root [default: $XDG_CACHE_HOME/vmfork or ~/.cache/vmfork].
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// A statically linked busybox.
        #[arg(long, value_name = "PATH", default_value = guest_artifacts::assets::BUSYBOX)]
        busybox: PathBuf,
    },
    /// ext4 (4 KiB blocks) image of DIR plus vmfork's init, agent and
    /// busybox in /.vmfork; the same as `vmfork rootfs build`. Not cached.
    Tree {
        /// The directory tree; only read.
        dir: PathBuf,
        /// The image file to write.
        #[arg(long, value_name = "IMG")]
        out: PathBuf,
        /// Image size in MiB, even [default: the tree plus headroom].
        #[arg(long, value_name = "MIB")]
        size_mib: Option<u64>,
        /// Overwrite IMG if it exists.
        #[arg(long)]
        force: bool,
        /// A statically linked busybox.
        #[arg(long, value_name = "PATH", default_value = guest_artifacts::assets::BUSYBOX)]
        busybox: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command, cli.quiet) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let (Some(log), Some(tail)) = (e.log_path(), e.log_tail(25)) {
                eprintln!("--- end of {} ---\n{tail}\n---", log.display());
            }
            eprintln!("vmfork-guest-artifacts: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd, quiet: bool) -> Result<(), Error> {
    match cmd {
        Cmd::Linux {
            cache,
            source,
            jobs,
        } => {
            let mut opts = LinuxOptions::new(cache_root(cache)?);
            opts.source = source;
            opts.quiet = quiet;
            if let Some(j) = jobs {
                opts.jobs = j.max(1);
            }
            let a = linux::build(&opts)?;
            if a.from_cache && !quiet {
                eprintln!("linux: cache hit {}", a.dir.display());
            }
            println!("vmlinux={}", a.vmlinux.display());
            println!("bzImage={}", a.bz_image.display());
        }
        Cmd::Rootfs { cache, busybox } => {
            let mut opts = RootfsOptions::new(cache_root(cache)?);
            opts.busybox = busybox;
            opts.quiet = quiet;
            let a = rootfs::build(&opts)?;
            if a.from_cache && !quiet {
                eprintln!("rootfs: cache hit {}", a.image.display());
            }
            println!("rootfs={}", a.image.display());
        }
        Cmd::Tree {
            dir,
            out,
            size_mib,
            force,
            busybox,
        } => {
            let mut opts = TreeOptions::new(dir, out);
            opts.size = size_mib.map(|m| m.saturating_mul(1 << 20));
            opts.force = force;
            opts.busybox = busybox;
            opts.quiet = quiet;
            let built = tree::build_from_dir(&opts)?;
            println!("rootfs={}", built.out.display());
        }
    }
    Ok(())
}

fn cache_root(flag: Option<PathBuf>) -> Result<PathBuf, Error> {
    match flag {
        Some(dir) => Ok(dir),
        None => cache::default_root(),
    }
}
