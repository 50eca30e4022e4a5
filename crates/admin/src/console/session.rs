//! Console sessions: the server-side session a login creates, its cookie,
//! its CSRF token, its expiry, and [`may`], the one question every console
//! page and action asks before it shows or does anything.
//!
//! A browser never holds the admin credential after login: the cookie names
//! a random session id, and the session row (in the store, migration 0021)
//! keeps SHA-256 of that id and the token hash of the credential that logged
//! in, never the id or the token. So sessions survive a restart, are
//! honoured by every replica of a cluster, and the store alone gives no
//! usable cookie. The console acts for a session with the identity the
//! session row resolves to (`internal.rs` hands it to the admin API in
//! process; no network client can do that). The CSRF token is derived from
//! the session id (SHA-256 of a label and the id), so it needs no storage
//! and the store does not reveal it either.
//!
//! Lookups are cached for [`CACHE_TTL`] per replica, so a page with its
//! script and stream reads the store at most once; a change to the admin
//! credentials on this replica (revocation, rotation) empties the cache at
//! once, and on another replica within the TTL (the row is joined with its
//! live credential). The idle timer is written back at most every
//! [`TOUCH_EVERY`] (or a tenth of the idle timeout), not on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use portcullis_store::{ADMIN_KIND_CERTIFICATE, ConsoleSessionLogin, ConsoleSessionRow, Store};

pub(crate) use portcullis_control::oidc_login::cookie;

use crate::auth::hash_token;
use crate::credentials::{AdminCredentials, AdminIdentity, identity_of, login_identity};
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
/// Sessions kept at once; the least recently used go first beyond it, so
/// logins cannot grow the table without bound.
const MAX_SESSIONS: i64 = 256;
/// How long a replica trusts what it last read of a session: the delay
/// before another replica's logout or revocation takes effect here.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(2);
/// The longest the stored idle timer lags the real one.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

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
    /// The row key (SHA-256 of the cookie value).
    key: String,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) csrf: String,
    /// The credential the console acts with for this session.
    pub(crate) identity: Arc<AdminIdentity>,
}

impl SessionView {
    /// The row key, which binds a passkey challenge to its session.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}

/// The identity id of an OIDC login's session whose row key is `key` (a
/// prefix of the id's hash: the cookie is not derivable from it).
pub(crate) fn login_identity_id(key: &str) -> String {
    format!("oidc-login:{}", &key[..16])
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
    session.role.grants(needed)
}

/// What this replica last read of a session.
#[derive(Clone)]
struct Cached {
    identity: Arc<AdminIdentity>,
    created_ms: i64,
    /// The last use this replica knows of.
    last_seen_ms: i64,
    /// The last use written to the store.
    stored_seen_ms: i64,
    read_at: Instant,
    /// [`AdminCredentials::generation`] when read.
    generation: u64,
}

/// The sessions: the store's rows, a short-lived cache of them, and the
/// one-shot messages (kept on the replica that set them: a message lost to
/// a load balancer costs a line of text, not a decision).
pub(crate) struct Sessions {
    store: Store,
    /// The live credentials, for [`Sessions::alive`]'s change check.
    credentials: Arc<AdminCredentials>,
    cache: Mutex<HashMap<String, Cached>>,
    flashes: Mutex<HashMap<String, Flash>>,
    idle: Duration,
    absolute: Duration,
}

impl Sessions {
    /// Sessions in `store` with the standard timeouts.
    pub(crate) fn new(store: Store, credentials: Arc<AdminCredentials>) -> Self {
        Sessions::with_timeouts(store, credentials, IDLE_TIMEOUT, ABSOLUTE_TIMEOUT)
    }

    /// Sessions that end after `idle` without a request, or `absolute` in all.
    pub(crate) fn with_timeouts(
        store: Store,
        credentials: Arc<AdminCredentials>,
        idle: Duration,
        absolute: Duration,
    ) -> Self {
        Sessions {
            store,
            credentials,
            cache: Mutex::default(),
            flashes: Mutex::default(),
            idle,
            absolute,
        }
    }

