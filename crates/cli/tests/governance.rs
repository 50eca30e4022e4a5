//! End to end: the model registry gates an LLM route through the real
//! binary. A confidential route's model is refused (`model_unverified`)
//! until a registry entry with a signature bundle that verifies against the
//! pinned key names it, and again once that entry is revoked; lifecycle
//! changes are audited and need step-up when MFA is required. The dataset
//! registry and its retention report answer through the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use support::{Server, install_crypto};

const UPSTREAM_KEY: &str = "sk-governance-test-key";
const SCHEMA: &str = include_str!("../../policy/defaults/schema.cedarschema");
/// Permits every model, whatever its attributes: only the built-in gate
/// stands between an agent and an unverified model.
const POLICIES: &str = r#"
@id("llm-any") permit(principal in Role::"llm-user", action == Action::"complete", resource);
@id("data-any") permit(principal in Role::"llm-user", action == Action::"read_data", resource);
"#;
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

fn pem(key: &SigningKey) -> String {
    let der = [&ED25519_SPKI_PREFIX[..], key.verifying_key().as_bytes()].concat();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(der)
    )
}

/// A Sigstore-style bundle: a DSSE envelope over an in-toto statement
/// naming `hex`, signed by `key`.
fn bundle(key: &SigningKey, hex: &str) -> Value {
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{ "name": "model.safetensors", "digest": { "sha256": hex } }],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {},
    });
    let payload = serde_json::to_vec(&statement).unwrap();
    let mut pae = format!(
        "DSSEv1 {} {PAYLOAD_TYPE} {} ",
        PAYLOAD_TYPE.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    let sig = key.sign(&pae);
    json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": { "publicKey": { "hint": "release" } },
        "dsseEnvelope": {
            "payload": STANDARD.encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{ "sig": STANDARD.encode(sig.to_bytes()), "keyid": "release" }],
        },
    })
}

