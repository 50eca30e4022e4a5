//! The model and dataset registries (`docs/governance.md`).
//!
//! - `POST /admin/v1/models` registers a model version as a `draft`. A
//!   signature bundle, when given, must verify against a key pinned in
//!   `[[models.trusted_keys]]` and name the registered digest, or the
//!   registration is refused (a bad signature is never stored as
//!   "unverified"); provenance, when given, must be an in-toto statement
//!   naming the digest. Both are kept as evidence, as is an eval report.
//! - `POST /admin/v1/models/{name}/{version}/approve|deprecate|revoke` moves
//!   it along `draft → approved → deprecated → revoked` (revoke from any
//!   state). Each transition needs a human admin's fresh TOTP code or an
//!   open step-up window, is audited (`model.approve`, …) and is in force
//!   on the data plane before the call returns (the snapshot is rebuilt).
//! - `POST /admin/v1/datasets` registers a dataset as a `draft`; `POST
//!   /admin/v1/datasets/{name}/approve|deprecate|revoke` moves it along the
//!   same lifecycle, with the same step-up, audit (`dataset.approve`, …)
//!   and reload; `GET /admin/v1/datasets/report` lists data kept past a
//!   dataset's retention.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use portcullis_control::model_signing;
use portcullis_core::{Classification, ErrorCode};
use portcullis_store::{DatasetRow, Lifecycle, ModelRow};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{AdminState, ApiError, Call, json, now_ms, parse_json};

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/models", get(list_models).post(register_model))
        .route("/models/{name}/{version}", get(show_model))
        .route("/models/{name}/{version}/{step}", post(change_model))
        .route("/datasets", get(list_datasets).post(register_dataset))
        .route("/datasets/report", get(retention_report))
        .route("/datasets/{name}", get(show_dataset))
        .route("/datasets/{name}/{step}", post(change_dataset))
}

/// Registry names and versions: what fits a URL path segment and a Cedar
/// attribute without escaping.
fn valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

fn parse_evidence(text: &Option<String>) -> Value {
    text.as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// A model as the API shows it; `full` adds the evidence documents.
fn model_view(row: &ModelRow, full: bool) -> Value {
    let mut v = json!({
        "id": row.id(),
        "name": row.name,
        "version": row.version,
        "digest": row.digest,
        "lifecycle": row.lifecycle.as_str(),
        "verified": row.verified,
        "verified_key": row.verified_key,
        "has_signature": row.signature.is_some(),
        "has_provenance": row.provenance.is_some(),
        "has_eval": row.eval.is_some(),
        "registered_by": row.registered_by,
        "registered_at": row.registered_ms,
        "changed_by": row.changed_by,
        "changed_at": row.changed_ms,
    });
    if full {
        v["signature"] = parse_evidence(&row.signature);
        v["provenance"] = parse_evidence(&row.provenance);
        v["eval"] = parse_evidence(&row.eval);
    }
    v
}

async fn list_models(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let rows = state
        .store
        .registry_models()
        .await
        .map_err(|e| call.store_error(e))?;
    let models: Vec<Value> = rows.iter().map(|r| model_view(r, false)).collect();
    Ok(json(StatusCode::OK, &json!({ "models": models })))
}

async fn show_model(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let row = state
        .store
        .registry_model(&name, &version)
        .await
        .map_err(|e| call.store_error(e))?;
    Ok(json(StatusCode::OK, &model_view(&row, true)))
}

/// `POST /admin/v1/models` body. The evidence documents are JSON values
/// (the CLI reads them from files).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    name: String,
    version: String,
    /// `sha256:<64 lower-case hex>` of the artifact.
    digest: String,
    /// A Sigstore bundle or bare DSSE envelope.
    #[serde(default)]
    signature: Option<Value>,
    /// An in-toto statement (SLSA provenance), bare or in a DSSE envelope.
    #[serde(default)]
    provenance: Option<Value>,
    /// An evaluation report, stored as given.
    #[serde(default)]
    eval: Option<Value>,
}

