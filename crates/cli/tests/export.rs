//! End-to-end tests of SIEM export and traces: the real `portcullis` binary
//! streams its audit log to real receivers this test runs on 127.0.0.1 — a
//! UDP and a TCP syslog collector that parse RFC 5424 frames, and an HTTP
//! server standing in for a webhook and an OTLP collector — and sends its
//! spans to the same collector.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// The secret header value of the webhook; it must never show in logs.
const SECRET: &str = "Splunk 0c1d2e3f-never-logged";

/// One HTTP request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// An HTTP receiver that can be stopped (closing its connections) and
/// started again on the same port.
struct HttpReceiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    task: Option<JoinHandle<()>>,
}

impl HttpReceiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let task = Some(tokio::spawn(Self::serve(listener, got.clone())));
        HttpReceiver { addr, got, task }
    }

    fn stop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts (and so
        // closes) every connection.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restart(&mut self) {
        self.stop();
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.task = Some(tokio::spawn(Self::serve(listener, self.got.clone())));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot bind {} again", self.addr);
    }

    async fn serve(listener: TcpListener, got: Arc<Mutex<Vec<Received>>>) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let got = got.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let got = got.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        got.lock().unwrap().push(Received {
                            path: parts.uri.path().to_string(),
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            "{}",
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }

    fn requests(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

/// A parsed RFC 5424 message.
#[derive(Debug, Clone)]
struct SyslogMessage {
    pri: u8,
    timestamp: String,
    hostname: String,
    app_name: String,
    msgid: String,
    sd_id: String,
    params: BTreeMap<String, String>,
    record: Value,
}

/// Parses one RFC 5424 message as the syslog grammar says, strictly.
fn parse_syslog(frame: &[u8]) -> SyslogMessage {
    let text = std::str::from_utf8(frame).expect("UTF-8 message");
    let rest = text.strip_prefix('<').expect("PRI");
    let (pri, rest) = rest.split_once('>').unwrap();
    assert!(pri.len() <= 3 && pri.bytes().all(|b| b.is_ascii_digit()));
    let pri: u8 = pri.parse().unwrap();
    let mut fields = rest.splitn(7, ' ');
    let version = fields.next().unwrap();
    assert_eq!(version, "1", "VERSION");
    let timestamp = fields.next().unwrap().to_string();
    let hostname = fields.next().unwrap().to_string();
    let app_name = fields.next().unwrap().to_string();
    let procid = fields.next().unwrap();
    assert!(procid.parse::<u32>().is_ok(), "PROCID {procid}");
    let msgid = fields.next().unwrap().to_string();
    let rest = fields.next().unwrap();
    // STRUCTURED-DATA: one element with escaped PARAM-VALUEs.
    let mut chars = rest.chars().peekable();
    assert_eq!(chars.next(), Some('['));
    let sd_id: String = chars.by_ref().take_while(|c| *c != ' ').collect();
    let mut params = BTreeMap::new();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        loop {
            match chars.next().unwrap() {
                '\\' => value.push(chars.next().unwrap()),
                '"' => break,
                ']' => panic!("unescaped `]` in a PARAM-VALUE"),
                c => value.push(c),
            }
        }
        params.insert(name.trim().to_string(), value);
        match chars.next().unwrap() {
            ' ' => continue,
            ']' => break,
            c => panic!("unexpected `{c}` in structured data"),
        }
    }
    assert_eq!(chars.next(), Some(' '), "SP before MSG");
    let msg: String = chars.collect();
    let json = msg.strip_prefix('\u{feff}').expect("MSG starts with a BOM");
    SyslogMessage {
        pri,
        timestamp,
        hostname,
        app_name,
        msgid,
        sd_id,
        params,
        record: serde_json::from_str(json).unwrap(),
    }
}

/// A UDP syslog collector.
async fn udp_collector() -> (SocketAddr, Arc<Mutex<Vec<SyslogMessage>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = socket.recv(&mut buf).await.unwrap();
            sink.lock().unwrap().push(parse_syslog(&buf[..n]));
        }
    });
    (addr, got)
}

