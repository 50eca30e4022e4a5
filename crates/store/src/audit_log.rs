//! The audit log as an RFC 9162 Merkle tree: appending records with their leaf
//! hashes and interior nodes in one transaction, serving inclusion and
//! consistency proofs, keeping signed checkpoints, and verifying the whole log.
//!
//! One [`AuditAppender`] appends at a time (the gateway's audit writer). It
//! keeps the tree's frontier in memory, so an append hashes only the new
//! records; the frontier is rebuilt from stored subtrees when it is opened.
//!
//! Stored per record: the record in its compact form (`audit_rows.rs`; the
//! leaf is its canonical JSON) and the leaf hash. Stored per complete subtree of level [`NODE_MIN_LEVEL`] or more: its hash. A proof
//! needs O(log n) of those plus at most 64 leaf hashes per lower subtree.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::DbRow;
use futures_util::{StreamExt, TryStreamExt};
use portcullis_audit::AuditRecord;
use portcullis_audit::checkpoint::{self, Checkpoint};
use portcullis_audit::merkle::{
    self, Hash, LeafRange, MerkleAccumulator, Subtree, consistency_proof_ranges, fold_subtrees,
    inclusion_proof_ranges, range_subtrees,
};
use portcullis_audit::note::VerifierKey;
use portcullis_audit::verify::{LogVerifier, VerifyError, VerifySummary};

use crate::audit_rows::{self, Interner, RECORD_COLUMNS, StoredRow, StringCache};
use crate::{Store, StoreError};

/// Interior nodes below this level are not stored (recomputed on demand).
pub const NODE_MIN_LEVEL: u32 = 6;
/// Records read per page when verifying the whole log.
const VERIFY_PAGE: u64 = 16_384;
/// Rows per multi-row audit INSERT statement (5 binds each).
const AUDIT_ROWS_PER_INSERT: usize = 256;

/// The size and head of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    /// Number of records.
    pub size: u64,
    /// RFC 9162 tree head.
    pub root: Hash,
}

/// The clear value of a pseudonymized field of a record being appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalValue {
    /// Position of the record in the batch given to [`AuditAppender::append_with_personal`].
    pub record: usize,
    /// The field (`principal`, `source_ip`, `credential`).
    pub field: &'static str,
    /// The clear value.
    pub value: String,
    /// When it must be deleted, ms since the epoch.
    pub expires_ms: i64,
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Tree size it signs.
    pub size: u64,
    /// When it was signed, ms since the epoch.
    pub time_ms: i64,
    /// The signed note.
    pub note: String,
}

/// Why the stored log failed verification.
#[derive(Debug, thiserror::Error)]
pub enum AuditVerifyFailure {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored checkpoint is not validly signed by the trusted key, or names
    /// another log.
    #[error("checkpoint at tree size {size} does not verify: {detail}")]
    BadCheckpoint {
        /// The size the row claims.
        size: u64,
        /// What was wrong.
        detail: String,
    },
    /// The records are not what was signed.
    #[error(transparent)]
    Tampered(#[from] VerifyError),
    /// An archive segment is missing, unreadable, or not the log's.
    #[error("{0}")]
    Archive(String),
    /// The log holds records but no checkpoint covers any of them.
    #[error("no signed checkpoint covers the log's {0} records: nothing to verify them against")]
    Unsigned(u64),
}

/// The part of a tampered log set aside by [`Store::archive_audit_segment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedSegment {
    /// Suffix of the archive tables (`audit_log_<suffix>`, …).
    pub suffix: String,
    /// Records the archived log held.
    pub size: u64,
    /// Records the operator accepted as the good prefix.
    pub accepted: u64,
    /// The tree head over the accepted prefix, recomputed from its records.
    pub accepted_root: Hash,
}

/// Appends records to the log; see the module docs.
#[derive(Debug)]
pub struct AuditAppender {
    store: Store,
    acc: MerkleAccumulator,
    /// Rows of `audit_intents` not yet closed by their record: while there
    /// are none, appending records skips the intent delete altogether.
    live_intents: u64,
    /// The string table the compact records name strings in.
    strings: Interner,
    /// What each encoded record is decoded back into to check it, kept so
    /// that the check reuses its strings (see [`audit_rows::stored_form`]).
    check: AuditRecord,
    /// Cluster mode: the fencing token each append must carry
    /// ([`AuditAppender::fence_at`]; `intent_takeover.rs`).
    fence: Option<i64>,
}

/// A row of the intent journal (`audit_intents`): a request's record as it
/// was decided, durable before its upstream was contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditIntentRow {
    /// The request id; the record with this id closes the intent.
    pub request_id: String,
    /// When the request arrived, ms since the epoch.
    pub time_ms: i64,
    /// The record's JSON as decided (before pseudonymization). Shared, so
    /// that binding it to the journal's INSERT copies nothing (sqlx-sqlite
    /// copies a borrowed `&str` into a fresh buffer per bind; an `Arc<str>`
    /// it keeps as it is) and a retried batch binds it again for free.
    pub record: Arc<str>,
}

