//! MCP servers the gateway launches itself (`upstream = "stdio:COMMAND ARGS"`):
//! one process per MCP session, JSON-RPC messages one per line on its stdin
//! and stdout (the MCP stdio transport).
//!
//! To the rest of the adapter a stdio server looks like a Streamable HTTP
//! server answering in JSON: `initialize` (without a session id) launches a
//! process and answers with a fresh `Mcp-Session-Id`; a POST writes its
//! messages and answers with the responses to its requests; what the
//! process says unprompted (notifications, its own requests) goes to the
//! session's GET event stream, if one is open, and is dropped otherwise;
//! `DELETE` ends the process. So policy, pinning, filtering and session
//! binding work the same for both.
//!
//! The process is started without a shell and killed when its session ends,
//! when its agent is revoked, at its wall-clock limit, or when the gateway
//! stops. Unless the route's `[routes.sandbox]` says `enabled = false`, it is
//! started through `portcullis sandbox-exec`, which confines it as the
//! route's profile says (`portcullis_sandbox`) before executing it: its
//! environment is `PATH`, `LANG`, the variables the profile names, and
//! `HOME` and `TMPDIR` set to its own work directory (removed when it ends).
//! Without a sandbox the environment is `PATH`, `HOME`, `LANG` and `TMPDIR`;
//! either way the gateway's own secrets, such as the vault KEK, never reach it.
//!
//! **Process events are audited** (`kind` `process`): `process.spawn` with
//! the command and the profile's digest, and `process.exit` with the exit
//! status and its cause; a kill by seccomp, by the CPU limit or by the
//! wall-clock limit is a refusal (`sandbox_violation`, `resource_limit`), fed
//! to behavioural analytics like a refused request of the session's agent;
//! so is each access the kernel refused it (`process.violation`, read from
//! the kernel audit by `violations.rs`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use portcullis_core::ErrorCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use portcullis_audit::{AuditRecord, Outcome, ProcessEvent, RecordKind};
use portcullis_sandbox::{ExitCause, Profile};

use crate::analytics::AnalyticsTap;
use crate::audit_sink::AuditSink;
use crate::body::BoxError;
use crate::respond::{Denial, ResponseBody, full};

/// Most processes one stdio route runs at once. At the limit, processes
/// idle for longer than [`IDLE_LIMIT`] are ended to make room.
pub const MAX_PROCESSES_PER_ROUTE: usize = 64;
/// How long an unused process is kept once its route is at the limit.
pub const IDLE_LIMIT: Duration = Duration::from_secs(10 * 60);
/// Most server-initiated messages queued for a session's event stream.
const EVENT_QUEUE: usize = 256;
/// Longest line a process may write (one JSON-RPC message).
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Environment variables a launched server inherits.
const KEPT_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TMPDIR"];

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

struct Process {
    route: String,
    last_used: Mutex<std::time::Instant>,
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Pending,
    events: Mutex<Option<mpsc::Receiver<Value>>>,
    // Dropping it tells the process's watcher to kill the process.
    _stop: oneshot::Sender<()>,
}

/// A session's process to launch, and who it serves (for its audit records).
pub struct Launch<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The program and its arguments.
    pub command: (&'a str, &'a [String]),
    /// The route's sandbox profile.
    pub sandbox: Option<&'a Arc<Profile>>,
    /// The agent that opened the session.
    pub agent: &'a str,
    /// The request id of the `initialize` that launches it.
    pub request_id: portcullis_core::RequestId,
    /// The route's classification.
    pub classification: &'static str,
    /// The audit log.
    pub sink: &'a AuditSink,
    /// Behavioural analytics, when on.
    pub tap: Option<AnalyticsTap>,
    /// The gateway (its policy snapshot decides egress).
    pub gateway: &'a Arc<crate::state::Gateway>,
    /// The agent's address and credentials on the `initialize` (the
    /// context of its server's egress decisions).
    pub source_ip: &'a portcullis_policy::SourceIp,
    /// See `source_ip`.
    pub caller: &'a portcullis_policy::CallerFacts,
    /// The user the agent acts for, when a delegated token opened the
    /// session: named in the process's records, and its egress is decided
    /// as that user too.
    pub user: Option<&'a portcullis_identity::DelegatedUser>,
}

/// What a process's audit records repeat.
pub(super) struct Recorded {
    pub(super) route: String,
    pub(super) agent: String,
    request_id: String,
    classification: &'static str,
    pub(super) event: ProcessEvent,
    sink: AuditSink,
    tap: Option<AnalyticsTap>,
}

