//! The gateway's shared state: audit sink, metrics, sessions, counters, and
//! the swappable [`Snapshot`] of routing (`routing.rs`), agents and policies
//! the hot path reads lock-free.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use portcullis_identity::{CertRejection, ClientCertChecker, PeerCertificate};
use portcullis_policy::{
    AgentEntity, Authorizer, EntityError, GrantEntity, GrantScope, PolicyBundle, SourceIp,
};
use portcullis_store::{Store, StoreError};
use portcullis_vault::{CaptureSink, Vault};
use rustls::ServerConfig;
use rustls::pki_types::UnixTime;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

use crate::audit_sink::AuditSink;
use crate::body::RecordedBody;
use crate::config::Config;
use crate::directory::AgentDirectory;
use crate::listener::{self, ConnectionInfo};
use crate::metrics::Metrics;
use crate::respond::ResponseBody;
use crate::routing::{Routing, RoutingEnv};
use crate::trace::Tracer;

/// What the hot path reads: one consistent version of the routes, agents and
/// policies. A request loads it once, at its start.
#[derive(Debug)]
pub struct Snapshot {
    /// The reloadable configuration the policies were checked against.
    pub routing: Arc<Routing>,
    /// Live agents and certificate serials.
    pub directory: AgentDirectory,
    /// Policies joined with agents and routes.
    pub authorizer: Authorizer,
    /// The stored policy version `authorizer` decides with.
    pub policy_version: u64,
    /// The shadow candidate, decided alongside without effect.
    pub shadow: Option<ShadowSnapshot>,
}

/// A shadow candidate joined with the same agents and routes.
#[derive(Debug)]
pub struct ShadowSnapshot {
    /// Its stored version.
    pub version: u64,
    /// Its decisions.
    pub authorizer: Authorizer,
    /// Its disagreements with the active version (kept across reloads).
    pub stats: Arc<crate::shadow::ShadowStats>,
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
    /// An MCP route cannot be served.
    #[error("MCP routes: {0}")]
    Mcp(String),
    /// A route's upstream API key cannot be read.
    #[error(transparent)]
    ApiKey(#[from] crate::llm::ApiKeyError),
    /// A policy set needs something this gateway does not run.
    #[error("{0}")]
    Unfit(String),
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
    /// The stored version of `bundle` (see [`crate::policy_versions`]).
    pub policy_version: u64,
    /// The shadow candidate and its version, if one is set.
    pub shadow: Option<(Arc<PolicyBundle>, u64)>,
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
    /// Approval tickets (`@obligation("approval")`).
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Behavioral analytics, unless `[analytics] enabled = false`.
    pub analytics: Option<Arc<crate::analytics::Analytics>>,
}

/// The data plane.
pub struct Gateway {
    /// What a config reload rebuilds a [`Routing`] with.
    pub(crate) routing_env: RoutingEnv,
    pub(crate) sink: AuditSink,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tracer: Option<Tracer>,
    pub(crate) vault: Option<Arc<Vault>>,
    pub(crate) captures: Option<CaptureSink>,
    pub(crate) tokens: crate::tokens::TokenService,
    pub(crate) analytics: Option<Arc<crate::analytics::Analytics>>,
    /// Every agent's LLM budget counters (they outlive config reloads).
    pub(crate) budgets: crate::llm::budget::Budgets,
    /// `@rate` limits.
    pub(crate) rate_limiter: crate::rate_limit::RateLimiter,
    /// Failed TOTP codes and client assertions.
    pub(crate) attempts: crate::attempts::AttemptThrottle,
    /// Approval tickets.
    pub(crate) approvals: Arc<crate::approvals::Approvals>,
    /// When each agent last authenticated.
    pub(crate) last_seen: crate::last_seen::LastSeen,
    /// The MCP adapter's pins and sessions (built at start, so a reload may
    /// add the first MCP route).
    pub(crate) mcp: Option<Arc<crate::mcp::McpState>>,
    /// Response streams open right now, cut when their holder loses the
    /// right to them (`liveness.rs`).
    pub(crate) streams: Arc<crate::liveness::LiveStreams>,
    /// The per-source budget of refused unauthenticated requests' records.
    pub(crate) anonymous: Arc<crate::anonymous::AnonymousSampler>,
    /// The authorization-code flow, when `[identity.authorization]` is set.
    pub(crate) authorization: Option<Arc<crate::authorization::AuthorizationServer>>,
    checker: ClientCertChecker,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) store: Store,
    /// The installed policy version. The lock serialises reloads (of agents
    /// and of the config) and policy changes so an older read never
    /// replaces a newer snapshot; requests never take it.
    pub(crate) policy: Mutex<InstalledPolicy>,
}

