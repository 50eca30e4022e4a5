//! `[audit]`: the tamper-evident log's origin, checkpoints, verification and
//! fail-closed timing, the sampling of refused unauthenticated requests,
//! pseudonymized fields, retention, and the SIEM export sinks
//! (`[[audit.export]]`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_core::is_valid_name;
use serde::{Deserialize, Deserializer};

use super::{SecretHeaders, opt_webhook, otlp_url, secret_headers};

/// Default `[audit] unauthenticated_records_per_minute`.
pub const DEFAULT_UNAUTHENTICATED_RECORDS_PER_MINUTE: u32 = 60;

/// `[audit]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// The log's name in its checkpoints and the key name of its signature
    /// (default `<trust domain>/audit`). No whitespace and no `+`.
    #[serde(default, deserialize_with = "opt_origin")]
    pub origin: Option<String>,
    /// How often a checkpoint is signed when there are new records (default 1000).
    pub checkpoint_interval_ms: Option<u64>,
    /// How often the whole stored log is verified again while serving, in
    /// milliseconds (default 3600000; 0 = only at start). A mismatch halts
    /// the log.
    pub verify_interval_ms: Option<u64>,
    /// How long the log may fail or stall before data-plane requests are refused
    /// with `audit_unavailable` (default 1000).
    pub fail_closed_after_ms: Option<u64>,
    /// Refused unauthenticated requests written in full per source address
    /// and minute (default 60); beyond it they are counted and summarised in
    /// one record per source and minute (`sampled`). Authenticated requests
    /// are never sampled.
    pub unauthenticated_records_per_minute: Option<u32>,
    /// A file each new checkpoint is appended to (relative to the config file),
    /// ideally on storage the admin of this host does not control.
    pub checkpoint_file: Option<PathBuf>,
    /// An http(s) URL each new checkpoint is POSTed to (`text/plain` signed note).
    #[serde(default, deserialize_with = "opt_webhook")]
    pub checkpoint_webhook: Option<String>,
    /// `[[audit.export]]`: where records are streamed (SIEM export).
    #[serde(default)]
    pub export: Vec<RawExport>,
    /// Record fields replaced by a keyed hash before they enter the log:
    /// any of `principal`, `source_ip`, `credential`.
    #[serde(default)]
    pub pseudonymize: Vec<crate::pseudonym::PersonalField>,
    /// Days the clear values of pseudonymized fields are kept beside the log
    /// (then deleted). Default 0: not kept at all.
    pub personal_data_retention_days: Option<u64>,
    /// Days records stay in the database. When set, a background task
    /// archives older signed records to `archive_dir` as sealed segments
    /// (as `audit archive` does) and then prunes them; nothing is pruned
    /// that was not archived first. Unset (default): the log is kept whole.
    pub retention_days: Option<u64>,
    /// Where retention writes its segments (relative to the config file;
    /// default `<state-dir>/audit-archive`).
    pub archive_dir: Option<PathBuf>,
    /// When an allowed call's record is made durable, for every route that
    /// does not say (default: `before_forward` for writes and confidential
    /// or restricted routes, `async` otherwise).
    pub durability: Option<Durability>,
    /// Whether the kernel's audit records of what sandboxed stdio MCP
    /// servers were refused (Landlock, seccomp) are read, each becoming a
    /// `process.violation` record (default `read`).
    #[serde(default)]
    pub kernel_audit: KernelAudit,
}

/// `[audit] kernel_audit`: reading the kernel's audit records of sandbox
/// violations (`docs/sandbox.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelAudit {
    /// Read them when this process may (`CAP_AUDIT_READ`); the kernel writes
    /// them only while its audit is on (`auditctl -e 1`, or `auditd`).
    #[default]
    Read,
    /// Read them, and turn the kernel audit on at start if it is off (a
    /// host-wide setting; needs `CAP_AUDIT_CONTROL`).
    Enable,
    /// Do not read them: violations show only as kills and egress refusals.
    Off,
}

/// When the record of an allowed call is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// The decision is committed (group commit) before the upstream is
    /// contacted; the completed record follows (the gateway's `audit_intent`).
    BeforeForward,
    /// The record is committed after the response, without delaying it.
    Async,
}

