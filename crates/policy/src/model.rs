//! `Action::"complete"` and `Action::"embed"` on `Model::"<route>/<model>"`:
//! whether an agent may use a model behind a `kind = "llm"` route. A model is a
//! member of its route (`Model::"llm/gpt-4o" in Route::"llm"`), so a policy can
//! grant a whole route's models or one of them, and read the model's
//! attributes (`version`, `status`, `classification`, `classification_level`).
//!
//! Only policies whose action scope can match the action are evaluated; when
//! none of them reads `context`, a decision depends only on (agent, action,
//! model) and the snapshot's immutable entities, and is memoized for the
//! snapshot, as for routes and secrets.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use cedar_policy::{Entities, Entity, EntityId, EntityUid, Request, RestrictedExpression};
use portcullis_core::{Classification, Decision};

use crate::PolicyBundle;
use crate::caller::CallerFacts;
use crate::candidates::ActionPolicies;
use crate::entities::EntityError;
use crate::facts::{Content, HttpAction, RequestTime, SourceIp};
use crate::resource::{Pairs, ResourceAsk, ResourceDecider};

/// A model as policy sees it: `Model::"<route>/<name>"`, in `Route::"<route>"`.
#[derive(Debug, Clone)]
pub struct ModelEntity {
    /// The route that serves the model.
    pub route: String,
    /// The model's name as clients send it (`gpt-4o-mini`).
    pub name: String,
    /// The model's version, as configured (free text).
    pub version: String,
    /// Its lifecycle status, as configured (`approved`, `preview`, …).
    pub status: String,
    /// How sensitive the data the model may see is.
    pub classification: Classification,
    /// What the model registry says about it.
    pub registry: RegistryFacts,
}

/// A model's registry attributes (`resource.verified`, `resource.lifecycle`,
/// `resource.digest`), given to policy when the schema declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryFacts {
    /// Its signature bundle verified against a pinned key.
    pub verified: bool,
    /// `draft`, `approved`, `deprecated`, `revoked`, or `unregistered` when
    /// the model names no registry entry (or one that does not exist).
    pub lifecycle: String,
    /// The registered artifact digest (`sha256:<hex>`), "" when unregistered.
    pub digest: String,
}

impl Default for RegistryFacts {
    /// A model that names no registry entry: unverified, fail closed.
    fn default() -> Self {
        RegistryFacts {
            verified: false,
            lifecycle: "unregistered".to_string(),
            digest: String::new(),
        }
    }
}

impl ModelEntity {
    /// The entity id, `<route>/<name>`.
    pub fn id(route: &str, name: &str) -> String {
        format!("{route}/{name}")
    }
}

/// What is asked of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelAction {
    /// `Action::"complete"`: a chat completion (streamed or not).
    Complete,
    /// `Action::"embed"`: embeddings.
    Embed,
}

impl ModelAction {
    const ALL: [ModelAction; 2] = [ModelAction::Complete, ModelAction::Embed];

    /// The action whose Cedar id is `name` (`complete`, `embed`).
    pub fn from_name(name: &str) -> Option<ModelAction> {
        ModelAction::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelAction::Complete => "complete",
            ModelAction::Embed => "embed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One model request.
#[derive(Debug, Clone)]
pub struct ModelRequest<'a> {
    /// The authenticated agent.
    pub agent: &'a str,
    /// What is asked.
    pub action: ModelAction,
    /// The route the request took.
    pub route: &'a str,
    /// The model's name as the client sent it.
    pub model: &'a str,
    /// The request's HTTP method (`POST`, or `GET` when `/v1/models` asks
    /// which models the agent may use).
    pub method: HttpAction,
    /// The request path.
    pub path: &'a str,
    /// The client address.
    pub source_ip: &'a SourceIp,
    /// When the request arrived.
    pub time: RequestTime,
    /// What the content guard found in the messages.
    pub content: Content<'a>,
    /// How the caller authenticated, for whom, its posture and risk.
    pub caller: &'a CallerFacts,
}

impl ResourceAsk for ModelRequest<'_> {
    fn agent(&self) -> &str {
        self.agent
    }

