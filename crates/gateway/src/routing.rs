//! The part of the configuration that reloads without a restart: the route
//! table and each route's upstream, kind, models, guard, credential and
//! limits; `[limits]`' request limits; the headers stripped and the client
//! certificate forwarded; the policy time zone.
//!
//! A [`Routing`] is built whole from a validated [`Config`], off to the
//! side, and travels inside the [`crate::Snapshot`] beside the agents and
//! policies it was checked with. The request path loads the snapshot once,
//! at the start of the exchange, so one request sees one route table, one
//! forwarder and one policy set from its first byte to its record, even
//! when a reload swaps in another meanwhile; the old one is dropped when
//! its last request ends.
//!
//! What a routing needs but does not own stays on the gateway and outlives
//! reloads: the budget counters, the buffer budget (resized in place), the
//! guard's per-process key, the MCP sessions and tool pins.
//!
//! **Architecture Invariant:** nothing on the request path reads a route,
//! an upstream or a request limit from anywhere but the request's snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use portcullis_control::policy_versions::{PolicyChangeError, PolicyPush, now_ms};
use portcullis_core::ErrorCode;
use portcullis_policy::{ModelEntity, PolicyBundle, PolicySources, RouteEntity};
use portcullis_store::{NewPolicyVersion, PolicySlot};

use crate::buffers::BufferBudget;
use crate::config::{Config, PolicyTimeZone, Upstream};
use crate::pipeline::decode::Limits;
use crate::pipeline::forward::{Forwarder, ResolvedUpstream};
use crate::pipeline::inspect::GuardState;
use crate::route::RouteTable;
use crate::state::{Gateway, GatewayError, InstalledPolicy, build_snapshot, check_mcp_fit};

/// The reloadable configuration, as the request path uses it.
#[derive(Debug)]
pub struct Routing {
    /// Which route a path takes.
    pub(crate) routes: RouteTable,
    /// The upstreams and the client that calls them.
    pub(crate) forwarder: Forwarder,
    /// Request limits.
    pub(crate) limits: Limits,
    /// API keys of `kind = "llm"` routes.
    pub(crate) llm: crate::llm::LlmRoutes,
    /// The content guard, built only when a route or a policy needs it.
    pub(crate) guard: Option<Arc<GuardState>>,
    /// The zone of `context.time.hour` and `weekday`.
    pub(crate) timezone: PolicyTimeZone,
    /// The routes as policy entities.
    pub(crate) route_entities: Vec<RouteEntity>,
    /// The LLM routes' models as policy entities.
    pub(crate) model_entities: Vec<ModelEntity>,
    /// The model-registry entry each model naming one names, by model
    /// entity id; read from the store with every snapshot.
    pub(crate) model_registry: std::collections::HashMap<String, (String, String)>,
    /// `[limits] max_buffered_bytes`, applied by [`Routing::activate`].
    max_buffered_bytes: u64,
}

/// What building a [`Routing`] needs from the running process; fixed at start.
pub(crate) struct RoutingEnv {
    /// TLS client settings for https upstreams.
    pub(crate) upstream_tls: rustls::ClientConfig,
    /// Address of the built-in demo upstream, if running.
    pub(crate) demo_upstream: Option<SocketAddr>,
    /// The process-wide buffer budget, resized by each routing.
    pub(crate) buffers: Arc<BufferBudget>,
}

