//! Logging in to the console with a passkey: no token, no OIDC issuer. The
//! login page's "Log in with a passkey" asks the browser for an assertion
//! (user verification required), by any passkey of this relying party
//! (discoverable credentials: the authenticator offers its own) or, when a
//! name is typed, by one of that admin's. The assertion passes the same
//! checks as a step-up's (`passkeys::check_assertion`: origin, challenge,
//! type, relying party hash, user present and verified, signature, counter
//! updated atomically).
//!
//! Whom the session acts as: the passkey belongs to a human admin
//! (`admin user add alice`); the session acts as the live admin credential
//! of the same name (`admin token create alice --role approver`, or a
//! certificate one), with its role, exactly as if that credential's token
//! had been pasted. So roles stay where they are managed, and revoking or
//! rotating that credential ends the passkey's sessions as it ends a
//! token's. A passkey whose admin has no such credential logs in nobody
//! (403). The login opens no step-up window: the step-up page asks again.
//!
//! The challenge is bound to the browser that asked for it (the login
//! form's double-submit nonce, like the token login's CSRF check) and kept
//! in the store (`ceremonies.rs`), so the answer may reach any replica.
//! Every login and refused login is audited (`console.login`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use portcullis_audit::Outcome;
use portcullis_core::ErrorCode;
use portcullis_identity::webauthn::ClientData;
use portcullis_store::{ADMIN_KIND_TOKEN, AdminTokenRow};
use serde_json::{Value, json};

use super::ceremonies::Purpose;
use super::passkeys::{
    Refusal, answer, begin, check_assertion, common_options, credential_part, relying_party,
    store_failure,
};
use super::{Console, FormRequest, logged_in, login_nonce};
use crate::api::{AdminState, Call};
use crate::auth::hash_token;

/// The audit action of logins.
const ACTION: &str = "console.login";
/// The audited resource of passkey logins.
const RESOURCE: &str = "/console/login/passkey";

/// A refused passkey login: audited (with the passkey's admin when known)
/// and answered as JSON for the script.
fn refuse(
    state: &AdminState,
    call: &Call,
    principal: Option<&str>,
    code: ErrorCode,
    message: &str,
) -> Response {
    let status = code.http_status();
    let mut record = call.record(ACTION, RESOURCE, Outcome::Deny, status, Some(code));
    record.principal = principal.map(str::to_string);
    record.credential = Some("passkey login".into());
    state.sink.submit(record);
    answer(
        StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
        json!({ "error": { "code": code.as_str(), "message": message } }),
    )
}

/// The form's fields and the browser binding of its ceremony (SHA-256 of
/// the login form's nonce); without the right nonce, the refusal.
fn login_form(
    state: &AdminState,
    call: &Call,
    req: &FormRequest,
) -> Result<(HashMap<String, String>, String), Box<Response>> {
    let fields = req.fields();
    match login_nonce(&req.headers, &fields) {
        Some(nonce) => Ok((fields, format!("login:{}", hash_token(&nonce)))),
        None => Err(Box::new(refuse(
            state,
            call,
            None,
            ErrorCode::Forbidden,
            "this login form has no valid CSRF token: load the login page again",
        ))),
    }
}

/// `POST /console/login/passkey/options`: an assertion's options.
pub(super) async fn options(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    let (fields, binding) = match login_form(&state, &call, &req) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let rp = match relying_party(&state, req.authority.as_ref()) {
        Ok(rp) => rp,
        Err(why) => return refuse(&state, &call, None, ErrorCode::Conflict, &why),
    };
    let admin = fields
        .get("admin")
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty());
    // Named: that admin's passkeys here. An unknown name, or one without a
    // passkey, gets the same answer as no name (any discoverable passkey),
    // so the options do not tell which admins exist; the answer must then
    // still be that admin's.
    let allowed: Vec<Value> = match &admin {
        Some(name) => match state.store.passkeys(Some(name)).await {
            Ok(keys) => keys
                .iter()
                .filter(|k| k.rp_id == rp.rp_id)
                .map(|k| json!({ "type": "public-key", "id": k.credential_id }))
                .collect(),
            Err(e) => return store_failure(&e),
        },
        None => Vec::new(),
    };
    let challenge = match begin(&console, rp.ceremony(&binding, Purpose::Login { admin })).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut options = common_options(&challenge, &rp);
    options["allowCredentials"] = Value::Array(allowed);
    answer(StatusCode::OK, json!({ "publicKey": options }))
}

/// The live credential a passkey's admin logs in as: the one of the same
/// name (a token, or a certificate still valid at `now`).
fn credential_for(rows: Vec<AdminTokenRow>, admin: &str, now: i64) -> Option<AdminTokenRow> {
    rows.into_iter().find(|r| {
        r.name == admin
            && r.revoked_at.is_none()
            && (r.kind == ADMIN_KIND_TOKEN || r.not_after.is_some_and(|n| now < n))
    })
}

