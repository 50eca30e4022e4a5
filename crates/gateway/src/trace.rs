//! OpenTelemetry traces of the pipeline: one server span per request and a
//! child span per stage, exported as OTLP/HTTP JSON to `{otlp_endpoint}/v1/traces`
//! when `[telemetry]` is configured.
//!
//! The trace id *is* the request id (128 random bits, already 32 hex digits),
//! so the `X-Request-Id` a client sees, the audit record and the trace share
//! one key, and audit records exported as OTLP logs carry it as their
//! `traceId`. A caller's own `traceparent` is not trusted as a parent (it
//! crosses a trust boundary); it becomes a span link instead. Upstreams get a
//! W3C `traceparent` naming the `forward` span, so their spans join the trace.
//!
//! **Tracing never slows or fails a request.** The request records stage
//! timings it measures anyway into a small vector; when the response is done
//! the finished trace goes into a bounded queue with `try_send`. When the
//! queue is full the trace is dropped and counted
//! (`portcullis_trace_spans_dropped`). Spans are built, batched and posted by
//! one background task that drains the queue on a timer (a task awaiting
//! each trace would make every request pay for waking it); a collector that
//! fails loses those spans (counted), never a request.
//!
//! Sampling is decided from the trace id (its low 64 bits against
//! `sampling_ratio`), like OpenTelemetry's `TraceIdRatioBased` sampler. Upstreams
//! are told the decision in the `traceparent` flags.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use portcullis_audit::{AuditRecord, Outcome};
use portcullis_core::RequestId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{SecretHeaders, TelemetryConfig};
use crate::metrics::{Metrics, Stage};
use crate::otlp::{
    KeyValue, Link, Poster, Resource, ResourceSpans, Scope, ScopeSpans, Span, Status,
    TracesRequest, span_kind,
};
pub use portcullis_control::otlp::{is_lower_hex, is_trace_id};

/// Finished traces waiting for the exporter; beyond this they are dropped.
const QUEUE: usize = 16_384;
/// Most traces per POST.
const BATCH: usize = 1_024;
/// How often the exporter drains the queue.
const TICK: Duration = Duration::from_millis(200);
/// Time allowed for one POST to the collector.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// The stages a request can pass through, and so the most child spans.
const STAGES_PER_REQUEST: usize = 6;

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace-state header (dropped: it belongs to the caller's trace).
pub const TRACESTATE: &str = "tracestate";

/// Starts request traces; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracer {
    tx: mpsc::Sender<FinishedTrace>,
    /// Sample when the trace id's low 64 bits are at most this.
    threshold: u64,
    metrics: Arc<Metrics>,
}

/// The background exporter; [`TraceExporter::finish`] flushes it.
#[derive(Debug)]
pub struct TraceExporter {
    task: JoinHandle<()>,
}

impl TraceExporter {
    /// Waits (at most `grace`) for queued spans to be sent. Every [`Tracer`]
    /// clone must be dropped first, or this waits the whole `grace`.
    pub async fn finish(self, grace: Duration) {
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}

impl Tracer {
    /// Starts the exporter for `config`; `tls` is trusted for an https collector.
    pub fn start(
        config: &TelemetryConfig,
        metrics: Arc<Metrics>,
        tls: rustls::ClientConfig,
    ) -> (Tracer, TraceExporter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let threshold = if config.sampling_ratio >= 1.0 {
            u64::MAX
        } else {
            (config.sampling_ratio * u64::MAX as f64) as u64
        };
        let sender = Sender {
            poster: Poster::new(tls),
            url: config.traces_url.clone(),
            headers: config.headers.clone(),
            resource: Resource::service(&config.service_name),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(sender.run(rx));
        (
            Tracer {
                tx,
                threshold,
                metrics,
            },
            TraceExporter { task },
        )
    }

    /// Starts the trace of one request. `caller` is the request's own
    /// `traceparent`, if any.
    pub fn begin(
        &self,
        request_id: &RequestId,
        started: Instant,
        start_unix: Duration,
        caller: Option<&HeaderValue>,
    ) -> RequestTrace {
        let id = request_id.as_str();
        let low = id
            .get(16..)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .unwrap_or(0);
        let sampled = self.threshold == u64::MAX || (self.threshold > 0 && low <= self.threshold);
        RequestTrace {
            tracer: self.clone(),
            sampled: sampled && is_trace_id(id),
            trace_id: id.to_string(),
            root: span_id(),
            forward: span_id(),
            started,
            start_unix,
            stages: Vec::with_capacity(STAGES_PER_REQUEST),
            link: caller.and_then(parse_traceparent),
        }
    }
}

/// One request's trace, carried by the request's recorder.
#[derive(Debug)]
pub struct RequestTrace {
    tracer: Tracer,
    sampled: bool,
    trace_id: String,
    root: u64,
    forward: u64,
    started: Instant,
    start_unix: Duration,
    /// (stage, start offset from `started`, duration).
    stages: Vec<(Stage, Duration, Duration)>,
    link: Option<Link>,
}

impl RequestTrace {
    /// Notes a stage that began at `start` and took `elapsed`.
    pub fn stage(&mut self, stage: Stage, start: Instant, elapsed: Duration) {
        if self.sampled {
            self.stages.push((
                stage,
                start.saturating_duration_since(self.started),
                elapsed,
            ));
        }
    }

