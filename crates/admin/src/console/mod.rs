//! The web console on the admin listener (`/console`): server-rendered HTML
//! pages over the admin API, with a small script for what a page can do
//! better live (the decision stream, refreshing queues, confirmations).
//! Every page works without the script.
//!
//! One job per file: `session.rs` (login sessions, cookies, CSRF tokens,
//! expiry and [`session::may`], the one authorisation question), `internal.rs`
//! (calls into the admin API router in process: every read and every action
//! goes through the API's own handlers, authentication, step-up and audit),
//! `pages.rs` (the pages), `actions.rs` (the forms' handlers), `live.rs`
//! (the server-sent decision stream), `svg.rs` (the risk timeline and the
//! data-flow graph), `html.rs` (escaping and the page frame) and `assets.rs`
//! (the stylesheet and script, embedded in the binary).
//!
//! Security: the session cookie is `HttpOnly; Secure; SameSite=Strict` with
//! the `__Host-` prefix; every form carries the session's CSRF token (the
//! login form a double-submit nonce) and a form without it is refused (403
//! `forbidden`, audited); every answer carries a CSP without inline script or
//! style and with no third-party origin; sessions end after 15 minutes idle,
//! 8 hours in all, or at logout.

mod actions;
mod assets;
mod ceremonies;
mod diff;
mod html;
mod internal;
mod live;
mod oidc;
mod pages;
mod passkey_login;
mod passkeys;
mod session;
mod svg;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use portcullis_audit::Outcome;
use portcullis_core::ErrorCode;

use crate::api::{AdminState, Call, ClientCertificate, RemoteAddr};
use crate::credentials::AdminCredentials;
pub(crate) use internal::{Api, ConsoleCaller};
pub use oidc::ConsoleLogin;
use session::{
    ABSOLUTE_TIMEOUT, LOGIN_COOKIE, Permission, SESSION_COOKIE, SessionView, Sessions,
    clear_cookie, cookie, may, random_hex, same_token, set_cookie,
};

/// The policy every console answer carries: only this origin's script,
/// style and connections; no inline script or style, no framing, no plugins,
/// forms only to this origin.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The largest form the console accepts (the explain form is the biggest).
const MAX_FORM: usize = 64 * 1024;

/// What the console's handlers share.
pub(crate) struct Console {
    sessions: Sessions,
    api: Api,
    /// The live admin credentials: a session lasts only while its
    /// credential does, with the credential's current role.
    credentials: Arc<AdminCredentials>,
    /// Logging in at OIDC issuers, when configured.
    login: Option<Arc<ConsoleLogin>>,
    /// Passkey challenges outstanding (in the store: any replica may
    /// take the answer).
    ceremonies: ceremonies::Ceremonies,
}

