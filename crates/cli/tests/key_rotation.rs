//! `portcullis vault rotate-key` (issue 18) end to end, on both backends:
//! the access-token and audit checkpoint signing keys rotate offline and
//! keep their old versions, sealed beside the new one in a cluster's
//! PostgreSQL database (with a KEK) or kept as `<file>.retired-<when>` in a
//! SQLite node's state directory. After the restart the new keys sign, a
//! token signed under the old key is still accepted until it expires, both
//! keys are published, and the log's checkpoints signed before the rotation
//! still verify with the old audit key. Refused while the server runs, on
//! SQLite; on a PostgreSQL cluster with sealed keys it runs online instead
//! (`signing_keys_rotate_online_while_two_replicas_serve`): announced to
//! every replica first, signing only after the propagation window, and no
//! request refused meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use portcullis_store::Store;
use portcullis_store::testing::TestDb;
use serde_json::Value;
use support::*;

/// The cluster's KEK (base64 of 32 bytes).
const KEK: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

/// `portcullis ARGS --state-dir STATE` with `env` only (the test process's
/// KEK and store variables removed).
fn cli(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut with_state = args.to_vec();
    with_state.extend(["--state-dir", state.to_str().unwrap()]);
    support::cluster::run_cli(&with_state, env)
}

/// An mTLS-bound access token for the agent `name` (`agent token --mtls`).
fn token(server: &Server, name: &str) -> String {
    token_from(server, &server.path().join("creds"), name)
}

/// [`token`] from `server` with the credentials in `creds`.
fn token_from(server: &Server, creds: &Path, name: &str) -> String {
    let out = support::cluster::succeeded(
        server.cli(&[
            "agent",
            "token",
            name,
            "--creds",
            creds.to_str().unwrap(),
            "--mtls",
        ]),
        "agent token",
    );
    out.trim().to_string()
}

fn kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_string()
}

