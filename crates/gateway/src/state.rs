//! The gateway's shared state: routes, forwarder, audit sink, metrics, and the
//! swappable [`Snapshot`] of agents and policies the hot path reads lock-free.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use portcullis_identity::{CertRejection, ClientCertChecker, PeerCertificate};
use portcullis_policy::{
    AgentEntity, Authorizer, EntityError, ModelEntity, PolicyBundle, RouteEntity, SourceIp,
};
use portcullis_store::{Store, StoreError};
use portcullis_vault::{CaptureSink, Vault};
use rustls::ServerConfig;
use rustls::pki_types::UnixTime;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

use crate::audit_sink::AuditSink;
use crate::body::RecordedBody;
use crate::config::{Config, Upstream};
use crate::directory::AgentDirectory;
use crate::listener::{self, ConnectionInfo};
use crate::metrics::Metrics;
use crate::pipeline::decode::Limits;
use crate::pipeline::forward::{Forwarder, ResolvedUpstream};
use crate::pipeline::inspect::GuardState;
use crate::respond::ResponseBody;
use crate::route::RouteTable;
use crate::trace::Tracer;

/// What the hot path reads: one consistent version of agents and policies.
#[derive(Debug)]
pub struct Snapshot {
    /// Live agents and certificate serials.
    pub directory: AgentDirectory,
    /// Policies joined with agents and routes.
    pub authorizer: Authorizer,
}

/// Per-connection state: the client certificate is checked once, at connect.
#[derive(Debug)]
pub struct ConnectionState {
    /// The client's address.
    pub remote: SocketAddr,
    /// The certificate check, `None` when no certificate was presented.
    pub peer: Option<Result<PeerCertificate, CertRejection>>,
    /// The client address, prepared for policy evaluation.
    pub source_ip: SourceIp,
}

