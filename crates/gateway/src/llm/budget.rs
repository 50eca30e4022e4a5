//! Per-agent budgets of `kind = "llm"` routes: requests and tokens per UTC
//! minute and per UTC day.
//!
//! The hot path takes no lock across IO and never waits on disk. Each (route,
//! agent) has its own [`Counters`]: four fixed windows, each one `AtomicU64`
//! holding the window's number (minute or day since the epoch) in the high 32
//! bits and its count in the low 32 bits, updated by compare-and-swap. A
//! window whose number is not the current one counts zero, so windows roll
//! over without a timer. Finding an agent's counters takes a read lock on one
//! of 16 shards for a hash lookup (a write lock the first time an agent shows
//! up), never held across anything else.
//!
//! A request is admitted when neither token window is spent and both request
//! windows have room; the request windows are charged on admission. Tokens
//! are charged when the upstream reports its `usage` (the last chunk of a
//! stream), so one request can overshoot a token limit; the next one is then
//! refused until the window rolls over.
//!
//! Day counters survive a restart: a background task writes the changed ones
//! to the store every few seconds and at shutdown (see
//! [`Budgets::dirty_days`]), and start-up restores the current day's
//! ([`Budgets::restore_day`]). Minute counters start at zero after a restart.
//!
//! In cluster mode (a PostgreSQL store) the windows count every replica's
//! requests and tokens. The request path is unchanged (it reads and
//! charges the local atomics); a background task ([`Budgets::sync`], every
//! [`SYNC_INTERVAL`]) adds what this replica counted since its last report
//! to the shared counters and folds the totals back in, with the counts
//! other replicas reported lately. So a window here is "every replica's
//! count as of the last sync, plus what this replica counted since".
//! Precision: a replica learns of the others' requests within one sync
//! interval plus a round trip (~100–150 ms), so a limit of `N` across `R`
//! replicas admits at most `N` plus what the other `R − 1` replicas admit
//! in that lag; a budget spent on one replica is refused on every other
//! within it. A store that does not answer leaves each replica counting
//! its own share until it answers again (logged).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::config::BudgetConfig;

const SHARDS: usize = 16;
const COUNT_MASK: u64 = 0xffff_ffff;

/// How often a replica reports its counts and reads the others' (cluster
/// mode).
pub const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// One fixed window: `window << 32 | count`. In cluster mode, `.1` is the
/// part of the count that is every replica's total as last read from the
/// store (same encoding); the rest was counted here since.
#[derive(Debug, Default)]
struct Window(AtomicU64, AtomicU64);

impl Window {
    /// What this replica counted since its last report: (window, delta).
    fn unreported(&self) -> (u64, u64) {
        let v = self.0.load(Ordering::Acquire);
        let base = self.1.load(Ordering::Acquire);
        let reported = if base >> 32 == v >> 32 {
            base & COUNT_MASK
        } else {
            0
        };
        (v >> 32, (v & COUNT_MASK).saturating_sub(reported))
    }

    /// Folds in `total`, every replica's count of `window` as the store
    /// answered it after this replica reported `reported` of its own (0
    /// for a plain read): the window becomes the total plus what was
    /// counted here since, never less than it was. Only the sync task
    /// calls this, so `.1` has one writer.
    fn absorb(&self, window: u64, total: u64, reported: u64) {
        let base = self.1.load(Ordering::Acquire);
        let known = if base >> 32 == window {
            base & COUNT_MASK
        } else {
            0
        };
        if base >> 32 > window || total < known {
            return; // An older window, or an older answer.
        }
        let total = total.min(COUNT_MASK);
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let here = v >> 32;
                if here > window {
                    return None;
                }
                let count = if here == window { v & COUNT_MASK } else { 0 };
                // Counted here and not in `total`: what was not reported.
                let unreported = count.saturating_sub(known + reported);
                Some(window << 32 | total.saturating_add(unreported).min(COUNT_MASK))
            });
        self.1.store(window << 32 | total, Ordering::Release);
    }

    fn count(&self, window: u64) -> u64 {
        let v = self.0.load(Ordering::Acquire);
        if v >> 32 == window { v & COUNT_MASK } else { 0 }
    }

    /// Adds `n` (saturating) in `window`.
    fn add(&self, window: u64, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let count = if v >> 32 == window { v & COUNT_MASK } else { 0 };
                Some(window << 32 | count.saturating_add(n).min(COUNT_MASK))
            });
    }

    /// Adds one if the count is below `limit`; false when it is not.
    fn take(&self, window: u64, limit: u64) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let count = if v >> 32 == window { v & COUNT_MASK } else { 0 };
                (count < limit).then(|| window << 32 | (count + 1).min(COUNT_MASK))
            })
            .is_ok()
    }

    /// Takes back one taken in `window` (a later check refused the request).
    fn give_back(&self, window: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v >> 32 == window && v & COUNT_MASK > 0).then(|| v - 1)
            });
    }
}

