//! Merkle tree hashing for the audit log, exactly as RFC 9162 section 2.1
//! (the same tree as RFC 6962): tree heads, inclusion proofs, consistency
//! proofs and their verification.
//!
//! Everything here is a pure function over hashes. Leaves are hashed once with
//! [`leaf_hash`]; the other functions take the leaf hashes, so callers never
//! hash a leaf twice and never keep the leaf bytes around.
//!
//! - A leaf hash is `SHA-256(0x00 || leaf)` and an interior node is
//!   `SHA-256(0x01 || left || right)`. The two prefixes keep a leaf from ever
//!   being read as a node (second-preimage resistance).
//! - The tree head of `n > 1` leaves splits them at `k`, the largest power of
//!   two smaller than `n`. The head of no leaves is `SHA-256("")`.
//! - The verifiers implement the algorithms of RFC 9162 2.1.3.2 and 2.1.4.2 step
//!   by step; they never regenerate a proof to compare against.
//! - [`MerkleAccumulator`] keeps the tree head up to date as leaves are appended,
//!   holding one subtree root per set bit of the tree size.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 digest: a leaf hash, a node hash or a tree head.
pub type Hash = [u8; 32];

/// Why a proof could not be produced or did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index `{index}` is outside a tree of size `{size}`")]
    IndexOutOfRange {
        /// The leaf index asked about.
        index: u64,
        /// The size of the tree.
        size: u64,
    },
    /// The old tree is larger than the new one (or than the leaves given).
    #[error("old tree size `{old_size}` is larger than new tree size `{new_size}`")]
    OldSizeTooLarge {
        /// The old (first) tree size.
        old_size: u64,
        /// The new (second) tree size.
        new_size: u64,
    },
    /// The proof has too many or too few hashes for the sizes given.
    #[error("proof has the wrong number of hashes")]
    WrongProofLength,
    /// The proof does not lead to the expected tree head.
    #[error("proof does not match the tree head")]
    RootMismatch,
    /// A saved frontier does not fit the tree size it was saved with.
    #[error("frontier of `{len}` hashes does not fit tree size `{size}`")]
    BadFrontier {
        /// The number of hashes given.
        len: usize,
        /// The tree size given.
        size: u64,
    },
}

/// The leaf hash of one leaf: `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The tree head of no leaves: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The Merkle tree head (`MTH`) over the given leaf hashes.
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => empty_root(),
        [only] => *only,
        _ => {
            let (left, right) = leaf_hashes.split_at(split(leaf_hashes.len()));
            node_hash(&root(left), &root(right))
        }
    }
}

/// The inclusion proof (`PATH`, RFC 9162 2.1.3.1) of leaf `index` in the tree
/// made of all of `leaf_hashes`, ordered from the leaf up.
pub fn inclusion_proof(leaf_hashes: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaf_hashes.len() as u64;
    let m = usize::try_from(index)
        .ok()
        .filter(|&m| m < leaf_hashes.len())
        .ok_or(ProofError::IndexOutOfRange { index, size })?;
    let mut proof = Vec::new();
    path(m, leaf_hashes, &mut proof);
    Ok(proof)
}

