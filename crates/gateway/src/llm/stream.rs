//! The response side of a `kind = "llm"` route: token usage for the budget,
//! and the content guard's DLP on the model's answer.
//!
//! A streamed completion (`text/event-stream`) passes through [`SseBody`]
//! event by event: each complete SSE event goes out as soon as its empty
//! line arrives (any line end: CRLF, LF or CR alone, see event_stream.rs),
//! so nothing waits for the whole answer. Without DLP, an event is parsed
//! only when it carries a `usage` object (charged to the budget, and taken
//! out again when the gateway asked for it on the client's behalf). With
//! DLP, every part of every event is read (issue 19):
//!
//! - every string and key of a JSON chunk, wherever it is (`choices`, or
//!   anything outside them). The pieces of a text spread over events (any
//!   string under a choice's `delta`: `content`, `reasoning_content`,
//!   `refusal`, tool call and legacy `function_call` arguments, …; see
//!   [`is_streamed`]) each run through their own [`StreamRedactor`], so a
//!   value split over many deltas is caught and redacted whole, and no
//!   prefix of it ever goes out (the redactor holds back the current word or
//!   number only, up to 8 KiB). What a redactor still holds goes out with
//!   the choice's last event (the one with `finish_reason`), or in one extra
//!   chunk before `[DONE]`. Every other string is scanned in its event.
//! - data that is not a JSON object, comments, and other fields (`event`,
//!   `id`) are scanned as text in their event.
//!
//! Only whole events are rewritten, so the framing stays valid. An event
//! longer than [`MAX_EVENT`] cannot be read; under DLP it ends the stream.
//!
//! Any other answer (a non-streamed completion, and an answer of any status,
//! 401 or 500 included) is read whole (within the body limit), charged from
//! its `usage`, and redacted by [`process_whole`]: every string and key of
//! JSON, the whole text of anything else; one that is neither (binary) is
//! not sent under DLP redaction.

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
use crate::event_stream::{self, Line};
use crate::respond::ResponseBody;

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

/// One step of a streamed string's path: an object key, the `index` of an
/// array element that carries one (choices and tool calls are matched
/// across events by it, not by their position), or a plain position.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(u64),
    Pos(usize),
}

/// The path of a streamed string (see [`Seg`]).
type Path = Vec<Seg>;

fn render(path: &[Seg]) -> String {
    let mut p = String::new();
    for s in path {
        p.push('/');
        match s {
            Seg::Key(k) => p.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Seg::Index(n) => p.push_str(&n.to_string()),
            // The end of a list (JSON pointer's `-`): where a held tail goes.
            Seg::Pos(usize::MAX) => p.push('-'),
            Seg::Pos(n) => p.push_str(&n.to_string()),
        }
    }
    p
}

/// Keys under a choice's `delta` whose strings come whole in one event
/// (they name things; clients do not concatenate them): scanned in their
/// event, not held back.
const WHOLE_IN_DELTA: [&str; 4] = ["role", "type", "id", "name"];

/// Whether the string at `path` is a piece of a text the stream spreads over
/// events: anything under a choice's `delta` (`content`, `reasoning_content`,
/// `refusal`, tool call and legacy `function_call` arguments, and any field
/// a later API adds) but the names of [`WHOLE_IN_DELTA`].
fn is_streamed(path: &[Seg]) -> bool {
    matches!(path, [Seg::Key(c), _, Seg::Key(d), .., Seg::Key(last)]
        if c == "choices" && d == "delta" && !WHOLE_IN_DELTA.contains(&last.as_str()))
}

/// Whether `path` is a choice's list of token log probabilities
/// (`choices[i].logprobs.content` or `.refusal`): its tokens are pieces of
/// the answer's text, like the deltas, so a value may be split across
/// tokens, within an event or across events.
fn is_token_list(path: &[Seg]) -> bool {
    matches!(path, [Seg::Key(c), _, Seg::Key(l), Seg::Key(list)]
        if c == "choices" && l == "logprobs" && (list == "content" || list == "refusal"))
}

/// The redactor path of a token list's text: a new entry at the list's end
/// is where a tail it still holds goes (see [`set_at`]).
fn token_path(list: &[Seg]) -> Path {
    let mut p = list.to_vec();
    p.push(Seg::Pos(usize::MAX));
    p.push(Seg::Key("token".into()));
    p
}

