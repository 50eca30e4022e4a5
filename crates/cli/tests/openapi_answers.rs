//! The OpenAPI document's answer schemas against real answers: a real
//! `portcullis serve`, a few dozen admin calls (successes and errors), and
//! each answer validated by Python's `jsonschema` (JSON Schema 2020-12, the
//! dialect of OpenAPI 3.1) against the schema the same server documents for
//! that operation and status (`tests/openapi/validate.py`). A deliberately
//! broken answer must fail, so the check can fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openapi/validate.py");

/// One call: method, concrete path, documented path template, body.
struct Case {
    method: &'static str,
    path: String,
    template: &'static str,
    body: Option<Value>,
    token: bool,
}

fn case(method: &'static str, path: &str, template: &'static str) -> Case {
    Case {
        method,
        path: path.to_string(),
        template,
        body: None,
        token: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn documented_answer_schemas_validate_real_answers() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "python3 with jsonschema is needed: pip install -r requirements-test.txt ({probe:?})"
    );
    install_crypto();
    let server = tokio::task::spawn_blocking(|| Server::start(tempfile::tempdir().unwrap(), None))
        .await
        .unwrap();
    server.create_agent("bot", &["reader"]);
    server.create_agent("victim", &["reader"]);
    let (_, csr) = portcullis_identity::new_agent_key_and_csr().unwrap();
    let http = client(&server.ca_pem(), None);
    let token = server.admin_token();
    let v = "/admin/v1";
    let mut cases = vec![
        case("get", "/healthz", "/healthz"),
        case("get", "/admin/v1/openapi.json", "/admin/v1/openapi.json"),
        case("get", "/readyz", "/readyz"),
        case("get", "/admin/v1/agents", "/admin/v1/agents"),
        case("get", "/admin/v1/agents/bot", "/admin/v1/agents/{name}"),
        case(
            "post",
            "/admin/v1/agents/victim/revoke",
            "/admin/v1/agents/{name}/revoke",
        ),
        case("get", "/admin/v1/admin-tokens", "/admin/v1/admin-tokens"),
        case("get", "/admin/v1/session", "/admin/v1/session"),
        case("get", "/admin/v1/admins", "/admin/v1/admins"),
        case("get", "/admin/v1/passkeys", "/admin/v1/passkeys"),
        case(
            "delete",
            "/admin/v1/passkeys/no-such-key",
            "/admin/v1/passkeys/{id}",
        ),
        case("get", "/admin/v1/audit?limit=5", "/admin/v1/audit"),
        case(
            "post",
            "/admin/v1/audit/checkpoint",
            "/admin/v1/audit/checkpoint",
        ),
        case(
            "get",
            "/admin/v1/audit/checkpoint",
            "/admin/v1/audit/checkpoint",
        ),
        case(
            "get",
            "/admin/v1/audit/checkpoints",
            "/admin/v1/audit/checkpoints",
        ),
        case(
            "get",
            "/admin/v1/audit/records/0",
            "/admin/v1/audit/records/{id}",
        ),
        case(
            "get",
            "/admin/v1/audit/proof/inclusion?id=0",
            "/admin/v1/audit/proof/inclusion",
        ),
        case("get", "/admin/v1/inventory", "/admin/v1/inventory"),
        case("get", "/admin/v1/approvals", "/admin/v1/approvals"),
        case("get", "/admin/v1/grants", "/admin/v1/grants"),
        case("get", "/admin/v1/policies", "/admin/v1/policies"),
        case(
            "get",
            "/admin/v1/policies/1",
            "/admin/v1/policies/{version}",
        ),
        case(
            "get",
            "/admin/v1/policies/shadow",
            "/admin/v1/policies/shadow",
        ),
        case("get", "/admin/v1/tools", "/admin/v1/tools"),
        case("get", "/admin/v1/alerts", "/admin/v1/alerts"),
        case(
            "get",
            "/admin/v1/tokens/revoked",
            "/admin/v1/tokens/revoked",
        ),
        case(
            "get",
            "/admin/v1/users/disabled",
            "/admin/v1/users/disabled",
        ),
        case("get", "/admin/v1/oauth/clients", "/admin/v1/oauth/clients"),
        case("get", "/admin/v1/secrets", "/admin/v1/secrets"),
        case("get", "/admin/v1/vault", "/admin/v1/vault"),
        case("get", "/admin/v1/transit/keys", "/admin/v1/transit/keys"),
        // Errors: the documented error shape.
        case("get", "/admin/v1/agents/nobody", "/admin/v1/agents/{name}"),
        Case {
            token: false,
            ..case("get", "/admin/v1/agents", "/admin/v1/agents")
        },
    ];
    cases.push(Case {
        body: Some(json!({ "name": "ops", "role": "operator" })),
        ..case("post", "/admin/v1/admin-tokens", "/admin/v1/admin-tokens")
    });
    cases.push(Case {
        body: Some(json!({ "name": "ops-cert", "role": "auditor", "csr": csr })),
        ..case(
            "post",
            "/admin/v1/admin-certificates",
            "/admin/v1/admin-certificates",
        )
    });
    cases.push(Case {
        body: Some(json!({ "agent": "bot", "action": "GET", "resource": "demo" })),
        ..case(
            "post",
            "/admin/v1/policies/explain",
            "/admin/v1/policies/explain",
        )
    });
    let with = |c: Case, body: Value| Case {
        body: Some(body),
        ..c
    };
    cases.extend([
        with(
            case("post", "/admin/v1/secrets", "/admin/v1/secrets"),
            json!({ "name": "db", "value": "s3cret" }),
        ),
        case("get", "/admin/v1/secrets/db", "/admin/v1/secrets/{name}"),
        with(
            case(
                "post",
                "/admin/v1/secrets/db/rotate",
                "/admin/v1/secrets/{name}/rotate",
            ),
            json!({ "value": "n3w" }),
        ),
        with(
            case(
                "post",
                "/admin/v1/secrets/db/settings",
                "/admin/v1/secrets/{name}/settings",
            ),
            json!({ "grace_period_s": 60 }),
        ),
        case("delete", "/admin/v1/secrets/db", "/admin/v1/secrets/{name}"),
        with(
            case("post", "/admin/v1/transit/keys", "/admin/v1/transit/keys"),
            json!({ "name": "pay" }),
        ),
        with(
            case(
                "post",
                "/admin/v1/transit/encrypt",
                "/admin/v1/transit/encrypt",
            ),
            json!({ "key": "pay", "plaintext": "aGVsbG8=" }),
        ),
        with(
            case(
                "post",
                "/admin/v1/transit/keys/pay/rotate",
                "/admin/v1/transit/keys/{name}/rotate",
            ),
            json!({}),
        ),
        with(
            case("post", "/admin/v1/users/disable", "/admin/v1/users/disable"),
            json!({ "subject": "mallory" }),
        ),
        with(
            case("post", "/admin/v1/users/enable", "/admin/v1/users/enable"),
            json!({ "subject": "mallory" }),
        ),
        with(
            case("post", "/admin/v1/tokens/revoke", "/admin/v1/tokens/revoke"),
            json!({ "jti": "j-1" }),
        ),
        case(
            "delete",
            "/admin/v1/session/step-up",
            "/admin/v1/session/step-up",
        ),
        case(
            "get",
            "/admin/v1/audit/proof/consistency?from=1",
            "/admin/v1/audit/proof/consistency",
        ),
    ]);
    cases.push(case(
        "post",
        "/admin/v1/admin-tokens/ops/rotate",
        "/admin/v1/admin-tokens/{name}/rotate",
    ));
    cases.push(case(
        "post",
        "/admin/v1/admin-tokens/ops/revoke",
        "/admin/v1/admin-tokens/{name}/revoke",
    ));

    let document: Value = http
        .get(format!("https://{}{v}/openapi.json", server.admin))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut calls = Vec::new();
    let mut statuses = Vec::new();
    for c in &cases {
        let url = format!("https://{}{}", server.admin, c.path);
        let mut request = match c.method {
            "get" => http.get(&url),
            "post" => http.post(&url),
            "delete" => http.delete(&url),
            other => panic!("{other}"),
        };
        if c.token {
            request = request.bearer_auth(&token);
        }
        if let Some(body) = &c.body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        statuses.push(format!("{} {} {status}", c.method, c.path));
        calls.push(json!({
            "method": c.method,
            "path": c.template,
            "status": status,
            "answer": answer,
        }));
    }
    // The calls did what they should: mostly successes, and the errors.
    let failed = statuses
        .iter()
        .filter(|s| !(s.ends_with(" 200") || s.ends_with(" 201")))
        .count();
    // (The third: removing a passkey that does not exist, 404.)
    assert_eq!(failed, 3, "only the three error cases fail: {statuses:#?}");
    // A broken answer (the session without its role) must not validate.
    let mut broken = calls
        .iter()
        .find(|c| c["path"] == "/admin/v1/session")
        .unwrap()
        .clone();
    broken["answer"].as_object_mut().unwrap().remove("role");
    broken["expect_invalid"] = json!(true);
    calls.push(broken);
    let file = server.path().join("openapi-cases.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&json!({ "document": document, "calls": calls })).unwrap(),
    )
    .unwrap();
    let output = run_python(SCRIPT, &file, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "answers do not match their documented schemas:\n{stdout}\n{}\ncalls: {statuses:#?}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(found["checked"], calls.len(), "{found}");
    eprintln!("openapi answers: {found}");
}
