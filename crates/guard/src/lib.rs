//! The content guard: pure functions that inspect text the gateway sees.
//!
//! Today this crate holds only the DLP groundwork ([`dlp`]): validators for
//! payment cards, IBANs, US SSNs and email addresses, a compiled detector set
//! for secrets, and a [`dlp::Scanner`] that finds and redacts both. It does no
//! IO and is not yet on the gateway's request path.
#![forbid(unsafe_code)]

pub mod dlp;
