//! The server-sent-events side of the MCP adapter: a response body that passes
//! an upstream `text/event-stream` through event by event.
//!
//! Before each event it asks whether the session's agent is still live and
//! not quarantined (continuous authorization). A stream with no event in
//! sight is ended at once by the pipeline's watch on every answer
//! (`crate::liveness`), which revocation, token revocation, user disable and
//! quarantine signal. Events whose data is the answer to a `tools/list` request
//! are rewritten (filtered); every other event goes out byte for byte, as soon
//! as it is complete. Refusals the gateway made for part of a batch go out
//! first, as events of their own.
//!
//! An answer to requests ([`SseBody::answering`]) keeps count of which of
//! them the upstream answered. Should the upstream's stream break off before
//! it answered them all — reset, ended in the middle of an event, or stalled
//! (`forward.rs`) — the half event is dropped, each request still open gets
//! a JSON-RPC error with the stable code in `error.data.code`
//! (`upstream_stream_error`, or `upstream_timeout` for a stall), the stream
//! ends cleanly, and the record says so: the client's MCP library reports a
//! tool error instead of a broken transport, and waits for nothing.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;

use std::sync::Arc;

use crate::body::{BodyMeter, BoxError};
use crate::respond::ResponseBody;

/// Largest single event buffered; a longer one ends the stream with an error.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Decides, per event, whether the stream may go on.
pub type Alive = Box<dyn Fn() -> bool + Send + Sync>;
/// Rewrites an event's JSON-RPC message in place; true when it changed it.
pub type Rewrite = Box<dyn Fn(&mut Value) -> bool + Send + Sync>;
/// Rewrites the data of an `endpoint` event (the legacy HTTP+SSE
/// transport); `None` ends the stream.
pub type EndpointRewrite = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// An event-stream body, checked and rewritten event by event.
pub struct SseBody {
    inner: ResponseBody,
    buf: BytesMut,
    out: VecDeque<Bytes>,
    alive: Alive,
    /// Whether `alive` was asked once before the first event: a stream
    /// opened just after its agent was revoked sends nothing.
    checked: bool,
    rewrite: Option<Rewrite>,
    /// The legacy transport's `endpoint` event rewrite.
    endpoint: Option<EndpointRewrite>,
    /// Messages the gateway adds while the stream is open (refusals of
    /// messages posted to a legacy endpoint).
    injected: Option<tokio::sync::mpsc::Receiver<Value>>,
    ended: bool,
    /// The requests this stream answers: the ids not answered yet, the
    /// request's id (for the errors' `data`) and its meter (for the record).
    answering: Option<Answering>,
    /// The stream broke off: what is in `out` goes, then it ends.
    broken: bool,
}

struct Answering {
    open: Vec<Value>,
    request_id: String,
    meter: Arc<BodyMeter>,
}

#[derive(Debug, thiserror::Error)]
#[error("an upstream event exceeds {MAX_EVENT_BYTES} bytes")]
struct EventTooLarge;

impl SseBody {
    /// Wraps `inner`. `first` are JSON-RPC messages sent before the upstream's
    /// events; `rewrite`, when given, sees every event's message.
    pub fn new(
        inner: ResponseBody,
        first: Vec<Value>,
        alive: Alive,
        rewrite: Option<Rewrite>,
    ) -> Self {
        let out = first
            .into_iter()
            .map(|m| Bytes::from(format!("event: message\ndata: {m}\n\n")))
            .collect();
        SseBody {
            inner,
            buf: BytesMut::new(),
            out,
            alive,
            checked: false,
            rewrite,
            endpoint: None,
            injected: None,
            ended: false,
            answering: None,
            broken: false,
        }
    }

    /// This stream carries the answers to the requests `ids`: should it
    /// break off before answering them all, each open one gets a JSON-RPC
    /// error (see the module docs).
    pub fn answering(mut self, ids: Vec<Value>, request_id: &str, meter: Arc<BodyMeter>) -> Self {
        if !ids.is_empty() {
            self.answering = Some(Answering {
                open: ids,
                request_id: request_id.to_string(),
                meter,
            });
        }
        self
    }

    /// Takes the responses in `event` off the open requests.
    fn note_answers(&mut self, event: &[u8]) {
        let Some(answering) = self.answering.as_mut() else {
            return;
        };
        if answering.open.is_empty() {
            return;
        }
        let Ok(text) = std::str::from_utf8(event) else {
            return;
        };
        let lines = crate::event_stream::parse(text);
        let Some(data) = crate::event_stream::data(&lines) else {
            return;
        };
        let Ok(message) = serde_json::from_str::<Value>(&data) else {
            return;
        };
        let messages = match &message {
            Value::Array(all) => all.iter().collect(),
            one => vec![one],
        };
        for m in messages {
            if (m.get("result").is_some() || m.get("error").is_some())
                && let Some(id) = m.get("id")
            {
                answering.open.retain(|open| open != id);
            }
        }
    }

