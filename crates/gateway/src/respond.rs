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
    /// What else the client needs to act on the refusal.
    pub detail: Option<DenialDetail>,
}

/// Extra facts some refusals carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenialDetail {
    /// `rate_limited`: seconds until a retry can succeed (`Retry-After`).
    RetryAfter(u64),
    /// `approval_required`: the approval ticket and when it lapses.
    Ticket {
        /// The ticket id.
        id: String,
        /// Milliseconds since the epoch.
        expires_ms: i64,
    },
    /// A 401: what its `WWW-Authenticate` challenges say (boxed: it is
    /// filled only at the edge, and keeps every `Denial` small).
    Challenge(Box<Challenge>),
}

/// How a request presented its access token, for the challenge of a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Presented {
    /// No `Authorization` the gateway reads as a token.
    #[default]
    Nothing,
    /// `Authorization: Bearer …`.
    Bearer,
    /// `Authorization: DPoP …`.
    Dpop,
}

impl Presented {
    /// The scheme of a request's `Authorization` header.
    pub fn of(headers: &http::HeaderMap) -> Self {
        let scheme = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .map(|(scheme, _)| scheme);
        match scheme {
            Some(s) if s.eq_ignore_ascii_case("bearer") => Presented::Bearer,
            Some(s) if s.eq_ignore_ascii_case("dpop") => Presented::Dpop,
            _ => Presented::Nothing,
        }
    }
}

/// The `WWW-Authenticate` challenges of a 401 (RFC 6750 §3, RFC 9449 §7.1):
/// one `Bearer` and one `DPoP` challenge, the refused scheme's carrying the
/// error, and a fresh `DPoP-Nonce` (RFC 9449 §9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Challenge {
    /// The scheme the request used.
    pub presented: Presented,
    /// A nonce for the client's next DPoP proof.
    pub nonce: Option<String>,
    /// The RFC 9728 metadata URL of the protected resource, when it has one.
    pub resource_metadata: Option<String>,
}

/// The realm of every challenge.
const REALM: &str = "portcullis";

/// A quoted-string value (RFC 9110 §5.6.4): quotes, backslashes and
/// controls dropped rather than escaped, so no client parser trips on them.
fn quoted(value: &str) -> String {
    let clean: String = value
        .chars()
        .filter(|c| !matches!(c, '"' | '\\') && !c.is_control())
        .take(200)
        .collect();
    format!("\"{clean}\"")
}

/// The OAuth error of a 401's code, in the challenge of the scheme that was
/// refused (none when nothing was presented, RFC 6750 §3.1).
fn challenge_error(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::InvalidToken | ErrorCode::InvalidCredential | ErrorCode::AgentRevoked => {
            Some("invalid_token")
        }
        ErrorCode::InvalidDpopProof => Some("invalid_dpop_proof"),
        ErrorCode::UseDpopNonce => Some("use_dpop_nonce"),
        _ => None,
    }
}

/// Adds the challenges of a 401 to `headers`.
fn add_challenges(headers: &mut http::HeaderMap, denial: &Denial, challenge: &Challenge) {
    let error = challenge_error(denial.code).map(|e| {
        format!(
            ", error={}, error_description={}",
            quoted(e),
            quoted(&denial.message)
        )
    });
    let metadata = challenge
        .resource_metadata
        .as_deref()
        .map(|url| format!(", resource_metadata={}", quoted(url)))
        .unwrap_or_default();
    let on = |scheme: Presented| {
        let asked = challenge.presented == scheme
            || (scheme == Presented::Dpop && denial.code == ErrorCode::UseDpopNonce);
        error.as_deref().filter(|_| asked)
    };
    let (bearer_error, dpop_error) = (on(Presented::Bearer), on(Presented::Dpop));
    let bearer = format!(
        "Bearer realm={}{metadata}{}",
        quoted(REALM),
        bearer_error.unwrap_or_default()
    );
    let dpop = format!(
        "DPoP realm={}, algs={}{metadata}{}",
        quoted(REALM),
        quoted(&portcullis_identity::CLIENT_SIGNING_ALGS.join(" ")),
        dpop_error.unwrap_or_default()
    );
    for value in [bearer, dpop] {
        // A value no header can carry loses its parameters, not the challenge.
        let v = HeaderValue::from_str(&value)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"portcullis\""));
        headers.append(header::WWW_AUTHENTICATE, v);
    }
    if let Some(nonce) = challenge.nonce.as_deref()
        && let Ok(v) = HeaderValue::from_str(nonce)
    {
        headers.insert(DPOP_NONCE_HEADER, v);
    }
}

