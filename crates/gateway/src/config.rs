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
    /// `[[routes]]`: what the gateway forwards where.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[gateway]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Address of the data-plane TLS listener (default `127.0.0.1:8443`).
    pub listen: Option<SocketAddr>,
    /// Maximum concurrent connections (default 10000).
    pub max_connections: Option<usize>,
    /// Extra DNS names or IP addresses for the TLS server certificate of both
    /// listeners (loopback names and the listen addresses are always included),
    /// so agents that reach the gateway by name can verify it.
    #[serde(default, deserialize_with = "server_names")]
    pub server_names: Vec<String>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin-API TLS listener (default `127.0.0.1:9443`).
    pub listen: Option<SocketAddr>,
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
}

/// `[policy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Directory holding `schema.cedarschema` and `*.cedar`; relative paths are
    /// relative to the config file. Default: `<state dir>/policies`, seeded with the
    /// shipped schema and quickstart policies.
    pub dir: Option<PathBuf>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest accepted request body in bytes (default 10 MiB).
    pub max_body_bytes: Option<u64>,
    /// Milliseconds to wait for an upstream's response head (default 30000).
    pub upstream_timeout_ms: Option<u64>,
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
    /// How long the log may fail or stall before data-plane requests are refused
    /// with `audit_unavailable` (default 1000).
    pub fail_closed_after_ms: Option<u64>,
    /// A file each new checkpoint is appended to (relative to the config file),
    /// ideally on storage the admin of this host does not control.
    pub checkpoint_file: Option<PathBuf>,
    /// An http(s) URL each new checkpoint is POSTed to (`text/plain` signed note).
    #[serde(default, deserialize_with = "opt_webhook")]
    pub checkpoint_webhook: Option<String>,
    /// Record fields replaced by a keyed hash before they enter the log:
    /// any of `principal`, `source_ip`, `credential`.
    #[serde(default)]
    pub pseudonymize: Vec<crate::pseudonym::PersonalField>,
    /// Days the clear values of pseudonymized fields are kept beside the log
    /// (then deleted). Default 0: not kept at all.
    pub personal_data_retention_days: Option<u64>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique route name; the Cedar resource is `Route::"<name>"`.
    #[serde(deserialize_with = "route_name")]
    pub name: toml::Spanned<String>,
    /// Protocol adapter: only `http` for now.
    #[serde(default = "default_kind")]
    pub kind: RouteKind,
    /// Requests whose path is this prefix or below it (segment-wise) take this route.
    #[serde(deserialize_with = "path_prefix")]
    pub path_prefix: toml::Spanned<String>,
    /// `http://…` or `https://…` base URL, or `builtin:demo`.
    #[serde(deserialize_with = "from_str")]
    pub upstream: Upstream,
    /// Sensitivity of the data behind the route.
    #[serde(deserialize_with = "from_str")]
    pub classification: Classification,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A plain HTTP reverse proxy.
    Http,
}

fn default_kind() -> RouteKind {
    RouteKind::Http
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
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == BUILTIN_DEMO_UPSTREAM {
            return Ok(Upstream::BuiltinDemo);
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
                    "upstream `{s}` must be an http:// or https:// URL or `{BUILTIN_DEMO_UPSTREAM}`"
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
    let ok = p.starts_with('/')
        && (p == "/" || !p.ends_with('/'))
        && !p.contains("//")
        && !p.split('/').any(|seg| seg == "." || seg == "..")
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%'));
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "invalid path_prefix `{p}`: must start with `/`, have no trailing `/`, `//`, dot segments, `%`, `?` or `#`"
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
    /// Upstream credential injected from the vault.
    pub credential: Option<Credential>,
    /// Encrypted payload capture.
    pub capture: Option<CaptureConfig>,
    /// Serve while the audit log cannot be written.
    pub audit_fail_open: bool,
}

/// The audit log's settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Checkpoint origin and signing key name.
    pub origin: String,
    /// Checkpoint signing interval.
    pub checkpoint_interval: Duration,
    /// How long the log may fail before requests are refused.
    pub fail_closed_after: Duration,
    /// File every checkpoint is appended to.
    pub checkpoint_file: Option<PathBuf>,
    /// URL every checkpoint is POSTed to.
    pub checkpoint_webhook: Option<String>,
    /// Fields pseudonymized in records.
    pub pseudonymize: Vec<crate::pseudonym::PersonalField>,
    /// How long clear values of pseudonymized fields are kept (none: not kept).
    pub personal_data_retention: Option<Duration>,
}

