//! End-to-end tests of the hardened edge (issue 16, items 1, 2 and 7) against
//! the real binary: one canonical request target over HTTP/1.1 and HTTP/2,
//! header sanitisation as a WSGI upstream sees it, method overrides refused,
//! and the 413 answer to oversized HTTP/2 bodies with curl and Python clients.
//! Tests that need `python3`, `curl` with HTTP/2 or `httpx` skip visibly
//! without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::*;

/// What the recording upstream received, one JSON object per request.
type Seen = Arc<Mutex<Vec<Value>>>;

/// An upstream that records each request's method, target and headers and
/// answers with the same JSON.
async fn recording_upstream() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let len = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().len())
                                .unwrap_or(0);
                            let headers: serde_json::Map<String, Value> = parts
                                .headers
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                                .collect();
                            let v = serde_json::json!({
                                "method": parts.method.as_str(),
                                "target": parts.uri.path_and_query().map(|p| p.as_str()),
                                "headers": headers,
                                "body_len": len,
                            });
                            log.lock().unwrap().push(v.clone());
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                v.to_string(),
                            ))))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Policies: the quickstart's, `ops` reads everything, and nobody reaches
/// `/api/internal*` (a path policy the encoded spelling must not slip past).
const POLICIES: &str = r#"
@id("readers-read-low")
permit (principal in Role::"reader", action in Action::"read", resource)
when { resource.classification_level <= 1 };

@id("writers-write-public")
permit (principal in Role::"writer", action in Action::"write", resource)
when { resource.classification == "public" };

@id("ops-read-all")
permit (principal in Role::"ops", action in Action::"read", resource);

@id("no-internal")
forbid (principal, action, resource)
when { context.path like "/api/internal*" };
"#;

/// A server with the nested routes `/api` (public, upstream base
/// `/api-base`) and `/api/admin` (confidential, upstream base `/admin-base`).
async fn nested_routes(extra_gateway: &str) -> (Server, Seen) {
    let (upstream, seen) = recording_upstream().await;
    let routes = [
        route(
            "api",
            "/api",
            &format!("http://{upstream}/api-base"),
            "public",
        ),
        route(
            "admin",
            "/api/admin",
            &format!("http://{upstream}/admin-base"),
            "confidential",
        ),
    ]
    .join("\n");
    (start(&routes, POLICIES, extra_gateway).await, seen)
}

/// Policies of the protocol routes: `dev` may do anything on the MCP route
/// `tools` and the LLM route `llm`.
const PROTOCOL_POLICIES: &str = r#"
@id("dev-tools") permit (principal in Role::"dev", action, resource in Route::"tools");
@id("dev-llm") permit (principal in Role::"dev", action, resource in Route::"llm");
"#;

/// A server with an MCP route `/mcp` (upstream base `/mcp-base`) and an LLM
/// route `/llm`, both on the recording upstream.
async fn protocol_routes() -> (Server, Seen) {
    let (upstream, seen) = recording_upstream().await;
    let routes = format!(
        "[[routes]]\nname = \"tools\"\nkind = \"mcp\"\npath_prefix = \"/mcp\"\nupstream = \"http://{upstream}/mcp-base\"\nclassification = \"internal\"\n\
         [[routes]]\nname = \"llm\"\nkind = \"llm\"\npath_prefix = \"/llm\"\nupstream = \"http://{upstream}\"\nclassification = \"internal\"\n\
         [[routes.models]]\nname = \"gpt-test\"\nstatus = \"approved\"\n"
    );
    (start(&routes, PROTOCOL_POLICIES, "").await, seen)
}

