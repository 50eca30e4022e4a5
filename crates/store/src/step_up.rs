//! Step-up windows (migration `0035_step_up_windows.sql`): one TOTP or
//! passkey confirmation by a human admin opens a short window in which the
//! credential that made it takes sensitive actions without a new code
//! (`portcullis_admin`'s `stepup.rs` says when). They are kept here, not in
//! one replica's memory, so a window opened through one replica of a
//! cluster is open on every other, and closed on all by one close.
//!
//! A window belongs to its holder (the admin credential's row id, or the
//! identity id of a console session opened by an OIDC login) and remembers
//! the stored hash the credential authenticated with: a lookup honours it
//! only while that credential is live with that hash, so a rotation or a
//! revocation closes it at once, even for a replica that has not yet
//! reloaded its credentials or a window opened there a moment after the
//! change; the rows are deleted as well. Expired rows are dropped whenever
//! a window opens, and there is at most one per holder, so the table stays
//! as small as the number of admins acting in the last few minutes.

use crate::backend::DbRow;
use crate::{Store, StoreError};

/// One open step-up window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpWindowRow {
    /// Whose window: an admin credential's row id, or an OIDC login
    /// session's identity id.
    pub holder: String,
    /// The stored hash (`admin_tokens.token_sha256`) the credential
    /// authenticated with; `None` for an OIDC login's session, which has no
    /// credential.
    pub credential_sha256: Option<String>,
    /// The human admin who confirmed.
    pub admin_user: String,
    /// When it closes (epoch milliseconds).
    pub expires_ms: i64,
}

