//! Retention of the audit log: sealed archive segments, pruning, and
//! verification and proofs that span the archive and the database.
//!
//! A segment holds records `start..end` of the log as three files in the
//! archive directory, named `audit-<start>-<end>.*` (20-digit numbers):
//! - `.leaves`: the exact leaves, one per line (the `audit export` format);
//! - `.checkpoints`: the signed checkpoints over sizes in `start + 1..=end`,
//!   and the log's latest checkpoint when the segment was sealed (the head);
//! - `.seal.json` ([`SegmentSeal`]), written last: the tree head over
//!   `0..end`, the head's size and root, and the consistency proof from `end`
//!   to the head, so a record of the segment can be proven in a signed tree
//!   without the database.
//!
//! Pruning deletes the archived rows but keeps every stored subtree hash
//! (level [`NODE_MIN_LEVEL`] and up). Segments end on a multiple of
//! 2^`NODE_MIN_LEVEL` records, so every proof about a record still stored, and
//! the appender's frontier, are made of stored subtrees only. One row always
//! stays, so the log's size is still `MAX(seq) + 1`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use portcullis_audit::checkpoint::{self, Checkpoint};
use portcullis_audit::merkle::{self, Hash, MerkleAccumulator, range_subtrees};
use portcullis_audit::note::VerifierKey;
use portcullis_audit::verify::{LogVerifier, VerifyError, VerifySummary};
use serde::{Deserialize, Serialize};

use crate::audit_log::{AuditVerifyFailure, NODE_MIN_LEVEL, open_checkpoint};
use crate::audit_rows::{RECORD_COLUMNS, StoredRow};
use crate::{Store, StoreError};

/// The `format` of a segment seal.
pub const SEGMENT_FORMAT: &str = "portcullis-audit-segment/1";
/// Segments end on a multiple of this many records (see the module docs).
const ALIGN: u64 = 1 << NODE_MIN_LEVEL;
/// Records deleted per transaction when pruning, so the audit writer never
/// waits long for the database's write lock.
const PRUNE_CHUNK: u64 = ALIGN * 64;
/// Records read per query when writing a segment.
const READ_PAGE: u64 = 8_192;

/// Why archiving, or reading an archive, failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the archive could not be read or written.
    #[error("`{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The archive is not what the log says it should be.
    #[error("archive `{path}`: {detail}")]
    Invalid {
        /// The file or directory.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// The seal of a segment (`.seal.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSeal {
    /// [`SEGMENT_FORMAT`].
    pub format: String,
    /// First record of the segment.
    pub start: u64,
    /// One past its last record.
    pub end: u64,
    /// Tree head over records `0..end`, hex.
    pub root: String,
    /// Size of the log's latest signed checkpoint when the segment was sealed.
    pub head_size: u64,
    /// Its tree head, hex.
    pub head_root: String,
    /// Consistency proof from `end` to `head_size`, hex hashes.
    pub consistency: Vec<String>,
}

/// A segment found in an archive directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its seal.
    pub seal: SegmentSeal,
    /// The `.leaves` file.
    pub leaves: PathBuf,
    /// The `.checkpoints` file.
    pub checkpoints: PathBuf,
}

/// What [`Store::archive_audit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveOutcome {
    /// The segment written, if there was anything new to archive.
    pub written: Option<Segment>,
    /// Records still stored from this seq on.
    pub first_stored: u64,
}

/// The proof that an archived record is in a signed tree, read from the
/// archive alone (see [`archived_inclusion`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedInclusion {
    /// The record's exact leaf.
    pub leaf: String,
    /// The segment's end: the tree the inclusion proof is against.
    pub size: u64,
    /// Inclusion proof of the record in the tree of `size` records.
    pub proof: Vec<Hash>,
    /// Tree head over `0..size`.
    pub root: Hash,
    /// The signed head the segment was sealed against.
    pub head: Checkpoint,
    /// Consistency proof from `size` to the head.
    pub consistency: Vec<Hash>,
}

