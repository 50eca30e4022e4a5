//! What the two files of the parity matrix (`parity.rs`, `parity_contain.rs`)
//! share: the three protocols, their Python upstreams (an MCP server written
//! with the official `mcp` SDK, an OpenAI-compatible LLM upstream) and the
//! MCP session an agent opens before it may call a tool.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::{Killed, Server, free_port, wait_for_port};

const MCP_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp");
const LLM_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llm");

/// Permits for role `dev` on the three routes the soak and the fault runs
/// name `api` (HTTP), `tools` (MCP) and `llm` (LLM).
pub const DEV_POLICIES: &str = r#"
@id("http") permit(principal in Role::"dev", action in [Action::"GET", Action::"POST"], resource == Route::"api");
@id("mcp") permit(principal in Role::"dev", action in [Action::"list_tools", Action::"call_tool"], resource in Route::"tools");
@id("llm") permit(principal in Role::"dev", action == Action::"complete", resource in Route::"llm");
"#;

/// Writes a policy directory at `dir`: the shipped schema and `policies`
/// (as `main.cedar`).
pub fn write_policies(dir: &std::path::Path, policies: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("schema.cedarschema"),
        include_str!("../../../policy/defaults/schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(dir.join("main.cedar"), policies).unwrap();
}

/// One protocol's way of making "the call" and reading its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Mcp,
    Llm,
}

impl Protocol {
    /// Every protocol, in the order the matrix's columns name them.
    pub const ALL: [Protocol; 3] = [Protocol::Http, Protocol::Mcp, Protocol::Llm];
}

/// Whether python3 with the `mcp` package is there; says `SKIPPED:` if not.
pub fn python_with_mcp() -> bool {
    match Command::new("python3").args(["-c", "import mcp"]).output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!("SKIPPED: parity matrix: python3 with the `mcp` package is not available");
            false
        }
    }
}

/// How the MCP server answers a POST.
#[derive(Clone, Copy, Debug)]
pub enum McpAnswers {
    /// One JSON body.
    Json,
    /// An event stream.
    Sse,
}

/// The MCP server of the guard tests (`mcp/guard_server.py`): `save_note`
/// appends what it got to `notes`, so a test sees whether a tool really ran;
/// `fetch_page` returns a prompt injection and `read_config` a secret.
pub fn start_mcp(answers: McpAnswers) -> (Killed, u16, tempfile::NamedTempFile) {
    let port = free_port();
    let notes = tempfile::NamedTempFile::new().unwrap();
    let mut py = Command::new("python3")
        .arg(format!("{MCP_TESTS}/guard_server.py"))
        .arg(port.to_string())
        .arg(notes.path())
        .arg(match answers {
            McpAnswers::Json => "json",
            McpAnswers::Sse => "sse",
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut py);
    (Killed(py), port, notes)
}

/// The OpenAI-compatible upstream (`llm/upstream.py`) and its port.
pub fn start_llm() -> (Killed, u16) {
    let mut child = Command::new("python3")
        .arg(format!("{LLM_TESTS}/upstream.py"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("upstream port");
    (Killed(child), port)
}

/// A POST of one JSON-RPC body to the MCP endpoint at `path`, on `session`.
pub fn mcp_post(
    agent: &reqwest::Client,
    server: &Server,
    path: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let r = agent
        .post(server.url(path))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(body);
    match session {
        Some(s) => r.header("mcp-session-id", s),
        None => r,
    }
}

/// Opens an MCP session for `agent` at `path` (initialize, initialized) and
/// lists the tools, which pins them: a tool must be seen before it may be
/// called. Returns the session id.
pub async fn mcp_session(agent: &reqwest::Client, server: &Server, path: &str) -> String {
    let init = mcp_post(
        agent,
        server,
        path,
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "parity", "version": "1"}}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(init.status(), 200, "initialize at {path}");
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = init.bytes().await.unwrap();
    let r = mcp_post(
        agent,
        server,
        path,
        Some(&session),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .send()
    .await
    .unwrap();
    let status = r.status();
    assert!(
        status.is_success(),
        "initialized at {path}: {status} {}",
        r.text().await.unwrap()
    );
    let r = mcp_post(
        agent,
        server,
        path,
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "tools/list at {path}");
    let _ = r.bytes().await.unwrap();
    session
}

/// The JSON-RPC messages of an MCP answer, whether one JSON body (a message
/// or a batch) or an event stream.
pub fn mcp_messages(text: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return match v {
            Value::Array(items) => items,
            other => vec![other],
        };
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}