impl Store {
    /// Opens the appender, rebuilding the tree's frontier from stored subtrees.
    /// A log written before leaf hashes were kept is hashed once here.
    pub async fn audit_appender(&self) -> Result<AuditAppender, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let missing: i64 =
                query_scalar("SELECT COUNT(*) FROM audit_log WHERE leaf_hash IS NULL")
                    .fetch_one(pool)
                    .await?;
            if missing > 0 {
                self.rebuild_tree().await?;
            }
            let size = self.audit_size().await?;
            let frontier = self.subtree_hashes(&range_subtrees(0..size)).await?;
            let acc = MerkleAccumulator::from_frontier(size, frontier).map_err(corrupt)?;
            let live: i64 = query_scalar("SELECT COUNT(*) FROM audit_intents")
                .fetch_one(pool)
                .await?;
            Ok(AuditAppender {
                store: self.clone(),
                acc,
                live_intents: live.max(0) as u64,
                strings: Interner::load(&self.pool).await?,
                check: AuditRecord::default(),
                fence: None,
            })
        })
    }

    /// The intents no record has closed, oldest first: what a crash left.
    pub async fn audit_intents(&self) -> Result<Vec<AuditIntentRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows =
                query("SELECT request_id, time_ms, record FROM audit_intents ORDER BY time_ms")
                    .fetch_all(pool)
                    .await?;
            rows.iter()
                .map(|r| {
                    Ok(AuditIntentRow {
                        request_id: r.col("request_id")?,
                        time_ms: r.col("time_ms")?,
                        record: r.col::<String, _>("record")?.into(),
                    })
                })
                .collect()
        })
    }

    /// Deletes the intents whose record is already in the log: records
    /// replayed from the spool, or appended by a version that did not close
    /// intents. Scans the log once, and only when intents are left (after a
    /// crash). Returns how many were deleted.
    pub async fn forget_recorded_intents(&self) -> Result<u64, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let left: i64 = query_scalar("SELECT COUNT(*) FROM audit_intents")
                .fetch_one(pool)
                .await?;
            if left == 0 {
                return Ok(0);
            }
            let done = query(
                "DELETE FROM audit_intents WHERE request_id IN (SELECT request_id FROM audit_log)",
            )
            .execute(pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    /// Sets the whole log aside (its records, nodes, checkpoints and personal
    /// values move to tables named `…_<suffix>`, kept for forensics) and
    /// starts an empty one, for `serve --accept-tampered-log-from N` after the
    /// stored log failed verification. Returns the tree head recomputed from
    /// the records of the accepted prefix `0..accepted` (which must be
    /// contiguous), for the new segment's first record to link to. Export
    /// cursors restart at the new segment's first record.
    ///
    /// On PostgreSQL the log is the cluster's: refused while another replica
    /// holds a lease renewed in the last `lease_ms` (fenced or not), since a
    /// running replica's signer and appender hold the old log's head; the
    /// tables are swapped under the audit append lock, so no append can fall
    /// between the check and the swap.
    pub async fn archive_audit_segment(
        &self,
        accepted: u64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<ArchivedSegment, StoreError> {
        let size = self.audit_size().await?;
        if accepted > size {
            return Err(invalid(format!(
                "the log has {size} records; cannot accept {accepted}"
            )));
        }
        let mut acc = MerkleAccumulator::new();
        crate::backend::with_pool!(&self.pool, |pool| {
            let strings = audit_rows::load_strings(&self.pool, 0).await?;
            let mut rows = query_dyn(format!(
                "SELECT {RECORD_COLUMNS} FROM audit_log WHERE seq < ? ORDER BY seq"
            ))
            .bind(accepted as i64)
            .fetch(pool);
            while let Some(row) = rows.try_next().await? {
                let row = StoredRow::from_row(&row)?;
                if row.seq != acc.size() {
                    return Err(invalid(format!(
                        "record {} is missing from the accepted prefix",
                        acc.size()
                    )));
                }
                let leaf = row.leaf(&strings).map_err(corrupt)?;
                acc.push(merkle::leaf_hash(&leaf));
            }
            Ok::<(), StoreError>(())
        })?;
        if acc.size() != accepted {
            return Err(invalid(format!(
                "record {} is missing from the accepted prefix",
                acc.size()
            )));
        }
        // Digits only: safe to put in the statements below.
        let suffix = format!("segment_{}", now_ms.max(0));
        let mut statements = vec![
            format!("ALTER TABLE audit_log RENAME TO audit_log_{suffix}"),
            format!("ALTER TABLE audit_nodes RENAME TO audit_nodes_{suffix}"),
            format!("ALTER TABLE audit_checkpoints RENAME TO audit_checkpoints_{suffix}"),
            format!("ALTER TABLE audit_personal RENAME TO audit_personal_{suffix}"),
        ];
        match &self.pool {
            crate::backend::Pool::Sqlite(_) => statements.extend([
                "DROP INDEX IF EXISTS audit_personal_expiry".to_string(),
                // As the migrations left them.
                "CREATE TABLE audit_log (seq INTEGER PRIMARY KEY NOT NULL, request_id TEXT NOT NULL, time_ms INTEGER NOT NULL, record TEXT NOT NULL, leaf_hash BLOB)".to_string(),
                "CREATE TABLE audit_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID".to_string(),
                "CREATE TABLE audit_checkpoints (tree_size INTEGER PRIMARY KEY NOT NULL, time_ms INTEGER NOT NULL, note TEXT NOT NULL)".to_string(),
                "CREATE TABLE audit_personal (seq INTEGER NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, expires_ms INTEGER NOT NULL, PRIMARY KEY (seq, field)) WITHOUT ROWID".to_string(),
                "CREATE INDEX audit_personal_expiry ON audit_personal (expires_ms)".to_string(),
            ]),
            // Index names are global to a PostgreSQL schema: the old tables'
            // indexes move aside with them, so the new ones get the names
            // the migrations gave (a later migration may name them).
            crate::backend::Pool::Postgres(_) => {
                for index in ["audit_log_pkey", "audit_nodes_pkey", "audit_checkpoints_pkey", "audit_personal_pkey", "audit_personal_expiry"] {
                    let table = index.trim_end_matches("_pkey").trim_end_matches("_expiry");
                    let rest = &index[table.len()..];
                    statements.push(format!("ALTER INDEX {index} RENAME TO {table}_{suffix}{rest}"));
                }
                statements.extend([
                    // As the PostgreSQL twins of the migrations left them.
                    "CREATE TABLE audit_log (seq BIGINT PRIMARY KEY NOT NULL, request_id TEXT NOT NULL, time_ms BIGINT NOT NULL, record BYTEA NOT NULL, leaf_hash BYTEA)".to_string(),
                    "CREATE TABLE audit_nodes (level BIGINT NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL, PRIMARY KEY (level, idx))".to_string(),
                    "CREATE TABLE audit_checkpoints (tree_size BIGINT PRIMARY KEY NOT NULL, time_ms BIGINT NOT NULL, note TEXT NOT NULL)".to_string(),
                    "CREATE TABLE audit_personal (seq BIGINT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, expires_ms BIGINT NOT NULL, PRIMARY KEY (seq, field))".to_string(),
                    "CREATE INDEX audit_personal_expiry ON audit_personal (expires_ms)".to_string(),
                ]);
            }
        }
        statements.push("DELETE FROM audit_export_cursors".to_string());
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_audit_write(pool).await?;
            if IS_POSTGRES {
                // The lease on the database's clock, as replicas renew it
                // (`intent_takeover.rs`).
                let alive: Vec<String> = query_scalar(
                    "SELECT id FROM cluster_replicas WHERE id <> ? AND seen_ms > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - ? ORDER BY id",
                )
                .bind(self.replica_id())
                .bind(lease_ms)
                .fetch_all(&mut *tx)
                .await?;
                if !alive.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "{} other replica(s) of the cluster hold a live lease ({}): stop every replica before setting the shared audit log aside, and retry once their leases have lapsed ({} ms after they stopped)",
                        alive.len(),
                        alive.join(", "),
                        lease_ms
                    )));
                }
                // Appended while the prefix was read: what was verified is
                // no longer the whole log.
                let now: Option<i64> = query_scalar("SELECT MAX(seq) FROM audit_log")
                    .fetch_one(&mut *tx)
                    .await?;
                if now.map_or(0, |s| s as u64 + 1) != size {
                    return Err(invalid(
                        "the audit log grew while it was being set aside: stop every replica first"
                            .into(),
                    ));
                }
            }
            for statement in statements {
                query_dyn(statement).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(ArchivedSegment {
                suffix,
                size,
                accepted,
                accepted_root: acc.root(),
            })
        })
    }

    /// The number of records in the log.
    pub async fn audit_size(&self) -> Result<u64, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let last: Option<i64> = query_scalar("SELECT MAX(seq) FROM audit_log")
                .fetch_one(pool)
                .await?;
            Ok(last.map_or(0, |s| s as u64 + 1))
        })
    }

    /// The tree head over the first `size` records.
    pub async fn audit_head(&self, size: u64) -> Result<Hash, StoreError> {
        self.check_size(size).await?;
        let hashes = self.subtree_hashes(&range_subtrees(0..size)).await?;
        Ok(fold_subtrees(&hashes))
    }

    /// The inclusion proof of record `index` in the tree of `size` records.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size(size).await?;
        let first = self.audit_first_seq().await?;
        if index < first {
            return Err(invalid(format!(
                "record {index} was archived and pruned (the log keeps records from {first}): prove it from the archive with `audit prove {index} --archive DIR`"
            )));
        }
        let ranges = inclusion_proof_ranges(index, size).map_err(|e| invalid(e.to_string()))?;
        self.range_heads(ranges).await
    }

    /// The consistency proof between the trees of `old_size` and `new_size` records.
    pub async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        self.check_size(new_size).await?;
        let ranges =
            consistency_proof_ranges(old_size, new_size).map_err(|e| invalid(e.to_string()))?;
        self.range_heads(ranges).await
    }

    /// The leaf bytes (canonical record JSON) and leaf hash of records
    /// `from..from + limit`, in order.
    pub async fn audit_leaves(
        &self,
        from: u64,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let rows = self
            .stored_rows(
                "SELECT {RECORD_COLUMNS} FROM audit_log WHERE seq >= ? ORDER BY seq LIMIT ?",
                &[from as i64, i64::from(limit)],
            )
            .await?;
        let leaves = self.strings.leaves(&self.pool, &rows).await?;
        rows.iter()
            .zip(leaves)
            .map(|(row, leaf)| {
                // Canonical JSON is UTF-8.
                let leaf = leaf.map_err(corrupt)?;
                Ok((row.seq, String::from_utf8(leaf).map_err(corrupt)?))
            })
            .collect()
    }

    /// Rows of `audit_log` by a query over [`RECORD_COLUMNS`] (which `sql`
    /// names as `{RECORD_COLUMNS}`) with integer parameters.
    pub(crate) async fn stored_rows(
        &self,
        sql: &'static str,
        params: &[i64],
    ) -> Result<Vec<StoredRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let sql = sql.replace("{RECORD_COLUMNS}", RECORD_COLUMNS);
            let mut query = query_dyn(sql);
            for &param in params {
                query = query.bind(param);
            }
            let rows = query.fetch_all(pool).await?;
            Ok(rows
                .iter()
                .map(StoredRow::from_row)
                .collect::<Result<_, _>>()?)
        })
    }

    /// Calls `visit` with every record from `since_ms` on (by `time_ms`), in
    /// order, a page of rows at a time.
    pub(crate) async fn for_each_record_since(
        &self,
        since_ms: i64,
        mut visit: impl FnMut(AuditRecord),
    ) -> Result<(), StoreError> {
        const PAGE: i64 = 4_096;
        let mut from = 0;
        loop {
            let rows = self
                .stored_rows(
                    "SELECT {RECORD_COLUMNS} FROM audit_log WHERE seq >= ? AND time_ms >= ? ORDER BY seq LIMIT ?",
                    &[from, since_ms, PAGE],
                )
                .await?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            from = last.seq as i64 + 1;
            for record in self.records_of(&rows, |_| true).await? {
                visit(record);
            }
        }
    }

    /// The records of `rows`, in order, those `keep` accepts.
    pub(crate) async fn records_of(
        &self,
        rows: &[StoredRow],
        keep: impl Fn(&AuditRecord) -> bool,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.strings
            .with(&self.pool, |strings| {
                let mut records = Vec::with_capacity(rows.len());
                for row in rows {
                    let record = row.record(strings)?;
                    if keep(&record) {
                        records.push(record);
                    }
                }
                Ok(records)
            })
            .await
    }

    /// The seq of the record with this request id. Scans the log: request ids
    /// are not indexed, because keeping a b-tree of random keys slowed appends.
    pub async fn audit_seq_of(&self, request_id: &str) -> Result<Option<u64>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let seq: Option<i64> =
                query_scalar("SELECT seq FROM audit_log WHERE request_id = ? ORDER BY seq LIMIT 1")
                    .bind(request_id)
                    .fetch_optional(pool)
                    .await?;
            Ok(seq.map(|s| s as u64))
        })
    }

    /// The last `n` audit records, oldest first.
    pub async fn audit_tail(&self, n: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self
            .stored_rows(
                "SELECT {RECORD_COLUMNS} FROM (SELECT * FROM audit_log ORDER BY seq DESC LIMIT ?) AS tail ORDER BY seq",
                &[i64::from(n)],
            )
            .await?;
        self.records_of(&rows, |_| true).await
    }

    /// Stores a signed checkpoint. Signing the same size again keeps the first.
    pub async fn add_checkpoint(&self, checkpoint: &StoredCheckpoint) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "INSERT INTO audit_checkpoints (tree_size, time_ms, note) VALUES (?, ?, ?)
             ON CONFLICT (tree_size) DO NOTHING",
            )
            .bind(checkpoint.size as i64)
            .bind(checkpoint.time_ms)
            .bind(&checkpoint.note)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Every stored checkpoint, smallest first.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows =
                query("SELECT tree_size, time_ms, note FROM audit_checkpoints ORDER BY tree_size")
                    .fetch_all(pool)
                    .await?;
            rows.iter().map(checkpoint_from_row).collect()
        })
    }

    /// The largest stored checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
            "SELECT tree_size, time_ms, note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
            row.as_ref().map(checkpoint_from_row).transpose()
        })
    }

    /// The clear values kept for a record's pseudonymized fields (until they
    /// expire), by field.
    pub async fn audit_personal(&self, seq: u64) -> Result<Vec<(String, String)>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows =
                query("SELECT field, value FROM audit_personal WHERE seq = ? ORDER BY field")
                    .bind(seq as i64)
                    .fetch_all(pool)
                    .await?;
            rows.iter()
                .map(|r| Ok((r.col("field")?, r.col("value")?)))
                .collect()
        })
    }

    /// Deletes personal data past its retention; returns how many values went.
    /// The leaves hold only keyed hashes, so verification is unaffected.
    pub async fn purge_personal(&self, now_ms: i64) -> Result<u64, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let done = query("DELETE FROM audit_personal WHERE expires_ms <= ?")
                .bind(now_ms)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// The next seq an export sink has to deliver (0 when it never ran).
    pub async fn export_cursor(&self, sink: &str) -> Result<u64, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let next: Option<i64> =
                query_scalar("SELECT next_seq FROM audit_export_cursors WHERE sink = ?")
                    .bind(sink)
                    .fetch_optional(pool)
                    .await?;
            Ok(next.map_or(0, |n| n as u64))
        })
    }

    /// Records that an export sink has delivered everything before `next_seq`.
    pub async fn set_export_cursor(
        &self,
        sink: &str,
        next_seq: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
            "INSERT INTO audit_export_cursors (sink, next_seq, updated_ms) VALUES (?, ?, ?)
             ON CONFLICT (sink) DO UPDATE SET next_seq = excluded.next_seq, updated_ms = excluded.updated_ms",
        )
        .bind(sink)
        .bind(next_seq as i64)
        .bind(now_ms)
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Recomputes the whole tree from the stored records and holds it against
    /// every stored checkpoint (and any `extra` ones, e.g. from an export file
    /// the admin does not control), each checked against `verifier` and `origin`.
    /// Also checks every stored leaf hash and interior node.
    pub async fn verify_audit_log(
        &self,
        verifier: &VerifierKey,
        origin: &str,
        extra: &[String],
    ) -> Result<VerifySummary, AuditVerifyFailure> {
        Ok(self
            .verify_audit_log_with_archive(verifier, origin, extra, &[])
            .await?
            .summary)
    }

    /// Also trusts `keys`, the verifier keys of audit signing keys retired by
    /// a rotation, to open checkpoints (they signed the log before it): a
    /// checkpoint is opened with the key a verification is given, else with
    /// one of these. The caller takes them from a source the database
    /// cannot forge (sealed key versions, the state directory).
    pub fn trust_retired_audit_keys(&self, keys: Vec<VerifierKey>) {
        if let Ok(mut retired) = self.retired_audit_keys.write() {
            *retired = keys;
        }
    }

    /// The verifier keys trusted besides the current one
    /// ([`Store::trust_retired_audit_keys`]).
    pub fn retired_audit_keys(&self) -> Vec<VerifierKey> {
        self.retired_audit_keys
            .read()
            .map(|keys| keys.clone())
            .unwrap_or_default()
    }

    /// [`open_checkpoint`] with `verifier`, else with a retired audit key
    /// ([`Store::trust_retired_audit_keys`]) of the same log. The error is
    /// the one `verifier` gave.
    pub fn open_checkpoint(
        &self,
        note: &str,
        verifier: &VerifierKey,
        origin: &str,
    ) -> Result<Checkpoint, String> {
        let first = match open_checkpoint(note, verifier, origin) {
            Ok(checkpoint) => return Ok(checkpoint),
            Err(e) => e,
        };
        let retired = self
            .retired_audit_keys
            .read()
            .map(|keys| keys.clone())
            .unwrap_or_default();
        retired
            .iter()
            .find_map(|key| open_checkpoint(note, key, origin).ok())
            .ok_or(first)
    }

    /// The stored checkpoints and `extra` ones, each opened with `verifier`
    /// (or a retired audit key) and `origin`.
    pub(crate) async fn opened_checkpoints(
        &self,
        verifier: &VerifierKey,
        origin: &str,
        extra: &[String],
    ) -> Result<Vec<Checkpoint>, AuditVerifyFailure> {
        let mut checkpoints = Vec::new();
        let stored = self.checkpoints().await?;
        let notes = stored
            .iter()
            .map(|c| (Some(c.size), c.note.as_str()))
            .chain(extra.iter().map(|n| (None, n.as_str())));
        for (claimed, note) in notes {
            let checkpoint = self
                .open_checkpoint(note, verifier, origin)
                .map_err(|detail| AuditVerifyFailure::BadCheckpoint {
                    size: claimed.unwrap_or_default(),
                    detail,
                })?;
            if let Some(size) = claimed
                && size != checkpoint.size
            {
                return Err(AuditVerifyFailure::BadCheckpoint {
                    size,
                    detail: format!("the row says size {size}, the note {}", checkpoint.size),
                });
            }
            checkpoints.push(checkpoint);
        }
        Ok(checkpoints)
    }

    /// Walks the stored records from `start` to the end into `walk`, also
    /// checking every stored leaf hash and the interior nodes they complete.
    pub(crate) async fn walk_stored(
        &self,
        mut walk: LogVerifier,
        start: u64,
    ) -> Result<VerifySummary, AuditVerifyFailure> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut nodes: HashMap<(u32, u64), Hash> = HashMap::new();
            {
                let mut rows = query("SELECT level, idx, hash FROM audit_nodes").fetch(pool);
                while let Some(row) = rows.try_next().await.map_err(StoreError::from)? {
                    let level: i64 = row.col("level").map_err(StoreError::from)?;
                    let idx: i64 = row.col("idx").map_err(StoreError::from)?;
                    let hash: Vec<u8> = row.col("hash").map_err(StoreError::from)?;
                    nodes.insert((level as u32, idx as u64), to_hash(&hash)?);
                }
            }

            // Pages are read and their leaves checked and hashed on two tasks at a
            // time (row decoding, not hashing, is most of the cost); the tree is
            // then grown from the hashes strictly in order, so the first failure
            // reported is the first bad index.
            let size = self.audit_size().await?;
            let pages = (start..size)
                .step_by(VERIFY_PAGE as usize)
                .map(|from| (from, (from + VERIFY_PAGE).min(size)));
            let store = self.clone();
            // The string table is read afresh, not taken from the store's cache:
            // what is verified is the table as stored now.
            let strings = StringCache::default();
            let mut hashed = futures_util::stream::iter(pages)
                .map(move |(start, end)| {
                    let store = store.clone();
                    let strings = strings.clone();
                    tokio::spawn(async move { store.check_page(start, end, &strings).await })
                })
                .buffered(2);
            let mut node_failure = None;
            while let Some(page) = hashed.next().await {
                let page =
                    page.map_err(|e| corrupt(format!("verification task failed: {e}")))??;
                for hash in page {
                    walk.push_checked(hash, |s: Subtree| {
                        if s.level >= NODE_MIN_LEVEL
                            && node_failure.is_none()
                            && nodes.get(&(s.level, s.index)).is_some_and(|h| *h != s.hash)
                        {
                            node_failure = Some(VerifyError::NodeMismatch {
                                level: s.level,
                                index: s.index,
                            });
                        }
                    })?;
                    if let Some(failure) = node_failure.take() {
                        return Err(failure.into());
                    }
                }
            }
            Ok(walk.finish()?)
        })
    }

    /// Reads records `start..end`, checks that each sits at its position and
    /// hashes to its stored leaf hash, and returns the leaf hashes in order.
    async fn check_page(
        &self,
        start: u64,
        end: u64,
        strings: &StringCache,
    ) -> Result<Vec<Hash>, AuditVerifyFailure> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query_dyn(format!(
            "SELECT {RECORD_COLUMNS}, leaf_hash FROM audit_log WHERE seq >= ? AND seq < ? ORDER BY seq"
        ))
        .bind(start as i64)
        .bind(end as i64)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)?;
            let mut stored = Vec::with_capacity(rows.len());
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                let hash: Option<Vec<u8>> = row.col(4).map_err(StoreError::from)?;
                stored.push(hash.as_deref().map(to_hash).transpose()?);
                records.push(StoredRow::from_row(row).map_err(StoreError::from)?);
            }
            let leaves = strings.leaves(&self.pool, &records).await?;
            let mut hashes = Vec::with_capacity(rows.len());
            for (index, ((row, stored), leaf)) in
                (start..).zip(records.iter().zip(stored).zip(leaves))
            {
                if row.seq != index {
                    // A row whose key skips: a record was removed (or renumbered).
                    return Err(VerifyError::SeqMismatch {
                        index,
                        found: Some(row.seq),
                    }
                    .into());
                }
                // A record that does not decode (malformed, or naming a string
                // the table does not hold) was changed.
                let leaf = leaf.map_err(|_| VerifyError::LeafHashMismatch { index })?;
                hashes.push(LogVerifier::check_leaf(index, &leaf, stored.as_ref())?);
            }
            if (hashes.len() as u64) < end - start {
                return Err(VerifyError::SeqMismatch {
                    index: start + hashes.len() as u64,
                    found: None,
                }
                .into());
            }
            Ok(hashes)
        })
    }

    async fn check_size(&self, size: u64) -> Result<(), StoreError> {
        let have = self.audit_size().await?;
        if size > have {
            return Err(invalid(format!(
                "tree size {size} is larger than the log ({have} records)"
            )));
        }
        Ok(())
    }

    async fn range_heads(&self, ranges: Vec<merkle::LeafRange>) -> Result<Vec<Hash>, StoreError> {
        let per_range: Vec<Vec<(u32, u64)>> = ranges.into_iter().map(range_subtrees).collect();
        let all: Vec<(u32, u64)> = per_range.iter().flatten().copied().collect();
        let hashes = self.subtree_hashes(&all).await?;
        let mut rest = hashes.as_slice();
        let mut heads = Vec::with_capacity(per_range.len());
        for subtrees in &per_range {
            let (mine, after) = rest.split_at(subtrees.len());
            heads.push(fold_subtrees(mine));
            rest = after;
        }
        Ok(heads)
    }

    /// The hashes of complete subtrees: stored ones from `audit_nodes`, lower
    /// ones folded from their records' leaf hashes.
    pub(crate) async fn subtree_hashes(
        &self,
        subtrees: &[(u32, u64)],
    ) -> Result<Vec<Hash>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            // Two queries whatever the number of subtrees: one for the stored
            // nodes, one for the leaf hashes under the low ones. A proof over a
            // million records needs about 20 subtrees; one query each was most of
            // its cost.
            let stored: Vec<(u32, u64)> = subtrees
                .iter()
                .copied()
                .filter(|&(level, _)| level >= NODE_MIN_LEVEL)
                .collect();
            let mut nodes: HashMap<(u32, u64), Hash> = HashMap::new();
            for chunk in stored.chunks(400) {
                let mut query = sqlx::QueryBuilder::<Db>::new(
                    "SELECT level, idx, hash FROM audit_nodes WHERE (level, idx) IN (VALUES ",
                );
                let mut values = query.separated(", ");
                for &(level, index) in chunk {
                    values.push("(");
                    values.push_bind_unseparated(level as i64);
                    values.push_unseparated(", ");
                    values.push_bind_unseparated(index as i64);
                    values.push_unseparated(")");
                }
                query.push(")");
                for row in query.build().fetch_all(pool).await? {
                    let level: i64 = row.col("level")?;
                    let idx: i64 = row.col("idx")?;
                    let hash: Vec<u8> = row.col("hash")?;
                    nodes.insert((level as u32, idx as u64), to_hash(&hash)?);
                }
            }
            let low: Vec<LeafRange> = subtrees
                .iter()
                .filter(|&&(level, _)| level < NODE_MIN_LEVEL)
                .map(|&(level, index)| (index << level)..((index << level) + (1u64 << level)))
                .collect();
            let mut leaves: HashMap<u64, Hash> = HashMap::new();
            for chunk in low.chunks(200) {
                let mut query =
                    sqlx::QueryBuilder::<Db>::new("SELECT seq, leaf_hash FROM audit_log WHERE ");
                let mut ranges = query.separated(" OR ");
                for range in chunk {
                    ranges.push("(seq >= ");
                    ranges.push_bind_unseparated(range.start as i64);
                    ranges.push_unseparated(" AND seq < ");
                    ranges.push_bind_unseparated(range.end as i64);
                    ranges.push_unseparated(")");
                }
                for row in query.build().fetch_all(pool).await? {
                    let seq: i64 = row.col("seq")?;
                    let hash: Option<Vec<u8>> = row.col("leaf_hash")?;
                    let hash = hash.ok_or_else(|| corrupt("a record has no leaf hash"))?;
                    leaves.insert(seq as u64, to_hash(&hash)?);
                }
            }
            subtrees
                .iter()
                .map(|&(level, index)| {
                    if level >= NODE_MIN_LEVEL {
                        return nodes.get(&(level, index)).copied().ok_or_else(|| {
                            StoreError::Corrupt {
                                table: "audit_nodes",
                                detail: format!("missing subtree level {level} index {index}"),
                            }
                        });
                    }
                    let start = index << level;
                    let end = start + (1u64 << level);
                    let hashes = (start..end)
                        .map(|seq| {
                            leaves
                                .get(&seq)
                                .copied()
                                .ok_or_else(|| StoreError::Corrupt {
                                    table: "audit_log",
                                    detail: format!("records {start}..{end} are not all present"),
                                })
                        })
                        .collect::<Result<Vec<Hash>, StoreError>>()?;
                    Ok(merkle::root(&hashes))
                })
                .collect()
        })
    }

    /// Hashes every record and rewrites leaf hashes and interior nodes: the
    /// one-time upgrade of a log written before they were kept.
    async fn rebuild_tree(&self) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            tracing::info!("hashing the audit log into a Merkle tree (one-time upgrade)");
            let mut tx = begin_audit_write(pool).await?;
            let strings = audit_rows::load_strings(&self.pool, 0).await?;
            let rows = query_dyn(format!(
                "SELECT {RECORD_COLUMNS} FROM audit_log ORDER BY seq"
            ))
            .fetch_all(&mut *tx)
            .await?;
            query("DELETE FROM audit_nodes").execute(&mut *tx).await?;
            let mut acc = MerkleAccumulator::new();
            for row in rows {
                let row = StoredRow::from_row(&row)?;
                let seq = row.seq as i64;
                if row.seq != acc.size() {
                    return Err(corrupt(format!("audit_log has a gap before seq {seq}")));
                }
                let leaf = row.leaf(&strings).map_err(corrupt)?;
                let mut nodes = Vec::new();
                acc.push_reporting(merkle::leaf_hash(&leaf), |s| nodes.push(s));
                for s in nodes {
                    if s.level == 0 {
                        query("UPDATE audit_log SET leaf_hash = ? WHERE seq = ?")
                            .bind(&s.hash[..])
                            .bind(seq)
                            .execute(&mut *tx)
                            .await?;
                    } else if s.level >= NODE_MIN_LEVEL {
                        insert_node!(tx, &s);
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

impl AuditAppender {
    /// The store it appends to (its health tells the writer to spill
    /// rather than wait while the database does not answer).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Cluster mode: every later append carries `token` (the store's
    /// [`Store::fencing_token`], read before the batch was filtered with
    /// [`Store::surrendered`]) and is refused with [`StoreError::Fenced`]
    /// unless this replica's row holds it, unfenced. `None`: no check (one
    /// node, offline tools).
    pub fn fence_at(&mut self, token: Option<i64>) {
        self.fence = token;
    }

    /// The current tree.
    pub fn head(&self) -> TreeHead {
        TreeHead {
            size: self.acc.size(),
            root: self.acc.root(),
        }
    }

    /// Appends a batch in one transaction (group commit), giving each record
    /// the next seq. When this returns `Ok`, every record of the batch is
    /// durable and in the returned tree.
    pub async fn append(&mut self, records: &mut [AuditRecord]) -> Result<TreeHead, StoreError> {
        self.append_with_personal(records, &[]).await
    }

    /// [`append`](Self::append), also keeping the clear values of
    /// pseudonymized fields beside the records (not in the leaves) until they
    /// expire.
    pub async fn append_with_personal(
        &mut self,
        records: &mut [AuditRecord],
        personal: &[PersonalValue],
    ) -> Result<TreeHead, StoreError> {
        self.append_batch(records, personal, &[]).await
    }

    /// [`append_with_personal`](Self::append_with_personal), in the same
    /// transaction journaling `intents` and deleting the intents the records
    /// close (those with their request ids, `intents` included): one commit
    /// makes both durable.
    pub async fn append_batch(
        &mut self,
        records: &mut [AuditRecord],
        personal: &[PersonalValue],
        intents: &[AuditIntentRow],
    ) -> Result<TreeHead, StoreError> {
        if records.is_empty() && intents.is_empty() {
            return Ok(self.head());
        }
        // One node, a batch of intents alone (under `before_forward` most
        // batches are one request's intent): one INSERT in autocommit mode,
        // which is its own transaction, synced at its commit like any other
        // (`synchronous = FULL`), and all-or-nothing like one. It appends
        // nothing, so there is no seq to check and no tree to update: the
        // BEGIN and COMMIT round trips to sqlx's worker would buy nothing.
        if records.is_empty()
            && personal.is_empty()
            && intents.len() <= AUDIT_ROWS_PER_INSERT
            && let crate::backend::Pool::Sqlite(pool) = &self.store.pool
        {
            use crate::backend::sqlite::*;
            insert_intents!(pool, intents, self.store.replica_id());
            self.live_intents += intents.len() as u64;
            return Ok(self.head());
        }
        // The stored forms leave the seq out: they are encoded before any
        // lock is taken, whatever seqs the records get.
        let stored = self.encode(records);
        // On one node nobody else appends, so the batch is numbered and
        // hashed before the write lock (shared by every writer of the
        // database) is taken: the lock is held only for the writes. On
        // PostgreSQL other replicas append meanwhile, and a batch numbered
        // in advance would have to be numbered and hashed again after theirs:
        // it is numbered and hashed once, under the audit lock, which only
        // audit appends take (see `write_batch`).
        let numbered = (!self.store.is_postgres()).then(|| self.number(records));
        let result = self
            .write_batch(records, stored, numbered, personal, intents)
            .await;
        match result {
            Ok((acc, closed)) => {
                let (first_string, added) = self.strings.added();
                self.store.strings.extend(first_string, added);
                self.strings.commit();
                self.acc = acc;
                self.live_intents =
                    (self.live_intents + intents.len() as u64).saturating_sub(closed);
                Ok(self.head())
            }
            Err(e) => {
                self.strings.roll_back();
                Err(e)
            }
        }
    }

    /// Numbers `records` as the next leaves of this appender's tree and
    /// hashes them: the tree after them, the stored subtrees they complete,
    /// and each record's canonical text with its leaf hash.
    fn number(&self, records: &mut [AuditRecord]) -> Numbered {
        let mut acc = self.acc.clone();
        let mut nodes = Vec::new();
        let leaves = records
            .iter_mut()
            .map(|record| {
                record.seq = Some(acc.size());
                let text = record.canonical_bytes();
                let leaf = merkle::leaf_hash(&text);
                acc.push_reporting(leaf, |s| {
                    if s.level >= NODE_MIN_LEVEL {
                        nodes.push(s);
                    }
                });
                (text, leaf)
            })
            .collect();
        Numbered { acc, nodes, leaves }
    }

    /// The compact stored form of each record (`None` where the record is
    /// stored as its leaf), interning the strings it names.
    fn encode(&mut self, records: &[AuditRecord]) -> Vec<Option<Vec<u8>>> {
        records
            .iter()
            .map(|record| audit_rows::stored_form(record, &mut self.strings, &mut self.check))
            .collect()
    }

    /// The stored rows of numbered `records`: seq, request id, time, stored
    /// form (the leaf where there is no compact one) and leaf hash.
    fn rows<'r>(
        records: &'r [AuditRecord],
        leaves: Vec<(Vec<u8>, Hash)>,
        stored: Vec<Option<Vec<u8>>>,
    ) -> Vec<BatchRow<'r>> {
        records
            .iter()
            .zip(leaves.into_iter().zip(stored))
            .map(|(record, ((text, leaf), stored))| {
                (
                    record.seq.unwrap_or_default() as i64,
                    record.request_id.as_str(),
                    record.time_ms,
                    stored.unwrap_or(text),
                    leaf,
                )
            })
            .collect()
    }

    /// Catches up with records other replicas appended (PostgreSQL only,
    /// under the audit lock): the tree's frontier and the string table as
    /// the log now holds them. Answers whether the batch being written must
    /// be encoded again: it added strings, and so did the others, so the
    /// numbers it gave its new strings may be taken.
    async fn catch_up(&mut self, size: u64) -> Result<bool, StoreError> {
        let frontier = self.store.subtree_hashes(&range_subtrees(0..size)).await?;
        self.acc = MerkleAccumulator::from_frontier(size, frontier).map_err(corrupt)?;
        let more = audit_rows::load_strings(&self.store.pool, self.strings.len()).await?;
        if more.is_empty() {
            return Ok(false);
        }
        let reencode = !self.strings.added().1.is_empty();
        self.strings.roll_back();
        self.strings.extend_committed(more);
        Ok(reencode)
    }

    /// Writes a batch (records, the strings they add, subtree nodes,
    /// personal values, intents) in one transaction; returns the tree after
    /// it and how many intents its records closed. The records come encoded
    /// (`stored`), and numbered when `numbered` is given (one node);
    /// otherwise they are numbered here, under the lock.
    async fn write_batch(
        &mut self,
        records: &mut [AuditRecord],
        mut stored: Vec<Option<Vec<u8>>>,
        numbered: Option<Numbered>,
        personal: &[PersonalValue],
        intents: &[AuditIntentRow],
    ) -> Result<(MerkleAccumulator, u64), StoreError> {
        let store = self.store.clone();
        crate::backend::with_pool!(&store.pool, |pool| {
            // The audit write lock is taken first; the seq check then proves no
            // other writer appended behind this appender's back.
            let mut tx = begin_audit_write(pool).await?;
            // A batch of intents alone appends nothing, so it has no seq to
            // check (and saves the round trip: under `before_forward` most
            // batches are one request's intent). The next batch with records
            // checks, under its own lock, before it appends.
            let check_size = !records.is_empty();
            // Cluster mode: refused when a survivor took this replica for
            // dead (its row fenced or gone), or when the batch was filtered
            // at an older token than the row's epoch. `FOR SHARE` holds the
            // row until commit, so a takeover fencing it waits for this
            // batch, which closes its intents first (`intent_takeover.rs`).
            // Read with the log's last seq in one round trip.
            let last: Option<i64> = match self.fence.filter(|_| IS_POSTGRES) {
                Some(token) => {
                    let row = query(
                        "SELECT (SELECT epoch FROM cluster_replicas WHERE id = ? AND NOT fenced FOR SHARE) AS epoch,
                                (SELECT MAX(seq) FROM audit_log) AS last",
                    )
                    .bind(store.replica_id())
                    .fetch_one(&mut *tx)
                    .await?;
                    if row.col::<Option<i64>, _>("epoch")? != Some(token) {
                        return Err(StoreError::Fenced);
                    }
                    row.col("last")?
                }
                None if check_size => {
                    query_scalar("SELECT MAX(seq) FROM audit_log")
                        .fetch_one(&mut *tx)
                        .await?
                }
                None => None,
            };
            let size = if check_size {
                last.map_or(0, |s| s as u64 + 1)
            } else {
                self.acc.size()
            };
            if size != self.acc.size() {
                if !IS_POSTGRES {
                    // One node has one appender: another process appended.
                    return Err(corrupt(format!(
                        "the log has {size} records but this appender expected {}: another process appended",
                        self.acc.size()
                    )));
                }
                // Cluster mode: other replicas appended. Under the lock nobody
                // else can, so the batch is numbered after their records.
                if self.catch_up(size).await? {
                    stored = self.encode(records);
                }
            }
            let first = self.acc.size();
            let Numbered { acc, nodes, leaves } = match numbered {
                Some(numbered) => numbered,
                None => self.number(records),
            };
            let mut rows = Self::rows(records, leaves, stored);
            let (first_string, added) = self.strings.added();
            for (chunk_start, chunk) in (first_string..)
                .step_by(AUDIT_ROWS_PER_INSERT)
                .zip(added.chunks(AUDIT_ROWS_PER_INSERT))
            {
                // A plain INSERT: a number or string already taken means another
                // writer, and fails the batch.
                let mut insert =
                    sqlx::QueryBuilder::<Db>::new("INSERT INTO audit_strings (id, value) ");
                insert.push_values((chunk_start..).zip(chunk), |mut row, (id, value)| {
                    row.push_bind(id as i64).push_bind(value.as_str());
                });
                insert.build().execute(&mut *tx).await?;
            }
            // Journaled before the records are written: a record closes its
            // request's intent even when both come in this batch.
            insert_intents!(&mut *tx, intents, store.replica_id());
            // In cluster mode the count is this appender's view only: other
            // replicas journal intents too, and a survivor records the
            // intents of a dead one (`intent_takeover.rs`), so the records
            // always close theirs.
            let close = IS_POSTGRES || self.live_intents + intents.len() as u64 > 0;
            // One `COPY` on PostgreSQL, multi-row INSERTs on SQLite (see
            // `RecordRows`): never a round trip per record. Each deletes the
            // intents its records close.
            let closed = RecordRows::write(&mut *tx, &mut rows, close).await?;
            // The subtrees the batch completes, in multi-row statements too
            // (a batch of 2048 completes about 64): each is completed once,
            // so no statement names one twice.
            for chunk in nodes.chunks(AUDIT_ROWS_PER_INSERT) {
                let mut insert =
                    sqlx::QueryBuilder::<Db>::new("INSERT INTO audit_nodes (level, idx, hash) ");
                insert.push_values(chunk, |mut row, node| {
                    row.push_bind(node.level as i64)
                        .push_bind(node.index as i64)
                        .push_bind(&node.hash[..]);
                });
                insert.push(" ON CONFLICT (level, idx) DO UPDATE SET hash = excluded.hash");
                insert.build().execute(&mut *tx).await?;
            }
            // Multi-row too. One statement may not name a (seq, field) twice
            // (PostgreSQL refuses to update a row twice in one statement), so
            // a value given twice keeps the last, as writing them one by one
            // would.
            let personal = last_per_field(personal);
            for chunk in personal.chunks(AUDIT_ROWS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO audit_personal (seq, field, value, expires_ms) ",
                );
                insert.push_values(chunk, |mut row, p| {
                    row.push_bind((first + p.record as u64) as i64)
                        .push_bind(p.field)
                        .push_bind(p.value.as_str())
                        .push_bind(p.expires_ms);
                });
                insert.push(
                    " ON CONFLICT (seq, field) DO UPDATE SET value = excluded.value, expires_ms = excluded.expires_ms",
                );
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok((acc, closed))
        })
    }
}

/// A record row of a batch: seq, request id, time, stored form, leaf hash.
type BatchRow<'r> = (i64, &'r str, i64, Vec<u8>, Hash);

