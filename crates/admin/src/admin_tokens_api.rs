//! Admin credentials over the API, and the caller's own session.
//!
//! - `GET /admin-tokens` lists credentials (names, roles, history; never a
//!   token or its hash). `POST /admin-tokens` `{name, role}` creates one and
//!   returns its token once; `POST /admin-tokens/{name}/rotate` replaces the
//!   token (the old one is refused from the next request) and returns the new
//!   one once; `POST /admin-tokens/{name}/revoke` revokes it. The three
//!   changes are sensitive (TOTP or an open step-up window once an admin has
//!   enrolled), recorded with the acting credential, and reload the
//!   in-memory credentials before answering, so they are in force when the
//!   call returns. The last live owner cannot be revoked.
//! - `POST /admin-certificates` `{name, role, csr}` creates a credential
//!   bound to a client certificate the Portcullis CA issues for the CSR's
//!   key; listed, revoked and audited like a token (it is not rotated: a new
//!   one is issued instead).
//! - `GET /session` says who the caller is: credential, role, permissions
//!   and any open step-up window. `POST /session/step-up` verifies a TOTP
//!   code and opens a window without any other action; `DELETE` closes it.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json, Router, routing::get, routing::post};
use portcullis_core::{AgentName, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::api::{AdminState, ApiError, Call, json, now_ms};
use crate::credentials::mint;
use crate::mfa::require_fresh_totp;
use crate::roles::{Permission, Role};

/// The routes, merged into `/admin/v1`.
pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin-tokens", get(list).post(create))
        .route("/admin-tokens/{name}/rotate", post(rotate))
        .route("/admin-tokens/{name}/revoke", post(revoke))
        .route("/admin-certificates", post(create_certificate))
        .route("/session", get(session))
        .route("/session/step-up", post(step_up).delete(step_down))
}

/// `POST /admin-tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    role: String,
}

/// One credential as listed.
#[derive(Serialize)]
struct TokenView {
    name: String,
    role: String,
    /// `token` or `certificate`.
    kind: String,
    /// A certificate's end of validity.
    not_after: Option<i64>,
    status: &'static str,
    bootstrap: bool,
    created_at: i64,
    created_by: String,
    rotated_at: Option<i64>,
    revoked_at: Option<i64>,
}

/// The one answer that carries a token.
#[derive(Serialize)]
struct Issued {
    name: String,
    role: String,
    token: String,
}

/// Reloads this replica's credentials after a change to them, then tells
/// the other replicas (cluster mode), which reload theirs: a credential
/// revoked or rotated here is refused there within the propagation bound.
async fn reload(state: &AdminState, call: &Call) -> Result<(), ApiError> {
    state
        .credentials
        .reload(&state.store)
        .await
        .map_err(|e| call.store_error(e))?;
    crate::credentials::announce(&state.store).await;
    Ok(())
}

async fn list(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let rows = state
        .store
        .admin_credentials()
        .await
        .map_err(|e| call.store_error(e))?;
    let tokens: Vec<TokenView> = rows
        .into_iter()
        .map(|r| TokenView {
            status: if r.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            name: r.name,
            role: r.role,
            kind: r.kind,
            not_after: r.not_after,
            bootstrap: r.bootstrap,
            created_at: r.created_at,
            created_by: r.created_by,
            rotated_at: r.rotated_at,
            revoked_at: r.revoked_at,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "tokens": tokens }),
    ))
}

/// A new credential's name and role, checked (valid, not taken) before
/// any code is looked at.
async fn new_credential(
    state: &AdminState,
    call: &Call,
    name: &str,
    role: &str,
) -> Result<(AgentName, Role), ApiError> {
    let name = AgentName::parse(name)
        .map_err(|e| call.error(ErrorCode::BadRequest, format!("credential name: {e}")))?;
    let role: Role = role
        .parse()
        .map_err(|e| call.error(ErrorCode::BadRequest, format!("{e}")))?;
    let taken = state
        .store
        .admin_credentials()
        .await
        .map_err(|e| call.store_error(e))?
        .iter()
        .any(|r| r.name == name.as_str());
    if taken {
        return Err(call.error(
            ErrorCode::Conflict,
            format!("`{name}` already exists (names are never reused)"),
        ));
    }
    Ok((name, role))
}

