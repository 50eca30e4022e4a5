//! Fault runs (issue 22, item 6; results in docs/robustness.md): the real
//! binary with an HTTP, an MCP and an LLM route, each upstream behind a
//! fault proxy in this test, and the faults an operator meets:
//! - upstreams that reset the connection, or never answer (all three
//!   protocols), and one that breaks off an answer mid-stream (an LLM event
//!   stream and a chunked HTTP answer);
//! - a database another process holds locked (SQLite `BEGIN EXCLUSIVE`;
//!   PostgreSQL `LOCK TABLE` and `pg_terminate_backend`), including admin
//!   reads of a locked table, bounded by `[store] lock_timeout_ms`;
//! - a full disk (the state directory on a small tmpfs).
//!
//! Each must fail closed with the documented code (docs/errors.md), never
//! answer 200 for a call whose record must be durable before it is
//! forwarded without that record, never let such a refused call reach its
//! upstream, and recover without a restart once the fault is gone. Every
//! call answered 200 must be in the log afterwards, and the log verifies.
//!
//! Skips (visibly) without python3 and `mcp` (the MCP and LLM upstreams),
//! without PostgreSQL (its test), and where tmpfs cannot be mounted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::parity_rig::{self, McpAnswers};
use support::{Killed, Server, request_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a fault may take to show, or a recovery to happen, before the
/// test fails (generous: debug builds on a shared 2-core machine).
const BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The fault proxy: plain TCP between the gateway and one upstream.

/// What the proxy does with a connection's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Relays both ways.
    Pass,
    /// Reads the request, then resets the connection (RST).
    Reset,
    /// Reads the request and never answers (until the mode changes).
    Hang,
    /// Relays the answer until its first event's JSON has begun (`data:
    /// {` and a few bytes more), then resets the connection: an event
    /// stream cut in the middle of an event.
    CutMidEvent,
    /// Relays the answer's head and the first bytes of its body, then sends
    /// nothing more, the connection left open (until the gateway closes it
    /// or the mode changes): an upstream that stalls mid-body.
    StallMidBody,
}

/// A TCP proxy in front of an upstream that injects [`Mode`] faults. Every
/// mode change (and [`FaultProxy::cut`]) resets the connections already
/// open, so the gateway's pooled connections meet the fault too. It keeps
/// every byte the gateway sent, so a test sees whether a call got through.
struct FaultProxy {
    addr: SocketAddr,
    state: watch::Sender<(Mode, u64)>,
    seen: Arc<Mutex<Vec<u8>>>,
    /// Connections being relayed now.
    open: Arc<AtomicUsize>,
}