/// Building or refreshing the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Reading agents failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The agents or routes do not fit the policy schema.
    #[error(transparent)]
    Entities(#[from] EntityError),
    /// A route names the demo upstream but none is running.
    #[error("route `{0}` uses the built-in demo upstream, which is not running")]
    NoDemoUpstream(String),
    /// The content guard's detectors did not build.
    #[error(transparent)]
    Guard(#[from] portcullis_guard::GuardError),
    /// A route's upstream API key cannot be read.
    #[error(transparent)]
    ApiKey(#[from] crate::llm::ApiKeyError),
    /// A route's credential or capture cannot be served.
    #[error("route `{route}`: {problem}")]
    Vault {
        /// The route.
        route: String,
        /// What is missing.
        problem: String,
    },
}

/// Everything needed to build a [`Gateway`].
pub struct GatewayParts {
    /// The validated configuration.
    pub config: Config,
    /// The compiled policies.
    pub bundle: Arc<PolicyBundle>,
    /// Client certificate checker for the Portcullis CA.
    pub checker: ClientCertChecker,
    /// TLS client settings for https upstreams.
    pub upstream_tls: rustls::ClientConfig,
    /// The store agents are read from.
    pub store: Store,
    /// Where audit records go.
    pub sink: AuditSink,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Address of the built-in demo upstream, if running.
    pub demo_upstream: Option<SocketAddr>,
    /// Starts request traces, when `[telemetry]` is configured.
    pub tracer: Option<Tracer>,
    /// The vault, when a key-encryption key is configured.
    pub vault: Option<Arc<Vault>>,
    /// Where captured payloads go (the vault's capture writer).
    pub captures: Option<CaptureSink>,
    /// The access-token issuer and replay caches (token endpoint, token authentication).
    pub tokens: crate::tokens::TokenService,
    /// Behavioral analytics, unless `[analytics] enabled = false`.
    pub analytics: Option<Arc<crate::analytics::Analytics>>,
}

/// The data plane.
pub struct Gateway {
    pub(crate) limits: Limits,
    pub(crate) routes: RouteTable,
    pub(crate) forwarder: Forwarder,
    pub(crate) sink: AuditSink,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tracer: Option<Tracer>,
    /// The content guard, built only when a route turns it on.
    pub(crate) guard: Option<Arc<GuardState>>,
    pub(crate) vault: Option<Arc<Vault>>,
    pub(crate) captures: Option<CaptureSink>,
    pub(crate) tokens: crate::tokens::TokenService,
    pub(crate) analytics: Option<Arc<crate::analytics::Analytics>>,
    /// API keys and budgets of `kind = "llm"` routes.
    pub(crate) llm: crate::llm::LlmRoutes,
    /// When each agent last authenticated.
    pub(crate) last_seen: crate::last_seen::LastSeen,
    checker: ClientCertChecker,
    bundle: Arc<PolicyBundle>,
    route_entities: Vec<RouteEntity>,
    model_entities: Vec<ModelEntity>,
    snapshot: ArcSwap<Snapshot>,
    store: Store,
    // Serialises reloads so an older read never replaces a newer snapshot.
    reload_lock: Mutex<()>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the gateway and loads the agent directory.
    pub async fn new(parts: GatewayParts) -> Result<Arc<Self>, GatewayError> {
        let config = parts.config;
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
                    let addr = parts
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
            };
            upstreams.insert(route.name.clone(), resolved);
        }
        let route_entities = config
            .routes
            .iter()
            .map(|r| RouteEntity {
                name: r.name.clone(),
                classification: r.classification,
            })
            .collect::<Vec<_>>();
        let model_entities = crate::llm::model_entities(&config);
        let snapshot = build_snapshot(
            &parts.store,
            &parts.bundle,
            &route_entities,
            &model_entities,
        )
        .await?;
        let llm = crate::llm::LlmRoutes::load(&config)?;
        if config.routes.iter().any(|r| r.llm.is_some()) {
            // Today's day budgets, as the last run left them.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default();
            let rows = parts.store.budget_days(now / 86_400).await?;
            let rows: Vec<_> = rows
                .into_iter()
                .map(|r| crate::llm::budget::DayUsage {
                    route: r.route,
                    agent: r.agent,
                    day: r.day,
                    requests: r.requests.max(0) as u64,
                    tokens: r.tokens.max(0) as u64,
                })
                .collect();
            llm.budgets.restore_day(&rows, now);
        }
        Gateway::check_vault_routes(
            &config,
            &parts.bundle,
            parts.vault.as_deref(),
            parts.captures.is_some(),
        )?;
        let guard = if config.routes.iter().any(|r| r.guard.scans_requests()) {
            Some(Arc::new(GuardState {
                guard: portcullis_guard::Guard::new()?,
                // Fingerprints and placeholder numbers are keyed per process:
                // they correlate within a run and reveal nothing across runs.
                key: rand::random(),
            }))
        } else {
            None
        };
        parts
            .tokens
            .revocations
            .reload(&parts.store, unix_now())
            .await?;
        let last_seen = crate::last_seen::LastSeen::default();
        last_seen.sync(snapshot.directory.agents().map(|(name, _)| name));
        last_seen.seed(&parts.store).await?;
        Ok(Arc::new(Gateway {
            llm,
            model_entities,
            last_seen,
            tokens: parts.tokens,
            analytics: parts.analytics,
            guard,
            vault: parts.vault,
            captures: parts.captures,
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
            },
            routes: RouteTable::new(&config.routes),
            forwarder: Forwarder::new(
                parts.upstream_tls,
                config.upstream_timeout,
                config.max_body_bytes,
                upstreams,
            ),
            sink: parts.sink,
            metrics: parts.metrics,
            tracer: parts.tracer,
            checker: parts.checker,
            bundle: parts.bundle,
            route_entities,
            snapshot: ArcSwap::from_pointee(snapshot),
            store: parts.store,
            reload_lock: Mutex::new(()),
        }))
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Behavioral analytics, when on (for the admin API).
    pub fn analytics(&self) -> Option<&Arc<crate::analytics::Analytics>> {
        self.analytics.as_ref()
    }

    /// The configured routes (for the admin API's inventory).
    pub fn routes(&self) -> Vec<Arc<crate::config::RouteConfig>> {
        self.routes.routes().cloned().collect()
    }

    /// Re-reads agents from the store and swaps in a new snapshot. Called after
    /// every agent change; requests that start afterwards see the change.
    pub async fn reload(&self) -> Result<(), GatewayError> {
        let _guard = self.reload_lock.lock().await;
        let snapshot = build_snapshot(
            &self.store,
            &self.bundle,
            &self.route_entities,
            &self.model_entities,
        )
        .await?;
        self.last_seen
            .sync(snapshot.directory.agents().map(|(name, _)| name));
        self.snapshot.store(Arc::new(snapshot));
        Ok(())
    }

    /// Re-reads revoked tokens and disabled users. Called by the admin API
    /// after each such change, before it answers.
    pub async fn reload_revocations(&self) -> Result<(), GatewayError> {
        self.tokens
            .revocations
            .reload(&self.store, unix_now())
            .await?;
        Ok(())
    }

    /// When `agent` last authenticated (epoch seconds, 0 = never).
    pub fn last_seen(&self, agent: &str) -> i64 {
        self.last_seen.get(agent)
    }

    /// The access-token service (for the admin API's `whoami`).
    pub fn tokens(&self) -> &crate::tokens::TokenService {
        &self.tokens
    }

    /// Checks a new connection's client certificate.
    pub fn connection(&self, info: ConnectionInfo) -> Arc<ConnectionState> {
        let peer = info
            .peer_certificates
            .as_deref()
            .map(|chain| self.checker.check(chain, UnixTime::now()));
        Arc::new(ConnectionState {
            remote: info.remote,
            peer,
            source_ip: SourceIp::new(info.remote.ip()),
        })
    }

    /// Serves the data plane on `listener` until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<ServerConfig>,
        max_connections: usize,
        shutdown: watch::Receiver<bool>,
    ) {
        let gateway = self;
        listener::serve(
            listener,
            tls,
            max_connections,
            move |info| {
                let conn = gateway.connection(info);
                let gateway = gateway.clone();
                move |req: Request<Incoming>| {
                    let gateway = gateway.clone();
                    let conn = conn.clone();
                    async move {
                        Ok::<Response<RecordedBody<ResponseBody>>, Infallible>(
                            crate::pipeline::handle(gateway, conn, req).await,
                        )
                    }
                }
            },
            shutdown,
        )
        .await;
    }

    /// Writes the day budget counters that changed since the last call to
    /// the store. Off the request path: `serve` runs it every few seconds
    /// and once more after the data plane drained.
    pub async fn save_budgets(&self) -> Result<(), GatewayError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let rows = self.llm.budgets.dirty_days(now);
        if rows.is_empty() {
            return Ok(());
        }
        let stored: Vec<_> = rows
            .iter()
            .map(|r| portcullis_store::BudgetDayRow {
                route: r.route.clone(),
                agent: r.agent.clone(),
                day: r.day,
                requests: r.requests.min(i64::MAX as u64) as i64,
                tokens: r.tokens.min(i64::MAX as u64) as i64,
            })
            .collect();
        if let Err(e) = self.store.save_budget_days(&stored).await {
            // Written again next time.
            self.llm.budgets.mark_dirty(&rows);
            return Err(e.into());
        }
        Ok(())
    }

    /// Metrics, for the admin listener.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl Gateway {
    /// Refuses to start when a route's credential cannot be served: no vault, an
    /// unknown secret, or a policy schema without `use_secret`. Also tells the
    /// vault which secrets are in use, so they cannot be deleted under the routes.
    /// `serve` calls it before binding any port; [`Gateway::new`] again.
    pub fn check_vault_routes(
        config: &Config,
        bundle: &PolicyBundle,
        vault: Option<&Vault>,
        capturing: bool,
    ) -> Result<(), GatewayError> {
        let problem = |route: &str, problem: String| GatewayError::Vault {
            route: route.to_string(),
            problem,
        };
        let mut in_use = std::collections::HashSet::new();
        for route in &config.routes {
            if route.capture.is_some() && !capturing {
                return Err(problem(
                    &route.name,
                    "payload capture needs the vault: set PORTCULLIS_KEK_FILE or PORTCULLIS_KEK"
                        .into(),
                ));
            }
            let Some(credential) = &route.credential else {
                continue;
            };
            let Some(vault) = vault else {
                return Err(problem(
                    &route.name,
                    format!(
                        "credential `{}` needs the vault: set PORTCULLIS_KEK_FILE or PORTCULLIS_KEK",
                        credential.secrets.join("`, `")
                    ),
                ));
            };
            for secret in &credential.secrets {
                if !vault.has_secret(secret) {
                    return Err(problem(
                        &route.name,
                        format!(
                            "unknown secret `{secret}`: store it first with `portcullis secret put {secret}`"
                        ),
                    ));
                }
                in_use.insert(secret.clone());
            }
            if !bundle.supports_secrets() {
                return Err(problem(
                &route.name,
                "the policy schema has no `Action::\"use_secret\"` (copy it from the shipped schema.cedarschema)".into(),
            ));
            }
        }
        if let Some(vault) = vault {
            vault.set_in_use(in_use);
        }
        Ok(())
    }
}

async fn build_snapshot(
    store: &Store,
    bundle: &Arc<PolicyBundle>,
    routes: &[RouteEntity],
    models: &[ModelEntity],
) -> Result<Snapshot, GatewayError> {
    let agents = store.agents().await?;
    let certificates = store.certificates(None).await?;
    let keys = store.agent_keys(None).await?;
    let pins = store.posture_pins().await?;
    let directory = AgentDirectory::new(&agents, &certificates)
        .with_keys(&keys)
        .with_pins(&pins);
    // Revoked agents stay out of the policy entities as well: defence in depth.
    let entities: Vec<AgentEntity> = directory
        .agents()
        .filter(|(_, e)| !e.revoked)
        .map(|(name, e)| AgentEntity {
            name: name.clone(),
            roles: e.roles.clone(),
        })
        .collect();
    let authorizer = Authorizer::new(bundle.clone(), &entities, routes)?.with_models(models)?;
    Ok(Snapshot {
        directory,
        authorizer,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
