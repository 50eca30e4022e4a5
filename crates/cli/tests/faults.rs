//! Fault runs (issue 22, item 6; results in docs/robustness.md): the real
//! binary with an HTTP, an MCP and an LLM route, each upstream behind a
//! fault proxy in this test, and the faults an operator meets:
//! - upstreams that reset the connection, or never answer (all three
//!   protocols), and one that breaks off an answer mid-stream (an LLM event
//!   stream and a chunked HTTP answer);
//! - a database another process holds locked (SQLite `BEGIN EXCLUSIVE`;
//!   PostgreSQL `LOCK TABLE` and `pg_terminate_backend`);
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
        Mode::Pass => {}
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return reset(client);
    };
    if upstream.write_all(&buf[..n]).await.is_err() {
        return;
    }
    let mut back = vec![0u8; 16 * 1024];
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
                    if client.write_all(&back[..n]).await.is_err() {
                        return;
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
    /// Every call made, and what came back.
    log: Mutex<Vec<(Call, u16, String, String)>>,
    _upstreams: (Killed, Killed, support::StreamGate),
}

impl Rig {
    /// The gateway on `dir` (its state in `dir/state`, which may be a
    /// mount) with `extra` config and `env`; `None` (and `SKIPPED:`)
    /// without python3 and `mcp`.
    async fn start(dir: tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> Option<Rig> {
        support::install_crypto();
        if !tokio::task::block_in_place(parity_rig::python_with_mcp) {
            return None;
        }
        let (mcp_proc, mcp_port, notes) =
            tokio::task::block_in_place(|| parity_rig::start_mcp(McpAnswers::Json));
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
        // The upstream timeout short enough for the test, long enough for a
        // loaded machine's healthy answers.
        let config = support::config(dir.path(), &routes, "upstream_timeout_ms = 3000");
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
            assert_eq!(
                (o.status, o.code.as_str()),
                (503, "audit_unavailable"),
                "{what}: {o:?}"
            );
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
// A stalled database.

/// Another process (python's sqlite3) takes the write lock of the state
/// database and holds it. Durable calls are refused 503
/// `audit_unavailable` and never reach their upstream; reads are served
/// until the stall outlasts `fail_closed_after_ms`, then refused as well.
/// Released, every protocol is served again without a restart, the refusals
/// are in the log, and so is every call that was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_locked_by_another_process_fails_closed_and_recovers() {
    let Some(mut rig) = Rig::start(tempfile::tempdir().unwrap(), "", &[]).await else {
        return;
    };
    rig.until_all_served("baseline").await;
    let db = rig.server.state_dir().join("portcullis.db");
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
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(locker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
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
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            // Mode 0700: `serve` refuses a state directory others may write.
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
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

    let served = rig.served_ids();
    let status = tokio::task::block_in_place(|| rig.server.terminate());
    assert!(status.success(), "exit after SIGTERM: {status}");
    let store = portcullis_store::Store::open_postgres(&url).await.unwrap();
    let recorded = recorded_ids(&store).await;
    store.close().await;
    for id in served.iter().chain(&refused) {
        assert!(recorded.contains(id), "call {id} is not in the log");
    }
    let verify = Command::new(support::server_bin())
        .args(["audit", "verify", "--state-dir"])
        .arg(rig.server.state_dir())
        .env("PORTCULLIS_STORE_URL", &url)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
