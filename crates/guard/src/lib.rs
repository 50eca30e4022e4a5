//! The content guard: pure functions that inspect text the gateway sees.
//!
//! - [`injection`]: prompt-injection detection (normalisation, signatures, a
//!   learned model scored over sliding windows, per-channel thresholds);
//! - [`dlp`]: secrets and PII with validators, typed redaction, and a
//!   streaming redactor that catches values split across chunks;
//! - [`poisoning`]: hidden instructions in MCP tool definitions;
//! - [`report`]: one scan of a text by all of them, as the CLI and the
//!   gateway use it;
//! - [`eval`]: the labelled test sets read from their text, and the
//!   red-team scorecard over them.
//!
//! It does no IO: the model weights are compiled in, and nothing is loaded at
//! run time.
#![forbid(unsafe_code)]

pub mod dlp;
pub mod eval;
pub mod injection;
pub mod poisoning;
pub mod report;

pub use injection::Channel;
pub use report::{Guard, GuardError, Report};
