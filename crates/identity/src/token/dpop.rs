//! DPoP proofs (RFC 9449): an agent proves, request by request, that it holds
//! the key its access token is bound to (`cnf.jkt`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Ed25519Key, PublicJwk, TokenError, eddsa_header, map_jwt_error, random_id};

/// The `ath` of RFC 9449: base64url SHA-256 of the access token.
pub fn access_token_hash(token: &str) -> String {
    B64.encode(Sha256::digest(token.as_bytes()))
}

impl Ed25519Key {
    /// Signs a DPoP proof (RFC 9449) for one request. `access_token` is given
    /// for resource requests (it sets `ath`) and omitted at the token endpoint.
    pub fn sign_dpop_proof(
        &self,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
        now: i64,
    ) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("dpop+jwt".into());
        header.jwk = serde_json::from_value(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": B64.encode(self.public.x)
        }))
        .ok();
        let claims = DpopClaims {
            jti: random_id(),
            htm: htm.into(),
            htu: htu.into(),
            iat: now,
            ath: access_token.map(access_token_hash),
        };
        self.sign(&header, &claims)
    }
}

/// Claims of a DPoP proof.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpopClaims {
    /// Single-use id.
    pub jti: String,
    /// HTTP method.
    pub htm: String,
    /// HTTP URI without query and fragment.
    pub htu: String,
    /// Issued at.
    pub iat: i64,
    /// Hash of the access token (resource requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ath: Option<String>,
}

/// How far a DPoP proof's `iat` may be from now (seconds).
pub const DPOP_WINDOW: i64 = 60;

/// A verified DPoP proof.
#[derive(Debug, Clone)]
pub struct DpopProof {
    /// Thumbprint of the proof's key.
    pub jkt: String,
    /// The proof's claims.
    pub claims: DpopClaims,
}

fn strip_query(uri: &str) -> &str {
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    &uri[..end]
}

/// Verifies a DPoP proof (RFC 9449 §4.3) for a request with method `htm` to
/// `htu`. With `access_token`, `ath` must be its hash. The caller checks `jti`
/// against its replay cache and the token's `cnf.jkt` against [`DpopProof::jkt`].
pub fn verify_dpop_proof(
    proof: &str,
    htm: &str,
    htu: &str,
    access_token: Option<&str>,
    now: i64,
) -> Result<DpopProof, TokenError> {
    let header = eddsa_header(proof, "DPoP proof")?;
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(TokenError::Claim("typ"));
    }
    let jwk = header.jwk.as_ref().ok_or(TokenError::Claim("jwk"))?;
    let jwk_value = serde_json::to_value(jwk).map_err(|_| TokenError::Key("jwk"))?;
    let public = PublicJwk::from_json(&jwk_value)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<DpopClaims>(proof, &public.decoding_key()?, &validation)
        .map_err(|e| map_jwt_error(&e, "DPoP proof"))?;
    let claims = data.claims;
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(TokenError::Claim("jti"));
    }
    if !claims.htm.eq_ignore_ascii_case(htm) {
        return Err(TokenError::Claim("htm"));
    }
    if strip_query(&claims.htu) != strip_query(htu) {
        return Err(TokenError::Claim("htu"));
    }
    if claims.iat > now + 5 {
        return Err(TokenError::NotYetValid);
    }
    if claims.iat < now - DPOP_WINDOW {
        return Err(TokenError::Expired);
    }
    if let Some(token) = access_token
        && claims.ath.as_deref() != Some(access_token_hash(token).as_str())
    {
        return Err(TokenError::Claim("ath"));
    }
    Ok(DpopProof {
        jkt: public.thumbprint(),
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{bound, issuer, now};
    use super::*;

    #[test]
    fn dpop_proofs() {
        let k = Ed25519Key::generate();
        let t = now();
        let url = "https://gw.test/echo/x";
        let p = k.sign_dpop_proof("GET", url, Some("tok"), t).unwrap();
        let ok =
            verify_dpop_proof(&p, "GET", "https://gw.test/echo/x?q=1", Some("tok"), t).unwrap();
        assert_eq!(ok.jkt, k.kid());
        let err = |r: Result<DpopProof, TokenError>| r.unwrap_err();
        assert_eq!(
            err(verify_dpop_proof(&p, "POST", url, Some("tok"), t)),
            TokenError::Claim("htm")
        );
        assert_eq!(
            err(verify_dpop_proof(
                &p,
                "GET",
                "https://gw.test/other",
                Some("tok"),
                t
            )),
            TokenError::Claim("htu")
        );
        assert_eq!(
            err(verify_dpop_proof(&p, "GET", url, Some("other"), t)),
            TokenError::Claim("ath")
        );
        assert_eq!(
            err(verify_dpop_proof(&p, "GET", url, Some("tok"), t + 120)),
            TokenError::Expired
        );
        assert_eq!(
            err(verify_dpop_proof(&p, "GET", url, Some("tok"), t - 120)),
            TokenError::NotYetValid
        );
        // An access token is not a DPoP proof (wrong typ, no jwk).
        let iss = issuer();
        let (tok, _) = iss.issue("bot", "s", bound(), t, 60).unwrap();
        assert!(verify_dpop_proof(&tok, "GET", url, None, t).is_err());
    }
}
