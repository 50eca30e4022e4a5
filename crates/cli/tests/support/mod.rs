//! Test support: spawn the real `portcullis` binary on ephemeral loopback ports,
//! a real upstream HTTP server, and TLS clients with agent certificates.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub mod authorization;
pub mod client_metadata;
pub mod cluster;
pub mod parity_rig;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Runs the servers of [`Server`] from another build of the binary (e.g.
/// `target/release/portcullis` for the long soak, docs/testing.md).
pub const ENV_TEST_BIN: &str = "PORTCULLIS_TEST_BIN";

/// The binary [`Server`] runs: [`ENV_TEST_BIN`] when set, else this build's.
pub fn server_bin() -> std::ffi::OsString {
    std::env::var_os(ENV_TEST_BIN).unwrap_or_else(|| BIN.into())
}

/// SQL condition on a row of `audit_log`: the record's status is 200. Bytes
/// 2-3 (`substr` counts from 1) of a record in the compact stored form are
/// its status, little-endian (docs/audit-format.md).
pub const STATUS_IS_200: &str = "substr(record, 3, 2) = x'c800'";

/// SQL assignment that changes a stored record's status to 500.
pub const SET_STATUS_500: &str =
    "record = CAST(substr(record, 1, 2) || x'f401' || substr(record, 5) AS BLOB)";

/// The leaf (canonical JSON) of record `seq` as stored now in the state
/// directory's database.
pub async fn stored_leaf(state: &Path, seq: i64) -> String {
    let store = portcullis_store::Store::open_sqlite_read_only(&state.join("portcullis.db"))
        .await
        .unwrap();
    let leaf = store.audit_leaves(seq as u64, 1).await.unwrap().remove(0).1;
    store.close().await;
    leaf
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running `portcullis serve`.
pub struct Server {
    pub child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
}

/// Writes a config with the given routes (TOML fragments) and extra sections.
pub fn config(dir: &Path, routes: &str, limits: &str) -> PathBuf {
    let path = dir.join("portcullis.toml");
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\n{limits}\n{routes}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A route TOML fragment.
pub fn route(name: &str, prefix: &str, upstream: &str, classification: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nkind = \"http\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\nclassification = \"{classification}\"\n"
    )
}

impl Server {
    /// Starts the binary with `config` (or the quickstart when `None`) and waits
    /// for its "portcullis: gateway … admin …" line.
    pub fn start(dir: tempfile::TempDir, config: Option<&Path>) -> Server {
        Self::start_with_env(dir, config, &[])
    }

    /// [`Server::start`] with extra environment variables (e.g. the vault KEK).
    pub fn start_with_env(
        dir: tempfile::TempDir,
        config: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Server {
        Self::start_with(dir, config, env, &[])
    }

    /// [`Server::start`] with extra `serve` arguments.
    pub fn start_with_args(dir: tempfile::TempDir, config: Option<&Path>, args: &[&str]) -> Server {
        Self::start_with(dir, config, &[], args)
    }

    /// [`Server::start`] with extra environment variables and `serve`
    /// arguments.
    pub fn start_with(
        dir: tempfile::TempDir,
        config: Option<&Path>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let state = dir.path().join("state");
        let mut cmd = Command::new(server_bin());
        cmd.arg("serve").arg("--state-dir").arg(&state).args(args);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env_remove("PORTCULLIS_KEK_FILE")
            .env_remove("PORTCULLIS_KEK");
        if config.is_none() {
            // The quickstart listens on 8443/9443 by default; tests never
            // bind a fixed port (a running quickstart must not break them).
            cmd.env("PORTCULLIS_GATEWAY_LISTEN", "127.0.0.1:0")
                .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("PORTCULLIS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let pipe = child.stderr.take().unwrap();
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("portcullis did not start: {}", stderr.lock().unwrap()));
        let parts: Vec<&str> = line.split_whitespace().collect();
        // "portcullis: gateway https://A admin https://B"
        let addr = |s: &str| {
            s.trim_start_matches("https://")
                .parse::<SocketAddr>()
                .unwrap()
        };
        Server {
            gateway: addr(parts[2]),
            admin: addr(parts[4]),
            child: Some(child),
            dir: Some(dir),
            stderr,
        }
    }

    /// The test's temporary directory (state, config, credentials).
    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Stops the server (if running) and hands back its directory for a restart.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.dir.take().unwrap()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    /// The admin bearer token `serve` wrote into the state directory.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("ca.crt")).unwrap()
    }

    /// Runs a CLI command against this server's state directory.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(server_bin())
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .expect("run portcullis cli")
    }

    /// `agent create NAME --role … --out <dir>/creds`; returns (cert, key) paths.
    pub fn create_agent(&self, name: &str, roles: &[&str]) -> (PathBuf, PathBuf) {
        let out = self.path().join("creds");
        let mut args = vec!["agent", "create", name, "--out", out.to_str().unwrap()];
        for r in roles {
            args.push("--role");
            args.push(r);
        }
        let output = self.cli(&args);
        assert!(
            output.status.success(),
            "agent create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (
            out.join(format!("{name}.crt")),
            out.join(format!("{name}.key")),
        )
    }

    /// The audit records, via `portcullis audit tail -o json`.
    pub fn audit(&self, n: u32) -> Vec<Value> {
        let output = self.cli(&["audit", "tail", "-n", &n.to_string(), "-o", "json"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tail: Value = serde_json::from_slice(&output.stdout).unwrap();
        tail["records"].as_array().cloned().unwrap_or_default()
    }

    /// Waits (bounded) for the newest audit record matching `pred` among
    /// the last 500: records are appended after the answer, in batches.
    pub fn wait_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(r) = self.audit(500).into_iter().rev().find(&pred) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no audit record: {what}");
    }

    /// Waits (bounded) for the audit record of `request_id`.
    pub fn audit_record(&self, request_id: &str) -> Value {
        for _ in 0..100 {
            if let Some(r) = self
                .audit(200)
                .into_iter()
                .find(|r| r["request_id"] == request_id)
            {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no audit record for request {request_id}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.gateway)
    }

    /// Sends signal `name` (`HUP`, …) to the server.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        client(&self.ca_pem(), None)
            .get(format!("https://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        for _ in 0..400 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        panic!("portcullis did not exit after SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TLS client trusting `ca_pem`, with an optional client certificate.
pub fn tls_config(ca_pem: &str, identity: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

/// Runs `python3 SCRIPT ARG`, killed after `limit`; its output.
pub fn run_python(script: &str, arg: &Path, limit: Duration) -> std::process::Output {
    let mut child = Command::new("python3")
        .arg(script)
        .arg(arg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{script} did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// An HTTP client (reqwest) over that TLS config.
pub fn client(ca_pem: &str, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(ca_pem, identity))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The request id the gateway returned (`X-Request-Id`).
pub fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_string()
}

/// The JSON error of a response, with its status.
pub async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    // Every 401 of the data plane says how to authenticate.
    if status == 401 && !response.url().path().starts_with("/admin/") {
        assert!(
            response.headers().contains_key("www-authenticate"),
            "a 401 without `WWW-Authenticate`"
        );
    }
    let body: Value = response.json().await.unwrap();
    if let Some(error) = body["error"].as_str() {
        // The OAuth endpoints answer in RFC 6749 §5.2's shape, with the
        // stable code beside it: read as the other errors are.
        return (
            status,
            serde_json::json!({
                "code": body["code"],
                "message": body["error_description"],
                "oauth_error": error,
            }),
        );
    }
    (status, body["error"].clone())
}

/// The content guard's findings in an audit record, as (direction, kind,
/// JSON pointer).
pub fn findings(record: &Value) -> Vec<(String, String, String)> {
    record["content"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|f| {
                    let s = |k: &str| f[k].as_str().unwrap_or("").to_string();
                    (s("direction"), s("kind"), s("pointer"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The secret the upstream's `/leak` stream carries (a GitHub token).
pub const LEAKED_TOKEN: &str = "ghp_aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2bC4";

/// Streaming control for the upstream's `/stream` endpoint: the test releases
/// the second chunk only after it has received the first through the gateway.
pub type StreamGate = Arc<Mutex<Option<oneshot::Receiver<()>>>>;

/// Signalled when the upstream's `/drain` endpoint has received a request.
pub static DRAIN_ARRIVED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Signalled when the upstream's `/hold` endpoint has received a request.
pub static HOLD_ARRIVED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The size of the upstream's `/big` answer (256 MiB).
pub const BIG_BYTES: usize = 256 << 20;

/// A real upstream on 127.0.0.1:<ephemeral>:
/// - `/slow` answers after 3 s; `/drain` after 1 s; `/hold` never;
/// - `/stream` sends `first`, waits for the gate, then sends `second`;
/// - `/drip` sends `tick\n` every 100 ms for 10 s (a slow chunked stream);
/// - `/big` streams [`BIG_BYTES`] as fast as it is read, 64 KiB at a time;
/// - `/leak` streams an event carrying [`LEAKED_TOKEN`], cut mid-value
///   across three chunks 50 ms apart;
/// - anything else echoes method, path, query, headers and body length as JSON.
pub async fn start_upstream() -> (SocketAddr, StreamGate) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate: StreamGate = Arc::new(Mutex::new(None));
    let gate2 = gate.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let gate = gate2.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| upstream(req, gate.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, gate)
}

pub type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream(
    req: Request<Incoming>,
    gate: StreamGate,
) -> Result<Response<UpBody>, Infallible> {
    // Routes may add a base path, so match on the last segment.
    let last = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    match last.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(Response::new(Full::new(Bytes::from("slow")).boxed()))
        }
        "hold" => {
            HOLD_ARRIVED.notify_one();
            std::future::pending().await
        }
        "drain" => {
            DRAIN_ARRIVED.notify_one();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            Ok(Response::new(Full::new(Bytes::from("drained")).boxed()))
        }
        "stream" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            let wait = gate.lock().unwrap().take();
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("first\n")))).await;
                if let Some(wait) = wait {
                    let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
                }
                let _ = tx.send(Ok(Frame::data(Bytes::from("second\n")))).await;
            });
            let stream = ReceiverStream(rx);
            Ok(Response::new(StreamBody::new(stream).boxed()))
        }
        "drip" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                for _ in 0..100 {
                    if tx
                        .send(Ok(Frame::data(Bytes::from("tick\n"))))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            Ok(Response::new(StreamBody::new(ReceiverStream(rx)).boxed()))
        }
        "leak" => Ok(leak()),
        "big" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                for _ in 0..BIG_BYTES / chunk.len() {
                    if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Response::new(StreamBody::new(ReceiverStream(rx)).boxed()))
        }
        // A 401 that echoes the credential it was given, in its body and
        // in a header, as a misconfigured upstream would.
        "echo401" => {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = serde_json::json!({ "error": format!("bad credential: {given}") });
            let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
            *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
            resp.headers_mut().insert(
                "x-rejected-credential",
                given
                    .parse()
                    .unwrap_or(hyper::header::HeaderValue::from_static("-")),
            );
            Ok(resp)
        }
        _ => {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value::String(v.to_str().unwrap_or("").to_string()),
                    )
                })
                .collect();
            let reply = serde_json::json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "headers": headers,
                "body_len": body.len(),
            });
            let mut resp = Response::new(Full::new(Bytes::from(reply.to_string())).boxed());
            resp.headers_mut()
                .insert("connection", "x-upstream-hop".parse().unwrap());
            resp.headers_mut()
                .insert("x-upstream-hop", "1".parse().unwrap());
            Ok(resp)
        }
    }
}

