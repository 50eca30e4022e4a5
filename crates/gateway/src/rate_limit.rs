//! `@rate("N/s|m|h")`: per-agent rate limits set by policy.
//!
//! A generic cell rate algorithm (GCRA): each (policy, agent) pair keeps one
//! "theoretical arrival time" in an atomic, advanced by compare-and-swap, so
//! admitting a request takes no lock beyond a shard's read lock to find the
//! cell (the write lock only when an agent first meets a policy). Up to `N`
//! requests may come at once; after that they are spaced `period / N` apart.
//! Nothing touches the disk; limits restart empty with the process.
//!
//! In cluster mode (a PostgreSQL store) the cell lives in the database, one
//! for every replica, and a replica leases its tokens in small blocks
//! ([`SharedRates`]): a request spends a leased token without any IO, and
//! waits on one round trip only when its replica holds none (the first
//! request of an agent, or once the lease ran dry faster than the
//! background refill). Precision: each replica holds at most [`block`]
//! unspent tokens (`B`), so with `R` replicas a limit of `N` per period
//! admits at most `N + R·B` in any period (a token leased in one period and
//! spent in the next), and at least `N − R·B` in a burst (tokens leased
//! but not spent yet). `B` is 1 below `N = 128`, so small limits are exact
//! up to the tokens leased ahead; a leased token unspent after one period
//! is dropped (time frees it in the shared cell). A store that does not
//! answer refuses (fail closed), with a one-second retry hint.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use portcullis_policy::Rate;
use portcullis_store::Store;

const SHARDS: usize = 16;

/// Cells by policy id, then agent.
type Shard = HashMap<String, HashMap<String, Arc<Cell>>>;

/// The per-agent limits of every `@rate` policy.
#[derive(Debug)]
pub struct RateLimiter {
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
    shards: [RwLock<Shard>; SHARDS],
    /// Cluster mode: the cells are shared through the store instead.
    shared: Option<SharedRates>,
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
            shared: None,
        }
    }
}

impl RateLimiter {
    /// Limits shared with every replica on `store` (cluster mode).
    pub fn shared(store: Store) -> Self {
        RateLimiter {
            shared: Some(SharedRates {
                store,
                leases: Default::default(),
            }),
            ..Default::default()
        }
    }

    /// Admits one request of `agent` under `policy`'s `rate`, or says how
    /// long to wait: in this process, or in cluster mode for every replica
    /// together (see the module documentation for the precision).
    pub async fn admit(&self, policy: &str, agent: &str, rate: Rate) -> Result<(), Duration> {
        match &self.shared {
            None => self.check(policy, agent, rate),
            Some(shared) => shared.admit(policy, agent, rate).await,
        }
    }

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

/// How many tokens a replica leases at once for a limit of `count`: one for
/// small limits (precise), more for large ones so that a busy agent costs
/// one round trip per block, not per request.
pub fn block(count: u32) -> u32 {
    (count / 64).clamp(1, 64)
}

/// The cells of every replica, leased from the store (cluster mode).
#[derive(Debug)]
struct SharedRates {
    store: Store,
    leases: Mutex<HashMap<String, Arc<Mutex<Lease>>>>,
}

/// The tokens one replica holds of one shared cell.
#[derive(Debug, Default)]
struct Lease {
    /// Leased, not spent.
    tokens: u32,
    /// When they were leased: after one period they are dropped.
    leased_at: Option<Instant>,
    /// The shared cell has no token before this (the store said so).
    blocked_until: Option<Instant>,
    /// A background lease is under way.
    refilling: bool,
}

impl Lease {
    /// Spends one held token; `None` when there is none to spend.
    fn spend(&mut self, now: Instant, per: Duration) -> Option<()> {
        if self
            .leased_at
            .is_some_and(|at| now.saturating_duration_since(at) > per)
        {
            self.tokens = 0;
        }
        self.tokens = self.tokens.checked_sub(1)?;
        Some(())
    }

    /// Adds what the store granted at `now`; on nothing, blocks until the
    /// next token frees.
    fn add(&mut self, granted: &portcullis_store::RateLease, now: Instant) {
        if granted.granted > 0 {
            self.tokens += granted.granted;
            self.leased_at = Some(now);
            self.blocked_until = None;
        } else {
            self.blocked_until = Some(now + Duration::from_micros(granted.wait_us.max(1) as u64));
        }
    }
}

/// A poisoned lease (a panic elsewhere) is still a lease: its counts stay
/// consistent under the lock.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The shared cell's name: policy, agent and rate (a new rate, a new cell).
/// Separated by a character names cannot hold and PostgreSQL text can.
fn shared_key(policy: &str, agent: &str, rate: Rate) -> String {
    format!(
        "{policy}\u{1f}{agent}\u{1f}{}/{}",
        rate.count,
        rate.per.as_secs()
    )
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

fn epoch_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(micros)
        .unwrap_or_default()
}

impl SharedRates {
    async fn admit(&self, policy: &str, agent: &str, rate: Rate) -> Result<(), Duration> {
        let key = shared_key(policy, agent, rate);
        let lease = lock(&self.leases).entry(key.clone()).or_default().clone();
        let now = Instant::now();
        {
            let mut held = lock(&lease);
            if held.spend(now, rate.per).is_some() {
                // The last token spent: lease the next block in the
                // background, so that the next request finds it here.
                if held.tokens == 0 && !held.refilling {
                    held.refilling = true;
                    let (store, lease, key) = (self.store.clone(), lease.clone(), key.clone());
                    tokio::spawn(async move {
                        let granted = lease_from(&store, &key, rate).await;
                        let mut held = lock(&lease);
                        held.refilling = false;
                        if let Ok(granted) = granted {
                            held.add(&granted, Instant::now());
                        }
                    });
                }
                return Ok(());
            }
            if let Some(until) = held.blocked_until
                && until > now
            {
                return Err(until - now);
            }
        }
        // Nothing held: this request waits on one lease.
        match lease_from(&self.store, &key, rate).await {
            Ok(granted) => {
                let mut held = lock(&lease);
                held.add(&granted, Instant::now());
                match granted.granted {
                    0 => Err(Duration::from_micros(granted.wait_us.max(1) as u64)),
                    _ => {
                        held.tokens -= 1;
                        Ok(())
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot lease a shared rate limit; refusing");
                Err(Duration::from_secs(1))
            }
        }
    }
}

async fn lease_from(
    store: &Store,
    key: &str,
    rate: Rate,
) -> Result<portcullis_store::RateLease, portcullis_store::StoreError> {
    let period = micros(rate.per);
    let interval = period / i64::from(rate.count.max(1));
    store
        .lease_rate(key, epoch_micros(), interval, period, block(rate.count))
        .await
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