/// What a verification over an archive and the database covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveVerifySummary {
    /// The walk over every record checked.
    pub summary: VerifySummary,
    /// Records `0..unchecked` were archived and no archive was given: the
    /// walk resumed from the stored subtree hashes after them.
    pub unchecked: u64,
    /// Records read from the archive.
    pub archived: u64,
}

impl Store {
    /// The first record still stored (0 when nothing was pruned).
    pub async fn audit_first_seq(&self) -> Result<u64, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let first: Option<i64> = query_scalar("SELECT MIN(seq) FROM audit_log")
                .fetch_one(pool)
                .await?;
            Ok(first.map_or(0, |s| s as u64))
        })
    }

    /// Writes the records appended before `before_ms` (and not archived yet)
    /// as a sealed segment in `dir`, then prunes them. Only records covered by
    /// a signed checkpoint and already delivered by every export sink are
    /// archived; a segment that exists in `dir` but was not pruned (a crash
    /// in between) is pruned first. Runs beside a serving gateway: it reads
    /// and deletes below the tree's end, the audit writer appends at it.
    pub async fn archive_audit(
        &self,
        before_ms: i64,
        dir: &Path,
    ) -> Result<ArchiveOutcome, ArchiveError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
            // One archiver per directory: the server's retention task and an
            // operator's `audit archive` must not write overlapping segments.
            let lock_path = dir.join(".lock");
            let lock =
                std::fs::File::create(&lock_path).map_err(|source| io(&lock_path, source))?;
            if lock.try_lock().is_err() {
                return Err(invalid(
                    dir,
                    "another archiver is writing to this directory",
                ));
            }

            let mut first = self.audit_first_seq().await?;
            let segments = read_segments(&[dir.to_path_buf()])?;
            if let Some(last) = segments.last() {
                let end = last.seal.end;
                if end < first {
                    return Err(invalid(
                        dir,
                        &format!(
                            "its segments end at record {end} but the log's stored records start at {first}: archive into the directory holding records {end}..{first}"
                        ),
                    ));
                }
                if end > first {
                    // Sealed but not (fully) pruned: check it still is the stored tree.
                    if hex::encode(self.audit_head(end).await?) != last.seal.root {
                        return Err(invalid(
                            &last.leaves,
                            "its tree head is not the log's: not pruning",
                        ));
                    }
                    self.prune_audit(first, end).await?;
                    first = end;
                }
            }

            let size = self.audit_size().await?;
            let Some(head) = self.latest_checkpoint().await? else {
                return Ok(ArchiveOutcome {
                    written: None,
                    first_stored: first,
                });
            };
            let older: Option<i64> = query_scalar(
                "SELECT seq FROM audit_log WHERE seq >= ? AND time_ms >= ? ORDER BY seq LIMIT 1",
            )
            .bind(first as i64)
            .bind(before_ms)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::from)?;
            let undelivered: Option<i64> =
                query_scalar("SELECT MIN(next_seq) FROM audit_export_cursors")
                    .fetch_one(pool)
                    .await
                    .map_err(StoreError::from)?;
            let cut = older
                .map_or(size, |s| s as u64)
                .min(head.size)
                .min(size.saturating_sub(1))
                .min(undelivered.map_or(u64::MAX, |s| s.max(0) as u64));
            let cut = cut / ALIGN * ALIGN;
            if cut <= first {
                return Ok(ArchiveOutcome {
                    written: None,
                    first_stored: first,
                });
            }

            let segment = self.write_segment(dir, first, cut, &head).await?;
            self.prune_audit(first, cut).await?;
            drop(lock);
            Ok(ArchiveOutcome {
                written: Some(segment),
                first_stored: cut,
            })
        })
    }

    async fn write_segment(
        &self,
        dir: &Path,
        start: u64,
        end: u64,
        head: &crate::StoredCheckpoint,
    ) -> Result<Segment, ArchiveError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let stem = format!("audit-{start:020}-{end:020}");
            let leaves_path = dir.join(format!("{stem}.leaves"));
            let checkpoints_path = dir.join(format!("{stem}.checkpoints"));
            let seal_path = dir.join(format!("{stem}.seal.json"));

            let frontier = self.subtree_hashes(&range_subtrees(0..start)).await?;
            let mut acc = MerkleAccumulator::from_frontier(start, frontier)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            let tmp = leaves_path.with_extension("leaves.tmp");
            let file = std::fs::File::create(&tmp).map_err(|source| io(&tmp, source))?;
            let mut out = std::io::BufWriter::new(file);
            // Every record below the signed head was appended before the head was
            // signed, and so were the strings they name.
            let strings = crate::audit_rows::load_strings(&self.pool, 0).await?;
            for page in (start..end).step_by(READ_PAGE as usize) {
                let mut rows = query_dyn(format!(
                    "SELECT {RECORD_COLUMNS} FROM audit_log WHERE seq >= ? AND seq < ? ORDER BY seq"
                ))
                .bind(page as i64)
                .bind((page + READ_PAGE).min(end) as i64)
                .fetch(pool);
                while let Some(row) = rows.try_next().await.map_err(StoreError::from)? {
                    let row = StoredRow::from_row(&row).map_err(StoreError::from)?;
                    if row.seq != acc.size() {
                        return Err(invalid(
                            &leaves_path,
                            &format!("record {} is missing from the log", acc.size()),
                        ));
                    }
                    let leaf = row
                        .leaf(&strings)
                        .map_err(|e| invalid(&leaves_path, &format!("record {}: {e}", row.seq)))?;
                    acc.push(merkle::leaf_hash(&leaf));
                    out.write_all(&leaf)
                        .and_then(|()| out.write_all(b"\n"))
                        .map_err(|source| io(&tmp, source))?;
                }
            }
            if acc.size() != end {
                return Err(invalid(
                    &leaves_path,
                    &format!("record {} is missing from the log", acc.size()),
                ));
            }
            // The records written must be the ones the stored tree (and so every
            // checkpoint) commits to, or the archive would seal something else.
            let root = self.audit_head(end).await?;
            if acc.root() != root {
                return Err(invalid(
                    &leaves_path,
                    "the records do not hash to the stored tree: run `audit verify`",
                ));
            }
            let file = out.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
            file.sync_all().map_err(|source| io(&tmp, source))?;
            std::fs::rename(&tmp, &leaves_path).map_err(|source| io(&leaves_path, source))?;

            let mut notes = String::new();
            for c in self.checkpoints().await? {
                if (c.size > start && c.size <= end) || c.size == head.size {
                    notes.push_str(&c.note);
                }
            }
            write_synced(&checkpoints_path, notes.as_bytes())?;

            let seal = SegmentSeal {
                format: SEGMENT_FORMAT.to_owned(),
                start,
                end,
                root: hex::encode(root),
                head_size: head.size,
                head_root: hex::encode(self.audit_head(head.size).await?),
                consistency: self
                    .consistency_proof(end, head.size)
                    .await?
                    .iter()
                    .map(hex::encode)
                    .collect(),
            };
            let text =
                serde_json::to_vec_pretty(&seal).map_err(|e| StoreError::Invalid(e.to_string()))?;
            write_synced(&seal_path, &text)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| io(dir, source))?;
            Ok(Segment {
                seal,
                leaves: leaves_path,
                checkpoints: checkpoints_path,
            })
        })
    }

    /// Deletes records `from..to` (archived), their personal values, and the
    /// checkpoints below `to` (in the archive), a chunk per transaction.
    async fn prune_audit(&self, from: u64, to: u64) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut done = from;
            while done < to {
                let next = (done + PRUNE_CHUNK).min(to);
                let mut tx = begin_audit_write(pool).await?;
                query("DELETE FROM audit_log WHERE seq < ?")
                    .bind(next as i64)
                    .execute(&mut *tx)
                    .await?;
                query("DELETE FROM audit_personal WHERE seq < ?")
                    .bind(next as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                done = next;
            }
            query("DELETE FROM audit_checkpoints WHERE tree_size < ?")
                .bind(to as i64)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// [`verify_audit_log`](Self::verify_audit_log) over the archive's
    /// segments (from `archives`, which together must hold records `0..n`
    /// contiguously) followed by the stored records. With no archive, a pruned
    /// prefix is skipped: the walk resumes from the stored subtree hashes
    /// after it, and [`ArchiveVerifySummary::unchecked`] says how much was
    /// not seen.
    pub async fn verify_audit_log_with_archive(
        &self,
        verifier: &VerifierKey,
        origin: &str,
        extra: &[String],
        archives: &[PathBuf],
    ) -> Result<ArchiveVerifySummary, AuditVerifyFailure> {
        let segments = read_segments(archives).map_err(archive_failure)?;
        let mut notes: Vec<String> = extra.to_vec();
        for segment in &segments {
            let text = std::fs::read_to_string(&segment.checkpoints)
                .map_err(|source| archive_failure(io(&segment.checkpoints, source)))?;
            notes.extend(checkpoint::split_notes(&text));
        }
        // The archive may be pruned concurrently (the retention task, or an
        // operator's `audit archive`): a walk that raced a prune is retried.
        let mut attempt = 0;
        loop {
            let first = self.audit_first_seq().await?;
            let result = self
                .verify_from(verifier, origin, &notes, &segments, first)
                .await;
            attempt += 1;
            if result.is_err() && attempt < 3 && self.audit_first_seq().await? != first {
                continue;
            }
            return result;
        }
    }

    async fn verify_from(
        &self,
        verifier: &VerifierKey,
        origin: &str,
        notes: &[String],
        segments: &[Segment],
        first: u64,
    ) -> Result<ArchiveVerifySummary, AuditVerifyFailure> {
        let checkpoints = self.opened_checkpoints(verifier, origin, notes).await?;
        let mut walk = LogVerifier::new(checkpoints.clone());
        for segment in segments {
            walk_segment(&mut walk, segment, &checkpoints)?;
        }
        let archived = walk.size();
        let unchecked;
        if archived < first {
            if !segments.is_empty() {
                return Err(archive_failure(invalid(
                    &segments[segments.len() - 1].leaves,
                    &format!(
                        "the archive ends at record {archived} but the log's stored records start at {first}: records {archived}..{first} are missing"
                    ),
                )));
            }
            let frontier = self.subtree_hashes(&range_subtrees(0..first)).await?;
            let acc = MerkleAccumulator::from_frontier(first, frontier)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            walk = LogVerifier::resume(acc, checkpoints)?;
            unchecked = first;
        } else {
            unchecked = 0;
            // The archive must be the prefix the stored tree commits to.
            if archived > 0 && archived <= self.audit_size().await? {
                let stored = self.audit_head(archived).await?;
                if stored != walk.root() {
                    return Err(VerifyError::CheckpointMismatch {
                        from: 0,
                        to: archived,
                    }
                    .into());
                }
            }
        }
        let summary = self.walk_stored(walk, first.max(archived)).await?;
        if summary.size > 0 && summary.checkpoints == 0 && unchecked == 0 {
            return Err(AuditVerifyFailure::Unsigned(summary.size));
        }
        Ok(ArchiveVerifySummary {
            summary,
            unchecked,
            archived,
        })
    }
}

