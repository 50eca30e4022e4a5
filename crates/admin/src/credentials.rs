//! Admin credentials in memory: the live (unrevoked) bearer tokens by their
//! SHA-256, each with its name and role. The store is the truth; this is its
//! snapshot, reloaded after every change the admin API makes, so a revoked or
//! rotated token is refused by the very next request. Authentication is a
//! hash and a map lookup under a read lock never held across IO.
//!
//! Besides the stored credentials: the credentials of console sessions that
//! logged in at an OIDC issuer. A human who logs in that way holds no admin
//! token; the console mints one for the session, kept only here (never in
//! the store, never sent to the browser), with the role `[[admin.oidc_roles]]`
//! gave the human and their name, so every call the console makes for them
//! goes through the admin API's own authentication and audit. It ends at
//! logout or after the console's absolute session lifetime, and with the
//! process.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use portcullis_store::{AdminTokenRow, Store, StoreError};

use crate::auth::{hash_token, new_token};
use crate::roles::Role;

/// The name of the credential `serve` creates on first start. Actions made
/// with the single admin token of older versions were recorded as `admin`,
/// so the bootstrap credential keeps that name.
pub const BOOTSTRAP_NAME: &str = "admin";

/// Who is calling the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminIdentity {
    /// The credential's row id (step-up windows are bound to it).
    pub id: String,
    /// Its name: the principal of the audit records it makes.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The OIDC issuer a console login came through; `None` for a stored
    /// credential (a token).
    pub login: Option<String>,
}

/// The live credentials, by SHA-256 of their token.
#[derive(Debug, Default)]
pub struct AdminCredentials {
    by_hash: RwLock<HashMap<String, Arc<AdminIdentity>>>,
    /// Console sessions of humans logged in at an OIDC issuer: their
    /// minted credential's hash, identity and end.
    logins: RwLock<HashMap<String, (Arc<AdminIdentity>, Instant)>>,
}

/// Live OIDC console logins at most (the console keeps as many sessions).
const MAX_LOGINS: usize = 256;

impl AdminCredentials {
    /// Loads the live credentials from the store.
    pub async fn load(store: &Store) -> Result<Self, StoreError> {
        let credentials = AdminCredentials::default();
        credentials.reload(store).await?;
        Ok(credentials)
    }

