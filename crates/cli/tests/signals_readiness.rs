//! End-to-end tests of operating the real binary: the single-writer lock on
//! the state directory, `/readyz` telling the truth (and its metric), SIGHUP
//! reloads (good, bad, restart-only), and SIGTERM with a stalled audit writer
//! (bounded exit, spilled records appended at the next start, log verifies).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn run_ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A config with a fail-closed route `/api` to a real upstream, fast
/// checkpoints and the given extra `[limits]` and `[audit]` keys.
async fn write_config(dir: &Path, limits: &str, audit: &str) -> PathBuf {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let routes = route("api", "/api", &format!("http://{upstream}"), "internal");
    config(
        dir,
        &format!("[audit]\ncheckpoint_interval_ms = 200\n{audit}\n{routes}"),
        limits,
    )
}

async fn start(dir: tempfile::TempDir, cfg: &Path) -> Server {
    let cfg = cfg.to_path_buf();
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
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

/// Polls `/readyz` (bounded) until its status is `want`.
async fn readyz_until(server: &Server, want: u16) -> Value {
    let mut last = (0, Value::Null);
    for _ in 0..200 {
        last = readyz(server).await;
        if last.0 == want {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {want}: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_serve_on_one_state_directory_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "", "").await;
    let server = start(dir, &cfg).await;
    let state = server.state_dir();
    let urls_before = (
        std::fs::read_to_string(state.join("admin.url")).unwrap(),
        std::fs::read_to_string(state.join("gateway.url")).unwrap(),
    );

    let mut second = Command::new(BIN)
        .args(["serve", "--state-dir"])
        .arg(&state)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = second.kill();
            panic!("the second serve did not exit");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    let holder = server.child.as_ref().unwrap().id();
    assert!(
        stderr.contains(&format!("is locked by pid {holder}")),
        "{stderr}"
    );
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    // It touched nothing the first one owns.
    let urls_after = (
        std::fs::read_to_string(state.join("admin.url")).unwrap(),
        std::fs::read_to_string(state.join("gateway.url")).unwrap(),
    );
    assert_eq!(urls_before, urls_after);

    // Commands that talk to the admin API are unaffected by the lock.
    run_ok(server.cli(&["agent", "list"]));
    assert_eq!(readyz(&server).await.0, 200);

    // The kernel frees the lock however the holder ends (here SIGKILL), so
    // a restart is never blocked by a stale lock file.
    let dir = server.into_dir();
    let server = start(dir, &cfg).await;
    assert_eq!(readyz(&server).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_audit_unwritable_while_the_log_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "", "fail_closed_after_ms = 300").await;
    let server = start(dir, &cfg).await;
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let agent = client(&server.ca_pem(), Some((&cert, &key)));
    assert_eq!(readyz_until(&server, 200).await["status"], "ready");
    assert!(
        server
            .metrics()
            .await
            .contains("portcullis_not_ready{reason=\"audit_unwritable\"} 0"),
    );

    // Someone holds the database's write lock: the writer's batch stalls.
    let db = open_db(&server.state_dir()).await;
    let mut lock = db.begin_with("BEGIN EXCLUSIVE").await.unwrap();
    sqlx::query("SELECT COUNT(*) FROM audit_log")
        .execute(&mut *lock)
        .await
        .unwrap();
    let response = agent.get(server.url("/api/stalled")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let body = readyz_until(&server, 503).await;
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["reasons"], serde_json::json!(["audit_unwritable"]));
    assert_eq!(body["error"]["code"], "audit_unavailable", "{body}");
    assert!(
        server
            .metrics()
            .await
            .contains("portcullis_not_ready{reason=\"audit_unwritable\"} 1"),
    );
    // Liveness is not readiness.
    let health = client(&server.ca_pem(), None)
        .get(format!("https://{}/healthz", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // The lock goes: the backlog commits and the process is ready again.
    lock.rollback().await.unwrap();
    db.close().await;
    assert_eq!(readyz_until(&server, 200).await["status"], "ready");
    assert!(
        server
            .metrics()
            .await
            .contains("portcullis_not_ready{reason=\"audit_unwritable\"} 0"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_policies_and_refuses_bad_or_restart_only_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "", "").await;
    let server = start(dir, &cfg).await;
    let policies = server.state_dir().join("policies");
    let reloads = |server: &Server| -> Vec<Value> {
        server
            .audit(500)
            .into_iter()
            .filter(|r| r["action"] == "config.reload")
            .collect()
    };
    let wait_reloads = |server: &Server, n: usize| -> Vec<Value> {
        for _ in 0..200 {
            let found = reloads(server);
            if found.len() >= n {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "fewer than {n} config.reload records: {:?}",
            reloads(server)
        );
    };

    // A good change: a new policy version, audited, still ready.
    let quickstart = policies.join("quickstart.cedar");
    let text = std::fs::read_to_string(&quickstart).unwrap();
    std::fs::write(&quickstart, format!("{text}\n// reviewed\n")).unwrap();
    server.signal("HUP");
    let good = wait_reloads(&server, 1).pop().unwrap();
    assert_eq!(good["outcome"], "allow", "{good}");
    assert_eq!(good["policy_version"], 2, "{good}");
    server.wait_record("the SIGHUP policy push", |r| {
        r["action"] == "policy.push" && r["principal"] == "sighup" && r["outcome"] == "allow"
    });
    assert_eq!(readyz_until(&server, 200).await["status"], "ready");

    // A policy that does not compile: refused, version 2 stays, not ready.
    std::fs::write(policies.join("broken.cedar"), "permit(").unwrap();
    server.signal("HUP");
    let bad = wait_reloads(&server, 2).pop().unwrap();
    assert_eq!(bad["outcome"], "deny", "{bad}");
    assert_eq!(bad["error_code"], "invalid_policy", "{bad}");
    assert_eq!(bad["policy_version"], 2, "{bad}");
    let body = readyz_until(&server, 503).await;
    assert_eq!(body["reasons"], serde_json::json!(["policy_load_failed"]));
    assert!(
        server
            .metrics()
            .await
            .contains("portcullis_not_ready{reason=\"policy_load_failed\"} 1")
    );

    // Fixed: the next SIGHUP loads (the content equals version 2) and clears it.
    std::fs::remove_file(policies.join("broken.cedar")).unwrap();
    server.signal("HUP");
    let fixed = wait_reloads(&server, 3).pop().unwrap();
    assert_eq!(fixed["outcome"], "allow", "{fixed}");
    readyz_until(&server, 200).await;

    // An invalid config file: refused before anything is applied.
    let good_config = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{good_config}\n[limits\n")).unwrap();
    server.signal("HUP");
    let invalid = wait_reloads(&server, 4).pop().unwrap();
    assert_eq!(
        (&invalid["outcome"], &invalid["error_code"]),
        (&"deny".into(), &"invalid_config".into()),
        "{invalid}"
    );

    // A change to a restart-only key: refused with a clear message, and
    // the policy change made alongside is not applied either.
    std::fs::write(
        &cfg,
        good_config.replace("[limits]\n", "[limits]\nidle_timeout_ms = 60000\n"),
    )
    .unwrap();
    std::fs::write(&quickstart, format!("{text}\n// second review\n")).unwrap();
    server.signal("HUP");
    let restart = wait_reloads(&server, 5).pop().unwrap();
    assert_eq!(
        (&restart["outcome"], &restart["error_code"]),
        (&"deny".into(), &"restart_required".into()),
        "{restart}"
    );
    assert_eq!(restart["policy_version"], 2, "{restart}");
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        log.contains("changing `limits.idle_timeout_ms` needs a restart"),
        "{log}"
    );

    // Through all of it the server kept serving (SIGHUP never ends it).
    assert!(server.child.as_ref().unwrap().id() > 0);
    let mut server = server;
    assert!(server.child.as_mut().unwrap().try_wait().unwrap().is_none());
    assert_eq!(readyz(&server).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_stalled_audit_writer_exits_in_time_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Requests are served during the stall (a long fail-closed limit), so
    // their records are queued, not committed, when SIGTERM arrives.
    let cfg = write_config(
        dir.path(),
        "drain_timeout_ms = 3000",
        "fail_closed_after_ms = 60000",
    )
    .await;
    let mut server = start(dir, &cfg).await;
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let agent = client(&server.ca_pem(), Some((&cert, &key)));
    // Checkpoints exist before the stall, so `audit verify` has something to check.
    run_ok(server.cli(&["audit", "checkpoint", "--sign"]));

    let state = server.state_dir();
    let db = open_db(&state).await;
    let mut lock = db.begin_with("BEGIN EXCLUSIVE").await.unwrap();
    sqlx::query("SELECT COUNT(*) FROM audit_log")
        .execute(&mut *lock)
        .await
        .unwrap();

    // Load: concurrent requests, all served and none committed.
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let agent = agent.clone();
        let url = server.url(&format!("/api/load/{worker}"));
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..10 {
                let response = agent.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                ids.push(request_id(&response));
            }
            ids
        }));
    }
    let mut served = Vec::new();
    for task in tasks {
        served.extend(task.await.unwrap());
    }
    assert_eq!(served.len(), 40);
    // And one still in flight when SIGTERM arrives: it drains (the upstream
    // answers after 1 s), and its record must survive too.
    let url = server.url("/api/drain");
    let in_flight = tokio::spawn({
        let agent = agent.clone();
        async move { agent.get(url).send().await }
    });
    tokio::time::timeout(Duration::from_secs(10), DRAIN_ARRIVED.notified())
        .await
        .expect("the request reached the upstream");

    // SIGTERM: the process ends within the drain timeout (3 s) plus process
    // teardown, although the store is still locked.
    let began = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    })
    .await
    .unwrap();
    let elapsed = began.elapsed();
    let (status, server) = status;
    let drained = in_flight
        .await
        .unwrap()
        .expect("the in-flight request drained");
    assert_eq!(drained.status(), 200);
    served.push(request_id(&drained));
    assert!(
        status.success(),
        "{status:?}: {}",
        server.stderr.lock().unwrap()
    );
    assert!(
        elapsed < Duration::from_millis(4_500),
        "exit took {elapsed:?}: {}",
        server.stderr.lock().unwrap()
    );
    let spool = state.join("audit-spool.jsonl");
    assert!(spool.exists(), "{}", server.stderr.lock().unwrap());
    let spooled = std::fs::read_to_string(&spool).unwrap();
    for id in &served {
        assert!(spooled.contains(id.as_str()), "{id} not spilled");
    }

    // The lock goes; the next start appends the spool before anything else.
    lock.rollback().await.unwrap();
    db.close().await;
    let dir = server.into_dir();
    let server = start(dir, &cfg).await;
    for id in &served {
        server.wait_record(id, |r| r["request_id"] == id.as_str());
    }
    // Each exactly once.
    let records = server.audit(2_000);
    for id in &served {
        assert_eq!(
            records
                .iter()
                .filter(|r| r["request_id"] == id.as_str())
                .count(),
            1,
            "{id}"
        );
    }
    for _ in 0..200 {
        if !spool.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!spool.exists(), "the spool was not removed after replay");
    run_ok(server.cli(&["audit", "checkpoint", "--sign"]));
    run_ok(server.cli(&["audit", "verify"]));
}
