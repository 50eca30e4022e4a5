//! The compiled secret detectors: one rule per credential format, each a
//! [`Regex`] behind a shared `aho-corasick` keyword prefilter.
//!
//! Every rule names the literal keywords its pattern cannot match without (a
//! token prefix such as `ghp_`, or a word such as `password`). One
//! case-insensitive Aho-Corasick pass over the text decides which rules can
//! match at all; only those rules' regexes run. Text without any keyword costs
//! that one pass.
//!
//! A rule reports the byte range of the secret value only (for an assignment
//! like `password = "hunter2…"`, the part inside the quotes), after its check:
//! placeholder suppression (`<YOUR_KEY>`, `xxxx`, `${ENV}`, `{{ var }}`,
//! `changeme`, `example`, one repeated character), a JWT header that decodes to
//! JSON with `"alg"`, or, for generic assignments, a minimum length and entropy.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use regex::Regex;

use super::{BuildError, Finding, Kind};

/// What a rule's match must also satisfy to be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The value must not look like a placeholder.
    NotPlaceholder,
    /// The value is a JWT whose header decodes to a JSON object with `"alg"`.
    Jwt,
    /// The match is a PEM `BEGIN … PRIVATE KEY` line; the finding extends to
    /// the matching `END` line when there is one, else to the end of the
    /// text (at most [`PEM_MAX_BYTES`]): a cut key's body is key material.
    Pem,
    /// A generic assignment: not a placeholder, not a code identifier, at
    /// least [`GENERIC_MIN_LEN`] bytes and [`GENERIC_MIN_ENTROPY`] bits per byte.
    Generic,
}

/// One secret format: its kind, its prefilter keywords (matched
/// case-insensitively) and its pattern. When the pattern has a capture group,
/// group 1 is the secret value; otherwise the whole match is.
struct RuleSpec {
    kind: Kind,
    keywords: &'static [&'static str],
    pattern: &'static str,
    check: Check,
}

