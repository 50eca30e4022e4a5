//! Admin endpoints of the policy lifecycle.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /admin/v1/policies` | every stored version (no files), and which is active / shadow |
//! | `POST /admin/v1/policies` | push a policy set: validated, stored, activated (or shadow) |
//! | `GET /admin/v1/policies/{version}` | one version with its files |
//! | `POST /admin/v1/policies/rollback` | make an earlier version active again |
//! | `GET /admin/v1/policies/shadow` | the shadow candidate's disagreements with the active version |
//! | `DELETE /admin/v1/policies/shadow` | stop shadow evaluation |
//! | `POST /admin/v1/policies/whatif` | re-decide recorded requests (HTTP, MCP, model) under a candidate set and list the changed ones |
//! | `POST /admin/v1/policies/explain` | decide a described request of any action with the active version and say why |
//!
//! Push and rollback need a human admin's fresh TOTP once any admin has
//! enrolled; the verified admin is then the version's author. They are recorded (`policy.push`, `policy.rollback`) with the
//! version they installed in the record's `policy_version`.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use portcullis_audit::Outcome;
use portcullis_control::policy_facts::{Asked, FactAction, RequestFacts};
use portcullis_control::policy_versions::{PolicyChange, PolicyChangeError, PolicyPush};
use portcullis_core::ErrorCode;
use portcullis_policy::{Explanation, TraceOutcome};
use serde::{Deserialize, Serialize};

use crate::api::{AdminState, ApiError, Call, json, parse_json};

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/policies", get(list_versions).post(push))
        .route("/policies/rollback", post(rollback))
        .route("/policies/explain", post(explain))
        .route("/policies/shadow", get(shadow).delete(stop_shadow))
        .route("/policies/whatif", post(whatif))
        .route("/policies/{version}", get(show_version))
}

/// `POST /admin/v1/policies` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    /// File name to text, `schema.cedarschema` included.
    files: BTreeMap<String, String>,
    #[serde(default)]
    message: String,
    /// Who pushes (as the caller says; the admin token does not name a person).
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    shadow: bool,
}

/// `POST /admin/v1/policies/rollback` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// The version to activate; absent: the one before the active version.
    version: Option<u64>,
}

#[derive(Debug, Serialize)]
struct VersionView {
    version: u64,
    hash: String,
    author: String,
    created_ms: i64,
    message: String,
    active: bool,
    shadow: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize)]
struct ChangeView {
    version: u64,
    hash: String,
    previous: u64,
    unchanged: bool,
    shadow: bool,
}

fn change_error(call: &Call, e: PolicyChangeError) -> ApiError {
    match e.code() {
        ErrorCode::Internal => call.internal(e),
        code => call.error(code, e.to_string()),
    }
}

const MAX_TEXT: usize = 200;

/// A free-text field for the log: bounded, one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_TEXT)
        .collect()
}

async fn push(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: PushBody = parse_json(&call, &body)?;
    let who = crate::approvals_api::approver(&state, &call, &headers).await?;
    // A verified admin is the author; with the token alone, the caller's word.
    let author = match who.strip_prefix("admin:") {
        Some(user) => user.to_string(),
        None => one_line(body.author.as_deref().unwrap_or("admin")),
    };
    let shadow = body.shadow;
    let change = state
        .gateway
        .push_policy(PolicyPush {
            files: body.files,
            author,
            message: one_line(&body.message),
            shadow,
        })
        .await
        .map_err(|e| change_error(&call, e))?;
    record(&state, &call, "policy.push", &who, &change);
    tracing::info!(
        version = change.version,
        previous = change.previous,
        shadow,
        unchanged = change.unchanged,
        "policy pushed"
    );
    Ok(json(StatusCode::OK, &view(change, shadow)))
}

async fn rollback(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RollbackBody = parse_json(&call, &body)?;
    let who = crate::approvals_api::approver(&state, &call, &headers).await?;
    let change = state
        .gateway
        .rollback_policy(body.version)
        .await
        .map_err(|e| change_error(&call, e))?;
    record(&state, &call, "policy.rollback", &who, &change);
    tracing::info!(
        version = change.version,
        previous = change.previous,
        "policy rolled back"
    );
    Ok(json(StatusCode::OK, &view(change, false)))
}

fn record(state: &AdminState, call: &Call, action: &str, who: &str, change: &PolicyChange) {
    let mut record = call.record(action, "policy", Outcome::Allow, 200, None);
    record.principal = Some(who.to_string());
    record.policy_version = Some(change.version);
    state.sink.submit(record);
}

fn view(change: PolicyChange, shadow: bool) -> ChangeView {
    ChangeView {
        version: change.version,
        hash: change.hash,
        previous: change.previous,
        unchanged: change.unchanged,
        shadow,
    }
}

async fn list_versions(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let policy_state = state
        .store
        .policy_state()
        .await
        .map_err(|e| call.store_error(e))?;
    let versions = state
        .store
        .policy_versions()
        .await
        .map_err(|e| call.store_error(e))?;
    let versions: Vec<VersionView> = versions
        .into_iter()
        .map(|row| VersionView {
            active: policy_state.active == Some(row.version),
            shadow: policy_state.shadow == Some(row.version),
            version: row.version,
            hash: row.hash,
            author: row.author,
            created_ms: row.created_ms,
            message: row.message,
            files: None,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "active": policy_state.active,
            "shadow": policy_state.shadow,
            "versions": versions,
        }),
    ))
}