/// Pushes a segment's leaves and checks its seal.
fn walk_segment(
    walk: &mut LogVerifier,
    segment: &Segment,
    checkpoints: &[Checkpoint],
) -> Result<(), AuditVerifyFailure> {
    let seal = &segment.seal;
    let path = &segment.leaves;
    if seal.start != walk.size() {
        return Err(archive_failure(invalid(
            path,
            &format!(
                "the segment starts at record {} but the archive before it ends at {}",
                seal.start,
                walk.size()
            ),
        )));
    }
    let file = std::fs::File::open(path).map_err(|source| archive_failure(io(path, source)))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| archive_failure(io(path, source)))?;
        if n == 0 {
            break;
        }
        let leaf = line.strip_suffix(b"\n").unwrap_or(&line);
        walk.push(leaf, None, |_| {})?;
    }
    if walk.size() != seal.end || hex::encode(walk.root()) != seal.root {
        return Err(VerifyError::CheckpointMismatch {
            from: seal.start,
            to: seal.end,
        }
        .into());
    }
    // The seal's proof ties the segment to the head it was sealed against,
    // which must be a signed checkpoint.
    let head = checkpoints
        .iter()
        .find(|c| c.size == seal.head_size)
        .ok_or_else(|| {
            archive_failure(invalid(
                path,
                &format!(
                    "no signed checkpoint at the seal's head size {}",
                    seal.head_size
                ),
            ))
        })?;
    let proof = hashes(&seal.consistency).map_err(|d| archive_failure(invalid(path, &d)))?;
    merkle::verify_consistency(seal.end, head.size, &walk.root(), &head.root, &proof).map_err(
        |e| archive_failure(invalid(path, &format!("the seal's consistency proof: {e}"))),
    )?;
    Ok(())
}

