//! Online rotation of the signing keys in cluster mode (issue 18): the
//! access-token key and the audit checkpoint key change while every replica
//! serves, and no replica refuses what another just signed.
//!
//! `portcullis vault rotate-key` seals version N+1 beside the others
//! (`cluster_keys::rotate`) with `sealed_at` = now + [`WINDOW`], the moment
//! it begins to sign, and announces it (`NOTIFY`, `keys`). Two phases:
//!
//! 1. **announced** (until `sealed_at`): every replica opens it with the KEK
//!    and *verifies* with it (tokens naming its `kid`, checkpoints it
//!    signed) and publishes it in the JWKS, while version N still signs;
//! 2. **active** (from `sealed_at`): each replica signs with it, by its own
//!    clock, and version N only verifies what it signed before then (plus
//!    [`CLOCK_GRACE_S`] for replicas' clocks).
//!
//! A replica learns of a version on the notification (milliseconds) or, if
//! that was lost, at its next re-read every [`FULL_RESYNC`]; [`WINDOW`] is
//! three of those, so a live replica that can read the database has verified
//! the new key before any replica signs with it. A replica that cannot open
//! a sealed version (another KEK, a damaged row) or read them raises the
//! readiness reason `signing_keys_unavailable` and is taken out of the load
//! balancer rather than going on as if nothing had been rotated; a replica
//! that cannot reach the database at all is already not ready
//! (`store_unavailable`). This task never holds a lock across IO: it swaps
//! the new key set in whole ([`portcullis_identity::TokenIssuer::install`],
//! [`Checkpointer::replace_signer`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use portcullis_audit::note::VerifierKey;
use portcullis_gateway::Gateway;
use portcullis_gateway::checkpointer::{Checkpointer, LogSigner};
use portcullis_gateway::readiness::NotReady;
use portcullis_identity::{Ed25519Key, TokenIssuer};
use portcullis_store::{Change, ChangeListener, Heard, Store};
use portcullis_vault::Kek;
use tokio::sync::watch;

use crate::cluster::FULL_RESYNC;
use crate::cluster_keys::{KeyVersions, RotatedKey, sealed_versions};
use crate::state_dir::{StateDir, write_public};

/// How long after an online rotation the new version begins to sign: three
/// full re-reads ([`FULL_RESYNC`]), so that a replica that missed the
/// notification has still loaded it, twice over, before anyone signs.
pub(crate) const WINDOW: Duration = Duration::from_secs(3 * FULL_RESYNC.as_secs());

/// Seconds a retired access-token key still verifies tokens issued after
/// its retirement: replicas activate the new key by their own clocks, and a
/// token signed by one a little behind must not be refused by another.
pub(crate) const CLOCK_GRACE_S: i64 = 5;

/// How soon a replica that could not open or read the sealed versions tries
/// again (it is not ready meanwhile).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a replica's signing keys live in, to swap them while it serves.
pub(crate) struct KeyRotation {
    /// The shared store holding the sealed versions.
    pub store: Store,
    /// The KEK they are sealed under.
    pub kek: Kek,
    /// The data plane: its token issuer signs and verifies access tokens.
    pub gateway: Arc<Gateway>,
    /// The checkpoint signer.
    pub checkpointer: Arc<Checkpointer>,
    /// The state directory, for `audit.pub` and `audit-retired.pub`.
    pub state: StateDir,
    /// The audit log's origin (the verifier keys' name).
    pub origin: String,
}

/// Re-reads the sealed signing keys at start, on every `keys` notification,
/// every [`FULL_RESYNC`] and at the moment an announced version activates,
/// until `stop` (see the module docs).
pub(crate) fn spawn(
    rotation: KeyRotation,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let readiness = rotation.gateway.metrics().readiness.clone();
        let mut listener: Option<ChangeListener> = None;
        let mut next = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            if listener.is_none() {
                match rotation.store.listen_changes().await {
                    Ok(l) => {
                        listener = Some(l);
                        next = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: cannot listen for key rotations; relying on the periodic re-read");
                    }
                }
            }
            let due = tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep_until(next) => true,
                heard = crate::cluster::recv(&mut listener) => match heard {
                    Ok(Heard::Change(Change::Keys) | Heard::Everything) => true,
                    Ok(Heard::Change(_)) => false,
                    Err(_) => {
                        listener = None;
                        false
                    }
                },
            };
            if !due {
                continue;
            }
            match rotation.refresh().await {
                Ok(activates_at) => {
                    if failing {
                        tracing::info!("cluster: the sealed signing keys open again");
                    }
                    failing = false;
                    readiness.set(NotReady::SigningKeysUnavailable, false);
                    next = tokio::time::Instant::now() + FULL_RESYNC;
                    if let Some(at) = activates_at {
                        let wait =
                            Duration::from_millis(u64::try_from(at * 1000 - now_ms()).unwrap_or(0));
                        next = next.min(tokio::time::Instant::now() + wait);
                    }
                }
                Err(e) => {
                    readiness.set(NotReady::SigningKeysUnavailable, true);
                    if !failing {
                        tracing::error!(error = %format!("{e:#}"), "cluster: cannot load the sealed signing keys; this replica is not ready (signing_keys_unavailable) until it can");
                    }
                    failing = true;
                    next = tokio::time::Instant::now() + RETRY_AFTER;
                }
            }
        }
    })
}

