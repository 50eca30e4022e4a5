//! Logging in at an OIDC issuer on the authorization page: "Log in with
//! <issuer> and allow" (`start`) sends the browser to the issuer with a login
//! of the relying party (`portcullis_control::oidc_login`) whose purpose
//! names the pending authorization; `GET /oauth2/authorize/callback`
//! (`serve_callback`) finishes it and, for the verified user, hands the
//! client its code exactly as a local user's login does. The code acts for
//! that user with their issuer and groups.
//!
//! The login is bound to the browser that pressed the button by a cookie
//! holding its state (`SameSite=Lax`: the issuer's redirect back is a
//! cross-site navigation): a user lured straight to the issuer's URL by
//! someone else's pending authorization is refused at the callback, having
//! never seen the consent page.

use http::{HeaderValue, Response, StatusCode, header};
use portcullis_audit::Outcome;
use portcullis_control::oidc_login::{Callback, LoginError, RelyingParty, cookie};
use portcullis_core::ErrorCode;

use super::authorize::{redirect, refused};
use super::{AuthorizationRequest, CALLBACK_PATH, LoginUser, configured};
use crate::body::Recorder;
use crate::pipeline::decode::DecodedRequest;
use crate::respond::{Denial, ResponseBody, full};
use crate::state::Gateway;

/// The login page's decision value for issuer N: `oidc-N`.
pub(super) const OIDC_DECISION: &str = "oidc-";
/// The cookie binding an issuer login to the browser.
const STATE_COOKIE: &str = "__Host-portcullis-authorize";
/// The purpose of the relying party's logins started here: this prefix and
/// the pending authorization's login id.
const PURPOSE_PREFIX: &str = "authorize:";

fn relying_party(gateway: &Gateway) -> Result<&RelyingParty, Denial> {
    gateway.tokens.login.as_deref().ok_or_else(|| {
        Denial::new(
            ErrorCode::BadRequest,
            "no OIDC issuer is configured for logging in here",
        )
    })
}

fn state_cookie(value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{STATE_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The login page's "Log in with <issuer> and allow": off to the issuer.
pub(super) async fn start(
    gateway: &Gateway,
    request: &AuthorizationRequest,
    login_id: &str,
    index: &str,
    now: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    let rp = relying_party(gateway)?;
    let index: usize = index
        .parse()
        .map_err(|_| Denial::new(ErrorCode::BadRequest, "unknown login issuer"))?;
    let redirect_uri = format!("{}{CALLBACK_PATH}", gateway.tokens.issuer_url());
    let started = rp
        .start(
            index,
            &redirect_uri,
            &format!("{PURPOSE_PREFIX}{login_id}"),
            now,
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "authorization endpoint: cannot start an OIDC login");
            Denial::new(ErrorCode::Unavailable, e.to_string())
        })?;
    let record = recorder.record();
    record.outcome = Outcome::Allow;
    record.credential = Some(format!(
        "client={} login at {}",
        request.client_id,
        rp.issuer_url(index).unwrap_or_default()
    ));
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&started.authorize_url) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(
        header::SET_COOKIE,
        state_cookie(&started.state, portcullis_control::oidc_login::LOGIN_TTL),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /oauth2/authorize/callback`: the issuer's answer.
pub(crate) async fn serve_callback(
    gateway: &Gateway,
    decoded: DecodedRequest,
    now: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    recorder.record().resource = Some("oauth2_authorize".into());
    let server = configured(gateway)?;
    let rp = relying_party(gateway)?;
    if decoded.parts.method != http::Method::GET {
        return Err(Denial::new(ErrorCode::MethodNotAllowed, "use GET"));
    }
    if !gateway.sink.writable() {
        return Err(Denial::new(
            ErrorCode::AuditUnavailable,
            "the audit log cannot be written; no authorization is granted unrecorded",
        ));
    }
    let answer: Callback =
        serde_urlencoded::from_str(decoded.target.query.as_deref().unwrap_or(""))
            .map_err(|_| Denial::new(ErrorCode::BadRequest, "the callback is not a valid query"))?;
    let state = answer.state.as_deref().unwrap_or_default();
    // The login names the authorization it belongs to.
    let purpose = rp.purpose(state, now).await.unwrap_or_default();
    let login_id = purpose.strip_prefix(PURPOSE_PREFIX).unwrap_or_default();
    let bound = cookie(&decoded.parts.headers, STATE_COOKIE);
    let outcome = rp.finish(&answer, bound.as_deref(), &purpose, now).await;
    let request = if login_id.is_empty() {
        None
    } else {
        server.pending(&gateway.store, login_id, now).await?
    };
    let Some(request) = request else {
        return Err(Denial::new(
            ErrorCode::BadRequest,
            "this login is unknown, expired or was already completed; start the authorization again",
        ));
    };
    let logged_in = match outcome {
        Ok(l) => l,
        Err(e @ (LoginError::UnknownState | LoginError::OtherBrowser)) => {
            // Not this browser's login: nothing goes to the client.
            let record = recorder.record();
            record.outcome = Outcome::Deny;
            record.error_code = Some(ErrorCode::InvalidCredential.as_str().to_string());
            record.credential = Some(format!("client={} oidc login refused", request.client_id));
            return Err(Denial::new(ErrorCode::InvalidCredential, e.to_string()));
        }
        Err(e) => {
            tracing::info!(error = %e, "authorization endpoint: OIDC login refused");
            server.end_login(&gateway.store, login_id, now).await?;
            let denial = Denial::new(ErrorCode::InvalidCredential, e.to_string());
            return Ok(refused(gateway, &request, &denial, recorder));
        }
    };
    let user = LoginUser {
        name: logged_in.id.user.sub.clone(),
        issuer: Some(logged_in.issuer.clone()),
        groups: logged_in.id.user.groups.clone(),
        mfa: logged_in.id.user.mfa,
    };
    if gateway.tokens.revocations.user_disabled(&user.name) {
        server.end_login(&gateway.store, login_id, now).await?;
        let denial = Denial::new(ErrorCode::Forbidden, "this user is disabled");
        return Ok(refused(gateway, &request, &denial, recorder));
    }
    // Taken out once: a login page answered twice (on any replicas) gets
    // one code.
    if server
        .end_login(&gateway.store, login_id, now)
        .await?
        .is_none()
    {
        return Err(Denial::new(
            ErrorCode::BadRequest,
            "this authorization was already answered; start it again",
        ));
    }
    let code = server
        .issue_code(&gateway.store, request.clone(), user.clone(), now)
        .await?;
    let record = recorder.record();
    record.outcome = Outcome::Allow;
    record.credential = Some(format!(
        "client={} user={} (oidc {}) granted resource={} scope={}",
        request.client_id, user.name, logged_in.issuer, request.resource, request.scope
    ));
    let mut response = redirect(gateway, &request, &[("code", &code)]);
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state_cookie("", 0));
    Ok(response)
}
