//! `portcullis alerts list|show|resolve`: human review of behavioral
//! analytics' alerts. A benign verdict widens the agent's baseline.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::AdminArgs;
use crate::client::AdminClient;
use crate::commands::print_json;

/// `portcullis alerts …`
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts, newest first, one JSON line each.
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

/// Runs an `alerts` subcommand.
pub async fn alerts(command: AlertsCommand, admin: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&admin)?;
    match command {
        AlertsCommand::List { open, n } => {
            let listed = client
                .get(&format!("/alerts?open={open}&limit={n}"))
                .await?;
            for alert in listed["alerts"].as_array().into_iter().flatten() {
                println!("{alert}");
            }
        }
        AlertsCommand::Show { id } => print_json(&client.get(&format!("/alerts/{id}")).await?),
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
