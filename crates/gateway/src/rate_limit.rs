//! `@rate("N/s|m|h")`: per-agent rate limits set by policy.
//!
//! A generic cell rate algorithm (GCRA): each (policy, agent) pair keeps one
//! "theoretical arrival time" in an atomic, advanced by compare-and-swap, so
//! admitting a request takes no lock beyond a shard's read lock to find the
//! cell (the write lock only when an agent first meets a policy). Up to `N`
//! requests may come at once; after that they are spaced `period / N` apart.
//! Nothing touches the disk; limits restart empty with the process.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use portcullis_policy::Rate;

const SHARDS: usize = 16;

/// Cells by policy id, then agent.
type Shard = HashMap<String, HashMap<String, Arc<Cell>>>;

/// The per-agent limits of every `@rate` policy.
#[derive(Debug)]
pub struct RateLimiter {
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
    shards: [RwLock<Shard>; SHARDS],
}

#[derive(Debug)]
struct Cell {
    /// Nanoseconds since `epoch` at which the cell is empty again.
    tat: AtomicU64,
    rate: Rate,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            epoch: Instant::now(),
            hasher: Default::default(),
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
        }
    }
}

impl RateLimiter {
    /// Admits one request of `agent` under `policy`'s `rate`, or says how
    /// long to wait.
    pub fn check(&self, policy: &str, agent: &str, rate: Rate) -> Result<(), Duration> {
        self.check_at(policy, agent, rate, Instant::now())
    }

    fn check_at(
        &self,
        policy: &str,
        agent: &str,
        rate: Rate,
        now: Instant,
    ) -> Result<(), Duration> {
        let cell = self.cell(policy, agent, rate);
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let period = cell.rate.per.as_nanos() as u64;
        let interval = period / u64::from(cell.rate.count.max(1));
        let mut tat = cell.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now) + interval;
            // The burst allowance: the cell may run up to one period ahead.
            if next > now + period {
                return Err(Duration::from_nanos(next - period - now));
            }
            match cell
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    fn cell(&self, policy: &str, agent: &str, rate: Rate) -> Arc<Cell> {
        let shard = &self.shards[self.hasher.hash_one(agent) as usize % SHARDS];
        if let Ok(map) = shard.read()
            && let Some(cell) = map.get(policy).and_then(|m| m.get(agent))
            && cell.rate == rate
        {
            return cell.clone();
        }
        let fresh = || {
            Arc::new(Cell {
                tat: AtomicU64::new(0),
                rate,
            })
        };
        let Ok(mut map) = shard.write() else {
            // A poisoned shard (a panic elsewhere) still limits, per call.
            return fresh();
        };
        let cell = map
            .entry(policy.to_string())
            .or_default()
            .entry(agent.to_string())
            .or_insert_with(fresh);
        // A policy whose rate changed (a new version) starts a fresh cell.
        if cell.rate != rate {
            *cell = fresh();
        }
        cell.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_spaces_requests_per_agent_and_policy() {
        let limiter = RateLimiter::default();
        let start = limiter.epoch;
        let rate = Rate::parse("3/s").unwrap();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let run = |agent: &str, ms| limiter.check_at("p", agent, rate, at(ms)).is_ok();
        // A burst of three, then refused until a third of a second has passed.
        assert!(run("a", 0) && run("a", 0) && run("a", 0));
        let wait = limiter.check_at("p", "a", rate, at(0)).unwrap_err();
        assert!(
            wait > Duration::from_millis(300) && wait <= Duration::from_millis(334),
            "{wait:?}"
        );
        assert!(!run("a", 300));
        assert!(run("a", 340));
        // Another agent, or the same agent under another policy, has its own cell.
        assert!(run("b", 0));
        assert!(limiter.check_at("q", "a", rate, at(0)).is_ok());
        // After a quiet period the full burst is back, not more.
        assert!(run("a", 5000) && run("a", 5000) && run("a", 5000));
        assert!(!run("a", 5000));
    }

    #[test]
    fn concurrent_callers_never_exceed_the_limit() {
        let limiter = Arc::new(RateLimiter::default());
        let rate = Rate::parse("100/h").unwrap();
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if limiter.check("p", "a", rate).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
    }
}
