//! Policy as code: installing, rolling back and watching versioned policy sets.
//!
//! Every policy set the gateway decides with is a stored, immutable version
//! (`Store::add_policy_version`). A change — a push through the admin API, a
//! rollback, or an edit of a watched directory — is compiled, validated
//! (schema, annotations) and proven to fit the current agents and routes
//! *before* it is stored; only then is a new snapshot swapped in. A request
//! loads one snapshot and is decided by exactly that version, which its audit
//! record names. An invalid change is refused and the running version stays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_core::{ErrorCode, RequestId};
use portcullis_policy::{PolicyBundle, PolicyError, PolicySources};
use portcullis_store::{NewPolicyVersion, PolicySlot, Store, StoreError};
use tokio::sync::watch;

use crate::audit_sink::AuditSink;
use crate::readiness::NotReady;
use crate::state::{Gateway, GatewayError, InstalledPolicy, InstalledShadow};

/// Who installs versions the directory watcher finds.
pub const WATCH_AUTHOR: &str = "policy-watch";

/// Why a policy change was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyChangeError {
    /// The set does not compile or validate.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// The set does not fit the agents, routes or request shape.
    #[error(transparent)]
    Unfit(#[from] GatewayError),
    /// The store failed, or the version does not exist.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// There is no earlier version to roll back to.
    #[error("there is no version before {0} to roll back to")]
    NoEarlier(u64),
}

impl PolicyChangeError {
    /// The stable error code for the admin API.
    pub fn code(&self) -> ErrorCode {
        match self {
            PolicyChangeError::Invalid(_) | PolicyChangeError::Unfit(_) => ErrorCode::InvalidPolicy,
            PolicyChangeError::Store(StoreError::NotFound(_)) => ErrorCode::NotFound,
            PolicyChangeError::NoEarlier(_) => ErrorCode::Conflict,
            PolicyChangeError::Store(_) => ErrorCode::Internal,
        }
    }
}

/// A change to install.
#[derive(Debug, Clone)]
pub struct PolicyPush {
    /// The policy files by name, `schema.cedarschema` included.
    pub files: BTreeMap<String, String>,
    /// Who pushes.
    pub author: String,
    /// Why.
    pub message: String,
    /// Install as the shadow candidate instead of the active version.
    pub shadow: bool,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    /// The version now active (or, for a shadow push, the candidate).
    pub version: u64,
    /// Its content hash.
    pub hash: String,
    /// The version active before the change.
    pub previous: u64,
    /// The content equals the active version's: nothing was stored.
    pub unchanged: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl Gateway {
    /// The policy version new requests are decided by.
    pub fn policy_version(&self) -> u64 {
        self.snapshot().policy_version
    }

    /// Validates `push` and, if it fits, stores it as a new version and (unless
    /// it is a shadow candidate) makes it decide new requests.
    pub async fn push_policy(&self, push: PolicyPush) -> Result<PolicyChange, PolicyChangeError> {
        let sources = PolicySources::from_files(PathBuf::from("<push>"), &push.files)?;
        let bundle = Arc::new(PolicyBundle::compile(&sources)?);
        let mut installed = self.policy.lock().await;
        let previous = installed.version;
        if !push.shadow && bundle.content_hash() == installed.bundle.content_hash() {
            return Ok(PolicyChange {
                version: previous,
                hash: bundle.content_hash().to_string(),
                previous,
                unchanged: true,
            });
        }
        self.check_policy(&bundle).await?;
        let slot = if push.shadow {
            PolicySlot::Shadow
        } else {
            PolicySlot::Active
        };
        let version = self
            .store
            .add_policy_version(
                &NewPolicyVersion {
                    hash: bundle.content_hash(),
                    author: &push.author,
                    created_ms: now_ms(),
                    message: &push.message,
                    files: &push.files,
                },
                slot,
            )
            .await?;
        let hash = bundle.content_hash().to_string();
        // Stored first: a crash between the two leaves the store ahead, and
        // the next start decides with what the store says.
        let next = if push.shadow {
            InstalledPolicy {
                shadow: Some(InstalledShadow {
                    bundle,
                    version,
                    stats: Default::default(),
                }),
                ..installed.clone()
            }
        } else {
            // A new active version ends any shadow evaluation (as in the store).
            InstalledPolicy {
                bundle,
                version,
                shadow: None,
            }
        };
        self.swap_policy(&mut installed, next).await?;
        Ok(PolicyChange {
            version,
            hash,
            previous,
            unchanged: false,
        })
    }

    /// Makes stored version `to` active again; `None` means the version before
    /// the active one.
    pub async fn rollback_policy(
        &self,
        to: Option<u64>,
    ) -> Result<PolicyChange, PolicyChangeError> {
        let mut installed = self.policy.lock().await;
        let previous = installed.version;
        let version = match to {
            Some(v) => v,
            None => previous
                .checked_sub(1)
                .filter(|v| *v > 0)
                .ok_or(PolicyChangeError::NoEarlier(previous))?,
        };
        let row = self.store.policy_version(version).await?;
        let sources =
            PolicySources::from_files(PathBuf::from(format!("<version {version}>")), &row.files)?;
        let bundle = Arc::new(PolicyBundle::compile(&sources)?);
        self.check_policy(&bundle).await?;
        self.store.set_active_policy(version).await?;
        let hash = bundle.content_hash().to_string();
        // A candidate that becomes active stops shadowing itself (as in the store).
        let shadow = installed.shadow.clone().filter(|s| s.version != version);
        self.swap_policy(
            &mut installed,
            InstalledPolicy {
                bundle,
                version,
                shadow,
            },
        )
        .await?;
        Ok(PolicyChange {
            version,
            hash,
            previous,
            unchanged: false,
        })
    }
}

impl Gateway {
    /// The shadow candidate's version and report, if one is set.
    pub fn shadow_report(&self) -> Option<(u64, crate::shadow::ShadowReport)> {
        let snapshot = self.snapshot();
        let shadow = snapshot.shadow.as_ref()?;
        Some((shadow.version, shadow.stats.report()))
    }

