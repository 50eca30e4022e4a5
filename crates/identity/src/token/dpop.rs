//! DPoP proofs (RFC 9449): an agent proves, request by request, that it holds
//! the key its access token is bound to (`cnf.jkt`). Proofs may be signed
//! with `EdDSA`/`Ed25519` or `ES256` (see `jws.rs`), and may carry a
//! server-issued nonce ([`DpopNonces`], RFC 9449 §8 and §9).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::jws::ClientJws;
use super::{Ed25519Key, PublicJwk, TokenError, random_id};

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
        self.sign_dpop_proof_with_nonce(htm, htu, access_token, None, now)
    }

    /// As [`Self::sign_dpop_proof`], carrying a server-issued `nonce`.
    pub fn sign_dpop_proof_with_nonce(
        &self,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("dpop+jwt".into());
        header.jwk = serde_json::from_value(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": B64.encode(self.public_x())
        }))
        .ok();
        let claims = DpopClaims {
            jti: random_id(),
            htm: htm.into(),
            htu: htu.into(),
            iat: now,
            ath: access_token.map(access_token_hash),
            nonce: nonce.map(str::to_string),
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
    /// The server-issued nonce, when the server asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
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
    let jws = ClientJws::parse(proof, "DPoP proof")?;
    if jws.header.typ.as_deref() != Some("dpop+jwt") {
        return Err(TokenError::Claim("typ"));
    }
    // The proof's own key; `PublicJwk` refuses a private one (`d`).
    let jwk = jws.header.jwk.as_ref().ok_or(TokenError::Claim("jwk"))?;
    let public = PublicJwk::from_json(jwk)?;
    let claims: DpopClaims = jws.verify(&public, "DPoP proof")?;
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

/// How long one nonce step lasts (seconds). A nonce is accepted during its
/// step and the next one, so for one to two minutes.
pub const DPOP_NONCE_STEP: i64 = 60;

/// Server-issued DPoP nonces (RFC 9449 §8, §9), stateless: a nonce is the
/// time step and a MAC of it under a key every node of a deployment derives
/// from the same secret, so any node accepts another's nonce and none keeps
/// state for them.
pub struct DpopNonces {
    key: [u8; 32],
}

impl std::fmt::Debug for DpopNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopNonces").finish_non_exhaustive()
    }
}

impl DpopNonces {
    /// Nonces keyed by `secret` (kept in memory only).
    pub fn new(secret: [u8; 32]) -> Self {
        DpopNonces { key: secret }
    }

    fn mac(&self, step: i64) -> String {
        // HMAC takes a key of any length: `new_from_slice` cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(b"portcullis dpop nonce\0");
        mac.update(&step.to_be_bytes());
        B64.encode(&mac.finalize().into_bytes()[..18])
    }

    /// The nonce to hand out at `now`.
    pub fn current(&self, now: i64) -> String {
        let step = now.div_euclid(DPOP_NONCE_STEP);
        format!("{step:x}.{}", self.mac(step))
    }

    /// Whether `nonce` was issued by these nonces during this step or the one before.
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        let step = now.div_euclid(DPOP_NONCE_STEP);
        let Some((given, mac)) = nonce.split_once('.') else {
            return false;
        };
        let Ok(given) = i64::from_str_radix(given, 16) else {
            return false;
        };
        (given == step || given == step - 1) && {
            let expected = self.mac(given);
            // Constant time: the MAC is the secret part.
            expected.len() == mac.len()
                && expected
                    .bytes()
                    .zip(mac.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::jws::test_support::{p256_key, sign_es256};
    use super::super::test_support::{bound, issuer, now};
    use super::*;

    #[test]
    fn es256_proofs_and_nonces() {
        let t = now();
        let url = "https://gw.test/oauth2/token";
        let (ec, public) = p256_key();
        let mut jwk = public.to_json();
        for k in ["kid", "alg", "use"] {
            jwk.as_object_mut().unwrap().remove(k);
        }
        let claims =
            serde_json::json!({"jti": "p1", "htm": "POST", "htu": url, "iat": t, "nonce": "n"});
        let header = serde_json::json!({"alg": "ES256", "typ": "dpop+jwt", "jwk": jwk});
        let proof = sign_es256(&ec, &header, &claims);
        let ok = verify_dpop_proof(&proof, "POST", url, None, t).unwrap();
        assert_eq!(ok.jkt, public.thumbprint());
        assert_eq!(ok.claims.nonce.as_deref(), Some("n"));
        // The header's key must have made the signature.
        let (other, _) = p256_key();
        let forged = sign_es256(&other, &header, &claims);
        assert_eq!(
            verify_dpop_proof(&forged, "POST", url, None, t).unwrap_err(),
            TokenError::Signature
        );
        let nonces = DpopNonces::new([7; 32]);
        let n = nonces.current(t);
        assert!(nonces.accepts(&n, t));
        assert!(nonces.accepts(&n, t + DPOP_NONCE_STEP));
        assert!(!nonces.accepts(&n, t + 2 * DPOP_NONCE_STEP));
        assert!(!DpopNonces::new([8; 32]).accepts(&n, t));
        assert!(!nonces.accepts("x", t));
        assert!(!nonces.accepts(&n.replace('.', "0."), t));
    }

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
