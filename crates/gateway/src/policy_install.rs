//! Installing policy versions into the running data plane: push, rollback
//! and the shadow candidate swap a new snapshot in under the policy mutex,
//! and `whatif` re-decides recorded requests with a candidate. The versions'
//! vocabulary, the start-up choice and the directory watcher are
//! `portcullis_control::policy_versions`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use portcullis_audit::AuditRecord;
use portcullis_control::policy_versions::{
    NotReplayable, PolicyChange, PolicyChangeError, PolicyPush, WHATIF_LISTED, WHATIF_MAX,
    WhatIfChange, WhatIfReport, now_ms,
};
use portcullis_policy::{PolicyBundle, PolicySources};
use portcullis_store::{NewPolicyVersion, PolicySlot};

use crate::state::{Gateway, GatewayError, InstalledPolicy, InstalledShadow};

/// A policy set that does not fit this gateway's agents, routes or request
/// shape is refused as `invalid_policy`.
impl From<GatewayError> for PolicyChangeError {
    fn from(e: GatewayError) -> Self {
        PolicyChangeError::Unfit(Box::new(e))
    }
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
    /// Cluster mode: installs the active version and shadow candidate the
    /// store names, when another replica changed them (a push, rollback or
    /// shadow stop announced on the change channel, or the periodic
    /// resync). Compiled as at start; `true` when something changed.
    pub async fn resync_policy(&self) -> Result<bool, PolicyChangeError> {
        let state = self.store.policy_state().await?;
        let Some(active) = state.active else {
            return Ok(false);
        };
        let mut installed = self.policy.lock().await;
        let shadow_now = installed.shadow.as_ref().map(|s| s.version);
        if active == installed.version && state.shadow == shadow_now {
            return Ok(false);
        }
        let bundle = if active == installed.version {
            installed.bundle.clone()
        } else {
            let row = self.store.policy_version(active).await?;
            let sources = PolicySources::from_files(
                PathBuf::from(format!("<version {active}>")),
                &row.files,
            )?;
            Arc::new(PolicyBundle::compile(&sources)?)
        };
        let shadow = if state.shadow == shadow_now {
            installed.shadow.clone()
        } else {
            portcullis_control::policy_versions::load_shadow(&self.store, state.shadow)
                .await
                .map(|(bundle, version)| InstalledShadow {
                    bundle,
                    version,
                    stats: Default::default(),
                })
        };
        let next = InstalledPolicy {
            bundle,
            version: active,
            shadow,
        };
        self.swap_policy(&mut installed, next).await?;
        Ok(true)
    }

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
            let replay = match Replay::of(
                record,
                &candidate.routing.timezone,
                &candidate.routing.routes,
            ) {
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
    /// The datasets today's route (and, for a tool call, the tool) is
    /// tagged with: asked `read_data` after an allow, as the gateway does.
    datasets: Vec<String>,
    /// The purpose the call declared, as its record keeps it
    /// (`purpose:<value>` among its policies); "" when none.
    purpose: String,
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
                // Session plumbing, as the MCP adapter records it.
                "initialize" | "ping" | "logging/setLevel" => McpAction::Session,
                m if m.starts_with("notifications/") => McpAction::Notify,
                "reply" => McpAction::Reply,
                "GET" => McpAction::OpenStream,
                "DELETE" => McpAction::EndSession,
                "completion/complete" => return Err(NotReplayable::McpCompletion),
                m if m.starts_with("batch(") => return Err(NotReplayable::McpBatch),
                _ => return Err(NotReplayable::Unknown),
            };
            let (route, target) = match action.resource_type() {
                "Route" => (resource.to_string(), String::new()),
                _ => split(resource)?,
            };
            // A client's answer has no method (`context.method` "").
            let method = if action == McpAction::Reply {
                ""
            } else {
                method
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
            let cnf = |c: &str| record.credential.as_deref().is_some_and(|r| r.contains(c));
            caller.auth.method = if cnf(" cnf=none") {
                AuthMethod::Bearer
            } else if cnf(" cnf=dpop") {
                AuthMethod::DpopToken
            } else {
                AuthMethod::MtlsToken
            };
        }
        let args_unknown = matches!(
            asking,
            Asking::Mcp(McpAction::CallTool | McpAction::GetPrompt, _)
        );
        let datasets = match (&asking, config) {
            (_, None) | (Asking::ListModels(_), _) => Vec::new(),
            (Asking::Mcp(action, _), _) if action.is_plumbing() => Vec::new(),
            (asking, Some(config)) => {
                let tool = match asking {
                    Asking::Mcp(McpAction::CallTool, _) => config.tool_datasets.get(&target),
                    _ => None,
                };
                let mut out: Vec<String> = Vec::new();
                for d in config.datasets.iter().chain(tool.into_iter().flatten()) {
                    if !out.contains(d) {
                        out.push(d.clone());
                    }
                }
                out
            }
        };
        let purpose = record
            .policies
            .iter()
            .find_map(|p| p.strip_prefix(crate::pipeline::datasets::PURPOSE_MARK))
            .unwrap_or_default()
            .to_string();
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
            datasets,
            purpose,
        }))
    }

    /// The `read_data` questions of an allowed call, as the gateway asks
    /// them (`pipeline/datasets.rs`): `None` when every dataset may be
    /// read (`Some` lists what was decided), the refusal otherwise.
    fn read_data(
        &self,
        authz: &portcullis_policy::Authorizer,
        (action, method): (&str, portcullis_policy::HttpAction),
        content: portcullis_policy::Content<'_>,
    ) -> Result<Vec<String>, Vec<String>> {
        let mut read = Vec::new();
        for dataset in &self.datasets {
            if !authz.knows_dataset(dataset) {
                return Err(vec![format!("dataset:{dataset}:unregistered")]);
            }
            let d = authz.decide_dataset(&portcullis_policy::DatasetRequest {
                agent: &self.agent,
                dataset,
                route: &self.route,
                action,
                target: &self.target,
                purpose: &self.purpose,
                method,
                path: &self.path,
                source_ip: &self.source_ip,
                time: self.time,
                content,
                caller: &self.caller,
            });
            let named = d
                .policy_ids
                .iter()
                .map(|p| format!("dataset:{dataset}:{p}"));
            if !d.allowed {
                return Err(named.collect());
            }
            read.extend(named);
        }
        Ok(read)
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
                    revision: "",
                    target: &self.target,
                    args: &[],
                    path: &self.path,
                    content,
                    source_ip: &self.source_ip,
                    time: self.time,
                    caller: &self.caller,
                });
                let mut verdict = Verdict {
                    allowed: d.allowed,
                    policies: d.policy_ids,
                    models: None,
                };
                if verdict.allowed {
                    match self.read_data(authz, (action.as_str(), HttpAction::Post), content) {
                        Ok(read) => verdict.policies.extend(read),
                        Err(refused) => {
                            verdict.allowed = false;
                            verdict.policies = refused;
                        }
                    }
                }
                return verdict;
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
        if verdict.allowed {
            let action = match &self.asking {
                Asking::Model(action) => action.as_str(),
                _ => method.as_str(),
            };
            match self.read_data(authz, (action, method), content) {
                Ok(read) => verdict.policies.extend(read),
                Err(refused) => {
                    verdict.allowed = false;
                    verdict.policies = refused;
                    return verdict;
                }
            }
        }
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

    use portcullis_audit::{Outcome, RecordKind};

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
            registry: Default::default(),
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
            datasets: Vec::new(),
            tool_datasets: Default::default(),
            sandbox: None,
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
@id("no-stream") forbid(principal, action == Action::"open_stream", resource);
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
        // Session plumbing is decided, so it is replayed too.
        for method in ["initialize", "notifications/initialized", "reply", "DELETE"] {
            check(
                &mcp(method, "files"),
                "allow [builtin:mcp-plumbing] -> allow [builtin:mcp-plumbing]",
            );
        }
        check(
            &mcp("GET", "files"),
            "allow [builtin:mcp-plumbing] -> deny [no-stream]",
        );
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
