//! Decode: the cheap checks that protect everything after them — body size (from
//! `Content-Length` now, and while streaming via [`MeteredBody`]), the one
//! canonical request target ([`CanonicalTarget`]), header sanitisation, and
//! audit back-pressure.
//!
//! Two `Host` headers are refused with 400 `bad_request` (RFC 9112 §3.2).
//!
//! Header sanitisation happens here, before any stage reads a header, so no
//! stage and no upstream sees what a client claimed in a header that the
//! gateway (or a proxy) is the one to set:
//! - refused with 400 `method_override_refused`: `X-HTTP-Method-Override`,
//!   `X-HTTP-Method`, `X-Method-Override` and a `_method` query parameter
//!   (frameworks that honour them would run a method policy never saw);
//! - dropped: every name with `_` (WSGI/CGI servers merge `X_Forwarded_For`
//!   into `X-Forwarded-For`; nginx drops them too), `Forwarded`,
//!   `X-Forwarded-*` (`X-Forwarded-Client-Cert` included), `X-Real-IP`,
//!   `X-Client-IP`, `True-Client-IP`, `X-Cluster-Client-IP`, `X-Original-URL`,
//!   `X-Original-URI`, `X-Rewrite-URL`, `X-Portcullis-*` (the gateway's own),
//!   and the names in `[gateway] strip_request_headers`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HeaderName;
use http::{HeaderMap, Request, Uri, Version, header};
use hyper::body::Incoming;
use portcullis_core::ErrorCode;

use crate::audit_sink::AuditSink;
use http_body::Body as _;
use http_body_util::{BodyExt, Full};

use crate::body::{BodyMeter, BoxError, DrainOnDrop, MeteredBody};
use crate::buffers::{BufferBudget, Lease, LeasedBody};
use crate::respond::Denial;
use crate::target::CanonicalTarget;

/// How long a whole request body may take to arrive when a stage reads it
/// whole (inspect, approve, the LLM and MCP adapters).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits and header rules applied by this stage.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Further client headers to drop (`[gateway] strip_request_headers`).
    pub strip_request_headers: Vec<HeaderName>,
    /// The process-wide budget of request bytes buffered whole.
    pub buffers: Arc<BufferBudget>,
}

/// A request body on its way upstream: the client's, metered as it streams,
/// or the one inspect rebuilt after reading it whole.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// A request that passed decode: head plus a metered body.
pub struct DecodedRequest {
    /// Method, URI, headers. The URI's path and query are already the
    /// canonical target's.
    pub parts: http::request::Parts,
    /// The body, limited and counted as it streams.
    pub body: RequestBody,
    /// The canonical path and query: what is routed, decided, recorded and
    /// forwarded.
    pub target: CanonicalTarget,
}

impl std::fmt::Debug for DecodedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedRequest")
            .field("parts", &self.parts)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Runs the stage.
pub async fn run(
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
    let (mut parts, body) = request.into_parts();
    // Over HTTP/2 a body left unread is read on (bounded) after the answer:
    // see `DrainOnDrop`. HTTP/1.1 closes the connection instead.
    let http2 = parts.version == Version::HTTP_2;
    let mut body = DrainOnDrop::new(body, http2);
    let target = match head(limits, &mut parts) {
        Ok(target) => target,
        Err(denial) if http2 && denial.code == ErrorCode::PayloadTooLarge => {
            // An announced body over the limit: read it (bounded) before
            // answering, so the client has finished its upload when the 413
            // arrives. A client still uploading when the stream ends drops
            // the answer (curl 7.x) however the end is signalled.
            body.drain_now().await;
            return Err(denial);
        }
        Err(denial) => return Err(denial),
    };
    Ok(DecodedRequest {
        parts,
        body: MeteredBody::new(body, limits.max_body_bytes, meter.clone()).boxed_unsync(),
        target,
    })
}

