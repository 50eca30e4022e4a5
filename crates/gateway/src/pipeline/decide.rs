//! Decide: the one decision path every protocol goes through. An HTTP
//! request, each MCP JSON-RPC message and each LLM call is a [`Call`] on the
//! request's [`Exchange`]; [`decide`] runs, in this order and in this one
//! place:
//!
//! ```text
//! authorize    Cedar, as the agent and, for a delegated token, as the user
//!              too (delegation never grants more than the user has)
//! shadow       the shadow candidate's decision beside, counted, no effect
//! record       deciding policies, policy version, break-glass mark
//! datasets     `read_data` on each dataset the route or tool is tagged
//!              with, as the agent and the user (`dataset_denied`,
//!              `dataset_unknown` for a tag the registry does not hold)
//! contain      the risk grade's hold on writes: refused (read-only) or a
//!              human's approval (approve-writes, throttle)
//! obligations  @rate, mfa, approval (a ticket bound to this exact call),
//!              redact (handed on; refused when no redactor can honour it)
//! budget       an LLM call's request and token windows ([routes.budget])
//! inject       the route's vault credential: `use_secret`, then the value
//!              (an MCP route's: per request to its server, see `credential`)
//! intent       `before_forward` durability: the decision is committed to
//!              the audit intent journal before the call goes on
//! ```
//!
//! **Architecture Invariant:** a protocol adapter never asks Cedar itself and
//! never reads an obligation itself: it builds a [`Call`] and forwards only
//! on `Ok(Allowed)`. An obligation a call cannot be held to denies
//! (`obligation_unsupported`); nothing is allowed by omission. Before this
//! module each protocol had its own copy of these steps, and the copies
//! drifted until approval failed open on MCP and LLM routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use portcullis_audit::Outcome;
use portcullis_core::{Decision, ErrorCode, RequestId};
use portcullis_policy::{Content, McpAction, ModelAction, ModelEntity};

use crate::approvals::{BodyDigest, CallBinding, Hold, RequiredBy};
use crate::body::{BodyMeter, Recorder};
use crate::metrics::Stage;
use crate::pipeline::authenticate::Identity;
use crate::pipeline::contain::{self, Writes};
use crate::pipeline::contextualize::RequestContext;
use crate::pipeline::decode::{Buffered, DecodedRequest, read_whole};
use crate::pipeline::{approve, authorize};
use crate::respond::{Denial, DenialDetail};
use crate::state::{ConnectionState, Gateway, Snapshot};

/// One request's exchange with the gateway: who asks, on which route, with
/// which snapshot, and the record it leaves. Built once per request after
/// contextualize and contain; every decision of the request is made on it.
pub struct Exchange<'a> {
    /// The gateway.
    pub gateway: &'a Arc<Gateway>,
    /// The connection's facts (address, client certificate).
    pub conn: &'a ConnectionState,
    /// The one snapshot (agents, policies) the whole request is decided by.
    pub snapshot: &'a Snapshot,
    /// The verified caller.
    pub identity: &'a Identity,
    /// Route, action, path and time.
    pub context: &'a RequestContext,
    /// The request id.
    pub request_id: &'a RequestId,
    /// Bytes in and out.
    pub meter: &'a Arc<BodyMeter>,
    /// The request's audit record.
    pub recorder: &'a mut Recorder,
    /// What the agent's risk grade does to its writes.
    pub writes: Writes,
    /// `Prefer: wait=N`: how long an approval may be waited for.
    pub wait: Option<Duration>,
}

/// What is asked: the resource and action, per protocol.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'a> {
    /// An HTTP request: the context's method on its route.
    Route,
    /// An MCP message.
    Mcp {
        /// What it asks for.
        action: McpAction,
        /// The JSON-RPC method (`context.method`).
        method: &'a str,
        /// The MCP revision it speaks (`context.revision`).
        revision: &'a str,
        /// The tool, prompt or resource; empty for the list actions.
        target: &'a str,
        /// The arguments as policy sees them (`context.args`).
        args: &'a [portcullis_policy::McpArg],
    },
    /// A model call on an `llm` route.
    Model {
        /// `complete` or `embed`.
        action: ModelAction,
        /// The model's name.
        model: &'a str,
    },
}

