//! The engine: one per gateway, fed every completed request off the request
//! path. Per event it updates the agent's features, checks the rules, scores
//! the features against the agent's own forest (or the population's while the
//! agent is still learning), and folds the result into a decaying risk score
//! and a [`Grade`]. Normal-looking traffic is learned into the rolling baseline;
//! risky traffic is not, so an attacker cannot teach the model slowly while
//! flagged.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{Event, stable_hash};
use crate::features::{FEATURE_NAMES, Familiar, Features, N_FEATURES, Tracker};
use crate::forest::{IsolationForest, MAX_TREE_SAMPLE, MAX_TREES};
use crate::rng::Rng;
use crate::rules::{RuleHit, Rules};

/// The graded responses, mildest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    /// Nothing to do.
    #[default]
    Normal,
    /// Tell a human.
    Alert,
    /// Each write waits for a human's approval; reads are served.
    ApproveWrites,
    /// Rate-limit the agent.
    Throttle,
    /// Only reads are served.
    ReadOnly,
    /// Nothing is served (but the allow-list); lifted only by a human.
    Quarantine,
}

impl Grade {
    /// The grade's name as shown in alerts and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::Normal => "normal",
            Grade::Alert => "alert",
            Grade::ApproveWrites => "approve_writes",
            Grade::Throttle => "throttle",
            Grade::ReadOnly => "read_only",
            Grade::Quarantine => "quarantine",
        }
    }
}

/// Risk at or above which each grade applies. Must be non-decreasing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Alert a human.
    pub alert: f32,
    /// Hold writes for a human's approval.
    pub approve_writes: f32,
    /// Throttle.
    pub throttle: f32,
    /// Read-only.
    pub read_only: f32,
    /// Quarantine.
    pub quarantine: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            alert: 0.5,
            approve_writes: 0.6,
            throttle: 0.7,
            read_only: 0.8,
            quarantine: 0.95,
        }
    }
}

impl Thresholds {
    /// The grade a risk score earns.
    pub fn grade(&self, risk: f32) -> Grade {
        if risk >= self.quarantine {
            Grade::Quarantine
        } else if risk >= self.read_only {
            Grade::ReadOnly
        } else if risk >= self.throttle {
            Grade::Throttle
        } else if risk >= self.approve_writes {
            Grade::ApproveWrites
        } else if risk >= self.alert {
            Grade::Alert
        } else {
            Grade::Normal
        }
    }
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long an agent is learned before its own model scores it (ms).
    pub learning_ms: i64,
    /// Baseline samples an agent's own model needs, whatever the time.
    pub min_baseline: usize,
    /// One baseline sample per agent per this much event time (ms).
    pub sample_every_ms: i64,
    /// Baseline samples kept per agent (the rolling window).
    pub baseline_size: usize,
    /// Trees per forest.
    pub trees: usize,
    /// Points per tree.
    pub tree_sample: usize,
    /// New samples between retrainings of an agent's forest.
    pub retrain_every: usize,
    /// Half-life of the risk score (ms).
    pub half_life_ms: i64,
    /// Grades by risk.
    pub thresholds: Thresholds,
    /// Denials within 10 s that quarantine.
    pub denial_burst: u64,
    /// Rate spike factor over the baseline's requests per minute.
    pub spike_factor: f32,
    /// Requests per minute below which no rate is a spike.
    pub spike_min: u64,
    /// Anomaly score (forest) at which anomaly risk starts.
    pub anomaly_low: f32,
    /// Anomaly score at which anomaly risk reaches `anomaly_max_risk`.
    pub anomaly_high: f32,
    /// The most risk an anomaly score alone contributes. Below the quarantine
    /// threshold by default: a statistical surprise alone restricts, a human
    /// or a rule quarantines.
    pub anomaly_max_risk: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            learning_ms: 24 * 3_600_000,
            min_baseline: 64,
            // 512 samples then span 25.6 hours of steady traffic: a whole
            // day, so a bot's quiet night is judged against nights too, not
            // against the afternoon that filled a 8.5-hour baseline (at one
            // a minute, most false alerts in the evaluation were that).
            sample_every_ms: 180_000,
            baseline_size: 512,
            trees: 50,
            tree_sample: 128,
            retrain_every: 128,
            half_life_ms: 10 * 60_000,
            thresholds: Thresholds::default(),
            denial_burst: 100,
            spike_factor: 10.0,
            spike_min: 60,
            anomaly_low: 0.72,
            anomaly_high: 0.88,
            anomaly_max_risk: 0.9,
        }
    }
}

/// Anomaly risk below `anomaly_low`: a score there is within what normal
/// traffic shows, so it only ranks (it never reaches the alert threshold).
const SUB_THRESHOLD_RISK: f32 = 0.3;

impl Config {
    /// Maps a forest score to risk: 0 up to 0.5 (typical), rising to 0.3 at
    /// `anomaly_low`, then to `anomaly_max_risk` at `anomaly_high`.
    fn anomaly_risk(&self, score: f32) -> f32 {
        if score <= 0.5 {
            0.0
        } else if score < self.anomaly_low {
            SUB_THRESHOLD_RISK * (score - 0.5) / (self.anomaly_low - 0.5)
        } else {
            let t = ((score - self.anomaly_low) / (self.anomaly_high - self.anomaly_low)).min(1.0);
            SUB_THRESHOLD_RISK + t * (self.anomaly_max_risk - SUB_THRESHOLD_RISK)
        }
    }
}

/// A setting is out of range.
#[derive(Debug, thiserror::Error)]
#[error("analytics setting `{0}` is out of range: {1}")]
pub struct ConfigError(pub &'static str, pub &'static str);

