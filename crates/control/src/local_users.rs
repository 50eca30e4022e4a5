//! Local users: the human admins enrolled with `portcullis admin user add`
//! (a TOTP secret each, sealed in the store), as two places check them: the
//! admin API's sensitive calls (`admin`'s `mfa.rs`) and the login page of the
//! data plane's authorization endpoint (MCP authorization). The sealing and
//! the code check live here so both use the same ones.
//!
//! A secret is sealed with AES-256-GCM under the state directory's MFA key,
//! bound to the user's name, so the database alone reveals nothing and a
//! sealed secret moved to another name does not open. A code is accepted
//! once: its time step is consumed atomically in the store (RFC 6238 §5.2).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use portcullis_identity::TotpSecret;
use portcullis_store::{Store, StoreError};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

/// The key sealing local users' TOTP secrets.
pub struct TotpSeal {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for TotpSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpSeal").finish_non_exhaustive()
    }
}

/// What checking a user's code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeCheck {
    /// Right and fresh; its step is now consumed. `previous` is the step
    /// before, to give it back if the action then fails.
    Accepted {
        /// The step consumed.
        step: i64,
        /// The step recorded before.
        previous: i64,
    },
    /// No such user, a wrong code, or a secret that does not open.
    Refused,
    /// The right code, already used.
    Replayed,
}

impl TotpSeal {
    /// From 32 key bytes (the binary keeps them in `<state-dir>/mfa.key`).
    pub fn new(key: &[u8; 32]) -> Self {
        TotpSeal {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    fn aad(name: &str) -> Vec<u8> {
        format!("portcullis-admin-totp:{name}").into_bytes()
    }

    /// Seals `secret` for the user `name`.
    pub fn seal(&self, name: &str, secret: &TotpSecret) -> Result<Vec<u8>, aes_gcm::Error> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = nonce.to_vec();
        out.extend(self.cipher.encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: secret.as_bytes(),
                aad: &Self::aad(name),
            },
        )?);
        Ok(out)
    }

    /// Opens the secret sealed for `name`; `None` if it was sealed under
    /// another key or name, or altered.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Option<TotpSecret> {
        if sealed.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: body,
                        aad: &Self::aad(name),
                    },
                )
                .ok()?,
        );
        TotpSecret::from_bytes(plain.to_vec()).ok()
    }

    /// Checks `user`'s `code` at `now` and consumes its time step. The
    /// caller throttles failures (`attempts`) and records the outcome.
    pub async fn check_code(
        &self,
        store: &Store,
        user: &str,
        code: &str,
        now: u64,
    ) -> Result<CodeCheck, StoreError> {
        let Some(row) = store.admin_user(user).await? else {
            return Ok(CodeCheck::Refused);
        };
        let Some(secret) = self.open(&row.name, &row.totp_sealed) else {
            // Sealed under another key or moved: refuse, and say why in the
            // log (never the secret).
            tracing::error!(user = %row.name, "stored TOTP secret does not open with this state directory's MFA key");
            return Ok(CodeCheck::Refused);
        };
        let Some(step) = secret.verify(code, now) else {
            return Ok(CodeCheck::Refused);
        };
        if !store.use_totp_step(&row.name, step as i64).await? {
            return Ok(CodeCheck::Replayed);
        }
        Ok(CodeCheck::Accepted {
            step: step as i64,
            previous: row.last_step,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_under_their_name_and_key() {
        let keys = TotpSeal::new(&[7; 32]);
        let secret = TotpSecret::generate();
        let sealed = keys.seal("alice", &secret).unwrap();
        assert_eq!(
            keys.open("alice", &sealed).unwrap().as_bytes(),
            secret.as_bytes()
        );
        assert!(keys.open("bob", &sealed).is_none());
        assert!(TotpSeal::new(&[8; 32]).open("alice", &sealed).is_none());
        assert!(keys.open("alice", &sealed[..5]).is_none());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(keys.open("alice", &flipped).is_none());
        // The seal is randomized: the same secret seals differently.
        assert_ne!(keys.seal("alice", &secret).unwrap(), sealed);
    }

    #[tokio::test]
    async fn a_code_works_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("s.db")).await.unwrap();
        let keys = TotpSeal::new(&[7; 32]);
        let secret = TotpSecret::generate();
        store
            .add_admin_user(&portcullis_store::AdminUserRow {
                name: "alice".into(),
                totp_sealed: keys.seal("alice", &secret).unwrap(),
                created_at: 1,
                last_step: 0,
            })
            .await
            .unwrap();
        let now = 1_800_000_000;
        let code = secret.code_at(now);
        assert!(matches!(
            keys.check_code(&store, "alice", &code, now).await.unwrap(),
            CodeCheck::Accepted { .. }
        ));
        assert_eq!(
            keys.check_code(&store, "alice", &code, now).await.unwrap(),
            CodeCheck::Replayed
        );
        assert_eq!(
            keys.check_code(&store, "bob", &code, now).await.unwrap(),
            CodeCheck::Refused
        );
    }
}
