//! The inventory: which identity touched which resource, how often, at what
//! data classification, and when last — aggregated from the audit log itself,
//! so it reports what happened rather than what was configured.

use std::collections::BTreeMap;

use portcullis_audit::{Outcome, RecordKind};

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
        // One pass over the window, aggregated as the records are read
        // (they are stored compact, so SQLite cannot look inside them).
        let mut edges: BTreeMap<(Option<String>, String), InventoryEdge> = BTreeMap::new();
        self.for_each_record_since(since_ms, |record| {
            let (RecordKind::Request, Some(resource)) = (record.kind, record.resource) else {
                return;
            };
            let edge = edges
                .entry((record.principal.clone(), resource.clone()))
                .or_insert_with(|| InventoryEdge {
                    principal: record.principal,
                    resource,
                    classification: None,
                    requests: 0,
                    allowed: 0,
                    denied: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    first_ms: record.time_ms,
                    last_ms: record.time_ms,
                });
            if class_rank(record.classification.as_deref())
                > class_rank(edge.classification.as_deref())
            {
                edge.classification = record.classification;
            }
            edge.requests += 1;
            if record.outcome == Outcome::Allow {
                edge.allowed += 1;
            } else {
                edge.denied += 1;
            }
            edge.bytes_in = edge.bytes_in.saturating_add(record.bytes_in);
            edge.bytes_out = edge.bytes_out.saturating_add(record.bytes_out);
            edge.first_ms = edge.first_ms.min(record.time_ms);
            edge.last_ms = edge.last_ms.max(record.time_ms);
        })
        .await?;
        Ok(edges.into_values().collect())
    }
}

/// The order of data classifications; anything else ranks lowest.
fn class_rank(class: Option<&str>) -> u8 {
    match class {
        Some("restricted") => 4,
        Some("confidential") => 3,
        Some("internal") => 2,
        Some("public") => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_audit::AuditRecord;

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
        for db in crate::testing::TestDb::all().await {
            edges_aggregate_the_window_on(db.open().await).await;
        }
    }

    async fn edges_aggregate_the_window_on(store: Store) {
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
