//! `portcullis redteam`: the red team against a running gateway. With an
//! agent's credentials (`agent create --out DIR`) it runs families of attacks
//! — path and encoding confusion, header spoofing, request smuggling, token
//! and DPoP replay, MCP JSON differentials, prompt-injection evasions and
//! exfiltration through answers (HTTP and LLM routes), approval-binding
//! tampering (HTTP, MCP and LLM) — and prints a scorecard: per family held,
//! failed or skipped, per probe the request, the answer and the request id
//! under which the gateway's audit log keeps it. The exit status is
//! [`ATTACK_SUCCEEDED`] when any family failed.
//!
//! Routes the attacks use (`--routes KIND=PREFIX,…`): `open` (the agent may
//! read it; its upstream echoes what it received, like the quickstart's
//! `/demo`), `closed` (the agent is refused, like `/payroll`), and optional
//! `guarded` (a route whose guard blocks injection and redacts or blocks
//! secrets, with an echoing upstream), `mcp`, `approval` (a route whose
//! permit for the agent's `GET` obliges a human's approval; the run's admin
//! credentials approve), `llm` (an LLM route whose guard blocks injection
//! and secrets), `mcp-approval` and `llm-approval` (MCP and LLM routes whose
//! calls oblige an approval). A family whose route is missing is skipped
//! and says why ("not applicable" for a protocol without a route).
//!
//! Each run is then sent to the admin API (`POST /admin/v1/redteam/runs`),
//! which keeps it (`redteam history`) and writes an audit record
//! `redteam.held` or `redteam.failed` naming the failed families; the
//! attacks themselves are ordinary audited requests of the agent.

mod approval;
mod content;
mod http;
mod llm;
mod mcp;
mod report;
mod tokens;
mod wire;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use portcullis_identity::Ed25519Key;
use serde_json::{Value, json};

use crate::AdminArgs;
use crate::client::AdminClient;
use crate::output::{self, Kind, col};
use crate::state_dir::StateDir;
use report::{Family, Verdict};
use wire::{Tls, Wire};

/// Exit status when an attack got through.
pub const ATTACK_SUCCEEDED: u8 = 3;

/// An attack got through: the report is printed, the exit status is
/// [`ATTACK_SUCCEEDED`].
#[derive(Debug, thiserror::Error)]
#[error("{0} attack famil{s} failed", s = if *.0 == 1 { "y" } else { "ies" })]
pub struct AttacksSucceeded(pub usize);

/// `portcullis redteam …`
#[derive(Debug, Subcommand)]
pub enum RedteamCommand {
    /// Past runs recorded by the admin API, newest first.
    History {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        n: u32,
        /// Show one run whole (its families and probes).
        #[arg(long)]
        run: Option<String>,
    },
}

/// What a run attacks, and with which credentials.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The gateway's data-plane URL (default: `<state-dir>/gateway.url`).
    #[arg(long)]
    pub gateway: Option<String>,
    /// The agent's credential directory (`agent create --out DIR`): the
    /// certificate, key, signing key and `ca.crt`.
    #[arg(long)]
    pub creds: Option<PathBuf>,
    /// The agent's name (default: the only `NAME.crt` besides `ca.crt` in --creds).
    #[arg(long)]
    pub agent: Option<String>,
    /// Routes to attack, `KIND=PREFIX` (`open`, `closed`, `guarded`, `mcp`, `approval`,
    /// `llm`, `mcp-approval`, `llm-approval`),
    /// comma-separated or repeated. Default `open=/demo,closed=/payroll`.
    #[arg(long, value_delimiter = ',')]
    pub routes: Vec<String>,
    /// Do not send the run to the admin API (it is then in no audit record
    /// and not in `redteam history`).
    #[arg(long)]
    pub no_record: bool,
}

/// The routes the families attack.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    pub open: String,
    pub closed: String,
    pub guarded: Option<String>,
    pub mcp: Option<String>,
    pub approval: Option<String>,
    pub llm: Option<String>,
    pub mcp_approval: Option<String>,
    pub llm_approval: Option<String>,
}

