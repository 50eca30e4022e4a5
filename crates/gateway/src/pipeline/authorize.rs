//! Authorize: the Cedar decision for one call of any protocol, as the agent
//! and, for a delegated token, as the user too. Default deny; a denial names
//! the deciding policies (or `default-deny`). Evaluation errors deny. Only
//! the one decision path (`decide.rs`) calls it, for the active version and
//! the shadow candidate alike.

use portcullis_core::Decision;
use portcullis_policy::{Authorizer, AuthzRequest, McpRequest, ModelRequest, SourceIp};

use crate::pipeline::authenticate::Identity;
use crate::pipeline::contextualize::RequestContext;
use crate::pipeline::decide::{Ask, Call};

/// The Cedar decision for one call: as the agent and, on behalf of a user
/// (token exchange), as the user too. A user denial is reported as such
/// (`user:<policy>`).
pub fn run(
    authorizer: &Authorizer,
    identity: &Identity,
    context: &RequestContext,
    source_ip: &SourceIp,
    call: &Call<'_>,
) -> Decision {
    let route = &context.route.name;
    let caller = &identity.caller;
    let user = identity.delegated.as_ref();
    let (agent, as_user) = match call.ask {
        Ask::Route => {
            let request = AuthzRequest {
                agent: &identity.agent,
                action: context.action,
                route,
                path: &context.path,
                source_ip,
                time: context.time,
                content: call.content,
                caller,
            };
            let agent = authorizer.decide(&request);
            let as_user = (agent.allowed)
                .then(|| user.map(|u| authorizer.decide_for_user(&request, &u.sub, &u.groups)))
                .flatten();
            (agent, as_user)
        }
        Ask::Mcp {
            action,
            method,
            revision,
            target,
            args,
        } => {
            let request = McpRequest {
                agent: &identity.agent,
                action,
                route,
                classification: context.route.classification,
                method,
                revision,
                target,
                args,
                path: &context.path,
                content: call.content,
                source_ip,
                time: context.time,
                caller,
            };
            let agent = authorizer.decide_mcp(&request);
            let as_user = (agent.allowed)
                .then(|| user.map(|u| authorizer.decide_mcp_for_user(&request, &u.sub, &u.groups)))
                .flatten();
            (agent, as_user)
        }
        Ask::Model { action, model } => {
            let request = ModelRequest {
                agent: &identity.agent,
                action,
                route,
                model,
                method: context.action,
                path: &context.path,
                source_ip,
                time: context.time,
                content: call.content,
                caller,
            };
            let agent = authorizer.decide_model(&request);
            let as_user = (agent.allowed)
                .then(|| {
                    user.map(|u| authorizer.decide_model_for_user(&request, &u.sub, &u.groups))
                })
                .flatten();
            (agent, as_user)
        }
    };
    joined(agent, as_user)
}

/// The decision of a delegated call: the agent's, unless the user's (asked
/// only when the agent's allows) refuses, which is reported as the user's
/// (`user:<policy>`). The egress proxy and the dataset stage join their
/// decisions the same way.
pub fn joined(agent: Decision, as_user: Option<Decision>) -> Decision {
    match as_user {
        Some(as_user) if !as_user.allowed => Decision {
            allowed: false,
            policy_ids: as_user
                .policy_ids
                .iter()
                .map(|p| format!("user:{p}"))
                .collect(),
            errors: as_user.errors,
        },
        _ => agent,
    }
}
