//! Structure-aware scanning: a text that is JSON (one document, or one per
//! line as in NDJSON), YAML ([`yaml`]), CSV ([`csv`]), mail ([`mail`]),
//! HTML ([`html`]) or iCalendar / vCard ([`calendar`]) is read as records,
//! so an instruction hidden in one field of one record is not diluted by
//! the benign records around it. Each format's module says what a record
//! and a leaf are there and when a text is that format; this one holds JSON,
//! the [`Unit`]s all formats produce and the limits they share.
//!
//! For JSON, [`split`] returns one [`Unit`] per JSON object (a
//! record) plus one for the strings that sit directly in the top-level
//! array (or are the document). A unit's text holds one line per string
//! leaf of its object, `key: value`, the key (cut to [`KEY_CONTEXT`] bytes)
//! being the light context the leaf is read with; a string inside an array
//! is read with the array's key. Keys that are text rather than identifiers
//! (whitespace, or longer than [`KEY_CONTEXT`]) get a line of their own, so
//! an instruction written as a key is read too; identifiers (ids, dates,
//! addresses: no whitespace, at most [`KEY_CONTEXT`] bytes) are left out,
//! as the gateway leaves them out of injection scoring. The detector scores each
//! unit on its own (its byte windows and, through the line segments, each
//! leaf alone) and keeps the highest, so a window never mixes two records.
//! [`Unit::original_range`] maps a range of a unit back to the raw bytes of
//! the leaves it covers in the original text.
//!
//! Work is bounded. Parsing is one pass; the units' total size is at most
//! [`MAX_GROWTH`] times the text plus [`KEY_CONTEXT`] per leaf, and a
//! document deeper than [`MAX_DEPTH`], with more than [`MAX_RECORDS`]
//! records, or whose units would pass the byte budget is
//! [`Structure::OverLimit`]: the detector then scans it as one text, as it
//! did before, and reports a `structure_over_limit` signal so that policy
//! can refuse what it could not read record by record (it is flagged, not
//! failed open and not refused by the guard itself: the flat scan still
//! runs). JSON is [`Structure::Records`]; the other formats are
//! [`Structure::Alongside`], read by record and whole (see there); text in
//! none of them is [`Structure::Flat`].

mod calendar;
mod csv;
mod html;
mod mail;
mod yaml;

/// Nesting beyond which a document is not read as records.
pub const MAX_DEPTH: usize = 64;
/// Records (JSON objects) beyond which a document is not read as records.
pub const MAX_RECORDS: usize = 4096;
/// The most bytes of a key kept as a leaf's context.
pub const KEY_CONTEXT: usize = 32;
/// The units' bytes may reach this many times the text's (plus a constant):
/// a key repeated before many short array items is the only growth.
pub const MAX_GROWTH: usize = 4;
/// How many levels of documents inside leaves are read (a JSON field whose
/// string is YAML whose field is HTML …); below that a leaf is read as
/// text only.
pub const MAX_NESTING: usize = 4;
/// Shortest leaf read as a document of its own.
const MIN_NESTED: usize = 16;

/// How a text is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Structure {
    /// Not JSON: scanned as one text.
    Flat,
    /// JSON within the limits: scanned unit by unit.
    Records(Vec<Unit>),
    /// YAML, CSV, e-mail, HTML or a calendar within the limits: scanned
    /// unit by unit and also whole, as before, the highest score kept. The
    /// whole reading already scored each line alone, so a record reading
    /// that splits what an attacker spread over two records loses nothing.
    Alongside(Vec<Unit>),
    /// JSON past a limit: scanned as one text, and flagged.
    OverLimit,
}

/// One record's texts, ready to score.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Unit {
    /// One line per leaf: `key: value`, or the value alone.
    pub text: String,
    lines: Vec<Line>,
}

/// One leaf's line in a [`Unit`].
#[derive(Debug, Clone, PartialEq)]
struct Line {
    /// Its range in the unit's text.
    range: (usize, usize),
    /// The raw range of its leaf (for JSON the string literal, quotes
    /// included) in the original text; for a leaf of a nested document,
    /// the raw range of the outer leaf it was read from.
    raw: (usize, usize),
    /// Where the value starts in the unit's text (after `key: `).
    value: usize,
    /// Where the leaf is (see [`Unit::pointer`]).
    pointer: String,
}

