//! MCP messages as policy sees them: each JSON-RPC request an agent sends on a
//! `kind = "mcp"` route is one Cedar request.
//!
//! | JSON-RPC method | action | resource |
//! | --- | --- | --- |
//! | `tools/call` | `call_tool` | `Tool::"<route>/<tool>"` |
//! | `tools/list` | `list_tools` | `Route::"<route>"` |
//! | `resources/read` | `read_resource` | `McpResource::"<route>/<uri>"` |
//! | `resources/list`, `resources/templates/list` | `list_resources` | `Route::"<route>"` |
//! | `prompts/get` | `get_prompt` | `Prompt::"<route>/<prompt>"` |
//! | `prompts/list` | `list_prompts` | `Route::"<route>"` |
//!
//! Tools, resources and prompts are discovered at run time, so they are not in
//! the snapshot's entities: each request carries a small entity slice of its
//! own (the agent with its roles, the route, the target in its route, and the
//! arguments as entities whose tags are the top-level arguments, so policies
//! can write `context.args.hasTag("path") && context.args.getTag("path") like
//! "/tmp/*"` or `context.argn.hasTag("limit") && context.argn.getTag("limit") >
//! 100`). The arguments come in canonical form (see [`crate::args`]): every
//! spelling of a number reaches policy as one text in `context.args`, and as a
//! `Long` (`context.argn`) or `decimal` (`context.argd`) when it is a number.
//! A schema written before the typed views (no `McpArgsLong`/`McpArgsDecimal`
//! entity types) still loads: its contexts lack `argn`/`argd`, and a policy
//! naming them fails validation. Only policies whose action scope can match
//! the action are evaluated; when none of them reads `context`, the decision depends only on
//! (agent, action, route, target) and is memoized for the snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression,
};
use portcullis_core::{Classification, Decision};

use crate::PolicyBundle;
use crate::args::McpArg;
use crate::caller::CallerFacts;
use crate::candidates::ActionPolicies;
use crate::entities::EntityError;
use crate::facts::{Content, RequestTime, SourceIp};

/// The MCP operations policy can grant, each an `Action::"<name>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum McpAction {
    /// `tools/call` on `Tool::"<route>/<tool>"`.
    CallTool,
    /// `tools/list` on `Route::"<route>"`.
    ListTools,
    /// `resources/read` on `McpResource::"<route>/<uri>"`.
    ReadResource,
    /// `resources/list` and `resources/templates/list` on `Route::"<route>"`.
    ListResources,
    /// `prompts/get` on `Prompt::"<route>/<prompt>"`.
    GetPrompt,
    /// `prompts/list` on `Route::"<route>"`.
    ListPrompts,
    /// Session plumbing: `initialize`, `ping`, `logging/setLevel` on
    /// `Route::"<route>"` (`Action::"mcp_session"`).
    Session,
    /// Session plumbing: a client notification (`notifications/*`).
    Notify,
    /// Session plumbing: the client's answer to a request of the server.
    Reply,
    /// Session plumbing: `GET`, the server's event stream.
    OpenStream,
    /// Session plumbing: `DELETE`, the end of the session.
    EndSession,
}

impl McpAction {
    /// Every action, in index order.
    pub const ALL: [McpAction; 11] = [
        McpAction::CallTool,
        McpAction::ListTools,
        McpAction::ReadResource,
        McpAction::ListResources,
        McpAction::GetPrompt,
        McpAction::ListPrompts,
        McpAction::Session,
        McpAction::Notify,
        McpAction::Reply,
        McpAction::OpenStream,
        McpAction::EndSession,
    ];

    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            McpAction::CallTool => "call_tool",
            McpAction::ListTools => "list_tools",
            McpAction::ReadResource => "read_resource",
            McpAction::ListResources => "list_resources",
            McpAction::GetPrompt => "get_prompt",
            McpAction::ListPrompts => "list_prompts",
            McpAction::Session => "mcp_session",
            McpAction::Notify => "notify",
            McpAction::Reply => "reply",
            McpAction::OpenStream => "open_stream",
            McpAction::EndSession => "end_session",
        }
    }

    /// The action whose Cedar id is `name` (`call_tool`, …).
    pub fn from_name(name: &str) -> Option<McpAction> {
        McpAction::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The action a JSON-RPC method is decided as, for the methods that
    /// name one action (`tools/call`, `prompts/get`, the lists, …).
    pub fn for_method(method: &str) -> Option<McpAction> {
        Some(match method {
            "tools/call" => McpAction::CallTool,
            "tools/list" => McpAction::ListTools,
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                McpAction::ReadResource
            }
            "resources/list" | "resources/templates/list" => McpAction::ListResources,
            "prompts/get" => McpAction::GetPrompt,
            "prompts/list" => McpAction::ListPrompts,
            _ => return None,
        })
    }

    /// Whether the resource is the route itself (the list actions).
    pub fn on_route(self) -> bool {
        self.resource_type() == "Route"
    }

    /// Whether it is session plumbing (in `Action::"mcp_plumbing"`): no
    /// tool, resource or prompt, `context.route_permitted` set.
    pub fn is_plumbing(self) -> bool {
        matches!(
            self,
            McpAction::Session
                | McpAction::Notify
                | McpAction::Reply
                | McpAction::OpenStream
                | McpAction::EndSession
        )
    }

    /// The entity type of the resource: a route for the list actions and
    /// the plumbing.
    pub fn resource_type(self) -> &'static str {
        match self {
            McpAction::CallTool => "Tool",
            McpAction::ReadResource => "McpResource",
            McpAction::GetPrompt => "Prompt",
            McpAction::ListTools
            | McpAction::ListResources
            | McpAction::ListPrompts
            | McpAction::Session
            | McpAction::Notify
            | McpAction::Reply
            | McpAction::OpenStream
            | McpAction::EndSession => "Route",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One MCP message to decide.
#[derive(Debug, Clone)]
pub struct McpRequest<'a> {
    /// The authenticated agent.
    pub agent: &'a str,
    /// What the message asks for.
    pub action: McpAction,
    /// The route (MCP server) it goes to.
    pub route: &'a str,
    /// The route's classification; the target inherits it.
    pub classification: Classification,
    /// The JSON-RPC method (`context.method`).
    pub method: &'a str,
    /// The MCP protocol revision the message speaks (`context.revision`,
    /// e.g. "2026-07-28"); empty when it names none.
    pub revision: &'a str,
    /// The tool or prompt name or the resource URI; empty for the list actions.
    pub target: &'a str,
    /// Top-level arguments in canonical form (`context.args`, `context.argn`,
    /// `context.argd`, as tags), from [`crate::canonical_arguments`].
    pub args: &'a [McpArg],
    /// The HTTP request path the message came on.
    pub path: &'a str,
    /// What the content guard found (`context.content`).
    pub content: Content<'a>,
    /// The client's address.
    pub source_ip: &'a SourceIp,
    /// When the message arrived.
    pub time: RequestTime,
    /// How the caller authenticated, for whom, its posture and risk.
    pub caller: &'a CallerFacts,
}