    /// The `traceparent` for the upstream: this trace, the `forward` span as
    /// parent, and the sampling decision.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "00-{}-{:016x}-{}",
            self.trace_id,
            self.forward,
            if self.sampled { "01" } else { "00" }
        ))
        .ok()
    }

    /// Ends the trace with the request's record and total time, and queues it
    /// without waiting.
    pub fn finish(self, record: &AuditRecord, elapsed: Duration) {
        if !self.sampled {
            return;
        }
        let spans = 1 + self.stages.len() as u64;
        let finished = FinishedTrace {
            trace_id: self.trace_id,
            root: self.root,
            forward: self.forward,
            start_unix: self.start_unix,
            elapsed,
            stages: self.stages,
            link: self.link,
            method: record.action.clone(),
            route: record.resource.clone(),
            path: record.path.clone(),
            principal: record.principal.clone(),
            status: record.status,
            allowed: record.outcome == Outcome::Allow,
            error_code: record.error_code.clone(),
            client: record.source_ip.clone(),
        };
        if self.tracer.tx.try_send(finished).is_err() {
            self.tracer.metrics.trace_spans_dropped.inc_by(spans);
        }
    }
}

/// A random, non-zero span id.
fn span_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// `00-<trace id>-<parent id>-<flags>` (W3C Trace Context level 1).
fn parse_traceparent(value: &HeaderValue) -> Option<Link> {
    let s = value.to_str().ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = version.len() == 2
        && version != "ff"
        && is_lower_hex(version)
        && is_trace_id(trace_id)
        && span_id.len() == 16
        && is_lower_hex(span_id)
        && span_id != "0000000000000000"
        && flags.len() == 2
        && is_lower_hex(flags)
        && (version != "00" || parts.next().is_none());
    valid.then(|| Link {
        trace_id: trace_id.to_string(),
        span_id: span_id.to_string(),
    })
}

/// What the exporter needs to build a request's spans.
#[derive(Debug)]
struct FinishedTrace {
    trace_id: String,
    root: u64,
    forward: u64,
    start_unix: Duration,
    elapsed: Duration,
    stages: Vec<(Stage, Duration, Duration)>,
    link: Option<Link>,
    method: String,
    route: Option<String>,
    path: Option<String>,
    principal: Option<String>,
    status: u16,
    allowed: bool,
    error_code: Option<String>,
    client: Option<String>,
}

