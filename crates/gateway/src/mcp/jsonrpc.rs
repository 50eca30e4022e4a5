//! JSON-RPC 2.0 framing for the MCP adapter: splitting a POST body into
//! messages, saying what each asks for (which Cedar action on which target),
//! and writing the JSON-RPC errors a refused message is answered with.
//!
//! Pure functions over `serde_json::Value`; no IO.

use portcullis_core::ErrorCode;
use portcullis_policy::McpAction;
use serde_json::{Value, json};

use crate::respond::{Denial, DenialDetail};

/// The JSON-RPC error code of every refusal by the gateway (a server error in
/// the implementation-defined range). The stable Portcullis code is in
/// `error.data.code`.
pub const GATEWAY_REFUSAL: i64 = -32001;
/// JSON-RPC "parse error".
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "invalid request".
pub const INVALID_REQUEST: i64 = -32600;

/// A POST body: one message, or a batch (an array).
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// The messages in order.
    pub messages: Vec<Value>,
    /// Whether they came as an array (the answer is then an array too).
    pub batch: bool,
}

/// Splits a POST body into messages. An empty batch, or anything that is not
/// a JSON object or array of objects, is refused.
pub fn parse(bytes: &[u8]) -> Result<Body, (i64, String)> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| (PARSE_ERROR, format!("invalid JSON: {e}")))?;
    match value {
        Value::Array(items) if items.is_empty() => {
            Err((INVALID_REQUEST, "empty JSON-RPC batch".into()))
        }
        Value::Array(items) => {
            if items.iter().any(|m| !m.is_object()) {
                return Err((
                    INVALID_REQUEST,
                    "a JSON-RPC batch may hold only objects".into(),
                ));
            }
            Ok(Body {
                messages: items,
                batch: true,
            })
        }
        Value::Object(_) => Ok(Body {
            messages: vec![value],
            batch: false,
        }),
        _ => Err((
            INVALID_REQUEST,
            "a JSON-RPC message must be an object".into(),
        )),
    }
}

/// What one client message is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind<'a> {
    /// A request, answered by a response with the same id.
    Request {
        /// Its id.
        id: &'a Value,
        /// Its method.
        method: &'a str,
    },
    /// A notification (no id, no answer).
    Notification {
        /// Its method.
        method: &'a str,
    },
    /// The client's answer to a request the server sent (sampling, roots,
    /// elicitation).
    Response,
}

/// Classifies a message. Malformed messages are refused with a reason.
pub fn kind(message: &Value) -> Result<Kind<'_>, String> {
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("`jsonrpc` must be \"2.0\"".into());
    }
    let id = message.get("id").filter(|id| !id.is_null());
    if let Some(id) = id
        && !(id.is_string() || id.is_number())
    {
        return Err("`id` must be a string or a number".into());
    }
    match (message.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => Ok(Kind::Request { id, method }),
        (Some(Value::String(method)), None) => Ok(Kind::Notification { method }),
        (Some(_), _) => Err("`method` must be a string".into()),
        (None, Some(_)) if message.get("result").is_some() || message.get("error").is_some() => {
            Ok(Kind::Response)
        }
        (None, _) => {
            Err("a message needs a `method`, or a `result` or `error` with an `id`".into())
        }
    }
}

/// Removes every top-level field JSON-RPC 2.0 does not define for the
/// message's kind (`jsonrpc`, `id`, `method`, `params`; `result`, `error` for
/// answers): no field that a decision did not look at reaches the server.
pub fn strip_unknown_fields(message: &mut Value) {
    if let Value::Object(map) = message {
        map.retain(|k, _| {
            matches!(
                k.as_str(),
                "jsonrpc" | "id" | "method" | "params" | "result" | "error"
            )
        });
    }
}

/// What a client request asks of policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// A Cedar decision on `action` for `target` (empty for the list actions)
    /// with `args` as `context.args`.
    Authorize {
        /// The action.
        action: McpAction,
        /// The tool or prompt name, or resource URI.
        target: String,
        /// Top-level arguments, values as strings (other JSON compact).
        args: Vec<(String, String)>,
    },
    /// Session plumbing that carries no data of its own (`initialize`,
    /// `ping`, `logging/setLevel`, notifications, answers to the server's
    /// requests): passed on once the agent is authenticated.
    Plumbing,
}

