//! Whole-log verification: recompute the tree from the leaves, one at a time,
//! and hold it against the log's signed checkpoints.
//!
//! The same [`LogVerifier`] checks a live store (`portcullis audit verify`) and
//! an exported log with no server (`audit verify --export`). It keeps only the
//! accumulator's frontier, so memory stays O(log n) however long the log is.
//!
//! What it catches, and where it points:
//! - a record removed, inserted or moved: its `seq` no longer equals its
//!   position, found at that exact index;
//! - a record changed, when the store also kept the leaf hash written with it:
//!   the recomputed hash differs, found at that exact index;
//! - a record changed together with its stored hash: the tree head no longer
//!   matches the next checkpoint, so the change lies between the last matching
//!   checkpoint and that one (the log signs a checkpoint every second);
//! - records removed from the end: a checkpoint covers more records than exist.

use thiserror::Error;

use crate::checkpoint::Checkpoint;
use crate::merkle::{Hash, MerkleAccumulator, Subtree, leaf_hash};

/// Why a log failed verification. Every variant names the first index that is
/// not what the log signed ([`first_bad_index`](Self::first_bad_index)).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The record at `index` carries another sequence number (or none): a
    /// record was removed, inserted or moved there.
    #[error(
        "record {index} is out of place: its seq is {}; a record was removed, inserted or reordered at index {index}",
        found.map_or_else(|| "missing".to_owned(), |s| s.to_string())
    )]
    SeqMismatch {
        /// The position in the log.
        index: u64,
        /// The `seq` the record carries.
        found: Option<u64>,
    },
    /// The record at `index` does not hash to the leaf hash stored when it was
    /// written: it was changed.
    #[error("record {index} was changed: it no longer hashes to the leaf hash written with it")]
    LeafHashMismatch {
        /// The position in the log.
        index: u64,
    },
    /// A stored interior node disagrees with the leaves below it.
    #[error(
        "stored subtree (level {level}, index {index}) disagrees with its records; the first is record {}",
        index << level
    )]
    NodeMismatch {
        /// The subtree's height.
        level: u32,
        /// Its position among subtrees of that height.
        index: u64,
    },
    /// The tree head over the first `to` records is not the one signed at that
    /// size, although the checkpoint at `from` matched.
    #[error(
        "records {from}..{to} do not match the checkpoint signed at tree size {to}; the first record that may have been changed is {from}"
    )]
    CheckpointMismatch {
        /// The size of the last checkpoint that matched (0 if none).
        from: u64,
        /// The size of the checkpoint that does not match.
        to: u64,
    },
    /// A checkpoint covers `checkpoint_size` records but the log has only `size`.
    #[error(
        "the log has {size} records but a checkpoint was signed over {checkpoint_size}: records from index {size} on were removed"
    )]
    Truncated {
        /// Records present.
        size: u64,
        /// The largest signed size.
        checkpoint_size: u64,
    },
}

impl VerifyError {
    /// The first index that is not as signed.
    pub fn first_bad_index(&self) -> u64 {
        match *self {
            VerifyError::SeqMismatch { index, .. } | VerifyError::LeafHashMismatch { index } => {
                index
            }
            VerifyError::NodeMismatch { level, index } => index << level,
            VerifyError::CheckpointMismatch { from, .. } => from,
            VerifyError::Truncated { size, .. } => size,
        }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Records checked.
    pub size: u64,
    /// Their tree head.
    pub root: Hash,
    /// Checkpoints whose tree head matched.
    pub checkpoints: usize,
    /// The size of the largest matching checkpoint; records after it are
    /// consistent among themselves but not yet signed.
    pub signed_size: u64,
}

/// Recomputes a log leaf by leaf; see the module docs.
#[derive(Debug)]
pub struct LogVerifier {
    acc: MerkleAccumulator,
    checkpoints: Vec<Checkpoint>,
    next: usize,
    good_size: u64,
}

impl LogVerifier {
    /// A verifier holding the log to `checkpoints`, whose signatures and origin
    /// the caller has already checked. Order does not matter.
    pub fn new(mut checkpoints: Vec<Checkpoint>) -> Self {
        checkpoints.sort_by_key(|c| c.size);
        checkpoints.dedup();
        let mut verifier = LogVerifier {
            acc: MerkleAccumulator::new(),
            checkpoints,
            next: 0,
            good_size: 0,
        };
        verifier.skip_empty_checkpoints();
        verifier
    }

