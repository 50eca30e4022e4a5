//! The Portcullis data plane: TLS listeners, the request pipeline and
//! forwarding. The control services it consults and shares with the admin API
//! (audit writer, approvals, analytics, tokens, metrics, …) are
//! `portcullis-control`'s; the admin API drives this crate only through
//! `portcullis_control::plane::DataPlane`, implemented in `plane.rs`.
//!
//! Entry points: [`Gateway::new`] builds the data plane from validated
//! [`config::Config`] and its collaborators; [`Gateway::serve`] runs it on a
//! listener. [`pipeline`] holds the stages, in order.
#![forbid(unsafe_code)]

pub mod anonymous;
pub mod audit_intent;
pub mod authorization;
pub mod body;
pub mod buffers;
pub mod capture;
pub mod config;
pub mod demo_upstream;
pub mod directory;
pub mod event_stream;
pub mod last_seen;
pub mod listener;
pub mod liveness;
pub mod llm;
pub mod mcp;
pub mod oauth;
pub mod pipeline;
mod plane;
mod policy_install;
pub mod purpose;
pub mod rate_limit;
pub mod respond;
pub mod retention;
pub mod route;
pub mod routing;
mod state;
pub mod target;
pub mod trace;
pub mod whoami;

// The control services live in `portcullis-control`; re-exported so their
// paths stay `crate::approvals`, `crate::metrics`, … here.
pub use portcullis_control::{
    analytics, approvals, attempts, audit_export, audit_sink, audit_spool, checkpointer, metrics,
    oidc, otlp, policy_facts, policy_versions, pseudonym, readiness, revocation, shadow, tokens,
};
pub use routing::Routing;
pub use state::{ConnectionState, Gateway, GatewayError, GatewayParts, ShadowSnapshot, Snapshot};