impl Routes {
    fn parse(specs: &[String]) -> Result<Self> {
        let mut routes = Routes {
            open: "/demo".into(),
            closed: "/payroll".into(),
            guarded: None,
            mcp: None,
            approval: None,
            llm: None,
            mcp_approval: None,
            llm_approval: None,
        };
        for spec in specs.iter().filter(|s| !s.trim().is_empty()) {
            let Some((kind, prefix)) = spec.split_once('=') else {
                bail!("`{spec}`: a route is KIND=PREFIX, e.g. open=/demo");
            };
            let prefix = prefix.trim().trim_end_matches('/');
            if !prefix.starts_with('/') || prefix.len() < 2 {
                bail!("`{spec}`: the prefix must be a path such as /demo");
            }
            let prefix = prefix.to_string();
            match kind.trim() {
                "open" => routes.open = prefix,
                "closed" => routes.closed = prefix,
                "guarded" => routes.guarded = Some(prefix),
                "mcp" => routes.mcp = Some(prefix),
                "approval" => routes.approval = Some(prefix),
                "llm" => routes.llm = Some(prefix),
                "mcp-approval" => routes.mcp_approval = Some(prefix),
                "llm-approval" => routes.llm_approval = Some(prefix),
                other => {
                    bail!(
                        "`{other}`: route kinds are open, closed, guarded, mcp, approval, llm, mcp-approval and llm-approval"
                    )
                }
            }
        }
        Ok(routes)
    }
}

/// Approves a ticket through the admin API (the approval family's human).
pub type Approver = dyn Fn(&str) -> Result<()> + Send + Sync;

/// Everything a family needs.
pub struct Target {
    wire: Wire,
    routes: Routes,
    /// The agent's name.
    agent: String,
    /// The agent's signing key.
    key: Ed25519Key,
    /// Whether the open route's upstream echoes the names of the headers it
    /// received (the header family's oracle).
    echo_headers: bool,
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The only `NAME.crt` in `creds` besides `ca.crt`.
fn agent_name(creds: &Path) -> Result<String> {
    let mut names = Vec::new();
    for entry in
        std::fs::read_dir(creds).with_context(|| format!("cannot read `{}`", creds.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".crt")
            && stem != "ca"
        {
            names.push(stem.to_string());
        }
    }
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no agent certificate in `{}` (write one with `agent create --out`)",
            creds.display()
        ),
        _ => bail!(
            "`{}` holds several agents ({}): pass --agent",
            creds.display(),
            names.join(", ")
        ),
    }
}

/// The facts every family relies on, checked before any attack: the open
/// route serves the agent through an echoing upstream and the closed route
/// refuses it. Without them a refusal would prove nothing.
fn baseline(t: &mut Target) -> Result<()> {
    let open = format!("{}/rt-baseline", t.routes.open);
    let a = t
        .wire
        .request(Tls::Agent, "GET", &open, &[], "")
        .context("the baseline request failed")?;
    if a.status >= 300 {
        bail!(
            "baseline: `GET {open}` answered HTTP {} ({}); --routes open=… must name a route this agent may read",
            a.status,
            a.code().unwrap_or_default()
        );
    }
    let echo = a.json();
    if echo.get("path").is_none() {
        bail!(
            "baseline: the upstream of `{open}` does not echo the request (no `path` in its answer); the attacks need an echoing upstream such as the quickstart's demo"
        );
    }
    t.echo_headers = echo["headers"].is_array();
    let closed = format!("{}/rt-baseline", t.routes.closed);
    let a = t
        .wire
        .request(Tls::Agent, "GET", &closed, &[], "")
        .context("the baseline request failed")?;
    if a.status != 403 {
        bail!(
            "baseline: `GET {closed}` answered HTTP {}, not 403; --routes closed=… must name a route policy refuses this agent",
            a.status
        );
    }
    Ok(())
}

/// After the attacks: the gateway still serves the honest request.
fn still_up(t: &Target) -> Family {
    let open = format!("{}/rt-after", t.routes.open);
    let request = format!("GET {open} HTTP/1.1");
    let probe = match t.wire.request(Tls::Agent, "GET", &open, &[], "") {
        Ok(a) => {
            let held = a.status < 300;
            let why = if held {
                "the gateway still serves honest requests".to_string()
            } else {
                format!("after the attacks an honest request got HTTP {}", a.status)
            };
            report::Probe::from_answer("honest-request-after", &request, &a, held, why)
        }
        Err(e) => report::Probe::unanswered("honest-request-after", &request, &e, false),
    };
    Family::judged("availability", vec![probe])
}

