//! Ed25519 keys as JWKs (RFC 8037): the public key an agent registers
//! ([`PublicJwk`]), the signing key of an agent or of the gateway
//! ([`Ed25519Key`]), and their RFC 7638 thumbprints.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::TokenError;

/// The RFC 7638 thumbprint of an Ed25519 public key (base64url SHA-256 of
/// `{"crv":"Ed25519","kty":"OKP","x":"…"}`).
pub fn ed25519_thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        B64.encode(public)
    );
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// A public Ed25519 JWK (`kty: OKP`, `crv: Ed25519`), as registered for an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    pub(super) x: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
struct JwkJson {
    kty: String,
    crv: String,
    x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
}

fn parse_okp(value: &serde_json::Value) -> Result<JwkJson, TokenError> {
    let jwk: JwkJson =
        serde_json::from_value(value.clone()).map_err(|_| TokenError::Key("not a JWK"))?;
    if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
        return Err(TokenError::Key("only OKP Ed25519 keys are accepted"));
    }
    if jwk.alg.as_deref().is_some_and(|a| a != "EdDSA") {
        return Err(TokenError::Key("`alg` must be EdDSA"));
    }
    Ok(jwk)
}

fn decode_32(text: &str, what: &'static str) -> Result<[u8; 32], TokenError> {
    B64.decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(TokenError::Key(what))
}

impl PublicJwk {
    /// Parses a public JWK. A JWK carrying private material (`d`) is refused:
    /// a private key must never be sent to the gateway.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, TokenError> {
        let jwk = parse_okp(value)?;
        if jwk.d.is_some() {
            return Err(TokenError::Key(
                "the JWK holds a private key (`d`); send only the public key",
            ));
        }
        let x = decode_32(&jwk.x, "`x` is not 32 bytes of base64url")?;
        ed25519_dalek::VerifyingKey::from_bytes(&x)
            .map_err(|_| TokenError::Key("`x` is not an Ed25519 point"))?;
        Ok(PublicJwk { x })
    }

    /// Parses the JSON text of a public JWK.
    pub fn from_json_str(text: &str) -> Result<Self, TokenError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|_| TokenError::Key("not JSON"))?;
        Self::from_json(&value)
    }

    /// The JWK as JSON, with its thumbprint as `kid`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": B64.encode(self.x),
            "kid": self.thumbprint(),
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// RFC 7638 thumbprint.
    pub fn thumbprint(&self) -> String {
        ed25519_thumbprint(&self.x)
    }

    pub(super) fn decoding_key(&self) -> Result<DecodingKey, TokenError> {
        DecodingKey::from_ed_components(&B64.encode(self.x)).map_err(|_| TokenError::Key("x"))
    }
}

/// An Ed25519 signing key: an agent's (client assertions, DPoP proofs) or the
/// gateway's (access tokens). `kid` is the RFC 7638 thumbprint.
pub struct Ed25519Key {
    pub(super) key: SigningKey,
    encoding: EncodingKey,
    pub(super) public: PublicJwk,
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Key")
            .field("kid", &self.public.thumbprint())
            .finish_non_exhaustive()
    }
}

impl Ed25519Key {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_seed(&rand::random())
    }

    /// The key with this 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        // PKCS#8 of a valid seed cannot fail; an empty DER would only fail signing.
        let der = key
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let public = PublicJwk {
            x: key.verifying_key().to_bytes(),
        };
        Ed25519Key {
            encoding: EncodingKey::from_ed_der(&der),
            key,
            public,
        }
    }

    /// Reads a private JWK (`kty: OKP`, `crv: Ed25519`, `d`), checking that `x`
    /// belongs to `d`.
    pub fn from_private_jwk(text: &str) -> Result<Self, TokenError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|_| TokenError::Key("not JSON"))?;
        let jwk = parse_okp(&value)?;
        let d = jwk
            .d
            .as_deref()
            .ok_or(TokenError::Key("no private key `d`"))?;
        let key = Self::from_seed(&decode_32(d, "`d` is not 32 bytes of base64url")?);
        if B64.encode(key.public.x) != jwk.x {
            return Err(TokenError::Key("`x` does not match `d`"));
        }
        Ok(key)
    }

    /// The private JWK (secret: write it with mode 0600).
    pub fn to_private_jwk(&self) -> String {
        let mut value = self.public.to_json();
        value["d"] = B64.encode(self.key.to_bytes()).into();
        value.to_string()
    }

    /// The public half.
    pub fn public(&self) -> &PublicJwk {
        &self.public
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> String {
        self.public.thumbprint()
    }

    pub(super) fn sign<T: Serialize>(
        &self,
        header: &Header,
        claims: &T,
    ) -> Result<String, TokenError> {
        jsonwebtoken::encode(header, claims, &self.encoding).map_err(|_| TokenError::Key("sign"))
    }

    /// Signs any header and claims as a compact JWS with this key (whatever
    /// `alg` the header names: tests use it to forge refused tokens).
    pub fn sign_compact(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        use ed25519_dalek::Signer;
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(signature.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_round_trip_and_refuse_private_material() {
        let k = Ed25519Key::generate();
        let private = k.to_private_jwk();
        let back = Ed25519Key::from_private_jwk(&private).unwrap();
        assert_eq!(back.kid(), k.kid());
        assert!(PublicJwk::from_json_str(&private).is_err());
        let public = PublicJwk::from_json(&k.public().to_json()).unwrap();
        assert_eq!(public, *k.public());
        assert!(
            PublicJwk::from_json(&serde_json::json!({"kty":"EC","crv":"P-256","x":"AA","y":"AA"}))
                .is_err()
        );
        // RFC 8037 appendix A.3 thumbprint.
        let x = B64
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            ed25519_thumbprint(&x.try_into().unwrap()),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
