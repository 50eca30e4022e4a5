//! The MCP protocol adapter: `kind = "mcp"` routes, MCP's Streamable HTTP
//! transport to an upstream MCP server.
//!
//! It takes over after contextualize (and the fail-closed audit check), with
//! the agent authenticated by the same stage as every request — so each
//! message on a long session is checked against the current agent directory
//! (revocation) and the current policy snapshot:
//!
//! ```text
//! POST    read the body (size limit), split JSON-RPC messages (batch or one)
//!         session check: Mcp-Session-Id must belong to this agent and route
//!         per message: method → action (jsonrpc.rs) → Cedar decision
//!           → tools/call: tool pin must be approved (pins.rs); at the
//!             agent's risk grade read-only refused, at approve-writes
//!             held for a human's approval of this exact call
//!           → with [routes.guard]: tools/call and prompts/get arguments
//!             scanned first (guard.rs): findings are `context.content`,
//!             block refuses the message, redact rewrites it
//!         refused messages become JSON-RPC errors; the rest go upstream
//!         answer: JSON (buffered only when a tools/list answer or refusals
//!         must be merged) or SSE (sse.rs: event by event, re-checked)
//!         tools/list answers: only tools that are pinned and callable
//!         with [routes.guard]: results scanned (tool-output channel, DLP)
//! GET     the server's event stream (`open_stream`), re-checked at every
//!         event, and cut at once when the agent's sessions end
//!         (revocation, quarantine); without a session, a legacy HTTP+SSE
//!         stream (legacy.rs: its `endpoint` event rewritten to the prefix)
//! DELETE  ends the session upstream and here (`end_session`)
//! ```
//!
//! Each message is decided with the protocol revision it speaks
//! (`context.revision`, `jsonrpc::revision`): 2026-07-28 (stateless,
//! `server/discover`), 2025-11-25 and 2025-06-18 side by side.
//!
//! **Architecture Invariant:** no MCP message reaches the upstream without a
//! decision of the one decision path (`pipeline/decide.rs`, obligations and
//! the risk grade included): data-carrying methods as their actions
//! (`call_tool` …), session plumbing as its own (`mcp_session` for
//! `initialize`/`ping`/`logging/setLevel`, `notify` for notifications,
//! `reply` for answers to the server's requests, `open_stream` for the
//! `GET` stream and `end_session` for `DELETE` of the agent's own session),
//! which the built-in policy `builtin:mcp-plumbing` permits to a principal
//! that some other permit names on the route, unless a `forbid` says no.
//! Unknown methods, data-carrying methods sent as notifications and
//! sub-paths of the endpoint are refused (but `/mcp`, and the message
//! endpoint a legacy stream announced to the same agent while it is open).
//! What goes upstream is the messages as parsed and decided, re-serialized,
//! with only the fields JSON-RPC defines.

mod egress;
pub mod guard;
pub mod jsonrpc;
pub mod legacy;
pub mod pins;
pub mod sessions;
pub mod sse;
pub mod stdio;
pub mod violations;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use portcullis_audit::Outcome;
use portcullis_core::{ErrorCode, RequestId};
use portcullis_policy::{Content, McpAction, SourceIp};
use serde_json::Value;

use crate::body::BodyMeter;
use crate::buffers;
use crate::config::Upstream;
use crate::metrics::Stage;
use crate::pipeline::authenticate::Identity;
use crate::pipeline::contain;
use crate::pipeline::contextualize::RequestContext;
use crate::pipeline::decide;
use crate::pipeline::decode::{Buffered, DecodedRequest, RequestBody, read_whole};
use crate::pipeline::inspect::{ContentFacts, GuardState};
use crate::respond::{Denial, ResponseBody, full};
use crate::state::{Gateway, Snapshot};

use jsonrpc::{Ask, Kind};
use pins::{PinState, ToolPins};
use sessions::Sessions;

/// The session header of the Streamable HTTP transport.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// The sub-path served as the endpoint too (MCP Inspector 0.15 appends it).
pub const INSPECTOR_SUFFIX: &str = "/mcp";

/// Largest JSON answer the gateway buffers to filter or merge.
pub const MAX_JSON_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The MCP adapter's state: tool pins and live sessions.
#[derive(Debug)]
pub struct McpState {
    /// Pinned tool definitions.
    pub pins: ToolPins,
    /// Sessions and the agents that own them.
    pub sessions: Sessions,
    /// Processes of `stdio:` routes, by session.
    pub stdio: stdio::StdioServers,
    /// Message endpoints announced on open legacy HTTP+SSE streams.
    pub legacy: Arc<legacy::LegacyEndpoints>,
}

impl McpState {
    /// Ends every live session whose (agent, route) `keep` rejects: the
    /// session ids are refused from now on, and the stdio processes of the
    /// sessions are stopped. The one path for revocation (`Gateway::reload`)
    /// and quarantine (analytics); their open event streams are cut by the
    /// same callers through `crate::liveness`.
    pub fn end_sessions(&self, keep: impl Fn(&str, &str) -> bool, why: &'static str) -> usize {
        self.legacy.end_where(&keep);
        let ended = self.sessions.end_where(keep);
        for e in &ended {
            self.stdio.end(&e.id);
            tracing::info!(route = %e.route, why, "MCP session ended");
        }
        ended.len()
    }
}

/// Who is asking, for decisions made while the answer streams back.
#[derive(Clone)]
struct Asker {
    gateway: Arc<Gateway>,
    /// The request's routing (its snapshot's): guard, limits, forwarder.
    routing: Arc<crate::routing::Routing>,
    identity: Identity,
    context: RequestContext,
    source_ip: SourceIp,
}

