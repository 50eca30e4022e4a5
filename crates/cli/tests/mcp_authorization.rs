//! MCP authorization discovery against the real binary: each `kind = "mcp"`
//! route is an RFC 9728 protected resource, its 401s name the metadata in
//! `WWW-Authenticate: Bearer resource_metadata="…"`, and the metadata names the
//! gateway as the authorization server. Other routes are no such resource.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use serde_json::Value;
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
