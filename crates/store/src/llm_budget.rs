//! Day counters of LLM budgets (migration `0010_llm_budget.sql`). The gateway
//! counts in memory and writes changed counters here in the background; this
//! is never on the request path.

use crate::backend::DbRow;

use crate::{Store, StoreError};

/// One agent's counters on one route for one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetDayRow {
    /// The route.
    pub route: String,
    /// The agent.
    pub agent: String,
    /// Days since the epoch (UTC).
    pub day: i64,
    /// Requests admitted that day.
    pub requests: i64,
    /// Tokens charged that day.
    pub tokens: i64,
}

impl Store {
    /// Writes counters, replacing each (route, agent)'s earlier row, in one
    /// transaction.
    pub async fn save_budget_days(&self, rows: &[BudgetDayRow]) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await?;
            for r in rows {
                query(
                "INSERT INTO llm_budget_days (route, agent, day, requests, tokens) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT(route, agent) DO UPDATE SET day = excluded.day,
                   requests = excluded.requests, tokens = excluded.tokens",
            )
            .bind(&r.route)
            .bind(&r.agent)
            .bind(r.day)
            .bind(r.requests)
            .bind(r.tokens)
            .execute(&mut *tx)
            .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// The counters of `day`.
    pub async fn budget_days(&self, day: i64) -> Result<Vec<BudgetDayRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
            "SELECT route, agent, day, requests, tokens FROM llm_budget_days WHERE day = ? ORDER BY route, agent",
        )
        .bind(day)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(BudgetDayRow {
                route: r.col("route")?,
                agent: r.col("agent")?,
                day: r.col("day")?,
                requests: r.col("requests")?,
                tokens: r.col("tokens")?,
            })
        })
        .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_replace_and_filter_by_day() {
        for db in crate::testing::TestDb::all().await {
            rows_replace_and_filter_by_day_on(db.open().await).await;
        }
    }

    async fn rows_replace_and_filter_by_day_on(store: Store) {
        let row = |agent: &str, day, requests| BudgetDayRow {
            route: "llm".into(),
            agent: agent.into(),
            day,
            requests,
            tokens: requests * 10,
        };
        store
            .save_budget_days(&[row("a", 7, 1), row("b", 6, 5)])
            .await
            .unwrap();
        store.save_budget_days(&[row("a", 7, 3)]).await.unwrap();
        assert_eq!(store.budget_days(7).await.unwrap(), [row("a", 7, 3)]);
        assert_eq!(store.budget_days(6).await.unwrap(), [row("b", 6, 5)]);
    }
}
