//! YAML in block style, the subset tools print: lists of mappings, maps,
//! `key: value` lines, literal (`|`) and folded (`>`) block scalars, quoted
//! and multi-line plain scalars.
//!
//! Records are the items of the outermost list (its `- ` at the smallest
//! indentation seen); a document without a list is split into records at
//! blank lines before a top-level key (`key: value` blocks, as calendar
//! entries or contact cards are often printed). Each scalar is one leaf,
//! read with its key; a block scalar's lines are one leaf, dedented. A line
//! that is none of these and does not continue a scalar makes the text not
//! YAML (prose with a colon in it), and it is read as before.

use super::{Builder, Fail, Unit, lines};

/// A scalar being read: its key, its text so far, its raw range, the
/// indentation its continuation lines must pass, and for a block scalar
/// whether it folds and its content's indentation.
struct Pending {
    owner: usize,
    key: String,
    value: String,
    raw: (usize, usize),
    block: Option<Block>,
}

struct Block {
    fold: bool,
    indent: Option<usize>,
}

/// The longest key a line may have and still be read as `key: value`.
const MAX_KEY: usize = 64;

/// Reads `text` as YAML records, or `None` when it is not YAML.
pub(super) fn split(text: &str) -> Option<Result<Builder, Fail>> {
    let mut out = Builder::new(text);
    match read(text, &mut out) {
        Ok(true) => Some(Ok(out)),
        Ok(false) => None,
        Err(e) => Some(Err(e)),
    }
}

fn read(text: &str, out: &mut Builder) -> Result<bool, Fail> {
    let mut unit = Unit::default();
    let mut pending: Option<Pending> = None;
    // Keys whose values are nested below them: (indentation, key).
    let mut context: Vec<(usize, String)> = Vec::new();
    let mut list_indent: Option<usize> = None;
    let (mut keys, mut structural, mut after_blank) = (0usize, 0usize, false);
    for (off, line) in lines(text) {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = line[indent..].trim_end();
        let end = off + indent + content.len();
        if let Some(p) = pending.as_mut()
            && let Some(block) = p.block.as_mut()
        {
            if content.is_empty() {
                p.value.push('\n');
                after_blank = true;
                continue;
            }
            if indent > p.owner {
                after_blank = false;
                let at = *block.indent.get_or_insert(indent);
                if !p.value.is_empty() && !p.value.ends_with('\n') {
                    p.value.push(if block.fold { ' ' } else { '\n' });
                }
                p.value.push_str(line[at.min(indent)..].trim_end());
                if p.raw.0 == p.raw.1 {
                    p.raw.0 = off + indent;
                }
                p.raw.1 = end;
                continue;
            }
        }
        if content.is_empty() || content.starts_with('#') {
            after_blank = true;
            continue;
        }
        if content.starts_with('\t') {
            return Ok(false);
        }
        if content == "---" || content == "..." || content.starts_with("--- ") {
            flush(&mut pending, &mut unit, out)?;
            out.record(std::mem::take(&mut unit))?;
            context.clear();
            continue;
        }
        // List markers: `- `, possibly several (`- - x`).
        let (mut inner, mut rest, mut item) = (indent, content, false);
        while let Some(r) = rest
            .strip_prefix("- ")
            .or(if rest == "-" { Some("") } else { None })
        {
            let skipped = rest.len() - r.len();
            let r2 = r.trim_start_matches(' ');
            inner += skipped + (r.len() - r2.len());
            rest = r2;
            item = true;
        }
        let key = if rest.is_empty() { None } else { key_of(rest) };
        if key.is_none() && !item {
            // Prose: only as the continuation of a plain scalar above it.
            match pending.as_mut() {
                Some(p) if indent > p.owner => {
                    if !p.value.is_empty() {
                        p.value.push(' ');
                    }
                    p.value.push_str(content);
                    if p.raw.0 == p.raw.1 {
                        p.raw.0 = off + indent;
                    }
                    p.raw.1 = end;
                    after_blank = false;
                    continue;
                }
                _ => return Ok(false),
            }
        }
        flush(&mut pending, &mut unit, out)?;
        structural += 1;
        // Record boundaries.
        let boundary = if item {
            let outer = list_indent.is_none_or(|l| indent <= l);
            if outer {
                list_indent = Some(indent);
            }
            outer
        } else {
            match list_indent {
                Some(l) => indent < l,
                None => indent == 0 && after_blank,
            }
        };
        if boundary {
            out.record(std::mem::take(&mut unit))?;
        }
        after_blank = false;
        let scope = if key.is_some() { inner } else { indent };
        while context.last().is_some_and(|(i, _)| {
            if item && key.is_none() {
                *i > indent
            } else {
                *i >= scope
            }
        }) {
            context.pop();
        }
        let is_key = key.is_some();
        let (k, value, value_at) = match key {
            Some((k, v, at)) => {
                keys += 1;
                (k, v, content.len() - rest.len() + at)
            }
            None => {
                let k = context.last().map(|(_, k)| k.clone()).unwrap_or_default();
                (k, rest, content.len() - rest.len())
            }
        };
        let value_start = off + indent + value_at;
        let mut p = Pending {
            owner: scope,
            key: k.clone(),
            value: String::new(),
            raw: (value_start, value_start),
            block: None,
        };
        if is_block_header(value) {
            p.block = Some(Block {
                fold: value.starts_with('>'),
                indent: None,
            });
        } else if !value.is_empty() {
            p.value.push_str(value);
            p.raw = (value_start, end);
        } else if is_key {
            // Nested content follows: this key is its context.
            context.push((scope, k));
        }
        pending = Some(p);
    }
    flush(&mut pending, &mut unit, out)?;
    out.record(unit)?;
    Ok(keys >= 1 && structural >= 2)
}

