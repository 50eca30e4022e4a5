//! Humans log in at an OpenID Connect issuer: the one relying-party flow of
//! the web console and of the MCP authorization page. The authorization-code
//! flow (OpenID Connect Core §3.1) with PKCE (S256), `state` and `nonce`;
//! the issuer's endpoints come from its discovery document
//! (`<issuer>/.well-known/openid-configuration`, whose `issuer` must be the
//! configured one), and the ID token is verified by the same code and key
//! cache as the user tokens of token exchange ([`OidcProviders`]), with the
//! client id as audience.
//!
//! A login is single-use and short: [`RelyingParty::start`] keeps the
//! state's nonce, verifier, redirect URI and purpose in the store (bounded,
//! ten minutes; migration 0030), so the issuer's callback may reach any
//! replica of a cluster, and [`RelyingParty::finish`] takes them out (one
//! atomic statement) before anything else, so a callback URL works once,
//! even when it reaches two replicas at once. The row is keyed by SHA-256
//! of the state and sealed (AES-256-GCM) under a key derived from the
//! state, which only the browser and the callback URL carry: the store
//! alone gives neither a usable state nor the PKCE verifier. The caller binds the login to the
//! browser that started it (a cookie holding the state) and passes that
//! cookie's value: a callback opened in another browser is refused (login
//! CSRF). The client secret is read once at start and never logged, shown
//! or recorded; errors name what failed, never a secret or a token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use portcullis_identity::IdToken;
use portcullis_store::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::{ClientSecretSource, OidcConfig, SecretHeaders};
use crate::oidc::{OidcProviders, UserTokenRefusal};
use crate::otlp::Poster;

/// How long a started login may take at the issuer.
pub const LOGIN_TTL: i64 = 600;
/// Logins in progress at most (each a few hundred bytes); beyond, new ones
/// are refused until old ones end.
const MAX_PENDING: i64 = 10_000;
/// The store's `kind` for logins in progress.
const CEREMONY_KIND: &str = "oidc_login";
/// How long a call to the issuer may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The discovery document's path under the issuer.
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Why a login did not complete. The messages are safe to show the human.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No login issuer has this index.
    #[error("no such login issuer")]
    UnknownIssuer,
    /// The issuer's discovery document is unusable or unreachable.
    #[error("the identity provider cannot be reached or misdescribes itself: {0}")]
    Discovery(String),
    /// Too many logins in progress.
    #[error("too many logins in progress; retry shortly")]
    Busy,
    /// The store that keeps logins in progress failed.
    #[error("the login cannot be kept or found: the store is unavailable")]
    Store,
    /// The callback's `state` names no login in progress (unknown, used or expired).
    #[error("this login is unknown, expired or was already completed; start again")]
    UnknownState,
    /// The callback reached another browser than the one that started the login.
    #[error("this login was started in another browser; start again here")]
    OtherBrowser,
    /// The login was started for another purpose (console vs. authorization page).
    #[error("this login was started elsewhere; start again")]
    WrongPurpose,
    /// The callback names another issuer (RFC 9207 `iss`).
    #[error("the answer names another identity provider")]
    WrongIssuer,
    /// The issuer refused the login (its `error` code).
    #[error("the identity provider refused the login (`{0}`)")]
    Refused(String),
    /// The code could not be redeemed at the token endpoint.
    #[error("the identity provider did not redeem the login's code: {0}")]
    Redeem(String),
    /// The ID token was refused.
    #[error("the identity provider's ID token was refused: {0}")]
    IdToken(#[from] UserTokenRefusal),
}

/// What an issuer's callback carries (its query string).
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    /// The login's `state`.
    pub state: Option<String>,
    /// The authorization code, on success.
    pub code: Option<String>,
    /// The error code, on refusal.
    pub error: Option<String>,
    /// Who answered (RFC 9207), when the issuer says.
    pub iss: Option<String>,
}

/// A started login: where to send the browser, and the state to bind to it.
#[derive(Debug)]
pub struct Started {
    /// The issuer's authorization URL with every parameter.
    pub authorize_url: String,
    /// The login's `state`: put it in a cookie and pass it to `finish`.
    pub state: String,
}

