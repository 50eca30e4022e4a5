//! The console's pages. Each asks [`may`](super::session::may) through
//! [`viewer`](super::viewer), reads what it shows from the admin API
//! (`internal.rs`) and renders it; the forms on it post to `actions.rs`.

use std::fmt::Write;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use portcullis_audit::{checkpoint, merkle};
use serde::Deserialize;
use serde_json::Value;

use super::diff;
use super::html::{
    action_form, csrf_field, esc, page, pre_json, step_up_fields, table, text, time_ms, time_s,
    url_part,
};
use super::session::{Permission, SessionView, may};
use super::svg::{self, Flow, RiskPoint};
use super::{Console, html as respond, viewer};
use crate::api::{AdminState, RemoteAddr};

/// Agents whose details (risk, quarantine) a page fetches one by one.
const MAX_DETAILED_AGENTS: usize = 100;

/// What every page handler has.
struct Ctx {
    console: Arc<Console>,
    session: SessionView,
    remote: Option<RemoteAddr>,
}

impl Ctx {
    /// Reads `/admin/v1{path}`; a refusal becomes an error paragraph.
    async fn get(&self, path: &str) -> Result<Value, String> {
        self.console
            .api
            .get(&self.session, self.remote, path)
            .await
            .map_err(|r| {
                format!(
                    "<p class=\"flash error\">The admin API refused <code>{}</code>: {} ({})</p>",
                    esc(path),
                    esc(&r.message),
                    esc(&r.code)
                )
            })
    }

    fn render(&self, title: &str, current: &str, body: &str) -> Response {
        let flash = self.console.sessions.take_flash(&self.session);
        respond(
            StatusCode::OK,
            page(title, current, Some(&self.session), flash, body),
        )
    }
}

async fn ctx(
    console: Arc<Console>,
    headers: &HeaderMap,
    remote: Option<Extension<RemoteAddr>>,
    permission: Permission,
) -> Result<Ctx, Box<Response>> {
    let session = viewer(&console, headers, permission).await?;
    Ok(Ctx {
        console,
        session,
        remote: remote.map(|Extension(r)| r),
    })
}

macro_rules! ctx_or_return {
    ($console:expr, $headers:expr, $remote:expr, $permission:expr) => {
        match ctx($console, &$headers, $remote, $permission).await {
            Ok(c) => c,
            Err(response) => return *response,
        }
    };
}

/// The columns of a decision row; `console.js` builds the same ones from
/// the event stream.
const DECISION_COLUMNS: &[&str] = &[
    "time",
    "kind",
    "principal",
    "action",
    "resource",
    "outcome",
    "status",
    "request",
];

/// A decision's columns as plain text (the stream sends these; the script
/// puts them in cells as text, never as markup).
pub(super) fn decision_fields(r: &Value) -> Vec<String> {
    let resource = match (r["resource"].as_str(), r["path"].as_str()) {
        (Some(res), Some(path)) => format!("{res} {path}"),
        (Some(res), None) => res.to_string(),
        (None, Some(path)) => path.to_string(),
        (None, None) => "-".to_string(),
    };
    vec![
        time_ms(&r["time_ms"]),
        text(&r["kind"]),
        text(&r["principal"]),
        text(&r["action"]),
        resource,
        text(&r["outcome"]),
        text(&r["status"]),
        text(&r["request_id"]),
    ]
}

/// A decision's row, escaped; the outcome cell carries its class.
fn decision_row(r: &Value) -> Vec<String> {
    decision_fields(r)
        .iter()
        .enumerate()
        .map(|(i, f)| match i {
            5 => format!("<span class=\"outcome {0}\">{0}</span>", esc(f)),
            _ => esc(f),
        })
        .collect()
}

