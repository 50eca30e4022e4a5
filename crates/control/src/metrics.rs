//! Prometheus metrics of the data plane, served by the admin listener.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The pipeline stages, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Limits and request sanity.
    Decode,
    /// Certificate → agent.
    Authenticate,
    /// Route, action, time, source address.
    Contextualize,
    /// Content guard on the request body.
    Inspect,
    /// Cedar decision.
    Authorize,
    /// `use_secret` decision and the credential from the vault.
    Inject,
    /// Upstream call until the response head.
    Forward,
    /// Time in the gateway for the whole request, excluding nothing.
    Total,
}

impl Stage {
    const ALL: [Stage; 8] = [
        Stage::Decode,
        Stage::Authenticate,
        Stage::Contextualize,
        Stage::Inspect,
        Stage::Authorize,
        Stage::Inject,
        Stage::Forward,
        Stage::Total,
    ];

    /// The stage's name, as in metric labels and span names.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Authenticate => "authenticate",
            Stage::Contextualize => "contextualize",
            Stage::Inspect => "inspect",
            Stage::Authorize => "authorize",
            Stage::Inject => "inject",
            Stage::Forward => "forward",
            Stage::Total => "total",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    route: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

/// The health of one audit export sink, as metric handles.
#[derive(Debug, Clone)]
pub struct ExportMetrics {
    /// Records delivered (counted once per delivery: re-deliveries after a
    /// restart count again).
    pub delivered: Counter,
    /// Failed delivery attempts.
    pub failures: Counter,
    /// Durable records not yet delivered.
    pub lag: Gauge<i64, AtomicI64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    listener: &'static str,
    reason: &'static str,
}

/// The connection metrics of one listener (`gateway` or `admin`), as handles.
/// The default is unregistered (for tests).
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    listener: &'static str,
    /// Open connections.
    pub open: Gauge<i64, AtomicI64>,
    /// Open connections without a verified client certificate.
    pub unverified: Gauge<i64, AtomicI64>,
    closed: Family<CloseLabels, Counter>,
}

impl ConnectionMetrics {
    /// Counts a closed (or refused) connection by why it ended.
    pub fn closed(&self, reason: CloseReason) {
        self.closed
            .get_or_create(&CloseLabels {
                listener: self.listener,
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// Why a connection ended, as the `reason` label of
/// `portcullis_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client or the server ended it normally (including shutdown).
    Ended,
    /// The connection ended with a protocol or IO error.
    Error,
    /// The TLS handshake failed (bad certificate, not TLS, …).
    HandshakeFailed,
    /// The TLS handshake did not finish in time.
    HandshakeTimeout,
    /// No request started within the first-request timeout.
    FirstRequestTimeout,
    /// Nothing was in flight for the idle timeout.
    IdleTimeout,
    /// Request headers were not read in time (HTTP/1.1), or an HTTP/2 ping
    /// went unanswered.
    ProtocolTimeout,
    /// The client took nothing of a response for the stall timeout.
    SendTimeout,
    /// Closed to make room under the per-source cap on unverified connections.
    EvictedSourceCap,
    /// Closed to make room under the cap on unverified connections.
    EvictedUnverifiedCap,
    /// Closed to make room under `max_connections`.
    EvictedMaxConnections,
    /// Refused: every unverified connection from its source was busy.
    RefusedSourceCap,
    /// Refused: every unverified connection was busy.
    RefusedUnverifiedCap,
}

impl CloseReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Ended => "ended",
            CloseReason::Error => "error",
            CloseReason::HandshakeFailed => "handshake_failed",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::FirstRequestTimeout => "first_request_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ProtocolTimeout => "protocol_timeout",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::EvictedSourceCap => "evicted_source_cap",
            CloseReason::EvictedUnverifiedCap => "evicted_unverified_cap",
            CloseReason::EvictedMaxConnections => "evicted_max_connections",
            CloseReason::RefusedSourceCap => "refused_source_cap",
            CloseReason::RefusedUnverifiedCap => "refused_unverified_cap",
        }
    }
}

