//! OAuth 2.0 tokens for agents that cannot do mTLS: the agent's own Ed25519
//! signing key (a JWK, RFC 8037), the client assertion it signs to authenticate
//! at the token endpoint (`private_key_jwt`, RFC 7523), and the gateway's
//! EdDSA access tokens, always bound to a key (`cnf.jkt`, RFC 9449) or to a
//! client certificate (`cnf.x5t#S256`, RFC 8705).
//!
//! Only EdDSA with a known key is accepted. `alg: none` does not even parse as a
//! header here, and HS*/RS*/ES* are refused before any key is used, so the
//! public key can never be confused for an HMAC secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Default access-token lifetime (seconds).
pub const DEFAULT_TOKEN_TTL: u64 = 300;
/// Longest access-token lifetime the gateway issues (seconds).
pub const MAX_TOKEN_TTL: u64 = 900;
/// Longest lifetime of a client assertion (seconds, `exp - now`).
pub const MAX_ASSERTION_LIFETIME: i64 = 300;
/// The `client_assertion_type` of RFC 7523.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Why a token, assertion or proof was refused. Messages name the problem and
/// never carry the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS, or its header or claims are not the expected JSON.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than EdDSA (including `none`).
    #[error("algorithm not accepted: only EdDSA is")]
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

/// The RFC 7638 thumbprint of an Ed25519 public key (base64url SHA-256 of
/// `{"crv":"Ed25519","kty":"OKP","x":"…"}`).
pub fn ed25519_thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        B64.encode(public)
    );
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// The RFC 8705 `x5t#S256` of a DER certificate.
pub fn cert_thumbprint(der: &[u8]) -> String {
    B64.encode(Sha256::digest(der))
}

/// The `ath` of RFC 9449: base64url SHA-256 of the access token.
pub fn access_token_hash(token: &str) -> String {
    B64.encode(Sha256::digest(token.as_bytes()))
}

/// A public Ed25519 JWK (`kty: OKP`, `crv: Ed25519`), as registered for an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    x: [u8; 32],
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

    fn decoding_key(&self) -> Result<DecodingKey, TokenError> {
        DecodingKey::from_ed_components(&B64.encode(self.x)).map_err(|_| TokenError::Key("x"))
    }
}

/// An Ed25519 signing key: an agent's (client assertions, DPoP proofs) or the
/// gateway's (access tokens). `kid` is the RFC 7638 thumbprint.
pub struct Ed25519Key {
    key: SigningKey,
    encoding: EncodingKey,
    public: PublicJwk,
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

    fn sign<T: Serialize>(&self, header: &Header, claims: &T) -> Result<String, TokenError> {
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

/// A random 128-bit identifier, base64url.
pub fn random_id() -> String {
    B64.encode(rand::random::<[u8; 16]>())
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

/// `cnf`: what the access token is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// RFC 9449: thumbprint of the DPoP key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// RFC 8705: SHA-256 of the client certificate (base64url).
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

/// Claims of a gateway access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The gateway (its public URL).
    pub iss: String,
    /// The agent's SPIFFE ID.
    pub sub: String,
    /// The gateway's data plane.
    pub aud: String,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    #[serde(default)]
    pub nbf: i64,
    /// Token id.
    pub jti: String,
    /// The agent name.
    pub client_id: String,
    /// The sender constraint; always present.
    pub cnf: Confirmation,
    /// RFC 8693 §4.1: on a delegated token, the acting agent (and, nested,
    /// the actors before it). `sub` is then the user, not the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// On a delegated token: the user's issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_iss: Option<String>,
    /// On a delegated token: the user's groups (Cedar roles of the user).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// RFC 8176 methods: `["mfa"]` when the user passed a second factor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The workload digest a posture statement attested when the token was
    /// issued (`sha256:<hex>`); absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posture_digest: Option<String>,
}

/// One actor of a delegation chain (RFC 8693 `act`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor's SPIFFE ID.
    pub sub: String,
    /// The actor before it, if the chain is longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// The actors, current first.
    pub fn chain(&self) -> Vec<&str> {
        let mut out = vec![self.sub.as_str()];
        let mut next = self.act.as_deref();
        while let Some(a) = next {
            out.push(a.sub.as_str());
            next = a.act.as_deref();
        }
        out
    }
}

/// What a delegated token says about the user it was exchanged for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegatedUser {
    /// The user (subject of their token).
    pub sub: String,
    /// Their issuer.
    pub iss: String,
    /// Their groups.
    pub groups: Vec<String>,
    /// Whether they passed a second factor.
    pub mfa: bool,
}

