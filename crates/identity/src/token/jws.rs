//! Compact JWS signed by agents: client assertions and DPoP proofs. Agents
//! sign with what their OAuth library does by default, so this accepts
//! `EdDSA` (also spelled `Ed25519`, RFC 9864) and `ES256` (P-256, RFC 7518),
//! and nothing else: `none`, HMAC and RSA are refused from the header, before
//! any key is looked at, and the algorithm must match the key's type, so a
//! public key can never be used as an HMAC secret or as another curve's key.
//!
//! The gateway's own access tokens stay EdDSA-only (`eddsa_header` in
//! `mod.rs`): the gateway chooses that algorithm itself.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{PublicJwk, TokenError};

/// The JWS algorithms accepted from agents, by name (`Ed25519` is RFC 9864's
/// fully specified name for EdDSA over Ed25519).
pub const CLIENT_SIGNING_ALGS: [&str; 3] = ["EdDSA", "Ed25519", "ES256"];

/// Longest compact JWS read from an agent.
const MAX_JWS: usize = 8192;

/// The header members read from an agent's JWS.
#[derive(Debug, Deserialize)]
pub(super) struct ClientHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub jwk: Option<serde_json::Value>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A parsed, not yet verified, compact JWS.
pub(super) struct ClientJws<'a> {
    pub header: ClientHeader,
    input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> ClientJws<'a> {
    /// Splits and decodes `token`, refusing any algorithm but
    /// [`CLIENT_SIGNING_ALGS`] and any critical extension (none is understood,
    /// RFC 7515 §4.1.11).
    pub fn parse(token: &'a str, what: &'static str) -> Result<Self, TokenError> {
        let malformed = || TokenError::Malformed(what);
        if token.len() > MAX_JWS {
            return Err(malformed());
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let header: serde_json::Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(malformed)?;
        if !header
            .get("alg")
            .and_then(|a| a.as_str())
            .is_some_and(|a| CLIENT_SIGNING_ALGS.contains(&a))
        {
            // Also `none`, `HS256`, `RS256`, or no `alg` at all.
            return Err(TokenError::Algorithm);
        }
        let header: ClientHeader = serde_json::from_value(header).map_err(|_| malformed())?;
        if header.crit.is_some() {
            return Err(malformed());
        }
        let payload = B64.decode(p).map_err(|_| malformed())?;
        let signature = B64.decode(s).map_err(|_| malformed())?;
        Ok(ClientJws {
            header,
            input: &token[..h.len() + 1 + p.len()],
            payload,
            signature,
        })
    }

    /// The claims, unverified: only to find the key to verify with.
    pub fn unverified_claims(&self, what: &'static str) -> Result<serde_json::Value, TokenError> {
        serde_json::from_slice(&self.payload).map_err(|_| TokenError::Malformed(what))
    }

    /// Checks the signature with `key` (whose type must match `alg`), then
    /// reads the claims.
    pub fn verify<T: DeserializeOwned>(
        &self,
        key: &PublicJwk,
        what: &'static str,
    ) -> Result<T, TokenError> {
        key.verify_signature(&self.header.alg, self.input.as_bytes(), &self.signature)?;
        serde_json::from_slice(&self.payload).map_err(|_| TokenError::Malformed(what))
    }
}

/// An `aud` claim: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// Whether any of `accepted` is among the audiences.
    pub fn contains_any(&self, accepted: &[&str]) -> bool {
        match self {
            Audience::One(a) => accepted.contains(&a.as_str()),
            Audience::Many(all) => all.iter().any(|a| accepted.contains(&a.as_str())),
        }
    }
}

/// Test helpers: signing with a P-256 key, as an agent's OAuth library would.
#[cfg(test)]
pub(super) mod test_support {
    use super::*;

    /// A P-256 key and its public JWK.
    pub fn p256_key() -> (p256::ecdsa::SigningKey, PublicJwk) {
        let key = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()).unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": B64.encode(point.x().unwrap()),
            "y": B64.encode(point.y().unwrap()),
        });
        (key, PublicJwk::from_json(&jwk).unwrap())
    }

    /// Signs `header` and `claims` with `key` (ES256, `r || s`).
    pub fn sign_es256(
        key: &p256::ecdsa::SigningKey,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> String {
        use p256::ecdsa::signature::Signer;
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(signature.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Ed25519Key;
    use super::test_support::*;
    use super::*;

    fn check(token: &str, key: &PublicJwk) -> Result<serde_json::Value, TokenError> {
        ClientJws::parse(token, "jws")?.verify(key, "jws")
    }

    #[test]
    fn algorithms_and_keys() {
        let claims = serde_json::json!({"a": 1});
        let ed = Ed25519Key::generate();
        let (ec, ec_public) = p256_key();
        for alg in ["EdDSA", "Ed25519"] {
            let t = ed.sign_compact(&serde_json::json!({"alg": alg}), &claims);
            assert_eq!(check(&t, ed.public()).unwrap(), claims, "{alg}");
            // The algorithm must match the key's type.
            assert_eq!(check(&t, &ec_public), Err(TokenError::Algorithm));
        }
        let t = sign_es256(&ec, &serde_json::json!({"alg": "ES256"}), &claims);
        assert_eq!(check(&t, &ec_public).unwrap(), claims);
        assert_eq!(check(&t, ed.public()), Err(TokenError::Algorithm));
        let (_, other) = p256_key();
        assert_eq!(check(&t, &other), Err(TokenError::Signature));
        // Refused from the header, whatever the key.
        for alg in ["none", "HS256", "RS256", "ES384", "EdDSA "] {
            let t = ed.sign_compact(&serde_json::json!({"alg": alg}), &claims);
            assert_eq!(check(&t, ed.public()), Err(TokenError::Algorithm), "{alg}");
        }
        let crit = ed.sign_compact(&serde_json::json!({"alg": "EdDSA", "crit": ["x"]}), &claims);
        assert_eq!(check(&crit, ed.public()), Err(TokenError::Malformed("jws")));
        assert_eq!(check("a.b", ed.public()), Err(TokenError::Malformed("jws")));
        assert!(Audience::One("a".into()).contains_any(&["b", "a"]));
        assert!(Audience::Many(vec!["x".into(), "a".into()]).contains_any(&["a"]));
        assert!(!Audience::Many(vec![]).contains_any(&["a"]));
    }
}
