//! Request facts written by hand — for `policy test` cases and `policy
//! explain` — turned into the same [`AuthzRequest`] the pipeline builds.
//!
//! The JSON/YAML shape mirrors `context` in the schema: `source_ip`, `time`
//! (RFC 3339 text or epoch seconds; hour and weekday follow the time zone),
//! `path`, `content`, `auth`, `delegation`, `posture`, `risk`. Every field is
//! optional; unknown fields are refused so a typo cannot silently test
//! something else.

use std::net::IpAddr;

use portcullis_policy::{
    AuthFacts, AuthMethod, AuthzRequest, CallerFacts, Content, Delegation, HttpAction, Posture,
    SourceIp,
};
use serde::Deserialize;

use crate::config::PolicyTimeZone;

/// `context` as written in a test case or `--context`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFacts {
    /// Client address (default `127.0.0.1`).
    pub source_ip: Option<IpAddr>,
    /// When (default: now).
    pub time: Option<TimeFact>,
    /// Request path (default `/`).
    pub path: Option<String>,
    /// What the content guard found (default: not scanned).
    pub content: Option<ContentFact>,
    /// How the caller authenticated (default: mTLS, no MFA).
    pub auth: Option<AuthFact>,
    /// On whose behalf (default: none).
    pub delegation: Option<DelegationFact>,
    /// Workload posture (default: not attested).
    pub posture: Option<PostureFact>,
    /// Risk score 0–1 (default 0).
    pub risk: Option<f32>,
}

/// A time: RFC 3339 text (`2026-11-24T10:00:00+01:00`) or epoch seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimeFact {
    /// Seconds since the epoch.
    Epoch(i64),
    /// RFC 3339.
    Text(String),
}

/// `context.content`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentFact {
    /// Whether the body was scanned (default true when `content` is given).
    #[serde(default = "yes")]
    pub scanned: bool,
    /// Injection score.
    #[serde(default)]
    pub injection_score: f32,
    /// Whether the score crossed the threshold.
    #[serde(default)]
    pub injection_flagged: bool,
    /// Finding types.
    #[serde(default)]
    pub findings: Vec<String>,
}

fn yes() -> bool {
    true
}

/// `context.auth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFact {
    /// `mtls` or `token`.
    #[serde(default = "mtls")]
    pub method: String,
    /// Fresh MFA of the human behind the request.
    #[serde(default)]
    pub mfa: bool,
    /// Token age in seconds.
    #[serde(default)]
    pub token_age: i64,
}

fn mtls() -> String {
    "mtls".into()
}

/// `context.delegation`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationFact {
    /// The user.
    pub user: String,
    /// Chain depth (default 1).
    #[serde(default = "one")]
    pub depth: i64,
    /// The actors.
    #[serde(default)]
    pub chain: Vec<String>,
}

fn one() -> i64 {
    1
}

/// `context.posture`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureFact {
    /// Attested.
    #[serde(default)]
    pub attested: bool,
    /// Digest.
    #[serde(default)]
    pub digest: String,
    /// Matches the pin.
    #[serde(default)]
    pub matches_pin: bool,
}

/// [`RequestFacts`] checked and ready to decide with.
#[derive(Debug, Clone)]
pub struct PreparedFacts {
    source_ip: SourceIp,
    time: portcullis_policy::RequestTime,
    path: String,
    content: Option<ContentFact>,
    caller: CallerFacts,
}

impl RequestFacts {
    /// Checks the facts; `now` is used when no time is given.
    pub fn prepare(&self, zone: &PolicyTimeZone, now: i64) -> Result<PreparedFacts, String> {
        let epoch = match &self.time {
            None => now,
            Some(TimeFact::Epoch(e)) => *e,
            Some(TimeFact::Text(text)) => text
                .parse::<jiff::Timestamp>()
                .map_err(|e| {
                    format!("time `{text}`: {e} (use RFC 3339, e.g. 2026-11-24T10:00:00+01:00)")
                })?
                .as_second(),
        };
        let auth = match &self.auth {
            None => CallerFacts::mtls().auth,
            Some(a) => AuthFacts {
                method: match a.method.as_str() {
                    "mtls" => AuthMethod::Mtls,
                    "token" => AuthMethod::Token,
                    other => return Err(format!("auth.method `{other}`: use `mtls` or `token`")),
                },
                mfa: a.mfa,
                token_age_secs: a.token_age,
            },
        };
        let risk = self.risk.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&risk) {
            return Err(format!("risk {risk}: must be between 0 and 1"));
        }
        Ok(PreparedFacts {
            source_ip: SourceIp::new(self.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]))),
            time: zone.request_time(epoch),
            path: self.path.clone().unwrap_or_else(|| "/".into()),
            content: self.content.clone(),
            caller: CallerFacts {
                auth,
                delegation: self.delegation.as_ref().map(|d| Delegation {
                    user: d.user.clone(),
                    depth: d.depth,
                    chain: d.chain.clone(),
                }),
                posture: self
                    .posture
                    .as_ref()
                    .map(|p| Posture {
                        attested: p.attested,
                        digest: p.digest.clone(),
                        matches_pin: p.matches_pin,
                    })
                    .unwrap_or_default(),
                risk,
            },
        })
    }
}

impl PreparedFacts {
    /// Builds the request `agent` does `action` on `route` and hands it to `f`.
    pub fn with_request<R>(
        &self,
        agent: &str,
        action: HttpAction,
        route: &str,
        f: impl FnOnce(&AuthzRequest<'_>) -> R,
    ) -> R {
        let findings: Vec<&str> = self
            .content
            .iter()
            .flat_map(|c| c.findings.iter().map(String::as_str))
            .collect();
        let content = match &self.content {
            None => Content::NOT_SCANNED,
            Some(c) => Content {
                scanned: c.scanned,
                injection_score: c.injection_score,
                injection_flagged: c.injection_flagged,
                findings: &findings,
            },
        };
        f(&AuthzRequest {
            agent,
            action,
            route,
            path: &self.path,
            source_ip: &self.source_ip,
            time: self.time,
            content,
            caller: &self.caller,
        })
    }
}
