//! The console's way into the admin API: every page reads, and every form
//! acts, by calling the API router in process as the session's credential,
//! exactly as the CLI would over the network. So an action goes through the
//! same handler, the same authentication and step-up checks, the same audit
//! records and the same error codes as its API call; the console adds no
//! second path to any store or service function.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use portcullis_core::ErrorCode;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

use super::session::SessionView;
use crate::api::RemoteAddr;
use crate::credentials::AdminIdentity;
use crate::mfa::{TOTP_HEADER, USER_HEADER};

/// The largest API answer a page renders (the audit export is the only
/// bigger one, and the console does not call it).
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// The admin credential a console session acts with, handed to the API's
/// authentication in the request's extensions (which no network client can
/// set): the console keeps no token to present, only the session row's
/// credential, checked live by the session lookup that made the view.
#[derive(Clone)]
pub(crate) struct ConsoleCaller(pub(crate) Arc<AdminIdentity>);

/// The admin API as a service: `/admin/v1/…` with its middleware.
#[derive(Clone)]
pub(crate) struct Api {
    service: Router,
}

/// A human's step-up confirmation for a sensitive action: the fields of a
/// form, passed on as the API's `X-Portcullis-User` / `X-Portcullis-TOTP`.
#[derive(Debug, Default, Clone)]
pub(crate) struct StepUp {
    pub(crate) user: String,
    pub(crate) totp: String,
}

/// A refused or failed API call, as the API answered it.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl Api {
    pub(crate) fn new(service: Router) -> Self {
        Api { service }
    }

    /// `GET /admin/v1{path}`.
    pub(crate) async fn get(
        &self,
        session: &SessionView,
        remote: Option<RemoteAddr>,
        path: &str,
    ) -> Result<Value, Refusal> {
        self.call(session, remote, Method::GET, path, None, &StepUp::default())
            .await
    }

    /// Calls `/admin/v1{path}` as the session's admin.
    pub(crate) async fn call(
        &self,
        session: &SessionView,
        remote: Option<RemoteAddr>,
        method: Method,
        path: &str,
        body: Option<Value>,
        step_up: &StepUp,
    ) -> Result<Value, Refusal> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/admin/v1{path}"));
        if !step_up.totp.is_empty() {
            request = request
                .header(USER_HEADER, step_up.user.trim())
                .header(TOTP_HEADER, step_up.totp.trim());
        }
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).map_err(|e| Refusal {
            status: 400,
            code: ErrorCode::BadRequest.as_str().to_string(),
            message: format!("the request cannot be made: {e}"),
        })?;
        if let Some(remote) = remote {
            request.extensions_mut().insert(remote);
        }
        // The session's credential, as the session row resolved it: only
        // in-process callers can put an extension on a request.
        request
            .extensions_mut()
            .insert(ConsoleCaller(session.identity.clone()));
        let response = match self.service.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = to_bytes(response.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| internal(format!("the API answer could not be read: {e}")))?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| internal(format!("the API answer is not JSON: {e}")))?
        };
        if status.is_success() {
            return Ok(value);
        }
        Err(Refusal {
            status: status.as_u16(),
            code: value["error"]["code"]
                .as_str()
                .unwrap_or(if status == StatusCode::METHOD_NOT_ALLOWED {
                    "method_not_allowed"
                } else {
                    "internal"
                })
                .to_string(),
            message: value["error"]["message"]
                .as_str()
                .unwrap_or("the admin API refused the call")
                .to_string(),
        })
    }
}

fn internal(message: String) -> Refusal {
    tracing::error!(error = %message, "console: admin API call failed");
    Refusal {
        status: 500,
        code: ErrorCode::Internal.as_str().to_string(),
        message: "internal error".to_string(),
    }
}
