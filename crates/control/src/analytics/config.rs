//! `[analytics]`: behavioral analytics and automated containment, raw (as
//! written) and validated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[analytics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalytics {
    /// Turn analytics and containment off (default on).
    pub enabled: Option<bool>,
    /// Hours an agent is learned before its own model scores it (default 24).
    pub learning_hours: Option<u64>,
    /// Half-life of the risk score in seconds (default 600).
    pub half_life_seconds: Option<u64>,
    /// Denials within 10 seconds that quarantine an agent (default 100).
    pub denial_burst: Option<u64>,
    /// Requests per minute over the baseline's that count as a spike (default 10).
    pub spike_factor: Option<f32>,
    /// Requests per minute a throttled agent is served (default 60).
    pub throttle_per_minute: Option<u32>,
    /// Route names a quarantined agent may still reach (default none).
    #[serde(default)]
    pub quarantine_allow: Vec<String>,
    /// An http(s) URL each alert is POSTed to, signed with HMAC-SHA256.
    pub webhook: Option<String>,
    /// File holding the webhook's HMAC key (relative to the config file).
    /// Required with `webhook`.
    pub webhook_secret_file: Option<PathBuf>,
    /// Agent models kept in memory at most (default 10,000); the least
    /// recently seen of the others are saved and dropped, and read back
    /// when their agent returns.
    pub max_agents: Option<usize>,
    /// Seconds without a request after which an agent's model is saved
    /// and dropped from memory (default 3600).
    pub idle_agent_seconds: Option<u64>,
    /// `[analytics.thresholds]`: risk at which each response starts.
    #[serde(default)]
    pub thresholds: RawThresholds,
}

/// `[analytics.thresholds]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    /// Alert (default 0.5).
    pub alert: Option<f32>,
    /// Hold each write for a human's approval (default 0.6).
    pub approve_writes: Option<f32>,
    /// Throttle (default 0.7).
    pub throttle: Option<f32>,
    /// Read-only (default 0.8).
    pub read_only: Option<f32>,
    /// Quarantine (default 0.95).
    pub quarantine: Option<f32>,
}

/// Validated `[analytics]`.
#[derive(Debug, Clone)]
pub struct AnalyticsConfig {
    /// Whether analytics runs at all.
    pub enabled: bool,
    /// The engine's settings.
    pub engine: portcullis_analytics::Config,
    /// Requests per minute served at grade throttle.
    pub throttle_per_minute: u32,
    /// Routes served in quarantine.
    pub quarantine_allow: Vec<String>,
    /// The alert webhook and its key file.
    pub webhook: Option<(http::Uri, PathBuf)>,
    /// How often model state is saved.
    pub save_every: Duration,
    /// Agent models kept in memory at most (`max_agents`).
    pub max_agents: usize,
    /// An agent idle this long has its model saved and dropped from
    /// memory (`idle_agent_seconds`).
    pub idle_agent: Duration,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            enabled: true,
            engine: portcullis_analytics::Config::default(),
            throttle_per_minute: 60,
            quarantine_allow: Vec::new(),
            webhook: None,
            save_every: Duration::from_secs(30),
            max_agents: 10_000,
            idle_agent: Duration::from_secs(3600),
        }
    }
}

impl AnalyticsConfig {
    /// Whether a quarantined agent may still reach `route`
    /// (`quarantine_allow`).
    pub fn quarantine_admits(&self, route: &str) -> bool {
        self.quarantine_allow.iter().any(|r| r == route)
    }

