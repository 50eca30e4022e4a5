//! End to end: `Action::"read_data"` on `Dataset::"<name>"` decides every
//! call on a route (and every call of an MCP tool) tagged with registered
//! datasets, on all three protocols, through the real binary: an HTTP
//! route, an MCP server written with the official `mcp` SDK and an
//! OpenAI-compatible LLM upstream, all tagged with the confidential dataset
//! `claims`; the MCP tool `save_note` also with the restricted `notes`.
//! A tag naming an unregistered dataset refuses (`dataset_unknown`) until it
//! is registered; then the documented purpose policy permits or refuses
//! (`dataset_denied`), and the record names the dataset. `inventory` shows
//! the lineage: agent → route or tool → dataset, route → registry model.
//!
//! Skips with a visible `SKIPPED:` when python3 with the `mcp` package is
//! missing (the MCP and LLM upstreams are Python).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use serde_json::{Value, json};
use support::parity_rig::{Protocol, mcp_messages, mcp_post, mcp_session, start_llm, start_mcp};
use support::{Server, install_crypto};

const SCHEMA: &str = include_str!("../../policy/defaults/schema.cedarschema");
const QUICKSTART: &str = include_str!("../../policy/defaults/quickstart.cedar");

/// Every `dev` agent may make the calls; which datasets it may read is the
/// purpose policy's (docs/governance.md) and the shipped
/// `datasets-read-low`'s.
const POLICIES: &str = r#"
@id("dev-calls") permit(principal in Role::"dev", action in
  [Action::"POST", Action::"list_tools", Action::"call_tool", Action::"complete"], resource);

@id("confidential-by-purpose")
permit(principal in Role::"fraud-detection", action == Action::"read_data", resource)
  when { resource.classification_level >= 2 && resource.purposes.contains("fraud-detection") };

@id("notes-for-note-takers")
permit(principal in Role::"note-taker", action == Action::"read_data", resource == Dataset::"notes");

@id("no-basis-no-tools")
forbid (principal, action == Action::"read_data", resource)
  when { resource.consent_basis == "none" && context.action == "call_tool" };
"#;

struct Rig {
    server: Server,
    notes: tempfile::NamedTempFile,
    _upstreams: Vec<support::Killed>,
}