impl Asker {
    /// A decision with no obligations (listing filters): the same Cedar
    /// decision the one decision path makes, the user's included, and the
    /// `read_data` decisions on the datasets the call would read (a tool
    /// over a dataset the agent may not read for `purpose` is not listed).
    fn decide(
        &self,
        snapshot: &Snapshot,
        (method, revision, purpose): (&str, &str, &str),
        action: McpAction,
        target: &str,
    ) -> portcullis_core::Decision {
        let call = decide::Call {
            ask: decide::Ask::Mcp {
                action,
                method,
                revision,
                target,
                args: &[],
            },
            purpose,
            content: Content::NOT_SCANNED,
            write: false,
            blocked: None,
        };
        let decision = crate::pipeline::authorize::run(
            &snapshot.authorizer,
            &self.identity,
            &self.context,
            &self.source_ip,
            &call,
        );
        let datasets = crate::pipeline::datasets::tagged(&self.context.route, &call.ask);
        if !decision.allowed || datasets.is_empty() {
            return decision;
        }
        let verdict = crate::pipeline::datasets::authorize(
            &snapshot.authorizer,
            &self.identity,
            &self.context,
            &self.source_ip,
            &call,
            &datasets,
        );
        crate::pipeline::datasets::folded(decision, Some(&verdict))
    }

    /// Whether the agent is still live in the current snapshot and not
    /// quarantined (outside the quarantine allow-list).
    fn alive(&self) -> bool {
        let quarantined = self
            .gateway
            .analytics
            .as_deref()
            .is_some_and(|a| a.shuts_out(&self.identity.agent, &self.context.route.name));
        !quarantined
            && self
                .gateway
                .snapshot()
                .directory
                .check_agent(&self.identity.agent)
                .is_ok()
    }

    /// The content guard, when this route's `[routes.guard]` turns it on;
    /// `None` keeps other routes free of any parsing or scanning.
    fn guard(&self) -> Option<&GuardState> {
        let settings = self.context.route.guard;
        self.routing
            .guard
            .as_deref()
            .filter(|_| settings.scans_requests())
    }

    /// The rewrite that scans the server's answers, when the route's guard
    /// is on or a deciding permit obliges redaction (`redact`: DLP redacts
    /// whatever the route says).
    fn answer_guard(
        &self,
        request_id: &RequestId,
        meter: &Arc<BodyMeter>,
        redact: bool,
    ) -> Option<sse::Rewrite> {
        let mut settings = self.context.route.guard;
        if redact {
            settings.dlp = crate::config::DlpAction::Redact;
        }
        if !settings.scans_requests() {
            return None;
        }
        let state = self.routing.guard.clone()?;
        let route = self.context.route.name.clone();
        let request_id = request_id.clone();
        let meter = meter.clone();
        Some(Box::new(move |message: &mut Value| {
            guard::scan_answer(&state, settings, message, &request_id, &route, &meter)
        }))
    }

    /// Keeps in a `tools/list` result only the tools whose pin is approved and
    /// which the agent may call. Decided with the current snapshot, with no
    /// arguments (`context.args` empty, `context.method` "tools/list",
    /// `context.revision` the list request's). The answer is this agent's
    /// alone: a 2026-07-28 `cacheScope` becomes "private", so no shared
    /// cache hands it to another client.
    fn filter_tools(&self, mcp: &McpState, result: &mut Value, (revision, purpose): (&str, &str)) {
        if let Some(scope) = result.get_mut("cacheScope") {
            *scope = Value::from("private");
        }
        let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
            return;
        };
        let snapshot = self.gateway.snapshot();
        let route = &self.context.route.name;
        tools.retain(|tool| {
            let pinned = mcp.pins.observe(route, tool) == PinState::Approved;
            let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
            pinned
                && self
                    .decide(
                        &snapshot,
                        ("tools/list", revision, purpose),
                        McpAction::CallTool,
                        name,
                    )
                    .allowed
        });
    }
}

