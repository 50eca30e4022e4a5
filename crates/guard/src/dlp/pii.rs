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
        for (start, end) in number_spans(text.as_bytes()) {
            let Some(span) = text.get(start..end) else {
                continue;
            };
            for m in self.numbers.find_iter(span) {
                self.number(start, m, out);
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

    /// Classifies one match of the number pattern found in a span starting
    /// at byte `offset` of `text`.
    fn number(&self, offset: usize, m: regex::Match<'_>, out: &mut Vec<Finding>) {
        let (start, end) = (offset + m.start(), offset + m.end());
        {
            let v = m.as_str().as_bytes();
            if v.first().is_some_and(u8::is_ascii_uppercase) {
                if let Some(len) = iban_prefix_len(m.as_str()) {
                    out.push(Finding::new(Kind::Iban, start, start + len));
                }
            } else if v.len() == 11 && v.get(3) == Some(&b'-') && v.get(6) == Some(&b'-') {
                if is_valid_ssn(m.as_str()) {
                    out.push(Finding::new(Kind::UsSsn, start, end));
                }
            } else if is_valid_card(m.as_str()) {
                out.push(Finding::new(Kind::CreditCard, start, end));
            }
        }
    }
}

/// The spans of `text` where the number pattern can match, widened to word
/// boundaries so that its `\b` means the same as in the whole text: runs of
/// digits, spaces and dashes holding at least 9 digits (an SSN has 9, a card
/// 13 or more), and two capitals followed by two digits (an IBAN's start).
/// A byte loop finds them several times faster than the regex scans prose.
fn number_spans(text: &[u8]) -> Vec<(usize, usize)> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let push = |s: usize, e: usize, spans: &mut Vec<(usize, usize)>| {
        let mut s = s;
        while s > 0 && text[s - 1].is_ascii_alphanumeric() {
            s -= 1;
        }
        let mut e = e.min(text.len());
        while e < text.len() && text[e].is_ascii_alphanumeric() {
            e += 1;
        }
        // An IBAN window may end inside a character of several bytes; the
        // span must end on a character boundary, or `detect` cannot slice
        // it and the whole span, IBAN included, went unscanned (found by
        // crates/fuzz).
        while e < text.len() && text[e] & 0xC0 == 0x80 {
            e += 1;
        }
        match spans.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => spans.push((s, e)),
        }
    };
    let (mut run_start, mut digits, mut last_sep) = (0usize, 0usize, false);
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b.is_ascii_digit() {
            if digits == 0 {
                run_start = i;
            }
            digits += 1;
            last_sep = false;
        } else if digits > 0 && (b == b' ' || b == b'-') && !last_sep {
            last_sep = true;
        } else {
            if digits >= 9 {
                push(run_start, i, &mut spans);
            }
            digits = 0;
            last_sep = false;
            if b.is_ascii_uppercase()
                && text.get(i + 1).is_some_and(u8::is_ascii_uppercase)
                && text.get(i + 2).is_some_and(u8::is_ascii_digit)
                && text.get(i + 3).is_some_and(u8::is_ascii_digit)
            {
                // An IBAN is at most 34 characters plus 8 group spaces.
                push(i, i + 44, &mut spans);
            }
        }
        i += 1;
    }
    if digits >= 9 {
        push(run_start, text.len(), &mut spans);
    }
    spans
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The span prefilter must find exactly what the pattern finds on the
    /// whole text.
    #[test]
    fn spans_find_what_the_whole_text_pass_finds() {
        let d = PiiDetector::new().unwrap();
        let texts = [
            "card 4111 1111 1111 1111, ssn 123-45-6789, iban GB82 WEST 1234 5698 7654 32.",
            "x4111111111111111 4111-1111-1111-1111 41111111111111112222 DE89370400440532013000AB",
            "order 12345678 and 123456789 and 1234 5678 9012 3456 7 and 12-34-56",
            "GB82WEST12345698765432 FK88SC123456789012 ab12 AB12 ZZ99ZZZZZZZZZZZZZZZZZZZZ",
            "phone 555-0100, 2026-11-23, 10.0.0.1, 0x4111111111111111",
            "é4111111111111111é 123-45-6789é",
            // The IBAN window (44 bytes from `GB82`) ends inside `\u{FFFD}`.
            "IBAN GB82 WEST 1234 5698 7654 32 SSN 078-20 http\u{FFFD}://user",
            "",
            "4111111111111111",
        ];
        for t in texts {
            let mut got = Vec::new();
            d.detect(t, &mut got);
            let mut want = Vec::new();
            for m in d.numbers.find_iter(t) {
                d.number(0, m, &mut want);
            }
            if t.contains('@') {
                for m in d.email.find_iter(t) {
                    if is_valid_email(m.as_str()) {
                        want.push(Finding::new(Kind::Email, m.start(), m.end()));
                    }
                }
            }
            assert_eq!(got, want, "{t:?}");
        }
    }
}