/// The policy version snapshots are built from.
#[derive(Debug, Clone)]
pub(crate) struct InstalledPolicy {
    pub(crate) bundle: Arc<PolicyBundle>,
    pub(crate) version: u64,
    pub(crate) shadow: Option<InstalledShadow>,
}

/// The shadow candidate snapshots are built with.
#[derive(Debug, Clone)]
pub(crate) struct InstalledShadow {
    pub(crate) bundle: Arc<PolicyBundle>,
    pub(crate) version: u64,
    pub(crate) stats: Arc<crate::shadow::ShadowStats>,
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
        let routing_env = RoutingEnv {
            upstream_tls: parts.upstream_tls,
            demo_upstream: parts.demo_upstream,
            buffers: crate::buffers::BufferBudget::new(config.max_buffered_bytes),
        };
        let routing = Arc::new(Routing::build(
            &config,
            &routing_env,
            parts.bundle.redacts(),
            None,
        )?);
        routing.activate();
        let installed = InstalledPolicy {
            bundle: parts.bundle.clone(),
            version: parts.policy_version,
            shadow: parts.shadow.map(|(bundle, version)| InstalledShadow {
                bundle,
                version,
                stats: Default::default(),
            }),
        };
        let snapshot = build_snapshot(&parts.store, &installed, &routing).await?;
        // Today's day budgets, as the last run left them (read whatever the
        // routes: a reload may add an LLM route whose counters are stored).
        let budgets = crate::llm::budget::Budgets::default();
        let now = unix_now();
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
        budgets.restore_day(&rows, now);
        let in_use = Gateway::vault_routes_in_use(
            &config,
            &parts.bundle,
            parts.vault.as_deref(),
            parts.captures.is_some(),
        )?;
        if let Some(vault) = &parts.vault {
            vault.set_in_use(in_use);
        }
        parts
            .tokens
            .revocations
            .reload(&parts.store, unix_now())
            .await?;
        let last_seen = crate::last_seen::LastSeen::default();
        last_seen.sync(snapshot.directory.agents().map(|(name, _)| name));
        last_seen.seed(&parts.store).await?;
        if let Some(analytics) = &parts.analytics {
            analytics.forget(revoked_agents(&snapshot));
        }
        check_mcp_fit(&routing, &snapshot)?;
        let serves_mcp = routing
            .routes()
            .any(|r| r.kind == crate::config::RouteKind::Mcp);
        let mcp = Some(crate::mcp::state_for(&parts.store, serves_mcp).await?);
        let streams = Arc::new(crate::liveness::LiveStreams::default());
        // A quarantine cuts the agent's open response streams and ends its
        // live MCP sessions at once, by the same paths as a revocation (its
        // allow-listed routes excepted).
        if let Some(analytics) = &parts.analytics {
            let mcp = mcp.as_ref().map(Arc::downgrade);
            let live = Arc::downgrade(&streams);
            let config = analytics.config().clone();
            analytics.on_quarantine(Box::new(move |quarantined: &str| {
                if let Some(live) = live.upgrade() {
                    live.cut_where(|h| {
                        (h.agent == quarantined && !config.quarantine_admits(&h.route))
                            .then_some(crate::liveness::CutReason::Quarantined)
                    });
                }
                if let Some(mcp) = mcp.as_ref().and_then(std::sync::Weak::upgrade) {
                    mcp.end_sessions(
                        |agent, route| agent != quarantined || config.quarantine_admits(route),
                        "its agent is quarantined",
                    );
                }
            }));
        }
        let gateway = Arc::new(Gateway {
            authorization: config.authorization.clone().map(|c| {
                Arc::new(crate::authorization::AuthorizationServer::new(
                    c,
                    routing_env.upstream_tls.clone(),
                ))
            }),
            anonymous: Arc::new(crate::anonymous::AnonymousSampler::new(
                config.audit.unauthenticated_records_per_minute,
            )),
            streams,
            budgets,
            last_seen,
            rate_limiter: if parts.store.is_postgres() {
                crate::rate_limit::RateLimiter::shared(parts.store.clone())
            } else {
                Default::default()
            },
            attempts: crate::attempts::AttemptThrottle::new(config.attempts.clone()),
            approvals: parts.approvals,
            mcp,
            tokens: parts.tokens,
            analytics: parts.analytics,
            vault: parts.vault,
            captures: parts.captures,
            routing_env,
            sink: parts.sink,
            metrics: parts.metrics,
            tracer: parts.tracer,
            checker: parts.checker,
            snapshot: ArcSwap::from_pointee(snapshot),
            store: parts.store,
            policy: Mutex::new(installed),
        });
        tokio::spawn(flush_anonymous_summaries(Arc::downgrade(&gateway)));
        Ok(gateway)
    }

    /// The approval desk.
    pub fn approvals(&self) -> &Arc<crate::approvals::Approvals> {
        &self.approvals
    }

    /// The zone policy sees wall-clock time in, as configured now.
    pub fn timezone(&self) -> crate::config::PolicyTimeZone {
        self.snapshot.load().routing.timezone.clone()
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
        self.snapshot.load().routing.routes().cloned().collect()
    }

    /// Re-reads agents from the store and swaps in a new snapshot. Called after
    /// every agent change; requests that start afterwards see the change.
    pub async fn reload(&self) -> Result<(), GatewayError> {
        let installed = self.policy.lock().await;
        let routing = self.snapshot.load().routing.clone();
        let snapshot = build_snapshot(&self.store, &installed, &routing).await?;
        self.last_seen
            .sync(snapshot.directory.agents().map(|(name, _)| name));
        // Revoked agents' analytics models leave memory (saved first).
        if let Some(analytics) = &self.analytics {
            analytics.forget(revoked_agents(&snapshot));
        }
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(snapshot.clone());
        // Open response streams of revoked agents and certificates end now.
        // After the swap, like the sessions below: a stream registering
        // meanwhile checks the new snapshot right after registering.
        self.cut_streams();
        // Sessions of agents the new snapshot no longer accepts end now.
        if let Some(mcp) = &self.mcp {
            mcp.end_sessions(
                |agent, _| snapshot.directory.check_agent(agent).is_ok(),
                "its agent is no longer live",
            );
        }
        Ok(())
    }

    /// Builds a snapshot for `policy` with the current agents and swaps it in.
    /// The caller holds the policy lock (passed in as `installed`) and updates
    /// it after this succeeds; on failure nothing changes.
    pub(crate) async fn swap_policy(
        &self,
        installed: &mut InstalledPolicy,
        policy: InstalledPolicy,
    ) -> Result<(), GatewayError> {
        let routing = self.snapshot.load().routing.clone();
        let snapshot = build_snapshot(&self.store, &policy, &routing).await?;
        self.snapshot.store(Arc::new(snapshot));
        *installed = policy;
        Ok(())
    }

    /// A snapshot for a candidate `bundle` with the current agents, routes
    /// and grants, which never decides live traffic (`policy whatif`).
    pub(crate) async fn candidate_snapshot(
        &self,
        bundle: &Arc<PolicyBundle>,
    ) -> Result<Snapshot, GatewayError> {
        let probe = InstalledPolicy {
            bundle: bundle.clone(),
            version: 0,
            shadow: None,
        };
        let routing = self.snapshot.load().routing.clone();
        build_snapshot(&self.store, &probe, &routing).await
    }

    /// Builds (and throws away) a snapshot for `bundle`: proves it fits the
    /// current agents, routes and request shape before anything is stored.
    pub(crate) async fn check_policy(
        &self,
        bundle: &Arc<PolicyBundle>,
    ) -> Result<(), GatewayError> {
        let probe = InstalledPolicy {
            bundle: bundle.clone(),
            version: 0,
            shadow: None,
        };
        let routing = self.snapshot.load().routing.clone();
        build_snapshot(&self.store, &probe, &routing).await?;
        if bundle.redacts() && routing.guard.is_none() {
            return Err(GatewayError::Unfit(
                "a policy carries `@obligation(\"redact\")`, but the content guard is off: turn on `[routes.guard] dlp` on a route, or reload the config with this policy set (SIGHUP)".into(),
            ));
        }
        if !bundle.supports_secrets()
            && let Some(route) = routing.routes().find(|r| r.credential.is_some())
        {
            return Err(GatewayError::Vault {
                route: route.name.clone(),
                problem: "the policy schema has no `Action::\"use_secret\"`, which this route's credential needs".into(),
            });
        }
        Ok(())
    }

    /// The vault, when a key-encryption key is configured.
    pub fn vault(&self) -> Option<&Arc<Vault>> {
        self.vault.as_ref()
    }

    /// The MCP adapter's tool pins; `None` without MCP routes.
    pub fn mcp_pins(&self) -> Option<&crate::mcp::pins::ToolPins> {
        self.mcp.as_deref().map(|m| &m.pins)
    }

    /// Tells the other replicas (cluster mode) that `change` is committed.
    /// A lost notification is not an error for the caller: the change is
    /// stored, and every replica's periodic resync reads it.
    pub(crate) async fn announce(&self, change: portcullis_store::Change) {
        if let Err(e) = self.store.notify_change(change).await {
            tracing::warn!(change = change.as_str(), error = %e, "cluster: cannot announce a change; other replicas read it at their next resync");
        }
    }

    /// Re-reads revoked tokens and disabled users. Called by the admin API
    /// after each such change, before it answers.
    pub async fn reload_revocations(&self) -> Result<(), GatewayError> {
        self.tokens
            .revocations
            .reload(&self.store, unix_now())
            .await?;
        // Streams opened with a token revoked, or for a user disabled, end now.
        self.cut_streams();
        Ok(())
    }

    /// Whether the holder of an open response stream may still receive it
    /// (the agent, certificate, token, user and risk grade, as of now).
    pub(crate) fn stream_verdict(
        &self,
        holder: &crate::liveness::Holder,
    ) -> Option<crate::liveness::CutReason> {
        crate::liveness::verdict(
            holder,
            &self.snapshot.load().directory,
            &self.tokens.revocations,
            self.analytics.as_deref(),
        )
    }

    /// Cuts every open response stream whose holder the current state no
    /// longer admits. Called after each change of agents or revocations.
    fn cut_streams(&self) {
        let snapshot = self.snapshot.load();
        let cut = self.streams.cut_where(|holder| {
            crate::liveness::verdict(
                holder,
                &snapshot.directory,
                &self.tokens.revocations,
                self.analytics.as_deref(),
            )
        });
        if cut > 0 {
            tracing::info!(cut, "open response streams cut");
        }
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
        limits: listener::ConnectionLimits,
        shutdown: watch::Receiver<bool>,
    ) {
        let gateway = self;
        let metrics = gateway.metrics.connections("gateway");
        listener::serve(
            listener,
            tls,
            limits,
            metrics,
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
        let rows = self.budgets.dirty_days(now);
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
            self.budgets.mark_dirty(&rows);
            return Err(e.into());
        }
        Ok(())
    }

    /// Cluster mode: reports this replica's LLM budget counts to the shared
    /// counters and reads every replica's back (`llm::budget`). Off the
    /// request path: `serve` runs it every `SYNC_INTERVAL`.
    pub async fn sync_budgets(&self) -> Result<(), GatewayError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        self.budgets.sync(&self.store, now_ms).await?;
        Ok(())
    }

    /// Metrics, for the admin listener.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The throttle of failed TOTP codes and client assertions.
    pub fn attempts(&self) -> &crate::attempts::AttemptThrottle {
        &self.attempts
    }

    /// Raises an alert (beside behavioral analytics' ones) that `principal`
    /// was locked out after too many failed attempts of `kind`. In the
    /// background: the answer does not wait for the store.
    pub fn raise_lockout_alert(&self, kind: &str, principal: &str, source: std::net::IpAddr) {
        let alert = portcullis_store::AlertRow {
            id: 0,
            agent: principal.to_string(),
            time_ms: unix_now() * 1000,
            grade: "lockout".into(),
            risk: 1.0,
            // The shape of analytics alerts' detail, so `alerts list` shows it.
            detail: serde_json::json!({
                "kind": format!("{kind}_lockout"),
                "reasons": [format!(
                    "{kind}_lockout: too many failed attempts for `{principal}` (last from {source}); further attempts are refused unchecked until the lockout ends"
                )],
                "features": [],
            })
            .to_string(),
            request_ids: "[]".into(),
            verdict: None,
            resolved_at: None,
            resolved_by: None,
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.add_alert(&alert).await {
                tracing::error!(error = %e, "cannot raise the lockout alert");
            }
        });
    }
}

