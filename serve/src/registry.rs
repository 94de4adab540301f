//! The functions a server serves, by name: those given with `--template`
//! and those deployed over HTTP (deploy.rs), each with its own limits.
//! With `--state-dir`, deployed functions are kept there and served again
//! after a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::function::Function;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::exec::DEFAULT_OUTPUT_CAP;
use vmfork_machine::units::{format_size, parse_duration, parse_size};

/// Limits of one function; a deploy's query parameters override the
/// server's defaults (its flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionLimits {
    /// Wall-clock time per request (504 past it).
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Bytes of stdout, and of stderr, per request (502 past it).
    pub max_output: u32,
    /// Guest memory of the function's VM.
    pub memory: u64,
}

/// Smallest and largest memory a deployed function may ask for.
pub const MIN_MEMORY: u64 = 16 << 20;
pub const MAX_MEMORY: u64 = 4 << 30;

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl FunctionLimits {
    /// These limits with a query string's `timeout=`, `memory=` and
    /// `max_output=` applied; anything else in it is an error.
    pub fn with_query(&self, query: Option<&str>) -> std::result::Result<Self, String> {
        let mut limits = *self;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |why: String| format!("{key}={value:?}: {why}");
            match key {
                "timeout" => limits.timeout = parse_duration(value).map_err(bad)?,
                "memory" => {
                    let m = parse_size(value).map_err(bad)?;
                    if !(MIN_MEMORY..=MAX_MEMORY).contains(&m) || m % (2 << 20) != 0 {
                        return Err(bad(format!(
                            "memory is whole 2 MiB units from {} to {}",
                            format_size(MIN_MEMORY),
                            format_size(MAX_MEMORY)
                        )));
                    }
                    limits.memory = m;
                }
                "max_output" => {
                    limits.max_output = parse_size(value).map_err(bad).and_then(|n| {
                        u32::try_from(n)
                            .ok()
                            .filter(|n| (1..=DEFAULT_OUTPUT_CAP).contains(n))
                            .ok_or_else(|| {
                                bad(format!(
                                    "at most {}",
                                    format_size(DEFAULT_OUTPUT_CAP.into())
                                ))
                            })
                    })?
                }
                _ => {
                    return Err(format!(
                        "unknown parameter {key:?} (timeout, memory, max_output)"
                    ))
                }
            }
        }
        Ok(limits)
    }
}

/// One served function.
pub struct Entry {
    pub function: Arc<Function>,
    /// Its template directory.
    pub template: PathBuf,
    pub limits: FunctionLimits,
    /// Deployed over HTTP (so DELETE removes its files), rather than given
    /// with `--template`.
    pub deployed: bool,
    /// A Lambda function behind an API Gateway proxy mapping
    /// (`--api-gateway NAME`, lambda.rs).
    pub api_gateway: bool,
}

#[derive(Default)]
pub struct Registry {
    entries: RwLock<BTreeMap<String, Arc<Entry>>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<Entry>> {
        self.read().get(name).cloned()
    }

    /// Adds or replaces `name`; requests already running keep the entry
    /// they started with. Returns the replaced one.
    pub fn insert(&self, name: &str, entry: Entry) -> Option<Arc<Entry>> {
        self.write().insert(name.to_string(), Arc::new(entry))
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Entry>> {
        self.write().remove(name)
    }

    pub fn list(&self) -> Vec<(String, Arc<Entry>)> {
        self.read()
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Entry>>> {
        // A panic elsewhere while holding the lock leaves a map that is
        // still whole: every update is a single insert or remove.
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A function name: what `--template NAME=DIR` and `PUT
/// /v1/functions/NAME` accept.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "function name {name:?}: 1 to 64 letters, digits, '-' and '_'"
        ))
    }
}

/// What a state directory records of one deployed function, beside its
/// template: which template directory is current, and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The template's directory name inside the function's directory.
    pub template: String,
    pub limits: FunctionLimits,
    /// Hex SHA-256 of the deployed module.
    pub module_sha256: String,
}

