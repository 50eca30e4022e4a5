//! What the kernel's audit subsystem says about sandboxed servers: each file
//! or TCP access Landlock refused (ABI 7 logs its denials) and each system
//! call seccomp killed a process for, read from the audit netlink socket's
//! multicast group (`AUDIT_NLGRP_READLOG`, which needs `CAP_AUDIT_READ`).
//!
//! A denial happens inside the server's namespaces, where the gateway takes
//! no part: the server just gets `EACCES`, or is killed. The kernel is the
//! only witness, and it writes one audit record per denial when its audit is
//! on (`auditctl -e 1`, what `auditd` does at start). This module reads those
//! records as a second listener beside `auditd` (it takes nothing from it),
//! and groups the records of one event (one system call) into a [`Denial`].
//!
//! Some refusals are no Landlock or seccomp decision: under a root gateway
//! the server runs as an unprivileged user, and the files of the state
//! directory are refused by their modes before Landlock is asked; a UDP
//! datagram finds no route out of the server's network namespace; a fork
//! past `RLIMIT_NPROC` fails with `EAGAIN`. The kernel logs none of these by
//! itself, so the gateway adds a few rules of its own to the kernel audit
//! ([`cover_user`], key [`RULE_KEY`]): a system call of a process whose
//! login uid is a sandbox user that ends in `EACCES` or `EPERM`, a send or
//! connect that ends in `ENETUNREACH`, a fork that ends in `EAGAIN`. Their
//! records become [`Denial`]s of mechanism `permissions`,
//! `network_namespace` and `rlimit`. [`restore`] removes the rules (and
//! turns the kernel audit off again if [`enable`] turned it on).
//!
//! To tell which session a record belongs to, `sandbox-exec` gives each
//! server an audit session of its own ([`start_audit_session`]): the
//! kernel's `ses=` field of every record of that server's processes, which
//! they cannot change (setting it again needs `CAP_AUDIT_CONTROL`, which no
//! sandboxed process has). Where that fails, the process ids in the records
//! are what is left.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

/// `AUDIT_GET`: read the audit status.
const AUDIT_GET: u16 = 1000;
/// `AUDIT_SET`: change it.
const AUDIT_SET: u16 = 1001;
/// `AUDIT_ADD_RULE`: add a filter rule.
const AUDIT_ADD_RULE: u16 = 1011;
/// `AUDIT_DEL_RULE`: remove one.
const AUDIT_DEL_RULE: u16 = 1012;
/// A system call's record (pid, ppid, `ses`, the call).
const AUDIT_SYSCALL: u16 = 1300;
/// A path a system call named.
const AUDIT_PATH: u16 = 1302;
/// A socket address a system call named.
const AUDIT_SOCKADDR: u16 = 1306;
/// The working directory of a system call (relative paths).
const AUDIT_CWD: u16 = 1307;
/// End of an event's records.
const AUDIT_EOE: u16 = 1320;
/// A seccomp filter's action on a system call.
const AUDIT_SECCOMP: u16 = 1326;
/// A Landlock denial.
const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
/// A Landlock domain's creation (with its creator's pid) or end.
const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
/// `AUDIT_NLGRP_READLOG`, as a group mask.
const READLOG_GROUP: u32 = 1;
/// `AUDIT_STATUS_ENABLED`.
const STATUS_ENABLED: u32 = 1;
/// The unset audit session (`AUDIT_SID_UNSET`).
pub const SESSION_UNSET: u32 = u32::MAX;
/// How long an event's records are gathered without its end-of-event
/// record (an event outside a system call has none).
const EVENT_WAIT: Duration = Duration::from_millis(300);
/// Most events gathered at once; beyond, the oldest is emitted as it is.
const MAX_PENDING: usize = 1024;
/// What the reader's socket may hold while the gateway is busy: records
/// beyond are dropped by the kernel (for this reader only) and counted.
const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// Whether the kernel audit is on, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditState {
    /// On: denials are logged.
    Enabled,
    /// Off: the kernel logs no denial (`auditctl -e 1` turns it on).
    Disabled,
    /// Not known: asking needs `CAP_AUDIT_CONTROL`.
    Unknown,
}

