//! Behavioral analytics in the gateway: the glue between the request path and
//! the pure engine (`portcullis-analytics`).
//!
//! ```text
//! Recorder::drop ──try_send──▶ bounded queue ──▶ analytics task (owns Engine)
//!   (request path, never waits)                    │  observe → Verdict
//!                                                  ├─▶ RiskBoard (atomics) ◀── contain / authorize
//!                                                  ├─▶ on quarantine: end the agent's MCP sessions
//!                                                  ├─▶ alerts: store, audit log, signed webhook
//!                                                  └─▶ every 30 s: model state + risk history → store
//! ```
//!
//! **Cluster mode** (PostgreSQL): the baselines are shared. Every
//! [`SHARE_EVERY`] the task merges what each agent's model learned since its
//! last merge into the agent's shared row (`Store::merge_models`, under the
//! cluster write lock: the union of familiar sets, the new baseline
//! samples, the step of the peak rate; hour counts only at the save
//! interval), adopts the result, and reads back the rows other replicas
//! merged, which it adopts plus what it learned since. A benign verdict is
//! stored with the alert; each replica reads the verdicts recorded since it
//! last looked and forgives the agent (its risk resets, what it held back is
//! learned); the replica that recorded it merges at once and announces it
//! (`analytics`), so the others need not wait for their next cycle. All of
//! it runs here, off the request path: a request never waits on the
//! database for analytics. The sliding windows (rates, denial bursts) and
//! the risk score stay per replica.
//!
//! The request path only ever does a `try_send` (a full queue drops the
//! observation and counts it in `portcullis_analytics_dropped_observations`) and reads the board; everything that touches the
//! store runs in the one task, which takes the queue every 20 ms (so no
//! request wakes it). A verdict is on the board as soon as its event is
//! processed, well under the 1 s the design asks for.
//!
//! **Memory** holds a bounded working set of models, not every agent ever
//! seen: a revoked agent's model leaves at once (`Analytics::forget`, from
//! the gateway's reload), an idle one after `[analytics] idle_agent_seconds`,
//! and beyond `max_agents` the least recently seen ones (down to 90 %, so a
//! stream of new agents does not evict at each one). A model leaves only
//! once it is saved (merged, in cluster mode), so nothing learnt is lost,
//! and only at grade normal unless its agent is revoked: a decaying risk
//! stays in its model, a quarantine on the board and in the store. An
//! agent not in memory is read back from the store at its next
//! observation.

pub mod board;
pub mod config;
pub mod webhook;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_analytics::{
    AgentState, AgentSummary, Alert, AlertReason, Engine, Event, Features, Grade, N_FEATURES,
    RuleHit, stable_hash,
};
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_core::{ErrorCode, RequestId};
use portcullis_store::{AlertRow, Change, RiskPoint, Store, StoreError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::audit_sink::AuditSink;
use board::RiskBoard;
use config::AnalyticsConfig;
use webhook::Webhook;

/// Observations queued for the task before new ones are dropped.
const QUEUE: usize = 65_536;

/// How often the task takes the observations queued since the last time.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// Request ids kept per agent as an alert's evidence.
const EVIDENCE: usize = 32;

/// Cluster mode: how often the task merges what its models learned into
/// the shared baselines and reads back the others' merges (module docs).
pub const SHARE_EVERY: Duration = Duration::from_secs(2);

/// Cluster mode: how far before the newest merge it saw a replica reads the
/// shared rows again. Merges are stamped under the cluster write lock, so
/// their stamps follow their commit order; this only covers a database
/// clock stepped back.
const SHARE_SLACK_MS: i64 = 1_000;

/// Cluster mode: how far back a replica looks for benign verdicts (stamped
/// with the resolving replica's clock, which may run behind its own).
const VERDICT_SLACK_MS: i64 = 60_000;

/// One completed request, as the task sees it.
#[derive(Debug)]
struct Observation {
    agent: String,
    request_id: String,
    event: Event,
}

/// The request path's handle: hands completed records to the task.
#[derive(Debug, Clone)]
pub struct AnalyticsTap {
    tx: mpsc::Sender<Observation>,
    /// `portcullis_analytics_dropped_observations`.
    dropped: prometheus_client::metrics::counter::Counter,
}

impl AnalyticsTap {
    /// Offers a completed data-plane record, or a launched process's event
    /// (a sandbox violation counts as a refusal). Never waits: when the
    /// queue is full the observation is dropped and counted.
    pub fn offer(&self, record: &AuditRecord) {
        if record.kind == RecordKind::Admin {
            return;
        }
        let Some(agent) = &record.principal else {
            return;
        };
        let observation = Observation {
            agent: agent.clone(),
            request_id: record.request_id.clone(),
            event: event_of(record),
        };
        if self.tx.try_send(observation).is_err() {
            self.dropped.inc();
        }
    }
}

/// The features of a record. Resources are the route and the first two path
/// segments below it (a dataset, not each row of it).
fn event_of(record: &AuditRecord) -> Event {
    let route = record.resource.as_deref().unwrap_or("-");
    let path = record.path.as_deref().unwrap_or("");
    let end = path
        .match_indices('/')
        .nth(3)
        .map_or(path.len(), |(i, _)| i);
    let write = !matches!(record.action.as_str(), "GET" | "HEAD");
    Event {
        time_ms: record.time_ms,
        resource: stable_hash(&[route.as_bytes(), &path.as_bytes()[..end]]),
        operation: stable_hash(&[record.action.as_bytes(), route.as_bytes()]),
        write,
        // A call waiting for a human's approval is not a refusal: counting
        // it would let an agent held at approve-writes climb to harsher
        // grades by asking, however honest its writes.
        denied: record.outcome == Outcome::Deny
            && (matches!(record.status, 401 | 403 | 429) || record.kind == RecordKind::Process)
            && record.error_code.as_deref() != Some(ErrorCode::ApprovalRequired.as_str()),
        error: record.status >= 500,
        bytes_in: record.bytes_in,
        bytes_out: record.bytes_out,
        classification: match record.classification.as_deref() {
            Some("restricted") => 3,
            Some("confidential") => 2,
            Some("internal") => 1,
            _ => 0,
        },
        source_ip: stable_hash(&[record.source_ip.as_deref().unwrap_or("").as_bytes()]),
        content_hits: record.content.len() as u32,
    }
}

enum Control {
    Release(String, oneshot::Sender<()>),
    Benign(i64, String, Features, oneshot::Sender<()>),
    SyncShared(oneshot::Sender<Result<(), StoreError>>),
    Summary(String, oneshot::Sender<Option<AgentSummary>>),
    SyncQuarantines(oneshot::Sender<Result<(), StoreError>>),
    Forget(Vec<String>),
}

/// Called with an agent's name when it enters quarantine, once its grade
/// is on the board (the gateway ends its live MCP sessions).
pub type OnQuarantine = Box<dyn Fn(&str) + Send + Sync>;

/// Where the quarantine hook is kept, shared by the handle and the task.
#[derive(Default)]
struct HookSlot(OnceLock<OnQuarantine>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSlot")
    }
}