/// The key, the value and the value's offset in `rest`, when `rest` is a
/// `key: value` (or `key:`) line.
fn key_of(rest: &str) -> Option<(String, &str, usize)> {
    let (key, after) = if let Some(q @ ('"' | '\'')) = rest.chars().next() {
        let close = rest[1..].find(q)? + 1;
        (rest[1..close].to_string(), close + 1)
    } else {
        let first = rest.as_bytes()[0];
        if b"[{>|*&!%@`,?:".contains(&first) {
            return None;
        }
        let colon = rest
            .match_indices(':')
            .map(|(i, _)| i)
            .find(|&i| rest[i + 1..].is_empty() || rest[i + 1..].starts_with(' '))?;
        (rest[..colon].trim_end().to_string(), colon)
    };
    if key.is_empty() || key.len() > MAX_KEY || !rest[after..].starts_with(':') {
        return None;
    }
    let v = &rest[after + 1..];
    let value = v.trim();
    let at = after + 1 + (v.len() - v.trim_start().len());
    Some((key, value, at))
}

/// `|`, `>`, with chomping and indentation indicators, and a comment.
fn is_block_header(v: &str) -> bool {
    let mut chars = v.chars();
    if !matches!(chars.next(), Some('|' | '>')) {
        return false;
    }
    let rest: String = chars.collect();
    let flags = rest.split_once('#').map_or(rest.as_str(), |(f, _)| f);
    flags
        .trim()
        .chars()
        .all(|c| matches!(c, '+' | '-' | '1'..='9'))
}

/// Adds the scalar being read to `unit`, unquoted.
fn flush(pending: &mut Option<Pending>, unit: &mut Unit, out: &mut Builder) -> Result<(), Fail> {
    let Some(p) = pending.take() else {
        return Ok(());
    };
    let value = unquote(p.value.trim_end_matches('\n'));
    out.leaf(unit, &p.key, &value, p.raw)
}

/// A quoted scalar's text (double quotes: the common escapes undone;
/// single quotes: `''` is `'`); a plain scalar as it is.
fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let inner = &v[1..v.len() - 1];
        let mut s = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                s.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => s.push('\n'),
                Some('t') => s.push('\t'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        Some(c) => s.push(c),
                        None => s.push_str(&hex),
                    }
                }
                Some(other) => s.push(other),
                None => {}
            }
        }
        s
    } else if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v[1..v.len() - 1].replace("''", "'")
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{alongside, texts as units};
    use super::super::{Structure, split};

    #[test]
    fn a_list_of_mappings_is_one_record_per_item() {
        let text = "- id: 1\n  from: user1@example.com\n  subject: Lunch plans\n  body: |\n    Hi Ann,\n    see you at noon.\n- id: 2\n  subject: \"Re: the \\\"deal\\\"\"\n  body: >\n    folded\n    text here\n  tags:\n    - sales team\n    - q3 review\n";
        assert_eq!(
            units(text),
            [
                "subject: Lunch plans\nbody: Hi Ann,\nsee you at noon.",
                "subject: Re: the \"deal\"\nbody: folded text here\ntags: sales team\ntags: q3 review",
            ]
        );
        // Under a key, indented, with a document marker and comments.
        let text = "---\n# inbox\nemails:\n  - from: a@b.example\n    note: first one here\n  - from: c@d.example\n    note: 'it''s the second'\ncount: 2 items\n";
        assert_eq!(
            units(text),
            [
                "note: first one here",
                "note: it's the second",
                "count: 2 items"
            ]
        );
    }

    #[test]
    fn maps_split_at_blank_lines_and_block_lines_are_not_keys() {
        // (A one-word value such as `Event: Review` is an identifier, left out.)
        let text = "Event: Team sync\nWhen: Monday 10:00\nNotes: bring the slides\n\nEvent: Review\nNotes: |\n  Ignore: this is a line of the block\n  and so is this one\n";
        assert_eq!(
            units(text),
            [
                "Event: Team sync\nWhen: Monday 10:00\nNotes: bring the slides",
                "Notes: Ignore: this is a line of the block\nand so is this one",
            ]
        );
        // A plain scalar continued on deeper lines.
        assert_eq!(
            units("title: a long\n  title that goes on\nother: x y\n"),
            ["title: a long title that goes on\nother: x y"]
        );
    }

    #[test]
    fn prose_is_not_yaml() {
        for text in [
            "Note: this is a sentence.\nAnd this line is prose, not a key.",
            "one line: only",
            "- a bullet\n- another bullet",
            "See https://example.com/a:b for details\nthanks",
        ] {
            assert_eq!(split(text), Structure::Flat, "{text}");
        }
    }

    #[test]
    fn ranges_are_the_values() {
        let text = "- body: |\n    first line\n    second line\n- body: plain value here\n";
        let u = alongside(text);
        let (s, e) = u[0].original_range((0, u[0].text.len()));
        assert_eq!(&text[s..e], "first line\n    second line");
        let (s, e) = u[1].original_range((0, 4));
        assert_eq!(&text[s..e], "plain value here");
    }
}