/// The checks on the request head: size, target, method override; then the
/// head is sanitised and its URI made canonical.
pub fn head(limits: &Limits, parts: &mut http::request::Parts) -> Result<CanonicalTarget, Denial> {
    // RFC 9112 §3.2: a request with two `Host` lines is refused; hops that
    // keep different ones would route the same request to different hosts
    // (found by `portcullis redteam`).
    refuse_duplicate_host(&parts.headers)?;
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
    let target = CanonicalTarget::parse(parts.uri.path(), parts.uri.query())
        .map_err(|e| Denial::new(ErrorCode::BadPath, format!("invalid request target: {e}")))?;
    refuse_method_override(&parts.headers, target.query.as_deref())?;
    // The purpose is the gateway's to read, not the upstream's.
    if let Some(purpose) = crate::purpose::take_header(&mut parts.headers)? {
        parts.extensions.insert(purpose);
    }
    sanitize_headers(&mut parts.headers, &limits.strip_request_headers);
    parts.uri = with_target(&parts.uri, &target)?;
    Ok(target)
}

/// A request body read whole, with the share of the process-wide buffer
/// budget it holds: drop the lease only with the last copy of the body.
#[derive(Debug)]
pub struct Buffered {
    /// The body.
    pub bytes: Bytes,
    /// Its share of `[limits] max_buffered_bytes`.
    pub lease: Lease,
}

impl Buffered {
    /// `bytes` (the body, or what a stage made of it) as a request body that
    /// holds `lease` until the forwarder is done with it.
    pub fn into_body(bytes: Bytes, lease: Lease) -> RequestBody {
        LeasedBody::new(Full::new(bytes), lease)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

/// Reads a request body whole, within [`BODY_READ_TIMEOUT`]: the one way a
/// stage buffers a body. Each byte is leased from the process-wide budget
/// before it is kept (all of an announced length up front), so a spent
/// budget refuses the request at once, `server_busy`, without waiting.
pub async fn read_whole(
    body: RequestBody,
    limits: &Limits,
    meter: &Arc<BodyMeter>,
) -> Result<Buffered, Denial> {
    let mut lease = limits.buffers.lease();
    // The metered body has already refused a length over the limit.
    let announced = body
        .size_hint()
        .exact()
        .filter(|n| *n <= limits.max_body_bytes);
    if let Some(n) = announced {
        lease.grow(n)?;
    }
    let unreadable = || {
        if meter.exceeded.load(std::sync::atomic::Ordering::Relaxed) {
            too_large(limits.max_body_bytes)
        } else {
            Denial::new(ErrorCode::BadRequest, "the request body could not be read")
        }
    };
    let read = async {
        let mut body = body;
        // One buffer of the announced size: no second copy when the frames
        // are joined.
        let mut out = BytesMut::with_capacity(announced.unwrap_or(0) as usize);
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| unreadable())?.into_data() else {
                continue;
            };
            let wanted = (out.len() + data.len()) as u64;
            if wanted > lease.held() {
                lease.grow(wanted - lease.held())?;
            }
            out.extend_from_slice(&data);
        }
        Ok(out.freeze())
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(bytes)) => Ok(Buffered { bytes, lease }),
        Ok(Err(denial)) => Err(denial),
        Err(_) => Err(Denial::new(
            ErrorCode::BadRequest,
            "the request body did not arrive in time",
        )),
    }
}

/// Headers that make some frameworks run another method than the request's.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Client headers an upstream might take for the gateway's (or a proxy's) word.
const PROXY_HEADERS: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
];

/// Name prefixes that only the gateway sets.
const PROXY_PREFIXES: [&str; 2] = ["x-forwarded-", "x-portcullis-"];

/// Refuses a request with more than one `Host` header with 400 `bad_request`.
fn refuse_duplicate_host(headers: &HeaderMap) -> Result<(), Denial> {
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(Denial::new(
            ErrorCode::BadRequest,
            "more than one Host header",
        ));
    }
    Ok(())
}

/// Refuses method overrides: policy decided on the request's method, and an
/// upstream honouring an override would run another (a GET become a DELETE).
fn refuse_method_override(headers: &HeaderMap, query: Option<&str>) -> Result<(), Denial> {
    let header = METHOD_OVERRIDE_HEADERS
        .iter()
        .any(|name| headers.contains_key(*name));
    let param = query.is_some_and(|q| crate::target::query_keys(q).any(|k| k == "_method"));
    if header || param {
        return Err(Denial::new(
            ErrorCode::MethodOverrideRefused,
            "method-override headers and `_method` parameters are not accepted; send the method itself",
        ));
    }
    Ok(())
}

