//! Who holds the audit intents (issue 18, cluster mode): each replica's
//! lease, the takeover of a dead replica's intents by a survivor, and the
//! fence that keeps a replica taken for dead while alive from recording
//! them a second time.
//!
//! An intent (`audit_intents`, see the gateway's `audit_intent.rs`) is
//! journaled by the replica that forwards its call, under that replica's id
//! ([`Store::replica_id`], random per process). The call's own record closes
//! it. A replica killed between the two leaves it open; one node recovers
//! such intents when it starts again, but a replica in a cluster may never
//! start again (its pod is replaced, with a new id). So every replica renews
//! a lease (`cluster_replicas`, on the database's clock) about every second,
//! and every replica regularly takes over the intents whose owner holds no
//! live lease: one `UPDATE … RETURNING` moves them to itself, and it records
//! each (`error_code` `interrupted`); the record deletes the intent when it
//! is appended. Because the intent moves to the survivor before it records
//! it, a survivor killed in turn leaves them to the next one.
//!
//! **Fencing.** A replica whose lease lapsed may still be alive (frozen by
//! SIGSTOP or a paused VM, cut from the database, starved of CPU). The
//! survivor's takeover first marks the owner's row `fenced` and notes each
//! request id it takes (`cluster_surrendered`), in one transaction. Every
//! audit append of a replica reads its own row `FOR SHARE` under the append
//! lock (`audit_log.rs`) and is refused ([`StoreError::Fenced`]) when the
//! row is fenced, gone, or at another epoch than the fencing token the
//! writer filtered its batch at. The row lock orders the two: an append that
//! read the row first commits (and closes its intents) before the fence is
//! written, and one that reads it after sees the fence. The fenced replica
//! re-registers ([`Store::reregister_replica`]): it learns the request ids
//! it surrendered, which its writer then drops (the survivor records them),
//! and bumps its epoch, which becomes the new fencing token.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::backend::Pool;
use crate::{AuditIntentRow, Store, StoreError};

/// The database's clock in ms since the epoch (SQL), so that replicas'
/// clocks need not agree.
macro_rules! db_now_ms {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    };
}

/// How long a surrendered request id is remembered (ms): a replica frozen
/// longer than this and then resumed may record such a call a second time.
const SURRENDERED_KEPT_MS: i64 = 24 * 3_600_000;

/// This process's identity in the cluster and its fencing state.
#[derive(Debug)]
pub(crate) struct Replica {
    id: Box<str>,
    /// The epoch of its row when it last registered: the fencing token its
    /// appends must match. 0 until it registers (one node never does).
    epoch: AtomicI64,
    /// Request ids whose intents a survivor took over: their records are
    /// the survivor's to write.
    surrendered: Mutex<HashSet<String>>,
}

impl Default for Replica {
    fn default() -> Self {
        Replica {
            id: portcullis_core::RequestId::new().as_str().into(),
            epoch: AtomicI64::new(0),
            surrendered: Mutex::new(HashSet::new()),
        }
    }
}

/// What renewing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The lease is renewed; this replica's appends go through.
    Held,
    /// Another replica took this one for dead and fenced it (or its row is
    /// gone): it must [`Store::reregister_replica`] before appending again.
    Fenced,
}

impl Store {
    /// This process's replica id: the owner of the intents it journals.
    pub fn replica_id(&self) -> &str {
        &self.replica.id
    }

    /// The fencing token this replica's appends must carry (its epoch when
    /// it last registered); `None` before it registers and on one node.
    /// Read it before filtering a batch with [`Store::surrendered`]: a
    /// re-registration publishes the new token only after the surrendered
    /// ids are in place.
    pub fn fencing_token(&self) -> Option<i64> {
        match self.replica.epoch.load(Ordering::Acquire) {
            0 => None,
            epoch => Some(epoch),
        }
    }

    /// Whether a survivor took over the intent of `request_id` from this
    /// replica (its record is the survivor's to write).
    pub fn surrendered(&self, request_id: &str) -> bool {
        self.replica
            .surrendered
            .lock()
            .is_ok_and(|s| s.contains(request_id))
    }

