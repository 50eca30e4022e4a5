//! Time-boxed grants as Cedar template-linked policies.
//!
//! One template per granted action,
//! `permit(principal == ?principal, action == Action::"<a>", resource == ?resource)`,
//! and one link per grant, `grant:<id>`, filling the agent and the resource:
//! a route for an HTTP action, `Tool::"<route>/<tool>"` (or the prompt, the
//! MCP resource, the route for a list action) for an MCP action,
//! `Model::"<route>/<model>"` for `complete`/`embed`. A break-glass grant,
//! `breakglass:<id>`, permits the agent every action on everything but a
//! vault secret. The full set (what Cedar would evaluate without the index)
//! holds the templates and links. The scope index and the per-action
//! candidate slices (MCP, models) take static policies only, so they get
//! each link's static twin — the same scope and condition, the same id —
//! which Cedar decides identically; tests check sliced and full decisions
//! agree with grants.

use std::collections::HashMap;

use cedar_policy::{
    EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, SlotId, Template,
};

use crate::entities::EntityError;
use crate::facts::HttpAction;
use crate::mcp::McpAction;
use crate::model::{ModelAction, ModelEntity};

/// Policy ids of grants start with this; user policies may not.
pub const GRANT_PREFIX: &str = "grant:";
/// Policy ids of break-glass grants start with this; user policies may not.
pub const BREAKGLASS_PREFIX: &str = "breakglass:";
/// What behavioral analytics did to a call (e.g. held it for approval) is
/// named in the audit record's `policies` with this prefix; user policies
/// may not take it.
pub const ANALYTICS_PREFIX: &str = "analytics:";

/// A live grant: `agent` may do what `scope` says until `expires_epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantEntity {
    /// The grant id.
    pub id: String,
    /// The agent.
    pub agent: String,
    /// What it permits.
    pub scope: GrantScope,
    /// When it lapses, seconds since the epoch.
    pub expires_epoch: i64,
}

/// What a grant permits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantScope {
    /// One HTTP action on one route (`grant:<id>`), from an approval with a TTL.
    Call {
        /// The action.
        action: HttpAction,
        /// The route.
        route: String,
    },
    /// One MCP action on one target of an MCP route (`grant:<id>`): a tool
    /// for `call_tool`, a prompt, a resource URI; the route itself for the
    /// list actions (`target` empty).
    Mcp {
        /// The action.
        action: McpAction,
        /// The route.
        route: String,
        /// The tool, prompt or resource; empty for the list actions.
        target: String,
    },
    /// `complete` or `embed` on one model of an LLM route (`grant:<id>`).
    Model {
        /// The action.
        action: ModelAction,
        /// The route.
        route: String,
        /// The model's name.
        model: String,
    },
    /// Every action on every route and everything in it (tools, prompts,
    /// MCP resources, models), never a vault secret (`breakglass:<id>`).
    /// Forbids still apply.
    BreakGlass,
}

impl GrantScope {
    /// The scope of a stored grant: its Cedar action and its resource as the
    /// audit record names it (`<route>` for an HTTP action or an MCP list
    /// action, `<route>/<target>` for a tool, prompt, MCP resource or
    /// model). `None` for an action no grant can stand for.
    pub fn parse(action: &str, resource: &str) -> Option<GrantScope> {
        if let Some(action) = HttpAction::from_method(action) {
            return Some(GrantScope::Call {
                action,
                route: resource.to_string(),
            });
        }
        if let Some(action) = McpAction::from_name(action) {
            let (route, target) = if action.on_route() {
                (resource, "")
            } else {
                resource.split_once('/')?
            };
            return Some(GrantScope::Mcp {
                action,
                route: route.to_string(),
                target: target.to_string(),
            });
        }
        let action = ModelAction::from_name(action)?;
        let (route, model) = resource.split_once('/')?;
        Some(GrantScope::Model {
            action,
            route: route.to_string(),
            model: model.to_string(),
        })
    }
}

