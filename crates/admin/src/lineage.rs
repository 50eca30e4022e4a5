//! The inventory's data lineage: which datasets each route and MCP tool is
//! tagged with, which model-registry entry each LLM route's models name
//! (from the running configuration and the registries), and, joined with
//! the audit log's identity → resource edges, which agent reached which
//! dataset through which route or tool.

use std::collections::BTreeMap;

use portcullis_control::plane::RouteSummary;
use portcullis_store::{DatasetRow, InventoryEdge, ModelRow};
use serde_json::{Value, json};

/// `lineage`: route or tool → dataset, route → registry model.
pub(crate) fn lineage(
    routes: &[RouteSummary],
    datasets: &[DatasetRow],
    models: &[ModelRow],
) -> Vec<Value> {
    let dataset = |name: &str| {
        let row = datasets.iter().find(|d| d.name == name);
        json!({
            "kind": "dataset",
            "name": name,
            "registered": row.is_some(),
            "classification": row.map(|d| d.classification.as_str()),
            "owner": row.map(|d| d.owner.as_str()),
        })
    };
    let mut out = Vec::new();
    for route in routes {
        let from = json!({ "kind": "route", "name": route.name });
        for d in &route.datasets {
            out.push(json!({ "from": from, "to": dataset(d) }));
        }
        for (tool, tagged) in &route.tool_datasets {
            let from = json!({ "kind": "tool", "name": format!("{}/{tool}", route.name) });
            for d in tagged {
                out.push(json!({ "from": from, "to": dataset(d) }));
            }
        }
        for (model, registry) in &route.models {
            let Some(entry) = registry else { continue };
            let row = models.iter().find(|m| m.id() == *entry);
            out.push(json!({
                "from": from,
                "to": {
                    "kind": "model",
                    "name": entry,
                    "model": format!("{}/{model}", route.name),
                    "registered": row.is_some(),
                    "lifecycle": row.map_or("unregistered", |m| m.lifecycle.as_str()),
                    "verified": row.is_some_and(|m| m.verified),
                    "digest": row.map(|m| m.digest.as_str()),
                },
            }));
        }
    }
    out
}

/// `flows`: agent → route or tool → dataset, for every identity → resource
/// edge of the audit log with allowed calls. A route's datasets apply to
/// everything reached on it (its tools and models too); a tool's only to
/// it.
pub(crate) fn flows(routes: &[RouteSummary], edges: &[InventoryEdge]) -> Vec<Value> {
    let by_name: BTreeMap<&str, &RouteSummary> =
        routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut out = Vec::new();
    for edge in edges.iter().filter(|e| e.allowed > 0) {
        let Some(agent) = &edge.principal else {
            continue;
        };
        let (route, target) = match edge.resource.split_once('/') {
            Some((route, target)) => (route, Some(target)),
            None => (edge.resource.as_str(), None),
        };
        let Some(route) = by_name.get(route) else {
            continue;
        };
        let tool = target.and_then(|t| route.tool_datasets.get(t));
        let mut seen = Vec::new();
        for d in route.datasets.iter().chain(tool.into_iter().flatten()) {
            if seen.contains(&d) {
                continue;
            }
            seen.push(d);
            out.push(json!({
                "agent": agent,
                "via": edge.resource,
                "dataset": d,
                "allowed": edge.allowed,
                "last_ms": edge.last_ms,
            }));
        }
    }
    out
}
