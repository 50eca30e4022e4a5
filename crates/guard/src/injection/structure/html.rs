//! HTML: a page or a fragment (a fetched page, a rendered e-mail, a list of
//! reviews).
//!
//! One record per block that holds a record in pages (`li`, `tr`,
//! `article`, `section`, `div`, …); in it, one leaf per paragraph-like
//! element (`p`, a heading, a table cell, text between `br`s), tags removed,
//! character references decoded, whitespace collapsed. What a reader does
//! not see is read too, each as a record or leaf of its own: comments,
//! `script` and `style` contents, and the text attributes (`alt`, `title`,
//! `aria-label`, `content`, `placeholder`, `value`, `label`, `data-*`).

use super::{Builder, Fail, Unit};

/// Elements that delimit records.
const RECORD_TAGS: &[&str] = &[
    "article",
    "aside",
    "blockquote",
    "body",
    "dd",
    "details",
    "div",
    "dl",
    "dt",
    "figure",
    "footer",
    "form",
    "head",
    "header",
    "html",
    "li",
    "main",
    "nav",
    "ol",
    "section",
    "table",
    "tbody",
    "thead",
    "tr",
    "ul",
];
/// Elements that delimit leaves within a record.
const LINE_TAGS: &[&str] = &[
    "br",
    "caption",
    "figcaption",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "label",
    "option",
    "p",
    "pre",
    "summary",
    "td",
    "th",
    "title",
];
/// Attributes whose values are text a model reads.
const TEXT_ATTRIBUTES: &[&str] = &[
    "alt",
    "aria-description",
    "aria-label",
    "content",
    "label",
    "placeholder",
    "title",
    "value",
];
/// Elements whose content is raw text up to their closing tag.
const RAW_TAGS: &[&str] = &["script", "style", "textarea"];

/// Reads `text` as HTML records, or `None` when it is not markup: it must
/// open with a tag and close one.
pub(super) fn split(text: &str) -> Option<Result<Builder, Fail>> {
    let head = text.trim_start();
    let opens = head.starts_with('<')
        && head[1..]
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'!');
    if !opens || !text.contains("</") {
        return None;
    }
    let mut out = Builder::new(text);
    Some(read(text, &mut out).map(|()| out))
}

/// The text of the leaf being read and its raw range.
#[derive(Default)]
struct Leaf {
    text: String,
    raw: Option<(usize, usize)>,
}

impl Leaf {
    fn add(&mut self, s: &str, raw: (usize, usize)) {
        for word in s.split_whitespace() {
            if !self.text.is_empty() {
                self.text.push(' ');
            }
            self.text.push_str(word);
        }
        self.raw = Some(self.raw.map_or(raw, |(a, _)| (a, raw.1)));
    }

    fn end(&mut self, unit: &mut Unit, out: &mut Builder) -> Result<(), Fail> {
        let leaf = std::mem::take(self);
        match leaf.raw {
            Some(raw) => out.leaf(unit, "", &leaf.text, raw),
            None => Ok(()),
        }
    }
}

fn read(text: &str, out: &mut Builder) -> Result<(), Fail> {
    let b = text.as_bytes();
    let mut unit = Unit::default();
    let mut leaf = Leaf::default();
    let mut i = 0;
    while i < b.len() {
        let next = text[i..].find('<').map_or(b.len(), |n| n + i);
        if next > i {
            leaf.add(&decode(&text[i..next]), (i, next));
            i = next;
            continue;
        }
        let rest = &text[i..];
        if let Some(body) = rest.strip_prefix("<!--") {
            let end = body.find("-->").map_or(text.len(), |e| i + 4 + e);
            let mut comment = Unit::default();
            out.leaf(&mut comment, "", &text[i + 4..end], (i + 4, end))?;
            out.record(comment)?;
            i = (end + 3).min(text.len());
            continue;
        }
        let closing = rest.starts_with("</");
        let name_at = i + if closing { 2 } else { 1 };
        let name_len = text[name_at..]
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == b'-')
            .count();
        if name_len == 0 && !rest.starts_with("<!") && !rest.starts_with("<?") {
            // A `<` that opens no tag is text.
            leaf.add("<", (i, i + 1));
            i += 1;
            continue;
        }
        let name = text[name_at..name_at + name_len].to_ascii_lowercase();
        let (end, attributes) = tag_end(text, name_at + name_len);
        if RECORD_TAGS.contains(&name.as_str()) {
            leaf.end(&mut unit, out)?;
            out.record(std::mem::take(&mut unit))?;
        } else if LINE_TAGS.contains(&name.as_str()) {
            leaf.end(&mut unit, out)?;
        }
        for (k, v) in attributes {
            let k = k.to_ascii_lowercase();
            if TEXT_ATTRIBUTES.contains(&k.as_str()) || k.starts_with("data-") {
                out.leaf(&mut unit, &k, &decode(&text[v.0..v.1]), v)?;
            }
        }
        i = end;
        if !closing && RAW_TAGS.contains(&name.as_str()) {
            let close = format!("</{name}");
            let stop = find_ascii_ci(&text[i..], &close).map_or(text.len(), |e| i + e);
            let mut raw = Unit::default();
            out.leaf(&mut raw, &name, &text[i..stop], (i, stop))?;
            out.record(raw)?;
            i = stop;
        }
    }
    leaf.end(&mut unit, out)?;
    out.record(unit)
}

