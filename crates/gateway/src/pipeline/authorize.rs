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
    let request = AuthzRequest {
        agent: &identity.agent,
        action: context.action,
        route: &context.route.name,
        path: &context.path,
        source_ip,
        time: context.time,
        content: content.as_policy(),
        caller: &identity.caller,
    };
    let mut decision = authorizer.decide(&request);
    // On behalf of a user: the user must be allowed too, so delegation never
    // grants more than the user has. A user denial is reported as such.
    if decision.allowed
        && let Some(user) = &identity.delegated
    {
        let as_user = authorizer.decide_for_user(&request, &user.sub, &user.groups);
        if !as_user.allowed {
            decision = portcullis_core::Decision {
                allowed: false,
                policy_ids: as_user
                    .policy_ids
                    .iter()
                    .map(|p| format!("user:{p}"))
                    .collect(),
                errors: as_user.errors,
            };
        }
    }
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
        retry_after: None,
    })
}
