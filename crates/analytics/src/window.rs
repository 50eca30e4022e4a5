//! Sliding-window counters in fixed buckets. Adding is O(1); moving the window
//! forward clears at most one bucket per elapsed bucket (bounded by the bucket
//! count), so the cost per event is O(1) amortized and never more than O(N).
//! Counts are integers, so sums never drift.

/// Counters kept per bucket (by the windows that keep them all).
pub(crate) const COUNTERS: usize = 14;

/// Counters of the short windows: requests and denials only (the first two
/// counters, so the same indices serve both).
pub(crate) const SHORT_COUNTERS: usize = 2;
const _: () = assert!(c::REQUESTS < SHORT_COUNTERS && c::DENIES < SHORT_COUNTERS);

/// Index of each counter.
pub(crate) mod c {
    pub(crate) const REQUESTS: usize = 0;
    pub(crate) const DENIES: usize = 1;
    pub(crate) const ERRORS: usize = 2;
    pub(crate) const WRITES: usize = 3;
    pub(crate) const NEW_RESOURCES: usize = 4;
    pub(crate) const DISTINCT: usize = 5;
    pub(crate) const BYTES_IN: usize = 6;
    pub(crate) const BYTES_OUT: usize = 7;
    pub(crate) const OFF_HOURS: usize = 8;
    pub(crate) const NOVEL_PAIRS: usize = 9;
    pub(crate) const NEW_IPS: usize = 10;
    pub(crate) const CONTENT: usize = 11;
    pub(crate) const CONFIDENTIAL: usize = 12;
    pub(crate) const RESTRICTED: usize = 13;
}

pub(crate) type Counts<const K: usize = COUNTERS> = [u64; K];

/// `N` buckets of `bucket_ms` each, `K` counters in each; the window is
/// their span.
#[derive(Debug, Clone)]
pub(crate) struct Window<const N: usize, const K: usize = COUNTERS> {
    bucket_ms: i64,
    buckets: [Counts<K>; N],
    /// Bucket number (time / bucket_ms) of the newest bucket.
    head: i64,
    sum: Counts<K>,
}

impl<const N: usize, const K: usize> Window<N, K> {
    pub(crate) fn new(bucket_ms: i64) -> Self {
        Window {
            bucket_ms,
            buckets: [[0; K]; N],
            head: i64::MIN,
            sum: [0; K],
        }
    }

    /// Moves the window so that it ends at `time_ms`. Older times (events out
    /// of order) leave it where it is: they count in the newest bucket.
    pub(crate) fn advance(&mut self, time_ms: i64) {
        let b = time_ms.div_euclid(self.bucket_ms);
        if self.head == i64::MIN || b - self.head >= N as i64 {
            self.buckets = [[0; K]; N];
            self.sum = [0; K];
            self.head = b;
            return;
        }
        while self.head < b {
            self.head += 1;
            let slot = self.head.rem_euclid(N as i64) as usize;
            for (s, v) in self.sum.iter_mut().zip(self.buckets[slot].iter_mut()) {
                *s -= *v;
                *v = 0;
            }
        }
    }

    /// Adds `counts` to the newest bucket (call [`Window::advance`] first).
    pub(crate) fn add(&mut self, counts: &Counts<K>) {
        let slot = self.head.rem_euclid(N as i64) as usize;
        for ((b, s), c) in self.buckets[slot]
            .iter_mut()
            .zip(self.sum.iter_mut())
            .zip(counts)
        {
            *b += c;
            *s += c;
        }
    }

    /// Takes back one count of counter `i` from the bucket of `old_ms`, if
    /// that bucket is still in the window (used to move a resource's distinct
    /// count to the bucket where it was seen last).
    pub(crate) fn take_back(&mut self, i: usize, old_ms: i64) {
        let b = old_ms.div_euclid(self.bucket_ms);
        if b <= self.head && b > self.head - N as i64 {
            let slot = b.rem_euclid(N as i64) as usize;
            if self.buckets[slot][i] > 0 {
                self.buckets[slot][i] -= 1;
                self.sum[i] -= 1;
            }
        }
    }

    /// The totals over the window.
    pub(crate) fn sum(&self) -> &Counts<K> {
        &self.sum
    }

    /// The window's length.
    pub(crate) fn span_ms(&self) -> i64 {
        self.bucket_ms * N as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(i: usize) -> Counts {
        let mut c = [0; COUNTERS];
        c[i] = 1;
        c
    }

    /// Adds a request at each time and returns the request count after each.
    fn check(times: &[i64], expect: &[u64]) {
        let mut w: Window<4> = Window::new(1000);
        let got: Vec<u64> = times
            .iter()
            .map(|t| {
                w.advance(*t);
                w.add(&one(c::REQUESTS));
                w.sum()[c::REQUESTS]
            })
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn counts_slide_out_after_the_span() {
        check(&[0, 500, 1500, 3999], &[1, 2, 3, 4]);
        // At 4000 the bucket of 0..1000 leaves the window.
        check(&[0, 500, 1500, 4000], &[1, 2, 3, 2]);
        // A jump past the whole span starts afresh.
        check(&[0, 1000, 2000, 100_000], &[1, 2, 3, 1]);
        // Out-of-order events count in the newest bucket.
        check(&[5000, 1000], &[1, 2]);
    }
}
