//! The inventory: which identity touched which resource, how often, at what
//! data classification, and when last — aggregated from the audit log itself,
//! so it reports what happened rather than what was configured.

use sqlx::Row;

use crate::{Store, StoreError};

/// One identity → resource edge of the data-flow graph.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InventoryEdge {
    /// The identity (agent name); `None` for unauthenticated callers.
    pub principal: Option<String>,
    /// The resource (route) touched.
    pub resource: String,
    /// The highest data classification recorded on the edge.
    pub classification: Option<String>,
    /// Requests in the window.
    pub requests: u64,
    /// Of which allowed by policy.
    pub allowed: u64,
    /// Of which refused.
    pub denied: u64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// First use in the window, ms since the epoch.
    pub first_ms: i64,
    /// Last use, ms since the epoch.
    pub last_ms: i64,
}

impl Store {
    /// Every identity → resource edge of data-plane requests since `since_ms`.
    pub async fn inventory(&self, since_ms: i64) -> Result<Vec<InventoryEdge>, StoreError> {
        // One pass over the window; records are JSON, read with SQLite's JSON
        // functions so nothing is parsed in Rust.
        let rows = sqlx::query(
            "SELECT json_extract(record, '$.principal') AS principal,
                    json_extract(record, '$.resource') AS resource,
                    MAX(CASE json_extract(record, '$.classification')
                        WHEN 'restricted' THEN 4 WHEN 'confidential' THEN 3
                        WHEN 'internal' THEN 2 WHEN 'public' THEN 1 ELSE 0 END) AS class_rank,
                    COUNT(*) AS requests,
                    SUM(json_extract(record, '$.outcome') = 'allow') AS allowed,
                    SUM(json_extract(record, '$.bytes_in')) AS bytes_in,
                    SUM(json_extract(record, '$.bytes_out')) AS bytes_out,
                    MIN(time_ms) AS first_ms,
                    MAX(time_ms) AS last_ms
             FROM audit_log
             WHERE time_ms >= ?
               AND json_extract(record, '$.kind') = 'request'
               AND json_extract(record, '$.resource') IS NOT NULL
             GROUP BY principal, resource
             ORDER BY principal, resource",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let requests: i64 = r.try_get("requests")?;
                let allowed: i64 = r.try_get("allowed")?;
                let rank: i64 = r.try_get("class_rank")?;
                Ok(InventoryEdge {
                    principal: r.try_get("principal")?,
                    resource: r.try_get("resource")?,
                    classification: match rank {
                        4 => Some("restricted".into()),
                        3 => Some("confidential".into()),
                        2 => Some("internal".into()),
                        1 => Some("public".into()),
                        _ => None,
                    },
                    requests: requests as u64,
                    allowed: allowed as u64,
                    denied: (requests - allowed) as u64,
                    bytes_in: r.try_get::<i64, _>("bytes_in")? as u64,
                    bytes_out: r.try_get::<i64, _>("bytes_out")? as u64,
                    first_ms: r.try_get("first_ms")?,
                    last_ms: r.try_get("last_ms")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_audit::{AuditRecord, Outcome, RecordKind};

    fn rec(t: i64, who: Option<&str>, route: &str, class: &str, outcome: Outcome) -> AuditRecord {
        AuditRecord {
            time_ms: t,
            kind: RecordKind::Request,
            request_id: format!("r{t}"),
            principal: who.map(str::to_owned),
            action: "GET".into(),
            resource: Some(route.into()),
            classification: Some(class.into()),
            outcome,
            bytes_in: 10,
            bytes_out: 100,
            ..AuditRecord::default()
        }
    }

    #[tokio::test]
    async fn edges_aggregate_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let mut log = store.audit_appender().await.unwrap();
        let mut batch = vec![
            rec(5, Some("bot"), "old", "public", Outcome::Allow),
            rec(10, Some("bot"), "crm", "internal", Outcome::Allow),
            rec(11, Some("bot"), "crm", "internal", Outcome::Deny),
            rec(12, Some("bot"), "payroll", "confidential", Outcome::Deny),
            rec(13, None, "crm", "internal", Outcome::Deny),
            AuditRecord {
                time_ms: 14,
                kind: RecordKind::Admin,
                action: "agent.create".into(),
                resource: Some("bot".into()),
                ..AuditRecord::default()
            },
        ];
        log.append(&mut batch).await.unwrap();
        let edges = store.inventory(10).await.unwrap();
        let summary: Vec<_> = edges
            .iter()
            .map(|e| {
                (
                    e.principal.as_deref(),
                    e.resource.as_str(),
                    e.classification.as_deref(),
                    e.requests,
                    e.allowed,
                    e.last_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (None, "crm", Some("internal"), 1, 0, 13),
                (Some("bot"), "crm", Some("internal"), 2, 1, 11),
                (Some("bot"), "payroll", Some("confidential"), 1, 0, 12),
            ]
        );
        assert_eq!(edges[1].bytes_out, 200);
    }
}
