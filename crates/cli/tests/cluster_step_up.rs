//! Admin state that used to be per replica, shared in cluster mode (issue
//! 20 on issue 18's cluster): two real `portcullis serve` replicas on one
//! fresh PostgreSQL database.
//!
//! - Step-up windows: one TOTP confirmation through replica A lets a
//!   sensitive call through on B without a new code; a close through B
//!   closes the window on A; a rotation through B closes the rotated
//!   credential's window on A.
//! - Dynamic client registrations per hour: one count for both replicas,
//!   so together they admit `registrations_per_hour`, not twice it.
//!
//! Skipped, visibly, when no PostgreSQL server answers on 127.0.0.1:5432.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis_store::testing::TestDb;
use serde_json::{Value, json};
use support::authorization::{CALLBACK, browser, enrol, next_code};
use support::cluster::*;
use support::*;

/// `[identity.authorization] registrations_per_hour` of these replicas.
const REGISTRATIONS_PER_HOUR: u32 = 3;

/// How long a change made through one replica may take to be seen by the
/// other where that goes through a notification (credentials); windows are
/// read from the store on every call and need no wait.
const BOUND: Duration = Duration::from_secs(10);

/// A replica with one route (the built-in demo) and open registration for
/// loopback redirect URIs, capped at [`REGISTRATIONS_PER_HOUR`].
fn replica(dir: &Path) -> PathBuf {
    let routes = format!(
        "[identity]\ntoken_issuer = \"{ISSUER}\"\n\
         [identity.authorization]\nagent = \"mcp-hosts\"\ndynamic_registration = true\n\
         registration_redirect_hosts = [\"127.0.0.1\"]\nregistrations_per_hour = {REGISTRATIONS_PER_HOUR}\n\
         {PATIENT_AUDIT}{}",
        route("api", "/api", "builtin:demo", "internal")
    );
    config(dir, &routes, "")
}

/// A sensitive call with no prerequisite: revoking an access token by
/// `jti` (step-up or a code needed once a human admin has enrolled).
async fn revoke_jti(server: &Server, token: &str, jti: &str) -> (u16, Value) {
    admin_call(
        server,
        reqwest::Method::POST,
        "/tokens/revoke",
        token,
        Some(json!({ "jti": jti })),
        &[],
    )
    .await
}

/// `GET /session` on `server` with `token`: the status and the view.
async fn session(server: &Server, token: &str) -> (u16, Value) {
    admin_call(server, reqwest::Method::GET, "/session", token, None, &[]).await
}