impl Config {
    /// Checks the settings are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.thresholds;
        let all = [
            t.alert,
            t.approve_writes,
            t.throttle,
            t.read_only,
            t.quarantine,
        ];
        if all.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(ConfigError("thresholds", "each must be within 0.0..=1.0"));
        }
        if all.windows(2).any(|w| w[0] > w[1]) {
            return Err(ConfigError(
                "thresholds",
                "must not decrease from alert to quarantine",
            ));
        }
        if self.learning_ms < 0 || self.half_life_ms <= 0 || self.sample_every_ms <= 0 {
            return Err(ConfigError("durations", "must be positive"));
        }
        if self.denial_burst == 0 || self.spike_factor <= 1.0 {
            return Err(ConfigError(
                "rules",
                "denial_burst must be ≥ 1 and spike_factor > 1",
            ));
        }
        if !(1..=MAX_TREES).contains(&self.trees)
            || !(2..=MAX_TREE_SAMPLE).contains(&self.tree_sample)
            || self.baseline_size < self.min_baseline
        {
            return Err(ConfigError(
                "model",
                "needs trees within 1..=1024, tree_sample within 2..=256 and baseline_size ≥ min_baseline",
            ));
        }
        if self.anomaly_high <= self.anomaly_low {
            return Err(ConfigError(
                "anomaly",
                "anomaly_high must exceed anomaly_low",
            ));
        }
        Ok(())
    }
}

/// Why an alert was raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlertReason {
    /// A rule fired.
    Rule {
        /// The rule and its numbers.
        #[serde(flatten)]
        hit: RuleHit,
    },
    /// The anomaly detector scored the agent's behavior as unusual.
    Anomaly {
        /// The forest's score (0.5 typical, towards 1 anomalous).
        score: f32,
        /// Which model scored: `agent` or `population`.
        model: String,
        /// The features furthest from the baseline, most deviant first.
        drivers: Vec<Driver>,
    },
}

/// A feature that drove an anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Driver {
    /// The feature's name.
    pub feature: String,
    /// Its value now.
    pub value: f32,
    /// Its mean in the baseline.
    pub baseline_mean: f32,
}

/// An alert: the agent's grade went up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The agent.
    pub agent: String,
    /// When (event time, ms).
    pub time_ms: i64,
    /// The grade reached.
    pub grade: Grade,
    /// The risk score.
    pub risk: f32,
    /// Why.
    pub reasons: Vec<AlertReason>,
    /// The feature vector at the time, by name.
    pub features: Vec<(String, f32)>,
}

/// The engine's answer for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The agent's risk after the event.
    pub risk: f32,
    /// The grade in force (quarantine stays until released).
    pub grade: Grade,
    /// The raw anomaly score (0 when no model could score).
    pub anomaly: f32,
    /// Set when the grade rose to a level not yet alerted in this episode.
    pub alert: Option<Alert>,
}

/// What `agent show` says about a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSummary {
    /// Still learning: the population model scores it.
    pub learning: bool,
    /// First event seen (ms).
    pub first_seen_ms: i64,
    /// Baseline samples held.
    pub baseline_samples: usize,
    /// Known resources.
    pub known_resources: usize,
    /// Known call pairs.
    pub known_call_pairs: usize,
    /// Known source addresses.
    pub known_source_ips: usize,
    /// Hours of day (UTC) holding at least 1 % of the agent's traffic.
    pub active_hours_utc: Vec<u8>,
    /// Baseline peak requests per minute (95th percentile of the 10-second rate).
    pub baseline_peak_requests_per_min: f32,
    /// Current risk.
    pub risk: f32,
    /// Current grade.
    pub grade: Grade,
    /// Baseline mean of each feature.
    pub feature_means: Vec<(String, f32)>,
}

/// What is persisted per agent; the windows are not (they refill in minutes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    first_ms: i64,
    last_ms: i64,
    familiar: Familiar,
    baseline: Vec<Features>,
    /// Next slot of the ring `baseline`.
    cursor: usize,
    /// Peak requests per minute (see `track_peak_rate`).
    rate_1m: f32,
    risk: f32,
    risk_at_ms: i64,
    quarantined: bool,
    /// Baseline samples ever pushed, by every replica (cluster mode): how a
    /// replica tells how many samples others added since it last looked.
    #[serde(default)]
    pushed: u64,
}

impl AgentState {
    /// When the agent was last seen (event time, ms).
    pub fn last_ms(&self) -> i64 {
        self.last_ms
    }

    fn new(now_ms: i64) -> Self {
        AgentState {
            first_ms: now_ms,
            last_ms: now_ms,
            familiar: Familiar::default(),
            baseline: Vec::new(),
            cursor: 0,
            rate_1m: 0.0,
            risk: 0.0,
            risk_at_ms: now_ms,
            quarantined: false,
            pushed: 0,
        }
    }
}

/// Everything the engine persists: per-agent states and the population's sample.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineState {
    /// Per agent.
    pub agents: Vec<(String, AgentState)>,
    /// The population's baseline sample.
    pub population: Vec<Features>,
}

#[derive(Debug)]
struct AgentModel {
    state: AgentState,
    tracker: Tracker,
    forest: Option<IsolationForest>,
    new_samples: usize,
    last_sample_ms: i64,
    /// Highest grade already alerted in the current episode.
    alerted: Grade,
    /// Unfamiliar things seen while risky; a benign verdict learns them.
    pending: Vec<(Event, Option<u64>)>,
    last_features: Features,
    /// When the forest last scored this agent, and what it said.
    scored_ms: i64,
    anomaly: f32,
    /// Cluster mode: what was learned since the last merge with the shared
    /// model (`None` on one node, which never merges).
    delta: Option<Delta>,
    /// Cluster mode: the peak rate as last merged or adopted, so that the
    /// merge adds this replica's step to the shared value, not its value.
    rate_base: f32,
}

/// What an agent's model learned since it last merged with the shared model.
#[derive(Debug, Default)]
struct Delta {
    familiar: Familiar,
    samples: Vec<Features>,
}

/// The analytics engine. Not thread-safe by design: one task owns it.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    rules: Rules,
    agents: HashMap<String, AgentModel>,
    population: Vec<Features>,
    population_cursor: usize,
    population_forest: Option<IsolationForest>,
    population_new: usize,
    /// Event time of the population forest's last training (ms).
    population_trained_ms: i64,
    rng: Rng,
    hits: Vec<(RuleHit, f32)>,
    events: u64,
    population_rate: Option<f32>,
    /// Cluster mode ([`Engine::share`]): models keep what they learned since
    /// their last merge.
    shared: bool,
    /// Cluster mode: population samples added since the last merge.
    population_delta: Vec<Features>,
}

