//! The egress proxy of a sandboxed stdio MCP server (`[routes.sandbox]
//! network = "egress"`): the only network endpoint the server reaches.
//!
//! `sandbox-exec` binds a listener on `127.0.0.1` inside the server's own
//! network namespace and passes it to the gateway
//! ([`portcullis_sandbox::receive_listener`]); the server finds it in
//! `HTTP_PROXY`/`HTTPS_PROXY`. Here the gateway serves it as an HTTP/1.1
//! forward proxy: `CONNECT host:port` tunnels (HTTPS, or any TCP) and
//! absolute-form `http://` requests. For each the gateway
//! - resolves the name itself (the server has no DNS);
//! - decides with policy, for the agent whose MCP session the server serves,
//!   `Action::"egress"` on `Host::"<name>:<port>"` when the address is public
//!   and `Action::"egress_private"` otherwise (loopback, private,
//!   link-local, metadata: no SSRF into the gateway's network unless a
//!   policy names it), default deny;
//! - connects to exactly the address it decided on (no second resolution
//!   the server could race: DNS rebinding);
//! - audits the connection (`kind` `egress`) and counts it
//!   (`portcullis_egress_connections_total`, behavioural analytics).
//!
//! A refusal is `403` with a JSON body whose `code` is `egress_denied`.
//!
//! A plain HTTP request is read whole (up to `[routes.sandbox.egress]
//! max_body_bytes`, else `413` `egress_body_too_large`; its bytes, and a
//! JSON body's parsed copy, leased from `[limits] max_buffered_bytes`
//! like every buffered body, else `413` or `503` `server_busy`) and its host name,
//! path, query, headers and body are scanned by the content guard (the
//! pipeline's [`TextScan`], JSON through the one generic walk) *before* the
//! name is resolved or anything is sent: with `dlp = "block"` (the default)
//! a secret is refused (`403` `egress_dlp`) and a body the guard cannot read
//! too (`415` `egress_unscannable`); what was found goes to policy as
//! `context.content` (so a policy can refuse personal data) and to the
//! audit record by type, position and keyed fingerprint, never by value.
//! Answers are not scanned here: the server hands what it fetched to the
//! agent as tool output, which the route's guard scans (`[routes.guard]`).
//!
//! Tunnelled bytes are not read (TLS end to end): the content guard does
//! not scan them. A tunnel is decided with `context.tunnel == true`, and a
//! profile with `tunnels = false` refuses every one (`403`
//! `egress_tunnel_refused`), so all egress passes the guard.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_audit::{AuditRecord, ContentFinding, Outcome, RecordKind};
use portcullis_core::RequestId;
use portcullis_guard::Channel;
use portcullis_identity::DelegatedUser;
use portcullis_policy::{AddressClass, CallerFacts, Content, EgressRequest, SourceIp};
use portcullis_sandbox::{EgressDlp, EgressRules};
use tokio::net::TcpStream;

use crate::config::{DlpAction, InjectionAction, RouteGuard};
use crate::pipeline::inspect::{self, ContentFacts, GuardState, TextScan};
use crate::state::Gateway;

