//! MCP authorization's code flow in cluster mode (issue 20 on issue 18's
//! cluster): three real `portcullis serve` replicas on one fresh PostgreSQL
//! database. The login page opened on A is answered on B and its code
//! redeemed on C, by a stock client (`tests/oauth/across_replicas.py`,
//! `requests`); a page, and a code, work once whichever replicas they
//! reach. Skipped, visibly, when no PostgreSQL server answers on
//! 127.0.0.1:5432 or python3 lacks the OAuth clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis_store::testing::TestDb;
use serde_json::Value;
use support::authorization::{enrol, next_code, python_with_flow_clients};
use support::cluster::*;
use support::*;

const FLOW_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/oauth/across_replicas.py"
);

/// The agent MCP hosts act through may use the route; so may any user
/// (a delegated request needs both).
const POLICIES: &str = r#"
@id("hosts") permit(principal in Role::"host", action, resource == Route::"api");
@id("users") permit(principal is User, action, resource);
"#;

/// A replica with the authorization endpoint (open registration for
/// loopback redirect URIs) and one route, answered by the built-in demo.
fn flow_config(dir: &Path) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        portcullis_policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    std::fs::write(policies.join("main.cedar"), POLICIES).unwrap();
    let routes = format!(
        "[policy]\ndir = \"{}\"\n\
         [identity]\ntoken_issuer = \"{ISSUER}\"\n\
         [identity.authorization]\nagent = \"mcp-hosts\"\ndynamic_registration = true\nregistration_redirect_hosts = [\"127.0.0.1\"]\n\
         [audit]\nfail_closed_after_ms = 10000\n{}",
        policies.display(),
        route("api", "/api", "builtin:demo", "internal")
    );
    config(dir, &routes, "")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authorization_started_on_one_replica_is_answered_on_a_second_and_redeemed_on_a_third() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    if !tokio::task::block_in_place(python_with_flow_clients) {
        return;
    }
    install_crypto();
    let (a, b) = two_replicas(&db.url(), flow_config, &[]).await;
    let dir_c = provisioned_like(&a);
    let cfg_c = flow_config(dir_c.path());
    let c = start_replica(dir_c, cfg_c, &db.url(), &[]).await;
    let replicas = [&a, &b, &c];

    // The principal agent, enrolled on A: wait until every replica knows it
    // (a revoked or unknown agent's flow issues nothing).
    let (cert, key) = tokio::task::block_in_place(|| a.create_agent("mcp-hosts", &["host"]));
    let agent = client(&a.ca_pem(), Some((&cert, &key)));
    for server in replicas {
        let started = Instant::now();
        loop {
            let status = agent
                .get(server.url("/api/items"))
                .send()
                .await
                .unwrap()
                .status();
            if status == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a replica never accepted the agent: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Local users, enrolled on A (the store is shared: B and C check
    // their codes, each used once across the cluster).
    let admin = client(&a.ca_pem(), None);
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    let alice = enrol(&a, &admin, "alice", None).await;
    let code = next_code(&alice, last.entry("alice").or_default());
    let bob = enrol(&a, &admin, "bob", Some(("alice", code))).await;

    let ca = a.path().join("ca-for-clients.pem");
    std::fs::write(&ca, a.ca_pem()).unwrap();
    let flow = serde_json::json!({
        "ca": ca,
        "api_resource": format!("{ISSUER}/api"),
        "users": { "alice": alice, "bob": bob },
        "pool": ["alice", "bob"],
        "last": last,
        "replicas": replicas.map(|s| serde_json::json!({
            "base": s.url(""),
            "api_url": s.url("/api/items"),
        })),
    });
    let flow_file = a.path().join("across.json");
    std::fs::write(&flow_file, flow.to_string()).unwrap();
    // Bounded: a dozen requests, and at most a wait for the next TOTP window.
    let output = tokio::task::spawn_blocking(move || {
        run_python(FLOW_SCRIPT, &flow_file, Duration::from_secs(120))
    })
    .await
    .unwrap();
    let logs = || {
        replicas
            .map(|s| s.stderr.lock().unwrap().clone())
            .join("\n----\n")
    };
    assert!(
        output.status.success(),
        "across_replicas.py failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        logs()
    );
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("{got:#}");

    // A -> B -> C: the page from A answered on B; the code from B redeemed
    // on C; the token good on A.
    assert_eq!(got["answered_on_b"], 302, "{got}\n{}", logs());
    assert_eq!(got["iss"], ISSUER, "{got}");
    assert_eq!(got["redeemed_on_c"], 200, "{got}\n{}", logs());
    assert_eq!(got["token_type"], "Bearer", "{got}");
    assert_eq!(got["api_on_a"][0], 200, "{got}");
    // Once: the page answered on B is gone on C, the code redeemed on C is
    // refused on A, and that reuse revoked what C issued (seen on B).
    assert_eq!(
        got["answered_again_on_c"],
        serde_json::json!([400, "bad_request"]),
        "{got}"
    );
    assert_eq!(
        got["redeemed_again_on_a"],
        serde_json::json!([400, "invalid_grant"]),
        "{got}"
    );
    assert_eq!(got["refresh_on_b_after_reuse"][0], 400, "{got}");
    // One code on three replicas at once: one token, five refusals.
    assert_eq!(
        got["race"],
        serde_json::json!([200, 400, 400, 400, 400, 400]),
        "{got}"
    );

    // Nothing of a login or a code is in the store in the clear: rows are
    // keyed by a hash and sealed (the users' names are in the payloads).
    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id_sha256, kind, payload FROM pending_ceremonies WHERE kind LIKE 'oauth_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        rows.iter().any(|(_, kind, _)| kind == "oauth_code"),
        "{rows:?}"
    );
    for (key, _, payload) in &rows {
        assert_eq!(key.len(), 64);
        assert!(
            !payload.contains("alice") && !payload.contains("bob") && !payload.contains("/api"),
            "{payload}"
        );
    }
}