    /// Checks a pasted credential and opens a session for it; returns the
    /// cookie value. `None` when the credential is not an admin's token (or
    /// the session cannot be stored: fail closed).
    pub(crate) async fn login(
        &self,
        credential: &str,
        credentials: &AdminCredentials,
    ) -> Option<String> {
        if credential.is_empty() {
            return None;
        }
        credentials.authenticate(credential)?;
        self.open(Some(hash_token(credential)), None).await
    }

    /// Opens a session for the live credential whose token hash (or
    /// certificate fingerprint) is `token_sha256`, as its token would
    /// (a passkey login of the human of the same name); returns the cookie
    /// value.
    pub(crate) async fn login_credential(&self, token_sha256: &str) -> Option<String> {
        self.open(Some(token_sha256.to_string()), None).await
    }

    /// Opens the session of a human who logged in at OIDC issuer `issuer`,
    /// named `name`, with the admin role `[[admin.oidc_roles]]` gave them;
    /// returns the cookie value (`None`: the session cannot be stored).
    /// They hold no admin credential: the row carries who they are, so the
    /// session works on every replica and ends at logout or with its
    /// timeouts (a credential change does not touch it).
    pub(crate) async fn login_oidc(&self, name: &str, issuer: &str, role: Role) -> Option<String> {
        let login = ConsoleSessionLogin {
            issuer: issuer.to_string(),
            name: name.to_string(),
            role: role.as_str().to_string(),
        };
        self.open(None, Some(login)).await
    }

    /// Stores a new session, for a credential's token hash or an OIDC
    /// login; returns the cookie value.
    async fn open(
        &self,
        credential_sha256: Option<String>,
        login: Option<ConsoleSessionLogin>,
    ) -> Option<String> {
        let id = random_hex();
        let now = now_ms();
        let row = ConsoleSessionRow {
            id_sha256: hash_token(&id),
            credential_sha256,
            login,
            created_ms: now,
            last_seen_ms: now,
        };
        let opened = self
            .store
            .open_console_session(
                &row,
                now - millis(self.idle),
                now - millis(self.absolute),
                MAX_SESSIONS,
            )
            .await;
        if let Err(e) = opened {
            tracing::error!(error = %e, "console: cannot store a session; login refused");
            return None;
        }
        Some(id)
    }

    /// The live session a request's cookie names, touching its idle timer.
    /// A session whose credential was revoked or rotated since it logged in
    /// ends here; a changed role takes effect on the next page.
    pub(crate) async fn find(
        &self,
        headers: &HeaderMap,
        credentials: &AdminCredentials,
    ) -> Option<SessionView> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let key = hash_token(&id);
        let now = now_ms();
        let mut entry = self.read(&key, credentials).await?;
        if self.expired(&entry, now) {
            self.forget(&key).await;
            return None;
        }
        entry.last_seen_ms = now;
        if now - entry.stored_seen_ms >= millis(self.touch_every()) {
            match self.store.touch_console_session(&key, now).await {
                Ok(()) => entry.stored_seen_ms = now,
                Err(e) => tracing::warn!(error = %e, "console: cannot record a session's use"),
            }
        }
        self.lock_cache().insert(key.clone(), entry.clone());
        Some(SessionView {
            csrf: csrf_of(&id),
            key,
            name: entry.identity.name.clone(),
            role: entry.identity.role,
            identity: entry.identity,
        })
    }

    /// Whether a session is still live, without touching it (a long-lived
    /// event stream must not keep its session alive by itself).
    pub(crate) async fn alive(&self, session: &SessionView) -> bool {
        match self.read(&session.key, &self.credentials).await {
            Some(entry) => !self.expired(&entry, now_ms()),
            None => false,
        }
    }

    /// Ends a session (logout): its row is deleted, so no replica honours it.
    pub(crate) async fn end(&self, session: &SessionView) {
        self.forget(&session.key).await;
        // The other replicas (cluster mode) drop their cached copy now, not
        // at its expiry.
        crate::credentials::announce(&self.store).await;
    }

