//! `[identity]`: the SPIFFE trust domain, the access tokens the gateway
//! issues, and the external issuers it trusts (`[[identity.oidc]]`,
//! `[identity.posture_attestor]`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub use portcullis_control::config::{ClientSecretSource, JwksSource, LoginClient, OidcConfig};

/// Default trust domain of agent SPIFFE IDs.
pub const DEFAULT_TRUST_DOMAIN: &str = "portcullis.local";

/// `[identity]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Trust domain of SPIFFE IDs (default `portcullis.local`).
    #[serde(default, deserialize_with = "opt_trust_domain")]
    pub trust_domain: Option<String>,
    /// Public URL of the data plane: the access tokens' `iss` and `aud`, and the
    /// base of the token endpoint and of every DPoP `htu` (default
    /// `https://<bound data-plane address>`).
    pub token_issuer: Option<String>,
    /// Lifetime of issued access tokens in seconds (default 300, at most 900).
    pub token_ttl_seconds: Option<u64>,
    /// Longest delegation chain a token exchange may build (default 2).
    pub max_delegation_depth: Option<u32>,
    /// Whether every DPoP proof must carry a server-issued nonce (default
    /// false; a nonce a proof carries is always checked).
    #[serde(default)]
    pub require_dpop_nonce: bool,
    /// `[[identity.oidc]]`: external issuers of users' tokens.
    #[serde(default)]
    pub oidc: Vec<RawOidc>,
    /// `[identity.posture_attestor]`: who signs workload posture statements.
    pub posture_attestor: Option<RawOidc>,
    /// `[identity.authorization]`: the authorization-code flow (MCP
    /// authorization). Absent: no authorization endpoint.
    pub authorization: Option<crate::authorization::config::RawAuthorization>,
}

/// `[[identity.oidc]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// The issuer (`iss` of its tokens).
    pub issuer: String,
    /// The audience its tokens must name for this gateway.
    pub audience: String,
    /// Where its keys are published (https, or http on loopback only).
    pub jwks_url: Option<String>,
    /// Or a local JWKS file (relative to the config file).
    pub jwks_file: Option<PathBuf>,
    /// `amr` values that count as a second factor (default `["mfa", "otp", "hwk"]`).
    pub mfa_amr: Option<Vec<String>>,
    /// Allowed clock skew in seconds (default 60, at most 300).
    pub clock_skew_seconds: Option<i64>,
    /// Humans log in at this issuer (the web console, the MCP authorization
    /// page) with the authorization-code flow, PKCE, `state` and `nonce`,
    /// as this OAuth client. Absent: the issuer only vouches for tokens
    /// presented to token exchange. The ID token's `aud` must be this id.
    pub client_id: Option<String>,
    /// A file holding the client's secret (confidential client, sent with
    /// HTTP Basic at the token endpoint; relative to the config file).
    pub client_secret_file: Option<PathBuf>,
    /// Or the environment variable holding it.
    pub client_secret_env: Option<String>,
    /// The name on the "Log in with" button (default: the issuer URL).
    pub display_name: Option<String>,
    /// Scopes asked for besides `openid` (default `["email", "profile"]`;
    /// add `groups` when the issuer needs it for the `groups` claim).
    pub scopes: Option<Vec<String>>,
}

fn opt_trust_domain<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "invalid trust_domain `{s}`: use lowercase letters, digits, `.` and `-`"
        )));
    }
    Ok(Some(s))
}

/// Checks the delegation depth, then each external issuer (the OIDC issuers,
/// then the posture attestor).
pub(super) fn check_delegation_and_issuers(identity: &RawIdentity) -> Result<(), String> {
    if let Some(depth) = identity.max_delegation_depth
        && !(1..=5).contains(&depth)
    {
        return Err("key `identity.max_delegation_depth`: must be between 1 and 5".into());
    }
    if identity
        .posture_attestor
        .as_ref()
        .is_some_and(|a| a.client_id.is_some())
    {
        return Err(
            "`[identity.posture_attestor]`: nobody logs in at the posture attestor (no `client_id`)"
                .into(),
        );
    }
    for (i, oidc) in identity
        .oidc
        .iter()
        .chain(identity.posture_attestor.iter())
        .enumerate()
    {
        let at = |m: &str| format!("`[[identity.oidc]]` #{} ({}): {m}", i + 1, oidc.issuer);
        if oidc.issuer.is_empty() || oidc.audience.is_empty() {
            return Err(at("`issuer` and `audience` must not be empty"));
        }
        match (&oidc.jwks_url, &oidc.jwks_file) {
            (Some(url), None) => {
                url.parse::<http::Uri>()
                    .map_err(|_| at("`jwks_url` is not a valid URL"))?;
                if !portcullis_control::oidc_login::safe_endpoint(url) {
                    return Err(at("`jwks_url` must be https (http only on loopback)"));
                }
            }
            (None, Some(_)) => {}
            // A login issuer publishes its keys in its discovery document.
            (None, None) if oidc.client_id.is_some() => {}
            _ => {
                return Err(at(
                    "set exactly one of `jwks_url` and `jwks_file` (or `client_id`, to read the keys from discovery)",
                ));
            }
        }
        check_login(oidc).map_err(|m| at(&m))?;
        if oidc
            .clock_skew_seconds
            .is_some_and(|s| !(0..=portcullis_identity::MAX_CLOCK_SKEW).contains(&s))
        {
            return Err(at("`clock_skew_seconds` must be between 0 and 300"));
        }
        if identity.oidc[..i.min(identity.oidc.len())]
            .iter()
            .any(|o| o.issuer == oidc.issuer)
        {
            return Err(at("duplicate issuer"));
        }
    }
    Ok(())
}

