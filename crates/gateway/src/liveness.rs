//! Long-lived response streams, re-authorized while they stream.
//!
//! A request is authorized once, when it arrives; a streamed answer (a slow
//! chunked download, an LLM completion over server-sent events) may then run
//! for minutes. [`watch`] wraps such an answer so that it ends within a
//! second of its caller losing the right to it: the agent or its certificate
//! revoked, the access token revoked, the delegating user disabled, or the
//! agent quarantined by behavioral analytics.
//!
//! Two mechanisms, one for speed and one for certainty:
//! - **Signal.** A streaming body registers in [`LiveStreams`] under who
//!   holds it ([`Holder`]: agent, route, certificate serial, token `jti`,
//!   delegating user). Whatever changes those facts — `Gateway::reload`
//!   (agent and certificate revocation), `Gateway::reload_revocations`
//!   (token revocation, user disable), the analytics quarantine hook —
//!   calls [`LiveStreams::cut_where`], which wakes each affected body at once.
//! - **Backstop.** Each registered body also re-checks its holder against
//!   the current state once per [`RECHECK_EVERY`], so a change that reaches
//!   the gateway by any other path (or a body the full table could not take)
//!   still ends within that time. The check is a few lock-free loads.
//!
//! A body registers only once it turns out to be a stream: when the
//! upstream makes it wait, or after its second data frame. A short answer
//! that goes out in one frame (then its end) costs no registration and no
//! timer. The body checks its holder right after registering, so a
//! revocation between authorization and registration is not missed. Its
//! entry leaves the table when the body is dropped, however it ends; the
//! table holds at most [`MAX_STREAMS`].
//!
//! How a cut stream ends: an event stream (`text/event-stream`, no fixed
//! length) that stands between two events gets a last event
//! `data: {"error":{"code":"stream_revoked",…}}` (what OpenAI-compatible
//! clients raise as an API error) and ends cleanly; on an MCP route it just
//! ends cleanly between events (a non-JSON-RPC event would confuse MCP
//! clients, and a closed stream is what they expect). Any other body, and
//! an event stream cut in the middle of an event, ends with an error, so
//! the client sees a truncated response (HTTP/1.1: the connection closes
//! without the last chunk; HTTP/2: the stream is reset), never a
//! complete-looking one. The audit record, completed when the body ends,
//! keeps `outcome: allow` (the request was allowed) with
//! `error_code: "stream_revoked"`.
//!
//! A body is only polled while the client reads: bytes already in the
//! socket buffers still reach a client that reads slowly after a cut.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use portcullis_core::ErrorCode;
use tokio::sync::oneshot;

use crate::body::{BodyMeter, BoxError};
use crate::config::{RouteConfig, RouteKind};
use crate::directory::AgentDirectory;
use crate::pipeline::authenticate::Identity;
use crate::respond::ResponseBody;
use crate::revocation::Revocations;
use crate::state::Gateway;

/// Most streams registered at once. A stream that finds the table full is
/// not refused: it still ends by its own once-a-second check.
pub const MAX_STREAMS: usize = 100_000;

/// How often a registered stream re-checks its holder (the backstop).
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a stream was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// The agent, or the certificate the request came with, was revoked.
    AgentRevoked,
    /// The access token the request came with was revoked.
    TokenRevoked,
    /// The user the request's delegated token acts for was disabled.
    UserDisabled,
    /// Behavioral analytics quarantined the agent (and the route is not on
    /// the quarantine allow-list).
    Quarantined,
}

impl CutReason {
    /// Why, in words, for the log and the client's last event.
    pub fn describe(self) -> &'static str {
        match self {
            CutReason::AgentRevoked => "its agent or certificate was revoked",
            CutReason::TokenRevoked => "its access token was revoked",
            CutReason::UserDisabled => "the user its token acts for was disabled",
            CutReason::Quarantined => "its agent was quarantined",
        }
    }
}

