//! `portcullis policy …`: the policy lifecycle from the command line.
//!
//! Offline (no server): `schema`, `validate`, `test`. Against the admin API:
//! `push`, `list`, `show`, `rollback`, `diff`, `explain`. A push is validated locally first, so
//! a mistake is reported with file and line before anything is sent; the
//! server validates again against its live agents and routes.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use portcullis_policy::{PolicyBundle, PolicySources};
use serde_json::{Value, json};

use crate::AdminArgs;
use crate::client::AdminClient;
use crate::state_dir::StateDir;

/// `portcullis policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the schema this version of Portcullis ships (the entity and
    /// context types the gateway's requests use), e.g. to update a policy
    /// directory seeded by an older version.
    Schema,
    /// Check a policy directory against its schema (default: `<state-dir>/policies`).
    Validate {
        /// Directory holding `schema.cedarschema` and `*.cedar` files.
        dir: Option<PathBuf>,
    },
    /// Validate a policy directory and install it as a new version.
    Push {
        /// Directory holding `schema.cedarschema` and `*.cedar` files
        /// (default: `<state-dir>/policies`).
        dir: Option<PathBuf>,
        /// Why (recorded with the version).
        #[arg(short, long, default_value = "")]
        message: String,
        /// Who pushes (default: `$PORTCULLIS_USER`, else `$USER`).
        #[arg(long, env = "PORTCULLIS_USER")]
        author: Option<String>,
        /// Install as the shadow candidate: live traffic is still decided by
        /// the active version, and disagreements are counted.
        #[arg(long)]
        shadow: bool,
    },
    /// List the stored versions (`*` marks the active one, `s` the shadow candidate).
    List,
    /// Print one version's files.
    Show {
        /// The version number.
        version: u64,
    },
    /// Make an earlier version active again (default: the one before the active one).
    Rollback {
        /// The version to activate.
        version: Option<u64>,
    },
    /// Run the YAML test cases of FILE against a policy directory (offline);
    /// exits non-zero when a case fails.
    Test {
        /// The case file.
        file: PathBuf,
        /// The policy directory (default: the file's `policies:` key, else its directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Decide a described request with the running server's active version,
    /// and say for each policy why it did or did not apply.
    Explain {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// The action: an HTTP method (GET, POST, …), an MCP action
        /// (call_tool, list_tools, read_resource, list_resources, get_prompt,
        /// list_prompts), complete, embed, list_models, use_secret or
        /// read_data.
        #[arg(long)]
        action: String,
        /// The resource as the gateway names it: the route (HTTP methods,
        /// list_* actions), `<route>/<tool>` (or prompt, or resource URI),
        /// `<route>/<model>`, the secret, or the dataset;
        /// `Tool::"files/read_file"` works too.
        #[arg(long)]
        resource: String,
        /// The context as JSON, e.g. `{"source_ip":"10.0.0.1","time":"2026-11-24T10:00:00Z","risk":0.8}`
        /// (default: loopback, now); `args` for call_tool and get_prompt
        /// (`{"args":{"path":"/tmp/x"}}`), `route` for use_secret,
        /// `route`, `action`, `target` and `purpose` for read_data.
        #[arg(long)]
        context: Option<String>,
    },
    /// The shadow candidate: how often it disagreed with the active version,
    /// and the latest disagreements. Promote it with `policy rollback N`.
    Shadow {
        /// Stop shadow evaluation instead.
        #[arg(long)]
        stop: bool,
    },
    /// Replay the requests recorded in the audit log under a candidate
    /// directory, and list every request whose decision would change.
    Whatif {
        /// The candidate policy directory.
        dir: PathBuf,
        /// How far back (`24h`, `7d`).
        #[arg(long, value_parser = crate::commands::parse_ttl, default_value = "24h")]
        since: std::time::Duration,
    },
    /// Show what changed between two versions, as a unified diff per file.
    Diff {
        /// The older version.
        a: u64,
        /// The newer version.
        b: u64,
    },
}

/// `policy list` as a table, with which version is active and which shadow.
fn versions_table(list: &Value) -> String {
    use crate::output::{Kind, col};
    let rows: Vec<Value> = list["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let mut row = v.clone();
            row["state"] = json!(if v["active"] == true {
                "active"
            } else if v["shadow"] == true {
                "shadow"
            } else {
                ""
            });
            row["hash"] = json!(short(&v["hash"]));
            row
        })
        .collect();
    crate::output::table(
        &rows,
        &[
            col("VERSION", "version", Kind::Text, 8),
            col("STATE", "state", Kind::Text, 6),
            col("HASH", "hash", Kind::Text, 12),
            col("CREATED", "created_ms", Kind::Time, 24),
            col("AUTHOR", "author", Kind::Text, 16),
            col("MESSAGE", "message", Kind::Text, 50),
        ],
    )
}