    /// Ends shadow evaluation; returns the version that was the candidate.
    pub async fn stop_shadow(&self) -> Result<Option<u64>, PolicyChangeError> {
        let mut installed = self.policy.lock().await;
        let Some(shadow) = installed.shadow.clone() else {
            return Ok(None);
        };
        self.store.clear_shadow_policy().await?;
        let next = InstalledPolicy {
            shadow: None,
            ..installed.clone()
        };
        self.swap_policy(&mut installed, next).await?;
        Ok(Some(shadow.version))
    }
}

/// The policy set to start with, and what the start did to the store.
#[derive(Debug)]
pub struct StartPolicy {
    /// The compiled active version.
    pub bundle: Arc<PolicyBundle>,
    /// Its number.
    pub version: u64,
    /// The version stored at start (first start, or a watched directory that
    /// changed while the server was down), for the audit log.
    pub stored: Option<AuditRecord>,
    /// The shadow candidate, if one is set.
    pub shadow: Option<(Arc<PolicyBundle>, u64)>,
}

/// Chooses the version to start with. The store's active version decides:
/// pushes and rollbacks outlive restarts. The policy directory is stored as
/// version 1 on first start; when it is watched, the directory is the source
/// of truth, so a directory that differs from the active version is stored
/// as a new version.
pub async fn start_policy(
    store: &Store,
    dir_sources: &PolicySources,
    watched: bool,
) -> Result<StartPolicy, PolicyChangeError> {
    let state = store.policy_state().await?;
    let stored_bundle = match state.active {
        Some(active) => {
            let row = store.policy_version(active).await?;
            let sources = PolicySources::from_files(
                PathBuf::from(format!("<version {active}>")),
                &row.files,
            )?;
            Some((active, PolicyBundle::compile(&sources)?))
        }
        None => None,
    };
    let message = match stored_bundle {
        None => format!("initial policy directory {}", dir_sources.origin.display()),
        Some((version, bundle))
            if !watched || bundle.content_hash() == dir_sources.content_hash() =>
        {
            return Ok(StartPolicy {
                bundle: Arc::new(bundle),
                version,
                stored: None,
                shadow: load_shadow(store, state.shadow).await,
            });
        }
        Some((version, _)) => format!(
            "watched directory {} differs from version {version} at start",
            dir_sources.origin.display()
        ),
    };
    let bundle = PolicyBundle::compile(dir_sources)?;
    let author = if watched { WATCH_AUTHOR } else { "serve" };
    let version = store
        .add_policy_version(
            &NewPolicyVersion {
                hash: bundle.content_hash(),
                author,
                created_ms: now_ms(),
                message: &message,
                files: &dir_sources.to_files(),
            },
            PolicySlot::Active,
        )
        .await?;
    let record = change_record(author, "policy.push", version, Outcome::Allow, None);
    Ok(StartPolicy {
        bundle: Arc::new(bundle),
        version,
        stored: Some(record),
        // Storing an active version dropped any candidate.
        shadow: None,
    })
}

/// The stored shadow candidate; one that no longer compiles is dropped with
/// a warning (it never decides anything, so starting without it is safe).
async fn load_shadow(store: &Store, shadow: Option<u64>) -> Option<(Arc<PolicyBundle>, u64)> {
    let version = shadow?;
    let compiled = match store.policy_version(version).await {
        Ok(row) => {
            PolicySources::from_files(PathBuf::from(format!("<version {version}>")), &row.files)
                .and_then(|s| PolicyBundle::compile(&s))
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match compiled {
        Ok(bundle) => Some((Arc::new(bundle), version)),
        Err(e) => {
            tracing::warn!(version, error = %e, "the shadow candidate cannot be loaded; shadow evaluation is off");
            None
        }
    }
}

/// The audit record of a policy change made outside the admin API.
fn change_record(
    principal: &str,
    action: &str,
    version: u64,
    outcome: Outcome,
    error: Option<ErrorCode>,
) -> AuditRecord {
    AuditRecord {
        time_ms: now_ms(),
        kind: RecordKind::Admin,
        request_id: RequestId::new().to_string(),
        principal: Some(principal.to_string()),
        action: action.to_string(),
        resource: Some("policy".to_string()),
        outcome,
        error_code: error.map(|c| c.as_str().to_string()),
        status: error.map_or(200, |c| c.http_status()),
        policy_version: (version > 0).then_some(version),
        ..AuditRecord::default()
    }
}

/// How often the watcher looks at the directory.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Watches `dir` until `shutdown`: every `interval` it hashes the directory's
/// contents, and when they changed (and then held still for one interval) it
/// pushes them as a new version. A change
/// that does not compile or fit is refused (logged and audited once per
/// distinct content) and the running version stays.
pub async fn watch_dir(
    gateway: Arc<Gateway>,
    sink: AuditSink,
    dir: PathBuf,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_seen: Option<String> = None;
    let mut pending: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let read_dir = dir.clone();
        let sources = match tokio::task::spawn_blocking(move || PolicySources::read_dir(&read_dir))
            .await
        {
            Ok(Ok(sources)) => sources,
            Ok(Err(e)) => {
                // A directory caught mid-edit (a file renamed away) is retried next tick.
                tracing::debug!(error = %e, dir = %dir.display(), "cannot read the watched policy directory");
                continue;
            }
            Err(_) => continue,
        };
        let hash = sources.content_hash();
        if last_seen.as_deref() == Some(hash.as_str()) {
            continue;
        }
        // Act only on content that held still for one interval: an editor or
        // a `git checkout` passes through states (a file removed, the next
        // not yet written) that must never decide traffic.
        if pending.as_deref() != Some(hash.as_str()) {
            pending = Some(hash);
            continue;
        }
        last_seen = pending.take();
        let _ = install_dir(
            &gateway,
            &sink,
            sources,
            WATCH_AUTHOR,
            format!("policy directory {} changed", dir.display()),
        )
        .await;
    }
}

/// Pushes the policy set read from a directory as the active version, as the
/// watcher and SIGHUP do: the result is logged and audited (a refusal too),
/// and `policy_load_failed` readiness follows it. On a refusal the running
/// version stays.
pub async fn install_dir(
    gateway: &Gateway,
    sink: &AuditSink,
    sources: PolicySources,
    author: &str,
    message: String,
) -> Result<PolicyChange, PolicyChangeError> {
    let origin = sources.origin.clone();
    let push = PolicyPush {
        files: sources.to_files(),
        author: author.to_string(),
        message,
        shadow: false,
    };
    let result = gateway.push_policy(push).await;
    gateway
        .metrics()
        .readiness
        .set(NotReady::PolicyLoadFailed, result.is_err());
    match &result {
        Ok(change) if change.unchanged => {}
        Ok(change) => {
            tracing::info!(version = change.version, previous = change.previous, hash = %change.hash, author, "policy directory changed: new version installed");
            sink.submit(change_record(
                author,
                "policy.push",
                change.version,
                Outcome::Allow,
                None,
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, dir = %origin.display(), running = gateway.policy_version(), author, "policy directory change refused; the running version stays");
            sink.submit(change_record(
                author,
                "policy.push",
                0,
                Outcome::Deny,
                Some(e.code()),
            ));
        }
    }
    result
}

/// Most records one what-if replays.
pub const WHATIF_MAX: u32 = 200_000;
/// Most changed requests one what-if lists (all are counted).
pub const WHATIF_LISTED: usize = 1_000;

/// A recorded request whose decision the candidate would change.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct WhatIfChange {
    /// When it was made, ms since the epoch.
    pub time_ms: i64,
    /// Its request id.
    pub request_id: String,
    /// The agent.
    pub agent: String,
    /// The recorded action: the HTTP method, `mcp:<json-rpc method>`,
    /// `complete`, `embed` or `list_models`.
    pub action: String,
    /// The recorded resource: the route, `<route>/<tool>` (prompt, resource
    /// URI) for MCP, `<route>/<model>` for models.
    pub resource: String,
    /// The path.
    pub path: String,
    /// What the audit record says happened (`allow` / `deny`).
    pub recorded: String,
    /// The active version's decision on the recorded facts.
    pub active_allowed: bool,
    /// Its deciding policies.
    pub active_policies: Vec<String>,
    /// The candidate's decision.
    pub candidate_allowed: bool,
    /// Its deciding policies.
    pub candidate_policies: Vec<String>,
    /// An MCP `tools/call` or `prompts/get`: the record does not keep the
    /// arguments, so both versions decided it with none (`context.args`
    /// empty). A policy on the arguments may decide the real call otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub args_unknown: bool,
    /// `list_models`: the models the active version shows the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_models: Option<Vec<String>>,
    /// `list_models`: the models the candidate would show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_models: Option<Vec<String>>,
}

/// What a replay found.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct WhatIfReport {
    /// The active version it was compared with.
    pub active: u64,
    /// Requests re-decided.
    pub replayed: u64,
    /// Requests left out: refused before authorization (no agent, route or
    /// model), or not asking policy at all (MCP `initialize`, `ping`).
    pub skipped: u64,
    /// Records of decided requests that cannot be replayed, by reason (see
    /// [`NotReplayable`]); counted, never guessed at.
    pub not_replayable: BTreeMap<&'static str, u64>,
    /// Replayed MCP `tools/call` and `prompts/get` messages, decided without
    /// their arguments (the record does not keep them).
    pub args_unknown: u64,
    /// Allowed by the active version, denied by the candidate.
    pub allow_to_deny: u64,
    /// Denied by the active version, allowed by the candidate.
    pub deny_to_allow: u64,
    /// `list_models` requests whose visible models would differ.
    pub models_changed: u64,
    /// More records than [`WHATIF_MAX`] matched; the oldest were replayed.
    pub truncated: bool,
    /// The changed requests (at most [`WHATIF_LISTED`]).
    pub changes: Vec<WhatIfChange>,
}

/// Why a record of a decided request cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReplayable {
    /// An MCP batch: the record names the batch, not its messages.
    McpBatch,
    /// MCP `completion/complete`: the record does not say whether a prompt
    /// or a resource template was completed.
    McpCompletion,
    /// The record's action or resource has a form this version does not know.
    Unknown,
    /// The route of an MCP or model record is no longer configured.
    RouteGone,
}