/// A batch numbered and hashed as the next leaves of the tree: the tree
/// after it, the stored subtrees it completes, and each record's canonical
/// text with its leaf hash.
struct Numbered {
    acc: MerkleAccumulator,
    nodes: Vec<Subtree>,
    leaves: Vec<(Vec<u8>, Hash)>,
}

/// `personal` with one value per (record, field), the last given.
fn last_per_field(personal: &[PersonalValue]) -> Vec<&PersonalValue> {
    let mut last: HashMap<(usize, &str), usize> = HashMap::with_capacity(personal.len());
    for (i, p) in personal.iter().enumerate() {
        last.insert((p.record, p.field), i);
    }
    personal
        .iter()
        .enumerate()
        .filter(|(i, p)| last.get(&(p.record, p.field)) == Some(i))
        .map(|(_, p)| p)
        .collect()
}

/// Writes the record rows of a batch in the append transaction, the fastest
/// way each backend has, and, when `close` (intents may be open), deletes
/// the intents the records close; answers how many it deleted.
trait RecordRows {
    async fn write(&mut self, rows: &mut [BatchRow<'_>], close: bool) -> Result<u64, sqlx::Error>;
}

impl RecordRows for sqlx::SqliteConnection {
    /// Multi-row INSERTs, one statement per chunk (an embedded database has
    /// no round trips to save, only statements to prepare), each sent with
    /// its chunk's intent DELETE as one two-statement query: one trip to
    /// sqlx's worker thread instead of two. The stored forms are moved into
    /// the binds (an owned `Vec<u8>` is kept as it is; a borrowed slice
    /// would be copied).
    async fn write(&mut self, rows: &mut [BatchRow<'_>], close: bool) -> Result<u64, sqlx::Error> {
        if let [(seq, request_id, time_ms, stored, leaf)] = rows {
            // One record (a batch of sequential calls): fixed statements, no
            // SQL text to build.
            let sql = if close {
                "INSERT INTO audit_log (seq, request_id, time_ms, record, leaf_hash) VALUES (?, ?, ?, ?, ?);
                 DELETE FROM audit_intents WHERE request_id = ?"
            } else {
                "INSERT INTO audit_log (seq, request_id, time_ms, record, leaf_hash) VALUES (?, ?, ?, ?, ?)"
            };
            let mut insert = sqlx::query(sql)
                .bind(*seq)
                .bind(*request_id)
                .bind(*time_ms)
                .bind(std::mem::take(stored))
                .bind(&leaf[..]);
            if close {
                insert = insert.bind(*request_id);
            }
            let changes = insert.execute(&mut *self).await?.rows_affected();
            return Ok(changes.saturating_sub(1));
        }
        let mut closed = 0;
        for chunk in rows.chunks_mut(AUDIT_ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit_log (seq, request_id, time_ms, record, leaf_hash) ",
            );
            insert.push_values(
                chunk.iter_mut(),
                |mut row, (seq, request_id, time_ms, stored, leaf)| {
                    row.push_bind(*seq)
                        .push_bind(*request_id)
                        .push_bind(*time_ms)
                        .push_bind(std::mem::take(stored))
                        .push_bind(&leaf[..]);
                },
            );
            if close {
                insert.push("; DELETE FROM audit_intents WHERE request_id IN (");
                let mut ids = insert.separated(", ");
                for (_, request_id, ..) in chunk.iter() {
                    ids.push_bind(*request_id);
                }
                insert.push(")");
            }
            // The changes of both statements: the INSERT's are its rows
            // (a plain INSERT, all or an error), the rest the DELETE's.
            let changes = insert.build().execute(&mut *self).await?.rows_affected();
            closed += changes.saturating_sub(chunk.len() as u64);
        }
        Ok(closed)
    }
}

impl RecordRows for sqlx::PgConnection {
    /// One `COPY ... FROM STDIN` in PostgreSQL's binary format: two round
    /// trips for the whole batch, no statement to parse or plan, and no
    /// per-value binding. The rows land exactly as an INSERT would put them
    /// (primary key checked: a seq taken fails the batch, as before). Then
    /// one DELETE per chunk for the intents.
    async fn write(&mut self, rows: &mut [BatchRow<'_>], close: bool) -> Result<u64, sqlx::Error> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut copy = self
            .copy_in_raw(
                "COPY audit_log (seq, request_id, time_ms, record, leaf_hash) FROM STDIN (FORMAT binary)",
            )
            .await?;
        copy.send(copy_binary(rows)).await?;
        copy.finish().await?;
        let mut closed = 0;
        if close {
            for chunk in rows.chunks(AUDIT_ROWS_PER_INSERT) {
                let mut delete = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                    "DELETE FROM audit_intents WHERE request_id IN (",
                );
                let mut ids = delete.separated(", ");
                for (_, request_id, ..) in chunk {
                    ids.push_bind(*request_id);
                }
                delete.push(")");
                closed += delete.build().execute(&mut *self).await?.rows_affected();
            }
        }
        Ok(closed)
    }
}

/// `rows` in the binary `COPY` format: the signature, flags and header
/// extension length, then per row its field count and each field as a
/// length and bytes (`BIGINT` as 8 bytes big-endian, `TEXT` as UTF-8,
/// `BYTEA` as is), then the trailer -1.
fn copy_binary(rows: &[BatchRow<'_>]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        // A field is at most a record's bytes: far below 2 GiB.
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let size: usize = rows
        .iter()
        .map(|(_, id, _, stored, _)| 2 + 5 * 4 + 8 + id.len() + 8 + stored.len() + 32)
        .sum();
    let mut out = Vec::with_capacity(19 + size + 2);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for (seq, request_id, time_ms, stored, leaf) in rows {
        out.extend_from_slice(&5i16.to_be_bytes());
        field(&mut out, &seq.to_be_bytes());
        field(&mut out, request_id.as_bytes());
        field(&mut out, &time_ms.to_be_bytes());
        field(&mut out, stored);
        field(&mut out, &leaf[..]);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Journals `intents` (owned by replica `owner`) through `$exec` (the
/// append transaction, or on SQLite the pool for a batch of intents alone,
/// in autocommit), in multi-row statements.
macro_rules! insert_intents {
    ($exec:expr, $intents:expr, $owner:expr) => {{
        let intents: &[AuditIntentRow] = $intents;
        if let [intent] = intents {
            // One intent (the usual batch under `before_forward`): a fixed
            // statement, no SQL text to build.
            query(
                "INSERT INTO audit_intents (request_id, time_ms, record, owner) VALUES (?, ?, ?, ?)
                 ON CONFLICT (request_id) DO UPDATE SET time_ms = excluded.time_ms, record = excluded.record, owner = excluded.owner",
            )
            .bind(intent.request_id.as_str())
            .bind(intent.time_ms)
            .bind(Arc::clone(&intent.record))
            .bind($owner)
            .execute($exec)
            .await?;
        } else {
        for chunk in intents.chunks(AUDIT_ROWS_PER_INSERT) {
            // A request decided twice (an MCP batch) keeps one intent: the latest.
            let mut insert = sqlx::QueryBuilder::<Db>::new(
                "INSERT INTO audit_intents (request_id, time_ms, record, owner) ",
            );
            insert.push_values(chunk, |mut row, intent| {
                row.push_bind(intent.request_id.as_str())
                    .push_bind(intent.time_ms)
                    .push_bind(Arc::clone(&intent.record))
                    .push_bind($owner);
            });
            insert.push(
                " ON CONFLICT (request_id) DO UPDATE SET time_ms = excluded.time_ms, record = excluded.record, owner = excluded.owner",
            );
            insert.build().execute($exec).await?;
        }
        }
    }};
}
use insert_intents;

/// Stores a subtree hash in the write transaction `$tx` (a macro so the one
/// statement serves both backends).
macro_rules! insert_node {
    ($tx:expr, $node:expr) => {{
        let node: &Subtree = $node;
        query(
            "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)
             ON CONFLICT (level, idx) DO UPDATE SET hash = excluded.hash",
        )
        .bind(node.level as i64)
        .bind(node.index as i64)
        .bind(&node.hash[..])
        .execute(&mut *$tx)
        .await?;
    }};
}
use insert_node;

/// Opens a checkpoint note with the trusted key and checks its origin.
pub fn open_checkpoint(
    note: &str,
    verifier: &VerifierKey,
    origin: &str,
) -> Result<Checkpoint, String> {
    let checkpoint =
        checkpoint::parse_and_verify(note, &verifier.to_string()).map_err(|e| e.to_string())?;
    if checkpoint.origin != origin {
        return Err(format!(
            "it is for the log `{}`, not `{origin}`",
            checkpoint.origin
        ));
    }
    Ok(checkpoint)
}

fn checkpoint_from_row(r: &impl DbRow) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        size: r.col::<i64, _>("tree_size")? as u64,
        time_ms: r.col("time_ms")?,
        note: r.col("note")?,
    })
}

fn to_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    Hash::try_from(bytes).map_err(|_| corrupt("a stored hash is not 32 bytes"))
}

fn corrupt(detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table: "audit_log",
        detail: detail.to_string(),
    }
}

fn invalid(detail: String) -> StoreError {
    StoreError::Invalid(detail)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use portcullis_audit::merkle::{verify_consistency, verify_inclusion};

    pub(crate) const ORIGIN: &str = "test.local/audit";

    pub(crate) fn record(i: usize) -> AuditRecord {
        AuditRecord {
            time_ms: i as i64,
            request_id: format!("req-{i}"),
            action: "GET".into(),
            status: 200,
            ..Default::default()
        }
    }

    pub(crate) async fn sign_now(store: &Store, log: &AuditAppender, key: &SigningKey) {
        let head = log.head();
        let note = checkpoint::sign(
            &Checkpoint {
                origin: ORIGIN.into(),
                size: head.size,
                root: head.root,
            },
            key,
            ORIGIN,
        )
        .unwrap();
        store
            .add_checkpoint(&StoredCheckpoint {
                size: head.size,
                time_ms: 0,
                note,
            })
            .await
            .unwrap();
    }

    /// A log of 300 records in uneven batches, with a checkpoint after each.
    pub(crate) async fn build() -> (tempfile::TempDir, Store, SigningKey, Vec<Hash>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db.sqlite"))
            .await
            .unwrap();
        let (key, leaves) = fill(&store).await;
        (dir, store, key, leaves)
    }

    /// [`build`] on a database of either backend.
    pub(crate) async fn build_on(db: &crate::testing::TestDb) -> (Store, SigningKey, Vec<Hash>) {
        let store = db.open().await;
        let (key, leaves) = fill(&store).await;
        (store, key, leaves)
    }

    async fn fill(store: &Store) -> (SigningKey, Vec<Hash>) {
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut log = store.audit_appender().await.unwrap();
        let mut n = 0;
        for batch_len in [1, 2, 61, 64, 100, 72] {
            let mut batch: Vec<_> = (n..n + batch_len).map(record).collect();
            n += batch_len;
            log.append(&mut batch).await.unwrap();
            sign_now(store, &log, &key).await;
        }
        let leaves: Vec<Hash> = store
            .audit_leaves(0, 1000)
            .await
            .unwrap()
            .iter()
            .map(|(_, text)| merkle::leaf_hash(text.as_bytes()))
            .collect();
        assert_eq!(leaves.len(), 300);
        assert_eq!(log.head().root, merkle::root(&leaves));
        (key, leaves)
    }

    pub(crate) fn verifier(key: &SigningKey) -> VerifierKey {
        VerifierKey::new(ORIGIN, key.verifying_key()).unwrap()
    }

    #[tokio::test]
    async fn proofs_from_the_store_verify_and_the_frontier_survives_reopening() {
        for db in crate::testing::TestDb::all().await {
            proofs_on(&db).await;
        }
    }

    async fn proofs_on(db: &crate::testing::TestDb) {
        let (store, key, leaves) = build_on(db).await;
        for size in [1u64, 2, 63, 64, 65, 128, 200, 300] {
            let root = store.audit_head(size).await.unwrap();
            assert_eq!(root, merkle::root(&leaves[..size as usize]));
            for index in [0, size / 2, size - 1] {
                let proof = store.inclusion_proof(index, size).await.unwrap();
                verify_inclusion(&leaves[index as usize], index, size, &proof, &root).unwrap();
            }
            for old in [0u64, 1, 31, 64, size] {
                if old > size {
                    continue;
                }
                let proof = store.consistency_proof(old, size).await.unwrap();
                let old_root = store.audit_head(old).await.unwrap();
                verify_consistency(old, size, &old_root, &root, &proof).unwrap();
            }
        }
        assert!(matches!(
            store.inclusion_proof(300, 300).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.audit_head(301).await,
            Err(StoreError::Invalid(_))
        ));

        // A second appender resumes the same tree.
        let mut log = store.audit_appender().await.unwrap();
        assert_eq!(log.head().root, merkle::root(&leaves));
        log.append(&mut [record(300)]).await.unwrap();
        assert_eq!(log.head().size, 301);

        let summary = store
            .verify_audit_log(&verifier(&key), ORIGIN, &[])
            .await
            .unwrap();
        assert_eq!(
            (summary.size, summary.signed_size, summary.checkpoints),
            (301, 300, 6)
        );
    }

    #[tokio::test]
    async fn a_stale_appender_cannot_fork_the_log() {
        for db in crate::testing::TestDb::all().await {
            a_stale_appender_cannot_fork_on(&db).await;
        }
    }

    /// One node: a second appender is another process, and is refused.
    /// PostgreSQL: it is another replica, and its batch goes after the
    /// records it had not seen, under the audit lock: never a fork.
    async fn a_stale_appender_cannot_fork_on(db: &crate::testing::TestDb) {
        let (store, key, _) = build_on(db).await;
        let mut first = store.audit_appender().await.unwrap();
        let mut second = store.audit_appender().await.unwrap();
        first.append(&mut [record(1)]).await.unwrap();
        let stale = second.append(&mut [record(2)]).await;
        if !store.is_postgres() {
            assert!(matches!(stale, Err(StoreError::Corrupt { .. })));
            return;
        }
        assert_eq!(stale.unwrap().size, 302);
        let summary = store
            .verify_audit_log(&verifier(&key), ORIGIN, &[])
            .await
            .unwrap();
        assert_eq!(summary.size, 302);
    }

    /// Two replicas (two stores, two pools) append concurrently to one
    /// PostgreSQL log: every record gets its own index, the strings they
    /// add never collide, and the shared log verifies.
    #[tokio::test]
    async fn replicas_append_to_one_log_without_forking() {
        let Some(db) = crate::testing::TestDb::postgres().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        let writer = |store: Store, tag: &'static str| {
            tokio::spawn(async move {
                let mut log = store.audit_appender().await.unwrap();
                let mut seqs = Vec::new();
                for round in 0..40 {
                    let mut batch: Vec<_> = (0..7)
                        .map(|i| AuditRecord {
                            request_id: format!("{tag}-{round}-{i}"),
                            // A string new to the table in every batch.
                            principal: Some(format!("agent-{tag}-{round}")),
                            ..record(i)
                        })
                        .collect();
                    log.append(&mut batch).await.unwrap();
                    seqs.extend(batch.iter().map(|r| r.seq.unwrap()));
                }
                seqs
            })
        };
        let started = std::time::Instant::now();
        let (sa, sb) = (writer(a.clone(), "a"), writer(b.clone(), "b"));
        let mut all: Vec<u64> = sa.await.unwrap();
        all.extend(sb.await.unwrap());
        // Reported, not asserted: batches of 7 alternating between two
        // appenders is the worst case (every batch catches up first).
        eprintln!(
            "two appenders, 80 interleaved batches of 7: {:?} ({:.0} records/s)",
            started.elapsed(),
            560.0 / started.elapsed().as_secs_f64()
        );
        all.sort();
        assert_eq!(
            all,
            (0..560).collect::<Vec<_>>(),
            "each index given out once"
        );
        let key = SigningKey::from_bytes(&[9; 32]);
        let log = b.audit_appender().await.unwrap();
        sign_now(&b, &log, &key).await;
        let summary = a
            .verify_audit_log(&verifier(&key), ORIGIN, &[])
            .await
            .unwrap();
        assert_eq!((summary.size, summary.signed_size), (560, 560));
        let tail = a.audit_tail(560).await.unwrap();
        assert!(
            tail.iter()
                .any(|r| r.principal.as_deref() == Some("agent-b-39"))
        );
    }

