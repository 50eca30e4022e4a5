//! The response side of a `kind = "llm"` route: token usage for the budget,
//! and the content guard's DLP on the model's answer.
//!
//! A streamed completion (`text/event-stream`) passes through [`SseBody`]
//! event by event: each complete SSE event goes out as soon as its blank
//! line arrives, so nothing waits for the whole answer. An event is parsed
//! only when something must be done to it: it carries a `usage` object
//! (charged to the budget, and taken out again when the gateway asked for it
//! on the client's behalf), or DLP is on. With DLP, each choice's
//! `delta.content` and each of its tool calls' `function.arguments` runs
//! through its own [`StreamRedactor`] (with a short
//! hold-back, see [`STREAM_HOLD_BACK`]), so a value split over many deltas
//! is still caught; the event is re-serialized with the redacted text, and
//! what a redactor still holds goes out with the choice's last event (the
//! one with `finish_reason`), or in one extra chunk before `[DONE]`. SSE
//! framing stays valid throughout: only whole events are rewritten.
//!
//! A non-streamed answer is one JSON document, read whole (within the body
//! limit), charged from its `usage`, and its strings under `choices`
//! redacted like a request's.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_guard::dlp::Scanner;
use portcullis_guard::dlp::redact::{Redactor, StreamFinding, StreamRedactor};
use serde_json::Value;

use super::api::{estimate_tokens, usage_tokens};
use super::budget::Counters;
use crate::body::{BodyMeter, BoxError};
use crate::respond::ResponseBody;

/// Bytes of a streamed answer's text held back for DLP. A person reads the
/// answer as it arrives, so the 4 KiB of a generic stream would hold it for
/// hundreds of tokens; 256 bytes covers every bounded secret format the
/// detectors know except long JWTs (see `StreamRedactor::with_hold_back`).
pub const STREAM_HOLD_BACK: usize = 256;

/// Longest incomplete SSE event kept while waiting for its end; a longer
/// one is passed on as it is (it cannot be a delta the gateway rewrites).
const MAX_EVENT: usize = 1024 * 1024;

/// DLP on the answer: redact (`true`) or only log (`false`).
pub struct Dlp {
    /// The scanner.
    pub scanner: Arc<Scanner>,
    /// The placeholder and fingerprint key.
    pub key: [u8; 32],
    /// Replace found values (`true`) or log them only (`false`).
    pub redact: bool,
}

/// What the response side charges, and to whom.
pub struct Charge {
    /// The agent's counters.
    pub counters: Arc<Counters>,
    /// Request body bytes, for the estimate when no usage comes.
    pub request_bytes: u64,
    /// Charged already (so a drop does not charge twice).
    pub done: bool,
}

impl Charge {
    /// Charges `usage`, or the estimate from `response_bytes`.
    pub fn settle(&mut self, usage: Option<u64>, response_bytes: u64) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let tokens = usage.unwrap_or_else(|| estimate_tokens(self.request_bytes + response_bytes));
        self.counters.charge_tokens(now_epoch(), tokens);
    }
}

fn now_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Logs stream findings by kind, position and fingerprint, and adds them to
/// the record (never the values).
pub fn log_findings(
    meter: &BodyMeter,
    findings: &[StreamFinding],
    pointer: &str,
    request_id: &str,
    route: &str,
    redacted: bool,
) {
    if findings.is_empty() {
        return;
    }
    if let Ok(mut audited) = meter.response_findings.lock() {
        for f in findings {
            if audited.len() >= portcullis_audit::MAX_CONTENT_FINDINGS {
                break;
            }
            audited.push(portcullis_audit::ContentFinding {
                direction: "response".into(),
                kind: f.kind.as_str().into(),
                pointer: (!pointer.is_empty()).then(|| pointer.to_string()),
                start: f.start as u64,
                end: f.end as u64,
                fingerprint: Some(f.fingerprint.clone()),
            });
        }
    }
    for f in findings {
        tracing::warn!(
            request_id,
            route,
            direction = "response",
            kind = f.kind.as_str(),
            pointer,
            start = f.start,
            end = f.end,
            fingerprint = %f.fingerprint,
            redacted,
            "content guard finding"
        );
    }
}

/// Which text of a choice a redactor follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    /// `delta.content`.
    Content,
    /// `delta.tool_calls[index == k].function.arguments`.
    ToolArguments(u64),
}

