//! Throttling of failed second factors (admin TOTP codes) and failed client
//! authentication at the token endpoint (client assertions).
//!
//! Every failure is counted under several keys at once, e.g. the admin named
//! and the source address. For each key:
//!
//! - a principal's first failure is free (a typo); after `f ≥ 2` failures
//!   within the window, its next attempt must wait `backoff · 2^(f-2)`
//!   (capped at [`MAX_BACKOFF`]): exponential back-off;
//! - after `max_failures` failures within the window the key is locked for
//!   `lockout`. A source address is shared by several principals, so it gets
//!   no back-off and locks only after [`SOURCE_FACTOR`] times as many failures.
//!
//! An attempt refused by the throttle is not checked at all, so guessing is
//! bounded by the throttle, not by the server's speed: with the defaults, five
//! codes per admin per 15 minutes. A success clears the key's failures.
//! Everything is in memory and restarts empty with the process (a restart is
//! audited and rare; an attacker cannot cause one through this path).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest back-off between two attempts before a lockout.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A source address locks after this many times `max_failures`.
pub const SOURCE_FACTOR: u32 = 4;
/// Entries kept before expired ones are pruned.
const PRUNE_ABOVE: usize = 10_000;

/// How failures are throttled (`[limits] auth_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptPolicy {
    /// Failures within `window` that lock a principal.
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// The back-off after the first failure; doubled after each further one.
    pub backoff: Duration,
}

impl Default for AttemptPolicy {
    fn default() -> Self {
        AttemptPolicy {
            max_failures: 5,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
            backoff: Duration::from_secs(1),
        }
    }
}

/// A key an attempt is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKey<'a> {
    /// The principal the attempt is for (an admin's name, an agent).
    Principal(&'a str),
    /// The address it came from.
    Source(std::net::IpAddr),
}

impl AttemptKey<'_> {
    fn id(&self, kind: &str) -> String {
        match self {
            AttemptKey::Principal(p) => format!("{kind}\u{0}p\u{0}{p}"),
            AttemptKey::Source(ip) => format!("{kind}\u{0}s\u{0}{ip}"),
        }
    }
}

/// An attempt was refused without being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Seconds until the next attempt may be checked (at least 1).
    pub retry_after: u64,
    /// A lockout (not just back-off) is in force.
    pub locked: bool,
}

/// What a failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// This failure locked a key that was not locked.
    pub locked_now: bool,
    /// Seconds until the next attempt may be checked.
    pub retry_after: u64,
}

#[derive(Debug)]
struct Entry {
    /// Failures within the window, oldest first.
    failures: Vec<Instant>,
    /// No attempt is checked before this.
    not_before: Instant,
    locked: bool,
}

/// Failure counts by kind (`totp`, `client_assertion`) and key.
#[derive(Debug)]
pub struct AttemptThrottle {
    policy: AttemptPolicy,
    entries: Mutex<HashMap<String, Entry>>,
}

fn secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

