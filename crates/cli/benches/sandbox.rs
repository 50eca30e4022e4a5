//! Session start-up of a stdio MCP server with the sandbox and without it:
//! the time from an agent's `initialize` to the gateway's answer, which
//! includes starting the server process (through `portcullis sandbox-exec`
//! when sandboxed), and, once the session runs, one `tools/call`, in one run
//! against one real `portcullis serve`.
//!
//! Run: `cargo bench -p portcullis-cli --bench sandbox` (or `--profile dev`
//! for a debug build). `PORTCULLIS_BIN=<path>` runs another `portcullis`
//! binary (a release build, an older one); a relative path is taken from
//! the directory cargo was started in. Knobs: `BENCH_ROUNDS` (default 5),
//! `BENCH_SESSIONS` (default 10 per route and round), `BENCH_CALLS`
//! (default 60 per route and round). Needs `/usr/bin/python3` (the server
//! is `tests/mcp/probe_server.py`, plain Python) and a kernel with the
//! sandbox's mechanisms; without them it prints `SKIPPED` and why.
//!
//! - Two `stdio:` routes run the same server: `sandboxed` under the default
//!   (strict) profile, `plain` with `[routes.sandbox] enabled = false` (the
//!   baseline, measured in the same run).
//! - Each round starts sessions one after the other, the two routes taking
//!   turns (which one goes first alternates); each is ended with `DELETE`
//!   (the gateway kills the process) before the next. Then calls:
//!   `tools/call` of `probe` with `what = "workdir"` (writes and reads a file
//!   in the session's work directory) on one session per route opened for
//!   the round, the routes taking turns call by call.
//! - Per round: the median start-up and call latency of each route; the
//!   start-up added by the sandbox is the difference of the medians, the
//!   call overhead their ratio. The result is the median over the rounds
//!   (a round disturbed by other load on the machine moves it least).
//!
//! Target (issue 23): start-up with the sandbox ≤ +20 ms over without; call
//! latency unchanged (± 5 %).
//!
//! Measured: see the end of `docs/sandbox.md` (figures of a debug build on
//! a loaded 2-core machine, and how to read them).
//!
//! Quiet figures, 2026-12-07 20:25 UTC, the `dist` binary (fat LTO) of main
//! at 9db7201, nothing else running, `PORTCULLIS_BIN=target/dist/portcullis
//! cargo bench --profile dev -p portcullis-cli --bench sandbox`: start-up
//! added by the sandbox +7.8 to +12.9 ms per round, median +9.7 ms (target
//! <= +20 ms: met); call latency sandboxed/plain 0.982 to 1.026, median
//! 0.985 (target 0.95-1.05: met).
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
    let rounds = env_num("BENCH_ROUNDS", 5).max(1) as usize;
    let sessions = env_num("BENCH_SESSIONS", 10).max(1) as usize;
    let calls = env_num("BENCH_CALLS", 60).max(1) as usize;
    let bin = support::bin();
    if let Err(why) = preflight(&bin) {
        println!("SKIPPED: {why}");
        return;
    }

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
    let routes = [target("/mcp/sandboxed"), target("/mcp/plain")];

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm-up: the page cache holds python and the gateway binary.
        for t in &routes {
            let (mut s, id, _) = start(t).await;
            end(&mut s, t, &id).await;
        }
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "probe", "arguments": {"what": "workdir", "target": ""}}});

        let mut results = Vec::new();
        println!();
        println!("portcullis sandbox benchmark: stdio MCP server (python3 probe_server.py)");
        println!("binary: {}", bin.to_string_lossy());
        println!(
            "{:<7}{:>16}{:>14}{:>12}{:>16}{:>14}{:>9}",
            "round", "start sandboxed", "start plain", "added", "call sandboxed", "call plain", "ratio"
        );
        for round in 0..rounds {
            let mut starts = [Vec::new(), Vec::new()];
            for n in 0..sessions {
                // Which route goes first alternates: neither always finds
                // the other's process just killed.
                for i in [n % 2, 1 - n % 2] {
                    let t = &routes[i];
                    let (mut s, id, took) = start(t).await;
                    starts[i].push(took);
                    end(&mut s, t, &id).await;
                }
            }
            // A session per route for the calls, opened now: a connection
            // left idle while sessions start may be closed by the gateway.
            let mut open = Vec::new();
            for t in &routes {
                let (mut s, id, _) = start(t).await;
                let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
                let listed = post(&mut s, t, Some(&id), &list).await;
                assert_eq!(listed["result"]["tools"][0]["name"], "probe", "{listed}");
                open.push((s, id));
            }
            let mut latencies = [Vec::new(), Vec::new()];
            for n in 0..calls {
                for i in [n % 2, 1 - n % 2] {
                    let (s, id) = &mut open[i];
                    let begun = Instant::now();
                    let answer = post(s, &routes[i], Some(id), &call).await;
                    latencies[i].push(begun.elapsed());
                    let text = answer["result"]["content"][0]["text"].as_str();
                    assert!(text.is_some_and(|t| t.starts_with("ALLOWED")), "{answer}");
                }
            }
            for (i, t) in routes.iter().enumerate() {
                let (s, id) = &mut open[i];
                end(s, t, id).await;
            }
            let r = Round {
                start: [median(&mut starts[0]), median(&mut starts[1])],
                call: [median(&mut latencies[0]), median(&mut latencies[1])],
            };
            println!(
                "{:<7}{:>13.1} ms{:>11.1} ms{:>+9.1} ms{:>13.2} ms{:>11.2} ms{:>9.3}",
                round + 1,
                r.start[0],
                r.start[1],
                r.added(),
                r.call[0],
                r.call[1],
                r.ratio()
            );
            results.push(r);
        }

        let mut added: Vec<f64> = results.iter().map(Round::added).collect();
        let mut ratio: Vec<f64> = results.iter().map(Round::ratio).collect();
        let (added, ratio) = (median_f(&mut added), median_f(&mut ratio));
        println!();
        println!(
            "start-up added by the sandbox (median of {rounds} rounds): {added:+.1} ms, target <= +20 ms: {}",
            if added <= 20.0 { "met" } else { "NOT met" }
        );
        println!(
            "call latency sandboxed/plain (median of {rounds} rounds): {ratio:.3}, target 0.95-1.05: {}",
            if (0.95..=1.05).contains(&ratio) {
                "met"
            } else {
                "NOT met"
            }
        );
        println!(
            "({sessions} sessions and {calls} calls per route and round, one at a time, the routes interleaved)"
        );
    });
    drop(serve);
}

