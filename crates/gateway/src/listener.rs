//! The accept stage: TLS termination, connection limits, timeouts and graceful
//! shutdown, shared by the data plane and the admin listener.
//!
//! **Bounded connections.** A connection costs a socket, a task and a slot
//! under `max_connections` whether or not it ever sends a request, so a client
//! that handshakes and then stays silent must not be able to hold slots the
//! agents need. Every connection is registered in a [`Registry`] that knows
//! whether it presented a verified client certificate, whether it has started
//! a request, and whether one is in flight:
//!
//! - the TLS handshake must finish within `handshake_timeout`;
//! - the first request must start within `first_request_timeout`, and a
//!   connection with nothing in flight is closed after `idle_timeout`;
//! - HTTP/2 connections are pinged every `h2_keepalive_interval` and closed
//!   when a ping is not answered within `h2_keepalive_timeout`;
//! - a connection whose client has taken nothing of a response for
//!   `stall_timeout` (it stopped reading) is closed: the answer waiting for
//!   it, and the upstream connection behind it, are let go instead of being
//!   held for as long as the client stays connected;
//! - connections without a verified client certificate (before and during the
//!   handshake, on the admin listener, and token agents) share a smaller budget,
//!   `max_unverified`, and at most `max_unverified_per_source` of them come
//!   from one address. When a new connection finds its budget full, the
//!   oldest idle unverified connection (never used first, then least recently
//!   active) is closed to make room; one with a request in flight never is.
//!   Only when every unverified connection is busy is the new one refused;
//! - when `max_connections` is reached, the oldest idle unverified connection
//!   is closed before the listener waits for a slot, so idle anonymous
//!   sockets cannot keep a certificate-holding agent in the accept backlog.
//!
//! Every close is counted by reason in `portcullis_connections_closed_total`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::body::BoxError;
use crate::metrics::ConnectionMetrics;

pub use portcullis_control::metrics::CloseReason;

/// How long a client may take to send request headers once it has begun.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time shutdown may take (`[limits] drain_timeout_ms`).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default time a client may take to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time from the handshake to the first request.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a connection may stay open with nothing in flight. Above the
/// 90 s idle time of the common client pools (hyper, reqwest), so a pooled
/// connection is normally retired by the client, not raced by the server.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default interval of HTTP/2 keep-alive pings.
pub const DEFAULT_H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default time an HTTP/2 client has to answer a keep-alive ping.
pub const DEFAULT_H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client may take nothing of a response (`[limits]
/// stall_timeout_ms`).
pub const DEFAULT_STALL_TIMEOUT: Duration =
    Duration::from_millis(crate::config::DEFAULT_STALL_TIMEOUT_MS);
/// Default cap on connections without a verified client certificate from one
/// address.
pub const DEFAULT_MAX_UNVERIFIED_PER_SOURCE: usize = 256;

/// The limits of one listener's connections (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Most concurrent connections without a verified client certificate.
    pub max_unverified: usize,
    /// Most such connections from one source address.
    pub max_unverified_per_source: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed from the handshake to the first request.
    pub first_request_timeout: Duration,
    /// Time a connection may stay open with nothing in flight.
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings.
    pub h2_keepalive_interval: Duration,
    /// Time a client has to answer a ping.
    pub h2_keepalive_timeout: Duration,
    /// Time a client may take nothing of a response before its connection
    /// is closed.
    pub stall_timeout: Duration,
    /// Time shutdown may take: the listeners drain within most of it (see
    /// [`ConnectionLimits::listener_drain`]), the audit writer the rest.
    pub drain_timeout: Duration,
}

impl ConnectionLimits {
    /// The defaults for a listener of `max_connections`: half of them may be
    /// unverified.
    pub fn with_max_connections(max_connections: usize) -> Self {
        let max_connections = max_connections.max(1);
        ConnectionLimits {
            max_connections,
            max_unverified: (max_connections / 2).max(1),
            max_unverified_per_source: DEFAULT_MAX_UNVERIFIED_PER_SOURCE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            h2_keepalive_interval: DEFAULT_H2_KEEPALIVE_INTERVAL,
            h2_keepalive_timeout: DEFAULT_H2_KEEPALIVE_TIMEOUT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }

    /// How long the listeners let in-flight requests finish after shutdown
    /// begins: the drain timeout less a fifth (at most 5 s) kept for the
    /// audit writer to commit or spill the records those requests leave.
    pub fn listener_drain(&self) -> Duration {
        self.drain_timeout - (self.drain_timeout / 5).min(Duration::from_secs(5))
    }
}

/// What the service of one connection learns about its peer.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The certificate chain the client presented (end entity first), if any.
    pub peer_certificates: Option<Vec<CertificateDer<'static>>>,
}

