//! Sandbox profiles for the MCP servers Portcullis launches itself
//! (`upstream = "stdio:COMMAND"`), and the confinement that applies one.
//!
//! A [`Profile`] is what a route's `[routes.sandbox]` table says, with every
//! key defaulted to the strict setting: a read-only view of the system's
//! program directories plus the paths the route names, one writable work
//! directory per session, no network, a seccomp allow-list that kills the
//! process on any other system call, resource limits, and only the
//! environment variables the route names. Loosening is explicit
//! ([`Profile::loosenings`]) and shown by `serve --check`.
//!
//! The gateway never confines a process from inside its own (multi-threaded)
//! process: it launches `portcullis sandbox-exec`, a fresh single-threaded
//! process that confines itself with [`exec_confined`] (namespaces, rlimits,
//! Landlock, seccomp, in that order) and then executes the server. So no
//! `pre_exec` hook and no `unsafe` are needed. [`probe`] runs the same steps
//! in a throw-away process to tell which mechanisms the kernel offers.
//!
//! The profile crosses the process boundary as JSON (its one serialized
//! form, also the input of [`Profile::digest`]).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[cfg(target_os = "linux")]
mod confine;
#[cfg(target_os = "linux")]
mod egress;
#[cfg(target_os = "linux")]
pub mod kernel_audit;
#[cfg(target_os = "linux")]
pub mod memory;
#[cfg(target_os = "linux")]
mod netlink;
#[cfg(target_os = "linux")]
mod seccomp;
#[cfg(target_os = "linux")]
pub mod sweep;

#[cfg(target_os = "linux")]
pub use confine::{exec_confined, init_confined, probe};
#[cfg(target_os = "linux")]
pub use egress::receive_listener;

/// Read-only paths every sandboxed server sees (those that exist): the
/// system's programs and libraries, and the few files of `/etc` that the C
/// library, OpenSSL, Node and Python read at start. Not `/etc` as a whole,
/// not `/home`, `/root`, `/var`, `/tmp` or any state directory.
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/locale.alias",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/mime.types",
    "/etc/alternatives",
    "/proc/self",
    "/proc/meminfo",
    "/proc/cpuinfo",
    "/proc/stat",
    "/proc/sys/vm/overcommit_memory",
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/random",
];

/// Device files every sandboxed server may read and write.
pub const DEVICE_RW_PATHS: &[&str] = &["/dev/null", "/dev/zero"];

/// Environment variables every sandboxed server gets from the gateway;
/// `HOME` and `TMPDIR` are set to the session's work directory.
pub const BASE_ENV: &[&str] = &["PATH", "LANG"];

/// The user id a sandboxed server runs as when the gateway runs as root
/// (`nobody`): a process count limit does not bind root, and the state
/// directory's files are then closed to it by their modes too.
pub const DEFAULT_USER: u32 = 65_534;

/// Exit code of `sandbox-exec` when it could not confine itself or execute
/// the server (the server never ran).
pub const SETUP_FAILED_EXIT: i32 = 126;

/// A kernel mechanism a profile relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Landlock (filesystem view, TCP bind/connect, abstract sockets, signals).
    Landlock,
    /// seccomp-BPF (the system-call allow-list).
    Seccomp,
    /// Unprivileged user namespaces (the network namespace needs one).
    UserNamespace,
}

impl Mechanism {
    /// The name used in configuration and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Landlock => "landlock",
            Mechanism::Seccomp => "seccomp",
            Mechanism::UserNamespace => "user_namespace",
        }
    }
}

/// What network a sandboxed server reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// None: an empty network namespace (no interface is up, not even
    /// loopback) and Landlock refuses every TCP bind and connect.
    #[default]
    None,
    /// Only the gateway's egress proxy: the network namespace of `None`
    /// with its loopback up and one listener on it, which the gateway
    /// serves; every destination is decided by policy (`Action::"egress"`).
    /// The server gets `HTTP_PROXY` and `HTTPS_PROXY` pointing at it.
    Egress,
    /// The gateway host's network, unfiltered (a loosening).
    Host,
}

