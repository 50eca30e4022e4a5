//! The confinement itself, run by `portcullis sandbox-exec` in a fresh,
//! single-threaded process just before it executes the server.
//!
//! The order matters:
//! 1. the work directory is made (and, under root, given to the server's user);
//! 2. rlimits that need no namespace (CPU, address space, data, files, core
//!    dumps), after joining the server's memory cgroup where there is one;
//! 3. under root, the process becomes the profile's unprivileged user: a
//!    process count does not bind root, and the files of the state
//!    directory are then closed by their modes as well as by Landlock;
//! 4. a user namespace, with a network namespace when the network is
//!    `none` (no uid mapping is written, so the server has no capability
//!    in it after `execve`), and IPC and UTS namespaces;
//! 5. `RLIMIT_NPROC`, set inside the new namespace so that it counts this
//!    session's processes only;
//! 6. `no_new_privs`, then Landlock (filesystem, TCP, abstract Unix
//!    sockets and signals scoped to the sandbox);
//! 7. seccomp last, since it must allow only what the server needs, then
//!    `execve`.
//!
//! Step 4 also makes a PID namespace. The process that made it is not in it:
//! its first child is. So `sandbox-exec` (the *keeper*) starts itself again
//! as that child (`sandbox-exec --init`, the namespace's *init*), which sets
//! its parent-death signal, takes steps 6–7 and starts the server as its own
//! child. The chain dies with the gateway, even by `kill -9`: the gateway's
//! end kills the keeper (parent-death signal), the keeper's end kills init
//! (the same), and init's end makes the kernel kill every process left in
//! the namespace: the server and whatever it forked, including children that
//! ignore their parent's end. Init reaps orphans and ends with the server;
//! the keeper relays the server's exit (code, or signal) to the gateway.
//! Without the PID namespace (a kernel without user namespaces, allowed by
//! the profile) the keeper takes steps 6–7 itself and executes the server.
//!
//! Where the kernel lacks a mechanism, the step fails unless the profile
//! lists it in `allow_missing`.

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, NetPort, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid, geteuid, setgroups, setresgid, setresuid};

use crate::{DEVICE_RW_PATHS, Mechanism, Network, Profile, Support, Syscalls};

/// The highest Landlock ABI this code asks for (7: scopes of ABI 6, audit
/// controls of 7); older kernels get what they offer (best effort), and
/// none at all is refused unless allowed.
const LANDLOCK_ABI: ABI = ABI::V6;

/// Why confinement failed. The server is not started.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The work directory could not be made.
    #[error("cannot make the work directory `{0}`: {1}")]
    WorkDir(String, std::io::Error),
    /// A step failed and its mechanism is not allowed to be missing.
    #[error("{0}: {1}")]
    Step(&'static str, String),
    /// `execve` failed.
    #[error("cannot execute `{0}`: {1}")]
    Exec(String, std::io::Error),
}

fn step(what: &'static str) -> impl Fn(String) -> ConfineError {
    move |e| ConfineError::Step(what, e)
}

/// Confines this process as `profile` says, then executes `program` with
/// `args` in `work_dir` with this process's environment (through an init
/// process in a PID namespace where the kernel has one, see the module
/// header). Returns only on failure. Must run single-threaded (user
/// namespaces require it).
pub fn exec_confined(
    profile: &Profile,
    work_dir: &Path,
    cgroup: Option<&Path>,
    program: &OsString,
    args: &[OsString],
) -> ConfineError {
    let prepared = match prepare(profile, work_dir, cgroup) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if prepared.pid_namespace {
        return keep(profile, work_dir, prepared.egress_port, program, args);
    }
    if let Err(e) = restrict(profile, work_dir, prepared.egress_port) {
        return e;
    }
    let e = server_command(work_dir, prepared.egress_port, program, args).exec();
    ConfineError::Exec(program.to_string_lossy().into_owned(), e)
}