/// `[[audit.export]]`: one export sink. The keys a sink takes depend on its
/// `kind`; keys of another kind are errors (checked after parsing, with the
/// line of the sink's `kind`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExport {
    /// Unique sink name; also the key of its persisted cursor and its metric label.
    #[serde(deserialize_with = "export_name")]
    pub name: toml::Spanned<String>,
    /// `jsonl`, `syslog`, `webhook` or `otlp`.
    pub kind: toml::Spanned<ExportKind>,
    /// jsonl: the file records are appended to, or `-` for stdout.
    pub path: Option<PathBuf>,
    /// syslog: `host:port` of the collector.
    pub address: Option<String>,
    /// syslog: `udp` (default), `tcp` (RFC 6587 octet counting) or `tls`
    /// (RFC 5425).
    pub transport: Option<SyslogTransport>,
    /// syslog: facility name (default `auth`).
    pub facility: Option<Facility>,
    /// syslog: HOSTNAME field (default: this host's name).
    #[serde(default, deserialize_with = "opt_syslog_hostname")]
    pub hostname: Option<String>,
    /// syslog: APP-NAME field (default `portcullis`).
    #[serde(default, deserialize_with = "opt_syslog_token")]
    pub app_name: Option<String>,
    /// webhook: the http(s) URL batches are POSTed to.
    #[serde(default, deserialize_with = "opt_webhook")]
    pub url: Option<String>,
    /// webhook: `json` (an array per batch, default) or `ndjson`.
    pub format: Option<WebhookFormat>,
    /// otlp: the OTLP/HTTP base URL; logs go to `{endpoint}/v1/logs`.
    #[serde(default, deserialize_with = "opt_webhook")]
    pub endpoint: Option<String>,
    /// webhook, otlp: static request headers (e.g. `Authorization`). Values are
    /// secrets: they are never logged.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// otlp: `service.name` of the resource (default `[telemetry] service_name`
    /// or `portcullis`).
    pub service_name: Option<String>,
    /// Most records per delivery (default 500).
    pub batch_size: Option<u32>,
    /// Milliseconds one delivery may take before it counts as failed (default 10000).
    pub timeout_ms: Option<u64>,
}

/// The kind of an export sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportKind {
    /// JSON lines to a file or stdout.
    Jsonl,
    /// RFC 5424 syslog over UDP or TCP.
    Syslog,
    /// HTTP POST of JSON batches.
    Webhook,
    /// OpenTelemetry logs over OTLP/HTTP (JSON).
    Otlp,
}

impl ExportKind {
    fn as_str(self) -> &'static str {
        match self {
            ExportKind::Jsonl => "jsonl",
            ExportKind::Syslog => "syslog",
            ExportKind::Webhook => "webhook",
            ExportKind::Otlp => "otlp",
        }
    }
}

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    /// One datagram per message (RFC 5426). Fire and forget: a lost datagram
    /// is not noticed.
    Udp,
    /// A stream with octet-counting framing (RFC 6587 section 3.4.1).
    Tcp,
    /// The same stream inside TLS (RFC 5425), verified against the OS trust
    /// store and the Portcullis CA.
    Tls,
}

/// A syslog facility (RFC 5424 section 6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Facility {
    Kern = 0,
    User = 1,
    Mail = 2,
    Daemon = 3,
    Auth = 4,
    Syslog = 5,
    Lpr = 6,
    News = 7,
    Uucp = 8,
    Cron = 9,
    Authpriv = 10,
    Ftp = 11,
    Ntp = 12,
    Audit = 13,
    Alert = 14,
    Clock = 15,
    Local0 = 16,
    Local1 = 17,
    Local2 = 18,
    Local3 = 19,
    Local4 = 20,
    Local5 = 21,
    Local6 = 22,
    Local7 = 23,
}

/// The body of a webhook batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// One JSON array of records (`application/json`).
    Json,
    /// One record per line (`application/x-ndjson`).
    Ndjson,
}

fn opt_origin<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if !portcullis_audit::note::is_valid_key_name(&s) {
        return Err(serde::de::Error::custom(format!(
            "invalid audit origin `{s}`: it must be non-empty, without whitespace or `+`"
        )));
    }
    Ok(Some(s))
}

fn export_name<'de, D: Deserializer<'de>>(d: D) -> Result<toml::Spanned<String>, D::Error> {
    let s = toml::Spanned::<String>::deserialize(d)?;
    if !is_valid_name(s.get_ref()) {
        return Err(serde::de::Error::custom(format!(
            "invalid export name `{}`: use 1-64 characters of a-z, 0-9, `.`, `_` or `-`",
            s.get_ref()
        )));
    }
    Ok(s)
}

/// APP-NAME of RFC 5424: 1-48 printable US-ASCII characters, no spaces.
fn opt_syslog_token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    syslog_token(d, 48)
}

/// HOSTNAME of RFC 5424: 1-255 printable US-ASCII characters, no spaces.
fn opt_syslog_hostname<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    syslog_token(d, 255)
}

fn syslog_token<'de, D: Deserializer<'de>>(d: D, max: usize) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(serde::de::Error::custom(format!(
            "invalid syslog field `{s}`: use 1-{max} printable ASCII characters without spaces"
        )));
    }
    Ok(Some(s))
}

