//! End-to-end: a response that is still streaming ends within a second of
//! its caller losing the right to it — the agent revoked, its access token
//! revoked, the user it acts for disabled, or the agent quarantined — and
//! its audit record says so
//! (`error_code: "stream_revoked"`, `outcome: allow`). Other callers'
//! streams go on. The LLM case is in `llm.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// How long a cut may take to reach the client in these tests: the gateway
/// promises one second; the rest is slack for a loaded machine.
const CUT_WITHIN: Duration = Duration::from_secs(2);

/// A server with a public route `/api` to the test upstream and a
/// confidential `/payroll` (which `reader` agents are denied), plus `extra`.
async fn server(extra: &str) -> Server {
    install_crypto();
    let (upstream, gate) = start_upstream().await;
    // The upstream outlives the test's use of it.
    std::mem::forget(gate);
    let dir = tempfile::tempdir().unwrap();
    let up = format!("http://{upstream}");
    let routes = format!(
        "{}{}{extra}",
        route("api", "/api", &up, "public"),
        route("payroll", "/payroll", &up, "confidential"),
    );
    let cfg = config(dir.path(), &routes, "");
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
}

fn agent(server: &Server, name: &str) -> reqwest::Client {
    let (cert, key) = tokio::task::block_in_place(|| server.create_agent(name, &["reader"]));
    client(&server.ca_pem(), Some((&cert, &key)))
}

/// Opens the upstream's slow stream and reads its first chunk.
async fn open_drip(request: reqwest::RequestBuilder) -> (reqwest::Response, String) {
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the stream started")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"tick\n");
    (response, id)
}

/// Reads until the stream ends; panics if it goes on past `within`.
/// True when it ended with an error (truncated), false when cleanly.
async fn ends_within(response: &mut reqwest::Response, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Err(_) => panic!("the stream still runs {within:?} after the cut"),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return false,
            Ok(Err(_)) => return true,
        }
    }
}

/// The stream still delivers after the others were cut.
async fn still_flows(response: &mut reqwest::Response) {
    for _ in 0..3 {
        let chunk = tokio::time::timeout(Duration::from_secs(2), response.chunk())
            .await
            .expect("the other stream goes on")
            .unwrap()
            .expect("the other stream goes on");
        assert_eq!(&chunk[..], b"tick\n");
    }
}

/// The cut stream's audit record.
fn assert_cut_record(server: &Server, id: &str) {
    let record = tokio::task::block_in_place(|| server.audit_record(id));
    assert_eq!(record["error_code"], "stream_revoked", "{record}");
    assert_eq!(record["outcome"], "allow", "{record}");
    assert_eq!(record["status"], 200, "{record}");
}

