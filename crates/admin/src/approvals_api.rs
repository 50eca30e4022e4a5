//! Admin endpoints of just-in-time access: approval tickets and grants, so
//! the CLI and a chat-ops bot can decide them.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /admin/v1/approvals` | live tickets (pending, approved-unused, denied) |
//! | `GET /admin/v1/approvals/{id}` | one ticket: the whole bound call (`query`, `headers`, `body_bytes`, `protocol`, `preview` or `tool` and `arguments` or `model`, secrets masked) and a one-line `summary` |
//! | `POST /admin/v1/approvals/{id}/approve` | approve this exact call once; with `ttl_seconds` (not for tickets behavioral analytics required), also grant the agent that action for that long: the HTTP method on the route, the MCP action on the tool (prompt, resource), `complete`/`embed` on the model |
//! | `POST /admin/v1/approvals/{id}/deny` | deny it |
//! | `GET /admin/v1/grants` | live grants |
//! | `POST /admin/v1/grants/{id}/revoke` | end a grant (or a break-glass) now |
//! | `POST /admin/v1/breakglass` | emergency: every action on every route (its tools, models, …; never a vault secret) for one agent, for a while; two distinct admins' TOTP codes |
//!
//! Deciding needs a human admin's fresh TOTP (`X-Portcullis-User`,
//! `X-Portcullis-TOTP`) once any admin has enrolled. Every decision is
//! recorded (`approval.approve`, `approval.deny`, `grant.create`,
//! `grant.revoke`) with the deciding admin as principal (`admin:<name>`).

use axum::Extension;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use portcullis_audit::Outcome;
use portcullis_control::approvals::{CallBinding, CallKind, DecideError, RequiredBy};
use portcullis_core::ErrorCode;
use portcullis_policy::{GrantScope, McpAction, ModelEntity};
use portcullis_store::GrantRow;
use serde::Deserialize;

use crate::api::{AdminState, ApiError, Call, json, parse_json};

/// The longest grant an approver may give.
const MAX_GRANT: u64 = 24 * 3600;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/approvals", get(list))
        .route("/approvals/{id}", get(show))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
        .route("/grants", get(list_grants))
        .route("/grants/{id}/revoke", post(revoke_grant))
        .route("/breakglass", post(open_breakglass))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// Also grant the agent this action on this route for this long.
    ttl_seconds: Option<u64>,
}

/// The admin deciding: a fresh TOTP code (or its step-up window) once any
/// admin has enrolled (`admin:<name>`); before that the admin credential
/// alone (its name: `admin` for the bootstrap credential).
pub(crate) async fn approver(
    state: &AdminState,
    call: &Call,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let approver = crate::mfa::require_fresh_totp(state, call, headers).await?;
    Ok(if approver.mfa {
        format!("admin:{}", approver.user)
    } else {
        approver.user
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

async fn list(State(state): State<AdminState>) -> Response {
    let tickets: Vec<serde_json::Value> = state
        .gateway
        .approvals()
        .list()
        .iter()
        .map(|t| t.to_json())
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "approvals": tickets }))
}

async fn show(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ticket = state.gateway.approvals().get(&id).ok_or_else(|| {
        call.error(
            ErrorCode::NotFound,
            format!("no live approval ticket `{id}`"),
        )
    })?;
    Ok(json(StatusCode::OK, &ticket.to_json()))
}

fn decide_error(call: &Call, e: DecideError) -> ApiError {
    match e {
        DecideError::NotFound(_) => call.error(ErrorCode::NotFound, e.to_string()),
        DecideError::Decided(..) => call.error(ErrorCode::Conflict, e.to_string()),
        DecideError::Unavailable(_) => call.error(ErrorCode::Unavailable, e.to_string()),
    }
}

