//! MCP arguments in canonical form: the one text, and the typed views, policy
//! sees for each top-level argument of a `tools/call` or `prompts/get`.
//!
//! JSON spells one number many ways (`1000`, `1e3`, `1000.0`, `10E2`). A
//! policy compares what it is given, so every spelling of a value must reach
//! it as the same thing, and the server must receive the value that was
//! decided. [`canonical_arguments`] turns `params.arguments` into one
//! canonical form; the gateway decides on it and forwards it.
//!
//! Numbers are read as IEEE-754 doubles (as JavaScript and Python MCP servers
//! read them; integers written without fraction or exponent are read
//! exactly). A number has a canonical form when it is
//!
//! - an integer in the 64-bit signed range: written in plain decimal
//!   (`1e3`, `1000.0`, `10E2` → `1000`; `-0` → `0`); or
//! - a number with at most 4 fraction digits and at most 15 significant
//!   digits: written with the fewest digits (`2.50` → `2.5`, `1e-4` →
//!   `0.0001`). Fifteen digits is what a double holds exactly, and keeps the
//!   value within Cedar's `decimal` range.
//!
//! Any other number (`0.1234567`, `1e19`, `1e400`) has none, and the message
//! is refused: two spellings of one value are never decided differently, and
//! no value is rounded into another between decision and server.
//!
//! What policy sees, per top-level argument:
//!
//! | | tag set | holds |
//! | --- | --- | --- |
//! | `context.args` | `String` | every argument: strings as they are, numbers in canonical text, `true`/`false`, `null`, objects and arrays as canonical JSON (keys sorted, canonical numbers, no whitespace) |
//! | `context.argn` | `Long` | arguments that are JSON numbers with an integer value |
//! | `context.argd` | `decimal` | arguments that are JSON numbers in the `decimal` range (integers too) |

use serde_json::{Map, Number, Value};

/// A Cedar `decimal` counts in ten-thousandths.
const DECIMAL_SCALE: i128 = 10_000;
/// The most significant digits a number with a fraction may have: every
/// decimal of up to 15 digits reads into a double and back unchanged.
const MAX_DIGITS: usize = 15;

/// One top-level argument as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpArg {
    /// The argument's name (the tag key).
    pub name: String,
    /// Its canonical text (`context.args`).
    pub text: String,
    /// Its value, when it is a number with an integer value (`context.argn`).
    pub long: Option<i64>,
    /// Its value as a Cedar `decimal` literal (`"1000.0"`), when it is a
    /// number within the `decimal` range (`context.argd`).
    pub decimal: Option<String>,
}

impl McpArg {
    /// A string argument: it has no numeric views.
    pub fn string(name: impl Into<String>, text: impl Into<String>) -> Self {
        McpArg {
            name: name.into(),
            text: text.into(),
            long: None,
            decimal: None,
        }
    }
}

/// `params.arguments` in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalArgs {
    /// The arguments object to forward: every number in canonical form, keys
    /// sorted at every level.
    pub value: Value,
    /// The top-level arguments as policy sees them, in key order.
    pub args: Vec<McpArg>,
}

/// A number in the arguments that has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "argument `{path}`: the number {number} {reason}; send it as a string, or as an integer in the 64-bit range or a number with at most 4 fraction digits"
)]
pub struct ArgumentError {
    /// Where the number is, as a JSON pointer into `params.arguments`.
    pub path: String,
    /// The number as it was read.
    pub number: String,
    /// Why it has no canonical form.
    pub reason: &'static str,
}

/// A canonical number.
enum Canon {
    Long(i64),
    /// A number with a fraction: the double, and its canonical text.
    Fraction(f64, String),
}

impl Canon {
    fn text(&self) -> String {
        match self {
            Canon::Long(i) => i.to_string(),
            Canon::Fraction(_, t) => t.clone(),
        }
    }

    fn value(&self) -> Value {
        match self {
            Canon::Long(i) => Value::from(*i),
            // Invariant: the double is finite (it came from a JSON number);
            // serde_json prints it with the fewest digits that read back as
            // it, which is the canonical text (a test checks).
            Canon::Fraction(f, _) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        }
    }

