//! The policy façade: the only crate that touches Cedar types.
//!
//! **API boundary.** Callers hand in plain data (agent names, roles, routes, request
//! context) and get back a [`Decision`]; no `cedar_policy` type appears in this
//! crate's public API, so the Cedar version can move without touching the gateway.
//!
//! - [`PolicySources`] reads a policy directory (`schema.cedarschema` + `*.cedar`).
//! - [`PolicyBundle::compile`] parses, names and validates them against the schema.
//! - [`Authorizer::new`] joins a bundle with the current principals and resources
//!   into an immutable snapshot that answers [`Authorizer::decide`] without IO.
#![forbid(unsafe_code)]

mod args;
mod authorizer;
mod bundle;
mod caller;
mod candidates;
mod dataset;
mod decide;
mod egress;
mod entities;
mod explain;
mod facts;
mod grants;
mod mcp;
mod memo;
mod model;
mod obligations;
mod resource;
mod scope;
mod secret;

pub use args::{ArgumentError, CanonicalArgs, McpArg, canonical_arguments};
pub use authorizer::{Authorizer, RouteActions};
pub use bundle::{
    BUILTIN_PREFIX, DATASET_GATE_POLICY, DATASET_GATE_POLICY_ID, DEFAULT_POLICIES, DEFAULT_SCHEMA,
    MCP_PLUMBING, MCP_PLUMBING_POLICY, MCP_PLUMBING_POLICY_ID, MODEL_GATE_POLICY,
    MODEL_GATE_POLICY_ID, PolicyBundle, PolicyError, PolicySources, SCHEMA_FILE,
};
pub use caller::{AuthFacts, AuthMethod, CallerFacts, Delegation, Posture};
pub use dataset::{DatasetEntity, DatasetRequest, READ_DATA};
pub use egress::{AddressClass, EGRESS, EGRESS_PRIVATE, EgressRequest};
pub use entities::{AgentEntity, EntityError, RouteEntity};
pub use explain::{Explanation, PolicyTrace, TraceOutcome};
pub use facts::{AuthzRequest, Content, HttpAction, RequestTime, SourceIp};
pub use grants::{ANALYTICS_PREFIX, BREAKGLASS_PREFIX, GRANT_PREFIX, GrantEntity, GrantScope};
pub use mcp::{McpAction, McpRequest};
pub use model::{ModelAction, ModelEntity, ModelRequest, RegistryFacts};
pub use obligations::{KNOWN_ANNOTATIONS, Obligations, Rate};
pub use portcullis_core::Decision;
pub use secret::{SecretRequest, USE_SECRET};