/// Why the gateway cannot read the kernel audit.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The multicast group refused this process (`CAP_AUDIT_READ` missing).
    #[error("reading the kernel audit needs CAP_AUDIT_READ ({0})")]
    NoCapability(rustix::io::Errno),
    /// The socket could not be made (no audit in this kernel, or a
    /// namespace without it).
    #[error("the kernel audit socket is unavailable: {0}")]
    Socket(rustix::io::Errno),
    /// `AUDIT_SET` failed.
    #[error("cannot turn the kernel audit on ({0}); it needs CAP_AUDIT_CONTROL")]
    Enable(rustix::io::Errno),
    /// `AUDIT_ADD_RULE` failed.
    #[error("cannot add the kernel audit rules of sandbox users ({0}); it needs CAP_AUDIT_CONTROL")]
    Rules(rustix::io::Errno),
    /// The gateway does not run as root: its servers keep its user, and
    /// no rule can tell them from the gateway's other processes.
    #[error(
        "the gateway does not run as root, so its servers keep its user and no kernel audit rule can single them out"
    )]
    NotRoot,
}

/// One access the kernel refused a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Denial {
    /// `landlock`, `seccomp`, `permissions` (the server's user may not: file
    /// modes, ownership), `network_namespace` (no route out of the server's
    /// network namespace) or `rlimit` (the process count limit).
    pub mechanism: &'static str,
    /// What was refused: Landlock's blockers (`fs.read_file`,
    /// `fs.write_file,fs.make_reg`, `net.connect_tcp`, `scope.signal`, …),
    /// `syscall` for seccomp, `eacces` or `eperm` (the system call's error)
    /// for permissions, `net.send_udp` for the network namespace,
    /// `processes` for the process count limit.
    pub denied: String,
    /// The file (Landlock, filesystem; permissions, the first path the
    /// system call named).
    pub path: Option<String>,
    /// `address:port` (Landlock, TCP; network namespace, the destination).
    pub address: Option<String>,
    /// The system call's number (seccomp; Landlock too when the kernel
    /// wrote the event's system call record).
    pub syscall: Option<u32>,
    /// The process that tried (init-namespace pid).
    pub pid: Option<u32>,
    /// Its parent.
    pub ppid: Option<u32>,
    /// Its audit session.
    pub session: Option<u32>,
    /// The Landlock domain (hex, as the kernel names it).
    pub domain: Option<String>,
    /// The pid of the process that made the Landlock domain, when this is
    /// the domain's first denial (the kernel names it once).
    pub domain_creator: Option<u32>,
}

/// Makes a netlink audit socket.
fn socket() -> Result<OwnedFd, AuditError> {
    rustix::net::socket(
        AddressFamily::NETLINK,
        SocketType::RAW,
        Some(netlink::AUDIT),
    )
    .map_err(AuditError::Socket)
}

/// Sends one request to the kernel and returns its `AUDIT_GET` answer (the
/// status words), or nothing for the other requests (acknowledged).
fn request(kind: u16, payload: &[u8]) -> Result<Vec<u32>, rustix::io::Errno> {
    let fd = socket().map_err(|e| match e {
        AuditError::Socket(e)
        | AuditError::NoCapability(e)
        | AuditError::Enable(e)
        | AuditError::Rules(e) => e,
        AuditError::NotRoot => rustix::io::Errno::PERM,
    })?;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(2)),
    )?;
    let message = crate::netlink::request(kind, payload);
    rustix::net::sendto(
        &fd,
        &message,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut buf = vec![0u8; 8192];
    // An acknowledgement, then (for AUDIT_GET) the status; a bounded number
    // of reads, each bounded by the timeout.
    for _ in 0..4 {
        let (n, _) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())?;
        for (typ, body) in messages(&buf[..n]) {
            match typ {
                crate::netlink::NLMSG_ERROR => {
                    let code = crate::netlink::error_of(body).unwrap_or(0);
                    if code != 0 {
                        return Err(rustix::io::Errno::from_raw_os_error(-code));
                    }
                    if kind != AUDIT_GET {
                        return Ok(Vec::new());
                    }
                }
                AUDIT_GET => {
                    return Ok(body
                        .chunks_exact(4)
                        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .collect());
                }
                _ => {}
            }
        }
    }
    Err(rustix::io::Errno::TIMEDOUT)
}

/// Whether the kernel audit is on.
pub fn state() -> AuditState {
    match request(AUDIT_GET, &[]) {
        // mask, enabled, …
        Ok(words) if words.len() >= 2 => {
            if words[1] == 0 {
                AuditState::Disabled
            } else {
                AuditState::Enabled
            }
        }
        _ => AuditState::Unknown,
    }
}

/// Turns the kernel audit on (host-wide; needs `CAP_AUDIT_CONTROL`). When
/// it was off, [`restore`] turns it off again.
pub fn enable() -> Result<(), AuditError> {
    let was = state();
    set_enabled(true).map_err(AuditError::Enable)?;
    if was == AuditState::Disabled
        && let Ok(mut c) = CHANGES.lock()
    {
        c.turned_on = true;
    }
    Ok(())
}