/// Analytics as the gateway and the admin API see it.
#[derive(Debug)]
pub struct Analytics {
    board: Arc<RiskBoard>,
    tap: AnalyticsTap,
    control: mpsc::Sender<Control>,
    config: AnalyticsConfig,
    on_quarantine: Arc<HookSlot>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

/// The task's handle: [`AnalyticsTask::finish`] saves the models and stops.
#[derive(Debug)]
pub struct AnalyticsTask {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl AnalyticsTask {
    /// Saves model state and stops the task.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starting analytics failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// Reading the saved models or quarantines failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The webhook key file cannot be read.
    #[error("cannot read the analytics webhook key `{path}`: {source}")]
    WebhookKey {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The webhook's HMAC key, read from its file. `serve` reads it before
/// binding any port, so a missing key stops start-up early.
#[derive(Clone)]
pub struct WebhookKey(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(<redacted>)")
    }
}

impl WebhookKey {
    /// Reads the key file named by `[analytics] webhook_secret_file`, if any.
    pub fn load(config: &AnalyticsConfig) -> Result<Option<WebhookKey>, AnalyticsError> {
        let Some((_, path)) = &config.webhook else {
            return Ok(None);
        };
        let key = std::fs::read(path).map_err(|source| AnalyticsError::WebhookKey {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Some(WebhookKey(zeroize::Zeroizing::new(key))))
    }
}

impl Analytics {
    /// Loads the saved models and quarantines and starts the task.
    pub async fn start(
        config: AnalyticsConfig,
        webhook_key: Option<WebhookKey>,
        store: Store,
        sink: AuditSink,
        metrics: &crate::metrics::Metrics,
        upstream_tls: rustls::ClientConfig,
    ) -> Result<(Arc<Analytics>, AnalyticsTask), AnalyticsError> {
        let webhook = match (&config.webhook, webhook_key) {
            (Some((uri, _)), Some(key)) => {
                let poster = Arc::new(crate::otlp::Poster::new(upstream_tls));
                Some(Arc::new(Webhook::new(uri.clone(), key.0.to_vec(), poster)))
            }
            _ => None,
        };
        let board = Arc::new(RiskBoard::default());
        let mut engine = Engine::new(config.engine.clone());
        let (agents, population) = store.models().await?;
        let quarantines = store.quarantines(None).await?;
        let held: HashSet<&str> = quarantines.iter().map(|q| q.agent.as_str()).collect();
        let mut states: Vec<(String, AgentState)> = Vec::with_capacity(agents.len());
        for (agent, json) in agents {
            match serde_json::from_str::<AgentState>(&json) {
                Ok(state) => states.push((agent, state)),
                // A model that no longer parses is relearned, not fatal.
                Err(e) => {
                    tracing::warn!(agent, error = %e, "saved analytics model unreadable; relearning")
                }
            }
        }
        // Memory holds the `max_agents` most recently seen, and every
        // quarantined agent; the others are read back when they return.
        states.sort_by_key(|(_, state)| std::cmp::Reverse(state.last_ms()));
        for (i, (agent, state)) in states.into_iter().enumerate() {
            if i < config.max_agents || held.contains(agent.as_str()) {
                engine.insert_agent(&agent, state);
            }
        }
        if let Some(json) = population {
            match serde_json::from_str::<Vec<Features>>(&json) {
                Ok(sample) => engine.set_population(sample),
                Err(e) => {
                    tracing::warn!(error = %e, "saved population model unreadable; relearning")
                }
            }
        }
        let now = now_ms();
        // Cluster mode: what was just loaded is the shared model; from here
        // on each model keeps what it learns until it is merged.
        let shared = store.is_postgres().then(|| {
            engine.share();
            Shared {
                seen_ms: 0,
                adopted: HashMap::new(),
                verdicts_since: now,
                verdicts: HashMap::new(),
            }
        });
        for q in &quarantines {
            engine.quarantine(&q.agent, now);
        }
        let agents: Vec<String> = engine.agents().map(str::to_string).collect();
        for agent in &agents {
            if let Some((risk, grade)) = engine.risk_at(agent, now) {
                board.publish(agent, risk, grade);
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let (control, control_rx) = mpsc::channel(64);
        let (stop, stopped) = watch::channel(false);
        let on_quarantine = Arc::new(HookSlot::default());
        metrics.analytics_agents.set(engine.len() as i64);
        let worker = Worker {
            max_agents: config.max_agents,
            idle_ms: i64::try_from(config.idle_agent.as_millis()).unwrap_or(i64::MAX),
            agents_gauge: metrics.analytics_agents.clone(),
            engine,
            board: board.clone(),
            on_quarantine: on_quarantine.clone(),
            store,
            sink,
            webhook,
            evidence: HashMap::new(),
            dirty: HashSet::new(),
            points: Vec::new(),
            last_point: HashMap::new(),
            shared,
        };
        let task = tokio::spawn(worker.run(rx, control_rx, stopped, config.save_every));
        let analytics = Arc::new(Analytics {
            board,
            tap: AnalyticsTap {
                tx,
                dropped: metrics.analytics_dropped.clone(),
            },
            control,
            config,
            on_quarantine,
        });
        Ok((analytics, AnalyticsTask { task, stop }))
    }

    /// The request path's handle.
    pub fn tap(&self) -> AnalyticsTap {
        self.tap.clone()
    }

    /// Published risk per agent.
    pub fn board(&self) -> &RiskBoard {
        &self.board
    }

    /// The validated settings.
    pub fn config(&self) -> &AnalyticsConfig {
        &self.config
    }

    /// Whether the agent is quarantined now.
    pub fn quarantined(&self, agent: &str) -> bool {
        self.board.risk(agent).1 == Grade::Quarantine
    }

    /// Whether the agent is quarantined and `route` is not on the allow-list.
    pub fn shuts_out(&self, agent: &str, route: &str) -> bool {
        self.quarantined(agent) && !self.config.quarantine_admits(route)
    }

    /// Sets what happens when an agent enters quarantine (once; later calls
    /// are ignored). Runs on the analytics task: it must not wait.
    pub fn on_quarantine(&self, hook: OnQuarantine) {
        let _ = self.on_quarantine.0.set(hook);
    }

    /// Lifts the agent's quarantine in the model and on the board. The caller
    /// has recorded the release in the store.
    pub async fn release(&self, agent: &str) {
        let (reply, wait) = oneshot::channel();
        if self
            .control
            .send(Control::Release(agent.to_string(), reply))
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// Drops the in-memory models of agents gone for good (revoked), each
    /// saved first; their quarantines stay on the board. Never waits: with
    /// the task's control queue full they leave at an idle pass instead.
    pub fn forget(&self, agents: Vec<String>) {
        if !agents.is_empty() {
            let _ = self.control.try_send(Control::Forget(agents));
        }
    }

    /// Cluster mode: takes the quarantines and releases other replicas
    /// stored (after a change announcement, and at every full resync).
    pub async fn sync_quarantines(&self) -> Result<(), StoreError> {
        let (reply, wait) = oneshot::channel();
        if self
            .control
            .send(Control::SyncQuarantines(reply))
            .await
            .is_err()
        {
            return Ok(());
        }
        wait.await.unwrap_or(Ok(()))
    }

    /// Cluster mode: merges what this replica's models learned into the
    /// shared baselines, adopts the other replicas' merges and applies the
    /// benign verdicts recorded since (after an `analytics` announcement,
    /// and at every full resync). A no-op on one node.
    pub async fn sync_shared(&self) -> Result<(), StoreError> {
        let (reply, wait) = oneshot::channel();
        if self.control.send(Control::SyncShared(reply)).await.is_err() {
            return Ok(());
        }
        wait.await.unwrap_or(Ok(()))
    }

    /// A benign verdict on alert `alert_id`: the alert's features widen the
    /// agent's baseline. In cluster mode the widened model is merged into
    /// the shared one before this returns; the caller announces it.
    pub async fn benign(&self, alert_id: i64, agent: &str, features: Features) {
        let (reply, wait) = oneshot::channel();
        if self
            .control
            .send(Control::Benign(
                alert_id,
                agent.to_string(),
                features,
                reply,
            ))
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// The agent's baseline summary, if analytics knows it.
    pub async fn summary(&self, agent: &str) -> Option<AgentSummary> {
        let (reply, wait) = oneshot::channel();
        self.control
            .send(Control::Summary(agent.to_string(), reply))
            .await
            .ok()?;
        wait.await.ok().flatten()
    }

    /// Returns once the analytics task has finished the observation it was
    /// handling: it publishes a quarantine on the board (enforcement never
    /// waits on disk) before it stores the quarantine's row, and it takes
    /// control messages only between observations, so after this round trip
    /// a quarantine seen on the board is also in the store.
    pub async fn settled(&self, agent: &str) {
        let _ = self.summary(agent).await;
    }
}

/// The features of an alert's stored detail, for a benign verdict.
pub fn alert_features(detail: &serde_json::Value) -> Option<Features> {
    let list = detail.get("features")?.as_array()?;
    let mut f = [0.0f32; N_FEATURES];
    if list.len() != N_FEATURES {
        return None;
    }
    for (slot, pair) in f.iter_mut().zip(list) {
        *slot = pair.get(1)?.as_f64()? as f32;
    }
    Some(f)
}

struct Worker {
    engine: Engine,
    /// Models kept in memory at most (`[analytics] max_agents`).
    max_agents: usize,
    /// An agent idle this long leaves memory (ms).
    idle_ms: i64,
    /// `portcullis_analytics_agents`.
    agents_gauge: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
    board: Arc<RiskBoard>,
    on_quarantine: Arc<HookSlot>,
    store: Store,
    sink: AuditSink,
    webhook: Option<Arc<Webhook>>,
    evidence: HashMap<String, VecDeque<String>>,
    dirty: HashSet<String>,
    points: Vec<RiskPoint>,
    /// Last risk point written per agent: (time, risk, grade).
    last_point: HashMap<String, (i64, f32, Grade)>,
    /// Cluster mode: what this replica has read of the shared baselines.
    shared: Option<Shared>,
}

/// What a replica has taken from the shared baselines and verdicts.
struct Shared {
    /// The newest merge stamp read (the database's clock, ms).
    seen_ms: i64,
    /// Per agent (`""`: the population), the stamp of the merge adopted.
    adopted: HashMap<String, i64>,
    /// Benign verdicts are looked for from here, less [`VERDICT_SLACK_MS`]
    /// (this replica's start, then the newest verdict read).
    verdicts_since: i64,
    /// The verdicts applied already, by id: when each was recorded (those
    /// older than the slack are forgotten: they are not read again).
    verdicts: HashMap<i64, i64>,
}

impl Worker {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Observation>,
        mut control: mpsc::Receiver<Control>,
        mut stop: watch::Receiver<bool>,
        save_every: Duration,
    ) {
        // The queue is drained on a short tick rather than awaited: a task
        // waiting on the queue would be woken by every request's `try_send`
        // and run right after it on the same worker, so each request would
        // pay for a wake-up and the engine's work before the connection's next
        // read. Every DRAIN_EVERY the observations that arrived are taken
        // together; risk still reaches the board well within the 1 s the
        // design asks for.
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut decay = tokio::time::interval(Duration::from_secs(1));
        let mut save = tokio::time::interval(save_every);
        let mut share = tokio::time::interval(SHARE_EVERY);
        share.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.tick() => {
                    loop {
                        match rx.try_recv() {
                            Ok(observation) => self.observe(observation).await,
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                self.save().await;
                                return;
                            }
                        }
                    }
                }
                Some(c) = control.recv() => self.control(c).await,
                _ = decay.tick() => self.decay(),
                _ = save.tick() => {
                    self.save().await;
                    self.evict_idle().await;
                }
                _ = share.tick(), if self.shared.is_some() => {
                    if let Err(e) = self.share(false).await {
                        tracing::warn!(error = %e, "cannot share analytics baselines with the other replicas; retrying");
                    }
                }
                _ = stop.changed() => break,
            }
        }
        while let Ok(observation) = rx.try_recv() {
            self.observe(observation).await;
        }
        self.save().await;
    }

