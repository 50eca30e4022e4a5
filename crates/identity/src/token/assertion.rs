//! The `private_key_jwt` client assertion (RFC 7523): an agent signs it with
//! its own key to authenticate at the token endpoint; the gateway verifies it
//! against the agent's registered [`PublicJwk`]. What OAuth libraries send by
//! default is accepted: `EdDSA`/`Ed25519` or `ES256`, `aud` as a string or an
//! array, and a lifetime of up to an hour (authlib's default). The `jti` is
//! kept in the replay cache until the assertion expires, so the longer
//! lifetime does not open a replay window; issued tokens stay short.

use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};

use super::jws::{Audience, ClientJws};
use super::{Ed25519Key, PublicJwk, TokenError, random_id};

/// Longest lifetime of a client assertion (seconds, `exp - now`): an hour, the
/// default of common OAuth libraries.
pub const MAX_ASSERTION_LIFETIME: i64 = 3600;
/// How far ahead an agent's clock may run (seconds): added to the lifetime
/// and allowed on `iat` and `nbf`.
pub const ASSERTION_CLOCK_SKEW: i64 = 60;
/// The `client_assertion_type` of RFC 7523.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl Ed25519Key {
    /// Signs a `private_key_jwt` client assertion (RFC 7523) for `client_id`
    /// (the agent name or SPIFFE ID) addressed to the token endpoint `audience`,
    /// valid for `lifetime` seconds from `now`.
    pub fn sign_assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: i64,
        lifetime: i64,
    ) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid());
        let claims = AssertionClaims {
            iss: client_id.into(),
            sub: client_id.into(),
            aud: Audience::One(audience.into()),
            iat: now,
            nbf: None,
            exp: now + lifetime,
            jti: random_id(),
        };
        self.sign(&header, &claims)
    }
}

/// Claims of a client assertion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// The client (agent name or SPIFFE ID).
    pub iss: String,
    /// The same client.
    pub sub: String,
    /// The token endpoint or the issuer (one string or an array).
    pub aud: Audience,
    /// Issued at.
    #[serde(default)]
    pub iat: i64,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expiry.
    pub exp: i64,
    /// Single-use identifier.
    pub jti: String,
}

const WHAT: &str = "client assertion";

/// The `client_id` an assertion claims, read before its signature is checked
/// (to find the key to check it with). Nothing else in it is trusted yet.
pub fn assertion_client(assertion: &str) -> Result<String, TokenError> {
    ClientJws::parse(assertion, WHAT)?
        .unverified_claims(WHAT)?
        .get("iss")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or(TokenError::Claim("iss"))
}

/// The `kid` an assertion's header names, if any (to choose among the
/// agent's keys before the signature is checked).
pub fn assertion_kid(assertion: &str) -> Option<String> {
    ClientJws::parse(assertion, WHAT).ok()?.header.kid
}