/// Sets the kernel audit's `enabled` flag (host-wide; needs
/// `CAP_AUDIT_CONTROL`).
pub fn set_enabled(on: bool) -> Result<(), rustix::io::Errno> {
    let mut payload = Vec::new();
    for word in [STATUS_ENABLED, u32::from(on)] {
        payload.extend_from_slice(&word.to_ne_bytes());
    }
    payload.resize(40, 0);
    request(AUDIT_SET, &payload).map(|_| ())
}

/// The key of the kernel audit rules the gateway adds (`key=` in the
/// records they make, and how an operator tells them in `auditctl -l`).
pub const RULE_KEY: &str = "portcullis_sandbox";
/// `AUDIT_FILTER_EXIT`: rules checked at the end of a system call.
const FILTER_EXIT: u32 = 0x04;
/// `AUDIT_ALWAYS`.
const ACTION_ALWAYS: u32 = 2;
/// Rule fields: `AUDIT_LOGINUID`, `AUDIT_ARCH`, `AUDIT_EXIT`,
/// `AUDIT_FILTERKEY`.
const FIELD_LOGINUID: u32 = 9;
const FIELD_ARCH: u32 = 11;
const FIELD_EXIT: u32 = 103;
const FIELD_FILTERKEY: u32 = 210;
/// `AUDIT_EQUAL`.
const OP_EQUAL: u32 = 0x4000_0000;
/// `AUDIT_BITMASK_SIZE`, `AUDIT_MAX_FIELDS`.
const MASK_WORDS: usize = 64;
const MAX_FIELDS: usize = 64;
/// The errors the rules select.
const EPERM: i32 = 1;
const EAGAIN: i32 = 11;
const EACCES: i32 = 13;
const ENETUNREACH: i32 = 101;
/// This architecture's `AUDIT_ARCH_*` (a rule naming system calls must say
/// which numbering it means; seccomp kills any other in the sandbox).
#[cfg(target_arch = "x86_64")]
const ARCH: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const ARCH: Option<u32> = Some(0xC000_00B7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH: Option<u32> = None;

/// One kernel audit rule of the gateway: a system call (of `syscalls`, or
/// any) of a process whose login uid is `login_uid` that fails with `errno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    syscalls: Option<Vec<i64>>,
    errno: i32,
    login_uid: u32,
}

impl Rule {
    /// The rules covering the processes of sandbox user `uid` (the login
    /// uid `sandbox-exec` gives them under a root gateway): refusals by
    /// permissions (any call), UDP sends with no route, forks past the
    /// process limit.
    pub fn for_user(uid: u32) -> Vec<Rule> {
        let rule = |syscalls: Option<Vec<i64>>, errno| Rule {
            syscalls,
            errno,
            login_uid: uid,
        };
        #[cfg(target_arch = "x86_64")]
        let forks = vec![libc::SYS_clone, libc::SYS_fork, libc::SYS_vfork];
        #[cfg(not(target_arch = "x86_64"))]
        let forks = vec![libc::SYS_clone];
        vec![
            rule(None, EACCES),
            rule(None, EPERM),
            rule(
                Some(vec![
                    libc::SYS_sendto,
                    libc::SYS_sendmsg,
                    libc::SYS_sendmmsg,
                    libc::SYS_connect,
                ]),
                ENETUNREACH,
            ),
            rule(Some(forks), EAGAIN),
        ]
    }

    /// `struct audit_rule_data` with the key in its buffer.
    fn encode(&self) -> Vec<u8> {
        let mut mask = [0u32; MASK_WORDS];
        match &self.syscalls {
            None => mask = [u32::MAX; MASK_WORDS],
            Some(calls) => {
                for n in calls.iter().filter_map(|n| usize::try_from(*n).ok()) {
                    if n / 32 < MASK_WORDS {
                        mask[n / 32] |= 1 << (n % 32);
                    }
                }
            }
        }
        let mut fields: Vec<(u32, u32)> = Vec::new();
        if let Some(arch) = ARCH {
            fields.push((FIELD_ARCH, arch));
        }
        // The kernel compares the return value as 32 bits.
        fields.push((FIELD_EXIT, (-self.errno) as u32));
        fields.push((FIELD_LOGINUID, self.login_uid));
        fields.push((FIELD_FILTERKEY, RULE_KEY.len() as u32));
        let mut words = vec![FILTER_EXIT, ACTION_ALWAYS, fields.len() as u32];
        words.extend_from_slice(&mask);
        let column = |f: &dyn Fn(&(u32, u32)) -> u32| {
            let mut c: Vec<u32> = fields.iter().map(f).collect();
            c.resize(MAX_FIELDS, 0);
            c
        };
        words.extend(column(&|(field, _)| *field));
        words.extend(column(&|(_, value)| *value));
        words.extend(column(&|_| OP_EQUAL));
        words.push(RULE_KEY.len() as u32);
        let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        out.extend_from_slice(RULE_KEY.as_bytes());
        out
    }
}

