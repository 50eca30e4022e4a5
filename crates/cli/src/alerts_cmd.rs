//! `portcullis alerts list|show|resolve`: human review of behavioral
//! analytics' alerts. A benign verdict widens the agent's baseline.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::AdminArgs;
use crate::client::AdminClient;
use crate::commands::print_json;
use crate::output::{self, Kind, col};

/// `portcullis alerts …`
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts, newest first: a table, or `-o json|yaml` for everything.
    List {
        /// Only alerts without a verdict.
        #[arg(long)]
        open: bool,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 50)]
        n: u32,
    },
    /// Show one alert: why it was raised, the features that drove it and the
    /// requests involved.
    Show {
        /// The alert's id.
        id: i64,
    },
    /// Record a verdict on an alert.
    Resolve {
        /// The alert's id.
        id: i64,
        /// `benign` widens the agent's baseline; `malicious` keeps it out.
        #[arg(long, value_enum)]
        verdict: Verdict,
    },
}

/// A human's verdict on an alert.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Verdict {
    /// A false alarm: learn it as normal.
    Benign,
    /// A real incident.
    Malicious,
}

/// `alerts list` as a table: a line per alert with what raised it, in a
/// few words (the features and request ids are in `alerts show` and `-o json`).
fn alerts_table(listed: &serde_json::Value) -> String {
    let rows: Vec<serde_json::Value> = listed["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let reasons: Vec<String> = a["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    ["rule", "kind", "type", "name"]
                        .iter()
                        .find_map(|k| r[*k].as_str())
                        .map(str::to_string)
                        .unwrap_or_else(|| r.to_string())
                })
                .collect();
            let mut row = a.clone();
            row["why"] = json!(reasons.join(", "));
            row
        })
        .collect();
    output::table(
        &rows,
        &[
            col("ID", "id", Kind::Text, 8),
            col("TIME", "time_ms", Kind::Time, 24),
            col("AGENT", "agent", Kind::Text, 20),
            col("GRADE", "grade", Kind::Text, 16),
            col("RISK", "risk", Kind::Text, 6),
            col("STATUS", "status", Kind::Text, 8),
            col("REQUESTS", "request_ids", Kind::Count, 8),
            col("WHY", "why", Kind::Text, 40),
        ],
    )
}

/// Runs an `alerts` subcommand.
pub async fn alerts(command: AlertsCommand, admin: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&admin)?;
    match command {
        AlertsCommand::List { open, n } => {
            let listed = client
                .get(&format!("/alerts?open={open}&limit={n}"))
                .await?;
            output::emit(admin.out.format(), &listed, alerts_table)?;
        }
        AlertsCommand::Show { id } => {
            let alert = client.get(&format!("/alerts/{id}")).await?;
            output::emit(admin.out.format(), &alert, output::fields)?;
        }
        AlertsCommand::Resolve { id, verdict } => {
            let verdict = match verdict {
                Verdict::Benign => "benign",
                Verdict::Malicious => "malicious",
            };
            print_json(
                &client
                    .post(
                        &format!("/alerts/{id}/resolve"),
                        &json!({ "verdict": verdict }),
                    )
                    .await?,
            );
        }
    }
    Ok(())
}
