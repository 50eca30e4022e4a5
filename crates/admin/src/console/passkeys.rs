//! The step-up page and passkeys (WebAuthn) for human admins: a second
//! factor equal to TOTP. `/console/step-up` opens the session's step-up
//! window with a TOTP code (through `POST /admin/v1/session/step-up`, as
//! the CLI does) or with a passkey, and lists the passkeys of the human
//! whose window is open.
//!
//! - Registering a passkey needs an open step-up window (a TOTP code
//!   first, or another passkey): the passkey becomes that human's
//!   (`admin_users`), stored in the store (migration 0026) with its public
//!   key, algorithm and signature counter. Attestation is `none`.
//! - A passkey assertion opens the window exactly as a code does: the same
//!   window (`stepup.rs`), bound to the session's identity, of
//!   `[admin] step_up_seconds`, naming the passkey's human; the actions
//!   then need no code, through the API's own step-up check.
//! - Challenges are 32 random bytes, issued to one session for one
//!   ceremony, single use (taken out on the first answer, right or wrong),
//!   and expire after [`CEREMONY_TTL`]. They live in the store
//!   (`ceremonies.rs`), so the answer may reach any replica.
//! - The relying party: the console's origin must be one of the console
//!   origins (`[admin] console_origins`, else the admin listener's own
//!   address, with `localhost` for a loopback one); the relying party id is
//!   its host. The browser refuses WebAuthn on an IP address, so a console
//!   reached at `https://127.0.0.1:…` offers passkeys at
//!   `https://localhost:…`.
//! - The checks themselves (origin, challenge, type, relying party, user
//!   presence and verification, signature, counter) are
//!   `portcullis_identity::webauthn`'s; a counter update is atomic in the
//!   store, so a replayed assertion loses even in a race.
//!
//! The script (`assets/console.js`) runs the ceremonies: it fetches the
//! options, calls `navigator.credentials`, and posts the answer back, each
//! as a form carrying the session's CSRF token.

use std::fmt::Write;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use portcullis_audit::Outcome;
use portcullis_core::ErrorCode;
use portcullis_identity::webauthn::{
    ALGORITHMS, ClientData, Expected, b64url, from_b64url, verify_assertion, verify_registration,
};
use portcullis_store::PasskeyRow;
use serde_json::{Value, json};

use super::ceremonies::CEREMONY_TTL;
use super::ceremonies::{Ceremony, Purpose};
use super::html::{csrf_field, esc, page, table, time_s};
use super::internal::StepUp;
use super::session::{Flash, Permission};
use super::{Console, Form, FormRequest, html as respond, see_other, submitted, viewer};
use crate::api::{AdminState, Call};

/// The longest label kept for a passkey.
const MAX_LABEL: usize = 64;

/// The origin a ceremony runs at and its relying party id.
pub(super) struct RelyingParty {
    pub(super) origin: String,
    pub(super) rp_id: String,
}

impl RelyingParty {
    /// A ceremony at this relying party for `session`.
    pub(super) fn ceremony(&self, session: &str, purpose: Purpose) -> Ceremony {
        Ceremony {
            session: session.to_string(),
            purpose,
            origin: self.origin.clone(),
            rp_id: self.rp_id.clone(),
        }
    }
}

/// The console origin a request reached (`authority`: its host and port),
/// when it is one of the console's.
pub(super) fn relying_party(
    state: &AdminState,
    authority: Option<&http::uri::Authority>,
) -> Result<RelyingParty, String> {
    if state.console_origins.is_empty() {
        return Err("passkeys need the console's origin: set `[admin] console_origins` (the admin listener listens on every address)".into());
    }
    let origin = authority.map(|a| format!("https://{a}"));
    match (authority, origin) {
        (Some(authority), Some(origin)) if state.console_origins.contains(&origin) => {
            Ok(RelyingParty {
                rp_id: authority.host().to_string(),
                origin,
            })
        }
        _ => Err(format!(
            "passkeys work at the console's own origin: open the console at {}",
            state.console_origins.join(" or ")
        )),
    }
}

