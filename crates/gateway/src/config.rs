//! Gateway configuration in two stages: [`RawConfig`] mirrors the TOML file
//! (unknown keys are errors: a typo in a security config must fail loudly), and
//! [`Config`] is the validated, ready-to-use form.
//!
//! Value errors (a bad address, classification or URL) are raised while parsing, so
//! the TOML parser reports them with the file's line, column and key.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{Classification, is_valid_name};
use serde::{Deserialize, Deserializer};

/// Default data-plane address.
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8443";
/// Default admin-API address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9443";
/// Default trust domain of agent SPIFFE IDs.
pub const DEFAULT_TRUST_DOMAIN: &str = "portcullis.local";
/// Default request body limit: 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default `[audit] unauthenticated_records_per_minute`.
pub const DEFAULT_UNAUTHENTICATED_RECORDS_PER_MINUTE: u32 = 60;
/// Default time to wait for an upstream's response head.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// Default cap on concurrent connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The upstream of the quickstart: a demo service Portcullis runs in-process.
pub const BUILTIN_DEMO_UPSTREAM: &str = "builtin:demo";

/// The TOML file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[gateway]`: the data-plane listener.
    #[serde(default)]
    pub gateway: RawGateway,
    /// `[admin]`: the admin-API listener.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[identity]`: trust domain.
    #[serde(default)]
    pub identity: RawIdentity,
    /// `[policy]`: where policies live.
    #[serde(default)]
    pub policy: RawPolicy,
    /// `[limits]`: request limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// `[store]`: the database.
    #[serde(default)]
    pub store: RawStore,
    /// `[audit]`: the tamper-evident log.
    #[serde(default)]
    pub audit: RawAudit,
    /// `[telemetry]`: OpenTelemetry traces.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// `[[routes]]`: what the gateway forwards where.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// `[analytics]`: behavioral analytics and automated containment.
    #[serde(default)]
    pub analytics: crate::analytics::config::RawAnalytics,
    /// `[approvals]`: just-in-time approval tickets.
    #[serde(default)]
    pub approvals: RawApprovals,
}

/// `[approvals]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// URL every new approval ticket is POSTed to as JSON (chat-ops), e.g.
    /// `https://chat.example.com/hooks/portcullis`. Default: none.
    pub webhook: Option<String>,
}

/// `[gateway]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Address of the data-plane TLS listener (default `127.0.0.1:8443`).
    pub listen: Option<SocketAddr>,
    /// Maximum concurrent connections (default 10000).
    pub max_connections: Option<usize>,
    /// Maximum concurrent connections without a verified client certificate
    /// (before the handshake, token agents, anonymous clients; default half of
    /// `max_connections`). When full, the oldest idle one is closed.
    pub max_unverified_connections: Option<usize>,
    /// Maximum concurrent connections without a verified client certificate
    /// from one source address (default 256).
    pub max_unverified_per_source: Option<usize>,
    /// Extra DNS names or IP addresses for the TLS server certificate of both
    /// listeners (loopback names and the listen addresses are always included),
    /// so agents that reach the gateway by name can verify it.
    #[serde(default, deserialize_with = "server_names")]
    pub server_names: Vec<String>,
    /// What upstreams get in `X-Forwarded-Client-Cert`: `"sanitize"` (the
    /// default: nothing; the client's is always dropped) or `"set"` (the
    /// verified client certificate's hash and SPIFFE ID).
    #[serde(default)]
    pub forward_client_cert: RawForwardClientCert,
    /// More client request headers to drop before anything reads them, on top
    /// of the built-in list (`docs/configuration.md`), e.g. `["x-debug"]`.
    #[serde(default, deserialize_with = "header_names")]
    pub strip_request_headers: Vec<http::HeaderName>,
}

/// `[gateway] forward_client_cert`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawForwardClientCert {
    /// No `X-Forwarded-Client-Cert` upstream.
    #[default]
    Sanitize,
    /// The verified certificate's `Hash=…;URI=…`.
    Set,
}

fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<http::HeaderName>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|name| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| serde::de::Error::custom(format!("invalid header name `{name}`")))
        })
        .collect()
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin-API TLS listener (default `127.0.0.1:9443`).
    pub listen: Option<SocketAddr>,
    /// Refuse sensitive admin actions (revocation, enrolment, …) unless a
    /// human admin confirms them with TOTP, even before anyone has enrolled.
    /// Default `false`: once one admin has enrolled, TOTP is required anyway.
    pub require_mfa: Option<bool>,
}

/// `[identity]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Trust domain of SPIFFE IDs (default `portcullis.local`).
    #[serde(default, deserialize_with = "opt_trust_domain")]
    pub trust_domain: Option<String>,
    /// Public URL of the data plane: the access tokens' `iss` and `aud`, and the
    /// base of the token endpoint and of every DPoP `htu` (default
    /// `https://<bound data-plane address>`).
    pub token_issuer: Option<String>,
    /// Lifetime of issued access tokens in seconds (default 300, at most 900).
    pub token_ttl_seconds: Option<u64>,
    /// Longest delegation chain a token exchange may build (default 2).
    pub max_delegation_depth: Option<u32>,
    /// `[[identity.oidc]]`: external issuers of users' tokens.
    #[serde(default)]
    pub oidc: Vec<RawOidc>,
    /// `[identity.posture_attestor]`: who signs workload posture statements.
    pub posture_attestor: Option<RawOidc>,
}

/// `[[identity.oidc]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// The issuer (`iss` of its tokens).
    pub issuer: String,
    /// The audience its tokens must name for this gateway.
    pub audience: String,
    /// Where its keys are published (https, or http on loopback only).
    pub jwks_url: Option<String>,
    /// Or a local JWKS file (relative to the config file).
    pub jwks_file: Option<PathBuf>,
    /// `amr` values that count as a second factor (default `["mfa", "otp", "hwk"]`).
    pub mfa_amr: Option<Vec<String>>,
    /// Allowed clock skew in seconds (default 60, at most 300).
    pub clock_skew_seconds: Option<i64>,
}

/// Where an OIDC issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched over HTTPS (refreshed when a token names an unknown key).
    Url(String),
    /// Read from a file (re-read when a token names an unknown key).
    File(PathBuf),
}

/// A validated `[[identity.oidc]]`.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer.
    pub issuer: String,
    /// The audience.
    pub audience: String,
    /// Its keys.
    pub jwks: JwksSource,
    /// Second-factor `amr` values.
    pub mfa_amr: Vec<String>,
    /// Clock skew (seconds).
    pub clock_skew: i64,
}

/// `[policy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Directory holding `schema.cedarschema` and `*.cedar`; relative paths are
    /// relative to the config file. Default: `<state dir>/policies`, seeded with the
    /// shipped schema and quickstart policies.
    pub dir: Option<PathBuf>,
    /// Watch the directory and install each valid change as a new policy
    /// version (about once a second). Default false: the store's active
    /// version decides, and changes arrive by `portcullis policy push`.
    #[serde(default)]
    pub watch: bool,
    /// IANA time zone of `context.time.hour` and `context.time.weekday`, e.g.
    /// `Europe/Berlin` (default `UTC`). `context.time.epoch` is zone-free.
    pub timezone: Option<String>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest accepted request body in bytes (default 10 MiB).
    pub max_body_bytes: Option<u64>,
    /// Milliseconds to wait for an upstream's response head (default 30000).
    pub upstream_timeout_ms: Option<u64>,
    /// Milliseconds a client may take for the TLS handshake (default 10000).
    pub handshake_timeout_ms: Option<u64>,
    /// Milliseconds from the handshake to the first request (default 5000).
    pub first_request_timeout_ms: Option<u64>,
    /// Milliseconds a connection may stay open with nothing in flight
    /// (default 120000).
    pub idle_timeout_ms: Option<u64>,
    /// Milliseconds between HTTP/2 keep-alive pings (default 30000).
    pub h2_keepalive_interval_ms: Option<u64>,
    /// Milliseconds an HTTP/2 client has to answer a ping (default 10000).
    pub h2_keepalive_timeout_ms: Option<u64>,
    /// Failed TOTP codes (per admin) or client assertions (per agent) within
    /// `auth_failure_window_ms` that lock the principal out (default 5; a
    /// source address locks after four times as many).
    pub auth_max_failures: Option<u32>,
    /// The window failures are counted in, in milliseconds (default 900000).
    pub auth_failure_window_ms: Option<u64>,
    /// How long a lockout lasts, in milliseconds (default 900000).
    pub auth_lockout_ms: Option<u64>,
    /// Back-off after the second failure in milliseconds, doubled after each
    /// further one (default 1000; 0 = no back-off, only the lockout).
    pub auth_backoff_ms: Option<u64>,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Database URL, e.g. `sqlite:///var/lib/portcullis/portcullis.db`. Default: the
    /// SQLite file `portcullis.db` in the state directory.
    #[serde(default, deserialize_with = "opt_store_url")]
    pub url: Option<String>,
}

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

