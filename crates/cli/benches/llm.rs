//! Time to first token of a streamed chat completion, straight to an
//! OpenAI-compatible upstream and through a real `portcullis serve` process
//! (mTLS, a `kind = "llm"` route, audit on), in one run, with ratios.
//!
//! Run: `cargo bench -p portcullis-cli --bench llm`
//! Knob (environment): `BENCH_LLM_REQUESTS` (default 2000 per target).
//!
//! The upstream (in this process, its own thread and runtime) answers
//! `POST /v1/chat/completions` with `stream: true` as OpenAI does: a role
//! chunk and the first content delta at once, then 15 more deltas, a finish
//! chunk, the usage chunk when asked, and `[DONE]`, each its own frame.
//! Time to first token is from sending the request to receiving the first
//! byte of a non-empty `delta.content`; the whole stream is read before the
//! next request, on one keep-alive connection. Targets:
//!
//! - direct: plain HTTP to the upstream;
//! - `llm`: the gateway, route without budget or guard (authorization on the
//!   model, key injection, events passed through unparsed);
//! - `llm+budget`: with a token budget (the gateway asks for usage, parses
//!   the usage event, takes it out again, charges the counters);
//! - `llm+dlp`: with `dlp = "redact"` (every event parsed, deltas through
//!   the stream redactor, whose 256-byte hold-back delays the first token
//!   until that much text or the end of the answer arrived).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

const REQUEST: &str = r#"{"model":"gpt-bench","stream":true,"messages":[{"role":"user","content":"Write one short sentence about portcullises."}]}"#;
const DELTAS: [&str; 16] = [
    "A",
    " portcullis",
    " is",
    " a",
    " heavy",
    " grille",
    " that",
    " drops",
    " to",
    " seal",
    " a",
    " castle",
    " gate",
    " against",
    " attack",
    ".",
];

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = std::env::var("BENCH_LLM_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000usize);
    let upstream = start_upstream();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), upstream);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls = Some(Arc::new(gateway.tls.clone()));
    let targets = [
        ("direct", upstream, None, "/v1/chat/completions"),
        ("llm", gateway.addr, tls.clone(), "/llm/v1/chat/completions"),
        (
            "llm+budget",
            gateway.addr,
            tls.clone(),
            "/budget/v1/chat/completions",
        ),
        ("llm+dlp", gateway.addr, tls, "/dlp/v1/chat/completions"),
    ];
    println!(
        "time to first token of a streamed completion, {n} requests per target, one keep-alive connection"
    );
    println!(
        "{:<12} {:>10} {:>10} {:>12} {:>12}",
        "target", "p50 µs", "p99 µs", "p50 ratio", "added p50 µs"
    );
    let mut direct_p50 = 0.0;
    for (name, addr, tls, path) in targets {
        let samples = rt.block_on(ttft(addr, tls, path, n));
        let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
        let (p50, p99) = (p(0.5), p(0.99));
        if name == "direct" {
            direct_p50 = p50;
        }
        println!(
            "{name:<12} {p50:>10.0} {p99:>10.0} {:>12.2} {:>12.0}",
            p50 / direct_p50,
            p50 - direct_p50
        );
    }
    drop(gateway);
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    match tls {
        None => handshake(TokioIo::new(tcp)).await,
        Some(tls) => {
            let tls = tokio_rustls::TlsConnector::from(tls)
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            handshake(TokioIo::new(tls)).await
        }
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Sender
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// Sorted times to first token.
async fn ttft(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    path: &str,
    n: usize,
) -> Vec<Duration> {
    let mut sender = connect(addr, tls).await;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let request = Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
            .unwrap();
        let t = Instant::now();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let mut body = response.into_body();
        let mut first = None;
        let mut text = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            if first.is_none() && has_content(&data) {
                first = Some(t.elapsed());
            }
            text.extend_from_slice(&data);
        }
        assert!(text.ends_with(b"data: [DONE]\n\n"), "{path}");
        // The first 50 warm the connection pool and caches.
        if i >= 50 {
            samples.push(first.expect("no content delta"));
        }
    }
    samples.sort();
    samples
}