impl Unit {
    fn push(&mut self, key: &str, value: &str, raw: (usize, usize), pointer: String) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        let start = self.text.len();
        if !key.is_empty() {
            self.text.push_str(key);
            self.text.push_str(": ");
        }
        let at = self.text.len();
        self.text.push_str(value);
        self.lines.push(Line {
            range: (start, self.text.len()),
            raw,
            value: at,
            pointer,
        });
    }

    /// Where the leaf of the first line `text[start..end]` touches is: for
    /// JSON a JSON pointer (`/2/body`), for the other formats the record's
    /// number in reading order and the leaf's key (`/3/Subject`); a leaf
    /// read as a document of its own adds `#` and the pointer inside it
    /// (`/0/payload#/1/note`: the string at `/0/payload` is a document whose
    /// `/1/note` holds the text).
    pub fn pointer(&self, (start, end): (usize, usize)) -> Option<&str> {
        self.lines
            .iter()
            .find(|l| touches(l.range, (start, end)))
            .or(self.lines.first())
            .map(|l| l.pointer.as_str())
    }

    /// The original byte range of `text[start..end]`: from the first leaf
    /// it touches to the end of the last.
    pub fn original_range(&self, (start, end): (usize, usize)) -> (usize, usize) {
        let mut out: Option<(usize, usize)> = None;
        for l in &self.lines {
            if touches(l.range, (start, end)) {
                let (rs, re) = l.raw;
                out = Some(out.map_or((rs, re), |(a, b)| (a.min(rs), b.max(re))));
            }
        }
        out.or_else(|| self.lines.first().map(|l| l.raw))
            .unwrap_or((0, 0))
    }
}

/// Whether a line at `(s, e)` is touched by the range (an empty range: the
/// line it is in).
fn touches((s, e): (usize, usize), (start, end): (usize, usize)) -> bool {
    if end > start {
        s < end && e > start
    } else {
        s <= start && start <= e
    }
}

/// Reads `text` as records when it is JSON, YAML, CSV, e-mail, HTML or
/// iCalendar / vCard (see the module docs); anything else is
/// [`Structure::Flat`].
pub fn split(text: &str) -> Structure {
    split_all(text).0
}

/// [`split`], and the raw ranges of the parts that could not be decoded
/// (a MIME part in an unknown transfer encoding or charset, invalid
/// base64, or a type that is not text: see [`mail`]).
pub fn split_all(text: &str) -> (Structure, Vec<(usize, usize)>) {
    let mut nest = Nest {
        depth: 0,
        work: 0,
        budget: text.len().saturating_mul(MAX_NESTING).saturating_add(4096),
    };
    match read(text, &mut nest) {
        Ok(r) => r,
        Err(_) => (Structure::OverLimit, Vec::new()),
    }
}

/// The reading of documents inside leaves: how deep it is, and the bytes
/// handed to the readers so far against a budget for the whole text. Each
/// level reads text taken from the level above (decoded, so no longer),
/// so [`MAX_NESTING`] levels read at most that many times the text: the
/// budget is that bound, kept explicit.
struct Nest {
    depth: usize,
    work: usize,
    budget: usize,
}

/// Reads `text` and, within [`MAX_NESTING`], the leaves that are documents
/// of their own; `Err` when a nested document passes a limit (the whole
/// text is then over the limit).
fn read(text: &str, nest: &mut Nest) -> Result<(Structure, Vec<(usize, usize)>), Fail> {
    let readers: [Reader; 6] = [
        json,
        calendar::split,
        html::split,
        mail::split,
        yaml::split,
        csv::split,
    ];
    for (n, read) in readers.into_iter().enumerate() {
        match read(text) {
            None | Some(Err(Fail::Invalid)) => continue,
            Some(Err(Fail::Over)) => return Ok((Structure::OverLimit, Vec::new())),
            Some(Ok(b)) => {
                let mut undecodable = b.undecodable.clone();
                let mut units = b.finish();
                expand(&mut units, &mut undecodable, nest)?;
                let s = if n == 0 {
                    Structure::Records(units)
                } else {
                    Structure::Alongside(units)
                };
                return Ok((s, undecodable));
            }
        }
    }
    Ok((Structure::Flat, Vec::new()))
}

/// Whether a leaf may be a document of its own: JSON, markup, a calendar,
/// or several lines (YAML, CSV, mail). Cheap, so most leaves cost nothing.
fn may_nest(value: &str) -> bool {
    let t = value.trim_start();
    t.len() >= MIN_NESTED
        && (t.starts_with(['{', '[', '<']) || t.starts_with("BEGIN:") || t.contains('\n'))
}

