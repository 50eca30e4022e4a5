//! The canonical request target: the one spelling of a request's path and
//! query that routing, policy (`context.path`), approval binding, the audit
//! record and the upstream all see.
//!
//! Computed once, in decode. An upstream that percent-decodes the path must
//! not reach a different resource from the one the gateway routed and
//! decided on, so the rules are:
//!
//! - Escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!   (RFC 3986 §6.2.2.2); every other escape is kept, with upper-case hex
//!   (§6.2.2.1). Characters that may not appear raw (space, `"`, `{`, bytes
//!   above 0x7F…) are percent-encoded.
//! - Refused with 400 `bad_path`, because servers resolve them differently:
//!   a malformed escape; an encoded `/`, `\`, `;`, `?` or `#`; NUL and other
//!   control characters; an encoded `%` that starts another escape (`%2561`,
//!   double decoding); a raw `\`; a raw `;` (servlet containers drop
//!   `;params` from a segment before matching); dot segments (also after
//!   decoding, so `%2e%2e`); empty segments (`//`, which some servers merge);
//!   and segments ending in `.` or an encoded space (Windows servers drop them);
//!   escapes that do not decode to UTF-8, such as the overlong `%C0%AE` for
//!   `.` (lenient decoders read it as a dot, so `/%C0%AE%C0%AE/` climbs out of
//!   the route on such an upstream; found by `portcullis redteam`).
//! - Letter case is kept: paths are case-sensitive (RFC 3986 §6.2.2.1), and
//!   folding would break upstreams with case-sensitive ids. Routing instead
//!   refuses a path that a longer route prefix matches but for letter case
//!   (see [`crate::route::RouteTable::case_variant`]).
//! - The query gets the same escape rules (unreserved escapes decoded, hex
//!   upper-cased, a malformed escape or NUL refused); its delimiters are
//!   left as they are.
//!
//! Route prefixes may only hold unreserved characters and `/` (config checks
//! [`is_route_prefix`]), so no escape left in a canonical path can turn into a
//! prefix match once an upstream decodes it.

use std::fmt;

/// A request's path and query in their canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTarget {
    /// The path: starts with `/`, ASCII only.
    pub path: String,
    /// The query (without `?`), when the request had one (possibly empty).
    pub query: Option<String>,
}

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The path is not in origin form.
    #[error("the path must start with `/`")]
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-escape")]
    BadEscape,
    /// `%2F`, `%5C` or a raw `\`.
    #[error("encoded separators and backslashes are not allowed")]
    EncodedSeparator,
    /// `%00` or another control character.
    #[error("NUL and control characters are not allowed")]
    ControlCharacter,
    /// A raw `;` or an encoded `;`, `?` or `#`.
    #[error("`;` parameters and encoded `;`, `?` or `#` are not allowed")]
    Delimiter,
    /// `%25` followed by two hex digits.
    #[error("double percent-encoding is not allowed")]
    DoubleEncoding,
    /// `.` or `..` (also encoded).
    #[error("dot segments are not allowed")]
    DotSegment,
    /// `//`.
    #[error("empty path segments (`//`) are not allowed")]
    EmptySegment,
    /// A segment ending in `.` or an encoded space.
    #[error("path segments may not end in `.` or a space")]
    TrailingDot,
    /// Escapes whose bytes are not UTF-8 (overlong forms such as `%C0%AE`,
    /// lone continuation bytes, Latin-1).
    #[error("percent-escapes in the path must decode to UTF-8")]
    NotUtf8,
}

impl CanonicalTarget {
    /// Canonicalises `path` and `query` as the module doc says, or refuses them.
    pub fn parse(path: &str, query: Option<&str>) -> Result<Self, TargetError> {
        if !path.starts_with('/') {
            return Err(TargetError::NotOriginForm);
        }
        let path = canonical_path(path.as_bytes())?;
        check_segments(&path)?;
        let query = query.map(|q| canonical_query(q.as_bytes())).transpose()?;
        Ok(CanonicalTarget { path, query })
    }

