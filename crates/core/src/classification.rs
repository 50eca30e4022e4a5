//! Data classification levels, ordered from least to most sensitive.

use std::fmt;
use std::str::FromStr;

/// How sensitive a resource is. The order is meaningful: `Public < Internal <
/// Confidential < Restricted`, and policies compare levels through [`Classification::rank`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Classification {
    /// Anyone may know it.
    Public,
    /// Inside the organisation only.
    Internal,
    /// A need-to-know subset of the organisation.
    Confidential,
    /// The most sensitive data; access is exceptional.
    Restricted,
}

impl Classification {
    /// Every level, least sensitive first.
    pub const ALL: [Classification; 4] = [
        Classification::Public,
        Classification::Internal,
        Classification::Confidential,
        Classification::Restricted,
    ];

    /// The lowercase name used in configuration, policies and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Restricted => "restricted",
        }
    }

    /// A number that orders the levels (0 = public … 3 = restricted), exposed to
    /// policy as the route attribute `classification_level`, so that
    /// `resource.classification_level >= 2` reads naturally.
    pub fn rank(self) -> i64 {
        match self {
            Classification::Public => 0,
            Classification::Internal => 1,
            Classification::Confidential => 2,
            Classification::Restricted => 3,
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text named no classification level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown classification `{0}`: expected one of public, internal, confidential, restricted")]
pub struct UnknownClassification(pub String);

impl FromStr for Classification {
    type Err = UnknownClassification;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Classification::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownClassification(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_level_and_orders_them() {
        for c in Classification::ALL {
            assert_eq!(c.as_str().parse::<Classification>(), Ok(c));
        }
        assert!(Classification::Public < Classification::Restricted);
        assert!("secret".parse::<Classification>().is_err());
        assert!("Public".parse::<Classification>().is_err());
    }
}