    /// A verifier that starts after a prefix it does not see: `acc` is the
    /// tree over records `0..acc.size()` (rebuilt from stored subtree hashes
    /// when those records were archived and pruned). Checkpoints below that
    /// size cannot be checked and are dropped; one at exactly that size is
    /// held to `acc`'s head.
    pub fn resume(
        acc: MerkleAccumulator,
        mut checkpoints: Vec<Checkpoint>,
    ) -> Result<Self, VerifyError> {
        let size = acc.size();
        checkpoints.retain(|c| c.size >= size);
        let mut verifier = LogVerifier::new(checkpoints);
        verifier.acc = acc;
        verifier.good_size = size;
        while let Some(checkpoint) = verifier.checkpoints.get(verifier.next) {
            if checkpoint.size != size {
                break;
            }
            if checkpoint.root != verifier.acc.root() {
                return Err(VerifyError::CheckpointMismatch { from: 0, to: size });
            }
            verifier.next += 1;
        }
        Ok(verifier)
    }

    /// Leaves walked so far (the resumed prefix included).
    pub fn size(&self) -> u64 {
        self.acc.size()
    }

    /// The tree head over the leaves walked so far.
    pub fn root(&self) -> Hash {
        self.acc.root()
    }

    /// Checks the next leaf (the exact stored bytes of a record). `stored_hash`
    /// is the leaf hash the store kept beside it, if any. Every complete
    /// subtree the leaf completes is passed to `completed`, so a caller can
    /// compare stored interior nodes.
    pub fn push(
        &mut self,
        leaf: &[u8],
        stored_hash: Option<&Hash>,
        completed: impl FnMut(Subtree),
    ) -> Result<(), VerifyError> {
        let hash = Self::check_leaf(self.acc.size(), leaf, stored_hash)?;
        self.push_checked(hash, completed)
    }

    /// The checks of one leaf that need nothing but the leaf: its `seq` is its
    /// position `index`, and it hashes to the stored leaf hash. Returns the leaf
    /// hash. Independent per leaf, so callers may run it in parallel and feed
    /// the hashes to [`push_checked`](Self::push_checked) in order.
    pub fn check_leaf(
        index: u64,
        leaf: &[u8],
        stored_hash: Option<&Hash>,
    ) -> Result<Hash, VerifyError> {
        let found = leaf_seq(leaf);
        if found != Some(index) {
            return Err(VerifyError::SeqMismatch { index, found });
        }
        let hash = leaf_hash(leaf);
        if stored_hash.is_some_and(|stored| *stored != hash) {
            return Err(VerifyError::LeafHashMismatch { index });
        }
        Ok(hash)
    }

    /// Appends the next leaf hash, already checked by
    /// [`check_leaf`](Self::check_leaf), and holds the tree to any checkpoint
    /// at the new size.
    pub fn push_checked(
        &mut self,
        hash: Hash,
        completed: impl FnMut(Subtree),
    ) -> Result<(), VerifyError> {
        self.acc.push_reporting(hash, completed);
        let size = self.acc.size();
        while let Some(checkpoint) = self.checkpoints.get(self.next) {
            if checkpoint.size != size {
                break;
            }
            if checkpoint.root != self.acc.root() {
                return Err(VerifyError::CheckpointMismatch {
                    from: self.good_size,
                    to: size,
                });
            }
            self.good_size = size;
            self.next += 1;
        }
        Ok(())
    }

    /// Ends the walk: fails if a checkpoint covers records that are not there.
    pub fn finish(self) -> Result<VerifySummary, VerifyError> {
        let size = self.acc.size();
        if let Some(last) = self.checkpoints.last()
            && last.size > size
        {
            return Err(VerifyError::Truncated {
                size,
                checkpoint_size: last.size,
            });
        }
        Ok(VerifySummary {
            size,
            root: self.acc.root(),
            checkpoints: self.next,
            signed_size: self.good_size,
        })
    }

