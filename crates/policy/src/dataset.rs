//! `Action::"read_data"` on `Dataset::"<name>"`: whether a caller may reach
//! the data of a registered dataset through a route (or an MCP tool) tagged
//! with it. The gateway asks after the call's own decision allowed it, once
//! per dataset the route or tool is tagged with; any denial refuses the call
//! (`dataset_denied`). The dataset's attributes come from the dataset
//! registry (docs/governance.md), read with every policy snapshot, and the
//! context carries the purpose the request declared (`context.purpose`).
//!
//! Only policies whose action scope can match `read_data` are evaluated;
//! when none of them reads `context`, a decision depends only on (agent,
//! dataset) and is memoized for the snapshot, as for secrets.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use cedar_policy::{Entities, Entity, EntityId, EntityUid, RestrictedExpression};
use portcullis_core::{Classification, Decision};

use crate::PolicyBundle;
use crate::caller::CallerFacts;
use crate::candidates::ActionPolicies;
use crate::entities::EntityError;
use crate::facts::{Content, HttpAction, RequestTime, SourceIp};
use crate::resource::{Pairs, ResourceAsk, ResourceDecider, parse_type};

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
    /// Where it is in its life: `draft`, `approved`, `deprecated` or
    /// `revoked` (`resource.lifecycle`; the built-in dataset gate refuses
    /// reading a revoked one).
    pub lifecycle: String,
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
    /// The purpose the request declared (`Portcullis-Purpose` on HTTP and
    /// LLM routes, `_meta` `portcullis/purpose` on MCP); "" when none.
    pub purpose: &'a str,
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

/// A [`DatasetRequest`] as the decider asks it: `lifecycle` and `purpose`
/// only when the schema declares them (a schema written before them still
/// decides, and its policies cannot read them).
struct Ask<'r, 'a> {
    r: &'r DatasetRequest<'a>,
    purpose: bool,
}

impl ResourceAsk for Ask<'_, '_> {
    fn agent(&self) -> &str {
        self.r.agent
    }

    fn resource_id(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.r.dataset)
    }

    fn context(&self) -> Result<Pairs, String> {
        let r = self.r;
        let mut pairs = crate::facts::routed_pairs(
            r.route,
            r.method.as_str(),
            r.path,
            r.source_ip,
            r.time,
            &r.content,
            r.caller,
        )?;
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        pairs.extend([
            ("action".to_string(), s(r.action)),
            ("target".to_string(), s(r.target)),
        ]);
        if self.purpose {
            pairs.push(("purpose".to_string(), s(r.purpose)));
        }
        Ok(pairs)
    }
}

pub(crate) struct DatasetAuthz {
    action: EntityUid,
    decider: ResourceDecider,
    candidates: ActionPolicies,
    memo: crate::memo::DecisionMemo<(String, String)>,
    /// Whether the schema's `DatasetContext` declares `purpose`.
    purpose: bool,
}

