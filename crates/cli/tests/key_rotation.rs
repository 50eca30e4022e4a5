//! `portcullis vault rotate-key` (issue 18) end to end, on both backends:
//! the access-token and audit checkpoint signing keys rotate offline and
//! keep their old versions, sealed beside the new one in a cluster's
//! PostgreSQL database (with a KEK) or kept as `<file>.retired-<when>` in a
//! SQLite node's state directory. After the restart the new keys sign, a
//! token signed under the old key is still accepted until it expires, both
//! keys are published, and the log's checkpoints signed before the rotation
//! still verify with the old audit key. Refused while the server runs.
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
    let creds = server.path().join("creds");
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

    // Refused while the server runs: it would go on signing with the old key.
    let out = cli(&state, &["vault", "rotate-key", "token-key"], &env_ref);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop it first"), "{err}");

    server.terminate();
    // On a cluster, refused until the stopped replica's lease has lapsed.
    let started = Instant::now();
    let rotated = loop {
        let out = cli(&state, &["vault", "rotate-key", "token-key"], &env_ref);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("hold a live lease"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
