//! Rate limits and LLM budgets shared by every replica (cluster mode,
//! PostgreSQL only; tables from `migrations/postgres/cluster/0018_shared_limits.sql`).
//!
//! Neither is consulted per request: a replica leases `@rate` tokens in
//! small blocks ([`Store::lease_rate`]) and hands back what it did not use
//! ([`Store::return_rate`]); it adds its budget counts to the shared ones
//! every ~100 ms and reads the totals back ([`Store::add_counters`],
//! [`Store::counters_since`]). The gateway's `rate_limit.rs` and
//! `llm/budget.rs` say what precision that gives. Every statement runs on
//! the `synchronous_commit = off` connections: a database crash can forget
//! the last few hundred milliseconds of counting, which admits a little
//! more after it; one node forgets everything at each restart.

use crate::cluster::cluster_only;
use crate::{Store, StoreError};

/// What [`Store::lease_rate`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLease {
    /// Tokens granted (0 when the limit is spent).
    pub granted: u32,
    /// When nothing was granted: microseconds from `now` until one token
    /// is free again.
    pub wait_us: i64,
}

/// One shared counter's change: `key` in window `win` grew by `delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterDelta {
    /// What is counted (route, agent and which count).
    pub key: String,
    /// The window's number (minute or day since the epoch).
    pub win: i64,
    /// What this replica counted since its last report (may be 0: a read).
    pub delta: i64,
}

impl Store {
    /// Takes up to `want` tokens of the generic cell rate algorithm cell
    /// `key` (`interval_us` between tokens, up to `period_us` of burst) at
    /// `now_us`, for every replica: one statement, so two replicas leasing
    /// at once cannot both take the last token (the row lock orders them).
    pub async fn lease_rate(
        &self,
        key: &str,
        now_us: i64,
        interval_us: i64,
        period_us: i64,
        want: u32,
    ) -> Result<RateLease, StoreError> {
        let Some(pool) = &self.relaxed else {
            return Err(cluster_only());
        };
        let interval = interval_us.max(1);
        let want = i64::from(want.max(1));
        for _ in 0..3 {
            // `base` is where the cell stands (never in the past); as many
            // tokens are free as intervals fit between it and one period
            // ahead of now.
            let row: Option<(i64, i64)> = sqlx::query_as(
                "WITH cur AS (SELECT GREATEST(tat, $2) AS base FROM cluster_rate WHERE key = $1 FOR UPDATE),
                      g AS (SELECT base, GREATEST(0, LEAST($5, ($2 + $4 - base) / $3)) AS n FROM cur)
                 UPDATE cluster_rate SET tat = g.base + g.n * $3 FROM g WHERE cluster_rate.key = $1
                 RETURNING g.n, g.base",
            )
            .bind(key)
            .bind(now_us)
            .bind(interval)
            .bind(period_us)
            .bind(want)
            .fetch_optional(pool)
            .await?;
            if let Some((granted, base)) = row {
                return Ok(lease(granted, base, now_us, interval, period_us));
            }
            // A cell never used: a full bucket. Another replica creating it
            // at the same moment wins; the update above is then retried.
            let granted = want.min(period_us / interval).max(0);
            let created = sqlx::query(
                "INSERT INTO cluster_rate (key, tat) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(now_us + granted * interval)
            .execute(pool)
            .await?;
            if created.rows_affected() == 1 {
                return Ok(lease(granted, now_us, now_us, interval, period_us));
            }
        }
        Err(StoreError::Invalid(format!(
            "the shared rate cell `{key}` could not be leased"
        )))
    }

    /// Hands `tokens` leased from `key` back unused: the cell moves back as
    /// if they had never been leased (never further than that, so this
    /// cannot grant more than the limit).
    pub async fn return_rate(
        &self,
        key: &str,
        tokens: u32,
        interval_us: i64,
    ) -> Result<(), StoreError> {
        let Some(pool) = &self.relaxed else {
            return Err(cluster_only());
        };
        sqlx::query("UPDATE cluster_rate SET tat = tat - $2 * $3 WHERE key = $1")
            .bind(key)
            .bind(i64::from(tokens))
            .bind(interval_us.max(1))
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Adds each delta to its shared counter (created at 0) and answers the
    /// totals, in order: every replica's count together. One statement per
    /// call, whatever the number of counters.
    pub async fn add_counters(
        &self,
        deltas: &[CounterDelta],
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let Some(pool) = &self.relaxed else {
            return Err(cluster_only());
        };
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = deltas.iter().map(|d| d.key.as_str()).collect();
        let wins: Vec<i64> = deltas.iter().map(|d| d.win).collect();
        let adds: Vec<i64> = deltas.iter().map(|d| d.delta).collect();
        // `ord` keeps the answer in the callers' order; the rows are locked
        // in key order so two replicas' batches cannot deadlock.
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "WITH d AS (SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[])
                        WITH ORDINALITY AS d(key, win, delta, ord)),
                  up AS (INSERT INTO cluster_counters (key, win, count, updated_ms)
                         SELECT key, win, delta, $4 FROM d ORDER BY key, win
                         ON CONFLICT (key, win) DO UPDATE
                           SET count = cluster_counters.count + excluded.count,
                               updated_ms = excluded.updated_ms
                         RETURNING key, win, count)
             SELECT d.ord, up.count FROM d JOIN up ON up.key = d.key AND up.win = d.win ORDER BY d.ord",
        )
        .bind(&keys)
        .bind(&wins)
        .bind(&adds)
        .bind(now_ms)
        .fetch_all(pool)
        .await?;
        if rows.len() != deltas.len() {
            return Err(StoreError::Invalid(
                "a counter was named twice in one report".into(),
            ));
        }
        Ok(rows.into_iter().map(|(_, count)| count).collect())
    }

