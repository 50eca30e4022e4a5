//! Single-use identifiers (`jti` of client assertions and DPoP proofs): each is
//! remembered until the credential it came with can no longer be accepted, so a
//! second use is refused. In memory, behind one short lock that is never held
//! across IO; expired entries are swept when the cache grows.

use std::collections::HashMap;
use std::sync::Mutex;

/// A replay cache bounded by `capacity` live entries.
#[derive(Debug)]
pub struct ReplayCache {
    seen: Mutex<HashMap<String, i64>>,
    capacity: usize,
}

/// Why a `jti` was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRefusal {
    /// Seen before and not yet expired.
    Replayed,
    /// The cache is full of live entries: refused rather than forgotten.
    Full,
}

impl ReplayCache {
    /// A cache holding at most `capacity` unexpired entries.
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            seen: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Records `key` as used until `expires` (epoch seconds). Refuses a key
    /// already recorded and still live.
    pub fn check_and_insert(&self, key: &str, expires: i64, now: i64) -> Result<(), ReplayRefusal> {
        // A poisoned lock only means another thread panicked mid-insert; the
        // map itself is still consistent.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&until) = seen.get(key)
            && until >= now
        {
            return Err(ReplayRefusal::Replayed);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, until| *until >= now);
            if seen.len() >= self.capacity {
                return Err(ReplayRefusal::Full);
            }
        }
        seen.insert(key.to_string(), expires);
        Ok(())
    }

    /// Live entries (for tests and metrics).
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_refused_until_expiry_and_bounded() {
        let c = ReplayCache::new(2);
        assert_eq!(c.check_and_insert("a", 10, 0), Ok(()));
        assert_eq!(c.check_and_insert("a", 10, 5), Err(ReplayRefusal::Replayed));
        assert_eq!(c.check_and_insert("b", 10, 5), Ok(()));
        assert_eq!(c.check_and_insert("c", 10, 5), Err(ReplayRefusal::Full));
        // After expiry the entries are swept and the key is free again.
        assert_eq!(c.check_and_insert("c", 20, 11), Ok(()));
        assert_eq!(c.check_and_insert("a", 20, 11), Ok(()));
        assert_eq!(c.len(), 2);
    }
}
