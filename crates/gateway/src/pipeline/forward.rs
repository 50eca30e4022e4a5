//! Forward: the upstream call. Streams the request body up and the response body
//! back, strips hop-by-hop headers, asserts the caller's identity to the upstream,
//! places the route's credential (from inject), and maps failures to 502/504 (or
//! 413 when the body outgrew the limit mid-stream). An error answer that
//! echoes the credential has it replaced (echo.rs).
//!
//! The agent's own `Authorization` header is never forwarded: upstream
//! credentials come from the vault, and a token the agent holds is not one the
//! upstream should see.
//!
//! The upstream URI is the route's base path, the path below the route
//! prefix and the query, all from the request context, which contextualize
//! built from decode's canonical target: the upstream receives exactly the
//! target that was routed, decided and recorded. Decode already dropped the
//! client's proxy and identity headers; the ones set here are the only ones
//! of their name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_core::{ErrorCode, RequestId};

use crate::body::{BodyMeter, BoxError};
use crate::capture::{CaptureHandle, TapBody};
use crate::config::Injection;
use crate::pipeline::authenticate::Identity;
use crate::pipeline::contextualize::RequestContext;
use crate::pipeline::decode::{DecodedRequest, RequestBody, too_large};
use crate::pipeline::inject::Injected;
use crate::respond::{Denial, ResponseBody};

/// The header that tells upstreams which agent the gateway authenticated.
/// Any client-sent header of that name is removed first.
pub const AGENT_HEADER: &str = "x-portcullis-agent";

/// The header Envoy and others use to pass the client certificate on.
pub const CLIENT_CERT_HEADER: &str = "x-forwarded-client-cert";

/// What upstreams get in `X-Forwarded-Client-Cert` (`[gateway]
/// forward_client_cert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// None at all (the client's is always dropped).
    #[default]
    Sanitize,
    /// `Hash=<sha256 hex of the DER certificate>;URI=<SPIFFE ID>` of the
    /// verified client certificate, when the request was authenticated by
    /// one (Envoy's format); none otherwise.
    Set,
}

/// Where one route forwards to, resolved (the demo upstream has a real address).
#[derive(Debug, Clone)]
pub struct ResolvedUpstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port.
    pub authority: http::uri::Authority,
    /// Base path, no trailing slash.
    pub base_path: String,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, TapBody<RequestBody>>;

/// The upstream client and the resolved upstream of every route.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: HttpClient,
    timeout: Duration,
    max_body_bytes: u64,
    upstreams: Arc<HashMap<String, ResolvedUpstream>>,
    client_cert: ForwardClientCert,
    /// How long an upstream body may send nothing (`[limits]
    /// stall_timeout_ms`).
    stall: Duration,
}

/// Who and what one upstream call is for: the request's decided facts and
/// what the gateway adds to it.
pub struct Hop<'a> {
    /// Route, canonical path and query.
    pub context: &'a RequestContext,
    /// The verified caller (its SPIFFE id goes upstream).
    pub identity: &'a Identity,
    /// The request id (`X-Request-Id`).
    pub request_id: &'a RequestId,
    /// The client's address (`X-Forwarded-For`).
    pub remote: SocketAddr,
    /// Bytes in and out.
    pub meter: &'a Arc<BodyMeter>,
    /// The credential to inject, after `use_secret` allowed it.
    pub injected: Option<&'a Injected>,
    /// The route's payload capture.
    pub capture: Option<CaptureHandle>,
    /// The gateway's trace context for the upstream.
    pub traceparent: Option<HeaderValue>,
    /// A path (and query) on the upstream's origin to send to instead of
    /// the base path + the rest of the request path: the message endpoint a
    /// legacy MCP HTTP+SSE server announced (`mcp/legacy.rs`).
    pub origin_path: Option<&'a str>,
}

impl Forwarder {
    /// A forwarder trusting `tls` for https upstreams.
    pub fn new(
        tls: rustls::ClientConfig,
        timeout: Duration,
        max_body_bytes: u64,
        upstreams: HashMap<String, ResolvedUpstream>,
        client_cert: ForwardClientCert,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // Idle upstream connections are dropped before 5 s, the keep-alive of
        // common servers (uvicorn, Node): reusing one the server is closing at
        // that moment fails the request with a 502 no retry can mend.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_max_idle_per_host(1024)
            .build(https);
        Forwarder {
            client,
            timeout,
            max_body_bytes,
            upstreams: Arc::new(upstreams),
            client_cert,
            stall: Duration::from_millis(crate::config::DEFAULT_STALL_TIMEOUT_MS),
        }
    }