/// `[telemetry]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/HTTP base URL; spans go to `{otlp_endpoint}/v1/traces`. Tracing is
    /// off when absent.
    #[serde(default, deserialize_with = "opt_webhook")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the resource (default `portcullis`).
    pub service_name: Option<String>,
    /// Share of requests traced, 0.0 to 1.0 (default 1.0).
    pub sampling_ratio: Option<f64>,
    /// Static request headers for the collector; values are never logged.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique route name; the Cedar resource is `Route::"<name>"`.
    #[serde(deserialize_with = "route_name")]
    pub name: toml::Spanned<String>,
    /// Protocol adapter: `http` (default), `mcp` or `llm`.
    #[serde(default = "default_kind")]
    pub kind: RouteKind,
    /// Requests whose path is this prefix or below it (segment-wise) take this route.
    #[serde(deserialize_with = "path_prefix")]
    pub path_prefix: toml::Spanned<String>,
    /// `http://…` or `https://…` base URL, `builtin:demo`, or (MCP routes)
    /// `stdio:COMMAND ARGS`.
    #[serde(deserialize_with = "from_str")]
    pub upstream: Upstream,
    /// Sensitivity of the data behind the route.
    #[serde(deserialize_with = "from_str")]
    pub classification: Classification,
    /// `[routes.guard]`: what the content guard does on this route.
    #[serde(default)]
    pub guard: RouteGuard,
    /// An upstream credential from the vault, injected after policy allows
    /// both the route and `use_secret` on the secret.
    #[serde(default)]
    pub credential: Option<Credential>,
    /// Encrypted capture of request and response bodies.
    #[serde(default)]
    pub capture: Option<CaptureConfig>,
    /// Serve this route even while the audit log cannot be written (records are
    /// kept in memory, written later and marked `fail_open`). Default false:
    /// fail closed.
    #[serde(default)]
    pub audit_fail_open: bool,
    /// `[[routes.models]]`: the models of a `kind = "llm"` route.
    #[serde(default)]
    pub models: Vec<crate::llm::config::RawModel>,
    /// `kind = "llm"`: the environment variable holding the upstream API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `kind = "llm"`: the file holding the upstream API key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// `[routes.budget]`: per-agent limits of a `kind = "llm"` route.
    #[serde(default)]
    pub budget: Option<crate::llm::config::BudgetConfig>,
    /// Who owns the data behind the route (`resource.owner`, default "").
    #[serde(default)]
    pub owner: String,
    /// Free-form labels for policy (`resource.tags.contains("pii")`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `[routes.guard]`: the content guard's actions on one route. Both default
/// to `off`: scanning buffers request bodies and adds latency, so a route
/// opts in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteGuard {
    /// Prompt-injection scan of request bodies (input channel).
    #[serde(default)]
    pub injection: InjectionAction,
    /// Secrets and PII in request and response bodies.
    #[serde(default)]
    pub dlp: DlpAction,
}

impl RouteGuard {
    /// Whether request bodies must be read and scanned before authorization.
    pub fn scans_requests(&self) -> bool {
        self.injection != InjectionAction::Off || self.dlp != DlpAction::Off
    }
}

/// What a flagged prompt injection does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectionAction {
    /// Refuse the request with `content_blocked`.
    Block,
    /// Forward it, log the finding, and let policy decide (`context.content`).
    Alert,
    /// Do not scan.
    #[default]
    Off,
}

/// What a DLP finding does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlpAction {
    /// Replace found values in request and response bodies with typed
    /// placeholders (`[REDACTED_AWS_ACCESS_KEY_1]`); responses are redacted
    /// while they stream.
    Redact,
    /// Refuse a request body with findings (`content_blocked`); redact
    /// responses (a streaming response cannot be refused once it started).
    Block,
    /// Forward unchanged and log the findings (type, position, keyed hash).
    Alert,
    /// Do not scan.
    #[default]
    Off,
}

/// `credential = { secret = "…", … }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    secret: Option<String>,
    secrets: Option<Vec<String>>,
    header: Option<String>,
    format: Option<String>,
    query: Option<String>,
    username: Option<String>,
}

/// Where a route's credential goes in the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// A header: `prefix + value + suffix` (from `format`, e.g. `Bearer {}`).
    Header {
        /// The header name.
        name: http::HeaderName,
        /// Text before the value.
        prefix: String,
        /// Text after the value.
        suffix: String,
    },
    /// A query parameter (any client-sent parameter of that name is removed).
    Query(String),
    /// HTTP basic authentication with this user name; the secret is the password.
    Basic(String),
}

/// Most secrets one route may choose between.
pub const MAX_ROUTE_SECRETS: usize = 16;

/// A validated route credential.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCredential")]
pub struct Credential {
    /// The vault secrets' names (each the Cedar resource `Secret::"<name>"`),
    /// in order: a request gets the first one policy lets its agent use, so
    /// agents sharing a route can have different upstream credentials.
    pub secrets: Vec<String>,
    /// Where it goes.
    pub injection: Injection,
}

/// Headers the gateway sets itself or that describe the connection: a
/// credential may not be injected into them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "x-portcullis-agent",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
    "x-forwarded-client-cert",
];

impl TryFrom<RawCredential> for Credential {
    type Error = String;

    fn try_from(raw: RawCredential) -> Result<Self, String> {
        let secrets = match (raw.secret, raw.secrets) {
            (Some(one), None) => vec![one],
            (None, Some(many)) if !many.is_empty() && many.len() <= MAX_ROUTE_SECRETS => many,
            (None, Some(_)) => {
                return Err(format!("`secrets` needs 1 to {MAX_ROUTE_SECRETS} names"));
            }
            _ => return Err("a credential needs exactly one of `secret` or `secrets`".into()),
        };
        for (i, name) in secrets.iter().enumerate() {
            if !is_valid_name(name) {
                return Err(format!(
                    "invalid secret name `{name}`: use 1-64 characters of a-z, 0-9, `.`, `_` or `-`"
                ));
            }
            if secrets[..i].contains(name) {
                return Err(format!("secret `{name}` is listed twice"));
            }
        }
        let forms = [
            raw.header.is_some(),
            raw.query.is_some(),
            raw.username.is_some(),
        ];
        if forms.iter().filter(|f| **f).count() != 1 {
            return Err(
                "a credential needs exactly one of `header`, `query` or `username` (basic auth)"
                    .into(),
            );
        }
        if raw.format.is_some() && raw.header.is_none() {
            return Err("`format` applies only to the `header` form".into());
        }
        let injection = if let Some(header) = raw.header {
            let name = http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("invalid header name `{header}`"))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(format!(
                    "header `{header}` is set by the gateway or the connection and cannot carry a credential"
                ));
            }
            let format = raw.format.unwrap_or_else(|| "{}".into());
            let mut parts = format.split("{}");
            let (prefix, suffix) = match (parts.next(), parts.next(), parts.next()) {
                (Some(p), Some(s), None) => (p.to_string(), s.to_string()),
                _ => {
                    return Err(format!(
                        "format `{format}` must contain `{{}}` exactly once, where the secret goes"
                    ));
                }
            };
            if !format.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                return Err(format!("format `{format}` must be printable ASCII"));
            }
            Injection::Header {
                name,
                prefix,
                suffix,
            }
        } else if let Some(query) = raw.query {
            let ok = !query.is_empty()
                && query.len() <= 64
                && query
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(format!(
                    "invalid query parameter `{query}`: use 1-64 characters of A-Z, a-z, 0-9, `_`, `-`, `.`"
                ));
            }
            Injection::Query(query)
        } else {
            let user = raw.username.unwrap_or_default();
            if user.is_empty() || user.contains(':') || !user.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(format!(
                    "invalid basic-auth username `{user}`: printable ASCII without `:` or spaces"
                ));
            }
            Injection::Basic(user)
        };
        Ok(Credential { secrets, injection })
    }
}

/// `capture = { retention = "30d", max_bytes = 1048576 }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    retention: String,
    max_bytes: Option<u64>,
}

