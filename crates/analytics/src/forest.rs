//! An isolation forest (Liu, Ting, Zhou 2008) small enough to own: trees are
//! built from a sample of the baseline, and a point's anomaly score is how
//! quickly random splits isolate it, `2^(-E[h(x)] / c(ψ))` (about 0.5 for a
//! typical point, towards 1.0 for an outlier).
//!
//! One change from the paper: the forest keeps the training data's envelope,
//! one unit (`FEATURE_UNIT`) beyond its range in each feature, and a point
//! outside it scores as if every tree isolated it at the root. The paper's
//! random splits lie within the data's range, so a value far beyond it is
//! isolated no faster than one just past the edge ("masking"), and a feature
//! the baseline never varied in (an agent that never read restricted data)
//! cannot be split at all. Per agent, "never this far" is exactly what a
//! baseline should remember.
//!
//! Speed matters twice, because the gateway keeps one forest per agent:
//!
//! - Training runs every 128 new baseline samples per agent, which for an
//!   agent making two requests a minute is once every 256 events. Each tree's
//!   sample is copied into one column per feature, and a split looks at the
//!   range of only the feature it tries: features in random order, the first
//!   that varies among the node's points wins. That is the paper's rule (a
//!   feature uniformly at random among those that can split) without
//!   computing every feature's range at every node, and a feature found
//!   constant is not tried again below.
//! - Scoring an agent that makes a request a minute finds its forest out of
//!   cache, so the cost is memory latency, not arithmetic. Nodes are 8 bytes
//!   (threshold, feature, index of the left child; the right child follows
//!   it), laid out so that a node's children and grandchildren usually share
//!   its cache line, and every tree is walked in lockstep so their cache
//!   misses overlap. A leaf is its own child, so the walk takes the same
//!   number of steps in every tree and never branches on where a tree ended.

use crate::features::{FEATURE_UNIT, Features, N_FEATURES};
use crate::rng::Rng;

/// Most points per tree: a tree's points are numbered in one byte. The
/// paper found 256 enough for every data set it tried (the default is 128).
pub const MAX_TREE_SAMPLE: usize = 256;
/// Most trees per forest. With [`MAX_TREE_SAMPLE`] it keeps the node count
/// far below 2^27 (node indices share a `u32` with the feature).
pub const MAX_TREES: usize = 1_024;

/// One feature's values over a tree's sample, by position in the sample.
type Column = [f32; MAX_TREE_SAMPLE];
/// Positions in a tree's sample.
type Points = [u8; MAX_TREE_SAMPLE];

/// Bits of a node's tag holding the feature; the rest is the left child.
const FEATURE_BITS: u32 = 5;
const FEATURE_MASK: u32 = (1 << FEATURE_BITS) - 1;
/// The feature a leaf "tests": the walk's point holds −∞ there, so the test
/// `x < value` always holds and the walk stays on the leaf.
const LEAF: u32 = N_FEATURES as u32;

/// One node. A split sends `x` left when `x[feature] < value`; a leaf's
/// `value` is its path length (depth plus c(size) for the points left
/// unsplit) and its left child is itself.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Node {
    value: f32,
    /// `left << FEATURE_BITS | feature`; the right child is `left + 1`.
    tag: u32,
}

impl Node {
    fn left(self) -> u32 {
        self.tag >> FEATURE_BITS
    }

    fn feature(self) -> usize {
        (self.tag & FEATURE_MASK) as usize
    }
}

/// A trained forest. Rebuilding from the same sample and seed gives the same forest.
#[derive(Debug, Clone)]
pub struct IsolationForest {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    /// The deepest leaf: the number of steps every walk takes.
    depth: usize,
    /// c(ψ): the mean path length of an unsuccessful search in a BST of ψ points.
    norm: f32,
    /// The envelope of the training data, one unit beyond its range.
    low: Features,
    high: Features,
}

/// Average path length of an unsuccessful BST search among `n` points.
fn c(n: usize) -> f32 {
    if n <= 1 {
        return 0.0;
    }
    let n = n as f32;
    2.0 * ((n - 1.0).ln() + 0.577_215_7) - 2.0 * (n - 1.0) / n
}

/// The smallest and largest of `column[i]` for `i` in `points`.
fn range(column: &Column, points: &[u8]) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &i in points {
        let v = column[usize::from(i)];
        // Plain comparisons (the data holds no NaN): cheaper than
        // `f32::min`, which must handle NaN.
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
    }
    (lo, hi)
}

/// Moves the points of `from` to `to[start..start + from.len()]`, those with
/// `column[i] < value` first, and returns how many those are.
///
/// Without a branch (which side a point goes to is a coin toss the CPU
/// cannot predict): each point is written at both ends, and only the end it
/// belongs to moves on; the other write lands on a free slot that a later
/// point overwrites. Positions stay below 256 (`from` is part of a sample of
/// at most 256), so masking them changes nothing but spares a bounds check.
fn partition(column: &Column, value: f32, from: &[u8], to: &mut Points, start: usize) -> usize {
    let (mut left, mut right) = (start, start + from.len());
    for &i in from {
        let goes_left = column[usize::from(i)] < value;
        to[left & 0xff] = i;
        to[(right - 1) & 0xff] = i;
        left += usize::from(goes_left);
        right -= usize::from(!goes_left);
    }
    left - start
}