impl AccessClaims {
    /// The acting agent's SPIFFE ID: `act.sub` on a delegated token, else `sub`.
    pub fn agent_spiffe_id(&self) -> &str {
        self.act
            .as_ref()
            .map_or(self.sub.as_str(), |a| a.sub.as_str())
    }

    /// The user a delegated token acts for.
    pub fn delegated_user(&self) -> Option<DelegatedUser> {
        self.act.as_ref()?;
        Some(DelegatedUser {
            sub: self.sub.clone(),
            iss: self.user_iss.clone().unwrap_or_default(),
            groups: self.groups.clone(),
            mfa: self.amr.iter().any(|m| m == "mfa"),
        })
    }
}

/// The gateway's token key: issues and verifies access tokens.
#[derive(Debug)]
pub struct TokenIssuer {
    key: Ed25519Key,
    decoding: DecodingKey,
    issuer: String,
    validation: Validation,
}

impl TokenIssuer {
    /// The issuer `issuer` (the gateway's public URL, also the audience) signing with `key`.
    pub fn new(key: Ed25519Key, issuer: &str) -> Result<Self, TokenError> {
        let decoding = key.public.decoding_key()?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_audience(&[issuer]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        Ok(TokenIssuer {
            key,
            decoding,
            issuer: issuer.to_string(),
            validation,
        })
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id of the signing key.
    pub fn kid(&self) -> String {
        self.key.kid()
    }

    /// The JWKS to publish.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.key.public.to_json()] })
    }

    /// Issues an access token for `agent` (`sub` = `spiffe_id`) bound by `cnf`.
    /// `ttl` is capped at [`MAX_TOKEN_TTL`]. Refuses an unbound token.
    pub fn issue(
        &self,
        agent: &str,
        spiffe_id: &str,
        cnf: Confirmation,
        now: i64,
        ttl: u64,
    ) -> Result<(String, AccessClaims), TokenError> {
        if cnf.jkt.is_none() && cnf.x5t_s256.is_none() {
            return Err(TokenError::Claim("cnf"));
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid());
        header.typ = Some("at+jwt".into());
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: spiffe_id.into(),
            aud: self.issuer.clone(),
            exp: now + ttl.min(MAX_TOKEN_TTL) as i64,
            iat: now,
            nbf: now,
            jti: random_id(),
            client_id: agent.into(),
            cnf,
            act: None,
            user_iss: None,
            groups: Vec::new(),
            amr: Vec::new(),
            posture_digest: None,
        };
        Ok((self.key.sign(&header, &claims)?, claims))
    }