pub(super) async fn overview(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    remote: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
) -> Response {
    let c = ctx_or_return!(console, headers, remote, Permission::View);
    let mut body = String::new();
    let agents = c.get("/agents").await;
    let approvals = c.get("/approvals").await;
    let alerts = c.get("/alerts?open=true").await;
    let count = |v: &Result<Value, String>, key: &str, filter: &dyn Fn(&Value) -> bool| match v {
        Ok(v) => v[key]
            .as_array()
            .map(|a| a.iter().filter(|x| filter(x)).count().to_string())
            .unwrap_or_else(|| "-".into()),
        Err(_) => "-".into(),
    };
    let head = state.sink.head();
    let audit = match state.sink.halted() {
        Some(reason) => format!("halted: {reason}"),
        None if state.sink.verified() => "verified".to_string(),
        None => "not yet verified".to_string(),
    };
    let _ = write!(
        body,
        "<section class=\"tiles\">\
         <a class=\"tile\" href=\"/console/agents\"><span class=\"n\" id=\"n-agents\">{}</span> active agents</a>\
         <a class=\"tile\" href=\"/console/approvals\"><span class=\"n\" id=\"n-approvals\">{}</span> pending approvals</a>\
         <a class=\"tile\" href=\"/console/alerts\"><span class=\"n\" id=\"n-alerts\">{}</span> open alerts</a>\
         <a class=\"tile\" href=\"/console/audit\"><span class=\"n\">{}</span> audit records ({})</a>\
         </section>",
        count(&agents, "agents", &|a: &Value| a["status"] == "active"),
        count(&approvals, "approvals", &|t: &Value| t["status"]
            == "pending"),
        count(&alerts, "alerts", &|_: &Value| true),
        head.size,
        esc(&audit),
    );
    body.push_str(
        "<h2>Live decisions</h2><p class=\"hint\" id=\"live-status\" data-events=\"/console/events\">\
         Newest first. With scripts on, new decisions appear as they are recorded; otherwise reload.</p>",
    );
    match c.get("/audit?limit=25").await {
        Ok(v) => {
            let mut records: Vec<&Value> = v["records"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            records.reverse();
            let rows: Vec<Vec<String>> = records.iter().map(|r| decision_row(r)).collect();
            body.push_str(&live_table(&rows));
        }
        Err(e) => body.push_str(&e),
    }
    c.render("Overview", "/console", &body)
}

/// The live table: always present (even empty), so the script has a body
/// to prepend to.
fn live_table(rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table id=\"live\"><thead><tr>");
    for h in DECISION_COLUMNS {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// An agent's analytics: (risk text, quarantined since).
fn risk_and_quarantine(detail: &Value) -> (String, Option<String>) {
    let a = &detail["analytics"];
    if a.is_null() {
        return ("analytics off".to_string(), None);
    }
    let risk = format!(
        "{} ({:.2})",
        text(&a["grade"]),
        a["risk"].as_f64().unwrap_or_default()
    );
    let quarantine = a["quarantines"].as_array().and_then(|qs| {
        qs.iter()
            .find(|q| q["released_at"].is_null())
            .map(|q| time_ms(&q["since_ms"]))
    });
    (risk, quarantine)
}

pub(super) async fn agents(
    Extension(console): Extension<Arc<Console>>,
    remote: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
) -> Response {
    let c = ctx_or_return!(console, headers, remote, Permission::View);
    let list = match c.get("/agents").await {
        Ok(v) => v,
        Err(e) => return c.render("Agents", "/console/agents", &e),
    };
    let mut rows = Vec::new();
    let agents = list["agents"].as_array().cloned().unwrap_or_default();
    for (i, a) in agents.iter().enumerate() {
        let name = text(&a["name"]);
        let detail = if i < MAX_DETAILED_AGENTS {
            c.get(&format!("/agents/{}", url_part(&name))).await.ok()
        } else {
            None
        };
        let (risk, quarantine) = detail
            .as_ref()
            .map(risk_and_quarantine)
            .unwrap_or_else(|| ("-".to_string(), None));
        let revoked = a["status"] == "revoked" || !a["revoked_at"].is_null();
        let mut actions = String::new();
        // Role-aware: a role that may not act sees no form to act with
        // (the API would refuse it anyway).
        let manage = may(&c.session, Permission::ManageAgents);
        if manage && quarantine.is_some() {
            actions.push_str(&action_form(
                &c.session,
                &format!("/console/agents/{}/release", url_part(&name)),
                "Release",
                &[],
                true,
                Some(&format!("Release agent {name} from quarantine?")),
            ));
        }
        if manage && !revoked {
            actions.push_str(&action_form(
                &c.session,
                &format!("/console/agents/{}/revoke", url_part(&name)),
                "Revoke",
                &[],
                true,
                Some(&format!(
                    "Revoke agent {name}? Its certificates and keys stop working now."
                )),
            ));
        }
        let status = match &quarantine {
            Some(since) => format!("{} · quarantined since {since}", text(&a["status"])),
            None => text(&a["status"]),
        };
        rows.push(vec![
            format!("<span class=\"agent-name\">{}</span>", esc(&name)),
            esc(&a["roles"]
                .as_array()
                .map(|r| r.iter().map(text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()),
            format!(
                "<span class=\"status\" data-agent=\"{}\">{}</span>",
                esc(&name),
                esc(&status)
            ),
            esc(&risk),
            esc(&time_s(&a["last_seen"])),
            esc(&time_s(&a["expires_at"])),
            actions,
        ]);
    }
    let body = table(
        "agents",
        &[
            "agent",
            "roles",
            "status",
            "risk",
            "last seen",
            "certificate expires",
            "",
        ],
        &rows,
        "No agents yet: `portcullis agent create NAME --role ROLE`.",
    );
    c.render("Agents", "/console/agents", &body)
}

/// The whole held call of a ticket, as the approver must see it.
fn held_call(t: &Value) -> String {
    let mut out = String::from("<dl class=\"call\">");
    let mut item = |k: &str, v: String| {
        let _ = write!(out, "<dt>{k}</dt><dd>{v}</dd>");
    };
    item("agent", esc(&text(&t["agent"])));
    if !t["delegated_user"].is_null() {
        item("for user", esc(&text(&t["delegated_user"])));
    }
    item("protocol", esc(&text(&t["protocol"])));
    item("action", esc(&text(&t["action"])));
    item("resource", esc(&text(&t["resource"])));
    item("path", format!("<code>{}</code>", esc(&text(&t["path"]))));
    item(
        "query",
        format!(
            "<code class=\"query\">{}</code>",
            esc(t["query"].as_str().unwrap_or(""))
        ),
    );
    if let Some(headers) = t["headers"].as_array().filter(|h| !h.is_empty()) {
        let shown: Vec<String> = headers
            .iter()
            .map(|h| format!("{}: {}", text(&h["name"]), text(&h["value"])))
            .collect();
        item("headers", format!("<pre>{}</pre>", esc(&shown.join("\n"))));
    }
    item(
        "body",
        format!(
            "{} B, sha256 <code>{}</code>",
            esc(&text(&t["body_bytes"])),
            esc(&text(&t["body_sha256"]))
        ),
    );
    if !t["preview"].is_null() {
        item(
            "preview",
            format!("<pre class=\"preview\">{}</pre>", esc(&text(&t["preview"]))),
        );
    }
    if !t["tool"].is_null() {
        item("tool", esc(&text(&t["tool"])));
        item(
            "arguments",
            format!(
                "<div class=\"arguments\">{}</div>",
                pre_json(&t["arguments"])
            ),
        );
    }
    if !t["model"].is_null() {
        item("model", esc(&text(&t["model"])));
    }
    item(
        "why",
        format!(
            "{} (policy <code>{}</code>, version {})",
            esc(&text(&t["required_by"])),
            esc(&text(&t["policy_id"])),
            esc(&text(&t["policy_version"]))
        ),
    );
    item("expires", esc(&time_ms(&t["expires_ms"])));
    out.push_str("</dl>");
    out
}

pub(super) async fn approvals(
    Extension(console): Extension<Arc<Console>>,
    remote: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
) -> Response {
    let c = ctx_or_return!(console, headers, remote, Permission::View);
    let list = match c.get("/approvals").await {
        Ok(v) => v,
        Err(e) => return c.render("Approvals", "/console/approvals", &e),
    };
    let mut body = String::from(
        "<p class=\"hint\">Each ticket is one exact call (method, path, query, bound headers, body). \
         Approving lets the agent's retry of that call through once. Once an admin has enrolled, \
         deciding needs their name and a fresh TOTP code, or this session's step-up window \
         (opened with a code or a passkey on the <a href=\"/console/step-up\">step-up page</a>).</p>\
         <section id=\"approvals\" data-refresh=\"2\">",
    );
    let tickets = list["approvals"].as_array().cloned().unwrap_or_default();
    if tickets.is_empty() {
        body.push_str("<p class=\"empty\">No live tickets.</p>");
    }
    for t in &tickets {
        let id = text(&t["id"]);
        let status = text(&t["status"]);
        let _ = write!(
            body,
            "<article class=\"ticket {status_class}\" data-ticket=\"{id}\"><h2><code>{id}</code> \
             <span class=\"badge\">{status}</span></h2><p class=\"summary\">{summary}</p>{call}",
            status_class = esc(&status),
            id = esc(&id),
            status = esc(&status),
            summary = esc(&text(&t["summary"])),
            call = held_call(t),
        );
        if status == "pending" && !may(&c.session, Permission::DecideApprovals) {
            body.push_str(
                "<p class=\"hint read-only\">Your admin role may not decide approvals.</p>",
            );
        } else if status == "pending" {
            let _ = write!(
                body,
                "<div class=\"decide\"><form method=\"post\" action=\"/console/approvals/{}/approve\" class=\"inline\">{}\
                 {}<input name=\"ttl_seconds\" placeholder=\"also grant for (s)\" inputmode=\"numeric\" size=\"14\">\
                 <button type=\"submit\" class=\"approve\">Approve</button></form>{}</div>",
                url_part(&id),
                csrf_field(&c.session),
                step_up_fields(),
                action_form(
                    &c.session,
                    &format!("/console/approvals/{}/deny", url_part(&id)),
                    "Deny",
                    &[],
                    true,
                    None,
                ),
            );
        }
        body.push_str("</article>");
    }
    body.push_str("</section>");
    c.render("Approvals", "/console/approvals", &body)
}

pub(super) async fn alerts(
    Extension(console): Extension<Arc<Console>>,
    remote: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
) -> Response {
    let c = ctx_or_return!(console, headers, remote, Permission::View);
    let list = match c.get("/alerts?limit=200").await {
        Ok(v) => v,
        Err(e) => return c.render("Alerts", "/console/alerts", &e),
    };
    let alerts = list["alerts"].as_array().cloned().unwrap_or_default();
    let mut points: Vec<RiskPoint> = alerts
        .iter()
        .map(|a| RiskPoint {
            agent: text(&a["agent"]),
            time_ms: a["time_ms"].as_i64().unwrap_or_default(),
            risk: a["risk"].as_f64().unwrap_or_default(),
            alert: true,
        })
        .collect();
    let mut agents: Vec<String> = points.iter().map(|p| p.agent.clone()).collect();
    agents.sort();
    agents.dedup();
    for agent in agents.iter().take(20) {
        if let Ok(detail) = c.get(&format!("/agents/{}", url_part(agent))).await {
            for p in detail["analytics"]["risk_history"]
                .as_array()
                .into_iter()
                .flatten()
            {
                points.push(RiskPoint {
                    agent: agent.clone(),
                    time_ms: p["time_ms"].as_i64().unwrap_or_default(),
                    risk: p["risk"].as_f64().unwrap_or_default(),
                    alert: false,
                });
            }
        }
    }
    let mut body = String::from("<h2>Risk over time</h2>");
    body.push_str(&svg::risk_timeline(&points));
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            let id = text(&a["id"]);
            let reasons = a["reasons"]
                .as_array()
                .map(|r| r.iter().map(text).collect::<Vec<_>>().join("; "))
                .unwrap_or_default();
            let resolve = if a["status"] == "open" && !may(&c.session, Permission::ResolveAlerts) {
                String::new()
            } else if a["status"] == "open" {
                format!(
                    "<form method=\"post\" action=\"/console/alerts/{}/resolve\" class=\"inline\">{}\
                     <select name=\"verdict\"><option>malicious</option><option>benign</option></select>{}\
                     <button type=\"submit\">Resolve</button></form>",
                    url_part(&id),
                    csrf_field(&c.session),
                    step_up_fields()
                )
            } else {
                format!(
                    "{} by {}",
                    esc(&text(&a["verdict"])),
                    esc(&text(&a["resolved_by"]))
                )
            };
            vec![
                esc(&id),
                esc(&time_ms(&a["time_ms"])),
                esc(&text(&a["agent"])),
                esc(&format!(
                    "{} ({:.2})",
                    text(&a["grade"]),
                    a["risk"].as_f64().unwrap_or_default()
                )),
                esc(&reasons),
                esc(&text(&a["status"])),
                resolve,
            ]
        })
        .collect();
    body.push_str("<h2>Alerts</h2>");
    body.push_str(&table(
        "alerts",
        &["id", "time", "agent", "risk", "why", "status", ""],
        &rows,
        "No alerts.",
    ));
    c.render("Alerts", "/console/alerts", &body)
}

pub(super) async fn policies(
    Extension(console): Extension<Arc<Console>>,
    remote: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
) -> Response {
    let c = ctx_or_return!(console, headers, remote, Permission::View);
    let list = match c.get("/policies").await {
        Ok(v) => v,
        Err(e) => return c.render("Policies", "/console/policies", &e),
    };
    let rows: Vec<Vec<String>> = list["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let n = text(&v["version"]);
            let mut marks = Vec::new();
            if v["active"] == true {
                marks.push("active");
            }
            if v["shadow"] == true {
                marks.push("shadow");
            }
            vec![
                format!("<a href=\"/console/policies/{0}\">{0}</a>", esc(&n)),
                esc(&marks.join(", ")),
                esc(&text(&v["author"])),
                esc(&time_ms(&v["created_ms"])),
                esc(&text(&v["message"])),
                format!("<code>{}</code>", esc(&text(&v["hash"]))),
            ]
        })
        .collect();
    let mut body = table(
        "versions",
        &["version", "", "author", "created", "message", "hash"],
        &rows,
        "No stored policy versions.",
    );
    let _ = write!(
        body,
        "<h2>Explain a request</h2><form method=\"post\" action=\"/console/policies/explain\" class=\"explain\">{}\
         <input name=\"agent\" placeholder=\"agent\" required> <input name=\"action\" placeholder=\"action (GET, call_tool, …)\" required> \
         <input name=\"resource\" placeholder=\"route, route/tool or route/model\" required> \
         <button type=\"submit\">Explain</button></form>\
         <p class=\"hint\">What-if (replaying recorded requests under a version) is on each version's page.</p>",
        csrf_field(&c.session)
    );
    c.render("Policies", "/console/policies", &body)
}

#[derive(Debug, Deserialize)]
pub(super) struct VersionQuery {
    /// The version to compare with (default: the one before).
    against: Option<u64>,
}

pub(super) async fn policy_version(
    Extension(console): Extension<Arc<Console>>,
    remote: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
    Path(version): Path<u64>,
    Query(q): Query<VersionQuery>,
) -> Response {
    let c = ctx_or_return!(console, headers, remote, Permission::View);
    let title = format!("Policy version {version}");
    let this = match c.get(&format!("/policies/{version}")).await {
        Ok(v) => v,
        Err(e) => return c.render(&title, "/console/policies", &e),
    };
    let against = q.against.or(version.checked_sub(1)).filter(|v| *v > 0);
    let before = match against {
        Some(v) => c.get(&format!("/policies/{v}")).await.ok(),
        None => None,
    };
    let mut body = format!(
        "<p>{} · by {} · {}</p>",
        esc(&text(&this["message"])),
        esc(&text(&this["author"])),
        esc(&time_ms(&this["created_ms"]))
    );
    let empty = serde_json::Map::new();
    let files = this["files"].as_object().unwrap_or(&empty);
    let old_files = before
        .as_ref()
        .and_then(|b| b["files"].as_object())
        .unwrap_or(&empty);
    let _ = write!(
        body,
        "<p>Compared with {}.</p>",
        match against {
            Some(v) if before.is_some() => format!("version {v}"),
            _ => "nothing (the first version)".to_string(),
        }
    );
    let mut names: Vec<&String> = files.keys().chain(old_files.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let new = files.get(name).and_then(Value::as_str).unwrap_or("");
        let old = old_files.get(name).and_then(Value::as_str).unwrap_or("");
        let _ = write!(body, "<h2><code>{}</code></h2>", esc(name));
        match diff::lines(old, new) {
            Some(lines) => {
                body.push_str("<pre class=\"diff\">");
                for line in lines {
                    let (class, mark, l) = match line {
                        diff::Line::Same(l) => ("same", ' ', l),
                        diff::Line::Removed(l) => ("del", '-', l),
                        diff::Line::Added(l) => ("add", '+', l),
                    };
                    let _ = writeln!(body, "<span class=\"{class}\">{mark} {}</span>", esc(l));
                }
                body.push_str("</pre>");
            }
            None => {
                let _ = write!(body, "<pre>{}</pre>", esc(new));
            }
        }
    }
    let _ = write!(
        body,
        "<h2>What if this version were active?</h2>\
         <form method=\"post\" action=\"/console/policies/{version}/whatif\" class=\"inline\">{}\
         Replay the requests recorded in the last <input name=\"hours\" value=\"24\" size=\"4\" inputmode=\"numeric\"> hours \
         <button type=\"submit\">Replay</button></form>",
        csrf_field(&c.session)
    );
    c.render(&title, "/console/policies", &body)
}

pub(super) async fn tools(
    Extension(console): Extension<Arc<Console>>,
    remote: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
) -> Response {
    let c = ctx_or_return!(console, headers, remote, Permission::View);
    let list = match c.get("/tools").await {
        Ok(v) => v,
        Err(e) => return c.render("MCP tools", "/console/tools", &e),
    };
    let rows: Vec<Vec<String>> = list["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let (route, name, digest) = (text(&t["route"]), text(&t["name"]), text(&t["digest"]));
            let approve = if t["status"] == "approved" {
                format!(
                    "by {} at {}",
                    esc(&text(&t["approved_by"])),
                    esc(&time_ms(&t["approved_ms"]))
                )
            } else if !may(&c.session, Permission::ApproveTools) {
                String::new()
            } else {
                action_form(
                    &c.session,
                    "/console/tools/approve",
                    "Approve this digest",
                    &[
                        ("route", route.as_str()),
                        ("name", name.as_str()),
                        ("digest", digest.as_str()),
                    ],
                    true,
                    Some(&format!("Approve {route}/{name} at digest {digest}?")),
                )
            };
            vec![
                esc(&route),
                esc(&name),
                esc(&text(&t["status"])),
                format!("<code class=\"digest\">{}</code>", esc(&digest)),
                format!(
                    "<code class=\"digest\">{}</code>",
                    esc(&text(&t["approved_digest"]))
                ),
                format!(
                    "<details><summary>definition and findings</summary>{}{}</details>",
                    pre_json(&t["definition"]),
                    pre_json(&t["findings"])
                ),
                approve,
            ]
        })
        .collect();
    let body = table(
        "tools",
        &[
            "route",
            "tool",
            "status",
            "digest seen",
            "digest approved",
            "",
            "",
        ],
        &rows,
        "No MCP tools seen yet.",
    );
    c.render("MCP tools", "/console/tools", &body)
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    /// A record's seq or request id.
    id: Option<String>,
}