impl Field {
    fn pointer(self, choice: u64) -> String {
        match self {
            Field::Content => format!("/choices/{choice}/delta/content"),
            Field::ToolArguments(k) => {
                format!("/choices/{choice}/delta/tool_calls/{k}/function/arguments")
            }
        }
    }
}

/// Sets (or, with `append`, extends) a choice's text for `field`, creating
/// the `delta` or the tool call when the event has none.
fn set_text(choice: &mut Value, field: Field, text: String, append: bool) {
    let Some(obj) = choice.as_object_mut() else {
        return;
    };
    let delta = obj
        .entry("delta")
        .or_insert_with(|| Value::Object(Default::default()));
    if !delta.is_object() {
        *delta = Value::Object(Default::default());
    }
    let Some(delta) = delta.as_object_mut() else {
        return;
    };
    let slot = match field {
        Field::Content => delta.entry("content").or_insert(Value::Null),
        Field::ToolArguments(k) => {
            let calls = delta
                .entry("tool_calls")
                .or_insert_with(|| Value::Array(Vec::new()));
            if !calls.is_array() {
                *calls = Value::Array(Vec::new());
            }
            let Some(calls) = calls.as_array_mut() else {
                return;
            };
            let at = match calls
                .iter()
                .position(|c| c.get("index").and_then(Value::as_u64) == Some(k))
            {
                Some(at) => at,
                None => {
                    calls.push(serde_json::json!({"index": k, "function": {}}));
                    calls.len() - 1
                }
            };
            let call = &mut calls[at];
            if call.get("function").is_none_or(|f| !f.is_object()) {
                call["function"] = serde_json::json!({});
            }
            let function = &mut call["function"];
            if function.get("arguments").is_none() {
                function["arguments"] = Value::Null;
            }
            &mut function["arguments"]
        }
    };
    match (append, slot.as_str()) {
        (true, Some(existing)) => *slot = Value::String(format!("{existing}{text}")),
        _ => *slot = Value::String(text),
    }
}

/// One choice's redactor and how many of its findings were logged.
struct ChoiceRedactor {
    redactor: StreamRedactor<Arc<Scanner>>,
    logged: usize,
}

/// A streamed completion on its way to the client; see the module docs.
pub struct SseBody {
    inner: ResponseBody,
    /// Bytes of an event whose end has not arrived.
    pending: Vec<u8>,
    /// Bytes received from the upstream.
    received: u64,
    usage: Option<u64>,
    strip_usage: bool,
    charge: Charge,
    dlp: Option<Dlp>,
    redactors: BTreeMap<(u64, Field), ChoiceRedactor>,
    /// `id`, `object`, `created`, `model` of the last chunk, for the extra
    /// chunk that carries what the redactors still held.
    last_meta: Option<serde_json::Map<String, Value>>,
    meter: Arc<BodyMeter>,
    request_id: String,
    route: String,
    done: bool,
}

impl SseBody {
    /// Wraps a streamed completion.
    pub fn new(
        inner: ResponseBody,
        strip_usage: bool,
        charge: Charge,
        dlp: Option<Dlp>,
        meter: Arc<BodyMeter>,
        request_id: String,
        route: String,
    ) -> Self {
        SseBody {
            inner,
            pending: Vec::new(),
            received: 0,
            usage: None,
            strip_usage,
            charge,
            dlp,
            redactors: BTreeMap::new(),
            last_meta: None,
            meter,
            request_id,
            route,
            done: false,
        }
    }