    /// Replaces the snapshot with the store's live credentials. A row whose
    /// role this version does not know is left out (refused), not guessed.
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let rows = store.admin_credentials().await?;
        let mut by_hash = HashMap::new();
        for row in rows.into_iter().filter(|r| r.revoked_at.is_none()) {
            match row.role.parse::<Role>() {
                Ok(role) => {
                    by_hash.insert(
                        row.token_sha256,
                        Arc::new(AdminIdentity {
                            id: row.id,
                            name: row.name,
                            role,
                            login: None,
                        }),
                    );
                }
                Err(e) => {
                    tracing::error!(credential = %row.name, error = %e, "admin credential refused")
                }
            }
        }
        *self.by_hash.write().unwrap_or_else(|e| e.into_inner()) = by_hash;
        Ok(())
    }

    /// The credential a presented token belongs to. The lookup is by the
    /// token's SHA-256, so timing reveals nothing about stored tokens.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<AdminIdentity>> {
        let digest = hash_token(presented);
        let stored = self
            .by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        stored.or_else(|| {
            self.logins
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&digest)
                .filter(|(_, until)| Instant::now() < *until)
                .map(|(identity, _)| Arc::clone(identity))
        })
    }

    /// Mints the credential of a console session of a human who logged in
    /// at OIDC issuer `issuer`, named `name` with `role`, valid for
    /// `lifetime` or until [`end_login`](Self::end_login). The token is
    /// returned once and kept here only by its hash.
    pub fn add_login(&self, name: &str, issuer: &str, role: Role, lifetime: Duration) -> String {
        let token = new_token();
        let identity = AdminIdentity {
            id: format!("oidc-login:{}", portcullis_core::RequestId::new()),
            name: name.to_string(),
            role,
            login: Some(issuer.to_string()),
        };
        let now = Instant::now();
        let mut logins = self.logins.write().unwrap_or_else(|e| e.into_inner());
        logins.retain(|_, (_, until)| now < *until);
        if logins.len() >= MAX_LOGINS
            && let Some(oldest) = logins
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(k, _)| k.clone())
        {
            logins.remove(&oldest);
        }
        logins.insert(hash_token(&token), (Arc::new(identity), now + lifetime));
        token
    }

    /// Ends a console login's credential (logout).
    pub fn end_login(&self, token: &str) {
        self.logins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash_token(token));
    }

    /// One live credential (unit tests of the credential's users).
    #[cfg(test)]
    pub(crate) fn single(token: &str, role: Role) -> Self {
        let identity = AdminIdentity {
            id: "test".into(),
            name: "test".into(),
            role,
            login: None,
        };
        AdminCredentials {
            by_hash: RwLock::new(HashMap::from([(hash_token(token), Arc::new(identity))])),
            logins: RwLock::default(),
        }
    }

    /// How many credentials are live.
    pub fn len(&self) -> usize {
        self.by_hash.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A credential made now: its row and the token, which exists only here
/// and in the one answer that hands it out.
pub(crate) fn mint(
    name: &str,
    role: Role,
    created_by: &str,
    bootstrap: bool,
) -> (AdminTokenRow, String) {
    let token = new_token();
    let row = AdminTokenRow {
        id: portcullis_core::RequestId::new().to_string(),
        name: name.to_string(),
        role: role.as_str().to_string(),
        token_sha256: hash_token(&token),
        created_at: crate::api::now_ms() / 1000,
        created_by: created_by.to_string(),
        rotated_at: None,
        revoked_at: None,
        bootstrap,
    };
    (row, token)
}

/// On a store with no admin credential at all (first start), creates the
/// bootstrap owner credential and returns its token for `serve` to write
/// into the state directory. Never again afterwards: once it is revoked,
/// deleting the token file does not bring an owner back.
pub async fn ensure_bootstrap(store: &Store) -> Result<Option<String>, StoreError> {
    if !store.admin_credentials().await?.is_empty() {
        return Ok(None);
    }
    let (row, token) = mint(BOOTSTRAP_NAME, Role::Owner, "serve", true);
    store.add_admin_credential(&row).await?;
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bootstrap_once_then_authenticate_by_hash_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let token = ensure_bootstrap(&store).await.unwrap().unwrap();
        assert!(ensure_bootstrap(&store).await.unwrap().is_none());
        let (ops, ops_token) = mint("ops", Role::Operator, "admin", false);
        store.add_admin_credential(&ops).await.unwrap();
        let credentials = AdminCredentials::load(&store).await.unwrap();
        let me = credentials.authenticate(&token).unwrap();
        assert_eq!((me.name.as_str(), me.role), ("admin", Role::Owner));
        assert_eq!(
            credentials.authenticate(&ops_token).unwrap().role,
            Role::Operator
        );
        assert!(credentials.authenticate("pcadm_nope").is_none());
        // Nothing in the store is the token itself.
        let rows = store.admin_credentials().await.unwrap();
        assert!(
            rows.iter()
                .all(|r| r.token_sha256 != token && r.bootstrap == (r.name == "admin"))
        );
        store.revoke_admin_credential("ops", 5).await.unwrap();
        credentials.reload(&store).await.unwrap();
        assert!(credentials.authenticate(&ops_token).is_none());
        assert_eq!(credentials.len(), 1);
    }

    #[tokio::test]
    async fn oidc_logins_outlive_reloads_and_end_at_logout_or_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let credentials = AdminCredentials::load(&store).await.unwrap();
        let token = credentials.add_login(
            "oidc:alice@x",
            "https://idp",
            Role::Approver,
            Duration::from_secs(60),
        );
        let me = credentials.authenticate(&token).unwrap();
        assert_eq!(
            (me.name.as_str(), me.role, me.login.as_deref()),
            ("oidc:alice@x", Role::Approver, Some("https://idp"))
        );
        credentials.reload(&store).await.unwrap();
        assert!(
            credentials.authenticate(&token).is_some(),
            "not stored, still live"
        );
        credentials.end_login(&token);
        assert!(credentials.authenticate(&token).is_none());
        let short = credentials.add_login("b", "https://idp", Role::Owner, Duration::ZERO);
        assert!(credentials.authenticate(&short).is_none(), "expired");
    }
}