/// The header carrying a server-issued DPoP nonce (RFC 9449 §8).
pub const DPOP_NONCE_HEADER: &str = "dpop-nonce";

impl Denial {
    /// A denial with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Denial {
            code,
            message: message.into(),
            policies: Vec::new(),
            detail: None,
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
    if let Some(DenialDetail::RetryAfter(seconds)) = &denial.detail {
        error["retry_after"] = serde_json::json!(seconds);
    }
    if let Some(DenialDetail::Ticket { id, expires_ms }) = &denial.detail {
        error["ticket"] = serde_json::json!(id);
        error["ticket_expires_ms"] = serde_json::json!(expires_ms);
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
    if let Some(DenialDetail::RetryAfter(seconds)) = &denial.detail {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
    }
    // Every 401 says how to authenticate (RFC 9110 §15.5.2).
    if response.status() == StatusCode::UNAUTHORIZED {
        let challenge = match &denial.detail {
            Some(DenialDetail::Challenge(c)) => c.as_ref().clone(),
            _ => Challenge::default(),
        };
        add_challenges(response.headers_mut(), denial, &challenge);
    }
    response
}

/// The OAuth error (RFC 6749 §5.2, RFC 9449 §5) and HTTP status a refusal at
/// the token endpoint is answered with.
fn oauth_error(code: ErrorCode) -> (&'static str, StatusCode) {
    match code {
        ErrorCode::InvalidClient | ErrorCode::AgentRevoked | ErrorCode::InvalidCredential => {
            ("invalid_client", StatusCode::UNAUTHORIZED)
        }
        ErrorCode::InvalidGrant => ("invalid_grant", StatusCode::BAD_REQUEST),
        // The registration endpoint's initial access token (RFC 7591 §3
        // answers as RFC 6750 does).
        ErrorCode::InvalidToken => ("invalid_token", StatusCode::UNAUTHORIZED),
        ErrorCode::InvalidTarget => ("invalid_target", StatusCode::BAD_REQUEST),
        ErrorCode::InvalidScope => ("invalid_scope", StatusCode::BAD_REQUEST),
        ErrorCode::InvalidRedirectUri => ("invalid_redirect_uri", StatusCode::BAD_REQUEST),
        ErrorCode::InvalidClientMetadata => ("invalid_client_metadata", StatusCode::BAD_REQUEST),
        ErrorCode::UnsupportedGrantType => ("unsupported_grant_type", StatusCode::BAD_REQUEST),
        ErrorCode::InvalidDpopProof => ("invalid_dpop_proof", StatusCode::BAD_REQUEST),
        ErrorCode::UseDpopNonce => ("use_dpop_nonce", StatusCode::BAD_REQUEST),
        ErrorCode::Quarantined => ("unauthorized_client", StatusCode::BAD_REQUEST),
        ErrorCode::TooManyAttempts => ("temporarily_unavailable", StatusCode::TOO_MANY_REQUESTS),
        ErrorCode::Unavailable
        | ErrorCode::AuditUnavailable
        | ErrorCode::StoreUnavailable
        | ErrorCode::ServerBusy => ("temporarily_unavailable", StatusCode::SERVICE_UNAVAILABLE),
        ErrorCode::Internal => ("server_error", StatusCode::INTERNAL_SERVER_ERROR),
        other => (
            "invalid_request",
            StatusCode::from_u16(other.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        ),
    }
}

/// The error response of the OAuth endpoints (`/oauth2/token`,
/// `/.well-known/…`): RFC 6749 §5.2's `error` and `error_description`, which
/// OAuth libraries read, plus Portcullis's stable `code` and `request_id`.
pub fn oauth_error_response(
    request_id: &RequestId,
    denial: &Denial,
    nonce: Option<&str>,
) -> Response<ResponseBody> {
    let (error, status) = oauth_error(denial.code);
    let mut body = serde_json::json!({
        "error": error,
        "error_description": denial.message,
        "code": denial.code.as_str(),
        "request_id": request_id.as_str(),
    });
    if let Some(DenialDetail::RetryAfter(seconds)) = &denial.detail {
        body["retry_after"] = serde_json::json!(seconds);
    }
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(DenialDetail::RetryAfter(seconds)) = &denial.detail {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
    }
    if let Some(nonce) = nonce
        && let Ok(v) = HeaderValue::from_str(nonce)
    {
        headers.insert(DPOP_NONCE_HEADER, v);
    }
    if status == StatusCode::UNAUTHORIZED {
        // The client authenticates by assertion, which has no scheme of its
        // own; the challenge names the realm so every 401 carries one.
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer realm={}", quoted(REALM))) {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
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

    fn challenges(denial: &Denial) -> Vec<String> {
        let resp = error_response(&RequestId::new(), denial);
        resp.headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn every_401_challenges() {
        // Nothing presented: both schemes offered, no error (RFC 6750 §3.1).
        let bare = Denial::new(ErrorCode::Unauthenticated, "no credential");
        assert_eq!(
            challenges(&bare),
            [
                r#"Bearer realm="portcullis""#,
                r#"DPoP realm="portcullis", algs="EdDSA Ed25519 ES256""#
            ]
        );
        // A refused bearer token: the error on the Bearer challenge.
        let mut d = Denial::new(ErrorCode::InvalidToken, "access token refused: \"expired\"");
        d.detail = Some(DenialDetail::Challenge(Box::new(Challenge {
            presented: Presented::Bearer,
            nonce: None,
            resource_metadata: Some("https://gw/.well-known/oauth-protected-resource/mcp".into()),
        })));
        let c = challenges(&d);
        assert_eq!(
            c[0],
            r#"Bearer realm="portcullis", resource_metadata="https://gw/.well-known/oauth-protected-resource/mcp", error="invalid_token", error_description="access token refused: expired""#
        );
        assert!(!c[1].contains("error="), "{c:?}");
        // A DPoP nonce is asked for on the DPoP challenge, with the nonce.
        let mut d = Denial::new(ErrorCode::UseDpopNonce, "use the nonce");
        d.detail = Some(DenialDetail::Challenge(Box::new(Challenge {
            presented: Presented::Dpop,
            nonce: Some("n1".into()),
            resource_metadata: None,
        })));
        let resp = error_response(&RequestId::new(), &d);
        assert_eq!(resp.headers()[DPOP_NONCE_HEADER], "n1");
        let c = challenges(&d);
        assert!(c[1].contains(r#"error="use_dpop_nonce""#), "{c:?}");
        assert!(!c[0].contains("error="), "{c:?}");
        // Not a 401: no challenge.
        assert!(challenges(&Denial::new(ErrorCode::Forbidden, "no")).is_empty());
    }

    #[tokio::test]
    async fn oauth_errors_follow_rfc_6749() {
        let id = RequestId::new();
        let resp = oauth_error_response(
            &id,
            &Denial::new(
                ErrorCode::InvalidClient,
                "client assertion refused: expired",
            ),
            None,
        );
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "invalid_client");
        assert_eq!(v["error_description"], "client assertion refused: expired");
        assert_eq!(v["code"], "invalid_client");
        let resp = oauth_error_response(
            &id,
            &Denial::new(ErrorCode::UseDpopNonce, "nonce"),
            Some("n2"),
        );
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()[DPOP_NONCE_HEADER], "n2");
        assert_eq!(
            oauth_error(ErrorCode::BadRequest),
            ("invalid_request", StatusCode::BAD_REQUEST)
        );
    }
}
