//! The per-request [`Call`]: the middleware that makes one for every request
//! and the one that authenticates the admin credential and checks its role
//! against the route's permission (`route_permissions.rs`), the mapping of
//! failures to the stable JSON error shape ([`ApiError`]), the audit records
//! of a call, and the JSON helpers the handlers answer and parse with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::body::Body;
use axum::extract::{MatchedPath, State};
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
use crate::credentials::{AdminIdentity, CredentialKind};
use crate::stepup::StepUp;

/// Per-request facts the middleware establishes.
#[derive(Clone)]
pub(crate) struct Call {
    pub(crate) request_id: RequestId,
    remote: Option<SocketAddr>,
    /// TOTP time steps this call consumed: given back when the call fails, so
    /// a code is spent only by a successful action. Shared by the clones.
    spent_codes: Arc<std::sync::Mutex<Vec<crate::mfa::SpentCode>>>,
    /// The step-up window a verified code opens if, and only if, the call
    /// succeeds. Shared by the clones.
    step_up_on_success: Arc<std::sync::Mutex<Option<PendingStepUp>>>,
    /// The authenticated admin credential (set by `require_admin`).
    admin: Option<Arc<AdminIdentity>>,
}

/// A step-up window to open when the call succeeds.
struct PendingStepUp {
    step_up: Arc<StepUp>,
    credential: Arc<AdminIdentity>,
    user: String,
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

    /// Opens `user`'s step-up window for this call's credential once the
    /// call has succeeded (never for a refused or failed one).
    pub(crate) fn step_up_on_success(&self, step_up: Arc<StepUp>, user: &str) {
        if let Some(admin) = &self.admin {
            *self
                .step_up_on_success
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(PendingStepUp {
                step_up,
                credential: admin.clone(),
                user: user.to_string(),
            });
        }
    }

    /// This call as made by `admin` (the console's session, which
    /// authenticated outside `require_admin`), for its audit records.
    pub(crate) fn acting_as(&self, admin: Arc<AdminIdentity>) -> Call {
        Call {
            admin: Some(admin),
            ..self.clone()
        }
    }

    /// The authenticated admin credential.
    pub(crate) fn admin(&self) -> Option<&Arc<AdminIdentity>> {
        self.admin.as_ref()
    }

    /// The acting credential's name (the principal of what it does).
    pub(crate) fn admin_name(&self) -> String {
        self.admin
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_default()
    }

