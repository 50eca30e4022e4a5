//! The secrets vault: upstream credentials that agents never see, transit
//! encryption as a service, and encrypted payload capture.
//!
//! - [`kek`]: the key-encryption key, loaded from a file or the environment,
//!   never stored beside the data; only its fingerprint is.
//! - [`envelope`]: AES-256-GCM with a data key per value, the data key wrapped
//!   under the KEK; both bound to the value's name and version.
//! - [`cache`]: decrypted values under a short TTL, zeroized on drop.
//! - [`transit`]: Fernet tokens (interoperable with Python's `cryptography`).
//! - [`capture`]: request/response bodies sealed per record, shredded after
//!   retention.
//! - [`hook`]: rotation hooks (a command or a webhook).
//! - [`Vault`]: all of the above over the store.
//!
//! **Architecture Invariant:** no plaintext secret, data key or KEK is ever
//! formatted into an error, a log line or a `Debug` output; the types that
//! hold them print only lengths, versions or fingerprints.
#![forbid(unsafe_code)]

pub mod cache;
pub mod capture;
pub mod envelope;
pub mod hook;
pub mod kek;
pub mod key_material;
mod service;
pub mod transit;

pub use cache::Plain;
pub use capture::{BodyTap, Capture};
pub use hook::RotationHook;
pub use kek::{Kek, KekError};
pub use service::{
    CAPTURE_MEMORY_BUDGET, CaptureSink, CaptureView, DEFAULT_CACHE_TTL, DEFAULT_GRACE_PERIOD_S,
    ExportedVersion, MAX_SECRET_BYTES, Maintenance, SecretInfo, SecretSettings, TransitChange,
    TransitInfo, Vault, VaultError, VersionInfo,
};
