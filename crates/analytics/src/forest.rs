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

use crate::features::{FEATURE_UNIT, Features, N_FEATURES};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy)]
enum Node {
    Split {
        feature: u8,
        value: f32,
        /// Index of the right child; the left child follows this node.
        right: u32,
    },
    Leaf {
        /// `h` contribution: depth plus c(size) for the points left unsplit.
        path: f32,
    },
}

/// A trained forest. Rebuilding from the same sample and seed gives the same forest.
#[derive(Debug, Clone)]
pub struct IsolationForest {
    nodes: Vec<Node>,
    roots: Vec<u32>,
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

impl IsolationForest {
    /// Builds `trees` trees, each from `sample_size` points drawn from `data`.
    /// An empty `data` gives a forest that scores everything 0.5 (no opinion).
    pub fn train(data: &[Features], trees: usize, sample_size: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let psi = sample_size.min(data.len()).max(1);
        let limit = (psi as f32).log2().ceil() as usize;
        let mut forest = IsolationForest {
            nodes: Vec::with_capacity(trees * 2 * psi),
            roots: Vec::with_capacity(trees),
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
        // Sampling without replacement: a partial Fisher-Yates shuffle of one
        // index permutation, continued from tree to tree (still uniform).
        let mut all: Vec<usize> = (0..data.len()).collect();
        let mut idx: Vec<usize> = Vec::with_capacity(psi);
        for _ in 0..trees {
            idx.clear();
            for i in 0..psi {
                let j = i + rng.below(all.len() - i);
                all.swap(i, j);
            }
            idx.extend_from_slice(&all[..psi]);
            let root = forest.nodes.len() as u32;
            forest.roots.push(root);
            forest.grow(data, &mut idx, 0, limit, &mut rng);
        }
        forest
    }

    fn grow(
        &mut self,
        data: &[Features],
        idx: &mut [usize],
        depth: usize,
        limit: usize,
        rng: &mut Rng,
    ) {
        if depth >= limit || idx.len() <= 1 {
            self.nodes.push(Node::Leaf {
                path: depth as f32 + c(idx.len()),
            });
            return;
        }
        // One pass for every feature's range, then a random feature among
        // those the points differ in (as the paper: a constant one cannot split).
        let mut lo = [f32::INFINITY; N_FEATURES];
        let mut hi = [f32::NEG_INFINITY; N_FEATURES];
        for &i in idx.iter() {
            for f in 0..N_FEATURES {
                lo[f] = lo[f].min(data[i][f]);
                hi[f] = hi[f].max(data[i][f]);
            }
        }
        let mut varying = [0u8; N_FEATURES];
        let mut n = 0;
        for f in 0..N_FEATURES {
            if hi[f] > lo[f] {
                varying[n] = f as u8;
                n += 1;
            }
        }
        if n == 0 {
            // Identical points: nothing separates them.
            self.nodes.push(Node::Leaf {
                path: depth as f32 + c(idx.len()),
            });
            return;
        }
        let feature = varying[rng.below(n)] as usize;
        let (lo, hi) = (lo[feature], hi[feature]);
        let value = lo + rng.unit() * (hi - lo);
        // Partition in place: values < split go left.
        let mut left = 0;
        for k in 0..idx.len() {
            if data[idx[k]][feature] < value {
                idx.swap(k, left);
                left += 1;
            }
        }
        let at = self.nodes.len();
        self.nodes.push(Node::Split {
            feature: feature as u8,
            value,
            right: 0,
        });
        let (l, r) = idx.split_at_mut(left);
        self.grow(data, l, depth + 1, limit, rng);
        self.set_right(at);
        self.grow(data, r, depth + 1, limit, rng);
    }

    /// Points the split at `at` to the next node to be pushed.
    fn set_right(&mut self, at: usize) {
        let right = self.nodes.len() as u32;
        if let Node::Split { right: slot, .. } = &mut self.nodes[at] {
            *slot = right;
        }
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
        // Trees are walked in lockstep, a chunk at a time: the loads of
        // different trees do not depend on each other, so their cache misses
        // overlap instead of queueing (with many agents, a forest is rarely
        // in cache).
        const LANES: usize = 16;
        let mut total = 0.0;
        for chunk in self.roots.chunks(LANES) {
            let mut at = [0usize; LANES];
            let mut live = chunk.len();
            for (slot, root) in at.iter_mut().zip(chunk) {
                *slot = *root as usize;
            }
            let mut done = [false; LANES];
            while live > 0 {
                for k in 0..chunk.len() {
                    if done[k] {
                        continue;
                    }
                    match self.nodes[at[k]] {
                        Node::Leaf { path } => {
                            total += path;
                            done[k] = true;
                            live -= 1;
                        }
                        Node::Split {
                            feature,
                            value,
                            right,
                        } => {
                            at[k] = if x[feature as usize] < value {
                                at[k] + 1
                            } else {
                                right as usize
                            };
                        }
                    }
                }
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
