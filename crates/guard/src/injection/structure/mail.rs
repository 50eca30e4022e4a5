//! E-mail as tools print it: one message or several (a mailbox, a search
//! result, a thread with forwarded messages), each a block of `Name: value`
//! headers (folded lines continued) and a body after a blank line.
//!
//! One record per message: its headers as leaves read with their names,
//! and each paragraph of the body as a leaf. Nothing is left out: an mbox
//! `From ` line or a `--- Forwarded message ---` line is read as a line of
//! text too; only lines of nothing but `-`, `=`, `_` or `*` are dropped. A message starts where a header block does — at least
//! two header lines naming two of `From`, `To`, `Cc`, `Subject`, `Date`,
//! `Reply-To`, `Sender` — at the start of the text, after a blank line, or
//! after an mbox `From ` line or a separator line (`-----`, `=====`). The
//! text is mail only when the first message starts at its first line.

use super::{Builder, Fail, Unit, lines};

/// Headers that make a block a message's.
const ADDRESS_HEADERS: &[&str] = &["cc", "date", "from", "reply-to", "sender", "subject", "to"];
/// The longest header name accepted.
const MAX_NAME: usize = 40;

/// Reads `text` as mail records, or `None` when it does not open with a
/// message's headers.
pub(super) fn split(text: &str) -> Option<Result<Builder, Fail>> {
    let all: Vec<(usize, &str)> = lines(text).collect();
    let first = all.iter().position(|(_, l)| !l.trim().is_empty())?;
    let headers = if all[first].1.starts_with("From ") {
        first + 1
    } else {
        first
    };
    header_block(all.get(headers..)?)?;
    let mut out = Builder::new(text);
    Some(read(&all, &mut out).map(|()| out))
}

/// The number of lines of the header block at the start of `lines`, when
/// they are a message's headers.
fn header_block(lines: &[(usize, &str)]) -> Option<usize> {
    let mut n = 0;
    let mut named = 0;
    let mut seen: Vec<String> = Vec::new();
    for (_, l) in lines {
        if l.starts_with([' ', '\t']) && n > 0 && !l.trim().is_empty() {
            n += 1;
            continue;
        }
        let Some(name) = header_name(l) else {
            break;
        };
        let lower = name.to_ascii_lowercase();
        if ADDRESS_HEADERS.contains(&lower.as_str()) && !seen.contains(&lower) {
            named += 1;
            seen.push(lower);
        }
        n += 1;
    }
    (n >= 2 && named >= 2).then_some(n)
}

/// The name of a `Name: value` header line.
fn header_name(line: &str) -> Option<&str> {
    let colon = line.find(':')?;
    let name = &line[..colon];
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && (line.len() == colon + 1 || line.as_bytes()[colon + 1] == b' ');
    ok.then_some(name)
}

/// A line of nothing but `-`, `=`, `_` or `*`: it separates messages and
/// says nothing.
fn is_rule(line: &str) -> bool {
    let t = line.trim();
    t.len() >= 3 && t.bytes().all(|b| matches!(b, b'-' | b'=' | b'_' | b'*'))
}

/// A line after which a message may start, read as text of its own: an
/// mbox `From ` line, a `--- Forwarded message ---` line.
fn is_divider(line: &str) -> bool {
    let t = line.trim();
    t.starts_with("From ") || (t.len() > 6 && t.starts_with("---") && t.ends_with("---"))
}

fn read(all: &[(usize, &str)], out: &mut Builder) -> Result<(), Fail> {
    let mut unit = Unit::default();
    let mut i = 0;
    let mut paragraph: Option<(String, (usize, usize))> = None;
    let end_paragraph = |p: &mut Option<(String, (usize, usize))>,
                         unit: &mut Unit,
                         out: &mut Builder|
     -> Result<(), Fail> {
        match p.take() {
            Some((t, raw)) => out.leaf(unit, "", &t, raw),
            None => Ok(()),
        }
    };
    let mut boundary = true;
    while i < all.len() {
        let (off, line) = all[i];
        if boundary && let Some(n) = header_block(&all[i..]) {
            end_paragraph(&mut paragraph, &mut unit, out)?;
            out.record(std::mem::take(&mut unit))?;
            // The headers, unfolded.
            let mut j = i;
            while j < i + n {
                let (hoff, h) = all[j];
                let name = header_name(h).unwrap_or_default();
                let mut value = h[name.len() + 1..].trim().to_string();
                let mut end = hoff + h.len();
                while j + 1 < i + n && all[j + 1].1.starts_with([' ', '\t']) {
                    j += 1;
                    value.push(' ');
                    value.push_str(all[j].1.trim());
                    end = all[j].0 + all[j].1.len();
                }
                out.leaf(&mut unit, name, &value, (hoff + name.len() + 1, end))?;
                j += 1;
            }
            i += n;
            boundary = false;
            continue;
        }
        let blank = line.trim().is_empty();
        if blank || is_rule(line) {
            end_paragraph(&mut paragraph, &mut unit, out)?;
            boundary = true;
        } else if is_divider(line) {
            end_paragraph(&mut paragraph, &mut unit, out)?;
            let t = line.trim_end();
            out.leaf(&mut unit, "", t, (off, off + t.len()))?;
            boundary = true;
        } else {
            boundary = false;
            let end = off + line.trim_end().len();
            match paragraph.as_mut() {
                Some((t, raw)) => {
                    t.push('\n');
                    t.push_str(line.trim_end());
                    raw.1 = end;
                }
                None => paragraph = Some((line.trim_end().to_string(), (off, end))),
            }
        }
        i += 1;
    }
    end_paragraph(&mut paragraph, &mut unit, out)?;
    out.record(unit)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{alongside, texts};
    use super::super::{Structure, split};

    #[test]
    fn one_record_per_message() {
        let text = "From alice@example.com Mon Jan 1 00:00:00 2024\nFrom: Alice Ng <alice@example.com>\nTo: bob@example.com\nSubject: Quarterly\n numbers\nReceived: from mx.example.com by mail.example.com\n\nHi Bob,\nthe numbers are in.\n\nBest, Alice\n\nFrom: Carol <carol@example.com>\nSubject: Lunch\nDate: Tue, 2 Jan 2024 10:00:00 +0000\n\nNoon at the usual place?\n-----\nFrom: dave@example.com\nTo: bob@example.com\n\nLast one here.\n";
        let u = alongside(text);
        assert_eq!(
            texts(text),
            [
                "From alice@example.com Mon Jan 1 00:00:00 2024",
                "From: Alice Ng <alice@example.com>\nSubject: Quarterly numbers\nReceived: from mx.example.com by mail.example.com\nHi Bob,\nthe numbers are in.\nBest, Alice",
                "From: Carol <carol@example.com>\nDate: Tue, 2 Jan 2024 10:00:00 +0000\nNoon at the usual place?",
                "Last one here.",
            ]
        );
        let at = u[1].text.find("Hi Bob").unwrap();
        let (s, e) = u[1].original_range((at, at + 2));
        assert_eq!(&text[s..e], "Hi Bob,\nthe numbers are in.");
    }

    #[test]
    fn prose_and_single_headers_are_not_mail() {
        for text in [
            "Subject: only one header line\n\nand a body",
            "Dear Bob,\nFrom: Alice\nTo: Bob\n",
        ] {
            assert_eq!(split(text), Structure::Flat, "{text}");
        }
    }
}