async fn register_model(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: Register = parse_json(&call, &body)?;
    let bad = |m: String| call.error(ErrorCode::BadRequest, m);
    if !valid_name(&req.name) || !valid_name(&req.version) {
        return Err(bad(
            "model name and version: 1-128 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, `+`".into(),
        ));
    }
    let to_text = |v: &Option<Value>| v.as_ref().map(Value::to_string);
    let (signature, provenance) = (to_text(&req.signature), to_text(&req.provenance));
    let verified = match &signature {
        Some(bundle) => Some(
            model_signing::verify_bundle(bundle.as_bytes(), &req.digest, &state.model_keys)
                .map_err(|e| bad(format!("signature: {e}")))?,
        ),
        // Without a bundle the digest is still checked for shape.
        None => {
            model_signing::check_digest(&req.digest).map_err(|e| bad(e.to_string()))?;
            None
        }
    };
    if let Some(p) = &provenance {
        model_signing::check_provenance(p.as_bytes(), &req.digest)
            .map_err(|e| bad(format!("provenance: {e}")))?;
    }
    let by = call.admin_name();
    let at = now_ms();
    let row = ModelRow {
        name: req.name,
        version: req.version,
        digest: req.digest,
        lifecycle: Lifecycle::Draft,
        verified: verified.is_some(),
        verified_key: verified.map(|v| v.key_id),
        signature,
        provenance,
        eval: to_text(&req.eval),
        registered_by: by.clone(),
        registered_ms: at,
        changed_by: by,
        changed_ms: at,
    };
    state
        .store
        .register_model(&row)
        .await
        .map_err(|e| call.store_error(e))?;
    // A route may already name this entry: its facts change now.
    state
        .gateway
        .reload()
        .await
        .map_err(|e| call.reload_error(e))?;
    call.done(
        &state.sink,
        "model.register",
        &format!("{}@{}", row.id(), row.digest),
        201,
    );
    Ok(json(StatusCode::CREATED, &model_view(&row, false)))
}

