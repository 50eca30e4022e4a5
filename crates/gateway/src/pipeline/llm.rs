//! The stages of a `kind = "llm"` route, which take over after contextualize
//! and the fail-closed check. Same shape as the HTTP stages, but on the
//! OpenAI-compatible API instead of opaque bytes:
//!
//! ```text
//! endpoint     which API call (chat completions, embeddings, models)
//! read         the JSON body, whole (bounded by max_body_bytes); its model
//! inspect      content guard on each message text, on its channel
//!              (tool results: tool_output), block/redact by [routes.guard]
//!              (`complete` or `embed` on Model::"<route>/<model>")
//! decide       the one decision path (decide.rs): Cedar as the agent and
//!              the user it acts for, shadow, the risk grade's hold,
//!              obligations (@rate, mfa, approval bound to this exact
//!              body, redact of the answer)
//! budget       the agent's request and token windows ([routes.budget])
//! inject       vault credential (use_secret) or the route's API key
//! forward      upstream call; streams pass through event by event
//! answer       usage charged to the budget, DLP on the answer (llm/stream.rs)
//! ```
//!
//! `GET /v1/models` is answered here, from the route's models, listing only
//! those the agent may `complete` with. The agent's own `Authorization`
//! (its token) never reaches the upstream: forward removes it, and the
//! route's key takes its place.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use portcullis_audit::Outcome;
use portcullis_core::{ErrorCode, RequestId};
use portcullis_policy::{Content, ModelAction};

use crate::body::{BodyMeter, Recorder};
use crate::buffers;
use crate::config::DlpAction;
use crate::llm::api::{self, Endpoint};
use crate::llm::config::LlmConfig;
use crate::llm::stream::{Charge, Dlp, Processed, SseBody, process_whole};
use crate::metrics::Stage;
use crate::pipeline::authenticate::Identity;
use crate::pipeline::contextualize::RequestContext;
use crate::pipeline::decode::{Buffered, DecodedRequest, read_whole};
use crate::pipeline::inspect::ContentFacts;
use crate::pipeline::{authorize, decide};
use crate::respond::{Denial, ResponseBody, full};
use crate::state::Snapshot;

