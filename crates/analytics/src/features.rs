//! Per-agent features, updated incrementally: each event costs a few hash
//! lookups and two window updates, whatever the history.
//!
//! Two kinds of state: [`Familiar`] is what the agent's baseline knows (its
//! resources, call pairs, addresses, hours; persisted), and [`Tracker`] holds
//! the sliding windows (1 min, 15 min, and 10 s for denial bursts; rebuilt
//! from live traffic after a restart).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::window::{COUNTERS, Counts, SHORT_COUNTERS, Window, c};

/// Length of the feature vector.
pub const N_FEATURES: usize = 14;

/// The features, in vector order (for alerts, CSV export and reports).
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "requests_1m_log",
    "requests_15m_log",
    "deny_share_1m",
    "error_share_15m",
    "write_share_15m",
    "new_resource_share_15m",
    "distinct_resources_15m_log",
    "bytes_out_15m_log",
    "bytes_in_15m_log",
    "max_classification_15m",
    "off_hours_share_15m",
    "novel_call_pair_share_15m",
    "new_source_ip_share_15m",
    "content_hits_15m_log",
];

/// How a split unit looks in each feature when the baseline never varied in
/// it (see `forest.rs`): a log feature moves by about 1 per e-fold, a share by
/// a quarter, classification by one level.
pub(crate) const FEATURE_UNIT: [f32; N_FEATURES] = [
    1.0, 1.0, 0.25, 0.25, 0.25, 0.25, 1.0, 1.0, 1.0, 1.0, 0.25, 0.25, 0.25, 1.0,
];

/// A feature vector.
pub type Features = [f32; N_FEATURES];

/// Caps on the baseline's sets, so memory per agent stays bounded.
const MAX_RESOURCES: usize = 65_536;
const MAX_PAIRS: usize = 16_384;
const MAX_IPS: usize = 1_024;
/// Hour-of-day observations needed before off-hours means anything.
const MIN_HOURS: u32 = 200;

/// What an agent's baseline knows. Only normal-looking traffic is learned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Familiar {
    pub(crate) resources: HashSet<u64>,
    pub(crate) pairs: HashSet<u64>,
    pub(crate) ips: HashSet<u64>,
    pub(crate) hours: Vec<u32>,
    pub(crate) restricted: bool,
}

impl Familiar {
    /// Takes an event into the baseline.
    pub(crate) fn learn(&mut self, event: &Event, pair: Option<u64>) {
        if self.resources.len() < MAX_RESOURCES {
            self.resources.insert(event.resource);
        }
        if let Some(p) = pair
            && self.pairs.len() < MAX_PAIRS
        {
            self.pairs.insert(p);
        }
        if self.ips.len() < MAX_IPS {
            self.ips.insert(event.source_ip);
        }
        if self.hours.len() != 24 {
            self.hours = vec![0; 24];
        }
        self.hours[hour_of(event.time_ms)] += 1;
        self.restricted |= event.classification >= 3;
    }

    /// Takes in what another copy of the baseline learned (cluster mode:
    /// what a replica learned since it last merged): the union of the
    /// sets, within their caps, and the sum of the hour counts, so nothing
    /// is counted twice as long as each part is absorbed once.
    pub(crate) fn absorb(&mut self, other: &Familiar) {
        fn union(into: &mut HashSet<u64>, from: &HashSet<u64>, cap: usize) {
            for v in from {
                if into.len() >= cap {
                    break;
                }
                into.insert(*v);
            }
        }
        union(&mut self.resources, &other.resources, MAX_RESOURCES);
        union(&mut self.pairs, &other.pairs, MAX_PAIRS);
        union(&mut self.ips, &other.ips, MAX_IPS);
        if other.hours.len() == 24 {
            if self.hours.len() != 24 {
                self.hours = vec![0; 24];
            }
            for (h, n) in self.hours.iter_mut().zip(&other.hours) {
                *h = h.saturating_add(*n);
            }
        }
        self.restricted |= other.restricted;
    }

    /// Whether it knows anything (hour counts aside).
    pub(crate) fn knows_anything(&self) -> bool {
        !self.resources.is_empty()
            || !self.pairs.is_empty()
            || !self.ips.is_empty()
            || self.restricted
    }