    /// Publishes an agent's risk and grade; on entering quarantine, runs the
    /// hook after the grade is on the board, so a request or stream that
    /// looks at the board afterwards sees the quarantine.
    fn publish(&self, agent: &str, risk: f32, grade: Grade) {
        let before = self.board.risk(agent).1;
        self.board.publish(agent, risk, grade);
        if grade == Grade::Quarantine
            && before != Grade::Quarantine
            && let Some(hook) = self.on_quarantine.0.get()
        {
            hook(agent);
        }
    }

    async fn observe(&mut self, o: Observation) {
        let new = !self.engine.knows(&o.agent);
        if new && let Err(e) = self.load(&o.agent).await {
            // Learning into a fresh model would overwrite the saved one.
            tracing::warn!(agent = %o.agent, error = %e, "cannot read a saved analytics model; observation dropped");
            return;
        }
        let verdict = self.engine.observe(&o.agent, &o.event);
        self.publish(&o.agent, verdict.risk, verdict.grade);
        let evidence = self.evidence.entry(o.agent.clone()).or_default();
        if evidence.len() == EVIDENCE {
            evidence.pop_front();
        }
        evidence.push_back(o.request_id);
        if !self.dirty.contains(&o.agent) {
            self.dirty.insert(o.agent.clone());
        }
        self.point(&o.agent, o.event.time_ms, verdict.risk, verdict.grade);
        if let Some(alert) = verdict.alert {
            self.raise(alert).await;
        }
        if new {
            if self.engine.len() > self.max_agents {
                self.evict_least_recent().await;
            }
            self.agents_gauge.set(self.engine.len() as i64);
        }
    }

