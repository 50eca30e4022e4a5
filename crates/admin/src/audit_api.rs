//! Admin endpoints of the tamper-evident log: checkpoints, records with their
//! leaf bytes, inclusion and consistency proofs, and the export of the exact
//! leaves for offline verification (`docs/audit-format.md`).
//!
//! Every answer that carries hashes also carries the signed checkpoint they
//! lead to, so a client verifies against the log's key, not against the server.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use portcullis_audit::merkle;
use portcullis_core::ErrorCode;
use portcullis_store::StoredCheckpoint;
use serde::{Deserialize, Serialize};

use crate::api::{AdminState, ApiError, Call, json};

/// Records per page of an export.
const EXPORT_PAGE: u32 = 2_000;

#[derive(Debug, Serialize)]
struct CheckpointView {
    tree_size: u64,
    time_ms: i64,
    note: String,
}

impl From<StoredCheckpoint> for CheckpointView {
    fn from(c: StoredCheckpoint) -> Self {
        CheckpointView {
            tree_size: c.size,
            time_ms: c.time_ms,
            note: c.note,
        }
    }
}

fn checkpoint_json(state: &AdminState, latest: Option<StoredCheckpoint>) -> serde_json::Value {
    let signer = state.checkpointer.signer();
    // Every key a checkpoint of this log may be signed with: the current
    // one, then those a rotation retired or announced (an export spanning
    // a rotation needs them all).
    let mut keys = vec![signer.verifier().to_string()];
    keys.extend(
        state
            .store
            .retired_audit_keys()
            .iter()
            .map(ToString::to_string),
    );
    serde_json::json!({
        "origin": signer.origin(),
        "verifier_key": signer.verifier().to_string(),
        "verifier_keys": keys,
        "checkpoint": latest.map(CheckpointView::from),
    })
}

/// `GET /admin/v1/audit/checkpoint`: the latest signed checkpoint and the key
/// that signs them.
pub(crate) async fn latest_checkpoint(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let latest = state
        .store
        .latest_checkpoint()
        .await
        .map_err(|e| call.store_error(e))?;
    Ok(json(StatusCode::OK, &checkpoint_json(&state, latest)))
}

/// A halted log is `audit_unavailable`, not an internal error.
fn sign_error(call: &Call, e: portcullis_control::checkpointer::CheckpointerError) -> ApiError {
    match e {
        portcullis_control::checkpointer::CheckpointerError::Halted(reason) => call.error(
            ErrorCode::AuditUnavailable,
            format!("the audit log is halted, no checkpoint is signed: {reason}"),
        ),
        other => call.internal(other),
    }
}

/// `POST /admin/v1/audit/checkpoint`: signs the log now (if it grew).
pub(crate) async fn sign_checkpoint(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let latest = state
        .checkpointer
        .sign_now()
        .await
        .map_err(|e| sign_error(&call, e))?;
    Ok(json(StatusCode::OK, &checkpoint_json(&state, latest)))
}

/// `GET /admin/v1/audit/checkpoints`: every stored checkpoint.
pub(crate) async fn list_checkpoints(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let all: Vec<CheckpointView> = state
        .store
        .checkpoints()
        .await
        .map_err(|e| call.store_error(e))?
        .into_iter()
        .map(CheckpointView::from)
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "checkpoints": all }),
    ))
}

/// Finds a record by seq (decimal) or request id (32 hex digits).
async fn resolve(state: &AdminState, call: &Call, id: &str) -> Result<u64, ApiError> {
    let seq = if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        state
            .store
            .audit_seq_of(&id.to_ascii_lowercase())
            .await
            .map_err(|e| call.store_error(e))?
    } else if let Ok(seq) = id.parse::<u64>() {
        Some(seq)
    } else {
        return Err(call.error(
            ErrorCode::BadRequest,
            "a record id is its seq (a number) or its request id (32 hex digits)",
        ));
    };
    let size = state
        .store
        .audit_size()
        .await
        .map_err(|e| call.store_error(e))?;
    seq.filter(|&s| s < size)
        .ok_or_else(|| call.error(ErrorCode::NotFound, format!("no audit record `{id}`")))
}