/// A completed login.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// The issuer's URL.
    pub issuer: String,
    /// The verified ID token's user and claims.
    pub id: IdToken,
    /// What the login was started for.
    pub purpose: String,
}

impl LoggedIn {
    /// How the human is named in records and on pages: the verified e-mail
    /// address, else the subject.
    pub fn display(&self) -> &str {
        self.id.email.as_deref().unwrap_or(&self.id.user.sub)
    }
}

/// The endpoints of an issuer's discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// Must be the configured issuer (OpenID Connect Discovery §4.3).
    pub issuer: String,
    /// Where the browser logs in.
    pub authorization_endpoint: String,
    /// Where the code is redeemed.
    pub token_endpoint: String,
    /// Where the keys are.
    pub jwks_uri: String,
}

/// Whether `url` is https, or http on a loopback host (the issuer in tests
/// and on a developer's machine). The config's check of issuer and key URLs
/// too.
pub fn safe_endpoint(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let loopback = uri.host().is_some_and(|h| {
        h == "localhost"
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => loopback,
        _ => false,
    }
}

/// Fetches and checks `issuer`'s discovery document.
pub async fn discover(poster: &Poster, issuer: &str) -> Result<Discovery, LoginError> {
    let url = format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/'));
    let uri: http::Uri = url
        .parse()
        .map_err(|_| LoginError::Discovery("the issuer is not a URL".into()))?;
    let body = poster
        .get(&uri, CALL_TIMEOUT)
        .await
        .map_err(|e| LoginError::Discovery(e.to_string()))?;
    let doc: Discovery = serde_json::from_slice(&body)
        .map_err(|_| LoginError::Discovery("the discovery document is not valid".into()))?;
    if doc.issuer != issuer {
        return Err(LoginError::Discovery(format!(
            "the discovery document names issuer `{}`",
            doc.issuer
        )));
    }
    for endpoint in [
        &doc.authorization_endpoint,
        &doc.token_endpoint,
        &doc.jwks_uri,
    ] {
        if !safe_endpoint(endpoint) {
            return Err(LoginError::Discovery(format!(
                "endpoint `{endpoint}` is not https"
            )));
        }
    }
    Ok(doc)
}

/// One issuer humans log in at.
struct LoginIssuer {
    issuer: String,
    client_id: String,
    secret: Option<Zeroizing<String>>,
    display_name: String,
    scope: String,
    /// The discovery document, once fetched.
    discovery: Mutex<Option<Arc<Discovery>>>,
}

/// A login in progress (sealed in the store under its state).
#[derive(Serialize, Deserialize)]
struct Pending {
    issuer: usize,
    nonce: String,
    #[serde(
        serialize_with = "serialize_secret",
        deserialize_with = "deserialize_secret"
    )]
    verifier: Zeroizing<String>,
    redirect_uri: String,
    purpose: String,
}

fn serialize_secret<S: serde::Serializer>(
    secret: &Zeroizing<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret)
}

fn deserialize_secret<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(deserializer).map(Zeroizing::new)
}

/// The label of logins in [`crate::bearer_seal`]: the row's key and seal
/// come from the state.
const SEAL_LABEL: &str = "oidc login";

/// The store key of the login with `state`.
fn pending_key(state: &str) -> String {
    crate::bearer_seal::key(SEAL_LABEL, state)
}

impl Pending {
    /// Sealed under a key derived from `state`, so only a holder of the
    /// state opens it.
    fn seal(&self, state: &str) -> Option<String> {
        crate::bearer_seal::seal_json(SEAL_LABEL, state, self)
    }

    /// Opens what [`Pending::seal`] made for `state`; `None` when it was
    /// made for another state or altered.
    fn open(sealed: &str, state: &str) -> Option<Pending> {
        crate::bearer_seal::open_json(SEAL_LABEL, state, sealed)
    }
}

/// The login issuers, and the logins in progress.
pub struct RelyingParty {
    providers: Arc<OidcProviders>,
    issuers: Vec<LoginIssuer>,
    poster: Poster,
    /// Keeps the logins in progress.
    store: Store,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.issuers.iter().map(|i| (&i.issuer, &i.client_id)))
            .finish()
    }
}