/// Runs the LLM stages on the request's exchange.
pub async fn run(
    ex: &mut decide::Exchange<'_>,
    decoded: DecodedRequest,
) -> Result<Response<ResponseBody>, Denial> {
    let (gateway, conn, snapshot, identity, context, request_id, meter) = (
        ex.gateway,
        ex.conn,
        ex.snapshot,
        ex.identity,
        ex.context,
        ex.request_id,
        ex.meter,
    );
    let metrics = &gateway.metrics;
    let route = &context.route;
    let llm = route.llm.as_deref().ok_or_else(|| {
        tracing::error!(route = %route.name, "llm route without its llm settings");
        Denial::new(ErrorCode::Internal, "internal error")
    })?;
    let endpoint = api::endpoint(&decoded.parts.method, &context.rest_path, &route.name)?;
    let action = match &endpoint {
        Endpoint::ChatCompletions => ModelAction::Complete,
        Endpoint::Embeddings => ModelAction::Embed,
        Endpoint::Models | Endpoint::Model(_) => {
            ex.recorder.record().action = "list_models".into();
            return models(
                snapshot,
                identity,
                context,
                &conn.source_ip,
                llm,
                &endpoint,
                ex.recorder,
            );
        }
    };
    ex.recorder.record().action = action.as_str().into();

    let DecodedRequest {
        mut parts,
        body,
        target,
    } = decoded;
    let Buffered { bytes, mut lease } = read_whole(body, &snapshot.routing.limits, meter).await?;
    let request_bytes = bytes.len() as u64;
    // The parsed copy is leased too, before it is made.
    lease.grow(buffers::json_cost(&bytes))?;
    let mut call = api::parse(&bytes, llm.budget.is_limited())?;
    drop(bytes);
    ex.recorder.record().resource =
        Some(portcullis_policy::ModelEntity::id(&route.name, &call.model));
    let model = llm.model(&call.model).ok_or_else(|| {
        Denial::new(
            ErrorCode::ModelNotFound,
            format!(
                "model `{}` is not served by route `{}`; GET {}/v1/models lists the models you may use",
                call.model, route.name, route.path_prefix
            ),
        )
    })?;
    ex.recorder.record().classification = Some(model.classification.as_str().to_string());

    let t = Instant::now();
    let mut audited = Vec::new();
    let inspected = inspect(
        &snapshot.routing,
        context,
        &endpoint,
        &mut call.body,
        request_id,
        &mut audited,
    );
    let elapsed = t.elapsed();
    metrics.stage(Stage::Inspect, elapsed);
    ex.recorder.trace_stage(Stage::Inspect, t, elapsed);
    // After what the guard found in the request's head (pipeline/mod.rs).
    ex.recorder.record().content.extend(audited);
    let content = inspected?;

    // What is decided, approved and forwarded is this one serialization of
    // the call (after redaction), computed once.
    let body = Bytes::from(call.body.to_string());
    // From here on the serialization is the call: the parsed copy goes, and
    // only the bytes forwarded stay leased.
    call.body = serde_json::Value::Null;
    lease.shrink_to(body.len() as u64);
    let allowed = decide::decide(
        ex,
        decide::Call {
            ask: decide::Ask::Model {
                action,
                model: &model.name,
            },
            purpose: &ex.context.purpose,
            content: content.as_policy(),
            write: true,
            blocked: None,
        },
        decide::Subject::Llm {
            parts: &parts,
            body: &body,
        },
    )
    .await?;

    // Budget and vault credential were settled by decide, after approval.
    let mut allowed = allowed;
    let counters = allowed.budget.take();
    let vault_credential = allowed.injected.take();
    let injected = vault_credential
        .as_ref()
        .or_else(|| snapshot.routing.llm.key(&route.name));

    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Usage and DLP read the answer, so it must come back uncompressed.
    parts.headers.remove(header::ACCEPT_ENCODING);
    let request = DecodedRequest {
        parts,
        body: Buffered::into_body(body, lease),
        target,
    };
    let capture = crate::capture::for_route(route, gateway.captures.as_ref(), request_id);
    let traceparent = ex.recorder.traceparent();
    let t = Instant::now();
    let response = snapshot
        .routing
        .forwarder
        .forward(
            request,
            crate::pipeline::forward::Hop {
                context,
                identity,
                request_id,
                remote: conn.remote,
                meter,
                injected,
                capture,
                traceparent,
                origin_path: None,
            },
        )
        .await;
    drop(vault_credential);
    let elapsed = t.elapsed();
    metrics.stage(Stage::Forward, elapsed);
    ex.recorder.trace_stage(Stage::Forward, t, elapsed);
    let response = response?;

    let dlp = snapshot
        .routing
        .guard
        .as_deref()
        .and_then(|g| match route.guard.dlp {
            _ if allowed.redact => Some(Dlp {
                scanner: g.guard.scanner().clone(),
                key: g.key,
                redact: true,
            }),
            DlpAction::Off => None,
            DlpAction::Alert => Some(Dlp {
                scanner: g.guard.scanner().clone(),
                key: g.key,
                redact: false,
            }),
            DlpAction::Redact | DlpAction::Block => Some(Dlp {
                scanner: g.guard.scanner().clone(),
                key: g.key,
                redact: true,
            }),
        });
    let charge = counters.map(|counters| Charge {
        counters,
        request_bytes,
        done: false,
    });
    answer(
        response,
        AnswerPlan {
            stream: call.stream,
            strip_usage: call.strip_usage,
            charge,
            dlp,
            obliged_redact: allowed.redact,
            max_bytes: snapshot.routing.limits.max_body_bytes,
        },
        meter,
        request_id,
        &route.name,
    )
    .await
}

/// What to do with the upstream's answer.
struct AnswerPlan {
    /// The client asked for a stream.
    stream: bool,
    /// The usage chunk was asked for by the gateway, not the client: drop it.
    strip_usage: bool,
    /// The budget to charge with the answer's usage.
    charge: Option<Charge>,
    /// DLP on the answer (redact or only report).
    dlp: Option<Dlp>,
    /// A deciding permit obliges redaction: an answer the redactor cannot
    /// read is refused rather than passed on.
    obliged_redact: bool,
    /// The largest JSON answer read whole.
    max_bytes: u64,
}

