//! `portcullis backup` and `restore` of a PostgreSQL store (cluster mode),
//! in process, without `pg_dump`.
//!
//! The backup reads every table of the schema inside one `REPEATABLE READ
//! READ ONLY` transaction: one snapshot, so the audit log, its hashes and
//! every other table are as of one instant, while the replicas keep
//! committing. Each table leaves as a binary `COPY` stream (exact values,
//! whatever their types, with no per-type code here), stored in chunks in a
//! SQLite file beside the state directory's files: the same container as a
//! SQLite backup (`backup.rs`), with its own `application_id` so neither
//! restore takes one for the other.
//!
//! A restore needs an empty database: it creates the schema with this
//! binary's migrations, only those the backup's database had applied (an
//! older backup is restored as it was; `serve` migrates the rest), then, in
//! one transaction, loads every table with `COPY FROM STDIN` (a table whose
//! rows others refer to first) and moves each identity sequence past the
//! largest id restored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use futures_util::TryStreamExt;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};

use crate::StoreError;
use crate::backup::BackupFile;

/// `PRAGMA application_id` of a PostgreSQL backup ("PCBP").
pub const PG_BACKUP_APPLICATION_ID: i64 = 0x5043_4250;

/// The bytes of a table's `COPY` stream kept in one row of the backup: big
/// enough that a large audit log is a few hundred rows, small enough that
/// neither side holds much of it in memory.
const CHUNK_BYTES: usize = 4 << 20;

/// The migration histories of a PostgreSQL store: sqlx's (the twins of the
/// SQLite migrations) and the cluster-only one.
const HISTORY_TABLES: [&str; 2] = ["_sqlx_migrations", crate::cluster::CLUSTER_MIGRATIONS_TABLE];

/// What a PostgreSQL backup or restore moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBackupSummary {
    /// Tables copied (the migration histories left out).
    pub tables: usize,
    /// Rows copied, all tables together.
    pub rows: u64,
    /// The schema versions (the newest migration of each history).
    pub schema: (i64, i64),
}

async fn connect_pg(url: &str) -> Result<PgConnection, StoreError> {
    let options = PgConnectOptions::from_str(url)?.application_name("portcullis backup");
    Ok(options.connect().await?)
}

async fn connect_file(path: &Path) -> Result<SqliteConnection, StoreError> {
    Ok(sqlx::sqlite::SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .busy_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await?)
}

/// A table of the schema, with its columns in order.
struct Table {
    name: String,
    columns: Vec<String>,
}

/// The schema's tables (migration histories included), in an order that
/// loads every table after those its foreign keys refer to.
async fn tables(conn: &mut PgConnection) -> Result<Vec<Table>, StoreError> {
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c
         FROM information_schema.columns
         WHERE table_schema = current_schema()
           AND table_name IN (SELECT table_name FROM information_schema.tables
                              WHERE table_schema = current_schema() AND table_type = 'BASE TABLE')
         ORDER BY table_name, ordinal_position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut columns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        columns
            .entry(row.try_get("t")?)
            .or_default()
            .push(row.try_get("c")?);
    }
    let edges = sqlx::query(
        "SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE c.contype = 'f' AND n.nspname = current_schema()",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for edge in edges {
        let child: String = edge.try_get("child")?;
        let parent: String = edge.try_get("parent")?;
        if child != parent {
            parents.entry(child).or_default().insert(parent);
        }
    }
    // Parents first; names break ties, so the order is stable.
    let mut ordered = Vec::new();
    let mut placed = BTreeSet::new();
    while placed.len() < columns.len() {
        let ready: Vec<String> = columns
            .keys()
            .filter(|t| !placed.contains(*t))
            .filter(|t| {
                parents.get(*t).is_none_or(|ps| {
                    ps.iter()
                        .all(|p| placed.contains(p) || !columns.contains_key(p))
                })
            })
            .cloned()
            .collect();
        if ready.is_empty() {
            return Err(StoreError::Invalid(
                "the schema's foreign keys form a cycle; it cannot be backed up table by table"
                    .into(),
            ));
        }
        for name in ready {
            placed.insert(name.clone());
            ordered.push(name);
        }
    }
    Ok(ordered
        .into_iter()
        .map(|name| Table {
            columns: columns.remove(&name).unwrap_or_default(),
            name,
        })
        .collect())
}

