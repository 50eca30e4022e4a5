//! Sampling of refused unauthenticated requests in the audit log.
//!
//! Every request leaves a record, but a caller that never authenticated can
//! send thousands a second: written one by one, an anonymous flood grows the
//! database without bound (measured: ~10 MB/s at ~2,500 requests/s). So each
//! source address gets `[audit] unauthenticated_records_per_minute` records
//! in full per minute; the rest of that minute's refusals are counted, and
//! one summary record per source and minute says how many there were
//! (`sampled`: the number of refused requests it stands for, `action`
//! `unauthenticated`). Nothing authenticated is ever sampled: only records
//! with no principal reach this module.
//!
//! The table is bounded: at most [`MAX_SOURCES`] addresses are tracked per
//! minute; beyond that, refusals are counted under one `overflow` summary.
//! The lock is held for a map lookup only, never across IO.

use std::collections::HashMap;
use std::sync::Mutex;

use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_core::RequestId;

/// Most source addresses tracked within one minute.
pub const MAX_SOURCES: usize = 16_384;

/// The source name of the summary of refusals beyond [`MAX_SOURCES`].
pub const OVERFLOW_SOURCE: &str = "overflow";

/// The summary records' `action`.
pub const SUMMARY_ACTION: &str = "unauthenticated";

#[derive(Debug, Default)]
struct Window {
    /// Records written in full this minute.
    written: u32,
    /// Refusals counted, not written.
    suppressed: u64,
}

#[derive(Debug, Default)]
struct Minute {
    /// Minute number (epoch minutes).
    number: i64,
    sources: HashMap<String, Window>,
    overflow: u64,
}

/// The per-source budget of anonymous records.
#[derive(Debug)]
pub struct AnonymousSampler {
    per_minute: u32,
    minute: Mutex<Minute>,
}

impl AnonymousSampler {
    /// A sampler writing `per_minute` records in full per source and minute.
    pub fn new(per_minute: u32) -> Self {
        AnonymousSampler {
            per_minute,
            minute: Mutex::new(Minute::default()),
        }
    }

    /// Whether a refused anonymous request from `source` at `now_ms` is
    /// written in full (`true`) or counted for the minute's summary. The
    /// summaries of a minute that has just ended are handed to `flush`.
    pub fn admit(&self, source: &str, now_ms: i64, flush: impl FnOnce(Vec<AuditRecord>)) -> bool {
        let number = now_ms.div_euclid(60_000);
        let (admitted, ended) = {
            let Ok(mut minute) = self.minute.lock() else {
                // A poisoned lock: write in full rather than lose records.
                return true;
            };
            let ended = (minute.number != number).then(|| {
                let old = std::mem::take(&mut *minute);
                minute.number = number;
                old
            });
            let tracked = minute.sources.len();
            let admitted = match minute.sources.get_mut(source) {
                Some(w) => count(w, self.per_minute),
                None if tracked < MAX_SOURCES => {
                    let mut w = Window::default();
                    let admitted = count(&mut w, self.per_minute);
                    minute.sources.insert(source.to_string(), w);
                    admitted
                }
                None => {
                    minute.overflow += 1;
                    false
                }
            };
            (admitted, ended)
        };
        if let Some(ended) = ended {
            let summaries = summaries(ended);
            if !summaries.is_empty() {
                flush(summaries);
            }
        }
        admitted
    }

    /// The summaries of every minute before `now_ms` not yet flushed (a
    /// periodic task calls this so a source that went quiet is summarised).
    pub fn drain_ended(&self, now_ms: i64) -> Vec<AuditRecord> {
        let number = now_ms.div_euclid(60_000);
        let ended = {
            let Ok(mut minute) = self.minute.lock() else {
                return Vec::new();
            };
            if minute.number >= number {
                return Vec::new();
            }
            let old = std::mem::take(&mut *minute);
            minute.number = number;
            old
        };
        summaries(ended)
    }
}

fn count(w: &mut Window, per_minute: u32) -> bool {
    if w.written < per_minute {
        w.written += 1;
        true
    } else {
        w.suppressed += 1;
        false
    }
}

fn summaries(minute: Minute) -> Vec<AuditRecord> {
    let start = minute.number * 60_000;
    let mut out: Vec<AuditRecord> = minute
        .sources
        .into_iter()
        .filter(|(_, w)| w.suppressed > 0)
        .map(|(source, w)| summary(start, source, w.suppressed))
        .collect();
    if minute.overflow > 0 {
        out.push(summary(start, OVERFLOW_SOURCE.to_string(), minute.overflow));
    }
    out
}

fn summary(start_ms: i64, source: String, count: u64) -> AuditRecord {
    AuditRecord {
        time_ms: start_ms,
        kind: RecordKind::Request,
        request_id: RequestId::new().to_string(),
        source_ip: Some(source),
        action: SUMMARY_ACTION.to_string(),
        outcome: Outcome::Deny,
        error_code: Some("unauthenticated".to_string()),
        status: 401,
        sampled: Some(count),
        ..AuditRecord::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_budget_then_one_summary_per_minute() {
        let s = AnonymousSampler::new(3);
        let mut flushed = Vec::new();
        let admitted: Vec<bool> = (0..10)
            .map(|i| s.admit("10.0.0.1", 1_000 + i, |r| flushed.extend(r)))
            .collect();
        assert_eq!(admitted.iter().filter(|a| **a).count(), 3);
        // Another source has its own budget.
        assert!(s.admit("10.0.0.2", 2_000, |r| flushed.extend(r)));
        assert!(flushed.is_empty());
        // The next minute's first request flushes the last minute's summary.
        assert!(s.admit("10.0.0.1", 61_000, |r| flushed.extend(r)));
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].source_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(flushed[0].sampled, Some(7));
        assert_eq!(flushed[0].time_ms, 0);
        assert_eq!(flushed[0].action, SUMMARY_ACTION);
    }

    #[test]
    fn quiet_sources_are_drained_and_the_table_is_bounded() {
        let s = AnonymousSampler::new(0);
        for i in 0..(MAX_SOURCES + 5) {
            assert!(!s.admit(&format!("s{i}"), 5, |_| panic!("nothing ended")));
        }
        assert!(s.drain_ended(59_999).is_empty());
        let out = s.drain_ended(60_000);
        assert_eq!(out.len(), MAX_SOURCES + 1);
        let overflow = out
            .iter()
            .find(|r| r.source_ip.as_deref() == Some(OVERFLOW_SOURCE))
            .unwrap();
        assert_eq!(overflow.sampled, Some(5));
        assert!(s.drain_ended(60_000).is_empty());
    }
}