const POPULATION_SIZE: usize = 2_048;
/// Least event time between two trainings of the population forest (ms).
const POPULATION_RETRAIN_MS: i64 = 10 * 60_000;
/// Most one agent is scored by its forest per this much event time (ms).
const SCORE_EVERY_MS: i64 = 1_000;
const PENDING_MAX: usize = 256;

impl Engine {
    /// A fresh engine.
    pub fn new(config: Config) -> Self {
        Engine {
            rules: Rules {
                denial_burst: config.denial_burst,
                spike_factor: config.spike_factor,
                spike_min: config.spike_min,
            },
            config,
            agents: HashMap::new(),
            population: Vec::new(),
            population_cursor: 0,
            population_forest: None,
            population_new: 0,
            population_trained_ms: i64::MIN / 2,
            rng: Rng::new(0x5eed),
            hits: Vec::new(),
            events: 0,
            population_rate: None,
            shared: false,
            population_delta: Vec::new(),
        }
    }

    /// An engine restored from a persisted state; forests are rebuilt
    /// (deterministically) from the stored baselines.
    pub fn restore(config: Config, state: EngineState) -> Self {
        let mut engine = Engine::new(config);
        engine.population_cursor = state.population.len() % POPULATION_SIZE;
        engine.population = state.population;
        engine.retrain_population();
        for (name, state) in state.agents {
            let mut model = AgentModel::new(state, false);
            retrain_agent(&engine.config, &name, &mut model);
            engine.agents.insert(name, model);
        }
        engine.population_rate = engine.compute_population_rate();
        engine
    }

    /// The state to persist.
    pub fn state(&self) -> EngineState {
        EngineState {
            agents: self
                .agents
                .iter()
                .map(|(n, m)| (n.clone(), m.state.clone()))
                .collect(),
            population: self.population.clone(),
        }
    }

    /// The persisted state of one agent (to save only what changed).
    pub fn agent_state(&self, agent: &str) -> Option<&AgentState> {
        self.agents.get(agent).map(|m| &m.state)
    }

    /// The population's persisted sample.
    pub fn population_state(&self) -> &[Features] {
        &self.population
    }

    /// Restores one agent (used with [`Engine::set_population`] when state is
    /// stored per agent).
    pub fn insert_agent(&mut self, agent: &str, state: AgentState) {
        let mut model = AgentModel::new(state, self.shared);
        retrain_agent(&self.config, agent, &mut model);
        self.agents.insert(agent.to_string(), model);
    }

    /// Restores the population's sample.
    pub fn set_population(&mut self, sample: Vec<Features>) {
        self.population_cursor = sample.len() % POPULATION_SIZE;
        self.population = sample;
        self.retrain_population();
    }

