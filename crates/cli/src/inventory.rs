//! `portcullis inventory`: every identity and every resource, and who touched
//! what — counts, data classification, last use — as a table, JSON, or a
//! data-flow graph (Graphviz dot or Mermaid).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::ValueEnum;
use serde_json::Value;

use crate::AdminArgs;
use crate::client::AdminClient;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// The admin API's JSON.
    Json,
    /// A Graphviz digraph: agents → resources, edges labelled with counts.
    Dot,
    /// A Mermaid flowchart of the same graph.
    Mermaid,
}

/// Runs the command.
pub async fn run(args: AdminArgs, since: Option<Duration>, format: Format) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    let since_ms = since.map_or(0, |window| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(window).as_millis() as i64
    });
    let inventory = client
        .get(&format!("/inventory?since_ms={since_ms}"))
        .await?;
    // `-o` wins; `--format json` is `-o json`; the graphs are this command's own.
    let shared = match (args.out.output, format) {
        (Some(f), _) => f,
        (None, Format::Json) => crate::output::Format::Json,
        (None, Format::Table) => crate::output::Format::Table,
        (None, Format::Dot | Format::Mermaid) => {
            let graph = if format == Format::Dot {
                dot(&inventory)
            } else {
                mermaid(&inventory)
            };
            println!("{graph}");
            return Ok(());
        }
    };
    crate::output::emit(shared, &inventory, |v| format!("{}\n", table(v)))
}

fn edges(inv: &Value) -> impl Iterator<Item = &Value> {
    inv["edges"].as_array().into_iter().flatten()
}

