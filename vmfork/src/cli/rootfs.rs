//! `vmfork rootfs build DIR --out IMG`: a DAX root filesystem image of the
//! user's own tree for the Linux guest. The work is in
//! `guest_artifacts::rootfs::tree`; this parses, calls and prints, and
//! gives the builder's errors vmfork's exit statuses.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{parse_size, Parsed};
use guest_artifacts::rootfs::tree::{self, TreeOptions};
use vmfork_machine::error::{Error, Result};

#[derive(Debug, Subcommand)]
pub enum RootfsCommand {
    /// Build an ext4 image (4 KiB blocks, for DAX) of a directory tree, with
    /// vmfork's init, guest agent and busybox-static added in /.vmfork.
    #[command(
        after_help = "The tree is only read. /init must be free (it points at \
/.vmfork/init); /dev /proc /sys /tmp /run are made if missing. Files owned by the user \
running the build are owned by root in the image.

Examples:
  vmfork rootfs build ./alpine-root --out alpine.ext4
  vmfork boot --kernel vmlinux --rootfs alpine.ext4 --exit-on-ready"
    )]
    Build(BuildArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The directory tree, e.g. an unpacked distro or application root.
    pub dir: PathBuf,
    /// The image file to write.
    #[arg(long, value_name = "IMG")]
    pub out: PathBuf,
    /// Image size, a multiple of 2 MiB [default: what the tree needs plus
    /// an eighth and 4 MiB, rounded up to 2 MiB].
    #[arg(long, value_name = "SIZE", value_parser = Parsed(parse_size))]
    pub size: Option<u64>,
    /// Overwrite IMG if it exists.
    #[arg(long)]
    pub force: bool,
    /// busybox-static, checked to be static.
    #[arg(long, value_name = "PATH", default_value = guest_artifacts::assets::BUSYBOX)]
    pub busybox: PathBuf,
    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

pub fn run(command: &RootfsCommand) -> Result<()> {
    let RootfsCommand::Build(args) = command;
    let mut opts = TreeOptions::new(&args.dir, &args.out);
    opts.size = args.size;
    opts.force = args.force;
    opts.busybox = args.busybox.clone();
    opts.quiet = args.quiet || args.json;
    let built = tree::build_from_dir(&opts).map_err(|e| exit_status(e, &args.out))?;
    if args.json {
        let report = json!({
            "out": built.out,
            "size": built.size,
            "entries": built.entries,
            "owners_mapped": built.owners_mapped,
        });
        outln!("{report}");
    } else {
        outln!(
            "{}: {} MiB ext4 (4 KiB blocks), {} entries from {}, vmfork init and agent in /.vmfork",
            built.out.display(),
            built.size >> 20,
            built.entries,
            args.dir.display()
        );
    }
    Ok(())
}

/// The builder's error as a vmfork error: what the user gave (DIR, IMG,
/// --size) is an invalid argument (3); a missing tool or busybox is the
/// host lacking something (5); a failed mkfs or write is an image error (9).
fn exit_status(e: guest_artifacts::Error, out: &Path) -> Error {
    use guest_artifacts::Error as B;
    match e {
        B::TreeMissing(_)
        | B::TreeNotDirectory(_)
        | B::OutputExists(_)
        | B::OutputIsDirectory(_)
        | B::TreeConflict { .. }
        | B::BadImageSize(_)
        | B::ImageTooSmall { .. } => Error::InvalidArgument(e.to_string()),
        B::MissingTool { .. } | B::MissingBusybox(_) | B::BusyboxNotStatic(_) => {
            Error::HostUnsupported(e.to_string())
        }
        other => Error::Image {
            what: "rootfs image",
            path: out.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}