impl Ask<'_> {
    /// The audit record's and approval ticket's name of the action.
    pub fn action_name(&self, context: &RequestContext) -> String {
        match self {
            Ask::Route => context.action.as_str().to_string(),
            Ask::Mcp { method, .. } => (*method).to_string(),
            Ask::Model { action, .. } => action.as_str().to_string(),
        }
    }

    /// The resource it acts on, as the audit record names it.
    pub fn resource_name(&self, context: &RequestContext) -> String {
        let route = &context.route.name;
        match self {
            Ask::Route => route.clone(),
            Ask::Mcp { target: "", .. } => route.clone(),
            Ask::Mcp { target, .. } => format!("{route}/{target}"),
            Ask::Model { model, .. } => ModelEntity::id(route, model),
        }
    }
}

/// What an approval ticket binds: the exact call a human is asked about.
pub enum Subject<'a> {
    /// An HTTP request: its body is read (within the body limit) and hashed
    /// only when a human must approve; the request keeps the bytes.
    Request(&'a mut DecodedRequest),
    /// An MCP message: the request head that carried it and its canonical
    /// arguments (the ones policy decided on and the server receives).
    Mcp {
        /// The HTTP request's head (query, meaning-changing headers).
        parts: &'a http::request::Parts,
        /// The canonical `params.arguments` (`null` when there are none).
        arguments: &'a serde_json::Value,
    },
    /// An LLM call: the request head and the body exactly as it will be
    /// forwarded.
    Llm {
        /// The HTTP request's head.
        parts: &'a http::request::Parts,
        /// The body as forwarded.
        body: &'a [u8],
    },
}

/// One call to decide.
pub struct Call<'a> {
    /// What is asked.
    pub ask: Ask<'a>,
    /// The purpose the call declares (`context.purpose` of its `read_data`
    /// decisions, bound by an approval); "" when none (`purpose.rs`).
    pub purpose: &'a str,
    /// What the content guard found (`context.content`).
    pub content: Content<'a>,
    /// Whether the call writes, for the risk grade's hold: a method other
    /// than GET/HEAD, a completion, an MCP tool call.
    pub write: bool,
    /// A refusal the protocol found before the decision (an MCP tool whose
    /// definition is not approved): given once policy allowed the call, so
    /// a caller policy denies learns nothing of it, and before a human is
    /// asked to approve a call that could not run anyway.
    pub blocked: Option<Denial>,
}

/// A call that may go on, with what the later stages must still do.
#[derive(Debug)]
pub struct Allowed {
    /// The deciding policies.
    pub policy_ids: Vec<String>,
    /// Redact the answer (`@obligation("redact")`).
    pub redact: bool,
    /// An LLM call's budget counters (admitted), charged with the answer's
    /// usage; `None` without a `[routes.budget]`.
    pub budget: Option<Arc<crate::llm::budget::Counters>>,
    /// The route's vault credential, when it has one and `use_secret`
    /// allowed it: the value is in memory for this call only.
    pub injected: Option<crate::pipeline::inject::Injected>,
}

