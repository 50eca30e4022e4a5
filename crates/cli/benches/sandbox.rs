//! Session start-up of a stdio MCP server with the sandbox and without it:
//! the time from an agent's `initialize` to the gateway's answer, which
//! includes starting the server process (through `portcullis sandbox-exec`
//! when sandboxed), and, once the session runs, one `tools/call`, in one run
//! against one real `portcullis serve`.
//!
//! Run: `cargo bench -p portcullis-cli --bench sandbox`
//! Knobs: `BENCH_SESSIONS` (default 40 per route), `BENCH_CALLS` (default 200
//! per route). Needs `/usr/bin/python3` (the server is
//! `tests/mcp/probe_server.py`, plain Python); without it prints `SKIPPED`.
//!
//! - Two `stdio:` routes run the same server: `sandboxed` under the default
//!   (strict) profile, `plain` with `[routes.sandbox] enabled = false`.
//! - Sessions start one after the other, the two routes taking turns; each is
//!   ended with `DELETE` (the gateway kills the process) before the next.
//! - Calls: `tools/call` of `probe` with `what = "workdir"` (writes and reads
//!   a file in the session's work directory) on one open session per route,
//!   the routes taking turns in rounds of 50.
//!
//! Target (issue 23): start-up with the sandbox ≤ +20 ms over without; call
//! latency unchanged (± 5 %).
//!
//! Measured 2026-12-07 10:51 UTC on the development machine (2 cores, load
//! average 1.2–1.7), main at 1ff7707, two runs of `cargo bench --profile dev
//! -p portcullis-cli --bench sandbox` (a debug gateway binary: the keeper and
//! the PID namespace's init are two more starts of it per session, so a
//! release binary starts them faster):
//!
//! ```text
//! run  sandboxed start p50/p99  plain start p50/p99  added p50  call p50 sandboxed/plain  ratio
//! 1    59.1 / 78.4 ms           43.0 / 73.6 ms       +16.2 ms   2.61 / 2.55 ms            1.026
//! 2    59.2 / 76.3 ms           43.9 / 54.7 ms       +15.3 ms   2.26 / 2.20 ms            1.026
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{Value, json};
use support::load::{Sender, Target, env_num, percentile};

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/probe_server.py");