/// Whether an SSE frame carries a non-empty `delta.content`.
fn has_content(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .any(|v| {
            v["choices"].as_array().into_iter().flatten().any(|c| {
                c["delta"]["content"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            })
        })
}

/// An mpsc receiver as a `Stream` of body frames.
struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// The OpenAI-compatible streaming upstream, on its own thread and runtime.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tcp.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let usage = v["stream_options"]["include_usage"] == true;
                        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(32);
                        tokio::spawn(async move {
                            let chunk = |delta: serde_json::Value, finish: Option<&str>| {
                                let mut c = serde_json::json!({
                                    "id": "chatcmpl-bench", "object": "chat.completion.chunk",
                                    "created": 0, "model": "gpt-bench",
                                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                });
                                if usage {
                                    c["usage"] = serde_json::Value::Null;
                                }
                                Ok(Frame::data(Bytes::from(format!("data: {c}\n\n"))))
                            };
                            let _ = tx
                                .send(chunk(serde_json::json!({"role": "assistant", "content": ""}), None))
                                .await;
                            for d in DELTAS {
                                let _ = tx.send(chunk(serde_json::json!({"content": d}), None)).await;
                                tokio::task::yield_now().await;
                            }
                            let _ = tx.send(chunk(serde_json::json!({}), Some("stop"))).await;
                            if usage {
                                let u = serde_json::json!({
                                    "id": "chatcmpl-bench", "object": "chat.completion.chunk",
                                    "created": 0, "model": "gpt-bench", "choices": [],
                                    "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
                                });
                                let _ = tx.send(Ok(Frame::data(Bytes::from(format!("data: {u}\n\n"))))).await;
                            }
                            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))).await;
                        });
                        let mut response = Response::new(StreamBody::new(ReceiverStream(rx)));
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("text/event-stream"),
                        );
                        Ok::<_, Infallible>(response)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// A `portcullis serve` process with three LLM routes to the upstream.
struct Gateway {
    _server: support::Serve,
    addr: SocketAddr,
    tls: rustls::ClientConfig,
}

impl Gateway {
    fn start(dir: &Path, upstream: SocketAddr) -> Gateway {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(
            policies.join("schema.cedarschema"),
            portcullis_policy::DEFAULT_SCHEMA,
        )
        .unwrap();
        std::fs::write(
            policies.join("llm.cedar"),
            "@id(\"bench\") permit(principal in Role::\"writer\", action == Action::\"complete\", resource) when { resource.status == \"approved\" };\n",
        )
        .unwrap();
        let route = |name: &str, extra: &str| {
            format!(
                "[[routes]]\nname = \"{name}\"\nkind = \"llm\"\npath_prefix = \"/{name}\"\nupstream = \"http://{upstream}\"\nclassification = \"internal\"\napi_key_env = \"BENCH_LLM_KEY\"\n{extra}\n[[routes.models]]\nname = \"gpt-bench\"\nstatus = \"approved\"\n"
            )
        };
        let config = dir.join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[policy]\ndir = \"{}\"\n{}{}{}",
                policies.display(),
                route("llm", ""),
                route("budget", "[routes.budget]\ntokens_per_minute = 1000000000\n"),
                route("dlp", "[routes.guard]\ndlp = \"redact\"\n"),
            ),
        )
        .unwrap();
        let state = dir.join("state");
        let server = support::serve(&config, &state, &[("BENCH_LLM_KEY", "sk-bench")]);
        let creds = dir.join("creds");
        support::create_agent(&state, &creds, "bench-bot", "writer");
        let tls = support::agent_tls(&state, &creds, "bench-bot");
        Gateway {
            addr: server.gateway,
            _server: server,
            tls,
        }
    }
}
