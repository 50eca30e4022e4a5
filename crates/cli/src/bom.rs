//! `portcullis bom`: the AI bill of materials of a deployment as CycloneDX
//! 1.6 JSON (an ML-BOM): every route as a service (its upstream endpoint,
//! kind, data classification, owner and tags; a stdio MCP server with its
//! sandbox profile's digest), every model an `llm` route serves as a
//! `machine-learning-model` component, and every MCP tool the gateway has
//! seen as a service nested in its server, with the SHA-256 of its
//! definition as seen and as approved. Dependencies tie routes to their
//! models. Models that name a model-registry entry carry its SHA-256 as a
//! hash and its lifecycle, verification and provenance type as properties;
//! the datasets routes are tagged with are `data` components (owner,
//! classification, provenance, consent, retention), and dependencies tie
//! routes to them too: the lineage route → model, route → dataset. Read offline from the config file and the gateway's database,
//! read-only beside running servers: the PostgreSQL store of a cluster
//! (`PORTCULLIS_STORE_URL` or the config's `[store] url`), else, when given,
//! the state directory's SQLite database.
//!
//! Nothing secret is written: upstream URLs lose any user information, a
//! stdio server is named by its program only (arguments may carry tokens),
//! and API keys and vault credentials appear as their source kind only.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use portcullis_gateway::config::{Config, RouteConfig, RouteKind, Upstream};
use portcullis_store::{DatasetRow, McpToolRow, ModelRow, Store};
use serde_json::{Value, json};

/// The CycloneDX specification version written.
pub const SPEC_VERSION: &str = "1.6";

