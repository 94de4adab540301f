//! Fuzz target: the template manifest (`template.json`,
//! src/template/manifest.rs). Shared by examples/fuzz_manifest.rs (the
//! fuzzer) and tests/fuzz_corpus.rs (the corpus replay).
//!
//! Anything a file can hold must give either a manifest whose fields agree
//! with each other (checked here by an oracle written from the format's
//! rules, not from the parser's code) and which survives being written and
//! read again, or a `Template` error whose message is one short line (the
//! CLI prints errors as one line on stderr).

use std::path::{Path, PathBuf};

use fuzzer::{Limits, Outcome, Rng, Target};
use serde_json::{json, Value};
use vmfork_machine::Error;
use vmfork_template::manifest::{Manifest, TemplateKind, MANIFEST_FILE};

#[path = "manifest_seeds.rs"]
mod manifest_seeds;

/// Where errors say the template is; `parse` only names it.
const LABEL: &str = "/fuzz/template";
pub const GIB: u64 = 1 << 30;

pub struct ManifestTarget {
    /// A scratch template directory: every few runs the input is written
    /// here and read back through `Manifest::read`, the path the CLI takes.
    dir: PathBuf,
}

impl ManifestTarget {
    pub fn new() -> Result<ManifestTarget, String> {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("vmfork-fuzz-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(ManifestTarget { dir })
    }
}

impl Drop for ManifestTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the rules of the format (README, docs/snapshot-format.md, the
/// cold-boot limits) allow, written independently of `Manifest::validate`.
fn inconsistency(m: &Manifest) -> Option<String> {
    let regions: Vec<(u64, u64)> = m
        .memory_regions
        .iter()
        .map(|r| (r.guest_addr, r.size))
        .collect();
    // RAM below the 3 GiB MMIO gap, the rest from 4 GiB.
    let layout = if m.mem_size > 3 * GIB {
        vec![(0, 3 * GIB), (4 * GIB, m.mem_size - 3 * GIB)]
    } else {
        vec![(0, m.mem_size)]
    };
    let frame = 28 + 8;
    let hex = |s: &str| s.len() == 64 && s.chars().all(|c| "0123456789abcdef".contains(c));
    let diff = m.kind == TemplateKind::Diff;
    let rules = [
        (
            m.format_version == vmfork_template::manifest::FORMAT_VERSION,
            "version",
        ),
        (diff == m.base.is_some(), "base only on a diff"),
        (
            diff == m.base_sha256.is_some(),
            "base digest only on a diff",
        ),
        (m.base_sha256.as_deref().is_none_or(hex), "base digest"),
        (
            m.base.as_ref().is_none_or(|b| b.is_absolute()),
            "relative base",
        ),
        (
            diff == m.dirty_pages.is_some(),
            "dirty pages only on a diff",
        ),
        (
            m.base.as_ref().is_none_or(|b| !b.as_os_str().is_empty()),
            "empty base",
        ),
        (
            m.dirty_pages.is_none_or(|p| p <= m.mem_size / 4096),
            "dirty pages",
        ),
        ((1..=254).contains(&m.vcpus), "vcpus"),
        (
            (1 << 20..=1 << 40).contains(&m.mem_size) && m.mem_size.is_multiple_of(4096),
            "mem_size",
        ),
        (regions == layout, "memory regions"),
        (m.memory_bytes == m.mem_size, "memory_bytes"),
        (
            m.state_bytes > frame && m.state_bytes <= (64 << 20) + frame,
            "state_bytes",
        ),
        (!m.kernel.source.is_empty(), "kernel source"),
        (hex(&m.kernel.sha256), "kernel digest"),
        (
            m.kernel.cmdline.len() < 4096 && !m.kernel.cmdline.contains('\0'),
            "cmdline",
        ),
        (
            m.rootfs.as_ref().is_none_or(|r| {
                r.path.is_absolute()
                    && r.size > 0
                    && r.size.is_multiple_of(2 << 20)
                    && hex(&r.sha256)
            }),
            "rootfs",
        ),
    ];
    rules
        .iter()
        .find(|(ok, _)| !ok)
        .map(|(_, what)| what.to_string())
}

fn class_of(r: &Result<Manifest, Error>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(Error::Template { reason, .. }) if reason.contains(" is malformed: ") => "malformed",
        Err(Error::Template { reason, .. }) if reason.contains("format version") => "version",
        Err(Error::Template { .. }) => "invalid",
        Err(_) => "other-error",
    }
}

/// An error message with the input's own values taken out, so each kind
/// of complaint counts as one feature: the text before anything quoted or
/// listed, plus what serde expected instead, with digits folded.
fn shape_of(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or_default();
    let head = message
        .split(['`', '"', '(', '['])
        .next()
        .unwrap_or_default();
    let expected = message
        .rsplit_once(", expected ")
        .map(|(_, e)| e.split(['`', '"']).next().unwrap_or_default())
        .unwrap_or_default();
    format!("{head}|{expected}")
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

impl Target for ManifestTarget {
    const NAME: &'static str = "fuzz_manifest";
    const EXTENSION: &'static str = "json";

    fn corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/manifest")
    }

    fn seeds() -> Vec<(String, Vec<u8>)> {
        manifest_seeds::seeds()
    }

    fn run(&mut self, input: &[u8], rng: &mut Rng) -> Outcome {
        let parsed = Manifest::parse(Path::new(LABEL), input);
        let class = class_of(&parsed);
        let feature = match &parsed {
            Ok(m) => format!(
                "ok {:?} {} {} {}",
                m.kind,
                m.memory_regions.len(),
                m.vcpus.min(3),
                m.kernel.cmdline.len().min(64) / 16
            ),
            Err(e) => shape_of(&e.to_string()),
        };
        let mut outcome = Outcome::new(class, feature);
        match &parsed {
            Ok(m) => {
                if let Some(what) = inconsistency(m) {
                    outcome.find(
                        "accepted",
                        format!("accepted an inconsistent {what}: {m:?}"),
                    );
                }
                let again = serde_json::to_vec_pretty(m)
                    .map_err(|e| e.to_string())
                    .and_then(|t| Manifest::parse(Path::new(LABEL), &t).map_err(|e| e.to_string()));
                outcome.check(again.as_ref() == Ok(m), "roundtrip", || {
                    format!("{m:?} came back as {again:?}")
                });
            }
            Err(e) => {
                let message = e.to_string();
                outcome.check(
                    matches!(e, Error::Template { path, .. } if path == Path::new(LABEL)),
                    "error-kind",
                    || format!("not a Template error about {LABEL}: {e:?}"),
                );
                outcome.check(
                    message.len() <= 400 && !message.chars().any(char::is_control),
                    "message",
                    || format!("not one short line ({} bytes): {message:?}", message.len()),
                );
            }
        }
        // The file path (open, stat, bounded read) gives the same answer.
        if rng.below(8) == 0 {
            let read = std::fs::write(self.dir.join(MANIFEST_FILE), input)
                .map_err(|e| e.to_string())
                .map(|()| Manifest::read(&self.dir));
            match read {
                Err(e) => outcome.find("setup", format!("writing the scratch manifest: {e}")),
                Ok(read) => {
                    let same = match (&read, &parsed) {
                        (Ok(a), Ok(b)) => a == b,
                        (
                            Err(Error::Template { reason: a, .. }),
                            Err(Error::Template { reason: b, .. }),
                        ) => a == b,
                        _ => false,
                    };
                    outcome.check(same, "read-differs", || {
                        format!("read gave {read:?}, parse gave {parsed:?}")
                    });
                }
            }
        }
        outcome
    }

    fn mutate(&mut self, rng: &mut Rng, _pool: &[Vec<u8>], data: &mut Vec<u8>) -> bool {
        let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
            return false;
        };
        let nodes = count_nodes(&value);
        let mut target = rng.below(nodes);
        if let Some(node) = nth_node(&mut value, &mut target) {
            mutate_node(rng, node);
        }
        let text = if rng.chance(50) {
            serde_json::to_vec_pretty(&value)
        } else {
            serde_json::to_vec(&value)
        };
        match text {
            Ok(t) => {
                *data = t;
                true
            }
            Err(_) => false,
        }
    }