/// What this process changed in the kernel audit, for [`restore`].
#[derive(Default)]
struct Changes {
    /// [`enable`] turned it on.
    turned_on: bool,
    /// Users whose rules are in place (added here, or found there).
    users: BTreeSet<u32>,
    /// Rules added here (not those found there: another gateway's, or left
    /// by one that was killed; removing those could blind a running one).
    added: Vec<Rule>,
}

static CHANGES: Mutex<Changes> = Mutex::new(Changes {
    turned_on: false,
    users: BTreeSet::new(),
    added: Vec::new(),
});

/// Makes sure the rules of sandbox user `uid` ([`Rule::for_user`]) are in
/// the kernel audit (needs `CAP_AUDIT_CONTROL`); once per user and process.
/// Only under a root gateway, whose servers run as `uid` with `uid` as
/// their login uid.
pub fn cover_user(uid: u32) -> Result<(), AuditError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(AuditError::NotRoot);
    }
    let Ok(mut changes) = CHANGES.lock() else {
        return Ok(());
    };
    if changes.users.contains(&uid) {
        return Ok(());
    }
    for rule in Rule::for_user(uid) {
        match request(AUDIT_ADD_RULE, &rule.encode()) {
            Ok(_) => changes.added.push(rule),
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(AuditError::Rules(e)),
        }
    }
    changes.users.insert(uid);
    Ok(())
}

/// Undoes what this process changed in the kernel audit: removes the rules
/// it added and, if [`enable`] turned the audit on, turns it off. Returns
/// how many rules were removed and whether the audit was turned off.
pub fn restore() -> (usize, bool) {
    let Ok(mut changes) = CHANGES.lock() else {
        return (0, false);
    };
    let changes = std::mem::take(&mut *changes);
    let removed = changes
        .added
        .iter()
        .filter(|r| request(AUDIT_DEL_RULE, &r.encode()).is_ok())
        .count();
    let off = changes.turned_on && set_enabled(false).is_ok();
    (removed, off)
}

/// Removes the rules of sandbox user `uid` whoever added them; returns how
/// many there were (tests, and cleaning up after a killed gateway).
pub fn remove_rules(uid: u32) -> usize {
    Rule::for_user(uid)
        .iter()
        .filter(|r| request(AUDIT_DEL_RULE, &r.encode()).is_ok())
        .count()
}

/// Calls [`restore`] when dropped: held by `serve` for its lifetime.
pub struct RestoreOnDrop;

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        let _ = restore();
    }
}

/// Gives this process (and what it starts) an audit session of its own by
/// setting its login uid to `uid`, which the kernel allows once, without
/// privilege, to a process whose login uid is unset. Returns the session,
/// or `None` when it could not be set (then records name only pids).
pub fn start_audit_session(uid: u32) -> Option<u32> {
    let before = own_session();
    std::fs::write("/proc/self/loginuid", uid.to_string()).ok()?;
    own_session().filter(|s| Some(*s) != before && *s != SESSION_UNSET)
}

/// This process's audit session.
pub fn own_session() -> Option<u32> {
    session_of("self")
}

/// The audit session of process `pid` (`"self"` or a number).
pub fn session_of(pid: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/sessionid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The netlink messages of one datagram: (type, payload).
fn messages(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let typ = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 {
            break;
        }
        let end = len.min(data.len());
        out.push((typ, &data[16..end]));
        let next = (end + 3) & !3;
        if next >= data.len() {
            break;
        }
        data = &data[next..];
    }
    out
}

/// Reads the kernel audit's multicast group.
pub struct Reader {
    fd: OwnedFd,
    events: Events,
    /// Datagrams the kernel dropped for this reader (`ENOBUFS`).
    pub overruns: u64,
}