/// Where the policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A directory named in the config file.
    Dir(PathBuf),
    /// `<state dir>/policies`, seeded with the shipped defaults on first start.
    StateDir,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data-plane listener.
    pub gateway_listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Concurrent connection cap per listener.
    pub max_connections: usize,
    /// Extra names for the TLS server certificate.
    pub server_names: Vec<String>,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// The access tokens' issuer URL, when configured (else the bound address).
    pub token_issuer: Option<String>,
    /// Access-token lifetime (seconds).
    pub token_ttl: u64,
    /// Policy directory.
    pub policy: PolicySource,
    /// Request body limit.
    pub max_body_bytes: u64,
    /// Upstream response-head timeout.
    pub upstream_timeout: Duration,
    /// Database URL, when not the default file in the state directory.
    pub store_url: Option<String>,
    /// The audit log.
    pub audit: AuditConfig,
    /// Routes, in file order.
    pub routes: Vec<RouteConfig>,
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
            credential: None,
            capture: None,
            audit_fail_open: false,
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
        for route in &raw.routes {
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
        }
        if raw.limits.max_body_bytes == Some(0) {
            return Err(invalid(
                "key `limits.max_body_bytes`: must be greater than 0".into(),
            ));
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
        if raw.gateway.max_connections == Some(0) {
            return Err(invalid(
                "key `gateway.max_connections`: must be greater than 0".into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let config = Self::from_raw_unchecked(raw, base);
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
            fail_closed_after: Duration::from_millis(
                raw.audit.fail_closed_after_ms.unwrap_or(1000),
            ),
            checkpoint_file: raw.audit.checkpoint_file.map(relative),
            checkpoint_webhook: raw.audit.checkpoint_webhook,
            pseudonymize: raw.audit.pseudonymize,
            personal_data_retention: raw
                .audit
                .personal_data_retention_days
                .filter(|&d| d > 0)
                .map(|d| Duration::from_secs(d * 86_400)),
        };
        Config {
            audit,
            gateway_listen: raw
                .gateway
                .listen
                .unwrap_or_else(|| parse_addr(DEFAULT_GATEWAY_LISTEN)),
            admin_listen: raw
                .admin
                .listen
                .unwrap_or_else(|| parse_addr(DEFAULT_ADMIN_LISTEN)),
            max_connections: raw
                .gateway
                .max_connections
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            server_names: raw.gateway.server_names,
            token_issuer: raw.identity.token_issuer,
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
                    name: r.name.into_inner(),
                    kind: r.kind,
                    path_prefix: r.path_prefix.into_inner(),
                    upstream: r.upstream,
                    classification: r.classification,
                    credential: r.credential,
                    capture: r.capture,
                    audit_fail_open: r.audit_fail_open,
                })
                .collect(),
        }
    }
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
                    .map(|r| format!("{}:{}:{}", r.name, r.path_prefix, r.classification))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(expect), "expected `{expect}` in:\n{got}");
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
            "[gateway]\nserver_names = [\"gw.example.com\", \"Bad Name\"]\n",
            "invalid server name `Bad Name`",
        );
        check(
            "[gateway]\nserver_names = [\"gw.example.com\", \"10.0.0.5\"]\n",
            "ok ",
        );
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://user:pw@x\"\nclassification = \"public\"\n",
            "must not carry credentials",
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
    }
}
