//! The shared vocabulary of Portcullis: request ids, resource classifications,
//! agent names, decisions and the stable error codes every edge maps to.
//!
//! This crate does no IO and depends on nothing heavy, so every other crate can
//! speak the same types without pulling in Cedar, SQL or HTTP.
#![forbid(unsafe_code)]

mod classification;
mod error_code;
mod ids;

pub use classification::{Classification, UnknownClassification};
pub use error_code::ErrorCode;
pub use ids::{AgentName, InvalidName, RequestId, is_valid_name};

/// The outcome of an authorization decision, with the policies that decided it.
///
/// Decisions are data, not errors: a denial is a normal, expected outcome that the
/// pipeline records and answers, so it is never carried in a `Result::Err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Ids of the policies that determined the outcome. For a denial with no
    /// matching `forbid`, this holds the single pseudo-id [`DEFAULT_DENY`].
    pub policy_ids: Vec<String>,
    /// Evaluation errors (as text): a policy that errored is skipped by Cedar, which
    /// can only ever make the outcome stricter, but operators need to see them.
    pub errors: Vec<String>,
}

/// The pseudo policy id reported when nothing permitted a request.
pub const DEFAULT_DENY: &str = "default-deny";

impl Decision {
    /// A denial that no policy permitted.
    pub fn default_deny() -> Self {
        Decision {
            allowed: false,
            policy_ids: vec![DEFAULT_DENY.to_string()],
            errors: Vec::new(),
        }
    }
}