/// `POST /console/login/passkey`: the authenticator's answer; a session.
pub(super) async fn finish(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    let (fields, binding) = match login_form(&state, &call, &req) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let credential: Value = fields
        .get("credential")
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    let Some(client_data) = credential_part(&credential, "clientDataJSON") else {
        return refuse(
            &state,
            &call,
            None,
            ErrorCode::BadRequest,
            "the answer has no clientDataJSON",
        );
    };
    let challenge = match ClientData::parse(&client_data) {
        Ok(c) => c.challenge,
        Err(e) => return refuse(&state, &call, None, ErrorCode::BadRequest, &e.to_string()),
    };
    let ceremony = match console
        .ceremonies
        .take(&challenge, &binding, crate::api::now_ms())
        .await
    {
        Ok(Some(c)) => c,
        Ok(None) => {
            return refuse(
                &state,
                &call,
                None,
                ErrorCode::InvalidCredential,
                "the challenge is unknown, already used, expired or not this browser's: start again",
            );
        }
        Err(e) => return store_failure(&e),
    };
    let Purpose::Login { admin: named } = &ceremony.purpose else {
        return refuse(
            &state,
            &call,
            None,
            ErrorCode::BadRequest,
            "the challenge was not issued for a login",
        );
    };
    let key = match check_assertion(
        &state.store,
        &credential,
        &client_data,
        &challenge,
        &ceremony,
    )
    .await
    {
        Ok(k) => k,
        Err(Refusal::Store(e)) => return store_failure(&e),
        Err(Refusal::Refused(code, message)) => {
            return refuse(&state, &call, named.as_deref(), code, &message);
        }
    };
    if named.as_ref().is_some_and(|n| *n != key.admin) {
        return refuse(
            &state,
            &call,
            Some(&key.admin),
            ErrorCode::InvalidCredential,
            "this passkey is not the named admin's",
        );
    }
    let now = crate::api::now_ms() / 1000;
    let rows = match state.store.admin_credentials().await {
        Ok(rows) => rows,
        Err(e) => return store_failure(&e),
    };
    let Some(row) = credential_for(rows, &key.admin, now) else {
        return refuse(
            &state,
            &call,
            Some(&key.admin),
            ErrorCode::Forbidden,
            &format!(
                "`{}` has no live admin credential to log in as: an owner gives her a role with `portcullis admin token create {} --role ROLE`",
                key.admin, key.admin
            ),
        );
    };
    let Some(id) = console.sessions.login_credential(&row.token_sha256).await else {
        return refuse(
            &state,
            &call,
            Some(&key.admin),
            ErrorCode::Unavailable,
            "the console cannot store a session; try again",
        );
    };
    let mut record = call.record(ACTION, "/console", Outcome::Allow, 200, None);
    record.principal = Some(row.name.clone());
    record.credential = Some(format!(
        "passkey `{}` of `{}` as admin {} `{}` ({})",
        key.label, key.admin, row.kind, row.name, row.role
    ));
    state.sink.submit(record);
    logged_in(
        answer(
            StatusCode::OK,
            json!({ "ok": true, "admin": key.admin, "location": "/console" }),
        ),
        &id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_store::ADMIN_KIND_CERTIFICATE;

    fn row(name: &str, kind: &str, revoked: bool, not_after: Option<i64>) -> AdminTokenRow {
        AdminTokenRow {
            id: format!("id-{name}-{kind}"),
            name: name.into(),
            role: "approver".into(),
            token_sha256: format!("h-{name}-{kind}"),
            created_at: 1,
            created_by: "admin".into(),
            rotated_at: None,
            revoked_at: revoked.then_some(5),
            bootstrap: false,
            kind: kind.into(),
            not_after,
        }
    }

    #[test]
    fn a_passkey_logs_in_as_the_live_credential_of_its_admins_name_only() {
        let rows = || {
            vec![
                row("alice", ADMIN_KIND_TOKEN, true, None),
                row("bob", ADMIN_KIND_CERTIFICATE, false, Some(100)),
                row("alice", ADMIN_KIND_CERTIFICATE, false, Some(100)),
            ]
        };
        // The revoked token is skipped; her certificate counts while valid.
        let found = credential_for(rows(), "alice", 50).unwrap();
        assert_eq!(found.kind, ADMIN_KIND_CERTIFICATE);
        assert!(credential_for(rows(), "alice", 100).is_none(), "expired");
        assert!(credential_for(rows(), "carol", 50).is_none());
        assert!(
            credential_for(
                vec![row("alice", ADMIN_KIND_TOKEN, false, None)],
                "alice",
                50
            )
            .is_some()
        );
    }
}
