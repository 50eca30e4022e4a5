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

/// A capped map of context-free decisions.
pub(crate) struct DecisionMemo<K> {
    map: RwLock<HashMap<K, Decision>>,
}

impl<K: Hash + Eq> DecisionMemo<K> {
    pub(crate) fn new() -> Self {
        DecisionMemo {
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The remembered decision for `key`, or `decide()`'s, remembered when
    /// there is a key and room. No key: always decided.
    pub(crate) fn get_or_decide(
        &self,
        key: Option<K>,
        decide: impl FnOnce() -> Decision,
    ) -> Decision {
        if let Some(key) = &key
            && let Some(d) = self.map.read().ok().and_then(|m| m.get(key).cloned())
        {
            return d;
        }
        let decision = decide();
        if let Some(key) = key
            && let Ok(mut map) = self.map.write()
            && map.len() < MEMO_CAPACITY
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