/// The segments in `dirs`, by start; fails unless they are contiguous from 0
/// (or from the first segment's start, when it is the only directory given
/// for a log whose earlier segments moved elsewhere: then [`verify`] reports
/// the gap).
pub fn read_segments(dirs: &[PathBuf]) -> Result<Vec<Segment>, ArchiveError> {
    let mut segments = Vec::new();
    for dir in dirs {
        let entries = std::fs::read_dir(dir).map_err(|source| io(dir, source))?;
        for entry in entries {
            let path = entry.map_err(|source| io(dir, source))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(".seal.json") else {
                continue;
            };
            let text = std::fs::read(&path).map_err(|source| io(&path, source))?;
            let seal: SegmentSeal = serde_json::from_slice(&text)
                .map_err(|e| invalid(&path, &format!("not a segment seal: {e}")))?;
            if seal.format != SEGMENT_FORMAT || seal.start >= seal.end || seal.end > seal.head_size
            {
                return Err(invalid(&path, "not a segment seal this version reads"));
            }
            segments.push(Segment {
                seal,
                leaves: dir.join(format!("{stem}.leaves")),
                checkpoints: dir.join(format!("{stem}.checkpoints")),
            });
        }
    }
    segments.sort_by_key(|s| s.seal.start);
    for pair in segments.windows(2) {
        if pair[0].seal.end != pair[1].seal.start {
            return Err(invalid(
                &pair[1].leaves,
                &format!(
                    "segments are not contiguous: one ends at record {}, the next starts at {}",
                    pair[0].seal.end, pair[1].seal.start
                ),
            ));
        }
    }
    Ok(segments)
}