pub(super) async fn audit(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    remote: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let c = ctx_or_return!(console, headers, remote, Permission::ReadAudit);
    let head = state.sink.head();
    let status = match state.sink.halted() {
        Some(reason) => format!("HALTED: {reason}"),
        None if state.sink.verified() => {
            "verified: the stored log matched its signed checkpoints at start".to_string()
        }
        None => "not verified yet".to_string(),
    };
    let mut body = format!(
        "<dl class=\"call\"><dt>verification</dt><dd id=\"audit-status\">{}</dd>\
         <dt>records</dt><dd>{}</dd><dt>tree head</dt><dd><code>{}</code></dd></dl>",
        esc(&status),
        head.size,
        hex::encode(head.root)
    );
    match c.get("/audit/checkpoint").await {
        Ok(cp) => {
            let _ = write!(
                body,
                "<h2>Latest checkpoint</h2><dl class=\"call\"><dt>origin</dt><dd>{}</dd>\
                 <dt>tree size</dt><dd>{}</dd><dt>signed</dt><dd>{}</dd><dt>verifier key</dt><dd><code>{}</code></dd></dl>{}",
                esc(&text(&cp["origin"])),
                esc(&text(&cp["checkpoint"]["tree_size"])),
                esc(&time_ms(&cp["checkpoint"]["time_ms"])),
                esc(&text(&cp["verifier_key"])),
                cp["checkpoint"]["note"]
                    .as_str()
                    .map(|n| format!("<pre id=\"checkpoint-note\">{}</pre>", esc(n)))
                    .unwrap_or_default()
            );
        }
        Err(e) => body.push_str(&e),
    }
    let id = q.id.as_deref().map(str::trim).unwrap_or("");
    let _ = write!(
        body,
        "<h2>Look up a record</h2><form method=\"get\" action=\"/console/audit\" class=\"inline\">\
         <input name=\"id\" value=\"{}\" placeholder=\"seq or request id\" required> <button type=\"submit\">Look up</button></form>",
        esc(id)
    );
    if !id.is_empty() {
        body.push_str(&lookup(&c, id).await);
    }
    c.render("Audit", "/console/audit", &body)
}

