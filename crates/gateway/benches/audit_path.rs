//! What the audit log adds to a request's path, at 2,000 requests/s with the
//! real writer committing to a real SQLite log (WAL, synchronous=FULL) in the
//! background — the target is no more than 50 µs added at p99.
//!
//! Per request, exactly the audit work the pipeline does: the fail-closed
//! check, a 1 KiB request body streamed through `MeteredBody` (limit, count,
//! SHA-256), a 1 KiB response streamed through `RecordedBody` (count, SHA-256,
//! completion), and the record handed to the writer. The baseline is the same
//! paced loop streaming the same bodies through no wrapper, measured in the
//! same run, so the difference is the audit log's share.
//!
//! Run: `cargo bench -p portcullis-gateway --bench audit_path`
//! Knobs: `BENCH_RATE` (default 2000 req/s), `BENCH_SECS` (default 5).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_gateway::audit_sink::AuditWriter;
use portcullis_gateway::body::{BodyMeter, MeteredBody, RecordedBody, Recorder};
use portcullis_gateway::metrics::Metrics;
use portcullis_store::Store;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn body() -> Full<Bytes> {
    Full::new(Bytes::from(vec![b'x'; 1024]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate = env_num("BENCH_RATE", 2000);
    let secs = env_num("BENCH_SECS", 5);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let (sink, writer) = AuditWriter::start(
        store.audit_appender().await.unwrap(),
        Duration::from_secs(1),
        None,
        metrics.clone(),
    );
    let n = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);

    // Baseline: pacing and the same two bodies, no audit wrappers.
    let mut baseline = Vec::with_capacity(n);
    let mut ticker = tokio::time::interval(interval);
    for _ in 0..n {
        ticker.tick().await;
        let t = Instant::now();
        let up = body().collect().await.unwrap().to_bytes();
        let down = body().collect().await.unwrap().to_bytes();
        std::hint::black_box((up, down));
        baseline.push(t.elapsed());
    }

    // The audit path, with the writer committing in the background.
    let mut audited = Vec::with_capacity(n);
    let mut ticker = tokio::time::interval(interval);
    for i in 0..n {
        ticker.tick().await;
        let t = Instant::now();
        assert!(sink.writable());
        let meter = Arc::new(BodyMeter::default());
        let recorder = Recorder::new(
            AuditRecord {
                time_ms: 1_795_000_000_000 + i as i64,
                kind: RecordKind::Request,
                request_id: format!("{i:032x}"),
                principal: Some("bench-agent".into()),
                credential: Some("spiffe://portcullis.local/agent/bench-agent serial=01".into()),
                source_ip: Some("127.0.0.1".into()),
                action: "POST".into(),
                resource: Some("api".into()),
                path: Some("/api/x".into()),
                outcome: Outcome::Allow,
                policies: vec!["writers".into()],
                status: 200,
                classification: Some("internal".into()),
                ..AuditRecord::default()
            },
            t,
            meter.clone(),
            sink.clone(),
            metrics.clone(),
        );
        let up = MeteredBody::new(body(), 1 << 20, meter)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let response = RecordedBody::new(body().map_err(|e| match e {}).boxed(), recorder);
        let down = response.collect().await.unwrap().to_bytes();
        std::hint::black_box((up, down));
        audited.push(t.elapsed());
    }
    let written_before_finish = sink.head().size;
    writer.finish().await;
    let written = store.audit_size().await.unwrap();
    assert_eq!(written, n as u64, "every record was written");

    baseline.sort();
    audited.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("audit path at {rate} req/s for {secs} s ({n} requests, 1 KiB each way)");
    println!("| path | p50 | p99 | p99.9 | max |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, v) in [
        ("baseline (bodies only)", &baseline),
        ("with audit", &audited),
    ] {
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            us(percentile(v, 0.5)),
            us(percentile(v, 0.99)),
            us(percentile(v, 0.999)),
            us(*v.last().unwrap())
        );
    }
    println!(
        "added at p99: {:.1} µs (target <= 50 µs); {written_before_finish} of {n} records durable before the writer was stopped",
        us(percentile(&audited, 0.99)) - us(percentile(&baseline, 0.99))
    );
}