/// Runs every family (blocking I/O).
fn attack(t: &Target, approver: Option<&Approver>) -> Vec<Family> {
    vec![
        http::path_confusion(t),
        http::header_spoofing(t),
        http::smuggling(t),
        tokens::token_replay(t),
        mcp::differentials(t),
        content::prompt_injection(t),
        content::exfiltration(t),
        llm::prompt_injection(t),
        llm::exfiltration(t),
        approval::tampering(t, approver),
        approval::mcp_tampering(t, approver),
        approval::llm_tampering(t, approver),
        still_up(t),
    ]
}

/// `portcullis redteam [--gateway URL] --creds DIR …`
pub async fn run(command: Option<RedteamCommand>, args: RunArgs, admin: AdminArgs) -> Result<()> {
    if let Some(RedteamCommand::History { n, run }) = command {
        return history(&admin, n, run).await;
    }
    let state = StateDir::new(admin.state.state_dir.clone());
    let gateway = match &args.gateway {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => std::fs::read_to_string(state.gateway_url())
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .context("cannot find the gateway URL: pass --gateway")?,
    };
    let creds = args
        .creds
        .clone()
        .context("pass --creds DIR: the credentials of the agent to attack with")?;
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => agent_name(&creds)?,
    };
    let routes = Routes::parse(&args.routes)?;
    let key = crate::token_cmd::load_agent_key(&creds, &agent)?;
    let wire = Wire::new(&gateway, &creds, &agent)?;
    // Recording needs the admin API; find out before attacking, not after.
    let recorder = if args.no_record {
        None
    } else {
        Some(std::sync::Arc::new(AdminClient::from_args(&admin).context(
            "the run is recorded through the admin API: give its credentials (--state-dir, --admin-token-file) or pass --no-record",
        )?))
    };
    // The approval family's human: the same admin credentials, called from
    // the blocking thread the attacks run on.
    let approver: Option<Box<Approver>> = recorder.clone().map(|client| {
        let runtime = tokio::runtime::Handle::current();
        Box::new(move |ticket: &str| -> Result<()> {
            runtime
                .block_on(client.post(&format!("/approvals/{ticket}/approve"), &json!({})))
                .map(drop)
        }) as Box<Approver>
    });
    let started_ms = now_ms();
    let run_id = hex::encode(rand::random::<[u8; 8]>());
    let mut target = Target {
        wire,
        routes,
        agent,
        key,
        echo_headers: false,
    };
    let (target, families) = tokio::task::spawn_blocking(move || -> Result<_> {
        baseline(&mut target)?;
        let families = attack(&target, approver.as_deref());
        Ok((target, families))
    })
    .await??;
    let count = |v: Verdict| families.iter().filter(|f| f.verdict == v).count();
    let failed = count(Verdict::Failed);
    let report = json!({
        "run_id": run_id,
        "gateway": gateway,
        "agent": target.agent,
        "routes": {
            "open": target.routes.open,
            "closed": target.routes.closed,
            "guarded": target.routes.guarded,
            "mcp": target.routes.mcp,
            "approval": target.routes.approval,
            "llm": target.routes.llm,
            "mcp-approval": target.routes.mcp_approval,
            "llm-approval": target.routes.llm_approval,
        },
        "started_ms": started_ms,
        "finished_ms": now_ms(),
        "held": count(Verdict::Held),
        "failed": failed,
        "skipped": count(Verdict::Skipped),
        "families": families,
    });
    let recorded = match &recorder {
        Some(client) => Some(client.post("/redteam/runs", &report).await),
        None => None,
    };
    output::emit(admin.out.format(), &report, scorecard_table)?;
    match recorded {
        Some(Err(e)) => return Err(e.context("the run could not be recorded")),
        Some(Ok(answer)) => eprintln!(
            "recorded run {run_id} (audit request id {})",
            answer["request_id"].as_str().unwrap_or("?")
        ),
        None => eprintln!("not recorded (--no-record)"),
    }
    if failed > 0 {
        return Err(AttacksSucceeded(failed).into());
    }
    Ok(())
}

