//! `policy explain`: why a request is decided the way it is.
//!
//! Cedar reports which policies decided, not why the others did not apply.
//! For each policy this evaluates it alone, then (when it was not satisfied)
//! its scope alone, and then each top-level part of its conditions alone:
//! every conjunct of a `when { a && b }` and every disjunct of an
//! `unless { a || b }`. Each part is a policy of its own built from Cedar's
//! JSON form of the original, so the answer comes from Cedar's evaluator, not
//! from a second interpreter that could disagree with it.

use cedar_policy::{Decision as CedarDecision, Policy, PolicyId, PolicySet};
use serde_json::{Value, json};

use crate::{Authorizer, AuthzRequest, Decision};

/// Why a request got its decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The decision, exactly as [`Authorizer::decide`] makes it.
    pub decision: Decision,
    /// Every policy of the set, in directory order.
    pub policies: Vec<PolicyTrace>,
}

/// One policy's part in a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyTrace {
    /// The policy id.
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: &'static str,
    /// What happened to it.
    pub outcome: TraceOutcome,
}

/// What happened to one policy.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceOutcome {
    /// Its scope (principal, action, resource) does not match the request.
    OutOfScope,
    /// Scope and conditions matched: it took part in the decision.
    Satisfied,
    /// Its scope matched, but these conditions did not hold (Cedar text).
    NotSatisfied(Vec<String>),
    /// Evaluating it failed; Cedar skips such a policy.
    Error(String),
}

impl Authorizer {
    /// Decides `request` and explains every policy's part in it.
    pub fn explain(&self, request: &AuthzRequest<'_>) -> Explanation {
        let decision = self.decide(request);
        let cedar_request = match self.cedar_request(request, None) {
            Ok(r) => r,
            Err(e) => {
                return Explanation {
                    decision,
                    policies: vec![PolicyTrace {
                        id: "<request>".into(),
                        effect: "permit",
                        outcome: TraceOutcome::Error(e),
                    }],
                };
            }
        };
        // `Some(true)`: satisfied; `Some(false)`: not; `None`: error (with text).
        let satisfied = |policy: Policy| -> Result<bool, String> {
            let id = policy.id().clone();
            let mut set = PolicySet::new();
            set.add(policy).map_err(|e| e.to_string())?;
            let response = self
                .cedar
                .is_authorized(&cedar_request, &set, &self.entities);
            if let Some(error) = response.diagnostics().errors().next() {
                return Err(error.to_string());
            }
            Ok(response.decision() == CedarDecision::Allow
                && response.diagnostics().reason().any(|r| *r == id))
        };
        let mut policies = Vec::new();
        for id in self.bundle.policy_ids() {
            let Some(policy) = self.bundle.policies.policy(&PolicyId::new(id)) else {
                continue;
            };
            let effect = match policy.effect() {
                cedar_policy::Effect::Permit => "permit",
                cedar_policy::Effect::Forbid => "forbid",
            };
            let outcome = match trace(policy, &satisfied) {
                Ok(outcome) => outcome,
                Err(e) => TraceOutcome::Error(e),
            };
            policies.push(PolicyTrace {
                id: id.clone(),
                effect,
                outcome,
            });
        }
        Explanation { decision, policies }
    }
}

fn trace(
    policy: &Policy,
    satisfied: &dyn Fn(Policy) -> Result<bool, String>,
) -> Result<TraceOutcome, String> {
    let json = policy.to_json().map_err(|e| e.to_string())?;
    // Probes are permits: satisfied means "allowed, naming the probe".
    let probe = |conditions: Value| -> Result<Policy, String> {
        let mut j = json.clone();
        j["effect"] = json!("permit");
        j["conditions"] = conditions;
        j["annotations"] = json!({});
        Policy::from_json(Some(PolicyId::new("probe")), j).map_err(|e| e.to_string())
    };
    let as_original = {
        let mut j = json.clone();
        j["effect"] = json!("permit");
        j["annotations"] = json!({});
        Policy::from_json(Some(PolicyId::new("probe")), j).map_err(|e| e.to_string())?
    };
    if satisfied(as_original)? {
        return Ok(TraceOutcome::Satisfied);
    }
    if !satisfied(probe(json!([]))?)? {
        return Ok(TraceOutcome::OutOfScope);
    }
    let mut failed = Vec::new();
    for condition in json["conditions"].as_array().into_iter().flatten() {
        let kind = condition["kind"].as_str().unwrap_or("when");
        // A `when` fails when any conjunct is false; an `unless` when any
        // disjunct is true.
        let split = if kind == "unless" { "||" } else { "&&" };
        let mut parts = Vec::new();
        flatten(&condition["body"], split, &mut parts);
        for part in parts {
            let single = probe(json!([{ "kind": kind, "body": part }]))?;
            let text = condition_text(&single);
            match satisfied(single) {
                Ok(true) => {}
                Ok(false) => failed.push(text),
                Err(e) => failed.push(format!("{text} (error: {e})")),
            }
        }
    }
    Ok(TraceOutcome::NotSatisfied(failed))
}