/// A JSON answer for the script.
pub(super) fn answer(status: StatusCode, value: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// A refusal for the script, audited as `action` by the session.
fn refuse(
    state: &AdminState,
    call: &Call,
    form: &Form,
    action: &str,
    code: ErrorCode,
    message: &str,
) -> Response {
    call.acting_as(form.session.identity.clone()).audit(
        &state.sink,
        action,
        &form.session.name,
        Outcome::Deny,
        code.http_status(),
        Some(code),
    );
    answer(
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        json!({ "error": { "code": code.as_str(), "message": message } }),
    )
}

/// The browser's answer to a ceremony (the `credential` field: JSON with
/// base64url members).
pub(super) fn credential_part(credential: &Value, name: &str) -> Option<Vec<u8>> {
    credential[name].as_str().and_then(from_b64url)
}

/// `GET /console/step-up`.
pub(super) async fn page_handler(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let session = match viewer(&console, &headers, Permission::View).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let window = match state.step_up.current(&session.identity).await {
        Ok(w) => w,
        Err(e) => return store_failure(&e),
    };
    let mut body = String::new();
    match &window {
        Some(w) => {
            let _ = write!(
                body,
                "<p id=\"step-up-status\" data-open=\"yes\">Step-up window open for <strong class=\"user\">{}</strong> until {}: \
                 sensitive actions of this session need no code until then.</p>",
                esc(&w.user),
                esc(&time_s(&json!(w.expires_at)))
            );
        }
        None => body.push_str(
            "<p id=\"step-up-status\" data-open=\"no\">No step-up window is open: sensitive actions need a TOTP code or a passkey.</p>",
        ),
    }
    let _ = write!(
        body,
        "<h2>With a TOTP code</h2><form method=\"post\" action=\"/console/step-up\" class=\"step-up-totp\">{}\
         <input name=\"user\" placeholder=\"admin\" autocomplete=\"username\" size=\"12\" required>\
         <input name=\"totp\" placeholder=\"TOTP\" inputmode=\"numeric\" autocomplete=\"one-time-code\" size=\"6\" required>\
         <button type=\"submit\">Step up</button></form>\
         <h2>With a passkey</h2><p><button type=\"button\" id=\"passkey-step-up\" \
         data-options=\"/console/passkeys/step-up/options\" data-finish=\"/console/passkeys/step-up\">Step up with a passkey</button></p>\
         <p id=\"passkey-status\" role=\"status\"></p>",
        csrf_field(&session)
    );
    body.push_str("<h2>Passkeys</h2>");
    let relying = relying_party(&state, super::authority(&uri, &headers).as_ref());
    if let Err(why) = &relying {
        let _ = write!(
            body,
            "<p class=\"hint\" id=\"passkey-origin\">{}</p>",
            esc(why)
        );
    }
    match &window {
        Some(w) => {
            let keys = state.store.passkeys(Some(&w.user)).await.unwrap_or_default();
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        format!("<span class=\"label\">{}</span>", esc(&k.label)),
                        esc(&k.rp_id),
                        esc(crate::passkeys_api::algorithm_name(k.algorithm)),
                        esc(&time_s(&json!(k.created_at))),
                        esc(&time_s(&json!(k.last_used_at))),
                        format!(
                            "<form method=\"post\" action=\"/console/passkeys/remove\" class=\"inline\" data-confirm=\"Remove this passkey?\">{}\
                             <input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\">Remove</button></form>",
                            csrf_field(&session),
                            esc(&k.credential_id)
                        ),
                    ]
                })
                .collect();
            body.push_str(&table(
                "passkeys",
                &["Label", "Relying party", "Algorithm", "Registered", "Last used", ""],
                &rows,
                &format!("{} has no passkey yet.", w.user),
            ));
            let _ = write!(
                body,
                "<p class=\"passkey-register\"><input id=\"passkey-label\" name=\"label\" placeholder=\"label (e.g. laptop)\" maxlength=\"{MAX_LABEL}\">\
                 <button type=\"button\" id=\"passkey-register\" data-options=\"/console/passkeys/register/options\" \
                 data-finish=\"/console/passkeys/register\">Register a passkey for {}</button></p>",
                esc(&w.user)
            );
        }
        None => body.push_str(
            "<p class=\"hint\">Step up with your TOTP code first: a passkey is registered for the admin whose step-up window is open.</p>",
        ),
    }
    let flash = console.sessions.take_flash(&session);
    respond(
        StatusCode::OK,
        page("Step-up", "/console/step-up", Some(&session), flash, &body),
    )
}

