//! The gateway's token state: the access-token issuer (its key and public URL),
//! the lifetime of issued tokens, and the two `jti` replay caches (client
//! assertions at the token endpoint, DPoP proofs on every token request).
//! All in memory on one node; the request path never waits on disk. In
//! cluster mode (PostgreSQL) a single-use `jti` is also claimed in the shared
//! store, so a credential used on one replica is refused on every other.

use portcullis_identity::{DpopNonces, PeerCertificate, ReplayCache, ReplayRefusal, TokenIssuer};
use portcullis_store::{SingleUseKind, Store};

use crate::oidc::OidcProviders;
use crate::revocation::Revocations;

/// Live entries each replay cache holds before refusing new ones. Entries
/// expire with their credential (assertions within an hour, proofs after
/// 60 s), so this is ~3,000 new proofs a second, or ~55 new client
/// assertions a second (each agent asks for a token every few minutes),
/// sustained before refusals, per node.
const REPLAY_CAPACITY: usize = 200_000;

/// Issues and checks access tokens.
#[derive(Debug)]
pub struct TokenService {
    /// The signer and verifier of access tokens.
    pub issuer: TokenIssuer,
    /// The token endpoint URL (the audience of client assertions).
    pub token_url: String,
    /// Lifetime of issued tokens (seconds).
    pub ttl: u64,
    /// Client assertions seen at the token endpoint.
    pub assertions: ReplayCache,
    /// DPoP proofs seen.
    pub proofs: ReplayCache,
    /// The agents' SPIFFE trust domain.
    pub trust_domain: String,
    /// Tokens revoked by `jti` and disabled users.
    pub revocations: Revocations,
    /// External issuers of users' tokens (token exchange, and the ID tokens
    /// of logins, shared with the console).
    pub oidc: std::sync::Arc<OidcProviders>,
    /// Longest delegation chain a token exchange may build.
    pub max_delegation_depth: u32,
    /// The signer of workload posture statements, when configured.
    pub posture_attestor: Option<OidcProviders>,
    /// Server-issued DPoP nonces (RFC 9449 §8, §9), keyed from the token key.
    pub nonces: DpopNonces,
    /// Whether every DPoP proof must carry a nonce (`[identity]
    /// require_dpop_nonce`, default off: a nonce a proof carries is always
    /// checked).
    pub require_dpop_nonce: bool,
    /// Cluster mode: the shared store single-use keys are claimed in too.
    pub shared_single_use: Option<Store>,
    /// The sealed TOTP secrets of local users, for the authorization
    /// endpoint's login page (`None`: nobody can log in there).
    pub local_users: Option<std::sync::Arc<crate::local_users::TotpSeal>>,
    /// The OIDC issuers humans log in at on the authorization endpoint's
    /// page (`None`: local users only).
    pub login: Option<std::sync::Arc<crate::oidc_login::RelyingParty>>,
}

/// Why a single-use credential was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// Used before (on this replica or, in cluster mode, on another).
    Replayed,
    /// This replica's cache is full of live entries.
    Full,
    /// Cluster mode: the shared store did not answer. Refused: a replay
    /// that cannot be ruled out is not let through.
    StoreUnavailable,
}

impl TokenService {
    /// A service issuing tokens with `issuer` valid for `ttl` seconds, to
    /// agents of `trust_domain`.
    pub fn new(
        issuer: TokenIssuer,
        ttl: u64,
        trust_domain: &str,
        oidc: std::sync::Arc<OidcProviders>,
        max_delegation_depth: u32,
        posture_attestor: Option<OidcProviders>,
    ) -> Self {
        TokenService {
            posture_attestor,
            revocations: Revocations::default(),
            oidc,
            max_delegation_depth,
            token_url: format!("{}/oauth2/token", issuer.issuer()),
            nonces: DpopNonces::new(issuer.derive_secret("portcullis dpop nonce key")),
            require_dpop_nonce: false,
            shared_single_use: None,
            local_users: None,
            login: None,
            issuer,
            ttl,
            assertions: ReplayCache::new(REPLAY_CAPACITY),
            proofs: ReplayCache::new(REPLAY_CAPACITY),
            trust_domain: trust_domain.to_string(),
        }
    }

    /// The issuer URL (also the base of every `htu`).
    pub fn issuer_url(&self) -> &str {
        self.issuer.issuer()
    }

    /// The token endpoint URL (the audience of client assertions).
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// Claims the single-use `key` (a `jti` with its scope) until `until`
    /// (epoch seconds): first in this replica's memory, so a replay here is
    /// refused without IO, then, in cluster mode, in the shared store, where
    /// the first replica to claim it wins.
    pub async fn claim(
        &self,
        kind: SingleUseKind,
        key: &str,
        until: i64,
        now: i64,
    ) -> Result<(), ClaimRefusal> {
        let cache = match kind {
            SingleUseKind::Assertion => &self.assertions,
            SingleUseKind::DpopProof => &self.proofs,
        };
        cache
            .check_and_insert(key, until, now)
            .map_err(|r| match r {
                ReplayRefusal::Replayed => ClaimRefusal::Replayed,
                ReplayRefusal::Full => ClaimRefusal::Full,
            })?;
        let Some(store) = &self.shared_single_use else {
            return Ok(());
        };
        match store.claim_single_use(kind, key, until, now).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ClaimRefusal::Replayed),
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a single-use credential in the shared store");
                Err(ClaimRefusal::StoreUnavailable)
            }
        }
    }

    /// Checks a DPoP proof's `nonce`: one it carries must be current, and
    /// with `require_dpop_nonce` it must carry one. The refusal is the
    /// message of a `use_dpop_nonce` answer, which brings a fresh nonce.
    pub fn check_dpop_nonce(&self, nonce: Option<&str>, now: i64) -> Result<(), &'static str> {
        match nonce {
            Some(n) if !self.nonces.accepts(n, now) => Err(
                "the DPoP proof's nonce is stale or not this gateway's: sign a new proof with the `DPoP-Nonce` of this answer",
            ),
            None if self.require_dpop_nonce => Err(
                "a server-issued DPoP nonce is required: sign a new proof with the `DPoP-Nonce` of this answer",
            ),
            _ => Ok(()),
        }
    }
}

/// RFC 8705 `x5t#S256` of a verified client certificate (base64url SHA-256 of
/// its DER), from the `sha256:<hex>` fingerprint the certificate check keeps.
pub fn peer_x5t(peer: &PeerCertificate) -> Option<String> {
    use base64::Engine;
    let hex_digest = peer.fingerprint.strip_prefix("sha256:")?;
    let bytes = hex::decode(hex_digest).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}
