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

/// Decides the request again with the shadow candidate, without effect, and
/// counts a disagreement with the active version's `decision`.
pub fn shadow(
    shadow: &crate::state::ShadowSnapshot,
    decision: &Decision,
    identity: &Identity,
    context: &RequestContext,
    source_ip: &SourceIp,
    content: &ContentFacts,
    request_id: &str,
) {
    // Decided exactly as the active version is, user decision included.
    let candidate = run(&shadow.authorizer, identity, context, source_ip, content);
    shadow
        .stats
        .observe(decision, &candidate, || crate::shadow::Disagreement {
            time_ms: context.time.epoch * 1000,
            request_id: request_id.to_string(),
            agent: identity.agent.clone(),
            action: context.action.as_str().to_string(),
            resource: context.route.name.clone(),
            path: context.path.clone(),
            active_allowed: decision.allowed,
            active_policies: decision.policy_ids.clone(),
            shadow_allowed: candidate.allowed,
            shadow_policies: candidate.policy_ids.clone(),
        });
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
        detail: None,
    })
}