struct ActionAuthz {
    uid: EntityUid,
    /// The action's entity and those of the action groups it is in: all a
    /// request's `action in …` can ask about, so all its slice needs.
    action_entities: Vec<Entity>,
    resource_type: EntityTypeName,
    candidates: ActionPolicies,
}

/// The MCP half of a snapshot; `None` in [`crate::Authorizer`] when the schema
/// declares none of the MCP actions (a schema written before the adapter).
pub(crate) struct McpAuthz {
    /// By [`McpAction::index`]; `None` for the plumbing actions of a schema
    /// written before them.
    actions: Vec<Option<ActionAuthz>>,
    agent_type: EntityTypeName,
    route_type: EntityTypeName,
    args_type: EntityTypeName,
    /// The entity types of `context.argn` and `context.argd`; `None` for a
    /// schema written before them.
    typed_args: Option<(EntityTypeName, EntityTypeName)>,
    /// Whether the schema's MCP context declares `revision`; `false` for a
    /// schema written before it (its requests go without).
    revision: bool,
    memo: crate::memo::DecisionMemo<(String, McpAction, String, String)>,
    /// The scope-matched policies, by (agent, action, route, target): they
    /// depend on nothing else within a snapshot, and picking them costs a
    /// fifth of a decision that reads `context` (which the memo above cannot
    /// keep). Capped lower than decisions: a set is larger, and target
    /// names come from clients.
    matched: crate::memo::DecisionMemo<(String, McpAction, String, String), Arc<PolicySet>>,
}

impl McpAuthz {
    /// `policies` are the bundle's plus the grants' static twins.
    pub(crate) fn new(
        bundle: &PolicyBundle,
        policies: &PolicySet,
        entities: &Entities,
    ) -> Result<Option<Self>, EntityError> {
        let parse = |t: &str| {
            t.parse::<EntityTypeName>()
                .map_err(|e| EntityError::new(e.to_string()))
        };
        let declared: HashMap<String, EntityUid> = bundle
            .schema
            .actions()
            .filter(|a| a.type_name().to_string() == "Action")
            .map(|a| (a.id().unescaped().to_string(), a.clone()))
            .collect();
        let declares_any = |plumbing: bool| {
            McpAction::ALL
                .iter()
                .any(|a| a.is_plumbing() == plumbing && declared.contains_key(a.as_str()))
        };
        if !declares_any(false) {
            return Ok(None);
        }
        // The plumbing actions came later: a schema without any of them
        // still loads, but cannot serve an MCP route (`supports_plumbing`).
        let plumbing = declares_any(true);
        let schema_actions = bundle
            .schema
            .action_entities()
            .map_err(|e| EntityError::new(e.to_string()))?;
        let mut actions = Vec::new();
        for action in McpAction::ALL {
            if action.is_plumbing() && !plumbing {
                actions.push(None);
                continue;
            }
            let uid = declared.get(action.as_str()).cloned().ok_or_else(|| {
                EntityError::new(format!(
                    "the schema declares some MCP actions but not `Action::\"{}\"`. {}",
                    action.as_str(),
                    crate::decide::SCHEMA_HINT
                ))
            })?;
            let candidates = ActionPolicies::for_action(policies, entities, &uid);
            let mut lineage = vec![uid.clone()];
            if let Some(ancestors) = schema_actions.ancestors(&uid) {
                lineage.extend(ancestors.cloned());
            }
            let action_entities = lineage
                .iter()
                .filter_map(|u| schema_actions.get(u).cloned())
                .collect();
            actions.push(Some(ActionAuthz {
                action_entities,
                uid,
                resource_type: parse(action.resource_type())?,
                candidates,
            }));
        }
        let declares = |name: &str| bundle.schema.entity_types().any(|t| t.to_string() == name);
        let typed_args = if declares("McpArgsLong") || declares("McpArgsDecimal") {
            Some((parse("McpArgsLong")?, parse("McpArgsDecimal")?))
        } else {
            None
        };
        let mut authz = McpAuthz {
            actions,
            agent_type: parse("Agent")?,
            route_type: parse("Route")?,
            args_type: parse("McpArgs")?,
            typed_args,
            revision: true,
            memo: crate::memo::DecisionMemo::new(),
            matched: crate::memo::DecisionMemo::with_capacity(4_096),
        };
        // The request shape is fixed: prove once per action that the schema
        // accepts it, so requests skip validation.
        let ip = SourceIp::new(std::net::IpAddr::from([127, 0, 0, 1]));
        for (action, caller) in McpAction::ALL
            .into_iter()
            .filter(|a| authz.actions[a.index()].is_some())
            .flat_map(|a| CallerFacts::shape_samples().map(|c| (a, c)))
        {
            let sample = McpRequest {
                agent: "shape-check",
                action,
                route: "shape-check",
                classification: Classification::Public,
                method: "shape/check",
                revision: "",
                target: "shape-check",
                args: &[
                    McpArg::string("s", "v"),
                    McpArg {
                        name: "n".to_string(),
                        text: "1".to_string(),
                        long: Some(1),
                        decimal: Some("1.0".to_string()),
                    },
                ],
                path: "/",
                content: Content::NOT_SCANNED,
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                caller: &caller,
            };
            let permitted = action.is_plumbing().then_some(true);
            // A schema written before `context.revision` gets requests
            // without it (decided on the first sample).
            if authz.revision
                && authz
                    .request(&sample, None, None, permitted, Some(&bundle.schema))
                    .is_err()
            {
                authz.revision = false;
            }
            let (request, slice) =
                authz.request(&sample, None, None, permitted, Some(&bundle.schema))?;
            // Validates the slice's entities (attributes, tags, parents) too.
            Entities::from_entities(slice, Some(&bundle.schema)).map_err(|e| {
                EntityError::new(format!(
                    "the schema does not accept the entities the gateway makes for action `{}`: {e}. {}",
                    action.as_str(),
                    crate::decide::SCHEMA_HINT
                ))
            })?;
            drop(request);
        }
        Ok(Some(authz))
    }