/// The log table a set-aside audit table (`audit_log_segment_<ms>`, …,
/// `Store::archive_audit_segment`) was, when `name` is one.
fn set_aside_base(name: &str) -> Option<&'static str> {
    [
        "audit_log",
        "audit_nodes",
        "audit_checkpoints",
        "audit_personal",
    ]
    .into_iter()
    .find(|base| {
        name.strip_prefix(base)
            .and_then(|rest| rest.strip_prefix("_segment_"))
            .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Backs up the PostgreSQL database at `url` into `out` (an existing empty
/// file), with `files` beside it.
pub async fn write_postgres_backup(
    url: &str,
    out: &Path,
    files: &[BackupFile],
) -> Result<PgBackupSummary, StoreError> {
    let mut pg = connect_pg(url).await?;
    let mut file = connect_file(out).await?;
    let mut dest = file.begin().await?;
    for statement in [
        format!(
            "CREATE TABLE {} (name TEXT PRIMARY KEY NOT NULL, secret INTEGER NOT NULL, contents BLOB NOT NULL)",
            crate::backup::FILES_TABLE
        ),
        "CREATE TABLE portcullis_pg_tables (position INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL UNIQUE, columns TEXT NOT NULL, rows INTEGER NOT NULL)".into(),
        "CREATE TABLE portcullis_pg_chunks (position INTEGER NOT NULL, chunk INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (position, chunk))".into(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *dest)
            .await?;
    }
    for f in files {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (name, secret, contents) VALUES (?, ?, ?)",
            crate::backup::FILES_TABLE
        )))
        .bind(&f.name)
        .bind(f.secret)
        .bind(&f.contents)
        .execute(&mut *dest)
        .await?;
    }

    // One snapshot for every table: what the replicas commit from here on
    // is not in this backup, and everything committed before is, whole.
    let mut snapshot = pg.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *snapshot)
        .await?;
    let tables = tables(&mut snapshot).await?;
    if !tables.iter().any(|t| t.name == HISTORY_TABLES[0]) {
        return Err(StoreError::Invalid(
            "the database holds no Portcullis schema (no `_sqlx_migrations`)".into(),
        ));
    }
    let mut summary = PgBackupSummary {
        tables: 0,
        rows: 0,
        schema: (0, 0),
    };
    for (position, table) in tables.iter().enumerate() {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            ident(&table.name)
        )))
        .fetch_one(&mut *snapshot)
        .await?;
        let mut stream = snapshot
            .copy_out_raw(&format!(
                "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)",
                column_list(&table.columns),
                ident(&table.name)
            ))
            .await?;
        let mut chunk = 0i64;
        let mut buffer = Vec::with_capacity(CHUNK_BYTES);
        let mut chunks = Vec::new();
        while let Some(bytes) = stream.try_next().await? {
            buffer.extend_from_slice(&bytes);
            if buffer.len() >= CHUNK_BYTES {
                chunks.push(std::mem::replace(
                    &mut buffer,
                    Vec::with_capacity(CHUNK_BYTES),
                ));
            }
            // Written as they fill, so memory holds one chunk or two.
            for data in chunks.drain(..) {
                insert_chunk(&mut dest, position as i64, chunk, &data).await?;
                chunk += 1;
            }
        }
        drop(stream);
        if !buffer.is_empty() {
            insert_chunk(&mut dest, position as i64, chunk, &buffer).await?;
        }
        sqlx::query(
            "INSERT INTO portcullis_pg_tables (position, name, columns, rows) VALUES (?, ?, ?, ?)",
        )
        .bind(position as i64)
        .bind(&table.name)
        .bind(serde_json::to_string(&table.columns).unwrap_or_default())
        .bind(rows)
        .execute(&mut *dest)
        .await?;
        if !HISTORY_TABLES.contains(&table.name.as_str()) {
            summary.tables += 1;
            summary.rows += rows as u64;
        }
    }
    summary.schema = schema_versions(&mut snapshot).await?;
    snapshot.rollback().await?;
    dest.commit().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA application_id = {PG_BACKUP_APPLICATION_ID}"
    )))
    .execute(&mut file)
    .await?;
    file.close().await?;
    pg.close().await?;
    Ok(summary)
}

