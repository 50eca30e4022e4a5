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
//! Bearer admin token: everything under `/admin/v1/`, including the vault's
//! `/secrets`, `/vault` and `/transit` endpoints (`vault_api.rs`). Every change and every
//! refused admin call is written to the audit log. Sensitive changes (revocation,
//! enrolling or removing admins) also need an enrolled human admin's TOTP code
//! once anyone has enrolled (`mfa.rs`).
#![forbid(unsafe_code)]

mod analytics_api;
mod api;
mod approvals_api;
mod audit_api;
mod auth;
mod console;
mod identity_api;
mod mfa;
mod openapi;
mod policy_api;
mod tools_api;
mod vault_api;

pub use api::{AdminState, DEFAULT_CERT_TTL, RemoteAddr, ShuttingDown, router};
pub use auth::{hash_token, new_token};
pub use mfa::{MfaKeys, TOTP_HEADER, USER_HEADER};
