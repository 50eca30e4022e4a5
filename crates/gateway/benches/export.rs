//! SIEM export and tracing, measured in one run against baselines.
//!
//! Run: `cargo bench -p portcullis-gateway --bench export`
//!
//! 1. **Tracing on the request path.** The per-request work tracing adds
//!    (start the trace, note five stage timings, build the upstream
//!    `traceparent`, finish and queue the trace). The baseline is the timing
//!    work the pipeline does anyway: a request id, and five stage timings
//!    recorded in the histograms. The trace exporter sends to a real
//!    collector on loopback meanwhile, and its throughput is reported.
//! 2. **Export throughput.** 100,000 records in a real SQLite log, delivered
//!    by one sink of each kind to a real receiver on loopback. The baseline
//!    is reading the same records from the store in the same batches, which
//!    every sink has to do.
//!
//! Measured on the 2-core development machine (2026-11-23), the bench, the
//! receivers and the exporter sharing both cores, three runs:
//!
//! | request path | ns/request |
//! | --- | --- |
//! | untraced (baseline: request id + five stage timings) | 438–478 |
//! | traced (plus trace start, five spans noted, `traceparent`, queued) | 1,148–1,259 (+710–810) |
//!
//! All 600,000 spans reached the collector and none were dropped.
//!
//! | export, 100,000 records of 666 bytes | records/s | time vs. baseline |
//! | --- | --- | --- |
//! | read from the store, batches of 500 (baseline) | 427,000–619,000 | 1 |
//! | `jsonl`, fsync per batch | 95,000–144,000 | 3.3–6.5× |
//! | `syslog` over TCP | 128,000–167,000 | 3.4–4.4× |
//! | `syslog` over UDP | 70,000–100,000 | 4.3–8.1× |
//! | `webhook`, JSON arrays | 149,000–205,000 | 2.4–3.8× |
//! | `otlp` logs | 100,000–117,000 | 4.3–5.6× |
//!
//! Each sink keeps up with at least ~70,000 records/s, above what the audit
//! writer commits, so a healthy receiver never falls behind. Tracing costs a
//! request under 1 µs, far below the 50 µs p99 budget of issue 5.
//!
//! End to end, `BENCH_EXTRA_CONFIG='[telemetry] …' cargo bench -p
//! portcullis-cli --bench gateway` had a Python OTLP receiver on the same 2
//! cores as the load generator, the upstream and the gateway. The effect of
//! tracing every request could not be told apart from run-to-run noise on
//! this shared machine. Through the gateway, p99 was 152–317 µs with tracing
//! off and 148–447 µs with it on (`sampling_ratio` 1.0); p50 was 48–98 µs
//! off and 51–125 µs on. At saturation, throughput fell 15–30 % with
//! `sampling_ratio` 1.0, because the exporter and the receiver take CPU from
//! the same two cores, and stayed within noise at 0.1. On a busy host, sample
//! or run the collector elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_core::RequestId;
use portcullis_gateway::audit_export::Exporters;
use portcullis_gateway::config::{
    ExportConfig, ExportTarget, Facility, SecretHeaders, SyslogTransport, TelemetryConfig,
    WebhookFormat,
};
use portcullis_gateway::metrics::{Metrics, Stage};
use portcullis_gateway::trace::{Tracer, now_unix};
use portcullis_store::Store;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};

const STAGES: [Stage; 5] = [
    Stage::Decode,
    Stage::Authenticate,
    Stage::Contextualize,
    Stage::Authorize,
    Stage::Forward,
];

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tracing_cost().await;
        export_throughput().await;
    });
}

fn tls() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn record(seq: u64) -> AuditRecord {
    AuditRecord {
        seq: Some(seq),
        time_ms: 1_795_000_000_000 + seq as i64,
        kind: RecordKind::Request,
        request_id: RequestId::new().to_string(),
        principal: Some("reader-bot".into()),
        credential: Some(
            "spiffe://portcullis.local/agent/reader-bot serial=2d17ce7c8bcadcbb".into(),
        ),
        source_ip: Some("10.1.2.3".into()),
        action: "GET".into(),
        resource: Some("tickets".into()),
        path: Some("/tickets/42".into()),
        outcome: if seq.is_multiple_of(4) {
            Outcome::Deny
        } else {
            Outcome::Allow
        },
        policies: vec!["readers-read-low".into()],
        error_code: None,
        status: 200,
        duration_us: 180,
        bytes_in: 0,
        bytes_out: 1024,
        classification: Some("internal".into()),
        request_sha256: Some(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        ),
        response_sha256: Some(
            "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447".into(),
        ),
        response_sha256_unredacted: None,
        fail_open: false,
        content: Vec::new(),
        policy_version: Some(1),
        approval_ticket: None,
        breakglass: None,
        sampled: None,
        process: None,
    }
}

/// An HTTP receiver answering 200 to everything; counts requests.
async fn http_receiver() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            seen.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"{}"),
                            )))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, count)
}

