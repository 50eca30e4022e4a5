//! OpenTelemetry Protocol over HTTP with the JSON encoding, written by hand:
//! the few message types Portcullis sends (logs and traces), and the HTTP
//! client that posts them and the audit webhooks.
//!
//! Why not the `opentelemetry` crates: they bring `tonic`/`prost` (or a
//! `reqwest` that must be kept from pulling aws-lc) and a global SDK, for what
//! is, on the wire, two small JSON documents. The field names follow the OTLP
//! specification's JSON mapping (`opentelemetry-proto`, `docs/specification.md`,
//! "JSON Protobuf Encoding"): lowerCamelCase names, 64-bit integers as decimal
//! strings, enums as integers, and trace and span ids as lowercase hex (not
//! base64, unlike the generic Protobuf JSON mapping).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::config::SecretHeaders;

/// `ExportLogsServiceRequest`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsRequest {
    /// One entry per resource (Portcullis sends one).
    pub resource_logs: Vec<ResourceLogs>,
}

/// `ResourceLogs`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLogs {
    /// The emitting service.
    pub resource: Resource,
    /// One entry per instrumentation scope.
    pub scope_logs: Vec<ScopeLogs>,
}

/// `ScopeLogs`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeLogs {
    /// The instrumentation scope.
    pub scope: Scope,
    /// The records.
    pub log_records: Vec<LogRecord>,
}

/// `LogRecord`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    /// When the event happened, ns since the epoch (decimal string).
    pub time_unix_nano: String,
    /// When it was exported, ns since the epoch.
    pub observed_time_unix_nano: String,
    /// `SeverityNumber`: 9 INFO, 13 WARN.
    pub severity_number: i32,
    /// `INFO`, `WARN`.
    pub severity_text: &'static str,
    /// The record.
    pub body: AnyValue,
    /// Indexed fields.
    pub attributes: Vec<KeyValue>,
    /// The trace the record belongs to (32 hex digits), when known.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
}

/// `ExportTraceServiceRequest`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TracesRequest {
    /// One entry per resource (Portcullis sends one).
    pub resource_spans: Vec<ResourceSpans>,
}

/// `ResourceSpans`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpans {
    /// The emitting service.
    pub resource: Resource,
    /// One entry per instrumentation scope.
    pub scope_spans: Vec<ScopeSpans>,
}

/// `ScopeSpans`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeSpans {
    /// The instrumentation scope.
    pub scope: Scope,
    /// The spans.
    pub spans: Vec<Span>,
}

/// `Span`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The parent's span id; absent on a root span.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub parent_span_id: String,
    /// The operation.
    pub name: String,
    /// `SpanKind`: 1 internal, 2 server, 3 client.
    pub kind: i32,
    /// Start, ns since the epoch (decimal string).
    pub start_time_unix_nano: String,
    /// End, ns since the epoch (decimal string).
    pub end_time_unix_nano: String,
    /// Span attributes.
    pub attributes: Vec<KeyValue>,
    /// Links to other spans (the caller's own trace, when it sent one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Ok or error.
    pub status: Status,
}

/// `Span.Link`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
}

/// `SpanKind` values.
pub mod span_kind {
    /// An internal operation.
    pub const INTERNAL: i32 = 1;
    /// The server side of a request.
    pub const SERVER: i32 = 2;
    /// An outgoing request.
    pub const CLIENT: i32 = 3;
}

/// `Status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// 0 unset, 1 ok, 2 error.
    pub code: i32,
    /// Why, for errors.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `Resource`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// `service.name`, `service.version`.
    pub attributes: Vec<KeyValue>,
}

impl Resource {
    /// The resource of this process.
    pub fn service(service_name: &str) -> Self {
        Resource {
            attributes: vec![
                KeyValue::string("service.name", service_name),
                KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
            ],
        }
    }
}

/// `InstrumentationScope`.
#[derive(Debug, Clone, Serialize)]
pub struct Scope {
    /// Scope name.
    pub name: &'static str,
    /// Scope version.
    pub version: &'static str,
}