    /// Whether the plumbing actions (`Action::"mcp_plumbing"`) are declared,
    /// which an MCP route needs.
    pub(crate) fn supports_plumbing(&self) -> bool {
        self.actions.iter().all(Option::is_some)
    }

    /// The action's policies; `None` for a plumbing action the schema lacks.
    fn action(&self, action: McpAction) -> Option<&ActionAuthz> {
        self.actions[action.index()].as_ref()
    }

    /// `context.route_permitted` of a plumbing message of the agent: whether
    /// some permit other than the built-in one names it on the route.
    fn agent_permitted(&self, entities: &Entities, r: &McpRequest<'_>) -> Option<bool> {
        r.action
            .is_plumbing()
            .then(|| !self.permits_on_route(entities, r.agent, r.route).is_empty())
    }

    /// The Cedar request and its entity slice. `agent` is the agent's entity
    /// from the snapshot (`None` for an agent the snapshot does not know);
    /// `route_permitted` is the plumbing's `context.route_permitted`.
    fn request(
        &self,
        r: &McpRequest<'_>,
        agent: Option<&Entity>,
        route_entity: Option<&Entity>,
        route_permitted: Option<bool>,
        schema: Option<&cedar_policy::Schema>,
    ) -> Result<(Request, Vec<Entity>), EntityError> {
        let fail = |e: String| crate::decide::schema_refuses_shape(r.action.as_str(), e);
        let a = self
            .action(r.action)
            .ok_or_else(|| fail("the schema does not declare it".to_string()))?;
        let uid = |t: &EntityTypeName, id: &str| {
            EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
        };
        let principal = uid(&self.agent_type, r.agent);
        let route = uid(&self.route_type, r.route);
        let class = |cls: Classification| {
            HashMap::from([
                (
                    "classification".to_string(),
                    RestrictedExpression::new_string(cls.as_str().to_string()),
                ),
                (
                    "classification_level".to_string(),
                    RestrictedExpression::new_long(cls.rank()),
                ),
            ])
        };
        let mut slice = Vec::with_capacity(a.action_entities.len() + 6);
        slice.extend(a.action_entities.iter().cloned());
        slice.push(match agent {
            Some(e) => e.clone(),
            None => Entity::new_no_attrs(principal.clone(), HashSet::new()),
        });
        // The route as the snapshot knows it (owner, tags); a route the
        // snapshot lacks gets its classification and empty owner and tags.
        slice.push(match route_entity {
            Some(e) => e.clone(),
            None => {
                let mut attrs = class(r.classification);
                attrs.insert(
                    "owner".to_string(),
                    RestrictedExpression::new_string(String::new()),
                );
                attrs.insert(
                    "tags".to_string(),
                    RestrictedExpression::new_set(std::iter::empty()),
                );
                Entity::new(route.clone(), attrs, HashSet::new())
                    .map_err(|e| fail(e.to_string()))?
            }
        });
        let resource = if r.action.resource_type() == "Route" {
            route
        } else {
            let id = format!("{}/{}", r.route, r.target);
            let resource = uid(&a.resource_type, &id);
            let mut attrs = class(r.classification);
            attrs.insert(
                "name".to_string(),
                RestrictedExpression::new_string(r.target.to_string()),
            );
            attrs.insert(
                "route".to_string(),
                RestrictedExpression::new_string(r.route.to_string()),
            );
            slice.push(
                Entity::new(resource.clone(), attrs, HashSet::from([route]))
                    .map_err(|e| fail(e.to_string()))?,
            );
            resource
        };
        let args = uid(&self.args_type, "args");
        let tags = r.args.iter().map(|a| {
            (
                a.name.clone(),
                RestrictedExpression::new_string(a.text.clone()),
            )
        });
        slice.push(
            Entity::new_with_tags(args.clone(), [], HashSet::new(), tags)
                .map_err(|e| fail(e.to_string()))?,
        );
        let mut typed = Vec::new();
        if let Some((long_type, decimal_type)) = &self.typed_args {
            let longs = uid(long_type, "args");
            let tags = r
                .args
                .iter()
                .filter_map(|a| Some((a.name.clone(), RestrictedExpression::new_long(a.long?))));
            slice.push(
                Entity::new_with_tags(longs.clone(), [], HashSet::new(), tags)
                    .map_err(|e| fail(e.to_string()))?,
            );
            let decimals = uid(decimal_type, "args");
            let tags = r.args.iter().filter_map(|a| {
                Some((
                    a.name.clone(),
                    RestrictedExpression::new_decimal(a.decimal.as_ref()?),
                ))
            });
            slice.push(
                Entity::new_with_tags(decimals.clone(), [], HashSet::new(), tags)
                    .map_err(|e| fail(e.to_string()))?,
            );
            typed.push((
                "argn".to_string(),
                RestrictedExpression::new_entity_uid(longs),
            ));
            typed.push((
                "argd".to_string(),
                RestrictedExpression::new_entity_uid(decimals),
            ));
        }
        let time = r.time.expr().map_err(fail)?;
        let mut pairs = vec![
            (
                "route".to_string(),
                RestrictedExpression::new_string(r.route.to_string()),
            ),
            (
                "method".to_string(),
                RestrictedExpression::new_string(r.method.to_string()),
            ),
            (
                "target".to_string(),
                RestrictedExpression::new_string(r.target.to_string()),
            ),
            (
                "args".to_string(),
                RestrictedExpression::new_entity_uid(args),
            ),
            (
                "path".to_string(),
                RestrictedExpression::new_string(r.path.to_string()),
            ),
            ("content".to_string(), r.content.expr().map_err(fail)?),
            ("source_ip".to_string(), r.source_ip.expr().clone()),
            ("time".to_string(), time),
        ];
        pairs.extend(typed);
        if self.revision {
            pairs.push((
                "revision".to_string(),
                RestrictedExpression::new_string(r.revision.to_string()),
            ));
        }
        if let Some(permitted) = route_permitted {
            pairs.push((
                "route_permitted".to_string(),
                RestrictedExpression::new_bool(permitted),
            ));
        }
        pairs.extend(r.caller.context_pairs().map_err(fail)?);
        let context = Context::from_pairs(pairs).map_err(|e| fail(e.to_string()))?;
        let request = Request::new(principal, a.uid.clone(), resource, context, schema)
            .map_err(|e| fail(e.to_string()))?;
        Ok((request, slice))
    }