    /// Checkpoints of the empty tree hold nothing to compare but must still
    /// carry the empty tree's head.
    fn skip_empty_checkpoints(&mut self) {
        while self
            .checkpoints
            .get(self.next)
            .is_some_and(|c| c.size == 0 && c.root == crate::merkle::empty_root())
        {
            self.next += 1;
        }
    }
}

/// The `seq` of a record from its canonical bytes, which always begin
/// `{"seq":<n>,` (`null` before the record was appended). Reads only the prefix:
/// verification never parses a whole record.
pub fn leaf_seq(leaf: &[u8]) -> Option<u64> {
    let rest = leaf.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest.get(digits) != Some(&b',') || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::root;
    use crate::{AuditRecord, Outcome};

    fn leaves(n: u64) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                AuditRecord {
                    seq: Some(i),
                    request_id: format!("r{i}"),
                    action: "GET".into(),
                    outcome: Outcome::Allow,
                    status: 200,
                    ..Default::default()
                }
                .canonical_bytes()
            })
            .collect()
    }

    #[test]
    fn resume_checks_only_what_follows() {
        let all = leaves(100);
        let cps = vec![
            checkpoint(&all, 10),
            checkpoint(&all, 64),
            checkpoint(&all, 100),
        ];
        let mut acc = MerkleAccumulator::new();
        for leaf in &all[..64] {
            acc.push(leaf_hash(leaf));
        }
        let mut verifier = LogVerifier::resume(acc.clone(), cps.clone()).unwrap();
        for leaf in &all[64..] {
            verifier.push(leaf, None, |_| {}).unwrap();
        }
        let summary = verifier.finish().unwrap();
        assert_eq!(
            (summary.size, summary.checkpoints, summary.signed_size),
            (100, 2, 100)
        );
        // A prefix that is not the signed one fails at the checkpoint at its size.
        let mut wrong = MerkleAccumulator::new();
        for leaf in &all[1..65] {
            wrong.push(leaf_hash(leaf));
        }
        assert_eq!(
            LogVerifier::resume(wrong, cps).err(),
            Some(VerifyError::CheckpointMismatch { from: 0, to: 64 })
        );
    }

    fn checkpoint(leaves: &[Vec<u8>], size: usize) -> Checkpoint {
        let hashes: Vec<Hash> = leaves[..size].iter().map(|l| leaf_hash(l)).collect();
        Checkpoint {
            origin: "test/audit".into(),
            size: size as u64,
            root: root(&hashes),
        }
    }

    fn run(leaves: &[Vec<u8>], checkpoints: Vec<Checkpoint>) -> Result<VerifySummary, VerifyError> {
        let mut verifier = LogVerifier::new(checkpoints);
        for leaf in leaves {
            verifier.push(leaf, None, |_| {})?;
        }
        verifier.finish()
    }

    #[test]
    fn an_untouched_log_verifies() {
        let log = leaves(100);
        let cps = vec![
            checkpoint(&log, 0),
            checkpoint(&log, 37),
            checkpoint(&log, 100),
        ];
        let summary = run(&log, cps).unwrap();
        assert_eq!(summary.size, 100);
        assert_eq!(summary.checkpoints, 3);
        assert_eq!(summary.signed_size, 100);
    }

    #[test]
    fn each_kind_of_tampering_names_its_index() {
        let log = leaves(100);
        let cps = || vec![checkpoint(&log, 37), checkpoint(&log, 90)];

        // Removed.
        let mut removed = log.clone();
        removed.remove(40);
        assert_eq!(
            run(&removed, cps()).unwrap_err(),
            VerifyError::SeqMismatch {
                index: 40,
                found: Some(41)
            }
        );
        // Inserted.
        let mut inserted = log.clone();
        inserted.insert(12, log[5].clone());
        assert_eq!(run(&inserted, cps()).unwrap_err().first_bad_index(), 12);
        // Reordered.
        let mut reordered = log.clone();
        reordered.swap(50, 51);
        assert_eq!(run(&reordered, cps()).unwrap_err().first_bad_index(), 50);
        // Changed, keeping the seq: found by the checkpoint after it.
        let mut changed = log.clone();
        changed[60] = String::from_utf8(log[60].clone())
            .unwrap()
            .replace("\"status\":200", "\"status\":201")
            .into_bytes();
        assert_eq!(
            run(&changed, cps()).unwrap_err(),
            VerifyError::CheckpointMismatch { from: 37, to: 90 }
        );
        // Changed, with the stored leaf hash still the original: exact index.
        let mut verifier = LogVerifier::new(cps());
        let mut failure = None;
        for (i, leaf) in changed.iter().enumerate() {
            let stored = leaf_hash(&log[i]);
            if let Err(e) = verifier.push(leaf, Some(&stored), |_| {}) {
                failure = Some(e);
                break;
            }
        }
        assert_eq!(failure, Some(VerifyError::LeafHashMismatch { index: 60 }));
        // Truncated.
        assert_eq!(
            run(&log[..80], cps()).unwrap_err(),
            VerifyError::Truncated {
                size: 80,
                checkpoint_size: 90
            }
        );
    }

    #[test]
    fn seq_prefix_parsing() {
        assert_eq!(leaf_seq(br#"{"seq":0,"a":1}"#), Some(0));
        assert_eq!(leaf_seq(br#"{"seq":123,"a":1}"#), Some(123));
        assert_eq!(leaf_seq(br#"{"seq":0123,"a":1}"#), None);
        assert_eq!(leaf_seq(br#"{"seq":null,"a":1}"#), None);
        assert_eq!(leaf_seq(br#"{"seq":1"#), None);
        assert_eq!(leaf_seq(br#"{"seq": 1,"#), None);
    }
}
