//! Admin endpoints of the vault: secrets, rekey, transit keys and
//! encryption, and reading captured payloads.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /admin/v1/secrets` | list: names, versions, rotation dates, overdue — never values |
//! | `POST /admin/v1/secrets` | store a new secret |
//! | `GET /admin/v1/secrets/{name}` | one secret (no value) |
//! | `DELETE /admin/v1/secrets/{name}` | delete it (refused while a route injects it) |
//! | `POST /admin/v1/secrets/{name}/rotate` | new version, given or from the hook |
//! | `POST /admin/v1/secrets/{name}/settings` | rotation period, grace period, hook |
//! | `GET /admin/v1/vault` | KEK fingerprint and overdue secrets |
//! | `POST /admin/v1/vault/rekey` | rewrap every data key under a new KEK |
//! | `GET/POST /admin/v1/transit/keys` | list / create (random or imported Fernet key) |
//! | `POST /admin/v1/transit/keys/{name}/rotate` | new key version (random or imported) |
//! | `POST /admin/v1/transit/keys/{name}/export` | every version's Fernet key: only for a key created exportable, with a fresh TOTP (step-up), audited `transit.export` |
//! | `POST /admin/v1/transit/{encrypt,decrypt,rewrap}` | Fernet tokens |
//! | `GET /admin/v1/captures/{request_id}` | a captured request/response, decrypted |
//!
//! Values arrive in request bodies and leave only as transit plaintexts,
//! exported transit keys and captures the caller asked for; they are never
//! in errors or audit records.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use portcullis_core::ErrorCode;
use portcullis_vault::{Kek, RotationHook, SecretSettings, TransitChange, Vault, VaultError};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::api::{AdminState, ApiError, Call, json, parse_json};

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/secrets", get(list_secrets).post(put_secret))
        .route("/secrets/{name}", get(show_secret).delete(delete_secret))
        .route("/secrets/{name}/rotate", post(rotate_secret))
        .route("/secrets/{name}/settings", post(secret_settings))
        .route("/vault", get(vault_status))
        .route("/vault/rekey", post(rekey))
        .route("/transit/keys", get(list_transit).post(create_transit))
        .route("/transit/keys/{name}/rotate", post(rotate_transit))
        .route("/transit/keys/{name}/export", post(export_transit))
        .route("/transit/encrypt", post(transit_encrypt))
        .route("/transit/decrypt", post(transit_decrypt))
        .route("/transit/rewrap", post(transit_rewrap))
        .route("/captures/{request_id}", get(show_capture))
}

fn vault<'a>(state: &'a AdminState, call: &Call) -> Result<&'a Arc<Vault>, ApiError> {
    state.vault.as_ref().ok_or_else(|| {
        call.error(
            ErrorCode::VaultUnavailable,
            "the vault is off: start the server with PORTCULLIS_KEK_FILE or PORTCULLIS_KEK",
        )
    })
}

fn vault_error(call: &Call, e: VaultError) -> ApiError {
    match e {
        VaultError::NotFound(what) => {
            call.error(ErrorCode::NotFound, format!("`{what}` does not exist"))
        }
        VaultError::Conflict(m) => call.error(ErrorCode::Conflict, m),
        VaultError::Invalid(m) => call.error(ErrorCode::BadRequest, m),
        VaultError::Transit(portcullis_vault::transit::TransitError::InvalidToken) => call.error(
            ErrorCode::InvalidCiphertext,
            "the token is not valid for any version of this key",
        ),
        VaultError::Transit(t) => call.error(ErrorCode::BadRequest, t.to_string()),
        e @ VaultError::NotExportable(_) => call.error(ErrorCode::Forbidden, e.to_string()),
        VaultError::Hook(h) => {
            tracing::warn!(request_id = %call.request_id, error = %h, "rotation hook failed");
            call.error(ErrorCode::UpstreamUnavailable, h.to_string())
        }
        e @ VaultError::Corrupt { .. } => {
            tracing::error!(request_id = %call.request_id, error = %e, "vault value failed authentication");
            call.error(ErrorCode::SecretUnavailable, e.to_string())
        }
        other => call.internal(other),
    }
}