/// A node waiting to be grown: its points are `start..end` of the level's
/// buffer, and `candidates` holds the features that may vary among them
/// (those found constant higher up are left out).
#[derive(Debug, Clone, Copy)]
struct Pending {
    slot: u32,
    start: u32,
    end: u32,
    candidates: u32,
}

/// What growing trees needs besides the forest; reused from tree to tree.
struct Grower<'a> {
    /// The tree's sample, one column per feature, so a scan reads one
    /// feature's values close together.
    columns: Box<[Column; N_FEATURES]>,
    limit: usize,
    /// c(size) for size in 0..=psi.
    c: Vec<f32>,
    rng: &'a mut Rng,
    /// The sample's positions, partitioned level by level: the nodes at
    /// depth d read their points from `points[d % 2]` and write their
    /// children's to the other, at the same positions.
    points: Box<[Points; 2]>,
    level: Vec<Pending>,
    next: Vec<Pending>,
}

impl Grower<'_> {
    /// Grows one tree over the `psi` points in `columns` into `nodes`,
    /// breadth first, and returns its root.
    fn grow(&mut self, psi: usize, nodes: &mut Vec<Node>) -> u32 {
        let root = nodes.len() as u32;
        nodes.push(Node::default());
        for (k, p) in self.points[0][..psi].iter_mut().enumerate() {
            *p = k as u8;
        }
        self.level.clear();
        self.level.push(Pending {
            slot: root,
            start: 0,
            end: psi as u32,
            candidates: (1 << N_FEATURES) - 1,
        });
        for depth in 0..=self.limit {
            self.next.clear();
            let [even, odd] = &mut *self.points;
            let (from, to) = if depth % 2 == 0 {
                (even, odd)
            } else {
                (odd, even)
            };
            for k in 0..self.level.len() {
                let Pending {
                    slot,
                    start,
                    end,
                    mut candidates,
                } = self.level[k];
                let (start, end) = (start as usize, end as usize);
                let leaf = Node {
                    value: depth as f32 + self.c[end - start],
                    tag: slot << FEATURE_BITS | LEAF,
                };
                if depth >= self.limit || end - start <= 1 {
                    nodes[slot as usize] = leaf;
                    continue;
                }
                let points = &from[start..end];
                // Features in random order; the first that varies among the
                // points splits. Each varying feature is equally likely to
                // come first: the paper's rule, without computing every
                // feature's range at every node.
                let split = loop {
                    if candidates == 0 {
                        break None;
                    }
                    let mut rest = candidates;
                    for _ in 0..self.rng.below(rest.count_ones() as usize) {
                        rest &= rest - 1;
                    }
                    let feature = rest.trailing_zeros() as usize;
                    let column = &self.columns[feature];
                    let (lo, hi) = range(column, points);
                    if hi > lo {
                        break Some((feature, column, lo, hi));
                    }
                    candidates &= !(1 << feature);
                };
                let Some((feature, column, lo, hi)) = split else {
                    // Identical points: nothing separates them.
                    nodes[slot as usize] = leaf;
                    continue;
                };
                let value = lo + self.rng.unit() * (hi - lo);
                let middle = (start + partition(column, value, points, to, start)) as u32;
                let children = nodes.len() as u32;
                nodes.push(Node::default());
                nodes.push(Node::default());
                nodes[slot as usize] = Node {
                    value,
                    tag: children << FEATURE_BITS | feature as u32,
                };
                self.next.push(Pending {
                    slot: children,
                    start: start as u32,
                    end: middle,
                    candidates,
                });
                self.next.push(Pending {
                    slot: children + 1,
                    start: middle,
                    end: end as u32,
                    candidates,
                });
            }
            std::mem::swap(&mut self.level, &mut self.next);
        }
        root
    }
}