/// The audit log's settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Checkpoint origin and signing key name.
    pub origin: String,
    /// Checkpoint signing interval.
    pub checkpoint_interval: Duration,
    /// How often the full verification runs again; `None`: only at start.
    pub verify_interval: Option<Duration>,
    /// How long the log may fail before requests are refused.
    pub fail_closed_after: Duration,
    /// Refused unauthenticated requests recorded in full per source and minute.
    pub unauthenticated_records_per_minute: u32,
    /// File every checkpoint is appended to.
    pub checkpoint_file: Option<PathBuf>,
    /// URL every checkpoint is POSTed to.
    pub checkpoint_webhook: Option<String>,
    /// Export sinks, in file order.
    pub export: Vec<ExportConfig>,
    /// Fields pseudonymized in records.
    pub pseudonymize: Vec<crate::pseudonym::PersonalField>,
    /// How long clear values of pseudonymized fields are kept (none: not kept).
    pub personal_data_retention: Option<Duration>,
    /// How long records stay in the database before they are archived and
    /// pruned (none: kept whole).
    pub retention: Option<Duration>,
    /// The retention archive directory; `None`: `<state-dir>/audit-archive`.
    pub archive_dir: Option<PathBuf>,
    /// The durability of routes that do not set their own.
    pub durability: Option<Durability>,
    /// Reading the kernel's records of sandbox violations.
    pub kernel_audit: KernelAudit,
}

/// Where an export sink sends records.
#[derive(Debug, Clone)]
pub enum ExportTarget {
    /// JSON lines appended to a file (fsync per batch), or stdout when `None`.
    Jsonl {
        /// The file, or `None` for stdout.
        path: Option<PathBuf>,
    },
    /// RFC 5424 syslog.
    Syslog {
        /// `host:port`, resolved at every connection.
        address: String,
        /// UDP or TCP.
        transport: SyslogTransport,
        /// The facility of every message.
        facility: Facility,
        /// HOSTNAME, or `None` for this host's name.
        hostname: Option<String>,
        /// APP-NAME.
        app_name: String,
    },
    /// HTTP POST of each batch.
    Webhook {
        /// The URL.
        url: http::Uri,
        /// Array or lines.
        format: WebhookFormat,
        /// Static headers.
        headers: SecretHeaders,
    },
    /// OTLP/HTTP logs (JSON encoding).
    Otlp {
        /// `{endpoint}/v1/logs`.
        url: http::Uri,
        /// Static headers.
        headers: SecretHeaders,
        /// The resource's `service.name`.
        service_name: String,
    },
}

/// One validated export sink.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Unique name; the key of the persisted cursor.
    pub name: String,
    /// Where records go.
    pub target: ExportTarget,
    /// Most records per delivery.
    pub batch_size: u32,
    /// Time allowed for one delivery.
    pub timeout: Duration,
}

