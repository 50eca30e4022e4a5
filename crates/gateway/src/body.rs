//! Body wrappers that let bodies stream while the gateway keeps count:
//! [`MeteredBody`] enforces the request size limit and counts bytes in;
//! [`DrainOnDrop`] reads on (bounded) an HTTP/2 request body the gateway
//! answered without reading; [`RecordedBody`] counts bytes out and completes
//! the audit record when the response ends — or when it is dropped because
//! the client went away.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use portcullis_audit::AuditRecord;
use sha2::{Digest as _, Sha256};

use crate::audit_sink::AuditSink;
use crate::metrics::{Metrics, Stage};
use crate::trace::RequestTrace;

/// Errors crossing body boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the configured limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// Shared counters between a [`MeteredBody`] and the pipeline.
#[derive(Debug, Default)]
pub struct BodyMeter {
    /// Bytes received so far.
    pub bytes: AtomicU64,
    /// Set when the limit was crossed (the upstream call then failed because of it).
    pub exceeded: AtomicBool,
    /// SHA-256 (hex) of the whole body, set when it has been read to its end.
    pub sha256: OnceLock<String>,
    /// SHA-256 (hex) of the response body as the upstream sent it, set by
    /// inspect_out when its redaction changed the body.
    pub response_sha256_unredacted: OnceLock<String>,
    /// What inspect_out found in the response body, for the record. Written
    /// by the response body as it streams and read once when the record is
    /// completed; never held across IO.
    pub response_findings: std::sync::Mutex<Vec<portcullis_audit::ContentFinding>>,
    /// The stable code of a refusal made inside the answer after it left the
    /// pipeline (an MCP result the content guard blocked), for the record's
    /// `error_code` unless a stage set one.
    pub answer_refused: OnceLock<&'static str>,
    /// The stable code of a cut made while the answer streamed (its holder
    /// was revoked or quarantined, see [`crate::liveness`]); it replaces
    /// whatever `error_code` the record had.
    pub stream_cut: OnceLock<&'static str>,
}

/// A SHA-256 over a body as it streams; finished once, at the body's end.
#[derive(Debug, Default)]
struct Digest(Option<Sha256>);

impl Digest {
    fn update(&mut self, data: &[u8]) {
        self.0.get_or_insert_with(Sha256::new).update(data);
    }

    /// The hex digest, the first time the body is found to have ended.
    fn finish(&mut self, done: &mut bool) -> Option<String> {
        if std::mem::replace(done, true) {
            return None;
        }
        Some(hex::encode(self.0.take().unwrap_or_default().finalize()))
    }
}

/// A request body with a size limit and a byte count.
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    limit: u64,
    meter: Arc<BodyMeter>,
    digest: Digest,
    done: bool,
}