/// A record, its inclusion proof, and the proof checked here against the
/// signed checkpoint (signature and path both).
async fn lookup(c: &Ctx, id: &str) -> String {
    let record = match c.get(&format!("/audit/records/{}", url_part(id))).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut out = format!(
        "<h3>Record {}</h3>{}",
        esc(&text(&record["seq"])),
        pre_json(&record["record"])
    );
    let proof = match c
        .get(&format!("/audit/proof/inclusion?id={}", url_part(id)))
        .await
    {
        Ok(p) => p,
        Err(e) => return out + &e,
    };
    let verdict = match verify_proof(c, &proof).await {
        Ok(size) => format!(
            "verified: record is leaf {} of the signed tree of {size}",
            text(&proof["seq"])
        ),
        Err(why) => format!("NOT verified: {why}"),
    };
    let _ = write!(
        out,
        "<h3>Inclusion proof</h3><p id=\"proof-status\">{}</p><dl class=\"call\"><dt>leaf hash</dt><dd><code>{}</code></dd>\
         <dt>tree size</dt><dd>{}</dd><dt>path</dt><dd><pre>{}</pre></dd></dl>",
        esc(&verdict),
        esc(&text(&proof["leaf_hash"])),
        esc(&text(&proof["tree_size"])),
        esc(&proof["proof"]
            .as_array()
            .map(|p| p.iter().map(text).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default())
    );
    out
}

async fn verify_proof(c: &Ctx, proof: &Value) -> Result<u64, String> {
    let key = c
        .get("/audit/checkpoint")
        .await
        .map_err(|_| "no verifier key".to_string())?;
    let note = proof["checkpoint"]["note"]
        .as_str()
        .ok_or("no checkpoint")?;
    let key = key["verifier_key"].as_str().ok_or("no verifier key")?;
    let cp = checkpoint::parse_and_verify(note, key).map_err(|e| e.to_string())?;
    let hash = |v: &Value| -> Result<merkle::Hash, String> {
        let bytes = hex::decode(v.as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        bytes
            .try_into()
            .map_err(|_| "a hash is not 32 bytes".to_string())
    };
    let leaf = proof["leaf"].as_str().ok_or("no leaf")?;
    let leaf_hash = merkle::leaf_hash(leaf.as_bytes());
    let path: Vec<merkle::Hash> = proof["proof"]
        .as_array()
        .into_iter()
        .flatten()
        .map(hash)
        .collect::<Result<_, _>>()?;
    let seq = proof["seq"].as_u64().ok_or("no seq")?;
    merkle::verify_inclusion(&leaf_hash, seq, cp.size, &path, &cp.root)
        .map_err(|e| e.to_string())?;
    Ok(cp.size)
}

pub(super) async fn inventory(
    Extension(console): Extension<Arc<Console>>,
    remote: Option<Extension<RemoteAddr>>,
    headers: HeaderMap,
) -> Response {
    let c = ctx_or_return!(console, headers, remote, Permission::View);
    let inv = match c.get("/inventory").await {
        Ok(v) => v,
        Err(e) => return c.render("Inventory", "/console/inventory", &e),
    };
    let names = |key: &str| -> Vec<String> {
        inv[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| text(&x["name"]))
            .collect()
    };
    let mut identities = names("identities");
    let mut resources = names("resources");
    let flows: Vec<Flow> = inv["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Flow {
            from: e["principal"]
                .as_str()
                .unwrap_or("(unauthenticated)")
                .to_string(),
            to: text(&e["resource"]),
            requests: e["requests"].as_u64().unwrap_or_default(),
            denied: e["denied"].as_u64().unwrap_or_default(),
            classification: text(&e["classification"]),
        })
        .collect();
    for f in &flows {
        if !identities.contains(&f.from) {
            identities.push(f.from.clone());
        }
        if !resources.contains(&f.to) {
            resources.push(f.to.clone());
        }
    }
    let mut body = svg::flow_graph(&identities, &resources, &flows);
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            vec![
                esc(&f.from),
                esc(&f.to),
                f.requests.to_string(),
                f.denied.to_string(),
                esc(&f.classification),
            ]
        })
        .collect();
    body.push_str(&table(
        "flows",
        &[
            "identity",
            "resource",
            "requests",
            "denied",
            "highest classification",
        ],
        &rows,
        "No traffic recorded yet.",
    ));
    c.render("Inventory", "/console/inventory", &body)
}
