//! Joining policies with principals and resources, and deciding requests.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{
    ActionConstraint, Context, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint, Request, ResourceConstraint,
    RestrictedExpression,
};
use portcullis_core::{Classification, Decision};

use crate::PolicyBundle;
use crate::caller::CallerFacts;
pub use crate::grants::GrantEntity;

/// An agent as policy sees it: `Agent::"<name>"` in each `Role::"<role>"`.
#[derive(Debug, Clone)]
pub struct AgentEntity {
    /// The agent's name.
    pub name: String,
    /// The roles the agent belongs to.
    pub roles: Vec<String>,
}

/// A route as policy sees it: `Route::"<name>"` with its classification,
/// owner and tags.
#[derive(Debug, Clone)]
pub struct RouteEntity {
    /// The route's name.
    pub name: String,
    /// How sensitive the data behind the route is.
    pub classification: Classification,
    /// Who owns the data behind it (`""` when not configured).
    pub owner: String,
    /// Free-form labels.
    pub tags: Vec<String>,
}

/// The HTTP methods policy knows, each an `Action::"<METHOD>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpAction {
    /// `GET`, in `Action::"read"`.
    Get,
    /// `HEAD`, in `Action::"read"`.
    Head,
    /// `POST`, in `Action::"write"`.
    Post,
    /// `PUT`, in `Action::"write"`.
    Put,
    /// `PATCH`, in `Action::"write"`.
    Patch,
    /// `DELETE`, in `Action::"write"`.
    Delete,
}

impl HttpAction {
    pub(crate) const ALL: [HttpAction; 6] = [
        HttpAction::Get,
        HttpAction::Head,
        HttpAction::Post,
        HttpAction::Put,
        HttpAction::Patch,
        HttpAction::Delete,
    ];

    /// The method name, which is also the Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpAction::Get => "GET",
            HttpAction::Head => "HEAD",
            HttpAction::Post => "POST",
            HttpAction::Put => "PUT",
            HttpAction::Patch => "PATCH",
            HttpAction::Delete => "DELETE",
        }
    }

    /// The action for an HTTP method, or `None` for methods policy cannot grant
    /// (`OPTIONS`, `TRACE`, `CONNECT`, extensions), which the gateway refuses.
    pub fn from_method(method: &str) -> Option<Self> {
        HttpAction::ALL.into_iter().find(|a| a.as_str() == method)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The wall-clock facts policy may use, all UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTime {
    /// Hour of day, 0–23.
    pub hour: i64,
    /// ISO weekday, 1 = Monday … 7 = Sunday.
    pub weekday: i64,
    /// Seconds since the Unix epoch.
    pub epoch: i64,
}

impl RequestTime {
    /// `context.time` as Cedar sees it.
    pub(crate) fn expr(&self) -> Result<RestrictedExpression, String> {
        RestrictedExpression::new_record([
            (
                "hour".to_string(),
                RestrictedExpression::new_long(self.hour),
            ),
            (
                "weekday".to_string(),
                RestrictedExpression::new_long(self.weekday),
            ),
            (
                "epoch".to_string(),
                RestrictedExpression::new_long(self.epoch),
            ),
        ])
        .map_err(|e| e.to_string())
    }

    /// Derives hour and weekday from seconds since the epoch.
    pub fn from_epoch(epoch: i64) -> Self {
        let days = epoch.div_euclid(86_400);
        let hour = epoch.rem_euclid(86_400) / 3_600;
        // 1970-01-01 was a Thursday (ISO weekday 4).
        let weekday = (days + 3).rem_euclid(7) + 1;
        RequestTime {
            hour,
            weekday,
            epoch,
        }
    }
}

/// What the content guard found in the request body, as policy sees it
/// (`context.content`). Plain data: the gateway fills it from the guard's
/// report, never with a found value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Content<'a> {
    /// Whether the body was scanned (the route's guard is on and the body is text).
    pub scanned: bool,
    /// The prompt-injection score, 0–1 (Cedar `decimal`, four decimals).
    pub injection_score: f32,
    /// Whether the score reached the channel's threshold.
    pub injection_flagged: bool,
    /// The distinct finding types (`aws_access_key`, `prompt_injection`, …).
    pub findings: &'a [&'a str],
}

impl Content<'_> {
    /// A request whose body was not scanned.
    pub const NOT_SCANNED: Content<'static> = Content {
        scanned: false,
        injection_score: 0.0,
        injection_flagged: false,
        findings: &[],
    };

    /// The record `context.content` as Cedar sees it. Unscanned content (most
    /// requests) is built once per process.
    pub(crate) fn expr(&self) -> Result<RestrictedExpression, String> {
        static NOT_SCANNED: LazyLock<Result<RestrictedExpression, String>> =
            LazyLock::new(|| Content::NOT_SCANNED.build());
        if *self == Content::NOT_SCANNED {
            return NOT_SCANNED.clone();
        }
        self.build()
    }

    fn build(&self) -> Result<RestrictedExpression, String> {
        RestrictedExpression::new_record([
            (
                "scanned".to_string(),
                RestrictedExpression::new_bool(self.scanned),
            ),
            (
                "injection_score".to_string(),
                crate::caller::unit_decimal(self.injection_score),
            ),
            (
                "injection_flagged".to_string(),
                RestrictedExpression::new_bool(self.injection_flagged),
            ),
            (
                "findings".to_string(),
                RestrictedExpression::new_set(
                    self.findings
                        .iter()
                        .map(|f| RestrictedExpression::new_string((*f).to_string())),
                ),
            ),
        ])
        .map_err(|e| e.to_string())
    }
}

/// One request to decide.
#[derive(Debug, Clone)]
pub struct AuthzRequest<'a> {
    /// The authenticated agent.
    pub agent: &'a str,
    /// The HTTP method as an action.
    pub action: HttpAction,
    /// The matched route.
    pub route: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The client's address, prepared once per connection.
    pub source_ip: &'a SourceIp,
    /// When the request arrived.
    pub time: RequestTime,
    /// What the content guard found in the body.
    pub content: Content<'a>,
    /// How the caller authenticated, for whom, its posture and risk.
    pub caller: &'a CallerFacts,
}

/// A client address in the form policy evaluation needs. Building it costs a
/// Cedar parse, so the gateway makes one per connection, not per request.
#[derive(Debug, Clone)]
pub struct SourceIp {
    ip: IpAddr,
    expr: RestrictedExpression,
}

