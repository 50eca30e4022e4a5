//! How MCP hosts get a client id, against the real binary: RFC 7591
//! registration, off by default and open only to what its allow-lists
//! admit; Client ID Metadata Documents (an https `client_id` the gateway
//! fetches, here from a TLS server of the test on 127.0.0.1); and the
//! TypeScript MCP SDK's OAuth client and MCP Inspector's CLI (npm, pinned)
//! connecting with nothing but the URL, or a bearer header.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::authorization::{CALLBACK, browser, enrol, next_code, register, token_for};
use support::client_metadata::{DOCS_NAME, DocServer, state_with_ca};
use support::*;

const SCHEMA: &str = include_str!("../../policy/defaults/schema.cedarschema");
const TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp");

/// Hosts act through `mcp-hosts` on the MCP route; every user may.
const POLICIES: &str = r#"
@id("hosts-mcp") permit(principal in Role::"host", action, resource in Route::"notes");
@id("users") permit(principal is User, action, resource);
"#;

/// The `error` of an OAuth endpoint's refusal (RFC 6749 §5.2).
async fn oauth_error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or("").to_string())
}

/// The authorization section of a config, with the MCP route `notes`.
fn authorization_config(dir: &Path, authorization: &str, mcp_upstream: &str) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(policies.join("hosts.cedar"), POLICIES).unwrap();
    config(
        dir,
        &format!(
            "[policy]\ndir = \"policies\"\n[identity.authorization]\nagent = \"mcp-hosts\"\n{authorization}\n\
             [[routes]]\nname = \"notes\"\nkind = \"mcp\"\npath_prefix = \"/mcp/notes\"\nupstream = \"{mcp_upstream}\"\nclassification = \"internal\"\n"
        ),
        "",
    )
}

