//! Named admin credentials (migration `0016_admin_roles.sql`): bearer tokens
//! kept only as SHA-256, each with a name, a role and its history (who made
//! it, when it was last rotated, when it was revoked). The store knows roles
//! only as text; what a role may do is the admin crate's business.

use crate::backend::DbRow;
use crate::{Store, StoreError};

/// One admin credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRow {
    /// Opaque row id.
    pub id: String,
    /// Its unique name (the principal of the audit records it makes).
    pub name: String,
    /// Its role, as text (`owner`, `operator`, …).
    pub role: String,
    /// SHA-256 (hex) of the current token.
    pub token_sha256: String,
    /// When it was created (epoch seconds).
    pub created_at: i64,
    /// The credential that created it (`serve` for the bootstrap token).
    pub created_by: String,
    /// When its token was last replaced.
    pub rotated_at: Option<i64>,
    /// When it was revoked; a revoked credential is refused.
    pub revoked_at: Option<i64>,
    /// Whether it is the token `serve` wrote on first start.
    pub bootstrap: bool,
    /// `token` (a bearer token) or `certificate` (a client certificate the
    /// Portcullis CA issued; `token_sha256` is SHA-256 of its DER form).
    pub kind: String,
    /// A certificate credential's end of validity (epoch seconds).
    pub not_after: Option<i64>,
}

/// [`AdminTokenRow::kind`] of a bearer-token credential.
pub const ADMIN_KIND_TOKEN: &str = "token";
/// [`AdminTokenRow::kind`] of a client-certificate credential.
pub const ADMIN_KIND_CERTIFICATE: &str = "certificate";

impl Store {
    /// Stores a new credential; an existing name (even revoked) is a conflict,
    /// so a name always means one credential in the audit log.
    pub async fn add_admin_credential(&self, row: &AdminTokenRow) -> Result<(), StoreError> {
        let affected = crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "INSERT INTO admin_tokens (id, name, role, token_sha256, created_at, created_by, bootstrap, kind, not_after)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.role)
            .bind(&row.token_sha256)
            .bind(row.created_at)
            .bind(&row.created_by)
            .bind(i64::from(row.bootstrap))
            .bind(&row.kind)
            .bind(row.not_after)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if affected == 0 {
            return Err(StoreError::Conflict(row.name.clone()));
        }
        Ok(())
    }

    /// Every credential, revoked ones included, by name.
    pub async fn admin_credentials(&self) -> Result<Vec<AdminTokenRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT id, name, role, token_sha256, created_at, created_by, rotated_at, revoked_at, bootstrap,
                        kind, not_after
                 FROM admin_tokens ORDER BY name",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(token_from_row).collect()
        })
    }

    /// Replaces a live token credential's token hash (a certificate
    /// credential is replaced by issuing a new one), ending the console
    /// sessions and the step-up window the old token opened.
    pub async fn rotate_admin_credential(
        &self,
        name: &str,
        token_sha256: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let affected = crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "UPDATE admin_tokens SET token_sha256 = ?, rotated_at = ?
                 WHERE name = ? AND revoked_at IS NULL AND kind = 'token'",
            )
            .bind(token_sha256)
            .bind(now)
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if affected == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
        self.end_orphaned_console_sessions().await?;
        self.end_orphaned_step_up_windows().await
    }

    /// Revokes a live credential (ending its console sessions and its
    /// step-up window), refusing to revoke the last live `owner`
    /// (nobody could then manage credentials). The check and the update are
    /// one statement, so two concurrent revocations cannot leave none (and a
    /// read-then-write transaction, which SQLite may refuse to upgrade beside
    /// the audit writer, is avoided).
    pub async fn revoke_admin_credential(&self, name: &str, now: i64) -> Result<(), StoreError> {
        let live: Option<String> = crate::backend::with_pool!(&self.pool, |pool| {
            let affected = query(
                "UPDATE admin_tokens SET revoked_at = ?1
                 WHERE name = ?2 AND revoked_at IS NULL
                   AND (role != 'owner'
                        OR (SELECT COUNT(*) FROM admin_tokens
                            WHERE role = 'owner' AND revoked_at IS NULL) > 1)",
            )
            .bind(now)
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected();
            if affected == 1 {
                self.end_orphaned_console_sessions().await?;
                return self.end_orphaned_step_up_windows().await;
            }
            query_scalar("SELECT role FROM admin_tokens WHERE name = ? AND revoked_at IS NULL")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        match live {
            None => Err(StoreError::NotFound(name.to_string())),
            Some(_) => Err(StoreError::Invalid(format!(
                "`{name}` is the last owner credential: create another owner before revoking it"
            ))),
        }
    }
}

pub(crate) fn token_from_row(r: &impl DbRow) -> Result<AdminTokenRow, StoreError> {
    Ok(AdminTokenRow {
        id: r.col("id")?,
        name: r.col("name")?,
        role: r.col("role")?,
        token_sha256: r.col("token_sha256")?,
        created_at: r.col("created_at")?,
        created_by: r.col("created_by")?,
        rotated_at: r.col("rotated_at")?,
        revoked_at: r.col("revoked_at")?,
        bootstrap: r.col::<i64, _>("bootstrap")? != 0,
        kind: r.col("kind")?,
        not_after: r.col("not_after")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, role: &str, hash: &str) -> AdminTokenRow {
        AdminTokenRow {
            id: format!("id-{name}"),
            name: name.into(),
            role: role.into(),
            token_sha256: hash.into(),
            created_at: 1,
            created_by: "test".into(),
            rotated_at: None,
            revoked_at: None,
            bootstrap: false,
            kind: ADMIN_KIND_TOKEN.into(),
            not_after: None,
        }
    }

    #[tokio::test]
    async fn credentials_are_named_rotated_and_revoked_but_never_the_last_owner() {
        for db in crate::testing::TestDb::all().await {
            credentials_on(db.open().await).await;
        }
    }

    async fn credentials_on(store: Store) {
        store
            .add_admin_credential(&row("root", "owner", "h1"))
            .await
            .unwrap();
        store
            .add_admin_credential(&row("ops", "operator", "h2"))
            .await
            .unwrap();
        // Names and hashes are unique.
        for dup in [row("ops", "auditor", "h3"), row("other", "auditor", "h2")] {
            assert!(matches!(
                store.add_admin_credential(&dup).await,
                Err(StoreError::Conflict(_))
            ));
        }
        store.rotate_admin_credential("ops", "h4", 5).await.unwrap();
        let all = store.admin_credentials().await.unwrap();
        assert_eq!(all[0].name, "ops");
        assert_eq!(all[0].token_sha256, "h4");
        assert_eq!(all[0].rotated_at, Some(5));
        // The last owner stays; an operator goes, and stays gone.
        assert!(matches!(
            store.revoke_admin_credential("root", 6).await,
            Err(StoreError::Invalid(_))
        ));
        store.revoke_admin_credential("ops", 6).await.unwrap();
        assert!(matches!(
            store.revoke_admin_credential("ops", 7).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.rotate_admin_credential("ops", "h5", 7).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.revoke_admin_credential("ghost", 7).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store.admin_credentials().await.unwrap()[0].revoked_at,
            Some(6)
        );
    }
}