/// Reads each leaf of `units` that is a document (JSON, YAML, CSV, mail,
/// HTML, a calendar) as records of its own, appended to `units`: the leaf
/// stays a line of its record too, read as text as before. Their lines map
/// back to the outer leaf's raw range, and their pointers extend its
/// pointer (`outer#inner`). Within [`MAX_NESTING`] levels and the work
/// budget; a nested document past its own limits makes the whole text
/// [`Structure::OverLimit`].
fn expand(
    units: &mut Vec<Unit>,
    undecodable: &mut Vec<(usize, usize)>,
    nest: &mut Nest,
) -> Result<(), Fail> {
    if nest.depth >= MAX_NESTING {
        return Ok(());
    }
    let mut found = Vec::new();
    for unit in units.iter() {
        for line in &unit.lines {
            let value = &unit.text[line.value..line.range.1];
            if !may_nest(value) {
                continue;
            }
            nest.work += value.len();
            if nest.work > nest.budget {
                return Err(Fail::Over);
            }
            nest.depth += 1;
            let inner = read(value, nest);
            nest.depth -= 1;
            let (structure, inner_undecodable) = inner?;
            if !inner_undecodable.is_empty() {
                undecodable.push(line.raw);
            }
            let inner_units = match structure {
                Structure::Records(u) | Structure::Alongside(u) => u,
                Structure::Flat => continue,
                Structure::OverLimit => return Err(Fail::Over),
            };
            for mut u in inner_units {
                for l in &mut u.lines {
                    l.raw = line.raw;
                    l.pointer = format!("{}#{}", line.pointer, l.pointer);
                }
                found.push(u);
            }
        }
    }
    units.extend(found);
    if units.len() > MAX_RECORDS {
        return Err(Fail::Over);
    }
    Ok(())
}

/// A format's reader: `None` when the text is not that format, else its
/// records or why they could not be read.
type Reader = fn(&str) -> Option<Result<Builder, Fail>>;

/// JSON: one document, or one per line (NDJSON).
fn json(text: &str) -> Option<Result<Builder, Fail>> {
    let first = text.trim_start().as_bytes().first();
    if !matches!(first, Some(b'{' | b'[')) {
        return None;
    }
    let mut p = Parser {
        text,
        b: text.as_bytes(),
        pos: 0,
        out: Builder::new(text),
        path: String::new(),
    };
    let mut values = 0;
    loop {
        p.ws();
        if p.pos >= p.b.len() {
            break;
        }
        let mut root = std::mem::take(&mut p.out.root);
        // NDJSON: the documents after the first are told apart by their
        // number (`/1/…`, `/2/…`); the first reads as a lone document.
        p.path = if values > 0 {
            format!("/{values}")
        } else {
            String::new()
        };
        if let Err(fail) = p.value("", 0, &mut root) {
            return Some(Err(fail));
        }
        p.out.root = root;
        values += 1;
    }
    if values == 0 {
        return None;
    }
    Some(Ok(p.out))
}

/// The units a reader gathers, within the limits shared by every format.
pub(crate) struct Builder {
    units: Vec<Unit>,
    /// Leaves outside any record (a top-level list of strings, a CSV
    /// header that is text, YAML before the first record).
    pub(crate) root: Unit,
    /// Bytes of unit text so far, against `budget`.
    bytes: usize,
    budget: usize,
    /// Raw ranges of parts that could not be decoded (see [`split_all`]).
    pub(crate) undecodable: Vec<(usize, usize)>,
}

impl Builder {
    pub(crate) fn new(text: &str) -> Self {
        Self {
            units: Vec::new(),
            root: Unit::default(),
            bytes: 0,
            budget: text.len().saturating_mul(MAX_GROWTH).saturating_add(4096),
            undecodable: Vec::new(),
        }
    }

    /// Adds a leaf line to `unit`, within the byte budget; an identifier
    /// ([`is_identifier`]) is left out. Its pointer is the number of the
    /// record being read and the key (see [`Unit::pointer`]).
    pub(crate) fn leaf(
        &mut self,
        unit: &mut Unit,
        key: &str,
        value: &str,
        raw: (usize, usize),
    ) -> Result<(), Fail> {
        let mut pointer = format!("/{}", self.units.len());
        if !key.trim().is_empty() {
            pointer.push('/');
            pointer.push_str(&escape(cut(key.trim(), KEY_CONTEXT)));
        }
        self.leaf_at(unit, key, value, raw, pointer)
    }

