//! State replicas share in cluster mode (PostgreSQL only, issue 18) that one
//! node keeps in memory: single-use identifiers (`jti`s). Its tables come
//! from the cluster migrations (`migrations/postgres/cluster/`), numbered
//! apart from the SQLite/PostgreSQL twins. Also the change channel: a
//! replica that commits an admin change announces its kind with `NOTIFY`,
//! and every replica `LISTEN`s and re-reads that part of its snapshot.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::backend::{DbRow, Pool};
use crate::{Store, StoreError};

/// The history table of the cluster migrations.
pub(crate) const CLUSTER_MIGRATIONS_TABLE: &str = "_portcullis_cluster_migrations";

/// The cluster-only migrations, applied after the numbered ones.
pub(crate) fn cluster_migrator() -> Migrator {
    let mut migrator = Migrator::with_migrations(vec![
        Migration::new(
            1,
            Cow::Borrowed("single_use"),
            MigrationType::Simple,
            include_str!("../migrations/postgres/cluster/0001_single_use.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            18,
            Cow::Borrowed("shared_limits"),
            MigrationType::Simple,
            include_str!("../migrations/postgres/cluster/0018_shared_limits.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            27,
            Cow::Borrowed("replicas"),
            MigrationType::Simple,
            include_str!("../migrations/postgres/cluster/0027_replicas.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            28,
            Cow::Borrowed("fencing"),
            MigrationType::Simple,
            include_str!("../migrations/postgres/cluster/0028_fencing.sql").into_sql_str(),
            false,
        ),
    ]);
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

/// The PostgreSQL channel admin changes are announced on.
pub const CHANGES_CHANNEL: &str = "portcullis_changes";

/// What an admin change touched, as announced to the other replicas: each
/// names the part of a replica's in-memory state to re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Agents, certificates, keys, workload pins or grants (the snapshot).
    Agents,
    /// Revoked tokens or disabled users.
    Revocations,
    /// The active policy version or the shadow candidate.
    Policy,
    /// An approval ticket was decided.
    Approvals,
    /// An agent was quarantined by analytics, or released.
    Quarantine,
    /// An MCP tool definition was approved (its pin).
    Tools,
    /// A vault secret was stored, rotated, reconfigured or deleted.
    Secrets,
    /// An admin credential (token or certificate) was created, rotated or
    /// revoked, or a console session ended.
    Admin,
    /// A behavioral baseline was merged into the shared model, or an
    /// alert was judged benign (every replica applies the verdict).
    Analytics,
    /// A signing key (access-token or audit) was rotated online: a new
    /// version is sealed, announced now and active from its `sealed_at`.
    Keys,
}

impl Change {
    /// The notification's payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Agents => "agents",
            Change::Revocations => "revocations",
            Change::Policy => "policy",
            Change::Approvals => "approvals",
            Change::Quarantine => "quarantine",
            Change::Tools => "tools",
            Change::Secrets => "secrets",
            Change::Admin => "admin",
            Change::Analytics => "analytics",
            Change::Keys => "keys",
        }
    }

    /// Every kind, for a full resync.
    pub const ALL: [Change; 10] = [
        Change::Agents,
        Change::Revocations,
        Change::Policy,
        Change::Approvals,
        Change::Quarantine,
        Change::Tools,
        Change::Secrets,
        Change::Admin,
        Change::Analytics,
        Change::Keys,
    ];

    /// The change a payload names; `None` for one this build does not know
    /// (a newer replica's), which the listener treats as "re-read all".
    pub fn parse(payload: &str) -> Option<Change> {
        Change::ALL.into_iter().find(|c| c.as_str() == payload)
    }
}

/// What a replica heard on the change channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// One change, by kind.
    Change(Change),
    /// Something that may have missed notifications happened (the
    /// connection was lost and is re-established on the next call, or a
    /// payload this build does not know): re-read everything.
    Everything,
}

/// A replica's subscription to [`CHANGES_CHANNEL`] (its own connection).
pub struct ChangeListener(sqlx::postgres::PgListener);

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeListener")
    }
}

impl ChangeListener {
    /// Waits for the next notification. After a lost connection it answers
    /// [`Heard::Everything`] once and reconnects (and re-subscribes) on the
    /// next call; an error means the reconnection failed.
    pub async fn recv(&mut self) -> Result<Heard, StoreError> {
        Ok(match self.0.try_recv().await? {
            Some(n) => Change::parse(n.payload()).map_or(Heard::Everything, Heard::Change),
            None => Heard::Everything,
        })
    }
}

impl Store {
    /// Announces a committed change to every replica listening (cluster
    /// mode); nothing on SQLite. Sent after the change's commit, so a
    /// notification never arrives before its data: a replica reading on
    /// it sees the change.
    pub async fn notify_change(&self, change: Change) -> Result<(), StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(());
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(change.as_str())
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Subscribes to the change channel on a connection of its own
    /// (cluster mode only).
    pub async fn listen_changes(&self) -> Result<ChangeListener, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Err(cluster_only());
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(ChangeListener(listener))
    }
}

/// The outcome of [`Store::compare_cluster_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The cluster had no fingerprint under this name: this one is recorded.
    Recorded,
    /// The recorded fingerprint is this one.
    Same,
    /// Another fingerprint was recorded (when, ms since the epoch).
    Differs {
        /// The fingerprint the cluster holds.
        recorded: String,
        /// When it was recorded.
        recorded_at: i64,
    },
}

