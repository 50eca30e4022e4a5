//! State replicas share in cluster mode (PostgreSQL only, issue 18) that one
//! node keeps in memory: single-use identifiers (`jti`s). Its tables come
//! from the cluster migrations (`migrations/postgres/cluster/`), numbered
//! apart from the SQLite/PostgreSQL twins.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::backend::Pool;
use crate::{Store, StoreError};

/// The history table of the cluster migrations.
const CLUSTER_MIGRATIONS_TABLE: &str = "_portcullis_cluster_migrations";

/// The cluster-only migrations, applied after the numbered ones.
pub(crate) fn cluster_migrator() -> Migrator {
    let mut migrator = Migrator::with_migrations(vec![Migration::new(
        1,
        Cow::Borrowed("single_use"),
        MigrationType::Simple,
        include_str!("../migrations/postgres/cluster/0001_single_use.sql").into_sql_str(),
        false,
    )]);
    migrator.dangerous_set_table_name(CLUSTER_MIGRATIONS_TABLE);
    migrator
}

/// Which single-use identifiers a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleUseKind {
    /// A client assertion's `jti` (token endpoint).
    Assertion,
    /// A DPoP proof's `jti`.
    DpopProof,
}

impl SingleUseKind {
    fn as_str(self) -> &'static str {
        match self {
            SingleUseKind::Assertion => "assertion",
            SingleUseKind::DpopProof => "dpop",
        }
    }
}

impl Store {
    /// Claims a single-use `key` until `expires_at` (epoch seconds) for every
    /// replica: `true` when this call is its first live use, `false` when
    /// it was used before and has not expired. One statement, so two
    /// replicas claiming at once cannot both win (the primary key decides).
    /// Only in cluster mode; one node keeps these in memory.
    ///
    /// Committed without waiting for the WAL flush (`synchronous_commit =
    /// off`): a request waits on one round trip, not on a disk. A database
    /// crash can forget the claims of its last few hundred milliseconds,
    /// which reopens their replay window; one node forgets all of them at
    /// every restart, so this is no weaker than one node.
    pub async fn claim_single_use(
        &self,
        kind: SingleUseKind,
        key: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let Some(pool) = &self.relaxed else {
            return Err(cluster_only());
        };
        let claimed = sqlx::query(
            "INSERT INTO cluster_single_use (kind, key, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (kind, key) DO UPDATE SET expires_at = excluded.expires_at
             WHERE cluster_single_use.expires_at < $4",
        )
        .bind(kind.as_str())
        .bind(key)
        .bind(expires_at)
        .bind(now)
        .execute(pool)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Deletes single-use keys expired before `now`; returns how many.
    pub async fn purge_single_use(&self, now: i64) -> Result<u64, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Err(cluster_only());
        };
        let done = sqlx::query("DELETE FROM cluster_single_use WHERE expires_at < $1")
            .bind(now)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }
}

fn cluster_only() -> StoreError {
    StoreError::Invalid("shared single-use state exists only in cluster mode (PostgreSQL)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    #[tokio::test]
    async fn a_key_claimed_on_one_replica_is_refused_on_another_until_it_expires() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        let kind = SingleUseKind::DpopProof;
        assert!(a.claim_single_use(kind, "k1", 100, 10).await.unwrap());
        assert!(!b.claim_single_use(kind, "k1", 100, 20).await.unwrap());
        assert!(!a.claim_single_use(kind, "k1", 100, 100).await.unwrap());
        // Another kind is another namespace.
        assert!(
            b.claim_single_use(SingleUseKind::Assertion, "k1", 100, 20)
                .await
                .unwrap()
        );
        // Past its expiry the key is dead; reusing it is harmless.
        assert!(b.claim_single_use(kind, "k1", 300, 101).await.unwrap());
        // Many replicas racing for one key: exactly one wins.
        let racers: Vec<_> = (0..16)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(
                    async move { store.claim_single_use(kind, "raced", 500, 1).await.unwrap() },
                )
            })
            .collect();
        let mut won = 0;
        for r in racers {
            won += usize::from(r.await.unwrap());
        }
        assert_eq!(won, 1);
        assert_eq!(a.purge_single_use(400).await.unwrap(), 2);

        // What a DPoP request pays for the claim (reported, not asserted:
        // it is the database's round trip and commit).
        let mut took: Vec<_> = Vec::with_capacity(500);
        for i in 0..500 {
            let t = std::time::Instant::now();
            assert!(
                a.claim_single_use(kind, &format!("p{i}"), 900, 1)
                    .await
                    .unwrap()
            );
            took.push(t.elapsed());
        }
        took.sort();
        eprintln!(
            "claim_single_use on 127.0.0.1: p50 {:?}, p99 {:?}",
            took[took.len() / 2],
            took[took.len() * 99 / 100]
        );
    }

    #[tokio::test]
    async fn one_node_has_no_shared_single_use_state() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        assert!(matches!(
            store
                .claim_single_use(SingleUseKind::DpopProof, "k", 1, 0)
                .await,
            Err(StoreError::Invalid(_))
        ));
    }
}
