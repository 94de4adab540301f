//! The Linux guest kernel: Debian's linux-source-6.12, `make tinyconfig` plus
//! our fragment, our patches, `make vmlinux bzImage`. Cached as
//! `<cache>/linux-<key>/{vmlinux,bzImage,config,build.log,manifest.txt}`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use vmfork_progress::ProgressMode;

use crate::assets::{self, Patch};
use crate::cache::{Cache, KeyHasher};
use crate::command::{reset_log, run_logged};
use crate::progress::BuildProgress;
use crate::{Error, Result, BUILDER_VERSION};

pub const KIND: &str = "linux";
/// What a complete cache entry must hold.
pub const FILES: [&str; 2] = ["vmlinux", "bzImage"];

pub struct LinuxOptions {
    pub cache_root: PathBuf,
    /// The `linux-source-6.12.tar.xz` to build from.
    pub source: PathBuf,
    /// `make -j`; defaults to the number of CPUs.
    pub jobs: usize,
    /// No progress on stderr (errors still go there).
    pub quiet: bool,
}

impl LinuxOptions {
    pub fn new(cache_root: impl Into<PathBuf>) -> Self {
        LinuxOptions {
            cache_root: cache_root.into(),
            source: PathBuf::from(assets::LINUX_SOURCE_TARBALL),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            quiet: false,
        }
    }
}

#[derive(Debug)]
pub struct LinuxArtifacts {
    pub key: String,
    pub dir: PathBuf,
    /// ELF with the PVH note: for the 64-bit direct and PVH entries.
    pub vmlinux: PathBuf,
    pub bz_image: PathBuf,
    /// True when nothing was built.
    pub from_cache: bool,
}

impl LinuxArtifacts {
    fn in_dir(dir: PathBuf, key: String, from_cache: bool) -> Self {
        LinuxArtifacts {
            vmlinux: dir.join("vmlinux"),
            bz_image: dir.join("bzImage"),
            key,
            dir,
            from_cache,
        }
    }
}

/// The cache key: the source tarball's identity, the config fragment, the
/// patches, the compiler and the builder version.
pub fn cache_key(source: &Path) -> Result<String> {
    if !source.is_file() {
        return Err(Error::MissingLinuxSource(source.to_path_buf()));
    }
    key_from(
        source,
        assets::LINUX_CONFIG,
        assets::LINUX_PATCHES,
        &compiler_identity(),
    )
}

fn key_from(source: &Path, config: &str, patches: &[Patch], compiler: &str) -> Result<String> {
    let mut h = KeyHasher::new(KIND);
    h.file_identity("source", source)?;
    h.field("config", config.as_bytes());
    for p in patches {
        h.field("patch-name", p.name.as_bytes());
        h.field("patch", p.contents);
    }
    h.field("compiler", compiler.as_bytes());
    Ok(h.finish())
}

/// `gcc --version`'s first line: a compiler upgrade changes the kernel.
fn compiler_identity() -> String {
    Command::new("gcc")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "gcc: unavailable".to_owned())
}