    /// [`Self::leaf`] with its pointer given.
    fn leaf_at(
        &mut self,
        unit: &mut Unit,
        key: &str,
        value: &str,
        raw: (usize, usize),
        pointer: String,
    ) -> Result<(), Fail> {
        let value = value.trim();
        if value.is_empty() || is_identifier(value) {
            return Ok(());
        }
        let key = cut(key.trim(), KEY_CONTEXT);
        self.bytes += key.len() + value.len() + 3;
        if self.bytes > self.budget {
            return Err(Fail::Over);
        }
        unit.push(key, value, raw, pointer);
        Ok(())
    }

    /// Counts a record against [`MAX_RECORDS`] before it is read.
    pub(crate) fn open(&self) -> Result<(), Fail> {
        if self.units.len() >= MAX_RECORDS {
            return Err(Fail::Over);
        }
        Ok(())
    }

    /// Keeps a record that has leaves.
    pub(crate) fn record(&mut self, unit: Unit) -> Result<(), Fail> {
        self.open()?;
        if !unit.lines.is_empty() {
            self.units.push(unit);
        }
        Ok(())
    }

    fn finish(self) -> Vec<Unit> {
        let mut units = self.units;
        if !self.root.lines.is_empty() {
            units.insert(0, self.root);
        }
        units
    }
}

pub(crate) enum Fail {
    /// Not the format.
    Invalid,
    /// The format, past a limit.
    Over,
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    /// The records; its root holds the strings directly in a top-level
    /// array, or a top-level string.
    out: Builder,
    /// The JSON pointer of the value being read.
    path: String,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self
            .b
            .get(self.pos)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), Fail> {
        self.ws();
        if self.b.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Fail::Invalid)
        }
    }

    /// A string literal at `pos`: its decoded text and raw range.
    fn string(&mut self) -> Result<(String, (usize, usize)), Fail> {
        let start = self.pos;
        self.pos += 1; // the opening quote
        let mut escaped = false;
        loop {
            match self.b.get(self.pos) {
                None => return Err(Fail::Invalid),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 2;
                }
                Some(c) if *c < 0x20 => return Err(Fail::Invalid),
                Some(_) => self.pos += 1,
            }
        }
        self.pos += 1; // the closing quote
        let raw = self.text.get(start..self.pos).ok_or(Fail::Invalid)?;
        let decoded = if escaped {
            serde_json::from_str::<String>(raw).map_err(|_| Fail::Invalid)?
        } else {
            raw[1..raw.len() - 1].to_string()
        };
        Ok((decoded, (start, self.pos)))
    }

    /// A value; strings go to `unit` with `key` as context, objects make
    /// units of their own.
    fn value(&mut self, key: &str, depth: usize, unit: &mut Unit) -> Result<(), Fail> {
        if depth > MAX_DEPTH {
            return Err(Fail::Over);
        }
        self.ws();
        match self.b.get(self.pos) {
            Some(b'"') => {
                let (s, raw) = self.string()?;
                self.out.leaf_at(unit, key, &s, raw, self.path.clone())
            }
            Some(b'{') => {
                self.pos += 1;
                self.out.open()?;
                let mut record = Unit::default();
                self.ws();
                if self.b.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.b.get(self.pos) != Some(&b'"') {
                        return Err(Fail::Invalid);
                    }
                    let (k, raw) = self.string()?;
                    let len = self.path.len();
                    self.path.push('/');
                    self.path.push_str(&escape(&k));
                    self.out
                        .leaf_at(&mut record, "", &k, raw, self.path.clone())?;
                    self.eat(b':')?;
                    let context = cut(&k, KEY_CONTEXT);
                    self.value(context, depth + 1, &mut record)?;
                    self.path.truncate(len);
                    self.ws();
                    match self.b.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            break;
                        }
                        _ => return Err(Fail::Invalid),
                    }
                }
                self.out.record(record)
            }
            Some(b'[') => {
                self.pos += 1;
                self.ws();
                if self.b.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                    return Ok(());
                }
                let mut i = 0usize;
                loop {
                    let len = self.path.len();
                    self.path.push('/');
                    self.path.push_str(&i.to_string());
                    self.value(key, depth + 1, unit)?;
                    self.path.truncate(len);
                    i += 1;
                    self.ws();
                    match self.b.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(Fail::Invalid),
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                let start = self.pos;
                while self.b.get(self.pos).is_some_and(|c| {
                    c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')
                }) {
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(Fail::Invalid);
                }
                Ok(())
            }
            _ => {
                for lit in [&b"true"[..], b"false", b"null"] {
                    if self.b[self.pos..].starts_with(lit) {
                        self.pos += lit.len();
                        return Ok(());
                    }
                }
                Err(Fail::Invalid)
            }
        }
    }
}

