//! MCP sessions: which agent opened which `Mcp-Session-Id` on which route.
//!
//! The upstream issues the session id in its answer to `initialize`; the
//! gateway binds it to the agent that initialized it. A later message with
//! that id is served only for the same agent on the same route, so a leaked
//! session id is useless to another agent.
//!
//! [`Sessions::end_where`] is the one way sessions end for containment: when
//! an agent is revoked (at the next snapshot) or quarantined (by behavioral
//! analytics), its sessions are forgotten, so its next message finds no
//! session. [`super::McpState::end_sessions`] also stops the stdio processes
//! of the ended sessions. Its open event streams (a GET stream, or a POST's
//! answer still streaming) are cut at once by the pipeline's watch on every
//! answer (`crate::liveness`), not here.
//!
//! A `std::sync::Mutex` guards the map: it is held for a hash lookup or
//! insert, never across IO.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most sessions remembered. When the table is full, sessions idle for
/// longer than [`IDLE_LIMIT`] are forgotten; if none is, the new session is
/// refused (503 `unavailable`).
pub const MAX_SESSIONS: usize = 100_000;
/// How long an unused session is kept once the table is full.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone)]
struct Binding {
    agent: String,
    route: String,
    last_used: Instant,
}

/// A session that was dropped and should be ended upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The session id.
    pub id: String,
    /// Its route.
    pub route: String,
}

/// The live MCP sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Binding>>,
}

impl Sessions {
    /// Binds a session the upstream just issued. False when the table is full
    /// or the id is already bound to someone else.
    pub fn bind(&self, id: &str, agent: &str, route: &str) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        if let Some(existing) = map.get(id) {
            return existing.agent == agent && existing.route == route;
        }
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, b| b.last_used.elapsed() < IDLE_LIMIT);
            if map.len() >= MAX_SESSIONS {
                return false;
            }
        }
        map.insert(
            id.to_string(),
            Binding {
                agent: agent.to_string(),
                route: route.to_string(),
                last_used: Instant::now(),
            },
        );
        true
    }

    /// Whether `id` is a live session of `agent` on `route`.
    pub fn owns(&self, id: &str, agent: &str, route: &str) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        match map.get_mut(id) {
            Some(b) if b.agent == agent && b.route == route => {
                b.last_used = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Forgets a session (ended by the client).
    pub fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }

    /// Ends the sessions of every (agent, route) `keep` rejects: they are
    /// forgotten (their ids are refused from now on) and returned.
    pub fn end_where(&self, keep: impl Fn(&str, &str) -> bool) -> Vec<Ended> {
        let mut ended = Vec::new();
        if let Ok(mut map) = self.map.lock() {
            map.retain(|id, b| {
                let kept = keep(&b.agent, &b.route);
                if !kept {
                    ended.push(Ended {
                        id: id.clone(),
                        route: b.route.clone(),
                    });
                }
                kept
            });
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_belong_to_one_agent_and_route() {
        let s = Sessions::default();
        assert!(s.bind("s1", "a", "files"));
        assert!(
            s.bind("s1", "a", "files"),
            "rebinding the same owner is fine"
        );
        assert!(
            !s.bind("s1", "b", "files"),
            "another agent cannot take it over"
        );
        assert!(s.owns("s1", "a", "files"));
        assert!(!s.owns("s1", "b", "files"));
        assert!(!s.owns("s1", "a", "other"));
        assert!(!s.owns("s2", "a", "files"));
        assert!(s.bind("s2", "b", "files"));
        let ended = s.end_where(|agent, _| agent != "a");
        assert_eq!(
            ended,
            [Ended {
                id: "s1".into(),
                route: "files".into()
            }]
        );
        assert!(!s.owns("s1", "a", "files"));
        assert!(s.owns("s2", "b", "files"));
        s.end("s2");
        assert!(!s.owns("s2", "b", "files"));
    }
}
