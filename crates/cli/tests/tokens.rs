//! End-to-end tests of the token endpoint and sender-constrained access tokens
//! against the real binary: DPoP-bound and mTLS-bound flows through the CLI,
//! and every refusal the issue lists, each a 401 JSON error that is recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};

use portcullis_identity::{ASSERTION_TYPE, Ed25519Key, access_token_hash};
use serde_json::{Value, json};
use support::*;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn server() -> Server {
    install_crypto();
    let (upstream, _gate) = start_upstream().await;
    // Keep the upstream's gate alive for the whole test.
    std::mem::forget(_gate);
    let dir = tempfile::tempdir().unwrap();
    let routes = route("api", "/api", &format!("http://{upstream}"), "public");
    // These tests send many refused assertions in a row on purpose; the
    // brute-force throttle (tested in `edge_auth.rs`) would answer them
    // `too_many_attempts` before they are checked.
    let cfg = config(
        dir.path(),
        &routes,
        "auth_backoff_ms = 0\nauth_max_failures = 1000",
    );
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
}

fn creds(server: &Server) -> PathBuf {
    server.path().join("creds")
}

fn agent_key(server: &Server, name: &str) -> Ed25519Key {
    let text = std::fs::read_to_string(creds(server).join(format!("{name}.jwk"))).unwrap();
    Ed25519Key::from_private_jwk(&text).unwrap()
}