async fn insert_chunk(
    dest: &mut SqliteConnection,
    position: i64,
    chunk: i64,
    data: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO portcullis_pg_chunks (position, chunk, data) VALUES (?, ?, ?)")
        .bind(position)
        .bind(chunk)
        .bind(data)
        .execute(dest)
        .await?;
    Ok(())
}

/// The newest applied migration of each history.
async fn schema_versions(conn: &mut PgConnection) -> Result<(i64, i64), StoreError> {
    let mut versions = [0i64; 2];
    for (slot, table) in versions.iter_mut().zip(HISTORY_TABLES) {
        let newest: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT MAX(version) FROM {} WHERE success",
            ident(table)
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or(None);
        *slot = newest.unwrap_or(0);
    }
    Ok((versions[0], versions[1]))
}

/// The application id of a backup file: which kind of backup it is.
pub async fn backup_kind(path: &Path) -> Result<i64, StoreError> {
    let not_backup = || StoreError::Invalid("not a Portcullis backup".into());
    let mut file = connect_file(path).await.map_err(|_| not_backup())?;
    let id: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&mut file)
        .await
        .map_err(|_| not_backup())?;
    file.close().await?;
    Ok(id)
}

/// Restores the PostgreSQL backup at `path` into the empty database at
/// `url`; returns what it loaded and the state directory's files it carried.
pub async fn restore_postgres_backup(
    path: &Path,
    url: &str,
) -> Result<(PgBackupSummary, Vec<BackupFile>), StoreError> {
    let mut file = connect_file(path).await?;
    let id: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&mut file)
        .await?;
    if id != PG_BACKUP_APPLICATION_ID {
        return Err(StoreError::Invalid(
            "not a backup of a PostgreSQL store".into(),
        ));
    }
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut file)
        .await?;
    if check != "ok" {
        return Err(StoreError::Invalid(format!(
            "the backup is damaged: {check}"
        )));
    }
    let mut listed = Vec::new();
    for row in sqlx::query(
        "SELECT position, name, columns, rows FROM portcullis_pg_tables ORDER BY position",
    )
    .fetch_all(&mut file)
    .await?
    {
        let columns: String = row.try_get("columns")?;
        let columns: Vec<String> = serde_json::from_str(&columns)
            .map_err(|e| StoreError::Invalid(format!("the backup's table list is damaged: {e}")))?;
        listed.push((
            row.try_get::<i64, _>("position")?,
            Table {
                name: row.try_get("name")?,
                columns,
            },
            row.try_get::<i64, _>("rows")?,
        ));
    }

    let mut pg = connect_pg(url).await?;
    let present: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_one(&mut pg)
    .await?;
    if present > 0 {
        return Err(StoreError::Invalid(format!(
            "the database is not empty ({present} tables): restore only into a new, empty database"
        )));
    }

    // The schema as the backup's database had it: the migrations it had
    // applied, no more (their histories are in the backup like any table).
    for (history, migrator) in [
        (HISTORY_TABLES[0], crate::postgres_migrator()),
        (HISTORY_TABLES[1], crate::cluster::cluster_migrator()),
    ] {
        let applied = applied_versions(&mut file, &listed, history).await?;
        let known: BTreeSet<i64> = migrator.iter().map(|m| m.version).collect();
        if let Some(unknown) = applied.iter().find(|v| !known.contains(v)) {
            return Err(StoreError::Invalid(format!(
                "the backup's database had migration {unknown} of `{history}` applied, which this binary does not know: restore with the version of Portcullis that took the backup, or a newer one"
            )));
        }
        let mut subset = Migrator::with_migrations(
            migrator
                .iter()
                .filter(|m| applied.contains(&m.version))
                .cloned()
                .collect(),
        );
        if history != HISTORY_TABLES[0] {
            subset.dangerous_set_table_name(history);
        }
        subset.run_direct(None, &mut pg, false).await?;
    }

    let mut tx = pg.begin().await?;
    let data: Vec<&(i64, Table, i64)> = listed
        .iter()
        .filter(|(_, t, _)| !HISTORY_TABLES.contains(&t.name.as_str()))
        .collect();
    // Audit logs set aside (`serve --accept-tampered-log-from`) are tables
    // no migration makes: each is made again like the log table it was.
    let migrated: BTreeSet<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    for (_, table, _) in &data {
        if migrated.contains(&table.name) {
            continue;
        }
        if let Some(base) = set_aside_base(&table.name) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
                ident(&table.name),
                ident(base)
            )))
            .execute(&mut *tx)
            .await?;
        }
    }
    // What the migrations themselves inserted gives way to the backup's rows.
    let names: Vec<String> = data.iter().map(|(_, t, _)| ident(&t.name)).collect();
    if !names.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "TRUNCATE {}",
            names.join(", ")
        )))
        .execute(&mut *tx)
        .await?;
    }
    let mut summary = PgBackupSummary {
        tables: 0,
        rows: 0,
        schema: (0, 0),
    };
    for (position, table, rows) in data {
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                ident(&table.name),
                column_list(&table.columns)
            ))
            .await?;
        let mut chunk = 0i64;
        loop {
            let data: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT data FROM portcullis_pg_chunks WHERE position = ? AND chunk = ?",
            )
            .bind(position)
            .bind(chunk)
            .fetch_optional(&mut file)
            .await?;
            let Some(data) = data else { break };
            copy.send(data).await?;
            chunk += 1;
        }
        let loaded = copy.finish().await?;
        if loaded != *rows as u64 {
            return Err(StoreError::Invalid(format!(
                "table `{}`: the backup lists {rows} rows and {loaded} were restored",
                table.name
            )));
        }
        // An identity column's sequence continues after the restored ids.
        for column in &table.columns {
            let sequence: Option<String> =
                sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
                    .bind(ident(&table.name))
                    .bind(column)
                    .fetch_one(&mut *tx)
                    .await?;
            if let Some(sequence) = sequence {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT setval($1::regclass, COALESCE((SELECT MAX({}) FROM {}), 0) + 1, false)",
                    ident(column),
                    ident(&table.name)
                )))
                .bind(sequence)
                .execute(&mut *tx)
                .await?;
            }
        }
        summary.tables += 1;
        summary.rows += loaded;
    }
    summary.schema = schema_versions(&mut tx).await?;
    tx.commit().await?;
    pg.close().await?;

    let mut files = Vec::new();
    for row in sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT name, secret, contents FROM {} ORDER BY name",
        crate::backup::FILES_TABLE
    )))
    .fetch_all(&mut file)
    .await?
    {
        files.push(BackupFile {
            name: row.try_get("name")?,
            secret: row.try_get("secret")?,
            contents: row.try_get("contents")?,
        });
    }
    file.close().await?;
    Ok((summary, files))
}

