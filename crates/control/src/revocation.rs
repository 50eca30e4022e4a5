//! Credentials revoked before they expire: access tokens by `jti` and
//! federated users an admin disabled. The request path reads lock-free
//! snapshots; the admin API replaces them from the store after each change,
//! before it answers, so a revocation applies from the very next request.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_store::{Store, StoreError};

/// The live revocation lists.
#[derive(Debug, Default)]
pub struct Revocations {
    tokens: ArcSwap<HashSet<String>>,
    users: ArcSwap<HashSet<String>>,
}

impl Revocations {
    /// Whether the token with this `jti` was revoked.
    pub fn token_revoked(&self, jti: &str) -> bool {
        self.tokens.load().contains(jti)
    }

    /// Whether this federated user was disabled.
    pub fn user_disabled(&self, subject: &str) -> bool {
        self.users.load().contains(subject)
    }

    /// Replaces both lists from the store (expired token rows are purged there).
    pub async fn reload(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        let tokens: HashSet<String> = store
            .revoked_tokens(now)
            .await?
            .into_iter()
            .map(|r| r.jti)
            .collect();
        let users: HashSet<String> = store.disabled_users().await?.into_iter().collect();
        self.tokens.store(Arc::new(tokens));
        self.users.store(Arc::new(users));
        Ok(())
    }
}
