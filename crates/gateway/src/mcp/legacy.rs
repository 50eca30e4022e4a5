//! The HTTP+SSE transport of MCP 2024-11-05 (deprecated since 2025-03-26,
//! still served by older servers), behind a `kind = "mcp"` route.
//!
//! A legacy client opens the route's endpoint with `GET` and no session; the
//! server answers an event stream whose first event, `endpoint`, names the
//! URL the client must POST its messages to (`/messages/?session_id=…` on
//! the server's origin). That URL means nothing to the client behind the
//! gateway, so the event is rewritten to the same path under the route's
//! prefix (`/mcp/legacy/messages/?session_id=…`), and the announcement is
//! remembered: a POST to that path is served only for the agent whose
//! stream announced it, on the same route, and only while that stream is
//! open. Its messages are decided one by one like any POST (the one
//! decision path) and go to the announced path on the server's origin; the
//! server answers them on the stream, where `tools/list` results are
//! filtered and the content guard reads them. What the gateway refuses is
//! answered on the stream too, where the client waits for it.
//!
//! An endpoint on another origin than the route's upstream is refused: the
//! stream ends (a server must not send the agent's messages elsewhere).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::mpsc;

/// Messages the gateway may queue for one stream before it refuses more
/// (the client reads its stream; a stuck one gets no more refusals).
const INJECT_QUEUE: usize = 64;

/// Most legacy streams open at once; a new one beyond is refused.
pub const MAX_ENDPOINTS: usize = 10_000;

/// One announced message endpoint.
#[derive(Debug)]
struct Endpoint {
    agent: String,
    route: String,
    /// The path and query on the upstream's origin.
    upstream: String,
    /// Messages the gateway adds to the stream (its refusals).
    inject: mpsc::Sender<Value>,
}

/// The message endpoints announced on open legacy streams, by the path and
/// query the client POSTs to (relative to the route prefix).
#[derive(Debug, Default)]
pub struct LegacyEndpoints {
    map: Mutex<HashMap<(String, String), Endpoint>>,
}

/// Where a POST to an announced endpoint goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The path and query on the upstream's origin.
    pub upstream: String,
    /// The stream's queue, for the gateway's refusals.
    pub inject: mpsc::Sender<Value>,
}

/// Keeps an announcement alive while its stream is; dropping it (the stream
/// ended) forgets the endpoint.
#[derive(Debug)]
pub struct Registration {
    endpoints: Arc<LegacyEndpoints>,
    key: (String, String),
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.endpoints.map.lock() {
            map.remove(&self.key);
        }
    }
}

/// The queue end a stream reads the gateway's messages from.
pub type Injected = mpsc::Receiver<Value>;

impl LegacyEndpoints {
    /// The endpoint `(route, rest)` if `agent` may POST to it.
    pub fn target(&self, agent: &str, route: &str, rest: &str) -> Option<Target> {
        let map = self.map.lock().ok()?;
        let e = map.get(&(route.to_string(), rest.to_string()))?;
        (e.agent == agent).then(|| Target {
            upstream: e.upstream.clone(),
            inject: e.inject.clone(),
        })
    }

    /// Forgets the endpoints of the streams whose (agent, route) `keep`
    /// rejects (revocation, quarantine); their streams are cut by the
    /// pipeline's watch.
    pub fn end_where(&self, keep: impl Fn(&str, &str) -> bool) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, e| keep(&e.agent, &e.route));
        }
    }

    fn announce(
        self: &Arc<Self>,
        agent: &str,
        route: &str,
        rest: String,
        upstream: String,
        inject: mpsc::Sender<Value>,
    ) -> Option<Registration> {
        let mut map = self.map.lock().ok()?;
        let key = (route.to_string(), rest);
        if map.len() >= MAX_ENDPOINTS || map.contains_key(&key) {
            return None;
        }
        map.insert(
            key.clone(),
            Endpoint {
                agent: agent.to_string(),
                route: route.to_string(),
                upstream,
                inject,
            },
        );
        Some(Registration {
            endpoints: self.clone(),
            key,
        })
    }
}

/// The `endpoint` event's rewrite for one stream: the server's URL to the
/// gateway's, remembered for `agent` on `route`.
pub struct Announcer {
    /// The announced endpoints.
    pub endpoints: Arc<LegacyEndpoints>,
    /// The agent whose stream it is.
    pub agent: String,
    /// The route's name.
    pub route: String,
    /// The route's path prefix (no trailing slash).
    pub prefix: String,
    /// The path the stream was opened on upstream (a relative endpoint is
    /// resolved against it).
    pub stream_path: String,
    /// The upstream's `scheme://authority`, the only origin allowed.
    pub origin: String,
    /// The stream's queue, handed to each POST to the endpoint.
    pub inject: mpsc::Sender<Value>,
    /// Set once the endpoint is announced; dropped with the stream.
    pub registration: Mutex<Option<Registration>>,
}

