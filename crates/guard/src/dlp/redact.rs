//! Redaction: typed placeholders, keyed fingerprints, and a streaming
//! redactor for responses that arrive in chunks.
//!
//! [`Redactor`] replaces each finding with `[REDACTED_<KIND>_<n>]`. The
//! number counts distinct values per kind for the redactor's lifetime (one
//! response, or a session when the caller keeps the redactor), so the same
//! value gets the same placeholder everywhere. Values are remembered only as
//! keyed hashes (HMAC-SHA-256), never as text. [`fingerprint`] gives the
//! same keyed hash for logs and audit records: equal values can be
//! correlated without the value ever being written down.
//!
//! [`StreamRedactor`] redacts a byte stream chunk by chunk and never emits
//! any prefix of a secret. It holds back the tail of what it received from
//! where a value could still be starting (a *candidate*, see
//! [`candidate_start`]) until the candidate can no longer become a secret,
//! bounded by [`MAX_HOLD`] bytes (longer than any value a detector redacts
//! whole), and never emits a prefix that ends inside a finding, so a secret
//! split across chunks is caught and redacted whole as if the text had
//! arrived at once. Text that cannot start a secret (prose up to its last
//! whitespace) goes out at once, so a stream read by a person as it arrives
//! waits only for its current word or number. It keeps
//! [`LOOK_BEHIND`] bytes of already-emitted text as context, so a value
//! whose keyword (`password=`) went out in an earlier chunk is still
//! recognised. A PEM private-key block, which has no length bound, is
//! handled without buffering: once its `BEGIN` line is seen, everything up to
//! its `END` line is swallowed and replaced by one placeholder.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt::Write as _;

use hmac::{Hmac, KeyInit, Mac};
use sha2_011::Sha256;

use super::{Finding, Kind, Scanner};

/// The most bytes a [`StreamRedactor`] holds back: the bound on a value the
/// detectors redact whole. A candidate longer than this (a 10 KiB base64
/// run) is released from its start; a finding still open at the bound is
/// redacted up to it (its end goes out as text, never its start).
pub const MAX_HOLD: usize = 8 * 1024;

/// How far back a spaced number (card, IBAN, SSN) or a PEM `BEGIN` line can
/// start: the longest such value, with its separators.
const SPACED_MAX: usize = 96;