impl Store {
    /// Compares `fingerprint` (of key material, never the secret itself)
    /// with the one the cluster recorded under `name`, recording it when
    /// none is. One insert that keeps an existing row, then a read: two
    /// replicas starting at once agree on the first to insert.
    pub async fn compare_cluster_key(
        &self,
        name: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<KeyCheck, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let inserted = query(
                "INSERT INTO key_fingerprints (name, fingerprint, recorded_at) VALUES (?, ?, ?)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(fingerprint)
            .bind(now_ms)
            .execute(pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(KeyCheck::Recorded);
            }
            let row = query("SELECT fingerprint, recorded_at FROM key_fingerprints WHERE name = ?")
                .bind(name)
                .fetch_one(pool)
                .await?;
            let recorded: String = row.col("fingerprint")?;
            Ok(if recorded == fingerprint {
                KeyCheck::Same
            } else {
                KeyCheck::Differs {
                    recorded,
                    recorded_at: row.col("recorded_at")?,
                }
            })
        })
    }

    /// Records `fingerprint` under `name` in place of the one recorded: a
    /// rotation of that key (`portcullis vault rotate-key`), made while no
    /// replica runs.
    pub async fn replace_cluster_key(
        &self,
        name: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "INSERT INTO key_fingerprints (name, fingerprint, recorded_at) VALUES (?, ?, ?)
                 ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint, recorded_at = excluded.recorded_at",
            )
            .bind(name)
            .bind(fingerprint)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Whether the cluster recorded a fingerprint under `name`.
    pub async fn cluster_key(&self, name: &str) -> Result<Option<String>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            Ok(
                query_scalar("SELECT fingerprint FROM key_fingerprints WHERE name = ?")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?,
            )
        })
    }

    /// A connection of its own, taken out of the pool, on which this
    /// replica stands for election ([`Candidate::try_lead`]).
    pub async fn candidate(&self) -> Result<Candidate, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Err(cluster_only());
        };
        Ok(Candidate {
            conn: pool.acquire().await?.detach(),
            held: Vec::new(),
        })
    }
}

/// What a replica may be elected to do for the whole cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderRole {
    /// Sign audit checkpoints and run the periodic full verification of the
    /// log.
    CheckpointSigner,
}

impl LeaderRole {
    /// The advisory lock key ("PCCK").
    fn key(self) -> i64 {
        match self {
            LeaderRole::CheckpointSigner => 0x5043_434B,
        }
    }
}

/// A replica's connection for elections: the session that holds the
/// session-level advisory locks it wins. A lock lasts as long as this
/// session: the server releases it when the session ends, `kill -9` of the
/// replica included (its socket closes).
pub struct Candidate {
    conn: sqlx::PgConnection,
    /// The roles whose lock this session holds.
    held: Vec<LeaderRole>,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Candidate")
    }
}

impl Candidate {
    /// Whether this session holds `role`'s lock now: taken if free; if
    /// already held, the session is checked alive (one round trip either
    /// way). `false` when another replica holds it. An error means the
    /// session is gone, and any lock with it: drop this and stand again.
    pub async fn try_lead(&mut self, role: LeaderRole) -> Result<bool, StoreError> {
        if self.held.contains(&role) {
            sqlx::Connection::ping(&mut self.conn).await?;
            return Ok(true);
        }
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(role.key())
            .fetch_one(&mut self.conn)
            .await?;
        if won {
            self.held.push(role);
        }
        Ok(won)
    }
}

pub(crate) fn cluster_only() -> StoreError {
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
    async fn a_change_notified_by_one_replica_is_heard_by_another() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        let mut heard = b.listen_changes().await.unwrap();
        for change in [Change::Agents, Change::Policy] {
            a.notify_change(change).await.unwrap();
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), heard.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, Heard::Change(change));
        }
        // One node has no channel: announcing is a no-op, listening refused.
        let one = TestDb::sqlite();
        let one = one.open().await;
        one.notify_change(Change::Agents).await.unwrap();
        assert!(one.listen_changes().await.is_err());
    }

    #[tokio::test]
    async fn the_first_key_fingerprint_is_recorded_and_later_ones_compared() {
        for db in TestDb::all().await {
            let (a, b) = (db.open().await, db.open().await);
            assert_eq!(a.cluster_key("ca").await.unwrap(), None);
            assert_eq!(
                a.compare_cluster_key("ca", "f1", 10).await.unwrap(),
                KeyCheck::Recorded
            );
            assert_eq!(
                b.compare_cluster_key("ca", "f1", 20).await.unwrap(),
                KeyCheck::Same
            );
            assert_eq!(
                b.compare_cluster_key("ca", "f2", 30).await.unwrap(),
                KeyCheck::Differs {
                    recorded: "f1".into(),
                    recorded_at: 10
                },
                "{}",
                db.backend()
            );
            assert_eq!(a.cluster_key("ca").await.unwrap().as_deref(), Some("f1"));
        }
    }

    #[tokio::test]
    async fn one_candidate_leads_and_another_takes_over_when_its_session_ends() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        let role = LeaderRole::CheckpointSigner;
        let mut first = a.candidate().await.unwrap();
        let mut second = b.candidate().await.unwrap();
        assert!(first.try_lead(role).await.unwrap());
        assert!(first.try_lead(role).await.unwrap(), "still held");
        assert!(!second.try_lead(role).await.unwrap());
        drop(first); // the session ends, as when its replica is killed
        let mut took_over = false;
        // Bounded at 10 s: the server notices the closed session, on a
        // loaded machine.
        for _ in 0..500 {
            if second.try_lead(role).await.unwrap() {
                took_over = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(took_over, "the lock outlived its session");
        // One node has nothing to elect.
        let one = TestDb::sqlite();
        assert!(one.open().await.candidate().await.is_err());
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