/// Default most bytes kept of each captured body.
pub const DEFAULT_CAPTURE_MAX_BYTES: u64 = 1024 * 1024;
/// Largest `capture.max_bytes`.
pub const MAX_CAPTURE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Validated payload capture settings of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCapture")]
pub struct CaptureConfig {
    /// How long captures are kept before they are shredded.
    pub retention: Duration,
    /// Most bytes kept of each body (digests cover the whole body).
    pub max_bytes: u64,
}

/// Parses `3600`, `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration `{s}`: use e.g. 3600, 90s, 30m, 24h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "invalid duration `{s}`: use e.g. 3600, 90s, 30m, 24h or 7d"
            ));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(unit)))
}

impl TryFrom<RawCapture> for CaptureConfig {
    type Error = String;

    fn try_from(raw: RawCapture) -> Result<Self, String> {
        let retention = parse_duration(&raw.retention)?;
        if retention.is_zero() {
            return Err("capture retention must be greater than 0".into());
        }
        let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_CAPTURE_MAX_BYTES);
        if max_bytes == 0 || max_bytes > MAX_CAPTURE_MAX_BYTES {
            return Err(format!(
                "capture max_bytes must be between 1 and {MAX_CAPTURE_MAX_BYTES}"
            ));
        }
        Ok(CaptureConfig {
            retention,
            max_bytes,
        })
    }
}

/// The protocol adapter of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A plain HTTP reverse proxy.
    #[default]
    Http,
    /// An MCP server (Streamable HTTP, or stdio): every JSON-RPC message is
    /// authorized, `tools/list` is filtered and tool definitions are pinned.
    Mcp,
    /// The OpenAI-compatible API: models, budgets, message inspection.
    Llm,
}

fn default_kind() -> RouteKind {
    RouteKind::default()
}

/// Where a route forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A base URL: scheme, authority and an optional base path (no query).
    Url {
        /// `http` or `https`.
        scheme: http::uri::Scheme,
        /// Host and port.
        authority: http::uri::Authority,
        /// Base path without a trailing slash (`""` for the root).
        base_path: String,
    },
    /// The in-process demo upstream.
    BuiltinDemo,
    /// An MCP server the gateway launches itself, one process per session,
    /// speaking JSON-RPC over its stdin and stdout (`kind = "mcp"` only).
    Stdio {
        /// The program (looked up in `PATH`).
        program: String,
        /// Its arguments, split on whitespace (no shell: no quoting, no expansion).
        args: Vec<String>,
    },
}

/// The prefix of an upstream the gateway launches: `stdio:COMMAND ARGS`.
pub const STDIO_UPSTREAM_PREFIX: &str = "stdio:";

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == BUILTIN_DEMO_UPSTREAM {
            return Ok(Upstream::BuiltinDemo);
        }
        if let Some(command) = s.strip_prefix(STDIO_UPSTREAM_PREFIX) {
            let mut words = command.split_whitespace().map(str::to_string);
            let program = words
                .next()
                .ok_or_else(|| format!("upstream `{s}` names no command"))?;
            return Ok(Upstream::Stdio {
                program,
                args: words.collect(),
            });
        }
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("invalid upstream URL `{s}`: {e}"))?;
        let scheme = uri
            .scheme()
            .filter(|s| **s == http::uri::Scheme::HTTP || **s == http::uri::Scheme::HTTPS)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "upstream `{s}` must be an http:// or https:// URL, `{BUILTIN_DEMO_UPSTREAM}`, or `{STDIO_UPSTREAM_PREFIX}COMMAND ARGS` (MCP routes)"
                )
            })?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("upstream `{s}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "upstream `{s}` must not carry credentials in the URL"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("upstream `{s}` must not have a query string"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Upstream::Url {
            scheme,
            authority,
            base_path,
        })
    }
}

fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn route_name<'de, D: Deserializer<'de>>(d: D) -> Result<toml::Spanned<String>, D::Error> {
    let s = toml::Spanned::<String>::deserialize(d)?;
    if !is_valid_name(s.get_ref()) {
        return Err(serde::de::Error::custom(format!(
            "invalid route name `{}`: use 1-64 characters of a-z, 0-9, `.`, `_` or `-`",
            s.get_ref()
        )));
    }
    Ok(s)
}

fn path_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<toml::Spanned<String>, D::Error> {
    let s = toml::Spanned::<String>::deserialize(d)?;
    let p = s.get_ref();
    // Canonical, and of unreserved characters only: then a canonical request
    // path matches the prefix exactly when its percent-decoding does
    // (target.rs).
    let ok = crate::target::is_route_prefix(p)
        && (p == "/" || !p.ends_with('/'))
        && crate::target::CanonicalTarget::parse(p, None).is_ok_and(|t| t.path == *p);
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "invalid path_prefix `{p}`: must start with `/`, have no trailing `/`, `//`, dot segments or segments ending in `.`, and hold only letters, digits, `-`, `.`, `_`, `~` and `/`"
        )));
    }
    Ok(s)
}

fn server_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for name in &names {
        let is_ip = name.parse::<std::net::IpAddr>().is_ok();
        let is_dns = !name.is_empty()
            && name.len() <= 253
            && !name.starts_with(['.', '-'])
            && !name.ends_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
        if !is_ip && !is_dns {
            return Err(serde::de::Error::custom(format!(
                "invalid server name `{name}`: use a lowercase DNS name or an IP address"
            )));
        }
    }
    Ok(names)
}

fn opt_trust_domain<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "invalid trust_domain `{s}`: use lowercase letters, digits, `.` and `-`"
        )));
    }
    Ok(Some(s))
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

fn opt_webhook<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let uri: http::Uri = s
        .parse()
        .map_err(|_| serde::de::Error::custom(format!("invalid webhook URL `{s}`")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(serde::de::Error::custom(format!(
            "invalid webhook URL `{s}`: use http:// or https://"
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

fn opt_store_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if !s.starts_with("sqlite:") {
        return Err(serde::de::Error::custom(format!(
            "unsupported store url `{s}`: this build supports `sqlite:` URLs"
        )));
    }
    Ok(Some(s))
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique name.
    pub name: String,
    /// Protocol adapter.
    pub kind: RouteKind,
    /// Path prefix (segment-wise match).
    pub path_prefix: String,
    /// Where to forward.
    pub upstream: Upstream,
    /// Data classification.
    pub classification: Classification,
    /// Content guard actions.
    pub guard: RouteGuard,
    /// Upstream credential injected from the vault.
    pub credential: Option<Credential>,
    /// Encrypted payload capture.
    pub capture: Option<CaptureConfig>,
    /// Serve while the audit log cannot be written.
    pub audit_fail_open: bool,
    /// Models, API key and budget of a `kind = "llm"` route.
    pub llm: Option<Arc<crate::llm::config::LlmConfig>>,
    /// `resource.owner`.
    pub owner: String,
    /// `resource.tags`.
    pub tags: Vec<String>,
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
}

/// Static HTTP headers whose values are secrets (API keys, tokens): `Debug`
/// shows only the names, and the values are marked sensitive for HTTP/2 HPACK.
#[derive(Clone, Default)]
pub struct SecretHeaders(pub Vec<(http::HeaderName, http::HeaderValue)>);

impl std::fmt::Debug for SecretHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}: <redacted>")))
            .finish()
    }
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

/// OpenTelemetry trace export.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `{otlp_endpoint}/v1/traces`.
    pub traces_url: http::Uri,
    /// Static headers.
    pub headers: SecretHeaders,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Share of requests traced, 0.0 to 1.0.
    pub sampling_ratio: f64,
}

/// Default `service.name` of OTLP resources.
pub const DEFAULT_SERVICE_NAME: &str = "portcullis";

/// The time zone policy sees wall-clock time in (`[policy] timezone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTimeZone {
    zone: jiff::tz::TimeZone,
    name: String,
}

impl Default for PolicyTimeZone {
    fn default() -> Self {
        PolicyTimeZone {
            zone: jiff::tz::TimeZone::UTC,
            name: "UTC".into(),
        }
    }
}

