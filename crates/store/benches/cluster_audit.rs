//! Audit appends in cluster mode: records per second into one log on
//! PostgreSQL, with one appender (one replica) and with two appending at
//! once (two replicas, each group-committing its own batches under the
//! audit advisory lock, catching up with the other's records first).
//!
//! Run (debug build of the dependencies is fine; a fresh database of its own
//! on 127.0.0.1:5432, dropped at the end):
//! `cargo bench -p portcullis-store --features testing --bench cluster_audit --profile dev`
//! Knobs (environment): `BENCH_RECORDS` per appender (default 50,000),
//! `BENCH_BATCH` (default 2048, the audit writer's largest batch).
//!
//! Measured (loaded 2-core machine, PostgreSQL 127.0.0.1, dev profile,
//! batches of 2048; see docs/cluster.md): recorded in docs/cluster.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_store::Store;
use portcullis_store::testing::TestDb;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A data-plane record of ordinary size; `tag` keeps request ids apart.
fn record(tag: &str, i: u64) -> AuditRecord {
    AuditRecord {
        time_ms: 1_795_000_000_000 + i as i64,
        kind: RecordKind::Request,
        request_id: format!("{tag}-{i:016x}"),
        principal: Some(format!("agent-{}", i % 40)),
        action: "GET".into(),
        resource: Some("inventory".into()),
        path: Some(format!("/inventory/items/{i}")),
        outcome: Outcome::Allow,
        policies: vec!["readers".into()],
        status: 200,
        duration_us: 350,
        bytes_out: 900,
        ..AuditRecord::default()
    }
}

/// Appends `n` records in batches of `batch` through one appender; answers
/// how many it appended.
async fn append(store: Store, tag: &'static str, n: u64, batch: u64) -> u64 {
    let mut log = store.audit_appender().await.unwrap();
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        let mut records: Vec<_> = (i..end).map(|j| record(tag, j)).collect();
        log.append(&mut records).await.unwrap();
        i = end;
    }
    n
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_num("BENCH_RECORDS", 50_000);
    let batch = env_num("BENCH_BATCH", 2048);
    let Some(db) = TestDb::postgres().await else {
        eprintln!("SKIPPED: no PostgreSQL on 127.0.0.1:5432");
        return;
    };
    println!("cluster audit appends: {n} records per appender, batches of {batch}");
    let one = db.open().await;
    let started = Instant::now();
    append(one.clone(), "solo", n, batch).await;
    let solo = n as f64 / started.elapsed().as_secs_f64();
    println!("  1 appender : {solo:>9.0} records/s");

    // Two replicas: two stores (two pools), appending to the same log.
    let (a, b) = (db.open().await, db.open().await);
    let started = Instant::now();
    let (x, y) = tokio::join!(
        tokio::spawn(append(a.clone(), "a", n, batch)),
        tokio::spawn(append(b.clone(), "b", n, batch)),
    );
    let total = x.unwrap() + y.unwrap();
    let pair = total as f64 / started.elapsed().as_secs_f64();
    println!("  2 appenders: {pair:>9.0} records/s (together)");
    let size = one.audit_size().await.unwrap();
    assert_eq!(size, 3 * n, "every record once, in one log");
    for store in [one, a, b] {
        store.close().await;
    }
}