    /// The other replicas whose lease was renewed in the last `lease_ms`
    /// (fenced or not), by id: running, or stopped less than a lease ago.
    /// Always none on SQLite. Operations that need the cluster stopped (a
    /// key rotation) refuse while there are any.
    pub async fn live_replicas(&self, lease_ms: i64) -> Result<Vec<String>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query_scalar(concat!(
            "SELECT id FROM cluster_replicas WHERE id <> $1 AND seen_ms > ",
            db_now_ms!(),
            " - $2 ORDER BY id"
        ))
        .bind(self.replica_id())
        .bind(lease_ms)
        .fetch_all(pool)
        .await?)
    }

    /// Takes this replica's lease for the first time (cluster mode, at
    /// start, before it appends; nothing on SQLite).
    pub async fn register_replica(&self) -> Result<(), StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(());
        };
        let epoch: i64 = sqlx::query_scalar(concat!(
            "INSERT INTO cluster_replicas (id, seen_ms, fenced, epoch) VALUES ($1, ",
            db_now_ms!(),
            ", false, 1) ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms RETURNING epoch"
        ))
        .bind(self.replica_id())
        .fetch_one(pool)
        .await?;
        self.replica.epoch.store(epoch, Ordering::Release);
        Ok(())
    }

    /// Renews this replica's lease (cluster mode; always held on SQLite,
    /// where one node owns everything). A fenced lease, or one whose row is
    /// gone, is not renewed: the replica must re-register.
    ///
    /// On a connection of its own (the store's lease pool): a main pool
    /// busy with requests, audit batches or a takeover waiting on a lock
    /// cannot delay it. Only an audit batch of this replica being written
    /// (it holds the row `FOR SHARE` until it commits) makes it wait, and
    /// only until that commit.
    pub async fn renew_replica_lease(&self) -> Result<Lease, StoreError> {
        let Pool::Postgres(main) = &self.pool else {
            return Ok(Lease::Held);
        };
        let pool = self.lease.as_ref().unwrap_or(main);
        let fenced: Option<bool> = sqlx::query_scalar(concat!(
            "UPDATE cluster_replicas SET seen_ms = ",
            db_now_ms!(),
            " WHERE id = $1 RETURNING fenced"
        ))
        .bind(self.replica_id())
        .fetch_optional(pool)
        .await?;
        Ok(match fenced {
            Some(false) => Lease::Held,
            _ => Lease::Fenced,
        })
    }

    /// Cluster mode: after this replica was fenced, learns which of its
    /// request ids a survivor took over (their records are then dropped by
    /// the audit writer), then lifts the fence and takes a new epoch, which
    /// becomes the fencing token. Returns how many request ids it
    /// surrendered in all.
    ///
    /// On the lease's own connection, as [`Store::renew_replica_lease`].
    pub async fn reregister_replica(&self) -> Result<usize, StoreError> {
        let Pool::Postgres(main) = &self.pool else {
            return Ok(0);
        };
        let pool = self.lease.as_ref().unwrap_or(main);
        let taken: Vec<String> =
            sqlx::query_scalar("SELECT request_id FROM cluster_surrendered WHERE replica = $1")
                .bind(self.replica_id())
                .fetch_all(pool)
                .await?;
        let total = {
            let mut surrendered = self
                .replica
                .surrendered
                .lock()
                .map_err(|_| StoreError::Invalid("surrendered request ids poisoned".into()))?;
            surrendered.extend(taken);
            surrendered.len()
        };
        // Published only now: a writer holding the new token has filtered
        // its batch against the ids read above. Always above the old token,
        // even when the row was purged meanwhile, so an append filtered
        // before cannot pass.
        let old = self.replica.epoch.load(Ordering::Acquire);
        let epoch: i64 = sqlx::query_scalar(concat!(
            "INSERT INTO cluster_replicas (id, seen_ms, fenced, epoch) VALUES ($1, ",
            db_now_ms!(),
            ", false, $2 + 1) ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms, fenced = false, epoch = GREATEST(cluster_replicas.epoch, $2) + 1 RETURNING epoch"
        ))
        .bind(self.replica_id())
        .bind(old)
        .fetch_one(pool)
        .await?;
        self.replica.epoch.store(epoch, Ordering::Release);
        Ok(total)
    }

    /// The intents whose record is still missing and whose owner is gone,
    /// oldest first, now held by this replica, which must record them.
    ///
    /// On PostgreSQL, an owner is gone when its lease was not renewed in
    /// the last `lease_ms` (it is fenced then, in the same transaction), it
    /// was fenced before, or it has no row (rows journaled before owners
    /// existed). On SQLite, one node: every open intent (call it at start
    /// only, before this process journals any). Leases older than an hour
    /// are deleted on the way.
    pub async fn take_over_intents(
        &self,
        lease_ms: i64,
    ) -> Result<Vec<AuditIntentRow>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return self.audit_intents().await;
        };
        let mut tx = pool.begin().await?;
        // The fence first: it waits for an append of the owner that holds
        // its row (that append then closes its intents before they are
        // read below), and any later append of the owner sees it.
        sqlx::query(concat!(
            "UPDATE cluster_replicas SET fenced = true WHERE id <> $1 AND NOT fenced AND seen_ms <= ",
            db_now_ms!(),
            " - $2"
        ))
        .bind(self.replica_id())
        .bind(lease_ms)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query_as::<_, (String, i64, String)>(concat!(
            "WITH gone AS (
                 SELECT i.request_id, i.owner FROM audit_intents i
                 WHERE i.owner <> $1 AND NOT EXISTS (
                     SELECT 1 FROM cluster_replicas r WHERE r.id = i.owner AND NOT r.fenced)
                 FOR UPDATE OF i
             ), moved AS (
                 UPDATE audit_intents i SET owner = $1 FROM gone
                 WHERE i.request_id = gone.request_id
                 RETURNING i.request_id, i.time_ms, i.record, gone.owner AS previous
             ), noted AS (
                 INSERT INTO cluster_surrendered (replica, request_id, taken_ms)
                 SELECT previous, request_id, ",
            db_now_ms!(),
            " FROM moved WHERE previous <> ''
                 ON CONFLICT DO NOTHING
             )
             SELECT request_id, time_ms, record FROM moved"
        ))
        .bind(self.replica_id())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        sqlx::query(concat!(
            "DELETE FROM cluster_replicas WHERE seen_ms < ",
            db_now_ms!(),
            " - 3600000"
        ))
        .execute(pool)
        .await?;
        sqlx::query(concat!(
            "DELETE FROM cluster_surrendered WHERE taken_ms < ",
            db_now_ms!(),
            " - $1"
        ))
        .bind(SURRENDERED_KEPT_MS)
        .execute(pool)
        .await?;
        let mut rows: Vec<AuditIntentRow> = rows
            .into_iter()
            .map(|(request_id, time_ms, record)| AuditIntentRow {
                request_id,
                time_ms,
                record: record.into(),
            })
            .collect();
        rows.sort_by_key(|r| r.time_ms);
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    fn intent(i: usize) -> AuditIntentRow {
        AuditIntentRow {
            request_id: format!("req-{i}"),
            time_ms: i as i64,
            record: "{}".into(),
        }
    }

    fn ids(rows: &[AuditIntentRow]) -> Vec<&str> {
        rows.iter().map(|r| r.request_id.as_str()).collect()
    }

    #[tokio::test]
    async fn a_survivor_takes_over_the_intents_of_a_replica_whose_lease_lapsed() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        assert_ne!(a.replica_id(), b.replica_id());
        a.register_replica().await.unwrap();
        b.register_replica().await.unwrap();
        let mut log = a.audit_appender().await.unwrap();
        log.append_batch(&mut [], &[], &[intent(1), intent(2)])
            .await
            .unwrap();
        // A is alive: B takes nothing, and A never takes its own. (A zero
        // lease here would take B for dead, and fence it.)
        assert!(b.take_over_intents(60_000).await.unwrap().is_empty());
        assert!(a.take_over_intents(60_000).await.unwrap().is_empty());
        // A's lease lapses (a zero lease: every lease is old): B takes both,
        // once; A, alive again, cannot take them back while B holds a lease.
        assert_eq!(b.renew_replica_lease().await.unwrap(), Lease::Held);
        let taken = b.take_over_intents(0).await.unwrap();
        assert_eq!(ids(&taken), ["req-1", "req-2"]);
        assert!(b.take_over_intents(0).await.unwrap().is_empty());
        assert_eq!(b.renew_replica_lease().await.unwrap(), Lease::Held);
        assert!(a.take_over_intents(60_000).await.unwrap().is_empty());
        // B dies in turn before recording them: C takes them from B.
        let c = db.open().await;
        c.register_replica().await.unwrap();
        let again = c.take_over_intents(0).await.unwrap();
        assert_eq!(ids(&again), ["req-1", "req-2"]);
        // The records close them, whoever appends.
        let mut log_c = c.audit_appender().await.unwrap();
        let mut records: Vec<_> = (1..=2)
            .map(|i| portcullis_audit::AuditRecord {
                request_id: format!("req-{i}"),
                ..Default::default()
            })
            .collect();
        log_c.append_batch(&mut records, &[], &[]).await.unwrap();
        assert!(c.audit_intents().await.unwrap().is_empty());
        for s in [a, b, c] {
            s.close().await;
        }
    }

    /// A replica taken for dead while alive (its lease lapsed, a survivor
    /// took its intents) appends nothing until it re-registers, and then
    /// knows which request ids the survivor records: none is recorded twice.
    #[tokio::test]
    async fn a_replica_fenced_by_a_takeover_refuses_to_append_until_it_re_registers() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        a.register_replica().await.unwrap();
        b.register_replica().await.unwrap();
        let token = a.fencing_token();
        assert!(token.is_some());
        let mut log = a.audit_appender().await.unwrap();
        log.fence_at(token);
        log.append_batch(&mut [], &[], &[intent(1), intent(2)])
            .await
            .unwrap();
        assert_eq!(a.renew_replica_lease().await.unwrap(), Lease::Held);
        // B takes A for dead (a zero lease) and takes its intents.
        let taken = b.take_over_intents(0).await.unwrap();
        assert_eq!(ids(&taken), ["req-1", "req-2"]);
        // A resumes: its append of the surrendered call is refused, and so
        // is any other, and its lease is not renewed.
        let record = |i: usize| portcullis_audit::AuditRecord {
            request_id: format!("req-{i}"),
            ..Default::default()
        };
        let refused = log.append_batch(&mut [record(1)], &[], &[]).await;
        assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
        assert_eq!(a.renew_replica_lease().await.unwrap(), Lease::Fenced);
        assert!(!a.surrendered("req-1"));
        // Re-registered, it knows what it surrendered and holds a new token;
        // the old one is refused still.
        assert_eq!(a.reregister_replica().await.unwrap(), 2);
        assert!(a.surrendered("req-1") && a.surrendered("req-2") && !a.surrendered("req-3"));
        let new_token = a.fencing_token();
        assert!(new_token > token, "{new_token:?} after {token:?}");
        let stale = log.append_batch(&mut [record(3)], &[], &[]).await;
        assert!(matches!(stale, Err(StoreError::Fenced)), "{stale:?}");
        log.fence_at(new_token);
        log.append_batch(&mut [record(3)], &[], &[]).await.unwrap();
        assert_eq!(a.renew_replica_lease().await.unwrap(), Lease::Held);
        // B records what it took; nothing is left open.
        let mut log_b = b.audit_appender().await.unwrap();
        log_b
            .append_batch(&mut [record(1), record(2)], &[], &[])
            .await
            .unwrap();
        assert!(b.audit_intents().await.unwrap().is_empty());
        assert_eq!(a.audit_size().await.unwrap(), 3);
        for s in [a, b] {
            s.close().await;
        }
    }

    #[tokio::test]
    async fn one_node_recovers_every_intent() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        let mut log = store.audit_appender().await.unwrap();
        log.append_batch(&mut [], &[], &[intent(1)]).await.unwrap();
        assert_eq!(store.renew_replica_lease().await.unwrap(), Lease::Held);
        assert_eq!(
            ids(&store.take_over_intents(60_000).await.unwrap()),
            ["req-1"]
        );
    }
}