    /// The Cedar `decimal` literal, when the value is in its range.
    fn decimal(&self) -> Option<String> {
        match self {
            Canon::Long(i) => (i128::from(*i) * DECIMAL_SCALE)
                .try_into()
                .ok()
                .map(|_: i64| format!("{i}.0")),
            // In range: at most 15 digits, of which at least one is a
            // fraction digit, is below 10^14.
            Canon::Fraction(_, t) => Some(t.clone()),
        }
    }
}

fn canonical_number(n: &Number, path: &str) -> Result<Canon, ArgumentError> {
    let fail = |number: String, reason| ArgumentError {
        path: path.to_string(),
        number,
        reason,
    };
    if let Some(i) = n.as_i64() {
        return Ok(Canon::Long(i));
    }
    if n.is_u64() {
        return Err(fail(
            n.to_string(),
            "is beyond the 64-bit signed integer range",
        ));
    }
    let f = n
        .as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| fail(n.to_string(), "is not a finite number"))?;
    // Rust prints a double with the fewest digits that read back as it, and
    // never in exponent form: `1e3` → "1000", `0.1` → "0.1", `-0.0` → "-0".
    let shortest = format!("{f}");
    let (negative, magnitude) = match shortest.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, shortest.as_str()),
    };
    let (int, frac) = magnitude.split_once('.').unwrap_or((magnitude, ""));
    let frac = frac.trim_end_matches('0');
    let int: i128 = int.parse().map_err(|_| {
        fail(
            shortest.clone(),
            "is beyond the 64-bit signed integer range",
        )
    })?;
    if frac.is_empty() {
        let sign = if negative { -1 } else { 1 };
        return i64::try_from(sign * int).map(Canon::Long).map_err(|_| {
            fail(
                shortest.clone(),
                "is beyond the 64-bit signed integer range",
            )
        });
    }
    if frac.len() > 4 {
        return Err(fail(shortest, "has more than 4 fraction digits"));
    }
    let digits = if int == 0 {
        frac.trim_start_matches('0').len()
    } else {
        int.to_string().len() + frac.len()
    };
    if digits > MAX_DIGITS {
        return Err(fail(shortest, "has more than 15 significant digits"));
    }
    let text = format!("{}{int}.{frac}", if negative { "-" } else { "" });
    Ok(Canon::Fraction(f, text))
}

/// `value` with every number in canonical form and keys sorted.
fn canonical_value(value: &Value, path: &mut String) -> Result<Value, ArgumentError> {
    Ok(match value {
        Value::Number(n) => canonical_number(n, path)?.value(),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                let len = path.len();
                push_pointer(path, k);
                out.insert(k.clone(), canonical_value(&map[k], path)?);
                path.truncate(len);
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                out.push(canonical_value(item, path)?);
                path.truncate(len);
            }
            Value::Array(out)
        }
        other => other.clone(),
    })
}

/// Appends `/key` to a JSON pointer, escaped as RFC 6901 says.
fn push_pointer(path: &mut String, key: &str) {
    path.push('/');
    path.push_str(&key.replace('~', "~0").replace('/', "~1"));
}

