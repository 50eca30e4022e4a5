//! The console's forms. Each checks the session, its CSRF token and
//! [`may`](super::session::may), then makes the one admin-API call the CLI
//! would make for the same action (`internal.rs`): the API's handler
//! authorises it again, asks for step-up where it does, and writes the audit
//! record. The answer becomes a one-shot message and the browser is sent
//! back to the page (POST, redirect, GET).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::html::{esc, pre_json, url_part};
use super::internal::{Refusal, StepUp};
use super::session::{Flash, Permission};
use super::{Console, Form, FormRequest, html, see_other, submitted};
use crate::api::{AdminState, Call};

/// One action: the API call, and where the browser goes afterwards.
struct Act<'a> {
    path: String,
    body: Option<Value>,
    back: &'a str,
    done: String,
}

/// Checks the form, makes the call, leaves the result as the next page's
/// message, and redirects.
async fn act(
    console: &Console,
    state: &AdminState,
    call: &Call,
    req: &FormRequest,
    permission: Permission,
    what: impl FnOnce(&Form) -> Act<'static>,
) -> Response {
    let form = match submitted(console, state, call, req, permission).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let act = what(&form);
    let step_up = StepUp {
        user: form.field("user").to_string(),
        totp: form.field("totp").to_string(),
    };
    let result = console
        .api
        .call(
            &form.session,
            form.remote,
            Method::POST,
            &act.path,
            act.body,
            &step_up,
        )
        .await;
    let flash = match result {
        Ok(_) => Flash {
            ok: true,
            text: act.done,
        },
        Err(refusal) => refused(&refusal),
    };
    console.sessions.flash(&form.session, flash);
    see_other(act.back)
}

fn refused(refusal: &Refusal) -> Flash {
    Flash {
        ok: false,
        text: format!("refused: {} ({})", refusal.message, refusal.code),
    }
}

pub(super) async fn revoke_agent(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
    req: FormRequest,
) -> Response {
    act(
        &console,
        &state,
        &call,
        &req,
        Permission::ManageAgents,
        |_| Act {
            path: format!("/agents/{}/revoke", url_part(&name)),
            body: None,
            back: "/console/agents",
            done: format!(
                "agent `{name}` revoked: its certificates and keys no longer authenticate"
            ),
        },
    )
    .await
}

pub(super) async fn release_agent(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
    req: FormRequest,
) -> Response {
    act(
        &console,
        &state,
        &call,
        &req,
        Permission::ManageAgents,
        |_| Act {
            path: format!("/agents/{}/release", url_part(&name)),
            body: None,
            back: "/console/agents",
            done: format!("agent `{name}` released from quarantine"),
        },
    )
    .await
}

pub(super) async fn approve(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    Path(id): Path<String>,
    req: FormRequest,
) -> Response {
    act(
        &console,
        &state,
        &call,
        &req,
        Permission::DecideApprovals,
        |form| {
            let ttl = form.field("ttl_seconds").trim();
            let body = ttl
                .parse::<u64>()
                .ok()
                .map(|ttl_seconds| json!({ "ttl_seconds": ttl_seconds }));
            Act {
                path: format!("/approvals/{}/approve", url_part(&id)),
                body,
                back: "/console/approvals",
                done: format!(
                    "approved `{id}`: the agent's retry of this exact call goes through once"
                ),
            }
        },
    )
    .await
}

pub(super) async fn deny(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    Path(id): Path<String>,
    req: FormRequest,
) -> Response {
    act(
        &console,
        &state,
        &call,
        &req,
        Permission::DecideApprovals,
        |_| Act {
            path: format!("/approvals/{}/deny", url_part(&id)),
            body: None,
            back: "/console/approvals",
            done: format!("denied `{id}`"),
        },
    )
    .await
}

