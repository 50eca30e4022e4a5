//! End-to-end tests of `portcullis backup` and `restore` with the real
//! binary: a backup taken while requests flow, restored into a new state
//! directory, served from, and verified; the CA key and the KEK left out
//! unless asked (the KEK always).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use support::*;

fn portcullis(args: &[&str], state: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap()
}

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_under_load_restores_serves_and_verifies() {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = route("api", "/api", &format!("http://{upstream}"), "internal");
    let sections = format!("[audit]\ncheckpoint_interval_ms = 100\n{routes}");
    let cfg = config(dir.path(), &sections, "");
    let server = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
            .await
            .unwrap()
    };
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    let state = server.state_dir();
    // A KEK file in the state directory (as the quickstart keeps one) must
    // never reach a backup.
    std::fs::write(state.join("vault.kek"), "kek-never-in-a-backup").unwrap();

    // Requests flow during both backups.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url, stop, done) = (
            client.clone(),
            server.url("/api/load"),
            stop.clone(),
            done.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while done.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let backups = tempfile::tempdir().unwrap();
    let plain = backups.path().join("plain.backup");
    let full = backups.path().join("full.backup");
    let (state_arg, plain_arg, full_arg) = (state.clone(), plain.clone(), full.clone());
    let (plain_out, full_out) = tokio::task::spawn_blocking(move || {
        let plain_out = portcullis(
            &["backup", "--out", plain_arg.to_str().unwrap()],
            &state_arg,
        );
        let full_out = portcullis(
            &[
                "backup",
                "--out",
                full_arg.to_str().unwrap(),
                "--include-ca-key",
            ],
            &state_arg,
        );
        (plain_out, full_out)
    })
    .await
    .unwrap();
    let during = done.load(Ordering::Relaxed);
    ok(plain_out);
    ok(full_out);
    // Still flowing after the backups.
    while done.load(Ordering::Relaxed) < during + 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let ca_key = std::fs::read(state.join("ca.key")).unwrap();
    let plain_bytes = std::fs::read(&plain).unwrap();
    let full_bytes = std::fs::read(&full).unwrap();
    assert!(
        !contains(&plain_bytes, &ca_key),
        "the CA key is left out by default"
    );
    assert!(
        contains(&full_bytes, &ca_key),
        "--include-ca-key includes it"
    );
    for bytes in [&plain_bytes, &full_bytes] {
        assert!(!contains(bytes, b"kek-never-in-a-backup"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&full).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a backup is owner-only");
    }
    // A backup never overwrites.
    let again = portcullis(&["backup", "--out", plain.to_str().unwrap()], &state);
    assert!(!again.status.success());

    // Restore refuses a non-empty directory, and anything not a backup.
    let err = portcullis(&["restore", "--from", full.to_str().unwrap()], &state);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("not empty"));
    let target = tempfile::tempdir().unwrap();
    let not_backup = portcullis(
        &[
            "restore",
            "--from",
            state.join("portcullis.db").to_str().unwrap(),
        ],
        &target.path().join("x"),
    );
    assert!(!not_backup.status.success());
    assert!(String::from_utf8_lossy(&not_backup.stderr).contains("not a Portcullis backup"));

    // Without the CA key, a restored directory does not start (by design).
    let bare = target.path().join("bare");
    let restored = portcullis(&["restore", "--from", plain.to_str().unwrap()], &bare);
    ok(restored.clone());
    assert!(String::from_utf8_lossy(&restored.stderr).contains("holds no CA key"));
    assert!(!bare.join("ca.key").exists() && !bare.join("vault.kek").exists());

    // With it: the restored state serves the old agent, and its log verifies.
    // The old server keeps running (its directory holds the agent's credentials).
    let new_dir = tempfile::tempdir().unwrap();
    let new_state = new_dir.path().join("state");
    ok(portcullis(
        &["restore", "--from", full.to_str().unwrap()],
        &new_state,
    ));
    let new_cfg = config(new_dir.path(), &sections, "");
    let restored_server =
        tokio::task::spawn_blocking(move || Server::start(new_dir, Some(&new_cfg)))
            .await
            .unwrap();
    let client = support::client(&restored_server.ca_pem(), Some((&cert, &key)));
    let response = client
        .get(restored_server.url("/api/after-restore"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let out = ok(restored_server.cli(&["audit", "verify"]));
    assert!(out.starts_with("ok: "), "{out}");
    let records: u64 = out["ok: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        records >= 100,
        "the log holds the records taken under load: {out}"
    );
}