async fn rig() -> Option<Rig> {
    install_crypto();
    if !tokio::task::block_in_place(support::parity_rig::python_with_mcp) {
        return None;
    }
    let (mcp, mcp_port, notes) =
        tokio::task::block_in_place(|| start_mcp(support::parity_rig::McpAnswers::Json));
    let (llm, llm_port) = tokio::task::block_in_place(start_llm);
    let (http_upstream, _gate) = support::start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("policies");
    std::fs::create_dir(&pol).unwrap();
    std::fs::write(pol.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(pol.join("quickstart.cedar"), QUICKSTART).unwrap();
    std::fs::write(pol.join("datasets.cedar"), POLICIES).unwrap();
    let routes = format!(
        "[policy]\ndir = \"policies\"\n\
         [[routes]]\nname = \"api\"\nkind = \"http\"\npath_prefix = \"/api\"\nupstream = \"http://{http_upstream}\"\nclassification = \"internal\"\ndatasets = [\"claims\"]\n\
         [[routes]]\nname = \"ghost\"\nkind = \"http\"\npath_prefix = \"/ghost\"\nupstream = \"http://{http_upstream}\"\nclassification = \"internal\"\ndatasets = [\"ghost\"]\n\
         [[routes]]\nname = \"tools\"\nkind = \"mcp\"\npath_prefix = \"/mcp/tools\"\nupstream = \"http://127.0.0.1:{mcp_port}/mcp\"\nclassification = \"internal\"\ndatasets = [\"claims\"]\n\
         [routes.tools.save_note]\ndatasets = [\"notes\"]\n\
         [[routes]]\nname = \"llm\"\nkind = \"llm\"\npath_prefix = \"/llm\"\nupstream = \"http://127.0.0.1:{llm_port}\"\nclassification = \"internal\"\napi_key_env = \"DATASETS_LLM_KEY\"\ndatasets = [\"claims\"]\n\
         [[routes.models]]\nname = \"gpt-test\"\nregistry = \"gpt-test@1\"\n"
    );
    let config = support::config(dir.path(), &routes, "");
    let server = tokio::task::block_in_place(|| {
        Server::start_with_env(dir, Some(&config), &[("DATASETS_LLM_KEY", "sk-datasets")])
    });
    Some(Rig {
        server,
        notes,
        _upstreams: vec![mcp, llm],
    })
}

/// One agent: its client and its MCP session.
struct Agent {
    client: reqwest::Client,
    session: String,
}

async fn agent(rig: &Rig, name: &str, roles: &[&str]) -> Agent {
    let (crt, key) = tokio::task::block_in_place(|| rig.server.create_agent(name, roles));
    let client = support::client(&rig.server.ca_pem(), Some((&crt, &key)));
    let session = mcp_session(&client, &rig.server, "/mcp/tools").await;
    Agent { client, session }
}

/// The outcome of a call: the error code (None when served), the policies
/// the refusal names, and the request id.
#[derive(Debug)]
struct Outcome {
    code: Option<String>,
    policies: Value,
    request_id: String,
}

async fn call(rig: &Rig, agent: &Agent, protocol: Protocol, text: &str) -> Outcome {
    let server = &rig.server;
    let r = match protocol {
        Protocol::Http => agent
            .client
            .post(server.url("/api/claims"))
            .body(format!("{{\"q\":\"{text}\"}}"))
            .send()
            .await
            .unwrap(),
        Protocol::Llm => agent
            .client
            .post(server.url("/llm/v1/chat/completions"))
            .json(
                &json!({ "model": "gpt-test", "messages": [{ "role": "user", "content": text }] }),
            )
            .send()
            .await
            .unwrap(),
        Protocol::Mcp => {
            let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "save_note", "arguments": {"text": text}}});
            return mcp_call(rig, agent, &body).await;
        }
    };
    let request_id = support::request_id(&r);
    if r.status().is_success() {
        let _ = r.bytes().await;
        return Outcome {
            code: None,
            policies: Value::Null,
            request_id,
        };
    }
    let (_, e) = support::error_of(r).await;
    Outcome {
        code: e["code"].as_str().map(str::to_string),
        policies: e["policies"].clone(),
        request_id,
    }
}

