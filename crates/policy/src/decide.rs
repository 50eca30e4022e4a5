//! What every kind of decision shares: Cedar's answer as a `Decision`, the
//! fail-closed denial that carries its reason, and the hint given when a
//! schema no longer fits the requests the gateway makes.

use cedar_policy::Decision as CedarDecision;
use portcullis_core::Decision;

/// What to do when a schema no longer fits the requests: usually a policy
/// directory seeded by an older version, whose context types lack a newer field.
pub(crate) const SCHEMA_HINT: &str = "If this schema was written by an older version of Portcullis (for example the one seeded into `<state-dir>/policies`), update it from the shipped schema, `crates/policy/defaults/schema.cedarschema`, which `portcullis policy schema` prints";

/// The error of a snapshot whose schema does not accept a request shape the
/// gateway makes for `action`: one message (with the update hint) for every
/// kind of decision, so an operator sees the same words whichever it was.
pub(crate) fn schema_refuses_shape(action: &str, e: impl std::fmt::Display) -> crate::EntityError {
    crate::EntityError::new(format!(
        "the schema does not accept the requests the gateway makes for action `{action}`: {e}. {SCHEMA_HINT}"
    ))
}

/// Cedar's answer as a `Decision`: the deciding policies sorted, and a denial
/// nothing decided named `default-deny`. Every kind of decision uses this.
pub(crate) fn to_decision(response: &cedar_policy::Response) -> Decision {
    let diagnostics = response.diagnostics();
    let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
    let mut policy_ids: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
    policy_ids.sort();
    let allowed = response.decision() == CedarDecision::Allow;
    if !allowed && policy_ids.is_empty() {
        return Decision {
            errors,
            ..Decision::default_deny()
        };
    }
    Decision {
        allowed,
        policy_ids,
        errors,
    }
}

/// A denial (fail closed) with `error` in [`Decision::errors`].
pub(crate) fn denied_with_error(error: String) -> Decision {
    Decision {
        errors: vec![error],
        ..Decision::default_deny()
    }
}
