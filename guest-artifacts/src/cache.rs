//! The artifact cache: `<root>/<kind>-<key>/`, where `<key>` is a SHA-256
//! over every input of the build.
//!
//! A build happens in `<root>/.tmp-<kind>-<key>-<pid>-<nanos>/` and its
//! `out/` subdirectory is renamed to the final name only once every file is
//! written and synced. So a directory with the final name is always complete,
//! and a killed build leaves only a `.tmp-` directory, which the next build
//! removes once its owner process is gone.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::{Error, Result, BUILDER_VERSION};

/// Hex digits of the key used in directory names: 64 bits is plenty to tell
/// a handful of builds apart and keeps paths readable.
const KEY_HEX_LEN: usize = 16;

/// Accumulates a cache key. Each field is length-prefixed, so ("ab", "c")
/// and ("a", "bc") hash differently.
pub struct KeyHasher {
    sha: Sha256,
}

impl KeyHasher {
    /// Starts a key for artifacts of `kind` ("linux", "rootfs"); the builder
    /// version is always part of it.
    pub fn new(kind: &str) -> Self {
        let mut h = KeyHasher { sha: Sha256::new() };
        h.field("builder", BUILDER_VERSION.as_bytes());
        h.field("kind", kind.as_bytes());
        h
    }

    pub fn field(&mut self, label: &str, value: &[u8]) -> &mut Self {
        for part in [label.as_bytes(), value] {
            self.sha.update((part.len() as u64).to_le_bytes());
            self.sha.update(part);
        }
        self
    }

    /// Hashes a large input by identity instead of content: its file name,
    /// size and modification time. Reading 150 MB of kernel source on every
    /// run would make a cache hit cost a second; a package upgrade changes
    /// size and mtime anyway.
    pub fn file_identity(&mut self, label: &str, path: &Path) -> Result<&mut Self> {
        let meta = fs::metadata(path).map_err(Error::io(format!("stat {}", path.display())))?;
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        let identity = [
            name,
            &meta.len().to_le_bytes(),
            &meta.mtime().to_le_bytes(),
            &meta.mtime_nsec().to_le_bytes(),
        ]
        .concat();
        Ok(self.field(label, &identity))
    }

    /// The key as lower-case hex, shortened for directory names.
    pub fn finish(self) -> String {
        let digest = self.sha.finalize();
        let mut hex = format!("{digest:x}");
        hex.truncate(KEY_HEX_LEN);
        hex
    }
}

/// `$XDG_CACHE_HOME/vmfork`, else `$HOME/.cache/vmfork`.
pub fn default_root() -> Result<PathBuf> {
    let non_empty = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        return Ok(xdg.join("vmfork"));
    }
    non_empty("HOME")
        .map(|home| home.join(".cache").join("vmfork"))
        .ok_or(Error::NoCacheDir)
}

pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn entry_dir(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(format!("{kind}-{key}"))
    }

    /// Where a build of this kind and key writes its log; kept outside the
    /// staging directory so it survives a failed build.
    pub fn log_path(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join("logs").join(format!("{kind}-{key}.log"))
    }

    /// The entry's directory if it exists and holds every one of `files` as
    /// a non-empty regular file. Thanks to the rename, anything else means
    /// "never built" or "tampered with"; both mean "build it".
    pub fn lookup(&self, kind: &str, key: &str, files: &[&str]) -> Option<PathBuf> {
        let dir = self.entry_dir(kind, key);
        let complete = files.iter().all(|f| {
            fs::symlink_metadata(dir.join(f))
                .map(|m| m.is_file() && m.len() > 0)
                .unwrap_or(false)
        });
        complete.then_some(dir)
    }

    /// Creates a fresh staging directory for a build, after removing the
    /// leftovers of builds whose process no longer exists.
    pub fn staging(&self, kind: &str, key: &str) -> Result<Staging> {
        fs::create_dir_all(&self.root)
            .map_err(Error::io(format!("create {}", self.root.display())))?;
        self.remove_stale_staging();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = self
            .root
            .join(format!(".tmp-{kind}-{key}-{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let staging = Staging {
            dir,
            target: self.entry_dir(kind, key),
        };
        fs::create_dir(staging.out_dir())
            .map_err(Error::io(format!("create {}", staging.out_dir().display())))?;
        Ok(staging)
    }

    fn remove_stale_staging(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = staging_owner(&name.to_string_lossy()) else {
                continue;
            };
            if !Path::new("/proc").join(pid.to_string()).exists() {
                // Best effort: a leftover we cannot remove costs only disk.
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The pid in a staging directory name `.tmp-<kind>-<key>-<pid>-<nanos>`.
fn staging_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(".tmp-")?;
    let mut parts = rest.rsplitn(3, '-');
    let _nanos: u32 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

/// A build in progress. Dropping it without [`Staging::publish`] removes
/// everything it wrote.
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
}

impl Staging {
    /// Scratch space for the build (the kernel tree, the rootfs tree).
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// What becomes the cache entry.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// Syncs `out/` and renames it to the entry's final name. If another
    /// builder won the race, its (equally complete) entry is kept and ours is
    /// discarded.
    pub fn publish(self, manifest: &str) -> Result<PathBuf> {
        let out = self.out_dir();
        let manifest_path = out.join("manifest.txt");
        let mut f = fs::File::create(&manifest_path)
            .map_err(Error::io(format!("create {}", manifest_path.display())))?;
        f.write_all(manifest.as_bytes())
            .map_err(Error::io(format!("write {}", manifest_path.display())))?;
        drop(f);
        sync_dir_contents(&out)?;
        if let Err(e) = fs::rename(&out, &self.target) {
            // ENOTEMPTY/EEXIST: another builder published the same key while
            // we built; its entry is just as good, and ours goes with Drop.
            if !self.target.is_dir() {
                let what = format!("rename {} to {}", out.display(), self.target.display());
                return Err(Error::io(what)(e));
            }
        }
        if let Some(parent) = self.target.parent() {
            sync_path(parent)?;
        }
        Ok(self.target.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// fsyncs every regular file in `dir`, then `dir`, so a crash right after the
/// rename cannot expose a complete-looking entry with truncated files.
fn sync_dir_contents(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("read {}", dir.display())))?;
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            sync_path(&entry.path())?;
        }
    }
    sync_path(dir)
}

fn sync_path(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(format!("sync {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    fn key(fields: &[(&str, &[u8])]) -> String {
        let mut h = KeyHasher::new("test");
        for (l, v) in fields {
            h.field(l, v);
        }
        h.finish()
    }

    #[test]
    fn key_is_stable_and_short_hex() {
        let a = key(&[("config", b"CONFIG_X=y")]);
        assert_eq!(a, key(&[("config", b"CONFIG_X=y")]));
        assert_eq!(a.len(), KEY_HEX_LEN);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn key_changes_with_any_input() {
        let base = key(&[("config", b"A"), ("patch", b"B")]);
        assert_ne!(base, key(&[("config", b"A"), ("patch", b"C")]));
        assert_ne!(base, key(&[("config", b"A")]));
        assert_ne!(base, key(&[("patch", b"B"), ("config", b"A")]));
        let mut other_kind = KeyHasher::new("other");
        other_kind.field("config", b"A").field("patch", b"B");
        assert_ne!(base, other_kind.finish());
    }

    #[test]
    fn key_fields_do_not_run_together() {
        assert_ne!(
            key(&[("x", b"ab"), ("y", b"c")]),
            key(&[("x", b"a"), ("y", b"bc")])
        );
        assert_ne!(key(&[("xa", b"b")]), key(&[("x", b"ab")]));
    }

    #[test]
    fn file_identity_follows_size_and_mtime() {
        let dir = TestDir::new("identity");
        let path = dir.path().join("src.tar.xz");
        fs::write(&path, b"one").unwrap();
        let t0 = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t0)
            .unwrap();
        let id = || {
            let mut h = KeyHasher::new("test");
            h.file_identity("src", &path).unwrap();
            h.finish()
        };
        let first = id();
        assert_eq!(first, id());

        let t1 = t0 + std::time::Duration::from_secs(1);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t1)
            .unwrap();
        let touched = id();
        assert_ne!(first, touched);

        fs::write(&path, b"three").unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t1)
            .unwrap();
        assert_ne!(touched, id());
    }

    #[test]
    fn file_identity_of_missing_file_is_an_error() {
        let mut h = KeyHasher::new("test");
        let err = h
            .file_identity("src", Path::new("/nonexistent/x.tar.xz"))
            .err();
        assert!(matches!(err, Some(Error::Io { .. })));
    }

    #[test]
    fn lookup_needs_every_file_non_empty() {
        let dir = TestDir::new("lookup");
        let cache = Cache::new(dir.path());
        assert!(cache.lookup("linux", "k", &["vmlinux"]).is_none());
        let entry = cache.entry_dir("linux", "k");
        fs::create_dir_all(&entry).unwrap();
        fs::write(entry.join("vmlinux"), b"elf").unwrap();
        fs::write(entry.join("bzImage"), b"").unwrap();
        assert_eq!(
            cache.lookup("linux", "k", &["vmlinux"]),
            Some(entry.clone())
        );
        assert!(cache
            .lookup("linux", "k", &["vmlinux", "bzImage"])
            .is_none());
        assert!(cache
            .lookup("linux", "k", &["vmlinux", "missing"])
            .is_none());
    }

    #[test]
    fn publish_renames_out_dir_and_drop_cleans_up() {
        let dir = TestDir::new("publish");
        let cache = Cache::new(dir.path().join("cache"));
        let staging = cache.staging("rootfs", "k1").unwrap();
        let tmp = staging.dir.clone();
        fs::create_dir_all(staging.work_dir()).unwrap();
        fs::write(staging.work_dir().join("scratch"), b"x").unwrap();
        fs::write(staging.out_dir().join("rootfs.ext4"), b"img").unwrap();
        let entry = staging.publish("key k1\n").unwrap();
        assert_eq!(entry, cache.entry_dir("rootfs", "k1"));
        assert_eq!(fs::read(entry.join("rootfs.ext4")).unwrap(), b"img");
        assert_eq!(
            fs::read_to_string(entry.join("manifest.txt")).unwrap(),
            "key k1\n"
        );
        assert!(!tmp.exists(), "staging dir must be gone after publish");
        assert!(cache.lookup("rootfs", "k1", &["rootfs.ext4"]).is_some());
    }

    #[test]
    fn abandoned_build_leaves_no_entry() {
        let dir = TestDir::new("abandon");
        let cache = Cache::new(dir.path());
        let staging = cache.staging("linux", "k2").unwrap();
        let tmp = staging.dir.clone();
        fs::write(staging.out_dir().join("vmlinux"), b"half").unwrap();
        drop(staging);
        assert!(!tmp.exists());
        assert!(!cache.entry_dir("linux", "k2").exists());
        assert!(cache.lookup("linux", "k2", &["vmlinux"]).is_none());
    }

    #[test]
    fn losing_a_publish_race_keeps_the_winner() {
        let dir = TestDir::new("race");
        let cache = Cache::new(dir.path());
        let first = cache.staging("rootfs", "k3").unwrap();
        let second = cache.staging("rootfs", "k3").unwrap();
        fs::write(first.out_dir().join("rootfs.ext4"), b"first").unwrap();
        fs::write(second.out_dir().join("rootfs.ext4"), b"second").unwrap();
        let a = first.publish("m").unwrap();
        let b = second.publish("m").unwrap();
        assert_eq!(a, b);
        assert_eq!(fs::read(a.join("rootfs.ext4")).unwrap(), b"first");
    }

    #[test]
    fn stale_staging_of_dead_process_is_removed() {
        let dir = TestDir::new("stale");
        let cache = Cache::new(dir.path());
        // Above any pid_max, so never a live process.
        let dead = dir.path().join(".tmp-linux-k4-4294967295-12345");
        fs::create_dir_all(dead.join("out")).unwrap();
        let live = dir
            .path()
            .join(format!(".tmp-linux-k4-{}-1", std::process::id()));
        fs::create_dir_all(&live).unwrap();
        let _staging = cache.staging("linux", "k4").unwrap();
        assert!(!dead.exists(), "leftover of a dead build must be removed");
        assert!(live.exists(), "a running build's directory must be kept");
    }

    #[test]
    fn staging_owner_parses_names() {
        assert_eq!(staging_owner(".tmp-linux-0123abcd-42-999"), Some(42));
        assert_eq!(staging_owner(".tmp-rootfs-k-7-0"), Some(7));
        assert_eq!(staging_owner("linux-0123abcd"), None);
        assert_eq!(staging_owner(".tmp-linux-k-notapid-1"), None);
        assert_eq!(staging_owner(".tmp-x"), None);
    }
}
