//! OAuth clients of the authorization-code flow and their refresh tokens
//! (migration `0017_oauth_authorization.sql`). Refresh tokens are stored by
//! SHA-256 only; a refresh is one transaction that marks the presented token
//! used, so two concurrent refreshes with the same token cannot both win, and
//! the loser is treated as reuse.

use crate::backend::DbRow;
use crate::{Store, StoreError};

/// One registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClientRow {
    /// The client id the gateway made.
    pub client_id: String,
    /// The name the client gave (shown on the consent page).
    pub client_name: String,
    /// Its exact redirect URIs.
    pub redirect_uris: Vec<String>,
    /// When it registered (epoch seconds).
    pub created_at: i64,
    /// The source address of the registration.
    pub registered_by: String,
    /// When an admin revoked it.
    pub revoked_at: Option<i64>,
}

/// One refresh token (by hash) and the grant it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRow {
    /// SHA-256 (hex) of the token.
    pub token_hash: String,
    /// The family: every token descended from one authorization.
    pub family: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The user it acts for (a federated user's subject).
    pub user_name: String,
    /// A federated user's OIDC issuer; `None`: a local user.
    pub user_issuer: Option<String>,
    /// A federated user's groups.
    pub user_groups: Vec<String>,
    /// The resource (RFC 8707) its access tokens are for.
    pub resource: String,
    /// The granted scope.
    pub scope: String,
    /// The DPoP key thumbprint the family is bound to.
    pub jkt: Option<String>,
    /// Whether the user logged in with a second factor.
    pub mfa: bool,
    /// When issued.
    pub created_at: i64,
    /// When it stops working.
    pub expires_at: i64,
    /// The access token issued with it (revoked with the family).
    pub access_jti: String,
    /// That access token's expiry.
    pub access_exp: i64,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// Fresh: now marked used; the caller issues its successor.
    Fresh(Box<RefreshTokenRow>),
    /// Already used, or its family revoked: the family is now revoked and the
    /// `jti`s of its live access tokens are in `revoked_tokens`.
    Reused {
        /// The family revoked.
        family: String,
        /// Its client.
        client_id: String,
    },
    /// Unknown or expired, or its client revoked.
    Invalid,
}

fn refresh_row(r: &impl DbRow) -> Result<RefreshTokenRow, StoreError> {
    Ok(RefreshTokenRow {
        token_hash: r.col("token_hash")?,
        family: r.col("family")?,
        client_id: r.col("client_id")?,
        user_name: r.col("user_name")?,
        user_issuer: r.col("user_issuer")?,
        user_groups: serde_json::from_str(&r.col::<String, _>("user_groups")?).unwrap_or_default(),
        resource: r.col("resource")?,
        scope: r.col("scope")?,
        jkt: r.col("jkt")?,
        mfa: r.col::<i64, _>("mfa")? != 0,
        created_at: r.col("created_at")?,
        expires_at: r.col("expires_at")?,
        access_jti: r.col("access_jti")?,
        access_exp: r.col("access_exp")?,
    })
}

fn client_row(r: &impl DbRow) -> Result<OAuthClientRow, StoreError> {
    let uris: String = r.col("redirect_uris")?;
    Ok(OAuthClientRow {
        client_id: r.col("client_id")?,
        client_name: r.col("client_name")?,
        redirect_uris: serde_json::from_str(&uris).unwrap_or_default(),
        created_at: r.col("created_at")?,
        registered_by: r.col("registered_by")?,
        revoked_at: r.col("revoked_at")?,
    })
}

