//! End-to-end tests of `[audit] durability` (issue 17, "no unaudited side
//! effect"): with `before_forward`, a `kill -9` after the upstream received
//! a request but before its response leaves that request in the log (as
//! `interrupted`) and the log verifies; with `async`, it does not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// An upstream that reports the `X-Request-Id` of every request it receives
/// and never answers a path ending in `hold`.
async fn recording_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let seen = seen.clone();
                    async move {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let _ = seen.send(id);
                        if req.uri().path().ends_with("hold") {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

async fn start(dir: tempfile::TempDir, upstream: SocketAddr, audit: &str) -> Server {
    install_crypto();
    let routes = route("api", "/api", &format!("http://{upstream}"), "public");
    let cfg = config(dir.path(), &format!("{audit}\n{routes}"), "");
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
}

async fn restart(server: Server) -> Server {
    let dir = server.into_dir();
    let cfg = dir.path().join("portcullis.toml");
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
}

fn run_ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Sends a completed POST, then a POST the upstream receives and never
/// answers, and kills the gateway with SIGKILL once the upstream has it.
/// Returns the restarted server, the completed request's id and the held one's.
async fn kill_while_held(audit: &str) -> (Server, String, String) {
    let (upstream, mut seen) = recording_upstream().await;
    let mut server = start(tempfile::tempdir().unwrap(), upstream, audit).await;
    let (cert, key) = server.create_agent("bot", &["reader", "writer"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));

    let done = client
        .post(server.url("/api/done"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let done = request_id(&done);
    assert_eq!(seen.recv().await.unwrap(), done);
    // Its record is written after the response: wait for it before the kill.
    server.audit_record(&done);

    let url = server.url("/api/hold");
    let held = tokio::spawn(async move { client.post(url).body("y").send().await });
    let held_id = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the upstream never received the held request")
        .unwrap();
    assert!(!held_id.is_empty());
    // kill -9: no drain, no spool.
    let mut child = server.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    held.abort();
    let server = restart(server).await;
    (server, done, held_id)
}

fn records_of(server: &Server, id: &str) -> Vec<Value> {
    server
        .audit(500)
        .into_iter()
        .filter(|r| r["request_id"] == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_the_upstream_received_a_write_leaves_it_in_the_log() {
    // No `durability` set: a POST is a write, so it is `before_forward`.
    let (server, done, held) = kill_while_held("").await;

    let record = server.audit_record(&held);
    assert_eq!(record["error_code"], "interrupted", "{record}");
    assert_eq!(record["outcome"], "allow", "{record}");
    assert_eq!(record["principal"], "bot", "{record}");
    // The completed request closed its intent: one record, not interrupted.
    let records = records_of(&server, &done);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0]["error_code"].is_null(), "{records:?}");
    assert_eq!(records_of(&server, &held).len(), 1);

    run_ok(server.cli(&["audit", "checkpoint", "--sign"]));
    run_ok(server.cli(&["audit", "verify"]));

    // A second restart recovers nothing again.
    let server = restart(server).await;
    server.audit_record(&held);
    assert_eq!(records_of(&server, &held).len(), 1);
    run_ok(server.cli(&["audit", "checkpoint", "--sign"]));
    run_ok(server.cli(&["audit", "verify"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_async_durability_the_record_still_follows_the_response() {
    let (server, done, held) = kill_while_held("[audit]\ndurability = \"async\"\n").await;
    // Async keeps today's behaviour: the record is written when the
    // response ends, so the held request died with the process.
    let records = records_of(&server, &done);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0]["error_code"].is_null(), "{records:?}");
    // Give a (wrong) recovery every chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(records_of(&server, &held).is_empty());
    run_ok(server.cli(&["audit", "checkpoint", "--sign"]));
    run_ok(server.cli(&["audit", "verify"]));
}
