//! Authorize: the Cedar decision. Default deny; a denial names the deciding
//! policies (or `default-deny`). Evaluation errors deny and are logged.

use portcullis_core::{Decision, ErrorCode};
use portcullis_policy::{Authorizer, AuthzRequest, SourceIp};

use crate::pipeline::authenticate::Identity;
use crate::pipeline::contextualize::RequestContext;
use crate::pipeline::inspect::ContentFacts;
use crate::respond::Denial;

/// Decides the request.
pub fn run(
    authorizer: &Authorizer,
    identity: &Identity,
    context: &RequestContext,
    source_ip: &SourceIp,
    content: &ContentFacts,
) -> Decision {
    let decision = authorizer.decide(&AuthzRequest {
        agent: &identity.agent,
        action: context.action,
        route: &context.route.name,
        path: &context.path,
        source_ip,
        time: context.time,
        content: content.as_policy(),
        caller: &identity.caller,
    });
    if !decision.errors.is_empty() {
        tracing::warn!(errors = ?decision.errors, agent = %identity.agent, route = %context.route.name, "policy evaluation errors");
    }
    decision
}

/// Ends the request unless the decision allows it.
pub fn enforce(decision: &Decision) -> Result<(), Denial> {
    if decision.allowed {
        return Ok(());
    }
    Err(Denial {
        code: ErrorCode::Forbidden,
        message: "denied by policy".into(),
        policies: decision.policy_ids.clone(),
    })
}