/// `GET /v1/models` and `GET /v1/models/{model}`: the route's models the
/// agent may `complete` with.
fn models(
    snapshot: &Snapshot,
    identity: &Identity,
    context: &RequestContext,
    source_ip: &portcullis_policy::SourceIp,
    llm: &LlmConfig,
    endpoint: &Endpoint,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    // Decided as a completion would be, as the agent and the user it acts
    // for, datasets included (`read_data` on the route's datasets with the
    // purpose this listing declares): a model is listed only to whom may
    // use it for that purpose.
    let permitted = |name: &str| {
        let call = decide::Call {
            ask: decide::Ask::Model {
                action: ModelAction::Complete,
                model: name,
            },
            purpose: &context.purpose,
            content: Content::NOT_SCANNED,
            write: false,
            blocked: None,
        };
        if !authorize::run(&snapshot.authorizer, identity, context, source_ip, &call).allowed {
            return false;
        }
        let datasets = crate::pipeline::datasets::tagged(&context.route, &call.ask);
        datasets.is_empty()
            || crate::pipeline::datasets::authorize(
                &snapshot.authorizer,
                identity,
                context,
                source_ip,
                &call,
                &datasets,
            )
            .denial
            .is_none()
    };
    let body = match endpoint {
        Endpoint::Model(name) => {
            let model = llm
                .model(name)
                .filter(|m| permitted(&m.name))
                .ok_or_else(|| {
                    // Not configured and not permitted look the same: an agent
                    // does not learn of models it may not use.
                    Denial::new(
                        ErrorCode::ModelNotFound,
                        format!(
                            "model `{name}` is not served to you by route `{}`",
                            context.route.name
                        ),
                    )
                })?;
            api::model_object(&model.name, &context.route.name)
        }
        _ => {
            let data: Vec<_> = llm
                .models
                .iter()
                .filter(|m| permitted(&m.name))
                .map(|m| api::model_object(&m.name, &context.route.name))
                .collect();
            serde_json::json!({ "object": "list", "data": data })
        }
    };
    recorder.record().outcome = Outcome::Allow;
    let mut response = Response::new(full(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Reads a whole answer of at most `max` bytes.
async fn read_answer(mut body: ResponseBody, max: u64) -> Result<Bytes, String> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > max {
                return Err(format!("the answer exceeds {max} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// The content guard on each text of the request, on its channel (tool
/// results on `tool_output`). Redaction rewrites the texts in place.
fn inspect(
    routing: &crate::routing::Routing,
    context: &RequestContext,
    endpoint: &Endpoint,
    body: &mut serde_json::Value,
    request_id: &RequestId,
    audited: &mut Vec<portcullis_audit::ContentFinding>,
) -> Result<ContentFacts, Denial> {
    let settings = context.route.guard;
    let Some(state) = routing
        .guard
        .as_deref()
        .filter(|_| settings.scans_requests())
    else {
        return Ok(ContentFacts::default());
    };
    let mut scan = crate::pipeline::inspect::TextScan::new(
        state,
        settings,
        request_id,
        &context.route.name,
        "request",
    );
    api::for_each_text(endpoint, body, &mut |pointer, text, channel| {
        scan.scan_in_place(text, channel, pointer, audited)
    });
    let (facts, verdict) = scan.settle("request");
    verdict?;
    Ok(facts)
}

/// The upstream's answer on its way back: a stream event by event, a JSON
/// answer whole; usage charged, DLP applied. Error answers pass unchanged.
async fn answer(
    response: Response<ResponseBody>,
    plan: AnswerPlan,
    meter: &Arc<BodyMeter>,
    request_id: &RequestId,
    route: &str,
) -> Result<Response<ResponseBody>, Denial> {
    let AnswerPlan {
        stream,
        strip_usage,
        charge,
        dlp,
        obliged_redact,
        max_bytes,
    } = plan;
    let (mut parts, body) = response.into_parts();
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    let readable =
        !encoded && ((stream && media == "text/event-stream") || media == "application/json");
    if obliged_redact && parts.status.is_success() && !readable {
        return Err(crate::pipeline::decide::unsupported(
            "redact",
            "the model's answer is compressed or neither JSON nor an event stream",
        ));
    }
    let untouched = charge.is_none() && dlp.is_none() && !strip_usage;
    let redacts = dlp.as_ref().is_some_and(|d| d.redact);
    if encoded && redacts {
        // Asked for uncompressed; an answer that is not cannot be read.
        return Err(Denial::new(
            ErrorCode::ContentUnscannable,
            "the model's answer is compressed, so the content guard cannot read it",
        ));
    }
    // An error answer is read and redacted too: an upstream 401 may echo
    // the key it was given.
    let plain = !parts.status.is_success() && dlp.is_none();
    if plain || encoded || untouched {
        return Ok(Response::from_parts(parts, body));
    }
    if stream && media == "text/event-stream" && parts.status.is_success() {
        parts.headers.remove(header::CONTENT_LENGTH);
        let charge = charge.unwrap_or_else(|| Charge {
            counters: Arc::default(),
            request_bytes: 0,
            done: true,
        });
        let body = SseBody::new(
            body,
            strip_usage,
            charge,
            dlp,
            meter.clone(),
            request_id.to_string(),
            route.to_string(),
        );
        return Ok(Response::from_parts(parts, body.boxed()));
    }
    let bytes = match read_answer(body, max_bytes).await {
        Ok(bytes) => bytes,
        Err(problem) => {
            tracing::warn!(route, problem, "upstream answer could not be read");
            return Err(Denial::new(
                ErrorCode::UpstreamUnavailable,
                format!("the answer of route `{route}`'s upstream could not be read"),
            ));
        }
    };
    let (usage, processed) = process_whole(&bytes, dlp.as_ref(), meter, request_id.as_str(), route);
    if let Some(mut charge) = charge {
        charge.settle(usage, bytes.len() as u64);
    }
    let rewritten = match processed {
        Processed::Unchanged => None,
        Processed::Rewritten(b) => Some(b),
        Processed::Unscannable => {
            return Err(Denial::new(
                ErrorCode::ContentUnscannable,
                "the model's answer is neither JSON nor text, so the content guard cannot read it",
            ));
        }
    };
    let body = rewritten.unwrap_or(bytes);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut response = Response::from_parts(parts, full(body));
    if response.status() == StatusCode::NO_CONTENT {
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(obliged_redact: bool) -> AnswerPlan {
        AnswerPlan {
            stream: false,
            strip_usage: false,
            charge: None,
            dlp: None,
            obliged_redact,
            max_bytes: 1 << 20,
        }
    }

    fn upstream(headers: &[(&str, &'static str)]) -> Response<ResponseBody> {
        let mut r = Response::new(full("{\"choices\":[]}"));
        for (k, v) in headers {
            r.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        r
    }

    /// Under a redact obligation a model's answer the redactor cannot read
    /// is refused, never passed on as it came.
    #[tokio::test]
    async fn an_unreadable_answer_under_a_redact_obligation_is_refused() {
        let meter = Arc::new(BodyMeter::default());
        let id = RequestId::new();
        let code = |r, obliged| {
            let meter = meter.clone();
            let id = id.clone();
            async move {
                answer(r, plan(obliged), &meter, &id, "llm")
                    .await
                    .err()
                    .map(|d| d.code)
            }
        };
        let json = ("content-type", "application/json");
        let unsupported = Some(ErrorCode::ObligationUnsupported);
        assert_eq!(
            code(upstream(&[json, ("content-encoding", "gzip")]), true).await,
            unsupported
        );
        assert_eq!(
            code(upstream(&[("content-type", "text/plain")]), true).await,
            unsupported
        );
        assert_eq!(code(upstream(&[json]), true).await, None);
        assert_eq!(
            code(upstream(&[json, ("content-encoding", "gzip")]), false).await,
            None
        );
    }
}