/// The versions a backup's migration history table records as applied,
/// read by restoring nothing: the binary `COPY` stream of that table is
/// decoded here for its first column (`version`, a `BIGINT`).
async fn applied_versions(
    file: &mut SqliteConnection,
    listed: &[(i64, Table, i64)],
    history: &str,
) -> Result<BTreeSet<i64>, StoreError> {
    let Some((position, table, _)) = listed.iter().find(|(_, t, _)| t.name == history) else {
        return Ok(BTreeSet::new());
    };
    let damaged =
        |what: &str| StoreError::Invalid(format!("the backup's `{history}` is damaged: {what}"));
    let version_at = table
        .columns
        .iter()
        .position(|c| c == "version")
        .ok_or_else(|| damaged("no version column"))?;
    let success_at = table.columns.iter().position(|c| c == "success");
    let mut stream = Vec::new();
    for row in
        sqlx::query("SELECT data FROM portcullis_pg_chunks WHERE position = ? ORDER BY chunk")
            .bind(position)
            .fetch_all(&mut *file)
            .await?
    {
        stream.extend_from_slice(&row.try_get::<Vec<u8>, _>("data")?);
    }
    let rows = decode_copy_binary(&stream).ok_or_else(|| damaged("not a binary COPY stream"))?;
    let mut versions = BTreeSet::new();
    for fields in rows {
        let version = fields
            .get(version_at)
            .and_then(|f| f.as_ref())
            .and_then(|f| <[u8; 8]>::try_from(f.as_slice()).ok())
            .map(i64::from_be_bytes)
            .ok_or_else(|| damaged("a version is not a BIGINT"))?;
        let success = success_at
            .and_then(|i| fields.get(i))
            .and_then(|f| f.as_ref())
            .is_none_or(|f| f.first() == Some(&1));
        if success {
            versions.insert(version);
        }
    }
    Ok(versions)
}

