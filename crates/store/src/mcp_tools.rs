//! Pinned MCP tool definitions (migration `0008_mcp_tools.sql`). The gateway
//! keeps the pins in memory and writes every change here off the request
//! path; the admin API lists and approves them.

use crate::backend::DbRow;

use crate::{Store, StoreError};

/// One tool of one MCP route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpToolRow {
    /// The route (MCP server).
    pub route: String,
    /// The tool's name.
    pub name: String,
    /// Digest of the approved definition; `None` if never approved.
    pub approved_digest: Option<String>,
    /// Digest of the definition last listed by the server.
    pub seen_digest: String,
    /// That definition, as JSON text (`name`, `description`, `inputSchema`).
    pub seen_definition: String,
    /// Poisoning findings of the seen definition, as a JSON array.
    pub findings: String,
    /// When the tool was first listed (epoch ms).
    pub first_seen_ms: i64,
    /// When the seen definition was first listed (epoch ms).
    pub seen_ms: i64,
    /// When the approved definition was approved (epoch ms).
    pub approved_ms: Option<i64>,
    /// `first-seen` for a clean new tool, else the approving admin.
    pub approved_by: Option<String>,
}

impl Store {
    /// Records what a server lists for a tool: inserts a new tool, or updates
    /// the seen definition (keeping the approval) of a known one.
    pub async fn upsert_mcp_tool(&self, row: &McpToolRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "INSERT INTO mcp_tools (route, name, approved_digest, seen_digest, seen_definition,
                findings, first_seen_ms, seen_ms, approved_ms, approved_by)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(route, name) DO UPDATE SET
                seen_digest = excluded.seen_digest,
                seen_definition = excluded.seen_definition,
                findings = excluded.findings,
                seen_ms = excluded.seen_ms",
            )
            .bind(&row.route)
            .bind(&row.name)
            .bind(&row.approved_digest)
            .bind(&row.seen_digest)
            .bind(&row.seen_definition)
            .bind(&row.findings)
            .bind(row.first_seen_ms)
            .bind(row.seen_ms)
            .bind(row.approved_ms)
            .bind(&row.approved_by)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Approves the tool's seen definition, which must still be `digest` (the
    /// one the admin reviewed). Returns the updated row.
    pub async fn approve_mcp_tool(
        &self,
        route: &str,
        name: &str,
        digest: &str,
        by: &str,
        at_ms: i64,
    ) -> Result<McpToolRow, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let seen: Option<String> =
                query("SELECT seen_digest FROM mcp_tools WHERE route = ? AND name = ?")
                    .bind(route)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.col("seen_digest"))
                    .transpose()?;
            match seen {
                None => return Err(StoreError::NotFound(format!("{route}/{name}"))),
                Some(seen) if seen != digest => {
                    return Err(StoreError::Invalid(format!(
                        "tool `{route}/{name}` is now listed with definition `{seen}`, not `{digest}`: review it again"
                    )));
                }
                Some(_) => {}
            }
            query(
            "UPDATE mcp_tools SET approved_digest = seen_digest, approved_ms = ?, approved_by = ?
             WHERE route = ? AND name = ?",
        )
        .bind(at_ms)
        .bind(by)
        .bind(route)
        .bind(name)
        .execute(&mut *tx)
        .await?;
            tx.commit().await?;
            self.mcp_tools()
                .await?
                .into_iter()
                .find(|r| r.route == route && r.name == name)
                .ok_or_else(|| StoreError::NotFound(format!("{route}/{name}")))
        })
    }

    /// Every pinned tool, by route and name.
    pub async fn mcp_tools(&self) -> Result<Vec<McpToolRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT route, name, approved_digest, seen_digest, seen_definition, findings,
                    first_seen_ms, seen_ms, approved_ms, approved_by
             FROM mcp_tools ORDER BY route, name",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(McpToolRow {
                        route: r.col("route")?,
                        name: r.col("name")?,
                        approved_digest: r.col("approved_digest")?,
                        seen_digest: r.col("seen_digest")?,
                        seen_definition: r.col("seen_definition")?,
                        findings: r.col("findings")?,
                        first_seen_ms: r.col("first_seen_ms")?,
                        seen_ms: r.col("seen_ms")?,
                        approved_ms: r.col("approved_ms")?,
                        approved_by: r.col("approved_by")?,
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(digest: &str, approved: Option<&str>) -> McpToolRow {
        McpToolRow {
            route: "files".into(),
            name: "read".into(),
            approved_digest: approved.map(str::to_string),
            seen_digest: digest.into(),
            seen_definition: format!("{{\"d\":\"{digest}\"}}"),
            findings: "[]".into(),
            first_seen_ms: 1,
            seen_ms: 1,
            approved_ms: approved.map(|_| 1),
            approved_by: approved.map(|_| "first-seen".to_string()),
        }
    }

    #[tokio::test]
    async fn a_changed_definition_keeps_the_old_approval_until_approved() {
        for db in crate::testing::TestDb::all().await {
            a_changed_definition_keeps_the_old_approval_until_approved_on(db.open().await).await;
        }
    }

    async fn a_changed_definition_keeps_the_old_approval_until_approved_on(store: Store) {
        store
            .upsert_mcp_tool(&row("aaa", Some("aaa")))
            .await
            .unwrap();
        // The server now lists another definition: the approval stays on the old one.
        store
            .upsert_mcp_tool(&row("bbb", Some("bbb")))
            .await
            .unwrap();
        let got = store.mcp_tools().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].approved_digest.as_deref(), Some("aaa"));
        assert_eq!(got[0].seen_digest, "bbb");
        // Approving a definition other than the one listed is refused.
        let err = store
            .approve_mcp_tool("files", "read", "ccc", "admin", 5)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        let err = store
            .approve_mcp_tool("files", "nope", "bbb", "admin", 5)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        let ok = store
            .approve_mcp_tool("files", "read", "bbb", "admin", 5)
            .await
            .unwrap();
        assert_eq!(ok.approved_digest.as_deref(), Some("bbb"));
        assert_eq!(ok.approved_by.as_deref(), Some("admin"));
    }
}