impl NotReplayable {
    /// The key in [`WhatIfReport::not_replayable`].
    pub fn as_str(self) -> &'static str {
        match self {
            NotReplayable::McpBatch => "mcp_batch",
            NotReplayable::McpCompletion => "mcp_completion",
            NotReplayable::Unknown => "unknown_action",
            NotReplayable::RouteGone => "route_gone",
        }
    }
}

impl Gateway {
    /// Re-decides the recorded requests since `since_ms` with the active
    /// version and with the candidate `files`, on the same recorded facts and
    /// today's agents, routes, models and grants, and lists every request
    /// whose decision would change: HTTP requests (with `use_secret` on
    /// routes with a credential, as the gateway asks it), MCP messages, model
    /// requests and `list_models` (the visible models). Facts the record
    /// does not keep are replayed as their defaults: the content guard's
    /// score (only its finding types are kept), delegation, posture, risk,
    /// and MCP arguments (those replays are flagged `args_unknown`).
    pub async fn whatif(
        &self,
        files: &BTreeMap<String, String>,
        since_ms: i64,
    ) -> Result<WhatIfReport, PolicyChangeError> {
        let sources = PolicySources::from_files(PathBuf::from("<what-if>"), files)?;
        let bundle = Arc::new(PolicyBundle::compile(&sources)?);
        let candidate = self.candidate_snapshot(&bundle).await?;
        let active = self.snapshot();
        let (records, truncated) = self
            .store
            .audit_requests_since(since_ms, WHATIF_MAX)
            .await?;
        let mut report = WhatIfReport {
            active: active.policy_version,
            replayed: 0,
            skipped: 0,
            not_replayable: BTreeMap::new(),
            args_unknown: 0,
            allow_to_deny: 0,
            deny_to_allow: 0,
            models_changed: 0,
            truncated,
            changes: Vec::new(),
        };
        for record in &records {
            let replay = match Replay::of(record, &self.timezone, &self.routes) {
                Ok(Some(replay)) => replay,
                Ok(None) => {
                    report.skipped += 1;
                    continue;
                }
                Err(why) => {
                    *report.not_replayable.entry(why.as_str()).or_default() += 1;
                    continue;
                }
            };
            report.replayed += 1;
            report.args_unknown += u64::from(replay.args_unknown);
            let was = replay.verdict(&active.authorizer);
            let would = replay.verdict(&candidate.authorizer);
            // A listing changes when the visible models do; a request
            // when its allow or deny does (not merely its reasons).
            let changed = match (&was.models, &would.models) {
                (Some(a), Some(b)) => a != b,
                _ => was.allowed != would.allowed,
            };
            if !changed {
                continue;
            }
            if was.models.is_some() {
                report.models_changed += 1;
            } else if was.allowed {
                report.allow_to_deny += 1;
            } else {
                report.deny_to_allow += 1;
            }
            if report.changes.len() < WHATIF_LISTED {
                report.changes.push(WhatIfChange {
                    time_ms: record.time_ms,
                    request_id: record.request_id.clone(),
                    agent: record.principal.clone().unwrap_or_default(),
                    action: record.action.clone(),
                    resource: record.resource.clone().unwrap_or_default(),
                    path: record.path.clone().unwrap_or_default(),
                    recorded: match record.outcome {
                        portcullis_audit::Outcome::Allow => "allow".into(),
                        portcullis_audit::Outcome::Deny => "deny".into(),
                    },
                    active_allowed: was.allowed,
                    active_policies: was.policies,
                    candidate_allowed: would.allowed,
                    candidate_policies: would.policies,
                    args_unknown: replay.args_unknown,
                    active_models: was.models,
                    candidate_models: would.models,
                });
            }
        }
        Ok(report)
    }
}

