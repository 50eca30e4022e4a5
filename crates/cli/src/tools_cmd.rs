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
        /// Print the full JSON (definitions, findings, digests).
        #[arg(long)]
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

/// Runs a tools command.
pub async fn tools(command: ToolsCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    match command {
        ToolsCommand::List { json } => {
            let listed = client.get("/tools").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(());
            }
            let empty = Vec::new();
            let tools = listed["tools"].as_array().unwrap_or(&empty);
            // The whole digest: it is what `tools approve --digest` takes,
            // and a shortened one would approve by a 64-bit prefix.
            println!("{:<40} {:<11} {:<64} FINDINGS", "TOOL", "STATUS", "DIGEST");
            for t in tools {
                let name = format!("{}/{}", str_of(&t["route"]), str_of(&t["name"]));
                let digest = str_of(&t["digest"]);
                let findings: Vec<&str> = t["findings"]
                    .as_array()
                    .map(|f| f.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                println!(
                    "{name:<40} {:<11} {digest:<64} {}",
                    str_of(&t["status"]),
                    findings.join(",")
                );
            }
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