/// Most routes whose counters [`RouteHandles`] keeps, and most statuses per
/// route: past these a count builds its label set as it did before.
const ROUTE_HANDLES: usize = 1024;
const STATUS_HANDLES: usize = 64;

/// The request and decision counters of each route by name, so counting a
/// request looks its counter up by `&str` instead of building a label set
/// (a `String`) per request. A handle is the family's own counter (clones
/// share it), so the exposition is unchanged. Bounded: an MCP record's
/// resource names a tool, and the agent chooses the name.
#[derive(Debug, Default)]
struct RouteHandles {
    requests: RwLock<HashMap<String, Vec<(u16, Counter)>>>,
    /// Deny, allow (each once it has been counted: no zero series is
    /// created).
    decisions: RwLock<HashMap<String, [Option<Counter>; 2]>>,
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    handles: RouteHandles,
    // One histogram per stage, fetched once, so observing takes no lock.
    stages: Vec<Histogram>,
    /// Audit records waiting to be written.
    pub audit_queue: Gauge<i64, AtomicI64>,
    /// Audit records written.
    pub audit_written: Counter,
    /// Audit batches that failed to write (and were retried).
    pub audit_failures: Counter,
    /// Refused unauthenticated requests counted in a per-minute summary
    /// record instead of written one by one (`[audit]
    /// unauthenticated_records_per_minute`).
    pub anonymous_sampled: Counter,
    /// 1 once the audit log was found not to match its signed checkpoints
    /// (appending and signing stopped).
    pub audit_log_tampered: Gauge<i64, AtomicI64>,
    /// Audit records not written because the log is halted.
    pub audit_discarded: Counter,
    /// Cluster mode: 1 while this replica is the elected checkpoint signer.
    pub checkpoint_signer: Gauge<i64, AtomicI64>,
    /// Completed requests behavioral analytics never saw: its queue was full.
    pub analytics_dropped: Counter,
    /// Agent models behavioral analytics holds in memory (bounded by
    /// `[analytics] max_agents`).
    pub analytics_agents: Gauge<i64, AtomicI64>,
    export_delivered: Family<SinkLabels, Counter>,
    export_failures: Family<SinkLabels, Counter>,
    export_lag: Family<SinkLabels, Gauge<i64, AtomicI64>>,
    /// Spans sent to the OTLP collector.
    pub trace_spans_exported: Counter,
    /// Spans dropped: the queue was full or the collector failed.
    pub trace_spans_dropped: Counter,
    /// Vault secrets whose rotation is overdue (set by vault maintenance).
    pub secrets_overdue: Gauge<i64, AtomicI64>,
    auth_failures: Family<AttemptLabels, Counter>,
    auth_throttled: Family<AttemptLabels, Counter>,
    auth_lockouts: Family<AttemptLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge<i64, AtomicI64>>,
    connections_unverified: Family<ListenerLabels, Gauge<i64, AtomicI64>>,
    connections_closed: Family<CloseLabels, Counter>,
    config_reloads: Family<OutcomeLabels, Counter>,
    egress_connections: Family<OutcomeLabels, Counter>,
    /// Why the process is not ready (`/readyz`), one gauge per reason.
    pub readiness: crate::readiness::Readiness,
    registry: Registry,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Data-plane requests by route and HTTP status",
            requests.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Authorization decisions by route and outcome",
            decisions.clone(),
        );
        let stage_family = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            // 5 µs … ~10 s.
            Histogram::new(exponential_buckets(0.000_005, 2.5, 17))
        });
        registry.register(
            "stage_duration_seconds",
            "Time spent in each pipeline stage",
            stage_family.clone(),
        );
        let stages = Stage::ALL
            .iter()
            .map(|s| {
                stage_family
                    .get_or_create(&StageLabels { stage: s.as_str() })
                    .clone()
            })
            .collect();
        let audit_queue = Gauge::default();
        registry.register(
            "audit_queue_depth",
            "Audit records accepted but not yet durable",
            audit_queue.clone(),
        );
        let anonymous_sampled = Counter::default();
        registry.register(
            "audit_unauthenticated_sampled",
            "Refused unauthenticated requests counted in a per-source, per-minute summary record instead of written one by one",
            anonymous_sampled.clone(),
        );
        let audit_written = Counter::default();
        registry.register(
            "audit_records_written",
            "Audit records made durable",
            audit_written.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Audit batch writes that failed and were retried",
            audit_failures.clone(),
        );
        let audit_log_tampered = Gauge::default();
        registry.register(
            "audit_log_tampered",
            "1 when the stored audit log does not match its signed checkpoints: appending, signing and the data plane stopped",
            audit_log_tampered.clone(),
        );
        let checkpoint_signer = Gauge::default();
        registry.register(
            "cluster_checkpoint_signer",
            "Cluster mode: 1 while this replica is the one elected to sign audit checkpoints and verify the log",
            checkpoint_signer.clone(),
        );
        let audit_discarded = Counter::default();
        registry.register(
            "audit_records_discarded",
            "Audit records not written because the audit log is halted (tampered)",
            audit_discarded.clone(),
        );
        let analytics_dropped = Counter::default();
        registry.register(
            "analytics_dropped_observations",
            "Completed requests behavioral analytics never saw because its queue was full",
            analytics_dropped.clone(),
        );
        let analytics_agents = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "analytics_agents",
            "Agent models behavioral analytics holds in memory",
            analytics_agents.clone(),
        );
        let export_delivered = Family::<SinkLabels, Counter>::default();
        registry.register(
            "audit_export_delivered_records",
            "Audit records delivered by each export sink",
            export_delivered.clone(),
        );
        let export_failures = Family::<SinkLabels, Counter>::default();
        registry.register(
            "audit_export_failures",
            "Failed delivery attempts of each export sink (retried)",
            export_failures.clone(),
        );
        let export_lag = Family::<SinkLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "audit_export_lag_records",
            "Durable audit records each export sink has not delivered yet",
            export_lag.clone(),
        );
        let trace_spans_exported = Counter::default();
        registry.register(
            "trace_spans_exported",
            "Spans accepted by the OTLP trace collector",
            trace_spans_exported.clone(),
        );
        let trace_spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Spans dropped because the trace queue was full or the collector failed",
            trace_spans_dropped.clone(),
        );
        let secrets_overdue = Gauge::default();
        registry.register(
            "vault_secrets_overdue",
            "Vault secrets past their rotation period",
            secrets_overdue.clone(),
        );
        let auth_failures = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Failed second factors (kind=totp) and client assertions (kind=client_assertion)",
            auth_failures.clone(),
        );
        let auth_throttled = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "auth_throttled",
            "Attempts refused unchecked during back-off or a lockout, by kind",
            auth_throttled.clone(),
        );
        let auth_lockouts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "auth_lockouts",
            "Lockouts begun after too many failures, by kind",
            auth_lockouts.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "connections_open",
            "Open connections of each listener",
            connections_open.clone(),
        );
        let connections_unverified = Family::<ListenerLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "connections_unverified",
            "Open connections of each listener without a verified client certificate",
            connections_unverified.clone(),
        );
        let connections_closed = Family::<CloseLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections closed or refused, by listener and reason (timeouts, evictions, caps)",
            connections_closed.clone(),
        );
        let config_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP) by outcome: applied or refused",
            config_reloads.clone(),
        );
        // Both outcomes show up at 0 from the start.
        for outcome in ["applied", "refused"] {
            let _ = config_reloads.get_or_create(&OutcomeLabels { outcome });
        }
        let egress_connections = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "egress_connections",
            "Connections sandboxed stdio MCP servers asked the egress proxy for, by outcome: allow or deny",
            egress_connections.clone(),
        );
        for outcome in ["allow", "deny"] {
            let _ = egress_connections.get_or_create(&OutcomeLabels { outcome });
        }
        let not_ready = Family::<ReasonLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "not_ready",
            "1 while the reason keeps the process not ready (/readyz answers 503), by reason",
            not_ready.clone(),
        );
        // Fetched once, so every reason shows up at 0 and setting a flag takes no lock.
        let readiness =
            crate::readiness::Readiness::new(crate::readiness::NotReady::ALL.map(|r| {
                not_ready
                    .get_or_create(&ReasonLabels { reason: r.as_str() })
                    .clone()
            }));
        Metrics {
            config_reloads,
            egress_connections,
            readiness,
            auth_failures,
            auth_throttled,
            auth_lockouts,
            audit_log_tampered,
            audit_discarded,
            checkpoint_signer,
            connections_open,
            connections_unverified,
            connections_closed,
            secrets_overdue,
            requests,
            decisions,
            handles: RouteHandles::default(),
            stages,
            audit_queue,
            audit_written,
            audit_failures,
            anonymous_sampled,
            analytics_dropped,
            analytics_agents,
            export_delivered,
            export_failures,
            export_lag,
            trace_spans_exported,
            trace_spans_dropped,
            registry,
        }
    }

    /// Counts a finished request.
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(handles) = self.handles.requests.read()
            && let Some((_, counter)) = handles
                .get(route)
                .and_then(|statuses| statuses.iter().find(|(s, _)| *s == status))
        {
            counter.inc();
            return;
        }
        let counter = self.requests.get_or_create_owned(&RequestLabels {
            route: route.to_string(),
            status,
        });
        counter.inc();
        if let Ok(mut handles) = self.handles.requests.write()
            && (handles.len() < ROUTE_HANDLES || handles.contains_key(route))
        {
            let statuses = handles.entry(route.to_string()).or_default();
            if statuses.len() < STATUS_HANDLES && !statuses.iter().any(|(s, _)| *s == status) {
                statuses.push((status, counter));
            }
        }
    }

    /// Counts an egress connection a sandboxed server asked for, allowed or
    /// denied by policy.
    pub fn egress_connection(&self, allowed: bool) {
        let outcome = if allowed { "allow" } else { "deny" };
        self.egress_connections
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a config reload, `applied` or not (refused).
    pub fn config_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.config_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a decision.
    pub fn decision(&self, route: &str, allowed: bool) {
        let slot = usize::from(allowed);
        if let Ok(handles) = self.handles.decisions.read()
            && let Some(Some(counter)) = handles.get(route).map(|c| &c[slot])
        {
            counter.inc();
            return;
        }
        let counter = self.decisions.get_or_create_owned(&DecisionLabels {
            route: route.to_string(),
            decision: if allowed { "allow" } else { "deny" },
        });
        counter.inc();
        if let Ok(mut handles) = self.handles.decisions.write()
            && (handles.len() < ROUTE_HANDLES || handles.contains_key(route))
        {
            handles.entry(route.to_string()).or_default()[slot] = Some(counter);
        }
    }

    /// Records time spent in a stage.
    pub fn stage(&self, stage: Stage, elapsed: Duration) {
        if let Some(h) = self.stages.get(stage as usize) {
            h.observe(elapsed.as_secs_f64());
        }
    }

    /// The metric handles of export sink `sink` (created on first use, so a
    /// configured sink shows up at zero).
    pub fn export_sink(&self, sink: &str) -> ExportMetrics {
        let labels = SinkLabels {
            sink: sink.to_string(),
        };
        ExportMetrics {
            delivered: self.export_delivered.get_or_create(&labels).clone(),
            failures: self.export_failures.get_or_create(&labels).clone(),
            lag: self.export_lag.get_or_create(&labels).clone(),
        }
    }

    /// Counts a failed attempt of `kind` (`totp`, `client_assertion`), and
    /// the lockout it began, if it did.
    pub fn auth_failure(&self, kind: &'static str, locked_now: bool) {
        let labels = AttemptLabels { kind };
        self.auth_failures.get_or_create(&labels).inc();
        if locked_now {
            self.auth_lockouts.get_or_create(&labels).inc();
        }
    }

    /// Counts an attempt refused unchecked by the throttle.
    pub fn auth_throttled(&self, kind: &'static str) {
        self.auth_throttled
            .get_or_create(&AttemptLabels { kind })
            .inc();
    }

    /// The connection metric handles of `listener` (`gateway` or `admin`).
    pub fn connections(&self, listener: &'static str) -> ConnectionMetrics {
        let labels = ListenerLabels { listener };
        ConnectionMetrics {
            listener,
            open: self.connections_open.get_or_create(&labels).clone(),
            unverified: self.connections_unverified.get_or_create(&labels).clone(),
            closed: self.connections_closed.clone(),
        }
    }

    /// The OpenMetrics 1.0 exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The exposition in `format`: OpenMetrics as encoded, or the same
    /// families rewritten to the Prometheus text format 0.0.4.
    pub fn encode_as(&self, format: Exposition) -> String {
        match format {
            Exposition::OpenMetrics => self.encode(),
            Exposition::Text004 => text_004(&self.encode()),
        }
    }
}