    fn resource_id(&self) -> Cow<'_, str> {
        Cow::Owned(ModelEntity::id(self.route, self.model))
    }

    fn context(&self) -> Result<Pairs, String> {
        crate::facts::routed_pairs(
            self.route,
            self.method.as_str(),
            self.path,
            self.source_ip,
            self.time,
            &self.content,
            self.caller,
        )
    }
}

/// Per action: the candidate policies.
struct ActionAuthz {
    uid: EntityUid,
    candidates: ActionPolicies,
}

pub(crate) struct ModelAuthz {
    actions: [ActionAuthz; 2],
    decider: ResourceDecider,
    memo: crate::memo::DecisionMemo<(String, ModelAction, String)>,
}

/// Whether the schema declares both model actions.
pub(crate) fn schema_supports_models(schema: &cedar_policy::Schema) -> bool {
    ModelAction::ALL.iter().all(|a| {
        schema
            .actions()
            .any(|u| u.type_name().to_string() == "Action" && u.id().unescaped() == a.as_str())
    })
}

/// Adds the model entities to `entities` (checked against the schema).
pub(crate) fn add_model_entities(
    bundle: &PolicyBundle,
    entities: Entities,
    models: &[ModelEntity],
) -> Result<Entities, EntityError> {
    let model_type = crate::resource::parse_type("Model")?;
    let route_type = crate::resource::parse_type("Route")?;
    let mut out = Vec::with_capacity(models.len());
    for m in models {
        let mut attrs = HashMap::from([
            (
                "version".to_string(),
                RestrictedExpression::new_string(m.version.clone()),
            ),
            (
                "status".to_string(),
                RestrictedExpression::new_string(m.status.clone()),
            ),
            (
                "classification".to_string(),
                RestrictedExpression::new_string(m.classification.as_str().to_string()),
            ),
            (
                "classification_level".to_string(),
                RestrictedExpression::new_long(m.classification.rank()),
            ),
        ]);
        // A schema written before the registry has no such attributes and
        // would refuse the entity; it has no model gate either.
        if bundle.model_registry {
            attrs.extend([
                (
                    "verified".to_string(),
                    RestrictedExpression::new_bool(m.registry.verified),
                ),
                (
                    "lifecycle".to_string(),
                    RestrictedExpression::new_string(m.registry.lifecycle.clone()),
                ),
                (
                    "digest".to_string(),
                    RestrictedExpression::new_string(m.registry.digest.clone()),
                ),
            ]);
        }
        let parent = EntityUid::from_type_name_and_id(route_type.clone(), EntityId::new(&m.route));
        let entity = Entity::new(
            EntityUid::from_type_name_and_id(
                model_type.clone(),
                EntityId::new(ModelEntity::id(&m.route, &m.name)),
            ),
            attrs,
            HashSet::from([parent]),
        )
        .map_err(|e| EntityError::new(e.to_string()))?;
        out.push(entity);
    }
    entities
        .add_entities(out, Some(&bundle.schema))
        .map_err(|e| EntityError::new(e.to_string()))
}