/// Runs a policy command.
pub async fn run(command: PolicyCommand, admin: AdminArgs) -> Result<()> {
    let default_dir = || StateDir::new(admin.state.state_dir.clone()).policies();
    match command {
        PolicyCommand::Schema => print!("{}", portcullis_policy::DEFAULT_SCHEMA),
        PolicyCommand::Validate { dir } => {
            let dir = dir.unwrap_or_else(default_dir);
            let bundle = compile(&dir)?;
            println!(
                "ok: {} policies in `{}` validate against the schema: {}",
                bundle.policy_ids().len(),
                dir.display(),
                bundle.policy_ids().join(", ")
            );
        }
        PolicyCommand::Push {
            dir,
            message,
            author,
            shadow,
        } => {
            let dir = dir.unwrap_or_else(default_dir);
            let bundle = compile(&dir)?;
            let author = author
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "admin".to_string());
            let client = AdminClient::from_args(&admin)?;
            let body = json!({
                "files": bundle.sources().to_files(),
                "message": message,
                "author": author,
                "shadow": shadow,
            });
            let change = client.post("/policies", &body).await?;
            let version = change["version"].as_u64().unwrap_or_default();
            if change["unchanged"] == true {
                println!(
                    "unchanged: `{}` is version {version}, already active",
                    dir.display()
                );
            } else if shadow {
                println!(
                    "pushed version {version} ({}) as the shadow candidate; version {} stays active",
                    short(&change["hash"]),
                    change["previous"]
                );
            } else {
                println!(
                    "pushed version {version} ({}), now active (was {})",
                    short(&change["hash"]),
                    change["previous"]
                );
            }
        }
        PolicyCommand::List => {
            let client = AdminClient::from_args(&admin)?;
            let list = client.get("/policies").await?;
            crate::output::emit(admin.out.format(), &list, versions_table)?;
        }
        PolicyCommand::Show { version } => {
            let client = AdminClient::from_args(&admin)?;
            let v = client.get(&format!("/policies/{version}")).await?;
            let sources = files(&v)?;
            // The table form of a version is its files, as text.
            crate::output::emit(admin.out.format(), &v, |_| {
                let mut out = String::new();
                for (name, text) in &sources {
                    out.push_str(&format!("// ===== {name} =====\n{text}"));
                    if !text.ends_with('\n') {
                        out.push('\n');
                    }
                }
                out
            })?;
        }
        PolicyCommand::Rollback { version } => {
            let client = AdminClient::from_args(&admin)?;
            let change = client
                .post("/policies/rollback", &json!({ "version": version }))
                .await?;
            println!(
                "version {} ({}) is active again (was {})",
                change["version"],
                short(&change["hash"]),
                change["previous"]
            );
        }
        PolicyCommand::Test { file, dir } => {
            let passed = crate::policy_test::run(&file, dir)?;
            crate::policy_test::exit_on_failure(passed)?;
        }
        PolicyCommand::Explain {
            agent,
            action,
            resource,
            context,
        } => {
            let context: Value = match context {
                Some(text) => serde_json::from_str(&text).context("--context is not JSON")?,
                None => json!({}),
            };
            let client = AdminClient::from_args(&admin)?;
            let e = client
                .post(
                    "/policies/explain",
                    &json!({ "agent": agent, "action": action, "resource": resource, "context": context }),
                )
                .await?;
            match e["models"].as_array() {
                None => print!("{}", render_explanation(&e)),
                Some(models) => {
                    let visible: Vec<&str> = e["visible"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "visible models: {} (policy version {}; each is `complete` with method GET)",
                        if visible.is_empty() {
                            "none".to_string()
                        } else {
                            visible.join(", ")
                        },
                        e["policy_version"]
                    );
                    for m in models {
                        println!("\nmodel {}:", m["model"].as_str().unwrap_or_default());
                        let mut m = m.clone();
                        m["policy_version"] = e["policy_version"].clone();
                        print!("{}", render_explanation(&m));
                    }
                }
            }
        }
        PolicyCommand::Shadow { stop } => {
            let client = AdminClient::from_args(&admin)?;
            if stop {
                let r = client.delete("/policies/shadow").await?;
                match r["stopped"].as_u64() {
                    Some(v) => println!("shadow evaluation of version {v} stopped"),
                    None => println!("no shadow candidate was set"),
                }
                return Ok(());
            }
            let r = client.get("/policies/shadow").await?;
            if r["shadow"].is_null() {
                println!("no shadow candidate (active: version {})", r["active"]);
                return Ok(());
            }
            println!(
                "shadow: version {} beside active version {}\ndecided: {}  disagreements: {} (allow -> deny {}, deny -> allow {})",
                r["shadow"],
                r["active"],
                r["decided"],
                r["allow_to_deny"].as_u64().unwrap_or_default()
                    + r["deny_to_allow"].as_u64().unwrap_or_default(),
                r["allow_to_deny"],
                r["deny_to_allow"]
            );
            for d in r["recent"].as_array().into_iter().flatten() {
                let verdict = |allowed: &Value| if *allowed == true { "allow" } else { "deny" };
                let ids = |v: &Value| {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "  {} {} {} {} {}: active {} [{}] -> shadow {} [{}]",
                    utc(d["time_ms"].as_i64().unwrap_or_default()),
                    d["request_id"].as_str().unwrap_or_default(),
                    d["agent"].as_str().unwrap_or_default(),
                    d["action"].as_str().unwrap_or_default(),
                    d["path"].as_str().unwrap_or_default(),
                    verdict(&d["active_allowed"]),
                    ids(&d["active_policies"]),
                    verdict(&d["shadow_allowed"]),
                    ids(&d["shadow_policies"]),
                );
            }
        }
        PolicyCommand::Whatif { dir, since } => {
            let bundle = compile(&dir)?;
            let since_ms = std::time::SystemTime::now()
                .checked_sub(since)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            let client = AdminClient::from_args(&admin)?;
            let r = client
                .post(
                    "/policies/whatif",
                    &json!({ "files": bundle.sources().to_files(), "since_ms": since_ms }),
                )
                .await?;
            let verdict = |allowed: &Value| if *allowed == true { "allow" } else { "deny" };
            let ids = |v: &Value| {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            for c in r["changes"].as_array().into_iter().flatten() {
                let action = c["action"].as_str().unwrap_or_default();
                // HTTP requests by path; MCP messages and models by resource.
                let on = if portcullis_policy::HttpAction::from_method(action).is_some() {
                    c["path"].as_str().unwrap_or_default()
                } else {
                    c["resource"].as_str().unwrap_or_default()
                };
                let change = if c["active_models"].is_array() {
                    format!(
                        "models [{}] -> [{}]",
                        ids(&c["active_models"]),
                        ids(&c["candidate_models"])
                    )
                } else {
                    format!(
                        "{} [{}] -> {} [{}]",
                        verdict(&c["active_allowed"]),
                        ids(&c["active_policies"]),
                        verdict(&c["candidate_allowed"]),
                        ids(&c["candidate_policies"]),
                    )
                };
                println!(
                    "{} {} {} {action} {on}: {change} (recorded: {}){}",
                    utc(c["time_ms"].as_i64().unwrap_or_default()),
                    c["request_id"].as_str().unwrap_or_default(),
                    c["agent"].as_str().unwrap_or_default(),
                    c["recorded"].as_str().unwrap_or_default(),
                    if c["args_unknown"] == true {
                        " [arguments not recorded: replayed without them]"
                    } else {
                        ""
                    }
                );
            }
            let changed = r["allow_to_deny"].as_u64().unwrap_or_default()
                + r["deny_to_allow"].as_u64().unwrap_or_default()
                + r["models_changed"].as_u64().unwrap_or_default();
            println!(
                "\nreplayed {} requests against version {} and `{}`: {changed} would change (allow -> deny {}, deny -> allow {}{}); {} not decided by policy (refused before authorization, MCP `initialize` and the like) were skipped{}",
                r["replayed"],
                r["active"],
                dir.display(),
                r["allow_to_deny"],
                r["deny_to_allow"],
                match r["models_changed"].as_u64().unwrap_or_default() {
                    0 => String::new(),
                    n => format!("; model listings {n}"),
                },
                r["skipped"],
                if r["truncated"] == true {
                    "; only the oldest 200000 were replayed"
                } else {
                    ""
                }
            );
            if r["args_unknown"].as_u64().unwrap_or_default() > 0 {
                println!(
                    "{} MCP tool calls and prompt gets were replayed without their arguments, which the audit log does not keep: a policy on `context.args` may decide them otherwise",
                    r["args_unknown"]
                );
            }
            let not_replayable: Vec<String> = r["not_replayable"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(why, n)| format!("{why} {n}"))
                .collect();
            if !not_replayable.is_empty() {
                println!(
                    "not replayable (counted, not decided): {}",
                    not_replayable.join(", ")
                );
            }
        }
        PolicyCommand::Diff { a, b } => {
            let client = AdminClient::from_args(&admin)?;
            let old = client.get(&format!("/policies/{a}")).await?;
            let new = client.get(&format!("/policies/{b}")).await?;
            print!("{}", diff(a, &files(&old)?, b, &files(&new)?));
        }
    }
    Ok(())
}

