//! The token endpoint's grants of the authorization-code flow: `authorization_code`
//! (RFC 6749 §4.1.3 with PKCE, RFC 7636) and `refresh_token` (RFC 6749 §6,
//! rotating, single use). Public clients: the client proves nothing but the
//! code's verifier (or the refresh token), so every check is on those.
//!
//! Order of checks: the client, the code or refresh token (spent as it is
//! read, so a replay is always seen as one), then the verifier, redirect URI
//! and resource, the principal agent and the user, then the DPoP proof's
//! `jti`. A code or refresh token presented twice revokes what its first use
//! issued: the refresh family and its access tokens (the revocation lists
//! are reloaded before the answer, so they stop working at once).

use http::{Response, StatusCode};
use portcullis_audit::Outcome;
use portcullis_core::{AgentName, ErrorCode};
use portcullis_identity::{AuthorizedGrant, Confirmation, DelegatedUser, SpiffeId};
use portcullis_store::{RefreshOutcome, RefreshTokenRow};
use serde::Deserialize;

use super::{
    AuthorizationServer, LoginUser, Redeemed, configured, pkce_matches, random_token, sha256_hex,
};
use crate::body::Recorder;
use crate::directory::AgentDirectory;
use crate::oauth::{json_response, spend_proof, token_request_proof, with_next_nonce};
use crate::respond::{Denial, ResponseBody};
use crate::state::Gateway;

/// The form of both grants (what each needs is checked by grant).
#[derive(Debug, Deserialize)]
struct GrantForm {
    grant_type: String,
    client_id: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    resource: Option<String>,
}

fn grant_error(message: impl Into<String>) -> Denial {
    Denial::new(ErrorCode::InvalidGrant, message)
}

fn store_error(e: portcullis_store::StoreError) -> Denial {
    tracing::error!(error = %e, "OAuth grant: store unavailable");
    Denial::new(
        ErrorCode::Unavailable,
        "the grant cannot be checked now; retry shortly",
    )
}

/// What a grant yields, ready to issue.
struct Grant {
    client_id: String,
    user: LoginUser,
    resource: String,
    scope: String,
    family: String,
    /// When the refresh family ends.
    family_expires_at: i64,
    /// The DPoP key the family is bound to (refresh), if any.
    family_jkt: Option<String>,
}

/// Serves `grant_type=authorization_code` or `refresh_token`.
pub(crate) async fn token(
    gateway: &Gateway,
    directory: &AgentDirectory,
    proof: Option<&str>,
    body: &[u8],
    now: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    let server = configured(gateway)?;
    let form: GrantForm = serde_urlencoded::from_bytes(body).map_err(|_| {
        Denial::new(
            ErrorCode::BadRequest,
            "the token request is not a valid form",
        )
    })?;
    let client_id = form.client_id.clone().unwrap_or_default();
    recorder.record().credential = Some(format!("client={client_id} grant={}", form.grant_type));
    let client = super::live_client(gateway, server, &client_id, now).await?;
    let grant = if form.grant_type == "authorization_code" {
        code_grant(gateway, server, &form, &client.client_id, now).await?
    } else {
        refresh_grant(gateway, &form, &client.client_id, now).await?
    };
    // The resource, when named again, must be the grant's (RFC 8707 §2.2).
    if form
        .resource
        .as_deref()
        .is_some_and(|r| r != grant.resource)
    {
        return Err(Denial::new(
            ErrorCode::InvalidTarget,
            "`resource` is not the resource this grant is for",
        ));
    }
    // The resource is still a route (a reload may have removed it).
    super::route_resource(gateway, &grant.resource)?;
    // The binding: the proof's key, which a refresh must keep.
    let proof = proof
        .map(|p| token_request_proof(&gateway.tokens, p, now))
        .transpose()?;
    let jkt = proof.as_ref().map(|(jkt, _)| jkt.clone());
    if grant.family_jkt.is_some() && grant.family_jkt != jkt {
        return Err(Denial::new(
            ErrorCode::InvalidDpopProof,
            "this refresh token is bound to a DPoP key: sign the request's proof with it",
        ));
    }
    if gateway.tokens.revocations.user_disabled(&grant.user.name) {
        return Err(grant_error(format!(
            "user `{}` is disabled",
            grant.user.name
        )));
    }
    let agent = &server.config.agent;
    check_agent(directory, agent)?;
    if let Some((_, (key, until))) = &proof {
        spend_proof(&gateway.tokens, key, *until, now).await?;
    }
    // The refresh tokens about to be stored name the client.
    super::remember_client(gateway, &client).await?;
    issue(gateway, agent, grant, jkt, now, recorder).await
}

