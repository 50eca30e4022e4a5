//! `portcullis backup` and `portcullis restore`: one file holding a
//! consistent copy of a state directory, taken beside a running server.
//!
//! The backup is itself a SQLite database: `VACUUM INTO` copies the live
//! database inside one read transaction (a consistent snapshot; the audit
//! writer keeps committing meanwhile, WAL mode), and the state directory's
//! other files are added to it as rows (`portcullis_store::backup`). The KEK is never
//! included (it must not sit beside what it seals), nor the CA key unless
//! asked; `restore` refuses a non-empty directory and holds the state lock
//! while it writes. See
//! `docs/backup-and-retention.md`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use portcullis_store::backup::{BackupFile, unpack_backup, write_backup};

use crate::state_dir::{StateDir, write_public, write_secret};

/// Files and directories of the state directory a backup leaves out: the
/// live database (copied by `VACUUM INTO` instead), the KEK, the running
/// server's addresses and lock, and the audit archive (immutable segments,
/// copied as plain files).
const LEFT_OUT: &[&str] = &[
    "portcullis.db",
    "portcullis.db-wal",
    "portcullis.db-shm",
    "portcullis.db-journal",
    "vault.kek",
    "admin.url",
    "gateway.url",
    "portcullis.lock",
    "audit-archive",
];

/// `backup --out FILE [--include-ca-key]`.
pub async fn backup(state: &StateDir, out: &Path, include_ca_key: bool) -> Result<()> {
    let db = state.database();
    if !db.exists() {
        bail!("no database at `{}` (pass --state-dir)", db.display());
    }
    if out.exists() {
        bail!(
            "`{}` exists; a backup never overwrites a file",
            out.display()
        );
    }
    let mut paths = Vec::new();
    collect_files(state.root(), state.root(), include_ca_key, &mut paths)?;
    let files = paths
        .iter()
        .map(|(name, path)| {
            Ok(BackupFile {
                name: name.clone(),
                secret: is_secret(path),
                contents: std::fs::read(path)
                    .with_context(|| format!("cannot read `{}`", path.display()))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = tmp_path(out);
    let _ = std::fs::remove_file(&tmp);
    // Created empty and owner-only first: the copy holds sealed secrets and
    // keys, and VACUUM INTO writes into an existing empty file.
    write_secret(&tmp, b"")?;
    write_backup(&db, &tmp, &files)
        .await
        .with_context(|| format!("cannot back up `{}`", db.display()))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all())?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write `{}`", out.display()))?;

    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    println!(
        "backed up `{}` to `{}` (database and {})",
        state.root().display(),
        out.display(),
        names.join(", ")
    );
    if !include_ca_key && state.ca_key().exists() {
        eprintln!(
            "note: the CA key was left out (pass --include-ca-key to include it); keep it in its own custody"
        );
    }
    eprintln!("note: the vault KEK is never in a backup; a restore needs it from its own custody");
    Ok(())
}

/// `restore --from FILE` into an empty (or missing) state directory.
pub async fn restore(state: &StateDir, from: &Path) -> Result<()> {
    let root = state.root();
    if root.exists() {
        let mut entries =
            std::fs::read_dir(root).with_context(|| format!("cannot read `{}`", root.display()))?;
        if entries.next().is_some() {
            bail!(
                "`{}` is not empty: restore only into a new or empty state directory",
                root.display()
            );
        }
    }
    state.create()?;
    // Held until the restore is complete: a `serve` started meanwhile on the
    // same directory is refused instead of opening a half-written state.
    let _lock = crate::state_lock::StateLock::acquire(root)?;
    let tmp = tmp_path(&state.database());
    std::fs::copy(from, &tmp).with_context(|| format!("cannot read `{}`", from.display()))?;
    restrict(&tmp)?;
    let files = unpack_backup(&tmp)
        .await
        .with_context(|| format!("cannot restore `{}`", from.display()))?;
    for file in &files {
        let path = safe_join(root, &file.name)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        if file.secret {
            write_secret(&path, &file.contents)?;
        } else {
            write_public(&path, &file.contents)?;
        }
    }
    std::fs::rename(&tmp, state.database())
        .with_context(|| format!("cannot write `{}`", state.database().display()))?;
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    println!(
        "restored `{}` into `{}` (database and {})",
        from.display(),
        root.display(),
        names.join(", ")
    );
    if !state.ca_key().exists() {
        eprintln!(
            "note: the backup holds no CA key; put `ca.key` back from its custody before `serve` (it refuses to start with ca.crt alone)"
        );
    }
    eprintln!(
        "note: `serve` needs the vault KEK (PORTCULLIS_KEK_FILE or PORTCULLIS_KEK) the backup was sealed under"
    );
    Ok(())
}

/// The state directory's files to back up, as (name relative to the root,
/// path), recursively, in a stable order.
fn collect_files(
    root: &Path,
    dir: &Path,
    include_ca_key: bool,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read `{}`", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        let name = relative.to_string_lossy().replace('\\', "/");
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let top = dir == root;
        if (top && LEFT_OUT.contains(&file_name.as_str()))
            || (top && file_name == "ca.key" && !include_ca_key)
            || file_name.ends_with(".tmp")
        {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(root, &path, include_ca_key, out)?;
        } else if kind.is_file() {
            out.push((name, path));
        }
    }
    Ok(())
}

/// Whether a file is kept owner-only (its mode, as the state directory has it).
fn is_secret(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        true
    }
}

/// `root/name` for a name read from a backup, refusing any that would leave
/// `root` (absolute, `..`): a crafted backup must not write elsewhere.
fn safe_join(root: &Path, name: &str) -> Result<PathBuf> {
    let relative = Path::new(name);
    let plain = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || name.is_empty() {
        bail!("the backup names a file outside the state directory: `{name}`");
    }
    Ok(root.join(relative))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn restrict(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set permissions of `{}`", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_a_backup_stay_inside_the_state_directory() {
        let root = Path::new("/state");
        assert_eq!(safe_join(root, "ca.crt").unwrap(), root.join("ca.crt"));
        assert_eq!(
            safe_join(root, "policies/main.cedar").unwrap(),
            root.join("policies/main.cedar")
        );
        for bad in ["", "../x", "/etc/passwd", "policies/../../x", "./x"] {
            assert!(safe_join(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kek_and_the_live_database_are_never_collected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in [
            "portcullis.db",
            "portcullis.db-wal",
            "vault.kek",
            "ca.key",
            "ca.crt",
            "admin.token",
            "portcullis.lock",
            "x.tmp",
        ] {
            std::fs::write(root.join(name), name).unwrap();
        }
        std::fs::create_dir_all(root.join("policies")).unwrap();
        std::fs::write(root.join("policies/p.cedar"), "permit").unwrap();
        std::fs::create_dir_all(root.join("audit-archive")).unwrap();
        std::fs::write(root.join("audit-archive/s.leaves"), "{}").unwrap();
        let names = |include_ca_key| {
            let mut out = Vec::new();
            collect_files(root, root, include_ca_key, &mut out).unwrap();
            out.into_iter().map(|(n, _)| n).collect::<Vec<_>>()
        };
        assert_eq!(names(false), ["admin.token", "ca.crt", "policies/p.cedar"]);
        assert_eq!(
            names(true),
            ["admin.token", "ca.crt", "ca.key", "policies/p.cedar"]
        );
    }
}
