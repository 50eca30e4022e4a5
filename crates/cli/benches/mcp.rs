//! MCP overhead benchmark: `tools/call` messages straight to an MCP upstream
//! and through a real `portcullis serve` process on a `kind = "mcp"` route
//! (mTLS, ~100 Cedar policies of which one reads `context.args`, so the call's
//! decision is never memoized; audit on), in one run, with the ratio printed.
//!
//! Run: `cargo bench -p portcullis-cli --bench mcp`
//! Knobs: `BENCH_LATENCY_REQUESTS` (default 5000), `BENCH_EXTRA_CONFIG` (TOML
//! appended to the gateway config, e.g. `[analytics]\nenabled = false`).
//!
//! - One keep-alive connection per path, sequential requests, the paths
//!   taking turns in rounds of 250; p50/p99 per request.
//!   "Added" latency is gateway minus direct at the same percentile.
//! - The upstream is a minimal in-process MCP server (JSON answers, a session
//!   id), so the difference is the gateway's own cost: TLS with a client
//!   certificate, authentication, the session check, JSON-RPC framing, the
//!   Cedar decision with the call's arguments, the pin check, forwarding and
//!   the audit record. Direct is plain HTTP/1.1 to the same upstream.
//! - A plain HTTP route to the same upstream, measured in the same run, splits
//!   the added latency into what every proxied request costs and what MCP adds.
//! - The load generator, the upstream and the gateway share the machine's cores.
//!
//! Measured for issue 15 on main at 959cb87 (the baseline the unified
//! decision path must equal or beat), on 2 shared cores while other
//! engineers' `cargo` builds ran (load average 9–12 in runs 1–4, 1–2 in
//! runs 5–6), so the figures are noisy. Six runs of `cargo bench -p
//! portcullis-cli --bench mcp`, defaults (p50 / p99, µs):
//!
//! ```text
//! run  direct    bare proxy  plain HTTP route  MCP route    added      of which MCP (p50)
//! 1    22 / 71   41 / 112    56 / 588          136 / 1174   114 / 1103  79
//! 2    21 / 84   40 / 113    97 / 2039         170 / 2957   149 / 2873  73
//! 3    22 / 75   41 / 87     122 / 429         203 / 1376   181 / 1300  81
//! 4    22 / 63   64 / 117    103 / 256         200 / 359    179 / 295   98
//! 5    22 / 103  83 / 134    103 / 355         206 / 500    184 / 398   103
//! 6    22 / 112  84 / 167    119 / 445         230 / 608    208 / 497   112
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpStream;

