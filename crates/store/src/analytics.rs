//! Behavioral analytics' tables (migration `0009_analytics.sql`): model state,
//! risk history, alerts and quarantines. The store keeps the analytics
//! crate's JSON as text; it does not interpret it.

use crate::backend::DbRow;

use crate::{Store, StoreError};

/// One risk score point.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskPoint {
    /// The agent.
    pub agent: String,
    /// When (ms since the epoch).
    pub time_ms: i64,
    /// The score, 0.0–1.0.
    pub risk: f64,
    /// The grade it earned.
    pub grade: String,
}

/// An alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    /// Its id.
    pub id: i64,
    /// The agent.
    pub agent: String,
    /// When it was raised (ms).
    pub time_ms: i64,
    /// The grade reached.
    pub grade: String,
    /// The risk score.
    pub risk: f64,
    /// Reasons and features, JSON.
    pub detail: String,
    /// Request ids involved, JSON array.
    pub request_ids: String,
    /// `benign` or `malicious` once resolved.
    pub verdict: Option<String>,
    /// When it was resolved (ms).
    pub resolved_at: Option<i64>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
}

/// A quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRow {
    /// The agent.
    pub agent: String,
    /// Since when (ms).
    pub since_ms: i64,
    /// The alert that caused it.
    pub alert_id: Option<i64>,
    /// When it was lifted (ms).
    pub released_at: Option<i64>,
    /// Who lifted it.
    pub released_by: Option<String>,
}

impl Store {
    /// Saves model states (agent, JSON) and, when given, the population's sample.
    pub async fn save_models(
        &self,
        agents: &[(String, String)],
        population: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await?;
            for (agent, state) in agents {
                query(
                "INSERT INTO analytics_models (agent, state, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT(agent) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            )
            .bind(agent)
            .bind(state)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            }
            if let Some(sample) = population {
                query(
                "INSERT INTO analytics_population (id, sample, updated_at) VALUES (1, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET sample = excluded.sample, updated_at = excluded.updated_at",
            )
            .bind(sample)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every saved model state (agent, JSON) and the population's sample.
    pub async fn models(&self) -> Result<(Vec<(String, String)>, Option<String>), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query("SELECT agent, state FROM analytics_models ORDER BY agent")
                .fetch_all(pool)
                .await?;
            let agents = rows
                .iter()
                .map(|r| Ok((r.col("agent")?, r.col("state")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let population = query("SELECT sample FROM analytics_population WHERE id = 1")
                .fetch_optional(pool)
                .await?
                .map(|r| r.col("sample"))
                .transpose()?;
            Ok((agents, population))
        })
    }

    /// One agent's saved model state (JSON), if any: analytics keeps only
    /// a bounded set of models in memory and reads back the others' when
    /// their agent returns.
    pub async fn model(&self, agent: &str) -> Result<Option<String>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            Ok(query("SELECT state FROM analytics_models WHERE agent = ?")
                .bind(agent)
                .fetch_optional(pool)
                .await?
                .map(|r| r.col("state"))
                .transpose()?)
        })
    }

