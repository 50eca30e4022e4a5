//! The gateway's access tokens: [`TokenIssuer`] issues and verifies them,
//! always sender-constrained ([`Confirmation`]: a DPoP key or a client
//! certificate), and on a delegated token (RFC 8693) they carry the acting
//! agents ([`Actor`]) and the user ([`DelegatedUser`]).
//!
//! Tokens of the authorization-code flow ([`TokenIssuer::issue_authorized`],
//! MCP authorization) are the one exception to binding: their audience is
//! one resource (RFC 8707, a route's URL) instead of the gateway, and they may
//! be unbound bearer tokens when the client sent no DPoP proof. Only
//! [`TokenIssuer::verify_for`] with that resource accepts them, so they
//! never pass where a gateway-audience token is expected (token exchange).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Ed25519Key, TokenError, eddsa_header, map_jwt_error, random_id};

/// Default access-token lifetime (seconds).
pub const DEFAULT_TOKEN_TTL: u64 = 300;
/// Longest access-token lifetime the gateway issues (seconds).
pub const MAX_TOKEN_TTL: u64 = 900;

/// The RFC 8705 `x5t#S256` of a DER certificate.
pub fn cert_thumbprint(der: &[u8]) -> String {
    B64.encode(Sha256::digest(der))
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

/// The actor `sub` prefix naming an OAuth client of the authorization-code
/// flow in a token's `act` chain (`oauth-client:<client_id>`).
pub const OAUTH_CLIENT_ACTOR: &str = "oauth-client:";

/// What a token of the authorization-code flow is issued for.
#[derive(Debug, Clone)]
pub struct AuthorizedGrant<'a> {
    /// The agent policy sees as principal.
    pub agent: &'a str,
    /// Its SPIFFE ID.
    pub agent_spiffe_id: &'a str,
    /// The OAuth client the user authorized.
    pub client_id: &'a str,
    /// The user who logged in.
    pub user: &'a DelegatedUser,
    /// The resource (RFC 8707): the URL of the route the token is good for.
    pub resource: &'a str,
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

    /// The OAuth client of an authorization-code token (the actor before
    /// the agent, `oauth-client:<id>`).
    pub fn oauth_client(&self) -> Option<&str> {
        self.act
            .as_ref()?
            .chain()
            .last()?
            .strip_prefix(OAUTH_CLIENT_ACTOR)
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
///
/// Its keys can change while it serves (an online rotation in cluster mode,
/// [`Self::install`]): they live in one [`arc_swap::ArcSwap`], so a request
/// reads one consistent set without a lock and a rotation never waits.
#[derive(Debug)]
pub struct TokenIssuer {
    issuer: String,
    validation: Validation,
    keys: arc_swap::ArcSwap<KeyRing>,
}

/// The keys of one moment: the one that signs, the ones a rotation retired
/// (they verify what they signed before), and the announced next one (it
/// verifies, and signs once the rotation activates it).
#[derive(Debug)]
struct KeyRing {
    key: Ed25519Key,
    decoding: DecodingKey,
    /// Keys this issuer signed with before a rotation: they only verify.
    previous: Vec<PreviousKey>,
    /// The key an online rotation announced: every replica verifies it
    /// before any signs with it.
    next: Option<NextKey>,
}

/// A token key retired by a rotation: it verifies the tokens it signed
/// before it was retired, until they expire, and nothing else.
#[derive(Debug)]
struct PreviousKey {
    kid: String,
    public: serde_json::Value,
    decoding: DecodingKey,
    retired_at: i64,
}

/// A token key announced by an online rotation, not signing yet here: a
/// token it signed (on a replica that activated it already) verifies.
#[derive(Debug)]
struct NextKey {
    kid: String,
    public: serde_json::Value,
    decoding: DecodingKey,
}

fn previous_key(key: &Ed25519Key, retired_at: i64) -> Result<PreviousKey, TokenError> {
    Ok(PreviousKey {
        kid: key.kid(),
        public: key.public.to_json(),
        decoding: key.public.decoding_key()?,
        retired_at,
    })
}

impl TokenIssuer {
    /// The issuer `issuer` (the gateway's public URL, also the audience) signing with `key`.
    pub fn new(key: Ed25519Key, issuer: &str) -> Result<Self, TokenError> {
        let decoding = key.public.decoding_key()?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 0;
        validation.validate_nbf = true;
        // The audience is checked by `verify_for`: the gateway, or the one
        // resource an authorization-code token names.
        validation.validate_aud = false;
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        Ok(TokenIssuer {
            issuer: issuer.to_string(),
            validation,
            keys: arc_swap::ArcSwap::from_pointee(KeyRing {
                key,
                decoding,
                previous: Vec::new(),
                next: None,
            }),
        })
    }

    /// Also verifies tokens signed by `key` before it was retired at
    /// `retired_at` (epoch seconds, the rotation): a token it signed is
    /// accepted until it expires, so at most [`MAX_TOKEN_TTL`] after the
    /// rotation. A token naming it and issued after `retired_at` is refused
    /// ([`TokenError::UnknownKey`]), so a retired key that leaked mints
    /// nothing new. The key is published in the JWKS while it verifies.
    pub fn with_previous(self, key: &Ed25519Key, retired_at: i64) -> Result<Self, TokenError> {
        let previous = previous_key(key, retired_at)?;
        let TokenIssuer {
            issuer,
            validation,
            keys,
        } = self;
        // Built before it serves: nothing else holds the ring.
        let mut ring = std::sync::Arc::try_unwrap(keys.into_inner())
            .map_err(|_| TokenError::Key("the token keys are in use"))?;
        if previous.kid != ring.key.kid() && !ring.previous.iter().any(|p| p.kid == previous.kid) {
            ring.previous.push(previous);
        }
        Ok(TokenIssuer {
            issuer,
            validation,
            keys: arc_swap::ArcSwap::from_pointee(ring),
        })
    }

    /// Replaces every key at once, while serving (an online rotation,
    /// docs/cluster.md): `key` signs from now on, each of `previous`
    /// verifies the tokens it signed before its retirement (epoch seconds),
    /// and `next`, announced but not active yet, verifies whatever it
    /// signs. A request in flight finishes with the set it read.
    pub fn install(
        &self,
        key: Ed25519Key,
        previous: &[(Ed25519Key, i64)],
        next: Option<&Ed25519Key>,
    ) -> Result<(), TokenError> {
        let kid = key.kid();
        let mut previous_keys: Vec<PreviousKey> = Vec::new();
        for (old, retired_at) in previous {
            let old = previous_key(old, *retired_at)?;
            if old.kid != kid && !previous_keys.iter().any(|p| p.kid == old.kid) {
                previous_keys.push(old);
            }
        }
        let next = match next {
            Some(n) if n.kid() != kid => Some(NextKey {
                kid: n.kid(),
                public: n.public.to_json(),
                decoding: n.public.decoding_key()?,
            }),
            _ => None,
        };
        let ring = KeyRing {
            decoding: key.public.decoding_key()?,
            key,
            previous: previous_keys,
            next,
        };
        self.keys.store(std::sync::Arc::new(ring));
        Ok(())
    }

    /// The key id of the announced next key, if a rotation announced one.
    pub fn next_kid(&self) -> Option<String> {
        self.keys.load().next.as_ref().map(|n| n.kid.clone())
    }

    /// Whether a key retired at `retired_at` may still verify a token at
    /// `now`: one it signed before then has expired after
    /// `retired_at + MAX_TOKEN_TTL`.
    pub fn previous_key_verifies(retired_at: i64, now: i64) -> bool {
        now < retired_at.saturating_add(MAX_TOKEN_TTL as i64)
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id of the signing key.
    pub fn kid(&self) -> String {
        self.keys.load().key.kid()
    }

    /// A 32-byte secret derived from the signing key for `purpose` (HMAC-SHA256
    /// keyed by the key's seed): every node holding the same token key derives
    /// the same secret (DPoP nonces, `DpopNonces`), and the secret reveals
    /// nothing of the key.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let seed = zeroize::Zeroizing::new(self.keys.load().key.key.to_bytes());
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(seed.as_slice()) else {
            return [0; 32];
        };
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The JWKS to publish.
    pub fn jwks(&self) -> serde_json::Value {
        let ring = self.keys.load();
        let mut keys = vec![ring.key.public.to_json()];
        keys.extend(ring.previous.iter().map(|p| p.public.clone()));
        keys.extend(ring.next.iter().map(|n| n.public.clone()));
        serde_json::json!({ "keys": keys })
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
        let ring = self.keys.load();
        header.kid = Some(ring.key.kid());
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
        Ok((ring.key.sign(&header, &claims)?, claims))
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
        let ring = self.keys.load();
        header.kid = Some(ring.key.kid());
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
        Ok((ring.key.sign(&header, &claims)?, claims))
    }

    /// Issues a token of the authorization-code flow: `sub` is the user, `act`
    /// the agent the gateway's policy sees as principal with the OAuth client
    /// nested as the actor before it (`oauth-client:<id>`), `aud` the one
    /// resource (RFC 8707) it is good for. Bound by `cnf` when the client
    /// proved a DPoP key, else a bearer token.
    pub fn issue_authorized(
        &self,
        grant: &AuthorizedGrant<'_>,
        cnf: Confirmation,
        now: i64,
        ttl: u64,
    ) -> Result<(String, AccessClaims), TokenError> {
        if !grant.resource.starts_with(&format!("{}/", self.issuer)) {
            return Err(TokenError::Claim("aud"));
        }
        let mut header = Header::new(Algorithm::EdDSA);
        let ring = self.keys.load();
        header.kid = Some(ring.key.kid());
        header.typ = Some("at+jwt".into());
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: grant.user.sub.clone(),
            aud: grant.resource.to_string(),
            exp: now + ttl.min(MAX_TOKEN_TTL) as i64,
            iat: now,
            nbf: now,
            jti: random_id(),
            client_id: grant.agent.into(),
            cnf,
            act: Some(Actor {
                sub: grant.agent_spiffe_id.into(),
                act: Some(Box::new(Actor {
                    sub: format!("{OAUTH_CLIENT_ACTOR}{}", grant.client_id),
                    act: None,
                })),
            }),
            user_iss: Some(grant.user.iss.clone()),
            groups: grant.user.groups.clone(),
            amr: if grant.user.mfa {
                vec!["mfa".into()]
            } else {
                Vec::new()
            },
            posture_digest: None,
        };
        Ok((ring.key.sign(&header, &claims)?, claims))
    }

    /// Signs claims made by [`Self::issue`] or [`Self::issue_delegated`]
    /// after the caller added to them (the attested posture).
    pub fn sign_access(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        if claims.cnf.jkt.is_none() && claims.cnf.x5t_s256.is_none() {
            return Err(TokenError::Claim("cnf"));
        }
        let mut header = Header::new(Algorithm::EdDSA);
        let ring = self.keys.load();
        header.kid = Some(ring.key.kid());
        header.typ = Some("at+jwt".into());
        ring.key.sign(&header, claims)
    }

    /// Whether `token` claims to be one of ours (a JWS header naming this
    /// issuer's `kid`). Nothing is verified: it only decides which check applies.
    pub fn names_own_key(&self, token: &str) -> bool {
        token.split('.').count() == 3
            && jsonwebtoken::decode_header(token).is_ok_and(|h| {
                let ring = self.keys.load();
                h.kid.as_deref() == Some(ring.key.kid().as_str())
                    || ring
                        .previous
                        .iter()
                        .any(|p| h.kid.as_deref() == Some(&p.kid))
                    || ring.next.iter().any(|n| h.kid.as_deref() == Some(&n.kid))
            })
    }

    /// Verifies an access token: EdDSA with this issuer's `kid`, signature,
    /// `iss`, `aud`, `exp`, `nbf`, lifetime, and a sender constraint. The caller
    /// checks the constraint against the request and the agent against the
    /// live directory.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims, TokenError> {
        self.verify_for(token, now, None)
    }

    /// [`Self::verify`], also accepting a token whose audience is `resource`
    /// (the URL of the route the request is for): authorization-code tokens,
    /// which may be unbound. A token for another resource is refused.
    pub fn verify_for(
        &self,
        token: &str,
        now: i64,
        resource: Option<&str>,
    ) -> Result<AccessClaims, TokenError> {
        let header = eddsa_header(token, "access token")?;
        let ring = self.keys.load();
        let (decoding, retired_at) = if header.kid.as_deref() == Some(ring.key.kid().as_str()) {
            (&ring.decoding, None)
        } else if let Some(next) = ring
            .next
            .as_ref()
            .filter(|n| header.kid.as_deref() == Some(n.kid.as_str()))
        {
            // Announced: another replica may have activated it already.
            (&next.decoding, None)
        } else {
            let previous = ring
                .previous
                .iter()
                .find(|p| header.kid.as_deref() == Some(p.kid.as_str()))
                .ok_or(TokenError::UnknownKey)?;
            (&previous.decoding, Some(previous.retired_at))
        };
        let data = jsonwebtoken::decode::<AccessClaims>(token, decoding, &self.validation)
            .map_err(|e| map_jwt_error(&e, "access token"))?;
        let claims = data.claims;
        // A retired key signed nothing after its rotation.
        if retired_at.is_some_and(|retired| claims.iat > retired) {
            return Err(TokenError::UnknownKey);
        }
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
        let for_resource = resource.is_some_and(|r| claims.aud == r);
        if claims.aud != self.issuer && !for_resource {
            return Err(TokenError::Audience);
        }
        // Only a resource's token may be unbound (a bearer token of the
        // authorization-code flow).
        if !for_resource && claims.cnf.jkt.is_none() && claims.cnf.x5t_s256.is_none() {
            return Err(TokenError::Claim("cnf"));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{bound, issuer, now};
    use super::*;
    use jsonwebtoken::EncodingKey;

    fn forge(header: serde_json::Value, claims: &AccessClaims, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_string(claims).unwrap()),
            B64.encode(sig)
        )
    }

    #[test]
    fn a_rotated_key_verifies_what_it_signed_until_it_expires() {
        let t = now();
        let url = issuer().issuer().to_string();
        let old = Ed25519Key::from_seed(&[1; 32]);
        let before = TokenIssuer::new(Ed25519Key::from_seed(&[1; 32]), &url).unwrap();
        let (old_token, _) = before
            .issue("bot", "spiffe://t/agent/bot", bound(), t - 10, 300)
            .unwrap();
        // Rotated at `t - 5`: the new key signs, the old one only verifies.
        let iss = TokenIssuer::new(Ed25519Key::from_seed(&[2; 32]), &url)
            .unwrap()
            .with_previous(&old, t - 5)
            .unwrap();
        assert_ne!(iss.kid(), before.kid());
        assert!(iss.names_own_key(&old_token));
        assert_eq!(
            iss.verify(&old_token, t).unwrap().sub,
            "spiffe://t/agent/bot"
        );
        assert_eq!(
            iss.verify(&old_token, t + 290).unwrap_err(),
            TokenError::Expired
        );
        let (new_token, _) = iss
            .issue("bot", "spiffe://t/agent/bot", bound(), t, 300)
            .unwrap();
        assert!(new_token.contains('.'));
        assert_eq!(
            jsonwebtoken::decode_header(&new_token).unwrap().kid,
            Some(iss.kid())
        );
        iss.verify(&new_token, t).unwrap();
        // Both keys are published while the old one verifies.
        let kids: Vec<String> = iss.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kids, [iss.kid(), before.kid()]);
        // The retired key signed nothing after the rotation: a token it
        // signs later (a leaked key) is refused. Issued in the past of the
        // system clock, which jsonwebtoken checks `nbf` against: a token
        // not yet valid by that clock is refused before the key is judged.
        let (late, _) = before
            .issue("bot", "spiffe://t/agent/bot", bound(), t - 2, 300)
            .unwrap();
        assert_eq!(
            iss.verify(&late, t + 2).unwrap_err(),
            TokenError::UnknownKey
        );
        assert!(TokenIssuer::previous_key_verifies(t, t + 899));
        assert!(!TokenIssuer::previous_key_verifies(t, t + 900));
    }

    #[test]
    fn an_announced_key_verifies_before_it_signs_and_installs_while_serving() {
        let t = now();
        let url = issuer().issuer().to_string();
        let kids = |iss: &TokenIssuer| -> Vec<String> {
            iss.jwks()["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect()
        };
        // Two replicas on key 1; a rotation announces key 2.
        let a = TokenIssuer::new(Ed25519Key::from_seed(&[1; 32]), &url).unwrap();
        let b = TokenIssuer::new(Ed25519Key::from_seed(&[1; 32]), &url).unwrap();
        let (one, two) = (
            Ed25519Key::from_seed(&[1; 32]),
            Ed25519Key::from_seed(&[2; 32]),
        );
        for iss in [&a, &b] {
            iss.install(Ed25519Key::from_seed(&[1; 32]), &[], Some(&two))
                .unwrap();
            assert_eq!(iss.kid(), one.kid());
            assert_eq!(iss.next_kid(), Some(two.kid()));
            assert_eq!(kids(iss), [one.kid(), two.kid()]);
        }
        let (before, _) = a
            .issue("bot", "spiffe://t/agent/bot", bound(), t - 10, 300)
            .unwrap();
        // A activates key 2 first: B, still signing with key 1, accepts
        // what A signs with it, and A what B signs with key 1.
        a.install(Ed25519Key::from_seed(&[2; 32]), &[(one, t - 5)], None)
            .unwrap();
        assert_eq!(a.kid(), two.kid());
        assert_eq!(a.next_kid(), None);
        let (after, _) = a
            .issue("bot", "spiffe://t/agent/bot", bound(), t - 2, 300)
            .unwrap();
        assert!(b.names_own_key(&after));
        b.verify(&after, t).unwrap();
        a.verify(&before, t).unwrap();
        assert_eq!(kids(&a), [two.kid(), Ed25519Key::from_seed(&[1; 32]).kid()]);
        // Key 1 retired at t - 5 on A: it minted nothing after that.
        let (late, _) = b
            .issue("bot", "spiffe://t/agent/bot", bound(), t - 2, 300)
            .unwrap();
        assert_eq!(a.verify(&late, t).unwrap_err(), TokenError::UnknownKey);
        // A key neither current, announced nor retired is unknown.
        let stranger = TokenIssuer::new(Ed25519Key::from_seed(&[3; 32]), &url).unwrap();
        let (foreign, _) = stranger
            .issue("bot", "spiffe://t/agent/bot", bound(), t - 2, 300)
            .unwrap();
        assert!(!a.names_own_key(&foreign));
        assert_eq!(a.verify(&foreign, t).unwrap_err(), TokenError::UnknownKey);
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
            &EncodingKey::from_secret(&iss.keys.load().key.public_x()),
        )
        .unwrap();
        assert_eq!(iss.verify(&hs, t).unwrap_err(), TokenError::Algorithm);
        // Wrong audience and issuer.
        let wrong = TokenIssuer::new(
            Ed25519Key::from_seed(&iss.keys.load().key.key.to_bytes()),
            "https://x",
        )
        .unwrap();
        let (w, _) = wrong.issue("bot", "s", bound(), t, 300).unwrap();
        assert_eq!(iss.verify(&w, t).unwrap_err(), TokenError::Issuer);
        let mut c = claims.clone();
        c.aud = "https://elsewhere".into();
        let header = Header {
            kid: Some(iss.kid()),
            ..Header::new(Algorithm::EdDSA)
        };
        let other_aud = iss.keys.load().key.sign(&header, &c).unwrap();
        assert_eq!(iss.verify(&other_aud, t).unwrap_err(), TokenError::Audience);
        // A resource's token: accepted for that resource only, and it may be
        // unbound only there.
        let user = DelegatedUser {
            sub: "alice".into(),
            iss: iss.issuer().into(),
            groups: vec![],
            mfa: true,
        };
        let resource = format!("{}/mcp/notes", iss.issuer());
        let grant = AuthorizedGrant {
            agent: "hosts",
            agent_spiffe_id: "spiffe://t/agent/hosts",
            client_id: "c1",
            user: &user,
            resource: &resource,
        };
        let (bearer, claims) = iss
            .issue_authorized(&grant, Confirmation::default(), t, 300)
            .unwrap();
        assert_eq!(claims.oauth_client(), Some("c1"));
        assert_eq!(claims.delegated_user().unwrap().sub, "alice");
        assert!(iss.verify_for(&bearer, t, Some(&resource)).is_ok());
        assert_eq!(iss.verify(&bearer, t).unwrap_err(), TokenError::Audience);
        let elsewhere = format!("{}/mcp/other", iss.issuer());
        assert_eq!(
            iss.verify_for(&bearer, t, Some(&elsewhere)).unwrap_err(),
            TokenError::Audience
        );
        // A resource outside the gateway is never an audience.
        let outside = AuthorizedGrant {
            resource: "https://evil.example/mcp",
            ..grant
        };
        assert!(
            iss.issue_authorized(&outside, Confirmation::default(), t, 300)
                .is_err()
        );
        // An unbound token with the gateway's audience is refused anywhere.
        let mut c = claims.clone();
        c.aud = iss.issuer().into();
        let unbound = iss.keys.load().key.sign(&header, &c).unwrap();
        assert_eq!(
            iss.verify_for(&unbound, t, Some(&resource)).unwrap_err(),
            TokenError::Claim("cnf")
        );
        // Not yet valid.
        let mut c = claims.clone();
        c.nbf = t + 100;
        c.iat = t + 100;
        c.exp = t + 200;
        let early = iss.keys.load().key.sign(&header, &c).unwrap();
        assert_eq!(iss.verify(&early, t).unwrap_err(), TokenError::NotYetValid);
    }
}
