//! Behavioral analytics: learns each agent's normal behavior from the stream of
//! its recorded requests, notices when it changes, and turns that into a risk
//! score (0.0–1.0) and a graded response.
//!
//! Everything here is a pure function over data, with no IO and no clock:
//! the gateway feeds [`Event`]s (built from completed audit records) to one
//! [`Engine`] off the request path, publishes the scores it returns, and
//! persists [`EngineState`] in the store. The pieces, in the order an event
//! passes them:
//!
//! ```text
//! features   per-agent sliding windows (1 min, 15 min), O(1) per event
//! rules      the unmistakable, from the first event: denial burst, 10x rate
//!            spike, first access to restricted data
//! detector   isolation forest per agent over its rolling baseline; a population
//!            forest for agents still learning
//! risk       anomaly and rule risk combined, decaying over time → Grade
//! ```
#![forbid(unsafe_code)]

mod engine;
mod event;
mod features;
mod forest;
mod rng;
mod rules;
mod window;

pub use engine::{
    AgentState, AgentSummary, Alert, AlertReason, Config, ConfigError, Driver, Engine, EngineState,
    Grade, Thresholds, Verdict,
};
pub use event::{Event, stable_hash};
pub use features::{FEATURE_NAMES, Features, N_FEATURES};
pub use forest::IsolationForest;
pub use rules::RuleHit;
