//! Keys as JWKs: the public key an agent registers or puts in a DPoP proof
//! ([`PublicJwk`]: Ed25519, RFC 8037, or P-256, RFC 7518), the Ed25519 signing
//! key of an agent or of the gateway ([`Ed25519Key`]), and their RFC 7638
//! thumbprints.

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

/// The RFC 7638 thumbprint of a P-256 public key (base64url SHA-256 of
/// `{"crv":"P-256","kty":"EC","x":"…","y":"…"}`).
fn p256_thumbprint(x: &[u8; 32], y: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        B64.encode(x),
        B64.encode(y)
    );
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// A public JWK an agent signs with: Ed25519 (`kty: OKP`, `crv: Ed25519`,
/// algorithm `EdDSA`, also named `Ed25519` by RFC 9864) or P-256 (`kty: EC`,
/// `crv: P-256`, algorithm `ES256`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    pub(super) key: PublicKey,
}

/// The key material of a [`PublicJwk`], checked to be a valid point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PublicKey {
    /// An Ed25519 public key.
    Ed25519([u8; 32]),
    /// The affine coordinates of a P-256 point.
    P256 { x: [u8; 32], y: [u8; 32] },
}

#[derive(Debug, Serialize, Deserialize)]
struct JwkJson {
    kty: String,
    crv: String,
    x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
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
    if jwk
        .alg
        .as_deref()
        .is_some_and(|a| a != "EdDSA" && a != "Ed25519")
    {
        return Err(TokenError::Key("`alg` must be EdDSA"));
    }
    Ok(jwk)
}

fn parse_jwk(value: &serde_json::Value) -> Result<JwkJson, TokenError> {
    let jwk: JwkJson =
        serde_json::from_value(value.clone()).map_err(|_| TokenError::Key("not a JWK"))?;
    match (jwk.kty.as_str(), jwk.crv.as_str()) {
        ("OKP", "Ed25519") => parse_okp(value),
        ("EC", "P-256") => {
            if jwk.alg.as_deref().is_some_and(|a| a != "ES256") {
                return Err(TokenError::Key("`alg` of a P-256 key must be ES256"));
            }
            Ok(jwk)
        }
        _ => Err(TokenError::Key(
            "only OKP Ed25519 and EC P-256 keys are accepted",
        )),
    }
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
        let jwk = parse_jwk(value)?;
        if jwk.d.is_some() {
            return Err(TokenError::Key(
                "the JWK holds a private key (`d`); send only the public key",
            ));
        }
        let x = decode_32(&jwk.x, "`x` is not 32 bytes of base64url")?;
        if jwk.kty == "EC" {
            let y = decode_32(
                jwk.y.as_deref().unwrap_or_default(),
                "`y` is not 32 bytes of base64url",
            )?;
            let mut sec1 = [0u8; 65];
            sec1[0] = 4;
            sec1[1..33].copy_from_slice(&x);
            sec1[33..].copy_from_slice(&y);
            p256::PublicKey::from_sec1_bytes(&sec1)
                .map_err(|_| TokenError::Key("`x`, `y` is not a P-256 point"))?;
            return Ok(PublicJwk {
                key: PublicKey::P256 { x, y },
            });
        }
        if jwk.y.is_some() {
            return Err(TokenError::Key("an Ed25519 JWK has no `y`"));
        }
        ed25519_dalek::VerifyingKey::from_bytes(&x)
            .map_err(|_| TokenError::Key("`x` is not an Ed25519 point"))?;
        Ok(PublicJwk {
            key: PublicKey::Ed25519(x),
        })
    }

    /// An Ed25519 public key.
    pub(super) fn ed25519(x: [u8; 32]) -> Self {
        PublicJwk {
            key: PublicKey::Ed25519(x),
        }
    }

    /// The JWS algorithm names this key verifies (RFC 7518, RFC 9864).
    pub fn algorithms(&self) -> &'static [&'static str] {
        match self.key {
            PublicKey::Ed25519(_) => &["EdDSA", "Ed25519"],
            PublicKey::P256 { .. } => &["ES256"],
        }
    }

    /// Parses the JSON text of a public JWK.
    pub fn from_json_str(text: &str) -> Result<Self, TokenError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|_| TokenError::Key("not JSON"))?;
        Self::from_json(&value)
    }

    /// The JWK as JSON, with its thumbprint as `kid`.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.key {
            PublicKey::Ed25519(x) => serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": B64.encode(x),
                "kid": self.thumbprint(),
                "alg": "EdDSA",
                "use": "sig",
            }),
            PublicKey::P256 { x, y } => serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": B64.encode(x),
                "y": B64.encode(y),
                "kid": self.thumbprint(),
                "alg": "ES256",
                "use": "sig",
            }),
        }
    }

    /// RFC 7638 thumbprint.
    pub fn thumbprint(&self) -> String {
        match &self.key {
            PublicKey::Ed25519(x) => ed25519_thumbprint(x),
            PublicKey::P256 { x, y } => p256_thumbprint(x, y),
        }
    }

    /// The key for `jsonwebtoken` (the gateway's own Ed25519 access tokens).
    pub(super) fn decoding_key(&self) -> Result<DecodingKey, TokenError> {
        match &self.key {
            PublicKey::Ed25519(x) => {
                DecodingKey::from_ed_components(&B64.encode(x)).map_err(|_| TokenError::Key("x"))
            }
            PublicKey::P256 { .. } => Err(TokenError::Key("not Ed25519")),
        }
    }

    /// Checks `signature` over `input` with this key, for the JWS algorithm
    /// `alg` (which must be one of [`Self::algorithms`]).
    pub(super) fn verify_signature(
        &self,
        alg: &str,
        input: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        if !self.algorithms().contains(&alg) {
            return Err(TokenError::Algorithm);
        }
        match &self.key {
            PublicKey::Ed25519(x) => {
                let key = ed25519_dalek::VerifyingKey::from_bytes(x)
                    .map_err(|_| TokenError::Key("not Ed25519"))?;
                let signature = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| TokenError::Signature)?;
                key.verify_strict(input, &signature)
                    .map_err(|_| TokenError::Signature)
            }
            PublicKey::P256 { x, y } => {
                use p256::ecdsa::signature::Verifier;
                let point = p256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
                let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| TokenError::Key("not P-256"))?;
                // JWS carries the fixed-width `r || s` form (RFC 7518 §3.4).
                let signature = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| TokenError::Signature)?;
                key.verify(input, &signature)
                    .map_err(|_| TokenError::Signature)
            }
        }
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
        let public = PublicJwk::ed25519(key.verifying_key().to_bytes());
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
        if B64.encode(key.public_x()) != jwk.x {
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

    /// The raw Ed25519 public key.
    pub(super) fn public_x(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
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