    /// Takes every complete event out of `pending` and returns what to send.
    fn drain_events(&mut self, out: &mut Vec<u8>) {
        while let Some(end) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end).collect();
            self.process(&event, out);
        }
        if self.pending.len() > MAX_EVENT {
            out.append(&mut self.pending);
        }
    }

    fn process(&mut self, event: &[u8], out: &mut Vec<u8>) {
        let needs_parse = self.dlp.is_some() || has_usage_object(event);
        let Some(data) = needs_parse.then(|| event_data(event)).flatten() else {
            out.extend_from_slice(event);
            return;
        };
        if data.trim() == "[DONE]" {
            self.flush_redactors(out);
            out.extend_from_slice(event);
            return;
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(&data) else {
            out.extend_from_slice(event);
            return;
        };
        let mut changed = false;
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            if let Some(t) = usage_tokens(usage) {
                self.usage = Some(self.usage.unwrap_or(0) + t);
            }
            if self.strip_usage {
                let no_choices = chunk
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_none_or(|c| c.is_empty());
                if no_choices {
                    // The usage-only chunk the client did not ask for.
                    return;
                }
                chunk.remove("usage");
                changed = true;
            }
        }
        if self.dlp.is_some() {
            changed |= self.redact_choices(&mut chunk);
            let meta: serde_json::Map<String, Value> = ["id", "object", "created", "model"]
                .iter()
                .filter_map(|k| chunk.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            self.last_meta = Some(meta);
        }
        if changed {
            rewrite_event(out, event, &Value::Object(chunk));
        } else {
            out.extend_from_slice(event);
        }
    }

    /// Runs each choice's `delta.content` and each tool call's
    /// `function.arguments` through its own redactor; true when the chunk
    /// changed. A choice's last event (with `finish_reason`) also carries
    /// what its redactors still held.
    fn redact_choices(&mut self, chunk: &mut serde_json::Map<String, Value>) -> bool {
        let (scanner, key, redact) = match &self.dlp {
            Some(d) => (d.scanner.clone(), d.key, d.redact),
            None => return false,
        };
        let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) else {
            return false;
        };
        let mut changed = false;
        for choice in choices.iter_mut() {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finished = choice.get("finish_reason").is_some_and(|r| !r.is_null());
            let mut texts: Vec<(Field, String)> = Vec::new();
            if let Some(delta) = choice.get("delta") {
                if let Some(c) = delta.get("content").and_then(Value::as_str) {
                    texts.push((Field::Content, c.to_string()));
                }
                for call in delta
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let k = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    if let Some(a) = call
                        .get("function")
                        .and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                    {
                        texts.push((Field::ToolArguments(k), a.to_string()));
                    }
                }
            }
            for (field, text) in texts {
                let emitted = self
                    .redactors
                    .entry((index, field))
                    .or_insert_with(|| ChoiceRedactor {
                        redactor: StreamRedactor::new(scanner.clone(), Redactor::new(&key))
                            .with_hold_back(STREAM_HOLD_BACK),
                        logged: 0,
                    })
                    .redactor
                    .push(text.as_bytes());
                self.log_new(index, field, redact);
                let emitted = String::from_utf8_lossy(&emitted).into_owned();
                if redact && emitted != text {
                    set_text(choice, field, emitted, false);
                    changed = true;
                }
            }
            if finished {
                let held: Vec<Field> = self
                    .redactors
                    .range((index, Field::Content)..=(index, Field::ToolArguments(u64::MAX)))
                    .map(|((_, f), _)| *f)
                    .collect();
                for field in held {
                    let tail = self
                        .redactors
                        .get_mut(&(index, field))
                        .map(|e| e.redactor.finish())
                        .unwrap_or_default();
                    self.log_new(index, field, redact);
                    self.redactors.remove(&(index, field));
                    if redact && !tail.is_empty() {
                        set_text(
                            choice,
                            field,
                            String::from_utf8_lossy(&tail).into_owned(),
                            true,
                        );
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// Logs and records the findings of one redactor not yet logged.
    fn log_new(&mut self, index: u64, field: Field, redacted: bool) {
        let Some(entry) = self.redactors.get_mut(&(index, field)) else {
            return;
        };
        log_findings(
            &self.meter,
            &entry.redactor.findings()[entry.logged..],
            &field.pointer(index),
            &self.request_id,
            &self.route,
            redacted,
        );
        entry.logged = entry.redactor.findings().len();
    }

    /// Sends what the redactors still hold, one extra chunk per text.
    fn flush_redactors(&mut self, out: &mut Vec<u8>) {
        let Some(dlp) = &self.dlp else { return };
        let redact = dlp.redact;
        let held: Vec<(u64, Field)> = self.redactors.keys().copied().collect();
        for (index, field) in held {
            let tail = self
                .redactors
                .get_mut(&(index, field))
                .map(|e| e.redactor.finish())
                .unwrap_or_default();
            self.log_new(index, field, redact);
            self.redactors.remove(&(index, field));
            if !redact || tail.is_empty() {
                continue;
            }
            let mut choice = serde_json::json!({
                "index": index,
                "delta": {},
                "finish_reason": null,
            });
            set_text(
                &mut choice,
                field,
                String::from_utf8_lossy(&tail).into_owned(),
                true,
            );
            let mut chunk = self.last_meta.clone().unwrap_or_default();
            chunk.insert("choices".into(), Value::Array(vec![choice]));
            write_event(out, &Value::Object(chunk));
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.done = true;
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.process(&rest, out);
        }
        self.flush_redactors(out);
        self.charge.settle(self.usage, self.received);
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        // A client that went away still used what the upstream produced.
        self.charge.settle(self.usage, self.received);
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.received += data.len() as u64;
                        this.pending.extend_from_slice(&data);
                        let mut out = Vec::new();
                        this.drain_events(&mut out);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(_trailers) => {
                        // SSE has no trailers worth keeping once events are rewritten.
                        let mut out = Vec::new();
                        this.finish(&mut out);
                        return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out.into()))));
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    let mut out = Vec::new();
                    this.finish(&mut out);
                    return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out.into()))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// One past the end of the first complete event (its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// The event's `data` (its `data:` lines joined by newlines, per the SSE
