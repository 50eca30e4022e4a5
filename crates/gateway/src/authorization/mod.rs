//! The authorization-code flow of MCP authorization (the MCP specification's
//! authorization section, revision 2025-06-18 and later), so a stock MCP host
//! connects with no pre-shared credential:
//!
//! - `POST /oauth2/register` (`register.rs`): RFC 7591 dynamic registration
//!   of public clients, off unless `[identity.authorization]
//!   dynamic_registration`; redirect URIs https or loopback http only, small
//!   bodies, a registrations-per-hour cap and a cap on live clients; every
//!   registration recorded; an admin revokes a client (`/admin/v1/oauth/clients`).
//! - `GET /oauth2/authorize` (`authorize.rs`): code + PKCE (S256 only) with a
//!   resource indicator (RFC 8707) naming one route; answers a login and
//!   consent page (`page.rs`) naming the client, the resource and the scope.
//!   `POST /oauth2/authorize` takes the login: a local user (an admin enrolled
//!   with `portcullis admin user add`) and their TOTP code, consumed once, or
//!   "Log in with <issuer>" for each `[[identity.oidc]]` issuer with a
//!   `client_id`, which sends the browser to that issuer (the relying party
//!   of `portcullis_control::oidc_login`: code + PKCE + state + nonce) and
//!   back to `GET /oauth2/authorize/callback` (`callback.rs`), the login
//!   bound to the browser by a cookie. Either way it redirects with a
//!   single-use code living 60 s, and `iss` (RFC 9207).
//! - `POST /oauth2/token` with `authorization_code` or `refresh_token`
//!   (`grant.rs`): the code is redeemed once (a second redemption revokes
//!   what the first issued), the verifier must match, and the access token
//!   is audience-bound to the resource: a token for one route is refused on
//!   every other. It acts for the user (a federated user with their
//!   issuer and groups, as token exchange would see them) through the configured agent
//!   (`sub` the user, `act` the agent then `oauth-client:<id>`), so policy
//!   sees `context.delegation` and must allow the user too; DPoP-bound when
//!   the client sent a proof, else a bearer token (`context.auth.binding ==
//!   "bearer"`). Refresh tokens rotate on every use; a used one presented
//!   again revokes its family and the family's access tokens.
//!
//! - Clients: registered ones (`register.rs`, off unless allow-listed), or
//!   an https URL as `client_id` naming the client's metadata document
//!   (`client_metadata.rs`, Client ID Metadata Documents), fetched from
//!   allow-listed hosts only.
//!
//! Login pages in progress and codes live in the store, like the console's
//! ceremonies (`pending_ceremonies`, migrations 0030 and 0034), so an
//! authorization started on one replica of a cluster may be answered on a
//! second and redeemed on a third: each row is keyed by a hash of the
//! login id or code and sealed under a key derived from it
//! (`portcullis_control::bearer_seal`), expires, and is bounded per kind
//! and per client. A login page is taken out by one `DELETE … RETURNING`
//! before its code is issued, and a code spent by one `UPDATE … WHERE
//! spent IS NULL … RETURNING`, so of two concurrent answers or redemptions
//! (on any replicas) exactly one wins, and a later one is seen as reuse.
//! Clients and refresh tokens are in the store too. Every grant,
//! refusal and issuance leaves one audit record (resource `oauth2_authorize`,
//! `oauth2_register` or `oauth2_token`).

pub mod config;

mod authorize;
mod callback;
mod client_metadata;
mod grant;
mod page;
mod register;

