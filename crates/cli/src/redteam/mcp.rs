//! MCP JSON differentials: messages a lenient parser (the upstream's) could
//! read otherwise than the gateway did — duplicate keys, members JSON-RPC
//! does not define, a tool call hidden in a batch or in a differently cased
//! method — and a call to a tool the server never listed. Every probe names
//! a random unlisted tool; it holds when the gateway refuses the message
//! (a JSON-RPC error carrying the gateway's code in `error.data.code`, or
//! an HTTP 4xx) or when that name never comes back from the upstream. With
//! an upstream that says back what it ran (the test server does), a name
//! that reached it is seen; with one that does not, only refusals are.

use serde_json::Value;

use super::Target;
use super::report::{Family, Probe};
use super::wire::{Answer, Tls};

const FAMILY: &str = "mcp-differentials";
const VERSION: &str = "2025-06-18";

/// Whether the gateway refused `id` (or the only message) in `answer`.
pub(super) fn refused(answer: &Answer, id: Option<i64>) -> bool {
    if answer.status >= 400 {
        return true;
    }
    let body = mcp_json(answer);
    let messages: Vec<&Value> = match &body {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    messages.iter().any(|m| {
        let matches = id.is_none_or(|id| m["id"].as_i64() == Some(id));
        matches && m["error"]["data"]["code"].is_string()
    })
}

/// The JSON of an answer sent as JSON or as one SSE event.
pub(super) fn mcp_json(answer: &Answer) -> Value {
    if let Ok(v) = serde_json::from_str::<Value>(&answer.body) {
        return v;
    }
    let data: Vec<&str> = answer
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    match data.as_slice() {
        [one] => serde_json::from_str(one).unwrap_or(Value::Null),
        many => Value::Array(
            many.iter()
                .filter_map(|d| serde_json::from_str(d).ok())
                .collect(),
        ),
    }
}

/// A JSON-RPC POST of `body` to the MCP endpoint at `route`, on `session`.
pub(super) fn post(
    t: &Target,
    route: &str,
    session: Option<&str>,
    body: &str,
) -> anyhow::Result<Answer> {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", VERSION),
    ];
    if let Some(s) = session {
        headers.push(("Mcp-Session-Id", s));
    }
    t.wire.request(Tls::Agent, "POST", route, &headers, body)
}

/// Opens a session on `route` as a client does (`initialize`, the
/// `initialized` notification, `tools/list`, which also pins the tools):
/// the session id and the listed tools, or why it could not.
pub(super) fn open(t: &Target, route: &str) -> Result<(Option<String>, Value), String> {
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{VERSION}","capabilities":{{}},"clientInfo":{{"name":"portcullis-redteam","version":"1"}}}}}}"#
    );
    let session = match post(t, route, None, &init) {
        Ok(a) if a.status < 300 && !refused(&a, Some(1)) => {
            a.header("mcp-session-id").map(str::to_string)
        }
        Ok(a) => {
            return Err(format!(
                "`initialize` on `{route}` was refused (HTTP {}, {})",
                a.status,
                a.code().unwrap_or_default()
            ));
        }
        Err(e) => return Err(format!("`{route}`: {e:#}")),
    };
    let _ = post(
        t,
        route,
        session.as_deref(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    match post(
        t,
        route,
        session.as_deref(),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    ) {
        Ok(a) if !refused(&a, Some(2)) => Ok((session, mcp_json(&a))),
        Ok(a) => Err(format!(
            "this agent may not list the tools of `{route}` ({})",
            a.code().unwrap_or_default()
        )),
        Err(e) => Err(format!("`{route}`: {e:#}")),
    }
}

pub fn differentials(t: &Target) -> Family {
    let Some(route) = t.routes.mcp.as_deref() else {
        return Family::skipped(FAMILY, "no MCP route: pass --routes mcp=PREFIX");
    };
    let (session, listed) = match open(t, route) {
        Ok(opened) => opened,
        Err(why) => return Family::skipped(FAMILY, why),
    };
    let session = session.as_deref();
    let post = |session: Option<&str>, body: &str| post(t, route, session, body);
    let Some(allowed) = listed["result"]["tools"][0]["name"]
        .as_str()
        .map(str::to_string)
    else {
        return Family::skipped(FAMILY, format!("`{route}` lists no tool to compare with"));
    };
    let unlisted = format!("rt-unlisted-{}", hex::encode(rand::random::<[u8; 4]>()));
    let cases: Vec<(&str, String, Option<i64>)> = vec![
        (
            "unlisted-tool",
            format!(
                r#"{{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{{"name":"{unlisted}","arguments":{{}}}}}}"#
            ),
            Some(10),
        ),
        (
            "duplicate-tool-name",
            format!(
                r#"{{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{{"name":"{allowed}","name":"{unlisted}","arguments":{{}}}}}}"#
            ),
            Some(11),
        ),
        (
            "duplicate-method",
            format!(
                r#"{{"jsonrpc":"2.0","id":12,"method":"tools/list","method":"tools/call","params":{{"name":"{unlisted}","arguments":{{}}}}}}"#
            ),
            Some(12),
        ),
        (
            "unknown-top-level-member",
            format!(
                r#"{{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{{"name":"{allowed}","arguments":{{}}}},"name":"{unlisted}"}}"#
            ),
            Some(13),
        ),
        (
            "tool-call-in-batch",
            format!(
                r#"[{{"jsonrpc":"2.0","id":14,"method":"tools/list"}},{{"jsonrpc":"2.0","id":15,"method":"tools/call","params":{{"name":"{unlisted}","arguments":{{}}}}}}]"#
            ),
            Some(15),
        ),
        (
            "method-case",
            format!(
                r#"{{"jsonrpc":"2.0","id":16,"method":"Tools/Call","params":{{"name":"{unlisted}","arguments":{{}}}}}}"#
            ),
            Some(16),
        ),
        (
            "id-as-exponent",
            format!(
                r#"{{"jsonrpc":"2.0","id":1e3,"method":"tools/call","params":{{"name":"{unlisted}","arguments":{{}}}}}}"#
            ),
            None,
        ),
        (
            "id-as-float",
            format!(
                r#"{{"jsonrpc":"2.0","id":1000.0,"method":"tools/call","params":{{"name":"{unlisted}","arguments":{{}}}}}}"#
            ),
            None,
        ),
        (
            "unicode-escaped-name",
            format!(
                r#"{{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{{"name":"\u0072{}","arguments":{{}}}}}}"#,
                &unlisted[1..]
            ),
            Some(17),
        ),
    ];
    let probes = cases
        .iter()
        .map(|(name, body, id)| {
            let request = format!("POST {route} HTTP/1.1 {body}");
            match post(session, body) {
                Err(e) => Probe::unanswered(name, &request, &e, true),
                Ok(a) => {
                    let (held, why) = if refused(&a, *id) {
                        (
                            true,
                            format!(
                                "refused by the gateway (HTTP {}, {})",
                                a.status,
                                a.code().unwrap_or_default()
                            ),
                        )
                    } else if a.body.contains(&unlisted) {
                        (
                            false,
                            format!("HTTP {}: `{unlisted}` reached the upstream", a.status),
                        )
                    } else {
                        (
                            true,
                            format!("HTTP {}: forwarded without `{unlisted}`", a.status),
                        )
                    };
                    Probe::from_answer(name, &request, &a, held, why)
                }
            }
        })
        .collect();
    Family::judged(FAMILY, probes)
}