/// spec), or `None` when it has none or is not UTF-8.
fn event_data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(rest);
                }
                None => data = Some(rest.to_string()),
            }
        }
    }
    data
}

/// Whether an event may carry a `usage` object (not `"usage": null`);
/// events without one pass untouched and unparsed.
fn has_usage_object(event: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let mut rest = event;
    while let Some(i) = rest.windows(KEY.len()).position(|w| w == KEY) {
        let after = &rest[i + KEY.len()..];
        let next = after
            .iter()
            .copied()
            .find(|b| !matches!(b, b' ' | b'\t' | b':' | b'\r' | b'\n'));
        if next == Some(b'{') {
            return true;
        }
        rest = after;
    }
    false
}

/// `event` with its data replaced by `chunk`: other fields (`event:`, `id:`,
/// comments) stay where they were, the data goes where its first line was.
fn rewrite_event(out: &mut Vec<u8>, event: &[u8], chunk: &Value) {
    let text = String::from_utf8_lossy(event);
    let mut written = false;
    for line in text.lines() {
        if line.starts_with("data:") {
            if !std::mem::replace(&mut written, true) {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(chunk.to_string().as_bytes());
                out.push(b'\n');
            }
        } else if !line.is_empty() {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

fn write_event(out: &mut Vec<u8>, chunk: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(chunk.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Processes a whole non-streamed JSON answer: returns its usage and, with
/// DLP, redacts (or only logs) the strings under `choices` (message text
/// and tool-call arguments). `None` when it is not a JSON object.
pub fn process_json(
    bytes: &[u8],
    dlp: Option<&Dlp>,
    meter: &BodyMeter,
    request_id: &str,
    route: &str,
) -> Option<(Option<u64>, Option<Bytes>)> {
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    value.as_object()?;
    let usage = value.get("usage").and_then(usage_tokens);
    let Some(dlp) = dlp else {
        return Some((usage, None));
    };
    let mut changed = false;
    if let Some(choices) = value.get_mut("choices") {
        let mut redactor = Redactor::new(&dlp.key);
        walk(choices, &mut String::from("/choices"), &mut |pointer, s| {
            let findings = dlp.scanner.scan(s);
            if findings.is_empty() {
                return;
            }
            let logged: Vec<StreamFinding> = findings
                .iter()
                .map(|f| StreamFinding {
                    kind: f.kind,
                    start: f.start,
                    end: f.end,
                    fingerprint: portcullis_guard::dlp::redact::fingerprint(
                        &dlp.key,
                        f.kind,
                        s.get(f.start..f.end).unwrap_or_default(),
                    ),
                })
                .collect();
            log_findings(meter, &logged, pointer, request_id, route, dlp.redact);
            if dlp.redact {
                let mut out = String::with_capacity(s.len());
                redactor.apply(s, &findings, &mut out);
                *s = out;
                changed = true;
            }
        });
    }
    let body = changed.then(|| Bytes::from(value.to_string()));
    Some((usage, body))
}

fn walk(value: &mut Value, pointer: &mut String, f: &mut dyn FnMut(&str, &mut String)) {
    match value {
        Value::String(s) => f(pointer, s),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                walk(item, pointer, f);
                pointer.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                // Ids and names are the protocol, not the answer.
                if matches!(
                    k.as_str(),
                    "id" | "type" | "role" | "finish_reason" | "name"
                ) {
                    continue;
                }
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk(item, pointer, f);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body_of(chunks: Vec<&'static str>) -> ResponseBody {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c.as_bytes()))));
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    async fn run(chunks: Vec<&'static str>, strip: bool, dlp: bool) -> (String, u64) {
        let budgets = super::super::budget::Budgets::default();
        let counters = budgets.counters("llm", "bot");
        let dlp = dlp.then(|| Dlp {
            scanner: Arc::new(Scanner::new().unwrap()),
            key: [7; 32],
            redact: true,
        });
        let body = SseBody::new(
            body_of(chunks),
            strip,
            Charge {
                counters: counters.clone(),
                request_bytes: 0,
                done: false,
            },
            dlp,
            Arc::new(BodyMeter::default()),
            "r".into(),
            "llm".into(),
        );
        let out = body.collect().await.unwrap().to_bytes();
        let used = budgets.dirty_days(now_epoch())[0].tokens;
        (String::from_utf8(out.to_vec()).unwrap(), used)
    }

    const C1: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"key AKIAQWA\"},\"finish_reason\":null}],\"usage\":null}\n\n";
    const C2: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"DE5R42RDZ4JEM ok\"},\"finish_reason\":null}],\"usage\":null}\n\n";
    const C3: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[tokio::test]
    async fn passes_events_through_and_charges_usage() {
        // Split mid-event: events still come out whole.
        let (out, used) = run(
            vec![&C1[..20], &C1[20..], C2, C3, USAGE, DONE],
            false,
            false,
        )
        .await;
        assert_eq!(out, [C1, C2, C3, USAGE, DONE].concat());
        assert_eq!(used, 11);
        // The usage chunk the client did not ask for is taken out.
        let (out, used) = run(vec![C1, C2, C3, USAGE, DONE], true, false).await;
        assert_eq!(out, [C1, C2, C3, DONE].concat());
        assert_eq!(used, 11);
    }

    #[tokio::test]
    async fn redacts_a_secret_split_across_deltas() {
        let (out, _) = run(vec![C1, C2, C3, USAGE, DONE], true, true).await;
        assert!(!out.contains("AKIA"), "{out}");
        let text: String = out
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        assert_eq!(text, "key [REDACTED_AWS_ACCESS_KEY_1] ok");
        assert!(out.ends_with(DONE));
    }

    const T1: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"send\",\"arguments\":\"{\\\"to\\\":\\\"bob.smith@acme\"}}]},\"finish_reason\":null}]}\n\n";
    const T2: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"-corp.io\\\"}\"}}]},\"finish_reason\":null}]}\n\n";
    const T3: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n";

    #[tokio::test]
    async fn redacts_streamed_tool_call_arguments() {
        let (out, _) = run(vec![T1, T2, T3, DONE], false, true).await;
        assert!(!out.contains("bob.smith"), "{out}");
        let mut args = String::new();
        for e in out.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
            if e == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(e).unwrap();
            for c in v["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                args.push_str(c["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(args, "{\"to\":\"[REDACTED_EMAIL_1]\"}");
    }

    #[test]
    fn event_boundaries_and_usage_detection() {
        assert_eq!(event_end(b"data: x\n\ndata: y"), Some(9));
        assert_eq!(event_end(b"data: x\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: x\n"), None);
        assert!(has_usage_object(br#"data: {"usage": {"total_tokens":1}}"#));
        assert!(!has_usage_object(br#"data: {"usage":null}"#));
        assert_eq!(event_data(b"data: a\ndata:b\n\n").as_deref(), Some("a\nb"));
        let mut out = Vec::new();
        rewrite_event(
            &mut out,
            b"event: x\r\ndata: {\"a\":\r\ndata: 1}\r\nid: 7\r\n\r\n",
            &serde_json::json!({"a": 2}),
        );
        assert_eq!(out, b"event: x\ndata: {\"a\":2}\nid: 7\n\n");
    }

    #[test]
    fn non_streamed_answers_are_redacted_and_charged() {
        let scanner = Arc::new(Scanner::new().unwrap());
        let dlp = Dlp {
            scanner,
            key: [1; 32],
            redact: true,
        };
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"mail bob.smith@acme-corp.io"}}],"usage":{"total_tokens":9}}"#;
        let meter = BodyMeter::default();
        let (usage, new) = process_json(body, Some(&dlp), &meter, "r", "llm").unwrap();
        assert_eq!(usage, Some(9));
        let v: Value = serde_json::from_slice(&new.unwrap()).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "mail [REDACTED_EMAIL_1]"
        );
        assert_eq!(meter.response_findings.lock().unwrap().len(), 1);
    }
}
