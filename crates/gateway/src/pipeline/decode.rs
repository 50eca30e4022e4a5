//! Decode: the cheap checks that protect everything after them — body size (from
//! `Content-Length` now, and while streaming via [`MeteredBody`]), path safety,
//! and audit back-pressure.

use std::sync::Arc;

use http::{Request, header};
use hyper::body::Incoming;
use portcullis_core::ErrorCode;

use crate::audit_sink::AuditSink;
use http_body_util::BodyExt;

use crate::body::{BodyMeter, BoxError, MeteredBody};
use crate::respond::Denial;

/// Limits applied by this stage.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted.
    pub max_body_bytes: u64,
}

/// A request body on its way upstream: the client's, metered as it streams,
/// or the one inspect rebuilt after reading it whole.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// A request that passed decode: head plus a metered body.
pub struct DecodedRequest {
    /// Method, URI, headers.
    pub parts: http::request::Parts,
    /// The body, limited and counted as it streams.
    pub body: RequestBody,
}

impl std::fmt::Debug for DecodedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedRequest")
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

/// Runs the stage.
pub fn run(
    limits: &Limits,
    sink: &AuditSink,
    request: Request<Incoming>,
    meter: &Arc<BodyMeter>,
) -> Result<DecodedRequest, Denial> {
    if sink.overloaded() {
        // Refusing is better than serving requests we cannot record.
        return Err(Denial::new(
            ErrorCode::Unavailable,
            "the gateway is overloaded; retry later",
        ));
    }
    let (parts, body) = request.into_parts();
    if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Denial::new(ErrorCode::BadRequest, "invalid Content-Length header"))?;
        if length > limits.max_body_bytes {
            return Err(too_large(limits.max_body_bytes));
        }
    }
    check_path(parts.uri.path())?;
    Ok(DecodedRequest {
        parts,
        body: MeteredBody::new(body, limits.max_body_bytes, meter.clone()).boxed_unsync(),
    })
}

/// The denial for an oversized body.
pub fn too_large(limit: u64) -> Denial {
    Denial::new(
        ErrorCode::PayloadTooLarge,
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

/// Refuses paths an upstream might resolve differently from the gateway: dot
/// segments (`..` could climb out of the route's base path), encoded slashes,
/// backslashes and NUL.
fn check_path(path: &str) -> Result<(), Denial> {
    let bad = |why: &str| {
        Err(Denial::new(
            ErrorCode::BadRequest,
            format!("invalid request path: {why}"),
        ))
    };
    if !path.starts_with('/') {
        return bad("must start with `/`");
    }
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%00", "\\"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return bad("encoded separators are not allowed");
    }
    let is_dot = |seg: &str| {
        let seg = seg.replace("%2e", ".");
        seg == "." || seg == ".."
    };
    if lower.split('/').any(is_dot) {
        return bad("dot segments are not allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["/", "/demo", "/demo/a.b/c", "/demo/..x", "/a%20b"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/demo/../x",
            "/demo/./x",
            "/demo/%2e%2E/x",
            "/demo/%2E",
            "/a%2fb",
            "/a\\b",
            "/a%00",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}

/// How long a client may take to send a request body that must be read whole.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a whole request body within the body limit (which the meter
/// enforces as it streams) and [`BODY_READ_TIMEOUT`]. The one body read of
/// the pipeline: approval hashing, LLM calls and MCP messages use it.
pub async fn read_whole(
    body: RequestBody,
    limit: u64,
    meter: &Arc<BodyMeter>,
) -> Result<bytes::Bytes, Denial> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) if meter.exceeded.load(std::sync::atomic::Ordering::Relaxed) => {
            Err(too_large(limit))
        }
        Ok(Err(_)) => Err(Denial::new(
            ErrorCode::BadRequest,
            "the request body could not be read",
        )),
        Err(_) => Err(Denial::new(
            ErrorCode::BadRequest,
            "the request body did not arrive in time",
        )),
    }
}