/// The config: one confidential LLM route with a registry-backed model and
/// an unregistered one, the pinned key, and `extra` (e.g. `[admin]` keys).
fn setup(dir: &Path, upstream: u16, admin_extra: &str) -> std::path::PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(policies.join("llm.cedar"), POLICIES).unwrap();
    let path = dir.join("portcullis.toml");
    std::fs::write(
        &path,
        format!(
            r#"[gateway]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
{admin_extra}
[policy]
dir = "policies"
[[models.trusted_keys]]
id = "release"
public_key_file = "release.pub"

[[routes]]
name = "llm"
kind = "llm"
path_prefix = "/llm"
upstream = "http://127.0.0.1:{upstream}"
classification = "confidential"
api_key_env = "GOV_TEST_UPSTREAM_KEY"
datasets = ["claims"]
[[routes.models]]
name = "llama"
registry = "llama-3@1.0"
[[routes.models]]
name = "rogue"
"#
        ),
    )
    .unwrap();
    path
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn complete(agent: &reqwest::Client, server: &Server, model: &str) -> (u16, Value) {
    let response = agent
        .post(server.url("/llm/v1/chat/completions"))
        .json(&json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confidential_route_serves_only_verified_unrevoked_models() {
    install_crypto();
    let (_upstream, port) = support::parity_rig::start_llm();
    let dir = tempfile::tempdir().unwrap();
    let release = SigningKey::from_bytes(&[7; 32]);
    let stranger = SigningKey::from_bytes(&[9; 32]);
    std::fs::write(dir.path().join("release.pub"), pem(&release)).unwrap();
    let cfg = setup(dir.path(), port, "");
    let server =
        Server::start_with_env(dir, Some(&cfg), &[("GOV_TEST_UPSTREAM_KEY", UPSTREAM_KEY)]);
    let (crt, key) = server.create_agent("bot", &["llm-user"]);
    let agent = support::client(&server.ca_pem(), Some((&crt, &key)));
    // The route is tagged with `claims`: registered first, or every call is
    // refused (`dataset_unknown`).
    ok(
        server.cli(&[
            "dataset",
            "register",
            "claims",
            "--owner",
            "risk-team",
            "--classification",
            "confidential",
            "--source",
            "claims-db export",
            "--licence",
            "internal",
            "--collected",
            "2026-01-31",
            "--consent-basis",
            "contract",
            "--retention-days",
            "30",
            "--purpose",
            "fraud-detection",
        ]),
        "dataset register",
    );

    // Before registration: both models are refused by the gate, with its code.
    for model in ["llama", "rogue"] {
        let (status, body) = complete(&agent, &server, model).await;
        assert_eq!(status, 403, "{model}: {body}");
        assert_eq!(body["error"]["code"], "model_unverified", "{body}");
        assert_eq!(body["error"]["policies"], json!(["builtin:model-gate"]));
    }

    // The artifact, its digest, and the evidence files.
    let files = server.path().to_path_buf();
    let artifact = files.join("model.safetensors");
    std::fs::write(&artifact, b"weights of llama 3, version 1.0").unwrap();
    let hex = hex::encode(Sha256::digest(b"weights of llama 3, version 1.0"));
    let digest = format!("sha256:{hex}");
    let write = |name: &str, v: &Value| {
        let p = files.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.to_str().unwrap().to_string()
    };
    let signed = write("signed.json", &bundle(&release, &hex));
    let forged = write("forged.json", &bundle(&stranger, &hex));
    let provenance = write(
        "provenance.json",
        &json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{ "name": "model.safetensors", "digest": { "sha256": hex } }],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": { "buildDefinition": { "buildType": "https://example.com/train@v1" } },
        }),
    );
    let eval = write("eval.json", &json!({ "mmlu": 0.66 }));
    let register = |sig: &str, artifact: &str| {
        server.cli(&[
            "model",
            "register",
            "llama-3",
            "--version",
            "1.0",
            "--digest",
            &digest,
            "--artifact",
            artifact,
            "--signature",
            sig,
            "--provenance",
            &provenance,
            "--eval",
            &eval,
            "-o",
            "json",
        ])
    };
    // A bundle signed by a key that is not pinned is refused, not stored.
    let out = register(&forged, artifact.to_str().unwrap());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pinned key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An artifact that does not match the digest is refused by the CLI.
    let other = files.join("other.bin");
    std::fs::write(&other, b"something else").unwrap();
    let out = register(&signed, other.to_str().unwrap());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to register"));

    let created: Value = serde_json::from_str(&ok(
        register(&signed, artifact.to_str().unwrap()),
        "register",
    ))
    .unwrap();
    assert_eq!(created["lifecycle"], "draft");
    assert_eq!(created["verified"], true);
    assert_eq!(created["verified_key"], "release");

    // Verified and not revoked: served (a draft too; lifecycle is policy's to read).
    let (status, body) = complete(&agent, &server, "llama").await;
    assert_eq!(status, 200, "{body}");
    // The unregistered model is still refused.
    assert_eq!(complete(&agent, &server, "rogue").await.0, 403);

    ok(server.cli(&["model", "approve", "llama-3@1.0"]), "approve");
    let listed: Value = serde_json::from_str(&ok(
        server.cli(&["model", "list", "-o", "json"]),
        "model list",
    ))
    .unwrap();
    assert_eq!(listed["models"][0]["lifecycle"], "approved");
    let shown: Value = serde_json::from_str(&ok(
        server.cli(&["model", "show", "llama-3@1.0", "-o", "json"]),
        "model show",
    ))
    .unwrap();
    assert_eq!(
        shown["provenance"]["predicateType"],
        "https://slsa.dev/provenance/v1"
    );
    assert_eq!(shown["eval"]["mmlu"], 0.66);
    let table = ok(server.cli(&["model", "list"]), "model list table");
    assert!(
        table.contains("llama-3@1.0") && table.contains("approved"),
        "{table}"
    );

    // Revoked: refused on the very next request, and for good.
    ok(server.cli(&["model", "revoke", "llama-3@1.0"]), "revoke");
    let (status, body) = complete(&agent, &server, "llama").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("model_unverified"))
    );
    let again = server.cli(&["model", "approve", "llama-3@1.0"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("cannot become approved"));

    // Every change is in the audit log, with the artifact's digest.
    let records = server.audit(60);
    for action in ["model.register", "model.approve", "model.revoke"] {
        let r = records
            .iter()
            .find(|r| r["action"] == action)
            .unwrap_or_else(|| panic!("no `{action}` record"));
        assert_eq!(r["resource"], format!("llama-3@1.0@{digest}"), "{r}");
    }
    let refused = records
        .iter()
        .find(|r| r["resource"] == "llm/rogue")
        .unwrap();
    assert_eq!(refused["error_code"], "model_unverified");

    // The dataset registry and its report (`claims` registered above).
    let bad = server.cli(&[
        "dataset",
        "register",
        "x",
        "--owner",
        "o",
        "--classification",
        "internal",
        "--source",
        "s",
        "--licence",
        "l",
        "--collected",
        "2026-01-31",
        "--consent-basis",
        "because",
        "--retention-days",
        "1",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("consent_basis"));
    let report: Value = serde_json::from_str(&ok(
        server.cli(&["dataset", "report", "-o", "json"]),
        "dataset report",
    ))
    .unwrap();
    assert_eq!(report["report"][0]["dataset"], "claims");
    assert_eq!(report["report"][0]["routes"], json!(["llm"]));
    assert_eq!(report["report"][0]["overdue"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_changes_need_step_up_when_mfa_is_required() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("release.pub"),
        pem(&SigningKey::from_bytes(&[7; 32])),
    )
    .unwrap();
    let cfg = setup(dir.path(), 9, "require_mfa = true");
    let server =
        Server::start_with_env(dir, Some(&cfg), &[("GOV_TEST_UPSTREAM_KEY", UPSTREAM_KEY)]);
    let digest = format!("sha256:{}", "ab".repeat(32));
    // Registering a draft changes nothing that serves: no step-up.
    ok(
        server.cli(&[
            "model",
            "register",
            "m",
            "--version",
            "1",
            "--digest",
            &digest,
        ]),
        "register",
    );
    for step in ["approve", "revoke"] {
        let out = server.cli(&["model", step, "m@1"]);
        assert!(!out.status.success(), "{step} without a code");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("mfa_required") || err.contains("TOTP"),
            "{err}"
        );
    }
    let listed: Value = serde_json::from_str(&ok(
        server.cli(&["model", "list", "-o", "json"]),
        "model list",
    ))
    .unwrap();
    assert_eq!(listed["models"][0]["lifecycle"], "draft");
    assert_eq!(listed["models"][0]["verified"], false);
}