const POLICIES: &str = r#"
@id("list") permit(principal in Role::"dev", action == Action::"list_tools", resource in Route::"sandboxed");
@id("call") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"sandboxed");
@id("list-plain") permit(principal in Role::"dev", action == Action::"list_tools", resource in Route::"plain");
@id("call-plain") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"plain");
"#;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !Path::new("/usr/bin/python3").exists() {
        println!("SKIPPED: the sandbox bench needs /usr/bin/python3");
        return;
    }
    let sessions = env_num("BENCH_SESSIONS", 40) as usize;
    let calls = env_num("BENCH_CALLS", 200) as usize;

    // The server's directory must be readable by the sandbox's `nobody`.
    let code = tempfile::tempdir().unwrap();
    let script = code.path().join("probe_server.py");
    std::fs::copy(SERVER, &script).unwrap();
    for (path, mode) in [(code.path(), 0o755), (script.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, creds, policies) = (
        dir.path().join("state"),
        dir.path().join("creds"),
        dir.path().join("policies"),
    );
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        portcullis_policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    std::fs::write(policies.join("bench.cedar"), POLICIES).unwrap();
    let route = |name: &str, sandbox: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nkind = \"mcp\"\npath_prefix = \"/mcp/{name}\"\n\
             upstream = \"stdio:/usr/bin/python3 {}\"\nclassification = \"internal\"\n\
             [routes.sandbox]\n{sandbox}\n",
            script.display()
        )
    };
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [policy]\ndir = \"{}\"\n{}{}",
            policies.display(),
            route(
                "sandboxed",
                &format!("read = [\"{}\"]", code.path().display())
            ),
            route("plain", "enabled = false"),
        ),
    )
    .unwrap();
    let serve = support::serve(&config, &state, &[]);
    support::create_agent(&state, &creds, "bench", "dev");
    let tls = Arc::new(support::agent_tls(&state, &creds, "bench"));
    let target = |path: &'static str| Target {
        addr: serve.gateway,
        tls: Some(tls.clone()),
        path,
    };
    let (sandboxed, plain) = (target("/mcp/sandboxed"), target("/mcp/plain"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm-up: the page cache holds python and the gateway binary.
        for t in [&sandboxed, &plain] {
            let (mut s, id, _) = start(t).await;
            end(&mut s, t, &id).await;
        }
        let mut starts = [Vec::new(), Vec::new()];
        for _ in 0..sessions {
            for (i, t) in [&sandboxed, &plain].into_iter().enumerate() {
                let (mut s, id, took) = start(t).await;
                starts[i].push(took);
                end(&mut s, t, &id).await;
            }
        }
        let mut latencies = [Vec::new(), Vec::new()];
        let mut open = Vec::new();
        for t in [&sandboxed, &plain] {
            let (mut s, id, _) = start(t).await;
            let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
            let listed = post(&mut s, t, Some(&id), &list).await;
            assert_eq!(listed["result"]["tools"][0]["name"], "probe", "{listed}");
            open.push((s, id));
        }
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "probe", "arguments": {"what": "workdir", "target": ""}}});
        for _ in 0..calls.div_ceil(50) {
            for (i, t) in [&sandboxed, &plain].into_iter().enumerate() {
                let (s, id) = &mut open[i];
                for _ in 0..50 {
                    let begun = Instant::now();
                    let answer = post(s, t, Some(id), &call).await;
                    latencies[i].push(begun.elapsed());
                    let text = answer["result"]["content"][0]["text"].as_str();
                    assert!(text.is_some_and(|t| t.starts_with("ALLOWED")), "{answer}");
                }
            }
        }
        for (i, t) in [&sandboxed, &plain].into_iter().enumerate() {
            let (s, id) = &mut open[i];
            end(s, t, id).await;
        }

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for v in starts.iter_mut().chain(latencies.iter_mut()) {
            v.sort();
        }
        println!();
        println!("portcullis sandbox benchmark: stdio MCP server (python3 probe_server.py)");
        println!(
            "{:<34}{:>12}{:>12}{:>14}{:>14}",
            "route", "start p50", "start p99", "call p50", "call p99"
        );
        for (i, name) in ["sandboxed (default profile)", "plain (enabled = false)"]
            .into_iter()
            .enumerate()
        {
            println!(
                "{name:<34}{:>9.1} ms{:>9.1} ms{:>11.2} ms{:>11.2} ms",
                ms(percentile(&starts[i], 0.5)),
                ms(percentile(&starts[i], 0.99)),
                ms(percentile(&latencies[i], 0.5)),
                ms(percentile(&latencies[i], 0.99)),
            );
        }
        let start_added = ms(percentile(&starts[0], 0.5)) - ms(percentile(&starts[1], 0.5));
        let call_ratio = ms(percentile(&latencies[0], 0.5)) / ms(percentile(&latencies[1], 0.5));
        println!();
        println!(
            "start-up added by the sandbox, p50: {start_added:+.1} ms (target <= +20 ms); call p50 ratio sandboxed/plain: {call_ratio:.3} (target 0.95-1.05)"
        );
        println!("({sessions} sessions and {calls} calls per route, one at a time)");
    });
    drop(serve);
}

/// Opens a session: `initialize`, then `notifications/initialized`. Returns
/// the connection, the session id and how long `initialize` took.
async fn start(target: &Target) -> (Sender, String, Duration) {
    let mut sender = target.connect().await;
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}});
    let begun = Instant::now();
    let response = sender
        .send_request(message(target, None, &init))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "initialize failed");
    let id = response
        .headers()
        .get("mcp-session-id")
        .expect("a session id")
        .to_str()
        .unwrap()
        .to_string();
    let answer: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let took = begun.elapsed();
    assert_eq!(answer["id"], 0, "{answer}");
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = sender
        .send_request(message(target, Some(&id), &done))
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let _ = response.into_body().collect().await;
    (sender, id, took)
}

/// Ends a session (`DELETE`): the gateway stops its process.
async fn end(sender: &mut Sender, target: &Target, id: &str) {
    let request = Request::delete(target.path)
        .header("host", "localhost")
        .header("mcp-session-id", id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let _ = response.into_body().collect().await;
}

fn message(target: &Target, session: Option<&str>, body: &Value) -> Request<Full<Bytes>> {
    let mut request = Request::post(target.path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(id) = session {
        request = request.header("mcp-session-id", id);
    }
    request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn post(sender: &mut Sender, target: &Target, session: Option<&str>, body: &Value) -> Value {
    let response = sender
        .send_request(message(target, session, body))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "request failed");
    serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
}
