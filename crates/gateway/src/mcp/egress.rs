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
//! Tunnelled bytes are not read (TLS end to end): the content guard does
//! not scan them.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_policy::{AddressClass, CallerFacts, EgressRequest, SourceIp};
use tokio::net::TcpStream;

use crate::state::Gateway;

/// Longest wait for the server's sandbox to pass its listener.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a name resolution or an upstream connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections one server has open through the proxy at once.
const MAX_CONNECTIONS: usize = 64;
/// Most resolved addresses tried for one destination.
const MAX_ADDRESSES: usize = 4;
/// Headers that concern only the hop to the proxy.
const HOP_HEADERS: [&str; 8] = [
    "connection",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "te",
    "trailer",
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
        let ask = Ask {
            method: "CONNECT",
            path: "",
            host: &host,
            port,
        };
        let (upstream, decided) = match decide_and_connect(session, &ask, started).await {
            Reached::Connected(s, d) => (s, d),
            Reached::Refused(r) => return r,
        };
        let records = session.records.clone();
        let destination = format!("{}:{port}", bracketed(&host));
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
            records.submit_record(egress_record(
                &destination,
                "CONNECT",
                None,
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
    let ask = Ask {
        method: &method,
        path: &path,
        host: &host,
        port,
    };
    let (upstream, decided) = match decide_and_connect(session, &ask, started).await {
        Reached::Connected(s, d) => (s, d),
        Reached::Refused(r) => return r,
    };
    session.gateway.metrics.egress_connection(true);
    let destination = format!("{}:{port}", bracketed(&host));
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
    session.records.submit_record(egress_record(
        &destination,
        &method,
        Some(&path),
        &decided,
        outcome,
        started,
        (0, 0),
    ));
    response
}

/// Resolves, decides and connects; a refusal is audited and counted here.
async fn decide_and_connect(session: &EgressSession, ask: &Ask<'_>, started: Instant) -> Reached {
    let destination = format!("{}:{}", bracketed(ask.host), ask.port);
    let deny = |decided: &Decided, status: StatusCode, code: &'static str, message: &str| {
        session.gateway.metrics.egress_connection(false);
        session.records.submit_record(egress_record(
            &destination,
            ask.method,
            (!ask.path.is_empty()).then_some(ask.path),
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
            host: ask.host,
            port: ask.port,
            address: address.ip(),
            source_ip: &session.source_ip,
            time: snapshot.routing.timezone.request_time(now),
            caller: &session.caller,
        };
        let decision = snapshot.authorizer.decide_egress(&request);
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
    destination: &str,
    method: &str,
    path: Option<&str>,
    decided: &Decided,
    (outcome, status, error_code): (Outcome, u16, Option<&str>),
    started: Instant,
    (bytes_in, bytes_out): (u64, u64),
) -> AuditRecord {
    let mut record = AuditRecord {
        kind: RecordKind::Egress,
        action: decided.action.to_string(),
        resource: (!destination.is_empty()).then(|| destination.to_string()),
        path: path.map(str::to_string),
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
        method: Some(method.to_string()),
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
    session.gateway.metrics.egress_connection(false);
    let decided = Decided {
        action: portcullis_policy::EGRESS,
        address: IpAddr::from([0, 0, 0, 0]),
        policies: Vec::new(),
    };
    session.records.submit_record(egress_record(
        "",
        "",
        None,
        &decided,
        (Outcome::Deny, 400, Some("egress_bad_request")),
        started,
        (0, 0),
    ));
    refusal(StatusCode::BAD_REQUEST, "egress_bad_request", message)
}

#[cfg(test)]
mod tests {
    use super::{bracketed, unbracketed};

    #[test]
    fn ipv6_literals_lose_and_regain_their_brackets() {
        assert_eq!(unbracketed("[::1]"), "::1");
        assert_eq!(unbracketed("example.com"), "example.com");
        assert_eq!(unbracketed("[broken"), "[broken");
        assert_eq!(bracketed("::1"), "[::1]");
        assert_eq!(bracketed("example.com"), "example.com");
    }
}
