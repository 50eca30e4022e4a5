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
//! Codes and pending logins live in memory (bounded; a restart ends logins
//! in progress); clients and refresh tokens in the store. Every grant,
//! refusal and issuance leaves one audit record (resource `oauth2_authorize`,
//! `oauth2_register` or `oauth2_token`).

pub mod config;

mod authorize;
mod callback;
mod client_metadata;
mod grant;
mod page;
mod register;

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_core::ErrorCode;
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
/// Pending logins and unexpired codes held at most (each a few hundred
/// bytes); beyond, new ones are refused until old ones expire.
const MAX_IN_FLIGHT: usize = 10_000;

/// What one authorization request asked for, checked.
#[derive(Debug, Clone)]
pub(crate) struct AuthorizationRequest {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub scope: String,
}

/// A login page handed out and not yet answered.
#[derive(Debug)]
struct PendingLogin {
    request: AuthorizationRequest,
    expires_at: i64,
}

/// Who approved an authorization: a local user, or a user of an OIDC issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// An authorization code handed out.
#[derive(Debug, Clone)]
pub(crate) struct IssuedCode {
    pub request: AuthorizationRequest,
    pub user: LoginUser,
    expires_at: i64,
    /// The refresh family its redemption started, once redeemed.
    redeemed: Option<String>,
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

/// The in-memory side of the flow.
#[derive(Debug)]
pub struct AuthorizationServer {
    pub(crate) config: AuthorizationConfig,
    pending: Mutex<HashMap<String, PendingLogin>>,
    codes: Mutex<HashMap<String, IssuedCode>>,
    /// Registrations in the current hour: (hour number, count).
    registrations: Mutex<(i64, u32)>,
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
        AuthorizationServer {
            metadata,
            config,
            pending: Mutex::default(),
            codes: Mutex::default(),
            registrations: Mutex::new((0, 0)),
        }
    }

    /// Keeps a login page's request; its id goes into the page's form.
    fn begin_login(&self, request: AuthorizationRequest, now: i64) -> Result<String, Denial> {
        let mut pending = lock(&self.pending);
        pending.retain(|_, p| p.expires_at > now);
        if pending.len() >= MAX_IN_FLIGHT {
            return Err(busy());
        }
        let id = random_token();
        pending.insert(
            id.clone(),
            PendingLogin {
                request,
                expires_at: now + LOGIN_TTL,
            },
        );
        Ok(id)
    }

    /// The request behind a login page, still pending.
    fn pending(&self, id: &str, now: i64) -> Option<AuthorizationRequest> {
        lock(&self.pending)
            .get(id)
            .filter(|p| p.expires_at > now)
            .map(|p| p.request.clone())
    }

    /// Ends a login page (answered: allowed or denied).
    fn end_login(&self, id: &str) -> Option<AuthorizationRequest> {
        lock(&self.pending).remove(id).map(|p| p.request)
    }

    /// Hands out a code for `request`, approved by `user`.
    fn issue_code(
        &self,
        request: AuthorizationRequest,
        user: LoginUser,
        now: i64,
    ) -> Result<String, Denial> {
        let mut codes = lock(&self.codes);
        codes.retain(|_, c| c.expires_at > now);
        if codes.len() >= MAX_IN_FLIGHT {
            return Err(busy());
        }
        let code = random_token();
        codes.insert(
            code.clone(),
            IssuedCode {
                request,
                user,
                expires_at: now + CODE_TTL,
                redeemed: None,
            },
        );
        Ok(code)
    }

    /// Redeems a code: once. It stays known, marked, until it expires, so
    /// a second redemption is recognised as reuse.
    pub(crate) fn redeem(&self, code: &str, now: i64) -> Redeemed {
        let mut codes = lock(&self.codes);
        let Some(entry) = codes.get_mut(code).filter(|c| c.expires_at > now) else {
            return Redeemed::Unknown;
        };
        if let Some(family) = &entry.redeemed {
            return Redeemed::Reused(family.clone());
        }
        let family = random_token();
        entry.redeemed = Some(family.clone());
        Redeemed::Fresh(Box::new(entry.clone()), family)
    }

    /// Counts one registration against the hourly cap; `false` when full.
    fn admit_registration(&self, now: i64) -> bool {
        let mut window = lock(&self.registrations);
        let hour = now / 3600;
        if window.0 != hour {
            *window = (hour, 0);
        }
        if window.1 >= self.config.registrations_per_hour {
            return false;
        }
        window.1 += 1;
        true
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

/// The maps are only touched for a lookup or an insert, never across I/O;
/// a poisoned lock (a panic mid-insert) still holds consistent data.
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

    #[test]
    fn codes_redeem_once_and_expire() {
        let s = server();
        let code = s
            .issue_code(request(), LoginUser::local("alice"), 100)
            .unwrap();
        let Redeemed::Fresh(issued, family) = s.redeem(&code, 110) else {
            panic!("fresh code refused");
        };
        assert_eq!(issued.user, LoginUser::local("alice"));
        assert!(matches!(s.redeem(&code, 120), Redeemed::Reused(f) if f == family));
        let late = s
            .issue_code(request(), LoginUser::local("alice"), 100)
            .unwrap();
        assert!(matches!(s.redeem(&late, 100 + CODE_TTL), Redeemed::Unknown));
        assert!(matches!(s.redeem("nope", 100), Redeemed::Unknown));
        // Logins: pending until answered or expired.
        let id = s.begin_login(request(), 100).unwrap();
        assert!(s.pending(&id, 100 + LOGIN_TTL - 1).is_some());
        assert!(s.pending(&id, 100 + LOGIN_TTL).is_none());
        assert!(s.end_login(&id).is_some());
        assert!(s.end_login(&id).is_none());
        // The registration cap is per hour.
        assert!(s.admit_registration(3600));
        assert!(s.admit_registration(3601));
        assert!(!s.admit_registration(3602));
        assert!(s.admit_registration(7200));
    }
}