/// Drops the headers the module doc lists.
fn sanitize_headers(headers: &mut HeaderMap, extra: &[HeaderName]) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            n.contains('_')
                || PROXY_HEADERS.contains(&n)
                || PROXY_PREFIXES.iter().any(|p| n.starts_with(p))
                || extra.contains(name)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// `uri` with the canonical path and query (scheme and authority kept).
fn with_target(uri: &Uri, target: &CanonicalTarget) -> Result<Uri, Denial> {
    let bad = || Denial::new(ErrorCode::BadPath, "invalid request target");
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target.path_and_query().parse().map_err(|_| bad())?);
    Uri::from_parts(parts).map_err(|_| bad())
}

/// The denial for an oversized body.
pub fn too_large(limit: u64) -> Denial {
    Denial::new(
        ErrorCode::PayloadTooLarge,
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_headers(sent: &[(&str, &str)], kept: &[&str]) {
        let mut h = HeaderMap::new();
        for (k, v) in sent {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        sanitize_headers(&mut h, &[HeaderName::from_static("x-internal-debug")]);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, kept);
    }

    #[test]
    fn headers_upstreams_trust_are_dropped() {
        check_headers(
            &[
                ("x-forwarded-client-cert", "URI=spiffe://x/agent/admin"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-host", "evil"),
                ("x-forwarded-prefix", "/admin"),
                ("forwarded", "for=1.2.3.4"),
                ("x-real-ip", "1.2.3.4"),
                ("x-original-url", "/admin"),
                ("x-rewrite-url", "/admin"),
                ("x-portcullis-agent", "spiffe://x/agent/admin"),
                ("x-portcullis-anything", "1"),
                ("x_portcullis_agent", "spiffe://x/agent/admin"),
                ("x_forwarded_for", "1.2.3.4"),
                ("x-internal-debug", "1"),
                ("accept", "*/*"),
                ("content-type", "application/json"),
                ("x-api-version", "2"),
            ],
            &["accept", "content-type", "x-api-version"],
        );
    }

    #[test]
    fn method_overrides_are_refused() {
        let check = |header: Option<&str>, query: Option<&str>, refused: bool| {
            let mut h = HeaderMap::new();
            if let Some(name) = header {
                h.insert(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    "DELETE".parse().unwrap(),
                );
            }
            let got = refuse_method_override(&h, query).map_err(|d| d.code);
            let expect = if refused {
                Err(ErrorCode::MethodOverrideRefused)
            } else {
                Ok(())
            };
            assert_eq!(got, expect, "{header:?} {query:?}");
        };
        check(None, None, false);
        check(None, Some("a=1&method=x"), false);
        check(Some("x-http-method-override"), None, true);
        check(Some("X-HTTP-Method"), None, true);
        check(Some("x-method-override"), None, true);
        check(None, Some("a=1&_method=DELETE"), true);
        check(None, Some("%5Fmethod=DELETE"), true);
        check(None, Some("_METHOD=DELETE"), true);
    }

    #[test]
    fn two_host_headers_are_refused() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, "gateway".parse().unwrap());
        assert!(refuse_duplicate_host(&h).is_ok());
        h.append(header::HOST, "admin.internal".parse().unwrap());
        let got = refuse_duplicate_host(&h).map_err(|d| d.code);
        assert_eq!(got, Err(ErrorCode::BadRequest));
    }

    #[test]
    fn the_uri_carries_the_canonical_target() {
        let t = CanonicalTarget::parse("/api/%61dmin", Some("%61=1")).unwrap();
        let h2: Uri = "https://gw:8443/api/%61dmin?%61=1".parse().unwrap();
        assert_eq!(
            with_target(&h2, &t).unwrap(),
            "https://gw:8443/api/admin?a=1"
        );
        let h1: Uri = "/api/%61dmin?%61=1".parse().unwrap();
        assert_eq!(with_target(&h1, &t).unwrap(), "/api/admin?a=1");
    }
}
