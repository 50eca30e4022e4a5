//! Each access the kernel refuses a sandboxed stdio MCP server becomes an
//! audit record of that server's session and agent: `kind` `process`,
//! `action` `process.violation`, `outcome` `deny`, `error_code`
//! `sandbox_violation`, and what was refused in `process.violation` (a file
//! or TCP address Landlock refused, a system call seccomp killed for).
//!
//! The kernel is the only witness of these refusals (they happen in the
//! server's namespaces); `portcullis_sandbox::kernel_audit` reads its audit
//! records. One reader serves the whole process, as the kernel's multicast
//! group is host-wide: [`start`] runs it on a thread of its own (its socket
//! blocks), and each launched server is [`watch`]ed while it runs.
//!
//! A record is tied to a server by the audit session its `sandbox-exec`
//! started (`ses=`, which the server's processes inherit and cannot change),
//! read from `/proc/<pid>/sessionid` of the server's keeper process; where
//! there is none, by the process ids the record names (the process that
//! tried, its parent, or the Landlock domain's maker, whose ancestry leads
//! to the keeper). A record tied to no server is logged, not audited: it is
//! another program's.
//!
//! Under a root gateway, refusals that are neither Landlock's nor
//! seccomp's (the server's user may not open a file, a UDP datagram has no
//! route out, a fork is past the process limit) are recorded by kernel
//! audit rules the gateway adds for each sandbox user ([`cover`]), and
//! audited the same way (`mechanism` `permissions`, `network_namespace`,
//! `rlimit`).
//!
//! Like every other refusal of the session's agent, these records go to
//! behavioural analytics, so a burst of them quarantines the agent
//! (`[analytics] denial_burst`). At most [`MAX_RECORDS_PER_PROCESS`] are
//! written per server; the rest are counted in its `process.exit` record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use portcullis_audit::{Outcome, ProcessEvent, Violation};
use portcullis_sandbox::kernel_audit::{self, AuditError, Denial, Reader, SESSION_UNSET};

use super::stdio::Recorded;

/// Most `process.violation` records written for one server.
pub const MAX_RECORDS_PER_PROCESS: u64 = 64;
/// How long a server's records are still tied to it after it ended (the
/// kernel's record of a seccomp kill can arrive after the gateway saw the
/// exit).
const LINGER: Duration = Duration::from_secs(10);
/// How long the gateway looks for a new server's audit session (its keeper
/// sets it first thing).
const SESSION_LOOKUP: Duration = Duration::from_secs(2);
/// How many parents are followed from a pid to the keeper (keeper, init,
/// server, its children).
const MAX_ANCESTRY: usize = 8;

static READER: OnceLock<Arc<Violations>> = OnceLock::new();

/// One watched server.
pub(super) struct Watched {
    keeper: u32,
    records: Arc<Recorded>,
    session: AtomicU32,
    count: AtomicU64,
    ended: Mutex<Option<Instant>>,
}

impl Watched {
    /// How many refusals the kernel reported for this server.
    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Reads the keeper's audit session once it has one of its own.
    fn resolve_session(&self, gateway_session: Option<u32>) -> Option<u32> {
        let known = self.session.load(Ordering::Relaxed);
        if known != SESSION_UNSET {
            return Some(known);
        }
        let s = kernel_audit::session_of(&self.keeper.to_string())?;
        if s == SESSION_UNSET || Some(s) == gateway_session {
            return None;
        }
        self.session.store(s, Ordering::Relaxed);
        Some(s)
    }
}

/// Ends the watch when dropped (the server's records are still accepted
/// for [`LINGER`]).
pub(super) struct Guard(pub(super) Arc<Watched>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut e) = self.0.ended.lock() {
            *e = Some(Instant::now());
        }
    }
}

/// The servers being watched, by keeper pid.
#[derive(Default)]
struct Violations {
    watched: Mutex<HashMap<u32, Arc<Watched>>>,
    /// Landlock domains already tied to a server (the kernel names a
    /// domain's maker on its first denial only).
    domains: Mutex<HashMap<String, u32>>,
    gateway_session: Option<u32>,
}

/// Starts reading the kernel audit (once per process; later calls do
/// nothing). Fails when this process may not read it.
pub fn start() -> Result<(), AuditError> {
    if READER.get().is_some() {
        return Ok(());
    }
    let reader = Reader::open()?;
    let violations = Arc::new(Violations {
        gateway_session: kernel_audit::own_session().filter(|s| *s != SESSION_UNSET),
        ..Violations::default()
    });
    if READER.set(violations.clone()).is_err() {
        return Ok(());
    }
    let spawned = std::thread::Builder::new()
        .name("kernel-audit".into())
        .spawn(move || violations.run(reader));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the kernel audit reader; sandbox violations are not audited one by one");
    }
    Ok(())
}