/// The console's routes; `api` is the admin API they call, `store` keeps
/// the sessions, `oidc_login` logs humans in at OIDC issuers when configured.
pub(crate) fn routes(
    api: Api,
    credentials: Arc<AdminCredentials>,
    store: portcullis_store::Store,
    oidc_login: Option<Arc<ConsoleLogin>>,
) -> Router<AdminState> {
    let console = Arc::new(Console {
        sessions: Sessions::new(store.clone(), Arc::clone(&credentials)),
        api,
        credentials,
        login: oidc_login,
        ceremonies: ceremonies::Ceremonies::new(store),
    });
    Router::new()
        .route("/console", get(pages::overview))
        .route("/console/login", get(login_form).post(login))
        .route("/console/login/oidc", get(oidc::start))
        .route(
            "/console/login/passkey/options",
            post(passkey_login::options),
        )
        .route("/console/login/passkey", post(passkey_login::finish))
        .route("/console/login/certificate", post(certificate_login))
        .route(oidc::CALLBACK_PATH, get(oidc::callback))
        .route("/console/logout", post(logout))
        .route("/console/events", get(live::events))
        .route("/console/agents", get(pages::agents))
        .route("/console/agents/{name}/revoke", post(actions::revoke_agent))
        .route(
            "/console/agents/{name}/release",
            post(actions::release_agent),
        )
        .route("/console/approvals", get(pages::approvals))
        .route("/console/approvals/{id}/approve", post(actions::approve))
        .route("/console/approvals/{id}/deny", post(actions::deny))
        .route("/console/alerts", get(pages::alerts))
        .route("/console/alerts/{id}/resolve", post(actions::resolve_alert))
        .route("/console/policies", get(pages::policies))
        .route("/console/policies/explain", post(actions::explain))
        .route("/console/policies/{version}", get(pages::policy_version))
        .route("/console/policies/{version}/whatif", post(actions::whatif))
        .route("/console/tools", get(pages::tools))
        .route("/console/tools/approve", post(actions::approve_tool))
        .route("/console/audit", get(pages::audit))
        .route("/console/inventory", get(pages::inventory))
        .route(
            "/console/step-up",
            get(passkeys::page_handler).post(passkeys::totp),
        )
        .route(
            "/console/passkeys/register/options",
            post(passkeys::register_options),
        )
        .route("/console/passkeys/register", post(passkeys::register))
        .route(
            "/console/passkeys/step-up/options",
            post(passkeys::step_up_options),
        )
        .route("/console/passkeys/step-up", post(passkeys::step_up))
        .route("/console/passkeys/remove", post(passkeys::remove))
        .route("/console/assets/{file}", get(assets::serve))
        .layer(Extension(console))
        .layer(middleware::from_fn(security_headers))
}

/// The headers of every console answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// An HTML answer.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A redirect after a form (POST, then GET: a reload does not repeat it).
fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)], "").into_response()
}

/// A page for a refusal the console itself makes.
fn refusal_page(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    html(
        status,
        html::page(
            "Refused",
            "",
            None,
            None,
            &format!(
                "<p class=\"flash error\" id=\"refusal\" data-code=\"{}\">{}</p>\
                 <p><a href=\"/console\">Back to the console</a></p>",
                code.as_str(),
                html::esc(message)
            ),
        ),
    )
}

/// The session of a page request that needs `permission`; without a live
/// session, the login page.
async fn viewer(
    console: &Console,
    headers: &HeaderMap,
    permission: Permission,
) -> Result<SessionView, Box<Response>> {
    let Some(session) = console.sessions.find(headers, &console.credentials).await else {
        return Err(Box::new(see_other("/console/login")));
    };
    if !may(&session, permission) {
        return Err(Box::new(refusal_page(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "your admin role may not see this page",
        )));
    }
    Ok(session)
}

/// A submitted form: its session (live, allowed `permission`, with the
/// right CSRF token) and its fields. A form without a valid token is
/// refused and the refusal audited.
pub(crate) struct Form {
    pub(crate) session: SessionView,
    pub(crate) fields: HashMap<String, String>,
    pub(crate) remote: Option<RemoteAddr>,
}

