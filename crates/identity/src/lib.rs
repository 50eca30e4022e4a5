//! Agent identity: the Portcullis certificate authority, SPIFFE-style X.509 SVIDs
//! for agents, and verification of the client certificates agents present.
//!
//! This crate does no IO: keys and certificates come in and go out as PEM text;
//! the binary decides where they live.
#![forbid(unsafe_code)]

mod ca;
mod spiffe;
mod verify;

pub use ca::{
    CaError, CertificateAuthority, IssuedCertificate, MAX_AGENT_TTL, new_agent_key_and_csr,
};
pub use spiffe::SpiffeId;
pub use verify::{CertRejection, ClientCertChecker, DeferredClientAuth, PeerCertificate};
