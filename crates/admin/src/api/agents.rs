//! The agent endpoints under `/admin/v1/agents`: create (certificate and,
//! optionally, a signing key), list, show, revoke, renew the certificate and
//! register another signing key.

use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use portcullis_audit::Outcome;
use portcullis_core::{AgentName, ErrorCode};
use portcullis_store::{AgentRow, CertificateRow};
use serde::{Deserialize, Serialize};

use super::AdminState;
use super::call::{ApiError, Call, json, now_ms, parse_json};

/// Default lifetime of agent certificates: 24 hours.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// `POST /admin/v1/agents` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAgent {
    name: String,
    roles: Vec<String>,
    /// PEM certificate signing request; the private key stays with the caller.
    csr_pem: String,
    ttl_seconds: Option<u64>,
    /// The agent's public Ed25519 JWK, for the token endpoint (`private_key_jwt`).
    jwk: Option<serde_json::Value>,
}

/// `POST /admin/v1/agents/{name}/keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddKey {
    jwk: serde_json::Value,
}

/// `POST /admin/v1/agents/{name}/certificates` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewAgent {
    csr_pem: String,
    ttl_seconds: Option<u64>,
}

#[derive(Debug, Serialize)]
struct AgentView {
    name: String,
    roles: Vec<String>,
    spiffe_id: String,
    created_at: i64,
    revoked_at: Option<i64>,
    status: &'static str,
    certificates: Vec<CertificateView>,
    /// `kid`s of the agent's registered signing keys (token endpoint).
    signing_keys: Vec<String>,
    /// How it can authenticate now: `mtls` (a live certificate), `token` (a
    /// registered signing key for the token endpoint).
    credential_kinds: Vec<&'static str>,
    /// When its newest live certificate expires (epoch seconds), if any.
    expires_at: Option<i64>,
    /// When it last authenticated (epoch seconds), if seen.
    last_seen: Option<i64>,
}

#[derive(Debug, Serialize)]
struct CertificateView {
    serial: String,
    issued_at: i64,
    not_after: i64,
    revoked_at: Option<i64>,
}

#[derive(Debug, Serialize)]
struct IssuedView {
    agent: AgentView,
    certificate_pem: String,
    ca_pem: String,
}

/// The `kid`s of an agent's registered signing keys.
async fn key_ids(state: &AdminState, call: &Call, agent: &str) -> Result<Vec<String>, ApiError> {
    Ok(state
        .store
        .agent_keys(Some(agent))
        .await
        .map_err(|e| call.store_error(e))?
        .into_iter()
        .map(|k| k.kid)
        .collect())
}

fn view(
    state: &AdminState,
    agent: AgentRow,
    certs: Vec<CertificateRow>,
    signing_keys: Vec<String>,
) -> AgentView {
    let spiffe_id = AgentName::parse(&agent.name)
        .map(|n| portcullis_identity::SpiffeId::for_agent(state.ca.trust_domain(), &n).to_string())
        .unwrap_or_default();
    let now = now_ms() / 1000;
    let expires_at = certs
        .iter()
        .filter(|c| c.revoked_at.is_none() && c.not_after > now)
        .map(|c| c.not_after)
        .max();
    let revoked = agent.revoked_at.is_some();
    let mut credential_kinds = Vec::new();
    if !revoked && expires_at.is_some() {
        credential_kinds.push("mtls");
    }
    if !revoked && !signing_keys.is_empty() {
        credential_kinds.push("token");
    }
    let last_seen = Some(state.gateway.last_seen(&agent.name)).filter(|t| *t > 0);
    let quarantined = state
        .gateway
        .analytics()
        .is_some_and(|a| a.quarantined(&agent.name));
    AgentView {
        credential_kinds,
        expires_at,
        last_seen,
        status: if revoked {
            "revoked"
        } else if quarantined {
            // Its credentials are live, but every request is refused until
            // a human releases it (`agent release`).
            "quarantined"
        } else if expires_at.is_none() && signing_keys.is_empty() {
            "expired"
        } else {
            "active"
        },
        name: agent.name,
        roles: agent.roles,
        spiffe_id,
        created_at: agent.created_at,
        revoked_at: agent.revoked_at,
        certificates: certs
            .into_iter()
            .map(|c| CertificateView {
                serial: c.serial,
                issued_at: c.issued_at,
                not_after: c.not_after,
                revoked_at: c.revoked_at,
            })
            .collect(),
        signing_keys,
    }
}

