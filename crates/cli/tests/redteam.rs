//! `portcullis redteam` end to end: the real binary attacks a real gateway
//! with an agent's credentials. A quickstart-like gateway (the two demo
//! routes, a route whose guard blocks, an MCP route to a lenient server, a
//! route whose reads need a human's approval)
//! holds every family; a route whose DLP only alerts lets secrets out, and
//! that failure is reported with its evidence, exits non-zero and is found
//! in the audit log and in `redteam history`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{Killed, Server};

const TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/redteam");

/// The quickstart's policies, and a permit for the MCP route's tools.
const POLICIES: &str = r#"
@id("readers-use-tools")
permit (
  principal in Role::"reader",
  action in [Action::"list_tools", Action::"call_tool"],
  resource in Route::"tools"
);

@id("readers-wire-approved")
@obligation("approval")
permit (
  principal in Role::"reader",
  action == Action::"GET",
  resource == Route::"wire"
);

@id("readers-complete")
permit (principal in Role::"reader", action == Action::"complete", resource in Route::"llm");

@id("readers-list-approved-tools")
permit (principal in Role::"reader", action == Action::"list_tools", resource in Route::"approvedtools");

@id("readers-call-approved-tools")
@obligation("approval")
permit (principal in Role::"reader", action == Action::"call_tool", resource in Route::"approvedtools");

@id("readers-complete-approved")
@obligation("approval")
permit (principal in Role::"reader", action == Action::"complete", resource in Route::"approvedllm");
"#;

