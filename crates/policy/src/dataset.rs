//! `Action::"read_data"` on `Dataset::"<name>"`: whether a caller may reach
//! the data of a registered dataset through a route (or an MCP tool) tagged
//! with it. The gateway asks after the call's own decision allowed it, once
//! per dataset the route or tool is tagged with; any denial refuses the call
//! (`dataset_denied`). The dataset's attributes come from the dataset
//! registry (docs/governance.md), read with every policy snapshot.
//!
//! Only policies whose action scope can match `read_data` are evaluated;
//! when none of them reads `context`, a decision depends only on (agent,
//! dataset) and is memoized for the snapshot, as for secrets.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};
use portcullis_core::{Classification, Decision};

use crate::PolicyBundle;
use crate::caller::CallerFacts;
use crate::candidates::ActionPolicies;
use crate::entities::EntityError;
use crate::facts::{Content, HttpAction, RequestTime, SourceIp};

/// The action id.
pub const READ_DATA: &str = "read_data";

/// A registered dataset as policy sees it: `Dataset::"<name>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetEntity {
    /// Its registered name.
    pub name: String,
    /// Who is accountable for it.
    pub owner: String,
    /// How sensitive it is.
    pub classification: Classification,
    /// Where it came from.
    pub source: String,
    /// Under which licence it is held.
    pub licence: String,
    /// When it was collected (`YYYY-MM-DD`).
    pub collected: String,
    /// On what basis it is kept (`consent`, `contract`, …, `none`).
    pub consent_basis: String,
    /// How long data from it may be kept, in days.
    pub retention_days: i64,
    /// What it may be used for.
    pub purposes: Vec<String>,
}

/// One `read_data` request: a call on a route (or tool) tagged with the
/// dataset, already allowed by its own decision.
#[derive(Debug, Clone)]
pub struct DatasetRequest<'a> {
    /// The authenticated agent.
    pub agent: &'a str,
    /// The dataset read.
    pub dataset: &'a str,
    /// The route the request took.
    pub route: &'a str,
    /// The action the call asked for (`GET`, `call_tool`, `complete`, …).
    pub action: &'a str,
    /// The tool, prompt, resource or model; "" for a route's own request.
    pub target: &'a str,
    /// The request's HTTP method.
    pub method: HttpAction,
    /// The request path.
    pub path: &'a str,
    /// The client address.
    pub source_ip: &'a SourceIp,
    /// When the request arrived.
    pub time: RequestTime,
    /// What the content guard found in the request body.
    pub content: Content<'a>,
    /// How the caller authenticated, for whom, its posture and risk.
    pub caller: &'a CallerFacts,
}

pub(crate) struct DatasetAuthz {
    action: EntityUid,
    agent_type: EntityTypeName,
    dataset_type: EntityTypeName,
    candidates: ActionPolicies,
    memo: crate::memo::DecisionMemo<(String, String)>,
}