    /// Whether it counted any hour.
    pub(crate) fn counted_hours(&self) -> bool {
        self.hours.iter().any(|h| *h > 0)
    }

    fn off_hours(&self, time_ms: i64) -> bool {
        let total: u32 = self.hours.iter().sum();
        if total < MIN_HOURS {
            return false;
        }
        // An hour holding under 1 % of the agent's traffic is outside its day.
        self.hours[hour_of(time_ms)] * 100 < total
    }
}

fn hour_of(time_ms: i64) -> usize {
    (time_ms.div_euclid(3_600_000).rem_euclid(24)) as usize
}

/// What one event was, relative to the baseline.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Novelty {
    pub(crate) new_resource: bool,
    /// The call pair (previous operation, this one), if there was a previous.
    pub(crate) pair: Option<u64>,
    /// The call pair is not in the baseline.
    pub(crate) novel_pair: bool,
}

/// The sliding windows of one agent.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    /// Requests and denials only: the 1-minute features and the 10-second
    /// rules need no more, and a smaller window is less memory to touch
    /// per event.
    w1: Window<12, SHORT_COUNTERS>,
    w15: Window<15>,
    burst: Window<10, SHORT_COUNTERS>,
    /// Last time each resource was seen, for distinct counts.
    last_seen: std::collections::HashMap<u64, i64>,
    prev_operation: Option<u64>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            w1: Window::new(5_000),
            w15: Window::new(60_000),
            burst: Window::new(1_000),
            last_seen: Default::default(),
            prev_operation: None,
        }
    }
}

impl Tracker {
    /// Counts `event` and returns the agent's features after it.
    pub(crate) fn observe(&mut self, event: &Event, familiar: &Familiar) -> (Features, Novelty) {
        let new_resource = !familiar.resources.contains(&event.resource);
        let pair = self
            .prev_operation
            .map(|p| p.rotate_left(17) ^ event.operation);
        self.prev_operation = Some(event.operation);
        let novel_pair = pair.is_some_and(|p| !familiar.pairs.contains(&p));
        // Each resource counts once, in the bucket where it was seen last:
        // seeing it again moves its count forward, so the window's sum is the
        // number of distinct resources seen within it.
        let previous = self.last_seen.insert(event.resource, event.time_ms);
        if self.last_seen.len() > MAX_RESOURCES {
            // Forgetting only costs a distinct count that may be one too high.
            let horizon = event.time_ms - self.w15.span_ms();
            self.last_seen.retain(|_, t| *t >= horizon);
        }
        let mut counts: Counts = [0; COUNTERS];
        counts[c::REQUESTS] = 1;
        counts[c::DENIES] = u64::from(event.denied);
        counts[c::ERRORS] = u64::from(event.error);
        counts[c::WRITES] = u64::from(event.write);
        counts[c::NEW_RESOURCES] = u64::from(new_resource);
        counts[c::DISTINCT] = 1;
        counts[c::BYTES_IN] = event.bytes_in;
        counts[c::BYTES_OUT] = event.bytes_out;
        counts[c::OFF_HOURS] = u64::from(familiar.off_hours(event.time_ms));
        counts[c::NOVEL_PAIRS] = u64::from(novel_pair);
        counts[c::NEW_IPS] = u64::from(!familiar.ips.contains(&event.source_ip));
        counts[c::CONTENT] = u64::from(event.content_hits);
        counts[c::CONFIDENTIAL] = u64::from(event.classification == 2);
        counts[c::RESTRICTED] = u64::from(event.classification >= 3);
        let short = [counts[c::REQUESTS], counts[c::DENIES]];
        self.w1.advance(event.time_ms);
        self.w1.add(&short);
        self.w15.advance(event.time_ms);
        self.w15.add(&counts);
        self.burst.advance(event.time_ms);
        self.burst.add(&short);
        if let Some(t) = previous {
            self.w15.take_back(c::DISTINCT, t);
        }
        let novelty = Novelty {
            new_resource,
            pair,
            novel_pair,
        };
        (self.features(), novelty)
    }