/// The principal agent must be live: a revoked agent's flow issues nothing.
fn check_agent(directory: &AgentDirectory, agent: &AgentName) -> Result<(), Denial> {
    directory
        .check_agent(agent.as_str())
        .map(|_| ())
        .map_err(|_| {
            Denial::new(
                ErrorCode::AgentRevoked,
                "the agent of `[identity.authorization]` is not registered or was revoked",
            )
        })
}

async fn code_grant(
    gateway: &Gateway,
    server: &AuthorizationServer,
    form: &GrantForm,
    client_id: &str,
    now: i64,
) -> Result<Grant, Denial> {
    let code = form.code.as_deref().unwrap_or_default();
    let issued = match server.redeem(&gateway.store, code, now).await? {
        Redeemed::Fresh(issued, family) => (issued, family),
        Redeemed::Reused(family) => {
            revoke_family(gateway, &family, now).await?;
            return Err(grant_error(
                "the authorization code was already used: what it issued is revoked",
            ));
        }
        Redeemed::Unknown => {
            return Err(grant_error("the authorization code is unknown or expired"));
        }
    };
    let (code, family) = issued;
    let request = &code.request;
    if request.client_id != client_id {
        return Err(grant_error(
            "the authorization code was issued to another client",
        ));
    }
    if form.redirect_uri.as_deref() != Some(request.redirect_uri.as_str()) {
        return Err(grant_error(
            "`redirect_uri` must be the one of the authorization request",
        ));
    }
    if !form
        .code_verifier
        .as_deref()
        .is_some_and(|v| pkce_matches(v, &request.code_challenge))
    {
        return Err(grant_error(
            "the PKCE `code_verifier` does not match the challenge",
        ));
    }
    Ok(Grant {
        client_id: client_id.to_string(),
        user: code.user.clone(),
        resource: request.resource.clone(),
        scope: request.scope.clone(),
        family,
        family_expires_at: now + server.config.refresh_ttl as i64,
        family_jkt: None,
    })
}

async fn refresh_grant(
    gateway: &Gateway,
    form: &GrantForm,
    client_id: &str,
    now: i64,
) -> Result<Grant, Denial> {
    let presented = form.refresh_token.as_deref().unwrap_or_default();
    let row = match gateway
        .store
        .use_refresh_token(&sha256_hex(presented), now)
        .await
        .map_err(store_error)?
    {
        RefreshOutcome::Fresh(row) => *row,
        RefreshOutcome::Reused { family, .. } => {
            // The store revoked the family; the lists follow before the answer.
            tracing::warn!(family, "refresh token reused: its family is revoked");
            reload_revocations(gateway).await?;
            return Err(grant_error(
                "the refresh token was already used: every token of its family is revoked",
            ));
        }
        RefreshOutcome::Invalid => {
            return Err(grant_error(
                "the refresh token is unknown, expired or revoked",
            ));
        }
    };
    if row.client_id != client_id {
        return Err(grant_error(
            "the refresh token was issued to another client",
        ));
    }
    Ok(Grant {
        client_id: row.client_id,
        user: LoginUser {
            name: row.user_name,
            issuer: row.user_issuer,
            groups: row.user_groups,
            mfa: row.mfa,
        },
        resource: row.resource,
        scope: row.scope,
        family: row.family,
        family_expires_at: row.expires_at,
        family_jkt: row.jkt,
    })
}