/// Which system calls a sandboxed server may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Syscalls {
    /// The allow-list that runs Node and Python servers; any other call
    /// kills the process (`SIGSYS`).
    #[default]
    Default,
    /// No filter (a loosening).
    Unconfined,
}

/// Resource limits of one sandboxed process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// CPU time in seconds (`RLIMIT_CPU`): `SIGXCPU` at the limit, `SIGKILL`
    /// five seconds later.
    pub cpu_seconds: u64,
    /// Address space in MiB (`RLIMIT_AS`).
    pub memory_mb: u64,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Processes and threads (`RLIMIT_NPROC`, counted in the process's own
    /// user namespace).
    pub processes: u64,
    /// Wall-clock lifetime of one session's process in seconds; the gateway
    /// kills it then.
    pub wall_clock_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_seconds: 300,
            memory_mb: 2_048,
            open_files: 256,
            processes: 64,
            wall_clock_seconds: 3_600,
        }
    }
}

/// A route's sandbox profile (`[routes.sandbox]`). Every key defaults to the
/// strict setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Confine the server at all. `false` is a loosening: the server runs
    /// with the gateway's rights (the environment is still reduced).
    pub enabled: bool,
    /// Absolute paths the server may read and execute below, beyond
    /// [`SYSTEM_READ_PATHS`]: its own code, its interpreter's packages.
    pub read: Vec<PathBuf>,
    /// The network it reaches.
    pub network: Network,
    /// The system-call filter.
    pub syscalls: Syscalls,
    /// Names of the gateway's environment variables passed on, beyond
    /// [`BASE_ENV`]. Values are never part of the profile.
    pub env: Vec<String>,
    /// Resource limits.
    pub limits: Limits,
    /// Mechanisms the route may run without when the kernel lacks them
    /// (a loosening); otherwise `serve` refuses to start.
    pub allow_missing: Vec<Mechanism>,
    /// The user id the server runs as when the gateway runs as root.
    pub user: u32,
    /// What the egress proxy lets through (`network = "egress"` only).
    pub egress: EgressRules,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            enabled: true,
            read: Vec::new(),
            network: Network::None,
            syscalls: Syscalls::Default,
            env: Vec::new(),
            limits: Limits::default(),
            allow_missing: Vec::new(),
            user: DEFAULT_USER,
            egress: EgressRules::default(),
        }
    }
}

/// `[routes.sandbox.egress]`: what the egress proxy lets a server send, on
/// top of the policy decision of each destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressRules {
    /// Whether `CONNECT` tunnels may be asked for (each still decided by
    /// policy, with `context.tunnel == true`). The gateway cannot read what
    /// a tunnel carries (TLS end to end), so `false` is how an operator
    /// puts all egress under the content guard: only plain HTTP passes, and
    /// every tunnel is refused with `egress_tunnel_refused`.
    pub tunnels: bool,
    /// What a secret in a plain HTTP request (URL, headers, body) does.
    pub dlp: EgressDlp,
    /// The largest plain HTTP request body the proxy reads (it reads a body
    /// whole to scan it before any byte goes upstream); a larger one is
    /// refused with `egress_body_too_large`.
    pub max_body_bytes: u64,
}

impl Default for EgressRules {
    fn default() -> Self {
        EgressRules {
            tunnels: true,
            dlp: EgressDlp::Block,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// What a secret found in a plain HTTP egress request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressDlp {
    /// Refuse the request (`egress_dlp`) before it reaches the destination;
    /// a body the guard cannot read (compressed, not text, not UTF-8) is
    /// refused too (`egress_unscannable`).
    #[default]
    Block,
    /// Forward it; the findings are audited and given to policy
    /// (`context.content`). A loosening.
    Alert,
    /// Do not scan (a loosening): `context.content.scanned` is `false`.
    Off,
}

impl EgressDlp {
    /// The name used in configuration and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressDlp::Block => "block",
            EgressDlp::Alert => "alert",
            EgressDlp::Off => "off",
        }
    }
}

/// What a kernel offers, as [`probe`] found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Support {
    /// The Landlock ABI version, `0` when Landlock is unavailable.
    pub landlock_abi: u32,
    /// A seccomp filter could be installed.
    pub seccomp: bool,
    /// An unprivileged user namespace (with a network namespace) could be made.
    pub user_namespace: bool,
}