impl Form {
    pub(crate) fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

async fn submitted(
    console: &Console,
    state: &AdminState,
    call: &Call,
    req: &FormRequest,
    permission: Permission,
) -> Result<Form, Box<Response>> {
    let fields = req.fields();
    let session = console
        .sessions
        .find(&req.headers, &console.credentials)
        .await;
    let csrf_ok = session.as_ref().is_some_and(|s| {
        fields
            .get("csrf")
            .is_some_and(|submitted| same_token(submitted, &s.csrf))
    });
    if !csrf_ok {
        call.audit(
            &state.sink,
            "console.form",
            &req.path,
            Outcome::Deny,
            403,
            Some(ErrorCode::Forbidden),
        );
        return Err(Box::new(refusal_page(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this form has no valid CSRF token (or your session ended): reload the page and try again",
        )));
    }
    let Some(session) = session else {
        return Err(Box::new(see_other("/console/login")));
    };
    if !may(&session, permission) {
        // A form the page did not offer (forged, or a page from before a
        // role change): refused and recorded as the session's admin.
        call.acting_as(session.identity.clone()).audit(
            &state.sink,
            "console.form",
            &req.path,
            Outcome::Deny,
            403,
            Some(ErrorCode::Forbidden),
        );
        return Err(Box::new(refusal_page(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "your admin role may not do this",
        )));
    }
    Ok(Form {
        session,
        fields,
        remote: req.remote,
    })
}

/// The parts of a form request the checks need.
pub(crate) struct FormRequest {
    headers: HeaderMap,
    path: String,
    remote: Option<RemoteAddr>,
    body: Bytes,
    /// The host and port the browser reached the console at.
    authority: Option<http::uri::Authority>,
    /// The client certificate of the TLS connection (mTLS), if any.
    certificate: Option<ClientCertificate>,
}

/// The host and port a request reached the console at: the URI's authority
/// (HTTP/2), else the `Host` header; one with user information is refused.
fn authority(uri: &http::Uri, headers: &HeaderMap) -> Option<http::uri::Authority> {
    uri.authority()
        .cloned()
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse().ok())
        })
        .filter(|a: &http::uri::Authority| !a.as_str().contains('@'))
}

impl FormRequest {
    /// The form's fields (the last of a repeated name wins).
    fn fields(&self) -> HashMap<String, String> {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&self.body)
            .unwrap_or_default()
            .into_iter()
            .collect()
    }
}

/// `response` with the new session's cookie set and the login form's
/// cleared.
fn logged_in(mut response: Response, id: &str) -> Response {
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, id, ABSOLUTE_TIMEOUT),
    );
    headers.append(header::SET_COOKIE, clear_cookie(LOGIN_COOKIE));
    response
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for FormRequest {
    type Rejection = Response;

    async fn from_request(req: Request<Body>, state: &S) -> Result<Self, Self::Rejection> {
        let _ = state;
        let (parts, body) = req.into_parts();
        let remote = parts.extensions.get::<RemoteAddr>().copied();
        let certificate = parts.extensions.get::<ClientCertificate>().cloned();
        let path = parts.uri.path().to_string();
        let authority = authority(&parts.uri, &parts.headers);
        let body = axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| {
            refusal_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "the form is too large",
            )
        })?;
        Ok(FormRequest {
            headers: parts.headers,
            path,
            remote,
            body,
            authority,
            certificate,
        })
    }
}

async fn login_form(Extension(console): Extension<Arc<Console>>) -> Response {
    let nonce = random_hex();
    let mut response = html(StatusCode::OK, login_page(&console, &nonce, None));
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &nonce, std::time::Duration::from_secs(600)),
    );
    response
}

fn login_page(console: &Console, nonce: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| {
            format!(
                "<p class=\"flash error\" id=\"login-error\">{}</p>",
                html::esc(e)
            )
        })
        .unwrap_or_default();
    html::page(
        "Log in",
        "",
        None,
        None,
        &format!(
            "{error}{}<form method=\"post\" action=\"/console/login\" class=\"login\">\
             <input type=\"hidden\" name=\"login_nonce\" value=\"{}\">\
             <label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"off\" required autofocus></label>\
             <button type=\"submit\">Log in</button></form>\
             <p class=\"hint\">Paste the admin token (<code>admin.token</code> in the state directory). \
             It stays on the server for this session; the browser holds only a session cookie.</p>\
             <h2>With a passkey</h2><p class=\"passkey-login\">\
             <input id=\"passkey-admin\" name=\"admin\" placeholder=\"admin (optional)\" autocomplete=\"username webauthn\" size=\"16\">\
             <button type=\"button\" id=\"passkey-login\" data-options=\"/console/login/passkey/options\" \
             data-finish=\"/console/login/passkey\">Log in with a passkey</button></p>\
             <p id=\"passkey-status\" role=\"status\"></p>\
             <h2>With a client certificate</h2>\
             <form method=\"post\" action=\"/console/login/certificate\" class=\"login-certificate\">\
             <input type=\"hidden\" name=\"login_nonce\" value=\"{}\">\
             <button type=\"submit\">Log in with my client certificate</button></form>\
             <p class=\"hint\">For an admin certificate credential (<code>portcullis admin cert create</code>) \
             that your browser presented to this listener.</p>",
            oidc::buttons(console.login.as_deref()),
            html::esc(nonce),
            html::esc(nonce)
        ),
    )
}

