//! `/oauth2/authorize`: `GET` checks an authorization request and answers the
//! login and consent page; `POST` takes the page's answer (a local user's
//! name and TOTP code, Allow or Deny) and redirects back to the client.
//!
//! RFC 6749 §4.1.2.1: until the client and its redirect URI are known good,
//! a problem is answered here (RFC 6749 JSON, never a redirect: an open
//! redirector otherwise); after that, in the redirect (`error`, `state`,
//! `iss`). Either way the record says what was refused.

use http::{HeaderValue, Method, Response, StatusCode, header};
use portcullis_audit::Outcome;
use portcullis_control::local_users::CodeCheck;
use portcullis_core::ErrorCode;
use serde::Deserialize;

use super::page::login_page;
use super::{AuthorizationRequest, SCOPE, configured, pkce_value_ok, route_resource};
use crate::attempts::AttemptKey;
use crate::body::Recorder;
use crate::pipeline::decode::DecodedRequest;
use crate::respond::{Denial, ResponseBody, full};
use crate::state::{ConnectionState, Gateway};

/// The `kind` of failed logins in the attempt throttle and metrics.
const LOGIN_KIND: &str = "login";
/// Longest `state` echoed back (it travels in a URL).
const MAX_STATE: usize = 512;

/// The query of an authorization request.
#[derive(Debug, Deserialize)]
struct Query {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    resource: Option<String>,
}

/// The login page's answer.
#[derive(Debug, Deserialize)]
struct LoginForm {
    login: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    totp: String,
    decision: String,
}

/// Serves `/oauth2/authorize`.
pub(crate) async fn serve_authorize(
    gateway: &Gateway,
    conn: &ConnectionState,
    decoded: DecodedRequest,
    now: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    recorder.record().resource = Some("oauth2_authorize".into());
    let server = configured(gateway)?;
    if decoded.parts.method == Method::GET {
        let query: Query = serde_urlencoded::from_str(
            decoded.target.query.as_deref().unwrap_or(""),
        )
        .map_err(|_| {
            Denial::new(
                ErrorCode::BadRequest,
                "the authorization request is not a valid query",
            )
        })?;
        let request = match check_request(gateway, server, query, now).await? {
            Ok(request) => request,
            Err((request, denial)) => return Ok(refused(gateway, &request, &denial, recorder)),
        };
        let login = server.begin_login(&gateway.store, &request, now).await?;
        let record = recorder.record();
        record.outcome = Outcome::Allow;
        record.credential = Some(format!("client={} login page", request.client_id));
        Ok(login_page(&request, &login, issuers(gateway), None))
    } else if decoded.parts.method == Method::POST {
        if !gateway.sink.writable() {
            return Err(Denial::new(
                ErrorCode::AuditUnavailable,
                "the audit log cannot be written; no authorization is granted unrecorded",
            ));
        }
        let body = crate::oauth::read_form(decoded.body, &decoded.parts.headers).await?;
        let form: LoginForm = serde_urlencoded::from_bytes(&body)
            .map_err(|_| Denial::new(ErrorCode::BadRequest, "the login form is not valid"))?;
        login(gateway, server, conn, form, now, recorder).await
    } else {
        Err(Denial::new(ErrorCode::MethodNotAllowed, "use GET or POST"))
    }
}

/// The OIDC issuers users may log in at instead, as (index, button name).
pub(super) fn issuers(gateway: &Gateway) -> Vec<(usize, String)> {
    gateway
        .tokens
        .login
        .as_deref()
        .map(|rp| rp.issuers().map(|(i, n)| (i, n.to_string())).collect())
        .unwrap_or_default()
}

