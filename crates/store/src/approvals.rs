//! Approval tickets and time-boxed grants (migrations `0007_policy.sql`,
//! `0011_approval_reason.sql`, `0012_approval_binding.sql`).
//! The gateway keeps live tickets in memory and writes them here off the
//! request path, so they survive a restart and can be listed and audited.

use crate::backend::DbRow;

use crate::{Store, StoreError};

/// One approval ticket as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    /// The ticket id: 128 random bits, hex; also the approval's nonce.
    pub id: String,
    /// The agent that made the call.
    pub agent: String,
    /// The user the agent acted for, if delegated.
    pub delegated_user: Option<String>,
    /// The HTTP method.
    pub action: String,
    /// The route.
    pub resource: String,
    /// The request path.
    pub path: String,
    /// The query string as the approver is shown it (secrets masked), without
    /// the `?`; `None` when the request had none.
    pub query: Option<String>,
    /// The bound request headers as shown (name, value), in binding order.
    pub headers: Vec<(String, String)>,
    /// SHA-256 (hex) of the request body.
    pub body_sha256: String,
    /// The body's size in bytes.
    pub body_bytes: u64,
    /// `http`, `mcp` or `llm`.
    pub protocol: String,
    /// The MCP tool or the LLM model; `None` on an HTTP route.
    pub subject: Option<String>,
    /// What the approver reads of the body: the start of an HTTP text body,
    /// or an MCP tool call's canonical arguments (secrets masked, truncated).
    pub preview: Option<String>,
    /// The digest the gateway matches a call against (over the exact call,
    /// not the masked fields above); empty for a ticket from before
    /// migration 12, which matches nothing.
    pub binding_key: String,
    /// The policy version that asked for approval.
    pub policy_version: u64,
    /// The policy that asked for approval, or (when `required_by` is
    /// `analytics`) the policy that allowed the call.
    pub policy_id: String,
    /// `policy` or `analytics` (the agent's risk grade held the call).
    pub required_by: String,
    /// Created, ms since the epoch.
    pub created_ms: i64,
    /// Lapses, ms since the epoch.
    pub expires_ms: i64,
    /// `pending`, `approved`, `denied`, `used` or `expired`.
    pub status: String,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When, ms since the epoch.
    pub decided_ms: Option<i64>,
    /// The grant an approval with a TTL created.
    pub grant_id: Option<String>,
}

/// One time-boxed grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// The grant id (its policy id is `grant:<id>` or `breakglass:<id>`).
    pub id: String,
    /// `grant` or `breakglass`.
    pub kind: String,
    /// Why (break-glass), or empty.
    pub reason: String,
    /// The agent it permits.
    pub agent: String,
    /// The HTTP method it permits.
    pub action: String,
    /// The route it permits.
    pub resource: String,
    /// Created, ms since the epoch.
    pub created_ms: i64,
    /// Lapses, ms since the epoch.
    pub expires_ms: i64,
    /// Who granted it.
    pub created_by: String,
    /// The ticket it came from.
    pub ticket: Option<String>,
    /// Revoked, ms since the epoch.
    pub revoked_ms: Option<i64>,
}

impl Store {
    /// Inserts a ticket or replaces its mutable state (status, decision, expiry).
    pub async fn put_approval(&self, t: &ApprovalRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let headers = serde_json::to_string(&t.headers).map_err(|e| StoreError::Corrupt {
                table: "approvals",
                detail: e.to_string(),
            })?;
            query(
            "INSERT INTO approvals (id, agent, delegated_user, action, resource, path, body_sha256,
                 policy_version, policy_id, required_by, created_ms, expires_ms, status, decided_by,
                 decided_ms, grant_id, query, headers, body_bytes, protocol, subject, preview,
                 binding_key)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET expires_ms = excluded.expires_ms, status = excluded.status,
                 decided_by = excluded.decided_by, decided_ms = excluded.decided_ms,
                 grant_id = excluded.grant_id",
        )
        .bind(&t.id)
        .bind(&t.agent)
        .bind(&t.delegated_user)
        .bind(&t.action)
        .bind(&t.resource)
        .bind(&t.path)
        .bind(&t.body_sha256)
        .bind(t.policy_version as i64)
        .bind(&t.policy_id)
        .bind(&t.required_by)
        .bind(t.created_ms)
        .bind(t.expires_ms)
        .bind(&t.status)
        .bind(&t.decided_by)
        .bind(t.decided_ms)
        .bind(&t.grant_id)
        .bind(&t.query)
        .bind(headers)
        .bind(t.body_bytes as i64)
        .bind(&t.protocol)
        .bind(&t.subject)
        .bind(&t.preview)
        .bind(&t.binding_key)
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Tickets still pending or approved-and-unused that lapse after `now_ms`.
    pub async fn live_approvals(&self, now_ms: i64) -> Result<Vec<ApprovalRow>, StoreError> {
        self.approvals_where(
            "SELECT * FROM approvals WHERE status IN ('pending', 'approved') AND expires_ms > ?
             ORDER BY created_ms",
            now_ms,
        )
        .await
    }