impl SourceIp {
    pub(crate) fn expr(&self) -> &RestrictedExpression {
        &self.expr
    }

    /// Prepares `ip`.
    pub fn new(ip: IpAddr) -> Self {
        SourceIp {
            ip,
            expr: RestrictedExpression::new_ip(ip.to_string()),
        }
    }

    /// The address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// The entities could not be assembled (an attribute or membership conflicts with the schema).
#[derive(Debug, thiserror::Error)]
#[error("cannot build policy entities: {0}")]
pub struct EntityError(String);

impl EntityError {
    pub(crate) fn new(message: String) -> Self {
        EntityError(message)
    }
}

/// An immutable snapshot of policies plus the principals and resources they speak
/// of. Rebuilt (off the request path) whenever agents, routes or policies change;
/// requests read it without locks or IO.
pub struct Authorizer {
    pub(crate) bundle: Arc<PolicyBundle>,
    /// The bundle's policies plus one template-linked policy per live grant:
    /// the full set, as Cedar would evaluate it without the index.
    policies: PolicySet,
    /// When each grant (by policy id) lapses, epoch seconds.
    grant_expiry: HashMap<String, i64>,
    pub(crate) entities: Entities,
    index: ScopeIndex,
    actions: [EntityUid; 6],
    agent_type: EntityTypeName,
    role_type: EntityTypeName,
    route_type: EntityTypeName,
    /// `User` (people agents act for), when the schema declares it.
    user_type: Option<EntityTypeName>,
    pub(crate) cedar: cedar_policy::Authorizer,
    /// `use_secret` decisions; `None` when the schema has no such action.
    pub(crate) secret: Option<crate::secret::SecretAuthz>,
    /// MCP decisions; `None` when the schema has no MCP actions.
    pub(crate) mcp: Option<crate::mcp::McpAuthz>,
    /// `complete`/`embed` decisions on models; set by
    /// [`Authorizer::with_models`].
    pub(crate) model: Option<crate::model::ModelAuthz>,
    /// Each route's classification, by name (what MCP targets inherit).
    route_classes: HashMap<String, Classification>,
    /// The configured models, `(route, name)`, in configuration order.
    models: Vec<(String, String)>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("policies", &self.bundle.policy_ids())
            .finish_non_exhaustive()
    }
}

fn type_name(name: &str) -> Result<EntityTypeName, EntityError> {
    name.parse().map_err(|e| EntityError(format!("{e}")))
}

impl Authorizer {
    /// Builds the snapshot. Entities are checked against the bundle's schema.
    pub fn new(
        bundle: Arc<PolicyBundle>,
        agents: &[AgentEntity],
        routes: &[RouteEntity],
    ) -> Result<Self, EntityError> {
        Self::with_grants(bundle, agents, routes, &[])
    }

    /// [`Authorizer::new`] plus time-boxed grants, each a template-linked
    /// policy `grant:<id>` permitting one agent one action on one route.
    pub fn with_grants(
        bundle: Arc<PolicyBundle>,
        agents: &[AgentEntity],
        routes: &[RouteEntity],
        grants: &[GrantEntity],
    ) -> Result<Self, EntityError> {
        let agent_type = type_name("Agent")?;
        let role_type = type_name("Role")?;
        let route_type = type_name("Route")?;
        let action_type = type_name("Action")?;
        let uid = |t: &EntityTypeName, id: &str| {
            EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
        };

        let mut entities = Vec::new();
        let mut roles = HashSet::new();
        for agent in agents {
            let parents: HashSet<EntityUid> = agent
                .roles
                .iter()
                .map(|r| {
                    roles.insert(r.clone());
                    uid(&role_type, r)
                })
                .collect();
            entities.push(Entity::new_no_attrs(uid(&agent_type, &agent.name), parents));
        }
        for role in roles {
            entities.push(Entity::new_no_attrs(uid(&role_type, &role), HashSet::new()));
        }
        for route in routes {
            let attrs = HashMap::from([
                (
                    "classification".to_string(),
                    RestrictedExpression::new_string(route.classification.as_str().to_string()),
                ),
                (
                    "classification_level".to_string(),
                    RestrictedExpression::new_long(route.classification.rank()),
                ),
                (
                    "owner".to_string(),
                    RestrictedExpression::new_string(route.owner.clone()),
                ),
                (
                    "tags".to_string(),
                    RestrictedExpression::new_set(
                        route
                            .tags
                            .iter()
                            .map(|t| RestrictedExpression::new_string(t.clone())),
                    ),
                ),
            ]);
            let entity = Entity::new(uid(&route_type, &route.name), attrs, HashSet::new())
                .map_err(|e| EntityError(e.to_string()))?;
            entities.push(entity);
        }

        let entities = bundle
            .schema
            .action_entities()
            .map_err(|e| EntityError(e.to_string()))?
            .add_entities(entities, Some(&bundle.schema))
            .map_err(|e| EntityError(e.to_string()))?;
        let actions = HttpAction::ALL.map(|a| uid(&action_type, a.as_str()));
        let agent_uids: Vec<(String, EntityUid)> = agents
            .iter()
            .map(|a| (a.name.clone(), uid(&agent_type, &a.name)))
            .collect();
        let route_uids: Vec<(String, EntityUid)> = routes
            .iter()
            .map(|r| (r.name.clone(), uid(&route_type, &r.name)))
            .collect();
        let (policies, indexed, grant_expiry) =
            crate::grants::link(&bundle.policies, grants, &actions, &agent_type, &route_type)?;
        let index = ScopeIndex::new(&indexed, &entities, &agent_uids, &actions, &route_uids);
        let secret = crate::secret::SecretAuthz::new(&bundle, &entities)?;
        let mcp = crate::mcp::McpAuthz::new(&bundle, &entities)?;
        let user_type = bundle
            .schema
            .entity_types()
            .find(|t| t.to_string() == "User")
            .cloned();
        let route_classes = routes
            .iter()
            .map(|r| (r.name.clone(), r.classification))
            .collect();
        let authorizer = Authorizer {
            route_classes,
            models: Vec::new(),
            user_type,
            secret,
            mcp,
            model: None,
            policies,
            grant_expiry,
            bundle,
            entities,
            index,
            actions,
            agent_type,
            role_type,
            route_type,
            cedar: cedar_policy::Authorizer::new(),
        };
        authorizer.check_request_shape()?;
        Ok(authorizer)
    }