/// One round's medians, in milliseconds: `[sandboxed, plain]`.
struct Round {
    start: [f64; 2],
    call: [f64; 2],
}

impl Round {
    fn added(&self) -> f64 {
        self.start[0] - self.start[1]
    }

    fn ratio(&self) -> f64 {
        self.call[0] / self.call[1]
    }
}

/// The median of `samples`, in milliseconds.
fn median(samples: &mut [Duration]) -> f64 {
    samples.sort();
    percentile(samples, 0.5).as_secs_f64() * 1e3
}

fn median_f(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Whether `bin` can run the sandboxed route here: it exists, knows
/// `sandbox-exec --probe`, and the kernel has what the default profile
/// needs. Otherwise why not (the bench then skips, instead of failing
/// half-way with the gateway's start-up error).
fn preflight(bin: &std::ffi::OsStr) -> Result<(), String> {
    let shown = bin.to_string_lossy();
    let out = std::process::Command::new(bin)
        .args(["sandbox-exec", "--probe"])
        .output()
        .map_err(|e| format!("cannot run `{shown}` (PORTCULLIS_BIN): {e}"))?;
    let support: portcullis_sandbox::Support = serde_json::from_slice(&out.stdout)
        .map_err(|_| {
            format!(
                "`{shown} sandbox-exec --probe` did not answer (not a portcullis with the sandbox?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    portcullis_sandbox::Profile::default()
        .check_support(&support)
        .map_err(|e| e.to_string())
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