/// The login form's nonce, when the form carries the one its cookie holds
/// (the double-submit CSRF check of the login forms).
fn login_nonce(headers: &HeaderMap, fields: &HashMap<String, String>) -> Option<String> {
    let c = cookie(headers, LOGIN_COOKIE)?;
    let f = fields.get("login_nonce")?;
    (!c.is_empty() && same_token(f, &c)).then_some(c)
}

async fn login(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    let fields = req.fields();
    if login_nonce(&req.headers, &fields).is_none() {
        call.audit(
            &state.sink,
            "console.login",
            "/console/login",
            Outcome::Deny,
            403,
            Some(ErrorCode::Forbidden),
        );
        return refusal_page(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this login form has no valid CSRF token: load the login page again",
        );
    }
    let token = fields.get("token").map(|t| t.trim()).unwrap_or_default();
    let Some(id) = console.sessions.login(token, &console.credentials).await else {
        return login_refused(
            &state,
            &console,
            &call,
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidCredential,
            "that is not a valid admin token",
        );
    };
    call.done(&state.sink, "console.login", "/console", 303);
    logged_in(see_other("/console"), &id)
}

/// A failed login: audited, and the login page again with why.
fn login_refused(
    state: &AdminState,
    console: &Console,
    call: &Call,
    status: StatusCode,
    code: ErrorCode,
    why: &str,
) -> Response {
    call.audit(
        &state.sink,
        "console.login",
        "/console/login",
        Outcome::Deny,
        status.as_u16(),
        Some(code),
    );
    let nonce = random_hex();
    let mut response = html(status, login_page(console, &nonce, Some(why)));
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &nonce, std::time::Duration::from_secs(600)),
    );
    response
}

/// `POST /console/login/certificate`: the admin certificate credential the
/// browser presented in this connection's TLS handshake (mTLS on the admin
/// listener) logs in, as its token would: the session acts as that
/// credential, with its role, until logout, its timeouts, the
/// credential's revocation or the certificate's end of validity.
async fn certificate_login(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    let fields = req.fields();
    if login_nonce(&req.headers, &fields).is_none() {
        return login_refused(
            &state,
            &console,
            &call,
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this login form has no valid CSRF token: load the login page again",
        );
    }
    let now = crate::api::now_ms() / 1000;
    let identity = req.certificate.as_ref().and_then(|c| {
        console
            .credentials
            .authenticate_certificate(&c.0, now)
            .map(|identity| (c, identity))
    });
    let Some((certificate, identity)) = identity else {
        return login_refused(
            &state,
            &console,
            &call,
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidCredential,
            "this browser presented no client certificate of a live admin credential",
        );
    };
    let Some(id) = console.sessions.login_credential(&certificate.0).await else {
        return login_refused(
            &state,
            &console,
            &call,
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the console cannot store a session; try again",
        );
    };
    call.acting_as(identity)
        .done(&state.sink, "console.login", "/console", 303);
    logged_in(see_other("/console"), &id)
}

async fn logout(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    let form = match submitted(&console, &state, &call, &req, Permission::View).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    console.sessions.end(&form.session).await;
    call.done(&state.sink, "console.logout", "/console", 303);
    let mut response = see_other("/console/login");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(SESSION_COOKIE));
    response
}