/// Adds the dataset entities to `entities` (checked against the schema).
/// `lifecycle` is added when the schema declares it
/// ([`PolicyBundle::dataset_lifecycle`]).
pub(crate) fn add_dataset_entities(
    bundle: &PolicyBundle,
    entities: Entities,
    datasets: &[DatasetEntity],
) -> Result<Entities, EntityError> {
    let dataset_type = parse_type("Dataset")?;
    let mut out = Vec::with_capacity(datasets.len());
    for d in datasets {
        let mut attrs = HashMap::from([
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
        if bundle.dataset_lifecycle {
            attrs.insert("lifecycle".to_string(), string(&d.lifecycle));
        }
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

impl DatasetAuthz {
    /// `None` when the schema has no `read_data` action (a schema written
    /// before the dataset registry): a snapshot whose routes are tagged
    /// with datasets is then refused.
    pub(crate) fn new(
        bundle: &PolicyBundle,
        entities: &Entities,
    ) -> Result<Option<Self>, EntityError> {
        let Some(action) = crate::resource::find_action(bundle, READ_DATA) else {
            return Ok(None);
        };
        let candidates = ActionPolicies::for_action(&bundle.policies, entities, &action);
        let mut authz = DatasetAuthz {
            action,
            decider: ResourceDecider::new("Dataset")?,
            candidates,
            memo: crate::memo::DecisionMemo::new(),
            purpose: true,
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
                purpose: "",
                method: HttpAction::Get,
                path: "/",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller: &caller,
            };
            // A schema written before `context.purpose` gets requests
            // without it (decided on the first sample).
            if authz.purpose && authz.request(&sample, Some(&bundle.schema)).is_err() {
                authz.purpose = false;
            }
            authz
                .request(&sample, Some(&bundle.schema))
                .map_err(|e| crate::decide::schema_refuses_shape(READ_DATA, e))?;
        }
        Ok(Some(authz))
    }

    fn ask<'r, 'a>(&self, r: &'r DatasetRequest<'a>) -> Ask<'r, 'a> {
        Ask {
            r,
            purpose: self.purpose,
        }
    }

    fn request(
        &self,
        r: &DatasetRequest<'_>,
        schema: Option<&cedar_policy::Schema>,
    ) -> Result<cedar_policy::Request, String> {
        self.decider
            .request(&self.action, None, &self.ask(r), schema)
    }

    /// The Cedar request `r` is decided as, for `policy explain`.
    pub(crate) fn explain_request(
        &self,
        r: &DatasetRequest<'_>,
    ) -> Result<cedar_policy::Request, String> {
        self.request(r, None)
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
        self.memo.get_or_decide(key, || {
            self.decider
                .decide(cedar, entities, &self.action, None, &self.ask(r), |req| {
                    self.candidates.for_request(entities, req)
                })
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
        self.decider.decide(
            cedar,
            entities,
            &self.action,
            Some(user),
            &self.ask(r),
            |_| self.candidates.all(),
        )
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
        let dataset =
            |name: &str, classification, purposes: &[&str], lifecycle: &str| DatasetEntity {
                name: name.into(),
                owner: "risk-team".into(),
                classification,
                source: "claims-db export".into(),
                licence: "internal".into(),
                collected: "2026-01-31".into(),
                consent_basis: "contract".into(),
                retention_days: 90,
                purposes: purposes.iter().map(|p| p.to_string()).collect(),
                lifecycle: lifecycle.into(),
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
            dataset(
                "claims",
                Classification::Confidential,
                &["fraud-detection"],
                "approved",
            ),
            dataset(
                "catalogue",
                Classification::Internal,
                &["support", "fraud-detection"],
                "draft",
            ),
            dataset(
                "leads",
                Classification::Internal,
                &["marketing"],
                "approved",
            ),
            dataset(
                "withdrawn",
                Classification::Public,
                &["fraud-detection"],
                "revoked",
            ),
        ])
        .unwrap()
    }

    /// `agent dataset` for purpose `fraud-detection` → "allow [ids]" or
    /// "deny [ids]".
    fn check(authz: &Authorizer, agent: &str, dataset: &str, expect: &str) {
        check_for(authz, agent, dataset, "fraud-detection", expect)
    }

    /// [`check`] for `purpose`.
    fn check_for(authz: &Authorizer, agent: &str, dataset: &str, purpose: &str, expect: &str) {
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let d = authz.decide_dataset(&DatasetRequest {
            agent,
            dataset,
            route: "claims",
            action: "GET",
            target: "",
            purpose,
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
        check(&authz, "bob", "leads", r#"deny ["default-deny"]"#);
        // An unregistered dataset is no entity: nothing matches it.
        check(&authz, "alice", "other", r#"deny ["default-deny"]"#);
    }

    /// The shipped `datasets-read-low` reads a low dataset only for a
    /// purpose it allows; nobody reads a revoked dataset, whatever permits
    /// it (`builtin:dataset-gate`); a draft is read like an approved one.
    #[test]
    fn purpose_and_lifecycle_decide_with_the_shipped_policies() {
        let authz = authorizer(&format!(
            "{DEFAULT_POLICIES}\n{}",
            r#"@id("everything") permit(principal, action == Action::"read_data", resource);"#
        ));
        let low = authorizer(DEFAULT_POLICIES);
        for (dataset, purpose, expect) in [
            ("catalogue", "support", r#"allow ["datasets-read-low"]"#),
            (
                "catalogue",
                "fraud-detection",
                r#"allow ["datasets-read-low"]"#,
            ),
            ("leads", "marketing", r#"allow ["datasets-read-low"]"#),
            ("leads", "support", r#"deny ["default-deny"]"#),
            ("leads", "", r#"deny ["default-deny"]"#),
            (
                "withdrawn",
                "fraud-detection",
                r#"deny ["builtin:dataset-gate"]"#,
            ),
        ] {
            check_for(&low, "bob", dataset, purpose, expect);
        }
        check_for(
            &authz,
            "bob",
            "withdrawn",
            "fraud-detection",
            r#"deny ["builtin:dataset-gate"]"#,
        );
        check_for(&authz, "bob", "leads", "", r#"allow ["everything"]"#);
    }

    /// `policy explain` shows why: the purpose condition that failed, and
    /// the gate.
    #[test]
    fn read_data_is_explained() {
        let authz = authorizer(DEFAULT_POLICIES);
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let caller = CallerFacts::mtls();
        let explain = |dataset, purpose| {
            let e = authz.explain_dataset(&DatasetRequest {
                agent: "bob",
                dataset,
                route: "claims",
                action: "GET",
                target: "",
                purpose,
                method: HttpAction::Get,
                path: "/claims/1",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller: &caller,
            });
            let mut lines = vec![if e.decision.allowed { "allow" } else { "deny" }.to_string()];
            for p in e.policies {
                match p.outcome {
                    crate::TraceOutcome::OutOfScope => {}
                    crate::TraceOutcome::Satisfied => lines.push(format!("{} satisfied", p.id)),
                    crate::TraceOutcome::NotSatisfied(f) => {
                        lines.push(format!("{} not satisfied: {}", p.id, f.join(" | ")))
                    }
                    crate::TraceOutcome::Error(e) => lines.push(format!("{} error: {e}", p.id)),
                }
            }
            lines.join("\n")
        };
        assert_eq!(
            explain("leads", "support"),
            "deny\ndatasets-read-low not satisfied: when { resource.purposes.contains(context.purpose) }\n\
             builtin:dataset-gate not satisfied: when { resource.lifecycle == \"revoked\" }"
        );
        assert_eq!(
            explain("withdrawn", "fraud-detection"),
            "deny\ndatasets-read-low satisfied\nbuiltin:dataset-gate satisfied"
        );
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
            purpose: "",
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
