//! `[identity.authorization]`: the authorization-code flow of MCP
//! authorization. Absent, the gateway has no authorization endpoint and its
//! metadata lists no response type.
//!
//! How clients get an id, both closed unless configured: RFC 7591 dynamic
//! registration (`dynamic_registration`, open only with at least one
//! `registration_*` allow-list) and Client ID Metadata Documents
//! (`client_metadata_hosts`: the hosts whose https `client_id` URLs the
//! gateway fetches).

use std::collections::BTreeMap;
use std::net::IpAddr;

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
    /// MCP hosts that only know dynamic registration need it). Needs at
    /// least one of the `registration_*` allow-lists: a registration must
    /// pass every one that is set.
    #[serde(default)]
    pub dynamic_registration: bool,
    /// Hosts every redirect URI of a registration must be on (exact,
    /// case-insensitive: `127.0.0.1`, `localhost`, `app.example.com`).
    #[serde(default)]
    pub registration_redirect_hosts: Vec<String>,
    /// `software_id` values (RFC 7591 §2) a registration must carry one of.
    #[serde(default)]
    pub registration_software_ids: Vec<String>,
    /// Environment variable holding an initial access token (RFC 7591 §3):
    /// a registration must present it as `Authorization: Bearer <token>`.
    pub registration_token_env: Option<String>,
    /// Hosts whose https URLs are accepted as `client_id`s: Client ID
    /// Metadata Documents (the MCP authorization specification). The
    /// gateway fetches the document at the URL (no redirects, 5 KiB, 5 s,
    /// cached up to an hour). Empty (the default): not supported.
    #[serde(default)]
    pub client_metadata_hosts: Vec<String>,
    /// Whether metadata documents may be fetched from loopback, private or
    /// link-local addresses (default false: a listed host resolving to one
    /// is refused, against DNS rebinding into the internal network).
    #[serde(default)]
    pub client_metadata_private_addresses: bool,
    /// Addresses to use for hosts of `client_metadata_hosts` instead of
    /// asking DNS (like curl's `--resolve`: split-horizon names, or a
    /// documents host pinned so a poisoned answer cannot move it). The
    /// public-address rule applies to these addresses as to resolved ones.
    #[serde(default)]
    pub client_metadata_addresses: BTreeMap<String, Vec<String>>,
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
    /// Who may register, when it is open.
    pub registration: RegistrationAllowList,
    /// Client ID Metadata Documents: the hosts of accepted `client_id`s
    /// (lowercase); empty when not supported.
    pub client_metadata_hosts: Vec<String>,
    /// Whether documents may come from non-public addresses.
    pub client_metadata_private_addresses: bool,
    /// Hosts (lowercase) whose addresses are configured, not resolved.
    pub client_metadata_addresses: BTreeMap<String, Vec<IpAddr>>,
    /// Registrations per hour.
    pub registrations_per_hour: u32,
    /// Live clients at most.
    pub max_clients: u32,
    /// Refresh family lifetime (seconds).
    pub refresh_ttl: u64,
}

/// Who may use dynamic registration: each list that is set must be passed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistrationAllowList {
    /// Hosts of the redirect URIs (lowercase); empty: any.
    pub redirect_hosts: Vec<String>,
    /// Accepted `software_id`s; empty: not checked.
    pub software_ids: Vec<String>,
    /// SHA-256 of the initial access token, when one is required.
    pub token_sha256: Option<[u8; 32]>,
}

impl RegistrationAllowList {
    /// Whether no list is set (every registration would pass).
    pub fn is_open(&self) -> bool {
        self.redirect_hosts.is_empty()
            && self.software_ids.is_empty()
            && self.token_sha256.is_none()
    }
}

