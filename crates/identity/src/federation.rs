//! Humans are federated: their tokens come from external OpenID Connect
//! issuers and are verified here against the issuer's published keys (JWKS).
//!
//! Accepted: asymmetric signatures only (RS*, PS*, ES256/384, EdDSA), with the
//! key chosen by `kid` and its type matching the header's `alg`, so `none`,
//! HS256 keyed with a public key, and a key of the wrong family are refused
//! before or by the signature check. `iss`, `aud`, `exp` and `nbf` are
//! checked against a caller-supplied clock with a bounded skew.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::token::TokenError;

/// Longest accepted clock skew (seconds).
pub const MAX_CLOCK_SKEW: i64 = 300;

/// One configured OIDC issuer.
#[derive(Debug, Clone)]
pub struct FederatedIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// The `aud` its tokens must carry for this gateway.
    pub audience: String,
    /// `amr` values that count as a second factor.
    pub mfa_amr: Vec<String>,
    /// Allowed clock skew for `exp`/`nbf`/`iat` (seconds, at most [`MAX_CLOCK_SKEW`]).
    pub clock_skew: i64,
}

/// A verified OpenID Connect ID token: the user and what the login showed
/// about them (for mapping to an admin role and naming them in records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdToken {
    /// The user, as a token exchange would see them.
    pub user: UserToken,
    /// Their e-mail address, when present and not marked unverified.
    pub email: Option<String>,
    /// Their display name (`name`, else `preferred_username`).
    pub name: Option<String>,
}

/// A verified user token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserToken {
    /// The user (`sub`).
    pub sub: String,
    /// Their issuer.
    pub iss: String,
    /// Expiry of their token: a delegated token never outlives it.
    pub exp: i64,
    /// Their groups (`groups` claim), each usable as a Cedar role id.
    pub groups: Vec<String>,
    /// Whether `amr` names a second factor.
    pub mfa: bool,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    exp: i64,
    #[serde(default)]
    groups: Vec<serde_json::Value>,
    #[serde(default)]
    amr: Vec<String>,
}

/// The time claims, and every claim as JSON.
#[derive(Debug, Deserialize)]
struct Times {
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
}

/// A verified workload posture statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostureStatement {
    /// The agent's SPIFFE ID it attests.
    pub sub: String,
    /// The attested workload digest, `sha256:<hex>` lower case.
    pub digest: String,
    /// Its expiry.
    pub exp: i64,
}

/// The `iss` a token claims, read before anything is verified, to pick the
/// configured issuer whose keys must verify it.
pub fn claimed_issuer(token: &str) -> Result<String, TokenError> {
    if token.len() > 16_384 || token.split('.').count() != 3 {
        return Err(TokenError::Malformed("user token"));
    }
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode(token)
        .map_err(|_| TokenError::Malformed("user token"))?
        .claims;
    claims
        .get("iss")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or(TokenError::Claim("iss"))
}