/// A redirect back to the client with `params` (and `state`, `iss`).
pub(super) fn redirect(
    gateway: &Gateway,
    request: &AuthorizationRequest,
    params: &[(&str, &str)],
) -> Response<ResponseBody> {
    let mut all: Vec<(&str, &str)> = params.to_vec();
    if let Some(state) = &request.state {
        all.push(("state", state));
    }
    // RFC 9207: the client checks who answered.
    all.push(("iss", gateway.tokens.issuer_url()));
    let query = serde_urlencoded::to_string(&all).unwrap_or_default();
    let separator = if request.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{}{separator}{query}", request.redirect_uri);
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A refusal sent back in the redirect, recorded with its code.
pub(super) fn refused(
    gateway: &Gateway,
    request: &AuthorizationRequest,
    denial: &Denial,
    recorder: &mut Recorder,
) -> Response<ResponseBody> {
    let error = match denial.code {
        ErrorCode::InvalidTarget => "invalid_target",
        ErrorCode::InvalidScope => "invalid_scope",
        ErrorCode::Forbidden => "access_denied",
        ErrorCode::UnsupportedGrantType => "unsupported_response_type",
        ErrorCode::Unavailable => "temporarily_unavailable",
        _ => "invalid_request",
    };
    let record = recorder.record();
    record.outcome = Outcome::Deny;
    record.error_code = Some(denial.code.as_str().to_string());
    record.credential = Some(format!("client={}", request.client_id));
    redirect(
        gateway,
        request,
        &[("error", error), ("error_description", &denial.message)],
    )
}

/// Checks an authorization request. The outer error is answered here (no
/// trustworthy redirect URI yet); the inner one in the redirect.
#[allow(clippy::type_complexity)]
async fn check_request(
    gateway: &Gateway,
    server: &super::AuthorizationServer,
    query: Query,
    now: i64,
) -> Result<Result<AuthorizationRequest, (AuthorizationRequest, Denial)>, Denial> {
    let client_id = query.client_id.unwrap_or_default();
    let client = super::live_client(gateway, server, &client_id, now).await?;
    let redirect_uri = match (query.redirect_uri, client.redirect_uris.as_slice()) {
        (Some(uri), registered) if registered.contains(&uri) => uri,
        // RFC 6749 §3.1.2.3: omitted only when exactly one is registered.
        (None, [only]) => only.clone(),
        _ => {
            return Err(Denial::new(
                ErrorCode::InvalidRedirectUri,
                "`redirect_uri` is not one the client registered",
            ));
        }
    };
    let state = query.state.filter(|s| !s.is_empty());
    let mut request = AuthorizationRequest {
        client_id,
        client_name: client.client_name,
        redirect_uri,
        state: state.clone(),
        code_challenge: String::new(),
        resource: String::new(),
        scope: SCOPE.into(),
    };
    if state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
        request.state = None;
        let denial = Denial::new(
            ErrorCode::BadRequest,
            format!("`state` must be at most {MAX_STATE} bytes"),
        );
        return Ok(Err((request, denial)));
    }
    let refuse = |request: AuthorizationRequest, code: ErrorCode, message: &str| {
        Ok(Err((request, Denial::new(code, message))))
    };
    if query.response_type.as_deref() != Some("code") {
        return refuse(
            request,
            ErrorCode::UnsupportedGrantType,
            "`response_type` must be `code`",
        );
    }
    // PKCE is required, and S256 only (OAuth 2.1; MCP authorization).
    match (query.code_challenge, query.code_challenge_method.as_deref()) {
        (Some(challenge), Some("S256")) if pkce_value_ok(&challenge) => {
            request.code_challenge = challenge;
        }
        _ => {
            return refuse(
                request,
                ErrorCode::BadRequest,
                "PKCE is required: `code_challenge` (43 base64url characters) with `code_challenge_method=S256`",
            );
        }
    }
    match query
        .resource
        .as_deref()
        .map(|r| route_resource(gateway, r))
    {
        Some(Ok(resource)) => request.resource = resource,
        Some(Err(denial)) => return Ok(Err((request, denial))),
        None => {
            return refuse(
                request,
                ErrorCode::InvalidTarget,
                "`resource` (RFC 8707) is required: the URL of the route the token is for",
            );
        }
    }
    if let Some(scope) = query.scope
        && !scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .all(|s| s == SCOPE)
    {
        return refuse(
            request,
            ErrorCode::InvalidScope,
            "the only scope offered is `mcp`: policy decides what the token may do",
        );
    }
    Ok(Ok(request))
}