impl ModelAuthz {
    /// `None` when the schema has no `complete`/`embed` actions (a schema
    /// written before the LLM adapter): routes of `kind = "llm"` then fail at
    /// start.
    /// `policies` are the bundle's plus the grants' static twins.
    pub(crate) fn new(
        bundle: &PolicyBundle,
        policies: &cedar_policy::PolicySet,
        entities: &Entities,
    ) -> Result<Option<Self>, EntityError> {
        if !schema_supports_models(&bundle.schema) {
            return Ok(None);
        }
        let action_authz = |action: ModelAction| -> Result<ActionAuthz, EntityError> {
            let uid: EntityUid = format!("Action::\"{}\"", action.as_str())
                .parse()
                .map_err(|e: cedar_policy::ParseErrors| EntityError::new(e.to_string()))?;
            let candidates = ActionPolicies::for_action(policies, entities, &uid);
            Ok(ActionAuthz { uid, candidates })
        };
        let authz = ModelAuthz {
            actions: [
                action_authz(ModelAction::Complete)?,
                action_authz(ModelAction::Embed)?,
            ],
            decider: ResourceDecider::new("Model")?,
            memo: crate::memo::DecisionMemo::new(),
        };
        // The request shape is fixed: prove once that the schema accepts it.
        let ip = SourceIp::new(std::net::IpAddr::from([127, 0, 0, 1]));
        for (action, caller) in ModelAction::ALL.into_iter().flat_map(|a| {
            CallerFacts::shape_samples()
                .into_iter()
                .map(move |c| (a, c))
        }) {
            let sample = ModelRequest {
                agent: "shape-check",
                action,
                route: "shape-check",
                model: "shape-check",
                method: HttpAction::Post,
                path: "/",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller: &caller,
            };
            authz
                .request(&sample, Some(&bundle.schema))
                .map_err(|e| crate::decide::schema_refuses_shape(action.as_str(), e))?;
        }
        Ok(Some(authz))
    }

    fn request(
        &self,
        r: &ModelRequest<'_>,
        schema: Option<&cedar_policy::Schema>,
    ) -> Result<Request, String> {
        let action = &self.actions[r.action.index()].uid;
        self.decider.request(action, None, r, schema)
    }

    /// The Cedar request `r` is decided as, for `policy explain`.
    pub(crate) fn explain_request(&self, r: &ModelRequest<'_>) -> Result<Request, String> {
        self.request(r, None)
    }

    pub(crate) fn decide(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &ModelRequest<'_>,
    ) -> Decision {
        let action = &self.actions[r.action.index()];
        let key = action.candidates.context_free().then(|| {
            (
                r.agent.to_string(),
                r.action,
                ModelEntity::id(r.route, r.model),
            )
        });
        self.memo.get_or_decide(key, || {
            self.decider
                .decide(cedar, entities, &action.uid, None, r, |req| {
                    action.candidates.for_request(entities, req)
                })
        })
    }

    /// Decides with every policy of the action, bypassing the scope slice
    /// and the memo.
    pub(crate) fn decide_unsliced(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &ModelRequest<'_>,
    ) -> Decision {
        let action = &self.actions[r.action.index()];
        self.decider
            .decide(cedar, entities, &action.uid, None, r, |_| {
                action.candidates.all()
            })
    }