async fn approve(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = approver(&state, &call, &headers).await?;
    let body: ApproveBody = if body.is_empty() {
        ApproveBody::default()
    } else {
        parse_json(&call, &body)?
    };
    let desk = state.gateway.approvals();
    if desk.get(&id).is_none() {
        // Cluster mode: the ticket may have been opened on another replica
        // since this one last read the shared store.
        desk.resync().await.map_err(|e| call.store_error(e))?;
    }
    let ticket = desk.get(&id).ok_or_else(|| {
        call.error(
            ErrorCode::NotFound,
            format!("no live approval ticket `{id}`"),
        )
    })?;
    let grant = match body.ttl_seconds {
        None => None,
        // A grant lets policy allow the route; it cannot lift the hold of
        // the agent's risk grade (each write is held while the grade lasts),
        // so it would widen access and still not let the agent through.
        Some(_) if ticket.binding.required_by == RequiredBy::Analytics => {
            return Err(call.error(
                ErrorCode::BadRequest,
                "this ticket was required by behavioral analytics (the agent's risk grade holds each write): approve it without ttl_seconds",
            ));
        }
        // A grant is a Cedar permit of one action on one resource (a route,
        // a tool, a model): a ticket that names none cannot be granted.
        Some(_) if grant_scope(&ticket.binding).is_none() => {
            return Err(call.error(
                ErrorCode::BadRequest,
                format!(
                    "a `{}` call cannot be granted for a time; approve it without ttl_seconds",
                    ticket.binding.action
                ),
            ));
        }
        Some(ttl) if ttl == 0 || ttl > MAX_GRANT => {
            return Err(call.error(
                ErrorCode::BadRequest,
                format!("ttl_seconds must be between 1 and {MAX_GRANT}"),
            ));
        }
        Some(ttl) => {
            let now = now_ms();
            let scope = grant_scope(&ticket.binding).unwrap_or_default();
            Some(GrantRow {
                id: hex::encode(rand::random::<[u8; 8]>()),
                kind: "grant".into(),
                reason: String::new(),
                agent: ticket.binding.agent.clone(),
                action: scope.0,
                resource: scope.1,
                created_ms: now,
                expires_ms: now + ttl as i64 * 1000,
                created_by: who.clone(),
                ticket: Some(ticket.id.clone()),
                revoked_ms: None,
            })
        }
    };
    let decided = desk
        .decide_confirmed(&id, true, &who, grant.as_ref().map(|g| g.id.clone()))
        .await
        .map_err(|e| decide_error(&call, e))?;
    record(&state, &call, "approval.approve", &who, &decided.id);
    if let Some(grant) = &grant {
        state
            .store
            .add_grant(grant)
            .await
            .map_err(|e| call.store_error(e))?;
        state
            .gateway
            .reload()
            .await
            .map_err(|e| call.reload_error(e))?;
        record(&state, &call, "grant.create", &who, &decided.id);
        tracing::info!(grant = %grant.id, agent = %grant.agent, action = %grant.action, route = %grant.resource, by = %who, "grant created");
    }
    tracing::info!(ticket = %decided.id, by = %who, "approval granted");
    Ok(json(StatusCode::OK, &decided.to_json()))
}

/// What a grant from a ticket permits, as stored: the Cedar action and the
/// resource as the audit record names it (`<route>`, `<route>/<tool>`,
/// `<route>/<model>`), checked to be one a snapshot can link.
fn grant_scope(binding: &CallBinding) -> Option<(String, String)> {
    let (action, resource) = match &binding.kind {
        CallKind::Http { .. } => (binding.action.clone(), binding.resource.clone()),
        CallKind::McpTool { .. } => (
            McpAction::for_method(&binding.action)?.as_str().to_string(),
            binding.resource.clone(),
        ),
        CallKind::Llm { model } => (
            binding.action.clone(),
            ModelEntity::id(&binding.resource, model),
        ),
    };
    GrantScope::parse(&action, &resource)?;
    Some((action, resource))
}

async fn deny(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = approver(&state, &call, &headers).await?;
    let decided = state
        .gateway
        .approvals()
        .decide_confirmed(&id, false, &who, None)
        .await
        .map_err(|e| decide_error(&call, e))?;
    record(&state, &call, "approval.deny", &who, &decided.id);
    tracing::info!(ticket = %decided.id, by = %who, "approval denied");
    Ok(json(StatusCode::OK, &decided.to_json()))
}

fn record(state: &AdminState, call: &Call, action: &str, who: &str, ticket: &str) {
    let mut record = call.record(
        action,
        &format!("approval:{ticket}"),
        Outcome::Allow,
        200,
        None,
    );
    record.principal = Some(who.to_string());
    record.approval_ticket = Some(ticket.to_string());
    state.sink.submit(record);
}

fn grant_json(g: &GrantRow) -> serde_json::Value {
    let prefix = if g.kind == "breakglass" {
        portcullis_policy::BREAKGLASS_PREFIX
    } else {
        portcullis_policy::GRANT_PREFIX
    };
    serde_json::json!({
        "id": g.id,
        "kind": g.kind,
        "reason": g.reason,
        "policy_id": format!("{prefix}{}", g.id),
        "agent": g.agent,
        "action": g.action,
        "resource": g.resource,
        "created_ms": g.created_ms,
        "expires_ms": g.expires_ms,
        "created_by": g.created_by,
        "ticket": g.ticket,
    })
}

async fn list_grants(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let grants = state
        .store
        .live_grants(now_ms())
        .await
        .map_err(|e| call.store_error(e))?;
    let grants: Vec<serde_json::Value> = grants.iter().map(grant_json).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "grants": grants }),
    ))
}

async fn revoke_grant(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = approver(&state, &call, &headers).await?;
    state
        .store
        .revoke_grant(&id, now_ms())
        .await
        .map_err(|e| call.store_error(e))?;
    // In force once the reload returns: the grant's policy is gone.
    state
        .gateway
        .reload()
        .await
        .map_err(|e| call.reload_error(e))?;
    let mut record = call.record(
        "grant.revoke",
        &format!("grant:{id}"),
        Outcome::Allow,
        200,
        None,
    );
    record.principal = Some(who);
    state.sink.submit(record);
    Ok(json(StatusCode::OK, &serde_json::json!({ "revoked": id })))
}

