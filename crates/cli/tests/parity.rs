//! The parity matrix: the same policy means the same on every protocol. One
//! real `portcullis` serves an HTTP route, an MCP route (a server written
//! with the official `mcp` SDK, JSON answers) and an LLM route (an
//! OpenAI-compatible upstream), and each cell runs the same case on all three
//! and checks the answer **and** the audit record. `docs/parity.md` is the
//! human-readable matrix; a test below checks that it names every cell.
//!
//! Skips with a visible `SKIPPED:` when python3 with the `mcp` package is
//! missing (the MCP and LLM upstreams are Python).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use portcullis_identity::Ed25519Key;
use serde_json::{Value, json};
use support::{Killed, Server, free_port, wait_for_port};

const MCP_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp");
const LLM_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llm");
const SCHEMA: &str = include_str!("../../policy/defaults/schema.cedarschema");
const PARITY_DOC: &str = include_str!("../../../docs/parity.md");

/// The cells this file checks, by the names `docs/parity.md` uses.
const CELLS: &[&str] = &[
    "default deny",
    "permit",
    "forbid by context",
    "approval held",
    "approval approved once",
    "approval replay refused",
    "changed call gets a new ticket",
    "delegated: the user may",
    "delegated: the user may not",
    "no permit: refused before the body is read",
    "@rate",
    "mfa",
    "redact",
    "shadow decision recorded",
    "grant --ttl",
    "break-glass",
    "vault credential",
    "credential echoed by an error answer",
    "capture",
    "durable before forward",
    "authorization code: bearer for the user",
    "authorization code: another route's token",
    "forbid by binding: bearer refused",
    "forbid by binding: bound credential served",
    "revoked metadata-document client: tokens refused",
];

/// One obligation on the three protocols' permits.
fn obliging(annotation: &str) -> String {
    format!(
        r#"
@id("http") {annotation} permit(principal in Role::"dev", action == Action::"POST", resource == Route::"api");
@id("mcp-list") permit(principal in Role::"dev", action == Action::"list_tools", resource == Route::"tools");
@id("mcp") {annotation} permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"tools");
@id("llm") {annotation} permit(principal in Role::"dev", action == Action::"complete", resource in Route::"llm");
"#
    )
}

/// Every permit obliges a human's approval: the cell that failed open on
/// MCP and LLM routes before the one decision path.
const POLICIES: &str = r#"
@id("http-approval") @obligation("approval")
permit(principal in Role::"dev", action == Action::"POST", resource == Route::"api");
@id("mcp-list") permit(principal in Role::"dev", action == Action::"list_tools", resource == Route::"tools");
@id("mcp-approval") @obligation("approval")
permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"tools");
@id("llm-approval") @obligation("approval")
permit(principal in Role::"dev", action == Action::"complete", resource in Route::"llm");
@id("finance-users") permit(principal in Role::"finance", action in
  [Action::"POST", Action::"list_tools", Action::"call_tool", Action::"complete"], resource);
"#;

/// The identity provider whose users agents act for.
const IDP: &str = "https://idp.parity.test";

fn python_with_mcp() -> bool {
    match Command::new("python3").args(["-c", "import mcp"]).output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!("SKIPPED: parity matrix: python3 with the `mcp` package is not available");
            false
        }
    }
}

/// The MCP server of the guard tests: `save_note` appends what it got to
/// `notes`, so a test sees whether a tool really ran.
fn start_mcp(auth_log: Option<&std::path::Path>) -> (Killed, u16, tempfile::NamedTempFile) {
    let port = free_port();
    let notes = tempfile::NamedTempFile::new().unwrap();
    let mut py = Command::new("python3");
    py.arg(format!("{MCP_TESTS}/guard_server.py"))
        .arg(port.to_string())
        .arg(notes.path())
        .arg("json");
    if let Some(log) = auth_log {
        py.arg(log);
    }
    let mut py = py
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut py);
    (Killed(py), port, notes)
}

fn start_llm() -> (Killed, u16) {
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

/// One protocol's way of making "the call" and reading its answer.
#[derive(Clone, Copy, Debug)]
enum Protocol {
    Http,
    Mcp,
    Llm,
}

struct Rig {
    server: Server,
    idp: Ed25519Key,
    agent: reqwest::Client,
    session: String,
    notes: tempfile::NamedTempFile,
    /// The LLM upstream's port (`GET /_seen` lists what it received).
    llm_port: u16,
    /// Where the MCP server logs each request's Authorization header, when
    /// the rig was asked to.
    mcp_auth: Option<std::path::PathBuf>,
    _upstreams: Vec<Killed>,
    /// Holds `mcp_auth`; dropped after the upstreams are stopped.
    _auth_dir: tempfile::TempDir,
}

/// What a rig's routes carry beyond the defaults: TOML keys added to each of
/// the three routes, and a vault secret stored before they are served.
#[derive(Default)]
struct Extra<'a> {
    route_keys: &'a str,
    /// TOML sections added to the config (before the routes).
    config: &'a str,
    secret: Option<(&'a str, &'a str)>,
    /// The CA the gateway is made with (its outbound TLS trusts it too).
    ca: Option<&'a portcullis_identity::CertificateAuthority>,
}

/// A vault KEK for the rigs that need the vault (32 bytes, base64).
const KEK: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

/// An answer reduced to what the cells compare: the error code (None when
/// served), the ticket, and the request id of the record.
#[derive(Debug)]
struct Outcome {
    code: Option<String>,
    ticket: Option<String>,
    request_id: String,
}

impl Rig {
    async fn call(&self, protocol: Protocol, variant: &str) -> Outcome {
        self.call_as(protocol, variant, None).await
    }

    /// The call, with an access token (bound to the agent's certificate)
    /// when `bearer` is given, e.g. a delegated one.
    async fn call_as(&self, protocol: Protocol, variant: &str, bearer: Option<&str>) -> Outcome {
        self.call_by(&self.agent, protocol, variant, bearer).await
    }

    /// The call made by `agent` (on MCP, in the rig's session, which must
    /// be the agent's own).
    async fn call_by(
        &self,
        agent: &reqwest::Client,
        protocol: Protocol,
        variant: &str,
        bearer: Option<&str>,
    ) -> Outcome {
        let auth = |r: reqwest::RequestBuilder| match bearer {
            Some(token) => r.header("authorization", format!("Bearer {token}")),
            None => r,
        };
        match protocol {
            Protocol::Http => {
                let r = auth(agent.post(self.server.url(&format!("/api/transfer?to={variant}"))))
                    .body(format!("{{\"to\":\"{variant}\"}}"))
                    .send()
                    .await
                    .unwrap();
                outcome_of(r).await
            }
            Protocol::Llm => {
                let r = auth(agent.post(self.server.url("/llm/v1/chat/completions")))
                    .json(&json!({
                        "model": "gpt-test",
                        "messages": [{"role": "user", "content": format!("pay {variant}")}],
                    }))
                    .send()
                    .await
                    .unwrap();
                outcome_of(r).await
            }
            Protocol::Mcp => {
                let r = self
                    .rpc_as(
                        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                        "params": {"name": "save_note", "arguments": {"text": variant}}}),
                        bearer,
                    )
                    .await;
                let request_id = support::request_id(&r);
                let status = r.status();
                let body: Value = r.json().await.unwrap();
                assert_eq!(status, 200, "{body}");
                match body.get("error") {
                    None => Outcome {
                        code: None,
                        ticket: None,
                        request_id,
                    },
                    Some(e) => Outcome {
                        code: e["data"]["code"].as_str().map(str::to_string),
                        ticket: e["data"]["ticket"].as_str().map(str::to_string),
                        request_id,
                    },
                }
            }
        }
    }

    async fn rpc(&self, body: Value) -> reqwest::Response {
        self.rpc_as(body, None).await
    }

    async fn rpc_as(&self, body: Value, bearer: Option<&str>) -> reqwest::Response {
        let mut r = self.agent.post(self.server.url("/mcp/tools"));
        if let Some(token) = bearer {
            r = r.header("authorization", format!("Bearer {token}"));
        }
        r.header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .header("mcp-session-id", &self.session)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Whether the MCP tool ran with `text`.
    fn ran(&self, text: &str) -> bool {
        std::fs::read_to_string(self.notes.path())
            .unwrap()
            .lines()
            .any(|l| l == text)
    }
}

