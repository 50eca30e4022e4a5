//! The DLP scanner on hand-written cases: placeholders and near misses that
//! must give no finding (`data/dlp_negatives.txt`), and one synthetic value
//! per line of each kind that must be found (`data/dlp_positives.txt`).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use portcullis_guard::dlp::Scanner;

fn cases(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
}

#[test]
fn placeholders_and_near_misses_give_no_finding() {
    let scanner = Scanner::new().unwrap();
    let mut failures = Vec::new();
    for line in cases(include_str!("data/dlp_negatives.txt")) {
        let found = scanner.scan(line);
        if !found.is_empty() {
            let kinds: Vec<&str> = found.iter().map(|f| f.kind.as_str()).collect();
            failures.push(format!("{line:?}: {kinds:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "findings on negatives:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_kind_is_found_in_its_positive_control() {
    let scanner = Scanner::new().unwrap();
    let mut failures = Vec::new();
    for line in cases(include_str!("data/dlp_positives.txt")) {
        let (kind, text) = line.split_once('\t').unwrap();
        let found: Vec<&str> = scanner.scan(text).iter().map(|f| f.kind.as_str()).collect();
        if found != [kind] {
            failures.push(format!("{text:?}: expected [{kind}], got {found:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