/// Serves one request on an MCP route, on the request's exchange.
pub async fn serve(
    ex: &mut decide::Exchange<'_>,
    decoded: DecodedRequest,
) -> Result<Response<ResponseBody>, Denial> {
    let (gateway, conn, identity, context) = (ex.gateway, ex.conn, ex.identity, ex.context);
    let (request_id, meter) = (ex.request_id, ex.meter);
    let Some(mcp) = gateway.mcp.clone() else {
        tracing::error!(route = %context.route.name, "MCP route without MCP state");
        return Err(Denial::new(ErrorCode::Internal, "internal error"));
    };
    // Only the endpoint is proxied: a sub-path is no part of MCP, and no
    // decision covers what the server would do with it — except the
    // message endpoint a legacy HTTP+SSE stream of this agent announced
    // (legacy.rs), which takes POSTs of messages decided like any other.
    let mut legacy_target = None;
    // `<prefix>/mcp` is the endpoint too: MCP Inspector 0.15 appends `/mcp`
    // to the URL it is given.
    let inspector_alias = context.rest_path == INSPECTOR_SUFFIX;
    if !(context.rest_path.is_empty() || context.rest_path == "/" || inspector_alias) {
        let rest = match &context.query {
            Some(q) => format!("{}?{q}", context.rest_path),
            None => context.rest_path.clone(),
        };
        legacy_target = (decoded.parts.method == Method::POST)
            .then(|| {
                mcp.legacy
                    .target(&identity.agent, &context.route.name, &rest)
            })
            .flatten();
        if legacy_target.is_none() {
            return Err(Denial::new(
                ErrorCode::NotFound,
                format!(
                    "an MCP route serves one endpoint, `{}` (and the message endpoint its legacy HTTP+SSE stream announced, while it is open)",
                    context.route.path_prefix
                ),
            ));
        }
    }
    let session = decoded
        .parts
        .headers
        .get(SESSION_HEADER)
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| Denial::new(ErrorCode::BadRequest, "invalid Mcp-Session-Id header"))?;
    if let Some(id) = &session
        && !mcp.sessions.owns(id, &identity.agent, &context.route.name)
    {
        return Err(Denial::new(
            ErrorCode::McpSessionNotFound,
            "no such MCP session for this agent; start a new one with `initialize`",
        ));
    }
    let mut asker = Asker {
        gateway: gateway.clone(),
        routing: ex.snapshot.routing.clone(),
        identity: identity.clone(),
        context: context.clone(),
        source_ip: conn.source_ip.clone(),
    };
    if inspector_alias {
        // Forwarded to the server's endpoint, as the prefix itself is.
        asker.context.rest_path = String::new();
    }
    let launched = match &asker.context.route.upstream {
        Upstream::Stdio { program, args } => Some((program.clone(), args.clone())),
        _ => None,
    };
    match (decoded.parts.method.clone(), launched) {
        (Method::POST, launched) => {
            let to = match (&launched, legacy_target) {
                (_, Some(target)) => To::Legacy(target),
                (Some((program, args)), None) => To::Stdio {
                    program,
                    args,
                    session: session.as_deref(),
                },
                (None, None) => To::Http,
            };
            post(ex, &mcp, &asker, decoded, to).await
        }
        (Method::GET, None) if session.is_none() => open_legacy(ex, &mcp, &asker, decoded).await,
        (Method::GET | Method::DELETE, launched) => {
            // The event stream and the session's end belong to a session this
            // agent opened on this route (checked above): never served
            // without one, and each is decided as its own action.
            let id = session.as_deref().ok_or_else(no_session)?;
            let deleting = decoded.parts.method == Method::DELETE;
            let action = match deleting {
                true => McpAction::EndSession,
                false => McpAction::OpenStream,
            };
            let allowed = decide_session(ex, &decoded.parts, action).await?;
            let mut decoded = decoded;
            if allowed.redact {
                // The redactor reads the stream only as the server sends it plain.
                decoded.parts.headers.remove(header::ACCEPT_ENCODING);
            }
            let response = match (deleting, launched) {
                (true, Some(_)) => {
                    mcp.stdio.end(id);
                    mcp.sessions.end(id);
                    return Ok(empty(StatusCode::OK));
                }
                (true, None) => {
                    let response =
                        upstream(ex, &asker, decoded, Content::NOT_SCANNED, None).await?;
                    if response.status().is_success() {
                        mcp.sessions.end(id);
                    }
                    return Ok(response);
                }
                (false, Some(_)) => mcp.stdio.events(id)?,
                (false, None) => upstream(ex, &asker, decoded, Content::NOT_SCANNED, None).await?,
            };
            if allowed.redact && !redactable(&response) {
                return Err(decide::unsupported(
                    "redact",
                    "the MCP server's event stream is compressed or not an event stream",
                ));
            }
            let scan = asker.answer_guard(request_id, meter, allowed.redact);
            Ok(stream_back(&asker, response, Vec::new(), scan))
        }
        _ => Err(Denial::new(
            ErrorCode::MethodNotAllowed,
            "an MCP endpoint takes POST, GET and DELETE",
        )),
    }
}

/// Where a POST's messages go.
enum To<'a> {
    /// The route's Streamable HTTP server, through the forwarder.
    Http,
    /// The message endpoint a legacy HTTP+SSE server announced; answers and
    /// refusals go on its stream.
    Legacy(legacy::Target),
    /// A process the gateway launched for the session.
    Stdio {
        program: &'a str,
        args: &'a [String],
        session: Option<&'a str>,
    },
}

/// `GET` without a session: a legacy HTTP+SSE client opening its stream
/// (MCP 2024-11-05), decided as `open_stream`. A server of that transport
/// answers an event stream whose `endpoint` event is rewritten to the route
/// prefix (legacy.rs); any other answer (a Streamable HTTP server's 400 or
/// 405) goes back as it came.
async fn open_legacy(
    ex: &mut decide::Exchange<'_>,
    mcp: &Arc<McpState>,
    asker: &Asker,
    mut decoded: DecodedRequest,
) -> Result<Response<ResponseBody>, Denial> {
    let Upstream::Url {
        scheme,
        authority,
        base_path,
    } = &asker.context.route.upstream
    else {
        return Err(no_session());
    };
    let allowed = decide_session(ex, &decoded.parts, McpAction::OpenStream).await?;
    // The endpoint event and the answers are read on the way back.
    decoded.parts.headers.remove(header::ACCEPT_ENCODING);
    let response = upstream(ex, asker, decoded, Content::NOT_SCANNED, None).await?;
    if !is_event_stream(&response) {
        return Ok(response);
    }
    let stream_path = format!("{base_path}{}", asker.context.rest_path);
    let (announcer, injected) = legacy::Announcer::new(
        mcp.legacy.clone(),
        (&asker.identity.agent, &asker.context.route.name),
        &asker.context.route.path_prefix,
        if stream_path.is_empty() {
            "/"
        } else {
            &stream_path
        },
        format!("{scheme}://{authority}"),
    );
    // A tools/list answer is known here only by its shape (its request went
    // on another connection): every result listing tools is filtered.
    let filter = {
        let (mcp, asker) = (mcp.clone(), asker.clone());
        Box::new(move |message: &mut Value| match message.get_mut("result") {
            Some(result) if result.get("tools").is_some_and(Value::is_array) => {
                // The listing's request (and its purpose) is not known
                // here: tools over datasets are decided without one.
                asker.filter_tools(&mcp, result, (jsonrpc::HEADERLESS_REVISION, ""));
                true
            }
            _ => false,
        }) as sse::Rewrite
    };
    let scan = asker.answer_guard(ex.request_id, ex.meter, allowed.redact);
    let rewrite = match scan {
        Some(scan) => Box::new(move |message: &mut Value| {
            let filtered = filter(message);
            scan(message) || filtered
        }) as sse::Rewrite,
        None => filter,
    };
    let endpoint: sse::EndpointRewrite = Box::new(move |data: &str| announcer.rewrite(data));
    Ok(stream_back_with(
        asker,
        response,
        (Vec::new(), None),
        Some(rewrite),
        Some((endpoint, injected)),
    ))
}

fn is_event_stream(response: &Response<ResponseBody>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"))
}

