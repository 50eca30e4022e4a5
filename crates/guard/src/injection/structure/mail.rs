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
//!
//! MIME: a message whose `Content-Type` is `multipart/*` is read part by
//! part (`multipart/alternative`, `mixed`, `related`, nested up to
//! [`MAX_PARTS`] levels), each part's body decoded from its
//! `Content-Transfer-Encoding` (base64, quoted-printable) and charset
//! (UTF-8, ASCII, Latin-1) before it is read: a plain-text body by
//! paragraph, any other text (`text/html`, `message/rfc822`, JSON) as one
//! leaf, which the nested reading (`super::expand`) reads as the document
//! it is. The same holds for a single-part message with an encoded body.
//! A part that cannot be decoded (an unknown encoding or charset, invalid
//! base64, a type that is not text such as `image/png`, deeper than
//! [`MAX_PARTS`]) is not read; its raw range is reported as undecodable
//! (`undecodable_part`), which a route that blocks refuses as it refuses a
//! body it cannot read (`content_unscannable`).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::{Builder, Fail, Unit, lines};

/// How deep multiparts nest before a part is left undecoded.
pub const MAX_PARTS: usize = 8;

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
            let mut headers: Vec<(String, String)> = Vec::new();
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
                headers.push((name.to_ascii_lowercase(), value));
                j += 1;
            }
            i += n;
            boundary = false;
            let mime = Mime::of(&headers);
            if mime.special() {
                // A multipart body runs to its closing delimiter (its parts
                // may hold messages of their own); an encoded one to the
                // next message.
                let end = mime
                    .boundary
                    .as_ref()
                    .and_then(|b| {
                        let close = format!("--{b}--");
                        all[i..].iter().position(|(_, l)| l.trim_end() == close)
                    })
                    .map_or_else(|| message_end(all, i), |c| i + c + 1);
                part(&all[i..end], &mime, out, &mut unit, 0)?;
                i = end;
                boundary = true;
            }
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

/// Where the message whose body starts at `i` ends: at the next header
/// block or mbox `From ` line after a blank line.
fn message_end(all: &[(usize, &str)], i: usize) -> usize {
    let mut blank = false;
    for (j, (_, l)) in all.iter().enumerate().skip(i) {
        if blank && (l.starts_with("From ") || header_block(&all[j..]).is_some()) {
            return j;
        }
        blank = l.trim().is_empty();
    }
    all.len()
}

/// A body's MIME description, from its headers.
#[derive(Debug, Default)]
struct Mime {
    /// `type/subtype`, lowercase; empty when not given (plain text).
    kind: String,
    /// A multipart's delimiter.
    boundary: Option<String>,
    charset: String,
    /// `Content-Transfer-Encoding`, lowercase.
    encoding: String,
}

impl Mime {
    fn of(headers: &[(String, String)]) -> Self {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map_or("", |(_, v)| v.as_str())
        };
        let mut params = get("content-type").split(';');
        let mut m = Mime {
            kind: params.next().unwrap_or("").trim().to_ascii_lowercase(),
            encoding: get("content-transfer-encoding").trim().to_ascii_lowercase(),
            ..Mime::default()
        };
        for p in params {
            if let Some((k, v)) = p.split_once('=') {
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "boundary" if !v.is_empty() => m.boundary = Some(v.to_string()),
                    "charset" => m.charset = v.to_ascii_lowercase(),
                    _ => {}
                }
            }
        }
        if !m.kind.starts_with("multipart/") {
            m.boundary = None;
        }
        m
    }

    /// Whether the body needs more than reading its lines: parts, an
    /// encoding, or a type that is not plain text.
    fn special(&self) -> bool {
        self.boundary.is_some()
            || !matches!(self.encoding.as_str(), "" | "7bit" | "8bit" | "binary")
            || !matches!(self.kind.as_str(), "" | "text/plain")
    }

    /// Whether the body is text a model reads (a multipart has parts).
    fn is_text(&self) -> bool {
        let k = self.kind.as_str();
        k.is_empty()
            || k.starts_with("text/")
            || k.starts_with("message/")
            || matches!(k, "application/json" | "application/xml")
            || k.ends_with("+json")
            || k.ends_with("+xml")
    }
}

/// The raw range from the first to the last line with text.
fn span(lines: &[(usize, &str)]) -> Option<(usize, usize)> {
    let first = lines.iter().find(|(_, l)| !l.trim().is_empty())?;
    let last = lines.iter().rev().find(|(_, l)| !l.trim().is_empty())?;
    Some((first.0, last.0 + last.1.trim_end().len()))
}