    /// Leaves a message for the session's next page.
    pub(crate) fn flash(&self, session: &SessionView, flash: Flash) {
        self.lock_flashes().insert(session.key.clone(), flash);
    }

    /// Takes the session's message, if any.
    pub(crate) fn take_flash(&self, session: &SessionView) -> Option<Flash> {
        self.lock_flashes().remove(&session.key)
    }

    /// The session `key`, from the cache while it is fresh and the
    /// credentials have not changed, else from the store.
    async fn read(&self, key: &str, credentials: &AdminCredentials) -> Option<Cached> {
        let generation = credentials.generation();
        let cached = self.lock_cache().get(key).cloned();
        if let Some(c) = &cached
            && c.generation == generation
            && c.read_at.elapsed() < CACHE_TTL
        {
            return Some(c.clone());
        }
        let live = match self.store.console_session(key).await {
            Ok(live) => live,
            Err(e) => {
                // Fail closed: a session that cannot be checked is not used.
                tracing::error!(error = %e, "console: cannot read a session");
                return None;
            }
        };
        let now_s = now_ms() / 1000;
        let resolved = live.and_then(|l| {
            // A certificate credential's session ends with its certificate.
            if l.credential.as_ref().is_some_and(|c| {
                c.kind == ADMIN_KIND_CERTIFICATE && c.not_after.unwrap_or(0) <= now_s
            }) {
                return None;
            }
            let identity = match (&l.credential, &l.session.login) {
                (Some(credential), _) => identity_of(credential),
                // The identity's id names the session, not a credential
                // (a prefix of the id's hash: the cookie is not derivable).
                (None, Some(login)) => login_identity(&login_identity_id(key), login),
                (None, None) => None,
            }?;
            Some((identity, l.session))
        });
        let Some((identity, session)) = resolved else {
            self.lock_cache().remove(key);
            return None;
        };
        let last_seen_ms = cached
            .map(|c| c.last_seen_ms)
            .unwrap_or_default()
            .max(session.last_seen_ms);
        let entry = Cached {
            identity,
            created_ms: session.created_ms,
            last_seen_ms,
            stored_seen_ms: session.last_seen_ms,
            read_at: Instant::now(),
            generation,
        };
        self.lock_cache().insert(key.to_string(), entry.clone());
        Some(entry)
    }

    async fn forget(&self, key: &str) {
        self.lock_cache().remove(key);
        self.lock_flashes().remove(key);
        if let Err(e) = self.store.end_console_session(key).await {
            tracing::error!(error = %e, "console: cannot delete a session");
        }
    }

    fn expired(&self, entry: &Cached, now: i64) -> bool {
        now - entry.last_seen_ms > millis(self.idle)
            || now - entry.created_ms > millis(self.absolute)
    }

