//! The snapshot's Cedar entities, built from the plain data callers hand in:
//! agents (`Agent::"<name>"` in each `Role::"<role>"`), their roles, routes
//! (`Route::"<name>"` with classification, owner and tags), joined with the
//! schema's action entities and checked against the schema; and the users
//! agents act for (`User::"<user>"`), made per delegated request.

use std::collections::{HashMap, HashSet};

use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use portcullis_core::Classification;

use crate::PolicyBundle;

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

/// The entities could not be assembled (an attribute or membership conflicts with the schema).
#[derive(Debug, thiserror::Error)]
#[error("cannot build policy entities: {0}")]
pub struct EntityError(String);

impl EntityError {
    pub(crate) fn new(message: String) -> Self {
        EntityError(message)
    }
}

/// The entity types a snapshot is made of.
pub(crate) struct EntityTypes {
    pub(crate) agent: EntityTypeName,
    pub(crate) role: EntityTypeName,
    pub(crate) route: EntityTypeName,
    pub(crate) action: EntityTypeName,
}

impl EntityTypes {
    pub(crate) fn new() -> Result<Self, EntityError> {
        Ok(EntityTypes {
            agent: type_name("Agent")?,
            role: type_name("Role")?,
            route: type_name("Route")?,
            action: type_name("Action")?,
        })
    }
}

fn type_name(name: &str) -> Result<EntityTypeName, EntityError> {
    name.parse().map_err(|e| EntityError(format!("{e}")))
}

/// The entity `<type>::"<id>"`.
pub(crate) fn uid(t: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
}

/// The agents in their roles, the roles and the routes, added to the
/// schema's action entities and checked against the schema.
pub(crate) fn snapshot_entities(
    bundle: &PolicyBundle,
    types: &EntityTypes,
    agents: &[AgentEntity],
    routes: &[RouteEntity],
) -> Result<Entities, EntityError> {
    let mut entities = Vec::new();
    let mut roles = HashSet::new();
    for agent in agents {
        let parents: HashSet<EntityUid> = agent
            .roles
            .iter()
            .map(|r| {
                roles.insert(r.clone());
                uid(&types.role, r)
            })
            .collect();
        entities.push(Entity::new_no_attrs(
            uid(&types.agent, &agent.name),
            parents,
        ));
    }
    for role in roles {
        entities.push(Entity::new_no_attrs(
            uid(&types.role, &role),
            HashSet::new(),
        ));
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
        let entity = Entity::new(uid(&types.route, &route.name), attrs, HashSet::new())
            .map_err(|e| EntityError(e.to_string()))?;
        entities.push(entity);
    }

    bundle
        .schema
        .action_entities()
        .map_err(|e| EntityError(e.to_string()))?
        .add_entities(entities, Some(&bundle.schema))
        .map_err(|e| EntityError(e.to_string()))
}

/// `User::"<user>"` (someone an agent acts for), a member of
/// `Role::"<group>"` for each of their groups.
pub(crate) fn user_entity(
    user_type: &EntityTypeName,
    role_type: &EntityTypeName,
    user: &str,
    groups: &[String],
) -> Entity {
    let principal = EntityUid::from_type_name_and_id(user_type.clone(), EntityId::new(user));
    let parents: HashSet<EntityUid> = groups
        .iter()
        .map(|g| EntityUid::from_type_name_and_id(role_type.clone(), EntityId::new(g)))
        .collect();
    Entity::new_no_attrs(principal, parents)
}