    /// Reads back the saved model of an agent not in memory (one evicted,
    /// or not loaded at start). When the store cannot be read, the caller
    /// learns nothing into a fresh model that the next save would write
    /// over the saved one.
    async fn load(&mut self, agent: &str) -> Result<(), StoreError> {
        let json = self.store.model(agent).await?;
        match json.as_deref().map(serde_json::from_str::<AgentState>) {
            None => {}
            // Cluster mode: the row is the shared model (risk is per replica).
            Some(Ok(state)) if self.shared.is_some() => self.engine.adopt_shared(agent, state),
            Some(Ok(state)) => self.engine.insert_agent(agent, state),
            Some(Err(e)) => {
                tracing::warn!(agent, error = %e, "saved analytics model unreadable; relearning")
            }
        }
        // A quarantine outlives the model (a revoked agent's stays on the
        // board): the model read back must not grade it out of it.
        if self.board.risk(agent).1 == Grade::Quarantine {
            self.engine.quarantine(agent, now_ms());
        }
        Ok(())
    }

    /// Drops the models of agents idle longer than `idle_agent_seconds`,
    /// and of the least recently seen beyond `max_agents`.
    async fn evict_idle(&mut self) {
        let horizon = now_ms().saturating_sub(self.idle_ms);
        let idle = self.calm_agents(|seen| seen < horizon);
        self.evict(idle).await;
        if self.engine.len() > self.max_agents {
            self.evict_least_recent().await;
        }
    }

