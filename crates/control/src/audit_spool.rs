//! The audit spool: records a shutdown could not commit in time, kept in a
//! file of the state directory and appended to the log at the next start.
//!
//! SIGTERM must end the process within the drain timeout even when the store
//! is stalled, and no record may be lost. So what the writer hands back
//! ([`crate::audit_sink::AuditWriter::finish_by`]) is written here as JSON
//! lines, appended and fsynced (the file, then its directory) before the
//! process exits. At start, before anything else is appended, [`replay`]
//! submits the spooled records in their order, so they enter the Merkle log
//! like any other record and `audit verify` holds. The file is removed once
//! they are durable.
//!
//! The spool holds records as they were before pseudonymization (the writer
//! applies it at append time), so the file is created owner-only (0600).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use portcullis_audit::AuditRecord;
use portcullis_store::Store;

use crate::audit_sink::AuditSink;

/// The spool's file name inside the state directory.
pub const SPOOL_FILE: &str = "audit-spool.jsonl";

/// The spool the writer fills while the shared store does not answer
/// (cluster mode) and appends from once it does: see
/// [`crate::audit_sink::AuditSink::spill_outages_to`]. A file of its own, so
/// that the replay of the shutdown spool at start never removes records an
/// outage spilled meanwhile.
pub const OUTAGE_SPOOL_FILE: &str = "audit-outage-spool.jsonl";

/// How far back into the log replay looks for records already committed (an
/// abandoned transaction whose commit had reached SQLite, or a replay cut
/// short before the spool was removed), beyond the spool's own length.
const REPLAY_OVERLAP: u32 = 256;

/// Why the spool could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file could not be written, synced or read.
    #[error("audit spool `{}`: {source}", path.display())]
    Io {
        /// The spool file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line other than the last is not a record: the file was altered.
    #[error("audit spool `{}` line {line} is not an audit record: {source}", path.display())]
    Corrupt {
        /// The spool file.
        path: PathBuf,
        /// Its 1-based line number.
        line: usize,
        /// The cause.
        source: serde_json::Error,
    },
    /// The log could not be read to skip records already in it.
    #[error("cannot read the audit log to replay the spool: {0}")]
    Store(#[from] portcullis_store::StoreError),
}

/// Appends `records` to the spool in `state_dir` and makes them durable.
pub fn spill(state_dir: &Path, records: &[AuditRecord]) -> Result<(), SpoolError> {
    spill_to(state_dir, SPOOL_FILE, records)
}

/// Appends `records` to the spool file `name` in `state_dir` and makes them
/// durable.
pub fn spill_to(state_dir: &Path, name: &str, records: &[AuditRecord]) -> Result<(), SpoolError> {
    let path = state_dir.join(name);
    let io = |source| SpoolError::Io {
        path: path.clone(),
        source,
    };
    let mut text = Vec::new();
    for record in records {
        // A record is plain data: serializing it cannot fail.
        serde_json::to_writer(&mut text, record).map_err(|e| io(e.into()))?;
        text.push(b'\n');
    }
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(io)?;
    file.write_all(&text).map_err(io)?;
    file.sync_all().map_err(io)?;
    // A new file's name is durable only once its directory is.
    File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io)?;
    Ok(())
}

/// The spooled records, oldest first; empty when there is no spool. A last
/// line cut short (a crash while spilling) is dropped with a warning: it was
/// never reported as spilled.
pub fn read(state_dir: &Path) -> Result<Vec<AuditRecord>, SpoolError> {
    read_from(state_dir, SPOOL_FILE)
}

/// [`read`] of the spool file `name`.
pub fn read_from(state_dir: &Path, name: &str) -> Result<Vec<AuditRecord>, SpoolError> {
    let path = state_dir.join(name);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(SpoolError::Io { path, source }),
    };
    let lines = BufReader::new(file)
        .lines()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| SpoolError::Io {
            path: path.clone(),
            source,
        })?;
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(e) if i + 1 == lines.len() => {
                tracing::warn!(file = %path.display(), error = %e, "dropping a torn last line of the audit spool");
            }
            Err(source) => {
                return Err(SpoolError::Corrupt {
                    path,
                    line: i + 1,
                    source,
                });
            }
        }
    }
    Ok(records)
}

/// Submits the spooled records to `sink` (call it before anything else is
/// submitted), skipping those already at the end of the log, and returns
/// how many it submitted. [`remove_when_durable`] deletes the file after.
pub async fn replay(state_dir: &Path, store: &Store, sink: &AuditSink) -> Result<u64, SpoolError> {
    let records = read(state_dir)?;
    if records.is_empty() {
        return Ok(0);
    }
    let overlap = u32::try_from(records.len())
        .unwrap_or(u32::MAX)
        .saturating_add(REPLAY_OVERLAP);
    let present: std::collections::HashSet<(String, i64)> = store
        .audit_tail(overlap)
        .await?
        .into_iter()
        .map(|r| (r.request_id, r.time_ms))
        .collect();
    let mut submitted = 0;
    for record in records {
        if present.contains(&(record.request_id.clone(), record.time_ms)) {
            continue;
        }
        sink.submit(record);
        submitted += 1;
    }
    tracing::info!(
        records = submitted,
        file = %state_dir.join(SPOOL_FILE).display(),
        "replaying audit records spilled at the last shutdown"
    );
    Ok(submitted)
}

/// Removes the spool once the log holds `size` records (what it held before
/// the replay plus what was replayed), so a crash before then replays again
/// rather than losing them.
pub async fn remove_when_durable(state_dir: PathBuf, sink: AuditSink, size: u64) {
    let mut head = sink.watch_head();
    if head.wait_for(|h| h.size >= size).await.is_err() {
        return;
    }
    let path = state_dir.join(SPOOL_FILE);
    match fs::remove_file(&path) {
        Ok(()) => tracing::info!(file = %path.display(), "audit spool replayed and removed"),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot remove the replayed audit spool; the next start skips what it already holds")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> AuditRecord {
        AuditRecord {
            request_id: id.into(),
            time_ms: 7,
            action: "GET".into(),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn spilled_records_read_back_in_order_across_spills() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        spill(dir.path(), &[record("a"), record("b")]).unwrap();
        spill(dir.path(), &[record("c")]).unwrap();
        let ids: Vec<_> = read(dir.path())
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(SPOOL_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_torn_last_line_is_dropped_but_a_bad_middle_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        spill(dir.path(), &[record("a")]).unwrap();
        let path = dir.path().join(SPOOL_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"time_ms\":").unwrap();
        assert_eq!(read(dir.path()).unwrap().len(), 1);
        file.write_all(b"\n").unwrap();
        spill(dir.path(), &[record("b")]).unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(SpoolError::Corrupt { line: 2, .. })
        ));
    }
}
