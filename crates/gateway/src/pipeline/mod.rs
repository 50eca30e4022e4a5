//! The request pipeline. One request flows one way through these stages; each is
//! its own module with one job. A stage either hands its typed output to the next
//! or ends the request with a [`Denial`]; none reaches back into an earlier one.
//!
//! ```text
//! accept        (listener.rs) TLS termination, connection limits, timeouts
//! decode        size limit, canonical target, header sanitisation,
//!               audit back-pressure
//! authenticate  client certificate or bound access token → live agent
//!               (oauth.rs answers /oauth2/token and /.well-known/* here instead)
//! contextualize route (resource), method (action), time, source address;
//!               then the fail-closed checks: does the shared store answer
//!               (cluster mode)? is the audit log writable?
//! contain       behavioral analytics' grade for the agent: quarantine,
//!               read-only, throttle, approval of writes (held by approve);
//!               its risk score goes on to policy
//! inspect       content guard on the request body: injection and DLP findings
//!               for policy (`context.content`), block or redact by route
//! authorize     Cedar decision: allow, or 403 naming the deciding policies
//! datasets      routes and MCP tools tagged with datasets: `read_data` on
//!               each, or 403 `dataset_denied` / `dataset_unknown`
//! approve       the allowing policies' obligations: @rate, mfa, a human's
//!               approval bound to this exact call (also when contain holds
//!               the agent's writes); redaction handed on
//! inject        routes with a credential: `use_secret` decision, value from the vault
//! forward       upstream call with timeout, streaming both ways (and payload capture)
//! inspect_out   injection in the answer (a tool output: read whole, refused
//!               on `block`), then DLP on it while it streams
//! llm           routes of kind `llm` run their own stages after contextualize:
//!               model, messages on their channels, `complete` on the model,
//!               budget, key injection, usage and DLP on the answer (llm.rs)
//! record        (record.rs) the audit record, on every path
//! ```
//!
//! **Architecture Invariant:** authenticate runs before anything that depends on
//! who is calling; nothing is forwarded without an `allow` from authorize; every
//! request — allowed, denied, failed or abandoned — produces exactly one record.
//!
//! The order is deliberate: decode comes first because its checks are cheap and
//! protect everything after it; authenticate precedes route lookup so an
//! unauthenticated caller learns nothing (not even which routes exist); inject
//! follows authorize so a caller denied the route learns nothing about its
//! secret, and no secret is decrypted for a request that will not be sent.
//! Contain runs once the route and method are known (the allow-list and
//! read-only need them) and before the body is read, so a contained agent
//! costs no scanning.
//! Inspect runs after contextualize (the route says what to scan) and before
//! authorize (policy decides with what it found); reading the body there is
//! the one place a body is buffered, and only on routes whose guard is on.

pub mod approve;
pub mod authenticate;
pub mod authorize;
pub mod contain;
pub mod contextualize;
pub mod datasets;
pub mod decide;
pub mod decode;
pub mod echo;
pub mod forward;
pub mod inject;
pub mod inspect;
pub mod inspect_out;
pub mod llm;
pub mod record;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_core::{ErrorCode, RequestId};

use crate::body::BodyMeter;
use crate::metrics::Stage;
use crate::respond::{
    Denial, DenialDetail, Presented, REQUEST_ID_HEADER, ResponseBody, error_response,
    oauth_error_response,
};
use crate::state::{ConnectionState, Gateway};
use record::{CLIENT_CLOSED, RecordedBody, Recorder};

/// The record's error code while no answer has gone out.
const CLIENT_CLOSED_CODE: &str = "client_closed";