/// `portcullis agent token NAME --creds DIR [--mtls]`.
async fn cli_token(server: &Server, name: &str, mtls: bool) -> String {
    let creds = creds(server);
    let mut args = vec![
        "agent".to_string(),
        "token".into(),
        name.into(),
        "--creds".into(),
        creds.to_str().unwrap().into(),
    ];
    if mtls {
        args.push("--mtls".into());
    }
    let state = server.state_dir();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .arg("--state-dir")
            .arg(state)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "agent token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A GET with `Authorization: <scheme> <token>` and an optional DPoP proof.
async fn get(
    client: &reqwest::Client,
    url: &str,
    scheme: &str,
    token: &str,
    proof: Option<String>,
) -> reqwest::Response {
    let mut request = client
        .get(url)
        .header("authorization", format!("{scheme} {token}"));
    if let Some(p) = proof {
        request = request.header("dpop", p);
    }
    request.send().await.unwrap()
}

/// Expects a 401 with `code`, recorded in the audit log with that code.
async fn refused(server: &Server, response: reqwest::Response, code: &str, what: &str) {
    let id = request_id(&response);
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some(code)),
        "{what}: {error}"
    );
    let record = server.audit_record(&id);
    assert_eq!(record["error_code"], code, "{what}: {record}");
    assert_eq!(record["outcome"], "deny", "{what}");
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
async fn dpop_bound_tokens_work_and_attacks_are_refused() {
    let server = server().await;
    server.create_agent("alice", &["reader"]);
    let (bob_cert, bob_key_pem) = server.create_agent("bob", &["reader"]);
    let alice = agent_key(&server, "alice");
    let bob = agent_key(&server, "bob");
    // No client certificate anywhere below, unless said.
    let client = client(&server.ca_pem(), None);
    let url = server.url("/api/items");

    // Metadata and JWKS are public.
    let meta: Value = client
        .get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_endpoint = meta["token_endpoint"].as_str().unwrap().to_string();
    assert_eq!(token_endpoint, server.url("/oauth2/token"));
    let jwks: Value = client
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert!(jwks["keys"][0].get("d").is_none());

    // The working flow: CLI token, proof per request.
    let token = cli_token(&server, "alice", false).await;
    let proof = alice
        .sign_dpop_proof("GET", &url, Some(&token), now())
        .unwrap();
    let response = get(&client, &url, "DPoP", &token, Some(proof.clone())).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let echoed: Value = response.json().await.unwrap();
    // Neither the token nor the proof reaches the upstream.
    assert!(echoed["headers"].get("authorization").is_none(), "{echoed}");
    assert!(echoed["headers"].get("dpop").is_none(), "{echoed}");
    let record = server.audit_record(&id);
    assert_eq!(record["principal"], "alice");
    let credential = record["credential"].as_str().unwrap();
    assert!(
        credential.contains("token jti=") && credential.ends_with("cnf=dpop"),
        "{credential}"
    );
    assert!(!credential.contains(&token));

    // A proof from `portcullis agent dpop` (what curl users do).
    let creds_dir = creds(&server);
    let out = server.cli(&[
        "agent",
        "dpop",
        "alice",
        "--creds",
        creds_dir.to_str().unwrap(),
        "--method",
        "get",
        "--url",
        &url,
        "--token",
        &token,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_proof = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let response = get(&client, &url, "DPoP", &token, Some(cli_proof)).await;
    assert_eq!(response.status(), 200);

    // Replayed proof.
    let response = get(&client, &url, "DPoP", &token, Some(proof)).await;
    refused(&server, response, "invalid_dpop_proof", "replayed proof").await;
    // Proof for another URL, another method.
    let other = alice
        .sign_dpop_proof("GET", &server.url("/api/other"), Some(&token), now())
        .unwrap();
    let response = get(&client, &url, "DPoP", &token, Some(other)).await;
    refused(
        &server,
        response,
        "invalid_dpop_proof",
        "proof for another url",
    )
    .await;
    let post = alice
        .sign_dpop_proof("POST", &url, Some(&token), now())
        .unwrap();
    let response = get(&client, &url, "DPoP", &token, Some(post)).await;
    refused(
        &server,
        response,
        "invalid_dpop_proof",
        "proof for another method",
    )
    .await;
    // Alice's token with Bob's key.
    let bobs = bob
        .sign_dpop_proof("GET", &url, Some(&token), now())
        .unwrap();
    let response = get(&client, &url, "DPoP", &token, Some(bobs)).await;
    refused(
        &server,
        response,
        "invalid_dpop_proof",
        "token of A with key of B",
    )
    .await;
    // Alice's token with Bob's certificate, as a bearer token.
    let bob_client = support::client(&server.ca_pem(), Some((&bob_cert, &bob_key_pem)));
    let response = get(&bob_client, &url, "Bearer", &token, None).await;
    refused(
        &server,
        response,
        "invalid_token",
        "token of A with cert of B",
    )
    .await;
    // The stolen token alone: no proof, or as a plain bearer token.
    let response = get(&client, &url, "DPoP", &token, None).await;
    refused(&server, response, "invalid_dpop_proof", "no proof").await;
    let response = get(&client, &url, "Bearer", &token, None).await;
    refused(&server, response, "invalid_token", "dpop token as bearer").await;

    // Forged tokens, each with a valid proof so only the token is at fault.
    let seed = std::fs::read_to_string(server.state_dir().join("token.key")).unwrap();
    let seed: [u8; 32] = hex::decode(seed.trim()).unwrap().try_into().unwrap();
    let gateway_key = Ed25519Key::from_seed(&seed);
    let issuer = format!("https://{}", server.gateway);
    let t = now();
    let claims = |iss: &str, aud: &str, iat: i64, exp: i64| {
        json!({
            "iss": iss, "sub": "spiffe://portcullis.local/agent/alice", "aud": aud,
            "iat": iat, "nbf": iat, "exp": exp, "jti": "forged", "client_id": "alice",
            "cnf": { "jkt": alice.kid() },
        })
    };
    let header = json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": gateway_key.kid() });
    // A correctly forged one works: the forgery helpers are sound.
    let good = gateway_key.sign_compact(&header, &claims(&issuer, &issuer, t, t + 60));
    let p = alice
        .sign_dpop_proof("GET", &url, Some(&good), now())
        .unwrap();
    assert_eq!(
        get(&client, &url, "DPoP", &good, Some(p)).await.status(),
        200
    );
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(gateway_key.kid()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims(&issuer, &issuer, t, t + 60),
        &jsonwebtoken::EncodingKey::from_secret(&{
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwks["keys"][0]["x"].as_str().unwrap())
                .unwrap()
        }),
    )
    .unwrap();
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let mut c = claims(&issuer, &issuer, t, t + 60);
        c["client_id"] = "bob".into();
        parts[1] = b64(&c);
        parts.join(".")
    };
    let forgeries = [
        (
            "expired",
            gateway_key.sign_compact(&header, &claims(&issuer, &issuer, t - 900, t - 600)),
        ),
        (
            "not yet valid",
            gateway_key.sign_compact(&header, &claims(&issuer, &issuer, t + 600, t + 900)),
        ),
        (
            "wrong audience",
            gateway_key.sign_compact(&header, &claims(&issuer, "https://elsewhere", t, t + 60)),
        ),
        (
            "wrong issuer",
            gateway_key.sign_compact(&header, &claims("https://elsewhere", &issuer, t, t + 60)),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({ "alg": "none", "kid": gateway_key.kid() })),
                b64(&claims(&issuer, &issuer, t, t + 60))
            ),
        ),
        ("hs256 with the public key", hs256),
        (
            "unknown kid",
            Ed25519Key::generate().sign_compact(
                &json!({ "alg": "EdDSA", "kid": "someone-else" }),
                &claims(&issuer, &issuer, t, t + 60),
            ),
        ),
        ("tampered", tampered),
    ];
    for (what, forged) in forgeries {
        let p = alice
            .sign_dpop_proof("GET", &url, Some(&forged), now())
            .unwrap();
        let response = get(&client, &url, "DPoP", &forged, Some(p)).await;
        refused(&server, response, "invalid_token", what).await;
    }

    // Assertion reuse: the same assertion twice.
    let assertion = alice
        .sign_assertion("alice", &token_endpoint, now(), 60)
        .unwrap();
    let post_token = |assertion: String, proof: Option<String>| {
        let client = client.clone();
        let url = server.url("/oauth2/token");
        async move {
            let mut r = client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(token_form(&assertion));
            if let Some(p) = proof {
                r = r.header("dpop", p);
            }
            r.send().await.unwrap()
        }
    };
    let proof = || {
        alice
            .sign_dpop_proof("POST", &token_endpoint, None, now())
            .unwrap()
    };
    let first = post_token(assertion.clone(), Some(proof())).await;
    assert_eq!(first.status(), 200);
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(body["expires_in"], 300);
    let again = post_token(assertion, Some(proof())).await;
    refused(&server, again, "invalid_client", "assertion jti reuse").await;
    // Bob's key cannot sign for Alice.
    let forged = bob
        .sign_assertion("alice", &token_endpoint, now(), 60)
        .unwrap();
    let response = post_token(forged, Some(proof())).await;
    refused(
        &server,
        response,
        "invalid_client",
        "assertion signed by another agent",
    )
    .await;
    // An assertion for another audience.
    let elsewhere = alice
        .sign_assertion("alice", "https://elsewhere/oauth2/token", now(), 60)
        .unwrap();
    let response = post_token(elsewhere, Some(proof())).await;
    refused(
        &server,
        response,
        "invalid_client",
        "assertion for another audience",
    )
    .await;
    // No binding offered: no token.
    let fresh = alice
        .sign_assertion("alice", &token_endpoint, now(), 60)
        .unwrap();
    let (status, error) = error_of(post_token(fresh, None).await).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("bad_request")));

    // Revocation: Bob's unexpired token stops working on the next request.
    let bob_token = cli_token(&server, "bob", false).await;
    let p = bob
        .sign_dpop_proof("GET", &url, Some(&bob_token), now())
        .unwrap();
    assert_eq!(
        get(&client, &url, "DPoP", &bob_token, Some(p))
            .await
            .status(),
        200
    );
    // Revoked through the admin API; the snapshot is swapped before the call
    // returns, so the very next request is refused.
    let admin_token = server.admin_token();
    let p = bob
        .sign_dpop_proof("GET", &url, Some(&bob_token), now())
        .unwrap();
    let started = std::time::Instant::now();
    let revoked = client
        .post(format!(
            "https://{}/admin/v1/agents/bob/revoke",
            server.admin
        ))
        .bearer_auth(admin_token.trim())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let revoke_call = started.elapsed();
    let response = get(&client, &url, "DPoP", &bob_token, Some(p)).await;
    let refused_after = started.elapsed();
    refused(&server, response, "agent_revoked", "revoked agent's token").await;
    eprintln!(
        "revocation: admin call returned after {:.1} ms; the next token request was refused {:.1} ms after the call started",
        revoke_call.as_secs_f64() * 1e3,
        refused_after.as_secs_f64() * 1e3
    );
    // And Bob gets no new token.
    let a = bob
        .sign_assertion("bob", &token_endpoint, now(), 60)
        .unwrap();
    let p = bob
        .sign_dpop_proof("POST", &token_endpoint, None, now())
        .unwrap();
    let response = post_token(a, Some(p)).await;
    refused(
        &server,
        response,
        "agent_revoked",
        "revoked agent at the token endpoint",
    )
    .await;
    let _ = access_token_hash("");
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_bound_tokens_need_their_certificate() {
    let server = server().await;
    let (cert, key) = server.create_agent("carol", &["reader"]);
    let (dave_cert, dave_key) = server.create_agent("dave", &["reader"]);
    let url = server.url("/api/x");
    let token = cli_token(&server, "carol", true).await;
    let with_cert = client(&server.ca_pem(), Some((&cert, &key)));
    let response = get(&with_cert, &url, "Bearer", &token, None).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let credential = server.audit_record(&id)["credential"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(credential.ends_with("cnf=x5t#S256"), "{credential}");
    // Stolen: without the certificate, or with another agent's.
    let response = get(
        &client(&server.ca_pem(), None),
        &url,
        "Bearer",
        &token,
        None,
    )
    .await;
    refused(
        &server,
        response,
        "invalid_token",
        "bearer without its cert",
    )
    .await;
    let other = client(&server.ca_pem(), Some((&dave_cert, &dave_key)));
    let response = get(&other, &url, "Bearer", &token, None).await;
    refused(
        &server,
        response,
        "invalid_token",
        "bearer with another cert",
    )
    .await;
    // A cert-bound token is not a DPoP token.
    let carol = agent_key(&server, "carol");
    let p = carol
        .sign_dpop_proof("GET", &url, Some(&token), now())
        .unwrap();
    let response = get(&with_cert, &url, "DPoP", &token, Some(p)).await;
    refused(
        &server,
        response,
        "invalid_token",
        "cert-bound token as dpop",
    )
    .await;
    let _: &Path = &cert;

    // A key registered later through the admin API works at the token endpoint;
    // a JWK with its private half is refused and never stored.
    let admin_token = server.admin_token();
    let admin = client(&server.ca_pem(), None);
    let keys_url = format!("https://{}/admin/v1/agents/dave/keys", server.admin);
    let new_key = Ed25519Key::generate();
    let private: Value = serde_json::from_str(&new_key.to_private_jwk()).unwrap();
    let response = admin
        .post(&keys_url)
        .bearer_auth(admin_token.trim())
        .json(&json!({ "jwk": private }))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("bad_request")));
    let response = admin
        .post(&keys_url)
        .bearer_auth(admin_token.trim())
        .json(&json!({ "jwk": new_key.public().to_json() }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let shown = server.cli(&["agent", "show", "dave", "-o", "json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let kids = shown["signing_keys"].as_array().unwrap();
    assert_eq!(kids.len(), 2, "{shown}");
    assert!(kids.contains(&Value::from(new_key.kid())));
    let endpoint = server.url("/oauth2/token");
    let assertion = new_key
        .sign_assertion("spiffe://portcullis.local/agent/dave", &endpoint, now(), 60)
        .unwrap();
    let response = client(&server.ca_pem(), None)
        .post(&endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "dpop",
            new_key
                .sign_dpop_proof("POST", &endpoint, None, now())
                .unwrap(),
        )
        .body(token_form(&assertion))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let dave_token = body["access_token"].as_str().unwrap();
    let p = new_key
        .sign_dpop_proof("GET", &url, Some(dave_token), now())
        .unwrap();
    let response = get(
        &client(&server.ca_pem(), None),
        &url,
        "DPoP",
        dave_token,
        Some(p),
    )
    .await;
    assert_eq!(response.status(), 200);
}