/// Starts the gateway with `routes`, the Cedar `policies` (beside the
/// shipped schema), bodies up to 4 KiB and `extra_gateway` in `[gateway]`.
async fn start(routes: &str, policies: &str, extra_gateway: &str) -> Server {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(
        policy_dir.join("schema.cedarschema"),
        include_str!("../../policy/defaults/schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(policy_dir.join("edge.cedar"), policies).unwrap();
    let cfg = config(
        dir.path(),
        routes,
        "max_body_bytes = 4096\n[policy]\ndir = \"policies\"",
    );
    if !extra_gateway.is_empty() {
        let text = std::fs::read_to_string(&cfg).unwrap().replacen(
            "[gateway]\n",
            &format!("[gateway]\n{extra_gateway}\n"),
            1,
        );
        std::fs::write(&cfg, text).unwrap();
    }
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
}

/// An answer: status, request id and JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    id: String,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Http1,
    Http2,
}

/// Sends `method target` exactly as written (no client-side normalisation).
async fn send(
    server: &Server,
    tls: rustls::ClientConfig,
    proto: Proto,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Answer {
    send_body(server, tls, proto, method, target, headers, "").await
}

/// [`send`] with a JSON `body` (none when empty).
async fn send_body(
    server: &Server,
    tls: rustls::ClientConfig,
    proto: Proto,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let json_headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .chain(json_headers.iter().filter(|_| !body.is_empty()))
        .copied()
        .collect();
    match proto {
        Proto::Http1 => {
            let mut raw = format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\n");
            for (k, v) in &headers {
                raw.push_str(&format!("{k}: {v}\r\n"));
            }
            if !body.is_empty() {
                raw.push_str(&format!("content-length: {}\r\n", body.len()));
            }
            raw.push_str("connection: close\r\n\r\n");
            raw.push_str(body);
            let answer = raw_tls(server.gateway, tls, raw.as_bytes()).await;
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
            let id = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("x-request-id")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            Answer {
                status,
                id,
                body: serde_json::from_str(body).unwrap_or(Value::Null),
            }
        }
        Proto::Http2 => {
            let mut sender = h2_connect(server.gateway, tls).await;
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(format!("https://localhost{target}"));
            for (k, v) in &headers {
                request = request.header(*k, *v);
            }
            let response = sender
                .send_request(
                    request
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = response.status().as_u16();
            let id = response
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            Answer {
                status,
                id,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            }
        }
    }
}

/// An HTTP/2 connection (ALPN `h2`) to the gateway.
async fn h2_connect<B>(
    addr: SocketAddr,
    mut tls: rustls::ClientConfig,
) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// Targets the upstream received since `from`.
fn targets(seen: &Seen, from: usize) -> Vec<String> {
    seen.lock().unwrap()[from..]
        .iter()
        .map(|v| v["target"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_letters_reach_no_other_route_or_path_policy() {
    let (server, seen) = nested_routes("").await;
    let reader = server.create_agent("reader-bot", &["reader"]);
    let ops = server.create_agent("ops-bot", &["ops"]);
    let tls = |who: &(std::path::PathBuf, std::path::PathBuf)| {
        tls_config(&server.ca_pem(), Some((&who.0, &who.1)))
    };
    for proto in [Proto::Http1, Proto::Http2] {
        let from = seen.lock().unwrap().len();

        // The reader may use `/api`, not `/api/admin`: the encoded spelling
        // is routed to `admin` and refused there, never to `api`.
        let a = send(
            &server,
            tls(&reader),
            proto,
            "GET",
            "/api/%61dmin/secret",
            &[],
        )
        .await;
        assert_eq!((a.status, a.code()), (403, "forbidden"), "{proto:?} {a:?}");
        let record = server.audit_record(&a.id);
        assert_eq!(record["path"], "/api/admin/secret", "{proto:?}");
        assert_eq!(record["resource"], "admin", "{proto:?}");

        // An agent allowed on `admin` gets there; the upstream receives the
        // canonical target below the admin route's base.
        let a = send(&server, tls(&ops), proto, "GET", "/api/%61dmin/secret", &[]).await;
        assert_eq!(a.status, 200, "{proto:?} {a:?}");
        assert_eq!(a.body["target"], "/admin-base/secret", "{proto:?}");
        let record = server.audit_record(&a.id);
        assert_eq!(record["path"], "/api/admin/secret", "{proto:?}");
        assert_eq!(record["resource"], "admin", "{proto:?}");

        // A path policy sees the canonical path: the encoded letter is no way round it.
        for target in [
            "/api/internal/x",
            "/api/%69nternal/x",
            "/api/%69%6E%74ernal/x",
        ] {
            let a = send(&server, tls(&reader), proto, "GET", target, &[]).await;
            assert_eq!(
                (a.status, a.code()),
                (403, "forbidden"),
                "{proto:?} {target}"
            );
            let record = server.audit_record(&a.id);
            assert_eq!(record["path"], "/api/internal/x", "{proto:?} {target}");
            assert_eq!(record["policies"], serde_json::json!(["no-internal"]));
        }

        // Remaining escapes are upper-cased, the query canonicalised the same
        // way, and that is exactly what the upstream gets and the record says.
        let a = send(
            &server,
            tls(&reader),
            proto,
            "GET",
            "/api/%7Eitems/a%2ab?%61=%7e&b=%2f",
            &[],
        )
        .await;
        assert_eq!(a.status, 200, "{proto:?} {a:?}");
        assert_eq!(a.body["target"], "/api-base/~items/a%2Ab?a=~&b=%2F");
        assert_eq!(server.audit_record(&a.id)["path"], "/api/~items/a%2Ab");

        // Ambiguous spellings are refused before anything else.
        for target in [
            "/api/ADMIN/secret",
            "/api;x/admin/secret",
            "/api/admin;x/secret",
            "//api/admin/secret",
            "/api//admin/secret",
            "/api/admin./secret",
            "/api/%2561dmin/secret",
            "/api/admin%2fsecret",
            "/api/%2e%2e/admin/secret",
            "/api/admin%3Fx/secret",
            // Overlong UTF-8 for `..` and `/` (found by `portcullis redteam`).
            "/api/%c0%ae%c0%ae/admin/secret",
            "/api/..%c0%afadmin/secret",
        ] {
            let a = send(&server, tls(&reader), proto, "GET", target, &[]).await;
            assert_eq!(
                (a.status, a.code()),
                (400, "bad_path"),
                "{proto:?} {target}"
            );
        }

        // No route at all matches this case variant: nothing to confuse.
        let a = send(
            &server,
            tls(&reader),
            proto,
            "GET",
            "/API/admin/secret",
            &[],
        )
        .await;
        assert_eq!((a.status, a.code()), (404, "route_not_found"), "{proto:?}");

        // Only the two allowed requests reached the upstream.
        assert_eq!(
            targets(&seen, from),
            ["/admin-base/secret", "/api-base/~items/a%2Ab?a=~&b=%2F"],
            "{proto:?}"
        );
    }
}

/// RFC 9112 §3.2: a request with two `Host` lines is refused before it is
/// routed (found by `portcullis redteam`'s header family).
#[tokio::test(flavor = "multi_thread")]
async fn two_host_headers_are_refused() {
    let (server, seen) = nested_routes("").await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let tls = || tls_config(&server.ca_pem(), Some((&cert, &key)));
    let raw = "GET /api/items HTTP/1.1\r\nHost: localhost\r\nHost: admin.internal\r\nConnection: close\r\n\r\n";
    let answer = support::raw_tls(server.gateway, tls(), raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"bad_request\""), "{answer}");
    // One `Host` is served as ever.
    let raw = "GET /api/items HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let answer = support::raw_tls(server.gateway, tls(), raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        targets(&seen, 0).len(),
        1,
        "only the single-Host request went upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn method_overrides_are_refused() {
    let (server, seen) = nested_routes("").await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let tls = || tls_config(&server.ca_pem(), Some((&cert, &key)));
    for proto in [Proto::Http1, Proto::Http2] {
        for (target, header) in [
            ("/api/items", Some(("X-HTTP-Method-Override", "DELETE"))),
            ("/api/items", Some(("X-Method-Override", "DELETE"))),
            ("/api/items", Some(("X-HTTP-Method", "DELETE"))),
            ("/api/items?_method=DELETE", None),
        ] {
            let headers: Vec<(&str, &str)> = header.into_iter().collect();
            let a = send(&server, tls(), proto, "GET", target, &headers).await;
            assert_eq!(
                (a.status, a.code()),
                (400, "method_override_refused"),
                "{proto:?} {target} {header:?}"
            );
            assert_eq!(
                server.audit_record(&a.id)["error_code"],
                "method_override_refused"
            );
        }
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "an override reached the upstream"
    );
}

/// The decode stage runs before routing, so its refusals hold on every kind
/// of route. On an MCP route and an LLM route, with real JSON-RPC and
/// completion bodies: overlong UTF-8 and the other ambiguous paths are
/// refused with 400 `bad_path`, two `Host` headers with 400 `bad_request`,
/// method overrides with 400 `method_override_refused` (each recorded with
/// its code), and none reaches the upstream; the request that does go
/// through arrives without the proxy headers its client forged.
#[tokio::test(flavor = "multi_thread")]
async fn decode_refusals_hold_on_mcp_and_llm_routes() {
    let (server, seen) = protocol_routes().await;
    let (cert, key) = server.create_agent("dev-bot", &["dev"]);
    let tls = || tls_config(&server.ca_pem(), Some((&cert, &key)));
    let mcp = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"edge","version":"1"}}}"#;
    let llm = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    // Route prefix, what follows it, the body, and the target the upstream
    // gets for the plain spelling.
    let kinds = [
        ("/mcp", "", mcp, "/mcp-base"),
        ("/llm", "/v1/chat/completions", llm, "/v1/chat/completions"),
    ];
    let forged = "spiffe://portcullis.local/agent/admin";
    for (prefix, rest, body, upstream_target) in kinds {
        let endpoint = format!("{prefix}{rest}");
        let from = seen.lock().unwrap().len();
        let refused = |a: &Answer, code: &str, what: &str| {
            assert_eq!((a.status, a.code()), (400, code), "{what} {a:?}");
            assert_eq!(
                server.audit_record(&a.id)["error_code"],
                code,
                "{what}: the record"
            );
        };
        for proto in [Proto::Http1, Proto::Http2] {
            for target in [
                // Overlong UTF-8 for `..` and `/` (found by `portcullis
                // redteam` on an HTTP route), in two and three bytes.
                format!("{prefix}/%c0%ae%c0%ae{prefix}{rest}"),
                format!("{prefix}/..%c0%af{prefix}{rest}"),
                format!("{prefix}/%e0%80%ae%e0%80%ae{prefix}{rest}"),
                format!("{prefix}/%2e%2e{prefix}{rest}"),
                format!("{prefix}/%252e%252e{prefix}{rest}"),
                format!("/{prefix}{rest}"),
                format!("{prefix};x{rest}"),
                format!("{endpoint}%2f"),
            ] {
                let a = send_body(&server, tls(), proto, "POST", &target, &[], body).await;
                refused(&a, "bad_path", &format!("{proto:?} {target}"));
            }
            for (target, header) in [
                (endpoint.clone(), Some(("X-HTTP-Method-Override", "GET"))),
                (endpoint.clone(), Some(("X-Method-Override", "DELETE"))),
                (endpoint.clone(), Some(("X-HTTP-Method", "PUT"))),
                (format!("{endpoint}?_method=GET"), None),
            ] {
                let headers: Vec<(&str, &str)> = header.into_iter().collect();
                let a = send_body(&server, tls(), proto, "POST", &target, &headers, body).await;
                refused(
                    &a,
                    "method_override_refused",
                    &format!("{proto:?} {target} {header:?}"),
                );
            }
        }
        // RFC 9112 §3.2 (HTTP/1.1 only: HTTP/2 has one `:authority`).
        let raw = format!(
            "POST {endpoint} HTTP/1.1\r\nHost: localhost\r\nHost: admin.internal\r\ncontent-type: application/json\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = support::raw_tls(server.gateway, tls(), raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{endpoint}: {answer}");
        assert!(answer.contains("\"bad_request\""), "{endpoint}: {answer}");
        assert!(
            targets(&seen, from).is_empty(),
            "{endpoint}: a refused request reached the upstream: {:?}",
            targets(&seen, from)
        );

        // The plain spelling is served, and its forged proxy headers are
        // dropped before the adapter forwards it.
        let a = send_body(
            &server,
            tls(),
            Proto::Http1,
            "POST",
            &endpoint,
            &[
                ("X_Portcullis_Agent", forged),
                ("X-Portcullis-Agent", forged),
                ("X-Forwarded-For", "6.6.6.6"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
                ("X-Original-URL", "/admin"),
            ],
            body,
        )
        .await;
        assert_eq!(a.status, 200, "{endpoint}: {a:?}");
        assert_eq!(targets(&seen, from), [upstream_target], "{endpoint}: {a:?}");
        let received = seen.lock().unwrap()[from]["headers"].clone();
        for (name, value) in received.as_object().unwrap() {
            let value = value.as_str().unwrap_or("");
            assert!(
                !name.contains('_')
                    && !["forwarded", "x-real-ip", "x-original-url"].contains(&name.as_str()),
                "{endpoint}: `{name}` reached the upstream"
            );
            assert!(
                !value.contains("6.6.6.6") && !value.contains(forged),
                "{endpoint}: `{name}: {value}` reached the upstream"
            );
        }
    }
}

/// A WSGI app on Python's `wsgiref`: answers with the request's CGI
/// environment (`HTTP_*`, `PATH_INFO`, `QUERY_STRING`) as JSON. wsgiref merges
/// `X_Portcullis_Agent` into `HTTP_X_PORTCULLIS_AGENT`, as CGI servers do.
const WSGI_APP: &str = r#"
import json, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
    seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    seen["PATH_INFO"] = environ.get("PATH_INFO")
    seen["QUERY_STRING"] = environ.get("QUERY_STRING")
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
"#;

/// Kills the Python upstream when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wsgi_upstream_sees_only_the_gateways_identity_and_proxy_headers() {
    let spawned = Command::new("python3")
        .arg("-c")
        .arg(WSGI_APP)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => Child(child),
        Err(e) => {
            eprintln!("SKIPPED: WSGI upstream test: python3 is not available ({e})");
            return;
        }
    };
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("wsgiref port");

    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &route(
            "wsgi",
            "/wsgi",
            &format!("http://127.0.0.1:{port}"),
            "public",
        ),
        "",
    );
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    let forged = "spiffe://portcullis.local/agent/admin";
    let response = client
        .get(server.url("/wsgi/%61/x?q=%7e1"))
        .header("X_Portcullis_Agent", forged)
        .header("X_Forwarded_For", "6.6.6.6")
        .header("X_Forwarded_Proto", "http")
        .header(
            "X-Forwarded-Client-Cert",
            format!("By=spiffe://portcullis.local/gateway;URI={forged}"),
        )
        .header("X-Forwarded-Host", "admin.internal")
        .header("X-Forwarded-Prefix", "/admin")
        .header("X-Original-URL", "/admin")
        .header("X-Rewrite-URL", "/admin")
        .header("X-Real-IP", "6.6.6.6")
        .header("Forwarded", "for=6.6.6.6")
        .header("X-Kept", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let env: Value = response.json().await.unwrap();
    assert_eq!(
        env["HTTP_X_PORTCULLIS_AGENT"], "spiffe://portcullis.local/agent/reader-bot",
        "{env}"
    );
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{env}");
    assert_eq!(env["HTTP_X_FORWARDED_PROTO"], "https", "{env}");
    assert_eq!(env["HTTP_X_KEPT"], "yes", "{env}");
    for absent in [
        "HTTP_X_FORWARDED_CLIENT_CERT",
        "HTTP_X_FORWARDED_HOST",
        "HTTP_X_FORWARDED_PREFIX",
        "HTTP_X_ORIGINAL_URL",
        "HTTP_X_REWRITE_URL",
        "HTTP_X_REAL_IP",
        "HTTP_FORWARDED",
    ] {
        assert!(
            env.get(absent).is_none(),
            "{absent} reached the upstream: {env}"
        );
    }
    // wsgiref decodes the path: it gets the canonical target's meaning.
    assert_eq!(env["PATH_INFO"], "/a/x", "{env}");
    assert_eq!(env["QUERY_STRING"], "q=~1", "{env}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_client_cert_set_names_the_verified_certificate_only() {
    let (server, seen) = nested_routes("forward_client_cert = \"set\"").await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    let response = client
        .get(server.url("/api/x"))
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://portcullis.local/agent/admin",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = CertificateDer::from_pem_file(&cert).unwrap();
    let hash = hex::encode(sha2::Sha256::digest(der.as_ref()));
    assert_eq!(
        body["headers"]["x-forwarded-client-cert"],
        format!("Hash={hash};URI=spiffe://portcullis.local/agent/reader-bot")
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// Whether curl is there and speaks HTTP/2; prints SKIPPED if not.
fn curl_has_http2() -> bool {
    match Command::new("curl").arg("-V").output() {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("HTTP2") => true,
        Ok(_) => {
            eprintln!("SKIPPED: curl --http2 checks: this curl has no HTTP/2 support");
            false
        }
        Err(e) => {
            eprintln!("SKIPPED: curl --http2 checks: curl is not available ({e})");
            false
        }
    }
}

/// A writer's credentials and the CA, as files for curl and Python.
fn writer_files(server: &Server) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = server.create_agent("writer-bot", &["writer"]);
    (server.state_dir().join("ca.crt"), cert, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_http2_bodies_always_get_the_413_answer() {
    let (server, seen) = nested_routes("").await;
    let (ca, cert, key) = writer_files(&server);
    let big = server.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 100 * 1024]).unwrap();

    // curl: a Content-Length over the limit, 20 times.
    if curl_has_http2() {
        for i in 0..20 {
            let out = tokio::task::spawn_blocking({
                let (ca, cert, key, big, url) = (
                    ca.clone(),
                    cert.clone(),
                    key.clone(),
                    big.clone(),
                    server.url("/api/upload"),
                );
                move || {
                    Command::new("curl")
                        .args(["-sS", "--http2", "--max-time", "20", "-X", "POST"])
                        .arg("--cacert")
                        .arg(&ca)
                        .arg("--cert")
                        .arg(&cert)
                        .arg("--key")
                        .arg(&key)
                        .arg("--data-binary")
                        .arg(format!("@{}", big.display()))
                        .args(["-w", "\n%{http_code} %{http_version}"])
                        .arg(url)
                        .output()
                        .unwrap()
                }
            })
            .await
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "try {i}: curl failed: {} {stdout}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (body, status) = stdout.rsplit_once('\n').unwrap();
            assert_eq!(status, "413 2", "try {i}: {stdout}");
            let body: Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"]["code"], "payload_too_large", "try {i}");
        }
    }

    // No Content-Length: the body outgrows the limit while it streams.
    let tls = tls_config(&server.ca_pem(), Some((&cert, &key)));
    for i in 0..5 {
        let mut sender = h2_connect(server.gateway, tls.clone()).await;
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..25)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 4096]))))
            .collect();
        let body = StreamBody::new(futures_util_stream(chunks));
        let request = hyper::Request::builder()
            .method("POST")
            .uri("https://localhost/api/stream-upload")
            .body(body)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 413, "try {i}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large", "try {i}");
    }

    // Python's httpx over HTTP/2 (the h2 package).
    python_httpx_413(&server, &ca, &cert, &key);
    let _ = seen;
}