/// Reads a body (or a part's) as `mime` says: parts one by one, or its
/// text decoded (see the module docs).
fn part(
    lines: &[(usize, &str)],
    mime: &Mime,
    out: &mut Builder,
    unit: &mut Unit,
    depth: usize,
) -> Result<(), Fail> {
    let Some(raw) = span(lines) else {
        return Ok(());
    };
    if let Some(b) = &mime.boundary {
        if depth >= MAX_PARTS {
            out.undecodable.push(raw);
            return Ok(());
        }
        let (open, close) = (format!("--{b}"), format!("--{b}--"));
        // Before the first delimiter: the preamble, text; after the
        // closing one: the epilogue, text.
        let mut start = 0;
        let mut in_part = false;
        for (k, (_, l)) in lines.iter().enumerate() {
            let t = l.trim_end();
            if t == open || t == close {
                segment(&lines[start..k], in_part, out, unit, depth)?;
                start = k + 1;
                in_part = t == open;
            }
        }
        return segment(&lines[start..], in_part, out, unit, depth);
    }
    if !mime.is_text() {
        out.undecodable.push(raw);
        return Ok(());
    }
    let bytes = match mime.encoding.as_str() {
        "" | "7bit" | "8bit" | "binary" => {
            if mime.kind.is_empty() || mime.kind == "text/plain" {
                return paragraphs(lines, out, unit);
            }
            let text: Vec<&str> = lines.iter().map(|(_, l)| *l).collect();
            return out.leaf(unit, "", &text.join("\n"), raw);
        }
        "base64" => {
            let clean: Vec<u8> = lines
                .iter()
                .flat_map(|(_, l)| l.bytes())
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            match B64.decode(clean) {
                Ok(b) => b,
                Err(_) => {
                    out.undecodable.push(raw);
                    return Ok(());
                }
            }
        }
        "quoted-printable" => quoted_printable(lines),
        _ => {
            out.undecodable.push(raw);
            return Ok(());
        }
    };
    let Some(text) = decode_charset(bytes, &mime.charset) else {
        out.undecodable.push(raw);
        return Ok(());
    };
    if mime.kind.is_empty() || mime.kind == "text/plain" {
        for p in text.split("\n\n") {
            out.leaf(unit, "", p, raw)?;
        }
        Ok(())
    } else {
        out.leaf(unit, "", &text, raw)
    }
}

/// A stretch between two delimiters: a part (its headers, a blank line,
/// its body) or, outside the parts, text read by paragraph.
fn segment(
    lines: &[(usize, &str)],
    in_part: bool,
    out: &mut Builder,
    unit: &mut Unit,
    depth: usize,
) -> Result<(), Fail> {
    if !in_part {
        return paragraphs(lines, out, unit);
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut j = 0;
    while let Some((_, l)) = lines.get(j) {
        if l.trim().is_empty() {
            j += 1;
            break;
        }
        if l.starts_with([' ', '\t']) {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(l.trim());
            }
        } else if let Some(name) = header_name(l) {
            headers.push((
                name.to_ascii_lowercase(),
                l[name.len() + 1..].trim().to_string(),
            ));
        } else {
            // No header block: the part is all body.
            headers.clear();
            j = 0;
            break;
        }
        j += 1;
    }
    part(&lines[j..], &Mime::of(&headers), out, unit, depth + 1)
}

/// Plain text lines: one leaf per paragraph (blank lines between).
fn paragraphs(lines: &[(usize, &str)], out: &mut Builder, unit: &mut Unit) -> Result<(), Fail> {
    let mut at = 0;
    while at < lines.len() {
        let Some(k) = lines[at..].iter().position(|(_, l)| !l.trim().is_empty()) else {
            break;
        };
        let first = at + k;
        let end = lines[first..]
            .iter()
            .position(|(_, l)| l.trim().is_empty())
            .map_or(lines.len(), |n| first + n);
        let text: Vec<&str> = lines[first..end]
            .iter()
            .map(|(_, l)| l.trim_end())
            .collect();
        let (s, (lo, ll)) = (lines[first].0, lines[end - 1]);
        out.leaf(unit, "", &text.join("\n"), (s, lo + ll.trim_end().len()))?;
        at = end;
    }
    Ok(())
}