/// `PATH(m, D[n])`, with the hashes pushed deepest first.
fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    if d.len() <= 1 {
        return;
    }
    let k = split(d.len());
    let (left, right) = d.split_at(k);
    if m < k {
        path(m, left, out);
        out.push(root(right));
    } else {
        path(m - k, right, out);
        out.push(root(left));
    }
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `tree_size` leaves
/// whose head is `root`, by the algorithm of RFC 9162 2.1.3.2.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    // Step 1.
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange {
            index,
            size: tree_size,
        });
    }
    // Steps 2 and 3.
    let (mut fn_, mut sn) = (index, tree_size - 1);
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongProofLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    if sn != 0 {
        return Err(ProofError::WrongProofLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The consistency proof (`PROOF`, RFC 9162 2.1.4.1) that the tree of the first
/// `old_size` leaves is a prefix of the tree made of all of `leaf_hashes`.
///
/// The proof is empty when `old_size` is 0 or equals the number of leaves: every
/// tree extends the empty tree, and every tree extends itself.
pub fn consistency_proof(leaf_hashes: &[Hash], old_size: u64) -> Result<Vec<Hash>, ProofError> {
    let new_size = leaf_hashes.len() as u64;
    let m = usize::try_from(old_size)
        .ok()
        .filter(|&m| m <= leaf_hashes.len())
        .ok_or(ProofError::OldSizeTooLarge { old_size, new_size })?;
    let mut proof = Vec::new();
    if m > 0 {
        subproof(m, leaf_hashes, true, &mut proof);
    }
    Ok(proof)
}

/// `SUBPROOF(m, D[n], b)`, with the hashes pushed deepest first.
fn subproof(m: usize, d: &[Hash], b: bool, out: &mut Vec<Hash>) {
    if m == d.len() {
        if !b {
            out.push(root(d));
        }
        return;
    }
    let k = split(d.len());
    let (left, right) = d.split_at(k);
    if m <= k {
        subproof(m, left, b, out);
        out.push(root(right));
    } else {
        subproof(m - k, right, false, out);
        out.push(root(left));
    }
}

/// Checks that the tree of `old_size` leaves with head `old_root` is a prefix of
/// the tree of `new_size` leaves with head `new_root`, by the algorithm of
/// RFC 9162 2.1.4.2.
///
/// The RFC's algorithm covers `0 < old_size < new_size`. The other cases need
/// an empty proof: equal sizes need equal heads, and an old size of 0 needs
/// `old_root` to be the head of the empty tree.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldSizeTooLarge { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongProofLength);
        }
        let expected = if old_size == 0 {
            empty_root()
        } else {
            *new_root
        };
        if *old_root != expected {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    // Step 1.
    let Some((first, rest)) = proof.split_first() else {
        return Err(ProofError::WrongProofLength);
    };
    // Step 2: when the old tree is a complete subtree of the new one, its head
    // is the implicit first element of the path.
    let (start, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    // Step 3.
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    // Step 4.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    let (mut fr, mut sr) = (*start, *start);
    // Step 6.
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongProofLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7.
    if sn != 0 {
        return Err(ProofError::WrongProofLength);
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// A complete subtree of the log: the `2^level` leaves starting at leaf
/// `index << level`, and its hash (a leaf hash at level 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subtree {
    /// Height of the subtree; 0 is a single leaf.
    pub level: u32,
    /// Position among the subtrees of the same level.
    pub index: u64,
    /// Its hash.
    pub hash: Hash,
}

/// A run of leaves whose tree head a proof needs.
pub type LeafRange = std::ops::Range<u64>;

/// The leaf ranges whose tree heads form the inclusion proof of leaf `index`
/// in a tree of `size` leaves, in proof order.
///
/// This is [`inclusion_proof`] for a log too large to hold in memory: a store
/// computes each range's head from the complete subtrees it keeps
/// ([`range_subtrees`], [`fold_subtrees`]) and so serves proofs from O(log n)
/// stored hashes.
pub fn inclusion_proof_ranges(index: u64, size: u64) -> Result<Vec<LeafRange>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path_ranges(index, 0..size, &mut out);
    Ok(out)
}

/// [`path`] over leaf positions.
fn path_ranges(m: u64, d: LeafRange, out: &mut Vec<LeafRange>) {
    let n = d.end - d.start;
    if n <= 1 {
        return;
    }
    let k = split_u64(n);
    let mid = d.start + k;
    if m < k {
        path_ranges(m, d.start..mid, out);
        out.push(mid..d.end);
    } else {
        path_ranges(m - k, mid..d.end, out);
        out.push(d.start..mid);
    }
}

/// The leaf ranges whose tree heads form the consistency proof between trees of
/// `old_size` and `new_size` leaves, in proof order (see
/// [`inclusion_proof_ranges`]).
pub fn consistency_proof_ranges(
    old_size: u64,
    new_size: u64,
) -> Result<Vec<LeafRange>, ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldSizeTooLarge { old_size, new_size });
    }
    let mut out = Vec::new();
    if old_size > 0 {
        subproof_ranges(old_size, 0..new_size, true, &mut out);
    }
    Ok(out)
}