impl Recorded {
    pub(super) fn submit(
        &self,
        action: &str,
        outcome: Outcome,
        error_code: Option<&str>,
        event: ProcessEvent,
    ) {
        self.submit_record(AuditRecord {
            kind: RecordKind::Process,
            action: action.to_string(),
            resource: Some(self.route.clone()),
            outcome,
            error_code: error_code.map(str::to_string),
            process: Some(event),
            ..AuditRecord::default()
        });
    }

    /// Writes `record` as this process's: time, request id, agent and
    /// classification set here, and its `process` event completed with the
    /// process's command, profile, session and pid.
    pub(super) fn submit_record(&self, mut record: AuditRecord) {
        record.time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        record.request_id = self.request_id.clone();
        record.principal = Some(self.agent.clone());
        record.classification = Some(self.classification.to_string());
        if let Some(event) = record.process.as_mut()
            && event.command.is_empty()
        {
            *event = ProcessEvent {
                address: event.address.take(),
                method: event.method.take(),
                ..self.event.clone()
            };
        }
        if let Some(tap) = &self.tap {
            tap.offer(&record);
        }
        self.sink.submit(record);
    }
}

/// The processes of every stdio route, by session id.
#[derive(Default)]
pub struct StdioServers {
    processes: Mutex<HashMap<String, Arc<Process>>>,
}

impl std::fmt::Debug for StdioServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioServers").finish_non_exhaustive()
    }
}

fn unavailable(route: &str, what: &str) -> Denial {
    tracing::warn!(route, problem = what, "stdio MCP server failed");
    Denial::new(
        ErrorCode::UpstreamUnavailable,
        format!("the MCP server of route `{route}` is unavailable"),
    )
}

/// The id of a JSON-RPC message as a map key.
fn id_key(id: &Value) -> String {
    id.to_string()
}

impl StdioServers {
    fn get(&self, session: &str) -> Option<Arc<Process>> {
        let process = self.processes.lock().ok()?.get(session).cloned()?;
        if let Ok(mut t) = process.last_used.lock() {
            *t = std::time::Instant::now();
        }
        Some(process)
    }

