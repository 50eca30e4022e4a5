//! The Portcullis control services: what the admin API drives and the data
//! plane consults, kept out of the data-plane crate so the admin API does not
//! depend on it.
//!
//! - [`approvals`]: the approval desk (tickets bound to the exact call, the
//!   webhook of new tickets).
//! - [`audit_sink`]: the audit log's group-commit writer; [`checkpointer`]
//!   signs its tree heads; [`audit_export`] ships durable records to SIEMs.
//! - [`analytics`]: the glue to the behavioral-analytics engine and the risk
//!   board the request path reads.
//! - [`tokens`]: the access-token issuer and its replay caches, with
//!   [`revocation`] (revoked tokens, disabled users) and [`oidc`] (the
//!   issuers of users' tokens, for token exchange); the data plane serves
//!   the token endpoint and verifies tokens with them.
//! - [`metrics`]: the Prometheus registry both listeners count into.
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
pub mod audit_sink;
pub mod checkpointer;
pub mod config;
pub mod json;
pub mod metrics;
pub mod oidc;
pub mod otlp;
pub mod plane;
pub mod policy_facts;
pub mod policy_versions;
pub mod pseudonym;
pub mod revocation;
pub mod shadow;
pub mod tokens;