    /// The upstream's stream broke off. With requests still open, the half
    /// event goes, each open request gets its error, and the stream ends
    /// cleanly after them (true); without, nothing is done (false).
    fn break_off(&mut self) -> bool {
        let Some(answering) = self.answering.as_mut() else {
            return false;
        };
        if answering.open.is_empty() {
            return false;
        }
        self.buf.clear();
        // A stall was noted by the forwarder's guard; anything else is a
        // stream error.
        let code = *answering
            .meter
            .stream_cut
            .get_or_init(|| "upstream_stream_error");
        let message = match code {
            "upstream_timeout" => "the MCP server stopped sending its answer",
            _ => "the MCP server's answer broke off",
        };
        for id in answering.open.drain(..) {
            let error = serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": crate::mcp::jsonrpc::GATEWAY_REFUSAL,
                    "message": message,
                    "data": { "code": code, "request_id": answering.request_id },
                },
            });
            self.out
                .push_back(Bytes::from(format!("event: message\ndata: {error}\n\n")));
        }
        self.broken = true;
        true
    }

    /// Serves the legacy HTTP+SSE transport: `endpoint` events are
    /// rewritten by `endpoint`, and what arrives on `injected` is sent as
    /// events of its own.
    pub fn legacy(
        mut self,
        endpoint: EndpointRewrite,
        injected: tokio::sync::mpsc::Receiver<Value>,
    ) -> Self {
        self.endpoint = Some(endpoint);
        self.injected = Some(injected);
        self
    }

    /// Moves every complete event from `buf` to `out`.
    fn split_events(&mut self) {
        while let Some(end) = event_end(&self.buf) {
            let event = self.buf.split_to(end).freeze();
            self.note_answers(&event);
            if let Some(endpoint) = &self.endpoint
                && let Some(data) = endpoint_data(&event)
            {
                match endpoint(&data) {
                    Some(ours) => {
                        let event = format!("event: endpoint\ndata: {ours}\n\n");
                        self.out.push_back(Bytes::from(event));
                        continue;
                    }
                    None => {
                        // An endpoint the gateway will not serve: nothing
                        // more goes out on this stream.
                        tracing::warn!(
                            "legacy MCP server announced an endpoint the gateway refuses; stream ended"
                        );
                        self.buf.clear();
                        self.endpoint = None;
                        self.ended = true;
                        return;
                    }
                }
            }
            let event = match &self.rewrite {
                Some(rewrite) => rewrite_event(event, rewrite),
                None => event,
            };
            self.out.push_back(event);
        }
    }
}

/// The data of an `endpoint` event, `None` for any other event (the last
/// `event` field names it, as in the WHATWG parser; any line end counts).
fn endpoint_data(event: &[u8]) -> Option<String> {
    use crate::event_stream::{Line, data, parse};
    let lines = parse(std::str::from_utf8(event).ok()?);
    let is_endpoint = lines
        .iter()
        .rev()
        .find_map(|l| match l {
            Line::Field(name, value) if name == "event" => Some(value.trim() == "endpoint"),
            _ => None,
        })
        .unwrap_or(false);
    if is_endpoint {
        Some(data(&lines).unwrap_or_default())
    } else {
        None
    }
}

/// The length of the first complete event (through its empty line), if any;
/// any line end counts (event_stream.rs).
fn event_end(buf: &[u8]) -> Option<usize> {
    crate::event_stream::event_end(buf)
}