/// One version's answer to a replayed request.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    allowed: bool,
    policies: Vec<String>,
    /// `list_models`: the visible models.
    models: Option<Vec<String>>,
}

/// What a record asked, rebuilt from its fields.
enum Asking {
    Http(portcullis_policy::HttpAction),
    Mcp(portcullis_policy::McpAction, String),
    Model(portcullis_policy::ModelAction),
    /// `GET /v1/models`, or `GET /v1/models/<name>` (one model).
    ListModels(Option<String>),
}

/// A recorded request, ready to be decided again.
struct Replay {
    agent: String,
    asking: Asking,
    route: String,
    /// The MCP target or the model; empty otherwise.
    target: String,
    classification: portcullis_core::Classification,
    path: String,
    source_ip: portcullis_policy::SourceIp,
    time: portcullis_policy::RequestTime,
    findings: Vec<String>,
    caller: portcullis_policy::CallerFacts,
    /// The vault secrets of today's route, asked `use_secret` in order after
    /// an allow (HTTP and model requests).
    secrets: Vec<String>,
    /// An MCP message with arguments the record does not keep.
    args_unknown: bool,
}

impl Replay {
    /// `Ok(None)` for records of requests refused before authorization or
    /// not asking policy; `Err` for decided requests that cannot be rebuilt.
    fn of(
        record: &AuditRecord,
        zone: &crate::config::PolicyTimeZone,
        routes: &crate::route::RouteTable,
    ) -> Result<Option<Replay>, NotReplayable> {
        use portcullis_policy::{AuthMethod, CallerFacts, HttpAction, McpAction, ModelAction};
        let listing = record.action == "list_models";
        // `list_models` records no policies: each model is decided on its own.
        if record.policies.is_empty() && !listing {
            return Ok(None);
        }
        let (Some(agent), Some(resource)) =
            (record.principal.as_deref(), record.resource.as_deref())
        else {
            return Ok(None);
        };
        let Some(ip) = record
            .source_ip
            .as_deref()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        else {
            return Ok(None);
        };
        let path = record.path.clone().unwrap_or_else(|| "/".into());
        let split = |id: &str| -> Result<(String, String), NotReplayable> {
            id.split_once('/')
                .map(|(r, t)| (r.to_string(), t.to_string()))
                .ok_or(NotReplayable::Unknown)
        };
        let (asking, route, target) = if let Some(a) = HttpAction::from_method(&record.action) {
            (Asking::Http(a), resource.to_string(), String::new())
        } else if let Some(method) = record.action.strip_prefix("mcp:") {
            let action = match method {
                "tools/call" => McpAction::CallTool,
                "tools/list" => McpAction::ListTools,
                "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                    McpAction::ReadResource
                }
                "resources/list" | "resources/templates/list" => McpAction::ListResources,
                "prompts/get" => McpAction::GetPrompt,
                "prompts/list" => McpAction::ListPrompts,
                "completion/complete" => return Err(NotReplayable::McpCompletion),
                m if m.starts_with("batch(") => return Err(NotReplayable::McpBatch),
                _ => return Err(NotReplayable::Unknown),
            };
            let (route, target) = match action {
                McpAction::ListTools | McpAction::ListResources | McpAction::ListPrompts => {
                    (resource.to_string(), String::new())
                }
                _ => split(resource)?,
            };
            (Asking::Mcp(action, method.to_string()), route, target)
        } else if listing {
            // `GET <prefix>/v1/models/<name>` asks about one model.
            let one = path
                .split_once("/v1/models/")
                .map(|(_, name)| name.to_string())
                .filter(|name| !name.is_empty());
            (Asking::ListModels(one), resource.to_string(), String::new())
        } else {
            let action = match record.action.as_str() {
                "complete" => ModelAction::Complete,
                "embed" => ModelAction::Embed,
                _ => return Err(NotReplayable::Unknown),
            };
            let (route, model) = split(resource)?;
            (Asking::Model(action), route, model)
        };
        let config = routes.routes().find(|r| r.name == route);
        // An HTTP request on a route that is gone is decided (and denied)
        // as the gateway would decide it; the other kinds need the route's
        // classification or models.
        let classification = match (&asking, config) {
            (_, Some(config)) => config.classification,
            (Asking::Http(_), None) => portcullis_core::Classification::Public,
            (_, None) => return Err(NotReplayable::RouteGone),
        };
        let secrets = match (&asking, config.and_then(|c| c.credential.as_ref())) {
            (Asking::Http(_) | Asking::Model(_), Some(credential)) => credential.secrets.clone(),
            _ => Vec::new(),
        };
        let findings: Vec<String> = record
            .content
            .iter()
            .filter(|f| f.direction == "request")
            .map(|f| f.kind.clone())
            .collect();
        let mut caller = CallerFacts::mtls();
        // Token-authenticated requests record `<agent> token jti=… cnf=…`.
        if record
            .credential
            .as_deref()
            .is_some_and(|c| c.contains(" token jti="))
        {
            caller.auth.method = AuthMethod::Token;
        }
        let args_unknown = matches!(
            asking,
            Asking::Mcp(McpAction::CallTool | McpAction::GetPrompt, _)
        );
        Ok(Some(Replay {
            agent: agent.to_string(),
            asking,
            route,
            target,
            classification,
            path,
            source_ip: portcullis_policy::SourceIp::new(ip),
            time: zone.request_time(record.time_ms.div_euclid(1000)),
            findings,
            caller,
            secrets,
            args_unknown,
        }))
    }

    /// Decides the request with `authz` as the gateway does.
    fn verdict(&self, authz: &portcullis_policy::Authorizer) -> Verdict {
        use portcullis_policy::{
            AuthzRequest, Content, HttpAction, McpRequest, ModelAction, ModelRequest, SecretRequest,
        };
        let findings: Vec<&str> = self.findings.iter().map(String::as_str).collect();
        let flagged = findings.contains(&"prompt_injection");
        let content = if findings.is_empty() {
            Content::NOT_SCANNED
        } else {
            Content {
                scanned: true,
                injection_score: if flagged { 1.0 } else { 0.0 },
                injection_flagged: flagged,
                findings: &findings,
            }
        };
        let model = |action, model: &str, method| {
            authz.decide_model(&ModelRequest {
                agent: &self.agent,
                action,
                route: &self.route,
                model,
                method,
                path: &self.path,
                source_ip: &self.source_ip,
                time: self.time,
                content,
                caller: &self.caller,
            })
        };
        let (decision, method) = match &self.asking {
            Asking::Http(action) => (
                authz.decide(&AuthzRequest {
                    agent: &self.agent,
                    action: *action,
                    route: &self.route,
                    path: &self.path,
                    source_ip: &self.source_ip,
                    time: self.time,
                    content,
                    caller: &self.caller,
                }),
                *action,
            ),
            Asking::Mcp(action, method) => {
                let d = authz.decide_mcp(&McpRequest {
                    agent: &self.agent,
                    action: *action,
                    route: &self.route,
                    classification: self.classification,
                    method,
                    target: &self.target,
                    args: &[],
                    path: &self.path,
                    content,
                    source_ip: &self.source_ip,
                    time: self.time,
                    caller: &self.caller,
                });
                return Verdict {
                    allowed: d.allowed,
                    policies: d.policy_ids,
                    models: None,
                };
            }
            Asking::Model(action) => (
                model(*action, &self.target, HttpAction::Post),
                HttpAction::Post,
            ),
            Asking::ListModels(one) => {
                // As `GET /v1/models` does: `complete`, method GET, unscanned.
                let visible: Vec<String> = authz
                    .route_models(&self.route)
                    .into_iter()
                    .filter(|m| one.as_deref().is_none_or(|one| one == *m))
                    .filter(|m| {
                        authz
                            .decide_model(&ModelRequest {
                                agent: &self.agent,
                                action: ModelAction::Complete,
                                route: &self.route,
                                model: m,
                                method: HttpAction::Get,
                                path: &self.path,
                                source_ip: &self.source_ip,
                                time: self.time,
                                content: Content::NOT_SCANNED,
                                caller: &self.caller,
                            })
                            .allowed
                    })
                    .map(str::to_string)
                    .collect();
                return Verdict {
                    allowed: true,
                    policies: Vec::new(),
                    models: Some(visible),
                };
            }
        };
        let mut verdict = Verdict {
            allowed: decision.allowed,
            policies: decision.policy_ids,
            models: None,
        };
        if !verdict.allowed || self.secrets.is_empty() {
            return verdict;
        }
        // As inject does: the first secret policy lets the agent use, else a denial
        // naming every secret's deciding policies.
        let mut denied = Vec::new();
        for secret in &self.secrets {
            let d = authz.decide_secret(&SecretRequest {
                agent: &self.agent,
                secret,
                route: &self.route,
                method,
                path: &self.path,
                source_ip: &self.source_ip,
                time: self.time,
                content,
                caller: &self.caller,
            });
            if d.allowed {
                verdict.policies.extend(d.policy_ids);
                return verdict;
            }
            for id in d.policy_ids {
                if !denied.contains(&id) {
                    denied.push(id);
                }
            }
        }
        verdict.allowed = false;
        verdict.policies.extend(denied);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use portcullis_core::Classification;
    use portcullis_policy::{
        AgentEntity, Authorizer, DEFAULT_SCHEMA, ModelEntity, PolicyBundle, PolicySources,
        RouteEntity,
    };

    use super::*;
    use crate::config::{Credential, Injection, RouteConfig, RouteKind, Upstream};
    use crate::route::RouteTable;

    fn authorizer(policies: &str) -> Authorizer {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![("t.cedar".into(), policies.into())],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let route = |name: &str| RouteEntity {
            name: name.into(),
            classification: Classification::Internal,
            owner: String::new(),
            tags: Vec::new(),
        };
        let model = |name: &str| ModelEntity {
            route: "llm".into(),
            name: name.into(),
            version: String::new(),
            status: "approved".into(),
            classification: Classification::Internal,
        };
        Authorizer::new(
            bundle,
            &[AgentEntity {
                name: "dev-bot".into(),
                roles: vec!["dev".into()],
            }],
            &[route("files"), route("llm"), route("api")],
        )
        .unwrap()
        .with_models(&[model("gpt"), model("big")])
        .unwrap()
    }

    fn routes() -> RouteTable {
        let route = |name: &str, kind, credential: Option<&str>| RouteConfig {
            name: name.into(),
            kind,
            path_prefix: format!("/{name}"),
            upstream: Upstream::BuiltinDemo,
            classification: Classification::Internal,
            guard: Default::default(),
            credential: credential.map(|secret| Credential {
                secrets: vec![secret.into()],
                injection: Injection::Query("key".into()),
            }),
            capture: None,
            audit_fail_open: false,
            durability: None,
            llm: None,
            owner: String::new(),
            tags: Vec::new(),
        };
        RouteTable::new(&[
            route("files", RouteKind::Mcp, None),
            route("llm", RouteKind::Llm, Some("llm-key")),
            route("api", RouteKind::Http, Some("api-key")),
        ])
    }

    fn record(action: &str, resource: &str, path: &str, policies: &[&str]) -> AuditRecord {
        AuditRecord {
            time_ms: 1_700_000_000_000,
            kind: RecordKind::Request,
            request_id: "r".into(),
            principal: Some("dev-bot".into()),
            source_ip: Some("127.0.0.1".into()),
            action: action.into(),
            resource: Some(resource.into()),
            path: Some(path.into()),
            outcome: Outcome::Allow,
            policies: policies.iter().map(|p| p.to_string()).collect(),
            ..AuditRecord::default()
        }
    }

    /// One record replayed under `active` and `candidate`: "skipped",
    /// "not replayable: <reason>", or each version's verdict.
    fn check(active: &Authorizer, candidate: &Authorizer, record: &AuditRecord, expect: &str) {
        let zone = crate::config::PolicyTimeZone::default();
        let got = match Replay::of(record, &zone, &routes()) {
            Ok(None) => "skipped".to_string(),
            Err(why) => format!("not replayable: {}", why.as_str()),
            Ok(Some(replay)) => {
                let show = |v: Verdict| match v.models {
                    Some(models) => format!("models [{}]", models.join(",")),
                    None => format!(
                        "{} [{}]",
                        if v.allowed { "allow" } else { "deny" },
                        v.policies.join(",")
                    ),
                };
                format!(
                    "{} -> {}{}",
                    show(replay.verdict(active)),
                    show(replay.verdict(candidate)),
                    if replay.args_unknown {
                        " (args unknown)"
                    } else {
                        ""
                    }
                )
            }
        };
        assert_eq!(got, expect, "{} {:?}", record.action, record.resource);
    }

    const ACTIVE: &str = r#"
@id("tools") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"files");
@id("list") permit(principal in Role::"dev", action == Action::"list_tools", resource == Route::"files");
@id("docs") permit(principal in Role::"dev", action == Action::"read_resource", resource in Route::"files");
@id("models") permit(principal in Role::"dev", action in [Action::"complete", Action::"embed"], resource in Route::"llm");
@id("keys") permit(principal, action == Action::"use_secret", resource);
@id("http") permit(principal, action in Action::"read", resource);
"#;

    const CANDIDATE: &str = r#"
