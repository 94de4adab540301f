//! Writing a template directory atomically, the sparse memory file, and
//! opening a template's files for reading with the checks that keep a
//! symlink, FIFO, device or truncated file out (docs/security.md,
//! "Templates").

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vmfork_machine::error::{Error, Result};

const PAGE: usize = 4096;

/// A template being written: files go into a hidden sibling directory of
/// the target, which is fsynced and renamed into place only when complete.
/// Dropping it unfinished removes the partial directory.
pub struct TemplateWriter {
    target: PathBuf,
    tmp: PathBuf,
    done: bool,
}

impl TemplateWriter {
    pub fn create(target: &Path) -> Result<TemplateWriter> {
        let bad = |reason: String| Error::Template {
            path: target.to_path_buf(),
            reason,
        };
        if target.exists() {
            return Err(bad("already exists; refusing to overwrite it".into()));
        }
        let name = target
            .file_name()
            .ok_or_else(|| bad("the output needs a directory name".into()))?
            .to_string_lossy()
            .into_owned();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)
                .map_err(|e| bad(format!("clearing {}: {e}", tmp.display())))?;
        }
        // Writable by its owner only whatever the umask, so that what
        // vmfork builds is trusted (docs/security.md, "Templates").
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(|e| bad(format!("creating {}: {e}", tmp.display())))?;
        Ok(TemplateWriter {
            target: target.to_path_buf(),
            tmp,
            done: false,
        })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.tmp.join(file)
    }

    fn err(&self, what: &str, e: std::io::Error) -> Error {
        Error::Template {
            path: self.target.clone(),
            reason: format!("{what}: {e}"),
        }
    }

    /// Writes a whole small file and fsyncs it.
    pub fn write_file(&self, file: &str, bytes: &[u8]) -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(self.path(file))
            .map_err(|e| self.err(file, e))?;
        f.write_all(bytes).map_err(|e| self.err(file, e))?;
        f.sync_all().map_err(|e| self.err(file, e))
    }

    pub fn create_file(&self, file: &str) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(self.path(file))
            .map_err(|e| self.err(file, e))
    }

    /// Makes the template visible: fsync the directory, rename it to the
    /// target, fsync the parent so the rename itself is durable.
    pub fn commit(mut self) -> Result<()> {
        File::open(&self.tmp)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.err("syncing the template directory", e))?;
        fs::rename(&self.tmp, &self.target).map_err(|e| self.err("renaming into place", e))?;
        if let Some(parent) = self.target.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.err("syncing the parent directory", e))?;
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for TemplateWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Opens `dir/name` for reading as a template file: never through a
/// symlink (`O_NOFOLLOW`), never waiting on a FIFO (`O_NONBLOCK`, which
/// changes nothing for a regular file), and only a regular file of
/// exactly `len` bytes when `len` is given. The size is checked on the
/// open descriptor, before anything is read or mapped, so a truncated
/// `memory` is refused instead of raising SIGBUS on its mapping.
/// Returns the file and its metadata, for [`trusted_owner`].
pub fn open_template_file(dir: &Path, name: &str, len: Option<u64>) -> Result<(File, Metadata)> {
    let bad = |reason: String| Error::Template {
        path: dir.to_path_buf(),
        reason,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(name))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => bad(format!(
                "{name} is a symbolic link; template files must be regular files"
            )),
            _ => bad(format!(
                "no readable {name} ({e}); not a template, or an incomplete one"
            )),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("reading {name}: {e}")))?;
    // A device such as /dev/zero reports length 0 and never ends; a FIFO
    // would block the first read.
    if !meta.is_file() {
        return Err(bad(format!("{name} is not a regular file")));
    }
    match len {
        Some(expected) if meta.len() != expected => Err(bad(format!(
            "{name} is {} bytes, expected {expected} (truncated or wrong file)",
            meta.len()
        ))),
        _ => Ok((file, meta)),
    }
}

/// Whether only this process's user or root could have written what
/// `meta` describes: owned by one of them, and not group- or
/// world-writable. A template's recorded facts (its kernel digest) are
/// believed only when this holds for every one of its files and
/// directories (docs/security.md, "Templates").
pub fn trusted_owner(meta: &Metadata) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    (meta.uid() == me || meta.uid() == 0) && meta.mode() & 0o022 == 0
}