    /// Validates `raw`; `routes` are the configured route names, `base` the
    /// config file's directory.
    pub fn from_raw(raw: RawAnalytics, routes: &[&str], base: &Path) -> Result<Self, String> {
        let d = AnalyticsConfig::default();
        let mut engine = d.engine.clone();
        if let Some(h) = raw.learning_hours {
            engine.learning_ms = (h as i64).saturating_mul(3_600_000);
        }
        if let Some(s) = raw.half_life_seconds {
            if s == 0 {
                return Err("key `analytics.half_life_seconds`: must be greater than 0".into());
            }
            engine.half_life_ms = (s as i64).saturating_mul(1000);
        }
        if let Some(n) = raw.denial_burst {
            engine.denial_burst = n;
        }
        if let Some(f) = raw.spike_factor {
            engine.spike_factor = f;
        }
        let t = &mut engine.thresholds;
        t.alert = raw.thresholds.alert.unwrap_or(t.alert);
        t.approve_writes = raw.thresholds.approve_writes.unwrap_or(t.approve_writes);
        t.throttle = raw.thresholds.throttle.unwrap_or(t.throttle);
        t.read_only = raw.thresholds.read_only.unwrap_or(t.read_only);
        t.quarantine = raw.thresholds.quarantine.unwrap_or(t.quarantine);
        engine
            .validate()
            .map_err(|e| format!("section `[analytics]`: {e}"))?;
        for name in &raw.quarantine_allow {
            if !routes.contains(&name.as_str()) {
                return Err(format!(
                    "key `analytics.quarantine_allow`: `{name}` is not a configured route"
                ));
            }
        }
        let throttle_per_minute = raw.throttle_per_minute.unwrap_or(d.throttle_per_minute);
        if throttle_per_minute == 0 {
            return Err(
                "key `analytics.throttle_per_minute`: must be greater than 0 (use read_only to stop requests)".into(),
            );
        }
        let max_agents = raw.max_agents.unwrap_or(d.max_agents);
        if max_agents == 0 {
            return Err("key `analytics.max_agents`: must be greater than 0".into());
        }
        let idle_agent = match raw.idle_agent_seconds {
            Some(0) => {
                return Err("key `analytics.idle_agent_seconds`: must be greater than 0".into());
            }
            Some(s) => Duration::from_secs(s),
            None => d.idle_agent,
        };
        let webhook = match (raw.webhook, raw.webhook_secret_file) {
            (None, None) => None,
            (Some(url), Some(file)) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|_| format!("key `analytics.webhook`: invalid URL `{url}`"))?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                    return Err(format!(
                        "key `analytics.webhook`: invalid URL `{url}`: use http:// or https://"
                    ));
                }
                let file = if file.is_absolute() {
                    file
                } else {
                    base.join(file)
                };
                Some((uri, file))
            }
            (Some(_), None) => {
                return Err(
                    "key `analytics.webhook`: needs `webhook_secret_file` (the HMAC key alerts are signed with)".into(),
                );
            }
            (None, Some(_)) => {
                return Err(
                    "key `analytics.webhook_secret_file`: set only together with `webhook`".into(),
                );
            }
        };
        Ok(AnalyticsConfig {
            enabled: raw.enabled.unwrap_or(true),
            engine,
            throttle_per_minute,
            quarantine_allow: raw.quarantine_allow,
            webhook,
            save_every: d.save_every,
            max_agents,
            idle_agent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str, expect: Result<(), &str>) {
        let raw: RawAnalytics = toml::from_str(toml_text).expect("toml");
        let got = AnalyticsConfig::from_raw(raw, &["health", "api"], Path::new("/etc/p"));
        match expect {
            Ok(()) => assert!(got.is_ok(), "{got:?}"),
            Err(needle) => {
                let e = got.expect_err("should fail");
                assert!(e.contains(needle), "{e}");
            }
        }
    }

    #[test]
    fn settings_are_validated() {
        check("", Ok(()));
        check(
            "quarantine_allow = [\"health\"]\nwebhook = \"https://siem.example/hook\"\nwebhook_secret_file = \"k\"\n[thresholds]\nalert = 0.4",
            Ok(()),
        );
        check(
            "quarantine_allow = [\"nope\"]",
            Err("not a configured route"),
        );
        check(
            "webhook = \"https://x.example\"",
            Err("webhook_secret_file"),
        );
        check(
            "webhook = \"ftp://x\"\nwebhook_secret_file = \"k\"",
            Err("invalid URL"),
        );
        check(
            "[thresholds]\nthrottle = 0.9\nread_only = 0.8",
            Err("must not decrease"),
        );
        check(
            "[thresholds]\napprove_writes = 0.75",
            Err("must not decrease"),
        );
        check(
            "[thresholds]\nalert = 0.65\napprove_writes = 0.6",
            Err("must not decrease"),
        );
        check("[thresholds]\nquarantine = 1.5", Err("within"));
        check("throttle_per_minute = 0", Err("greater than 0"));
        check("half_life_seconds = 0", Err("greater than 0"));
        check("max_agents = 0", Err("greater than 0"));
        check("idle_agent_seconds = 0", Err("greater than 0"));
        check("max_agents = 50\nidle_agent_seconds = 60", Ok(()));
    }

    #[test]
    fn each_grade_starts_at_its_threshold() {
        let raw: RawAnalytics = toml::from_str(
            "[thresholds]\nalert = 0.1\napprove_writes = 0.2\nthrottle = 0.3\nread_only = 0.4\nquarantine = 0.5",
        )
        .expect("toml");
        let config = AnalyticsConfig::from_raw(raw, &[], Path::new("/")).expect("valid");
        let t = config.engine.thresholds;
        let grades: Vec<&str> = [0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0]
            .into_iter()
            .map(|risk| t.grade(risk).as_str())
            .collect();
        assert_eq!(
            grades,
            [
                "normal",
                "alert",
                "approve_writes",
                "approve_writes",
                "throttle",
                "read_only",
                "quarantine",
                "quarantine"
            ]
        );
        // The default sits between alert and throttle.
        let d = AnalyticsConfig::default().engine.thresholds;
        assert!(d.alert < d.approve_writes && d.approve_writes < d.throttle);
    }
}
