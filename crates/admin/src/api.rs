//! Admin API routes and handlers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_core::{AgentName, ErrorCode, RequestId};
use portcullis_gateway::Gateway;
use portcullis_gateway::audit_sink::AuditSink;
use portcullis_gateway::checkpointer::Checkpointer;
use portcullis_identity::CertificateAuthority;
use portcullis_store::{AgentRow, CertificateRow, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::auth::token_matches;

/// Default lifetime of agent certificates: 24 hours.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The store.
    pub store: Store,
    /// The data plane, to refresh after agent changes.
    pub gateway: Arc<Gateway>,
    /// The CA that issues agent certificates.
    pub ca: Arc<CertificateAuthority>,
    /// SHA-256 (hex) of the accepted admin tokens.
    pub token_hashes: Arc<Vec<String>>,
    /// Where admin audit records go.
    pub sink: AuditSink,
    /// The vault; `None` when no key-encryption key is configured.
    pub vault: Option<Arc<portcullis_vault::Vault>>,
    /// Signs the audit log's checkpoints.
    pub checkpointer: Arc<Checkpointer>,
    /// Seals admins' TOTP secrets; says whether MFA is always required.
    pub mfa: Arc<crate::mfa::MfaKeys>,
}

/// Per-request facts the middleware establishes.
#[derive(Clone)]
pub(crate) struct Call {
    pub(crate) request_id: RequestId,
    remote: Option<SocketAddr>,
    /// TOTP time steps this call consumed: given back when the call fails, so
    /// a code is spent only by a successful action. Shared by the clones.
    spent_codes: Arc<std::sync::Mutex<Vec<crate::mfa::SpentCode>>>,
}

/// An admin-API error: the same JSON shape as the data plane.
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
    request_id: RequestId,
    /// Seconds to wait before retrying (`Retry-After`), for throttled calls.
    retry_after: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "request_id": self.request_id.as_str(),
            }
        });
        if let Some(seconds) = self.retry_after {
            body["error"]["retry_after"] = serde_json::json!(seconds);
        }
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