/// Checks each `[[audit.export]]` table against its kind and builds the sinks.
pub fn validate_exports(
    raw: Vec<RawExport>,
    text: &str,
    base: &Path,
    default_service: &str,
) -> Result<Vec<ExportConfig>, String> {
    let line_of = |span: std::ops::Range<usize>| super::line_of(text, span);
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for sink in raw {
        let name = sink.name.get_ref().clone();
        if !names.insert(name.clone()) {
            return Err(format!(
                "line {}, key `audit.export.name`: duplicate export name `{name}`",
                line_of(sink.name.span())
            ));
        }
        let kind = *sink.kind.get_ref();
        let line = line_of(sink.kind.span());
        let at = |key: &str, what: &str| {
            format!("line {line}, key `audit.export.{key}`: {what} (export `{name}`)")
        };
        // Keys that belong to other kinds are errors, as unknown keys are.
        let given: [(&str, bool, &[ExportKind]); 11] = [
            ("path", sink.path.is_some(), &[ExportKind::Jsonl]),
            ("address", sink.address.is_some(), &[ExportKind::Syslog]),
            ("transport", sink.transport.is_some(), &[ExportKind::Syslog]),
            ("facility", sink.facility.is_some(), &[ExportKind::Syslog]),
            ("hostname", sink.hostname.is_some(), &[ExportKind::Syslog]),
            ("app_name", sink.app_name.is_some(), &[ExportKind::Syslog]),
            ("url", sink.url.is_some(), &[ExportKind::Webhook]),
            ("format", sink.format.is_some(), &[ExportKind::Webhook]),
            ("endpoint", sink.endpoint.is_some(), &[ExportKind::Otlp]),
            (
                "headers",
                !sink.headers.is_empty(),
                &[ExportKind::Webhook, ExportKind::Otlp],
            ),
            (
                "service_name",
                sink.service_name.is_some(),
                &[ExportKind::Otlp],
            ),
        ];
        for (key, present, kinds) in given {
            if present && !kinds.contains(&kind) {
                return Err(at(
                    key,
                    &format!("not a key of `kind = \"{}\"` sinks", kind.as_str()),
                ));
            }
        }
        let target = match kind {
            ExportKind::Jsonl => {
                let path = sink
                    .path
                    .ok_or_else(|| at("path", "required: a file, or \"-\" for stdout"))?;
                ExportTarget::Jsonl {
                    path: if path.as_os_str() == "-" {
                        None
                    } else if path.is_absolute() {
                        Some(path)
                    } else {
                        Some(base.join(path))
                    },
                }
            }
            ExportKind::Syslog => {
                let address = sink
                    .address
                    .ok_or_else(|| at("address", "required: `host:port`"))?;
                let port_ok = address.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !port_ok {
                    return Err(at(
                        "address",
                        &format!("invalid syslog address `{address}`: use `host:port`"),
                    ));
                }
                ExportTarget::Syslog {
                    address,
                    transport: sink.transport.unwrap_or(SyslogTransport::Udp),
                    facility: sink.facility.unwrap_or(Facility::Auth),
                    hostname: sink.hostname,
                    app_name: sink.app_name.unwrap_or_else(|| "portcullis".into()),
                }
            }
            ExportKind::Webhook => {
                let url = sink
                    .url
                    .ok_or_else(|| at("url", "required: an http(s) URL"))?;
                ExportTarget::Webhook {
                    url: url.parse().map_err(|_| at("url", "invalid URL"))?,
                    format: sink.format.unwrap_or(WebhookFormat::Json),
                    headers: secret_headers(&sink.headers).map_err(|e| at("headers", &e))?,
                }
            }
            ExportKind::Otlp => {
                let endpoint = sink
                    .endpoint
                    .ok_or_else(|| at("endpoint", "required: the OTLP/HTTP base URL"))?;
                ExportTarget::Otlp {
                    url: otlp_url(&endpoint, "logs").map_err(|e| at("endpoint", &e))?,
                    headers: secret_headers(&sink.headers).map_err(|e| at("headers", &e))?,
                    service_name: sink
                        .service_name
                        .unwrap_or_else(|| default_service.to_string()),
                }
            }
        };
        let batch_size = sink.batch_size.unwrap_or(500);
        if batch_size == 0 || batch_size > 10_000 {
            return Err(at("batch_size", "must be between 1 and 10000"));
        }
        let timeout_ms = sink.timeout_ms.unwrap_or(10_000);
        if timeout_ms == 0 {
            return Err(at("timeout_ms", "must be greater than 0"));
        }
        out.push(ExportConfig {
            name,
            target,
            batch_size,
            timeout: Duration::from_millis(timeout_ms),
        });
    }
    Ok(out)
}

/// Checks that the checkpoint interval and the retention are non-zero.
pub fn check_checkpoint_interval(audit: &RawAudit) -> Result<(), String> {
    if audit.checkpoint_interval_ms == Some(0) {
        return Err("key `audit.checkpoint_interval_ms`: must be greater than 0".into());
    }
    if audit.retention_days == Some(0) {
        return Err(
            "key `audit.retention_days`: must be at least 1 (leave it out to keep the whole log)"
                .into(),
        );
    }
    if audit.archive_dir.is_some() && audit.retention_days.is_none() {
        return Err("key `audit.archive_dir`: needs `audit.retention_days`".into());
    }
    Ok(())
}

/// The log's settings with their defaults; the export sinks are left empty
/// (`validate_exports` builds them).
pub fn audit_config(raw: RawAudit, trust_domain: &str, base: &Path) -> AuditConfig {
    AuditConfig {
        origin: raw
            .origin
            .unwrap_or_else(|| format!("{trust_domain}/audit")),
        checkpoint_interval: Duration::from_millis(raw.checkpoint_interval_ms.unwrap_or(1000)),
        verify_interval: match raw.verify_interval_ms.unwrap_or(3_600_000) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
        fail_closed_after: Duration::from_millis(raw.fail_closed_after_ms.unwrap_or(1000)),
        unauthenticated_records_per_minute: raw
            .unauthenticated_records_per_minute
            .unwrap_or(DEFAULT_UNAUTHENTICATED_RECORDS_PER_MINUTE),
        checkpoint_file: raw.checkpoint_file.map(|p| super::relative(base, p)),
        checkpoint_webhook: raw.checkpoint_webhook,
        export: Vec::new(),
        pseudonymize: raw.pseudonymize,
        personal_data_retention: raw
            .personal_data_retention_days
            .filter(|&d| d > 0)
            .map(|d| Duration::from_secs(d * 86_400)),
        retention: raw
            .retention_days
            .map(|d| Duration::from_secs(d.saturating_mul(86_400))),
        archive_dir: raw.archive_dir.map(|p| super::relative(base, p)),
        durability: raw.durability,
        kernel_audit: raw.kernel_audit,
    }
}
