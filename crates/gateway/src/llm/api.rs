//! The OpenAI-compatible API as the gateway reads it: which endpoint a
//! request is for, its model and streaming flags, the texts the content
//! guard must see (and on which channel), and the one rewrite the gateway
//! makes to a request (asking a stream for its usage).

use portcullis_core::ErrorCode;
use portcullis_guard::Channel;
use serde_json::Value;

use crate::respond::Denial;

/// The endpoints a `kind = "llm"` route serves (paths below the route prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models`, answered by the gateway.
    Models,
    /// `GET /v1/models/{model}`, answered by the gateway.
    Model(String),
}

const SUPPORTED: &str =
    "POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models and GET /v1/models/{model}";

/// The endpoint of `method rest` (`rest` is the path below the route prefix).
pub fn endpoint(method: &http::Method, rest: &str, route: &str) -> Result<Endpoint, Denial> {
    let (want, endpoint) = match rest.trim_end_matches('/') {
        "/v1/chat/completions" => (http::Method::POST, Endpoint::ChatCompletions),
        "/v1/embeddings" => (http::Method::POST, Endpoint::Embeddings),
        "/v1/models" => (http::Method::GET, Endpoint::Models),
        other => match other.strip_prefix("/v1/models/") {
            Some(model) if !model.is_empty() => {
                (http::Method::GET, Endpoint::Model(model.to_string()))
            }
            _ => {
                return Err(Denial::new(
                    ErrorCode::RouteNotFound,
                    format!("route `{route}` serves the OpenAI-compatible API: {SUPPORTED}"),
                ));
            }
        },
    };
    if *method != want {
        return Err(Denial::new(
            ErrorCode::MethodNotAllowed,
            format!("`{rest}` takes {want}"),
        ));
    }
    Ok(endpoint)
}

/// A parsed completion or embeddings request.
#[derive(Debug)]
pub struct Call {
    /// The request body.
    pub body: Value,
    /// Its `model`.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// The gateway added `stream_options.include_usage` (the client did not
    /// ask for usage), so the usage chunk is taken out of the stream again.
    pub strip_usage: bool,
}

/// Parses a request body and, for a stream on a route that counts tokens
/// (`ask_usage`), asks for its usage.
pub fn parse(bytes: &[u8], ask_usage: bool) -> Result<Call, Denial> {
    let bad = |m: &str| Denial::new(ErrorCode::BadRequest, m);
    let mut body: Value =
        serde_json::from_slice(bytes).map_err(|_| bad("the request body is not valid JSON"))?;
    let Some(obj) = body.as_object_mut() else {
        return Err(bad("the request body must be a JSON object"));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(bad("`model` must be a non-empty string")),
        None => return Err(bad("`model` is required")),
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`stream` must be a boolean")),
    };
    let mut strip_usage = false;
    if stream && ask_usage {
        // Budgets count tokens from the upstream's `usage`, which a stream
        // carries only when asked for.
        let options = obj
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Default::default()));
        if options.is_null() {
            *options = Value::Object(Default::default());
        }
        let Some(options) = options.as_object_mut() else {
            return Err(bad("`stream_options` must be an object"));
        };
        if options.get("include_usage") != Some(&Value::Bool(true)) {
            options.insert("include_usage".into(), Value::Bool(true));
            strip_usage = true;
        }
    }
    Ok(Call {
        body,
        model,
        stream,
        strip_usage,
    })
}

/// The channel a message's text is scanned on: tool results (`role` `tool`,
/// or the older `function`) are indirect input, anything else is input.
fn channel_of(role: Option<&str>) -> Channel {
    match role {
        Some("tool") | Some("function") => Channel::ToolOutput,
        _ => Channel::Input,
    }
}

/// Calls `f` with the JSON pointer, the text and its channel of every
/// string of the request body: every value and every key at any depth (the
/// generic walk of pipeline/inspect.rs), so `messages[].name`, tool
/// descriptions, `user`, `metadata`, `prediction`, non-text content parts and
/// any field a later API adds are read as message contents are. The strings
/// of a tool result message (`role` `tool`, or the older `function`) are on
/// the tool-output channel, every other string on the input channel. `f`
/// returns whether the string holds a secret (see `walk_json`).
pub fn for_each_text(
    endpoint: &Endpoint,
    body: &mut Value,
    f: &mut dyn FnMut(&str, &mut String, Channel) -> bool,
) {
    if matches!(endpoint, Endpoint::Models | Endpoint::Model(_)) {
        return;
    }
    let tool_results: Vec<String> = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, m)| channel_of(m.get("role").and_then(Value::as_str)) == Channel::ToolOutput)
        .map(|(i, _)| format!("/messages/{i}/"))
        .collect();
    crate::pipeline::inspect::walk_json(body, &mut String::new(), &mut |pointer, s, _| {
        let channel = if tool_results.iter().any(|p| pointer.starts_with(p.as_str())) {
            Channel::ToolOutput
        } else {
            Channel::Input
        };
        f(pointer, s, channel)
    });
}