impl Support {
    /// Whether the kernel offers `m`.
    pub fn has(&self, m: Mechanism) -> bool {
        match m {
            Mechanism::Landlock => self.landlock_abi > 0,
            Mechanism::Seccomp => self.seccomp,
            Mechanism::UserNamespace => self.user_namespace,
        }
    }
}

/// The configuration errors of a profile.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    /// A `read` path is relative.
    #[error("`read` path `{0}` must be absolute")]
    RelativePath(String),
    /// A `read` path does not exist.
    #[error("`read` path `{0}` does not exist")]
    MissingPath(String),
    /// An `env` entry is not a variable name, or is one the gateway sets.
    #[error("`env` entry `{0}` is not a variable name the route may pass on")]
    BadEnv(String),
    /// A limit is zero.
    #[error("limit `{0}` must be at least 1")]
    ZeroLimit(&'static str),
}

/// The kernel lacks a mechanism the profile needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the kernel lacks {} which the sandbox of this route needs; add it to `[routes.sandbox] allow_missing` to run without it",
    .0.iter().map(|m| format!("`{}`", m.as_str())).collect::<Vec<_>>().join(", ")
)]
pub struct Missing(pub Vec<Mechanism>);

impl Profile {
    /// Checks paths, names and limits.
    pub fn check(&self) -> Result<(), ProfileError> {
        for p in &self.read {
            if !p.is_absolute() {
                return Err(ProfileError::RelativePath(p.display().to_string()));
            }
            if !p.exists() {
                return Err(ProfileError::MissingPath(p.display().to_string()));
            }
        }
        for name in &self.env {
            let ok = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit()
                && !matches!(name.as_str(), "HOME" | "TMPDIR");
            if !ok {
                return Err(ProfileError::BadEnv(name.clone()));
            }
        }
        let l = &self.limits;
        for (v, name) in [
            (l.cpu_seconds, "cpu_seconds"),
            (l.memory_mb, "memory_mb"),
            (l.open_files, "open_files"),
            (l.processes, "processes"),
            (l.wall_clock_seconds, "wall_clock_seconds"),
            (self.egress.max_body_bytes, "egress.max_body_bytes"),
        ] {
            if v == 0 {
                return Err(ProfileError::ZeroLimit(name));
            }
        }
        Ok(())
    }

    /// The profile's one serialized form (what `sandbox-exec --profile` reads).
    pub fn to_json(&self) -> String {
        // A struct of strings, integers and enums always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads [`Profile::to_json`]'s form.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// SHA-256 of [`Profile::to_json`], lowercase hex: named in the audit
    /// record of every process started under this profile.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.to_json().as_bytes()))
    }

    /// The mechanisms this profile relies on.
    pub fn needs(&self) -> Vec<Mechanism> {
        if !self.enabled {
            return Vec::new();
        }
        let mut out = vec![Mechanism::Landlock, Mechanism::UserNamespace];
        if self.syscalls == Syscalls::Default {
            out.push(Mechanism::Seccomp);
        }
        out
    }

    /// Fails when `support` lacks a mechanism this profile needs and does
    /// not allow to be missing.
    pub fn check_support(&self, support: &Support) -> Result<(), Missing> {
        let missing: Vec<Mechanism> = self
            .needs()
            .into_iter()
            .filter(|m| {
                !support.has(*m)
                    && (!self.allow_missing.contains(m)
                        // Egress without its own network namespace would be
                        // the host's network: not allowed to be missing.
                        || (*m == Mechanism::UserNamespace && self.network == Network::Egress))
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Missing(missing))
        }
    }

