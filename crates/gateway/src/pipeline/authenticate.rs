//! Authenticate: who is calling. The connection's client certificate (checked
//! once per connection against the Portcullis CA) must still be within its
//! validity, and its agent and serial must be live in the current directory, so a
//! revocation takes effect on the very next request, even on a kept-alive connection.
//!
//! Agents that cannot do mTLS present an access token from `POST /oauth2/token`
//! instead: `Authorization: DPoP <token>` with a `DPoP` proof signed by the key
//! the token is bound to (`cnf.jkt`), or `Authorization: Bearer <token>` on a
//! connection presenting the client certificate it is bound to (`cnf.x5t#S256`).
//! Every token is bound, so a stolen token alone authenticates nobody. The agent
//! is checked against the live directory exactly as for certificates. On a
//! connection with a verified client certificate, a `Bearer` value that does not
//! name the gateway's token key is the agent's own (it never reaches the
//! upstream) and the certificate authenticates, as before tokens existed.
//!
//! A token of the authorization-code flow (MCP authorization) names one
//! route as its audience (RFC 8707): it is accepted only on that route, and
//! may be an unbound `Bearer` token (`context.auth.binding == "bearer"`).

use http::header;
use portcullis_core::ErrorCode;
use portcullis_identity::{CertRejection, DPOP_WINDOW, DelegatedUser, PeerCertificate};
use portcullis_policy::{AuthFacts, AuthMethod, CallerFacts, Delegation, Posture};

use crate::directory::{AgentDirectory, DirectoryRefusal};
use crate::respond::Denial;
use crate::tokens::{ClaimRefusal, TokenService, peer_x5t};
use portcullis_store::SingleUseKind;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Agent name (the Cedar principal id).
    pub agent: String,
    /// The SPIFFE ID of the certificate.
    pub spiffe_id: String,
    /// The certificate serial (empty when authenticated by token).
    pub serial: String,
    /// `sha256:<hex>` of the certificate that authenticated the request
    /// (`None` when authenticated by token), for `X-Forwarded-Client-Cert`.
    pub certificate: Option<String>,
    /// The access token's `jti` (empty when authenticated by certificate).
    pub jti: String,
    /// How the caller authenticated, for the audit record (`credential`).
    pub credential: String,
    /// What policy sees of the caller besides its name (`context.auth`,
    /// `delegation`, `posture`, `risk`).
    pub caller: CallerFacts,
    /// The user a delegated token acts for: policy must allow them too.
    pub delegated: Option<DelegatedUser>,
    /// When the credential expires (certificate `notAfter` or token `exp`).
    pub expires_at: i64,
}

/// A refusal, with what the client presented for the audit record.
#[derive(Debug)]
pub struct AuthnFailure {
    /// The response to give.
    pub denial: Denial,
    /// A description of the presented credential, if there was one.
    pub presented: Option<String>,
}

/// Runs the stage. `peer` is the per-connection certificate check (`None` when
/// no certificate was presented).
pub fn run(
    directory: &AgentDirectory,
    peer: Option<&Result<PeerCertificate, CertRejection>>,
    now_epoch: i64,
) -> Result<Identity, AuthnFailure> {
    let peer = match peer {
        None => {
            return Err(AuthnFailure {
                denial: Denial::new(
                    ErrorCode::Unauthenticated,
                    "a client certificate issued by Portcullis is required",
                ),
                presented: None,
            });
        }
        Some(Err(rejection)) => {
            return Err(AuthnFailure {
                denial: Denial::new(ErrorCode::InvalidCredential, rejection.reason.clone()),
                presented: Some(rejection.presented.clone()),
            });
        }
        Some(Ok(peer)) => peer,
    };
    let presented = || {
        Some(format!(
            "{} serial={} {}",
            peer.spiffe_id, peer.serial, peer.fingerprint
        ))
    };
    if peer.not_after <= now_epoch {
        return Err(AuthnFailure {
            denial: Denial::new(ErrorCode::InvalidCredential, "certificate expired"),
            presented: presented(),
        });
    }
    match directory.check(peer.agent.as_str(), &peer.serial) {
        Ok(_) => Ok(Identity {
            agent: peer.agent.to_string(),
            spiffe_id: peer.spiffe_id.clone(),
            serial: peer.serial.clone(),
            certificate: Some(peer.fingerprint.clone()),
            jti: String::new(),
            credential: format!("{} serial={}", peer.spiffe_id, peer.serial),
            caller: CallerFacts::mtls(),
            delegated: None,
            expires_at: peer.not_after,
        }),
        Err(refusal) => Err(AuthnFailure {
            denial: Denial::new(ErrorCode::AgentRevoked, refusal_message(refusal)),
            presented: presented(),
        }),
    }
}