/// `POST /console/step-up`: a TOTP code opens the window, through the API.
pub(super) async fn totp(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    let form = match submitted(&console, &state, &call, &req, Permission::View).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let step_up = StepUp {
        user: form.field("user").to_string(),
        totp: form.field("totp").to_string(),
    };
    let flash = match console
        .api
        .call(
            &form.session,
            form.remote,
            Method::POST,
            "/session/step-up",
            None,
            &step_up,
        )
        .await
    {
        Ok(v) => Flash {
            ok: true,
            text: format!(
                "step-up window open for `{}`",
                v["step_up"]["user"].as_str().unwrap_or_default()
            ),
        },
        Err(r) => Flash {
            ok: false,
            text: format!("refused: {} ({})", r.message, r.code),
        },
    };
    console.sessions.flash(&form.session, flash);
    see_other("/console/step-up")
}

/// The start of a ceremony: its form (session, CSRF token, role) and the
/// relying party of the origin it came from.
async fn ceremony_start(
    console: &Console,
    state: &AdminState,
    call: &Call,
    req: &FormRequest,
    action: &str,
) -> Result<(Form, RelyingParty), Box<Response>> {
    let form = submitted(console, state, call, req, Permission::View).await?;
    match relying_party(state, req.authority.as_ref()) {
        Ok(rp) => Ok((form, rp)),
        Err(why) => Err(Box::new(refuse(
            state,
            call,
            &form,
            action,
            ErrorCode::Conflict,
            &why,
        ))),
    }
}

/// A ceremony's answer, its challenge taken (single use, whatever comes
/// next).
struct Answer {
    form: Form,
    /// The browser's credential (JSON with base64url members).
    credential: Value,
    /// The raw `clientDataJSON`.
    client_data: Vec<u8>,
    /// The challenge it names.
    challenge: String,
    /// What the challenge was issued for.
    ceremony: Ceremony,
}

async fn ceremony_answer(
    console: &Console,
    state: &AdminState,
    call: &Call,
    req: &FormRequest,
    action: &str,
) -> Result<Answer, Box<Response>> {
    let form = submitted(console, state, call, req, Permission::View).await?;
    let refused = |code: ErrorCode, message: &str| {
        Box::new(refuse(state, call, &form, action, code, message))
    };
    let credential: Value = serde_json::from_str(form.field("credential")).unwrap_or_default();
    let Some(client_data) = credential_part(&credential, "clientDataJSON") else {
        return Err(refused(
            ErrorCode::BadRequest,
            "the answer has no clientDataJSON",
        ));
    };
    let challenge = match ClientData::parse(&client_data) {
        Ok(c) => c.challenge,
        Err(e) => return Err(refused(ErrorCode::BadRequest, &e.to_string())),
    };
    let taken = console
        .ceremonies
        .take(&challenge, form.session.key(), crate::api::now_ms())
        .await;
    let Some(ceremony) = (match taken {
        Ok(c) => c,
        Err(e) => return Err(Box::new(store_failure(&e))),
    }) else {
        return Err(refused(
            ErrorCode::InvalidCredential,
            "the challenge is unknown, already used, expired or not this session's: start again",
        ));
    };
    Ok(Answer {
        form,
        credential,
        client_data,
        challenge,
        ceremony,
    })
}

/// Issues a challenge for `ceremony`; when too many are outstanding or the
/// store fails, the answer saying so.
pub(super) async fn begin(console: &Console, ceremony: Ceremony) -> Result<String, Box<Response>> {
    match console
        .ceremonies
        .begin(&ceremony, crate::api::now_ms())
        .await
    {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(Box::new(busy())),
        Err(e) => Err(Box::new(store_failure(&e))),
    }
}

/// The options every ceremony shares.
pub(super) fn common_options(challenge: &str, rp: &RelyingParty) -> Value {
    json!({
        "challenge": challenge,
        "rpId": rp.rp_id,
        "timeout": CEREMONY_TTL.as_millis() as u64,
        "userVerification": "required",
    })
}