/// Longest wait for the server's sandbox to pass its listener.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a name resolution or an upstream connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections one server has open through the proxy at once.
const MAX_CONNECTIONS: usize = 64;
/// Most resolved addresses tried for one destination.
const MAX_ADDRESSES: usize = 4;
/// Longest a plain HTTP request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers that concern only the hop to the proxy. The body is read whole
/// before it is forwarded, so it goes on with its length, not in the
/// chunks it came in (`transfer-encoding`).
const HOP_HEADERS: [&str; 9] = [
    "connection",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Who asks, for decisions and audit records: fixed when the session's
/// process starts.
pub(super) struct EgressSession {
    pub gateway: Arc<Gateway>,
    pub agent: String,
    pub route: String,
    /// The server's program (the command's first word).
    pub server: String,
    /// The agent's address and credentials when it opened the session.
    pub source_ip: SourceIp,
    pub caller: CallerFacts,
    /// The user the agent acts for, when a delegated token opened the
    /// session: each connection is decided as that user too.
    pub user: Option<DelegatedUser>,
    /// The request id of the session's `initialize` (the guard's log lines).
    pub request_id: RequestId,
    /// The route profile's `[routes.sandbox.egress]`.
    pub rules: EgressRules,
    /// Writes the record (time, request id, principal, classification,
    /// process event filled in) and offers it to analytics.
    pub records: Arc<super::stdio::Recorded>,
}

/// Receives the listener from the sandbox over `channel`, then serves it
/// until `stopped` (the process ended).
pub(super) async fn run(
    channel: std::os::unix::net::UnixStream,
    session: Arc<EgressSession>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let received = tokio::task::spawn_blocking(move || {
        portcullis_sandbox::receive_listener(&channel, HANDOFF_TIMEOUT)
    })
    .await;
    let listener = match received {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::warn!(route = %session.route, error = %e, "the sandbox passed no egress listener; the server has no network");
            return;
        }
        Err(_) => return,
    };
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(route = %session.route, error = %e, "cannot serve the egress listener");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        // Over the limit the connection waits in the kernel's backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let session = session.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let session = session.clone();
                async move { Ok::<_, Infallible>(handle(&session, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Some(CONNECT_TIMEOUT))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// What one proxied request asks for.
struct Ask<'a> {
    method: &'a str,
    path: &'a str,
    host: &'a str,
    port: u16,
    /// What the content guard found (plain HTTP), for policy.
    content: Content<'a>,
    /// What it found, for the record.
    found: &'a [ContentFinding],
}

impl Ask<'_> {
    fn tunnel(&self) -> bool {
        self.method == "CONNECT"
    }

    /// `host:port` (IPv6 literals in brackets); `""` when there is no host.
    fn destination(&self) -> String {
        if self.host.is_empty() {
            String::new()
        } else {
            format!("{}:{}", bracketed(self.host), self.port)
        }
    }
}

/// The outcome of [`decide_and_connect`].
enum Reached {
    Connected(TcpStream, Decided),
    Refused(Response<ProxyBody>),
}

/// What was decided for the connection, for its record.
struct Decided {
    action: &'static str,
    address: IpAddr,
    policies: Vec<String>,
}

async fn handle(session: &EgressSession, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    if req.method() == Method::CONNECT {
        let Some((host, port)) = req
            .uri()
            .authority()
            .and_then(|a| Some((unbracketed(a.host()), a.port_u16()?)))
        else {
            return bad_request(session, started, "CONNECT needs host:port");
        };
        // The name is read (a name the gateway resolves is a DNS query
        // that can carry data); the tunnel's bytes cannot be.
        let mut found = Vec::new();
        let checked = scan_host(session, &host, &mut found).and_then(|facts| {
            refused_by_rules(session, &facts)?;
            if session.rules.tunnels {
                return Ok(());
            }
            Err(Refused {
                status: StatusCode::FORBIDDEN,
                code: "egress_tunnel_refused",
                message: "this route's sandbox allows plain HTTP egress only \
                          (`[routes.sandbox.egress] tunnels = false`): the gateway cannot \
                          read what a tunnel carries"
                    .to_string(),
            })
        });
        let ask = Ask {
            method: "CONNECT",
            path: "",
            host: &host,
            port,
            content: Content::NOT_SCANNED,
            found: &found,
        };
        if let Err(refused) = checked {
            return refuse(session, &ask, started, refused);
        }
        let (upstream, decided) = match decide_and_connect(session, &ask, started).await {
            Reached::Connected(s, d) => (s, d),
            Reached::Refused(r) => return r,
        };
        let records = session.records.clone();
        let (host, found) = (host.clone(), found.clone());
        session.gateway.metrics.egress_connection(true);
        tokio::spawn(async move {
            let (mut up, mut down) = (0, 0);
            if let Ok(upgraded) = hyper::upgrade::on(&mut req).await {
                let mut client = TokioIo::new(upgraded);
                let mut upstream = upstream;
                if let Ok((u, d)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                {
                    (up, down) = (u, d);
                }
            }
            let ask = Ask {
                method: "CONNECT",
                path: "",
                host: &host,
                port,
                content: Content::NOT_SCANNED,
                found: &found,
            };
            records.submit_record(egress_record(
                &ask,
                &decided,
                (Outcome::Allow, 200, None),
                started,
                (up, down),
            ));
        });
        return Response::new(empty());
    }

    // A plain HTTP request in absolute form.
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("http") {
        return bad_request(
            session,
            started,
            "only absolute http:// URLs and CONNECT are proxied",
        );
    }
    let Some(host) = uri.host().map(str::to_string) else {
        return bad_request(session, started, "no host in the URL");
    };
    let host = unbracketed(&host);
    let port = uri.port_u16().unwrap_or(80);
    let method = req.method().to_string();
    let path = uri.path().to_string();
    // Read and scan everything the request would carry before the name is
    // resolved or a byte goes upstream.
    let (mut parts, body) = req.into_parts();
    let mut found = Vec::new();
    let budget = &session.gateway.routing_env.buffers;
    let read = read_body(body, &parts.headers, session.rules.max_body_bytes, budget).await;
    // The lease is held until the body has gone upstream (end of this
    // function): these bytes count against `[limits] max_buffered_bytes`.
    let mut lease = None;
    let scanned = read.and_then(|(bytes, mut held)| {
        // A JSON body is parsed to be scanned: its parsed copy counts too,
        // for as long as it lives.
        if inspect::is_json(parts.headers.get(header::CONTENT_TYPE)) {
            held.grow(crate::buffers::json_cost(&bytes))
                .map_err(over_budget)?;
        }
        let facts = scan_request(session, &host, &uri, &mut parts.headers, &bytes, &mut found)?;
        held.shrink_to(bytes.len() as u64);
        lease = Some(held);
        refused_by_rules(session, &facts)?;
        Ok((facts, bytes))
    });
    let (facts, bytes) = match scanned {
        Ok(s) => s,
        Err(refused) => {
            let ask = Ask {
                method: &method,
                path: &path,
                host: &host,
                port,
                content: Content::NOT_SCANNED,
                found: &found,
            };
            return refuse(session, &ask, started, refused);
        }
    };
    let ask = Ask {
        method: &method,
        path: &path,
        host: &host,
        port,
        content: facts.as_policy(),
        found: &found,
    };
    let (upstream, decided) = match decide_and_connect(session, &ask, started).await {
        Reached::Connected(s, d) => (s, d),
        Reached::Refused(r) => return r,
    };
    session.gateway.metrics.egress_connection(true);
    let destination = ask.destination();
    let mut req = Request::from_parts(parts, Full::new(bytes));
    let forwarded = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
        tokio::spawn(conn);
        let origin = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<http::Uri>()
            .unwrap_or_default();
        *req.uri_mut() = origin;
        for name in HOP_HEADERS {
            req.headers_mut().remove(name);
        }
        if !req.headers().contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&destination)
        {
            req.headers_mut().insert(header::HOST, v);
        }
        sender.send_request(req).await
    };
    let (response, outcome) = match forwarded.await {
        Ok(r) => {
            let status = r.status().as_u16();
            (r.map(BodyExt::boxed), (Outcome::Allow, status, None))
        }
        Err(e) => {
            tracing::warn!(route = %session.route, destination = %destination, error = %e, "egress request failed upstream");
            (
                refusal(
                    StatusCode::BAD_GATEWAY,
                    "egress_unreachable",
                    "the destination did not answer",
                ),
                (Outcome::Allow, 502, Some("egress_unreachable")),
            )
        }
    };
    session
        .records
        .submit_record(egress_record(&ask, &decided, outcome, started, (0, 0)));
    drop(lease);
    response
}

