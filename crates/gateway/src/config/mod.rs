//! Gateway configuration in two stages: [`RawConfig`] mirrors the TOML file
//! (unknown keys are errors: a typo in a security config must fail loudly), and
//! [`Config`] is the validated, ready-to-use form.
//!
//! Value errors (a bad address, classification or URL) are raised while parsing, so
//! the TOML parser reports them with the file's line, column and key.
//!
//! One file per TOML section holds its raw type, its validated type and its
//! checks: `gateway.rs`, `admin.rs`, `identity.rs`, `policy.rs`, `limits.rs`,
//! `store.rs`, `telemetry.rs`, `routes.rs` and `approvals.rs` (`[audit]` is
//! `portcullis_control::config::audit`, `[analytics]`
//! `portcullis_control::analytics::config`, `[[routes.models]]`
//! `crate::llm::config`). This file holds the whole file's types and the
//! order in which [`Config::parse`] runs the sections' checks; the helpers
//! several sections share are `portcullis_control::config`'s. Every public
//! item is re-exported here, so its path is `crate::config::X` whichever file
//! defines it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_core::Classification;
use serde::Deserialize;

mod admin;
mod approvals;
#[cfg(test)]
mod audit_tests;
mod gateway;
mod identity;
mod limits;
mod policy;
mod routes;
mod store;
mod telemetry;

pub use admin::{DEFAULT_ADMIN_LISTEN, OidcRoleClaim, RawAdmin, RawOidcRole};
pub use approvals::RawApprovals;
pub use gateway::{
    DEFAULT_GATEWAY_LISTEN, DEFAULT_MAX_CONNECTIONS, RawForwardClientCert, RawGateway,
};
pub use identity::{DEFAULT_TRUST_DOMAIN, JwksSource, OidcConfig, RawIdentity, RawOidc};
pub use limits::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_STALL_TIMEOUT_MS, DEFAULT_UPSTREAM_TIMEOUT_MS, RawLimits,
};
pub use policy::{PolicySource, RawPolicy};
pub use routes::{
    BUILTIN_DEMO_UPSTREAM, CaptureConfig, Credential, DEFAULT_CAPTURE_MAX_BYTES, DlpAction,
    Injection, InjectionAction, MAX_CAPTURE_MAX_BYTES, MAX_ROUTE_SECRETS, RawRoute, RouteConfig,
    RouteGuard, RouteKind, STDIO_UPSTREAM_PREFIX, Upstream,
};
pub use store::{RawStore, check_store_url};
pub use telemetry::{DEFAULT_SERVICE_NAME, RawTelemetry, TelemetryConfig};

// The sections the control services read live in `portcullis-control`; their
// paths stay `crate::config::X` here.
use portcullis_control::config::audit;
pub use portcullis_control::config::{
    AuditConfig, DEFAULT_UNAUTHENTICATED_RECORDS_PER_MINUTE, Durability, ExportConfig, ExportKind,
    ExportTarget, Facility, KernelAudit, PolicyTimeZone, RawAudit, RawExport, SecretHeaders,
    SyslogTransport, WebhookFormat, parse_duration,
};
use portcullis_control::config::{
    from_str, line_of, opt_webhook, otlp_url, relative, secret_headers,
};

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
    /// `[models]`: the model registry's pinned signing keys.
    #[serde(default)]
    pub models: RawModels,
}

/// `[models]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModels {
    /// `[[models.trusted_keys]]`: the public keys a model's signature bundle
    /// must verify against for the registry to mark it verified.
    #[serde(default)]
    pub trusted_keys: Vec<RawTrustedKey>,
}

/// One `[[models.trusted_keys]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedKey {
    /// The key's name, recorded as the verifying key.
    pub id: String,
    /// A PEM `PUBLIC KEY` file (ECDSA P-256 or Ed25519), relative to the
    /// config file's directory.
    pub public_key_file: PathBuf,
}

