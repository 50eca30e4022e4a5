//! `/admin/v1/passkeys`: the human admins' passkeys (WebAuthn credentials
//! registered on the console's step-up page), listed and removed through
//! the API and the CLI (`portcullis admin passkey list|remove`). Listing is
//! a read (public keys and counters are not secrets, and the answer leaves
//! the key material out anyway); removing one is managing admins and a
//! sensitive action (step-up, audited `admin.passkey_remove` with the
//! confirming human).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Extension, Router};
use portcullis_core::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::api::{AdminState, ApiError, Call, json};

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/passkeys", get(list))
        .route("/passkeys/{id}", delete(remove))
}

/// `GET /admin/v1/passkeys?admin=NAME`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    admin: Option<String>,
}

/// One passkey, without its key.
#[derive(Serialize)]
struct PasskeyView {
    credential_id: String,
    admin: String,
    label: String,
    rp_id: String,
    algorithm: &'static str,
    sign_count: i64,
    created_at: i64,
    last_used_at: Option<i64>,
}

/// The name of a COSE algorithm a passkey uses.
pub(crate) fn algorithm_name(alg: i64) -> &'static str {
    match alg {
        portcullis_identity::webauthn::ES256 => "ES256",
        portcullis_identity::webauthn::EDDSA => "EdDSA",
        portcullis_identity::webauthn::RS256 => "RS256",
        _ => "unknown",
    }
}

async fn list(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let keys = state
        .store
        .passkeys(query.admin.as_deref())
        .await
        .map_err(|e| call.store_error(e))?;
    let views: Vec<PasskeyView> = keys
        .into_iter()
        .map(|k| PasskeyView {
            credential_id: k.credential_id,
            admin: k.admin,
            label: k.label,
            rp_id: k.rp_id,
            algorithm: algorithm_name(k.algorithm),
            sign_count: k.sign_count,
            created_at: k.created_at,
            last_used_at: (k.last_used_at > 0).then_some(k.last_used_at),
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "passkeys": views }),
    ))
}

/// Removes a passkey (step-up: an enrolled admin's fresh confirmation).
async fn remove(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = state
        .store
        .passkey(&id)
        .await
        .map_err(|e| call.store_error(e))?
        .ok_or_else(|| call.error(ErrorCode::NotFound, "no passkey has this credential id"))?;
    let approver = crate::mfa::require_fresh_totp(&state, &call, &headers).await?;
    state
        .store
        .remove_passkey(&id)
        .await
        .map_err(|e| call.store_error(e))?;
    call.done_by(
        &state.sink,
        &approver,
        "admin.passkey_remove",
        &format!("passkey:{}/{}", key.admin, key.label),
        200,
    );
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "removed": id, "admin": key.admin, "label": key.label }),
    ))
}