async fn show_version(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(version): Path<String>,
) -> Result<Response, ApiError> {
    let version: u64 = version
        .parse()
        .map_err(|_| call.error(ErrorCode::BadRequest, "a policy version is a number"))?;
    let policy_state = state
        .store
        .policy_state()
        .await
        .map_err(|e| call.store_error(e))?;
    let row = state
        .store
        .policy_version(version)
        .await
        .map_err(|e| call.store_error(e))?;
    Ok(json(
        StatusCode::OK,
        &VersionView {
            active: policy_state.active == Some(row.version),
            shadow: policy_state.shadow == Some(row.version),
            version: row.version,
            hash: row.hash,
            author: row.author,
            created_ms: row.created_ms,
            message: row.message,
            files: Some(row.files),
        },
    ))
}

/// `POST /admin/v1/policies/explain` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainBody {
    agent: String,
    action: String,
    resource: String,
    #[serde(default)]
    context: RequestFacts,
}

#[derive(Debug, Serialize)]
struct TraceView {
    id: String,
    effect: &'static str,
    /// `satisfied`, `not_satisfied`, `out_of_scope` or `error`.
    outcome: &'static str,
    /// For `not_satisfied`: the conditions that did not hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn explain(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ExplainBody = parse_json(&call, &body)?;
    let action =
        FactAction::parse(&body.action).map_err(|e| call.error(ErrorCode::BadRequest, e))?;
    // An agent the gateway would refuse before policy is not explained as if
    // policy decided: a typo or a revoked agent is an error, not a "deny".
    match state.store.agent(&body.agent).await {
        Ok(Some(agent)) if agent.revoked_at.is_some() => {
            return Err(call.error(
                ErrorCode::AgentRevoked,
                format!(
                    "agent `{}` is revoked: the gateway refuses it before any policy is evaluated",
                    body.agent
                ),
            ));
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(call.error(
                ErrorCode::NotFound,
                format!("no agent named `{}`", body.agent),
            ));
        }
        Err(e) => return Err(call.store_error(e)),
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let facts = body
        .context
        .prepare(&state.gateway.timezone(), now)
        .map_err(|e| call.error(ErrorCode::BadRequest, format!("context: {e}")))?;
    let snapshot = state.gateway.snapshot();
    let asked = facts
        .ask(
            snapshot.authorizer(),
            &body.agent,
            action,
            &body.resource,
            |request| request.explain(snapshot.authorizer()),
        )
        .map_err(|e| call.error(ErrorCode::BadRequest, e))?;
    let body = match asked {
        Asked::One(explanation) => {
            let mut view = explanation_view(explanation);
            view["policy_version"] = snapshot.policy_version().into();
            view["action"] = body.action.into();
            view
        }
        // The listing is always answered: it shows the models whose
        // `complete` (method GET) is allowed.
        Asked::PerModel(models) => {
            let visible: Vec<&str> = models
                .iter()
                .filter(|(_, e)| e.decision.allowed)
                .map(|(m, _)| m.as_str())
                .collect();
            let visible = serde_json::json!(visible);
            let models: Vec<serde_json::Value> = models
                .into_iter()
                .map(|(model, explanation)| {
                    let mut view = explanation_view(explanation);
                    view["model"] = model.into();
                    view
                })
                .collect();
            serde_json::json!({
                "policy_version": snapshot.policy_version(),
                "action": body.action,
                "visible": visible,
                "models": models,
            })
        }
    };
    Ok(json(StatusCode::OK, &body))
}

/// One explanation as JSON: the decision and every policy's trace.
fn explanation_view(explanation: Explanation) -> serde_json::Value {
    let policies: Vec<TraceView> = explanation
        .policies
        .into_iter()
        .map(|p| {
            let (outcome, failed, error) = match p.outcome {
                TraceOutcome::Satisfied => ("satisfied", Vec::new(), None),
                TraceOutcome::OutOfScope => ("out_of_scope", Vec::new(), None),
                TraceOutcome::NotSatisfied(failed) => ("not_satisfied", failed, None),
                TraceOutcome::Error(e) => ("error", Vec::new(), Some(e)),
            };
            TraceView {
                id: p.id,
                effect: p.effect,
                outcome,
                failed,
                error,
            }
        })
        .collect();
    let decision = explanation.decision;
    serde_json::json!({
        "allowed": decision.allowed,
        "deciding": decision.policy_ids,
        "errors": decision.errors,
        "policies": policies,
    })
}

async fn shadow(State(state): State<AdminState>) -> Response {
    let active = state.gateway.policy_version();
    let body = match state.gateway.shadow_report() {
        None => serde_json::json!({ "active": active, "shadow": null }),
        Some((version, report)) => serde_json::json!({
            "active": active,
            "shadow": version,
            "decided": report.decided,
            "allow_to_deny": report.allow_to_deny,
            "deny_to_allow": report.deny_to_allow,
            "recent": report.recent,
        }),
    };
    json(StatusCode::OK, &body)
}

async fn stop_shadow(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = crate::approvals_api::approver(&state, &call, &headers).await?;
    let stopped = state
        .gateway
        .stop_shadow()
        .await
        .map_err(|e| change_error(&call, e))?;
    let mut record = call.record("policy.shadow_stop", "policy", Outcome::Allow, 200, None);
    record.principal = Some(who);
    record.policy_version = stopped;
    state.sink.submit(record);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "stopped": stopped }),
    ))
}

/// `POST /admin/v1/policies/whatif` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhatIfBody {
    /// The candidate's files, `schema.cedarschema` included.
    files: BTreeMap<String, String>,
    /// Replay requests recorded from this time on (ms since the epoch).
    since_ms: i64,
}

async fn whatif(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: WhatIfBody = parse_json(&call, &body)?;
    let report = state
        .gateway
        .whatif(&body.files, body.since_ms)
        .await
        .map_err(|e| change_error(&call, e))?;
    Ok(json(StatusCode::OK, &report))
}