/// The counters of one agent on one route.
#[derive(Debug, Default)]
pub struct Counters {
    requests_minute: Window,
    requests_day: Window,
    tokens_minute: Window,
    tokens_day: Window,
    /// Set when a day counter changed since the last write to the store.
    dirty: AtomicBool,
    /// Set when a window changed since the last report (cluster mode).
    unreported: AtomicBool,
}

impl Counters {
    fn windows(&self) -> [(&'static str, &Window); 4] {
        [
            ("rm", &self.requests_minute),
            ("rd", &self.requests_day),
            ("tm", &self.tokens_minute),
            ("td", &self.tokens_day),
        ]
    }

    fn window(&self, kind: &str) -> Option<&Window> {
        self.windows()
            .into_iter()
            .find_map(|(k, w)| (k == kind).then_some(w))
    }
}

impl Counters {
    /// Charges `tokens` used by an admitted request.
    pub fn charge_tokens(&self, now_epoch: i64, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let (minute, day) = windows(now_epoch);
        self.tokens_minute.add(minute, tokens);
        self.tokens_day.add(day, tokens);
        self.dirty.store(true, Ordering::Release);
        self.unreported.store(true, Ordering::Release);
    }
}

/// The current minute and day numbers.
fn windows(now_epoch: i64) -> (u64, u64) {
    let now = now_epoch.max(0) as u64;
    (now / 60, now / 86_400)
}

/// Why a request was refused, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    /// `requests_per_minute`, `tokens_per_day`, …
    pub limit: &'static str,
    /// The limit's value.
    pub value: u64,
    /// Seconds until the spent window starts over.
    pub retry_after: u64,
}

/// One day counter to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayUsage {
    /// The route.
    pub route: String,
    /// The agent.
    pub agent: String,
    /// Days since the epoch (UTC).
    pub day: i64,
    /// Requests admitted that day.
    pub requests: u64,
    /// Tokens charged that day.
    pub tokens: u64,
}

/// `route` NUL `agent`: names never contain NUL (both follow the name rule).
fn key(route: &str, agent: &str) -> String {
    let mut k = String::with_capacity(route.len() + 1 + agent.len());
    k.push_str(route);
    k.push('\0');
    k.push_str(agent);
    k
}

/// The shared counter of one window: route, agent, which window
/// (`rm`, `rd`, `tm`, `td`), separated by a character names cannot hold.
fn shared_key(route: &str, agent: &str, kind: &str) -> String {
    format!("{route}\u{1f}{agent}\u{1f}{kind}")
}

/// Every agent's counters, sharded by (route, agent).
#[derive(Debug)]
pub struct Budgets {
    shards: Vec<RwLock<HashMap<String, Arc<Counters>>>>,
    /// Cluster mode: when the last read of the others' counts started
    /// (epoch milliseconds; 0 before the first, which reads them all).
    read_since_ms: AtomicU64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            read_since_ms: AtomicU64::new(0),
        }
    }
}

