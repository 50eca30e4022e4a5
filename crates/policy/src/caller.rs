//! Who is calling, beyond the principal's name: how the caller authenticated
//! (`context.auth`), on whose behalf it acts (`context.delegation`), what its
//! workload attested (`context.posture`) and how risky its recent behaviour
//! looks (`context.risk`). Every action's context carries these four, so a
//! policy can require MFA, attested posture or low risk on any request.
//!
//! Plain data: the gateway fills it from the credential and the analytics;
//! this module turns it into Cedar values.

use std::sync::{LazyLock, OnceLock};

use cedar_policy::RestrictedExpression;

/// How the caller proved who it is, and what its credential is bound to.
/// One enum for both facts (`context.auth.method` and
/// `context.auth.binding`), so an impossible pair (a certificate "bound" to
/// nothing) cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A Portcullis client certificate on the connection.
    Mtls,
    /// An access token from the gateway's token endpoint bound to a DPoP
    /// key (RFC 9449): each request carries a proof of that key.
    DpopToken,
    /// An access token from the gateway's token endpoint bound to the
    /// client certificate of the connection (RFC 8705).
    MtlsToken,
    /// An unbound bearer token of the authorization-code flow (MCP
    /// authorization, a client that sent no DPoP proof): whoever holds it
    /// can use it until it expires. Policies may forbid it per route.
    Bearer,
}

impl AuthMethod {
    /// The value policies compare against (`context.auth.method == "token"`):
    /// what was presented — a certificate, a sender-constrained token, or
    /// an unbound one.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Mtls => "mtls",
            AuthMethod::DpopToken | AuthMethod::MtlsToken => "token",
            AuthMethod::Bearer => "bearer",
        }
    }

    /// `context.auth.binding`: what a stolen credential would also need —
    /// `"dpop"` (the DPoP private key), `"mtls"` (the client certificate's
    /// key) or `"bearer"` (nothing: possession is enough).
    pub fn binding(self) -> &'static str {
        match self {
            AuthMethod::DpopToken => "dpop",
            AuthMethod::Mtls | AuthMethod::MtlsToken => "mtls",
            AuthMethod::Bearer => "bearer",
        }
    }
}

/// `context.auth`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthFacts {
    /// How the caller authenticated.
    pub method: AuthMethod,
    /// Whether a human behind the request passed a second factor recently
    /// (the delegating user's token said so).
    pub mfa: bool,
    /// Seconds since the access token was issued (0 for certificates).
    pub token_age_secs: i64,
}

/// `context.delegation`: the agent acts on behalf of a user (RFC 8693 token
/// exchange). Absent when the agent acts on its own; policies test
/// `context has delegation`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegation {
    /// The user at the start of the chain (the subject token's `sub`).
    pub user: String,
    /// How many actors stand between the user and this request (1 = the agent
    /// holds a token exchanged directly for the user's).
    pub depth: i64,
    /// Every actor in the chain, the current agent first.
    pub chain: Vec<String>,
}

/// `context.posture`: the workload's second factor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Posture {
    /// A signed posture statement came with the credential.
    pub attested: bool,
    /// The attested workload digest (`sha256:<hex>`), empty when not attested.
    pub digest: String,
    /// The agent is pinned and the attested digest and source address match the pin.
    pub matches_pin: bool,
}

/// Everything about the caller that reaches policy besides its name.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerFacts {
    /// `context.auth`.
    pub auth: AuthFacts,
    /// `context.delegation`, when the agent acts for a user.
    pub delegation: Option<Delegation>,
    /// `context.posture`.
    pub posture: Posture,
    /// `context.risk`, 0.0–1.0 (Cedar `decimal`, four decimals). Non-finite
    /// values count as the highest risk.
    pub risk: f32,
}

impl CallerFacts {
    /// A caller on a client certificate, no delegation, no attestation, no risk.
    pub const fn mtls() -> Self {
        CallerFacts {
            auth: AuthFacts {
                method: AuthMethod::Mtls,
                mfa: false,
                token_age_secs: 0,
            },
            delegation: None,
            posture: Posture {
                attested: false,
                digest: String::new(),
                matches_pin: false,
            },
            risk: 0.0,
        }
    }