/// Revokes `family` inside the transaction `$tx`: its rows, and its live
/// access tokens. A macro, not a function, so one text serves the
/// transaction of either backend (used inside [`crate::backend::with_pool!`]).
macro_rules! revoke_family_in {
    ($tx:expr, $family:expr, $now:expr, $reason:expr) => {{
        query(
            "INSERT INTO revoked_tokens (jti, expires_at, revoked_at, reason)
             SELECT access_jti, access_exp, ?, ? FROM oauth_refresh_tokens
             WHERE family = ? AND access_exp > ?
             ON CONFLICT(jti) DO NOTHING",
        )
        .bind($now)
        .bind($reason)
        .bind($family)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
        query(
            "UPDATE oauth_refresh_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
        )
        .bind($now)
        .bind($family)
        .execute(&mut *$tx)
        .await?;
    }};
}

impl Store {
    /// Registers a client; `max_clients` live (unrevoked) clients at most,
    /// checked in the same transaction. `Ok(false)` when full.
    pub async fn add_oauth_client(
        &self,
        client: &OAuthClientRow,
        max_clients: i64,
    ) -> Result<bool, StoreError> {
        // One statement: the count and the insert see the same state, and
        // the write lock is asked for at once (a read-then-write transaction
        // would fail on a concurrent writer instead of waiting).
        let uris = serde_json::to_string(&client.redirect_uris).unwrap_or_else(|_| "[]".into());
        crate::backend::with_pool!(&self.pool, |pool| {
            // PostgreSQL: the write lock makes the count and the insert one
            // step across replicas too.
            let mut tx = begin_write(pool).await?;
            let inserted = query(
                "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, created_at, registered_by)
                 SELECT ?, ?, ?, ?, ?
                 WHERE (SELECT COUNT(*) FROM oauth_clients WHERE revoked_at IS NULL) < ?",
            )
            .bind(&client.client_id)
            .bind(&client.client_name)
            .bind(&uris)
            .bind(client.created_at)
            .bind(&client.registered_by)
            .bind(max_clients)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(inserted == 1)
        })
    }

