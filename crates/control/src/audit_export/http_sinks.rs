//! The HTTP sinks. `webhook` POSTs each batch as a JSON array (or NDJSON) of
//! canonical records; `otlp` POSTs it as OpenTelemetry logs to
//! `{endpoint}/v1/logs`. A batch is delivered when the receiver answers 2xx.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use portcullis_audit::{AuditRecord, Outcome, RecordKind};

use super::{DeliveryError, Leaf};
use crate::config::{SecretHeaders, WebhookFormat};
use crate::otlp::{
    AnyValue, KeyValue, LogRecord, LogsRequest, Poster, Resource, ResourceLogs, Scope, ScopeLogs,
    nanos_from_millis,
};

#[derive(Debug)]
pub(super) struct WebhookSink {
    pub(super) poster: Poster,
    pub(super) url: http::Uri,
    pub(super) format: WebhookFormat,
    pub(super) headers: SecretHeaders,
}

impl WebhookSink {
    pub(super) async fn deliver(
        &mut self,
        leaves: &[Leaf],
        timeout: Duration,
    ) -> Result<(), DeliveryError> {
        let mut body =
            Vec::with_capacity(leaves.iter().map(|(_, r)| r.len() + 1).sum::<usize>() + 2);
        let content_type = match self.format {
            WebhookFormat::Json => {
                body.push(b'[');
                for (i, (_, record)) in leaves.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(record.as_bytes());
                }
                body.push(b']');
                "application/json"
            }
            WebhookFormat::Ndjson => {
                for (_, record) in leaves {
                    body.extend_from_slice(record.as_bytes());
                    body.push(b'\n');
                }
                "application/x-ndjson"
            }
        };
        self.poster
            .post(
                &self.url,
                content_type,
                &self.headers,
                Bytes::from(body),
                timeout,
            )
            .await?;
        Ok(())
    }
}

#[derive(Debug)]
pub(super) struct OtlpSink {
    poster: Poster,
    url: http::Uri,
    headers: SecretHeaders,
    resource: Resource,
}

impl OtlpSink {
    pub(super) fn new(
        poster: Poster,
        url: http::Uri,
        headers: SecretHeaders,
        service_name: &str,
    ) -> Self {
        OtlpSink {
            poster,
            url,
            headers,
            resource: Resource::service(service_name),
        }
    }

    pub(super) async fn deliver(
        &mut self,
        leaves: &[Leaf],
        timeout: Duration,
    ) -> Result<(), DeliveryError> {
        let observed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_string();
        let request = LogsRequest {
            resource_logs: vec![ResourceLogs {
                resource: self.resource.clone(),
                scope_logs: vec![ScopeLogs {
                    scope: Scope::new("portcullis.audit"),
                    log_records: leaves
                        .iter()
                        .map(|(seq, json)| log_record(*seq, json, &observed))
                        .collect(),
                }],
            }],
        };
        // Serialising strings and integers cannot fail.
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let answer = self
            .poster
            .post(
                &self.url,
                "application/json",
                &self.headers,
                Bytes::from(body),
                timeout,
            )
            .await?;
        // A 2xx may still reject some records for good (OTLP "partial
        // success"); sending them again would be rejected again, so say so.
        if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&answer) {
            let rejected = &answer["partialSuccess"]["rejectedLogRecords"];
            let rejected = rejected
                .as_u64()
                .or_else(|| rejected.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0);
            if rejected > 0 {
                tracing::warn!(
                    rejected,
                    message = %answer["partialSuccess"]["errorMessage"].as_str().unwrap_or(""),
                    "the OTLP collector rejected some audit records"
                );
            }
        }
        Ok(())
    }
}

/// One audit record as an OTLP log record: the canonical JSON as the body, the
/// fields SIEM queries use as attributes, and the request id as the trace id
/// (it is the trace id of the request's spans).
pub fn log_record(seq: u64, json: &str, observed_unix_nano: &str) -> LogRecord {
    let record = serde_json::from_str::<AuditRecord>(json).ok();
    let mut attributes = vec![KeyValue::int("portcullis.audit.seq", seq as i64)];
    let Some(r) = record else {
        return LogRecord {
            time_unix_nano: observed_unix_nano.to_string(),
            observed_time_unix_nano: observed_unix_nano.to_string(),
            severity_number: 13,
            severity_text: "WARN",
            body: AnyValue::String(json.to_string()),
            attributes,
            trace_id: String::new(),
        };
    };
    let (severity_number, severity_text, outcome) = match r.outcome {
        Outcome::Allow => (9, "INFO", "allow"),
        Outcome::Deny => (13, "WARN", "deny"),
    };
    attributes.push(KeyValue::string(
        "portcullis.request_id",
        r.request_id.clone(),
    ));
    attributes.push(KeyValue::string(
        "portcullis.record.kind",
        match r.kind {
            RecordKind::Request => "request",
            RecordKind::Admin => "admin",
            RecordKind::Process => "process",
            RecordKind::Egress => "egress",
        },
    ));
    attributes.push(KeyValue::string("portcullis.outcome", outcome));
    attributes.push(KeyValue::string("portcullis.action", r.action.clone()));
    for (key, value) in [
        ("portcullis.principal", &r.principal),
        ("portcullis.resource", &r.resource),
        ("portcullis.classification", &r.classification),
        ("portcullis.error_code", &r.error_code),
        ("client.address", &r.source_ip),
        ("url.path", &r.path),
    ] {
        if let Some(value) = value {
            attributes.push(KeyValue::string(key, value.clone()));
        }
    }
    if !r.policies.is_empty() {
        attributes.push(KeyValue {
            key: "portcullis.policies",
            value: AnyValue::Array {
                values: r.policies.iter().cloned().map(AnyValue::String).collect(),
            },
        });
    }
    if r.kind == RecordKind::Request {
        attributes.push(KeyValue::string("http.request.method", r.action.clone()));
    }
    attributes.push(KeyValue::int(
        "http.response.status_code",
        i64::from(r.status),
    ));
    attributes.push(KeyValue::int(
        "portcullis.duration_us",
        r.duration_us.min(i64::MAX as u64) as i64,
    ));
    if r.fail_open {
        attributes.push(KeyValue::bool("portcullis.fail_open", true));
    }
    LogRecord {
        time_unix_nano: nanos_from_millis(r.time_ms),
        observed_time_unix_nano: observed_unix_nano.to_string(),
        severity_number,
        severity_text,
        body: AnyValue::String(json.to_string()),
        attributes,
        trace_id: if crate::otlp::is_trace_id(&r.request_id) {
            r.request_id.clone()
        } else {
            String::new()
        },
    }
}
