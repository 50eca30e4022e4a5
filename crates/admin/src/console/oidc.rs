//! Console login at an OpenID Connect issuer: "Log in with <issuer>" on the
//! login page starts the relying-party flow (`portcullis_control::oidc_login`)
//! and the issuer's callback finishes it. The verified ID token's subject,
//! e-mail or groups map to an admin role by `[[admin.oidc_roles]]` (the first
//! matching entry wins; no match: refused). The session row then carries the
//! human's name (`oidc:<e-mail or subject>`), issuer and role instead of a
//! credential (`session.rs`), so every page and action goes through the
//! admin API as that human and is audited with their name.
//!
//! The login is bound to the browser that started it: the state travels in
//! a `__Host-` cookie, `SameSite=Lax` because the issuer's redirect back is
//! a cross-site navigation (a `Strict` cookie would not come with it).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_audit::Outcome;
use portcullis_control::config::{OidcRoleClaim, RawOidcRole};
use portcullis_control::oidc_login::{Callback, LoggedIn, RelyingParty};
use portcullis_core::ErrorCode;
use serde::Deserialize;

use super::session::{ABSOLUTE_TIMEOUT, SESSION_COOKIE, cookie, login_identity_id, set_cookie};
use super::{Console, html, refusal_page};
use crate::api::{AdminState, Call};
use crate::auth::hash_token;
use crate::credentials::{AdminIdentity, CredentialKind};
use crate::roles::Role;

/// The cookie binding a login in progress to the browser (its state).
const STATE_COOKIE: &str = "__Host-portcullis-oidc";
/// What the console's logins are started for (the relying party refuses a
/// console callback for a login the authorization page started).
const PURPOSE: &str = "console";
/// Where the issuer sends the browser back.
pub(crate) const CALLBACK_PATH: &str = "/console/login/callback";

/// The console's OIDC login: the relying party and the role mapping.
pub struct ConsoleLogin {
    /// The login issuers.
    pub party: Arc<RelyingParty>,
    /// `[[admin.oidc_roles]]`, in file order.
    pub roles: Vec<RawOidcRole>,
    /// `[admin] oidc_step_up`: a login whose ID token's `amr` names a
    /// second factor (the issuer's `mfa_amr`) opens the session's step-up
    /// window.
    pub step_up: bool,
}

/// The admin role `[[admin.oidc_roles]]` gives a logged-in human: the first
/// entry (for their issuer) whose claim matches. `None`: refused.
pub(crate) fn role_for(roles: &[RawOidcRole], login: &LoggedIn) -> Option<Role> {
    roles
        .iter()
        .filter(|r| r.issuer.as_deref().is_none_or(|i| i == login.issuer))
        .find(|r| match r.claim {
            OidcRoleClaim::Sub => login.id.user.sub == r.value,
            OidcRoleClaim::Email => login.id.email.as_deref() == Some(r.value.as_str()),
            OidcRoleClaim::Groups => login.id.user.groups.contains(&r.value),
        })
        .and_then(|r| r.role.parse().ok())
}

/// Whether a login opens the session's step-up window: only with `[admin]
/// oidc_step_up`, and only when the ID token's `amr` names a second factor
/// (one of the issuer's `mfa_amr`, which the token check applied).
pub(crate) fn opens_step_up(setting: bool, logged_in: &LoggedIn) -> bool {
    setting && logged_in.id.user.mfa
}

/// The login page's buttons, one per issuer (links: a form's redirect to
/// another origin would break the console's `form-action 'self'`).
pub(crate) fn buttons(login: Option<&ConsoleLogin>) -> String {
    let Some(login) = login else {
        return String::new();
    };
    let mut out = String::from("<div class=\"oidc-login\">");
    for (index, name) in login.party.issuers() {
        out.push_str(&format!(
            "<p><a class=\"button\" id=\"oidc-login-{index}\" href=\"/console/login/oidc?issuer={index}\">Log in with {}</a></p>",
            html::esc(name)
        ));
    }
    out.push_str("</div>");
    out
}

/// The host the browser reached the console at, for the redirect URI. The
/// issuer accepts only the redirect URIs registered for the client, so a
/// forged `Host` yields a login the issuer refuses, never one it completes.
fn console_origin(req: &Request) -> Option<String> {
    super::authority(req.uri(), req.headers()).map(|a| format!("https://{a}"))
}

/// The console's OIDC login, or the page saying there is none.
fn configured(console: &Console) -> Result<&ConsoleLogin, Box<Response>> {
    console.login.as_deref().ok_or_else(|| {
        Box::new(refusal_page(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no OIDC issuer is configured for logging in",
        ))
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct StartQuery {
    issuer: Option<usize>,
}

fn now() -> i64 {
    crate::api::now_ms() / 1000
}

/// `GET /console/login/oidc?issuer=N`: off to the issuer.
pub(crate) async fn start(
    Extension(console): Extension<Arc<Console>>,
    Query(query): Query<StartQuery>,
    req: Request,
) -> Response {
    let login = match configured(&console) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let Some(origin) = console_origin(&req) else {
        return refusal_page(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "the request names no valid host",
        );
    };
    let redirect_uri = format!("{origin}{CALLBACK_PATH}");
    match login
        .party
        .start(query.issuer.unwrap_or(0), &redirect_uri, PURPOSE, now())
        .await
    {
        Ok(started) => {
            let mut response = (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, started.authorize_url.as_str())],
                "",
            )
                .into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                lax_cookie(&started.state, portcullis_control::oidc_login::LOGIN_TTL),
            );
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot start an OIDC login");
            refusal_page(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unavailable,
                &e.to_string(),
            )
        }
    }
}