/// [`subproof`] over leaf positions.
fn subproof_ranges(m: u64, d: LeafRange, b: bool, out: &mut Vec<LeafRange>) {
    let n = d.end - d.start;
    if m == n {
        if !b {
            out.push(d);
        }
        return;
    }
    let k = split_u64(n);
    let mid = d.start + k;
    if m <= k {
        subproof_ranges(m, d.start..mid, b, out);
        out.push(mid..d.end);
    } else {
        subproof_ranges(m - k, mid..d.end, false, out);
        out.push(d.start..mid);
    }
}

/// The complete subtrees, as `(level, index)`, that make up `range`, largest
/// (leftmost) first. [`fold_subtrees`] over their hashes gives the range's
/// tree head.
///
/// The ranges a proof needs, and every prefix `0..n` of the log, start at a
/// multiple of a power of two at least as large as the range; for those the
/// subtrees are the set bits of the range's length, which is what makes the
/// fold equal to the tree head.
pub fn range_subtrees(range: LeafRange) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut p = range.start;
    while p < range.end {
        let mut level = if p == 0 { 63 } else { p.trailing_zeros() };
        while level > 0 && (1u64 << level) > range.end - p {
            level -= 1;
        }
        out.push((level, p >> level));
        p += 1u64 << level;
    }
    out
}

/// The tree head over consecutive complete subtrees of decreasing size given
/// left to right (see [`range_subtrees`]): each is the left child of the head of
/// the ones after it.
pub fn fold_subtrees(hashes: &[Hash]) -> Hash {
    let mut rest = hashes.iter().rev();
    let Some(last) = rest.next() else {
        return empty_root();
    };
    rest.fold(*last, |right, left| node_hash(left, &right))
}

/// The largest power of two smaller than `n`; `n` must be at least 2.
fn split_u64(n: u64) -> u64 {
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// The largest power of two smaller than `n`; `n` must be at least 2.
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The tree head of a growing log, kept up to date leaf by leaf without the
/// leaves: a compact range (the "frontier") of one subtree root per set bit of
/// the tree size, largest subtree first.
///
/// [`push`](Self::push) and [`root`](Self::root) take O(log n) hashes and the
/// accumulator holds at most 64 hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleAccumulator {
    size: u64,
    frontier: Vec<Hash>,
}

impl MerkleAccumulator {
    /// An accumulator for the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resumes from a saved [`size`](Self::size) and
    /// [`frontier`](Self::frontier), so a log can restart without rehashing
    /// every leaf. The frontier must have one hash per set bit of `size`.
    pub fn from_frontier(size: u64, frontier: Vec<Hash>) -> Result<Self, ProofError> {
        if frontier.len() != size.count_ones() as usize {
            return Err(ProofError::BadFrontier {
                len: frontier.len(),
                size,
            });
        }
        Ok(Self { size, frontier })
    }

    /// Appends the leaf with hash `leaf_hash`.
    pub fn push(&mut self, leaf_hash: Hash) {
        self.push_reporting(leaf_hash, |_| {});
    }

    /// Appends the leaf with hash `leaf_hash` and reports every complete
    /// subtree the leaf completes, the leaf itself first (level 0), so a store
    /// can keep the interior nodes that proofs are made from.
    pub fn push_reporting(&mut self, leaf_hash: Hash, mut completed: impl FnMut(Subtree)) {
        let index = self.size;
        completed(Subtree {
            level: 0,
            index,
            hash: leaf_hash,
        });
        // Each trailing one bit of the old size is a complete subtree of the
        // same height as the one being carried: merge them, like binary addition.
        let mut carry = leaf_hash;
        let mut size = self.size;
        let mut level = 0;
        while size & 1 == 1 {
            let Some(left) = self.frontier.pop() else {
                // Unreachable: the frontier has one hash per set bit of `size`.
                break;
            };
            carry = node_hash(&left, &carry);
            size >>= 1;
            level += 1;
            completed(Subtree {
                level,
                index: index >> level,
                hash: carry,
            });
        }
        self.frontier.push(carry);
        self.size += 1;
    }

    /// The number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the complete subtrees that make up the tree, largest first.
    pub fn frontier(&self) -> &[Hash] {
        &self.frontier
    }