impl Announcer {
    /// A new announcer and the receiving end of its stream's queue.
    pub fn new(
        endpoints: Arc<LegacyEndpoints>,
        (agent, route): (&str, &str),
        prefix: &str,
        stream_path: &str,
        origin: String,
    ) -> (Self, Injected) {
        let (inject, injected) = mpsc::channel(INJECT_QUEUE);
        (
            Announcer {
                endpoints,
                agent: agent.to_string(),
                route: route.to_string(),
                prefix: prefix.trim_end_matches('/').to_string(),
                stream_path: stream_path.to_string(),
                origin,
                inject,
                registration: Mutex::new(None),
            },
            injected,
        )
    }

    /// The client's endpoint for the server's `data`, or `None` (the stream
    /// ends): an endpoint on another origin, a malformed one, or a second
    /// announcement.
    pub fn rewrite(&self, data: &str) -> Option<String> {
        let upstream = same_origin_path(data.trim(), &self.origin, &self.stream_path)?;
        let (path, query) = upstream
            .split_once('?')
            .map_or((upstream.as_str(), None), |(p, q)| (p, Some(q)));
        let rest = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let mut slot = self.registration.lock().ok()?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(self.endpoints.announce(
            &self.agent,
            &self.route,
            rest.clone(),
            upstream.clone(),
            self.inject.clone(),
        )?);
        Some(format!("{}{rest}", self.prefix))
    }
}

/// The path and query an endpoint reference names on `origin`: an absolute
/// path, a path relative to `base` (the stream's path), or an absolute URL
/// on `origin` itself. `None` for another origin, a scheme-relative URL, a
/// fragment, or characters no request target may hold.
fn same_origin_path(reference: &str, origin: &str, base: &str) -> Option<String> {
    if reference.is_empty()
        || reference.contains('#')
        || reference
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
    {
        return None;
    }
    let path = if let Some(rest) = reference.strip_prefix(origin) {
        match rest.chars().next() {
            None => "/".to_string(),
            Some('/') | Some('?') => rest.to_string(),
            _ => return None,
        }
    } else if reference.starts_with("//") || reference.contains("://") {
        return None;
    } else if reference.starts_with('/') {
        reference.to_string()
    } else if reference.starts_with('?') {
        format!("{base}{reference}")
    } else {
        // Relative to the stream's directory.
        let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{reference}", if dir.is_empty() { "/" } else { dir })
    };
    // No dot segments: the server's message path is taken as is, never
    // climbed out of.
    let only_path = path.split('?').next().unwrap_or("");
    if only_path
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        return None;
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(reference: &str, expect: Option<&str>) {
        assert_eq!(
            same_origin_path(reference, "http://127.0.0.1:9000", "/sse").as_deref(),
            expect,
            "{reference}"
        );
    }

    #[test]
    fn only_endpoints_on_the_upstream_origin_are_taken() {
        check(
            "/messages/?session_id=abc",
            Some("/messages/?session_id=abc"),
        );
        check(
            "http://127.0.0.1:9000/messages/?session_id=abc",
            Some("/messages/?session_id=abc"),
        );
        check("message?sessionId=1", Some("/message?sessionId=1"));
        check("?sessionId=1", Some("/sse?sessionId=1"));
        check("http://127.0.0.1:90001/messages/", None);
        check("http://evil.example/messages/", None);
        check("//evil.example/messages/", None);
        check("/messages/../admin", None);
        check("/messages/\r\nX: y", None);
        check("", None);
    }

    #[tokio::test]
    async fn an_endpoint_serves_its_agent_while_its_stream_is_open() {
        let endpoints = Arc::new(LegacyEndpoints::default());
        let (announcer, _rx) = Announcer::new(
            endpoints.clone(),
            ("bot", "legacy"),
            "/mcp/legacy/",
            "/sse",
            "http://127.0.0.1:9000".into(),
        );
        assert_eq!(
            announcer.rewrite("/messages/?session_id=abc").as_deref(),
            Some("/mcp/legacy/messages/?session_id=abc")
        );
        // Announced once per stream.
        assert_eq!(announcer.rewrite("/messages/?session_id=other"), None);
        let target = endpoints
            .target("bot", "legacy", "/messages/?session_id=abc")
            .unwrap();
        assert_eq!(target.upstream, "/messages/?session_id=abc");
        assert!(
            endpoints
                .target("eve", "legacy", "/messages/?session_id=abc")
                .is_none()
        );
        assert!(
            endpoints
                .target("bot", "other", "/messages/?session_id=abc")
                .is_none()
        );
        drop(announcer);
        assert!(
            endpoints
                .target("bot", "legacy", "/messages/?session_id=abc")
                .is_none()
        );
    }
}
