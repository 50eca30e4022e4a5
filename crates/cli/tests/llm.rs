//! End to end: routes of kind `llm` with the official `openai` Python SDK as
//! the client and an OpenAI-compatible upstream (tests/llm/upstream.py),
//! through the real `portcullis` binary. Skips with a visible `SKIPPED` when
//! python3 or the `openai` package is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Server, config, install_crypto};

const UPSTREAM_KEY: &str = "sk-upstream-test-key-5b1e0c";
const SCHEMA: &str = include_str!("../../policy/defaults/schema.cedarschema");
const POLICIES: &str = r#"
@id("llm-complete") permit(principal in Role::"llm-user", action == Action::"complete", resource)
  when { resource.status == "approved" && resource.classification_level <= 1 };
@id("llm-embed") permit(principal in Role::"llm-user", action == Action::"embed", resource == Model::"llm/text-embed");
"#;

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llm")
}

/// Whether python3 with the `openai` package is there; prints SKIPPED if not.
fn have_openai_sdk() -> bool {
    match Command::new("python3")
        .args(["-c", "import openai"])
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "SKIPPED: LLM e2e with the openai SDK: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIPPED: LLM e2e with the openai SDK: python3 is not available ({e})");
            false
        }
    }
}

/// The upstream (`upstream.py`), killed on drop.
struct Upstream {
    _child: support::Killed,
    port: u16,
}

fn start_upstream() -> Upstream {
    let (child, port) = support::parity_rig::start_llm();
    Upstream {
        _child: child,
        port,
    }
}

/// What the upstream received: path, Authorization, agent header, body.
fn seen(upstream: &Upstream) -> Vec<Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", upstream.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /_seen HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

fn llm_route(name: &str, prefix: &str, upstream: u16, extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
kind = "llm"
path_prefix = "{prefix}"
upstream = "http://127.0.0.1:{upstream}"
classification = "internal"
api_key_env = "LLM_TEST_UPSTREAM_KEY"
{extra}
[[routes.models]]
name = "gpt-test"
version = "2024-07-18"
status = "approved"
[[routes.models]]
name = "gpt-restricted"
status = "approved"
classification = "restricted"
[[routes.models]]
name = "text-embed"
status = "approved"
"#
    )
}

fn start(dir: tempfile::TempDir, cfg: &Path) -> Server {
    Server::start_with_env(dir, Some(cfg), &[("LLM_TEST_UPSTREAM_KEY", UPSTREAM_KEY)])
}