    /// The policy bundle this snapshot decides with.
    pub fn bundle(&self) -> &Arc<PolicyBundle> {
        &self.bundle
    }

    /// Decides one request. Any problem building the request is a denial (fail closed)
    /// with the problem in [`Decision::errors`].
    pub fn decide(&self, request: &AuthzRequest<'_>) -> Decision {
        let decision = self.decide_indexed(request);
        self.without_lapsed_grants(decision, request.time.epoch)
    }

    /// A grant lapses at its expiry even if the snapshot that holds it is
    /// still in use: its permit is dropped from an allow, and an allow that
    /// rested on it alone becomes the default deny. (Only permits are listed
    /// in an allow, so no forbid is hidden by this.)
    fn without_lapsed_grants(&self, mut decision: Decision, epoch: i64) -> Decision {
        if !decision.allowed || self.grant_expiry.is_empty() {
            return decision;
        }
        let before = decision.policy_ids.len();
        decision.policy_ids.retain(|id| {
            self.grant_expiry
                .get(id)
                .is_none_or(|lapses| epoch < *lapses)
        });
        if decision.policy_ids.is_empty() && before > 0 {
            return Decision {
                errors: decision.errors,
                ..Decision::default_deny()
            };
        }
        decision
    }

    fn decide_indexed(&self, request: &AuthzRequest<'_>) -> Decision {
        // Only policies whose scope can match this principal, action and resource
        // are evaluated; see `ScopeIndex`. `None` means "all policies".
        let Some(matching) = self
            .index
            .matching(request.agent, request.action, request.route)
        else {
            return self.decide_among(request, None);
        };
        if matching.bits.iter().all(|w| *w == 0) {
            return Decision::default_deny();
        }
        self.index.memo.get_or_decide(matching.memo_key, || {
            self.decide_among(request, Some(&self.index.policy_set(&matching.bits)))
        })
    }

    /// What an allowed decision obliges the gateway to do. A request is
    /// allowed when *any* satisfied `permit` allows it, so approval and MFA are
    /// needed only when every deciding permit asks for them (a grant, which
    /// asks for nothing, is enough on its own). Redaction and rate limits are
    /// restrictions: each one any deciding permit names applies.
    pub fn obligations(&self, decision: &Decision) -> crate::Obligations {
        let mut out = crate::Obligations::default();
        if !decision.allowed || decision.policy_ids.is_empty() {
            return out;
        }
        let none = crate::Obligations::default();
        let found: Vec<&crate::Obligations> = decision
            .policy_ids
            .iter()
            .map(|id| self.bundle.obligations.get(id).unwrap_or(&none))
            .collect();
        out.approval = found.iter().all(|o| o.approval);
        out.mfa = found.iter().all(|o| o.mfa);
        out.redact = found.iter().any(|o| o.redact);
        out.rates = found.iter().flat_map(|o| o.rates.iter().cloned()).collect();
        out
    }

    /// Whether the schema declares `Action::"use_secret"`, which routes with a
    /// credential need.
    pub fn supports_secrets(&self) -> bool {
        self.secret.is_some()
    }

    /// Decides whether the agent may have the secret injected (see
    /// [`crate::SecretRequest`]). Without `use_secret` in the schema: denied,
    /// with the reason in [`Decision::errors`].
    pub fn decide_secret(&self, request: &crate::SecretRequest<'_>) -> Decision {
        match &self.secret {
            Some(s) => s.decide(&self.cedar, &self.entities, request),
            None => denied_with_error(format!(
                "the policy schema has no `Action::\"{}\"`",
                crate::secret::USE_SECRET
            )),
        }
    }

    /// Whether the schema declares the MCP actions, which `kind = "mcp"` routes need.
    pub fn supports_mcp(&self) -> bool {
        self.mcp.is_some()
    }

    /// Decides one MCP message (see [`crate::McpRequest`]). Without the MCP
    /// actions in the schema: denied, with the reason in [`Decision::errors`].
    pub fn decide_mcp(&self, request: &crate::McpRequest<'_>) -> Decision {
        match &self.mcp {
            Some(m) => m.decide(&self.cedar, &self.entities, request),
            None => denied_with_error(
                "the policy schema has no MCP actions (`Action::\"call_tool\"` …)".to_string(),
            ),
        }
    }

    /// Decides an MCP message with every policy of its action, bypassing the
    /// scope slice (and the memo). For tests and benchmarks that check the
    /// slice changes nothing but the cost.
    #[doc(hidden)]
    pub fn decide_mcp_unsliced(&self, request: &crate::McpRequest<'_>) -> Decision {
        match &self.mcp {
            Some(m) => m.decide_unsliced(&self.cedar, &self.entities, request),
            None => Decision::default_deny(),
        }
    }

    /// Adds the models of `kind = "llm"` routes (`Model::"<route>/<name>"`,
    /// each in its `Route`) and prepares `complete`/`embed` decisions. The
    /// scope index is unaffected: it indexes HTTP actions on routes, and a
    /// model is never an ancestor of an agent or a route. Without models the
    /// schema may lack the `Model` type (a schema written before the LLM
    /// adapter).
    pub fn with_models(mut self, models: &[crate::ModelEntity]) -> Result<Self, EntityError> {
        if !models.is_empty() {
            if !crate::model::schema_supports_models(&self.bundle.schema) {
                return Err(EntityError(format!(
                    "the policy schema has no `Model` entity type or `complete`/`embed` actions, which routes of kind `llm` need. {SCHEMA_HINT}"
                )));
            }
            let entities = std::mem::replace(&mut self.entities, Entities::empty());
            self.entities = crate::model::add_model_entities(&self.bundle, entities, models)?;
        }
        self.models = models
            .iter()
            .map(|m| (m.route.clone(), m.name.clone()))
            .collect();
        self.model = crate::model::ModelAuthz::new(&self.bundle, &self.entities)?;
        Ok(self)
    }

    /// The classification of a route the snapshot knows.
    pub fn route_classification(&self, route: &str) -> Option<Classification> {
        self.route_classes.get(route).copied()
    }