async fn mcp_call(rig: &Rig, agent: &Agent, body: &Value) -> Outcome {
    let r = mcp_post(
        &agent.client,
        &rig.server,
        "/mcp/tools",
        Some(&agent.session),
        body,
    )
    .send()
    .await
    .unwrap();
    let request_id = support::request_id(&r);
    assert_eq!(r.status(), 200);
    let message = mcp_messages(&r.text().await.unwrap()).remove(0);
    match message.get("error") {
        None => Outcome {
            code: None,
            policies: Value::Null,
            request_id,
        },
        Some(e) => Outcome {
            code: e["data"]["code"].as_str().map(str::to_string),
            policies: e["data"]["policies"].clone(),
            request_id,
        },
    }
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn register(server: &Server, name: &str, classification: &str, purpose: &str) {
    ok(
        server.cli(&[
            "dataset",
            "register",
            name,
            "--owner",
            "risk-team",
            "--classification",
            classification,
            "--source",
            "claims-db export",
            "--licence",
            "internal",
            "--collected",
            "2026-01-31",
            "--consent-basis",
            "contract",
            "--retention-days",
            "90",
            "--purpose",
            purpose,
        ]),
        "dataset register",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_data_is_decided_on_every_protocol_and_inventory_shows_the_lineage() {
    let Some(rig) = rig().await else {
        return;
    };
    let server = &rig.server;
    // Purpose fraud-detection, and may read the tool's notes.
    let analyst = agent(&rig, "analyst", &["dev", "fraud-detection", "note-taker"]).await;
    // No purpose: may not read the confidential claims.
    let marketer = agent(&rig, "marketer", &["dev"]).await;
    // The purpose, but not the tool's restricted notes.
    let auditor = agent(&rig, "auditor", &["dev", "fraud-detection"]).await;

    // Tagged with datasets nobody registered: refused on every protocol,
    // fail closed, even for the agent the policies would allow.
    for protocol in Protocol::ALL {
        let o = call(&rig, &analyst, protocol, "early").await;
        assert_eq!(o.code.as_deref(), Some("dataset_unknown"), "{protocol:?}");
        let rec = server.audit_record(&o.request_id);
        assert_eq!(rec["error_code"], "dataset_unknown", "{rec}");
        assert!(
            rec["policies"]
                .as_array()
                .unwrap()
                .contains(&json!("dataset:claims:unregistered")),
            "{rec}"
        );
    }
    assert!(!tokio::task::block_in_place(|| ran(&rig, "early")));

    // Registered: in force before the CLI returns.
    register(server, "claims", "confidential", "fraud-detection");
    register(server, "notes", "restricted", "note-taking");
    ok(
        server.cli(&[
            "model",
            "register",
            "gpt-test",
            "--version",
            "1",
            "--digest",
            &format!("sha256:{}", "ab".repeat(32)),
        ]),
        "model register",
    );

    // The sessions' first listings were refused: list again so the tool is
    // seen (pinned) before it is called.
    let listed = mcp_call(
        &rig,
        &analyst,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    )
    .await;
    assert_eq!(listed.code, None, "{listed:?}");

    // Permit: the purpose reads the claims on every protocol; the record
    // names the dataset and the permit.
    for protocol in Protocol::ALL {
        let o = call(&rig, &analyst, protocol, "analyst-call").await;
        assert_eq!(o.code, None, "{protocol:?}: {o:?}");
        let rec = server.audit_record(&o.request_id);
        assert_eq!(rec["outcome"], "allow", "{rec}");
        let policies = rec["policies"].as_array().unwrap();
        assert!(
            policies.contains(&json!("dataset:claims:confidential-by-purpose")),
            "{protocol:?}: {rec}"
        );
        if protocol == Protocol::Mcp {
            // The tool's own dataset was decided too.
            assert!(
                policies.contains(&json!("dataset:notes:notes-for-note-takers")),
                "{rec}"
            );
        }
    }
    assert!(tokio::task::block_in_place(|| ran(&rig, "analyst-call")));

    // Deny: no purpose, refused on every protocol with the stable code,
    // the refusal and the record naming the dataset.
    for protocol in Protocol::ALL {
        let o = call(&rig, &marketer, protocol, "marketer-call").await;
        assert_eq!(
            o.code.as_deref(),
            Some("dataset_denied"),
            "{protocol:?}: {o:?}"
        );
        assert_eq!(o.policies, json!(["dataset:claims:default-deny"]));
        let rec = server.audit_record(&o.request_id);
        assert_eq!(rec["outcome"], "deny", "{rec}");
        assert_eq!(rec["error_code"], "dataset_denied", "{rec}");
        assert!(
            rec["policies"]
                .as_array()
                .unwrap()
                .contains(&json!("dataset:claims:default-deny")),
            "{rec}"
        );
    }
    assert!(!tokio::task::block_in_place(|| ran(&rig, "marketer-call")));
    // The route's datasets hold for its other MCP actions too.
    let listed = mcp_call(
        &rig,
        &marketer,
        &json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}),
    )
    .await;
    assert_eq!(listed.code.as_deref(), Some("dataset_denied"));

    // Per-tool tags: the auditor may read the claims (HTTP, LLM, listing
    // the tools) but not the tool's restricted notes.
    for protocol in [Protocol::Http, Protocol::Llm] {
        let o = call(&rig, &auditor, protocol, "auditor-call").await;
        assert_eq!(o.code, None, "{protocol:?}: {o:?}");
    }
    let listed = mcp_call(
        &rig,
        &auditor,
        &json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}),
    )
    .await;
    assert_eq!(listed.code, None);
    let o = call(&rig, &auditor, Protocol::Mcp, "auditor-call").await;
    assert_eq!(o.code.as_deref(), Some("dataset_denied"), "{o:?}");
    assert_eq!(o.policies, json!(["dataset:notes:default-deny"]));
    assert!(!tokio::task::block_in_place(|| ran(&rig, "auditor-call")));

    // A route tagged with a dataset still unregistered stays refused.
    let r = analyst
        .client
        .post(server.url("/ghost/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        support::error_of(r).await.1["code"],
        "dataset_unknown",
        "ghost"
    );

    // The inventory's lineage: route or tool → dataset, route → registry
    // model, and agent → route or tool → dataset from the audit log.
    let inv: Value = serde_json::from_str(&ok(
        server.cli(&["inventory", "-o", "json"]),
        "inventory json",
    ))
    .unwrap();
    let lineage = inv["lineage"].as_array().unwrap();
    let edge = |from: &str, to: &str| {
        lineage
            .iter()
            .find(|l| l["from"]["name"] == from && l["to"]["name"] == to)
            .unwrap_or_else(|| panic!("no lineage {from} -> {to}: {inv}"))
    };
    assert_eq!(
        edge("api", "claims")["to"]["classification"],
        "confidential"
    );
    assert_eq!(edge("api", "claims")["from"]["kind"], "route");
    assert_eq!(edge("tools/save_note", "notes")["from"]["kind"], "tool");
    assert_eq!(edge("ghost", "ghost")["to"]["registered"], false);
    let model = edge("llm", "gpt-test@1");
    assert_eq!(model["to"]["kind"], "model");
    assert_eq!(model["to"]["lifecycle"], "draft");
    assert_eq!(model["to"]["verified"], false);
    let flows = inv["flows"].as_array().unwrap();
    let flow = |agent: &str, via: &str, dataset: &str| {
        flows
            .iter()
            .any(|f| f["agent"] == agent && f["via"] == via && f["dataset"] == dataset)
    };
    assert!(flow("analyst", "api", "claims"), "{inv}");
    assert!(flow("analyst", "tools/save_note", "notes"), "{inv}");
    assert!(flow("analyst", "tools/save_note", "claims"), "{inv}");
    assert!(flow("analyst", "llm/gpt-test", "claims"), "{inv}");
    // Refused calls are no flow.
    assert!(!flow("marketer", "api", "claims"), "{inv}");
    assert!(!flow("auditor", "tools/save_note", "notes"), "{inv}");

    let table = ok(server.cli(&["inventory"]), "inventory table");
    for line in [
        "lineage:",
        "route api",
        "dataset claims",
        "tool tools/save_note",
        "model gpt-test@1",
        "draft, unverified",
        "analyst -> api -> dataset claims",
    ] {
        assert!(table.contains(line), "`{line}` missing:\n{table}");
    }
    let dot = ok(
        server.cli(&["inventory", "--format", "dot"]),
        "inventory dot",
    );
    assert!(
        dot.contains("res_api -> ds_claims") && dot.contains("res_llm -> model_gpt_test_1"),
        "{dot}"
    );
    let mermaid = ok(
        server.cli(&["inventory", "--format", "mermaid"]),
        "inventory mermaid",
    );
    assert!(
        mermaid.contains("res_tools_save_note -.->|reads| ds_notes"),
        "{mermaid}"
    );
}

/// Whether the MCP tool ran with `text`.
fn ran(rig: &Rig, text: &str) -> bool {
    std::fs::read_to_string(rig.notes.path())
        .unwrap()
        .lines()
        .any(|l| l == text)
}