/// The rules, most specific first. Order does not decide overlaps (see
/// [`super::Scanner::scan`]); it only keeps the table readable.
const RULES: &[RuleSpec] = &[
    RuleSpec {
        kind: Kind::AwsAccessKey,
        keywords: &[
            "akia", "asia", "a3t", "agpa", "aida", "aroa", "aipa", "anpa", "anva",
        ],
        pattern: r"(?-u:\b)(?:(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16})(?-u:\b)",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::AwsSecretKey,
        keywords: &["secret"],
        pattern: r#"(?i)(?:aws_?)?secret_?(?:access_?)?key["']?\s*(?::|=|=>)\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::GithubToken,
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        pattern: r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9_]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::GitlabToken,
        keywords: &[
            "glpat-", "gloas-", "gldt-", "glrt-", "glrtr-", "glcbt-", "glptt-", "glft-", "glimt-",
            "glagent-", "glsoat-", "glffct-", "glwt-",
        ],
        pattern: r"(?-u:\b)(?:(?:glpat|gloas|gldt|glrtr|glrt|glcbt|glptt|glft|glimt|glagent|glsoat|glffct|glwt)-[A-Za-z0-9_.\-]{20,})",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::GitlabToken,
        keywords: &["gr1348941"],
        pattern: r"(?-u:\b)(?:GR1348941[A-Za-z0-9_\-]{20,})",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::GitlabToken,
        keywords: &["_gitlab_session="],
        pattern: r"_gitlab_session=([0-9a-f]{32})(?-u:\b)",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::SlackToken,
        keywords: &["xox", "xapp-"],
        pattern: r"(?-u:\b)(?:xox[abposre]-[A-Za-z0-9\-]{10,}|xapp-[0-9]-[A-Za-z0-9\-]{10,})",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::StripeKey,
        keywords: &["sk_live_", "rk_live_", "sk_test_", "rk_test_", "whsec_"],
        pattern: r"(?-u:\b)(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9+/=]{32,})",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::AnthropicKey,
        keywords: &["sk-ant-"],
        pattern: r"(?-u:\b)(?:sk-ant-[A-Za-z0-9_\-]{32,})",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::OpenaiKey,
        keywords: &["sk-"],
        pattern: r"(?-u:\b)(?:sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_\-]{16,}T3BlbkFJ[A-Za-z0-9_\-]{16,}|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,})",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::GoogleApiKey,
        keywords: &["aiza"],
        pattern: r"(?-u:\b)(?:AIza[0-9A-Za-z_\-]{35})",
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::Jwt,
        keywords: &["eyj"],
        pattern: r"(?-u:\b)(?:eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*)",
        check: Check::Jwt,
    },
    RuleSpec {
        kind: Kind::PrivateKey,
        keywords: &["private key"],
        pattern: r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----",
        check: Check::Pem,
    },
    RuleSpec {
        kind: Kind::ConnectionString,
        keywords: &["://"],
        pattern: r#"(?-u:\b)[A-Za-z][A-Za-z0-9+.\-]+://[^\s:/'"`]+:([^\s/@'"`]+)@[A-Za-z0-9.\-\[]"#,
        check: Check::NotPlaceholder,
    },
    RuleSpec {
        kind: Kind::GenericSecret,
        keywords: &[
            "pass",
            "pwd",
            "pw",
            "psw",
            "pssw",
            "pasw",
            "passwd",
            "secret",
            "api_key",
            "api-key",
            "apikey",
            "access_key",
            "accesskey",
            "token",
            "credential",
        ],
        pattern: r#"(?i)^(?:(?:password|passwd|secret|api[_\-]?key|access[_\-]?key|token|credentials?)[A-Za-z0-9_\-]*|(?:pass(?:w[a-z]*)?|pa?s{1,2}w(?:o?r)?d|pwd|pw)(?:[_\-][A-Za-z0-9_\-]*)?)["']?\s*(?:!==|===|!=|==|:=|=>|=|:|>)\s*["'`]?([^\s"'`,;<]+)"#,
        check: Check::Generic,
    },
    RuleSpec {
        kind: Kind::GenericSecret,
        keywords: &["identified", "password"],
        pattern: r#"(?i)^(?:identified(?:\s+with\s+\S+)?\s+by|password)\s+["']?([^\s"';]+)"#,
        check: Check::Generic,
    },
];

/// The minimum length of a generic assignment's value.
const GENERIC_MIN_LEN: usize = 7;
/// The minimum Shannon entropy, in bits per byte, of a generic value.
const GENERIC_MIN_ENTROPY: f64 = 2.5;
/// How far after a `BEGIN … PRIVATE KEY` line the scanner looks for its `END`.
const PEM_MAX_BYTES: usize = 64 * 1024;
/// How much text after a generic rule's keyword its anchored pattern sees:
/// room for a long name, the separator and a value of at most 256 bytes.
const WINDOW_AFTER: usize = 1024;
/// Keywords that are too short to stand inside a word: a hit right after an
/// ASCII letter (`compass`, `upward`) is not a name.
const SHORT_KEYWORDS: &[&str] = &["pass", "pwd", "pw", "psw", "pssw", "pasw"];
/// How far after an AWS access key id the scanner looks for its secret key.
const AWS_PAIR_WINDOW: usize = 256;

/// A rule with its pattern compiled.
struct Rule {
    kind: Kind,
    re: Regex,
    check: Check,
}

/// The compiled secret detectors: the keyword automaton and one regex per rule.
pub(crate) struct SecretDetector {
    prefilter: AhoCorasick,
    /// For each keyword pattern of `prefilter`, the rules it triggers: those
    /// naming it or any keyword inside it (the search is leftmost-longest and
    /// does not report `pass` inside `password`).
    keyword_rules: Vec<Vec<usize>>,
    /// For each keyword pattern, whether it is one of [`SHORT_KEYWORDS`].
    keyword_short: Vec<bool>,
    rules: Vec<Rule>,
    pem_end: Regex,
    aws_pair: Regex,
    jwt_engine: GeneralPurpose,
}