/// The two exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 (`application/openmetrics-text`): the default.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), for
    /// clients that ask for plain text (older scrapers, `promtool`, curl
    /// with `Accept: text/plain`).
    Text004,
}

impl Exposition {
    /// Picks the format from a request's `Accept` header: plain text when
    /// `text/plain` (any version) is preferred to OpenMetrics by its
    /// q-value, OpenMetrics otherwise (no header, `*/*`, ties). A scrape by
    /// Prometheus, which asks for both with OpenMetrics first, gets
    /// OpenMetrics.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Exposition::OpenMetrics;
        };
        // The best q-value each format gets from any media range.
        let (mut open_q, mut text_q) = (0.0_f64, 0.0_f64);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(1.0);
            let (open, text) = match media.as_str() {
                "application/openmetrics-text" => (true, false),
                "text/plain" => (false, true),
                "application/*" => (true, false),
                "text/*" => (false, true),
                "*/*" => (true, true),
                _ => (false, false),
            };
            if open {
                open_q = open_q.max(q);
            }
            if text {
                text_q = text_q.max(q);
            }
        }
        if text_q > open_q {
            Exposition::Text004
        } else {
            Exposition::OpenMetrics
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Text004 => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites an OpenMetrics exposition to the text format 0.0.4. The two
/// differ where a 0.0.4 parser would misread OpenMetrics: a counter family
/// is named without `_total` in OpenMetrics (`# TYPE x counter`, sample
/// `x_total`) but with it in 0.0.4, where a sample named unlike its family
/// is an untyped metric with no HELP; `# UNIT`, `# EOF`, `_created` samples
/// and exemplars do not exist in 0.0.4; HELP escapes only `\\` and `\n`.
/// Types 0.0.4 does not know become `untyped`.
fn text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The HELP line waits for its TYPE, which says whether the name changes.
    let mut help: Option<String> = None;
    // The family of the current counter, whose `_created` samples go.
    let mut counter: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (_, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some(text.replace("\\\"", "\""));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (family.to_string(), kind),
                _ => (family.to_string(), "untyped"),
            };
            counter = (kind == "counter").then_some(family);
            if let Some(text) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            // `# UNIT`, `# EOF` and comments.
            continue;
        }
        if let Some(family) = counter
            && line
                .strip_prefix(family)
                .is_some_and(|rest| rest.starts_with("_created"))
        {
            continue;
        }
        out.push_str(without_exemplar(line));
        out.push('\n');
    }
    out
}

