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
//! A second run drives the declared purpose (`Portcullis-Purpose` on HTTP
//! and LLM, `_meta` `portcullis/purpose` on MCP) through the shipped
//! `datasets-read-low`, the `tools/list` filter and the dataset lifecycle
//! (`dataset revoke`: the built-in gate refuses on every protocol).
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
    call_for(rig, agent, protocol, text, None).await
}

/// [`call`] declaring `purpose` in the protocol's carrier.
async fn call_for(
    rig: &Rig,
    agent: &Agent,
    protocol: Protocol,
    text: &str,
    purpose: Option<&str>,
) -> Outcome {
    let server = &rig.server;
    let declare = |r: reqwest::RequestBuilder| match purpose {
        Some(p) => r.header("Portcullis-Purpose", p),
        None => r,
    };
    let r = match protocol {
        Protocol::Http => declare(agent.client.post(server.url("/api/claims")))
            .body(format!("{{\"q\":\"{text}\"}}"))
            .send()
            .await
            .unwrap(),
        Protocol::Llm => declare(agent.client.post(server.url("/llm/v1/chat/completions")))
            .json(
                &json!({ "model": "gpt-test", "messages": [{ "role": "user", "content": text }] }),
            )
            .send()
            .await
            .unwrap(),
        Protocol::Mcp => {
            let mut body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "save_note", "arguments": {"text": text}}});
            if let Some(p) = purpose {
                body["params"]["_meta"] = json!({ "portcullis/purpose": p });
            }
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
    register_for(server, name, classification, &[purpose]);
}

fn register_for(server: &Server, name: &str, classification: &str, purposes: &[&str]) {
    let mut args = vec![
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
    ];
    for p in purposes {
        args.extend(["--purpose", p]);
    }
    ok(server.cli(&args), "dataset register");
}