    /// The tree head of the leaves appended so far, equal to [`root`] over them.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.frontier.iter().rev();
        let Some(last) = subtrees.next() else {
            return empty_root();
        };
        subtrees.fold(*last, |right, left| node_hash(left, &right))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hex: &str) -> Hash {
        let bytes = hex::decode(hex).unwrap();
        bytes.try_into().unwrap()
    }

    /// The RFC 6962 reference leaves used by Certificate Transparency and
    /// transparency-dev/merkle (`proof/verify_test.go`).
    fn reference_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|leaf| leaf_hash(&hex::decode(leaf).unwrap()))
        .collect()
    }

    /// The published tree heads of the first `size` reference leaves.
    fn reference_root(size: usize) -> Hash {
        h([
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ][size])
    }

    /// A deterministic log of `n` leaves: leaf `i` is `SHA-256(i as 8 bytes BE)`.
    fn generated_leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&Sha256::digest(i.to_be_bytes())))
            .collect()
    }

    #[test]
    fn reference_roots() {
        let leaves = reference_leaves();
        for size in 0..=leaves.len() {
            assert_eq!(root(&leaves[..size]), reference_root(size), "size {size}");
        }
        assert_eq!(empty_root(), reference_root(0));
    }

    /// Checks a published inclusion proof: we generate exactly it, it verifies,
    /// and the corruptions of transparency-dev's `corruptInclusionProof` fail.
    fn check_inclusion(index: u64, size: usize, expect: &[&str]) {
        let leaves = reference_leaves();
        let expect: Vec<Hash> = expect.iter().map(|x| h(x)).collect();
        let tree = &leaves[..size];
        let root = reference_root(size);
        let leaf = leaves[index as usize];
        let size = size as u64;
        assert_eq!(inclusion_proof(tree, index).unwrap(), expect);
        assert_eq!(verify_inclusion(&leaf, index, size, &expect, &root), Ok(()));

        let other = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        let mut probes = vec![
            (leaf, index.wrapping_sub(1), size, expect.clone(), root),
            (leaf, index + 1, size, expect.clone(), root),
            (leaf, index ^ 2, size, expect.clone(), root),
            (leaf, index, size * 2, expect.clone(), root),
            (leaf, index, size / 2, expect.clone(), root),
            (leaf_hash(b"WrongLeaf"), index, size, expect.clone(), root),
            (leaf, index, size, expect.clone(), empty_root()),
            (leaf, index, size, expect.clone(), other),
            (leaf, index, size, [&expect[..], &[root]].concat(), root),
            (leaf, index, size, [&[root], &expect[..]].concat(), root),
        ];
        if let Some((_, shorter)) = expect.split_last() {
            probes.push((leaf, index, size, shorter.to_vec(), root));
        }
        if expect.len() > 1 {
            let inserted = [&expect[..1], &[other], &expect[1..]].concat();
            probes.push((leaf, index, size, inserted, root));
        }
        for (leaf, index, size, proof, root) in probes {
            assert!(
                verify_inclusion(&leaf, index, size, &proof, &root).is_err(),
                "index {index} size {size} proof {proof:?} root {root:?}"
            );
        }
    }

    #[test]
    fn reference_inclusion_proofs() {
        // transparency-dev/merkle proof/verify_test.go `inclusionProofs`; the
        // Go vectors number leaves from 1.
        check_inclusion(0, 1, &[]);
        check_inclusion(
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        );
        check_inclusion(
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        );
        check_inclusion(
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        );
        check_inclusion(
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        );
    }

    /// Checks a published consistency proof: we generate exactly it, it
    /// verifies, and the corruptions of transparency-dev's
    /// `corruptConsistencyProof` fail.
    fn check_consistency(old: usize, new: usize, expect: &[&str]) {
        let leaves = reference_leaves();
        let expect: Vec<Hash> = expect.iter().map(|x| h(x)).collect();
        let (old_root, new_root) = (reference_root(old), reference_root(new));
        let (old, new) = (old as u64, new as u64);
        assert_eq!(
            consistency_proof(&leaves[..new as usize], old).unwrap(),
            expect
        );
        assert_eq!(
            verify_consistency(old, new, &old_root, &new_root, &expect),
            Ok(())
        );
        if expect.is_empty() {
            return;
        }
        let wrong = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        let mut probes = vec![
            (old - 1, new, old_root, new_root, expect.clone()),
            (old + 1, new, old_root, new_root, expect.clone()),
            (old ^ 2, new, old_root, new_root, expect.clone()),
            (old, new * 2, old_root, new_root, expect.clone()),
            (old, new / 2, old_root, new_root, expect.clone()),
            (old, new, wrong, new_root, expect.clone()),
            (old, new, old_root, wrong, expect.clone()),
            (old, new, new_root, old_root, expect.clone()),
            (old, new, old_root, new_root, Vec::new()),
            (
                old,
                new,
                old_root,
                new_root,
                [&expect[..], &[old_root]].concat(),
            ),
            (
                old,
                new,
                old_root,
                new_root,
                [&expect[..], &[new_root]].concat(),
            ),
            (
                old,
                new,
                old_root,
                new_root,
                [&[old_root], &expect[..]].concat(),
            ),
            (
                old,
                new,
                old_root,
                new_root,
                [&[new_root], &expect[..]].concat(),
            ),
            (
                old,
                new,
                old_root,
                new_root,
                [&expect[..1], &expect[..]].concat(),
            ),
            (
                old,
                new,
                old_root,
                new_root,
                expect[..expect.len() - 1].to_vec(),
            ),
        ];
        for i in 0..expect.len() {
            let mut flipped = expect.clone();
            flipped[i][0] ^= 16;
            probes.push((old, new, old_root, new_root, flipped));
        }
        for (old, new, old_root, new_root, proof) in probes {
            assert!(
                verify_consistency(old, new, &old_root, &new_root, &proof).is_err(),
                "old {old} new {new} proof {proof:?}"
            );
        }
    }

    #[test]
    fn reference_consistency_proofs() {
        // transparency-dev/merkle proof/verify_test.go `consistencyProofs`.
        check_consistency(1, 1, &[]);
        check_consistency(
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        );
        check_consistency(
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        );
        check_consistency(
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        );
        check_consistency(
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        );
    }

    #[test]
    fn degenerate_cases() {
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        let empty = empty_root();
        let leaves = generated_leaves(3);
        assert_eq!(
            inclusion_proof(&leaves, 3),
            Err(ProofError::IndexOutOfRange { index: 3, size: 3 })
        );
        assert_eq!(
            inclusion_proof(&[], 0),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            consistency_proof(&leaves, 4),
            Err(ProofError::OldSizeTooLarge {
                old_size: 4,
                new_size: 3
            })
        );
        assert_eq!(consistency_proof(&leaves, 0), Ok(vec![]));
        assert_eq!(consistency_proof(&leaves, 3), Ok(vec![]));

        // Inclusion in an empty tree, or past the end, never verifies.
        for (index, size) in [(0, 0), (1, 0), (1, 1), (2, 1), (u64::MAX, u64::MAX)] {
            assert_eq!(
                verify_inclusion(&some, index, size, &[], &some),
                Err(ProofError::IndexOutOfRange { index, size })
            );
        }
        // A one-leaf tree's head is its leaf hash.
        assert_eq!(verify_inclusion(&some, 0, 1, &[], &some), Ok(()));
        assert!(verify_inclusion(&some, 0, 1, &[], &empty).is_err());
        assert!(verify_inclusion(&some, 0, 1, &[some], &some).is_err());

        // transparency-dev's TestVerifyConsistency edge cases, made strict
        // about the head of the empty tree.
        let (r1, r2) = (leaf_hash(b"1"), leaf_hash(b"2"));
        let check = |old, new, old_root, new_root, proof: &[Hash], expect| {
            assert_eq!(
                verify_consistency(old, new, &old_root, &new_root, proof),
                expect,
                "old {old} new {new}"
            );
        };
        let too_large =
            |old_size, new_size| Err(ProofError::OldSizeTooLarge { old_size, new_size });
        check(0, 0, empty, empty, &[], Ok(()));
        check(0, 1, empty, r2, &[], Ok(()));
        check(1, 1, r2, r2, &[], Ok(()));
        check(0, 0, r1, r1, &[], Err(ProofError::RootMismatch));
        check(1, 1, r1, r2, &[], Err(ProofError::RootMismatch));
        check(1, 0, r1, r2, &[], too_large(1, 0));
        check(2, 1, r1, r2, &[], too_large(2, 1));
        check(1, 2, r1, r2, &[], Err(ProofError::WrongProofLength));
        check(
            0,
            0,
            empty,
            empty,
            &[empty],
            Err(ProofError::WrongProofLength),
        );
        check(
            0,
            1,
            empty,
            empty,
            &[empty],
            Err(ProofError::WrongProofLength),
        );
        check(
            1,
            1,
            empty,
            empty,
            &[empty],
            Err(ProofError::WrongProofLength),
        );
    }

    /// The bits to flip in each hash of a tree of size `n`: all 256 for small
    /// trees, and for larger ones (to keep the debug-build test fast) one bit in
    /// every fourth byte, each bit position once.
    fn bits(n: u64) -> Vec<usize> {
        if n <= 8 {
            (0..256).collect()
        } else {
            (0..8).map(|k| k * 4 * 8 + k).collect()
        }
    }

    /// Every change of one bit (among `bits(n)`) in one hash of `proof`.
    fn bit_flips(proof: &[Hash], n: u64) -> impl Iterator<Item = Vec<Hash>> + '_ {
        (0..proof.len()).flat_map(move |i| {
            bits(n).into_iter().map(move |bit| {
                let mut p = proof.to_vec();
                p[i][bit / 8] ^= 1 << (bit % 8);
                p
            })
        })
    }

    /// Every change of one bit (among `bits(n)`) in `hash`.
    fn flipped(hash: &Hash, n: u64) -> impl Iterator<Item = Hash> + '_ {
        bits(n).into_iter().map(move |bit| {
            let mut x = *hash;
            x[bit / 8] ^= 1 << (bit % 8);
            x
        })
    }

    const MAX: u64 = 64;

    #[test]
    fn every_inclusion_proof_verifies_and_resists_tampering() {
        let leaves = generated_leaves(MAX + 1);
        let roots: Vec<Hash> = (0..=MAX + 1).map(|n| root(&leaves[..n as usize])).collect();
        for n in 1..=MAX {
            let tree = &leaves[..n as usize];
            let r = roots[n as usize];
            for i in 0..n {
                let leaf = leaves[i as usize];
                let proof = inclusion_proof(tree, i).unwrap();
                assert!(proof.len() <= 64 - (n - 1).leading_zeros() as usize);
                assert_eq!(verify_inclusion(&leaf, i, n, &proof, &r), Ok(()));
                for p in bit_flips(&proof, n) {
                    assert!(verify_inclusion(&leaf, i, n, &p, &r).is_err());
                }
                for bad in flipped(&leaf, n) {
                    assert!(verify_inclusion(&bad, i, n, &proof, &r).is_err());
                }
                for bad in flipped(&r, n) {
                    assert!(verify_inclusion(&leaf, i, n, &proof, &bad).is_err());
                }
                // Any other index, even with that index's own leaf.
                for j in (0..=n).filter(|&j| j != i) {
                    assert!(verify_inclusion(&leaf, j, n, &proof, &r).is_err());
                    let other = leaves[j as usize];
                    assert!(verify_inclusion(&other, j, n, &proof, &r).is_err());
                }
                // Any other size, with the real head of a tree of that size.
                for m in (0..=MAX + 1).filter(|&m| m != n) {
                    let rm = roots[m as usize];
                    assert!(verify_inclusion(&leaf, i, m, &proof, &rm).is_err());
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_resists_tampering() {
        let leaves = generated_leaves(MAX + 1);
        let roots: Vec<Hash> = (0..=MAX + 1).map(|n| root(&leaves[..n as usize])).collect();
        for n in 1..=MAX {
            let tree = &leaves[..n as usize];
            let new_root = roots[n as usize];
            for m in 0..=n {
                let old_root = roots[m as usize];
                let proof = consistency_proof(tree, m).unwrap();
                assert_eq!(
                    verify_consistency(m, n, &old_root, &new_root, &proof),
                    Ok(())
                );
                for p in bit_flips(&proof, n) {
                    assert!(verify_consistency(m, n, &old_root, &new_root, &p).is_err());
                }
                for bad in flipped(&old_root, n) {
                    assert!(verify_consistency(m, n, &bad, &new_root, &proof).is_err());
                }
                if m > 0 {
                    for bad in flipped(&new_root, n) {
                        assert!(verify_consistency(m, n, &old_root, &bad, &proof).is_err());
                    }
                }
                // Any other old or new size, with the real heads at those sizes.
                // (An empty proof is not bound to its sizes: the empty tree is a
                // prefix of every tree, and every tree of itself.)
                if proof.is_empty() {
                    continue;
                }
                for other in (0..=MAX + 1).filter(|&o| o != m) {
                    let r = roots[other as usize];
                    assert!(verify_consistency(other, n, &r, &new_root, &proof).is_err());
                }
                for other in (0..=MAX + 1).filter(|&o| o != n && o != m) {
                    let r = roots[other as usize];
                    assert!(
                        verify_consistency(m, other, &old_root, &r, &proof).is_err(),
                        "m {m} n {n} other {other}"
                    );
                }
            }
        }
    }

    #[test]
    fn accumulator_matches_root() {
        let leaves = generated_leaves(200);
        let mut acc = MerkleAccumulator::new();
        assert_eq!(acc.root(), empty_root());
        for n in 1..=200 {
            acc.push(leaves[n - 1]);
            assert_eq!(acc.size(), n as u64);
            assert_eq!(acc.frontier().len(), n.count_ones() as usize);
            assert_eq!(acc.root(), root(&leaves[..n]), "size {n}");
            let resumed = MerkleAccumulator::from_frontier(acc.size(), acc.frontier().to_vec());
            assert_eq!(resumed.as_ref(), Ok(&acc));
        }
        let mut acc = MerkleAccumulator::new();
        for (size, leaf) in reference_leaves().into_iter().enumerate() {
            acc.push(leaf);
            assert_eq!(acc.root(), reference_root(size + 1));
        }
        assert_eq!(
            MerkleAccumulator::from_frontier(3, vec![empty_root()]),
            Err(ProofError::BadFrontier { len: 1, size: 3 })
        );
    }

    /// The complete subtrees of `leaves`, as an accumulator reports them.
    fn subtree_table(leaves: &[Hash]) -> std::collections::HashMap<(u32, u64), Hash> {
        let mut table = std::collections::HashMap::new();
        let mut acc = MerkleAccumulator::new();
        for leaf in leaves {
            acc.push_reporting(*leaf, |s| {
                assert!(table.insert((s.level, s.index), s.hash).is_none());
            });
        }
        table
    }

    fn head_from_table(
        table: &std::collections::HashMap<(u32, u64), Hash>,
        range: LeafRange,
    ) -> Hash {
        let hashes: Vec<Hash> = range_subtrees(range)
            .into_iter()
            .map(|key| table[&key])
            .collect();
        fold_subtrees(&hashes)
    }

    #[test]
    fn reported_subtrees_are_the_complete_subtrees() {
        let leaves = generated_leaves(77);
        let table = subtree_table(&leaves);
        for (&(level, index), hash) in &table {
            let start = (index << level) as usize;
            let end = start + (1 << level);
            assert_eq!(
                root(&leaves[start..end]),
                *hash,
                "level {level} index {index}"
            );
        }
        // 77 leaves make 77 + 38 + 19 + 9 + 4 + 2 + 1 complete subtrees.
        assert_eq!(table.len(), 150);
        for n in 0..=77 {
            assert_eq!(head_from_table(&table, 0..n), root(&leaves[..n as usize]));
        }
    }

    #[test]
    fn proofs_from_stored_subtrees_equal_proofs_from_leaves() {
        let leaves = generated_leaves(70);
        let table = subtree_table(&leaves);
        for size in 1..=70u64 {
            let d = &leaves[..size as usize];
            for index in 0..size {
                let planned: Vec<Hash> = inclusion_proof_ranges(index, size)
                    .unwrap()
                    .into_iter()
                    .map(|r| head_from_table(&table, r))
                    .collect();
                assert_eq!(planned, inclusion_proof(d, index).unwrap());
            }
            for old in 0..=size {
                let planned: Vec<Hash> = consistency_proof_ranges(old, size)
                    .unwrap()
                    .into_iter()
                    .map(|r| head_from_table(&table, r))
                    .collect();
                assert_eq!(planned, consistency_proof(d, old).unwrap());
            }
        }
        assert!(inclusion_proof_ranges(3, 3).is_err());
        assert!(consistency_proof_ranges(4, 3).is_err());
    }
}