const SESSION: &str = "bench-session-0001";

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = std::env::var("BENCH_LATENCY_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000usize);
    let upstream = start_upstream();
    // A bare plain-HTTP reverse proxy (no TLS, no checks): what any proxy
    // hop costs on this machine, measured in the same rounds.
    let bare = support::start_bare_proxy(upstream);
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), upstream);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let direct = Target {
        addr: upstream,
        tls: None,
        path: "/mcp",
    };
    let through = Target {
        addr: gateway.addr,
        tls: Some(Arc::new(gateway.tls.clone())),
        path: "/mcp/bench",
    };
    rt.block_on(async {
        // Open the session through the gateway (it binds the session to the
        // agent) and list the tools once (it pins them).
        let mut setup = through.connect().await;
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}});
        assert_eq!(post(&mut setup, &through, &init).await["id"], 0);
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let listed = post(&mut setup, &through, &list).await;
        assert_eq!(
            listed["result"]["tools"].as_array().unwrap().len(),
            1,
            "{listed}"
        );

        let plain = Target {
            addr: gateway.addr,
            tls: through.tls.clone(),
            path: "/plain",
        };
        let bare_proxy = Target {
            addr: bare,
            tls: None,
            path: "/mcp",
        };
        let targets = [&direct, &bare_proxy, &plain, &through];
        let _ = latencies(&targets, 500).await;
        let mut rows = latencies(&targets, n).await.into_iter();
        let mut next = || rows.next().unwrap();
        let (d, b, h, g) = (next(), next(), next(), next());
        let p = |v: &[Duration], q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!();
        println!("portcullis MCP benchmark: tools/call, ~100 policies, one reading context.args");
        println!("{:<38}{:>10}{:>10}", "path", "p50 µs", "p99 µs");
        for (name, v) in [
            ("direct (http)", &d),
            ("bare proxy (http, no checks)", &b),
            ("gateway, plain HTTP route", &h),
            ("gateway, MCP route (https, client cert)", &g),
        ] {
            println!("{name:<38}{:>10.0}{:>10.0}", us(p(v, 0.5)), us(p(v, 0.99)));
        }
        println!();
        println!(
            "added p50: {:.0} µs (target <= 200)  added p99: {:.0} µs",
            us(p(&g, 0.5)) - us(p(&d, 0.5)),
            us(p(&g, 0.99)) - us(p(&d, 0.99))
        );
        println!(
            "added p50 by a bare proxy hop: {:.0} µs; by a plain HTTP route: {:.0} µs; MCP on top of it: {:.0} µs",
            us(p(&b, 0.5)) - us(p(&d, 0.5)),
            us(p(&h, 0.5)) - us(p(&d, 0.5)),
            us(p(&g, 0.5)) - us(p(&h, 0.5))
        );
        println!(
            "latency ratio gateway/direct: p50 {:.2}x  p99 {:.2}x",
            us(p(&g, 0.5)) / us(p(&d, 0.5)),
            us(p(&g, 0.99)) / us(p(&d, 0.99))
        );
        println!("({n} sequential tools/call messages per row, one connection each)");
    });
    drop(gateway);
}

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    path: &'static str,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Target {
    async fn connect(&self) -> Sender {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some(tls) => {
                let tls = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
                    .unwrap();
                handshake(TokioIo::new(tls)).await
            }
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

async fn post(sender: &mut Sender, target: &Target, message: &Value) -> Value {
    let mut request = Request::post(target.path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    // The session exists once `initialize` has been answered.
    if message["method"] != "initialize" {
        request = request.header("mcp-session-id", SESSION);
    }
    let request = request
        .body(Full::new(Bytes::from(message.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "benchmark request failed");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Per target, `n` sequential `tools/call` latencies on one connection each,
/// sorted. The targets take turns in rounds of 250 so that the machine's
/// drift (other work, frequency) weighs on every row alike.
async fn latencies(targets: &[&Target], n: usize) -> Vec<Vec<Duration>> {
    let mut senders = Vec::new();
    for target in targets {
        senders.push(target.connect().await);
    }
    let mut samples = vec![Vec::with_capacity(n); targets.len()];
    let mut id = 10;
    while samples[0].len() < n {
        for ((target, sender), samples) in targets.iter().zip(&mut senders).zip(&mut samples) {
            for _ in 0..250.min(n - samples.len()) {
                let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
                    "name": "echo", "arguments": {"message": "hello", "path": "/tmp/report.txt"}}});
                id += 1;
                let t = Instant::now();
                let answer = post(sender, target, &call).await;
                samples.push(t.elapsed());
                assert!(answer.get("result").is_some(), "{answer}");
            }
        }
    }
    for s in &mut samples {
        s.sort();
    }
    samples
}

/// A minimal MCP server (Streamable HTTP, JSON answers) on its own thread and
/// single-threaded runtime: `initialize` (with a session id), `tools/list`
/// (one tool) and `tools/call` (echoes).
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
                        let m: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let result = match m["method"].as_str() {
                            Some("initialize") => json!({"protocolVersion": "2025-06-18",
                                "capabilities": {"tools": {}}, "serverInfo": {"name": "bench", "version": "1"}}),
                            Some("tools/list") => json!({"tools": [{"name": "echo",
                                "description": "Echoes the message.",
                                "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}, "path": {"type": "string"}}}}]}),
                            _ => json!({"content": [{"type": "text", "text": m["params"]["arguments"]["message"]}]}),
                        };
                        let answer = json!({"jsonrpc": "2.0", "id": m["id"], "result": result});
                        let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
                        response
                            .headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        response
                            .headers_mut()
                            .insert("mcp-session-id", SESSION.parse().unwrap());
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

/// A `portcullis serve` process with an MCP route to the upstream and ~100 policies.
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
            policies.join("quickstart.cedar"),
            portcullis_policy::DEFAULT_POLICIES,
        )
        .unwrap();
        let mut extra = String::from(
            "@id(\"mcp-dev\") permit(principal in Role::\"dev\", action in [Action::\"call_tool\", Action::\"list_tools\"], resource in Route::\"bench\");\n\
             @id(\"plain-dev\") permit(principal in Role::\"dev\", action, resource in Route::\"plain\");\n\
             @id(\"mcp-no-etc\") forbid(principal, action == Action::\"call_tool\", resource)\n  when { context.args.hasTag(\"path\") && context.args.getTag(\"path\") like \"/etc/*\" };\n",
        );
        // Policies for other teams and tools, as a real deployment would have.
        for i in 0..48 {
            extra.push_str(&format!(
                "@id(\"team-{i}\")\npermit(principal in Role::\"team-{i}\", action in Action::\"{}\", resource == Route::\"svc-{i}\")\n  when {{ context.time.hour >= 6 && context.source_ip.isInRange(ip(\"10.{i}.0.0/16\")) }};\n\
                 @id(\"tools-{i}\")\npermit(principal in Role::\"team-{i}\", action == Action::\"call_tool\", resource == Tool::\"svc-{i}/tool\")\n  when {{ context.time.hour >= 6 }};\n",
                if i % 2 == 0 { "read" } else { "write" }
            ));
        }
        std::fs::write(policies.join("teams.cedar"), extra).unwrap();
        let config = dir.join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[policy]\ndir = \"{}\"\n\
                 [[routes]]\nname = \"bench\"\nkind = \"mcp\"\npath_prefix = \"/mcp/bench\"\nupstream = \"http://{upstream}/mcp\"\nclassification = \"internal\"\n\
                 [[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"http://{upstream}/mcp\"\nclassification = \"internal\"\n{}\n",
                policies.display(),
                std::env::var("BENCH_EXTRA_CONFIG").unwrap_or_default(),
            ),
        )
        .unwrap();
        let state = dir.join("state");
        let server = support::serve(&config, &state, &[]);
        let creds = dir.join("creds");
        support::create_agent(&state, &creds, "bench-bot", "dev");
        let tls = support::agent_tls(&state, &creds, "bench-bot");
        Gateway {
            addr: server.gateway,
            _server: server,
            tls,
        }
    }
}
