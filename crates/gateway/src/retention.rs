//! `[audit] retention_days`: a background task that archives the audit
//! records older than the retention to sealed segments and prunes them from
//! the database (`Store::archive_audit`, the same as `audit archive`).
//!
//! It runs beside the audit writer, never in front of it: the archive reads
//! and deletes records below the tree's end while the writer appends at it,
//! and pruning deletes in short transactions so a batch commit never waits
//! long for SQLite's write lock. Only signed records, already delivered by
//! every export sink, are archived; nothing is pruned before its segment is
//! written, synced and checked against the stored tree.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_store::Store;

/// How often retention runs (also once at start).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs retention now and then every [`RETENTION_INTERVAL`], forever.
pub async fn run(store: Store, dir: PathBuf, retention: Duration) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        tick.tick().await;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let before_ms = now_ms.saturating_sub(retention.as_millis() as i64);
        match store.archive_audit(before_ms, &dir).await {
            Ok(outcome) => match outcome.written {
                Some(segment) => tracing::info!(
                    start = segment.seal.start,
                    end = segment.seal.end,
                    archive = %segment.leaves.display(),
                    "audit retention: archived and pruned records"
                ),
                None => tracing::info!(
                    first_stored = outcome.first_stored,
                    archive = %dir.display(),
                    "audit retention: nothing to archive"
                ),
            },
            // Nothing was pruned that is not archived; the next run retries.
            Err(e) => {
                tracing::error!(error = %e, archive = %dir.display(), "audit retention failed")
            }
        }
    }
}
