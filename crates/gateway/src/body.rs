//! Body wrappers that let bodies stream while the gateway keeps count:
//! [`MeteredBody`] enforces the request size limit and counts bytes in;
//! [`DrainOnDrop`] reads on (bounded) an HTTP/2 request body the gateway
//! answered without reading. The record stage (`Recorder`, `RecordedBody`)
//! is `pipeline/record.rs`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};

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
    /// pipeline (an MCP result the content guard blocked): the record's
    /// outcome is then `deny`, and this its `error_code` unless a stage set one.
    pub answer_refused: OnceLock<&'static str>,
    /// The stable code of a cut made while the answer streamed (its holder
    /// was revoked or quarantined, see [`crate::liveness`]; the upstream
    /// stalled, `upstream_timeout`; an MCP event stream broke off and its
    /// unanswered requests were answered with errors,
    /// `upstream_stream_error`); it replaces whatever `error_code` the record
    /// had.
    pub stream_cut: OnceLock<&'static str>,
}

/// A SHA-256 over a body as it streams; finished once, at the body's end.
#[derive(Debug, Default)]
pub(crate) struct Digest(Option<Sha256>);

impl Digest {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.get_or_insert_with(Sha256::new).update(data);
    }

    /// The hex digest, the first time the body is found to have ended.
    pub(crate) fn finish(&mut self, done: &mut bool) -> Option<String> {
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

// The record stage lives in `pipeline/record.rs`; these names stay here too
// for the code and benches that import them from `body`.
pub use crate::pipeline::record::{CLIENT_CLOSED, RecordedBody, Recorder};