impl Gateway {
    /// Refuses to start when a route's credential cannot be served: no vault, an
    /// unknown secret, or a policy schema without `use_secret`. Also tells the
    /// vault which secrets are in use, so they cannot be deleted under the routes.
    /// `serve` calls it before binding any port.
    pub fn check_vault_routes(
        config: &Config,
        bundle: &PolicyBundle,
        vault: Option<&Vault>,
        capturing: bool,
    ) -> Result<(), GatewayError> {
        let in_use = Gateway::vault_routes_in_use(config, bundle, vault, capturing)?;
        if let Some(vault) = vault {
            vault.set_in_use(in_use);
        }
        Ok(())
    }

    /// [`Gateway::check_vault_routes`]' checks, changing nothing: the secrets
    /// the routes use, for the caller to hand the vault once it commits.
    pub(crate) fn vault_routes_in_use(
        config: &Config,
        bundle: &PolicyBundle,
        vault: Option<&Vault>,
        capturing: bool,
    ) -> Result<std::collections::HashSet<String>, GatewayError> {
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
        Ok(in_use)
    }
}

/// Routes of kind `mcp` need the MCP actions in the policy schema.
pub(crate) fn check_mcp_fit(routing: &Routing, snapshot: &Snapshot) -> Result<(), GatewayError> {
    if routing
        .routes()
        .any(|r| r.kind == crate::config::RouteKind::Mcp)
        && !snapshot.authorizer.supports_mcp()
    {
        return Err(GatewayError::Mcp(
            "the policy schema lacks the MCP actions (`Action::\"call_tool\"` …) or their session plumbing (`Action::\"mcp_plumbing\"`: `mcp_session`, `notify`, `reply`, `open_stream`, `end_session`); copy them from the shipped schema.cedarschema (`portcullis policy schema`)".into(),
        ));
    }
    if routing.routes().any(|r| {
        r.sandbox
            .as_ref()
            .is_some_and(|p| p.enabled && p.network == portcullis_sandbox::Network::Egress)
    }) && !snapshot.authorizer.supports_egress()
    {
        return Err(GatewayError::Mcp(
            "a route's sandbox has `network = \"egress\"`, but the policy schema lacks `Host` and `Action::\"egress\"`/`Action::\"egress_private\"`; copy them from the shipped schema.cedarschema (`portcullis policy schema`)".into(),
        ));
    }
    Ok(())
}