impl Routing {
    /// Builds a routing from `config`: resolves upstreams, reads the LLM
    /// routes' API keys and builds the content guard when a route scans or
    /// `redacts` (a policy obliges redaction). `guard` is the running one,
    /// reused so fingerprints stay keyed alike across reloads. Nothing
    /// running changes; the buffer budget is resized by [`Routing::activate`].
    pub(crate) fn build(
        config: &Config,
        env: &RoutingEnv,
        redacts: bool,
        guard: Option<&Arc<GuardState>>,
    ) -> Result<Self, GatewayError> {
        let mut upstreams = HashMap::new();
        for route in &config.routes {
            let resolved = match &route.upstream {
                Upstream::Url {
                    scheme,
                    authority,
                    base_path,
                } => ResolvedUpstream {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    base_path: base_path.clone(),
                },
                Upstream::BuiltinDemo => {
                    let addr = env
                        .demo_upstream
                        .ok_or_else(|| GatewayError::NoDemoUpstream(route.name.clone()))?;
                    ResolvedUpstream {
                        scheme: http::uri::Scheme::HTTP,
                        authority: addr
                            .to_string()
                            .parse()
                            .map_err(|_| GatewayError::NoDemoUpstream(route.name.clone()))?,
                        base_path: String::new(),
                    }
                }
                // Launched per session by the MCP adapter; nothing to resolve.
                Upstream::Stdio { .. } => continue,
            };
            upstreams.insert(route.name.clone(), resolved);
        }
        let route_entities = config
            .routes
            .iter()
            .map(|r| RouteEntity {
                name: r.name.clone(),
                classification: r.classification,
                owner: r.owner.clone(),
                tags: r.tags.clone(),
            })
            .collect();
        // The egress proxy of a sandboxed server scans what it lets out.
        let egress_scans = config.routes.iter().any(|r| {
            r.sandbox.as_deref().is_some_and(|p| {
                p.enabled
                    && p.network == portcullis_sandbox::Network::Egress
                    && p.egress.dlp != portcullis_sandbox::EgressDlp::Off
            })
        });
        let guard =
            if config.routes.iter().any(|r| r.guard.scans_requests()) || redacts || egress_scans {
                match guard {
                    Some(running) => Some(running.clone()),
                    None => Some(Arc::new(GuardState {
                        guard: portcullis_guard::Guard::new()?,
                        // Fingerprints and placeholder numbers are keyed per
                        // process: they correlate within a run and reveal
                        // nothing across runs.
                        key: rand::random(),
                    })),
                }
            } else {
                None
            };
        Ok(Routing {
            llm: crate::llm::LlmRoutes::load(config)?,
            model_entities: crate::llm::model_entities(config),
            model_registry: crate::llm::model_registry_refs(config),
            route_entities,
            guard,
            timezone: config.policy_timezone.clone(),
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                strip_request_headers: config.strip_request_headers.clone(),
                buffers: env.buffers.clone(),
            },
            routes: RouteTable::new(&config.routes),
            forwarder: Forwarder::new(
                env.upstream_tls.clone(),
                config.upstream_timeout,
                config.max_body_bytes,
                upstreams,
                config.forward_client_cert,
            )
            .with_stall_timeout(config.stall_timeout),
            max_buffered_bytes: config.max_buffered_bytes,
        })
    }

    /// Makes the process-wide settings this routing carries take effect:
    /// the buffer budget's size. Called once it is swapped in.
    pub(crate) fn activate(&self) {
        self.limits.buffers.set_max(self.max_buffered_bytes);
    }

    /// The configured routes.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<crate::config::RouteConfig>> {
        self.routes.routes()
    }

    /// Whether a route named `name` exists.
    pub fn has_route(&self, name: &str) -> bool {
        self.routes.routes().any(|r| r.name == name)
    }
}

/// A config reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ConfigReloadError {
    /// The policy set does not compile, or storing its version failed.
    #[error("the policy set was refused: {0}")]
    Policy(#[from] PolicyChangeError),
    /// What the file describes cannot be served with the policies.
    #[error("{0}")]
    Unfit(#[from] GatewayError),
}

impl ConfigReloadError {
    /// The stable code for the audit record.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConfigReloadError::Policy(e) => e.code(),
            ConfigReloadError::Unfit(_) => ErrorCode::InvalidConfig,
        }
    }
}

/// What a config reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigApplied {
    /// The policy version new requests are decided by.
    pub policy_version: u64,
    /// The version before, when the policy set changed (and was stored).
    pub previous_policy: Option<u64>,
    /// Live MCP sessions ended because their route was removed or now
    /// forwards elsewhere.
    pub sessions_ended: usize,
}

