//! JSON-RPC 2.0 framing for the MCP adapter: splitting a POST body into
//! messages, saying what each asks for (which Cedar action on which target),
//! and writing the JSON-RPC errors a refused message is answered with.
//!
//! Pure functions over `serde_json::Value`; no IO.

use portcullis_core::ErrorCode;
use portcullis_policy::{McpAction, McpArg};
use serde_json::{Value, json};

use crate::respond::{Denial, DenialDetail};

pub use portcullis_control::json::canonical;

/// The JSON-RPC error code of every refusal by the gateway (a server error in
/// the implementation-defined range). The stable Portcullis code is in
/// `error.data.code`.
pub const GATEWAY_REFUSAL: i64 = -32001;
/// JSON-RPC "parse error".
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "invalid request".
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC "invalid params".
pub const INVALID_PARAMS: i64 = -32602;
/// MCP 2026-07-28 `HeaderMismatch`: the request headers do not match its body.
pub const HEADER_MISMATCH: i64 = -32020;
/// MCP 2026-07-28 `UnsupportedProtocolVersion`, with `data.supported`.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// The `_meta` key of a 2026-07-28 request's protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// The revisions served statelessly, each request carrying its version in
/// `_meta` (MCP 2026-07-28 and later), newest first.
pub const MODERN_REVISIONS: &[&str] = &["2026-07-28"];
/// The handshake revisions (an `initialize` opens a session), newest first.
/// 2025-03-26 is what a request without `MCP-Protocol-Version` speaks (the
/// header came with 2025-06-18); 2024-11-05 is the HTTP+SSE transport's.
pub const LEGACY_REVISIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// What a request without `MCP-Protocol-Version` (and not modern) speaks.
pub const HEADERLESS_REVISION: &str = "2025-03-26";

/// Whether the gateway knows `revision`: what it means is mapped to
/// decisions (unknown methods of any revision are refused anyway).
pub fn known_revision(revision: &str) -> bool {
    MODERN_REVISIONS.contains(&revision) || LEGACY_REVISIONS.contains(&revision)
}

/// The request headers MCP mirrors from the body (2026-07-28): the version,
/// `Mcp-Method` and `Mcp-Name`, as the client sent them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mirrored<'a> {
    /// `MCP-Protocol-Version`.
    pub version: Option<&'a str>,
    /// `Mcp-Method`.
    pub method: Option<&'a str>,
    /// `Mcp-Name`, possibly in the `=?base64?…?=` form.
    pub name: Option<&'a str>,
}

/// Why a message's revision or mirrored headers are refused, before policy:
/// answered with HTTP 400 and the MCP error the revision defines, so a
/// client can tell a modern refusal from a legacy server.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRefused {
    /// The JSON-RPC error code (`HEADER_MISMATCH`, `UNSUPPORTED_PROTOCOL_VERSION`).
    pub rpc: i64,
    /// What is wrong.
    pub message: String,
    /// `error.data` beyond the gateway's own fields.
    pub data: Value,
}

/// The revision a client message speaks, for `context.revision`:
/// a 2026-07-28 request's `_meta` version (which must match the
/// `MCP-Protocol-Version` header and be one the gateway serves, and whose
/// `Mcp-Method`/`Mcp-Name` headers must match its body: the server and any
/// intermediary may route on them, policy decides on the body); the version
/// an `initialize` asks for (the server negotiates it); the header; or
/// [`HEADERLESS_REVISION`]. A header naming a revision the gateway does not
/// know is refused, as a server refuses it.
pub fn revision<'a>(
    message: &'a Value,
    mirrored: Mirrored<'a>,
) -> Result<&'a str, RevisionRefused> {
    let params = message.get("params");
    let meta = params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(META_PROTOCOL_VERSION));
    let unsupported = |requested: &str| RevisionRefused {
        rpc: UNSUPPORTED_PROTOCOL_VERSION,
        message: format!("Unsupported protocol version: `{requested}`"),
        data: json!({
            "supported": MODERN_REVISIONS.iter().chain(LEGACY_REVISIONS).collect::<Vec<_>>(),
            "requested": requested,
        }),
    };
    let mismatch = |what: &str, header: &str, body: &str| RevisionRefused {
        rpc: HEADER_MISMATCH,
        message: format!(
            "Header mismatch: {what} header value `{header}` does not match body value `{body}`"
        ),
        data: json!({}),
    };
    if let Some(meta) = meta {
        let Some(version) = meta.as_str() else {
            return Err(RevisionRefused {
                rpc: INVALID_PARAMS,
                message: format!("`_meta.{META_PROTOCOL_VERSION}` must be a string"),
                data: json!({}),
            });
        };
        if let Some(header) = mirrored.version
            && header != version
        {
            return Err(mismatch("MCP-Protocol-Version", header, version));
        }
        if !MODERN_REVISIONS.contains(&version) {
            return Err(unsupported(version));
        }
        let method = message.get("method").and_then(Value::as_str).unwrap_or("");
        if let Some(header) = mirrored.method
            && header != method
        {
            return Err(mismatch("Mcp-Method", header, method));
        }
        let name = params
            .and_then(|p| p.get("name").or_else(|| p.get("uri")))
            .and_then(Value::as_str);
        if let (Some(header), Some(name)) = (mirrored.name, name)
            && decode_header_value(header).as_deref() != Some(name)
        {
            return Err(mismatch("Mcp-Name", header, name));
        }
        return Ok(version);
    }
    if message.get("method").and_then(Value::as_str) == Some("initialize")
        && let Some(asked) = params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
    {
        return Ok(asked);
    }
    match mirrored.version {
        Some(header) if known_revision(header) => Ok(header),
        Some(header) => Err(unsupported(header)),
        None => Ok(HEADERLESS_REVISION),
    }
}