    /// Three replicas (three stores, three pools) append at once, in
    /// batches small and larger than a statement's worth of rows, some
    /// adding a string the others add in the same round or strings of their
    /// own (their numbers collide unless the batch is encoded again after
    /// catching up), some adding none (encoded once), with
    /// a personal value given twice: every index is given out once, each
    /// appender's tree after each of its batches is the stored tree at that
    /// size (no fork), and the log verifies.
    #[tokio::test]
    async fn concurrent_replicas_never_fork_the_tree() {
        let Some(db) = crate::testing::TestDb::postgres().await else {
            return;
        };
        let writer = |store: Store, tag: usize| {
            tokio::spawn(async move {
                let mut log = store.audit_appender().await.unwrap();
                let mut heads = Vec::new();
                let mut firsts = Vec::new();
                let mut seqs = Vec::new();
                for round in 0..12 {
                    let len = [1, 300, 7, 600][round % 4];
                    let mut batch: Vec<_> = (0..len)
                        .map(|i| AuditRecord {
                            request_id: format!("r{tag}-{round}-{i}"),
                            principal: Some(match round % 3 {
                                0 => format!("shared-{round}"),
                                1 => format!("agent-{tag}-{round}"),
                                // Known after its first batch: adds no string.
                                _ => "steady".to_string(),
                            }),
                            ..record(i)
                        })
                        .collect();
                    let personal = ["first", "second"].map(|value| PersonalValue {
                        record: 0,
                        field: "source_ip",
                        value: format!("{value}-{tag}-{round}"),
                        expires_ms: i64::MAX,
                    });
                    let head = log
                        .append_with_personal(&mut batch, &personal)
                        .await
                        .unwrap();
                    heads.push(head);
                    firsts.push((batch[0].seq.unwrap(), format!("second-{tag}-{round}")));
                    seqs.extend(batch.iter().map(|r| r.seq.unwrap()));
                }
                (heads, firsts, seqs)
            })
        };
        let stores = [db.open().await, db.open().await, db.open().await];
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(tag, store)| writer(store.clone(), tag))
            .collect();
        let (mut heads, mut firsts, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
        for task in tasks {
            let (h, f, s) = task.await.unwrap();
            heads.extend(h);
            firsts.extend(f);
            seqs.extend(s);
        }
        let total = 3 * 3 * (1 + 300 + 7 + 600);
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..total).collect::<Vec<u64>>(),
            "each index given out once"
        );
        let store = &stores[0];
        for head in &heads {
            assert_eq!(
                store.audit_head(head.size).await.unwrap(),
                head.root,
                "an appender's tree at {} is the stored one",
                head.size
            );
        }
        for (seq, value) in firsts {
            assert_eq!(
                store.audit_personal(seq).await.unwrap(),
                [("source_ip".to_string(), value)]
            );
        }
        let key = SigningKey::from_bytes(&[9; 32]);
        let log = stores[1].audit_appender().await.unwrap();
        assert_eq!(log.head().size, total);
        sign_now(store, &log, &key).await;
        let summary = stores[2]
            .verify_audit_log(&verifier(&key), ORIGIN, &[])
            .await
            .unwrap();
        assert_eq!((summary.size, summary.signed_size), (total, total));
    }

    fn intent(i: usize) -> AuditIntentRow {
        AuditIntentRow {
            request_id: format!("req-{i}"),
            time_ms: i as i64,
            record: format!("{{\"request_id\":\"req-{i}\"}}").into(),
        }
    }

    #[tokio::test]
    async fn a_record_closes_its_intent_in_the_transaction_that_appends_it() {
        for db in crate::testing::TestDb::all().await {
            a_record_closes_its_intent_in_the_transaction_that_appends_it_on(db.open().await).await;
        }
    }

    async fn a_record_closes_its_intent_in_the_transaction_that_appends_it_on(store: Store) {
        let mut log = store.audit_appender().await.unwrap();
        // Intents alone: journaled, nothing appended to the log.
        let head = log
            .append_batch(&mut [], &[], &[intent(1), intent(2), intent(3)])
            .await
            .unwrap();
        assert_eq!(head.size, 0);
        // Record 1 closes its intent; record 4's intent comes with it, and
        // so does record 5's, which the batch's own record 5 closes.
        log.append_batch(&mut [record(1), record(5)], &[], &[intent(4), intent(5)])
            .await
            .unwrap();
        let ids =
            |rows: Vec<AuditIntentRow>| rows.into_iter().map(|r| r.request_id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.audit_intents().await.unwrap()),
            ["req-2", "req-3", "req-4"]
        );
        // A reopened appender knows intents are open and keeps closing them.
        let mut log = store.audit_appender().await.unwrap();
        log.append(&mut [record(4)]).await.unwrap();
        assert_eq!(log.live_intents, 2);
        // Intents whose record is in the log (e.g. replayed from the spool)
        // are forgotten at start: none here but req-1 and req-4, long closed.
        tamper(
            &store,
            "INSERT INTO audit_intents (request_id, time_ms, record) VALUES ('req-5', 5, '{}')",
        )
        .await;
        assert_eq!(store.forget_recorded_intents().await.unwrap(), 1);
        assert_eq!(
            ids(store.audit_intents().await.unwrap()),
            ["req-2", "req-3"]
        );
    }

    async fn tamper(store: &Store, sql: &'static str) {
        crate::backend::with_pool!(&store.pool, |pool| {
            query(sql).execute(pool).await.unwrap();
        });
    }

    async fn failure(store: &Store, key: &SigningKey) -> AuditVerifyFailure {
        store
            .verify_audit_log(&verifier(key), ORIGIN, &[])
            .await
            .unwrap_err()
    }

    fn first_bad(f: &AuditVerifyFailure) -> u64 {
        match f {
            AuditVerifyFailure::Tampered(e) => e.first_bad_index(),
            other => panic!("not a tampering report: {other}"),
        }
    }

    #[tokio::test]
    async fn tampering_is_found_at_its_index() {
        // Changed record, leaf hash left alone: exact index. Bytes 2-3 of
        // the compact form are the status (docs/audit-format.md).
        let (_d, store, key, _) = build().await;
        tamper(&store, "UPDATE audit_log SET record = CAST(substr(record, 1, 2) || x'9301' || substr(record, 5) AS BLOB) WHERE seq = 150").await;
        assert_eq!(first_bad(&failure(&store, &key).await), 150);
        assert!(
            store.audit_leaves(150, 1).await.unwrap()[0]
                .1
                .contains("\"status\":403")
        );
        // Bytes that do not decode, a cut record, or one naming a string
        // the table does not hold: changed, at the exact index.
        for edit in [
            "UPDATE audit_log SET record = x'01ff' WHERE seq = 150",
            "UPDATE audit_log SET record = CAST(substr(record, 1, length(record) - 1) AS BLOB) WHERE seq = 150",
            "UPDATE audit_log SET record = CAST(record || x'00' AS BLOB) WHERE seq = 150",
            "UPDATE audit_log SET record = x'0102c800ff7f' WHERE seq = 150",
        ] {
            let (_d, store, key, _) = build().await;
            tamper(&store, edit).await;
            assert_eq!(first_bad(&failure(&store, &key).await), 150, "{edit}");
        }
        // A changed string changes every record naming it: the first is found.
        let (_d, store, key, _) = build().await;
        tamper(
            &store,
            "UPDATE audit_strings SET value = 'POST' WHERE value = 'GET'",
        )
        .await;
        assert_eq!(first_bad(&failure(&store, &key).await), 0);
        let (_d, store, key, _) = build().await;
        tamper(&store, "DELETE FROM audit_strings").await;
        assert_eq!(first_bad(&failure(&store, &key).await), 0);

        // Changed record with a recomputed leaf hash (written in either
        // stored form): the stored node above it disagrees.
        for compact in [false, true] {
            let (_d, store, key, _) = build().await;
            let (_, text) = store.audit_leaves(150, 1).await.unwrap().remove(0);
            let forged = text.replace("\"status\":200", "\"status\":403");
            let stored = if compact {
                let record: AuditRecord = serde_json::from_str(&forged).unwrap();
                let mut strings = Interner::load(&store.pool).await.unwrap();
                let bytes = portcullis_audit::compact::encode(&record, &mut |s| strings.intern(s));
                assert!(strings.added().1.is_empty());
                bytes
            } else {
                forged.clone().into_bytes()
            };
            sqlx::query("UPDATE audit_log SET record = ?, leaf_hash = ? WHERE seq = 150")
                .bind(&stored)
                .bind(&merkle::leaf_hash(forged.as_bytes())[..])
                .execute(store.sqlite_pool())
                .await
                .unwrap();
            assert_eq!(first_bad(&failure(&store, &key).await), 128);
            // ... and with the nodes deleted too, the checkpoints still catch it.
            tamper(&store, "DELETE FROM audit_nodes").await;
            assert_eq!(
                match failure(&store, &key).await {
                    AuditVerifyFailure::Tampered(e) => e,
                    other => panic!("{other}"),
                },
                VerifyError::CheckpointMismatch { from: 128, to: 228 }
            );
        }

        // Removed in the middle, removed at the end, inserted, reordered.
        let (_d, store, key, _) = build().await;
        tamper(&store, "DELETE FROM audit_log WHERE seq = 42").await;
        assert_eq!(first_bad(&failure(&store, &key).await), 42);
        let (_d, store, key, _) = build().await;
        tamper(&store, "DELETE FROM audit_log WHERE seq >= 290").await;
        assert_eq!(first_bad(&failure(&store, &key).await), 290);
        let (_d, store, key, _) = build().await;
        tamper(
            &store,
            "UPDATE audit_log SET seq = seq + 1000000 WHERE seq = 7",
        )
        .await;
        tamper(&store, "UPDATE audit_log SET seq = 7 WHERE seq = 8").await;
        tamper(&store, "UPDATE audit_log SET seq = 8 WHERE seq = 1000007").await;
        assert_eq!(first_bad(&failure(&store, &key).await), 7);

        // A checkpoint signed by another key, or for another log.
        let (_d, store, _key, _) = build().await;
        let other = SigningKey::from_bytes(&[1; 32]);
        assert!(matches!(
            failure(&store, &other).await,
            AuditVerifyFailure::BadCheckpoint { size: 1, .. }
        ));
    }

    /// After the audit key's rotation the log goes on under the new key; its
    /// checkpoints signed before verify with the retired key, trusted only
    /// when the caller gives it (never read from the database).
    #[tokio::test]
    async fn checkpoints_signed_before_a_rotation_verify_with_the_retired_key() {
        for db in crate::testing::TestDb::all().await {
            let (store, old, _) = build_on(&db).await;
            let new = SigningKey::from_bytes(&[10; 32]);
            let mut log = store.audit_appender().await.unwrap();
            let mut batch: Vec<_> = (300..340).map(record).collect();
            log.append(&mut batch).await.unwrap();
            sign_now(&store, &log, &new).await;
            // The new key alone: the checkpoints before it do not open.
            assert!(matches!(
                failure(&store, &new).await,
                AuditVerifyFailure::BadCheckpoint { size: 1, .. }
            ));
            let latest = store.latest_checkpoint().await.unwrap().unwrap();
            let first = &store.checkpoints().await.unwrap()[0];
            assert!(
                store
                    .open_checkpoint(&first.note, &verifier(&new), ORIGIN)
                    .is_err()
            );
            store.trust_retired_audit_keys(vec![verifier(&old)]);
            let summary = store
                .verify_audit_log(&verifier(&new), ORIGIN, &[])
                .await
                .unwrap();
            assert_eq!(
                (summary.size, summary.checkpoints),
                (340, 7),
                "{}",
                db.backend()
            );
            assert_eq!(
                store
                    .open_checkpoint(&first.note, &verifier(&new), ORIGIN)
                    .unwrap()
                    .size,
                1
            );
            assert_eq!(
                store
                    .open_checkpoint(&latest.note, &verifier(&new), ORIGIN)
                    .unwrap()
                    .size,
                340
            );
            // A retired key does not make another log's checkpoints open.
            let stranger = SigningKey::from_bytes(&[11; 32]);
            store.trust_retired_audit_keys(vec![verifier(&stranger)]);
            assert!(
                store
                    .open_checkpoint(&first.note, &verifier(&new), ORIGIN)
                    .is_err()
            );
            store.close().await;
        }
    }

    async fn count(store: &Store, sql: &'static str) -> i64 {
        crate::backend::with_pool!(&store.pool, |pool| {
            query_scalar(sql).fetch_one(pool).await.unwrap()
        })
    }

    /// `serve --accept-tampered-log-from N` on either backend: the tampered
    /// log moves aside whole (forensics), a new empty one begins, the
    /// accepted prefix's head is recomputed; on PostgreSQL a replica holding
    /// a live lease refuses it, and a backup taken after restores the log
    /// set aside too.
    #[tokio::test]
    async fn a_tampered_log_is_set_aside_and_a_new_one_begins() {
        for db in crate::testing::TestDb::all().await {
            let (store, key, leaves) = build_on(&db).await;
            tamper(&store, "DELETE FROM audit_log WHERE seq = 150").await;
            assert_eq!(first_bad(&failure(&store, &key).await), 150);
            // The accepted prefix must be whole.
            let err = store.archive_audit_segment(151, 7, 0).await.unwrap_err();
            assert!(err.to_string().contains("record 150 is missing"), "{err}");
            let err = store.archive_audit_segment(301, 7, 0).await.unwrap_err();
            assert!(err.to_string().contains("cannot accept 301"), "{err}");
            if db.backend() == "postgres" {
                // Another replica running on the shared log refuses it.
                let other = db.open().await;
                other.register_replica().await.unwrap();
                let err = store
                    .archive_audit_segment(150, 7, 60_000)
                    .await
                    .unwrap_err();
                assert!(
                    err.to_string().contains("hold a live lease")
                        && err.to_string().contains(other.replica_id()),
                    "{err}"
                );
                assert_eq!(store.audit_size().await.unwrap(), 300);
                other.close().await;
            }
            // A lease of 0 ms: the other replica's has lapsed.
            let archived = store.archive_audit_segment(150, 7, 0).await.unwrap();
            assert_eq!(
                archived,
                ArchivedSegment {
                    suffix: "segment_7".into(),
                    size: 300,
                    accepted: 150,
                    accepted_root: merkle::root(&leaves[..150]),
                },
                "{}",
                db.backend()
            );
            // The old log is kept whole beside the new, empty one.
            assert_eq!(
                count(&store, "SELECT COUNT(*) FROM audit_log_segment_7").await,
                299
            );
            assert_eq!(
                count(&store, "SELECT COUNT(*) FROM audit_checkpoints_segment_7").await,
                6
            );
            assert_eq!(store.audit_size().await.unwrap(), 0);
            assert!(store.checkpoints().await.unwrap().is_empty());
            // The new log takes records and verifies from its first.
            let mut log = store.audit_appender().await.unwrap();
            let mut batch: Vec<_> = (0..70).map(record).collect();
            log.append(&mut batch).await.unwrap();
            sign_now(&store, &log, &key).await;
            let summary = store
                .verify_audit_log(&verifier(&key), ORIGIN, &[])
                .await
                .unwrap();
            assert_eq!(summary.size, 70, "{}", db.backend());
            // Set aside again: the names it frees are free again.
            store.archive_audit_segment(70, 8, 0).await.unwrap();
            assert_eq!(
                count(&store, "SELECT COUNT(*) FROM audit_log_segment_8").await,
                70
            );
            if let crate::testing::TestDb::Postgres { .. } = &db {
                let dir = tempfile::tempdir().unwrap();
                let out = dir.path().join("backup");
                std::fs::write(&out, b"").unwrap();
                crate::pg_backup::write_postgres_backup(&db.url(), &out, &[])
                    .await
                    .unwrap();
                let target = crate::testing::TestDb::postgres().await.unwrap();
                crate::pg_backup::restore_postgres_backup(&out, &target.url())
                    .await
                    .unwrap();
                let copy = target.open().await;
                let n = count(&copy, "SELECT COUNT(*) FROM audit_log_segment_7").await;
                assert_eq!(n, 299);
                copy.close().await;
            }
            store.close().await;
        }
    }

    /// Rows written before the compact form (canonical JSON text) keep
    /// verifying, are read, exported and proven as they were, and the log
    /// goes on in the compact form after them.
    #[tokio::test]
    async fn records_stored_as_json_before_the_compact_form_keep_verifying() {
        let (_dir, store, key, leaves) = build().await;
        let texts = store.audit_leaves(0, 1000).await.unwrap();
        for (seq, text) in texts.iter().take(200) {
            sqlx::query("UPDATE audit_log SET record = ? WHERE seq = ?")
                .bind(text.as_str())
                .bind(*seq as i64)
                .execute(store.sqlite_pool())
                .await
                .unwrap();
        }
        let kind: String = sqlx::query_scalar("SELECT typeof(record) FROM audit_log WHERE seq = 5")
            .fetch_one(store.sqlite_pool())
            .await
            .unwrap();
        assert_eq!(kind, "text");
        assert_eq!(store.audit_leaves(0, 1000).await.unwrap(), texts);
        assert_eq!(store.audit_tail(300).await.unwrap()[5], record_at(5));
        let mut log = store.audit_appender().await.unwrap();
        assert_eq!(log.head().root, merkle::root(&leaves));
        log.append(&mut [record(300)]).await.unwrap();
        sign_now(&store, &log, &key).await;
        store
            .verify_audit_log(&verifier(&key), ORIGIN, &[])
            .await
            .unwrap();
        // A JSON row is its leaf, byte for byte: an edit is found there.
        tamper(&store, "UPDATE audit_log SET record = replace(record, '\"status\":200', '\"status\":403') WHERE seq = 42").await;
        assert_eq!(first_bad(&failure(&store, &key).await), 42);
    }

    fn record_at(i: usize) -> AuditRecord {
        AuditRecord {
            seq: Some(i as u64),
            ..record(i)
        }
    }

    #[tokio::test]
    async fn personal_values_live_beside_the_leaves_until_they_expire() {
        let (_dir, store, key, _) = build().await;
        let mut log = store.audit_appender().await.unwrap();
        let mut batch = vec![record(300), record(301)];
        // Given twice: the last is kept, as when they were written one by one.
        let personal = ["10.0.0.6", "10.0.0.7"].map(|value| PersonalValue {
            record: 1,
            field: "source_ip",
            value: value.into(),
            expires_ms: 5_000,
        });
        log.append_with_personal(&mut batch, &personal)
            .await
            .unwrap();
        assert_eq!(
            store.audit_personal(301).await.unwrap(),
            [("source_ip".to_string(), "10.0.0.7".to_string())]
        );
        assert!(store.audit_personal(300).await.unwrap().is_empty());
        assert_eq!(store.purge_personal(4_999).await.unwrap(), 0);
        assert_eq!(store.purge_personal(5_000).await.unwrap(), 1);
        assert!(store.audit_personal(301).await.unwrap().is_empty());
        // Deleting personal data never touches a leaf.
        sign_now(&store, &log, &key).await;
        store
            .verify_audit_log(&verifier(&key), ORIGIN, &[])
            .await
            .unwrap();
    }
}