fn compile(dir: &std::path::Path) -> Result<PolicyBundle> {
    let sources = PolicySources::read_dir(dir)?;
    let bundle = PolicyBundle::compile(&sources)?;
    if bundle.policy_ids().is_empty() {
        bail!(
            "`{}` holds no policies: everything would be denied",
            dir.display()
        );
    }
    Ok(bundle)
}

fn files(version: &Value) -> Result<std::collections::BTreeMap<String, String>> {
    serde_json::from_value(version["files"].clone()).context("the server sent no files")
}

/// A unified diff per changed file, `a/<file>` against `b/<file>`; nothing
/// when the versions hold the same files.
fn diff(
    a: u64,
    old: &std::collections::BTreeMap<String, String>,
    b: u64,
    new: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = String::new();
    for name in names {
        let before = old.get(name).map_or("", String::as_str);
        let after = new.get(name).map_or("", String::as_str);
        if before == after {
            continue;
        }
        let text = similar::TextDiff::from_lines(before, after)
            .unified_diff()
            .context_radius(3)
            .header(
                &format!(
                    "v{a}/{name}{}",
                    if old.contains_key(name) {
                        ""
                    } else {
                        " (absent)"
                    }
                ),
                &format!(
                    "v{b}/{name}{}",
                    if new.contains_key(name) {
                        ""
                    } else {
                        " (absent)"
                    }
                ),
            )
            .to_string();
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The explain answer as text: decision, deciding policies, then each policy.
fn render_explanation(e: &Value) -> String {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut out = format!(
        "decision: {} (policy version {})
deciding: {}
",
        if e["allowed"] == true {
            "allow"
        } else {
            "deny"
        },
        e["policy_version"],
        strings(&e["deciding"]).join(", ")
    );
    for error in strings(&e["errors"]) {
        out.push_str(&format!(
            "error: {error}
"
        ));
    }
    out.push_str(
        "policies:
",
    );
    for p in e["policies"].as_array().into_iter().flatten() {
        let outcome = p["outcome"].as_str().unwrap_or_default().replace('_', " ");
        out.push_str(&format!(
            "  {:<6} {:<28} {outcome}
",
            p["effect"].as_str().unwrap_or_default(),
            p["id"].as_str().unwrap_or_default()
        ));
        for failed in strings(&p["failed"]) {
            out.push_str(&format!(
                "           failed: {failed}
"
            ));
        }
        if let Some(error) = p["error"].as_str() {
            out.push_str(&format!(
                "           error: {error}
"
            ));
        }
    }
    out
}

fn short(hash: &Value) -> String {
    hash.as_str().unwrap_or_default().chars().take(12).collect()
}

fn utc(ms: i64) -> String {
    crate::output::format_time(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn diffs_name_files_and_lines() {
        let old = BTreeMap::from([
            ("a.cedar".to_string(), "one\ntwo\n".to_string()),
            ("gone.cedar".to_string(), "x\n".to_string()),
            ("same.cedar".to_string(), "s\n".to_string()),
        ]);
        let new = BTreeMap::from([
            ("a.cedar".to_string(), "one\nTWO\n".to_string()),
            ("same.cedar".to_string(), "s\n".to_string()),
        ]);
        assert_eq!(
            diff(1, &old, 2, &new),
            "--- v1/a.cedar\n+++ v2/a.cedar\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n\
             --- v1/gone.cedar\n+++ v2/gone.cedar (absent)\n@@ -1 +0,0 @@\n-x\n"
        );
        assert_eq!(diff(1, &old, 1, &old), "");
    }
}