/// `POST /admin/v1/models/{name}/{version}/{step}`: `approve`, `deprecate`
/// or `revoke`.
async fn change_model(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    Path((name, version, step)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let to = lifecycle_step(&call, &step)?;
    // A lifecycle change decides which artifacts may serve confidential
    // data: a human admin's fresh TOTP code, or their open step-up window.
    let approver = crate::mfa::require_fresh_totp(&state, &call, &headers).await?;
    let row = state
        .store
        .set_model_lifecycle(&name, &version, to, &approver.user, now_ms())
        .await
        .map_err(|e| call.store_error(e))?;
    // In force on the data plane before the call returns.
    state
        .gateway
        .reload()
        .await
        .map_err(|e| call.reload_error(e))?;
    call.done_by(
        &state.sink,
        &approver,
        &format!("model.{step}"),
        &format!("{}@{}", row.id(), row.digest),
        200,
    );
    Ok(json(StatusCode::OK, &model_view(&row, false)))
}

/// The state a lifecycle step (`approve`, `deprecate`, `revoke`) moves to.
fn lifecycle_step(call: &Call, step: &str) -> Result<Lifecycle, ApiError> {
    match step {
        "approve" => Ok(Lifecycle::Approved),
        "deprecate" => Ok(Lifecycle::Deprecated),
        "revoke" => Ok(Lifecycle::Revoked),
        _ => Err(call.error(
            ErrorCode::NotFound,
            format!("no lifecycle step `{step}`: use approve, deprecate or revoke"),
        )),
    }
}

/// `POST /admin/v1/datasets/{name}/{step}`: `approve`, `deprecate` or
/// `revoke`, as for models.
async fn change_dataset(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    Path((name, step)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let to = lifecycle_step(&call, &step)?;
    // A lifecycle change decides who may read the data (a revoked dataset
    // is read by nobody): a human admin's fresh TOTP code, or their open
    // step-up window.
    let approver = crate::mfa::require_fresh_totp(&state, &call, &headers).await?;
    let row = state
        .store
        .set_dataset_lifecycle(&name, to, &approver.user, now_ms())
        .await
        .map_err(|e| call.store_error(e))?;
    // In force on the data plane before the call returns.
    state
        .gateway
        .reload()
        .await
        .map_err(|e| call.reload_error(e))?;
    call.done_by(
        &state.sink,
        &approver,
        &format!("dataset.{step}"),
        &row.name,
        200,
    );
    Ok(json(StatusCode::OK, &dataset_view(&row)))
}

/// The lawful bases a dataset may be kept on (GDPR art. 6), and `none`
/// for data that is not personal.
pub const CONSENT_BASES: [&str; 7] = [
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interests",
    "none",
];

fn dataset_view(row: &DatasetRow) -> Value {
    json!({
        "name": row.name,
        "owner": row.owner,
        "classification": row.classification,
        "provenance": {
            "source": row.source,
            "licence": row.licence,
            "collected": row.collected,
        },
        "consent_basis": row.consent_basis,
        "retention_days": row.retention_days,
        "purposes": row.purposes,
        "lifecycle": row.lifecycle.as_str(),
        "registered_by": row.registered_by,
        "registered_at": row.registered_ms,
        "changed_by": row.changed_by,
        "changed_at": row.changed_ms,
    })
}

/// `POST /admin/v1/datasets` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterDataset {
    name: String,
    owner: String,
    classification: String,
    source: String,
    licence: String,
    /// `YYYY-MM-DD`.
    collected: String,
    consent_basis: String,
    retention_days: i64,
    #[serde(default)]
    purposes: Vec<String>,
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

async fn register_dataset(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RegisterDataset = parse_json(&call, &body)?;
    let bad = |m: String| call.error(ErrorCode::BadRequest, m);
    if !valid_name(&req.name) {
        return Err(bad(
            "dataset name: 1-128 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, `+`".into(),
        ));
    }
    let classification: Classification = req
        .classification
        .parse()
        .map_err(|e| bad(format!("classification: {e}")))?;
    if !CONSENT_BASES.contains(&req.consent_basis.as_str()) {
        return Err(bad(format!(
            "consent_basis `{}`: use one of {}",
            req.consent_basis,
            CONSENT_BASES.join(", ")
        )));
    }
    if !is_date(&req.collected) {
        return Err(bad("collected: a date, YYYY-MM-DD".into()));
    }
    if req.retention_days <= 0 {
        return Err(bad("retention_days: a positive number of days".into()));
    }
    if req.owner.trim().is_empty() || req.source.trim().is_empty() {
        return Err(bad("owner and source must not be empty".into()));
    }
    let (by, at) = (call.admin_name(), now_ms());
    let row = DatasetRow {
        name: req.name,
        owner: req.owner,
        classification: classification.as_str().to_string(),
        source: req.source,
        licence: req.licence,
        collected: req.collected,
        consent_basis: req.consent_basis,
        retention_days: req.retention_days,
        purposes: req.purposes,
        lifecycle: Lifecycle::Draft,
        registered_by: by.clone(),
        registered_ms: at,
        changed_by: by,
        changed_ms: at,
    };
    state
        .store
        .register_dataset(&row)
        .await
        .map_err(|e| call.store_error(e))?;
    // A route or tool may already be tagged with it: its calls are decided
    // on it (no longer `dataset_unknown`) before the call returns.
    state
        .gateway
        .reload()
        .await
        .map_err(|e| call.reload_error(e))?;
    call.done(&state.sink, "dataset.register", &row.name, 201);
    Ok(json(StatusCode::CREATED, &dataset_view(&row)))
}

async fn list_datasets(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let rows = state
        .store
        .datasets()
        .await
        .map_err(|e| call.store_error(e))?;
    let datasets: Vec<Value> = rows.iter().map(dataset_view).collect();
    Ok(json(StatusCode::OK, &json!({ "datasets": datasets })))
}

async fn show_dataset(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let row = state
        .store
        .dataset(&name)
        .await
        .map_err(|e| call.store_error(e))?;
    Ok(json(StatusCode::OK, &dataset_view(&row)))
}

/// `GET /admin/v1/datasets/report`: per dataset, the routes tagged with it
/// and how much of what they left behind (captured payloads, audit records
/// that carry personal data) is older than the dataset's retention.
async fn retention_report(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
) -> Result<Response, ApiError> {
    let datasets = state
        .store
        .datasets()
        .await
        .map_err(|e| call.store_error(e))?;
    let mut tagged: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for route in state.gateway.routes() {
        for d in &route.datasets {
            tagged
                .entry(d.clone())
                .or_default()
                .push(route.name.clone());
        }
    }
    let now = now_ms();
    let mut report = Vec::new();
    for d in &datasets {
        let cutoff = now - d.retention_days.saturating_mul(86_400_000);
        let routes = tagged.get(&d.name).cloned().unwrap_or_default();
        let mut overdue = Vec::new();
        for route in &routes {
            let held = state
                .store
                .held_past(route, cutoff)
                .await
                .map_err(|e| call.store_error(e))?;
            if held.captures > 0 || held.personal_records > 0 {
                overdue.push(json!({
                    "route": route,
                    "captures": held.captures,
                    "personal_records": held.personal_records,
                    "oldest_at": held.oldest_ms,
                }));
            }
        }
        report.push(json!({
            "dataset": d.name,
            "retention_days": d.retention_days,
            "routes": routes,
            "overdue": overdue,
        }));
    }
    Ok(json(StatusCode::OK, &json!({ "report": report })))
}