/// Who holds a stream: everything a revocation can name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// The agent.
    pub agent: String,
    /// The route the stream is on (quarantine spares its allow-list).
    pub route: String,
    /// The client certificate's serial; empty for a token.
    pub serial: String,
    /// The access token's `jti`; empty for a certificate.
    pub jti: String,
    /// The user a delegated token acts for.
    pub user: Option<String>,
}

impl Holder {
    /// The holder of a stream `identity` opened on `route`.
    pub fn of(identity: &Identity, route: &str) -> Holder {
        Holder {
            agent: identity.agent.clone(),
            route: route.to_string(),
            serial: identity.serial.clone(),
            jti: identity.jti.clone(),
            user: identity.delegated.as_ref().map(|u| u.sub.clone()),
        }
    }
}

/// Whether `holder` may still receive its stream, by the current directory,
/// revocation lists and risk board: `None` when it may, else why not.
pub fn verdict(
    holder: &Holder,
    directory: &AgentDirectory,
    revocations: &Revocations,
    analytics: Option<&crate::analytics::Analytics>,
) -> Option<CutReason> {
    let live = if holder.serial.is_empty() {
        directory.check_agent(&holder.agent).is_ok()
    } else {
        directory.check(&holder.agent, &holder.serial).is_ok()
    };
    if !live {
        return Some(CutReason::AgentRevoked);
    }
    if !holder.jti.is_empty() && revocations.token_revoked(&holder.jti) {
        return Some(CutReason::TokenRevoked);
    }
    if let Some(user) = &holder.user
        && revocations.user_disabled(user)
    {
        return Some(CutReason::UserDisabled);
    }
    if analytics.is_some_and(|a| a.shuts_out(&holder.agent, &holder.route)) {
        return Some(CutReason::Quarantined);
    }
    None
}

/// One registered stream: who holds it, and how to wake it.
#[derive(Debug)]
struct Entry {
    holder: Arc<Holder>,
    cut: oneshot::Sender<CutReason>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    entries: HashMap<u64, Entry>,
}

/// The streams open right now, by holder. A `std::sync::Mutex` guards the
/// table: it is held for one insert or removal, or for one pass of
/// [`LiveStreams::cut_where`], never across IO.
#[derive(Debug, Default)]
pub struct LiveStreams {
    table: Arc<Mutex<Table>>,
}

/// A stream's place in the table; dropping it takes the entry out.
#[derive(Debug)]
struct Registration {
    table: Weak<Mutex<Table>>,
    id: u64,
    cut: oneshot::Receiver<CutReason>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(table) = self.table.upgrade()
            && let Ok(mut table) = table.lock()
        {
            table.entries.remove(&self.id);
        }
    }
}

impl LiveStreams {
    /// Registers a stream; `None` when the table is full (or poisoned).
    fn register(&self, holder: Arc<Holder>) -> Option<Registration> {
        let mut table = self.table.lock().ok()?;
        if table.entries.len() >= MAX_STREAMS {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let id = table.next;
        table.next += 1;
        table.entries.insert(id, Entry { holder, cut: tx });
        Some(Registration {
            table: Arc::downgrade(&self.table),
            id,
            cut: rx,
        })
    }

    /// Cuts every stream whose holder `judge` gives a reason for; returns
    /// how many. The cut streams leave the table at once.
    pub fn cut_where(&self, judge: impl Fn(&Holder) -> Option<CutReason>) -> usize {
        let Ok(mut table) = self.table.lock() else {
            return 0;
        };
        let doomed: Vec<(u64, CutReason)> = table
            .entries
            .iter()
            .filter_map(|(id, e)| judge(&e.holder).map(|why| (*id, why)))
            .collect();
        for (id, why) in &doomed {
            if let Some(entry) = table.entries.remove(id) {
                // The body may have ended on its own meanwhile.
                let _ = entry.cut.send(*why);
            }
        }
        doomed.len()
    }

    /// How many streams are registered.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.entries.len()).unwrap_or(0)
    }

