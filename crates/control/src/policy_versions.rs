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
use crate::plane::{DataPlane, PlaneError};
use crate::readiness::NotReady;

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
    Unfit(PlaneError),
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

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
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
pub async fn load_shadow(store: &Store, shadow: Option<u64>) -> Option<(Arc<PolicyBundle>, u64)> {
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

/// The audit record of a policy change made outside the admin API (the
/// directory watcher, a SIGHUP reload).
pub fn change_record(
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
    gateway: Arc<dyn DataPlane>,
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
            gateway.as_ref(),
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
    gateway: &dyn DataPlane,
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
