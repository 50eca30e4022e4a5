//! The vault over a real SQLite store: wrong KEK, corrupted ciphertext,
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! concurrent rotations, rekey, grace-period destruction, transit keys,
//! captures, and Fernet compatibility with Python's `cryptography`.

use std::path::Path;

use portcullis_store::testing::TestDb;
use std::sync::Arc;
use std::time::Duration;

use portcullis_store::Store;
use portcullis_vault::{Kek, SecretSettings, TransitChange, Vault, VaultError};

fn tls() -> rustls::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

async fn open(path: &Path, kek: [u8; 32]) -> Result<Arc<Vault>, VaultError> {
    let store = Store::open_sqlite(path).await.unwrap();
    Vault::open(store, Kek::from_bytes(kek), tls(), Duration::from_secs(30)).await
}

#[tokio::test]
async fn wrong_kek_is_refused_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let vault = open(&db, [1; 32]).await.unwrap();
    vault
        .put("api", b"s3cr3t-value", &SecretSettings::default())
        .await
        .unwrap();
    drop(vault);
    let store = Store::open_sqlite(&db).await.unwrap();
    let before = (
        store.kek_meta().await.unwrap(),
        store.secret_versions(None).await.unwrap(),
    );
    let err = open(&db, [2; 32]).await.unwrap_err();
    assert!(matches!(err, VaultError::WrongKek { .. }), "{err}");
    assert!(err.to_string().contains("nothing was decrypted or changed"));
    let after = (
        store.kek_meta().await.unwrap(),
        store.secret_versions(None).await.unwrap(),
    );
    assert!(before == after, "a wrong KEK changed the vault");
    let vault = open(&db, [1; 32]).await.unwrap();
    assert_eq!(
        vault.credential("api").unwrap().value.as_slice(),
        b"s3cr3t-value"
    );
}

#[tokio::test]
async fn corrupted_ciphertext_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let vault = open(&db, [1; 32]).await.unwrap();
    vault
        .put("good", b"good-value", &SecretSettings::default())
        .await
        .unwrap();
    vault
        .put("bad", b"bad-value", &SecretSettings::default())
        .await
        .unwrap();
    drop(vault);
    // Flip one byte of one ciphertext directly in the database.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE secret_versions SET ciphertext = CAST(zeroblob(40) AS BLOB) WHERE name = 'bad'",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let vault = open(&db, [1; 32]).await.unwrap();
    let err = vault.credential("bad").unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(!err.to_string().contains("bad-value"));
    assert_eq!(
        vault.credential("good").unwrap().value.as_slice(),
        b"good-value"
    );
    // Rekeying touches only data keys, so the bad row does not block it, but the
    // bad row stays undecryptable.
    vault.rekey(Kek::from_bytes([3; 32])).await.unwrap();
    assert!(vault.credential("bad").is_err());
    assert_eq!(
        vault.credential("good").unwrap().value.as_slice(),
        b"good-value"
    );
}

