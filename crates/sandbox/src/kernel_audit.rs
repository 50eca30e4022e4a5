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
//! To tell which session a record belongs to, `sandbox-exec` gives each
//! server an audit session of its own ([`start_audit_session`]): the
//! kernel's `ses=` field of every record of that server's processes, which
//! they cannot change (setting it again needs `CAP_AUDIT_CONTROL`, which no
//! sandboxed process has). Where that fails, the process ids in the records
//! are what is left.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

/// `AUDIT_GET`: read the audit status.
const AUDIT_GET: u16 = 1000;
/// `AUDIT_SET`: change it.
const AUDIT_SET: u16 = 1001;
/// A system call's record (pid, ppid, `ses`, the call).
const AUDIT_SYSCALL: u16 = 1300;
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
}

/// One access the kernel refused a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Denial {
    /// `landlock` or `seccomp`.
    pub mechanism: &'static str,
    /// What was refused: Landlock's blockers (`fs.read_file`,
    /// `fs.write_file,fs.make_reg`, `net.connect_tcp`, `scope.signal`, …),
    /// or `syscall` for seccomp.
    pub denied: String,
    /// The file (Landlock, filesystem).
    pub path: Option<String>,
    /// `address:port` (Landlock, TCP).
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
/// status words), or nothing for `AUDIT_SET`.
fn request(kind: u16, payload: &[u8]) -> Result<Vec<u32>, rustix::io::Errno> {
    let fd = socket().map_err(|e| match e {
        AuditError::Socket(e) | AuditError::NoCapability(e) | AuditError::Enable(e) => e,
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
                    if kind == AUDIT_SET {
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

/// Turns the kernel audit on (host-wide; needs `CAP_AUDIT_CONTROL`).
pub fn enable() -> Result<(), AuditError> {
    let mut payload = Vec::new();
    for word in [STATUS_ENABLED, 1] {
        payload.extend_from_slice(&word.to_ne_bytes());
    }
    payload.resize(40, 0);
    request(AUDIT_SET, &payload)
        .map(|_| ())
        .map_err(AuditError::Enable)
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
        if typ == AUDIT_SYSCALL && !self.pending.contains_key(&serial) {
            // Not one of ours: a system call record without a denial.
            return;
        }
        if typ == AUDIT_EOE && !self.pending.contains_key(&serial) {
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
            let Some(event) = self.pending.remove(&serial) else {
                continue;
            };
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