    /// Launches the server for a new session; returns the session id.
    fn launch(&self, l: &Launch<'_>) -> Result<String, Denial> {
        let route = l.route;
        let running = self
            .processes
            .lock()
            .map(|mut all| {
                let count = |all: &HashMap<String, Arc<Process>>| {
                    all.values().filter(|p| p.route == route).count()
                };
                if count(&all) >= MAX_PROCESSES_PER_ROUTE {
                    all.retain(|_, p| {
                        p.route != route
                            || p.last_used
                                .lock()
                                .map(|t| t.elapsed() < IDLE_LIMIT)
                                .unwrap_or(false)
                    });
                }
                count(&all)
            })
            .unwrap_or(usize::MAX);
        if running >= MAX_PROCESSES_PER_ROUTE {
            return Err(Denial::new(
                ErrorCode::Unavailable,
                format!(
                    "route `{route}` runs its maximum of {MAX_PROCESSES_PER_ROUTE} MCP server processes; retry later"
                ),
            ));
        }
        let (program, args) = l.command;
        let session = hex::encode(rand::random::<[u8; 16]>());
        let sandbox = l.sandbox.filter(|p| p.enabled);
        let egress = sandbox.is_some_and(|p| p.network == portcullis_sandbox::Network::Egress);
        if let Some(profile) = sandbox {
            super::violations::cover(profile.user);
        }
        let (mut command, work_dir, memory) = match sandbox {
            Some(profile) => sandboxed(profile, program, args)
                .map_err(|e| unavailable(route, &format!("cannot launch the sandbox: {e}")))?,
            None => {
                let mut command = Command::new(program);
                command.args(args).env_clear();
                for key in KEPT_ENV {
                    if let Some(v) = std::env::var_os(key) {
                        command.env(key, v);
                    }
                }
                (command, None, None)
            }
        };
        // With egress, the sandbox passes its proxy listener over standard
        // error (a socket pair), then points it at /dev/null.
        let (stderr, egress_channel) = if egress {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| unavailable(route, &format!("cannot make the egress channel: {e}")))?;
            (Stdio::from(std::os::fd::OwnedFd::from(theirs)), Some(ours))
        } else {
            (Stdio::null(), None)
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let spawned = command.spawn();
        // Our copy of the child's end closes here, so a sandbox that fails
        // before passing its listener shows as the channel's end.
        drop(command);
        let mut child =
            spawned.map_err(|e| unavailable(route, &format!("cannot launch `{program}`: {e}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(unavailable(route, "no stdio pipes"));
        };
        let recorded = Arc::new(Recorded {
            route: route.to_string(),
            agent: l.agent.to_string(),
            request_id: l.request_id.to_string(),
            classification: l.classification,
            event: ProcessEvent {
                command: std::iter::once(program)
                    .chain(args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                profile_sha256: sandbox.map(|p| p.digest()),
                session: hex::encode(&Sha256::digest(session.as_bytes())[..8]),
                pid: child.id(),
                user: l.user.map(|u| u.sub.clone()),
                ..ProcessEvent::default()
            },
            sink: l.sink.clone(),
            tap: l.tap.clone(),
        });
        recorded.submit(
            "process.spawn",
            Outcome::Allow,
            None,
            recorded.event.clone(),
        );
        let (stop, stopped) = oneshot::channel();
        // Dropped when the process has ended: the proxy stops with it.
        let (proxy_stop, proxy_stopped) = oneshot::channel::<()>();
        if let Some(channel) = egress_channel {
            let session = Arc::new(super::egress::EgressSession {
                gateway: l.gateway.clone(),
                agent: l.agent.to_string(),
                route: route.to_string(),
                server: program.to_string(),
                source_ip: l.source_ip.clone(),
                caller: l.caller.clone(),
                user: l.user.cloned(),
                request_id: l.request_id.clone(),
                rules: sandbox.map(|p| p.egress.clone()).unwrap_or_default(),
                records: recorded.clone(),
            });
            tokio::spawn(super::egress::run(channel, session, proxy_stopped));
        }
        let wall_clock = sandbox.map(|p| Duration::from_secs(p.limits.wall_clock_seconds));
        // What the kernel refuses it becomes records of this session.
        let violations = sandbox.and_then(|_| super::violations::watch(child.id(), &recorded));
        tokio::spawn(watch(
            child,
            stopped,
            wall_clock,
            (recorded, proxy_stop, violations),
            (work_dir, memory),
        ));
        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(read_lines(
            stdout,
            pending.clone(),
            events_tx,
            route.to_string(),
        ));
        let process = Arc::new(Process {
            route: route.to_string(),
            last_used: Mutex::new(std::time::Instant::now()),
            stdin: tokio::sync::Mutex::new(stdin),
            pending,
            events: Mutex::new(Some(events_rx)),
            _stop: stop,
        });
        if let Ok(mut p) = self.processes.lock() {
            p.insert(session.clone(), process);
        }
        Ok(session)
    }

    /// Ends a session's process.
    pub fn end(&self, session: &str) {
        if let Ok(mut p) = self.processes.lock() {
            p.remove(session);
        }
    }

    /// Sends a POST's messages and answers like a Streamable HTTP server in
    /// JSON mode. `session` is `None` only for an `initialize`.
    pub async fn post(
        &self,
        launch: Launch<'_>,
        session: Option<&str>,
        messages: &[&Value],
        batch: bool,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, Denial> {
        let route = launch.route;
        let (session, fresh) = match session {
            Some(s) => (s.to_string(), false),
            None => (self.launch(&launch)?, true),
        };
        let Some(process) = self.get(&session) else {
            return Err(Denial::new(
                ErrorCode::McpSessionNotFound,
                "no such MCP session for this agent; start a new one with `initialize`",
            ));
        };
        let mut waiting = Vec::new();
        let mut lines = Vec::new();
        for m in messages {
            if m.get("method").is_some()
                && let Some(id) = m.get("id").filter(|id| !id.is_null())
            {
                let (tx, rx) = oneshot::channel();
                if let Ok(mut p) = process.pending.lock() {
                    p.insert(id_key(id), tx);
                }
                waiting.push(rx);
            }
            lines.extend_from_slice(m.to_string().as_bytes());
            lines.push(b'\n');
        }
        {
            let mut stdin = process.stdin.lock().await;
            let written = async {
                stdin.write_all(&lines).await?;
                stdin.flush().await
            };
            if let Err(e) = written.await {
                self.end(&session);
                return Err(unavailable(
                    route,
                    &format!("cannot write to the server: {e}"),
                ));
            }
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for rx in waiting {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => answers.push(answer),
                Ok(Err(_)) => {
                    self.end(&session);
                    return Err(unavailable(route, "the server exited"));
                }
                Err(_) => {
                    // A session whose `initialize` went unanswered is never
                    // handed out: end its process now.
                    if fresh {
                        self.end(&session);
                    }
                    return Err(Denial::new(
                        ErrorCode::UpstreamTimeout,
                        format!(
                            "the MCP server of route `{route}` did not answer within {} ms",
                            timeout.as_millis()
                        ),
                    ));
                }
            }
        }
        let mut response = if answers.is_empty() {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        } else {
            let body = if batch {
                Value::Array(answers).to_string()
            } else {
                answers.pop().unwrap_or(Value::Null).to_string()
            };
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        };
        if fresh && let Ok(v) = HeaderValue::from_str(&session) {
            response.headers_mut().insert(super::SESSION_HEADER, v);
        }
        Ok(response)
    }

    /// The session's event stream (what the server says unprompted), as SSE.
    /// Only one stream per session: a second GET is refused (409 `conflict`).
    pub fn events(&self, session: &str) -> Result<Response<ResponseBody>, Denial> {
        let process = self.get(session).ok_or_else(|| {
            Denial::new(
                ErrorCode::McpSessionNotFound,
                "no such MCP session for this agent; start a new one with `initialize`",
            )
        })?;
        let rx = process
            .events
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .ok_or_else(|| {
                Denial::new(
                    ErrorCode::Conflict,
                    "this MCP session's event stream is already open",
                )
            })?;
        let mut response = Response::new(EventBody(rx).boxed());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(response)
    }
}

/// The command that runs `program` confined by `profile`, through
/// `portcullis sandbox-exec` (this executable), and the session's work
/// directory it will make.
fn sandboxed(
    profile: &Profile,
    program: &str,
    args: &[String],
) -> std::io::Result<(Command, Option<std::path::PathBuf>, Option<Memory>)> {
    use portcullis_sandbox::memory::{MemoryControl, ServerCgroup, memory_control};
    let exe = std::env::current_exe()?;
    let name = hex::encode(rand::random::<[u8; 12]>());
    let work_dir = std::env::temp_dir().join(format!(
        "{}{name}",
        portcullis_sandbox::memory::CGROUP_PREFIX
    ));
    let bytes = profile.limits.memory_mb.saturating_mul(1024 * 1024);
    let memory = match memory_control() {
        MemoryControl::Cgroup(parent) => {
            Memory::Cgroup(ServerCgroup::create(parent, &name, bytes)?)
        }
        MemoryControl::Rlimit(_) => Memory::Watchdog(bytes),
    };
    let mut command = Command::new(exe);
    command
        .arg("sandbox-exec")
        .arg("--profile")
        .arg(profile.to_json())
        .arg("--work-dir")
        .arg(&work_dir);
    if let Memory::Cgroup(cgroup) = &memory {
        command.arg("--cgroup").arg(cgroup.path());
    }
    command
        .arg("--")
        .arg(program)
        .args(args)
        .env_clear()
        .env("HOME", &work_dir)
        .env("TMPDIR", &work_dir);
    for key in portcullis_sandbox::BASE_ENV
        .iter()
        .copied()
        .chain(profile.env.iter().map(String::as_str))
    {
        if let Some(v) = std::env::var_os(key) {
            command.env(key, v);
        }
    }
    Ok((command, Some(work_dir), Some(memory)))
}

/// How a sandboxed server's memory is bounded beyond its rlimits.
enum Memory {
    /// Its own cgroup (`memory.max`).
    Cgroup(portcullis_sandbox::memory::ServerCgroup),
    /// The watchdog, at this many bytes of the tree's resident memory.
    Watchdog(u64),
}

/// Resolves when the process tree of `pid` holds more resident memory than
/// `memory` allows (watchdog only; a cgroup needs no watching), killing the
/// tree then.
async fn over_memory(pid: Option<u32>, memory: Option<&Memory>) {
    let (Some(pid), Some(Memory::Watchdog(limit))) = (pid, memory) else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(portcullis_sandbox::memory::WATCHDOG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match portcullis_sandbox::memory::tree_resident(pid) {
            Some((bytes, pids)) if bytes > *limit => {
                portcullis_sandbox::memory::kill_all(&pids);
                return;
            }
            Some(_) => {}
            // Gone: the wait branch reports it.
            None => return std::future::pending().await,
        }
    }
}

/// Waits for a process to end, kills it when its session ends (`stop`
/// dropped) or at its wall-clock limit, then audits how it ended and
/// removes its work directory.
async fn watch(
    mut child: Child,
    stop: oneshot::Receiver<()>,
    wall_clock: Option<Duration>,
    (recorded, _proxy_stop, violations): (
        Arc<Recorded>,
        oneshot::Sender<()>,
        Option<super::violations::Guard>,
    ),
    (work_dir, memory): (Option<std::path::PathBuf>, Option<Memory>),
) {
    use std::os::unix::process::ExitStatusExt;
    let started = std::time::Instant::now();
    let pid = child.id();
    let limit = tokio::time::sleep(wall_clock.unwrap_or(Duration::from_secs(u32::MAX as u64)));
    // A process that died on its own while its session was ending (the
    // session ends because the server exited) keeps its own cause.
    let (killed, status) = tokio::select! {
        biased;
        status = child.wait() => (None, status),
        _ = stop => match child.try_wait() {
            Ok(Some(status)) => (None, Ok(status)),
            _ => (Some("ended"), kill(&mut child).await),
        },
        _ = limit => (Some("wall_clock"), kill(&mut child).await),
        () = over_memory(pid, memory.as_ref()) => (Some("memory_limit"), kill(&mut child).await),
    };
    // The OOM killer of its cgroup ended it (or a process of its tree).
    let oom = matches!(&memory, Some(Memory::Cgroup(c)) if c.oom_killed());
    let (code, signal) = match &status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    // Our kill is `SIGKILL`; any other status is the process's own end
    // (it was already dying when we killed it).
    let killed = killed.filter(|_| signal == Some(9));
    let cause = ExitCause::of(code, signal);
    let killed = if oom && signal == Some(9) {
        Some("memory_limit")
    } else {
        killed
    };
    let (word, outcome, error_code) = match killed {
        Some(word @ ("wall_clock" | "memory_limit")) => {
            (word, Outcome::Deny, Some("resource_limit"))
        }
        Some(word) => (word, Outcome::Allow, None),
        None => match cause {
            ExitCause::Seccomp => (cause.as_str(), Outcome::Deny, Some("sandbox_violation")),
            ExitCause::CpuLimit => (cause.as_str(), Outcome::Deny, Some("resource_limit")),
            ExitCause::SetupFailed => (cause.as_str(), Outcome::Deny, Some("sandbox_unavailable")),
            ExitCause::Exited | ExitCause::Signaled => (cause.as_str(), Outcome::Allow, None),
        },
    };
    if outcome == Outcome::Deny {
        tracing::warn!(route = %recorded.route, agent = %recorded.agent, cause = word, "stdio MCP server stopped by its sandbox");
    }
    let event = ProcessEvent {
        cause: Some(word.to_string()),
        exit_code: code,
        signal,
        ran_ms: Some(started.elapsed().as_millis() as u64),
        // A seccomp kill's kernel record may still be on its way: the
        // count is what was read by now.
        violations: violations.as_ref().map(|g| g.0.count()).filter(|n| *n > 0),
        ..recorded.event.clone()
    };
    recorded.submit("process.exit", outcome, error_code, event);
    if let Some(dir) = work_dir {
        let _ = tokio::fs::remove_dir_all(dir).await;
    }
}

async fn kill(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    // Its descendants too, which would outlive it otherwise (the sandbox
    // has no PID namespace).
    if let Some((_, pids)) = child
        .id()
        .and_then(portcullis_sandbox::memory::tree_resident)
    {
        portcullis_sandbox::memory::kill_all(&pids);
    }
    let _ = child.start_kill();
    child.wait().await
}

/// A session's queued server messages as SSE events.
struct EventBody(mpsc::Receiver<Value>);

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|m| {
            m.map(|message| {
                Ok(http_body::Frame::data(Bytes::from(format!(
                    "event: message\ndata: {message}\n\n"
                ))))
            })
        })
    }
}

/// Reads the process's stdout: responses go to their waiting POST, anything
/// else to the event stream (dropped when none is open or it is full).
async fn read_lines(
    stdout: tokio::process::ChildStdout,
    pending: Pending,
    events: mpsc::Sender<Value>,
    route: String,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_LINE_BYTES => {
                tracing::warn!(route = %route, "stdio MCP server wrote an over-long line; session ended");
                break;
            }
            Ok(_) => {}
        }
        let Ok(message) = serde_json::from_slice::<Value>(&line) else {
            // Not JSON-RPC (a log line on stdout): ignored.
            continue;
        };
        let is_response = message.get("method").is_none()
            && (message.get("result").is_some() || message.get("error").is_some());
        if is_response && let Some(id) = message.get("id") {
            let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id_key(id)));
            if let Some(tx) = waiter {
                let _ = tx.send(message);
                continue;
            }
        }
        let _ = events.try_send(message);
    }
    // The waiting POSTs see their senders dropped: the server exited.
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
}
