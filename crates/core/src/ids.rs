//! Identifiers: request ids and validated agent names.

use std::fmt;

/// A unique id for one data-plane request, returned in `X-Request-Id` and recorded
/// in the audit log. 128 random bits, hex encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh random id.
    pub fn new() -> Self {
        let bytes: [u8; 16] = rand::random();
        RequestId(hex::encode(bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent's name: 1–64 characters of `[a-z0-9._-]`, starting with a letter or digit.
///
/// The name becomes the last segment of the agent's SPIFFE ID and a Cedar entity id,
/// so the character set is kept to what is unambiguous in URIs, file names and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

/// The text is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid name `{0}`: use 1-64 characters of a-z, 0-9, `.`, `_` or `-`, starting with a letter or digit"
)]
pub struct InvalidName(pub String);

impl AgentName {
    /// Validates and wraps a name.
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        if is_valid_name(s) {
            Ok(AgentName(s.to_string()))
        } else {
            Err(InvalidName(s.to_string()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rule shared by agent, role and route names.
pub fn is_valid_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "billing-bot", "agent.v2_1", "0day"] {
            assert!(AgentName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "-x", "Upper", "a/b", "a b", "é", "a\"b", long.as_str()] {
            assert!(AgentName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let a = RequestId::new();
        let b = RequestId::new();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