async fn admin_post(server: &Server, path: &str, body: Value) {
    let client = client(&server.ca_pem(), None);
    let response = client
        .post(format!("https://{}/admin/v1{path}", server.admin))
        .bearer_auth(server.admin_token())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{path}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agent_ends_its_open_http_stream_within_a_second() {
    let server = server("").await;
    let revoked = agent(&server, "drip-bot");
    let other = agent(&server, "other-bot");
    let (mut cut, id) = open_drip(revoked.get(server.url("/api/drip"))).await;
    let (mut kept, kept_id) = open_drip(other.get(server.url("/api/drip"))).await;

    let started = Instant::now();
    admin_post(&server, "/agents/drip-bot/revoke", json!({})).await;
    // Not a complete-looking response: the client sees it broken off.
    assert!(ends_within(&mut cut, CUT_WITHIN).await, "truncated");
    eprintln!(
        "stream cut {:?} after the revocation began",
        started.elapsed()
    );
    still_flows(&mut kept).await;
    drop(kept);
    assert_cut_record(&server, &id);
    let kept = tokio::task::block_in_place(|| server.audit_record(&kept_id));
    assert_ne!(kept["error_code"], "stream_revoked", "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_the_streams_it_opened_and_no_others() {
    let server = server("").await;
    let client = agent(&server, "token-bot");
    let creds = server.path().join("creds");
    let out = tokio::task::block_in_place(|| {
        server.cli(&[
            "agent",
            "token",
            "token-bot",
            "--creds",
            creds.to_str().unwrap(),
            "--mtls",
        ])
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let jti = {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        claims["jti"].as_str().unwrap().to_string()
    };
    // The same agent, once with the token and once with its certificate alone.
    let (mut cut, id) = open_drip(client.get(server.url("/api/drip")).bearer_auth(&token)).await;
    let (mut kept, _) = open_drip(client.get(server.url("/api/drip"))).await;

    let started = Instant::now();
    admin_post(&server, "/tokens/revoke", json!({"jti": jti})).await;
    assert!(ends_within(&mut cut, CUT_WITHIN).await, "truncated");
    eprintln!(
        "stream cut {:?} after the token revocation began",
        started.elapsed()
    );
    still_flows(&mut kept).await;
    assert_cut_record(&server, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_ends_the_agents_open_http_stream() {
    let server = server("[analytics]\ndenial_burst = 5\n").await;
    let client = agent(&server, "noisy-bot");
    let other = agent(&server, "quiet-bot");
    let (mut cut, id) = open_drip(client.get(server.url("/api/drip"))).await;
    let (mut kept, _) = open_drip(other.get(server.url("/api/drip"))).await;

    // A burst of denials quarantines the agent (analytics runs off the
    // request path, so allow it a few seconds).
    for i in 0..10 {
        let r = client
            .get(server.url(&format!("/payroll/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    assert!(
        ends_within(&mut cut, Duration::from_secs(8)).await,
        "truncated"
    );
    let r = client.get(server.url("/api/x")).send().await.unwrap();
    assert_eq!(error_of(r).await.1["code"], "quarantined");
    still_flows(&mut kept).await;
    assert_cut_record(&server, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_ends_the_streams_agents_opened_on_their_behalf() {
    use portcullis_identity::Ed25519Key;
    const IDP: &str = "https://idp.streams.test";
    install_crypto();
    let (upstream, gate) = start_upstream().await;
    std::mem::forget(gate);
    let dir = tempfile::tempdir().unwrap();
    let idp = Ed25519Key::generate();
    let mut jwk = idp.public().to_json();
    jwk["kid"] = json!(idp.kid());
    jwk["alg"] = json!("EdDSA");
    std::fs::write(
        dir.path().join("idp.jwks"),
        json!({ "keys": [jwk] }).to_string(),
    )
    .unwrap();
    // Readers may read; so may the users an agent acts for, when policy lets
    // them (a delegated call needs both).
    let pol = dir.path().join("policies");
    std::fs::create_dir(&pol).unwrap();
    std::fs::write(
        pol.join("schema.cedarschema"),
        include_str!("../../policy/defaults/schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(
        pol.join("streams.cedar"),
        r#"@id("readers-read") permit(principal in Role::"reader", action in Action::"read", resource);"#,
    )
    .unwrap();
    let routes = format!(
        "[policy]\ndir = \"policies\"\n\
         [[identity.oidc]]\nissuer = \"{IDP}\"\naudience = \"portcullis\"\njwks_file = \"idp.jwks\"\n{}",
        route("api", "/api", &format!("http://{upstream}"), "public"),
    );
    let cfg = config(dir.path(), &routes, "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let client = agent(&server, "helper-bot");
    let on_behalf_of = |user: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let subject = idp.sign_compact(
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": idp.kid()}),
            &json!({"iss": IDP, "aud": "portcullis", "sub": user, "iat": now,
                "exp": now + 600, "groups": ["reader"], "amr": ["pwd"]}),
        );
        let file = server.path().join(format!("subject-{user}"));
        std::fs::write(&file, subject).unwrap();
        let creds = server.path().join("creds");
        let out = tokio::task::block_in_place(|| {
            server.cli(&[
                "agent",
                "token",
                "helper-bot",
                "--creds",
                creds.to_str().unwrap(),
                "--mtls",
                "--on-behalf-of",
                file.to_str().unwrap(),
            ])
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let for_alice = on_behalf_of("alice");
    let for_bob = on_behalf_of("bob");
    let (mut cut, id) =
        open_drip(client.get(server.url("/api/drip")).bearer_auth(&for_alice)).await;
    let (mut kept, _) = open_drip(client.get(server.url("/api/drip")).bearer_auth(&for_bob)).await;

    let started = Instant::now();
    admin_post(&server, "/users/disable", json!({"subject": "alice"})).await;
    assert!(ends_within(&mut cut, CUT_WITHIN).await, "truncated");
    eprintln!(
        "stream cut {:?} after the user was disabled",
        started.elapsed()
    );
    still_flows(&mut kept).await;
    assert_cut_record(&server, &id);
}