/// The TLS server configuration: server certificate plus, for the data plane,
/// a client-certificate verifier. HTTP/2 and HTTP/1.1 via ALPN.
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| rustls::Error::General(format!("server key: {e}")))?;
    let builder =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One registered connection.
#[derive(Debug)]
struct Slot {
    source: IpAddr,
    /// Presented a client certificate the TLS verifier accepted.
    verified: bool,
    /// Has started at least one request.
    used: bool,
    /// Requests whose response has not finished.
    in_flight: u32,
    /// When the last request finished (or the connection opened).
    last_active: Instant,
    /// Notified to close the connection.
    evict: Arc<Evict>,
}

/// The eviction signal of one connection, and why.
#[derive(Debug, Default)]
struct Evict {
    notify: Notify,
    reason: Mutex<Option<CloseReason>>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// By id, i.e. oldest first.
    slots: BTreeMap<u64, Slot>,
    unverified: usize,
    unverified_by_source: HashMap<IpAddr, usize>,
}

impl Inner {
    fn forget_unverified(&mut self, source: IpAddr) {
        self.unverified = self.unverified.saturating_sub(1);
        if let Some(n) = self.unverified_by_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.unverified_by_source.remove(&source);
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if !slot.verified {
            self.forget_unverified(slot.source);
        }
        Some(slot)
    }

    /// Closes the idle unverified connection that matters least (never used
    /// before used, then the least recently active; `source` narrows the
    /// choice). False when every candidate is busy.
    fn evict_one(&mut self, source: Option<IpAddr>, reason: CloseReason) -> bool {
        let victim = self
            .slots
            .iter()
            .filter(|(_, s)| !s.verified && s.in_flight == 0)
            .filter(|(_, s)| source.is_none_or(|ip| s.source == ip))
            .min_by_key(|(id, s)| (s.used, s.last_active, **id))
            .map(|(id, _)| *id);
        let Some(slot) = victim.and_then(|id| self.remove(id)) else {
            return false;
        };
        if let Ok(mut r) = slot.evict.reason.lock() {
            *r = Some(reason);
        }
        slot.evict.notify.notify_one();
        true
    }
}

