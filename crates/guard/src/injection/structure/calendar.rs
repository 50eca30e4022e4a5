//! iCalendar and vCard (RFC 5545, RFC 6350): `BEGIN:`/`END:` components of
//! `NAME;PARAM=…:VALUE` properties, long lines folded onto lines that start
//! with a space or a tab.
//!
//! One record per component (an event, a to-do, an alarm inside an event, a
//! contact card), one leaf per property value (unfolded, `\n`, `\,`, `\;`
//! undone) read with the property's name, and one per parameter value that
//! is text (`CN="…"`).

use super::{Builder, Fail, MAX_DEPTH, Unit, lines};

/// Reads `text` as calendar or contact records, or `None` when it does not
/// open with `BEGIN:`.
pub(super) fn split(text: &str) -> Option<Result<Builder, Fail>> {
    let head = text.trim_start();
    if !head
        .get(..6)
        .is_some_and(|h| h.eq_ignore_ascii_case("begin:"))
    {
        return None;
    }
    let mut out = Builder::new(text);
    Some(read(text, &mut out).map(|()| out))
}

fn read(text: &str, out: &mut Builder) -> Result<(), Fail> {
    // Unfolded logical lines with their raw ranges.
    let mut logical: Vec<(String, (usize, usize))> = Vec::new();
    for (off, line) in lines(text) {
        match (line.strip_prefix([' ', '\t']), logical.last_mut()) {
            (Some(more), Some((l, raw))) => {
                l.push_str(more);
                raw.1 = off + line.len();
            }
            _ if line.trim().is_empty() => {}
            _ => logical.push((line.to_string(), (off, off + line.len()))),
        }
    }
    let mut open: Vec<Unit> = Vec::new();
    let mut unit = Unit::default();
    for (line, raw) in &logical {
        let colon = value_colon(line).ok_or(Fail::Invalid)?;
        let (head, value) = (&line[..colon], &line[colon + 1..]);
        let mut params = head.split(';');
        let name = params.next().unwrap_or_default();
        if name.eq_ignore_ascii_case("begin") {
            if open.len() >= MAX_DEPTH {
                return Err(Fail::Over);
            }
            out.open()?;
            open.push(std::mem::take(&mut unit));
            continue;
        }
        if name.eq_ignore_ascii_case("end") {
            let parent = open.pop().ok_or(Fail::Invalid)?;
            out.record(std::mem::replace(&mut unit, parent))?;
            continue;
        }
        for p in params {
            if let Some((k, v)) = p.split_once('=') {
                out.leaf(&mut unit, k, v.trim_matches('"'), *raw)?;
            }
        }
        out.leaf(&mut unit, name, &unescape(value), *raw)?;
    }
    // Components left open, and properties outside any, are records too.
    while let Some(parent) = open.pop() {
        out.record(std::mem::replace(&mut unit, parent))?;
    }
    out.record(unit)
}

/// The `:` that ends a property's name and parameters (outside quotes).
fn value_colon(line: &str) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// A property value with its escapes undone.
fn unescape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            s.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'N') => s.push('\n'),
            Some(other) => s.push(other),
            None => s.push('\\'),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::tests::{alongside, texts};
    use super::super::{Structure, split};

    #[test]
    fn one_record_per_component() {
        let text = "BEGIN:VCALENDAR\r\nPRODID:-//Example//EN\r\nX-WR-CALNAME:Team calendar\r\nBEGIN:VEVENT\r\nUID:1@example.com\r\nSUMMARY:Team sync\r\nDESCRIPTION:Agenda:\\n1. status\\, blockers\r\n  and next steps\r\nATTENDEE;CN=\"Ann Lee\":mailto:ann@example.com\r\nBEGIN:VALARM\r\nDESCRIPTION:Reminder text\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let u = alongside(text);
        assert_eq!(
            texts(text),
            [
                "DESCRIPTION: Reminder text",
                "SUMMARY: Team sync\nDESCRIPTION: Agenda:\n1. status, blockers and next steps\nCN: Ann Lee",
                "X-WR-CALNAME: Team calendar",
            ]
        );
        // The folded description's range covers both raw lines.
        let (s, e) = u[1].original_range((20, 30));
        assert!(text[s..e].starts_with("DESCRIPTION:") && text[s..e].ends_with("next steps"));
    }

    #[test]
    fn a_line_without_a_value_is_not_a_calendar() {
        assert_eq!(
            split("BEGIN:VEVENT\nthis line has no colon\nEND:VEVENT"),
            Structure::Flat
        );
        assert_eq!(split("BEGIN:VEVENT\nEND:VEVENT\nEND:X"), Structure::Flat);
    }
}
