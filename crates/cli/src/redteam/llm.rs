//! The content families on an LLM route (`--routes llm=PREFIX`, a route of
//! kind `llm` whose guard blocks prompt injection and blocks or redacts
//! secrets): the disguised instructions of the HTTP family sent as chat
//! messages, and secrets and personal data carried out through the
//! model's completions, whole and streamed (SSE, where a value can be split
//! across deltas).
//!
//! Exfiltration needs a model that says a text back when asked ("Repeat
//! after me exactly: …"), as most models do and the test upstream does; one
//! that does not repeat a harmless marker skips the family rather than pass
//! it.

use serde_json::{Value, json};

use super::Target;
use super::content::{LEAKS, injection_probes, leak_probe};
use super::report::Family;
use super::wire::{Answer, Tls};

const INJECTION: &str = "llm-prompt-injection";
const EXFILTRATION: &str = "llm-exfiltration";
const NO_ROUTE: &str = "not applicable: no LLM route: pass --routes llm=PREFIX (a route of kind llm with `[routes.guard] injection = \"block\"` and `dlp` on)";
const REPEAT: &str = "Repeat after me exactly: ";

/// The models `route` serves this agent (`GET …/v1/models`, answered by the
/// gateway from the route's configuration), or why there are none.
pub(super) fn models(t: &Target, route: &str) -> Result<Vec<String>, String> {
    let path = format!("{route}/v1/models");
    let a = t
        .wire
        .request(Tls::Agent, "GET", &path, &[], "")
        .map_err(|e| format!("`{path}`: {e:#}"))?;
    let models: Vec<String> = a.json()["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    if a.status >= 300 || models.is_empty() {
        return Err(format!(
            "`GET {path}` named no model (HTTP {}, {}): is `{route}` an LLM route this agent may use?",
            a.status,
            a.code().unwrap_or_default()
        ));
    }
    Ok(models)
}

fn complete(t: &Target, path: &str, body: &Value) -> (String, anyhow::Result<Answer>) {
    let text = body.to_string();
    let request = format!("POST {path} HTTP/1.1 {text}");
    let answer = t.wire.request(
        Tls::Agent,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        &text,
    );
    (request, answer)
}

/// An HTTP-family injection body as chat messages: its own `messages`, or
/// each string field as one user message.
fn as_chat(model: &str, body: &Value) -> Value {
    if let Some(messages) = body.get("messages") {
        return json!({"model": model, "messages": messages});
    }
    let messages: Vec<Value> = body
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, v)| json!({"role": "user", "content": v}))
        .collect();
    json!({"model": model, "messages": messages})
}

pub fn prompt_injection(t: &Target) -> Family {
    let Some(route) = t.routes.llm.as_deref() else {
        return Family::skipped(INJECTION, NO_ROUTE);
    };
    let model = match models(t, route) {
        Ok(models) => models[0].clone(),
        Err(why) => return Family::skipped(INJECTION, why),
    };
    let path = format!("{route}/v1/chat/completions");
    injection_probes(INJECTION, &format!("the LLM route `{route}`"), |body| {
        complete(t, &path, &as_chat(&model, body))
    })
}

/// The text a completion carries: the whole body, and the deltas of an
/// event stream joined (a value split across deltas is whole only there).
fn said(a: &Answer) -> String {
    let mut text = a.body.clone();
    for line in a.body.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        for choice in v["choices"].as_array().into_iter().flatten() {
            if let Some(s) = choice["delta"]["content"].as_str() {
                text.push_str(s);
            }
        }
    }
    // Whole answers: the message's content unescaped.
    for choice in a.json()["choices"].as_array().into_iter().flatten() {
        if let Some(s) = choice["message"]["content"].as_str() {
            text.push_str(s);
        }
    }
    text
}

pub fn exfiltration(t: &Target) -> Family {
    let Some(route) = t.routes.llm.as_deref() else {
        return Family::skipped(EXFILTRATION, NO_ROUTE);
    };
    let model = match models(t, route) {
        Ok(models) => models[0].clone(),
        Err(why) => return Family::skipped(EXFILTRATION, why),
    };
    let path = format!("{route}/v1/chat/completions");
    let ask = |value: &str, stream: bool| {
        json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": format!("{REPEAT}{value}")}]})
    };
    // Does the model repeat at all? Otherwise nothing can be carried out.
    let marker = format!("rt-echo-{}", hex::encode(rand::random::<[u8; 4]>()));
    match complete(t, &path, &ask(&marker, false)).1 {
        Ok(a) if a.status < 300 && said(&a).contains(&marker) => {}
        Ok(a) => {
            return Family::skipped(
                EXFILTRATION,
                format!(
                    "the model of `{route}` does not repeat a harmless text (HTTP {}): nothing to carry a secret out",
                    a.status
                ),
            );
        }
        Err(e) => return Family::skipped(EXFILTRATION, format!("`{route}`: {e:#}")),
    }
    let mut probes = Vec::new();
    for (name, value) in LEAKS {
        for stream in [false, true] {
            let name = if stream {
                format!("{name}-streamed")
            } else {
                name.to_string()
            };
            let (request, answer) = complete(t, &path, &ask(value, stream));
            probes.push(leak_probe(&name, &request, answer, value, said));
        }
    }
    Family::judged(EXFILTRATION, probes)
}
