//! Data loss prevention: find secrets and PII in text and redact them.
//!
//! [`Scanner::new`] compiles every detector once; [`Scanner::scan`] returns
//! the findings of one text, sorted and without overlaps, and
//! [`Scanner::redact`] replaces each found value with a typed, numbered
//! placeholder such as `[REDACTED_AWS_ACCESS_KEY_1]`. A finding carries its
//! kind and byte range only, never the value, so it can be logged and audited.
//!
//! Secrets come from [`secrets`] (keyword-prefiltered regexes with placeholder
//! suppression); PII comes from loose patterns confirmed by [`validators`].

use std::collections::BTreeMap;

mod pii;
pub mod redact;
pub mod secrets;
pub mod validators;

/// What kind of sensitive value a finding is.
///
/// The declaration order is the precedence when findings overlap: an earlier
/// (more specific) kind wins over a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A PEM `BEGIN … PRIVATE KEY` block (RSA, EC, OpenSSH, PGP, PKCS #8).
    PrivateKey,
    /// An AWS access key id (`AKIA…`, `ASIA…` and the other 20-character ids).
    AwsAccessKey,
    /// An AWS secret access key, recognised by its name or next to a key id.
    AwsSecretKey,
    /// A GitHub token (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`).
    GithubToken,
    /// A GitLab token (`glpat-` and the other `gl…-` prefixes, runner tokens).
    GitlabToken,
    /// A Slack token (`xoxb-`, `xoxp-`, … and `xapp-`).
    SlackToken,
    /// A Stripe secret or restricted key, or webhook secret.
    StripeKey,
    /// An Anthropic API key (`sk-ant-…`).
    AnthropicKey,
    /// An OpenAI API key (`sk-…T3BlbkFJ…`, `sk-proj-…`).
    OpenaiKey,
    /// A Google API key (`AIza…`).
    GoogleApiKey,
    /// A JSON Web Token whose header names an algorithm.
    Jwt,
    /// The password inside a URL (`scheme://user:password@host`).
    ConnectionString,
    /// A payment card number (issuer range, length and Luhn check).
    CreditCard,
    /// An IBAN (registry length and mod-97 check).
    Iban,
    /// A US social security number in `AAA-GG-SSSS` form.
    UsSsn,
    /// An email address.
    Email,
    /// The value of a `password=`, `secret:`, `api_key=` … assignment.
    GenericSecret,
}

impl Kind {
    /// Every kind, in precedence order.
    pub const ALL: [Kind; 17] = [
        Kind::PrivateKey,
        Kind::AwsAccessKey,
        Kind::AwsSecretKey,
        Kind::GithubToken,
        Kind::GitlabToken,
        Kind::SlackToken,
        Kind::StripeKey,
        Kind::AnthropicKey,
        Kind::OpenaiKey,
        Kind::GoogleApiKey,
        Kind::Jwt,
        Kind::ConnectionString,
        Kind::CreditCard,
        Kind::Iban,
        Kind::UsSsn,
        Kind::Email,
        Kind::GenericSecret,
    ];

    /// The stable snake_case name used in findings, logs and policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PrivateKey => "private_key",
            Kind::AwsAccessKey => "aws_access_key",
            Kind::AwsSecretKey => "aws_secret_key",
            Kind::GithubToken => "github_token",
            Kind::GitlabToken => "gitlab_token",
            Kind::SlackToken => "slack_token",
            Kind::StripeKey => "stripe_key",
            Kind::AnthropicKey => "anthropic_key",
            Kind::OpenaiKey => "openai_key",
            Kind::GoogleApiKey => "google_api_key",
            Kind::Jwt => "jwt",
            Kind::ConnectionString => "connection_string",
            Kind::CreditCard => "credit_card",
            Kind::Iban => "iban",
            Kind::UsSsn => "us_ssn",
            Kind::Email => "email",
            Kind::GenericSecret => "generic_secret",
        }
    }

    /// Whether the kind is a credential or key (what opens something), as
    /// opposed to personal or payment data (`credit_card`, `iban`,
    /// `us_ssn`, `email`): the egress proxy refuses secrets on its own and
    /// leaves the rest to policy.
    pub fn is_secret(self) -> bool {
        !matches!(
            self,
            Kind::CreditCard | Kind::Iban | Kind::UsSsn | Kind::Email
        )
    }

    /// The kind named `name` (its [`Kind::as_str`]).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One sensitive value found in a text: its kind and byte range, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// What was found.
    pub kind: Kind,
    /// Byte offset of the first byte of the value.
    pub start: usize,
    /// Byte offset one past the last byte of the value.
    pub end: usize,
}

