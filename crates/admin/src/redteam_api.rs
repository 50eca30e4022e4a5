//! Red-team runs: `POST /admin/v1/redteam/runs` keeps the scorecard a
//! `portcullis redteam` run produced and writes its audit record,
//! `GET /admin/v1/redteam/runs` lists runs newest first and
//! `GET /admin/v1/redteam/runs/{run_id}` shows one whole.
//!
//! The audit record's action says the outcome, so a failed attack is one
//! filter away: `redteam.failed` (resource `redteam/<run>:<family>,…`, the
//! families an attack got through) or `redteam.held` (`redteam/<run>`). The
//! attacks themselves are the agent's own requests, each audited under the
//! request id the stored scorecard gives as its evidence.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use portcullis_audit::Outcome;
use portcullis_core::ErrorCode;
use portcullis_store::RedteamRunRow;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{AdminState, ApiError, Call, json, now_ms};

/// The largest scorecard kept (a full run is about 40 KiB).
const MAX_REPORT_BYTES: usize = 1 << 20;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/redteam/runs", get(list_runs).post(record_run))
        .route("/redteam/runs/{run_id}", get(show_run))
}

fn view(row: &RedteamRunRow, with_report: bool) -> Value {
    let mut v = json!({
        "run_id": row.run_id,
        "started_ms": row.started_ms,
        "finished_ms": row.finished_ms,
        "recorded_ms": row.recorded_ms,
        "recorded_by": row.recorded_by,
        "agent": row.agent,
        "gateway": row.gateway,
        "held": row.held,
        "failed": row.failed,
        "skipped": row.skipped,
        "failed_families": row.failed_families,
        "audit_request_id": row.audit_request_id,
    });
    if with_report {
        v["report"] = serde_json::from_str(&row.report).unwrap_or(Value::Null);
    }
    v
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
}

async fn list_runs(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| call.error(ErrorCode::BadRequest, e.body_text()))?;
    let rows = state
        .store
        .redteam_runs(i64::from(q.limit.unwrap_or(20).clamp(1, 1000)))
        .await
        .map_err(|e| call.store_error(e))?;
    let runs: Vec<Value> = rows.iter().map(|r| view(r, false)).collect();
    Ok(json(StatusCode::OK, &json!({ "runs": runs })))
}

async fn show_run(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    match state
        .store
        .redteam_run(&run_id)
        .await
        .map_err(|e| call.store_error(e))?
    {
        Some(row) => Ok(json(StatusCode::OK, &view(&row, true))),
        None => Err(call.error(ErrorCode::NotFound, format!("no red-team run `{run_id}`"))),
    }
}

/// A run id: what the CLI makes (16 hex digits), up to 64 `[0-9a-z-]`.
fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
}

/// The row a scorecard becomes, or what is wrong with it.
fn row_of(report: &Value, recorded_by: &str, request_id: &str) -> Result<RedteamRunRow, String> {
    let text = |key: &str| {
        report[key]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("`{key}` must be a string"))
    };
    let int = |key: &str| {
        report[key]
            .as_i64()
            .ok_or_else(|| format!("`{key}` must be an integer"))
    };
    let run_id = text("run_id")?;
    if !valid_run_id(&run_id) {
        return Err("`run_id` must be 1 to 64 of `0-9a-z-`".into());
    }
    let families = report["families"]
        .as_array()
        .ok_or("`families` must be an array")?;
    let verdict_count = |v: &str| families.iter().filter(|f| f["verdict"] == v).count() as i64;
    let failed_families: Vec<String> = families
        .iter()
        .filter(|f| f["verdict"] == "failed")
        .map(|f| f["family"].as_str().unwrap_or("?").to_string())
        .collect();
    // The counts must agree with the families: a summary that says "all
    // held" over a failed family would hide it from `redteam history`.
    let (held, failed, skipped) = (int("held")?, int("failed")?, int("skipped")?);
    if (held, failed, skipped)
        != (
            verdict_count("held"),
            verdict_count("failed"),
            verdict_count("skipped"),
        )
    {
        return Err("`held`, `failed` and `skipped` must count the families' verdicts".into());
    }
    Ok(RedteamRunRow {
        run_id,
        started_ms: int("started_ms")?,
        finished_ms: int("finished_ms")?,
        recorded_ms: now_ms(),
        recorded_by: recorded_by.to_string(),
        agent: text("agent")?,
        gateway: text("gateway")?,
        held,
        failed,
        skipped,
        failed_families,
        audit_request_id: request_id.to_string(),
        report: report.to_string(),
    })
}

async fn record_run(
    State(state): State<AdminState>,
    Extension(call): Extension<Call>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_REPORT_BYTES {
        return Err(call.error(
            ErrorCode::PayloadTooLarge,
            format!("a scorecard is at most {MAX_REPORT_BYTES} bytes"),
        ));
    }
    let report: Value = crate::api::parse_json(&call, &body)?;
    let request_id = call.request_id.to_string();
    let row = row_of(&report, &call.admin_name(), &request_id)
        .map_err(|m| call.error(ErrorCode::BadRequest, m))?;
    state
        .store
        .add_redteam_run(&row)
        .await
        .map_err(|e| call.store_error(e))?;
    let (action, resource) = if row.failed_families.is_empty() {
        ("redteam.held", format!("redteam/{}", row.run_id))
    } else {
        (
            "redteam.failed",
            format!("redteam/{}:{}", row.run_id, row.failed_families.join(",")),
        )
    };
    call.audit(&state.sink, action, &resource, Outcome::Allow, 201, None);
    Ok(json(
        StatusCode::CREATED,
        &json!({
            "run_id": row.run_id,
            "request_id": request_id,
            "audit_action": action,
            "failed_families": row.failed_families,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(report: Value, expect: Result<Vec<&str>, &str>) {
        let got = row_of(&report, "admin", "r1").map(|r| r.failed_families);
        match (got, expect) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(e), Err(want)) => assert!(e.contains(want), "{e}"),
            (got, want) => panic!("{got:?} vs {want:?}"),
        }
    }

    fn report(run_id: &str, counts: (i64, i64, i64), verdicts: &[(&str, &str)]) -> Value {
        let families: Vec<Value> = verdicts
            .iter()
            .map(|(f, v)| json!({"family": f, "verdict": v, "probes": []}))
            .collect();
        json!({
            "run_id": run_id, "agent": "bot", "gateway": "https://g",
            "started_ms": 1, "finished_ms": 2,
            "held": counts.0, "failed": counts.1, "skipped": counts.2,
            "families": families,
        })
    }

    #[test]
    fn scorecards_are_checked_before_they_are_kept() {
        check(
            report(
                "ab12",
                (1, 1, 0),
                &[("smuggling", "held"), ("path-confusion", "failed")],
            ),
            Ok(vec!["path-confusion"]),
        );
        check(
            report("ab12", (1, 0, 0), &[("smuggling", "held")]),
            Ok(vec![]),
        );
        check(
            report(
                "ab12",
                (2, 0, 0),
                &[("smuggling", "held"), ("path-confusion", "failed")],
            ),
            Err("must count"),
        );
        check(report("AB 12", (0, 0, 0), &[]), Err("run_id"));
        check(json!({"run_id": "a"}), Err("families"));
    }
}
