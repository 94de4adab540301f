//! Writing a template directory atomically, and the sparse memory file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
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
        fs::create_dir(&tmp).map_err(|e| bad(format!("creating {}: {e}", tmp.display())))?;
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
        let mut f = File::create(self.path(file)).map_err(|e| self.err(file, e))?;
        f.write_all(bytes).map_err(|e| self.err(file, e))?;
        f.sync_all().map_err(|e| self.err(file, e))
    }

    pub fn create_file(&self, file: &str) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
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
        assert!(TemplateWriter::create(&target).is_err(), "no overwrite");
        let _ = fs::remove_dir_all(dir);
    }
}
