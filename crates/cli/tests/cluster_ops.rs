//! Cluster mode operations end to end (issue 18): key material sealed in
//! the shared PostgreSQL database (a replica needs only the KEK), and
//! `backup`, `restore`, `serve --check` and the offline admin commands on a
//! PostgreSQL store. Real `portcullis` processes; each test creates its own
//! databases and drops them. Skipped, visibly, when no PostgreSQL server
//! answers on 127.0.0.1:5432.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis_store::testing::TestDb;
use serde_json::Value;
use support::cluster::*;
use support::*;

/// The cluster's KEK, and another (base64 of 32 bytes).
const KEK: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";
const OTHER_KEK: &str = "Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M=";

/// Starts a replica on `url`, with the KEK `kek` when given.
async fn start(
    dir: tempfile::TempDir,
    cfg: PathBuf,
    url: String,
    kek: Option<&'static str>,
) -> Server {
    let env: Vec<(&str, &str)> = kek.map(|k| ("PORTCULLIS_KEK", k)).into_iter().collect();
    start_replica(dir, cfg, &url, &env).await
}

/// `GET /api/items` with the agent's certificate on `server`, retried
/// (bounded) until it answers 200: the replica learns of an agent enrolled
/// elsewhere on its next re-read of the shared store.
async fn agent_gets_through(ca_pem: &str, creds: (&Path, &Path), server: &Server) -> u16 {
    let agent = client(ca_pem, Some(creds));
    let started = Instant::now();
    loop {
        let status = agent
            .get(server.url("/api/items"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 200 || started.elapsed() > Duration::from_secs(15) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn jwks(server: &Server, ca_pem: &str) -> Value {
    client(ca_pem, None)
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Item 1: a cluster that ran on files seals them under the KEK at its
/// next start; a second replica given only the KEK (no CA, no signing key,
/// no admin token on its disk) serves with the same CA, token key and
/// audit key; one with another KEK, or with key files other than the
/// sealed ones, refuses to start and says which.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_given_only_the_kek_runs_on_the_keys_sealed_in_the_database() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    install_crypto();
    let (upstream, gate) = start_upstream().await;

    // A runs first without a KEK: its keys are files, as before sealing.
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = replica_config(dir_a.path(), upstream);
    let a = start(dir_a, cfg_a.clone(), db.url(), None).await;
    let store = portcullis_store::Store::open_postgres(&db.url())
        .await
        .unwrap();
    assert!(store.sealed_keys().await.unwrap().is_empty());
    // Restarted with the KEK: it seals what its state directory holds.
    let a = start(a.into_dir(), cfg_a, db.url(), Some(KEK)).await;
    let sealed = store.sealed_keys().await.unwrap();
    let names: Vec<&str> = sealed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["audit_key", "ca", "mfa_key", "token_key"]);
    let ca_key = std::fs::read_to_string(a.state_dir().join("ca.key")).unwrap();
    let token_key = std::fs::read_to_string(a.state_dir().join("token.key")).unwrap();
    for row in &sealed {
        assert_eq!(row.version, 1);
        // Never in clear: neither the PEM nor the hex seed, nor their bytes.
        for clear in [ca_key.trim().as_bytes(), token_key.trim().as_bytes()] {
            for hay in [&row.ciphertext, &row.wrapped_key] {
                assert!(
                    !hay.windows(clear.len()).any(|w| w == clear),
                    "{}",
                    row.name
                );
            }
        }
        assert!(!row.ciphertext.windows(11).any(|w| w == b"PRIVATE KEY"));
    }
    let (cert, key) = a.create_agent("alice", &["reader"]);

    // B: an empty state directory and the KEK.
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_b = replica_config(dir_b.path(), upstream);
    let b = start(dir_b, cfg_b.clone(), db.url(), Some(KEK)).await;
    for file in ["ca.key", "token.key", "audit.key", "mfa.key", "admin.token"] {
        assert!(
            !b.state_dir().join(file).exists(),
            "B wrote `{file}`: sealed keys stay in the database"
        );
    }
    // Its public CA certificate is A's (the CLI on B's host trusts it).
    assert_eq!(b.ca_pem().trim(), a.ca_pem().trim());
    // An agent certificate A's CA issued is accepted by B.
    assert_eq!(
        agent_gets_through(&a.ca_pem(), (&cert, &key), &b).await,
        200
    );
    // One access-token key: the same published key on both.
    let (jwks_a, jwks_b) = (jwks(&a, &a.ca_pem()).await, jwks(&b, &a.ca_pem()).await);
    assert!(jwks_a["keys"][0]["kid"].is_string(), "{jwks_a}");
    assert_eq!(jwks_a, jwks_b);
    // One audit key: the shared log verifies with A's verifier key, and
    // B wrote the same one.
    assert_eq!(
        std::fs::read_to_string(b.state_dir().join("audit.pub")).unwrap(),
        std::fs::read_to_string(a.state_dir().join("audit.pub")).unwrap()
    );

    // Another KEK: refused, naming it, and the KEK itself is not printed.
    let dir_c = tempfile::tempdir().unwrap();
    let cfg_c = replica_config(dir_c.path(), upstream);
    let url = db.url();
    let err = serve_fails(
        &dir_c.path().join("state"),
        Some(&cfg_c),
        &[
            ("PORTCULLIS_STORE_URL", &url),
            ("PORTCULLIS_KEK", OTHER_KEK),
        ],
    );
    assert!(
        err.contains("differ from the cluster's") && err.contains("key-encryption key"),
        "{err}"
    );
    assert!(!err.contains(OTHER_KEK) && !err.contains(KEK), "{err}");
    // No KEK at all where the keys are sealed.
    let err = serve_fails(
        &dir_c.path().join("state"),
        Some(&cfg_c),
        &[("PORTCULLIS_STORE_URL", &url)],
    );
    assert!(
        err.contains("key-encryption key") && err.contains("has none"),
        "{err}"
    );
    // The right KEK but a token key file of its own.
    let state_c = dir_c.path().join("state");
    std::fs::create_dir_all(&state_c).unwrap();
    std::fs::write(state_c.join("token.key"), format!("{}\n", "ab".repeat(32))).unwrap();
    let err = serve_fails(
        &state_c,
        Some(&cfg_c),
        &[("PORTCULLIS_STORE_URL", &url), ("PORTCULLIS_KEK", KEK)],
    );
    assert!(
        err.contains("differ from the cluster's") && err.contains("access-token signing key"),
        "{err}"
    );
    // Nothing the refused replicas did changed the sealed keys.
    assert_eq!(store.sealed_keys().await.unwrap(), sealed);

    // `serve --check` on the shared store opens the sealed keys read-only.
    let check = succeeded(
        run_cli(
            &[
                "serve",
                "--check",
                "--config",
                cfg_b.to_str().unwrap(),
                "--state-dir",
                b.state_dir().to_str().unwrap(),
            ],
            &[("PORTCULLIS_STORE_URL", &url), ("PORTCULLIS_KEK", KEK)],
        ),
        "serve --check",
    );
    assert!(check.contains("schema is current"), "{check}");
    assert!(
        check.contains("opens with the KEK (ca, token_key, audit_key, mfa_key)"),
        "{check}"
    );
    store.close().await;
    drop((a, b, gate));
}

/// Item 2: `backup` of a PostgreSQL store while a replica serves (one
/// snapshot), `restore` into a new, empty database (refused into one that
/// is not), after which `audit verify` passes, `serve --check` opens it,
/// the offline admin commands change it directly, and a replica given only
/// the KEK serves the restored agents, secrets and log.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_store_is_backed_up_live_and_restored_into_an_empty_database() {
    let Some(source) = TestDb::postgres().await else {
        return;
    };
    let target = TestDb::postgres().await.unwrap();
    install_crypto();
    let (upstream, gate) = start_upstream().await;
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = replica_config(dir_a.path(), upstream);
    let a = start(dir_a, cfg_a, source.url(), Some(KEK)).await;
    let (cert, key) = a.create_agent("alice", &["reader"]);
    // Kept outside A's directory, which goes with A.
    let outside = tempfile::tempdir().unwrap();
    let (cert, key) = {
        let (c, k) = (
            outside.path().join("alice.crt"),
            outside.path().join("alice.key"),
        );
        std::fs::copy(&cert, &c).unwrap();
        std::fs::copy(&key, &k).unwrap();
        (c, k)
    };
    let value = outside.path().join("value");
    std::fs::write(&value, "s3cret-value").unwrap();
    succeeded(
        a.cli(&[
            "secret",
            "put",
            "upstream-key",
            "--from-file",
            value.to_str().unwrap(),
        ]),
        "secret put",
    );
    assert_eq!(
        agent_gets_through(&a.ca_pem(), (&cert, &key), &a).await,
        200
    );

    // Ten calls recorded before the backup begins...
    let agent = client(&a.ca_pem(), Some((&cert, &key)));
    for _ in 0..10 {
        assert_eq!(
            agent
                .get(a.url("/api/items"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let live = portcullis_store::Store::open_postgres(&source.url())
        .await
        .unwrap();
    // Appended and covered by a signed checkpoint (the signer's interval is
    // 1 s, later under load): a restored log verifies against the
    // checkpoints its backup holds.
    let started = Instant::now();
    let (before, signed) = loop {
        let size = live.audit_size().await.unwrap();
        let signed = live
            .latest_checkpoint()
            .await
            .unwrap()
            .map_or(0, |c| c.size);
        if (size >= 13 && signed >= 13) || started.elapsed() > Duration::from_secs(30) {
            break (size, signed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    live.close().await;
    assert!(
        before >= 13 && signed >= 13,
        "{before} records, {signed} signed"
    );
    // ...and more while it is taken: A keeps serving and appending.
    let backup = outside.path().join("cluster.backup");
    let load = {
        let url = a.url("/api/items");
        tokio::spawn(async move {
            for _ in 0..20 {
                let _ = agent.get(&url).send().await;
            }
        })
    };
    let src = source.url();
    let out = succeeded(
        run_cli(
            &[
                "backup",
                "--out",
                backup.to_str().unwrap(),
                "--state-dir",
                a.state_dir().to_str().unwrap(),
            ],
            &[("PORTCULLIS_STORE_URL", &src)],
        ),
        "backup",
    );
    assert!(out.contains("one snapshot"), "{out}");
    load.await.unwrap();
    // Owner-only: it holds sealed secrets and keys.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    // A PostgreSQL backup is never restored as a state directory's.
    let restored = outside.path().join("restored");
    let refused = run_cli(
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--state-dir",
            restored.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("set PORTCULLIS_STORE_URL"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Nor over a database that holds anything.
    let refused = run_cli(
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--state-dir",
            restored.to_str().unwrap(),
        ],
        &[("PORTCULLIS_STORE_URL", &src)],
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    drop(a);

    let dst = target.url();
    let out = succeeded(
        run_cli(
            &[
                "restore",
                "--from",
                backup.to_str().unwrap(),
                "--state-dir",
                restored.to_str().unwrap(),
            ],
            &[("PORTCULLIS_STORE_URL", &dst)],
        ),
        "restore",
    );
    assert!(out.contains("restored"), "{out}");
    let copy = portcullis_store::Store::open_postgres(&dst).await.unwrap();
    let size = copy.audit_size().await.unwrap();
    assert!(
        size >= before,
        "restored {size} records, {before} were there before"
    );
    copy.close().await;
    // The restored log verifies against its signed checkpoints.
    let verify = succeeded(
        run_cli(
            &["audit", "verify", "--state-dir", restored.to_str().unwrap()],
            &[("PORTCULLIS_STORE_URL", &dst)],
        ),
        "audit verify",
    );
    eprintln!("restored {size} records: {verify}");
    // `serve --check` opens the restored database read-only, keys and all.
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_b = replica_config(dir_b.path(), upstream);
    let check = succeeded(
        run_cli(
            &[
                "serve",
                "--check",
                "--config",
                cfg_b.to_str().unwrap(),
                "--state-dir",
                restored.to_str().unwrap(),
            ],
            &[("PORTCULLIS_STORE_URL", &dst), ("PORTCULLIS_KEK", KEK)],
        ),
        "serve --check",
    );
    assert!(check.contains("opens with the KEK"), "{check}");

    // Offline admin commands on the restored store, no replica running.
    std::fs::write(&value, "second-value").unwrap();
    let offline = run_cli(
        &[
            "secret",
            "put",
            "other-key",
            "--from-file",
            value.to_str().unwrap(),
            "--state-dir",
            restored.to_str().unwrap(),
        ],
        &[("PORTCULLIS_STORE_URL", &dst), ("PORTCULLIS_KEK", KEK)],
    );
    succeeded(offline, "offline secret put");

    // A replica with the restored state directory and the KEK serves it.
    std::fs::create_dir_all(dir_b.path().join("state")).unwrap();
    for entry in std::fs::read_dir(&restored).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "portcullis.lock" {
            std::fs::copy(
                entry.path(),
                dir_b.path().join("state").join(entry.file_name()),
            )
            .unwrap();
        }
    }
    let b = start(dir_b, cfg_b, dst.clone(), Some(KEK)).await;
    assert_eq!(
        agent_gets_through(&b.ca_pem(), (&cert, &key), &b).await,
        200
    );
    let listed = succeeded(b.cli(&["secret", "list", "-o", "json"]), "secret list");
    assert!(
        listed.contains("upstream-key") && listed.contains("other-key"),
        "{listed}"
    );
    assert!(!listed.contains("s3cret-value"), "{listed}");
    // The offline change is in the restored log, which still verifies.
    let verify = succeeded(
        run_cli(
            &[
                "audit",
                "verify",
                "--state-dir",
                b.state_dir().to_str().unwrap(),
            ],
            &[("PORTCULLIS_STORE_URL", &dst)],
        ),
        "audit verify after serving",
    );
    eprintln!("{verify}");
    drop((b, gate));
}

/// Issue 18: audit set-aside on the shared log (`serve
/// --accept-tampered-log-from N`, docs/audit-format.md). Refused while
/// another replica runs; once every replica has stopped (and its lease
/// lapsed) the replica started with it sets the tampered log aside, begins a
/// new one whose first record links to the accepted prefix, and the new log
/// signs and verifies; another replica then joins the new log.
#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_shared_log_is_set_aside_once_every_replica_has_stopped() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    install_crypto();
    let (upstream, gate) = start_upstream().await;
    let url = db.url();
    let (mut a, mut b) = two_replicas(&url, |dir| replica_config(dir, upstream), &[]).await;
    let (cert, key) = a.create_agent("bot", &["reader"]);
    assert_eq!(
        agent_gets_through(&a.ca_pem(), (&cert, &key), &a).await,
        200
    );
    let agent = client(&a.ca_pem(), Some((&cert, &key)));
    for i in 0..5 {
        let response = agent.get(a.url(&format!("/api/{i}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
        a.audit_record(&request_id(&response));
    }
    // Covered by a checkpoint the cluster's signer signed.
    let live = portcullis_store::Store::open_postgres(&url).await.unwrap();
    let covered = live.audit_size().await.unwrap();
    let started = Instant::now();
    loop {
        let signed = live
            .latest_checkpoint()
            .await
            .unwrap()
            .map_or(0, |c| c.size);
        if signed >= covered {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{signed} of {covered} records signed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.terminate();
    // Record 3 is removed from the shared log behind the replicas' backs.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let dir_a = a.into_dir();
    let cfg_a = dir_a.path().join("portcullis.toml");
    let env = [("PORTCULLIS_STORE_URL", url.as_str())];
    // B still runs: the shared log is not set aside under it.
    let err = serve_fails_with(
        &dir_a.path().join("state"),
        Some(&cfg_a),
        &env,
        &["--accept-tampered-log-from", "3"],
    );
    assert!(
        err.contains("hold a live lease") && err.contains("stop every replica"),
        "{err}"
    );
    b.terminate();
    // A stopped replica's lease lapses (5 s) rather than being released.
    let started = Instant::now();
    loop {
        let alive: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM cluster_replicas WHERE seen_ms > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - 5000",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if alive == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "leases held");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logged = live.audit_size().await.unwrap();
    // Past the first bad index: refused, naming it.
    let err = serve_fails_with(
        &dir_a.path().join("state"),
        Some(&cfg_a),
        &env,
        &["--accept-tampered-log-from", "4"],
    );
    assert!(err.contains("bad from index 3"), "{err}");
    let owned_url = url.clone();
    let a = tokio::task::spawn_blocking(move || {
        Server::start_with(
            dir_a,
            Some(&cfg_a),
            &[("PORTCULLIS_STORE_URL", owned_url.as_str())],
            &["--accept-tampered-log-from", "3"],
        )
    })
    .await
    .unwrap();
    let response = agent.get(a.url("/api/new-segment")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    a.audit_record(&request_id(&response));
    let link = a.wait_record("the new segment's link record", |r| {
        r["action"] == "audit.accept_tampered_log"
    });
    assert_eq!(link["seq"], 0, "{link}");
    let path = link["path"].as_str().unwrap();
    assert!(
        path.contains(&format!("size={logged}&accepted=3&first_bad=3")),
        "{path}"
    );
    // The old log is kept whole beside the new one, for forensics.
    let suffix = path
        .split('/')
        .nth(3)
        .and_then(|s| s.split('?').next())
        .unwrap()
        .to_string();
    let kept: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM audit_log_{suffix}"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept as u64, logged - 1);
    // A second replica joins the new log; it signs and verifies.
    let dir_c = provisioned_like(&a);
    let cfg_c = replica_config(dir_c.path(), upstream);
    let c = start_replica(dir_c, cfg_c, &url, &[]).await;
    let response = agent.get(c.url("/api/on-c")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    c.audit_record(&request_id(&response));
    let size = live.audit_size().await.unwrap();
    let started = Instant::now();
    while live
        .latest_checkpoint()
        .await
        .unwrap()
        .map_or(0, |c| c.size)
        < size
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the new log is not signed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    succeeded(
        run_cli(
            &[
                "audit",
                "verify",
                "--state-dir",
                a.state_dir().to_str().unwrap(),
            ],
            &env,
        ),
        "audit verify of the new log",
    );
    live.close().await;
    pool.close().await;
    drop((a, c, gate));
}