/// Joins `policy` with the stored agents and grants and `routing`'s routes
/// and models; fails when they do not fit.
pub(crate) async fn build_snapshot(
    store: &Store,
    policy: &InstalledPolicy,
    routing: &Arc<Routing>,
) -> Result<Snapshot, GatewayError> {
    let routes = &routing.route_entities[..];
    let models = &registry_models(store, routing).await?[..];
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let grants: Vec<GrantEntity> = store
        .live_grants(now.as_millis() as i64)
        .await?
        .into_iter()
        .filter_map(|g| {
            let scope = match g.kind.as_str() {
                "breakglass" => GrantScope::BreakGlass,
                _ => GrantScope::parse(&g.action, &g.resource)?,
            };
            Some(GrantEntity {
                id: g.id,
                agent: g.agent,
                scope,
                expires_epoch: g.expires_ms.div_euclid(1000),
            })
        })
        .collect();
    let datasets = &registry_datasets(store, routing).await?[..];
    let authorizer = Authorizer::with_grants(policy.bundle.clone(), &entities, routes, &grants)?
        .with_models(models)?
        .with_datasets(datasets)?;
    if !routing.model_registry.is_empty() && !authorizer.supports_model_registry() {
        return Err(GatewayError::Unfit(
            "a `[[routes.models]]` names a `registry` entry, but the policy schema's `Model` lacks `verified`, `lifecycle` and `digest`; copy them from the shipped schema.cedarschema (`portcullis policy schema`)".into(),
        ));
    }
    let shadow = match &policy.shadow {
        None => None,
        Some(s) => Some(ShadowSnapshot {
            version: s.version,
            authorizer: Authorizer::with_grants(s.bundle.clone(), &entities, routes, &grants)?
                .with_models(models)?
                .with_datasets(datasets)?,
            stats: s.stats.clone(),
        }),
    };
    Ok(Snapshot {
        routing: routing.clone(),
        directory,
        authorizer,
        policy_version: policy.version,
        shadow,
    })
}

