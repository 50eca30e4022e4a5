//! Readiness: why this process should not be sent traffic right now.
//!
//! Each reason is a flag its component sets and clears as its state changes
//! (the audit writer, the policy loader, the inject stage, the cluster
//! heartbeat), held in a gauge of
//! `portcullis_not_ready{reason}` so the same flag is the metric. `/readyz`
//! reads the flags only: a probe costs a few atomic loads and never touches
//! the disk or the store.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

/// Why the process is not ready. The strings are stable: probes, alerts and
/// dashboards match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// (cluster mode) The shared store (PostgreSQL) does not answer: listed
    /// first, since the audit and vault reasons it causes follow from it.
    StoreUnavailable,
    /// The tables requests and admin calls read are locked by another
    /// session (a probe's read waited past its lock timeout): admin calls
    /// and token grants that read them fail with `store_unavailable`.
    StoreStalled,
    /// The audit writer's current batch is failing, or has been stalled for
    /// longer than `[audit] fail_closed_after_ms`.
    AuditUnwritable,
    /// The audit log failed verification (tampered, bad checkpoint,
    /// unreadable): nothing is appended until an operator intervenes.
    AuditHalted,
    /// The last attempt to load policies (watched directory or SIGHUP) was
    /// refused; the previous version still decides.
    PolicyLoadFailed,
    /// A route's vault credential could not be served on its last use (and
    /// has not been since).
    VaultUnavailable,
    /// (cluster mode) Another replica took this one for dead (its lease
    /// lapsed) and fenced it off: it appends nothing until it has
    /// re-registered (`portcullis_store::Lease`).
    ReplicaFenced,
    /// (cluster mode) An online rotation sealed a signing key version this
    /// replica cannot open (another KEK, a damaged row) or read: it keeps
    /// signing with the key it has only while it is taken out of rotation.
    SigningKeysUnavailable,
}

impl NotReady {
    /// Every reason, in the order `/readyz` lists them.
    pub const ALL: [NotReady; 8] = [
        NotReady::StoreUnavailable,
        NotReady::StoreStalled,
        NotReady::AuditUnwritable,
        NotReady::AuditHalted,
        NotReady::PolicyLoadFailed,
        NotReady::VaultUnavailable,
        NotReady::ReplicaFenced,
        NotReady::SigningKeysUnavailable,
    ];

    /// The stable reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::StoreUnavailable => "store_unavailable",
            NotReady::StoreStalled => "store_stalled",
            NotReady::AuditUnwritable => "audit_unwritable",
            NotReady::AuditHalted => "audit_halted",
            NotReady::PolicyLoadFailed => "policy_load_failed",
            NotReady::VaultUnavailable => "vault_unavailable",
            NotReady::ReplicaFenced => "replica_fenced",
            NotReady::SigningKeysUnavailable => "signing_keys_unavailable",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The readiness flags, one gauge (0 or 1) per [`NotReady`] reason. Clones
/// share the flags. The default is unregistered (for tests).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    flags: [Gauge<i64, AtomicI64>; 8],
    /// The routes whose credential failed on last use; taken only while the
    /// `vault_unavailable` flag is raised or a fetch fails.
    vault_routes: Arc<Mutex<BTreeSet<String>>>,
}

impl Readiness {
    /// Readiness over registered gauges, in the order of [`NotReady::ALL`].
    pub(crate) fn new(flags: [Gauge<i64, AtomicI64>; 8]) -> Self {
        Readiness {
            flags,
            vault_routes: Arc::default(),
        }
    }

    /// Records whether `route`'s vault credential could be served just now:
    /// `vault_unavailable` stays raised while any route's last use failed.
    /// A success while the flag is down costs one atomic load.
    pub fn vault_credential(&self, route: &str, served: bool) {
        if served && !self.is_raised(NotReady::VaultUnavailable) {
            return;
        }
        let mut failing = self.vault_routes.lock().unwrap_or_else(|e| e.into_inner());
        if served {
            failing.remove(route);
        } else {
            failing.insert(route.to_string());
        }
        self.set(NotReady::VaultUnavailable, !failing.is_empty());
    }

    /// Raises or clears `reason`. Writes only on a change, so components may
    /// call it on every event without contending on the cache line.
    pub fn set(&self, reason: NotReady, raised: bool) {
        let flag = &self.flags[reason.index()];
        let value = i64::from(raised);
        if flag.get() != value {
            flag.set(value);
        }
    }

    /// Whether `reason` is raised.
    pub fn is_raised(&self, reason: NotReady) -> bool {
        self.flags[reason.index()].get() != 0
    }

    /// The raised reasons; empty when ready.
    pub fn reasons(&self) -> Vec<NotReady> {
        NotReady::ALL
            .into_iter()
            .filter(|r| self.is_raised(*r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_raised_and_cleared_independently() {
        let readiness = Readiness::default();
        assert!(readiness.reasons().is_empty());
        readiness.set(NotReady::PolicyLoadFailed, true);
        readiness.set(NotReady::AuditHalted, true);
        readiness.set(NotReady::AuditHalted, true);
        assert_eq!(
            readiness.reasons(),
            vec![NotReady::AuditHalted, NotReady::PolicyLoadFailed]
        );
        readiness.clone().set(NotReady::PolicyLoadFailed, false);
        assert_eq!(readiness.reasons(), vec![NotReady::AuditHalted]);
    }

    #[test]
    fn vault_stays_unavailable_while_any_route_last_failed() {
        let readiness = Readiness::default();
        readiness.vault_credential("a", true);
        assert!(readiness.reasons().is_empty());
        readiness.vault_credential("a", false);
        readiness.vault_credential("b", false);
        readiness.vault_credential("c", true);
        readiness.vault_credential("a", true);
        assert_eq!(readiness.reasons(), vec![NotReady::VaultUnavailable]);
        readiness.vault_credential("b", true);
        assert!(readiness.reasons().is_empty());
    }

    #[test]
    fn reason_strings_are_stable_and_distinct() {
        let names: Vec<_> = NotReady::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "store_unavailable",
                "store_stalled",
                "audit_unwritable",
                "audit_halted",
                "policy_load_failed",
                "vault_unavailable",
                "replica_fenced",
                "signing_keys_unavailable"
            ]
        );
        for (i, r) in NotReady::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
