//! Human admins and their second factor. The admin token says "this is an
//! operator's tool"; a TOTP code from an enrolled admin says which human is
//! behind a sensitive action and that they are present now.
//!
//! - Enrolment (`POST /admin/v1/admins`) makes a fresh 160-bit TOTP secret,
//!   returns it once (base32 and `otpauth://` URI) and stores it sealed with
//!   AES-256-GCM under the state directory's MFA key, bound to the admin's
//!   name, so the database alone reveals nothing and a sealed secret moved to
//!   another name does not open.
//! - A sensitive call carries `X-Portcullis-User` and `X-Portcullis-TOTP`.
//!   [`require_fresh_totp`] checks the code (±1 step) and consumes its time
//!   step atomically in the store, so a code works once (RFC 6238 §5.2),
//!   even across two concurrent calls. When the call then fails (any non-2xx
//!   answer), the step is given back: a code is consumed only by a
//!   successful, authorised action.
//! - Wrong codes are throttled per admin and per source address
//!   ([`portcullis_control::attempts`]): exponential back-off, then a lockout
//!   after `[limits] auth_max_failures` failures within the window. A
//!   throttled code is answered 429 `too_many_attempts` (with `Retry-After`)
//!   without being checked, so a correct code during a lockout is refused
//!   too. The lockout is audited (`admin.mfa_lockout`), counted
//!   (`portcullis_auth_lockouts_total{kind="totp"}`) and raised as an alert.
//! - A verified code opens a step-up window for the calling credential
//!   (`stepup.rs`) once the call succeeds: until it closes, that
//!   credential's sensitive calls need no new code. `POST
//!   /admin/v1/session/step-up` opens one without any other action.
//! - Until any admin enrols, sensitive calls need only the admin token (a
//!   fresh install must be able to revoke an agent), unless
//!   `[admin] require_mfa = true`.

use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use portcullis_control::attempts::AttemptKey;
use portcullis_control::local_users::{CodeCheck, TotpSeal};
use portcullis_core::{AgentName, ErrorCode};
use portcullis_identity::TotpSecret;
use portcullis_store::AdminUserRow;
use serde::{Deserialize, Serialize};

use crate::api::{AdminState, ApiError, Call, json};

/// Header naming the admin who confirms a sensitive call.
pub const USER_HEADER: &str = "x-portcullis-user";
/// Header carrying their current TOTP code.
pub const TOTP_HEADER: &str = "x-portcullis-totp";
/// The `kind` of TOTP failures in the attempt throttle and metrics.
const TOTP_KIND: &str = "totp";
/// Issuer shown in authenticator apps.
const TOTP_ISSUER: &str = "Portcullis";

/// The key sealing TOTP secrets, and whether MFA is required before enrolment.
/// The sealing and the code check are `control`'s (`local_users`), shared with
/// the data plane's login page.
#[derive(Debug)]
pub struct MfaKeys {
    seal: Arc<TotpSeal>,
    require_always: bool,
}

impl MfaKeys {
    /// From the shared seal (the binary keeps its key in `<state-dir>/mfa.key`).
    pub fn new(seal: Arc<TotpSeal>, require_always: bool) -> Self {
        MfaKeys {
            seal,
            require_always,
        }
    }
}

/// A TOTP time step a call consumed.
#[derive(Debug, Clone)]
pub(crate) struct SpentCode {
    store: portcullis_store::Store,
    admin: String,
    step: i64,
    previous: i64,
}

/// Gives back the steps of a call that failed: a code is consumed only by a
/// successful, authorised action (a refused or failed one can be retried with
/// the same code within its window).
pub(crate) async fn release(codes: Vec<SpentCode>) {
    for code in codes {
        if let Err(e) = code
            .store
            .release_totp_step(&code.admin, code.step, code.previous)
            .await
        {
            tracing::error!(admin = %code.admin, error = %e, "cannot give back a TOTP step");
        }
    }
}

/// Who confirmed a sensitive call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    /// The human admin's name; the credential's name when no admin has
    /// enrolled (token only).
    pub user: String,
    /// Whether a TOTP code was verified (now, or to open the step-up
    /// window that stood in for one).
    pub mfa: bool,
    /// Whether an open step-up window stood in for a code.
    pub step_up: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Demands the headers of a sensitive call and verifies them. Without any
/// enrolled admin (and without `require_mfa`), the admin token alone suffices
/// and the approver is `admin` without MFA.
pub(crate) async fn require_fresh_totp(
    state: &AdminState,
    call: &Call,
    headers: &HeaderMap,
) -> Result<Approver, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let (user, code) = (header(USER_HEADER), header(TOTP_HEADER));
    // The credential's open step-up window stands in for a code, for the
    // human who opened it only. The window is in the store (every replica
    // sees it); a store that does not answer refuses the call.
    if code.is_none()
        && let Some(admin) = call.admin()
        && let Some(window) = state
            .step_up
            .current(admin)
            .await
            .map_err(|e| call.store_error(e))?
        && user.is_none_or(|u| u == window.user)
    {
        return Ok(Approver {
            user: window.user,
            mfa: true,
            step_up: true,
        });
    }
    let enrolled = state
        .store
        .admin_users()
        .await
        .map_err(|e| call.store_error(e))?;
    if enrolled.is_empty() && !state.mfa.require_always && user.is_none() && code.is_none() {
        return Ok(Approver {
            user: call.admin_name(),
            mfa: false,
            step_up: false,
        });
    }
    let approver = match (user, code) {
        (Some(user), Some(code)) => verify_totp(state, call, user, code).await?,
        (None, Some(_)) if enrolled.len() == 1 => {
            verify_totp(state, call, &enrolled[0].name, code.unwrap_or_default()).await?
        }
        _ => Err(call.error(
            ErrorCode::MfaRequired,
            if enrolled.is_empty() {
                "this action needs a human admin's TOTP code, and no admin has enrolled: enrol one with `portcullis admin user add NAME`"
            } else {
                "this action needs a human admin's TOTP code: pass --user NAME --totp CODE (headers X-Portcullis-User and X-Portcullis-TOTP), or open a step-up window"
            },
        ))?,
    };
    call.step_up_on_success(state.step_up.clone(), &approver.user);
    Ok(approver)
}