    /// How the caller proved itself, for the audit record's `credential`:
    /// ``admin token `ops` (operator)`` and how a human confirmed, if one did.
    pub(crate) fn credential_text(&self, approver: Option<&crate::mfa::Approver>) -> String {
        let mut text = match &self.admin {
            Some(a) => match (a.kind, &a.login) {
                (_, Some(issuer)) => format!("oidc login at `{issuer}` ({})", a.role),
                (CredentialKind::Certificate, None) => {
                    format!("admin certificate `{}` ({})", a.name, a.role)
                }
                _ => format!("admin token `{}` ({})", a.name, a.role),
            },
            None => "admin token".to_string(),
        };
        match approver {
            Some(a) if a.step_up => text.push_str(" + step-up"),
            Some(a) if a.mfa => text.push_str(" + totp"),
            _ => {}
        }
        text
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
            other if other.is_unavailable() => self.store_unavailable(&other),
            other => {
                tracing::error!(request_id = %self.request_id, error = %other, "store error");
                self.error(ErrorCode::Internal, "internal error")
            }
        }
    }

    /// The store did not answer in time (a lock another session holds past
    /// `[store] lock_timeout_ms`, no connection free): 503, retry later.
    fn store_unavailable(&self, e: &StoreError) -> ApiError {
        tracing::warn!(request_id = %self.request_id, error = %e, "the store did not answer in time");
        self.error(
            ErrorCode::StoreUnavailable,
            "the store did not answer in time (a lock held by another session, or no connection free); retry shortly",
        )
    }

    /// A failed gateway reload: 503 when the store did not answer in time,
    /// an internal error otherwise.
    pub(crate) fn reload_error(&self, e: portcullis_control::plane::PlaneError) -> ApiError {
        match e.downcast_ref::<StoreError>() {
            Some(store) if store.is_unavailable() => self.store_unavailable(store),
            _ => self.internal(e),
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
    /// principal (`alice`, or the credential's name when its token alone
    /// sufficed) and the credential and how the human confirmed
    /// (`credential`: ``admin token `ops` (operator) + totp``).
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
            credential: Some(self.credential_text(Some(approver))),
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
            principal: self.admin.as_ref().map(|a| a.name.clone()),
            credential: self.admin.as_ref().map(|_| self.credential_text(None)),
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

/// The client certificate the peer of an admin connection presented and
/// proved it holds the key of (the TLS handshake checks the signature), as
/// SHA-256 (hex) of its DER form; put into request extensions by the
/// listener glue. It authenticates only if it is a live admin credential's.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub String);

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
        step_up_on_success: Default::default(),
        admin: None,
    };
    let id = call.request_id.clone();
    let spent = call.spent_codes.clone();
    let pending = call.step_up_on_success.clone();
    req.extensions_mut().insert(call);
    let mut response = next.run(req).await;
    let pending = pending.lock().unwrap_or_else(|e| e.into_inner()).take();
    if response.status().is_success() {
        // The action is done: a window that cannot be stored stays closed
        // (the next sensitive call asks for a code again), never the reverse.
        if let Some(p) = pending
            && let Err(e) = p.step_up.open(&p.credential, &p.user).await
        {
            tracing::error!(request_id = %id, error = %e, "cannot open a step-up window");
        }
    } else {
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

/// Authenticates the admin credential, then checks that its role holds the
/// permission the matched route needs (default deny: a route missing from
/// `ROUTE_PERMISSIONS` is refused to everyone). Runs before any handler, so
/// a refused caller never reaches a TOTP check and never spends a code.
pub(super) async fn require_admin(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let action = format!("admin.{}", req.method().as_str().to_ascii_lowercase());
    let path = req.uri().path().to_string();
    // Three ways in, tried in this order: the console acting for its
    // session (an extension only in-process callers can set), a bearer
    // token (explicit, so it wins over a certificate the client happens to
    // present), and the client certificate of the TLS connection.
    let console = req
        .extensions()
        .get::<crate::console::ConsoleCaller>()
        .map(|c| c.0.clone());
    let certificate = req.extensions().get::<ClientCertificate>().cloned();
    let identity = match (console, presented, &certificate) {
        (Some(session), _, _) => Some(session),
        (None, Some(token), _) => state.credentials.authenticate(token),
        (None, None, Some(cert)) => state
            .credentials
            .authenticate_certificate(&cert.0, now_ms() / 1000),
        (None, None, None) => None,
    };
    let call = Call {
        admin: identity.clone(),
        ..call
    };
    let refusal = match (&identity, presented, &certificate) {
        (Some(admin), _, _) => permission_refusal(&req, admin),
        (None, Some(_), _) => Some((
            ErrorCode::InvalidCredential,
            "the admin token is not valid".to_string(),
        )),
        (None, None, Some(_)) => Some((
            ErrorCode::InvalidCredential,
            "the client certificate is not a live admin credential".to_string(),
        )),
        (None, None, None) => Some((
            ErrorCode::Unauthenticated,
            "an admin bearer token (or an admin client certificate) is required".to_string(),
        )),
    };
    // Fail closed: a change that cannot be recorded is not made.
    let refusal = refusal.or_else(|| {
        (req.method() != http::Method::GET && !state.sink.writable()).then(|| {
            (
                ErrorCode::AuditUnavailable,
                "the audit log cannot be written; admin changes are refused until it recovers"
                    .to_string(),
            )
        })
    });
    req.extensions_mut().insert(call.clone());
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

/// Why `admin` may not call the matched route, if it may not.
fn permission_refusal(req: &Request<Body>, admin: &AdminIdentity) -> Option<(ErrorCode, String)> {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    // HEAD is answered by the GET handler, so it needs what GET needs.
    let method = match req.method().as_str() {
        "HEAD" => "GET",
        other => other,
    };
    let Some(route) = route else {
        return Some((
            ErrorCode::Forbidden,
            "this admin route has no permission mapping: refused to every credential".to_string(),
        ));
    };
    match crate::route_permissions::required(method, route) {
        Some(needed) if admin.role.grants(needed) => None,
        Some(needed) => Some((
            ErrorCode::Forbidden,
            format!(
                "the admin credential `{}` has the `{}` role, which does not grant `{}`",
                admin.name,
                admin.role,
                needed.as_str()
            ),
        )),
        // A known route asked with a method the table does not map: answered
        // here, as the router would, so an unmapped method never reaches a
        // handler even if one was registered.
        None if crate::route_permissions::is_known(route) => Some((
            ErrorCode::MethodNotAllowed,
            "method not allowed for this admin endpoint".to_string(),
        )),
        None => Some((
            ErrorCode::Forbidden,
            "this admin route has no permission mapping: refused to every credential".to_string(),
        )),
    }
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
