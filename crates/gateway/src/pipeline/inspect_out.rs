//! Inspect (out): DLP on response bodies while they stream.
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
use crate::config::{DlpAction, RouteConfig};
use crate::pipeline::inspect::{GuardState, is_text};
use crate::respond::{Denial, ResponseBody};

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
                portcullis_core::ErrorCode::ContentUnscannable,
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
    use portcullis_core::ErrorCode;

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