    /// Whether no stream is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Re-checks a holder against the current state (the backstop).
pub(crate) enum Check {
    /// The gateway's verdict; a gateway that is gone has no verdict to give.
    Gateway(Weak<Gateway>),
    /// A verdict of the test's own.
    #[cfg(test)]
    With(Box<Judge>),
}

/// A verdict function (tests).
#[cfg(test)]
pub(crate) type Judge = dyn Fn(&Holder) -> Option<CutReason> + Send + Sync;

impl Check {
    fn verdict(&self, holder: &Holder) -> Option<CutReason> {
        match self {
            Check::Gateway(gateway) => gateway.upgrade().and_then(|g| g.stream_verdict(holder)),
            #[cfg(test)]
            Check::With(judge) => judge(holder),
        }
    }
}

/// Who holds a stream, built only once the body turns out to be one: most
/// answers end in one frame and never need it (its strings would be
/// allocated for every request).
// The identity is kept by value: the watched body is boxed whole, so a box
// of its own would cost the allocation this saves.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Holding {
    /// What the holder is built from.
    Pending {
        /// The caller.
        identity: Identity,
        /// The route.
        route: Arc<RouteConfig>,
    },
    /// Built.
    Built(Arc<Holder>),
}

/// What a watched body needs besides the body itself.
pub(crate) struct Ticket {
    /// Who holds the stream.
    holding: Holding,
    /// Where it registers for signals.
    streams: Arc<LiveStreams>,
    /// The backstop check.
    check: Check,
    /// The request's meter: a cut is noted there for its audit record.
    meter: Arc<BodyMeter>,
}

impl Ticket {
    /// The holder, built on first use.
    fn holder(&mut self) -> Arc<Holder> {
        let built = match &self.holding {
            Holding::Built(holder) => return holder.clone(),
            Holding::Pending { identity, route } => Arc::new(Holder::of(identity, &route.name)),
        };
        self.holding = Holding::Built(built.clone());
        built
    }
}

/// How a cut body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// An error: the client sees a truncated response.
    Abort,
    /// A last SSE error event, then a clean end (only between two events).
    Event,
    /// A clean end (only between two events): MCP event streams.
    Close,
}

/// Wraps a response so that its body ends when its holder loses the right to
/// it (see the module doc). The one call the pipeline makes, after the last
/// stage that touches the answer.
pub fn watch(
    gateway: &Arc<Gateway>,
    identity: Identity,
    route: &Arc<RouteConfig>,
    meter: &Arc<BodyMeter>,
    response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    let ticket = Ticket {
        holding: Holding::Pending {
            identity,
            route: route.clone(),
        },
        streams: gateway.streams.clone(),
        check: Check::Gateway(Arc::downgrade(gateway)),
        meter: meter.clone(),
    };
    let (parts, body) = response.into_parts();
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
    // An extra event would break a declared length.
    let open_ended =
        !parts.headers.contains_key(header::CONTENT_LENGTH) && body.size_hint().exact().is_none();
    let ending = if sse && open_ended && route.kind == RouteKind::Mcp {
        Ending::Close
    } else if sse && open_ended {
        Ending::Event
    } else {
        Ending::Abort
    };
    Response::from_parts(parts, Watched::new(body, ticket, ending).boxed())
}

/// The cut, as the body reports it to hyper (and the record notes).
#[derive(Debug, thiserror::Error)]
#[error("the stream was ended: {}", .0.describe())]
pub struct StreamCut(pub CutReason);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Passing the inner body through.
    Streaming,
    /// Nothing more to send: the inner body ended, or the stream was cut.
    Done,
}

/// The watch on a registered body: its signal and its backstop timer.
struct Watch {
    registration: Option<Registration>,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The first check is due right after registering.
    check_now: bool,
}

/// A response body that ends when its holder is cut (see [`watch`]).
pub struct Watched {
    inner: ResponseBody,
    ticket: Ticket,
    ending: Ending,
    phase: Phase,
    watch: Option<Watch>,
    /// Data frames passed on so far (up to 2: all that matters).
    frames: u8,
    /// The last two bytes sent, to know whether an SSE stream stands between
    /// two events.
    tail: [u8; 2],
}