/// The registered datasets the routes and MCP tools are tagged with, read
/// now: a dataset registered after start is in force in the next snapshot
/// (registration reloads). A tag naming no registered dataset is left out
/// and refused per call (`dataset_unknown`, fail closed); it is logged with
/// each snapshot so the gap is seen before a call meets it.
async fn registry_datasets(
    store: &Store,
    routing: &Routing,
) -> Result<Vec<portcullis_policy::DatasetEntity>, GatewayError> {
    let tagged: std::collections::BTreeSet<&str> = routing
        .routes
        .routes()
        .flat_map(|r| {
            r.datasets
                .iter()
                .chain(r.tool_datasets.values().flatten())
                .map(String::as_str)
        })
        .collect();
    if tagged.is_empty() {
        return Ok(Vec::new());
    }
    let rows = store.datasets().await?;
    for name in &tagged {
        if !rows.iter().any(|d| d.name == *name) {
            tracing::warn!(dataset = %name, "a route or tool is tagged with a dataset that is not registered: its calls are refused (dataset_unknown) until `portcullis dataset register` names it");
        }
    }
    Ok(rows
        .into_iter()
        .filter(|d| tagged.contains(d.name.as_str()))
        .map(|d| portcullis_policy::DatasetEntity {
            // The registry stores only valid classifications; a row that
            // says otherwise is treated as the most sensitive.
            classification: d
                .classification
                .parse()
                .unwrap_or(portcullis_core::Classification::Restricted),
            name: d.name,
            owner: d.owner,
            source: d.source,
            licence: d.licence,
            collected: d.collected,
            consent_basis: d.consent_basis,
            retention_days: d.retention_days,
            purposes: d.purposes,
            lifecycle: d.lifecycle.as_str().to_string(),
        })
        .collect())
}