/// Decides `GET` (`open_stream`) or `DELETE` (`end_session`) on the agent's
/// own session through the one decision path, on the route, with the HTTP
/// method as `context.method`; the record names it `mcp:GET`/`mcp:DELETE`.
async fn decide_session(
    ex: &mut decide::Exchange<'_>,
    parts: &http::request::Parts,
    action: McpAction,
) -> Result<decide::Allowed, Denial> {
    let method = parts.method.as_str();
    {
        let record = ex.recorder.record();
        record.action = format!("mcp:{method}");
        record.resource = Some(ex.context.route.name.clone());
    }
    let revision = jsonrpc::revision(&Value::Null, mirrored(&parts.headers))
        .map_err(|refused| Denial::new(ErrorCode::BadRequest, refused.message))?;
    decide::decide(
        ex,
        decide::Call {
            ask: decide::Ask::Mcp {
                action,
                method,
                revision,
                target: "",
                args: &[],
            },
            purpose: "",
            content: Content::NOT_SCANNED,
            write: false,
            blocked: None,
        },
        decide::Subject::Mcp {
            parts,
            arguments: &Value::Null,
        },
    )
    .await
}

/// The headers MCP mirrors from a request's body.
fn mirrored(headers: &http::HeaderMap) -> jsonrpc::Mirrored<'_> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    jsonrpc::Mirrored {
        version: get("mcp-protocol-version"),
        method: get("mcp-method"),
        name: get("mcp-name"),
    }
}

fn no_session() -> Denial {
    Denial::new(
        ErrorCode::BadRequest,
        "an Mcp-Session-Id is required: send `initialize` first",
    )
}

