//! The `private_key_jwt` client assertion (RFC 7523): an agent signs it with
//! its own key to authenticate at the token endpoint; the gateway verifies it
//! against the agent's registered [`PublicJwk`].

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Ed25519Key, PublicJwk, TokenError, eddsa_header, map_jwt_error, random_id};

/// Longest lifetime of a client assertion (seconds, `exp - now`).
pub const MAX_ASSERTION_LIFETIME: i64 = 300;
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
            aud: audience.into(),
            iat: now,
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
    /// The token endpoint.
    pub aud: String,
    /// Issued at.
    #[serde(default)]
    pub iat: i64,
    /// Expiry.
    pub exp: i64,
    /// Single-use identifier.
    pub jti: String,
}

/// The `client_id` an assertion claims, read before its signature is checked
/// (to find the key to check it with). Nothing else in it is trusted yet.
pub fn assertion_client(assertion: &str) -> Result<String, TokenError> {
    eddsa_header(assertion, "client assertion")?;
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode(assertion)
        .map_err(|_| TokenError::Malformed("client assertion"))?
        .claims;
    claims
        .get("iss")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or(TokenError::Claim("iss"))
}

/// Verifies a client assertion signed by `key` for `client_id`, addressed to
/// one of `audiences`. The caller checks `jti` against its replay cache.
pub fn verify_assertion(
    assertion: &str,
    key: &PublicJwk,
    client_id: &str,
    audiences: &[&str],
    now: i64,
) -> Result<AssertionClaims, TokenError> {
    let header = eddsa_header(assertion, "client assertion")?;
    if header.kid.as_deref().is_some_and(|k| k != key.thumbprint()) {
        return Err(TokenError::UnknownKey);
    }
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_audience(audiences);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_string());
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let data =
        jsonwebtoken::decode::<AssertionClaims>(assertion, &key.decoding_key()?, &validation)
            .map_err(|e| map_jwt_error(&e, "client assertion"))?;
    let claims = data.claims;
    if claims.exp - now > MAX_ASSERTION_LIFETIME {
        return Err(TokenError::Lifetime);
    }
    if claims.iat > now + 5 {
        return Err(TokenError::NotYetValid);
    }
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(TokenError::Claim("jti"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::now;
    use super::*;

    #[test]
    fn assertions() {
        let agent = Ed25519Key::generate();
        let t = now();
        let url = "https://gw.test/oauth2/token";
        let a = agent.sign_assertion("bot", url, t, 60).unwrap();
        assert_eq!(assertion_client(&a).unwrap(), "bot");
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
        let long = agent.sign_assertion("bot", url, t, 3600).unwrap();
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
}
