//! MCP tool pins: `GET /admin/v1/tools` lists every tool the gateway has seen
//! on its MCP routes with its pin status; `POST /admin/v1/tools/approve`
//! approves the definition a tool is listed with now (the caller names the
//! digest it reviewed, so a definition that changed again meanwhile is not
//! approved by mistake). Approving needs a human admin's fresh TOTP code once
//! admins have enrolled, like revocation. Approvals are audited
//! (`tool.approve`, principal the approving admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use portcullis_core::ErrorCode;
use portcullis_store::McpToolRow;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{AdminState, ApiError, Call, json};

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/tools", get(list_tools))
        .route("/tools/approve", post(approve_tool))
}

/// A pin's status: `approved`, `changed` (listed definition differs from
/// the approved one) or `unapproved` (a new tool that failed the poisoning scan).
fn status(row: &McpToolRow) -> &'static str {
    match &row.approved_digest {
        Some(a) if *a == row.seen_digest => "approved",
        Some(_) => "changed",
        None => "unapproved",
    }
}

fn view(row: &McpToolRow) -> Value {
    json!({
        "route": row.route,
        "name": row.name,
        "status": status(row),
        "digest": row.seen_digest,
        "approved_digest": row.approved_digest,
        "definition": serde_json::from_str::<Value>(&row.seen_definition).unwrap_or(Value::Null),
        "findings": serde_json::from_str::<Value>(&row.findings).unwrap_or(Value::Null),
        "first_seen_ms": row.first_seen_ms,
        "seen_ms": row.seen_ms,
        "approved_ms": row.approved_ms,
        "approved_by": row.approved_by,
    })
}

async fn list_tools(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let rows = state
        .store
        .mcp_tools()
        .await
        .map_err(|e| call.store_error(e))?;
    let tools: Vec<Value> = rows.iter().map(view).collect();
    Ok(json(StatusCode::OK, &json!({ "tools": tools })))
}

/// `POST /admin/v1/tools/approve` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approve {
    route: String,
    name: String,
    /// The digest of the definition the admin reviewed (`tools list`).
    digest: String,
}

async fn approve_tool(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Approve>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    // Releasing a blocked tool is sensitive: a human admin's fresh TOTP code
    // once admins have enrolled (see `mfa.rs`).
    let approver = crate::mfa::require_fresh_totp(&state, &call, &headers).await?;
    let Some(pins) = state.gateway.mcp_pins() else {
        return Err(call.error(ErrorCode::NotFound, "no MCP route is configured"));
    };
    let row = state
        .store
        .approve_mcp_tool(
            &req.route,
            &req.name,
            &req.digest,
            &approver.user,
            crate::api::now_ms(),
        )
        .await
        .map_err(|e| call.store_error(e))?;
    // In force on the data plane before the call returns.
    pins.approved(&req.route, &req.name, &req.digest);
    call.done_by(
        &state.sink,
        &approver,
        "tool.approve",
        &format!("{}/{}@{}", req.route, req.name, req.digest),
        200,
    );
    Ok(json(StatusCode::OK, &view(&row)))
}