/// Where a state directory keeps one deployed function:
/// `functions/NAME/function.json` and `functions/NAME/template-N/`.
pub struct Stored {
    pub dir: PathBuf,
}

pub const RECORD_FILE: &str = "function.json";

impl Stored {
    pub fn new(state_dir: &Path, name: &str) -> Stored {
        Stored {
            dir: state_dir.join("functions").join(name),
        }
    }

    /// A template directory name not in use yet.
    pub fn next_template(&self) -> Result<String> {
        std::fs::create_dir_all(&self.dir)?;
        let mut n = 1u64;
        loop {
            let name = format!("template-{n}");
            if !self.dir.join(&name).exists() {
                return Ok(name);
            }
            n += 1;
        }
    }

    pub fn write(&self, record: &Record) -> Result<()> {
        let text = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::InvalidArgument(format!("encoding {RECORD_FILE}: {e}")))?;
        let tmp = self.dir.join(".function.json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.dir.join(RECORD_FILE))?;
        Ok(())
    }

    pub fn read(&self) -> Result<Record> {
        let path = self.dir.join(RECORD_FILE);
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.is_file() || meta.len() > 64 << 10 {
            return Err(Error::InvalidArgument(format!(
                "{}: not a small regular file",
                path.display()
            )));
        }
        let text = std::fs::read(&path)?;
        let record: Record = serde_json::from_slice(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        if record.template.contains('/') || record.template.starts_with('.') {
            return Err(Error::InvalidArgument(format!(
                "{}: bad template name {:?}",
                path.display(),
                record.template
            )));
        }
        Ok(record)
    }

    /// Removes every template directory but `keep` (a replaced function's
    /// old template, or the leftovers of a build that failed).
    pub fn prune(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("template-") && name != keep {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The names of the functions a state directory holds.
pub fn stored_names(state_dir: &Path) -> Result<Vec<String>> {
    let dir = state_dir.join("functions");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if check_name(&name).is_ok() && entry.file_type()?.is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: FunctionLimits = FunctionLimits {
        timeout: Duration::from_secs(5),
        max_output: 1 << 20,
        memory: 64 << 20,
    };

    #[test]
    fn query_parameters_override_the_defaults() {
        let l = DEFAULTS
            .with_query(Some("timeout=2s&memory=128M&max_output=4K"))
            .expect("limits");
        assert_eq!(l.timeout, Duration::from_secs(2));
        assert_eq!(l.memory, 128 << 20);
        assert_eq!(l.max_output, 4096);
        assert_eq!(DEFAULTS.with_query(None), Ok(DEFAULTS));
        assert_eq!(DEFAULTS.with_query(Some("")), Ok(DEFAULTS));
    }

    #[test]
    fn bad_query_parameters_say_which() {
        for (q, needle) in [
            ("timeout=forever", "timeout="),
            ("memory=1K", "2 MiB units"),
            ("memory=3M", "2 MiB units"),
            ("max_output=2G", "at most"),
            ("max_output=0", "at most"),
            ("color=red", "unknown parameter"),
        ] {
            let e = DEFAULTS.with_query(Some(q)).expect_err(q);
            assert!(e.contains(needle), "{q}: {e}");
        }
    }

    #[test]
    fn names() {
        assert!(check_name("word-count_2").is_ok());
        for bad in ["", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_round_trip_through_a_state_dir() {
        let dir = std::env::temp_dir().join(format!("vmfork-registry-{}", std::process::id()));
        let stored = Stored::new(&dir, "f");
        let template = stored.next_template().expect("next");
        assert_eq!(template, "template-1");
        let record = Record {
            template,
            limits: DEFAULTS,
            module_sha256: "00".repeat(32),
        };
        stored.write(&record).expect("write");
        assert_eq!(stored.read().expect("read"), record);
        assert_eq!(stored_names(&dir).expect("names"), ["f"]);
        std::fs::create_dir(stored.dir.join("template-1")).expect("mkdir");
        std::fs::create_dir(stored.dir.join("template-2")).expect("mkdir");
        stored.prune("template-2");
        assert!(!stored.dir.join("template-1").exists());
        assert!(stored.dir.join("template-2").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
