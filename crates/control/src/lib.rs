//! The Portcullis control services: what the admin API drives and the data
//! plane consults, kept out of the data-plane crate so the admin API does not
//! depend on it.
//!
//! - [`approvals`]: the approval desk (tickets bound to the exact call, the
//!   webhook of new tickets).
//! - [`audit_sink`]: the audit log's group-commit writer (with
//!   [`audit_spool`], what it spills on a bounded shutdown); [`checkpointer`]
//!   signs its tree heads; [`audit_export`] ships durable records to SIEMs.
//! - [`analytics`]: the glue to the behavioral-analytics engine and the risk
//!   board the request path reads.
//! - [`tokens`]: the access-token issuer and its replay caches, with
//!   [`revocation`] (revoked tokens, disabled users) and [`oidc`] (the
//!   issuers of users' tokens, for token exchange) with [`oidc_login`] (humans
//!   logging in at those issuers: the console and the MCP authorization
//!   page); the data plane serves the token endpoint and verifies tokens with them.
//! - [`metrics`]: the Prometheus registry both listeners count into, with
//!   [`readiness`], the reasons `/readyz` answers not ready.
//! - [`attempts`]: the brute-force throttle of TOTP codes and assertions.
//! - [`policy_versions`]: the versions' vocabulary, the version to start
//!   with and the directory watcher; [`policy_facts`] and [`shadow`]:
//!   hand-written request facts and the shadow candidate's disagreements.
//! - [`plane`]: what the admin API asks of the running data plane, as a trait
//!   the gateway implements.
#![forbid(unsafe_code)]

pub mod analytics;
pub mod approvals;
pub mod attempts;
pub mod audit_export;
pub mod audit_intent;
pub mod audit_sink;
pub mod audit_spool;
pub mod bearer_seal;
pub mod checkpointer;
pub mod config;
pub mod json;
pub mod local_users;
pub mod metrics;
pub mod model_signing;
pub mod oidc;
pub mod oidc_login;
pub mod otlp;
pub mod plane;
pub mod policy_facts;
pub mod policy_versions;
pub mod pseudonym;
pub mod readiness;
pub mod revocation;
pub mod shadow;
pub mod tokens;

#[cfg(test)]
mod tests {
    /// The split this crate exists for: neither it nor the admin API may
    /// depend on the data plane (ARCHITECTURE.md, "Code map").
    #[test]
    fn control_and_admin_do_not_depend_on_the_gateway() {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for manifest in [here.join("Cargo.toml"), here.join("../admin/Cargo.toml")] {
            let text = std::fs::read_to_string(&manifest).unwrap();
            let parsed: toml::Table = toml::from_str(&text).unwrap();
            let mut names = Vec::new();
            for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
                if let Some(deps) = parsed.get(section).and_then(|d| d.as_table()) {
                    names.extend(deps.keys().cloned());
                }
            }
            assert!(
                names.iter().any(|n| n == "portcullis-core"),
                "{}: dependencies not read",
                manifest.display()
            );
            assert!(
                !names.iter().any(|n| n == "portcullis-gateway"),
                "{} depends on portcullis-gateway",
                manifest.display()
            );
        }
    }
}
