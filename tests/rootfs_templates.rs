//! Templates of VMs booted with a `--rootfs` image, on real VMs: what the
//! template records of the image, restores and clones with every backend
//! (each VM gets a read-only slot over one mapping of the image), and the
//! refusal of an image changed, replaced, resized or deleted since the
//! build, with `--verify` catching what the identity check cannot.
//!
//! The embedded guest ignores the persistent-memory range; the VMM maps it
//! all the same, which is what these tests are about.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use vmfork_tests::{assert_clean_error, exit, vmfork, Run, Scratch};

const IMAGE_BYTES: usize = 16 << 20;

/// A rootfs image of known bytes: whole 2 MiB units with an ext4
/// superblock's magic and 4 KiB block size, which is all the VMM checks
/// (the embedded guest never reads it).
fn write_image(path: &Path) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i * 7 % 253) as u8).collect();
    // s_log_block_size = 2 (4 KiB) at 1024 + 24, s_magic 0xEF53 at 1024 + 56.
    bytes[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes());
    bytes[1024 + 56..1024 + 58].copy_from_slice(&0xef53u16.to_le_bytes());
    std::fs::write(path, &bytes).expect("write image");
    bytes
}

fn build(scratch: &Scratch, image: &Path, name: &str) -> String {
    let out = scratch.str(name);
    let image = image.to_string_lossy();
    let run = vmfork(&[
        "template",
        "build",
        "--rootfs",
        &image,
        "--cmdline",
        "quiet=1 touch_mib=2",
        "--mem",
        "64M",
        "--out",
        &out,
        "--json",
    ]);
    assert_eq!(run.status, 0, "{run}");
    out
}

fn manifest(dir: &str) -> serde_json::Value {
    let text = std::fs::read(Path::new(dir).join("template.json")).expect("template.json");
    serde_json::from_slice(&text).expect("json")
}

fn restore(dir: &str, extra: &[&str]) -> Run {
    let mut args = vec!["restore", dir, "--exit-on-ready", "--quiet", "--json"];
    args.extend_from_slice(extra);
    vmfork(&args)
}

fn clone(dir: &str, extra: &[&str]) -> Run {
    let mut args = vec!["clone", dir, "-n", "3", "--json"];
    args.extend_from_slice(extra);
    vmfork(&args)
}

fn assert_clones_up(run: &Run, what: &str) {
    assert_eq!(run.status, 0, "{what}: {run}");
    assert_eq!(run.json()["clones"], 3, "{what}: {run}");
}

/// A refusal naming the image and what changed, with its own status.
fn assert_refused(run: &Run, image: &Path, what: &str) {
    assert_clean_error(run, exit::ROOTFS_CHANGED, what);
    assert!(
        run.stderr.contains(&*image.to_string_lossy()),
        "the error should name {}: {run}",
        image.display()
    );
}

fn set_mtime_ns(path: &Path, mtime_ns: i64) {
    let file = File::options().write(true).open(path).expect("open image");
    let when = UNIX_EPOCH + Duration::from_nanos(u64::try_from(mtime_ns).expect("after 1970"));
    file.set_modified(when).expect("set mtime");
}