    /// Takes one completed request of `agent` into account.
    pub fn observe(&mut self, agent: &str, event: &Event) -> Verdict {
        if !self.agents.contains_key(agent) {
            let state = AgentState {
                first_ms: event.time_ms,
                last_ms: event.time_ms,
                familiar: Familiar::default(),
                baseline: Vec::new(),
                cursor: 0,
                rate_1m: 0.0,
                risk: 0.0,
                risk_at_ms: event.time_ms,
                quarantined: false,
                pushed: 0,
            };
            self.agents
                .insert(agent.to_string(), AgentModel::new(state, self.shared));
        }
        self.events += 1;
        if self.events.is_multiple_of(4_096) {
            self.population_rate = self.compute_population_rate();
        }
        let population_rate = self.population_rate;
        let Some(model) = self.agents.get_mut(agent) else {
            // Inserted just above.
            return Verdict::default();
        };
        let config = &self.config;
        let (features, novelty) = model.tracker.observe(event, &model.state.familiar);
        model.last_features = features;
        model.state.last_ms = model.state.last_ms.max(event.time_ms);
        let learned = model.learned(config);

        // Rules first: they need no model.
        self.hits.clear();
        // No baseline at all (the first agent ever): no rate is a spike yet.
        let baseline_rate = if model.state.rate_1m > 0.0 && learned {
            Some(model.state.rate_1m)
        } else {
            population_rate
        };
        self.rules.check(
            &model.tracker,
            &novelty,
            &crate::rules::Facts {
                restricted: event.classification >= 3,
                had_restricted: model.state.familiar.restricted,
                baseline_1m: baseline_rate.map(|r| r.max(1.0)),
                learned,
            },
            &mut self.hits,
        );

        // Then the detector: the agent's own forest once it has learned.
        let (forest, which) = match (&model.forest, learned) {
            (Some(f), true) => (Some(f), "agent"),
            _ => (self.population_forest.as_ref(), "population"),
        };
        // The forest is the one costly step (its nodes are rarely in cache
        // with many agents): an agent is scored at most once a second, and
        // at once when something new shows (a resource, a call pair).
        // Rules and features still see every event.
        let fresh = event.time_ms - model.scored_ms >= SCORE_EVERY_MS
            || novelty.new_resource
            || novelty.novel_pair;
        let anomaly = if fresh {
            model.scored_ms = event.time_ms;
            model.anomaly = forest.map_or(0.0, |f| f.score(&features));
            model.anomaly
        } else {
            model.anomaly
        };
        let mut anomaly_risk = config.anomaly_risk(anomaly);
        if which == "population" {
            // A new agent unlike the others is worth a look, not a restriction:
            // the population model alone never goes past an alert.
            anomaly_risk = anomaly_risk.min(config.thresholds.alert);
        }
        // Recent denials count on their own, short of a burst.
        let denial_risk =
            (model.tracker.denies_10s() as f32 / config.denial_burst as f32).min(1.0) * 0.9;

        let elapsed = (event.time_ms - model.state.risk_at_ms).max(0) as f32;
        let decayed = model.state.risk * 0.5f32.powf(elapsed / config.half_life_ms as f32);
        let rule_risk = self.hits.iter().map(|h| h.1).fold(0.0, f32::max);
        let risk = decayed.max(anomaly_risk).max(denial_risk).max(rule_risk);
        model.state.risk = risk;
        model.state.risk_at_ms = event.time_ms;

        let mut grade = config.thresholds.grade(risk);
        if grade == Grade::Quarantine {
            model.state.quarantined = true;
        }
        if model.state.quarantined {
            grade = Grade::Quarantine;
        }

        let alert = if grade > model.alerted && grade >= Grade::Alert {
            model.alerted = grade;
            let mut reasons: Vec<AlertReason> = self
                .hits
                .iter()
                .map(|(hit, _)| AlertReason::Rule { hit: hit.clone() })
                .collect();
            if anomaly_risk >= SUB_THRESHOLD_RISK {
                reasons.push(AlertReason::Anomaly {
                    score: anomaly,
                    model: which.to_string(),
                    drivers: model.drivers(&features, &self.population),
                });
            }
            Some(Alert {
                agent: agent.to_string(),
                time_ms: event.time_ms,
                grade,
                risk,
                reasons,
                features: named(&features),
            })
        } else {
            None
        };
        if risk < config.thresholds.alert && !model.state.quarantined {
            // The episode is over: the next rise alerts again.
            model.alerted = Grade::Normal;
        }

        // Learn only what looks normal. While learning, the agent's own
        // traffic is its baseline unless a rule objects: otherwise an agent the
        // population model finds unusual would never get a model of its own.
        let mut sampled = None;
        if risk < config.thresholds.alert || (!learned && rule_risk < config.thresholds.alert) {
            model.learn(event, novelty.pair);
            if event.time_ms - model.last_sample_ms >= config.sample_every_ms {
                model.last_sample_ms = event.time_ms;
                // Once a sample, not per event: a spike must not teach the
                // baseline its own rate before the rule sees it.
                model.track_peak_rate();
                model.push_sample(features, config.baseline_size);
                sampled = Some(features);
            }
        } else {
            if model.pending.len() < PENDING_MAX {
                model.pending.push((event.clone(), novelty.pair));
            }
            // A restricted dataset is "first accessed" once: it is remembered
            // (as a resource only) so it does not alert on every read.
            if self
                .hits
                .iter()
                .any(|(h, _)| matches!(h, RuleHit::FirstRestricted { .. }))
            {
                model.state.familiar.resources.insert(event.resource);
                if let Some(delta) = &mut model.delta {
                    delta.familiar.resources.insert(event.resource);
                }
            }
        }
        let retrain = model.new_samples >= config.retrain_every
            || (model.forest.is_none() && model.state.baseline.len() >= config.min_baseline);
        let verdict = Verdict {
            risk,
            grade,
            anomaly,
            alert,
        };
        if retrain {
            retrain_agent(config, agent, model);
        }
        if let Some(sample) = sampled {
            self.push_population(sample, event.time_ms);
        }
        verdict
    }

    /// The risk and grade of `agent` at `now_ms` (decayed), without an event.
    pub fn risk_at(&self, agent: &str, now_ms: i64) -> Option<(f32, Grade)> {
        let m = self.agents.get(agent)?;
        let elapsed = (now_ms - m.state.risk_at_ms).max(0) as f32;
        let risk = m.state.risk * 0.5f32.powf(elapsed / self.config.half_life_ms as f32);
        let grade = if m.state.quarantined {
            Grade::Quarantine
        } else {
            self.config.thresholds.grade(risk)
        };
        Some((risk, grade))
    }

