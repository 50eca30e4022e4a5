//! The store's read probe: whether requests and admin calls can read the
//! store's tables now, as the `store_stalled` readiness reason.
//!
//! Every [`PROBE_EVERY`] it reads every table (no rows), waiting at most
//! [`LOCK_WAIT`] for a lock another session or process holds
//! (`Store::probe_reads`). A table locked for longer (PostgreSQL's `LOCK
//! TABLE … IN ACCESS EXCLUSIVE MODE` in another session, SQLite's database
//! held in exclusive locking mode by another process) raises the reason;
//! the next probe that reads them all clears it, without a restart. The
//! reads themselves are bounded by `[store] lock_timeout_ms` and fail with
//! `store_unavailable`: the probe only tells the load balancer.
//!
//! The cluster heartbeat (`cluster.rs`) says whether the database answers
//! at all (`store_unavailable`); this probe whether its tables can be read.
//! A whole-store outage fails both.

use std::time::Duration;

use portcullis_gateway::readiness::{NotReady, Readiness};
use portcullis_store::Store;
use tokio::sync::watch;

/// How often the tables are probed.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long the probe waits for a lock: long enough for another writer's
/// ordinary transaction, far below `[store] lock_timeout_ms`.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// The probe's own bound, should the database not answer at all (the
/// connection pool waits for a free connection, for one).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Probes the store's tables every [`PROBE_EVERY`] until `stop`, raising
/// and clearing `store_stalled`.
pub(crate) fn spawn(
    store: Store,
    readiness: Readiness,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
            let failure =
                match tokio::time::timeout(PROBE_TIMEOUT, store.probe_reads(LOCK_WAIT)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
                };
            let stalled = failure.is_some();
            if stalled != readiness.is_raised(NotReady::StoreStalled) {
                match &failure {
                    Some(e) => tracing::error!(
                        error = %e,
                        "the store's tables cannot be read in time (a lock held by another session?); not ready (store_stalled) until they can"
                    ),
                    None => tracing::info!(
                        "the store's tables can be read again; store_stalled cleared"
                    ),
                }
            }
            readiness.set(NotReady::StoreStalled, stalled);
        }
    })
}