    /// Brings memory to 90 % of `max_agents` (so a stream of new agents
    /// does not evict at each one), least recently seen first.
    async fn evict_least_recent(&mut self) {
        let keep = (self.max_agents - self.max_agents / 10).max(1);
        let mut calm = self.calm_agents(|_| true);
        calm.sort_by_key(|a| self.engine.last_seen_ms(a));
        let over = self.engine.len().saturating_sub(keep);
        calm.truncate(over);
        self.evict(calm).await;
    }

    /// Agents at grade normal whose last request time passes `pick`: the
    /// only ones whose model may leave memory for idleness. An agent at a
    /// higher grade keeps its model (its risk decays in it); a quarantine
    /// lives in the store and on the board.
    fn calm_agents(&self, pick: impl Fn(i64) -> bool) -> Vec<String> {
        let now = now_ms();
        self.engine
            .agents()
            .filter(|a| {
                self.engine.last_seen_ms(a).is_some_and(&pick)
                    && self.board.risk(a).1 == Grade::Normal
                    && self
                        .engine
                        .risk_at(a, now)
                        .is_some_and(|(_, g)| g == Grade::Normal)
            })
            .map(str::to_string)
            .collect()
    }

    /// Saves what every model learned, then drops `agents`' models from
    /// memory; one whose save failed stays (nothing learned is lost) and
    /// goes at a later pass.
    async fn evict(&mut self, agents: Vec<String>) {
        if agents.is_empty() {
            return;
        }
        if !self.save().await {
            return;
        }
        let mut gone = Vec::with_capacity(agents.len());
        for agent in agents {
            let unsaved = if self.shared.is_some() {
                self.engine.unshared(&agent, true)
            } else {
                self.dirty.contains(&agent)
            };
            if unsaved || !self.engine.evict(&agent) {
                continue;
            }
            self.dirty.remove(&agent);
            self.evidence.remove(&agent);
            self.last_point.remove(&agent);
            if let Some(shared) = &mut self.shared {
                shared.adopted.remove(&agent);
            }
            gone.push(agent);
        }
        self.board.remove(&gone);
        self.agents_gauge.set(self.engine.len() as i64);
        tracing::debug!(
            evicted = gone.len(),
            kept = self.engine.len(),
            "analytics models left memory"
        );
    }