    /// Agents whose risk is not yet zero (for periodic decay publishing).
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }

    /// Marks `agent` quarantined (restored from the store), creating its
    /// model if it has none yet.
    pub fn quarantine(&mut self, agent: &str, now_ms: i64) {
        let shared = self.shared;
        let m = self
            .agents
            .entry(agent.to_string())
            .or_insert_with(|| AgentModel::new(AgentState::new(now_ms), shared));
        m.state.quarantined = true;
        m.alerted = Grade::Quarantine;
    }

    /// Lifts a quarantine; the risk starts again from zero.
    pub fn release(&mut self, agent: &str, now_ms: i64) {
        if let Some(m) = self.agents.get_mut(agent) {
            m.state.quarantined = false;
            m.state.risk = 0.0;
            m.state.risk_at_ms = now_ms;
            m.alerted = Grade::Normal;
            m.tracker = Tracker::default();
        }
    }

    /// A human judged an alert benign: what was held back is learned, the
    /// alert's feature vector joins the baseline (a few times, so behavior like
    /// it scores as normal), the rate baseline grows to cover it, and the risk
    /// resets.
    pub fn widen(&mut self, agent: &str, features: &Features, now_ms: i64) {
        let Some(mut m) = self.agents.remove(agent) else {
            return;
        };
        for (event, pair) in std::mem::take(&mut m.pending) {
            m.learn(&event, pair);
        }
        for _ in 0..8 {
            m.push_sample(*features, self.config.baseline_size);
        }
        let rate = features[0].exp_m1();
        m.state.rate_1m = m.state.rate_1m.max(rate / self.config.spike_factor * 2.0);
        m.state.quarantined = false;
        m.state.risk = 0.0;
        m.state.risk_at_ms = now_ms;
        m.alerted = Grade::Normal;
        retrain_agent(&self.config, agent, &mut m);
        self.agents.insert(agent.to_string(), m);
    }

    /// Cluster mode: from now on every model keeps what it learns until it
    /// is merged into the shared model ([`Engine::merged_with`]). Call it
    /// before the first event.
    pub fn share(&mut self) {
        self.shared = true;
        for m in self.agents.values_mut() {
            m.delta.get_or_insert_with(Delta::default);
        }
    }

    /// Cluster mode: the shared model of `agent` with what this replica
    /// learned since its last merge folded in (see `fold`), to be stored in
    /// place of `shared`; `None` when this replica does not know the agent.
    /// The risk fields are this replica's (each replica grades from its own
    /// risk; quarantines are shared through the store).
    pub fn merged_with(&self, agent: &str, shared: Option<AgentState>) -> Option<AgentState> {
        let m = self.agents.get(agent)?;
        let Some(mut merged) = shared else {
            return Some(m.state.clone());
        };
        fold(&mut merged, m, self.config.baseline_size);
        merged.risk = m.state.risk;
        merged.risk_at_ms = m.state.risk_at_ms;
        merged.quarantined = m.state.quarantined;
        Some(merged)
    }

    /// Cluster mode: `merged` (from [`Engine::merged_with`]) was stored;
    /// it is this replica's model now, and nothing is left unshared.
    pub fn adopt_merged(&mut self, agent: &str, merged: AgentState) {
        self.adopt(agent, merged, true);
    }

    /// Cluster mode: another replica merged into the shared model of
    /// `agent`; this replica's model becomes it, plus what this replica
    /// learned since its own last merge (still to be shared).
    pub fn adopt_shared(&mut self, agent: &str, shared: AgentState) {
        self.adopt(agent, shared, false);
    }

    fn adopt(&mut self, agent: &str, shared: AgentState, merged: bool) {
        let config = &self.config;
        let Some(m) = self.agents.get_mut(agent) else {
            // New here: risk starts at zero (each replica grades from its
            // own; a quarantine comes from the store).
            let mut state = shared;
            state.risk = 0.0;
            state.risk_at_ms = state.last_ms;
            state.quarantined = false;
            let mut model = AgentModel::new(state, self.shared);
            retrain_agent(config, agent, &mut model);
            self.agents.insert(agent.to_string(), model);
            return;
        };
        let shared_rate = shared.rate_1m;
        let mut next = shared;
        if !merged {
            fold(&mut next, m, config.baseline_size);
        }
        next.risk = m.state.risk;
        next.risk_at_ms = m.state.risk_at_ms;
        next.quarantined = m.state.quarantined;
        // Samples other replicas added count towards the next retraining,
        // as this replica's own do.
        let others = next.pushed.saturating_sub(m.state.pushed);
        m.new_samples += others as usize;
        m.state = next;
        if merged {
            if let Some(delta) = &mut m.delta {
                *delta = Delta::default();
            }
            m.rate_base = m.state.rate_1m;
        } else {
            m.rate_base = shared_rate;
        }
        if m.new_samples >= config.retrain_every
            || (m.forest.is_none() && m.state.baseline.len() >= config.min_baseline)
        {
            retrain_agent(config, agent, m);
        }
    }

    /// Whether `agent` learned something since its last merge that other
    /// replicas grade by: a sample, a resource, call pair or address, a
    /// first restricted read, a step of its peak rate; and, with
    /// `counts_too`, hour-of-day counts (which only shift, slowly, what
    /// counts as off hours).
    pub fn unshared(&self, agent: &str, counts_too: bool) -> bool {
        self.agents.get(agent).is_some_and(|m| {
            m.delta.as_ref().is_some_and(|d| {
                !d.samples.is_empty()
                    || d.familiar.knows_anything()
                    || (counts_too && d.familiar.counted_hours())
            }) || m.state.rate_1m != m.rate_base
        })
    }

    /// Whether the population gained samples since its last merge.
    pub fn population_unshared(&self) -> bool {
        !self.population_delta.is_empty()
    }

    /// Cluster mode: the shared population sample with the samples this
    /// replica added since its last merge, each in a slot picked by its own
    /// hash once the sample is full (so replicas agree without a shared
    /// random source).
    pub fn merged_population(&self, shared: Option<Vec<Features>>) -> Vec<Features> {
        let Some(mut merged) = shared else {
            return self.population.clone();
        };
        for sample in &self.population_delta {
            if merged.len() < POPULATION_SIZE {
                merged.push(*sample);
            } else {
                let bytes: Vec<u8> = sample.iter().flat_map(|v| v.to_le_bytes()).collect();
                let slot = (stable_hash(&[&bytes]) % POPULATION_SIZE as u64) as usize;
                merged[slot] = *sample;
            }
        }
        merged
    }

    /// Cluster mode: the population sample another replica (`mine` false)
    /// or this one merged. Its forest is retrained when it has none yet;
    /// otherwise on this replica's own schedule.
    pub fn adopt_population(&mut self, mut sample: Vec<Features>, mine: bool) {
        if mine {
            self.population_delta.clear();
        } else {
            for s in &self.population_delta {
                if sample.len() < POPULATION_SIZE {
                    sample.push(*s);
                }
            }
        }
        self.population_cursor = sample.len() % POPULATION_SIZE;
        self.population = sample;
        if self.population_forest.is_none() {
            self.retrain_population();
        }
    }

    /// Cluster mode: a benign verdict recorded through another replica. What
    /// this replica held back while the agent looked risky is learned (the
    /// alert's samples and rate come with the shared model, from the
    /// replica that recorded the verdict), and its risk resets.
    pub fn forgive(&mut self, agent: &str, now_ms: i64) {
        let Some(m) = self.agents.get_mut(agent) else {
            return;
        };
        for (event, pair) in std::mem::take(&mut m.pending) {
            m.learn(&event, pair);
        }
        m.state.quarantined = false;
        m.state.risk = 0.0;
        m.state.risk_at_ms = now_ms;
        m.alerted = Grade::Normal;
    }

    /// A summary of `agent`'s baseline.
    pub fn summary(&self, agent: &str, now_ms: i64) -> Option<AgentSummary> {
        let m = self.agents.get(agent)?;
        let (risk, grade) = self.risk_at(agent, now_ms)?;
        let hours = &m.state.familiar.hours;
        let total: u32 = hours.iter().sum();
        let mut means = [0.0f32; N_FEATURES];
        for s in &m.state.baseline {
            for (acc, v) in means.iter_mut().zip(s) {
                *acc += v;
            }
        }
        let n = m.state.baseline.len().max(1) as f32;
        means.iter_mut().for_each(|v| *v /= n);
        Some(AgentSummary {
            learning: !m.learned(&self.config),
            first_seen_ms: m.state.first_ms,
            baseline_samples: m.state.baseline.len(),
            known_resources: m.state.familiar.resources.len(),
            known_call_pairs: m.state.familiar.pairs.len(),
            known_source_ips: m.state.familiar.ips.len(),
            active_hours_utc: (0..hours.len())
                .filter(|h| total > 0 && hours[*h] * 100 >= total)
                .map(|h| h as u8)
                .collect(),
            baseline_peak_requests_per_min: m.state.rate_1m,
            risk,
            grade,
            feature_means: named(&means),
        })
    }

    /// The agent's latest feature vector.
    pub fn features(&self, agent: &str) -> Option<Features> {
        self.agents.get(agent).map(|m| m.last_features)
    }

    /// The rate baseline for agents still learning: the 90th percentile of
    /// the learned agents' rates. Recomputed every few thousand events, not per
    /// event, so observing stays O(1).
    fn compute_population_rate(&self) -> Option<f32> {
        let mut rates: Vec<f32> = self
            .agents
            .values()
            .filter(|m| m.state.rate_1m > 0.0 && m.learned(&self.config))
            .map(|m| m.state.rate_1m)
            .collect();
        if rates.is_empty() {
            return None;
        }
        // The busiest agents' rate: a new agent is not spiking for behaving
        // like any known one.
        rates.sort_by(f32::total_cmp);
        Some(rates[rates.len() * 9 / 10])
    }

    fn push_population(&mut self, sample: Features, time_ms: i64) {
        if self.shared && self.population_delta.len() < POPULATION_SIZE {
            self.population_delta.push(sample);
        }
        if self.population.len() < POPULATION_SIZE {
            self.population.push(sample);
        } else {
            // Reservoir-style replacement keeps every agent represented.
            let slot = self.rng.below(POPULATION_SIZE);
            self.population[slot] = sample;
        }
        self.population_cursor = (self.population_cursor + 1) % POPULATION_SIZE;
        self.population_new += 1;
        // Half the sample is new, and the last training is a while ago: with
        // many agents, half the sample renews in minutes, and a forest per
        // few minutes would cost more than all their own (the population
        // model changes slowly and only scores agents still learning).
        let due = self.population_new >= POPULATION_SIZE / 2
            && time_ms - self.population_trained_ms >= POPULATION_RETRAIN_MS;
        if due || (self.population_forest.is_none() && self.population.len() >= 64) {
            self.population_trained_ms = time_ms;
            self.retrain_population();
        }
    }

    fn retrain_population(&mut self) {
        self.population_new = 0;
        if self.population.len() < 64 {
            return;
        }
        self.population_forest = Some(IsolationForest::train(
            &self.population,
            self.config.trees,
            self.config.tree_sample,
            0x9091,
        ));
    }

    /// Drops `agent`'s model from memory (the caller saved it first, or
    /// the agent is gone for good). Whether it was there.
    pub fn evict(&mut self, agent: &str) -> bool {
        self.agents.remove(agent).is_some()
    }

    /// Whether the engine holds a model of `agent` in memory.
    pub fn knows(&self, agent: &str) -> bool {
        self.agents.contains_key(agent)
    }

    /// When `agent` was last seen (event time, ms), if its model is in memory.
    pub fn last_seen_ms(&self, agent: &str) -> Option<i64> {
        self.agents.get(agent).map(|m| m.state.last_ms)
    }

    /// Number of agents known.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is known yet.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

