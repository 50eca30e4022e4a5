//! Step-up windows: one TOTP confirmation by a human admin opens a short
//! window (default 5 minutes, `[admin] step_up_seconds`) during which the
//! credential that made it may take sensitive actions without a new code.
//!
//! A window is bound to the admin credential (its row id) and to the human
//! who confirmed: another credential, or a call naming another human, gets
//! no benefit from it. It opens only when the confirming call succeeds — a
//! refused or failed action neither spends the code nor opens a window — and
//! it closes when it expires, when its credential is rotated or revoked, or
//! on `DELETE /admin/v1/session/step-up`. Windows live in memory only: a
//! restart closes them all, which fails closed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The default window.
pub const DEFAULT_STEP_UP: Duration = Duration::from_secs(300);

/// An open window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The human admin who confirmed.
    pub user: String,
    /// When it closes (epoch seconds), for display.
    pub expires_at: i64,
    until: Instant,
}

/// The open windows, by credential id.
#[derive(Debug)]
pub struct StepUp {
    ttl: Duration,
    windows: Mutex<HashMap<String, Window>>,
}

impl StepUp {
    /// Windows of `ttl`; zero turns them off (every sensitive call needs a code).
    pub fn new(ttl: Duration) -> Self {
        StepUp {
            ttl,
            windows: Mutex::default(),
        }
    }

    /// The window length.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The credential's open window, if any (expired ones are dropped here).
    pub fn current(&self, credential: &str) -> Option<Window> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        match windows.get(credential) {
            Some(w) if w.until > Instant::now() => Some(w.clone()),
            Some(_) => {
                windows.remove(credential);
                None
            }
            None => None,
        }
    }

    /// Opens (or renews) the credential's window for `user`; `None` when
    /// windows are off.
    pub fn open(&self, credential: &str, user: &str) -> Option<Window> {
        if self.ttl.is_zero() {
            return None;
        }
        let window = Window {
            user: user.to_string(),
            expires_at: crate::api::now_ms() / 1000 + self.ttl.as_secs() as i64,
            until: Instant::now() + self.ttl,
        };
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(credential.to_string(), window.clone());
        Some(window)
    }

    /// Closes the credential's window.
    pub fn close(&self, credential: &str) {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(credential);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_per_credential_expire_and_close() {
        // A window that cannot end while the test looks at it, however long
        // a loaded machine pauses the thread...
        let step_up = StepUp::new(Duration::from_secs(600));
        assert!(step_up.current("c1").is_none());
        step_up.open("c1", "alice").unwrap();
        assert_eq!(step_up.current("c1").unwrap().user, "alice");
        assert!(step_up.current("c2").is_none());
        step_up.close("c1");
        assert!(step_up.current("c1").is_none());
        // ...and a short one, slept past: it has ended, whatever the load.
        let short = StepUp::new(Duration::from_millis(50));
        short.open("c1", "alice").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert!(short.current("c1").is_none());
        assert!(StepUp::new(Duration::ZERO).open("c1", "alice").is_none());
    }
}
