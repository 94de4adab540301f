//! A stable-Rust mutation fuzzer for the state file decoder (libFuzzer needs
//! nightly). It mutates the corpus in snapshot/fuzz/corpus with a
//! deterministic PRNG and runs `decode` and `read_from` under
//! `catch_unwind`. A finding is a panic, a decode/read_from disagreement,
//! a decoded value that does not survive encode and decode again, an allocation
//! far larger than the input, or one run taking over a second. Findings are
//! saved into the corpus as `any__<kind>-<hash>.bin`, which
//! tests/fuzz_corpus.rs then replays on every `cargo test`.
//!
//! ```text
//! cargo run --release -p vmfork-snapshot --example fuzz_state -- --seconds 600
//! cargo run -p vmfork-snapshot --example fuzz_state -- --write-seeds
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "../fuzz/sample_state.rs"]
mod sample_state;

use sample_state::{class_of, corpus_dir, fix_frame, seeds, SampleState};
use sample_state::{ARCH_AT, HEADER, LEN_AT, VERSION_AT};
use vmfork_snapshot::{decode, encode, read_from, Error, MAX_STATE_LEN};

/// Records the largest single allocation, to catch a length field that
/// makes the decoder allocate what the input does not contain.
struct PeakAlloc;

static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with its arguments unchanged;
// the only addition is a relaxed atomic max, which cannot allocate.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        PEAK.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// serde pre-allocates at most 1 MiB per collection from a length prefix;
/// anything past this for a small input is a bug.
const ALLOC_SLACK: usize = 4 << 20;
const MAX_INPUT: usize = 256 << 10;
const MAX_POOL: usize = 4096;

/// splitmix64: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Args {
    seconds: u64,
    seed: u64,
    corpus: PathBuf,
    write_seeds: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 60,
        seed: 0x5eed,
        corpus: corpus_dir(),
        write_seeds: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                args.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--corpus" => args.corpus = value("--corpus")?.into(),
            "--write-seeds" => args.write_seeds = true,
            other => {
                return Err(format!(
                    "unknown argument {other}; see the file's doc comment"
                ))
            }
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz_state: {e}");
            std::process::exit(2);
        }
    };
    if args.write_seeds {
        std::fs::create_dir_all(&args.corpus).expect("create corpus dir");
        for (name, bytes) in seeds() {
            std::fs::write(args.corpus.join(&name), bytes).expect("write seed");
        }
        println!("wrote {} seeds to {}", seeds().len(), args.corpus.display());
        return;
    }
    fuzz(&args);
}

/// The built-in seeds plus whatever the corpus directory holds (earlier
/// finds, hand-made inputs), without duplicates.
fn load_corpus(args: &Args) -> Vec<Vec<u8>> {
    let mut pool: Vec<Vec<u8>> = seeds().into_iter().map(|(_, b)| b).collect();
    if let Ok(dir) = std::fs::read_dir(&args.corpus) {
        for entry in dir.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                pool.push(bytes);
            }
        }
    }
    let mut seen = HashSet::new();
    pool.retain(|b| seen.insert(fnv1a(b)));
    pool
}

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