/// `params.arguments` in canonical form, or the first number that has none.
pub fn canonical_arguments(arguments: &Map<String, Value>) -> Result<CanonicalArgs, ArgumentError> {
    let mut keys: Vec<&String> = arguments.keys().collect();
    keys.sort();
    let mut value = Map::new();
    let mut args = Vec::with_capacity(keys.len());
    let mut path = String::new();
    for k in keys {
        path.clear();
        push_pointer(&mut path, k);
        let v = &arguments[k];
        let (canonical, arg) = match v {
            Value::Number(n) => {
                let c = canonical_number(n, &path)?;
                let arg = McpArg {
                    name: k.clone(),
                    text: c.text(),
                    long: match c {
                        Canon::Long(i) => Some(i),
                        Canon::Fraction(..) => None,
                    },
                    decimal: c.decimal(),
                };
                (c.value(), arg)
            }
            Value::String(s) => (v.clone(), McpArg::string(k.clone(), s.clone())),
            other => {
                let c = canonical_value(other, &mut path)?;
                // Keys are inserted sorted, so the text is sorted whether or
                // not serde_json keeps insertion order.
                let text = c.to_string();
                (c, McpArg::string(k.clone(), text))
            }
        };
        value.insert(k.clone(), canonical);
        args.push(arg);
    }
    Ok(CanonicalArgs {
        value: Value::Object(value),
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(json: &str) -> Result<(String, Option<i64>, Option<String>, String), String> {
        let v: Value = serde_json::from_str(&format!(r#"{{"a":{json}}}"#)).unwrap();
        let c = canonical_arguments(v.as_object().unwrap()).map_err(|e| e.to_string())?;
        let a = c.args.into_iter().next().unwrap();
        Ok((a.text, a.long, a.decimal, c.value["a"].to_string()))
    }

    #[test]
    fn every_spelling_of_a_number_has_one_form() {
        for s in [
            "1000", "1e3", "1000.0", "10E2", "1.0e3", "1E+3", "1000.000", "10000e-1",
        ] {
            assert_eq!(
                canon(s).unwrap(),
                (
                    "1000".into(),
                    Some(1000),
                    Some("1000.0".into()),
                    "1000".into()
                ),
                "{s}"
            );
        }
        for s in ["0", "-0", "0.0", "-0.0", "0e5", "-0E-3"] {
            assert_eq!(
                canon(s).unwrap(),
                ("0".into(), Some(0), Some("0.0".into()), "0".into()),
                "{s}"
            );
        }
        for s in ["2.5", "2.50", "25e-1", "0.25E1"] {
            assert_eq!(
                canon(s).unwrap(),
                ("2.5".into(), None, Some("2.5".into()), "2.5".into()),
                "{s}"
            );
        }
        for (s, text) in [
            ("-1.25", "-1.25"),
            ("1e-4", "0.0001"),
            ("-0.0001", "-0.0001"),
            ("123456789.1234", "123456789.1234"),
            ("99999999999.9999", "99999999999.9999"),
            ("-12345678901.2345", "-12345678901.2345"),
        ] {
            let (t, long, decimal, forwarded) = canon(s).unwrap();
            assert_eq!((t.as_str(), long), (text, None), "{s}");
            assert_eq!(decimal.as_deref(), Some(text), "{s}");
            // The forwarded number prints as the canonical text.
            assert_eq!(forwarded, text, "{s}");
        }
        // Integers beyond the decimal range are Longs only.
        assert_eq!(
            canon("9223372036854775807").unwrap(),
            (
                "9223372036854775807".into(),
                Some(i64::MAX),
                None,
                "9223372036854775807".into()
            )
        );
        assert_eq!(
            canon("-9.2e18").unwrap().1,
            Some(-9_200_000_000_000_000_000)
        );
    }

    #[test]
    fn numbers_without_a_canonical_form_are_refused() {
        for (s, why) in [
            ("0.1234567", "more than 4 fraction digits"),
            ("1.00001", "more than 4 fraction digits"),
            ("1e-5", "more than 4 fraction digits"),
            ("9223372036854775808", "64-bit signed integer range"),
            ("1e19", "64-bit signed integer range"),
            ("-1e19", "64-bit signed integer range"),
            ("1e300", "64-bit signed integer range"),
            ("922337203685477.5", "more than 15 significant digits"),
            ("1234567890123.456", "more than 15 significant digits"),
        ] {
            let e = canon(s).unwrap_err();
            assert!(
                e.contains(why) && e.starts_with("argument `/a`"),
                "{s}: {e}"
            );
        }
        // Nested numbers too, named by their pointer.
        let e = canon(r#"{"x":[1,{"y/z":0.123456}]}"#).unwrap_err();
        assert!(
            e.starts_with("argument `/a/x/1/y~1z`: the number 0.123456"),
            "{e}"
        );
    }

    #[test]
    fn other_values_are_canonical_text() {
        assert_eq!(canon(r#""1e3""#).unwrap().0, "1e3", "strings stay as sent");
        assert_eq!(canon("true").unwrap().0, "true");
        assert_eq!(canon("null").unwrap().0, "null");
        let (text, long, decimal, forwarded) =
            canon(r#"{"b": [1e3, 2.50, "x"], "a": {"d": -0, "c": 1}}"#).unwrap();
        assert_eq!(text, r#"{"a":{"c":1,"d":0},"b":[1000,2.5,"x"]}"#);
        assert_eq!(forwarded, text);
        assert_eq!((long, decimal), (None, None));
        let v: Value = serde_json::from_str(r#"{"z":1e3,"a":"s"}"#).unwrap();
        let c = canonical_arguments(v.as_object().unwrap()).unwrap();
        assert_eq!(c.value.to_string(), r#"{"a":"s","z":1000}"#);
        assert_eq!(
            c.args.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["a", "z"]
        );
    }
}