/// 32 random bytes, base64url: states, nonces, verifiers.
fn random() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

/// Reads a client secret from its source.
fn read_secret(source: &ClientSecretSource) -> Result<Zeroizing<String>, String> {
    let raw = match source {
        ClientSecretSource::File(path) => Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?,
        ),
        ClientSecretSource::Env(var) => Zeroizing::new(
            std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))?,
        ),
    };
    let secret = Zeroizing::new(raw.trim().to_string());
    if secret.is_empty() {
        return Err("the client secret is empty".into());
    }
    Ok(secret)
}

impl RelyingParty {
    /// The login issuers among `configs` (those with `client_id`), their
    /// secrets read now, keeping logins in progress in `store`; `None` when
    /// there is none. The error names the issuer and what is missing, never
    /// a secret.
    pub fn new(
        configs: &[OidcConfig],
        providers: Arc<OidcProviders>,
        tls: rustls::ClientConfig,
        store: Store,
    ) -> Result<Option<Self>, String> {
        let mut issuers = Vec::new();
        for config in configs {
            let Some(login) = &config.login else {
                continue;
            };
            let secret = login
                .client_secret
                .as_ref()
                .map(read_secret)
                .transpose()
                .map_err(|e| format!("OIDC issuer `{}`: client secret: {e}", config.issuer))?;
            let scope = std::iter::once("openid")
                .chain(login.scopes.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            issuers.push(LoginIssuer {
                issuer: config.issuer.clone(),
                client_id: login.client_id.clone(),
                secret,
                display_name: login.display_name.clone(),
                scope,
                discovery: Mutex::new(None),
            });
        }
        if issuers.is_empty() {
            return Ok(None);
        }
        Ok(Some(RelyingParty {
            providers,
            issuers,
            poster: Poster::new(tls),
            store,
        }))
    }

    /// The login issuers: index (for [`start`](Self::start)) and button name.
    pub fn issuers(&self) -> impl Iterator<Item = (usize, &str)> {
        self.issuers
            .iter()
            .enumerate()
            .map(|(i, issuer)| (i, issuer.display_name.as_str()))
    }

    /// The issuer URL of login issuer `index`.
    pub fn issuer_url(&self, index: usize) -> Option<&str> {
        self.issuers.get(index).map(|i| i.issuer.as_str())
    }

    /// Issuer `index`'s discovery document, fetched once (and again after a failure).
    async fn discovery(&self, index: usize) -> Result<Arc<Discovery>, LoginError> {
        let issuer = self.issuers.get(index).ok_or(LoginError::UnknownIssuer)?;
        if let Some(d) = lock(&issuer.discovery).clone() {
            return Ok(d);
        }
        let d = Arc::new(discover(&self.poster, &issuer.issuer).await?);
        *lock(&issuer.discovery) = Some(Arc::clone(&d));
        Ok(d)
    }

    /// Starts a login at issuer `index` that returns to `redirect_uri` (one
    /// the issuer has registered for the client), for `purpose` (checked by
    /// whoever finishes it).
    pub async fn start(
        &self,
        index: usize,
        redirect_uri: &str,
        purpose: &str,
        now: i64,
    ) -> Result<Started, LoginError> {
        let discovery = self.discovery(index).await?;
        let issuer = &self.issuers[index];
        let (state, nonce, verifier) = (random(), random(), Zeroizing::new(random()));
        let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", &issuer.client_id),
            ("redirect_uri", redirect_uri),
            ("scope", &issuer.scope),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .unwrap_or_default();
        let endpoint = &discovery.authorization_endpoint;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        let pending = Pending {
            issuer: index,
            nonce,
            verifier,
            redirect_uri: redirect_uri.to_string(),
            purpose: purpose.to_string(),
        };
        let sealed = pending.seal(&state).ok_or(LoginError::Store)?;
        let kept = self
            .store
            .begin_ceremony(
                &pending_key(&state),
                CEREMONY_KIND,
                &sealed,
                (now + LOGIN_TTL) * 1000,
                now * 1000,
                MAX_PENDING,
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot keep an OIDC login in progress");
                LoginError::Store
            })?;
        if !kept {
            return Err(LoginError::Busy);
        }
        Ok(Started {
            authorize_url: format!("{endpoint}{separator}{query}"),
            state,
        })
    }