/// Returns the cached kernel for the current inputs, building it first if
/// needed. Progress goes to stderr, the full tool output to the log.
pub fn build(opts: &LinuxOptions) -> Result<LinuxArtifacts> {
    let key = cache_key(&opts.source)?;
    let cache = Cache::new(&opts.cache_root);
    if let Some(dir) = cache.lookup(KIND, &key, &FILES) {
        return Ok(LinuxArtifacts::in_dir(dir, key, true));
    }

    let started = Instant::now();
    let progress = BuildProgress::start(KIND, ProgressMode::detect(opts.quiet));
    let log = cache.log_path(KIND, &key);
    reset_log(&log)?;
    let staging = cache.staging(KIND, &key)?;
    let work = staging.work_dir();
    let tree = work.join("linux");
    fs::create_dir_all(&tree).map_err(Error::io(format!("create {}", tree.display())))?;
    progress.note(&format!(
        "linux: building kernel {key} with {} jobs (log: {})",
        opts.jobs,
        log.display()
    ));

    progress.step(&format!("extracting {}", opts.source.display()));
    run_logged(
        Command::new("tar")
            .arg("-xf")
            .arg(&opts.source)
            .arg("-C")
            .arg(&tree)
            // Debian's tarball has one top directory, linux-source-6.12/.
            .arg("--strip-components=1"),
        "extracting the Linux source",
        &log,
    )?;

    for p in assets::LINUX_PATCHES {
        progress.step(&format!("applying {}", p.name));
        let file = work.join(p.name);
        fs::write(&file, p.contents).map_err(Error::io(format!("write {}", file.display())))?;
        run_logged(
            Command::new("patch")
                .args(["-p1", "--forward", "--batch", "-d"])
                .arg(&tree)
                .arg("-i")
                .arg(&file),
            &format!("applying {}", p.name),
            &log,
        )?;
    }

    progress.step("configuring (tinyconfig + vmfork-6.12.config + olddefconfig)");
    configure(&tree, &work, &log, opts)?;

    progress.step_counting("make vmlinux bzImage", &log);
    run_logged(
        &mut make(&tree, opts, &["vmlinux", "bzImage"]),
        &format!("make -j{} vmlinux bzImage", opts.jobs),
        &log,
    )?;

    let out = staging.out_dir();
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        ("arch/x86/boot/bzImage", "bzImage"),
        (".config", "config"),
    ] {
        let (from, to) = (tree.join(from), out.join(to));
        fs::rename(&from, &to).map_err(Error::io(format!("move {}", from.display())))?;
    }
    let release = fs::read_to_string(tree.join("include/config/kernel.release"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let copy = out.join("build.log");
    fs::copy(&log, &copy).map_err(Error::io(format!("copy log to {}", copy.display())))?;

    let manifest = manifest(&key, &release, opts, started.elapsed().as_secs());
    let dir = staging.publish(&manifest)?;
    progress.finish(&format!("done: {}", dir.display()));
    Ok(LinuxArtifacts::in_dir(dir, key, false))
}

fn configure(tree: &Path, work: &Path, log: &Path, opts: &LinuxOptions) -> Result<()> {
    let fragment = work.join(assets::LINUX_CONFIG_NAME);
    fs::write(&fragment, assets::LINUX_CONFIG)
        .map_err(Error::io(format!("write {}", fragment.display())))?;
    run_logged(
        &mut make(tree, opts, &["tinyconfig"]),
        "make tinyconfig",
        log,
    )?;
    // -m: merge only; olddefconfig below resolves the dependencies.
    run_logged(
        Command::new("scripts/kconfig/merge_config.sh")
            .current_dir(tree)
            .args(["-m", ".config"])
            .arg(&fragment)
            .env("LC_ALL", "C"),
        "merge_config.sh",
        log,
    )?;
    run_logged(
        &mut make(tree, opts, &["olddefconfig"]),
        "make olddefconfig",
        log,
    )?;

    let config_path = tree.join(".config");
    let config = fs::read_to_string(&config_path)
        .map_err(Error::io(format!("read {}", config_path.display())))?;
    let missing = verify_config(assets::LINUX_CONFIG, &config);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::ConfigOptionsLost {
            fragment: assets::LINUX_CONFIG_NAME.to_owned(),
            missing,
        })
    }
}

/// `make` in the kernel tree with a pinned build identity, so the same
/// inputs give the same banner ("Linux version 6.12.x (vmfork@vmfork) ...")
/// and, as far as Kbuild allows, the same bytes.
fn make(tree: &Path, opts: &LinuxOptions, targets: &[&str]) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(tree)
        .arg(format!("-j{}", opts.jobs.max(1)))
        .args(targets)
        .env("LC_ALL", "C")
        .env("KBUILD_BUILD_USER", "vmfork")
        .env("KBUILD_BUILD_HOST", "vmfork")
        .env("KBUILD_BUILD_VERSION", "1")
        .env("KBUILD_BUILD_TIMESTAMP", source_timestamp(&opts.source))
        // An outer make's jobserver must not leak into the kernel build.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    cmd
}

/// The source tarball's mtime as "YYYY-MM-DD HH:MM:SS UTC": a build date
/// that only changes when the source does.
fn source_timestamp(source: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let secs = fs::metadata(source).map(|m| m.mtime()).unwrap_or(0);
    format_utc(secs)
}

fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Every line of `fragment` that did not survive into `config`, written as
/// the fragment wants it plus what it became. Covers `CONFIG_X=value` and
/// `# CONFIG_X is not set`; other comment lines are ignored.
pub fn verify_config(fragment: &str, config: &str) -> Vec<String> {
    let actual: HashMap<&str, &str> = config.lines().filter_map(parse_set).collect();
    let mut lost = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some((name, want)) = parse_set(line) {
            match actual.get(name) {
                Some(got) if *got == want => {}
                Some(got) => lost.push(format!("{name}={want} (got {got})")),
                None => lost.push(format!("{name}={want} (is not set)")),
            }
        } else if let Some(name) = parse_unset(line) {
            if let Some(got) = actual.get(name) {
                lost.push(format!("{name} is not set (got {got})"));
            }
        }
    }
    lost
}

fn parse_set(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once('=')?;
    name.starts_with("CONFIG_").then_some((name, value))
}

fn parse_unset(line: &str) -> Option<&str> {
    let name = line.strip_prefix("# ")?.strip_suffix(" is not set")?;
    name.starts_with("CONFIG_").then_some(name)
}