async fn leaf(state: &AdminState, call: &Call, seq: u64) -> Result<String, ApiError> {
    let mut rows = state
        .store
        .audit_leaves(seq, 1)
        .await
        .map_err(|e| call.store_error(e))?;
    match rows.pop() {
        Some((s, text)) if s == seq => Ok(text),
        _ => Err(call.error(ErrorCode::NotFound, format!("no audit record `{seq}`"))),
    }
}

/// `GET /admin/v1/audit/records/{id}`: one record, with its exact leaf bytes.
pub(crate) async fn record(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let seq = resolve(&state, &call, &id).await?;
    let leaf = leaf(&state, &call, seq).await?;
    let record: serde_json::Value = serde_json::from_str(&leaf).map_err(|e| call.internal(e))?;
    // Clear values of pseudonymized fields, while their retention lasts.
    let personal: serde_json::Map<String, serde_json::Value> = state
        .store
        .audit_personal(seq)
        .await
        .map_err(|e| call.store_error(e))?
        .into_iter()
        .map(|(field, value)| (field, serde_json::Value::String(value)))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "seq": seq,
            "leaf": leaf,
            "leaf_hash": hex::encode(merkle::leaf_hash(leaf.as_bytes())),
            "record": record,
            "personal": personal,
        }),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct InclusionQuery {
    id: String,
    tree_size: Option<u64>,
}

/// `GET /admin/v1/audit/proof/inclusion?id=SEQ|REQUEST_ID[&tree_size=N]`: the
/// proof that a record is in the tree a checkpoint signed. Without
/// `tree_size`, the latest checkpoint (signed now if it does not cover the
/// record yet).
pub(crate) async fn inclusion(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    query: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let seq = resolve(&state, &call, &q.id).await?;
    let checkpoint = checkpoint_covering(&state, &call, seq + 1, q.tree_size).await?;
    let size = checkpoint.size;
    if seq >= size {
        return Err(call.error(
            ErrorCode::BadRequest,
            format!("record {seq} is not in the tree of size {size}"),
        ));
    }
    let proof = state
        .store
        .inclusion_proof(seq, size)
        .await
        .map_err(|e| call.store_error(e))?;
    let leaf = leaf(&state, &call, seq).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "seq": seq,
            "tree_size": size,
            "leaf": leaf,
            "leaf_hash": hex::encode(merkle::leaf_hash(leaf.as_bytes())),
            "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
            "checkpoint": CheckpointView::from(checkpoint),
        }),
    ))
}

