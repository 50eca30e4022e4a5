//! When each agent last authenticated, for `agent list`. The request path
//! stores one atomic per agent (no lock); the map itself is replaced only
//! when agents change. At start it is seeded from the audit log's recent
//! records, so it survives restarts approximately (records older than the
//! seeded window are not consulted).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwap;
use portcullis_store::{Store, StoreError};

/// How many recent audit records the start-up seed reads.
const SEED_WINDOW: u32 = 200_000;

/// Last authentication time per agent (epoch seconds, 0 = never).
#[derive(Debug, Default)]
pub struct LastSeen {
    agents: ArcSwap<HashMap<String, Arc<AtomicI64>>>,
}

impl LastSeen {
    /// Notes that `agent` authenticated at `now`.
    pub fn touch(&self, agent: &str, now: i64) {
        if let Some(at) = self.agents.load().get(agent) {
            at.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// When `agent` was last seen (0 = never).
    pub fn get(&self, agent: &str) -> i64 {
        self.agents
            .load()
            .get(agent)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Keeps exactly `names`, carrying over what is known.
    pub fn sync<'a>(&self, names: impl Iterator<Item = &'a String>) {
        let old = self.agents.load();
        let map = names
            .map(|n| {
                (
                    n.clone(),
                    old.get(n)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(AtomicI64::new(0))),
                )
            })
            .collect();
        self.agents.store(Arc::new(map));
    }

    /// Seeds the times from the audit log's recent records.
    pub async fn seed(&self, store: &Store) -> Result<(), StoreError> {
        for (agent, at) in store.last_seen(SEED_WINDOW).await? {
            self.touch(&agent, at);
        }
        Ok(())
    }
}
