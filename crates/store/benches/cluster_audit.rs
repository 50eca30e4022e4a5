//! Audit appends in cluster mode: records per second into one log on
//! PostgreSQL, with one appender (one replica) and with several appending at
//! once (three by default: three stores with a pool each in this one
//! process, standing for three replicas; each group-commits its own batches
//! under the audit advisory lock, catching up with the others' records
//! first).
//!
//! Run (debug build of the dependencies is fine; a fresh database of its own
//! on 127.0.0.1:5432, dropped at the end):
//! `cargo bench -p portcullis-store --features testing --bench cluster_audit --profile dev`
//! Knobs (environment): `BENCH_RECORDS` per appender (default 50,000),
//! `BENCH_BATCH` (default 2048, the audit writer's largest batch),
//! `BENCH_APPENDERS` (the runs, default `1,3`: one appender, then three at
//! once, each run appending after the last).
//!
//! Measured (shared 2-core machine at load average 17, PostgreSQL 15 on
//! 127.0.0.1, dev profile, batches of 2048, `BENCH_RECORDS=20000`; the
//! full table, with the code before `COPY` and hashing under the lock, is
//! in docs/cluster.md "Audit appends"):
//!
//! | appenders | records/s | client CPU per record |
//! | --- | --- | --- |
//! | 1 | 3,200–3,600 | 59–62 µs |
//! | 3 together | 2,900–3,000 | 64–71 µs |
//!
//! Bound by CPU: most of the client's is SHA-256 in the debug build. No
//! release build has been measured.
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

/// CPU time this process (the appenders, not PostgreSQL) has used so far,
/// in seconds: user + system ticks from `/proc/self/stat` (0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime is the
    // 12th of them, stime the 13th, in ticks of 1/100 s.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_num("BENCH_RECORDS", 50_000);
    let batch = env_num("BENCH_BATCH", 2048);
    let counts: Vec<usize> = std::env::var("BENCH_APPENDERS")
        .unwrap_or_else(|_| "1,3".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let Some(db) = TestDb::postgres().await else {
        eprintln!("SKIPPED: no PostgreSQL on 127.0.0.1:5432");
        return;
    };
    println!("cluster audit appends: {n} records per appender, batches of {batch}");
    let mut expected = 0;
    for count in counts {
        // One store (one pool) per appender: each is a replica.
        let mut stores = Vec::new();
        for _ in 0..count {
            stores.push(db.open().await);
        }
        let tags: [&'static str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let (cpu, started) = (cpu_seconds(), Instant::now());
        let tasks: Vec<_> = stores
            .iter()
            .zip(tags.iter().cycle())
            .map(|(store, tag)| {
                let tag: &'static str = tag;
                tokio::spawn(append(store.clone(), tag, n, batch))
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu;
        println!(
            "  {count} appender(s): {:>9.0} records/s together; client CPU {:.1} µs/record",
            total as f64 / wall,
            cpu * 1e6 / total as f64
        );
        expected += total;
        let size = stores[0].audit_size().await.unwrap();
        assert_eq!(size, expected, "every record once, in one log");
        for store in stores {
            store.close().await;
        }
    }
}