/// The `/leak` answer: an event carrying [`LEAKED_TOKEN`], cut mid-value
/// across three chunks 50 ms apart, so a redactor must see across chunks.
pub fn leak() -> Response<UpBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let text = format!("data: your token is {LEAKED_TOKEN} keep it safe\n\n");
        for w in [0, 24, 37, text.len()].windows(2) {
            let chunk = Bytes::from(text[w[0]..w[1]].to_string());
            let _ = tx.send(Ok(Frame::data(chunk))).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut resp = Response::new(StreamBody::new(ReceiverStream(rx)).boxed());
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    resp
}

/// An mpsc receiver as a `Stream` of body frames.
struct ReceiverStream<T>(mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// The resident memory of process `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Sends raw bytes over TLS (with an optional client certificate) and returns
/// whatever the server answers before closing or going quiet for 3 s.
pub async fn raw_tls(addr: SocketAddr, config: rustls::ClientConfig, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let _ = tls.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `cmd` with `input` on its standard input; returns its output.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A child that exits before reading closes the pipe: its output says why.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

/// Kills a helper process when the test ends, whatever the outcome.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ready` every `every` until it holds; panics with `what` once
/// `bound` has passed (a bounded wait, not a timing assertion).
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    bound: Duration,
    every: Duration,
    mut ready: impl FnMut() -> F,
) {
    let started = std::time::Instant::now();
    while !ready().await {
        assert!(started.elapsed() < bound, "{what}");
        tokio::time::sleep(every).await;
    }
}

/// Waits (bounded) until something accepts connections on `port`; panics if
/// `what` exits first or nothing listens within 30 s.
pub fn wait_for_port(port: u16, what: &mut Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = what.try_wait() {
            panic!("helper process exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listened on {port}");
}

/// Runs `serve` expecting it to exit with an error; returns its stderr.
pub fn serve_fails(state: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> String {
    serve_fails_with(state, config, env, &[])
}

/// [`serve_fails`] with extra `serve` arguments.
pub fn serve_fails_with(
    state: &Path,
    config: Option<&Path>,
    env: &[(&str, &str)],
    args: &[&str],
) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--state-dir").arg(state).args(args);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.env_remove("PORTCULLIS_KEK_FILE")
        .env_remove("PORTCULLIS_KEK")
        // Never the quickstart's fixed ports, even if it got that far.
        .env("PORTCULLIS_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "serve was expected to fail");
            let out = child.wait_with_output().unwrap();
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    panic!("serve did not fail");
}

/// `/readyz` of `server`: its status and body.
pub async fn readyz(server: &Server) -> (u16, Value) {
    let response = client(&server.ca_pem(), None)
        .get(format!("https://{}/readyz", server.admin))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Runs an npm install script (`script DIR` prints the entry point; pinned
/// versions, one install per machine, see `tests/mcp/install_everything.sh`)
/// into `$TMPDIR/<dir>`, a directory any user may read. `None`, with a
/// visible `SKIPPED: <what>` line, when npm or the registry is unavailable.
pub fn npm_installed(script: &str, dir: &str, what: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(dir);
    match Command::new(script).arg(&dir).output() {
        Ok(o) if o.status.success() => Some(PathBuf::from(
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )),
        Ok(o) => {
            eprintln!(
                "SKIPPED: {what}: the npm install failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("SKIPPED: {what}: cannot run the npm install script ({e})");
            None
        }
    }
}
