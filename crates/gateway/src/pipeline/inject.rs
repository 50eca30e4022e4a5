//! Inject: for a route with a credential, the second policy question — which
//! of the route's secrets may this agent use (`Action::"use_secret"` on
//! `Secret::"<name>"`, asked in the route's order, first allow wins) — and
//! then that secret's current value from the vault. Agents sharing a route can
//! so be given different upstream credentials, or none.
//!
//! It runs after authorize (the route itself must be allowed first, so a
//! caller denied the route learns nothing about its secrets) and before
//! forward, which places the value. The value comes from memory only (the
//! vault's cache or its in-memory sealed copy): no disk, no lock across IO.

use std::sync::Arc;

use portcullis_core::ErrorCode;
use portcullis_policy::{Authorizer, Content, SecretRequest, SourceIp};
use portcullis_vault::{Plain, Vault};

use crate::config::{Credential, Injection};
use crate::pipeline::authenticate::Identity;
use crate::pipeline::contextualize::RequestContext;
use crate::respond::Denial;

/// A credential ready for the upstream request.
pub struct Injected {
    /// The secret chosen.
    pub secret: String,
    /// Where it goes.
    pub injection: Injection,
    /// The decrypted value (zeroized when the last reference drops).
    pub value: Arc<Plain>,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Injected({} v{})", self.secret, self.value.version)
    }
}

/// The outcome of the `use_secret` questions.
#[derive(Debug)]
pub struct Choice<'a> {
    /// The first secret the agent may use, if any.
    pub secret: Option<&'a str>,
    /// The deciding policies: of the allow, or of every denial.
    pub policy_ids: Vec<String>,
}

/// Asks `use_secret` for each of the route's secrets in order.
pub fn authorize<'a>(
    authorizer: &Authorizer,
    identity: &Identity,
    context: &RequestContext,
    source_ip: &SourceIp,
    content: Content<'_>,
    credential: &'a Credential,
) -> Choice<'a> {
    let mut denied = Vec::new();
    for secret in &credential.secrets {
        let decision = authorizer.decide_secret(&SecretRequest {
            agent: &identity.agent,
            secret,
            route: &context.route.name,
            method: context.action,
            path: &context.path,
            source_ip,
            time: context.time,
            content,
            caller: &identity.caller,
        });
        if !decision.errors.is_empty() {
            tracing::warn!(errors = ?decision.errors, agent = %identity.agent, secret = %secret, "policy evaluation errors (use_secret)");
        }
        if decision.allowed {
            return Choice {
                secret: Some(secret),
                policy_ids: decision.policy_ids,
            };
        }
        for id in decision.policy_ids {
            if !denied.contains(&id) {
                denied.push(id);
            }
        }
    }
    Choice {
        secret: None,
        policy_ids: denied,
    }
}

/// Ends the request unless one secret may be used; returns it.
pub fn enforce<'a>(choice: &Choice<'a>, credential: &Credential) -> Result<&'a str, Denial> {
    choice.secret.ok_or_else(|| Denial {
        code: ErrorCode::Forbidden,
        message: format!(
            "denied by policy: use of secret `{}` is not permitted",
            credential.secrets.join("`, `")
        ),
        policies: choice.policy_ids.clone(),
        detail: None,
    })
}

/// Fetches the value. A missing vault or secret cannot happen after start-up
/// checks; a corrupted ciphertext can, and fails this request only.
pub fn fetch(
    vault: Option<&Vault>,
    context: &RequestContext,
    secret: &str,
    injection: &Injection,
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
    let value = vault.credential(secret).map_err(|e| {
        tracing::error!(route = %context.route.name, secret = %secret, error = %e, "credential unavailable");
        unavailable()
    })?;
    Ok(Injected {
        secret: secret.to_string(),
        injection: injection.clone(),
        value,
    })
}