impl SecretDetector {
    /// Compiles every rule and the keyword prefilter.
    pub(crate) fn new() -> Result<Self, BuildError> {
        let mut keywords: Vec<String> = RULES
            .iter()
            .flat_map(|spec| spec.keywords.iter().map(|k| k.to_ascii_lowercase()))
            .collect();
        keywords.sort_unstable();
        keywords.dedup();
        let keyword_rules = keywords
            .iter()
            .map(|kw| {
                (0..RULES.len())
                    .filter(|&i| {
                        RULES.get(i).is_some_and(|spec| {
                            spec.keywords
                                .iter()
                                .any(|k| kw.contains(&k.to_ascii_lowercase()))
                        })
                    })
                    .collect()
            })
            .collect();
        let mut rules = Vec::with_capacity(RULES.len());
        for spec in RULES {
            rules.push(Rule {
                kind: spec.kind,
                re: compile(spec.pattern)?,
                check: spec.check,
            });
        }
        let prefilter = AhoCorasickBuilder::new()
            .ascii_case_insensitive(false)
            .match_kind(MatchKind::LeftmostLongest)
            .build(&keywords)
            .map_err(|e| BuildError::Prefilter(e.to_string()))?;
        let keyword_short = keywords
            .iter()
            .map(|k| SHORT_KEYWORDS.contains(&k.as_str()))
            .collect();
        Ok(Self {
            prefilter,
            keyword_rules,
            keyword_short,
            rules,
            pem_end: compile(r"-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----")?,
            aws_pair: compile(r"(?:^|[^A-Za-z0-9/+=])([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)")?,
            jwt_engine: GeneralPurpose::new(
                &base64::alphabet::URL_SAFE,
                GeneralPurposeConfig::new()
                    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
                    .with_decode_allow_trailing_bits(true),
            ),
        })
    }