    /// `path` plus `?query` when there is a query.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

impl fmt::Display for CanonicalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// Whether `prefix` may be a route prefix: `/`-led, unreserved characters and
/// `/` only, so a canonical path matches it exactly when its decoding does.
pub fn is_route_prefix(prefix: &str) -> bool {
    prefix.starts_with('/') && prefix.bytes().all(|b| is_unreserved(b) || b == b'/')
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `sub-delims`.
fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The escape at `raw[i..]` (`raw[i]` is `%`), decoded.
fn escape_at(raw: &[u8], i: usize) -> Result<u8, TargetError> {
    match (
        raw.get(i + 1).copied().and_then(hex),
        raw.get(i + 2).copied().and_then(hex),
    ) {
        (Some(h), Some(l)) => Ok(h << 4 | l),
        _ => Err(TargetError::BadEscape),
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

fn canonical_path(raw: &[u8]) -> Result<String, TargetError> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let v = escape_at(raw, i)?;
            if is_unreserved(v) {
                out.push(v as char);
            } else if v == b'/' || v == b'\\' {
                return Err(TargetError::EncodedSeparator);
            } else if is_control(v) {
                return Err(TargetError::ControlCharacter);
            } else if matches!(v, b';' | b'?' | b'#') {
                return Err(TargetError::Delimiter);
            } else {
                push_escaped(&mut out, v);
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            return Err(TargetError::EncodedSeparator);
        }
        // A raw `?` or `#` cannot come from a parsed URI's path; refused
        // rather than escaped, since its escape is refused above and the
        // canonical form must canonicalise to itself (found by fuzzing).
        if matches!(b, b';' | b'?' | b'#') {
            return Err(TargetError::Delimiter);
        }
        if is_control(b) {
            return Err(TargetError::ControlCharacter);
        }
        if is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'/') {
            out.push(b as char);
        } else {
            push_escaped(&mut out, b);
        }
        i += 1;
    }
    // Checked on the result: `%25%61` became `%25a`, which a second decoding
    // would read as another escape.
    let b = out.as_bytes();
    if (0..b.len()).any(|i| b[i..].starts_with(b"%25") && escape_at(b, i + 2).is_ok()) {
        return Err(TargetError::DoubleEncoding);
    }
    if !decodes_to_utf8(b) {
        return Err(TargetError::NotUtf8);
    }
    Ok(out)
}

/// Whether a canonical path (every `%` starts a valid escape) decodes to
/// UTF-8. Overlong forms (`%C0%AE`, `%E0%80%AE`) are not UTF-8, so they are
/// caught here with everything else a decoder might read its own way.
fn decodes_to_utf8(path: &[u8]) -> bool {
    let mut bytes = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && let Ok(v) = escape_at(path, i)
        {
            bytes.push(v);
            i += 3;
            continue;
        }
        bytes.push(path[i]);
        i += 1;
    }
    std::str::from_utf8(&bytes).is_ok()
}

fn check_segments(path: &str) -> Result<(), TargetError> {
    // The first piece is the empty string before the leading `/`.
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (n, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            // Only the last segment may be empty: a trailing `/`.
            if n != last {
                return Err(TargetError::EmptySegment);
            }
            continue;
        }
        if *seg == "." || *seg == ".." {
            return Err(TargetError::DotSegment);
        }
        if seg.ends_with('.') || seg.ends_with("%20") {
            return Err(TargetError::TrailingDot);
        }
    }
    Ok(())
}

fn canonical_query(raw: &[u8]) -> Result<String, TargetError> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let v = escape_at(raw, i)?;
            if is_unreserved(v) {
                out.push(v as char);
            } else if v == 0 {
                return Err(TargetError::ControlCharacter);
            } else {
                push_escaped(&mut out, v);
            }
            i += 3;
            continue;
        }
        if is_control(b) {
            return Err(TargetError::ControlCharacter);
        }
        if is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'/' | b'?') {
            out.push(b as char);
        } else {
            push_escaped(&mut out, b);
        }
        i += 1;
    }
    Ok(out)
}