/// Polls until `server` accepts `token` (a credential created or rotated
/// through the other replica reaches this one by notification).
async fn until_accepted(server: &Server, token: &str, what: &str) {
    let started = Instant::now();
    loop {
        let (status, _) = session(server, token).await;
        if status == 200 {
            return;
        }
        assert!(
            started.elapsed() < BOUND,
            "{what}: still {status} after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_up_through_one_replica_opens_the_window_on_the_other_and_a_close_anywhere_closes_it()
 {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    install_crypto();
    let (a, b) = two_replicas(&db.url(), replica, &[]).await;
    let owner = a.admin_token();
    let secret = enrol(&a, &browser(&a), "alice", None).await;
    let mut last = 0;
    let stepped = |code: String| {
        [
            ("x-portcullis-user", "alice".to_string()),
            ("x-portcullis-totp", code),
        ]
    };

    // With a human admin enrolled, a sensitive call needs a code on both.
    for server in [&a, &b] {
        let (status, body) = revoke_jti(server, &owner, "j0").await;
        assert_eq!(body["error"]["code"], "mfa_required", "{status} {body}");
    }

    // One confirmation through A…
    let headers = stepped(next_code(&secret, &mut last));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, opened) = admin_call(
        &a,
        reqwest::Method::POST,
        "/session/step-up",
        &owner,
        None,
        &headers,
    )
    .await;
    assert_eq!(status, 200, "{opened}");
    assert_eq!(opened["step_up"]["user"], "alice", "{opened}");
    // …opens the window on B at once (the store holds it): B shows it and
    // lets a sensitive call through with no code, naming the human.
    let (status, view) = session(&b, &owner).await;
    assert_eq!(status, 200);
    assert_eq!(view["step_up"]["user"], "alice", "{view}");
    assert_eq!(
        view["step_up"]["expires_at"],
        opened["step_up"]["expires_at"]
    );
    let (status, body) = revoke_jti(&b, &owner, "j1").await;
    assert_eq!(status, 200, "{body}");
    // It stands in for alice only.
    let (status, body) = admin_call(
        &b,
        reqwest::Method::POST,
        "/tokens/revoke",
        &owner,
        Some(json!({ "jti": "j1b" })),
        &[("x-portcullis-user", "bob")],
    )
    .await;
    assert_eq!(body["error"]["code"], "mfa_required", "{status} {body}");

    // A close through B closes it on A.
    let (status, closed) = admin_call(
        &b,
        reqwest::Method::DELETE,
        "/session/step-up",
        &owner,
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{closed}");
    assert!(closed["step_up"].is_null(), "{closed}");
    let (_, view) = session(&a, &owner).await;
    assert!(view["step_up"].is_null(), "{view}");
    let (status, body) = revoke_jti(&a, &owner, "j2").await;
    assert_eq!(body["error"]["code"], "mfa_required", "{status} {body}");

    // Rotation: a second owner credential steps up through B; its window
    // is open on A until the owner rotates it through B, and then closed on
    // A for its new token (and its old one is refused).
    let headers = stepped(next_code(&secret, &mut last));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = admin_call(
        &b,
        reqwest::Method::POST,
        "/session/step-up",
        &owner,
        None,
        &headers,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, issued) = admin_call(
        &a,
        reqwest::Method::POST,
        "/admin-tokens",
        &owner,
        Some(json!({ "name": "second", "role": "owner" })),
        &[],
    )
    .await;
    assert_eq!(
        status, 201,
        "the owner's window (opened on B) on A: {issued}"
    );
    let second = issued["token"].as_str().unwrap().to_string();
    until_accepted(&b, &second, "a credential created on A, on B").await;
    let headers = stepped(next_code(&secret, &mut last));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = admin_call(
        &b,
        reqwest::Method::POST,
        "/session/step-up",
        &second,
        None,
        &headers,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = revoke_jti(&a, &second, "j3").await;
    assert_eq!(status, 200, "the second credential's window on A: {body}");
    let (status, rotated) = admin_call(
        &b,
        reqwest::Method::POST,
        "/admin-tokens/second/rotate",
        &owner,
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let renewed = rotated["token"].as_str().unwrap().to_string();
    until_accepted(&a, &renewed, "a token rotated on B, on A").await;
    let (_, view) = session(&a, &renewed).await;
    assert!(view["step_up"].is_null(), "a new token, no window: {view}");
    let (status, body) = revoke_jti(&a, &renewed, "j4").await;
    assert_eq!(body["error"]["code"], "mfa_required", "{status} {body}");
    // Whether or not A has reloaded yet, the old token gains nothing.
    let (status, body) = revoke_jti(&a, &second, "j5").await;
    assert_ne!(status, 200, "{body}");
    // The owner's own window (opened on B) still serves it on A.
    let (status, body) = revoke_jti(&a, &owner, "j6").await;
    assert_eq!(status, 200, "{body}");
}

/// Registers a client on `server`; the status.
async fn register(server: &Server, n: usize) -> u16 {
    browser(server)
        .post(server.url("/oauth2/register"))
        .json(&json!({
            "client_name": format!("client {n}"), "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "none",
        }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_admit_the_configured_registrations_per_hour_together() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    install_crypto();
    let (a, b) = two_replicas(&db.url(), replica, &[]).await;
    let mut n = 0;
    // One clock hour's count: retried once if the hour turned meanwhile
    // (the count starts afresh then).
    for attempt in 0..2 {
        let started = hour();
        let mut statuses = Vec::new();
        // Alternating replicas: each alone would admit all of them.
        for i in 0..2 * REGISTRATIONS_PER_HOUR as usize {
            let server = if i % 2 == 0 { &a } else { &b };
            n += 1;
            statuses.push(register(server, n).await);
        }
        if hour() != started && attempt == 0 {
            continue;
        }
        let admitted = statuses.iter().filter(|s| **s == 201).count();
        let refused = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(
            (admitted, refused),
            (
                REGISTRATIONS_PER_HOUR as usize,
                REGISTRATIONS_PER_HOUR as usize
            ),
            "{statuses:?}"
        );
        assert!(
            statuses[..REGISTRATIONS_PER_HOUR as usize]
                .iter()
                .all(|s| *s == 201),
            "{statuses:?}"
        );
        return;
    }
}