/// Says what a request or notification asks for. A method the gateway does
/// not know is refused: default deny covers new protocol features until
/// they are mapped to actions.
pub fn ask(method: &str, params: Option<&Value>) -> Result<Ask, String> {
    let str_param = |key: &str| -> Result<String, String> {
        params
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("`{method}` needs a string `params.{key}`"))
    };
    let authorize = |action, target, args| {
        Ok(Ask::Authorize {
            action,
            target,
            args,
        })
    };
    match method {
        "initialize" | "ping" | "logging/setLevel" => Ok(Ask::Plumbing),
        m if m.starts_with("notifications/") => Ok(Ask::Plumbing),
        "tools/call" => authorize(McpAction::CallTool, str_param("name")?, args(params)?),
        "tools/list" => authorize(McpAction::ListTools, String::new(), Vec::new()),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            authorize(McpAction::ReadResource, str_param("uri")?, Vec::new())
        }
        "resources/list" | "resources/templates/list" => {
            authorize(McpAction::ListResources, String::new(), Vec::new())
        }
        "prompts/get" => authorize(McpAction::GetPrompt, str_param("name")?, args(params)?),
        "prompts/list" => authorize(McpAction::ListPrompts, String::new(), Vec::new()),
        // Argument completion reveals what a prompt or resource template
        // accepts: it needs the same permission as using it.
        "completion/complete" => {
            let r = params.and_then(|p| p.get("ref"));
            let field = |k| r.and_then(|r| r.get(k)).and_then(Value::as_str);
            match (field("type"), field("name"), field("uri")) {
                (Some("ref/prompt"), Some(name), _) => {
                    authorize(McpAction::GetPrompt, name.to_string(), Vec::new())
                }
                (Some("ref/resource"), _, Some(uri)) => {
                    authorize(McpAction::ReadResource, uri.to_string(), Vec::new())
                }
                _ => Err("`completion/complete` needs a `ref/prompt` or `ref/resource`".into()),
            }
        }
        other => Err(format!("method `{other}` is not supported by the gateway")),
    }
}

/// `params.arguments` as policy sees them.
fn args(params: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    match params.and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => Ok(map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()),
        Some(_) => Err("`params.arguments` must be an object".into()),
    }
}

/// The JSON-RPC error answering a refused request.
pub fn refusal(
    id: &Value,
    code: ErrorCode,
    message: &str,
    request_id: &str,
    policies: &[String],
) -> Value {
    let mut data = json!({ "code": code.as_str(), "request_id": request_id });
    if !policies.is_empty() {
        data["policies"] = json!(policies);
    }
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": GATEWAY_REFUSAL, "message": message, "data": data },
    })
}

/// The JSON-RPC error answering a request a pipeline stage refused, with
/// what the client needs to act on it (an approval ticket), as the HTTP
/// error carries it.
pub fn denial(id: &Value, denial: &Denial, request_id: &str) -> Value {
    let mut v = refusal(
        id,
        denial.code,
        &denial.message,
        request_id,
        &denial.policies,
    );
    if let Some(DenialDetail::Ticket { id, expires_ms }) = &denial.detail {
        v["error"]["data"]["ticket"] = json!(id);
        v["error"]["data"]["ticket_expires_ms"] = json!(expires_ms);
    }
    v
}

/// The JSON-RPC error answering a body that could not be framed (`id` null).
pub fn framing_error(code: i64, message: &str, request_id: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": code,
            "message": message,
            "data": { "code": ErrorCode::BadRequest.as_str(), "request_id": request_id },
        },
    })
}