impl Reader {
    /// Joins the multicast group (needs `CAP_AUDIT_READ`).
    pub fn open() -> Result<Self, AuditError> {
        let fd = socket()?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, READLOG_GROUP)).map_err(|e| {
            if e == rustix::io::Errno::PERM || e == rustix::io::Errno::ACCESS {
                AuditError::NoCapability(e)
            } else {
                AuditError::Socket(e)
            }
        })?;
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, RECEIVE_BUFFER);
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(EVENT_WAIT / 2),
        )
        .map_err(AuditError::Socket)?;
        Ok(Reader {
            fd,
            events: Events::default(),
            overruns: 0,
        })
    }

    /// Blocks until some denials are complete (or a short while passed):
    /// returns them, possibly none. Fails only if the socket does.
    pub fn read(&mut self) -> Result<Vec<Denial>, AuditError> {
        let mut buf = vec![0u8; 16 * 1024];
        match rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty()) {
            Ok((n, _)) => {
                for (typ, body) in messages(&buf[..n.min(buf.len())]) {
                    if let Ok(text) = std::str::from_utf8(body) {
                        self.events.add(typ, text.trim_end_matches('\0'));
                    }
                }
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::NOBUFS) => self.overruns += 1,
            Err(e) => return Err(AuditError::Socket(e)),
        }
        Ok(self.events.take_done(Instant::now()))
    }
}

/// One event's records gathered so far.
#[derive(Default)]
struct Event {
    first_seen: Option<Instant>,
    denials: Vec<Denial>,
    syscall: Option<Fields>,
    /// The first path the system call named, and its working directory.
    path: Option<String>,
    cwd: Option<String>,
    /// The socket address it named.
    address: Option<String>,
    done: bool,
}

/// Events by serial number.
#[derive(Default)]
struct Events {
    pending: HashMap<u64, Event>,
}

impl Events {
    /// Adds one record (`audit(TIME:SERIAL): key=value …`).
    fn add(&mut self, typ: u16, text: &str) {
        if !matches!(
            typ,
            AUDIT_SYSCALL
                | AUDIT_EOE
                | AUDIT_SECCOMP
                | AUDIT_LANDLOCK_ACCESS
                | AUDIT_LANDLOCK_DOMAIN
                | AUDIT_PATH
                | AUDIT_SOCKADDR
                | AUDIT_CWD
        ) {
            return;
        }
        let Some((serial, rest)) = header(text) else {
            return;
        };
        let fields = Fields::parse(rest);
        if typ == AUDIT_LANDLOCK_DOMAIN && fields.get("status") != Some("allocated") {
            return;
        }
        if typ == AUDIT_SYSCALL
            && !self.pending.contains_key(&serial)
            && fields.text("key").as_deref() != Some(RULE_KEY)
        {
            // Not one of ours: a system call record without a denial, and
            // not of a rule of the gateway.
            return;
        }
        if matches!(typ, AUDIT_EOE | AUDIT_PATH | AUDIT_SOCKADDR | AUDIT_CWD)
            && !self.pending.contains_key(&serial)
        {
            return;
        }
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&serial) {
            // Keeps memory bounded under a flood; what is dropped is
            // the oldest incomplete event.
            if let Some(oldest) = self.pending.keys().min().copied() {
                self.pending.remove(&oldest);
            }
        }
        let event = self.pending.entry(serial).or_default();
        event.first_seen.get_or_insert_with(Instant::now);
        match typ {
            AUDIT_LANDLOCK_ACCESS => event.denials.push(landlock_denial(&fields)),
            AUDIT_LANDLOCK_DOMAIN => {
                let creator = fields.num("pid");
                for d in &mut event.denials {
                    if d.domain.as_deref() == fields.get("domain") {
                        d.domain_creator = creator;
                    }
                }
            }
            AUDIT_SECCOMP => {
                // Only kills: a filter's `log` or `errno` actions are not
                // the sandbox's (its filter kills).
                if fields.get("sig").is_some_and(|s| s != "0") {
                    event.denials.push(Denial {
                        mechanism: "seccomp",
                        denied: "syscall".into(),
                        syscall: fields.num("syscall"),
                        pid: fields.num("pid"),
                        session: fields.num("ses"),
                        ..Denial::default()
                    });
                }
            }
            AUDIT_SYSCALL => event.syscall = Some(fields),
            AUDIT_PATH => {
                if event.path.is_none() {
                    event.path = fields.text("name");
                }
            }
            AUDIT_CWD => event.cwd = fields.text("cwd"),
            AUDIT_SOCKADDR => event.address = fields.get("saddr").and_then(socket_address),
            _ => event.done = true,
        }
    }

    /// The denials of every complete event (its end seen, or waited for
    /// long enough), completed with its system call record.
    fn take_done(&mut self, now: Instant) -> Vec<Denial> {
        let done: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, e)| {
                e.done
                    || e.first_seen
                        .is_some_and(|t| now.duration_since(t) >= EVENT_WAIT)
            })
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        let mut serials = done;
        serials.sort_unstable();
        for serial in serials {
            let Some(mut event) = self.pending.remove(&serial) else {
                continue;
            };
            // A refusal only a rule of the gateway saw (Landlock and
            // seccomp write their own records).
            if event.denials.is_empty()
                && let Some(d) = event.syscall.as_ref().and_then(|sys| {
                    let path = match (event.path.take(), &event.cwd) {
                        (Some(p), Some(cwd)) if !p.starts_with('/') => {
                            Some(format!("{}/{p}", cwd.trim_end_matches('/')))
                        }
                        (p, _) => p,
                    };
                    refusal(sys, path, event.address.take())
                })
            {
                event.denials.push(d);
            }
            for mut d in event.denials {
                if let Some(sys) = &event.syscall {
                    d.pid = d.pid.or(sys.num("pid"));
                    d.ppid = d.ppid.or(sys.num("ppid"));
                    d.session = d.session.or(sys.num("ses"));
                    d.syscall = d.syscall.or(sys.num("syscall"));
                }
                d.session = d.session.filter(|s| *s != SESSION_UNSET);
                out.push(d);
            }
        }
        out
    }
}