/// Gives a log-probability entry a rewritten token: its `bytes` follow,
/// and its alternatives go (the first of them is usually the token itself).
fn set_token(entry: &mut Value, token: String) {
    let Some(obj) = entry.as_object_mut() else {
        return;
    };
    if obj.contains_key("bytes") {
        obj.insert("bytes".into(), serde_json::json!(token.as_bytes()));
    }
    if obj.contains_key("top_logprobs") {
        obj.insert("top_logprobs".into(), Value::Array(Vec::new()));
    }
    obj.insert("token".into(), Value::String(token));
}

/// Redacts the token lists of a whole (not streamed) answer: each list's
/// tokens run in order through one stream redactor, so a value split
/// across tokens is caught; what it holds at the end joins the last token.
/// True when a token changed.
fn redact_token_lists(
    value: &mut Value,
    dlp: &Dlp,
    meter: &BodyMeter,
    request_id: &str,
    route: &str,
) -> bool {
    let mut changed = false;
    let Some(choices) = value.get_mut("choices").and_then(Value::as_array_mut) else {
        return false;
    };
    for (i, choice) in choices.iter_mut().enumerate() {
        for list in ["content", "refusal"] {
            let Some(items) = choice
                .get_mut("logprobs")
                .and_then(|l| l.get_mut(list))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            let mut redactor = StreamRedactor::new(dlp.scanner.clone(), Redactor::new(&dlp.key));
            for item in items.iter_mut() {
                let Some(token) = item
                    .get("token")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                else {
                    continue;
                };
                let out = String::from_utf8_lossy(&redactor.push(token.as_bytes())).into_owned();
                if dlp.redact && out != token {
                    set_token(item, out);
                    changed = true;
                }
            }
            let tail = String::from_utf8_lossy(&redactor.finish()).into_owned();
            if dlp.redact
                && !tail.is_empty()
                && let Some(last) = items
                    .iter_mut()
                    .rev()
                    .find(|it| it.get("token").is_some_and(Value::is_string))
            {
                let token = format!("{}{tail}", last["token"].as_str().unwrap_or_default());
                set_token(last, token);
                changed = true;
            }
            log_findings(
                meter,
                redactor.findings(),
                &format!("/choices/{i}/logprobs/{list}"),
                request_id,
                route,
                dlp.redact,
            );
        }
    }
    changed
}

/// Sets (or, with `append`, extends) the string at `path` in `root`,
/// creating what is missing (an element with an `index` for [`Seg::Index`]).
fn set_at(root: &mut Value, path: &[Seg], text: String, append: bool) {
    let Some((first, rest)) = path.split_first() else {
        match (append, root.as_str()) {
            (true, Some(existing)) => *root = Value::String(format!("{existing}{text}")),
            _ => *root = Value::String(text),
        }
        return;
    };
    let next = match first {
        Seg::Key(k) => {
            if !root.is_object() {
                *root = Value::Object(Default::default());
            }
            let Some(obj) = root.as_object_mut() else {
                return;
            };
            obj.entry(k.clone()).or_insert(Value::Null)
        }
        Seg::Index(n) => {
            if !root.is_array() {
                *root = Value::Array(Vec::new());
            }
            let Some(items) = root.as_array_mut() else {
                return;
            };
            let at = match items
                .iter()
                .position(|c| c.get("index").and_then(Value::as_u64) == Some(*n))
            {
                Some(at) => at,
                None => {
                    items.push(serde_json::json!({ "index": n }));
                    items.len() - 1
                }
            };
            &mut items[at]
        }
        Seg::Pos(n) => {
            if !root.is_array() {
                *root = Value::Array(Vec::new());
            }
            let Some(items) = root.as_array_mut() else {
                return;
            };
            if *n >= items.len() {
                items.push(Value::Null);
                let last = items.len() - 1;
                &mut items[last]
            } else {
                &mut items[*n]
            }
        }
    };
    set_at(next, rest, text, append);
}

