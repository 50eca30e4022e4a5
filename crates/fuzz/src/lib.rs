//! A fuzz runner that works on the stable toolchain: no libFuzzer, no
//! sanitizers, no nightly. The targets in `tests/` hand it a check (a
//! closure over bytes that panics when a property breaks) and it runs, in
//! order:
//!
//! 1. every file of `regressions/<target>/` (inputs that once broke a
//!    property: each is a regression test for the bug it found);
//! 2. every file of `corpus/<target>/` and the seeds the target builds in
//!    code (signed tokens, encoded records);
//! 3. mutations of that pool until the time budget is spent.
//!
//! There is no coverage feedback. Instead each check returns a short
//! *outcome label* (`"ok"`, `"err:bad_path"`, …): an input that produces a
//! label not seen before joins the pool, so the search keeps inputs that
//! reached a new branch of the target's result. Mutations are byte-level
//! (flip, insert, delete, duplicate, splice, dictionary tokens, interesting
//! integers) plus a JSON-aware one that replaces a node of a parsed value.
//!
//! A failing input is written to `$TMPDIR/portcullis-fuzz/<target>-<hash>`
//! and the test fails naming that file and the seed; copy the file into
//! `regressions/<target>/` with the fix. Environment:
//! - [`ENV_SECS`]: time budget per target in seconds (default
//!   [`DEFAULT_SECS`]; the CI run keeps the default);
//! - [`ENV_SEED`]: the PRNG seed, to replay a run (printed at the start);
//! - [`ENV_SAVE`]: when set, new-label inputs are written to
//!   `corpus/<target>/` so a long run grows the committed corpus.
//!
//! See `docs/testing.md`.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Seconds each target runs after its corpus (fractions allowed).
pub const ENV_SECS: &str = "PORTCULLIS_FUZZ_SECS";
/// The PRNG seed (a decimal `u64`).
pub const ENV_SEED: &str = "PORTCULLIS_FUZZ_SEED";
/// When set, inputs with a new outcome label are saved to the corpus.
pub const ENV_SAVE: &str = "PORTCULLIS_FUZZ_SAVE";
/// The default budget per target: short enough for every `cargo test`.
pub const DEFAULT_SECS: f64 = 3.0;
/// Largest input a mutation may produce.
pub const MAX_INPUT: usize = 16 * 1024;
/// Largest pool of inputs kept in memory.
const MAX_POOL: usize = 4096;

/// Values that sit on the edges parsers get wrong.
const INTERESTING: [&str; 16] = [
    "0",
    "-1",
    "1e400",
    "-0",
    "0.0001",
    "1.00000",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "4294967296",
    "NaN",
    "1E-7",
    "\"\"",
    "null",
    "[]",
];

/// One fuzz target: its name (the corpus folder), a dictionary of tokens
/// its format uses, and the seeds it builds in code.
pub struct Target {
    name: &'static str,
    dictionary: Vec<Vec<u8>>,
    seeds: Vec<Vec<u8>>,
    max_input: usize,
}

/// What a run did, for the test's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Inputs executed.
    pub executions: u64,
    /// Inputs in the pool at the end (corpus plus new-label finds).
    pub pool: usize,
    /// Distinct outcome labels seen.
    pub labels: usize,
}

impl Target {
    /// A target named `name` (its corpus is `corpus/<name>/`).
    pub fn new(name: &'static str) -> Self {
        Target {
            name,
            dictionary: Vec::new(),
            seeds: Vec::new(),
            max_input: MAX_INPUT,
        }
    }

    /// Tokens of the input format, inserted by mutation.
    pub fn dictionary(mut self, words: &[&str]) -> Self {
        self.dictionary
            .extend(words.iter().map(|w| w.as_bytes().to_vec()));
        self
    }

    /// Seeds built in code (e.g. freshly signed tokens).
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.seeds.extend(seeds);
        self
    }

    /// A smaller input cap, for targets whose cost grows fast with size.
    pub fn max_input(mut self, bytes: usize) -> Self {
        self.max_input = bytes;
        self
    }

    /// Runs `check` over the regressions, the corpus and mutations for the
    /// time budget. Panics (failing the test) on the first input whose
    /// check panics, after saving it.
    pub fn run(self, mut check: impl FnMut(&[u8]) -> String) -> Summary {
        let seed = std::env::var(ENV_SEED)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(clock_seed);
        let secs = std::env::var(ENV_SECS)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(DEFAULT_SECS);
        let save = std::env::var_os(ENV_SAVE).is_some();
        eprintln!(
            "fuzz {}: seed {seed} ({ENV_SEED}={seed} replays), {secs} s",
            self.name
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let corpus_dir = root.join("corpus").join(self.name);
        let regressions = read_dir_files(&root.join("regressions").join(self.name));
        let mut pool = read_dir_files(&corpus_dir);
        pool.extend(self.seeds.iter().cloned());
        let mut labels = HashSet::new();
        let mut executions = 0u64;
        let mut exec = |input: &[u8], check: &mut dyn FnMut(&[u8]) -> String| {
            executions += 1;
            match catch_unwind(AssertUnwindSafe(|| check(input))) {
                Ok(label) => label,
                Err(cause) => crash(self.name, seed, input, &*cause),
            }
        };
        for input in regressions.iter().chain(pool.iter()) {
            labels.insert(exec(input, &mut check));
        }
        if pool.is_empty() {
            pool.push(Vec::new());
        }
        let mut rng = Rng(seed | 1);
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < deadline {
            let mut input = pool[rng.below(pool.len())].clone();
            for _ in 0..=rng.below(4) {
                self.mutate(&mut input, &pool, &mut rng);
            }
            input.truncate(self.max_input);
            let label = exec(&input, &mut check);
            if labels.insert(label) && pool.len() < MAX_POOL {
                if save {
                    save_input(&corpus_dir, &input);
                }
                pool.push(input);
            }
        }
        let summary = Summary {
            executions,
            pool: pool.len(),
            labels: labels.len(),
        };
        eprintln!("fuzz {}: {summary:?}", self.name);
        summary
    }

    fn mutate(&self, input: &mut Vec<u8>, pool: &[Vec<u8>], rng: &mut Rng) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(len + 1);
                input.insert(at, rng.byte());
            }
            2 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                input.drain(at..at + n);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = input[at..at + n].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, copy);
            }
            4 => {
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len() + 1);
                let at = rng.below(len + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            5 if !self.dictionary.is_empty() => {
                let word = &self.dictionary[rng.below(self.dictionary.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, word.iter().copied());
            }
            6 => {
                let word = INTERESTING[rng.below(INTERESTING.len())].as_bytes();
                let at = rng.below(len + 1);
                input.splice(at..at, word.iter().copied());
            }
            7 => {
                if let Some(changed) = mutate_json(input, &self.dictionary, rng) {
                    *input = changed;
                }
            }
            _ if len > 0 => {
                // A run of one byte: long tokens, deep nesting, huge numbers.
                let at = rng.below(len);
                let n = 1 + rng.below(256);
                let b = input[at];
                input.splice(at..at, std::iter::repeat_n(b, n));
            }
            _ => input.push(rng.byte()),
        }
    }
}