/// Rewrites one event when `rewrite` changes its message; an event nothing
/// changed goes out byte for byte.
///
/// Every part of the event is shown to `rewrite`: its data as the JSON-RPC
/// message, or as one JSON string when it is not JSON; each comment and each
/// other field's value as a JSON string. A string `rewrite` replaced by
/// something else (a refusal) is dropped from the event; a data string
/// replaced by a message becomes that message.
fn rewrite_event(event: Bytes, rewrite: &Rewrite) -> Bytes {
    use crate::event_stream::{Line, data, parse, write};
    let text = String::from_utf8_lossy(&event);
    let mut lines = parse(&text);
    let mut changed = matches!(text, std::borrow::Cow::Owned(_));
    let mut keep = Vec::with_capacity(lines.len());
    for line in lines.drain(..) {
        let (Line::Comment(t) | Line::Field(_, t)) = &line;
        if matches!(&line, Line::Field(n, _) if n == "data") {
            keep.push(line);
            continue;
        }
        let mut v = Value::String(t.clone());
        if !rewrite(&mut v) {
            keep.push(line);
            continue;
        }
        changed = true;
        if let Value::String(new) = v {
            keep.push(match line {
                Line::Comment(_) => Line::Comment(new),
                Line::Field(n, _) => Line::Field(n, new),
            });
        }
    }
    // (the message, whether the data was JSON)
    let mut message = data(&keep).map(|d| match serde_json::from_str::<Value>(&d) {
        Ok(m) => (m, true),
        Err(_) => (Value::String(d), false),
    });
    if let Some((m, _)) = &mut message {
        changed |= rewrite(m);
    }
    if !changed {
        return event;
    }
    let data = message.map(|(m, json)| match m {
        Value::String(s) if !json => s,
        m => m.to_string(),
    });
    let mut out = Vec::with_capacity(event.len());
    write(&keep, data.as_deref(), &mut out);
    Bytes::from(out)
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.ended && !std::mem::replace(&mut this.checked, true) && !(this.alive)() {
            this.ended = true;
        }
        loop {
            if this.ended || (this.broken && this.out.is_empty()) {
                this.ended = true;
                return Poll::Ready(None);
            }
            if this.out.is_empty()
                && let Some(injected) = this.injected.as_mut()
            {
                match injected.poll_recv(cx) {
                    Poll::Ready(Some(message)) => {
                        this.out
                            .push_back(Bytes::from(format!("event: message\ndata: {message}\n\n")));
                    }
                    Poll::Ready(None) => this.injected = None,
                    Poll::Pending => {}
                }
            }
            if let Some(event) = this.out.pop_front() {
                // Continuous authorization: every event is checked against the
                // current snapshot before it goes out.
                if !(this.alive)() {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            if this.broken {
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // Ended in the middle of an event: broken off, unless
                    // that last event (without its blank line) answered
                    // what was open. An end between two events is the
                    // server's to make (a resumable stream may be closed
                    // and resumed), and passes as before.
                    if !this.buf.is_empty() {
                        let rest = this.buf.clone();
                        this.note_answers(&rest);
                        if this.break_off() {
                            continue;
                        }
                    }
                    this.ended = true;
                    if !this.buf.is_empty() {
                        // A last event without its blank line: pass it on as is.
                        let rest = this.buf.split().freeze();
                        if (this.alive)() {
                            return Poll::Ready(Some(Ok(Frame::data(rest))));
                        }
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    if this.break_off() {
                        tracing::warn!(error = %e, "MCP server's event stream broke off; its open requests were answered with errors");
                        continue;
                    }
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                        this.split_events();
                        if this.buf.len() > MAX_EVENT_BYTES {
                            this.ended = true;
                            return Poll::Ready(Some(Err(Box::new(EventTooLarge))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::respond::full;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn run(input: &str, first: Vec<Value>, alive_for: usize) -> String {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let alive: Alive = Box::new(move || c.fetch_add(1, Ordering::Relaxed) < alive_for);
        let rewrite: Rewrite = Box::new(|m: &mut Value| {
            if m["id"] == 2 {
                m["result"]["tools"] = serde_json::json!([]);
                true
            } else {
                false
            }
        });
        let body = SseBody::new(full(input.to_string()), first, alive, Some(rewrite));
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn events_pass_through_or_are_rewritten() {
        let input = "event: message\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n\
                     event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"x\"}]}}\n\n\
                     : comment\r\n\r\n";
        let out = run(input, vec![serde_json::json!({"id": 9})], usize::MAX).await;
        let events: Vec<&str> = out.split_inclusive("\n\n").collect();
        assert_eq!(events.len(), 4, "{out}");
        assert_eq!(events[0], "event: message\ndata: {\"id\":9}\n\n");
        assert_eq!(
            events[1],
            "event: message\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"
        );
        // The rewritten event keeps its other fields; its data is the new message
        // (key order is serde_json's, so compare values).
        let rewritten = events[2]
            .strip_prefix("event: message\ndata: ")
            .unwrap()
            .trim_end();
        let v: Value = serde_json::from_str(rewritten).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": []}})
        );
        assert_eq!(events[3], ": comment\r\n\r\n");
    }

    /// Issue 19: CR-framed events, comments, other fields and data that is
    /// not JSON are all shown to the guard.
    #[tokio::test]
    async fn every_part_of_every_event_is_shown_to_the_rewrite() {
        let rewrite: Rewrite = Box::new(|m: &mut Value| {
            let before = m.to_string();
            let after = before.replace("SECRET", "[R]");
            if after == before {
                return false;
            }
            *m = serde_json::from_str(&after).unwrap();
            true
        });
        let input = "data: {\"id\":1,\"result\":{\"text\":\"SECRET\"}}\r\r\
                     : SECRET note\r\n\r\n\
                     event: SECRET\ndata: not json SECRET\n\n\
                     data: {\"id\":2}\r\r";
        let alive: Alive = Box::new(|| true);
        let body = SseBody::new(full(input.to_string()), vec![], alive, Some(rewrite));
        let out = body.collect().await.unwrap().to_bytes();
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(!out.contains("SECRET"), "{out}");
        assert!(out.contains("data: not json [R]\n"), "{out}");
        assert!(out.ends_with("data: {\"id\":2}\r\r"), "{out}");
    }

    /// Chunks, then an error (a reset) or the end.
    struct Chunks(VecDeque<Result<Bytes, BoxError>>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| c.map(Frame::data)))
        }
    }

    async fn broken(
        chunks: Vec<Result<&'static str, &'static str>>,
        ids: Vec<Value>,
    ) -> (String, Option<&'static str>) {
        let chunks = chunks
            .into_iter()
            .map(|c| c.map(Bytes::from).map_err(|e| -> BoxError { e.into() }))
            .collect();
        let meter = Arc::new(BodyMeter::default());
        let alive: Alive = Box::new(|| true);
        let body = SseBody::new(Chunks(chunks).boxed(), vec![], alive, None).answering(
            ids,
            "req-1",
            meter.clone(),
        );
        let out = body.collect().await.expect("a clean end").to_bytes();
        (
            String::from_utf8(out.to_vec()).unwrap(),
            meter.stream_cut.get().copied(),
        )
    }

    /// Issue 22: an upstream stream cut in the middle of an event ends
    /// cleanly with a JSON-RPC error for each request it had not answered;
    /// the half event never goes out.
    #[tokio::test]
    async fn a_stream_broken_off_mid_event_answers_its_open_requests() {
        let answered = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        for end in [Err("connection reset"), Ok("")] {
            let (out, cut) = broken(
                vec![
                    Ok(answered),
                    Ok("event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"res"),
                    end,
                ],
                vec![
                    serde_json::json!(1),
                    serde_json::json!(2),
                    serde_json::json!("three"),
                ],
            )
            .await;
            assert!(out.starts_with(answered), "{out}");
            assert!(
                !out.contains("\"res\n") && !out.contains("\"res\""),
                "{out}"
            );
            let errors: Vec<Value> = out[answered.len()..]
                .split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|e| {
                    serde_json::from_str(e.strip_prefix("event: message\ndata: ").unwrap()).unwrap()
                })
                .collect();
            assert_eq!(errors.len(), 2, "{out}");
            assert_eq!(errors[0]["id"], 2);
            assert_eq!(errors[1]["id"], "three");
            for e in &errors {
                assert_eq!(e["error"]["data"]["code"], "upstream_stream_error", "{e}");
                assert_eq!(e["error"]["data"]["request_id"], "req-1", "{e}");
            }
            assert_eq!(cut, Some("upstream_stream_error"));
        }
        // Everything answered, then a reset: nothing is owed, the error
        // passes as before; a clean end between events passes too.
        let chunks = vec![
            Ok(Bytes::from(answered)),
            Err::<Bytes, BoxError>("reset".into()),
        ];
        let alive: Alive = Box::new(|| true);
        let body = SseBody::new(Chunks(chunks.into()).boxed(), vec![], alive, None).answering(
            vec![serde_json::json!(1)],
            "req-2",
            Arc::new(BodyMeter::default()),
        );
        assert!(body.collect().await.is_err());
        let (out, cut) = broken(
            vec![Ok(answered), Ok("")],
            vec![serde_json::json!(1), serde_json::json!(5)],
        )
        .await;
        assert_eq!((out.as_str(), cut), (answered, None));
    }

    #[tokio::test]
    async fn the_stream_ends_at_the_first_event_after_revocation() {
        let input = "data: {\"id\":1}\n\ndata: {\"id\":3}\n\ndata: {\"id\":4}\n\n";
        // Asked once when the stream starts, then before each event.
        assert_eq!(run(input, vec![], 2).await, "data: {\"id\":1}\n\n");
        assert_eq!(run(input, vec![], 0).await, "", "not live from the start");
    }
}