    /// The models configured on `route`, in configuration order: what `GET
    /// /v1/models` chooses from (each one the agent may `complete` with).
    pub fn route_models(&self, route: &str) -> Vec<&str> {
        self.models
            .iter()
            .filter(|(r, _)| r == route)
            .map(|(_, name)| name.as_str())
            .collect()
    }

    /// Whether the schema declares the model actions (`complete`, `embed`).
    pub fn supports_models(&self) -> bool {
        self.model.is_some()
    }

    /// Decides a model request (see [`crate::ModelRequest`]). A model that is
    /// not configured is no entity, so no `resource in …` or attribute test
    /// matches it. Without the actions in the schema (or before
    /// [`Authorizer::with_models`]): denied, with the reason in
    /// [`Decision::errors`].
    pub fn decide_model(&self, request: &crate::ModelRequest<'_>) -> Decision {
        match &self.model {
            Some(m) => m.decide(&self.cedar, &self.entities, request),
            None => denied_with_error(format!(
                "the policy schema has no `Action::\"{}\"` on `Model`",
                request.action.as_str()
            )),
        }
    }

    /// Decides with every policy, bypassing the scope index. For tests and
    /// benchmarks that check the index changes nothing but the cost.
    #[doc(hidden)]
    pub fn decide_unindexed(&self, request: &AuthzRequest<'_>) -> Decision {
        let decision = self.decide_among(request, None);
        self.without_lapsed_grants(decision, request.time.epoch)
    }

    /// Builds the Cedar request. With `schema`, it is validated against it.
    pub(crate) fn cedar_request(
        &self,
        request: &AuthzRequest<'_>,
        schema: Option<&cedar_policy::Schema>,
    ) -> Result<Request, String> {
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(request.agent));
        self.cedar_request_as(principal, request, schema)
    }

    fn cedar_request_as(
        &self,
        principal: EntityUid,
        request: &AuthzRequest<'_>,
        schema: Option<&cedar_policy::Schema>,
    ) -> Result<Request, String> {
        let resource =
            EntityUid::from_type_name_and_id(self.route_type.clone(), EntityId::new(request.route));
        let action = self.actions[request.action.index()].clone();
        let time = request.time.expr()?;
        let content = request.content.expr()?;
        let mut pairs = vec![
            (
                "method".to_string(),
                RestrictedExpression::new_string(request.action.as_str().to_string()),
            ),
            (
                "path".to_string(),
                RestrictedExpression::new_string(request.path.to_string()),
            ),
            ("source_ip".to_string(), request.source_ip.expr.clone()),
            ("time".to_string(), time),
            ("content".to_string(), content),
        ];
        pairs.extend(request.caller.context_pairs()?);
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        Request::new(principal, action, resource, context, schema).map_err(|e| e.to_string())
    }

    /// Checks, once per snapshot, that the requests the gateway builds conform to
    /// the schema for every action. The context's shape and types never vary
    /// between requests, so this proves it for all of them and requests skip
    /// per-request validation. A user schema that disagrees fails here, closed.
    fn check_request_shape(&self) -> Result<(), EntityError> {
        let ip = SourceIp::new(IpAddr::from([127, 0, 0, 1]));
        for (action, caller) in HttpAction::ALL
            .into_iter()
            .flat_map(|a| CallerFacts::shape_samples().map(|c| (a, c)))
        {
            let sample = AuthzRequest {
                agent: "shape-check",
                action,
                route: "shape-check",
                path: "/",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller: &caller,
            };
            self.cedar_request(&sample, Some(&self.bundle.schema))
                .map_err(|e| {
                    EntityError(format!(
                        "the schema does not accept the requests the gateway makes for action `{}`: {e}. {SCHEMA_HINT}",
                        action.as_str()
                    ))
                })?;
        }
        Ok(())
    }

    fn decide_among(&self, request: &AuthzRequest<'_>, candidates: Option<&PolicySet>) -> Decision {
        let cedar_request = match self.cedar_request(request, None) {
            Ok(r) => r,
            Err(e) => return denied_with_error(e),
        };
        let response = match candidates {
            Some(set) => self
                .cedar
                .is_authorized(&cedar_request, set, &self.entities),
            None => self
                .cedar
                .is_authorized(&cedar_request, &self.policies, &self.entities),
        };
        to_decision(&response)
    }

    /// Decides the same request as if the user an agent acts for (token
    /// exchange) had made it, as `User::"<user>"` in `Role::"<group>"` for each
    /// of their groups. The gateway allows a delegated request only when both
    /// the agent's and the user's decisions allow it, so delegation never
    /// grants more than the user has. Users are not in the snapshot: the user
    /// entity is added to a copy of the entities, and every policy is
    /// evaluated (no scope index, no memo), which costs more than an agent's
    /// decision; delegated requests are the minority.
    pub fn decide_for_user(
        &self,
        request: &AuthzRequest<'_>,
        user: &str,
        groups: &[String],
    ) -> Decision {
        let user = match self.user_entity(user, groups) {
            Ok(u) => u,
            Err(denied) => return denied,
        };
        let principal = user.uid();
        let entities = match self.entities.clone().add_entities([user], None) {
            Ok(e) => e,
            Err(e) => return denied_with_error(e.to_string()),
        };
        let cedar_request = match self.cedar_request_as(principal, request, None) {
            Ok(r) => r,
            Err(e) => return denied_with_error(e),
        };
        let response = self
            .cedar
            .is_authorized(&cedar_request, &self.bundle.policies, &entities);
        to_decision(&response)
    }

    /// The permits that could allow `agent` anything of `kind` on `route`,
    /// by scope alone (forbids and conditions unread). Empty means every
    /// such request of the agent is denied whatever it carries: the gateway
    /// refuses it before reading a body, and MCP session plumbing (which
    /// carries no data) is allowed only when this is not empty.
    pub fn permits_on_route(&self, agent: &str, route: &str, kind: RouteActions) -> Vec<String> {
        match kind {
            RouteActions::Mcp => self
                .mcp
                .as_ref()
                .map(|m| m.permits_on_route(&self.entities, agent, route))
                .unwrap_or_default(),
            RouteActions::Model => {
                let route =
                    EntityUid::from_type_name_and_id(self.route_type.clone(), EntityId::new(route));
                self.model
                    .as_ref()
                    .map(|m| m.permits_on_route(&self.entities, agent, &route))
                    .unwrap_or_default()
            }
        }
    }

    /// The `User::"<user>"` entity, a member of `Role::"<group>"` for each of
    /// their groups; a denial when the schema has no `User` type.
    fn user_entity(&self, user: &str, groups: &[String]) -> Result<Entity, Decision> {
        let Some(user_type) = &self.user_type else {
            return Err(denied_with_error(
                "the policy schema has no `User` entity type, so no request on behalf of a user can be allowed; update it from `portcullis policy schema`".into(),
            ));
        };
        let principal = EntityUid::from_type_name_and_id(user_type.clone(), EntityId::new(user));
        let parents: HashSet<EntityUid> = groups
            .iter()
            .map(|g| EntityUid::from_type_name_and_id(self.role_type.clone(), EntityId::new(g)))
            .collect();
        Ok(Entity::new_no_attrs(principal, parents))
    }

    /// [`Authorizer::decide_mcp`] as if the user an agent acts for had sent the
    /// message (see [`Authorizer::decide_for_user`]). Every policy of the
    /// action is evaluated: no slice, no memo. A schema whose MCP actions do
    /// not list `User` among their principals denies (fail closed).
    pub fn decide_mcp_for_user(
        &self,
        request: &crate::McpRequest<'_>,
        user: &str,
        groups: &[String],
    ) -> Decision {
        let user = match self.user_entity(user, groups) {
            Ok(u) => u,
            Err(denied) => return denied,
        };
        match &self.mcp {
            Some(m) => m.decide_as_user(&self.cedar, &self.entities, request, user),
            None => denied_with_error(
                "the policy schema has no MCP actions (`Action::\"call_tool\"` …)".to_string(),
            ),
        }
    }

    /// [`Authorizer::decide_model`] as if the user an agent acts for had made
    /// the call (see [`Authorizer::decide_for_user`]).
    pub fn decide_model_for_user(
        &self,
        request: &crate::ModelRequest<'_>,
        user: &str,
        groups: &[String],
    ) -> Decision {
        let user = match self.user_entity(user, groups) {
            Ok(u) => u,
            Err(denied) => return denied,
        };
        let entities = match self.entities.clone().add_entities([user.clone()], None) {
            Ok(e) => e,
            Err(e) => return denied_with_error(e.to_string()),
        };
        match &self.model {
            Some(m) => m.decide_as_user(&self.cedar, &entities, request, user.uid()),
            None => denied_with_error(format!(
                "the policy schema has no `Action::\"{}\"` on `Model`",
                request.action.as_str()
            )),
        }
    }
}