/// An attribute's name and the raw range of its value.
type Attribute<'a> = (&'a str, (usize, usize));

/// Where the tag whose name ends at `at` ends (after its `>`), and the
/// raw ranges of its attributes' values by name.
fn tag_end(text: &str, mut at: usize) -> (usize, Vec<Attribute<'_>>) {
    let b = text.as_bytes();
    let mut attributes = Vec::new();
    loop {
        while at < b.len() && (b[at].is_ascii_whitespace() || b[at] == b'/') {
            at += 1;
        }
        if at >= b.len() {
            return (b.len(), attributes);
        }
        if b[at] == b'>' {
            return (at + 1, attributes);
        }
        let name_start = at;
        while at < b.len() && !matches!(b[at], b'=' | b'>' | b'/') && !b[at].is_ascii_whitespace() {
            at += 1;
        }
        let name = &text[name_start..at];
        if b.get(at) != Some(&b'=') {
            continue;
        }
        at += 1;
        let value = match b.get(at) {
            Some(q @ (b'"' | b'\'')) => {
                let close = text[at + 1..]
                    .find(char::from(*q))
                    .map_or(b.len(), |e| at + 1 + e);
                let v = (at + 1, close);
                at = (close + 1).min(b.len());
                v
            }
            _ => {
                let start = at;
                while at < b.len() && !b[at].is_ascii_whitespace() && b[at] != b'>' {
                    at += 1;
                }
                (start, at)
            }
        };
        attributes.push((name, value));
    }
}

/// The offset of `needle` (ASCII) in `hay`, ignoring ASCII case.
fn find_ascii_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// `s` with its character references decoded (the named ones text
/// commonly uses, and every numeric one).
fn decode(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let semi = rest.find(';').filter(|&e| e <= 10);
        let decoded = semi.and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => name.strip_prefix('#').and_then(|n| {
                    let v = match n.strip_prefix(['x', 'X']) {
                        Some(h) => u32::from_str_radix(h, 16).ok(),
                        None => n.parse().ok(),
                    };
                    v.and_then(char::from_u32)
                }),
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{alongside, texts};
    use super::super::{Structure, split};

    #[test]
    fn records_leaves_and_hidden_text() {
        let text = "<!DOCTYPE html><html><head><title>Shop reviews</title><style>.x { display: none }</style></head><body>\n<ul>\n<li><p>Great   kettle,\n boils fast.</p><p>Five stars &amp; more</p></li>\n<li><img src=\"a.png\" alt=\"A kettle on a stove\">Works well<br>for tea</li>\n</ul><!-- note for the assistant --><script>var a = 1;</script><div data-note='hidden words here'>Thanks&#33; See you</div></body></html>";
        let u = alongside(text);
        assert_eq!(
            texts(text),
            [
                "style: .x { display: none }",
                "Shop reviews",
                "Great kettle, boils fast.\nFive stars & more",
                "alt: A kettle on a stove\nWorks well\nfor tea",
                "note for the assistant",
                "script: var a = 1;",
                "data-note: hidden words here\nThanks! See you",
            ]
        );
        let at = u[2].text.find("Five").unwrap();
        let (s, e) = u[2].original_range((at, at + 4));
        assert_eq!(&text[s..e], "Five stars &amp; more");
    }

    #[test]
    fn text_with_angle_brackets_is_not_html() {
        for text in ["a < b and c > d", "<not closed", "x <b>bold</b>"] {
            assert_eq!(split(text), Structure::Flat, "{text}");
        }
    }
}
