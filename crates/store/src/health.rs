//! Whether the shared store answers (cluster mode, issue 18), as the request
//! path needs to know it: without asking the database.
//!
//! A background task (`portcullis serve`'s cluster heartbeat) pings the
//! database a few times a second and reports each answer here; the request
//! path reads one relaxed atomic while the store answers, and the clock only
//! while it does not. So no request waits on a database round trip to learn
//! that the database is gone, and a stalled database never stalls the
//! check. On SQLite nothing reports, and the store is always "up".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The store's health as last reported. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// The last report was a failure (or a timeout).
    down: AtomicBool,
    /// When the database last answered, ms since the epoch (0: never
    /// reported, i.e. it answered at start).
    last_ok_ms: AtomicI64,
    /// How long after the last answer requests may still be decided from
    /// the in-memory snapshots (`[store] max_staleness_ms`).
    max_staleness_ms: AtomicI64,
}

impl StoreHealth {
    /// Sets how long, after the database last answered, requests may still
    /// be decided from the last snapshot (0: refused as soon as it stops).
    pub fn set_max_staleness_ms(&self, ms: u64) {
        self.0
            .max_staleness_ms
            .store(i64::try_from(ms).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// The database answered just now.
    pub fn answered(&self) {
        self.0.last_ok_ms.store(now_ms(), Ordering::Relaxed);
        self.0.down.store(false, Ordering::Relaxed);
    }

    /// The database did not answer (an error or a timeout). Returns whether
    /// this is news (it was up until now).
    pub fn failed(&self) -> bool {
        if self.0.last_ok_ms.load(Ordering::Relaxed) == 0 {
            // Never reported up: it answered at start, when the store opened.
            let _ = self.0.last_ok_ms.compare_exchange(
                0,
                now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        !self.0.down.swap(true, Ordering::Relaxed)
    }

    /// Whether the last report was a failure.
    pub fn is_down(&self) -> bool {
        self.0.down.load(Ordering::Relaxed)
    }

    /// Whether a request must be refused: the database is down and has
    /// been for longer than the allowed staleness. One relaxed load while
    /// it is up.
    pub fn refuses(&self) -> bool {
        if !self.is_down() {
            return false;
        }
        let since = now_ms() - self.0.last_ok_ms.load(Ordering::Relaxed);
        since >= self.0.max_staleness_ms.load(Ordering::Relaxed)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_while_down_and_past_the_staleness_allowed() {
        let health = StoreHealth::default();
        assert!(!health.refuses());
        health.answered();
        assert!(health.failed());
        assert!(!health.failed(), "a second failure is no news");
        assert!(health.refuses(), "no staleness allowed by default");
        health.set_max_staleness_ms(60_000);
        assert!(!health.refuses(), "within the staleness allowed");
        health.0.last_ok_ms.fetch_sub(61_000, Ordering::Relaxed);
        assert!(health.refuses(), "past the staleness allowed");
        health.clone().answered();
        assert!(!health.refuses() && !health.is_down());
    }
}