/// A value as JSON text, or base64 for arbitrary bytes.
fn value_bytes(
    call: &Call,
    value: Option<String>,
    value_base64: Option<String>,
) -> Result<Option<Zeroizing<Vec<u8>>>, ApiError> {
    match (value, value_base64) {
        (Some(_), Some(_)) => Err(call.error(
            ErrorCode::BadRequest,
            "give `value` or `value_base64`, not both",
        )),
        (Some(v), None) => Ok(Some(Zeroizing::new(v.into_bytes()))),
        (None, Some(mut b)) => {
            let decoded = STANDARD.decode(b.trim());
            b.zeroize();
            decoded
                .map(|d| Some(Zeroizing::new(d)))
                .map_err(|_| call.error(ErrorCode::BadRequest, "`value_base64` is not base64"))
        }
        (None, None) => Ok(None),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    name: String,
    value: Option<String>,
    value_base64: Option<String>,
    rotation_period_s: Option<i64>,
    grace_period_s: Option<i64>,
    hook: Option<RotationHook>,
}

async fn put_secret(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let req: PutSecret = parse_json(&call, &body)?;
    let value = value_bytes(&call, req.value, req.value_base64)?
        .ok_or_else(|| call.error(ErrorCode::BadRequest, "`value` is required"))?;
    let settings = SecretSettings {
        rotation_period_s: req.rotation_period_s,
        grace_period_s: req.grace_period_s,
        hook: req.hook,
    };
    let info = vault
        .put(&req.name, &value, &settings)
        .await
        .map_err(|e| vault_error(&call, e))?;
    call.done(&state.sink, "secret.put", &req.name, 201);
    Ok(json(StatusCode::CREATED, &info))
}

async fn list_secrets(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let list = vault.list().await.map_err(|e| vault_error(&call, e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "secrets": list }),
    ))
}

async fn show_secret(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let list = vault.list().await.map_err(|e| vault_error(&call, e))?;
    let info = list.into_iter().find(|s| s.name == name).ok_or_else(|| {
        call.error(
            ErrorCode::NotFound,
            format!("secret `{name}` does not exist"),
        )
    })?;
    Ok(json(StatusCode::OK, &info))
}

async fn delete_secret(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    vault
        .delete(&name)
        .await
        .map_err(|e| vault_error(&call, e))?;
    call.done(&state.sink, "secret.delete", &name, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "deleted": name }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateSecret {
    value: Option<String>,
    value_base64: Option<String>,
    expected_version: Option<i64>,
}

async fn rotate_secret(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let req: RotateSecret = if body.is_empty() {
        RotateSecret {
            value: None,
            value_base64: None,
            expected_version: None,
        }
    } else {
        parse_json(&call, &body)?
    };
    let value = value_bytes(&call, req.value, req.value_base64)?;
    let info = vault
        .rotate(
            &name,
            value.as_deref().map(Vec::as_slice),
            req.expected_version,
        )
        .await
        .map_err(|e| vault_error(&call, e))?;
    call.done(&state.sink, "secret.rotate", &name, 200);
    Ok(json(StatusCode::OK, &info))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    rotation_period_s: Option<i64>,
    grace_period_s: Option<i64>,
    hook: Option<RotationHook>,
}

async fn secret_settings(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let req: Settings = parse_json(&call, &body)?;
    let info = vault
        .update_settings(
            &name,
            &SecretSettings {
                rotation_period_s: req.rotation_period_s,
                grace_period_s: req.grace_period_s,
                hook: req.hook,
            },
        )
        .await
        .map_err(|e| vault_error(&call, e))?;
    call.done(&state.sink, "secret.settings", &name, 200);
    Ok(json(StatusCode::OK, &info))
}

async fn vault_status(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let list = vault.list().await.map_err(|e| vault_error(&call, e))?;
    let kek_version = vault
        .kek_version()
        .await
        .map_err(|e| vault_error(&call, e))?;
    let overdue: Vec<&str> = list
        .iter()
        .filter(|s| s.overdue)
        .map(|s| s.name.as_str())
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "kek_fingerprint": vault.kek_fingerprint(),
            "kek_version": kek_version,
            "secrets": list.len(),
            "overdue": overdue,
            "transit_keys": vault.transit_list().len(),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rekey {
    /// The new KEK, base64 of 32 bytes.
    new_kek: String,
}

async fn rekey(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let mut req: Rekey = parse_json(&call, &body)?;
    let kek = Kek::parse(req.new_kek.as_bytes(), "the request")
        .map_err(|e| call.error(ErrorCode::BadRequest, e.to_string()));
    req.new_kek.zeroize();
    let kek = kek?;
    let old = vault.kek_fingerprint();
    let count = vault.rekey(kek).await.map_err(|e| vault_error(&call, e))?;
    call.done(&state.sink, "vault.rekey", &old, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "previous_kek_fingerprint": old,
            "kek_fingerprint": vault.kek_fingerprint(),
            "rewrapped": count,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTransit {
    name: String,
    /// A Fernet key to import; a random one when absent.
    key: Option<String>,
    /// Whether `export` may hand the key out later (fixed at creation).
    #[serde(default)]
    exportable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateTransit {
    key: Option<String>,
}

async fn list_transit(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "keys": vault.transit_list() }),
    ))
}

async fn create_transit(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let mut req: CreateTransit = parse_json(&call, &body)?;
    let info = vault
        .transit_key(
            &req.name,
            req.key.as_deref(),
            TransitChange::Create {
                exportable: req.exportable,
            },
        )
        .await
        .map_err(|e| vault_error(&call, e));
    if let Some(k) = req.key.as_mut() {
        k.zeroize();
    }
    let info = info?;
    let action = match req.exportable {
        true => "transit.create_exportable",
        false => "transit.create",
    };
    call.done(&state.sink, action, &req.name, 201);
    Ok(json(StatusCode::CREATED, &info))
}

async fn rotate_transit(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let mut req: RotateTransit = if body.is_empty() {
        RotateTransit { key: None }
    } else {
        parse_json(&call, &body)?
    };
    let imported = req.key.is_some();
    let info = vault
        .transit_key(&name, req.key.as_deref(), TransitChange::Rotate)
        .await
        .map_err(|e| vault_error(&call, e));
    if let Some(k) = req.key.as_mut() {
        k.zeroize();
    }
    let info = info?;
    let action = match imported {
        true => "transit.rotate_import",
        false => "transit.rotate",
    };
    call.done(&state.sink, action, &name, 200);
    Ok(json(StatusCode::OK, &info))
}

/// Hands out every version of a transit key, newest first, so the data can
/// be opened outside the gateway (Python's `MultiFernet`). Sensitive: a
/// human admin's fresh TOTP code (step-up, as for other sensitive calls),
/// and only for a key created exportable. Both the export and its refusal
/// are audited (`transit.export`), never the key.
async fn export_transit(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let refused = |code: ErrorCode| {
        call.audit(
            &state.sink,
            "transit.export",
            &name,
            portcullis_audit::Outcome::Deny,
            code.http_status(),
            Some(code),
        );
    };
    let approver = match crate::mfa::require_fresh_totp(&state, &call, &headers).await {
        Ok(approver) => approver,
        Err(e) => {
            refused(e.code());
            return Err(e);
        }
    };
    let versions = match vault.transit_export(&name) {
        Ok(versions) => versions,
        Err(e) => {
            let e = vault_error(&call, e);
            refused(e.code());
            return Err(e);
        }
    };
    let keys: Vec<serde_json::Value> = versions
        .iter()
        .map(|v| serde_json::json!({ "version": v.version, "key": v.key.as_str() }))
        .collect();
    call.done_by(&state.sink, &approver, "transit.export", &name, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "name": name, "keys": keys }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Encrypt {
    key: String,
    /// base64 of the bytes to encrypt.
    plaintext: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    key: String,
    token: String,
}

async fn transit_encrypt(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let mut req: Encrypt = parse_json(&call, &body)?;
    let plain = STANDARD.decode(req.plaintext.trim()).map(Zeroizing::new);
    req.plaintext.zeroize();
    let plain =
        plain.map_err(|_| call.error(ErrorCode::BadRequest, "`plaintext` must be base64"))?;
    let (token, version) = vault
        .transit_encrypt(&req.key, &plain)
        .map_err(|e| vault_error(&call, e))?;
    call.done(&state.sink, "transit.encrypt", &req.key, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "token": token, "key_version": version }),
    ))
}