/// Canonical JSON text: object keys sorted at every level, no whitespace.
/// Digests of tool definitions are taken over it, so a server that reorders
/// keys does not look like a changed tool.
pub fn canonical(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&map[k]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // With serde_json's default (sorted) maps, insertion order is already
    // sorted; sorting here keeps the digest stable if `preserve_order` is
    // ever enabled by another crate.
    sorted(value).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn strip_unknown_fields_keeps_only_json_rpc_fields() {
        let mut m = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "x"}, "extra": {"name": "y"}, "Method": "z"});
        strip_unknown_fields(&mut m);
        assert_eq!(
            m,
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}})
        );
    }

    use super::*;

    fn check_ask(message: &str, expect: &str) {
        let v: Value = serde_json::from_str(message).unwrap();
        let got = match kind(&v) {
            Err(e) => format!("malformed: {e}"),
            Ok(Kind::Response) => "response".to_string(),
            Ok(Kind::Request { method, .. } | Kind::Notification { method }) => {
                match ask(method, v.get("params")) {
                    Ok(Ask::Plumbing) => "plumbing".to_string(),
                    Ok(Ask::Authorize {
                        action,
                        target,
                        args,
                    }) => format!("{} {target} {args:?}", action.as_str()),
                    Err(e) => format!("refused: {e}"),
                }
            }
        };
        assert_eq!(got, expect, "{message}");
    }

    #[test]
    fn messages_map_to_actions() {
        check_ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi","n":3,"o":{"a":[1]}}}}"#,
            r#"call_tool echo [("message", "hi"), ("n", "3"), ("o", "{\"a\":[1]}")]"#,
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{"cursor":"x"}}"#,
            "list_tools  []",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///etc/hosts"}}"#,
            "read_resource file:///etc/hosts []",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"p","arguments":{"x":"y"}}}"#,
            r#"get_prompt p [("x", "y")]"#,
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"}}}"#,
            "get_prompt p []",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
            "plumbing",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "plumbing",
        );
        check_ask(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#, "response");
        check_ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"tasks/cancel"}"#,
            "refused: method `tasks/cancel` is not supported by the gateway",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            "refused: `tools/call` needs a string `params.name`",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[1]}}"#,
            "refused: `params.arguments` must be an object",
        );
        check_ask(
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            "malformed: `jsonrpc` must be \"2.0\"",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
            "malformed: `id` must be a string or a number",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":1}"#,
            "malformed: a message needs a `method`, or a `result` or `error` with an `id`",
        );
    }

    #[test]
    fn bodies() {
        assert!(
            !parse(br#"{"jsonrpc":"2.0","method":"ping","id":1}"#)
                .unwrap()
                .batch
        );
        let b = parse(br#"[{"a":1},{"b":2}]"#).unwrap();
        assert!(b.batch && b.messages.len() == 2);
        assert_eq!(parse(b"[]").unwrap_err().0, INVALID_REQUEST);
        assert_eq!(parse(b"[1]").unwrap_err().0, INVALID_REQUEST);
        assert_eq!(parse(b"\"x\"").unwrap_err().0, INVALID_REQUEST);
        assert_eq!(parse(b"{").unwrap_err().0, PARSE_ERROR);
    }

    #[test]
    fn canonical_text_ignores_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b":{"y":1,"x":[{"q":1,"p":2}]},"a":"s"}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":"s","b":{"x":[{"p":2,"q":1}],"y":1}}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&a),
            r#"{"a":"s","b":{"x":[{"p":2,"q":1}],"y":1}}"#
        );
    }

    #[test]
    fn refusals_carry_the_stable_code() {
        let v = refusal(
            &json!(4),
            ErrorCode::Forbidden,
            "denied by policy",
            "rid",
            &["default-deny".into()],
        );
        assert_eq!(v["id"], 4);
        assert_eq!(v["error"]["code"], GATEWAY_REFUSAL);
        assert_eq!(v["error"]["data"]["code"], "forbidden");
        assert_eq!(v["error"]["data"]["policies"][0], "default-deny");
    }

    #[test]
    fn a_denial_carries_its_ticket() {
        let mut d = Denial::new(ErrorCode::ApprovalRequired, "held");
        d.policies = vec!["analytics:approve_writes".into()];
        d.detail = Some(DenialDetail::Ticket {
            id: "t1".into(),
            expires_ms: 7,
        });
        let v = denial(&json!(4), &d, "r1");
        assert_eq!(v["id"], 4);
        assert_eq!(v["error"]["code"], GATEWAY_REFUSAL);
        assert_eq!(
            v["error"]["data"],
            json!({"code": "approval_required", "request_id": "r1",
                   "policies": ["analytics:approve_writes"], "ticket": "t1", "ticket_expires_ms": 7})
        );
    }
}
