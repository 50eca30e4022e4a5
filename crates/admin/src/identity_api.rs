//! Revoking single credentials before they expire: one access token by its
//! `jti`, or every delegated token of a federated user (disable). Both need a
//! human admin's TOTP once one has enrolled, take effect on the data plane
//! before the call returns, and are recorded. Also the OAuth clients of the
//! authorization-code flow (MCP authorization): listed, and revoked with every
//! refresh token and live access token they hold.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Router, routing::get, routing::post};
use portcullis_core::ErrorCode;
use portcullis_store::RevokedTokenRow;
use serde::Deserialize;

use crate::api::{AdminState, ApiError, Call, json};
use crate::mfa::require_fresh_totp;

/// The routes, merged into `/admin/v1`.
pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/tokens/revoke", post(revoke_token))
        .route("/tokens/revoked", get(list_revoked))
        .route("/users/disable", post(disable_user))
        .route("/users/enable", post(enable_user))
        .route("/users/disabled", get(list_disabled))
        .route("/agents/{name}/posture", post(pin_posture))
        .route("/oauth/clients", get(list_oauth_clients))
        .route(
            "/oauth/clients/{client_id}/revoke",
            post(revoke_oauth_client),
        )
}

/// `GET /admin/v1/oauth/clients`: every registered client, revoked or not.
async fn list_oauth_clients(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let rows = state
        .store
        .oauth_clients()
        .await
        .map_err(|e| call.store_error(e))?;
    let rows: Vec<_> = rows
        .into_iter()
        .map(|c| {
            serde_json::json!({
                "client_id": c.client_id, "client_name": c.client_name,
                "redirect_uris": c.redirect_uris, "created_at": c.created_at,
                "registered_by": c.registered_by, "revoked_at": c.revoked_at,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &rows))
}

/// `POST /admin/v1/oauth/clients/{client_id}/revoke`: the client can no
/// longer authorize or refresh, and its live access tokens stop working
/// before the call returns.
async fn revoke_oauth_client(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    axum::extract::Path(client_id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    // An unknown client is refused before the code is looked at, so a typo
    // does not spend it.
    let known = state
        .store
        .oauth_client(&client_id)
        .await
        .map_err(|e| call.store_error(e))?;
    if known.is_none() {
        return Err(call.error(ErrorCode::NotFound, "no such OAuth client"));
    }
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    let found = state
        .store
        .revoke_oauth_client(&client_id, now_secs())
        .await
        .map_err(|e| call.store_error(e))?;
    if !found {
        return Err(call.error(ErrorCode::NotFound, "no such OAuth client"));
    }
    refresh(&state, &call).await?;
    call.done_by(
        &state.sink,
        &approver,
        "oauth_client.revoke",
        &client_id,
        200,
    );
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "revoked": client_id }),
    ))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeToken {
    jti: String,
    #[serde(default)]
    reason: String,
}

async fn refresh(state: &AdminState, call: &Call) -> Result<(), ApiError> {
    state
        .gateway
        .reload_revocations()
        .await
        .map_err(|e| call.internal(e))
}

async fn revoke_token(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    body: Result<Json<RevokeToken>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    if body.jti.is_empty() || body.jti.len() > 256 {
        return Err(call.error(ErrorCode::BadRequest, "`jti` must be 1-256 characters"));
    }
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    let now = now_secs();
    // No access token lives longer than 15 minutes, so after that the row is
    // useless whatever token it named.
    state
        .store
        .revoke_token(&RevokedTokenRow {
            jti: body.jti.clone(),
            expires_at: now + portcullis_identity::MAX_TOKEN_TTL as i64,
            revoked_at: now,
            reason: body.reason,
        })
        .await
        .map_err(|e| call.store_error(e))?;
    refresh(&state, &call).await?;
    call.done_by(&state.sink, &approver, "token.revoke", &body.jti, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "revoked": body.jti }),
    ))
}

async fn list_revoked(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let rows = state
        .store
        .revoked_tokens(now_secs())
        .await
        .map_err(|e| call.store_error(e))?;
    let rows: Vec<_> = rows
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "jti": r.jti, "revoked_at": r.revoked_at,
                "expires_at": r.expires_at, "reason": r.reason
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &rows))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserChange {
    subject: String,
    #[serde(default)]
    reason: String,
}

async fn set_disabled(
    state: AdminState,
    call: Call,
    headers: HeaderMap,
    body: Result<Json<UserChange>, axum::extract::rejection::JsonRejection>,
    disabled: bool,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    if body.subject.is_empty() || body.subject.len() > 256 {
        return Err(call.error(ErrorCode::BadRequest, "`subject` must be 1-256 characters"));
    }
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    state
        .store
        .set_user_disabled(&body.subject, disabled, now_secs(), &body.reason)
        .await
        .map_err(|e| call.store_error(e))?;
    refresh(&state, &call).await?;
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    call.done_by(&state.sink, &approver, action, &body.subject, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "subject": body.subject, "disabled": disabled }),
    ))
}

async fn disable_user(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    body: Result<Json<UserChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    set_disabled(state, call, headers, body, true).await
}

async fn enable_user(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    body: Result<Json<UserChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    set_disabled(state, call, headers, body, false).await
}

async fn list_disabled(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let users = state
        .store
        .disabled_users()
        .await
        .map_err(|e| call.store_error(e))?;
    Ok(json(StatusCode::OK, &users))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PinPosture {
    digest: String,
    #[serde(default)]
    networks: Vec<String>,
}

/// Pins an agent to a workload digest and source networks: its token
/// requests must come from those networks, and `context.posture.matches_pin`
/// is true only for tokens whose attested digest equals the pin.
pub(crate) async fn pin_posture(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: Result<Json<PinPosture>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let digest = body.digest.to_ascii_lowercase();
    let valid = digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(call.error(
            ErrorCode::BadRequest,
            "`digest` must be `sha256:` and 64 hex digits",
        ));
    }
    for n in &body.networks {
        if n.parse::<ipnet::IpNet>().is_err() {
            return Err(call.error(
                ErrorCode::BadRequest,
                format!("`{n}` is not a network in CIDR form (10.0.0.0/8, fd00::/8)"),
            ));
        }
    }
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    state
        .store
        .set_posture_pin(&portcullis_store::PostureRow {
            agent: name.clone(),
            digest: digest.clone(),
            networks: body.networks.clone(),
            pinned_at: now_secs(),
        })
        .await
        .map_err(|e| call.store_error(e))?;
    state
        .gateway
        .reload()
        .await
        .map_err(|e| call.reload_error(e))?;
    call.done_by(&state.sink, &approver, "agent.pin", &name, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "agent": name, "digest": digest, "networks": body.networks }),
    ))
}
