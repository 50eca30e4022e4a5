//! The purpose a request declares: what the caller says it reads a
//! dataset's data for, `context.purpose` in `read_data` decisions (the
//! shipped policies permit reading a dataset only for a purpose in its
//! `purposes`). One carrier per protocol, so a request cannot say two
//! things at once:
//!
//! - HTTP and LLM routes: the request header `Portcullis-Purpose`, read by
//!   decode (which removes it: the upstream is not told) and kept in the
//!   request's extensions as a [`Declared`];
//! - MCP routes: each message's `params._meta["portcullis/purpose"]`, since
//!   one POST may carry messages for different purposes. The header is
//!   refused there (`bad_request`), so nobody believes it was honoured.
//!
//! A value is 1 to [`MAX_LEN`] characters of `A-Z a-z 0-9 . _ - : /`; any
//! other value, or two headers, is refused with 400 `bad_request`. An
//! approval binds the purpose with the call (`approvals show` lists it
//! among the bound headers as `portcullis-purpose`).

use http::HeaderMap;
use portcullis_core::ErrorCode;
use serde_json::Value;

use crate::respond::Denial;

/// The header HTTP and LLM requests declare their purpose in.
pub const HEADER: &str = crate::approvals::PURPOSE_HEADER;

/// The `params._meta` key MCP messages declare their purpose in.
pub const MCP_META_KEY: &str = "portcullis/purpose";

/// The longest purpose accepted.
pub const MAX_LEN: usize = 128;

/// The purpose decode read from the header, kept in the request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared(pub String);

/// Whether `s` is a purpose the gateway accepts.
pub fn valid(s: &str) -> bool {
    (1..=MAX_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'))
}

fn invalid(what: &str) -> String {
    format!("{what}: a purpose is 1-{MAX_LEN} characters of A-Z, a-z, 0-9, `.`, `_`, `-`, `:`, `/`")
}

/// Takes the `Portcullis-Purpose` header out of `headers`: `None` when
/// there is none; refused when there are two or the value is not valid.
pub fn take_header(headers: &mut HeaderMap) -> Result<Option<Declared>, Denial> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Denial::new(
            ErrorCode::BadRequest,
            "more than one Portcullis-Purpose header",
        ));
    }
    let value = first
        .to_str()
        .ok()
        .filter(|v| valid(v))
        .map(str::to_string)
        .ok_or_else(|| Denial::new(ErrorCode::BadRequest, invalid("Portcullis-Purpose")))?;
    headers.remove(HEADER);
    Ok(Some(Declared(value)))
}

/// The purpose an MCP message declares in `params._meta`; "" when none.
pub fn of_message(message: &Value) -> Result<&str, String> {
    let Some(value) = message
        .get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(MCP_META_KEY))
    else {
        return Ok("");
    };
    value
        .as_str()
        .filter(|v| valid(v))
        .ok_or_else(|| invalid(&format!("`_meta.{MCP_META_KEY}`")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check_header(values: &[&str], expect: Result<Option<&str>, ()>) {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, v.parse().unwrap());
        }
        let got = take_header(&mut h).map(|d| d.map(|d| d.0)).map_err(|_| ());
        assert_eq!(got, expect.map(|o| o.map(str::to_string)), "{values:?}");
        if got.is_ok() {
            assert!(h.get(HEADER).is_none(), "the header is not forwarded");
        }
    }

    #[test]
    fn the_header_is_one_valid_value() {
        check_header(&[], Ok(None));
        check_header(&["fraud-detection"], Ok(Some("fraud-detection")));
        check_header(&["eu:claims/review_2"], Ok(Some("eu:claims/review_2")));
        check_header(&["a", "b"], Err(()));
        check_header(&["two words"], Err(()));
        check_header(&[""], Err(()));
        check_header(&[&"x".repeat(MAX_LEN + 1)], Err(()));
    }

    #[test]
    fn mcp_messages_declare_it_in_meta() {
        let m = |meta: Value| json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "_meta": meta}});
        assert_eq!(
            of_message(&m(json!({MCP_META_KEY: "support"}))),
            Ok("support")
        );
        assert_eq!(of_message(&m(json!({}))), Ok(""));
        assert_eq!(
            of_message(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
            Ok("")
        );
        assert!(of_message(&m(json!({MCP_META_KEY: 7}))).is_err());
        assert!(of_message(&m(json!({MCP_META_KEY: "a b"}))).is_err());
    }
}