/// The outcome of an HTTP or LLM answer, read to its end: a capture or a
/// record of an answer the client dropped unread would be of a cut exchange.
async fn outcome_of(r: reqwest::Response) -> Outcome {
    let request_id = support::request_id(&r);
    if r.status().is_success() {
        let _ = r.bytes().await;
        return Outcome {
            code: None,
            ticket: None,
            request_id,
        };
    }
    let (_, e) = support::error_of(r).await;
    Outcome {
        code: e["code"].as_str().map(str::to_string),
        ticket: e["ticket"].as_str().map(str::to_string),
        request_id,
    }
}

async fn rig() -> Option<Rig> {
    rig_with(POLICIES).await
}

/// The rig with other policies (which must let `dev` list the MCP tools).
async fn rig_with(policies: &str) -> Option<Rig> {
    rig_setup(policies, &Extra::default()).await
}

/// The rig with other policies and more on its routes.
async fn rig_setup(policies: &str, extra: &Extra<'_>) -> Option<Rig> {
    support::install_crypto();
    if !tokio::task::block_in_place(python_with_mcp) {
        return None;
    }
    let auth_dir = tempfile::tempdir().unwrap();
    let mcp_auth = (!extra.route_keys.is_empty() || !extra.config.is_empty())
        .then(|| auth_dir.path().join("mcp-auth"));
    let (mcp, mcp_port, notes) = tokio::task::block_in_place(|| start_mcp(mcp_auth.as_deref()));
    let (llm, llm_port) = tokio::task::block_in_place(start_llm);
    let (http_upstream, _gate) = support::start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    if let Some(ca) = extra.ca {
        support::client_metadata::write_ca(dir.path(), ca);
    }
    let idp = Ed25519Key::generate();
    let mut jwk = idp.public().to_json();
    jwk["kid"] = json!(idp.kid());
    jwk["alg"] = json!("EdDSA");
    std::fs::write(
        dir.path().join("idp.jwks"),
        json!({ "keys": [jwk] }).to_string(),
    )
    .unwrap();
    let pol = dir.path().join("policies");
    std::fs::create_dir(&pol).unwrap();
    std::fs::write(pol.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(pol.join("parity.cedar"), policies).unwrap();
    let routes = |keys: &str| {
        format!(
            "[policy]\ndir = \"policies\"\n{config}\
         [[identity.oidc]]\nissuer = \"{IDP}\"\naudience = \"portcullis\"\njwks_file = \"idp.jwks\"\n{}{keys}\
         [[routes]]\nname = \"tools\"\nkind = \"mcp\"\npath_prefix = \"/mcp/tools\"\nupstream = \"http://127.0.0.1:{mcp_port}/mcp\"\nclassification = \"internal\"\n{keys}\
         [[routes]]\nname = \"llm\"\nkind = \"llm\"\npath_prefix = \"/llm\"\nupstream = \"http://127.0.0.1:{llm_port}\"\nclassification = \"internal\"\napi_key_env = \"PARITY_LLM_KEY\"\n{keys}\
         [[routes.models]]\nname = \"gpt-test\"\nstatus = \"approved\"\n",
            support::route(
                "api",
                "/api",
                &format!("http://{http_upstream}"),
                "internal"
            ),
            config = extra.config,
        )
    };
    let env = [("PARITY_LLM_KEY", "sk-parity"), ("PORTCULLIS_KEK", KEK)];
    let dir = match extra.secret {
        None => dir,
        Some((name, value)) => {
            // A route may name only a stored secret: store it first, on a
            // server without the extra keys.
            let config = support::config(dir.path(), &routes(""), "");
            let server =
                tokio::task::block_in_place(|| Server::start_with_env(dir, Some(&config), &env));
            let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args([
                    "secret",
                    "put",
                    name,
                    "--from-env",
                    "PARITY_SECRET",
                    "--state-dir",
                ])
                .arg(server.state_dir())
                .env("PARITY_SECRET", value)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            server.into_dir()
        }
    };
    let config = support::config(dir.path(), &routes(extra.route_keys), "");
    let server = tokio::task::block_in_place(|| Server::start_with_env(dir, Some(&config), &env));
    let (cert, key) = tokio::task::block_in_place(|| server.create_agent("dev-bot", &["dev"]));
    let agent = support::client(&server.ca_pem(), Some((&cert, &key)));
    let init = agent
        .post(server.url("/mcp/tools"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "parity", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = init.bytes().await.unwrap();
    let rig = Rig {
        server,
        idp,
        agent,
        session,
        notes,
        llm_port,
        mcp_auth,
        _upstreams: vec![mcp, llm],
        _auth_dir: auth_dir,
    };
    let r = rig
        .rpc(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    assert!(r.status().is_success());
    // The tool must be seen (pinned) before it may be called.
    let r = rig
        .rpc(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    Some(rig)
}

/// The record of a request, waited for (the writer commits in batches).
fn record(server: &Server, request_id: &str) -> Value {
    server.audit_record(request_id)
}

fn approve(server: &Server, ticket: &str) {
    let out = server.cli(&["approvals", "approve", ticket]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_obligation_holds_the_call_on_every_protocol() {
    let Some(rig) = rig().await else {
        return;
    };
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let cell = |name: &str| format!("{protocol:?} / {name}");
        // approval held: no call reaches the upstream without a human.
        let held = rig.call(protocol, "alice").await;
        assert_eq!(
            held.code.as_deref(),
            Some("approval_required"),
            "{}: {held:?}",
            cell("approval held")
        );
        let ticket = held.ticket.clone().expect("a ticket");
        let rec = tokio::task::block_in_place(|| record(&rig.server, &held.request_id));
        assert_eq!(rec["outcome"], "deny", "{}: {rec}", cell("approval held"));
        assert_eq!(rec["approval_ticket"], ticket.as_str(), "{rec}");
        assert_eq!(rec["error_code"], "approval_required", "{rec}");
        if let Protocol::Mcp = protocol {
            assert!(!rig.ran("alice"), "{}: the tool ran", cell("approval held"));
        }

        // changed call gets a new ticket.
        let changed = rig.call(protocol, "mallory").await;
        assert_eq!(changed.code.as_deref(), Some("approval_required"));
        assert_ne!(
            changed.ticket.as_deref(),
            Some(ticket.as_str()),
            "{}",
            cell("changed call gets a new ticket")
        );

        // approval approved once.
        tokio::task::block_in_place(|| approve(&rig.server, &ticket));
        let served = rig.call(protocol, "alice").await;
        assert_eq!(
            served.code,
            None,
            "{}: {served:?}",
            cell("approval approved once")
        );
        let rec = tokio::task::block_in_place(|| record(&rig.server, &served.request_id));
        assert_eq!(rec["outcome"], "allow", "{rec}");
        assert_eq!(rec["approval_ticket"], ticket.as_str(), "{rec}");
        if let Protocol::Mcp = protocol {
            assert!(rig.ran("alice"), "the approved tool call ran");
        }

        // approval replay refused.
        let replay = rig.call(protocol, "alice").await;
        assert_eq!(
            replay.code.as_deref(),
            Some("approval_required"),
            "{}: {replay:?}",
            cell("approval replay refused")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_routes_forward_only_decided_mcp() {
    let Some(rig) = rig().await else {
        return;
    };
    // Sub-paths of the endpoint are not proxied.
    for method in [
        reqwest::Method::GET,
        reqwest::Method::DELETE,
        reqwest::Method::POST,
    ] {
        let r = rig
            .agent
            .request(method.clone(), rig.server.url("/mcp/tools/admin"))
            .header("mcp-session-id", &rig.session)
            .send()
            .await
            .unwrap();
        let (status, e) = support::error_of(r).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (404, Some("not_found")),
            "{method}"
        );
    }
    // A GET without a session is a legacy HTTP+SSE client opening its
    // stream (issue 21): decided as `open_stream` and passed on, and this
    // Streamable HTTP server opens no stream without a session.
    let r = rig
        .agent
        .get(rig.server.url("/mcp/tools"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let request_id = support::request_id(&r);
    assert_eq!(r.status(), 400);
    let rec = tokio::task::block_in_place(|| record(&rig.server, &request_id));
    assert_eq!(
        (rec["action"].as_str(), rec["outcome"].as_str()),
        (Some("mcp:GET"), Some("allow")),
        "{rec}"
    );

    // A tool call sent as a notification never runs (no answer could carry
    // a refusal), even where policy would hold it for approval.
    for note in [
        json!({"jsonrpc": "2.0", "method": "tools/call",
            "params": {"name": "save_note", "arguments": {"text": "as-notification"}}}),
        json!({"jsonrpc": "2.0", "id": null, "method": "tools/call",
            "params": {"name": "save_note", "arguments": {"text": "null-id"}}}),
    ] {
        let r = rig.rpc(note).await;
        let request_id = support::request_id(&r);
        assert_eq!(r.status(), 202);
        let rec = tokio::task::block_in_place(|| record(&rig.server, &request_id));
        assert_eq!(rec["outcome"], "deny", "{rec}");
    }
    assert!(!rig.ran("as-notification") && !rig.ran("null-id"));

    // Default deny: a tool on another route's scope is refused.
    let r = rig
        .rpc(json!({"jsonrpc": "2.0", "id": 9, "method": "prompts/list"}))
        .await;
    let request_id = support::request_id(&r);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["data"]["code"], "forbidden", "{body}");
    assert_eq!(
        body["error"]["data"]["policies"],
        json!(["default-deny"]),
        "{body}"
    );
    let rec = tokio::task::block_in_place(|| record(&rig.server, &request_id));
    assert_eq!(rec["outcome"], "deny", "{rec}");
}

/// A delegated token: `agent` acting for `user` (in `groups`), bound to the
/// agent's certificate.
fn delegated(rig: &Rig, agent: &str, user: &str, groups: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let subject = rig.idp.sign_compact(
        &json!({"alg": "EdDSA", "typ": "JWT", "kid": rig.idp.kid()}),
        &json!({"iss": IDP, "aud": "portcullis", "sub": user, "iat": now,
            "exp": now + 600, "groups": groups, "amr": ["pwd"]}),
    );
    let file = rig.server.path().join(format!("subject-{user}"));
    std::fs::write(&file, subject).unwrap();
    let creds = rig.server.path().join("creds");
    let out = rig.server.cli(&[
        "agent",
        "token",
        agent,
        "--creds",
        creds.to_str().unwrap(),
        "--mtls",
        "--on-behalf-of",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delegated_call_needs_the_user_allowed_too_on_every_protocol() {
    let Some(rig) = rig().await else {
        return;
    };
    let for_alice =
        tokio::task::block_in_place(|| delegated(&rig, "dev-bot", "alice", &["finance"]));
    let for_bob = tokio::task::block_in_place(|| delegated(&rig, "dev-bot", "bob", &["staff"]));
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        // The user may: the agent's own obligation (approval) still holds.
        let may = rig.call_as(protocol, "for-alice", Some(&for_alice)).await;
        assert_eq!(
            may.code.as_deref(),
            Some("approval_required"),
            "{protocol:?} / delegated: the user may: {may:?}"
        );
        // The user may not: refused whatever the agent may, and the record
        // names the user's side of the decision.
        let may_not = rig.call_as(protocol, "for-bob", Some(&for_bob)).await;
        assert_eq!(
            may_not.code.as_deref(),
            Some("forbidden"),
            "{protocol:?} / delegated: the user may not: {may_not:?}"
        );
        let rec = tokio::task::block_in_place(|| record(&rig.server, &may_not.request_id));
        assert_eq!(rec["outcome"], "deny", "{rec}");
        assert_eq!(rec["policies"], json!(["user:default-deny"]), "{rec}");
    }
    assert!(!rig.ran("for-bob") && !rig.ran("for-alice"));
    // The model list shows bob nothing, alice the model.
    for (token, expect) in [(&for_bob, 0), (&for_alice, 1)] {
        let r = rig
            .agent
            .get(rig.server.url("/llm/v1/models"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), expect, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_no_permit_covers_is_refused_before_its_body_is_read() {
    let Some(rig) = rig().await else {
        return;
    };
    let (cert, key) =
        tokio::task::block_in_place(|| rig.server.create_agent("outsider", &["visitor"]));
    let tls = support::tls_config(&rig.server.ca_pem(), Some((&cert, &key)));
    // An 8 MiB body is announced and never sent: a gateway that read it
    // before deciding would answer nothing (raw_tls gives up after 3 s of
    // quiet); one that decides from the head answers at once.
    for (path, protocol) in [("/mcp/tools", "Mcp"), ("/llm/v1/chat/completions", "Llm")] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 8388608\r\n\r\n{{\"jsonrpc\":"
        );
        let answer = support::raw_tls(rig.server.gateway, tls.clone(), head.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 403"),
            "{protocol} / no permit: refused before the body is read: {answer:?}"
        );
        assert!(answer.contains("\"default-deny\""), "{answer}");
        let request_id = answer
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("a request id")
            .trim()
            .to_string();
        let rec = tokio::task::block_in_place(|| record(&rig.server, &request_id));
        assert_eq!(rec["outcome"], "deny", "{rec}");
        assert_eq!(rec["principal"], "outsider", "{rec}");
    }
}

/// A forbid whose condition reads the context (here: how the agent
/// authenticated, a field every action's context has) beats the permits.
const FORBID_BY_CONTEXT: &str = r#"
@id("no-certificate-calls")
forbid(principal, action in [Action::"POST", Action::"call_tool", Action::"complete"], resource)
when { context.auth.method == "mtls" };
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_permit_serves_and_a_forbid_by_context_refuses_on_every_protocol() {
    let Some(rig) = rig_with(&obliging("")).await else {
        return;
    };
    for (protocol, permit) in [
        (Protocol::Http, "http"),
        (Protocol::Mcp, "mcp"),
        (Protocol::Llm, "llm"),
    ] {
        let served = rig.call(protocol, "permitted").await;
        assert_eq!(served.code, None, "{protocol:?} / permit: {served:?}");
        let rec = tokio::task::block_in_place(|| record(&rig.server, &served.request_id));
        assert_eq!(rec["outcome"], "allow", "{rec}");
        assert!(
            rec["policies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == permit),
            "{protocol:?}: the permit `{permit}` decided: {rec}"
        );
    }
    assert!(rig.ran("permitted"));
    drop(rig);

    let policies = format!("{}{FORBID_BY_CONTEXT}", obliging(""));
    let Some(rig) = rig_with(&policies).await else {
        return;
    };
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let refused = rig.call(protocol, "forbidden-by-context").await;
        assert_eq!(
            refused.code.as_deref(),
            Some("forbidden"),
            "{protocol:?} / forbid by context: {refused:?}"
        );
        let rec = tokio::task::block_in_place(|| record(&rig.server, &refused.request_id));
        assert_eq!(rec["outcome"], "deny", "{rec}");
        assert_eq!(
            rec["policies"],
            serde_json::json!(["no-certificate-calls"]),
            "{protocol:?}: {rec}"
        );
    }
    assert!(!rig.ran("forbidden-by-context"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_and_mfa_obligations_hold_on_every_protocol() {
    let Some(rig) = rig_with(&obliging(r#"@rate("2/m")"#)).await else {
        return;
    };
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        for n in 0..2 {
            let served = rig.call(protocol, &format!("rate-{n}")).await;
            assert_eq!(
                served.code, None,
                "{protocol:?} / @rate: call {n}: {served:?}"
            );
        }
        let third = rig.call(protocol, "rate-2").await;
        assert_eq!(
            third.code.as_deref(),
            Some("rate_limited"),
            "{protocol:?} / @rate: {third:?}"
        );
        let rec = tokio::task::block_in_place(|| record(&rig.server, &third.request_id));
        assert_eq!(rec["outcome"], "deny", "{rec}");
        assert_eq!(rec["error_code"], "rate_limited", "{rec}");
    }
    assert!(!rig.ran("rate-2"));
    drop(rig);

    let Some(rig) = rig_with(&obliging(r#"@obligation("mfa")"#)).await else {
        return;
    };
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        // The agent acts for nobody, so no user passed a second factor.
        let refused = rig.call(protocol, "mfa").await;
        assert_eq!(
            refused.code.as_deref(),
            Some("user_mfa_required"),
            "{protocol:?} / mfa: {refused:?}"
        );
        let rec = tokio::task::block_in_place(|| record(&rig.server, &refused.request_id));
        assert_eq!(rec["outcome"], "deny", "{rec}");
    }
    assert!(!rig.ran("mfa"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redact_obligation_redacts_answers_on_every_protocol() {
    let Some(rig) = rig_with(&obliging(r#"@obligation("redact")"#)).await else {
        return;
    };
    const KEY: &str = "AKIAQWADE5R42RDZ4JEM";
    // HTTP: the upstream echoes the request's headers.
    let text = rig
        .agent
        .post(rig.server.url("/api/echo"))
        .header("x-note", KEY)
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains(KEY) && text.contains("[REDACTED_"),
        "Http / redact: {text}"
    );
    // MCP: the tool's result carries a key.
    let r = rig
        .rpc(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "read_config", "arguments": {}}}))
        .await;
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(KEY) && text.contains("[REDACTED_"),
        "Mcp / redact: {text}"
    );
    // LLM: the model's answer carries a key (split across stream events).
    for stream in [false, true] {
        let text = rig
            .agent
            .post(rig.server.url("/llm/v1/chat/completions"))
            .json(&json!({"model": "gpt-test", "stream": stream,
                "messages": [{"role": "user", "content": "leak it"}]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !text.contains("AKIAQWA"),
            "Llm / redact (stream {stream}): {text}"
        );
        assert!(
            text.contains("[REDACTED_"),
            "Llm / redact (stream {stream}): {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_candidate_is_decided_beside_every_protocol() {
    let Some(rig) = rig_with(&obliging("")).await else {
        return;
    };
    // The candidate lets the agent list tools and nothing else.
    let next = rig.server.path().join("next");
    std::fs::create_dir_all(&next).unwrap();
    std::fs::write(next.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(
        next.join("next.cedar"),
        r#"@id("mcp-list") permit(principal in Role::"dev", action == Action::"list_tools", resource == Route::"tools");"#,
    )
    .unwrap();
    let out = tokio::task::block_in_place(|| {
        rig.server
            .cli(&["policy", "push", next.to_str().unwrap(), "--shadow"])
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ids = Vec::new();
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let served = rig.call(protocol, "shadowed").await;
        assert_eq!(served.code, None, "{protocol:?}: {served:?}");
        ids.push((protocol, served.request_id));
    }
    let out = tokio::task::block_in_place(|| rig.server.cli(&["policy", "shadow"]));
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    for (protocol, id) in ids {
        let line = out
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_else(|| panic!("{protocol:?} / shadow decision recorded: {out}"));
        assert!(
            line.contains("-> shadow deny [default-deny]"),
            "{protocol:?} / shadow decision recorded: {line}"
        );
    }
}

/// `portcullis approvals approve <ticket> --ttl <ttl>`; its output.
fn approve_for(server: &Server, ticket: &str, ttl: &str) -> String {
    let out = server.cli(&["approvals", "approve", ticket, "--ttl", ttl]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The deciding policy of a record whose id starts with `prefix`.
fn policy_with(rec: &Value, prefix: &str) -> Option<String> {
    rec["policies"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|p| p.starts_with(prefix))
        .map(str::to_string)
}

/// A forbid by the MCP call's arguments, beside the rig's permits.
const FORBID_NOTE: &str = r#"
@id("no-forbidden-note") forbid(principal, action == Action::"call_tool", resource)
  when { context.args.hasTag("text") && context.args.getTag("text") == "forbidden" };
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_with_a_ttl_permits_its_call_on_every_protocol() {
    let Some(rig) = rig_with(&format!("{POLICIES}{FORBID_NOTE}")).await else {
        return;
    };
    let mut grants = Vec::new();
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let cell = format!("{protocol:?} / grant --ttl");
        let held = rig.call(protocol, "grant-first").await;
        assert_eq!(held.code.as_deref(), Some("approval_required"), "{cell}");
        let out = tokio::task::block_in_place(|| {
            approve_for(&rig.server, held.ticket.as_deref().unwrap(), "10m")
        });
        assert!(out.contains("grant"), "{cell}: {out}");
        // Another call, which would need a ticket of its own, is allowed by
        // the grant; the record names it and no ticket.
        let served = rig.call(protocol, "grant-other").await;
        assert_eq!(served.code, None, "{cell}: {served:?}");
        let rec = tokio::task::block_in_place(|| record(&rig.server, &served.request_id));
        assert_eq!(rec["outcome"], "allow", "{cell}: {rec}");
        let grant = policy_with(&rec, "grant:").unwrap_or_else(|| panic!("{cell}: {rec}"));
        assert!(rec["approval_ticket"].is_null(), "{cell}: {rec}");
        grants.push(grant);
    }
    assert!(
        rig.ran("grant-other"),
        "Mcp / grant --ttl: the tool did not run"
    );
    // The grant is of one tool: another still needs a human.
    let r = rig
        .rpc(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "read_config", "arguments": {}}}))
        .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["data"]["code"], "approval_required", "{body}");
    // Of one model action: an embedding is not a completion.
    let r = rig
        .agent
        .post(rig.server.url("/llm/v1/embeddings"))
        .json(&json!({"model": "gpt-test", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A forbid still wins over the grant.
    let forbidden = rig.call(Protocol::Mcp, "forbidden").await;
    assert_eq!(
        forbidden.code.as_deref(),
        Some("forbidden"),
        "{forbidden:?}"
    );
    let rec = tokio::task::block_in_place(|| record(&rig.server, &forbidden.request_id));
    assert_eq!(rec["policies"], json!(["no-forbidden-note"]), "{rec}");
    assert!(!rig.ran("forbidden"));
    // Revoked: each call needs a human again.
    for grant in &grants {
        let out = tokio::task::block_in_place(|| {
            rig.server
                .cli(&["grants", "revoke", grant.strip_prefix("grant:").unwrap()])
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let held = rig.call(protocol, "grant-after").await;
        assert_eq!(
            held.code.as_deref(),
            Some("approval_required"),
            "{protocol:?} / grant --ttl: revoked: {held:?}"
        );
    }
}

/// Opens a break-glass for `agent` with two admins' TOTP codes (enrolled
/// here); returns its policy id, `breakglass:<id>`.
async fn open_breakglass(server: &Server, agent: &str) -> String {
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let secret_of = |out: &str| {
        let secret = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): ")
            })
            .unwrap();
        portcullis_identity::TotpSecret::from_base32(secret).unwrap()
    };
    let alice = secret_of(&ok(server.cli(&["admin", "user", "add", "alice"])));
    // Alice's earlier code enrols Bob and her current one opens: both must
    // fall in one ±1 step window.
    while now() % 30 > 18 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let earlier = alice.code_at(now() - 30);
    let bob = secret_of(&ok(server.cli(&[
        "admin", "user", "add", "bob", "--user", "alice", "--totp", &earlier,
    ])));
    let (a, b) = (alice.code_at(now()), bob.code_at(now()));
    let out = ok(server.cli(&[
        "breakglass",
        "open",
        "--agent",
        agent,
        "--reason",
        "parity INC-1",
        "--ttl",
        "30m",
        "--approver",
        &format!("alice:{a}"),
        "--approver",
        &format!("bob:{b}"),
    ]));
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("close it early with `portcullis breakglass close "))
        .unwrap_or_else(|| panic!("{out}"))
        .trim_end_matches('`')
        .to_string();
    format!("breakglass:{id}")
}

#[tokio::test(flavor = "multi_thread")]
async fn break_glass_lets_every_protocol_through_and_marks_it() {
    // The agent may list the tools and nothing else.
    let policies = format!(
        r#"@id("mcp-list") permit(principal in Role::"dev", action == Action::"list_tools", resource == Route::"tools");{FORBID_NOTE}"#
    );
    let Some(rig) = rig_with(&policies).await else {
        return;
    };
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let refused = rig.call(protocol, "before-glass").await;
        assert_eq!(refused.code.as_deref(), Some("forbidden"), "{protocol:?}");
    }
    let mark = open_breakglass(&rig.server, "dev-bot").await;
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let cell = format!("{protocol:?} / break-glass");
        let served = rig.call(protocol, "under-glass").await;
        assert_eq!(served.code, None, "{cell}: {served:?}");
        let rec = tokio::task::block_in_place(|| record(&rig.server, &served.request_id));
        assert_eq!(rec["outcome"], "allow", "{cell}: {rec}");
        assert_eq!(rec["breakglass"], mark.as_str(), "{cell}: {rec}");
        assert_eq!(rec["policies"], json!([mark]), "{cell}: {rec}");
    }
    assert!(
        rig.ran("under-glass"),
        "Mcp / break-glass: the tool did not run"
    );
    // Forbids still apply.
    let forbidden = rig.call(Protocol::Mcp, "forbidden").await;
    assert_eq!(
        forbidden.code.as_deref(),
        Some("forbidden"),
        "{forbidden:?}"
    );
    let rec = tokio::task::block_in_place(|| record(&rig.server, &forbidden.request_id));
    assert_eq!(rec["policies"], json!(["no-forbidden-note"]), "{rec}");
    assert!(rec["breakglass"].is_null(), "{rec}");
    assert!(!rig.ran("forbidden"));
}

/// The vault secret the vault cell's routes name, and its value.
const SECRET: (&str, &str) = ("parity-key", "sk-vault-parity-9f3e1d");

#[tokio::test(flavor = "multi_thread")]
async fn a_vault_credential_and_capture_work_on_every_protocol() {
    let policies = format!(
        r#"{}
@id("use-key") permit(principal in Role::"dev", action == Action::"use_secret", resource == Secret::"{}");
@id("no-key") forbid(principal in Role::"keyless", action == Action::"use_secret", resource);
"#,
        obliging(""),
        SECRET.0
    );
    let keys = format!(
        "credential = {{ secret = \"{}\", header = \"Authorization\", format = \"Bearer {{}}\" }}\ncapture = {{ retention = \"1d\" }}\n",
        SECRET.0
    );
    let extra = Extra {
        route_keys: &keys,
        secret: Some(SECRET),
        ..Extra::default()
    };
    let Some(rig) = rig_setup(&policies, &extra).await else {
        return;
    };
    let bearer = format!("Bearer {}", SECRET.1);
    let mut served = Vec::new();
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let cell = format!("{protocol:?} / vault credential");
        let call = rig.call(protocol, "vaulted").await;
        assert_eq!(call.code, None, "{cell}: {call:?}");
        let rec = tokio::task::block_in_place(|| record(&rig.server, &call.request_id));
        assert_eq!(rec["outcome"], "allow", "{cell}: {rec}");
        assert!(policy_with(&rec, "use-key").is_some(), "{cell}: {rec}");
        assert!(!rec.to_string().contains(SECRET.1), "{cell}: {rec}");
        served.push((protocol, call.request_id));
    }
    // What each upstream received: the vault's value, which the agent never
    // sent. HTTP: the upstream echoes the request's headers.
    let echo: Value = rig
        .agent
        .post(rig.server.url("/api/echo"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        echo["headers"]["authorization"],
        bearer.as_str(),
        "Http / vault credential: {echo}"
    );
    // MCP: every request to the server carried it, session plumbing too.
    let log = std::fs::read_to_string(rig.mcp_auth.as_ref().unwrap()).unwrap();
    assert!(log.lines().count() >= 4, "{log}");
    assert!(
        log.lines().all(|l| l.ends_with(&bearer)),
        "Mcp / vault credential: {log}"
    );
    // LLM: the vault's value, not the route's API key.
    let seen: Value = reqwest::get(format!("http://127.0.0.1:{}/_seen", rig.llm_port))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = seen
        .as_array()
        .and_then(|s| s.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        last["authorization"],
        bearer.as_str(),
        "Llm / vault credential: {seen}"
    );

    // A `use_secret` denial refuses, whatever the route allows.
    let (cert, key) =
        tokio::task::block_in_place(|| rig.server.create_agent("keyless-bot", &["dev", "keyless"]));
    let keyless = support::client(&rig.server.ca_pem(), Some((&cert, &key)));
    for (protocol, request) in [
        (
            "Http",
            keyless.post(rig.server.url("/api/transfer")).body("{}"),
        ),
        (
            "Mcp",
            keyless
                .post(rig.server.url("/mcp/tools"))
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .json(
                    &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "parity", "version": "1"}}}),
                ),
        ),
        (
            "Llm",
            keyless
                .post(rig.server.url("/llm/v1/chat/completions"))
                .json(
                    &json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}),
                ),
        ),
    ] {
        let r = request.send().await.unwrap();
        let request_id = support::request_id(&r);
        let (status, e) = support::error_of(r).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (403, Some("forbidden")),
            "{protocol} / vault credential: refused: {e}"
        );
        let rec = tokio::task::block_in_place(|| record(&rig.server, &request_id));
        assert_eq!(rec["outcome"], "deny", "{protocol}: {rec}");
        assert!(policy_with(&rec, "no-key").is_some(), "{protocol}: {rec}");
    }

    // Capture: each served call's exchange is sealed under its record's id
    // and opened by `portcullis capture show`.
    for (protocol, request_id) in served {
        let mut shown = None;
        for _ in 0..100 {
            let out = tokio::task::block_in_place(|| {
                rig.server
                    .cli(&["capture", "show", &request_id, "-o", "json"])
            });
            if out.status.success() {
                shown = Some(String::from_utf8(out.stdout).unwrap());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let shown: Value = serde_json::from_str(
            &shown.unwrap_or_else(|| panic!("{protocol:?} / capture: nothing stored")),
        )
        .unwrap();
        use base64::Engine;
        let decode = |field: &str| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(shown[field].as_str().unwrap_or_default())
                .unwrap();
            String::from_utf8_lossy(&bytes).to_string()
        };
        assert!(
            decode("request_base64").contains("vaulted"),
            "{protocol:?} / capture: {shown}"
        );
        assert!(
            !decode("response_base64").is_empty(),
            "{protocol:?} / capture: {shown}"
        );
        // The sealed request body is what went upstream; the credential
        // travels in a header, never in it.
        assert!(
            !decode("request_base64").contains(SECRET.1),
            "{protocol:?} / capture"
        );
        let rec = tokio::task::block_in_place(|| record(&rig.server, &request_id));
        assert_eq!(rec["request_id"], request_id.as_str(), "{rec}");
    }
}

/// An upstream that answers 401 with the vault credential it received (in
/// its body, and on HTTP in a header too) reaches the agent with every
/// copy replaced by `[REDACTED_CREDENTIAL]`, on every protocol. The value
/// has no known secret format: DLP patterns cannot catch it, only its
/// exact value can.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_answer_echoing_the_vault_credential_is_redacted_on_every_protocol() {
    const PLAIN: (&str, &str) = ("echo-key", "plainvault7c41value");
    let policies = format!(
        r#"{}
@id("use-key") permit(principal in Role::"dev", action == Action::"use_secret", resource == Secret::"{}");
"#,
        obliging(""),
        PLAIN.0
    );
    let keys = format!(
        "credential = {{ secret = \"{}\", header = \"Authorization\", format = \"Bearer {{}}\" }}\n",
        PLAIN.0
    );
    let extra = Extra {
        route_keys: &keys,
        secret: Some(PLAIN),
        ..Extra::default()
    };
    let Some(rig) = rig_setup(&policies, &extra).await else {
        return;
    };
    let http = rig
        .agent
        .post(rig.server.url("/api/echo401"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let mcp = rig
        .rpc(json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "save_note", "arguments": {"text": "echo401"}}}))
        .await;
    let llm = rig
        .agent
        .post(rig.server.url("/llm/v1/chat/completions"))
        .json(&json!({"model": "gpt-test",
            "messages": [{"role": "user", "content": "echo401"}]}))
        .send()
        .await
        .unwrap();
    for (protocol, r) in [("Http", http), ("Mcp", mcp), ("Llm", llm)] {
        let cell = format!("{protocol} / credential echoed by an error answer");
        let status = r.status();
        let headers = format!("{:?}", r.headers());
        let text = r.text().await.unwrap();
        assert!(!text.contains(PLAIN.1), "{cell}: {status} {text}");
        assert!(!headers.contains(PLAIN.1), "{cell}: {headers}");
        // The upstream's answer comes through, the placeholder where the
        // credential stood.
        assert_eq!(status, 401, "{cell}: {text}");
        assert!(
            text.contains("bad credential: Bearer [REDACTED_CREDENTIAL]")
                || text.contains("Incorrect API key provided: [REDACTED_CREDENTIAL]"),
            "{cell}: {text}"
        );
    }
    // A successful answer is the upstream's business (the HTTP echo shows
    // the credential arrived).
    let echo = rig
        .agent
        .post(rig.server.url("/api/echo"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(echo.contains(PLAIN.1), "{echo}");
}

/// Polls (bounded) until `arrived` says the upstream has the held call.
async fn until_upstream_has(what: &str, arrived: impl Fn() -> bool) {
    for _ in 0..200 {
        if arrived() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the {what} upstream never received the held call");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_durable_before_it_is_forwarded_on_every_protocol() {
    // No `durability` set: a POST, a `tools/call` and a completion are
    // writes, so each intent must be committed before the upstream sees the
    // call. Each upstream receives its call and never answers; `kill -9`
    // then leaves no record but the intent, which the restart recovers.
    let Some(mut rig) = rig_with(&obliging("")).await else {
        return;
    };
    let agent = rig.agent.clone();
    let held_http = tokio::spawn(
        agent
            .post(rig.server.url("/api/hold"))
            .body("{\"to\":\"hold-forever\"}")
            .send(),
    );
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        support::HOLD_ARRIVED.notified(),
    )
    .await
    .expect("the HTTP upstream never received the held call");
    let held_mcp = tokio::spawn(
        agent
            .post(rig.server.url("/mcp/tools"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .header("mcp-session-id", &rig.session)
            .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": "save_note", "arguments": {"text": "hold-forever"}}}))
            .send(),
    );
    until_upstream_has("MCP", || rig.ran("hold-forever")).await;
    let held_llm = tokio::spawn(
        agent
            .post(rig.server.url("/llm/v1/chat/completions"))
            .json(&json!({"model": "gpt-test",
                "messages": [{"role": "user", "content": "hold-forever"}]}))
            .send(),
    );
    let seen = format!("http://127.0.0.1:{}/_seen", rig.llm_port);
    let plain = reqwest::Client::new();
    for _ in 0..200 {
        let body = plain.get(&seen).send().await.unwrap().text().await.unwrap();
        if body.contains("hold-forever") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let body = plain.get(&seen).send().await.unwrap().text().await.unwrap();
    assert!(
        body.contains("hold-forever"),
        "the LLM upstream never received the held call"
    );

    // kill -9: no drain, no spool.
    let mut child = rig.server.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for held in [held_http, held_mcp, held_llm] {
        held.abort();
    }
    let Rig {
        server, _upstreams, ..
    } = rig;
    let dir = server.into_dir();
    let config = dir.path().join("portcullis.toml");
    let env = [("PARITY_LLM_KEY", "sk-parity"), ("PORTCULLIS_KEK", KEK)];
    let server = tokio::task::block_in_place(|| Server::start_with_env(dir, Some(&config), &env));

    // Each protocol's held call is in the log, recovered as `interrupted`.
    let mut actions = Vec::new();
    for _ in 0..100 {
        let records = tokio::task::block_in_place(|| server.audit(500));
        actions = records
            .iter()
            .filter(|r| r["error_code"] == "interrupted")
            .map(|r| {
                assert_eq!(r["outcome"], "allow", "{r}");
                assert_eq!(r["principal"], "dev-bot", "{r}");
                // The recovered record names the call as decided.
                if r["action"] == "mcp:tools/call" {
                    assert_eq!(r["resource"], "tools/save_note", "{r}");
                }
                r["action"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        if actions.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    actions.sort();
    assert_eq!(
        actions,
        ["POST", "complete", "mcp:tools/call"],
        "the interrupted records' actions"
    );
    for args in [&["audit", "checkpoint", "--sign"][..], &["audit", "verify"]] {
        let out = tokio::task::block_in_place(|| server.cli(args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_parity_document_names_every_cell() {
    for cell in CELLS {
        assert!(
            PARITY_DOC.contains(cell),
            "docs/parity.md does not name the cell `{cell}`"
        );
    }
}

/// `promtool check metrics` on one exposition: its exit status and findings.
fn promtool(exposition: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), findings.trim().to_string())
}

/// The families an exposition declares with `# TYPE`, and their types.
fn declared(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// Issue 21: `/metrics` after real traffic on all three protocols passes
/// `promtool check metrics` with no finding in the text format 0.0.4,
/// served to `Accept: text/plain;version=0.0.4` and plain `text/plain`;
/// OpenMetrics is served otherwise (and to Prometheus's own Accept), with
/// HELP and TYPE on every family and `# EOF`. promtool (2.42, Debian)
/// reads only the 0.0.4 format: fed OpenMetrics it finds exactly one
/// thing per counter family (`<name>_total no help text`, because an
/// OpenMetrics counter family is named without `_total`), and nothing else
/// is tolerated. Skips visibly without promtool (`apt-get install
/// prometheus`; `.ci/run` installs it).
#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_traffic_on_every_protocol_pass_promtool_in_both_formats() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: promtool check metrics: promtool is not installed (apt-get install prometheus)"
        );
        return;
    }
    let Some(rig) = rig_with(&obliging("")).await else {
        return;
    };
    for protocol in [Protocol::Http, Protocol::Mcp, Protocol::Llm] {
        let served = rig.call(protocol, "scraped").await;
        assert_eq!(served.code, None, "{protocol:?}: {served:?}");
    }
    let admin = support::client(&rig.server.ca_pem(), None);
    let scrape = |accept: Option<&'static str>| {
        let mut r = admin.get(format!("https://{}/metrics", rig.server.admin));
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let media = r.headers()["content-type"].to_str().unwrap().to_string();
            (media, r.text().await.unwrap())
        }
    };
    for accept in ["text/plain;version=0.0.4", "text/plain"] {
        let (media, text) = scrape(Some(accept)).await;
        assert_eq!(
            media, "text/plain; version=0.0.4; charset=utf-8",
            "{accept}"
        );
        for family in ["portcullis_requests_total", "portcullis_decisions_total"] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}: {text}"
            );
        }
        // Traffic of the three protocols is in it.
        for route in ["api", "tools", "llm/gpt-test"] {
            assert!(
                text.contains(&format!(
                    "portcullis_requests_total{{route=\"{route}\",status=\"200\"}}"
                )),
                "{route}: {text}"
            );
        }
        let (ok, findings) = tokio::task::block_in_place(|| promtool(&text));
        assert!(
            ok && findings.is_empty(),
            "promtool on 0.0.4 ({accept}): {findings}\n{text}"
        );
    }
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in [None, Some("*/*"), Some(prometheus)] {
        let (media, text) = scrape(accept).await;
        assert_eq!(
            media, "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "{accept:?}"
        );
        assert_eq!(text.lines().last(), Some("# EOF"), "{accept:?}");
        let families = declared(&text);
        let helped: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(
            helped,
            families.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
        );
        let (_, findings) = tokio::task::block_in_place(|| promtool(&text));
        let mut expected: Vec<String> = families
            .iter()
            .filter(|(_, t)| t == "counter")
            .map(|(n, _)| format!("{n}_total no help text"))
            .collect();
        let mut found: Vec<String> = findings.lines().map(str::to_string).collect();
        expected.sort();
        found.sort();
        assert_eq!(found, expected, "promtool on OpenMetrics ({accept:?})");
    }
}

/// A token of the authorization-code flow (MCP authorization), for a local
/// user who logged in, audience-bound to one route and unbound (`Bearer`):
/// on every protocol it is decided as the configured agent and as the user,
/// served when both may, recorded as acting for the user, never forwarded;
/// and refused (`invalid_token`) on any other route.
#[tokio::test(flavor = "multi_thread")]
async fn an_authorization_code_token_acts_for_its_user_on_every_protocol() {
    use support::authorization::{browser, enrol, register};
    let policies = format!(
        "{}@id(\"alice\") permit(principal == User::\"alice\", action, resource);\n",
        obliging("")
    );
    let extra = Extra {
        config: "[identity.authorization]\nagent = \"dev-bot\"\ndynamic_registration = true\nregistration_redirect_hosts = [\"127.0.0.1\"]\n",
        ..Extra::default()
    };
    let Some(rig) = rig_setup(&policies, &extra).await else {
        return;
    };
    let http = browser(&rig.server);
    let secret = enrol(&rig.server, &http, "alice", None).await;
    let client_id = register(&rig.server, &http, "parity host").await;
    let tokens: Vec<String> = code_flow_tokens(&rig, &http, &secret, &mut 0, &client_id)
        .await
        .iter()
        .map(|t| t["access_token"].as_str().unwrap().to_string())
        .collect();
    for (i, (protocol, _)) in ROUTES.into_iter().enumerate() {
        let cell = format!("{protocol:?} / authorization code: bearer for the user");
        // No client certificate: the token alone authenticates.
        let served = call_with_token(&rig, &http, protocol, &tokens[i], "via-code-flow").await;
        assert_eq!(served.code, None, "{cell}: {served:?}");
        let rec = tokio::task::block_in_place(|| record(&rig.server, &served.request_id));
        assert_eq!(rec["outcome"], "allow", "{cell}: {rec}");
        assert_eq!(rec["principal"], "dev-bot", "{cell}: {rec}");
        assert!(
            rec["credential"]
                .as_str()
                .unwrap()
                .ends_with("cnf=none on behalf of alice"),
            "{cell}: {rec}"
        );
        // Another route's token: refused before anything is decided.
        let cell = format!("{protocol:?} / authorization code: another route's token");
        let other = &tokens[(i + 1) % 3];
        let refused = call_with_token(&rig, &http, protocol, other, "wrong-route").await;
        refused_as(&rig, &refused, "invalid_token", &cell);
    }
    assert!(rig.ran("via-code-flow") && !rig.ran("wrong-route"));
    // The bearer token never reaches the MCP server.
    let seen = std::fs::read_to_string(rig.mcp_auth.as_ref().unwrap()).unwrap();
    assert!(!seen.contains(&tokens[1]), "{seen}");
}

/// Unbound tokens forbidden per route by `context.auth.binding`: the same
/// agent and user, with a bearer token of the authorization-code flow, are
/// refused by the forbid on every protocol (the MCP tool never runs), while
/// the agent's own certificate (`binding == "mtls"`) is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_forbid_by_binding_refuses_bearer_tokens_on_every_protocol() {
    use support::authorization::{browser, enrol, register};
    let policies = format!(
        "{}@id(\"alice\") permit(principal == User::\"alice\", action, resource);\n\
         @id(\"no-bearer\") forbid(principal, action in [Action::\"POST\", Action::\"call_tool\", Action::\"complete\"], resource)\n\
         when {{ context.auth.binding == \"bearer\" }};\n",
        obliging("")
    );
    let extra = Extra {
        config: "[identity.authorization]\nagent = \"dev-bot\"\ndynamic_registration = true\nregistration_redirect_hosts = [\"127.0.0.1\"]\n",
        ..Extra::default()
    };
    let Some(rig) = rig_setup(&policies, &extra).await else {
        return;
    };
    let http = browser(&rig.server);
    let secret = enrol(&rig.server, &http, "alice", None).await;
    let client_id = register(&rig.server, &http, "binding host").await;
    let tokens = code_flow_tokens(&rig, &http, &secret, &mut 0, &client_id).await;
    for ((protocol, _), token) in ROUTES.into_iter().zip(&tokens) {
        let token = token["access_token"].as_str().unwrap();
        let cell = format!("{protocol:?} / forbid by binding: bearer refused");
        let refused = call_with_token(&rig, &http, protocol, token, "bearer-call").await;
        let rec = refused_as(&rig, &refused, "forbidden", &cell);
        assert_eq!(rec["policies"], json!(["no-bearer"]), "{cell}: {rec}");
        let cell = format!("{protocol:?} / forbid by binding: bound credential served");
        let served = rig.call(protocol, "certificate-call").await;
        assert_eq!(served.code, None, "{cell}: {served:?}");
    }
    assert!(!rig.ran("bearer-call") && rig.ran("certificate-call"));
}

/// A client that named itself by a Client ID Metadata Document (its id the
/// document's URL), revoked by an admin with `portcullis admin oauth-client
/// revoke URL`: its tokens, one per protocol's route, each served before,
/// are refused on every protocol at once (the MCP tool does not run); it
/// can neither refresh nor authorize again; the revocation is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_metadata_document_clients_tokens_stop_on_every_protocol() {
    use support::authorization::{CALLBACK, browser, enrol, next_code};
    use support::client_metadata::DocServer;
    let policies = format!(
        "{}@id(\"alice\") permit(principal == User::\"alice\", action, resource);\n",
        obliging("")
    );
    support::install_crypto();
    let ca = portcullis_identity::CertificateAuthority::generate("portcullis.local").unwrap();
    let docs = DocServer::start(&ca, CALLBACK).await;
    let extra = Extra {
        config: "[identity.authorization]\nagent = \"dev-bot\"\nclient_metadata_hosts = [\"127.0.0.1\"]\nclient_metadata_private_addresses = true\n",
        ca: Some(&ca),
        ..Extra::default()
    };
    let Some(rig) = rig_setup(&policies, &extra).await else {
        return;
    };
    let http = browser(&rig.server);
    let secret = enrol(&rig.server, &http, "alice", None).await;
    let client_id = docs.url("/client.json");
    let mut last = 0;
    let tokens = code_flow_tokens(&rig, &http, &secret, &mut last, &client_id).await;
    let access = |i: usize| tokens[i]["access_token"].as_str().unwrap();
    for (i, (protocol, _)) in ROUTES.into_iter().enumerate() {
        let served = call_with_token(&rig, &http, protocol, access(i), "before-revoke").await;
        assert_eq!(
            served.code, None,
            "{protocol:?} before the revocation: {served:?}"
        );
    }

    // The operator revokes it by its URL, with their TOTP code.
    let code = tokio::task::block_in_place(|| next_code(&secret, &mut last));
    let out = tokio::task::block_in_place(|| {
        rig.server.cli(&[
            "admin",
            "oauth-client",
            "revoke",
            &client_id,
            "--user",
            "alice",
            "--totp",
            &code,
        ])
    });
    assert!(
        out.status.success(),
        "admin oauth-client revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, (protocol, _)) in ROUTES.into_iter().enumerate() {
        let cell = format!("{protocol:?} / revoked metadata-document client: tokens refused");
        let refused = call_with_token(&rig, &http, protocol, access(i), "after-revoke").await;
        refused_as(&rig, &refused, "invalid_token", &cell);
    }
    assert!(rig.ran("before-revoke") && !rig.ran("after-revoke"));
    // Nor a refresh, nor a new authorization.
    let refresh = http
        .post(rig.server.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", "refresh_token"),
                (
                    "refresh_token",
                    tokens[0]["refresh_token"].as_str().unwrap(),
                ),
                ("client_id", &client_id),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let status = refresh.status().as_u16();
    let body: Value = refresh.json().await.unwrap();
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("invalid_client")),
        "{body}"
    );
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", CALLBACK),
        ("code_challenge", &"a".repeat(43)),
        ("code_challenge_method", "S256"),
        ("resource", &rig.server.url("/api")),
    ])
    .unwrap();
    let again = http
        .get(rig.server.url(&format!("/oauth2/authorize?{query}")))
        .send()
        .await
        .unwrap();
    let status = again.status().as_u16();
    let body: Value = again.json().await.unwrap();
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("invalid_client")),
        "{body}"
    );
    // Listed as revoked, by its URL; the revocation recorded with the admin.
    let listed = tokio::task::block_in_place(|| {
        rig.server
            .cli(&["admin", "oauth-client", "list", "-o", "json"])
    });
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == client_id.as_str())
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(!row["revoked_at"].is_null(), "{row}");
    let records = tokio::task::block_in_place(|| rig.server.audit(500));
    assert!(
        records.iter().any(|r| r["action"] == "oauth_client.revoke"
            && r["resource"] == client_id.as_str()
            && r["principal"] == "alice"),
        "{records:?}"
    );
}

/// The protocols with their routes' prefixes, in the rig's order.
const ROUTES: [(Protocol, &str); 3] = [
    (Protocol::Http, "/api"),
    (Protocol::Mcp, "/mcp/tools"),
    (Protocol::Llm, "/llm"),
];

/// One token response of the authorization-code flow per route of
/// [`ROUTES`] (in that order), for `alice` (enrolled with `secret`; `last`
/// her last TOTP step) through `client_id`.
async fn code_flow_tokens(
    rig: &Rig,
    http: &reqwest::Client,
    secret: &str,
    last: &mut u64,
    client_id: &str,
) -> Vec<Value> {
    let mut tokens = Vec::new();
    for (_, prefix) in ROUTES {
        let code = tokio::task::block_in_place(|| support::authorization::next_code(secret, last));
        let token = support::authorization::token_for(
            &rig.server,
            http,
            client_id,
            &rig.server.url(prefix),
            "alice",
            &code,
        )
        .await;
        assert_eq!(token["token_type"], "Bearer", "{token}");
        tokens.push(token);
    }
    tokens
}

/// Asserts `outcome` is the refusal `code`, recorded `deny`; the record.
fn refused_as(rig: &Rig, outcome: &Outcome, code: &str, cell: &str) -> Value {
    assert_eq!(outcome.code.as_deref(), Some(code), "{cell}: {outcome:?}");
    let rec = tokio::task::block_in_place(|| record(&rig.server, &outcome.request_id));
    assert_eq!(rec["outcome"], "deny", "{cell}: {rec}");
    rec
}

/// `protocol`'s call with `token` alone, no client certificate (on MCP in
/// a session of its own).
async fn call_with_token(
    rig: &Rig,
    http: &reqwest::Client,
    protocol: Protocol,
    token: &str,
    text: &str,
) -> Outcome {
    match protocol {
        Protocol::Mcp => mcp_call_with(rig, http, token, text).await,
        _ => rig.call_by(http, protocol, text, Some(token)).await,
    }
}

/// An MCP `tools/call` in a session of its own opened with `token` (no
/// client certificate), the way an MCP host holding only the token calls.
async fn mcp_call_with(rig: &Rig, http: &reqwest::Client, token: &str, text: &str) -> Outcome {
    let post = |body: Value, session: Option<&str>| {
        let mut r = http
            .post(rig.server.url("/mcp/tools"))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body);
        if let Some(s) = session {
            r = r.header("mcp-session-id", s);
        }
        r.send()
    };
    let init = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "code-flow", "version": "1"}}}),
        None,
    )
    .await
    .unwrap();
    if init.status() != 200 {
        return outcome_of(init).await;
    }
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = init.bytes().await;
    let r = post(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        Some(&session),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    let r = post(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        Some(&session),
    )
    .await
    .unwrap();
    let _ = r.bytes().await;
    let r = post(
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "save_note", "arguments": {"text": text}}}),
        Some(&session),
    )
    .await
    .unwrap();
    let request_id = support::request_id(&r);
    let body: Value = r.json().await.unwrap();
    Outcome {
        code: body
            .get("error")
            .and_then(|e| e["data"]["code"].as_str())
            .map(str::to_string),
        ticket: None,
        request_id,
    }
}