/// Starts the MCP test server; returns it and its port.
fn mcp_upstream() -> (Killed, u16) {
    let mut child = Command::new("python3")
        .arg(format!("{TESTS}/mcp_upstream.py"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the MCP server's port");
    (Killed(child), port)
}

/// The quickstart's two routes plus `/notes` (guard blocks injection and
/// secrets), `/leaky` (the same upstream, DLP only alerts), `/mcp`, `/wire`
/// (each read needs a human's approval), `/llm` (an LLM route whose guard
/// blocks injection and redacts secrets), `/mcp-ok` and `/llm-ok` (each
/// tool call or completion needs a human's approval).
fn start(mcp_port: u16, llm_port: u16) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        include_str!("../../policy/defaults/schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(
        policies.join("quickstart.cedar"),
        include_str!("../../policy/defaults/quickstart.cedar"),
    )
    .unwrap();
    std::fs::write(policies.join("redteam.cedar"), POLICIES).unwrap();
    let route = support::route;
    let routes = format!(
        "[policy]\ndir = \"policies\"\n{}{}{}{}[routes.guard]\ninjection = \"block\"\ndlp = \"block\"\n\
         {}[routes.guard]\ninjection = \"block\"\ndlp = \"alert\"\n\
         [[routes]]\nname = \"tools\"\nkind = \"mcp\"\npath_prefix = \"/mcp\"\nupstream = \"http://127.0.0.1:{mcp_port}/mcp\"\nclassification = \"internal\"\n\
         [[routes]]\nname = \"approvedtools\"\nkind = \"mcp\"\npath_prefix = \"/mcp-ok\"\nupstream = \"http://127.0.0.1:{mcp_port}/mcp\"\nclassification = \"internal\"\n\
         [[routes]]\nname = \"llm\"\nkind = \"llm\"\npath_prefix = \"/llm\"\nupstream = \"http://127.0.0.1:{llm_port}\"\nclassification = \"internal\"\napi_key_env = \"RT_LLM_KEY\"\n\
         [[routes.models]]\nname = \"gpt-test\"\nstatus = \"approved\"\n[routes.guard]\ninjection = \"block\"\ndlp = \"redact\"\n\
         [[routes]]\nname = \"approvedllm\"\nkind = \"llm\"\npath_prefix = \"/llm-ok\"\nupstream = \"http://127.0.0.1:{llm_port}\"\nclassification = \"internal\"\napi_key_env = \"RT_LLM_KEY\"\n\
         [[routes.models]]\nname = \"gpt-test\"\nstatus = \"approved\"\n[[routes.models]]\nname = \"gpt-other\"\nstatus = \"approved\"\n",
        route("demo", "/demo", "builtin:demo", "public"),
        route("payroll", "/payroll", "builtin:demo", "confidential"),
        route("wire", "/wire", "builtin:demo", "confidential"),
        route("notes", "/notes", "builtin:demo", "public"),
        route("leaky", "/leaky", "builtin:demo", "public"),
    );
    let config = support::config(dir.path(), &routes, "");
    let server = Server::start_with_env(dir, Some(&config), &[("RT_LLM_KEY", "sk-redteam")]);
    server.create_agent("reader-bot", &["reader"]);
    server
}

/// Runs `redteam -o json` with the agent's credentials and `routes`;
/// returns the exit code and the scorecard.
fn redteam(server: &Server, routes: &str) -> (i32, Value) {
    let creds = server.path().join("creds");
    let output = server.cli(&[
        "redteam",
        "--creds",
        creds.to_str().unwrap(),
        "--routes",
        routes,
        "-o",
        "json",
    ]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no scorecard ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["families"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["family"].as_str().unwrap().to_string(),
                f["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The `redteam.*` audit records, newest last, once there are `want`
/// (audit appends are batched: a record may land just after its answer).
fn run_records(server: &Server, want: usize) -> Vec<Value> {
    for _ in 0..100 {
        let records: Vec<Value> = server
            .audit(2000)
            .into_iter()
            .filter(|r| {
                r["action"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("redteam."))
            })
            .collect();
        if records.len() >= want {
            return records;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Vec::new()
}

#[test]
fn a_quickstart_like_gateway_holds_every_family() {
    let (_mcp, port) = mcp_upstream();
    let (_llm, llm_port) = support::parity_rig::start_llm();
    let server = start(port, llm_port);
    let (code, report) = redteam(
        &server,
        "guarded=/notes,mcp=/mcp,approval=/wire,llm=/llm,mcp-approval=/mcp-ok,llm-approval=/llm-ok",
    );
    let held: Vec<(String, String)> = [
        "path-confusion",
        "header-spoofing",
        "smuggling",
        "token-replay",
        "mcp-differentials",
        "prompt-injection",
        "exfiltration",
        "llm-prompt-injection",
        "llm-exfiltration",
        "approval-binding",
        "mcp-approval-binding",
        "llm-approval-binding",
        "availability",
    ]
    .iter()
    .map(|f| (f.to_string(), "held".to_string()))
    .collect();
    assert_eq!(verdicts(&report), held, "{report:#}");
    assert_eq!(code, 0);
    // Every probe carries evidence; refusals name the gateway's code.
    let probes: Vec<&Value> = report["families"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["probes"].as_array().unwrap())
        .collect();
    assert!(probes.len() > 120, "{}", probes.len());
    assert!(
        probes
            .iter()
            .all(|p| p["held"] == true && p["evidence"].is_string())
    );
    let codes = |family: &str| -> Vec<String> {
        report["families"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["family"] == family)
            .flat_map(|f| f["probes"].as_array().unwrap())
            .filter_map(|p| p["code"].as_str().map(str::to_string))
            .collect()
    };
    assert!(codes("path-confusion").iter().any(|c| c == "bad_path"));
    assert!(
        codes("prompt-injection")
            .iter()
            .all(|c| c == "content_blocked")
    );
    assert!(
        codes("approval-binding")
            .iter()
            .all(|c| c == "approval_required")
    );
    assert!(
        codes("llm-prompt-injection")
            .iter()
            .all(|c| c == "content_blocked")
    );
    // Bound on MCP and LLM too: a changed argument, prompt or model is held
    // for a new approval (or refused outright: an unknown model).
    for family in ["mcp-approval-binding", "llm-approval-binding"] {
        let codes = codes(family);
        assert!(
            codes.iter().filter(|c| *c == "approval_required").count() >= 4,
            "{family}: {codes:?}"
        );
    }
    // The run is kept and audited as held.
    let run_id = report["run_id"].as_str().unwrap();
    let records = run_records(&server, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["action"], "redteam.held");
    assert_eq!(records[0]["resource"], format!("redteam/{run_id}"));
    let history = server.cli(&["redteam", "history", "-o", "json"]);
    assert!(history.status.success());
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(history["runs"][0]["run_id"], run_id);
    assert_eq!(history["runs"][0]["failed"], 0);
}

#[test]
fn a_route_whose_dlp_only_alerts_fails_exfiltration_and_the_failure_is_findable() {
    let (_mcp, port) = mcp_upstream();
    let (_llm, llm_port) = support::parity_rig::start_llm();
    let server = start(port, llm_port);
    let (code, report) = redteam(&server, "guarded=/leaky");
    assert_eq!(code, 3, "{report:#}");
    let failed: Vec<(String, String)> = verdicts(&report)
        .into_iter()
        .filter(|(_, v)| v == "failed")
        .collect();
    assert_eq!(failed, [("exfiltration".to_string(), "failed".to_string())]);
    // The evidence: the request, the answer, and the request id under
    // which the gateway recorded the leak.
    let exfil = report["families"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["family"] == "exfiltration")
        .unwrap();
    let leak = exfil["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "github-token")
        .unwrap();
    assert_eq!(leak["held"], false);
    assert_eq!(leak["status"], 200);
    assert!(leak["request"].as_str().unwrap().contains("ghp_"));
    assert!(leak["evidence"].as_str().unwrap().contains("unredacted"));
    let record = server.audit_record(leak["request_id"].as_str().unwrap());
    assert_eq!(record["outcome"], "allow");
    // The run's own audit record names the failed family.
    let run_id = report["run_id"].as_str().unwrap();
    let records = run_records(&server, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["action"], "redteam.failed");
    assert_eq!(
        records[0]["resource"],
        format!("redteam/{run_id}:exfiltration")
    );
    // And history shows it, with the whole scorecard one call away.
    let shown = server.cli(&["redteam", "history", "--run", run_id, "-o", "json"]);
    assert!(shown.status.success());
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown["failed_families"],
        serde_json::json!(["exfiltration"])
    );
    assert_eq!(shown["report"]["families"], report["families"]);
    // The table form prints the failed probe's evidence.
    let creds = server.path().join("creds");
    let table = server.cli(&[
        "redteam",
        "--creds",
        creds.to_str().unwrap(),
        "--routes",
        "guarded=/leaky",
        "--no-record",
    ]);
    assert_eq!(table.status.code(), Some(3));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("FAILED exfiltration/github-token"), "{text}");
    assert_eq!(
        run_records(&server, 1).len(),
        1,
        "--no-record records nothing"
    );
}