/// Decides one call: see the module header for the steps. The record gets
/// the deciding policies, the ticket and the outcome whatever the answer.
pub async fn decide(
    ex: &mut Exchange<'_>,
    call: Call<'_>,
    subject: Subject<'_>,
) -> Result<Allowed, Denial> {
    let t = Instant::now();
    let decision = authorize::run(
        &ex.snapshot.authorizer,
        ex.identity,
        ex.context,
        &ex.conn.source_ip,
        &call,
    );
    let elapsed = t.elapsed();
    ex.gateway.metrics.stage(Stage::Authorize, elapsed);
    ex.recorder.trace_stage(Stage::Authorize, t, elapsed);
    if !decision.errors.is_empty() {
        tracing::warn!(errors = ?decision.errors, agent = %ex.identity.agent, route = %ex.context.route.name, action = %call.ask.action_name(ex.context), "policy evaluation errors");
    }
    // After the call's own decision: a caller denied the call learns
    // nothing of its datasets. Before the obligations: no human is asked
    // to approve a call that cannot run.
    let datasets = crate::pipeline::datasets::tagged(&ex.context.route, &call.ask);
    let read = (decision.allowed && !datasets.is_empty()).then(|| {
        crate::pipeline::datasets::authorize(
            &ex.snapshot.authorizer,
            ex.identity,
            ex.context,
            &ex.conn.source_ip,
            &call,
            &datasets,
        )
    });
    // After the timing: the candidate's cost is not the request's. Both
    // sides are compared with their `read_data` decisions folded in.
    if let Some(shadow) = &ex.snapshot.shadow {
        let candidate = authorize::run(
            &shadow.authorizer,
            ex.identity,
            ex.context,
            &ex.conn.source_ip,
            &call,
        );
        let candidate_read = (candidate.allowed && !datasets.is_empty()).then(|| {
            crate::pipeline::datasets::authorize(
                &shadow.authorizer,
                ex.identity,
                ex.context,
                &ex.conn.source_ip,
                &call,
                &datasets,
            )
        });
        let active = crate::pipeline::datasets::folded(decision.clone(), read.as_ref());
        let candidate = crate::pipeline::datasets::folded(candidate, candidate_read.as_ref());
        shadow
            .stats
            .observe(&active, &candidate, || crate::shadow::Disagreement {
                time_ms: ex.context.time.epoch * 1000,
                request_id: ex.request_id.to_string(),
                agent: ex.identity.agent.clone(),
                action: call.ask.action_name(ex.context),
                resource: call.ask.resource_name(ex.context),
                path: ex.context.path.clone(),
                active_allowed: active.allowed,
                active_policies: active.policy_ids.clone(),
                shadow_allowed: candidate.allowed,
                shadow_policies: candidate.policy_ids.clone(),
            });
    }
    ex.gateway
        .metrics
        .decision(&ex.context.route.name, decision.allowed);
    {
        let record = ex.recorder.record();
        record.policies.extend(decision.policy_ids.iter().cloned());
        record.policy_version = Some(ex.snapshot.policy_version);
        // Every call a break-glass grant let through is marked.
        if let Some(grant) = decision
            .policy_ids
            .iter()
            .find(|id| id.starts_with(portcullis_policy::BREAKGLASS_PREFIX))
        {
            record.breakglass = Some(grant.clone());
            if decision.allowed {
                tracing::warn!(agent = %ex.identity.agent, route = %ex.context.route.name, %grant, "request allowed under break-glass");
            }
        }
        record.outcome = if decision.allowed {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
    }
    if !decision.allowed {
        // The model gate's refusal has its own stable code: the fix is in
        // the model registry, not in the caller's policies.
        let gated = decision
            .policy_ids
            .iter()
            .any(|id| id == portcullis_policy::MODEL_GATE_POLICY_ID);
        return Err(Denial {
            code: if gated {
                ErrorCode::ModelUnverified
            } else {
                ErrorCode::Forbidden
            },
            message: if gated {
                "the model is not verified in the model registry, or is revoked".into()
            } else {
                "denied by policy".into()
            },
            policies: decision.policy_ids,
            detail: None,
        });
    }
    let read = read.and_then(|verdict| {
        let record = ex.recorder.record();
        record.policies.extend(verdict.recorded);
        // What the data was read for, as the caller declared it: evidence
        // for a purpose review, and what `policy whatif` replays.
        if !call.purpose.is_empty() {
            record.policies.push(format!(
                "{}{}",
                crate::pipeline::datasets::PURPOSE_MARK,
                call.purpose
            ));
        }
        verdict.denial
    });
    let settled = match (read, call.blocked.clone()) {
        (Some(denial), _) | (None, Some(denial)) => Err(denial),
        (None, None) => obligations(ex, &call, &decision, subject).await,
    };
    // Last: nothing after this may refuse a call whose intent is durable
    // (it would be recovered as forwarded after a crash).
    let settled = match settled {
        Ok(allowed) => crate::audit_intent::before_forward(
            &ex.gateway.sink,
            &ex.context.route,
            call.write,
            ex.recorder.record(),
        )
        .await
        .map(|()| allowed),
        Err(denial) => Err(denial),
    };
    if settled.is_err() {
        ex.recorder.record().outcome = Outcome::Deny;
    }
    settled
}

/// What an allowed call still owes, cheapest first: the risk grade's hold on
/// writes, `@rate`, MFA, a human's approval, redaction.
async fn obligations(
    ex: &mut Exchange<'_>,
    call: &Call<'_>,
    decision: &Decision,
    subject: Subject<'_>,
) -> Result<Allowed, Denial> {
    let obligations = ex.snapshot.authorizer.obligations(decision);
    let held = call.write && ex.writes != Writes::Free;
    if held && ex.writes == Writes::Refused {
        return Err(contain::read_only());
    }
    for (policy, rate) in &obligations.rates {
        if let Err(wait) = ex
            .gateway
            .rate_limiter
            .admit(policy, &ex.identity.agent, *rate)
            .await
        {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(Denial {
                code: ErrorCode::RateLimited,
                message: format!(
                    "rate limit {rate} of policy `{policy}` exceeded; retry in {seconds} s"
                ),
                policies: vec![policy.clone()],
                detail: Some(DenialDetail::RetryAfter(seconds.max(1))),
            });
        }
    }
    if obligations.mfa {
        let caller = &ex.identity.caller;
        if !(caller.delegation.is_some() && caller.auth.mfa) {
            return Err(Denial {
                code: ErrorCode::UserMfaRequired,
                message: "the deciding policy requires a delegating user with fresh MFA".into(),
                policies: decision.policy_ids.clone(),
                detail: None,
            });
        }
    }
    if obligations.redact && ex.snapshot.routing.guard.is_none() {
        // The guard is built whenever a policy redacts, so this is a bug;
        // it still must not serve the answer unredacted.
        return Err(unsupported("redact", "no redactor is running"));
    }
    // Analytics first: its hold is the one the ticket names, since a ticket
    // a policy asked for alone would not tell the human the agent is risky.
    let required_by = if held {
        Some(RequiredBy::Analytics)
    } else if obligations.approval {
        Some(RequiredBy::Policy)
    } else {
        None
    };
    let mut subject = subject;
    if obligations.redact
        && let Subject::Request(request) = &mut subject
    {
        // The redactor reads answers only as the upstream sends them plain.
        request.parts.headers.remove(http::header::ACCEPT_ENCODING);
    }
    if let Some(required_by) = required_by {
        let hold = Hold {
            agent: ex.identity.agent.clone(),
            user: ex
                .identity
                .caller
                .delegation
                .as_ref()
                .map(|d| d.user.clone()),
            policy_version: ex.snapshot.policy_version,
            policy_id: decision.policy_ids.first().cloned().unwrap_or_default(),
            required_by,
        };
        let route = &ex.context.route.name;
        let path = &ex.context.path;
        let binding = match (subject, call.ask) {
            (Subject::Request(request), _) => {
                let body = std::mem::replace(&mut request.body, empty_body());
                let Buffered { bytes, lease } =
                    read_whole(body, &ex.snapshot.routing.limits, ex.meter).await?;
                let binding = CallBinding::http(
                    hold,
                    route,
                    ex.context.action.as_str(),
                    path,
                    &request.parts,
                    &bytes,
                );
                request.body = Buffered::into_body(bytes, lease);
                binding
            }
            (Subject::Mcp { parts, arguments }, Ask::Mcp { method, target, .. }) => {
                CallBinding::mcp(hold, route, path, parts, method, target, arguments)
            }
            // The model action (`complete`, `embed`), not the HTTP method:
            // what a grant from this ticket permits.
            (Subject::Llm { parts, body }, Ask::Model { action, model }) => CallBinding::llm(
                hold,
                route,
                action.as_str(),
                path,
                parts,
                model,
                BodyDigest::of(body),
            ),
            // A subject that does not fit its call is a bug: refuse.
            _ => return Err(unsupported("approval", "the call cannot be bound")),
        };
        // The purpose is part of the call: an approval for one purpose is
        // no approval for another.
        let binding = binding.with_purpose(call.purpose);
        let mut ticket = None;
        let gate = approve::hold(
            &ex.gateway.approvals,
            binding,
            ex.wait,
            &decision.policy_ids,
            &mut ticket,
        )
        .await;
        let record = ex.recorder.record();
        if required_by == RequiredBy::Analytics && ticket.is_some() {
            // The record says the approval was the risk grade's doing.
            record.policies.push(contain::APPROVE_WRITES.to_string());
        }
        if ticket.is_some() {
            record.approval_ticket = ticket;
        }
        gate?;
    }
    let budget = admit_budget(ex, call)?;
    let injected = match call.ask {
        // An MCP route's credential goes on each request to its server,
        // plumbing included: decided per upstream request (`mcp::upstream`).
        Ask::Mcp { .. } => None,
        Ask::Route | Ask::Model { .. } => credential(ex, call.content)?,
    };
    Ok(Allowed {
        policy_ids: decision.policy_ids.clone(),
        redact: obligations.redact,
        budget,
        injected,
    })
}

/// An LLM call against the agent's request and token windows
/// (`[routes.budget]`), once everything else allowed it.
fn admit_budget(
    ex: &Exchange<'_>,
    call: &Call<'_>,
) -> Result<Option<Arc<crate::llm::budget::Counters>>, Denial> {
    let route = &ex.context.route;
    let (Ask::Model { .. }, Some(llm)) = (call.ask, route.llm.as_deref()) else {
        return Ok(None);
    };
    if !llm.budget.is_limited() {
        return Ok(None);
    }
    let budgets = &ex.gateway.budgets;
    let counters = budgets.counters(&route.name, &ex.identity.agent);
    if let Err(spent) = budgets.admit(&llm.budget, &counters, ex.context.time.epoch) {
        return Err(Denial {
            code: ErrorCode::BudgetExceeded,
            message: format!(
                "budget exceeded: {} = {} on route `{}`",
                spent.limit, spent.value, route.name
            ),
            policies: Vec::new(),
            detail: Some(DenialDetail::RetryAfter(spent.retry_after)),
        });
    }
    Ok(Some(counters))
}

/// The route's vault credential: policy's second question (`use_secret`,
/// with `content` as `context.content`), then the value from the vault's
/// memory. Last, so no secret is decrypted for a call that is refused or
/// still waits for a human. The record gets the deciding policies and, when
/// no secret may be used, the denial.
pub fn credential(
    ex: &mut Exchange<'_>,
    content: Content<'_>,
) -> Result<Option<crate::pipeline::inject::Injected>, Denial> {
    let Some(credential) = &ex.context.route.credential else {
        return Ok(None);
    };
    let t = Instant::now();
    let choice = crate::pipeline::inject::authorize(
        &ex.snapshot.authorizer,
        ex.identity,
        ex.context,
        &ex.conn.source_ip,
        content,
        credential,
    );
    {
        let record = ex.recorder.record();
        record.policies.extend(choice.policy_ids.iter().cloned());
        if choice.secret.is_none() {
            record.outcome = Outcome::Deny;
        }
    }
    let injected = crate::pipeline::inject::enforce(&choice, credential).and_then(|secret| {
        let fetched = crate::pipeline::inject::fetch(
            ex.gateway.vault.as_deref(),
            ex.context,
            secret,
            &credential.injection,
        );
        // Only a fetch says whether the vault can serve the route; a policy
        // refusal says nothing about it.
        ex.gateway
            .metrics
            .readiness
            .vault_credential(&ex.context.route.name, fetched.is_ok());
        fetched
    });
    let elapsed = t.elapsed();
    ex.gateway.metrics.stage(Stage::Inject, elapsed);
    ex.recorder.trace_stage(Stage::Inject, t, elapsed);
    injected.map(Some)
}

/// The refusal of a call whose deciding permit obliges what cannot be done.
pub fn unsupported(obligation: &str, why: &str) -> Denial {
    Denial::new(
        ErrorCode::ObligationUnsupported,
        format!(
            "the deciding policy obliges `{obligation}`, which this call cannot be held to: {why}"
        ),
    )
}

fn empty_body() -> crate::pipeline::decode::RequestBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync()
}
