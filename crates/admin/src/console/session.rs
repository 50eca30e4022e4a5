//! Console sessions: the server-side session a login creates, its cookie,
//! its CSRF token, its expiry, and [`may`], the one question every console
//! page and action asks before it shows or does anything.
//!
//! A browser never holds the admin credential after login: the cookie names
//! a random session id (the table keys it by SHA-256, so the table alone
//! does not give a usable cookie), and the credential the login proved stays
//! in server memory, where the console presents it to the admin API on the
//! session's behalf (`internal.rs`). Sessions live in memory only: a restart
//! logs every browser out, which is the safe direction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use zeroize::Zeroizing;

pub(crate) use portcullis_control::oidc_login::cookie;

use crate::auth::hash_token;
use crate::credentials::AdminCredentials;
use crate::roles::{Permission as RolePermission, Role};

/// The session cookie. `__Host-` makes the browser insist on `Secure`,
/// `Path=/` and no `Domain`, so no sibling host can set or read it.
pub(crate) const SESSION_COOKIE: &str = "__Host-portcullis-console";
/// The login form's double-submit cookie (CSRF before a session exists).
pub(crate) const LOGIN_COOKIE: &str = "__Host-portcullis-login";
/// A session ends after this long without a request…
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// …and after this long in any case.
pub(crate) const ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at once; the oldest goes first beyond it, so logins
/// cannot grow memory without bound.
const MAX_SESSIONS: usize = 256;

/// What a console user may do. Pages and actions name one; [`may`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permission {
    /// Read any page (agents, approvals, alerts, policies, tools, audit,
    /// inventory, live decisions).
    View,
    /// Revoke an agent, release it from quarantine.
    ManageAgents,
    /// Approve or deny a held call.
    DecideApprovals,
    /// Resolve an alert.
    ResolveAlerts,
    /// Approve an MCP tool definition.
    ApproveTools,
    /// Ask the policy engine to explain a request or replay a candidate.
    QueryPolicies,
    /// Verify the audit log, look up records and their proofs.
    ReadAudit,
}

/// Who logged in, and with what.
pub(crate) struct Principal {
    /// Shown in the header and in audit records.
    pub(crate) name: String,
    /// The credential's role when the session was last used.
    pub(crate) role: Role,
    /// The credential the console presents to the admin API for this
    /// session. Zeroed when the session ends.
    pub(crate) credential: Zeroizing<String>,
}

/// One logged-in browser.
pub(crate) struct Session {
    pub(crate) principal: Principal,
    /// The token every form of this session carries.
    pub(crate) csrf: String,
    created: Instant,
    last_seen: Instant,
    /// A one-shot message for the next page (the result of an action).
    flash: Option<Flash>,
}

/// The result of an action, shown once on the page it redirected to.
#[derive(Debug, Clone)]
pub(crate) struct Flash {
    pub(crate) ok: bool,
    pub(crate) text: String,
}

/// What a request's session gives a handler: enough to render and to act,
/// never the table entry itself (no lock is held across I/O).
#[derive(Clone)]
pub(crate) struct SessionView {
    /// The table key (SHA-256 of the cookie value).
    key: String,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) csrf: String,
    pub(crate) credential: Zeroizing<String>,
}

/// The answer to "may this session do X?": what the session's admin role
/// grants (`roles.rs`), the page-level view of the admin API's own check.
/// The admin API checks the same credential again on every call the console
/// makes (the console is one of its clients), so this decides what a page
/// shows, never a second authorisation.
pub(crate) fn may(session: &SessionView, permission: Permission) -> bool {
    // Exhaustive on purpose: a new permission must be mapped here.
    let needed = match permission {
        Permission::View | Permission::QueryPolicies | Permission::ReadAudit => {
            RolePermission::Read
        }
        Permission::ManageAgents => RolePermission::ManageAgents,
        Permission::DecideApprovals => RolePermission::Decide,
        Permission::ResolveAlerts => RolePermission::ResolveAlerts,
        Permission::ApproveTools => RolePermission::ManageTools,
    };
    !session.credential.is_empty() && session.role.grants(needed)
}

/// The session table.
pub(crate) struct Sessions {
    table: Mutex<HashMap<String, Session>>,
    idle: Duration,
    absolute: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::with_timeouts(IDLE_TIMEOUT, ABSOLUTE_TIMEOUT)
    }
}