use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_control::bearer_seal;
use portcullis_core::ErrorCode;
use portcullis_store::{CeremonyBound, Spend, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub(crate) use authorize::serve_authorize;
pub(crate) use callback::serve_callback;
pub(crate) use grant::token;
pub(crate) use register::serve_register;

use crate::respond::Denial;
use crate::state::Gateway;
use config::AuthorizationConfig;

/// The authorization endpoint.
pub const AUTHORIZE_PATH: &str = "/oauth2/authorize";
/// Where an OIDC issuer sends the browser back after a login started on
/// the authorization page.
pub const CALLBACK_PATH: &str = "/oauth2/authorize/callback";
/// The registration endpoint (RFC 7591).
pub const REGISTER_PATH: &str = "/oauth2/register";
/// The one scope offered: access to the resource as policy allows the user
/// and the agent (permissions come from policy, not from scopes).
pub const SCOPE: &str = "mcp";
/// How long an authorization code lives (RFC 6749 §4.1.2 recommends ≤ 10 min).
const CODE_TTL: i64 = 60;
/// How long a login page stays usable.
const LOGIN_TTL: i64 = 600;
/// Pending logins, and unexpired codes, held at most (each a few hundred
/// bytes, all replicas); beyond, new ones are refused until old ones expire.
const MAX_IN_FLIGHT: i64 = 10_000;
/// Of those, at most this many for one client, so one client (anybody can
/// open a login page naming it) cannot take every place.
const MAX_PER_CLIENT: i64 = 1_000;
/// The store's `kind` of login pages in progress, and their seal's label.
const LOGIN_KIND: &str = "oauth_login";
/// The store's `kind` of authorization codes, and their seal's label.
const CODE_KIND: &str = "oauth_code";
/// The store's admission counter of dynamic client registrations (one
/// window per clock hour).
const REGISTRATION_WINDOW_KEY: &str = "oauth_register";

/// What one authorization request asked for, checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AuthorizationRequest {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub scope: String,
}

/// Who approved an authorization: a local user, or a user of an OIDC issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LoginUser {
    /// The user's name (a local user) or subject (a federated one).
    pub name: String,
    /// The OIDC issuer of a federated user; `None`: a local user (the
    /// gateway's own).
    pub issuer: Option<String>,
    /// A federated user's groups (usable as Cedar roles).
    pub groups: Vec<String>,
    /// Whether the login passed a second factor.
    pub mfa: bool,
}

impl LoginUser {
    /// A local user, who logged in with their TOTP code.
    pub(crate) fn local(name: &str) -> Self {
        LoginUser {
            name: name.to_string(),
            issuer: None,
            groups: Vec::new(),
            mfa: true,
        }
    }
}

/// An authorization code handed out (sealed in the store under the code).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IssuedCode {
    pub request: AuthorizationRequest,
    pub user: LoginUser,
}

/// What redeeming a code found.
#[derive(Debug)]
pub(crate) enum Redeemed {
    /// First redemption: the code and the new refresh family's id.
    Fresh(Box<IssuedCode>, String),
    /// Redeemed before: the family its first redemption started.
    Reused(String),
    /// Unknown or expired.
    Unknown,
}

/// The flow's configuration (logins in progress, codes and the hourly
/// registration count are in the store, shared by every replica).
#[derive(Debug)]
pub struct AuthorizationServer {
    pub(crate) config: AuthorizationConfig,
    /// The metadata-document fetcher, when hosts are allow-listed.
    metadata: Option<client_metadata::ClientMetadata>,
}

/// A random 256-bit value, base64url: codes, login ids, refresh tokens.
pub(crate) fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    B64.encode(bytes)
}

