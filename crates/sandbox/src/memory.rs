//! How `limits.memory_mb` is enforced on this host, and the per-process
//! cgroup that enforces it where it can.
//!
//! - **cgroup v2**, where the gateway's own cgroup is delegated to it (it may
//!   make child cgroups and the `memory` controller is enabled for them, as
//!   systemd's `Delegate=yes` gives): each server gets its own cgroup
//!   `portcullis-mcp-<hex>` with `memory.max` (and `memory.swap.max = 0`),
//!   which bounds the resident memory of the server and every process it
//!   starts; the kernel's OOM killer ends it at the limit, and the gateway
//!   reads `memory.events` to audit that as `memory_limit`.
//! - **Otherwise**: `RLIMIT_AS` and `RLIMIT_DATA` per process (an allocation
//!   beyond them fails) and the gateway's watchdog, which sums the resident
//!   memory of the server's process tree every [`WATCHDOG_INTERVAL`] and
//!   kills the tree above the limit (the rlimits alone would let each of
//!   `processes` children use `memory_mb`).
//!
//! Which one applies is found once ([`memory_control`]) and printed by
//! `serve --check`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// How often the watchdog of the fallback reads a process tree's memory.
pub const WATCHDOG_INTERVAL: Duration = Duration::from_millis(200);
/// The prefix of every per-process cgroup (and work directory).
pub const CGROUP_PREFIX: &str = "portcullis-mcp-";

/// How memory limits are enforced here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryControl {
    /// A child cgroup per server below this (delegated) cgroup directory.
    Cgroup(PathBuf),
    /// Rlimits and the gateway's watchdog; the reason cgroups are not used.
    Rlimit(String),
}

impl MemoryControl {
    /// One line for `serve --check`.
    pub fn describe(&self) -> String {
        match self {
            MemoryControl::Cgroup(dir) => format!(
                "cgroup v2 `memory.max` per server below `{}` (covers its whole process tree; the OOM killer ends it at the limit)",
                dir.display()
            ),
            MemoryControl::Rlimit(why) => format!(
                "RLIMIT_AS and RLIMIT_DATA per process, and the gateway's watchdog over each server's process tree (resident memory, every {} ms); no cgroup: {why}",
                WATCHDOG_INTERVAL.as_millis()
            ),
        }
    }
}

/// What this host offers, found once per process.
pub fn memory_control() -> &'static MemoryControl {
    static FOUND: OnceLock<MemoryControl> = OnceLock::new();
    FOUND.get_or_init(detect)
}

fn detect() -> MemoryControl {
    let own = match std::fs::read_to_string("/proc/self/cgroup") {
        Ok(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string)),
        Err(e) => return MemoryControl::Rlimit(format!("cannot read /proc/self/cgroup: {e}")),
    };
    let Some(own) = own else {
        return MemoryControl::Rlimit("this process is in no cgroup v2 hierarchy".into());
    };
    let mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(Path::new)
        .find(|m| m.join("cgroup.controllers").exists());
    let Some(mount) = mount else {
        return MemoryControl::Rlimit("no cgroup v2 file system is mounted".into());
    };
    let dir = mount.join(own.trim_start_matches('/'));
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "memory") {
        return MemoryControl::Rlimit(format!(
            "the memory controller is not enabled for the children of `{}` (not delegated)",
            dir.display()
        ));
    }
    // Delegated means we may make (and remove) a child here.
    let probe = dir.join(format!("{CGROUP_PREFIX}probe-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let writable = std::fs::write(probe.join("memory.max"), "max").is_ok();
            let _ = std::fs::remove_dir(&probe);
            if writable {
                MemoryControl::Cgroup(dir)
            } else {
                MemoryControl::Rlimit(format!(
                    "`memory.max` below `{}` is not writable",
                    dir.display()
                ))
            }
        }
        Err(e) => MemoryControl::Rlimit(format!(
            "cannot make a cgroup below `{}`: {e}",
            dir.display()
        )),
    }
}

/// A server's own cgroup, made by the gateway before it starts the server
/// (which joins it first thing) and removed after the server ended.
#[derive(Debug)]
pub struct ServerCgroup {
    dir: PathBuf,
}

impl ServerCgroup {
    /// Makes `<parent>/portcullis-mcp-<name>` with `memory.max` at `bytes`.
    pub fn create(parent: &Path, name: &str, bytes: u64) -> std::io::Result<Self> {
        let dir = parent.join(format!("{CGROUP_PREFIX}{name}"));
        std::fs::create_dir(&dir)?;
        let cgroup = ServerCgroup { dir };
        std::fs::write(cgroup.dir.join("memory.max"), bytes.to_string())?;
        // Absent without swap accounting: then there is no swap to use.
        let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
        Ok(cgroup)
    }

    /// Its directory (what `sandbox-exec --cgroup` joins).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the OOM killer killed a process in it (`memory.events`).
    pub fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0"))
    }
}

impl Drop for ServerCgroup {
    fn drop(&mut self) {
        // Fails while a process is still in it (a descendant that outlived
        // the server): the sweep at the next start retries.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Moves this process into the cgroup at `dir` (`sandbox-exec`, first step).
pub(crate) fn join(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), "0")
}

/// The resident memory, in bytes, of process `pid` and all its descendants
/// (from `/proc`), and their pids; `None` once `pid` is gone.
pub fn tree_resident(pid: u32) -> Option<(u64, Vec<u32>)> {
    let page = rustix::param::page_size() as u64;
    let mut total = 0u64;
    let mut seen = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        // Bounded: a tree larger than any process limit is not walked on.
        if seen.len() >= 4096 {
            break;
        }
        let Ok(statm) = std::fs::read_to_string(format!("/proc/{p}/statm")) else {
            if p == pid {
                return None;
            }
            continue;
        };
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        total = total.saturating_add(pages * page);
        seen.push(p);
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    Some((total, seen))
}

/// Sends `SIGKILL` to each of `pids` (a tree from [`tree_resident`]),
/// children first is not needed: none of them can catch it.
pub fn kill_all(pids: &[u32]) {
    for pid in pids {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_of_this_process_has_memory() {
        let (bytes, pids) = tree_resident(std::process::id()).unwrap();
        assert!(bytes > 1024 * 1024, "{bytes}");
        assert_eq!(pids[0], std::process::id());
        assert!(tree_resident(u32::MAX).is_none());
        assert!(!memory_control().describe().is_empty());
    }
}