impl Sessions {
    /// A table whose sessions end after `idle` without a request, or
    /// `absolute` in all.
    pub(crate) fn with_timeouts(idle: Duration, absolute: Duration) -> Self {
        Sessions {
            table: Mutex::default(),
            idle,
            absolute,
        }
    }

    /// Checks a pasted credential and opens a session for it; returns the
    /// cookie value. `None` when the credential is not an admin's.
    pub(crate) fn login(&self, credential: &str, credentials: &AdminCredentials) -> Option<String> {
        if credential.is_empty() {
            return None;
        }
        let identity = credentials.authenticate(credential)?;
        Some(self.open(Principal {
            name: identity.name.clone(),
            role: identity.role,
            credential: Zeroizing::new(credential.to_string()),
        }))
    }

    /// Opens the session of a human who logged in at an OIDC issuer, named
    /// `name`, with `role` and the credential minted for the session
    /// (`AdminCredentials::add_login`); returns the cookie value.
    pub(crate) fn login_oidc(&self, name: &str, role: Role, credential: String) -> String {
        self.open(Principal {
            name: name.to_string(),
            role,
            credential: Zeroizing::new(credential),
        })
    }

    /// Adds a session for `principal`; returns the cookie value.
    fn open(&self, principal: Principal) -> String {
        let id = random_hex();
        let now = Instant::now();
        let session = Session {
            principal,
            csrf: random_hex(),
            created: now,
            last_seen: now,
            flash: None,
        };
        let mut table = self.lock();
        table.retain(|_, s| !self.expired(s, now));
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
        {
            table.remove(&oldest);
        }
        table.insert(hash_token(&id), session);
        id
    }