/// SHA-256 hex, how refresh tokens are stored.
pub(crate) fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters (the same rule for the
/// S256 challenge, which is 43 base64url characters).
fn pkce_value_ok(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Whether `verifier` is the S256 pre-image of `challenge`. A plain
/// comparison: the challenge is public (it travelled in the authorization
/// request), and what is compared is a hash of the secret.
pub(crate) fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    pkce_value_ok(verifier) && B64.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

/// The resource (RFC 8707) `resource` names, checked: the URL of one of the
/// gateway's routes, exactly its prefix under the issuer. Tokens are good
/// for that route only.
pub(crate) fn route_resource(gateway: &Gateway, resource: &str) -> Result<String, Denial> {
    let issuer = gateway.tokens.issuer_url();
    let snapshot = gateway.snapshot.load();
    resource
        .strip_prefix(issuer)
        .filter(|prefix| {
            snapshot
                .routing
                .routes
                .lookup(prefix)
                .is_some_and(|(route, _)| route.path_prefix == *prefix)
        })
        .map(|_| resource.to_string())
        .ok_or_else(|| {
            Denial::new(
                ErrorCode::InvalidTarget,
                "`resource` must be the URL of one of the gateway's routes (the `resource` of its protected-resource metadata)",
            )
        })
}

impl AuthorizationServer {
    /// The flow for `config`; metadata documents are fetched trusting `tls`.
    pub fn new(config: AuthorizationConfig, tls: rustls::ClientConfig) -> Self {
        let metadata = (!config.client_metadata_hosts.is_empty()).then(|| {
            client_metadata::ClientMetadata::new(
                config.client_metadata_hosts.clone(),
                config.client_metadata_addresses.clone(),
                config.client_metadata_private_addresses,
                tls,
            )
        });
        AuthorizationServer { metadata, config }
    }

    /// Keeps a login page's request, sealed in the store; its id goes into
    /// the page's form.
    async fn begin_login(
        &self,
        store: &Store,
        request: &AuthorizationRequest,
        now: i64,
    ) -> Result<String, Denial> {
        let id = random_token();
        begin(
            store,
            LOGIN_KIND,
            &id,
            request,
            &request.client_id,
            now + LOGIN_TTL,
            now,
        )
        .await?;
        Ok(id)
    }

    /// The request behind a login page, still pending (left in place: a
    /// refused TOTP code shows the page again).
    async fn pending(
        &self,
        store: &Store,
        id: &str,
        now: i64,
    ) -> Result<Option<AuthorizationRequest>, Denial> {
        let sealed = store
            .peek_ceremony(&bearer_seal::key(LOGIN_KIND, id), LOGIN_KIND, now * 1000)
            .await
            .map_err(store_unavailable)?;
        Ok(sealed.and_then(|s| bearer_seal::open_json(LOGIN_KIND, id, &s)))
    }

    /// Ends a login page (answered: allowed or denied), once: `None` when
    /// it was already answered (on any replica) or expired.
    async fn end_login(
        &self,
        store: &Store,
        id: &str,
        now: i64,
    ) -> Result<Option<AuthorizationRequest>, Denial> {
        let sealed = store
            .take_ceremony(&bearer_seal::key(LOGIN_KIND, id), LOGIN_KIND, now * 1000)
            .await
            .map_err(store_unavailable)?;
        Ok(sealed.and_then(|s| bearer_seal::open_json(LOGIN_KIND, id, &s)))
    }

    /// Hands out a code for `request`, approved by `user`.
    async fn issue_code(
        &self,
        store: &Store,
        request: AuthorizationRequest,
        user: LoginUser,
        now: i64,
    ) -> Result<String, Denial> {
        let code = random_token();
        let owner = request.client_id.clone();
        let issued = IssuedCode { request, user };
        begin(
            store,
            CODE_KIND,
            &code,
            &issued,
            &owner,
            now + CODE_TTL,
            now,
        )
        .await?;
        Ok(code)
    }

    /// Redeems a code: once, on whichever replica comes first. It stays
    /// known, marked with the refresh family its redemption started, until
    /// it expires, so a second redemption is recognised as reuse.
    pub(crate) async fn redeem(
        &self,
        store: &Store,
        code: &str,
        now: i64,
    ) -> Result<Redeemed, Denial> {
        let family = random_token();
        let spent = store
            .spend_ceremony(
                &bearer_seal::key(CODE_KIND, code),
                CODE_KIND,
                &family,
                now * 1000,
            )
            .await
            .map_err(store_unavailable)?;
        Ok(match spent {
            Spend::Fresh(sealed) => match bearer_seal::open_json(CODE_KIND, code, &sealed) {
                Some(issued) => Redeemed::Fresh(Box::new(issued), family),
                None => Redeemed::Unknown,
            },
            Spend::Reused(family) => Redeemed::Reused(family),
            Spend::Unknown => Redeemed::Unknown,
        })
    }

    /// Counts one registration against the hourly cap (`now` in seconds);
    /// `false` when full. One counter in the store for every replica (one
    /// conditional upsert per registration: rare, deliberate requests), so
    /// N replicas admit the configured rate together, not N times it. A
    /// store that does not answer refuses the registration.
    async fn admit_registration(&self, store: &Store, now: i64) -> Result<bool, Denial> {
        store
            .admit_in_window(
                REGISTRATION_WINDOW_KEY,
                now.div_euclid(3600),
                i64::from(self.config.registrations_per_hour),
            )
            .await
            .map_err(store_unavailable)
    }

    /// Whether clients may name themselves by metadata document URL.
    pub(crate) fn client_metadata_supported(&self) -> bool {
        self.metadata.is_some()
    }
}

fn busy() -> Denial {
    Denial::new(
        ErrorCode::Unavailable,
        "too many authorizations in progress; retry shortly",
    )
}

fn store_unavailable(e: portcullis_store::StoreError) -> Denial {
    tracing::error!(error = %e, "authorization endpoint: store unavailable");
    Denial::new(
        ErrorCode::Unavailable,
        "authorizations in progress cannot be read or written now; retry shortly",
    )
}

/// Stores `value` sealed under `secret` as a ceremony of `kind` for
/// `client`, live until `expires_at` (seconds); refused when too many are
/// in progress, in all or for that client.
async fn begin<T: Serialize>(
    store: &Store,
    kind: &str,
    secret: &str,
    value: &T,
    client: &str,
    expires_at: i64,
    now: i64,
) -> Result<(), Denial> {
    let sealed = bearer_seal::seal_json(kind, secret, value)
        .ok_or_else(|| Denial::new(ErrorCode::Internal, "internal error"))?;
    let bound = CeremonyBound {
        owner: client,
        max: MAX_IN_FLIGHT,
        max_per_owner: MAX_PER_CLIENT,
    };
    let begun = store
        .begin_owned_ceremony(
            &bearer_seal::key(kind, secret),
            kind,
            &sealed,
            expires_at * 1000,
            now * 1000,
            bound,
        )
        .await
        .map_err(store_unavailable)?;
    if begun { Ok(()) } else { Err(busy()) }
}

/// The counter is only touched for an update, never across I/O; a
/// poisoned lock (a panic mid-update) still holds consistent data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The client `client_id` names: a metadata document's (a URL), or a
/// registered, unrevoked one.
pub(crate) async fn live_client(
    gateway: &Gateway,
    server: &AuthorizationServer,
    client_id: &str,
    now: i64,
) -> Result<portcullis_store::OAuthClientRow, Denial> {
    if client_metadata::is_url_client_id(client_id) {
        let Some(metadata) = &server.metadata else {
            return Err(Denial::new(
                ErrorCode::InvalidClient,
                "this gateway takes no Client ID Metadata Documents (`client_metadata_hosts` is empty)",
            ));
        };
        let client = metadata.client(client_id, now).await?;
        // An admin may revoke it (the row its first grant left).
        if read_client(gateway, client_id)
            .await?
            .is_some_and(|c| c.revoked_at.is_some())
        {
            return Err(Denial::new(
                ErrorCode::InvalidClient,
                "this client was revoked",
            ));
        }
        return Ok(client);
    }
    read_client(gateway, client_id)
        .await?
        .filter(|c| c.revoked_at.is_none())
        .ok_or_else(|| {
            Denial::new(
                ErrorCode::InvalidClient,
                "`client_id` names no registered client (or a revoked one)",
            )
        })
}

/// The stored row of `client_id`, revoked or not.
async fn read_client(
    gateway: &Gateway,
    client_id: &str,
) -> Result<Option<portcullis_store::OAuthClientRow>, Denial> {
    gateway.store.oauth_client(client_id).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read OAuth clients");
        Denial::new(
            ErrorCode::Unavailable,
            "the client registry cannot be read; retry shortly",
        )
    })
}

