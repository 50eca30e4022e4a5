//! Agents' public signing keys (migration `0005_tokens.sql`): the JWKs the token
//! endpoint verifies client assertions with. The store keeps the JSON text; the
//! identity crate parses and checks it.

use crate::backend::DbRow;

use crate::{Store, StoreError};

/// One registered public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentKeyRow {
    /// RFC 7638 thumbprint of the key.
    pub kid: String,
    /// The agent it belongs to.
    pub agent: String,
    /// The public JWK, as JSON text.
    pub jwk: String,
    /// When it was registered (epoch seconds).
    pub created_at: i64,
}

impl Store {
    /// Registers a public key for an existing agent. A key already registered
    /// (to anyone) is a conflict: one key, one agent.
    pub async fn add_agent_key(&self, key: &AgentKeyRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let exists = query("SELECT 1 FROM agents WHERE name = ?")
                .bind(&key.agent)
                .fetch_optional(pool)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(key.agent.clone()));
            }
            let result = query(
                "INSERT INTO agent_keys (kid, agent, jwk, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(kid) DO NOTHING",
            )
            .bind(&key.kid)
            .bind(&key.agent)
            .bind(&key.jwk)
            .bind(key.created_at)
            .execute(pool)
            .await?;
            if result.rows_affected() == 0 {
                return Err(StoreError::Conflict(key.kid.clone()));
            }
            Ok(())
        })
    }

    /// All registered keys, or those of one agent, oldest first.
    pub async fn agent_keys(&self, agent: Option<&str>) -> Result<Vec<AgentKeyRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT kid, agent, jwk, created_at FROM agent_keys
             WHERE (?1 IS NULL OR agent = ?1) ORDER BY created_at, kid",
            )
            .bind(agent)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(AgentKeyRow {
                        kid: r.col("kid")?,
                        agent: r.col("agent")?,
                        jwk: r.col("jwk")?,
                        created_at: r.col("created_at")?,
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentRow, CertificateRow};

    #[tokio::test]
    async fn keys_belong_to_existing_agents_once() {
        for db in crate::testing::TestDb::all().await {
            keys_belong_to_existing_agents_once_on(db.open().await).await;
        }
    }

    async fn keys_belong_to_existing_agents_once_on(store: Store) {
        let key = |kid: &str, agent: &str| AgentKeyRow {
            kid: kid.into(),
            agent: agent.into(),
            jwk: "{}".into(),
            created_at: 1,
        };
        assert!(matches!(
            store.add_agent_key(&key("k1", "bot")).await,
            Err(StoreError::NotFound(_))
        ));
        let bot = AgentRow {
            name: "bot".into(),
            roles: vec!["r".into()],
            created_at: 1,
            revoked_at: None,
        };
        let cert = CertificateRow {
            serial: "01".into(),
            agent: "bot".into(),
            spiffe_id: "spiffe://t/agent/bot".into(),
            issued_at: 1,
            not_after: 2,
            revoked_at: None,
        };
        store.create_agent(&bot, &cert).await.unwrap();
        store.add_agent_key(&key("k1", "bot")).await.unwrap();
        assert!(matches!(
            store.add_agent_key(&key("k1", "bot")).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.agent_keys(Some("bot")).await.unwrap().len(), 1);
        assert!(store.agent_keys(Some("eve")).await.unwrap().is_empty());
    }
}