/// Adds the dataset entities to `entities` (checked against the schema).
pub(crate) fn add_dataset_entities(
    bundle: &PolicyBundle,
    entities: Entities,
    datasets: &[DatasetEntity],
) -> Result<Entities, EntityError> {
    let dataset_type = parse_type("Dataset")?;
    let mut out = Vec::with_capacity(datasets.len());
    for d in datasets {
        let attrs = HashMap::from([
            ("owner".to_string(), string(&d.owner)),
            (
                "classification".to_string(),
                string(d.classification.as_str()),
            ),
            (
                "classification_level".to_string(),
                RestrictedExpression::new_long(d.classification.rank()),
            ),
            ("source".to_string(), string(&d.source)),
            ("licence".to_string(), string(&d.licence)),
            ("collected".to_string(), string(&d.collected)),
            ("consent_basis".to_string(), string(&d.consent_basis)),
            (
                "retention_days".to_string(),
                RestrictedExpression::new_long(d.retention_days),
            ),
            (
                "purposes".to_string(),
                RestrictedExpression::new_set(d.purposes.iter().map(|p| string(p))),
            ),
        ]);
        let entity = Entity::new(
            EntityUid::from_type_name_and_id(dataset_type.clone(), EntityId::new(&d.name)),
            attrs,
            HashSet::new(),
        )
        .map_err(|e| EntityError::new(e.to_string()))?;
        out.push(entity);
    }
    entities
        .add_entities(out, Some(&bundle.schema))
        .map_err(|e| EntityError::new(e.to_string()))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

fn parse_type(t: &str) -> Result<EntityTypeName, EntityError> {
    t.parse::<EntityTypeName>()
        .map_err(|e| EntityError::new(e.to_string()))
}

impl DatasetAuthz {
    /// `None` when the schema has no `read_data` action (a schema written
    /// before the dataset registry): a snapshot whose routes are tagged
    /// with datasets is then refused.
    pub(crate) fn new(
        bundle: &PolicyBundle,
        entities: &Entities,
    ) -> Result<Option<Self>, EntityError> {
        let Some(action) = bundle
            .schema
            .actions()
            .find(|a| a.type_name().to_string() == "Action" && a.id().unescaped() == READ_DATA)
            .cloned()
        else {
            return Ok(None);
        };
        let candidates = ActionPolicies::for_action(&bundle.policies, entities, &action);
        let authz = DatasetAuthz {
            action,
            agent_type: parse_type("Agent")?,
            dataset_type: parse_type("Dataset")?,
            candidates,
            memo: crate::memo::DecisionMemo::new(),
        };
        // The request shape is fixed: prove once that the schema accepts it.
        let ip = SourceIp::new(std::net::IpAddr::from([127, 0, 0, 1]));
        for caller in CallerFacts::shape_samples() {
            let sample = DatasetRequest {
                agent: "shape-check",
                dataset: "shape-check",
                route: "shape-check",
                action: "GET",
                target: "",
                method: HttpAction::Get,
                path: "/",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller: &caller,
            };
            authz
                .request(&sample, Some(&bundle.schema))
                .map_err(|e| crate::decide::schema_refuses_shape(READ_DATA, e))?;
        }
        Ok(Some(authz))
    }

    fn request(
        &self,
        r: &DatasetRequest<'_>,
        schema: Option<&cedar_policy::Schema>,
    ) -> Result<Request, String> {
        let principal =
            EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(r.agent));
        self.request_as(principal, r, schema)
    }

    fn request_as(
        &self,
        principal: EntityUid,
        r: &DatasetRequest<'_>,
        schema: Option<&cedar_policy::Schema>,
    ) -> Result<Request, String> {
        let resource =
            EntityUid::from_type_name_and_id(self.dataset_type.clone(), EntityId::new(r.dataset));
        let mut pairs = crate::facts::routed_pairs(
            r.route,
            r.method.as_str(),
            r.path,
            r.source_ip,
            r.time,
            &r.content,
            r.caller,
        )?;
        pairs.extend([
            (
                "action".to_string(),
                RestrictedExpression::new_string(r.action.to_string()),
            ),
            (
                "target".to_string(),
                RestrictedExpression::new_string(r.target.to_string()),
            ),
        ]);
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        Request::new(principal, self.action.clone(), resource, context, schema)
            .map_err(|e| e.to_string())
    }

    pub(crate) fn decide(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &DatasetRequest<'_>,
    ) -> Decision {
        let key = self
            .candidates
            .context_free()
            .then(|| (r.agent.to_string(), r.dataset.to_string()));
        self.memo
            .get_or_decide(key, || match self.request(r, None) {
                Err(e) => Decision {
                    errors: vec![e],
                    ..Decision::default_deny()
                },
                Ok(request) => {
                    let policies = self.candidates.for_request(entities, &request);
                    let response = cedar.is_authorized(&request, &policies, entities);
                    crate::decide::to_decision(&response)
                }
            })
    }

    /// Decides as `user` (an entity in `entities`): every policy of the
    /// action, no memo.
    pub(crate) fn decide_as_user(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &DatasetRequest<'_>,
        user: EntityUid,
    ) -> Decision {
        match self.request_as(user, r, None) {
            Err(e) => Decision {
                errors: vec![e],
                ..Decision::default_deny()
            },
            Ok(request) => crate::decide::to_decision(&cedar.is_authorized(
                &request,
                &self.candidates.all(),
                entities,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use portcullis_core::Classification;

    use crate::{
        AgentEntity, Authorizer, CallerFacts, Content, DEFAULT_POLICIES, DEFAULT_SCHEMA,
        DatasetEntity, DatasetRequest, HttpAction, PolicyBundle, PolicySources, RequestTime,
        RouteEntity, SourceIp,
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
        let dataset = |name: &str, classification, purposes: &[&str]| DatasetEntity {
            name: name.into(),
            owner: "risk-team".into(),
            classification,
            source: "claims-db export".into(),
            licence: "internal".into(),
            collected: "2026-01-31".into(),
            consent_basis: "contract".into(),
            retention_days: 90,
            purposes: purposes.iter().map(|p| p.to_string()).collect(),
        };
        Authorizer::new(
            bundle,
            &[agent("alice", "fraud-detection"), agent("bob", "marketing")],
            &[RouteEntity {
                name: "claims".into(),
                classification: Classification::Confidential,
                owner: String::new(),
                tags: Vec::new(),
            }],
        )
        .unwrap()
        .with_datasets(&[
            dataset("claims", Classification::Confidential, &["fraud-detection"]),
            dataset("catalogue", Classification::Internal, &[]),
        ])
        .unwrap()
    }

    /// `agent dataset` → "allow [ids]" or "deny [ids]".
    fn check(authz: &Authorizer, agent: &str, dataset: &str, expect: &str) {
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let d = authz.decide_dataset(&DatasetRequest {
            agent,
            dataset,
            route: "claims",
            action: "GET",
            target: "",
            method: HttpAction::Get,
            path: "/claims/1",
            source_ip: &ip,
            time: RequestTime::from_epoch(0),
            content: Content::NOT_SCANNED,
            caller: &CallerFacts::mtls(),
        });
        let got = format!(
            "{} {:?}",
            if d.allowed { "allow" } else { "deny" },
            d.policy_ids
        );
        assert_eq!(got, expect, "{agent} {dataset}");
    }

    /// The shipped policies let anyone read public and internal datasets,
    /// and the documented purpose policy lets only the purposes a
    /// confidential dataset names read it.
    #[test]
    fn purpose_decides_confidential_datasets() {
        let authz = authorizer(&format!(
            "{DEFAULT_POLICIES}\n{}",
            r#"@id("confidential-by-purpose")
permit(principal in Role::"fraud-detection", action == Action::"read_data", resource)
  when { resource.classification_level >= 2 && resource.purposes.contains("fraud-detection") };"#
        ));
        assert!(authz.supports_datasets());
        assert!(authz.knows_dataset("claims") && !authz.knows_dataset("other"));
        check(
            &authz,
            "alice",
            "claims",
            r#"allow ["confidential-by-purpose"]"#,
        );
        check(&authz, "bob", "claims", r#"deny ["default-deny"]"#);
        check(&authz, "bob", "catalogue", r#"allow ["datasets-read-low"]"#);
        // An unregistered dataset is no entity: nothing matches it.
        check(&authz, "alice", "other", r#"deny ["default-deny"]"#);
    }

    /// A delegated call needs the user permitted too.
    #[test]
    fn the_user_an_agent_acts_for_must_be_permitted_too() {
        let authz = authorizer(
            r#"@id("purpose") permit(principal in Role::"fraud-detection", action == Action::"read_data", resource)
  when { resource.purposes.contains("fraud-detection") };"#,
        );
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let request = DatasetRequest {
            agent: "alice",
            dataset: "claims",
            route: "claims",
            action: "call_tool",
            target: "export",
            method: HttpAction::Post,
            path: "/claims",
            source_ip: &ip,
            time: RequestTime::from_epoch(0),
            content: Content::NOT_SCANNED,
            caller: &CallerFacts::mtls(),
        };
        assert!(authz.decide_dataset(&request).allowed);
        let as_user = |groups: &[&str]| {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            authz
                .decide_dataset_for_user(&request, "carol", &groups)
                .allowed
        };
        assert!(as_user(&["fraud-detection"]));
        assert!(!as_user(&["marketing"]));
    }

    #[test]
    fn context_reaches_read_data() {
        let authz = authorizer(
            r#"@id("gets") permit(principal, action == Action::"read_data", resource)
  when { context.action == "GET" && context.target == "" && context.route == "claims" && resource.consent_basis == "contract" && resource.retention_days <= 90 };"#,
        );
        for _ in 0..2 {
            check(&authz, "bob", "claims", r#"allow ["gets"]"#);
        }
    }
}
