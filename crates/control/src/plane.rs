//! What the admin API asks of the running data plane. The gateway implements
//! [`DataPlane`] and the admin API holds it as `Arc<dyn DataPlane>`, so the
//! admin crate never depends on the data-plane crate: it sees the snapshot
//! only through these calls, and the control services the gateway shares
//! (approvals, analytics, metrics, the attempt throttle) as their own types.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use portcullis_core::Classification;
use portcullis_policy::Authorizer;

use crate::analytics::Analytics;
use crate::approvals::Approvals;
use crate::attempts::AttemptThrottle;
use crate::config::PolicyTimeZone;
use crate::metrics::Metrics;
use crate::policy_versions::{PolicyChange, PolicyChangeError, PolicyPush, WhatIfReport};
use crate::shadow::ShadowReport;

/// The future of a data-plane call that waits (a reload, a policy change).
pub type PlaneFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the data plane could not do what was asked (its own error, boxed).
pub type PlaneError = Box<dyn std::error::Error + Send + Sync>;

/// The policy snapshot new requests are decided by.
pub trait ActivePolicy: Send + Sync {
    /// The policies joined with the live agents, routes and grants.
    fn authorizer(&self) -> &Authorizer;
    /// The stored version it decides with.
    fn policy_version(&self) -> u64;
}

/// A configured route, as the inventory shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSummary {
    /// Its name.
    pub name: String,
    /// `http`, `mcp` or `llm`.
    pub kind: String,
    /// The path prefix it serves.
    pub path_prefix: String,
    /// Its data classification.
    pub classification: Classification,
    /// The registered datasets it serves.
    pub datasets: Vec<String>,
    /// The registered datasets each of its MCP tools reads, by tool name.
    pub tool_datasets: std::collections::BTreeMap<String, Vec<String>>,
    /// The models of an LLM route, each with the model-registry entry
    /// (`NAME@VERSION`) it names, if any.
    pub models: Vec<(String, Option<String>)>,
}

/// The MCP tool pins the data plane checks, told of an admin's approval.
pub trait ToolPinning: Send + Sync {
    /// `digest` of `tool` on `route` is approved: in force for the next call.
    fn approved(&self, route: &str, tool: &str, digest: &str);
}

/// The running data plane, as the admin API drives it.
pub trait DataPlane: Send + Sync {
    /// Rebuilds the snapshot from the store (after an agent, certificate or
    /// grant change) before the call returns.
    fn reload(&self) -> PlaneFuture<'_, Result<(), PlaneError>>;
    /// Reloads revoked tokens and disabled users from the store.
    fn reload_revocations(&self) -> PlaneFuture<'_, Result<(), PlaneError>>;
    /// The snapshot new requests are decided by.
    fn snapshot(&self) -> Arc<dyn ActivePolicy>;
    /// The policy version new requests are decided by.
    fn policy_version(&self) -> u64;
    /// The shadow candidate's version and report, if one is set.
    fn shadow_report(&self) -> Option<(u64, ShadowReport)>;
    /// Validates `push` and, if it fits, stores and installs it.
    fn push_policy(
        &self,
        push: PolicyPush,
    ) -> PlaneFuture<'_, Result<PolicyChange, PolicyChangeError>>;
    /// Makes stored version `to` (default: the one before) active again.
    fn rollback_policy(
        &self,
        to: Option<u64>,
    ) -> PlaneFuture<'_, Result<PolicyChange, PolicyChangeError>>;
    /// Ends shadow evaluation; returns the version that was the candidate.
    fn stop_shadow(&self) -> PlaneFuture<'_, Result<Option<u64>, PolicyChangeError>>;
    /// Re-decides the recorded requests since `since_ms` with the active
    /// version and with the candidate `files`.
    fn whatif<'a>(
        &'a self,
        files: &'a BTreeMap<String, String>,
        since_ms: i64,
    ) -> PlaneFuture<'a, Result<WhatIfReport, PolicyChangeError>>;
    /// The zone policy sees wall-clock time in.
    fn timezone(&self) -> PolicyTimeZone;
    /// The configured routes.
    fn routes(&self) -> Vec<RouteSummary>;
    /// When `agent` last authenticated (ms since the epoch), 0 if unknown.
    fn last_seen(&self, agent: &str) -> i64;
    /// The MCP tool pins; `None` without an MCP route.
    fn mcp_pins(&self) -> Option<&dyn ToolPinning>;
    /// The metrics both listeners count into.
    fn metrics(&self) -> &Arc<Metrics>;
    /// The throttle of failed TOTP codes and client assertions.
    fn attempts(&self) -> &AttemptThrottle;
    /// Raises an alert that `principal` was locked out after too many failed
    /// attempts of `kind`, in the background.
    fn raise_lockout_alert(&self, kind: &str, principal: &str, source: IpAddr);
    /// The approval desk.
    fn approvals(&self) -> &Arc<Approvals>;
    /// Behavioral analytics, when on.
    fn analytics(&self) -> Option<&Arc<Analytics>>;
}
