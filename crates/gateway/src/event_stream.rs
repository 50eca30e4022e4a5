//! Server-sent event framing as the WHATWG specification reads it, shared
//! by the two adapters that rewrite event streams (MCP answers, LLM
//! completions).
//!
//! A line ends with CRLF, LF or CR alone; an event ends with an empty line;
//! a line starting with `:` is a comment; the `data` of an event is its
//! `data:` lines joined by LF. Reading only LF-framed events, as the
//! adapters once did, let a CR-framed stream pass whole as one unread
//! "event" (issue 19).

/// One past the end of the first complete event in `buf` (its empty line),
/// if any. A CR that ends `buf` counts as a line end: should an LF follow,
/// it is read as an empty event, which carries nothing.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = true;
    let mut i = 0;
    while i < buf.len() {
        let end = match buf[i] {
            b'\r' if buf.get(i + 1) == Some(&b'\n') => i + 2,
            b'\r' | b'\n' => i + 1,
            _ => {
                line_start = false;
                i += 1;
                continue;
            }
        };
        if line_start {
            return Some(end);
        }
        line_start = true;
        i = end;
    }
    None
}

/// The lines of an event, without their line ends (an empty last line
/// dropped).
pub fn lines(event: &str) -> impl Iterator<Item = &str> {
    event
        .split('\n')
        .flat_map(|l| l.split('\r'))
        .filter(|l| !l.is_empty())
}

/// One line of an event: a comment (`: text`) or a field (`name: value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A comment, without its `:`.
    Comment(String),
    /// A field: its name and value (without the one space after the colon).
    Field(String, String),
}

/// Parses an event into its lines.
pub fn parse(event: &str) -> Vec<Line> {
    lines(event)
        .map(|l| match l.strip_prefix(':') {
            Some(c) => Line::Comment(c.to_string()),
            None => {
                let (name, value) = l.split_once(':').unwrap_or((l, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                Line::Field(name.to_string(), value.to_string())
            }
        })
        .collect()
}

/// The event's data (its `data` fields joined by LF), `None` when it has
/// none.
pub fn data(lines: &[Line]) -> Option<String> {
    let mut out: Option<String> = None;
    for l in lines {
        if let Line::Field(name, value) = l
            && name == "data"
        {
            match &mut out {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => out = Some(value.clone()),
            }
        }
    }
    out
}

/// Writes an event LF-framed: every line but the data ones as they are,
/// `data` (one line per LF) where the first data line was.
pub fn write(lines: &[Line], data: Option<&str>, out: &mut Vec<u8>) {
    let mut written = false;
    for l in lines {
        match l {
            Line::Comment(c) => {
                out.push(b':');
                out.extend_from_slice(c.as_bytes());
                out.push(b'\n');
            }
            Line::Field(name, _) if name == "data" => {
                if !std::mem::replace(&mut written, true)
                    && let Some(d) = data
                {
                    for part in d.split('\n') {
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(part.as_bytes());
                        out.push(b'\n');
                    }
                }
            }
            Line::Field(name, value) => {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.push(b'\n');
            }
        }
    }
    if !written && let Some(d) = data {
        for part in d.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(part.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_an_empty_line_whatever_the_line_ends() {
        for (buf, end) in [
            (&b"data: x\n\ndata: y"[..], Some(9)),
            (b"data: x\r\n\r\n", Some(11)),
            (b"data: x\r\rdata: y", Some(9)),
            (b"data: x\r\n\n", Some(10)),
            (b"data: x\n", None),
            (b"data: x\r", None),
            (b"\n", Some(1)),
            (b": c\r\r", Some(5)),
        ] {
            assert_eq!(event_end(buf), end, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn parse_and_write() {
        let lines = parse("event: x\r: note\rdata: {\"a\":\r\ndata:1}\nid: 7\r\r");
        assert_eq!(data(&lines).as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(lines[1], Line::Comment(" note".into()));
        let mut out = Vec::new();
        write(&lines, Some("{\"a\":2}"), &mut out);
        assert_eq!(out, b"event: x\n: note\ndata: {\"a\":2}\nid: 7\n\n");
    }
}