    /// Appends every secret found in `text` to `out`, unsorted and possibly
    /// overlapping.
    pub(crate) fn detect(&self, text: &str, out: &mut Vec<Finding>) {
        // Which rules can match at all and, for the generic rules (whose
        // keywords are ordinary words), where their keywords start: a generic
        // pattern is anchored and runs once at each of its keywords.
        let mut triggered = vec![false; self.rules.len()];
        let mut hits: Vec<Vec<usize>> = vec![Vec::new(); self.rules.len()];
        // The keywords are lower case; matching them against a lower-cased
        // copy lets the automaton use its SIMD prefilter, which ASCII case
        // folding inside the automaton would disable.
        let lower = text.to_ascii_lowercase();
        for m in self.prefilter.find_iter(&lower) {
            let idx = m.pattern().as_usize();
            let Some(rs) = self.keyword_rules.get(idx) else {
                continue;
            };
            let inside_word = self.keyword_short.get(idx).copied().unwrap_or(false)
                && m.start()
                    .checked_sub(1)
                    .and_then(|i| text.as_bytes().get(i))
                    .is_some_and(u8::is_ascii_alphabetic);
            for &r in rs {
                if let Some(t) = triggered.get_mut(r) {
                    *t = true;
                }
                if let (Some(rule), Some(h)) = (self.rules.get(r), hits.get_mut(r))
                    && (rule.check != Check::Generic || !inside_word)
                {
                    h.push(m.start());
                }
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !triggered.get(i).copied().unwrap_or(false) {
                continue;
            }
            if rule.check != Check::Generic {
                // A specific rule runs only on the lines around its keywords
                // (merged where they overlap), not over the whole text: its
                // keyword is part of every match, and a match does not span
                // lines except for a PEM block, whose end `run_rule` finds in
                // the whole text.
                let mut windows: Vec<(usize, usize)> = Vec::new();
                for &at in hits.get(i).map_or(&[][..], Vec::as_slice) {
                    let (start, end) = line_window(text, at);
                    match windows.last_mut() {
                        Some(last) if start <= last.1 => last.1 = last.1.max(end),
                        _ => windows.push((start, end)),
                    }
                }
                for (start, end) in windows {
                    if let Some(window) = text.get(start..end) {
                        self.run_rule(rule, text, window, start, out);
                    }
                }
                continue;
            }
            for &start in hits.get(i).map_or(&[][..], Vec::as_slice) {
                let end = floor_char_boundary(text, start.saturating_add(WINDOW_AFTER));
                if let Some(window) = text.get(start..end) {
                    self.run_rule(rule, text, window, start, out);
                }
            }
        }
    }

    /// Runs one rule over `window`, which starts at byte `offset` of `text`.
    /// Callers pass windows that start and end at line boundaries (or at
    /// the text's ends), so word boundaries mean the same as in `text`.
    fn run_rule(
        &self,
        rule: &Rule,
        text: &str,
        window: &str,
        offset: usize,
        out: &mut Vec<Finding>,
    ) {
        // Capture groups cost a second, slower pass; only the rules whose
        // value is part of the match (assignments, URLs) have one.
        if rule.re.captures_len() > 1 {
            for caps in rule.re.captures_iter(window) {
                if let Some(m) = caps.get(1) {
                    self.accept(rule, text, m, offset, out);
                }
            }
        } else {
            for m in rule.re.find_iter(window) {
                self.accept(rule, text, m, offset, out);
            }
        }
    }

    /// Applies `rule`'s check to the value `m` (found in a window starting at
    /// byte `offset` of `text`) and records a finding when it passes.
    fn accept(
        &self,
        rule: &Rule,
        text: &str,
        m: regex::Match<'_>,
        offset: usize,
        out: &mut Vec<Finding>,
    ) {
        let (start, end) = (offset + m.start(), offset + m.end());
        let value = m.as_str();
        match rule.check {
            Check::Pem => {
                if !is_placeholder(value) {
                    let block_end = self.pem_block_end(text, end);
                    out.push(Finding::new(rule.kind, start, block_end));
                }
            }
            Check::Jwt => {
                if self.is_jwt(value) && !is_placeholder(value) {
                    out.push(Finding::new(rule.kind, start, end));
                }
            }
            Check::NotPlaceholder => {
                if !is_placeholder(value) {
                    out.push(Finding::new(rule.kind, start, end));
                    if rule.kind == Kind::AwsAccessKey {
                        self.aws_secret_near(text, end, out);
                    }
                }
            }
            Check::Generic => {
                let value = trim_value(value);
                if is_generic_secret(value) {
                    out.push(Finding::new(rule.kind, start, start + value.len()));
                }
            }
        }
    }

    /// The end of the PEM block whose `BEGIN` line ends at `from`: the end of
    /// its `END` line when one follows within [`PEM_MAX_BYTES`], else the end
    /// of that window. A block cut before its `END` line (a truncated paste,
    /// a body cut at a limit) still holds key material, and the streaming
    /// redactor swallows it to the end of the stream; stopping at the
    /// `BEGIN` line let the key's body through (found by crates/fuzz).
    fn pem_block_end(&self, text: &str, from: usize) -> usize {
        let limit = floor_char_boundary(text, from.saturating_add(PEM_MAX_BYTES));
        text.get(from..limit)
            .and_then(|window| self.pem_end.find(window))
            .map_or(limit, |m| from + m.end())
    }

    /// Reports a 40-character AWS secret access key shortly after an access
    /// key id (the usual layout of credentials files and JSON exports).
    fn aws_secret_near(&self, text: &str, from: usize, out: &mut Vec<Finding>) {
        let limit = floor_char_boundary(text, from.saturating_add(AWS_PAIR_WINDOW));
        let Some(window) = text.get(from..limit) else {
            return;
        };
        for caps in self.aws_pair.captures_iter(window) {
            if let Some(m) = caps.get(1) {
                let v = m.as_str();
                let mixed = v.bytes().any(|b| b.is_ascii_uppercase())
                    && v.bytes().any(|b| b.is_ascii_lowercase())
                    && v.bytes().any(|b| b.is_ascii_digit());
                if mixed && entropy(v) >= 4.0 && !is_placeholder(v) {
                    out.push(Finding::new(
                        Kind::AwsSecretKey,
                        from + m.start(),
                        from + m.end(),
                    ));
                    return;
                }
            }
        }
    }

    /// True when the first part of `token` decodes to a JSON object naming `"alg"`.
    fn is_jwt(&self, token: &str) -> bool {
        let Some(header) = token.split('.').next() else {
            return false;
        };
        let Ok(bytes) = self.jwt_engine.decode(header) else {
            return false;
        };
        let Ok(json) = std::str::from_utf8(&bytes) else {
            return false;
        };
        json.trim_start().starts_with('{') && json.contains("\"alg\"")
    }
}

/// Compiles one of this module's fixed patterns.
fn compile(pattern: &str) -> Result<Regex, BuildError> {
    Regex::new(pattern).map_err(|e| BuildError::Pattern {
        pattern: pattern.to_owned(),
        reason: e.to_string(),
    })
}

/// The largest char boundary of `text` at or below `i`.
fn floor_char_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Strips punctuation that ends a sentence or a call rather than a value.
fn trim_value(v: &str) -> &str {
    v.trim_end_matches(['.', ')', ']', '}', '>', '\\', ':'])
}

/// True when `v` is a stand-in for a secret rather than a secret: a template
/// or environment reference, a run of `x`/`*`, a word such as `changeme` or
/// `example`, or one repeated character.
pub(crate) fn is_placeholder(v: &str) -> bool {
    let Some(first) = v.bytes().next() else {
        return true;
    };
    if v.bytes().all(|b| b == first) {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    if lower.starts_with('$')
        || (lower.starts_with('%') && lower.ends_with('%'))
        || (lower.contains('<') && lower.contains('>'))
        || lower.contains("${")
        || lower.contains("{{")
        || lower.contains("xxxx")
        || lower.contains("****")
        || lower.contains("...")
    {
        return true;
    }
    const WORDS: &[&str] = &[
        "changeme",
        "change_me",
        "change-me",
        "example",
        "placeholder",
        "your_",
        "your-",
        "yourkey",
        "yourtoken",
        "yourpassword",
        "redacted",
        "dummy",
        "replace_me",
        "replaceme",
        "insert_",
        "fake",
    ];
    WORDS.iter().any(|w| lower.contains(w))
}

/// True when a generic assignment's value looks like a real secret.
fn is_generic_secret(v: &str) -> bool {
    if v.len() < GENERIC_MIN_LEN || v.len() > 256 || is_placeholder(v) {
        return false;
    }
    // A code identifier or member access (`user_password`, `self.token`,
    // `os.environ.get`) or a call is the name of a secret, not the secret.
    let identifier = |s: &str| {
        s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let all_lower_word = v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-');
    // A word (`Password`, `HISTORY`) or a constant's name is a label, and a
    // bare number is an id or a count.
    let word = v.bytes().all(|b| b.is_ascii_alphabetic())
        && (v.bytes().skip(1).all(|b| b.is_ascii_lowercase())
            || v.bytes().all(|b| b.is_ascii_uppercase()));
    let constant = v.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
    let number = v.bytes().all(|b| b.is_ascii_digit());
    // Member access has no digits in its parts (`n83.bat47Fy4` is a password).
    let dotted = v.contains('.')
        && v.split('.')
            .all(|p| identifier(p) && !p.bytes().any(|b| b.is_ascii_digit()));
    // An index into a map or array (`os.environ["API_KEY"]`, `cfg[key]`)
    // reads a secret from somewhere else.
    let indexing = v.find('[').is_some_and(|i| {
        i > 0
            && v[..i]
                .split('.')
                .all(|p| identifier(p) && !p.bytes().any(|b| b.is_ascii_digit()))
    });
    // A hexadecimal literal is a constant in code, not a credential.
    let hex_literal = v.len() > 2
        && (v.starts_with("0x") || v.starts_with("0X"))
        && v.bytes().skip(2).all(|b| b.is_ascii_hexdigit());
    if all_lower_word
        || word
        || constant
        || number
        || dotted
        || indexing
        || hex_literal
        || v.contains('(')
        || v.contains("://")
    {
        return false;
    }
    entropy(v) >= GENERIC_MIN_ENTROPY
}

/// The Shannon entropy of `v` in bits per byte.
fn entropy(v: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in v.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Longest line a specific rule is run on around a keyword, each way:
/// longer than any token or JWT seen in practice.
const LINE_LIMIT: usize = 16 * 1024;

/// The line holding byte `at` (without its newline), capped at
/// [`LINE_LIMIT`] bytes each way and snapped to char boundaries.
fn line_window(text: &str, at: usize) -> (usize, usize) {
    let b = text.as_bytes();
    let lo = at.saturating_sub(LINE_LIMIT);
    let start = b[lo..at.min(b.len())]
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(lo, |p| lo + p + 1);
    let hi = at.saturating_add(LINE_LIMIT).min(b.len());
    let end = b[at.min(b.len())..hi]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(hi, |p| at + p);
    let mut start = start;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    (start, floor_char_boundary(text, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `text` with the secret detectors alone and compares the found
    /// `(kind, value)` pairs, in order, with `expect`.
    fn check(text: &str, expect: &[(&str, &str)]) {
        let det = SecretDetector::new().unwrap();
        let mut out = Vec::new();
        det.detect(text, &mut out);
        let out = super::super::resolve(out);
        let got: Vec<(&str, &str)> = out
            .iter()
            .map(|f| (f.kind.as_str(), &text[f.start..f.end]))
            .collect();
        assert_eq!(got, expect, "text: {text}");
    }

    #[test]
    fn token_formats() {
        check(
            "id AKIAQWADE5R42RDZ4JEM ok",
            &[("aws_access_key", "AKIAQWADE5R42RDZ4JEM")],
        );
        check(
            "aws_access_key_id = AKIAQWADE5R42RDZ4JEM\naws_secret_access_key = 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\n",
            &[
                ("aws_access_key", "AKIAQWADE5R42RDZ4JEM"),
                ("aws_secret_key", "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"),
            ],
        );
        check(
            "t=ghp_aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2bC4 x",
            &[("github_token", "ghp_aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2bC4")],
        );
        check(
            "github_pat_11ABLV2EA0gWlOtew7YDYY_xXoiQzNpBTaTjNuaJKYy",
            &[(
                "github_token",
                "github_pat_11ABLV2EA0gWlOtew7YDYY_xXoiQzNpBTaTjNuaJKYy",
            )],
        );
        check(
            "glpat-8d5ri2n9g85LAnC9YW85 # pat",
            &[("gitlab_token", "glpat-8d5ri2n9g85LAnC9YW85")],
        );
        check(
            "Cookie: _gitlab_session=8d2a78c080a3af1e6a4677be474432f2",
            &[("gitlab_token", "8d2a78c080a3af1e6a4677be474432f2")],
        );
        check(
            "xoxb-391809548274-4236212766789-i8EoyACELx2FYnSOkRPEpePN",
            &[(
                "slack_token",
                "xoxb-391809548274-4236212766789-i8EoyACELx2FYnSOkRPEpePN",
            )],
        );
        check(
            "STRIPE=sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            &[("stripe_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc")],
        );
        check(
            "sk-proj-qa25MV9c7Qu0EjDIEWdcT3BlbkFJ83uCF0K4yw7RzpY39bio",
            &[(
                "openai_key",
                "sk-proj-qa25MV9c7Qu0EjDIEWdcT3BlbkFJ83uCF0K4yw7RzpY39bio",
            )],
        );
        check(
            "sk-ant-api03-gigCtxD_mMUnJuUOwVtpBmPFdG0-ybrcBb1Ecg",
            &[(
                "anthropic_key",
                "sk-ant-api03-gigCtxD_mMUnJuUOwVtpBmPFdG0-ybrcBb1Ecg",
            )],
        );
        check(
            "key: AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
            &[("google_api_key", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe")],
        );
        check(
            "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            &[(
                "jwt",
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            )],
        );
        check(
            "a\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEID4VC4s0b2n3\n-----END EC PRIVATE KEY-----\nb",
            &[(
                "private_key",
                "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEID4VC4s0b2n3\n-----END EC PRIVATE KEY-----",
            )],
        );
        // Without its END line the block runs to the end of the text.
        check(
            "a\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-42 4242 mail",
            &[(
                "private_key",
                "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-42 4242 mail",
            )],
        );
        check(
            "DATABASE_URL=postgres://app:s3cr3tP4ss@db.internal:5432/app",
            &[("connection_string", "s3cr3tP4ss")],
        );
        check(
            "mongodb+srv://jrfdeg42:p4Dsr8b@cluster0.example.net/db",
            &[("connection_string", "p4Dsr8b")],
        );
        check(
            r#"{"db_password": "Zq8#vL2!mP9x"}"#,
            &[("generic_secret", "Zq8#vL2!mP9x")],
        );
        check(
            "ID:master PW:dipPr11Gg!",
            &[("generic_secret", "dipPr11Gg!")],
        );
        check(
            "X3_PSWD=d37Yt1Jnv0-z",
            &[("generic_secret", "d37Yt1Jnv0-z")],
        );
        check(
            r#"if password != "PaS5w0rD2#" {"#,
            &[("generic_secret", "PaS5w0rD2#")],
        );
        check(
            r#"<password name="password">cackle!</password>"#,
            &[("generic_secret", "cackle!")],
        );
        check(
            r#"SET password "n83.bat47Fy4""#,
            &[("generic_secret", "n83.bat47Fy4")],
        );
        check(
            "CREATE USER bob IDENTIFIED BY 'SqLpa5sW0rD';",
            &[("generic_secret", "SqLpa5sW0rD")],
        );
    }

    #[test]
    fn near_misses_are_not_findings() {
        for text in [
            "AKIAQWADE5R42RDZ4JE",  // 19 characters
            "AKIAIOSFODNN7EXAMPLE", // AWS documentation key
            "ghp_short",
            "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
            "the task-based sk-learn docs",
            "eyJub3QiOiJhIGp3dCJ9.eyJhIjoxfQ.c2ln", // header without alg
            "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQ==\n-----END PUBLIC KEY-----",
            "postgres://app@db.internal/app",
            "postgres://user:${DB_PASSWORD}@db/app",
        ] {
            check(text, &[]);
        }
    }

    #[test]
    fn placeholders_are_not_findings() {
        for text in [
            "password=<YOUR_PASSWORD>",
            "api_key: ${OPENAI_API_KEY}",
            "secret = \"{{ vault_secret }}\"",
            "password=changeme",
            "password=changeme123",
            "token = xxxxxxxxxxxxxxxx",
            "password: ********",
            "password = aaaaaaaaaaaa",
            "api_key=your_api_key_here",
            "password = example-password",
            "password = get_password()",
            "token = self.access_token",
            "password: string",
            "The password must be at least twelve characters long.",
            "password = os.environ.get",
            "secret_key = settings.SECRET_KEY",
            "#define PASSWORD 0x0dead1beef7cafe2",
            "-----BEGIN OPENSSH FAKE PRIVATE KEY-----",
            "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAidGVzdCJ9.99l-EXAMPLEFAKESIG",
            "the compass: north",
            "upward: Reconsider2",
            "the compass: N0rthWest",
            r#"passed = "cackle!""#,
            "pwdump=n0NeKreD",
            "password_id = 2938479",
            "ALTER USER 'u'@'%' PASSWORD HISTORY 1;",
            r#"<label for="password">Password:</label>"#,
        ] {
            check(text, &[]);
        }
    }

    #[test]
    fn no_keyword_no_work() {
        let det = SecretDetector::new().unwrap();
        let mut out = Vec::new();
        det.detect("The quick brown fox jumps over the lazy dog.", &mut out);
        assert!(out.is_empty());
    }
}
