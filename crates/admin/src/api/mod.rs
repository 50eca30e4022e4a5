//! Admin API routes and handlers: the router and the agent endpoints, and the
//! per-request helper every handler of the crate uses.
//!
//! One job per file: `call.rs` (the per-request [`Call`]: admin-token
//! authentication, error mapping, JSON helpers), `router.rs` (every endpoint,
//! [`AdminState`]) and `agents.rs` (the agent endpoints). The other `*_api.rs`
//! modules import what they share from here.

mod agents;
mod call;
mod router;

pub use agents::DEFAULT_CERT_TTL;
pub(crate) use call::{ApiError, Call, json, now_ms, parse_json};
pub use call::{ClientCertificate, RemoteAddr, ShuttingDown};
pub use router::{AdminState, router};
#[cfg(test)]
pub(crate) use router::{api_routes, probe_routes};