impl Scope {
    /// A scope of this build.
    pub fn new(name: &'static str) -> Self {
        Scope {
            name,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// `KeyValue`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyValue {
    /// Attribute name.
    pub key: &'static str,
    /// Attribute value.
    pub value: AnyValue,
}

impl KeyValue {
    /// A string attribute.
    pub fn string(key: &'static str, value: impl Into<String>) -> Self {
        KeyValue {
            key,
            value: AnyValue::String(value.into()),
        }
    }

    /// An integer attribute.
    pub fn int(key: &'static str, value: i64) -> Self {
        KeyValue {
            key,
            value: AnyValue::Int(value.to_string()),
        }
    }

    /// A boolean attribute.
    pub fn bool(key: &'static str, value: bool) -> Self {
        KeyValue {
            key,
            value: AnyValue::Bool(value),
        }
    }
}

/// `AnyValue`: exactly one of its fields is set.
#[derive(Debug, Clone, Serialize)]
pub enum AnyValue {
    /// `stringValue`.
    #[serde(rename = "stringValue")]
    String(String),
    /// `intValue`: an int64, so a decimal string in JSON.
    #[serde(rename = "intValue")]
    Int(String),
    /// `boolValue`.
    #[serde(rename = "boolValue")]
    Bool(bool),
    /// `arrayValue`.
    #[serde(rename = "arrayValue")]
    Array {
        /// The elements.
        values: Vec<AnyValue>,
    },
}

/// Nanoseconds since the epoch as OTLP's decimal string, from milliseconds.
pub fn nanos_from_millis(ms: i64) -> String {
    (i128::from(ms) * 1_000_000).to_string()
}

type PostClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a POST did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The receiver answered with a non-2xx status.
    #[error("the receiver answered {0}")]
    Status(http::StatusCode),
    /// Connecting or sending failed.
    #[error("cannot reach the receiver: {0}")]
    Transport(String),
    /// No answer in time.
    #[error("the receiver did not answer within {0} ms")]
    Timeout(u128),
}

/// Posts bodies to HTTP(S) receivers (webhooks, OTLP collectors). Errors name
/// the status or transport failure, never a header value.
#[derive(Debug, Clone)]
pub struct Poster {
    client: PostClient,
}

/// Most of a receiver's answer that is read (to reuse the connection).
const MAX_ANSWER: usize = 64 * 1024;

impl Poster {
    /// A client trusting `tls` for https receivers.
    pub fn new(tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Poster {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(https),
        }
    }

    /// POSTs `body`; `Ok` carries the receiver's answer (at most 64 KiB).
    pub async fn post(
        &self,
        uri: &http::Uri,
        content_type: &'static str,
        headers: &SecretHeaders,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PostError> {
        let mut request = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, content_type)
            .header(
                http::header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| PostError::Transport(e.to_string()))?;
        for (name, value) in &headers.0 {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| PostError::Transport(error_chain(&e)))?;
            let status = response.status();
            let answer = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(answer)
            } else {
                Err(PostError::Status(status))
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PostError::Timeout(timeout.as_millis()))?
    }

    /// GETs `uri` (a JWKS, say); `Ok` carries the body (at most 64 KiB).
    pub async fn get(&self, uri: &http::Uri, timeout: Duration) -> Result<Bytes, PostError> {
        let request = http::Request::get(uri.clone())
            .header(
                http::header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| PostError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| PostError::Transport(error_chain(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(PostError::Status(status));
            }
            Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| PostError::Transport(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PostError::Timeout(timeout.as_millis()))?
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether `s` is a valid trace id: 32 lowercase hex digits, not all zero.
pub fn is_trace_id(s: &str) -> bool {
    s.len() == 32 && is_lower_hex(s) && s.bytes().any(|b| b != b'0')
}

/// Whether `s` holds only lowercase hex digits.
pub fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_mapping_follows_the_otlp_spec() {
        let request = TracesRequest {
            resource_spans: vec![ResourceSpans {
                resource: Resource {
                    attributes: vec![KeyValue::string("service.name", "p")],
                },
                scope_spans: vec![ScopeSpans {
                    scope: Scope {
                        name: "s",
                        version: "1",
                    },
                    spans: vec![Span {
                        trace_id: "5b8efff798038103d269b633813fc60c".into(),
                        span_id: "eee19b7ec3c1b174".into(),
                        parent_span_id: String::new(),
                        name: "n".into(),
                        kind: span_kind::SERVER,
                        start_time_unix_nano: nanos_from_millis(1_544_712_660_000),
                        end_time_unix_nano: nanos_from_millis(1_544_712_661_000),
                        attributes: vec![
                            KeyValue::int("i", 7),
                            KeyValue::bool("b", true),
                            KeyValue {
                                key: "a",
                                value: AnyValue::Array {
                                    values: vec![AnyValue::String("x".into())],
                                },
                            },
                        ],
                        links: vec![],
                        status: Status {
                            code: 1,
                            message: String::new(),
                        },
                    }],
                }],
            }],
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"p"}}]},"scopeSpans":[{"scope":{"name":"s","version":"1"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"n","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","attributes":[{"key":"i","value":{"intValue":"7"}},{"key":"b","value":{"boolValue":true}},{"key":"a","value":{"arrayValue":{"values":[{"stringValue":"x"}]}}}],"status":{"code":1}}]}]}]}"#
        );
    }
}
