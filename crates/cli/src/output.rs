//! The CLI's one output contract: every listing and showing command prints
//! through [`emit`], chosen with `-o table|json|yaml`.
//!
//! - `json` and `yaml` print the admin API's answer with every time turned
//!   into RFC 3339 UTC (fields named `*_at`, `last_seen`, `time_ms`, and
//!   `time`), so scripts see one time format.
//! - `table` prints columns ([`Column`]) or, for one object, `key: value`
//!   lines ([`fields`]). Cells are cleaned of control characters (a value an
//!   agent chose must not drive the terminal), wrapped at the column's width
//!   and cut after [`MAX_LINES`] lines with `…`.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::Value;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned columns (or `key: value` lines for one object).
    #[default]
    Table,
    /// The admin API's JSON, pretty, times in RFC 3339.
    Json,
    /// The same as YAML.
    Yaml,
}

/// `-o FORMAT`, shared by every command that talks to the admin API.
#[derive(Debug, Clone, Args)]
pub struct OutputArg {
    /// Output format of listing and showing commands.
    #[arg(short = 'o', long = "output", value_enum, global = true)]
    pub output: Option<Format>,
}

impl OutputArg {
    /// The chosen format; `--json` (kept for old scripts) means `-o json`.
    pub fn or_json(&self, json: bool) -> Format {
        match (self.output, json) {
            (Some(f), _) => f,
            (None, true) => Format::Json,
            (None, false) => Format::Table,
        }
    }

    /// The chosen format, table by default.
    pub fn format(&self) -> Format {
        self.output.unwrap_or_default()
    }
}

/// Cells wrap onto at most this many lines.
pub const MAX_LINES: usize = 3;

/// How a cell is read from a row.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A string or any scalar as text.
    Text,
    /// Epoch seconds (or milliseconds, told apart by size) as RFC 3339.
    Time,
    /// An array of scalars joined with `,`.
    List,
    /// The length of an array.
    Count,
    /// Compact JSON.
    Json,
}

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Its header.
    pub header: &'static str,
    /// The row's field: a key, or a JSON pointer (`/a/b`).
    pub field: &'static str,
    /// How to render it.
    pub kind: Kind,
    /// The widest the column gets before its cells wrap.
    pub width: usize,
}

/// A column, for the tables' definitions.
pub const fn col(header: &'static str, field: &'static str, kind: Kind, width: usize) -> Column {
    Column {
        header,
        field,
        kind,
        width,
    }
}

/// Prints `value` as `format` asks; `table` renders it for the table form.
pub fn emit(format: Format, value: &Value, table: impl FnOnce(&Value) -> String) -> Result<()> {
    let text = render(format, value, table)?;
    write_stdout(text.as_bytes())
}

/// Writes `bytes` to stdout. A reader that went away (`portcullis … | head`)
/// ends the process quietly with success, as `cat` would end by SIGPIPE:
/// `print!` would panic with a backtrace instead (Rust ignores SIGPIPE).
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => other.context("cannot write to stdout"),
    }
}

/// What [`emit`] prints.
pub fn render(
    format: Format,
    value: &Value,
    table: impl FnOnce(&Value) -> String,
) -> Result<String> {
    Ok(match format {
        Format::Table => table(value),
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&with_rfc3339(value))?;
            text.push('\n');
            text
        }
        Format::Yaml => {
            serde_norway::to_string(&with_rfc3339(value)).context("cannot write YAML")?
        }
    })
}

/// The rows at `pointer` (`""`: the value itself) as a table.
pub fn rows(value: &Value, pointer: &str, columns: &[Column]) -> String {
    let empty = Vec::new();
    let rows = value
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    table(rows, columns)
}

/// A table of `rows`.
pub fn table(rows: &[Value], columns: &[Column]) -> String {
    let cells: Vec<Vec<Vec<String>>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| wrap(&cell(field(row, c.field), c.kind), c.width))
                .collect()
        })
        .collect();
    // Each column as wide as its widest line (at most its width).
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .flat_map(|row| row[i].iter().map(|l| l.chars().count()))
                .chain([c.header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let headers: Vec<Vec<String>> = columns.iter().map(|c| vec![c.header.to_string()]).collect();
    push_row(&mut out, &headers, &widths);
    for row in &cells {
        push_row(&mut out, row, &widths);
    }
    out
}

fn push_row(out: &mut String, row: &[Vec<String>], widths: &[usize]) {
    let height = row.iter().map(Vec::len).max().unwrap_or(1).max(1);
    for line in 0..height {
        let mut text = String::new();
        for (i, cell) in row.iter().enumerate() {
            let part = cell.get(line).map(String::as_str).unwrap_or("");
            if i + 1 == row.len() {
                text.push_str(part);
            } else {
                text.push_str(part);
                let pad = widths[i].saturating_sub(part.chars().count()) + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
}

/// One object as aligned `key: value` lines; nested objects as `a.b`.
pub fn fields(value: &Value) -> String {
    let mut pairs = Vec::new();
    flatten("", value, &mut pairs);
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, text) in pairs {
        out.push_str(&format!("{key:<width$}  {text}\n"));
    }
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            let key = prefix.rsplit('.').next().unwrap_or(prefix);
            let kind = if other.as_i64().is_some_and(|t| is_time(key, t)) {
                Kind::Time
            } else if other
                .as_array()
                .is_some_and(|a| a.iter().all(|v| !v.is_object() && !v.is_array()))
            {
                Kind::List
            } else {
                Kind::Json
            };
            let text = cell(Some(other), kind);
            // Long values are cut: `-o json` has them whole.
            out.push((prefix.to_string(), truncate(&text, 200)))
        }
    }
}

fn field<'a>(row: &'a Value, field: &str) -> Option<&'a Value> {
    if field.starts_with('/') {
        row.pointer(field)
    } else {
        row.get(field)
    }
}