#[test]
fn a_rootfs_template_records_its_image_and_restores_and_clones_with_every_backend() {
    let scratch = Scratch::new("rootfs-ok");
    let image = scratch.path("rootfs.img");
    let bytes = write_image(&image);
    let dir = build(&scratch, &image, "t");

    let m = manifest(&dir);
    let rootfs = &m["rootfs"];
    let canonical = image.canonicalize().expect("canonical");
    let meta = std::fs::metadata(&image).expect("meta");
    assert_eq!(rootfs["path"], canonical.to_string_lossy().as_ref(), "{m}");
    assert_eq!(rootfs["size"], IMAGE_BYTES as u64, "{m}");
    assert_eq!(rootfs["dev"], meta.dev(), "{m}");
    assert_eq!(rootfs["ino"], meta.ino(), "{m}");
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    assert_eq!(rootfs["mtime_ns"], mtime_ns, "{m}");
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(rootfs["sha256"], digest.as_str(), "{m}");

    // The restored VM has the window where the state put it: a read-only
    // slot above RAM, right after the RAM slot.
    for extra in [&[][..], &["--verify"]] {
        let run = restore(&dir, extra);
        assert_eq!(run.status, 0, "{extra:?}: {run}");
        let slot = &run.json()["rootfs"];
        assert_eq!(slot["path"], canonical.to_string_lossy().as_ref(), "{run}");
        assert_eq!(slot["size"], IMAGE_BYTES as u64, "{run}");
        assert_eq!(slot["slot"], 1, "{run}");
        assert!(
            slot["guest_addr"].as_u64().is_some_and(|a| a >= 64 << 20),
            "{run}"
        );
    }

    for backend in ["memfd", "file", "uffd"] {
        for shells in [false, true] {
            let mut extra = vec!["--backend", backend];
            if shells {
                extra.push("--shells");
            }
            let what = format!("{backend} shells={shells}");
            let run = clone(&dir, &extra);
            assert_clones_up(&run, &what);
            // The image is one shared read-only mapping, never copied per
            // clone.
            let private = run.json()["private_kib_per_clone"]
                .as_u64()
                .unwrap_or(u64::MAX);
            assert!(
                private < (IMAGE_BYTES as u64 >> 10) / 4,
                "{what}: {private} KiB private per clone with a {} KiB image: {run}",
                IMAGE_BYTES >> 10
            );
        }
    }
    assert_clones_up(&clone(&dir, &["--verify", "--shells"]), "--verify");
    assert_clones_up(&clone(&dir, &["--processes", "2"]), "--processes");
    assert_clones_up(
        &clone(&dir, &["--processes", "2", "--verify"]),
        "--processes --verify",
    );
}

/// Restore, and clones with and without shells, in one and in several
/// processes, all refuse the image the same way.
fn assert_every_load_refuses(dir: &str, image: &Path, what: &str) {
    assert_refused(&restore(dir, &[]), image, what);
    for extra in [
        &["--backend", "memfd"][..],
        &["--backend", "file", "--shells"],
        &["--backend", "uffd"],
        &["--shells", "--processes", "2"],
    ] {
        let run = clone(dir, extra);
        assert_refused(&run, image, what);
    }
}

#[test]
fn an_image_changed_replaced_resized_or_deleted_since_the_build_is_refused() {
    type Change = fn(&Path);
    let changes: [(&str, Change, &str); 5] = [
        (
            "touched",
            |p| {
                let later = std::fs::metadata(p)
                    .expect("meta")
                    .modified()
                    .expect("mtime")
                    + Duration::from_secs(2);
                File::options()
                    .write(true)
                    .open(p)
                    .and_then(|f| f.set_modified(later))
                    .expect("touch");
            },
            "modified",
        ),
        (
            "replaced",
            |p| {
                let bytes = std::fs::read(p).expect("read");
                let tmp = p.with_extension("new");
                std::fs::write(&tmp, bytes).expect("write copy");
                std::fs::rename(&tmp, p).expect("rename over");
            },
            "replaced",
        ),
        (
            "truncated",
            |p| {
                OpenOptions::new()
                    .write(true)
                    .open(p)
                    .and_then(|f| f.set_len(IMAGE_BYTES as u64 / 2))
                    .expect("truncate");
            },
            "size changed",
        ),
        (
            "extended",
            |p| {
                OpenOptions::new()
                    .write(true)
                    .open(p)
                    .and_then(|f| f.set_len(IMAGE_BYTES as u64 + (2 << 20)))
                    .expect("extend");
            },
            "size changed",
        ),
        (
            "deleted",
            |p| std::fs::remove_file(p).expect("rm"),
            "missing",
        ),
    ];
    for (name, change, what) in changes {
        let scratch = Scratch::new(&format!("rootfs-{name}"));
        let image = scratch.path("rootfs.img");
        write_image(&image);
        let dir = build(&scratch, &image, "t");
        // The template works until the image changes.
        assert_eq!(restore(&dir, &[]).status, 0, "{name}: before the change");
        // Named as recorded, canonical (the scratch path may hold a symlink).
        let canonical = image.canonicalize().expect("canonical");
        change(&image);
        assert_every_load_refuses(&dir, &canonical, what);
    }
}

