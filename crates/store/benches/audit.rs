//! The audit log's costs, measured in one run against same-run baselines:
//! durable appends (group commit with leaf hashes and stored subtrees) against
//! plain SQLite inserts of the same rows at the same durability; inclusion and
//! consistency proofs served from the store; and verifying the whole log, from
//! the database and from an export.
//!
//! Run: `cargo bench -p portcullis-store --bench audit`
//! Knobs (environment): `BENCH_RECORDS` (default 1,000,000), `BENCH_BATCH`
//! (default 2048, the writer's largest batch).
//!
//! Results are recorded in the closing note and the README.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use portcullis_audit::checkpoint::{self, Checkpoint};
use portcullis_audit::merkle::{self, verify_consistency, verify_inclusion};
use portcullis_audit::note::VerifierKey;
use portcullis_audit::verify::LogVerifier;
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_store::{Store, StoredCheckpoint};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

const ORIGIN: &str = "bench.local/audit";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A realistic data-plane record (~600 bytes of canonical JSON).
fn record(i: u64) -> AuditRecord {
    AuditRecord {
        time_ms: 1_795_000_000_000 + i as i64,
        kind: RecordKind::Request,
        request_id: format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15),
        principal: Some(format!("agent-{}", i % 50)),
        credential: Some(format!(
            "spiffe://portcullis.local/agent/agent-{} serial=49f2ccdb1b01a7efebad8c494e7fa370",
            i % 50
        )),
        source_ip: Some("10.1.2.3".into()),
        action: "POST".into(),
        resource: Some("payments".into()),
        path: Some(format!("/payments/v1/transfers/{i}")),
        outcome: Outcome::Allow,
        policies: vec!["payments-writers".into()],
        status: 200,
        duration_us: 412,
        bytes_in: 1024,
        bytes_out: 2048,
        classification: Some("confidential".into()),
        request_sha256: Some(hex::encode([7u8; 32])),
        response_sha256: Some(hex::encode([9u8; 32])),
        ..AuditRecord::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_num("BENCH_RECORDS", 1_000_000);
    let batch = env_num("BENCH_BATCH", 2048) as usize;
    let dir = tempfile::tempdir().unwrap();
    println!("audit log benchmark: {n} records, batches of {batch}, SQLite WAL + synchronous=FULL");

    // Baseline: the same canonical rows inserted with the same statement shape,
    // batch and durability, but no leaf hashes, no tree, no seq check.
    let baseline = {
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("baseline.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE audit_log (seq INTEGER PRIMARY KEY NOT NULL, request_id TEXT NOT NULL, time_ms INTEGER NOT NULL, record TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let started = Instant::now();
        let mut seq = 0u64;
        while seq < n {
            let end = (seq + batch as u64).min(n);
            let rows: Vec<(u64, AuditRecord, String)> = (seq..end)
                .map(|i| {
                    let mut r = record(i);
                    r.seq = Some(i);
                    let text = String::from_utf8(r.canonical_bytes()).unwrap();
                    (i, r, text)
                })
                .collect();
            let mut tx = pool.begin().await.unwrap();
            for chunk in rows.chunks(256) {
                let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO audit_log (seq, request_id, time_ms, record) ",
                );
                insert.push_values(chunk, |mut row, (seq, r, text)| {
                    row.push_bind(*seq as i64)
                        .push_bind(r.request_id.as_str())
                        .push_bind(r.time_ms)
                        .push_bind(text.as_str());
                });
                insert.build().execute(&mut *tx).await.unwrap();
            }
            tx.commit().await.unwrap();
            seq = end;
        }
        let elapsed = started.elapsed();
        pool.close().await;
        n as f64 / elapsed.as_secs_f64()
    };

    // The audit log: the same records through the Merkle appender.
    let store = Store::open_sqlite(&dir.path().join("log.db"))
        .await
        .unwrap();
    let key = SigningKey::from_bytes(&[5; 32]);
    let verifier = VerifierKey::new(ORIGIN, key.verifying_key()).unwrap();
    let mut log = store.audit_appender().await.unwrap();
    let mut checkpoints = Vec::new();
    let started = Instant::now();
    let mut seq = 0u64;
    while seq < n {
        let end = (seq + batch as u64).min(n);
        let mut records: Vec<AuditRecord> = (seq..end).map(record).collect();
        log.append(&mut records).await.unwrap();
        seq = end;
        // A checkpoint every ~100k records, as a busy log signs every second.
        if seq % 100_352 < batch as u64 || seq == n {
            let head = log.head();
            let note = checkpoint::sign(
                &Checkpoint {
                    origin: ORIGIN.into(),
                    size: head.size,
                    root: head.root,
                },
                &key,
                ORIGIN,
            )
            .unwrap();
            store
                .add_checkpoint(&StoredCheckpoint {
                    size: head.size,
                    time_ms: 0,
                    note: note.clone(),
                })
                .await
                .unwrap();
            checkpoints.push(note);
        }
    }
    let append_elapsed = started.elapsed();
    let merkle_rate = n as f64 / append_elapsed.as_secs_f64();

    // Proofs at the full size, for spread-out records.
    let head = log.head();
    let proofs = 1_000u64;
    let started = Instant::now();
    for i in 0..proofs {
        let index = (i * 7_919 * 131) % head.size;
        let proof = store.inclusion_proof(index, head.size).await.unwrap();
        black_box(&proof);
        if i == 0 {
            let leaf = store.audit_leaves(index, 1).await.unwrap();
            let hash = merkle::leaf_hash(leaf[0].1.as_bytes());
            verify_inclusion(&hash, index, head.size, &proof, &head.root).unwrap();
        }
    }
    let inclusion_us = started.elapsed().as_secs_f64() * 1e6 / proofs as f64;
    let started = Instant::now();
    for i in 1..=proofs {
        let old = (i * 104_729) % head.size + 1;
        let proof = store.consistency_proof(old, head.size).await.unwrap();
        black_box(&proof);
        if i == 1 {
            let old_root = store.audit_head(old).await.unwrap();
            verify_consistency(old, head.size, &old_root, &head.root, &proof).unwrap();
        }
    }
    let consistency_us = started.elapsed().as_secs_f64() * 1e6 / proofs as f64;

    // Verify everything, from the database.
    let started = Instant::now();
    let summary = store
        .verify_audit_log(&verifier, ORIGIN, &[])
        .await
        .unwrap();
    let verify_db = started.elapsed();
    assert_eq!(summary.size, n);
    assert_eq!(summary.signed_size, n);

    // Verify an export (the exact leaves, as `audit export` writes them) with
    // no database: the offline auditor's cost, leaves already in memory.
    let mut lines = Vec::with_capacity(n as usize);
    let mut from = 0u64;
    while from < n {
        let page = store.audit_leaves(from, 50_000).await.unwrap();
        from = page.last().unwrap().0 + 1;
        lines.extend(page.into_iter().map(|(_, text)| text));
    }
    let parsed: Vec<Checkpoint> = checkpoints
        .iter()
        .map(|note| checkpoint::parse_and_verify(note, &verifier.to_string()).unwrap())
        .collect();
    let started = Instant::now();
    let mut offline = LogVerifier::new(parsed);
    for line in &lines {
        offline.push(line.as_bytes(), None, |_| {}).unwrap();
    }
    let offline_summary = offline.finish().unwrap();
    let verify_offline = started.elapsed();
    assert_eq!(offline_summary.root, head.root);
    let bytes: usize = lines.iter().map(String::len).sum();

    let secs = |d: Duration| d.as_secs_f64();
    println!();
    println!("| measurement | result |");
    println!("| --- | --- |");
    println!(
        "| baseline: plain SQLite inserts, same rows and durability | {baseline:.0} records/s |"
    );
    println!(
        "| Merkle log appends (leaf hash, subtrees, seq check), durable | {merkle_rate:.0} records/s ({:.2}x baseline) |",
        merkle_rate / baseline
    );
    println!("| inclusion proof at size {n} | {inclusion_us:.0} µs |");
    println!("| consistency proof at size {n} | {consistency_us:.0} µs |");
    println!(
        "| verify {n} records from the database ({} checkpoints) | {:.2} s |",
        summary.checkpoints,
        secs(verify_db)
    );
    println!(
        "| verify {n} exported records offline ({:.0} MB of leaves) | {:.2} s |",
        bytes as f64 / 1e6,
        secs(verify_offline)
    );
}