fn answered() -> Denial {
    Denial::new(
        ErrorCode::BadRequest,
        "this login page expired or was already answered; start the authorization again",
    )
}

/// Takes the login page's answer.
async fn login(
    gateway: &Gateway,
    server: &super::AuthorizationServer,
    conn: &ConnectionState,
    form: LoginForm,
    now: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    let Some(request) = server.pending(&gateway.store, &form.login, now).await? else {
        return Err(answered());
    };
    if let Some(index) = form.decision.strip_prefix(super::callback::OIDC_DECISION) {
        return super::callback::start(gateway, &request, &form.login, index, now, recorder).await;
    }
    if form.decision != "allow" {
        server.end_login(&gateway.store, &form.login, now).await?;
        let denial = Denial::new(ErrorCode::Forbidden, "the user denied the authorization");
        return Ok(refused(gateway, &request, &denial, recorder));
    }
    let user = form.user.trim();
    recorder.record().credential = Some(format!("client={} user={user}", request.client_id));
    let source = AttemptKey::Source(conn.remote.ip());
    let keys = [AttemptKey::Principal(user), source];
    if let Err(t) = gateway.attempts.check(LOGIN_KIND, &keys) {
        gateway.metrics.auth_throttled(LOGIN_KIND);
        let mut denial = Denial::new(
            ErrorCode::TooManyAttempts,
            "too many failed logins: back off before the next attempt; the code was not checked",
        );
        denial.detail = Some(crate::respond::DenialDetail::RetryAfter(t.retry_after));
        return Err(denial);
    }
    let Some(seal) = gateway.tokens.local_users.as_deref() else {
        return Err(Denial::new(
            ErrorCode::Unavailable,
            "no local users can log in on this gateway",
        ));
    };
    let check = seal
        .check_code(&gateway.store, user, &form.totp, now.max(0) as u64)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot check a login");
            Denial::new(
                ErrorCode::Unavailable,
                "logins cannot be checked; retry shortly",
            )
        })?;
    let refusal = match check {
        CodeCheck::Accepted { .. } if gateway.tokens.revocations.user_disabled(user) => {
            Some("this user is disabled")
        }
        CodeCheck::Accepted { .. } => None,
        CodeCheck::Refused => Some("the user or the TOTP code was refused"),
        CodeCheck::Replayed => Some("this TOTP code was already used; wait for the next one"),
    };
    if let Some(message) = refusal {
        let failure = gateway.attempts.failure(LOGIN_KIND, &keys);
        gateway.metrics.auth_failure(LOGIN_KIND, failure.locked_now);
        if failure.locked_now {
            tracing::warn!(user, source = %conn.remote.ip(), "authorization endpoint: login locked out after too many failures");
            gateway.raise_lockout_alert(LOGIN_KIND, &format!("user:{user}"), conn.remote.ip());
        }
        let record = recorder.record();
        record.outcome = Outcome::Deny;
        record.error_code = Some(ErrorCode::InvalidTotp.as_str().to_string());
        // The page again, with the refusal: the user may retry.
        return Ok(login_page(
            &request,
            &form.login,
            issuers(gateway),
            Some(message),
        ));
    }
    gateway.attempts.success(LOGIN_KIND, &keys);
    // Taken out once: of two answers to one page (on any replicas), only
    // the first gets a code.
    if server
        .end_login(&gateway.store, &form.login, now)
        .await?
        .is_none()
    {
        return Err(answered());
    }
    let code = server
        .issue_code(
            &gateway.store,
            request.clone(),
            super::LoginUser::local(user),
            now,
        )
        .await?;
    let record = recorder.record();
    record.outcome = Outcome::Allow;
    record.credential = Some(format!(
        "client={} user={user} granted resource={} scope={}",
        request.client_id, request.resource, request.scope
    ));
    Ok(redirect(gateway, &request, &[("code", &code)]))
}
