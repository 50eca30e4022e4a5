//! Recall of the DLP scanner on CredSweeper's sample files, and a
//! false-positive smell test on ordinary prose.
//!
//! ```text
//! cargo run --release -p portcullis-guard --example dlp_eval -- /work/shared/data/dlp \
//!     [/work/shared/data/guard/train/deepset_train.jsonl]
//! ```
//!
//! For every expected CredSweeper finding whose rule maps to a kind this crate
//! covers (the table is printed), it checks whether a finding of that kind
//! overlaps the expected value on that line of that file. Files that are
//! archives or binaries are skipped, and their expected findings are counted
//! apart. It also counts findings on lines CredSweeper did not flag: that is
//! not a precision figure, because CredSweeper's output is a regression
//! snapshot, not ground truth. Finally it scans the texts of the deepset
//! training set (ordinary prompts) and counts what it finds there.
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use portcullis_guard::dlp::{Finding, Kind, Scanner};

/// CredSweeper rule → the kinds that count as catching it.
const MAPPING: &[(&str, &[Kind])] = &[
    ("AWS Client ID", &[Kind::AwsAccessKey]),
    ("AWS Multi", &[Kind::AwsAccessKey, Kind::AwsSecretKey]),
    ("Github Classic Token", &[Kind::GithubToken]),
    ("Github Fine-granted Token", &[Kind::GithubToken]),
    ("Github App Installation Token", &[Kind::GithubToken]),
    ("Gitlab Prefix Token", &[Kind::GitlabToken]),
    ("Slack Token", &[Kind::SlackToken]),
    ("Stripe Credentials", &[Kind::StripeKey]),
    ("OpenAI Token", &[Kind::OpenaiKey]),
    ("Anthropic API Key", &[Kind::AnthropicKey]),
    ("Google API Key", &[Kind::GoogleApiKey]),
    ("JSON Web Token", &[Kind::Jwt]),
    ("PEM Private Key", &[Kind::PrivateKey]),
    ("URL Credentials", &[Kind::ConnectionString]),
    // CredSweeper's generic rules: any secret kind counts (a `SecretAccessKey`
    // line caught as `aws_secret_key` is a catch).
    ("Password", &[Kind::GenericSecret]),
    ("SQL Password", &[Kind::GenericSecret]),
    ("Secret", &[Kind::GenericSecret]),
    ("Token", &[Kind::GenericSecret]),
    ("API", &[Kind::GenericSecret]),
    ("Credential", &[Kind::GenericSecret]),
];

/// One expected line from CredSweeper's output.
struct Expected {
    rule: String,
    file: String,
    line_num: usize,
    value: String,
}

/// A scanned text file: its text, line start offsets and findings.
struct Scanned {
    text: String,
    line_starts: Vec<usize>,
    findings: Vec<Finding>,
}

impl Scanned {
    /// The 1-based line numbers a byte range touches.
    fn lines_of(&self, start: usize, end: usize) -> (usize, usize) {
        let line = |pos: usize| self.line_starts.partition_point(|&s| s <= pos);
        (line(start), line(end.saturating_sub(1).max(start)))
    }

    /// The byte range of 1-based line `n`, without its newline.
    fn line_range(&self, n: usize) -> Option<(usize, usize)> {
        let start = *self.line_starts.get(n.checked_sub(1)?)?;
        let end = self
            .line_starts
            .get(n)
            .map_or(self.text.len(), |&next| next - 1);
        Some((start, end))
    }
}

