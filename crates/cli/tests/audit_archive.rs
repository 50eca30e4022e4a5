//! End-to-end tests of audit retention with the real binary: `audit archive`
//! beside a running server, `audit verify --archive`, proofs of pruned
//! records from the archive, tampering with the archive found, and the
//! `[audit] retention_days` task.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A server with one allowed route and fast checkpoints; `audit` is extra
/// `[audit]` keys.
async fn server_with(dir: tempfile::TempDir, audit: &str) -> Server {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let routes = route("api", "/api", &format!("http://{upstream}"), "internal");
    let cfg = config(
        dir.path(),
        &format!("[audit]\ncheckpoint_interval_ms = 100\n{audit}\n{routes}"),
        "",
    );
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
}

fn run_ok(output: std::process::Output) -> (String, String) {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn run_failing(output: std::process::Output) -> String {
    assert!(
        !output.status.success(),
        "command should have failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}

/// Sends `n` allowed requests.
async fn requests(server: &Server, client: &reqwest::Client, n: usize) {
    for i in 0..n {
        let response = client
            .get(server.url(&format!("/api/item/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Waits (bounded) until a checkpoint covers at least `size` records.
fn signed_size_at_least(server: &Server, size: u64) -> u64 {
    for _ in 0..100 {
        // A C2SP checkpoint: origin, then tree size, then root.
        let output = server.cli(&["audit", "checkpoint"]);
        let signed = String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if signed >= size {
            return signed;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no checkpoint covers {size} records");
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_prunes_beside_a_running_server_and_verifies_with_its_archive() {
    let server = server_with(tempfile::tempdir().unwrap(), "").await;
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    requests(&server, &client, 200).await;
    signed_size_at_least(&server, 200);

    let archive = server.path().join("archive");
    let archive_arg = archive.to_str().unwrap();
    let (out, _) = run_ok(server.cli(&[
        "audit",
        "archive",
        "--before",
        "2999-01-01",
        "--out",
        archive_arg,
    ]));
    assert!(out.contains("archived records 0.."), "{out}");
    let first_stored: u64 = out
        .rsplit("keeps records from ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        first_stored >= 192 && first_stored.is_multiple_of(64),
        "{out}"
    );
    let leaves = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "leaves"))
        .unwrap();
    assert_eq!(count_lines(&leaves) as u64, first_stored);

    // The server keeps serving and signing on the pruned log.
    requests(&server, &client, 20).await;
    signed_size_at_least(&server, first_stored + 220 - 200);

    // Verified with the archive: every record; without: the pruned prefix is
    // said to be skipped, the rest checked.
    let (out, err) = run_ok(server.cli(&["audit", "verify", "--archive", archive_arg]));
    assert!(out.starts_with("ok: "), "{out}");
    assert!(
        err.contains(&format!(
            "records 0..{first_stored} were read from the archive"
        )),
        "{err}"
    );
    let (out, err) = run_ok(server.cli(&["audit", "verify"]));
    assert!(out.starts_with("ok: "), "{out}");
    assert!(
        err.contains("not checked here (pass --archive DIR)"),
        "{err}"
    );

    // A pruned record is proven from the archive, offline; the server says
    // where to look.
    let (out, _) = run_ok(server.cli(&["audit", "prove", "3", "--archive", archive_arg]));
    let proof: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(proof["verified"], true);
    assert_eq!(proof["record"]["seq"], 3);
    assert_eq!(proof["tree_size"], first_stored);
    let err = run_failing(server.cli(&["audit", "prove", "3"]));
    assert!(err.contains("archived"), "{err}");
    // A stored record still proves online.
    let later = (first_stored + 5).to_string();
    let (out, _) = run_ok(server.cli(&["audit", "prove", &later]));
    assert!(out.contains("\"verified\": true"), "{out}");

    // Nothing new to archive: nothing written.
    let (out, _) = run_ok(server.cli(&[
        "audit",
        "archive",
        "--before",
        "1970-01-02",
        "--out",
        archive_arg,
    ]));
    assert!(out.starts_with("nothing to archive"), "{out}");

    // A record changed in the archive is found at its index.
    let text = std::fs::read_to_string(&leaves).unwrap();
    std::fs::write(
        &leaves,
        text.replacen("\"status\":200", "\"status\":500", 1),
    )
    .unwrap();
    let err = run_failing(server.cli(&["audit", "verify", "--archive", archive_arg]));
    assert!(err.contains("FAILED"), "{err}");
    let err = run_failing(server.cli(&["audit", "prove", "0", "--archive", archive_arg]));
    assert!(err.contains("seal"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_runs_in_the_background_and_archives_only_what_is_old() {
    let server = server_with(
        tempfile::tempdir().unwrap(),
        "retention_days = 1\narchive_dir = \"retained\"\n",
    )
    .await;
    let (cert, key) = server.create_agent("bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    requests(&server, &client, 70).await;
    // The task ran at start into the configured directory, and found
    // nothing a day old.
    let archive = server.path().join("retained");
    for _ in 0..100 {
        if server.stderr.lock().unwrap().contains("audit retention") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.stderr.lock().unwrap().clone();
    assert!(log.contains("audit retention: nothing to archive"), "{log}");
    assert!(archive.is_dir());
    assert_eq!(
        std::fs::read_dir(&archive)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "leaves")
            })
            .count(),
        0
    );
    let (out, err) = run_ok(server.cli(&["audit", "verify"]));
    assert!(out.starts_with("ok: "), "{out}");
    assert!(!err.contains("not checked"), "{err}");
}