/// Proves archived record `index` from the archive alone: its inclusion in
/// the tree at its segment's end, and that tree's consistency with the signed
/// head the segment was sealed against (checked against `verifier`).
pub fn archived_inclusion(
    archives: &[PathBuf],
    index: u64,
    verifier: &VerifierKey,
    origin: &str,
) -> Result<ArchivedInclusion, ArchiveError> {
    let segments = read_segments(archives)?;
    let Some(segment) = segments
        .iter()
        .find(|s| s.seal.start <= index && index < s.seal.end)
    else {
        return Err(invalid(
            archives.first().map_or(Path::new("."), |p| p.as_path()),
            &format!("no segment holds record {index}"),
        ));
    };
    if segments[0].seal.start != 0 {
        return Err(invalid(
            &segments[0].leaves,
            "the archive does not start at record 0: give every archive directory",
        ));
    }
    let mut hashes_so_far = Vec::new();
    let mut leaf = None;
    for s in segments
        .iter()
        .take_while(|s| s.seal.start < segment.seal.end)
    {
        let file = std::fs::File::open(&s.leaves).map_err(|source| io(&s.leaves, source))?;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|source| io(&s.leaves, source))?;
            if hashes_so_far.len() as u64 == index {
                leaf = Some(line.clone());
            }
            hashes_so_far.push(merkle::leaf_hash(line.as_bytes()));
        }
    }
    let size = segment.seal.end;
    let path = &segment.leaves;
    let (Some(leaf), true) = (leaf, hashes_so_far.len() as u64 == size) else {
        return Err(invalid(
            path,
            "the segments do not hold the records their seals name",
        ));
    };
    let root = merkle::root(&hashes_so_far);
    if hex::encode(root) != segment.seal.root {
        return Err(invalid(
            path,
            "the records do not hash to the seal's tree head",
        ));
    }
    let proof = merkle::inclusion_proof(&hashes_so_far, index)
        .map_err(|e| invalid(path, &e.to_string()))?;
    let notes = std::fs::read_to_string(&segment.checkpoints)
        .map_err(|source| io(&segment.checkpoints, source))?;
    let head = checkpoint::split_notes(&notes)
        .iter()
        .filter_map(|n| open_checkpoint(n, verifier, origin).ok())
        .find(|c| c.size == segment.seal.head_size)
        .ok_or_else(|| {
            invalid(
                &segment.checkpoints,
                "no checkpoint signed by this key at the seal's head",
            )
        })?;
    let consistency = hashes(&segment.seal.consistency).map_err(|d| invalid(path, &d))?;
    Ok(ArchivedInclusion {
        leaf,
        size,
        proof,
        root,
        head,
        consistency,
    })
}