impl Store {
    /// Opens (or renews, replacing its human) the holder's window, after
    /// dropping every window expired at `now_ms`.
    pub async fn open_step_up_window(
        &self,
        row: &StepUpWindowRow,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("DELETE FROM step_up_windows WHERE expires_ms <= ?")
                .bind(now_ms)
                .execute(pool)
                .await?;
            query(
                "INSERT INTO step_up_windows (holder, credential_sha256, admin_user, expires_ms)
                 VALUES (?, ?, ?, ?)
                 ON CONFLICT (holder) DO UPDATE SET
                     credential_sha256 = excluded.credential_sha256,
                     admin_user = excluded.admin_user,
                     expires_ms = excluded.expires_ms",
            )
            .bind(&row.holder)
            .bind(&row.credential_sha256)
            .bind(&row.admin_user)
            .bind(row.expires_ms)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The holder's window open at `now_ms`, if it was opened with
    /// `credential_sha256` (the hash the caller authenticated with now) and
    /// that credential is still live with that hash.
    pub async fn step_up_window(
        &self,
        holder: &str,
        credential_sha256: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<StepUpWindowRow>, StoreError> {
        let row = crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
                "SELECT w.holder, w.credential_sha256, w.admin_user, w.expires_ms
                 FROM step_up_windows w
                 WHERE w.holder = ? AND w.expires_ms > ?
                   AND (w.credential_sha256 IS NULL OR EXISTS (
                       SELECT 1 FROM admin_tokens t
                       WHERE t.id = w.holder AND t.token_sha256 = w.credential_sha256
                         AND t.revoked_at IS NULL))",
            )
            .bind(holder)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(r) => Some(StepUpWindowRow {
                    holder: r.col("holder")?,
                    credential_sha256: r.col("credential_sha256")?,
                    admin_user: r.col("admin_user")?,
                    expires_ms: r.col("expires_ms")?,
                }),
                None => None,
            }
        });
        // A window opened by one credential never serves another (nor an
        // OIDC login's session a credential, or the reverse).
        Ok(row.filter(|w| w.credential_sha256.as_deref() == credential_sha256))
    }

    /// Closes the holder's window (`DELETE /admin/v1/session/step-up`).
    pub async fn close_step_up_window(&self, holder: &str) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("DELETE FROM step_up_windows WHERE holder = ?")
                .bind(holder)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Forgets the windows whose credential is no longer live with the hash
    /// they were opened with (after a rotation or a revocation; the lookup
    /// refuses them anyway).
    pub(crate) async fn end_orphaned_step_up_windows(&self) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "DELETE FROM step_up_windows WHERE credential_sha256 IS NOT NULL
                 AND NOT EXISTS (
                     SELECT 1 FROM admin_tokens t
                     WHERE t.id = step_up_windows.holder
                       AND t.token_sha256 = step_up_windows.credential_sha256
                       AND t.revoked_at IS NULL)",
            )
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Live and expired window rows, for tests of the bound.
    #[cfg(test)]
    async fn step_up_window_rows(&self) -> i64 {
        crate::backend::with_pool!(&self.pool, |pool| {
            query_scalar("SELECT COUNT(*) FROM step_up_windows")
                .fetch_one(pool)
                .await
                .unwrap()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AdminTokenRow;

    fn credential(name: &str, hash: &str, role: &str) -> AdminTokenRow {
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
            kind: crate::ADMIN_KIND_TOKEN.into(),
            not_after: None,
        }
    }

    fn window(holder: &str, hash: Option<&str>, user: &str, expires_ms: i64) -> StepUpWindowRow {
        StepUpWindowRow {
            holder: holder.into(),
            credential_sha256: hash.map(str::to_string),
            admin_user: user.into(),
            expires_ms,
        }
    }

    #[tokio::test]
    async fn windows_are_shared_bound_expire_and_close_on_both_backends() {
        for db in crate::testing::TestDb::all().await {
            // Two handles on one database: two replicas.
            windows_on(db.open().await, db.open().await).await;
        }
    }

    async fn windows_on(a: Store, b: Store) {
        for (name, hash, role) in [("root", "h1", "owner"), ("ops", "h2", "owner")] {
            a.add_admin_credential(&credential(name, hash, role))
                .await
                .unwrap();
        }
        // Opened through A, open through B, for that credential and hash.
        a.open_step_up_window(&window("id-root", Some("h1"), "alice", 10_000), 100)
            .await
            .unwrap();
        let seen = b.step_up_window("id-root", Some("h1"), 200).await.unwrap();
        assert_eq!(seen.unwrap().admin_user, "alice");
        assert!(
            b.step_up_window("id-ops", Some("h2"), 200)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            b.step_up_window("id-root", Some("h2"), 200)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            b.step_up_window("id-root", None, 200)
                .await
                .unwrap()
                .is_none()
        );
        // It ends at its expiry…
        assert!(
            b.step_up_window("id-root", Some("h1"), 10_000)
                .await
                .unwrap()
                .is_none()
        );
        // …and a close through B closes it for A.
        b.close_step_up_window("id-root").await.unwrap();
        assert!(
            a.step_up_window("id-root", Some("h1"), 200)
                .await
                .unwrap()
                .is_none()
        );

        // A rotation closes it on every handle, also a window opened with
        // the old hash after the rotation (a replica that had not reloaded).
        a.open_step_up_window(&window("id-root", Some("h1"), "alice", 10_000), 100)
            .await
            .unwrap();
        b.rotate_admin_credential("root", "h1b", 300).await.unwrap();
        assert!(
            a.step_up_window("id-root", Some("h1"), 400)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(a.step_up_window_rows().await, 0, "rotation deletes the row");
        a.open_step_up_window(&window("id-root", Some("h1"), "alice", 10_000), 400)
            .await
            .unwrap();
        assert!(
            b.step_up_window("id-root", Some("h1"), 500)
                .await
                .unwrap()
                .is_none()
        );
        // The new token's own window works.
        a.open_step_up_window(&window("id-root", Some("h1b"), "bob", 10_000), 500)
            .await
            .unwrap();
        let seen = b.step_up_window("id-root", Some("h1b"), 600).await.unwrap();
        assert_eq!(seen.unwrap().admin_user, "bob", "renewed for its new human");

        // A revocation closes it too.
        a.open_step_up_window(&window("id-ops", Some("h2"), "carol", 10_000), 600)
            .await
            .unwrap();
        b.revoke_admin_credential("ops", 700).await.unwrap();
        assert!(
            a.step_up_window("id-ops", Some("h2"), 800)
                .await
                .unwrap()
                .is_none()
        );

        // An OIDC login's session has no credential: its window needs none.
        a.open_step_up_window(&window("oidc-login:x", None, "oidc:dana", 10_000), 800)
            .await
            .unwrap();
        assert!(
            b.step_up_window("oidc-login:x", None, 900)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            b.step_up_window("oidc-login:x", Some("h1b"), 900)
                .await
                .unwrap()
                .is_none()
        );

        // Expired rows go when the next window opens: bounded.
        for i in 0..50 {
            a.open_step_up_window(&window(&format!("oidc-login:{i}"), None, "u", 2_000), 900)
                .await
                .unwrap();
        }
        assert_eq!(a.step_up_window_rows().await, 52);
        a.open_step_up_window(&window("oidc-login:y", None, "u", 20_000), 15_000)
            .await
            .unwrap();
        assert_eq!(
            a.step_up_window_rows().await,
            1,
            "only the live window is left"
        );
    }
}