    /// Records a client that named itself by its metadata document (Client
    /// ID Metadata Documents): no cap (nothing was registered, the document's
    /// host is allow-listed), the latest name and redirect URIs kept. The
    /// row lets refresh tokens name the client and an admin list and
    /// revoke it; a revoked row stays revoked.
    pub async fn remember_oauth_client(&self, client: &OAuthClientRow) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&client.redirect_uris).unwrap_or_else(|_| "[]".into());
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, created_at, registered_by)
                 VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (client_id) DO UPDATE SET client_name = excluded.client_name,
                     redirect_uris = excluded.redirect_uris",
            )
            .bind(&client.client_id)
            .bind(&client.client_name)
            .bind(&uris)
            .bind(client.created_at)
            .bind(&client.registered_by)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// One client, revoked or not.
    pub async fn oauth_client(
        &self,
        client_id: &str,
    ) -> Result<Option<OAuthClientRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query("SELECT * FROM oauth_clients WHERE client_id = ?")
                .bind(client_id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(client_row).transpose()
        })
    }

    /// Every client, oldest first.
    pub async fn oauth_clients(&self) -> Result<Vec<OAuthClientRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query("SELECT * FROM oauth_clients ORDER BY created_at, client_id")
                .fetch_all(pool)
                .await?;
            rows.iter().map(client_row).collect()
        })
    }

    /// Revokes a client and every refresh family it holds (and their live
    /// access tokens). `Ok(false)` when there is no such client.
    pub async fn revoke_oauth_client(&self, client_id: &str, now: i64) -> Result<bool, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let updated = query(
                "UPDATE oauth_clients SET revoked_at = COALESCE(revoked_at, ?) WHERE client_id = ?",
            )
            .bind(now)
            .bind(client_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                return Ok(false);
            }
            let families: Vec<String> = query_scalar(
                "SELECT DISTINCT family FROM oauth_refresh_tokens WHERE client_id = ? AND revoked_at IS NULL",
            )
            .bind(client_id)
            .fetch_all(&mut *tx)
            .await?;
            for family in families {
                revoke_family_in!(tx, &family, now, "oauth client revoked");
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Revokes one refresh family and its live access tokens (an
    /// authorization code redeemed twice).
    pub async fn revoke_refresh_family(
        &self,
        family: &str,
        now: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            revoke_family_in!(tx, family, now, reason);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Stores a new refresh token (the first of a family, or a successor).
    pub async fn add_refresh_token(&self, row: &RefreshTokenRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "INSERT INTO oauth_refresh_tokens (token_hash, family, client_id, user_name, user_issuer,
                   user_groups, resource, scope, jkt, mfa, created_at, expires_at, access_jti, access_exp)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&row.token_hash)
            .bind(&row.family)
            .bind(&row.client_id)
            .bind(&row.user_name)
            .bind(&row.user_issuer)
            .bind(serde_json::to_string(&row.user_groups).unwrap_or_else(|_| "[]".into()))
            .bind(&row.resource)
            .bind(&row.scope)
            .bind(&row.jkt)
            .bind(i64::from(row.mfa))
            .bind(row.created_at)
            .bind(row.expires_at)
            .bind(&row.access_jti)
            .bind(row.access_exp)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Presents a refresh token: a fresh one is marked used and returned;
    /// a used one revokes its family (reuse detection, RFC 9700 §4.14.2).
    pub async fn use_refresh_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            // The write first, so the transaction holds the write lock from its
            // start: a fresh token is marked used only if it is still unused,
            // unrevoked, unexpired and its client live, so of two concurrent
            // refreshes with one token exactly one wins and the other is reuse.
            let marked = query(
                "UPDATE oauth_refresh_tokens SET used_at = ?
                 WHERE token_hash = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?
                   AND client_id IN (SELECT client_id FROM oauth_clients WHERE revoked_at IS NULL)",
            )
            .bind(now)
            .bind(token_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let row = query(
                "SELECT t.token_hash, t.family, t.client_id, t.user_name, t.user_issuer, t.user_groups,
                   t.resource, t.scope, t.jkt,
                   t.mfa, t.created_at, t.expires_at, t.access_jti, t.access_exp,
                   t.used_at, t.revoked_at AS revoked_at, c.revoked_at AS client_revoked
                 FROM oauth_refresh_tokens t JOIN oauth_clients c ON c.client_id = t.client_id
                 WHERE t.token_hash = ?",
            )
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(RefreshOutcome::Invalid);
            };
            let refresh = refresh_row(&row)?;
            if marked == 1 {
                tx.commit().await?;
                return Ok(RefreshOutcome::Fresh(Box::new(refresh)));
            }
            let revoked: Option<i64> = row.col("revoked_at")?;
            let client_revoked: Option<i64> = row.col("client_revoked")?;
            let used: Option<i64> = row.col("used_at")?;
            if client_revoked.is_some() || (used.is_none() && revoked.is_none()) {
                // A revoked client's, or expired unused.
                return Ok(RefreshOutcome::Invalid);
            }
            revoke_family_in!(tx, &refresh.family, now, "refresh token reused");
            tx.commit().await?;
            Ok(RefreshOutcome::Reused {
                family: refresh.family,
                client_id: refresh.client_id,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str) -> OAuthClientRow {
        OAuthClientRow {
            client_id: id.into(),
            client_name: "Host".into(),
            redirect_uris: vec!["http://127.0.0.1:1234/cb".into()],
            created_at: 10,
            registered_by: "127.0.0.1".into(),
            revoked_at: None,
        }
    }

    fn refresh(hash: &str, family: &str) -> RefreshTokenRow {
        RefreshTokenRow {
            token_hash: hash.into(),
            family: family.into(),
            client_id: "c1".into(),
            user_name: "alice".into(),
            user_issuer: (family == "f1").then(|| "https://idp".to_string()),
            user_groups: if family == "f1" {
                vec!["ops".into()]
            } else {
                Vec::new()
            },
            resource: "https://gw/mcp".into(),
            scope: "mcp".into(),
            jkt: None,
            mfa: true,
            created_at: 100,
            expires_at: 1_000,
            access_jti: format!("jti-{hash}"),
            access_exp: 400,
        }
    }

    #[tokio::test]
    async fn refresh_rotation_reuse_and_client_revocation() {
        for db in crate::testing::TestDb::all().await {
            refresh_rotation_reuse_and_client_revocation_on(db.open().await).await;
        }
    }

    async fn refresh_rotation_reuse_and_client_revocation_on(store: Store) {
        assert!(store.add_oauth_client(&client("c1"), 2).await.unwrap());
        assert!(store.add_oauth_client(&client("c2"), 2).await.unwrap());
        // The cap counts live clients.
        assert!(!store.add_oauth_client(&client("c3"), 2).await.unwrap());
        assert_eq!(
            store
                .oauth_client("c1")
                .await
                .unwrap()
                .unwrap()
                .redirect_uris,
            vec!["http://127.0.0.1:1234/cb".to_string()]
        );

        store.add_refresh_token(&refresh("h1", "f1")).await.unwrap();
        let RefreshOutcome::Fresh(row) = store.use_refresh_token("h1", 200).await.unwrap() else {
            panic!("fresh token refused");
        };
        assert_eq!(row.user_name, "alice");
        // A federated user's issuer and groups come back with the token.
        assert_eq!(
            (row.user_issuer.as_deref(), row.user_groups.as_slice()),
            (Some("https://idp"), ["ops".to_string()].as_slice())
        );
        store.add_refresh_token(&refresh("h2", "f1")).await.unwrap();
        // Reuse of h1 revokes the family: h2 stops working, and the access
        // tokens of the family are revoked.
        assert!(matches!(
            store.use_refresh_token("h1", 210).await.unwrap(),
            RefreshOutcome::Reused { .. }
        ));
        assert!(matches!(
            store.use_refresh_token("h2", 220).await.unwrap(),
            RefreshOutcome::Reused { .. }
        ));
        let revoked: Vec<String> = store
            .revoked_tokens(220)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.jti)
            .collect();
        assert_eq!(revoked, vec!["jti-h1".to_string(), "jti-h2".to_string()]);
        // Unknown and expired tokens are invalid.
        assert_eq!(
            store.use_refresh_token("nope", 220).await.unwrap(),
            RefreshOutcome::Invalid
        );
        store.add_refresh_token(&refresh("h3", "f2")).await.unwrap();
        assert_eq!(
            store.use_refresh_token("h3", 5_000).await.unwrap(),
            RefreshOutcome::Invalid
        );
        // Revoking the client ends its families.
        store.add_refresh_token(&refresh("h4", "f3")).await.unwrap();
        assert!(store.revoke_oauth_client("c1", 300).await.unwrap());
        assert_eq!(
            store.use_refresh_token("h4", 301).await.unwrap(),
            RefreshOutcome::Invalid
        );
        assert!(!store.revoke_oauth_client("nobody", 300).await.unwrap());
        // A revoked client frees its place.
        assert!(store.add_oauth_client(&client("c3"), 2).await.unwrap());
        // A metadata-document client is remembered beyond the cap, updated
        // in place, and stays revoked once revoked.
        let mut doc = client("https://apps.example/c.json");
        store.remember_oauth_client(&doc).await.unwrap();
        doc.client_name = "Renamed".into();
        store.remember_oauth_client(&doc).await.unwrap();
        let row = store.oauth_client(&doc.client_id).await.unwrap().unwrap();
        assert_eq!(
            (row.client_name.as_str(), row.revoked_at),
            ("Renamed", None)
        );
        assert!(
            store
                .revoke_oauth_client(&doc.client_id, 400)
                .await
                .unwrap()
        );
        store.remember_oauth_client(&doc).await.unwrap();
        let row = store.oauth_client(&doc.client_id).await.unwrap().unwrap();
        assert_eq!(row.revoked_at, Some(400));
    }
}
