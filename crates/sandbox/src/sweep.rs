//! Removing what sandboxed servers left behind when the gateway was killed
//! (`kill -9`, a crash): their work directories `$TMPDIR/portcullis-mcp-<hex>`
//! and, with cgroups, their empty cgroups. `serve` sweeps once at start.
//!
//! Only what is certainly ours and certainly dead goes: a directory (never a
//! symbolic link, which is not followed), named by the exact pattern, mode
//! `0700`, owned by the gateway's user or a sandbox user, older than
//! [`STALE_AFTER`], and no live process's working directory (a server of
//! another gateway sharing `$TMPDIR` keeps its own). Removal does not follow
//! links inside either (`remove_dir_all` unlinks them).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::memory::CGROUP_PREFIX;

/// A work directory younger than this may be a server still starting.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Whether `name` is `portcullis-mcp-` and 24 lowercase hex digits.
fn is_work_dir_name(name: &str) -> bool {
    name.strip_prefix(CGROUP_PREFIX)
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The working directories of the live processes this process may see.
fn directories_in_use() -> Vec<PathBuf> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_link(e.path().join("cwd")).ok())
        .collect()
}

/// Removes the stale work directories below `tmp` owned by one of `owners`
/// (uids); returns those removed.
pub fn stale_work_dirs(tmp: &Path, owners: &[u32]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return Vec::new();
    };
    let candidates: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| is_work_dir_name(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| {
            // `symlink_metadata`: a link is never a directory here.
            std::fs::symlink_metadata(p).is_ok_and(|m| {
                m.file_type().is_dir()
                    && owners.contains(&m.uid())
                    && m.permissions().mode() & 0o7777 == 0o700
                    && m.modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age >= STALE_AFTER)
            })
        })
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let in_use = directories_in_use();
    candidates
        .into_iter()
        .filter(|p| !in_use.iter().any(|u| u.starts_with(p)))
        .filter(|p| std::fs::remove_dir_all(p).is_ok())
        .collect()
}

/// Removes the empty per-server cgroups below `parent` (a cgroup with a
/// process in it cannot be removed, so a live one stays).
pub fn stale_cgroups(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| is_work_dir_name(&e.file_name().to_string_lossy()))
        .filter(|e| std::fs::remove_dir(e.path()).is_ok())
        .count()
}

/// The sweep `serve` runs at start: stale work directories in the
/// temporary directory (owned by this user, or when it is root by one of
/// `users`, the profiles' sandbox users) and stale cgroups. Returns how many
/// of each went.
pub fn at_start(users: &[u32]) -> (usize, usize) {
    let me = nix::unistd::geteuid();
    let mut owners = vec![me.as_raw()];
    if me.is_root() {
        owners.extend_from_slice(users);
    }
    let dirs = stale_work_dirs(&std::env::temp_dir(), &owners).len();
    let cgroups = match crate::memory::memory_control() {
        crate::memory::MemoryControl::Cgroup(parent) => stale_cgroups(parent),
        crate::memory::MemoryControl::Rlimit(_) => 0,
    };
    (dirs, cgroups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::DirBuilderExt;

    #[test]
    fn only_old_private_unused_directories_of_ours_go() {
        let tmp = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let make = |name: &str, mode: u32| {
            let p = tmp.path().join(name);
            std::fs::DirBuilder::new().mode(mode).create(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::write(p.join("note"), "x").unwrap();
            p
        };
        let old = |p: &Path| {
            let t = std::time::SystemTime::now() - Duration::from_secs(3600);
            std::fs::File::open(p).unwrap().set_modified(t).unwrap();
        };
        let stale = make("portcullis-mcp-0123456789abcdef01234567", 0o700);
        let fresh = make("portcullis-mcp-1123456789abcdef01234567", 0o700);
        let open = make("portcullis-mcp-2123456789abcdef01234567", 0o755);
        let other = make("portcullis-mcp-not-ours", 0o700);
        let target = make("target", 0o700);
        let link = tmp.path().join("portcullis-mcp-3123456789abcdef01234567");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for p in [&stale, &open, &other, &target] {
            old(p);
        }
        let removed = stale_work_dirs(tmp.path(), &[me]);
        assert_eq!(removed, std::slice::from_ref(&stale));
        assert!(!stale.exists());
        for kept in [&fresh, &open, &other, &target, &link] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(target.join("note").exists(), "the link was not followed");
        // Someone else's: kept.
        let again = make("portcullis-mcp-4123456789abcdef01234567", 0o700);
        old(&again);
        assert!(stale_work_dirs(tmp.path(), &[me.wrapping_add(1)]).is_empty());
        // In use as a working directory: kept.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .current_dir(&again)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(stale_work_dirs(tmp.path(), &[me]).is_empty());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(stale_work_dirs(tmp.path(), &[me]), [again]);
    }
}