/// `POST /console/passkeys/register/options`: a registration's options,
/// for the human whose step-up window is open.
pub(super) async fn register_options(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    const ACTION: &str = "admin.passkey_add";
    let (form, rp) = match ceremony_start(&console, &state, &call, &req, ACTION).await {
        Ok(started) => started,
        Err(r) => return *r,
    };
    let window = match state.step_up.current(&form.session.identity).await {
        Ok(w) => w,
        Err(e) => return store_failure(&e),
    };
    let Some(window) = window else {
        return refuse(
            &state,
            &call,
            &form,
            ACTION,
            ErrorCode::MfaRequired,
            "registering a passkey needs an open step-up window: step up with your TOTP code first",
        );
    };
    let existing = match state.store.passkeys(Some(&window.user)).await {
        Ok(k) => k,
        Err(e) => return store_failure(&e),
    };
    let ceremony = rp.ceremony(
        form.session.key(),
        Purpose::Register {
            admin: window.user.clone(),
        },
    );
    let challenge = match begin(&console, ceremony).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut options = common_options(&challenge, &rp);
    options["rp"] = json!({ "id": rp.rp_id, "name": "Portcullis console" });
    // The user handle names the admin without their name (it is stored on
    // the authenticator): 16 bytes of a hash of it.
    let handle = crate::auth::hash_token(&format!("portcullis admin\0{}", window.user));
    options["user"] = json!({
        "id": b64url(&handle.as_bytes()[..32]),
        "name": window.user,
        "displayName": window.user,
    });
    options["pubKeyCredParams"] = ALGORITHMS
        .iter()
        .map(|alg| json!({ "type": "public-key", "alg": alg }))
        .collect();
    options["attestation"] = json!("none");
    options["authenticatorSelection"] =
        json!({ "residentKey": "preferred", "userVerification": "required" });
    options["excludeCredentials"] = existing
        .iter()
        .map(|k| json!({ "type": "public-key", "id": k.credential_id }))
        .collect();
    answer(StatusCode::OK, json!({ "publicKey": options }))
}

/// `POST /console/passkeys/register`: the authenticator's answer.
pub(super) async fn register(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    const ACTION: &str = "admin.passkey_add";
    let Answer {
        form,
        credential,
        client_data,
        challenge,
        ceremony,
    } = match ceremony_answer(&console, &state, &call, &req, ACTION).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let bad = |message: &str| refuse(&state, &call, &form, ACTION, ErrorCode::BadRequest, message);
    let Some(attestation) = credential_part(&credential, "attestationObject") else {
        return bad("the answer has no attestationObject");
    };
    let Purpose::Register { admin } = ceremony.purpose else {
        return bad("the challenge was not issued for a registration");
    };
    let expected = Expected {
        challenge: &challenge,
        origin: &ceremony.origin,
        rp_id: &ceremony.rp_id,
        require_uv: true,
    };
    let registered = match verify_registration(&client_data, &attestation, &expected) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                &state,
                &call,
                &form,
                ACTION,
                ErrorCode::InvalidCredential,
                &e.to_string(),
            );
        }
    };
    let label: String = form
        .field("label")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LABEL)
        .collect();
    let label = if label.is_empty() {
        "passkey".to_string()
    } else {
        label
    };
    let row = PasskeyRow {
        credential_id: b64url(&registered.credential_id),
        admin: admin.clone(),
        label: label.clone(),
        rp_id: ceremony.rp_id,
        algorithm: registered.algorithm,
        public_key: registered.public_key,
        sign_count: i64::from(registered.sign_count),
        created_at: crate::api::now_ms() / 1000,
        last_used_at: 0,
    };
    if let Err(e) = state.store.add_passkey(&row).await {
        return match e {
            portcullis_store::StoreError::Conflict(_) => refuse(
                &state,
                &call,
                &form,
                ACTION,
                ErrorCode::Conflict,
                "this passkey is already registered",
            ),
            portcullis_store::StoreError::NotFound(_) => refuse(
                &state,
                &call,
                &form,
                ACTION,
                ErrorCode::NotFound,
                "the admin of the step-up window is no longer enrolled",
            ),
            other => store_failure(&other),
        };
    }
    let mut record = call.acting_as(form.session.identity.clone()).record(
        ACTION,
        &format!("passkey:{admin}/{label}"),
        Outcome::Allow,
        200,
        None,
    );
    record.principal = Some(admin.clone());
    state.sink.submit(record);
    console.sessions.flash(
        &form.session,
        Flash {
            ok: true,
            text: format!("passkey `{label}` registered for `{admin}`"),
        },
    );
    answer(
        StatusCode::OK,
        json!({ "ok": true, "admin": admin, "credential_id": row.credential_id }),
    )
}