    /// Every ticket, in any state, that lapses after `now_ms`: what another
    /// replica may have created or decided (cluster mode).
    pub async fn unexpired_approvals(&self, now_ms: i64) -> Result<Vec<ApprovalRow>, StoreError> {
        self.approvals_where(
            "SELECT * FROM approvals WHERE expires_ms > ? ORDER BY created_ms",
            now_ms,
        )
        .await
    }

    /// Moves ticket `row.id` from status `from` to `row`'s status (with its
    /// decision, grant and expiry), only if it is in `from` and unexpired at
    /// `now_ms`. `true` when this call made the move: of several replicas
    /// deciding or using one ticket at once, exactly one gets `true`.
    pub async fn transition_approval(
        &self,
        row: &ApprovalRow,
        from: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let done = query(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_ms = ?, grant_id = ?,
                     expires_ms = ?
                 WHERE id = ? AND status = ? AND expires_ms > ?",
            )
            .bind(&row.status)
            .bind(&row.decided_by)
            .bind(row.decided_ms)
            .bind(&row.grant_id)
            .bind(row.expires_ms)
            .bind(&row.id)
            .bind(from)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    async fn approvals_where(
        &self,
        sql: &'static str,
        now_ms: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(sql).bind(now_ms).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    let headers: String = r.col("headers")?;
                    Ok(ApprovalRow {
                        id: r.col("id")?,
                        agent: r.col("agent")?,
                        delegated_user: r.col("delegated_user")?,
                        action: r.col("action")?,
                        resource: r.col("resource")?,
                        path: r.col("path")?,
                        query: r.col("query")?,
                        headers: serde_json::from_str(&headers).map_err(|e| {
                            StoreError::Corrupt {
                                table: "approvals",
                                detail: e.to_string(),
                            }
                        })?,
                        body_sha256: r.col("body_sha256")?,
                        body_bytes: r.col::<i64, _>("body_bytes")?.max(0) as u64,
                        protocol: r.col("protocol")?,
                        subject: r.col("subject")?,
                        preview: r.col("preview")?,
                        binding_key: r.col("binding_key")?,
                        policy_version: r.col::<i64, _>("policy_version")? as u64,
                        policy_id: r.col("policy_id")?,
                        required_by: r.col("required_by")?,
                        created_ms: r.col("created_ms")?,
                        expires_ms: r.col("expires_ms")?,
                        status: r.col("status")?,
                        decided_by: r.col("decided_by")?,
                        decided_ms: r.col("decided_ms")?,
                        grant_id: r.col("grant_id")?,
                    })
                })
                .collect()
        })
    }

    /// Stores a new grant.
    pub async fn add_grant(&self, g: &GrantRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
            "INSERT INTO policy_grants (id, kind, reason, agent, action, resource, created_ms,
                 expires_ms, created_by, ticket, revoked_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        )
        .bind(&g.id)
        .bind(&g.kind)
        .bind(&g.reason)
        .bind(&g.agent)
        .bind(&g.action)
        .bind(&g.resource)
        .bind(g.created_ms)
        .bind(g.expires_ms)
        .bind(&g.created_by)
        .bind(&g.ticket)
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Grants neither revoked nor lapsed at `now_ms`, oldest first.
    pub async fn live_grants(&self, now_ms: i64) -> Result<Vec<GrantRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT * FROM policy_grants WHERE revoked_ms IS NULL AND expires_ms > ?
             ORDER BY created_ms, id",
            )
            .bind(now_ms)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(GrantRow {
                        id: r.col("id")?,
                        kind: r.col("kind")?,
                        reason: r.col("reason")?,
                        agent: r.col("agent")?,
                        action: r.col("action")?,
                        resource: r.col("resource")?,
                        created_ms: r.col("created_ms")?,
                        expires_ms: r.col("expires_ms")?,
                        created_by: r.col("created_by")?,
                        ticket: r.col("ticket")?,
                        revoked_ms: r.col("revoked_ms")?,
                    })
                })
                .collect()
        })
    }

    /// Revokes a live grant.
    pub async fn revoke_grant(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let result = query(
                "UPDATE policy_grants SET revoked_ms = ?1 WHERE id = ?2 AND revoked_ms IS NULL
             AND expires_ms > ?1",
            )
            .bind(now_ms)
            .bind(id)
            .execute(pool)
            .await?;
            if result.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("grant {id}")));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn live_tickets_from_before_the_binding_migration_lapse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let all = crate::migrator();
        let before = sqlx::migrate::Migrator::with_migrations(
            all.migrations
                .iter()
                .filter(|m| m.version < 12)
                .cloned()
                .collect(),
        );
        before.run(&pool).await.unwrap();
        for (id, status) in [("old-pending", "pending"), ("old-approved", "approved")] {
            sqlx::query(
                "INSERT INTO approvals (id, agent, action, resource, path, body_sha256,
                     policy_version, policy_id, created_ms, expires_ms, status)
                 VALUES (?, 'bot', 'POST', 'bank', '/bank/transfer', 'ab', 1, 'p', 1, ?, ?)",
            )
            .bind(id)
            .bind(i64::MAX)
            .bind(status)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        // Bound without their query, they are not approvals of anything now.
        let store = Store::open_sqlite(&path).await.unwrap();
        assert!(store.live_approvals(2).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn tickets_and_grants_round_trip() {
        for db in crate::testing::TestDb::all().await {
            tickets_and_grants_round_trip_on(db.open().await).await;
        }
    }

    async fn tickets_and_grants_round_trip_on(store: Store) {
        let mut t = ApprovalRow {
            id: "t1".into(),
            agent: "bot".into(),
            delegated_user: Some("alice".into()),
            action: "POST".into(),
            resource: "bank".into(),
            path: "/bank/transfer".into(),
            query: Some("to=alice&amount=10".into()),
            headers: vec![("content-type".into(), "application/json".into())],
            body_sha256: "ab".into(),
            body_bytes: 13,
            protocol: "http".into(),
            subject: None,
            preview: Some(r#"{"memo":"x"}"#.into()),
            binding_key: "k1".into(),
            policy_version: 2,
            policy_id: "transfers".into(),
            required_by: "analytics".into(),
            created_ms: 1,
            expires_ms: 100,
            status: "pending".into(),
            decided_by: None,
            decided_ms: None,
            grant_id: None,
        };
        store.put_approval(&t).await.unwrap();
        t.status = "approved".into();
        t.decided_by = Some("bob".into());
        store.put_approval(&t).await.unwrap();
        assert_eq!(store.live_approvals(50).await.unwrap(), vec![t.clone()]);
        assert!(store.live_approvals(100).await.unwrap().is_empty());

        let g = GrantRow {
            id: "g1".into(),
            kind: "grant".into(),
            reason: String::new(),
            agent: "bot".into(),
            action: "POST".into(),
            resource: "bank".into(),
            created_ms: 1,
            expires_ms: 100,
            created_by: "bob".into(),
            ticket: Some("t1".into()),
            revoked_ms: None,
        };
        store.add_grant(&g).await.unwrap();
        assert_eq!(store.live_grants(50).await.unwrap(), vec![g]);
        store.revoke_grant("g1", 60).await.unwrap();
        assert!(store.live_grants(61).await.unwrap().is_empty());
        assert!(matches!(
            store.revoke_grant("g1", 70).await,
            Err(StoreError::NotFound(_))
        ));
    }
}