/// `POST /admin/v1/breakglass` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakGlassBody {
    agent: String,
    reason: String,
    ttl_seconds: u64,
    /// Exactly two distinct enrolled admins with a current code each.
    approvers: Vec<ApproverCode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproverCode {
    user: String,
    totp: String,
}

/// The longest break-glass.
const MAX_BREAKGLASS: u64 = 4 * 3600;

async fn open_breakglass(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: BreakGlassBody = parse_json(&call, &body)?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(call.error(
            ErrorCode::BadRequest,
            "a reason of 1 to 500 characters is required",
        ));
    }
    if body.ttl_seconds == 0 || body.ttl_seconds > MAX_BREAKGLASS {
        return Err(call.error(
            ErrorCode::BadRequest,
            format!("ttl_seconds must be between 1 and {MAX_BREAKGLASS}"),
        ));
    }
    let [first, second] = &body.approvers[..] else {
        return Err(call.error(
            ErrorCode::MfaRequired,
            "break-glass needs exactly two approvers, each with a TOTP code",
        ));
    };
    if first.user == second.user {
        return Err(call.error(
            ErrorCode::MfaRequired,
            "break-glass needs two distinct approvers",
        ));
    }
    let mut names = Vec::new();
    for a in [first, second] {
        names.push(
            crate::mfa::verify_totp(&state, &call, &a.user, a.totp.trim())
                .await?
                .user,
        );
    }
    let live = state
        .store
        .agents()
        .await
        .map_err(|e| call.store_error(e))?
        .into_iter()
        .any(|a| a.name == body.agent && a.revoked_at.is_none());
    if !live {
        return Err(call.error(
            ErrorCode::NotFound,
            format!("`{}` does not exist or is revoked", body.agent),
        ));
    }
    let now = now_ms();
    let grant = GrantRow {
        id: hex::encode(rand::random::<[u8; 8]>()),
        kind: "breakglass".into(),
        reason: reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
        agent: body.agent.clone(),
        action: "*".into(),
        resource: "*".into(),
        created_ms: now,
        expires_ms: now + body.ttl_seconds as i64 * 1000,
        created_by: names.join("+"),
        ticket: None,
        revoked_ms: None,
    };
    state
        .store
        .add_grant(&grant)
        .await
        .map_err(|e| call.store_error(e))?;
    state
        .gateway
        .reload()
        .await
        .map_err(|e| call.reload_error(e))?;
    let policy_id = format!("{}{}", portcullis_policy::BREAKGLASS_PREFIX, grant.id);
    let mut record = call.record(
        "breakglass.open",
        &format!("agent:{}", grant.agent),
        Outcome::Allow,
        200,
        None,
    );
    record.principal = Some(format!("admin:{}", grant.created_by));
    record.breakglass = Some(policy_id.clone());
    state.sink.submit(record);
    // The alert: loud in the server log, and to the humans' webhook.
    tracing::error!(agent = %grant.agent, grant = %policy_id, approvers = %grant.created_by, reason = %grant.reason, ttl_seconds = body.ttl_seconds, "BREAK-GLASS OPENED");
    let view = grant_json(&grant);
    state.gateway.approvals().announce(serde_json::json!({
        "event": "breakglass.opened",
        "grant": view,
    }));
    Ok(json(StatusCode::OK, &view))
}

#[cfg(test)]
mod tests {
    use portcullis_control::approvals::{BodyDigest, Hold};

    use super::*;

    #[test]
    fn a_grant_covers_the_action_and_resource_the_ticket_was_for() {
        let hold = || Hold {
            agent: "bot".into(),
            user: None,
            policy_version: 1,
            policy_id: "p".into(),
            required_by: RequiredBy::Policy,
        };
        let (parts, ()) = http::Request::builder()
            .uri("/x")
            .body(())
            .unwrap()
            .into_parts();
        let args = serde_json::json!({ "a": 1 });
        let scope = |b: CallBinding| grant_scope(&b);
        let pair = |a: &str, r: &str| Some((a.to_string(), r.to_string()));
        assert_eq!(
            scope(CallBinding::http(
                hold(),
                "bank",
                "POST",
                "/bank",
                &parts,
                b"{}"
            )),
            pair("POST", "bank")
        );
        assert_eq!(
            scope(CallBinding::mcp_tool(
                hold(),
                "tools",
                "/mcp",
                &parts,
                "save",
                &args
            )),
            pair("call_tool", "tools/save")
        );
        assert_eq!(
            scope(CallBinding::mcp(
                hold(),
                "tools",
                "/mcp",
                &parts,
                "prompts/get",
                "greet",
                &args
            )),
            pair("get_prompt", "tools/greet")
        );
        assert_eq!(
            scope(CallBinding::llm(
                hold(),
                "llm",
                "embed",
                "/llm/v1/embeddings",
                &parts,
                "e-3",
                BodyDigest::of(b"{}")
            )),
            pair("embed", "llm/e-3")
        );
        // A method no one action stands for is refused, never guessed at.
        assert_eq!(
            scope(CallBinding::mcp(
                hold(),
                "tools",
                "/mcp",
                &parts,
                "completion/complete",
                "x",
                &args
            )),
            None
        );
    }
}