/// The state cookie: `SameSite=Lax` (see the module docs), otherwise as
/// strict as the session cookie.
fn lax_cookie(value: &str, max_age: i64) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&format!(
        "{STATE_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| axum::http::HeaderValue::from_static(""))
}

/// `GET /console/login/callback`: the issuer's answer.
pub(crate) async fn callback(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    Query(answer): Query<Callback>,
    headers: HeaderMap,
) -> Response {
    let login = match configured(&console) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let refuse = |status: StatusCode, code: ErrorCode, principal: Option<String>, why: &str| {
        let mut record = call.record(
            "console.login",
            CALLBACK_PATH,
            Outcome::Deny,
            status.as_u16(),
            Some(code),
        );
        record.principal = principal;
        record.credential = Some("oidc login".into());
        state.sink.submit(record);
        let mut response = refusal_page(status, code, why);
        response
            .headers_mut()
            .insert(header::SET_COOKIE, lax_cookie("", 0));
        response
    };
    let bound = cookie(&headers, STATE_COOKIE);
    let logged_in = match login
        .party
        .finish(&answer, bound.as_deref(), PURPOSE, now())
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::info!(error = %e, "console: OIDC login refused");
            return refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidCredential,
                None,
                &e.to_string(),
            );
        }
    };
    let name = format!("oidc:{}", logged_in.display());
    let Some(role) = role_for(&login.roles, &logged_in) else {
        return refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            Some(name.clone()),
            &format!(
                "`{}` logged in at `{}`, but no `[[admin.oidc_roles]]` entry gives them an admin role",
                logged_in.display(),
                logged_in.issuer
            ),
        );
    };
    let Some(id) = console
        .sessions
        .login_oidc(&name, &logged_in.issuer, role)
        .await
    else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            Some(name),
            "the console cannot store a session; try again",
        );
    };
    // The issuer's `amr` showed a second factor: with `[admin]
    // oidc_step_up`, the login opens the session's step-up window, as a
    // TOTP code would.
    // A window that cannot be stored leaves the login without one (logged):
    // the session asks for a code, never the reverse.
    let stepped_up = opens_step_up(login.step_up, &logged_in) && {
        let identity = AdminIdentity {
            id: login_identity_id(&hash_token(&id)),
            name: name.clone(),
            role,
            kind: CredentialKind::Login,
            login: Some(logged_in.issuer.clone()),
            credential_sha256: None,
        };
        match state.step_up.open(&identity, &name).await {
            Ok(window) => window.is_some(),
            Err(e) => {
                tracing::error!(error = %e, "console: cannot open the OIDC login's step-up window");
                false
            }
        }
    };
    let mut record = call.record("console.login", "/console", Outcome::Allow, 303, None);
    record.principal = Some(name);
    record.credential = Some(format!(
        "oidc login at `{}` ({role}){}",
        logged_in.issuer,
        if stepped_up { " + amr step-up" } else { "" }
    ));
    state.sink.submit(record);
    let mut response = super::see_other("/console");
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &id, ABSOLUTE_TIMEOUT),
    );
    h.append(header::SET_COOKIE, lax_cookie("", 0));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_identity::{IdToken, UserToken};

    #[test]
    fn only_a_second_factor_with_the_setting_on_opens_a_step_up() {
        let mut with_mfa = login("u-1", None, &[]);
        with_mfa.id.user.mfa = true;
        let without = login("u-1", None, &[]);
        for (setting, logged_in, opens) in [
            (true, &with_mfa, true),
            (true, &without, false),
            (false, &with_mfa, false),
        ] {
            assert_eq!(opens_step_up(setting, logged_in), opens);
        }
    }

    fn login(sub: &str, email: Option<&str>, groups: &[&str]) -> LoggedIn {
        LoggedIn {
            issuer: "https://idp".into(),
            purpose: PURPOSE.into(),
            id: IdToken {
                user: UserToken {
                    sub: sub.into(),
                    iss: "https://idp".into(),
                    exp: 0,
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    mfa: false,
                },
                email: email.map(str::to_string),
                name: None,
            },
        }
    }

    fn rule(claim: OidcRoleClaim, value: &str, role: &str, issuer: Option<&str>) -> RawOidcRole {
        RawOidcRole {
            claim,
            value: value.into(),
            role: role.into(),
            issuer: issuer.map(str::to_string),
        }
    }

    #[test]
    fn the_first_matching_entry_gives_the_role_and_no_match_refuses() {
        let roles = [
            rule(OidcRoleClaim::Email, "boss@x", "owner", None),
            rule(
                OidcRoleClaim::Groups,
                "ops",
                "operator",
                Some("https://idp"),
            ),
            rule(OidcRoleClaim::Groups, "ops", "owner", None),
            rule(OidcRoleClaim::Sub, "u-7", "auditor", Some("https://other")),
        ];
        let check = |l: LoggedIn| role_for(&roles, &l);
        assert_eq!(check(login("u-1", Some("boss@x"), &[])), Some(Role::Owner));
        assert_eq!(
            check(login("u-2", None, &["staff", "ops"])),
            Some(Role::Operator)
        );
        assert_eq!(check(login("u-3", Some("other@x"), &["staff"])), None);
        // Another issuer's entry does not apply.
        assert_eq!(check(login("u-7", None, &[])), None);
        assert_eq!(login("u-9", None, &[]).display(), "u-9");
    }
}
