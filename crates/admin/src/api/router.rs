//! The admin router: [`router`] lists every endpoint (the agent endpoints of
//! `agents.rs` and those of the `*_api.rs` modules), and [`AdminState`] is what
//! the handlers share. The probes (`/healthz`, `/readyz`, `/metrics`), the
//! fallbacks and the audit tail live here too: they are a few lines each.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use portcullis_control::audit_sink::AuditSink;
use portcullis_control::checkpointer::Checkpointer;
use portcullis_control::metrics::Exposition;
use portcullis_control::plane::DataPlane;
use portcullis_control::readiness::NotReady;
use portcullis_core::ErrorCode;
use portcullis_identity::CertificateAuthority;
use portcullis_store::Store;
use serde::Deserialize;

use super::agents::{add_key, create_agent, list_agents, renew_agent, revoke_agent, show_agent};
use super::call::{ApiError, Call, json, require_admin, with_call};

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The store.
    pub store: Store,
    /// The data plane, to refresh after agent changes (the gateway, seen
    /// through the calls the admin API needs).
    pub gateway: Arc<dyn DataPlane>,
    /// The CA that issues agent certificates.
    pub ca: Arc<CertificateAuthority>,
    /// The live admin credentials (reloaded after each change to them).
    pub credentials: Arc<crate::credentials::AdminCredentials>,
    /// Open step-up windows.
    pub step_up: Arc<crate::stepup::StepUp>,
    /// Where admin audit records go.
    pub sink: AuditSink,
    /// The vault; `None` when no key-encryption key is configured.
    pub vault: Option<Arc<portcullis_vault::Vault>>,
    /// Signs the audit log's checkpoints.
    pub checkpointer: Arc<Checkpointer>,
    /// Seals admins' TOTP secrets; says whether MFA is always required.
    pub mfa: Arc<crate::mfa::MfaKeys>,
    /// `[[models.trusted_keys]]`: what model signatures verify against.
    pub model_keys: Arc<Vec<portcullis_control::model_signing::TrustedKey>>,
    /// Console logins at OIDC issuers, when configured.
    pub console_login: Option<Arc<crate::console::ConsoleLogin>>,
    /// The origins the console is opened at (`https://host:port`): passkeys
    /// are offered and accepted there only. Empty: no passkeys.
    pub console_origins: Arc<Vec<String>>,
}

/// The admin API's routes under `/admin/v1`, before authentication is
/// layered on. The OpenAPI test reads the route list from this router, so a
/// route added here and not described in `openapi.rs` fails the build's tests.
pub(crate) fn api_routes() -> Router<AdminState> {
    Router::new()
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/agents", post(create_agent).get(list_agents))
        .route("/agents/{name}", get(show_agent))
        .route("/agents/{name}/revoke", post(revoke_agent))
        .route("/agents/{name}/certificates", post(renew_agent))
        .route("/agents/{name}/keys", post(add_key))
        .route("/admins", post(crate::mfa::enrol).get(crate::mfa::list))
        .route("/admins/{name}", axum::routing::delete(crate::mfa::remove))
        .route("/audit", get(audit_tail))
        .merge(crate::admin_tokens_api::routes())
        .merge(crate::passkeys_api::routes())
        .merge(crate::vault_api::routes())
        .merge(crate::analytics_api::routes())
        .merge(crate::identity_api::routes())
        .merge(crate::tools_api::routes())
        .merge(crate::redteam_api::routes())
        .merge(crate::governance_api::routes())
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
}

/// The unauthenticated probes.
pub(crate) fn probe_routes() -> Router<AdminState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The admin router. `remote` addresses reach handlers through a
/// `ConnectInfo`-like extension the listener adds.
pub fn router(state: AdminState) -> Router {
    let api = api_routes()
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    // The web console calls the API in process through this router: the
    // same handlers, authentication, step-up and audit as a remote client.
    let internal = Router::new()
        .nest("/admin/v1", api.clone())
        .fallback(not_found)
        .layer(middleware::from_fn(with_call))
        .with_state(state.clone());
    Router::new()
        .merge(probe_routes())
        .nest("/admin/v1", api)
        .merge(crate::console::routes(
            crate::console::Api::new(internal),
            Arc::clone(&state.credentials),
            state.store.clone(),
            state.console_login.clone(),
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(with_call))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// Ready unless a component has raised a reason (see
/// `portcullis_control::readiness`): a few atomic loads, no IO, so probes
/// cost nothing and never queue behind a stalled store.
async fn readyz(State(state): State<AdminState>, Extension(call): Extension<Call>) -> Response {
    let reasons = state.gateway.metrics().readiness.reasons();
    let Some(first) = reasons.first() else {
        return json(StatusCode::OK, &serde_json::json!({ "status": "ready" }));
    };
    let (code, message) = match first {
        NotReady::StoreUnavailable => (
            ErrorCode::StoreUnavailable,
            "the shared store (PostgreSQL) does not answer".to_string(),
        ),
        NotReady::StoreStalled => (
            ErrorCode::StoreUnavailable,
            "the store's tables are locked by another session: reads wait past `[store] lock_timeout_ms`".to_string(),
        ),
        NotReady::AuditHalted => (
            ErrorCode::AuditUnavailable,
            format!(
                "the audit log is halted: {}",
                state.sink.halted().unwrap_or_default()
            ),
        ),
        NotReady::AuditUnwritable => (
            ErrorCode::AuditUnavailable,
            "the audit log cannot be written".to_string(),
        ),
        NotReady::PolicyLoadFailed => (
            ErrorCode::Unavailable,
            "the last policy load was refused; the previous version still decides".to_string(),
        ),
        NotReady::VaultUnavailable => (
            ErrorCode::Unavailable,
            "a route's vault credential cannot be served".to_string(),
        ),
        NotReady::ReplicaFenced => (
            ErrorCode::Unavailable,
            "another replica took this one for dead; it is re-registering".to_string(),
        ),
        NotReady::SigningKeysUnavailable => (
            ErrorCode::Unavailable,
            "a rotated signing key cannot be opened on this replica".to_string(),
        ),
    };
    let reasons: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
    // The admin API's error shape, plus every raised reason.
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "status": "not_ready",
            "reasons": reasons,
            "error": {
                "code": code.as_str(),
                "message": message,
                "request_id": call.request_id.as_str(),
                "reasons": reasons,
            },
        }),
    )
}

/// The metrics, in the format the `Accept` header prefers: OpenMetrics, or
/// the text format 0.0.4 for a client that asks for `text/plain`.
async fn metrics(State(state): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Exposition::negotiate(accept);
    let text = state.gateway.metrics().encode_as(format);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
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