/// `POST /console/passkeys/step-up/options`: an assertion's options, for
/// any registered passkey of this relying party.
pub(super) async fn step_up_options(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    const ACTION: &str = "admin.step_up";
    let (form, rp) = match ceremony_start(&console, &state, &call, &req, ACTION).await {
        Ok(started) => started,
        Err(r) => return *r,
    };
    if state.step_up.ttl().is_zero() {
        return refuse(
            &state,
            &call,
            &form,
            ACTION,
            ErrorCode::Conflict,
            "step-up windows are off (`[admin] step_up_seconds = 0`)",
        );
    }
    let keys = match state.store.passkeys(None).await {
        Ok(k) => k,
        Err(e) => return store_failure(&e),
    };
    let allowed: Vec<Value> = keys
        .iter()
        .filter(|k| k.rp_id == rp.rp_id)
        .map(|k| json!({ "type": "public-key", "id": k.credential_id }))
        .collect();
    if allowed.is_empty() {
        return refuse(
            &state,
            &call,
            &form,
            ACTION,
            ErrorCode::Conflict,
            "no passkey is registered for this console: step up with a TOTP code, then register one",
        );
    }
    let ceremony = rp.ceremony(form.session.key(), Purpose::StepUp);
    let challenge = match begin(&console, ceremony).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut options = common_options(&challenge, &rp);
    options["allowCredentials"] = Value::Array(allowed);
    answer(StatusCode::OK, json!({ "publicKey": options }))
}

/// `POST /console/passkeys/step-up`: an assertion opens the session's
/// step-up window for the passkey's admin.
pub(super) async fn step_up(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    const ACTION: &str = "admin.step_up";
    let Answer {
        form,
        credential,
        client_data,
        challenge,
        ceremony,
    } = match ceremony_answer(&console, &state, &call, &req, ACTION).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let refused =
        |code: ErrorCode, message: &str| refuse(&state, &call, &form, ACTION, code, message);
    if ceremony.purpose != Purpose::StepUp {
        return refused(
            ErrorCode::BadRequest,
            "the challenge was not issued for a step-up",
        );
    }
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
        Err(Refusal::Refused(code, message)) => return refused(code, &message),
    };
    let window = match state.step_up.open(&form.session.identity, &key.admin).await {
        Ok(w) => w,
        Err(e) => return store_failure(&e),
    };
    let Some(window) = window else {
        return refused(ErrorCode::Conflict, "step-up windows are off");
    };
    let acting = call.acting_as(form.session.identity.clone());
    let mut record = acting.record(ACTION, &form.session.name, Outcome::Allow, 200, None);
    record.principal = Some(key.admin.clone());
    record.credential = Some(format!(
        "{} + webauthn `{}`",
        acting.credential_text(None),
        key.label
    ));
    state.sink.submit(record);
    console.sessions.flash(
        &form.session,
        Flash {
            ok: true,
            text: format!(
                "step-up window open for `{}` (passkey `{}`)",
                key.admin, key.label
            ),
        },
    );
    answer(
        StatusCode::OK,
        json!({ "ok": true, "user": window.user, "expires_at": window.expires_at }),
    )
}

/// Why an assertion was not accepted.
pub(super) enum Refusal {
    /// Refused, with the code and message to answer.
    Refused(ErrorCode, String),
    /// The store failed.
    Store(portcullis_store::StoreError),
}