/// The stored checkpoint of exactly `tree_size`, or else the latest one,
/// signing now if it covers fewer than `at_least` records.
async fn checkpoint_covering(
    state: &AdminState,
    call: &Call,
    at_least: u64,
    tree_size: Option<u64>,
) -> Result<StoredCheckpoint, ApiError> {
    let checkpoints = state
        .store
        .checkpoints()
        .await
        .map_err(|e| call.store_error(e))?;
    if let Some(size) = tree_size {
        return checkpoints
            .into_iter()
            .find(|c| c.size == size)
            .ok_or_else(|| {
                call.error(
                    ErrorCode::NotFound,
                    format!("no checkpoint was signed at tree size {size}"),
                )
            });
    }
    match checkpoints.into_iter().last() {
        Some(c) if c.size >= at_least => Ok(c),
        _ => state
            .checkpointer
            .sign_now()
            .await
            .map_err(|e| sign_error(call, e))?
            .filter(|c| c.size >= at_least)
            .ok_or_else(|| {
                call.error(
                    ErrorCode::Unavailable,
                    "the record is not yet committed to the log; retry shortly",
                )
            }),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConsistencyQuery {
    from: u64,
    to: Option<u64>,
}

/// `GET /admin/v1/audit/proof/consistency?from=A[&to=B]`: the proof that the
/// tree of A records is a prefix of the tree of B (default: the latest
/// checkpoint). B must have a signed checkpoint; A's is included when one was
/// signed, and A's tree head is always given.
pub(crate) async fn consistency(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    query: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let new = checkpoint_covering(&state, &call, q.from, q.to).await?;
    // The older tree need not have been signed: a client may hold its head
    // from elsewhere (an earlier `audit prove`, a witness) and compare.
    let old = if q.from == 0 {
        None
    } else {
        checkpoint_covering(&state, &call, q.from, Some(q.from))
            .await
            .ok()
    };
    if q.from > new.size {
        return Err(call.error(
            ErrorCode::BadRequest,
            format!("tree size {} is larger than {}", q.from, new.size),
        ));
    }
    let proof = state
        .store
        .consistency_proof(q.from, new.size)
        .await
        .map_err(|e| call.store_error(e))?;
    let from_root = state
        .store
        .audit_head(q.from)
        .await
        .map_err(|e| call.store_error(e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "from": q.from,
            "to": new.size,
            "from_root": hex::encode(from_root),
            "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
            "from_checkpoint": old.map(CheckpointView::from),
            "to_checkpoint": CheckpointView::from(new),
        }),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ExportQuery {
    from: Option<u64>,
    to: Option<u64>,
}

/// `GET /admin/v1/audit/export?from=A&to=B`: the exact leaf bytes of records
/// `A..B` (default: all), one per line (`application/jsonl`), streamed page by
/// page. With the checkpoint file this is everything `portcullis audit verify
/// --export` needs.
pub(crate) async fn export(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let size = state
        .store
        .audit_size()
        .await
        .map_err(|e| call.store_error(e))?;
    let end = q.to.unwrap_or(size).min(size);
    let start = q.from.unwrap_or(0).min(end);
    let store = state.store.clone();
    let pages = futures_util::stream::unfold(start, move |next| {
        let store = store.clone();
        async move {
            if next >= end {
                return None;
            }
            let limit = EXPORT_PAGE.min((end - next) as u32);
            match store.audit_leaves(next, limit).await {
                Ok(rows) if !rows.is_empty() => {
                    let last = rows.last().map_or(next, |(s, _)| *s);
                    let mut page = String::new();
                    for (_, leaf) in rows {
                        page.push_str(&leaf);
                        page.push('\n');
                    }
                    Some((Ok::<_, std::io::Error>(Bytes::from(page)), last + 1))
                }
                Ok(_) => None,
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), end)),
            }
        }
    });
    let mut response = Body::from_stream(pages).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/jsonl"),
    );
    headers.insert("x-portcullis-tree-size", header::HeaderValue::from(end));
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub(crate) struct InventoryQuery {
    /// Window start, ms since the epoch (default: everything).
    since_ms: Option<i64>,
}

/// `GET /admin/v1/inventory?since_ms=T`: every identity, every route, and the
/// identity → resource edges the audit log recorded since `T`.
pub(crate) async fn inventory(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    query: Result<Query<InventoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let since_ms = q.since_ms.unwrap_or(0);
    let edges = state
        .store
        .inventory(since_ms)
        .await
        .map_err(|e| call.store_error(e))?;
    let agents = state
        .store
        .agents()
        .await
        .map_err(|e| call.store_error(e))?;
    let identities: Vec<_> = agents
        .iter()
        .map(|a| {
            serde_json::json!({
                "name": a.name,
                "kind": "agent",
                "roles": a.roles,
                "created_at": a.created_at,
                "revoked_at": a.revoked_at,
            })
        })
        .collect();
    let summaries = state.gateway.routes();
    let routes: Vec<_> = summaries
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "kind": r.kind,
                "path_prefix": r.path_prefix,
                "classification": r.classification.as_str(),
                "datasets": r.datasets,
            })
        })
        .collect();
    let datasets = state
        .store
        .datasets()
        .await
        .map_err(|e| call.store_error(e))?;
    let models = state
        .store
        .registry_models()
        .await
        .map_err(|e| call.store_error(e))?;
    let lineage = crate::lineage::lineage(&summaries, &datasets, &models);
    let flows = crate::lineage::flows(&summaries, &edges);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "since_ms": since_ms,
            "identities": identities,
            "resources": routes,
            "edges": edges,
            "lineage": lineage,
            "flows": flows,
        }),
    ))
}