/// The connections of one listener; see the module docs.
#[derive(Debug)]
pub struct Registry {
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    inner: Mutex<Inner>,
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: ConnectionLimits, metrics: ConnectionMetrics) -> Arc<Self> {
        Arc::new(Registry {
            limits,
            metrics,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counts that are at worst off by
        // one connection; keep serving rather than poison every accept.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        self.metrics.open.set(inner.slots.len() as i64);
        self.metrics.unverified.set(inner.unverified as i64);
    }

    /// Registers a new, not yet verified connection from `source`, closing
    /// an idle one if a budget is full. `Err` when it must be refused.
    fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Conn, CloseReason> {
        let mut inner = self.lock();
        if inner
            .unverified_by_source
            .get(&source)
            .copied()
            .unwrap_or(0)
            >= self.limits.max_unverified_per_source
        {
            if !inner.evict_one(Some(source), CloseReason::EvictedSourceCap) {
                return Err(CloseReason::RefusedSourceCap);
            }
            self.metrics.closed(CloseReason::EvictedSourceCap);
        }
        if inner.unverified >= self.limits.max_unverified {
            if !inner.evict_one(None, CloseReason::EvictedUnverifiedCap) {
                return Err(CloseReason::RefusedUnverifiedCap);
            }
            self.metrics.closed(CloseReason::EvictedUnverifiedCap);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let evict = Arc::new(Evict::default());
        inner.slots.insert(
            id,
            Slot {
                source,
                verified: false,
                used: false,
                in_flight: 0,
                last_active: Instant::now(),
                evict: evict.clone(),
            },
        );
        inner.unverified += 1;
        *inner.unverified_by_source.entry(source).or_insert(0) += 1;
        self.publish(&inner);
        Ok(Conn {
            registry: self.clone(),
            id,
            evict,
            handle: Arc::new(ConnRef {
                registry: self.clone(),
                id,
                active: AtomicU32::new(0),
                waiting: Mutex::new(Vec::new()),
                next_body: AtomicU32::new(0),
            }),
        })
    }

    /// Makes room under `max_connections` by closing the least useful idle
    /// unverified connection, if there is one.
    fn evict_for_capacity(&self) {
        let mut inner = self.lock();
        if inner.evict_one(None, CloseReason::EvictedMaxConnections) {
            self.metrics.closed(CloseReason::EvictedMaxConnections);
            self.publish(&inner);
        }
    }
}

/// A registered connection; unregisters on drop.
#[derive(Debug)]
struct Conn {
    registry: Arc<Registry>,
    id: u64,
    evict: Arc<Evict>,
    /// What the connection's service holds to count its requests.
    handle: Arc<ConnRef>,
}

impl Conn {
    /// The client presented a certificate the TLS verifier accepted.
    fn verified(&self) {
        let mut inner = self.registry.lock();
        let Some(slot) = inner.slots.get_mut(&self.id) else {
            return;
        };
        if slot.verified {
            return;
        }
        slot.verified = true;
        let source = slot.source;
        inner.forget_unverified(source);
        self.registry.publish(&inner);
    }

    /// A request started; the guard marks its end.
    #[cfg(test)]
    fn begin(&self) -> InFlight {
        self.handle.begin()
    }

    /// When the connection should be closed for want of activity, if nothing
    /// is in flight; `None` while something is.
    fn idle_deadline(&self) -> Option<(Instant, CloseReason)> {
        let inner = self.registry.lock();
        let slot = inner.slots.get(&self.id)?;
        if slot.in_flight > 0 {
            return None;
        }
        let limits = &self.registry.limits;
        Some(if slot.used {
            (
                slot.last_active + limits.idle_timeout,
                CloseReason::IdleTimeout,
            )
        } else {
            (
                slot.last_active + limits.first_request_timeout,
                CloseReason::FirstRequestTimeout,
            )
        })
    }

    /// Resolves when the registry closes this connection to make room.
    async fn evicted(&self) -> CloseReason {
        self.evict.notify.notified().await;
        self.evict
            .reason
            .lock()
            .ok()
            .and_then(|r| *r)
            .unwrap_or(CloseReason::EvictedMaxConnections)
    }

    fn close(self, reason: CloseReason) {
        // Evictions were counted when they were decided.
        if !matches!(
            reason,
            CloseReason::EvictedSourceCap
                | CloseReason::EvictedUnverifiedCap
                | CloseReason::EvictedMaxConnections
        ) {
            self.registry.metrics.closed(reason);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.remove(self.id);
        self.registry.publish(&inner);
    }
}

/// One request in flight on a connection: held by the response body, so a
/// streamed answer (SSE) keeps its connection from looking idle.
#[derive(Debug)]
struct InFlight {
    conn: Arc<ConnRef>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
        let mut inner = self.conn.registry.lock();
        if let Some(slot) = inner.slots.get_mut(&self.conn.id) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            slot.last_active = Instant::now();
        }
    }
}

/// Serves TLS connections from `listener` until `shutdown` turns true, then stops
/// accepting and lets in-flight requests finish (up to
/// [`ConnectionLimits::listener_drain`]).
///
/// `make_service` is called once per connection after the handshake.
pub async fn serve<F, S, Fut, B>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    make_service: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(ConnectionInfo) -> S + Send + Sync + 'static,
    S: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let acceptor = TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let make_service = Arc::new(make_service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.h2_keepalive_interval))
        .keep_alive_timeout(limits.h2_keepalive_timeout)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let handshake_timeout = limits.handshake_timeout;
    let drain = limits.listener_drain();
    let registry = Registry::new(limits, metrics);

    loop {
        // Waiting for a permit before accepting leaves excess clients in the
        // kernel's backlog instead of consuming memory here; but first an idle
        // unverified connection makes room, so idle anonymous sockets cannot
        // keep an agent in that backlog.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => break,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                registry.evict_for_capacity();
                tokio::select! {
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = shutdown.changed() => break,
                }
            }
        };
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let conn = match registry.admit(remote.ip()) {
            Ok(conn) => conn,
            Err(reason) => {
                tracing::debug!(%remote, reason = reason.as_str(), "connection refused");
                registry.metrics.closed(reason);
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let make_service = make_service.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let reason = serve_one(
                &conn,
                tcp,
                remote,
                acceptor,
                handshake_timeout,
                make_service,
                builder,
                watcher,
            )
            .await;
            conn.close(reason);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}

/// Handshakes and serves one connection; returns why it ended.
#[allow(clippy::too_many_arguments)]
async fn serve_one<F, S, Fut, B>(
    conn: &Conn,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    make_service: Arc<F>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
) -> CloseReason
where
    F: Fn(ConnectionInfo) -> S + Send + Sync + 'static,
    S: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let tls = tokio::select! {
        r = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return CloseReason::HandshakeFailed;
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                return CloseReason::HandshakeTimeout;
            }
        },
        reason = conn.evicted() => return reason,
    };
    let peer_certificates: Option<Vec<CertificateDer<'static>>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
    // The TLS verifier only lets a chain through that it verified, so a
    // presented chain is a verified one (revocation is the service's concern).
    if peer_certificates.is_some() {
        conn.verified();
    }
    let service = make_service(ConnectionInfo {
        remote,
        peer_certificates,
    });
    let tracker = conn.handle.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = tracker.begin();
        let response = service(req);
        async move {
            let response = response.await?;
            // The body owns the guard: the request ends when its answer has
            // been sent or abandoned.
            Ok::<_, Infallible>(response.map(move |body| Held::new(body, in_flight)))
        }
    });
    let served = watcher.watch(
        builder
            .serve_connection(TokioIo::new(tls), service)
            .into_owned(),
    );
    tokio::pin!(served);
    // Set when the connection was chosen for closing while a request was
    // beginning on it: it closes once that request is done.
    let mut closing: Option<CloseReason> = None;
    loop {
        if let Some(reason) = closing
            && conn.handle.active.load(Ordering::Acquire) == 0
        {
            return reason;
        }
        let deadline = conn.idle_deadline();
        // A client that has taken nothing of an answer for the stall
        // timeout stopped reading: the connection goes, and with it the
        // answer (and the upstream connection) held for it.
        let stalled = conn
            .handle
            .waiting_since()
            .map(|since| since + conn.registry.limits.stall_timeout);
        if let Some(at) = stalled
            && at <= Instant::now()
        {
            tracing::debug!(%remote, "the client took nothing of its answer for the stall timeout; connection closed");
            return CloseReason::SendTimeout;
        }
        // While a request is in flight, look again after a first-request
        // timeout: cheap, and ends no request.
        let wake = match (closing, deadline) {
            (Some(_), _) => Instant::now() + Duration::from_millis(50),
            (None, Some((at, _))) => at,
            (None, None) => Instant::now() + conn.registry.limits.first_request_timeout,
        };
        let wake = stalled.map_or(wake, |at| at.min(wake));
        tokio::select! {
            r = &mut served => {
                return match r {
                    Ok(()) => CloseReason::Ended,
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "connection ended with an error");
                        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                            CloseReason::ProtocolTimeout
                        } else {
                            CloseReason::Error
                        }
                    }
                };
            }
            reason = conn.evicted(), if closing.is_none() => {
                tracing::debug!(%remote, reason = reason.as_str(), "idle connection closed to make room");
                if conn.handle.active.load(Ordering::Acquire) == 0 {
                    return reason;
                }
                closing = Some(reason);
            }
            _ = tokio::time::sleep_until(wake) => {
                if let Some((at, reason)) = conn.idle_deadline()
                    && at <= Instant::now()
                {
                    tracing::debug!(%remote, reason = reason.as_str(), "idle connection closed");
                    return reason;
                }
            }
        }
    }
}