impl FinishedTrace {
    fn spans(self, out: &mut Vec<Span>) {
        let nanos = |d: Duration| (self.start_unix + d).as_nanos().to_string();
        let root_id = format!("{:016x}", self.root);
        let mut attributes = vec![
            KeyValue::string("http.request.method", self.method.clone()),
            KeyValue::int("http.response.status_code", i64::from(self.status)),
            KeyValue::string("portcullis.request_id", self.trace_id.clone()),
            KeyValue::string(
                "portcullis.outcome",
                if self.allowed { "allow" } else { "deny" },
            ),
        ];
        for (key, value) in [
            ("url.path", &self.path),
            ("http.route", &self.route),
            ("portcullis.principal", &self.principal),
            ("portcullis.error_code", &self.error_code),
            ("client.address", &self.client),
        ] {
            if let Some(value) = value {
                attributes.push(KeyValue::string(key, value.clone()));
            }
        }
        // Server spans: 5xx is an error, 4xx is the client's (OpenTelemetry
        // HTTP semantic conventions).
        let status = if self.status >= 500 {
            Status {
                code: 2,
                message: self.error_code.clone().unwrap_or_default(),
            }
        } else {
            Status {
                code: 0,
                message: String::new(),
            }
        };
        out.push(Span {
            trace_id: self.trace_id.clone(),
            span_id: root_id.clone(),
            parent_span_id: String::new(),
            name: match &self.route {
                Some(route) => format!("{} {route}", self.method),
                None => self.method.clone(),
            },
            kind: span_kind::SERVER,
            start_time_unix_nano: nanos(Duration::ZERO),
            end_time_unix_nano: nanos(self.elapsed),
            attributes,
            links: self.link.clone().into_iter().collect(),
            status,
        });
        for (stage, start, took) in &self.stages {
            let forward = *stage == Stage::Forward;
            out.push(Span {
                trace_id: self.trace_id.clone(),
                span_id: format!("{:016x}", if forward { self.forward } else { span_id() }),
                parent_span_id: root_id.clone(),
                name: stage.as_str().to_string(),
                kind: if forward {
                    span_kind::CLIENT
                } else {
                    span_kind::INTERNAL
                },
                start_time_unix_nano: nanos(*start),
                end_time_unix_nano: nanos(*start + *took),
                attributes: vec![KeyValue::string("portcullis.stage", stage.as_str())],
                links: Vec::new(),
                status: Status {
                    code: 0,
                    message: String::new(),
                },
            });
        }
    }
}

struct Sender {
    poster: Poster,
    url: http::Uri,
    headers: SecretHeaders,
    resource: Resource,
    metrics: Arc<Metrics>,
}

impl Sender {
    /// Drains the queue every [`TICK`] instead of awaiting each trace: a
    /// receiver that waits would be woken by every request, and waking a
    /// parked thread costs the request a system call.
    async fn run(self, mut rx: mpsc::Receiver<FinishedTrace>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let closed = loop {
                match rx.try_recv() {
                    Ok(trace) => {
                        batch.push(trace);
                        if batch.len() == BATCH {
                            self.send(&mut batch).await;
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break false,
                    Err(mpsc::error::TryRecvError::Disconnected) => break true,
                }
            };
            if !batch.is_empty() {
                self.send(&mut batch).await;
            }
            if closed {
                return;
            }
        }
    }

    async fn send(&self, batch: &mut Vec<FinishedTrace>) {
        let mut spans = Vec::with_capacity(batch.len() * 6);
        for trace in batch.drain(..) {
            trace.spans(&mut spans);
        }
        let count = spans.len() as u64;
        let request = TracesRequest {
            resource_spans: vec![ResourceSpans {
                resource: self.resource.clone(),
                scope_spans: vec![ScopeSpans {
                    scope: Scope::new("portcullis.gateway"),
                    spans,
                }],
            }],
        };
        // Serialising strings and integers cannot fail.
        let body = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
        // One retry for a blip; after that the spans are dropped, since
        // holding them would only grow memory while the collector is down.
        for attempt in 0..2 {
            match self
                .poster
                .post(
                    &self.url,
                    "application/json",
                    &self.headers,
                    body.clone(),
                    POST_TIMEOUT,
                )
                .await
            {
                Ok(_) => {
                    self.metrics.trace_spans_exported.inc_by(count);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, spans = count, attempt, "cannot export spans to the OTLP collector");
                    if attempt == 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        self.metrics.trace_spans_dropped.inc_by(count);
    }
}

/// Wall-clock time since the epoch, for span timestamps.
pub fn now_unix() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let check = |s: &str, ok: bool| {
            assert_eq!(
                parse_traceparent(&HeaderValue::from_str(s).unwrap()).is_some(),
                ok,
                "{s}"
            );
        };
        check(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            true,
        );
        check(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            true,
        );
        check(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            false,
        );
        check(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            false,
        );
        check(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            false,
        );
        check(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            false,
        );
        check(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            false,
        );
        check("garbage", false);
    }

    #[test]
    fn trace_ids() {
        assert!(is_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(!is_trace_id("00000000000000000000000000000000"));
        assert!(!is_trace_id("4bf92f"));
    }
}
