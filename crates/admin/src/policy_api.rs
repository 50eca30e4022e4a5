//! Admin endpoints of the policy lifecycle.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /admin/v1/policies` | every stored version (no files), and which is active / shadow |
//! | `POST /admin/v1/policies` | push a policy set: validated, stored, activated (or shadow) |
//! | `GET /admin/v1/policies/{version}` | one version with its files |
//! | `POST /admin/v1/policies/rollback` | make an earlier version active again |
//!
//! Push and rollback are recorded (`policy.push`, `policy.rollback`) with the
//! version they installed in the record's `policy_version`.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use portcullis_audit::Outcome;
use portcullis_core::ErrorCode;
use portcullis_gateway::policy_versions::{PolicyChange, PolicyChangeError, PolicyPush};
use serde::{Deserialize, Serialize};

use crate::api::{AdminState, ApiError, Call, json, parse_json};

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/policies", get(list_versions).post(push))
        .route("/policies/rollback", post(rollback))
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
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: PushBody = parse_json(&call, &body)?;
    let shadow = body.shadow;
    let change = state
        .gateway
        .push_policy(PolicyPush {
            files: body.files,
            author: one_line(body.author.as_deref().unwrap_or("admin")),
            message: one_line(&body.message),
            shadow,
        })
        .await
        .map_err(|e| change_error(&call, e))?;
    record(&state, &call, "policy.push", &change);
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
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: RollbackBody = parse_json(&call, &body)?;
    let change = state
        .gateway
        .rollback_policy(body.version)
        .await
        .map_err(|e| change_error(&call, e))?;
    record(&state, &call, "policy.rollback", &change);
    tracing::info!(
        version = change.version,
        previous = change.previous,
        "policy rolled back"
    );
    Ok(json(StatusCode::OK, &view(change, false)))
}

fn record(state: &AdminState, call: &Call, action: &str, change: &PolicyChange) {
    let mut record = call.record(action, "policy", Outcome::Allow, 200, None);
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