async fn revoke_family(gateway: &Gateway, family: &str, now: i64) -> Result<(), Denial> {
    gateway
        .store
        .revoke_refresh_family(family, now, "authorization code reused")
        .await
        .map_err(store_error)?;
    tracing::warn!(
        family,
        "authorization code reused: what it issued is revoked"
    );
    reload_revocations(gateway).await
}

async fn reload_revocations(gateway: &Gateway) -> Result<(), Denial> {
    gateway.reload_revocations().await.map_err(|e| {
        tracing::error!(error = %e, "cannot reload the revocation lists");
        Denial::new(ErrorCode::Unavailable, "retry shortly")
    })
}

/// Issues the access token and the next refresh token of the family.
async fn issue(
    gateway: &Gateway,
    agent: &AgentName,
    grant: Grant,
    jkt: Option<String>,
    now: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    let tokens = &gateway.tokens;
    let user = DelegatedUser {
        sub: grant.user.name.clone(),
        // Local users are the gateway's own; federated ones their issuer's.
        iss: grant
            .user
            .issuer
            .clone()
            .unwrap_or_else(|| tokens.issuer_url().to_string()),
        groups: grant.user.groups.clone(),
        mfa: grant.user.mfa,
    };
    let spiffe = SpiffeId::for_agent(&tokens.trust_domain, agent).to_string();
    let cnf = Confirmation {
        jkt: jkt.clone(),
        x5t_s256: None,
    };
    let (access, claims) = tokens
        .issuer
        .issue_authorized(
            &AuthorizedGrant {
                agent: agent.as_str(),
                agent_spiffe_id: &spiffe,
                client_id: &grant.client_id,
                user: &user,
                resource: &grant.resource,
            },
            cnf,
            now,
            tokens.ttl,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot sign an access token");
            Denial::new(ErrorCode::Internal, "internal error")
        })?;
    let refresh = random_token();
    let refresh_ttl = grant.family_expires_at - now;
    if refresh_ttl > 0 {
        gateway
            .store
            .add_refresh_token(&RefreshTokenRow {
                token_hash: sha256_hex(&refresh),
                family: grant.family.clone(),
                client_id: grant.client_id.clone(),
                user_name: grant.user.name.clone(),
                user_issuer: grant.user.issuer.clone(),
                user_groups: grant.user.groups.clone(),
                resource: grant.resource.clone(),
                scope: grant.scope.clone(),
                jkt: jkt.clone(),
                mfa: grant.user.mfa,
                created_at: now,
                expires_at: grant.family_expires_at,
                access_jti: claims.jti.clone(),
                access_exp: claims.exp,
            })
            .await
            .map_err(store_error)?;
    }
    let token_type = if jkt.is_some() { "DPoP" } else { "Bearer" };
    {
        let record = recorder.record();
        record.outcome = Outcome::Allow;
        record.principal = Some(agent.to_string());
        record.credential = Some(format!(
            "client={} user={} issued token jti={} cnf={} resource={} refresh family={}",
            grant.client_id,
            grant.user.name,
            claims.jti,
            if jkt.is_some() { "dpop" } else { "none" },
            grant.resource,
            grant.family,
        ));
    }
    let mut answer = serde_json::json!({
        "access_token": access,
        "token_type": token_type,
        "expires_in": claims.exp - claims.iat,
        "scope": grant.scope,
    });
    if refresh_ttl > 0 {
        answer["refresh_token"] = refresh.into();
    }
    let response = json_response(StatusCode::OK, &answer, "no-store");
    Ok(if jkt.is_some() {
        with_next_nonce(tokens, response, now)
    } else {
        response
    })
}