/// One POST: JSON-RPC messages in, their answers out.
async fn post(
    ex: &mut decide::Exchange<'_>,
    mcp: &Arc<McpState>,
    asker: &Asker,
    decoded: DecodedRequest,
    to: To<'_>,
) -> Result<Response<ResponseBody>, Denial> {
    let (request_id, meter) = (ex.request_id, ex.meter);
    let DecodedRequest { parts, body, .. } = decoded;
    let Buffered { bytes, mut lease } = read_whole(body, &asker.routing.limits, meter).await?;
    // The parsed copy is leased too, before it is made.
    lease.grow(buffers::json_cost(&bytes))?;
    let parsed = jsonrpc::parse(&bytes);
    // Decided and forwarded from here on is the parsed form, never the bytes.
    drop(bytes);
    let mut body = match parsed {
        Ok(body) => body,
        Err(framing) => {
            ex.recorder.record().error_code = Some(framing.code.as_str().into());
            return Ok(json_answer(
                StatusCode::BAD_REQUEST,
                &jsonrpc::framing_error(&framing, request_id.as_str()),
            ));
        }
    };

    // Decide every message.
    let route = &asker.context.route.name;
    let mut forward = Vec::with_capacity(body.messages.len());
    let mut refusals = Vec::new();
    let mut list_ids = Vec::new();
    let mut list_revision = String::new();
    let mut discover_ids = Vec::new();
    // Whether a message was refused for its revision or mirrored headers
    // (answered 400 when nothing goes on, as a 2026-07-28 server does).
    let mut revision_refused = false;
    let mirrored = mirrored(&parts.headers);
    let mut initialize = false;
    let mut first_code: Option<ErrorCode> = None;
    let mut described: Option<(String, String)> = None;
    // Whether a deciding permit obliges the answers to be redacted.
    let mut redact = false;
    // The content guard reads each message's arguments before its decision,
    // as inspect-in reads an HTTP body before authorize.
    let guard = asker.guard();
    let mut audited = Vec::new();
    // What the guard found in the messages that go on: `context.content`
    // of the `use_secret` decision for the route's credential.
    let mut forwarded = ContentFacts::default();
    if body.batch {
        let record = ex.recorder.record();
        record.action = format!("mcp:batch({})", body.messages.len());
        record.resource = Some(route.clone());
    }
    for i in 0..body.messages.len() {
        let scanned = guard.and_then(|state| {
            guard::scan_request(
                state,
                asker.context.route.guard,
                &mut body.messages[i],
                request_id,
                route,
                &mut audited,
            )
        });
        // Only the fields JSON-RPC defines go on: an extra top-level field is
        // something no decision looked at.
        jsonrpc::strip_unknown_fields(&mut body.messages[i]);
        let message = &body.messages[i];
        let mut refuse = |id: &Value, code: ErrorCode, text: &str, p: &[String]| {
            first_code.get_or_insert(code);
            refusals.push(jsonrpc::refusal(id, code, text, request_id.as_str(), p));
        };
        let kind = match jsonrpc::kind(message) {
            Ok(kind) => kind,
            Err(e) => {
                let id = message.get("id").cloned().unwrap_or(Value::Null);
                refuse(&id, ErrorCode::BadRequest, &e, &[]);
                continue;
            }
        };
        let revision = match jsonrpc::revision(message, mirrored) {
            Ok(revision) => revision,
            Err(refused) => {
                first_code.get_or_insert(ErrorCode::BadRequest);
                revision_refused = true;
                let id = message.get("id").cloned().unwrap_or(Value::Null);
                refusals.push(jsonrpc::revision_refusal(
                    &id,
                    &refused,
                    request_id.as_str(),
                ));
                continue;
            }
        };
        let purpose = match crate::purpose::of_message(message) {
            Ok(purpose) => purpose,
            Err(e) => {
                let id = message.get("id").cloned().unwrap_or(Value::Null);
                refuse(&id, ErrorCode::BadRequest, &e, &[]);
                continue;
            }
        };
        // Every message is decided, session plumbing too: a client's answer
        // to the server is `reply`, `initialize`/`ping` are `mcp_session`,
        // notifications `notify` (allowed by `builtin:mcp-plumbing` unless
        // a policy forbids them).
        let (id, method, ask) = match kind {
            Kind::Response => (None, "", Ok(Ask::plumbing(McpAction::Reply))),
            Kind::Request { id, method } => (
                Some(id),
                method,
                jsonrpc::ask(method, message.get("params")),
            ),
            Kind::Notification { method } => {
                (None, method, jsonrpc::ask(method, message.get("params")))
            }
        };
        let Ask {
            action,
            target,
            args,
            arguments,
        } = match ask {
            Ok(ask) => ask,
            Err(e) => {
                // A notification gets no answer: it is dropped.
                if let Some(id) = id {
                    refuse(id, e.code, &e.message, &[]);
                }
                continue;
            }
        };
        // The record's name of the message: its method, or `reply`.
        let label = if method.is_empty() {
            action.as_str()
        } else {
            method
        };
        let resource = if target.is_empty() {
            route.clone()
        } else {
            format!("{route}/{target}")
        };
        if let Some(denial) = scanned.as_ref().and_then(|s| s.blocked.as_ref()) {
            described.get_or_insert((label.to_string(), resource));
            // A notification gets no answer: it is dropped.
            if let Some(id) = id {
                refuse(id, denial.code, &denial.message, &denial.policies);
            }
            continue;
        }
        let content = match &scanned {
            Some(s) => s.facts.as_policy(),
            None => Content::NOT_SCANNED,
        };
        // A data-carrying method sent as a notification (no id, or a null
        // id) would run with no answer to carry a refusal: never forwarded.
        if id.is_none() && !action.is_plumbing() {
            described.get_or_insert((label.to_string(), resource));
            first_code.get_or_insert(ErrorCode::McpMethodNotAllowed);
            continue;
        }
        // A tool whose definition is not approved is refused after policy
        // allowed the call, before a human is asked to approve it.
        let blocked = (action == McpAction::CallTool)
            .then(|| mcp.pins.state(route, &target))
            .filter(|state| *state != PinState::Approved);
        // What a human approves is the tool and its canonical arguments:
        // the ones policy decided on and the server receives.
        let bound = arguments.as_ref().unwrap_or(&Value::Null);
        // The record names the call before `decide` may make an intent of it
        // durable: after a crash that intent is the call's only record.
        if !body.batch {
            let record = ex.recorder.record();
            record.action = format!("mcp:{label}");
            record.resource = Some(resource.clone());
        }
        described.get_or_insert((label.to_string(), resource));
        let decided = decide::decide(
            ex,
            decide::Call {
                ask: decide::Ask::Mcp {
                    action,
                    method,
                    revision,
                    target: &target,
                    args: &args,
                },
                purpose,
                content,
                write: contain::is_mcp_write(action),
                blocked: blocked
                    .map(|state| Denial::new(ErrorCode::ToolBlocked, state.reason(&target))),
            },
            decide::Subject::Mcp {
                parts: &parts,
                arguments: bound,
            },
        )
        .await;
        match decided {
            Err(denial) => {
                first_code.get_or_insert(denial.code);
                // A notification or an answer gets no answer: it is dropped.
                if let Some(id) = id {
                    refusals.push(jsonrpc::denial(id, &denial, request_id.as_str()));
                }
                continue;
            }
            Ok(allowed) => redact |= allowed.redact,
        }
        if let Some(scanned) = &scanned {
            merge_facts(&mut forwarded, &scanned.facts);
        }
        initialize |= method == "initialize";
        if action == McpAction::ListTools
            && let Some(id) = id
        {
            // Each listing is filtered for the purpose it declared.
            list_ids.push((id.clone(), purpose.to_string()));
            list_revision = revision.to_string();
        }
        if method == "server/discover"
            && let Some(id) = id
        {
            discover_ids.push(id.clone());
        }
        // The server gets the canonical arguments policy decided on.
        jsonrpc::set_arguments(&mut body.messages[i], arguments);
        forward.push(i);
    }
    {
        let record = ex.recorder.record();
        record.policies.sort();
        record.policies.dedup();
        // After what the guard found in the request's head (pipeline/mod.rs).
        record.content.extend(audited);
        if body.batch {
            // Named before the loop.
        } else if let Some((method, resource)) = described {
            record.action = format!("mcp:{method}");
            record.resource = Some(resource);
        }
        match first_code {
            None => record.outcome = Outcome::Allow,
            Some(code) => {
                record.outcome = Outcome::Deny;
                record.error_code = Some(code.as_str().to_string());
            }
        }
    }

    if let To::Legacy(target) = &to {
        // The client reads every answer on its stream, refusals too; the
        // POST itself is only acknowledged.
        for refusal in refusals.drain(..) {
            if target.inject.try_send(refusal).is_err() {
                tracing::warn!(route = %route, "legacy MCP stream closed or not read; a refusal was dropped");
            }
        }
    }
    if forward.is_empty() {
        if matches!(to, To::Legacy(_)) {
            return Ok(empty(StatusCode::ACCEPTED));
        }
        return Ok(match refusals.len() {
            0 => empty(StatusCode::ACCEPTED),
            _ if body.batch => json_answer(StatusCode::OK, &Value::Array(refusals)),
            _ if revision_refused => json_answer(StatusCode::BAD_REQUEST, &refusals[0]),
            _ => json_answer(StatusCode::OK, &refusals[0]),
        });
    }

    // The requests going up (not notifications): an event stream that
    // breaks off owes each of them an answer (sse.rs).
    let open: Vec<Value> = forward
        .iter()
        .filter_map(|&i| {
            let m = &body.messages[i];
            m.get("method").and(m.get("id")).cloned()
        })
        .collect();
    let response = match &to {
        &To::Stdio {
            program,
            args,
            session,
        } => {
            if session.is_none() && !initialize {
                return Err(no_session());
            }
            let kept: Vec<&Value> = forward.iter().map(|&i| &body.messages[i]).collect();
            let t = Instant::now();
            let route_config = &asker.context.route;
            let launch = stdio::Launch {
                route,
                command: (program, args),
                sandbox: route_config.sandbox.as_ref(),
                agent: &asker.identity.agent,
                request_id: request_id.clone(),
                classification: route_config.classification.as_str(),
                sink: &asker.gateway.sink,
                tap: asker.gateway.analytics.as_ref().map(|a| a.tap()),
                gateway: &asker.gateway,
                source_ip: &asker.source_ip,
                caller: &asker.identity.caller,
                user: asker.identity.delegated.as_ref(),
            };
            let response = mcp
                .stdio
                .post(
                    launch,
                    session,
                    &kept,
                    body.batch,
                    asker.routing.forwarder.timeout(),
                )
                .await;
            let elapsed = t.elapsed();
            asker.gateway.metrics.stage(Stage::Forward, elapsed);
            ex.recorder.trace_stage(Stage::Forward, t, elapsed);
            response?
        }
        To::Http | To::Legacy(_) => {
            // Always the messages as parsed and decided, re-serialized: never
            // the client's bytes, which could say something else to another
            // parser (a duplicate key, a field no decision looked at).
            let kept: Vec<&Value> = forward.iter().map(|&i| &body.messages[i]).collect();
            let text = match kept.as_slice() {
                [one] if !body.batch => serde_json::to_vec(one),
                _ => serde_json::to_vec(&kept),
            };
            let upstream_body =
                Bytes::from(text.map_err(|_| Denial::new(ErrorCode::Internal, "internal error"))?);
            // The serialization is what goes on: the parsed copy goes, and
            // only the bytes forwarded stay leased.
            drop(kept);
            body.messages = Vec::new();
            lease.shrink_to(upstream_body.len() as u64);
            let origin_path = match &to {
                To::Legacy(target) => Some(target.upstream.as_str()),
                _ => None,
            };
            let response = forward_http(
                ex,
                asker,
                parts,
                Buffered::into_body(upstream_body, lease),
                (forwarded.as_policy(), origin_path),
            )
            .await?;
            if origin_path.is_some() {
                // Answers come on the stream, filtered and guarded there.
                return Ok(response);
            }
            response
        }
    };
    if redact && !redactable(&response) {
        return Err(decide::unsupported(
            "redact",
            "the MCP server's answer is compressed or neither JSON nor an event stream",
        ));
    }
    let scan = asker.answer_guard(request_id, meter, redact);
    answer(
        mcp,
        asker,
        response,
        Merge {
            refusals,
            list_ids,
            list_revision,
            discover_ids,
            initialize,
            batch: body.batch,
            scan,
            open: (open, request_id.as_str().to_string(), meter.clone()),
        },
    )
    .await
}

