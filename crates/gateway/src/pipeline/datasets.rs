//! Datasets: for a call on a route (or an MCP tool) tagged with registered
//! datasets, policy's question per dataset — may this caller read it
//! (`Action::"read_data"` on `Dataset::"<name>"`, as the agent and, for a
//! delegated token, as the user too) — asked by the one decision path
//! (`decide.rs`) after the call's own decision allowed it, so a caller
//! denied the call learns nothing about its datasets, and before any
//! obligation (no human is asked to approve a call that cannot run).
//!
//! Which calls: every HTTP request and LLM call on a tagged route, and every
//! MCP message but the session plumbing (`initialize`, `ping`,
//! notifications, replies, the event stream, the session's end), which
//! carries no data; a `tools/call` is decided on the tool's datasets
//! (`[routes.tools.<name>] datasets`) as well as the route's.
//!
//! Fail closed: a tag naming a dataset the registry does not hold refuses
//! the call (`dataset_unknown`); any denial refuses it (`dataset_denied`).
//! The record names every dataset decided, as `dataset:<name>:<policy>`
//! among its policies (`dataset:<name>:unregistered` for an unknown one),
//! and the purpose the call declared (`purpose:<value>`, `purpose.rs`).

use portcullis_core::{Decision, ErrorCode};
use portcullis_policy::{Authorizer, DatasetRequest, McpAction, SourceIp};

use crate::config::RouteConfig;
use crate::pipeline::authenticate::Identity;
use crate::pipeline::contextualize::RequestContext;
use crate::pipeline::decide::{Ask, Call};
use crate::respond::Denial;

/// The record of a call decided on datasets lists the purpose it declared
/// as `purpose:<value>` among its policies (`policy whatif` replays it).
pub const PURPOSE_MARK: &str = "purpose:";

/// The datasets `ask` reads on `route`: the route's, then (for a tool call)
/// the tool's, each once.
pub fn tagged<'a>(route: &'a RouteConfig, ask: &Ask<'_>) -> Vec<&'a str> {
    let tool = match ask {
        Ask::Mcp { action, .. } if action.is_plumbing() => return Vec::new(),
        Ask::Mcp {
            action: McpAction::CallTool,
            target,
            ..
        } => route.tool_datasets.get(*target),
        _ => None,
    };
    let mut out: Vec<&str> = Vec::new();
    for name in route.datasets.iter().chain(tool.into_iter().flatten()) {
        if !out.contains(&name.as_str()) {
            out.push(name);
        }
    }
    out
}

/// The outcome of the `read_data` questions of one call.
#[derive(Debug)]
pub struct Verdict {
    /// What the record lists: `dataset:<name>:<policy>` per decision.
    pub recorded: Vec<String>,
    /// The refusal, if any dataset may not be read.
    pub denial: Option<Denial>,
}

/// `decision` (the call's own, allowed) with the `read_data` verdict folded
/// in: denied by the datasets' refusal, or allowed naming what they read.
/// What the shadow candidate is compared on.
pub fn folded(decision: Decision, verdict: Option<&Verdict>) -> Decision {
    match verdict {
        None => decision,
        Some(Verdict {
            denial: Some(denial),
            ..
        }) => Decision {
            allowed: false,
            policy_ids: denial.policies.clone(),
            errors: decision.errors,
        },
        Some(Verdict { recorded, .. }) => {
            let mut decision = decision;
            decision.policy_ids.extend(recorded.iter().cloned());
            decision
        }
    }
}

/// Asks `read_data` for each of `datasets`, in order; the first refusal
/// ends the questions.
pub fn authorize(
    authorizer: &Authorizer,
    identity: &Identity,
    context: &RequestContext,
    source_ip: &SourceIp,
    call: &Call<'_>,
    datasets: &[&str],
) -> Verdict {
    let mut recorded = Vec::new();
    let (action, target) = match &call.ask {
        Ask::Route => (context.action.as_str(), ""),
        Ask::Mcp { action, target, .. } => (action.as_str(), *target),
        Ask::Model { action, model } => (action.as_str(), *model),
    };
    for dataset in datasets {
        if !authorizer.knows_dataset(dataset) {
            recorded.push(format!("dataset:{dataset}:unregistered"));
            return Verdict {
                recorded,
                denial: Some(Denial::new(
                    ErrorCode::DatasetUnknown,
                    format!(
                        "route `{}` is tagged with dataset `{dataset}`, which is not in the dataset registry",
                        context.route.name
                    ),
                )),
            };
        }
        let request = DatasetRequest {
            agent: &identity.agent,
            dataset,
            route: &context.route.name,
            action,
            target,
            purpose: call.purpose,
            method: context.action,
            path: &context.path,
            source_ip,
            time: context.time,
            content: call.content,
            caller: &identity.caller,
        };
        let agent = authorizer.decide_dataset(&request);
        let as_user = (agent.allowed)
            .then(|| {
                identity
                    .delegated
                    .as_ref()
                    .map(|u| authorizer.decide_dataset_for_user(&request, &u.sub, &u.groups))
            })
            .flatten();
        let decision = crate::pipeline::authorize::joined(agent, as_user);
        if !decision.errors.is_empty() {
            tracing::warn!(errors = ?decision.errors, agent = %identity.agent, dataset = %dataset, "policy evaluation errors (read_data)");
        }
        let named: Vec<String> = decision
            .policy_ids
            .iter()
            .map(|p| format!("dataset:{dataset}:{p}"))
            .collect();
        recorded.extend(named.iter().cloned());
        if !decision.allowed {
            return Verdict {
                recorded,
                denial: Some(Denial {
                    code: ErrorCode::DatasetDenied,
                    message: format!(
                        "denied by policy: reading dataset `{dataset}` is not permitted"
                    ),
                    policies: named,
                    detail: None,
                }),
            };
        }
    }
    Verdict {
        recorded,
        denial: None,
    }
}
