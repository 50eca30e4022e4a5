//! `portcullis approvals …` and `portcullis grants …`: the human side of
//! just-in-time access. Deciding is a sensitive admin action: once an admin
//! has enrolled, it needs the global `--user NAME --totp CODE`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::AdminArgs;
use crate::client::AdminClient;

/// `portcullis approvals …`
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Live tickets: who wants to do what, where, bound to which body; a
    /// second line shows the call (method, path and query, body size and
    /// digest, or the MCP tool and its arguments).
    List,
    /// One ticket in full: the call with its query, the bound headers, the
    /// body's size, digest and preview (secrets masked), and why it is held.
    Show {
        /// The ticket id.
        id: String,
    },
    /// Approve a ticket: the exact call may proceed once (needs `--totp`).
    Approve {
        /// The ticket id.
        id: String,
        /// Instead of one call, grant the agent this action for this long
        /// (`15m`, `2h`; at most 24h): the method on the route, the MCP
        /// action on the tool, `complete`/`embed` on the model. Not for tickets behavioral
        /// analytics required: its hold is lifted call by call.
        #[arg(long, value_parser = crate::commands::parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Deny a ticket (needs `--totp`).
    Deny {
        /// The ticket id.
        id: String,
    },
}

/// `portcullis grants …`
#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// Live time-boxed grants.
    List,
    /// End a grant now (needs `--totp`).
    Revoke {
        /// The grant id.
        id: String,
    },
}

/// A millisecond time in RFC 3339 UTC, as every CLI time.
fn when(ms: &Value) -> String {
    crate::output::format_time(ms.as_i64().unwrap_or_default())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `approvals show`: one ticket, a field a line, everything the approval
/// binds. Values come from the gateway with secrets masked and control
/// characters escaped.
fn show(t: &Value) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: &str| {
        out.push_str(&format!("{name:<10}{value}\n"));
    };
    line("ticket", text(&t["id"]));
    line("status", text(&t["status"]));
    let who = match t["delegated_user"].as_str() {
        Some(user) => format!("{} for user {user}", text(&t["agent"])),
        None => text(&t["agent"]).to_string(),
    };
    line("agent", &who);
    line("call", text(&t["summary"]));
    line("route", text(&t["resource"]));
    line("method", text(&t["action"]));
    line("path", text(&t["path"]));
    match t["query"].as_str() {
        Some(query) => line("query", &format!("?{query}")),
        None => line("query", "(none)"),
    }
    let headers = t["headers"].as_array().cloned().unwrap_or_default();
    if headers.is_empty() {
        line("headers", "(none bound)");
    }
    for h in &headers {
        line(
            "header",
            &format!("{}: {}", text(&h["name"]), text(&h["value"])),
        );
    }
    line(
        "body",
        &format!(
            "{} bytes, sha256 {}",
            t["body_bytes"].as_u64().unwrap_or_default(),
            text(&t["body_sha256"])
        ),
    );
    if let Some(tool) = t["tool"].as_str() {
        line("tool", tool);
        line("arguments", text(&t["arguments"]));
    }
    if let Some(model) = t["model"].as_str() {
        line("model", model);
    }
    if t["protocol"] == "http" {
        match t["preview"].as_str() {
            Some(preview) => line("preview", preview),
            None => line("preview", "(empty or not text)"),
        }
    }
    let why = if t["required_by"] == "analytics" {
        format!(
            "behavioral analytics holds this agent's writes; allowed by policy `{}` (version {})",
            text(&t["policy_id"]),
            t["policy_version"]
        )
    } else {
        format!(
            "policy `{}` (version {}) asks for approval",
            text(&t["policy_id"]),
            t["policy_version"]
        )
    };
    line("why", &why);
    line("created", &when(&t["created_ms"]));
    line("expires", &when(&t["expires_ms"]));
    if let Some(by) = t["decided_by"].as_str() {
        line("decided", &format!("by {by} at {}", when(&t["decided_ms"])));
    }
    out
}

/// `approvals list` as a table: a line per ticket, then the call and why.
fn approvals_table(list: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32}  {:<8}  {:<16} {:<12} {:<6} {:<30} {:<14} EXPIRES",
        "TICKET", "STATUS", "AGENT", "FOR USER", "ACTION", "ROUTE PATH", "BODY SHA-256"
    );
    for t in list["approvals"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<32}  {:<8}  {:<16} {:<12} {:<6} {:<30} {:<14} {}",
            text(&t["id"]),
            text(&t["status"]),
            text(&t["agent"]),
            text(&t["delegated_user"]),
            text(&t["action"]),
            format!("{} {}", text(&t["resource"]), text(&t["path"])),
            text(&t["body_sha256"]).chars().take(12).collect::<String>(),
            when(&t["expires_ms"]),
        );
        let _ = writeln!(out, "{:<34}call: {}", "", text(&t["summary"]));
        if t["required_by"] == "analytics" {
            let _ = writeln!(
                out,
                "{:<34}why: behavioral analytics holds this agent's writes (risk grade approve_writes or above; `portcullis alerts list`); allowed by policy `{}` (version {})",
                "",
                text(&t["policy_id"]),
                t["policy_version"]
            );
        } else {
            let _ = writeln!(
                out,
                "{:<34}why: policy `{}` (version {}) asks for approval",
                "",
                text(&t["policy_id"]),
                t["policy_version"]
            );
        }
    }
    out
}

