//! End-to-end tests of failing closed on a tampered audit log (issue 16,
//! item 5): for each of eleven ways to tamper with the stored log, a restarted
//! server appends nothing, signs no checkpoint, reports not ready, answers the
//! data plane (fail-open routes too) with 503 `audit_unavailable`, raises the
//! tamper metric and an alert; `audit verify` fails. An untouched log is
//! served and extended as before.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

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

/// (records, last seq, checkpoints, largest signed size)
async fn log_shape(state: &Path) -> (i64, i64, i64, i64) {
    let db = open_db(state).await;
    let (records, last): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COALESCE(MAX(seq), -1) FROM audit_log")
            .fetch_one(&db)
            .await
            .unwrap();
    let (checkpoints, signed): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COALESCE(MAX(tree_size), 0) FROM audit_checkpoints")
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    (records, last, checkpoints, signed)
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to.path())
        .status()
        .unwrap();
    assert!(status.success());
    to
}

async fn start(dir: tempfile::TempDir) -> Server {
    let cfg = dir.path().join("portcullis.toml");
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
}

async fn readyz(server: &Server) -> (u16, Value) {
    error_of(
        client(&server.ca_pem(), None)
            .get(format!("https://{}/readyz", server.admin))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The eleven tamperings: a name and what it does to the database. `k` is the
/// index of an allowed data-plane record well inside the log.
async fn tamper(case: &str, state: &Path, db: &sqlx::SqlitePool, k: i64) {
    let run = |sql: String| async move {
        // Test-only SQL built from constants and an integer index.
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(db)
            .await
            .unwrap();
    };
    match case {
        "edited record" => {
            run(format!("UPDATE audit_log SET {SET_STATUS_500} WHERE seq = {k}")).await
        }
        "edited leaf hash" => {
            run(format!("UPDATE audit_log SET leaf_hash = zeroblob(32) WHERE seq = {k}")).await
        }
        "edited record and leaf hash" => {
            // Written back as canonical JSON, which the store also reads
            // (records written before the compact form).
            let text = stored_leaf(state, k).await;
            let forged = text.replace("\"status\":200", "\"status\":500");
            sqlx::query("UPDATE audit_log SET record = ?, leaf_hash = ? WHERE seq = ?")
                .bind(&forged)
                .bind(&portcullis_audit::merkle::leaf_hash(forged.as_bytes())[..])
                .bind(k)
                .execute(db)
                .await
                .unwrap();
        }
        "deleted row, renumbered" => {
            run(format!("DELETE FROM audit_log WHERE seq = {k}")).await;
            run(format!("UPDATE audit_log SET seq = seq + 1000000 WHERE seq > {k}")).await;
            run("UPDATE audit_log SET seq = seq - 1000001 WHERE seq > 1000000".into()).await;
        }
        "gap" => run(format!("DELETE FROM audit_log WHERE seq = {k}")).await,
        "swapped rows" => {
            run(format!("UPDATE audit_log SET seq = 1000000 WHERE seq = {k}")).await;
            run(format!("UPDATE audit_log SET seq = {k} WHERE seq = {}", k + 1)).await;
            run(format!("UPDATE audit_log SET seq = {} WHERE seq = 1000000", k + 1)).await;
        }
        "truncated tail" => {
            run("DELETE FROM audit_log WHERE seq >= (SELECT MAX(seq) - 2 FROM audit_log)".into())
                .await
        }
        "edited checkpoint" => {
            run("UPDATE audit_checkpoints SET note = substr(note, 1, length(note) - 6) || 'AAAAA' || substr(note, length(note)) WHERE tree_size = (SELECT MAX(tree_size) FROM audit_checkpoints)".into()).await
        }
        "stored checkpoints deleted, record and hashes rewritten" => {
            // A record past the last stored subtree, so no stored node is
            // above it: only the checkpoint file (outside the database)
            // still knows. (Deleting stored nodes makes the log fail to open:
            // `serve` then exits, which extends nothing either.)
            let seq: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT seq FROM audit_log WHERE {STATUS_IS_200} ORDER BY seq DESC LIMIT 1"
            )))
            .fetch_one(db)
            .await
            .unwrap();
            assert!(seq >= 64, "{seq}");
            let text = stored_leaf(state, seq).await;
            let forged = text.replace("\"status\":200", "\"status\":500");
            sqlx::query("UPDATE audit_log SET record = ?, leaf_hash = ? WHERE seq = ?")
                .bind(&forged)
                .bind(&portcullis_audit::merkle::leaf_hash(forged.as_bytes())[..])
                .bind(seq)
                .execute(db)
                .await
                .unwrap();
            run("DELETE FROM audit_checkpoints".into()).await;
        }
        "edited string" => {
            // Every compact record naming the agent changes with it.
            run("UPDATE audit_strings SET value = 'other-bot' WHERE value = 'bot'".into()).await
        }
        "edited subtree row" => {
            run("UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 6 AND idx = 0".into())
                .await
        }
        other => panic!("unknown case {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_log_is_never_extended() {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let base = tempfile::tempdir().unwrap();
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
    config(
        base.path(),
        &format!(
            "[audit]\ncheckpoint_interval_ms = 100\ncheckpoint_file = \"checkpoints.txt\"\n{routes}"
        ),
        "",
    );
    // A log of more than 64 records (so a stored subtree exists), signed.
    let server = start(copy_dir(base.path())).await;
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let agent = client(&server.ca_pem(), Some((&cert, &key)));
    for i in 0..80 {
        let response = agent
            .get(server.url(&format!("/api/item/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let last = request_id(&agent.get(server.url("/api/last")).send().await.unwrap());
    server.audit_record(&last);
    let out = server.cli(&["audit", "checkpoint", "--sign"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut server = server;
    server.terminate();
    let signed = server.into_dir();
    let state = signed.path().join("state");
    let (records, _, _, signed_size) = log_shape(&state).await;
    assert!(
        records >= 70 && signed_size == records,
        "{records} {signed_size}"
    );
    let db = open_db(&state).await;
    let k: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT seq FROM audit_log WHERE {STATUS_IS_200} ORDER BY seq LIMIT 1 OFFSET 10"
    )))
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;

    // Control: the untouched log is verified, served and extended.
    {
        let mut server = start(copy_dir(signed.path())).await;
        let response = agent.get(server.url("/api/control")).send().await;
        drop(response);
        let agent = client(&server.ca_pem(), Some((&cert, &key)));
        let response = agent.get(server.url("/api/control")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        server.audit_record(&request_id(&response));
        assert_eq!(readyz(&server).await.0, 200);
        let state = server.state_dir();
        server.terminate();
        assert!(log_shape(&state).await.0 > records);
    }

    for case in [
        "edited record",
        "edited leaf hash",
        "edited record and leaf hash",
        "deleted row, renumbered",
        "gap",
        "swapped rows",
        "truncated tail",
        "edited checkpoint",
        "edited subtree row",
        "edited string",
        "stored checkpoints deleted, record and hashes rewritten",
    ] {
        let dir = copy_dir(signed.path());
        let state = dir.path().join("state");
        let db = open_db(&state).await;
        tamper(case, &state, &db, k).await;
        db.close().await;
        let before = log_shape(&state).await;

        let mut server = start(dir).await;
        // Not ready, within a bounded wait (the full verification runs in
        // the background).
        let mut ready = (0, Value::Null);
        for _ in 0..100 {
            ready = readyz(&server).await;
            if ready.0 == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ready.0, 503, "{case}: /readyz said {ready:?}");
        assert_eq!(ready.1["code"], "audit_unavailable", "{case}");
        assert_eq!(
            ready.1["reasons"],
            serde_json::json!(["audit_halted"]),
            "{case}"
        );

        // The data plane refuses, fail-open routes included.
        let agent = client(&server.ca_pem(), Some((&cert, &key)));
        for path in ["/api/after", "/open/after"] {
            let (status, body) = error_of(agent.get(server.url(path)).send().await.unwrap()).await;
            assert_eq!(status, 503, "{case} {path}: {body}");
            assert_eq!(body["code"], "audit_unavailable", "{case}");
        }
        // Admin changes are refused too; a checkpoint is not signed.
        let out = server.cli(&["audit", "checkpoint", "--sign"]);
        assert!(!out.status.success(), "{case}: a checkpoint was signed");

        let metrics = client(&server.ca_pem(), None)
            .get(format!("https://{}/metrics", server.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("portcullis_audit_log_tampered 1"),
            "{case}: {metrics}"
        );
        // Raised just after the halt: wait (bounded) for it.
        let mut alerts = String::new();
        for _ in 0..50 {
            alerts = String::from_utf8_lossy(&server.cli(&["alerts", "list"]).stdout).into_owned();
            if alerts.contains("audit_log_tampered") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(alerts.contains("audit_log_tampered"), "{case}: {alerts}");

        // Several checkpoint intervals later: nothing appended, nothing signed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.terminate();
        assert_eq!(log_shape(&state).await, before, "{case}: the log changed");

        // `audit verify` fails, naming the first bad index where there is one.
        let out = server.cli(&["audit", "verify"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: verify passed");
        if matches!(
            case,
            "edited record" | "gap" | "swapped rows" | "edited leaf hash"
        ) {
            assert!(
                err.contains(&format!("first bad index: {k}")),
                "{case}: {err}"
            );
        }
        if case == "edited record" {
            accept_tampered(server.into_dir(), k, &cert, &key).await;
        }
    }
}

/// Runs `serve` with `args` that must make it exit; returns its stderr.
fn serve_refuses(dir: &Path, args: &[&str]) -> String {
    let mut child = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(dir.join("portcullis.toml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return err;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    panic!("serve {args:?} started");
}

/// `serve --accept-tampered-log-from N` on a log edited at `k`: refused for
/// N > k or an untouched log; for N = k, the log is set aside, a new segment
/// begins with a record linking to it, and the server is ready and serves.
async fn accept_tampered(dir: tempfile::TempDir, k: i64, cert: &Path, key: &Path) {
    let err = serve_refuses(
        dir.path(),
        &["--accept-tampered-log-from", &(k + 1).to_string()],
    );
    assert!(err.contains(&format!("bad from index {k}")), "{err}");
    let state = dir.path().join("state");
    let before = log_shape(&state).await;
    let cfg = dir.path().join("portcullis.toml");
    let from = k.to_string();
    let mut server = tokio::task::spawn_blocking(move || {
        Server::start_with_args(dir, Some(&cfg), &["--accept-tampered-log-from", &from])
    })
    .await
    .unwrap();
    let mut ready = 0;
    for _ in 0..100 {
        ready = readyz(&server).await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200);
    let agent = client(&server.ca_pem(), Some((cert, key)));
    let response = agent
        .get(server.url("/api/new-segment"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.audit_record(&request_id(&response));
    let records = server.audit(10);
    let link = records
        .iter()
        .find(|r| r["action"] == "audit.accept_tampered_log")
        .expect("the new segment's link record");
    assert_eq!(link["seq"], 0, "{link}");
    let path = link["path"].as_str().unwrap();
    assert!(
        path.contains(&format!("size={}&accepted={k}&first_bad={k}", before.0)),
        "{path}"
    );
    let out = server.cli(&["audit", "checkpoint", "--sign"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The old segment is kept for forensics.
    let suffix = path
        .split('/')
        .nth(3)
        .and_then(|s| s.split('?').next())
        .unwrap()
        .to_string();
    server.terminate();
    let db = open_db(&state).await;
    let archived: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM audit_log_{suffix}"
    )))
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(archived, before.0);
    // On a log that verifies, the flag is refused.
    let dir = server.into_dir();
    let err = serve_refuses(dir.path(), &["--accept-tampered-log-from", "0"]);
    assert!(err.contains("the audit log verifies"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_while_serving_halts_the_log() {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = route("api", "/api", &format!("http://{upstream}"), "internal");
    config(
        dir.path(),
        &format!("[audit]\ncheckpoint_interval_ms = 100\nverify_interval_ms = 300\n{routes}"),
        "",
    );
    let mut server = start(dir).await;
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let agent = client(&server.ca_pem(), Some((&cert, &key)));
    for i in 0..5 {
        let response = agent
            .get(server.url(&format!("/api/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        server.audit_record(&request_id(&response));
    }
    let out = server.cli(&["audit", "checkpoint", "--sign"]);
    assert!(out.status.success());
    assert_eq!(readyz(&server).await.0, 200);

    // An edit behind the server's back, leaf hash untouched: only the full
    // verification sees it, and it runs again while serving.
    let state = server.state_dir();
    let db = open_db(&state).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE audit_log SET {SET_STATUS_500} WHERE seq = (SELECT MAX(seq) FROM audit_log WHERE {STATUS_IS_200})")))
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let mut ready = 0;
    for _ in 0..100 {
        ready = readyz(&server).await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 503, "the running server did not notice");
    let before = log_shape(&state).await;
    let (status, body) = error_of(agent.get(server.url("/api/after")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("audit_unavailable"))
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.terminate();
    assert_eq!(log_shape(&state).await, before);
}
