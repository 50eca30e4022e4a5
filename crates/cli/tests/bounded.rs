//! The process-wide budget of buffered request bytes (`[limits]
//! max_buffered_bytes`) against the real binary: bodies the gateway must read
//! whole (LLM, MCP, guard-inspected HTTP) are refused with 503 `server_busy`
//! while others hold the budget, the process lives on, and the budget comes
//! back when they end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

use support::{Server, config, install_crypto, route, start_upstream, tls_config};

const POLICIES: &str = r#"
@id("users-all") permit(principal in Role::"user", action, resource);
"#;

/// A JSON body of about `size` bytes that every route here reads whole: a
/// chat completion (for LLM and guarded HTTP) whose message is `size` bytes.
fn big_body(size: usize) -> String {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": "a".repeat(size)}]})
        .to_string()
}

/// An HTTP/1.1 request whose body is held back after its first kilobyte,
/// on its own mTLS connection: the gateway leases its announced length and
/// waits for the rest.
struct Held {
    tls: TlsStream<tokio::net::TcpStream>,
    rest: Vec<u8>,
}

impl Held {
    async fn open(server: &Server, tls: rustls::ClientConfig, path: &str, body: String) -> Held {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(server.gateway)
            .await
            .unwrap();
        let mut tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let mut body = body.into_bytes();
        let rest = body.split_off(1024);
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&body).await.unwrap();
        tls.flush().await.unwrap();
        Held { tls, rest }
    }

    /// Sends the rest of the body and returns the answer's status line.
    async fn finish(mut self) -> String {
        self.tls.write_all(&self.rest).await.unwrap();
        self.tls.flush().await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.tls.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        text.lines().next().unwrap_or_default().to_string()
    }
}

/// A client on its own HTTP/2 connection, so a request refused before its
/// body was read still reads its answer (the gateway drains the upload).
fn h2_client(tls: &rustls::ClientConfig) -> reqwest::Client {
    let mut h2 = tls.clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(h2)
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn setup(dir: &Path, upstream: std::net::SocketAddr) -> std::path::PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        include_str!("../../policy/defaults/schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(policies.join("all.cedar"), POLICIES).unwrap();
    let up = format!("http://{upstream}");
    let routes = [
        format!(
            "[[routes]]\nname = \"llm\"\nkind = \"llm\"\npath_prefix = \"/llm\"\nupstream = \"{up}\"\nclassification = \"internal\"\n[[routes.models]]\nname = \"gpt-test\"\nstatus = \"approved\"\n"
        ),
        format!(
            "[[routes]]\nname = \"mcp\"\nkind = \"mcp\"\npath_prefix = \"/mcp\"\nupstream = \"{up}/mcp\"\nclassification = \"internal\"\n"
        ),
        route("guarded", "/guarded", &up, "public") + "[routes.guard]\ndlp = \"alert\"\n",
    ]
    .join("\n");
    // Bodies up to 2 MiB; 6 MiB for all of them together, parsed copies
    // included: two held 1.9 MiB bodies and a third one's bytes fit, its
    // parsed copy does not.
    config(
        dir,
        &routes,
        "max_body_bytes = 2097152\nmax_buffered_bytes = 6291456\n[policy]\ndir = \"policies\"",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_buffer_budget_refuses_with_server_busy_and_comes_back() {
    install_crypto();
    let (upstream, _gate) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path(), upstream);
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let (cert, key) = tokio::task::block_in_place(|| server.create_agent("writer", &["user"]));
    let tls = tls_config(&server.ca_pem(), Some((&cert, &key)));
    let client = h2_client(&tls);
    let post = |path: &'static str, body: String| {
        client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let size = 1900 * 1024;

    // Before: a large completion goes through.
    let r = post("/llm/v1/chat/completions", big_body(size))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Two completions hold 2 × 1.9 MiB of the 6 MiB, waiting for their bodies.
    let first = Held::open(
        &server,
        tls.clone(),
        "/llm/v1/chat/completions",
        big_body(size),
    )
    .await;
    let second = Held::open(
        &server,
        tls.clone(),
        "/llm/v1/chat/completions",
        big_body(size),
    )
    .await;

    // A third large body, on every kind of route that reads bodies whole, is
    // refused at once (its parsed copy cannot be had), not made to wait.
    let mcp_body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "a".repeat(size)}}})
    .to_string();
    for (path, body) in [
        ("/llm/v1/chat/completions", big_body(size)),
        ("/mcp", mcp_body),
        ("/guarded/echo", big_body(size)),
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (status, retry_after, error) = loop {
            let t = Instant::now();
            let r = post(path, body.clone()).await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let v: Value = r.json().await.unwrap_or_default();
            if status == 503 || Instant::now() > deadline {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "{path}: refused quickly"
                );
                break (status, retry_after, v["error"].clone());
            }
            // The held requests' leases may not be taken yet.
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status, 503, "{path}: {error}");
        assert_eq!(error["code"], "server_busy", "{path}: {error}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{path}");
        let id = error["request_id"].as_str().unwrap().to_string();
        let record = tokio::task::block_in_place(|| server.audit_record(&id));
        assert_eq!(record["outcome"], "deny", "{record}");
        assert_eq!(record["error_code"], "server_busy", "{record}");
    }

    // The held requests complete in turn: each one's parsed copy fits.
    assert!(first.finish().await.starts_with("HTTP/1.1 200"));
    assert!(second.finish().await.starts_with("HTTP/1.1 200"));

    // A crowd of large bodies on their own connections: each is served or
    // refused with the code, never anything else.
    let crowd: Vec<_> = (0..6)
        .map(|_| {
            let tls = tls.clone();
            let url = server.url("/llm/v1/chat/completions");
            tokio::spawn(async move {
                let r = h2_client(&tls)
                    .post(url)
                    .header("content-type", "application/json")
                    .body(big_body(size))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or_default();
                (
                    status,
                    v["error"]["code"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .collect();
    for task in crowd {
        let (status, code) = task.await.unwrap();
        assert!(
            status == 200 || (status == 503 && code == "server_busy"),
            "{status} {code}"
        );
    }

    // After: the budget is whole again (three full leases in a row would not
    // fit in 6 MiB if any had leaked) and the process is alive.
    for _ in 0..3 {
        let r = post("/llm/v1/chat/completions", big_body(size))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let mut server = server;
    assert!(server.child.as_mut().unwrap().try_wait().unwrap().is_none());
}