/// `grants list` as a table.
fn grants_table(list: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:<10} {:<16} {:<6} {:<16} {:<20} {:<12} TICKET / REASON",
        "GRANT", "KIND", "AGENT", "ACTION", "ROUTE", "EXPIRES", "BY"
    );
    for g in list["grants"].as_array().into_iter().flatten() {
        let why = match g["ticket"].as_str() {
            Some(ticket) => ticket.to_string(),
            None => text(&g["reason"]).to_string(),
        };
        let _ = writeln!(
            out,
            "{:<18} {:<10} {:<16} {:<6} {:<16} {:<20} {:<12} {}",
            text(&g["id"]),
            text(&g["kind"]),
            text(&g["agent"]),
            text(&g["action"]),
            text(&g["resource"]),
            when(&g["expires_ms"]),
            text(&g["created_by"]),
            why
        );
    }
    out
}

/// Runs an approvals command.
pub async fn approvals(command: ApprovalsCommand, admin: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&admin)?;
    match command {
        ApprovalsCommand::List => {
            let list = client.get("/approvals").await?;
            crate::output::emit(admin.out.format(), &list, approvals_table)?;
        }
        ApprovalsCommand::Show { id } => {
            let t = client.get(&format!("/approvals/{id}")).await?;
            crate::output::emit(admin.out.format(), &t, show)?;
        }
        ApprovalsCommand::Approve { id, ttl } => {
            let body = match ttl {
                Some(ttl) => json!({ "ttl_seconds": ttl.as_secs() }),
                None => json!({}),
            };
            let t = client
                .post(&format!("/approvals/{id}/approve"), &body)
                .await
                .context("approve")?;
            match t["grant_id"].as_str() {
                Some(grant) => println!(
                    "approved {id}; grant {grant}: {} may {} on {} until {}",
                    text(&t["agent"]),
                    text(&t["action"]),
                    text(&t["resource"]),
                    ttl.map(|d| {
                        let until = std::time::SystemTime::now() + d;
                        let ms = until
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis() as i64;
                        when(&json!(ms))
                    })
                    .unwrap_or_default()
                ),
                None => println!(
                    "approved {id}: {} may make this call once, until {}",
                    text(&t["agent"]),
                    when(&t["expires_ms"])
                ),
            }
        }
        ApprovalsCommand::Deny { id } => {
            client
                .post(&format!("/approvals/{id}/deny"), &json!({}))
                .await?;
            println!("denied {id}");
        }
    }
    Ok(())
}

/// Runs a grants command.
pub async fn grants(command: GrantsCommand, admin: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&admin)?;
    match command {
        GrantsCommand::List => {
            let list = client.get("/grants").await?;
            crate::output::emit(admin.out.format(), &list, grants_table)?;
        }
        GrantsCommand::Revoke { id } => {
            client
                .post(&format!("/grants/{id}/revoke"), &json!({}))
                .await?;
            println!("revoked grant {id}");
        }
    }
    Ok(())
}

/// `portcullis breakglass …`
#[derive(Debug, Subcommand)]
pub enum BreakGlassCommand {
    /// Let one agent do everything on every route for a while (forbid
    /// policies still apply). Needs two distinct admins' current TOTP codes;
    /// alerts, and marks every request made under it in the audit log.
    Open {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// Why (kept with the grant).
        #[arg(long)]
        reason: String,
        /// How long (`30m`; at most 4h).
        #[arg(long, value_parser = crate::commands::parse_ttl)]
        ttl: Duration,
        /// An approver and their current code, `NAME:CODE`; given twice.
        #[arg(long = "approver", value_name = "NAME:CODE")]
        approvers: Vec<String>,
    },
    /// End a break-glass now (as `grants revoke ID`; needs `--totp`).
    Close {
        /// The grant id.
        id: String,
    },
}

/// Runs a break-glass command.
pub async fn breakglass(command: BreakGlassCommand, admin: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&admin)?;
    match command {
        BreakGlassCommand::Open {
            agent,
            reason,
            ttl,
            approvers,
        } => {
            let approvers: Vec<Value> = approvers
                .iter()
                .map(|a| {
                    let (user, code) = a.split_once(':').context("--approver takes NAME:CODE")?;
                    Ok(json!({ "user": user, "totp": code }))
                })
                .collect::<Result<_>>()?;
            let g = client
                .post(
                    "/breakglass",
                    &json!({
                        "agent": agent,
                        "reason": reason,
                        "ttl_seconds": ttl.as_secs(),
                        "approvers": approvers,
                    }),
                )
                .await?;
            println!(
                "BREAK-GLASS {} open: {} may do anything on every route until {} (approved by {})",
                text(&g["policy_id"]),
                text(&g["agent"]),
                when(&g["expires_ms"]),
                text(&g["created_by"])
            );
            println!(
                "close it early with `portcullis breakglass close {}`",
                text(&g["id"])
            );
        }
        BreakGlassCommand::Close { id } => {
            client
                .post(&format!("/grants/{id}/revoke"), &json!({}))
                .await?;
            println!("break-glass {id} closed");
        }
    }
    Ok(())
}