/// The query's parameter names, percent-decoded (`+` as space), lower-cased.
pub fn query_keys(query: &str) -> impl Iterator<Item = String> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let key = pair.split('=').next().unwrap_or("").as_bytes();
        let mut out = Vec::with_capacity(key.len());
        let mut i = 0;
        while i < key.len() {
            if key[i] == b'%'
                && let Ok(v) = escape_at(key, i)
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(if key[i] == b'+' { b' ' } else { key[i] });
            i += 1;
        }
        String::from_utf8_lossy(&out).to_ascii_lowercase()
    })
}

/// Random request targets for fuzz-style tests, from a fixed seed.
#[cfg(test)]
pub(crate) mod fuzz {
    /// A seeded xorshift, so the random targets are the same on every run.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    /// A random request target built from pieces attackers use.
    pub(crate) fn random_target(rng: &mut Rng) -> String {
        const PIECES: &[&str] = &[
            "/", "/", "/", "api", "admin", "internal", "%61", "%41", "%2e", "%2E", ".", "..",
            "%2f", "%5c", "\\", ";", "%3b", "%25", "%2561", "%20", "%7e", "~", "x", "Admin", "%00",
            "%zz", "%", "é", "\"", "{", ":", "@", "!", "+", "-", "_", "%3F", "%23", "%C3%A9",
        ];
        let mut t = String::from("/");
        for _ in 0..(rng.next() % 10) {
            t.push_str(rng.pick(PIECES));
        }
        if rng.next().is_multiple_of(3) {
            t.push('?');
            for _ in 0..(rng.next() % 5) {
                t.push_str(rng.pick(&["a=1", "&", "%61", "%zz", "+", "%2f", "=", "%00", "é"]));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuzz::{Rng, random_target};

    fn check(path: &str, query: Option<&str>, expect: Result<(&str, Option<&str>), TargetError>) {
        let got = CanonicalTarget::parse(path, query);
        let got = got
            .as_ref()
            .map(|t| (t.path.as_str(), t.query.as_deref()))
            .map_err(|e| *e);
        assert_eq!(got, expect, "{path:?} {query:?}");
    }

    #[test]
    fn canonical_forms() {
        use TargetError::*;
        let ok = |p: &str, e: &str| check(p, None, Ok((e, None)));
        ok("/", "/");
        ok("/demo", "/demo");
        ok("/demo/", "/demo/");
        ok("/demo/a.b/c", "/demo/a.b/c");
        ok("/demo/..x", "/demo/..x");
        ok("/a%20b", "/a%20b");
        ok("/api/%61dmin/secret", "/api/admin/secret");
        ok("/api/%69nternal/x", "/api/internal/x");
        ok("/%7e%2D%5f%2e%30x", "/~-_.0x");
        ok("/a%2ab%3a%40", "/a%2Ab%3A%40");
        ok("/a\"b{c}", "/a%22b%7Bc%7D");
        ok("/caf\u{e9}", "/caf%C3%A9");
        ok("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=");
        ok("/a%25b", "/a%25b");
        ok("/a%25", "/a%25");

        let bad = |p: &str, e: TargetError| check(p, None, Err(e));
        bad("*", NotOriginForm);
        bad("", NotOriginForm);
        bad("/a%zz", BadEscape);
        bad("/a%4", BadEscape);
        bad("/a%", BadEscape);
        bad("/a%2fb", EncodedSeparator);
        bad("/a%5Cb", EncodedSeparator);
        bad("/a\\b", EncodedSeparator);
        bad("/a%00", ControlCharacter);
        bad("/a%0d%0a", ControlCharacter);
        bad("/a%7f", ControlCharacter);
        bad("/api;x/admin", Delimiter);
        bad("/api/admin%3bx", Delimiter);
        bad("/api/admin%3F", Delimiter);
        bad("/api/admin%23", Delimiter);
        // Raw `#` and `?` were escaped to the `%23`/`%3F` refused above, so
        // the canonical form did not canonicalise (found by crates/fuzz).
        bad("/#0", Delimiter);
        bad("/a?b", Delimiter);
        bad("/api/%2561dmin", DoubleEncoding);
        bad("/api/%25%61a", DoubleEncoding);
        bad("/demo/../x", DotSegment);
        bad("/demo/./x", DotSegment);
        bad("/demo/%2e%2E/x", DotSegment);
        bad("/demo/%2E", DotSegment);
        bad("/demo/.", DotSegment);
        bad("//demo", EmptySegment);
        bad("/demo//x", EmptySegment);
        bad("/api/admin./x", TrailingDot);
        bad("/api/admin%2e", TrailingDot);
        bad("/api/admin%20/x", TrailingDot);
        bad("/demo/%c0%ae%c0%ae/payroll", NotUtf8);
        bad("/demo/..%c0%afpayroll", NotUtf8);
        bad("/demo/%e0%80%ae%e0%80%ae/x", NotUtf8);
        bad("/caf%e9", NotUtf8);
        bad("/a%80", NotUtf8);
        ok("/caf%c3%a9", "/caf%C3%A9");
    }

    #[test]
    fn queries() {
        let q = |raw: &str, e: Result<&str, TargetError>| {
            check("/", Some(raw), e.map(|e| ("/", Some(e))));
        };
        q("", Ok(""));
        q("a=1&b=2", Ok("a=1&b=2"));
        q("%61=%62%2f%2B", Ok("a=b%2F%2B"));
        q("x=a b\"", Ok("x=a%20b%22"));
        q("x=/?:@;", Ok("x=/?:@;"));
        q("x=%zz", Err(TargetError::BadEscape));
        q("x=%00", Err(TargetError::ControlCharacter));
        check("/", None, Ok(("/", None)));
    }

    #[test]
    fn query_keys_are_decoded() {
        let keys: Vec<String> = query_keys("a=1&%5Fmethod=x&B+c&&=v").collect();
        assert_eq!(keys, ["a", "_method", "b c", ""]);
    }

    #[test]
    fn route_prefixes() {
        for ok in ["/", "/api", "/api/v1.2/x_y-z~"] {
            assert!(is_route_prefix(ok), "{ok}");
        }
        for bad in ["api", "/a!b", "/a%41", "/a;b", "/a:b", "/a b"] {
            assert!(!is_route_prefix(bad), "{bad}");
        }
    }

    /// Splits a raw target the way `http::Uri` would hand it over.
    fn split(raw: &str) -> (&str, Option<&str>) {
        match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        }
    }

    /// Fully percent-decodes, as an upstream would.
    fn decode_all(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let Ok(v) = escape_at(b, i)
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        out
    }

    #[test]
    fn canonical_targets_are_stable_and_mean_what_they_say() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let raw = random_target(&mut rng);
            let (path, query) = split(&raw);
            let Ok(t) = CanonicalTarget::parse(path, query) else {
                continue;
            };
            accepted += 1;
            // Idempotent: the canonical form is its own canonical form.
            assert_eq!(
                CanonicalTarget::parse(&t.path, t.query.as_deref()).as_ref(),
                Ok(&t),
                "{raw}"
            );
            // The canonical form is a valid URI path, unchanged by parsing.
            let uri: http::Uri = t.path_and_query().parse().unwrap();
            assert_eq!(uri.path(), t.path, "{raw}");
            assert_eq!(uri.query(), t.query.as_deref(), "{raw}");
            // Decoding (as an upstream does) yields the same bytes as decoding
            // what the client sent: canonicalising never changes meaning.
            assert_eq!(decode_all(&t.path), decode_all(path), "{raw}");
            // Decoded, the path has no separator or dot segment the gateway
            // did not see.
            let decoded = decode_all(&t.path);
            assert_eq!(
                decoded.iter().filter(|&&b| b == b'/').count(),
                t.path.matches('/').count(),
                "{raw}"
            );
        }
        assert!(accepted > 1_000, "only {accepted} accepted");
    }
}