/// The rows of a binary `COPY` stream, each a list of fields (`None` for
/// NULL); `None` if the stream is malformed.
fn decode_copy_binary(bytes: &[u8]) -> Option<Vec<Vec<Option<Vec<u8>>>>> {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut at = bytes.strip_prefix(SIGNATURE)?;
    let take = |at: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, rest) = (at.get(..n)?, at.get(n..)?);
        *at = rest;
        Some(head.to_vec())
    };
    let _flags = take(&mut at, 4)?;
    let extension = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
    take(&mut at, extension)?;
    let mut rows = Vec::new();
    loop {
        let count = i16::from_be_bytes(take(&mut at, 2)?.try_into().ok()?);
        if count == -1 {
            return Some(rows);
        }
        let mut fields = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count {
            let len = i32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?);
            fields.push(if len < 0 {
                None
            } else {
                Some(take(&mut at, len as usize)?)
            });
        }
        rows.push(fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    #[tokio::test]
    async fn a_postgres_backup_restores_into_an_empty_database_whole() {
        let dbs = TestDb::all().await;
        let Some(source) = dbs.iter().find(|d| matches!(d, TestDb::Postgres { .. })) else {
            return;
        };
        let store = source.open().await;
        let mut log = store.audit_appender().await.unwrap();
        let mut records: Vec<_> = (0..300)
            .map(|i| portcullis_audit::AuditRecord {
                request_id: format!("r{i}"),
                ..Default::default()
            })
            .collect();
        log.append(&mut records).await.unwrap();
        store
            .insert_sealed_key(&crate::SealedKeyRow {
                name: "ca".into(),
                version: 1,
                kek_id: "k".into(),
                wrapped_key: vec![1],
                ciphertext: vec![0, 255, 7],
                sealed_at: 1,
            })
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("backup");
        std::fs::write(&out, b"").unwrap();
        let files = vec![BackupFile {
            name: "audit.pub".into(),
            secret: false,
            contents: b"key".to_vec(),
        }];
        let taken = write_postgres_backup(&source.url(), &out, &files)
            .await
            .unwrap();
        assert_eq!(backup_kind(&out).await.unwrap(), PG_BACKUP_APPLICATION_ID);
        // The source is not empty: nothing is restored over it.
        assert!(matches!(
            restore_postgres_backup(&out, &source.url()).await,
            Err(StoreError::Invalid(m)) if m.contains("not empty")
        ));
        let target = TestDb::postgres().await.unwrap();
        let (restored, back) = restore_postgres_backup(&out, &target.url()).await.unwrap();
        assert_eq!(back, files);
        assert_eq!(restored, taken);
        let copy = target.open().await;
        assert_eq!(copy.audit_size().await.unwrap(), 300);
        assert_eq!(
            copy.audit_head(300).await.unwrap(),
            store.audit_head(300).await.unwrap()
        );
        assert_eq!(
            copy.audit_tail(300).await.unwrap(),
            store.audit_tail(300).await.unwrap()
        );
        assert_eq!(
            copy.sealed_keys().await.unwrap(),
            store.sealed_keys().await.unwrap()
        );
    }

    #[test]
    fn a_binary_copy_stream_decodes() {
        let mut s = b"PGCOPY\n\xff\r\n\0".to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&2i16.to_be_bytes());
        s.extend_from_slice(&8i32.to_be_bytes());
        s.extend_from_slice(&27i64.to_be_bytes());
        s.extend_from_slice(&(-1i32).to_be_bytes());
        s.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(
            decode_copy_binary(&s).unwrap(),
            vec![vec![Some(27i64.to_be_bytes().to_vec()), None]]
        );
        assert_eq!(decode_copy_binary(&s[..s.len() - 1]), None);
        assert_eq!(decode_copy_binary(b"nope"), None);
    }
}