impl<B: Body> MeteredBody<B> {
    /// Wraps `inner`, allowing at most `limit` bytes.
    pub fn new(inner: B, limit: u64, meter: Arc<BodyMeter>) -> Self {
        let mut body = MeteredBody {
            inner,
            limit,
            meter,
            digest: Digest::default(),
            done: false,
        };
        // An empty body is never polled: it is complete already.
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(hex) = self.digest.finish(&mut self.done) {
            let _ = self.meter.sha256.set(hex);
        }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this
                        .meter
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if total > this.limit {
                        this.meter.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                    this.digest.update(data);
                }
                // A body of known length is not polled again after its last frame.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The most of an unread HTTP/2 request body read (and thrown away) after the
/// answer, and for how long.
pub const DRAIN_MAX_BYTES: u64 = 4 << 20;
/// See [`DRAIN_MAX_BYTES`].
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A client's request body that, dropped unread over HTTP/2, is read on in a
/// task of its own, up to [`DRAIN_MAX_BYTES`] within [`DRAIN_TIMEOUT`].
///
/// Why: a stream whose body the server stops reading is reset once the answer
/// is out (`RST_STREAM(NO_ERROR)`, RFC 9113 §8.1). Clients that are still
/// uploading then (curl 7.x among them) discard the answer and report a
/// framing error, so an oversized POST got no 413. Reading the rest lets the
/// client finish its upload and read the answer; past the bound the stream
/// is reset as before, so a client cannot make the gateway read without end.
#[derive(Debug)]
pub struct DrainOnDrop {
    inner: Option<Incoming>,
    drain: bool,
}

impl DrainOnDrop {
    /// Wraps `inner`; `drain` says whether to drain it if dropped unread.
    pub fn new(inner: Incoming, drain: bool) -> Self {
        DrainOnDrop {
            inner: Some(inner),
            drain,
        }
    }
}

impl DrainOnDrop {
    /// Reads the rest of the body and throws it away, up to
    /// [`DRAIN_MAX_BYTES`] within [`DRAIN_TIMEOUT`]; what is left then is
    /// dropped as usual.
    pub async fn drain_now(&mut self) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        let read = async {
            let mut total = 0u64;
            while let Some(Ok(frame)) =
                std::future::poll_fn(|cx| Pin::new(&mut *inner).poll_frame(cx)).await
            {
                if let Some(data) = frame.data_ref() {
                    total += data.remaining() as u64;
                    if total > DRAIN_MAX_BYTES {
                        return false;
                    }
                }
            }
            true
        };
        let whole = tokio::time::timeout(DRAIN_TIMEOUT, read)
            .await
            .unwrap_or(false);
        if !whole {
            // Past the bound: no drain on drop either; the stream is reset.
            self.drain = false;
        }
    }
}

impl Body for DrainOnDrop {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken stream is not worth reading on.
            this.drain = false;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if !self.drain || inner.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let read = async {
                let mut total = 0u64;
                while let Some(Ok(frame)) =
                    std::future::poll_fn(|cx| Pin::new(&mut inner).poll_frame(cx)).await
                {
                    if let Some(data) = frame.data_ref() {
                        total += data.remaining() as u64;
                        if total > DRAIN_MAX_BYTES {
                            break;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, read).await;
        });
    }
}

/// A request's audit record in progress. Dropping it completes and submits the
/// record, so a request is recorded however it ends: answered, failed, or
/// abandoned by the client (then with status 499).
#[derive(Debug)]
pub struct Recorder {
    record: Option<AuditRecord>,
    started: Instant,
    meter: Arc<BodyMeter>,
    sink: AuditSink,
    metrics: Arc<Metrics>,
    /// The request's trace, when tracing is on; ended with the record.
    trace: Option<RequestTrace>,
    /// Behavioral analytics' queue, fed the completed record.
    tap: Option<crate::analytics::AnalyticsTap>,
    /// The budget of refused unauthenticated requests' records; set on the
    /// data plane.
    anonymous: Option<Arc<crate::anonymous::AnonymousSampler>>,
}

/// Status recorded when the client disconnected before the response was complete.
pub const CLIENT_CLOSED: u16 = 499;

impl Recorder {
    /// Starts a record; `record.status` should say what happens if nothing else is set.
    pub fn new(
        record: AuditRecord,
        started: Instant,
        meter: Arc<BodyMeter>,
        sink: AuditSink,
        metrics: Arc<Metrics>,
    ) -> Self {
        Recorder {
            record: Some(record),
            started,
            meter,
            sink,
            metrics,
            trace: None,
            tap: None,
            anonymous: None,
        }
    }

    /// Samples the record if its caller never authenticated (see
    /// `anonymous.rs`).
    pub fn set_anonymous_sampler(&mut self, sampler: Arc<crate::anonymous::AnonymousSampler>) {
        self.anonymous = Some(sampler);
    }

    /// Feeds the completed record to behavioral analytics too.
    pub fn set_tap(&mut self, tap: crate::analytics::AnalyticsTap) {
        self.tap = Some(tap);
    }

    /// Attaches the request's trace.
    pub fn set_trace(&mut self, trace: RequestTrace) {
        self.trace = Some(trace);
    }

    /// Notes a stage's timing in the trace, if any.
    pub fn trace_stage(&mut self, stage: Stage, start: Instant, elapsed: Duration) {
        if let Some(trace) = &mut self.trace {
            trace.stage(stage, start, elapsed);
        }
    }

    /// The `traceparent` to send upstream, when tracing is on.
    pub fn traceparent(&self) -> Option<http::HeaderValue> {
        self.trace.as_ref().and_then(RequestTrace::traceparent)
    }