fn flatten<'a>(expr: &'a Value, op: &str, out: &mut Vec<&'a Value>) {
    match expr.get(op) {
        Some(both) => {
            flatten(&both["left"], op, out);
            flatten(&both["right"], op, out);
        }
        None => out.push(expr),
    }
}

/// `when { … }` / `unless { … }` of a one-condition probe, on one line.
fn condition_text(policy: &Policy) -> String {
    let text = policy.to_string();
    let start = ["when", "unless"]
        .iter()
        .filter_map(|k| text.find(&format!(") {k}")).map(|i| i + 2))
        .min()
        .unwrap_or(0);
    text[start..]
        .trim_end()
        .trim_end_matches(';')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use portcullis_core::Classification;

    use super::*;
    use crate::{
        AgentEntity, CallerFacts, Content, DEFAULT_SCHEMA, HttpAction, PolicyBundle, PolicySources,
        RequestTime, RouteEntity, SourceIp,
    };

    fn render(e: &Explanation) -> String {
        let mut out = format!("{}\n", if e.decision.allowed { "allow" } else { "deny" });
        for p in &e.policies {
            let what = match &p.outcome {
                TraceOutcome::OutOfScope => "out of scope".to_string(),
                TraceOutcome::Satisfied => "satisfied".to_string(),
                TraceOutcome::NotSatisfied(f) => format!("not satisfied: {}", f.join(" | ")),
                TraceOutcome::Error(e) => format!("error: {e}"),
            };
            out.push_str(&format!("{} {} {what}\n", p.effect, p.id));
        }
        out
    }

    #[test]
    fn names_the_failed_conditions() {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![(
                "t.cedar".into(),
                r#"
@id("hours") permit(principal in Role::"reader", action in Action::"read", resource)
  when { context.time.hour >= 9 && context.time.hour < 18 && resource.classification_level <= 1 };
@id("office") forbid(principal, action, resource)
  unless { context.source_ip.isInRange(ip("10.0.0.0/8")) || context.source_ip.isLoopback() };
@id("writers") permit(principal in Role::"writer", action, resource);
"#
                .into(),
            )],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let authz = Authorizer::new(
            bundle,
            &[AgentEntity {
                name: "bot".into(),
                roles: vec!["reader".into()],
            }],
            &[RouteEntity {
                name: "r".into(),
                classification: Classification::Public,
                owner: String::new(),
                tags: Vec::new(),
            }],
        )
        .unwrap();
        let caller = CallerFacts::mtls();
        let explain = |ip: &str, epoch| {
            render(&authz.explain(&AuthzRequest {
                agent: "bot",
                action: HttpAction::Get,
                route: "r",
                path: "/r",
                source_ip: &SourceIp::new(ip.parse().unwrap()),
                time: RequestTime::from_epoch(epoch),
                content: Content::NOT_SCANNED,
                caller: &caller,
            }))
        };
        // 1_700_000_000 is 22:13 UTC: too late, and from outside the office.
        assert_eq!(
            explain("192.168.1.1", 1_700_000_000),
            "deny\n\
             permit hours not satisfied: when { context.time.hour < 18 }\n\
             forbid office satisfied\n\
             permit writers out of scope\n"
        );
        // 10:13 UTC from the office: allowed; the forbid's reasons not to apply are both named.
        assert_eq!(
            explain("10.1.1.1", 1_700_000_000 - 12 * 3600),
            "allow\n\
             permit hours satisfied\n\
             forbid office not satisfied: unless { context.source_ip.isInRange(ip(\"10.0.0.0/8\")) }\n\
             permit writers out of scope\n"
        );
    }
}