impl GrantEntity {
    /// The policy id of the grant.
    pub fn policy_id(&self) -> String {
        match self.scope {
            GrantScope::BreakGlass => format!("{BREAKGLASS_PREFIX}{}", self.id),
            _ => format!("{GRANT_PREFIX}{}", self.id),
        }
    }
}

/// The snapshot's types and HTTP actions a grant's link is made of.
pub(crate) struct GrantTypes<'a> {
    /// The HTTP actions' uids, by [`HttpAction::index`].
    pub actions: &'a [EntityUid; 6],
    /// `Agent`.
    pub agent: &'a EntityTypeName,
    /// `Route`.
    pub route: &'a EntityTypeName,
}

fn template_id(action: Option<&str>) -> PolicyId {
    match action {
        Some(action) => PolicyId::new(format!("portcullis-grant-template-{action}")),
        None => PolicyId::new("portcullis-breakglass-template"),
    }
}

/// What break-glass permits: everything but a secret (`use_secret` stays
/// with policy; the gateway never decides a secret with grants anyway).
const BREAKGLASS: &str =
    "permit(principal == ?principal, action, resource) unless { resource is Secret };";

/// Returns (full set, set of static twins for the index and the per-action
/// slices, expiry by grant policy id).
pub(crate) fn link(
    bundle: &PolicySet,
    grants: &[GrantEntity],
    types: &GrantTypes<'_>,
) -> Result<(PolicySet, PolicySet, HashMap<String, i64>), EntityError> {
    let err = |e: &dyn std::fmt::Display| EntityError::new(format!("cannot link grant: {e}"));
    let parse_type = |t: &str| {
        t.parse::<EntityTypeName>()
            .map_err(|e| EntityError::new(e.to_string()))
    };
    let mut full = bundle.clone();
    let mut indexed = bundle.clone();
    let mut expiry = HashMap::new();
    let mut templates: Vec<String> = Vec::new();
    for grant in grants {
        let id = grant.policy_id();
        let agent =
            EntityUid::from_type_name_and_id(types.agent.clone(), EntityId::new(&grant.agent));
        // (the action's name, its uid, the resource) of a one-call grant.
        let one = match &grant.scope {
            GrantScope::Call { action, route } => Some((
                action.as_str(),
                types.actions[action.index()].to_string(),
                EntityUid::from_type_name_and_id(types.route.clone(), EntityId::new(route)),
            )),
            GrantScope::Mcp {
                action,
                route,
                target,
            } => {
                let resource = if action.on_route() {
                    EntityUid::from_type_name_and_id(types.route.clone(), EntityId::new(route))
                } else {
                    EntityUid::from_type_name_and_id(
                        parse_type(action.resource_type())?,
                        EntityId::new(format!("{route}/{target}")),
                    )
                };
                Some((
                    action.as_str(),
                    format!("Action::\"{}\"", action.as_str()),
                    resource,
                ))
            }
            GrantScope::Model {
                action,
                route,
                model,
            } => Some((
                action.as_str(),
                format!("Action::\"{}\"", action.as_str()),
                EntityUid::from_type_name_and_id(
                    parse_type("Model")?,
                    EntityId::new(ModelEntity::id(route, model)),
                ),
            )),
            GrantScope::BreakGlass => None,
        };
        let (template, twin, slots) = match one {
            Some((name, action, resource)) => {
                let template = template_id(Some(name));
                if !templates.iter().any(|t| t == name) {
                    let text = format!(
                        "permit(principal == ?principal, action == {action}, resource == ?resource);"
                    );
                    let parsed =
                        Template::parse(Some(template.clone()), &text).map_err(|e| err(&e))?;
                    full.add_template(parsed).map_err(|e| err(&e))?;
                    templates.push(name.to_string());
                }
                (
                    template,
                    format!(
                        "permit(principal == {agent}, action == {action}, resource == {resource});"
                    ),
                    HashMap::from([(SlotId::principal(), agent), (SlotId::resource(), resource)]),
                )
            }
            None => {
                let template = template_id(None);
                if !templates.iter().any(String::is_empty) {
                    let parsed =
                        Template::parse(Some(template.clone()), BREAKGLASS).map_err(|e| err(&e))?;
                    full.add_template(parsed).map_err(|e| err(&e))?;
                    templates.push(String::new());
                }
                (
                    template,
                    BREAKGLASS.replace("?principal", &agent.to_string()),
                    HashMap::from([(SlotId::principal(), agent)]),
                )
            }
        };
        full.link(template, PolicyId::new(&id), slots)
            .map_err(|e| err(&e))?;
        let twin = Policy::parse(Some(PolicyId::new(&id)), &twin).map_err(|e| err(&e))?;
        indexed.add(twin).map_err(|e| err(&e))?;
        expiry.insert(id, grant.expires_epoch);
    }
    Ok((full, indexed, expiry))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use portcullis_core::Classification;

    use super::*;
    use crate::{
        AgentEntity, Authorizer, AuthzRequest, CallerFacts, Content, DEFAULT_SCHEMA, PolicyBundle,
        PolicySources, RequestTime, RouteEntity, SourceIp,
    };

    #[test]
    fn grants_permit_until_they_lapse_and_the_index_agrees() {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![(
                "t.cedar".into(),
                r#"
@id("approve-transfers") @obligation("approval")
permit(principal in Role::"payer", action == Action::"POST", resource == Route::"bank");
@id("no-deletes") forbid(principal, action == Action::"DELETE", resource);
"#
                .into(),
            )],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let agents: Vec<AgentEntity> = ["pay-bot", "other"]
            .iter()
            .map(|n| AgentEntity {
                name: n.to_string(),
                roles: vec!["payer".into()],
            })
            .collect();
        let routes = [RouteEntity {
            name: "bank".into(),
            classification: Classification::Confidential,
            owner: String::new(),
            tags: Vec::new(),
        }];
        let grant = |id: &str, action| GrantEntity {
            id: id.into(),
            agent: "pay-bot".into(),
            scope: GrantScope::Call {
                action,
                route: "bank".into(),
            },
            expires_epoch: 1_000,
        };
        let authz = Authorizer::with_grants(
            bundle,
            &agents,
            &routes,
            &[
                grant("g1", HttpAction::Post),
                grant("g2", HttpAction::Delete),
            ],
        )
        .unwrap();
        let caller = CallerFacts::mtls();
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let decide = |agent: &str, action, epoch| {
            let request = AuthzRequest {
                agent,
                action,
                route: "bank",
                path: "/bank",
                source_ip: &ip,
                time: RequestTime::from_epoch(epoch),
                content: Content::NOT_SCANNED,
                caller: &caller,
            };
            let sliced = authz.decide(&request);
            assert_eq!(
                sliced,
                authz.decide_unindexed(&request),
                "{agent} {action:?} {epoch}"
            );
            sliced
        };
        // The grant stands beside the approval policy: no approval obligation.
        let d = decide("pay-bot", HttpAction::Post, 999);
        assert_eq!(d.policy_ids, ["approve-transfers", "grant:g1"]);
        assert!(!authz.obligations(&d).approval);
        // Without the grant (another agent), approval is required.
        let d = decide("other", HttpAction::Post, 999);
        assert_eq!(d.policy_ids, ["approve-transfers"]);
        assert!(authz.obligations(&d).approval);
        // A grant never overrides a forbid.
        assert_eq!(
            decide("pay-bot", HttpAction::Delete, 999).policy_ids,
            ["no-deletes"]
        );
        // Lapsed: back to needing approval (asked twice: the memo must not keep it).
        for _ in 0..2 {
            let d = decide("pay-bot", HttpAction::Post, 1_000);
            assert_eq!(d.policy_ids, ["approve-transfers"]);
            assert!(authz.obligations(&d).approval);
        }
        // A grant permits its own action only.
        assert_eq!(
            decide("pay-bot", HttpAction::Get, 999).policy_ids,
            ["default-deny"]
        );
    }

    /// An MCP tool and a model granted, beside permits that oblige approval
    /// and a forbid; a break-glass for another agent.
    fn protocol_grants(epoch_limit: i64) -> Authorizer {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![(
                "t.cedar".into(),
                r#"
@id("tools-approval") @obligation("approval")
permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"tools");
@id("llm-approval") @obligation("approval")
permit(principal in Role::"dev", action == Action::"complete", resource in Route::"llm");
@id("no-rm") forbid(principal, action == Action::"call_tool", resource == Tool::"tools/rm");
@id("no-big") forbid(principal, action, resource == Model::"llm/big");
"#
                .into(),
            )],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let agents: Vec<AgentEntity> = ["dev-bot", "other", "ops-bot"]
            .iter()
            .map(|n| AgentEntity {
                name: n.to_string(),
                roles: vec!["dev".into()],
            })
            .collect();
        let route = |name: &str| RouteEntity {
            name: name.into(),
            classification: Classification::Internal,
            owner: String::new(),
            tags: Vec::new(),
        };
        let grant = |id: &str, agent: &str, scope| GrantEntity {
            id: id.into(),
            agent: agent.into(),
            scope,
            expires_epoch: epoch_limit,
        };
        let model = |name: &str| crate::ModelEntity {
            route: "llm".into(),
            name: name.into(),
            version: String::new(),
            status: "approved".into(),
            classification: Classification::Internal,
            registry: Default::default(),
        };
        Authorizer::with_grants(
            bundle,
            &agents,
            &[route("tools"), route("llm")],
            &[
                grant(
                    "t1",
                    "dev-bot",
                    GrantScope::parse("call_tool", "tools/save").unwrap(),
                ),
                grant(
                    "t2",
                    "dev-bot",
                    GrantScope::parse("call_tool", "tools/rm").unwrap(),
                ),
                grant(
                    "m1",
                    "dev-bot",
                    GrantScope::parse("complete", "llm/gpt").unwrap(),
                ),
                grant("b1", "ops-bot", GrantScope::BreakGlass),
            ],
        )
        .unwrap()
        .with_models(&[model("gpt"), model("big")])
        .unwrap()
    }

    #[test]
    fn grants_permit_one_tool_or_model_until_they_lapse_and_forbids_win() {
        let authz = protocol_grants(1_000);
        let caller = CallerFacts::mtls();
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let tool = |agent: &str, tool: &str, epoch| {
            let r = crate::McpRequest {
                agent,
                action: crate::McpAction::CallTool,
                route: "tools",
                classification: Classification::Internal,
                method: "tools/call",
                revision: "",
                target: tool,
                args: &[],
                path: "/mcp",
                content: Content::NOT_SCANNED,
                source_ip: &ip,
                time: RequestTime::from_epoch(epoch),
                caller: &caller,
            };
            let d = authz.decide_mcp(&r);
            assert_eq!(d, authz.decide_mcp_unsliced(&r), "{agent} {tool} {epoch}");
            (d.policy_ids.clone(), authz.obligations(&d).approval)
        };
        let model = |agent: &str, model: &str, action, epoch| {
            let r = crate::ModelRequest {
                agent,
                action,
                route: "llm",
                model,
                method: HttpAction::Post,
                path: "/llm/v1/chat/completions",
                source_ip: &ip,
                time: RequestTime::from_epoch(epoch),
                content: Content::NOT_SCANNED,
                caller: &caller,
            };
            let d = authz.decide_model(&r);
            assert_eq!(
                d,
                authz.decide_model_unsliced(&r),
                "{agent} {model} {epoch}"
            );
            (d.policy_ids.clone(), authz.obligations(&d).approval)
        };
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // The grant stands beside the approval permit: no approval owed.
        assert_eq!(
            tool("dev-bot", "save", 999),
            (ids(&["grant:t1", "tools-approval"]), false)
        );
        assert_eq!(
            model("dev-bot", "gpt", crate::ModelAction::Complete, 999),
            (ids(&["grant:m1", "llm-approval"]), false)
        );
        // Its one tool, its one model, its one action, its one agent.
        assert_eq!(
            tool("dev-bot", "other", 999),
            (ids(&["tools-approval"]), true)
        );
        assert_eq!(tool("other", "save", 999), (ids(&["tools-approval"]), true));
        assert_eq!(
            model("dev-bot", "gpt", crate::ModelAction::Embed, 999),
            (ids(&["default-deny"]), false)
        );
        // A forbid wins over a grant.
        assert_eq!(tool("dev-bot", "rm", 999), (ids(&["no-rm"]), false));
        // Lapsed (asked twice: the memo must not keep it).
        for _ in 0..2 {
            assert_eq!(
                tool("dev-bot", "save", 1_000),
                (ids(&["tools-approval"]), true)
            );
            assert_eq!(
                model("dev-bot", "gpt", crate::ModelAction::Complete, 1_000),
                (ids(&["llm-approval"]), true)
            );
        }
        // Break-glass: every tool and model, no approval owed, forbids stand.
        assert_eq!(
            tool("ops-bot", "anything", 999),
            (ids(&["breakglass:b1", "tools-approval"]), false)
        );
        assert_eq!(
            model("ops-bot", "gpt", crate::ModelAction::Embed, 999),
            (ids(&["breakglass:b1"]), false)
        );
        assert_eq!(tool("ops-bot", "rm", 999), (ids(&["no-rm"]), false));
        assert_eq!(
            model("ops-bot", "big", crate::ModelAction::Complete, 999),
            (ids(&["no-big"]), false)
        );
    }

    #[test]
    fn break_glass_never_grants_a_secret() {
        let authz = protocol_grants(1_000);
        let caller = CallerFacts::mtls();
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let d = authz.decide_secret(&crate::SecretRequest {
            agent: "ops-bot",
            secret: "key",
            route: "tools",
            method: HttpAction::Post,
            path: "/mcp",
            source_ip: &ip,
            time: RequestTime::from_epoch(999),
            content: Content::NOT_SCANNED,
            caller: &caller,
        });
        assert!(!d.allowed, "{d:?}");
    }

    #[test]
    fn stored_grants_parse_to_their_scope() {
        assert_eq!(
            GrantScope::parse("POST", "bank"),
            Some(GrantScope::Call {
                action: HttpAction::Post,
                route: "bank".into()
            })
        );
        assert_eq!(
            GrantScope::parse("list_tools", "tools"),
            Some(GrantScope::Mcp {
                action: crate::McpAction::ListTools,
                route: "tools".into(),
                target: String::new()
            })
        );
        assert_eq!(
            GrantScope::parse("read_resource", "files/file:///a/b"),
            Some(GrantScope::Mcp {
                action: crate::McpAction::ReadResource,
                route: "files".into(),
                target: "file:///a/b".into()
            })
        );
        assert_eq!(
            GrantScope::parse("embed", "llm/e-3"),
            Some(GrantScope::Model {
                action: crate::ModelAction::Embed,
                route: "llm".into(),
                model: "e-3".into()
            })
        );
        // No target, no such action: nothing a snapshot could link.
        assert_eq!(GrantScope::parse("call_tool", "tools"), None);
        assert_eq!(GrantScope::parse("complete", "llm"), None);
        assert_eq!(GrantScope::parse("use_secret", "k"), None);
        assert_eq!(GrantScope::parse("OPTIONS", "bank"), None);
    }

    #[test]
    fn user_policies_cannot_take_grant_ids() {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![(
                "t.cedar".into(),
                "@id(\"grant:x\") permit(principal, action, resource is Route);".into(),
            )],
        };
        let err = PolicyBundle::compile(&sources).unwrap_err();
        assert!(err.to_string().contains("reserved for grants"), "{err}");
        let sources = PolicySources {
            files: vec![(
                "t.cedar".into(),
                "@id(\"analytics:approve_writes\") permit(principal, action, resource is Route);"
                    .into(),
            )],
            ..sources
        };
        let err = PolicyBundle::compile(&sources).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }
}