    /// The shared counters of windows `win_min` and later changed at or
    /// after `since_ms` (every replica's clock), as (key, window, count).
    pub async fn counters_since(
        &self,
        since_ms: i64,
        win_min: i64,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let Some(pool) = &self.relaxed else {
            return Err(cluster_only());
        };
        Ok(sqlx::query_as(
            "SELECT key, win, count FROM cluster_counters WHERE updated_ms >= $1 AND win >= $2",
        )
        .bind(since_ms)
        .bind(win_min)
        .fetch_all(pool)
        .await?)
    }

    /// Deletes rate cells idle since before `now_us` (full again) and
    /// counters of windows that ended before `min_win`-numbered ones.
    pub async fn purge_shared_limits(
        &self,
        now_us: i64,
        counters_older_than_ms: i64,
    ) -> Result<u64, StoreError> {
        let Some(pool) = &self.relaxed else {
            return Err(cluster_only());
        };
        let cells = sqlx::query("DELETE FROM cluster_rate WHERE tat < $1")
            .bind(now_us)
            .execute(pool)
            .await?
            .rows_affected();
        let counters = sqlx::query("DELETE FROM cluster_counters WHERE updated_ms < $1")
            .bind(counters_older_than_ms)
            .execute(pool)
            .await?
            .rows_affected();
        Ok(cells + counters)
    }
}

fn lease(granted: i64, base: i64, now_us: i64, interval: i64, period_us: i64) -> RateLease {
    RateLease {
        granted: granted.clamp(0, i64::from(u32::MAX)) as u32,
        // The next token frees when the cell is less than a period ahead.
        wait_us: if granted > 0 {
            0
        } else {
            (base + interval - period_us - now_us).max(1)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    const SECOND: i64 = 1_000_000;

    #[tokio::test]
    async fn replicas_leasing_one_cell_never_exceed_its_limit() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        // 10 per second: a token every 100 ms, a burst of 10.
        let (interval, period, t0) = (SECOND / 10, SECOND, 1_000 * SECOND);
        let lease = |s: &Store, want, now| {
            let s = s.clone();
            async move {
                s.lease_rate("p/bot", now, interval, period, want)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(lease(&a, 4, t0).await.granted, 4);
        assert_eq!(lease(&b, 4, t0).await.granted, 4);
        assert_eq!(lease(&a, 4, t0).await.granted, 2);
        let spent = lease(&b, 1, t0).await;
        assert_eq!(
            spent,
            RateLease {
                granted: 0,
                wait_us: interval
            }
        );
        // B hands back what it did not use: A may take it.
        b.return_rate("p/bot", 3, interval).await.unwrap();
        assert_eq!(lease(&a, 5, t0).await.granted, 3);
        // Time refills the cell at the rate.
        assert_eq!(lease(&b, 5, t0 + 2 * interval).await.granted, 2);
        // Racing replicas together take exactly the burst.
        let racers: Vec<_> = (0..20)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    s.lease_rate("p/raced", t0, interval, period, 1)
                        .await
                        .unwrap()
                        .granted
                })
            })
            .collect();
        let mut granted = 0;
        for r in racers {
            granted += r.await.unwrap();
        }
        assert_eq!(granted, 10);
        assert!(a.purge_shared_limits(t0 + 10 * period, 0).await.unwrap() >= 2);
    }

    #[tokio::test]
    async fn counters_add_up_across_replicas() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        let (a, b) = (db.open().await, db.open().await);
        let delta = |key: &str, win, delta| CounterDelta {
            key: key.into(),
            win,
            delta,
        };
        assert_eq!(
            a.add_counters(&[delta("x", 7, 3), delta("y", 7, 1)], 100)
                .await
                .unwrap(),
            [3, 1]
        );
        assert_eq!(
            b.add_counters(&[delta("y", 7, 2), delta("x", 7, 0), delta("x", 8, 5)], 200)
                .await
                .unwrap(),
            [3, 3, 5]
        );
        let mut seen = a.counters_since(150, 7).await.unwrap();
        seen.sort();
        assert_eq!(
            seen,
            [("x".into(), 7, 3), ("x".into(), 8, 5), ("y".into(), 7, 3)]
        );
        assert_eq!(a.counters_since(0, 8).await.unwrap().len(), 1);
        // One node shares nothing.
        let one = TestDb::sqlite();
        assert!(one.open().await.add_counters(&[], 0).await.is_err());
    }
}