impl PolicyTimeZone {
    /// Looks up an IANA zone name in the system's time zone database.
    pub fn new(name: &str) -> Result<Self, String> {
        let zone = jiff::tz::TimeZone::get(name).map_err(|e| {
            format!("unknown time zone `{name}` ({e}); use an IANA name such as `Europe/Berlin`")
        })?;
        Ok(PolicyTimeZone {
            zone,
            name: name.to_string(),
        })
    }

    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hour and ISO weekday at `epoch` in this zone (daylight saving included).
    pub fn request_time(&self, epoch: i64) -> portcullis_policy::RequestTime {
        let utc = portcullis_policy::RequestTime::from_epoch(epoch);
        let Ok(ts) = jiff::Timestamp::from_second(epoch) else {
            return utc;
        };
        let local = self.zone.to_datetime(ts);
        portcullis_policy::RequestTime {
            hour: i64::from(local.hour()),
            weekday: i64::from(local.weekday().to_monday_one_offset()),
            epoch,
        }
    }
}

/// Where the policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A directory named in the config file.
    Dir(PathBuf),
    /// `<state dir>/policies`, seeded with the shipped defaults on first start.
    StateDir,
}

/// The listeners' connection limits: the defaults of
/// [`crate::listener::ConnectionLimits::with_max_connections`], overridden
/// key by key (each checked to be non-zero in `parse`).
fn connection_limits(
    gateway: &RawGateway,
    limits: &RawLimits,
) -> crate::listener::ConnectionLimits {
    let mut out = crate::listener::ConnectionLimits::with_max_connections(
        gateway.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
    );
    if let Some(n) = gateway.max_unverified_connections {
        out.max_unverified = n.max(1);
    }
    if let Some(n) = gateway.max_unverified_per_source {
        out.max_unverified_per_source = n.max(1);
    }
    let ms =
        |v: Option<u64>, default: Duration| v.map_or(default, |v| Duration::from_millis(v.max(1)));
    out.handshake_timeout = ms(limits.handshake_timeout_ms, out.handshake_timeout);
    out.first_request_timeout = ms(limits.first_request_timeout_ms, out.first_request_timeout);
    out.idle_timeout = ms(limits.idle_timeout_ms, out.idle_timeout);
    out.h2_keepalive_interval = ms(limits.h2_keepalive_interval_ms, out.h2_keepalive_interval);
    out.h2_keepalive_timeout = ms(limits.h2_keepalive_timeout_ms, out.h2_keepalive_timeout);
    out
}

/// The throttle of failed second factors and client assertions: the
/// defaults, overridden key by key (each checked to be non-zero in `parse`).
fn attempt_policy(limits: &RawLimits) -> crate::attempts::AttemptPolicy {
    let mut out = crate::attempts::AttemptPolicy::default();
    if let Some(n) = limits.auth_max_failures {
        out.max_failures = n.max(1);
    }
    let ms =
        |v: Option<u64>, default: Duration| v.map_or(default, |v| Duration::from_millis(v.max(1)));
    out.window = ms(limits.auth_failure_window_ms, out.window);
    out.lockout = ms(limits.auth_lockout_ms, out.lockout);
    // 0 turns the back-off off (the lockout stays).
    if let Some(v) = limits.auth_backoff_ms {
        out.backoff = Duration::from_millis(v);
    }
    out
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data-plane listener.
    pub gateway_listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Sensitive admin actions need TOTP even when no admin has enrolled.
    pub admin_require_mfa: bool,
    /// Connection caps and timeouts of each listener.
    pub connections: crate::listener::ConnectionLimits,
    /// Throttling of failed TOTP codes and client assertions.
    pub attempts: crate::attempts::AttemptPolicy,
    /// Extra names for the TLS server certificate.
    pub server_names: Vec<String>,
    /// What upstreams get in `X-Forwarded-Client-Cert`.
    pub forward_client_cert: crate::pipeline::forward::ForwardClientCert,
    /// Client request headers dropped besides the built-in ones.
    pub strip_request_headers: Vec<http::HeaderName>,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// The access tokens' issuer URL, when configured (else the bound address).
    pub token_issuer: Option<String>,
    /// Access-token lifetime (seconds).
    pub token_ttl: u64,
    /// Longest delegation chain (token exchange).
    pub max_delegation_depth: u32,
    /// External issuers of users' tokens.
    pub oidc: Vec<OidcConfig>,
    /// The signer of workload posture statements, when configured.
    pub posture_attestor: Option<OidcConfig>,
    /// Policy directory.
    pub policy: PolicySource,
    /// Whether `serve` watches the policy directory and hot-reloads changes.
    pub policy_watch: bool,
    /// The zone of `context.time.hour` / `weekday`.
    pub policy_timezone: PolicyTimeZone,
    /// Where new approval tickets are POSTed.
    pub approvals_webhook: Option<http::Uri>,
    /// Request body limit.
    pub max_body_bytes: u64,
    /// Upstream response-head timeout.
    pub upstream_timeout: Duration,
    /// Database URL, when not the default file in the state directory.
    pub store_url: Option<String>,
    /// The audit log.
    pub audit: AuditConfig,
    /// OpenTelemetry traces; `None` when tracing is off.
    pub telemetry: Option<TelemetryConfig>,
    /// Routes, in file order.
    pub routes: Vec<RouteConfig>,
    /// Behavioral analytics and containment.
    pub analytics: crate::analytics::config::AnalyticsConfig,
}

/// The configuration file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid (syntax, unknown key, bad value, conflict).
    #[error("invalid config file `{path}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line, column and key.
        message: String,
    },
}