#[test]
fn verify_catches_a_rewrite_that_keeps_size_and_mtime() {
    let scratch = Scratch::new("rootfs-verify");
    let image = scratch.path("rootfs.img");
    write_image(&image);
    let dir = build(&scratch, &image, "t");
    let recorded_mtime = manifest(&dir)["rootfs"]["mtime_ns"]
        .as_i64()
        .expect("mtime_ns");

    // Same bytes, same size, same inode; the write moves mtime, which is
    // then set back to the recorded nanosecond.
    let file = OpenOptions::new().write(true).open(&image).expect("open");
    file.write_all_at(b"not the image the template was built with", 5 << 20)
        .expect("rewrite");
    drop(file);
    set_mtime_ns(&image, recorded_mtime);
    let meta = std::fs::metadata(&image).expect("meta");
    assert_eq!(
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        recorded_mtime
    );

    // The identity check alone cannot tell...
    assert_eq!(restore(&dir, &[]).status, 0, "identity unchanged");
    assert_clones_up(&clone(&dir, &["--shells"]), "identity unchanged");
    // ...the digest can.
    let canonical = image.canonicalize().expect("canonical");
    assert_refused(
        &restore(&dir, &["--verify"]),
        &canonical,
        "contents changed",
    );
    for extra in [
        &["--verify"][..],
        &["--verify", "--backend", "uffd", "--shells"],
        &["--verify", "--processes", "2"],
    ] {
        assert_refused(&clone(&dir, extra), &canonical, "contents changed");
    }
}

/// A VM restored from a rootfs template snapshots (full and diff) with the
/// same image record, and both restore (verified) and clone.
#[test]
fn snapshots_of_a_restored_rootfs_vm_keep_its_image() {
    let scratch = Scratch::new("rootfs-resnap");
    let image = scratch.path("rootfs.img");
    write_image(&image);
    let dir = build(&scratch, &image, "t");
    let socket = scratch.str("api.sock");
    let mut child = std::process::Command::new(vmfork_tests::vmfork_bin())
        .args(["restore", &dir, "--api-sock", &socket, "--quiet"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn restore");
    vmfork_tests::wait_for_path(&socket);
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", socket.as_str()];
        all.extend_from_slice(args);
        vmfork(&all)
    };
    assert_eq!(ctl(&["ping"]).status, 0);
    let (diff, full) = (scratch.str("d"), scratch.str("f"));
    let run = ctl(&["snapshot", "--diff", "--out", &diff]);
    assert_eq!(run.status, 0, "{run}");
    let run = ctl(&["snapshot", "--out", &full]);
    assert_eq!(run.status, 0, "{run}");
    assert_eq!(ctl(&["stop"]).status, 0);
    assert!(child.wait().expect("wait").success());

    let recorded = &manifest(&dir)["rootfs"];
    assert!(recorded.is_object(), "{recorded}");
    for saved in [&diff, &full] {
        assert_eq!(&manifest(saved)["rootfs"], recorded, "{saved}");
        let run = restore(saved, &["--verify"]);
        assert_eq!(run.status, 0, "{saved}: {run}");
        assert_eq!(run.json()["rootfs"]["size"], IMAGE_BYTES as u64, "{run}");
        assert_clones_up(&clone(saved, &["--shells"]), saved);
    }
    // The diff's base and the diff record one image: changing it refuses
    // both.
    let later = std::fs::metadata(&image)
        .expect("meta")
        .modified()
        .expect("mtime")
        + Duration::from_secs(2);
    File::options()
        .write(true)
        .open(&image)
        .and_then(|f| f.set_modified(later))
        .expect("touch");
    let canonical = image.canonicalize().expect("canonical");
    assert_refused(&restore(&diff, &[]), &canonical, "modified");
}
