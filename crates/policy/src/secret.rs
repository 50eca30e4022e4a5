//! `Action::"use_secret"` on `Secret::"<name>"`: whether an agent may have a
//! vault secret injected into its upstream request. The gateway asks after the
//! route's own decision allowed the call, only for routes with a credential, so
//! two agents can share a route with different upstream credentials (or one of
//! them with none).
//!
//! Only policies whose action scope can match `use_secret` are evaluated
//! (usually a handful); when none of them reads `context`, a decision depends
//! only on (agent, secret) and is memoized for the snapshot, as for routes.

use std::borrow::Cow;

use cedar_policy::{Entities, EntityUid, Request};
use portcullis_core::Decision;

use crate::PolicyBundle;
use crate::caller::CallerFacts;
use crate::candidates::ActionPolicies;
use crate::entities::EntityError;
use crate::facts::{Content, HttpAction, RequestTime, SourceIp};
use crate::resource::{Pairs, ResourceAsk, ResourceDecider};

/// The action id.
pub const USE_SECRET: &str = "use_secret";

/// One `use_secret` request.
#[derive(Debug, Clone)]
pub struct SecretRequest<'a> {
    /// The authenticated agent.
    pub agent: &'a str,
    /// The vault secret the route injects.
    pub secret: &'a str,
    /// The route the request took.
    pub route: &'a str,
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

impl ResourceAsk for SecretRequest<'_> {
    fn agent(&self) -> &str {
        self.agent
    }

    fn resource_id(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.secret)
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

pub(crate) struct SecretAuthz {
    action: EntityUid,
    decider: ResourceDecider,
    candidates: ActionPolicies,
    memo: crate::memo::DecisionMemo<(String, String)>,
}

impl SecretAuthz {
    /// `None` when the schema has no `use_secret` action (a schema written
    /// before the vault): routes with credentials then fail at start.
    pub(crate) fn new(
        bundle: &PolicyBundle,
        entities: &Entities,
    ) -> Result<Option<Self>, EntityError> {
        let Some(action) = crate::resource::find_action(bundle, USE_SECRET) else {
            return Ok(None);
        };
        let candidates = ActionPolicies::for_action(&bundle.policies, entities, &action);
        let authz = SecretAuthz {
            action,
            decider: ResourceDecider::new("Secret")?,
            candidates,
            memo: crate::memo::DecisionMemo::new(),
        };
        // The request shape is fixed: prove once that the schema accepts it.
        let ip = SourceIp::new(std::net::IpAddr::from([127, 0, 0, 1]));
        for caller in CallerFacts::shape_samples() {
            let sample = SecretRequest {
                agent: "shape-check",
                secret: "shape-check",
                route: "shape-check",
                method: HttpAction::Get,
                path: "/",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller: &caller,
            };
            authz
                .decider
                .request(&authz.action, None, &sample, Some(&bundle.schema))
                .map_err(|e| crate::decide::schema_refuses_shape(USE_SECRET, e))?;
        }
        Ok(Some(authz))
    }

    /// The Cedar request `r` is decided as, for `policy explain`.
    pub(crate) fn explain_request(&self, r: &SecretRequest<'_>) -> Result<Request, String> {
        self.decider.request(&self.action, None, r, None)
    }

    pub(crate) fn decide(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &SecretRequest<'_>,
    ) -> Decision {
        let key = self
            .candidates
            .context_free()
            .then(|| (r.agent.to_string(), r.secret.to_string()));
        self.memo.get_or_decide(key, || {
            self.decider
                .decide(cedar, entities, &self.action, None, r, |req| {
                    self.candidates.for_request(entities, req)
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::Content;
    use std::path::PathBuf;
    use std::sync::Arc;

    use portcullis_core::Classification;

    use crate::{
        AgentEntity, Authorizer, DEFAULT_SCHEMA, HttpAction, PolicyBundle, PolicySources,
        RequestTime, RouteEntity, SecretRequest, SourceIp,
    };

    fn authorizer(schema: &str, policies: &str) -> Authorizer {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: schema.to_string(),
            files: vec![("t.cedar".to_string(), policies.to_string())],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let agent = |name: &str, role: &str| AgentEntity {
            name: name.into(),
            roles: vec![role.into()],
        };
        Authorizer::new(
            bundle,
            &[agent("alice", "team-a"), agent("bob", "team-b")],
            &[RouteEntity {
                name: "llm".into(),
                classification: Classification::Internal,
                owner: String::new(),
                tags: Vec::new(),
            }],
        )
        .unwrap()
    }

    /// `agent secret hour` → "allow [ids]" or "deny [ids]".
    fn check(authz: &Authorizer, agent: &str, secret: &str, hour: i64, expect: &str) {
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let d = authz.decide_secret(&SecretRequest {
            agent,
            secret,
            route: "llm",
            method: HttpAction::Post,
            path: "/llm/v1/chat",
            source_ip: &ip,
            time: RequestTime::from_epoch(hour * 3600),
            content: Content::NOT_SCANNED,
            caller: &crate::CallerFacts::mtls(),
        });
        let got = format!(
            "{} {:?}",
            if d.allowed { "allow" } else { "deny" },
            d.policy_ids
        );
        assert_eq!(got, expect);
    }

    #[test]
    fn two_agents_one_route_different_secrets() {
        let authz = authorizer(
            DEFAULT_SCHEMA,
            r#"
@id("a-key") permit(principal in Role::"team-a", action == Action::"use_secret", resource == Secret::"key-a");
@id("b-key") permit(principal in Role::"team-b", action == Action::"use_secret", resource == Secret::"key-b")
  when { context.route == "llm" && context.time.hour < 18 };
@id("read") permit(principal, action in Action::"read", resource);
"#,
        );
        assert!(authz.supports_secrets());
        check(&authz, "alice", "key-a", 9, r#"allow ["a-key"]"#);
        check(&authz, "alice", "key-b", 9, r#"deny ["default-deny"]"#);
        check(&authz, "bob", "key-b", 9, r#"allow ["b-key"]"#);
        check(&authz, "bob", "key-b", 20, r#"deny ["default-deny"]"#);
        check(&authz, "bob", "key-a", 9, r#"deny ["default-deny"]"#);
        // Memoized path (no candidate reads context) gives the same answers twice.
        let memo = authorizer(
            DEFAULT_SCHEMA,
            r#"@id("a") permit(principal == Agent::"alice", action == Action::"use_secret", resource);"#,
        );
        for _ in 0..2 {
            check(&memo, "alice", "anything", 1, r#"allow ["a"]"#);
            check(&memo, "bob", "anything", 1, r#"deny ["default-deny"]"#);
        }
    }

    #[test]
    fn schema_without_use_secret_denies_with_a_reason() {
        let old_schema = DEFAULT_SCHEMA
            .split("// A secret in the vault")
            .next()
            .unwrap();
        let authz = authorizer(
            old_schema,
            r#"permit(principal, action in Action::"read", resource);"#,
        );
        assert!(!authz.supports_secrets());
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let d = authz.decide_secret(&SecretRequest {
            agent: "alice",
            secret: "k",
            route: "llm",
            method: HttpAction::Get,
            path: "/",
            source_ip: &ip,
            time: RequestTime::from_epoch(0),
            content: Content::NOT_SCANNED,
            caller: &crate::CallerFacts::mtls(),
        });
        assert!(!d.allowed);
        assert!(d.errors[0].contains("use_secret"));
    }
}
