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
//!
//! A heartbeat ([`spawn_heartbeat`]) pings the database every [`HEARTBEAT`]
//! and reports to the store's health (`portcullis_store::StoreHealth`), which
//! the request path reads without IO: while the database is away the replica
//! is not ready (`store_unavailable`) and, past `[store] max_staleness_ms`,
//! refuses data-plane requests; the audit writer spills to its outage spool.
//! When the database answers again, the heartbeat re-reads all shared state
//! before it reports the store up, so no request is decided from a snapshot
//! that missed changes made during the outage.
//!
//! `@rate` limits lease their tokens from the database on the request path
//! (`portcullis_gateway::rate_limit`); LLM budgets are reported and read
//! back every `SYNC_INTERVAL` by a task of their own ([`spawn_budget_sync`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use portcullis_admin::AdminCredentials;
use portcullis_gateway::Gateway;
use portcullis_gateway::audit_sink::AuditSink;
use portcullis_gateway::checkpointer::Checkpointer;
use portcullis_gateway::metrics::Metrics;
use portcullis_gateway::readiness::NotReady;
use portcullis_store::{
    Candidate, Change, ChangeListener, Heard, KeyCheck, LeaderRole, Lease, Store,
};
use tokio::sync::watch;

/// How often a replica re-reads all shared state, notifications or not.
pub(crate) const FULL_RESYNC: Duration = Duration::from_secs(5);

/// How long a replica waits before subscribing again after the listener
/// failed to reconnect.
const RELISTEN_AFTER: Duration = Duration::from_millis(500);

/// How often (in full resyncs) expired single-use keys are purged from the
/// shared table: every minute.
const PURGE_EVERY: u32 = 12;

/// How often the heartbeat pings the database: with [`HEARTBEAT_TIMEOUT`],
/// how long a replica may take to notice that the database went away.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(250);

/// How long a ping may take before it counts as unanswered (a stalled
/// server, or packets dropped on the way, rather than a refused connection).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// How many pings in a row must go unanswered before the database counts as
/// away; a ping that fails outright (connection refused or reset) counts at
/// once. Two: one slow ping on a loaded host must not take a replica out.
const TIMEOUTS_BEFORE_DOWN: u32 = 2;

/// Pings the database every [`HEARTBEAT`] until `stop`, reporting each
/// answer to the store's health and the `store_unavailable` readiness
/// reason (see the module docs).
pub(crate) fn spawn_heartbeat(
    gateway: Arc<Gateway>,
    admin: Arc<AdminCredentials>,
    store: Store,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let health = store.health().clone();
        let readiness = gateway.metrics().readiness.clone();
        let mut timeouts = 0u32;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
            let answered = match tokio::time::timeout(HEARTBEAT_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => true,
                Ok(Err(_)) => false,
                Err(_) => {
                    timeouts += 1;
                    if timeouts < TIMEOUTS_BEFORE_DOWN {
                        continue;
                    }
                    false
                }
            };
            if answered {
                timeouts = 0;
            }
            if !answered {
                if health.failed() {
                    tracing::error!(
                        "cluster: the shared store does not answer; this replica is not ready and refuses data-plane requests past [store] max_staleness_ms; audit records are spilled to the local outage spool"
                    );
                }
                readiness.set(NotReady::StoreUnavailable, true);
                continue;
            }
            if health.is_down() {
                // Back: changes made meanwhile were missed; read them before
                // deciding from the snapshots again.
                for change in Change::ALL {
                    refresh(&gateway, &admin, &store, change).await;
                }
                tracing::info!("cluster: the shared store answers again; shared state re-read");
            }
            health.answered();
            readiness.set(NotReady::StoreUnavailable, false);
        }
    })
}

