//! Identity tables (migration `0006_identity.sql`): human admins with a sealed
//! TOTP secret, access tokens revoked one by one, disabled federated users and
//! agents' workload pins. The store moves only sealed bytes for TOTP secrets.

use crate::backend::DbRow;

use crate::{Store, StoreError};

/// One human admin or approver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUserRow {
    /// Login name.
    pub name: String,
    /// The TOTP secret, sealed by the caller.
    pub totp_sealed: Vec<u8>,
    /// When they enrolled (epoch seconds).
    pub created_at: i64,
    /// The last TOTP step accepted for them.
    pub last_step: i64,
}

/// One access token revoked before its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedTokenRow {
    /// The token's `jti`.
    pub jti: String,
    /// The token's own expiry: after it, the row is purged.
    pub expires_at: i64,
    /// When it was revoked.
    pub revoked_at: i64,
    /// Why (free text from the admin).
    pub reason: String,
}

/// An agent's workload pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostureRow {
    /// The agent.
    pub agent: String,
    /// The workload digest its posture statements must attest (`sha256:<hex>`).
    pub digest: String,
    /// Networks its token requests may come from (CIDRs); empty means any.
    pub networks: Vec<String>,
    /// When pinned.
    pub pinned_at: i64,
}

impl Store {
    /// The latest time (epoch seconds) each principal appears in the last
    /// `window` audit records.
    pub async fn last_seen(&self, window: u32) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .stored_rows(
                "SELECT {RECORD_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT ?",
                &[i64::from(window)],
            )
            .await?;
        let records = self
            .records_of(&rows, |r| r.outcome == portcullis_audit::Outcome::Allow)
            .await?;
        let mut seen: std::collections::BTreeMap<String, i64> = Default::default();
        for record in records {
            if let Some(principal) = record.principal {
                let at = seen.entry(principal).or_insert(record.time_ms);
                *at = (*at).max(record.time_ms);
            }
        }
        Ok(seen.into_iter().map(|(p, at)| (p, at / 1000)).collect())
    }

    /// Enrols an admin; an existing name is a conflict.
    pub async fn add_admin_user(&self, user: &AdminUserRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let result = query(
            "INSERT INTO admin_users (name, totp_sealed, created_at, last_step) VALUES (?, ?, ?, 0)
             ON CONFLICT(name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.totp_sealed)
        .bind(user.created_at)
        .execute(pool)
        .await?;
            if result.rows_affected() == 0 {
                return Err(StoreError::Conflict(user.name.clone()));
            }
            Ok(())
        })
    }

    /// One admin.
    pub async fn admin_user(&self, name: &str) -> Result<Option<AdminUserRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
                "SELECT name, totp_sealed, created_at, last_step FROM admin_users WHERE name = ?",
            )
            .bind(name)
            .fetch_optional(pool)
            .await?;
            row.map(|r| admin_from_row(&r)).transpose()
        })
    }

    /// Every admin, by name.
    pub async fn admin_users(&self) -> Result<Vec<AdminUserRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT name, totp_sealed, created_at, last_step FROM admin_users ORDER BY name",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(admin_from_row).collect()
        })
    }

    /// Removes an admin.
    pub async fn remove_admin_user(&self, name: &str) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let result = query("DELETE FROM admin_users WHERE name = ?")
                .bind(name)
                .execute(pool)
                .await?;
            if result.rows_affected() == 0 {
                return Err(StoreError::NotFound(name.to_string()));
            }
            Ok(())
        })
    }

    /// Records that a TOTP step was used, only if it is newer than the last
    /// one: `false` means the code (or an older one) was already used. One
    /// atomic statement, so two concurrent uses of one code cannot both win.
    pub async fn use_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let result =
                query("UPDATE admin_users SET last_step = ? WHERE name = ? AND last_step < ?")
                    .bind(step)
                    .bind(name)
                    .bind(step)
                    .execute(pool)
                    .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Gives a consumed time step back (the action it confirmed failed), unless
    /// a later code was used meanwhile.
    pub async fn release_totp_step(
        &self,
        name: &str,
        step: i64,
        previous: i64,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("UPDATE admin_users SET last_step = ? WHERE name = ? AND last_step = ?")
                .bind(previous)
                .bind(name)
                .bind(step)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Revokes one access token. Revoking it again keeps the first record.
    pub async fn revoke_token(&self, row: &RevokedTokenRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
            "INSERT INTO revoked_tokens (jti, expires_at, revoked_at, reason) VALUES (?, ?, ?, ?)
             ON CONFLICT(jti) DO NOTHING",
        )
        .bind(&row.jti)
        .bind(row.expires_at)
        .bind(row.revoked_at)
        .bind(&row.reason)
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Revoked tokens that have not expired yet; expired rows are deleted.
    pub async fn revoked_tokens(&self, now: i64) -> Result<Vec<RevokedTokenRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("DELETE FROM revoked_tokens WHERE expires_at <= ?")
                .bind(now)
                .execute(pool)
                .await?;
            let rows = query(
            "SELECT jti, expires_at, revoked_at, reason FROM revoked_tokens ORDER BY revoked_at, jti",
        )
        .fetch_all(pool)
        .await?;
            rows.iter()
                .map(|r| {
                    Ok(RevokedTokenRow {
                        jti: r.col("jti")?,
                        expires_at: r.col("expires_at")?,
                        revoked_at: r.col("revoked_at")?,
                        reason: r.col("reason")?,
                    })
                })
                .collect()
        })
    }

    /// Disables a federated user (`true`) or enables them again (`false`).
    pub async fn set_user_disabled(
        &self,
        subject: &str,
        disabled: bool,
        now: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            if disabled {
                query(
                    "INSERT INTO disabled_users (subject, disabled_at, reason) VALUES (?, ?, ?)
                 ON CONFLICT(subject) DO NOTHING",
                )
                .bind(subject)
                .bind(now)
                .bind(reason)
                .execute(pool)
                .await?;
            } else {
                let result = query("DELETE FROM disabled_users WHERE subject = ?")
                    .bind(subject)
                    .execute(pool)
                    .await?;
                if result.rows_affected() == 0 {
                    return Err(StoreError::NotFound(subject.to_string()));
                }
            }
            Ok(())
        })
    }

    /// Every disabled federated user.
    pub async fn disabled_users(&self) -> Result<Vec<String>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            Ok(
                query_scalar("SELECT subject FROM disabled_users ORDER BY subject")
                    .fetch_all(pool)
                    .await?,
            )
        })
    }

    /// Pins an agent to a workload digest and networks (replacing an earlier pin).
    pub async fn set_posture_pin(&self, pin: &PostureRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let exists = query("SELECT 1 FROM agents WHERE name = ?")
                .bind(&pin.agent)
                .fetch_optional(pool)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(pin.agent.clone()));
            }
            let networks = serde_json::to_string(&pin.networks)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            query(
            "INSERT INTO agent_posture_pins (agent, digest, networks, pinned_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(agent) DO UPDATE SET digest = excluded.digest,
                 networks = excluded.networks, pinned_at = excluded.pinned_at",
        )
        .bind(&pin.agent)
        .bind(&pin.digest)
        .bind(networks)
        .bind(pin.pinned_at)
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Every agent's pin.
    pub async fn posture_pins(&self) -> Result<Vec<PostureRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT agent, digest, networks, pinned_at FROM agent_posture_pins ORDER BY agent",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let networks: String = r.col("networks")?;
                    Ok(PostureRow {
                        agent: r.col("agent")?,
                        digest: r.col("digest")?,
                        networks: serde_json::from_str(&networks)
                            .map_err(|e| StoreError::Invalid(e.to_string()))?,
                        pinned_at: r.col("pinned_at")?,
                    })
                })
                .collect()
        })
    }
}

