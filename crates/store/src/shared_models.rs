//! Behavioral baselines shared by every replica (cluster mode, PostgreSQL
//! only, issue 18): the rows of `analytics_models` and
//! `analytics_population` become one model per agent that all replicas
//! merge into. A replica never overwrites a row with its own copy: under the
//! cluster write lock it reads the row, folds in what it learned since its
//! last merge (a function it passes, over the analytics crate's JSON, which
//! the store does not interpret) and writes the result, stamped with the
//! database's clock. Every replica then reads the rows changed since it last
//! looked. One node keeps saving its own copy (`analytics.rs`).

use crate::backend::Pool;
use crate::backend::postgres::begin_write;
use crate::cluster::cluster_only;
use crate::{Store, StoreError};

/// The database's clock in ms since the epoch, so replicas' clocks need not
/// agree on what "changed since" means.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// A shared model row as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedModel {
    /// The agent (empty for the population's sample).
    pub agent: String,
    /// The analytics crate's JSON.
    pub state: String,
    /// When it was last merged, on the database's clock (ms).
    pub updated_ms: i64,
}

impl Store {
    /// Merges into the shared model of each of `agents`: `merge(agent,
    /// shared)` gets the stored JSON (if any) and returns what to store (or
    /// `None` to leave the row as it is). One transaction under the cluster
    /// write lock, so two replicas' merges never lose each other's part.
    /// Returns the stamp the rows were written with.
    pub async fn merge_models<F>(&self, agents: &[String], mut merge: F) -> Result<i64, StoreError>
    where
        F: FnMut(&str, Option<&str>) -> Option<String> + Send,
    {
        let Pool::Postgres(pool) = &self.pool else {
            return Err(cluster_only());
        };
        let mut tx = begin_write(pool).await?;
        let stamp: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {DB_NOW_MS}")))
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT agent, state FROM analytics_models WHERE agent = ANY($1)")
                .bind(agents)
                .fetch_all(&mut *tx)
                .await?;
        let stored: std::collections::HashMap<String, String> = rows.into_iter().collect();
        for agent in agents {
            let Some(state) = merge(agent, stored.get(agent).map(String::as_str)) else {
                continue;
            };
            sqlx::query(
                "INSERT INTO analytics_models (agent, state, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (agent) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            )
            .bind(agent)
            .bind(state)
            .bind(stamp)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(stamp)
    }

    /// [`Store::merge_models`] for the population's sample.
    pub async fn merge_population<F>(&self, merge: F) -> Result<i64, StoreError>
    where
        F: FnOnce(Option<&str>) -> Option<String> + Send,
    {
        let Pool::Postgres(pool) = &self.pool else {
            return Err(cluster_only());
        };
        let mut tx = begin_write(pool).await?;
        let stamp: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {DB_NOW_MS}")))
            .fetch_one(&mut *tx)
            .await?;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT sample FROM analytics_population WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(sample) = merge(stored.as_deref()) {
            sqlx::query(
                "INSERT INTO analytics_population (id, sample, updated_at) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET sample = excluded.sample, updated_at = excluded.updated_at",
            )
            .bind(sample)
            .bind(stamp)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(stamp)
    }

    /// The shared models merged at or after `since_ms` (the database's
    /// clock), agents first, then the population's sample (agent `""`).
    pub async fn shared_models_since(&self, since_ms: i64) -> Result<Vec<SharedModel>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Err(cluster_only());
        };
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT agent, state, updated_at FROM analytics_models WHERE updated_at >= $1
             UNION ALL
             SELECT '', sample, updated_at FROM analytics_population WHERE updated_at >= $1",
        )
        .bind(since_ms)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(agent, state, updated_ms)| SharedModel {
                agent,
                state,
                updated_ms,
            })
            .collect())
    }

    /// Alerts resolved `benign` at or after `since_ms` (the resolving
    /// replica's clock): (id, agent, resolved at), oldest first. Every
    /// replica applies such a verdict to its own view of the agent.
    pub async fn benign_verdicts_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Err(cluster_only());
        };
        Ok(sqlx::query_as(
            "SELECT id, agent, resolved_at FROM alerts WHERE verdict = 'benign' AND resolved_at >= $1
             ORDER BY resolved_at, id",
        )
        .bind(since_ms)
        .fetch_all(pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::TestDb;

    /// Two replicas merge into one row: neither loses the other's part, and
    /// each reads the other's merge back.
    #[tokio::test]
    async fn replicas_merge_into_one_model_and_read_each_others_merges() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        let bot = vec!["bot".to_string()];
        let append = |part: &'static str| {
            move |_: &str, stored: Option<&str>| Some(format!("{}{part}", stored.unwrap_or("")))
        };
        let first = a.merge_models(&bot, append("a")).await.unwrap();
        b.merge_models(&bot, append("b")).await.unwrap();
        a.merge_population(|s| Some(format!("{}p", s.unwrap_or(""))))
            .await
            .unwrap();
        let read = a.shared_models_since(first).await.unwrap();
        let states: Vec<(&str, &str)> = read
            .iter()
            .map(|m| (m.agent.as_str(), m.state.as_str()))
            .collect();
        assert_eq!(states, [("bot", "ab"), ("", "p")]);
        assert!(read.iter().all(|m| m.updated_ms >= first));
        // Unchanged since: nothing to read.
        let later = read.iter().map(|m| m.updated_ms).max().unwrap() + 1;
        assert!(b.shared_models_since(later).await.unwrap().is_empty());
        for s in [a, b] {
            s.close().await;
        }
    }

    #[tokio::test]
    async fn one_node_has_no_shared_models() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        assert!(store.shared_models_since(0).await.is_err());
    }
}