/// The init of the server's PID namespace (`sandbox-exec --init`): dies with
/// its keeper, takes the last confinement steps, runs the server, reaps
/// orphans, and exits as the server did (a signal as `128 + signal`, which the
/// keeper turns back into the signal). Returns only on failure.
pub fn init_confined(
    profile: &Profile,
    work_dir: &Path,
    egress_port: Option<u16>,
    program: &OsString,
    args: &[OsString],
) -> ConfineError {
    // The keeper is outside this namespace (`getppid` says 0), so whether it
    // already went cannot be read from the parent pid: the gateway's end of
    // standard input closing says the session is over.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        return ConfineError::Step("parent death signal", e.to_string());
    }
    if gateway_gone() {
        return ConfineError::Step("parent death signal", "the gateway exited".into());
    }
    if let Err(e) = restrict(profile, work_dir, egress_port) {
        return e;
    }
    let server = match server_command(work_dir, egress_port, program, args).spawn() {
        Ok(child) => child,
        Err(e) => return ConfineError::Exec(program.to_string_lossy().into_owned(), e),
    };
    let Ok(server) = i32::try_from(server.id()).map(nix::unistd::Pid::from_raw) else {
        return ConfineError::Step("wait for the server", "pid out of range".into());
    };
    loop {
        use nix::sys::wait::{WaitStatus, waitpid};
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == server => std::process::exit(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == server => {
                std::process::exit(128 + signal as i32)
            }
            // An orphan reaped, or a stop/continue report.
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return ConfineError::Step("wait for the server", e.to_string()),
        }
    }
}

/// Whether the gateway has closed its end of standard input (the session's
/// pipe). Looks without reading.
fn gateway_gone() -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
    match poll(&mut fds, Some(&rustix::event::Timespec::default())) {
        Ok(_) => fds[0].revents().contains(PollFlags::HUP),
        Err(_) => false,
    }
}

/// The keeper: starts this executable again as the PID namespace's init
/// (its first child), waits for it and ends as it did. Returns only on
/// failure.
fn keep(
    profile: &Profile,
    work_dir: &Path,
    egress_port: Option<u16>,
    program: &OsString,
    args: &[OsString],
) -> ConfineError {
    let mut init = std::process::Command::new("/proc/self/exe");
    init.arg("sandbox-exec")
        .arg("--init")
        .arg("--profile")
        .arg(profile.to_json())
        .arg("--work-dir")
        .arg(work_dir);
    if let Some(port) = egress_port {
        init.arg("--egress-port").arg(port.to_string());
    }
    init.arg("--").arg(program).args(args);
    let status = match init.status() {
        Ok(status) => status,
        Err(e) => return ConfineError::Exec("the sandbox's init".into(), e),
    };
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        // Init ends by a signal only when killed from outside (SIGKILL).
        (_, Some(signal)) => relay_signal(signal),
        (Some(code), _) if (129..=192).contains(&code) => relay_signal(code - 128),
        (Some(code), _) => std::process::exit(code),
        (None, None) => std::process::exit(crate::SETUP_FAILED_EXIT),
    }
}

/// Ends this process by `signal` (so the gateway reads the server's cause:
/// seccomp, CPU limit, ...), or with `128 + signal` for one whose default
/// action does not end a process.
fn relay_signal(signal: i32) -> ! {
    if let Ok(s) = nix::sys::signal::Signal::try_from(signal) {
        let _ = nix::sys::signal::raise(s);
    }
    std::process::exit(128 + signal)
}

/// The server's command: in its work directory, with the proxy variables
/// when it reaches the network through the egress proxy.
fn server_command(
    work_dir: &Path,
    egress_port: Option<u16>,
    program: &OsString,
    args: &[OsString],
) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.args(args).current_dir(work_dir);
    if let Some(port) = egress_port {
        // Both spellings: libraries differ in which they read.
        let proxy = format!("http://127.0.0.1:{port}");
        for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            command.env(key, &proxy);
        }
        for key in ["NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"] {
            command.env_remove(key);
        }
    }
    command
}