impl AttemptThrottle {
    /// An empty throttle.
    pub fn new(policy: AttemptPolicy) -> Self {
        AttemptThrottle {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Counts are plain data; a panic elsewhere leaves them usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an attempt of `kind` under `keys` may be checked now.
    pub fn check(&self, kind: &str, keys: &[AttemptKey<'_>]) -> Result<(), Throttled> {
        self.check_at(kind, keys, Instant::now())
    }

    fn check_at(&self, kind: &str, keys: &[AttemptKey<'_>], now: Instant) -> Result<(), Throttled> {
        let mut entries = self.lock();
        let mut refusal: Option<Throttled> = None;
        for key in keys {
            let id = key.id(kind);
            let Some(entry) = entries.get_mut(&id) else {
                continue;
            };
            if now >= entry.not_before && entry.locked {
                // The lockout is over: start afresh.
                entry.locked = false;
                entry.failures.clear();
            }
            if now < entry.not_before {
                let wait = Throttled {
                    retry_after: secs(entry.not_before - now),
                    locked: entry.locked,
                };
                refusal = Some(match refusal {
                    Some(r) if r.retry_after >= wait.retry_after => Throttled {
                        locked: r.locked || wait.locked,
                        ..r
                    },
                    Some(r) => Throttled {
                        locked: r.locked || wait.locked,
                        ..wait
                    },
                    None => wait,
                });
            }
        }
        refusal.map_or(Ok(()), Err)
    }

    /// Counts a failed attempt of `kind` under every key.
    pub fn failure(&self, kind: &str, keys: &[AttemptKey<'_>]) -> Failure {
        self.failure_at(kind, keys, Instant::now())
    }

    fn failure_at(&self, kind: &str, keys: &[AttemptKey<'_>], now: Instant) -> Failure {
        let mut entries = self.lock();
        if entries.len() > PRUNE_ABOVE {
            let window = self.policy.window;
            entries.retain(|_, e| {
                now < e.not_before || e.failures.last().is_some_and(|t| now - *t < window)
            });
        }
        let mut out = Failure {
            locked_now: false,
            retry_after: 0,
        };
        for key in keys {
            let limit = match key {
                AttemptKey::Principal(_) => self.policy.max_failures,
                AttemptKey::Source(_) => self.policy.max_failures.saturating_mul(SOURCE_FACTOR),
            }
            .max(1);
            let entry = entries.entry(key.id(kind)).or_insert_with(|| Entry {
                failures: Vec::new(),
                not_before: now,
                locked: false,
            });
            let window = self.policy.window;
            entry.failures.retain(|t| now - *t < window);
            entry.failures.push(now);
            let n = entry.failures.len() as u32;
            let wait = if n >= limit {
                if !entry.locked {
                    out.locked_now = true;
                }
                entry.locked = true;
                self.policy.lockout
            } else if matches!(key, AttemptKey::Principal(_)) && n >= 2 {
                let doublings = (n - 2).min(16);
                (self.policy.backoff * 2u32.pow(doublings)).min(MAX_BACKOFF)
            } else {
                Duration::ZERO
            };
            entry.not_before = entry.not_before.max(now + wait);
            out.retry_after = out.retry_after.max(secs(entry.not_before - now));
        }
        out
    }

    /// A successful attempt: clears the failures of every key.
    pub fn success(&self, kind: &str, keys: &[AttemptKey<'_>]) {
        let mut entries = self.lock();
        for key in keys {
            entries.remove(&key.id(kind));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> AttemptThrottle {
        throttle_of(3)
    }

    fn throttle_of(max_failures: u32) -> AttemptThrottle {
        AttemptThrottle::new(AttemptPolicy {
            max_failures,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(30),
            backoff: Duration::from_secs(1),
        })
    }

    const ALICE: AttemptKey<'static> = AttemptKey::Principal("alice");

    #[test]
    fn back_off_doubles_then_locks_then_expires() {
        let t = throttle_of(4);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(t.check_at("totp", &[ALICE], at(0)), Ok(()));
        // The first failure is free.
        t.failure_at("totp", &[ALICE], at(0));
        assert_eq!(t.check_at("totp", &[ALICE], at(0)), Ok(()));
        let f = t.failure_at("totp", &[ALICE], at(0));
        assert_eq!((f.locked_now, f.retry_after), (false, 1));
        assert!(t.check_at("totp", &[ALICE], at(0)).is_err());
        assert_eq!(t.check_at("totp", &[ALICE], at(1)), Ok(()));
        let f = t.failure_at("totp", &[ALICE], at(1));
        assert_eq!(f.retry_after, 2);
        assert!(t.check_at("totp", &[ALICE], at(2)).is_err());
        let f = t.failure_at("totp", &[ALICE], at(3));
        assert!(f.locked_now);
        assert_eq!(f.retry_after, 30);
        assert_eq!(
            t.check_at("totp", &[ALICE], at(20)),
            Err(Throttled {
                retry_after: 13,
                locked: true
            })
        );
        // Other kinds and principals are not affected.
        assert_eq!(t.check_at("client_assertion", &[ALICE], at(20)), Ok(()));
        assert_eq!(
            t.check_at("totp", &[AttemptKey::Principal("bob")], at(20)),
            Ok(())
        );
        // After the lockout, a fresh start: the first failure is free again.
        assert_eq!(t.check_at("totp", &[ALICE], at(33)), Ok(()));
        t.failure_at("totp", &[ALICE], at(33));
        assert_eq!(t.check_at("totp", &[ALICE], at(33)), Ok(()));
    }

    #[test]
    fn sources_lock_later_and_success_clears() {
        let t = throttle();
        let source = AttemptKey::Source([10, 0, 0, 1].into());
        let start = Instant::now();
        let mut locked = 0;
        for i in 0..12u64 {
            // A different admin each time: only the source accumulates.
            let name = format!("admin{i}");
            let keys = [AttemptKey::Principal(&name), source];
            if t.failure_at("totp", &keys, start + Duration::from_secs(i * 100))
                .locked_now
            {
                locked = i + 1;
                break;
            }
        }
        // Failures 100 s apart fall out of a 60 s window: never locked.
        assert_eq!(locked, 0);
        for i in 0..12u32 {
            let now = start + Duration::from_secs(2_000) + Duration::from_millis(u64::from(i));
            if t.failure_at("totp", &[source], now).locked_now {
                locked = u64::from(i) + 1;
                break;
            }
        }
        assert_eq!(locked, 12);
        t.success("totp", &[source]);
        assert_eq!(
            t.check_at("totp", &[source], start + Duration::from_secs(2_001)),
            Ok(())
        );
    }
}
