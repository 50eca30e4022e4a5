//! The policies that can apply to one request, by scope alone, for the actions
//! whose resources are made per request (MCP tools and prompts, models,
//! secrets) and so are outside the snapshot's scope index (`scope.rs`).
//!
//! The reasoning is the scope index's: a policy whose principal, action or
//! resource scope cannot match a request is never satisfied and never errors,
//! so leaving it out changes nothing but the cost. Without this, every MCP
//! tool call evaluated every `call_tool` policy of every team — with a
//! hundred policies that was most of the gateway's added latency. Scopes are
//! read once per snapshot; a request tests them (equality, or one ancestor
//! lookup in the snapshot's entities) and hands Cedar only the survivors.

use cedar_policy::{ActionConstraint, Entities, EntityUid, Policy, PolicySet, Request};

use crate::scope::{Scope, mentions_context};

/// One action's candidate policies, with their scopes read out.
pub(crate) struct ActionPolicies {
    policies: Vec<Candidate>,
    context_free: bool,
}

struct Candidate {
    policy: Policy,
    principal: Scope,
    resource: Scope,
}

impl ActionPolicies {
    /// The policies of `set` whose action scope matches `action`, by Cedar's
    /// `in` over `entities` (which holds the schema's action groups).
    pub(crate) fn for_action(set: &PolicySet, entities: &Entities, action: &EntityUid) -> Self {
        let is_in = |e: &EntityUid, g: &EntityUid| e == g || entities.is_ancestor_of(g, e);
        let mut context_free = true;
        let policies: Vec<Candidate> = set
            .policies()
            .filter(|p| match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(u) => u == *action,
                ActionConstraint::In(us) => us.iter().any(|u| is_in(action, u)),
            })
            .map(|p| {
                context_free &= !mentions_context(p);
                Candidate {
                    policy: p.clone(),
                    principal: p.principal_constraint().into(),
                    resource: p.resource_constraint().into(),
                }
            })
            .collect();
        ActionPolicies {
            policies,
            context_free,
        }
    }

    /// Whether no policy names the action (every request is denied).
    pub(crate) fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether none of the action's policies reads `context`.
    pub(crate) fn context_free(&self) -> bool {
        self.context_free
    }

    /// The policies whose principal and resource scopes match, as a set Cedar
    /// can evaluate; `in` is answered
    /// by `entities`: exactly the entities Cedar will evaluate the request
    /// with (for an MCP message, its slice, which holds the tool made for it).
    pub(crate) fn matching(
        &self,
        entities: &Entities,
        principal: &EntityUid,
        resource: &EntityUid,
    ) -> PolicySet {
        let is_in = |e: &EntityUid, g: &EntityUid| e == g || entities.is_ancestor_of(g, e);
        let principal_in = |g: &EntityUid| is_in(principal, g);
        let resource_in = |g: &EntityUid| is_in(resource, g);
        let mut set = PolicySet::new();
        for c in &self.policies {
            if scope_matches(&c.principal, principal, principal_in)
                && scope_matches(&c.resource, resource, resource_in)
            {
                // Ids are unique in the bundle, so adding cannot fail.
                let _ = set.add(c.policy.clone());
            }
        }
        set
    }

    /// The policies whose scopes match `request`'s principal and resource
    /// (all of them for a request whose principal or resource is not concrete).
    pub(crate) fn for_request(&self, entities: &Entities, request: &Request) -> PolicySet {
        match (request.principal(), request.resource()) {
            (Some(p), Some(r)) => self.matching(entities, p, r),
            _ => self.all(),
        }
    }

    /// The ids of the permits whose principal scope matches `principal` and
    /// whose resource scope can hold something of `route` (the route itself,
    /// or a tool, prompt, resource or model made in it at request time).
    /// Forbids and conditions are not read: an empty answer means no
    /// request of this principal on this route can be allowed, whatever it
    /// carries, so the gateway may refuse it before reading its body.
    pub(crate) fn permits_on_route(
        &self,
        entities: &Entities,
        principal: &EntityUid,
        route: &EntityUid,
        out: &mut Vec<String>,
    ) {
        let is_in = |e: &EntityUid, g: &EntityUid| e == g || entities.is_ancestor_of(g, e);
        let prefix = format!("{}/", route.id().unescaped());
        // A resource made at request time is `<route>/<name>`, a member of
        // its route; the route itself is one entity of the snapshot.
        let of_route = |u: &EntityUid| {
            u == route
                || is_in(route, u)
                || (u.type_name() != route.type_name() && u.id().unescaped().starts_with(&prefix))
        };
        for c in &self.policies {
            if c.policy.effect() != cedar_policy::Effect::Permit
                || !scope_matches(&c.principal, principal, |g| is_in(principal, g))
            {
                continue;
            }
            let resource = match &c.resource {
                Scope::Any | Scope::Is(_) => true,
                Scope::Eq(u) => of_route(u),
                Scope::In(u) | Scope::IsIn(_, u) => u == route || is_in(route, u),
            };
            if resource {
                out.push(c.policy.id().to_string());
            }
        }
    }

    /// Every policy of the action: for a request whose principal or resource
    /// is not concrete, and to check that slicing changes nothing.
    pub(crate) fn all(&self) -> PolicySet {
        let mut set = PolicySet::new();
        for c in &self.policies {
            let _ = set.add(c.policy.clone());
        }
        set
    }
}

/// Whether `entity` satisfies a scope constraint, `is_in` answering Cedar's `in`.
fn scope_matches(scope: &Scope, entity: &EntityUid, is_in: impl Fn(&EntityUid) -> bool) -> bool {
    match scope {
        Scope::Any => true,
        Scope::Eq(u) => entity == u,
        Scope::In(u) => is_in(u),
        Scope::Is(t) => entity.type_name() == t,
        Scope::IsIn(t, u) => entity.type_name() == t && is_in(u),
    }
}