fn fuzz(args: &Args) {
    panic::set_hook(Box::new(|info| {
        if let Ok(mut m) = PANIC_MESSAGE.lock() {
            *m = Some(info.to_string());
        }
    }));
    let mut pool = load_corpus(args);
    let mut rng = Rng(args.seed);
    let mut features: HashSet<String> = HashSet::new();
    let mut classes: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut findings: HashSet<u64> = HashSet::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut execs: u64 = 0;
    println!(
        "fuzz_state: seed {:#x}, {} inputs, {} s",
        args.seed,
        pool.len(),
        args.seconds
    );
    while Instant::now() < deadline {
        for _ in 0..256 {
            let input = mutate(&mut rng, &pool);
            execs += 1;
            let outcome = run_one(&input, &mut rng);
            *classes.entry(outcome.class).or_default() += 1;
            if let Some(kind) = outcome.finding {
                report(args, kind, &input, &mut findings);
            }
            // New error text or new decoded shape: keep the input as a base
            // for further mutation (a crude stand-in for coverage feedback).
            if pool.len() < MAX_POOL && features.insert(outcome.feature) {
                pool.push(input);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz_state: {execs} executions in {secs:.1} s ({:.0}/s), pool {}, {} distinct outcomes, {} findings",
        execs as f64 / secs,
        pool.len(),
        features.len(),
        findings.len()
    );
    for (class, n) in &classes {
        println!("  {class:>15}: {n}");
    }
    if !findings.is_empty() {
        std::process::exit(1);
    }
}

struct Outcome {
    class: &'static str,
    feature: String,
    finding: Option<&'static str>,
}

fn run_one(input: &[u8], rng: &mut Rng) -> Outcome {
    PEAK.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let decoded = panic::catch_unwind(|| decode::<SampleState>(input));
    let cap = match rng.below(4) {
        0 => MAX_STATE_LEN,
        1 => rng.below(input.len() + 1) as u64,
        2 => u64::MAX,
        _ => input.len() as u64,
    };
    let streamed = panic::catch_unwind(AssertUnwindSafe(|| {
        read_from::<SampleState>(&mut Cursor::new(input), cap)
    }));
    let elapsed = started.elapsed();
    let peak = PEAK.load(Ordering::Relaxed);
    let (Ok(decoded), Ok(streamed)) = (decoded, streamed) else {
        return Outcome {
            class: "PANIC",
            feature: "panic".into(),
            finding: Some("panic"),
        };
    };
    let mut finding = None;
    // With the default cap both readers see the same file the same way.
    if cap == MAX_STATE_LEN && class_of(&decoded) != class_of(&streamed) {
        finding = Some("disagree");
    }
    // Postcard accepts overlong varints, so bytes need not re-encode to
    // themselves; the value must survive another round trip unchanged.
    if let Ok(state) = &decoded {
        let again = encode(state)
            .ok()
            .and_then(|b| decode::<SampleState>(&b).ok());
        if again.as_ref() != Some(state) {
            finding = Some("roundtrip");
        }
    }
    if peak > input.len() * 2 + ALLOC_SLACK {
        finding = Some("alloc");
    }
    if elapsed > Duration::from_secs(1) {
        finding = Some("slow");
    }
    Outcome {
        class: class_of(&decoded),
        feature: feature_of(&decoded),
        finding,
    }
}

fn feature_of(r: &Result<SampleState, Error>) -> String {
    match r {
        Ok(s) => format!(
            "ok {} {} {:?} {}",
            s.vcpus.len(),
            s.devices.len(),
            s.memory
                .as_ref()
                .map(|m| (m.regions.len(), m.dirty.is_some())),
            s.name.len().min(4)
        ),
        // Postcard's message names the kind of failure, not the input.
        Err(Error::Decode(e)) => format!("decode {e}"),
        Err(_) => class_of(r).to_string(),
    }
}

fn report(args: &Args, kind: &str, input: &[u8], seen: &mut HashSet<u64>) {
    let hash = fnv1a(input);
    if !seen.insert(hash) {
        return;
    }
    let message = PANIC_MESSAGE.lock().ok().and_then(|mut m| m.take());
    let path = args.corpus.join(format!("any__{kind}-{hash:016x}.bin"));
    match std::fs::write(&path, input) {
        Ok(()) => println!("FINDING {kind}: saved {}", path.display()),
        Err(e) => println!("FINDING {kind}: could not save {}: {e}", path.display()),
    }
    if let Some(m) = message {
        println!("  {m}");
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, 0x0f, 0x10];

fn mutate(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut data = pool[rng.below(pool.len())].clone();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, pool, &mut data);
    }
    data.truncate(MAX_INPUT);
    // Most mutations break the checksum; repair it often so the payload
    // decoder, not just the frame checks, gets exercised.
    if rng.chance(60) {
        fix_frame(&mut data);
    }
    data
}

fn mutate_once(rng: &mut Rng, pool: &[Vec<u8>], data: &mut Vec<u8>) {
    let len = data.len();
    match rng.below(11) {
        0 if len > 0 => {
            let bit = rng.below(len * 8);
            data[bit / 8] ^= 1 << (bit % 8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = if rng.chance(50) {
                INTERESTING[rng.below(INTERESTING.len())]
            } else {
                rng.next() as u8
            };
        }
        2 => data.truncate(rng.below(len + 1)),
        3 => {
            let at = rng.below(len + 1);
            let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            data.splice(at..at, junk);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        5 => {
            let other = &pool[rng.below(pool.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        6 if len >= HEADER => {
            let actual = len.saturating_sub(HEADER + 8) as u64;
            let value = match rng.below(7) {
                0 => actual.wrapping_add(1 + rng.below(8) as u64),
                1 => actual.wrapping_sub(1 + rng.below(8) as u64),
                2 => 1 << 63,
                3 => u64::MAX,
                4 => MAX_STATE_LEN + rng.below(3) as u64 - 1,
                5 => rng.next(),
                _ => actual,
            };
            data[LEN_AT..HEADER].copy_from_slice(&value.to_le_bytes());
        }
        7 if len > 1 => {
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(32));
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len);
            data.splice(at..at, chunk);
        }
        8 if len > HEADER => {
            // A varint at its limits, where length prefixes and integers live.
            let at = HEADER + rng.below(len - HEADER);
            let varint: &[u8] = match rng.below(3) {
                0 => &[0xff, 0xff, 0xff, 0xff, 0x0f],
                1 => &[0xff; 10],
                _ => &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02],
            };
            data.splice(at..at, varint.iter().copied());
        }
        9 => data.extend((0..1 + rng.below(32)).map(|_| rng.next() as u8)),
        10 if len >= HEADER => {
            let at = if rng.chance(50) { VERSION_AT } else { ARCH_AT } + rng.below(4);
            data[at] = rng.next() as u8;
        }
        _ => {}
    }
}