    pub(crate) fn decide(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &McpRequest<'_>,
    ) -> Decision {
        let Some(a) = self.action(r.action) else {
            return missing(r.action);
        };
        if a.candidates.is_empty() {
            return Decision::default_deny();
        }
        let key = a.candidates.context_free().then(|| {
            (
                r.agent.to_string(),
                r.action,
                r.route.to_string(),
                r.target.to_string(),
            )
        });
        self.memo
            .get_or_decide(key, || self.decide_uncached(cedar, entities, r))
    }

    fn decide_uncached(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &McpRequest<'_>,
    ) -> Decision {
        let key = (
            r.agent.to_string(),
            r.action,
            r.route.to_string(),
            r.target.to_string(),
        );
        self.decide_with(
            cedar,
            entities,
            r,
            |candidates, slice, principal, resource| {
                self.matched.get_or_decide(Some(key), || {
                    Arc::new(candidates.matching(slice, principal, resource))
                })
            },
        )
    }

    /// Decides with the policies `choose` picks among the action's: those
    /// whose scope matches, or (to check that slicing changes nothing) all.
    fn decide_with(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &McpRequest<'_>,
        choose: impl FnOnce(&ActionPolicies, &Entities, &EntityUid, &EntityUid) -> Arc<PolicySet>,
    ) -> Decision {
        let Some(a) = self.action(r.action) else {
            return missing(r.action);
        };
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(r.agent));
        let route =
            EntityUid::from_type_name_and_id(self.route_type.clone(), EntityId::new(r.route));
        let permitted = self.agent_permitted(entities, r);
        match self
            .request(
                r,
                entities.get(&principal),
                entities.get(&route),
                permitted,
                None,
            )
            .and_then(|(request, slice)| {
                Entities::from_entities(slice, None)
                    .map(|slice| (request, slice))
                    .map_err(|e| EntityError::new(e.to_string()))
            }) {
            Err(e) => Decision {
                errors: vec![e.to_string()],
                ..Decision::default_deny()
            },
            Ok((request, slice)) => {
                // The slice holds the tool (prompt, resource) made for this
                // message, with its route as parent: `in` is answered by it.
                let resource = request.resource().cloned().unwrap_or(route);
                let policies = choose(&a.candidates, &slice, &principal, &resource);
                let response = cedar.is_authorized(&request, &policies, &slice);
                crate::decide::to_decision(&response)
            }
        }
    }

    /// The permits of any MCP action that could allow `agent` something on
    /// `route` (see `ActionPolicies::permits_on_route`).
    pub(crate) fn permits_on_route(
        &self,
        entities: &Entities,
        agent: &str,
        route: &str,
    ) -> Vec<String> {
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(agent));
        self.permits_of(entities, &principal, route)
    }

    /// The permits whose scope names `principal` and an MCP action on
    /// `route`, the built-in plumbing permit left out: it follows from the
    /// others and would otherwise name everyone.
    fn permits_of(&self, entities: &Entities, principal: &EntityUid, route: &str) -> Vec<String> {
        let route = EntityUid::from_type_name_and_id(self.route_type.clone(), EntityId::new(route));
        let mut out = Vec::new();
        for a in self.actions.iter().flatten() {
            a.candidates
                .permits_on_route(entities, principal, &route, &mut out);
        }
        out.retain(|id| id != crate::MCP_PLUMBING_POLICY_ID);
        out.sort();
        out.dedup();
        out
    }

    /// Decides as the user an agent acts for: `user` (with its roles as
    /// parents) takes the agent's place in the slice, and every policy of
    /// the action is evaluated (no slice, no memo).
    pub(crate) fn decide_as_user(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &McpRequest<'_>,
        user: Entity,
    ) -> Decision {
        let Some(a) = self.action(r.action) else {
            return missing(r.action);
        };
        let route =
            EntityUid::from_type_name_and_id(self.route_type.clone(), EntityId::new(r.route));
        let principal = user.uid();
        // The user's own permits on the route, over the user in its roles.
        let permitted = match r.action.is_plumbing() {
            false => None,
            true => match Entities::from_entities([user.clone()], None) {
                Ok(with_user) => Some(!self.permits_of(&with_user, &principal, r.route).is_empty()),
                Err(e) => return crate::decide::denied_with_error(e.to_string()),
            },
        };
        let built = self
            .request(r, Some(&user), entities.get(&route), permitted, None)
            .and_then(|(request, slice)| {
                // `request` names the agent; ask again with the user.
                let request = Request::new(
                    principal.clone(),
                    a.uid.clone(),
                    request.resource().cloned().unwrap_or(route.clone()),
                    request.context().cloned().unwrap_or_else(Context::empty),
                    None,
                )
                .map_err(|e| EntityError::new(e.to_string()))?;
                Entities::from_entities(slice, None)
                    .map(|slice| (request, slice))
                    .map_err(|e| EntityError::new(e.to_string()))
            });
        match built {
            Err(e) => Decision {
                errors: vec![e.to_string()],
                ..Decision::default_deny()
            },
            Ok((request, slice)) => {
                let response = cedar.is_authorized(&request, &a.candidates.all(), &slice);
                crate::decide::to_decision(&response)
            }
        }
    }

    /// The Cedar request `r` is decided as and the entities it is decided
    /// over (its slice), for `policy explain`.
    pub(crate) fn explain_parts(
        &self,
        entities: &Entities,
        r: &McpRequest<'_>,
    ) -> Result<(Request, Entities), String> {
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(r.agent));
        let route =
            EntityUid::from_type_name_and_id(self.route_type.clone(), EntityId::new(r.route));
        let permitted = self.agent_permitted(entities, r);
        let (request, slice) = self
            .request(
                r,
                entities.get(&principal),
                entities.get(&route),
                permitted,
                None,
            )
            .map_err(|e| e.to_string())?;
        let slice = Entities::from_entities(slice, None).map_err(|e| e.to_string())?;
        Ok((request, slice))
    }

    /// Decides with every policy of the action, bypassing the scope slice.
    pub(crate) fn decide_unsliced(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &McpRequest<'_>,
    ) -> Decision {
        self.decide_with(cedar, entities, r, |a, _, _, _| Arc::new(a.all()))
    }
}

