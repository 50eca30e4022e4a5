//! `portcullis guard`: the content guard from the command line, offline.
//!
//! `guard scan` reads a file (or standard input with `-`), runs the same
//! detectors the gateway runs, and prints one JSON object: the injection
//! score, whether it is flagged at the channel's threshold, and every finding
//! with its type and byte offsets. Found values are never printed.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Subcommand, ValueEnum};
use portcullis_guard::poisoning::ToolDefinition;
use portcullis_guard::{Channel, Guard, Report};

/// `portcullis guard …`
#[derive(Debug, Subcommand)]
pub enum GuardCommand {
    /// Scan a text for prompt injection, secrets, PII and (with
    /// `--channel description`) tool poisoning; prints one JSON object.
    Scan {
        /// Where the text comes from, which sets the threshold.
        #[arg(long, value_enum, default_value = "input")]
        channel: ChannelArg,
        /// Exit with status 3 when the text is flagged or has a DLP finding.
        #[arg(long)]
        fail: bool,
        /// The file to scan, or `-` for standard input.
        file: PathBuf,
    },
    /// Score the built-in guard on the test split of the guard data:
    /// per-source and pooled precision, recall, F1 and false-positive rate,
    /// and leave-one-source-out figures; `--min-recall`/`--max-fpr` make it
    /// a gate (exit 4).
    Scorecard(crate::scorecard::ScorecardArgs),
}

/// The `--channel` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ChannelArg {
    /// A user prompt or tool arguments.
    Input,
    /// A tool result or fetched document.
    ToolOutput,
    /// An MCP tool description, or a tool definition as JSON
    /// (`{"name", "description", "inputSchema"}`).
    Description,
}

impl From<ChannelArg> for Channel {
    fn from(c: ChannelArg) -> Self {
        match c {
            ChannelArg::Input => Channel::Input,
            ChannelArg::ToolOutput => Channel::ToolOutput,
            ChannelArg::Description => Channel::Description,
        }
    }
}

/// Exit status of `guard scan --fail` when something was found.
const FOUND: u8 = 3;

/// Runs a guard command.
pub fn guard(command: GuardCommand) -> Result<ExitCode> {
    match command {
        GuardCommand::Scorecard(args) => crate::scorecard::run(args),
        GuardCommand::Scan {
            channel,
            fail,
            file,
        } => {
            let bytes = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut b)
                    .context("cannot read standard input")?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("cannot read `{}`", file.display()))?
            };
            let Ok(text) = String::from_utf8(bytes) else {
                bail!("the input is not UTF-8 text");
            };
            let guard = Guard::new().context("the content guard does not build")?;
            let channel = Channel::from(channel);
            let (report, tool) = match (channel, tool_definition(&text)) {
                (Channel::Description, Some((name, description, params))) => {
                    let params: Vec<&str> = params.iter().map(String::as_str).collect();
                    let def = ToolDefinition {
                        name: &name,
                        description: &description,
                        params: &params,
                    };
                    (guard.scan_tool(&def), Some(name))
                }
                _ => (guard.scan(&text, channel), None),
            };
            println!("{}", to_json(&report, tool.as_deref()));
            let found = report.flagged || !report.dlp.is_empty();
            Ok(if fail && found {
                ExitCode::from(FOUND)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// An MCP tool definition given as JSON: its name, description and the
/// names of its input schema's properties.
fn tool_definition(text: &str) -> Option<(String, String, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let description = v.get("description")?.as_str()?.to_string();
    let name = v
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let schema = v
        .get("inputSchema")
        .or_else(|| v.get("input_schema"))
        .or_else(|| v.get("parameters"));
    let params = schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    Some((name, description, params))
}

fn to_json(report: &Report, tool: Option<&str>) -> serde_json::Value {
    let findings: Vec<serde_json::Value> = report
        .findings
        .iter()
        .map(|f| {
            let mut o = serde_json::json!({ "type": f.kind, "start": f.start, "end": f.end });
            if let Some(d) = &f.detail {
                o["detail"] = serde_json::json!(d);
            }
            if let Some(p) = &f.pointer {
                o["pointer"] = serde_json::json!(p);
            }
            o
        })
        .collect();
    // Scores are printed with four decimals, as policy sees them.
    let round = |x: f32| (f64::from(x) * 10_000.0).round() / 10_000.0;
    let mut out = serde_json::json!({
        "channel": report.channel.as_str(),
        "injection_score": round(report.injection_score),
        "threshold": round(report.threshold),
        "flagged": report.flagged,
        "findings": findings,
    });
    if let Some(name) = tool {
        out["tool"] = serde_json::json!(name);
    }
    out
}