/// Handles one data-plane request end to end. Never fails: every outcome is a response.
pub async fn handle(
    gateway: Arc<Gateway>,
    conn: Arc<ConnectionState>,
    request: Request<Incoming>,
) -> Response<RecordedBody<ResponseBody>> {
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let request_id = RequestId::new();
    let meter = Arc::new(BodyMeter::default());
    let mut recorder = Recorder::new(
        AuditRecord {
            time_ms: now.as_millis() as i64,
            kind: RecordKind::Request,
            request_id: request_id.to_string(),
            source_ip: Some(conn.remote.ip().to_string()),
            action: request.method().as_str().to_string(),
            path: Some(request.uri().path().to_string()),
            outcome: Outcome::Deny,
            // What the record says if the client goes away before we answer.
            error_code: Some(CLIENT_CLOSED_CODE.into()),
            status: CLIENT_CLOSED,
            ..AuditRecord::default()
        },
        started,
        meter.clone(),
        gateway.sink.clone(),
        gateway.metrics.clone(),
    );
    if let Some(analytics) = &gateway.analytics {
        recorder.set_tap(analytics.tap());
    }
    recorder.set_anonymous_sampler(gateway.anonymous.clone());
    if let Some(tracer) = &gateway.tracer {
        recorder.set_trace(tracer.begin(
            &request_id,
            started,
            now,
            request.headers().get(crate::trace::TRACEPARENT),
        ));
    }

    // What a refusal's answer depends on, read before the request moves on:
    // the OAuth endpoints answer in RFC 6749's shape, and a 401 challenges
    // the scheme the request used.
    let oauth_path = crate::oauth::is_oauth_path(request.uri().path());
    let presented = Presented::of(request.headers());
    // An HTTP/1.1 request body an authentication refusal leaves unread ends
    // the connection (hyper cannot reuse it); saying so in the 401 keeps
    // clients from sending their next request on it (the MCP SDK's retry
    // after the OAuth flow otherwise races the close and sees "server
    // disconnected without sending a response").
    let unread_body_closes = request.version() < http::Version::HTTP_2
        && (request
            .headers()
            .contains_key(http::header::TRANSFER_ENCODING)
            || request
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"));
    let mut response = match run(
        &gateway,
        &conn,
        request,
        &request_id,
        &meter,
        now.as_secs() as i64,
        &mut recorder,
    )
    .await
    {
        Ok(response) => {
            // An answered request has no error, except one a protocol adapter
            // put in its answer (an MCP refusal is a JSON-RPC error in a 200).
            let record = recorder.record();
            if record.error_code.as_deref() == Some(CLIENT_CLOSED_CODE) {
                record.error_code = None;
            }
            response
        }
        Err(mut denial) => {
            // `outcome` keeps the authorization result: an allowed request whose
            // upstream then failed is still "allow", with the failure's code.
            let record = recorder.record();
            record.error_code = Some(denial.code.as_str().to_string());
            let nonce = gateway.tokens.nonces.current(now.as_secs() as i64);
            if oauth_path {
                oauth_error_response(&request_id, &denial, Some(&nonce))
            } else {
                if denial.code.http_status() == 401 {
                    let mut challenge = match denial.detail.take() {
                        Some(DenialDetail::Challenge(c)) => c,
                        _ => Box::default(),
                    };
                    challenge.presented = presented;
                    challenge.nonce = Some(nonce);
                    // MCP authorization: a 401 on an MCP route names the
                    // route's protected-resource metadata (RFC 9728 §5.1).
                    challenge.resource_metadata = recorder
                        .record()
                        .path
                        .as_deref()
                        .and_then(|path| crate::oauth::resource_metadata_url(&gateway, path));
                    denial.detail = Some(DenialDetail::Challenge(challenge));
                }
                error_response(&request_id, &denial)
            }
        }
    };
    if unread_body_closes && !oauth_path && response.status() == http::StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    recorder.record().status = response.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response.map(|body| RecordedBody::new(body, recorder))
}

/// Refuses with `store_unavailable` while the shared store's heartbeat says
/// the database has been away for longer than the staleness allowed. One
/// relaxed load while it answers (always on SQLite): no IO on the request
/// path.
fn store_answers(gateway: &Gateway) -> Result<(), Denial> {
    if gateway.store.health().refuses() {
        return Err(Denial::new(
            ErrorCode::StoreUnavailable,
            "the shared store does not answer; the request was refused rather than decided from state that may be stale",
        ));
    }
    Ok(())
}

async fn run(
    gateway: &Arc<Gateway>,
    conn: &ConnectionState,
    request: Request<Incoming>,
    request_id: &RequestId,
    meter: &Arc<BodyMeter>,
    now_epoch: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    let metrics = &gateway.metrics;

    // One snapshot for the whole request, loaded once, first: it is routed,
    // limited and decided by exactly one version of the configuration, the
    // agent directory and the policies, whatever a reload swaps in meanwhile.
    let snapshot = gateway.snapshot();
    let routing = &*snapshot.routing;

    let t = Instant::now();
    let decoded = decode::run(&routing.limits, &gateway.sink, request, meter).await;
    let elapsed = t.elapsed();
    metrics.stage(Stage::Decode, elapsed);
    recorder.trace_stage(Stage::Decode, t, elapsed);
    let decoded = decoded?;
    // The record names the canonical target that is routed, decided and
    // forwarded (a refused one keeps the path as sent). Most paths are
    // canonical as sent: then the record already holds it.
    let record = recorder.record();
    if record.path.as_deref() != Some(decoded.target.path.as_str()) {
        record.path = Some(decoded.target.path.clone());
    }

    if crate::oauth::is_oauth_path(decoded.parts.uri.path()) {
        store_answers(gateway)?;
        return crate::oauth::serve(
            gateway,
            conn,
            &snapshot.directory,
            decoded,
            now_epoch,
            recorder,
        )
        .await;
    }

    let t = Instant::now();
    let identity = authenticate::run_request(
        &snapshot.directory,
        &gateway.tokens,
        &routing.routes,
        conn.peer.as_ref(),
        &decoded.parts,
        conn.remote.ip(),
        now_epoch,
    )
    .await;
    let elapsed = t.elapsed();
    metrics.stage(Stage::Authenticate, elapsed);
    recorder.trace_stage(Stage::Authenticate, t, elapsed);
    let identity = match identity {
        Ok(identity) => {
            gateway.last_seen.touch(&identity.agent, now_epoch);
            let record = recorder.record();
            record.principal = Some(identity.agent.clone());
            record.credential = Some(identity.credential.clone());
            identity
        }
        Err(failure) => {
            recorder.record().credential = failure.presented;
            return Err(failure.denial);
        }
    };
    if decoded.parts.uri.path() == crate::whoami::WHOAMI_PATH {
        let record = recorder.record();
        record.resource = Some("whoami".into());
        record.outcome = portcullis_audit::Outcome::Allow;
        return Ok(crate::whoami::respond(&identity, &snapshot.directory));
    }

    let t = Instant::now();
    let context = contextualize::run(
        &routing.routes,
        &decoded,
        conn.remote.ip(),
        now_epoch,
        &routing.timezone,
    );
    let elapsed = t.elapsed();
    metrics.stage(Stage::Contextualize, elapsed);
    recorder.trace_stage(Stage::Contextualize, t, elapsed);
    let mut context = context?;
    {
        let record = recorder.record();
        record.resource = Some(context.route.name.clone());
        record.classification = Some(context.route.classification.as_str().to_string());
    }

    // Fail closed: a replica whose shared store is away (cluster mode) does
    // not decide from snapshots older than `[store] max_staleness_ms` allows.
    store_answers(gateway)?;
    // Fail closed: a request that cannot be recorded is not served, unless its
    // route says otherwise (and then its record says so).
    if !gateway.sink.writable() {
        // A halted (tampered) log serves no route, fail-open ones included.
        if !context.route.audit_fail_open || gateway.sink.halted().is_some() {
            return Err(Denial::new(
                ErrorCode::AuditUnavailable,
                "the audit log cannot be written; the request was refused rather than served unrecorded",
            ));
        }
        recorder.record().fail_open = true;
    }

    // Two atomic loads; not timed as a stage of its own. The risk score
    // reaches policy as `context.risk` (and `use_secret`'s context).
    let mut identity = identity;
    let contained = contain::run(
        gateway.analytics.as_deref(),
        &identity.agent,
        &context,
        now_epoch,
    )?;
    identity.caller.risk = contained.risk;

    // Bounded before decided: on MCP and LLM routes, whose bodies are read
    // whole, an agent that no permit could allow anything on the route is
    // refused from the head alone, before a byte of its body is buffered.
    let route_permits = match context.route.kind {
        crate::config::RouteKind::Mcp => Some(portcullis_policy::RouteActions::Mcp),
        crate::config::RouteKind::Llm if decoded.parts.method != http::Method::GET => {
            Some(portcullis_policy::RouteActions::Model)
        }
        _ => None,
    }
    .map(|kind| {
        snapshot
            .authorizer
            .permits_on_route(&identity.agent, &context.route.name, kind)
    });
    if route_permits.as_ref().is_some_and(Vec::is_empty) {
        let policies = vec![portcullis_core::DEFAULT_DENY.to_string()];
        let record = recorder.record();
        record.policies = policies.clone();
        record.policy_version = Some(snapshot.policy_version);
        gateway.metrics.decision(&context.route.name, false);
        return Err(Denial {
            code: ErrorCode::Forbidden,
            message: "denied by policy".into(),
            policies,
            detail: None,
        });
    }

    // MCP and LLM routes: each JSON-RPC message, each model call is a call
    // of its own on the request's one exchange.
    if matches!(
        context.route.kind,
        crate::config::RouteKind::Mcp | crate::config::RouteKind::Llm
    ) {
        // The query and the headers go upstream as on HTTP routes: the
        // guard reads them here, the adapters the bodies.
        let mut decoded = decoded;
        let mut head_findings = Vec::new();
        let scanned = inspect::scan_head(
            routing.guard.as_deref(),
            &context.route,
            &mut decoded,
            request_id,
            &mut head_findings,
        );
        recorder.record().content = head_findings;
        scanned?;
        context.query.clone_from(&decoded.target.query);
        let mut ex = decide::Exchange {
            gateway,
            conn,
            snapshot: &snapshot,
            identity: &identity,
            context: &context,
            request_id,
            meter,
            recorder,
            writes: contained.writes,
            wait: approve::prefer_wait(&decoded.parts.headers),
        };
        let answer = if context.route.kind == crate::config::RouteKind::Mcp {
            crate::mcp::serve(&mut ex, decoded).await?
        } else {
            llm::run(&mut ex, decoded).await?
        };
        // Re-authorized while it streams (liveness.rs).
        return Ok(crate::liveness::watch(
            gateway,
            identity,
            &context.route,
            meter,
            answer,
        ));
    }

    let t = Instant::now();
    let mut audited = Vec::new();
    let inspected = inspect::run(
        routing.guard.as_deref(),
        &context.route,
        decoded,
        &routing.limits,
        meter,
        request_id,
        &mut audited,
    )
    .await;
    let elapsed = t.elapsed();
    metrics.stage(Stage::Inspect, elapsed);
    recorder.trace_stage(Stage::Inspect, t, elapsed);
    recorder.record().content = audited;
    let (decoded, content) = inspected?;
    // A query the guard redacted is the query from here on: decided,
    // approved, recorded and forwarded redacted (the forwarder and the
    // approval binding read it from the context).
    context.query.clone_from(&decoded.target.query);

    // The one decision path (decide.rs): Cedar as the agent (and the user
    // it acts for), shadow, the risk grade's hold, obligations, the record.
    let mut decoded = decoded;
    let wait = approve::prefer_wait(&decoded.parts.headers);
    let allowed = decide::decide(
        &mut decide::Exchange {
            gateway,
            conn,
            snapshot: &snapshot,
            identity: &identity,
            context: &context,
            request_id,
            meter,
            recorder,
            writes: contained.writes,
            wait,
        },
        decide::Call {
            ask: decide::Ask::Route,
            purpose: &context.purpose,
            content: content.as_policy(),
            write: contain::is_write(context.action),
            blocked: None,
        },
        decide::Subject::Request(&mut decoded),
    )
    .await?;

    // The vault credential decide chose and fetched, if the route has one.
    let mut allowed = allowed;
    let injected = allowed.injected.take();
    let capture = crate::capture::for_route(&context.route, gateway.captures.as_ref(), request_id);

    let traceparent = recorder.traceparent();
    let t = Instant::now();
    let response = routing
        .forwarder
        .forward(
            decoded,
            forward::Hop {
                context: &context,
                identity: &identity,
                request_id,
                remote: conn.remote,
                meter,
                injected: injected.as_ref(),
                capture,
                traceparent,
                origin_path: None,
            },
        )
        .await;
    // The decrypted value is not needed past the request head.
    drop(injected);
    let elapsed = t.elapsed();
    metrics.stage(Stage::Forward, elapsed);
    recorder.trace_stage(Stage::Forward, t, elapsed);
    // The answer is a tool output: scanned for injection as MCP answers
    // are, then redacted as it streams.
    let response = inspect_out::scan_answer(
        routing.guard.as_deref(),
        &context.route,
        routing.limits.max_body_bytes,
        request_id,
        meter,
        response?,
    )
    .await?;
    let response = inspect_out::run(
        routing.guard.as_deref(),
        &context.route,
        allowed.redact,
        request_id,
        meter,
        response,
    )?;
    // Re-authorized while it streams (liveness.rs).
    Ok(crate::liveness::watch(
        gateway,
        identity,
        &context.route,
        meter,
        response,
    ))
}
