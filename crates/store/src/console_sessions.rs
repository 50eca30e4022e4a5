//! Console sessions (migration `0021_console_sessions.sql`): the web
//! console's logins, kept here so they survive a restart and are honoured by
//! every replica. A row holds SHA-256 of the session id (never the id: the
//! cookie value exists only in the browser) and the token hash of the
//! credential that logged in; a lookup joins it with that credential while
//! it is live, so a rotated or revoked credential ends its sessions at once,
//! whichever replica served the change. A session of a human who logged in
//! at an OIDC issuer has no credential: its row carries the issuer, name and
//! role of the login instead, and lives until logout or its timeouts.

use crate::backend::DbRow;
use crate::{AdminTokenRow, Store, StoreError};

/// One console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSessionRow {
    /// SHA-256 (hex) of the session id.
    pub id_sha256: String,
    /// `token_sha256` of the admin credential that logged in; `None` for
    /// an OIDC login.
    pub credential_sha256: Option<String>,
    /// Who logged in at an OIDC issuer, for a session without a credential.
    pub login: Option<ConsoleSessionLogin>,
    /// When it was opened (epoch milliseconds).
    pub created_ms: i64,
    /// When it was last used, to the toucher's granularity.
    pub last_seen_ms: i64,
}

/// The human of a console session opened by an OIDC login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSessionLogin {
    /// The issuer they logged in at.
    pub issuer: String,
    /// Their name (`oidc:<e-mail or subject>`).
    pub name: String,
    /// The admin role their login was given.
    pub role: String,
}

/// A live session: an OIDC login's, or one whose credential is live, with
/// that credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConsoleSession {
    /// The session.
    pub session: ConsoleSessionRow,
    /// Its (unrevoked) credential; `None` for an OIDC login.
    pub credential: Option<AdminTokenRow>,
}

