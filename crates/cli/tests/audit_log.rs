//! End-to-end tests of the tamper-evident audit log: the real binary, proofs
//! checked by the CLI, offline verification of an export, tampering found at
//! its index, a crash under load, and failing closed when the log cannot be
//! written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::*;

/// A server with a fail-closed route `/api`, a fail-open route `/open`, fast
/// checkpoints, a checkpoint file, and optionally a checkpoint webhook.
async fn audit_server(dir: tempfile::TempDir, webhook: Option<String>) -> Server {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let mut routes = [
        route("api", "/api", &format!("http://{upstream}"), "internal"),
        route("open", "/open", &format!("http://{upstream}"), "public"),
    ]
    .join("\n");
    routes = routes.replacen(
        "name = \"open\"",
        "name = \"open\"\naudit_fail_open = true",
        1,
    );
    let mut audit = String::from(
        "[audit]\ncheckpoint_interval_ms = 200\nfail_closed_after_ms = 300\ncheckpoint_file = \"checkpoints.txt\"\n",
    );
    if let Some(url) = webhook {
        audit.push_str(&format!("checkpoint_webhook = \"{url}\"\n"));
    }
    let cfg = config(dir.path(), &format!("{audit}\n{routes}"), "");
    // `config` puts the [limits] table first; [audit] follows it.
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

fn run_failing(output: std::process::Output) -> String {
    assert!(
        !output.status.success(),
        "command should have failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}

/// A tiny HTTP receiver that collects POST bodies.
async fn start_receiver() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = bodies.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            sink.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&body).into_owned());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
            });
        }
    });
    (format!("http://{addr}/checkpoints"), bodies)
}

