//! `portcullis tools list|approve`: the MCP tool pins (see
//! `crates/gateway/src/mcp/pins.rs`). A tool whose definition changed since
//! it was approved, or a new tool that failed the tool-poisoning scan, stays
//! blocked until an admin approves the definition it is listed with now.

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::AdminArgs;
use crate::client::AdminClient;

/// `portcullis tools …`
#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// List every tool seen on MCP routes with its pin status
    /// (`approved`, `changed`, `unapproved`).
    List {
        /// The same as `-o json` (kept for old scripts).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Approve the definition a tool is listed with now.
    Approve {
        /// `ROUTE/TOOL`, e.g. `files/read_file`.
        tool: String,
        /// The digest of the definition you reviewed (from `tools list`); the
        /// approval is refused if the tool is listed with another one now.
        #[arg(long)]
        digest: String,
    },
}

/// `tools list` as a table. The whole digest: it is what `tools approve
/// --digest` takes, and a shortened one would approve by a 64-bit prefix.
fn tools_table(listed: &Value) -> String {
    use crate::output::{Kind, col};
    let rows: Vec<Value> = listed["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut row = t.clone();
            row["tool"] = json!(format!("{}/{}", str_of(&t["route"]), str_of(&t["name"])));
            row
        })
        .collect();
    crate::output::table(
        &rows,
        &[
            col("TOOL", "tool", Kind::Text, 40),
            col("STATUS", "status", Kind::Text, 11),
            col("DIGEST", "digest", Kind::Text, 71),
            col("FINDINGS", "findings", Kind::List, 40),
        ],
    )
}

/// Runs a tools command.
pub async fn tools(command: ToolsCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    match command {
        ToolsCommand::List { json } => {
            let listed = client.get("/tools").await?;
            crate::output::emit(args.out.or_json(json), &listed, tools_table)?;
        }
        ToolsCommand::Approve { tool, digest } => {
            let Some((route, name)) = tool.split_once('/') else {
                bail!("name the tool as ROUTE/TOOL, e.g. `files/read_file`");
            };
            let approved = client
                .post(
                    "/tools/approve",
                    &json!({ "route": route, "name": name, "digest": digest }),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&approved)?);
        }
    }
    Ok(())
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}