/// Checks an assertion answering `ceremony` (the challenge already taken):
/// a registered passkey of the ceremony's relying party, the client data
/// (type, challenge, origin), the authenticator data (relying party hash,
/// user present and verified), the signature with the stored key and the
/// counter; then records the use with one atomic update, so a replayed
/// assertion loses even in a race. The passkey, updated.
pub(super) async fn check_assertion(
    store: &portcullis_store::Store,
    credential: &Value,
    client_data: &[u8],
    challenge: &str,
    ceremony: &Ceremony,
) -> Result<PasskeyRow, Refusal> {
    let refused = |code: ErrorCode, message: &str| Refusal::Refused(code, message.to_string());
    let (Some(authenticator_data), Some(signature)) = (
        credential_part(credential, "authenticatorData"),
        credential_part(credential, "signature"),
    ) else {
        return Err(refused(
            ErrorCode::BadRequest,
            "the answer has no authenticatorData or signature",
        ));
    };
    let id = credential["id"].as_str().unwrap_or_default();
    let mut key = match store.passkey(id).await {
        Ok(Some(k)) if k.rp_id == ceremony.rp_id => k,
        Ok(_) => {
            return Err(refused(
                ErrorCode::InvalidCredential,
                "this passkey is not registered",
            ));
        }
        Err(e) => return Err(Refusal::Store(e)),
    };
    let expected = Expected {
        challenge,
        origin: &ceremony.origin,
        rp_id: &ceremony.rp_id,
        require_uv: true,
    };
    let stored = u32::try_from(key.sign_count).unwrap_or(u32::MAX);
    let asserted = verify_assertion(
        client_data,
        &authenticator_data,
        &signature,
        &key.public_key,
        stored,
        &expected,
    )
    .map_err(|e| refused(ErrorCode::InvalidCredential, &e.to_string()))?;
    let now = crate::api::now_ms() / 1000;
    let sign_count = i64::from(asserted.sign_count);
    match store
        .use_passkey(&key.credential_id, key.sign_count, sign_count, now)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(refused(
                ErrorCode::InvalidCredential,
                "this passkey was used concurrently: try again",
            ));
        }
        Err(e) => return Err(Refusal::Store(e)),
    }
    key.sign_count = sign_count;
    key.last_used_at = now;
    Ok(key)
}

/// `POST /console/passkeys/remove`: only the passkey's own admin, with
/// their step-up window open, removes it.
pub(super) async fn remove(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    let form = match submitted(&console, &state, &call, &req, Permission::View).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let id = form.field("id");
    let window = match state.step_up.current(&form.session.identity).await {
        Ok(w) => w,
        Err(e) => return store_failure(&e),
    };
    let flash = match state.store.passkey(id).await {
        Ok(Some(key)) if window.as_ref().is_some_and(|w| w.user == key.admin) => {
            match state.store.remove_passkey(id).await {
                Ok(()) => {
                    let mut record = call.acting_as(form.session.identity.clone()).record(
                        "admin.passkey_remove",
                        &format!("passkey:{}/{}", key.admin, key.label),
                        Outcome::Allow,
                        200,
                        None,
                    );
                    record.principal = Some(key.admin.clone());
                    state.sink.submit(record);
                    Flash {
                        ok: true,
                        text: format!("passkey `{}` removed", key.label),
                    }
                }
                Err(e) => Flash {
                    ok: false,
                    text: format!("refused: {e}"),
                },
            }
        }
        Ok(_) => Flash {
            ok: false,
            text: "refused: only the passkey's admin, with their step-up window open, may remove it (forbidden)".into(),
        },
        Err(e) => Flash {
            ok: false,
            text: format!("refused: {e}"),
        },
    };
    console.sessions.flash(&form.session, flash);
    see_other("/console/step-up")
}

fn busy() -> Response {
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": { "code": ErrorCode::Unavailable.as_str(), "message": "too many passkey ceremonies in progress: try again in a minute" } }),
    )
}

