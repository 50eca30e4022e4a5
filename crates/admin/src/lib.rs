//! The admin API: the control plane's HTTP interface, on its own TLS listener
//! (never the data-plane one: segmentation).
//!
//! **API boundary.** The JSON shapes here are what the CLI and users script
//! against; fields are added, never renamed. Errors use the same JSON form and
//! codes as the data plane (`docs/errors.md`).
//!
//! Unauthenticated: `GET /healthz`, `GET /readyz`, `GET /metrics`.
//! The web console (`/console`, `console/`): a login session over the same
//! API. The OpenAPI description: `GET /admin/v1/openapi.json` (`openapi.rs`).
//! A named admin credential (a bearer token, or a client certificate the
//! Portcullis CA issued and presented over mTLS; `credentials.rs`) with a role
//! (`roles.rs`): everything under `/admin/v1/`, each route needing the one
//! permission `route_permissions.rs` maps it to (default deny). Every change
//! and every refused admin call is written to the audit log with the acting
//! credential's name. Sensitive changes (revocation, enrolling or removing
//! admins, credentials) also need an enrolled human admin's TOTP code once
//! anyone has enrolled (`mfa.rs`), or an open step-up window (`stepup.rs`).
#![forbid(unsafe_code)]

mod admin_tokens_api;
mod analytics_api;
mod api;
mod approvals_api;
mod audit_api;
mod auth;
mod console;
mod credentials;
mod governance_api;
mod identity_api;
mod lineage;
mod mfa;
mod openapi;
mod passkeys_api;
mod policy_api;
mod redteam_api;
mod roles;
mod route_permissions;
mod stepup;
mod tools_api;
mod vault_api;

pub use admin_tokens_api::{DEFAULT_ADMIN_CERT_TTL, certificate_fingerprint};
pub use api::{AdminState, ClientCertificate, DEFAULT_CERT_TTL, RemoteAddr, ShuttingDown, router};
pub use auth::{hash_bytes, hash_token, new_token};
pub use console::ConsoleLogin;
pub use credentials::{
    AdminCredentials, AdminIdentity, BOOTSTRAP_NAME, CredentialKind, ensure_bootstrap,
};
pub use mfa::{MfaKeys, TOTP_HEADER, USER_HEADER};
pub use roles::{Permission, ROLES, Role};
pub use route_permissions::{ROUTE_PERMISSIONS, required as route_permission};
pub use stepup::{DEFAULT_STEP_UP, StepUp};
