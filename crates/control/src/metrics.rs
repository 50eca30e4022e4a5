//! Prometheus metrics of the data plane, served by the admin listener.

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
            CloseReason::EvictedSourceCap => "evicted_source_cap",
            CloseReason::EvictedUnverifiedCap => "evicted_unverified_cap",
            CloseReason::EvictedMaxConnections => "evicted_max_connections",
            CloseReason::RefusedSourceCap => "refused_source_cap",
            CloseReason::RefusedUnverifiedCap => "refused_unverified_cap",
        }
    }
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
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
    /// Completed requests behavioral analytics never saw: its queue was full.
    pub analytics_dropped: Counter,
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
            readiness,
            auth_failures,
            auth_throttled,
            auth_lockouts,
            audit_log_tampered,
            audit_discarded,
            connections_open,
            connections_unverified,
            connections_closed,
            secrets_overdue,
            requests,
            decisions,
            stages,
            audit_queue,
            audit_written,
            audit_failures,
            anonymous_sampled,
            analytics_dropped,
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
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status,
            })
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
        self.decisions
            .get_or_create(&DecisionLabels {
                route: route.to_string(),
                decision: if allowed { "allow" } else { "deny" },
            })
            .inc();
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

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
