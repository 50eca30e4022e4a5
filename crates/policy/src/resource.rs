//! The one way a decision on a resource made per request is asked: a
//! secret (`use_secret`), a model (`complete`, `embed`), a dataset
//! (`read_data`) or an egress host (`egress`, `egress_private`). Each kind
//! says who asks, what it asks about and in which context
//! ([`ResourceAsk`]); this builds the Cedar request the same way for all of
//! them — as the agent, or as the user it acts for — and turns Cedar's
//! answer into a [`Decision`], failing closed when the request cannot be
//! built. The kinds keep only what differs: their resource, their context
//! fields, their candidate policies and memo.

use std::borrow::Cow;

use cedar_policy::{
    Context, Entities, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression, Schema,
};
use portcullis_core::Decision;

use crate::PolicyBundle;
use crate::entities::EntityError;

/// Context attributes, `(name, value)`.
pub(crate) type Pairs = Vec<(String, RestrictedExpression)>;

/// What one kind of request tells the decider.
pub(crate) trait ResourceAsk {
    /// The authenticated agent.
    fn agent(&self) -> &str;
    /// The resource's entity id (`Dataset::"<id>"`, `Host::"<id>"`, …).
    fn resource_id(&self) -> Cow<'_, str>;
    /// The request's context attributes.
    fn context(&self) -> Result<Pairs, String>;
}

/// Builds and decides the requests of one resource type.
pub(crate) struct ResourceDecider {
    agent_type: EntityTypeName,
    resource_type: EntityTypeName,
}

/// The schema's `Action::"<id>"`, if it declares it.
pub(crate) fn find_action(bundle: &PolicyBundle, id: &str) -> Option<EntityUid> {
    bundle
        .schema
        .actions()
        .find(|a| a.type_name().to_string() == "Action" && a.id().unescaped() == id)
        .cloned()
}

/// `t` as an entity type name.
pub(crate) fn parse_type(t: &str) -> Result<EntityTypeName, EntityError> {
    t.parse::<EntityTypeName>()
        .map_err(|e| EntityError::new(e.to_string()))
}

impl ResourceDecider {
    /// A decider for resources of type `resource_type`, asked by `Agent`s.
    pub(crate) fn new(resource_type: &str) -> Result<Self, EntityError> {
        Ok(ResourceDecider {
            agent_type: parse_type("Agent")?,
            resource_type: parse_type(resource_type)?,
        })
    }

    /// `Agent::"<name>"`.
    pub(crate) fn agent(&self, name: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.agent_type.clone(), EntityId::new(name))
    }

    /// The Cedar request of `ask` for `action`, asked by `principal` (the
    /// agent when `None`), checked against `schema` when given.
    pub(crate) fn request(
        &self,
        action: &EntityUid,
        principal: Option<EntityUid>,
        ask: &impl ResourceAsk,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        let principal = principal.unwrap_or_else(|| self.agent(ask.agent()));
        let resource = EntityUid::from_type_name_and_id(
            self.resource_type.clone(),
            EntityId::new(ask.resource_id().as_ref()),
        );
        let context = Context::from_pairs(ask.context()?).map_err(|e| e.to_string())?;
        Request::new(principal, action.clone(), resource, context, schema)
            .map_err(|e| e.to_string())
    }

    /// Decides `ask` with the policies `policies` picks for its request
    /// (a scope slice, or all of the action's); a request that cannot be
    /// built is denied with the reason (fail closed).
    pub(crate) fn decide(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        action: &EntityUid,
        principal: Option<EntityUid>,
        ask: &impl ResourceAsk,
        policies: impl FnOnce(&Request) -> PolicySet,
    ) -> Decision {
        match self.request(action, principal, ask, None) {
            Err(e) => crate::decide::denied_with_error(e),
            Ok(request) => {
                let set = policies(&request);
                crate::decide::to_decision(&cedar.is_authorized(&request, &set, entities))
            }
        }
    }
}