impl Config {
    /// The built-in quickstart: default listeners and two routes to the demo
    /// upstream, one public and one confidential, so the first requests show both
    /// an allow and a denial.
    pub fn quickstart() -> Self {
        let demo = |name: &str, prefix: &str, classification| RouteConfig {
            name: name.into(),
            kind: RouteKind::Http,
            path_prefix: prefix.into(),
            upstream: Upstream::BuiltinDemo,
            classification,
            guard: RouteGuard::default(),
            credential: None,
            capture: None,
            audit_fail_open: false,
            llm: None,
            owner: String::new(),
            tags: Vec::new(),
        };
        Config {
            routes: vec![
                demo("demo", "/demo", Classification::Public),
                demo("payroll", "/payroll", Classification::Confidential),
            ],
            ..Self::from_raw_unchecked(RawConfig::default(), Path::new("."))
        }
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates TOML text; `path` is used for messages and relative directories.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| invalid(format!("\n{e}")))?;
        // Cross-field checks, reported with the line of the offending key.
        let line_of = |span: std::ops::Range<usize>| {
            text[..span.start.min(text.len())].matches('\n').count() + 1
        };
        let mut names = std::collections::HashSet::new();
        let mut prefixes = std::collections::HashSet::new();
        let base = path.parent().unwrap_or(Path::new("."));
        let mut llm = Vec::with_capacity(raw.routes.len());
        for route in &raw.routes {
            let line = line_of(route.name.span());
            match route.kind {
                RouteKind::Http | RouteKind::Llm => {
                    if matches!(route.upstream, Upstream::Stdio { .. }) {
                        return Err(invalid(format!(
                            "line {line}, key `routes.upstream`: route `{}`: `{STDIO_UPSTREAM_PREFIX}` upstreams are for `kind = \"mcp\"` routes",
                            route.name.get_ref()
                        )));
                    }
                }
                RouteKind::Mcp => {
                    if route.upstream == Upstream::BuiltinDemo {
                        return Err(invalid(format!(
                            "line {line}, key `routes.upstream`: route `{}`: an MCP route needs an http(s) MCP server URL, not `{BUILTIN_DEMO_UPSTREAM}`",
                            route.name.get_ref()
                        )));
                    }
                    if route.capture.is_some() || route.credential.is_some() {
                        return Err(invalid(format!(
                            "line {line}, route `{}`: `[routes.capture]` and `[routes.credential]` are not available on MCP routes yet",
                            route.name.get_ref()
                        )));
                    }
                }
            }
            if !names.insert(route.name.get_ref().clone()) {
                return Err(invalid(format!(
                    "line {}, key `routes.name`: duplicate route name `{}`",
                    line_of(route.name.span()),
                    route.name.get_ref()
                )));
            }
            if !prefixes.insert(route.path_prefix.get_ref().clone()) {
                return Err(invalid(format!(
                    "line {}, key `routes.path_prefix`: duplicate path_prefix `{}`",
                    line_of(route.path_prefix.span()),
                    route.path_prefix.get_ref()
                )));
            }
            let at = |what: String| {
                invalid(format!(
                    "line {}, route `{}`: {what}",
                    line_of(route.name.span()),
                    route.name.get_ref()
                ))
            };
            let has_llm_keys = !route.models.is_empty()
                || route.api_key_env.is_some()
                || route.api_key_file.is_some()
                || route.budget.is_some();
            match route.kind {
                RouteKind::Http | RouteKind::Mcp if has_llm_keys => {
                    return Err(at("`models`, `api_key_env`, `api_key_file` and `budget` belong to routes of kind `llm`".into()));
                }
                RouteKind::Llm if route.upstream == Upstream::BuiltinDemo => {
                    return Err(at(format!(
                        "a route of kind `llm` needs an OpenAI-compatible upstream URL, not `{BUILTIN_DEMO_UPSTREAM}`"
                    )));
                }
                _ => {}
            }
            llm.push(if route.kind == RouteKind::Llm {
                Some(Arc::new(
                    crate::llm::config::validate(
                        route.models.clone(),
                        route.api_key_env.clone(),
                        route.api_key_file.clone(),
                        route.budget,
                        route.classification,
                        base,
                    )
                    .map_err(at)?,
                ))
            } else {
                None
            });
        }
        if raw.limits.max_body_bytes == Some(0) {
            return Err(invalid(
                "key `limits.max_body_bytes`: must be greater than 0".into(),
            ));
        }
        if let Some(depth) = raw.identity.max_delegation_depth
            && !(1..=5).contains(&depth)
        {
            return Err(invalid(
                "key `identity.max_delegation_depth`: must be between 1 and 5".into(),
            ));
        }
        for (i, oidc) in raw
            .identity
            .oidc
            .iter()
            .chain(raw.identity.posture_attestor.iter())
            .enumerate()
        {
            let at = |m: &str| {
                invalid(format!(
                    "`[[identity.oidc]]` #{} ({}): {m}",
                    i + 1,
                    oidc.issuer
                ))
            };
            if oidc.issuer.is_empty() || oidc.audience.is_empty() {
                return Err(at("`issuer` and `audience` must not be empty"));
            }
            match (&oidc.jwks_url, &oidc.jwks_file) {
                (Some(url), None) => {
                    let uri: http::Uri = url
                        .parse()
                        .map_err(|_| at("`jwks_url` is not a valid URL"))?;
                    let loopback = uri.host().is_some_and(|h| {
                        h == "localhost"
                            || h.trim_matches(['[', ']'])
                                .parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| ip.is_loopback())
                    });
                    match uri.scheme_str() {
                        Some("https") => {}
                        Some("http") if loopback => {}
                        _ => return Err(at("`jwks_url` must be https (http only on loopback)")),
                    }
                }
                (None, Some(_)) => {}
                _ => return Err(at("set exactly one of `jwks_url` and `jwks_file`")),
            }
            if oidc
                .clock_skew_seconds
                .is_some_and(|s| !(0..=portcullis_identity::MAX_CLOCK_SKEW).contains(&s))
            {
                return Err(at("`clock_skew_seconds` must be between 0 and 300"));
            }
            if raw.identity.oidc[..i.min(raw.identity.oidc.len())]
                .iter()
                .any(|o| o.issuer == oidc.issuer)
            {
                return Err(at("duplicate issuer"));
            }
        }
        if raw.limits.upstream_timeout_ms == Some(0) {
            return Err(invalid(
                "key `limits.upstream_timeout_ms`: must be greater than 0".into(),
            ));
        }
        if raw.audit.checkpoint_interval_ms == Some(0) {
            return Err(invalid(
                "key `audit.checkpoint_interval_ms`: must be greater than 0".into(),
            ));
        }
        if let Some(ttl) = raw.identity.token_ttl_seconds
            && !(1..=portcullis_identity::MAX_TOKEN_TTL).contains(&ttl)
        {
            return Err(invalid(format!(
                "key `identity.token_ttl_seconds`: must be between 1 and {} (15 minutes)",
                portcullis_identity::MAX_TOKEN_TTL
            )));
        }
        if let Some(issuer) = &raw.identity.token_issuer
            && (!issuer.starts_with("https://")
                || issuer.len() <= "https://".len()
                || issuer.ends_with('/')
                || issuer.contains(['?', '#', ' ']))
        {
            return Err(invalid(format!(
                "key `identity.token_issuer`: `{issuer}` must be an https URL without a trailing slash, query or fragment, e.g. `https://gateway.example.com`"
            )));
        }
        if let Some(url) = &raw.approvals.webhook {
            let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some()
            });
            if !ok {
                return Err(invalid(format!(
                    "key `approvals.webhook`: `{url}` is not an http(s) URL"
                )));
            }
        }
        if let Some(zone) = &raw.policy.timezone {
            PolicyTimeZone::new(zone)
                .map_err(|e| invalid(format!("key `policy.timezone`: {e}")))?;
        }
        for (key, value) in [
            ("gateway.max_connections", raw.gateway.max_connections),
            (
                "gateway.max_unverified_connections",
                raw.gateway.max_unverified_connections,
            ),
            (
                "gateway.max_unverified_per_source",
                raw.gateway.max_unverified_per_source,
            ),
        ] {
            if value == Some(0) {
                return Err(invalid(format!("key `{key}`: must be greater than 0")));
            }
        }
        if let (Some(unverified), max) = (
            raw.gateway.max_unverified_connections,
            raw.gateway
                .max_connections
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        ) && unverified > max
        {
            return Err(invalid(format!(
                "key `gateway.max_unverified_connections`: {unverified} is more than `gateway.max_connections` ({max})"
            )));
        }
        for (key, value) in [
            (
                "limits.handshake_timeout_ms",
                raw.limits.handshake_timeout_ms,
            ),
            (
                "limits.first_request_timeout_ms",
                raw.limits.first_request_timeout_ms,
            ),
            ("limits.idle_timeout_ms", raw.limits.idle_timeout_ms),
            (
                "limits.h2_keepalive_interval_ms",
                raw.limits.h2_keepalive_interval_ms,
            ),
            (
                "limits.h2_keepalive_timeout_ms",
                raw.limits.h2_keepalive_timeout_ms,
            ),
            (
                "limits.auth_max_failures",
                raw.limits.auth_max_failures.map(u64::from),
            ),
            (
                "limits.auth_failure_window_ms",
                raw.limits.auth_failure_window_ms,
            ),
            ("limits.auth_lockout_ms", raw.limits.auth_lockout_ms),
        ] {
            if value == Some(0) {
                return Err(invalid(format!("key `{key}`: must be greater than 0")));
            }
        }
        let mut raw = raw;
        let telemetry = validate_telemetry(&raw.telemetry).map_err(invalid)?;
        let default_service = raw
            .telemetry
            .service_name
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        let export = validate_exports(
            std::mem::take(&mut raw.audit.export),
            text,
            base,
            &default_service,
        )
        .map_err(invalid)?;
        let route_names: Vec<&str> = raw
            .routes
            .iter()
            .map(|r| r.name.get_ref().as_str())
            .collect();
        let analytics = crate::analytics::config::AnalyticsConfig::from_raw(
            std::mem::take(&mut raw.analytics),
            &route_names,
            base,
        )
        .map_err(invalid)?;
        let mut config = Self::from_raw_unchecked(raw, base);
        for (route, llm) in config.routes.iter_mut().zip(llm) {
            route.llm = llm;
        }
        config.audit.export = export;
        config.analytics = analytics;
        config.telemetry = telemetry;
        // Port 0 asks the OS for a free port, so two `:0` addresses never collide.
        if config.gateway_listen == config.admin_listen && config.gateway_listen.port() != 0 {
            return Err(invalid(format!(
                "keys `gateway.listen` and `admin.listen`: the data plane and the admin API must listen on different addresses (both are {})",
                config.gateway_listen
            )));
        }
        Ok(config)
    }

    fn from_raw_unchecked(raw: RawConfig, base: &Path) -> Self {
        let parse_addr = |s: &str| s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let trust_domain = raw
            .identity
            .trust_domain
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string());
        let relative = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let audit = AuditConfig {
            origin: raw
                .audit
                .origin
                .unwrap_or_else(|| format!("{trust_domain}/audit")),
            checkpoint_interval: Duration::from_millis(
                raw.audit.checkpoint_interval_ms.unwrap_or(1000),
            ),
            verify_interval: match raw.audit.verify_interval_ms.unwrap_or(3_600_000) {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            fail_closed_after: Duration::from_millis(
                raw.audit.fail_closed_after_ms.unwrap_or(1000),
            ),
            unauthenticated_records_per_minute: raw
                .audit
                .unauthenticated_records_per_minute
                .unwrap_or(DEFAULT_UNAUTHENTICATED_RECORDS_PER_MINUTE),
            checkpoint_file: raw.audit.checkpoint_file.map(relative),
            checkpoint_webhook: raw.audit.checkpoint_webhook,
            export: Vec::new(),
            pseudonymize: raw.audit.pseudonymize,
            personal_data_retention: raw
                .audit
                .personal_data_retention_days
                .filter(|&d| d > 0)
                .map(|d| Duration::from_secs(d * 86_400)),
        };
        Config {
            audit,
            analytics: Default::default(),
            telemetry: None,
            gateway_listen: raw
                .gateway
                .listen
                .unwrap_or_else(|| parse_addr(DEFAULT_GATEWAY_LISTEN)),
            admin_require_mfa: raw.admin.require_mfa.unwrap_or(false),
            admin_listen: raw
                .admin
                .listen
                .unwrap_or_else(|| parse_addr(DEFAULT_ADMIN_LISTEN)),
            connections: connection_limits(&raw.gateway, &raw.limits),
            attempts: attempt_policy(&raw.limits),
            server_names: raw.gateway.server_names,
            forward_client_cert: match raw.gateway.forward_client_cert {
                RawForwardClientCert::Sanitize => {
                    crate::pipeline::forward::ForwardClientCert::Sanitize
                }
                RawForwardClientCert::Set => crate::pipeline::forward::ForwardClientCert::Set,
            },
            strip_request_headers: raw.gateway.strip_request_headers,
            token_issuer: raw.identity.token_issuer,
            max_delegation_depth: raw.identity.max_delegation_depth.unwrap_or(2),
            posture_attestor: raw.identity.posture_attestor.map(|o| OidcConfig {
                jwks: match (o.jwks_url, o.jwks_file) {
                    (Some(url), _) => JwksSource::Url(url),
                    (None, Some(file)) => JwksSource::File(relative(file)),
                    (None, None) => JwksSource::File(PathBuf::new()),
                },
                issuer: o.issuer,
                audience: o.audience,
                mfa_amr: Vec::new(),
                clock_skew: o.clock_skew_seconds.unwrap_or(60),
            }),
            oidc: raw
                .identity
                .oidc
                .into_iter()
                .map(|o| OidcConfig {
                    jwks: match (o.jwks_url, o.jwks_file) {
                        (Some(url), _) => JwksSource::Url(url),
                        (None, Some(file)) => JwksSource::File(relative(file)),
                        (None, None) => JwksSource::File(PathBuf::new()),
                    },
                    issuer: o.issuer,
                    audience: o.audience,
                    mfa_amr: o
                        .mfa_amr
                        .unwrap_or_else(|| vec!["mfa".into(), "otp".into(), "hwk".into()]),
                    clock_skew: o.clock_skew_seconds.unwrap_or(60),
                })
                .collect(),
            token_ttl: raw
                .identity
                .token_ttl_seconds
                .unwrap_or(portcullis_identity::DEFAULT_TOKEN_TTL),
            trust_domain,
            policy: match raw.policy.dir {
                Some(dir) if dir.is_absolute() => PolicySource::Dir(dir),
                Some(dir) => PolicySource::Dir(base.join(dir)),
                None => PolicySource::StateDir,
            },
            policy_watch: raw.policy.watch,
            // Checked in `parse`.
            approvals_webhook: raw
                .approvals
                .webhook
                .as_deref()
                .and_then(|u| u.parse().ok()),
            // Checked in `parse`; the quickstart has none.
            policy_timezone: raw
                .policy
                .timezone
                .as_deref()
                .and_then(|z| PolicyTimeZone::new(z).ok())
                .unwrap_or_default(),
            max_body_bytes: raw.limits.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            upstream_timeout: Duration::from_millis(
                raw.limits
                    .upstream_timeout_ms
                    .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS),
            ),
            store_url: raw.store.url,
            routes: raw
                .routes
                .into_iter()
                .map(|r| RouteConfig {
                    // Set by `parse`, which reports what is wrong with it.
                    llm: None,
                    name: r.name.into_inner(),
                    kind: r.kind,
                    path_prefix: r.path_prefix.into_inner(),
                    upstream: r.upstream,
                    classification: r.classification,
                    guard: r.guard,
                    credential: r.credential,
                    capture: r.capture,
                    audit_fail_open: r.audit_fail_open,
                    owner: r.owner,
                    tags: r.tags,
                })
                .collect(),
        }
    }
}

