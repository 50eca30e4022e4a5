//! `[identity.authorization]`: the authorization-code flow of MCP
//! authorization. Absent, the gateway has no authorization endpoint and its
//! metadata lists no response type.

use portcullis_core::AgentName;
use serde::Deserialize;

/// Default registrations accepted per hour (all sources together).
const DEFAULT_REGISTRATIONS_PER_HOUR: u32 = 30;
/// Default cap on live registered clients.
const DEFAULT_MAX_CLIENTS: u32 = 200;
/// Default refresh-token family lifetime: a working day.
const DEFAULT_REFRESH_TTL: u64 = 8 * 3600;
/// Longest refresh-token family lifetime: a re-login at least every 30 days.
const MAX_REFRESH_TTL: u64 = 30 * 86_400;

/// `[identity.authorization]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthorization {
    /// The agent tokens of this flow act through: the Cedar principal of
    /// their requests, with the logged-in user as `context.delegation.user`
    /// (create it with `portcullis agent create`; a request is allowed only
    /// when policy allows both the agent and the user).
    pub agent: String,
    /// Whether RFC 7591 dynamic client registration is open (default false:
    /// MCP hosts that only know dynamic registration need it).
    #[serde(default)]
    pub dynamic_registration: bool,
    /// Registrations accepted per hour, all sources together (default 30).
    pub registrations_per_hour: Option<u32>,
    /// Live registered clients at most (default 200).
    pub max_clients: Option<u32>,
    /// Lifetime of a refresh-token family in seconds, from the login
    /// (default 28800, at most 30 days). Rotation does not extend it.
    pub refresh_ttl_seconds: Option<u64>,
}

/// The validated `[identity.authorization]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationConfig {
    /// The principal agent.
    pub agent: AgentName,
    /// Whether dynamic registration is open.
    pub dynamic_registration: bool,
    /// Registrations per hour.
    pub registrations_per_hour: u32,
    /// Live clients at most.
    pub max_clients: u32,
    /// Refresh family lifetime (seconds).
    pub refresh_ttl: u64,
}

impl AuthorizationConfig {
    /// Validates the raw section.
    pub fn from_raw(raw: &RawAuthorization) -> Result<Self, String> {
        let agent = AgentName::parse(&raw.agent)
            .map_err(|e| format!("key `identity.authorization.agent`: {e}"))?;
        let refresh_ttl = raw.refresh_ttl_seconds.unwrap_or(DEFAULT_REFRESH_TTL);
        if !(60..=MAX_REFRESH_TTL).contains(&refresh_ttl) {
            return Err(format!(
                "key `identity.authorization.refresh_ttl_seconds`: must be between 60 and {MAX_REFRESH_TTL} (30 days)"
            ));
        }
        let max_clients = raw.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS);
        if !(1..=100_000).contains(&max_clients) {
            return Err(
                "key `identity.authorization.max_clients`: must be between 1 and 100000".into(),
            );
        }
        let registrations_per_hour = raw
            .registrations_per_hour
            .unwrap_or(DEFAULT_REGISTRATIONS_PER_HOUR);
        if !(1..=10_000).contains(&registrations_per_hour) {
            return Err(
                "key `identity.authorization.registrations_per_hour`: must be between 1 and 10000"
                    .into(),
            );
        }
        Ok(AuthorizationConfig {
            agent,
            dynamic_registration: raw.dynamic_registration,
            registrations_per_hour,
            max_clients,
            refresh_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    #[test]
    fn authorization_section() {
        let parse = |t: &str| Config::parse(t, Path::new("/p.toml"));
        assert!(parse("").unwrap().authorization.is_none());
        let c = parse("[identity.authorization]\nagent = \"mcp-hosts\"\n")
            .unwrap()
            .authorization
            .unwrap();
        assert_eq!(
            (c.agent.as_str(), c.dynamic_registration, c.refresh_ttl),
            ("mcp-hosts", false, 28_800)
        );
        for (bad, says) in [
            ("agent = \"Not A Name\"", "identity.authorization.agent"),
            (
                "agent = \"h\"\nrefresh_ttl_seconds = 1",
                "refresh_ttl_seconds",
            ),
            ("agent = \"h\"\nmax_clients = 0", "max_clients"),
            ("agent = \"h\"\nclient_secret = \"x\"", "unknown field"),
        ] {
            let e = parse(&format!("[identity.authorization]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
