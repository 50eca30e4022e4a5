//! Stock OAuth client libraries against the real binary, with their defaults
//! (`oauth/clients.py`): authlib's `PrivateKeyJWT` and session, requests-
//! oauthlib's client-credentials session, RFC 8414 metadata validation, RFC
//! 6749 §5.2 errors as they parse them, hour-long assertions with an `aud`
//! array or the `Ed25519` algorithm name (refused when replayed), the RFC
//! 8414 metadata of the authorization-code flow validated by authlib, and
//! DPoP proofs signed ES256 and `Ed25519` with server-issued nonces. Skips, saying so, without python3 and
//! the two libraries (`requirements-test.txt`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oauth/clients.py");

fn python_with_oauth_libraries() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import authlib, requests_oauthlib, cryptography"])
        .output();
    match probe {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!(
                "SKIPPED: OAuth client libraries: python3 with authlib, requests-oauthlib and cryptography is not available (requirements-test.txt)"
            );
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_libraries_work_with_their_defaults() {
    if !python_with_oauth_libraries() {
        return;
    }
    install_crypto();
    let (upstream, gate) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // The authorization-code flow is configured, so the metadata lists an
    // authorization endpoint and the `code` response type.
    let routes = format!(
        "[identity.authorization]\nagent = \"mcp-hosts\"\n{}",
        route("api", "/api", &format!("http://{upstream}"), "public")
    );
    let cfg = config(dir.path(), &routes, "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let (es_cert, es_key) = server.create_agent("es-bot", &["reader"]);
    let (ed_cert, ed_key) = server.create_agent("ed-bot", &["reader"]);
    let ed_jwk: Value = serde_json::from_str(
        &std::fs::read_to_string(server.path().join("creds").join("ed-bot.jwk")).unwrap(),
    )
    .unwrap();
    let ca = server.path().join("ca-for-clients.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let cfg = json!({
        "ca": ca,
        "token_url": server.url("/oauth2/token"),
        "metadata_url": server.url("/.well-known/oauth-authorization-server"),
        "api_url": server.url("/api/items"),
        "admin_url": format!("https://{}", server.admin),
        "admin_token": server.admin_token().trim(),
        "es": {"name": "es-bot", "cert": es_cert, "key": es_key},
        "ed": {"name": "ed-bot", "cert": ed_cert, "key": ed_key, "jwk": ed_jwk},
    });
    let cfg_file = server.path().join("clients.json");
    std::fs::write(&cfg_file, cfg.to_string()).unwrap();
    // Bounded: the script makes a dozen local requests.
    let output =
        tokio::task::spawn_blocking(move || run_python(SCRIPT, &cfg_file, Duration::from_secs(60)))
            .await
            .unwrap();
    drop(gate);
    assert!(
        output.status.success(),
        "clients.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("{got:#}");
    assert_eq!(
        got["metadata_algs"],
        json!(["EdDSA", "Ed25519", "ES256"]),
        "{got}"
    );
    assert_eq!(got["register_es256"], 201, "{got}");
    for label in ["authlib_es256", "authlib_eddsa"] {
        assert_eq!(
            got[label],
            json!({"token_type": "Bearer", "expires_in": 300, "api": 200}),
            "{label}: {got}"
        );
    }
    assert_eq!(got["authlib_error"], "invalid_client", "{got}");
    assert_eq!(
        got["oauthlib"],
        json!({"token_type": "Bearer", "api": 200}),
        "{got}"
    );
    assert_eq!(got["oauthlib_error"], "invalid_client", "{got}");
    // `aud` an array and the `Ed25519` name, hour-long assertions; a
    // replayed one is refused in RFC 6749 §5.2's shape.
    assert_eq!(got["aud_array"], json!([200, "Bearer"]), "{got}");
    assert_eq!(got["ed25519_named"], json!([200, "Bearer"]), "{got}");
    assert_eq!(got["replayed"], json!([401, "invalid_client"]), "{got}");
    for label in ["dpop_es256", "dpop_ed25519"] {
        let r = &got[label];
        assert_eq!(
            (&r["token"], &r["token_type"], &r["nonce"], &r["api"]),
            (&json!(200), &json!("DPoP"), &json!(true), &json!(200)),
            "{label}: {got}"
        );
        // A stale nonce: 401, the DPoP challenge names the error, and a
        // fresh nonce comes with it.
        assert_eq!(r["stale_nonce"], 401, "{label}: {got}");
        assert!(
            r["stale_challenge"]
                .as_str()
                .unwrap()
                .contains(r#"error="use_dpop_nonce""#),
            "{label}: {got}"
        );
        assert_eq!(r["stale_new_nonce"], true, "{label}: {got}");
    }
    // The metadata names what really works (the code flow with PKCE S256
    // and public clients beside `private_key_jwt`), and authlib's
    // validation accepts it as it is.
    assert_eq!(got["metadata"], "valid", "{got}");
    assert_eq!(got["response_types"], json!(["code"]), "{got}");
    assert_eq!(got["pkce_methods"], json!(["S256"]), "{got}");
}
