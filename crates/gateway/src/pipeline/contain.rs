//! Contain: behavioral analytics' graded responses, enforced. The analytics
//! task publishes each agent's risk and grade on the [`RiskBoard`]; this stage
//! reads them (one map lookup, two atomic loads, no lock) and refuses what the
//! grade forbids:
//!
//! - quarantine: everything but the routes in `[analytics] quarantine_allow`
//!   (403 `quarantined`), until a human releases the agent;
//! - read-only: writes (403 `read_only`);
//! - throttle: beyond `[analytics] throttle_per_minute` (429 `throttled`),
//!   and writes wait for approval as at approve-writes (a riskier grade never
//!   frees what a milder one holds);
//! - approve-writes: each write waits for a human's approval; the approve
//!   stage (and the MCP and LLM adapters) hold it with an approval ticket,
//!   the same one an `@obligation("approval")` gets;
//! - alert: nothing is refused; a human is told.
//!
//! What a write is, is decided here for both read-only and approve-writes:
//! on HTTP and LLM routes every method but GET and HEAD; on MCP routes, where
//! every message is a POST, a `tools/call` message (a tool may change
//! anything; listing, reading resources and prompts, and session plumbing
//! are reads). MCP messages are judged one by one by the adapter, so on MCP
//! routes this stage only hands on what the grade asks of writes.
//!
//! It returns the risk score, which authorize hands to policy.
//!
//! [`RiskBoard`]: crate::analytics::board::RiskBoard

use portcullis_analytics::Grade;
use portcullis_core::ErrorCode;
use portcullis_policy::{HttpAction, McpAction};

use crate::analytics::Analytics;
use crate::config::RouteKind;
use crate::pipeline::contextualize::RequestContext;
use crate::respond::Denial;

/// The policy id an analytics hold puts in a denial and in the audit
/// record's `policies`, beside the policies that allowed the call: the
/// approval was required by the agent's risk grade, not by a policy. The
/// `analytics:` prefix is reserved (policy ids cannot start with it).
pub const APPROVE_WRITES: &str = "analytics:approve_writes";

/// What the agent's grade does to its writes in this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Writes {
    /// Decided by policy alone.
    #[default]
    Free,
    /// Each write needs a human's approval (grade approve-writes). On HTTP
    /// and LLM routes, set only when this request is a write.
    Approval,
    /// Refused (grade read-only). Only on MCP routes: elsewhere this stage
    /// refuses the write itself.
    Refused,
}

/// What the stage hands on.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Contained {
    /// The agent's risk score, for policy (`context.risk`).
    pub risk: f32,
    /// What happens to writes.
    pub writes: Writes,
}

/// Whether an HTTP method writes (everything but GET and HEAD).
pub fn is_write(action: HttpAction) -> bool {
    !matches!(action, HttpAction::Get | HttpAction::Head)
}

/// Whether an MCP message writes: a tool call. Its effects are unknown to
/// the gateway (a tool's own `readOnlyHint` comes from the upstream, which is
/// not trusted to vouch for itself).
pub fn is_mcp_write(action: McpAction) -> bool {
    action == McpAction::CallTool
}

/// The refusal of a write at grade read-only.
pub fn read_only() -> Denial {
    Denial::new(
        ErrorCode::ReadOnly,
        "the agent is read-only while its risk score is high",
    )
}

/// Runs the stage: the agent's risk and what its grade does to writes, or
/// the grade's refusal.
pub fn run(
    analytics: Option<&Analytics>,
    agent: &str,
    context: &RequestContext,
    now_epoch: i64,
) -> Result<Contained, Denial> {
    let Some(analytics) = analytics else {
        return Ok(Contained::default());
    };
    let Some(entry) = analytics.board().get(agent) else {
        return Ok(Contained::default());
    };
    let risk = entry.risk();
    // MCP routes judge each message; elsewhere the method says it all.
    let mcp = context.route.kind == RouteKind::Mcp;
    let write = !mcp && is_write(context.action);
    let writes = match entry.grade() {
        Grade::Quarantine => {
            if !analytics.config().quarantine_admits(&context.route.name) {
                return Err(Denial::new(
                    ErrorCode::Quarantined,
                    "the agent is quarantined by behavioral analytics; an operator must release it",
                ));
            }
            Writes::Free
        }
        Grade::ReadOnly if write => return Err(read_only()),
        Grade::ReadOnly if mcp => Writes::Refused,
        Grade::Throttle => {
            let minute = (now_epoch / 60) as u32;
            if !entry.take(minute, analytics.config().throttle_per_minute) {
                return Err(Denial::new(
                    ErrorCode::Throttled,
                    "the agent is throttled while its risk score is high; retry next minute",
                ));
            }
            // A riskier grade never frees what a milder one holds.
            if write || mcp {
                Writes::Approval
            } else {
                Writes::Free
            }
        }
        Grade::ApproveWrites if write || mcp => Writes::Approval,
        Grade::ReadOnly | Grade::ApproveWrites | Grade::Alert | Grade::Normal => Writes::Free,
    };
    Ok(Contained { risk, writes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_the_same_for_both_grades_that_hold_them() {
        let writes: Vec<bool> = [
            HttpAction::Get,
            HttpAction::Head,
            HttpAction::Post,
            HttpAction::Put,
            HttpAction::Patch,
            HttpAction::Delete,
        ]
        .into_iter()
        .map(is_write)
        .collect();
        assert_eq!(writes, [false, false, true, true, true, true]);
        let mcp: Vec<bool> = [
            McpAction::CallTool,
            McpAction::ListTools,
            McpAction::ReadResource,
            McpAction::ListResources,
            McpAction::GetPrompt,
            McpAction::ListPrompts,
        ]
        .into_iter()
        .map(is_mcp_write)
        .collect();
        assert_eq!(mcp, [true, false, false, false, false, false]);
        // The hold's name can never be a user policy's id.
        assert!(APPROVE_WRITES.starts_with(portcullis_policy::ANALYTICS_PREFIX));
    }
}