    fn dictionary(&self) -> &[&[u8]] {
        &[
            b"\"format_version\"",
            b"\"kind\"",
            b"\"base\"",
            b"\"base_sha256\"",
            b"\"vcpus\"",
            b"\"mem_size\"",
            b"\"memory_regions\"",
            b"\"guest_addr\"",
            b"\"size\"",
            b"\"kernel\"",
            b"\"source\"",
            b"\"sha256\"",
            b"\"cmdline\"",
            b"\"host\"",
            b"\"state_bytes\"",
            b"\"memory_bytes\"",
            b"\"dirty_pages\"",
            b"\"created_unix_ms\"",
            b"\"full\"",
            b"\"diff\"",
            b"null",
            b"true",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\\u0000",
            b"\\ud800",
            b"\\n",
            b"\xef\xbb\xbf",
            b"\xff",
            b"1e400",
            b"-0",
            b"3221225472",
            b"4294967296",
        ]
    }

    fn limits(&self) -> Limits {
        Limits {
            max_input: 64 << 10,
            // Blind byte mutations mostly break the JSON; keep most of the
            // inputs parseable so the checks after parsing get exercised.
            structured_percent: 60,
            ..Limits::default()
        }
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The `n`th node in pre-order.
fn nth_node<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    match v {
        Value::Array(items) => items.iter_mut().find_map(|c| nth_node(c, n)),
        Value::Object(map) => map.values_mut().find_map(|c| nth_node(c, n)),
        _ => None,
    }
}

const FIELDS: [&str; 9] = [
    "vcpus",
    "mem_size",
    "base",
    "base_sha256",
    "dirty_pages",
    "memory_regions",
    "kind",
    "extra",
    "",
];

fn edge_value(rng: &mut Rng) -> Value {
    match rng.below(16) {
        0 => json!(0),
        1 => json!(1),
        2 => json!(-1),
        3 => json!(u32::MAX),
        4 => json!(u64::from(u32::MAX) + 1),
        5 => json!(u64::MAX),
        6 => json!(i64::MIN),
        7 => json!(1.5),
        8 => json!(3 * GIB + 4096),
        9 => Value::Null,
        10 => json!(""),
        11 => json!("a\nb\u{0}\u{202e}"),
        12 => json!("x".repeat(5000)),
        13 => json!([]),
        14 => json!({}),
        _ => json!(rng.next_u64() >> rng.below(64)),
    }
}

fn mutate_node(rng: &mut Rng, node: &mut Value) {
    match node {
        Value::Number(n) if rng.chance(60) => {
            let x = n.as_u64().unwrap_or(0);
            let page = 4096u64;
            let y = match rng.below(6) {
                0 => x.wrapping_add(1),
                1 => x.wrapping_sub(1),
                2 => x.wrapping_add(page),
                3 => x.wrapping_sub(page),
                4 => x.wrapping_mul(2),
                _ => x / 2,
            };
            *node = json!(y);
        }
        Value::Object(map) if rng.chance(60) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            if rng.chance(50) && !keys.is_empty() {
                map.remove(rng.pick(&keys));
            } else {
                let key = rng.pick(&FIELDS).to_string();
                map.insert(key, edge_value(rng));
            }
        }
        Value::Array(items) if rng.chance(60) => {
            if rng.chance(50) && !items.is_empty() {
                let i = rng.below(items.len());
                let copy = items[i].clone();
                items.insert(i, copy);
            } else if !items.is_empty() {
                items.remove(rng.below(items.len()));
            } else {
                items.push(json!({"guest_addr": 0, "size": 4096}));
            }
        }
        Value::String(s) if rng.chance(50) => {
            *s = match rng.below(5) {
                0 => "diff".into(),
                1 => "full".into(),
                2 => "0".repeat(64),
                3 => s.to_uppercase(),
                _ => format!("{s}\u{0}"),
            }
        }
        _ => *node = edge_value(rng),
    }
}
