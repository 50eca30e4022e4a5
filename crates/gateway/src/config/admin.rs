//! `[admin]`: the admin-API listener, whether its sensitive actions always
//! need TOTP, and how long a TOTP confirmation's step-up window lasts.

use std::net::SocketAddr;

use serde::Deserialize;

pub use portcullis_control::config::{OidcRoleClaim, RawOidcRole};

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
    /// `[[admin.oidc_roles]]`: which humans logging in to the console at an
    /// OIDC issuer (`[[identity.oidc]]` with `client_id`) get which admin
    /// role. The first entry whose claim matches wins; a human no entry
    /// matches is refused.
    #[serde(default)]
    pub oidc_roles: Vec<RawOidcRole>,
    /// Open the step-up window at an OIDC console login whose ID token's
    /// `amr` names a second factor (the issuer's `mfa_amr` list). Default
    /// `false`: the issuer's word on how the human logged in, perhaps hours
    /// ago at their single sign-on, does not stand in for a fresh factor
    /// unless the operator says so.
    pub oidc_step_up: Option<bool>,
    /// The origins the console is opened at (`https://host[:port]`), for
    /// passkeys (WebAuthn checks the origin and binds a passkey to its
    /// host). Default: the admin listener's own address, with `localhost`
    /// for a loopback one; none when it listens on every address.
    pub console_origins: Option<Vec<String>>,
}

/// Checks `[admin] console_origins`: each `https://host[:port]`, nothing more.
pub(super) fn check_console_origins(admin: &RawAdmin) -> Result<(), String> {
    for origin in admin.console_origins.iter().flatten() {
        let ok = origin
            .strip_prefix("https://")
            .and_then(|rest| rest.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| !a.as_str().contains('@') && format!("https://{a}") == *origin);
        if !ok {
            return Err(format!(
                "`[admin] console_origins`: `{origin}` is not an origin like `https://admin.example:9443` (no path, no trailing slash)"
            ));
        }
    }
    Ok(())
}

/// The role names `[[admin.oidc_roles]]` accepts (the admin crate's roles).
const ROLE_NAMES: [&str; 5] = ["owner", "operator", "policy-author", "approver", "auditor"];

/// Checks `[[admin.oidc_roles]]` against the login issuers.
pub(super) fn check_oidc_roles(admin: &RawAdmin, login_issuers: &[&str]) -> Result<(), String> {
    for (i, entry) in admin.oidc_roles.iter().enumerate() {
        let at = |m: &str| format!("`[[admin.oidc_roles]]` #{}: {m}", i + 1);
        if !ROLE_NAMES.contains(&entry.role.as_str()) {
            return Err(at(&format!(
                "unknown role `{}`: use one of {}",
                entry.role,
                ROLE_NAMES.join(", ")
            )));
        }
        if entry.value.is_empty() {
            return Err(at("`value` must not be empty"));
        }
        if let Some(issuer) = &entry.issuer
            && !login_issuers.contains(&issuer.as_str())
        {
            return Err(at(&format!(
                "`issuer` `{issuer}` is not an `[[identity.oidc]]` issuer with a `client_id`"
            )));
        }
    }
    if !admin.oidc_roles.is_empty() && login_issuers.is_empty() {
        return Err(
            "`[[admin.oidc_roles]]` needs an `[[identity.oidc]]` issuer with a `client_id`".into(),
        );
    }
    Ok(())
}
