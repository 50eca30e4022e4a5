//! Inspect (out): prompt injection in HTTP answers, then DLP on response
//! bodies while they stream.
//!
//! On an HTTP route whose `injection` is `alert` or `block`, the upstream's
//! answer is a tool output like an MCP tool's result: [`scan_answer`] reads
//! it whole (within `[limits] max_body_bytes`) and scans it on the
//! `tool_output` channel through the same [`TextScan`] as MCP answers and
//! LLM tool messages — JSON string by string through the one walk
//! ([`walk_json`]), any other text whole, each structured text record by
//! record. `block` refuses the answer with `content_blocked`, naming the
//! field (its JSON pointer, `#` and the place inside a structured text);
//! the findings go to the record with their pointers either way. An answer
//! the guard cannot read (compressed, not text, not UTF-8, invalid JSON,
//! larger than the limit, or holding an undecodable MIME part) is refused
//! with `content_unscannable` on a route that blocks, unless it sets
//! `allow_unscannable`; elsewhere it passes unscanned. Event streams are
//! read whole too on such a route: the scan needs the whole answer.
//!
//! On a route with `dlp = "redact"` or `"block"`, a text response's body is
//! wrapped in [`GuardedBody`], which passes each chunk through a
//! [`StreamRedactor`]: found values are replaced by typed placeholders, and
//! a value split across chunks is still caught because the redactor holds
//! back the tail that could still be the start of one. Nothing buffers the whole
//! response, so SSE and chunked responses keep streaming. With
//! `dlp = "alert"` the body passes unchanged and the findings are only
//! logged. A response cannot be refused once it streams, so `block` redacts
//! responses.
//!
//! The response's `Content-Length` is dropped when redacting (placeholders
//! change the length); inspect-in already asked the upstream for an
//! uncompressed response. A compressed or non-text answer passes unscanned,
//! except on a route with `dlp = "block"`, which refuses it with
//! `content_unscannable` unless it sets `allow_unscannable`.
//!
//! The stream redactor never sends a prefix of a secret: it holds back the
//! word or number a chunk ends in (at most 8 KiB) until it can no longer
//! grow into a secret (`portcullis_guard::dlp::redact`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use portcullis_core::RequestId;
use portcullis_guard::dlp::Scanner;
use portcullis_guard::dlp::redact::{Redactor, StreamRedactor};

use sha2::{Digest as _, Sha256};

use crate::body::{BodyMeter, BoxError};
use crate::config::{DlpAction, InjectionAction, RouteConfig, RouteGuard};
use crate::pipeline::inspect::{GuardState, TextScan, is_json, is_text, parse_strict, walk_json};
use crate::respond::{Denial, ResponseBody, full};
use portcullis_core::ErrorCode;
use portcullis_guard::Channel;