/// Verifies a client assertion signed by `key` for `client_id`, addressed to
/// one of `audiences`. The caller checks `jti` against its replay cache until
/// `exp`.
pub fn verify_assertion(
    assertion: &str,
    key: &PublicJwk,
    client_id: &str,
    audiences: &[&str],
    now: i64,
) -> Result<AssertionClaims, TokenError> {
    let jws = ClientJws::parse(assertion, WHAT)?;
    if jws
        .header
        .kid
        .as_deref()
        .is_some_and(|k| k != key.thumbprint())
    {
        return Err(TokenError::UnknownKey);
    }
    let claims: AssertionClaims = jws.verify(key, WHAT)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if claims.sub != client_id {
        return Err(TokenError::Claim("sub"));
    }
    if claims.iss != client_id {
        return Err(TokenError::Issuer);
    }
    if !claims.aud.contains_any(audiences) {
        return Err(TokenError::Audience);
    }
    if claims.exp - now > MAX_ASSERTION_LIFETIME + ASSERTION_CLOCK_SKEW {
        return Err(TokenError::Lifetime);
    }
    if claims.iat > now + ASSERTION_CLOCK_SKEW
        || claims
            .nbf
            .is_some_and(|nbf| nbf > now + ASSERTION_CLOCK_SKEW)
    {
        return Err(TokenError::NotYetValid);
    }
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(TokenError::Claim("jti"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::super::jws::test_support::{p256_key, sign_es256};
    use super::super::test_support::now;
    use super::*;

    #[test]
    fn assertions() {
        let agent = Ed25519Key::generate();
        let t = now();
        let url = "https://gw.test/oauth2/token";
        let a = agent.sign_assertion("bot", url, t, 60).unwrap();
        assert_eq!(assertion_client(&a).unwrap(), "bot");
        assert_eq!(assertion_kid(&a), Some(agent.kid()));
        assert!(verify_assertion(&a, agent.public(), "bot", &[url], t).is_ok());
        assert_eq!(
            verify_assertion(
                &a,
                agent.public(),
                "bot",
                &["https://other/oauth2/token"],
                t
            )
            .unwrap_err(),
            TokenError::Audience
        );
        assert_eq!(
            verify_assertion(&a, agent.public(), "eve", &[url], t).unwrap_err(),
            TokenError::Claim("sub")
        );
        let other = Ed25519Key::generate();
        assert_eq!(
            verify_assertion(&a, other.public(), "bot", &[url], t).unwrap_err(),
            TokenError::UnknownKey
        );
        // An hour is accepted (authlib's default); more is not.
        let hour = agent.sign_assertion("bot", url, t, 3600).unwrap();
        assert!(verify_assertion(&hour, agent.public(), "bot", &[url], t).is_ok());
        let long = agent.sign_assertion("bot", url, t, 7200).unwrap();
        assert_eq!(
            verify_assertion(&long, agent.public(), "bot", &[url], t).unwrap_err(),
            TokenError::Lifetime
        );
        let old = agent.sign_assertion("bot", url, t - 600, 60).unwrap();
        assert_eq!(
            verify_assertion(&old, agent.public(), "bot", &[url], t).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn library_defaults() {
        let t = now();
        let url = "https://gw.test/oauth2/token";
        let claims = |aud: serde_json::Value| {
            serde_json::json!({
                "iss": "bot", "sub": "bot", "aud": aud,
                "iat": t, "exp": t + 3600, "jti": "j1",
            })
        };
        // ES256 with an `aud` array, as some libraries send.
        let (ec, ec_public) = p256_key();
        let es = sign_es256(
            &ec,
            &serde_json::json!({"alg": "ES256", "typ": "JWT"}),
            &claims(serde_json::json!(["https://gw.test", url])),
        );
        assert_eq!(assertion_client(&es).unwrap(), "bot");
        assert!(verify_assertion(&es, &ec_public, "bot", &[url], t).is_ok());
        let wrong = sign_es256(
            &ec,
            &serde_json::json!({"alg": "ES256"}),
            &claims(serde_json::json!(["https://other"])),
        );
        assert_eq!(
            verify_assertion(&wrong, &ec_public, "bot", &[url], t).unwrap_err(),
            TokenError::Audience
        );
        // RFC 9864's name for EdDSA over Ed25519.
        let ed = Ed25519Key::generate();
        let named = ed.sign_compact(
            &serde_json::json!({"alg": "Ed25519"}),
            &claims(serde_json::json!(url)),
        );
        assert!(verify_assertion(&named, ed.public(), "bot", &[url], t).is_ok());
        // An Ed25519 key cannot verify an ES256 assertion, nor the reverse.
        assert_eq!(
            verify_assertion(&es, ed.public(), "bot", &[url], t).unwrap_err(),
            TokenError::Algorithm
        );
        let future = ed.sign_compact(
            &serde_json::json!({"alg": "EdDSA"}),
            &serde_json::json!({"iss": "bot", "sub": "bot", "aud": url,
                "iat": t, "nbf": t + 600, "exp": t + 900, "jti": "j"}),
        );
        assert_eq!(
            verify_assertion(&future, ed.public(), "bot", &[url], t).unwrap_err(),
            TokenError::NotYetValid
        );
    }
}
