//! The intent journal: no unaudited side effect (`[audit] durability`).
//!
//! A request's one audit record is appended when its response ends, so a
//! crash (`kill -9`, power loss) after the upstream acted but before that
//! commit would leave the side effect unrecorded. On a call whose durability
//! is [`Durability::BeforeForward`], [`before_forward`] hands the audit
//! writer an *intent* (the record as decided) and waits, without blocking a
//! thread, until the writer's next group commit has made it durable in
//! `audit_intents`; only then is the upstream contacted. The request's record
//! deletes the intent in the transaction that appends it, so the log keeps
//! one record per request. At start-up [`recover`] turns intents a crash
//! left into records with `error_code` [`INTERRUPTED`]: every request an
//! upstream may have received is in the log. In cluster mode each intent
//! has an owner (the replica that journaled it), and the survivors record
//! the intents of a replica whose lease lapsed ([`INTENT_LEASE`]).
//!
//! Fail closed: an intent not durable within `[audit] fail_closed_after_ms`
//! (or dropped because the writer stopped or halted) refuses the call with
//! `audit_unavailable`. A fail-open route whose log is unwritable is served
//! without waiting, as its record (`fail_open`) says.

use std::collections::HashSet;

use portcullis_audit::{AuditRecord, Outcome};
use portcullis_control::audit_intent::Intent;
use portcullis_core::{Classification, ErrorCode};
use portcullis_store::{AuditIntentRow, Store, StoreError};
use tokio::sync::oneshot;

use crate::audit_sink::AuditSink;
use crate::config::{Durability, RouteConfig};
use crate::respond::Denial;

/// `error_code` of a record recovered from an intent: the call was allowed
/// and forwarded (or about to be), and no response was seen.
pub const INTERRUPTED: &str = "interrupted";

/// The durability a call gets: the route's (or `[audit]`'s) explicit
/// setting, else `before_forward` for a write or a confidential or
/// restricted route, `async` for a read elsewhere.
pub fn durability(route: &RouteConfig, write: bool) -> Durability {
    route.durability.unwrap_or(
        if write
            || matches!(
                route.classification,
                Classification::Confidential | Classification::Restricted
            )
        {
            Durability::BeforeForward
        } else {
            Durability::Async
        },
    )
}

/// Bytes reserved for an intent's JSON: a decided request record is
/// typically 0.5–1 KiB.
const INTENT_CAPACITY: usize = 1536;

/// Makes `record` (as decided) durable before the call is forwarded, when
/// its durability asks for it; see the module docs.
pub async fn before_forward(
    sink: &AuditSink,
    route: &RouteConfig,
    write: bool,
    record: &AuditRecord,
) -> Result<(), Denial> {
    if durability(route, write) == Durability::Async || record.fail_open {
        return Ok(());
    }
    let unavailable = || {
        Denial::new(
            ErrorCode::AuditUnavailable,
            "the audit log could not record the call before it was forwarded; it was refused rather than forwarded unrecorded",
        )
    };
    // A record is plain data: serializing it cannot fail. Written into a
    // buffer sized for a typical record (one allocation instead of the
    // doublings from serde_json's 128 bytes), then shared (`Arc<str>`).
    let mut text = Vec::with_capacity(INTENT_CAPACITY);
    serde_json::to_writer(&mut text, record).map_err(|_| unavailable())?;
    let text = String::from_utf8(text).map_err(|_| unavailable())?;
    let (durable, committed) = oneshot::channel();
    let queue = sink.intents();
    queue.push(Intent::new(
        AuditIntentRow {
            request_id: record.request_id.clone(),
            time_ms: record.time_ms,
            record: text.into(),
        },
        durable,
    ));
    match tokio::time::timeout(queue.wait_limit(), committed).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(unavailable()),
    }
}

/// Why the intents a crash left could not be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The journal could not be read.
    #[error("cannot read the audit intent journal: {0}")]
    Store(#[from] StoreError),
    /// A row is not a record: the database was altered.
    #[error("audit intent of request `{request_id}` is not an audit record: {source}")]
    Corrupt {
        /// The row's request id.
        request_id: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// How long a replica's lease outlives its last renewal (cluster mode):
/// past it, the replica counts as dead and the others take over its
/// intents. Replicas renew theirs every second.
pub const INTENT_LEASE: std::time::Duration = std::time::Duration::from_secs(5);

/// Submits a record for each intent a crash left, skipping `spooled`
/// request ids, whose records are on their way; each record deletes its
/// intent when appended. Returns how many it submitted.
///
/// One node: every open intent (call it once the spool is replayed, before
/// serving). Cluster mode: the intents of replicas whose lease lapsed
/// ([`INTENT_LEASE`]), taken over by this one (`Store::take_over_intents`);
/// every replica calls it at start and then every second, so the intents of
/// a replica killed for good are recorded by a survivor.
pub async fn recover(
    store: &Store,
    sink: &AuditSink,
    spooled: &HashSet<String>,
) -> Result<u64, RecoverError> {
    let lease_ms = i64::try_from(INTENT_LEASE.as_millis()).unwrap_or(i64::MAX);
    let rows = store.take_over_intents(lease_ms).await?;
    let mut submitted = 0;
    for row in rows {
        if spooled.contains(&row.request_id) {
            continue;
        }
        let record: AuditRecord =
            serde_json::from_str(&row.record).map_err(|source| RecoverError::Corrupt {
                request_id: row.request_id.clone(),
                source,
            })?;
        sink.submit(interrupted(record));
        submitted += 1;
    }
    if submitted > 0 {
        tracing::warn!(
            records = submitted,
            "recorded requests forwarded before a replica stopped whose response was not seen (error_code `interrupted`)"
        );
    }
    Ok(submitted)
}

/// The record of a call whose response was never seen.
fn interrupted(mut record: AuditRecord) -> AuditRecord {
    record.seq = None;
    record.outcome = Outcome::Allow;
    record.error_code = Some(INTERRUPTED.to_string());
    record.status = 0;
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(classification: Classification, durability: Option<Durability>) -> RouteConfig {
        let mut route = crate::config::Config::quickstart().routes[0].clone();
        route.classification = classification;
        route.durability = durability;
        route
    }

    #[test]
    fn writes_and_sensitive_routes_are_durable_before_forward_by_default() {
        let public = route(Classification::Public, None);
        assert_eq!(durability(&public, false), Durability::Async);
        assert_eq!(durability(&public, true), Durability::BeforeForward);
        for c in [Classification::Confidential, Classification::Restricted] {
            assert_eq!(
                durability(&route(c, None), false),
                Durability::BeforeForward
            );
        }
        let explicit = route(Classification::Restricted, Some(Durability::Async));
        assert_eq!(durability(&explicit, true), Durability::Async);
        let reads_too = route(Classification::Public, Some(Durability::BeforeForward));
        assert_eq!(durability(&reads_too, false), Durability::BeforeForward);
    }

    #[test]
    fn a_recovered_intent_says_no_response_was_seen() {
        let record = interrupted(AuditRecord {
            request_id: "r1".into(),
            seq: Some(3),
            status: 200,
            outcome: Outcome::Allow,
            ..AuditRecord::default()
        });
        assert_eq!(record.error_code.as_deref(), Some(INTERRUPTED));
        assert_eq!((record.status, record.seq), (0, None));
    }
}
