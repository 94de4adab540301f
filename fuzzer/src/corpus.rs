//! Corpus directories: seeds written by `--write-seeds`, findings saved by
//! the fuzzer, and the replay that the regression tests run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::mutate::Rng;
use crate::run::{capture_panics, check};
use crate::target::Target;

pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The class a corpus file name promises, `None` for `any` (fuzzer finds,
/// which must only give no finding).
pub fn expected_class(file_name: &str) -> Option<&str> {
    let class = file_name.split("__").next().unwrap_or(file_name);
    (class != "any").then_some(class)
}

/// The corpus files of `T` in `dir`, sorted by name.
fn corpus_files<T: Target>(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == T::EXTENSION))
        .collect();
    files.sort();
    Ok(files)
}

pub(crate) fn write_seeds<T: Target>(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let seeds = T::seeds();
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}

/// The seeds plus whatever the corpus directory holds (earlier finds,
/// hand-made inputs), without duplicates; never empty.
pub(crate) fn load_pool<T: Target>(dir: &Path) -> Vec<Vec<u8>> {
    let mut pool: Vec<Vec<u8>> = T::seeds().into_iter().map(|(_, b)| b).collect();
    for path in corpus_files::<T>(dir).unwrap_or_default() {
        if let Ok(bytes) = std::fs::read(path) {
            pool.push(bytes);
        }
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let mut seen = HashSet::new();
    pool.retain(|b| seen.insert(fnv1a(b)));
    pool
}

pub(crate) fn save_finding<T: Target>(
    dir: &Path,
    kind: &str,
    input: &[u8],
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(
        "any__{kind}-{:016x}.{}",
        fnv1a(input),
        T::EXTENSION
    ));
    std::fs::write(&path, input)?;
    Ok(path)
}

/// Asserts that every seed is on disk, byte for byte: the corpus in git is
/// what the harness generates. `regenerate` is the command that fixes it.
pub fn assert_seeds_current<T: Target>(regenerate: &str) {
    let dir = T::corpus_dir();
    for (name, bytes) in T::seeds() {
        let path = dir.join(&name);
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is missing or stale; regenerate the seeds with `{regenerate}`",
            path.display()
        );
    }
}

/// Runs every corpus file of `T` through [`check`]: no file may give a
/// finding, and each must give the class its name promises. Panics with
/// every failure listed.
pub fn replay<T: Target>(target: &mut T) {
    capture_panics(true);
    let dir = T::corpus_dir();
    let files = corpus_files::<T>(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()));
    assert!(
        files.len() >= T::seeds().len(),
        "{} is missing seeds",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Seeded by content, so a file replays the same way every time.
        let outcome = check(target, &bytes, &mut Rng(fnv1a(&bytes)));
        if let Some(f) = &outcome.finding {
            failures.push(format!("{name}: {} ({})", f.kind, f.detail));
        } else if let Some(class) = expected_class(&name) {
            if class != outcome.class {
                failures.push(format!("{name}: class {}", outcome.class));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_promise_their_class() {
        assert_eq!(expected_class("ok__full.json"), Some("ok"));
        assert_eq!(expected_class("200+404__pipelined.http"), Some("200+404"));
        assert_eq!(expected_class("any__panic-0123.bin"), None);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