/// Rebuilds `agent`'s forest from its baseline (deterministically: the seed
/// is the agent's name), once the baseline is large enough.
fn retrain_agent(config: &Config, agent: &str, model: &mut AgentModel) {
    model.new_samples = 0;
    if model.state.baseline.len() < config.min_baseline {
        return;
    }
    model.forest = Some(IsolationForest::train(
        &model.state.baseline,
        config.trees,
        config.tree_sample,
        stable_hash(&[agent.as_bytes()]),
    ));
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            risk: 0.0,
            grade: Grade::Normal,
            anomaly: 0.0,
            alert: None,
        }
    }
}

impl AgentModel {
    fn new(state: AgentState, shared: bool) -> Self {
        AgentModel {
            delta: shared.then(Delta::default),
            rate_base: state.rate_1m,
            alerted: if state.quarantined {
                Grade::Quarantine
            } else {
                Grade::Normal
            },
            state,
            tracker: Tracker::default(),
            forest: None,
            new_samples: 0,
            last_sample_ms: i64::MIN / 2,
            pending: Vec::new(),
            last_features: [0.0; N_FEATURES],
            scored_ms: i64::MIN / 2,
            anomaly: 0.0,
        }
    }

    fn learned(&self, config: &Config) -> bool {
        self.state.last_ms - self.state.first_ms >= config.learning_ms
            && self.state.baseline.len() >= config.min_baseline
            && self.forest.is_some()
    }

    /// Tracks the 95th percentile of the agent's 10-second request rate (per
    /// minute) with a stochastic quantile estimate: up by 0.95 of a step when
    /// above, down by 0.05 when below. The spike rule compares against it, so
    /// an agent's normal bursts are not spikes.
    fn track_peak_rate(&mut self) {
        let rate = (self.tracker.requests_10s() * 6) as f32;
        let peak = &mut self.state.rate_1m;
        if *peak == 0.0 {
            *peak = rate;
            return;
        }
        let step = (*peak * 0.05).max(0.5);
        if rate > *peak {
            *peak += step * 0.95;
        } else {
            *peak = (*peak - step * 0.05).max(1.0);
        }
    }

    /// Takes `event` into the baseline's familiar sets (and, in cluster
    /// mode, into what the next merge shares).
    fn learn(&mut self, event: &Event, pair: Option<u64>) {
        self.state.familiar.learn(event, pair);
        if let Some(delta) = &mut self.delta {
            delta.familiar.learn(event, pair);
        }
    }

