//! A small deterministic generator (SplitMix64) for sampling and tree building.
//! Determinism matters: a model rebuilt from persisted samples after a restart
//! is the same model.

/// SplitMix64 (Steele, Lea, Flood 2014): fast, and good enough for sampling.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by Lemire's multiply-shift: a 64-bit
    /// division costs tens of cycles and tree building draws one per node.
    /// The bias, at most n / 2^64, is far below anything a sample can show.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    #[cfg(test)]
    pub(crate) fn unit(&mut self) -> f32 {
        unit_of(self.next_u64())
    }
}

/// Uniform in `0..n` (`0 < n ≤ 2^32`) from 32 random bits, by multiply-shift;
/// the bias, at most n / 2^32, is far below anything a sample can show. Lets
/// one 64-bit draw serve twice where draws are the cost (tree building).
pub(crate) fn below_of(bits: u32, n: usize) -> usize {
    ((u64::from(bits) * n as u64) >> 32) as usize
}

/// Uniform in `[0, 1)` from the top 24 bits of a draw.
pub(crate) fn unit_of(bits: u64) -> f32 {
    (bits >> 40) as f32 / (1u64 << 24) as f32
}