fn refusal_message(refusal: DirectoryRefusal) -> &'static str {
    match refusal {
        DirectoryRefusal::UnknownAgent => "the agent is not registered",
        DirectoryRefusal::AgentRevoked => "the agent has been revoked",
        DirectoryRefusal::CertificateRevoked => "the certificate has been revoked or is unknown",
    }
}

/// Runs the stage for a request: an access token when the request carries
/// `Authorization: DPoP …` or `Authorization: Bearer …`, else the client
/// certificate.
pub async fn run_request(
    directory: &AgentDirectory,
    tokens: &TokenService,
    routes: &crate::route::RouteTable,
    peer: Option<&Result<PeerCertificate, CertRejection>>,
    parts: &http::request::Parts,
    source_ip: std::net::IpAddr,
    now_epoch: i64,
) -> Result<Identity, AuthnFailure> {
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '));
    match authorization {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("dpop") => {
            token_identity(
                directory,
                tokens,
                peer,
                parts,
                source_ip,
                Presented {
                    token: token.trim(),
                    scheme: TokenScheme::Dpop,
                    routes,
                },
                now_epoch,
            )
            .await
        }
        // A certificate-authenticated agent may still send its own bearer
        // value (stripped before forwarding, as always): only a token naming
        // the gateway's key is checked as one, so it cannot be ignored.
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer")
                && (!matches!(peer, Some(Ok(_))) || tokens.issuer.names_own_key(token.trim())) =>
        {
            token_identity(
                directory,
                tokens,
                peer,
                parts,
                source_ip,
                Presented {
                    token: token.trim(),
                    scheme: TokenScheme::Bearer,
                    routes,
                },
                now_epoch,
            )
            .await
        }
        _ => run(directory, peer, now_epoch),
    }
}

/// How an access token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenScheme {
    /// `Authorization: DPoP …` with a proof of the bound key.
    Dpop,
    /// `Authorization: Bearer …` (certificate-bound tokens).
    Bearer,
}

/// The token a request presented, and how.
struct Presented<'a> {
    token: &'a str,
    scheme: TokenScheme,
    /// The routes, for the resource (audience) a token may name: the URL of
    /// the route the request is for.
    routes: &'a crate::route::RouteTable,
}

