//! Cluster mode (issue 18): what `serve` runs when its store is PostgreSQL
//! and other replicas share it.
//!
//! Each replica decides from in-memory snapshots, as one node does. Until
//! changes are pushed with LISTEN/NOTIFY (not built yet, docs/cluster.md),
//! a replica re-reads what other replicas may have changed on a fixed
//! period: agents, certificates, keys, pins and grants (the snapshot),
//! revoked tokens and disabled users, and approval tickets. A change made through one replica's
//! admin API therefore reaches the others within [`RESYNC_INTERVAL`] plus
//! one read. Single-use `jti`s, the use of an approval and audit appends
//! need no resync: they are decided in the database itself.

use std::sync::Arc;
use std::time::Duration;

use portcullis_gateway::Gateway;
use portcullis_store::Store;
use tokio::sync::watch;

/// How often a replica re-reads shared state.
pub(crate) const RESYNC_INTERVAL: Duration = Duration::from_millis(500);

/// How often expired single-use keys are purged from the shared table.
const PURGE_EVERY: u32 = 120;

/// Re-reads shared state every [`RESYNC_INTERVAL`] until `stop`. A failed
/// read keeps the last snapshot and is retried next period (logged).
pub(crate) fn spawn_resync(
    gateway: Arc<Gateway>,
    store: Store,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
                _ = stop.changed() => break,
            }
            if let Err(e) = gateway.reload().await {
                tracing::warn!(error = %e, "cluster: cannot re-read agents from the shared store");
            }
            if let Err(e) = gateway.reload_revocations().await {
                tracing::warn!(error = %e, "cluster: cannot re-read revocations from the shared store");
            }
            if let Err(e) = gateway.approvals().resync().await {
                tracing::warn!(error = %e, "cluster: cannot re-read approval tickets from the shared store");
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(PURGE_EVERY) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs() as i64;
                if let Err(e) = store.purge_single_use(now).await {
                    tracing::warn!(error = %e, "cluster: cannot purge expired single-use keys");
                }
            }
        }
    })
}
