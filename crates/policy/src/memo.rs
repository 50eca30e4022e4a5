//! Decisions that depend only on who, what and which resource, remembered for
//! one snapshot. A decision is memoized only when none of its candidate
//! policies reads `context` (the caller decides and passes no key otherwise).
//! The map is capped, so an attacker cycling through names cannot grow it
//! without bound; past the cap decisions are simply computed.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

use portcullis_core::Decision;

/// Most decisions remembered per snapshot.
const MEMO_CAPACITY: usize = 65_536;

/// A capped map of context-free decisions (or, with `V`, of anything else
/// that depends only on the key within one snapshot).
pub(crate) struct DecisionMemo<K, V = Decision> {
    map: RwLock<HashMap<K, V>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> DecisionMemo<K, V> {
    pub(crate) fn new() -> Self {
        Self::with_capacity(MEMO_CAPACITY)
    }

    /// A memo of at most `capacity` entries (for values larger than a decision).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        DecisionMemo {
            map: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    /// The remembered decision for `key`, or `decide()`'s, remembered when
    /// there is a key and room. No key: always decided.
    pub(crate) fn get_or_decide(&self, key: Option<K>, decide: impl FnOnce() -> V) -> V {
        if let Some(key) = &key
            && let Some(d) = self.map.read().ok().and_then(|m| m.get(key).cloned())
        {
            return d;
        }
        let decision = decide();
        if let Some(key) = key
            && let Ok(mut map) = self.map.write()
            && map.len() < self.capacity
        {
            map.insert(key, decision.clone());
        }
        decision
    }

    /// How many decisions are remembered (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or_default()
    }
}