    fn push_sample(&mut self, sample: Features, capacity: usize) {
        push_ring(&mut self.state, sample, capacity);
        self.new_samples += 1;
        if let Some(delta) = &mut self.delta {
            if delta.samples.len() >= capacity {
                // Only the newest `capacity` can survive in the ring anyway.
                delta.samples.remove(0);
            }
            delta.samples.push(sample);
        }
    }

    /// The three features furthest from the baseline (in baseline standard
    /// deviations, floored at one unit so constant features still rank).
    fn drivers(&self, x: &Features, population: &[Features]) -> Vec<Driver> {
        let base = if self.state.baseline.len() >= 8 {
            &self.state.baseline[..]
        } else {
            population
        };
        let n = base.len().max(1) as f32;
        let mut ranked: Vec<(f32, Driver)> = (0..N_FEATURES)
            .map(|i| {
                let mean = base.iter().map(|s| s[i]).sum::<f32>() / n;
                let var = base.iter().map(|s| (s[i] - mean).powi(2)).sum::<f32>() / n;
                let scale = var.sqrt().max(crate::features::FEATURE_UNIT[i] * 0.5);
                (
                    (x[i] - mean).abs() / scale,
                    Driver {
                        feature: FEATURE_NAMES[i].to_string(),
                        value: x[i],
                        baseline_mean: mean,
                    },
                )
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.into_iter().take(3).map(|(_, d)| d).collect()
    }
}

/// Pushes a sample into a baseline ring of `capacity`.
fn push_ring(state: &mut AgentState, sample: Features, capacity: usize) {
    let b = &mut state.baseline;
    if b.len() < capacity {
        b.push(sample);
    } else {
        b[state.cursor % capacity] = sample;
    }
    state.cursor = (state.cursor + 1) % capacity;
    state.pushed += 1;
}

/// Folds into `shared` what `model` learned since its last merge: the
/// familiar sets' union and hour counts, its new samples pushed into the
/// shared ring, its step of the peak rate, the span of its events.
fn fold(shared: &mut AgentState, model: &AgentModel, capacity: usize) {
    shared.first_ms = shared.first_ms.min(model.state.first_ms);
    shared.last_ms = shared.last_ms.max(model.state.last_ms);
    if let Some(delta) = &model.delta {
        shared.familiar.absorb(&delta.familiar);
        for sample in &delta.samples {
            push_ring(shared, *sample, capacity);
        }
    }
    let step = model.state.rate_1m - model.rate_base;
    if shared.rate_1m == 0.0 {
        shared.rate_1m = model.state.rate_1m;
    } else if step != 0.0 {
        shared.rate_1m = (shared.rate_1m + step).max(1.0);
    }
}

fn named(f: &Features) -> Vec<(String, f32)> {
    FEATURE_NAMES
        .iter()
        .zip(f)
        .map(|(n, v)| (n.to_string(), *v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: i64, resource: u64, denied: bool) -> Event {
        Event {
            time_ms: t,
            resource,
            operation: resource,
            write: false,
            denied,
            error: false,
            bytes_in: 10,
            bytes_out: 1000,
            classification: 1,
            source_ip: 7,
            content_hits: 0,
        }
    }

    fn fast() -> Config {
        Config {
            learning_ms: 3_600_000,
            sample_every_ms: 30_000,
            ..Config::default()
        }
    }

    /// Feeds `n` requests spread over `span_ms` starting at `t0`; returns the
    /// highest grade seen and the first alert.
    fn feed(
        engine: &mut Engine,
        agent: &str,
        t0: i64,
        span_ms: i64,
        n: i64,
        make: impl Fn(i64, i64) -> Event,
    ) -> (Grade, Vec<Alert>) {
        let mut top = Grade::Normal;
        let mut alerts = Vec::new();
        for i in 0..n {
            let t = t0 + i * span_ms / n.max(1);
            let v = engine.observe(agent, &make(i, t));
            top = top.max(v.grade);
            alerts.extend(v.alert);
        }
        (top, alerts)
    }

    fn normal(i: i64, t: i64) -> Event {
        event(t, (i % 5) as u64, false)
    }

    #[test]
    fn a_denial_burst_quarantines_a_brand_new_agent() {
        let mut engine = Engine::new(Config::default());
        let (grade, alerts) = feed(&mut engine, "bot", 0, 3_000, 100, |i, t| {
            event(t, i as u64 % 3, true)
        });
        assert_eq!(grade, Grade::Quarantine);
        // Alerts rose with the grade, the last one the quarantine.
        assert!(alerts[0].grade >= Grade::Alert);
        let last = alerts.last().expect("alerts");
        assert_eq!(last.grade, Grade::Quarantine);
        assert!(
            last.reasons.iter().any(|r| matches!(
                r,
                AlertReason::Rule {
                    hit: RuleHit::DenialBurst { denials_10s: 100 }
                }
            )),
            "{last:?}"
        );
        // Quarantine stays after the risk decays, until released.
        let v = engine.observe("bot", &event(10 * 3_600_000, 1, false));
        assert_eq!(v.grade, Grade::Quarantine);
        engine.release("bot", 10 * 3_600_000);
        let v = engine.observe("bot", &event(10 * 3_600_000 + 1, 1, false));
        assert_eq!(v.grade, Grade::Normal);
    }

    #[test]
    fn normal_traffic_stays_normal_and_learns_a_baseline() {
        let mut engine = Engine::new(fast());
        // Two requests a minute for three hours.
        let (grade, alerts) = feed(&mut engine, "bot", 0, 3 * 3_600_000, 360, normal);
        assert_eq!(grade, Grade::Normal, "{alerts:?}");
        let s = engine.summary("bot", 3 * 3_600_000).expect("known");
        assert!(!s.learning);
        assert_eq!(s.known_resources, 5);
        assert!(s.baseline_samples >= 64);
    }

    #[test]
    fn a_rate_spike_and_new_restricted_data_are_caught_after_learning() {
        let mut engine = Engine::new(fast());
        feed(&mut engine, "bot", 0, 3 * 3_600_000, 360, normal);
        let mut spiky = Engine::restore(fast(), engine.state());
        let t = 3 * 3_600_000;
        let (grade, alerts) = feed(&mut spiky, "bot", t, 5_000, 200, normal);
        assert_eq!(grade, Grade::Quarantine);
        assert!(matches!(
            alerts.last().expect("alert").reasons[0],
            AlertReason::Rule {
                hit: RuleHit::RateSpike { .. }
            }
        ));
        let (grade, _) = feed(&mut engine, "bot", t, 1_000, 1, |_, t| Event {
            classification: 3,
            ..event(t, 99, false)
        });
        assert_eq!(grade, Grade::ReadOnly);
    }

    #[test]
    fn anomalies_raise_risk_with_drivers_and_benign_widens() {
        let mut engine = Engine::new(fast());
        feed(&mut engine, "bot", 0, 3 * 3_600_000, 360, normal);
        // Ten new resources a minute, large responses: exfiltration-like.
        let t = 3 * 3_600_000;
        let (grade, alerts) = feed(&mut engine, "bot", t, 600_000, 100, |i, t| Event {
            bytes_out: 5_000_000,
            ..event(t, 1_000 + i as u64, false)
        });
        assert!(grade >= Grade::Alert, "{grade:?}");
        let alert = &alerts[0];
        let drivers = alert
            .reasons
            .iter()
            .find_map(|r| match r {
                AlertReason::Anomaly { drivers, .. } => Some(drivers.clone()),
                _ => None,
            })
            .expect("anomaly reason");
        assert!(!drivers.is_empty());
        let features = engine.features("bot").expect("features");
        engine.widen("bot", &features, t + 600_000);
        assert_eq!(
            engine.risk_at("bot", t + 600_000),
            Some((0.0, Grade::Normal))
        );
    }

    #[test]
    fn state_round_trips() {
        let mut engine = Engine::new(fast());
        feed(&mut engine, "bot", 0, 3 * 3_600_000, 360, normal);
        engine.quarantine("bot", 0);
        let json = serde_json::to_string(&engine.state()).expect("serialize");
        let back: EngineState = serde_json::from_str(&json).expect("parse");
        let restored = Engine::restore(fast(), back);
        let now = 3 * 3_600_000;
        assert_eq!(
            restored.risk_at("bot", now).map(|r| r.1),
            Some(Grade::Quarantine)
        );
        assert_eq!(
            restored.summary("bot", now).map(|s| s.known_resources),
            Some(5)
        );
    }

    /// Cluster mode: two replicas' engines, each seeing part of an agent's
    /// traffic, merge into one shared model (as the store's merge does, one
    /// at a time) and each grades by what the other saw.
    #[test]
    fn replicas_merge_one_baseline_and_grade_by_what_the_other_saw() {
        fn merge(engine: &mut Engine, shared: &mut Option<AgentState>) {
            let merged = engine.merged_with("bot", shared.take()).expect("known");
            engine.adopt_merged("bot", merged.clone());
            *shared = Some(merged);
        }
        let mut a = Engine::new(fast());
        let mut b = Engine::new(fast());
        a.share();
        b.share();
        // A sees resources 0..5, B 5..10, over two sample periods each.
        feed(&mut a, "bot", 0, 60_000, 20, |i, t| {
            event(t, (i % 5) as u64, false)
        });
        feed(&mut b, "bot", 0, 60_000, 20, |i, t| {
            event(t, 5 + (i % 5) as u64, false)
        });
        assert!(a.unshared("bot", false) && b.unshared("bot", false));
        let mut shared = None;
        merge(&mut a, &mut shared);
        merge(&mut b, &mut shared);
        a.adopt_shared("bot", shared.clone().expect("merged"));
        assert!(!a.unshared("bot", true) && !b.unshared("bot", true));
        let (sa, sb) = (
            a.summary("bot", 60_000).expect("a"),
            b.summary("bot", 60_000).expect("b"),
        );
        assert_eq!((sa.known_resources, sb.known_resources), (10, 10));
        assert_eq!(sa.baseline_samples, 4);
        assert_eq!(sb.baseline_samples, 4);
        // Merging again adds nothing twice.
        merge(&mut a, &mut shared);
        assert_eq!(a.summary("bot", 60_000).expect("a").baseline_samples, 4);

        // A restricted dataset first read through A alerts there; once A
        // merged, the same read through B is graded by what A saw.
        let restricted = |t: i64| Event {
            classification: 3,
            ..event(t, 99, false)
        };
        let first = a.observe("bot", &restricted(70_000));
        assert!(first.alert.is_some(), "{first:?}");
        merge(&mut a, &mut shared);
        b.adopt_shared("bot", shared.clone().expect("merged"));
        let through_b = b.observe("bot", &restricted(71_000));
        assert_eq!((through_b.grade, through_b.alert), (Grade::Normal, None));
        // Another restricted dataset through B is new to both: B alerts.
        let other = b.observe(
            "bot",
            &Event {
                classification: 3,
                ..event(72_000, 98, false)
            },
        );
        assert!(other.alert.is_some(), "{other:?}");
        // A benign verdict recorded through A: B forgives, and what it held
        // back is learned (the dataset is no longer new anywhere).
        b.forgive("bot", 73_000);
        assert_eq!(b.risk_at("bot", 73_000), Some((0.0, Grade::Normal)));
        merge(&mut b, &mut shared);
        a.adopt_shared("bot", shared.clone().expect("merged"));
        let again = a.observe(
            "bot",
            &Event {
                classification: 3,
                ..event(74_000, 98, false)
            },
        );
        assert_eq!(again.alert, None);
        assert_eq!(a.summary("bot", 74_000).expect("a").known_resources, 12);
    }

    #[test]
    fn thresholds_must_rise() {
        let mut config = Config::default();
        assert!(config.validate().is_ok());
        config.thresholds.alert = 0.99;
        assert!(config.validate().is_err());
        // A tree's points are numbered in a byte.
        let config = Config {
            tree_sample: 257,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
