//! `[admin]`: the admin-API listener, whether its sensitive actions always
//! need TOTP, and how long a TOTP confirmation's step-up window lasts.

use std::net::SocketAddr;

use serde::Deserialize;

/// Default step-up window: one TOTP confirmation covers five minutes.
pub const DEFAULT_STEP_UP_SECONDS: u64 = 300;
/// The longest step-up window accepted (one hour); longer values are capped.
pub const MAX_STEP_UP_SECONDS: u64 = 3600;

/// Default admin-API address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9443";

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin-API TLS listener (default `127.0.0.1:9443`).
    pub listen: Option<SocketAddr>,
    /// Refuse sensitive admin actions (revocation, enrolment, …) unless a
    /// human admin confirms them with TOTP, even before anyone has enrolled.
    /// Default `false`: once one admin has enrolled, TOTP is required anyway.
    pub require_mfa: Option<bool>,
    /// Seconds one TOTP confirmation opens a step-up window for the admin
    /// credential that made it (default 300, at most 3600; 0 turns windows
    /// off, so every sensitive action needs its own code).
    pub step_up_seconds: Option<u64>,
}
