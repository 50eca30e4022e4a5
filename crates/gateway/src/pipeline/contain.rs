//! Contain: behavioral analytics' graded responses, enforced. The analytics
//! task publishes each agent's risk and grade on the [`RiskBoard`]; this stage
//! reads them (one map lookup, two atomic loads, no lock) and refuses what the
//! grade forbids:
//!
//! - quarantine: everything but the routes in `[analytics] quarantine_allow`
//!   (403 `quarantined`), until a human releases the agent;
//! - read-only: writes (403 `read_only`);
//! - throttle: beyond `[analytics] throttle_per_minute` (429 `throttled`);
//! - alert: nothing is refused; a human is told.
//!
//! It returns the risk score, which authorize hands to policy.
//!
//! [`RiskBoard`]: crate::analytics::board::RiskBoard

use portcullis_analytics::Grade;
use portcullis_core::ErrorCode;
use portcullis_policy::HttpAction;

use crate::analytics::Analytics;
use crate::pipeline::contextualize::RequestContext;
use crate::respond::Denial;

/// Runs the stage: the agent's risk, or the grade's refusal.
pub fn run(
    analytics: Option<&Analytics>,
    agent: &str,
    context: &RequestContext,
    now_epoch: i64,
) -> Result<f32, Denial> {
    let Some(analytics) = analytics else {
        return Ok(0.0);
    };
    let Some(entry) = analytics.board().get(agent) else {
        return Ok(0.0);
    };
    let risk = entry.risk();
    match entry.grade() {
        Grade::Quarantine => {
            let allowed = analytics
                .config()
                .quarantine_allow
                .iter()
                .any(|r| *r == context.route.name);
            if !allowed {
                return Err(Denial::new(
                    ErrorCode::Quarantined,
                    "the agent is quarantined by behavioral analytics; an operator must release it",
                ));
            }
        }
        Grade::ReadOnly if !matches!(context.action, HttpAction::Get | HttpAction::Head) => {
            return Err(Denial::new(
                ErrorCode::ReadOnly,
                "the agent is read-only while its risk score is high",
            ));
        }
        Grade::Throttle => {
            let minute = (now_epoch / 60) as u32;
            if !entry.take(minute, analytics.config().throttle_per_minute) {
                return Err(Denial::new(
                    ErrorCode::Throttled,
                    "the agent is throttled while its risk score is high; retry next minute",
                ));
            }
        }
        Grade::ReadOnly | Grade::Alert | Grade::Normal => {}
    }
    Ok(risk)
}