/// Tokens from a `usage` object: `total_tokens`, else prompt + completion.
pub fn usage_tokens(usage: &Value) -> Option<u64> {
    if let Some(t) = usage.get("total_tokens").and_then(Value::as_u64) {
        return Some(t);
    }
    let p = usage.get("prompt_tokens").and_then(Value::as_u64);
    let c = usage.get("completion_tokens").and_then(Value::as_u64);
    match (p, c) {
        (None, None) => None,
        (p, c) => Some(p.unwrap_or(0) + c.unwrap_or(0)),
    }
}

/// Tokens charged when the upstream reports no usage: a byte count over
/// four, on request and response together, which over-estimates (JSON
/// framing counts too), so a budget errs on the safe side.
pub fn estimate_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(4)
}

/// The `/v1/models` list entry of a model.
pub fn model_object(name: &str, route: &str) -> Value {
    serde_json::json!({
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": route,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let get = http::Method::GET;
        let post = http::Method::POST;
        let ok = |m: &http::Method, p: &str| endpoint(m, p, "llm").unwrap();
        assert_eq!(ok(&post, "/v1/chat/completions"), Endpoint::ChatCompletions);
        assert_eq!(ok(&post, "/v1/embeddings/"), Endpoint::Embeddings);
        assert_eq!(ok(&get, "/v1/models"), Endpoint::Models);
        assert_eq!(
            ok(&get, "/v1/models/meta-llama/Llama-3"),
            Endpoint::Model("meta-llama/Llama-3".into())
        );
        let err = |m: &http::Method, p: &str| endpoint(m, p, "llm").unwrap_err().code;
        assert_eq!(
            err(&get, "/v1/chat/completions"),
            ErrorCode::MethodNotAllowed
        );
        assert_eq!(err(&post, "/v1/files"), ErrorCode::RouteNotFound);
        assert_eq!(err(&get, "/"), ErrorCode::RouteNotFound);
    }

    #[test]
    fn parse_asks_streams_for_usage_once() {
        let c = parse(br#"{"model":"m","stream":true,"messages":[]}"#, false).unwrap();
        assert!(c.stream && !c.strip_usage && c.body.get("stream_options").is_none());
        let c = parse(br#"{"model":"m","stream":true,"messages":[]}"#, true).unwrap();
        assert!(c.stream && c.strip_usage);
        assert_eq!(c.body["stream_options"]["include_usage"], true);
        let c = parse(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            true,
        )
        .unwrap();
        assert!(!c.strip_usage);
        let c = parse(br#"{"model":"m"}"#, true).unwrap();
        assert!(!c.stream && !c.strip_usage && c.body.get("stream_options").is_none());
        for bad in [
            &b"nope"[..],
            br#"[1]"#,
            br#"{"messages":[]}"#,
            br#"{"model":""}"#,
            br#"{"model":"m","stream":"yes"}"#,
            br#"{"model":"m","stream":true,"stream_options":3}"#,
        ] {
            assert_eq!(parse(bad, true).unwrap_err().code, ErrorCode::BadRequest);
        }
    }

    /// Issue 19: every string of the request is read, keys too, on its
    /// message's channel.
    #[test]
    fn texts_and_channels() {
        let mut body = serde_json::json!({"model": "m", "user": "u1", "metadata": {"k": "v"},
            "prediction": {"type": "content", "content": "p"},
            "tools": [{"type": "function", "function": {"name": "f", "description": "d"}}],
            "messages": [
            {"role": "system", "content": "be nice", "name": "n"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":1}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "result"}
        ]});
        let mut seen = Vec::new();
        for_each_text(&Endpoint::ChatCompletions, &mut body, &mut |p, s, c| {
            seen.push(format!("{p}={s}@{}", c.as_str()));
            if s == "result" {
                s.push('!');
            }
            false
        });
        for want in [
            "/user=u1@input",
            "/metadata/k=v@input",
            "/metadata=k@input",
            "/prediction/content=p@input",
            "/tools/0/function/description=d@input",
            "/messages/0/name=n@input",
            "/messages/0/content=be nice@input",
            "/messages/1/content/0/text=hi@input",
            "/messages/1/content/1/image_url/url=x@input",
            "/messages/2/tool_calls/0/function/arguments={\"q\":1}@input",
            "/messages/3/content=result@tool_output",
            "/messages/3/tool_call_id=1@tool_output",
        ] {
            assert!(seen.iter().any(|s| s == want), "{want} not in {seen:#?}");
        }
        assert_eq!(body["messages"][3]["content"], "result!");
        let mut emb = serde_json::json!({"model": "e", "input": ["a", "b"]});
        let mut n = 0;
        for_each_text(&Endpoint::Embeddings, &mut emb, &mut |_, s, _| {
            n += usize::from(s == "a" || s == "b");
            false
        });
        assert_eq!(n, 2);
    }

    #[test]
    fn usage() {
        assert_eq!(
            usage_tokens(&serde_json::json!({"total_tokens": 7})),
            Some(7)
        );
        assert_eq!(
            usage_tokens(&serde_json::json!({"prompt_tokens": 3, "completion_tokens": 4})),
            Some(7)
        );
        assert_eq!(usage_tokens(&serde_json::json!({})), None);
        assert_eq!(estimate_tokens(9), 3);
    }
}