/// What the guard found in a message, added to what it found in the others
/// of the request: the highest score, every finding.
fn merge_facts(all: &mut ContentFacts, one: &ContentFacts) {
    all.scanned |= one.scanned;
    all.injection_score = all.injection_score.max(one.injection_score);
    all.injection_flagged |= one.injection_flagged;
    for finding in &one.findings {
        if !all.findings.contains(finding) {
            all.findings.push(finding);
        }
    }
}

/// Forwards the allowed messages to a Streamable HTTP server.
async fn forward_http(
    ex: &mut decide::Exchange<'_>,
    asker: &Asker,
    mut parts: http::request::Parts,
    upstream_body: RequestBody,
    (content, origin_path): (Content<'_>, Option<&str>),
) -> Result<Response<ResponseBody>, Denial> {
    // The guard (and the tools/list filter) read the answers: they must come
    // back uncompressed. JSON-RPC answers are small; nothing is lost.
    parts.headers.remove(header::ACCEPT_ENCODING);
    if let Some(length) = upstream_body.size_hint().exact() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let decoded = DecodedRequest {
        parts,
        body: upstream_body,
        // The forwarder reads the path and query from the context.
        target: crate::target::CanonicalTarget {
            path: asker.context.path.clone(),
            query: asker.context.query.clone(),
        },
    };
    upstream(ex, asker, decoded, content, origin_path).await
}

/// What the gateway merges into an upstream answer.
struct Merge {
    /// The refusals of messages that were not forwarded.
    refusals: Vec<Value>,
    /// The ids of `tools/list` requests, whose results are filtered, with
    /// the purpose each declared.
    list_ids: Vec<(Value, String)>,
    /// The revision the `tools/list` requests spoke.
    list_revision: String,
    /// The ids of `server/discover` requests, whose versions are filtered.
    discover_ids: Vec<Value>,
    /// Whether an `initialize` went up (its answer binds the session).
    initialize: bool,
    /// Whether the client sent a batch (the answer is then an array).
    batch: bool,
    /// The content guard on the results, when it is on.
    scan: Option<sse::Rewrite>,
    /// The ids of the requests that went up, the request's id and its
    /// meter: an event stream that breaks off answers the open ones.
    open: Open,
}

/// The upstream's answer to a POST, with the gateway's refusals merged in,
/// `tools/list` results filtered and, with `scan`, results guarded.
async fn answer(
    mcp: &Arc<McpState>,
    asker: &Asker,
    response: Response<ResponseBody>,
    merge: Merge,
) -> Result<Response<ResponseBody>, Denial> {
    let Merge {
        refusals,
        list_ids,
        list_revision,
        discover_ids,
        initialize,
        batch,
        scan,
        open,
    } = merge;
    let identity = &asker.identity;
    let route = &asker.context.route.name;
    if initialize
        && response.status().is_success()
        && let Some(id) = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        && !mcp.sessions.bind(id, &identity.agent, route)
    {
        tracing::warn!(route = %route, "MCP session table full or session id reused; session refused");
        return Err(Denial::new(
            ErrorCode::Unavailable,
            "the gateway cannot take more MCP sessions; retry later",
        ));
    }

    let list_filter = (!list_ids.is_empty() || !discover_ids.is_empty()).then(|| {
        let mcp = mcp.clone();
        let asker = asker.clone();
        Box::new(move |message: &mut Value| {
            let Some(id) = message.get("id") else {
                return false;
            };
            let listed = list_ids
                .iter()
                .find(|(listed, _)| listed == id)
                .map(|(_, purpose)| purpose.clone());
            let discovered = discover_ids.contains(id);
            match (message.get_mut("result"), listed) {
                (Some(result), Some(purpose)) => {
                    asker.filter_tools(&mcp, result, (&list_revision, &purpose));
                    true
                }
                (Some(result), None) if discovered => {
                    jsonrpc::filter_discover(result);
                    true
                }
                _ => false,
            }
        }) as sse::Rewrite
    });
    let guarded = scan.is_some();
    let rewrite = match (list_filter, scan) {
        (Some(filter), Some(scan)) => Some(Box::new(move |message: &mut Value| {
            // Both run: the filter on tools/list results, the guard on the rest.
            let filtered = filter(message);
            scan(message) || filtered
        }) as sse::Rewrite),
        (one, other) => one.or(other),
    };

    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("text/event-stream") {
        return Ok(stream_back_with(
            asker,
            response,
            (refusals, Some(open)),
            rewrite,
            None,
        ));
    }
    let is_json = content_type.starts_with("application/json");
    if is_json && (rewrite.is_some() || !refusals.is_empty()) {
        return merge_json(response, refusals, rewrite, batch).await;
    }
    if !refusals.is_empty() && !is_json {
        // The upstream had nothing to say (202 to notifications and answers):
        // the client still gets its refusals.
        return Ok(json_answer(StatusCode::OK, &Value::Array(refusals)));
    }
    match rewrite {
        // Neither JSON nor an event stream (an error page, plain text): the
        // guard reads it as one text too.
        Some(rewrite) if guarded && !is_json => guard_other(response, rewrite).await,
        _ => Ok(response),
    }
}

/// Scans an answer that is neither JSON nor an event stream as one text:
/// redacted in place, or replaced by the guard's refusal. One that is not
/// UTF-8 cannot be read and is not sent.
async fn guard_other(
    response: Response<ResponseBody>,
    rewrite: sse::Rewrite,
) -> Result<Response<ResponseBody>, Denial> {
    let (mut parts, body) = response.into_parts();
    let bytes = collect_limited(body, MAX_JSON_ANSWER_BYTES)
        .await
        .ok_or_else(|| {
            Denial::new(
                ErrorCode::UpstreamUnavailable,
                "the MCP server's answer could not be read",
            )
        })?;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Err(Denial::new(
            ErrorCode::ContentUnscannable,
            "the MCP server's answer is not text, so the content guard cannot read it",
        ));
    };
    let mut message = Value::String(text.to_string());
    if !rewrite(&mut message) {
        return Ok(Response::from_parts(parts, full(bytes)));
    }
    match message {
        Value::String(text) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
            Ok(Response::from_parts(parts, full(text)))
        }
        refusal => Ok(json_answer(StatusCode::OK, &refusal)),
    }
}

