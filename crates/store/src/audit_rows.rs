//! How an audit record is kept in a row of `audit_log`, and read back.
//!
//! Since migration `0014_audit_compact.sql` a record is written in the
//! compact form of [`portcullis_audit::compact`]: a BLOB that names recurring
//! strings by their number in `audit_strings`, beside the `seq`, `request_id`
//! and `time_ms` columns it leaves out. Rows written before hold the record's
//! canonical JSON, which is their leaf as it is. Either way the leaf (what is
//! hashed, exported, archived and proven) is the canonical JSON: readers get
//! it from [`StoredRow::leaf`].

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::backend::DbRow;
use portcullis_audit::AuditRecord;
use portcullis_audit::compact::{self, DecodeError};

use crate::StoreError;

/// The columns a record is read from, in the order [`StoredRow::from_row`] wants.
pub(crate) const RECORD_COLUMNS: &str = "seq, request_id, time_ms, record";

/// One row of `audit_log` as stored.
pub(crate) struct StoredRow {
    pub(crate) seq: u64,
    request_id: String,
    time_ms: i64,
    bytes: Vec<u8>,
}

impl StoredRow {
    /// Reads the [`RECORD_COLUMNS`] of a row.
    pub(crate) fn from_row(row: &impl DbRow) -> Result<Self, sqlx::Error> {
        Ok(StoredRow {
            seq: row.col::<i64, _>(0)? as u64,
            request_id: row.col(1)?,
            time_ms: row.col(2)?,
            bytes: row.col(3)?,
        })
    }

    /// Rows written before the compact form hold their leaf as JSON text.
    fn is_json(&self) -> bool {
        self.bytes.first() == Some(&b'{')
    }

    fn decode(&self, strings: &[String]) -> Result<AuditRecord, DecodeError> {
        compact::decode(
            &self.bytes,
            self.seq,
            self.time_ms,
            self.request_id.clone(),
            |id| strings.get(id as usize).map(String::as_str),
        )
    }

    /// The record's leaf: its canonical JSON.
    pub(crate) fn leaf(&self, strings: &[String]) -> Result<Vec<u8>, DecodeError> {
        if self.is_json() {
            return Ok(self.bytes.clone());
        }
        Ok(self.decode(strings)?.canonical_bytes())
    }

    /// The record.
    pub(crate) fn record(&self, strings: &[String]) -> Result<AuditRecord, RowError> {
        if self.is_json() {
            return serde_json::from_slice(&self.bytes).map_err(|e| RowError::Json(e.to_string()));
        }
        self.decode(strings).map_err(RowError::Decode)
    }
}

/// Why a row is not a record.
#[derive(Debug)]
pub(crate) enum RowError {
    Decode(DecodeError),
    Json(String),
}

impl RowError {
    fn unknown_string(&self) -> bool {
        matches!(self, RowError::Decode(DecodeError::UnknownString(_)))
    }
}

impl From<DecodeError> for RowError {
    fn from(e: DecodeError) -> Self {
        RowError::Decode(e)
    }
}

impl From<RowError> for StoreError {
    fn from(e: RowError) -> Self {
        StoreError::Corrupt {
            table: "audit_log",
            detail: match e {
                RowError::Decode(e) => e.to_string(),
                RowError::Json(e) => e,
            },
        }
    }
}

/// The string table as last read, shared by a store's clones. Strings are
/// only ever added, so a reader that meets a number it has not read reloads
/// what was added since, once.
#[derive(Debug, Default, Clone)]
pub(crate) struct StringCache(Arc<RwLock<Vec<String>>>);

impl StringCache {
    /// Runs `f` over the table, reloading it once when `f` names a string
    /// added since it was last read.
    pub(crate) async fn with<T>(
        &self,
        pool: &crate::backend::Pool,
        f: impl Fn(&[String]) -> Result<T, RowError>,
    ) -> Result<T, StoreError> {
        let first = f(&self.0.read().unwrap_or_else(PoisonError::into_inner));
        match first {
            Err(e) if e.unknown_string() => {
                self.refresh(pool).await?;
                Ok(f(&self.0.read().unwrap_or_else(PoisonError::into_inner))?)
            }
            other => Ok(other?),
        }
    }

    /// The leaves of `rows`, each or why it does not decode, rereading the
    /// table once when a row names a string added since it was last read.
    pub(crate) async fn leaves(
        &self,
        pool: &crate::backend::Pool,
        rows: &[StoredRow],
    ) -> Result<Vec<Result<Vec<u8>, DecodeError>>, StoreError> {
        let decode = || {
            let table = self.0.read().unwrap_or_else(PoisonError::into_inner);
            rows.iter().map(|row| row.leaf(&table)).collect::<Vec<_>>()
        };
        let leaves = decode();
        if leaves
            .iter()
            .any(|l| matches!(l, Err(DecodeError::UnknownString(_))))
        {
            self.refresh(pool).await?;
            return Ok(decode());
        }
        Ok(leaves)
    }