    /// Keeps a risk point when the grade changed, or the score moved by
    /// more than 0.05 and the last point is a minute old.
    fn point(&mut self, agent: &str, time_ms: i64, risk: f32, grade: Grade) {
        let keep = match self.last_point.get(agent) {
            None => risk > 0.0,
            Some(&(t, r, g)) => g != grade || ((risk - r).abs() > 0.05 && time_ms - t >= 60_000),
        };
        if keep {
            self.last_point
                .insert(agent.to_string(), (time_ms, risk, grade));
            self.points.push(RiskPoint {
                agent: agent.to_string(),
                time_ms,
                risk: f64::from(risk),
                grade: grade.as_str().to_string(),
            });
        }
    }

    async fn raise(&mut self, alert: Alert) {
        let request_ids: Vec<String> = self
            .evidence
            .get(&alert.agent)
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default();
        let detail = serde_json::json!({
            "reasons": alert.reasons,
            "features": alert.features,
        });
        let row = AlertRow {
            id: 0,
            agent: alert.agent.clone(),
            time_ms: alert.time_ms,
            grade: alert.grade.as_str().to_string(),
            risk: f64::from(alert.risk),
            detail: detail.to_string(),
            request_ids: serde_json::to_string(&request_ids).unwrap_or_else(|_| "[]".into()),
            verdict: None,
            resolved_at: None,
            resolved_by: None,
        };
        let id = match self.store.add_alert(&row).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(error = %e, agent = %alert.agent, "cannot store alert");
                None
            }
        };
        let mut reasons: Vec<String> = alert.reasons.iter().map(reason_name).collect();
        if let Some(id) = id {
            reasons.push(format!("alert:{id}"));
        }
        if let Some(trigger) = request_ids.last() {
            reasons.push(format!("request:{trigger}"));
        }
        tracing::warn!(agent = %alert.agent, grade = alert.grade.as_str(), risk = alert.risk, reasons = ?reasons, "analytics alert");
        self.audit("analytics.alert", &alert.agent, reasons.clone());
        if alert.grade == Grade::Quarantine {
            match self.store.quarantine(&alert.agent, alert.time_ms, id).await {
                // The other replicas (cluster mode) shut the agent out too.
                Ok(()) => {
                    if let Err(e) = self.store.notify_change(Change::Quarantine).await {
                        tracing::warn!(error = %e, agent = %alert.agent, "cannot announce a quarantine to the other replicas");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, agent = %alert.agent, "cannot store quarantine");
                }
            }
            self.audit("analytics.quarantine", &alert.agent, reasons);
        }
        if let Some(hook) = &self.webhook {
            let body = serde_json::json!({
                "type": "portcullis.alert",
                "id": id,
                "agent": alert.agent,
                "time_ms": alert.time_ms,
                "grade": alert.grade,
                "risk": alert.risk,
                "reasons": alert.reasons,
                "features": alert.features,
                "request_ids": request_ids,
            });
            hook.deliver(body.to_string());
        }
    }

    /// An audit record of what analytics did, with its reasons as the
    /// record's deciding `policies`.
    fn audit(&self, action: &str, agent: &str, reasons: Vec<String>) {
        self.sink.submit(AuditRecord {
            time_ms: now_ms(),
            kind: RecordKind::Admin,
            request_id: RequestId::new().to_string(),
            principal: Some("analytics".into()),
            action: action.to_string(),
            resource: Some(agent.to_string()),
            outcome: Outcome::Allow,
            policies: reasons,
            status: 200,
            ..AuditRecord::default()
        });
    }

    async fn control(&mut self, c: Control) {
        let now = now_ms();
        match c {
            Control::Release(agent, reply) => {
                self.release(&agent, now);
                let _ = reply.send(());
            }
            Control::SyncQuarantines(reply) => {
                let _ = reply.send(self.sync_quarantines(now).await);
            }
            Control::Benign(alert_id, agent, features, reply) => {
                self.engine.widen(&agent, &features, now);
                if let Some((risk, grade)) = self.engine.risk_at(&agent, now) {
                    self.publish(&agent, risk, grade);
                    self.point(&agent, now, risk, grade);
                }
                self.dirty.insert(agent);
                if let Some(shared) = &mut self.shared {
                    // Applied here already: not forgiven again when read back.
                    shared.verdicts.insert(alert_id, now);
                    if let Err(e) = self.share(false).await {
                        tracing::warn!(error = %e, "cannot share a benign verdict's baseline; the next merge shares it");
                    }
                }
                let _ = reply.send(());
            }
            Control::SyncShared(reply) => {
                let result = if self.shared.is_some() {
                    self.share(false).await
                } else {
                    Ok(())
                };
                let _ = reply.send(result);
            }
            Control::Summary(agent, reply) => {
                // A model out of memory is read back to be shown (and
                // leaves again at the next pass beyond `max_agents`).
                let loaded = !self.engine.knows(&agent) && self.load(&agent).await.is_ok();
                let _ = reply.send(self.engine.summary(&agent, now));
                if loaded && self.engine.len() > self.max_agents {
                    self.evict_least_recent().await;
                }
                self.agents_gauge.set(self.engine.len() as i64);
            }
            Control::Forget(agents) => {
                let known: Vec<String> = agents
                    .into_iter()
                    .filter(|a| self.engine.knows(a))
                    .collect();
                self.evict(known).await;
            }
        }
    }

