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
    if let Some(url) = postgres_url()? {
        return backup_postgres(state, &url, out, include_ca_key).await;
    }
    let db = state.database();
    if !db.exists() {
        bail!("no database at `{}` (pass --state-dir)", db.display());
    }
    refuse_existing(out)?;
    let files = read_files(state, include_ca_key)?;
    let tmp = tmp_path(out);
    let _ = std::fs::remove_file(&tmp);
    // Created empty and owner-only first: the copy holds sealed secrets and
    // keys, and VACUUM INTO writes into an existing empty file.
    write_secret(&tmp, b"")?;
    write_backup(&db, &tmp, &files)
        .await
        .with_context(|| format!("cannot back up `{}`", db.display()))?;
    finish(&tmp, out)?;
    println!(
        "backed up `{}` to `{}` (database and {})",
        state.root().display(),
        out.display(),
        file_names(&files)
    );
    backup_notes(state, include_ca_key);
    Ok(())
}

/// `backup` of a PostgreSQL store (`PORTCULLIS_STORE_URL`): every table as
/// of one snapshot (`portcullis_store::pg_backup`), beside the files of the
/// state directory when there is one (in cluster mode with a KEK the key
/// material is in the database, sealed, and the directory may hold none).
async fn backup_postgres(
    state: &StateDir,
    url: &str,
    out: &Path,
    include_ca_key: bool,
) -> Result<()> {
    refuse_existing(out)?;
    let files = if state.root().is_dir() {
        read_files(state, include_ca_key)?
    } else {
        Vec::new()
    };
    let tmp = tmp_path(out);
    let _ = std::fs::remove_file(&tmp);
    write_secret(&tmp, b"")?;
    let summary = portcullis_store::pg_backup::write_postgres_backup(url, &tmp, &files)
        .await
        .with_context(|| {
            format!(
                "cannot back up the PostgreSQL store ({})",
                crate::ENV_STORE_URL
            )
        });
    let summary = match summary {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    finish(&tmp, out)?;
    println!(
        "backed up the PostgreSQL store to `{}` ({} tables, {} rows, one snapshot; schema {}/{}{}{})",
        out.display(),
        summary.tables,
        summary.rows,
        summary.schema.0,
        summary.schema.1,
        if files.is_empty() { "" } else { "; and " },
        file_names(&files)
    );
    backup_notes(state, include_ca_key);
    Ok(())
}

/// The PostgreSQL URL when `PORTCULLIS_STORE_URL` names one.
fn postgres_url() -> Result<Option<String>> {
    Ok(crate::serve::store_url_env()?.filter(|u| portcullis_store::is_postgres_url(u)))
}

fn refuse_existing(out: &Path) -> Result<()> {
    if out.exists() {
        bail!(
            "`{}` exists; a backup never overwrites a file",
            out.display()
        );
    }
    Ok(())
}

/// The state directory's files a backup carries, read.
fn read_files(state: &StateDir, include_ca_key: bool) -> Result<Vec<BackupFile>> {
    let mut paths = Vec::new();
    collect_files(state.root(), state.root(), include_ca_key, &mut paths)?;
    paths
        .iter()
        .map(|(name, path)| {
            Ok(BackupFile {
                name: name.clone(),
                secret: is_secret(path),
                contents: std::fs::read(path)
                    .with_context(|| format!("cannot read `{}`", path.display()))?,
            })
        })
        .collect::<Result<Vec<_>>>()
}

/// Syncs the finished backup and gives it its name.
fn finish(tmp: &Path, out: &Path) -> Result<()> {
    std::fs::File::open(tmp).and_then(|f| f.sync_all())?;
    std::fs::rename(tmp, out).with_context(|| format!("cannot write `{}`", out.display()))
}

fn file_names(files: &[BackupFile]) -> String {
    files
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn backup_notes(state: &StateDir, include_ca_key: bool) {
    if !include_ca_key && state.ca_key().exists() {
        eprintln!(
            "note: the CA key was left out (pass --include-ca-key to include it); keep it in its own custody"
        );
    }
    eprintln!("note: the vault KEK is never in a backup; a restore needs it from its own custody");
}

/// `restore --from FILE` into an empty (or missing) state directory.
pub async fn restore(state: &StateDir, from: &Path) -> Result<()> {
    let root = state.root();
    if root.exists() {
        let mut entries =
            std::fs::read_dir(root).with_context(|| format!("cannot read `{}`", root.display()))?;
        // A lock file alone is what a refused restore leaves: still empty.
        if entries.any(|e| e.map_or(true, |e| e.file_name() != crate::state_lock::LOCK_FILE)) {
            bail!(
                "`{}` is not empty: restore only into a new or empty state directory",
                root.display()
            );
        }
    }
    let kind = portcullis_store::pg_backup::backup_kind(from)
        .await
        .with_context(|| format!("cannot restore `{}`", from.display()))?;
    let postgres = kind == portcullis_store::pg_backup::PG_BACKUP_APPLICATION_ID;
    let target = postgres_url()?;
    match (postgres, &target) {
        (true, None) => bail!(
            "`{}` is a backup of a PostgreSQL store: set {} to a new, empty PostgreSQL database to restore it into",
            from.display(),
            crate::ENV_STORE_URL
        ),
        (false, Some(_)) => bail!(
            "`{}` is a backup of a SQLite state directory, restored into --state-dir; unset {} (it names a PostgreSQL store)",
            from.display(),
            crate::ENV_STORE_URL
        ),
        _ => {}
    }
    state.create()?;
    // Held until the restore is complete: a `serve` started meanwhile on the
    // same directory is refused instead of opening a half-written state.
    let _lock = crate::state_lock::StateLock::acquire(root)?;
    if let Some(url) = target {
        let (summary, files) = portcullis_store::pg_backup::restore_postgres_backup(from, &url)
            .await
            .with_context(|| format!("cannot restore `{}`", from.display()))?;
        write_files(root, &files)?;
        println!(
            "restored `{}` into the PostgreSQL store ({} tables, {} rows; schema {}/{}) and `{}`{}{}",
            from.display(),
            summary.tables,
            summary.rows,
            summary.schema.0,
            summary.schema.1,
            root.display(),
            if files.is_empty() { "" } else { ": " },
            file_names(&files)
        );
        restore_notes(state, true);
        return Ok(());
    }
    let tmp = tmp_path(&state.database());
    std::fs::copy(from, &tmp).with_context(|| format!("cannot read `{}`", from.display()))?;
    restrict(&tmp)?;
    let files = unpack_backup(&tmp)
        .await
        .with_context(|| format!("cannot restore `{}`", from.display()))?;
    write_files(root, &files)?;
    std::fs::rename(&tmp, state.database())
        .with_context(|| format!("cannot write `{}`", state.database().display()))?;
    println!(
        "restored `{}` into `{}` (database and {})",
        from.display(),
        root.display(),
        file_names(&files)
    );
    restore_notes(state, false);
    Ok(())
}

/// Writes a backup's files back under `root` (secrets owner-only).
fn write_files(root: &Path, files: &[BackupFile]) -> Result<()> {
    for file in files {
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
    Ok(())
}

fn restore_notes(state: &StateDir, postgres: bool) {
    if postgres {
        eprintln!(
            "note: with a KEK the cluster's CA and signing keys are sealed in the restored database; `serve` opens them with the KEK they were sealed under"
        );
    } else if !state.ca_key().exists() {
        eprintln!(
            "note: the backup holds no CA key; put `ca.key` back from its custody before `serve` (it refuses to start with ca.crt alone)"
        );
    }
    eprintln!(
        "note: `serve` needs the vault KEK (PORTCULLIS_KEK_FILE or PORTCULLIS_KEK) the backup was sealed under"
    );
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
