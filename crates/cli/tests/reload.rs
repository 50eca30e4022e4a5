//! End-to-end tests of the config reload on SIGHUP against the real binary:
//! a route's upstream changes and traffic moves, a route is added, a route
//! is removed (`route_not_found`), an in-flight streaming answer finishes
//! on the config it started with, and an invalid or restart-only config is
//! refused whole while the old one keeps serving. Each outcome is audited
//! (`config.reload`, with the file's SHA-256) and counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::*;

/// Sends SIGHUP and waits (bounded) for the `n`-th `config.reload` record.
fn reload(server: &Server, n: usize) -> Value {
    server.signal("HUP");
    for _ in 0..200 {
        let found: Vec<Value> = server
            .audit(500)
            .into_iter()
            .filter(|r| r["action"] == "config.reload")
            .collect();
        if found.len() >= n {
            return found[n - 1].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no config.reload record #{n}");
}

/// Writes the config file with these routes (TOML fragments).
fn write(path: &Path, gateway: &str, routes: &str) -> String {
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n{gateway}\n[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\n{routes}\n"
    );
    std::fs::write(path, &text).unwrap();
    text
}

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// GET `path` as the agent: status, and the upstream's echoed path (or the
/// error code).
async fn get(agent: &reqwest::Client, server: &Server, path: &str) -> (u16, String) {
    let response = agent.get(server.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let said = body["path"]
        .as_str()
        .or(body["error"]["code"].as_str())
        .unwrap_or_default()
        .to_string();
    (status, said)
}

/// Two upstreams and a server whose route `api` goes to the first
/// (`http://one/one`), with an agent in role `reader`.
struct Rig {
    server: Server,
    agent: reqwest::Client,
    cfg: PathBuf,
    one: std::net::SocketAddr,
    two: std::net::SocketAddr,
    gate: StreamGate,
}

async fn rig() -> Rig {
    install_crypto();
    let (one, gate) = start_upstream().await;
    let (two, _) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    write(
        &cfg,
        "",
        &route("api", "/api", &format!("http://{one}/one"), "internal"),
    );
    let start = cfg.clone();
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&start)))
        .await
        .unwrap();
    let (cert, key) = tokio::task::block_in_place(|| server.create_agent("bot", &["reader"]));
    let agent = client(&server.ca_pem(), Some((&cert, &key)));
    Rig {
        server,
        agent,
        cfg,
        one,
        two,
        gate,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_moves_adds_and_removes_routes_while_a_stream_finishes_on_the_old_config() {
    let Rig {
        server,
        agent,
        cfg,
        one,
        two,
        gate,
    } = rig().await;
    assert_eq!(get(&agent, &server, "/api/x").await, (200, "/one/x".into()));

    // A streaming answer from upstream one, held open across the reload.
    let (release, held) = tokio::sync::oneshot::channel();
    *gate.lock().unwrap() = Some(held);
    let mut stream = agent.get(server.url("/api/stream")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(&stream.chunk().await.unwrap().unwrap()[..], b"first\n");

    // Move `api` to upstream two and add `extra`.
    let moved = write(
        &cfg,
        "",
        &format!(
            "{}{}",
            route("api", "/api", &format!("http://{two}/two"), "internal"),
            route("extra", "/extra", &format!("http://{one}/three"), "public"),
        ),
    );
    let applied = tokio::task::block_in_place(|| reload(&server, 1));
    assert_eq!(applied["outcome"], "allow", "{applied}");
    assert_eq!(applied["request_sha256"], sha256(&moved), "{applied}");
    assert_eq!(get(&agent, &server, "/api/x").await, (200, "/two/x".into()));
    assert_eq!(
        get(&agent, &server, "/extra/y").await,
        (200, "/three/y".into())
    );

    // The stream that began before the reload finishes, from upstream one.
    release.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(&rest[..], b"second\n");

    // Remove `extra`: its path is unrouted from now on.
    write(
        &cfg,
        "",
        &route("api", "/api", &format!("http://{two}/two"), "internal"),
    );
    let removed = tokio::task::block_in_place(|| reload(&server, 2));
    assert_eq!(removed["outcome"], "allow", "{removed}");
    assert_eq!(
        get(&agent, &server, "/extra/y").await,
        (404, "route_not_found".into())
    );
    assert_eq!(get(&agent, &server, "/api/x").await, (200, "/two/x".into()));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("portcullis_config_reloads_total{outcome=\"applied\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_config_reloads_total{outcome=\"refused\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_refuses_an_invalid_or_restart_only_config_whole_and_the_old_one_serves() {
    let Rig {
        server,
        agent,
        cfg,
        two,
        ..
    } = rig().await;
    let moved = route("api", "/api", &format!("http://{two}/two"), "internal");
    let still_one = || async { get(&agent, &server, "/api/x").await };

    // Does not parse: refused.
    write(&cfg, "", &format!("{moved}upstream_typo = 1\n"));
    let refused = tokio::task::block_in_place(|| reload(&server, 1));
    assert_eq!(
        (&refused["outcome"], &refused["error_code"]),
        (&"deny".into(), &"invalid_config".into()),
        "{refused}"
    );
    assert_eq!(still_one().await, (200, "/one/x".into()));

    // Parses, but cannot be served: a credential with no vault running.
    let credential = format!(
        "{moved}credential = {{ secret = \"upstream-key\", header = \"Authorization\", format = \"Bearer {{}}\" }}\n"
    );
    write(&cfg, "", &credential);
    let refused = tokio::task::block_in_place(|| reload(&server, 2));
    assert_eq!(
        (&refused["outcome"], &refused["error_code"]),
        (&"deny".into(), &"invalid_config".into()),
        "{refused}"
    );
    assert_eq!(still_one().await, (200, "/one/x".into()));

    // A restart-only change beside a reloadable one: neither is applied.
    let restart = write(&cfg, "server_names = [\"gw.example\"]", &moved);
    let refused = tokio::task::block_in_place(|| reload(&server, 3));
    assert_eq!(
        (&refused["outcome"], &refused["error_code"]),
        (&"deny".into(), &"restart_required".into()),
        "{refused}"
    );
    assert_eq!(refused["request_sha256"], sha256(&restart), "{refused}");
    assert_eq!(still_one().await, (200, "/one/x".into()));
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        log.contains("changing `gateway.server_names` needs a restart"),
        "{log}"
    );

    // Back to a reloadable change: applied.
    write(&cfg, "", &moved);
    let applied = tokio::task::block_in_place(|| reload(&server, 4));
    assert_eq!(applied["outcome"], "allow", "{applied}");
    assert_eq!(get(&agent, &server, "/api/x").await, (200, "/two/x".into()));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("portcullis_config_reloads_total{outcome=\"refused\"} 3"),
        "{metrics}"
    );
}
