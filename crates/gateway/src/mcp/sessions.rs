//! MCP sessions: which agent opened which `Mcp-Session-Id` on which route,
//! and the event streams open for them.
//!
//! The upstream issues the session id in its answer to `initialize`; the
//! gateway binds it to the agent that initialized it. A later message with
//! that id is served only for the same agent on the same route, so a leaked
//! session id is useless to another agent.
//!
//! [`Sessions::end_where`] is the one way sessions end for containment: when
//! an agent is revoked (at the next snapshot) or quarantined (by behavioral
//! analytics), its sessions are forgotten, so its next message finds no
//! session, and each of its open event streams (a GET stream, or a POST's
//! answer still streaming) is cut at once through its [`Cut`], instead of at
//! its next event, which may never come. [`super::McpState::end_sessions`]
//! also stops the stdio processes of the ended sessions.
//!
//! `std::sync::Mutex`es guard the maps: each is held for a hash lookup or
//! insert, never across IO, and never both at once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Most sessions remembered. When the table is full, sessions idle for
/// longer than [`IDLE_LIMIT`] are forgotten; if none is, the new session is
/// refused (503 `unavailable`).
pub const MAX_SESSIONS: usize = 100_000;
/// How long an unused session is kept once the table is full.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Streams registered between two sweeps of the ones that already ended.
const SWEEP_EVERY: usize = 1024;

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

/// An open event stream's end signal: fired when its agent's sessions on
/// its route are ended.
#[derive(Debug)]
pub struct Cut(Option<oneshot::Receiver<()>>);

impl Cut {
    /// A signal that never fires (a stream no containment can reach).
    pub fn never() -> Cut {
        Cut(None)
    }

    /// True once the stream must end. Registers the task's waker, so the
    /// stream is woken the moment it is cut.
    pub fn poll_cut(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(rx) = &mut self.0 else {
            return false;
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(Ok(())) => true,
            // The table is gone (the gateway is stopping): nothing to wait for.
            Poll::Ready(Err(_)) => {
                self.0 = None;
                false
            }
            Poll::Pending => false,
        }
    }
}

/// Open streams per agent: (route, the stream's signal).
#[derive(Debug, Default)]
struct Streams {
    by_agent: HashMap<String, Vec<(String, oneshot::Sender<()>)>>,
    since_sweep: usize,
}

/// The live MCP sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Binding>>,
    streams: Mutex<Streams>,
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

    /// Registers an event stream `agent` opened on `route`; the returned
    /// signal fires when [`Sessions::end_where`] ends them. A stream ended
    /// by its client is swept later (its signal's receiver is gone).
    pub fn watch(&self, agent: &str, route: &str) -> Cut {
        let (tx, rx) = oneshot::channel();
        let Ok(mut streams) = self.streams.lock() else {
            // A poisoned table could never cut this stream: end it now.
            let _ = tx.send(());
            return Cut(Some(rx));
        };
        streams.since_sweep += 1;
        if streams.since_sweep >= SWEEP_EVERY {
            streams.since_sweep = 0;
            streams.by_agent.retain(|_, list| {
                list.retain(|(_, tx)| !tx.is_closed());
                !list.is_empty()
            });
        }
        let list = streams.by_agent.entry(agent.to_string()).or_default();
        list.retain(|(_, tx)| !tx.is_closed());
        list.push((route.to_string(), tx));
        Cut(Some(rx))
    }

    /// Ends the sessions and open streams of every (agent, route) `keep`
    /// rejects: the sessions are forgotten (their ids are refused from now
    /// on) and returned, the streams are cut at once.
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
        if let Ok(mut streams) = self.streams.lock() {
            streams.by_agent.retain(|agent, list| {
                let mut i = 0;
                while i < list.len() {
                    if keep(agent, &list[i].0) {
                        i += 1;
                    } else {
                        let (_, tx) = list.swap_remove(i);
                        // The stream may have ended on its own meanwhile.
                        let _ = tx.send(());
                    }
                }
                !list.is_empty()
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

    #[test]
    fn ending_sessions_cuts_their_open_streams_at_once() {
        let s = Sessions::default();
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        let mut a_files = s.watch("a", "files");
        let mut a_allowed = s.watch("a", "health");
        let mut b_files = s.watch("b", "files");
        let mut gone = s.watch("a", "files");
        drop(std::mem::replace(&mut gone, Cut::never()));
        assert!(!a_files.poll_cut(&mut cx));
        // Quarantine of `a`, except on an allow-listed route.
        assert!(s.bind("s1", "a", "files"));
        let ended = s.end_where(|agent, route| agent != "a" || route == "health");
        assert_eq!(ended.len(), 1);
        assert!(a_files.poll_cut(&mut cx), "the stream is cut");
        assert!(!a_allowed.poll_cut(&mut cx));
        assert!(!b_files.poll_cut(&mut cx));
        assert!(!Cut::never().poll_cut(&mut cx));
        // Cut streams are forgotten; the others stay registered.
        let left: usize = s
            .streams
            .lock()
            .unwrap()
            .by_agent
            .values()
            .map(Vec::len)
            .sum();
        assert_eq!(left, 2);
    }

    fn futures_waker() -> std::task::Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        std::task::Waker::from(std::sync::Arc::new(Noop))
    }
}