impl Call {
    pub(crate) fn error(&self, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            request_id: self.request_id.clone(),
            retry_after: None,
        }
    }

    /// A refusal that says when to retry (`Retry-After`).
    pub(crate) fn error_retry_after(
        &self,
        code: ErrorCode,
        message: impl Into<String>,
        seconds: u64,
    ) -> ApiError {
        ApiError {
            retry_after: Some(seconds),
            ..self.error(code, message)
        }
    }

    /// Remembers a consumed TOTP step, to give back if the call fails.
    pub(crate) fn spent_code(&self, code: crate::mfa::SpentCode) {
        self.spent_codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(code);
    }

    /// The caller's address, when the listener passed it on.
    pub(crate) fn remote_ip(&self) -> Option<std::net::IpAddr> {
        self.remote.map(|r| r.ip())
    }

    pub(crate) fn store_error(&self, e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(what) => {
                self.error(ErrorCode::Conflict, format!("`{what}` already exists"))
            }
            StoreError::NotFound(what) => self.error(
                ErrorCode::NotFound,
                format!("`{what}` does not exist or is revoked"),
            ),
            StoreError::Invalid(message) => self.error(ErrorCode::BadRequest, message),
            other => {
                tracing::error!(request_id = %self.request_id, error = %other, "store error");
                self.error(ErrorCode::Internal, "internal error")
            }
        }
    }

    pub(crate) fn internal(&self, e: impl std::fmt::Display) -> ApiError {
        tracing::error!(request_id = %self.request_id, error = %e, "admin internal error");
        self.error(ErrorCode::Internal, "internal error")
    }

    /// Records a change the handler has made (an allowed admin action).
    pub(crate) fn done(&self, sink: &AuditSink, action: &str, resource: &str, status: u16) {
        self.audit(sink, action, resource, Outcome::Allow, status, None);
    }

    /// Records a sensitive change with the admin who confirmed it as the
    /// principal (`alice`, or `admin` when confirmed by the admin token alone)
    /// and whether their TOTP was checked (`credential`).
    pub(crate) fn done_by(
        &self,
        sink: &AuditSink,
        approver: &crate::mfa::Approver,
        action: &str,
        resource: &str,
        status: u16,
    ) {
        sink.submit(AuditRecord {
            time_ms: now_ms(),
            kind: RecordKind::Admin,
            request_id: self.request_id.to_string(),
            principal: Some(approver.user.clone()),
            credential: Some(if approver.mfa {
                "admin token + totp".to_string()
            } else {
                "admin token".to_string()
            }),
            source_ip: self.remote.map(|r| r.ip().to_string()),
            action: action.to_string(),
            resource: Some(resource.to_string()),
            outcome: Outcome::Allow,
            status,
            ..AuditRecord::default()
        });
    }

    pub(crate) fn audit(
        &self,
        sink: &AuditSink,
        action: &str,
        resource: &str,
        outcome: Outcome,
        status: u16,
        error: Option<ErrorCode>,
    ) {
        sink.submit(self.record(action, resource, outcome, status, error));
    }

    /// The audit record of this call, for handlers that add fields to it.
    pub(crate) fn record(
        &self,
        action: &str,
        resource: &str,
        outcome: Outcome,
        status: u16,
        error: Option<ErrorCode>,
    ) -> AuditRecord {
        AuditRecord {
            time_ms: now_ms(),
            kind: RecordKind::Admin,
            request_id: self.request_id.to_string(),
            principal: (outcome == Outcome::Allow).then(|| "admin".to_string()),
            source_ip: self.remote.map(|r| r.ip().to_string()),
            action: action.to_string(),
            resource: Some(resource.to_string()),
            outcome,
            error_code: error.map(|c| c.as_str().to_string()),
            status,
            ..AuditRecord::default()
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// The admin router. `remote` addresses reach handlers through a
/// `ConnectInfo`-like extension the listener adds.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/agents", post(create_agent).get(list_agents))
        .route("/agents/{name}", get(show_agent))
        .route("/agents/{name}/revoke", post(revoke_agent))
        .route("/agents/{name}/certificates", post(renew_agent))
        .route("/agents/{name}/keys", post(add_key))
        .route("/admins", post(crate::mfa::enrol).get(crate::mfa::list))
        .route("/admins/{name}", axum::routing::delete(crate::mfa::remove))
        .route("/audit", get(audit_tail))
        .merge(crate::vault_api::routes())
        .merge(crate::analytics_api::routes())
        .merge(crate::identity_api::routes())
        .merge(crate::tools_api::routes())
        .route(
            "/audit/checkpoint",
            get(crate::audit_api::latest_checkpoint).post(crate::audit_api::sign_checkpoint),
        )
        .route(
            "/audit/checkpoints",
            get(crate::audit_api::list_checkpoints),
        )
        .route("/audit/records/{id}", get(crate::audit_api::record))
        .route("/audit/proof/inclusion", get(crate::audit_api::inclusion))
        .route(
            "/audit/proof/consistency",
            get(crate::audit_api::consistency),
        )
        .route("/audit/export", get(crate::audit_api::export))
        .route("/inventory", get(crate::audit_api::inventory))
        .merge(crate::policy_api::routes())
        .merge(crate::approvals_api::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/admin/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(with_call))
        .with_state(state)
}

/// The client address, put into request extensions by the listener glue.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

async fn with_call(mut req: Request<Body>, next: Next) -> Response {
    let call = Call {
        request_id: RequestId::new(),
        remote: req.extensions().get::<RemoteAddr>().map(|r| r.0),
        spent_codes: Default::default(),
    };
    let id = call.request_id.clone();
    let spent = call.spent_codes.clone();
    req.extensions_mut().insert(call);
    let mut response = next.run(req).await;
    if !response.status().is_success() {
        let codes = std::mem::take(&mut *spent.lock().unwrap_or_else(|e| e.into_inner()));
        crate::mfa::release(codes).await;
    }
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn require_admin(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let action = format!("admin.{}", req.method().as_str().to_ascii_lowercase());
    let path = req.uri().path().to_string();
    let refusal = match presented {
        None => Some((
            ErrorCode::Unauthenticated,
            "an admin bearer token is required",
        )),
        Some(token) if !token_matches(token, &state.token_hashes) => {
            Some((ErrorCode::InvalidCredential, "the admin token is not valid"))
        }
        Some(_) => None,
    };
    // Fail closed: a change that cannot be recorded is not made.
    let refusal = refusal.or_else(|| {
        (req.method() != http::Method::GET && !state.sink.writable()).then_some((
            ErrorCode::AuditUnavailable,
            "the audit log cannot be written; admin changes are refused until it recovers",
        ))
    });
    if let Some((code, message)) = refusal {
        call.audit(
            &state.sink,
            &action,
            &path,
            Outcome::Deny,
            code.http_status(),
            Some(code),
        );
        return call.error(code, message).into_response();
    }
    let response = next.run(req).await;
    // Successful changes are recorded by their handlers with a specific action;
    // refused or failed admin calls are recorded here, so none goes unrecorded.
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        call.audit(
            &state.sink,
            &action,
            &path,
            Outcome::Deny,
            status.as_u16(),
            None,
        );
    }
    response
}

async fn healthz() -> impl IntoResponse {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AdminState>, Extension(call): Extension<Call>) -> Response {
    if let Some(reason) = state.sink.halted() {
        return call
            .error(
                ErrorCode::AuditUnavailable,
                format!("the audit log is halted: {reason}"),
            )
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
        _ => call
            .error(ErrorCode::Unavailable, "the store is not reachable")
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let text = state.gateway.metrics().encode();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn method_not_allowed(Extension(call): Extension<Call>) -> ApiError {
    call.error(
        ErrorCode::MethodNotAllowed,
        "method not allowed for this admin endpoint",
    )
}

async fn not_found(Extension(call): Extension<Call>) -> ApiError {
    call.error(ErrorCode::NotFound, "no such admin endpoint")
}

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

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

pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(
    call: &Call,
    body: &Bytes,
) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| call.error(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
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
    AgentView {
        credential_kinds,
        expires_at,
        last_seen,
        status: if revoked {
            "revoked"
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
    state.gateway.reload().await.map_err(|e| call.internal(e))
}

async fn create_agent(
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
async fn add_key(
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

async fn renew_agent(
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

async fn list_agents(
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

async fn show_agent(
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

async fn revoke_agent(
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

#[derive(Debug, Deserialize)]
struct TailQuery {
    limit: Option<u32>,
}

async fn audit_tail(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    query: Result<Query<TailQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let limit = q.limit.unwrap_or(20).clamp(1, 10_000);
    let records = state
        .store
        .audit_tail(limit)
        .await
        .map_err(|e| call.store_error(e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "records": records }),
    ))
}