/// Listens for announced changes and re-reads what each names, re-reads
/// everything every [`FULL_RESYNC`] and after a reconnection, until `stop`.
/// A failed read keeps the last snapshot and is retried at the next full
/// resync (logged).
pub(crate) fn spawn_resync(
    gateway: Arc<Gateway>,
    admin: Arc<AdminCredentials>,
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
                Heard::Change(change) => refresh(&gateway, &admin, &store, change).await,
                Heard::Everything => {
                    for change in Change::ALL {
                        refresh(&gateway, &admin, &store, change).await;
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
pub(crate) async fn recv(listener: &mut Option<ChangeListener>) -> Result<Heard, String> {
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
async fn refresh(gateway: &Gateway, admin: &AdminCredentials, store: &Store, change: Change) {
    let failed = match change {
        // Admin credentials; reloading them also makes the console read its
        // cached sessions again (a session ended on another replica).
        Change::Admin => admin.reload(store).await.err().map(|e| e.to_string()),
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
        Change::Analytics => match gateway.analytics() {
            Some(analytics) => analytics.sync_shared().await.err().map(|e| e.to_string()),
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
        // Signing keys have a task of their own (`key_rotation.rs`).
        Change::Keys => None,
    };
    if let Some(error) = failed {
        tracing::warn!(change = change.as_str(), %error, "cluster: cannot re-read a change from the shared store");
    }
}

/// How often a replica renews its lease
/// ([`portcullis_gateway::audit_intent::INTENT_LEASE`] long) and takes over
/// the audit intents of replicas whose lease lapsed.
pub(crate) const TAKEOVER_INTERVAL: Duration = Duration::from_secs(1);

/// Renews this replica's lease every [`TAKEOVER_INTERVAL`], until `stop`,
/// in a task of its own and on a connection of its own
/// (`Store::renew_replica_lease`): a takeover scan waiting on a lock, or a
/// pool busy under load, must never hold up the renewal, or healthy
/// replicas are taken for dead and fenced. Publishes on the returned
/// channel whether the lease is held, which gates [`spawn_intent_takeover`].
///
/// A lease found fenced (another replica took this one for dead while it
/// was frozen or cut off, and took its intents) makes the replica not ready
/// (`replica_fenced`) until it has re-registered: it learns which calls the
/// survivor records, so that its audit writer drops their records, and
/// takes a new fencing token. Failures are logged once until they recover.
pub(crate) fn spawn_lease_renewal(
    store: Store,
    readiness: portcullis_gateway::readiness::Readiness,
    mut stop: watch::Receiver<bool>,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<bool>) {
    // Registered at start (serve), so held until a renewal says otherwise.
    let (held_tx, held) = watch::channel(true);
    let task = tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(TAKEOVER_INTERVAL) => {}
            }
            let result = match store.renew_replica_lease().await {
                Ok(Lease::Held) => Ok(true),
                Ok(Lease::Fenced) => {
                    held_tx.send_replace(false);
                    readiness.set(NotReady::ReplicaFenced, true);
                    tracing::error!(
                        replica = store.replica_id(),
                        "cluster: another replica took this one for dead (its lease lapsed) and took over its audit intents; not ready until re-registered"
                    );
                    match store.reregister_replica().await {
                        Ok(surrendered) => {
                            readiness.set(NotReady::ReplicaFenced, false);
                            tracing::warn!(
                                surrendered,
                                "cluster: re-registered; the calls another replica took over are recorded by it, not here"
                            );
                            Ok(true)
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            held_tx.send_replace(matches!(result, Ok(true)));
            match result {
                Ok(_) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cluster: cannot renew this replica's lease; retrying");
                }
                Err(_) => {}
            }
        }
    });
    (task, held)
}

/// Records the intents of dead replicas
/// (`portcullis_gateway::audit_intent::recover`) every
/// [`TAKEOVER_INTERVAL`] while `held` says this replica's own lease is held
/// ([`spawn_lease_renewal`]), until `stop`: a replica that cannot renew
/// (the store is away) or is fenced takes nothing over. A scan may wait on
/// the rows it takes (another replica's takeover, an append of the dead
/// replica in commit); only the next scan waits for it, never the lease.
/// Failures are logged once until they recover.
pub(crate) fn spawn_intent_takeover(
    store: Store,
    sink: AuditSink,
    held: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let none = std::collections::HashSet::new();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(TAKEOVER_INTERVAL) => {}
            }
            if !*held.borrow() {
                continue;
            }
            let scan = portcullis_gateway::audit_intent::recover(&store, &sink, &none);
            // A scan blocked on a lock ends when the replica stops.
            let result = tokio::select! {
                _ = stop.changed() => break,
                result = scan => result,
            };
            match result {
                Ok(_) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cluster: cannot take over a dead replica's audit intents; retrying");
                }
                Err(_) => {}
            }
        }
    })
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

/// How often a replica that is not the checkpoint signer tries to become it,
/// and the signer checks that its session (and so its lock) is alive: with
/// the time the server takes to end a dead replica's session, how long the
/// cluster may go without a signer.
pub(crate) const ELECTION_INTERVAL: Duration = Duration::from_secs(1);