/// A mirrored header value as text: plain ASCII as is, or the
/// `=?base64?…?=` form decoded (MCP 2026-07-28, "Value Encoding").
fn decode_header_value(value: &str) -> Option<String> {
    use base64::Engine;
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(value.to_string()),
    }
}

/// The JSON-RPC error answering a message refused for its revision or
/// mirrored headers.
pub fn revision_refusal(id: &Value, refused: &RevisionRefused, request_id: &str) -> Value {
    let mut data = refused.data.clone();
    data["code"] = json!(ErrorCode::BadRequest.as_str());
    data["request_id"] = json!(request_id);
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": refused.rpc, "message": refused.message, "data": data },
    })
}

/// Keeps in a `server/discover` result only the revisions the gateway
/// serves: a client must not pick one the gateway would refuse.
pub fn filter_discover(result: &mut Value) {
    if let Some(versions) = result
        .get_mut("supportedVersions")
        .and_then(Value::as_array_mut)
    {
        versions.retain(|v| v.as_str().is_some_and(known_revision));
    }
}

/// A body that cannot be split into messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Framing {
    /// The JSON-RPC error code.
    pub rpc: i64,
    /// The stable Portcullis code (`error.data.code`).
    pub code: ErrorCode,
    /// What is wrong.
    pub message: String,
}

/// Why a message is refused before policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The stable code: `mcp_method_not_allowed` for a method or parameters
    /// the gateway cannot map, `mcp_bad_argument` for an argument with no
    /// canonical form.
    pub code: ErrorCode,
    /// What is wrong.
    pub message: String,
}

impl Refused {
    fn method(message: String) -> Self {
        Refused {
            code: ErrorCode::McpMethodNotAllowed,
            message,
        }
    }
}

/// A POST body: one message, or a batch (an array).
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// The messages in order.
    pub messages: Vec<Value>,
    /// Whether they came as an array (the answer is then an array too).
    pub batch: bool,
}

