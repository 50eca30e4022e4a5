//! Red-team runs (migration `0025_redteam_runs.sql`): the scorecards
//! `portcullis redteam` sends to the admin API, kept for `redteam history`.
//! A run is written once and never changed; a second run with the same id
//! is a conflict.

use crate::backend::DbRow;
use crate::{Store, StoreError};

/// One recorded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedteamRunRow {
    /// The id the CLI gave the run.
    pub run_id: String,
    /// When the attacks started and finished (epoch milliseconds).
    pub started_ms: i64,
    /// When they finished.
    pub finished_ms: i64,
    /// When the admin API recorded the run.
    pub recorded_ms: i64,
    /// The admin credential that recorded it.
    pub recorded_by: String,
    /// The agent whose credentials attacked.
    pub agent: String,
    /// The gateway URL attacked.
    pub gateway: String,
    /// Families held, failed and skipped.
    pub held: i64,
    /// Families an attack got through.
    pub failed: i64,
    /// Families not run.
    pub skipped: i64,
    /// The names of the failed families.
    pub failed_families: Vec<String>,
    /// The request id of the audit record of the run.
    pub audit_request_id: String,
    /// The whole scorecard (JSON text).
    pub report: String,
}

fn run_row(r: &impl DbRow) -> Result<RedteamRunRow, StoreError> {
    let failed_families: String = r.col("failed_families")?;
    Ok(RedteamRunRow {
        run_id: r.col("run_id")?,
        started_ms: r.col("started_ms")?,
        finished_ms: r.col("finished_ms")?,
        recorded_ms: r.col("recorded_ms")?,
        recorded_by: r.col("recorded_by")?,
        agent: r.col("agent")?,
        gateway: r.col("gateway")?,
        held: r.col("held")?,
        failed: r.col("failed")?,
        skipped: r.col("skipped")?,
        failed_families: serde_json::from_str(&failed_families).map_err(|e| {
            StoreError::Corrupt {
                table: "redteam_runs",
                detail: e.to_string(),
            }
        })?,
        audit_request_id: r.col("audit_request_id")?,
        report: r.col("report")?,
    })
}

impl Store {
    /// Keeps a run. [`StoreError::Conflict`] when its id is taken.
    pub async fn add_redteam_run(&self, run: &RedteamRunRow) -> Result<(), StoreError> {
        let families = serde_json::to_string(&run.failed_families).unwrap_or_else(|_| "[]".into());
        crate::backend::with_pool!(&self.pool, |pool| {
            let inserted = query(
                "INSERT INTO redteam_runs (run_id, started_ms, finished_ms, recorded_ms, recorded_by,
                    agent, gateway, held, failed, skipped, failed_families, audit_request_id, report)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(run_id) DO NOTHING",
            )
            .bind(&run.run_id)
            .bind(run.started_ms)
            .bind(run.finished_ms)
            .bind(run.recorded_ms)
            .bind(&run.recorded_by)
            .bind(&run.agent)
            .bind(&run.gateway)
            .bind(run.held)
            .bind(run.failed)
            .bind(run.skipped)
            .bind(&families)
            .bind(&run.audit_request_id)
            .bind(&run.report)
            .execute(pool)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "red-team run `{}` is already recorded",
                    run.run_id
                )));
            }
            Ok(())
        })
    }

    /// The newest `limit` runs, newest first.
    pub async fn redteam_runs(&self, limit: i64) -> Result<Vec<RedteamRunRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query("SELECT * FROM redteam_runs ORDER BY started_ms DESC, run_id LIMIT ?")
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(run_row).collect()
        })
    }

    /// One run.
    pub async fn redteam_run(&self, run_id: &str) -> Result<Option<RedteamRunRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query("SELECT * FROM redteam_runs WHERE run_id = ?")
                .bind(run_id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(run_row).transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, started_ms: i64, failed: &[&str]) -> RedteamRunRow {
        RedteamRunRow {
            run_id: id.into(),
            started_ms,
            finished_ms: started_ms + 5,
            recorded_ms: started_ms + 6,
            recorded_by: "admin".into(),
            agent: "reader-bot".into(),
            gateway: "https://127.0.0.1:8443".into(),
            held: 4,
            failed: failed.len() as i64,
            skipped: 2,
            failed_families: failed.iter().map(|f| f.to_string()).collect(),
            audit_request_id: format!("req-{id}"),
            report: r#"{"families":[]}"#.into(),
        }
    }

    #[tokio::test]
    async fn runs_are_kept_once_and_listed_newest_first() {
        for db in crate::testing::TestDb::all().await {
            let store = db.open().await;
            let old = run("a1", 100, &[]);
            let new = run("b2", 200, &["smuggling", "path-confusion"]);
            store.add_redteam_run(&old).await.unwrap();
            store.add_redteam_run(&new).await.unwrap();
            assert!(matches!(
                store.add_redteam_run(&old).await,
                Err(StoreError::Conflict(_))
            ));
            assert_eq!(
                store.redteam_runs(10).await.unwrap(),
                vec![new.clone(), old]
            );
            assert_eq!(store.redteam_runs(1).await.unwrap(), vec![new.clone()]);
            assert_eq!(store.redteam_run("b2").await.unwrap(), Some(new));
            assert_eq!(store.redteam_run("zz").await.unwrap(), None);
        }
    }
}
