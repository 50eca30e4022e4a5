//! The configuration the control services read: the `[audit]` section
//! (`audit.rs`), the policy time zone, the validated `[[identity.oidc]]`, and the helpers the sections of the
//! gateway's `Config` share. The gateway's `config` module re-exports every
//! public item, so the whole file still parses in one place.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub mod audit;

pub use audit::{
    AuditConfig, DEFAULT_UNAUTHENTICATED_RECORDS_PER_MINUTE, Durability, ExportConfig, ExportKind,
    ExportTarget, Facility, KernelAudit, RawAudit, RawExport, SyslogTransport, WebhookFormat,
};

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

/// Where an OIDC issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched over HTTPS (refreshed when a token names an unknown key).
    Url(String),
    /// Read from a file (re-read when a token names an unknown key).
    File(PathBuf),
    /// Fetched from the `jwks_uri` of the issuer's OpenID Connect discovery
    /// document (`<issuer>/.well-known/openid-configuration`): login issuers
    /// configured without `jwks_url` or `jwks_file`.
    Discovery,
}

/// Where a login client's secret comes from (never the config file itself,
/// which is often committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSecretSource {
    /// A file holding the secret (surrounding whitespace ignored).
    File(PathBuf),
    /// An environment variable holding it.
    Env(String),
}

/// The gateway as an OpenID Connect client of an issuer: humans log in there
/// (the web console, the MCP authorization page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginClient {
    /// The gateway's client id at the issuer (the `aud` of ID tokens).
    pub client_id: String,
    /// A confidential client's secret; `None`: a public client (PKCE only).
    pub client_secret: Option<ClientSecretSource>,
    /// The name on the "Log in with" button.
    pub display_name: String,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
}

/// `[[admin.oidc_roles]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidcRole {
    /// The ID-token claim compared: `sub`, `email` (verified addresses
    /// only) or `groups` (matches when the list holds the value).
    pub claim: OidcRoleClaim,
    /// The value it must have.
    pub value: String,
    /// The admin role given: `owner`, `operator`, `policy-author`,
    /// `approver` or `auditor`.
    pub role: String,
    /// Only for logins at this issuer (default: any login issuer).
    pub issuer: Option<String>,
}

/// The claim an `[[admin.oidc_roles]]` entry compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OidcRoleClaim {
    /// The subject.
    Sub,
    /// The verified e-mail address.
    Email,
    /// One of the groups.
    Groups,
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
    /// Humans log in at this issuer, when set.
    pub login: Option<LoginClient>,
}

/// The 1-based line of the byte offset where `span` starts.
pub fn line_of(text: &str, span: std::ops::Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

/// `path` relative to the config file's directory `base`, unless absolute.
pub fn relative(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
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

/// Deserializes a string through its `FromStr`.
pub fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// An optional `http(s)://` webhook URL with a host.
pub fn opt_webhook<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
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

/// `{endpoint}/v1/{signal}`, the OTLP/HTTP path of a signal.
pub fn otlp_url(endpoint: &str, signal: &str) -> Result<http::Uri, String> {
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
pub fn secret_headers(
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