impl Store {
    /// Opens a session: first forgets sessions last used before
    /// `idle_before` or opened before `created_before` (epoch ms), then,
    /// beyond `max` sessions, the least recently used ones, so logins cannot
    /// grow the table without bound.
    pub async fn open_console_session(
        &self,
        row: &ConsoleSessionRow,
        idle_before: i64,
        created_before: i64,
        max: i64,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("DELETE FROM console_sessions WHERE last_seen_ms < ? OR created_ms < ?")
                .bind(idle_before)
                .bind(created_before)
                .execute(pool)
                .await?;
            query(
                "INSERT INTO console_sessions (id_sha256, credential_sha256, login_issuer,
                     login_name, login_role, created_ms, last_seen_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&row.id_sha256)
            .bind(&row.credential_sha256)
            .bind(row.login.as_ref().map(|l| &l.issuer))
            .bind(row.login.as_ref().map(|l| &l.name))
            .bind(row.login.as_ref().map(|l| &l.role))
            .bind(row.created_ms)
            .bind(row.last_seen_ms)
            .execute(pool)
            .await?;
            // "Everything after the first `max`": SQLite needs a LIMIT
            // before OFFSET (-1 is none), PostgreSQL takes OFFSET alone.
            query(if IS_POSTGRES {
                "DELETE FROM console_sessions WHERE id_sha256 IN (
                     SELECT id_sha256 FROM console_sessions
                     ORDER BY last_seen_ms DESC, id_sha256 OFFSET ?)"
            } else {
                "DELETE FROM console_sessions WHERE id_sha256 IN (
                     SELECT id_sha256 FROM console_sessions
                     ORDER BY last_seen_ms DESC, id_sha256 LIMIT -1 OFFSET ?)"
            })
            .bind(max)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The session with id hash `id_sha256`, if its credential is live (or
    /// it is an OIDC login's). Expiry is the caller's to judge (it knows the
    /// timeouts).
    pub async fn console_session(
        &self,
        id_sha256: &str,
    ) -> Result<Option<LiveConsoleSession>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
                "SELECT s.id_sha256, s.credential_sha256, s.login_issuer, s.login_name,
                        s.login_role, s.created_ms, s.last_seen_ms,
                        t.id, t.name, t.role, t.token_sha256, t.created_at, t.created_by,
                        t.rotated_at, t.revoked_at, t.bootstrap, t.kind, t.not_after
                 FROM console_sessions s
                 LEFT JOIN admin_tokens t
                   ON t.token_sha256 = s.credential_sha256 AND t.revoked_at IS NULL
                 WHERE s.id_sha256 = ?",
            )
            .bind(id_sha256)
            .fetch_optional(pool)
            .await?;
            let Some(r) = row else {
                return Ok(None);
            };
            let credential = match r.col::<Option<String>, _>("id")? {
                Some(_) => Some(crate::admin_tokens::token_from_row(&r)?),
                None => None,
            };
            let login = match (
                r.col::<Option<String>, _>("login_issuer")?,
                r.col::<Option<String>, _>("login_name")?,
                r.col::<Option<String>, _>("login_role")?,
            ) {
                (Some(issuer), Some(name), Some(role)) => {
                    Some(ConsoleSessionLogin { issuer, name, role })
                }
                _ => None,
            };
            let credential_sha256: Option<String> = r.col("credential_sha256")?;
            // A session with a credential lives only while it does (revoked,
            // rotated: gone); one without must be an OIDC login's.
            let live = matches!(
                (&credential_sha256, &credential, &login),
                (Some(_), Some(_), _) | (None, None, Some(_))
            );
            if !live {
                return Ok(None);
            }
            Ok(Some(LiveConsoleSession {
                session: ConsoleSessionRow {
                    id_sha256: r.col("id_sha256")?,
                    credential_sha256,
                    login,
                    created_ms: r.col("created_ms")?,
                    last_seen_ms: r.col("last_seen_ms")?,
                },
                credential,
            }))
        })
    }

    /// Records that a session was used at `now_ms`.
    pub async fn touch_console_session(
        &self,
        id_sha256: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("UPDATE console_sessions SET last_seen_ms = ? WHERE id_sha256 = ?")
                .bind(now_ms)
                .bind(id_sha256)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Ends a session (logout, expiry).
    pub async fn end_console_session(&self, id_sha256: &str) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("DELETE FROM console_sessions WHERE id_sha256 = ?")
                .bind(id_sha256)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Forgets the sessions whose credential is no longer live (after a
    /// rotation or a revocation; the lookup refuses them anyway).
    pub(crate) async fn end_orphaned_console_sessions(&self) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "DELETE FROM console_sessions WHERE credential_sha256 IS NOT NULL
                 AND credential_sha256 NOT IN (
                     SELECT token_sha256 FROM admin_tokens WHERE revoked_at IS NULL)",
            )
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(name: &str, hash: &str) -> AdminTokenRow {
        AdminTokenRow {
            id: format!("id-{name}"),
            name: name.into(),
            role: "owner".into(),
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

    fn session(id: &str, credential: &str, at: i64) -> ConsoleSessionRow {
        ConsoleSessionRow {
            id_sha256: id.into(),
            credential_sha256: Some(credential.into()),
            login: None,
            created_ms: at,
            last_seen_ms: at,
        }
    }

    #[tokio::test]
    async fn sessions_live_with_their_credential_expire_and_are_bounded() {
        for db in crate::testing::TestDb::all().await {
            sessions_on(db.open().await).await;
        }
    }

    async fn sessions_on(store: Store) {
        for (name, hash) in [("root", "h1"), ("ops", "h2"), ("aud", "h3")] {
            store
                .add_admin_credential(&credential(name, hash))
                .await
                .unwrap();
        }
        store
            .open_console_session(&session("s1", "h1", 100), 0, 0, 10)
            .await
            .unwrap();
        store
            .open_console_session(&session("s2", "h2", 100), 0, 0, 10)
            .await
            .unwrap();
        store
            .open_console_session(&session("s3", "h3", 100), 0, 0, 10)
            .await
            .unwrap();
        let live = store.console_session("s1").await.unwrap().unwrap();
        assert_eq!(live.credential.unwrap().name, "root");
        assert_eq!(live.session, session("s1", "h1", 100));
        assert!(store.console_session("nope").await.unwrap().is_none());
        store.touch_console_session("s1", 150).await.unwrap();
        let live = store.console_session("s1").await.unwrap().unwrap();
        assert_eq!(
            (live.session.created_ms, live.session.last_seen_ms),
            (100, 150)
        );
        // Rotating or revoking the credential ends its sessions.
        store.rotate_admin_credential("ops", "h4", 5).await.unwrap();
        assert!(store.console_session("s2").await.unwrap().is_none());
        store.revoke_admin_credential("aud", 5).await.unwrap();
        assert!(store.console_session("s3").await.unwrap().is_none());
        // Logout.
        store.end_console_session("s1").await.unwrap();
        assert!(store.console_session("s1").await.unwrap().is_none());
        // Expired ones go when the next opens; beyond `max`, the least
        // recently used.
        store
            .open_console_session(&session("old", "h1", 10), 0, 0, 10)
            .await
            .unwrap();
        store
            .open_console_session(&session("a", "h1", 200), 100, 0, 10)
            .await
            .unwrap();
        assert!(store.console_session("old").await.unwrap().is_none());
        store
            .open_console_session(&session("b", "h1", 300), 100, 0, 1)
            .await
            .unwrap();
        assert!(store.console_session("a").await.unwrap().is_none());
        assert!(store.console_session("b").await.unwrap().is_some());
        // An OIDC login's session has no credential: a credential change
        // leaves it be; logout ends it.
        let login = ConsoleSessionLogin {
            issuer: "https://idp".into(),
            name: "oidc:alice@x".into(),
            role: "approver".into(),
        };
        let oidc = ConsoleSessionRow {
            credential_sha256: None,
            login: Some(login.clone()),
            ..session("s5", "", 100)
        };
        store.open_console_session(&oidc, 0, 0, 10).await.unwrap();
        store.revoke_admin_credential("root", 6).await.unwrap();
        let live = store.console_session("s5").await.unwrap().unwrap();
        assert_eq!((live.credential, live.session.login), (None, Some(login)));
        store.end_console_session("s5").await.unwrap();
        assert!(store.console_session("s5").await.unwrap().is_none());
    }
}
