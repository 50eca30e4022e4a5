//! `policy explain`: why a request is decided the way it is.
//!
//! Cedar reports which policies decided, not why the others did not apply.
//! For each policy this evaluates it alone, then (when it was not satisfied)
//! its scope alone, and then each top-level part of its conditions alone:
//! every conjunct of a `when { a && b }` and every disjunct of an
//! `unless { a || b }`. Each part is a policy of its own built from Cedar's
//! JSON form of the original, so the answer comes from Cedar's evaluator, not
//! from a second interpreter that could disagree with it.
//!
//! Every kind of request is explained the same way, over the Cedar request
//! and entities its decision uses: HTTP requests on routes ([`Authorizer::explain`]),
//! MCP messages over their entity slice (the tool, prompt or resource made
//! for the message, and its arguments: [`Authorizer::explain_mcp`]), model
//! requests ([`Authorizer::explain_model`]), `use_secret`
//! ([`Authorizer::explain_secret`]) and `read_data`
//! ([`Authorizer::explain_dataset`]). Grants (template-linked policies) are
//! not traced; a schema without the action explains nothing beyond the
//! decision's error.

use cedar_policy::{Decision as CedarDecision, Entities, Policy, PolicyId, PolicySet, Request};
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
        let cedar_request = self.cedar_request(request, None);
        self.trace_all(decision, cedar_request, &self.entities)
    }

    /// Decides an MCP message (see [`crate::McpRequest`]) and explains every
    /// policy's part in it. The policies are evaluated with the entities the
    /// decision uses: the agent, its route, the tool (prompt, resource) made
    /// for the message, and its arguments.
    pub fn explain_mcp(&self, request: &crate::McpRequest<'_>) -> Explanation {
        let decision = self.decide_mcp(request);
        let Some(mcp) = &self.mcp else {
            return Explanation {
                decision,
                policies: Vec::new(),
            };
        };
        match mcp.explain_parts(&self.entities, request) {
            Ok((cedar_request, slice)) => self.trace_all(decision, Ok(cedar_request), &slice),
            Err(e) => self.trace_all(decision, Err(e), &self.entities),
        }
    }

    /// Decides a model request (see [`crate::ModelRequest`]) and explains
    /// every policy's part in it.
    pub fn explain_model(&self, request: &crate::ModelRequest<'_>) -> Explanation {
        let decision = self.decide_model(request);
        match &self.model {
            Some(m) => self.trace_all(decision, m.explain_request(request), &self.entities),
            None => Explanation {
                decision,
                policies: Vec::new(),
            },
        }
    }

    /// Decides a `use_secret` request (see [`crate::SecretRequest`]) and
    /// explains every policy's part in it.
    pub fn explain_secret(&self, request: &crate::SecretRequest<'_>) -> Explanation {
        let decision = self.decide_secret(request);
        match &self.secret {
            Some(s) => self.trace_all(decision, s.explain_request(request), &self.entities),
            None => Explanation {
                decision,
                policies: Vec::new(),
            },
        }
    }

    /// Decides an egress connection (see [`crate::EgressRequest`]) and
    /// explains every policy's part in it.
    pub fn explain_egress(&self, request: &crate::EgressRequest<'_>) -> Explanation {
        let decision = self.decide_egress(request);
        match &self.egress {
            Some(e) => self.trace_all(decision, e.explain_request(request), &self.entities),
            None => Explanation {
                decision,
                policies: Vec::new(),
            },
        }
    }

    /// Decides a `read_data` request (see [`crate::DatasetRequest`]) and
    /// explains every policy's part in it.
    pub fn explain_dataset(&self, request: &crate::DatasetRequest<'_>) -> Explanation {
        let decision = self.decide_dataset(request);
        match &self.dataset {
            Some(d) => self.trace_all(decision, d.explain_request(request), &self.entities),
            None => Explanation {
                decision,
                policies: Vec::new(),
            },
        }
    }

    /// Traces every policy of the bundle on `cedar_request` over `entities`.
    /// A request that could not be built is one `<request>` error trace.
    fn trace_all(
        &self,
        decision: Decision,
        cedar_request: Result<Request, String>,
        entities: &Entities,
    ) -> Explanation {
        let cedar_request = match cedar_request {
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
        let satisfied = |policy: Policy| -> Result<bool, String> {
            let id = policy.id().clone();
            let mut set = PolicySet::new();
            set.add(policy).map_err(|e| e.to_string())?;
            let response = self.cedar.is_authorized(&cedar_request, &set, entities);
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
             permit writers out of scope\n\
             permit builtin:mcp-plumbing out of scope\n\
             forbid builtin:model-gate out of scope\n\
             forbid builtin:dataset-gate out of scope\n"
        );
        // 10:13 UTC from the office: allowed; the forbid's reasons not to apply are both named.
        assert_eq!(
            explain("10.1.1.1", 1_700_000_000 - 12 * 3600),
            "allow\n\
             permit hours satisfied\n\
             forbid office not satisfied: unless { context.source_ip.isInRange(ip(\"10.0.0.0/8\")) }\n\
             permit writers out of scope\n\
             permit builtin:mcp-plumbing out of scope\n\
             forbid builtin:model-gate out of scope\n\
             forbid builtin:dataset-gate out of scope\n"
        );
    }

    /// Every kind of action, explained over the entities its decision uses:
    /// the failed conditions are named as for HTTP requests. Only the
    /// policies in scope are shown.
    #[test]
    fn explains_mcp_model_and_secret_actions() {
        use crate::{McpAction, McpRequest, ModelAction, ModelEntity, ModelRequest, SecretRequest};
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![(
                "t.cedar".into(),
                r#"
@id("dev-tools") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"files")
  when { resource.name != "delete_file" };
@id("tmp-only") forbid(principal, action == Action::"call_tool", resource == Tool::"files/read_file")
  unless { context.args.hasTag("path") && context.args.getTag("path") like "/tmp/*" };
@id("dev-list") permit(principal in Role::"dev", action == Action::"list_tools", resource == Route::"files")
  when { context.time.hour < 18 };
@id("docs") permit(principal in Role::"dev", action == Action::"read_resource", resource in Route::"files")
  when { resource.name like "docs://*" };
@id("public-prompts") permit(principal, action == Action::"get_prompt", resource)
  when { resource.classification_level == 0 };
@id("models") permit(principal in Role::"dev", action in [Action::"complete", Action::"embed"], resource in Route::"llm")
  when { resource.status == "approved" && context.method == "POST" };
@id("key") permit(principal in Role::"dev", action == Action::"use_secret", resource == Secret::"key")
  when { context.route == "llm" };
@id("http") permit(principal, action in Action::"read", resource);
"#
                .into(),
            )],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let route = |name: &str| RouteEntity {
            name: name.into(),
            classification: Classification::Internal,
            owner: String::new(),
            tags: Vec::new(),
        };
        let model = |name: &str, status: &str| ModelEntity {
            route: "llm".into(),
            name: name.into(),
            version: String::new(),
            status: status.into(),
            classification: Classification::Internal,
            registry: Default::default(),
        };
        let authz = Authorizer::new(
            bundle,
            &[AgentEntity {
                name: "dev-bot".into(),
                roles: vec!["dev".into()],
            }],
            &[route("files"), route("llm")],
        )
        .unwrap()
        .with_models(&[model("gpt", "approved"), model("exp", "preview")])
        .unwrap();
        assert_eq!(authz.route_models("llm"), ["gpt", "exp"]);
        assert_eq!(
            authz.route_classification("files"),
            Some(Classification::Internal)
        );
        // Only the policies in scope: the rest are out of scope, checked once.
        let in_scope = |e: Explanation| {
            let text = render(&e);
            let mut lines: Vec<&str> = text.lines().collect();
            let total = lines.len() - 1;
            lines.retain(|l| !l.ends_with("out of scope"));
            // Nine policies and the built-in model and dataset gates.
            assert!(total == 11, "{text}");
            lines.join("\n")
        };
        let ip = SourceIp::new("127.0.0.1".parse().unwrap());
        let caller = CallerFacts::mtls();
        let mcp = |action, target, args: &[crate::McpArg], epoch| {
            in_scope(authz.explain_mcp(&McpRequest {
                agent: "dev-bot",
                action,
                route: "files",
                classification: Classification::Internal,
                method: "tools/call",
                revision: "",
                target,
                args,
                path: "/mcp/files",
                content: Content::NOT_SCANNED,
                source_ip: &ip,
                time: RequestTime::from_epoch(epoch),
                caller: &caller,
            }))
        };
        let path = |p: &str| vec![crate::McpArg::string("path", p)];
        assert_eq!(
            mcp(McpAction::CallTool, "read_file", &path("/etc/passwd"), 0),
            "deny\npermit dev-tools satisfied\nforbid tmp-only satisfied"
        );
        assert_eq!(
            mcp(McpAction::CallTool, "read_file", &path("/tmp/a"), 0),
            "allow\npermit dev-tools satisfied\nforbid tmp-only not satisfied: \
             unless { context.args.hasTag(\"path\") && (context.args.getTag(\"path\") like \"/tmp/*\") }"
        );
        assert_eq!(
            mcp(McpAction::CallTool, "delete_file", &[], 0),
            "deny\npermit dev-tools not satisfied: when { resource.name != \"delete_file\" }"
        );
        // 1_700_000_000 is 22:13 UTC.
        assert_eq!(
            mcp(McpAction::ListTools, "", &[], 1_700_000_000),
            "deny\npermit dev-list not satisfied: when { context.time.hour < 18 }"
        );
        assert_eq!(
            mcp(McpAction::ReadResource, "file:///etc/hosts", &[], 0),
            "deny\npermit docs not satisfied: when { resource.name like \"docs://*\" }"
        );
        assert_eq!(
            mcp(McpAction::GetPrompt, "summary", &[], 0),
            "deny\npermit public-prompts not satisfied: when { resource.classification_level == 0 }"
        );
        // Session plumbing is explained like any action: the built-in
        // default allows it because `dev-tools` names the agent here.
        for action in [
            McpAction::OpenStream,
            McpAction::EndSession,
            McpAction::Notify,
        ] {
            assert_eq!(
                mcp(action, "", &[], 0),
                "allow\npermit builtin:mcp-plumbing satisfied",
                "{action:?}"
            );
        }

        let model = |action, model: &str, method| {
            in_scope(authz.explain_model(&ModelRequest {
                agent: "dev-bot",
                action,
                route: "llm",
                model,
                method,
                path: "/llm/v1/chat/completions",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller: &caller,
            }))
        };
        assert_eq!(
            model(ModelAction::Complete, "gpt", HttpAction::Post),
            "allow\npermit models satisfied\n\
             forbid builtin:model-gate not satisfied: when { resource.classification_level >= 2 }"
        );
        assert_eq!(
            model(ModelAction::Embed, "exp", HttpAction::Post),
            "deny\npermit models not satisfied: when { resource.status == \"approved\" }\n\
             forbid builtin:model-gate not satisfied: when { resource.classification_level >= 2 }"
        );
        // `GET /v1/models` asks `complete` with method GET.
        assert_eq!(
            model(ModelAction::Complete, "gpt", HttpAction::Get),
            "deny\npermit models not satisfied: when { context.method == \"POST\" }\n\
             forbid builtin:model-gate not satisfied: when { resource.classification_level >= 2 }"
        );

        let secret = |route| {
            in_scope(authz.explain_secret(&SecretRequest {
                agent: "dev-bot",
                secret: "key",
                route,
                method: HttpAction::Post,
                path: "/x",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller: &caller,
            }))
        };
        assert_eq!(secret("llm"), "allow\npermit key satisfied");
        assert_eq!(
            secret("files"),
            "deny\npermit key not satisfied: when { context.route == \"llm\" }"
        );
    }
}
