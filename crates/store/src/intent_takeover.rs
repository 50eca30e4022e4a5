//! Who holds the audit intents (issue 18, cluster mode): each replica's
//! lease, and the takeover of a dead replica's intents by a survivor.
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

use crate::backend::Pool;
use crate::{AuditIntentRow, Store, StoreError};

/// The database's clock in ms since the epoch (SQL), so that replicas'
/// clocks need not agree.
macro_rules! db_now_ms {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    };
}

impl Store {
    /// This process's replica id: the owner of the intents it journals.
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// Renews this replica's lease (cluster mode; nothing on SQLite, where
    /// one node owns everything).
    pub async fn renew_replica_lease(&self) -> Result<(), StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(());
        };
        sqlx::query(concat!(
            "INSERT INTO cluster_replicas (id, seen_ms) VALUES ($1, ",
            db_now_ms!(),
            ") ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms"
        ))
        .bind(self.replica_id())
        .execute(pool)
        .await?;
        Ok(())
    }

    /// The intents whose record is still missing and whose owner is gone,
    /// oldest first, now held by this replica, which must record them.
    ///
    /// On PostgreSQL, an owner is gone when its lease was not renewed in
    /// the last `lease_ms` (or it has none: rows journaled before owners
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
        let rows = sqlx::query_as::<_, (String, i64, String)>(concat!(
            "UPDATE audit_intents SET owner = $1
             WHERE owner <> $1 AND NOT EXISTS (
                 SELECT 1 FROM cluster_replicas r
                 WHERE r.id = audit_intents.owner AND r.seen_ms > ",
            db_now_ms!(),
            " - $2) RETURNING request_id, time_ms, record"
        ))
        .bind(self.replica_id())
        .bind(lease_ms)
        .fetch_all(pool)
        .await?;
        sqlx::query(concat!(
            "DELETE FROM cluster_replicas WHERE seen_ms < ",
            db_now_ms!(),
            " - 3600000"
        ))
        .execute(pool)
        .await?;
        let mut rows: Vec<AuditIntentRow> = rows
            .into_iter()
            .map(|(request_id, time_ms, record)| AuditIntentRow {
                request_id,
                time_ms,
                record,
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
        a.renew_replica_lease().await.unwrap();
        b.renew_replica_lease().await.unwrap();
        let mut log = a.audit_appender().await.unwrap();
        log.append_batch(&mut [], &[], &[intent(1), intent(2)])
            .await
            .unwrap();
        // A is alive: B takes nothing, and A never takes its own.
        assert!(b.take_over_intents(60_000).await.unwrap().is_empty());
        assert!(a.take_over_intents(0).await.unwrap().is_empty());
        // A's lease lapses (a zero lease: every lease is old): B takes both,
        // once; A, alive again, cannot take them back while B holds a lease.
        b.renew_replica_lease().await.unwrap();
        let taken = b.take_over_intents(0).await.unwrap();
        assert_eq!(ids(&taken), ["req-1", "req-2"]);
        assert!(b.take_over_intents(0).await.unwrap().is_empty());
        b.renew_replica_lease().await.unwrap();
        assert!(a.take_over_intents(60_000).await.unwrap().is_empty());
        // B dies in turn before recording them: C takes them from B.
        let c = db.open().await;
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

    #[tokio::test]
    async fn one_node_recovers_every_intent() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        let mut log = store.audit_appender().await.unwrap();
        log.append_batch(&mut [], &[], &[intent(1)]).await.unwrap();
        store.renew_replica_lease().await.unwrap();
        assert_eq!(
            ids(&store.take_over_intents(60_000).await.unwrap()),
            ["req-1"]
        );
    }
}