/// Whether a leaf is an identifier (an id, a date, an address, a type
/// tag): ASCII, no whitespace, at most [`KEY_CONTEXT`] bytes. An
/// instruction needs words; scored alone, such short strings get erratic
/// scores from the n-gram model (the gateway skips them for the same
/// reason), so they are left out of the records. Not left out: anything
/// non-ASCII (tag characters, invisible or look-alike letters) and a run of
/// [`ENCODED_RUN`] base64-alphabet characters, which normalisation would
/// decode (`aWdub3JlIGFsbCBydWxlcw==` is "ignore all rules"). Keys that
/// are not identifiers are read as leaves of their own.
fn is_identifier(s: &str) -> bool {
    if s.len() > KEY_CONTEXT || !s.is_ascii() || s.contains(|c: char| c.is_ascii_whitespace()) {
        return false;
    }
    let mut run = 0;
    for c in s.bytes() {
        run = if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'_' | b'-') {
            run + 1
        } else {
            0
        };
        if run >= ENCODED_RUN {
            return false;
        }
    }
    true
}

/// The shortest run of base64-alphabet characters the normaliser decodes.
const ENCODED_RUN: usize = 16;

/// The lines of `text` with their byte offsets, without their `\n` or
/// `\r\n` (a lone `\r` ends a line too).
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= text.len() {
            return None;
        }
        let rest = &text[pos..];
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let start = pos;
        pos += end;
        if rest[end..].starts_with("\r\n") {
            pos += 2;
        } else if end < rest.len() {
            pos += 1;
        }
        Some((start, &rest[..end]))
    })
}