/// A fresh access token bound to the agent's certificate.
fn token(server: &Server, agent: &str) -> String {
    let creds = server.path().join("creds");
    let out = server.cli(&[
        "agent",
        "token",
        agent,
        "--creds",
        creds.to_str().unwrap(),
        "--mtls",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs one scenario of tests/llm/client.py.
fn client(server: &Server, prefix: &str, agent: &str, api_key: &str, scenario: &str) -> Value {
    let creds = server.path().join("creds");
    let out = Command::new("python3")
        .arg(tests_dir().join("client.py"))
        .arg(format!("https://{}{prefix}/v1", server.gateway))
        .arg(server.state_dir().join("ca.crt"))
        .arg(creds.join(format!("{agent}.crt")))
        .arg(creds.join(format!("{agent}.key")))
        .arg(api_key)
        .arg(scenario)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client {scenario}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.stderr.lock().unwrap()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn setup(dir: &Path, routes: &str) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(policies.join("llm.cedar"), POLICIES).unwrap();
    config(dir, routes, "[policy]\ndir = \"policies\"")
}

#[test]
fn openai_sdk_completions_streams_models_and_embeddings() {
    if !have_openai_sdk() {
        return;
    }
    install_crypto();
    let upstream = start_upstream();
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), &llm_route("llm", "/llm", upstream.port, ""));
    let server = start(dir, &cfg);
    server.create_agent("bot", &["llm-user"]);
    let token = token(&server, "bot");

    let v = client(&server, "/llm", "bot", &token, "basic");
    // Non-streamed and streamed completions come through unchanged.
    assert_eq!(v["chat"]["text"], "Hello from the upstream.", "{v}");
    assert_eq!(v["chat"]["usage"], 12);
    assert_eq!(v["stream"]["text"], "Hello from the upstream.");
    assert!(v["stream"]["chunks"].as_u64().unwrap() >= 7, "{v}");
    // No budget on this route: the stream is not asked for usage, and a
    // client that asks gets it.
    assert_eq!(v["stream"]["usage_chunks"], serde_json::json!([]));
    assert_eq!(v["stream_with_usage"], serde_json::json!([12]));
    // Only the models the agent may complete with are listed.
    assert_eq!(v["models"], serde_json::json!(["gpt-test", "text-embed"]));
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["embeddings"], serde_json::json!([3, 3]));
    // Denied, unknown and hidden models: clear JSON errors the SDK raises.
    for (denied, code) in [
        ("denied", "model_unverified"),
        ("denied_stream", "model_unverified"),
        ("embed_denied", "forbidden"),
    ] {
        assert_eq!(v[denied]["status"], 403, "{denied}: {v}");
        assert_eq!(v[denied]["code"], code, "{denied}: {v}");
    }
    assert_eq!(v["unknown"]["status"], 404);
    assert_eq!(v["unknown"]["code"], "model_not_found");
    assert_eq!(v["hidden"]["code"], "model_not_found");

    // The upstream saw the route's key, never the agent's token, and only
    // allowed calls (denied ones never left the gateway).
    let seen = seen(&upstream);
    assert_eq!(seen.len(), 4, "{seen:?}");
    for r in &seen {
        assert_eq!(r["authorization"], format!("Bearer {UPSTREAM_KEY}"), "{r}");
        assert!(!r.to_string().contains(&token));
        assert_eq!(r["agent"], "spiffe://portcullis.local/agent/bot");
        assert_ne!(r["body"]["model"], "gpt-restricted");
    }
    assert_eq!(seen[1]["body"]["stream"], true);
    assert!(seen[1]["body"].get("stream_options").is_none());
    // The key is in no log line.
    assert!(!server.stderr.lock().unwrap().contains(UPSTREAM_KEY));

    // Each call has its record: the model as resource, the action by name.
    let records = server.audit(40);
    let denied = records
        .iter()
        .find(|r| r["resource"] == "llm/gpt-restricted")
        .unwrap();
    assert_eq!(denied["action"], "complete");
    assert_eq!(denied["outcome"], "deny");
    // Restricted and in no model registry: the built-in model gate refuses
    // it before any permit is consulted (`model_unverified`).
    assert_eq!(
        denied["policies"],
        serde_json::json!(["builtin:model-gate"])
    );
    assert_eq!(denied["error_code"], "model_unverified");
    assert!(
        records.iter().any(|r| r["resource"] == "llm/gpt-test"
            && r["outcome"] == "allow"
            && r["status"] == 200)
    );
}

#[test]
fn budgets_refuse_with_retry_after_and_survive_a_restart() {
    if !have_openai_sdk() {
        return;
    }
    install_crypto();
    let upstream = start_upstream();
    let dir = tempfile::tempdir().unwrap();
    let routes = llm_route(
        "tight",
        "/tight",
        upstream.port,
        "[routes.budget]\nrequests_per_minute = 2\n",
    ) + &llm_route(
        "tokens",
        "/tokens",
        upstream.port,
        "[routes.budget]\ntokens_per_day = 15\n",
    );
    let cfg = setup(dir.path(), &routes);
    let mut server = start(dir, &cfg);
    server.create_agent("bot", &["llm-user"]);
    let token = token(&server, "bot");

    // Not across a minute boundary, which would give a fresh window.
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60
        > 50
    {
        std::thread::sleep(Duration::from_secs(1));
    }
    let v = client(&server, "/tight", "bot", &token, "requests");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0], "ok", "{v}");
    assert_eq!(results[1], "ok", "{v}");
    for r in &results[2..] {
        assert_eq!(r["status"], 429, "{v}");
        assert_eq!(r["code"], "budget_exceeded");
        let after = r["retry_after"].as_u64().unwrap();
        assert!((1..=60).contains(&after), "{v}");
        assert_eq!(r["retry_after_header"], after.to_string());
    }

    // Tokens come from the usage of streams the client did not ask usage
    // for: 12 each, so the second request overshoots 15, and the third is
    // refused until the day is over.
    let v = client(&server, "/tokens", "bot", &token, "tokens");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["text"], "Hello from the upstream.", "{v}");
    assert_eq!(results[1]["text"], "Hello from the upstream.", "{v}");
    for r in &results[2..] {
        assert_eq!(r["code"], "budget_exceeded", "{v}");
        assert!(r["retry_after"].as_u64().unwrap() > 0);
    }
    // The gateway asked the upstream for usage on the client's behalf, and
    // took the usage chunk out again.
    assert_eq!(results[0]["usage_chunks"], serde_json::json!([]));
    let asked = seen(&upstream)
        .into_iter()
        .filter(|r| r["body"]["stream"] == true)
        .all(|r| r["body"]["stream_options"]["include_usage"] == true);
    assert!(asked);
    let record = server
        .audit(10)
        .into_iter()
        .rev()
        .find(|r| r["error_code"] == "budget_exceeded")
        .unwrap();
    assert_eq!(record["status"], 429);
    // Refused by the budget: a denial, whatever policy said before it.
    assert_eq!(record["outcome"], "deny", "{record}");

    // The day budget is still spent after a restart.
    assert!(server.terminate().success());
    let dir = server.into_dir();
    let server = start(dir, &cfg);
    let token = self::token(&server, "bot");
    let v = client(&server, "/tokens", "bot", &token, "tokens");
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["code"], "budget_exceeded", "{v}");
    }
    // The minute budget of the other route started over.
    let v = client(&server, "/tight", "bot", &token, "requests");
    assert_eq!(v["results"][0], "ok", "{v}");
}