/// One streamed string's redactor and how many of its findings were logged.
struct FieldRedactor {
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
    /// One redactor per streamed string (see [`is_streamed`]).
    redactors: BTreeMap<Path, FieldRedactor>,
    /// The placeholders of strings scanned whole, within one event.
    whole: Option<Redactor>,
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
        let whole = dlp.as_ref().map(|d| Redactor::new(&d.key));
        SseBody {
            inner,
            pending: Vec::new(),
            received: 0,
            usage: None,
            strip_usage,
            charge,
            dlp,
            redactors: BTreeMap::new(),
            whole,
            last_meta: None,
            meter,
            request_id,
            route,
            done: false,
        }
    }

    /// Takes every complete event out of `pending` and returns what to
    /// send. An event longer than [`MAX_EVENT`] passes as it is when
    /// nothing reads the stream but the budget; under DLP it ends the
    /// stream (it cannot be read, so it is not sent).
    fn drain_events(&mut self, out: &mut Vec<u8>) -> Result<(), BoxError> {
        while let Some(end) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end).collect();
            self.process(&event, out);
        }
        if self.pending.len() > MAX_EVENT {
            if self.dlp.is_some() {
                self.pending.clear();
                return Err("an event of the model's stream is too long to scan".into());
            }
            out.append(&mut self.pending);
        }
        Ok(())
    }

    fn process(&mut self, event: &[u8], out: &mut Vec<u8>) {
        if self.dlp.is_none() && !has_usage_object(event) {
            out.extend_from_slice(event);
            return;
        }
        let text = String::from_utf8_lossy(event);
        let mut lines = event_stream::parse(&text);
        let mut changed = matches!(text, std::borrow::Cow::Owned(_)) && self.dlp.is_some();
        // Comments and fields other than data are text too.
        for line in &mut lines {
            let t = match line {
                Line::Field(name, _) if name == "data" => continue,
                Line::Comment(t) | Line::Field(_, t) => t,
            };
            changed |= self.scan_whole(t, "");
        }
        let data = event_stream::data(&lines);
        let data = match data {
            Some(d) if d.trim() == "[DONE]" => {
                self.flush_redactors(out);
                Some(d)
            }
            Some(d) => match serde_json::from_str::<Value>(&d) {
                Ok(Value::Object(chunk)) => match self.process_chunk(chunk, &mut changed) {
                    Some(chunk) => Some(if changed { chunk.to_string() } else { d }),
                    // The usage-only chunk the client did not ask for.
                    None => return,
                },
                // Data that is not a JSON object is scanned as one text.
                _ => {
                    let mut d = d;
                    changed |= self.scan_whole(&mut d, "/data");
                    Some(d)
                }
            },
            None => None,
        };
        if changed {
            event_stream::write(&lines, data.as_deref(), out);
        } else {
            out.extend_from_slice(event);
        }
    }

    /// Charges and strips the usage of a chunk and, under DLP, redacts every
    /// string of it; `None` when the chunk is dropped.
    fn process_chunk(
        &mut self,
        mut chunk: serde_json::Map<String, Value>,
        changed: &mut bool,
    ) -> Option<Value> {
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
                    return None;
                }
                chunk.remove("usage");
                *changed = true;
            }
        }
        let mut chunk = Value::Object(chunk);
        if self.dlp.is_some() {
            *changed |= self.redact_chunk(&mut chunk);
            let meta: serde_json::Map<String, Value> = ["id", "object", "created", "model"]
                .iter()
                .filter_map(|k| chunk.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            self.last_meta = Some(meta);
        }
        Some(chunk)
    }

    /// Scans a string that comes whole in its event, redacting it in place
    /// when the route redacts; true when it changed.
    fn scan_whole(&mut self, s: &mut String, pointer: &str) -> bool {
        let (Some(dlp), Some(redactor)) = (&self.dlp, &mut self.whole) else {
            return false;
        };
        scan_once(
            dlp,
            redactor,
            s,
            pointer,
            &self.meter,
            &self.request_id,
            &self.route,
        )
    }

    /// Redacts every string and key of a chunk: the pieces of streamed texts
    /// through their own redactors (so a value split over many deltas is
    /// caught, and no prefix of it goes out), every other string whole. A
    /// choice's last event (with `finish_reason`) also carries what its
    /// redactors still held. True when the chunk changed.
    fn redact_chunk(&mut self, chunk: &mut Value) -> bool {
        let mut changed = false;
        let mut path = Vec::new();
        self.visit(chunk, &mut path, &mut changed);
        let finished: Vec<Seg> = chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c.get("finish_reason").is_some_and(|r| !r.is_null()))
            .map(|(i, c)| seg_of(c, i))
            .collect();
        let redact = self.dlp.as_ref().is_some_and(|d| d.redact);
        for choice in finished {
            let prefix = [Seg::Key("choices".into()), choice];
            let held: Vec<Path> = self
                .redactors
                .keys()
                .filter(|p| p.starts_with(&prefix))
                .cloned()
                .collect();
            for p in held {
                let tail = self.finish_one(&p);
                if redact && !tail.is_empty() {
                    set_at(chunk, &p, tail, true);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Passes a piece of the streamed text at `path` through its redactor
    /// and returns what may go out now.
    fn push_streamed(&mut self, path: &Path, piece: &str) -> Option<String> {
        let dlp = self.dlp.as_ref()?;
        let (scanner, key) = (dlp.scanner.clone(), dlp.key);
        let entry = self
            .redactors
            .entry(path.clone())
            .or_insert_with(|| FieldRedactor {
                redactor: StreamRedactor::new(scanner, Redactor::new(&key)),
                logged: 0,
            });
        let emitted = entry.redactor.push(piece.as_bytes());
        self.log_new(path);
        Some(String::from_utf8_lossy(&emitted).into_owned())
    }

    fn visit(&mut self, value: &mut Value, path: &mut Path, changed: &mut bool) {
        let redact = self.dlp.as_ref().is_some_and(|d| d.redact);
        match value {
            Value::String(s) if is_streamed(path) => {
                if let Some(emitted) = self.push_streamed(path, s)
                    && redact
                    && emitted != *s
                {
                    *s = emitted;
                    *changed = true;
                }
            }
            Value::Array(items) if is_token_list(path) => {
                // The tokens, in order, are one streamed text; the rest of
                // each entry (alternatives) is scanned as usual below.
                let key = token_path(path);
                for item in items.iter_mut() {
                    let Some(token) = item
                        .get("token")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                    else {
                        continue;
                    };
                    if let Some(out) = self.push_streamed(&key, &token)
                        && redact
                        && out != token
                    {
                        set_token(item, out);
                        *changed = true;
                    }
                }
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(seg_of(item, i));
                    self.visit(item, path, changed);
                    path.pop();
                }
            }
            Value::String(s) => {
                let pointer = render(path);
                *changed |= self.scan_whole(s, &pointer);
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(seg_of(item, i));
                    self.visit(item, path, changed);
                    path.pop();
                }
            }
            Value::Object(map) => {
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    let mut scanned = key.clone();
                    let secret = self.scan_whole(&mut scanned, &render(path));
                    if scanned != key
                        && let Some(item) = map.remove(&key)
                    {
                        map.insert(scanned.clone(), item);
                        *changed = true;
                    }
                    let name = if secret && scanned == key {
                        crate::pipeline::inspect::MASKED_KEY.to_string()
                    } else {
                        scanned.clone()
                    };
                    path.push(Seg::Key(name));
                    if let Some(item) = map.get_mut(&scanned) {
                        self.visit(item, path, changed);
                    }
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// Ends one redactor and returns what it still held.
    fn finish_one(&mut self, path: &Path) -> String {
        let tail = self
            .redactors
            .get_mut(path)
            .map(|e| e.redactor.finish())
            .unwrap_or_default();
        self.log_new(path);
        self.redactors.remove(path);
        String::from_utf8_lossy(&tail).into_owned()
    }

    /// Logs and records the findings of one redactor not yet logged.
    fn log_new(&mut self, path: &Path) {
        let redacted = self.dlp.as_ref().is_some_and(|d| d.redact);
        let Some(entry) = self.redactors.get_mut(path) else {
            return;
        };
        log_findings(
            &self.meter,
            &entry.redactor.findings()[entry.logged..],
            &render(path),
            &self.request_id,
            &self.route,
            redacted,
        );
        entry.logged = entry.redactor.findings().len();
    }

    /// Sends what the redactors still hold, one extra chunk per text.
    fn flush_redactors(&mut self, out: &mut Vec<u8>) {
        let redact = self.dlp.as_ref().is_some_and(|d| d.redact);
        let held: Vec<Path> = self.redactors.keys().cloned().collect();
        for path in held {
            let tail = self.finish_one(&path);
            if !redact || tail.is_empty() {
                continue;
            }
            let mut chunk = Value::Object(self.last_meta.clone().unwrap_or_default());
            set_at(&mut chunk, &path, tail, true);
            write_event(out, &chunk);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BoxError> {
        self.done = true;
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            if rest.len() > MAX_EVENT && self.dlp.is_some() {
                return Err("an event of the model's stream is too long to scan".into());
            }
            self.process(&rest, out);
        }
        self.flush_redactors(out);
        self.charge.settle(self.usage, self.received);
        Ok(())
    }
}

/// The path step of array element `i`: its `index` when it has one.
fn seg_of(item: &Value, i: usize) -> Seg {
    match item.get("index").and_then(Value::as_u64) {
        Some(n) => Seg::Index(n),
        None => Seg::Pos(i),
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
                        if let Err(e) = this.drain_events(&mut out) {
                            this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(_trailers) => return Poll::Ready(this.end()),
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(this.end()),
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

impl SseBody {
    /// The last frame: what was still held. SSE has no trailers worth
    /// keeping once events are rewritten.
    fn end(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        let mut out = Vec::new();
        if let Err(e) = self.finish(&mut out) {
            return Some(Err(e));
        }
        (!out.is_empty()).then(|| Ok(Frame::data(out.into())))
    }
}

/// One past the end of the first complete event (its empty line), if any;
/// any line end counts (event_stream.rs).
fn event_end(buf: &[u8]) -> Option<usize> {
    event_stream::event_end(buf)
}

/// Whether an event may carry a `usage` object (not `"usage": null`);
/// without DLP, events without one pass untouched and unparsed.
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

fn write_event(out: &mut Vec<u8>, chunk: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(chunk.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Scans `s` whole with DLP, logs what it found and, when the route
/// redacts, replaces it in place; true when it holds a secret.
fn scan_once(
    dlp: &Dlp,
    redactor: &mut Redactor,
    s: &mut String,
    pointer: &str,
    meter: &BodyMeter,
    request_id: &str,
    route: &str,
) -> bool {
    let findings = dlp.scanner.scan(s);
    if findings.is_empty() {
        return false;
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
    }
    true
}

/// What a whole (not streamed) answer became.
pub enum Processed {
    /// The answer as it came.
    Unchanged,
    /// The answer redacted.
    Rewritten(Bytes),
    /// DLP redacts and the answer is neither JSON nor UTF-8 text: it cannot
    /// be read, so it must not be sent.
    Unscannable,
}

/// Processes a whole answer (a non-streamed completion, or any answer
/// whose status is not 2xx): returns its usage and, with DLP, redacts (or
/// only logs) every string and key of a JSON answer, or the whole text of
/// any other UTF-8 answer.
pub fn process_whole(
    bytes: &[u8],
    dlp: Option<&Dlp>,
    meter: &BodyMeter,
    request_id: &str,
    route: &str,
) -> (Option<u64>, Processed) {
    let json = serde_json::from_slice::<Value>(bytes).ok();
    let usage = json
        .as_ref()
        .and_then(|v| v.get("usage"))
        .and_then(usage_tokens);
    let Some(dlp) = dlp else {
        return (usage, Processed::Unchanged);
    };
    let mut redactor = Redactor::new(&dlp.key);
    let mut changed = false;
    let body = match json {
        Some(mut value) => {
            changed |= redact_token_lists(&mut value, dlp, meter, request_id, route);
            crate::pipeline::inspect::walk_json(
                &mut value,
                &mut String::new(),
                &mut |pointer, s, _| {
                    let before = dlp.redact.then(|| s.clone());
                    let found = scan_once(dlp, &mut redactor, s, pointer, meter, request_id, route);
                    changed |= before.is_some_and(|b| b != *s);
                    found
                },
            );
            changed.then(|| Bytes::from(value.to_string()))
        }
        None => match std::str::from_utf8(bytes) {
            Ok(text) => {
                let mut text = text.to_string();
                let found = scan_once(dlp, &mut redactor, &mut text, "", meter, request_id, route);
                (found && dlp.redact).then(|| Bytes::from(text))
            }
            Err(_) if dlp.redact && !bytes.is_empty() => {
                return (usage, Processed::Unscannable);
            }
            Err(_) => None,
        },
    };
    (
        usage,
        match body {
            Some(b) => Processed::Rewritten(b),
            None => Processed::Unchanged,
        },
    )
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
    fn usage_detection() {
        assert!(has_usage_object(br#"data: {"usage": {"total_tokens":1}}"#));
        assert!(!has_usage_object(br#"data: {"usage":null}"#));
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
        let (usage, new) = process_whole(body, Some(&dlp), &meter, "r", "llm");
        assert_eq!(usage, Some(9));
        let Processed::Rewritten(new) = new else {
            panic!("not rewritten")
        };
        let v: Value = serde_json::from_slice(&new).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "mail [REDACTED_EMAIL_1]"
        );
        assert_eq!(meter.response_findings.lock().unwrap().len(), 1);
    }

    /// Issue 19: every string of a whole answer is redacted, outside
    /// `choices` and in any field; an answer that is text, not JSON, too;
    /// binary cannot be read.
    #[test]
    fn every_string_of_a_whole_answer_is_redacted() {
        let dlp = Dlp {
            scanner: Arc::new(Scanner::new().unwrap()),
            key: [1; 32],
            redact: true,
        };
        let meter = BodyMeter::default();
        for body in [
            format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {KEY}","type":"invalid_request_error"}}}}"#
            ),
            format!(
                r#"{{"choices":[{{"message":{{"reasoning_content":"{KEY}","refusal":"{KEY}","function_call":{{"name":"f","arguments":"{KEY}"}}}}}}]}}"#
            ),
            format!(r#"{{"choices":[],"system_fingerprint":"{KEY}","x":{{"{KEY}":1}}}}"#),
            format!("Unauthorized: key {KEY} is not valid"),
        ] {
            let (_, out) = process_whole(body.as_bytes(), Some(&dlp), &meter, "r", "llm");
            let Processed::Rewritten(out) = out else {
                panic!("{body} not rewritten")
            };
            assert!(!String::from_utf8_lossy(&out).contains(KEY), "{body}");
        }
        let (_, out) = process_whole(&[0xff, 0xfe, 0x41], Some(&dlp), &meter, "r", "llm");
        assert!(matches!(out, Processed::Unscannable));
    }

    const KEY: &str = "AKIAQWADE5R42RDZ4JEM";

    /// The SSE text of one chunk with `delta` (a JSON object literal).
    fn chunk(delta: &str, eol: &str) -> String {
        format!(
            "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}{eol}{eol}"
        )
    }

    /// Runs `stream` through a redacting [`SseBody`], split into two
    /// transport chunks at every byte, and checks that the secret never
    /// goes out, not even its first bytes, and that the answer is whole.
    async fn check_every_split(stream: &str, what: &str) {
        let b = stream.as_bytes();
        for i in 0..=b.len() {
            let chunks: Vec<&'static str> = vec![
                Box::leak(
                    String::from_utf8_lossy(&b[..i])
                        .into_owned()
                        .into_boxed_str(),
                ),
                Box::leak(
                    String::from_utf8_lossy(&b[i..])
                        .into_owned()
                        .into_boxed_str(),
                ),
            ];
            if String::from_utf8_lossy(&b[..i]).len() != i {
                continue; // a split inside a character
            }
            let (out, _) = run(chunks, false, true).await;
            for n in 4..=KEY.len() {
                assert!(!out.contains(&KEY[..n]), "{what}, split at {i}: {out}");
            }
            assert!(
                out.contains("[REDACTED_AWS_ACCESS_KEY_"),
                "{what}, split at {i}: {out}"
            );
        }
    }

    /// Issue 19: every field under `delta`, CR-only and CRLF framing,
    /// comments, non-JSON data, content outside `choices`: a secret split
    /// across deltas and across transport chunks at every byte is redacted
    /// whole.
    #[tokio::test]
    async fn every_part_of_a_stream_is_redacted_at_every_split() {
        let (a, b) = KEY.split_at(9);
        for field in ["content", "reasoning_content", "refusal"] {
            for eol in ["\n", "\r\n", "\r"] {
                let stream = [
                    chunk(&format!(r#"{{"{field}":"key {a}"}}"#), eol),
                    chunk(&format!(r#"{{"{field}":"{b} ok"}}"#), eol),
                    format!("data: [DONE]{eol}{eol}"),
                ]
                .concat();
                check_every_split(&stream, &format!("{field} {eol:?}")).await;
            }
        }
        let legacy = [
            chunk(
                &format!(r#"{{"function_call":{{"name":"f","arguments":"{{\"k\":\"{a}"}}}}"#),
                "\n",
            ),
            chunk(
                &format!(r#"{{"function_call":{{"arguments":"{b}\"}}"}}}}"#),
                "\n",
            ),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        check_every_split(&legacy, "function_call").await;
        for other in [
            format!(": note {KEY}\n\ndata: [DONE]\n\n"),
            format!("data: plain text {KEY}\n\n"),
            format!(
                "event: x\ndata: {{\"id\":\"c\",\"system_fingerprint\":\"{KEY}\",\"choices\":[]}}\n\n"
            ),
            format!(
                "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"{KEY}\"}},\"logprobs\":{{\"content\":[{{\"token\":\"{KEY}\"}}]}}}}]}}\n\n"
            ),
        ] {
            check_every_split(&other, &other).await;
        }
    }

    /// Issue 19: a key split across log-probability tokens, within one
    /// event and across events, cut by the transport at every byte: no
    /// token, alternative or byte list carries a piece of it, and the
    /// tokens still spell the redacted text.
    #[tokio::test]
    async fn a_secret_split_across_logprob_tokens_is_redacted() {
        let (a, rest) = KEY.split_at(6);
        let (b, c) = rest.split_at(5);
        let entry = |t: &str| {
            format!(
                r#"{{"token":"{t}","logprob":-0.1,"bytes":{:?},"top_logprobs":[{{"token":"{t}","logprob":-0.1}}]}}"#,
                t.as_bytes()
            )
        };
        let event = |entries: &[&str], finish: &str| {
            let list: Vec<String> = entries.iter().map(|t| entry(t)).collect();
            format!(
                "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":{{\"content\":[{}]}},\"finish_reason\":{finish}}}]}}\n\n",
                list.join(",")
            )
        };
        let stream = [
            event(&["key ", a, b], "null"),
            event(&[c, " ok"], "\"stop\""),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        check_every_split(&stream, "logprobs").await;
        // The whole stream at once: the tokens spell the redacted text.
        let (out, _) = run(vec![Box::leak(stream.into_boxed_str())], false, true).await;
        let mut text = String::new();
        for e in out.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
            if e == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(e).unwrap();
            for t in v["choices"][0]["logprobs"]["content"]
                .as_array()
                .into_iter()
                .flatten()
            {
                text.push_str(t["token"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(text, "key [REDACTED_AWS_ACCESS_KEY_1] ok");

        // A whole answer: the same tokens in one list.
        let list: Vec<String> = ["key ", a, b, c, " ok"].iter().map(|t| entry(t)).collect();
        let answer = format!(
            r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":"fine"}},"logprobs":{{"content":[{}]}}}}]}}"#,
            list.join(",")
        );
        let dlp = Dlp {
            scanner: Arc::new(Scanner::new().unwrap()),
            key: [7; 32],
            redact: true,
        };
        let (_, processed) = process_whole(
            answer.as_bytes(),
            Some(&dlp),
            &BodyMeter::default(),
            "r",
            "llm",
        );
        let Processed::Rewritten(body) = processed else {
            panic!("not rewritten")
        };
        let out = String::from_utf8(body.to_vec()).unwrap();
        for n in 4..=KEY.len() {
            assert!(!out.contains(&KEY[..n]), "{out}");
        }
        let v: Value = serde_json::from_str(&out).unwrap();
        let text: String = v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["token"].as_str())
            .collect();
        assert_eq!(text, "key [REDACTED_AWS_ACCESS_KEY_1] ok");
    }
}
