//! Bytes on disk per stored audit record (issue 17, item 5: at most 400 B for
//! a typical request record).
//!
//! For each protocol, 10,000 typical request records (HTTP, MCP, LLM: the
//! shapes the gateway writes, with random request ids and body digests) are
//! appended through the real [`AuditAppender`] in batches, into a fresh state;
//! the database is then checkpointed and vacuumed, and the size of the file
//! (WAL included) is divided by the number of records. The empty schema is
//! counted too, so the figure is an upper bound. Run it with
//! `cargo test -p portcullis-store --test record_size -- --nocapture`
//! to see the figures.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use portcullis_audit::{AuditRecord, ContentFinding, Outcome, RecordKind};
use portcullis_store::Store;

const RECORDS: usize = 10_000;
const BATCH: usize = 100;
/// The target of issue 17.
const MAX_BYTES_PER_RECORD: u64 = 400;

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn hex(&mut self, bytes: usize) -> String {
        (0..bytes)
            .map(|_| format!("{:02x}", self.next() as u8))
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Http,
    Mcp,
    Llm,
}

const AGENTS: [&str; 5] = [
    "reader-bot",
    "writer-bot",
    "support-agent",
    "billing-agent",
    "research-assistant",
];

fn typical(protocol: Protocol, i: usize, rng: &mut Rng, serials: &[String]) -> AuditRecord {
    let agent = rng.below(AGENTS.len() as u64) as usize;
    let principal = AGENTS[agent];
    let denied = rng.below(10) == 0;
    let mut record = AuditRecord {
        time_ms: 1_796_000_000_000 + (i as i64) * 37,
        kind: RecordKind::Request,
        request_id: rng.hex(16),
        principal: Some(principal.into()),
        credential: Some(format!(
            "spiffe://portcullis.local/agent/{principal} serial={}",
            serials[agent]
        )),
        source_ip: Some(format!("10.0.{}.{}", agent, 10 + agent)),
        outcome: if denied {
            Outcome::Deny
        } else {
            Outcome::Allow
        },
        duration_us: 500 + rng.below(40_000),
        request_sha256: Some(rng.hex(32)),
        response_sha256: Some(rng.hex(32)),
        policy_version: Some(7),
        ..Default::default()
    };
    match protocol {
        Protocol::Http => {
            let (method, route, class) = match rng.below(4) {
                0 => ("POST", "orders", "confidential"),
                1 => ("GET", "orders", "confidential"),
                _ => ("GET", "catalog", "internal"),
            };
            record.action = method.into();
            record.resource = Some(route.into());
            record.path = Some(format!("/{route}/items/{}", rng.below(100_000)));
            record.classification = Some(class.into());
            record.policies = vec![format!("{route}-readers")];
            record.bytes_in = if method == "POST" {
                200 + rng.below(800)
            } else {
                0
            };
            record.bytes_out = 300 + rng.below(4_000);
        }
        Protocol::Mcp => {
            let tool = ["search_docs", "create_ticket", "read_file"][rng.below(3) as usize];
            record.action = "call_tool".into();
            record.resource = Some(format!("tools/{tool}"));
            record.path = Some("/mcp".into());
            record.classification = Some("internal".into());
            record.policies = vec!["agents-call-approved-tools".into()];
            record.bytes_in = 150 + rng.below(600);
            record.bytes_out = 400 + rng.below(6_000);
        }
        Protocol::Llm => {
            let model = ["gpt-4o-mini", "claude-sonnet"][rng.below(2) as usize];
            record.action = "complete".into();
            record.resource = Some(format!("llm/{model}"));
            record.path = Some("/llm/v1/chat/completions".into());
            record.classification = Some("confidential".into());
            record.policies = vec!["assistants-use-models".into()];
            record.bytes_in = 800 + rng.below(8_000);
            record.bytes_out = 500 + rng.below(4_000);
            if rng.below(20) == 0 {
                record.content = vec![ContentFinding {
                    direction: "request".into(),
                    kind: "email".into(),
                    pointer: Some("/messages/0/content".into()),
                    start: rng.below(400),
                    end: 420,
                    fingerprint: Some(rng.hex(8)),
                }];
            }
        }
    }
    if denied {
        record.policies = vec!["default-deny".into()];
        record.error_code = Some("policy_denied".into());
        record.status = 403;
        record.bytes_out = 120;
        record.response_sha256 = Some(rng.hex(32));
    } else {
        record.status = 200;
    }
    record
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Bytes of the database and its WAL after a checkpoint and a VACUUM.
async fn settled_size(db: &Path) -> u64 {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    for statement in [
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "VACUUM",
        "PRAGMA wal_checkpoint(TRUNCATE)",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    sqlx::Connection::close(conn).await.unwrap();
    let wal = db.with_extension("sqlite-wal");
    file_size(db) + file_size(&wal)
}

/// (bytes per record including the empty schema, bytes per record above it)
async fn measure(protocol: Protocol) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let store = Store::open_sqlite(&db).await.unwrap();
    store.close().await;
    let empty = settled_size(&db).await;

    let store = Store::open_sqlite(&db).await.unwrap();
    let mut log = store.audit_appender().await.unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let serials: Vec<String> = AGENTS.iter().map(|_| rng.hex(16)).collect();
    for start in (0..RECORDS).step_by(BATCH) {
        let mut batch: Vec<AuditRecord> = (start..start + BATCH)
            .map(|i| typical(protocol, i, &mut rng, &serials))
            .collect();
        log.append(&mut batch).await.unwrap();
    }
    assert_eq!(log.head().size, RECORDS as u64);
    drop(log);
    store.close().await;
    let full = settled_size(&db).await;
    (full / RECORDS as u64, (full - empty) / RECORDS as u64)
}

#[tokio::test]
async fn a_typical_request_record_takes_at_most_400_bytes_on_disk() {
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let (total, above_schema) = measure(protocol).await;
        println!(
            "{protocol:?}: {total} B per record on disk ({above_schema} B above the empty schema), {RECORDS} records"
        );
        assert!(
            total <= MAX_BYTES_PER_RECORD,
            "{protocol:?} records take {total} B each on disk"
        );
    }
}
