//! Step-up windows: one TOTP confirmation by a human admin opens a short
//! window (default 5 minutes, `[admin] step_up_seconds`) during which the
//! credential that made it may take sensitive actions without a new code.
//!
//! A window is bound to the admin credential (its row id, and the stored
//! hash it authenticated with) and to the human who confirmed: another
//! credential, or a call naming another human, gets no benefit from it. It
//! opens only when the confirming call succeeds — a refused or failed
//! action neither spends the code nor opens a window — and it closes when
//! it expires, when its credential is rotated or revoked, or on `DELETE
//! /admin/v1/session/step-up`.
//!
//! Windows live in the store (`step_up_windows`, migration 0035), so in a
//! cluster a window opened through one replica is open on every other and
//! one close, rotation or revocation anywhere closes it everywhere: each
//! lookup reads the row (admin calls only, never the data plane), and a
//! store that does not answer fails the call, never lets it through on a
//! window nobody could check.

use std::time::Duration;

use portcullis_store::{StepUpWindowRow, Store, StoreError};

use crate::credentials::AdminIdentity;

/// The default window.
pub const DEFAULT_STEP_UP: Duration = Duration::from_secs(300);

/// An open window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The human admin who confirmed.
    pub user: String,
    /// When it closes (epoch seconds), for display.
    pub expires_at: i64,
}

/// The windows, in the store.
#[derive(Debug)]
pub struct StepUp {
    store: Store,
    ttl: Duration,
}

impl StepUp {
    /// Windows of `ttl` in `store`; zero turns them off (every sensitive
    /// call needs a code).
    pub fn new(store: Store, ttl: Duration) -> Self {
        StepUp { store, ttl }
    }

    /// The window length.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The open window of `who`, if any: opened with the credential it
    /// authenticated with, which is still live.
    pub async fn current(&self, who: &AdminIdentity) -> Result<Option<Window>, StoreError> {
        if self.ttl.is_zero() {
            return Ok(None);
        }
        let row = self
            .store
            .step_up_window(&who.id, who.credential_sha256.as_deref(), now_ms())
            .await?;
        Ok(row.map(|w| Window {
            user: w.admin_user,
            expires_at: w.expires_ms / 1000,
        }))
    }

    /// Opens (or renews) the window of `who` for `user`; `None` when
    /// windows are off.
    pub async fn open(
        &self,
        who: &AdminIdentity,
        user: &str,
    ) -> Result<Option<Window>, StoreError> {
        if self.ttl.is_zero() {
            return Ok(None);
        }
        let now = now_ms();
        let expires_ms =
            now.saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX));
        self.store
            .open_step_up_window(
                &StepUpWindowRow {
                    holder: who.id.clone(),
                    credential_sha256: who.credential_sha256.clone(),
                    admin_user: user.to_string(),
                    expires_ms,
                },
                now,
            )
            .await?;
        Ok(Some(Window {
            user: user.to_string(),
            expires_at: expires_ms / 1000,
        }))
    }

    /// Closes the window of `who`.
    pub async fn close(&self, who: &AdminIdentity) -> Result<(), StoreError> {
        self.store.close_step_up_window(&who.id).await
    }
}

fn now_ms() -> i64 {
    crate::api::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::CredentialKind;
    use crate::roles::Role;

    fn login(id: &str) -> AdminIdentity {
        AdminIdentity {
            id: id.into(),
            name: format!("oidc:{id}"),
            role: Role::Owner,
            kind: CredentialKind::Login,
            login: Some("https://issuer.test".into()),
            credential_sha256: None,
        }
    }

    #[tokio::test]
    async fn windows_are_per_holder_expire_and_close() {
        let db = portcullis_store::testing::TestDb::sqlite();
        let store = db.open().await;
        // A window that cannot end while the test looks at it, however long
        // a loaded machine pauses the thread...
        let step_up = StepUp::new(store.clone(), Duration::from_secs(600));
        let (c1, c2) = (login("c1"), login("c2"));
        assert!(step_up.current(&c1).await.unwrap().is_none());
        step_up.open(&c1, "alice").await.unwrap().unwrap();
        assert_eq!(step_up.current(&c1).await.unwrap().unwrap().user, "alice");
        assert!(step_up.current(&c2).await.unwrap().is_none());
        step_up.close(&c1).await.unwrap();
        assert!(step_up.current(&c1).await.unwrap().is_none());
        // ...and a short one, slept past: it has ended, whatever the load.
        let short = StepUp::new(store.clone(), Duration::from_millis(50));
        short.open(&c1, "alice").await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(short.current(&c1).await.unwrap().is_none());
        let off = StepUp::new(store, Duration::ZERO);
        assert!(off.open(&c1, "alice").await.unwrap().is_none());
    }
}