/// Which actions [`Authorizer::permits_on_route`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteActions {
    /// The MCP actions (`call_tool`, `list_tools`, …) on an MCP route.
    Mcp,
    /// `complete` and `embed` on the models of an LLM route.
    Model,
}

/// The context of a decision made after routing (`use_secret`, `complete`,
/// `embed`): the route taken, the request's method and path, source, time,
/// content findings and the caller facts.
pub(crate) fn routed_context(
    route: &str,
    method: &str,
    path: &str,
    source_ip: &SourceIp,
    time: RequestTime,
    content: &Content<'_>,
    caller: &CallerFacts,
) -> Result<Context, String> {
    let mut pairs = vec![
        (
            "route".to_string(),
            RestrictedExpression::new_string(route.to_string()),
        ),
        (
            "method".to_string(),
            RestrictedExpression::new_string(method.to_string()),
        ),
        (
            "path".to_string(),
            RestrictedExpression::new_string(path.to_string()),
        ),
        ("source_ip".to_string(), source_ip.expr().clone()),
        ("time".to_string(), time.expr()?),
        ("content".to_string(), content.expr()?),
    ];
    pairs.extend(caller.context_pairs()?);
    Context::from_pairs(pairs).map_err(|e| e.to_string())
}

/// Cedar's answer as a `Decision`: the deciding policies sorted, and a denial
/// nothing decided named `default-deny`. Every kind of decision uses this.
pub(crate) fn to_decision(response: &cedar_policy::Response) -> Decision {
    let diagnostics = response.diagnostics();
    let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
    let mut policy_ids: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
    policy_ids.sort();
    let allowed = response.decision() == CedarDecision::Allow;
    if !allowed && policy_ids.is_empty() {
        return Decision {
            errors,
            ..Decision::default_deny()
        };
    }
    Decision {
        allowed,
        policy_ids,
        errors,
    }
}

/// A principal or resource scope constraint (Cedar has one enum for each, of the
/// same shape).
pub(crate) enum Scope {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

impl From<PrincipalConstraint> for Scope {
    fn from(c: PrincipalConstraint) -> Self {
        match c {
            PrincipalConstraint::Any => Scope::Any,
            PrincipalConstraint::Eq(u) => Scope::Eq(u),
            PrincipalConstraint::In(u) => Scope::In(u),
            PrincipalConstraint::Is(t) => Scope::Is(t),
            PrincipalConstraint::IsIn(t, u) => Scope::IsIn(t, u),
        }
    }
}

impl From<ResourceConstraint> for Scope {
    fn from(c: ResourceConstraint) -> Self {
        match c {
            ResourceConstraint::Any => Scope::Any,
            ResourceConstraint::Eq(u) => Scope::Eq(u),
            ResourceConstraint::In(u) => Scope::In(u),
            ResourceConstraint::Is(t) => Scope::Is(t),
            ResourceConstraint::IsIn(t, u) => Scope::IsIn(t, u),
        }
    }
}

/// Which policies can possibly apply to a request, by scope alone.
///
/// Cedar evaluates every policy of a set for every request, rebuilding each
/// policy's condition as it goes; with a hundred policies that dominates the
/// gateway's cost. A policy whose scope (`principal …, action …, resource …`)
/// cannot match the request is never satisfied and never errors — scope checks are
/// equality, `in` over the entity hierarchy, and `is` — so leaving it out yields
/// exactly the same decision, reasons and errors. The index precomputes, per
/// known agent, action and route, the bitset of policies whose scope matches, using
/// Cedar's own `in` semantics ([`Entities::is_ancestor_of`]); a request intersects
/// three bitsets and hands Cedar only the survivors. Unknown agents or routes fall
/// back to the full set.
///
/// On top of that, when none of a request's candidate policies mentions
/// `context`, the outcome depends only on (agent, action, route) and the
/// snapshot's immutable entities, so it is memoized for the snapshot's lifetime.
/// Whether a policy mentions `context` is read from Cedar's own AST (its JSON
/// form), never guessed from text.
struct ScopeIndex {
    policies: Vec<Policy>,
    agents: HashMap<String, (u64, Vec<u64>)>,
    actions: [Vec<u64>; 6],
    routes: HashMap<String, (u64, Vec<u64>)>,
    /// Policies whose conditions never read `context`.
    context_free: Vec<u64>,
    /// Decisions of context-free candidate sets, by (agent, action, route).
    memo: crate::memo::DecisionMemo<u64>,
}

/// What to do when a schema no longer fits the requests: usually a policy
/// directory seeded by an older version, whose context types lack a newer field.
pub(crate) const SCHEMA_HINT: &str = "If this schema was written by an older version of Portcullis (for example the one seeded into `<state-dir>/policies`), update it from the shipped schema, `crates/policy/defaults/schema.cedarschema`, which `portcullis policy schema` prints";

/// The candidate policies of one request, as a bitset over `ScopeIndex::policies`.
struct Matching {
    bits: Vec<u64>,
    /// Set when every candidate is context-free, so the decision can be memoized.
    memo_key: Option<u64>,
}

/// Whether a policy's JSON AST reads the `context` variable anywhere.
pub(crate) fn mentions_context(policy: &Policy) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(map) => {
                map.get("Var").is_some_and(|var| var == "context") || map.values().any(walk)
            }
            serde_json::Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    // A policy that cannot be rendered is treated as context-dependent: safe.
    policy.to_json().map_or(true, |json| walk(&json))
}

