//! Payload capture on the data plane: a body wrapper that digests every byte
//! and keeps a bounded copy, on the request going up and the response coming
//! back. When both bodies are finished or dropped, the pair goes to the
//! vault's capture writer, which seals it with a data key of its own; nothing
//! here waits on disk. The audit record is untouched: only digests are kept
//! beside the sealed bodies, keyed by the record's request id.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_vault::{BodyTap, Capture, CaptureSink};

use crate::config::CaptureConfig;

/// Which body a wrapper taps.
#[derive(Debug, Clone, Copy)]
enum Side {
    Request,
    Response,
}

struct Pending {
    request_id: String,
    route: String,
    expires_at: i64,
    request: Option<BodyTap>,
    response: Option<BodyTap>,
    sink: CaptureSink,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let (request, request_sha256, request_bytes, req_cut) =
            self.request.take().unwrap_or_default().finish();
        let (response, response_sha256, response_bytes, resp_cut) =
            self.response.take().unwrap_or_default().finish();
        self.sink.submit(Capture {
            request_id: std::mem::take(&mut self.request_id),
            route: std::mem::take(&mut self.route),
            request,
            response,
            request_sha256,
            response_sha256,
            request_bytes,
            response_bytes,
            truncated: req_cut || resp_cut,
            expires_at: self.expires_at,
        });
    }
}

/// One request's capture in progress; both body wrappers share it.
#[derive(Clone)]
pub struct CaptureHandle(Arc<Mutex<Pending>>);

impl std::fmt::Debug for CaptureHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaptureHandle")
    }
}

impl CaptureHandle {
    /// Starts a capture for `request_id` on `route`.
    pub fn new(request_id: &str, route: &str, config: CaptureConfig, sink: CaptureSink) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let limit = config.max_bytes as usize;
        CaptureHandle(Arc::new(Mutex::new(Pending {
            request_id: request_id.to_string(),
            route: route.to_string(),
            expires_at: now + config.retention.as_secs() as i64,
            request: Some(BodyTap::new(limit)),
            response: Some(BodyTap::new(limit)),
            sink,
        })))
    }
}

/// The capture of one request on `route`, when the route captures
/// (`[routes.capture]`) and the vault's capture writer runs; every protocol
/// starts it just before the upstream call.
pub fn for_route(
    route: &crate::config::RouteConfig,
    sink: Option<&CaptureSink>,
    request_id: &portcullis_core::RequestId,
) -> Option<CaptureHandle> {
    let (config, sink) = (route.capture?, sink?);
    Some(CaptureHandle::new(
        request_id.as_str(),
        &route.name,
        config,
        sink.clone(),
    ))
}

/// A body that feeds a capture, or passes through when there is none.
#[derive(Debug)]
pub struct TapBody<B> {
    inner: B,
    tap: Option<(CaptureHandle, Side)>,
}

impl<B> TapBody<B> {
    /// No capture.
    pub fn plain(inner: B) -> Self {
        TapBody { inner, tap: None }
    }

    /// Taps the request body.
    pub fn request(inner: B, handle: Option<&CaptureHandle>) -> Self {
        TapBody {
            inner,
            tap: handle.map(|h| (h.clone(), Side::Request)),
        }
    }

    /// Taps the response body.
    pub fn response(inner: B, handle: Option<CaptureHandle>) -> Self {
        TapBody {
            inner,
            tap: handle.map(|h| (h, Side::Response)),
        }
    }
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some((handle, side))) = (&polled, &this.tap)
            && let Some(data) = frame.data_ref()
            // The lock is held only to copy bytes in memory; a poisoned lock
            // only loses the capture, never the request.
            && let Ok(mut pending) = handle.0.lock()
        {
            let pending = &mut *pending;
            let tap = match side {
                Side::Request => pending.request.as_mut(),
                Side::Response => pending.response.as_mut(),
            };
            if let Some(tap) = tap {
                // Kept bytes come out of the process-wide capture budget;
                // past it, the body is digested but not kept.
                let allowance = pending.sink.reserve(tap.room().min(data.len()));
                tap.push_up_to(data, allowance);
            }
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