/// The routes' models with what the model registry says of the entries
/// they name, read now: an approval or revocation is in force in the next
/// snapshot. A model naming an entry that does not exist stays
/// `unregistered` and unverified (fail closed).
async fn registry_models(
    store: &Store,
    routing: &Routing,
) -> Result<Vec<portcullis_policy::ModelEntity>, GatewayError> {
    let mut models = routing.model_entities.clone();
    if routing.model_registry.is_empty() {
        return Ok(models);
    }
    let rows: std::collections::HashMap<(String, String), portcullis_store::ModelRow> = store
        .registry_models()
        .await?
        .into_iter()
        .map(|r| ((r.name.clone(), r.version.clone()), r))
        .collect();
    for model in &mut models {
        let id = portcullis_policy::ModelEntity::id(&model.route, &model.name);
        if let Some(row) = routing.model_registry.get(&id).and_then(|r| rows.get(r)) {
            model.registry = portcullis_policy::RegistryFacts {
                verified: row.verified,
                lifecycle: row.lifecycle.as_str().to_string(),
                digest: row.digest.clone(),
            };
        }
    }
    Ok(models)
}

/// The agents `snapshot` knows as revoked: analytics drops their models.
fn revoked_agents(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .directory
        .agents()
        .filter(|(_, entry)| entry.revoked)
        .map(|(name, _)| name.clone())
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Writes the summaries of anonymous refusals of minutes that ended, every
/// 10 s, so a source that went quiet is summarised too. It holds the
/// gateway only for a tick, and ends when the gateway is gone.
async fn flush_anonymous_summaries(gateway: std::sync::Weak<Gateway>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        for summary in gateway.anonymous.drain_ended(now_ms) {
            gateway.sink.submit(summary);
        }
    }
}