impl ScopeIndex {
    fn new(
        set: &PolicySet,
        entities: &Entities,
        agents: &[(String, EntityUid)],
        actions: &[EntityUid; 6],
        routes: &[(String, EntityUid)],
    ) -> Self {
        let policies: Vec<Policy> = set.policies().cloned().collect();
        let words = policies.len().div_ceil(64);
        let bits = |matches: &dyn Fn(&Policy) -> bool| {
            let mut v = vec![0u64; words];
            for (i, p) in policies.iter().enumerate() {
                if matches(p) {
                    v[i / 64] |= 1 << (i % 64);
                }
            }
            v
        };
        let is_in =
            |e: &EntityUid, group: &EntityUid| e == group || entities.is_ancestor_of(group, e);
        // Principal and resource constraints have the same forms; one matcher serves both.
        let scope_matches = |e: &EntityUid, c: Scope| match c {
            Scope::Any => true,
            Scope::Eq(u) => *e == u,
            Scope::In(u) => is_in(e, &u),
            Scope::Is(t) => *e.type_name() == t,
            Scope::IsIn(t, u) => *e.type_name() == t && is_in(e, &u),
        };
        let action_matches = |e: &EntityUid, c: ActionConstraint| match c {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(u) => *e == u,
            ActionConstraint::In(us) => us.iter().any(|u| is_in(e, u)),
        };
        let context_free = bits(&|p| !mentions_context(p));
        let agents = agents
            .iter()
            .zip(0u64..)
            .map(|((name, e), i)| {
                let matches = bits(&|p| scope_matches(e, p.principal_constraint().into()));
                (name.clone(), (i, matches))
            })
            .collect();
        let routes = routes
            .iter()
            .zip(0u64..)
            .map(|((name, e), i)| {
                let matches = bits(&|p| scope_matches(e, p.resource_constraint().into()));
                (name.clone(), (i, matches))
            })
            .collect();
        let actions =
            std::array::from_fn(|i| bits(&|p| action_matches(&actions[i], p.action_constraint())));
        ScopeIndex {
            policies,
            agents,
            actions,
            routes,
            context_free,
            memo: crate::memo::DecisionMemo::new(),
        }
    }

    /// The policies whose scope matches, or `None` for an unknown agent or route.
    fn matching(&self, agent: &str, action: HttpAction, route: &str) -> Option<Matching> {
        let (agent_index, a) = self.agents.get(agent)?;
        let (route_index, r) = self.routes.get(route)?;
        let m = &self.actions[action.index()];
        let bits: Vec<u64> = a
            .iter()
            .zip(m)
            .zip(r)
            .map(|((a, m), r)| a & m & r)
            .collect();
        let context_free = bits
            .iter()
            .zip(&self.context_free)
            .all(|(b, f)| b & !f == 0);
        let memo_key =
            context_free.then(|| (agent_index << 32) | (route_index << 8) | action.index() as u64);
        Some(Matching { bits, memo_key })
    }

    /// The policies of a bitset, as a set Cedar can evaluate.
    fn policy_set(&self, bits: &[u64]) -> PolicySet {
        let mut set = PolicySet::new();
        for (w, word) in bits.iter().enumerate() {
            let mut word = *word;
            while word != 0 {
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                if let Some(policy) = self.policies.get(w * 64 + bit) {
                    // Ids are unique in the source set, so adding cannot fail.
                    let _ = set.add(policy.clone());
                }
            }
        }
        set
    }
}

