//! The `Authorizer`: an immutable snapshot of the policies and the entities
//! they speak of, with the scope index, that answers every kind of decision
//! (routes, secrets, MCP messages, models, and the users agents act for)
//! without IO.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request};
use portcullis_core::{Classification, Decision};

use crate::PolicyBundle;
use crate::caller::CallerFacts;
use crate::decide::{SCHEMA_HINT, denied_with_error, to_decision};
use crate::entities::{AgentEntity, EntityError, EntityTypes, RouteEntity, uid};
use crate::facts::{AuthzRequest, Content, HttpAction, RequestTime, SourceIp};
use crate::grants::GrantEntity;
use crate::scope::ScopeIndex;

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
    /// The bundle's policies plus each grant's static twin: what the
    /// per-action slices of MCP and model decisions are cut from.
    with_grants: PolicySet,
    pub(crate) entities: Entities,
    pub(crate) index: ScopeIndex,
    actions: [EntityUid; 6],
    agent_type: EntityTypeName,
    role_type: EntityTypeName,
    route_type: EntityTypeName,
    /// `User` (people agents act for), when the schema declares it.
    user_type: Option<EntityTypeName>,
    pub(crate) cedar: cedar_policy::Authorizer,
    /// `use_secret` decisions; `None` when the schema has no such action.
    pub(crate) secret: Option<crate::secret::SecretAuthz>,
    /// `egress` decisions; `None` when the schema has no such actions.
    pub(crate) egress: Option<crate::egress::EgressAuthz>,
    /// MCP decisions; `None` when the schema has no MCP actions.
    pub(crate) mcp: Option<crate::mcp::McpAuthz>,
    /// `complete`/`embed` decisions on models; set by
    /// [`Authorizer::with_models`].
    pub(crate) model: Option<crate::model::ModelAuthz>,
    /// `read_data` decisions; `None` when the schema has no such action.
    pub(crate) dataset: Option<crate::dataset::DatasetAuthz>,
    /// The registered datasets the snapshot holds, by name; set by
    /// [`Authorizer::with_datasets`].
    datasets: std::collections::HashSet<String>,
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
        let types = EntityTypes::new()?;
        let entities = crate::entities::snapshot_entities(&bundle, &types, agents, routes)?;
        let EntityTypes {
            agent: agent_type,
            role: role_type,
            route: route_type,
            action: action_type,
        } = types;
        let actions = HttpAction::ALL.map(|a| uid(&action_type, a.as_str()));
        let agent_uids: Vec<(String, EntityUid)> = agents
            .iter()
            .map(|a| (a.name.clone(), uid(&agent_type, &a.name)))
            .collect();
        let route_uids: Vec<(String, EntityUid)> = routes
            .iter()
            .map(|r| (r.name.clone(), uid(&route_type, &r.name)))
            .collect();
        let (policies, indexed, grant_expiry) = crate::grants::link(
            &bundle.policies,
            grants,
            &crate::grants::GrantTypes {
                actions: &actions,
                agent: &agent_type,
                route: &route_type,
            },
        )?;
        let index = ScopeIndex::new(&indexed, &entities, &agent_uids, &actions, &route_uids);
        // A secret is never granted: `use_secret` is decided by the bundle.
        let secret = crate::secret::SecretAuthz::new(&bundle, &entities)?;
        let egress = crate::egress::EgressAuthz::new(&bundle, &entities)?;
        let dataset = crate::dataset::DatasetAuthz::new(&bundle, &entities)?;
        let mcp = crate::mcp::McpAuthz::new(&bundle, &indexed, &entities)?;
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
            egress,
            mcp,
            model: None,
            dataset,
            datasets: Default::default(),
            policies,
            grant_expiry,
            with_grants: indexed,
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
            self.decide_among(request, Some(&*self.index.policy_set(&matching)))
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

    /// Whether the schema declares `egress` and `egress_private`, which
    /// routes with `[routes.sandbox] network = "egress"` need.
    pub fn supports_egress(&self) -> bool {
        self.egress.is_some()
    }

    /// Decides one connection of a sandboxed server's egress (see
    /// [`crate::EgressRequest`]). Without the egress actions in the schema:
    /// denied, with the reason in [`Decision::errors`].
    pub fn decide_egress(&self, request: &crate::EgressRequest<'_>) -> Decision {
        match &self.egress {
            Some(e) => e.decide(&self.cedar, &self.entities, request),
            None => denied_with_error(format!(
                "the policy schema has no `Action::\"{}\"`",
                crate::egress::EGRESS
            )),
        }
    }

    /// [`Authorizer::decide_egress`] as if the user an agent acts for had
    /// asked (see [`Authorizer::decide_for_user`]): a sandboxed server of
    /// a session a delegated token opened reaches only what the agent and
    /// the user may both reach.
    pub fn decide_egress_for_user(
        &self,
        request: &crate::EgressRequest<'_>,
        user: &str,
        groups: &[String],
    ) -> Decision {
        let (principal, entities) = match self.with_user(user, groups) {
            Ok(u) => u,
            Err(denied) => return denied,
        };
        match &self.egress {
            Some(e) => e.decide_as_user(&self.cedar, &entities, request, principal),
            None => denied_with_error(format!(
                "the policy schema has no `Action::\"{}\"`",
                crate::egress::EGRESS
            )),
        }
    }

    /// Whether the schema declares the MCP actions, the session plumbing
    /// (`Action::"mcp_plumbing"`) included, which `kind = "mcp"` routes need.
    pub fn supports_mcp(&self) -> bool {
        self.mcp.as_ref().is_some_and(|m| m.supports_plumbing())
    }

    /// Whether the schema gives `Model` the registry attributes (`verified`,
    /// `lifecycle`, `digest`), so the set holds `builtin:model-gate` and
    /// models may name registry entries.
    pub fn supports_model_registry(&self) -> bool {
        self.bundle.model_registry
    }

    /// Decides one MCP message (see [`crate::McpRequest`]). Without the MCP
    /// actions in the schema: denied, with the reason in [`Decision::errors`].
    pub fn decide_mcp(&self, request: &crate::McpRequest<'_>) -> Decision {
        match &self.mcp {
            Some(m) => self.without_lapsed_grants(
                m.decide(&self.cedar, &self.entities, request),
                request.time.epoch,
            ),
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
            Some(m) => self.without_lapsed_grants(
                m.decide_unsliced(&self.cedar, &self.entities, request),
                request.time.epoch,
            ),
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
                return Err(EntityError::new(format!(
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
        self.model =
            crate::model::ModelAuthz::new(&self.bundle, &self.with_grants, &self.entities)?;
        Ok(self)
    }

    /// Adds the registered datasets (`Dataset::"<name>"`, from the dataset
    /// registry) for `read_data` decisions. Without datasets the schema may
    /// lack the `Dataset` type (a schema written before the registry).
    pub fn with_datasets(mut self, datasets: &[crate::DatasetEntity]) -> Result<Self, EntityError> {
        if !datasets.is_empty() {
            if self.dataset.is_none() {
                return Err(EntityError::new(format!(
                    "the policy schema has no `Dataset` entity type or `read_data` action, which routes tagged with datasets need. {SCHEMA_HINT}"
                )));
            }
            let entities = std::mem::replace(&mut self.entities, Entities::empty());
            self.entities = crate::dataset::add_dataset_entities(&self.bundle, entities, datasets)?;
        }
        self.datasets = datasets.iter().map(|d| d.name.clone()).collect();
        Ok(self)
    }

    /// Whether the schema declares `Action::"read_data"`, which routes and
    /// tools tagged with datasets need.
    pub fn supports_datasets(&self) -> bool {
        self.dataset.is_some()
    }

    /// Whether `name` is a registered dataset this snapshot holds.
    pub fn knows_dataset(&self, name: &str) -> bool {
        self.datasets.contains(name)
    }

    /// Decides whether the caller may read the dataset (see
    /// [`crate::DatasetRequest`]). Without `read_data` in the schema:
    /// denied, with the reason in [`Decision::errors`].
    pub fn decide_dataset(&self, request: &crate::DatasetRequest<'_>) -> Decision {
        match &self.dataset {
            Some(d) => d.decide(&self.cedar, &self.entities, request),
            None => denied_with_error(format!(
                "the policy schema has no `Action::\"{}\"`",
                crate::dataset::READ_DATA
            )),
        }
    }

    /// [`Authorizer::decide_dataset`] as if the user an agent acts for had
    /// made the call (see [`Authorizer::decide_for_user`]).
    pub fn decide_dataset_for_user(
        &self,
        request: &crate::DatasetRequest<'_>,
        user: &str,
        groups: &[String],
    ) -> Decision {
        let (user, entities) = match self.with_user(user, groups) {
            Ok(found) => found,
            Err(denied) => return denied,
        };
        match &self.dataset {
            Some(d) => d.decide_as_user(&self.cedar, &entities, request, user),
            None => denied_with_error(format!(
                "the policy schema has no `Action::\"{}\"`",
                crate::dataset::READ_DATA
            )),
        }
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
            Some(m) => self.without_lapsed_grants(
                m.decide(&self.cedar, &self.entities, request),
                request.time.epoch,
            ),
            None => denied_with_error(format!(
                "the policy schema has no `Action::\"{}\"` on `Model`",
                request.action.as_str()
            )),
        }
    }

    /// [`Authorizer::decide_model`] with every policy of the action,
    /// bypassing the scope slice (and the memo). For tests that check the
    /// slice changes nothing but the cost.
    #[doc(hidden)]
    pub fn decide_model_unsliced(&self, request: &crate::ModelRequest<'_>) -> Decision {
        match &self.model {
            Some(m) => self.without_lapsed_grants(
                m.decide_unsliced(&self.cedar, &self.entities, request),
                request.time.epoch,
            ),
            None => Decision::default_deny(),
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
        let context = request.context()?;
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
                .map_err(|e| crate::decide::schema_refuses_shape(action.as_str(), e))?;
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
        let (principal, entities) = match self.with_user(user, groups) {
            Ok(u) => u,
            Err(denied) => return denied,
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
    /// refuses it before reading a body. The built-in
    /// `builtin:mcp-plumbing` is never among them: it permits MCP session
    /// plumbing exactly when this is not empty (`context.route_permitted`).
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

    /// The user's id and a copy of the snapshot's entities with the user in
    /// it (in its groups' roles), for a decision as the user; a denial when
    /// the user cannot be added.
    fn with_user(&self, user: &str, groups: &[String]) -> Result<(EntityUid, Entities), Decision> {
        let user = self.user_entity(user, groups)?;
        let principal = user.uid();
        let entities = self
            .entities
            .clone()
            .add_entities([user], None)
            .map_err(|e| denied_with_error(e.to_string()))?;
        Ok((principal, entities))
    }

    /// The `User::"<user>"` entity, a member of `Role::"<group>"` for each of
    /// their groups; a denial when the schema has no `User` type.
    fn user_entity(&self, user: &str, groups: &[String]) -> Result<Entity, Decision> {
        let Some(user_type) = &self.user_type else {
            return Err(denied_with_error(
                "the policy schema has no `User` entity type, so no request on behalf of a user can be allowed; update it from `portcullis policy schema`".into(),
            ));
        };
        Ok(crate::entities::user_entity(
            user_type,
            &self.role_type,
            user,
            groups,
        ))
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
        let (principal, entities) = match self.with_user(user, groups) {
            Ok(u) => u,
            Err(denied) => return denied,
        };
        match &self.model {
            Some(m) => m.decide_as_user(&self.cedar, &entities, request, principal),
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

/// A snapshot of two agents and two routes, and a one-line check of a
/// decision, for the tests of the modules that decide.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::{DEFAULT_SCHEMA, PolicySources};
    use std::path::PathBuf;

    pub(crate) static MTLS_CALLER: CallerFacts = CallerFacts::mtls();

    pub(crate) fn authorizer(policies: &str) -> Authorizer {
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
    pub(crate) fn check(
        authz: &Authorizer,
        agent: &str,
        method: &str,
        route: &str,
        ip: &str,
        expect: &str,
    ) {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::{authorizer, check};
    use super::*;
    use crate::{DEFAULT_SCHEMA, PolicySources};
    use std::path::PathBuf;

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
}