/// Splits a POST body into messages. An empty batch, or anything that is not
/// a JSON object or array of objects, is refused; so is a body with a number
/// no double holds (`1e400`), which no argument policy could decide
/// (`mcp_bad_argument`).
pub fn parse(bytes: &[u8]) -> Result<Body, Framing> {
    let framing = |rpc, message: String| Framing {
        rpc,
        code: ErrorCode::BadRequest,
        message,
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json reads numbers as doubles and fails on one beyond their
        // range; the body is otherwise well-formed JSON (a test pins the
        // message this relies on).
        if e.to_string().starts_with("number out of range") {
            Framing {
                rpc: INVALID_PARAMS,
                code: ErrorCode::McpBadArgument,
                message: format!(
                    "a number has no canonical form: {e}; send it as a string, or as an integer in the 64-bit range or a number with at most 4 fraction digits"
                ),
            }
        } else {
            framing(PARSE_ERROR, format!("invalid JSON: {e}"))
        }
    })?;
    match value {
        Value::Array(items) if items.is_empty() => {
            Err(framing(INVALID_REQUEST, "empty JSON-RPC batch".into()))
        }
        Value::Array(items) => {
            if items.iter().any(|m| !m.is_object()) {
                return Err(framing(
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
        _ => Err(framing(
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

/// What a client request or notification asks of policy: a Cedar decision
/// on `action` for `target` (empty for the list actions and the session
/// plumbing) with `args` as `context.args` (`argn`, `argd`).
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    /// The action.
    pub action: McpAction,
    /// The tool or prompt name, or resource URI.
    pub target: String,
    /// Top-level arguments in canonical form, as policy sees them.
    pub args: Vec<McpArg>,
    /// `params.arguments` in canonical form (numbers canonical, keys
    /// sorted), `None` when the message has none: what was decided, and
    /// so what is forwarded (see [`set_arguments`]).
    pub arguments: Option<Value>,
}

impl Ask {
    /// Session plumbing, which carries no tool, resource, prompt or
    /// arguments: decided on the route.
    pub fn plumbing(action: McpAction) -> Self {
        Ask {
            action,
            target: String::new(),
            args: Vec::new(),
            arguments: None,
        }
    }
}

/// Says what a request or notification asks for. A method the gateway does
/// not know is refused: default deny covers new protocol features until
/// they are mapped to actions. Session plumbing is decided too, as
/// `mcp_session` (`initialize`, `ping`, `logging/setLevel`,
/// `server/discover`), `open_stream` (`subscriptions/listen`) or `notify`
/// (`notifications/*`).
pub fn ask(method: &str, params: Option<&Value>) -> Result<Ask, Refused> {
    let str_param = |key: &str| -> Result<String, Refused> {
        params
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Refused::method(format!("`{method}` needs a string `params.{key}`")))
    };
    let authorize = |action, target, canonical: Option<portcullis_policy::CanonicalArgs>| {
        let (args, arguments) = match canonical {
            Some(c) => (c.args, Some(c.value)),
            None => (Vec::new(), None),
        };
        Ok(Ask {
            action,
            target,
            args,
            arguments,
        })
    };
    match method {
        // `server/discover` (2026-07-28) asks what a session's `initialize`
        // asked: the server's versions, capabilities and identity.
        "initialize" | "ping" | "logging/setLevel" | "server/discover" => {
            Ok(Ask::plumbing(McpAction::Session))
        }
        // 2026-07-28's long-lived stream of the change notifications the
        // client opts in to: what the GET stream was to a session.
        "subscriptions/listen" => Ok(Ask::plumbing(McpAction::OpenStream)),
        m if m.starts_with("notifications/") => Ok(Ask::plumbing(McpAction::Notify)),
        "tools/call" => authorize(McpAction::CallTool, str_param("name")?, args(params)?),
        "tools/list" => authorize(McpAction::ListTools, String::new(), None),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            authorize(McpAction::ReadResource, str_param("uri")?, None)
        }
        "resources/list" | "resources/templates/list" => {
            authorize(McpAction::ListResources, String::new(), None)
        }
        "prompts/get" => authorize(McpAction::GetPrompt, str_param("name")?, args(params)?),
        "prompts/list" => authorize(McpAction::ListPrompts, String::new(), None),
        // Argument completion reveals what a prompt or resource template
        // accepts: it needs the same permission as using it.
        "completion/complete" => {
            let r = params.and_then(|p| p.get("ref"));
            let field = |k| r.and_then(|r| r.get(k)).and_then(Value::as_str);
            match (field("type"), field("name"), field("uri")) {
                (Some("ref/prompt"), Some(name), _) => {
                    authorize(McpAction::GetPrompt, name.to_string(), None)
                }
                (Some("ref/resource"), _, Some(uri)) => {
                    authorize(McpAction::ReadResource, uri.to_string(), None)
                }
                _ => Err(Refused::method(
                    "`completion/complete` needs a `ref/prompt` or `ref/resource`".into(),
                )),
            }
        }
        other => Err(Refused::method(format!(
            "method `{other}` is not supported by the gateway"
        ))),
    }
}

/// `params.arguments` in canonical form, as policy sees them and the server
/// receives them.
fn args(params: Option<&Value>) -> Result<Option<portcullis_policy::CanonicalArgs>, Refused> {
    match params.and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => portcullis_policy::canonical_arguments(map)
            .map(Some)
            .map_err(|e| Refused {
                code: ErrorCode::McpBadArgument,
                message: e.to_string(),
            }),
        Some(_) => Err(Refused::method(
            "`params.arguments` must be an object".into(),
        )),
    }
}

/// The canonical form of a message's `params.arguments` (every number in
/// canonical form, keys sorted at every level), `Ok(None)` when it has none;
/// refused with `mcp_bad_argument` when a number has no canonical form.
/// [`ask`] gives the same value in [`Ask`]'s `arguments`.
pub fn canonical_arguments(params: Option<&Value>) -> Result<Option<Value>, Refused> {
    Ok(args(params)?.map(|c| c.value))
}

/// Puts the canonical `arguments` (from [`Ask`]) into the
/// message, so the server receives exactly what policy decided. Returns
/// whether the message changed (its bytes must then be written anew).
pub fn set_arguments(message: &mut Value, arguments: Option<Value>) -> bool {
    let Some(arguments) = arguments else {
        return false;
    };
    match message
        .get_mut("params")
        .and_then(|p| p.get_mut("arguments"))
    {
        Some(current) if *current != arguments => {
            *current = arguments;
            true
        }
        _ => false,
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
pub fn framing_error(framing: &Framing, request_id: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": framing.rpc,
            "message": framing.message,
            "data": { "code": framing.code.as_str(), "request_id": request_id },
        },
    })
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
                    Ok(Ask {
                        action,
                        target,
                        args,
                        ..
                    }) => {
                        let args: Vec<(&str, &str)> = args
                            .iter()
                            .map(|a| (a.name.as_str(), a.text.as_str()))
                            .collect();
                        format!("{} {target} {args:?}", action.as_str())
                    }
                    Err(e) => format!("refused: {} {}", e.code.as_str(), e.message),
                }
            }
        };
        assert_eq!(got, expect, "{message}");
    }

    fn check_revision(
        message: Value,
        (version, method, name): (Option<&str>, Option<&str>, Option<&str>),
        expect: &str,
    ) {
        let mirrored = Mirrored {
            version,
            method,
            name,
        };
        let got = match revision(&message, mirrored) {
            Ok(r) => r.to_string(),
            Err(e) => format!("{} {}", e.rpc, e.message),
        };
        assert_eq!(got, expect, "{message}");
    }

    #[test]
    fn each_message_names_its_revision_and_modern_headers_match_the_body() {
        let modern = |method: &str, params: Value| {
            let mut p = params;
            p["_meta"] = json!({ META_PROTOCOL_VERSION: "2026-07-28" });
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": p})
        };
        let call = modern("tools/call", json!({"name": "get_weather"}));
        check_revision(
            call.clone(),
            (Some("2026-07-28"), Some("tools/call"), Some("get_weather")),
            "2026-07-28",
        );
        // The headers are optional to the gateway, never contradictory.
        check_revision(call.clone(), (None, None, None), "2026-07-28");
        check_revision(
            call.clone(),
            (Some("2025-11-25"), None, None),
            "-32020 Header mismatch: MCP-Protocol-Version header value `2025-11-25` does not match body value `2026-07-28`",
        );
        check_revision(
            call.clone(),
            (None, Some("tools/list"), None),
            "-32020 Header mismatch: Mcp-Method header value `tools/list` does not match body value `tools/call`",
        );
        check_revision(
            call.clone(),
            (None, None, Some("other")),
            "-32020 Header mismatch: Mcp-Name header value `other` does not match body value `get_weather`",
        );
        // The base64 form of Mcp-Name is decoded before the comparison.
        let odd = modern("resources/read", json!({"uri": "file:///Hello, 世界"}));
        use base64::Engine;
        let encoded = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode("file:///Hello, 世界")
        );
        check_revision(odd, (None, None, Some(&encoded)), "2026-07-28");
        // A modern version the gateway does not serve.
        let future = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover",
            "params": {"_meta": {META_PROTOCOL_VERSION: "2099-01-01"}}});
        check_revision(
            future,
            (None, None, None),
            "-32022 Unsupported protocol version: `2099-01-01`",
        );
        // Handshake revisions: what initialize asks, else the header.
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25"}});
        check_revision(init, (None, None, None), "2025-11-25");
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        check_revision(list.clone(), (Some("2025-06-18"), None, None), "2025-06-18");
        check_revision(list.clone(), (None, None, None), "2025-03-26");
        check_revision(
            list,
            (Some("1999-01-01"), None, None),
            "-32022 Unsupported protocol version: `1999-01-01`",
        );
    }

    #[test]
    fn a_discover_result_offers_only_revisions_the_gateway_serves() {
        let mut result = json!({"supportedVersions": ["2099-01-01", "2026-07-28", "2025-11-25"], "capabilities": {}});
        filter_discover(&mut result);
        assert_eq!(
            result["supportedVersions"],
            json!(["2026-07-28", "2025-11-25"])
        );
    }

    #[test]
    fn messages_map_to_actions() {
        check_ask(
            r#"{"jsonrpc":"2.0","id":"d","method":"server/discover","params":{"_meta":{}}}"#,
            "mcp_session  []",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":"l","method":"subscriptions/listen","params":{}}"#,
            "open_stream  []",
        );
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
            "mcp_session  []",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            "mcp_session  []",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "notify  []",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","method":"notifications/anything/new"}"#,
            "notify  []",
        );
        check_ask(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#, "response");
        check_ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"tasks/cancel"}"#,
            "refused: mcp_method_not_allowed method `tasks/cancel` is not supported by the gateway",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            "refused: mcp_method_not_allowed `tools/call` needs a string `params.name`",
        );
        check_ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[1]}}"#,
            "refused: mcp_method_not_allowed `params.arguments` must be an object",
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
        assert_eq!(parse(b"[]").unwrap_err().rpc, INVALID_REQUEST);
        assert_eq!(parse(b"[1]").unwrap_err().rpc, INVALID_REQUEST);
        assert_eq!(parse(b"\"x\"").unwrap_err().rpc, INVALID_REQUEST);
        let e = parse(b"{").unwrap_err();
        assert_eq!((e.rpc, e.code), (PARSE_ERROR, ErrorCode::BadRequest));
    }

    /// `1e400` fits no double: serde_json refuses it with the message
    /// `parse` recognises, and the body is refused with `mcp_bad_argument`.
    #[test]
    fn a_number_no_double_holds_is_a_bad_argument() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1e400}}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":[-1E+400]}}}]"#,
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!(
                (e.rpc, e.code),
                (INVALID_PARAMS, ErrorCode::McpBadArgument),
                "{body}"
            );
            assert!(e.message.contains("number out of range"), "{}", e.message);
            let v = framing_error(&e, "r1");
            assert_eq!(v["error"]["data"]["code"], "mcp_bad_argument");
            assert_eq!(v["id"], Value::Null);
        }
        // Not every parse failure is one.
        assert_eq!(
            parse(b"{\"a\":1e}").unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    fn authorize(message: &str) -> Result<(Vec<McpArg>, Option<Value>), Refused> {
        let v: Value = serde_json::from_str(message).unwrap();
        let Ask {
            args, arguments, ..
        } = ask(v["method"].as_str().unwrap(), v.get("params"))?;
        Ok((args, arguments))
    }

    #[test]
    fn arguments_are_canonical() {
        let mut texts = Vec::new();
        for spelling in ["1000", "1e3", "1000.0", "10E2", "1.0e3"] {
            let message = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{{"z":{{"k":[{spelling}]}},"a":{spelling}}}}}}}"#
            );
            let (args, arguments) = authorize(&message).unwrap();
            assert_eq!(
                args,
                [
                    McpArg {
                        name: "a".into(),
                        text: "1000".into(),
                        long: Some(1000),
                        decimal: Some("1000.0".into()),
                    },
                    McpArg::string("z", r#"{"k":[1000]}"#),
                ],
                "{spelling}"
            );
            let arguments = arguments.unwrap();
            assert_eq!(canonical(&arguments), r#"{"a":1000,"z":{"k":[1000]}}"#);
            let v: Value = serde_json::from_str(&message).unwrap();
            assert_eq!(
                canonical_arguments(v.get("params")).unwrap(),
                Some(arguments.clone())
            );
            // The message forwarded carries the canonical arguments.
            let mut forwarded = v.clone();
            assert_eq!(
                set_arguments(&mut forwarded, Some(arguments)),
                spelling != "1000"
            );
            texts.push(canonical(&forwarded));
        }
        // Key order aside (a map compares equal in any order, and an
        // unchanged message keeps its bytes), every spelling forwards one
        // message.
        texts.dedup();
        assert_eq!(texts.len(), 1, "{texts:?}");
        // prompts/get arguments too; no arguments, no change.
        let (args, _) = authorize(
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","arguments":{"n":2.50}}}"#,
        )
        .unwrap();
        assert_eq!((args[0].text.as_str(), args[0].long), ("2.5", None));
        let (args, arguments) =
            authorize(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"p"}}"#)
                .unwrap();
        assert!(args.is_empty() && arguments.is_none());
        let mut m = json!({"params": {"name": "p"}});
        assert!(!set_arguments(&mut m, None));
    }

    #[test]
    fn arguments_without_a_canonical_form_are_refused() {
        for number in [
            "0.1234567",
            "1e19",
            "18446744073709551616",
            "9223372036854775808",
        ] {
            let message = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{{"a":{{"b":{number}}}}}}}}}"#
            );
            let e = authorize(&message).unwrap_err();
            assert_eq!(e.code, ErrorCode::McpBadArgument, "{number}");
            assert!(e.message.starts_with("argument `/a/b`"), "{}", e.message);
        }
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