async fn as_metadata(server: &Server, http: &reqwest::Client) -> Value {
    http.get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The audit log once `ready` holds of it (the writer commits in batches):
/// bounded, the last read is returned either way for the assertion to show.
fn audit_until(server: &Server, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut records = server.audit(500);
    for _ in 0..50 {
        if ready(&records) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        records = server.audit(500);
    }
    records
}

const REGISTRATION_TOKEN: &str = "initial-access-token-for-tests";

#[tokio::test(flavor = "multi_thread")]
async fn dynamic_registration_is_off_by_default_and_allow_listed() {
    install_crypto();
    // Off: nothing registers, and the metadata offers no endpoint.
    let dir = tempfile::tempdir().unwrap();
    let cfg = authorization_config(dir.path(), "", "http://127.0.0.1:9/mcp");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let http = browser(&server);
    let meta = as_metadata(&server, &http).await;
    assert!(meta.get("registration_endpoint").is_none(), "{meta}");
    assert!(
        meta.get("client_id_metadata_document_supported").is_none(),
        "{meta}"
    );
    let r = http
        .post(server.url("/oauth2/register"))
        .json(&json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        oauth_error(r).await,
        (400, "invalid_client_metadata".into())
    );
    drop(server);

    // Open, behind all three allow-lists.
    let dir = tempfile::tempdir().unwrap();
    let cfg = authorization_config(
        dir.path(),
        "dynamic_registration = true\nregistration_redirect_hosts = [\"127.0.0.1\"]\n\
         registration_software_ids = [\"allowed-host\"]\nregistration_token_env = \"TEST_REGISTRATION_TOKEN\"\n",
        "http://127.0.0.1:9/mcp",
    );
    let server = tokio::task::spawn_blocking(move || {
        Server::start_with_env(
            dir,
            Some(&cfg),
            &[("TEST_REGISTRATION_TOKEN", REGISTRATION_TOKEN)],
        )
    })
    .await
    .unwrap();
    let http = browser(&server);
    let meta = as_metadata(&server, &http).await;
    assert_eq!(
        meta["registration_endpoint"],
        server.url("/oauth2/register"),
        "{meta}"
    );
    let attempt = |token: Option<&str>, body: Value| {
        let mut r = http.post(server.url("/oauth2/register")).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let good = json!({"redirect_uris": [CALLBACK], "software_id": "allowed-host",
        "client_name": "allowed", "token_endpoint_auth_method": "none"});
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let mut got = serde_json::Map::new();
    for (name, token, body) in [
        ("no_token", None, good.clone()),
        ("wrong_token", Some("not-the-token"), good.clone()),
        (
            "other_software",
            Some(REGISTRATION_TOKEN),
            with("software_id", json!("other-host")),
        ),
        (
            "no_software",
            Some(REGISTRATION_TOKEN),
            with("software_id", Value::Null),
        ),
        (
            "other_redirect_host",
            Some(REGISTRATION_TOKEN),
            with("redirect_uris", json!(["https://app.example.com/cb"])),
        ),
    ] {
        let (status, error) = oauth_error(attempt(token, body).await.unwrap()).await;
        got.insert(name.into(), json!([status, error]));
    }
    assert_eq!(
        Value::Object(got),
        json!({
            "no_token": [401, "invalid_token"],
            "wrong_token": [401, "invalid_token"],
            "other_software": [400, "invalid_client_metadata"],
            "no_software": [400, "invalid_client_metadata"],
            "other_redirect_host": [400, "invalid_redirect_uri"],
        })
    );
    let r = attempt(Some(REGISTRATION_TOKEN), good.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let client: Value = r.json().await.unwrap();
    // The admitted client's login page opens.
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", client["client_id"].as_str().unwrap()),
        ("redirect_uri", CALLBACK),
        ("code_challenge", &"a".repeat(43)),
        ("code_challenge_method", "S256"),
        ("resource", &server.url("/mcp/notes")),
    ])
    .unwrap();
    let page = http
        .get(server.url(&format!("/oauth2/authorize?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    // Every refusal is recorded, and no token value is.
    let of = |records: &[Value], outcome: &str| {
        records
            .iter()
            .filter(|r| r["resource"] == "oauth2_register" && r["outcome"] == outcome)
            .count()
    };
    let records = tokio::task::block_in_place(|| {
        audit_until(&server, |r| of(r, "allow") + of(r, "deny") >= 6)
    });
    assert_eq!(
        (of(&records, "allow"), of(&records, "deny")),
        (1, 5),
        "{records:?}"
    );
    assert!(
        !serde_json::to_string(&records)
            .unwrap()
            .contains(REGISTRATION_TOKEN)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_id_metadata_documents_are_fetched_checked_and_cached() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let ca = state_with_ca(dir.path());
    let docs = DocServer::start(&ca, CALLBACK).await;
    // The documents host by name too: its address configured, not resolved.
    let by_name = format!("client_metadata_addresses = {{ \"{DOCS_NAME}\" = [\"127.0.0.1\"] }}\n");
    let cfg = authorization_config(
        dir.path(),
        &format!(
            "client_metadata_hosts = [\"127.0.0.1\", \"{DOCS_NAME}\"]\nclient_metadata_private_addresses = true\n{by_name}"
        ),
        "http://127.0.0.1:9/mcp",
    );
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    tokio::task::block_in_place(|| server.create_agent("mcp-hosts", &["host"]));
    let http = browser(&server);
    let meta = as_metadata(&server, &http).await;
    assert_eq!(
        meta["client_id_metadata_document_supported"], true,
        "{meta}"
    );
    assert!(meta.get("registration_endpoint").is_none(), "{meta}");

    // The whole flow with the document's URL as the client id.
    let secret = enrol(&server, &http, "alice", None).await;
    let mut last = 0;
    let client_id = docs.url("/client.json");
    let resource = server.url("/mcp/notes");
    let code = tokio::task::block_in_place(|| next_code(&secret, &mut last));
    let token = token_for(&server, &http, &client_id, &resource, "alice", &code).await;
    assert_eq!(token["token_type"], "Bearer", "{token}");
    assert!(token["refresh_token"].is_string(), "{token}");
    // The refresh grant checks the client again: from the cache.
    let refreshed = http
        .post(server.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", "refresh_token"),
                ("refresh_token", token["refresh_token"].as_str().unwrap()),
                ("client_id", &client_id),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    assert_eq!(docs.fetches("/client.json"), 1, "fetched once, then cached");

    // Refused before any login page: answered here, never redirected.
    let authorize = |client_id: String, redirect: &'static str| {
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", redirect),
            ("code_challenge", &"a".repeat(43)),
            ("code_challenge_method", "S256"),
            ("resource", &resource),
        ])
        .unwrap();
        http.get(server.url(&format!("/oauth2/authorize?{query}")))
            .send()
    };
    let port = docs.base.rsplit(':').next().unwrap().to_string();
    let mut got = serde_json::Map::new();
    for (name, id, redirect) in [
        (
            "unlisted_redirect",
            docs.url("/client.json"),
            "http://127.0.0.1:47914/other",
        ),
        ("wrong_client_id", docs.url("/wrong-id.json"), CALLBACK),
        ("redirected", docs.url("/moved.json"), CALLBACK),
        ("too_large", docs.url("/big.json"), CALLBACK),
        ("with_secret", docs.url("/secret.json"), CALLBACK),
        ("not_found", docs.url("/none.json"), CALLBACK),
        (
            "host_not_listed",
            format!("https://localhost:{port}/client.json"),
            CALLBACK,
        ),
        (
            "plain_http",
            format!("http://127.0.0.1:{port}/client.json"),
            CALLBACK,
        ),
        ("no_path", docs.url("/"), CALLBACK),
    ] {
        let (status, error) = oauth_error(authorize(id, redirect).await.unwrap()).await;
        got.insert(name.into(), json!([status, error]));
    }
    assert_eq!(
        Value::Object(got),
        json!({
            "unlisted_redirect": [400, "invalid_redirect_uri"],
            "wrong_client_id": [401, "invalid_client"],
            "redirected": [401, "invalid_client"],
            "too_large": [401, "invalid_client"],
            "with_secret": [401, "invalid_client"],
            "not_found": [401, "invalid_client"],
            "host_not_listed": [401, "invalid_client"],
            "plain_http": [401, "invalid_client"],
            "no_path": [401, "invalid_client"],
        })
    );
    // By name: resolved to its configured address, fetched, the certificate
    // checked against the name.
    let named = authorize(docs.named_url("/named-client.json"), CALLBACK)
        .await
        .unwrap();
    assert_eq!(named.status(), 200, "{:?}", named.text().await);
    assert_eq!(docs.fetches("/named-client.json"), 1);
    // The redirect was not followed; refusals are cached too.
    assert_eq!(docs.fetches("/client.json"), 1);
    assert_eq!(docs.fetches("/moved.json"), 1);
    let _ = authorize(docs.url("/wrong-id.json"), CALLBACK)
        .await
        .unwrap();
    assert_eq!(docs.fetches("/wrong-id.json"), 1);
    // The issued tokens name the client by its URL in the audit log.
    let issued = |records: &[Value]| {
        records.iter().any(|r| {
            r["resource"] == "oauth2_token"
                && r["outcome"] == "allow"
                && r["credential"]
                    .as_str()
                    .is_some_and(|c| c.contains(&client_id))
        })
    };
    let records = tokio::task::block_in_place(|| audit_until(&server, issued));
    assert!(issued(&records), "{records:?}");
    drop(server);

    // Without `client_metadata_private_addresses`, the same documents (from
    // a server the gateway trusts) are never fetched: not by address
    // literal, nor by a name resolving to loopback (by DNS, or by the
    // addresses configured for it).
    let dir = tempfile::tempdir().unwrap();
    support::client_metadata::write_ca(dir.path(), &ca);
    let cfg = authorization_config(
        dir.path(),
        &format!(
            "client_metadata_hosts = [\"127.0.0.1\", \"localhost\", \"{DOCS_NAME}\"]\n{by_name}"
        ),
        "http://127.0.0.1:9/mcp",
    );
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let http = browser(&server);
    let resource = server.url("/mcp/notes");
    for id in [
        docs.url("/client.json"),
        format!("https://localhost:{port}/client.json"),
        docs.named_url("/named-client.json"),
    ] {
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", &id),
            ("redirect_uri", CALLBACK),
            ("code_challenge", &"a".repeat(43)),
            ("code_challenge_method", "S256"),
            ("resource", &resource),
        ])
        .unwrap();
        let r = http
            .get(server.url(&format!("/oauth2/authorize?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(oauth_error(r).await, (401, "invalid_client".into()), "{id}");
    }
    assert_eq!(
        (
            docs.fetches("/client.json"),
            docs.fetches("/named-client.json")
        ),
        (1, 1),
        "a private address was fetched"
    );
}

/// The TypeScript SDK and Inspector, installed once per machine.
fn ts_clients() -> Option<PathBuf> {
    support::npm_installed(
        &format!("{TESTS}/install_ts_clients.sh"),
        "portcullis-test-mcp-ts-clients",
        "TypeScript MCP clients (the SDK and Inspector)",
    )
}

/// The redirect URI the TypeScript host uses.
const TS_CALLBACK: &str = "http://127.0.0.1:47915/callback";

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_sdk_and_inspector_connect() {
    if !tokio::task::block_in_place(support::parity_rig::python_with_mcp) {
        return;
    }
    let Some(modules) = tokio::task::block_in_place(ts_clients) else {
        return;
    };
    install_crypto();
    let (mcp, mcp_port, notes) = tokio::task::block_in_place(|| {
        support::parity_rig::start_mcp(support::parity_rig::McpAnswers::Json)
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = state_with_ca(dir.path());
    let docs = DocServer::start(&ca, TS_CALLBACK).await;
    let cfg = authorization_config(
        dir.path(),
        "dynamic_registration = true\nregistration_redirect_hosts = [\"127.0.0.1\"]\n\
         client_metadata_hosts = [\"127.0.0.1\"]\nclient_metadata_private_addresses = true\n",
        &format!("http://127.0.0.1:{mcp_port}/mcp"),
    );
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    tokio::task::block_in_place(|| server.create_agent("mcp-hosts", &["host"]));
    let http = browser(&server);
    let secret = enrol(&server, &http, "alice", None).await;
    let mut last = 0;
    let mut code = || tokio::task::block_in_place(|| next_code(&secret, &mut last));
    let ca_file = server.path().join("gateway-ca.pem");
    std::fs::write(&ca_file, server.ca_pem()).unwrap();
    let url = server.url("/mcp/notes");
    let flow = json!({
        "url": url, "user": "alice", "callback": TS_CALLBACK,
        "metadata_url": docs.url("/ts-client.json"),
        "codes": {"dcr": code(), "cimd": code()},
    });
    let flow_file = server.path().join("ts-flow.json");
    std::fs::write(&flow_file, flow.to_string()).unwrap();
    // ESM resolves packages from the script's directory: run it beside
    // node_modules.
    let script = modules.join("ts_oauth_client.mjs");
    std::fs::copy(format!("{TESTS}/ts_oauth_client.mjs"), &script).unwrap();
    let output = tokio::task::block_in_place(|| {
        Command::new("timeout")
            .arg("120")
            .arg("node")
            .arg(&script)
            .arg(&flow_file)
            .env("NODE_EXTRA_CA_CERTS", &ca_file)
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ts_oauth_client.mjs: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("{got:#}");
    for mode in ["dcr", "cimd"] {
        let r = &got[mode];
        assert_eq!(r["redirected"], true, "{mode}: {got}");
        assert_eq!(r["token_type"], "Bearer", "{mode}: {got}");
        assert_eq!(r["has_refresh"], true, "{mode}: {got}");
        assert_eq!(r["resource"], url.as_str(), "{mode}: {got}");
        assert_eq!(r["client_name_on_page"], true, "{mode}: {got}");
        assert!(
            r["tools"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "save_note"),
            "{mode}: {got}"
        );
        assert_eq!(
            (&r["result"], &r["is_error"]),
            (&json!("saved"), &json!(false)),
            "{mode}: {got}"
        );
    }
    // Registered the first time; the metadata document's URL the second.
    assert!(!got["dcr"]["client_id"].as_str().unwrap().contains(':'));
    assert_eq!(got["cimd"]["client_id"], docs.url("/ts-client.json"));
    assert_eq!(docs.fetches("/ts-client.json"), 1);
    let saved = std::fs::read_to_string(notes.path()).unwrap();
    assert!(
        saved.lines().any(|l| l == "from-ts-sdk-dcr")
            && saved.lines().any(|l| l == "from-ts-sdk-cimd"),
        "{saved}"
    );

    // MCP Inspector's CLI with a bearer header and the gateway's CA, no
    // preload script.
    let client_id = register(&server, &http, "inspector").await;
    let token = token_for(&server, &http, &client_id, &url, "alice", &code()).await;
    let bearer = format!(
        "Authorization: Bearer {}",
        token["access_token"].as_str().unwrap()
    );
    let output = tokio::task::block_in_place(|| {
        Command::new("timeout")
            .args(["120", "npx", "--no-install", "mcp-inspector", "--cli"])
            .arg(&url)
            .args(["--transport", "http", "--method", "tools/list", "--header"])
            .arg(&bearer)
            .current_dir(&modules)
            .env("NODE_EXTRA_CA_CERTS", &ca_file)
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("save_note"),
        "inspector --cli: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(mcp);
}