/// Makes sure the kernel audit records the refusals of sandbox user `uid`
/// that neither Landlock nor seccomp logs, before a server of that user
/// starts (`kernel_audit::cover_user`, once per user): only while the
/// kernel audit is read.
pub(super) fn cover(uid: u32) {
    if READER.get().is_none() {
        return;
    }
    match kernel_audit::cover_user(uid) {
        Ok(()) | Err(AuditError::NotRoot) => {}
        Err(e) => {
            tracing::warn!(error = %e, uid, "sandbox refusals by file modes, UDP sends and the process limit are not audited one by one");
        }
    }
}

/// Watches the server whose `sandbox-exec` is `keeper`, while the guard
/// lives; `None` when the kernel audit is not read.
pub(super) fn watch(keeper: Option<u32>, records: &Arc<Recorded>) -> Option<Guard> {
    let violations = READER.get()?;
    let keeper = keeper?;
    let watched = Arc::new(Watched {
        keeper,
        records: records.clone(),
        session: AtomicU32::new(SESSION_UNSET),
        count: AtomicU64::new(0),
        ended: Mutex::new(None),
    });
    if let Ok(mut w) = violations.watched.lock() {
        w.insert(keeper, watched.clone());
    }
    // Learn its audit session now, while the keeper surely lives: the
    // record of a process killed at once may come after the keeper ended.
    let gateway_session = violations.gateway_session;
    let early = watched.clone();
    tokio::spawn(async move {
        let until = Instant::now() + SESSION_LOOKUP;
        while early.resolve_session(gateway_session).is_none()
            && early.ended.lock().map(|e| e.is_none()).unwrap_or(false)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    Some(Guard(watched))
}

impl Violations {
    fn run(&self, mut reader: Reader) {
        let mut overruns = 0;
        loop {
            match reader.read() {
                Ok(denials) => {
                    for d in denials {
                        self.record(d);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the kernel audit reader stopped; sandbox violations are no longer audited one by one");
                    return;
                }
            }
            if reader.overruns != overruns {
                overruns = reader.overruns;
                tracing::warn!(
                    overruns,
                    "kernel audit records were lost (the reader fell behind); some sandbox violations are not audited"
                );
            }
            self.forget_ended();
        }
    }

    /// Drops servers that ended more than [`LINGER`] ago.
    fn forget_ended(&self) {
        let Ok(mut w) = self.watched.lock() else {
            return;
        };
        w.retain(|_, s| {
            s.ended
                .lock()
                .map(|e| e.is_none_or(|t| t.elapsed() < LINGER))
                .unwrap_or(false)
        });
        let live: std::collections::HashSet<u32> = w.keys().copied().collect();
        drop(w);
        if let Ok(mut d) = self.domains.lock() {
            d.retain(|_, keeper| live.contains(keeper));
        }
    }

    /// The watched server `denial` belongs to.
    fn owner(&self, denial: &Denial) -> Option<Arc<Watched>> {
        let watched: Vec<Arc<Watched>> = self.watched.lock().ok()?.values().cloned().collect();
        if let Some(session) = denial.session
            && let Some(w) = watched
                .iter()
                .find(|w| w.resolve_session(self.gateway_session) == Some(session))
        {
            return Some(w.clone());
        }
        if let Some(domain) = &denial.domain
            && let Some(keeper) = self.domains.lock().ok()?.get(domain).copied()
            && let Some(w) = watched.iter().find(|w| w.keeper == keeper)
        {
            return Some(w.clone());
        }
        let by_pid =
            |pid: u32| ancestry(pid).find_map(|p| watched.iter().find(|w| w.keeper == p).cloned());
        let found = [denial.domain_creator, denial.pid, denial.ppid]
            .into_iter()
            .flatten()
            .find_map(by_pid)?;
        if let Some(domain) = &denial.domain
            && let Ok(mut d) = self.domains.lock()
        {
            d.insert(domain.clone(), found.keeper);
        }
        Some(found)
    }

    fn record(&self, denial: Denial) {
        let Some(watched) = self.owner(&denial) else {
            tracing::debug!(mechanism = denial.mechanism, denied = %denial.denied, pid = ?denial.pid, "a kernel audit denial of no sandboxed server");
            return;
        };
        let n = watched.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n > MAX_RECORDS_PER_PROCESS {
            return;
        }
        let r = &watched.records;
        tracing::warn!(route = %r.route, agent = %r.agent, mechanism = denial.mechanism, denied = %denial.denied, "sandboxed MCP server refused by its sandbox");
        let event = ProcessEvent {
            violation: Some(Violation {
                mechanism: denial.mechanism.to_string(),
                denied: denial.denied,
                path: denial.path,
                address: denial.address,
                syscall: denial.syscall,
                pid: denial.pid,
            }),
            ..r.event.clone()
        };
        r.submit(
            "process.violation",
            Outcome::Deny,
            Some("sandbox_violation"),
            event,
        );
    }
}

/// `pid`, its parent, and so on up to [`MAX_ANCESTRY`] processes.
fn ancestry(pid: u32) -> impl Iterator<Item = u32> {
    std::iter::successors(Some(pid), |p| parent(*p)).take(MAX_ANCESTRY)
}

/// The parent of `pid`, from `/proc/<pid>/stat` (after the command name,
/// which may hold spaces and parentheses, so read from the last `)`).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .filter(|p| *p > 1)
}
