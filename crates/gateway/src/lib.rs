//! The Portcullis data plane: TLS listeners, the request pipeline, forwarding,
//! and the audit writer that records every request.
//!
//! Entry points: [`Gateway::new`] builds the data plane from validated
//! [`config::Config`] and its collaborators; [`Gateway::serve`] runs it on a
//! listener. [`pipeline`] holds the stages, in order.
#![forbid(unsafe_code)]

pub mod analytics;
pub mod anonymous;
pub mod approvals;
pub mod attempts;
pub mod audit_export;
pub mod audit_intent;
pub mod audit_sink;
pub mod audit_spool;
pub mod body;
pub mod capture;
pub mod checkpointer;
pub mod config;
pub mod demo_upstream;
pub mod directory;
pub mod last_seen;
pub mod listener;
pub mod liveness;
pub mod llm;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod oidc;
pub mod otlp;
pub mod pipeline;
pub mod policy_facts;
pub mod policy_versions;
pub mod pseudonym;
pub mod rate_limit;
pub mod readiness;
pub mod respond;
pub mod revocation;
pub mod route;
pub mod shadow;
mod state;
pub mod target;
pub mod tokens;
pub mod trace;
pub mod whoami;

pub use state::{ConnectionState, Gateway, GatewayError, GatewayParts, ShadowSnapshot, Snapshot};