/// Sends a request upstream through the shared forwarder, with the route's
/// vault credential (one `use_secret` decision per request to the server,
/// `content` what the guard found in the messages it carries) and payload
/// capture.
async fn upstream(
    ex: &mut decide::Exchange<'_>,
    asker: &Asker,
    decoded: DecodedRequest,
    content: Content<'_>,
    origin_path: Option<&str>,
) -> Result<Response<ResponseBody>, Denial> {
    let injected = decide::credential(ex, content)?;
    let capture = crate::capture::for_route(
        &asker.context.route,
        asker.gateway.captures.as_ref(),
        ex.request_id,
    );
    let recorder = &mut *ex.recorder;
    let traceparent = recorder.traceparent();
    let t = Instant::now();
    let response = asker
        .routing
        .forwarder
        .forward(
            decoded,
            crate::pipeline::forward::Hop {
                context: &asker.context,
                identity: ex.identity,
                request_id: ex.request_id,
                remote: ex.conn.remote,
                meter: ex.meter,
                injected: injected.as_ref(),
                capture,
                traceparent,
                origin_path,
            },
        )
        .await;
    // The decrypted value is not needed past the request head.
    drop(injected);
    let elapsed = t.elapsed();
    asker.gateway.metrics.stage(Stage::Forward, elapsed);
    recorder.trace_stage(Stage::Forward, t, elapsed);
    response
}

/// An event-stream answer goes back through [`sse::SseBody`]; anything else as is.
fn stream_back(
    asker: &Asker,
    response: Response<ResponseBody>,
    first: Vec<Value>,
    rewrite: Option<sse::Rewrite>,
) -> Response<ResponseBody> {
    stream_back_with(asker, response, (first, None), rewrite, None)
}

/// The requests an event stream answers, the request's id and its meter
/// (see [`sse::SseBody::answering`]).
type Open = (Vec<Value>, String, Arc<crate::body::BodyMeter>);

/// [`stream_back`], for a legacy HTTP+SSE stream too (its `endpoint`
/// rewrite and the queue of the gateway's refusals).
fn stream_back_with(
    asker: &Asker,
    response: Response<ResponseBody>,
    (first, open): (Vec<Value>, Option<Open>),
    rewrite: Option<sse::Rewrite>,
    legacy: Option<(sse::EndpointRewrite, legacy::Injected)>,
) -> Response<ResponseBody> {
    if !is_event_stream(&response) {
        return response;
    }
    let alive_asker = asker.clone();
    let alive: sse::Alive = Box::new(move || alive_asker.alive());
    // Revocation, token revocation, user disable and quarantine cut this
    // stream through the pipeline's watch on every answer (liveness.rs).
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut body = sse::SseBody::new(body, first, alive, rewrite);
    if let Some((ids, request_id, meter)) = open {
        body = body.answering(ids, &request_id, meter);
    }
    let body = match legacy {
        Some((endpoint, injected)) => body.legacy(endpoint, injected).boxed(),
        None => body.boxed(),
    };
    Response::from_parts(parts, body)
}

/// Whether the guard can read an answer: JSON or an event stream, plain.
fn redactable(response: &Response<ResponseBody>) -> bool {
    let headers = response.headers();
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let plain = headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes() == b"identity");
    let empty = response.status() == StatusCode::ACCEPTED;
    empty
        || (plain
            && (media.starts_with("application/json") || media.starts_with("text/event-stream")))
}

