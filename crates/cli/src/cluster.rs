//! Cluster mode (issue 18): what `serve` runs when its store is PostgreSQL
//! and other replicas share it.
//!
//! Each replica decides from in-memory snapshots, as one node does. A
//! replica whose admin API changes agents, revocations, the policy or an
//! approval announces it on the store's change channel after the commit
//! (`NOTIFY portcullis_changes`, `portcullis_store::Change`); every replica
//! listens and re-reads that part of its state with the same function an
//! admin change on it would run. So that a lost notification (a dropped
//! connection, a replica that was reconnecting) cannot leave a replica
//! stale, it also re-reads everything every [`FULL_RESYNC`] and at once
//! after its listener reconnects. Single-use `jti`s, the use of an approval
//! and audit appends need neither: they are decided in the database itself.
//! `@rate` limits lease their tokens from the database on the request path
//! (`portcullis_gateway::rate_limit`); LLM budgets are reported and read
//! back every `SYNC_INTERVAL` by a task of their own ([`spawn_budget_sync`]).

use std::sync::Arc;
use std::time::Duration;

use portcullis_gateway::Gateway;
use portcullis_store::{Change, ChangeListener, Heard, Store};
use tokio::sync::watch;

/// How often a replica re-reads all shared state, notifications or not.
pub(crate) const FULL_RESYNC: Duration = Duration::from_secs(5);

/// How long a replica waits before subscribing again after the listener
/// failed to reconnect.
const RELISTEN_AFTER: Duration = Duration::from_millis(500);

/// How often (in full resyncs) expired single-use keys are purged from the
/// shared table: every minute.
const PURGE_EVERY: u32 = 12;

/// Listens for announced changes and re-reads what each names, re-reads
/// everything every [`FULL_RESYNC`] and after a reconnection, until `stop`.
/// A failed read keeps the last snapshot and is retried at the next full
/// resync (logged).
pub(crate) fn spawn_resync(
    gateway: Arc<Gateway>,
    store: Store,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut listener: Option<ChangeListener> = None;
        let mut next_full = tokio::time::Instant::now() + FULL_RESYNC;
        let mut fulls = 0u32;
        loop {
            if listener.is_none() {
                match store.listen_changes().await {
                    Ok(l) => {
                        listener = Some(l);
                        // Changes announced while not listening were missed.
                        next_full = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: cannot listen for changes; relying on the periodic resync");
                    }
                }
            }
            let heard = tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep_until(next_full) => Heard::Everything,
                heard = recv(&mut listener) => match heard {
                    Ok(heard) => heard,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: the change listener failed; subscribing again");
                        listener = None;
                        continue;
                    }
                },
            };
            match heard {
                Heard::Change(change) => refresh(&gateway, change).await,
                Heard::Everything => {
                    for change in Change::ALL {
                        refresh(&gateway, change).await;
                    }
                    next_full = tokio::time::Instant::now() + FULL_RESYNC;
                    fulls = fulls.wrapping_add(1);
                    if fulls.is_multiple_of(PURGE_EVERY) {
                        purge(&store).await;
                    }
                }
            }
        }
    })
}

/// The next notification; without a listener, waits [`RELISTEN_AFTER`] and
/// reports an error so that the caller subscribes again.
async fn recv(listener: &mut Option<ChangeListener>) -> Result<Heard, String> {
    match listener {
        Some(l) => l.recv().await.map_err(|e| e.to_string()),
        None => {
            tokio::time::sleep(RELISTEN_AFTER).await;
            Err("not listening".into())
        }
    }
}

/// Re-reads the part of the state `change` names, as the admin API of this
/// replica would after making the change itself.
async fn refresh(gateway: &Gateway, change: Change) {
    let failed = match change {
        Change::Agents => gateway.reload().await.err().map(|e| e.to_string()),
        Change::Revocations => gateway
            .reload_revocations()
            .await
            .err()
            .map(|e| e.to_string()),
        Change::Policy => gateway.resync_policy().await.err().map(|e| e.to_string()),
        Change::Approvals => gateway
            .approvals()
            .resync()
            .await
            .err()
            .map(|e| e.to_string()),
        Change::Quarantine => match gateway.analytics() {
            Some(analytics) => analytics
                .sync_quarantines()
                .await
                .err()
                .map(|e| e.to_string()),
            None => None,
        },
        Change::Tools => match gateway.mcp_pins() {
            Some(pins) => pins.resync().await.err().map(|e| e.to_string()),
            None => None,
        },
        Change::Secrets => match gateway.vault() {
            Some(vault) => vault.resync().await.err().map(|e| e.to_string()),
            None => None,
        },
    };
    if let Some(error) = failed {
        tracing::warn!(change = change.as_str(), %error, "cluster: cannot re-read a change from the shared store");
    }
}

/// Reports this replica's LLM budget counts and reads the others' every
/// [`portcullis_gateway::llm::budget::SYNC_INTERVAL`], until `stop`. A
/// failure is logged (once until it recovers) and retried at the next tick.
pub(crate) fn spawn_budget_sync(
    gateway: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(portcullis_gateway::llm::budget::SYNC_INTERVAL) => {}
            }
            match gateway.sync_budgets().await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cluster: cannot share LLM budget counts; each replica counts alone until the store answers");
                }
                Err(_) => {}
            }
        }
    })
}

async fn purge(store: &Store) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    if let Err(e) = store.purge_single_use(now).await {
        tracing::warn!(error = %e, "cluster: cannot purge expired single-use keys");
    }
    // Rate cells full again for an hour; budget counters of windows two
    // days past (a day window is written to until it ends).
    if let Err(e) = store
        .purge_shared_limits((now - 3_600) * 1_000_000, (now - 2 * 86_400) * 1_000)
        .await
    {
        tracing::warn!(error = %e, "cluster: cannot purge idle shared limits");
    }
}