/// Reads and parses `[[models.trusted_keys]]`.
fn trusted_model_keys(
    raw: &RawModels,
    base: &Path,
) -> Result<Vec<portcullis_control::model_signing::TrustedKey>, String> {
    let mut keys: Vec<portcullis_control::model_signing::TrustedKey> = Vec::new();
    for k in &raw.trusted_keys {
        if keys.iter().any(|o| o.id == k.id) {
            return Err(format!(
                "`[[models.trusted_keys]]`: id `{}` is listed twice",
                k.id
            ));
        }
        let path = base.join(&k.public_key_file);
        let pem = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "`[[models.trusted_keys]]` `{}`: cannot read `{}`: {}",
                k.id,
                path.display(),
                e.kind()
            )
        })?;
        keys.push(
            portcullis_control::model_signing::TrustedKey::from_pem(&k.id, &pem)
                .map_err(|e| format!("`[[models.trusted_keys]]`: {e}"))?,
        );
    }
    Ok(keys)
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
    /// How long one TOTP confirmation opens a step-up window for the
    /// confirming admin credential (zero: every sensitive action needs a code).
    pub admin_step_up: std::time::Duration,
    /// Which humans logging in at an OIDC issuer get which admin role.
    pub admin_oidc_roles: Vec<RawOidcRole>,
    /// Whether an OIDC console login with a second factor in its `amr`
    /// opens the step-up window.
    pub admin_oidc_step_up: bool,
    /// `[admin] console_origins`, when set (else derived from the admin
    /// listener's address at start-up).
    pub admin_console_origins: Option<Vec<String>>,
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
    /// Whether DPoP proofs must carry a server-issued nonce.
    pub require_dpop_nonce: bool,
    /// External issuers of users' tokens.
    pub oidc: Vec<OidcConfig>,
    /// The signer of workload posture statements, when configured.
    pub posture_attestor: Option<OidcConfig>,
    /// `[identity.authorization]`, when configured.
    pub authorization: Option<crate::authorization::config::AuthorizationConfig>,
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
    /// The process-wide budget of request bytes buffered whole.
    pub max_buffered_bytes: u64,
    /// Upstream response-head timeout.
    pub upstream_timeout: Duration,
    /// How long an upstream body may send nothing (`[limits]
    /// stall_timeout_ms`; the listeners get it in their connection limits).
    pub stall_timeout: Duration,
    /// Database URL, when not the default file in the state directory.
    pub store_url: Option<String>,
    /// `[store] max_staleness_ms` (cluster mode).
    pub store_max_staleness: Duration,
    /// `[store] lock_timeout_ms`.
    pub store_lock_timeout: Duration,
    /// The audit log.
    pub audit: AuditConfig,
    /// OpenTelemetry traces; `None` when tracing is off.
    pub telemetry: Option<TelemetryConfig>,
    /// Routes, in file order.
    pub routes: Vec<RouteConfig>,
    /// Behavioral analytics and containment.
    pub analytics: crate::analytics::config::AnalyticsConfig,
    /// `[[models.trusted_keys]]`: the keys model signatures verify against.
    pub model_trusted_keys: Vec<portcullis_control::model_signing::TrustedKey>,
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
            durability: None,
            llm: None,
            owner: String::new(),
            tags: Vec::new(),
            datasets: Vec::new(),
            tool_datasets: Default::default(),
            sandbox: None,
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
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| invalid(format!("\n{e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        // Cross-field checks, reported with the line of the offending key, or
        // the key. They run in this order, so a file with several errors in
        // different sections is told of the same one first every time.
        let llm = routes::validate(&raw.routes, text, base).map_err(invalid)?;
        limits::check_max_body(&raw.limits).map_err(invalid)?;
        identity::check_delegation_and_issuers(&raw.identity).map_err(invalid)?;
        let login_issuers: Vec<&str> = raw
            .identity
            .oidc
            .iter()
            .filter(|o| o.client_id.is_some())
            .map(|o| o.issuer.as_str())
            .collect();
        admin::check_oidc_roles(&raw.admin, &login_issuers).map_err(invalid)?;
        admin::check_console_origins(&raw.admin).map_err(invalid)?;
        limits::check_upstream_timeout(&raw.limits).map_err(invalid)?;
        store::lock_timeout(&raw.store).map_err(invalid)?;
        audit::check_checkpoint_interval(&raw.audit).map_err(invalid)?;
        identity::check_tokens(&raw.identity).map_err(invalid)?;
        let authorization = raw
            .identity
            .authorization
            .as_ref()
            .map(crate::authorization::config::AuthorizationConfig::from_raw)
            .transpose()
            .map_err(invalid)?;
        approvals::check(&raw.approvals).map_err(invalid)?;
        policy::check(&raw.policy).map_err(invalid)?;
        gateway::check(&raw.gateway).map_err(invalid)?;
        limits::check_connections_and_throttle(&raw.limits).map_err(invalid)?;
        let telemetry = telemetry::validate_telemetry(&raw.telemetry).map_err(invalid)?;
        let default_service = raw
            .telemetry
            .service_name
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        let export = audit::validate_exports(
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
        let model_trusted_keys = trusted_model_keys(&raw.models, base).map_err(invalid)?;
        let mut config = Self::from_raw_unchecked(raw, base);
        config.model_trusted_keys = model_trusted_keys;
        for (route, llm) in config.routes.iter_mut().zip(llm) {
            route.llm = llm;
        }
        config.audit.export = export;
        config.analytics = analytics;
        config.telemetry = telemetry;
        config.authorization = authorization;
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
        let audit = audit::audit_config(raw.audit, &trust_domain, base);
        let audit_durability = audit.durability;
        Config {
            audit,
            analytics: Default::default(),
            model_trusted_keys: Vec::new(),
            telemetry: None,
            gateway_listen: raw
                .gateway
                .listen
                .unwrap_or_else(|| parse_addr(DEFAULT_GATEWAY_LISTEN)),
            admin_require_mfa: raw.admin.require_mfa.unwrap_or(false),
            admin_oidc_roles: raw.admin.oidc_roles.clone(),
            admin_oidc_step_up: raw.admin.oidc_step_up.unwrap_or(false),
            admin_console_origins: raw.admin.console_origins.clone(),
            admin_step_up: std::time::Duration::from_secs(
                raw.admin
                    .step_up_seconds
                    .unwrap_or(admin::DEFAULT_STEP_UP_SECONDS)
                    .min(admin::MAX_STEP_UP_SECONDS),
            ),
            admin_listen: raw
                .admin
                .listen
                .unwrap_or_else(|| parse_addr(DEFAULT_ADMIN_LISTEN)),
            connections: limits::connection_limits(&raw.gateway, &raw.limits),
            attempts: limits::attempt_policy(&raw.limits),
            server_names: raw.gateway.server_names,
            forward_client_cert: gateway::forward_client_cert(raw.gateway.forward_client_cert),
            strip_request_headers: raw.gateway.strip_request_headers,
            token_issuer: raw.identity.token_issuer,
            max_delegation_depth: raw.identity.max_delegation_depth.unwrap_or(2),
            require_dpop_nonce: raw.identity.require_dpop_nonce,
            authorization: None,
            posture_attestor: raw
                .identity
                .posture_attestor
                .map(|o| identity::posture_attestor(o, base)),
            oidc: raw
                .identity
                .oidc
                .into_iter()
                .map(|o| identity::oidc(o, base))
                .collect(),
            token_ttl: raw
                .identity
                .token_ttl_seconds
                .unwrap_or(portcullis_identity::DEFAULT_TOKEN_TTL),
            trust_domain,
            policy: policy::source(raw.policy.dir, base),
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
            max_buffered_bytes: limits::max_buffered_bytes(&raw.limits),
            upstream_timeout: Duration::from_millis(
                raw.limits
                    .upstream_timeout_ms
                    .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS),
            ),
            stall_timeout: limits::stall_timeout(&raw.limits),
            // Checked in `parse`.
            store_lock_timeout: store::lock_timeout(&raw.store)
                .unwrap_or(portcullis_store::DEFAULT_LOCK_TIMEOUT),
            store_url: raw.store.url,
            store_max_staleness: Duration::from_millis(raw.store.max_staleness_ms),
            // A route's own durability wins over `[audit]`'s.
            routes: raw
                .routes
                .into_iter()
                .map(routes::route_config)
                .map(|mut route| {
                    route.durability = route.durability.or(audit_durability);
                    route
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text`; `Ok` is a one-line summary, `Err` the message.
    pub(super) fn check(text: &str, expect: &str) {
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
            "[gateway]\nlisten = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:1\"\n",
            "must listen on different addresses",
        );
    }

    /// Parses `text` and summarises its export sinks and telemetry.
    pub(super) fn check_export(text: &str, expect: &str) {
        let got = match Config::parse(text, Path::new("/etc/p/portcullis.toml")) {
            Ok(c) => format!("ok {:?} {:?}", c.audit.export, c.telemetry),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(expect), "expected `{expect}` in:\n{got}");
    }
}