impl Watched {
    fn new(inner: ResponseBody, ticket: Ticket, ending: Ending) -> Self {
        Watched {
            inner,
            ticket,
            ending,
            phase: Phase::Streaming,
            watch: None,
            frames: 0,
            tail: *b"\n\n",
        }
    }

    /// Registers the body and arms its timer (once).
    fn start_watch(&mut self) {
        if self.watch.is_some() {
            return;
        }
        let holder = self.ticket.holder();
        let registration = self.ticket.streams.register(holder);
        // Once per process: a full table would otherwise log every stream.
        static WARNED: AtomicBool = AtomicBool::new(false);
        if registration.is_none() && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max = MAX_STREAMS,
                "the live-stream table is full; streams that find it full are re-checked once a second only"
            );
        }
        self.watch = Some(Watch {
            registration,
            timer: Box::pin(tokio::time::sleep(RECHECK_EVERY)),
            check_now: true,
        });
    }

    /// Whether the holder was cut: by signal, or by the check when it is due.
    /// Registers the task's waker with both the signal and the timer.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<CutReason> {
        let watch = self.watch.as_mut()?;
        if let Some(registration) = &mut watch.registration {
            match Pin::new(&mut registration.cut).poll(cx) {
                Poll::Ready(Ok(why)) => return Some(why),
                // The table is gone (the gateway is stopping): the timer stays.
                Poll::Ready(Err(_)) => watch.registration = None,
                Poll::Pending => {}
            }
        }
        let mut due = std::mem::replace(&mut watch.check_now, false);
        while watch.timer.as_mut().poll(cx).is_ready() {
            // Re-armed and polled again, so the next tick wakes this task.
            let next = tokio::time::Instant::now() + RECHECK_EVERY;
            watch.timer.as_mut().reset(next);
            due = true;
        }
        if due {
            let holder = self.ticket.holder();
            self.ticket.check.verdict(&holder)
        } else {
            None
        }
    }

    /// Notes the cut for the record and the log, and ends the body.
    fn cut(&mut self, why: CutReason) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let _ = self
            .ticket
            .meter
            .stream_cut
            .set(ErrorCode::StreamRevoked.as_str());
        let holder = self.ticket.holder();
        tracing::info!(
            agent = %holder.agent,
            route = %holder.route,
            why = why.describe(),
            "open stream cut"
        );
        self.phase = Phase::Done;
        // Nothing more to wait for.
        self.watch = None;
        self.ending(why)
    }

    fn ending(&self, why: CutReason) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let between_events = self.tail == *b"\n\n";
        if self.ending == Ending::Close && between_events {
            return Poll::Ready(None);
        }
        if self.ending == Ending::Event && between_events {
            let event = serde_json::json!({
                "error": {
                    "code": ErrorCode::StreamRevoked.as_str(),
                    "message": format!("the stream was ended: {}", why.describe()),
                    "type": ErrorCode::StreamRevoked.as_str(),
                }
            });
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!(
                "data: {event}\n\n"
            ))))));
        }
        Poll::Ready(Some(Err(Box::new(StreamCut(why)))))
    }

    fn note_sent(&mut self, data: &[u8]) {
        match data {
            [] => {}
            [b] => self.tail = [self.tail[1], *b],
            [.., a, b] => self.tail = [*a, *b],
        }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.phase == Phase::Done {
            return Poll::Ready(None);
        }
        // A body past its second data frame is a stream.
        if this.frames >= 2 {
            this.start_watch();
        }
        if let Some(why) = this.poll_cut(cx) {
            return this.cut(why);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                // A body that makes the client wait is a stream.
                if this.watch.is_none() {
                    this.start_watch();
                    if let Some(why) = this.poll_cut(cx) {
                        return this.cut(why);
                    }
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.phase = Phase::Done;
                this.watch = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.note_sent(data);
                    this.frames = this.frames.saturating_add(1).min(2);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.phase = Phase::Done;
                this.watch = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.phase {
            Phase::Streaming => self.inner.is_end_stream(),
            Phase::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.phase {
            Phase::Streaming => self.inner.size_hint(),
            Phase::Done => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use std::time::Instant;
    use tokio::sync::mpsc;

    fn holder(agent: &str, jti: &str) -> Holder {
        Holder {
            agent: agent.into(),
            route: "files".into(),
            jti: jti.into(),
            ..Holder::default()
        }
    }

    /// A body fed by the test, frame by frame.
    fn fed() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, ResponseBody) {
        let (tx, mut rx) = mpsc::channel(8);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, StreamBody::new(stream).boxed())
    }

    fn watched(
        body: ResponseBody,
        streams: &Arc<LiveStreams>,
        h: Holder,
        ending: Ending,
        dead: Arc<AtomicBool>,
    ) -> (Watched, Arc<BodyMeter>) {
        let meter = Arc::new(BodyMeter::default());
        let ticket = Ticket {
            holding: Holding::Built(Arc::new(h)),
            streams: streams.clone(),
            check: Check::With(Box::new(move |_| {
                dead.load(Ordering::Relaxed)
                    .then_some(CutReason::AgentRevoked)
            })),
            meter: meter.clone(),
        };
        (Watched::new(body, ticket, ending), meter)
    }

    /// Waits (bounded) until `n` streams wait in the table.
    async fn registered(streams: &LiveStreams, n: usize) {
        let started = Instant::now();
        while streams.len() < n {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} of {n} streams registered",
                streams.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads the body to its end: (bytes, whether it ended with an error).
    async fn drain(mut body: Watched) -> (String, bool) {
        let mut out = String::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.push_str(&String::from_utf8_lossy(f.data_ref().unwrap())),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    #[tokio::test]
    async fn a_signal_cuts_a_waiting_stream_at_once_and_only_its_holders() {
        let streams = Arc::new(LiveStreams::default());
        let dead = Arc::new(AtomicBool::new(false));
        let (tx_a, body_a) = fed();
        let (tx_b, body_b) = fed();
        let (a, meter_a) = watched(
            body_a,
            &streams,
            holder("a", "t1"),
            Ending::Abort,
            dead.clone(),
        );
        let (b, meter_b) = watched(body_b, &streams, holder("b", "t2"), Ending::Abort, dead);
        tx_a.send(Ok(Frame::data(Bytes::from("first\n"))))
            .await
            .unwrap();
        let reader_a = tokio::spawn(drain(a));
        let reader_b = tokio::spawn(drain(b));
        registered(&streams, 2).await;
        let started = Instant::now();
        let cut = streams.cut_where(|h| (h.jti == "t1").then_some(CutReason::TokenRevoked));
        assert_eq!(cut, 1);
        // Nothing else could end it: its holder passes every recheck.
        let (out, failed) = tokio::time::timeout(Duration::from_secs(10), reader_a)
            .await
            .expect("cut")
            .unwrap();
        println!("cut {:?} after the signal", started.elapsed());
        assert_eq!((out.as_str(), failed), ("first\n", true));
        assert_eq!(meter_a.stream_cut.get(), Some(&"stream_revoked"));
        // The other stream goes on, and ends normally.
        tx_b.send(Ok(Frame::data(Bytes::from("more"))))
            .await
            .unwrap();
        drop(tx_b);
        let (out, failed) = reader_b.await.unwrap();
        assert_eq!((out.as_str(), failed), ("more", false));
        assert!(meter_b.stream_cut.get().is_none());
        drop(tx_a);
        assert!(streams.is_empty(), "dropped bodies leave the table");
    }

    #[tokio::test]
    async fn the_backstop_check_cuts_within_a_second_without_a_signal() {
        let streams = Arc::new(LiveStreams::default());
        let dead = Arc::new(AtomicBool::new(false));
        let (tx, body) = fed();
        let (w, meter) = watched(body, &streams, holder("a", ""), Ending::Abort, dead.clone());
        let reader = tokio::spawn(drain(w));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!reader.is_finished(), "alive: rechecks pass");
        dead.store(true, Ordering::Relaxed);
        // No signal: only a recheck can end it (each RECHECK_EVERY; the
        // bound leaves room for a loaded machine).
        let started = Instant::now();
        let (out, failed) = tokio::time::timeout(RECHECK_EVERY + Duration::from_secs(10), reader)
            .await
            .expect("the next recheck cuts it")
            .unwrap();
        println!("cut {:?} after the holder died", started.elapsed());
        assert_eq!((out.as_str(), failed), ("", true));
        assert!(meter.stream_cut.get().is_some());
        drop(tx);
    }

    #[tokio::test]
    async fn a_holder_cut_before_it_registered_is_cut_by_its_first_check() {
        let streams = Arc::new(LiveStreams::default());
        let (_tx, body) = fed();
        let (w, _) = watched(
            body,
            &streams,
            holder("a", ""),
            Ending::Abort,
            Arc::new(AtomicBool::new(true)),
        );
        let (out, failed) = tokio::time::timeout(Duration::from_millis(500), drain(w))
            .await
            .unwrap();
        assert_eq!((out.as_str(), failed), ("", true));
    }

    #[tokio::test]
    async fn an_event_stream_gets_a_last_error_event_between_events_only() {
        for (sent, expect_event) in [("data: {\"x\":1}\n\n", true), ("data: {\"x\"", false)] {
            let streams = Arc::new(LiveStreams::default());
            let (tx, body) = fed();
            let (w, _) = watched(
                body,
                &streams,
                holder("a", ""),
                Ending::Event,
                Arc::new(AtomicBool::new(false)),
            );
            tx.send(Ok(Frame::data(Bytes::from(sent)))).await.unwrap();
            let reader = tokio::spawn(drain(w));
            registered(&streams, 1).await;
            streams.cut_where(|_| Some(CutReason::Quarantined));
            let (out, failed) = tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .unwrap()
                .unwrap();
            if expect_event {
                assert!(!failed);
                let last = out.strip_prefix(sent).unwrap();
                let v: serde_json::Value =
                    serde_json::from_str(last.strip_prefix("data: ").unwrap().trim_end()).unwrap();
                assert_eq!(v["error"]["code"], "stream_revoked");
                assert!(last.ends_with("\n\n"));
            } else {
                assert_eq!((out.as_str(), failed), (sent, true), "mid-event: abort");
            }
        }
    }

    #[tokio::test]
    async fn an_mcp_event_stream_just_ends() {
        let streams = Arc::new(LiveStreams::default());
        let (tx, body) = fed();
        let (w, meter) = watched(
            body,
            &streams,
            holder("a", ""),
            Ending::Close,
            Arc::new(AtomicBool::new(false)),
        );
        tx.send(Ok(Frame::data(Bytes::from("data: {}\n\n"))))
            .await
            .unwrap();
        let reader = tokio::spawn(drain(w));
        registered(&streams, 1).await;
        streams.cut_where(|_| Some(CutReason::UserDisabled));
        let (out, failed) = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((out.as_str(), failed), ("data: {}\n\n", false));
        assert!(meter.stream_cut.get().is_some());
    }

    #[tokio::test]
    async fn a_one_frame_answer_never_registers() {
        let streams = Arc::new(LiveStreams::default());
        let body = crate::respond::full("done");
        let (w, _) = watched(
            body,
            &streams,
            holder("a", ""),
            Ending::Abort,
            Arc::new(AtomicBool::new(true)),
        );
        let mut w = w;
        let frame = w.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap().as_ref(), b"done");
        assert!(w.is_end_stream());
        assert!(streams.is_empty());
    }

    #[tokio::test]
    async fn a_stream_that_never_waits_registers_after_its_second_frame() {
        let streams = Arc::new(LiveStreams::default());
        let (tx, body) = fed();
        let (mut w, _) = watched(
            body,
            &streams,
            holder("a", ""),
            Ending::Abort,
            Arc::new(AtomicBool::new(false)),
        );
        for _ in 0..3 {
            tx.send(Ok(Frame::data(Bytes::from("x")))).await.unwrap();
        }
        w.frame().await.unwrap().unwrap();
        w.frame().await.unwrap().unwrap();
        assert!(streams.is_empty(), "not yet");
        w.frame().await.unwrap().unwrap();
        assert_eq!(streams.len(), 1);
        streams.cut_where(|_| Some(CutReason::AgentRevoked));
        tx.send(Ok(Frame::data(Bytes::from("x")))).await.unwrap();
        assert!(w.frame().await.unwrap().is_err(), "cut before more data");
        assert!(w.frame().await.is_none());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_dropped_streams() {
        let streams = LiveStreams::default();
        let h = Arc::new(holder("a", ""));
        let regs: Vec<_> = (0..MAX_STREAMS)
            .map(|_| streams.register(h.clone()).unwrap())
            .collect();
        assert!(streams.register(h.clone()).is_none(), "full");
        drop(regs);
        assert!(streams.is_empty());
        assert!(streams.register(h).is_some());
    }

    #[test]
    fn verdicts() {
        use portcullis_store::{AgentRow, CertificateRow};
        let directory = AgentDirectory::new(
            &[
                AgentRow {
                    name: "bot".into(),
                    roles: vec![],
                    created_at: 0,
                    revoked_at: None,
                },
                AgentRow {
                    name: "gone".into(),
                    roles: vec![],
                    created_at: 0,
                    revoked_at: Some(1),
                },
            ],
            &[
                CertificateRow {
                    serial: "01".into(),
                    agent: "bot".into(),
                    spiffe_id: String::new(),
                    issued_at: 0,
                    not_after: i64::MAX,
                    revoked_at: None,
                },
                CertificateRow {
                    serial: "02".into(),
                    agent: "bot".into(),
                    spiffe_id: String::new(),
                    issued_at: 0,
                    not_after: i64::MAX,
                    revoked_at: Some(1),
                },
            ],
        );
        let revocations = Revocations::default();
        let check = |h: Holder| verdict(&h, &directory, &revocations, None);
        let cert = |agent: &str, serial: &str| Holder {
            agent: agent.into(),
            serial: serial.into(),
            ..Holder::default()
        };
        assert_eq!(check(cert("bot", "01")), None);
        assert_eq!(check(cert("bot", "02")), Some(CutReason::AgentRevoked));
        assert_eq!(check(cert("gone", "")), Some(CutReason::AgentRevoked));
        assert_eq!(check(cert("nobody", "")), Some(CutReason::AgentRevoked));
        assert_eq!(check(holder("bot", "t1")), None);
    }

    #[tokio::test]
    async fn verdicts_on_revoked_tokens_and_disabled_users() {
        use portcullis_store::{AgentRow, RevokedTokenRow, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        store
            .revoke_token(&RevokedTokenRow {
                jti: "t-gone".into(),
                expires_at: i64::MAX,
                revoked_at: 1,
                reason: String::new(),
            })
            .await
            .unwrap();
        store
            .set_user_disabled("alice", true, 1, "left")
            .await
            .unwrap();
        let revocations = Revocations::default();
        revocations.reload(&store, 2).await.unwrap();
        let directory = AgentDirectory::new(
            &[AgentRow {
                name: "bot".into(),
                roles: vec![],
                created_at: 0,
                revoked_at: None,
            }],
            &[],
        );
        let check = |h: Holder| verdict(&h, &directory, &revocations, None);
        assert_eq!(check(holder("bot", "t-live")), None);
        assert_eq!(
            check(holder("bot", "t-gone")),
            Some(CutReason::TokenRevoked)
        );
        let for_user = |user: &str| Holder {
            user: Some(user.into()),
            ..holder("bot", "t-live")
        };
        assert_eq!(check(for_user("alice")), Some(CutReason::UserDisabled));
        assert_eq!(check(for_user("bob")), None);
    }
}