/// The service's handle on its connection's slot.
#[derive(Debug)]
struct ConnRef {
    registry: Arc<Registry>,
    id: u64,
    /// Requests in flight, counted here too: the slot is gone once the
    /// connection was chosen for closing, and a request that began just then
    /// must still be allowed to finish.
    active: AtomicU32,
    /// The answers that gave the connection a frame the client has not
    /// taken yet (no further poll), by body, since when. A handful at most:
    /// one per answer in flight.
    waiting: Mutex<Vec<(u32, Instant)>>,
    /// Numbers the answers of this connection for `waiting`.
    next_body: AtomicU32,
}

impl ConnRef {
    /// Since when the oldest answer has waited for the client to take a
    /// frame, if one does.
    fn waiting_since(&self) -> Option<Instant> {
        let waiting = self.waiting.lock().ok()?;
        waiting.iter().map(|(_, since)| *since).min()
    }

    /// Body `id` handed a frame over (`Some(now)`) or was polled again
    /// (`None`).
    fn set_waiting(&self, id: u32, since: Option<Instant>) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        waiting.retain(|(body, _)| *body != id);
        if let Some(since) = since {
            waiting.push((id, since));
        }
    }

    /// A request started; the guard marks its end.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::AcqRel);
        let mut inner = self.registry.lock();
        if let Some(slot) = inner.slots.get_mut(&self.id) {
            slot.used = true;
            slot.in_flight += 1;
        }
        InFlight { conn: self.clone() }
    }
}