/// Where the tail of `text` that could still grow into a secret begins:
/// `text.len()` when no value can be in progress, never before
/// `text.len() - MAX_HOLD`, always on a char boundary.
///
/// Every detector's value is either one run without ASCII whitespace
/// (tokens, keys, JWTs, URLs, emails, assignment values: their keywords
/// are context kept as look-behind, not part of the value), a number with
/// single spaces or dashes (cards, IBANs, SSNs: digits and capital letters,
/// at most [`SPACED_MAX`] bytes, starting with a digit or the two capitals
/// of an IBAN's country before one), or a PEM
/// `BEGIN … PRIVATE KEY` line. The candidate is the earliest start of any
/// of these that reaches the end of `text`.
pub fn candidate_start(text: &str) -> usize {
    let b = text.as_bytes();
    let len = b.len();
    // A run without whitespace.
    let mut start = b
        .iter()
        .rposition(|c| c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    // A spaced number: the trailing run of letters, digits, spaces and
    // dashes within reach, from two bytes before its first digit.
    let floor = len.saturating_sub(SPACED_MAX);
    let mut run = len;
    while run > floor && matches!(b[run - 1], b'0'..=b'9' | b'A'..=b'Z' | b' ' | b'-') {
        run -= 1;
    }
    while run < len && matches!(b[run], b' ' | b'-') {
        run += 1;
    }
    if let Some(d) = b[run..].iter().position(u8::is_ascii_digit) {
        start = start.min((run + d).saturating_sub(2).max(run));
    }
    // A PEM `BEGIN` line still open at the end, however long: the
    // scanner's rule allows any run of spaces, capitals and digits before
    // `PRIVATE KEY`, and looking back only `SPACED_MAX` bytes let a padded
    // line go out in part, and its key body after it (found by crates/fuzz).
    // Held only while what follows `BEGIN` can still become such a line.
    let pem_floor = floor_boundary(text, len.saturating_sub(MAX_HOLD));
    if let Some(i) = text[pem_floor..].rfind("-----BEGIN") {
        let at = pem_floor + i;
        let open = text[at + "-----BEGIN".len()..]
            .bytes()
            .all(|c| matches!(c, b' ' | b'A'..=b'Z' | b'0'..=b'9' | b'-'));
        if open {
            start = start.min(at);
        }
    }
    floor_boundary(text, start.max(len.saturating_sub(MAX_HOLD)))
}

/// Whether `run` (no whitespace) can be the start of a JWT: `eyJ` and
/// then only base64url characters and dots.
fn is_jwt_start(run: &str) -> bool {
    run.starts_with("eyJ")
        && run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Already-emitted bytes kept as context for the next scan.
pub const LOOK_BEHIND: usize = 256;

/// The keyed hash of a found value, as 16 hex digits: equal values under the
/// same key give equal fingerprints; the value cannot be recovered.
pub fn fingerprint(key: &[u8], kind: Kind, value: &str) -> String {
    let digest = mac(key, kind, value);
    digest[..8]
        .iter()
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn mac(key: &[u8], kind: Kind, value: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut m) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return [0; 32];
    };
    m.update(kind.as_str().as_bytes());
    m.update(&[0]);
    m.update(value.as_bytes());
    m.finalize().into_bytes().into()
}

/// Assigns placeholders; see the module docs.
#[derive(Debug)]
pub struct Redactor {
    key: Vec<u8>,
    numbers: HashMap<[u8; 32], usize>,
    per_kind: HashMap<Kind, usize>,
}

impl Redactor {
    /// A redactor whose value memory is keyed by `key` (any length; the
    /// gateway uses a random per-process key).
    pub fn new(key: &[u8]) -> Self {
        Self {
            key: key.to_vec(),
            numbers: HashMap::new(),
            per_kind: HashMap::new(),
        }
    }

    /// The placeholder for `value` of `kind`, numbering new values.
    pub fn placeholder(&mut self, kind: Kind, value: &str) -> String {
        let h = mac(&self.key, kind, value);
        let n = *self.numbers.entry(h).or_insert_with(|| {
            let c = self.per_kind.entry(kind).or_insert(0);
            *c += 1;
            *c
        });
        format!("[REDACTED_{}_{n}]", kind.as_str().to_ascii_uppercase())
    }

    /// Writes `text` with the `findings` (sorted, disjoint, on char
    /// boundaries, as [`Scanner::scan`] returns them) replaced.
    pub fn apply(&mut self, text: &str, findings: &[Finding], out: &mut String) {
        let mut pos = 0;
        for f in findings {
            let (Some(before), Some(value)) = (text.get(pos..f.start), text.get(f.start..f.end))
            else {
                continue;
            };
            out.push_str(before);
            let p = self.placeholder(f.kind, value);
            out.push_str(&p);
            pos = f.end;
        }
        out.push_str(text.get(pos..).unwrap_or_default());
    }
}

const PEM_END: &str = "-----END";

/// What a text holds of a private key's `END` line, read as the scanner's
/// rule reads one (`-----END[ A-Z0-9]*PRIVATE KEY( BLOCK)?-----`), so the
/// stream closes a block exactly where the whole-text scan does. Closing at
/// any `-----END…-----` let a fake one (`-----END PR-----BEGIN …`) eat the
/// dashes of the next `BEGIN` line, whose key body then went out in clear
/// (found by crates/fuzz).
#[derive(Debug, PartialEq, Eq)]
enum EndLine {
    /// One past the end of the first complete `END` line.
    At(usize),
    /// None yet, but the text ends inside what may become one, from here.
    Partial(usize),
    /// None.
    Absent,
}

/// The longest `END` line held back while it may still complete: the
/// scanner's rule has no bound on its name, so the hold is the stream's own
/// bound (a longer one is swallowed with the block).
const MAX_END_LINE: usize = MAX_HOLD;

/// Read on bytes (the line is ASCII), so a character split across chunks
/// does not shift the offsets.
fn end_line(text: &[u8]) -> EndLine {
    let end = PEM_END.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..]
        .windows(end.len())
        .position(|w| w == end)
        .map(|i| from + i)
    {
        let name_start = i + end.len();
        let rest = &text[name_start..];
        let run = rest
            .iter()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b' ')
            .count();
        let (name, after) = rest.split_at(run);
        if after.len() < 5 && b"-----".starts_with(after) {
            return EndLine::Partial(i);
        }
        if after.starts_with(b"-----")
            && (name.ends_with(b"PRIVATE KEY") || name.ends_with(b"PRIVATE KEY BLOCK"))
        {
            return EndLine::At(name_start + run + 5);
        }
        from = i + 1;
    }
    EndLine::Absent
}