impl Gateway {
    /// Swaps in the reloadable part of `config` and the policy set `policy`
    /// together, as one snapshot, or nothing. Everything is built and
    /// checked off to the side first, as `serve` checks at start: upstreams,
    /// the LLM routes' API keys, the vault secrets of the routes'
    /// credentials, the policies compiled and joined with the new routes,
    /// models and the stored agents. Only then is a changed policy set
    /// stored as a new version and the snapshot swapped. Requests already
    /// running finish with the snapshot they loaded; live MCP sessions of a
    /// route that is gone or forwards elsewhere end (their next message is
    /// `mcp_session_not_found`, or `route_not_found` for a removed route).
    ///
    /// Settings only a restart applies are the caller's to refuse (see
    /// `docs/operations.md`); this applies what [`Routing`] holds and
    /// ignores the rest of `config`.
    pub async fn reload_config(
        &self,
        config: &Config,
        policy: PolicyPush,
    ) -> Result<ConfigApplied, ConfigReloadError> {
        let sources = PolicySources::from_files(PathBuf::from("<reload>"), &policy.files)
            .map_err(PolicyChangeError::from)?;
        let bundle = Arc::new(PolicyBundle::compile(&sources).map_err(PolicyChangeError::from)?);
        // Serialised with agent reloads and policy changes: no older read
        // replaces a newer snapshot.
        let mut installed = self.policy.lock().await;
        let running = self.snapshot.load_full();
        let policy_changed = bundle.content_hash() != installed.bundle.content_hash();
        let mut next = if policy_changed {
            // A new active version ends any shadow evaluation, as a push does.
            InstalledPolicy {
                bundle: bundle.clone(),
                version: 0,
                shadow: None,
            }
        } else {
            installed.clone()
        };
        let routing = Arc::new(Routing::build(
            config,
            &self.routing_env,
            next.bundle.redacts(),
            running.routing.guard.as_ref(),
        )?);
        let in_use = Gateway::vault_routes_in_use(
            config,
            &next.bundle,
            self.vault.as_deref(),
            self.captures.is_some(),
        )?;
        if routing.routes().any(|r| r.llm.is_some()) && !next.bundle.supports_models() {
            return Err(GatewayError::Unfit(
                "routes of kind `llm` need the `Model` entity type and the `complete` and `embed` actions in the policy schema; copy them from the shipped schema (`portcullis policy schema` prints it)".into(),
            ).into());
        }
        let mut snapshot = build_snapshot(&self.store, &next, &routing).await?;
        check_mcp_fit(&routing, &snapshot)?;

        // Everything is checked. Storing a changed policy set is the one
        // step left that can fail, and nothing is swapped before it (as a
        // push: a crash between the two leaves the store ahead).
        let previous = installed.version;
        if policy_changed {
            let version = self
                .store
                .add_policy_version(
                    &NewPolicyVersion {
                        hash: bundle.content_hash(),
                        author: &policy.author,
                        created_ms: now_ms(),
                        message: &policy.message,
                        files: &policy.files,
                    },
                    PolicySlot::Active,
                )
                .await
                .map_err(PolicyChangeError::from)?;
            next.version = version;
            snapshot.policy_version = version;
        }
        routing.activate();
        self.snapshot.store(Arc::new(snapshot));
        let policy_version = next.version;
        *installed = next;
        drop(installed);
        if let Some(vault) = &self.vault {
            vault.set_in_use(in_use);
        }
        let sessions_ended = self.mcp.as_ref().map_or(0, |mcp| {
            mcp.end_sessions(
                |_, route| same_upstream(&running.routing, &routing, route),
                "a config reload removed its route or changed its upstream",
            )
        });
        Ok(ConfigApplied {
            policy_version,
            previous_policy: policy_changed.then_some(previous),
            sessions_ended,
        })
    }
}

/// Whether `route` still exists in `new` with the kind and upstream it had
/// in `old`, so a session opened on it may go on.
fn same_upstream(old: &Routing, new: &Routing, route: &str) -> bool {
    let find = |r: &Routing| r.routes().find(|c| c.name == route).cloned();
    match (find(old), find(new)) {
        (Some(old), Some(new)) => old.kind == new.kind && old.upstream == new.upstream,
        _ => false,
    }
}