/// A sample line without its OpenMetrics exemplar (` # {…} value`), which
/// starts after the label set, outside any quoted label value.
fn without_exemplar(line: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    // Labels follow the name at once, or there are none.
    let mut labels_done = line
        .find([' ', '{'])
        .is_none_or(|i| line[i..].starts_with(' '));
    for (i, c) in line.char_indices() {
        if !labels_done {
            match (c, quoted, escaped) {
                (_, true, true) => escaped = false,
                ('\\', true, false) => escaped = true,
                ('"', _, false) => quoted = !quoted,
                ('}', false, _) => labels_done = true,
                _ => {}
            }
            continue;
        }
        if line[i..].starts_with(" # ") {
            return &line[..i];
        }
    }
    line
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(accept: Option<&str>, expected: Exposition) {
        assert_eq!(Exposition::negotiate(accept), expected, "{accept:?}");
    }

    #[test]
    fn plain_text_is_served_only_when_preferred() {
        use Exposition::{OpenMetrics, Text004};
        check(None, OpenMetrics);
        check(Some("*/*"), OpenMetrics);
        check(Some("text/plain;version=0.0.4"), Text004);
        check(Some("text/plain"), Text004);
        check(Some("Text/Plain; charset=utf-8"), Text004);
        check(
            Some("application/openmetrics-text; version=1.0.0"),
            OpenMetrics,
        );
        check(Some("application/json"), OpenMetrics);
        // What Prometheus sends: OpenMetrics first.
        check(
            Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
            OpenMetrics,
        );
        check(
            Some("application/openmetrics-text;q=0.2, text/plain;q=0.9"),
            Text004,
        );
        check(Some("text/plain;q=0.5, */*;q=0.5"), OpenMetrics);
    }

    #[test]
    fn counters_get_their_total_name_and_openmetrics_only_lines_go() {
        let om = "# HELP p_requests Requests by \\\"route\\\".\n\
                  # TYPE p_requests counter\n\
                  p_requests_total{route=\"a # b\"} 1 # {trace_id=\"x\"} 1.0\n\
                  p_requests_created{route=\"a # b\"} 1.7e9\n\
                  # HELP p_up Up.\n# TYPE p_up gauge\n# UNIT p_up ratio\np_up 1\n\
                  # HELP p_info Info.\n# TYPE p_info info\np_info_info{v=\"1\"} 1\n# EOF\n";
        assert_eq!(
            text_004(om),
            "# HELP p_requests_total Requests by \"route\".\n\
             # TYPE p_requests_total counter\n\
             p_requests_total{route=\"a # b\"} 1\n\
             # HELP p_up Up.\n# TYPE p_up gauge\np_up 1\n\
             # HELP p_info Info.\n# TYPE p_info untyped\np_info_info{v=\"1\"} 1\n"
        );
        assert_eq!(without_exemplar("x_total 2 # {a=\"b\"} 1"), "x_total 2");
    }

    /// Every family of the real registry has HELP and TYPE in both formats.
    #[test]
    fn every_family_has_help_and_type() {
        let metrics = Metrics::new();
        metrics.request("r", 200);
        metrics.decision("r", true);
        for format in [Exposition::OpenMetrics, Exposition::Text004] {
            let text = metrics.encode_as(format);
            let helped: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# HELP "))
                .filter_map(|l| l.split(' ').next())
                .collect();
            let typed: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split(' ').next())
                .collect();
            assert_eq!(helped, typed, "{format:?}");
            assert!(helped.len() > 10, "{format:?}: {text}");
        }
        let text = metrics.encode_as(Exposition::Text004);
        assert!(text.contains("# TYPE portcullis_requests_total counter\n"));
        assert!(text.contains("portcullis_requests_total{route=\"r\",status=\"200\"} 1\n"));
        assert!(!text.contains("# EOF"));
    }
}
