//! Behavioral analytics' admin endpoints: alerts (list, show, resolve with a
//! verdict), releasing a quarantined agent, and the analytics part of an
//! agent view (risk history, baseline summary, quarantines).
//!
//! A benign verdict widens the agent's baseline; a release lifts the
//! quarantine in the store (so it stays lifted across a restart) and on the
//! risk board (so the next request is served). Both need a human admin's
//! fresh TOTP once an admin has enrolled (`mfa.rs`), and both leave audit
//! records naming that admin.

use std::collections::HashSet;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use portcullis_core::ErrorCode;
use portcullis_store::AlertRow;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{AdminState, ApiError, Call, json as json_response, parse_json};

/// Most audit records scanned for an alert's requests.
const EVIDENCE_SCAN: u32 = 5_000;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/alerts", get(list))
        .route("/alerts/{id}", get(show))
        .route("/alerts/{id}/resolve", post(resolve))
        .route("/agents/{name}/release", post(release))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    open: Option<bool>,
    limit: Option<u32>,
}

fn view(alert: &AlertRow) -> Value {
    let detail: Value = serde_json::from_str(&alert.detail).unwrap_or(Value::Null);
    let request_ids: Value = serde_json::from_str(&alert.request_ids).unwrap_or(json!([]));
    json!({
        "id": alert.id,
        "agent": alert.agent,
        "time_ms": alert.time_ms,
        "grade": alert.grade,
        "risk": alert.risk,
        "status": if alert.verdict.is_some() { "resolved" } else { "open" },
        "reasons": detail.get("reasons").cloned().unwrap_or(json!([])),
        "features": detail.get("features").cloned().unwrap_or(json!([])),
        "request_ids": request_ids,
        "verdict": alert.verdict,
        "resolved_at": alert.resolved_at,
        "resolved_by": alert.resolved_by,
    })
}

async fn list(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let alerts = state
        .store
        .alerts(
            q.open.unwrap_or(false),
            q.limit.unwrap_or(50).clamp(1, 1000),
        )
        .await
        .map_err(|e| call.store_error(e))?;
    let views: Vec<Value> = alerts.iter().map(view).collect();
    Ok(json_response(StatusCode::OK, &json!({ "alerts": views })))
}

async fn find(state: &AdminState, call: &Call, id: i64) -> Result<AlertRow, ApiError> {
    state
        .store
        .alert(id)
        .await
        .map_err(|e| call.store_error(e))?
        .ok_or_else(|| call.error(ErrorCode::NotFound, format!("alert {id} does not exist")))
}