async fn tracing_cost() {
    const N: usize = 100_000;
    const BURST: usize = 2_000;
    let metrics = Arc::new(Metrics::new());
    let (collector, _) = http_receiver().await;
    let config = TelemetryConfig {
        traces_url: format!("http://{collector}/v1/traces").parse().unwrap(),
        headers: SecretHeaders::default(),
        service_name: "bench".into(),
        sampling_ratio: 1.0,
    };
    let (tracer, exporter) = Tracer::start(&config, metrics.clone(), tls());
    let rec = record(1);

    // Bursts small enough for the queue, then let the exporter drain, so
    // the traced loop measures the path requests take, not the drop path.
    let mut base = Duration::ZERO;
    let mut traced = Duration::ZERO;
    let mut queued = 0u64;
    let started = Instant::now();
    for _ in 0..N / BURST {
        let t = Instant::now();
        for _ in 0..BURST {
            let id = RequestId::new();
            let begun = Instant::now();
            for stage in STAGES {
                let s = Instant::now();
                metrics.stage(stage, s.elapsed());
            }
            black_box((&id, begun));
        }
        base += t.elapsed();

        let t = Instant::now();
        for _ in 0..BURST {
            let id = RequestId::new();
            let begun = Instant::now();
            let mut trace = tracer.begin(&id, begun, now_unix(), None);
            for stage in STAGES {
                let s = Instant::now();
                let elapsed = s.elapsed();
                metrics.stage(stage, elapsed);
                trace.stage(stage, s, elapsed);
            }
            black_box(trace.traceparent());
            trace.finish(&rec, begun.elapsed());
        }
        traced += t.elapsed();
        // Wait (bounded) for the exporter to send or drop the burst.
        queued += (BURST * 6) as u64;
        for _ in 0..5_000 {
            let done = metrics.trace_spans_exported.get() + metrics.trace_spans_dropped.get();
            if done >= queued {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let wall = started.elapsed();
    drop(tracer);
    exporter.finish(Duration::from_secs(10)).await;
    let exported = metrics.trace_spans_exported.get();
    let dropped = metrics.trace_spans_dropped.get();
    let per = |d: Duration| d.as_nanos() as f64 / N as f64;
    println!("== tracing on the request path ({N} requests, 6 spans each)");
    println!("untraced (baseline): {:>8.0} ns/request", per(base));
    println!(
        "traced:              {:>8.0} ns/request  (+{:.0} ns, {:.2}x)",
        per(traced),
        per(traced) - per(base),
        per(traced) / per(base)
    );
    println!(
        "exporter: {exported} spans exported, {dropped} dropped ({:.1} s run)",
        wall.as_secs_f64()
    );
}

async fn export_throughput() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("bench.db"))
        .await
        .unwrap();
    let mut appender = store.audit_appender().await.unwrap();
    let mut seq = 0;
    while seq < N {
        let mut batch: Vec<AuditRecord> = (seq..(seq + 2_048).min(N)).map(record).collect();
        seq += batch.len() as u64;
        appender.append(&mut batch).await.unwrap();
    }
    let head = appender.head();
    let (_head_tx, head_rx) = tokio::sync::watch::channel(head);

    // Baseline: read every record in the sinks' batch size.
    let t = Instant::now();
    let mut next = 0;
    let mut bytes = 0usize;
    while next < N {
        let leaves = store.audit_leaves(next, 500).await.unwrap();
        next = leaves.last().unwrap().0 + 1;
        bytes += leaves.iter().map(|(_, r)| r.len()).sum::<usize>();
    }
    let read = t.elapsed();
    println!(
        "\n== export throughput ({N} records, {} bytes/record)",
        bytes / N as usize
    );
    println!(
        "{:<28} {:>10.0} records/s  (baseline)",
        "read from the store",
        N as f64 / read.as_secs_f64()
    );

    let (http, _) = http_receiver().await;
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tcp.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while stream.read(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    });
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let _ = udp.recv(&mut buf).await;
        }
    });

    let syslog = |transport, address: SocketAddr| ExportTarget::Syslog {
        address: address.to_string(),
        transport,
        facility: Facility::Auth,
        hostname: Some("bench".into()),
        app_name: "portcullis".into(),
    };
    let sinks = [
        (
            "jsonl (fsync per batch)",
            ExportTarget::Jsonl {
                path: Some(dir.path().join("audit.jsonl")),
            },
        ),
        ("syslog tcp", syslog(SyslogTransport::Tcp, tcp_addr)),
        ("syslog udp", syslog(SyslogTransport::Udp, udp_addr)),
        (
            "webhook (json)",
            ExportTarget::Webhook {
                url: format!("http://{http}/hook").parse().unwrap(),
                format: WebhookFormat::Json,
                headers: SecretHeaders::default(),
            },
        ),
        (
            "otlp logs",
            ExportTarget::Otlp {
                url: format!("http://{http}/v1/logs").parse().unwrap(),
                headers: SecretHeaders::default(),
                service_name: "bench".into(),
            },
        ),
    ];
    for (i, (label, target)) in sinks.into_iter().enumerate() {
        let name = format!("bench-{i}");
        let metrics = Arc::new(Metrics::new());
        let config = ExportConfig {
            name: name.clone(),
            target,
            batch_size: 500,
            timeout: Duration::from_secs(10),
        };
        let t = Instant::now();
        let exporters = Exporters::start(
            std::slice::from_ref(&config),
            store.clone(),
            head_rx.clone(),
            &metrics,
            tls(),
        );
        let handles = metrics.export_sink(&name);
        while handles.delivered.get() < N {
            assert!(t.elapsed() < Duration::from_secs(300), "{label} stalled");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = t.elapsed();
        exporters.finish(Duration::from_secs(1)).await;
        println!(
            "{label:<28} {:>10.0} records/s  ({:.2}x the baseline's time, {} failures)",
            N as f64 / took.as_secs_f64(),
            took.as_secs_f64() / read.as_secs_f64(),
            handles.failures.get()
        );
    }
}