fn principal(edge: &Value) -> &str {
    edge["principal"].as_str().unwrap_or("(unauthenticated)")
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

fn time(ms: &Value) -> String {
    crate::output::format_time(ms.as_i64().unwrap_or_default())
}

fn table(inv: &Value) -> String {
    let mut out = String::new();
    let mut rows = vec![[
        "IDENTITY".to_string(),
        "RESOURCE".into(),
        "CLASSIFICATION".into(),
        "REQUESTS".into(),
        "ALLOWED".into(),
        "DENIED".into(),
        "BYTES IN/OUT".into(),
        "LAST USE".into(),
    ]];
    let mut active = BTreeSet::new();
    for e in edges(inv) {
        active.insert(principal(e).to_string());
        rows.push([
            principal(e).into(),
            text(e, "resource").into(),
            text(e, "classification").into(),
            e["requests"].to_string(),
            e["allowed"].to_string(),
            e["denied"].to_string(),
            format!("{}/{}", e["bytes_in"], e["bytes_out"]),
            time(&e["last_ms"]),
        ]);
    }
    // Every identity is listed, including those that touched nothing.
    for id in inv["identities"].as_array().into_iter().flatten() {
        let name = text(id, "name");
        if !active.contains(name) {
            let state = if id["revoked_at"].is_null() {
                "-"
            } else {
                "(revoked)"
            };
            rows.push([
                name.into(),
                "(no activity)".into(),
                "-".into(),
                "0".into(),
                "0".into(),
                "0".into(),
                "-".into(),
                state.into(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let used: BTreeSet<&str> = edges(inv).map(|e| text(e, "resource")).collect();
    let unused: Vec<&str> = inv["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| text(r, "name"))
        .filter(|r| !used.contains(r))
        .collect();
    if !unused.is_empty() {
        let _ = writeln!(out, "\nresources with no activity: {}", unused.join(", "));
    }
    lineage_table(inv, &mut out);
    out.trim_end().to_string()
}

fn lineage(inv: &Value) -> impl Iterator<Item = &Value> {
    inv["lineage"].as_array().into_iter().flatten()
}

/// What a lineage target is: a dataset's classification and whether it is
/// registered, a model entry's lifecycle and verification.
fn target_state(to: &Value) -> String {
    if to["kind"] == "model" {
        let verified = if to["verified"] == true {
            "verified"
        } else {
            "unverified"
        };
        format!("{}, {verified}", text(to, "lifecycle"))
    } else if to["registered"] == true {
        text(to, "classification").to_string()
    } else {
        "(not registered)".to_string()
    }
}

/// The lineage edges (route or tool → dataset, route → registry model) and
/// the flows (agent → route or tool → dataset) under the table.
fn lineage_table(inv: &Value, out: &mut String) {
    let mut rows = Vec::new();
    for l in lineage(inv) {
        rows.push([
            format!("{} {}", text(&l["from"], "kind"), text(&l["from"], "name")),
            format!("{} {}", text(&l["to"], "kind"), text(&l["to"], "name")),
            target_state(&l["to"]),
        ]);
    }
    if !rows.is_empty() {
        let _ = writeln!(out, "\nlineage:");
        let widths: Vec<usize> = (0..2)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for [from, to, state] in &rows {
            let _ = writeln!(
                out,
                "  {from:<w0$}  ->  {to:<w1$}  {state}",
                w0 = widths[0],
                w1 = widths[1]
            );
        }
    }
    let flows: Vec<&Value> = inv["flows"].as_array().into_iter().flatten().collect();
    if !flows.is_empty() {
        let _ = writeln!(out, "\ndata flows:");
        for f in flows {
            let _ = writeln!(
                out,
                "  {} -> {} -> dataset {} ({} allowed, last {})",
                text(f, "agent"),
                text(f, "via"),
                text(f, "dataset"),
                f["allowed"],
                time(&f["last_ms"])
            );
        }
    }
}

/// The graph node of a lineage target (`ds_…` or `model_…`).
fn target_node(to: &Value) -> String {
    let prefix = if to["kind"] == "model" { "model" } else { "ds" };
    node_id(prefix, text(to, "name"))
}

/// One lineage edge as the graphs draw it.
struct Drawn<'a> {
    /// The target (dataset or model).
    to: &'a Value,
    /// Its node id.
    node: String,
    /// Whether the target is met for the first time (its node is declared).
    first: bool,
    /// The route's or tool's node id.
    from: String,
    /// `reads` (a dataset) or `serves` (a model).
    label: &'static str,
}

fn drawn(inv: &Value) -> Vec<Drawn<'_>> {
    let mut declared = BTreeSet::new();
    lineage(inv)
        .map(|l| {
            let to = &l["to"];
            let node = target_node(to);
            let first = declared.insert(node.clone());
            Drawn {
                to,
                node,
                first,
                from: node_id("res", text(&l["from"], "name")),
                label: if to["kind"] == "model" {
                    "serves"
                } else {
                    "reads"
                },
            }
        })
        .collect()
}

/// A node id safe in both dot and Mermaid.
fn node_id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{clean}")
}

fn dot(inv: &Value) -> String {
    let mut out = String::from("digraph portcullis_inventory {\n  rankdir=LR;\n");
    for id in inv["identities"].as_array().into_iter().flatten() {
        let name = text(id, "name");
        let _ = writeln!(
            out,
            "  {} [shape=box, label=\"{name}\"];",
            node_id("agent", name)
        );
    }
    for r in inv["resources"].as_array().into_iter().flatten() {
        let name = text(r, "name");
        let _ = writeln!(
            out,
            "  {} [shape=cylinder, label=\"{name}\\n{}\"];",
            node_id("res", name),
            text(r, "classification")
        );
    }
    for e in edges(inv) {
        let style = if e["allowed"].as_u64() == Some(0) {
            ", style=dashed, color=red"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label=\"{} req, {} denied\"{style}];",
            node_id("agent", principal(e)),
            node_id("res", text(e, "resource")),
            e["requests"],
            e["denied"]
        );
    }
    for d in drawn(inv) {
        if d.first {
            let shape = if d.to["kind"] == "model" {
                "component"
            } else {
                "folder"
            };
            let _ = writeln!(
                out,
                "  {} [shape={shape}, label=\"{}\\n{}\"];",
                d.node,
                text(d.to, "name"),
                target_state(d.to)
            );
        }
        let _ = writeln!(
            out,
            "  {} -> {} [label=\"{}\", style=dotted];",
            d.from, d.node, d.label
        );
    }
    out.push('}');
    out
}

fn mermaid(inv: &Value) -> String {
    let mut out = String::from("flowchart LR\n");
    for id in inv["identities"].as_array().into_iter().flatten() {
        let name = text(id, "name");
        let _ = writeln!(out, "  {}[\"{name}\"]", node_id("agent", name));
    }
    for r in inv["resources"].as_array().into_iter().flatten() {
        let name = text(r, "name");
        let _ = writeln!(
            out,
            "  {}[(\"{name} ({})\")]",
            node_id("res", name),
            text(r, "classification")
        );
    }
    for e in edges(inv) {
        let arrow = if e["allowed"].as_u64() == Some(0) {
            "-.->"
        } else {
            "-->"
        };
        let _ = writeln!(
            out,
            "  {} {arrow}|\"{} req, {} denied\"| {}",
            node_id("agent", principal(e)),
            e["requests"],
            e["denied"],
            node_id("res", text(e, "resource"))
        );
    }
    for d in drawn(inv) {
        if d.first {
            let _ = writeln!(
                out,
                "  {}[/\"{} {} ({})\"/]",
                d.node,
                text(d.to, "kind"),
                text(d.to, "name"),
                target_state(d.to)
            );
        }
        let _ = writeln!(out, "  {} -.->|{}| {}", d.from, d.label, d.node);
    }
    out.trim_end().to_string()
}