/// The status of `GET /api/items` with `token` and the agent's certificate.
async fn call(server: &Server, token: &str, creds: (&Path, &Path)) -> u16 {
    client(&server.ca_pem(), Some(creds))
        .get(server.url("/api/items"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn jwks_kids(server: &Server) -> Vec<String> {
    let jwks: Value = client(&server.ca_pem(), None)
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (bounded) until a signed checkpoint covers every record logged.
async fn wait_signed(store: &Store) {
    let started = Instant::now();
    loop {
        let size = store.audit_size().await.unwrap();
        let signed = store
            .latest_checkpoint()
            .await
            .unwrap()
            .map_or(0, |c| c.size);
        if size > 0 && signed >= size {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{signed} of {size} records signed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole rotation on the store at `url` (`sqlite://…` in the server's
/// own state directory, or a PostgreSQL cluster's with the KEK).
async fn rotation(dir: tempfile::TempDir, url: String, env: Vec<(&'static str, String)>) {
    install_crypto();
    let (upstream, gate) = start_upstream().await;
    let cfg = support::cluster::replica_config(dir.path(), upstream);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = |dir: tempfile::TempDir| {
        let (cfg, env) = (cfg.clone(), env.clone());
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Server::start_with_env(dir, Some(&cfg), &env)
        })
    };
    let mut server = start(dir).await.unwrap();
    let state = server.state_dir();
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let old_token = token(&server, "bot");
    let old_kid = kid(&old_token);
    assert_eq!(call(&server, &old_token, (&cert, &key)).await, 200);
    assert_eq!(jwks_kids(&server).await, std::slice::from_ref(&old_kid));
    let store = Store::open_url(&url).await.unwrap();
    wait_signed(&store).await;
    let old_audit_pub = std::fs::read_to_string(state.join("audit.pub")).unwrap();
    let sealed_before = store.sealed_keys().await.unwrap();
    let old_token_file = std::fs::read_to_string(state.join("token.key")).ok();

    // Refused while the server runs on SQLite: it would go on signing with
    // the old key. (A cluster with sealed keys rotates online instead: the
    // test below.)
    if !store.is_postgres() {
        let out = cli(&state, &["vault", "rotate-key", "token-key"], &env_ref);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("stop it first"), "{err}");
    }

    server.terminate();
    // On a cluster, once the stopped replica's lease has lapsed the
    // rotation has nobody to wait for: the new version signs at once.
    eventually(
        "the lease never lapsed",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { !store.is_postgres() || store.live_replicas(5_000).await.unwrap().is_empty() },
    )
    .await;
    let rotated = support::cluster::succeeded(
        cli(&state, &["vault", "rotate-key", "token-key"], &env_ref),
        "rotate the token key",
    );
    let rotated: Value = serde_json::from_str(&rotated).unwrap();
    assert_eq!(rotated["key"], "token_key");
    assert_eq!(rotated["version"], 2);
    let out = support::cluster::succeeded(
        cli(&state, &["vault", "rotate-key", "audit-key"], &env_ref),
        "rotate the audit key",
    );
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (rotated["key"].as_str(), rotated["version"].as_i64()),
        (Some("audit_key"), Some(2))
    );

    // The old versions are kept.
    if store.is_postgres() {
        assert_eq!(rotated["sealed"], true);
        for name in ["token_key", "audit_key"] {
            let versions = store.sealed_key_versions(name).await.unwrap();
            assert_eq!(versions.len(), 2, "{name}");
            assert!(sealed_before.contains(&versions[0]), "{name}: v1 changed");
            assert_eq!(versions[1].version, 2);
        }
    } else {
        assert_eq!(rotated["sealed"], false);
        let retired: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("token.key.retired-"))
            .collect();
        assert_eq!(retired.len(), 1, "{retired:?}");
        assert_eq!(
            std::fs::read_to_string(state.join(&retired[0])).ok(),
            old_token_file
        );
        assert_ne!(
            std::fs::read_to_string(state.join("token.key")).ok(),
            old_token_file
        );
    }

    let dir = server.into_dir();
    let server = start(dir).await.unwrap();
    // The rotations are in the log, as offline admin changes.
    let record = server.wait_record("the rotation", |r| {
        r["action"] == "vault.rotate_key" && r["resource"] == "audit_key"
    });
    assert_eq!(record["credential"], "offline (state directory lock)");
    // The new key signs; the old one is published and verifies the token
    // it signed before, which is still valid.
    let new_token = token(&server, "bot");
    let new_kid = kid(&new_token);
    assert_ne!(new_kid, old_kid);
    assert_eq!(jwks_kids(&server).await, [new_kid, old_kid]);
    assert_eq!(call(&server, &new_token, (&cert, &key)).await, 200);
    assert_eq!(call(&server, &old_token, (&cert, &key)).await, 200);
    // A new audit key signs; the checkpoints before it verify with the old
    // one, which the server lists beside the new one.
    let new_audit_pub = std::fs::read_to_string(state.join("audit.pub")).unwrap();
    assert_ne!(new_audit_pub, old_audit_pub);
    assert_eq!(
        std::fs::read_to_string(state.join("audit-retired.pub")).unwrap(),
        old_audit_pub
    );
    wait_signed(&store).await;
    let new_key: portcullis_audit::note::VerifierKey = new_audit_pub.trim().parse().unwrap();
    let old_key: portcullis_audit::note::VerifierKey = old_audit_pub.trim().parse().unwrap();
    let latest = store.latest_checkpoint().await.unwrap().unwrap();
    assert!(
        portcullis_store::open_checkpoint(&latest.note, &new_key, new_key.name()).is_ok(),
        "the latest checkpoint is not signed by the new key"
    );
    let verified = support::cluster::succeeded(
        cli(&state, &["audit", "verify"], &env_ref),
        "audit verify across the rotation",
    );
    eprintln!("{verified}");
    // The old audit key alone no longer opens the new checkpoints, nor the
    // new one the old: each verifies what it signed.
    let first = &store.checkpoints().await.unwrap()[0];
    assert!(portcullis_store::open_checkpoint(&first.note, &new_key, old_key.name()).is_err());
    assert!(portcullis_store::open_checkpoint(&first.note, &old_key, old_key.name()).is_ok());
    store.close().await;
    drop((server, gate));
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_rotate_on_sqlite_and_the_old_ones_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        dir.path().join("state").join("portcullis.db").display()
    );
    rotation(dir, url, Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_rotate_as_sealed_versions_on_a_postgresql_cluster() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    rotation(
        dir,
        db.url(),
        vec![
            ("PORTCULLIS_STORE_URL", db.url()),
            ("PORTCULLIS_KEK", KEK.into()),
        ],
    )
    .await;
}

/// Calls `GET /api/items` on every replica with every token in `tokens`
/// until `stop`, counting the answers that are not 200 (a refusal for a
/// key reason would be a 401).
fn traffic(
    servers: Vec<(String, String)>,
    creds: (std::path::PathBuf, std::path::PathBuf),
    tokens: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u32, Vec<String>)> {
    tokio::spawn(async move {
        let clients: Vec<_> = servers
            .iter()
            .map(|(ca, url)| (client(ca, Some((&creds.0, &creds.1))), url.clone()))
            .collect();
        let (mut calls, mut refused) = (0u32, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let now: Vec<String> = tokens.lock().unwrap().clone();
            for token in &now {
                for (client, url) in &clients {
                    let response = client
                        .get(format!("{url}/api/items"))
                        .header("authorization", format!("Bearer {token}"))
                        .send()
                        .await
                        .unwrap();
                    calls += 1;
                    let status = response.status().as_u16();
                    if status != 200 {
                        let body = response.text().await.unwrap_or_default();
                        refused.push(format!("{url} {}: {status} {body}", kid(token)));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (calls, refused)
    })
}

/// The lines of a verifier key file.
fn key_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_rotate_online_while_two_replicas_serve() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    install_crypto();
    let url = db.url();
    let env = [
        ("PORTCULLIS_STORE_URL", url.as_str()),
        ("PORTCULLIS_KEK", KEK),
    ];
    let (upstream, gate) = start_upstream().await;
    let (a, b) = support::cluster::two_replicas(
        &url,
        |dir| support::cluster::replica_config(dir, upstream),
        &[("PORTCULLIS_KEK", KEK)],
    )
    .await;
    let (cert, key) = a.create_agent("bot", &["reader"]);
    let creds = a.path().join("creds");
    let old_token = token(&a, "bot");
    let old_kid = kid(&old_token);
    // B knows the agent once it has re-read A's enrolment (bounded wait).
    eventually(
        "B never accepted the agent A enrolled",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { call(&b, &old_token, (&cert, &key)).await == 200 },
    )
    .await;
    let store = Store::open_url(&url).await.unwrap();
    wait_signed(&store).await;
    let old_audit_pub = std::fs::read_to_string(a.state_dir().join("audit.pub")).unwrap();

    // Traffic on both replicas with every token issued so far.
    let tokens = std::sync::Arc::new(std::sync::Mutex::new(vec![old_token.clone()]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = traffic(
        vec![(a.ca_pem(), a.url("")), (b.ca_pem(), b.url(""))],
        (cert.clone(), key.clone()),
        tokens.clone(),
        stop.clone(),
    );

    // 1. The token key, online: announced now, signing after the window.
    let out = support::cluster::succeeded(
        cli(&a.state_dir(), &["vault", "rotate-key", "token-key"], &env),
        "rotate the token key online",
    );
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (rotated["key"].as_str(), rotated["version"].as_i64()),
        (Some("token_key"), Some(2))
    );
    assert_eq!(rotated["sealed"], true);
    let activates_at = rotated["activates_at"].as_i64().unwrap();
    // Both replicas publish the announced key (the notification, or the
    // periodic re-read) before any signs with it.
    let announced = Instant::now();
    for server in [&a, &b] {
        eventually(
            "the new key was never announced",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async { jwks_kids(server).await.len() >= 2 },
        )
        .await;
    }
    eprintln!(
        "the announced token key was published by both replicas {:?} after the rotation returned",
        announced.elapsed()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if now < activates_at {
        // Still in the window: the old key signs.
        let during = token(&a, "bot");
        if std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 1
            < activates_at
        {
            assert_eq!(
                kid(&during),
                old_kid,
                "signed with the new key before its activation"
            );
        }
        tokens.lock().unwrap().push(during);
    }
    // Then each replica signs with the new key, and every token any of them
    // issued is accepted by both.
    let mut new_kid = None;
    for (server, creds_dir) in [(&a, creds.clone()), (&b, creds.clone())] {
        let started = Instant::now();
        loop {
            let fresh = token_from(server, &creds_dir, "bot");
            let fresh_kid = kid(&fresh);
            if fresh_kid != old_kid {
                // From now on the traffic carries it too, on both replicas.
                tokens.lock().unwrap().push(fresh);
                new_kid = Some(fresh_kid);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the new key never signed"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let new_kid = new_kid.unwrap();
    eprintln!(
        "both replicas sign with the new token key {:?} after the rotation returned (window {} s)",
        announced.elapsed(),
        activates_at - now
    );
    // The old token, issued by A before the rotation, is accepted on B.
    assert_eq!(call(&b, &old_token, (&cert, &key)).await, 200);
    assert_eq!(jwks_kids(&b).await, [new_kid.clone(), old_kid.clone()]);

    // 2. The audit key, online, with the traffic still flowing.
    let out = support::cluster::succeeded(
        cli(&a.state_dir(), &["vault", "rotate-key", "audit-key"], &env),
        "rotate the audit key online",
    );
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (rotated["key"].as_str(), rotated["version"].as_i64()),
        (Some("audit_key"), Some(2))
    );
    // Every replica writes the new verifier key once it signs with it, and
    // the checkpoints from then on are signed by it.
    let mut new_audit_pub = String::new();
    for server in [&a, &b] {
        let started = Instant::now();
        loop {
            new_audit_pub = std::fs::read_to_string(server.state_dir().join("audit.pub")).unwrap();
            if new_audit_pub != old_audit_pub {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the new audit key never signed"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(
            key_lines(&server.state_dir().join("audit-retired.pub")),
            [old_audit_pub.trim().to_string()]
        );
    }
    let new_key: portcullis_audit::note::VerifierKey = new_audit_pub.trim().parse().unwrap();
    let old_key: portcullis_audit::note::VerifierKey = old_audit_pub.trim().parse().unwrap();
    let started = Instant::now();
    loop {
        // The log grows with the traffic: a checkpoint signed by the new
        // key is enough here; the whole log is covered once it stops.
        let latest = store.latest_checkpoint().await.unwrap().unwrap();
        if portcullis_store::open_checkpoint(&latest.note, &new_key, new_key.name()).is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint signed by the new audit key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, refused) = load.await.unwrap();
    eprintln!("{calls} calls across both rotations");
    assert!(calls > 0);
    assert!(
        refused.is_empty(),
        "refused during the rotation: {refused:?}"
    );
    wait_signed(&store).await;

    // The log spans the rotation: the first checkpoints open only with the
    // old key, the latest only with the new; `audit verify` passes on each
    // replica's host, and so does an export verified offline.
    let checkpoints = store.checkpoints().await.unwrap();
    assert!(
        portcullis_store::open_checkpoint(&checkpoints[0].note, &old_key, old_key.name()).is_ok()
    );
    assert!(
        portcullis_store::open_checkpoint(&checkpoints[0].note, &new_key, new_key.name()).is_err()
    );
    for server in [&a, &b] {
        let verified = support::cluster::succeeded(
            cli(&server.state_dir(), &["audit", "verify"], &env),
            "audit verify across the online rotation",
        );
        eprintln!("{verified}");
    }
    let export = a.path().join("log.jsonl");
    support::cluster::succeeded(
        a.cli(&["audit", "export", "--out", export.to_str().unwrap()]),
        "audit export",
    );
    let keys = key_lines(&a.path().join("log.jsonl.keys"));
    assert_eq!(
        keys,
        [
            new_audit_pub.trim().to_string(),
            old_audit_pub.trim().to_string()
        ]
    );
    let checkpoints_file = a.path().join("log.jsonl.checkpoints");
    let verified = support::cluster::succeeded(
        support::cluster::run_cli(
            &[
                "audit",
                "verify",
                "--export",
                export.to_str().unwrap(),
                "--checkpoint",
                checkpoints_file.to_str().unwrap(),
            ],
            &[],
        ),
        "audit verify --export across the rotation",
    );
    eprintln!("{verified}");
    // With the new key alone, the old checkpoints do not verify.
    let alone = support::cluster::run_cli(
        &[
            "audit",
            "verify",
            "--export",
            export.to_str().unwrap(),
            "--checkpoint",
            checkpoints_file.to_str().unwrap(),
            "--key",
            new_audit_pub.trim(),
        ],
        &[],
    );
    assert!(!alone.status.success());
    // Both rotations are in the shared log (committed: it verified above).
    let rotations: Vec<Value> = a
        .audit(5_000)
        .into_iter()
        .filter(|r| r["action"] == "vault.rotate_key")
        .collect();
    let resources: Vec<&str> = rotations
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    assert_eq!(resources, ["token_key", "audit_key"]);
    store.close().await;
    drop((a, b, gate));
}

/// Fail closed: a replica that cannot open a version an online rotation
/// sealed (here one sealed under another KEK, as a replica with the wrong
/// KEK would see it) is taken out of the load balancer
/// (`signing_keys_unavailable`) rather than signing on with a key the
/// others retire; it still signs with the key it has meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_cannot_open_a_rotated_key_is_not_ready() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    install_crypto();
    let url = db.url();
    let (upstream, gate) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::cluster::replica_config(dir.path(), upstream);
    let a = support::cluster::start_replica(dir, cfg, &url, &[("PORTCULLIS_KEK", KEK)]).await;
    let (status, _) = readyz(&a).await;
    assert_eq!(status, 200);
    let (_, _) = a.create_agent("bot", &["reader"]);
    let before = kid(&token(&a, "bot"));

    let store = Store::open_url(&url).await.unwrap();
    let current = store.sealed_key("token_key").await.unwrap().unwrap();
    let other =
        portcullis_vault::Kek::parse(b"Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M=", "test")
            .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let row = portcullis_vault::key_material::seal(
        &other,
        "token_key",
        current.version + 1,
        &[7; 32],
        now + 3_600,
    );
    assert!(store.insert_sealed_key(&row).await.unwrap());
    store
        .notify_change(portcullis_store::Change::Keys)
        .await
        .unwrap();
    let started = Instant::now();
    let body = loop {
        let (status, body) = readyz(&a).await;
        if status == 503 {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still ready with a key it cannot open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "signing_keys_unavailable"),
        "{body}"
    );
    // No secret in the answer; the key it has still signs.
    assert!(!body.to_string().contains(KEK));
    assert_eq!(kid(&token(&a, "bot")), before);
    store.close().await;
    drop((a, gate));
}