/// Why the proxy refuses a request before deciding it.
struct Refused {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// Refuses `ask` before any decision: audited (with what the guard found)
/// and counted.
fn refuse(
    session: &EgressSession,
    ask: &Ask<'_>,
    started: Instant,
    refused: Refused,
) -> Response<ProxyBody> {
    session.gateway.metrics.egress_connection(false);
    let decided = Decided {
        action: portcullis_policy::EGRESS,
        address: IpAddr::from([0, 0, 0, 0]),
        policies: Vec::new(),
    };
    session.records.submit_record(egress_record(
        ask,
        &decided,
        (Outcome::Deny, refused.status.as_u16(), Some(refused.code)),
        started,
        (0, 0),
    ));
    refusal(refused.status, refused.code, &refused.message)
}

/// The refusal when the process-wide buffer budget cannot hold a body:
/// `413` when no body that size could ever be held, `503` `server_busy`
/// when other requests hold the budget now.
fn over_budget(denial: crate::respond::Denial) -> Refused {
    if denial.code == portcullis_core::ErrorCode::PayloadTooLarge {
        Refused {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "egress_body_too_large",
            message: format!(
                "{} (`[limits] max_buffered_bytes`), which the egress proxy needs to scan it",
                denial.message
            ),
        }
    } else {
        Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "server_busy",
            message: denial.message,
        }
    }
}