    fn touch_every(&self) -> Duration {
        TOUCH_EVERY.min(self.idle / 10)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_flashes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flash>> {
        self.flashes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A session's CSRF token: derived from its id, which only the browser holds.
fn csrf_of(id: &str) -> String {
    hash_token(&format!("portcullis console csrf\0{id}"))
}

fn now_ms() -> i64 {
    crate::api::now_ms()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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
    use crate::credentials::{CredentialKind, mint};
    use axum::http::header;

    fn headers(cookie_header: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(cookie_header).unwrap(),
        );
        h
    }

    /// A store with one credential per role given; their tokens.
    async fn store_with(roles: &[(&str, Role)]) -> (tempfile::TempDir, Store, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let mut tokens = Vec::new();
        for (name, role) in roles {
            let (row, token) = mint(name, *role, "test", false);
            store.add_admin_credential(&row).await.unwrap();
            tokens.push(token);
        }
        (dir, store, tokens)
    }

    #[tokio::test]
    async fn a_session_opens_only_for_an_admin_token_survives_a_restart_and_ends_at_logout() {
        let (_dir, store, tokens) = store_with(&[("root", Role::Owner)]).await;
        let credentials = Arc::new(AdminCredentials::load(&store).await.unwrap());
        let sessions = Sessions::new(store.clone(), credentials.clone());
        assert!(sessions.login("pcadm_wrong", &credentials).await.is_none());
        assert!(sessions.login("", &credentials).await.is_none());
        let id = sessions.login(&tokens[0], &credentials).await.unwrap();
        let h = headers(&format!("other=1; {SESSION_COOKIE}={id}"));
        let view = sessions.find(&h, &credentials).await.unwrap();
        assert_eq!(view.name, "root");
        assert_eq!(view.csrf, csrf_of(&id));
        assert!(sessions.alive(&view).await);
        // Neither the id nor the token is stored, nor the CSRF token.
        let row = store
            .console_session(&hash_token(&id))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(row.session.id_sha256, id);
        assert_ne!(row.session.id_sha256, view.csrf);
        assert_eq!(row.session.credential_sha256, Some(hash_token(&tokens[0])));
        let unknown = headers(&format!("{SESSION_COOKIE}={}", random_hex()));
        assert!(sessions.find(&unknown, &credentials).await.is_none());
        // A restart (a new table over the same store) keeps the session.
        let restarted = Sessions::new(store.clone(), credentials.clone());
        let again = restarted.find(&h, &credentials).await.unwrap();
        assert_eq!(again.csrf, view.csrf);
        // Logout on one ends it on the other at once for this replica, and
        // for the other once its cache expires.
        restarted.end(&again).await;
        assert!(restarted.find(&h, &credentials).await.is_none());
        assert!(
            store
                .console_session(&hash_token(&id))
                .await
                .unwrap()
                .is_none()
        );
        let other = Sessions::new(store, credentials.clone());
        assert!(other.find(&h, &credentials).await.is_none());
    }

    #[tokio::test]
    async fn a_session_has_its_credential_role_and_ends_with_the_credential() {
        let (_dir, store, tokens) = store_with(&[
            ("root", Role::Owner),
            ("aud", Role::Auditor),
            ("appr", Role::Approver),
        ])
        .await;
        let credentials = Arc::new(AdminCredentials::load(&store).await.unwrap());
        let sessions = Sessions::new(store.clone(), credentials.clone());
        let auditor = headers(&format!(
            "{SESSION_COOKIE}={}",
            sessions.login(&tokens[1], &credentials).await.unwrap()
        ));
        let approver = headers(&format!(
            "{SESSION_COOKIE}={}",
            sessions.login(&tokens[2], &credentials).await.unwrap()
        ));
        let view = sessions.find(&auditor, &credentials).await.unwrap();
        assert!(may(&view, Permission::View));
        assert!(may(&view, Permission::ReadAudit));
        assert!(!may(&view, Permission::ManageAgents));
        assert!(!may(&view, Permission::DecideApprovals));
        let view = sessions.find(&approver, &credentials).await.unwrap();
        assert!(may(&view, Permission::DecideApprovals));
        assert!(!may(&view, Permission::ApproveTools));
        // Revoked, or rotated: the next request on this replica is refused,
        // cache or not (the reload after the change empties it).
        store.revoke_admin_credential("aud", 5).await.unwrap();
        store
            .rotate_admin_credential("appr", &hash_token("pcadm_new"), 5)
            .await
            .unwrap();
        credentials.reload(&store).await.unwrap();
        assert!(sessions.find(&auditor, &credentials).await.is_none());
        assert!(sessions.find(&approver, &credentials).await.is_none());
    }

    #[tokio::test]
    async fn an_oidc_session_acts_as_its_human_on_every_replica_until_logout() {
        let (_dir, store, _tokens) =
            store_with(&[("root", Role::Owner), ("ops", Role::Operator)]).await;
        let credentials = Arc::new(AdminCredentials::load(&store).await.unwrap());
        let sessions = Sessions::new(store.clone(), credentials.clone());
        let id = sessions
            .login_oidc("oidc:alice@x", "https://idp", Role::Approver)
            .await
            .unwrap();
        let h = headers(&format!("{SESSION_COOKIE}={id}"));
        let view = sessions.find(&h, &credentials).await.unwrap();
        assert_eq!(
            (
                view.name.as_str(),
                view.role,
                view.identity.login.as_deref()
            ),
            ("oidc:alice@x", Role::Approver, Some("https://idp"))
        );
        assert_eq!(view.identity.kind, CredentialKind::Login);
        assert!(may(&view, Permission::DecideApprovals));
        assert!(!may(&view, Permission::ManageAgents));
        // No admin credential was made for it.
        assert_eq!(store.admin_credentials().await.unwrap().len(), 2);
        // Another replica (its own cache) honours it; a credential change
        // does not end it.
        let other = Sessions::new(store.clone(), credentials.clone());
        store.revoke_admin_credential("ops", 5).await.unwrap();
        credentials.reload(&store).await.unwrap();
        assert!(other.find(&h, &credentials).await.is_some());
        // Logout on one replica ends it on every replica.
        sessions.end(&view).await;
        assert!(sessions.find(&h, &credentials).await.is_none());
        tokio::time::sleep(CACHE_TTL + Duration::from_millis(100)).await;
        assert!(other.find(&h, &credentials).await.is_none(), "logged out");
    }

    #[tokio::test]
    async fn sessions_expire_when_idle_and_in_any_case() {
        let (_dir, store, tokens) = store_with(&[("root", Role::Owner)]).await;
        let credentials = Arc::new(AdminCredentials::load(&store).await.unwrap());
        let idle = Sessions::with_timeouts(
            store.clone(),
            credentials.clone(),
            Duration::from_millis(300),
            ABSOLUTE_TIMEOUT,
        );
        // A use counts from some moment within its call: a lookup must find
        // the session when it ends less than the timeout after the start of
        // the previous use. A loaded machine may pause longer than that
        // between two uses; such a step proves nothing and is not asserted.
        let mut used = Instant::now();
        let id = idle.login(&tokens[0], &credentials).await.unwrap();
        let h = headers(&format!("{SESSION_COOKIE}={id}"));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(150));
            let start = Instant::now();
            let found = idle.find(&h, &credentials).await.is_some();
            let gap = used.elapsed();
            assert!(found || gap >= Duration::from_millis(300), "in use {gap:?}");
            if !found {
                eprintln!("paused {gap:?} between two uses: not a test of `in use`");
                break;
            }
            used = start;
        }
        std::thread::sleep(Duration::from_millis(400));
        assert!(idle.find(&h, &credentials).await.is_none(), "idle too long");
        let absolute = Sessions::with_timeouts(
            store,
            credentials.clone(),
            IDLE_TIMEOUT,
            Duration::from_millis(300),
        );
        let start = Instant::now();
        let id = absolute.login(&tokens[0], &credentials).await.unwrap();
        let h = headers(&format!("{SESSION_COOKIE}={id}"));
        let found = absolute.find(&h, &credentials).await.is_some();
        assert!(found || start.elapsed() >= Duration::from_millis(300));
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            absolute.find(&h, &credentials).await.is_none(),
            "past the absolute limit"
        );
    }

    #[tokio::test]
    async fn the_store_is_read_at_most_once_per_cache_period() {
        let (_dir, store, tokens) = store_with(&[("root", Role::Owner)]).await;
        let credentials = Arc::new(AdminCredentials::load(&store).await.unwrap());
        let sessions = Sessions::new(store.clone(), credentials.clone());
        let id = sessions.login(&tokens[0], &credentials).await.unwrap();
        let h = headers(&format!("{SESSION_COOKIE}={id}"));
        let read = Instant::now();
        assert!(sessions.find(&h, &credentials).await.is_some());
        // Deleted behind this replica's back (another replica's logout):
        // honoured from the cache until it expires (unless a loaded machine
        // took the whole cache period to get here), then refused.
        store.end_console_session(&hash_token(&id)).await.unwrap();
        let cached = sessions.find(&h, &credentials).await.is_some();
        assert!(cached || read.elapsed() >= CACHE_TTL, "cached");
        std::thread::sleep(CACHE_TTL + Duration::from_millis(100));
        assert!(sessions.find(&h, &credentials).await.is_none());
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