/// How far back a read of the others' counts reaches before the last one
/// started: replicas' clocks differ, and a report commits after it is
/// stamped.
const READ_OVERLAP_MS: u64 = 2_000;

impl Budgets {
    fn shard(&self, key: &str) -> &RwLock<HashMap<String, Arc<Counters>>> {
        use std::hash::{Hash, Hasher};
        // A fixed-key hasher: the shard only spreads contention.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }

    /// The counters of `agent` on `route`, created on first use.
    pub fn counters(&self, route: &str, agent: &str) -> Arc<Counters> {
        let key = key(route, agent);
        let shard = self.shard(&key);
        if let Ok(map) = shard.read()
            && let Some(c) = map.get(&key)
        {
            return c.clone();
        }
        let mut map = match shard.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key).or_default().clone()
    }

    /// Admits one request under `limits`, charging the request windows, or
    /// says which limit is spent.
    pub fn admit(
        &self,
        limits: &BudgetConfig,
        counters: &Counters,
        now_epoch: i64,
    ) -> Result<(), Exceeded> {
        let (minute, day) = windows(now_epoch);
        let now = now_epoch.max(0) as u64;
        let minute_left = 60 - now % 60;
        let day_left = 86_400 - now % 86_400;
        let spent = |limit: &'static str, value: u64, retry_after: u64| Exceeded {
            limit,
            value,
            retry_after,
        };
        if let Some(max) = limits.tokens_per_day
            && counters.tokens_day.count(day) >= max
        {
            return Err(spent("tokens_per_day", max, day_left));
        }
        if let Some(max) = limits.tokens_per_minute
            && counters.tokens_minute.count(minute) >= max
        {
            return Err(spent("tokens_per_minute", max, minute_left));
        }
        if let Some(max) = limits.requests_per_day
            && !counters.requests_day.take(day, max)
        {
            return Err(spent("requests_per_day", max, day_left));
        }
        match limits.requests_per_minute {
            Some(max) if !counters.requests_minute.take(minute, max) => {
                if limits.requests_per_day.is_some() {
                    counters.requests_day.give_back(day);
                }
                return Err(spent("requests_per_minute", max, minute_left));
            }
            Some(_) => {}
            None => counters.requests_minute.add(minute, 1),
        }
        if limits.requests_per_day.is_none() {
            counters.requests_day.add(day, 1);
        }
        counters.dirty.store(true, Ordering::Release);
        counters.unreported.store(true, Ordering::Release);
        Ok(())
    }

    /// Restores day counters written by an earlier run; rows of another day
    /// than today's are ignored.
    pub fn restore_day(&self, rows: &[DayUsage], now_epoch: i64) {
        let (_, day) = windows(now_epoch);
        for row in rows.iter().filter(|r| r.day as u64 == day) {
            let c = self.counters(&row.route, &row.agent);
            c.requests_day.add(day, row.requests);
            c.tokens_day.add(day, row.tokens);
        }
    }

    /// The day counters changed since the last call, clearing their marks.
    /// The caller writes them to the store (off the request path).
    pub fn dirty_days(&self, now_epoch: i64) -> Vec<DayUsage> {
        let (_, day) = windows(now_epoch);
        let mut out = Vec::new();
        for shard in &self.shards {
            // Clone the handles out so the lock covers only the map walk.
            let entries: Vec<(String, Arc<Counters>)> = match shard.read() {
                Ok(map) => map.iter().map(|(k, c)| (k.clone(), c.clone())).collect(),
                Err(_) => continue,
            };
            for (key, c) in entries {
                let (route, agent) = key.split_once('\0').unwrap_or((&key, ""));
                if c.dirty.swap(false, Ordering::AcqRel) {
                    out.push(DayUsage {
                        route: route.to_string(),
                        agent: agent.to_string(),
                        day: day as i64,
                        requests: c.requests_day.count(day),
                        tokens: c.tokens_day.count(day),
                    });
                }
            }
        }
        out
    }

    /// Cluster mode: reports what this replica counted since the last call
    /// to the shared counters and folds back every replica's totals, then
    /// reads the counts other replicas reported lately. Off the request
    /// path (see [`SYNC_INTERVAL`]).
    pub async fn sync(
        &self,
        store: &portcullis_store::Store,
        now_ms: i64,
    ) -> Result<(), portcullis_store::StoreError> {
        let mut reports = Vec::new();
        let mut deltas = Vec::new();
        for shard in &self.shards {
            let entries: Vec<(String, Arc<Counters>)> = match shard.read() {
                Ok(map) => map.iter().map(|(k, c)| (k.clone(), c.clone())).collect(),
                Err(_) => continue,
            };
            for (key, c) in entries {
                if !c.unreported.swap(false, Ordering::AcqRel) {
                    continue;
                }
                let (route, agent) = key.split_once('\0').unwrap_or((&key, ""));
                for (kind, window) in c.windows() {
                    let (win, delta) = window.unreported();
                    if delta > 0 {
                        deltas.push(portcullis_store::CounterDelta {
                            key: shared_key(route, agent, kind),
                            win: win as i64,
                            delta: delta as i64,
                        });
                        reports.push((c.clone(), kind, win, delta));
                    }
                }
            }
        }
        if !deltas.is_empty() {
            match store.add_counters(&deltas, now_ms).await {
                Ok(totals) => {
                    for ((c, kind, win, delta), total) in reports.iter().zip(totals) {
                        if let Some(w) = c.window(kind) {
                            w.absorb(*win, total.max(0) as u64, *delta);
                        }
                    }
                }
                Err(e) => {
                    for (c, ..) in &reports {
                        c.unreported.store(true, Ordering::Release);
                    }
                    return Err(e);
                }
            }
        }
        let since = self.read_since_ms.load(Ordering::Acquire);
        let from = if since == 0 {
            0
        } else {
            since.saturating_sub(READ_OVERLAP_MS) as i64
        };
        // Today's windows and later: a day's number is below every minute's.
        let today = now_ms.max(0) / 86_400_000;
        for (key, win, total) in store.counters_since(from, today).await? {
            let mut parts = key.splitn(3, '\u{1f}');
            let (Some(route), Some(agent), Some(kind)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let Some(w) = self.counters(route, agent).window(kind) {
                w.absorb(win.max(0) as u64, total.max(0) as u64, 0);
            }
        }
        self.read_since_ms
            .store(now_ms.max(1) as u64, Ordering::Release);
        Ok(())
    }

    /// Marks the counters in `rows` as changed again (their write failed).
    pub fn mark_dirty(&self, rows: &[DayUsage]) {
        for row in rows {
            self.counters(&row.route, &row.agent)
                .dirty
                .store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000 - 1_800_000_000 % 86_400; // midnight UTC

    fn limits(
        rpm: Option<u64>,
        rpd: Option<u64>,
        tpm: Option<u64>,
        tpd: Option<u64>,
    ) -> BudgetConfig {
        BudgetConfig {
            requests_per_minute: rpm,
            requests_per_day: rpd,
            tokens_per_minute: tpm,
            tokens_per_day: tpd,
        }
    }

    #[test]
    fn request_windows_refuse_and_roll_over() {
        let b = Budgets::default();
        let l = limits(Some(2), Some(3), None, None);
        let c = b.counters("llm", "bot");
        assert!(b.admit(&l, &c, T0 + 10).is_ok());
        assert!(b.admit(&l, &c, T0 + 20).is_ok());
        let e = b.admit(&l, &c, T0 + 30).unwrap_err();
        assert_eq!((e.limit, e.retry_after), ("requests_per_minute", 30));
        // The refused request did not use up the day.
        assert!(b.admit(&l, &c, T0 + 60).is_ok());
        let e = b.admit(&l, &c, T0 + 61).unwrap_err();
        assert_eq!((e.limit, e.retry_after), ("requests_per_day", 86_400 - 61));
        // Another agent, another route: their own counters.
        assert!(b.admit(&l, &b.counters("llm", "other"), T0 + 61).is_ok());
        assert!(b.admit(&l, &b.counters("llm2", "bot"), T0 + 61).is_ok());
        // Next day.
        assert!(b.admit(&l, &c, T0 + 86_400).is_ok());
    }

    #[test]
    fn tokens_charged_after_the_fact_refuse_the_next_request() {
        let b = Budgets::default();
        let l = limits(None, None, Some(100), Some(150));
        let c = b.counters("llm", "bot");
        assert!(b.admit(&l, &c, T0).is_ok());
        c.charge_tokens(T0, 120);
        let e = b.admit(&l, &c, T0 + 5).unwrap_err();
        assert_eq!((e.limit, e.retry_after), ("tokens_per_minute", 55));
        assert!(b.admit(&l, &c, T0 + 60).is_ok());
        c.charge_tokens(T0 + 60, 30);
        let e = b.admit(&l, &c, T0 + 61).unwrap_err();
        assert_eq!(e.limit, "tokens_per_day");
    }

    #[test]
    fn day_counters_persist_and_restore() {
        let b = Budgets::default();
        let l = limits(None, Some(5), None, Some(1000));
        let c = b.counters("llm", "bot");
        b.admit(&l, &c, T0 + 1).unwrap();
        c.charge_tokens(T0 + 1, 40);
        let rows = b.dirty_days(T0 + 2);
        assert_eq!(
            rows,
            [DayUsage {
                route: "llm".into(),
                agent: "bot".into(),
                day: T0 / 86_400,
                requests: 1,
                tokens: 40
            }]
        );
        assert!(b.dirty_days(T0 + 3).is_empty());
        let restarted = Budgets::default();
        restarted.restore_day(&rows, T0 + 100);
        let c2 = restarted.counters("llm", "bot");
        for _ in 0..4 {
            restarted.admit(&l, &c2, T0 + 200).unwrap();
        }
        assert_eq!(
            restarted.admit(&l, &c2, T0 + 200).unwrap_err().limit,
            "requests_per_day"
        );
        // Yesterday's rows do not count today.
        let tomorrow = Budgets::default();
        tomorrow.restore_day(&rows, T0 + 86_400);
        assert!(tomorrow.dirty_days(T0 + 86_400).is_empty());
    }

    #[test]
    fn a_window_folds_in_the_shared_total_and_keeps_what_it_counted_since() {
        let w = Window::default();
        w.add(7, 3);
        assert_eq!(w.unreported(), (7, 3));
        // Reported 3; the store answers 10 (7 counted by other replicas);
        // one more was counted here meanwhile.
        w.add(7, 1);
        w.absorb(7, 10, 3);
        assert_eq!((w.count(7), w.unreported()), (11, (7, 1)));
        // A read of the others' counts: 3 more elsewhere.
        w.absorb(7, 13, 0);
        assert_eq!(w.count(7), 14);
        // An older answer changes nothing.
        w.absorb(7, 12, 0);
        assert_eq!(w.count(7), 14);
        // A later window starts from its total; the old one counts zero.
        w.absorb(8, 5, 0);
        assert_eq!((w.count(8), w.count(7)), (5, 0));
        // Spent by the others: this replica refuses too.
        let b = Budgets::default();
        let c = b.counters("llm", "bot");
        let (minute, _) = windows(T0);
        c.requests_minute.absorb(minute, 2, 0);
        let l = limits(Some(2), None, None, None);
        assert_eq!(
            b.admit(&l, &c, T0).unwrap_err().limit,
            "requests_per_minute"
        );
    }

    #[test]
    fn concurrent_admission_never_exceeds_the_limit() {
        let b = Arc::new(Budgets::default());
        let l = limits(Some(1000), None, None, None);
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, admitted) = (b.clone(), admitted.clone());
                std::thread::spawn(move || {
                    let c = b.counters("llm", "bot");
                    for _ in 0..500 {
                        if b.admit(&l, &c, T0).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }
}