fn admin_from_row(r: &impl DbRow) -> Result<AdminUserRow, StoreError> {
    Ok(AdminUserRow {
        name: r.col("name")?,
        totp_sealed: r.col("totp_sealed")?,
        created_at: r.col("created_at")?,
        last_step: r.col("last_step")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admins_totp_steps_revocations_and_pins() {
        for db in crate::testing::TestDb::all().await {
            admins_totp_steps_revocations_and_pins_on(db.open().await).await;
        }
    }

    async fn admins_totp_steps_revocations_and_pins_on(store: Store) {
        let alice = AdminUserRow {
            name: "alice".into(),
            totp_sealed: vec![1, 2, 3],
            created_at: 10,
            last_step: 0,
        };
        store.add_admin_user(&alice).await.unwrap();
        assert!(matches!(
            store.add_admin_user(&alice).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.admin_user("alice").await.unwrap().unwrap(), alice);
        // A step is used once; an older one is refused too.
        assert!(store.use_totp_step("alice", 100).await.unwrap());
        assert!(!store.use_totp_step("alice", 100).await.unwrap());
        assert!(!store.use_totp_step("alice", 99).await.unwrap());
        assert!(store.use_totp_step("alice", 101).await.unwrap());
        assert!(!store.use_totp_step("nobody", 500).await.unwrap());
        store.remove_admin_user("alice").await.unwrap();
        assert!(store.admin_users().await.unwrap().is_empty());

        let revoked = |jti: &str, exp| RevokedTokenRow {
            jti: jti.into(),
            expires_at: exp,
            revoked_at: 5,
            reason: "leaked".into(),
        };
        store.revoke_token(&revoked("a", 100)).await.unwrap();
        store.revoke_token(&revoked("b", 200)).await.unwrap();
        store.revoke_token(&revoked("b", 900)).await.unwrap();
        let live: Vec<_> = store.revoked_tokens(150).await.unwrap();
        assert_eq!(live, [revoked("b", 200)]);

        store
            .set_user_disabled("bob", true, 1, "left")
            .await
            .unwrap();
        assert_eq!(store.disabled_users().await.unwrap(), ["bob"]);
        store.set_user_disabled("bob", false, 2, "").await.unwrap();
        assert!(store.disabled_users().await.unwrap().is_empty());

        let pin = PostureRow {
            agent: "ghost".into(),
            digest: "sha256:00".into(),
            networks: vec!["10.0.0.0/8".into()],
            pinned_at: 1,
        };
        assert!(matches!(
            store.set_posture_pin(&pin).await,
            Err(StoreError::NotFound(_))
        ));
    }
}