    /// The purpose a login in progress was started for (to route its
    /// callback), without ending it.
    pub async fn purpose(&self, state: &str, now: i64) -> Option<String> {
        let sealed = self
            .store
            .peek_ceremony(&pending_key(state), CEREMONY_KIND, now * 1000)
            .await
            .ok()??;
        Pending::open(&sealed, state).map(|p| p.purpose)
    }

    /// Finishes the login the callback names. `browser_state` is the state
    /// the caller bound to the browser (its cookie); `purpose` what the
    /// caller finishes logins for. The login ends here whatever the
    /// outcome: a callback URL works once.
    pub async fn finish(
        &self,
        callback: &Callback,
        browser_state: Option<&str>,
        purpose: &str,
        now: i64,
    ) -> Result<LoggedIn, LoginError> {
        let state = callback.state.as_deref().unwrap_or_default();
        let sealed = self
            .store
            .take_ceremony(&pending_key(state), CEREMONY_KIND, now * 1000)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read an OIDC login in progress");
                LoginError::Store
            })?;
        let pending = sealed
            .and_then(|s| Pending::open(&s, state))
            .ok_or(LoginError::UnknownState)?;
        // Random values compared: no timing secret (the state travelled in a URL).
        if browser_state != Some(state) {
            return Err(LoginError::OtherBrowser);
        }
        if pending.purpose != purpose {
            return Err(LoginError::WrongPurpose);
        }
        let issuer = &self.issuers[pending.issuer];
        if callback.iss.as_deref().is_some_and(|i| i != issuer.issuer) {
            return Err(LoginError::WrongIssuer);
        }
        if let Some(error) = &callback.error {
            let code: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(LoginError::Refused(code));
        }
        let code = callback
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| LoginError::Redeem("the answer carries no code".into()))?;
        let id_token = self.redeem(pending.issuer, code, &pending).await?;
        let id = self
            .providers
            .verify_id_token(
                &issuer.issuer,
                &issuer.client_id,
                &id_token,
                &pending.nonce,
                now,
            )
            .await?;
        Ok(LoggedIn {
            issuer: issuer.issuer.clone(),
            id,
            purpose: pending.purpose,
        })
    }

    /// Redeems `code` at the token endpoint (client authentication
    /// `client_secret_basic` for a confidential client); the ID token.
    async fn redeem(
        &self,
        index: usize,
        code: &str,
        pending: &Pending,
    ) -> Result<Zeroizing<String>, LoginError> {
        let discovery = self.discovery(index).await?;
        let issuer = &self.issuers[index];
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", pending.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let mut headers = SecretHeaders::default();
        match &issuer.secret {
            Some(secret) => {
                // RFC 6749 §2.3.1: both parts form-encoded, then Basic.
                let pair = Zeroizing::new(format!(
                    "{}:{}",
                    form_encode(&issuer.client_id),
                    form_encode(secret)
                ));
                let mut value = http::HeaderValue::from_str(&format!(
                    "Basic {}",
                    STANDARD.encode(pair.as_bytes())
                ))
                .map_err(|_| LoginError::Redeem("the client secret is not usable".into()))?;
                value.set_sensitive(true);
                headers.0.push((http::header::AUTHORIZATION, value));
            }
            None => form.push(("client_id", issuer.client_id.as_str())),
        }
        let body = serde_urlencoded::to_string(&form).unwrap_or_default();
        let uri: http::Uri = discovery
            .token_endpoint
            .parse()
            .map_err(|_| LoginError::Discovery("the token endpoint is not a URL".into()))?;
        let answer = self
            .poster
            .post(
                &uri,
                "application/x-www-form-urlencoded",
                &headers,
                Bytes::from(body),
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| LoginError::Redeem(e.to_string()))?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&answer)
            .map_err(|_| LoginError::Redeem("the token answer is not JSON".into()))?;
        answer
            .id_token
            .map(Zeroizing::new)
            .ok_or_else(|| LoginError::Redeem("the token answer has no ID token".into()))
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    serde_urlencoded::to_string([("", value)])
        .unwrap_or_default()
        .trim_start_matches('=')
        .to_string()
}

