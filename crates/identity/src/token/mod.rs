//! OAuth 2.0 tokens for agents that cannot do mTLS: the agent's own signing
//! key (a JWK: Ed25519, RFC 8037, or P-256), the client assertion it signs to
//! authenticate at the token endpoint (`private_key_jwt`, RFC 7523), and the
//! gateway's EdDSA access tokens, always bound to a key (`cnf.jkt`, RFC 9449)
//! or to a client certificate (`cnf.x5t#S256`, RFC 8705).
//!
//! What agents sign (assertions, DPoP proofs) may use `EdDSA` (or its RFC 9864
//! name `Ed25519`) or `ES256`, matched to the key's type; the gateway's own
//! access tokens are EdDSA only. `alg: none`, HS* and RS* are refused from the
//! header before any key is used, so a public key can never be confused for an
//! HMAC secret.
//!
//! One job per file: `jwk.rs` (JWKs and their thumbprints), `jws.rs` (agents'
//! compact JWS and their algorithms), `assertion.rs` (the `private_key_jwt`
//! client assertion), `access.rs` (the gateway's access tokens and their sender
//! constraint and delegation claims) and `dpop.rs` (DPoP proofs and nonces).
//! This file holds what they share: the error type and the EdDSA-only header
//! check of access tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header};

mod access;
mod assertion;
mod dpop;
mod jwk;
mod jws;

pub use access::{
    AccessClaims, Actor, AuthorizedGrant, Confirmation, DEFAULT_TOKEN_TTL, DelegatedUser,
    MAX_TOKEN_TTL, OAUTH_CLIENT_ACTOR, TokenIssuer, cert_thumbprint,
};
pub use assertion::{
    ASSERTION_CLOCK_SKEW, ASSERTION_TYPE, AssertionClaims, MAX_ASSERTION_LIFETIME,
    assertion_client, assertion_kid, verify_assertion,
};
pub use dpop::{
    DPOP_NONCE_STEP, DPOP_WINDOW, DpopClaims, DpopNonces, DpopProof, access_token_hash,
    verify_dpop_proof,
};
pub use jwk::{Ed25519Key, PublicJwk, ed25519_thumbprint};
pub use jws::{Audience, CLIENT_SIGNING_ALGS};

/// Why a token, assertion or proof was refused. Messages name the problem and
/// never carry the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS, or its header or claims are not the expected JSON.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The header names an algorithm not accepted here (including `none`),
    /// or one that does not fit the key.
    #[error("algorithm not accepted")]
    Algorithm,
    /// The `kid` is not a key the verifier knows.
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("invalid signature")]
    Signature,
    /// Past `exp`.
    #[error("expired")]
    Expired,
    /// Before `nbf`, or `iat` in the future.
    #[error("not yet valid")]
    NotYetValid,
    /// The audience is not this gateway.
    #[error("wrong audience")]
    Audience,
    /// The issuer is not the expected one.
    #[error("wrong issuer")]
    Issuer,
    /// A claim is missing or has the wrong value.
    #[error("invalid claim `{0}`")]
    Claim(&'static str),
    /// The lifetime is longer than allowed.
    #[error("lifetime too long")]
    Lifetime,
    /// A single-use `jti` was seen before.
    #[error("replayed: this `jti` was already used")]
    Replayed,
    /// A key is not an Ed25519 JWK.
    #[error("invalid key: {0}")]
    Key(&'static str),
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error, what: &'static str) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidSubject => TokenError::Claim("sub"),
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => TokenError::Claim("exp"),
            "aud" => TokenError::Claim("aud"),
            "iss" => TokenError::Claim("iss"),
            "sub" => TokenError::Claim("sub"),
            _ => TokenError::Malformed(what),
        },
        ErrorKind::InvalidEddsaKey | ErrorKind::InvalidKeyFormat => TokenError::Key("not Ed25519"),
        _ => TokenError::Malformed(what),
    }
}

/// Reads the header of a compact JWS, refusing everything but EdDSA.
/// `alg: none` and unknown algorithms fail to parse, which is also a refusal.
fn eddsa_header(token: &str, what: &'static str) -> Result<Header, TokenError> {
    if token.len() > 8192 || token.split('.').count() != 3 {
        return Err(TokenError::Malformed(what));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        // An `alg` jsonwebtoken does not know (`none`) is a serde error.
        ErrorKind::Json(_) if alg_is_named(token) => TokenError::Algorithm,
        _ => TokenError::Malformed(what),
    })?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Algorithm);
    }
    if header.crit.is_some() {
        // No extension is understood, so any critical one must be refused (RFC 7515 §4.1.11).
        return Err(TokenError::Malformed(what));
    }
    Ok(header)
}

/// Whether the header has an `alg` member at all (to tell `none` from garbage).
fn alg_is_named(token: &str) -> bool {
    let Some(first) = token.split('.').next() else {
        return false;
    };
    B64.decode(first)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("alg").is_some())
}

/// A random 128-bit identifier, base64url.
pub fn random_id() -> String {
    B64.encode(rand::random::<[u8; 16]>())
}

/// Helpers the tests of every token file share.
#[cfg(test)]
mod test_support {
    use super::{Confirmation, Ed25519Key, TokenIssuer};

    const ISS: &str = "https://gw.test";

    pub(super) fn issuer() -> TokenIssuer {
        TokenIssuer::new(Ed25519Key::generate(), ISS).unwrap()
    }

    pub(super) fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    pub(super) fn bound() -> Confirmation {
        Confirmation {
            jkt: Some("k".into()),
            x5t_s256: None,
        }
    }
}