/// The login settings of one issuer: all or nothing, a reachable issuer URL
/// (discovery is fetched from it), one secret source at most.
fn check_login(oidc: &RawOidc) -> Result<(), String> {
    let Some(client_id) = &oidc.client_id else {
        return match (
            &oidc.client_secret_file,
            &oidc.client_secret_env,
            &oidc.display_name,
            &oidc.scopes,
        ) {
            (None, None, None, None) => Ok(()),
            _ => Err("`client_secret_*`, `display_name` and `scopes` need `client_id`".into()),
        };
    };
    if client_id.is_empty() || client_id.len() > 256 {
        return Err("`client_id` must be 1 to 256 characters".into());
    }
    let issuer_ok = portcullis_control::oidc_login::safe_endpoint(&oidc.issuer)
        && !oidc.issuer.contains(['?', '#']);
    if !issuer_ok {
        return Err("a login issuer must be an https URL (http only on loopback)".into());
    }
    if oidc.client_secret_file.is_some() && oidc.client_secret_env.is_some() {
        return Err("set at most one of `client_secret_file` and `client_secret_env`".into());
    }
    if oidc
        .scopes
        .iter()
        .flatten()
        .any(|s| s.is_empty() || s.contains([' ', '"']) || s == "openid")
    {
        return Err("`scopes` are single words besides `openid` (always asked for)".into());
    }
    Ok(())
}

/// Checks the issued access tokens' lifetime and issuer URL.
pub(super) fn check_tokens(identity: &RawIdentity) -> Result<(), String> {
    if let Some(ttl) = identity.token_ttl_seconds
        && !(1..=portcullis_identity::MAX_TOKEN_TTL).contains(&ttl)
    {
        return Err(format!(
            "key `identity.token_ttl_seconds`: must be between 1 and {} (15 minutes)",
            portcullis_identity::MAX_TOKEN_TTL
        ));
    }
    if let Some(issuer) = &identity.token_issuer
        && (!issuer.starts_with("https://")
            || issuer.len() <= "https://".len()
            || issuer.ends_with('/')
            || issuer.contains(['?', '#', ' ']))
    {
        return Err(format!(
            "key `identity.token_issuer`: `{issuer}` must be an https URL without a trailing slash, query or fragment, e.g. `https://gateway.example.com`"
        ));
    }
    Ok(())
}

/// A `[[identity.oidc]]` issuer of users' tokens (checked in `parse`).
pub(super) fn oidc(o: RawOidc, base: &Path) -> OidcConfig {
    let login = o.client_id.map(|client_id| LoginClient {
        client_id,
        client_secret: match (o.client_secret_file, o.client_secret_env) {
            (Some(file), _) => Some(ClientSecretSource::File(super::relative(base, file))),
            (None, Some(var)) => Some(ClientSecretSource::Env(var)),
            (None, None) => None,
        },
        display_name: o.display_name.unwrap_or_else(|| o.issuer.clone()),
        scopes: o
            .scopes
            .unwrap_or_else(|| vec!["email".into(), "profile".into()]),
    });
    OidcConfig {
        login,
        jwks: jwks(o.jwks_url, o.jwks_file, base),
        issuer: o.issuer,
        audience: o.audience,
        mfa_amr: o
            .mfa_amr
            .unwrap_or_else(|| vec!["mfa".into(), "otp".into(), "hwk".into()]),
        clock_skew: o.clock_skew_seconds.unwrap_or(60),
    }
}

