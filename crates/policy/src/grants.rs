//! Time-boxed grants as Cedar template-linked policies.
//!
//! One template per HTTP action,
//! `permit(principal == ?principal, action == Action::"<M>", resource == ?resource)`,
//! and one link per grant, `grant:<id>`, filling the agent and the route. The
//! full set (what Cedar would evaluate without the index) holds the templates
//! and links. The scope index slices static policies only, so it holds each
//! link's static twin — the same scope, the same id — which Cedar decides
//! identically; a test checks sliced and full decisions agree with grants.

use std::collections::HashMap;

use cedar_policy::{
    EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, SlotId, Template,
};

use crate::entities::EntityError;
use crate::facts::HttpAction;

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
    /// One action on one route (`grant:<id>`), from an approval with a TTL.
    Call {
        /// The action.
        action: HttpAction,
        /// The route.
        route: String,
    },
    /// Every action on every route (`breakglass:<id>`). Forbids still apply.
    BreakGlass,
}

impl GrantEntity {
    /// The policy id of the grant.
    pub fn policy_id(&self) -> String {
        match self.scope {
            GrantScope::Call { .. } => format!("{GRANT_PREFIX}{}", self.id),
            GrantScope::BreakGlass => format!("{BREAKGLASS_PREFIX}{}", self.id),
        }
    }
}

fn template_id(action: Option<HttpAction>) -> PolicyId {
    match action {
        Some(action) => PolicyId::new(format!("portcullis-grant-template-{}", action.as_str())),
        None => PolicyId::new("portcullis-breakglass-template"),
    }
}

/// Returns (full set, set for the index, expiry by grant policy id).
pub(crate) fn link(
    bundle: &PolicySet,
    grants: &[GrantEntity],
    actions: &[EntityUid; 6],
    agent_type: &EntityTypeName,
    route_type: &EntityTypeName,
) -> Result<(PolicySet, PolicySet, HashMap<String, i64>), EntityError> {
    let err = |e: &dyn std::fmt::Display| EntityError::new(format!("cannot link grant: {e}"));
    let mut full = bundle.clone();
    let mut indexed = bundle.clone();
    let mut expiry = HashMap::new();
    if grants.is_empty() {
        return Ok((full, indexed, expiry));
    }
    for action in HttpAction::ALL {
        let text = format!(
            "permit(principal == ?principal, action == {}, resource == ?resource);",
            actions[action.index()]
        );
        let template =
            Template::parse(Some(template_id(Some(action))), &text).map_err(|e| err(&e))?;
        full.add_template(template).map_err(|e| err(&e))?;
    }
    let breakglass = format!("permit(principal == ?principal, action, resource is {route_type});");
    let template = Template::parse(Some(template_id(None)), &breakglass).map_err(|e| err(&e))?;
    full.add_template(template).map_err(|e| err(&e))?;
    for grant in grants {
        let id = grant.policy_id();
        let agent =
            EntityUid::from_type_name_and_id(agent_type.clone(), EntityId::new(&grant.agent));
        let (template, twin, slots) = match &grant.scope {
            GrantScope::Call { action, route } => {
                let route =
                    EntityUid::from_type_name_and_id(route_type.clone(), EntityId::new(route));
                (
                    template_id(Some(*action)),
                    format!(
                        "permit(principal == {agent}, action == {}, resource == {route});",
                        actions[action.index()]
                    ),
                    HashMap::from([(SlotId::principal(), agent), (SlotId::resource(), route)]),
                )
            }
            GrantScope::BreakGlass => (
                template_id(None),
                format!("permit(principal == {agent}, action, resource is {route_type});"),
                HashMap::from([(SlotId::principal(), agent)]),
            ),
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