/// The scorecard as a table, then the evidence of every probe that got through.
fn scorecard_table(report: &Value) -> String {
    let families = report["families"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Value> = families
        .iter()
        .map(|f| {
            let probes = f["probes"].as_array().map(Vec::len).unwrap_or(0);
            let failed = f["probes"]
                .as_array()
                .map(|p| p.iter().filter(|p| p["held"] == false).count())
                .unwrap_or(0);
            json!({
                "family": f["family"],
                "verdict": f["verdict"],
                "probes": probes,
                "failed": failed,
                "note": f["reason"],
            })
        })
        .collect();
    let mut text = output::table(
        &rows,
        &[
            col("FAMILY", "family", Kind::Text, 20),
            col("VERDICT", "verdict", Kind::Text, 8),
            col("PROBES", "probes", Kind::Text, 6),
            col("FAILED", "failed", Kind::Text, 6),
            col("NOTE", "note", Kind::Text, 60),
        ],
    );
    for f in &families {
        for p in f["probes"].as_array().into_iter().flatten() {
            if p["held"] == false {
                text.push_str(&format!(
                    "\nFAILED {}/{}: {}\n  request: {}\n  answer: HTTP {} {} request id {}\n",
                    f["family"].as_str().unwrap_or("?"),
                    p["name"].as_str().unwrap_or("?"),
                    p["evidence"].as_str().unwrap_or(""),
                    p["request"].as_str().unwrap_or(""),
                    p["status"],
                    p["code"].as_str().unwrap_or("-"),
                    p["request_id"].as_str().unwrap_or("-"),
                ));
            }
        }
    }
    text.push_str(&format!(
        "\nrun {}: {} held, {} failed, {} skipped\n",
        report["run_id"].as_str().unwrap_or("?"),
        report["held"],
        report["failed"],
        report["skipped"]
    ));
    text
}

/// `redteam history`
async fn history(admin: &AdminArgs, n: u32, run: Option<String>) -> Result<()> {
    let client = AdminClient::from_args(admin)?;
    if let Some(id) = run {
        let shown = client.get(&format!("/redteam/runs/{id}")).await?;
        return output::emit(admin.out.format(), &shown, |v| {
            scorecard_table(&v["report"])
        });
    }
    let listed = client.get(&format!("/redteam/runs?limit={n}")).await?;
    output::emit(admin.out.format(), &listed, |v| {
        // The failed families as one cell of text, not a JSON array.
        let mut v = v.clone();
        for run in v["runs"].as_array_mut().into_iter().flatten() {
            let names: Vec<&str> = run["failed_families"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            run["failed_families"] = json!(names.join(", "));
        }
        output::rows(
            &v,
            "/runs",
            &[
                col("RUN", "run_id", Kind::Text, 16),
                col("TIME", "started_ms", Kind::Time, 24),
                col("AGENT", "agent", Kind::Text, 16),
                col("HELD", "held", Kind::Text, 4),
                col("FAILED", "failed", Kind::Text, 6),
                col("SKIPPED", "skipped", Kind::Text, 7),
                col("FAILED FAMILIES", "failed_families", Kind::Text, 40),
            ],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(specs: &[&str], expect: Result<Routes, &str>) {
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        match (Routes::parse(&specs), expect) {
            (Ok(r), Ok(want)) => assert_eq!(r, want),
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e}"),
            (got, want) => panic!("{got:?} vs {want:?}"),
        }
    }

    fn routes(open: &str, guarded: Option<&str>, mcp: Option<&str>) -> Routes {
        Routes {
            open: open.into(),
            closed: "/payroll".into(),
            guarded: guarded.map(Into::into),
            mcp: mcp.map(Into::into),
            approval: None,
            llm: None,
            mcp_approval: None,
            llm_approval: None,
        }
    }

    #[test]
    fn routes_default_to_the_quickstart() {
        check(&[], Ok(routes("/demo", None, None)));
        check(
            &["guarded=/notes/", "mcp=/mcp", "open=/pub"],
            Ok(routes("/pub", Some("/notes"), Some("/mcp"))),
        );
        check(&["open"], Err("KIND=PREFIX"));
        check(&["open=demo"], Err("must be a path"));
        check(&["model=/v1"], Err("route kinds"));
        let mut with_approval = routes("/demo", None, None);
        with_approval.approval = Some("/wire".into());
        check(&["approval=/wire"], Ok(with_approval));
        let mut all_protocols = routes("/demo", None, None);
        all_protocols.llm = Some("/llm".into());
        all_protocols.mcp_approval = Some("/mcp-ok".into());
        all_protocols.llm_approval = Some("/llm-ok".into());
        check(
            &["llm=/llm", "mcp-approval=/mcp-ok", "llm-approval=/llm-ok"],
            Ok(all_protocols),
        );
    }
}