impl Finding {
    fn new(kind: Kind, start: usize, end: usize) -> Self {
        Self { kind, start, end }
    }
}

/// A detector pattern failed to compile. The patterns are fixed, so this is a
/// bug in this crate; a unit test builds the scanner to rule it out.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A regular expression did not compile.
    #[error("pattern `{pattern}` does not compile: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// The regex crate's message.
        reason: String,
    },
    /// The keyword prefilter did not build.
    #[error("keyword prefilter does not build: {0}")]
    Prefilter(String),
}

/// The compiled DLP detectors. Build once and share; scanning takes `&self`.
pub struct Scanner {
    secrets: secrets::SecretDetector,
    pii: pii::PiiDetector,
}

impl Scanner {
    /// Compiles every detector.
    pub fn new() -> Result<Self, BuildError> {
        Ok(Self {
            secrets: secrets::SecretDetector::new()?,
            pii: pii::PiiDetector::new()?,
        })
    }

    /// Returns the findings in `text`, sorted by position and without
    /// overlaps (where two overlap, the earlier [`Kind`] wins, then the longer).
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut found = Vec::new();
        self.secrets.detect(text, &mut found);
        self.pii.detect(text, &mut found);
        resolve(found)
    }

    /// Returns `text` with every finding replaced by `[REDACTED_<KIND>_<n>]`.
    ///
    /// `n` counts distinct values per kind from 1 within this call, so the
    /// same value gets the same placeholder wherever it appears.
    pub fn redact(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        redact::Redactor::new(&[]).apply(text, &self.scan(text), &mut out);
        out
    }
}

/// Drops overlapping findings, keeping the earlier kind and then the longer
/// span, and sorts the rest by position.
fn resolve(mut found: Vec<Finding>) -> Vec<Finding> {
    found.sort_by_key(|f| (f.kind, f.start, std::cmp::Reverse(f.end)));
    // Chosen spans, start → end, pairwise disjoint.
    let mut chosen: BTreeMap<usize, Finding> = BTreeMap::new();
    for f in found {
        if f.start >= f.end {
            continue;
        }
        // Disjoint spans sorted by start also have sorted ends, so the last
        // one starting before `f.end` is the only one that can overlap `f`.
        let overlaps = chosen
            .range(..f.end)
            .next_back()
            .is_some_and(|(_, c)| c.end > f.start);
        if !overlaps {
            chosen.insert(f.start, f);
        }
    }
    chosen.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redacts `text` and compares with `expect`.
    fn check(text: &str, expect: &str) {
        let scanner = Scanner::new().unwrap();
        assert_eq!(scanner.redact(text), expect);
    }

    #[test]
    fn redaction() {
        check("nothing to see here", "nothing to see here");
        check(
            "k1=AKIAQWADE5R42RDZ4JEM k2=AKIAZZADE5R42RDZ4JEM again AKIAQWADE5R42RDZ4JEM",
            "k1=[REDACTED_AWS_ACCESS_KEY_1] k2=[REDACTED_AWS_ACCESS_KEY_2] again [REDACTED_AWS_ACCESS_KEY_1]",
        );
        check(
            "card 4242 4242 4242 4242, iban GB82 WEST 1234 5698 7654 32, ssn 123-45-6789, mail a.b@example.org.",
            "card [REDACTED_CREDIT_CARD_1], iban [REDACTED_IBAN_1], ssn [REDACTED_US_SSN_1], mail [REDACTED_EMAIL_1].",
        );
        check(
            "order 4242424242424241 and DE89370400440532013001 and 666-12-3456",
            "order 4242424242424241 and DE89370400440532013001 and 666-12-3456",
        );
        check(
            "url=postgres://app:Zq8vL2mP9x@db/app token=ghp_aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2bC4",
            "url=postgres://app:[REDACTED_CONNECTION_STRING_1]@db/app token=[REDACTED_GITHUB_TOKEN_1]",
        );
        check(
            "é AKIAQWADE5R42RDZ4JEM ü",
            "é [REDACTED_AWS_ACCESS_KEY_1] ü",
        );
    }

    #[test]
    fn scan_is_sorted_and_disjoint() {
        let scanner = Scanner::new().unwrap();
        let text =
            "password=ghp_aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2bC4 mail x@example.com 4111111111111111";
        let found = scanner.scan(text);
        let kinds: Vec<&str> = found.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(kinds, ["github_token", "email", "credit_card"]);
        assert!(found.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn kind_names_are_unique_snake_case() {
        let mut names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Kind::ALL.len());
    }
}
