//! The one place where a refusal becomes an HTTP response. Every stage ends a
//! request by returning a [`Denial`]; this module turns it into the documented
//! JSON error (`docs/errors.md`). Messages are written for clients: they never
//! carry internal detail, secrets or key material.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use portcullis_core::{ErrorCode, RequestId};

use crate::body::BoxError;

/// The body type of every gateway response.
pub type ResponseBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A typed end to a request, produced by a pipeline stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The stable error code.
    pub code: ErrorCode,
    /// A human message, safe to show the client.
    pub message: String,
    /// Deciding policy ids, for policy denials.
    pub policies: Vec<String>,
    /// Seconds until a retry can succeed (`budget_exceeded`): the error's
    /// `retry_after` and the `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl Denial {
    /// A denial with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Denial {
            code,
            message: message.into(),
            policies: Vec::new(),
            retry_after: None,
        }
    }
}

/// The header carrying the request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The JSON error response for `denial`.
pub fn error_response(request_id: &RequestId, denial: &Denial) -> Response<ResponseBody> {
    let mut error = serde_json::json!({
        "code": denial.code.as_str(),
        "message": denial.message,
        "request_id": request_id.as_str(),
    });
    if !denial.policies.is_empty() {
        error["policies"] = serde_json::json!(denial.policies);
    }
    if let Some(seconds) = denial.retry_after {
        error["retry_after"] = serde_json::json!(seconds);
    }
    let body = serde_json::json!({ "error": error }).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(denial.code.http_status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    if let Some(seconds) = denial.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn denial_json_shape() {
        let id = RequestId::new();
        let mut d = Denial::new(ErrorCode::Forbidden, "denied by policy");
        d.policies = vec!["default-deny".into()];
        let resp = error_response(&id, &d);
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()[REQUEST_ID_HEADER], id.as_str());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "forbidden");
        assert_eq!(v["error"]["request_id"], id.as_str());
        assert_eq!(v["error"]["policies"][0], "default-deny");
    }
}