/// Buffers a JSON answer, filters `tools/list` results and adds refusals.
async fn merge_json(
    response: Response<ResponseBody>,
    refusals: Vec<Value>,
    rewrite: Option<sse::Rewrite>,
    batch: bool,
) -> Result<Response<ResponseBody>, Denial> {
    let (mut parts, body) = response.into_parts();
    let broken = || {
        Denial::new(
            ErrorCode::UpstreamUnavailable,
            "the MCP server's answer could not be read",
        )
    };
    let bytes = collect_limited(body, MAX_JSON_ANSWER_BYTES)
        .await
        .ok_or_else(broken)?;
    if bytes.trim_ascii().is_empty() {
        // Nothing to say (the official SDKs answer a notification with a
        // 202 typed JSON, but empty): there is nothing to guard or filter,
        // and the client still gets its refusals.
        if refusals.is_empty() {
            return Ok(Response::from_parts(parts, full(Bytes::new())));
        }
        return Ok(json_answer(StatusCode::OK, &Value::Array(refusals)));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| broken())?;
    let mut messages = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    if let Some(rewrite) = &rewrite {
        for m in &mut messages {
            rewrite(m);
        }
    }
    messages.extend(refusals);
    let out = if batch || messages.len() > 1 {
        Value::Array(messages)
    } else {
        messages.pop().unwrap_or(Value::Null)
    };
    let text = out.to_string();
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    Ok(Response::from_parts(parts, full(text)))
}

/// Reads a whole body of at most `limit` bytes; `None` when it fails or is longer.
async fn collect_limited(mut body: ResponseBody, limit: usize) -> Option<Bytes> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return None;
            }
            out.extend_from_slice(&data);
        }
    }
    Some(out.freeze())
}

fn json_answer(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Builds the MCP state (a reload may add MCP routes, so it is always
/// there). The tool-poisoning scanner is built now when some route is an
/// MCP route (`serves_mcp`), so the first tool listing does not wait for
/// it; otherwise on the first definition it scans (see [`ToolPins`]).
pub async fn state_for(
    store: &portcullis_store::Store,
    serves_mcp: bool,
) -> Result<Arc<McpState>, crate::state::GatewayError> {
    let detector =
        if serves_mcp {
            Some(portcullis_guard::injection::Detector::new().map_err(|e| {
                crate::state::GatewayError::Mcp(format!("tool-poisoning scanner: {e}"))
            })?)
        } else {
            None
        };
    let pins = ToolPins::load(store.clone(), detector).await?;
    Ok(Arc::new(McpState {
        pins,
        sessions: Sessions::default(),
        stdio: stdio::StdioServers::default(),
        legacy: Arc::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)]) -> Response<ResponseBody> {
        answer_with(status, headers, "{}")
    }

    fn answer_with(status: u16, headers: &[(&str, &str)], body: &str) -> Response<ResponseBody> {
        let mut r = Response::new(full(body.to_string()));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r
    }

    /// Under a redact obligation only answers the guard can read go back:
    /// plain JSON or an event stream (or no body at all).
    #[test]
    fn only_plain_json_and_event_streams_are_redactable() {
        assert!(redactable(&answer(
            200,
            &[("content-type", "application/json")]
        )));
        assert!(redactable(&answer(
            200,
            &[("content-type", "text/event-stream")]
        )));
        assert!(redactable(&answer(202, &[])));
        assert!(!redactable(&answer(200, &[("content-type", "text/plain")])));
        assert!(!redactable(&answer(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip")
            ]
        )));
    }

    /// Issue 19: an answer that is neither JSON nor an event stream (an
    /// error page echoing a key) is read by the guard as one text; one that
    /// is not text is not sent.
    #[tokio::test]
    async fn other_answers_are_read_as_text() {
        let scan: sse::Rewrite = Box::new(|m: &mut Value| {
            let Value::String(s) = m else { return false };
            let new = s.replace("AKIAQWADE5R42RDZ4JEM", "[REDACTED]");
            let changed = new != *s;
            *s = new;
            changed
        });
        let r = guard_other(
            answer_with(
                500,
                &[("content-type", "text/plain")],
                "bad key AKIAQWADE5R42RDZ4JEM",
            ),
            scan,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 500);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"bad key [REDACTED]");
        let keep: sse::Rewrite = Box::new(|_: &mut Value| false);
        let mut binary = answer(200, &[("content-type", "application/octet-stream")]);
        *binary.body_mut() = full(Bytes::from_static(&[0xff, 0xfe]));
        let refused = guard_other(binary, keep).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::ContentUnscannable);
    }

    async fn merged(status: u16, body: &str, refusals: Vec<Value>) -> (StatusCode, String) {
        let json = [("content-type", "application/json")];
        let scan: sse::Rewrite = Box::new(|_: &mut Value| false);
        let r = merge_json(
            answer_with(status, &json, body),
            refusals,
            Some(scan),
            false,
        )
        .await
        .unwrap();
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// A notification's answer is a 202 typed JSON with no body (the
    /// official Python SDK's): with the guard on it goes back as it came,
    /// or as the refusals of the messages not forwarded; it is no broken
    /// answer (this was a 502 `upstream_unavailable` on guarded routes).
    #[tokio::test]
    async fn an_empty_json_answer_is_no_broken_answer() {
        assert_eq!(
            merged(202, "", Vec::new()).await,
            (StatusCode::ACCEPTED, String::new())
        );
        let refusal = serde_json::json!({"jsonrpc": "2.0", "id": 3, "error": {}});
        let (status, body) = merged(202, " \n", vec![refusal.clone()]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            serde_json::json!([refusal])
        );
        // A body that is there but is not JSON still is broken.
        let broken = merge_json(
            answer_with(200, &[("content-type", "application/json")], "{not json"),
            Vec::new(),
            None,
            false,
        )
        .await
        .map(|_| ())
        .unwrap_err();
        assert_eq!(broken.code, ErrorCode::UpstreamUnavailable);
    }
}