/// Checks each `[[audit.export]]` table against its kind and builds the sinks.
fn validate_exports(
    raw: Vec<RawExport>,
    text: &str,
    base: &Path,
    default_service: &str,
) -> Result<Vec<ExportConfig>, String> {
    let line_of =
        |span: std::ops::Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
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

fn validate_telemetry(raw: &RawTelemetry) -> Result<Option<TelemetryConfig>, String> {
    let ratio = raw.sampling_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&ratio) {
        return Err("key `telemetry.sampling_ratio`: must be between 0.0 and 1.0".into());
    }
    // `service_name` alone is fine: it also names the resource of `otlp`
    // export sinks.
    let Some(endpoint) = &raw.otlp_endpoint else {
        if !raw.headers.is_empty() || raw.sampling_ratio.is_some() {
            return Err(
                "key `telemetry.otlp_endpoint`: required when tracing is configured".into(),
            );
        }
        return Ok(None);
    };
    Ok(Some(TelemetryConfig {
        traces_url: otlp_url(endpoint, "traces")
            .map_err(|e| format!("key `telemetry.otlp_endpoint`: {e}"))?,
        headers: secret_headers(&raw.headers)
            .map_err(|e| format!("key `telemetry.headers`: {e}"))?,
        service_name: raw
            .service_name
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string()),
        sampling_ratio: ratio,
    }))
}

/// `{endpoint}/v1/{signal}`, the OTLP/HTTP path of a signal.
fn otlp_url(endpoint: &str, signal: &str) -> Result<http::Uri, String> {
    let base = endpoint.trim_end_matches('/');
    if base.contains('?') {
        return Err(format!(
            "OTLP endpoint `{endpoint}` must not have a query string"
        ));
    }
    format!("{base}/v1/{signal}")
        .parse()
        .map_err(|_| format!("invalid OTLP endpoint `{endpoint}`"))
}

