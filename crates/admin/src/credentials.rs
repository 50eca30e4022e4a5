//! Admin credentials in memory: the live (unrevoked) bearer tokens by their
//! SHA-256 and the live client certificates by their fingerprint, each with
//! its name and role. The store is the truth; this is its
//! snapshot, reloaded after every change the admin API makes, so a revoked or
//! rotated token is refused by the very next request. Authentication is a
//! hash and a map lookup under a read lock never held across IO.
//!
//! A human who logged in to the console at an OIDC issuer holds no
//! credential here: their console session's row carries their name, issuer
//! and role (`console/session.rs`, [`login_identity`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use portcullis_store::{
    ADMIN_KIND_CERTIFICATE, ADMIN_KIND_TOKEN, AdminTokenRow, ConsoleSessionLogin, Store, StoreError,
};

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
    /// How it proves itself.
    pub kind: CredentialKind,
    /// The OIDC issuer a console session's human logged in at; `None` for
    /// a stored credential. Such an identity has no credential at all: the
    /// console session row carries it (`console/session.rs`), and it acts
    /// only through the console, in process.
    pub login: Option<String>,
    /// The stored hash this credential authenticated with (its token's,
    /// or its certificate's): a step-up window opened with it ends when the
    /// credential is rotated. `None` for an OIDC login's session.
    pub credential_sha256: Option<String>,
}

/// How an admin credential proves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A bearer token (`Authorization: Bearer pcadm_…`).
    Token,
    /// A client certificate the Portcullis CA issued, presented in the TLS
    /// handshake of the admin listener (mTLS).
    Certificate,
    /// No credential: a console session of a human who logged in at an
    /// OIDC issuer (`AdminIdentity::login` names it).
    Login,
}

impl CredentialKind {
    /// The word for it in audit records and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Token => ADMIN_KIND_TOKEN,
            CredentialKind::Certificate => ADMIN_KIND_CERTIFICATE,
            CredentialKind::Login => "oidc",
        }
    }
}

/// A live certificate credential: who, and until when its certificate is valid.
#[derive(Debug)]
struct CertificateEntry {
    identity: Arc<AdminIdentity>,
    not_after: i64,
}

/// The live credentials, by SHA-256 of their token or certificate.
#[derive(Debug, Default)]
pub struct AdminCredentials {
    by_hash: RwLock<HashMap<String, Arc<AdminIdentity>>>,
    by_certificate: RwLock<HashMap<String, CertificateEntry>>,
    /// Bumped by every reload: caches of what credentials allow (console
    /// sessions) compare it to notice a change at once.
    generation: AtomicU64,
}

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
        let mut by_certificate = HashMap::new();
        for row in rows.into_iter().filter(|r| r.revoked_at.is_none()) {
            let Some(identity) = identity_of(&row) else {
                continue;
            };
            match identity.kind {
                CredentialKind::Token => {
                    by_hash.insert(row.token_sha256, identity);
                }
                CredentialKind::Certificate => {
                    by_certificate.insert(
                        row.token_sha256,
                        CertificateEntry {
                            identity,
                            // No recorded end of validity: refused (fail closed).
                            not_after: row.not_after.unwrap_or(0),
                        },
                    );
                }
                // `identity_of` never makes one from a stored row.
                CredentialKind::Login => {}
            }
        }
        *self.by_hash.write().unwrap_or_else(|e| e.into_inner()) = by_hash;
        *self
            .by_certificate
            .write()
            .unwrap_or_else(|e| e.into_inner()) = by_certificate;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The credential a client certificate belongs to: `fingerprint` is
    /// SHA-256 (hex) of the DER certificate the peer proved it holds the key
    /// of in the TLS handshake. Only certificates the admin API issued and
    /// recorded match, and only until their end of validity (`now`, epoch
    /// seconds).
    pub fn authenticate_certificate(
        &self,
        fingerprint: &str,
        now: i64,
    ) -> Option<Arc<AdminIdentity>> {
        self.by_certificate
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(fingerprint)
            .filter(|entry| now < entry.not_after)
            .map(|entry| entry.identity.clone())
    }

    /// A number that changes whenever the credentials are reloaded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The credential a presented token belongs to. The lookup is by the
    /// token's SHA-256, so timing reveals nothing about stored tokens.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<AdminIdentity>> {
        let digest = hash_token(presented);
        self.by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned()
    }

    /// How many credentials are live.
    pub fn len(&self) -> usize {
        self.by_hash.read().unwrap_or_else(|e| e.into_inner()).len()
            + self
                .by_certificate
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tells the other replicas (cluster mode) that admin credentials or
/// console sessions changed: each reloads its credentials, which also makes
/// its console sessions be read again from the store. A lost notification
/// is not an error: the change is stored, and every replica's periodic
/// resync reads it.
pub async fn announce(store: &Store) {
    if let Err(e) = store.notify_change(portcullis_store::Change::Admin).await {
        tracing::warn!(error = %e, "cluster: cannot announce an admin credential change; other replicas read it at their next resync");
    }
}

/// The identity of a live credential row; `None` (refused, logged) for a
/// role or kind this version does not know, which is never guessed.
pub(crate) fn identity_of(row: &AdminTokenRow) -> Option<Arc<AdminIdentity>> {
    let role = match row.role.parse::<Role>() {
        Ok(role) => role,
        Err(e) => {
            tracing::error!(credential = %row.name, error = %e, "admin credential refused");
            return None;
        }
    };
    let kind = match row.kind.as_str() {
        ADMIN_KIND_TOKEN => CredentialKind::Token,
        ADMIN_KIND_CERTIFICATE => CredentialKind::Certificate,
        other => {
            tracing::error!(credential = %row.name, kind = other, "admin credential of an unknown kind refused");
            return None;
        }
    };
    Some(Arc::new(AdminIdentity {
        id: row.id.clone(),
        name: row.name.clone(),
        role,
        kind,
        login: None,
        credential_sha256: Some(row.token_sha256.clone()),
    }))
}

/// The identity of a console session opened by an OIDC login, `id` naming
/// the session; `None` (refused, logged) for a role this version does not
/// know.
pub(crate) fn login_identity(id: &str, login: &ConsoleSessionLogin) -> Option<Arc<AdminIdentity>> {
    let role = match login.role.parse::<Role>() {
        Ok(role) => role,
        Err(e) => {
            tracing::error!(login = %login.name, error = %e, "console login session refused");
            return None;
        }
    };
    Some(Arc::new(AdminIdentity {
        id: id.to_string(),
        name: login.name.clone(),
        role,
        kind: CredentialKind::Login,
        login: Some(login.issuer.clone()),
        credential_sha256: None,
    }))
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
        kind: ADMIN_KIND_TOKEN.to_string(),
        not_after: None,
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
}