#[test]
fn messages_and_streamed_answers_reach_the_content_guard() {
    if !have_openai_sdk() {
        return;
    }
    install_crypto();
    let upstream = start_upstream();
    let dir = tempfile::tempdir().unwrap();
    let routes = llm_route(
        "llm",
        "/guarded",
        upstream.port,
        "[routes.guard]\ndlp = \"redact\"\n",
    );
    let cfg = setup(dir.path(), &routes);
    let server = start(dir, &cfg);
    server.create_agent("bot", &["llm-user"]);
    let token = token(&server, "bot");

    let v = client(&server, "/guarded", "bot", &token, "dlp");
    // The key the upstream split over three deltas is redacted in the
    // stream, and the rest of the answer arrives around it.
    let text = v["stream"]["text"].as_str().unwrap();
    assert_eq!(
        text, "Your key is [REDACTED_AWS_ACCESS_KEY_1] keep it safe.",
        "{v}"
    );
    // The tool result's key never reached the upstream.
    let seen = seen(&upstream);
    let forwarded = seen[0]["body"]["messages"][2]["content"].as_str().unwrap();
    assert!(
        forwarded.starts_with("config: aws_key=[REDACTED_AWS_ACCESS_KEY_"),
        "{forwarded}"
    );
    assert!(!seen[0].to_string().contains("AKIA"));
    // The record has both findings, by kind and position, never the value.
    let record = server
        .audit(5)
        .into_iter()
        .rev()
        .find(|r| r["resource"] == "llm/gpt-test")
        .unwrap();
    let findings = record["content"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["direction"] == "request"
            && f["pointer"] == "/messages/2/content"
            && f["kind"] == "aws_access_key"),
        "{record}"
    );
    assert!(
        findings
            .iter()
            .any(|f| f["direction"] == "response" && f["pointer"] == "/choices/0/delta/content"),
        "{record}"
    );
    assert!(!record.to_string().contains("AKIA"));
}