/// Reads a plain HTTP request's body whole, refusing one over `max` bytes
/// before reading it when its length is announced, and as soon as it
/// passes `max` otherwise. Every byte held is leased from the process-wide
/// `budget` first (the announced length at once, else frame by frame), so
/// however many servers send at once, the proxy buffers no more than
/// `[limits] max_buffered_bytes` with everything else; the lease comes back
/// with the bytes.
async fn read_body(
    body: Incoming,
    headers: &http::HeaderMap,
    max: u64,
    budget: &Arc<crate::buffers::BufferBudget>,
) -> Result<(Bytes, crate::buffers::Lease), Refused> {
    let too_large = || Refused {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "egress_body_too_large",
        message: format!(
            "the request body is over {max} bytes, which the egress proxy reads whole to scan it \
             (`[routes.sandbox.egress] max_body_bytes`)"
        ),
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut lease = budget.lease();
    if let Some(n) = announced {
        lease.grow(n).map_err(over_budget)?;
    }
    let unreadable = || Refused {
        status: StatusCode::BAD_REQUEST,
        code: "egress_bad_request",
        message: "the request body could not be read".to_string(),
    };
    let read = async {
        let mut body = body;
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| unreadable())?.into_data() else {
                continue;
            };
            let len = (buf.len() + data.len()) as u64;
            if len > max {
                return Err(too_large());
            }
            if len > lease.held() {
                lease.grow(len - lease.held()).map_err(over_budget)?;
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(bytes)) => {
            lease.shrink_to(bytes.len() as u64);
            Ok((bytes, lease))
        }
        Ok(Err(refused)) => Err(refused),
        Err(_) => Err(unreadable()),
    }
}

/// The guard's settings for egress: secrets and personal data, no
/// injection scoring (the proxy decides on secrets itself, below).
const EGRESS_SCAN: RouteGuard = RouteGuard {
    injection: InjectionAction::Off,
    dlp: DlpAction::Alert,
    allow_unscannable: true,
};

/// The running guard, or why the proxy cannot scan (it fails closed on a
/// profile that scans).
fn guard(session: &EgressSession) -> Result<Option<Arc<GuardState>>, Refused> {
    if session.rules.dlp == EgressDlp::Off {
        return Ok(None);
    }
    match session.gateway.snapshot().routing.guard.clone() {
        Some(g) => Ok(Some(g)),
        None => Err(unscannable("the content guard is not running")),
    }
}

fn unscannable(what: &str) -> Refused {
    Refused {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "egress_unscannable",
        message: format!(
            "{what}, so the content guard cannot read the request; this route's sandbox \
             refuses what it cannot scan (`[routes.sandbox.egress] dlp = \"block\"`)"
        ),
    }
}

/// Scans a `CONNECT`'s host name (nothing when the profile does not scan).
fn scan_host(
    session: &EgressSession,
    host: &str,
    found: &mut Vec<ContentFinding>,
) -> Result<ContentFacts, Refused> {
    let Some(state) = guard(session)? else {
        return Ok(ContentFacts::default());
    };
    let mut scan = TextScan::new(
        &state,
        EGRESS_SCAN,
        &session.request_id,
        &session.route,
        "request",
    );
    scan.scan(host, Channel::Input, "host", found);
    Ok(settled(scan))
}

/// The facts of a finished scan.
fn settled(scan: TextScan<'_>) -> ContentFacts {
    // `EGRESS_SCAN` only alerts: the verdict is always to go on.
    scan.settle("request").0
}

