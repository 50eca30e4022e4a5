//! Throughput of [`Scanner::scan`] on about 4 MiB of generated mixed text:
//! English prose, Rust and YAML snippets, and a few secrets and PII values.
//!
//! Run with `cargo bench -p portcullis-guard --bench dlp`. It prints MB/s
//! (10^6 bytes per second, best of several passes on one thread) and the
//! number of findings, so a change in either is visible.
//!
//! Measured on the 2-core development VM (one thread, release build, best of
//! several passes, other builds running on the machine):
//!
//! | content (4 MiB)                                        | MB/s    |
//! | ------------------------------------------------------ | ------- |
//! | mixed (prose + code + a few secrets)                   | 208–221 |
//! | prose                                                  | 251–343 |
//! | code (`token`, `password`, `api_key` in every block)   | 158     |
//! | digits only                                            | 576–737 |
//! | one email address per line                             | 81      |
//!
//! Two changes took mixed text from ~187 to over 200 MB/s: the number
//! pattern (cards, SSNs, IBANs) runs only on the spans a byte loop finds with
//! enough digits or an IBAN-like start, and a specific secret rule runs only
//! on the lines around its keywords instead of the whole text.
//!
//! It also runs the stream redactor on the same text in 16 KiB chunks and, on
//! 256 KiB of it, in 8-byte chunks. Measured 2026-12-07 on the shared VM
//! under heavy load from other builds (absolute figures far below the table
//! above; compare within one run), same run, before and after the candidate
//! hold-back of issue 19 (the scanner itself unchanged):
//!
//! | path                         | before (4 KiB hold-back) | after (candidate) |
//! | ---------------------------- | ------------------------ | ----------------- |
//! | `Scanner::scan`, mixed       | 33 MB/s                  | 38 MB/s           |
//! | stream redactor, 16 KiB      | 24 MB/s                  | 27 MB/s           |
//! | stream redactor, 8-byte      | < 0.5 MB/s               | 1 MB/s            |
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use portcullis_guard::dlp::Scanner;
use portcullis_guard::dlp::redact::{Redactor, StreamRedactor};

const PROSE: &str = "The gateway forwards each request to its upstream after the policy allows it. \
Agents authenticate with client certificates, and every decision is recorded in the audit log. \
Operators can rotate credentials without restarting the process; the password policy requires \
twelve characters. Contact the on-call engineer if the dashboard shows 503 errors for more than 5 minutes.\n";

const CODE: &str = "fn handle(req: Request) -> Result<Response, Error> {\n    let token = req.headers().get(\"authorization\");\n    \
let cfg = Config::load(\"/etc/app/config.toml\")?;\n    for i in 0..cfg.retries { backoff(i * 250); }\n    Ok(Response::new(200))\n}\n\
server:\n  port: 8443\n  api_key: ${API_KEY}\n  password: <YOUR_PASSWORD>\n";

const SECRETS: &[&str] = &[
    "aws_access_key_id = AKIAQWADE5R42RDZ4JEM\n",
    "GITHUB_TOKEN=ghp_aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2bC4\n",
    "DATABASE_URL=postgres://app:Zq8vL2mP9x@db.internal:5432/app\n",
    "card on file: 4242 4242 4242 4242, contact jane.doe@example.com\n",
    "iban GB82 WEST 1234 5698 7654 32 ssn 123-45-6789\n",
];

fn corpus(target: usize) -> String {
    let mut s = String::with_capacity(target + 1024);
    let mut i = 0usize;
    while s.len() < target {
        s.push_str(PROSE);
        s.push_str(CODE);
        if i.is_multiple_of(16) {
            s.push_str(SECRETS[(i / 16) % SECRETS.len()]);
        }
        i += 1;
    }
    s
}

fn main() {
    let scanner = match Scanner::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scanner does not build: {e}");
            std::process::exit(1);
        }
    };
    let text = corpus(4 * 1024 * 1024);
    // One pass over each kind of content alone, to show where the time goes.
    let parts = [
        ("prose", PROSE),
        ("code", CODE),
        (
            "digits",
            "order 12345 at 10:30, 8443 ports, 2026-11-23 total 99.5\n",
        ),
        ("email-dense", "mail bob@example.com now\n"),
    ];
    for (name, part) in parts {
        let alone = part.repeat(4 * 1024 * 1024 / part.len());
        let (mut best, mut n) = (f64::MAX, 0);
        for _ in 0..3 {
            let t = Instant::now();
            n = black_box(scanner.scan(black_box(&alone))).len();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "  {name:<12} {:>5.0} MB/s ({n} findings)",
            alone.len() as f64 / best / 1e6
        );
    }
    // Baseline in the same run: one pass that reads every byte (counting
    // `@`), the floor any scanner of the text pays.
    let mut base = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        black_box(black_box(&text).bytes().filter(|&b| b == b'@').count());
        base = base.min(t.elapsed().as_secs_f64());
    }
    let mut best = f64::MAX;
    let mut findings = 0;
    for _ in 0..7 {
        let t = Instant::now();
        findings = black_box(scanner.scan(black_box(&text))).len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "baseline (read every byte once): {:.0} MB/s",
        text.len() as f64 / base / 1e6
    );
    println!(
        "dlp scan: {} bytes, {findings} findings, best {:.2} ms, {:.0} MB/s ({:.1}x the baseline's time)",
        text.len(),
        best * 1e3,
        text.len() as f64 / best / 1e6,
        best / base
    );
    // The stream redactor on the same text in 16 KiB chunks (an HTTP
    // response) and, on its first 256 KiB, in 8-byte chunks (an LLM's
    // deltas), as the gateway runs it on streamed answers.
    for (chunk, len) in [(16 * 1024, text.len()), (8, 256 * 1024)] {
        let text = &text[..len];
        let mut best = f64::MAX;
        let mut out = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let mut s = StreamRedactor::new(&scanner, Redactor::new(b"bench"));
            out = 0;
            for c in text.as_bytes().chunks(chunk) {
                out += black_box(s.push(black_box(c))).len();
            }
            out += s.finish().len();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "stream redactor, {chunk}-byte chunks: {:.0} MB/s ({out} bytes out)",
            text.len() as f64 / best / 1e6
        );
    }
}
