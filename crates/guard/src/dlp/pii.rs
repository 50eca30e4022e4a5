//! PII candidates: loose patterns for payment cards, US SSNs, IBANs and email
//! addresses, kept only when [`super::validators`] accepts them.

use regex::Regex;

use super::validators::{iban_length, is_valid_card, is_valid_email, is_valid_iban, is_valid_ssn};
use super::{BuildError, Finding, Kind};

/// Cards (13–19 digits, single spaces or dashes between), SSNs (`AAA-GG-SSSS`)
/// and IBANs (country, check digits, then alphanumerics in optional groups),
/// in one pass.
const NUMBERS: &str = r"(?-u:\b)(?:[0-9](?:[ \-]?[0-9]){12,18}|[0-9]{3}-[0-9]{2}-[0-9]{4}|[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30})(?-u:\b)";
/// Email candidates; the dot-atom rules are checked by the validator.
const EMAIL: &str = r"(?-u:\b)[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+(?-u:\b)";

/// The compiled PII patterns.
pub(crate) struct PiiDetector {
    numbers: Regex,
    email: Regex,
}

impl PiiDetector {
    /// Compiles the patterns.
    pub(crate) fn new() -> Result<Self, BuildError> {
        let compile = |p: &str| {
            Regex::new(p).map_err(|e| BuildError::Pattern {
                pattern: p.to_owned(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            numbers: compile(NUMBERS)?,
            email: compile(EMAIL)?,
        })
    }

    /// Appends every validated PII value in `text` to `out`.
    pub(crate) fn detect(&self, text: &str, out: &mut Vec<Finding>) {
        // One pass without capture groups; the shape of a match says which
        // branch it came from (an IBAN starts with letters, an SSN has its
        // dashes at 3 and 6, anything else is a card candidate).
        for m in self.numbers.find_iter(text) {
            let v = m.as_str().as_bytes();
            if v.first().is_some_and(u8::is_ascii_uppercase) {
                if let Some(len) = iban_prefix_len(m.as_str()) {
                    out.push(Finding::new(Kind::Iban, m.start(), m.start() + len));
                }
            } else if v.len() == 11 && v.get(3) == Some(&b'-') && v.get(6) == Some(&b'-') {
                if is_valid_ssn(m.as_str()) {
                    out.push(Finding::new(Kind::UsSsn, m.start(), m.end()));
                }
            } else if is_valid_card(m.as_str()) {
                out.push(Finding::new(Kind::CreditCard, m.start(), m.end()));
            }
        }
        if text.contains('@') {
            for m in self.email.find_iter(text) {
                if is_valid_email(m.as_str()) {
                    out.push(Finding::new(Kind::Email, m.start(), m.end()));
                }
            }
        }
    }
}

/// The byte length of the valid IBAN that `candidate` starts with, if any.
///
/// The candidate pattern is greedy, so `DE89 3704 0044 0532 0130 00 AB12`
/// arrives whole; the country's registry length says where the IBAN ends,
/// and it must end at a group boundary (a space or the end of the candidate).
fn iban_prefix_len(candidate: &str) -> Option<usize> {
    let want = iban_length(candidate.get(..2)?)?;
    let mut seen = 0;
    for (i, c) in candidate.char_indices() {
        if c != ' ' {
            seen += 1;
        }
        if seen == want {
            let end = i + c.len_utf8();
            let at_boundary = candidate
                .get(end..)
                .is_none_or(|rest| rest.is_empty() || rest.starts_with(' '));
            let prefix = candidate.get(..end)?;
            return (at_boundary && is_valid_iban(prefix)).then_some(end);
        }
    }
    None
}