async fn show(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let alert = find(&state, &call, id).await?;
    let mut v = view(&alert);
    // The requests involved, from the audit log: the scan starts at the
    // first one and is bounded.
    let ids: Vec<String> = serde_json::from_str(&alert.request_ids).unwrap_or_default();
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut requests = Vec::new();
    if let Some(first) = ids.first()
        && let Some(seq) = state
            .store
            .audit_seq_of(first)
            .await
            .map_err(|e| call.store_error(e))?
    {
        let leaves = state
            .store
            .audit_leaves(seq, EVIDENCE_SCAN)
            .await
            .map_err(|e| call.store_error(e))?;
        for (_, text) in leaves {
            if let Ok(record) = serde_json::from_str::<Value>(&text)
                && record
                    .get("request_id")
                    .and_then(Value::as_str)
                    .is_some_and(|r| wanted.contains(r))
            {
                requests.push(record);
            }
        }
    }
    v["requests"] = Value::Array(requests);
    Ok(json_response(StatusCode::OK, &v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolve {
    verdict: String,
}

async fn resolve(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: axum::http::HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Resolve { verdict } = parse_json(&call, &body)?;
    if verdict != "benign" && verdict != "malicious" {
        return Err(call.error(
            ErrorCode::BadRequest,
            "verdict must be `benign` or `malicious`",
        ));
    }
    find(&state, &call, id).await?;
    // A benign verdict teaches the model: it needs a human's fresh TOTP.
    let approver = crate::mfa::require_fresh_totp(&state, &call, &headers).await?;
    let alert = state
        .store
        .resolve_alert(id, &verdict, &approver.user, now_ms())
        .await
        .map_err(|e| call.store_error(e))?;
    if verdict == "benign"
        && let Some(analytics) = state.gateway.analytics()
    {
        let detail: Value = serde_json::from_str(&alert.detail).unwrap_or(Value::Null);
        if let Some(features) = portcullis_control::analytics::alert_features(&detail) {
            analytics.benign(alert.id, &alert.agent, features).await;
        }
        // Cluster mode: every replica forgives the agent (its risk resets,
        // what it held back is learned) and adopts the widened baseline.
        if let Err(e) = state
            .store
            .notify_change(portcullis_store::Change::Analytics)
            .await
        {
            tracing::warn!(agent = %alert.agent, error = %e, "cannot announce a benign verdict to the other replicas");
        }
    }
    call.done(
        &state.sink,
        &format!("alert.resolve.{verdict}"),
        &alert.agent,
        200,
    );
    Ok(json_response(StatusCode::OK, &view(&alert)))
}

async fn release(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let Some(analytics) = state.gateway.analytics() else {
        return Err(call.error(
            ErrorCode::NotFound,
            "behavioral analytics is off (`[analytics] enabled = false`)",
        ));
    };
    // Lifting a containment is sensitive: a human's fresh TOTP (contract §2).
    let approver = crate::mfa::require_fresh_totp(&state, &call, &headers).await?;
    let mut released = state.store.release(&name, &approver.user, now_ms()).await;
    if matches!(released, Err(portcullis_store::StoreError::NotFound(_)))
        && analytics.quarantined(&name)
    {
        // On the board but not yet stored: the analytics task stores the
        // row right after publishing; let it finish, then release.
        analytics.settled(&name).await;
        released = state.store.release(&name, &approver.user, now_ms()).await;
    }
    released.map_err(|e| call.store_error(e))?;
    // In force on the data plane once this returns.
    analytics.release(&name).await;
    // The other replicas (cluster mode) lift it too.
    if let Err(e) = state
        .store
        .notify_change(portcullis_store::Change::Quarantine)
        .await
    {
        tracing::warn!(agent = %name, error = %e, "cannot announce a release to the other replicas");
    }
    call.done_by(&state.sink, &approver, "agent.release", &name, 200);
    let (risk, grade) = analytics.board().risk(&name);
    Ok(json_response(
        StatusCode::OK,
        &json!({ "agent": name, "risk": risk, "grade": grade.as_str() }),
    ))
}

/// The analytics part of `agent show`: current risk and grade, history,
/// baseline summary and quarantines. `null` when analytics is off.
pub(crate) async fn agent_analytics(
    state: &AdminState,
    call: &Call,
    name: &str,
) -> Result<Value, ApiError> {
    let Some(analytics) = state.gateway.analytics() else {
        return Ok(Value::Null);
    };
    let (risk, grade) = analytics.board().risk(name);
    let history = state
        .store
        .risk_history(name, 100)
        .await
        .map_err(|e| call.store_error(e))?;
    let quarantines = state
        .store
        .quarantines(Some(name))
        .await
        .map_err(|e| call.store_error(e))?;
    let baseline = analytics.summary(name).await;
    Ok(json!({
        "risk": risk,
        "grade": grade.as_str(),
        "risk_history": history.iter().map(|p| json!({
            "time_ms": p.time_ms, "risk": p.risk, "grade": p.grade,
        })).collect::<Vec<_>>(),
        "baseline": baseline,
        "quarantines": quarantines.iter().map(|q| json!({
            "since_ms": q.since_ms, "alert_id": q.alert_id,
            "released_at": q.released_at, "released_by": q.released_by,
        })).collect::<Vec<_>>(),
    }))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}