/// A finding of a stream: kind, range in the input stream, and the keyed
/// fingerprint of the value (see [`fingerprint`]), never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFinding {
    /// What was found.
    pub kind: Kind,
    /// Byte offset in the stream as received.
    pub start: usize,
    /// One past the end.
    pub end: usize,
    /// Keyed hash of the value.
    pub fingerprint: String,
}

/// Redacts a stream of chunks; see the module docs.
///
/// `S` is how the redactor holds the scanner: `&Scanner`, or an
/// `Arc<Scanner>` when the stream outlives the caller's borrow (a response
/// body).
pub struct StreamRedactor<S: Borrow<Scanner>> {
    scanner: S,
    redactor: Redactor,
    /// Bytes received and not yet emitted (may end inside a UTF-8 character).
    pending: Vec<u8>,
    /// The tail of what was emitted, as scan context.
    behind: String,
    /// Inside a PEM private-key block whose `END` line has not arrived.
    in_pem: bool,
    /// Inside the rest of a value longer than [`MAX_HOLD`] whose start went
    /// out as a placeholder: the bytes that can continue it (those its
    /// start was made of), swallowed until one that cannot.
    in_long: Option<Box<[bool; 256]>>,
    /// What this stream found, with offsets in the stream as received.
    findings: Vec<StreamFinding>,
    /// Bytes of input consumed (emitted or swallowed) so far.
    consumed: usize,
}

impl<S: Borrow<Scanner>> StreamRedactor<S> {
    /// Starts a stream.
    pub fn new(scanner: S, redactor: Redactor) -> Self {
        Self {
            scanner,
            redactor,
            pending: Vec::new(),
            behind: String::new(),
            in_pem: false,
            in_long: None,
            findings: Vec::new(),
            consumed: 0,
        }
    }

    /// What was found so far: kind, byte range in the input stream, and
    /// fingerprint.
    pub fn findings(&self) -> &[StreamFinding] {
        &self.findings
    }