    /// The context attributes, to join with an action's own.
    pub(crate) fn context_pairs(&self) -> Result<Vec<(String, RestrictedExpression)>, String> {
        // The most common values (a certificate, no attestation, no risk) are
        // built once per process and cloned; building them per request was a
        // fifth of a context-reading decision.
        static CERTIFICATE_AUTH: LazyLock<Result<RestrictedExpression, String>> =
            LazyLock::new(|| auth_record(&CallerFacts::mtls().auth));
        static NOT_ATTESTED: LazyLock<Result<RestrictedExpression, String>> =
            LazyLock::new(|| posture_record(&Posture::default()));
        let auth = if self.auth == CallerFacts::mtls().auth {
            CERTIFICATE_AUTH.clone()?
        } else {
            auth_record(&self.auth)?
        };
        let posture = if self.posture == Posture::default() {
            NOT_ATTESTED.clone()?
        } else {
            posture_record(&self.posture)?
        };
        let risk = unit_decimal(self.risk);
        let mut pairs = vec![
            ("auth".to_string(), auth),
            ("posture".to_string(), posture),
            ("risk".to_string(), risk),
        ];
        if let Some(d) = &self.delegation {
            let delegation = record(vec![
                ("user", RestrictedExpression::new_string(d.user.clone())),
                ("depth", RestrictedExpression::new_long(d.depth)),
                (
                    "chain",
                    RestrictedExpression::new_set(
                        d.chain
                            .iter()
                            .map(|a| RestrictedExpression::new_string(a.clone())),
                    ),
                ),
            ])?;
            pairs.push(("delegation".to_string(), delegation));
        }
        Ok(pairs)
    }

    /// Sample callers whose contexts together cover every shape the gateway
    /// builds (with and without the optional `delegation`), for the
    /// once-per-snapshot schema check.
    pub(crate) fn shape_samples() -> [CallerFacts; 2] {
        let mut delegated = CallerFacts::mtls();
        delegated.delegation = Some(Delegation {
            user: "shape-check".into(),
            depth: 1,
            chain: vec!["shape-check".into()],
        });
        [CallerFacts::mtls(), delegated]
    }
}

fn record(pairs: Vec<(&str, RestrictedExpression)>) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(pairs.into_iter().map(|(k, v)| (k.to_string(), v)))
        .map_err(|e| e.to_string())
}

/// `context.auth`.
fn auth_record(auth: &AuthFacts) -> Result<RestrictedExpression, String> {
    record(vec![
        (
            "method",
            RestrictedExpression::new_string(auth.method.as_str().to_string()),
        ),
        (
            "binding",
            RestrictedExpression::new_string(auth.method.binding().to_string()),
        ),
        ("mfa", RestrictedExpression::new_bool(auth.mfa)),
        (
            "token_age",
            RestrictedExpression::new_long(auth.token_age_secs),
        ),
    ])
}

/// `context.posture`.
fn posture_record(posture: &Posture) -> Result<RestrictedExpression, String> {
    record(vec![
        ("attested", RestrictedExpression::new_bool(posture.attested)),
        (
            "digest",
            RestrictedExpression::new_string(posture.digest.clone()),
        ),
        (
            "matches_pin",
            RestrictedExpression::new_bool(posture.matches_pin),
        ),
    ])
}

/// A 0–1 score as a Cedar decimal literal (`0.0000` to `1.0000`).
/// `score` as a Cedar `decimal` expression, four decimals in [0, 1].
///
/// Building a `decimal` expression parses the extension function's name with
/// Cedar's own parser, which cost more than the rest of a context together;
/// so each of the 10,001 values is built once per process, when first used.
/// Each slot holds a box: an empty slot then takes 16 bytes, not an
/// expression's ~136 (1.4 MB of table for the few values a process meets).
pub(crate) fn unit_decimal(score: f32) -> RestrictedExpression {
    static BUILT: LazyLock<Box<[OnceLock<Box<RestrictedExpression>>]>> =
        LazyLock::new(|| (0..=10_000).map(|_| OnceLock::new()).collect());
    let text = decimal4(score);
    // "0.1234" → 1234, "1.0000" → 10000: always in range.
    let index: usize = text.replace('.', "").parse().unwrap_or(10_000);
    BUILT[index.min(10_000)]
        .get_or_init(|| Box::new(RestrictedExpression::new_decimal(text)))
        .as_ref()
        .clone()
}

pub(crate) fn decimal4(score: f32) -> String {
    let s = if score.is_finite() {
        score.clamp(0.0, 1.0)
    } else {
        1.0
    };
    format!("{s:.4}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_clamp_and_non_finite_is_highest() {
        assert_eq!(decimal4(0.25), "0.2500");
        assert_eq!(decimal4(-1.0), "0.0000");
        assert_eq!(decimal4(7.0), "1.0000");
        assert_eq!(decimal4(f32::NAN), "1.0000");
    }
}
