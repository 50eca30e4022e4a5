//! Record: the audit record of every request, the pipeline's last stage,
//! which runs however the request ends. [`Recorder`] holds the record while
//! the stages fill it in; [`RecordedBody`] counts bytes out and completes the
//! record when the response ends — or when it is dropped because the client
//! went away (status 499). Records of callers that never authenticated are
//! sampled per source (`anonymous.rs`); nothing else is ever left out.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_audit::{AuditRecord, Outcome};

use crate::audit_sink::AuditSink;
use crate::body::{BodyMeter, BoxError, Digest};
use crate::metrics::{Metrics, Stage};
use crate::trace::RequestTrace;

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
            if let Some(code) = self.meter.answer_refused.get() {
                // The agent was refused what it asked for, if only once the
                // upstream had answered: a denial, as the same refusal made
                // before forwarding is (an MCP result the guard blocked).
                record.outcome = Outcome::Deny;
                // An SSE client often closes the stream once it has its
                // answer: the refusal inside it says more than `client_closed`.
                if matches!(record.error_code.as_deref(), None | Some("client_closed")) {
                    record.error_code = Some((*code).to_string());
                }
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