/// `audit(1700000000.123:42): rest` → (42, rest).
fn header(text: &str) -> Option<(u64, &str)> {
    let inner = text.strip_prefix("audit(")?;
    let (stamp, rest) = inner.split_once("):")?;
    let serial = stamp.split_once(':')?.1.parse().ok()?;
    Some((serial, rest.trim_start()))
}

fn landlock_denial(fields: &Fields) -> Denial {
    // TCP: `daddr=` and `dest=` for connect, `saddr=` and `src=` for bind.
    let address = [("daddr", "dest"), ("saddr", "src")]
        .iter()
        .find_map(|(address, port)| {
            let port = fields.get(port)?;
            Some(match fields.get(address) {
                Some(a) => join_address(a, port),
                None => format!(":{port}"),
            })
        });
    Denial {
        mechanism: "landlock",
        denied: fields.get("blockers").unwrap_or("unknown").to_string(),
        path: fields.text("path"),
        address,
        domain: fields.get("domain").map(str::to_string),
        ..Denial::default()
    }
}

/// The denial a rule of the gateway ([`Rule::for_user`]) recorded: what the
/// system call's error says was refused.
fn refusal(sys: &Fields, path: Option<String>, address: Option<String>) -> Option<Denial> {
    if sys.text("key").as_deref() != Some(RULE_KEY) {
        return None;
    }
    let exit: i64 = sys.get("exit")?.parse().ok()?;
    let (mechanism, denied, path, address) = match i32::try_from(-exit).ok()? {
        EACCES => ("permissions", "eacces", path, None),
        EPERM => ("permissions", "eperm", path, None),
        ENETUNREACH => ("network_namespace", "net.send_udp", None, address),
        EAGAIN => ("rlimit", "processes", None, None),
        _ => return None,
    };
    Some(Denial {
        mechanism,
        denied: denied.to_string(),
        path,
        address,
        ..Denial::default()
    })
}