    /// How long an upstream body may send nothing before the answer is
    /// broken off (`[limits] stall_timeout_ms`).
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// The upstream response-head timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends the request upstream and returns the streaming response.
    pub async fn forward(
        &self,
        request: DecodedRequest,
        hop: Hop<'_>,
    ) -> Result<Response<ResponseBody>, Denial> {
        let Hop {
            context,
            identity,
            request_id,
            remote,
            meter,
            injected,
            capture,
            traceparent,
            origin_path,
        } = hop;
        let upstream = self.upstreams.get(&context.route.name).ok_or_else(|| {
            tracing::error!(route = %context.route.name, "route has no resolved upstream");
            Denial::new(ErrorCode::Internal, "internal error")
        })?;
        // Path and query come from the context (decode's canonical target),
        // never from the client's URI.
        let DecodedRequest { parts, body, .. } = request;
        let (base, rest, query) = match origin_path {
            Some(p) => {
                let (path, query) = p.split_once('?').map_or((p, None), |(a, q)| (a, Some(q)));
                ("", path, query.map(str::to_string))
            }
            None => (
                upstream.base_path.as_str(),
                context.rest_path.as_str(),
                context.query.clone(),
            ),
        };
        let query = match injected.map(|i| (&i.injection, &i.value.value)) {
            Some((Injection::Query(name), value)) => {
                Some(query_with(query.as_deref(), name, value))
            }
            _ => query,
        };
        let uri = upstream_uri(upstream, base, rest, query.as_deref())?;

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        headers.remove(AGENT_HEADER);
        headers.remove(CLIENT_CERT_HEADER);
        headers.remove(header::AUTHORIZATION);
        // The DPoP proof is for the gateway alone, like the token it accompanies.
        headers.remove("dpop");
        if let Some(injected) = injected {
            inject_header(&mut headers, injected, &context.route.name)?;
        }
        set_forwarded_for(&mut headers, remote);
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
        if let Ok(v) = HeaderValue::from_str(&identity.spiffe_id) {
            headers.insert(AGENT_HEADER, v);
        }
        if let Some(v) = client_cert_value(self.client_cert, identity) {
            headers.insert(CLIENT_CERT_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
            headers.insert(crate::respond::REQUEST_ID_HEADER, v);
        }
        // With tracing on, the upstream joins the gateway's trace; the
        // caller's own trace context stays behind the trust boundary (it is a
        // span link on the request's span).
        if let Some(traceparent) = traceparent {
            headers.remove(crate::trace::TRACESTATE);
            headers.insert(crate::trace::TRACEPARENT, traceparent);
        }

        // A GET event stream (MCP's standalone stream, a legacy HTTP+SSE
        // stream) may be silent for as long as the server has nothing to
        // say; every other answer must keep coming.
        let may_be_silent = parts.method == http::Method::GET;
        let mut upstream_request = Request::new(TapBody::request(body, capture.as_ref()));
        *upstream_request.method_mut() = parts.method;
        *upstream_request.uri_mut() = uri;
        *upstream_request.headers_mut() = headers;

        let response = match tokio::time::timeout(
            self.timeout,
            self.client.request(upstream_request),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                if meter.exceeded.load(Ordering::Relaxed) {
                    return Err(too_large(self.max_body_bytes));
                }
                tracing::warn!(route = %context.route.name, error = %error_chain(&e), "upstream request failed");
                return Err(Denial::new(
                    ErrorCode::UpstreamUnavailable,
                    format!("upstream of route `{}` is unavailable", context.route.name),
                ));
            }
            Err(_) => {
                return Err(Denial::new(
                    ErrorCode::UpstreamTimeout,
                    format!(
                        "upstream of route `{}` did not answer within {} ms",
                        context.route.name,
                        self.timeout.as_millis()
                    ),
                ));
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let silent_ok = may_be_silent && is_event_stream(&parts.headers);
        let body = TapBody::response(body, capture).map_err(|e| -> BoxError { Box::new(e) });
        let body = if silent_ok {
            body.boxed()
        } else {
            StallGuard::new(body, self.stall, meter.clone()).boxed()
        };
        // An error answer that echoes the credential goes out without it.
        Ok(crate::pipeline::echo::guard(
            Response::from_parts(parts, body),
            injected.map(crate::pipeline::echo::Needles::of),
        ))
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The upstream sent nothing of its body for `stall_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing of its answer for {0} ms")]
pub struct UpstreamStalled(u128);

/// An upstream body that fails with [`UpstreamStalled`] when it yields
/// nothing for `stall` while it is being read: a server that stops
/// mid-answer would otherwise hold the exchange, its connections and its
/// task forever. Only time spent waiting on the upstream counts: while the
/// client is not taking the answer, the body is not polled and no timer runs
/// (the listener's own stall check covers that side). The record's
/// `error_code` says `upstream_timeout`.
pub(crate) struct StallGuard<B> {
    inner: B,
    stall: Duration,
    /// Armed while a poll found nothing; reset by every frame.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    meter: Arc<BodyMeter>,
}

impl<B> StallGuard<B> {
    pub(crate) fn new(inner: B, stall: Duration, meter: Arc<BodyMeter>) -> Self {
        StallGuard {
            inner,
            stall,
            timer: None,
            meter,
        }
    }
}

impl<B> http_body::Body for StallGuard<B>
where
    B: http_body::Body<Data = bytes::Bytes, Error = BoxError> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let stall = this.stall;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.timer = None;
                    let _ = this.meter.stream_cut.set("upstream_timeout");
                    return Poll::Ready(Some(Err(Box::new(UpstreamStalled(stall.as_millis())))));
                }
                Poll::Pending
            }
            ready => {
                this.timer = None;
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `X-Forwarded-Client-Cert` value for `identity` under `mode`.
fn client_cert_value(mode: ForwardClientCert, identity: &Identity) -> Option<HeaderValue> {
    let fingerprint = match mode {
        ForwardClientCert::Sanitize => return None,
        ForwardClientCert::Set => identity.certificate.as_deref()?,
    };
    let hash = fingerprint.strip_prefix("sha256:").unwrap_or(fingerprint);
    HeaderValue::from_str(&format!("Hash={hash};URI={}", identity.spiffe_id)).ok()
}

/// Places a header-form or basic-auth credential; the query form is placed in
/// the URI. The header is marked sensitive, so HTTP/2 never indexes it.
fn inject_header(headers: &mut HeaderMap, injected: &Injected, route: &str) -> Result<(), Denial> {
    use base64::Engine;
    let value = &injected.value.value;
    let (name, bytes) = match &injected.injection {
        Injection::Header {
            name,
            prefix,
            suffix,
        } => {
            let mut v = zeroize::Zeroizing::new(Vec::with_capacity(
                prefix.len() + value.len() + suffix.len(),
            ));
            v.extend_from_slice(prefix.as_bytes());
            v.extend_from_slice(value);
            v.extend_from_slice(suffix.as_bytes());
            (name.clone(), v)
        }
        Injection::Basic(user) => {
            let mut pair =
                zeroize::Zeroizing::new(Vec::with_capacity(user.len() + 1 + value.len()));
            pair.extend_from_slice(user.as_bytes());
            pair.push(b':');
            pair.extend_from_slice(value);
            let mut v = zeroize::Zeroizing::new(b"Basic ".to_vec());
            v.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(pair.as_slice())
                    .as_bytes(),
            );
            (header::AUTHORIZATION, v)
        }
        Injection::Query(_) => return Ok(()),
    };
    let mut header_value = HeaderValue::from_bytes(&bytes).map_err(|_| {
        tracing::error!(route = %route, secret = %injected.secret, "secret value is not valid in an HTTP header");
        Denial::new(
            ErrorCode::SecretUnavailable,
            format!("the upstream credential of route `{route}` cannot be used; see the server log"),
        )
    })?;
    header_value.set_sensitive(true);
    headers.insert(name, header_value);
    Ok(())
}

/// The query string without any parameter named `name` (also percent-encoded
/// spellings of it), plus `name=<value>` percent-encoded.
fn query_with(query: Option<&str>, name: &str, value: &[u8]) -> String {
    let mut out = String::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let key = pair.split('=').next().unwrap_or("");
        if percent_decode(key).eq_ignore_ascii_case(name.as_bytes()) {
            continue;
        }
        out.push_str(pair);
        out.push('&');
    }
    out.push_str(name);
    out.push('=');
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `base + rest` (+ `?query`) on the upstream's scheme and authority.
fn upstream_uri(
    upstream: &ResolvedUpstream,
    base: &str,
    rest: &str,
    query: Option<&str>,
) -> Result<Uri, Denial> {
    let mut path_and_query = String::with_capacity(base.len() + rest.len() + 1);
    path_and_query.push_str(base);
    path_and_query.push_str(rest);
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Denial::new(ErrorCode::BadRequest, "invalid request URI"))
}

/// Removes the headers that describe one connection hop (RFC 9110 §7.6.1),
/// including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// Sets `X-Forwarded-For` to the connected client's address. Agents connect to
/// the gateway directly and no upstream proxy is trusted, so whatever a client
/// claimed in `X-Forwarded-For`, `Forwarded` or `X-Real-IP` is dropped, never
/// passed on for an upstream to believe.
fn set_forwarded_for(headers: &mut HeaderMap, remote: SocketAddr) {
    headers.remove("forwarded");
    headers.remove("x-real-ip");
    if let Ok(v) = HeaderValue::from_str(&remote.ip().to_string()) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that has sent `frames` and then never sends anything more.
    struct Stops(usize);

    impl http_body::Body for Stops {
        type Data = bytes::Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
            if self.0 == 0 {
                return std::task::Poll::Pending;
            }
            self.0 -= 1;
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from("x")))))
        }
    }

    /// Issue 22: an upstream body that stops mid-answer is broken off after
    /// the stall timeout, and the record is told `upstream_timeout`.
    #[tokio::test]
    async fn a_body_that_stops_is_broken_off_after_the_stall_timeout() {
        let meter = Arc::new(BodyMeter::default());
        let stall = Duration::from_millis(200);
        let mut body = StallGuard::new(Stops(2), stall, meter.clone());
        let started = std::time::Instant::now();
        for _ in 0..2 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<UpstreamStalled>(), "{err}");
        assert!(started.elapsed() >= stall);
        assert_eq!(meter.stream_cut.get(), Some(&"upstream_timeout"));
    }

    /// Fully percent-decodes a path, as an upstream would.
    fn percent_decoded(path: &str) -> Option<String> {
        let mut out = Vec::new();
        let b = path.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let Some(v) = path
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8(out).ok()
    }

    /// Random targets through decode, contextualize, the record and forward:
    /// what is routed, decided (`context.path`), recorded and forwarded is
    /// one string, and an upstream decoding it would route it the same way.
    #[test]
    fn routed_decided_recorded_and_forwarded_are_one_target() {
        use crate::pipeline::{contextualize, decode};
        use crate::route::RouteTable;
        use crate::target::fuzz::{Rng, random_target};

        let routes = RouteTable::for_tests(&["/", "/api", "/api/admin", "/api/internal"]);
        let limits = decode::Limits {
            max_body_bytes: 1024,
            ..Default::default()
        };
        let mut rng = Rng(0x00c0_ffee_d00d_0042);
        let (mut routed, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let raw = random_target(&mut rng);
            // What hyper would refuse never reaches decode.
            let Ok(request) = http::Request::builder().uri(raw.as_str()).body(()) else {
                continue;
            };
            let (mut parts, ()) = request.into_parts();
            let Ok(target) = decode::head(&limits, &mut parts) else {
                refused += 1;
                continue;
            };
            let decoded = DecodedRequest {
                parts,
                body: http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
                target,
            };
            let Ok(context) = contextualize::run(
                &routes,
                &decoded,
                "127.0.0.1".parse().unwrap(),
                0,
                &Default::default(),
            ) else {
                refused += 1;
                continue;
            };
            routed += 1;
            // Recorded: pipeline/mod.rs records `decoded.target.path`.
            let recorded = decoded.target.path.clone();
            // Forwarded to an upstream mounted at the route's own prefix.
            let prefix = context.route.path_prefix.trim_end_matches('/');
            let upstream = ResolvedUpstream {
                scheme: http::uri::Scheme::HTTP,
                authority: "127.0.0.1:9".parse().unwrap(),
                base_path: prefix.to_string(),
            };
            let uri = upstream_uri(
                &upstream,
                &upstream.base_path,
                &context.rest_path,
                context.query.as_deref(),
            )
            .unwrap();
            let forwarded = uri.path();
            let expect_forwarded = if context.rest_path == "/" && !context.path.ends_with('/') {
                format!("{}/", context.path)
            } else {
                context.path.clone()
            };
            assert_eq!(context.path, recorded, "{raw}");
            assert_eq!(decoded.parts.uri.path(), recorded, "{raw}");
            assert_eq!(forwarded, expect_forwarded, "{raw}");
            assert_eq!(uri.query(), decoded.target.query.as_deref(), "{raw}");
            // The upstream, decoding, lands on the same route.
            if let Some(plain) = percent_decoded(forwarded) {
                let again = routes.lookup(&plain).map(|(r, _)| r.name.clone());
                assert_eq!(again.as_deref(), Some(context.route.name.as_str()), "{raw}");
            }
        }
        assert!(
            routed > 1_000 && refused > 1_000,
            "routed {routed}, refused {refused}"
        );
    }

    #[test]
    fn client_cert_header_only_from_a_verified_certificate() {
        let mut identity = Identity {
            agent: "bot".into(),
            spiffe_id: "spiffe://td/agent/bot".into(),
            serial: "01".into(),
            certificate: Some("sha256:abcd".into()),
            jti: String::new(),
            credential: String::new(),
            caller: portcullis_policy::CallerFacts::mtls(),
            delegated: None,
            expires_at: 0,
        };
        assert_eq!(
            client_cert_value(ForwardClientCert::Set, &identity).unwrap(),
            "Hash=abcd;URI=spiffe://td/agent/bot"
        );
        assert!(client_cert_value(ForwardClientCert::Sanitize, &identity).is_none());
        identity.certificate = None;
        assert!(client_cert_value(ForwardClientCert::Set, &identity).is_none());
    }

    #[test]
    fn builds_upstream_uris() {
        let up = ResolvedUpstream {
            scheme: http::uri::Scheme::HTTP,
            authority: "127.0.0.1:9000".parse().unwrap(),
            base_path: "/base".into(),
        };
        assert_eq!(
            upstream_uri(&up, &up.base_path, "/x/y", Some("a=1")).unwrap(),
            "http://127.0.0.1:9000/base/x/y?a=1"
        );
        let root = ResolvedUpstream {
            base_path: String::new(),
            ..up
        };
        assert_eq!(
            upstream_uri(&root, &root.base_path, "/", None).unwrap(),
            "http://127.0.0.1:9000/"
        );
    }

    #[test]
    fn query_credentials_replace_client_parameters() {
        let check = |q: Option<&str>, expect: &str| {
            assert_eq!(query_with(q, "key", b"s3cr/t +"), expect);
        };
        check(None, "key=s3cr%2Ft%20%2B");
        check(Some("a=1&key=agent&b=2"), "a=1&b=2&key=s3cr%2Ft%20%2B");
        check(
            Some("%6Bey=agent&KEY=x&keyx=3"),
            "keyx=3&key=s3cr%2Ft%20%2B",
        );
    }

    #[test]
    fn header_credentials_and_the_agents_authorization() {
        use portcullis_vault::Plain;
        let injected = |injection| Injected {
            secret: "k".into(),
            injection,
            value: Arc::new(Plain {
                version: 1,
                value: zeroize::Zeroizing::new(b"sk-123".to_vec()),
            }),
        };
        let mut h = HeaderMap::new();
        inject_header(
            &mut h,
            &injected(Injection::Header {
                name: HeaderName::from_static("x-api-key"),
                prefix: "Token ".into(),
                suffix: "!".into(),
            }),
            "r",
        )
        .unwrap();
        assert_eq!(h["x-api-key"], "Token sk-123!");
        assert!(h["x-api-key"].is_sensitive());
        inject_header(&mut h, &injected(Injection::Basic("bot".into())), "r").unwrap();
        assert_eq!(h[header::AUTHORIZATION], "Basic Ym90OnNrLTEyMw==");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