async fn transit_decrypt(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let req: Token = parse_json(&call, &body)?;
    let (plain, version) = vault
        .transit_decrypt(&req.key, &req.token)
        .map_err(|e| vault_error(&call, e))?;
    call.done(&state.sink, "transit.decrypt", &req.key, 200);
    let encoded = Zeroizing::new(STANDARD.encode(plain.as_slice()));
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "plaintext": encoded.as_str(), "key_version": version }),
    ))
}

async fn transit_rewrap(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let req: Token = parse_json(&call, &body)?;
    let (token, version) = vault
        .transit_rewrap(&req.key, &req.token)
        .map_err(|e| vault_error(&call, e))?;
    call.done(&state.sink, "transit.rewrap", &req.key, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "token": token, "key_version": version }),
    ))
}

async fn show_capture(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(request_id): Path<String>,
) -> Result<Response, ApiError> {
    let vault = vault(&state, &call)?;
    let view = vault
        .capture(&request_id)
        .await
        .map_err(|e| vault_error(&call, e))?;
    call.done(&state.sink, "capture.read", &request_id, 200);
    let row = &view.row;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "request_id": row.request_id,
            "route": row.route,
            "captured_at": row.captured_at,
            "expires_at": row.expires_at,
            "request_sha256": row.request_sha256,
            "response_sha256": row.response_sha256,
            "request_bytes": row.request_bytes,
            "response_bytes": row.response_bytes,
            "truncated": row.truncated,
            "request_base64": STANDARD.encode(view.request.as_slice()),
            "response_base64": STANDARD.encode(view.response.as_slice()),
        }),
    ))
}