fn ttl(call: &Call, seconds: Option<u64>) -> Result<Duration, ApiError> {
    let ttl = seconds.map_or(DEFAULT_CERT_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl > portcullis_identity::MAX_AGENT_TTL {
        return Err(call.error(
            ErrorCode::BadRequest,
            format!(
                "ttl_seconds must be between 1 and {}",
                portcullis_identity::MAX_AGENT_TTL.as_secs()
            ),
        ));
    }
    Ok(ttl)
}

fn issue(
    state: &AdminState,
    call: &Call,
    name: &AgentName,
    csr_pem: &str,
    ttl: Duration,
) -> Result<(String, CertificateRow), ApiError> {
    let issued = state
        .ca
        .issue_agent(name, csr_pem, ttl)
        .map_err(|e| match e {
            portcullis_identity::CaError::InvalidCsr(m) => {
                call.error(ErrorCode::BadRequest, format!("invalid csr_pem: {m}"))
            }
            portcullis_identity::CaError::InvalidTtl(m) => call.error(ErrorCode::BadRequest, m),
            other => call.internal(other),
        })?;
    let row = CertificateRow {
        serial: issued.serial,
        agent: name.to_string(),
        spiffe_id: issued.spiffe_id,
        issued_at: now_ms() / 1000,
        not_after: issued.not_after,
        revoked_at: None,
    };
    Ok((issued.pem, row))
}

async fn refresh(state: &AdminState, call: &Call) -> Result<(), ApiError> {
    state
        .gateway
        .reload()
        .await
        .map_err(|e| call.reload_error(e))
}

pub(super) async fn create_agent(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateAgent = parse_json(&call, &body)?;
    let name = AgentName::parse(&req.name)
        .map_err(|e| call.error(ErrorCode::BadRequest, e.to_string()))?;
    if req.roles.is_empty() {
        return Err(call.error(ErrorCode::BadRequest, "at least one role is required"));
    }
    for role in &req.roles {
        if !portcullis_core::is_valid_name(role) {
            return Err(call.error(
                ErrorCode::BadRequest,
                format!("invalid role `{role}`: use 1-64 characters of a-z, 0-9, `.`, `_` or `-`"),
            ));
        }
    }
    let ttl = ttl(&call, req.ttl_seconds)?;
    // Checked before anything is stored, so a bad key creates nothing.
    let key = req
        .jwk
        .as_ref()
        .map(|jwk| key_row(&call, name.as_str(), jwk))
        .transpose()?;
    let (pem, cert) = issue(&state, &call, &name, &req.csr_pem, ttl)?;
    let agent = AgentRow {
        name: name.to_string(),
        roles: req.roles,
        created_at: now_ms() / 1000,
        revoked_at: None,
    };
    state
        .store
        .create_agent(&agent, &cert)
        .await
        .map_err(|e| call.store_error(e))?;
    if let Some(key) = &key {
        state
            .store
            .add_agent_key(key)
            .await
            .map_err(|e| call.store_error(e))?;
    }
    let view = view(
        &state,
        agent,
        vec![cert],
        key.map(|k| vec![k.kid]).unwrap_or_default(),
    );
    issued(&state, &call, "agent.create", view, pem).await
}

/// Checks a public JWK and makes its row: only Ed25519 public keys are accepted.
fn key_row(
    call: &Call,
    agent: &str,
    jwk: &serde_json::Value,
) -> Result<portcullis_store::AgentKeyRow, ApiError> {
    let key = portcullis_identity::PublicJwk::from_json(jwk)
        .map_err(|e| call.error(ErrorCode::BadRequest, format!("`jwk`: {e}")))?;
    Ok(portcullis_store::AgentKeyRow {
        kid: key.thumbprint(),
        agent: agent.to_string(),
        jwk: key.to_json().to_string(),
        created_at: now_ms() / 1000,
    })
}

/// `POST /admin/v1/agents/{name}/keys`: registers another public signing key.
pub(super) async fn add_key(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AddKey = parse_json(&call, &body)?;
    let name =
        AgentName::parse(&name).map_err(|e| call.error(ErrorCode::BadRequest, e.to_string()))?;
    let row = key_row(&call, name.as_str(), &req.jwk)?;
    match state.store.agent(name.as_str()).await {
        Ok(Some(agent)) if agent.revoked_at.is_none() => {}
        Ok(_) => return Err(call.error(ErrorCode::NotFound, "no such agent, or it is revoked")),
        Err(e) => return Err(call.store_error(e)),
    }
    state
        .store
        .add_agent_key(&row)
        .await
        .map_err(|e| call.store_error(e))?;
    refresh(&state, &call).await?;
    call.audit(
        &state.sink,
        "agent.key",
        name.as_str(),
        Outcome::Allow,
        201,
        None,
    );
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "agent": name.as_str(), "kid": row.kid }),
    ))
}