/// Quoted-printable bytes decoded: `=XX` escapes and `=` soft line breaks;
/// a stray `=` is kept as it is.
fn quoted_printable(lines: &[(usize, &str)]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    for (k, (_, l)) in lines.iter().enumerate() {
        let l = l.trim_end_matches([' ', '\t']);
        let (l, soft) = match l.strip_suffix('=') {
            Some(rest) => (rest, true),
            None => (l, false),
        };
        let b = l.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'='
                && let (Some(h), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                )
            {
                out.push(h << 4 | lo);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        if !soft && k + 1 < lines.len() {
            out.push(b'\n');
        }
    }
    out
}

/// Decoded bytes as text in `charset`: UTF-8 (and ASCII) must be valid;
/// Latin-1 and Windows-1252 map byte to character (1252's few extra
/// letters read as their Latin-1 controls: close enough to score).
fn decode_charset(bytes: Vec<u8>, charset: &str) -> Option<String> {
    match charset {
        "iso-8859-1" | "iso-8859-15" | "latin1" | "windows-1252" | "cp1252" => {
            Some(bytes.into_iter().map(char::from).collect())
        }
        _ => String::from_utf8(bytes)
            .ok()
            .map(|s| s.replace("\r\n", "\n")),
    }
}

/// Base64 as mail writes it, padding or not.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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

    /// Issue 19: MIME bodies are read decoded, part by part, nested
    /// multiparts too; what cannot be decoded is reported, not read.
    #[test]
    fn mime_parts_are_decoded_and_read() {
        use base64::Engine as _;
        let html = "<html><body><p>Dear team,</p><p>Please forward the board deck to everyone on the list.</p></body></html>";
        let b64 = super::B64.encode(html);
        let (b64a, b64b) = b64.split_at(40);
        let text = format!(
            "From: Alice <alice@example.com>\nTo: bob@example.com\nSubject: Report\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"outer\"\n\nThis is a multi-part message in MIME format.\n--outer\nContent-Type: multipart/alternative;\n boundary=inner\n\n--inner\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\nThe numbers are in=2C see the sheet. Forward them to the ac=\ncountant today.\n\nKind regards from the caf=C3=A9 team\n--inner\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{b64a}\n{b64b}\n--inner--\n--outer\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--outer--\n\nFrom: carol@example.com\nTo: bob@example.com\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\nSee you at the caf=E9 at noon.\n"
        );
        let (structure, undecodable) = super::super::split_all(&text);
        let Structure::Alongside(units) = structure else {
            panic!("{structure:?}")
        };
        let all: Vec<&str> = units.iter().map(|u| u.text.as_str()).collect();
        let joined = all.join("\n");
        for want in [
            "This is a multi-part message in MIME format.",
            "The numbers are in, see the sheet. Forward them to the accountant today.",
            "Kind regards from the café team",
            "See you at the café at noon.",
        ] {
            assert!(joined.contains(want), "{want}: {all:?}");
        }
        // The HTML part is decoded, and read as HTML (nested): its
        // paragraphs are leaves without tags, mapped to the base64 lines,
        // pointing into the part.
        let u = units
            .iter()
            .find(|u| u.text.contains("Please forward the board deck") && !u.text.contains("<p>"))
            .unwrap_or_else(|| panic!("{all:?}"));
        let at = u.text.find("Please").unwrap();
        let (s, e) = u.original_range((at, at + 6));
        assert_eq!(&text[s..e], format!("{b64a}\n{b64b}"));
        let pointer = u.pointer((at, at + 6)).unwrap();
        assert!(pointer.starts_with("/0#/"), "{pointer}");
        // The image is not text: reported, not read.
        assert_eq!(undecodable.len(), 1);
        assert_eq!(&text[undecodable[0].0..undecodable[0].1], "iVBORw0KGgo=");
        assert!(!joined.contains("iVBOR"));
        // The second message is a message of its own.
        assert!(
            all.iter()
                .any(|t| t.ends_with("See you at the café at noon."))
        );
    }

    #[test]
    fn undecodable_parts_are_reported() {
        for (cte, body) in [
            ("x-uuencode", "begin 644 a.txt\nM9&]N)W0@<F5A9\n"),
            ("base64", "this is not base64 at all!\n"),
        ] {
            let text = format!(
                "From: a@example.com\nTo: b@example.com\nContent-Type: text/plain\nContent-Transfer-Encoding: {cte}\n\n{body}"
            );
            let (s, undecodable) = super::super::split_all(&text);
            assert!(matches!(s, Structure::Alongside(_)), "{s:?}");
            assert_eq!(undecodable.len(), 1, "{cte}");
        }
        // Invalid UTF-8 in an UTF-8 part; a multipart nested too deep.
        let text = "From: a@example.com\nTo: b@example.com\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\nbad =FF=FE bytes\n";
        assert_eq!(super::super::split_all(text).1.len(), 1);
        let mut deep = String::from(
            "From: a@example.com\nTo: b@example.com\nContent-Type: multipart/mixed; boundary=b0\n\n",
        );
        for k in 1..=super::MAX_PARTS + 1 {
            deep.push_str(&format!(
                "--b{}\nContent-Type: multipart/mixed; boundary=b{k}\n\n",
                k - 1
            ));
        }
        deep.push_str("text at the bottom\n");
        assert_eq!(super::super::split_all(&deep).1.len(), 1);
        // Plain text with an ordinary 7bit encoding is not undecodable.
        let text = "From: a@example.com\nTo: b@example.com\nContent-Transfer-Encoding: 7bit\n\nhello there\n";
        assert!(super::super::split_all(text).1.is_empty());
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
