//! Shadow mode: a candidate policy version decides live traffic alongside
//! the active one, without effect. Every request the active version decides
//! is decided again by the candidate (only while one is set); disagreements
//! are counted and the most recent are kept for `portcullis policy shadow`.
//!
//! The counters are atomics and the list is a short ring behind a mutex held
//! for one push, never across IO, so the request path does not wait on it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_core::Decision;
use serde::Serialize;

/// Most disagreements kept.
pub const RECENT: usize = 200;

/// The candidate's record.
#[derive(Debug, Default)]
pub struct ShadowStats {
    decided: AtomicU64,
    allow_to_deny: AtomicU64,
    deny_to_allow: AtomicU64,
    recent: Mutex<VecDeque<Disagreement>>,
}

/// One request the two versions decided differently.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Disagreement {
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// The request id (its audit record).
    pub request_id: String,
    /// The agent.
    pub agent: String,
    /// The method.
    pub action: String,
    /// The route.
    pub resource: String,
    /// The path.
    pub path: String,
    /// The active version's decision.
    pub active_allowed: bool,
    /// Its deciding policies.
    pub active_policies: Vec<String>,
    /// The candidate's decision.
    pub shadow_allowed: bool,
    /// Its deciding policies.
    pub shadow_policies: Vec<String>,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShadowReport {
    /// Requests decided by both.
    pub decided: u64,
    /// The active version allowed, the candidate would deny.
    pub allow_to_deny: u64,
    /// The active version denied, the candidate would allow.
    pub deny_to_allow: u64,
    /// The most recent disagreements, newest last.
    pub recent: Vec<Disagreement>,
}

impl ShadowStats {
    /// Counts one request; `what` describes it when the decisions differ.
    pub fn observe(
        &self,
        active: &Decision,
        shadow: &Decision,
        what: impl FnOnce() -> Disagreement,
    ) {
        self.decided.fetch_add(1, Ordering::Relaxed);
        if active.allowed == shadow.allowed {
            return;
        }
        if active.allowed {
            self.allow_to_deny.fetch_add(1, Ordering::Relaxed);
        } else {
            self.deny_to_allow.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(what());
        }
    }

    /// The counters and the list.
    pub fn report(&self) -> ShadowReport {
        ShadowReport {
            decided: self.decided.load(Ordering::Relaxed),
            allow_to_deny: self.allow_to_deny.load(Ordering::Relaxed),
            deny_to_allow: self.deny_to_allow.load(Ordering::Relaxed),
            recent: self
                .recent
                .lock()
                .map(|r| r.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool) -> Decision {
        Decision {
            allowed,
            policy_ids: vec![if allowed { "p" } else { "default-deny" }.into()],
            errors: Vec::new(),
        }
    }

    #[test]
    fn counts_disagreements_and_keeps_the_latest() {
        let stats = ShadowStats::default();
        let what = |n: usize| {
            move || Disagreement {
                time_ms: n as i64,
                request_id: n.to_string(),
                agent: "a".into(),
                action: "GET".into(),
                resource: "r".into(),
                path: "/r".into(),
                active_allowed: true,
                active_policies: vec![],
                shadow_allowed: false,
                shadow_policies: vec![],
            }
        };
        stats.observe(&decision(true), &decision(true), what(0));
        for n in 1..=RECENT + 5 {
            stats.observe(&decision(true), &decision(false), what(n));
        }
        stats.observe(&decision(false), &decision(true), what(999));
        let report = stats.report();
        assert_eq!(
            (report.decided, report.allow_to_deny, report.deny_to_allow),
            (RECENT as u64 + 7, RECENT as u64 + 5, 1)
        );
        assert_eq!(report.recent.len(), RECENT);
        assert_eq!(report.recent.last().unwrap().request_id, "999");
        assert_eq!(report.recent[0].request_id, "7");
    }
}