/// The `[identity.posture_attestor]` (checked in `parse`): no `amr` values
/// count as a second factor in its statements.
pub(super) fn posture_attestor(o: RawOidc, base: &Path) -> OidcConfig {
    OidcConfig {
        jwks: jwks(o.jwks_url, o.jwks_file, base),
        issuer: o.issuer,
        audience: o.audience,
        mfa_amr: Vec::new(),
        clock_skew: o.clock_skew_seconds.unwrap_or(60),
        login: None,
    }
}

fn jwks(url: Option<String>, file: Option<PathBuf>, base: &Path) -> JwksSource {
    match (url, file) {
        (Some(url), _) => JwksSource::Url(url),
        (None, Some(file)) => JwksSource::File(super::relative(base, file)),
        (None, None) => JwksSource::Discovery,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::config::tests::check;

    #[test]
    fn login_issuers_and_admin_roles() {
        use super::{ClientSecretSource, JwksSource};
        let base = "[[identity.oidc]]\nissuer = \"https://idp\"\naudience = \"a\"\nclient_id = \"gw\"\nclient_secret_file = \"s\"\n";
        let c = Config::parse(base, Path::new("/etc/p/p.toml")).unwrap();
        let login = c.oidc[0].login.clone().unwrap();
        assert_eq!(c.oidc[0].jwks, JwksSource::Discovery);
        assert_eq!(
            login.client_secret,
            Some(ClientSecretSource::File("/etc/p/s".into()))
        );
        assert_eq!(
            (login.display_name.as_str(), login.scopes.as_slice()),
            (
                "https://idp",
                ["email".to_string(), "profile".to_string()].as_slice()
            )
        );
        let role = |extra: &str| format!("{base}[[admin.oidc_roles]]\n{extra}\n");
        let c = Config::parse(
            &role("claim = \"groups\"\nvalue = \"ops\"\nrole = \"approver\""),
            Path::new("/p.toml"),
        )
        .unwrap();
        assert_eq!(c.admin_oidc_roles[0].role, "approver");
        check(
            &role("claim = \"groups\"\nvalue = \"ops\"\nrole = \"root\""),
            "unknown role `root`",
        );
        check(
            &role("claim = \"name\"\nvalue = \"x\"\nrole = \"owner\""),
            "unknown variant `name`",
        );
        check(
            &role("claim = \"sub\"\nvalue = \"x\"\nrole = \"owner\"\nissuer = \"https://other\""),
            "is not an `[[identity.oidc]]` issuer with a `client_id`",
        );
        check(
            "[[admin.oidc_roles]]\nclaim = \"sub\"\nvalue = \"x\"\nrole = \"owner\"\n",
            "needs an `[[identity.oidc]]` issuer with a `client_id`",
        );
        check(
            "[[identity.oidc]]\nissuer = \"http://idp.example\"\naudience = \"a\"\nclient_id = \"gw\"\n",
            "a login issuer must be an https URL",
        );
        check(
            "[[identity.oidc]]\nissuer = \"https://idp\"\naudience = \"a\"\njwks_file = \"k\"\nscopes = [\"groups\"]\n",
            "need `client_id`",
        );
        check(
            "[[identity.oidc]]\nissuer = \"https://idp\"\naudience = \"a\"\n",
            "set exactly one of `jwks_url` and `jwks_file`",
        );
        check(
            &format!("{base}client_secret_env = \"X\"\n"),
            "at most one of `client_secret_file` and `client_secret_env`",
        );
        check(
            &format!("{base}scopes = [\"openid\"]\n"),
            "`scopes` are single words",
        );
    }

    #[test]
    fn token_settings() {
        let parse = |t: &str| Config::parse(t, Path::new("/p.toml"));
        let c = parse("").unwrap();
        assert_eq!((c.token_issuer.as_deref(), c.token_ttl), (None, 300));
        let c = parse(
            "[identity]\ntoken_issuer = \"https://gw.example.com\"\ntoken_ttl_seconds = 900\n",
        )
        .unwrap();
        assert_eq!(
            (c.token_issuer.as_deref(), c.token_ttl),
            (Some("https://gw.example.com"), 900)
        );
        check(
            "[identity]\ntoken_ttl_seconds = 901\n",
            "key `identity.token_ttl_seconds`: must be between 1 and 900",
        );
        check("[identity]\ntoken_ttl_seconds = 0\n", "token_ttl_seconds");
        for bad in ["http://gw", "https://gw/", "https://", "https://gw?x=1"] {
            check(
                &format!("[identity]\ntoken_issuer = \"{bad}\"\n"),
                "key `identity.token_issuer`",
            );
        }
    }
}