/// Verifies one admin's code and consumes its time step. Used directly where
/// an action needs two distinct approvers.
pub(crate) async fn verify_totp(
    state: &AdminState,
    call: &Call,
    user: &str,
    code: &str,
) -> Result<Approver, ApiError> {
    let mut keys = vec![AttemptKey::Principal(user)];
    if let Some(ip) = call.remote_ip() {
        keys.push(AttemptKey::Source(ip));
    }
    let attempts = state.gateway.attempts();
    if let Err(t) = attempts.check(TOTP_KIND, &keys) {
        state.gateway.metrics().auth_throttled(TOTP_KIND);
        return Err(call.error_retry_after(
            ErrorCode::TooManyAttempts,
            if t.locked {
                "too many wrong TOTP codes: this admin (or this address) is locked out; the code was not checked"
            } else {
                "too many wrong TOTP codes: back off before the next attempt; the code was not checked"
            },
            t.retry_after,
        ));
    }
    let refused = || {
        let failure = attempts.failure(TOTP_KIND, &keys);
        state
            .gateway
            .metrics()
            .auth_failure(TOTP_KIND, failure.locked_now);
        if failure.locked_now {
            let source = call
                .remote_ip()
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            tracing::warn!(request_id = %call.request_id, admin = user, %source, "admin locked out after too many wrong TOTP codes");
            call.audit(
                &state.sink,
                "admin.mfa_lockout",
                user,
                portcullis_audit::Outcome::Deny,
                ErrorCode::TooManyAttempts.http_status(),
                Some(ErrorCode::TooManyAttempts),
            );
            state
                .gateway
                .raise_lockout_alert(TOTP_KIND, &format!("admin:{user}"), source);
        }
        call.error(ErrorCode::InvalidTotp, "the TOTP code was refused")
    };
    let check = state
        .mfa
        .seal
        .check_code(&state.store, user, code, now_secs())
        .await
        .map_err(|e| call.store_error(e))?;
    let (step, previous) = match check {
        CodeCheck::Accepted { step, previous } => (step, previous),
        CodeCheck::Refused => return Err(refused()),
        CodeCheck::Replayed => {
            // A replayed code counts as a failure too.
            let _ = refused();
            return Err(call.error(
                ErrorCode::InvalidTotp,
                "the TOTP code was already used; wait for the next one",
            ));
        }
    };
    attempts.success(TOTP_KIND, &keys);
    call.spent_code(SpentCode {
        store: state.store.clone(),
        admin: user.to_string(),
        step,
        previous,
    });
    Ok(Approver {
        user: user.to_string(),
        mfa: true,
        step_up: false,
    })
}

/// `POST /admin/v1/admins` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrolAdmin {
    name: String,
}

/// The one answer that carries the secret.
#[derive(Serialize)]
struct Enrolled {
    name: String,
    totp_secret: String,
    otpauth_uri: String,
}

#[derive(Serialize)]
struct AdminView {
    name: String,
    created_at: i64,
}

/// Enrols a human admin. The first enrolment needs only the admin token;
/// later ones need an enrolled admin's TOTP.
pub(crate) async fn enrol(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    body: Result<Json<EnrolAdmin>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    // Admin names follow the agent name rule: safe in headers, logs and URIs.
    let name = AgentName::parse(&body.name)
        .map_err(|e| call.error(ErrorCode::BadRequest, format!("admin name: {e}")))?;
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    let secret = TotpSecret::generate();
    let sealed = state
        .mfa
        .seal
        .seal(name.as_str(), &secret)
        .map_err(|_| call.internal("cannot seal the TOTP secret"))?;
    state
        .store
        .add_admin_user(&AdminUserRow {
            name: name.to_string(),
            totp_sealed: sealed,
            created_at: now_secs() as i64,
            last_step: 0,
        })
        .await
        .map_err(|e| call.store_error(e))?;
    call.done_by(&state.sink, &approver, "admin.enrol", name.as_str(), 201);
    Ok(json(
        StatusCode::CREATED,
        &Enrolled {
            name: name.to_string(),
            totp_secret: secret.to_base32().to_string(),
            otpauth_uri: secret.otpauth_uri(TOTP_ISSUER, name.as_str()).to_string(),
        },
    ))
}

/// Lists enrolled admins (names and enrolment time, never secrets).
pub(crate) async fn list(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let admins = state
        .store
        .admin_users()
        .await
        .map_err(|e| call.store_error(e))?;
    let views: Vec<AdminView> = admins
        .into_iter()
        .map(|a| AdminView {
            name: a.name,
            created_at: a.created_at,
        })
        .collect();
    Ok(json(StatusCode::OK, &views))
}

/// Removes an admin (TOTP of an enrolled admin required, possibly their own).
pub(crate) async fn remove(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let approver = require_fresh_totp(&state, &call, &headers).await?;
    state
        .store
        .remove_admin_user(&name)
        .await
        .map_err(|e| call.store_error(e))?;
    call.done_by(&state.sink, &approver, "admin.remove", &name, 200);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "removed": name }),
    ))
}
