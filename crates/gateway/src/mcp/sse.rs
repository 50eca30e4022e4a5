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

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;

use crate::body::BoxError;
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
        }
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
            if this.ended {
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
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
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

    #[tokio::test]
    async fn the_stream_ends_at_the_first_event_after_revocation() {
        let input = "data: {\"id\":1}\n\ndata: {\"id\":3}\n\ndata: {\"id\":4}\n\n";
        // Asked once when the stream starts, then before each event.
        assert_eq!(run(input, vec![], 2).await, "data: {\"id\":1}\n\n");
        assert_eq!(run(input, vec![], 0).await, "", "not live from the start");
    }
}