    /// The live session a request's cookie names, touching its idle timer.
    /// A session whose credential was revoked or rotated since it logged in
    /// ends here; a changed role takes effect on the next page.
    pub(crate) fn find(
        &self,
        headers: &HeaderMap,
        credentials: &AdminCredentials,
    ) -> Option<SessionView> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let key = hash_token(&id);
        let now = Instant::now();
        let mut table = self.lock();
        let session = table.get_mut(&key)?;
        let identity = credentials.authenticate(&session.principal.credential);
        let Some(identity) = identity.filter(|_| !self.expired(session, now)) else {
            table.remove(&key);
            return None;
        };
        session.last_seen = now;
        session.principal.role = identity.role;
        Some(SessionView {
            key,
            role: identity.role,
            name: session.principal.name.clone(),
            csrf: session.csrf.clone(),
            credential: session.principal.credential.clone(),
        })
    }

    /// Whether a session is still live, without touching it (a long-lived
    /// event stream must not keep its session alive by itself).
    pub(crate) fn alive(&self, session: &SessionView) -> bool {
        let now = Instant::now();
        let table = self.lock();
        table
            .get(&session.key)
            .is_some_and(|s| !self.expired(s, now))
    }

    /// Ends a session (logout).
    pub(crate) fn end(&self, session: &SessionView) {
        self.lock().remove(&session.key);
    }

    /// Leaves a message for the session's next page.
    pub(crate) fn flash(&self, session: &SessionView, flash: Flash) {
        if let Some(s) = self.lock().get_mut(&session.key) {
            s.flash = Some(flash);
        }
    }

    /// Takes the session's message, if any.
    pub(crate) fn take_flash(&self, session: &SessionView) -> Option<Flash> {
        self.lock()
            .get_mut(&session.key)
            .and_then(|s| s.flash.take())
    }

    fn expired(&self, session: &Session, now: Instant) -> bool {
        now.duration_since(session.last_seen) > self.idle
            || now.duration_since(session.created) > self.absolute
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// 32 random bytes, hex: session ids, CSRF tokens, login nonces.
pub(crate) fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Whether a submitted token is the expected one: the admin token's own
/// constant-time check, over SHA-256 of both.
pub(crate) fn same_token(submitted: &str, expected: &str) -> bool {
    let (a, b) = (hash_token(submitted), hash_token(expected));
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A `Set-Cookie` value for a console cookie: never readable by scripts,
/// never sent over plain HTTP, never sent on a cross-site request.
pub(crate) fn set_cookie(name: &str, value: &str, max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `Set-Cookie` value that deletes a console cookie.
pub(crate) fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    fn headers(cookie_header: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(cookie_header).unwrap(),
        );
        h
    }

    #[test]
    fn a_session_opens_only_for_an_admin_token_and_ends_at_logout() {
        let token = crate::auth::new_token();
        let hashes = AdminCredentials::single(&token, Role::Owner);
        let sessions = Sessions::default();
        assert!(sessions.login("pcadm_wrong", &hashes).is_none());
        assert!(sessions.login("", &hashes).is_none());
        let id = sessions.login(&token, &hashes).unwrap();
        let h = headers(&format!("other=1; {SESSION_COOKIE}={id}"));
        let view = sessions.find(&h, &hashes).unwrap();
        assert_eq!(view.credential.as_str(), token);
        assert!(sessions.alive(&view));
        assert!(
            sessions
                .find(
                    &headers(&format!("{SESSION_COOKIE}={}", random_hex())),
                    &hashes
                )
                .is_none()
        );
        sessions.end(&view);
        assert!(sessions.find(&h, &hashes).is_none());
        assert!(!sessions.alive(&view));
    }

    #[test]
    fn a_session_has_its_credential_role_and_ends_with_the_credential() {
        let token = crate::auth::new_token();
        let auditor = AdminCredentials::single(&token, Role::Auditor);
        let sessions = Sessions::default();
        let id = sessions.login(&token, &auditor).unwrap();
        let h = headers(&format!("{SESSION_COOKIE}={id}"));
        let view = sessions.find(&h, &auditor).unwrap();
        assert!(may(&view, Permission::View));
        assert!(may(&view, Permission::ReadAudit));
        assert!(!may(&view, Permission::ManageAgents));
        assert!(!may(&view, Permission::DecideApprovals));
        let approver = AdminCredentials::single(&token, Role::Approver);
        let view = sessions.find(&h, &approver).unwrap();
        assert!(may(&view, Permission::DecideApprovals));
        assert!(!may(&view, Permission::ApproveTools));
        // Revoked (or rotated): the credential no longer authenticates.
        assert!(sessions.find(&h, &AdminCredentials::default()).is_none());
        assert!(sessions.find(&h, &approver).is_none(), "the session ended");
    }

    #[test]
    fn an_oidc_session_acts_with_its_minted_credential_until_logout() {
        let credentials = AdminCredentials::default();
        let sessions = Sessions::default();
        let token = credentials.add_login(
            "oidc:alice@x",
            "https://idp",
            Role::Approver,
            ABSOLUTE_TIMEOUT,
        );
        let id = sessions.login_oidc("oidc:alice@x", Role::Approver, token.clone());
        let h = headers(&format!("{SESSION_COOKIE}={id}"));
        let view = sessions.find(&h, &credentials).unwrap();
        assert_eq!(
            (view.name.as_str(), view.role),
            ("oidc:alice@x", Role::Approver)
        );
        assert!(may(&view, Permission::DecideApprovals));
        assert!(!may(&view, Permission::ManageAgents));
        credentials.end_login(&token);
        assert!(
            sessions.find(&h, &credentials).is_none(),
            "the credential ended"
        );
    }

    #[test]
    fn sessions_expire_when_idle_and_in_any_case() {
        let token = crate::auth::new_token();
        let hashes = AdminCredentials::single(&token, Role::Owner);
        let idle = Sessions::with_timeouts(Duration::from_millis(30), ABSOLUTE_TIMEOUT);
        let id = idle.login(&token, &hashes).unwrap();
        let h = headers(&format!("{SESSION_COOKIE}={id}"));
        assert!(idle.find(&h, &hashes).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(idle.find(&h, &hashes).is_none(), "idle too long");
        let absolute = Sessions::with_timeouts(IDLE_TIMEOUT, Duration::from_millis(30));
        let id = absolute.login(&token, &hashes).unwrap();
        let h = headers(&format!("{SESSION_COOKIE}={id}"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            absolute.find(&h, &hashes).is_none(),
            "past the absolute limit"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let token = crate::auth::new_token();
        let hashes = AdminCredentials::single(&token, Role::Owner);
        let sessions = Sessions::default();
        let first = sessions.login(&token, &hashes).unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.login(&token, &hashes).unwrap();
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        assert!(
            sessions
                .find(&headers(&format!("{SESSION_COOKIE}={first}")), &hashes)
                .is_none()
        );
    }

    #[test]
    fn cookies_are_strict() {
        let v = set_cookie(SESSION_COOKIE, "abc", IDLE_TIMEOUT);
        assert_eq!(
            v.to_str().unwrap(),
            "__Host-portcullis-console=abc; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=900"
        );
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
    }
}