/// Counts a relayed connection while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultProxy {
    async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, rx) = watch::channel((Mode::Pass, 0u64));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let guard = Open(counted.clone());
                let (rx, kept) = (rx.clone(), kept.clone());
                tokio::spawn(async move {
                    relay(client, target, rx, kept).await;
                    drop(guard);
                });
            }
        });
        FaultProxy {
            addr,
            state,
            seen,
            open,
        }
    }

    /// Waits (bounded) until the connections a mode change reset are gone,
    /// so the gateway's next request opens a connection that meets the new
    /// mode rather than racing the reset of a pooled one.
    async fn settled(&self) {
        let deadline = Instant::now() + BOUND;
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "the proxy's connections never closed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn set(&self, mode: Mode) {
        self.state.send_modify(|(m, generation)| {
            *m = mode;
            *generation += 1;
        });
    }

    /// Resets every open connection (an answer under way is broken off).
    fn cut(&self) {
        self.state.send_modify(|(_, generation)| *generation += 1);
    }

    /// Whether the gateway sent `needle` to this upstream.
    fn saw(&self, needle: &str) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<(Mode, u64)>,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    let (mode, generation) = *state.borrow_and_update();
    let mut buf = vec![0u8; 16 * 1024];
    // The request's first bytes are read in every mode: the fault hits a
    // request the gateway really sent.
    let n = match client.read(&mut buf).await {
        Ok(n) if n > 0 => n,
        _ => return,
    };
    seen.lock().unwrap().extend_from_slice(&buf[..n]);
    match mode {
        Mode::Reset => return reset(client),
        Mode::Hang => {
            let _ = state.changed().await;
            return reset(client);
        }
        Mode::Pass | Mode::CutMidEvent | Mode::StallMidBody => {}
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return reset(client);
    };
    if upstream.write_all(&buf[..n]).await.is_err() {
        return;
    }
    let mut back = vec![0u8; 16 * 1024];
    // The answer so far, for the modes that break it off part-way.
    let mut answer: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            r = client.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    if upstream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            r = upstream.read(&mut back) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let sent = answer.len();
                    answer.extend_from_slice(&back[..n]);
                    let cut_at = match mode {
                        Mode::CutMidEvent => find(&answer, b"data: {").map(|i| i + 12),
                        Mode::StallMidBody => find(&answer, b"\r\n\r\n").and_then(|head| {
                            // The head and a first piece of the body.
                            (answer.len() > head + 8).then_some(head + 8)
                        }),
                        _ => None,
                    };
                    let Some(cut_at) = cut_at.filter(|&at| at <= answer.len()) else {
                        if client.write_all(&back[..n]).await.is_err() {
                            return;
                        }
                        continue;
                    };
                    if client.write_all(&answer[sent.min(cut_at)..cut_at]).await.is_err() {
                        return;
                    }
                    let _ = client.flush().await;
                    if mode == Mode::CutMidEvent {
                        return reset(client);
                    }
                    // Stalled: nothing more goes to the gateway; the
                    // connection stays until the gateway lets it go.
                    drop(upstream);
                    loop {
                        tokio::select! {
                            r = client.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) {
                                return;
                            },
                            r = state.changed() => {
                                if r.is_err() || state.borrow().1 != generation {
                                    return reset(client);
                                }
                            }
                        }
                    }
                }
            },
            r = state.changed() => {
                if r.is_err() || state.borrow().1 != generation {
                    return reset(client);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The rig: one gateway, three routes, three proxied upstreams.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// `GET` on the HTTP route (a read: recorded after the answer).
    HttpGet,
    /// `POST` on the HTTP route (durable before it is forwarded).
    HttpPost,
    /// MCP `tools/call` of `save_note` (durable before it is forwarded).
    McpTool,
    /// An LLM chat completion (durable before it is forwarded).
    Llm,
}

const CALLS: [Call; 4] = [Call::HttpGet, Call::HttpPost, Call::McpTool, Call::Llm];
/// The calls whose record must be durable before the upstream sees them.
const DURABLE: [Call; 3] = [Call::HttpPost, Call::McpTool, Call::Llm];

/// What came back for one call.
#[derive(Debug)]
struct Outcome {
    call: Call,
    marker: String,
    status: u16,
    /// The error code: the JSON body's `error.code`, or on MCP the
    /// JSON-RPC error's `error.data.code`; empty when served.
    code: String,
    request_id: String,
}

impl Outcome {
    fn served(&self) -> bool {
        self.status == 200 && self.code.is_empty()
    }

    /// Refused because its record could not be made durable: 503
    /// `audit_unavailable`, or on MCP, when the intent of the message
    /// itself failed to be written, that message's JSON-RPC error (in 200)
    /// with `error.data.code` `audit_unavailable` (the pipeline answers 503
    /// once the audit log is known to be down).
    fn refused_unrecorded(&self) -> bool {
        self.code == "audit_unavailable"
            && (self.status == 503 || (self.call == Call::McpTool && self.status == 200))
    }
}

static MARKERS: AtomicU64 = AtomicU64::new(0);

fn marker() -> String {
    format!(
        "fault{}x{}",
        std::process::id(),
        MARKERS.fetch_add(1, Ordering::Relaxed)
    )
}

struct Rig {
    server: Server,
    agent: reqwest::Client,
    session: String,
    http: FaultProxy,
    mcp: FaultProxy,
    llm: FaultProxy,
    notes: tempfile::NamedTempFile,
    /// The agent's certificate and key (for raw TLS clients).
    cert: PathBuf,
    key: PathBuf,
    /// Every call made, and what came back.
    log: Mutex<Vec<(Call, u16, String, String)>>,
    _upstreams: (Killed, Killed, support::StreamGate),
}

impl Rig {
    /// The gateway on `dir` (its state in `dir/state`, which may be a
    /// mount) with `extra` config and `env`; `None` (and `SKIPPED:`)
    /// without python3 and `mcp`.
    async fn start(dir: tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> Option<Rig> {
        Rig::start_with(dir, extra, env, McpAnswers::Json).await
    }

    /// [`Rig::start`] with the MCP server answering as `answers` says.
    async fn start_with(
        dir: tempfile::TempDir,
        extra: &str,
        env: &[(&str, &str)],
        answers: McpAnswers,
    ) -> Option<Rig> {
        support::install_crypto();
        if !tokio::task::block_in_place(parity_rig::python_with_mcp) {
            return None;
        }
        let (mcp_proc, mcp_port, notes) =
            tokio::task::block_in_place(|| parity_rig::start_mcp(answers));
        let (llm_proc, llm_port) = tokio::task::block_in_place(parity_rig::start_llm);
        let (http_upstream, gate) = support::start_upstream().await;
        let http = FaultProxy::start(http_upstream).await;
        let mcp = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], mcp_port))).await;
        let llm = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], llm_port))).await;
        parity_rig::write_policies(&dir.path().join("policies"), parity_rig::DEV_POLICIES);
        let routes = format!(
            "[policy]\ndir = \"policies\"\n{}\
             [[routes]]\nname = \"tools\"\nkind = \"mcp\"\npath_prefix = \"/mcp/tools\"\nupstream = \"http://{}/mcp\"\nclassification = \"internal\"\n\
             [[routes]]\nname = \"llm\"\nkind = \"llm\"\npath_prefix = \"/llm\"\nupstream = \"http://{}\"\nclassification = \"internal\"\napi_key_env = \"FAULT_LLM_KEY\"\n\
             [[routes.models]]\nname = \"gpt-test\"\nstatus = \"approved\"\n\
             [analytics]\nenabled = false\n{extra}\n",
            support::route("api", "/api", &format!("http://{}", http.addr), "internal"),
            mcp.addr,
            llm.addr,
        );
        // The upstream and stall timeouts short enough for the test, long
        // enough for a loaded machine's healthy answers.
        let config = support::config(
            dir.path(),
            &routes,
            "upstream_timeout_ms = 3000\nstall_timeout_ms = 3000",
        );
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("FAULT_LLM_KEY", "sk-fault"));
        let server =
            tokio::task::block_in_place(|| Server::start_with_env(dir, Some(&config), &env));
        let (cert, key) =
            tokio::task::block_in_place(|| server.create_agent("fault-bot", &["dev"]));
        let agent = support::client(&server.ca_pem(), Some((&cert, &key)));
        let session = parity_rig::mcp_session(&agent, &server, "/mcp/tools").await;
        Some(Rig {
            server,
            agent,
            session,
            http,
            mcp,
            llm,
            notes,
            cert,
            key,
            log: Mutex::new(Vec::new()),
            _upstreams: (mcp_proc, llm_proc, gate),
        })
    }

    fn proxies(&self) -> [&FaultProxy; 3] {
        [&self.http, &self.mcp, &self.llm]
    }

    /// Sets every upstream's mode and waits until the connections open
    /// before are reset and gone.
    async fn set_all(&self, mode: Mode) {
        for p in self.proxies() {
            p.set(mode);
        }
        for p in self.proxies() {
            p.settled().await;
        }
    }

    fn request(&self, call: Call, marker: &str) -> reqwest::RequestBuilder {
        let s = &self.server;
        match call {
            Call::HttpGet => self.agent.get(s.url(&format!("/api/items/{marker}"))),
            Call::HttpPost => self
                .agent
                .post(s.url(&format!("/api/items/{marker}")))
                .body("x"),
            Call::McpTool => parity_rig::mcp_post(
                &self.agent,
                s,
                "/mcp/tools",
                Some(&self.session),
                &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                    "params": {"name": "save_note", "arguments": {"text": marker}}}),
            ),
            Call::Llm => self
                .agent
                .post(s.url("/llm/v1/chat/completions"))
                .json(&json!({
                    "model": "gpt-test",
                    "messages": [{"role": "user", "content": marker}],
                })),
        }
    }

    /// Makes `call` and reads its whole answer.
    async fn call(&self, call: Call) -> Outcome {
        let marker = marker();
        let response = tokio::time::timeout(BOUND, self.request(call, &marker).send())
            .await
            .unwrap_or_else(|_| panic!("{call:?} got no answer within {BOUND:?}"))
            .unwrap_or_else(|e| panic!("{call:?}: {e}"));
        let status = response.status().as_u16();
        let request_id = request_id(&response);
        let text = response.text().await.unwrap_or_default();
        let code = match serde_json::from_str::<Value>(&text) {
            Ok(v) if v["error"]["code"].is_string() => v["error"]["code"].as_str().unwrap().into(),
            _ if call == Call::McpTool => parity_rig::mcp_messages(&text)
                .iter()
                .find_map(|m| m["error"]["data"]["code"].as_str().map(String::from))
                .unwrap_or_default(),
            _ => String::new(),
        };
        self.log
            .lock()
            .unwrap()
            .push((call, status, code.clone(), request_id.clone()));
        Outcome {
            call,
            marker,
            status,
            code,
            request_id,
        }
    }

    /// Whether the upstream of `o`'s call received it.
    fn upstream_saw(&self, o: &Outcome) -> bool {
        match o.call {
            Call::HttpGet | Call::HttpPost => self.http.saw(&o.marker),
            Call::McpTool => std::fs::read_to_string(self.notes.path())
                .unwrap_or_default()
                .contains(&o.marker),
            Call::Llm => self.llm.saw(&o.marker),
        }
    }

    /// Calls every protocol until each is served (bounded); panics naming
    /// the last refusal otherwise. Answers how long recovery took.
    async fn until_all_served(&self, what: &str) -> Duration {
        let started = Instant::now();
        for call in CALLS {
            loop {
                let o = self.call(call).await;
                if o.served() {
                    break;
                }
                if started.elapsed() > BOUND {
                    let log = self.server.stderr.lock().unwrap().clone();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    panic!(
                        "{what}: {call:?} not served again within {BOUND:?}: {o:?}\nserver log, newest first:\n{}",
                        tail.join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        started.elapsed()
    }

    /// Makes every durable call while `what` holds (since `since`): each
    /// must be refused 503 `audit_unavailable` and never reach its
    /// upstream. Answers their request ids.
    async fn durable_calls_refused(&self, what: &str, since: Instant) -> Vec<String> {
        let mut refused = Vec::new();
        for call in DURABLE {
            let o = self.call(call).await;
            eprintln!(
                "faults: {what}: {call:?} -> {} {} after {:?}",
                o.status,
                o.code,
                since.elapsed()
            );
            assert!(o.refused_unrecorded(), "{what}: {o:?}");
            assert!(
                !self.upstream_saw(&o),
                "{what}: a refused call reached its upstream: {o:?}"
            );
            refused.push(o.request_id);
        }
        refused
    }

    /// Makes `call` every 250 ms until `since` is 4 s old: none may be
    /// served (the fault is held for seconds, not only past the limit).
    async fn nothing_served_for_4s(&self, call: Call, what: &str, since: Instant) {
        while since.elapsed() < Duration::from_secs(4) {
            let o = self.call(call).await;
            assert!(!o.served(), "served while {what}: {o:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The request ids of every call answered 200 and served.
    fn served_ids(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, status, code, _)| *status == 200 && code.is_empty())
            .map(|(_, _, _, id)| id.clone())
            .collect()
    }
}

/// Every request id of the log in `store`.
async fn recorded_ids(store: &portcullis_store::Store) -> HashSet<String> {
    let size = store.audit_size().await.unwrap();
    let mut ids = HashSet::new();
    let mut from = 0;
    while from < size {
        let leaves = store.audit_leaves(from, 1000).await.unwrap();
        let Some((last, _)) = leaves.last() else {
            break;
        };
        from = last + 1;
        for (_, leaf) in &leaves {
            let v: Value = serde_json::from_str(leaf).unwrap();
            if let Some(id) = v["request_id"].as_str() {
                ids.insert(id.to_string());
            }
        }
    }
    ids
}

/// Stops the SQLite rig's server (SIGTERM: the writer drains) and checks
/// that every served call is in its log and that the log verifies.
async fn assert_sqlite_log_complete(rig: &mut Rig) {
    let served = rig.served_ids();
    let status = tokio::task::block_in_place(|| rig.server.terminate());
    assert!(status.success(), "exit after SIGTERM: {status}");
    let store = portcullis_store::Store::open_sqlite_read_only(
        &rig.server.state_dir().join("portcullis.db"),
    )
    .await
    .unwrap();
    let recorded = recorded_ids(&store).await;
    store.close().await;
    let missing: Vec<&String> = served.iter().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} served calls are not in the log: {missing:?}",
        missing.len(),
        served.len()
    );
    let out = tokio::task::block_in_place(|| rig.server.cli(&["audit", "verify"]));
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Upstream faults.

/// Upstreams that reset the connection get 502 `upstream_unavailable`, ones
/// that never answer 504 `upstream_timeout`, on all three protocols, each
/// recorded with its code; an answer broken off mid-stream (LLM event
/// stream, chunked HTTP) ends without its end marker for the client and is
/// recorded `upstream_stream_error`. Healthy again, every protocol is
/// served without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_resets_timeouts_and_cut_streams_fail_closed_and_recover() {
    let Some(mut rig) = Rig::start(tempfile::tempdir().unwrap(), "", &[]).await else {
        return;
    };
    rig.until_all_served("baseline").await;

    for (mode, status, code) in [
        (Mode::Reset, 502, "upstream_unavailable"),
        (Mode::Hang, 504, "upstream_timeout"),
    ] {
        rig.set_all(mode).await;
        for call in CALLS {
            let o = rig.call(call).await;
            eprintln!(
                "faults: upstream {mode:?}: {call:?} -> {} {}",
                o.status, o.code
            );
            assert_eq!(o.code, code, "{mode:?} {o:?}");
            // MCP answers an upstream fault as an HTTP error too (not as a
            // JSON-RPC error in a 200): the session's transport failed.
            assert_eq!(o.status, status, "{mode:?} {o:?}");
            assert!(rig.upstream_saw(&o) || call == Call::McpTool, "{o:?}");
            let record = tokio::task::block_in_place(|| rig.server.audit_record(&o.request_id));
            assert_eq!(record["error_code"], code, "{record}");
            assert_eq!(record["status"], status, "{record}");
        }
        rig.set_all(Mode::Pass).await;
        let took = rig.until_all_served(&format!("after {mode:?}")).await;
        eprintln!("faults: upstream {mode:?} gone -> all protocols served after {took:?}");
    }

    // An LLM event stream broken off after its first event.
    let marker = marker();
    let mut response = rig
        .agent
        .post(rig.server.url("/llm/v1/chat/completions"))
        .json(&json!({"model": "gpt-test", "stream": true,
            "messages": [{"role": "user", "content": format!("slow {marker}")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let llm_id = request_id(&response);
    let first = tokio::time::timeout(BOUND, response.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    rig.llm.cut();
    let mut rest = Vec::new();
    let ended = loop {
        match tokio::time::timeout(BOUND, response.chunk()).await {
            Ok(Ok(Some(chunk))) => rest.extend_from_slice(&chunk),
            Ok(Ok(None)) => break "ended",
            Ok(Err(_)) => break "broken",
            Err(_) => panic!("the cut stream neither ended nor broke within {BOUND:?}"),
        }
    };
    let rest = String::from_utf8_lossy(&rest);
    eprintln!("faults: LLM stream cut -> client sees it {ended}; rest: {rest:?}");
    assert!(
        !rest.contains("[DONE]"),
        "a cut stream looked complete: {rest}"
    );
    let record = tokio::task::block_in_place(|| rig.server.audit_record(&llm_id));
    assert_eq!(record["error_code"], "upstream_stream_error", "{record}");

    // A chunked HTTP answer broken off: `/drip` sends a line every 100 ms.
    let mut response = rig
        .agent
        .get(rig.server.url("/api/drip"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let http_id = request_id(&response);
    let _ = tokio::time::timeout(BOUND, response.chunk()).await.unwrap();
    rig.http.cut();
    let broken = loop {
        match tokio::time::timeout(BOUND, response.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => break false,
            Ok(Err(_)) => break true,
            Err(_) => panic!("the cut HTTP answer neither ended nor broke"),
        }
    };
    assert!(broken, "a cut chunked answer ended as if complete");
    let record = tokio::task::block_in_place(|| rig.server.audit_record(&http_id));
    assert_eq!(record["error_code"], "upstream_stream_error", "{record}");

    let took = rig.until_all_served("after the cut streams").await;
    eprintln!("faults: after the cut streams -> all protocols served after {took:?}");
    assert_sqlite_log_complete(&mut rig).await;
}

// ---------------------------------------------------------------------------
// Answers broken off mid-event, stalled mid-body, or not read.

/// Reads `response` to its end: `Ok(body)` when it ended as complete,
/// `Err(body so far)` when it broke off.
async fn read_to_end(mut response: reqwest::Response) -> Result<String, String> {
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout(BOUND, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            Ok(Ok(None)) => return Ok(String::from_utf8_lossy(&body).into_owned()),
            Ok(Err(_)) => return Err(String::from_utf8_lossy(&body).into_owned()),
            Err(_) => panic!("the answer neither ended nor broke off within {BOUND:?}"),
        }
    }
}

/// Waits (bounded) until `ok()` holds, naming `what` otherwise.
async fn eventually(what: &str, mut ok: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + BOUND;
    loop {
        match ok() {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => {
                panic!("{what} not within {BOUND:?}: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// With the MCP server answering `tools/call` with an event stream:
/// 1. the stream cut in the middle of its event: the client gets a JSON-RPC
///    error with `error.data.code` `upstream_stream_error` and a cleanly
///    ended stream, the record says `upstream_stream_error`;
/// 2. every upstream stalling mid-body (after the head and a few bytes):
///    after `stall_timeout_ms` the chunked HTTP answer and the streamed LLM
///    completion break off, the MCP stream ends with a JSON-RPC error
///    `upstream_timeout`, each record says `upstream_timeout`; the gateway
///    lets go of every upstream connection and its descriptors are back
///    where they were (no task or connection left behind).
///
/// Healthy again, every protocol is served without a restart, and every
/// served call is in the log, which verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_mid_event_or_stalled_mid_body_fail_closed_without_leaks() {
    let Some(mut rig) =
        Rig::start_with(tempfile::tempdir().unwrap(), "", &[], McpAnswers::Sse).await
    else {
        return;
    };
    rig.until_all_served("baseline").await;
    let pid = rig.server.child.as_ref().unwrap().id();

    // 1. The MCP answer cut in the middle of its event.
    rig.mcp.set(Mode::CutMidEvent);
    rig.mcp.settled().await;
    let o = rig.call(Call::McpTool).await;
    eprintln!(
        "faults: MCP event stream cut mid-event -> {} {}",
        o.status, o.code
    );
    assert_eq!(
        (o.status, o.code.as_str()),
        (200, "upstream_stream_error"),
        "{o:?}"
    );
    let record = tokio::task::block_in_place(|| rig.server.audit_record(&o.request_id));
    assert_eq!(record["error_code"], "upstream_stream_error", "{record}");
    rig.mcp.set(Mode::Pass);
    rig.mcp.settled().await;
    let took = rig.until_all_served("after the cut event").await;
    eprintln!("faults: after the cut event -> all protocols served after {took:?}");

    // 2. Every upstream stalls mid-body.
    let fds_before = support::open_fds(pid);
    rig.set_all(Mode::StallMidBody).await;
    let started = Instant::now();
    let response = rig
        .agent
        .get(rig.server.url("/api/drip"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let http_id = request_id(&response);
    let http = read_to_end(response).await;
    let http_took = started.elapsed();
    assert!(
        http.is_err(),
        "a stalled answer ended as complete: {http:?}"
    );
    let started = Instant::now();
    let response = rig
        .agent
        .post(rig.server.url("/llm/v1/chat/completions"))
        .json(&json!({"model": "gpt-test", "stream": true,
            "messages": [{"role": "user", "content": format!("slow {}", marker())}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let llm_id = request_id(&response);
    let llm = read_to_end(response).await;
    let llm_took = started.elapsed();
    let (Ok(body) | Err(body)) = &llm;
    assert!(
        !body.contains("[DONE]"),
        "a stalled stream looked complete: {body}"
    );
    let started = Instant::now();
    let mcp = rig.call(Call::McpTool).await;
    let mcp_took = started.elapsed();
    eprintln!(
        "faults: upstreams stalled mid-body -> HTTP broken off after {http_took:?}, LLM stream {} after {llm_took:?}, MCP {} {} after {mcp_took:?}",
        if llm.is_err() { "broken off" } else { "ended" },
        mcp.status,
        mcp.code
    );
    assert_eq!(
        (mcp.status, mcp.code.as_str()),
        (200, "upstream_timeout"),
        "{mcp:?}"
    );
    for took in [http_took, llm_took, mcp_took] {
        assert!(
            took >= Duration::from_millis(2900),
            "cut before the stall timeout: {took:?}"
        );
    }
    for id in [&http_id, &llm_id, &mcp.request_id] {
        let record = tokio::task::block_in_place(|| rig.server.audit_record(id));
        assert_eq!(record["error_code"], "upstream_timeout", "{record}");
    }
    // Nothing left behind: the gateway closed every stalled upstream
    // connection (the proxies hold theirs until the gateway goes), and
    // its descriptors are back where they were.
    eventually("the stalled connections let go", || {
        let open: Vec<usize> = rig
            .proxies()
            .iter()
            .map(|p| p.open.load(Ordering::SeqCst))
            .collect();
        let fds = support::open_fds(pid);
        if open.iter().all(|&n| n == 0) && fds <= fds_before + 2 {
            Ok(())
        } else {
            Err(format!(
                "upstream connections {open:?}, descriptors {fds} (before: {fds_before})"
            ))
        }
    })
    .await;
    eprintln!(
        "faults: after the stalls -> upstream connections 0, descriptors {} (before: {fds_before})",
        support::open_fds(pid)
    );
    rig.set_all(Mode::Pass).await;
    let took = rig.until_all_served("after the stalls").await;
    eprintln!("faults: after the stalls -> all protocols served after {took:?}");
    assert_sqlite_log_complete(&mut rig).await;
}

/// A client that asks for a large answer (256 MiB) and stops reading it
/// after 256 KiB: the gateway reads no further ahead of the client than its
/// buffers (its resident memory grows by far less than the answer), closes
/// the connection once the client has taken nothing for `stall_timeout_ms`
/// (`portcullis_connections_closed_total{reason="send_timeout"}`), lets go
/// of the upstream connection, and records the call `client_closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_with_bounded_memory() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(mut rig) = Rig::start(tempfile::tempdir().unwrap(), "", &[]).await else {
        return;
    };
    rig.until_all_served("baseline").await;
    let pid = rig.server.child.as_ref().unwrap().id();
    let rss_before = support::rss_kib(pid);

    let config = support::tls_config(&rig.server.ca_pem(), Some((&rig.cert, &rig.key)));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(rig.server.gateway).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /api/big HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < 256 * 1024 {
        let n = tokio::time::timeout(BOUND, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the answer ended early");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got[..find(&got, b"\r\n\r\n").unwrap()]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let request_id = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-request-id:")
                .then(|| l["x-request-id:".len()..].trim().to_string())
        })
        .unwrap();

    // The client reads nothing more.
    let stopped = Instant::now();
    let mut rss_max = 0;
    loop {
        rss_max = rss_max.max(support::rss_kib(pid));
        let metrics = rig.server.metrics().await;
        if metrics.lines().any(|l| {
            l.starts_with("portcullis_connections_closed_total{")
                && l.contains("reason=\"send_timeout\"")
                && !l.ends_with(" 0")
        }) {
            break;
        }
        assert!(
            stopped.elapsed() < BOUND,
            "the connection of a client that stopped reading was not closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed_after = stopped.elapsed();
    eprintln!(
        "faults: client stopped reading -> connection closed after {closed_after:?}; gateway RSS {rss_before} KiB before, at most {rss_max} KiB while held"
    );
    assert!(
        closed_after >= Duration::from_millis(2900),
        "closed before the stall timeout: {closed_after:?}"
    );
    // Far less than the answer: the gateway read only as far ahead as its
    // buffers (and the sockets') go.
    assert!(
        rss_max < rss_before + 48 * 1024,
        "the gateway's memory grew by {} KiB for an answer nobody read",
        rss_max.saturating_sub(rss_before)
    );
    // Reading again, the client gets what was under way, then the end:
    // never the whole answer.
    let mut total = got.len();
    loop {
        match tokio::time::timeout(BOUND, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the closed connection still delivers nothing and never ends"),
        }
    }
    assert!(
        total < support::BIG_BYTES,
        "the whole answer came through: {total}"
    );
    eventually("the upstream connection let go", || {
        match rig.http.open.load(Ordering::SeqCst) {
            0 => Ok(()),
            n => Err(format!("{n} upstream connections open")),
        }
    })
    .await;
    let record = tokio::task::block_in_place(|| rig.server.audit_record(&request_id));
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["error_code"], "client_closed", "{record}");
    let took = rig.until_all_served("after the stalled client").await;
    eprintln!("faults: after the stalled client -> all protocols served after {took:?}");
    assert_sqlite_log_complete(&mut rig).await;
}

// ---------------------------------------------------------------------------
// A stalled database.

/// Another process (python's sqlite3) takes the write lock of the state
/// database and holds it. Durable calls are refused 503
/// `audit_unavailable` and never reach their upstream; reads are served
/// until the stall outlasts `fail_closed_after_ms`, then refused as well.
/// Released, every protocol is served again without a restart, the refusals
/// are in the log, and so is every call that was served.
/// Another process (Python's `sqlite3`) holding `BEGIN EXCLUSIVE` on the
/// database at `db`, from when this returns until its stdin is closed.
fn lock_sqlite(db: &Path) -> std::process::Child {
    let mut locker = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n\
             c.execute('ROLLBACK')\n",
        )
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(locker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    locker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_locked_by_another_process_fails_closed_and_recovers() {
    let Some(mut rig) = Rig::start(tempfile::tempdir().unwrap(), "", &[]).await else {
        return;
    };
    rig.until_all_served("baseline").await;
    let db = rig.server.state_dir().join("portcullis.db");
    let mut locker = lock_sqlite(&db);
    let locked = Instant::now();

    // Durable calls: refused, and their upstream never sees them.
    let mut refused = rig.durable_calls_refused("SQLite locked", locked).await;
    // Reads: once the stall is older than the limit, refused too.
    let started = Instant::now();
    let read = loop {
        let o = rig.call(Call::HttpGet).await;
        if !o.served() || started.elapsed() > BOUND {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (read.status, read.code.as_str()),
        (503, "audit_unavailable"),
        "{read:?}"
    );
    refused.push(read.request_id);
    let (ready, body) = support::readyz(&rig.server).await;
    assert_eq!(ready, 503, "{body}");
    rig.nothing_served_for_4s(Call::HttpPost, "the database was locked", locked)
        .await;

    drop(locker.stdin.take());
    assert!(locker.wait().unwrap().success());
    let took = rig.until_all_served("after the lock").await;
    eprintln!("faults: SQLite lock released -> all protocols served after {took:?}");
    for id in &refused {
        let record = tokio::task::block_in_place(|| rig.server.audit_record(id));
        assert_eq!(record["error_code"], "audit_unavailable", "{record}");
    }
    assert_sqlite_log_complete(&mut rig).await;
}

// ---------------------------------------------------------------------------
// A full disk.

/// A tmpfs mounted at a path, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `at`; `None` (and `SKIPPED:`) when this
    /// process may not mount.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        Tmpfs::mount_as(at, size, None)
    }

    /// [`Tmpfs::mount`], its root owned by `owner` (uid, gid) when given.
    fn mount_as(at: &Path, size: &str, owner: Option<(u32, u32)>) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        // Mode 0700: `serve` refuses a state directory others may write.
        let mut options = format!("size={size},mode=0700");
        if let Some((uid, gid)) = owner {
            options.push_str(&format!(",uid={uid},gid={gid}"));
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: full-disk fault: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: full-disk fault: no `mount`: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut chunk = 1 << 20;
    let block = vec![0x5a_u8; chunk];
    while chunk >= 512 {
        if f.write_all(&block[..chunk]).is_err() {
            chunk /= 2;
        }
    }
    let _ = f.sync_all();
    path
}

/// The state directory on a 48 MiB tmpfs, filled up under load: the audit
/// writer's commits fail (SQLITE_FULL), and calls are refused 503
/// `audit_unavailable` — never served unrecorded. With room again, every
/// protocol is served without a restart and every served call is in the
/// log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_and_recovers_when_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Tmpfs::mount(&dir.path().join("state"), "48m") else {
        return;
    };
    let Some(mut rig) = Rig::start(dir, "", &[]).await else {
        return;
    };
    rig.until_all_served("baseline").await;
    // The WAL keeps the pages it has: truncated first, the next commit
    // needs new ones (otherwise the writer fills the old WAL first).
    let db = rig.server.state_dir().join("portcullis.db");
    let truncated = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=10)\n\
             print(c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone())\n",
        )
        .arg(&db)
        .output()
        .unwrap();
    eprintln!(
        "faults: WAL checkpoint (busy, log, checkpointed): {}",
        String::from_utf8_lossy(&truncated.stdout).trim()
    );
    let filler = fill(&rig.server.state_dir());
    let full = Instant::now();

    // Load until the writer meets the full disk (its WAL and database have
    // some room left inside their pages).
    let mut sent = 0;
    let first = loop {
        let o = rig.call(CALLS[sent % CALLS.len()]).await;
        sent += 1;
        if !o.served() {
            break o;
        }
        assert!(
            full.elapsed() < Duration::from_secs(120),
            "the disk was full for 2 min and {sent} calls were served"
        );
    };
    eprintln!(
        "faults: disk full -> first refusal after {sent} calls, {:?}: {first:?}",
        full.elapsed()
    );
    assert_eq!(
        (first.status, first.code.as_str()),
        (503, "audit_unavailable"),
        "{first:?}"
    );
    rig.durable_calls_refused("disk full", full).await;

    std::fs::remove_file(&filler).unwrap();
    let took = rig.until_all_served("after the disk had room").await;
    eprintln!("faults: disk has room again -> all protocols served after {took:?}");
    assert_sqlite_log_complete(&mut rig).await;
    let dir = rig.server.into_dir();
    drop(mount);
    drop(dir);
}

// ---------------------------------------------------------------------------
// PostgreSQL (cluster mode, one replica).

/// On a fresh PostgreSQL database, another session takes `LOCK TABLE … IN
/// ACCESS EXCLUSIVE MODE` and holds it for seconds:
/// - on `audit_log` alone, a durable call may still be served, its intent
///   durable in `audit_intents` (by design: the intent is its record until
///   the completed one follows); once the completed records have stalled
///   for `fail_closed_after_ms`, every call is refused 503
///   `audit_unavailable`;
/// - on `audit_log` and `audit_intents`, durable calls are refused 503
///   `audit_unavailable` and never reach their upstream.
///
/// Then `pg_terminate_backend` of every connection of the replica makes
/// calls fail closed (503) or be served with their record, never served
/// unrecorded. Each recovers without a restart, and every served or
/// refused call is in the log, which verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locked_or_its_connections_killed_fails_closed_and_recovers() {
    let Some(db) = portcullis_store::testing::TestDb::postgres().await else {
        return;
    };
    let url = db.url();
    let Some(mut rig) = Rig::start(
        tempfile::tempdir().unwrap(),
        "[audit]\nfail_closed_after_ms = 1000\n",
        &[("PORTCULLIS_STORE_URL", url.as_str())],
    )
    .await
    else {
        return;
    };
    rig.until_all_served("baseline").await;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();

    // 1a. The audit table alone locked by another session.
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let locked = Instant::now();
    let mut refused = Vec::new();
    let first = loop {
        let o = rig.call(Call::HttpPost).await;
        if !o.served() {
            break o;
        }
        assert!(
            locked.elapsed() < BOUND,
            "served for {BOUND:?} while audit_log was locked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "faults: PostgreSQL audit_log locked -> first refusal after {:?}: {} {}",
        locked.elapsed(),
        first.status,
        first.code
    );
    assert_eq!(
        (first.status, first.code.as_str()),
        (503, "audit_unavailable"),
        "{first:?}"
    );
    refused.push(first.request_id);
    lock.rollback().await.unwrap();
    let took = rig.until_all_served("after LOCK TABLE audit_log").await;
    eprintln!("faults: PostgreSQL audit_log lock released -> all protocols served after {took:?}");

    // 1b. The audit table and the intent journal locked.
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE audit_log, audit_intents IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let locked = Instant::now();
    refused.extend(
        rig.durable_calls_refused("PostgreSQL audit_log and audit_intents locked", locked)
            .await,
    );
    rig.nothing_served_for_4s(Call::Llm, "the audit tables were locked", locked)
        .await;
    lock.rollback().await.unwrap();
    let took = rig.until_all_served("after LOCK TABLE").await;
    eprintln!("faults: PostgreSQL lock released -> all protocols served after {took:?}");

    // 2. Every connection of the replica killed, twice, under calls.
    let mut kills = 0;
    for _ in 0..2 {
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&admin)
        .await
        .unwrap();
        kills += killed.len();
        for call in CALLS {
            let o = rig.call(call).await;
            eprintln!(
                "faults: PostgreSQL backends terminated: {call:?} -> {} {}",
                o.status, o.code
            );
            assert!(
                o.served()
                    || (o.status == 503
                        && ["audit_unavailable", "store_unavailable"].contains(&o.code.as_str())),
                "neither served nor refused as documented: {o:?}"
            );
        }
    }
    assert!(
        kills > 0,
        "no backend of the replica was found to terminate"
    );
    let took = rig.until_all_served("after pg_terminate_backend").await;
    eprintln!(
        "faults: PostgreSQL backends killed ({kills}) -> all protocols served after {took:?}"
    );
    admin.close().await;
    assert_postgres_log_complete(&mut rig, &url, &refused).await;
}

// ---------------------------------------------------------------------------
// Store reads stalled by a lock another session holds.

/// `[store] lock_timeout_ms` of the stall runs: short, so that the test
/// waits little for each refusal.
const LOCK_TIMEOUT: &str = "[store]\nlock_timeout_ms = 1500\n";

/// An admin read (`GET /admin/v1/agents`): (status, code, how long it took).
async fn admin_read(server: &Server) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = tokio::time::timeout(
        BOUND,
        support::client(&server.ca_pem(), None)
            .get(format!("https://{}/admin/v1/agents", server.admin))
            .bearer_auth(server.admin_token())
            .send(),
    )
    .await
    .unwrap_or_else(|_| panic!("an admin read got no answer within {BOUND:?}"))
    .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, code, started.elapsed())
}

/// An admin write (`agent create NAME` through the CLI): (whether it
/// succeeded, its stderr, how long it took).
fn admin_write(server: &Server, name: &str) -> (bool, String, Duration) {
    let started = Instant::now();
    let out = server.cli(&[
        "agent",
        "create",
        name,
        "--role",
        "dev",
        "--out",
        server.path().join("creds").to_str().unwrap(),
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// Waits (bounded) until `/readyz` answers `status`; the reasons it gave.
async fn readyz_becomes(server: &Server, status: u16, what: &str) -> (Duration, Value) {
    let started = Instant::now();
    loop {
        let (got, body) = support::readyz(server).await;
        if got == status {
            return (started.elapsed(), body["reasons"].clone());
        }
        assert!(
            started.elapsed() < BOUND,
            "{what}: /readyz still {got} after {BOUND:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_stalled_by_a_table_lock_are_bounded_and_recover() {
    let Some(db) = portcullis_store::testing::TestDb::postgres().await else {
        return;
    };
    let url = db.url();
    let Some(mut rig) = Rig::start(
        tempfile::tempdir().unwrap(),
        LOCK_TIMEOUT,
        &[("PORTCULLIS_STORE_URL", url.as_str())],
    )
    .await
    else {
        return;
    };
    rig.until_all_served("baseline").await;
    assert_eq!(admin_read(&rig.server).await.0, 200);
    readyz_becomes(&rig.server, 200, "baseline").await;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();

    // Another session locks the agents table: every read of it waits.
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let locked = Instant::now();
    let (status, code, took) = admin_read(&rig.server).await;
    eprintln!("faults: PostgreSQL agents locked: admin read -> {status} {code} after {took:?}");
    assert_eq!((status, code.as_str()), (503, "store_unavailable"));
    let (ok, stderr, took) =
        tokio::task::block_in_place(|| admin_write(&rig.server, "stalled-bot"));
    eprintln!("faults: PostgreSQL agents locked: admin write -> refused after {took:?}");
    assert!(!ok && stderr.contains("store_unavailable"), "{stderr}");
    let (_, reasons) = readyz_becomes(&rig.server, 503, "agents locked").await;
    eprintln!(
        "faults: PostgreSQL agents locked: /readyz 503 {reasons} {:?} after the lock",
        locked.elapsed()
    );
    assert!(
        reasons
            .as_array()
            .unwrap()
            .contains(&json!("store_stalled")),
        "{reasons}"
    );
    // The data plane decides from its snapshots: nothing it does reads the
    // locked table, so every call is still served.
    for call in CALLS {
        let o = rig.call(call).await;
        eprintln!(
            "faults: PostgreSQL agents locked: {call:?} -> {} {}",
            o.status, o.code
        );
        assert!(o.served(), "{o:?}");
    }
    assert!(locked.elapsed() < BOUND);

    lock.rollback().await.unwrap();
    let released = Instant::now();
    let recovered = loop {
        let (status, code, _) = admin_read(&rig.server).await;
        if status == 200 {
            break released.elapsed();
        }
        assert!(
            released.elapsed() < BOUND,
            "admin reads not served again: {status} {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (ready, _) = readyz_becomes(&rig.server, 200, "after the lock").await;
    let (ok, stderr, _) = tokio::task::block_in_place(|| admin_write(&rig.server, "stalled-bot"));
    assert!(ok, "{stderr}");
    eprintln!(
        "faults: PostgreSQL agents lock released -> admin reads served after {recovered:?}, ready after {:?}",
        ready
    );
    admin.close().await;
    assert_postgres_log_complete(&mut rig, &url, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_bounds_admin_calls_and_recovers() {
    let Some(mut rig) = Rig::start(tempfile::tempdir().unwrap(), LOCK_TIMEOUT, &[]).await else {
        return;
    };
    rig.until_all_served("baseline").await;
    let db = rig.server.state_dir().join("portcullis.db");
    let mut locker = lock_sqlite(&db);

    // In WAL mode a writer's lock never blocks readers: admin reads are
    // served; an admin write is refused 503 within a bound (the audit log
    // is stalled too, so either code), never left hanging.
    let (status, code, took) = admin_read(&rig.server).await;
    eprintln!("faults: SQLite locked: admin read -> {status} {code} after {took:?}");
    assert_eq!(status, 200, "{code}");
    let (ok, stderr, took) =
        tokio::task::block_in_place(|| admin_write(&rig.server, "stalled-bot"));
    eprintln!(
        "faults: SQLite locked: admin write -> refused after {took:?}: {}",
        stderr.trim()
    );
    assert!(
        !ok && (stderr.contains("store_unavailable") || stderr.contains("audit_unavailable")),
        "{stderr}"
    );
    assert!(took < BOUND);

    drop(locker.stdin.take());
    assert!(locker.wait().unwrap().success());
    let released = Instant::now();
    let recovered = loop {
        let (ok, stderr, _) =
            tokio::task::block_in_place(|| admin_write(&rig.server, "stalled-bot"));
        if ok {
            break released.elapsed();
        }
        assert!(
            released.elapsed() < BOUND,
            "admin writes not served again: {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("faults: SQLite lock released -> admin write served after {recovered:?}");
    readyz_becomes(&rig.server, 200, "after the SQLite lock").await;
    assert_sqlite_log_complete(&mut rig).await;
}

/// Stops the PostgreSQL rig's server and checks that every served call, and
/// every call in `refused`, is in its log, and that the log verifies.
async fn assert_postgres_log_complete(rig: &mut Rig, url: &str, refused: &[String]) {
    let served = rig.served_ids();
    let status = tokio::task::block_in_place(|| rig.server.terminate());
    assert!(status.success(), "exit after SIGTERM: {status}");
    let store = portcullis_store::Store::open_postgres(url).await.unwrap();
    let recorded = recorded_ids(&store).await;
    store.close().await;
    for id in served.iter().chain(refused) {
        assert!(recorded.contains(id), "call {id} is not in the log");
    }
    let verify = Command::new(support::server_bin())
        .args(["audit", "verify", "--state-dir"])
        .arg(rig.server.state_dir())
        .env("PORTCULLIS_STORE_URL", url)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// A tablespace on a tmpfs of its own, for one test database: dropped
/// (after the database, which must go first) and unmounted on drop.
struct FullableTablespace {
    admin_url: String,
    name: String,
    mount: Option<Tmpfs>,
}

impl Drop for FullableTablespace {
    fn drop(&mut self) {
        // As `TestDb`'s drop: a runtime of its own, on a thread.
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&url).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP TABLESPACE IF EXISTS {name}"
                    )))
                    .execute(&mut conn)
                    .await?;
                    conn.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the tablespace {}", self.name);
        }
        drop(self.mount.take());
    }
}

/// The uid and gid of the `postgres` account, which must own a tablespace's
/// directory.
fn postgres_owner() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Cluster mode with PostgreSQL's disk full: the test database's tables
/// live in a tablespace on a 16 MiB tmpfs, which a file then fills. The
/// writes of audit records and intents fail ("could not extend file … No
/// space left on device"): calls whose record must be durable are refused
/// 503 `audit_unavailable` and never reach their upstream. With the file
/// removed, every protocol is served again without a restart, and every
/// served or refused call is in the log, which verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_a_full_disk_fails_closed_and_recovers_when_there_is_room() {
    let Some(db) = portcullis_store::testing::TestDb::postgres().await else {
        return;
    };
    let portcullis_store::testing::TestDb::Postgres {
        admin_url,
        name: database,
        url,
    } = &db
    else {
        unreachable!("a PostgreSQL test database");
    };
    let (admin_url, database, url) = (admin_url.clone(), database.clone(), url.clone());
    let Some(owner) = postgres_owner() else {
        eprintln!("SKIPPED: PostgreSQL full disk: no `postgres` account to own the tablespace");
        return;
    };
    let at = std::env::temp_dir().join(format!("portcullis-pgfull-{}", std::process::id()));
    let Some(mount) = Tmpfs::mount_as(&at, "16m", Some(owner)) else {
        return;
    };
    let tablespace = FullableTablespace {
        admin_url,
        name: format!("portcullis_full_{}", std::process::id()),
        mount: Some(mount),
    };
    // Declared after the tablespace, so dropped before it.
    let db = db;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    // Root is the cluster's superuser here (CREATE TABLESPACE needs one).
    for sql in [
        format!(
            "CREATE TABLESPACE {} LOCATION '{}'",
            tablespace.name,
            at.display()
        ),
        format!(
            "ALTER DATABASE {database} SET default_tablespace = '{}'",
            tablespace.name
        ),
    ] {
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&admin)
            .await
        {
            eprintln!("SKIPPED: PostgreSQL full disk: `{sql}`: {e}");
            return;
        }
    }
    let Some(mut rig) = Rig::start(
        tempfile::tempdir().unwrap(),
        "[audit]\nfail_closed_after_ms = 1000\n",
        &[("PORTCULLIS_STORE_URL", url.as_str())],
    )
    .await
    else {
        return;
    };
    // The migrations put the tables on the small disk.
    let (on_it,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_tables WHERE tablespace = $1 AND tablename IN ('audit_log', 'audit_intents')",
    )
    .bind(&tablespace.name)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(on_it, 2, "the audit tables are not in the tablespace");
    rig.until_all_served("baseline").await;

    let filler = fill(&at);
    let full = Instant::now();
    // Load until the writes meet the full disk (pages already allocated
    // take some records first).
    let mut sent = 0;
    let first = loop {
        let o = rig.call(CALLS[sent % CALLS.len()]).await;
        sent += 1;
        if !o.served() {
            break o;
        }
        assert!(
            full.elapsed() < Duration::from_secs(120),
            "PostgreSQL's disk was full for 2 min and {sent} calls were served"
        );
    };
    eprintln!(
        "faults: PostgreSQL disk full -> first refusal after {sent} calls, {:?}: {} {}",
        full.elapsed(),
        first.status,
        first.code
    );
    assert!(first.refused_unrecorded(), "{first:?}");
    assert!(
        !rig.upstream_saw(&first),
        "a refused call reached its upstream: {first:?}"
    );
    let mut refused = vec![first.request_id];
    // An intent may still find room in a page that deleted intents freed,
    // and is then the call's record (as with `audit_log` locked, above):
    // such a call may be served, and the health check lets calls through
    // again whenever a write got through. So calls go on until each
    // durable protocol has been refused: every refusal must be
    // `audit_unavailable` and never reach the upstream; every call served
    // meanwhile must be in the log at the end.
    let mut refused_kinds = HashSet::new();
    let mut served_meanwhile = 0;
    let mut n = 0;
    while refused_kinds.len() < DURABLE.len() {
        let call = DURABLE[n % DURABLE.len()];
        n += 1;
        let o = rig.call(call).await;
        if o.served() {
            served_meanwhile += 1;
        } else {
            assert!(o.refused_unrecorded(), "{o:?}");
            assert!(
                !rig.upstream_saw(&o),
                "a refused call reached its upstream: {o:?}"
            );
            refused_kinds.insert(format!("{call:?}"));
            refused.push(o.request_id);
        }
        assert!(
            full.elapsed() < Duration::from_secs(120),
            "not every durable protocol refused in 2 min of a full disk: {refused_kinds:?}"
        );
    }
    eprintln!(
        "faults: PostgreSQL disk full -> {} refused (every durable protocol), {served_meanwhile} served with a durable intent, over {:?}",
        refused.len(),
        full.elapsed()
    );

    std::fs::remove_file(&filler).unwrap();
    let took = rig
        .until_all_served("after PostgreSQL's disk had room")
        .await;
    eprintln!("faults: PostgreSQL disk has room again -> all protocols served after {took:?}");
    admin.close().await;
    assert_postgres_log_complete(&mut rig, &url, &refused).await;
    drop(rig);
    drop(db);
    drop(tablespace);
}