    fn release(&mut self, agent: &str, now: i64) {
        self.engine.release(agent, now);
        self.publish(agent, 0.0, Grade::Normal);
        self.dirty.insert(agent.to_string());
        self.point(agent, now, 0.0, Grade::Normal);
    }

    /// Cluster mode: takes the quarantines other replicas stored, and the
    /// releases made through their admin API, as the start-up load does.
    /// Read here, between observations, so every quarantine this replica
    /// raised is already stored and cannot look released. A quarantine is
    /// lifted only when the store shows its release: one whose row this
    /// replica failed to write stays (fail closed).
    async fn sync_quarantines(&mut self, now: i64) -> Result<(), StoreError> {
        let held: HashSet<String> = self
            .store
            .quarantines(None)
            .await?
            .into_iter()
            .map(|q| q.agent)
            .collect();
        for agent in &held {
            if self.board.risk(agent).1 != Grade::Quarantine {
                if !self.engine.knows(agent) {
                    self.load(agent).await?;
                }
                self.engine.quarantine(agent, now);
                let risk = self.engine.risk_at(agent, now).map_or(1.0, |(r, _)| r);
                self.publish(agent, risk, Grade::Quarantine);
                self.point(agent, now, risk, Grade::Quarantine);
            }
        }
        let lifted: Vec<String> = self
            .engine
            .agents()
            .filter(|a| !held.contains(*a) && self.board.risk(a).1 == Grade::Quarantine)
            .map(str::to_string)
            .collect();
        for agent in lifted {
            let history = self.store.quarantines(Some(&agent)).await?;
            if history.last().is_some_and(|q| q.released_at.is_some()) {
                self.release(&agent, now);
            }
        }
        Ok(())
    }

    /// Publishes decayed scores, so a score falls without new traffic.
    fn decay(&mut self) {
        let now = now_ms();
        let mut changes = Vec::new();
        for agent in self.engine.agents() {
            let (published, _) = self.board.risk(agent);
            if published > 0.0
                && let Some((risk, grade)) = self.engine.risk_at(agent, now)
            {
                changes.push((
                    agent.to_string(),
                    if risk < 0.001 { 0.0 } else { risk },
                    grade,
                ));
            }
        }
        for (agent, risk, grade) in changes {
            self.publish(&agent, risk, grade);
            self.point(&agent, now, risk, grade);
        }
    }

