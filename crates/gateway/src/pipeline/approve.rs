//! Approve: the obligations of the policies that allowed the request.
//!
//! Runs right after authorize allowed, and before inject, so nothing secret
//! is touched for a call that still needs a human. In order, cheapest first:
//!
//! 1. `@rate("N/s|m|h")`: the agent's rate under each naming policy
//!    (`rate_limited`, 429, with `Retry-After`).
//! 2. `@obligation("mfa")`: the agent must act for a delegating user whose
//!    token shows fresh MFA (`user_mfa_required`).
//! 3. `@obligation("approval")`, or a write of an agent whose risk grade
//!    holds writes (contain): the body is read (within the body limit)
//!    and hashed, and the call must match an approved, unused ticket;
//!    otherwise it gets one (`approval_required` with the ticket id), or with
//!    `Prefer: wait=N` it is held until a human decides or N seconds pass.
//!    The ticket says who required it (`policy` or `analytics`); [`hold`] is
//!    the same gate for LLM routes and MCP tool calls.
//! 4. `@obligation("redact")` is handed on: inspect_out redacts the response.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use portcullis_core::{Decision, ErrorCode};
use portcullis_policy::Obligations;
use sha2::{Digest as _, Sha256};

use crate::approvals::{Approvals, CallBinding, Gate, RequiredBy, Ticket};
use crate::body::BodyMeter;
use crate::pipeline::authenticate::Identity;
use crate::pipeline::contain::{APPROVE_WRITES, Writes};
use crate::pipeline::contextualize::RequestContext;
use crate::pipeline::decode::{DecodedRequest, read_whole};
use crate::rate_limit::RateLimiter;
use crate::respond::{Denial, DenialDetail};

/// What the later stages must do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Obliged {
    /// Redact the response (`@obligation("redact")`).
    pub redact: bool,
}

/// What the stage needs from the gateway.
pub struct Desk<'a> {
    /// Per-agent rates.
    pub rates: &'a RateLimiter,
    /// Approval tickets.
    pub approvals: &'a Approvals,
    /// The request body limit.
    pub max_body_bytes: u64,
}

/// Runs the stage. `writes` is what contain found the agent's grade does
/// to this call: `Writes::Approval` holds it for a human like an approval
/// obligation does (and says so in the ticket). `ticket` receives the
/// approval ticket involved, even when the request is refused, for the
/// audit record.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    desk: &Desk<'_>,
    obligations: &Obligations,
    writes: Writes,
    decision: &Decision,
    policy_version: u64,
    identity: &Identity,
    context: &RequestContext,
    request: DecodedRequest,
    meter: &Arc<BodyMeter>,
    ticket: &mut Option<String>,
) -> Result<(DecodedRequest, Obliged), Denial> {
    let obliged = Obliged {
        redact: obligations.redact,
    };
    for (policy, rate) in &obligations.rates {
        if let Err(wait) = desk.rates.check(policy, &identity.agent, *rate) {
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
        let fresh = identity.caller.delegation.is_some() && identity.caller.auth.mfa;
        if !fresh {
            return Err(Denial {
                code: ErrorCode::UserMfaRequired,
                message: "the deciding policy requires a delegating user with fresh MFA".into(),
                policies: decision.policy_ids.clone(),
                detail: None,
            });
        }
    }
    let mut request = request;
    if obligations.redact {
        // The redactor reads responses only as the upstream sends them plain.
        request.parts.headers.remove(http::header::ACCEPT_ENCODING);
    }
    // Analytics first: its hold is the one the ticket names, since a ticket
    // a policy asked for alone would not tell the human the agent is risky.
    let required_by = if writes == Writes::Approval {
        RequiredBy::Analytics
    } else if obligations.approval {
        RequiredBy::Policy
    } else {
        return Ok((request, obliged));
    };

    let wait = prefer_wait(&request.parts.headers);
    let DecodedRequest {
        parts,
        body,
        target,
    } = request;
    let bytes = read_whole(body, desk.max_body_bytes, meter).await?;
    let binding = CallBinding {
        agent: identity.agent.clone(),
        user: identity.caller.delegation.as_ref().map(|d| d.user.clone()),
        action: context.action.as_str().to_string(),
        resource: context.route.name.clone(),
        path: context.path.clone(),
        body_sha256: hex::encode(Sha256::digest(&bytes)),
        policy_version,
        policy_id: decision.policy_ids.first().cloned().unwrap_or_default(),
        required_by,
    };
    hold(desk.approvals, binding, wait, &decision.policy_ids, ticket).await?;
    let body = Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok((
        DecodedRequest {
            parts,
            body,
            target,
        },
        obliged,
    ))
}

/// Holds one call for a human: `Ok` when an approval of exactly this call
/// was there to use (and is now used); otherwise `approval_required` with
/// the call's ticket, or `approval_denied`. With `wait`, waits up to that
/// long for the decision first. `ticket` receives the ticket either way.
/// Shared by HTTP routes (above), LLM routes and MCP tool calls, so every
/// protocol gets the same tickets and the same answer.
pub async fn hold(
    approvals: &Approvals,
    binding: CallBinding,
    wait: Option<Duration>,
    policies: &[String],
    ticket: &mut Option<String>,
) -> Result<(), Denial> {
    let required_by = binding.required_by;
    let mut gate = approvals.gate(binding.clone());
    if let (Gate::Pending(open, _), Some(wait)) = (&gate, wait) {
        let id = open.id.clone();
        gate = approvals.wait(binding, &id, wait).await;
    }
    let policies = match required_by {
        RequiredBy::Policy => policies.to_vec(),
        RequiredBy::Analytics => vec![APPROVE_WRITES.to_string()],
    };
    let refusal = |t: &Ticket, code, message: &str| Denial {
        code,
        message: message.to_string(),
        policies: policies.clone(),
        detail: Some(DenialDetail::Ticket {
            id: t.id.clone(),
            expires_ms: t.expires_ms,
        }),
    };
    match gate {
        Gate::Approved(t) => {
            *ticket = Some(t.id);
            Ok(())
        }
        Gate::Pending(t, _) => {
            *ticket = Some(t.id.clone());
            let message = match required_by {
                RequiredBy::Policy => {
                    "this call needs a human's approval: `portcullis approvals approve <ticket>`, then send the same call again"
                }
                RequiredBy::Analytics => {
                    "the agent's risk score holds its writes for a human's approval: `portcullis approvals approve <ticket>`, then send the same call again"
                }
            };
            Err(refusal(&t, ErrorCode::ApprovalRequired, message))
        }
        Gate::Denied(t) => {
            *ticket = Some(t.id.clone());
            Err(refusal(
                &t,
                ErrorCode::ApprovalDenied,
                "a human denied this call",
            ))
        }
    }
}

/// `Prefer: wait=N` (RFC 7240), in seconds.
pub(crate) fn prefer_wait(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix("wait="))
        .find_map(|n| n.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_wait_is_read_from_any_prefer_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(prefer_wait(&h), None);
        h.append("prefer", "respond-async, wait=10".parse().unwrap());
        assert_eq!(prefer_wait(&h), Some(Duration::from_secs(10)));
        let mut h = http::HeaderMap::new();
        h.append("prefer", "return=minimal".parse().unwrap());
        h.append("prefer", "wait=x".parse().unwrap());
        assert_eq!(prefer_wait(&h), None);
    }
}