    /// Appends risk points.
    pub async fn add_risk_points(&self, points: &[RiskPoint]) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = pool.begin().await?;
            for p in points {
                query("INSERT INTO risk_history (agent, time_ms, risk, grade) VALUES (?, ?, ?, ?)")
                    .bind(&p.agent)
                    .bind(p.time_ms)
                    .bind(p.risk)
                    .bind(&p.grade)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// An agent's latest risk points, newest first.
    pub async fn risk_history(
        &self,
        agent: &str,
        limit: u32,
    ) -> Result<Vec<RiskPoint>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            // Points of one millisecond come newest first by insertion order;
            // PostgreSQL has no `rowid` (and `ctid` is not insertion order), so
            // there they tie by value.
            let rows = query(if IS_POSTGRES {
                "SELECT agent, time_ms, risk, grade FROM risk_history WHERE agent = ?
             ORDER BY time_ms DESC, risk DESC LIMIT ?"
            } else {
                "SELECT agent, time_ms, risk, grade FROM risk_history WHERE agent = ?
             ORDER BY time_ms DESC, rowid DESC LIMIT ?"
            })
            .bind(agent)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(RiskPoint {
                        agent: r.col("agent")?,
                        time_ms: r.col("time_ms")?,
                        risk: r.col("risk")?,
                        grade: r.col("grade")?,
                    })
                })
                .collect()
        })
    }

    /// Stores a new alert (`id` is ignored) and returns its id.
    pub async fn add_alert(&self, alert: &AlertRow) -> Result<i64, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
                "INSERT INTO alerts (agent, time_ms, grade, risk, detail, request_ids)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(&alert.agent)
            .bind(alert.time_ms)
            .bind(&alert.grade)
            .bind(alert.risk)
            .bind(&alert.detail)
            .bind(&alert.request_ids)
            .fetch_one(pool)
            .await?;
            Ok(row.col("id")?)
        })
    }

    /// Alerts, newest first; only unresolved ones when `open_only`.
    pub async fn alerts(&self, open_only: bool, limit: u32) -> Result<Vec<AlertRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT * FROM alerts WHERE (?1 = 0 OR verdict IS NULL) ORDER BY id DESC LIMIT ?2",
            )
            .bind(i64::from(open_only))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter().map(alert_from_row).collect()
        })
    }

    /// One alert.
    pub async fn alert(&self, id: i64) -> Result<Option<AlertRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("SELECT * FROM alerts WHERE id = ?")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(alert_from_row)
                .transpose()
        })
    }

    /// Records a verdict. An alert is resolved once: a second verdict is a conflict.
    pub async fn resolve_alert(
        &self,
        id: i64,
        verdict: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<AlertRow, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let result = query(
                "UPDATE alerts SET verdict = ?, resolved_at = ?, resolved_by = ?
             WHERE id = ? AND verdict IS NULL",
            )
            .bind(verdict)
            .bind(now_ms)
            .bind(by)
            .bind(id)
            .execute(pool)
            .await?;
            let alert = self
                .alert(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("alert {id}")))?;
            if result.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("a verdict on alert {id}")));
            }
            Ok(alert)
        })
    }

    /// Puts an agent in quarantine (a no-op when it already is).
    pub async fn quarantine(
        &self,
        agent: &str,
        since_ms: i64,
        alert_id: Option<i64>,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "INSERT INTO quarantines (agent, since_ms, alert_id)
             SELECT ?1, ?2, ?3 WHERE NOT EXISTS
               (SELECT 1 FROM quarantines WHERE agent = ?1 AND released_at IS NULL)",
            )
            .bind(agent)
            .bind(since_ms)
            .bind(alert_id)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Lifts an agent's quarantine; `NotFound` when it is not quarantined.
    pub async fn release(&self, agent: &str, by: &str, now_ms: i64) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let result = query(
                "UPDATE quarantines SET released_at = ?, released_by = ?
             WHERE agent = ? AND released_at IS NULL",
            )
            .bind(now_ms)
            .bind(by)
            .bind(agent)
            .execute(pool)
            .await?;
            if result.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("a quarantine of `{agent}`")));
            }
            Ok(())
        })
    }

    /// Quarantines in force, or an agent's whole quarantine history.
    pub async fn quarantines(&self, agent: Option<&str>) -> Result<Vec<QuarantineRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT agent, since_ms, alert_id, released_at, released_by FROM quarantines
             WHERE (?1 IS NULL AND released_at IS NULL) OR agent = ?1 ORDER BY id",
            )
            .bind(agent)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(QuarantineRow {
                        agent: r.col("agent")?,
                        since_ms: r.col("since_ms")?,
                        alert_id: r.col("alert_id")?,
                        released_at: r.col("released_at")?,
                        released_by: r.col("released_by")?,
                    })
                })
                .collect()
        })
    }
}