/// The tools a `tools/list` with `purpose` shows the agent.
async fn listed_tools(rig: &Rig, agent: &Agent, purpose: &str) -> Vec<String> {
    let r = mcp_post(
        &agent.client,
        &rig.server,
        "/mcp/tools",
        Some(&agent.session),
        &json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list",
            "params": {"_meta": {"portcullis/purpose": purpose}}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let message = mcp_messages(&r.text().await.unwrap()).remove(0);
    let mut names: Vec<String> = message["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {message}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The declared purpose decides `read_data` identically on HTTP, MCP and
/// LLM under the shipped `datasets-read-low`; `tools/list` hides a tool
/// over a dataset the purpose may not read; a revoked dataset is read by
/// nobody (`builtin:dataset-gate`), on every protocol, once `dataset
/// revoke` returns.
#[tokio::test(flavor = "multi_thread")]
async fn purpose_and_lifecycle_decide_read_data_on_every_protocol() {
    let Some(rig) = rig().await else {
        return;
    };
    let server = &rig.server;
    // Internal datasets: the shipped `datasets-read-low` decides, by purpose.
    register_for(server, "claims", "internal", &["support", "note-taking"]);
    register_for(server, "notes", "internal", &["note-taking"]);
    let shown: Value = serde_json::from_str(&ok(
        server.cli(&["dataset", "show", "claims", "-o", "json"]),
        "dataset show",
    ))
    .unwrap();
    assert_eq!(shown["lifecycle"], "draft", "{shown}");
    let helper = agent(&rig, "helper", &["dev"]).await;

    // The first listing pins the tools; with a purpose `notes` allows, the
    // tool over it is listed; with another, it is not.
    let all = listed_tools(&rig, &helper, "note-taking").await;
    assert!(all.contains(&"save_note".to_string()), "{all:?}");
    let support = listed_tools(&rig, &helper, "support").await;
    assert!(!support.contains(&"save_note".to_string()), "{support:?}");
    assert_eq!(support.len(), all.len() - 1, "{support:?} vs {all:?}");

    // A purpose both datasets allow: served on every protocol, the record
    // naming the permit and the purpose.
    for protocol in Protocol::ALL {
        let o = call_for(&rig, &helper, protocol, "noted", Some("note-taking")).await;
        assert_eq!(o.code, None, "{protocol:?}: {o:?}");
        let rec = server.audit_record(&o.request_id);
        let policies = rec["policies"].as_array().unwrap();
        assert!(
            policies.contains(&json!("dataset:claims:datasets-read-low"))
                && policies.contains(&json!("purpose:note-taking")),
            "{protocol:?}: {rec}"
        );
    }
    assert!(tokio::task::block_in_place(|| ran(&rig, "noted")));
    // `support` reads the claims but not the tool's notes.
    for protocol in [Protocol::Http, Protocol::Llm] {
        let o = call_for(&rig, &helper, protocol, "supported", Some("support")).await;
        assert_eq!(o.code, None, "{protocol:?}: {o:?}");
    }
    let o = call_for(&rig, &helper, Protocol::Mcp, "supported", Some("support")).await;
    assert_eq!(o.code.as_deref(), Some("dataset_denied"), "{o:?}");
    assert_eq!(o.policies, json!(["dataset:notes:default-deny"]));
    // Another purpose, or none: refused identically on every protocol.
    for purpose in [Some("marketing"), None] {
        for protocol in Protocol::ALL {
            let o = call_for(&rig, &helper, protocol, "refused", purpose).await;
            assert_eq!(
                (o.code.as_deref(), &o.policies),
                (
                    Some("dataset_denied"),
                    &json!(["dataset:claims:default-deny"])
                ),
                "{protocol:?} {purpose:?}"
            );
        }
    }
    assert!(!tokio::task::block_in_place(|| ran(&rig, "refused")));
    // The LLM route's model listing asks the same: listed for a purpose
    // the claims allow, not for another or none.
    for (purpose, listed) in [
        (Some("support"), true),
        (Some("marketing"), false),
        (None, false),
    ] {
        let mut r = helper.client.get(server.url("/llm/v1/models"));
        if let Some(p) = purpose {
            r = r.header("Portcullis-Purpose", p);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 200, "{purpose:?}");
        let body: Value = r.json().await.unwrap();
        let models = body["data"].as_array().unwrap();
        assert_eq!(!models.is_empty(), listed, "{purpose:?}: {body}");
    }

    // One carrier per protocol: the header on an MCP route, or a value
    // that is no purpose, is refused before anything is decided.
    let r = mcp_post(
        &helper.client,
        server,
        "/mcp/tools",
        Some(&helper.session),
        &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}),
    )
    .header("Portcullis-Purpose", "note-taking")
    .send()
    .await
    .unwrap();
    assert_eq!(support::error_of(r).await.1["code"], "bad_request");
    let r = helper
        .client
        .post(server.url("/api/claims"))
        .header("Portcullis-Purpose", "two words")
        .send()
        .await
        .unwrap();
    assert_eq!(support::error_of(r).await.1["code"], "bad_request");
    let o = mcp_call(
        &rig,
        &helper,
        &json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
            "params": {"name": "save_note", "arguments": {"text": "x"}, "_meta": {"portcullis/purpose": 7}}}),
    )
    .await;
    assert_eq!(o.code.as_deref(), Some("bad_request"), "{o:?}");

    // Revoked: in force before the CLI returns, on every protocol, whatever
    // the purpose; the lifecycle moves one way and is audited.
    let revoked: Value = serde_json::from_str(&ok(
        server.cli(&["dataset", "revoke", "claims", "-o", "json"]),
        "dataset revoke",
    ))
    .unwrap();
    assert_eq!(revoked["lifecycle"], "revoked", "{revoked}");
    for protocol in Protocol::ALL {
        let o = call_for(&rig, &helper, protocol, "after-revoke", Some("note-taking")).await;
        assert_eq!(
            (o.code.as_deref(), &o.policies),
            (
                Some("dataset_denied"),
                &json!(["dataset:claims:builtin:dataset-gate"])
            ),
            "{protocol:?}"
        );
    }
    assert!(!tokio::task::block_in_place(|| ran(&rig, "after-revoke")));
    let again = server.cli(&["dataset", "approve", "claims"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("cannot become approved"));
    ok(
        server.cli(&["dataset", "approve", "notes"]),
        "approve notes",
    );
    let listed = ok(server.cli(&["dataset", "list"]), "dataset list");
    assert!(
        listed.contains("revoked") && listed.contains("approved"),
        "{listed}"
    );
    let records = server.audit(60);
    for (action, resource) in [
        ("dataset.register", "claims"),
        ("dataset.revoke", "claims"),
        ("dataset.approve", "notes"),
    ] {
        assert!(
            records
                .iter()
                .any(|r| r["action"] == action && r["resource"] == resource),
            "no `{action}` on `{resource}`"
        );
    }
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
