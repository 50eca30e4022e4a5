//! End-to-end tests: the real `portcullis` binary on ephemeral loopback ports, a
//! real upstream, and TLS clients with agent certificates issued through the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use support::*;

/// A server with one public route `/api` → the test upstream, one confidential
/// route `/secret`, one route to a closed port, and tight limits.
async fn server_with_upstream() -> (Server, StreamGate) {
    install_crypto();
    let (upstream, gate) = start_upstream().await;
    // A port that was free a moment ago and is closed now: "upstream down".
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let routes = [
        route("api", "/api", &format!("http://{upstream}/base"), "public"),
        route(
            "secret",
            "/secret",
            &format!("http://{upstream}"),
            "confidential",
        ),
        route("down", "/down", &format!("http://{dead}"), "public"),
    ]
    .join("\n");
    let cfg = config(
        dir.path(),
        &routes,
        "max_body_bytes = 1024\nupstream_timeout_ms = 2000",
    );
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    (server, gate)
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_request_reaches_upstream_with_identity_and_is_recorded() {
    let (server, _) = server_with_upstream().await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));

    let response = client
        .get(server.url("/api/items/7?verbose=1"))
        .header(
            "x-portcullis-agent",
            "spiffe://portcullis.local/agent/forged",
        )
        .header("x-forwarded-for", "10.9.9.9")
        .header("forwarded", "for=10.9.9.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    assert_eq!(id.len(), 32);
    assert!(
        response.headers().get("x-upstream-hop").is_none(),
        "hop-by-hop header leaked"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["path"], "/base/items/7",
        "route prefix replaced by upstream base"
    );
    assert_eq!(body["query"], "verbose=1");
    assert_eq!(
        body["headers"]["x-portcullis-agent"], "spiffe://portcullis.local/agent/reader-bot",
        "the gateway asserts the authenticated identity, never the client's"
    );
    assert_eq!(body["headers"]["x-request-id"], id.as_str());
    assert_eq!(
        body["headers"]["x-forwarded-for"], "127.0.0.1",
        "a client-claimed address is replaced, not passed on"
    );
    assert!(body["headers"]["forwarded"].is_null());

    let record = server.audit_record(&id);
    assert_eq!(record["kind"], "request");
    assert_eq!(record["principal"], "reader-bot");
    assert_eq!(record["outcome"], "allow");
    assert_eq!(record["resource"], "api");
    assert_eq!(record["action"], "GET");
    assert_eq!(record["status"], 200);
    assert_eq!(record["policies"][0], "readers-read-low");
    assert!(
        record["credential"]
            .as_str()
            .unwrap()
            .starts_with("spiffe://portcullis.local/agent/reader-bot serial=")
    );
    assert!(record["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn default_deny_names_the_policy_and_is_recorded() {
    let (server, _) = server_with_upstream().await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));

    // Readers may not write, and may not read confidential routes.
    for (method, path) in [("POST", "/api/items"), ("GET", "/secret/x")] {
        let response = client
            .request(method.parse().unwrap(), server.url(path))
            .body("{}")
            .send()
            .await
            .unwrap();
        let id = request_id(&response);
        let (status, error) = error_of(response).await;
        assert_eq!(status, 403, "{method} {path}");
        assert_eq!(error["code"], "forbidden");
        assert_eq!(error["policies"][0], "default-deny");
        assert_eq!(error["request_id"], id.as_str());
        let record = server.audit_record(&id);
        assert_eq!(record["outcome"], "deny");
        assert_eq!(record["error_code"], "forbidden");
        assert_eq!(record["policies"][0], "default-deny");
        assert_eq!(record["principal"], "reader-bot");
    }

    // A writer may write to the public route.
    let (wcert, wkey) = server.create_agent("writer-bot", &["writer"]);
    let writer = support::client(&server.ca_pem(), Some((&wcert, &wkey)));
    let response = writer
        .post(server.url("/api/items"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body_len"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_certificate_get_401_and_are_recorded() {
    let (server, _) = server_with_upstream().await;

    // No certificate at all.
    let anonymous = client(&server.ca_pem(), None);
    let response = anonymous.get(server.url("/api/x")).send().await.unwrap();
    let id = request_id(&response);
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (401, "unauthenticated")
    );
    let record = server.audit_record(&id);
    assert_eq!(record["error_code"], "unauthenticated");
    assert!(record["principal"].is_null());

    // A certificate from a foreign CA, even with the right trust domain and name.
    let foreign = portcullis_identity::CertificateAuthority::generate("portcullis.local").unwrap();
    let (key_pem, csr) = portcullis_identity::new_agent_key_and_csr().unwrap();
    let issued = foreign
        .issue_agent(
            &portcullis_core::AgentName::parse("reader-bot").unwrap(),
            &csr,
            Duration::from_secs(3600),
        )
        .unwrap();
    let dir = server.path().join("forged");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.crt"), &issued.pem).unwrap();
    std::fs::write(dir.join("f.key"), &key_pem).unwrap();
    let forged = client(
        &server.ca_pem(),
        Some((&dir.join("f.crt"), &dir.join("f.key"))),
    );
    let response = forged.get(server.url("/api/x")).send().await.unwrap();
    let id = request_id(&response);
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (401, "invalid_credential")
    );
    let record = server.audit_record(&id);
    assert_eq!(record["error_code"], "invalid_credential");
    let presented = record["credential"].as_str().unwrap();
    assert!(
        presented.starts_with("sha256:") && presented.contains("CN=reader-bot"),
        "{presented}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_refused_on_its_next_request_even_on_a_live_connection() {
    let (server, _) = server_with_upstream().await;
    let (cert, key) = server.create_agent("doomed", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    assert_eq!(
        client
            .get(server.url("/api/a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let out = server.cli(&["agent", "revoke", "doomed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(
        &server
            .cli(&["agent", "show", "doomed", "-o", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(shown["status"], "revoked");

    // Same client, so the same kept-alive TLS connection.
    let response = client.get(server.url("/api/b")).send().await.unwrap();
    let id = request_id(&response);
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (401, "agent_revoked")
    );
    assert_eq!(server.audit_record(&id)["error_code"], "agent_revoked");

    let revoke = server
        .audit(50)
        .into_iter()
        .find(|r| r["action"] == "agent.revoke")
        .expect("revocation recorded");
    assert_eq!(revoke["resource"], "doomed");
    assert_eq!(revoke["kind"], "admin");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_unknown_routes_and_bad_paths_get_json_errors() {
    let (server, _) = server_with_upstream().await;
    let (cert, key) = server.create_agent("writer-bot", &["writer"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));

    // Declared too large.
    let response = client
        .post(server.url("/api/up"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    let id = request_id(&response);
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (413, "payload_too_large")
    );
    assert_eq!(server.audit_record(&id)["status"], 413);

    // Too large only while streaming (chunked, no Content-Length).
    let tls = tls_config(&server.ca_pem(), Some((&cert, &key)));
    let chunk = "x".repeat(600);
    let raw = format!(
        "POST /api/up HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw_tls(server.gateway, tls, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");

    // Unknown route.
    let response = client.get(server.url("/nowhere")).send().await.unwrap();
    let id = request_id(&response);
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (404, "route_not_found")
    );
    assert_eq!(server.audit_record(&id)["error_code"], "route_not_found");

    // Path traversal attempts never reach the upstream.
    let tls = tls_config(&server.ca_pem(), Some((&cert, &key)));
    let answer = raw_tls(
        server.gateway,
        tls,
        b"GET /api/%2e%2e/admin HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"bad_path\""), "{answer}");

    // A method policy cannot grant.
    let response = client
        .request(reqwest::Method::OPTIONS, server.url("/api/x"))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (405, "method_not_allowed")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_502_and_slow_is_504() {
    let (server, _) = server_with_upstream().await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));

    let response = client.get(server.url("/down/x")).send().await.unwrap();
    let id = request_id(&response);
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (502, "upstream_unavailable")
    );
    let record = server.audit_record(&id);
    assert_eq!(
        (record["outcome"].as_str(), record["status"].as_u64()),
        (Some("allow"), Some(502))
    );
    assert_eq!(record["error_code"], "upstream_unavailable");

    let response = client.get(server.url("/api/slow")).send().await.unwrap();
    let id = request_id(&response);
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (504, "upstream_timeout")
    );
    assert_eq!(server.audit_record(&id)["status"], 504);
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_stream_without_buffering() {
    let (server, gate) = server_with_upstream().await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    let (release, wait) = tokio::sync::oneshot::channel();
    *gate.lock().unwrap() = Some(wait);

    let mut response = client.get(server.url("/api/stream")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // The upstream holds its second chunk until we have the first: a buffering
    // gateway would never deliver it, and this read would time out.
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("first chunk was not streamed through")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first\n");
    release.send(()).unwrap();
    let second = response.chunk().await.unwrap().unwrap();
    assert_eq!(&second[..], b"second\n");
    assert!(response.chunk().await.unwrap().is_none());

    // A client that walks away mid-stream is recorded as such, not as a clean 200.
    let (_never_released, wait) = tokio::sync::oneshot::channel::<()>();
    *gate.lock().unwrap() = Some(wait);
    let mut response = client.get(server.url("/api/stream")).send().await.unwrap();
    let id = request_id(&response);
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first\n");
    drop(response);
    drop(client);
    let record = server.audit_record(&id);
    assert_eq!(record["error_code"], "client_closed", "{record}");
    assert_eq!(record["status"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_wire_does_not_hurt_the_server() {
    let (server, _) = server_with_upstream().await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);

    // Not TLS at all.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(server.gateway)
            .await
            .unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff\xfe garbage")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    }
    // TLS, then malformed HTTP.
    let tls = tls_config(&server.ca_pem(), Some((&cert, &key)));
    let answer = raw_tls(server.gateway, tls, b"\x16\x03 NOT HTTP\r\n\r\n").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    let client = client(&server.ca_pem(), Some((&cert, &key)));
    assert_eq!(
        client
            .get(server.url("/api/ok"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_records_survive_restart() {
    let (mut server, _) = server_with_upstream().await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));

    let url = server.url("/api/drain");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::timeout(Duration::from_secs(10), DRAIN_ARRIVED.notified())
        .await
        .expect("the request reached the upstream");
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    })
    .await
    .unwrap();
    let (exit, server) = status;
    assert!(
        exit.success(),
        "exit status {exit:?}; stderr:\n{}",
        server.stderr.lock().unwrap()
    );
    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    assert_eq!(response.text().await.unwrap(), "drained");

    // Restart on the same state directory: the record was made durable before exit.
    let dir = server.into_dir();
    let cfg = dir.path().join("portcullis.toml");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let record = server.audit_record(&id);
    assert_eq!(record["status"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_requires_the_admin_token_and_serves_health_and_metrics() {
    let (server, _) = server_with_upstream().await;
    let client = client(&server.ca_pem(), None);
    let admin = |p: &str| format!("https://{}{p}", server.admin);

    assert_eq!(
        client.get(admin("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client.get(admin("/readyz")).send().await.unwrap().status(),
        200
    );

    let (status, error) =
        error_of(client.get(admin("/admin/v1/agents")).send().await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (401, "unauthenticated")
    );
    let (status, error) = error_of(
        client
            .get(admin("/admin/v1/agents"))
            .bearer_auth("pcadm_wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (401, "invalid_credential")
    );
    let token = server.admin_token();
    let response = client
        .post(admin("/admin/v1/agents"))
        .bearer_auth(token.trim())
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (400, "bad_request")
    );

    let response = client
        .delete(admin("/admin/v1/agents"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (405, "method_not_allowed")
    );

    // The data plane is not the admin API (segmentation).
    let response = client
        .get(server.url("/admin/v1/agents"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let agent = support::client(&server.ca_pem(), Some((&cert, &key)));
    agent.get(server.url("/api/m")).send().await.unwrap();
    let metrics = client
        .get(admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portcullis_requests_total{route=\"api\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_decisions_total{route=\"api\",decision=\"allow\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_stage_duration_seconds_bucket{le="),
        "{metrics}"
    );
    assert!(metrics.contains("stage=\"authorize\""), "{metrics}");

    // Secrets never reach the log.
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        !log.contains(token.trim()),
        "admin token leaked into the log"
    );
    assert!(
        !log.contains("PRIVATE KEY"),
        "key material leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_serves_the_demo_upstream() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    // The quickstart listens on the fixed ports 8443/9443; a test must not, so it
    // runs the quickstart routes from a config that only changes the addresses.
    let cfg = config(
        dir.path(),
        &[
            route("demo", "/demo", "builtin:demo", "public"),
            route("payroll", "/payroll", "builtin:demo", "confidential"),
        ]
        .join("\n"),
        "",
    );
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    assert!(
        server
            .state_dir()
            .join("policies/quickstart.cedar")
            .exists()
    );
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let client = client(&server.ca_pem(), Some((&cert, &key)));
    let body: serde_json::Value = client
        .get(server.url("/demo/hello"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["agent"], "spiffe://portcullis.local/agent/reader-bot");
    assert_eq!(body["path"], "/hello");
    let response = client
        .get(server.url("/payroll/salaries"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    let listed: serde_json::Value =
        serde_json::from_slice(&server.cli(&["agent", "list", "--json"]).stdout).unwrap();
    assert_eq!(listed["agents"][0]["name"], "reader-bot");
    assert_eq!(listed["agents"][0]["roles"][0], "reader");
}

#[test]
fn invalid_config_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_body_byte = 5\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("max_body_byte"), "{err}");
}

#[test]
fn invalid_policies_are_refused_by_validate_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        portcullis_policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    std::fs::write(
        policies.join("good.cedar"),
        portcullis_policy::DEFAULT_POLICIES,
    )
    .unwrap();

    let validate = |dir: &std::path::Path| {
        std::process::Command::new(BIN)
            .args(["policy", "validate"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let ok = validate(&policies);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("readers-read-low"));

    std::fs::write(
        policies.join("bad.cedar"),
        "@id(\"typo\")\npermit(principal, action, resource) when { resource.clasification == \"public\" };\n",
    )
    .unwrap();
    let bad = validate(&policies);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("typo") && err.contains("clasification"),
        "{err}"
    );

    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[policy]\ndir = \"{}\"\n",
            policies.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("typo"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_refused_on_a_live_connection() {
    let (server, _) = server_with_upstream().await;
    let out = server.path().join("short");
    let output = server.cli(&[
        "agent",
        "create",
        "brief",
        "--role",
        "reader",
        "--ttl",
        "2s",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let client = client(
        &server.ca_pem(),
        Some((&out.join("brief.crt"), &out.join("brief.key"))),
    );
    assert_eq!(
        client
            .get(server.url("/api/a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Same client, same connection: expiry is checked on every request.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let response = client.get(server.url("/api/b")).send().await.unwrap();
    let id = request_id(&response);
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str().unwrap()),
        (401, "invalid_credential")
    );
    assert_eq!(error["message"], "certificate expired");
    let record = server.audit_record(&id);
    assert_eq!(record["error_code"], "invalid_credential");
    assert!(
        record["credential"]
            .as_str()
            .unwrap()
            .contains("agent/brief")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_server_names_are_in_the_certificate() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("names.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nlisten = \"127.0.0.1:0\"\nserver_names = [\"gw.test\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let by_name = |name: &str| {
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&server.ca_pem(), None))
            .resolve(name, server.admin)
            .build()
            .unwrap()
    };
    let ok = by_name("gw.test")
        .get(format!("https://gw.test:{}/healthz", server.admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = by_name("other.test")
        .get(format!(
            "https://other.test:{}/healthz",
            server.admin.port()
        ))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a name outside the certificate must not verify"
    );
}

#[test]
fn policy_schema_prints_the_shipped_schema_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["policy", "schema"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap(),
        portcullis_policy::DEFAULT_SCHEMA
    );
    std::fs::write(dir.path().join("schema.cedarschema"), &out.stdout).unwrap();
    std::fs::write(
        dir.path().join("quickstart.cedar"),
        portcullis_policy::DEFAULT_POLICIES,
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["policy", "validate"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_flood_is_sampled_and_agents_never_are() {
    install_crypto();
    let (upstream, _gate) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "{}[audit]\nunauthenticated_records_per_minute = 5\n",
        route("api", "/api", &format!("http://{upstream}"), "public")
    );
    let cfg = config(dir.path(), &routes, "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let anonymous = client(&server.ca_pem(), None);
    let mut ids = Vec::new();
    for _ in 0..60 {
        let r = anonymous.get(server.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        ids.push(request_id(&r));
    }
    // An agent's requests, refused by policy, are each recorded.
    let (cert, key) = tokio::task::block_in_place(|| server.create_agent("nobody", &["none"]));
    let agent = client(&server.ca_pem(), Some((&cert, &key)));
    let mut agent_ids = Vec::new();
    for _ in 0..20 {
        let r = agent.get(server.url("/api/x")).send().await.unwrap();
        assert_eq!(r.status(), 403);
        agent_ids.push(request_id(&r));
    }
    let last = agent_ids.last().unwrap().clone();
    let _ = tokio::task::block_in_place(|| server.audit_record(&last));
    let records = tokio::task::block_in_place(|| server.audit(500));
    let written = |set: &[String]| {
        records
            .iter()
            .filter(|r| set.iter().any(|id| r["request_id"] == id.as_str()))
            .count()
    };
    assert_eq!(
        written(&agent_ids),
        20,
        "authenticated requests are never sampled"
    );
    // At most 5 a minute for the one source (the run may straddle a minute).
    let anonymous_written = written(&ids);
    assert!(
        (1..=10).contains(&anonymous_written),
        "{anonymous_written} anonymous records written in full"
    );
    let metrics = client(&server.ca_pem(), None)
        .get(format!("https://{}/metrics", server.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sampled: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_audit_unauthenticated_sampled_total "))
        .or_else(|| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("audit_unauthenticated_sampled_total "))
        })
        .unwrap_or_else(|| panic!("{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(sampled as usize + anonymous_written, 60, "{metrics}");
}