    fn features(&self) -> Features {
        let s1 = self.w1.sum();
        let s15 = self.w15.sum();
        // Shares carry a pseudo-count of requests (4 a minute, 8 a quarter
        // hour), so one denial among two requests is not read as "half the
        // traffic denied": a small sample says little.
        let share1 =
            |s: &Counts<SHORT_COUNTERS>, i: usize| s[i] as f32 / (s[c::REQUESTS] + 4) as f32;
        let share = |s: &Counts, i: usize| s[i] as f32 / (s[c::REQUESTS] + 8) as f32;
        let ln = |v: u64| (v as f32).ln_1p();
        let class = if s15[c::RESTRICTED] > 0 {
            3.0
        } else if s15[c::CONFIDENTIAL] > 0 {
            2.0
        } else {
            0.0
        };
        [
            ln(s1[c::REQUESTS]),
            ln(s15[c::REQUESTS]),
            share1(s1, c::DENIES),
            share(s15, c::ERRORS),
            share(s15, c::WRITES),
            share(s15, c::NEW_RESOURCES),
            ln(s15[c::DISTINCT]),
            ln(s15[c::BYTES_OUT]),
            ln(s15[c::BYTES_IN]),
            class,
            share(s15, c::OFF_HOURS),
            share(s15, c::NOVEL_PAIRS),
            share(s15, c::NEW_IPS),
            ln(s15[c::CONTENT]),
        ]
    }

    /// Requests in the last minute.
    #[cfg(test)]
    pub(crate) fn requests_1m(&self) -> u64 {
        self.w1.sum()[c::REQUESTS]
    }

    /// Requests in the last 10 seconds.
    pub(crate) fn requests_10s(&self) -> u64 {
        self.burst.sum()[c::REQUESTS]
    }

    /// Denied requests in the last 10 seconds.
    pub(crate) fn denies_10s(&self) -> u64 {
        self.burst.sum()[c::DENIES]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(t: i64, resource: u64) -> Event {
        Event {
            time_ms: t,
            resource,
            operation: resource,
            write: false,
            denied: false,
            error: false,
            bytes_in: 0,
            bytes_out: 100,
            classification: 0,
            source_ip: 1,
            content_hits: 0,
        }
    }

    #[test]
    fn new_resources_and_pairs_are_relative_to_the_baseline() {
        let mut familiar = Familiar::default();
        let mut tracker = Tracker::default();
        familiar.learn(&event(0, 1), None);
        let (f, n) = tracker.observe(&event(1_000, 1), &familiar);
        assert!(!n.new_resource);
        assert_eq!(f[5], 0.0);
        let (f, n) = tracker.observe(&event(2_000, 2), &familiar);
        assert!(n.new_resource);
        assert_eq!(f[5], 0.1, "one of two requests, plus a pseudo-count of 8");
        assert_eq!(f[11], 0.1, "the one call pair is novel");
        assert_eq!(tracker.requests_1m(), 2);
        // Two minutes later the 1-minute window is empty again but for this one.
        tracker.observe(&event(122_000, 1), &familiar);
        assert_eq!(tracker.requests_1m(), 1);
    }

    #[test]
    fn distinct_resources_count_each_resource_seen_in_the_window_once() {
        let familiar = Familiar::default();
        let mut tracker = Tracker::default();
        let distinct = |f: Features| f[6].exp_m1().round() as u32;
        // A and B, then A again every minute for 20 minutes.
        tracker.observe(&event(0, 1), &familiar);
        let (f, _) = tracker.observe(&event(1_000, 2), &familiar);
        assert_eq!(distinct(f), 2);
        let mut f = f;
        for m in 1..=20 {
            f = tracker.observe(&event(m * 60_000, 1), &familiar).0;
            if m == 10 {
                assert_eq!(distinct(f), 2, "both seen within 15 minutes");
            }
        }
        assert_eq!(distinct(f), 1, "B left the window, A stays counted once");
    }

    #[test]
    fn off_hours_needs_a_baseline() {
        let mut familiar = Familiar::default();
        for i in 0..300 {
            // Every request between 09:00 and 10:00.
            familiar.learn(&event(9 * 3_600_000 + i, 1), None);
        }
        assert!(!familiar.off_hours(9 * 3_600_000));
        assert!(familiar.off_hours(3 * 3_600_000));
        assert!(!Familiar::default().off_hours(3 * 3_600_000));
    }
}