fn denied_with_error(error: String) -> Decision {
    Decision {
        errors: vec![error],
        ..Decision::default_deny()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static MTLS_CALLER: CallerFacts = CallerFacts::mtls();
    use crate::{DEFAULT_SCHEMA, PolicySources};
    use std::path::PathBuf;

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
                    name: "reader-bot".into(),
                    roles: vec!["reader".into()],
                },
                AgentEntity {
                    name: "writer-bot".into(),
                    roles: vec!["reader".into(), "writer".into()],
                },
            ],
            &[
                RouteEntity {
                    name: "demo".into(),
                    classification: Classification::Public,
                    owner: "web-team".into(),
                    tags: vec!["docs".into()],
                },
                RouteEntity {
                    name: "vault".into(),
                    classification: Classification::Restricted,
                    owner: String::new(),
                    tags: Vec::new(),
                },
            ],
        )
        .unwrap()
    }

    /// One case: who does what where, from which address, and the expected outcome.
    fn check(authz: &Authorizer, agent: &str, method: &str, route: &str, ip: &str, expect: &str) {
        let request = AuthzRequest {
            agent,
            action: HttpAction::from_method(method).unwrap(),
            route,
            path: "/x",
            source_ip: &SourceIp::new(ip.parse().unwrap()),
            time: RequestTime::from_epoch(1_700_000_000),
            content: Content::NOT_SCANNED,
            caller: &crate::CallerFacts::mtls(),
        };
        let d = authz.decide(&request);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let got = format!(
            "{} {}",
            if d.allowed { "allow" } else { "deny" },
            d.policy_ids.join(",")
        );
        assert_eq!(got, expect, "{agent} {method} {route} from {ip}");
    }

    #[test]
    fn quickstart_policies() {
        let a = authorizer(crate::DEFAULT_POLICIES);
        let lo = "127.0.0.1";
        check(
            &a,
            "reader-bot",
            "GET",
            "demo",
            lo,
            "allow readers-read-low",
        );
        check(
            &a,
            "reader-bot",
            "HEAD",
            "demo",
            lo,
            "allow readers-read-low",
        );
        check(&a, "reader-bot", "POST", "demo", lo, "deny default-deny");
        check(&a, "reader-bot", "GET", "vault", lo, "deny default-deny");
        check(
            &a,
            "writer-bot",
            "POST",
            "demo",
            lo,
            "allow writers-write-public",
        );
        check(
            &a,
            "writer-bot",
            "DELETE",
            "demo",
            lo,
            "allow writers-write-public",
        );
        check(
            &a,
            "writer-bot",
            "DELETE",
            "demo",
            "10.1.2.3",
            "deny no-remote-delete",
        );
        check(&a, "stranger", "GET", "demo", lo, "deny default-deny");
    }

    #[test]
    fn unknown_resources_fail_closed_with_the_error_reported() {
        let a = authorizer(crate::DEFAULT_POLICIES);
        let d = a.decide(&AuthzRequest {
            agent: "reader-bot",
            action: HttpAction::Get,
            route: "no-such-route",
            path: "/x",
            source_ip: &SourceIp::new("127.0.0.1".parse().unwrap()),
            time: RequestTime::from_epoch(0),
            content: Content::NOT_SCANNED,
            caller: &crate::CallerFacts::mtls(),
        });
        assert!(!d.allowed);
        assert_eq!(d.policy_ids, ["default-deny"]);
        assert!(d.errors[0].contains("does not exist"), "{:?}", d.errors);
    }

    #[test]
    fn context_reaches_policies() {
        let a = authorizer(
            "@id(\"office\") permit(principal, action in Action::\"read\", resource)\n\
             when { context.source_ip.isInRange(ip(\"10.0.0.0/8\")) && context.time.weekday == 2 \n\
             && context.time.hour == 22 && context.path == \"/x\" && context.method == \"GET\" };",
        );
        // 1_700_000_000 is Tuesday 2023-11-14 22:13:20 UTC.
        check(&a, "reader-bot", "GET", "demo", "10.9.9.9", "allow office");
        check(
            &a,
            "reader-bot",
            "GET",
            "demo",
            "192.168.1.1",
            "deny default-deny",
        );
    }

    #[test]
    fn scope_index_never_changes_a_decision() {
        let a = authorizer(
            r#"
@id("p-any") permit(principal, action == Action::"GET", resource == Route::"demo") when { context.time.hour < 100 };
@id("p-eq") permit(principal == Agent::"writer-bot", action, resource);
@id("p-is") permit(principal is Agent, action in [Action::"read", Action::"POST"], resource is Route) when { resource.classification_level == 3 };
@id("p-isin") permit(principal is Agent in Role::"reader", action in Action::"read", resource);
@id("f-overflow") forbid(principal in Role::"writer", action == Action::"DELETE", resource) when { context.time.epoch * 9223372036854775807 > 0 };
@id("f-vault") forbid(principal, action in Action::"write", resource == Route::"vault");
@id("f-remote") forbid(principal, action, resource in Route::"demo") unless { context.source_ip.isLoopback() };
"#,
        );
        let mut compared = 0;
        let mut allowed = 0;
        let mut errored = 0;
        // Two passes: the second is answered from the memo where it applies.
        for agent in [
            "reader-bot",
            "writer-bot",
            "stranger",
            "reader-bot",
            "writer-bot",
            "stranger",
        ] {
            for action in HttpAction::ALL {
                for route in ["demo", "vault", "unknown"] {
                    for ip in ["127.0.0.1", "10.0.0.1"] {
                        let request = AuthzRequest {
                            agent,
                            action,
                            route,
                            path: "/x",
                            source_ip: &SourceIp::new(ip.parse().unwrap()),
                            time: RequestTime::from_epoch(1_700_000_000),
                            content: Content::NOT_SCANNED,
                            caller: &crate::CallerFacts::mtls(),
                        };
                        let indexed = a.decide(&request);
                        let full = a.decide_unindexed(&request);
                        assert_eq!(indexed, full, "{agent} {action:?} {route} {ip}");
                        compared += 1;
                        allowed += usize::from(full.allowed);
                        errored += usize::from(!full.errors.is_empty());
                    }
                }
            }
        }
        // The cases must exercise allows, denies and evaluation errors alike.
        assert_eq!(compared, 216);
        assert!(allowed > 20 && allowed < 200, "{allowed}");
        let memoized = a.index.memo.len();
        assert!(memoized > 0, "no decision was memoized");
        assert!(errored > 0, "no case exercised an erroring policy");
    }

    #[test]
    fn a_schema_whose_context_disagrees_is_refused_at_load() {
        let schema = DEFAULT_SCHEMA.replace("source_ip: ipaddr,", "source_ip: String,");
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema,
            files: vec![(
                "t.cedar".to_string(),
                "permit(principal, action, resource);".to_string(),
            )],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let err = Authorizer::new(bundle, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("is not valid for"), "{err}");
        assert!(
            err.to_string().contains("portcullis policy schema"),
            "{err}"
        );
    }

    #[test]
    fn only_policies_that_never_read_context_are_memoized() {
        let a = authorizer(
            r#"
@id("static") permit(principal in Role::"reader", action == Action::"GET", resource) when { resource.classification_level <= 1 };
@id("dynamic") permit(principal in Role::"writer", action == Action::"GET", resource) when { context.time.hour < 12 };
"#,
        );
        let ip = SourceIp::new("127.0.0.1".parse().unwrap());
        let at = |agent, hour: i64| AuthzRequest {
            agent,
            action: HttpAction::Get,
            route: "demo",
            path: "/x",
            source_ip: &ip,
            time: RequestTime::from_epoch(hour * 3600),
            content: Content::NOT_SCANNED,
            caller: &MTLS_CALLER,
        };
        // writer-bot is also a reader: its candidates include `dynamic`, whose
        // outcome changes with the hour, so its reasons must keep changing.
        assert_eq!(
            a.decide(&at("writer-bot", 9)).policy_ids,
            ["dynamic", "static"]
        );
        assert_eq!(a.decide(&at("writer-bot", 15)).policy_ids, ["static"]);
        assert_eq!(
            a.decide(&at("writer-bot", 9)).policy_ids,
            ["dynamic", "static"]
        );
        // reader-bot's only candidate never reads context: memoized, still right.
        assert_eq!(a.decide(&at("reader-bot", 9)).policy_ids, ["static"]);
        assert_eq!(a.decide(&at("reader-bot", 15)).policy_ids, ["static"]);
        assert_eq!(a.index.memo.len(), 1);
    }

    #[test]
    fn content_findings_reach_policies_and_are_never_memoized() {
        let a = authorizer(
            r#"
@id("read") permit(principal in Role::"reader", action == Action::"GET", resource);
@id("no-injection") forbid(principal, action, resource) when { context.content.injection_score.greaterThan(decimal("0.8")) };
@id("no-keys") forbid(principal, action, resource) when { context.content.findings.contains("aws_access_key") };
@id("unscanned") forbid(principal in Role::"writer", action, resource) unless { context.content.scanned };
"#,
        );
        let ip = SourceIp::new("127.0.0.1".parse().unwrap());
        let with = |agent, content| AuthzRequest {
            agent,
            action: HttpAction::Get,
            route: "demo",
            path: "/x",
            source_ip: &ip,
            time: RequestTime::from_epoch(0),
            content,
            caller: &MTLS_CALLER,
        };
        let scanned = |score, findings| Content {
            scanned: true,
            injection_score: score,
            injection_flagged: score > 0.5,
            findings,
        };
        // The same (agent, action, route) decided differently by content, in
        // both orders: a memoized first answer would repeat itself.
        for _ in 0..2 {
            assert!(a.decide(&with("reader-bot", scanned(0.1, &[]))).allowed);
            let d = a.decide(&with("reader-bot", scanned(0.93, &["prompt_injection"])));
            assert_eq!(d.policy_ids, ["no-injection"]);
            let d = a.decide(&with(
                "reader-bot",
                scanned(0.0, &["aws_access_key", "email"]),
            ));
            assert_eq!(d.policy_ids, ["no-keys"]);
            assert!(a.decide(&with("reader-bot", Content::NOT_SCANNED)).allowed);
            let d = a.decide(&with("writer-bot", Content::NOT_SCANNED));
            assert_eq!(d.policy_ids, ["unscanned"]);
        }
        assert_eq!(a.index.memo.len(), 0);
        // Odd scores are clamped into the decimal's range, never an error.
        let d = a.decide(&with("reader-bot", scanned(f32::NAN, &[])));
        assert!(d.errors.is_empty() && !d.allowed);
    }

    #[test]
    fn time_from_epoch() {
        assert_eq!(
            RequestTime::from_epoch(0),
            RequestTime {
                hour: 0,
                weekday: 4,
                epoch: 0
            }
        );
        let t = RequestTime::from_epoch(1_700_000_000);
        assert_eq!((t.hour, t.weekday), (22, 2));
    }

    #[test]
    fn methods() {
        assert_eq!(HttpAction::from_method("PATCH"), Some(HttpAction::Patch));
        assert_eq!(HttpAction::from_method("OPTIONS"), None);
        assert_eq!(HttpAction::from_method("get"), None);
    }

    #[test]
    fn caller_facts_reach_policies() {
        let a = authorizer(
            r#"
@id("read") permit(principal in Role::"reader", action == Action::"GET", resource);
@id("risky") forbid(principal, action, resource) when { context.risk.greaterThan(decimal("0.7")) };
@id("for-users") forbid(principal, action, resource) when { context has delegation && (context.delegation.depth > 1 || context.delegation.user == "mallory") };
@id("attested-tokens") forbid(principal, action, resource) when { context.auth.method == "token" && !(context.posture.attested && context.posture.matches_pin) };
@id("mfa-for-bob") forbid(principal, action, resource) when { context has delegation && context.delegation.chain.contains("bob-agent") && !context.auth.mfa };
"#,
        );
        let ip = SourceIp::new("127.0.0.1".parse().unwrap());
        let decide = |caller: &CallerFacts| {
            a.decide(&AuthzRequest {
                agent: "reader-bot",
                action: HttpAction::Get,
                route: "demo",
                path: "/x",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller,
            })
        };
        let base = CallerFacts::mtls();
        assert!(decide(&base).allowed);
        let risky = CallerFacts {
            risk: 0.71,
            ..base.clone()
        };
        assert_eq!(decide(&risky).policy_ids, ["risky"]);
        let nan = CallerFacts {
            risk: f32::NAN,
            ..base.clone()
        };
        assert_eq!(decide(&nan).policy_ids, ["risky"]);
        let delegated = |user: &str, depth, mfa| CallerFacts {
            auth: crate::AuthFacts {
                mfa,
                ..base.auth.clone()
            },
            delegation: Some(crate::Delegation {
                user: user.into(),
                depth,
                chain: vec!["bob-agent".into()],
            }),
            ..base.clone()
        };
        assert!(decide(&delegated("alice", 1, true)).allowed);
        assert_eq!(
            decide(&delegated("alice", 2, true)).policy_ids,
            ["for-users"]
        );
        assert_eq!(
            decide(&delegated("mallory", 1, true)).policy_ids,
            ["for-users"]
        );
        assert_eq!(
            decide(&delegated("alice", 1, false)).policy_ids,
            ["mfa-for-bob"]
        );
        let token = |attested, matches_pin| CallerFacts {
            auth: crate::AuthFacts {
                method: crate::AuthMethod::Token,
                mfa: false,
                token_age_secs: 10,
            },
            posture: crate::Posture {
                attested,
                digest: "sha256:00".into(),
                matches_pin,
            },
            ..base.clone()
        };
        assert!(decide(&token(true, true)).allowed);
        assert_eq!(decide(&token(true, false)).policy_ids, ["attested-tokens"]);
        assert_eq!(decide(&token(false, false)).policy_ids, ["attested-tokens"]);
    }
}
