//! The in-memory agent directory the authenticate stage reads: which agents and
//! certificate serials are live. Built from the store off the request path.

use std::collections::HashMap;

use portcullis_identity::PublicJwk;
use portcullis_store::{AgentKeyRow, AgentRow, CertificateRow};

/// One agent's live state.
#[derive(Debug, Clone)]
pub struct DirectoryEntry {
    /// Roles, for policy.
    pub roles: Vec<String>,
    /// Whether the agent is revoked.
    pub revoked: bool,
    /// Issued certificate serials → whether that certificate is revoked.
    pub serials: HashMap<String, bool>,
    /// Registered public signing keys (token endpoint), by `kid`.
    pub keys: HashMap<String, PublicJwk>,
    /// The workload pin, when the agent has one.
    pub pin: Option<PosturePin>,
}

/// An agent's workload pin: the digest its posture statements must attest
/// and the networks its token requests may come from (empty: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosturePin {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Allowed source networks.
    pub networks: Vec<ipnet::IpNet>,
}

impl PosturePin {
    /// Whether `ip` is in one of the pinned networks (any, when none are pinned).
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.networks.is_empty() || self.networks.iter().any(|n| n.contains(&ip))
    }
}

/// Why a verified certificate still does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryRefusal {
    /// No such agent is registered.
    UnknownAgent,
    /// The agent is revoked.
    AgentRevoked,
    /// The certificate serial was never issued to this agent, or was revoked.
    CertificateRevoked,
}

/// All agents, by name.
#[derive(Debug, Clone, Default)]
pub struct AgentDirectory {
    agents: HashMap<String, DirectoryEntry>,
}

impl AgentDirectory {
    /// Builds the directory from stored rows.
    pub fn new(agents: &[AgentRow], certificates: &[CertificateRow]) -> Self {
        let mut map: HashMap<String, DirectoryEntry> = agents
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    DirectoryEntry {
                        roles: a.roles.clone(),
                        revoked: a.revoked_at.is_some(),
                        serials: HashMap::new(),
                        keys: HashMap::new(),
                        pin: None,
                    },
                )
            })
            .collect();
        for c in certificates {
            if let Some(entry) = map.get_mut(&c.agent) {
                entry
                    .serials
                    .insert(c.serial.clone(), c.revoked_at.is_some());
            }
        }
        AgentDirectory { agents: map }
    }

    /// Adds the agents' workload pins. A stored network that does not parse
    /// cannot match anything; the pin then allows no network (fail closed).
    pub fn with_pins(mut self, pins: &[portcullis_store::PostureRow]) -> Self {
        for p in pins {
            let Some(entry) = self.agents.get_mut(&p.agent) else {
                continue;
            };
            let parsed: Result<Vec<ipnet::IpNet>, _> = p
                .networks
                .iter()
                .map(|n| n.parse::<ipnet::IpNet>())
                .collect();
            let networks = parsed.unwrap_or_else(|_| {
                tracing::error!(agent = %p.agent, "unusable stored posture network; the pin allows no network");
                vec![ipnet::IpNet::from(ipnet::Ipv4Net::from(std::net::Ipv4Addr::BROADCAST))]
            });
            entry.pin = Some(PosturePin {
                digest: p.digest.clone(),
                networks,
            });
        }
        self
    }

    /// Adds the agents' registered public keys. A stored key that does not
    /// parse is left out (and logged): it can never authenticate anyone.
    pub fn with_keys(mut self, keys: &[AgentKeyRow]) -> Self {
        for k in keys {
            let Some(entry) = self.agents.get_mut(&k.agent) else {
                continue;
            };
            match PublicJwk::from_json_str(&k.jwk) {
                Ok(jwk) => {
                    entry.keys.insert(jwk.thumbprint(), jwk);
                }
                Err(e) => {
                    tracing::error!(agent = %k.agent, kid = %k.kid, error = %e, "unusable stored agent key")
                }
            }
        }
        self
    }

    /// Checks that `agent` is registered and not revoked (token authentication,
    /// where no certificate serial is involved).
    pub fn check_agent(&self, agent: &str) -> Result<&DirectoryEntry, DirectoryRefusal> {
        let entry = self
            .agents
            .get(agent)
            .ok_or(DirectoryRefusal::UnknownAgent)?;
        if entry.revoked {
            return Err(DirectoryRefusal::AgentRevoked);
        }
        Ok(entry)
    }

    /// Checks that `agent` is live and `serial` is one of its live certificates.
    pub fn check(&self, agent: &str, serial: &str) -> Result<&DirectoryEntry, DirectoryRefusal> {
        let entry = self
            .agents
            .get(agent)
            .ok_or(DirectoryRefusal::UnknownAgent)?;
        if entry.revoked {
            return Err(DirectoryRefusal::AgentRevoked);
        }
        match entry.serials.get(serial) {
            Some(false) => Ok(entry),
            _ => Err(DirectoryRefusal::CertificateRevoked),
        }
    }

    /// Agents and their roles, for building policy entities.
    pub fn agents(&self) -> impl Iterator<Item = (&String, &DirectoryEntry)> {
        self.agents.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_agents_and_serials_only() {
        let agent = |name: &str, revoked: Option<i64>| AgentRow {
            name: name.into(),
            roles: vec!["r".into()],
            created_at: 0,
            revoked_at: revoked,
        };
        let cert = |serial: &str, agent: &str, revoked: Option<i64>| CertificateRow {
            serial: serial.into(),
            agent: agent.into(),
            spiffe_id: String::new(),
            issued_at: 0,
            not_after: 0,
            revoked_at: revoked,
        };
        let d = AgentDirectory::new(
            &[agent("a", None), agent("gone", Some(1))],
            &[
                cert("1", "a", None),
                cert("2", "a", Some(1)),
                cert("3", "gone", None),
            ],
        );
        assert!(d.check("a", "1").is_ok());
        assert_eq!(
            d.check("a", "2").unwrap_err(),
            DirectoryRefusal::CertificateRevoked
        );
        assert_eq!(
            d.check("a", "3").unwrap_err(),
            DirectoryRefusal::CertificateRevoked
        );
        assert_eq!(
            d.check("gone", "3").unwrap_err(),
            DirectoryRefusal::AgentRevoked
        );
        assert_eq!(
            d.check("nobody", "1").unwrap_err(),
            DirectoryRefusal::UnknownAgent
        );
    }
}