pub(super) fn store_failure(e: &portcullis_store::StoreError) -> Response {
    tracing::error!(error = %e, "console: passkey store error");
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": { "code": ErrorCode::StoreUnavailable.as_str(), "message": "the store cannot be reached" } }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_identity::webauthn::soft::Authenticator;
    use portcullis_store::AdminUserRow;

    const ORIGIN: &str = "https://localhost:9443";

    fn ceremony(origin: &str, rp_id: &str) -> Ceremony {
        Ceremony {
            session: "login:x".into(),
            purpose: Purpose::Login { admin: None },
            origin: origin.into(),
            rp_id: rp_id.into(),
        }
    }

    /// The browser's answer, as the script posts it.
    fn answer_of(id: &str, (client, data, sig): (Vec<u8>, Vec<u8>, Vec<u8>)) -> (Value, Vec<u8>) {
        let credential = json!({
            "id": id,
            "type": "public-key",
            "clientDataJSON": b64url(&client),
            "authenticatorData": b64url(&data),
            "signature": b64url(&sig),
        });
        (credential, client)
    }

    async fn refused(
        store: &portcullis_store::Store,
        (credential, client): (Value, Vec<u8>),
        challenge: &str,
        ceremony: &Ceremony,
        says: &str,
    ) {
        match check_assertion(store, &credential, &client, challenge, ceremony).await {
            Err(Refusal::Refused(code, message)) => {
                assert_eq!(code, ErrorCode::InvalidCredential, "{message}");
                assert!(message.contains(says), "{says}: {message}");
            }
            Ok(_) => panic!("accepted, expected refused for {says}"),
            Err(Refusal::Store(e)) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn an_assertion_passes_only_with_origin_relying_party_flags_signature_and_counter() {
        let dir = tempfile::tempdir().unwrap();
        let store = portcullis_store::Store::open_sqlite(&dir.path().join("db"))
            .await
            .unwrap();
        store
            .add_admin_user(&AdminUserRow {
                name: "alice".into(),
                totp_sealed: vec![1],
                created_at: 1,
                last_step: 0,
            })
            .await
            .unwrap();
        let mut authenticator = Authenticator::new(true);
        authenticator.count = 5;
        let id = b64url(&authenticator.id);
        store
            .add_passkey(&PasskeyRow {
                credential_id: id.clone(),
                admin: "alice".into(),
                label: "laptop".into(),
                rp_id: "localhost".into(),
                algorithm: portcullis_identity::webauthn::ES256,
                public_key: authenticator.cose(),
                sign_count: 5,
                created_at: 1,
                last_used_at: 0,
            })
            .await
            .unwrap();
        let here = ceremony(ORIGIN, "localhost");
        let c = "Y2hhbGxlbmdl";
        // Well made: accepted, and the counter moves.
        let (credential, client) = answer_of(&id, authenticator.assert(c, ORIGIN, "localhost"));
        let key = check_assertion(&store, &credential, &client, c, &here)
            .await
            .ok()
            .unwrap();
        assert_eq!((key.admin.as_str(), key.sign_count), ("alice", 6));
        assert_eq!(store.passkey(&id).await.unwrap().unwrap().sign_count, 6);
        // The same assertion again: its counter stands still.
        refused(&store, (credential, client), c, &here, "counter").await;
        // Another origin, another relying party, another challenge.
        let other = authenticator.assert(c, "https://evil.example", "localhost");
        refused(&store, answer_of(&id, other), c, &here, "origin").await;
        let other = authenticator.assert(c, ORIGIN, "evil.example");
        refused(&store, answer_of(&id, other), c, &here, "relying party").await;
        let other = authenticator.assert("b3RoZXI", ORIGIN, "localhost");
        refused(&store, answer_of(&id, other), c, &here, "challenge").await;
        // Present but not verified (no PIN or biometric).
        authenticator.flags = 0x01;
        let other = authenticator.assert(c, ORIGIN, "localhost");
        refused(&store, answer_of(&id, other), c, &here, "verify the user").await;
        authenticator.flags = 0x05;
        // Signed by another key under this credential id.
        let mut stranger = Authenticator::new(true);
        stranger.count = 50;
        let other = stranger.assert(c, ORIGIN, "localhost");
        refused(&store, answer_of(&id, other), c, &here, "signature").await;
        // A passkey of another relying party, or none at all.
        let elsewhere = ceremony("https://console.example", "console.example");
        let other = authenticator.assert(c, "https://console.example", "console.example");
        refused(
            &store,
            answer_of(&id, other),
            c,
            &elsewhere,
            "not registered",
        )
        .await;
        let other = authenticator.assert(c, ORIGIN, "localhost");
        refused(
            &store,
            answer_of("bm9uZQ", other),
            c,
            &here,
            "not registered",
        )
        .await;
        // Still well made after all that: accepted.
        let (credential, client) = answer_of(&id, authenticator.assert(c, ORIGIN, "localhost"));
        assert!(
            check_assertion(&store, &credential, &client, c, &here)
                .await
                .is_ok()
        );
    }
}