#[tokio::test]
async fn concurrent_rotations_one_wins_no_version_lost() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("db"), [1; 32]).await.unwrap();
    vault
        .put("api", b"v1", &SecretSettings::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let vault = vault.clone();
        tasks.push(tokio::spawn(async move {
            vault
                .rotate("api", Some(format!("v2-from-{i}").as_bytes()), Some(1))
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(info) => {
                wins += 1;
                assert_eq!(info.version, 2);
            }
            Err(VaultError::Conflict(m)) => assert!(m.contains("api"), "{m}"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(wins, 1);
    // Without an expected version, rotations serialise and each gets a version.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let vault = vault.clone();
        tasks.push(tokio::spawn(async move {
            vault
                .rotate("api", Some(format!("later-{i}").as_bytes()), None)
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    let list = vault.list().await.unwrap();
    let versions: Vec<i64> = list[0].versions.iter().map(|v| v.version).collect();
    assert_eq!(
        versions,
        (1..=2 + ok).collect::<Vec<_>>(),
        "contiguous, none lost"
    );
    for v in &versions {
        vault.decrypt_version("api", *v).await.unwrap();
    }
    assert_eq!(
        list[0]
            .versions
            .iter()
            .filter(|v| v.status == "current")
            .count(),
        1
    );
}

#[tokio::test]
async fn rekey_then_restart_needs_the_new_kek() {
    for db in TestDb::all().await {
        rekey_then_restart_on(&db).await;
    }
}

async fn open_on(db: &TestDb, kek: [u8; 32]) -> Result<Arc<Vault>, VaultError> {
    Vault::open(
        db.open().await,
        Kek::from_bytes(kek),
        tls(),
        Duration::from_secs(30),
    )
    .await
}

async fn rekey_then_restart_on(db: &TestDb) {
    let vault = open_on(db, [1; 32]).await.unwrap();
    vault
        .put("api", b"value-1", &SecretSettings::default())
        .await
        .unwrap();
    vault.rotate("api", Some(b"value-2"), None).await.unwrap();
    vault
        .transit_key("t", None, TransitChange::Create { exportable: true })
        .await
        .unwrap();
    let (token, _) = vault.transit_encrypt("t", b"plain").unwrap();
    // A cluster's key material sealed under the same KEK moves with it.
    let store = db.open().await;
    let ca = portcullis_vault::key_material::seal(&Kek::from_bytes([1; 32]), "ca", 1, b"ca pem", 5);
    store.insert_sealed_key(&ca).await.unwrap();
    assert_eq!(vault.rekey(Kek::from_bytes([9; 32])).await.unwrap(), 4);
    let moved = store.sealed_key("ca").await.unwrap().unwrap();
    assert_eq!(moved.kek_id, Kek::from_bytes([9; 32]).fingerprint());
    assert_eq!(moved.ciphertext, ca.ciphertext);
    assert_eq!(
        portcullis_vault::key_material::open(&Kek::from_bytes([9; 32]), &moved)
            .unwrap()
            .as_slice(),
        b"ca pem"
    );
    assert!(portcullis_vault::key_material::open(&Kek::from_bytes([1; 32]), &moved).is_err());
    assert_eq!(
        vault.credential("api").unwrap().value.as_slice(),
        b"value-2"
    );
    drop(vault);
    assert!(matches!(
        open_on(db, [1; 32]).await,
        Err(VaultError::WrongKek { .. })
    ));
    let vault = open_on(db, [9; 32]).await.unwrap();
    assert_eq!(
        vault.decrypt_version("api", 1).await.unwrap().as_slice(),
        b"value-1"
    );
    assert_eq!(
        vault.transit_decrypt("t", &token).unwrap().0.as_slice(),
        b"plain"
    );
}

#[tokio::test]
async fn grace_period_then_destruction_and_overdue_listing() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("db"), [1; 32]).await.unwrap();
    let settings = SecretSettings {
        rotation_period_s: Some(1),
        grace_period_s: Some(0),
        hook: Some(portcullis_vault::RotationHook::Command(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo rotated-by-hook".into(),
        ])),
    };
    vault.put("api", b"first", &settings).await.unwrap();
    let no_hook = SecretSettings {
        rotation_period_s: Some(1),
        ..Default::default()
    };
    vault.put("manual", b"by-hand", &no_hook).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let list = vault.list().await.unwrap();
    assert!(list[0].overdue && list[1].overdue);
    assert_eq!(list[0].hook, Some("command"));
    let report = vault.maintain().await.unwrap();
    assert_eq!(report.rotated, vec!["api".to_string()]);
    assert_eq!(report.overdue, 1, "`manual` has no hook and stays overdue");
    assert_eq!(
        vault.credential("api").unwrap().value.as_slice(),
        b"rotated-by-hook"
    );
    // Grace 0: the next pass destroys version 1.
    let report = vault.maintain().await.unwrap();
    assert_eq!(report.destroyed, vec![("api".to_string(), 1)]);
    assert!(vault.decrypt_version("api", 1).await.is_err());
    let list = vault.list().await.unwrap();
    assert_eq!(list[0].versions[0].status, "destroyed");
    assert!(
        !serde_json::to_string(&list)
            .unwrap()
            .contains("rotated-by-hook")
    );
}

#[tokio::test]
async fn bad_input_is_refused_without_echoing_values() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("db"), [1; 32]).await.unwrap();
    let s = SecretSettings::default();
    for (name, value, expect) in [
        ("Bad Name", &b"x"[..], "invalid secret name"),
        ("ok", b"", "empty"),
        ("ok", b"line1\nline2-secret", "CR, LF or NUL"),
    ] {
        let err = vault.put(name, value, &s).await.unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
        assert!(!err.contains("line2-secret"));
    }
    vault.put("dup", b"x", &s).await.unwrap();
    assert!(matches!(
        vault.put("dup", b"y", &s).await,
        Err(VaultError::Conflict(_))
    ));
    assert!(matches!(
        vault.rotate("none", Some(b"y"), None).await,
        Err(VaultError::NotFound(_))
    ));
    assert!(
        vault
            .rotate("dup", None, None)
            .await
            .unwrap_err()
            .to_string()
            .contains("no rotation hook")
    );
    vault.set_in_use(["dup".to_string()].into());
    assert!(matches!(
        vault.delete("dup").await,
        Err(VaultError::Conflict(_))
    ));
    vault.set_in_use(Default::default());
    vault.delete("dup").await.unwrap();
    assert!(vault.credential("dup").is_err());
}

#[tokio::test]
async fn captures_are_sealed_and_shredded() {
    for db in TestDb::all().await {
        captures_are_sealed_and_shredded_on(&db).await;
    }
}

async fn captures_are_sealed_and_shredded_on(db: &TestDb) {
    let vault = open_on(db, [1; 32]).await.unwrap();
    let c = portcullis_vault::Capture {
        request_id: "req-1".into(),
        route: "demo".into(),
        request: b"the question".to_vec(),
        response: b"the answer".to_vec(),
        expires_at: 0,
        ..Default::default()
    };
    vault.store_captures(&[c]).await.unwrap();
    let view = vault.capture("req-1").await.unwrap();
    assert_eq!(view.request.as_slice(), b"the question");
    assert_eq!(view.response.as_slice(), b"the answer");
    assert_eq!(vault.maintain().await.unwrap().shredded, 1);
    assert!(matches!(
        vault.capture("req-1").await,
        Err(VaultError::NotFound(_))
    ));
}

/// Tokens interoperate with the real Python `cryptography` package, both ways.
#[tokio::test]
async fn fernet_tokens_open_in_python_cryptography() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import cryptography.fernet"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED fernet_tokens_open_in_python_cryptography: python3 with `cryptography` is not installed (pip install -r requirements-test.txt)"
        );
        return;
    }
    let python = |script: &str, args: &[&str]| {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let key = python(
        "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())",
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("db"), [1; 32]).await.unwrap();
    vault
        .transit_key(
            "py",
            Some(&key),
            TransitChange::Create { exportable: false },
        )
        .await
        .unwrap();
    // Portcullis encrypts, Python decrypts.
    let (token, version) = vault
        .transit_encrypt("py", "héllo from portcullis".as_bytes())
        .unwrap();
    assert_eq!(version, 1);
    let plain = python(
        "import sys; from cryptography.fernet import Fernet; print(Fernet(sys.argv[1].encode()).decrypt(sys.argv[2].encode()).decode())",
        &[&key, &token],
    );
    assert_eq!(plain, "héllo from portcullis");
    // Python encrypts, Portcullis decrypts, also after a rotation (MultiFernet order).
    let token = python(
        "import sys; from cryptography.fernet import Fernet; print(Fernet(sys.argv[1].encode()).encrypt(b'from python').decode())",
        &[&key],
    );
    vault
        .transit_key("py", None, TransitChange::Rotate)
        .await
        .unwrap();
    let (plain, version) = vault.transit_decrypt("py", &token).unwrap();
    assert_eq!((plain.as_slice(), version), (&b"from python"[..], 1));
    // Rewrap moves it to version 2; Python with the old key alone now fails.
    let (rewrapped, version) = vault.transit_rewrap("py", &token).unwrap();
    assert_eq!(version, 2);
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sys; from cryptography.fernet import Fernet; Fernet(sys.argv[1].encode()).decrypt(sys.argv[2].encode())")
        .args([&key, &rewrapped])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the old key must not open a rewrapped token"
    );
    assert!(matches!(
        vault.transit_decrypt("py", "gAAAAAB-garbage"),
        Err(VaultError::Transit(_))
    ));
}