async fn open_db(state: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(state.join("portcullis.db"))
        .busy_timeout(Duration::from_secs(10));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn proofs_exports_and_tampering_found_at_its_index() {
    let (webhook, received) = start_receiver().await;
    let server = audit_server(tempfile::tempdir().unwrap(), Some(webhook)).await;
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));

    let mut ids = Vec::new();
    for i in 0..5 {
        let response = client
            .get(server.url(&format!("/api/item/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        ids.push(request_id(&response));
        let body = response.bytes().await.unwrap();
        if i == 4 {
            // Chain of custody: the response the client holds matches the record.
            let record = server.audit_record(ids.last().unwrap());
            assert_eq!(
                record["response_sha256"],
                hex::encode(Sha256::digest(&body)),
                "{record}"
            );
            assert_eq!(record["request_sha256"], hex::encode(Sha256::digest(b"")));
            assert_eq!(record["classification"], "internal");
            assert!(record["error_code"].is_null(), "{record}");
            assert_eq!(record["fail_open"], false);
        }
    }

    // An inclusion proof, checked by the CLI against the pinned key.
    let pinned = server.state_dir().join("audit.pub");
    let out = run_ok(server.cli(&["audit", "prove", &ids[2], "--key", pinned.to_str().unwrap()]));
    let proof: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(proof["verified"], true);
    assert_eq!(proof["record"]["request_id"], ids[2].as_str());
    let seq = proof["seq"].as_u64().unwrap();
    run_ok(server.cli(&["audit", "consistency", "1"]));
    // A key the log was not signed with is refused.
    let other = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let other =
        portcullis_audit::note::VerifierKey::new("portcullis.local/audit", other.verifying_key())
            .unwrap()
            .to_string();
    let err = run_failing(server.cli(&["audit", "prove", &ids[2], "--key", &other]));
    assert!(err.contains("does not verify"), "{err}");

    // Export and verify offline, with no server.
    let export = server.path().join("log.jsonl");
    run_ok(server.cli(&["audit", "export", "--out", export.to_str().unwrap()]));
    let checkpoints = server.path().join("log.jsonl.checkpoints");
    let offline = |export: &Path, checkpoint: &Path| {
        Command::new(BIN)
            .args(["audit", "verify", "--export"])
            .arg(export)
            .arg("--checkpoint")
            .arg(checkpoint)
            .arg("--key")
            .arg(&pinned)
            .output()
            .unwrap()
    };
    let out = run_ok(offline(&export, &checkpoints));
    assert!(out.starts_with("ok: "), "{out}");
    // The checkpoint file the server appended to also verifies the export.
    run_ok(offline(&export, &server.path().join("checkpoints.txt")));
    // An edited line in the export is named.
    let text = std::fs::read_to_string(&export).unwrap();
    let line = text.lines().nth(seq as usize).unwrap().to_string();
    let forged = text.replacen(&line, &line.replace("\"status\":200", "\"status\":404"), 1);
    let edited = server.path().join("edited.jsonl");
    std::fs::write(&edited, forged).unwrap();
    let err = run_failing(offline(&edited, &checkpoints));
    assert!(err.contains("FAILED"), "{err}");
    // A line removed from the export is named exactly.
    let removed: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i as u64 != seq)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&edited, removed).unwrap();
    let err = run_failing(offline(&edited, &checkpoints));
    assert!(err.contains(&format!("first bad index: {seq}")), "{err}");

    // The webhook received signed checkpoints.
    for _ in 0..100 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key_text = std::fs::read_to_string(&pinned).unwrap();
    let first = received
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("webhook got a checkpoint");
    portcullis_audit::checkpoint::parse_and_verify(&first, key_text.trim()).unwrap();

    // The inventory reports who touched what, from the log.
    let out = run_ok(server.cli(&["inventory", "--since", "1h", "--format", "json"]));
    let inventory: Value = serde_json::from_str(&out).unwrap();
    let edge = inventory["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["principal"] == "bot" && e["resource"] == "api")
        .expect("bot -> api edge");
    assert_eq!(edge["requests"], 5);
    assert_eq!(edge["allowed"], 5);
    assert_eq!(edge["classification"], "internal");
    assert!(
        inventory["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "open")
    );
    let graph = run_ok(server.cli(&["inventory", "--format", "mermaid"]));
    assert!(
        graph.contains("agent_bot -->|\"5 req, 0 denied\"| res_api"),
        "{graph}"
    );
    let table = run_ok(server.cli(&["inventory"]));
    assert!(
        table.contains("resources with no activity: open"),
        "{table}"
    );

    // The whole stored log verifies; then an administrator edits one record in
    // the database, and verification names it.
    run_ok(server.cli(&["audit", "verify"]));
    let mut server = server;
    server.terminate();
    let state = server.state_dir();
    let db = open_db(&state).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE audit_log SET {SET_STATUS_500} WHERE seq = ?"
    )))
    .bind(seq as i64)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    let err = run_failing(server.cli(&["audit", "verify"]));
    assert!(err.contains(&format!("first bad index: {seq}")), "{err}");

    // An administrator who also rewrites the stored leaf hash (knowing the
    // scheme) gets past the leaf check, but the signed tree head catches it:
    // the server refuses to extend a log that no longer matches its signature.
    let text = stored_leaf(&state, seq as i64).await;
    assert!(text.contains("\"status\":500"), "{text}");
    let db = open_db(&state).await;
    sqlx::query("UPDATE audit_log SET leaf_hash = ? WHERE seq = ?")
        .bind(&portcullis_audit::merkle::leaf_hash(text.as_bytes())[..])
        .bind(seq as i64)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    // It starts halted (not ready, nothing appended; see `audit_tamper.rs`
    // for every case) and says why.
    let dir = server.into_dir();
    let cfg = dir.path().join("portcullis.toml");
    let mut server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let (status, body) = error_of(
        support::client(&server.ca_pem(), None)
            .get(format!("https://{}/readyz", server.admin))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "audit_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not match its last signed checkpoint"),
        "{body}"
    );
    server.terminate();
    let err = run_failing(server.cli(&["audit", "verify"]));
    assert!(err.contains("FAILED"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_acknowledged_record() {
    let server = audit_server(tempfile::tempdir().unwrap(), None).await;
    // A writer too, loading the public route, so the load is allowed:
    // thousands of denied requests would (rightly) get the agent quarantined
    // by behavioral analytics.
    let (cert, key) = server.create_agent("bot", &["reader", "writer"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    let admin = support::client(&server.ca_pem(), None);
    let token = server.admin_token();
    let token = token.trim().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let url = server.url("/open/x");
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                let _ = client.post(&url).body("payload").send().await;
                n += 1;
            }
        }));
    }
    // While the load runs, learn what the log has acknowledged: a signed
    // checkpoint covers only committed records.
    let mut acknowledged = 0u64;
    let mut acknowledged_note = String::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let response: Value = admin
            .post(format!(
                "https://{}/admin/v1/audit/checkpoint",
                server.admin
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let size = response["checkpoint"]["tree_size"].as_u64().unwrap_or(0);
        if size > acknowledged {
            acknowledged = size;
            acknowledged_note = response["checkpoint"]["note"].as_str().unwrap().to_string();
        }
    }
    assert!(
        acknowledged > 50,
        "the load produced too few records: {acknowledged}"
    );
    // SIGKILL mid-load: no drain, no final flush.
    let mut server = server;
    let mut child = server.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }

    // Nothing acknowledged is lost, and the log verifies against every
    // checkpoint it signed, the one we saw included.
    let cp_file = server.path().join("seen.checkpoint");
    std::fs::write(&cp_file, &acknowledged_note).unwrap();
    let out = run_ok(server.cli(&["audit", "verify", "--checkpoint", cp_file.to_str().unwrap()]));
    let verified: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(verified >= acknowledged, "{out}");

    // The server restarts on the same log and keeps appending to it.
    let dir = server.into_dir();
    let cfg = dir.path().join("portcullis.toml");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let response = client.get(server.url("/api/after")).send().await;
    // The old connection pool points at the dead process; a fresh client works.
    drop(response);
    let client = support::client(&server.ca_pem(), Some((&cert, &key)));
    let response = client.get(server.url("/api/after")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let record = server.audit_record(&id);
    assert!(record["seq"].as_u64().unwrap() >= verified);
    run_ok(server.cli(&["audit", "checkpoint", "--sign"]));
    run_ok(server.cli(&["audit", "verify"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_fails_closed_when_the_log_cannot_be_written() {
    let server = audit_server(tempfile::tempdir().unwrap(), None).await;
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    assert_eq!(
        client
            .get(server.url("/api/ok"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Someone holds the database's write lock: the audit writer stalls.
    let db = open_db(&server.state_dir()).await;
    let mut lock = db.begin_with("BEGIN EXCLUSIVE").await.unwrap();
    sqlx::query("SELECT COUNT(*) FROM audit_log")
        .execute(&mut *lock)
        .await
        .unwrap();
    // This request's record starts a batch that cannot commit.
    let first = client.get(server.url("/api/trigger")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    tokio::time::sleep(Duration::from_millis(800)).await;

    let refused = client.get(server.url("/api/refused")).send().await.unwrap();
    let refused_id = request_id(&refused);
    let (status, error) = error_of(refused).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (503, Some("audit_unavailable"))
    );
    // The fail-open route is still served.
    let open = client.get(server.url("/open/served")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let open_id = request_id(&open);
    // Admin changes are refused too.
    let err = run_failing(server.cli(&[
        "agent",
        "create",
        "other",
        "--role",
        "reader",
        "--out",
        server.path().join("c2").to_str().unwrap(),
    ]));
    assert!(err.contains("audit_unavailable"), "{err}");

    // The lock goes away: the backlog is written, requests are served again.
    lock.rollback().await.unwrap();
    db.close().await;
    let mut served = false;
    for _ in 0..100 {
        if client
            .get(server.url("/api/again"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the gateway did not reopen after the log recovered");
    let refused = server.audit_record(&refused_id);
    assert_eq!(refused["error_code"], "audit_unavailable");
    assert_eq!(refused["status"], 503);
    let open = server.audit_record(&open_id);
    assert_eq!(open["fail_open"], true);
    assert_eq!(open["status"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn personal_fields_are_pseudonymized_and_clear_values_kept_for_retention() {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = route("api", "/api", &format!("http://{upstream}"), "internal");
    let cfg = config(
        dir.path(),
        &format!(
            "[audit]\npseudonymize = [\"source_ip\"]\npersonal_data_retention_days = 1\n\n{routes}"
        ),
        "",
    );
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = client.get(server.url("/api/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        ids.push(request_id(&response));
    }
    let first = server.audit_record(&ids[0]);
    let second = server.audit_record(&ids[1]);
    let pseudonym = first["source_ip"].as_str().unwrap();
    assert!(pseudonym.starts_with("p:"), "{first}");
    assert_eq!(second["source_ip"], pseudonym, "the same address links");
    // The export (what leaves the host) holds no clear address.
    let export = server.path().join("log.jsonl");
    run_ok(server.cli(&["audit", "export", "--out", export.to_str().unwrap()]));
    assert!(
        !std::fs::read_to_string(&export)
            .unwrap()
            .contains("127.0.0.1")
    );
    // The clear value is kept beside the log, for the admin, until it expires.
    let token = server.admin_token();
    let admin = support::client(&server.ca_pem(), None);
    let record: Value = admin
        .get(format!(
            "https://{}/admin/v1/audit/records/{}",
            server.admin, ids[0]
        ))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["personal"]["source_ip"], "127.0.0.1", "{record}");
    assert_eq!(record["record"]["source_ip"], pseudonym);
    run_ok(server.cli(&["audit", "checkpoint", "--sign"]));
    run_ok(server.cli(&["audit", "verify"]));
}
