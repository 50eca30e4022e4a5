//! The per-request [`Call`]: the middleware that makes one for every request
//! and authenticates the admin token, the mapping of failures to the stable JSON
//! error shape ([`ApiError`]), the audit records of a call, and the JSON helpers
//! the handlers answer and parse with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_control::audit_sink::AuditSink;
use portcullis_core::{ErrorCode, RequestId};
use portcullis_store::StoreError;
use serde::{Deserialize, Serialize};

use super::AdminState;
use crate::auth::token_matches;

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

impl ApiError {
    /// The stable error code, for handlers that audit their refusals.
    pub(crate) fn code(&self) -> ErrorCode {
        self.code
    }
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

/// The client address, put into request extensions by the listener glue.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

/// Becomes `true` when the process starts shutting down; put into request
/// extensions by the listener glue, so long-lived answers (the console's
/// live stream) end at once instead of holding up the drain.
#[derive(Clone, Debug)]
pub struct ShuttingDown(pub tokio::sync::watch::Receiver<bool>);

pub(super) async fn with_call(mut req: Request<Body>, next: Next) -> Response {
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

pub(super) async fn require_admin(
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

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(
    call: &Call,
    body: &Bytes,
) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| call.error(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}
