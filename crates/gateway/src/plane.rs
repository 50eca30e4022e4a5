//! The gateway as the admin API sees it: [`DataPlane`] for [`Gateway`], each
//! call the gateway's own method of the same name.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use portcullis_control::analytics::Analytics;
use portcullis_control::approvals::Approvals;
use portcullis_control::attempts::AttemptThrottle;
use portcullis_control::config::PolicyTimeZone;
use portcullis_control::metrics::Metrics;
use portcullis_control::plane::{
    ActivePolicy, DataPlane, PlaneError, PlaneFuture, RouteSummary, ToolPinning,
};
use portcullis_control::policy_versions::{
    PolicyChange, PolicyChangeError, PolicyPush, WhatIfReport,
};
use portcullis_control::shadow::ShadowReport;
use portcullis_policy::Authorizer;
use portcullis_store::Change;

use crate::config::RouteKind;
use crate::mcp::pins::ToolPins;
use crate::{Gateway, Snapshot};

impl ActivePolicy for Snapshot {
    fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    fn policy_version(&self) -> u64 {
        self.policy_version
    }
}

impl ToolPinning for ToolPins {
    fn approved(&self, route: &str, tool: &str, digest: &str) {
        ToolPins::approved(self, route, tool, digest);
    }
}

/// A gateway error as the admin API sees it: a store error as itself, so
/// the admin API can tell a store that did not answer in time (503) from
/// an internal error.
fn plane_error(e: crate::GatewayError) -> PlaneError {
    match e {
        crate::GatewayError::Store(e) => Box::new(e),
        other => Box::new(other),
    }
}

impl DataPlane for Gateway {
    // Each admin change, once applied here, is announced to the other
    // replicas (cluster mode; nothing on one node).
    fn reload(&self) -> PlaneFuture<'_, Result<(), PlaneError>> {
        Box::pin(async move {
            Gateway::reload(self).await.map_err(plane_error)?;
            self.announce(Change::Agents).await;
            Ok(())
        })
    }

    fn reload_revocations(&self) -> PlaneFuture<'_, Result<(), PlaneError>> {
        Box::pin(async move {
            Gateway::reload_revocations(self)
                .await
                .map_err(plane_error)?;
            self.announce(Change::Revocations).await;
            Ok(())
        })
    }

    fn snapshot(&self) -> Arc<dyn ActivePolicy> {
        Gateway::snapshot(self)
    }

    fn policy_version(&self) -> u64 {
        Gateway::policy_version(self)
    }

    fn shadow_report(&self) -> Option<(u64, ShadowReport)> {
        Gateway::shadow_report(self)
    }

    fn push_policy(
        &self,
        push: PolicyPush,
    ) -> PlaneFuture<'_, Result<PolicyChange, PolicyChangeError>> {
        Box::pin(async move {
            let change = Gateway::push_policy(self, push).await?;
            if !change.unchanged {
                self.announce(Change::Policy).await;
            }
            Ok(change)
        })
    }

    fn rollback_policy(
        &self,
        to: Option<u64>,
    ) -> PlaneFuture<'_, Result<PolicyChange, PolicyChangeError>> {
        Box::pin(async move {
            let change = Gateway::rollback_policy(self, to).await?;
            self.announce(Change::Policy).await;
            Ok(change)
        })
    }

    fn stop_shadow(&self) -> PlaneFuture<'_, Result<Option<u64>, PolicyChangeError>> {
        Box::pin(async move {
            let stopped = Gateway::stop_shadow(self).await?;
            if stopped.is_some() {
                self.announce(Change::Policy).await;
            }
            Ok(stopped)
        })
    }

    fn whatif<'a>(
        &'a self,
        files: &'a BTreeMap<String, String>,
        since_ms: i64,
    ) -> PlaneFuture<'a, Result<WhatIfReport, PolicyChangeError>> {
        Box::pin(Gateway::whatif(self, files, since_ms))
    }

    fn timezone(&self) -> PolicyTimeZone {
        Gateway::timezone(self)
    }

    fn routes(&self) -> Vec<RouteSummary> {
        Gateway::routes(self)
            .iter()
            .map(|r| RouteSummary {
                name: r.name.clone(),
                kind: match r.kind {
                    RouteKind::Http => "http",
                    RouteKind::Mcp => "mcp",
                    RouteKind::Llm => "llm",
                }
                .to_string(),
                path_prefix: r.path_prefix.clone(),
                classification: r.classification,
                datasets: r.datasets.clone(),
                tool_datasets: r.tool_datasets.clone(),
                models: r
                    .llm
                    .iter()
                    .flat_map(|l| l.models.iter())
                    .map(|m| {
                        let registry = m.registry.as_ref().map(|(n, v)| format!("{n}@{v}"));
                        (m.name.clone(), registry)
                    })
                    .collect(),
            })
            .collect()
    }

    fn last_seen(&self, agent: &str) -> i64 {
        Gateway::last_seen(self, agent)
    }

    fn mcp_pins(&self) -> Option<&dyn ToolPinning> {
        Gateway::mcp_pins(self).map(|p| p as &dyn ToolPinning)
    }

    fn metrics(&self) -> &Arc<Metrics> {
        Gateway::metrics(self)
    }

    fn attempts(&self) -> &AttemptThrottle {
        Gateway::attempts(self)
    }

    fn raise_lockout_alert(&self, kind: &str, principal: &str, source: IpAddr) {
        Gateway::raise_lockout_alert(self, kind, principal, source);
    }

    fn approvals(&self) -> &Arc<Approvals> {
        Gateway::approvals(self)
    }

    fn analytics(&self) -> Option<&Arc<Analytics>> {
        Gateway::analytics(self)
    }
}