/// The value of cookie `name` in a request (the console's and the
/// authorization page's cookies alike).
pub fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The maps are only touched for a lookup or an insert, never across I/O;
/// a poisoned lock still holds consistent data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{JwksSource, LoginClient};
    use portcullis_store::testing::TestDb;
    use std::collections::HashMap;

    fn tls() -> rustls::ClientConfig {
        let _ = rustls::crypto::ring::default_provider().install_default();
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }

    fn config(issuer: &str, login: Option<LoginClient>) -> OidcConfig {
        OidcConfig {
            issuer: issuer.into(),
            audience: "portcullis-exchange".into(),
            jwks: JwksSource::File("/nonexistent".into()),
            mfa_amr: Vec::new(),
            clock_skew: 60,
            login,
        }
    }

    fn login(secret: Option<ClientSecretSource>) -> LoginClient {
        LoginClient {
            client_id: "gw".into(),
            client_secret: secret,
            display_name: "Example".into(),
            scopes: vec!["email".into()],
        }
    }

    async fn party(store: Store) -> RelyingParty {
        let configs = [config("http://127.0.0.1:9/idp", Some(login(None)))];
        let providers = Arc::new(OidcProviders::new(&configs, tls()).await);
        let rp = RelyingParty::new(&configs, providers, tls(), store)
            .unwrap()
            .unwrap();
        // No issuer runs in unit tests: the discovery document is given.
        *lock(&rp.issuers[0].discovery) = Some(Arc::new(Discovery {
            issuer: "http://127.0.0.1:9/idp".into(),
            authorization_endpoint: "http://127.0.0.1:9/idp/auth?tenant=a".into(),
            token_endpoint: "http://127.0.0.1:9/idp/token".into(),
            jwks_uri: "http://127.0.0.1:9/idp/jwks".into(),
        }));
        rp
    }

    #[tokio::test]
    async fn only_issuers_with_a_client_log_in_and_secrets_must_be_readable() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        let providers = Arc::new(OidcProviders::new(&[], tls()).await);
        let none = [config("https://a", None)];
        assert!(
            RelyingParty::new(&none, providers.clone(), tls(), store.clone())
                .unwrap()
                .is_none()
        );
        let missing = [config(
            "https://a",
            Some(login(Some(ClientSecretSource::Env(
                "PORTCULLIS_TEST_NO_SUCH_VARIABLE".into(),
            )))),
        )];
        let e = RelyingParty::new(&missing, providers.clone(), tls(), store.clone()).unwrap_err();
        assert!(e.contains("PORTCULLIS_TEST_NO_SUCH_VARIABLE"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        let ok = [config(
            "https://a",
            Some(login(Some(ClientSecretSource::File(file)))),
        )];
        let rp = RelyingParty::new(&ok, providers, tls(), store)
            .unwrap()
            .unwrap();
        assert_eq!(
            rp.issuers[0].secret.as_deref().map(String::as_str),
            Some("s3cret")
        );
        assert!(!format!("{rp:?}").contains("s3cret"));
        assert_eq!(rp.issuers().collect::<Vec<_>>(), [(0, "Example")]);
    }

    #[tokio::test]
    async fn a_login_asks_for_pkce_state_and_nonce_and_ends_once() {
        let db = TestDb::sqlite();
        let rp = party(db.open().await).await;
        let started = rp.start(0, "https://gw/cb", "console", 100).await.unwrap();
        let url = &started.authorize_url;
        assert!(url.starts_with("http://127.0.0.1:9/idp/auth?tenant=a&response_type=code"));
        let query: HashMap<String, String> =
            serde_urlencoded::from_str(url.split_once("tenant=a&").unwrap().1).unwrap();
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["code_challenge"].len(), 43);
        assert_eq!(query["scope"], "openid email");
        assert_eq!(query["state"], started.state);
        assert_eq!(query["nonce"].len(), 43);
        assert_eq!(
            rp.purpose(&started.state, 100).await.as_deref(),
            Some("console")
        );
        let callback = |state: &str| Callback {
            state: Some(state.into()),
            code: Some("c".into()),
            ..Callback::default()
        };
        // Another browser: refused, and the login is spent.
        let other = rp
            .finish(&callback(&started.state), Some("x"), "console", 101)
            .await;
        assert!(matches!(other, Err(LoginError::OtherBrowser)), "{other:?}");
        let again = rp
            .finish(
                &callback(&started.state),
                Some(&started.state),
                "console",
                101,
            )
            .await;
        assert!(matches!(again, Err(LoginError::UnknownState)), "{again:?}");
        // Another purpose, and an expired login.
        let s = rp.start(0, "https://gw/cb", "mcp:1", 100).await.unwrap();
        let r = rp
            .finish(&callback(&s.state), Some(&s.state), "console", 101)
            .await;
        assert!(matches!(r, Err(LoginError::WrongPurpose)), "{r:?}");
        let s = rp.start(0, "https://gw/cb", "console", 100).await.unwrap();
        let r = rp
            .finish(
                &callback(&s.state),
                Some(&s.state),
                "console",
                100 + LOGIN_TTL,
            )
            .await;
        assert!(matches!(r, Err(LoginError::UnknownState)), "{r:?}");
        // The issuer's refusal, and an answer from another issuer.
        let s = rp.start(0, "https://gw/cb", "console", 100).await.unwrap();
        let refused = Callback {
            state: Some(s.state.clone()),
            error: Some("access_denied<script>".into()),
            ..Callback::default()
        };
        let r = rp.finish(&refused, Some(&s.state), "console", 101).await;
        assert!(
            matches!(&r, Err(LoginError::Refused(c)) if c == "access_deniedscript"),
            "{r:?}"
        );
        let s = rp.start(0, "https://gw/cb", "console", 100).await.unwrap();
        let mixed = Callback {
            iss: Some("https://evil".into()),
            ..callback(&s.state)
        };
        let r = rp.finish(&mixed, Some(&s.state), "console", 101).await;
        assert!(matches!(r, Err(LoginError::WrongIssuer)), "{r:?}");
    }

    #[tokio::test]
    async fn a_login_is_kept_sealed_in_the_store_and_taken_once_by_any_replica() {
        for db in TestDb::all().await {
            let store = db.open().await;
            // Two replicas over one store.
            let (one, two) = (party(store.clone()).await, party(store.clone()).await);
            let started = one.start(0, "https://gw/cb", "console", 100).await.unwrap();
            assert_eq!(
                two.purpose(&started.state, 101).await.as_deref(),
                Some("console")
            );
            // The store holds neither the state nor anything readable.
            let key = pending_key(&started.state);
            let sealed = store
                .peek_ceremony(&key, CEREMONY_KIND, 101_000)
                .await
                .unwrap()
                .unwrap();
            assert!(!sealed.contains("console") && !sealed.contains(&started.state));
            assert!(Pending::open(&sealed, "another state").is_none());
            // Concurrent callbacks on both replicas: one takes the login (and
            // fails later, at the unreachable issuer), the other finds none.
            let callback = Callback {
                state: Some(started.state.clone()),
                code: Some("c".into()),
                ..Callback::default()
            };
            let (a, b) = tokio::join!(
                one.finish(&callback, Some(&started.state), "console", 101),
                two.finish(&callback, Some(&started.state), "console", 101),
            );
            let unknown = [&a, &b]
                .iter()
                .filter(|r| matches!(r, Err(LoginError::UnknownState)))
                .count();
            assert_eq!(unknown, 1, "{a:?} {b:?}");
            assert!(two.purpose(&started.state, 101).await.is_none());
        }
    }

    #[test]
    fn endpoints_must_be_https_or_loopback() {
        assert!(safe_endpoint("https://idp.example/auth"));
        assert!(safe_endpoint("http://127.0.0.1:8080/auth"));
        assert!(safe_endpoint("http://localhost/auth"));
        assert!(!safe_endpoint("http://idp.example/auth"));
        assert!(!safe_endpoint("javascript:alert(1)"));
        assert_eq!(form_encode("a b:c%"), "a+b%3Ac%25");
    }
}
