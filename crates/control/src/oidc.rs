//! Federated users: the configured OIDC issuers (`[[identity.oidc]]`) and
//! their keys. Keys are cached in memory; a token naming a `kid` the cache
//! does not hold triggers one refresh (from the URL or file), at most once a
//! second per issuer, so a burst of forged `kid`s cannot make the gateway
//! hammer the identity provider. Token exchange and the login of humans
//! (`oidc_login.rs`, which verifies ID tokens here with its client id as the
//! audience) call this: user tokens never authenticate data-plane requests
//! directly.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use portcullis_identity::{
    FederatedIssuer, IdToken, JwkSet, PostureStatement, TokenError, UserToken, claimed_issuer,
};

use crate::config::{JwksSource, OidcConfig};
use crate::otlp::Poster;

/// Shortest time between two key refreshes of one issuer.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a user token was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserTokenRefusal {
    /// No configured issuer has this `iss`.
    #[error("the token's issuer is not a configured OIDC issuer")]
    UnknownIssuer,
    /// The token itself was refused.
    #[error("{0}")]
    Token(#[from] TokenError),
}

struct Provider {
    issuer: FederatedIssuer,
    source: JwksSource,
    keys: ArcSwap<JwkSet>,
    last_refresh: Mutex<Option<Instant>>,
}

/// Every configured issuer.
pub struct OidcProviders {
    providers: Vec<Provider>,
    poster: Poster,
}

impl std::fmt::Debug for OidcProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| &p.issuer.issuer))
            .finish()
    }
}

impl OidcProviders {
    /// Loads every issuer's keys once. A provider that cannot be reached now
    /// is logged and retried when a token for it arrives.
    pub async fn new(configs: &[OidcConfig], tls: rustls::ClientConfig) -> Self {
        let providers = Self {
            providers: configs
                .iter()
                .map(|c| Provider {
                    issuer: FederatedIssuer {
                        issuer: c.issuer.clone(),
                        audience: c.audience.clone(),
                        mfa_amr: c.mfa_amr.clone(),
                        clock_skew: c.clock_skew,
                    },
                    source: c.jwks.clone(),
                    keys: ArcSwap::from_pointee(JwkSet { keys: Vec::new() }),
                    last_refresh: Mutex::new(None),
                })
                .collect(),
            poster: Poster::new(tls),
        };
        for p in &providers.providers {
            providers.refresh(p).await;
        }
        providers
    }

    /// Whether any issuer is configured (token exchange of user tokens is off otherwise).
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Verifies a user's token against its issuer's keys.
    pub async fn verify(&self, token: &str, now: i64) -> Result<UserToken, UserTokenRefusal> {
        let iss = claimed_issuer(token)?;
        let provider = self
            .providers
            .iter()
            .find(|p| p.issuer.issuer == iss)
            .ok_or(UserTokenRefusal::UnknownIssuer)?;
        match provider.issuer.verify(token, &provider.keys.load(), now) {
            Err(TokenError::UnknownKey) => {
                // Key rotation at the provider: fetch once, then decide.
                if self.refresh(provider).await {
                    Ok(provider.issuer.verify(token, &provider.keys.load(), now)?)
                } else {
                    Err(TokenError::UnknownKey.into())
                }
            }
            other => Ok(other?),
        }
    }

    /// Verifies an ID token of a login at `issuer` as client `client_id`
    /// with `nonce` (`oidc_login.rs`): the issuer's keys and checks, the
    /// client id as audience.
    pub async fn verify_id_token(
        &self,
        issuer: &str,
        client_id: &str,
        token: &str,
        nonce: &str,
        now: i64,
    ) -> Result<IdToken, UserTokenRefusal> {
        let provider = self
            .providers
            .iter()
            .find(|p| p.issuer.issuer == issuer)
            .ok_or(UserTokenRefusal::UnknownIssuer)?;
        let login = FederatedIssuer {
            audience: client_id.to_string(),
            ..provider.issuer.clone()
        };
        match login.verify_id_token(token, &provider.keys.load(), now, nonce) {
            Err(TokenError::UnknownKey) if self.refresh(provider).await => {
                Ok(login.verify_id_token(token, &provider.keys.load(), now, nonce)?)
            }
            other => Ok(other?),
        }
    }

    /// Verifies a workload posture statement from the (single) attestor.
    pub async fn verify_posture(
        &self,
        token: &str,
        now: i64,
    ) -> Result<PostureStatement, UserTokenRefusal> {
        let iss = claimed_issuer(token)?;
        let provider = self
            .providers
            .iter()
            .find(|p| p.issuer.issuer == iss)
            .ok_or(UserTokenRefusal::UnknownIssuer)?;
        match provider
            .issuer
            .verify_posture(token, &provider.keys.load(), now)
        {
            Err(TokenError::UnknownKey) if self.refresh(provider).await => Ok(provider
                .issuer
                .verify_posture(token, &provider.keys.load(), now)?),
            other => Ok(other?),
        }
    }

    /// Reloads one provider's keys; `false` when rate-limited or failed.
    async fn refresh(&self, p: &Provider) -> bool {
        {
            let mut last = p.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let bytes = match &p.source {
            JwksSource::File(path) => match tokio::fs::read(path).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(issuer = %p.issuer.issuer, file = %path.display(), error = %e, "cannot read the OIDC issuer's JWKS file");
                    return false;
                }
            },
            JwksSource::Url(_) | JwksSource::Discovery => {
                let url = match &p.source {
                    JwksSource::Url(url) => url.clone(),
                    _ => match crate::oidc_login::discover(&self.poster, &p.issuer.issuer).await {
                        Ok(d) => d.jwks_uri,
                        Err(e) => {
                            tracing::warn!(issuer = %p.issuer.issuer, error = %e, "cannot read the OIDC issuer's discovery document");
                            return false;
                        }
                    },
                };
                let Ok(uri) = url.parse::<http::Uri>() else {
                    return false;
                };
                match self.poster.get(&uri, FETCH_TIMEOUT).await {
                    Ok(b) => b.to_vec(),
                    Err(e) => {
                        tracing::warn!(issuer = %p.issuer.issuer, url = %url, error = %e, "cannot fetch the OIDC issuer's JWKS");
                        return false;
                    }
                }
            }
        };
        match serde_json::from_slice::<JwkSet>(&bytes) {
            Ok(set) => {
                tracing::info!(issuer = %p.issuer.issuer, keys = set.keys.len(), "OIDC issuer keys loaded");
                p.keys.store(Arc::new(set));
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %p.issuer.issuer, error = %e, "the OIDC issuer's JWKS is not valid");
                false
            }
        }
    }
}