@id("tools") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"files")
  when { resource.name != "delete_file" };
@id("tmp-only") forbid(principal, action == Action::"call_tool", resource == Tool::"files/read_file")
  unless { context.args.hasTag("path") };
@id("docs") permit(principal in Role::"dev", action == Action::"read_resource", resource in Route::"files")
  when { resource.name like "docs://*" };
@id("gpt-only") permit(principal in Role::"dev", action == Action::"complete", resource == Model::"llm/gpt");
@id("llm-key") permit(principal, action == Action::"use_secret", resource == Secret::"llm-key");
@id("http") permit(principal, action in Action::"read", resource);
"#;

    #[test]
    fn replays_mcp_model_listing_and_secret_records() {
        let (active, candidate) = (authorizer(ACTIVE), authorizer(CANDIDATE));
        let check = |r: &AuditRecord, expect: &str| check(&active, &candidate, r, expect);
        let mcp = |method: &str, resource: &str| {
            record(&format!("mcp:{method}"), resource, "/files", &["x"])
        };
        check(
            &mcp("tools/call", "files/delete_file"),
            "allow [tools] -> deny [default-deny] (args unknown)",
        );
        // Replayed without its arguments: the candidate's forbid on them applies.
        check(
            &mcp("tools/call", "files/read_file"),
            "allow [tools] -> deny [tmp-only] (args unknown)",
        );
        check(
            &mcp("tools/list", "files"),
            "allow [list] -> deny [default-deny]",
        );
        check(
            &mcp("resources/read", "files/docs://a/b"),
            "allow [docs] -> allow [docs]",
        );
        check(
            &mcp("resources/read", "files/file:///etc/hosts"),
            "allow [docs] -> deny [default-deny]",
        );
        check(
            &mcp("completion/complete", "files/summary"),
            "not replayable: mcp_completion",
        );
        check(
            &record("mcp:batch(2)", "files", "/files", &["x"]),
            "not replayable: mcp_batch",
        );
        check(&record("mcp:initialize", "files", "/files", &[]), "skipped");
        check(
            &mcp("tools/call", "gone/echo"),
            "not replayable: route_gone",
        );
        // Models, with `use_secret` on the route's credential after an allow.
        check(
            &record("complete", "llm/gpt", "/llm/v1/chat/completions", &["x"]),
            "allow [models,keys] -> allow [gpt-only,llm-key]",
        );
        check(
            &record("embed", "llm/gpt", "/llm/v1/embeddings", &["x"]),
            "allow [models,keys] -> deny [default-deny]",
        );
        // The listing records no policies; the visible models are compared.
        check(
            &record("list_models", "llm", "/llm/v1/models", &[]),
            "models [gpt,big] -> models [gpt]",
        );
        check(
            &record("list_models", "llm", "/llm/v1/models/big", &[]),
            "models [big] -> models []",
        );
        // HTTP on a route with a credential: the route's decision, then the secret's.
        check(
            &record("GET", "api", "/api/x", &["x"]),
            "allow [http,keys] -> deny [http,default-deny]",
        );
        check(
            &record("GET", "files", "/files/x", &["x"]),
            "allow [http] -> allow [http]",
        );
    }
}