/// A TCP syslog collector reading RFC 6587 octet-counted frames, in TLS
/// (RFC 5425) when given a server config; it can be stopped and started
/// again on the same port.
struct TcpCollector {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<SyslogMessage>>>,
    task: Option<JoinHandle<()>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl TcpCollector {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let task = Some(tokio::spawn(Self::serve(
            listener,
            got.clone(),
            tls.clone(),
        )));
        TcpCollector {
            addr,
            got,
            task,
            tls,
        }
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restart(&mut self) {
        self.stop();
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.task = Some(tokio::spawn(Self::serve(
                    listener,
                    self.got.clone(),
                    self.tls.clone(),
                )));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot bind {} again", self.addr);
    }

    async fn serve(
        listener: TcpListener,
        got: Arc<Mutex<Vec<SyslogMessage>>>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let got = got.clone();
            let tls = tls.clone();
            connections.spawn(async move {
                let stream: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match tls {
                    Some(acceptor) => Box::new(acceptor.accept(tcp).await.unwrap()),
                    None => Box::new(tcp),
                };
                let mut reader = BufReader::new(stream);
                loop {
                    // MSG-LEN SP SYSLOG-MSG
                    let mut len = Vec::new();
                    if reader.read_until(b' ', &mut len).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let len: usize = std::str::from_utf8(&len[..len.len() - 1])
                        .unwrap()
                        .parse()
                        .expect("octet count");
                    let mut frame = vec![0u8; len];
                    reader.read_exact(&mut frame).await.unwrap();
                    got.lock().unwrap().push(parse_syslog(&frame));
                }
            });
        }
    }
}

/// Checks OTLP request bodies against the official protobuf definitions (the
/// Python `opentelemetry-proto` package, from `requirements-test.txt`);
/// returns how many log records or spans they hold, or `None` (and says so)
/// when python3 or the package is missing.
fn check_with_opentelemetry_proto(kind: &str, bodies: &[Bytes]) -> Option<usize> {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<std::path::PathBuf> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let path = dir.path().join(format!("{kind}-{i}.json"));
            std::fs::write(&path, body).unwrap();
            path
        })
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_json_check.py");
    let output = match std::process::Command::new("python3")
        .arg(script)
        .arg(kind)
        .args(&files)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("SKIPPED: OTLP {kind} protobuf check: python3 is not available ({e})");
            return None;
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => Some(
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap(),
        ),
        Some(2) => {
            eprintln!("SKIPPED: OTLP {kind} protobuf check: {stderr}");
            None
        }
        _ => panic!("OTLP {kind} bodies do not match opentelemetry-proto: {stderr}"),
    }
}