fn is_binary(bytes: &[u8]) -> bool {
    bytes.contains(&0) || std::str::from_utf8(bytes).is_err()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/work/shared/data/dlp", String::as_str));
    let deepset = args.get(2).map_or_else(
        || dir.join("../guard/train/deepset_train.jsonl"),
        PathBuf::from,
    );
    let scanner = Scanner::new()?;
    let mapping: HashMap<&str, &[Kind]> = MAPPING.iter().copied().collect();

    println!("CredSweeper rule -> kinds counted as a catch");
    for (rule, kinds) in MAPPING {
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        println!("  {rule:<32} {}", names.join(", "));
    }

    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.join("credsweeper_samples_expected_output.json"),
    )?)?;
    let mut expected = Vec::new();
    for item in raw.as_array().into_iter().flatten() {
        let rule = item["rule"].as_str().unwrap_or_default().to_owned();
        for ld in item["line_data_list"].as_array().into_iter().flatten() {
            let path = ld["path"].as_str().unwrap_or_default();
            expected.push(Expected {
                rule: rule.clone(),
                file: path.trim_start_matches("./tests/samples/").to_owned(),
                line_num: usize::try_from(ld["line_num"].as_u64().unwrap_or(0))?,
                value: ld["value"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }

    // Scan every sample file that is text.
    let samples = dir.join("credsweeper_samples");
    let mut scanned: BTreeMap<String, Scanned> = BTreeMap::new();
    let mut skipped: BTreeSet<String> = BTreeSet::new();
    let mut total_bytes = 0usize;
    for entry in std::fs::read_dir(&samples)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let name = file_name(&path);
        let bytes = std::fs::read(&path)?;
        if is_binary(&bytes) {
            skipped.insert(name);
            continue;
        }
        let text = String::from_utf8(bytes)?;
        total_bytes += text.len();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let findings = scanner.scan(&text);
        scanned.insert(
            name,
            Scanned {
                text,
                line_starts,
                findings,
            },
        );
    }
    println!(
        "\nscanned {} text files ({} bytes); skipped {} archives/binaries: {}",
        scanned.len(),
        total_bytes,
        skipped.len(),
        skipped.iter().cloned().collect::<Vec<_>>().join(", ")
    );

    // Recall per rule and per kind.
    let mut per_rule: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut per_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut in_skipped = 0;
    let mut misses = Vec::new();
    for e in &expected {
        let Some(kinds) = mapping.get(e.rule.as_str()) else {
            continue;
        };
        let Some(s) = scanned.get(&e.file) else {
            in_skipped += 1;
            continue;
        };
        let hit = s.line_range(e.line_num).is_some_and(|(ls, le)| {
            // Where the value sits on the line; the whole line if it is not
            // there verbatim (CredSweeper sometimes reports a decoded value).
            // Any occurrence of the value on the line counts; the whole line
            // does if the value is not there verbatim (CredSweeper sometimes
            // reports a decoded value).
            let line = &s.text[ls..le];
            let mut spans: Vec<(usize, usize)> = if e.value.is_empty() {
                Vec::new()
            } else {
                line.match_indices(e.value.as_str())
                    .map(|(off, v)| (ls + off, ls + off + v.len()))
                    .collect()
            };
            if spans.is_empty() {
                spans.push((ls, le.max(ls + 1)));
            }
            let kind_ok = |k: Kind| {
                kinds.contains(&k) || (kinds.contains(&Kind::GenericSecret) && is_secret_kind(k))
            };
            s.findings.iter().any(|f| {
                kind_ok(f.kind) && spans.iter().any(|&(vs, ve)| f.start < ve && f.end > vs)
            })
        });
        let r = per_rule.entry(e.rule.as_str()).or_default();
        r.1 += 1;
        let group = match kinds {
            [Kind::GenericSecret] => "generic_secret (any secret kind)",
            [Kind::AwsAccessKey, Kind::AwsSecretKey] => "aws_access_key|aws_secret_key",
            _ => kinds.first().map_or("?", |k| k.as_str()),
        };
        let k = per_kind.entry(group).or_default();
        k.1 += 1;
        if hit {
            r.0 += 1;
            k.0 += 1;
        } else {
            misses.push(format!("{} {}:{}", e.rule, e.file, e.line_num));
        }
    }
    println!("\nrecall per CredSweeper rule (hit / expected)");
    for (rule, (hit, n)) in &per_rule {
        println!("  {rule:<32} {hit:>3} / {n:<3} {:>6.1} %", pct(*hit, *n));
    }
    println!("\nrecall per kind (hit / expected)");
    let (mut sh, mut sn) = (0, 0);
    for (kind, (hit, n)) in &per_kind {
        println!("  {kind:<20} {hit:>3} / {n:<3} {:>6.1} %", pct(*hit, *n));
        if !kind.starts_with("generic_secret") {
            sh += hit;
            sn += n;
        }
    }
    let (gh, gn) = per_kind
        .get("generic_secret (any secret kind)")
        .copied()
        .unwrap_or_default();
    let (ph, pn) = per_kind.get("private_key").copied().unwrap_or_default();
    println!(
        "  specific kinds       {sh:>3} / {sn:<3} {:>6.1} %",
        pct(sh, sn)
    );
    println!(
        "  specific w/o PEM     {:>3} / {:<3} {:>6.1} %   (PEM keys count once per line)",
        sh - ph,
        sn - pn,
        pct(sh - ph, sn - pn)
    );
    println!(
        "  all mapped           {:>3} / {:<3} {:>6.1} %",
        sh + gh,
        sn + gn,
        pct(sh + gh, sn + gn)
    );
    println!(
        "  ({in_skipped} mapped expectations are in skipped archive/binary files, not counted)"
    );
    println!("\nmisses:");
    for m in &misses {
        println!("  {m}");
    }

    // Findings on lines CredSweeper did not flag at all.
    let mut flagged: HashMap<&str, BTreeSet<usize>> = HashMap::new();
    for e in &expected {
        flagged
            .entry(e.file.as_str())
            .or_default()
            .insert(e.line_num);
    }
    let mut unflagged: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unflagged_where = Vec::new();
    let mut total_findings = 0;
    for (file, s) in &scanned {
        for f in &s.findings {
            total_findings += 1;
            let (a, b) = s.lines_of(f.start, f.end);
            let lines = flagged.get(file.as_str());
            if !(a..=b).any(|l| lines.is_some_and(|set| set.contains(&l))) {
                *unflagged.entry(f.kind.as_str()).or_default() += 1;
                unflagged_where.push(format!("{} {file}:{a}", f.kind.as_str()));
            }
        }
    }
    println!(
        "\nfindings in sample files: {total_findings}; on lines CredSweeper did not flag: {} \
         (not a precision figure: CredSweeper's output is not ground truth)",
        unflagged.values().sum::<usize>()
    );
    for (kind, n) in &unflagged {
        println!("  {kind:<20} {n}");
    }
    for w in &unflagged_where {
        println!("    {w}");
    }

    // Ordinary prose: every finding here is a false-positive suspect.
    let jsonl = std::fs::read_to_string(&deepset)?;
    let (mut rows, mut rows_hit, mut bytes) = (0, 0, 0);
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples = Vec::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let text = v["text"].as_str().unwrap_or_default();
        rows += 1;
        bytes += text.len();
        let found = scanner.scan(text);
        if !found.is_empty() {
            rows_hit += 1;
        }
        for f in found {
            *by_kind.entry(f.kind.as_str()).or_default() += 1;
            examples.push(format!(
                "row {rows}: {} `{}`",
                f.kind.as_str(),
                &text[f.start..f.end]
            ));
        }
    }
    println!(
        "\ndeepset train ({}): {rows} texts, {bytes} bytes, {} findings in {rows_hit} texts",
        deepset.display(),
        by_kind.values().sum::<usize>()
    );
    for (kind, n) in &by_kind {
        println!("  {kind:<20} {n}");
    }
    for e in &examples {
        println!("    {e}");
    }

    // The hand-written cases of `tests/data/`: placeholders and near misses
    // (no finding expected) and one positive control per kind.
    let cases = |t: &'static str| {
        t.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect::<Vec<_>>()
    };
    let negatives = cases(include_str!("../tests/data/dlp_negatives.txt"));
    let neg_found: usize = negatives.iter().map(|l| scanner.scan(l).len()).sum();
    println!(
        "
placeholder/negative cases: {} lines, {neg_found} findings (expected 0)",
        negatives.len()
    );
    let positives = cases(include_str!("../tests/data/dlp_positives.txt"));
    let pos_hit = positives
        .iter()
        .filter(|l| {
            let (kind, text) = l.split_once('\t').unwrap_or_default();
            scanner.scan(text).iter().any(|f| f.kind.as_str() == kind)
        })
        .count();
    println!(
        "positive controls: {pos_hit} / {} found with the expected kind",
        positives.len()
    );
    Ok(())
}

/// True for the kinds that are secrets rather than PII.
fn is_secret_kind(k: Kind) -> bool {
    !matches!(k, Kind::CreditCard | Kind::Iban | Kind::UsSsn | Kind::Email)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn pct(hit: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        100.0 * hit as f64 / n as f64
    }
}