    /// The permits of `complete` or `embed` that could allow `agent` a model
    /// of `route` (see `ActionPolicies::permits_on_route`).
    pub(crate) fn permits_on_route(
        &self,
        entities: &Entities,
        agent: &str,
        route: &EntityUid,
    ) -> Vec<String> {
        let principal = self.decider.agent(agent);
        let mut out = Vec::new();
        for a in &self.actions {
            a.candidates
                .permits_on_route(entities, &principal, route, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    /// Decides as `user` (an entity in `entities`): every policy of the
    /// action, no memo (see `Authorizer::decide_model_for_user`).
    pub(crate) fn decide_as_user(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &ModelRequest<'_>,
        user: EntityUid,
    ) -> Decision {
        let action = &self.actions[r.action.index()];
        self.decider
            .decide(cedar, entities, &action.uid, Some(user), r, |_| {
                action.candidates.all()
            })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use portcullis_core::Classification;

    use crate::{
        AgentEntity, Authorizer, Content, DEFAULT_SCHEMA, ModelAction, ModelEntity, ModelRequest,
        PolicyBundle, PolicySources, RequestTime, RouteEntity, SourceIp,
    };

    fn authorizer(policies: &str) -> Authorizer {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![("t.cedar".to_string(), policies.to_string())],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let agent = |name: &str, role: &str| AgentEntity {
            name: name.into(),
            roles: vec![role.into()],
        };
        let model = |name: &str, status: &str, classification| ModelEntity {
            route: "llm".into(),
            name: name.into(),
            version: "2024-07-18".into(),
            status: status.into(),
            classification,
            registry: Default::default(),
        };
        Authorizer::new(
            bundle,
            &[agent("alice", "analyst"), agent("bob", "intern")],
            &[RouteEntity {
                name: "llm".into(),
                classification: Classification::Internal,
                owner: String::new(),
                tags: Vec::new(),
            }],
        )
        .unwrap()
        .with_models(&[
            model("gpt-4o-mini", "approved", Classification::Internal),
            model("big", "approved", Classification::Confidential),
            model("exp", "preview", Classification::Public),
        ])
        .unwrap()
    }

    /// `agent action model hour` → "allow [ids]" or "deny [ids]".
    fn check(authz: &Authorizer, agent: &str, action: ModelAction, model: &str, expect: &str) {
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let d = authz.decide_model(&ModelRequest {
            agent,
            action,
            route: "llm",
            model,
            method: crate::HttpAction::Post,
            path: "/llm/v1/chat/completions",
            source_ip: &ip,
            time: RequestTime::from_epoch(9 * 3600),
            content: Content::NOT_SCANNED,
            caller: &crate::CallerFacts::mtls(),
        });
        let got = format!(
            "{} {:?}",
            if d.allowed { "allow" } else { "deny" },
            d.policy_ids
        );
        assert_eq!(got, expect, "{agent} {action:?} {model}");
    }

    /// `builtin:model-gate`: from confidential up, a model must be verified
    /// in the registry and not revoked, whatever the permits say; below
    /// confidential the registry attributes are policy's to read.
    #[test]
    fn the_model_gate_refuses_unverified_or_revoked_confidential_models() {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![(
                "t.cedar".to_string(),
                r#"@id("all") permit(principal, action == Action::"complete", resource);
@id("approved-only") forbid(principal, action, resource is Model) when { resource.classification_level == 1 && resource.lifecycle != "approved" };"#
                    .to_string(),
            )],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let model = |name: &str, classification, verified, lifecycle: &str| ModelEntity {
            route: "llm".into(),
            name: name.into(),
            version: String::new(),
            status: String::new(),
            classification,
            registry: crate::RegistryFacts {
                verified,
                lifecycle: lifecycle.into(),
                digest: format!("sha256:{}", "a".repeat(64)),
            },
        };
        let authz = Authorizer::new(
            bundle,
            &[AgentEntity {
                name: "alice".into(),
                roles: Vec::new(),
            }],
            &[RouteEntity {
                name: "llm".into(),
                classification: Classification::Confidential,
                owner: String::new(),
                tags: Vec::new(),
            }],
        )
        .unwrap()
        .with_models(&[
            model("signed", Classification::Confidential, true, "approved"),
            model("unsigned", Classification::Restricted, false, "approved"),
            model("revoked", Classification::Confidential, true, "revoked"),
            model("draft-signed", Classification::Confidential, true, "draft"),
            model("public", Classification::Public, false, "unregistered"),
            model("internal-draft", Classification::Internal, true, "draft"),
        ])
        .unwrap();
        assert!(authz.supports_model_registry());
        use ModelAction::Complete;
        for (m, expect) in [
            ("signed", r#"allow ["all"]"#),
            ("unsigned", r#"deny ["builtin:model-gate"]"#),
            ("revoked", r#"deny ["builtin:model-gate"]"#),
            ("draft-signed", r#"allow ["all"]"#),
            ("public", r#"allow ["all"]"#),
            ("internal-draft", r#"deny ["approved-only"]"#),
        ] {
            check(&authz, "alice", Complete, m, expect);
        }
        // A schema without the registry attributes loads, without the gate.
        let old = DEFAULT_SCHEMA.replace(
            "  verified: Bool,\n  lifecycle: String,\n  digest: String,\n",
            "",
        );
        assert_ne!(old, DEFAULT_SCHEMA);
        let bundle = PolicyBundle::compile(&PolicySources {
            origin: PathBuf::from("/t"),
            schema: old,
            files: vec![(
                "t.cedar".to_string(),
                r#"permit(principal, action == Action::"complete", resource);"#.to_string(),
            )],
        })
        .unwrap();
        let authz = Authorizer::new(Arc::new(bundle), &[], &[])
            .unwrap()
            .with_models(&[])
            .unwrap();
        assert!(!authz.supports_model_registry());
    }

    #[test]
    fn models_by_attribute_role_and_route() {
        let policies = r#"
@id("analysts") permit(principal in Role::"analyst", action == Action::"complete", resource in Route::"llm")
  when { resource.status == "approved" && resource.classification_level <= 1 };
@id("interns") permit(principal in Role::"intern", action in [Action::"complete", Action::"embed"], resource == Model::"llm/exp");
@id("no-preview-embeddings") forbid(principal, action == Action::"embed", resource) when { resource.status == "preview" && context.route == "llm" };
"#;
        let authz = authorizer(policies);
        assert!(authz.supports_models());
        use ModelAction::*;
        // Twice: the second answers come from the memo where it applies.
        for _ in 0..2 {
            check(
                &authz,
                "alice",
                Complete,
                "gpt-4o-mini",
                r#"allow ["analysts"]"#,
            );
            // Confidential and unverified: the built-in model gate refuses it.
            check(
                &authz,
                "alice",
                Complete,
                "big",
                r#"deny ["builtin:model-gate"]"#,
            );
            check(&authz, "alice", Complete, "exp", r#"deny ["default-deny"]"#);
            check(
                &authz,
                "alice",
                Embed,
                "gpt-4o-mini",
                r#"deny ["default-deny"]"#,
            );
            check(&authz, "bob", Complete, "exp", r#"allow ["interns"]"#);
            check(
                &authz,
                "bob",
                Embed,
                "exp",
                r#"deny ["no-preview-embeddings"]"#,
            );
            check(
                &authz,
                "bob",
                Complete,
                "gpt-4o-mini",
                r#"deny ["default-deny"]"#,
            );
            // A model that is not configured is no entity: nothing matches it.
            check(
                &authz,
                "alice",
                Complete,
                "unknown",
                r#"deny ["default-deny"]"#,
            );
        }
    }

    #[test]
    fn policies_with_any_action_still_validate_and_cover_models() {
        // Written for routes, reading `context.method`, which the model
        // context has too, so strict validation still passes, and the
        // policy covers the models.
        let authz = authorizer(
            r#"@id("any") permit(principal in Role::"analyst", action, resource) when { context.method == "POST" };"#,
        );
        check(
            &authz,
            "alice",
            ModelAction::Complete,
            "gpt-4o-mini",
            r#"allow ["any"]"#,
        );
        check(
            &authz,
            "bob",
            ModelAction::Complete,
            "gpt-4o-mini",
            r#"deny ["default-deny"]"#,
        );
    }

    #[test]
    fn http_decisions_do_not_see_model_policies() {
        // A model grant is not a route grant: `resource in Route::"llm"`
        // scoped to `complete` gives no HTTP action on the route itself.
        let authz = authorizer(
            r#"@id("m") permit(principal, action == Action::"complete", resource in Route::"llm");"#,
        );
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let d = authz.decide(&crate::AuthzRequest {
            agent: "alice",
            action: crate::HttpAction::Post,
            route: "llm",
            path: "/llm/v1/chat/completions",
            source_ip: &ip,
            time: RequestTime::from_epoch(0),
            content: Content::NOT_SCANNED,
            caller: &crate::CallerFacts::mtls(),
        });
        assert!(!d.allowed);
        assert_eq!(d.policy_ids, ["default-deny"]);
    }
}