/// The injection scan of an HTTP upstream's answer (see the module docs);
/// the answer rebuilt from what was read, or the refusal.
pub async fn scan_answer(
    state: Option<&GuardState>,
    route: &RouteConfig,
    max_bytes: u64,
    request_id: &RequestId,
    meter: &Arc<BodyMeter>,
    response: Response<ResponseBody>,
) -> Result<Response<ResponseBody>, Denial> {
    let settings = route.guard;
    let Some(state) = state.filter(|_| settings.injection != InjectionAction::Off) else {
        return Ok(response);
    };
    let refuses = settings.refuses_unscannable();
    let (parts, mut body) = response.into_parts();
    if http_body::Body::size_hint(&body).exact() == Some(0) {
        return Ok(Response::from_parts(parts, body));
    }
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    if encoded || !is_text(content_type) {
        if refuses {
            return Err(unscannable_answer("compressed or not text"));
        }
        return Ok(Response::from_parts(parts, body));
    }
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::warn!(route = %route.name, problem = %e, "upstream answer could not be read");
            Denial::new(
                ErrorCode::UpstreamUnavailable,
                format!(
                    "the answer of route `{}`'s upstream could not be read",
                    route.name
                ),
            )
        })?;
        // Trailers are dropped: the answer is sent on whole.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if (read.len() + data.len()) as u64 > max_bytes {
            if refuses {
                return Err(unscannable_answer("larger than `[limits] max_body_bytes`"));
            }
            // Passed on unscanned: what was read, then the rest as it comes.
            read.extend_from_slice(&data);
            let body = Prefixed {
                head: Some(read.freeze()),
                rest: body,
            };
            return Ok(Response::from_parts(parts, body.boxed()));
        }
        read.extend_from_slice(&data);
    }
    let bytes = read.freeze();
    let Ok(text) = std::str::from_utf8(&bytes) else {
        if refuses {
            return Err(unscannable_answer("not UTF-8"));
        }
        return Ok(Response::from_parts(parts, full(bytes)));
    };
    let json = if is_json(content_type) {
        match parse_strict(text) {
            Ok(v) => Some(v),
            Err(_) if refuses => {
                return Err(unscannable_answer("JSON that is invalid or repeats a key"));
            }
            Err(_) => None,
        }
    } else {
        None
    };
    // Injection only: DLP runs on the answer as it goes on (`run`).
    let injection_only = RouteGuard {
        dlp: DlpAction::Off,
        ..settings
    };
    let mut scan = TextScan::new(state, injection_only, request_id, &route.name, "response");
    let mut audited = Vec::new();
    match json {
        Some(mut value) => walk_json(&mut value, &mut String::new(), &mut |pointer, s, _| {
            scan.scan(s, Channel::ToolOutput, pointer, &mut audited);
            false
        }),
        None => {
            scan.scan(text, Channel::ToolOutput, "", &mut audited);
        }
    }
    if !audited.is_empty()
        && let Ok(mut found) = meter.response_findings.lock()
    {
        let room = portcullis_audit::MAX_CONTENT_FINDINGS.saturating_sub(found.len());
        found.extend(audited.into_iter().take(room));
    }
    scan.settle("answer").1?;
    Ok(Response::from_parts(parts, full(bytes)))
}

/// An answer passed on unscanned: what was read, then the rest as it comes.
struct Prefixed {
    head: Option<Bytes>,
    rest: ResponseBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }
}

/// The refusal of an answer the guard cannot read.
fn unscannable_answer(what: &str) -> Denial {
    Denial::new(
        ErrorCode::ContentUnscannable,
        format!(
            "the upstream's answer is {what}, so the content guard cannot read it; \
             the route refuses what it cannot scan (`[routes.guard] allow_unscannable`)"
        ),
    )
}