/// Replaces one node of `input` read as JSON: a string by a dictionary word
/// or an edge value, a number by an interesting one, or a container by a
/// copy of a child. `None` when `input` is not JSON.
fn mutate_json(input: &[u8], dictionary: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(input).ok()?;
    let mut nodes = 0;
    count(&value, &mut nodes);
    let pick = rng.below(nodes.max(1));
    let mut seen = 0;
    replace_nth(&mut value, pick, &mut seen, dictionary, rng);
    serde_json::to_vec(&value).ok()
}

fn count(value: &serde_json::Value, n: &mut usize) {
    *n += 1;
    match value {
        serde_json::Value::Array(items) => items.iter().for_each(|v| count(v, n)),
        serde_json::Value::Object(map) => map.values().for_each(|v| count(v, n)),
        _ => {}
    }
}

fn replace_nth(
    value: &mut serde_json::Value,
    target: usize,
    seen: &mut usize,
    dictionary: &[Vec<u8>],
    rng: &mut Rng,
) -> bool {
    use serde_json::Value;
    if *seen == target {
        *value = match rng.below(6) {
            0 => Value::String(
                dictionary
                    .get(rng.below(dictionary.len().max(1)))
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .unwrap_or_default(),
            ),
            1 => serde_json::from_str(INTERESTING[rng.below(INTERESTING.len())])
                .unwrap_or(Value::Null),
            2 => Value::Array(vec![value.take()]),
            3 => {
                let mut map = serde_json::Map::new();
                map.insert("a".into(), value.take());
                Value::Object(map)
            }
            4 => Value::Bool(rng.below(2) == 0),
            _ => Value::Number((rng.next_u64() as i64).into()),
        };
        return true;
    }
    *seen += 1;
    match value {
        Value::Array(items) => items
            .iter_mut()
            .any(|v| replace_nth(v, target, seen, dictionary, rng)),
        Value::Object(map) => map
            .values_mut()
            .any(|v| replace_nth(v, target, seen, dictionary, rng)),
        _ => false,
    }
}

/// Saves the failing input and fails the test with how to replay it.
fn crash(name: &str, seed: u64, input: &[u8], cause: &(dyn std::any::Any + Send)) -> ! {
    let dir = std::env::temp_dir().join("portcullis-fuzz");
    let file = dir.join(format!("{name}-{:016x}", fnv(input)));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, input))
        .map(|()| file.display().to_string())
        .unwrap_or_else(|e| format!("(not saved: {e})"));
    let why = cause
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| cause.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    let shown: String = String::from_utf8_lossy(&input[..input.len().min(512)]).into_owned();
    // This is the test failing on purpose: the runner's only way to report.
    #[allow(clippy::panic)]
    {
        panic!(
            "fuzz target `{name}` failed: {why}\n  input saved to {saved}\n  replay: {ENV_SEED}={seed}\n  input (first 512 bytes, lossy): {shown:?}"
        )
    }
}

fn read_dir_files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    // Sorted, so a run's order (and a seed's replay) does not depend on the
    // file system.
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn save_input(dir: &Path, input: &[u8]) {
    let _ = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join(format!("found-{:016x}", fnv(input))), input));
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}

/// FNV-1a, to name saved inputs by their content.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// xorshift64*: a small PRNG whose whole state is the seed, so a printed
/// seed replays a run exactly.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Splits `bytes` into chunks at points drawn from `rng`: how the stream
/// targets feed a framer the same input in different pieces.
pub fn chunks<'a>(bytes: &'a [u8], rng: &mut Rng) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len().min(64));
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_mutations() {
        let t = Target::new("unit").dictionary(&["{"]);
        let pool = vec![b"hello world".to_vec()];
        let run = |seed| {
            let mut rng = Rng(seed);
            let mut input = pool[0].clone();
            for _ in 0..50 {
                t.mutate(&mut input, &pool, &mut rng);
            }
            input
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn json_mutation_keeps_json() {
        let mut rng = Rng(3);
        for _ in 0..100 {
            let out = mutate_json(br#"{"a":[1,"x",{"b":null}]}"#, &[b"w".to_vec()], &mut rng)
                .unwrap_or_default();
            assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        }
    }

    #[test]
    fn chunks_cover_the_input_in_order() {
        let mut rng = Rng(11);
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(chunks(&data, &mut rng).concat(), data);
    }
}
