//! Forward: the upstream call. Streams the request body up and the response body
//! back, strips hop-by-hop headers, asserts the caller's identity to the upstream,
//! and maps failures to 502/504 (or 413 when the body outgrew the limit mid-stream).

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
use crate::pipeline::authenticate::Identity;
use crate::pipeline::contextualize::RequestContext;
use crate::pipeline::decode::{DecodedRequest, RequestBody, too_large};
use crate::respond::{Denial, ResponseBody};

/// The header that tells upstreams which agent the gateway authenticated.
/// Any client-sent header of that name is removed first.
pub const AGENT_HEADER: &str = "x-portcullis-agent";

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

type HttpClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// The upstream client and the resolved upstream of every route.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: HttpClient,
    timeout: Duration,
    max_body_bytes: u64,
    upstreams: Arc<HashMap<String, ResolvedUpstream>>,
}

impl Forwarder {
    /// A forwarder trusting `tls` for https upstreams.
    pub fn new(
        tls: rustls::ClientConfig,
        timeout: Duration,
        max_body_bytes: u64,
        upstreams: HashMap<String, ResolvedUpstream>,
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
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(https);
        Forwarder {
            client,
            timeout,
            max_body_bytes,
            upstreams: Arc::new(upstreams),
        }
    }

    /// Sends the request upstream and returns the streaming response.
    pub async fn forward(
        &self,
        request: DecodedRequest,
        context: &RequestContext,
        identity: &Identity,
        request_id: &RequestId,
        remote: SocketAddr,
        meter: &Arc<BodyMeter>,
    ) -> Result<Response<ResponseBody>, Denial> {
        let upstream = self.upstreams.get(&context.route.name).ok_or_else(|| {
            tracing::error!(route = %context.route.name, "route has no resolved upstream");
            Denial::new(ErrorCode::Internal, "internal error")
        })?;
        let DecodedRequest { parts, body } = request;
        let uri = upstream_uri(upstream, &context.rest_path, parts.uri.query())?;

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        headers.remove(AGENT_HEADER);
        set_forwarded_for(&mut headers, remote);
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
        if let Ok(v) = HeaderValue::from_str(&identity.spiffe_id) {
            headers.insert(AGENT_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
            headers.insert(crate::respond::REQUEST_ID_HEADER, v);
        }

        let mut upstream_request = Request::new(body);
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
        let body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed();
        Ok(Response::from_parts(parts, body))
    }
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

/// `base_path + rest` (+ `?query`) on the upstream's scheme and authority.
fn upstream_uri(
    upstream: &ResolvedUpstream,
    rest: &str,
    query: Option<&str>,
) -> Result<Uri, Denial> {
    let mut path_and_query = String::with_capacity(upstream.base_path.len() + rest.len() + 1);
    path_and_query.push_str(&upstream.base_path);
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

    #[test]
    fn builds_upstream_uris() {
        let up = ResolvedUpstream {
            scheme: http::uri::Scheme::HTTP,
            authority: "127.0.0.1:9000".parse().unwrap(),
            base_path: "/base".into(),
        };
        assert_eq!(
            upstream_uri(&up, "/x/y", Some("a=1")).unwrap(),
            "http://127.0.0.1:9000/base/x/y?a=1"
        );
        let root = ResolvedUpstream {
            base_path: String::new(),
            ..up
        };
        assert_eq!(
            upstream_uri(&root, "/", None).unwrap(),
            "http://127.0.0.1:9000/"
        );
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