/// What [`prepare`] set up.
struct Prepared {
    /// The port of the egress proxy inside the sandbox, with `network =
    /// "egress"`.
    egress_port: Option<u16>,
    /// Whether this process's children start in a new PID namespace.
    pid_namespace: bool,
}

/// Steps 1–5 of the module header.
fn prepare(
    profile: &Profile,
    work_dir: &Path,
    cgroup: Option<&Path>,
) -> Result<Prepared, ConfineError> {
    let root = geteuid().is_root();
    let parent = nix::unistd::getppid();
    // First, while this process still has the gateway's uid: its children
    // and itself are then bounded together.
    if let Some(dir) = cgroup {
        crate::memory::join(dir).map_err(|e| ConfineError::Step("cgroup", e.to_string()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(work_dir)
        .map_err(|e| ConfineError::WorkDir(work_dir.display().to_string(), e))?;
    if !profile.enabled {
        return Ok(Prepared {
            egress_port: None,
            pid_namespace: false,
        });
    }
    // An audit session of its own, so that the kernel's records of what
    // Landlock and seccomp refuse this server name it (`ses=`), and the
    // gateway can tell its session. Before the uid change: a login uid
    // already set can be changed by root only. Not fatal: without it the
    // records still name the processes.
    let _ = crate::kernel_audit::start_audit_session(if root {
        profile.user
    } else {
        geteuid().as_raw()
    });
    if root {
        std::os::unix::fs::chown(work_dir, Some(profile.user), Some(profile.user))
            .map_err(|e| ConfineError::WorkDir(work_dir.display().to_string(), e))?;
    }
    let l = &profile.limits;
    let limit = |r: Resource, soft: u64, hard: u64| {
        setrlimit(r, soft, hard).map_err(|e| ConfineError::Step("setrlimit", e.to_string()))
    };
    limit(Resource::RLIMIT_CPU, l.cpu_seconds, l.cpu_seconds + 5)?;
    let bytes = l.memory_mb.saturating_mul(1024 * 1024);
    limit(Resource::RLIMIT_AS, bytes, bytes)?;
    limit(Resource::RLIMIT_DATA, bytes, bytes)?;
    limit(Resource::RLIMIT_NOFILE, l.open_files, l.open_files)?;
    limit(Resource::RLIMIT_CORE, 0, 0)?;

    if root {
        let (uid, gid) = (Uid::from_raw(profile.user), Gid::from_raw(profile.user));
        setgroups(&[]).map_err(|e| ConfineError::Step("setgroups", e.to_string()))?;
        setresgid(gid, gid, gid).map_err(|e| ConfineError::Step("setresgid", e.to_string()))?;
        setresuid(uid, uid, uid).map_err(|e| ConfineError::Step("setresuid", e.to_string()))?;
    }

    // The server dies with the gateway (`SIGKILL` when the thread that
    // started it exits, which for the gateway's runtime workers is the
    // process's end). Set after the uid change, which clears it; if the
    // gateway is already gone, stop here.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| ConfineError::Step("parent death signal", e.to_string()))?;
    if nix::unistd::getppid() != parent {
        return Err(ConfineError::Step(
            "parent death signal",
            "the gateway exited".into(),
        ));
    }

    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWPID;
    if profile.network != Network::Host {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let unshared = unshare(flags);
    if let Err(e) = unshared {
        // Egress without its own network namespace would be the host's
        // network: never, whatever `allow_missing` says.
        if profile.network == Network::Egress
            || !profile.allow_missing.contains(&Mechanism::UserNamespace)
        {
            return Err(ConfineError::Step("user namespace", e.to_string()));
        }
    }
    let egress_port = match profile.network {
        Network::Egress => Some(crate::egress::open_in_sandbox().map_err(step("egress"))?),
        Network::None | Network::Host => None,
    };
    limit(Resource::RLIMIT_NPROC, l.processes, l.processes)?;
    Ok(Prepared {
        egress_port,
        pid_namespace: unshared.is_ok(),
    })
}

/// Steps 6–7 of the module header: `no_new_privs`, Landlock, seccomp.
fn restrict(
    profile: &Profile,
    work_dir: &Path,
    egress_port: Option<u16>,
) -> Result<(), ConfineError> {
    if !profile.enabled {
        return Ok(());
    }
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| ConfineError::Step("no_new_privs", e.to_string()))?;

    match landlock(profile, work_dir, egress_port) {
        Ok(RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced) => {}
        Ok(RulesetStatus::NotEnforced) | Err(_)
            if profile.allow_missing.contains(&Mechanism::Landlock) => {}
        Ok(RulesetStatus::NotEnforced) => {
            return Err(ConfineError::Step(
                "landlock",
                "not supported by this kernel".into(),
            ));
        }
        Err(e) => return Err(e),
    }

    if profile.syscalls == Syscalls::Default
        && let Err(e) = crate::seccomp::install()
        && !profile.allow_missing.contains(&Mechanism::Seccomp)
    {
        return Err(ConfineError::Step("seccomp", e));
    }
    Ok(())
}

/// Applies the filesystem view and, without the host's network, the TCP
/// ban (but for `connect` to the egress proxy's port).
fn landlock(
    profile: &Profile,
    work_dir: &Path,
    egress_port: Option<u16>,
) -> Result<RulesetStatus, ConfineError> {
    let fail = step("landlock");
    let existing = |paths: Vec<PathBuf>| -> Vec<PathBuf> {
        paths.into_iter().filter(|p| p.exists()).collect()
    };
    let read = AccessFs::from_read(LANDLOCK_ABI);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(|e| fail(e.to_string()))?
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(|e| fail(e.to_string()))?;
    if profile.network != Network::Host {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(LANDLOCK_ABI))
            .map_err(|e| fail(e.to_string()))?;
    }
    let devices: Vec<PathBuf> = DEVICE_RW_PATHS.iter().map(PathBuf::from).collect();
    let status =
        ruleset
            .create()
            .map_err(|e| fail(e.to_string()))?
            .add_rules(egress_port.map(|port| {
                Ok::<_, landlock::RulesetError>(NetPort::new(port, AccessNet::ConnectTcp))
            }))
            .map_err(|e| fail(e.to_string()))?
            .add_rules(path_beneath_rules(existing(profile.read_paths()), read))
            .map_err(|e| fail(e.to_string()))?
            .add_rules(path_beneath_rules(
                existing(devices),
                read | AccessFs::WriteFile,
            ))
            .map_err(|e| fail(e.to_string()))?
            .add_rules(path_beneath_rules(
                [work_dir],
                AccessFs::from_all(LANDLOCK_ABI),
            ))
            .map_err(|e| fail(e.to_string()))?
            // Denials of the server (after `execve`) go to the kernel
            // audit, where the gateway reads them (`kernel_audit`); off
            // by default for a new program. Ignored before ABI 7.
            .log_new_exec(true)
            .map_err(|e| fail(e.to_string()))?
            .restrict_self()
            .map_err(|e| fail(e.to_string()))?;
    Ok(status.ruleset)
}

/// Tries every mechanism in this (throw-away, single-threaded) process and
/// says which work. The process is confined afterwards: exit after it.
pub fn probe() -> Support {
    let user_namespace = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET).is_ok();
    let _ = nix::sys::prctl::set_no_new_privs();
    let landlock_abi = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map(|s| match s.landlock {
            LandlockStatus::Available { effective_abi, .. } => {
                let probe_abis = [
                    ABI::V1,
                    ABI::V2,
                    ABI::V3,
                    ABI::V4,
                    ABI::V5,
                    ABI::V6,
                    ABI::V7,
                    ABI::V8,
                    ABI::V9,
                ];
                probe_abis
                    .iter()
                    .position(|a| *a == effective_abi)
                    .map_or(0, |i| i as u32 + 1)
            }
            _ => 0,
        })
        .unwrap_or(0);
    let seccomp = crate::seccomp::install().is_ok();
    Support {
        landlock_abi,
        seccomp,
        user_namespace,
    }
}
