//! The database side of `portcullis backup` and `restore`: a consistent copy
//! of the live database (`VACUUM INTO`, one read transaction, beside a
//! running writer in WAL mode) that also carries the state directory's
//! files as rows of [`FILES_TABLE`], and the reverse.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};

use crate::StoreError;

/// The table of a backup holding the state directory's files.
pub const FILES_TABLE: &str = "portcullis_backup_files";
/// `PRAGMA application_id` of a backup ("PCBK"), so `restore` never takes
/// another database for one.
const BACKUP_APPLICATION_ID: i64 = 0x5043_424b;

/// A state-directory file carried in a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// Its path relative to the state directory, `/`-separated.
    pub name: String,
    /// Whether it is kept owner-only.
    pub secret: bool,
    /// Its bytes.
    pub contents: Vec<u8>,
}

async fn connect(path: &Path) -> Result<SqliteConnection, StoreError> {
    Ok(SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

/// Copies the database at `db` into `out` (which must not exist, or be
/// empty) with `files` beside its tables.
pub async fn write_backup(db: &Path, out: &Path, files: &[BackupFile]) -> Result<(), StoreError> {
    let mut live = connect(db).await?;
    sqlx::query("VACUUM INTO ?")
        .bind(out.to_string_lossy().as_ref())
        .execute(&mut live)
        .await?;
    live.close().await?;

    let mut copy = connect(out).await?;
    let mut tx = copy.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {FILES_TABLE} (name TEXT PRIMARY KEY NOT NULL, secret INTEGER NOT NULL, contents BLOB NOT NULL)"
    )))
    .execute(&mut *tx)
    .await?;
    for file in files {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {FILES_TABLE} (name, secret, contents) VALUES (?, ?, ?)"
        )))
        .bind(&file.name)
        .bind(file.secret)
        .bind(&file.contents)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA application_id = {BACKUP_APPLICATION_ID}"
    )))
    .execute(&mut copy)
    .await?;
    copy.close().await?;
    Ok(())
}

/// Turns a copy of a backup at `path` back into a plain database (checked
/// whole, its files table removed, WAL mode as the server keeps it) and
/// returns the files it carried.
pub async fn unpack_backup(path: &Path) -> Result<Vec<BackupFile>, StoreError> {
    let not_backup = || StoreError::Invalid("not a Portcullis backup".into());
    let mut copy = connect(path).await.map_err(|_| not_backup())?;
    let id: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&mut copy)
        .await
        .map_err(|_| not_backup())?;
    if id != BACKUP_APPLICATION_ID {
        return Err(not_backup());
    }
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut copy)
        .await?;
    if check != "ok" {
        return Err(StoreError::Invalid(format!(
            "the backup is damaged: {check}"
        )));
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT name, secret, contents FROM {FILES_TABLE} ORDER BY name"
    )))
    .fetch_all(&mut copy)
    .await?;
    let files = rows
        .iter()
        .map(|row| {
            Ok(BackupFile {
                name: row.try_get("name")?,
                secret: row.try_get("secret")?,
                contents: row.try_get("contents")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {FILES_TABLE}")))
        .execute(&mut copy)
        .await?;
    sqlx::query("PRAGMA application_id = 0")
        .execute(&mut copy)
        .await?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut copy)
        .await?;
    copy.close().await?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[tokio::test]
    async fn a_backup_round_trips_and_nothing_else_is_taken_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        let store = Store::open_sqlite(&db).await.unwrap();
        let mut log = store.audit_appender().await.unwrap();
        let mut records: Vec<_> = (0..10)
            .map(|i| portcullis_audit::AuditRecord {
                request_id: format!("r{i}"),
                ..Default::default()
            })
            .collect();
        log.append(&mut records).await.unwrap();
        let files = vec![BackupFile {
            name: "ca.crt".into(),
            secret: false,
            contents: b"pem".to_vec(),
        }];
        let out = dir.path().join("backup");
        write_backup(&db, &out, &files).await.unwrap();
        // The live database is not a backup.
        assert!(matches!(
            unpack_backup(&db).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(unpack_backup(&out).await.unwrap(), files);
        let restored = Store::open_sqlite(&out).await.unwrap();
        assert_eq!(restored.audit_size().await.unwrap(), 10);
        // Once unpacked, it is a plain database again.
        assert!(matches!(
            unpack_backup(&out).await,
            Err(StoreError::Invalid(_))
        ));
    }
}