/// Scans what a plain HTTP request carries upstream: the host name, the
/// path and query (decoded), every header and the body (JSON string by
/// string through the pipeline's walk, forms pair by pair, other text
/// whole). A body the guard cannot read is refused when the profile
/// blocks, and otherwise leaves `scanned` false.
fn scan_request(
    session: &EgressSession,
    host: &str,
    uri: &http::Uri,
    headers: &mut http::HeaderMap,
    body: &Bytes,
    found: &mut Vec<ContentFinding>,
) -> Result<ContentFacts, Refused> {
    let Some(state) = guard(session)? else {
        return Ok(ContentFacts::default());
    };
    let blocks = session.rules.dlp == EgressDlp::Block;
    let mut scan = TextScan::new(
        &state,
        EGRESS_SCAN,
        &session.request_id,
        &session.route,
        "request",
    );
    scan.scan(host, Channel::Input, "host", found);
    scan.scan(&percent_decoded(uri.path()), Channel::Input, "path", found);
    if let Some(query) = uri.query().filter(|q| !q.is_empty()) {
        inspect::scan_query_text(&mut scan, query, found);
    }
    inspect::scan_headers(&mut scan, headers, found);
    if body.is_empty() {
        return Ok(settled(scan));
    }
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    let content_type = headers.get(header::CONTENT_TYPE);
    let readable = (!encoded && inspect::is_text(content_type))
        .then(|| std::str::from_utf8(body).ok())
        .flatten();
    let Some(text) = readable else {
        if blocks {
            return Err(unscannable(if encoded {
                "the request body is compressed"
            } else {
                "the request body is not UTF-8 text"
            }));
        }
        let mut facts = settled(scan);
        facts.scanned = false;
        return Ok(facts);
    };
    let json = match inspect::is_json(content_type).then(|| inspect::parse_strict(text)) {
        Some(Ok(value)) => Some(value),
        Some(Err(_)) if blocks => {
            return Err(unscannable(
                "the request body is JSON that is invalid or repeats a key",
            ));
        }
        _ => None,
    };
    inspect::scan_text_body(&mut scan, text, json, inspect::is_form(content_type), found);
    Ok(settled(scan))
}

/// What the profile refuses of what the guard found: a secret, with
/// `dlp = "block"`.
fn refused_by_rules(session: &EgressSession, facts: &ContentFacts) -> Result<(), Refused> {
    if session.rules.dlp != EgressDlp::Block {
        return Ok(());
    }
    let secrets: Vec<&str> = facts
        .findings
        .iter()
        .copied()
        .filter(|k| portcullis_guard::dlp::Kind::from_name(k).is_some_and(|k| k.is_secret()))
        .collect();
    if secrets.is_empty() {
        return Ok(());
    }
    Err(Refused {
        status: StatusCode::FORBIDDEN,
        code: "egress_dlp",
        message: format!(
            "the request carries a secret ({}); the egress proxy does not let it leave",
            secrets.join(", ")
        ),
    })
}