/// Hosts, lowercased; refuses empty ones and ones with a scheme, port or path.
fn hosts(key: &str, raw: &[String]) -> Result<Vec<String>, String> {
    raw.iter()
        .map(|h| {
            let host = h.trim().to_ascii_lowercase();
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let ok = !host.is_empty()
                && (bare.parse::<std::net::Ipv6Addr>().is_ok()
                    || host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
            if ok {
                Ok(bare.to_string())
            } else {
                Err(format!(
                    "key `identity.authorization.{key}`: `{h}` is not a host name or address (no scheme, port or path)"
                ))
            }
        })
        .collect()
}

/// Most addresses configured for one documents host.
const MAX_PINNED_ADDRESSES: usize = 16;

/// `client_metadata_addresses`: each name one of `hosts` (a name, not an
/// address literal), with 1 to 16 addresses.
fn pinned_addresses(
    raw: &BTreeMap<String, Vec<String>>,
    hosts: &[String],
) -> Result<BTreeMap<String, Vec<IpAddr>>, String> {
    const KEY: &str = "key `identity.authorization.client_metadata_addresses`";
    raw.iter()
        .map(|(name, addresses)| {
            let host = name.trim().to_ascii_lowercase();
            if !hosts.contains(&host) || host.parse::<IpAddr>().is_ok() {
                return Err(format!(
                    "{KEY}: `{name}` is not a host name listed in `client_metadata_hosts`"
                ));
            }
            if addresses.is_empty() || addresses.len() > MAX_PINNED_ADDRESSES {
                return Err(format!(
                    "{KEY}: `{name}` needs 1 to {MAX_PINNED_ADDRESSES} addresses"
                ));
            }
            let addresses = addresses
                .iter()
                .map(|a| {
                    a.trim()
                        .parse::<IpAddr>()
                        .map_err(|_| format!("{KEY}: `{a}` (for `{name}`) is not an IP address"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((host, addresses))
        })
        .collect()
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
        let token_sha256 = match &raw.registration_token_env {
            None => None,
            Some(var) => {
                let token = std::env::var(var).unwrap_or_default();
                if token.trim().len() < 16 {
                    return Err(format!(
                        "key `identity.authorization.registration_token_env`: environment variable `{var}` must hold the initial access token (at least 16 characters)"
                    ));
                }
                use sha2::Digest;
                Some(sha2::Sha256::digest(token.trim().as_bytes()).into())
            }
        };
        let registration = RegistrationAllowList {
            redirect_hosts: hosts(
                "registration_redirect_hosts",
                &raw.registration_redirect_hosts,
            )?,
            software_ids: raw.registration_software_ids.clone(),
            token_sha256,
        };
        if raw.dynamic_registration && registration.is_open() {
            return Err("key `identity.authorization.dynamic_registration`: open registration needs an allow-list: set `registration_redirect_hosts`, `registration_software_ids` or `registration_token_env`".into());
        }
        let client_metadata_hosts = hosts("client_metadata_hosts", &raw.client_metadata_hosts)?;
        Ok(AuthorizationConfig {
            agent,
            registration,
            client_metadata_addresses: pinned_addresses(
                &raw.client_metadata_addresses,
                &client_metadata_hosts,
            )?,
            client_metadata_hosts,
            client_metadata_private_addresses: raw.client_metadata_private_addresses,
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
        assert!(c.client_metadata_hosts.is_empty() && c.registration.is_open());
        let c = parse("[identity.authorization]\nagent = \"h\"\ndynamic_registration = true\nregistration_redirect_hosts = [\"LocalHost\", \"[::1]\"]\nregistration_software_ids = [\"s\"]\nclient_metadata_hosts = [\"apps.example.com\"]\n")
            .unwrap()
            .authorization
            .unwrap();
        assert_eq!(c.registration.redirect_hosts, ["localhost", "::1"]);
        assert_eq!(c.registration.software_ids, ["s"]);
        assert_eq!(c.client_metadata_hosts, ["apps.example.com"]);
        let c = parse("[identity.authorization]\nagent = \"h\"\nclient_metadata_hosts = [\"docs.example.com\"]\nclient_metadata_addresses = { \"Docs.example.com\" = [\"198.51.100.7\", \"2001:db8::7\"] }\n")
            .unwrap()
            .authorization
            .unwrap();
        assert_eq!(
            c.client_metadata_addresses["docs.example.com"],
            [
                "198.51.100.7".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]
        );
        for (bad, says) in [
            (
                "agent = \"h\"\nclient_metadata_hosts = [\"a.example\"]\nclient_metadata_addresses = { \"b.example\" = [\"192.0.2.1\"] }",
                "not a host name listed",
            ),
            (
                "agent = \"h\"\nclient_metadata_hosts = [\"a.example\"]\nclient_metadata_addresses = { \"a.example\" = [] }",
                "1 to 16 addresses",
            ),
            (
                "agent = \"h\"\nclient_metadata_hosts = [\"a.example\"]\nclient_metadata_addresses = { \"a.example\" = [\"a.example\"] }",
                "is not an IP address",
            ),
            ("agent = \"Not A Name\"", "identity.authorization.agent"),
            (
                "agent = \"h\"\nrefresh_ttl_seconds = 1",
                "refresh_ttl_seconds",
            ),
            ("agent = \"h\"\nmax_clients = 0", "max_clients"),
            ("agent = \"h\"\nclient_secret = \"x\"", "unknown field"),
            (
                "agent = \"h\"\ndynamic_registration = true",
                "needs an allow-list",
            ),
            (
                "agent = \"h\"\nclient_metadata_hosts = [\"https://a.example\"]",
                "not a host name",
            ),
            (
                "agent = \"h\"\nregistration_token_env = \"PORTCULLIS_TEST_UNSET_VAR\"",
                "registration_token_env",
            ),
        ] {
            let e = parse(&format!("[identity.authorization]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