/// Runs the command: prints the BOM (or writes it to `out`).
pub async fn run(
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    out: Option<PathBuf>,
) -> Result<()> {
    let config = match &config {
        Some(path) => Config::load(path)?,
        None => Config::quickstart(),
    };
    // As `serve` picks its store: the variable over the config file. A
    // cluster's state is in its database, not in a replica's directory.
    let cluster_url = match crate::serve::store_url_env()? {
        Some(url) => Some(url),
        None => config.store_url.clone(),
    }
    .filter(|url| portcullis_store::is_postgres_url(url));
    let (tools, registry) = match (cluster_url, state_dir) {
        (Some(url), _) => {
            // Read-only sessions, never migrated (only `serve` migrates).
            let store = Store::open_postgres_read_only(&url)
                .await
                .context("cannot open the PostgreSQL store read-only")?;
            read_state(store).await?
        }
        (None, Some(dir)) => {
            let db = dir.join("portcullis.db");
            let store = Store::open_sqlite_read_only(&db)
                .await
                .with_context(|| format!("cannot open `{}` read-only", db.display()))?;
            read_state(store).await?
        }
        (None, None) => (Vec::new(), Registry::default()),
    };
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .context("cannot format the time")?;
    let bom = build(&config.routes, &tools, &registry, &serial_number(), &now);
    let text = serde_json::to_string_pretty(&bom).context("cannot write the BOM")?;
    match out {
        Some(path) => std::fs::write(&path, text + "\n")
            .with_context(|| format!("cannot write `{}`", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

/// The model and dataset registries, as stored.
#[derive(Debug, Default)]
pub struct Registry {
    /// Registered model versions.
    pub models: Vec<ModelRow>,
    /// Registered datasets.
    pub datasets: Vec<DatasetRow>,
}

async fn read_state(store: Store) -> Result<(Vec<McpToolRow>, Registry)> {
    let read = async {
        let tools = store
            .mcp_tools()
            .await
            .context("cannot read the MCP tools")?;
        let registry = Registry {
            models: store
                .registry_models()
                .await
                .context("cannot read the model registry")?,
            datasets: store
                .datasets()
                .await
                .context("cannot read the dataset registry")?,
        };
        Ok((tools, registry))
    }
    .await;
    store.close().await;
    read
}

/// A dataset as a CycloneDX `data` component; one not in the registry is
/// listed with `registered = false`.
fn dataset_component(name: &str, row: Option<&DatasetRow>) -> Value {
    let Some(d) = row else {
        return json!({
            "type": "data",
            "bom-ref": format!("dataset:{name}"),
            "name": name,
            "data": [{ "type": "dataset", "name": name }],
            "properties": [property("registered", "false")],
        });
    };
    let mut properties = vec![
        property("registered", "true"),
        property("source", d.source.as_str()),
        property("licence", d.licence.as_str()),
        property("collected", d.collected.as_str()),
        property("consent_basis", d.consent_basis.as_str()),
        property("retention_days", d.retention_days.to_string()),
    ];
    for p in &d.purposes {
        properties.push(property("purpose", p.as_str()));
    }
    json!({
        "type": "data",
        "bom-ref": format!("dataset:{name}"),
        "name": name,
        "data": [{
            "type": "dataset",
            "name": name,
            "classification": d.classification,
            "governance": { "owners": [{ "organization": { "name": d.owner } }] },
        }],
        "properties": properties,
    })
}

/// A random version 4 UUID as a URN (RFC 9562), the BOM's serial number.
fn serial_number() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn property(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": format!("portcullis:{name}"), "value": value.into() })
}

/// Where a route forwards to, without user information or arguments.
fn endpoint(upstream: &Upstream) -> String {
    match upstream {
        Upstream::Url {
            scheme,
            authority,
            base_path,
        } => {
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}{base_path}")
        }
        Upstream::BuiltinDemo => "builtin:demo".to_string(),
        Upstream::Stdio { program, .. } => format!("stdio:{program}"),
    }
}

fn kind(kind: RouteKind) -> &'static str {
    match kind {
        RouteKind::Http => "http",
        RouteKind::Mcp => "mcp",
        RouteKind::Llm => "llm",
    }
}

/// The BOM of `routes` and the MCP `tools` seen; pure, for tests.
pub fn build(
    routes: &[RouteConfig],
    tools: &[McpToolRow],
    registry: &Registry,
    serial: &str,
    now: &str,
) -> Value {
    let version = env!("CARGO_PKG_VERSION");
    let mut components = Vec::new();
    let mut services = Vec::new();
    let mut dependencies = Vec::new();
    for r in routes {
        let route_ref = format!("route:{}", r.name);
        let mut properties = vec![
            property("kind", kind(r.kind)),
            property("path_prefix", r.path_prefix.as_str()),
            property("classification", r.classification.as_str()),
        ];
        if !r.owner.is_empty() {
            properties.push(property("owner", r.owner.as_str()));
        }
        for t in &r.tags {
            properties.push(property("tag", t.as_str()));
        }
        if let Some(profile) = &r.sandbox {
            properties.push(property("sandbox_sha256", profile.digest()));
        }
        if r.credential.is_some() {
            properties.push(property("credential", "vault"));
        }
        let mut depends = Vec::new();
        if let Some(llm) = &r.llm {
            if llm.api_key.is_some() {
                properties.push(property("credential", "api_key"));
            }
            for m in &llm.models {
                let model_ref = format!("model:{}/{}", r.name, m.name);
                let mut model = json!({
                    "type": "machine-learning-model",
                    "bom-ref": model_ref,
                    "name": m.name,
                    "properties": [
                        property("route", r.name.as_str()),
                        property("status", m.status.as_str()),
                        property("classification", m.classification.as_str()),
                    ],
                });
                if !m.version.is_empty() {
                    model["version"] = json!(m.version);
                }
                if let Some((name, version)) = &m.registry {
                    let row = registry
                        .models
                        .iter()
                        .find(|row| row.name == *name && row.version == *version);
                    let mut extra = vec![property("registry", format!("{name}@{version}"))];
                    match row {
                        None => extra.push(property("lifecycle", "unregistered")),
                        Some(row) => {
                            extra.push(property("lifecycle", row.lifecycle.as_str()));
                            extra.push(property("verified", row.verified.to_string()));
                            if let Some(k) = &row.verified_key {
                                extra.push(property("verified_key", k.as_str()));
                            }
                            let predicate = row
                                .provenance
                                .as_deref()
                                .and_then(|p| serde_json::from_str::<Value>(p).ok())
                                .and_then(|p| p["predicateType"].as_str().map(str::to_string));
                            if let Some(t) = predicate {
                                extra.push(property("provenance_predicate_type", t));
                            }
                            if let Some(hex) = row.digest.strip_prefix("sha256:") {
                                model["hashes"] = json!([{ "alg": "SHA-256", "content": hex }]);
                            }
                        }
                    }
                    if let Some(props) = model["properties"].as_array_mut() {
                        props.extend(extra);
                    }
                }
                components.push(model);
                depends.push(Value::String(model_ref));
            }
        }
        for name in &r.datasets {
            let dataset_ref = format!("dataset:{name}");
            if !components
                .iter()
                .any(|c| c["bom-ref"] == dataset_ref.as_str())
            {
                components.push(dataset_component(
                    name,
                    registry.datasets.iter().find(|d| d.name == *name),
                ));
            }
            depends.push(Value::String(dataset_ref));
        }
        let nested: Vec<Value> = tools
            .iter()
            .filter(|t| r.kind == RouteKind::Mcp && t.route == r.name)
            .map(|t| {
                let mut props = vec![property("definition_sha256", t.seen_digest.as_str())];
                let approved = match &t.approved_digest {
                    Some(d) if *d == t.seen_digest => "approved",
                    Some(_) => "changed",
                    None => "pending",
                };
                props.push(property("pin", approved));
                if let Some(d) = &t.approved_digest {
                    props.push(property("approved_sha256", d.as_str()));
                }
                json!({
                    "bom-ref": format!("tool:{}/{}", r.name, t.name),
                    "name": t.name,
                    "group": r.name,
                    "properties": props,
                })
            })
            .collect();
        let mut service = json!({
            "bom-ref": route_ref,
            "name": r.name,
            "group": "portcullis-route",
            "endpoints": [endpoint(&r.upstream)],
            "authenticated": true,
            "x-trust-boundary": true,
            "data": [{ "flow": "bi-directional", "classification": r.classification.as_str() }],
            "properties": properties,
        });
        if !nested.is_empty() {
            service["services"] = Value::Array(nested);
        }
        services.push(service);
        if !depends.is_empty() {
            dependencies.push(json!({ "ref": route_ref, "dependsOn": depends }));
        }
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": serial,
        "version": 1,
        "metadata": {
            "timestamp": now,
            "tools": { "components": [
                { "type": "application", "name": "portcullis", "version": version }
            ] },
            "component": {
                "type": "application",
                "bom-ref": "gateway",
                "name": "portcullis",
                "version": version,
                "description": "zero-trust gateway for AI agents: the routes, models and MCP tools it mediates",
            },
        },
        "components": components,
        "services": services,
        "dependencies": dependencies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_numbers_are_v4_uuids() {
        let s = serial_number();
        let hex = s.trim_start_matches("urn:uuid:");
        let groups: Vec<usize> = hex.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{s}");
        assert_eq!(&hex[14..15], "4");
        assert!(matches!(&hex[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_ne!(serial_number(), s);
    }

    #[test]
    fn endpoints_carry_no_user_information() {
        let url = Upstream::Url {
            scheme: http::uri::Scheme::HTTPS,
            authority: "user:secret@api.example:8443"
                .parse()
                .unwrap_or_else(|_| http::uri::Authority::from_static("api.example:8443")),
            base_path: "/v1".into(),
        };
        assert_eq!(endpoint(&url), "https://api.example:8443/v1");
        let stdio = Upstream::Stdio {
            program: "npx".into(),
            args: vec!["--token".into(), "s3cret".into()],
        };
        assert_eq!(endpoint(&stdio), "stdio:npx");
    }
}