fn asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl FederatedIssuer {
    /// The key id a token's header names (to refresh the JWKS when unknown).
    pub fn token_kid(token: &str) -> Option<String> {
        jsonwebtoken::decode_header(token).ok()?.kid
    }

    /// Verifies a user token against `keys` at `now`.
    pub fn verify(&self, token: &str, keys: &JwkSet, now: i64) -> Result<UserToken, TokenError> {
        self.user(self.verify_claims(token, keys, now)?)
    }

    /// Verifies an ID token from a login this gateway started (OpenID
    /// Connect Core §3.1.3.7): the checks of [`verify`](Self::verify), with
    /// this issuer's `audience` being the gateway's client id, plus the
    /// `nonce` the login sent and, when present, `azp` naming the client.
    pub fn verify_id_token(
        &self,
        token: &str,
        keys: &JwkSet,
        now: i64,
        nonce: &str,
    ) -> Result<IdToken, TokenError> {
        let all = self.verify_claims(token, keys, now)?;
        // Not a timing secret: the nonce travelled through the browser.
        if nonce.is_empty() || all["nonce"].as_str() != Some(nonce) {
            return Err(TokenError::Claim("nonce"));
        }
        if all
            .get("azp")
            .is_some_and(|azp| azp.as_str() != Some(self.audience.as_str()))
        {
            return Err(TokenError::Claim("azp"));
        }
        let text = |k: &str| {
            all[k]
                .as_str()
                .filter(|v| !v.is_empty() && v.len() <= 256 && !v.chars().any(char::is_control))
                .map(str::to_string)
        };
        let email = text("email").filter(|_| all["email_verified"].as_bool() != Some(false));
        let name = text("name").or_else(|| text("preferred_username"));
        Ok(IdToken {
            user: self.user(all)?,
            email,
            name,
        })
    }

    /// The user of verified claims.
    fn user(&self, all: serde_json::Value) -> Result<UserToken, TokenError> {
        let claims: Claims =
            serde_json::from_value(all).map_err(|_| TokenError::Malformed("user token"))?;
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(TokenError::Claim("sub"));
        }
        let groups = claims
            .groups
            .iter()
            .filter_map(|g| g.as_str())
            .filter(|g| portcullis_core::AgentName::parse(g).is_ok())
            .map(str::to_string)
            .collect();
        Ok(UserToken {
            mfa: claims.amr.iter().any(|m| self.mfa_amr.contains(m)),
            sub: claims.sub,
            iss: claims.iss,
            exp: claims.exp,
            groups,
        })
    }

    /// Verifies a workload posture statement: a JWT from this (attestor)
    /// issuer whose `sub` is the agent's SPIFFE ID and whose `digest` is the
    /// attested workload digest (`sha256:<64 hex>`).
    pub fn verify_posture(
        &self,
        token: &str,
        keys: &JwkSet,
        now: i64,
    ) -> Result<PostureStatement, TokenError> {
        let claims = self.verify_claims(token, keys, now)?;
        let sub = claims["sub"].as_str().ok_or(TokenError::Claim("sub"))?;
        let digest = claims["digest"]
            .as_str()
            .filter(|d| {
                d.strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            })
            .ok_or(TokenError::Claim("digest"))?;
        Ok(PostureStatement {
            sub: sub.to_string(),
            digest: digest.to_ascii_lowercase(),
            exp: claims["exp"].as_i64().unwrap_or_default(),
        })
    }

    /// Signature, algorithm, issuer, audience and time checks; the claims as JSON.
    fn verify_claims(
        &self,
        token: &str,
        keys: &JwkSet,
        now: i64,
    ) -> Result<serde_json::Value, TokenError> {
        if token.len() > 16_384 || token.split('.').count() != 3 {
            return Err(TokenError::Malformed("user token"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => TokenError::Algorithm,
            _ => TokenError::Malformed("user token"),
        })?;
        if !asymmetric(header.alg) {
            return Err(TokenError::Algorithm);
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed("user token"));
        }
        let jwk = match header.kid.as_deref() {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or(TokenError::UnknownKey)?;
        if let Some(key_alg) = jwk.common.key_algorithm
            && key_alg.to_string() != format!("{:?}", header.alg)
        {
            return Err(TokenError::Algorithm);
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| TokenError::Key("unusable JWK"))?;
        let mut validation = Validation::new(header.alg);
        // Time is checked below against `now`, with the configured skew.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => TokenError::Signature,
                    ErrorKind::InvalidAudience => TokenError::Audience,
                    ErrorKind::InvalidIssuer => TokenError::Issuer,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        TokenError::Algorithm
                    }
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::Claim("aud"),
                    ErrorKind::MissingRequiredClaim(c) if c == "sub" => TokenError::Claim("sub"),
                    ErrorKind::MissingRequiredClaim(_) => TokenError::Claim("exp"),
                    _ => TokenError::Malformed("user token"),
                }
            })?;
        let all = data.claims;
        let times: Times =
            serde_json::from_value(all.clone()).map_err(|_| TokenError::Claim("exp"))?;
        let skew = self.clock_skew.clamp(0, MAX_CLOCK_SKEW);
        if times.exp + skew <= now {
            return Err(TokenError::Expired);
        }
        if times.nbf.is_some_and(|nbf| nbf - skew > now)
            || times.iat.is_some_and(|iat| iat - skew > now)
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ed25519Key;
    use serde_json::json;

    fn issuer() -> FederatedIssuer {
        FederatedIssuer {
            issuer: "https://idp.example".into(),
            audience: "portcullis".into(),
            mfa_amr: vec!["mfa".into(), "otp".into()],
            clock_skew: 30,
        }
    }

    fn jwks(key: &Ed25519Key) -> JwkSet {
        let mut jwk = key.public().to_json();
        jwk["kid"] = json!(key.kid());
        jwk["alg"] = json!("EdDSA");
        serde_json::from_value(json!({ "keys": [jwk] })).unwrap()
    }

    fn token(key: &Ed25519Key, alg: &str, claims: serde_json::Value) -> String {
        key.sign_compact(
            &json!({"alg": alg, "typ": "JWT", "kid": key.kid()}),
            &claims,
        )
    }

    fn claims(now: i64) -> serde_json::Value {
        json!({
            "iss": "https://idp.example", "aud": "portcullis", "sub": "alice",
            "exp": now + 300, "iat": now, "groups": ["finance", "bad name!"], "amr": ["pwd", "otp"]
        })
    }

    #[test]
    fn verifies_and_refuses() {
        let now = 1_800_000_000;
        let key = Ed25519Key::generate();
        let keys = jwks(&key);
        let ok = issuer()
            .verify(&token(&key, "EdDSA", claims(now)), &keys, now)
            .unwrap();
        assert_eq!(ok.sub, "alice");
        assert_eq!(ok.groups, ["finance"]);
        assert!(ok.mfa);
        assert_eq!(
            claimed_issuer(&token(&key, "EdDSA", claims(now))).unwrap(),
            "https://idp.example"
        );

        let refuse = |t: String| issuer().verify(&t, &keys, now).unwrap_err();
        let with = |k: &str, v: serde_json::Value| {
            let mut c = claims(now);
            c[k] = v;
            token(&key, "EdDSA", c)
        };
        assert_eq!(refuse(with("exp", json!(now - 31))), TokenError::Expired);
        // Within the skew: accepted.
        assert!(
            issuer()
                .verify(&with("exp", json!(now - 29)), &keys, now)
                .is_ok()
        );
        assert_eq!(
            refuse(with("nbf", json!(now + 31))),
            TokenError::NotYetValid
        );
        assert_eq!(refuse(with("aud", json!("other"))), TokenError::Audience);
        assert_eq!(
            refuse(with("iss", json!("https://evil"))),
            TokenError::Issuer
        );
        assert_eq!(
            refuse(token(&key, "HS256", claims(now))),
            TokenError::Algorithm
        );
        assert_eq!(
            refuse(token(&key, "none", claims(now))),
            TokenError::Algorithm
        );
        // RS256 header with an Ed25519 key: the key's `alg` does not match.
        assert_eq!(
            refuse(token(&key, "RS256", claims(now))),
            TokenError::Algorithm
        );
        let other = Ed25519Key::generate();
        assert_eq!(
            refuse(token(&other, "EdDSA", claims(now))),
            TokenError::UnknownKey
        );
        // Right kid, wrong signature.
        let forged = other.sign_compact(&json!({"alg": "EdDSA", "kid": key.kid()}), &claims(now));
        assert_eq!(refuse(forged), TokenError::Signature);
        let mut no_mfa = claims(now);
        no_mfa["amr"] = json!(["pwd"]);
        assert!(
            !issuer()
                .verify(&token(&key, "EdDSA", no_mfa), &keys, now)
                .unwrap()
                .mfa
        );
    }

    #[test]
    fn id_tokens_need_the_login_nonce_and_the_client() {
        let now = 1_800_000_000;
        let key = Ed25519Key::generate();
        let keys = jwks(&key);
        let id = |extra: serde_json::Value| {
            let mut c = claims(now);
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            token(&key, "EdDSA", c)
        };
        let ok = issuer()
            .verify_id_token(
                &id(json!({"nonce": "n1", "email": "a@x", "name": "Alice"})),
                &keys,
                now,
                "n1",
            )
            .unwrap();
        assert_eq!(
            (
                ok.user.sub.as_str(),
                ok.email.as_deref(),
                ok.name.as_deref()
            ),
            ("alice", Some("a@x"), Some("Alice"))
        );
        let refuse = |t: String, nonce: &str| issuer().verify_id_token(&t, &keys, now, nonce);
        assert_eq!(
            refuse(id(json!({"nonce": "n1"})), "n2"),
            Err(TokenError::Claim("nonce"))
        );
        assert_eq!(refuse(id(json!({})), "n1"), Err(TokenError::Claim("nonce")));
        assert_eq!(refuse(id(json!({})), ""), Err(TokenError::Claim("nonce")));
        assert_eq!(
            refuse(id(json!({"nonce": "n1", "azp": "other"})), "n1"),
            Err(TokenError::Claim("azp"))
        );
        assert_eq!(
            refuse(id(json!({"nonce": "n1", "aud": "other"})), "n1"),
            Err(TokenError::Audience)
        );
        // An address the issuer says is unverified is not used.
        let unverified = refuse(
            id(json!({"nonce": "n1", "email": "a@x", "email_verified": false})),
            "n1",
        )
        .unwrap();
        assert_eq!(unverified.email, None);
    }
}