/// Wraps the response body when the route's DLP setting asks for it.
///
/// `obliged` is set when the allowing policy carries `@obligation("redact")`:
/// the response is redacted whatever the route's own setting, and an answer
/// the redactor cannot read (compressed, or not text) is refused with
/// `obligation_unsupported` instead of passing unredacted (fail closed).
pub fn run(
    state: Option<&GuardState>,
    route: &RouteConfig,
    obliged: bool,
    request_id: &RequestId,
    meter: &Arc<BodyMeter>,
    response: Response<ResponseBody>,
) -> Result<Response<ResponseBody>, Denial> {
    let Some(state) = state else {
        if obliged {
            return Err(crate::pipeline::decide::unsupported(
                "redact",
                "no redactor is running",
            ));
        }
        return Ok(response);
    };
    let redact = match route.guard.dlp {
        _ if obliged => true,
        DlpAction::Off => return Ok(response),
        DlpAction::Alert => false,
        DlpAction::Redact | DlpAction::Block => true,
    };
    let (mut parts, body) = response.into_parts();
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    if encoded || !is_text(parts.headers.get(header::CONTENT_TYPE)) {
        if obliged {
            return Err(crate::pipeline::decide::unsupported(
                "redact",
                "the upstream's answer is compressed or not text",
            ));
        }
        let empty = http_body::Body::size_hint(&body).exact() == Some(0);
        if route.guard.dlp == DlpAction::Block && !route.guard.allow_unscannable && !empty {
            return Err(Denial::new(
                ErrorCode::ContentUnscannable,
                "the upstream's answer is compressed or not text, so the content guard cannot read it; \
                 the route refuses what it cannot scan (`[routes.guard] allow_unscannable`)",
            ));
        }
        return Ok(Response::from_parts(parts, body));
    }
    if redact {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let guarded = GuardedBody {
        inner: body,
        redactor: StreamRedactor::new(state.guard.scanner().clone(), Redactor::new(&state.key)),
        redact,
        done: false,
        logged: 0,
        upstream_digest: Sha256::new(),
        meter: meter.clone(),
        request_id: request_id.to_string(),
        route: route.name.clone(),
    };
    Ok(Response::from_parts(parts, guarded.boxed()))
}

/// A response body passed through the stream redactor.
pub struct GuardedBody {
    inner: ResponseBody,
    redactor: StreamRedactor<Arc<Scanner>>,
    /// Emit the redacted stream (`true`) or the original (`false`, alert).
    redact: bool,
    done: bool,
    /// Findings already logged.
    logged: usize,
    /// SHA-256 of the body as the upstream sent it, for the audit record
    /// when redaction changed it.
    upstream_digest: Sha256,
    meter: Arc<BodyMeter>,
    request_id: String,
    route: String,
}

impl GuardedBody {
    /// The stream ended: the record learns the upstream body's digest when
    /// redaction changed what the client received.
    fn finish_digest(&mut self) {
        let digest = std::mem::take(&mut self.upstream_digest);
        if self.redact && !self.redactor.findings().is_empty() {
            let _ = self
                .meter
                .response_sha256_unredacted
                .set(hex::encode(digest.finalize()));
        }
    }

    fn log_new_findings(&mut self) {
        let new = &self.redactor.findings()[self.logged..];
        if !new.is_empty()
            && let Ok(mut audited) = self.meter.response_findings.lock()
        {
            for f in new {
                if audited.len() >= portcullis_audit::MAX_CONTENT_FINDINGS {
                    break;
                }
                audited.push(portcullis_audit::ContentFinding {
                    direction: "response".into(),
                    kind: f.kind.as_str().into(),
                    pointer: None,
                    start: f.start as u64,
                    end: f.end as u64,
                    fingerprint: Some(f.fingerprint.clone()),
                });
            }
        }
        for f in &self.redactor.findings()[self.logged..] {
            tracing::warn!(
                request_id = %self.request_id,
                route = %self.route,
                direction = "response",
                kind = f.kind.as_str(),
                start = f.start,
                end = f.end,
                fingerprint = %f.fingerprint,
                redacted = self.redact,
                "content guard finding"
            );
        }
        self.logged = self.redactor.findings().len();
    }

    fn emit(&mut self, original: Option<Bytes>, redacted: Vec<u8>) -> Option<Bytes> {
        self.log_new_findings();
        let out = if self.redact {
            Bytes::from(redacted)
        } else {
            original.unwrap_or_default()
        };
        (!out.is_empty()).then_some(out)
    }
}

impl Body for GuardedBody {
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
                        this.upstream_digest.update(&data);
                        let redacted = this.redactor.push(&data);
                        if let Some(out) = this.emit(Some(data), redacted) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        // Everything was held back: read on.
                    }
                    Err(frame) => {
                        // Trailers end the data: flush what is held back.
                        // When there is a tail to send, the trailers are
                        // dropped: a rewritten body cannot vouch for them.
                        let tail = this.redactor.finish();
                        this.done = true;
                        this.finish_digest();
                        return Poll::Ready(Some(Ok(match this.emit(None, tail) {
                            Some(out) => Frame::data(out),
                            None => frame,
                        })));
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.done = true;
                    let tail = this.redactor.finish();
                    this.finish_digest();
                    return Poll::Ready(this.emit(None, tail).map(|b| Ok(Frame::data(b))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.redact {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn answer(headers: &[(&str, &str)]) -> Response<ResponseBody> {
        let mut r = Response::new(crate::respond::full("key AKIAQWADE5R42RDZ4JEM"));
        for (k, v) in headers {
            r.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r
    }

    /// Issue 19: an HTTP upstream's answer is a tool output, scanned as an
    /// MCP answer and an LLM tool message are (the one `TextScan`): a
    /// document inside one of its fields is read as records, the refusal
    /// and the record name the field and the place inside it, on all three
    /// protocols; what the guard cannot read is refused on a route that
    /// blocks, unless it opts out.
    #[tokio::test]
    async fn answers_are_scanned_as_tool_outputs_on_every_protocol() {
        use crate::config::{InjectionAction, RouteGuard};
        use crate::llm::api::{Endpoint, for_each_text};
        let config = Config::quickstart();
        let state = GuardState {
            guard: portcullis_guard::Guard::new().unwrap(),
            key: [7; 32],
        };
        let id = RequestId::new();
        let guarded = |injection, allow_unscannable| {
            let mut route = config.routes[0].clone();
            route.guard = RouteGuard {
                injection,
                dlp: DlpAction::Off,
                allow_unscannable,
            };
            route
        };
        let block = guarded(InjectionAction::Block, false);
        let records = |infected| portcullis_guard::eval::records_fixture(infected);
        let json_answer = |infected| {
            let mut r = Response::new(crate::respond::full(
                serde_json::json!({"source": "inbox", "export": records(infected)}).to_string(),
            ));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        };
        let want = "/export#/2/body";

        // HTTP: refused, the field named in the refusal and the record.
        let meter = Arc::new(BodyMeter::default());
        let denial = scan_answer(
            Some(&state),
            &block,
            1 << 20,
            &id,
            &meter,
            json_answer(Some(2)),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(denial.code, ErrorCode::ContentBlocked);
        assert!(denial.message.contains(want), "{}", denial.message);
        assert!(
            meter
                .response_findings
                .lock()
                .unwrap()
                .iter()
                .any(|f| f.kind == "prompt_injection"
                    && f.direction == "response"
                    && f.pointer.as_deref() == Some(want)),
            "{:?}",
            meter.response_findings
        );
        // The clean answer passes whole; alert passes and records.
        let ok = scan_answer(
            Some(&state),
            &block,
            1 << 20,
            &id,
            &meter,
            json_answer(None),
        )
        .await
        .unwrap();
        let body = ok.into_body().collect().await.unwrap().to_bytes();
        let expected = serde_json::json!({"source": "inbox", "export": records(None)}).to_string();
        assert_eq!(body, expected.as_bytes());
        let alert = guarded(InjectionAction::Alert, false);
        let meter = Arc::new(BodyMeter::default());
        assert!(
            scan_answer(
                Some(&state),
                &alert,
                1 << 20,
                &id,
                &meter,
                json_answer(Some(2))
            )
            .await
            .is_ok()
        );
        assert!(!meter.response_findings.lock().unwrap().is_empty());

        // MCP: the same document in a tool result's text.
        let settings = block.guard;
        let meter = BodyMeter::default();
        let text = serde_json::json!({"source": "inbox", "export": records(Some(2))}).to_string();
        let mut m = serde_json::json!({"jsonrpc": "2.0", "id": 1,
            "result": {"content": [{"type": "text", "text": text}]}});
        assert!(crate::mcp::guard::scan_answer(
            &state, settings, &mut m, &id, "r", &meter
        ));
        let at = format!("/result/content/0/text#{want}");
        assert!(m["error"]["message"].as_str().unwrap().contains(&at), "{m}");
        assert!(
            meter
                .response_findings
                .lock()
                .unwrap()
                .iter()
                .any(|f| f.pointer.as_deref() == Some(&at))
        );

        // LLM: the same document in a tool message.
        let mut body = serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": "Summarise my inbox."},
            {"role": "tool", "tool_call_id": "1", "content": text}]});
        let mut scan = TextScan::new(&state, settings, &id, "r", "request");
        let mut audited = Vec::new();
        for_each_text(&Endpoint::ChatCompletions, &mut body, &mut |p, t, c| {
            scan.scan_in_place(t, c, p, &mut audited)
        });
        let denial = scan.settle("request").1.err().unwrap();
        let at = format!("/messages/1/content#{want}");
        assert!(denial.message.contains(&at), "{}", denial.message);
        assert!(audited.iter().any(|f| f.pointer.as_deref() == Some(&at)));

        // Unreadable answers: refused on a route that blocks, passed on a
        // route that opts out.
        let meter = Arc::new(BodyMeter::default());
        for (headers, body) in [
            (vec![("content-type", "application/octet-stream")], "x"),
            (vec![("content-encoding", "gzip")], "x"),
            (
                vec![("content-type", "application/json")],
                "{\"a\": 1, \"a\": 2}",
            ),
        ] {
            let answer = || {
                let mut r = Response::new(crate::respond::full(body));
                for (k, v) in &headers {
                    r.headers_mut().insert(*k, v.parse().unwrap());
                }
                r
            };
            let refused = scan_answer(Some(&state), &block, 1 << 20, &id, &meter, answer()).await;
            assert_eq!(
                refused.err().map(|d| d.code),
                Some(ErrorCode::ContentUnscannable)
            );
            let optout = guarded(InjectionAction::Block, true);
            assert!(
                scan_answer(Some(&state), &optout, 1 << 20, &id, &meter, answer())
                    .await
                    .is_ok()
            );
        }
        // Larger than the limit: refused on a blocking route, else passed
        // on whole and unscanned.
        let big = scan_answer(Some(&state), &block, 16, &id, &meter, json_answer(Some(2))).await;
        assert_eq!(
            big.err().map(|d| d.code),
            Some(ErrorCode::ContentUnscannable)
        );
        let optout = guarded(InjectionAction::Block, true);
        let passed = scan_answer(Some(&state), &optout, 16, &id, &meter, json_answer(Some(2)))
            .await
            .unwrap();
        let body = passed.into_body().collect().await.unwrap().to_bytes();
        let expected =
            serde_json::json!({"source": "inbox", "export": records(Some(2))}).to_string();
        assert_eq!(body, expected.as_bytes());
    }

    /// A redact obligation on an answer the redactor cannot read is refused,
    /// never passed on unredacted; without the obligation it passes.
    #[test]
    fn an_unreadable_answer_under_a_redact_obligation_is_refused() {
        let config = Config::quickstart();
        let route = &config.routes[0];
        let state = GuardState {
            guard: portcullis_guard::Guard::new().unwrap(),
            key: [7; 32],
        };
        let id = RequestId::new();
        let meter = Arc::new(BodyMeter::default());
        let code = |state: Option<&GuardState>, obliged, headers: &[(&str, &str)]| {
            run(state, route, obliged, &id, &meter, answer(headers))
                .err()
                .map(|d| d.code)
        };
        let unsupported = Some(ErrorCode::ObligationUnsupported);
        assert_eq!(
            code(Some(&state), true, &[("content-encoding", "gzip")]),
            unsupported
        );
        assert_eq!(
            code(Some(&state), true, &[("content-type", "image/png")]),
            unsupported
        );
        assert_eq!(
            code(None, true, &[("content-type", "text/plain")]),
            unsupported
        );
        assert_eq!(
            code(Some(&state), true, &[("content-type", "text/plain")]),
            None
        );
        assert_eq!(
            code(Some(&state), false, &[("content-encoding", "gzip")]),
            None
        );
        assert_eq!(code(None, false, &[]), None);
    }
}
