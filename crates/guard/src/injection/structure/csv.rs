//! CSV and TSV with a header row (RFC 4180 quoting: fields in double
//! quotes may hold the delimiter, line breaks and `""`).
//!
//! One record per data row, one leaf per field read with its column's
//! header as the key; a header that is text is a leaf of its own. The text
//! is CSV only when every row has the header's number of fields (at least
//! two), the header's fields look like column names and every quote
//! closes, so prose with commas in it is read as before.

use super::{Builder, Fail, Unit};

/// Longest header field, and most words in one, for a first line to be a
/// header.
const MAX_HEADER: usize = 64;
const MAX_HEADER_WORDS: usize = 4;

/// One field: its text and raw range (quotes included).
type Field = (String, (usize, usize));

/// Reads `text` as CSV records, or `None` when it is not CSV.
pub(super) fn split(text: &str) -> Option<Result<Builder, Fail>> {
    let first = text.lines().next()?;
    let delim = [b',', b'\t', b';']
        .into_iter()
        .max_by_key(|d| (first.bytes().filter(|b| b == d).count(), *d == b','))
        .filter(|d| first.as_bytes().contains(d))?;
    let rows = parse(text, delim)?;
    let (header, data) = rows.split_first()?;
    let width = header.len();
    if width < 2
        || data.is_empty()
        || data.iter().any(|r| r.len() != width)
        || header.iter().any(|(h, _)| {
            let h = h.trim();
            h.is_empty() || h.len() > MAX_HEADER || h.split_whitespace().count() > MAX_HEADER_WORDS
        })
    {
        return None;
    }
    let mut out = Builder::new(text);
    Some(build(&mut out, header, data).map(|()| out))
}

fn build(out: &mut Builder, header: &[Field], data: &[Vec<Field>]) -> Result<(), Fail> {
    let mut root = std::mem::take(&mut out.root);
    for (h, raw) in header {
        out.leaf(&mut root, "", h, *raw)?;
    }
    out.root = root;
    for row in data {
        out.open()?;
        let mut unit = Unit::default();
        for ((h, _), (v, raw)) in header.iter().zip(row) {
            out.leaf(&mut unit, h, v, *raw)?;
        }
        out.record(unit)?;
    }
    Ok(())
}

/// The rows of `text` split on `delim`, blank lines left out; `None` when a
/// quote does not close or text follows a closing quote.
fn parse(text: &str, delim: u8) -> Option<Vec<Vec<Field>>> {
    let b = text.as_bytes();
    let (mut rows, mut row) = (Vec::new(), Vec::new());
    let mut i = 0;
    loop {
        // One field at `i`.
        let start = i;
        let value = if b.get(i) == Some(&b'"') {
            let mut s = String::new();
            i += 1;
            loop {
                let next = text[i..].find('"')? + i;
                s.push_str(&text[i..next]);
                if b.get(next + 1) == Some(&b'"') {
                    s.push('"');
                    i = next + 2;
                } else {
                    i = next + 1;
                    break;
                }
            }
            if !matches!(b.get(i), None | Some(b'\n' | b'\r')) && b.get(i) != Some(&delim) {
                return None;
            }
            s
        } else {
            while i < b.len() && b[i] != delim && b[i] != b'\n' && b[i] != b'\r' {
                i += 1;
            }
            text[start..i].to_string()
        };
        row.push((value, (start, i)));
        match b.get(i) {
            Some(&d) if d == delim => i += 1,
            None => {
                rows.push(row);
                break;
            }
            Some(_) => {
                // A line break (`\r\n` or `\n`), then skip blank lines.
                rows.push(std::mem::take(&mut row));
                while matches!(b.get(i), Some(b'\n' | b'\r')) {
                    i += 1;
                }
                if i >= b.len() {
                    break;
                }
            }
        }
    }
    rows.retain(|r: &Vec<Field>| !(r.len() == 1 && r[0].0.trim().is_empty()));
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{alongside, texts as units};
    use super::super::{Structure, split};

    #[test]
    fn one_record_per_row_with_the_header_as_keys() {
        let text = "id,from,Short note,body\r\n1,a@b.example,hi there,\"Hello, Ann\nsee \"\"you\"\"\"\r\n2,c@d.example,,plain text\n";
        assert_eq!(
            units(text),
            [
                "Short note",
                "Short note: hi there\nbody: Hello, Ann\nsee \"you\"",
                "body: plain text"
            ]
        );
        let tsv = "name\tcomment\nbob\tgreat product overall\n";
        assert_eq!(units(tsv), ["comment: great product overall"]);
        let u = alongside(text);
        let (s, e) = u[1].original_range((20, 25));
        assert_eq!(&text[s..e], "\"Hello, Ann\nsee \"\"you\"\"\"");
    }

    #[test]
    fn prose_with_commas_is_not_csv() {
        for text in [
            "Hello, world. This is a sentence, with commas, in it\nand a second line, too",
            "a,b\n1,2,3",
            "a,b\n\"unclosed,2",
            "only,a,header",
        ] {
            assert_eq!(split(text), Structure::Flat, "{text}");
        }
    }
}