/// A `SOCKADDR` record's `saddr` (hex of a `struct sockaddr`) as
/// `address:port`, for IPv4 and IPv6.
fn socket_address(hex_text: &str) -> Option<String> {
    let b = hex::decode(hex_text).ok()?;
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match family {
        2 => {
            let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(format!("{}:{port}", std::net::Ipv4Addr::from(a)))
        }
        10 => {
            let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

fn join_address(address: &str, port: &str) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// A record's `key=value` fields.
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(rest: &str) -> Self {
        Fields(
            rest.split(' ')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn num(&self, key: &str) -> Option<u32> {
        self.get(key)?.parse().ok()
    }

    /// A string field the kernel wrote as untrusted: in quotes, or as hex
    /// when it holds a space, a quote or a control character.
    fn text(&self, key: &str) -> Option<String> {
        let v = self.get(key)?;
        if let Some(quoted) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            return Some(quoted.to_string());
        }
        let bytes = hex::decode(v).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(records: &[(u16, &str)]) -> Vec<Denial> {
        let mut events = Events::default();
        for (typ, text) in records {
            events.add(*typ, text);
        }
        events.take_done(Instant::now() + EVENT_WAIT)
    }

    #[test]
    fn a_landlock_file_denial_with_its_system_call() {
        let got = feed(&[
            (
                1423,
                "audit(1796654460.820:2): domain=1fa5338b6 blockers=fs.read_file path=\"/etc/hostname\" dev=\"vda\" ino=611",
            ),
            (
                1424,
                "audit(1796654460.820:2): domain=1fa5338b6 status=allocated mode=enforcing pid=17855 uid=0 exe=\"/usr/bin/python3\" comm=\"python3\"",
            ),
            (
                1300,
                "audit(1796654460.820:2): arch=c000003e syscall=257 success=no exit=-13 ppid=17714 pid=17856 auid=65534 uid=0 ses=7 comm=\"python3\"",
            ),
            (1320, "audit(1796654460.820:2): "),
            // Another process's unrelated event and a domain's end.
            (
                1300,
                "audit(1796654460.820:3): arch=c000003e syscall=49 pid=1 ses=1",
            ),
            (
                1424,
                "audit(1796654460.888:4): domain=1fa5338b6 status=deallocated denials=1",
            ),
        ]);
        assert_eq!(
            got,
            [Denial {
                mechanism: "landlock",
                denied: "fs.read_file".into(),
                path: Some("/etc/hostname".into()),
                syscall: Some(257),
                pid: Some(17856),
                ppid: Some(17714),
                session: Some(7),
                domain: Some("1fa5338b6".into()),
                domain_creator: Some(17855),
                ..Denial::default()
            }]
        );
    }

    #[test]
    fn tcp_hex_paths_and_seccomp_kills() {
        let got = feed(&[
            (
                1423,
                "audit(1.0:10): domain=1a blockers=net.connect_tcp daddr=127.0.0.1 dest=8080",
            ),
            (
                1423,
                "audit(1.0:11): domain=1a blockers=fs.write_file,fs.make_reg path=2F746D702F6120622E747874 dev=\"vda\" ino=3",
            ),
            (
                1326,
                "audit(1.0:12): auid=65534 uid=65534 gid=65534 ses=9 pid=4242 comm=\"python3\" exe=\"/usr/bin/python3\" sig=31 arch=c000003e syscall=101 compat=0 ip=0x7f code=0x80000000",
            ),
            // seccomp's `log` action: not a kill.
            (
                1326,
                "audit(1.0:13): auid=0 ses=9 pid=4242 sig=0 syscall=1 code=0x7ffc0000",
            ),
        ]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].address.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(got[0].denied, "net.connect_tcp");
        assert_eq!(got[1].path.as_deref(), Some("/tmp/a b.txt"));
        assert_eq!(got[1].denied, "fs.write_file,fs.make_reg");
        assert_eq!(
            (got[2].mechanism, got[2].syscall, got[2].pid, got[2].session),
            ("seccomp", Some(101), Some(4242), Some(9))
        );
    }

    #[test]
    fn refusals_of_the_gateways_rules() {
        let got = feed(&[
            // The state directory's modes refuse the server's user.
            (
                1300,
                "audit(2.0:20): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c ppid=10 pid=11 auid=65534 uid=65534 ses=5 comm=\"python3\" key=\"portcullis_sandbox\"",
            ),
            (1307, "audit(2.0:20): cwd=\"/srv/work\""),
            (
                1302,
                "audit(2.0:20): item=0 name=\"/var/lib/portcullis/ca.key\" nametype=UNKNOWN",
            ),
            (1320, "audit(2.0:20): "),
            // A relative path, against the working directory.
            (
                1300,
                "audit(2.0:21): arch=c000003e syscall=257 success=no exit=-1 pid=11 ses=5 key=\"portcullis_sandbox\"",
            ),
            (1307, "audit(2.0:21): cwd=\"/srv/work\""),
            (1302, "audit(2.0:21): item=0 name=\"x/y\" nametype=UNKNOWN"),
            (1320, "audit(2.0:21): "),
            // A UDP datagram with no route out of the network namespace.
            (
                1300,
                "audit(2.0:22): arch=c000003e syscall=44 success=no exit=-101 pid=12 ses=5 key=\"portcullis_sandbox\"",
            ),
            (
                1306,
                "audit(2.0:22): saddr=02001F907F0000010000000000000000",
            ),
            (1320, "audit(2.0:22): "),
            // A fork past the process limit.
            (
                1300,
                "audit(2.0:23): arch=c000003e syscall=57 success=no exit=-11 pid=13 ses=5 key=\"portcullis_sandbox\"",
            ),
            (1320, "audit(2.0:23): "),
            // Another rule's record, and one of ours whose error is not a refusal.
            (
                1300,
                "audit(2.0:24): arch=c000003e syscall=257 success=no exit=-13 pid=14 ses=5 key=\"other\"",
            ),
            (1320, "audit(2.0:24): "),
            (
                1300,
                "audit(2.0:25): arch=c000003e syscall=257 success=no exit=-2 pid=14 ses=5 key=\"portcullis_sandbox\"",
            ),
            (1320, "audit(2.0:25): "),
        ]);
        let brief: Vec<_> = got
            .iter()
            .map(|d| {
                (
                    d.mechanism,
                    d.denied.as_str(),
                    d.path.as_deref(),
                    d.address.as_deref(),
                    d.syscall,
                    d.session,
                )
            })
            .collect();
        assert_eq!(
            brief,
            [
                (
                    "permissions",
                    "eacces",
                    Some("/var/lib/portcullis/ca.key"),
                    None,
                    Some(257),
                    Some(5)
                ),
                (
                    "permissions",
                    "eperm",
                    Some("/srv/work/x/y"),
                    None,
                    Some(257),
                    Some(5)
                ),
                (
                    "network_namespace",
                    "net.send_udp",
                    None,
                    Some("127.0.0.1:8080"),
                    Some(44),
                    Some(5)
                ),
                ("rlimit", "processes", None, None, Some(57), Some(5)),
            ]
        );
        // A Landlock denial the rule saw too is one denial, Landlock's.
        let both = feed(&[
            (
                1423,
                "audit(3.0:1): domain=1a blockers=fs.read_file path=\"/etc/shadow\"",
            ),
            (
                1300,
                "audit(3.0:1): arch=c000003e syscall=257 success=no exit=-13 pid=9 ses=5 key=\"portcullis_sandbox\"",
            ),
            (1302, "audit(3.0:1): item=0 name=\"/etc/shadow\""),
            (1320, "audit(3.0:1): "),
        ]);
        assert_eq!(both.len(), 1, "{both:?}");
        assert_eq!(both[0].mechanism, "landlock");
        assert_eq!(
            socket_address("0A001F9000000000000000000000000000000000000000010000000000000000")
                .as_deref(),
            Some("[::1]:8080")
        );
    }

    #[test]
    fn rules_encode_as_audit_rule_data() {
        let rules = Rule::for_user(65_534);
        assert_eq!(rules.len(), 4);
        let data = rules[2].encode();
        // flags, action, field count, mask, fields, values, flags, buflen, key.
        assert_eq!(data.len(), (3 + 64 + 3 * 64 + 1) * 4 + RULE_KEY.len());
        let word = |i: usize| u32::from_ne_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!((word(0), word(1)), (FILTER_EXIT, ACTION_ALWAYS));
        let sendto = libc::SYS_sendto as usize;
        assert_ne!(word(3 + sendto / 32) & (1 << (sendto % 32)), 0);
        assert_eq!(word(3), 0, "system calls 0-31 are not in this rule");
        let count = word(2) as usize;
        let fields: Vec<(u32, u32, u32)> = (0..count)
            .map(|i| (word(67 + i), word(131 + i), word(195 + i)))
            .collect();
        assert!(fields.contains(&(FIELD_EXIT, (-101i32) as u32, OP_EQUAL)));
        assert!(fields.contains(&(FIELD_LOGINUID, 65_534, OP_EQUAL)));
        assert!(fields.contains(&(FIELD_FILTERKEY, RULE_KEY.len() as u32, OP_EQUAL)));
        assert!(data.ends_with(RULE_KEY.as_bytes()));
        assert_eq!(rules[0].encode()[12..16], [0xff; 4], "any system call");
    }

    #[test]
    fn incomplete_events_wait_and_floods_stay_bounded() {
        let mut events = Events::default();
        events.add(
            1423,
            "audit(1.0:1): domain=1a blockers=fs.read_file path=\"/x\"",
        );
        assert!(events.take_done(Instant::now()).is_empty());
        assert_eq!(events.take_done(Instant::now() + EVENT_WAIT).len(), 1);
        for i in 0..(MAX_PENDING as u64 + 10) {
            events.add(
                1423,
                &format!("audit(1.0:{i}): domain=1a blockers=fs.read_file path=\"/x\""),
            );
        }
        assert_eq!(events.pending.len(), MAX_PENDING);
    }

    #[test]
    fn netlink_messages() {
        let mut data = Vec::new();
        for text in ["audit(1.0:1): a=b", "audit(1.0:2): c=de"] {
            data.extend_from_slice(&(16 + text.len() as u32).to_ne_bytes());
            data.extend_from_slice(&1423u16.to_ne_bytes());
            data.extend_from_slice(&[0; 10]);
            data.extend_from_slice(text.as_bytes());
            while data.len() % 4 != 0 {
                data.push(0);
            }
        }
        let got: Vec<_> = messages(&data)
            .into_iter()
            .map(|(t, b)| (t, String::from_utf8_lossy(b).to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (1423, "audit(1.0:1): a=b".to_string()),
                (1423, "audit(1.0:2): c=de".to_string())
            ]
        );
    }
}