    /// Cluster mode: merges the models that learned something worth
    /// sharing (with `counts_too`, hour counts too) into the shared
    /// baselines, then adopts the other replicas' merges and applies the
    /// benign verdicts recorded since (module docs).
    async fn share(&mut self, counts_too: bool) -> Result<(), StoreError> {
        let Some(shared) = &mut self.shared else {
            return Ok(());
        };
        let mut agents: Vec<String> = self
            .dirty
            .iter()
            .filter(|a| self.engine.unshared(a, counts_too))
            .cloned()
            .collect();
        agents.sort();
        let mut announce = false;
        if !agents.is_empty() {
            let engine = &self.engine;
            let mut merged: Vec<(String, AgentState)> = Vec::with_capacity(agents.len());
            let stamp = self
                .store
                .merge_models(&agents, |agent, stored| {
                    let stored = stored.and_then(|json| serde_json::from_str(json).ok());
                    let state = engine.merged_with(agent, stored)?;
                    let json = serde_json::to_string(&state).ok()?;
                    merged.push((agent.to_string(), state));
                    Some(json)
                })
                .await?;
            for (agent, state) in merged {
                self.engine.adopt_merged(&agent, state);
                self.dirty.remove(&agent);
                shared.adopted.insert(agent, stamp);
            }
            announce = true;
        }
        if self.engine.population_unshared() {
            let engine = &self.engine;
            let mut merged = None;
            let stamp = self
                .store
                .merge_population(|stored| {
                    let stored = stored.and_then(|json| serde_json::from_str(json).ok());
                    let sample = engine.merged_population(stored);
                    let json = serde_json::to_string(&sample).ok()?;
                    merged = Some(sample);
                    Some(json)
                })
                .await?;
            if let Some(sample) = merged {
                self.engine.adopt_population(sample, true);
                shared.adopted.insert(String::new(), stamp);
            }
        }
        // The others' merges, then their verdicts.
        for row in self
            .store
            .shared_models_since(shared.seen_ms - SHARE_SLACK_MS)
            .await?
        {
            shared.seen_ms = shared.seen_ms.max(row.updated_ms);
            if shared
                .adopted
                .get(&row.agent)
                .is_some_and(|t| *t >= row.updated_ms)
            {
                continue;
            }
            if row.agent.is_empty() {
                match serde_json::from_str::<Vec<Features>>(&row.state) {
                    Ok(sample) => self.engine.adopt_population(sample, false),
                    Err(e) => tracing::warn!(error = %e, "shared population model unreadable"),
                }
            } else {
                match serde_json::from_str::<AgentState>(&row.state) {
                    Ok(state) => self.engine.adopt_shared(&row.agent, state),
                    Err(e) => {
                        tracing::warn!(agent = %row.agent, error = %e, "shared analytics model unreadable")
                    }
                }
            }
            shared.adopted.insert(row.agent, row.updated_ms);
        }
        let now = now_ms();
        let verdicts = self
            .store
            .benign_verdicts_since(shared.verdicts_since - VERDICT_SLACK_MS)
            .await?;
        let mut forgiven = Vec::new();
        for (id, agent, at) in verdicts {
            shared.verdicts_since = shared.verdicts_since.max(at);
            if shared.verdicts.insert(id, at).is_none() {
                self.engine.forgive(&agent, now);
                forgiven.push(agent);
            }
        }
        let horizon = shared.verdicts_since - 2 * VERDICT_SLACK_MS;
        shared.verdicts.retain(|_, at| *at >= horizon);
        for agent in forgiven {
            if let Some((risk, grade)) = self.engine.risk_at(&agent, now) {
                self.publish(&agent, risk, grade);
                self.point(&agent, now, risk, grade);
            }
            // What it held back is shared at the next merge.
            self.dirty.insert(agent);
        }
        if announce && let Err(e) = self.store.notify_change(Change::Analytics).await {
            tracing::debug!(error = %e, "cannot announce a baseline merge");
        }
        Ok(())
    }

    /// Saves risk points and what the models learned; whether the models
    /// are all stored (a model that failed stays to be saved again).
    async fn save(&mut self) -> bool {
        if !self.points.is_empty() {
            let points = std::mem::take(&mut self.points);
            if let Err(e) = self.store.add_risk_points(&points).await {
                tracing::error!(error = %e, "cannot store risk history");
            }
        }
        if self.shared.is_some() {
            // Cluster mode: the shared rows are merged into, never
            // overwritten with this replica's copy.
            if let Err(e) = self.share(true).await {
                tracing::error!(error = %e, "cannot merge analytics models into the shared baselines");
                return false;
            }
            return true;
        }
        if self.dirty.is_empty() {
            return true;
        }
        let models: Vec<(String, String)> = self
            .dirty
            .iter()
            .filter_map(|agent| {
                let state = self.engine.agent_state(agent)?;
                serde_json::to_string(state)
                    .ok()
                    .map(|json| (agent.clone(), json))
            })
            .collect();
        let population = serde_json::to_string(self.engine.population_state()).ok();
        match self
            .store
            .save_models(&models, population.as_deref(), now_ms())
            .await
        {
            Ok(()) => {
                self.dirty.clear();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot save analytics models");
                false
            }
        }
    }
}

fn reason_name(r: &AlertReason) -> String {
    match r {
        AlertReason::Rule { hit } => match hit {
            RuleHit::DenialBurst { .. } => "rule:denial_burst".into(),
            RuleHit::RateSpike { .. } => "rule:rate_spike".into(),
            RuleHit::FirstRestricted { .. } => "rule:first_restricted".into(),
        },
        AlertReason::Anomaly { model, .. } => format!("anomaly:{model}"),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_events() {
        let record = AuditRecord {
            principal: Some("bot".into()),
            action: "POST".into(),
            resource: Some("data".into()),
            path: Some("/data/sets/42/rows/7".into()),
            status: 403,
            classification: Some("restricted".into()),
            ..AuditRecord::default()
        };
        let e = event_of(&record);
        assert!(e.write && e.denied && !e.error);
        // Held for approval: not a denial.
        let held = AuditRecord {
            error_code: Some("approval_required".into()),
            ..record.clone()
        };
        assert!(!event_of(&held).denied);
        assert_eq!(e.classification, 3);
        // Rows of one dataset are one resource.
        let other = AuditRecord {
            path: Some("/data/sets/42/rows/8".into()),
            ..record.clone()
        };
        assert_eq!(event_of(&other).resource, e.resource);
        let another = AuditRecord {
            path: Some("/data/sets/43/rows/8".into()),
            ..record
        };
        assert_ne!(event_of(&another).resource, e.resource);
    }
}