fn manifest(key: &str, release: &str, opts: &LinuxOptions, secs: u64) -> String {
    let patches: Vec<&str> = assets::LINUX_PATCHES.iter().map(|p| p.name).collect();
    format!(
        "kind=linux\nkey={key}\nbuilder={BUILDER_VERSION}\nkernel_release={release}\n\
         source={}\nconfig_fragment={}\npatches={}\ncompiler={}\njobs={}\nbuild_seconds={secs}\n",
        opts.source.display(),
        assets::LINUX_CONFIG_NAME,
        patches.join(","),
        compiler_identity(),
        opts.jobs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    #[test]
    fn verify_config_accepts_survivors() {
        let fragment = "# comment\nCONFIG_A=y\nCONFIG_N=8\n# CONFIG_PCI is not set\n\n";
        let config = "CONFIG_A=y\nCONFIG_N=8\n# CONFIG_PCI is not set\nCONFIG_OTHER=y\n";
        assert!(verify_config(fragment, config).is_empty());
    }

    #[test]
    fn verify_config_names_every_lost_option() {
        let fragment = "CONFIG_A=y\nCONFIG_TMPFS=y\nCONFIG_N=8\n# CONFIG_PCI is not set\n";
        let config = "CONFIG_A=y\n# CONFIG_TMPFS is not set\nCONFIG_N=2\nCONFIG_PCI=y\n";
        assert_eq!(
            verify_config(fragment, config),
            vec![
                "CONFIG_TMPFS=y (is not set)",
                "CONFIG_N=8 (got 2)",
                "CONFIG_PCI is not set (got y)",
            ]
        );
    }

    #[test]
    fn fragment_has_what_the_guest_needs() {
        let required = [
            "64BIT",
            "SMP",
            "SERIAL_8250",
            "SERIAL_8250_CONSOLE",
            "EARLY_PRINTK",
            "PVH",
            "EXT4_FS",
            "FS_DAX",
            "LIBNVDIMM",
            "BLK_DEV_PMEM",
            "X86_PMEM_LEGACY",
            "KVM_GUEST",
            "DEVTMPFS",
            "DEVTMPFS_MOUNT",
            "PROC_FS",
            "SYSFS",
            "BINFMT_ELF",
            "BINFMT_SCRIPT",
            "TTY",
            "PRINTK",
        ];
        let set: Vec<(&str, &str)> = assets::LINUX_CONFIG.lines().filter_map(parse_set).collect();
        for opt in required {
            let name = format!("CONFIG_{opt}");
            assert!(
                set.contains(&(name.as_str(), "y")),
                "{name}=y missing from fragment"
            );
        }
        assert!(assets::LINUX_CONFIG
            .lines()
            .any(|l| parse_unset(l) == Some("CONFIG_MODULES")));
    }

    #[test]
    fn key_covers_config_patches_and_compiler() {
        let dir = TestDir::new("linux-key");
        let src = dir.path().join("linux-source-6.12.tar.xz");
        fs::write(&src, b"tarball").unwrap();
        let p1 = [Patch {
            name: "0001.patch",
            contents: b"a",
        }];
        let p2 = [Patch {
            name: "0001.patch",
            contents: b"b",
        }];
        let p3 = [Patch {
            name: "0002.patch",
            contents: b"a",
        }];
        let base = key_from(&src, "CONFIG_A=y", &p1, "gcc 12").unwrap();
        assert_eq!(base, key_from(&src, "CONFIG_A=y", &p1, "gcc 12").unwrap());
        assert_ne!(base, key_from(&src, "CONFIG_A=n", &p1, "gcc 12").unwrap());
        assert_ne!(base, key_from(&src, "CONFIG_A=y", &p2, "gcc 12").unwrap());
        assert_ne!(base, key_from(&src, "CONFIG_A=y", &p3, "gcc 12").unwrap());
        assert_ne!(base, key_from(&src, "CONFIG_A=y", &[], "gcc 12").unwrap());
        assert_ne!(base, key_from(&src, "CONFIG_A=y", &p1, "gcc 13").unwrap());
    }

    #[test]
    fn missing_source_is_reported_by_path() {
        let err = cache_key(Path::new("/nonexistent/linux-source-6.12.tar.xz")).unwrap_err();
        assert!(matches!(err, Error::MissingLinuxSource(_)));
        assert!(err
            .to_string()
            .contains("/nonexistent/linux-source-6.12.tar.xz"));
        assert!(err.to_string().contains("linux-source-6.12"));
    }

    #[test]
    fn cached_entry_is_returned_without_building() {
        let dir = TestDir::new("linux-cached");
        let src = dir.path().join("linux-source-6.12.tar.xz");
        fs::write(&src, b"not really a tarball").unwrap();
        let mut opts = LinuxOptions::new(dir.path().join("cache"));
        opts.source = src.clone();
        let key = cache_key(&src).unwrap();
        let entry = Cache::new(&opts.cache_root).entry_dir(KIND, &key);
        fs::create_dir_all(&entry).unwrap();
        for f in FILES {
            fs::write(entry.join(f), b"kernel").unwrap();
        }
        let got = build(&opts).unwrap();
        assert!(got.from_cache);
        assert_eq!(got.vmlinux, entry.join("vmlinux"));
        assert_eq!(got.bz_image, entry.join("bzImage"));
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_763_124_960), "2025-11-14 12:56:00 UTC");
    }
}
