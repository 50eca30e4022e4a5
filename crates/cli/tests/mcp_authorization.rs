//! MCP authorization discovery against the real binary: each `kind = "mcp"`
//! route is an RFC 9728 protected resource, its 401s name the metadata in
//! `WWW-Authenticate: Bearer resource_metadata="…"`, and the metadata names the
//! gateway as the authorization server. Other routes are no such resource.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use serde_json::Value;
use support::authorization::{enrol, next_code, python_with_flow_clients};
use support::*;

fn challenges(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_routes_are_protected_resources() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    // Nothing is forwarded: every request below is refused or answered by
    // the gateway itself.
    let routes = format!(
        "{}[[routes]]\nname = \"notes\"\nkind = \"mcp\"\npath_prefix = \"/mcp/notes\"\nupstream = \"http://127.0.0.1:9/mcp\"\nclassification = \"internal\"\n",
        route("api", "/api", "http://127.0.0.1:9", "public")
    );
    let cfg = config(dir.path(), &routes, "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let client = client(&server.ca_pem(), None);
    let metadata_url = server.url("/.well-known/oauth-protected-resource/mcp/notes");

    // An MCP client's first request, without credentials.
    let response = client
        .post(server.url("/mcp/notes"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let c = challenges(&response);
    assert_eq!(
        c[0],
        format!(r#"Bearer realm="portcullis", resource_metadata="{metadata_url}""#),
        "{c:?}"
    );
    assert!(
        c[1].starts_with(r#"DPoP realm="portcullis", algs="#),
        "{c:?}"
    );
    assert!(response.headers().contains_key("dpop-nonce"));
    // Deeper paths of the route point at the same resource.
    let response = client
        .get(server.url("/mcp/notes/sse"))
        .send()
        .await
        .unwrap();
    assert!(
        challenges(&response)[0].contains(&metadata_url),
        "{:?}",
        challenges(&response)
    );
    // An HTTP route's 401 names no resource metadata.
    let response = client.get(server.url("/api/x")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(challenges(&response)[0], r#"Bearer realm="portcullis""#);

    // The metadata (RFC 9728), public like the server's own.
    let response = client.get(&metadata_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let meta: Value = response.json().await.unwrap();
    assert_eq!(meta["resource"], server.url("/mcp/notes"));
    assert_eq!(meta["resource_name"], "notes");
    assert_eq!(meta["authorization_servers"][0], server.url(""));
    assert_eq!(meta["bearer_methods_supported"][0], "header");
    assert_eq!(meta["dpop_signing_alg_values_supported"][2], "ES256");
    // Only an MCP route's own prefix is a resource.
    for path in [
        "/.well-known/oauth-protected-resource/api",
        "/.well-known/oauth-protected-resource/mcp/notes/deeper",
        "/.well-known/oauth-protected-resource",
    ] {
        let response = client.get(server.url(path)).send().await.unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (404, Some("route_not_found")),
            "{path}"
        );
    }
    // The server metadata the resource points to.
    let as_meta: Value = client
        .get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(as_meta["issuer"], meta["authorization_servers"][0]);
}

const FLOW_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/oauth/authorization_code.py"
);
const SCHEMA: &str = include_str!("../../policy/defaults/schema.cedarschema");

/// The agent MCP hosts act through is allowed the MCP route and reads on
/// the HTTP route; users anything, but `dave` nothing (a request needs both).
const FLOW_POLICIES: &str = r#"
@id("hosts-mcp") permit(principal in Role::"host", action, resource in Route::"notes");
@id("hosts-read") permit(principal in Role::"host", action in Action::"read", resource == Route::"api");
@id("users") permit(principal is User, action, resource);
@id("not-dave") forbid(principal == User::"dave", action, resource);
"#;

#[tokio::test(flavor = "multi_thread")]
async fn stock_mcp_hosts_connect_with_the_authorization_code_flow() {
    if !tokio::task::block_in_place(python_with_flow_clients) {
        return;
    }
    install_crypto();
    let auth_log = tempfile::NamedTempFile::new().unwrap();
    let (mcp, mcp_port, notes) = tokio::task::block_in_place(|| {
        let port = free_port();
        let notes = tempfile::NamedTempFile::new().unwrap();
        let mut py = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/mcp/guard_server.py"
            ))
            .arg(port.to_string())
            .arg(notes.path())
            .arg("json")
            .arg(auth_log.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut py);
        (Killed(py), port, notes)
    });
    let (upstream, gate) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(policies.join("flow.cedar"), FLOW_POLICIES).unwrap();
    let routes = format!(
        "[policy]\ndir = \"policies\"\n\
         [identity.authorization]\nagent = \"mcp-hosts\"\ndynamic_registration = true\nregistration_redirect_hosts = [\"127.0.0.1\", \"localhost\"]\n\
         [[routes]]\nname = \"notes\"\nkind = \"mcp\"\npath_prefix = \"/mcp/notes\"\nupstream = \"http://127.0.0.1:{mcp_port}/mcp\"\nclassification = \"internal\"\n{}",
        route("api", "/api", &format!("http://{upstream}"), "internal")
    );
    let cfg = config(dir.path(), &routes, "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    tokio::task::block_in_place(|| server.create_agent("mcp-hosts", &["host"]));
    // Local users: the first enrols with the admin token alone, the others
    // with an enrolled user's code.
    let admin = client(&server.ca_pem(), None);
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    let alice = enrol(&server, &admin, "alice", None).await;
    let mut secrets = serde_json::Map::new();
    secrets.insert("alice".into(), alice.clone().into());
    for (name, approver) in [("bob", "alice"), ("carol", "alice"), ("dave", "bob")] {
        let secret_of = secrets[approver].as_str().unwrap().to_string();
        let code = next_code(&secret_of, last.entry(approver).or_default());
        let secret = enrol(&server, &admin, name, Some((approver, code))).await;
        secrets.insert(name.into(), secret.into());
    }
    let ca = server.path().join("ca-for-clients.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let flow = serde_json::json!({
        "ca": ca,
        "base": server.url(""),
        "mcp_url": server.url("/mcp/notes"),
        "api_url": server.url("/api/items"),
        "api_resource": server.url("/api"),
        "admin_url": format!("https://{}", server.admin),
        "admin_token": server.admin_token(),
        "users": secrets,
        "pool": ["alice", "bob", "carol"],
        "last": last,
        "forbidden_user": "dave",
    });
    let flow_file = server.path().join("flow.json");
    std::fs::write(&flow_file, flow.to_string()).unwrap();
    // Bounded: a few dozen local requests, and at most a few waits for the
    // next TOTP window.
    let output = tokio::task::spawn_blocking(move || {
        run_python(FLOW_SCRIPT, &flow_file, std::time::Duration::from_secs(150))
    })
    .await
    .unwrap();
    drop(gate);
    assert!(
        output.status.success(),
        "authorization_code.py failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.stderr.lock().unwrap()
    );
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("{got:#}");

    // The MCP SDK connected with nothing but the URL: discovery, dynamic
    // registration, login, code + PKCE, then MCP with the bearer token.
    let sdk = &got["mcp_sdk"];
    assert_eq!(sdk["is_error"], false, "{got}");
    assert_eq!(sdk["result"], "saved", "{got}");
    assert_eq!(sdk["token_type"], "Bearer", "{got}");
    assert_eq!(sdk["has_refresh"], true, "{got}");
    assert_eq!(sdk["client_name_on_page"], true, "{got}");
    assert!(
        std::fs::read_to_string(notes.path())
            .unwrap()
            .lines()
            .any(|l| l == "from-mcp-sdk")
    );
    // The bearer token never reaches the MCP server.
    let seen = std::fs::read_to_string(auth_log.path()).unwrap();
    assert!(!seen.is_empty() && !seen.contains("Bearer"), "{seen}");

    // authlib: code + PKCE + refresh on the HTTP route; the token is refused
    // on the MCP route (another resource); refresh rotates.
    assert_eq!(
        got["authlib"],
        serde_json::json!({"token_type": "Bearer", "expires_in": 300, "scope": "mcp",
            "api": 200, "other_resource": 401, "rotated": true, "api_refreshed": 200}),
        "{got}"
    );
    // Reuse of a refresh token revokes the family and its access tokens.
    assert_eq!(
        got["refresh_reuse"],
        serde_json::json!({"reuse": [400, "invalid_grant"], "successor": [400, "invalid_grant"], "access_after": 401}),
        "{got}"
    );
    let r = &got["refusals"];
    let expect = serde_json::json!({
        "wrong_verifier": [400, "invalid_grant"],
        "spent_code": [400, "invalid_grant"],
        "reused_code": {"first": 200, "before": 200, "second": [400, "invalid_grant"],
            "after": [401, "invalid_token"], "refresh_after": [400, "invalid_grant"]},
        "redirect_mismatch_token": [400, "invalid_grant"],
        "redirect_mismatch_authorize": [400, "invalid_redirect_uri", null],
        "resource_no_route": [302, "invalid_target"],
        "resource_elsewhere": [302, "invalid_target"],
        "pkce_plain": [302, "invalid_request"],
        "bad_scope": [302, "invalid_scope"],
        "denied": [302, "access_denied", true],
        "wrong_totp": [401, null],
        "register_http_remote": "invalid_redirect_uri",
        "register_secret": "invalid_client_metadata",
        "register_custom_scheme": "invalid_redirect_uri",
        "register_too_large": [400, "invalid_client_metadata"],
    });
    assert_eq!(r, &expect, "{got}");
    assert_eq!(
        got["revoked_client"],
        serde_json::json!({"revoke": 200, "before": 200, "after": 401,
            "refresh": [401, "invalid_client"], "authorize": [401, "invalid_client"],
            "listed_revoked": true}),
        "{got}"
    );
    // A client that sends DPoP proofs gets DPoP-bound tokens, and a refresh
    // of its family needs a proof of the same key.
    assert_eq!(
        got["dpop"],
        serde_json::json!({"token": [200, "DPoP"], "as_dpop": 200, "as_bearer": 401,
            "refresh_with_proof": [200, "DPoP"],
            "refresh_without_proof": [400, "invalid_dpop_proof"]}),
        "{got}"
    );
    // The operator's view: `portcullis admin oauth-client list`.
    let listed = tokio::task::block_in_place(|| server.cli(&["admin", "oauth-client", "list"]));
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("authlib host") && listed.contains("revoked") && listed.contains("active"),
        "{listed}"
    );
    // The user is decided too: a user policy forbids, whatever the agent may.
    assert_eq!(
        got["forbidden_user"],
        serde_json::json!([403, "forbidden"]),
        "{got}"
    );

    // Every step is in the audit log: registrations, logins, issuances and
    // the refusals; the MCP calls as the agent for the user, unbound.
    let records = tokio::task::block_in_place(|| server.audit(1000));
    let of = |resource: &str, outcome: &str| {
        records
            .iter()
            .filter(|r| r["resource"] == resource && r["outcome"] == outcome)
            .count()
    };
    assert!(of("oauth2_register", "allow") >= 3, "registrations");
    assert!(of("oauth2_register", "deny") >= 4, "refused registrations");
    assert!(of("oauth2_authorize", "allow") >= 7, "logins");
    assert!(
        of("oauth2_authorize", "deny") >= 5,
        "refused authorizations"
    );
    assert!(of("oauth2_token", "deny") >= 6, "refused grants");
    let issued: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["resource"] == "oauth2_token"
                && r["outcome"] == "allow"
                && r["credential"]
                    .as_str()
                    .is_some_and(|c| c.contains("cnf=none"))
        })
        .collect();
    assert!(issued.len() >= 6, "{issued:?}");
    assert!(records.iter().any(|r| {
        r["resource"] == "oauth2_token"
            && r["outcome"] == "allow"
            && r["credential"]
                .as_str()
                .is_some_and(|c| c.contains("cnf=dpop"))
    }));
    assert!(issued.iter().all(|r| r["principal"] == "mcp-hosts"));
    let call = records
        .iter()
        .find(|r| {
            r["resource"]
                .as_str()
                .is_some_and(|x| x.ends_with("save_note"))
                && r["outcome"] == "allow"
        })
        .unwrap_or_else(|| panic!("no tools/call record"));
    let credential = call["credential"].as_str().unwrap();
    assert_eq!(call["principal"], "mcp-hosts", "{call}");
    assert!(credential.contains("cnf=none on behalf of"), "{call}");
    assert_eq!(call["policies"], serde_json::json!(["hosts-mcp"]), "{call}");
    // The user's side decides too: dave's request names the user's forbid.
    let dave = records
        .iter()
        .find(|r| {
            r["credential"]
                .as_str()
                .is_some_and(|c| c.ends_with("cnf=none on behalf of dave"))
        })
        .unwrap_or_else(|| panic!("no record of dave's request"));
    assert_eq!(
        (&dave["outcome"], &dave["policies"]),
        (
            &serde_json::json!("deny"),
            &serde_json::json!(["user:not-dave"])
        ),
        "{dave}"
    );
    // No secret in the log: no code, token or TOTP value.
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("eyJ"), "a token in the audit log");
    drop(mcp);
}