    /// The record being built.
    pub fn record(&mut self) -> &mut AuditRecord {
        // Invariant: `record` is `Some` until `drop`.
        self.record.get_or_insert_with(unreachable_record)
    }
}

#[allow(clippy::panic)]
fn unreachable_record() -> AuditRecord {
    panic!("Recorder used after completion")
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            let elapsed = self.started.elapsed();
            record.duration_us = elapsed.as_micros() as u64;
            record.bytes_in = self.meter.bytes.load(Ordering::Relaxed);
            record.request_sha256 = self.meter.sha256.get().cloned();
            record.response_sha256_unredacted =
                self.meter.response_sha256_unredacted.get().cloned();
            if let Ok(mut found) = self.meter.response_findings.lock() {
                let room =
                    portcullis_audit::MAX_CONTENT_FINDINGS.saturating_sub(record.content.len());
                record.content.extend(found.drain(..).take(room));
            }
            // An SSE client often closes the stream once it has its answer:
            // the refusal inside the answer says more than `client_closed`.
            if matches!(record.error_code.as_deref(), None | Some("client_closed"))
                && let Some(code) = self.meter.answer_refused.get()
            {
                record.error_code = Some((*code).to_string());
            }
            // A cut says why the stream ended better than the error or the
            // client's leaving that followed from it.
            if let Some(code) = self.meter.stream_cut.get() {
                record.error_code = Some((*code).to_string());
            }
            self.metrics.stage(Stage::Total, elapsed);
            self.metrics
                .request(record.resource.as_deref().unwrap_or("-"), record.status);
            if let Some(trace) = self.trace.take() {
                trace.finish(&record, elapsed);
            }
            if let Some(tap) = &self.tap {
                tap.offer(&record);
            }
            // A refusal of a caller that never authenticated is written in
            // full only within its source's budget (anonymous.rs).
            if record.principal.is_none()
                && let Some(sampler) = &self.anonymous
            {
                let source = record.source_ip.as_deref().unwrap_or("-");
                let sink = &self.sink;
                let full = sampler.admit(source, record.time_ms, |summaries| {
                    for summary in summaries {
                        sink.submit(summary);
                    }
                });
                if !full {
                    self.metrics.anonymous_sampled.inc();
                    return;
                }
            }
            self.sink.submit(record);
        }
    }
}

/// A response body that counts bytes out and submits the record at its end.
#[derive(Debug)]
pub struct RecordedBody<B: Body> {
    inner: B,
    recorder: Option<Recorder>,
    digest: Digest,
    done: bool,
}

impl<B: Body> RecordedBody<B> {
    /// Wraps a response body.
    pub fn new(inner: B, recorder: Recorder) -> Self {
        RecordedBody {
            inner,
            recorder: Some(recorder),
            digest: Digest::default(),
            done: false,
        }
    }
}

impl<B: Body> RecordedBody<B> {
    /// The response has been handed over whole: the record gets the digest and
    /// is submitted.
    fn complete(&mut self) {
        if let Some(mut rec) = self.recorder.take()
            && let Some(hex) = self.digest.finish(&mut self.done)
        {
            rec.record().response_sha256 = Some(hex);
        }
    }
}

impl<B: Body> Drop for RecordedBody<B> {
    fn drop(&mut self) {
        // hyper stops polling a body that reports its end (a known length, or
        // an empty body it never polls), so reaching the end is checked here too.
        if self.inner.is_end_stream() {
            self.complete();
            return;
        }
        // Still holding the recorder means the body never reached its end: the
        // client went away mid-response (or the server is being torn down).
        if let Some(rec) = self.recorder.as_mut() {
            let record = rec.record();
            if record.error_code.is_none() {
                record.error_code = Some("client_closed".into());
            }
        }
    }
}

impl<B> Body for RecordedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(rec)) = (frame.data_ref(), this.recorder.as_mut()) {
                    rec.record().bytes_out += data.len() as u64;
                    this.digest.update(data);
                }
                if this.inner.is_end_stream() {
                    this.complete();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(rec) = this.recorder.as_mut() {
                    rec.record().error_code = Some("upstream_stream_error".into());
                }
                this.recorder = None;
            }
            Poll::Ready(None) => this.complete(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