fn alert_from_row(r: &impl DbRow) -> Result<AlertRow, StoreError> {
    Ok(AlertRow {
        id: r.col("id")?,
        agent: r.col("agent")?,
        time_ms: r.col("time_ms")?,
        grade: r.col("grade")?,
        risk: r.col("risk")?,
        detail: r.col("detail")?,
        request_ids: r.col("request_ids")?,
        verdict: r.col("verdict")?,
        resolved_at: r.col("resolved_at")?,
        resolved_by: r.col("resolved_by")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn models_survive_reopening() {
        for db in crate::testing::TestDb::all().await {
            models_survive_reopening_on(&db).await;
        }
    }

    async fn models_survive_reopening_on(db: &crate::testing::TestDb) {
        {
            let store = db.open().await;
            store
                .save_models(&[("bot".into(), "{\"a\":1}".into())], Some("[]"), 1)
                .await
                .unwrap();
            store
                .save_models(&[("bot".into(), "{\"a\":2}".into())], None, 2)
                .await
                .unwrap();
            store.close().await;
        }
        let store = db.open().await;
        let (agents, population) = store.models().await.unwrap();
        assert_eq!(agents, vec![("bot".to_string(), "{\"a\":2}".to_string())]);
        assert_eq!(population.as_deref(), Some("[]"));
        assert_eq!(
            store.model("bot").await.unwrap().as_deref(),
            Some("{\"a\":2}")
        );
        assert_eq!(store.model("ghost").await.unwrap(), None);
    }

    #[tokio::test]
    async fn alerts_resolve_once() {
        for db in crate::testing::TestDb::all().await {
            alerts_resolve_once_on(db.open().await).await;
        }
    }

    async fn alerts_resolve_once_on(store: Store) {
        let alert = AlertRow {
            id: 0,
            agent: "bot".into(),
            time_ms: 5,
            grade: "quarantine".into(),
            risk: 1.0,
            detail: "{}".into(),
            request_ids: "[]".into(),
            verdict: None,
            resolved_at: None,
            resolved_by: None,
        };
        let id = store.add_alert(&alert).await.unwrap();
        assert_eq!(store.alerts(true, 10).await.unwrap().len(), 1);
        let resolved = store.resolve_alert(id, "benign", "alice", 9).await.unwrap();
        assert_eq!(resolved.verdict.as_deref(), Some("benign"));
        assert!(store.alerts(true, 10).await.unwrap().is_empty());
        assert_eq!(store.alerts(false, 10).await.unwrap().len(), 1);
        assert!(matches!(
            store.resolve_alert(id, "malicious", "bob", 10).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.resolve_alert(id + 1, "benign", "bob", 10).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn quarantine_and_release() {
        for db in crate::testing::TestDb::all().await {
            quarantine_and_release_on(db.open().await).await;
        }
    }

    async fn quarantine_and_release_on(store: Store) {
        store.quarantine("bot", 1, None).await.unwrap();
        store.quarantine("bot", 2, None).await.unwrap();
        assert_eq!(store.quarantines(None).await.unwrap().len(), 1);
        store.release("bot", "alice", 3).await.unwrap();
        assert!(store.quarantines(None).await.unwrap().is_empty());
        assert!(matches!(
            store.release("bot", "alice", 4).await,
            Err(StoreError::NotFound(_))
        ));
        let history = store.quarantines(Some("bot")).await.unwrap();
        assert_eq!(history[0].released_by.as_deref(), Some("alice"));
        store
            .add_risk_points(&[RiskPoint {
                agent: "bot".into(),
                time_ms: 1,
                risk: 0.5,
                grade: "alert".into(),
            }])
            .await
            .unwrap();
        assert_eq!(store.risk_history("bot", 10).await.unwrap().len(), 1);
    }
}