/// A `Stream` over a vector of frames.
fn futures_util_stream<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Unpin {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

const HTTPX_413: &str = r#"
import json, ssl, sys
import httpx
ca, cert, key, url = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
got = []
with httpx.Client(http2=True, verify=ctx, timeout=20) as client:
    for _ in range(20):
        r = client.post(url, content=b"z" * 100 * 1024)
        got.append([r.http_version, r.status_code, r.json()["error"]["code"]])
print(json.dumps(got))
"#;

/// Posts 100 KB 20 times with httpx over HTTP/2; skips visibly without httpx.
fn python_httpx_413(server: &Server, ca: &Path, cert: &Path, key: &Path) {
    let probe = Command::new("python3")
        .args(["-c", "import httpx, h2"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(_) => {
            eprintln!(
                "SKIPPED: httpx HTTP/2 413 check: python3 has no `httpx`/`h2` (pip install 'httpx[http2]')"
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: httpx HTTP/2 413 check: python3 is not available ({e})");
            return;
        }
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(HTTPX_413)
        .arg(ca)
        .arg(cert)
        .arg(key)
        .arg(server.url("/api/upload"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "httpx failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got.len(), 20);
    for answer in got {
        assert_eq!(
            answer,
            serde_json::json!(["HTTP/2", 413, "payload_too_large"])
        );
    }
}