/// A response body that holds its connection's in-flight guard until it is
/// dropped. It passes the body's size hint on (a `map_frame` would lose it,
/// and every answer would go out chunked instead of with its length).
/// It also notes when a frame it handed over is not followed by another
/// poll: the connection then waits for its client to take the data (see
/// [`ConnRef::waiting_since`]).
struct Held<B> {
    inner: B,
    in_flight: InFlight,
    id: u32,
    /// A frame was handed over and no poll has followed yet.
    waiting: bool,
}

impl<B> Held<B> {
    fn new(inner: B, in_flight: InFlight) -> Self {
        let id = in_flight.conn.next_body.fetch_add(1, Ordering::Relaxed);
        Held {
            inner,
            in_flight,
            id,
            waiting: false,
        }
    }
}

impl<B> Drop for Held<B> {
    fn drop(&mut self) {
        if self.waiting {
            self.in_flight.conn.set_waiting(self.id, None);
        }
    }
}

impl<B> http_body::Body for Held<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        if std::mem::take(&mut this.waiting) {
            this.in_flight.conn.set_waiting(this.id, None);
        }
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            this.waiting = true;
            this.in_flight
                .conn
                .set_waiting(this.id, Some(Instant::now()));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_unverified: usize, per_source: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_unverified,
            max_unverified_per_source: per_source,
            ..ConnectionLimits::with_max_connections(100)
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn reason(conn: &Conn) -> Option<CloseReason> {
        *conn.evict.reason.lock().unwrap()
    }

    #[tokio::test]
    async fn a_full_source_budget_closes_its_oldest_idle_connection() {
        let registry = Registry::new(limits(10, 2), ConnectionMetrics::default());
        let a = registry.admit(ip(1)).unwrap();
        let b = registry.admit(ip(1)).unwrap();
        let other = registry.admit(ip(2)).unwrap();
        let c = registry.admit(ip(1)).unwrap();
        assert_eq!(reason(&a), Some(CloseReason::EvictedSourceCap));
        assert_eq!(reason(&b), None);
        assert_eq!(reason(&other), None);
        assert_eq!(reason(&c), None);
    }

    #[tokio::test]
    async fn busy_connections_are_never_closed_and_used_ones_go_last() {
        let registry = Registry::new(limits(2, 10), ConnectionMetrics::default());
        let busy = registry.admit(ip(1)).unwrap();
        let _request = busy.begin();
        let used = registry.admit(ip(2)).unwrap();
        drop(used.begin());
        // `used` is older than the new one but has served a request; the
        // budget is full and the busy one cannot go, so `used` does.
        let fresh = registry.admit(ip(3)).unwrap();
        assert_eq!(reason(&busy), None);
        assert_eq!(reason(&used), Some(CloseReason::EvictedUnverifiedCap));
        let _request = fresh.begin();
        // Everything left is busy: refused.
        assert_eq!(
            registry.admit(ip(4)).unwrap_err(),
            CloseReason::RefusedUnverifiedCap
        );
    }

    #[tokio::test]
    async fn verified_connections_leave_the_unverified_budget() {
        let registry = Registry::new(limits(1, 1), ConnectionMetrics::default());
        let agent = registry.admit(ip(1)).unwrap();
        agent.verified();
        let anonymous = registry.admit(ip(1)).unwrap();
        let next = registry.admit(ip(1)).unwrap();
        assert_eq!(reason(&agent), None);
        assert_eq!(reason(&anonymous), Some(CloseReason::EvictedSourceCap));
        drop(next);
        let inner = registry.lock();
        assert_eq!(inner.unverified, 0);
        assert!(inner.unverified_by_source.is_empty());
        assert_eq!(inner.slots.len(), 1);
    }

    #[tokio::test]
    async fn idle_deadlines_follow_use() {
        let registry = Registry::new(limits(10, 10), ConnectionMetrics::default());
        let conn = registry.admit(ip(1)).unwrap();
        assert_eq!(
            conn.idle_deadline().unwrap().1,
            CloseReason::FirstRequestTimeout
        );
        let request = conn.begin();
        assert!(conn.idle_deadline().is_none());
        drop(request);
        assert_eq!(conn.idle_deadline().unwrap().1, CloseReason::IdleTimeout);
    }
}