    /// Takes the next chunk and returns what can be emitted now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        self.drain(false)
    }

    /// Ends the stream and returns everything still held.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, last: bool) -> Vec<u8> {
        let mut out = String::new();
        loop {
            if let Some(set) = &self.in_long {
                let n = self
                    .pending
                    .iter()
                    .position(|&b| !set[usize::from(b)])
                    .unwrap_or(self.pending.len());
                self.pending.drain(..n);
                self.consumed += n;
                if let Some(f) = self.findings.last_mut() {
                    f.end += n;
                }
                if self.pending.is_empty() && !last {
                    break;
                }
                self.in_long = None;
                continue;
            }
            if self.in_pem {
                match end_line(&self.pending) {
                    EndLine::At(close) => {
                        // Swallow through the end of the END line's dashes.
                        let close = close.min(self.pending.len());
                        self.pending.drain(..close);
                        self.consumed += close;
                        self.in_pem = false;
                    }
                    // A run longer than `MAX_END_LINE` is swallowed with
                    // the block (bounded memory whatever the stream sends).
                    EndLine::Partial(i) if !last && self.pending.len() - i <= MAX_END_LINE => {
                        // Keep what may still become the END line.
                        let drop = i.min(self.pending.len());
                        self.pending.drain(..drop);
                        self.consumed += drop;
                        break;
                    }
                    EndLine::Partial(_) | EndLine::Absent => {
                        // Keep only enough to see an END marker split across chunks.
                        let keep = PEM_END.len().min(self.pending.len());
                        let drop = self.pending.len() - keep;
                        let drop = if last { self.pending.len() } else { drop };
                        self.pending.drain(..drop);
                        self.consumed += drop;
                        break;
                    }
                }
                continue;
            }
            // The longest valid UTF-8 prefix; a split character waits.
            let valid = match std::str::from_utf8(&self.pending) {
                Ok(s) => s.len(),
                Err(e) if last || e.error_len().is_some() => self.pending.len(),
                Err(e) => e.valid_up_to(),
            };
            let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
            let ctx = format!("{}{}", self.behind, text);
            let base = self.behind.len();
            let mut found: Vec<Finding> = self
                .scanner
                .borrow()
                .scan(&ctx)
                .into_iter()
                .filter(|f| f.start >= base)
                .map(|f| Finding::new(f.kind, f.start - base, f.end - base))
                .collect();
            let mut safe = if last {
                text.len()
            } else {
                candidate_start(&text)
            };
            // A run cut by the bound that is still the start of a JWT (the
            // one token without a length bound; its signature, which makes
            // it a finding, comes last): its start must not go out as text.
            // Only when the bound, not the run's start, decided `safe`.
            if !last && text.len() - safe >= MAX_HOLD && !found.iter().any(|f| f.end > safe) {
                let run = text
                    .as_bytes()
                    .iter()
                    .rposition(u8::is_ascii_whitespace)
                    .map_or(0, |i| i + 1);
                if run < safe && is_jwt_start(&text[run..]) {
                    found.push(Finding::new(Kind::Jwt, run, text.len()));
                }
            }
            // Never cut inside a finding: hold it whole, unless it is longer
            // than the bound; then it is redacted up to the cut, and the
            // rest of it is swallowed as it arrives (`in_long`).
            let mut long = None;
            for f in &mut found {
                if f.start < safe && f.end > safe {
                    if f.end - f.start <= MAX_HOLD {
                        safe = f.start;
                    } else {
                        long = Some((f.start, safe, f.end));
                        f.end = safe;
                    }
                }
            }
            safe = floor_boundary(&text, safe);
            // An open private-key block: emit up to it, then swallow it.
            let open_pem = found.iter().find(|f| {
                f.kind == Kind::PrivateKey
                    && !matches!(end_line(&text.as_bytes()[f.start..f.end]), EndLine::At(_))
            });
            let (emit_to, enter_pem) = match open_pem {
                Some(f) => (f.start, Some(*f)),
                None => (safe, None),
            };
            let emitted: Vec<Finding> =
                found.iter().filter(|f| f.end <= emit_to).copied().collect();
            self.redactor.apply(&text[..emit_to], &emitted, &mut out);
            for f in &emitted {
                let value = text.get(f.start..f.end).unwrap_or_default();
                self.findings.push(StreamFinding {
                    kind: f.kind,
                    start: self.consumed + f.start,
                    end: self.consumed + f.end,
                    fingerprint: fingerprint(&self.redactor.key, f.kind, value),
                });
            }
            self.remember(&text[..emit_to]);
            self.pending.drain(..emit_to);
            self.consumed += emit_to;
            if let Some((start, _, end)) = long.filter(|l| l.1 <= emit_to) {
                // The bytes the value is made of (letters, digits, `-` and
                // `_` always): what follows it and is one of them is still
                // the value.
                let mut set = Box::new([false; 256]);
                let token = [b'-', b'_'];
                for b in (b'0'..=b'9')
                    .chain(b'a'..=b'z')
                    .chain(b'A'..=b'Z')
                    .chain(token)
                {
                    set[usize::from(b)] = true;
                }
                for &b in &text.as_bytes()[start..end] {
                    if !b.is_ascii_whitespace() {
                        set[usize::from(b)] = true;
                    }
                }
                self.in_long = Some(set);
                continue;
            }
            match enter_pem {
                Some(f) => {
                    let value = &text[f.start..f.end];
                    let p = self.redactor.placeholder(f.kind, value);
                    out.push_str(&p);
                    self.findings.push(StreamFinding {
                        kind: f.kind,
                        start: self.consumed,
                        end: self.consumed + (f.end - f.start),
                        fingerprint: fingerprint(&self.redactor.key, f.kind, value),
                    });
                    self.in_pem = true;
                }
                None => break,
            }
        }
        out.into_bytes()
    }

    fn remember(&mut self, emitted: &str) {
        self.behind.push_str(emitted);
        if self.behind.len() > LOOK_BEHIND {
            let mut cut = self.behind.len() - LOOK_BEHIND;
            while !self.behind.is_char_boundary(cut) {
                cut += 1;
            }
            self.behind.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(scanner: &Scanner, text: &str) -> String {
        let mut out = String::new();
        Redactor::new(b"k").apply(text, &scanner.scan(text), &mut out);
        out
    }

    fn streamed(scanner: &Scanner, chunks: &[&[u8]]) -> String {
        let mut s = StreamRedactor::new(scanner, Redactor::new(b"k"));
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        String::from_utf8(out).unwrap()
    }

    const SAMPLE: &str = "héllo token=ghp_aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2bC4 and AKIAQWADE5R42RDZ4JEM, \
card 4242 4242 4242 4242 mail a.b@example.org; password = \"Zq8vL2mP9xTt4\" end ✓";

    /// Regressions found by crates/fuzz (`regressions/dlp_stream/`): a key
    /// block cut before its END line, a fake END line (`-----END
    /// PR-----`) whose dashes are the next block's `BEGIN`, and a padded
    /// BEGIN line.
    #[test]
    fn cut_and_fake_end_lines_redact_the_key_body_everywhere() {
        let scanner = Scanner::new().unwrap();
        for text in [
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-42 4242 mail",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\n-----END PR-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----\nafter",
            // A BEGIN line padded past the old 96-byte look-back.
            &format!(
                "-----BEGIN{}PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----\nafter",
                " ".repeat(200)
            ),
        ] {
            let expect = whole(&scanner, text);
            assert!(!expect.contains("MIIE"), "{expect}");
            let bytes = text.as_bytes();
            for cut in 0..=bytes.len() {
                assert_eq!(
                    streamed(&scanner, &[&bytes[..cut], &bytes[cut..]]),
                    expect,
                    "cut at {cut}"
                );
            }
            for n in 1..4 {
                let chunks: Vec<&[u8]> = bytes.chunks(n).collect();
                assert_eq!(streamed(&scanner, &chunks), expect, "chunks of {n}");
            }
        }
    }

    #[test]
    fn every_split_point_gives_the_whole_text_result() {
        let scanner = Scanner::new().unwrap();
        let expect = whole(&scanner, SAMPLE);
        assert!(expect.contains("[REDACTED_GITHUB_TOKEN_1]"), "{expect}");
        assert!(expect.contains("[REDACTED_CREDIT_CARD_1]"), "{expect}");
        let bytes = SAMPLE.as_bytes();
        for i in 0..=bytes.len() {
            assert_eq!(
                streamed(&scanner, &[&bytes[..i], &bytes[i..]]),
                expect,
                "split at {i}"
            );
        }
        // Three-way splits around the token.
        let t = SAMPLE.find("ghp_").unwrap();
        for i in t..t + 40 {
            for j in i..i + 5 {
                assert_eq!(
                    streamed(&scanner, &[&bytes[..i], &bytes[i..j], &bytes[j..]]),
                    expect,
                    "split at {i},{j}"
                );
            }
        }
        // One byte at a time.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(streamed(&scanner, &singles), expect);
        // Findings carry stream offsets and fingerprints, not values.
        let mut s = StreamRedactor::new(&scanner, Redactor::new(b"k"));
        let _ = s.push(&bytes[..30]);
        let _ = s.push(&bytes[30..]);
        let _ = s.finish();
        let whole = scanner.scan(SAMPLE);
        let got: Vec<(Kind, usize, usize)> = s
            .findings()
            .iter()
            .map(|f| (f.kind, f.start, f.end))
            .collect();
        let want: Vec<(Kind, usize, usize)> =
            whole.iter().map(|f| (f.kind, f.start, f.end)).collect();
        assert_eq!(got, want);
        let token = s
            .findings()
            .iter()
            .find(|f| f.kind == Kind::GithubToken)
            .unwrap();
        assert_eq!(
            token.fingerprint,
            fingerprint(b"k", Kind::GithubToken, &SAMPLE[token.start..token.end])
        );
    }

    #[test]
    fn long_streams_are_not_buffered_whole() {
        let scanner = Scanner::new().unwrap();
        let mut s = StreamRedactor::new(&scanner, Redactor::new(b"k"));
        let line = "ordinary log line without secrets in it at all\n";
        let mut emitted = 0;
        for _ in 0..1000 {
            emitted += s.push(line.as_bytes()).len();
        }
        // Everything but the last word has gone out.
        assert!(emitted >= 1000 * line.len() - 2, "{emitted}");
        emitted += s.finish().len();
        assert_eq!(emitted, 1000 * line.len());
    }

    /// A long JWT (over 600 bytes), longer than the old 256-byte hold-back
    /// of LLM streams.
    fn long_jwt() -> String {
        let payload =
            "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiYWRtaW4iOnRydWV9".repeat(9);
        format!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        )
    }

    /// Pushes `chunks` one by one and checks that what has gone out after
    /// each push is a prefix of the whole-text redaction: no prefix of a
    /// secret ever goes out, and the end result is the whole-text one.
    fn check_prefixes(scanner: &Scanner, text: &str, chunks: &[&[u8]], what: &str) {
        let expect = whole(scanner, text);
        let mut s = StreamRedactor::new(scanner, Redactor::new(b"k"));
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
            assert!(
                expect.as_bytes().starts_with(&out),
                "{what}: emitted {:?} is not a prefix of {expect:?}",
                String::from_utf8_lossy(&out)
            );
        }
        out.extend(s.finish());
        assert_eq!(String::from_utf8(out).unwrap(), expect, "{what}");
    }

    #[test]
    fn no_prefix_of_a_secret_is_ever_emitted() {
        let scanner = Scanner::new().unwrap();
        let jwt = long_jwt();
        let text = format!(
            "{SAMPLE} then jwt {jwt} iban GB82 WEST 1234 5698 7654 32 and ssn 123-45-6789 \
             -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\n-----END RSA PRIVATE KEY-----\nend"
        );
        assert!(whole(&scanner, &text).contains("[REDACTED_JWT_1]"));
        assert!(whole(&scanner, &text).contains("[REDACTED_IBAN_1]"));
        let b = text.as_bytes();
        for i in 0..=b.len() {
            check_prefixes(
                &scanner,
                &text,
                &[&b[..i], &b[i..]],
                &format!("split at {i}"),
            );
        }
        for size in [1usize, 2, 3, 5, 16, 100] {
            let chunks: Vec<&[u8]> = b.chunks(size).collect();
            check_prefixes(&scanner, &text, &chunks, &format!("chunks of {size}"));
        }
    }

    #[test]
    fn prose_goes_out_at_once_and_holding_is_bounded() {
        let scanner = Scanner::new().unwrap();
        let mut s = StreamRedactor::new(&scanner, Redactor::new(b"k"));
        assert_eq!(s.push(b"The answer is "), b"The answer is ");
        assert_eq!(s.push(b"forty"), b"");
        assert_eq!(s.push(b" two."), b"forty ");
        // A run without whitespace longer than the bound is released from
        // its start, keeping at most the bound.
        let run = "ab".repeat(MAX_HOLD);
        let out = s.push(run.as_bytes());
        assert_eq!(out.len(), "two.".len() + run.len() - MAX_HOLD);
        assert_eq!(candidate_start("abc def"), 4);
        assert_eq!(candidate_start("card 4242 4242"), 5);
        assert_eq!(candidate_start("iban GB82 WEST 12"), 5);
        assert_eq!(candidate_start("done. "), 6);
        assert_eq!(candidate_start("x -----BEGIN RSA PRIV"), 2);
    }

    #[test]
    fn a_secret_far_from_its_keyword_chunk() {
        let scanner = Scanner::new().unwrap();
        let filler = "x ".repeat(3000);
        let text = format!("{filler}password = \"Zq8vL2mP9xTt4\" {filler}");
        let expect = whole(&scanner, &text);
        assert!(expect.contains("[REDACTED_GENERIC_SECRET_1]"));
        let b = text.as_bytes();
        let k = text.find("Zq8").unwrap();
        for i in [k - 3, k, k + 1, k + 5] {
            assert_eq!(
                streamed(&scanner, &[&b[..i], &b[i..]]),
                expect,
                "split at {i}"
            );
        }
    }

    #[test]
    fn a_value_longer_than_the_hold_is_redacted_to_its_tail() {
        let scanner = Scanner::new().unwrap();
        // A JWT of 12 KiB: its start must go out (as a placeholder) before
        // its end arrives, and its end must not go out as text.
        let payload =
            "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiYWRtaW4iOnRydWV9".repeat(180);
        let jwt = format!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        );
        assert!(jwt.len() > MAX_HOLD + 4096);
        let text = format!("before {jwt} after");
        let expect = whole(&scanner, &text);
        assert_eq!(expect, "before [REDACTED_JWT_1] after");
        let b = text.as_bytes();
        for size in [1usize, 100, 4096, 9000] {
            let chunks: Vec<&[u8]> = b.chunks(size).collect();
            let out = streamed(&scanner, &chunks);
            assert!(
                out == expect,
                "chunk size {size}: {} bytes out, ends {:?}",
                out.len(),
                &out[out.len().saturating_sub(60)..]
            );
        }
    }

    #[test]
    fn pem_blocks_are_swallowed_across_chunks() {
        let scanner = Scanner::new().unwrap();
        let body = "MIIEowIBAAKCAQEA7bq\n".repeat(400); // 8 KB, longer than the hold-back
        let text = format!(
            "before\n-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\nafter"
        );
        let b = text.as_bytes();
        for size in [1usize, 7, 100, 4096, 5000] {
            let chunks: Vec<&[u8]> = b.chunks(size).collect();
            let out = streamed(&scanner, &chunks);
            assert_eq!(
                out, "before\n[REDACTED_PRIVATE_KEY_1]\nafter",
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn same_value_same_placeholder_and_fingerprint() {
        let mut r = Redactor::new(b"key");
        assert_eq!(r.placeholder(Kind::Email, "a@b.c"), "[REDACTED_EMAIL_1]");
        assert_eq!(r.placeholder(Kind::Email, "x@b.c"), "[REDACTED_EMAIL_2]");
        assert_eq!(r.placeholder(Kind::Email, "a@b.c"), "[REDACTED_EMAIL_1]");
        assert_eq!(r.placeholder(Kind::Jwt, "a@b.c"), "[REDACTED_JWT_1]");
        let f = fingerprint(b"key", Kind::Email, "a@b.c");
        assert_eq!(f.len(), 16);
        assert_eq!(f, fingerprint(b"key", Kind::Email, "a@b.c"));
        assert_ne!(f, fingerprint(b"other", Kind::Email, "a@b.c"));
        assert_ne!(f, fingerprint(b"key", Kind::Email, "x@b.c"));
    }
}
