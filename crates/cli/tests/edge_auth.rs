//! End-to-end tests of second factors and client authentication under brute
//! force (issue 16, item 4): wrong TOTP codes and wrong client assertions are
//! throttled per principal and per source, lock out after N failures (audited,
//! counted, alerted), a correct code or assertion during the lockout is refused
//! unchecked, and after the lockout it works.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use portcullis_identity::{ASSERTION_TYPE, Ed25519Key, TotpSecret};
use serde_json::Value;
use support::*;

const LIMITS: &str = "auth_max_failures = 5\nauth_backoff_ms = 50\nauth_lockout_ms = 3000\nauth_failure_window_ms = 60000";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits (at most one step) until at least 8 s remain in the current TOTP step.
async fn settle_in_step() {
    while now() % 30 > 22 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start() -> Server {
    install_crypto();
    let (upstream, gate) = start_upstream().await;
    std::mem::forget(gate);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &route("api", "/api", &format!("http://{upstream}"), "public"),
        LIMITS,
    );
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
}

async fn metrics(server: &Server) -> String {
    client(&server.ca_pem(), None)
        .get(format!("https://{}/metrics", server.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn counter(metrics: &str, name: &str, kind: &str) -> u64 {
    let prefix = format!("{name}{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_totp_brute_force_is_locked_out() {
    let server = start().await;
    server.create_agent("target", &["reader"]);
    let out = server.cli(&["admin", "user", "add", "alice"]);
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    let secret = TotpSecret::from_base32(
        out.lines()
            .find_map(|l| {
                l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): ")
            })
            .unwrap(),
    )
    .unwrap();
    let admin = client(&server.ca_pem(), None);
    let token = server.admin_token();
    let revoke_agent = |agent: &'static str, code: String| {
        admin
            .post(format!(
                "https://{}/admin/v1/agents/{agent}/revoke",
                server.admin
            ))
            .bearer_auth(&token)
            .header("x-portcullis-user", "alice")
            .header("x-portcullis-totp", code)
            .send()
    };
    let revoke = |code: String| revoke_agent("target", code);
    settle_in_step().await;
    let valid: Vec<String> = (0..3)
        .map(|i| secret.code_at(now() + i * 30 - 30))
        .collect();

    // Hammer wrong codes through the back-off into the lockout (and 20
    // answers into it, well within its 3 s): only 5 are ever checked.
    let mut checked = 0;
    let mut throttled = 0;
    let mut locked = 0;
    let mut retry_after = None;
    let started = Instant::now();
    let mut guess = 0u32;
    while locked < 20 && started.elapsed() < Duration::from_millis(2500) {
        let code = loop {
            guess += 1;
            let code = format!("{:06}", guess * 7919 % 1_000_000);
            if !valid.contains(&code) {
                break code;
            }
        };
        let response = revoke(code).await.unwrap();
        let header = response.headers().get("retry-after").cloned();
        let (status, error) = error_of(response).await;
        match (status, error["code"].as_str().unwrap()) {
            (401, "invalid_totp") => checked += 1,
            (429, "too_many_attempts") => {
                throttled += 1;
                if error["message"].as_str().unwrap().contains("locked out") {
                    locked += 1;
                }
                retry_after = header;
                assert!(error["retry_after"].as_u64().unwrap() >= 1, "{error}");
            }
            other => panic!("unexpected answer {other:?}: {error}"),
        }
    }
    assert_eq!(checked, 5, "{checked} codes were checked");
    assert_eq!(locked, 20);
    assert!(throttled > 5, "{throttled}");
    let retry_after: u64 = retry_after
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry_after), "{retry_after}");

    // The right code during the lockout is refused, unchecked (and not spent).
    let (status, error) = error_of(revoke(secret.code_at(now())).await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (429, Some("too_many_attempts"))
    );

    // Audited, counted, alerted.
    let m = metrics(&server).await;
    assert_eq!(
        counter(&m, "portcullis_auth_lockouts_total", "totp"),
        1,
        "{m}"
    );
    assert_eq!(
        counter(&m, "portcullis_auth_failures_total", "totp"),
        5,
        "{m}"
    );
    assert!(
        counter(&m, "portcullis_auth_throttled_total", "totp") > 5,
        "{m}"
    );
    // The writer may lag behind the hammering: wait (bounded) for the record.
    let mut found = false;
    for _ in 0..100 {
        found = server
            .audit(10_000)
            .iter()
            .any(|r| r["action"] == "admin.mfa_lockout" && r["resource"] == "alice");
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "no lockout record");
    // Raised in the background: wait (bounded) for it.
    let mut alerts = String::new();
    for _ in 0..50 {
        alerts = String::from_utf8(server.cli(&["alerts", "list"]).stdout).unwrap();
        if alerts.contains("totp_lockout") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(alerts.contains("totp_lockout"), "{alerts}");

    // After the lockout, the right code works. A code is consumed only by a
    // successful action: one that confirmed a failing call can be used again.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    settle_in_step().await;
    let code = secret.code_at(now());
    let (status, error) = error_of(revoke_agent("ghost", code.clone()).await.unwrap()).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));
    let response = revoke(code.clone()).await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    // ... and then it is spent.
    let (status, error) = error_of(revoke(code).await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("invalid_totp"))
    );
}

fn token_form(assertion: &str) -> String {
    serde_urlencoded::to_string([
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_assertion_brute_force_is_locked_out() {
    let server = start().await;
    let (cert, cert_key) = server.create_agent("bot", &["reader"]);
    let key_text = std::fs::read_to_string(server.path().join("creds").join("bot.jwk")).unwrap();
    let right_key = Ed25519Key::from_private_jwk(&key_text).unwrap();
    let client = client(&server.ca_pem(), None);
    let url = server.url("/oauth2/token");
    let post = |assertion: String| {
        client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(token_form(&assertion))
            .send()
    };
    let mut checked = 0;
    let mut throttled = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        // Signed by a key that is not bot's.
        let forged = Ed25519Key::generate()
            .sign_assertion("bot", &url, now() as i64, 60)
            .unwrap();
        let (status, error) = error_of(post(forged).await.unwrap()).await;
        match (status, error["code"].as_str().unwrap()) {
            (401, "invalid_client") => checked += 1,
            (429, "too_many_attempts") => throttled += 1,
            other => panic!("unexpected answer {other:?}: {error}"),
        }
    }
    assert_eq!(checked, 5);
    assert!(throttled > 5);
    // The right assertion during the lockout: refused unchecked.
    let right = right_key
        .sign_assertion("bot", &url, now() as i64, 60)
        .unwrap();
    let response = post(right).await.unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (429, Some("too_many_attempts"))
    );
    let m = metrics(&server).await;
    assert_eq!(
        counter(&m, "portcullis_auth_lockouts_total", "client_assertion"),
        1,
        "{m}"
    );
    // After the lockout, the right assertion gets a token (bound to the
    // agent's certificate, which it connects with).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let right = right_key
        .sign_assertion("bot", &url, now() as i64, 60)
        .unwrap();
    let response = support::client(&server.ca_pem(), Some((&cert, &cert_key)))
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(token_form(&right))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(body["access_token"].is_string(), "{body}");
}