/// The denial of a plumbing action the schema does not declare.
fn missing(action: McpAction) -> Decision {
    crate::decide::denied_with_error(format!(
        "the policy schema has no `Action::\"{}\"`. {}",
        action.as_str(),
        crate::decide::SCHEMA_HINT
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentEntity, Authorizer, DEFAULT_SCHEMA, PolicySources, RouteEntity};
    use std::path::PathBuf;
    use std::sync::Arc;

    fn authorizer(policies: &str) -> Authorizer {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![("t.cedar".to_string(), policies.to_string())],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        Authorizer::new(
            bundle,
            &[
                AgentEntity {
                    name: "dev-bot".into(),
                    roles: vec!["dev".into()],
                },
                AgentEntity {
                    name: "ops-bot".into(),
                    roles: vec!["ops".into()],
                },
            ],
            &[RouteEntity {
                name: "files".into(),
                classification: Classification::Internal,
                owner: String::new(),
                tags: Vec::new(),
            }],
        )
        .unwrap()
    }

    /// One case: agent, action, target and arguments, and the expected outcome.
    fn check(
        authz: &Authorizer,
        agent: &str,
        action: McpAction,
        target: &str,
        args: &[(&str, &str)],
        expect: &str,
    ) {
        let args: Vec<McpArg> = args.iter().map(|(k, v)| McpArg::string(*k, *v)).collect();
        check_args(authz, agent, action, target, &args, expect);
    }

    /// As [`check`], with the arguments as canonical ones.
    fn check_args(
        authz: &Authorizer,
        agent: &str,
        action: McpAction,
        target: &str,
        args: &[McpArg],
        expect: &str,
    ) {
        let d = authz.decide_mcp(&McpRequest {
            agent,
            action,
            route: "files",
            classification: Classification::Internal,
            method: "tools/call",
            revision: "",
            target,
            args,
            path: "/mcp",
            content: Content::NOT_SCANNED,
            source_ip: &SourceIp::new("127.0.0.1".parse().unwrap()),
            time: RequestTime::from_epoch(1_700_000_000),
            caller: &CallerFacts::mtls(),
        });
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let got = format!(
            "{} {}",
            if d.allowed { "allow" } else { "deny" },
            d.policy_ids.join(",")
        );
        assert_eq!(got, expect, "{agent} {action:?} {target} {args:?}");
    }

    const POLICIES: &str = r#"
@id("dev-tools") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"files")
  when { resource.name != "delete_file" };
@id("dev-list") permit(principal in Role::"dev", action in [Action::"list_tools", Action::"list_prompts"], resource == Route::"files");
@id("tmp-only") forbid(principal, action == Action::"call_tool", resource == Tool::"files/read_file")
  unless { context.args.hasTag("path") && context.args.getTag("path") like "/tmp/*" };
@id("ops-prompt") permit(principal in Role::"ops", action == Action::"get_prompt", resource)
  when { resource.classification_level <= 1 };
"#;

    /// Policies of every scope form, some erroring, some reading context:
    /// the scope slice must give exactly the full set's decision, reasons
    /// and errors for every agent, action and target.
    #[test]
    fn permits_on_route_reads_scopes_only() {
        let authz = authorizer(
            r#"
@id("dev-files") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"files") when { context.target == "x" };
@id("ops-one") permit(principal == Agent::"ops-bot", action == Action::"call_tool", resource == Tool::"files/read");
@id("ops-other") permit(principal in Role::"ops", action == Action::"list_tools", resource == Route::"other");
@id("no") forbid(principal, action, resource);
"#,
        );
        let on = |agent: &str, route: &str| {
            authz.permits_on_route(agent, route, crate::RouteActions::Mcp)
        };
        assert_eq!(on("dev-bot", "files"), ["dev-files"]);
        assert_eq!(on("ops-bot", "files"), ["ops-one"]);
        assert_eq!(on("ops-bot", "other"), ["ops-other"]);
        assert!(on("ops-bot", "files2").is_empty());
        assert!(on("stranger", "files").is_empty());
        assert!(
            authz
                .permits_on_route("dev-bot", "files", crate::RouteActions::Model)
                .is_empty()
        );
    }

    #[test]
    fn scope_slicing_never_changes_a_decision() {
        let policies = format!(
            "{POLICIES}{}",
            r#"
@id("by-name") permit(principal == Agent::"ops-bot", action, resource == Tool::"files/echo");
@id("any-tool") permit(principal is Agent, action == Action::"call_tool", resource is Tool);
@id("tool-in-route") forbid(principal is Agent in Role::"ops", action, resource is Tool in Route::"files")
  when { context.args.hasTag("x") };
@id("other-route") permit(principal, action, resource in Route::"elsewhere");
@id("errs") forbid(principal in Role::"dev", action == Action::"call_tool", resource)
  when { context.args.hasTag("n") && context.time.hour * 9223372036854775807 > 0 };
@id("everything") permit(principal, action, resource) when { context.time.hour >= 0 };
"#
        );
        let a = authorizer(&policies);
        let m = a.mcp.as_ref().unwrap();
        let mut compared = 0;
        for agent in ["dev-bot", "ops-bot", "stranger"] {
            for action in McpAction::ALL {
                for target in ["echo", "read_file", "delete_file", "summary", ""] {
                    for args in [
                        vec![],
                        vec![("x", "1")],
                        vec![("n", "1"), ("path", "/tmp/a")],
                    ] {
                        let args: Vec<McpArg> =
                            args.iter().map(|(k, v)| McpArg::string(*k, *v)).collect();
                        let r = McpRequest {
                            agent,
                            action,
                            route: "files",
                            classification: Classification::Internal,
                            method: "tools/call",
                            revision: "",
                            target,
                            args: &args,
                            path: "/mcp",
                            content: Content::NOT_SCANNED,
                            source_ip: &SourceIp::new("127.0.0.1".parse().unwrap()),
                            time: RequestTime::from_epoch(1_700_000_000),
                            caller: &CallerFacts::mtls(),
                        };
                        let sliced = m.decide_uncached(&a.cedar, &a.entities, &r);
                        let full = m.decide_unsliced(&a.cedar, &a.entities, &r);
                        assert_eq!(sliced, full, "{agent} {action:?} {target} {args:?}");
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(compared, 3 * 11 * 5 * 3);
        // The slice does leave policies out: dev-bot's tool call on `echo`
        // is decided without the other role's or route's policies.
        let args: Vec<McpArg> = Vec::new();
        let r = McpRequest {
            agent: "dev-bot",
            action: McpAction::CallTool,
            route: "files",
            classification: Classification::Internal,
            method: "tools/call",
            revision: "",
            target: "echo",
            args: &args,
            path: "/mcp",
            content: Content::NOT_SCANNED,
            source_ip: &SourceIp::new("127.0.0.1".parse().unwrap()),
            time: RequestTime::from_epoch(1_700_000_000),
            caller: &CallerFacts::mtls(),
        };
        let call = &m.actions[McpAction::CallTool.index()]
            .as_ref()
            .unwrap()
            .candidates;
        let principal: EntityUid = r#"Agent::"dev-bot""#.parse().unwrap();
        let resource: EntityUid = r#"Tool::"files/echo""#.parse().unwrap();
        let (_, slice) = m
            .request(&r, a.entities.get(&principal), None, None, None)
            .unwrap();
        let slice = Entities::from_entities(slice, None).unwrap();
        let kept: Vec<String> = call
            .matching(&slice, &principal, &resource)
            .policies()
            .map(|p| p.id().to_string())
            .collect();
        assert!(!kept.contains(&"by-name".to_string()), "{kept:?}");
        assert!(!kept.contains(&"other-route".to_string()), "{kept:?}");
        assert!(!kept.contains(&"tool-in-route".to_string()), "{kept:?}");
        assert!(kept.contains(&"dev-tools".to_string()), "{kept:?}");
        assert!(kept.contains(&"any-tool".to_string()), "{kept:?}");
    }

    #[test]
    fn mcp_decisions() {
        let a = authorizer(POLICIES);
        use McpAction::*;
        check(&a, "dev-bot", CallTool, "echo", &[], "allow dev-tools");
        check(
            &a,
            "dev-bot",
            CallTool,
            "delete_file",
            &[],
            "deny default-deny",
        );
        check(
            &a,
            "dev-bot",
            CallTool,
            "read_file",
            &[("path", "/tmp/x")],
            "allow dev-tools",
        );
        check(
            &a,
            "dev-bot",
            CallTool,
            "read_file",
            &[("path", "/etc/passwd")],
            "deny tmp-only",
        );
        check(&a, "dev-bot", CallTool, "read_file", &[], "deny tmp-only");
        check(&a, "dev-bot", ListTools, "", &[], "allow dev-list");
        check(&a, "ops-bot", ListTools, "", &[], "deny default-deny");
        check(&a, "ops-bot", CallTool, "echo", &[], "deny default-deny");
        check(&a, "ops-bot", GetPrompt, "summary", &[], "allow ops-prompt");
        check(
            &a,
            "dev-bot",
            ReadResource,
            "file:///x",
            &[],
            "deny default-deny",
        );
        check(&a, "stranger", CallTool, "echo", &[], "deny default-deny");
    }

    /// Session plumbing is decided like any message: the built-in default
    /// allows it to a principal some other permit names on the route, a
    /// `forbid` takes it away, and a principal no permit names is denied.
    #[test]
    fn session_plumbing_is_decided_with_a_visible_default() {
        let a = authorizer(
            r#"
@id("dev-tools") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"files");
@id("ops-ping") permit(principal in Role::"ops", action == Action::"mcp_session", resource);
@id("no-stream") forbid(principal, action == Action::"open_stream", resource == Route::"files");
"#,
        );
        use McpAction::*;
        for action in [Session, Notify, Reply, EndSession] {
            check(&a, "dev-bot", action, "", &[], "allow builtin:mcp-plumbing");
        }
        check(&a, "dev-bot", OpenStream, "", &[], "deny no-stream");
        // A permit of one plumbing action is a permit on the route.
        check(
            &a,
            "ops-bot",
            Session,
            "",
            &[],
            "allow builtin:mcp-plumbing,ops-ping",
        );
        check(&a, "ops-bot", Notify, "", &[], "allow builtin:mcp-plumbing");
        check(&a, "stranger", Session, "", &[], "deny default-deny");
        check(&a, "ops-bot", CallTool, "echo", &[], "deny default-deny");
        // The default names nobody by itself: the gateway's early refusal
        // (no permit on the route) is unchanged by it.
        assert!(
            a.permits_on_route("stranger", "files", crate::RouteActions::Mcp)
                .is_empty()
        );
        assert_eq!(
            a.permits_on_route("ops-bot", "files", crate::RouteActions::Mcp),
            ["ops-ping"]
        );
        // The user an agent acts for is asked about its own permits.
        let as_user = |groups: &[&str]| {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            let d = a.decide_mcp_for_user(
                &McpRequest {
                    agent: "dev-bot",
                    action: Session,
                    route: "files",
                    classification: Classification::Internal,
                    method: "initialize",
                    revision: "",
                    target: "",
                    args: &[],
                    path: "/mcp",
                    content: Content::NOT_SCANNED,
                    source_ip: &SourceIp::new("127.0.0.1".parse().unwrap()),
                    time: RequestTime::from_epoch(0),
                    caller: &CallerFacts::mtls(),
                },
                "alice",
                &groups,
            );
            assert!(d.errors.is_empty(), "{:?}", d.errors);
            (d.allowed, d.policy_ids)
        };
        assert_eq!(
            as_user(&["dev"]),
            (true, vec!["builtin:mcp-plumbing".to_string()])
        );
        assert_eq!(
            as_user(&["staff"]),
            (false, vec!["default-deny".to_string()])
        );
    }

    /// A schema written before the plumbing actions still loads, but cannot
    /// serve an MCP route: plumbing is denied with the reason, never
    /// let through undecided.
    #[test]
    fn a_schema_without_plumbing_actions_denies_plumbing() {
        let schema = DEFAULT_SCHEMA
            .split("// MCP session plumbing")
            .next()
            .unwrap()
            .to_string();
        let bundle = Arc::new(
            PolicyBundle::compile(&PolicySources {
                origin: PathBuf::from("/t"),
                schema,
                files: vec![(
                    "t.cedar".to_string(),
                    r#"@id("all") permit(principal, action, resource);"#.to_string(),
                )],
            })
            .unwrap(),
        );
        assert_eq!(
            bundle.policy_ids(),
            [
                "all",
                crate::MODEL_GATE_POLICY_ID,
                crate::DATASET_GATE_POLICY_ID
            ]
        );
        let a = Authorizer::new(bundle, &[], &[]).unwrap();
        assert!(!a.supports_mcp());
        let d = a.decide_mcp(&McpRequest {
            agent: "x",
            action: McpAction::OpenStream,
            route: "r",
            classification: Classification::Public,
            method: "GET",
            revision: "",
            target: "",
            args: &[],
            path: "/mcp",
            content: Content::NOT_SCANNED,
            source_ip: &SourceIp::new("127.0.0.1".parse().unwrap()),
            time: RequestTime::from_epoch(0),
            caller: &CallerFacts::mtls(),
        });
        assert!(!d.allowed, "{d:?}");
        assert!(d.errors[0].contains("open_stream"), "{:?}", d.errors);
    }

    #[test]
    fn context_free_decisions_are_memoized_and_others_are_not() {
        let a = authorizer(
            r#"
@id("lists") permit(principal in Role::"dev", action == Action::"list_tools", resource);
@id("calls") permit(principal in Role::"dev", action == Action::"call_tool", resource)
  when { context.args.hasTag("ok") };
"#,
        );
        use McpAction::*;
        for _ in 0..2 {
            check(&a, "dev-bot", ListTools, "", &[], "allow lists");
            check(
                &a,
                "dev-bot",
                CallTool,
                "echo",
                &[("ok", "1")],
                "allow calls",
            );
            check(&a, "dev-bot", CallTool, "echo", &[], "deny default-deny");
        }
        let mcp = a.mcp.as_ref().unwrap();
        assert_eq!(mcp.memo.len(), 1, "only list_tools is context-free");
    }

    #[test]
    fn action_groups_of_a_users_schema_apply_to_mcp_messages() {
        let schema = DEFAULT_SCHEMA.replace(
            "action call_tool appliesTo",
            "action use_tools;\naction call_tool in [use_tools] appliesTo",
        );
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema,
            files: vec![(
                "t.cedar".to_string(),
                r#"@id("group") permit(principal, action in Action::"use_tools", resource);"#
                    .to_string(),
            )],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let a = Authorizer::new(
            bundle,
            &[AgentEntity {
                name: "dev-bot".into(),
                roles: vec![],
            }],
            &[],
        )
        .unwrap();
        check(
            &a,
            "dev-bot",
            McpAction::CallTool,
            "echo",
            &[],
            "allow group",
        );
        check(
            &a,
            "dev-bot",
            McpAction::ListTools,
            "",
            &[],
            "deny default-deny",
        );
    }

    #[test]
    fn a_schema_without_mcp_actions_has_no_mcp_authorizer() {
        let schema = DEFAULT_SCHEMA.split("// MCP:").next().unwrap().to_string();
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema,
            files: vec![],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let a = Authorizer::new(bundle, &[], &[]).unwrap();
        assert!(!a.supports_mcp());
        let d = a.decide_mcp(&McpRequest {
            agent: "x",
            action: McpAction::ListTools,
            route: "r",
            classification: Classification::Public,
            method: "tools/list",
            revision: "",
            target: "",
            args: &[],
            path: "/mcp",
            content: Content::NOT_SCANNED,
            source_ip: &SourceIp::new("127.0.0.1".parse().unwrap()),
            time: RequestTime::from_epoch(0),
            caller: &CallerFacts::mtls(),
        });
        assert!(!d.allowed && !d.errors.is_empty());
    }

    /// The arguments of a JSON `arguments` object, canonical.
    fn json_args(json: &str) -> Result<Vec<McpArg>, crate::ArgumentError> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        crate::canonical_arguments(v.as_object().unwrap()).map(|c| c.args)
    }

    /// Issue 15: `1e3`, `1000.0`, `10E2` passed a forbid on "1000" while the
    /// server executed 1000. Every spelling is now decided alike, by the
    /// string rule and by the typed views.
    #[test]
    fn every_spelling_of_a_number_is_decided_alike() {
        let a = authorizer(
            r#"
@id("calls") permit(principal, action == Action::"call_tool", resource);
@id("no-1000") forbid(principal, action == Action::"call_tool", resource == Tool::"files/text")
  when { context.args.hasTag("a") && context.args.getTag("a") == "1000" };
@id("big") forbid(principal, action == Action::"call_tool", resource == Tool::"files/long")
  when { context.argn.hasTag("a") && context.argn.getTag("a") >= 1000 };
@id("dec") forbid(principal, action == Action::"call_tool", resource == Tool::"files/decimal")
  when { context.argd.hasTag("a") && context.argd.getTag("a").greaterThanOrEqual(decimal("999.5")) };
"#,
        );
        use McpAction::CallTool;
        for spelling in ["1000", "1e3", "1000.0", "10E2", "1.0e3", "1E+3", "10000e-1"] {
            let args = json_args(&format!(r#"{{"a":{spelling}}}"#)).unwrap();
            check_args(&a, "dev-bot", CallTool, "text", &args, "deny no-1000");
            check_args(&a, "dev-bot", CallTool, "long", &args, "deny big");
            check_args(&a, "dev-bot", CallTool, "decimal", &args, "deny dec");
        }
        // The string "1000" is the same text (old policies keep working),
        // but it is not a number: the typed views lack it.
        let args = json_args(r#"{"a":"1000"}"#).unwrap();
        check_args(&a, "dev-bot", CallTool, "text", &args, "deny no-1000");
        check_args(&a, "dev-bot", CallTool, "long", &args, "allow calls");
        check_args(&a, "dev-bot", CallTool, "decimal", &args, "allow calls");
        for (spelling, decimal) in [("999.75", "deny dec"), ("999.4", "allow calls")] {
            let args = json_args(&format!(r#"{{"a":{spelling}}}"#)).unwrap();
            check_args(&a, "dev-bot", CallTool, "text", &args, "allow calls");
            check_args(&a, "dev-bot", CallTool, "long", &args, "allow calls");
            check_args(&a, "dev-bot", CallTool, "decimal", &args, decimal);
        }
        for spelling in ["1e400", "0.1234567", "1e19", "9223372036854775808"] {
            // `1e400` is refused when the message is read (no double holds
            // it); the others when it is made canonical.
            if let Ok(v) =
                serde_json::from_str::<serde_json::Value>(&format!(r#"{{"a":{spelling}}}"#))
            {
                let e = crate::canonical_arguments(v.as_object().unwrap()).unwrap_err();
                assert_eq!(e.path, "/a", "{spelling}");
            }
        }
    }

    #[test]
    fn a_schema_without_the_typed_views_still_loads() {
        let schema = DEFAULT_SCHEMA
            .replace("entity McpArgsLong tags Long;", "")
            .replace("entity McpArgsDecimal tags decimal;", "")
            .replace("  argn: McpArgsLong,\n", "")
            .replace("  argd: McpArgsDecimal,\n", "");
        assert!(!schema.contains("entity McpArgsLong") && !schema.contains("argd: "));
        let compile = |policies: &str| {
            PolicyBundle::compile(&PolicySources {
                origin: PathBuf::from("/t"),
                schema: schema.clone(),
                files: vec![("t.cedar".to_string(), policies.to_string())],
            })
        };
        let bundle = compile(
            r#"@id("no-1000") forbid(principal, action == Action::"call_tool", resource) when { context.args.hasTag("a") && context.args.getTag("a") == "1000" };
@id("calls") permit(principal, action == Action::"call_tool", resource);"#,
        )
        .unwrap();
        let a = Authorizer::new(
            Arc::new(bundle),
            &[AgentEntity {
                name: "dev-bot".into(),
                roles: vec![],
            }],
            &[],
        )
        .unwrap();
        assert!(a.supports_mcp());
        for spelling in ["1000", "1e3"] {
            let args = json_args(&format!(r#"{{"a":{spelling}}}"#)).unwrap();
            check_args(
                &a,
                "dev-bot",
                McpAction::CallTool,
                "t",
                &args,
                "deny no-1000",
            );
        }
        let args = json_args(r#"{"a":7}"#).unwrap();
        check_args(
            &a,
            "dev-bot",
            McpAction::CallTool,
            "t",
            &args,
            "allow calls",
        );
        // A policy that needs a typed view the schema lacks fails closed: it
        // does not load.
        assert!(
            compile(r#"@id("x") forbid(principal, action == Action::"call_tool", resource) when { context.argn.hasTag("a") };"#)
                .is_err()
        );
    }
}