    /// Issues a delegated token (RFC 8693 token exchange): `sub` is the user,
    /// `act` the acting agent with the earlier actors nested in it. Never
    /// outlives the user's own token (`not_after`).
    #[allow(clippy::too_many_arguments)]
    pub fn issue_delegated(
        &self,
        agent: &str,
        actor: Actor,
        user: &DelegatedUser,
        cnf: Confirmation,
        now: i64,
        ttl: u64,
        not_after: i64,
    ) -> Result<(String, AccessClaims), TokenError> {
        if cnf.jkt.is_none() && cnf.x5t_s256.is_none() {
            return Err(TokenError::Claim("cnf"));
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid());
        header.typ = Some("at+jwt".into());
        let exp = (now + ttl.min(MAX_TOKEN_TTL) as i64).min(not_after);
        if exp <= now {
            return Err(TokenError::Expired);
        }
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: user.sub.clone(),
            aud: self.issuer.clone(),
            exp,
            iat: now,
            nbf: now,
            jti: random_id(),
            client_id: agent.into(),
            cnf,
            act: Some(actor),
            user_iss: Some(user.iss.clone()),
            groups: user.groups.clone(),
            amr: if user.mfa {
                vec!["mfa".into()]
            } else {
                Vec::new()
            },
            posture_digest: None,
        };
        Ok((self.key.sign(&header, &claims)?, claims))
    }

    /// Signs claims made by [`Self::issue`] or [`Self::issue_delegated`]
    /// after the caller added to them (the attested posture).
    pub fn sign_access(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        if claims.cnf.jkt.is_none() && claims.cnf.x5t_s256.is_none() {
            return Err(TokenError::Claim("cnf"));
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid());
        header.typ = Some("at+jwt".into());
        self.key.sign(&header, claims)
    }

    /// Whether `token` claims to be one of ours (a JWS header naming this
    /// issuer's `kid`). Nothing is verified: it only decides which check applies.
    pub fn names_own_key(&self, token: &str) -> bool {
        token.split('.').count() == 3
            && jsonwebtoken::decode_header(token)
                .is_ok_and(|h| h.kid.as_deref() == Some(self.kid().as_str()))
    }

    /// Verifies an access token: EdDSA with this issuer's `kid`, signature,
    /// `iss`, `aud`, `exp`, `nbf`, lifetime, and a sender constraint. The caller
    /// checks the constraint against the request and the agent against the
    /// live directory.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims, TokenError> {
        let header = eddsa_header(token, "access token")?;
        if header.kid.as_deref() != Some(self.kid().as_str()) {
            return Err(TokenError::UnknownKey);
        }
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| map_jwt_error(&e, "access token"))?;
        let claims = data.claims;
        // jsonwebtoken checks against the system clock; `now` makes the
        // decision reproducible and covers `iat`, which it does not check.
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now || claims.iat > now + 5 {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp - claims.iat > MAX_TOKEN_TTL as i64 {
            return Err(TokenError::Lifetime);
        }
        if claims.cnf.jkt.is_none() && claims.cnf.x5t_s256.is_none() {
            return Err(TokenError::Claim("cnf"));
        }
        Ok(claims)
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
    use super::*;

    const ISS: &str = "https://gw.test";

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(Ed25519Key::generate(), ISS).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn forge(header: serde_json::Value, claims: &AccessClaims, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_string(claims).unwrap()),
            B64.encode(sig)
        )
    }

    fn bound() -> Confirmation {
        Confirmation {
            jkt: Some("k".into()),
            x5t_s256: None,
        }
    }

    #[test]
    fn access_tokens() {
        let iss = issuer();
        let t = now();
        let (token, claims) = iss
            .issue("bot", "spiffe://t/agent/bot", bound(), t, 300)
            .unwrap();
        assert_eq!(iss.verify(&token, t).unwrap().jti, claims.jti);
        assert_eq!(
            iss.verify(&token, t + 300).unwrap_err(),
            TokenError::Expired
        );
        assert!(
            iss.issue("bot", "s", Confirmation::default(), t, 300)
                .is_err()
        );
        // Capped at 15 minutes.
        let (_, long) = iss.issue("bot", "s", bound(), t, 99_999).unwrap();
        assert_eq!(long.exp - long.iat, 900);
        // Another issuer's key: unknown kid; same kid, other key: bad signature.
        let other = issuer();
        let (foreign, _) = other.issue("bot", "s", bound(), t, 300).unwrap();
        assert_eq!(iss.verify(&foreign, t).unwrap_err(), TokenError::UnknownKey);
        let mut parts: Vec<&str> = token.split('.').collect();
        let foreign_sig = foreign.split('.').nth(2).unwrap();
        parts[2] = foreign_sig;
        assert_eq!(
            iss.verify(&parts.join("."), t).unwrap_err(),
            TokenError::Signature
        );
        // Tampered claims.
        let mut c = claims.clone();
        c.client_id = "root".into();
        let sig = B64.decode(token.split('.').nth(2).unwrap()).unwrap();
        let tampered = forge(
            serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":iss.kid()}),
            &c,
            &sig,
        );
        assert_eq!(iss.verify(&tampered, t).unwrap_err(), TokenError::Signature);
        // alg none, and HS256 keyed with the public key.
        let none = forge(
            serde_json::json!({"alg":"none","kid":iss.kid()}),
            &claims,
            b"",
        );
        assert_eq!(iss.verify(&none, t).unwrap_err(), TokenError::Algorithm);
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some(iss.kid()),
                ..Header::new(Algorithm::HS256)
            },
            &claims,
            &EncodingKey::from_secret(&iss.key.public.x),
        )
        .unwrap();
        assert_eq!(iss.verify(&hs, t).unwrap_err(), TokenError::Algorithm);
        // Wrong audience and issuer.
        let wrong =
            TokenIssuer::new(Ed25519Key::from_seed(&iss.key.key.to_bytes()), "https://x").unwrap();
        let (w, _) = wrong.issue("bot", "s", bound(), t, 300).unwrap();
        assert_eq!(iss.verify(&w, t).unwrap_err(), TokenError::Issuer);
        let mut c = claims.clone();
        c.aud = "https://elsewhere".into();
        let header = Header {
            kid: Some(iss.kid()),
            ..Header::new(Algorithm::EdDSA)
        };
        let other_aud = iss.key.sign(&header, &c).unwrap();
        assert_eq!(iss.verify(&other_aud, t).unwrap_err(), TokenError::Audience);
        // Not yet valid.
        let mut c = claims.clone();
        c.nbf = t + 100;
        c.iat = t + 100;
        c.exp = t + 200;
        let early = iss.key.sign(&header, &c).unwrap();
        assert_eq!(iss.verify(&early, t).unwrap_err(), TokenError::NotYetValid);
    }

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