pub(super) async fn resolve_alert(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    Path(id): Path<String>,
    req: FormRequest,
) -> Response {
    act(
        &console,
        &state,
        &call,
        &req,
        Permission::ResolveAlerts,
        |form| {
            let verdict = form.field("verdict").to_string();
            Act {
                path: format!("/alerts/{}/resolve", url_part(&id)),
                body: Some(json!({ "verdict": verdict })),
                back: "/console/alerts",
                done: format!("alert {id} resolved as {verdict}"),
            }
        },
    )
    .await
}

pub(super) async fn approve_tool(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    act(
        &console,
        &state,
        &call,
        &req,
        Permission::ApproveTools,
        |form| {
            let (route, name, digest) = (
                form.field("route"),
                form.field("name"),
                form.field("digest"),
            );
            Act {
                path: "/tools/approve".to_string(),
                body: Some(json!({ "route": route, "name": name, "digest": digest })),
                back: "/console/tools",
                done: format!("tool `{route}/{name}` approved at digest {digest}"),
            }
        },
    )
    .await
}

/// `explain`: asks the active policy version about a described request and
/// shows its answer (a read, but a form: it carries the CSRF token too).
pub(super) async fn explain(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    req: FormRequest,
) -> Response {
    let form = match submitted(&console, &state, &call, &req, Permission::QueryPolicies).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let body = json!({
        "agent": form.field("agent").trim(),
        "action": form.field("action").trim(),
        "resource": form.field("resource").trim(),
    });
    let answer = console
        .api
        .call(
            &form.session,
            form.remote,
            Method::POST,
            "/policies/explain",
            Some(body.clone()),
            &StepUp::default(),
        )
        .await;
    let shown = match answer {
        Ok(v) => format!(
            "<p id=\"explain-decision\">decision: <strong>{}</strong></p>{}",
            if v["allowed"].as_bool() == Some(true) {
                "allow"
            } else {
                "deny"
            },
            pre_json(&v)
        ),
        Err(r) => format!("<p class=\"flash error\">{}</p>", esc(&refused(&r).text)),
    };
    super::html(
        StatusCode::OK,
        html::page(
            "Explain",
            "/console/policies",
            Some(&form.session),
            None,
            &format!(
                "<p>Asked: {}</p>{shown}<p><a href=\"/console/policies\">Back to policies</a></p>",
                esc(&body.to_string())
            ),
        ),
    )
}

/// What-if: replays the requests recorded in the last `hours` under a stored
/// version's files (`POST /admin/v1/policies/whatif`) and shows the report.
pub(super) async fn whatif(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    Extension(call): Extension<Call>,
    Path(version): Path<u64>,
    req: FormRequest,
) -> Response {
    let form = match submitted(&console, &state, &call, &req, Permission::QueryPolicies).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let hours = form
        .field("hours")
        .trim()
        .parse::<i64>()
        .unwrap_or(24)
        .clamp(1, 24 * 90);
    let since_ms = crate::api::now_ms() - hours * 3_600_000;
    let answer = match console
        .api
        .get(&form.session, form.remote, &format!("/policies/{version}"))
        .await
    {
        Ok(v) => {
            console
                .api
                .call(
                    &form.session,
                    form.remote,
                    Method::POST,
                    "/policies/whatif",
                    Some(json!({ "files": v["files"], "since_ms": since_ms })),
                    &StepUp::default(),
                )
                .await
        }
        Err(r) => Err(r),
    };
    let shown = match answer {
        Ok(v) => format!("<div id=\"whatif-report\">{}</div>", pre_json(&v)),
        Err(r) => format!("<p class=\"flash error\">{}</p>", esc(&refused(&r).text)),
    };
    super::html(
        StatusCode::OK,
        html::page(
            &format!("What if version {version} were active"),
            "/console/policies",
            Some(&form.session),
            None,
            &format!(
                "<p>Requests recorded in the last {hours} hours, decided again under version {version}.</p>{shown}\
                 <p><a href=\"/console/policies/{version}\">Back to version {version}</a></p>"
            ),
        ),
    )
}