    /// What this profile loosens compared with the default, one phrase each
    /// (empty for the strict default, extra `read` paths aside).
    pub fn loosenings(&self) -> Vec<String> {
        if !self.enabled {
            return vec!["sandbox disabled (`enabled = false`)".to_string()];
        }
        let mut out = Vec::new();
        if self.network == Network::Host {
            out.push("network = \"host\"".to_string());
        }
        if self.syscalls == Syscalls::Unconfined {
            out.push("syscalls = \"unconfined\"".to_string());
        }
        if !self.allow_missing.is_empty() {
            out.push(format!(
                "allow_missing = [{}]",
                self.allow_missing
                    .iter()
                    .map(|m| format!("\"{}\"", m.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.network == Network::Egress {
            let e = &self.egress;
            if e.dlp != EgressDlp::Block {
                out.push(format!("egress.dlp = \"{}\"", e.dlp.as_str()));
            }
            let default = EgressRules::default().max_body_bytes;
            if e.max_body_bytes > default {
                out.push(format!(
                    "egress.max_body_bytes = {} (default {default})",
                    e.max_body_bytes
                ));
            }
        }
        let (d, l) = (Limits::default(), &self.limits);
        for (name, v, dv) in [
            ("cpu_seconds", l.cpu_seconds, d.cpu_seconds),
            ("memory_mb", l.memory_mb, d.memory_mb),
            ("open_files", l.open_files, d.open_files),
            ("processes", l.processes, d.processes),
            (
                "wall_clock_seconds",
                l.wall_clock_seconds,
                d.wall_clock_seconds,
            ),
        ] {
            if v > dv {
                out.push(format!("limits.{name} = {v} (default {dv})"));
            }
        }
        out
    }

    /// One line for `serve --check`.
    pub fn summary(&self) -> String {
        let digest = self.digest();
        let loose = self.loosenings();
        let mut reads = if self.read.is_empty() {
            String::new()
        } else {
            format!(
                ", also reads {}",
                self.read
                    .iter()
                    .map(|p| format!("`{}`", p.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        if self.enabled && self.network == Network::Egress {
            reads.push_str(", network only through the gateway's policy-checked egress proxy");
            reads.push_str(if self.egress.tunnels {
                " (plain HTTP scanned; CONNECT tunnels are not)"
            } else {
                " (plain HTTP only, scanned; tunnels refused)"
            });
        }
        if loose.is_empty() {
            format!("strict (profile sha256:{}){reads}", &digest[..16])
        } else {
            format!(
                "LOOSENED: {} (profile sha256:{}){reads}",
                loose.join("; "),
                &digest[..16]
            )
        }
    }

    /// The read-only paths a server sees: the system's and the route's.
    pub fn read_paths(&self) -> Vec<PathBuf> {
        SYSTEM_READ_PATHS
            .iter()
            .map(PathBuf::from)
            .chain(self.read.iter().cloned())
            .collect()
    }
}

/// How a sandboxed process ended, from its wait status, for the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// It exited by itself.
    Exited,
    /// `sandbox-exec` could not confine it or execute it.
    SetupFailed,
    /// The seccomp filter killed it (`SIGSYS`): a denied system call.
    Seccomp,
    /// It ran out of CPU time (`SIGXCPU`, or `SIGKILL` past the hard limit).
    CpuLimit,
    /// Another signal ended it.
    Signaled,
}

impl ExitCause {
    /// Reads a wait status (exit code or terminating signal).
    pub fn of(code: Option<i32>, signal: Option<i32>) -> Self {
        match (code, signal) {
            (Some(SETUP_FAILED_EXIT), _) => ExitCause::SetupFailed,
            (Some(_), _) => ExitCause::Exited,
            // SIGSYS, SIGXCPU.
            (None, Some(31)) => ExitCause::Seccomp,
            (None, Some(24)) => ExitCause::CpuLimit,
            _ => ExitCause::Signaled,
        }
    }

    /// The word used in the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitCause::Exited => "exited",
            ExitCause::SetupFailed => "sandbox_setup_failed",
            ExitCause::Seccomp => "seccomp_violation",
            ExitCause::CpuLimit => "cpu_limit",
            ExitCause::Signaled => "signaled",
        }
    }

    /// Whether the sandbox stopped something the server tried.
    pub fn is_violation(self) -> bool {
        matches!(self, ExitCause::Seccomp | ExitCause::CpuLimit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Profile, String> {
        let p: Profile = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        p.check().map_err(|e| e.to_string())?;
        Ok(p)
    }

    #[test]
    fn the_default_is_strict_and_has_a_stable_digest() {
        let p = parse("").unwrap();
        assert_eq!(p, Profile::default());
        assert!(p.loosenings().is_empty());
        assert!(p.summary().starts_with("strict"));
        assert_eq!(p.digest(), Profile::default().digest());
        assert_eq!(
            p.needs(),
            [
                Mechanism::Landlock,
                Mechanism::UserNamespace,
                Mechanism::Seccomp
            ]
        );
        assert_eq!(Profile::from_json(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn loosenings_are_named() {
        let p = parse(
            "network = \"host\"\nsyscalls = \"unconfined\"\nallow_missing = [\"landlock\"]\n[limits]\ncpu_seconds = 9999\n",
        )
        .unwrap();
        let l = p.loosenings().join("; ");
        for want in [
            "network = \"host\"",
            "syscalls = \"unconfined\"",
            "allow_missing = [\"landlock\"]",
            "limits.cpu_seconds = 9999",
        ] {
            assert!(l.contains(want), "{l}");
        }
        assert!(p.summary().starts_with("LOOSENED"));
        assert_ne!(p.digest(), Profile::default().digest());
        let egress =
            parse("network = \"egress\"\n[egress]\ndlp = \"alert\"\nmax_body_bytes = 9999999\n")
                .unwrap();
        assert_eq!(
            egress.loosenings(),
            [
                "egress.dlp = \"alert\"",
                "egress.max_body_bytes = 9999999 (default 1048576)"
            ]
        );
        let scanned = parse("network = \"egress\"\n[egress]\ntunnels = false\n").unwrap();
        assert!(scanned.loosenings().is_empty());
        assert!(
            scanned
                .summary()
                .contains("plain HTTP only, scanned; tunnels refused"),
            "{}",
            scanned.summary()
        );
        let off = parse("enabled = false").unwrap();
        assert_eq!(off.loosenings(), ["sandbox disabled (`enabled = false`)"]);
        assert!(off.needs().is_empty());
    }

    #[test]
    fn invalid_profiles_fail_loudly() {
        for (text, want) in [
            ("netwrk = \"none\"", "unknown field `netwrk`"),
            ("network = \"proxy\"", "unknown variant `proxy`"),
            ("read = [\"relative\"]", "must be absolute"),
            ("read = [\"/no/such/dir/x\"]", "does not exist"),
            ("env = [\"HOME\"]", "`env` entry `HOME`"),
            ("env = [\"A=B\"]", "`env` entry `A=B`"),
            ("[limits]\nprocesses = 0", "limit `processes`"),
            (
                "[egress]\nmax_body_bytes = 0",
                "limit `egress.max_body_bytes`",
            ),
            ("[egress]\ndlp = \"redact\"", "unknown variant `redact`"),
            (
                "allow_missing = [\"apparmor\"]",
                "unknown variant `apparmor`",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn missing_mechanisms_refuse_unless_allowed() {
        let none = Support::default();
        let e = Profile::default().check_support(&none).unwrap_err();
        assert_eq!(e.0.len(), 3);
        assert!(e.to_string().contains("`landlock`"), "{e}");
        let allowed = Profile {
            allow_missing: vec![
                Mechanism::Landlock,
                Mechanism::Seccomp,
                Mechanism::UserNamespace,
            ],
            ..Profile::default()
        };
        assert!(allowed.check_support(&none).is_ok());
        let egress = Profile {
            network: Network::Egress,
            ..allowed.clone()
        };
        assert_eq!(
            egress.check_support(&none).unwrap_err().0,
            [Mechanism::UserNamespace]
        );
        let full = Support {
            landlock_abi: 7,
            seccomp: true,
            user_namespace: true,
        };
        assert!(Profile::default().check_support(&full).is_ok());
    }

    #[test]
    fn exit_causes() {
        for (code, signal, want) in [
            (Some(0), None, "exited"),
            (Some(126), None, "sandbox_setup_failed"),
            (None, Some(31), "seccomp_violation"),
            (None, Some(24), "cpu_limit"),
            (None, Some(9), "signaled"),
        ] {
            assert_eq!(ExitCause::of(code, signal).as_str(), want);
        }
    }
}
