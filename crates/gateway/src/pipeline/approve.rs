//! Approve: the approval desk's gate for one call, used by the one decision
//! path (`decide.rs`) for `@obligation("approval")` and for a write the
//! agent's risk grade holds. The call must match an approved, unused ticket;
//! otherwise it gets one (`approval_required` with the ticket id), or with
//! `Prefer: wait=N` it is held until a human decides or N seconds pass. The
//! ticket says who required it (`policy` or `analytics`).

use std::time::Duration;

use crate::approvals::{Approvals, CallBinding, Gate, RequiredBy, Ticket};
use crate::pipeline::contain::APPROVE_WRITES;
use crate::respond::{Denial, DenialDetail};
use portcullis_core::ErrorCode;

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
        gate = approvals.wait(binding.clone(), &id, wait).await;
    }
    // Cluster mode: the use is confirmed in the shared store, once.
    let gate = approvals.confirm(gate, binding).await;
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
