//! Inject: for a route with a credential, the second policy question —
//! may this agent use this secret (`Action::"use_secret"` on
//! `Secret::"<name>"`) — and then the secret's current value from the vault.
//!
//! It runs after authorize (the route itself must be allowed first, so a
//! caller denied the route learns nothing about its secret) and before
//! forward, which places the value. The value comes from memory only (the
//! vault's cache or its in-memory sealed copy): no disk, no lock across IO.

use std::sync::Arc;

use portcullis_core::{Decision, ErrorCode};
use portcullis_policy::{Authorizer, SecretRequest, SourceIp};
use portcullis_vault::{Plain, Vault};

use crate::config::Credential;
use crate::pipeline::authenticate::Identity;
use crate::pipeline::contextualize::RequestContext;
use crate::respond::Denial;

/// A credential ready for the upstream request.
pub struct Injected {
    /// Where it goes.
    pub credential: Credential,
    /// The decrypted value (zeroized when the last reference drops).
    pub value: Arc<Plain>,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Injected({} v{})",
            self.credential.secret, self.value.version
        )
    }
}

/// The `use_secret` decision.
pub fn authorize(
    authorizer: &Authorizer,
    identity: &Identity,
    context: &RequestContext,
    source_ip: &SourceIp,
    credential: &Credential,
) -> Decision {
    let decision = authorizer.decide_secret(&SecretRequest {
        agent: &identity.agent,
        secret: &credential.secret,
        route: &context.route.name,
        method: context.action,
        path: &context.path,
        source_ip,
        time: context.time,
    });
    if !decision.errors.is_empty() {
        tracing::warn!(errors = ?decision.errors, agent = %identity.agent, secret = %credential.secret, "policy evaluation errors (use_secret)");
    }
    decision
}

/// Ends the request unless `use_secret` is allowed.
pub fn enforce(decision: &Decision, credential: &Credential) -> Result<(), Denial> {
    if decision.allowed {
        return Ok(());
    }
    Err(Denial {
        code: ErrorCode::Forbidden,
        message: format!(
            "denied by policy: use of secret `{}` is not permitted",
            credential.secret
        ),
        policies: decision.policy_ids.clone(),
    })
}

/// Fetches the value. A missing vault or secret cannot happen after start-up
/// checks; a corrupted ciphertext can, and fails this request only.
pub fn fetch(
    vault: Option<&Vault>,
    context: &RequestContext,
    credential: &Credential,
) -> Result<Injected, Denial> {
    let unavailable = || {
        Denial::new(
            ErrorCode::SecretUnavailable,
            format!(
                "the upstream credential of route `{}` cannot be used; see the server log",
                context.route.name
            ),
        )
    };
    let vault = vault.ok_or_else(unavailable)?;
    let value = vault.credential(&credential.secret).map_err(|e| {
        tracing::error!(route = %context.route.name, secret = %credential.secret, error = %e, "credential unavailable");
        unavailable()
    })?;
    Ok(Injected {
        credential: credential.clone(),
        value,
    })
}