async fn create(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    body: Result<Json<CreateBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    // Everything that can be refused is checked before the code is looked at.
    let Json(body) = body.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let (name, role) = new_credential(&state, &call, &body.name, &body.role).await?;
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    let (row, token) = mint(name.as_str(), role, &call.admin_name(), false);
    keep_credential(&state, &call, &approver, &row, "admin_token.create").await?;
    Ok(json(
        StatusCode::CREATED,
        &Issued {
            name: row.name,
            role: row.role,
            token,
        },
    ))
}

/// `POST /admin-certificates` body: the CLI makes the key and sends only
/// a CSR, so the private key never leaves the admin's machine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCertificateBody {
    name: String,
    role: String,
    /// PEM certificate signing request; only its public key is used.
    csr: String,
    /// Lifetime in seconds (default [`DEFAULT_ADMIN_CERT_TTL`], at most a year).
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// The lifetime of an admin certificate when none is asked for.
pub const DEFAULT_ADMIN_CERT_TTL: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

/// The answer of `POST /admin-certificates`.
#[derive(Serialize)]
struct IssuedCertificate {
    name: String,
    role: String,
    kind: &'static str,
    certificate_pem: String,
    ca_pem: String,
    fingerprint: String,
    serial: String,
    not_after: i64,
}

/// Issues a client certificate for a new admin credential: the Portcullis CA
/// signs the CSR's public key (subject `CN=<name>, O=Portcullis admins`),
/// and the credential is bound to that exact certificate (SHA-256 of its DER
/// form). Over mTLS on the admin listener it then authenticates like a
/// token of the same role; revoking the credential refuses it at once.
async fn create_certificate(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    body: Result<Json<CreateCertificateBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let (name, role) = new_credential(&state, &call, &body.name, &body.role).await?;
    let ttl = body
        .ttl_seconds
        .map_or(DEFAULT_ADMIN_CERT_TTL, std::time::Duration::from_secs);
    let issued = state
        .ca
        .issue_admin(name.as_str(), &body.csr, ttl)
        .map_err(|e| call.error(ErrorCode::BadRequest, e.to_string()))?;
    let fingerprint = certificate_fingerprint(&issued.pem)
        .ok_or_else(|| call.internal("the CA issued a certificate that does not parse"))?;
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    let (mut row, _token) = mint(name.as_str(), role, &call.admin_name(), false);
    row.token_sha256 = fingerprint.clone();
    row.kind = portcullis_store::ADMIN_KIND_CERTIFICATE.to_string();
    row.not_after = Some(issued.not_after);
    keep_credential(&state, &call, &approver, &row, "admin_certificate.create").await?;
    Ok(json(
        StatusCode::CREATED,
        &IssuedCertificate {
            name: row.name,
            role: row.role,
            kind: portcullis_store::ADMIN_KIND_CERTIFICATE,
            certificate_pem: issued.pem,
            ca_pem: state.ca.cert_pem().to_string(),
            fingerprint,
            serial: issued.serial,
            not_after: issued.not_after,
        },
    ))
}

/// SHA-256 (hex) of the DER form of the first certificate in `pem`: what a
/// certificate credential is bound to, and what the listener computes from
/// the certificate a client presents.
pub fn certificate_fingerprint(pem: &str) -> Option<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(crate::auth::hash_bytes(der.as_ref()))
}

/// The live credential called `name`, or `not_found` before any code is spent.
async fn live(
    state: &AdminState,
    call: &Call,
    name: &str,
) -> Result<portcullis_store::AdminTokenRow, ApiError> {
    state
        .store
        .admin_credentials()
        .await
        .map_err(|e| call.store_error(e))?
        .into_iter()
        .find(|r| r.name == name && r.revoked_at.is_none())
        .ok_or_else(|| {
            call.error(
                ErrorCode::NotFound,
                format!("no live admin credential `{name}`"),
            )
        })
}

async fn rotate(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let row = live(&state, &call, &name).await?;
    if row.kind != portcullis_store::ADMIN_KIND_TOKEN {
        return Err(call.error(
            ErrorCode::BadRequest,
            format!(
                "`{name}` is a client-certificate credential: issue a new one (`portcullis admin cert create`) and revoke this one"
            ),
        ));
    }
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    let token = crate::auth::new_token();
    state
        .store
        .rotate_admin_credential(&row.name, &crate::auth::hash_token(&token), now_ms() / 1000)
        .await
        .map_err(|e| call.store_error(e))?;
    // A new token is a new session: the store closed its window, if any,
    // for every replica (`rotate_admin_credential`).
    reload(&state, &call).await?;
    call.done_by(&state.sink, &approver, "admin_token.rotate", &row.name, 200);
    Ok(json(
        StatusCode::OK,
        &Issued {
            name: row.name,
            role: row.role,
            token,
        },
    ))
}