#[test]
fn a_missing_api_key_or_model_schema_stops_serve() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), &llm_route("llm", "/llm", 9, ""));
    // Each run gets its own state directory: once a state directory has a
    // stored policy version, that version (not the directory) is what starts.
    let run = |cfg: &Path, state: &str| {
        let mut child = Command::new(support::BIN)
            .arg("serve")
            .arg("--config")
            .arg(cfg)
            .arg("--state-dir")
            .arg(dir.path().join(state))
            .env_remove("LLM_TEST_UPSTREAM_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: it must exit on its own, before binding anything.
        for _ in 0..300 {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.success(), err);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("serve did not exit");
    };
    let (ok, err) = run(&cfg, "state");
    assert!(!ok);
    assert!(
        err.contains("environment variable `LLM_TEST_UPSTREAM_KEY` (api_key_env) is not set"),
        "{err}"
    );
    // A schema from before the LLM adapter: refused with a hint.
    let old = SCHEMA.split("// A model behind a route").next().unwrap();
    std::fs::write(dir.path().join("policies/schema.cedarschema"), old).unwrap();
    std::fs::write(dir.path().join("policies/llm.cedar"), "").unwrap();
    let key = dir.path().join("llm.key");
    std::fs::write(&key, "sk-from-file\n").unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "api_key_env = \"LLM_TEST_UPSTREAM_KEY\"",
        "api_key_file = \"llm.key\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let (ok, err) = run(&cfg, "state-old-schema");
    assert!(!ok);
    assert!(err.contains("`Model` entity type"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_grade_approve_writes_a_completion_waits_for_a_human() {
    install_crypto();
    // The upstream needs python3 only (no SDK: the client here is reqwest).
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: LLM approve-writes e2e: python3 is not available");
        return;
    }
    let upstream = tokio::task::spawn_blocking(start_upstream).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Three denials (0.09 of risk each) put the agent at approve-writes.
    let routes = format!(
        "{}{}[analytics]\ndenial_burst = 10\n[analytics.thresholds]\nalert = 0.1\napprove_writes = 0.2\nthrottle = 0.98\nread_only = 0.99\nquarantine = 1.0\n",
        llm_route("llm", "/llm", upstream.port, ""),
        support::route("payroll", "/payroll", "http://127.0.0.1:9", "confidential"),
    );
    let cfg = setup(dir.path(), &routes);
    let server = tokio::task::spawn_blocking(move || start(dir, &cfg))
        .await
        .unwrap();
    let (cert, key) = tokio::task::block_in_place(|| server.create_agent("llm-bot", &["llm-user"]));
    let http = support::client(&server.ca_pem(), Some((&cert, &key)));
    let complete = || {
        http.post(server.url("/llm/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "gpt-test",
                "messages": [{"role": "user", "content": "send the report"}],
            }))
            .send()
    };
    assert_eq!(complete().await.unwrap().status(), 200);
    for _ in 0..3 {
        let r = http.get(server.url("/payroll/x")).send().await.unwrap();
        assert_eq!(r.status(), 403);
    }
    let mut held = None;
    for _ in 0..250 {
        let r = complete().await.unwrap();
        if r.status() != 200 {
            held = Some(support::error_of(r).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, error) = held.expect("the completion was never held");
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("approval_required"))
    );
    assert_eq!(
        error["policies"],
        serde_json::json!(["analytics:approve_writes"])
    );
    let ticket = error["ticket"].as_str().unwrap().to_string();
    // Reads pass.
    let models = http.get(server.url("/llm/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
    // The approver sees the model and the body's size and digest.
    let shown = tokio::task::block_in_place(|| server.cli(&["approvals", "show", &ticket]));
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.lines().any(|l| l == "model     gpt-test")
            && shown.lines().any(|l| l.starts_with("body      ")),
        "{shown}"
    );
    let out = tokio::task::block_in_place(|| server.cli(&["approvals", "approve", &ticket]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = complete().await.unwrap();
    assert_eq!(r.status(), 200, "the approved completion goes through");
    let r = complete().await.unwrap();
    assert_eq!(r.status(), 403, "once");
}

/// Posts a streamed completion of the upstream's slow answer and reads up to
/// its first content delta; returns the response and its request id.
async fn open_slow_stream(http: &reqwest::Client, server: &Server) -> (reqwest::Response, String) {
    let mut response = http
        .post(server.url("/llm/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "gpt-test",
            "stream": true,
            "messages": [{"role": "user", "content": "a slow answer, please"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = support::request_id(&response);
    let mut seen = String::new();
    while !seen.contains("word") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("the completion streams")
            .unwrap()
            .expect("the completion streams");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    (response, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agent_ends_its_streamed_completion_with_an_error_event() {
    install_crypto();
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: LLM stream revocation e2e: python3 is not available");
        return;
    }
    let upstream = tokio::task::spawn_blocking(start_upstream).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), &llm_route("llm", "/llm", upstream.port, ""));
    let server = tokio::task::spawn_blocking(move || start(dir, &cfg))
        .await
        .unwrap();
    let http_of = |name: &str| {
        let (cert, key) = tokio::task::block_in_place(|| server.create_agent(name, &["llm-user"]));
        support::client(&server.ca_pem(), Some((&cert, &key)))
    };
    let (revoked, other) = (http_of("llm-bot"), http_of("llm-other"));
    let (mut cut, id) = open_slow_stream(&revoked, &server).await;
    let (mut kept, _) = open_slow_stream(&other, &server).await;

    let started = std::time::Instant::now();
    let admin = support::client(&server.ca_pem(), None)
        .post(format!(
            "https://{}/admin/v1/agents/llm-bot/revoke",
            server.admin
        ))
        .bearer_auth(server.admin_token())
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    // The rest of the stream, bounded: it ends cleanly, after an error event
    // an OpenAI SDK raises, and without `[DONE]`.
    let mut rest = String::new();
    loop {
        let left = Duration::from_secs(2).saturating_sub(started.elapsed());
        match tokio::time::timeout(left, cut.chunk()).await {
            Err(_) => panic!("the completion still streams 2 s after the revocation: {rest}"),
            Ok(chunk) => match chunk.expect("a clean end") {
                Some(c) => rest.push_str(&String::from_utf8_lossy(&c)),
                None => break,
            },
        }
    }
    eprintln!(
        "completion cut {:?} after the revocation began",
        started.elapsed()
    );
    let last = rest.rsplit("data: ").next().unwrap().trim_end();
    let event: Value = serde_json::from_str(last).unwrap_or_else(|_| panic!("{rest}"));
    assert_eq!(event["error"]["code"], "stream_revoked", "{rest}");
    assert!(!rest.contains("[DONE]"), "{rest}");
    // The other agent's completion goes on.
    let more = tokio::time::timeout(Duration::from_secs(2), kept.chunk())
        .await
        .expect("the other completion goes on")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&more).contains("word"));
    let record = tokio::task::block_in_place(|| server.audit_record(&id));
    assert_eq!(record["error_code"], "stream_revoked", "{record}");
    assert_eq!(record["outcome"], "allow", "{record}");
}

/// A provider key DLP recognises, injected by the gateway on the route.
const DETECTABLE_UPSTREAM_KEY: &str = "sk-proj-Zq8vL2mP9xTt4Hh7Kk1Nn3Rr5Vv9Bb2Cc4Dd6Ff8Gg0Jj";
const KEY: &str = "AKIAQWADE5R42RDZ4JEM";

/// Issue 19, end to end: an upstream 401 that echoes the injected key, a
/// stream carrying a key in every place it can (CR-only framing,
/// `reasoning_content`, `refusal`, legacy `function_call`, a comment,
/// non-JSON data, outside `choices`, log-probability tokens within an event
/// and across events), and a key split across two deltas cut
/// by the transport at every byte of the stream: none reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_every_answer_is_redacted() {
    install_crypto();
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: LLM answer DLP e2e: python3 is not available");
        return;
    }
    let upstream = tokio::task::spawn_blocking(start_upstream).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(
        dir.path(),
        &llm_route(
            "llm",
            "/llm",
            upstream.port,
            "[routes.guard]\ndlp = \"redact\"\n",
        ),
    );
    let server = tokio::task::spawn_blocking(move || {
        Server::start_with_env(
            dir,
            Some(&cfg),
            &[("LLM_TEST_UPSTREAM_KEY", DETECTABLE_UPSTREAM_KEY)],
        )
    })
    .await
    .unwrap();
    let (cert, key) = tokio::task::block_in_place(|| server.create_agent("bot", &["llm-user"]));
    let http = support::client(&server.ca_pem(), Some((&cert, &key)));
    let ask = |prompt: String, stream: bool| {
        http.post(server.url("/llm/v1/chat/completions"))
            .json(&serde_json::json!({
                "model": "gpt-test",
                "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            }))
            .send()
    };

    // The 401 echoing the injected key keeps its status, not the key.
    let r = ask("echo401".into(), false).await.unwrap();
    assert_eq!(r.status(), 401);
    let text = r.text().await.unwrap();
    assert!(!text.contains("Zq8vL2mP9x"), "{text}");
    // Replaced by exact value (forward's echo guard) before DLP reads it.
    assert!(
        text.contains("Incorrect API key provided: [REDACTED_CREDENTIAL]"),
        "{text}"
    );

    // Every hole of a stream.
    let r = ask("holes".into(), true).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for n in 4..=KEY.len() {
        assert!(!text.contains(&KEY[..n]), "{text}");
    }
    assert!(text.contains("[REDACTED_AWS_ACCESS_KEY_"), "{text}");

    // A key split across two deltas, the stream cut at every byte.
    let whole = r#"data: {"id": "c", "object": "chat.completion.chunk", "model": "gpt-test", "choices": [{"index": 0, "delta": {"content": "key AKIAQWADE"}, "finish_reason": null}]}"#;
    for at in 0..=whole.len() * 2 + 4 {
        let r = ask(format!("split:{at}"), true).await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        for n in 4..=KEY.len() {
            assert!(!text.contains(&KEY[..n]), "split at {at}: {text}");
        }
        assert!(
            text.contains("[REDACTED_AWS_ACCESS_KEY_1]"),
            "split at {at}: {text}"
        );
    }
}