/// The end of every call that issued a certificate: the data plane picks up the
/// change, the change is audited, and the caller gets the certificate.
async fn issued(
    state: &AdminState,
    call: &Call,
    action: &str,
    agent: AgentView,
    certificate_pem: String,
) -> Result<Response, ApiError> {
    refresh(state, call).await?;
    call.done(&state.sink, action, &agent.name, 201);
    Ok(json(
        StatusCode::CREATED,
        &IssuedView {
            agent,
            certificate_pem,
            ca_pem: state.ca.cert_pem().to_string(),
        },
    ))
}

pub(super) async fn renew_agent(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RenewAgent = parse_json(&call, &body)?;
    let name =
        AgentName::parse(&name).map_err(|e| call.error(ErrorCode::BadRequest, e.to_string()))?;
    let ttl = ttl(&call, req.ttl_seconds)?;
    let (pem, cert) = issue(&state, &call, &name, &req.csr_pem, ttl)?;
    state
        .store
        .add_certificate(&cert)
        .await
        .map_err(|e| call.store_error(e))?;
    let agent = state
        .store
        .agent(name.as_str())
        .await
        .map_err(|e| call.store_error(e))?
        .ok_or_else(|| call.error(ErrorCode::NotFound, "no such agent"))?;
    let certs = state
        .store
        .certificates(Some(name.as_str()))
        .await
        .map_err(|e| call.store_error(e))?;
    let keys = key_ids(&state, &call, name.as_str()).await?;
    let view = view(&state, agent, certs, keys);
    issued(&state, &call, "agent.certificate", view, pem).await
}

pub(super) async fn list_agents(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let agents = state
        .store
        .agents()
        .await
        .map_err(|e| call.store_error(e))?;
    let certs = state
        .store
        .certificates(None)
        .await
        .map_err(|e| call.store_error(e))?;
    let keys = state
        .store
        .agent_keys(None)
        .await
        .map_err(|e| call.store_error(e))?;
    let views: Vec<AgentView> = agents
        .into_iter()
        .map(|a| {
            let mine = certs
                .iter()
                .filter(|c| c.agent == a.name)
                .cloned()
                .collect();
            let kids = keys
                .iter()
                .filter(|k| k.agent == a.name)
                .map(|k| k.kid.clone())
                .collect();
            view(&state, a, mine, kids)
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "agents": views }),
    ))
}

pub(super) async fn show_agent(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let agent = state
        .store
        .agent(&name)
        .await
        .map_err(|e| call.store_error(e))?
        .ok_or_else(|| {
            call.error(
                ErrorCode::NotFound,
                format!("agent `{name}` does not exist"),
            )
        })?;
    let certs = state
        .store
        .certificates(Some(&name))
        .await
        .map_err(|e| call.store_error(e))?;
    let keys = key_ids(&state, &call, &name).await?;
    let mut shown =
        serde_json::to_value(view(&state, agent, certs, keys)).map_err(|e| call.internal(e))?;
    shown["analytics"] = crate::analytics_api::agent_analytics(&state, &call, &name).await?;
    Ok(json(StatusCode::OK, &shown))
}

pub(super) async fn revoke_agent(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let approver = crate::mfa::require_fresh_totp(&state, &call, &headers).await?;
    let started = Instant::now();
    let agent = state
        .store
        .revoke_agent(&name, now_ms() / 1000)
        .await
        .map_err(|e| call.store_error(e))?;
    // The revocation is in force on the data plane once the reload returns.
    refresh(&state, &call).await?;
    tracing::info!(agent = %name, elapsed_us = started.elapsed().as_micros() as u64, "agent revoked");
    call.done_by(&state.sink, &approver, "agent.revoke", &name, 200);
    let certs = state
        .store
        .certificates(Some(&name))
        .await
        .map_err(|e| call.store_error(e))?;
    let keys = key_ids(&state, &call, &name).await?;
    Ok(json(StatusCode::OK, &view(&state, agent, certs, keys)))
}