/// The text of one cell, `-` for nothing.
pub fn cell(value: Option<&Value>, kind: Kind) -> String {
    let text = match (value, kind) {
        (None | Some(Value::Null), _) => String::new(),
        (Some(v), Kind::Time) => v.as_i64().map(format_time).unwrap_or_else(|| scalar(v)),
        (Some(Value::Array(items)), Kind::List) => {
            items.iter().map(scalar).collect::<Vec<_>>().join(",")
        }
        (Some(Value::Array(items)), Kind::Count) => items.len().to_string(),
        (Some(v), Kind::Json) if v.is_object() || v.is_array() => v.to_string(),
        (Some(v), _) => scalar(v),
    };
    let text = clean(&text);
    if text.is_empty() { "-".into() } else { text }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        // A fraction (a risk score, say) to three places: `-o json` has it whole.
        Value::Number(n) if n.is_f64() => {
            let text = format!("{:.3}", n.as_f64().unwrap_or_default());
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        other => other.to_string(),
    }
}

/// Control characters (escape sequences, newlines) become spaces.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Wraps at `width` (at spaces or commas when it can), cut after
/// [`MAX_LINES`] lines.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(4);
    let mut lines = Vec::new();
    let mut rest: Vec<char> = text.chars().collect();
    while !rest.is_empty() {
        if lines.len() + 1 == MAX_LINES && rest.len() > width {
            let mut last: String = rest[..width - 1].iter().collect();
            last.push('…');
            lines.push(last);
            return lines;
        }
        if rest.len() <= width {
            lines.push(rest.iter().collect());
            break;
        }
        let cut = rest[..width]
            .iter()
            .rposition(|c| *c == ' ' || *c == ',')
            .filter(|&i| i > width / 2)
            .map(|i| i + 1)
            .unwrap_or(width);
        lines.push(
            rest[..cut]
                .iter()
                .collect::<String>()
                .trim_end()
                .to_string(),
        );
        rest.drain(..cut);
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

/// Whether a field named `key` holding `value` is a time: `*_at`,
/// `last_seen`, `not_after` and `time` in seconds or milliseconds, and
/// `*_ms` when it is a millisecond time after 2001 (not a duration).
fn is_time(key: &str, value: i64) -> bool {
    (key.ends_with("_at") || matches!(key, "last_seen" | "not_after" | "time"))
        || (key.ends_with("_ms") && value >= 1_000_000_000_000)
}

/// Epoch seconds, or milliseconds (any value past the year 5138 in
/// seconds), as RFC 3339 UTC; `-` for 0 or out of range.
pub fn format_time(value: i64) -> String {
    if value == 0 {
        return "-".into();
    }
    let nanos = if value.abs() >= 100_000_000_000 {
        i128::from(value) * 1_000_000
    } else {
        i128::from(value) * 1_000_000_000
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

/// A copy of `value` with every integer time field in RFC 3339.
pub fn with_rfc3339(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Number(n) if n.as_i64().is_some_and(|t| t > 0 && is_time(k, t)) => {
                            Value::String(format_time(n.as_i64().unwrap_or_default()))
                        }
                        other => with_rfc3339(other),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(with_rfc3339).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_rfc3339_in_every_format() {
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_time(0), "-");
        let v = json!({"a": [{"created_at": 1_700_000_000, "n": 5, "time_ms": 1_700_000_000_000_i64}], "revoked_at": null});
        assert_eq!(
            with_rfc3339(&v),
            json!({"a": [{"created_at": "2023-11-14T22:13:20Z", "n": 5, "time_ms": "2023-11-14T22:13:20Z"}], "revoked_at": null})
        );
        let yaml = render(Format::Yaml, &v, |_| String::new()).unwrap();
        assert!(yaml.contains("created_at: 2023-11-14T22:13:20Z"), "{yaml}");
    }

    #[test]
    fn tables_wrap_truncate_and_clean() {
        assert_eq!(cell(Some(&json!(0.27000001072883606)), Kind::Text), "0.27");
        assert_eq!(cell(Some(&json!(2.0)), Kind::Text), "2");
        let rows = [
            json!({"name": "a", "why": "one two three four five six seven eight nine ten eleven", "at": 1_700_000_000}),
            json!({"name": "b\u{1b}[31m", "why": "x", "at": null}),
        ];
        let cols = [
            col("NAME", "name", Kind::Text, 10),
            col("WHY", "why", Kind::Text, 12),
            col("AT", "at", Kind::Time, 20),
        ];
        let text = table(&rows, &cols);
        let expected = [
            "NAME    WHY           AT",
            "a       one two       2023-11-14T22:13:20Z",
            "        three four",
            "        five six se…",
            "b [31m  x             -",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{text}");
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn one_object_as_fields() {
        let text = fields(
            &json!({"name": "x", "cert": {"not_after": 1_700_000_000}, "roles": ["a", "b"]}),
        );
        let expected = [
            "cert.not_after  2023-11-14T22:13:20Z",
            "name            x",
            "roles           a,b",
        ];
        // Key order follows serde_json's map (sorted, or as inserted).
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(lines, expected, "{text}");
    }
}