impl KeyRotation {
    /// Opens every sealed version of both keys and installs them: which
    /// signs, which verify. Returns when the next announced version
    /// activates (epoch seconds), if one is announced.
    async fn refresh(&self) -> Result<Option<i64>> {
        let now = now_ms() / 1000;
        let token = sealed_versions(&self.store, &self.kek, RotatedKey::TokenKey, now).await?;
        let audit = sealed_versions(&self.store, &self.kek, RotatedKey::AuditKey, now).await?;
        if let Some(versions) = &token {
            self.install_token_keys(versions, now)?;
        }
        if let Some(versions) = &audit {
            self.install_audit_keys(versions).await?;
        }
        Ok([token, audit]
            .iter()
            .flatten()
            .filter_map(KeyVersions::activates_at)
            .min())
    }

    fn install_token_keys(&self, versions: &KeyVersions, now: i64) -> Result<()> {
        let issuer = &self.gateway.tokens().issuer;
        let before = (issuer.kid(), issuer.next_kid());
        let previous: Vec<(Ed25519Key, i64)> = versions
            .previous
            .iter()
            .map(|(seed, retired_at)| (seed, retired_at + CLOCK_GRACE_S))
            .filter(|(_, retired_at)| TokenIssuer::previous_key_verifies(*retired_at, now))
            .map(|(seed, retired_at)| (Ed25519Key::from_seed(seed), retired_at))
            .collect();
        let next = versions
            .next
            .map(|(_, seed, _)| Ed25519Key::from_seed(&seed));
        issuer
            .install(
                Ed25519Key::from_seed(&versions.current.1),
                &previous,
                next.as_ref(),
            )
            .context("cannot load a sealed access-token key")?;
        let after = (issuer.kid(), issuer.next_kid());
        if before != after {
            tracing::info!(
                version = versions.current.0,
                kid = %after.0,
                next_kid = after.1.as_deref().unwrap_or("-"),
                "cluster: access-token keys changed (online rotation)"
            );
        }
        Ok(())
    }

    async fn install_audit_keys(&self, versions: &KeyVersions) -> Result<()> {
        let verifier = |seed: &[u8; 32]| {
            VerifierKey::new(
                &self.origin,
                ed25519_dalek::SigningKey::from_bytes(seed).verifying_key(),
            )
            .map_err(|e| anyhow::anyhow!("a sealed audit key: {e}"))
        };
        // Trusted first: the announced key verifies before anyone signs
        // with it, the retired ones what they signed.
        let mut trusted = versions
            .previous
            .iter()
            .map(|(seed, _)| verifier(seed))
            .collect::<Result<Vec<_>>>()?;
        if let Some((_, seed, _)) = &versions.next {
            trusted.push(verifier(seed)?);
        }
        self.store.trust_retired_audit_keys(trusted.clone());
        let signer = LogSigner::new(
            ed25519_dalek::SigningKey::from_bytes(&versions.current.1),
            &self.origin,
        )?;
        if self.checkpointer.signer().verifier() != signer.verifier() {
            tracing::info!(
                version = versions.current.0,
                verifier = %signer.verifier(),
                "cluster: the audit checkpoint key changed (online rotation); the next checkpoint is signed with it"
            );
            write_public(
                &self.state.audit_verifier_key(),
                format!("{}\n", signer.verifier()).as_bytes(),
            )?;
            self.checkpointer.replace_signer(signer).await;
        }
        // `audit verify` on this host reads the others here.
        let lines: String = trusted.iter().map(|k| format!("{k}\n")).collect();
        let path = self.state.audit_retired_verifier_keys();
        if std::fs::read_to_string(&path).unwrap_or_default() != lines {
            if lines.is_empty() {
                let _ = std::fs::remove_file(&path);
            } else {
                write_public(&path, lines.as_bytes())?;
            }
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}