/// A webhook hook: a one-shot HTTP server on loopback answers the new value.
#[tokio::test]
async fn webhook_hook_rotates() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the JSON body has arrived (bounded).
        for _ in 0..50 {
            let n = tcp.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            if n == 0 || request.ends_with(b"}") {
                break;
            }
        }
        let body = r#"{"value": "from-the-webhook"}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(reply.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("db"), [1; 32]).await.unwrap();
    let settings = SecretSettings {
        hook: Some(portcullis_vault::RotationHook::Webhook(format!(
            "http://{addr}/rotate"
        ))),
        ..Default::default()
    };
    vault.put("api", b"first", &settings).await.unwrap();
    let info = vault.rotate("api", None, None).await.unwrap();
    assert_eq!(info.version, 2);
    assert_eq!(
        vault.credential("api").unwrap().value.as_slice(),
        b"from-the-webhook"
    );
    let request = server.await.unwrap();
    assert!(request.contains(r#""secret":"api""#), "{request}");
    assert!(request.contains(r#""version":2"#), "{request}");
}

/// Writes racing a rekey end up under the new KEK: nothing is left wrapped
/// under the retired one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_racing_a_rekey_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let vault = open(&db, [1; 32]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let vault = vault.clone();
        tasks.push(tokio::spawn(async move {
            vault
                .put(
                    &format!("s{i}"),
                    format!("value-{i}").as_bytes(),
                    &SecretSettings::default(),
                )
                .await
                .unwrap();
            vault
                .store_captures(&[portcullis_vault::Capture {
                    request_id: format!("r{i}"),
                    route: "x".into(),
                    request: b"q".to_vec(),
                    expires_at: i64::MAX,
                    ..Default::default()
                }])
                .await
                .unwrap();
        }));
    }
    vault.rekey(Kek::from_bytes([5; 32])).await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    drop(vault);
    let vault = open(&db, [5; 32]).await.unwrap();
    for i in 0..20 {
        assert_eq!(
            vault.credential(&format!("s{i}")).unwrap().value.as_slice(),
            format!("value-{i}").as_bytes()
        );
        vault.capture(&format!("r{i}")).await.unwrap();
    }
}

/// Kept capture bytes come out of a shared budget that the writer gives back
/// once the capture is stored.
#[tokio::test]
async fn capture_memory_budget_is_reserved_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(&dir.path().join("db"), [1; 32]).await.unwrap();
    let (sink, _task) = vault.start_capture_writer_with_budget(10);
    assert_eq!(sink.reserve(6), 6);
    assert_eq!(sink.reserve(6), 4);
    assert_eq!(sink.reserve(1), 0);
    sink.submit(portcullis_vault::Capture {
        request_id: "budget".into(),
        route: "r".into(),
        request: b"123456".to_vec(),
        response: b"abcd".to_vec(),
        expires_at: i64::MAX,
        ..Default::default()
    });
    let mut released = false;
    // Bounded at 10 s: the writer's commit, on a loaded machine.
    for _ in 0..500 {
        if vault.capture("budget").await.is_ok() && sink.reserve(3) == 3 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(released, "the writer did not give the budget back");
}