/// Stores a metadata-document client before its first refresh token names
/// it (registered clients are stored at registration).
pub(crate) async fn remember_client(
    gateway: &Gateway,
    client: &portcullis_store::OAuthClientRow,
) -> Result<(), Denial> {
    if !client_metadata::is_url_client_id(&client.client_id) {
        return Ok(());
    }
    gateway
        .store
        .remember_oauth_client(client)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot store an OAuth client");
            Denial::new(
                ErrorCode::Unavailable,
                "the client cannot be recorded now; retry shortly",
            )
        })
}

/// The configured flow, or the refusal when `[identity.authorization]` is absent.
pub(crate) fn configured(gateway: &Gateway) -> Result<&AuthorizationServer, Denial> {
    gateway.authorization.as_deref().ok_or_else(|| {
        Denial::new(
            ErrorCode::RouteNotFound,
            "the authorization-code flow is not configured (`[identity.authorization]`)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> AuthorizationServer {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        AuthorizationServer::new(
            AuthorizationConfig {
                agent: portcullis_core::AgentName::parse("hosts").unwrap(),
                dynamic_registration: true,
                registration: config::RegistrationAllowList::default(),
                client_metadata_hosts: Vec::new(),
                client_metadata_private_addresses: false,
                client_metadata_addresses: Default::default(),
                registrations_per_hour: 2,
                max_clients: 10,
                refresh_ttl: 3600,
            },
            tls,
        )
    }

    fn request() -> AuthorizationRequest {
        AuthorizationRequest {
            client_id: "c".into(),
            client_name: "n".into(),
            redirect_uri: "http://127.0.0.1/cb".into(),
            state: None,
            code_challenge: "x".into(),
            resource: "https://gw/mcp".into(),
            scope: SCOPE.into(),
        }
    }

    #[test]
    fn pkce_s256() {
        // The challenge as Python's hashlib and base64 make it.
        let verifier = "dBjftJeZ4CVP-mJ92K5z0hm5JKWsDmKMGG6uKn8cFb0";
        let challenge = "MpGuBtk-0oBCX_JUO--hkE1shPEVaAlxY8zzzw3H8mM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(&verifier.replace('d', "e"), challenge));
        // `plain` (the verifier as its own challenge) never matches.
        assert!(!pkce_matches(challenge, challenge));
        assert!(!pkce_matches("short", challenge));
    }

    #[tokio::test]
    async fn registrations_are_counted_once_for_every_replica_on_both_backends() {
        for db in portcullis_store::testing::TestDb::all().await {
            // Two servers on one store: two replicas, one hourly count.
            let (a, b) = (server(), server());
            let (one, two) = (db.open().await, db.open().await);
            let hour = 7 * 3600;
            assert!(a.admit_registration(&one, hour).await.unwrap());
            assert!(b.admit_registration(&two, hour + 10).await.unwrap());
            assert!(!a.admit_registration(&one, hour + 20).await.unwrap());
            assert!(!b.admit_registration(&two, hour + 3599).await.unwrap());
            // The next clock hour starts afresh.
            assert!(b.admit_registration(&two, hour + 3600).await.unwrap());
        }
    }

    #[tokio::test]
    async fn codes_redeem_once_and_expire_on_both_backends() {
        for db in portcullis_store::testing::TestDb::all().await {
            codes_on(&db.open().await).await;
        }
    }

    async fn codes_on(store: &Store) {
        let s = server();
        let code = s
            .issue_code(store, request(), LoginUser::local("alice"), 100)
            .await
            .unwrap();
        let Redeemed::Fresh(issued, family) = s.redeem(store, &code, 110).await.unwrap() else {
            panic!("fresh code refused");
        };
        assert_eq!(issued.user, LoginUser::local("alice"));
        assert!(
            matches!(s.redeem(store, &code, 120).await.unwrap(), Redeemed::Reused(f) if f == family)
        );
        let late = s
            .issue_code(store, request(), LoginUser::local("alice"), 100)
            .await
            .unwrap();
        assert!(matches!(
            s.redeem(store, &late, 100 + CODE_TTL).await.unwrap(),
            Redeemed::Unknown
        ));
        assert!(matches!(
            s.redeem(store, "nope", 100).await.unwrap(),
            Redeemed::Unknown
        ));
        // The store holds neither the code nor what it grants in the clear.
        let key = bearer_seal::key(CODE_KIND, &late);
        let sealed = store
            .peek_ceremony(&key, CODE_KIND, 100_000)
            .await
            .unwrap()
            .unwrap();
        assert!(!sealed.contains("alice") && !sealed.contains(&late) && key != late);
        // Logins: pending until answered (once) or expired.
        let id = s.begin_login(store, &request(), 100).await.unwrap();
        let pending = s.pending(store, &id, 100 + LOGIN_TTL - 1).await.unwrap();
        assert_eq!(pending.unwrap().client_id, "c");
        assert!(
            s.pending(store, &id, 100 + LOGIN_TTL)
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.end_login(store, &id, 101).await.unwrap().is_some());
        assert!(s.end_login(store, &id, 101).await.unwrap().is_none());
        assert!(s.pending(store, &id, 101).await.unwrap().is_none());
    }
}