    /// Reads the strings added since the last read.
    async fn refresh(&self, pool: &crate::backend::Pool) -> Result<(), StoreError> {
        let have = self.0.read().unwrap_or_else(PoisonError::into_inner).len();
        let more = load_strings(pool, have).await?;
        let mut strings = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if strings.len() == have {
            strings.extend(more);
        }
        Ok(())
    }

    /// Adds strings an appender just committed, when they are the next ones.
    pub(crate) fn extend(&self, first: u64, added: &[String]) {
        let mut strings = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if strings.len() as u64 == first {
            strings.extend(added.iter().cloned());
        }
    }
}

/// The strings numbered `from` and up, in order.
pub(crate) async fn load_strings(
    pool: &crate::backend::Pool,
    from: usize,
) -> Result<Vec<String>, StoreError> {
    crate::backend::with_pool!(pool, |pool| {
        let rows = query("SELECT id, value FROM audit_strings WHERE id >= ? ORDER BY id")
            .bind(from as i64)
            .fetch_all(pool)
            .await?;
        let mut strings = Vec::with_capacity(rows.len());
        for (expected, row) in (from..).zip(&rows) {
            let id: i64 = row.col(0)?;
            if id as usize != expected {
                return Err(StoreError::Corrupt {
                    table: "audit_strings",
                    detail: format!("string {expected} is missing"),
                });
            }
            strings.push(row.col(1)?);
        }
        Ok(strings)
    })
}

/// The appender's side of the string table: every string by text, and the
/// strings a batch adds until its transaction commits.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<String, u64>,
    strings: Vec<String>,
    added: Vec<String>,
}

impl Interner {
    pub(crate) async fn load(pool: &crate::backend::Pool) -> Result<Self, StoreError> {
        let strings = load_strings(pool, 0).await?;
        let ids = (0u64..)
            .zip(&strings)
            .map(|(i, s)| (s.clone(), i))
            .collect();
        Ok(Interner {
            ids,
            strings,
            added: Vec::new(),
        })
    }

    /// The number of `text`, adding it to the batch's strings if it is new.
    pub(crate) fn intern(&mut self, text: &str) -> u64 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = (self.strings.len() + self.added.len()) as u64;
        self.added.push(text.to_owned());
        self.ids.insert(text.to_owned(), id);
        id
    }

    /// The string numbered `id`, the batch's included.
    pub(crate) fn lookup(&self, id: u64) -> Option<&str> {
        let id = id as usize;
        match id.checked_sub(self.strings.len()) {
            None => self.strings.get(id),
            Some(i) => self.added.get(i),
        }
        .map(String::as_str)
    }

    /// The strings the batch added, with the number of the first.
    pub(crate) fn added(&self) -> (u64, &[String]) {
        (self.strings.len() as u64, &self.added)
    }

    /// How many strings the table holds (the batch's not counted).
    pub(crate) fn len(&self) -> usize {
        self.strings.len()
    }

    /// Adds strings another writer committed (numbered from [`Self::len`]).
    pub(crate) fn extend_committed(&mut self, more: Vec<String>) {
        for text in more {
            let id = self.strings.len() as u64;
            self.ids.insert(text.clone(), id);
            self.strings.push(text);
        }
    }

    /// The batch committed: its strings are the table's.
    pub(crate) fn commit(&mut self) {
        self.strings.append(&mut self.added);
    }

    /// The batch failed: forget its strings.
    pub(crate) fn roll_back(&mut self) {
        for text in self.added.drain(..) {
            self.ids.remove(&text);
        }
    }
}

/// The compact stored form of `record`, or `None` when the compact form
/// would not give back exactly this record: then its canonical JSON (its
/// leaf) is stored, which is always read back as it is. The compact form
/// leaves the seq out (it is the row's key), so it can be encoded before the
/// record is numbered, and holds whatever seq the record is then given. Every record is decoded back and compared; `check` is what it
/// is decoded into, kept by the caller from one record to the next so the
/// check reuses its strings instead of allocating a record's worth each
/// time.
pub(crate) fn stored_form(
    record: &AuditRecord,
    strings: &mut Interner,
    check: &mut AuditRecord,
) -> Option<Vec<u8>> {
    let bytes = compact::encode(record, &mut |s| strings.intern(s));
    // The fields kept beside the compact form, as a reader takes them from
    // their columns.
    check.seq = record.seq;
    check.time_ms = record.time_ms;
    check.request_id.clone_from(&record.request_id);
    let back = compact::decode_into(&bytes, |id| strings.lookup(id), check);
    if back.is_ok() && *check == *record {
        Some(bytes)
    } else {
        tracing::warn!(
            request_id = %record.request_id,
            "the compact form does not give this audit record back: storing its JSON"
        );
        None
    }
}