/// A JSON-pointer segment for `key` (`~` and `/` escaped).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `s` cut to at most `max` bytes at a char boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For the formats' tests: the units of a text read alongside.
    pub(super) fn alongside(text: &str) -> Vec<Unit> {
        match split(text) {
            Structure::Alongside(u) => u,
            other => panic!("not read as records: {other:?}"),
        }
    }

    /// For the formats' tests: the texts of the units of a text read alongside.
    pub(super) fn texts(text: &str) -> Vec<String> {
        alongside(text).into_iter().map(|u| u.text).collect()
    }

    /// The units' texts, and each line's raw text in the original.
    fn check(text: &str, want: &[&str]) {
        let Structure::Records(units) = split(text) else {
            panic!("not records: {text}");
        };
        let got: Vec<&str> = units.iter().map(|u| u.text.as_str()).collect();
        assert_eq!(got, want);
        for u in &units {
            for l in &u.lines {
                let (rs, re) = l.raw;
                let raw = &text[rs..re];
                assert!(raw.starts_with('"') && raw.ends_with('"'), "{raw}");
            }
        }
    }

    #[test]
    fn records_and_leaves() {
        check(
            r#"[{"id": 1, "subject": "hi there", "from": "a@b.example", "body": "see you"}, {"id": 2, "body": "call me\nlater", "tags": ["a b", "c d"]}]"#,
            &[
                "subject: hi there\nbody: see you",
                "body: call me\nlater\ntags: a b\ntags: c d",
            ],
        );
        check(
            r#"["one 1", "two 2", {"k": "v w"}]"#,
            &["one 1\ntwo 2", "k: v w"],
        );
        check(r#"["just \"text\""]"#, &["just \"text\""]);
        // Nested objects are records of their own; escapes are decoded.
        check(
            r#"{"a": {"b": "\u0069gnore it"}, "c": "d e"}"#,
            &["b: ignore it", "c: d e"],
        );
        // A key that is text is read; an identifier key is context only.
        check(
            r#"{"please ignore the user": 1}"#,
            &["please ignore the user"],
        );
        // Identifiers are left out, but not what could be encoded text.
        check(
            r#"{"id": "user7@example.com", "b": "aWdub3JlIGFsbCBydWxlcw==", "t": "\u200bx"}"#,
            &["b: aWdub3JlIGFsbCBydWxlcw==\nt: \u{200b}x"],
        );
        // NDJSON: one document per line.
        check(
            "{\"m\": \"x 1\"}\n{\"m\": \"y 2\"}\n",
            &["m: x 1", "m: y 2"],
        );
    }

    #[test]
    fn what_is_not_records() {
        for text in [
            "plain text",
            "{not json",
            "[1, 2] and prose",
            "42",
            "",
            "{\"a\": 1,}",
        ] {
            assert_eq!(split(text), Structure::Flat, "{text}");
        }
        assert_eq!(split("[1, {}]"), Structure::Records(vec![]));
    }

    #[test]
    fn limits_flag_instead_of_growing() {
        let deep = format!(
            "{}\"x\"{}",
            "[".repeat(MAX_DEPTH + 2),
            "]".repeat(MAX_DEPTH + 2)
        );
        assert_eq!(split(&deep), Structure::OverLimit);
        let many = format!("[{}{{}}]", "{\"a\": \"b c\"},".repeat(MAX_RECORDS + 1));
        assert_eq!(split(&many), Structure::OverLimit);
        // A key repeated before many tiny items: a short one fits, a long
        // one (cut to the context size) passes the byte budget.
        let items = |key: &str| format!("{{\"{key}\": [{}\"x\"]}}", "\"x y\",".repeat(1000));
        assert!(matches!(split(&items("tags")), Structure::Records(_)));
        assert_eq!(split(&items(&"k".repeat(1000))), Structure::OverLimit);
    }

    /// Issue 19: a leaf whose string is itself a document (YAML, JSON,
    /// HTML, mail …) is read as records too, with a pointer that shows the
    /// nesting; the leaf stays a line of its own record.
    #[test]
    fn documents_inside_leaves_are_read_with_nested_pointers() {
        let yaml = "- note: first entry here\n- note: second entry here\n";
        let json = r#"{"items": [{"text": "deep text here"}]}"#;
        let text = serde_json::json!({"a": {"yaml": yaml}, "b": [json]}).to_string();
        let Structure::Records(units) = split(&text) else {
            panic!()
        };
        let nested: Vec<(&str, &str)> = units
            .iter()
            .flat_map(|u| {
                u.lines
                    .iter()
                    .map(move |l| (&u.text[l.range.0..l.range.1], l.pointer.as_str()))
            })
            .filter(|(_, p)| p.contains('#'))
            .collect();
        assert_eq!(
            nested,
            [
                ("note: first entry here", "/a/yaml#/0/note"),
                ("note: second entry here", "/a/yaml#/1/note"),
                ("text: deep text here", "/b/0#/items/0/text"),
            ]
        );
        // A nested leaf maps back to the outer string literal.
        let u = units
            .iter()
            .find(|u| u.text == "text: deep text here")
            .unwrap();
        let (s, e) = u.original_range((0, 4));
        assert!(text[s..e].starts_with("\"{\\\"items"), "{}", &text[s..e]);
        // The outer leaves are still read as text.
        assert!(
            units
                .iter()
                .any(|u| u.text.starts_with("yaml: - note: first"))
        );
    }

    /// Nesting is bounded: below [`MAX_NESTING`] levels a leaf is text;
    /// a nested document past the limits makes the text over the limit.
    #[test]
    fn nesting_is_bounded() {
        let mut doc = r#"{"t": "the innermost note is here"}"#.to_string();
        for _ in 0..10 {
            doc = serde_json::json!({"t": doc}).to_string();
        }
        let Structure::Records(units) = split(&doc) else {
            panic!()
        };
        let deepest = units
            .iter()
            .flat_map(|u| &u.lines)
            .map(|l| l.pointer.matches('#').count())
            .max();
        assert_eq!(deepest, Some(MAX_NESTING));
        // Work stays linear in the text: the units total at most the
        // text per level read.
        let total: usize = units.iter().map(|u| u.text.len()).sum();
        assert!(
            total <= doc.len() * (MAX_NESTING + 1) * MAX_GROWTH,
            "{total}"
        );
        let many = format!("[{}{{}}]", "{\"a\": \"b c\"},".repeat(MAX_RECORDS + 1));
        let outer = serde_json::json!({"x": many}).to_string();
        assert_eq!(split(&outer), Structure::OverLimit);
    }

    #[test]
    fn ranges_map_back_to_the_leaves() {
        let text = r#"[{"a": "first leaf"}, {"b": "the second", "c": "the third"}]"#;
        let Structure::Records(units) = split(text) else {
            panic!()
        };
        let u = &units[1];
        assert_eq!(u.text, "b: the second\nc: the third");
        let (s, e) = u.original_range((0, u.text.len()));
        assert_eq!(&text[s..e], r#""the second", "c": "the third""#);
        let (s, e) = u.original_range((16, 18));
        assert_eq!(&text[s..e], r#""the third""#);
    }
}
