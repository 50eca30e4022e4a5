//! WebAuthn challenges in progress, kept in the store (migration 0030) so
//! the browser's answer may reach any replica of a cluster: each is 32
//! random bytes issued to one session (or, for a login, one browser's login
//! form) for one ceremony, single use (taken out by the first answer, right
//! or wrong, by one atomic statement: of two concurrent answers on two
//! replicas only one gets it) and expires after [`CEREMONY_TTL`]. The row
//! is keyed by SHA-256 of the challenge; what it holds (the session key,
//! the purpose, the origin and relying party) is not secret.

use std::time::Duration;

use portcullis_identity::webauthn::b64url;
use portcullis_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::auth::hash_token;

/// How long a challenge may be answered.
pub(crate) const CEREMONY_TTL: Duration = Duration::from_secs(120);
/// Challenges outstanding at once (all replicas); beyond it, new
/// ceremonies are refused until old ones expire.
const MAX_CEREMONIES: i64 = 1024;
/// The store's `kind` for these ceremonies.
const KIND: &str = "webauthn";

/// What a challenge was issued for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Purpose {
    /// Registering a passkey for this admin.
    Register { admin: String },
    /// Opening the step-up window.
    StepUp,
    /// Logging in to the console: by any passkey of this relying party
    /// (discoverable), or by one of the named admin's.
    Login { admin: Option<String> },
}

/// A challenge's ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ceremony {
    /// Who may answer: a session's key, or a login form's.
    pub(crate) session: String,
    pub(crate) purpose: Purpose,
    /// The origin it runs at and its relying party id.
    pub(crate) origin: String,
    pub(crate) rp_id: String,
}

/// The challenges in progress, in the store.
pub(crate) struct Ceremonies {
    store: Store,
}

impl Ceremonies {
    pub(crate) fn new(store: Store) -> Self {
        Ceremonies { store }
    }

    /// Issues a challenge for `ceremony` at `now_ms`; `None` when too many
    /// are outstanding.
    pub(crate) async fn begin(
        &self,
        ceremony: &Ceremony,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let challenge = b64url(&rand::random::<[u8; 32]>());
        let payload = serde_json::to_string(ceremony).unwrap_or_default();
        let ttl = i64::try_from(CEREMONY_TTL.as_millis()).unwrap_or(i64::MAX);
        let stored = self
            .store
            .begin_ceremony(
                &hash_token(&challenge),
                KIND,
                &payload,
                now_ms + ttl,
                now_ms,
                MAX_CEREMONIES,
            )
            .await?;
        Ok(stored.then_some(challenge))
    }

    /// Takes the challenge out (single use, whatever the answer's fate);
    /// `None` unless it was issued to `session`, is live and unused.
    pub(crate) async fn take(
        &self,
        challenge: &str,
        session: &str,
        now_ms: i64,
    ) -> Result<Option<Ceremony>, StoreError> {
        let key = hash_token(challenge.trim_end_matches('='));
        let Some(payload) = self.store.take_ceremony(&key, KIND, now_ms).await? else {
            return Ok(None);
        };
        // A payload this version cannot read is refused, not guessed.
        let ceremony: Option<Ceremony> = serde_json::from_str(&payload).ok();
        Ok(ceremony.filter(|c| c.session == session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_identity::webauthn::from_b64url;

    fn ceremony(session: &str, purpose: Purpose) -> Ceremony {
        Ceremony {
            session: session.into(),
            purpose,
            origin: "https://localhost:9443".into(),
            rp_id: "localhost".into(),
        }
    }

    #[tokio::test]
    async fn a_challenge_is_single_use_bound_to_its_session_shared_by_replicas_and_expires() {
        for db in portcullis_store::testing::TestDb::all().await {
            let store = db.open().await;
            // Two replicas: two tables over one store.
            let (one, two) = (Ceremonies::new(store.clone()), Ceremonies::new(store));
            let step_up = ceremony("s1", Purpose::StepUp);
            let c = one.begin(&step_up, 1_000).await.unwrap().unwrap();
            assert_eq!(from_b64url(&c).unwrap().len(), 32);
            // Another session's answer burns it and gets nothing.
            assert_eq!(two.take(&c, "s2", 1_001).await.unwrap(), None);
            assert_eq!(one.take(&c, "s1", 1_001).await.unwrap(), None);
            // Issued on one replica, answered on the other, once.
            let login = ceremony(
                "login:n",
                Purpose::Login {
                    admin: Some("alice".into()),
                },
            );
            let c = one.begin(&login, 1_000).await.unwrap().unwrap();
            assert_eq!(two.take(&c, "login:n", 1_001).await.unwrap(), Some(login));
            assert_eq!(
                one.take(&c, "login:n", 1_001).await.unwrap(),
                None,
                "single use"
            );
            // Expired.
            let c = one.begin(&step_up, 1_000).await.unwrap().unwrap();
            let ttl = i64::try_from(CEREMONY_TTL.as_millis()).unwrap();
            assert_eq!(
                two.take(&c, "s1", 1_000 + ttl).await.unwrap(),
                None,
                "expired"
            );
        }
    }
}