/// Elects this replica the cluster's checkpoint signer (and periodic log
/// verifier) while it holds the session-level advisory lock
/// [`LeaderRole::CheckpointSigner`] on a connection of its own, until
/// `stop`. A signer whose connection fails steps down at once; the lock is
/// released by the server when the session ends, so another replica takes
/// over within about [`ELECTION_INTERVAL`] of a `kill -9`.
pub(crate) fn spawn_election(
    store: Store,
    checkpointer: Arc<Checkpointer>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    checkpointer.share();
    tokio::spawn(async move {
        let mut candidate: Option<Candidate> = None;
        let mut elected = false;
        loop {
            if candidate.is_none() {
                match tokio::time::timeout(ELECTION_INTERVAL, store.candidate()).await {
                    Ok(Ok(c)) => candidate = Some(c),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "cluster: cannot stand for checkpoint signer")
                    }
                    Err(_) => {}
                }
            }
            let leads = match &mut candidate {
                Some(c) => {
                    match tokio::time::timeout(
                        ELECTION_INTERVAL,
                        c.try_lead(LeaderRole::CheckpointSigner),
                    )
                    .await
                    {
                        Ok(Ok(leads)) => leads,
                        // The session is gone (or stuck), and any lock with
                        // it: stand again on a new one.
                        _ => {
                            candidate = None;
                            false
                        }
                    }
                }
                None => false,
            };
            if leads != elected {
                elected = leads;
                checkpointer.elect(leads);
                metrics.checkpoint_signer.set(i64::from(leads));
                if leads {
                    tracing::info!("cluster: this replica is now the checkpoint signer");
                } else {
                    tracing::warn!(
                        "cluster: lost the database session holding the checkpoint signer lock; stepped down"
                    );
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(ELECTION_INTERVAL) => {}
            }
        }
        // Held until the final checkpoint (signed after the writer stops) is
        // done: the session, and the lock with it, end when `candidate`
        // drops at the end of this task, which `serve` awaits after that.
        drop(candidate);
    })
}

/// How a refusal over key material begins, wherever it is found.
pub(crate) const KEYS_DIFFER: &str = "this replica's keys differ from the cluster's, refusing to start (docs/cluster.md, \"What each replica needs\")";

/// The key material a replica must share with the cluster, by fingerprint:
/// what each is, and what to do about a difference.
pub(crate) struct ClusterKeys {
    /// SHA-256 of the CA certificate (PEM, trimmed).
    pub ca: String,
    /// SHA-256 of the access-token signing key's public half.
    pub token: String,
    /// SHA-256 of the audit checkpoint verifier key (its public half).
    pub audit: String,
    /// The vault KEK's check value (`Kek::fingerprint`), when one is set.
    pub kek: Option<String>,
}

/// Compares this replica's key fingerprints with those the cluster recorded
/// (the first replica records them): a replica with another CA, token key,
/// audit key or KEK refuses to start, naming which and what to copy. No
/// secret is stored or logged, only fingerprints.
pub(crate) async fn check_keys(store: &Store, keys: &ClusterKeys) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let named = [
        (
            "ca_certificate",
            "CA certificate",
            "`ca.crt` and `ca.key`",
            Some(&keys.ca),
        ),
        (
            "token_key",
            "access-token signing key",
            "`token.key`",
            Some(&keys.token),
        ),
        (
            "audit_key",
            "audit checkpoint key",
            "`audit.key` and `audit.pub`",
            Some(&keys.audit),
        ),
        (
            "kek",
            "vault key-encryption key (KEK)",
            "the KEK (`PORTCULLIS_KEK_FILE` or `PORTCULLIS_KEK`)",
            keys.kek.as_ref(),
        ),
    ];
    let mut wrong = Vec::new();
    for (name, what, copy, fingerprint) in named {
        let Some(fingerprint) = fingerprint else {
            // No KEK here: refused only if the cluster runs with one.
            if store.cluster_key(name).await?.is_some() {
                wrong.push(format!(
                    "the cluster's replicas run with a {what} and this one has none; give it {copy} of the others"
                ));
            }
            continue;
        };
        if let KeyCheck::Differs { recorded, .. } =
            store.compare_cluster_key(name, fingerprint, now).await?
        {
            wrong.push(format!(
                "this replica's {what} (fingerprint {}) is not the cluster's ({}); copy {copy} from a running replica",
                short(fingerprint),
                short(&recorded)
            ));
        }
    }
    if !wrong.is_empty() {
        bail!("{KEYS_DIFFER}: {}", wrong.join("; "));
    }
    Ok(())
}

/// The first 16 hex digits of a fingerprint: enough to tell two apart.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}
