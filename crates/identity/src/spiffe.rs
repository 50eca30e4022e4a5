//! SPIFFE IDs for agents: `spiffe://<trust-domain>/agent/<name>`.

use std::fmt;

use portcullis_core::AgentName;

/// A SPIFFE ID naming an agent of one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    trust_domain: String,
    agent: AgentName,
}

impl SpiffeId {
    /// The agent's SPIFFE ID in `trust_domain`.
    pub fn for_agent(trust_domain: &str, agent: &AgentName) -> Self {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            agent: agent.clone(),
        }
    }

    /// Parses `spiffe://<trust_domain>/agent/<name>`; anything else (another trust
    /// domain, another path, query or fragment) is `None`.
    pub fn parse_agent(uri: &str, trust_domain: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (domain, path) = rest.split_once('/')?;
        if domain != trust_domain {
            return None;
        }
        let name = path.strip_prefix("agent/")?;
        let agent = AgentName::parse(name).ok()?;
        Some(SpiffeId {
            trust_domain: domain.to_string(),
            agent,
        })
    }

    /// The agent this ID names.
    pub fn agent(&self) -> &AgentName {
        &self.agent
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/agent/{}", self.trust_domain, self.agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let name = AgentName::parse("bot-1").unwrap();
        let id = SpiffeId::for_agent("portcullis.local", &name);
        assert_eq!(id.to_string(), "spiffe://portcullis.local/agent/bot-1");
        assert_eq!(
            SpiffeId::parse_agent(&id.to_string(), "portcullis.local"),
            Some(id)
        );
        for bad in [
            "spiffe://other.example/agent/bot-1",
            "spiffe://portcullis.local/service/bot-1",
            "spiffe://portcullis.local/agent/bot-1/x",
            "spiffe://portcullis.local/agent/",
            "https://portcullis.local/agent/bot-1",
            "spiffe://portcullis.local/agent/Bot",
        ] {
            assert_eq!(
                SpiffeId::parse_agent(bad, "portcullis.local"),
                None,
                "{bad}"
            );
        }
    }
}
