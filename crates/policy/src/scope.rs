//! Which policies can apply to a request by scope alone: the `Scope` of a
//! principal or resource constraint, whether a policy reads `context`, and
//! the snapshot's scope index (`ScopeIndex`) with its memo of context-free
//! decisions. The per-request resources (MCP targets, models, secrets) use
//! the same scopes in `candidates.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};

use crate::facts::HttpAction;

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
pub(crate) struct ScopeIndex {
    policies: Vec<Policy>,
    agents: HashMap<String, (u64, Vec<u64>)>,
    actions: [Vec<u64>; 6],
    routes: HashMap<String, (u64, Vec<u64>)>,
    /// Policies whose conditions never read `context`.
    context_free: Vec<u64>,
    /// Decisions of context-free candidate sets, by (agent, action, route).
    pub(crate) memo: crate::memo::DecisionMemo<u64>,
    /// The candidate sets Cedar evaluates, by (agent, action, route): built
    /// once per snapshot instead of once per request that reads `context`.
    sets: crate::memo::DecisionMemo<u64, Arc<PolicySet>>,
}

/// Most candidate sets a snapshot keeps (each holds a few policies, which
/// are shared, not copied); past it a set is built per request as before.
const SET_CAPACITY: usize = 4096;

/// The candidate policies of one request, as a bitset over `ScopeIndex::policies`.
pub(crate) struct Matching {
    pub(crate) bits: Vec<u64>,
    /// The request's (agent, action, route) within the snapshot.
    key: u64,
    /// Set when every candidate is context-free, so the decision can be memoized.
    pub(crate) memo_key: Option<u64>,
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
    pub(crate) fn new(
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
            sets: crate::memo::DecisionMemo::with_capacity(SET_CAPACITY),
        }
    }

    /// The policies whose scope matches, or `None` for an unknown agent or route.
    pub(crate) fn matching(
        &self,
        agent: &str,
        action: HttpAction,
        route: &str,
    ) -> Option<Matching> {
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
        let key = (agent_index << 32) | (route_index << 8) | action.index() as u64;
        Some(Matching {
            bits,
            key,
            memo_key: context_free.then_some(key),
        })
    }

    /// The candidate policies of `matching`, as a set Cedar can evaluate.
    /// The bits depend only on the key, so the set is kept by it.
    pub(crate) fn policy_set(&self, matching: &Matching) -> Arc<PolicySet> {
        self.sets.get_or_decide(Some(matching.key), || {
            Arc::new(self.build_set(&matching.bits))
        })
    }

    /// The policies of a bitset, as a set Cedar can evaluate.
    fn build_set(&self, bits: &[u64]) -> PolicySet {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorizer::fixtures::{MTLS_CALLER, authorizer};
    use crate::facts::{AuthzRequest, Content, RequestTime, SourceIp};

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
}