async fn token_identity(
    directory: &AgentDirectory,
    tokens: &TokenService,
    peer: Option<&Result<PeerCertificate, CertRejection>>,
    parts: &http::request::Parts,
    source_ip: std::net::IpAddr,
    presented: Presented<'_>,
    now: i64,
) -> Result<Identity, AuthnFailure> {
    let Presented {
        token,
        scheme,
        routes,
    } = presented;
    let dpop = scheme == TokenScheme::Dpop;
    let scheme = if dpop { "dpop" } else { "bearer" };
    let fail = |code: ErrorCode, message: String, presented: String| AuthnFailure {
        denial: Denial::new(code, message),
        presented: Some(presented),
    };
    // The one resource a token of the authorization-code flow may name here.
    let resource = routes
        .lookup(parts.uri.path())
        .map(|(route, _)| format!("{}{}", tokens.issuer_url(), route.path_prefix));
    let claims = tokens
        .issuer
        .verify_for(token, now, resource.as_deref())
        .map_err(|e| {
            fail(
                ErrorCode::InvalidToken,
                format!("access token refused: {e}"),
                format!("token ({scheme}, refused)"),
            )
        })?;
    // Revocation is checked on every request, so it applies at once.
    if tokens.revocations.token_revoked(&claims.jti) {
        return Err(fail(
            ErrorCode::InvalidToken,
            "access token refused: it was revoked".into(),
            format!("token ({scheme}, revoked) jti={}", claims.jti),
        ));
    }
    let delegated = claims.delegated_user();
    if let Some(user) = &delegated
        && tokens.revocations.user_disabled(&user.sub)
    {
        return Err(fail(
            ErrorCode::InvalidToken,
            format!("access token refused: user `{}` is disabled", user.sub),
            format!("token ({scheme}, disabled user) jti={}", claims.jti),
        ));
    }
    let presented = |cnf: &str| match &claims.act {
        Some(act) => format!(
            "{} token jti={} cnf={cnf} on behalf of {}",
            act.sub, claims.jti, claims.sub
        ),
        None => format!("{} token jti={} cnf={cnf}", claims.sub, claims.jti),
    };
    let unbound = claims.cnf.jkt.is_none() && claims.cnf.x5t_s256.is_none();
    let cnf = if dpop {
        let Some(jkt) = claims.cnf.jkt.as_deref() else {
            return Err(fail(
                ErrorCode::InvalidToken,
                "the token is bound to a client certificate: send it as `Authorization: Bearer` on that certificate's connection".into(),
                presented("x5t#S256"),
            ));
        };
        let mut proofs = parts.headers.get_all("dpop").iter();
        let proof = match (proofs.next(), proofs.next()) {
            (Some(p), None) => p.to_str().unwrap_or_default(),
            _ => {
                return Err(fail(
                    ErrorCode::InvalidDpopProof,
                    "exactly one `DPoP` proof header is required with a DPoP token".into(),
                    presented("dpop"),
                ));
            }
        };
        let htu = format!("{}{}", tokens.issuer_url(), parts.uri.path());
        let proof = portcullis_identity::verify_dpop_proof(
            proof,
            parts.method.as_str(),
            &htu,
            Some(token),
            now,
        )
        .map_err(|e| {
            fail(
                ErrorCode::InvalidDpopProof,
                format!("DPoP proof refused: {e}"),
                presented("dpop"),
            )
        })?;
        if proof.jkt != jkt {
            return Err(fail(
                ErrorCode::InvalidDpopProof,
                "the DPoP proof is signed by a key the token is not bound to".into(),
                presented("dpop"),
            ));
        }
        tokens
            .check_dpop_nonce(proof.claims.nonce.as_deref(), now)
            .map_err(|m| fail(ErrorCode::UseDpopNonce, m.into(), presented("dpop")))?;
        // Checked last, so a refused proof does not use up its `jti`.
        let key = format!("{}:{}", proof.jkt, proof.claims.jti);
        match tokens
            .claim(
                SingleUseKind::DpopProof,
                &key,
                proof.claims.iat + DPOP_WINDOW,
                now,
            )
            .await
        {
            Ok(()) => {}
            Err(ClaimRefusal::Replayed) => {
                return Err(fail(
                    ErrorCode::InvalidDpopProof,
                    "DPoP proof replayed: its `jti` was already used".into(),
                    presented("dpop"),
                ));
            }
            Err(ClaimRefusal::Full) => {
                return Err(fail(
                    ErrorCode::Unavailable,
                    "too many DPoP proofs in flight; retry shortly".into(),
                    presented("dpop"),
                ));
            }
            Err(ClaimRefusal::StoreUnavailable) => {
                return Err(fail(
                    ErrorCode::Unavailable,
                    "the shared store cannot confirm the DPoP proof is unused; retry shortly"
                        .into(),
                    presented("dpop"),
                ));
            }
        }
        "dpop"
    } else if unbound {
        // Only a resource's token verifies unbound (`verify_for`): a bearer
        // token of the authorization-code flow, good on this route only.
        "none"
    } else {
        let Some(x5t) = claims.cnf.x5t_s256.as_deref() else {
            return Err(fail(
                ErrorCode::InvalidToken,
                "the token is DPoP-bound: send it as `Authorization: DPoP` with a `DPoP` proof"
                    .into(),
                presented("dpop"),
            ));
        };
        let peer = match peer {
            Some(Ok(peer)) if peer_x5t(peer).as_deref() == Some(x5t) => peer,
            _ => {
                return Err(fail(
                    ErrorCode::InvalidToken,
                    "the token is bound to a client certificate this connection did not present"
                        .into(),
                    presented("x5t#S256"),
                ));
            }
        };
        if peer.not_after <= now {
            return Err(fail(
                ErrorCode::InvalidCredential,
                "certificate expired".into(),
                presented("x5t#S256"),
            ));
        }
        if let Err(refusal) = directory.check(peer.agent.as_str(), &peer.serial) {
            return Err(fail(
                ErrorCode::AgentRevoked,
                refusal_message(refusal).into(),
                presented("x5t#S256"),
            ));
        }
        "x5t#S256"
    };
    // As for certificates: the live directory decides, so a revoked agent's
    // unexpired token stops working on its next request.
    let entry = directory.check_agent(&claims.client_id).map_err(|r| {
        fail(
            ErrorCode::AgentRevoked,
            refusal_message(r).into(),
            presented(cnf),
        )
    })?;
    // The pin is read now, not when the token was issued: re-pinning or a
    // move to another network shows on the next request.
    let posture = match &claims.posture_digest {
        Some(digest) => Posture {
            attested: true,
            digest: digest.clone(),
            matches_pin: entry
                .pin
                .as_ref()
                .is_some_and(|pin| pin.digest == *digest && pin.allows(source_ip)),
        },
        None => Posture::default(),
    };
    Ok(Identity {
        agent: claims.client_id.clone(),
        credential: presented(cnf),
        caller: CallerFacts {
            auth: AuthFacts {
                method: match cnf {
                    "dpop" => AuthMethod::DpopToken,
                    "none" => AuthMethod::Bearer,
                    _ => AuthMethod::MtlsToken,
                },
                mfa: delegated.as_ref().is_some_and(|u| u.mfa),
                token_age_secs: (now - claims.iat).max(0),
            },
            delegation: claims
                .act
                .as_ref()
                .zip(delegated.as_ref())
                .map(|(act, user)| {
                    let chain: Vec<String> = act
                        .chain()
                        .iter()
                        .map(|id| id.rsplit('/').next().unwrap_or(id).to_string())
                        .collect();
                    Delegation {
                        user: user.sub.clone(),
                        depth: chain.len() as i64,
                        chain,
                    }
                }),
            posture,
            ..CallerFacts::mtls()
        },
        spiffe_id: claims.agent_spiffe_id().to_string(),
        delegated,
        expires_at: claims.exp,
        serial: String::new(),
        certificate: None,
        jti: claims.jti.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AgentName;
    use portcullis_store::{AgentRow, CertificateRow};

    fn peer(not_after: i64) -> PeerCertificate {
        PeerCertificate {
            agent: AgentName::parse("bot").unwrap(),
            spiffe_id: "spiffe://t/agent/bot".into(),
            serial: "01".into(),
            not_after,
            fingerprint: "sha256:00".into(),
        }
    }

    fn directory(agent_revoked: bool) -> AgentDirectory {
        AgentDirectory::new(
            &[AgentRow {
                name: "bot".into(),
                roles: vec![],
                created_at: 0,
                revoked_at: agent_revoked.then_some(1),
            }],
            &[CertificateRow {
                serial: "01".into(),
                agent: "bot".into(),
                spiffe_id: String::new(),
                issued_at: 0,
                not_after: 100,
                revoked_at: None,
            }],
        )
    }

    fn code(r: Result<Identity, AuthnFailure>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(f) => f.denial.code.as_str(),
        }
    }

    #[test]
    fn outcomes() {
        let live = directory(false);
        assert_eq!(code(run(&live, Some(&Ok(peer(100))), 50)), "ok");
        assert_eq!(code(run(&live, None, 50)), "unauthenticated");
        assert_eq!(
            code(run(&live, Some(&Ok(peer(100))), 100)),
            "invalid_credential"
        );
        let rejected = Err(CertRejection {
            reason: "x".into(),
            presented: "y".into(),
        });
        assert_eq!(code(run(&live, Some(&rejected), 50)), "invalid_credential");
        assert_eq!(
            code(run(&directory(true), Some(&Ok(peer(100))), 50)),
            "agent_revoked"
        );
        let mut other_serial = peer(100);
        other_serial.serial = "02".into();
        assert_eq!(
            code(run(&live, Some(&Ok(other_serial)), 50)),
            "agent_revoked"
        );
    }
}