async fn revoke(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let row = live(&state, &call, &name).await?;
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    state
        .store
        .revoke_admin_credential(&row.name, now_ms() / 1000)
        .await
        .map_err(|e| match e {
            portcullis_store::StoreError::Invalid(message) => {
                call.error(ErrorCode::Conflict, message)
            }
            other => call.store_error(other),
        })?;
    // The store closed its window, if any, for every replica.
    reload(&state, &call).await?;
    call.done_by(&state.sink, &approver, "admin_token.revoke", &row.name, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "revoked": row.name }),
    ))
}

/// Every permission, for `GET /session`.
const PERMISSIONS: [Permission; 14] = [
    Permission::Read,
    Permission::Session,
    Permission::ReadCaptures,
    Permission::ManageAgents,
    Permission::ManageTools,
    Permission::ManageGovernance,
    Permission::ManageSecrets,
    Permission::ManageVault,
    Permission::UseTransit,
    Permission::AuthorPolicy,
    Permission::Decide,
    Permission::ResolveAlerts,
    Permission::SignCheckpoint,
    Permission::ManageAdmins,
];

async fn session_view(state: &AdminState, call: &Call) -> Result<serde_json::Value, ApiError> {
    let admin = call
        .admin()
        .ok_or_else(|| call.internal("no authenticated admin on an admin route"))?;
    let window = state
        .step_up
        .current(admin)
        .await
        .map_err(|e| call.store_error(e))?;
    Ok(serde_json::json!({
        "name": admin.name,
        "role": admin.role.as_str(),
        "kind": admin.kind.as_str(),
        "permissions": PERMISSIONS
            .iter()
            .filter(|p| admin.role.grants(**p))
            .map(|p| p.as_str())
            .collect::<Vec<_>>(),
        "step_up_seconds": state.step_up.ttl().as_secs(),
        "step_up": window.map(|w| serde_json::json!({
            "user": w.user,
            "expires_at": w.expires_at,
        })),
    }))
}

async fn session(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &session_view(&state, &call).await?))
}

/// Verifies a code (headers `X-Portcullis-User`/`X-Portcullis-TOTP`) and
/// opens the credential's step-up window, with no other action.
async fn step_up(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let admin = call
        .admin()
        .cloned()
        .ok_or_else(|| call.internal("no authenticated admin on an admin route"))?;
    if state.step_up.ttl().is_zero() {
        return Err(call.error(
            ErrorCode::Conflict,
            "step-up windows are off (`[admin] step_up_seconds = 0`): pass a code with each action",
        ));
    }
    if headers.get(crate::mfa::TOTP_HEADER).is_none() {
        return Err(call.error(
            ErrorCode::MfaRequired,
            "a step-up needs a TOTP code (headers X-Portcullis-User and X-Portcullis-TOTP)",
        ));
    }
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    if !approver.mfa {
        return Err(call.error(
            ErrorCode::MfaRequired,
            "no human admin has enrolled: there is no TOTP to step up with",
        ));
    }
    // Opened now, so that the answer shows it (opening it again when the
    // call has succeeded only renews it). A window that cannot be stored
    // fails the call, which gives the code back.
    state
        .step_up
        .open(&admin, &approver.user)
        .await
        .map_err(|e| call.store_error(e))?;
    let view = session_view(&state, &call).await?;
    call.done_by(&state.sink, &approver, "admin.step_up", &admin.name, 200);
    Ok(json(StatusCode::OK, &view))
}

async fn step_down(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let admin = call
        .admin()
        .cloned()
        .ok_or_else(|| call.internal("no authenticated admin on an admin route"))?;
    state
        .step_up
        .close(&admin)
        .await
        .map_err(|e| call.store_error(e))?;
    call.done(&state.sink, "admin.step_down", &admin.name, 200);
    Ok(json(StatusCode::OK, &session_view(&state, &call).await?))
}

/// Stores a new admin credential, reloads the credentials every request
/// checks, and audits `action` by the acting admin with its TOTP approver.
async fn keep_credential(
    state: &AdminState,
    call: &Call,
    approver: &crate::mfa::Approver,
    row: &portcullis_store::AdminTokenRow,
    action: &str,
) -> Result<(), ApiError> {
    state
        .store
        .add_admin_credential(row)
        .await
        .map_err(|e| call.store_error(e))?;
    reload(state, call).await?;
    call.done_by(&state.sink, approver, action, &row.name, 201);
    Ok(())
}