fn hashes(hex_hashes: &[String]) -> Result<Vec<Hash>, String> {
    hex_hashes
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| Hash::try_from(b).ok())
                .ok_or_else(|| format!("`{h}` is not a SHA-256 hash"))
        })
        .collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|source| io(&tmp, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io(&tmp, source))?;
    std::fs::rename(&tmp, path).map_err(|source| io(path, source))
}

fn io(path: &Path, source: std::io::Error) -> ArchiveError {
    ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, detail: &str) -> ArchiveError {
    ArchiveError::Invalid {
        path: path.to_path_buf(),
        detail: detail.to_owned(),
    }
}

fn archive_failure(e: ArchiveError) -> AuditVerifyFailure {
    match e {
        ArchiveError::Store(e) => AuditVerifyFailure::Store(e),
        other => AuditVerifyFailure::Archive(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use portcullis_audit::merkle::{verify_consistency, verify_inclusion};

    use super::*;
    use crate::audit_log::tests::{ORIGIN, build, record, sign_now, verifier};

    #[tokio::test]
    async fn archiving_prunes_and_keeps_every_later_proof() {
        for db in crate::testing::TestDb::all().await {
            let dir = tempfile::tempdir().unwrap();
            let (store, key, leaves) = crate::audit_log::tests::build_on(&db).await;
            archiving_prunes_on(&dir, store, key, leaves).await;
        }
    }

    async fn archiving_prunes_on(
        dir: &tempfile::TempDir,
        store: Store,
        key: ed25519_dalek::SigningKey,
        leaves: Vec<Hash>,
    ) {
        let archive = dir.path().join("archive");
        // Records carry time_ms = seq; 150 rounds down to the 64-record boundary.
        let outcome = store.archive_audit(150, &archive).await.unwrap();
        let segment = outcome.written.unwrap();
        assert_eq!(
            (segment.seal.start, segment.seal.end, outcome.first_stored),
            (0, 128, 128)
        );
        assert_eq!(store.audit_first_seq().await.unwrap(), 128);
        assert_eq!(store.audit_size().await.unwrap(), 300);
        let text = std::fs::read_to_string(&segment.leaves).unwrap();
        assert_eq!(text.lines().count(), 128);

        // Every proof about a stored record, and every head from the cut on,
        // is what it was before pruning.
        for size in [128u64, 129, 200, 255, 256, 300] {
            let root = store.audit_head(size).await.unwrap();
            assert_eq!(root, merkle::root(&leaves[..size as usize]));
            for index in (128..size).step_by(7) {
                let proof = store.inclusion_proof(index, size).await.unwrap();
                verify_inclusion(&leaves[index as usize], index, size, &proof, &root).unwrap();
            }
            for old in (128..=size).step_by(5) {
                let proof = store.consistency_proof(old, size).await.unwrap();
                assert_eq!(
                    proof,
                    merkle::consistency_proof(&leaves[..size as usize], old).unwrap()
                );
            }
        }
        assert!(matches!(
            store.inclusion_proof(5, 300).await,
            Err(StoreError::Invalid(_))
        ));

        // A pruned record is proven from the archive alone.
        let dirs = [archive.clone()];
        let proof = archived_inclusion(&dirs, 5, &verifier(&key), ORIGIN).unwrap();
        assert_eq!((proof.size, proof.head.size), (128, 300));
        let leaf = merkle::leaf_hash(proof.leaf.as_bytes());
        assert_eq!(leaf, leaves[5]);
        verify_inclusion(&leaf, 5, proof.size, &proof.proof, &proof.root).unwrap();
        verify_consistency(
            proof.size,
            300,
            &proof.root,
            &proof.head.root,
            &proof.consistency,
        )
        .unwrap();

        // The log verifies with its archive, and without it (the prefix skipped).
        let with = store
            .verify_audit_log_with_archive(&verifier(&key), ORIGIN, &[], &dirs)
            .await
            .unwrap();
        assert_eq!(
            (with.summary.size, with.archived, with.unchecked),
            (300, 128, 0)
        );
        let without = store
            .verify_audit_log_with_archive(&verifier(&key), ORIGIN, &[], &[])
            .await
            .unwrap();
        assert_eq!((without.summary.size, without.unchecked), (300, 128));

        // Appending resumes on the pruned tree; a second segment follows the first.
        let mut log = store.audit_appender().await.unwrap();
        let mut more: Vec<_> = (300..400).map(record).collect();
        log.append(&mut more).await.unwrap();
        sign_now(&store, &log, &key).await;
        let outcome = store.archive_audit(i64::MAX, &archive).await.unwrap();
        let second = outcome.written.unwrap();
        assert_eq!((second.seal.start, second.seal.end), (128, 384));
        let with = store
            .verify_audit_log_with_archive(&verifier(&key), ORIGIN, &[], &dirs)
            .await
            .unwrap();
        assert_eq!(
            (with.summary.size, with.archived, with.summary.signed_size),
            (400, 384, 400)
        );
        // Nothing new: nothing written.
        let again = store.archive_audit(i64::MAX, &archive).await.unwrap();
        assert_eq!(again.written, None);

        // A changed archived record is found at its index.
        let changed = text.replacen("\"status\":200", "\"status\":500", 1);
        std::fs::write(&segment.leaves, changed).unwrap();
        let err = store
            .verify_audit_log_with_archive(&verifier(&key), ORIGIN, &[], &dirs)
            .await
            .unwrap_err();
        assert!(matches!(err, AuditVerifyFailure::Tampered(_)), "{err}");
        // A missing segment is a gap, not a pass.
        std::fs::remove_file(
            archive.join("audit-00000000000000000000-00000000000000000128.seal.json"),
        )
        .unwrap();
        let err = store
            .verify_audit_log_with_archive(&verifier(&key), ORIGIN, &[], &dirs)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("starts at record 128"), "{err}");
    }

    #[tokio::test]
    async fn a_sealed_but_unpruned_segment_is_pruned_first() {
        let (dir, store, _key, _) = build().await;
        let archive = dir.path().join("archive");
        let head = store.latest_checkpoint().await.unwrap().unwrap();
        // As if the archiver died after sealing, before deleting.
        std::fs::create_dir_all(&archive).unwrap();
        store.write_segment(&archive, 0, 64, &head).await.unwrap();
        assert_eq!(store.audit_first_seq().await.unwrap(), 0);
        let outcome = store.archive_audit(200, &archive).await.unwrap();
        let written = outcome.written.unwrap();
        assert_eq!((written.seal.start, written.seal.end), (64, 192));
        assert_eq!(read_segments(&[archive]).unwrap().len(), 2);
    }
}