/// Header names are checked and shown in errors; values are checked but never
/// shown, since they are usually credentials.
fn secret_headers(
    raw: &std::collections::BTreeMap<String, String>,
) -> Result<SecretHeaders, String> {
    let mut out = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name `{name}`"))?;
        let mut value = http::HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header `{name}` is not a valid header value"))?;
        value.set_sensitive(true);
        out.push((name, value));
    }
    Ok(SecretHeaders(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text`; `Ok` is a one-line summary, `Err` the message.
    fn check(text: &str, expect: &str) {
        let got = match Config::parse(text, Path::new("/etc/p/portcullis.toml")) {
            Ok(c) => format!(
                "ok {} {} {:?} {} routes={}",
                c.gateway_listen,
                c.admin_listen,
                c.policy,
                c.max_body_bytes,
                c.routes
                    .iter()
                    .map(|r| format!(
                        "{}:{}:{}{}",
                        r.name,
                        r.path_prefix,
                        r.classification,
                        if r.guard == RouteGuard::default() {
                            String::new()
                        } else {
                            format!(":{:?}/{:?}", r.guard.injection, r.guard.dlp)
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(expect), "expected `{expect}` in:\n{got}");
    }

    #[test]
    fn connection_limits_and_the_auth_throttle_default_and_override() {
        let parse = |text: &str| Config::parse(text, Path::new("/etc/p/portcullis.toml")).unwrap();
        let c = parse("[gateway]\nmax_connections = 40\n");
        assert_eq!(
            c.connections,
            crate::listener::ConnectionLimits::with_max_connections(40)
        );
        assert_eq!(c.connections.max_unverified, 20);
        assert_eq!(c.attempts, crate::attempts::AttemptPolicy::default());
        let c = parse(
            "[gateway]\nmax_unverified_connections = 7\nmax_unverified_per_source = 3\n\
             [limits]\nhandshake_timeout_ms = 100\nfirst_request_timeout_ms = 200\nidle_timeout_ms = 300\n\
             h2_keepalive_interval_ms = 400\nh2_keepalive_timeout_ms = 500\n\
             auth_max_failures = 2\nauth_failure_window_ms = 600\nauth_lockout_ms = 700\nauth_backoff_ms = 0\n",
        );
        let l = &c.connections;
        assert_eq!((l.max_unverified, l.max_unverified_per_source), (7, 3));
        assert_eq!(
            [
                l.handshake_timeout,
                l.first_request_timeout,
                l.idle_timeout,
                l.h2_keepalive_interval,
                l.h2_keepalive_timeout
            ],
            [100, 200, 300, 400, 500].map(Duration::from_millis)
        );
        let a = &c.attempts;
        assert_eq!(a.max_failures, 2);
        assert_eq!(
            [a.window, a.lockout, a.backoff],
            [600, 700, 0].map(Duration::from_millis)
        );
    }

    #[test]
    fn policy_time_zone_and_approvals_webhook() {
        let berlin = PolicyTimeZone::new("Europe/Berlin").unwrap();
        // Tue 2023-11-14 22:13:20 UTC is 23:13 in Berlin (CET, UTC+1).
        let t = berlin.request_time(1_700_000_000);
        assert_eq!((t.hour, t.weekday, t.epoch), (23, 2, 1_700_000_000));
        // Sat 2023-07-22 04:26:40 UTC is 06:26 (CEST, UTC+2): daylight saving.
        assert_eq!(berlin.request_time(1_690_000_000).hour, 6);
        // Mon 2023-11-13 23:30 UTC is already Tuesday in Berlin.
        assert_eq!(berlin.request_time(1_699_918_200).weekday, 2);
        assert_eq!(
            PolicyTimeZone::default().request_time(1_700_000_000).hour,
            22
        );
        check(
            "[policy]\ntimezone = \"Mars/Olympus\"",
            "key `policy.timezone`: unknown time zone `Mars/Olympus`",
        );
        check(
            "[policy]\ntimezone = \"Europe/Berlin\"\nwatch = true",
            "ok ",
        );
        check(
            "[approvals]\nwebhook = \"ftp://x\"",
            "key `approvals.webhook`: `ftp://x` is not an http(s) URL",
        );
        check(
            "[approvals]\nwebhook = \"https://chat.example.com/hook\"",
            "ok ",
        );
    }

    #[test]
    fn valid_files() {
        check(
            "",
            "ok 127.0.0.1:8443 127.0.0.1:9443 StateDir 10485760 routes=",
        );
        check(
            r#"
[gateway]
listen = "127.0.0.1:7000"
[admin]
listen = "127.0.0.1:7001"
[policy]
dir = "policies"
[limits]
max_body_bytes = 1024
upstream_timeout_ms = 500
[[routes]]
name = "api"
kind = "http"
path_prefix = "/api"
upstream = "http://127.0.0.1:9000/base/"
classification = "internal"
"#,
            "ok 127.0.0.1:7000 127.0.0.1:7001 Dir(\"/etc/p/policies\") 1024 routes=api:/api:internal",
        );
    }

    #[test]
    fn token_settings() {
        let parse = |t: &str| Config::parse(t, Path::new("/p.toml"));
        let c = parse("").unwrap();
        assert_eq!((c.token_issuer.as_deref(), c.token_ttl), (None, 300));
        let c = parse(
            "[identity]\ntoken_issuer = \"https://gw.example.com\"\ntoken_ttl_seconds = 900\n",
        )
        .unwrap();
        assert_eq!(
            (c.token_issuer.as_deref(), c.token_ttl),
            (Some("https://gw.example.com"), 900)
        );
        check(
            "[identity]\ntoken_ttl_seconds = 901\n",
            "key `identity.token_ttl_seconds`: must be between 1 and 900",
        );
        check("[identity]\ntoken_ttl_seconds = 0\n", "token_ttl_seconds");
        for bad in ["http://gw", "https://gw/", "https://", "https://gw?x=1"] {
            check(
                &format!("[identity]\ntoken_issuer = \"{bad}\"\n"),
                "key `identity.token_issuer`",
            );
        }
    }

    #[test]
    fn invalid_files_name_line_and_key() {
        check(
            "[gateway]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n",
            "unknown field `listn`",
        );
        check("[gateway]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n", "line 3");
        check("[gateway]\nlisten = \"nope\"\n", "line 2");
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"secret\"\n",
            "unknown classification `secret`",
        );
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"ftp://x\"\nclassification = \"public\"\n",
            "line 4",
        );
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"a/\"\nupstream = \"http://x\"\nclassification = \"public\"\n",
            "invalid path_prefix",
        );
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"public\"\nkind = \"grpc\"\n",
            "unknown variant `grpc`",
        );
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"public\"\n\
             [[routes]]\nname = \"a\"\npath_prefix = \"/b\"\nupstream = \"http://x\"\nclassification = \"public\"\n",
            "line 7, key `routes.name`: duplicate route name `a`",
        );
        check(
            "[gateway]\nlisten = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:1\"\n",
            "must listen on different addresses",
        );
        check("[limits]\nmax_body_bytes = 0\n", "limits.max_body_bytes");
        check(
            "[limits]\nfirst_request_timeout_ms = 0\n",
            "key `limits.first_request_timeout_ms`: must be greater than 0",
        );
        check(
            "[limits]\nauth_max_failures = 0\n",
            "key `limits.auth_max_failures`: must be greater than 0",
        );
        check(
            "[gateway]\nmax_unverified_per_source = 0\n",
            "key `gateway.max_unverified_per_source`: must be greater than 0",
        );
        check(
            "[gateway]\nmax_connections = 10\nmax_unverified_connections = 11\n",
            "is more than `gateway.max_connections` (10)",
        );
        check(
            "[limits]\nidle_timeout = 5\n",
            "unknown field `idle_timeout`",
        );
        check(
            "[gateway]\nserver_names = [\"gw.example.com\", \"Bad Name\"]\n",
            "invalid server name `Bad Name`",
        );
        check(
            "[gateway]\nserver_names = [\"gw.example.com\", \"10.0.0.5\"]\n",
            "ok ",
        );
        check(
            "[gateway]\nforward_client_cert = \"set\"\nstrip_request_headers = [\"X-Debug\"]\n",
            "ok ",
        );
        check(
            "[gateway]\nforward_client_cert = \"append\"\n",
            "unknown variant `append`",
        );
        check(
            "[gateway]\nstrip_request_headers = [\"bad name\"]\n",
            "invalid header name `bad name`",
        );
        for prefix in ["/a!b", "/a;b", "/a:b", "/a.", "/a/./b", "/a%41"] {
            check(
                &format!(
                    "[[routes]]\nname = \"a\"\npath_prefix = \"{prefix}\"\nupstream = \"http://x\"\nclassification = \"public\"\n"
                ),
                "invalid path_prefix",
            );
        }
        let parsed = Config::parse(
            "[gateway]\nforward_client_cert = \"set\"\nstrip_request_headers = [\"X-Debug\"]\n",
            Path::new("/etc/p/portcullis.toml"),
        )
        .unwrap();
        assert_eq!(
            parsed.forward_client_cert,
            crate::pipeline::forward::ForwardClientCert::Set
        );
        assert_eq!(parsed.strip_request_headers, ["x-debug"]);
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://user:pw@x\"\nclassification = \"public\"\n",
            "must not carry credentials",
        );
    }

    /// Parses `text` and summarises its export sinks and telemetry.
    fn check_export(text: &str, expect: &str) {
        let got = match Config::parse(text, Path::new("/etc/p/portcullis.toml")) {
            Ok(c) => format!("ok {:?} {:?}", c.audit.export, c.telemetry),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(expect), "expected `{expect}` in:\n{got}");
    }

    #[test]
    fn export_sinks() {
        check_export(
            "[[audit.export]]\nname = \"f\"\nkind = \"jsonl\"\npath = \"audit.jsonl\"\n",
            r#"Jsonl { path: Some("/etc/p/audit.jsonl") }"#,
        );
        check_export(
            "[[audit.export]]\nname = \"o\"\nkind = \"jsonl\"\npath = \"-\"\n",
            "Jsonl { path: None }",
        );
        check_export(
            "[[audit.export]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"siem.example:6514\"\ntransport = \"tcp\"\nfacility = \"local4\"\n",
            "transport: Tcp, facility: Local4, hostname: None, app_name: \"portcullis\"",
        );
        check_export(
            "[[audit.export]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"[::1]:6514\"\ntransport = \"tls\"\n",
            "transport: Tls, facility: Auth",
        );
        check_export(
            "[[audit.export]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"https://hec.example:8088/services/collector/raw\"\nformat = \"ndjson\"\nheaders = { Authorization = \"Splunk 5ecret\" }\n",
            r#"headers: ["authorization: <redacted>"]"#,
        );
        check_export(
            "[telemetry]\nservice_name = \"gw\"\n[[audit.export]]\nname = \"l\"\nkind = \"otlp\"\nendpoint = \"http://127.0.0.1:4318/\"\n",
            r#"url: http://127.0.0.1:4318/v1/logs, headers: [], service_name: "gw""#,
        );
        check_export(
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsampling_ratio = 0.25\n",
            "traces_url: http://c:4318/v1/traces, headers: [], service_name: \"portcullis\", sampling_ratio: 0.25",
        );
        // Errors name the line and key, and never show a header value.
        check_export(
            "[[audit.export]]\nname = \"w\"\nkind = \"webhook\"\n",
            "line 3, key `audit.export.url`: required",
        );
        check_export(
            "[[audit.export]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x\"\npath = \"a\"\n",
            "key `audit.export.path`: not a key of `kind = \"webhook\"` sinks",
        );
        check_export(
            "[[audit.export]]\nname = \"a\"\nkind = \"jsonl\"\npath = \"-\"\n[[audit.export]]\nname = \"a\"\nkind = \"jsonl\"\npath = \"x\"\n",
            "line 6, key `audit.export.name`: duplicate export name `a`",
        );
        check_export(
            "[[audit.export]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"siem\"\n",
            "invalid syslog address `siem`",
        );
        check_export(
            "[[audit.export]]\nname = \"s\"\nkind = \"kafka\"\n",
            "unknown variant `kafka`",
        );
        check_export(
            "[[audit.export]]\nname = \"s\"\nkind = \"jsonl\"\npath = \"-\"\nbatch = 3\n",
            "unknown field `batch`",
        );
        let bad_header = Config::parse(
            "[[audit.export]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x\"\nheaders = { X-Key = \"top\\nsecret\" }\n",
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(bad_header.contains("header `x-key`"), "{bad_header}");
        assert!(!bad_header.contains("secret"), "{bad_header}");
        check_export(
            "[telemetry]\nsampling_ratio = 2.0\notlp_endpoint = \"http://c\"\n",
            "must be between 0.0 and 1.0",
        );
        check_export(
            "[telemetry]\nsampling_ratio = 0.5\n",
            "telemetry.otlp_endpoint`: required",
        );
    }

    #[test]
    fn route_guard() {
        let route = "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"public\"\n";
        check(
            &format!("{route}[routes.guard]\ninjection = \"block\"\ndlp = \"redact\"\n"),
            "routes=a:/a:public:Block/Redact",
        );
        check(
            &format!("{route}[routes.guard]\ndlp = \"alert\"\n"),
            "routes=a:/a:public:Off/Alert",
        );
        check(route, "routes=a:/a:public");
        check(
            &format!("{route}[routes.guard]\ninjection = \"deny\"\n"),
            "unknown variant `deny`",
        );
        check(
            &format!("{route}[routes.guard]\ninjecton = \"block\"\n"),
            "unknown field `injecton`",
        );
    }

    #[test]
    fn credentials_and_capture() {
        let route = |extra: &str| {
            format!(
                "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"public\"\n{extra}\n"
            )
        };
        let ok = |extra: &str| {
            Config::parse(&route(extra), Path::new("/c.toml"))
                .unwrap()
                .routes
                .remove(0)
        };
        let r = ok(
            r#"credential = { secret = "openai-key", header = "Authorization", format = "Bearer {}" }"#,
        );
        assert_eq!(
            r.credential.unwrap().injection,
            Injection::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
                suffix: String::new()
            }
        );
        let r = ok(r#"credential = { secrets = ["team-a", "team-b"], query = "key" }"#);
        assert_eq!(r.credential.as_ref().unwrap().secrets, ["team-a", "team-b"]);
        let r = ok(r#"credential = { secret = "maps", query = "key" }"#);
        assert_eq!(
            r.credential.unwrap().injection,
            Injection::Query("key".into())
        );
        let r = ok(r#"credential = { secret = "jira", username = "bot@example.com" }"#);
        assert_eq!(
            r.credential.unwrap().injection,
            Injection::Basic("bot@example.com".into())
        );
        let r = ok(r#"capture = { retention = "7d" }"#);
        assert_eq!(
            r.capture.unwrap(),
            CaptureConfig {
                retention: Duration::from_secs(7 * 86_400),
                max_bytes: DEFAULT_CAPTURE_MAX_BYTES
            }
        );
        for (extra, expect) in [
            (r#"credential = { secret = "k" }"#, "exactly one of"),
            (r#"credential = { header = "x" }"#, "`secret` or `secrets`"),
            (
                r#"credential = { secret = "k", secrets = ["j"], header = "x" }"#,
                "`secret` or `secrets`",
            ),
            (
                r#"credential = { secrets = [], header = "x" }"#,
                "needs 1 to 16",
            ),
            (
                r#"credential = { secrets = ["a", "a"], header = "x" }"#,
                "listed twice",
            ),
            (
                r#"credential = { secret = "k", header = "x", query = "y" }"#,
                "exactly one of",
            ),
            (
                r#"credential = { secret = "K!", header = "x" }"#,
                "invalid secret name",
            ),
            (
                r#"credential = { secret = "k", header = "Host" }"#,
                "cannot carry a credential",
            ),
            (
                r#"credential = { secret = "k", header = "x", format = "Bearer" }"#,
                "exactly once",
            ),
            (
                r#"credential = { secret = "k", header = "x", format = "{}{}" }"#,
                "exactly once",
            ),
            (
                r#"credential = { secret = "k", query = "a b" }"#,
                "invalid query parameter",
            ),
            (
                r#"credential = { secret = "k", query = "a", format = "x{}" }"#,
                "only to the `header`",
            ),
            (
                r#"credential = { secret = "k", username = "a:b" }"#,
                "invalid basic-auth",
            ),
            (
                r#"credential = { secret = "k", header = "x", value = "leak" }"#,
                "unknown field `value`",
            ),
            (r#"capture = { retention = "0d" }"#, "greater than 0"),
            (r#"capture = { retention = "7w" }"#, "invalid duration"),
            (
                r#"capture = { retention = "1d", max_bytes = 0 }"#,
                "max_bytes",
            ),
        ] {
            check(&route(extra), expect);
            check(&route(extra), "line 6");
        }
    }

    #[test]
    fn upstream_urls() {
        let u: Upstream = "https://api.example:8443/v1/".parse().unwrap();
        assert_eq!(
            u,
            Upstream::Url {
                scheme: http::uri::Scheme::HTTPS,
                authority: "api.example:8443".parse().unwrap(),
                base_path: "/v1".into()
            }
        );
        assert_eq!(
            "builtin:demo".parse::<Upstream>(),
            Ok(Upstream::BuiltinDemo)
        );
        assert!("http://x/?q=1".parse::<Upstream>().is_err());
        assert!("/relative".parse::<Upstream>().is_err());
        assert_eq!(
            "stdio:node  server.js --port 0".parse::<Upstream>(),
            Ok(Upstream::Stdio {
                program: "node".into(),
                args: vec!["server.js".into(), "--port".into(), "0".into()]
            })
        );
        assert!("stdio:  ".parse::<Upstream>().is_err());
    }

    #[test]
    fn mcp_routes() {
        let route = |kind: &str, upstream: &str, extra: &str| {
            format!(
                "[[routes]]\nname = \"m\"\nkind = \"{kind}\"\npath_prefix = \"/m\"\nupstream = \"{upstream}\"\nclassification = \"internal\"\n{extra}"
            )
        };
        check(&route("mcp", "http://127.0.0.1:3001/mcp", ""), "ok ");
        check(&route("mcp", "stdio:node server.js", ""), "ok ");
        check(
            &route("http", "stdio:node server.js", ""),
            "line 2, key `routes.upstream`: route `m`: `stdio:` upstreams are for `kind = \"mcp\"` routes",
        );
        check(
            &route("mcp", "builtin:demo", ""),
            "an MCP route needs an http(s) MCP server URL",
        );
        check(
            &route(
                "mcp",
                "http://x/mcp",
                "[routes.guard]\ninjection = \"block\"\ndlp = \"redact\"\n",
            ),
            "m:/m:internal:Block/Redact",
        );
        check(
            &route(
                "mcp",
                "http://x/mcp",
                "[routes.capture]\nretention = \"1d\"\nmax_bytes = 1024\n",
            ),
            "`[routes.capture]` and `[routes.credential]` are not available on MCP routes yet",
        );
        check(
            &route("llm", "stdio:node server.js", ""),
            "`stdio:` upstreams are for `kind = \"mcp\"` routes",
        );
    }
}
