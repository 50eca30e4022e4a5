//! `[admin]`: the admin-API listener and whether its sensitive actions
//! always need TOTP.

use std::net::SocketAddr;

use serde::Deserialize;

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
}