/// Waits (bounded: 20 s, longer than the sinks' backoff can grow to in
/// these tests) until `seqs()` holds every seq in `want`.
async fn wait_for(what: &str, want: &BTreeSet<u64>, seqs: impl Fn() -> BTreeSet<u64>) {
    for _ in 0..400 {
        if want.is_subset(&seqs()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let have = seqs();
    panic!(
        "{what}: missing records {:?}",
        want.difference(&have).collect::<Vec<_>>()
    );
}

fn webhook_seqs(receiver: &HttpReceiver) -> BTreeSet<u64> {
    receiver
        .requests("/hook")
        .iter()
        .flat_map(|r| serde_json::from_slice::<Vec<Value>>(&r.body).unwrap())
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

fn otlp_log_records(receiver: &HttpReceiver) -> Vec<Value> {
    receiver
        .requests("/otlp/v1/logs")
        .iter()
        .flat_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect()
}

fn otlp_seqs(receiver: &HttpReceiver) -> BTreeSet<u64> {
    otlp_log_records(receiver)
        .iter()
        .map(|r| {
            let body: Value =
                serde_json::from_str(r["body"]["stringValue"].as_str().unwrap()).unwrap();
            body["seq"].as_u64().unwrap()
        })
        .collect()
}

fn syslog_seqs(got: &Arc<Mutex<Vec<SyslogMessage>>>) -> BTreeSet<u64> {
    got.lock()
        .unwrap()
        .iter()
        .map(|m| m.record["seq"].as_u64().unwrap())
        .collect()
}

/// The value of an OTLP attribute list entry.
fn attribute<'a>(attributes: &'a Value, key: &str) -> &'a Value {
    attributes
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
        .unwrap_or(&Value::Null)
}

/// `metric{sink="name"} value` from the exposition.
fn sink_metric(metrics: &str, metric: &str, sink: &str) -> Option<f64> {
    let prefix = format!("{metric}{{sink=\"{sink}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

async fn metrics(server: &Server) -> String {
    client(&server.ca_pem(), None)
        .get(format!("https://{}/metrics", server.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// All seqs in the log, via `audit tail`.
fn all_seqs(server: &Server) -> BTreeSet<u64> {
    server
        .audit(10_000)
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

async fn start(dir: tempfile::TempDir, cfg: std::path::PathBuf) -> Server {
    tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sink_kind_receives_every_record_and_spans_follow_the_pipeline() {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let (udp, udp_got) = udp_collector().await;
    let tcp = TcpCollector::start().await;
    let http = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("audit.jsonl");
    // The gateway trusts its own CA for TLS receivers: make the CA first and
    // give the TLS collector a certificate from it.
    let ca = portcullis_identity::CertificateAuthority::generate("portcullis.local").unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(state.join("ca.key"), ca.key_pem()).unwrap();
    let (cert, key) = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
    let tls_config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    let tls =
        TcpCollector::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config)))).await;
    let sections = format!(
        r#"{routes}
{secret}
[telemetry]
otlp_endpoint = "http://{http}/otlp"
service_name = "gw-test"
sampling_ratio = 1.0

[[audit.export]]
name = "file"
kind = "jsonl"
path = "audit.jsonl"

[[audit.export]]
name = "syslog-udp"
kind = "syslog"
address = "{udp}"
facility = "local4"
hostname = "gw1"

[[audit.export]]
name = "syslog-tcp"
kind = "syslog"
address = "{tcp}"
transport = "tcp"

[[audit.export]]
name = "syslog-tls"
kind = "syslog"
address = "{tls}"
transport = "tls"

[[audit.export]]
name = "hook"
kind = "webhook"
url = "http://{http}/hook"
headers = {{ Authorization = "{SECRET}" }}
batch_size = 3

[[audit.export]]
name = "otel"
kind = "otlp"
endpoint = "http://{http}/otlp"
"#,
        routes = route("api", "/api", &format!("http://{upstream}"), "public"),
        secret = route(
            "secret",
            "/secret",
            &format!("http://{upstream}"),
            "confidential"
        ),
        tcp = tcp.addr,
        tls = tls.addr,
        http = http.addr,
    );
    let cfg = config(dir.path(), &sections, "");
    let server = start(dir, cfg).await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let agent = client(&server.ca_pem(), Some((&cert, &key)));

    let caller_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let allowed = agent
        .get(server.url("/api/items"))
        .header("traceparent", caller_trace)
        .header("tracestate", "caller=1")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let allowed_id = request_id(&allowed);
    let echoed: Value = allowed.json().await.unwrap();
    let denied = agent.get(server.url("/secret/x")).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let denied_id = request_id(&denied);
    let anonymous = client(&server.ca_pem(), None)
        .get(server.url("/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    for i in 0..7 {
        let r = agent
            .get(server.url(&format!("/api/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    server.audit_record(&allowed_id);
    server.audit_record(&denied_id);
    // Every record, admin ones included, reaches every sink.
    let mut want = all_seqs(&server);
    for _ in 0..100 {
        if want.len() >= 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        want = all_seqs(&server);
    }
    assert!(want.len() >= 11, "{want:?}");

    let jsonl_seqs = || -> BTreeSet<u64> {
        std::fs::read_to_string(&jsonl)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    wait_for("jsonl", &want, jsonl_seqs).await;
    wait_for("syslog udp", &want, || syslog_seqs(&udp_got)).await;
    wait_for("syslog tcp", &want, || syslog_seqs(&tcp.got)).await;
    wait_for("syslog tls", &want, || syslog_seqs(&tls.got)).await;
    wait_for("webhook", &want, || webhook_seqs(&http)).await;
    wait_for("otlp", &want, || otlp_seqs(&http)).await;

    // jsonl: the canonical record, one per line, the same as the log.
    // The records as the admin API serves them (the CLI's `-o json` writes
    // times in RFC 3339; the sink writes the canonical record).
    let tail: Value = client(&server.ca_pem(), None)
        .get(format!(
            "https://{}/admin/v1/audit?limit=1000",
            server.admin
        ))
        .bearer_auth(server.admin_token().trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tail = tail["records"].as_array().unwrap();
    let text = std::fs::read_to_string(&jsonl).unwrap();
    for line in text.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let stored = tail.iter().find(|r| r["seq"] == record["seq"]).unwrap();
        assert_eq!(&record, stored);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&jsonl).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the export file is private");
    }

    // syslog: facility, severity from the outcome, header fields, structured data.
    for (got, facility, hostname) in [
        (&udp_got, 20u8, Some("gw1")),
        (&tcp.got, 4, None),
        (&tls.got, 4, None),
    ] {
        let messages = got.lock().unwrap().clone();
        for id in [&allowed_id, &denied_id] {
            let m = messages
                .iter()
                .find(|m| m.record["request_id"] == id.as_str())
                .unwrap();
            let severity = if m.record["outcome"] == "allow" { 6 } else { 4 };
            assert_eq!(m.pri, facility * 8 + severity, "{m:?}");
            assert_eq!(m.app_name, "portcullis");
            assert_eq!(m.msgid, "request");
            assert_eq!(m.sd_id, "portcullis@32473");
            assert_eq!(m.params["request_id"], *id);
            assert_eq!(m.params["seq"], m.record["seq"].to_string());
            assert_eq!(m.params["outcome"], m.record["outcome"].as_str().unwrap());
            assert!(
                m.timestamp.len() == 24 && m.timestamp.ends_with('Z'),
                "{}",
                m.timestamp
            );
            if let Some(hostname) = hostname {
                assert_eq!(m.hostname, hostname);
            }
        }
        let denied = messages
            .iter()
            .find(|m| m.record["request_id"] == denied_id.as_str())
            .unwrap();
        assert_eq!(denied.params["error_code"], "forbidden");
        assert_eq!(denied.params["policies"], "default-deny");
    }

    // webhook: JSON arrays of at most batch_size records, with the header.
    for r in http.requests("/hook") {
        assert_eq!(r.headers["authorization"], SECRET);
        assert_eq!(r.headers["content-type"], "application/json");
        let batch: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        assert!(!batch.is_empty() && batch.len() <= 3);
    }

    // otlp logs: the OTLP JSON shape, severity from the outcome, the request
    // id as the trace id.
    let logs = http.requests("/otlp/v1/logs");
    let body: Value = serde_json::from_slice(&logs[0].body).unwrap();
    assert_eq!(logs[0].headers["content-type"], "application/json");
    let resource = &body["resourceLogs"][0]["resource"]["attributes"];
    assert_eq!(
        attribute(resource, "service.name")["stringValue"],
        "gw-test"
    );
    assert_eq!(
        body["resourceLogs"][0]["scopeLogs"][0]["scope"]["name"],
        "portcullis.audit"
    );
    for record in otlp_log_records(&http) {
        let fields = record.as_object().unwrap();
        for key in fields.keys() {
            assert!(
                [
                    "timeUnixNano",
                    "observedTimeUnixNano",
                    "severityNumber",
                    "severityText",
                    "body",
                    "attributes",
                    "traceId"
                ]
                .contains(&key.as_str()),
                "not an OTLP LogRecord field: {key}"
            );
        }
        let audit: Value =
            serde_json::from_str(record["body"]["stringValue"].as_str().unwrap()).unwrap();
        let time = record["timeUnixNano"].as_str().unwrap();
        assert_eq!(time, format!("{}000000", audit["time_ms"]));
        let (number, text) = if audit["outcome"] == "allow" {
            (9, "INFO")
        } else {
            (13, "WARN")
        };
        assert_eq!(record["severityNumber"], number);
        assert_eq!(record["severityText"], text);
        assert_eq!(record["traceId"], audit["request_id"]);
        let attributes = &record["attributes"];
        assert_eq!(
            attribute(attributes, "portcullis.audit.seq")["intValue"],
            audit["seq"].to_string()
        );
        assert_eq!(
            attribute(attributes, "portcullis.request_id")["stringValue"],
            audit["request_id"]
        );
        assert_eq!(
            attribute(attributes, "portcullis.outcome")["stringValue"],
            audit["outcome"]
        );
    }

    // Traces: the allowed request's server span and one child per stage, the
    // caller's trace as a link, and the upstream parented on `forward`.
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = http
            .requests("/otlp/v1/traces")
            .iter()
            .flat_map(|r| {
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(
                    attribute(
                        &body["resourceSpans"][0]["resource"]["attributes"],
                        "service.name"
                    )["stringValue"],
                    "gw-test"
                );
                body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .filter(|s| s["traceId"] == allowed_id.as_str())
            .collect();
        if spans.len() == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(spans.len(), 7, "{spans:#?}");
    let root = spans
        .iter()
        .find(|s| s.get("parentSpanId").is_none())
        .unwrap();
    assert_eq!(root["kind"], 2);
    assert_eq!(root["name"], "GET api");
    assert_eq!(
        root["links"][0]["traceId"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        attribute(&root["attributes"], "http.response.status_code")["intValue"],
        "200"
    );
    let start: u128 = root["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = root["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start <= end);
    let mut stages = Vec::new();
    for span in spans.iter().filter(|s| s.get("parentSpanId").is_some()) {
        assert_eq!(span["parentSpanId"], root["spanId"]);
        let s: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let e: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start <= s && s <= e && e <= end, "{span}");
        stages.push(span["name"].as_str().unwrap().to_string());
    }
    assert_eq!(
        stages,
        [
            "decode",
            "authenticate",
            "contextualize",
            "inspect",
            "authorize",
            "forward"
        ]
    );
    let forward = spans.iter().find(|s| s["name"] == "forward").unwrap();
    assert_eq!(forward["kind"], 3);
    assert_eq!(
        echoed["headers"]["traceparent"],
        format!("00-{allowed_id}-{}-01", forward["spanId"].as_str().unwrap())
    );
    assert!(
        echoed["headers"].get("tracestate").is_none(),
        "the caller's tracestate stays behind the trust boundary"
    );

    // Both signals parse strictly as the official protobuf messages.
    let log_bodies: Vec<Bytes> = logs.iter().map(|r| r.body.clone()).collect();
    if let Some(n) = check_with_opentelemetry_proto("logs", &log_bodies) {
        assert_eq!(n, otlp_log_records(&http).len());
    }
    let trace_bodies: Vec<Bytes> = http
        .requests("/otlp/v1/traces")
        .iter()
        .map(|r| r.body.clone())
        .collect();
    if let Some(n) = check_with_opentelemetry_proto("traces", &trace_bodies) {
        assert!(n >= 6, "{n} spans");
    }

    // Health in /metrics: everything delivered, nothing behind.
    let text = metrics(&server).await;
    for sink in [
        "file",
        "syslog-udp",
        "syslog-tcp",
        "syslog-tls",
        "hook",
        "otel",
    ] {
        let delivered = sink_metric(
            &text,
            "portcullis_audit_export_delivered_records_total",
            sink,
        )
        .unwrap_or_else(|| panic!("no delivered metric for {sink}:\n{text}"));
        assert!(delivered >= want.len() as f64, "{sink}: {delivered}");
        assert_eq!(
            sink_metric(&text, "portcullis_audit_export_failures_total", sink),
            Some(0.0)
        );
        assert!(sink_metric(&text, "portcullis_audit_export_lag_records", sink).is_some());
    }
    assert!(text.contains("portcullis_trace_spans_exported_total"));
    assert!(
        !server.stderr.lock().unwrap().contains("0c1d2e3f"),
        "a secret header value was logged"
    );

    // Shutdown flushes the exporters without waiting out their grace period.
    let mut server = server;
    let t = std::time::Instant::now();
    assert!(server.terminate().success());
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        t.elapsed()
    );
}

/// Waits until the TCP syslog, webhook and OTLP receivers hold every record in `want`.
async fn wait_all(want: &BTreeSet<u64>, tcp: &TcpCollector, http: &HttpReceiver) {
    wait_for("syslog tcp", want, || syslog_seqs(&tcp.got)).await;
    wait_for("webhook", want, || webhook_seqs(http)).await;
    wait_for("otlp", want, || otlp_seqs(http)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_records_are_delivered_after_a_receiver_returns_and_across_restarts() {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let mut tcp = TcpCollector::start().await;
    let mut http = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sections = format!(
        r#"{routes}
[[audit.export]]
name = "syslog-tcp"
kind = "syslog"
address = "{tcp}"
transport = "tcp"
timeout_ms = 2000

[[audit.export]]
name = "hook"
kind = "webhook"
url = "http://{http}/hook"
timeout_ms = 2000

[[audit.export]]
name = "otel"
kind = "otlp"
endpoint = "http://{http}/otlp"
timeout_ms = 2000
"#,
        routes = route("api", "/api", &format!("http://{upstream}"), "public"),
        tcp = tcp.addr,
        http = http.addr,
    );
    let cfg = config(dir.path(), &sections, "");
    let mut server = start(dir, cfg.clone()).await;
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let ca = server.ca_pem();
    let agent = client(&ca, Some((&cert, &key)));
    let send = |server: &Server, n: usize| {
        let urls: Vec<String> = (0..n).map(|i| server.url(&format!("/api/{i}"))).collect();
        let agent = agent.clone();
        async move {
            for url in urls {
                assert_eq!(agent.get(url).send().await.unwrap().status(), 200);
            }
        }
    };
    send(&server, 3).await;
    let mut want = all_seqs(&server);
    for _ in 0..100 {
        if want.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        want = all_seqs(&server);
    }
    assert!(want.len() >= 4, "{want:?}");
    wait_all(&want, &tcp, &http).await;

    // The receivers go away; requests go on and are recorded.
    tcp.stop();
    http.stop();
    send(&server, 5).await;
    let mut behind = 0.0;
    for _ in 0..200 {
        let text = metrics(&server).await;
        let failures = ["syslog-tcp", "hook", "otel"]
            .map(|s| sink_metric(&text, "portcullis_audit_export_failures_total", s).unwrap());
        behind = ["syslog-tcp", "hook", "otel"]
            .map(|s| sink_metric(&text, "portcullis_audit_export_lag_records", s).unwrap())
            .into_iter()
            .fold(f64::MAX, f64::min);
        if failures.iter().all(|f| *f > 0.0) && behind >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        behind >= 5.0,
        "every sink is behind while its receiver is down"
    );

    // They come back: what they missed arrives.
    tcp.restart().await;
    http.restart().await;
    let want = all_seqs(&server);
    wait_all(&want, &tcp, &http).await;
    let delivered_before_restart = want.iter().max().copied().unwrap();

    // A graceful restart keeps the cursors: records made while the receivers
    // are down across the restart arrive once they are back, and nothing
    // delivered before is sent again.
    assert!(server.terminate().success());
    tcp.stop();
    http.stop();
    tcp.got.lock().unwrap().clear();
    http.got.lock().unwrap().clear();
    let dir = server.into_dir();
    let cfg_again = cfg.clone();
    let server = start(dir, cfg).await;
    send(&server, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.restart().await;
    http.restart().await;
    let want: BTreeSet<u64> = all_seqs(&server)
        .into_iter()
        .filter(|s| *s > delivered_before_restart)
        .collect();
    assert!(want.len() >= 4, "{want:?}");
    wait_all(&want, &tcp, &http).await;
    let resent: Vec<u64> = syslog_seqs(&tcp.got)
        .into_iter()
        .chain(webhook_seqs(&http))
        .chain(otlp_seqs(&http))
        .filter(|s| *s <= delivered_before_restart)
        .collect();
    assert!(
        resent.is_empty(),
        "records delivered before the restart were sent again: {resent:?}"
    );

    // A crash (kill -9) while the receivers are down loses nothing either:
    // the records are durable, and the cursors are where they were.
    tcp.stop();
    http.stop();
    let delivered = all_seqs(&server).into_iter().max().unwrap();
    send(&server, 3).await;
    let mut want = BTreeSet::new();
    for _ in 0..250 {
        want = all_seqs(&server)
            .into_iter()
            .filter(|s| *s > delivered)
            .collect();
        if want.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(want.len(), 3, "the records are durable before the crash");
    let dir = server.into_dir();
    let server = start(dir, cfg_again).await;
    tcp.restart().await;
    http.restart().await;
    wait_all(&want, &tcp, &http).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn jsonl_to_stdout_follows_the_ready_line() {
    use std::io::BufRead;
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[[audit.export]]\nname = \"stdout\"\nkind = \"jsonl\"\npath = \"-\"\n",
        "",
    );
    let state = dir.path().join("state");
    let mut child = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(first.starts_with("portcullis: gateway https://"), "{first}");
    let created = std::process::Command::new(BIN)
        .args(["agent", "create", "stdout-bot", "--role", "reader", "--out"])
        .arg(dir.path().join("creds"))
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(created.status.success());
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["kind"], "admin", "{record}");
    assert_eq!(record["seq"], 0);
    let _ = child.kill();
    let _ = child.wait();
}