/// `path` with its `%XX` escapes decoded (invalid UTF-8 replaced), for
/// the scan: `%41KIA…` is `AKIA…`.
fn percent_decoded(path: &str) -> String {
    let raw = path.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escaped = (raw[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves, decides and connects; a refusal is audited and counted here.
async fn decide_and_connect(session: &EgressSession, ask: &Ask<'_>, started: Instant) -> Reached {
    let destination = ask.destination();
    let deny = |decided: &Decided, status: StatusCode, code: &'static str, message: &str| {
        session.gateway.metrics.egress_connection(false);
        session.records.submit_record(egress_record(
            ask,
            decided,
            (Outcome::Deny, status.as_u16(), Some(code)),
            started,
            (0, 0),
        ));
        Reached::Refused(refusal(status, code, message))
    };
    let unresolved = Decided {
        action: portcullis_policy::EGRESS,
        address: IpAddr::from([0, 0, 0, 0]),
        policies: Vec::new(),
    };
    let addresses = match resolve(ask.host, ask.port).await {
        Ok(a) if !a.is_empty() => a,
        _ => {
            return deny(
                &unresolved,
                StatusCode::BAD_GATEWAY,
                "egress_unreachable",
                "the destination's name does not resolve",
            );
        }
    };
    let mut last = unresolved;
    for address in addresses.into_iter().take(MAX_ADDRESSES) {
        let snapshot = session.gateway.snapshot();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let request = EgressRequest {
            agent: &session.agent,
            route: &session.route,
            server: &session.server,
            session: &session.records.event.session,
            method: ask.method,
            path: ask.path,
            tunnel: ask.tunnel(),
            content: ask.content,
            host: ask.host,
            port: ask.port,
            address: address.ip(),
            source_ip: &session.source_ip,
            time: snapshot.routing.timezone.request_time(now),
            caller: &session.caller,
        };
        let decision = decide(&snapshot.authorizer, &request, session.user.as_ref());
        let decided = Decided {
            action: AddressClass::of(address.ip()).action(),
            address: address.ip(),
            policies: decision.policy_ids.clone(),
        };
        if !decision.allowed {
            if !decision.errors.is_empty() {
                tracing::warn!(route = %session.route, errors = ?decision.errors, "egress decision failed");
            }
            return deny(
                &decided,
                StatusCode::FORBIDDEN,
                "egress_denied",
                &format!(
                    "policy does not allow `{}` to {destination} ({})",
                    decided.action,
                    AddressClass::of(address.ip()).as_str()
                ),
            );
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Reached::Connected(stream, decided),
            _ => last = decided,
        }
    }
    deny(
        &last,
        StatusCode::BAD_GATEWAY,
        "egress_unreachable",
        "cannot connect to the destination",
    )
}

/// The decision as the agent and, for a session a delegated token opened,
/// as the user too: a user denial is reported as such (`user:<policy>`),
/// as on every other call.
fn decide(
    authorizer: &portcullis_policy::Authorizer,
    request: &EgressRequest<'_>,
    user: Option<&DelegatedUser>,
) -> portcullis_core::Decision {
    let agent = authorizer.decide_egress(request);
    let as_user = user
        .filter(|_| agent.allowed)
        .map(|u| authorizer.decide_egress_for_user(request, &u.sub, &u.groups));
    crate::pipeline::authorize::joined(agent, as_user)
}

/// The addresses of `host` (an address literal as itself), resolved by the
/// gateway.
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    // Only names a resolver would take: no spaces, control characters or
    // empty labels.
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !valid {
        return Err(std::io::Error::other("not a host name"));
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(r) => Ok(r?.collect()),
        Err(_) => Err(std::io::Error::other("resolution timed out")),
    }
}

/// An IPv6 literal without its URL brackets (anything else as it is).
fn unbracketed(host: &str) -> String {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string()
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// A connection's audit record (the process's fields are added by
/// [`super::stdio::Recorded::submit_record`]).
fn egress_record(
    ask: &Ask<'_>,
    decided: &Decided,
    (outcome, status, error_code): (Outcome, u16, Option<&str>),
    started: Instant,
    (bytes_in, bytes_out): (u64, u64),
) -> AuditRecord {
    let destination = ask.destination();
    let mut record = AuditRecord {
        kind: RecordKind::Egress,
        action: decided.action.to_string(),
        resource: (!destination.is_empty()).then_some(destination),
        path: (!ask.path.is_empty()).then(|| ask.path.to_string()),
        content: ask.found.to_vec(),
        outcome,
        policies: decided.policies.clone(),
        error_code: error_code.map(str::to_string),
        status,
        duration_us: started.elapsed().as_micros() as u64,
        bytes_in,
        bytes_out,
        ..AuditRecord::default()
    };
    record.process = Some(portcullis_audit::ProcessEvent {
        address: (!decided.address.is_unspecified()).then(|| decided.address.to_string()),
        method: (!ask.method.is_empty()).then(|| ask.method.to_string()),
        ..portcullis_audit::ProcessEvent::default()
    });
    record
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn bad_request(session: &EgressSession, started: Instant, message: &str) -> Response<ProxyBody> {
    let ask = Ask {
        method: "",
        path: "",
        host: "",
        port: 0,
        content: Content::NOT_SCANNED,
        found: &[],
    };
    refuse(
        session,
        &ask,
        started,
        Refused {
            status: StatusCode::BAD_REQUEST,
            code: "egress_bad_request",
            message: message.to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::{bracketed, percent_decoded, unbracketed};

    #[test]
    fn paths_are_scanned_decoded() {
        assert_eq!(percent_decoded("/k/%41KIA%2f%zz%4"), "/k/AKIA/%zz%4");
        assert_eq!(percent_decoded("/%C3%A9"), "/é");
    }

    #[test]
    fn ipv6_literals_lose_and_regain_their_brackets() {
        assert_eq!(unbracketed("[::1]"), "::1");
        assert_eq!(unbracketed("example.com"), "example.com");
        assert_eq!(unbracketed("[broken"), "[broken");
        assert_eq!(bracketed("::1"), "[::1]");
        assert_eq!(bracketed("example.com"), "example.com");
    }
}