impl IsolationForest {
    /// Builds `trees` trees, each from `sample_size` points drawn from `data`
    /// (at most [`MAX_TREES`] trees of [`MAX_TREE_SAMPLE`] points).
    /// An empty `data` gives a forest that scores everything 0.5 (no opinion).
    pub fn train(data: &[Features], trees: usize, sample_size: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let trees = trees.min(MAX_TREES);
        let psi = sample_size.min(MAX_TREE_SAMPLE).min(data.len()).max(1);
        let limit = (psi as f32).log2().ceil() as usize;
        let mut forest = IsolationForest {
            nodes: Vec::new(),
            roots: Vec::with_capacity(trees),
            depth: limit,
            norm: c(psi).max(1.0),
            low: [f32::INFINITY; N_FEATURES],
            high: [f32::NEG_INFINITY; N_FEATURES],
        };
        if data.is_empty() {
            return forest;
        }
        // The baseline's envelope: one unit beyond its range in each feature.
        for x in data {
            for f in 0..N_FEATURES {
                forest.low[f] = forest.low[f].min(x[f] - FEATURE_UNIT[f]);
                forest.high[f] = forest.high[f].max(x[f] + FEATURE_UNIT[f]);
            }
        }
        let n = data.len();
        let mut grower = Grower {
            columns: Box::new([[0.0; MAX_TREE_SAMPLE]; N_FEATURES]),
            limit,
            c: (0..=psi).map(c).collect(),
            rng: &mut rng,
            points: Box::new([[0; MAX_TREE_SAMPLE]; 2]),
            level: Vec::with_capacity(psi),
            next: Vec::with_capacity(psi),
        };
        forest.nodes.reserve(trees * (2 * psi - 1));
        // Sampling without replacement: a partial Fisher-Yates shuffle of one
        // index permutation, continued from tree to tree (still uniform).
        let mut all: Vec<u32> = (0..n as u32).collect();
        for _ in 0..trees {
            for k in 0..psi {
                let j = k + grower.rng.below(n - k);
                all.swap(k, j);
                let x = &data[all[k] as usize];
                for (column, v) in grower.columns.iter_mut().zip(x) {
                    column[k] = *v;
                }
            }
            let root = grower.grow(psi, &mut forest.nodes);
            forest.roots.push(root);
        }
        // Kept per agent: give back what the reservation for the worst case
        // (2ψ - 1 nodes a tree) did not use.
        forest.nodes.shrink_to_fit();
        forest
    }

    /// The anomaly score of `x` in `[0, 1]`: ~0.5 typical, towards 1 anomalous.
    pub fn score(&self, x: &Features) -> f32 {
        if self.roots.is_empty() {
            return 0.5;
        }
        // Outside the envelope: every tree would isolate the point at its
        // root (path length 1).
        if x.iter()
            .zip(self.low.iter().zip(&self.high))
            .any(|(v, (lo, hi))| v < lo || v > hi)
        {
            return 2f32.powf(-1.0 / self.norm);
        }
        // The point, and −∞ for the leaves' "feature" (and the unused rest,
        // so any tag indexes it without a bounds check).
        let mut point = [f32::NEG_INFINITY; FEATURE_MASK as usize + 1];
        point[..N_FEATURES].copy_from_slice(x);
        // All trees in lockstep, a fixed number of steps: the loads of
        // different trees do not depend on each other, so their cache misses
        // overlap instead of queueing.
        const LANES: usize = 64;
        let mut total = 0.0;
        for chunk in self.roots.chunks(LANES) {
            let mut at = [0u32; LANES];
            let at = &mut at[..chunk.len()];
            at.copy_from_slice(chunk);
            for _ in 0..self.depth {
                for slot in at.iter_mut() {
                    let node = self.nodes[*slot as usize];
                    let right = !(point[node.feature()] < node.value);
                    *slot = node.left() + u32::from(right);
                }
            }
            for slot in at.iter() {
                total += self.nodes[*slot as usize].value;
            }
        }
        let mean = total / self.roots.len() as f32;
        2f32.powf(-mean / self.norm)
    }

    /// Whether the forest was trained on anything.
    pub fn is_trained(&self) -> bool {
        !self.roots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(a: f32, b: f32) -> Features {
        let mut f = [0.0; N_FEATURES];
        f[0] = a;
        f[1] = b;
        f
    }

    #[test]
    fn outliers_score_higher_than_inliers() {
        let mut rng = Rng::new(7);
        let data: Vec<Features> = (0..512)
            .map(|_| point(rng.unit() * 2.0, rng.unit() * 2.0))
            .collect();
        let forest = IsolationForest::train(&data, 50, 128, 1);
        let inlier = forest.score(&point(1.0, 1.0));
        let outlier = forest.score(&point(8.0, 1.0));
        assert!(inlier < 0.5, "inlier {inlier}");
        assert!(
            outlier > inlier + 0.08,
            "outlier {outlier}, inlier {inlier}"
        );
        // A feature constant in the baseline still isolates a change in it.
        let mut odd = point(1.0, 1.0);
        odd[9] = 3.0;
        assert!(forest.score(&odd) > inlier + 0.1);
        // Deterministic: same data and seed, same forest.
        let again = IsolationForest::train(&data, 50, 128, 1);
        assert_eq!(again.score(&point(8.0, 1.0)), outlier);
    }

    #[test]
    fn an_untrained_forest_has_no_opinion() {
        let forest = IsolationForest::train(&[], 10, 64, 1);
        assert!(!forest.is_trained());
        assert_eq!(forest.score(&point(1.0, 1.0)), 0.5);
    }
}
