//! Body wrappers that let bodies stream while the gateway keeps count:
//! [`MeteredBody`] enforces the request size limit and counts bytes in;
//! [`RecordedBody`] counts bytes out and completes the audit record when the
//! response ends — or when it is dropped because the client went away.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_audit::AuditRecord;

use crate::audit_sink::AuditSink;
use crate::metrics::{Metrics, Stage};

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
}

/// A request body with a size limit and a byte count.
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    limit: u64,
    meter: Arc<BodyMeter>,
}

impl<B> MeteredBody<B> {
    /// Wraps `inner`, allowing at most `limit` bytes.
    pub fn new(inner: B, limit: u64, meter: Arc<BodyMeter>) -> Self {
        MeteredBody {
            inner,
            limit,
            meter,
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
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
        }
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
            self.metrics.stage(Stage::Total, elapsed);
            self.metrics
                .request(record.resource.as_deref().unwrap_or("-"), record.status);
            self.sink.submit(record);
        }
    }
}

/// A response body that counts bytes out and submits the record at its end.
#[derive(Debug)]
pub struct RecordedBody<B> {
    inner: B,
    recorder: Option<Recorder>,
}

impl<B> RecordedBody<B> {
    /// Wraps a response body.
    pub fn new(inner: B, recorder: Recorder) -> Self {
        RecordedBody {
            inner,
            recorder: Some(recorder),
        }
    }
}

impl<B> Drop for RecordedBody<B> {
    fn drop(&mut self) {
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
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(rec) = this.recorder.as_mut() {
                    rec.record().error_code = Some("upstream_stream_error".into());
                }
                this.recorder = None;
            }
            Poll::Ready(None) => this.recorder = None,
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
