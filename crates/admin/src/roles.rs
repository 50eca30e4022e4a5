//! Admin roles and the permissions they grant. A route asks for exactly one
//! [`Permission`] (`route_permissions.rs`); a credential holds exactly one
//! [`Role`]. The grant matrix is [`Role::grants`], one `match`, so what a
//! role may do is read in one place.

use std::fmt;
use std::str::FromStr;

/// What an admin credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, including managing admin credentials and the vault's keys.
    Owner,
    /// Day-to-day operations: agents, tokens, users, MCP tools, secrets,
    /// transit, alerts.
    Operator,
    /// Pushes and rolls back policies.
    PolicyAuthor,
    /// Decides approvals and grants, opens break-glass.
    Approver,
    /// Reads everything (captured payloads included), changes nothing but
    /// signing a checkpoint.
    Auditor,
}

/// Every role, in the order the docs list them.
pub const ROLES: [Role; 5] = [
    Role::Owner,
    Role::Operator,
    Role::PolicyAuthor,
    Role::Approver,
    Role::Auditor,
];

impl Role {
    /// The role's name in the API, the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Operator => "operator",
            Role::PolicyAuthor => "policy-author",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
        }
    }

    /// Whether this role holds `permission`.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Owner => true,
            Role::Operator => matches!(
                permission,
                Read | Session
                    | ManageAgents
                    | ManageTools
                    | ManageGovernance
                    | ManageSecrets
                    | UseTransit
                    | ResolveAlerts
                    | SignCheckpoint
            ),
            Role::PolicyAuthor => matches!(permission, Read | Session | AuthorPolicy),
            Role::Approver => matches!(permission, Read | Session | Decide),
            Role::Auditor => matches!(permission, Read | Session | ReadCaptures | SignCheckpoint),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name.
#[derive(Debug, thiserror::Error)]
#[error("unknown admin role `{0}`: use owner, operator, policy-author, approver or auditor")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ROLES
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// What one admin route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read state that holds no secret values: lists, views, the audit log,
    /// policy analysis (`explain`, `whatif`).
    Read,
    /// The caller's own session: who am I, open a step-up window.
    Session,
    /// Read captured payloads (decrypted request and response bodies).
    ReadCaptures,
    /// Create, renew, pin, revoke and release agents; revoke access tokens;
    /// disable and enable federated users.
    ManageAgents,
    /// Approve MCP tool definitions.
    ManageTools,
    /// Register models and datasets; approve, deprecate and revoke them.
    ManageGovernance,
    /// Write, rotate and delete vault secrets; create and rotate transit keys.
    ManageSecrets,
    /// Rekey the vault and export transit keys.
    ManageVault,
    /// Encrypt, decrypt and rewrap with transit keys.
    UseTransit,
    /// Push, roll back and stop shadowing policies.
    AuthorPolicy,
    /// Approve and deny held calls, revoke grants, open break-glass.
    Decide,
    /// Resolve behavioral-analytics alerts.
    ResolveAlerts,
    /// Sign an audit checkpoint now.
    SignCheckpoint,
    /// Create, rotate and revoke admin credentials; enrol and remove human
    /// admins.
    ManageAdmins,
}

impl Permission {
    /// The permission's name in errors and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Session => "session",
            Permission::ReadCaptures => "read_captures",
            Permission::ManageAgents => "manage_agents",
            Permission::ManageTools => "manage_tools",
            Permission::ManageGovernance => "manage_governance",
            Permission::ManageSecrets => "manage_secrets",
            Permission::ManageVault => "manage_vault",
            Permission::UseTransit => "use_transit",
            Permission::AuthorPolicy => "author_policy",
            Permission::Decide => "decide",
            Permission::ResolveAlerts => "resolve_alerts",
            Permission::SignCheckpoint => "sign_checkpoint",
            Permission::ManageAdmins => "manage_admins",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_grant_as_documented() {
        for role in ROLES {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
            assert!(role.grants(Permission::Read) && role.grants(Permission::Session));
        }
        assert!("root".parse::<Role>().is_err());
        // Read-only means read-only: the auditor acts on nothing.
        for p in [
            Permission::ManageAgents,
            Permission::Decide,
            Permission::AuthorPolicy,
            Permission::ManageAdmins,
            Permission::UseTransit,
        ] {
            assert!(!Role::Auditor.grants(p), "{p:?}");
        }
        assert!(Role::Approver.grants(Permission::Decide));
        assert!(!Role::Approver.grants(Permission::ManageAgents));
        assert!(!Role::Operator.grants(Permission::ManageAdmins));
        assert!(!Role::Operator.grants(Permission::Decide));
        assert!(Role::PolicyAuthor.grants(Permission::AuthorPolicy));
        assert!(!Role::PolicyAuthor.grants(Permission::ManageAgents));
        // Only the owner manages admins and the vault's keys.
        for role in ROLES {
            assert_eq!(
                role.grants(Permission::ManageAdmins),
                role == Role::Owner,
                "{role}"
            );
            assert_eq!(
                role.grants(Permission::ManageVault),
                role == Role::Owner,
                "{role}"
            );
        }
    }
}
