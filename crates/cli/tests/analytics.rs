//! End-to-end tests of behavioral analytics and containment against the real
//! binary: a burst of denials quarantines an agent (403 `quarantined` on every
//! route but the allow-list, no token issued), the alert is listed with its
//! evidence and delivered to a webhook signed with HMAC-SHA256, the quarantine
//! survives a restart, and a release lifts it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A webhook receiver: collects each request's (headers, body).
async fn start_receiver() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let head = text[..end].to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let body = buf[end + 4..end + 4 + len].to_vec();
                            let _ = tx.send((head, body));
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
}

async fn cli(server: &Server, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let state = server.state_dir();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .arg("--state-dir")
            .arg(state)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn cli_json(server: &Server, args: &[&str]) -> Value {
    let args = [args, &["-o", "json"][..]].concat();
    let out = cli(server, &args).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GET `path` as the agent; (status, error code if any).
async fn get(client: &reqwest::Client, server: &Server, path: &str) -> (u16, Option<String>) {
    let r = client.get(server.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        return (status, None);
    }
    let (_, body) = error_of(r).await;
    (status, body["code"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_denials_quarantines_the_agent_until_released() {
    install_crypto();
    let (upstream, _gate) = start_upstream().await;
    let (hook, mut deliveries) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alert.key"), b"alert-signing-key").unwrap();
    let up = format!("http://{upstream}");
    let routes = format!(
        "{}{}{}[analytics]\nquarantine_allow = [\"health\"]\nwebhook = \"http://{hook}/alerts\"\nwebhook_secret_file = \"alert.key\"\n",
        route("api", "/api", &up, "public"),
        route("health", "/health", &up, "public"),
        route("payroll", "/payroll", &up, "confidential"),
    );
    let cfg = config(dir.path(), &routes, "");
    let cfg2 = cfg.clone();
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg2)))
        .await
        .unwrap();
    let (cert, key) = {
        let s = &server;
        tokio::task::block_in_place(|| s.create_agent("bot", &["reader"]))
    };
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    assert_eq!(get(&client, &server, "/api/x").await, (200, None));

    // 100 denied requests, fired fast (20 at a time).
    let started = Instant::now();
    for _ in 0..5 {
        let batch: Vec<_> = (0..20)
            .map(|i| {
                let c = client.clone();
                let url = server.url(&format!("/payroll/{i}"));
                tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
            })
            .collect();
        for b in batch {
            let status = b.await.unwrap();
            assert!(status == 403, "a denied request answered {status}");
        }
    }
    // Quarantined within a second or so of the burst (bounded wait).
    let mut quarantined_at = None;
    while started.elapsed() < Duration::from_secs(15) {
        if get(&client, &server, "/api/x").await == (403, Some("quarantined".into())) {
            quarantined_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = quarantined_at.unwrap_or_else(|| {
        panic!(
            "the agent was not quarantined: {}",
            server.stderr.lock().unwrap()
        )
    });
    eprintln!("quarantined {took:?} after the burst began");
    // Every route but the allow-list is refused.
    assert_eq!(
        get(&client, &server, "/payroll/1").await,
        (403, Some("quarantined".into()))
    );
    assert_eq!(get(&client, &server, "/health/ping").await, (200, None));
    // No token for a quarantined agent.
    let creds = server.path().join("creds");
    let token = cli(
        &server,
        &[
            "agent",
            "token",
            "bot",
            "--creds",
            creds.to_str().unwrap(),
            "--mtls",
        ],
    )
    .await;
    assert!(!token.status.success());
    assert!(
        String::from_utf8_lossy(&token.stderr).contains("quarantined"),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );

    // The alert: listed, with the rule, the features and the requests involved.
    let listed = cli_json(&server, &["alerts", "list", "--open"]).await;
    let alerts: Vec<Value> = listed["alerts"].as_array().cloned().unwrap_or_default();
    let alert = alerts
        .iter()
        .find(|a| a["grade"] == "quarantine" && a["agent"] == "bot")
        .expect("a quarantine alert");
    let id = alert["id"].as_i64().unwrap().to_string();
    let shown = cli_json(&server, &["alerts", "show", &id]).await;
    assert!(
        shown["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule"] == "denial_burst"),
        "{shown}"
    );
    assert!(!shown["requests"].as_array().unwrap().is_empty(), "{shown}");
    assert!(shown["features"].as_array().unwrap().len() > 5);
    // In the audit log, with its reasons.
    let records = tokio::task::block_in_place(|| server.audit(500));
    let record = records
        .iter()
        .find(|r| r["action"] == "analytics.quarantine" && r["resource"] == "bot")
        .expect("a quarantine record in the audit log");
    assert!(
        record["policies"]
            .as_array()
            .unwrap()
            .contains(&Value::from("rule:denial_burst"))
    );
    // At the webhook, signed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut verified = false;
    while Instant::now() < deadline && !verified {
        let Ok(Some((head, body))) =
            tokio::time::timeout(Duration::from_secs(2), deliveries.recv()).await
        else {
            continue;
        };
        let ts = header(&head, "x-portcullis-timestamp").unwrap();
        let sig = header(&head, "x-portcullis-signature").unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"alert-signing-key").unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&body);
        assert_eq!(
            sig,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["agent"], "bot");
        verified = json["grade"] == "quarantine";
    }
    assert!(verified, "no signed quarantine alert reached the webhook");

    // The quarantine survives a restart (state saved on shutdown).
    let mut server = server;
    assert!(tokio::task::block_in_place(|| server.terminate()).success());
    let dir = server.into_dir();
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let client = support::client(&server.ca_pem(), Some((&cert, &key)));
    assert_eq!(
        get(&client, &server, "/api/x").await,
        (403, Some("quarantined".into()))
    );
    let shown = cli_json(&server, &["agent", "show", "bot"]).await;
    assert_eq!(shown["analytics"]["grade"], "quarantine", "{shown}");
    assert!(
        !shown["analytics"]["risk_history"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{shown}"
    );
    assert!(
        shown["analytics"]["baseline"]["known_resources"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // `agent list` tells the quarantine apart from an active agent.
    let status_of = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("bot "))
            .and_then(|l| l.split_whitespace().last().map(str::to_string))
    };
    let listed = cli(&server, &["agent", "list"]).await;
    assert_eq!(status_of(&listed).as_deref(), Some("quarantined"));

    // Released by a human confirming with TOTP: served again, and recorded
    // with who released it.
    let enrolled = cli(&server, &["admin", "user", "add", "alice"]).await;
    assert!(enrolled.status.success());
    let secret = String::from_utf8_lossy(&enrolled.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): "))
        .map(str::to_string)
        .expect("secret printed");
    let secret = portcullis_identity::TotpSecret::from_base32(&secret).unwrap();
    let unconfirmed = cli(&server, &["agent", "release", "bot"]).await;
    assert!(!unconfirmed.status.success());
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("mfa_required"));
    while now_secs() % 30 > 22 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let code = secret.code_at(now_secs());
    let released = cli_json(
        &server,
        &[
            "agent", "release", "bot", "--user", "alice", "--totp", &code,
        ],
    )
    .await;
    assert_eq!(released["grade"], "normal");
    assert_eq!(get(&client, &server, "/api/x").await, (200, None));
    let listed = cli(&server, &["agent", "list"]).await;
    assert_eq!(status_of(&listed).as_deref(), Some("active"));
    let again = cli(&server, &["agent", "release", "bot"]).await;
    assert!(!again.status.success(), "releasing twice is an error");
    // Bounded wait: the audit writer commits in the background.
    let mut recorded = false;
    for _ in 0..50 {
        let records = tokio::task::block_in_place(|| server.audit(50));
        recorded = records.iter().any(|r| {
            r["action"] == "agent.release" && r["resource"] == "bot" && r["principal"] == "alice"
        });
        if recorded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recorded,
        "the release is recorded with the admin who confirmed it"
    );
    // A verdict is recorded once, with the next step's (fresh) code.
    let next = secret.code_at(now_secs() + 30);
    let resolved = cli_json(
        &server,
        &[
            "alerts",
            "resolve",
            &id,
            "--verdict",
            "malicious",
            "--totp",
            &next,
        ],
    )
    .await;
    assert_eq!(resolved["verdict"], "malicious");
    assert_eq!(resolved["resolved_by"], "alice");
    let twice = cli(&server, &["alerts", "resolve", &id, "--verdict", "benign"]).await;
    assert!(!twice.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_risk_score_reaches_policy_as_context_risk() {
    install_crypto();
    let (upstream, _gate) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        portcullis_policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    std::fs::write(
        policies.join("risk.cedar"),
        r#"
@id("api-for-agents") permit (principal, action, resource == Route::"api");
@id("risky-agents-read-only")
forbid (principal, action in Action::"write", resource)
when { context.risk.greaterThan(decimal("0.3")) };
"#,
    )
    .unwrap();
    let up = format!("http://{upstream}");
    let routes = format!(
        "[policy]\ndir = \"policies\"\n{}{}",
        route("api", "/api", &up, "public"),
        route("payroll", "/payroll", &up, "confidential"),
    );
    let cfg = config(dir.path(), &routes, "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let (cert, key) = tokio::task::block_in_place(|| server.create_agent("bot", &["writer"]));
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    let post = |c: reqwest::Client, url: String| async move {
        let r = c.post(url).body("x").send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, body["error"]["policies"].clone())
    };
    assert_eq!(
        post(client.clone(), server.url("/api/x")).await.0,
        200,
        "a write at risk 0 is allowed"
    );
    // 40 denials: risk ≈ 0.36, below every containment grade.
    for i in 0..40 {
        let r = client
            .get(server.url(&format!("/payroll/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
    }
    let after_burst = Instant::now();
    let mut refused = None;
    while after_burst.elapsed() < Duration::from_secs(5) {
        let (status, policies) = post(client.clone(), server.url("/api/x")).await;
        if status == 403 {
            refused = Some((after_burst.elapsed(), policies));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (took, policies) = refused.expect("the risky write was never refused by policy");
    assert_eq!(policies, serde_json::json!(["risky-agents-read-only"]));
    assert!(
        took < Duration::from_secs(1),
        "risk reached policy after {took:?}"
    );
    // Reads stay allowed: the policy, not containment, refused the write.
    let r = client.get(server.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let shown = cli_json(&server, &["agent", "show", "bot"]).await;
    let risk = shown["analytics"]["risk"].as_f64().unwrap();
    assert!((0.3..0.5).contains(&risk), "{shown}");
    assert_eq!(shown["analytics"]["grade"], "normal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_grade_approve_writes_reads_pass_and_each_write_waits_for_a_human() {
    install_crypto();
    let (upstream, _gate) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        portcullis_policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    std::fs::write(
        policies.join("api.cedar"),
        r#"@id("api-for-agents") permit (principal, action, resource == Route::"api");"#,
    )
    .unwrap();
    // Each recent denial adds 0.09 of risk (0.9 × 1/10): three put the agent
    // at approve-writes (0.2), far from the other grades.
    let up = format!("http://{upstream}");
    let routes = format!(
        "[policy]\ndir = \"policies\"\n{}{}[analytics]\ndenial_burst = 10\n[analytics.thresholds]\nalert = 0.1\napprove_writes = 0.2\nthrottle = 0.98\nread_only = 0.99\nquarantine = 1.0\n",
        route("api", "/api", &up, "public"),
        route("payroll", "/payroll", &up, "confidential"),
    );
    let cfg = config(dir.path(), &routes, "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let (cert, key) = tokio::task::block_in_place(|| server.create_agent("bot", &["writer"]));
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    let post = |body: &'static str| {
        let c = client.clone();
        let url = server.url("/api/transfer");
        async move {
            let r = c.post(url).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            let id = support::request_id(&r);
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body, id)
        }
    };
    assert_eq!(post("amount=1").await.0, 200, "a write at risk 0 passes");
    for i in 0..3 {
        assert_eq!(get(&client, &server, &format!("/payroll/{i}")).await.0, 403);
    }
    // Bounded wait for the grade (the analytics task runs off the path).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut held = None;
    while Instant::now() < deadline {
        let (status, body, id) = post("amount=100").await;
        if status != 200 {
            held = Some((status, body, id));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body, id) = held.expect("the write was never held");
    // The answer an @obligation("approval") gives, naming analytics.
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("approval_required")),
        "{body}"
    );
    assert_eq!(
        body["error"]["policies"],
        serde_json::json!(["analytics:approve_writes"])
    );
    let ticket = body["error"]["ticket"].as_str().unwrap().to_string();
    // Reads pass.
    assert_eq!(get(&client, &server, "/api/x").await, (200, None));
    let shown = cli_json(&server, &["agent", "show", "bot"]).await;
    assert_eq!(shown["analytics"]["grade"], "approve_writes", "{shown}");

    // The record: refused, with the ticket, and analytics as the reason.
    let record = tokio::task::block_in_place(|| server.audit_record(&id));
    assert_eq!(record["outcome"], "deny");
    assert_eq!(record["error_code"], "approval_required");
    assert_eq!(record["approval_ticket"], ticket.as_str());
    assert_eq!(
        record["policies"],
        serde_json::json!(["api-for-agents", "analytics:approve_writes"])
    );
    // The ticket: bound to the call, required by analytics.
    let out = cli(&server, &["approvals", "list"]).await;
    let list = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        list.lines().any(|l| l.starts_with(&ticket)
            && l.contains("pending")
            && l.contains("/api/transfer")),
        "{list}"
    );
    assert!(list.contains("behavioral analytics holds"), "{list}");
    // The alert names the grade.
    let listed = cli_json(&server, &["alerts", "list"]).await;
    assert!(
        listed["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["grade"] == "approve_writes"),
        "{listed}"
    );
    let out = cli(&server, &["alerts", "list"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" approve_writes "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // An admin enrolled: deciding needs that admin's TOTP code.
    let enrolled = cli(&server, &["admin", "user", "add", "alice"]).await;
    assert!(enrolled.status.success());
    let secret = String::from_utf8_lossy(&enrolled.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): "))
        .map(str::to_string)
        .expect("secret printed");
    let secret = portcullis_identity::TotpSecret::from_base32(&secret).unwrap();
    let unconfirmed = cli(&server, &["approvals", "approve", &ticket]).await;
    assert!(!unconfirmed.status.success());
    while now_secs() % 30 > 22 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A grant cannot lift the hold: --ttl is refused for this ticket.
    let code = secret.code_at(now_secs());
    let granted = cli(
        &server,
        &[
            "approvals",
            "approve",
            &ticket,
            "--ttl",
            "10m",
            "--user",
            "alice",
            "--totp",
            &code,
        ],
    )
    .await;
    assert!(!granted.status.success());
    assert!(
        String::from_utf8_lossy(&granted.stderr).contains("behavioral analytics"),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    let code = secret.code_at(now_secs() + 30);
    let approved = cli(
        &server,
        &[
            "approvals",
            "approve",
            &ticket,
            "--user",
            "alice",
            "--totp",
            &code,
        ],
    )
    .await;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );

    // The same call goes through, once; the grade is unchanged by asking.
    let (status, body, id) = post("amount=100").await;
    assert_eq!(status, 200, "{body}");
    let record = tokio::task::block_in_place(|| server.audit_record(&id));
    assert_eq!(record["outcome"], "allow");
    assert_eq!(record["approval_ticket"], ticket.as_str());
    let (status, body, _) = post("amount=100").await;
    assert_eq!(status, 403);
    assert_ne!(body["error"]["ticket"], ticket.as_str(), "single use");
    // A different call is held on its own ticket.
    let (status, body, _) = post("amount=100000").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("approval_required"))
    );
    let shown = cli_json(&server, &["agent", "show", "bot"]).await;
    assert_eq!(
        shown["analytics"]["grade"], "approve_writes",
        "held writes are not refusals: {shown}"
    );
}
