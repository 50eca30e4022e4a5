//! The risk board: each agent's current risk score and grade, published by
//! the analytics task and read by the request path without a lock.
//!
//! The map of agents is an `ArcSwap` (copy on write, only when an agent is
//! seen for the first time); each entry is a few atomics the task updates in
//! place. A request does one map lookup and two atomic loads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use portcullis_analytics::Grade;

/// One agent's published state.
#[derive(Debug, Default)]
pub struct AgentRisk {
    /// `f32` bits of the risk score.
    risk: AtomicU32,
    grade: AtomicU8,
    /// Throttle counter: minute number in the high 32 bits, requests in the low.
    window: AtomicU64,
}

impl AgentRisk {
    /// The risk score, 0.0–1.0.
    pub fn risk(&self) -> f32 {
        f32::from_bits(self.risk.load(Ordering::Relaxed))
    }

    /// The grade in force.
    pub fn grade(&self) -> Grade {
        grade_from(self.grade.load(Ordering::Relaxed))
    }

    /// Counts a request against the per-minute budget; false when over it.
    pub fn take(&self, minute: u32, per_minute: u32) -> bool {
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (m, n) = ((current >> 32) as u32, current as u32);
            let next = if m == minute {
                if n >= per_minute {
                    return false;
                }
                current + 1
            } else {
                (u64::from(minute) << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

fn grade_from(v: u8) -> Grade {
    match v {
        1 => Grade::Alert,
        2 => Grade::ApproveWrites,
        3 => Grade::Throttle,
        4 => Grade::ReadOnly,
        5 => Grade::Quarantine,
        _ => Grade::Normal,
    }
}

fn grade_to(g: Grade) -> u8 {
    match g {
        Grade::Normal => 0,
        Grade::Alert => 1,
        Grade::ApproveWrites => 2,
        Grade::Throttle => 3,
        Grade::ReadOnly => 4,
        Grade::Quarantine => 5,
    }
}

/// Every agent's published risk.
#[derive(Debug, Default)]
pub struct RiskBoard {
    agents: ArcSwap<HashMap<String, Arc<AgentRisk>>>,
    /// Serializes inserts (the task, and admin releases) so none is lost.
    insert: std::sync::Mutex<()>,
}

impl RiskBoard {
    /// The agent's entry, if it has one.
    pub fn get(&self, agent: &str) -> Option<Arc<AgentRisk>> {
        self.agents.load().get(agent).cloned()
    }

    /// The agent's risk and grade (0.0 and normal when unknown).
    pub fn risk(&self, agent: &str) -> (f32, Grade) {
        match self.agents.load().get(agent) {
            Some(e) => (e.risk(), e.grade()),
            None => (0.0, Grade::Normal),
        }
    }

    /// Publishes an agent's risk and grade.
    pub fn publish(&self, agent: &str, risk: f32, grade: Grade) {
        let entry = match self.agents.load().get(agent) {
            Some(e) => e.clone(),
            None => self.insert(agent),
        };
        entry.risk.store(risk.to_bits(), Ordering::Relaxed);
        entry.grade.store(grade_to(grade), Ordering::Relaxed);
    }

    /// Drops the entries of `agents` (their models left memory; an agent
    /// without an entry reads as risk 0 at grade normal). Entries at
    /// another grade are kept: a quarantine or a throttle must not lapse
    /// because the model was dropped.
    pub fn remove(&self, agents: &[String]) {
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.agents.load();
        if !agents
            .iter()
            .any(|a| current.get(a).is_some_and(|e| e.grade() == Grade::Normal))
        {
            return;
        }
        let mut next = HashMap::clone(&current);
        for agent in agents {
            if next.get(agent).is_some_and(|e| e.grade() == Grade::Normal) {
                next.remove(agent);
            }
        }
        self.agents.store(Arc::new(next));
    }

    /// Number of agents with an entry.
    pub fn len(&self) -> usize {
        self.agents.load().len()
    }

    /// Whether no agent has an entry.
    pub fn is_empty(&self) -> bool {
        self.agents.load().is_empty()
    }

    fn insert(&self, agent: &str) -> Arc<AgentRisk> {
        // Not on the request path: only the analytics task and admin calls insert.
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = self.agents.load().get(agent) {
            return e.clone();
        }
        let entry = Arc::new(AgentRisk::default());
        let mut next = HashMap::clone(&self.agents.load());
        next.insert(agent.to_string(), entry.clone());
        self.agents.store(Arc::new(next));
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_risk_is_read_back_and_throttle_counts_per_minute() {
        let board = RiskBoard::default();
        assert_eq!(board.risk("bot"), (0.0, Grade::Normal));
        board.publish("bot", 0.75, Grade::Throttle);
        assert_eq!(board.risk("bot"), (0.75, Grade::Throttle));
        // Every grade survives the round trip through the board's byte.
        for grade in [
            Grade::Normal,
            Grade::Alert,
            Grade::ApproveWrites,
            Grade::Throttle,
            Grade::ReadOnly,
            Grade::Quarantine,
        ] {
            board.publish("bot", 0.5, grade);
            assert_eq!(board.risk("bot").1, grade);
        }
        let e = board.get("bot").expect("entry");
        assert!(e.take(7, 2));
        assert!(e.take(7, 2));
        assert!(!e.take(7, 2));
        assert!(e.take(8, 2), "a new minute starts a new budget");
        // Dropped only at grade normal.
        board.publish("calm", 0.0, Grade::Normal);
        board.publish("bot", 1.0, Grade::Quarantine);
        board.remove(&["calm".into(), "bot".into()]);
        assert!(board.get("calm").is_none());
        assert_eq!(board.risk("bot").1, Grade::Quarantine);
        assert_eq!(board.len(), 1);
    }
}