fn is_zero(page: &[u8]) -> bool {
    let (prefix, words, suffix) = {
        // SAFETY: reinterpreting initialised bytes as u64 is valid for any
        // bit pattern; align_to handles the unaligned edges.
        unsafe { page.align_to::<u64>() }
    };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

/// Writes `bytes` at `file_offset`, skipping all-zero pages so they stay
/// holes. Returns the number of bytes actually written.
pub fn write_sparse(file: &File, file_offset: u64, bytes: &[u8]) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut run_start: Option<usize> = None;
    let pages = bytes.len().div_ceil(PAGE);
    for page in 0..=pages {
        let data =
            (page < pages).then(|| &bytes[page * PAGE..((page + 1) * PAGE).min(bytes.len())]);
        let nonzero = data.is_some_and(|d| !is_zero(d));
        match (nonzero, run_start) {
            (true, None) => run_start = Some(page * PAGE),
            (false, Some(start)) => {
                let end = (page * PAGE).min(bytes.len());
                file.write_all_at(&bytes[start..end], file_offset + start as u64)?;
                written += (end - start) as u64;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmfork-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn sparse_write_leaves_zero_pages_as_holes() {
        let dir = scratch("sparse");
        let mut data = vec![0u8; 64 * PAGE];
        data[5 * PAGE + 3] = 1;
        data[6 * PAGE] = 2;
        data[40 * PAGE + PAGE - 1] = 3;
        let f = File::create(dir.join("m")).expect("file");
        f.set_len(data.len() as u64).expect("len");
        let written = write_sparse(&f, 0, &data).expect("write");
        assert_eq!(written, 3 * PAGE as u64);
        let back = fs::read(dir.join("m")).expect("read");
        assert_eq!(back, data);
        let meta = fs::metadata(dir.join("m")).expect("meta");
        assert!(
            meta.blocks() * 512 <= 4 * PAGE as u64,
            "{} blocks",
            meta.blocks()
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn template_files_must_be_regular_and_of_their_size() {
        let dir = scratch("open");
        let reason = |name: &str, len| match open_template_file(&dir, name, len) {
            Err(Error::Template { reason, .. }) => reason,
            other => panic!("{name}: {other:?}"),
        };
        fs::write(dir.join("real"), b"12345").expect("write");
        assert!(open_template_file(&dir, "real", Some(5)).is_ok());
        assert!(reason("real", Some(6)).contains("truncated"));
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).expect("symlink");
        assert!(reason("link", None).contains("symbolic link"));
        let fifo = std::ffi::CString::new(dir.join("fifo").into_os_string().into_encoded_bytes())
            .expect("path");
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let start = std::time::Instant::now();
        assert!(reason("fifo", None).contains("not a regular file"));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert!(reason("missing", None).contains("no readable"));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn only_owner_or_root_writable_files_are_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("trust");
        let path = dir.join("f");
        fs::write(&path, b"x").expect("write");
        for (mode, trusted) in [(0o644, true), (0o600, true), (0o664, false), (0o646, false)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            let meta = fs::metadata(&path).expect("meta");
            assert_eq!(trusted_owner(&meta), trusted, "mode {mode:o}");
        }
        // Another user's file, even one only it may write, is not ours to
        // believe (only root can give a file away to test this).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
            assert!(!trusted_owner(&fs::metadata(&path).expect("meta")));
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn unfinished_writer_leaves_nothing_and_commit_is_atomic() {
        let dir = scratch("writer");
        let target = dir.join("tpl");
        {
            let w = TemplateWriter::create(&target).expect("create");
            w.write_file("a", b"x").expect("write");
        }
        assert_eq!(fs::read_dir(&dir).expect("ls").count(), 0);
        let w = TemplateWriter::create(&target).expect("create");
        w.write_file("a", b"x").expect("write");
        w.commit().expect("commit");
        assert_eq!(fs::read(target.join("a")).expect("read"), b"x");
        // What vmfork writes is its own to trust.
        assert!(trusted_owner(&fs::metadata(&target).expect("dir")));
        assert!(trusted_owner(
            &fs::metadata(target.join("a")).expect("file")
        ));
        assert!(TemplateWriter::create(&target).is_err(), "no overwrite");
        let _ = fs::remove_dir_all(dir);
    }
}
