//! The facts of one request and the Cedar `context` made of them: the action
//! (`HttpAction`), when it arrived (`RequestTime`), from where (`SourceIp`),
//! what the content guard found in its body (`Content`) and who sent it
//! (`CallerFacts`), gathered in an `AuthzRequest`; and the context of the
//! decisions made after routing (`routed_pairs`).

use std::net::IpAddr;
use std::sync::LazyLock;

use cedar_policy::{Context, RestrictedExpression};

use crate::caller::CallerFacts;

/// The HTTP methods policy knows, each an `Action::"<METHOD>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpAction {
    /// `GET`, in `Action::"read"`.
    Get,
    /// `HEAD`, in `Action::"read"`.
    Head,
    /// `POST`, in `Action::"write"`.
    Post,
    /// `PUT`, in `Action::"write"`.
    Put,
    /// `PATCH`, in `Action::"write"`.
    Patch,
    /// `DELETE`, in `Action::"write"`.
    Delete,
}

impl HttpAction {
    pub(crate) const ALL: [HttpAction; 6] = [
        HttpAction::Get,
        HttpAction::Head,
        HttpAction::Post,
        HttpAction::Put,
        HttpAction::Patch,
        HttpAction::Delete,
    ];

    /// The method name, which is also the Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpAction::Get => "GET",
            HttpAction::Head => "HEAD",
            HttpAction::Post => "POST",
            HttpAction::Put => "PUT",
            HttpAction::Patch => "PATCH",
            HttpAction::Delete => "DELETE",
        }
    }

    /// The action for an HTTP method, or `None` for methods policy cannot grant
    /// (`OPTIONS`, `TRACE`, `CONNECT`, extensions), which the gateway refuses.
    pub fn from_method(method: &str) -> Option<Self> {
        HttpAction::ALL.into_iter().find(|a| a.as_str() == method)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The wall-clock facts policy may use, all UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTime {
    /// Hour of day, 0–23.
    pub hour: i64,
    /// ISO weekday, 1 = Monday … 7 = Sunday.
    pub weekday: i64,
    /// Seconds since the Unix epoch.
    pub epoch: i64,
}

impl RequestTime {
    /// `context.time` as Cedar sees it.
    pub(crate) fn expr(&self) -> Result<RestrictedExpression, String> {
        RestrictedExpression::new_record([
            (
                "hour".to_string(),
                RestrictedExpression::new_long(self.hour),
            ),
            (
                "weekday".to_string(),
                RestrictedExpression::new_long(self.weekday),
            ),
            (
                "epoch".to_string(),
                RestrictedExpression::new_long(self.epoch),
            ),
        ])
        .map_err(|e| e.to_string())
    }

    /// Derives hour and weekday from seconds since the epoch.
    pub fn from_epoch(epoch: i64) -> Self {
        let days = epoch.div_euclid(86_400);
        let hour = epoch.rem_euclid(86_400) / 3_600;
        // 1970-01-01 was a Thursday (ISO weekday 4).
        let weekday = (days + 3).rem_euclid(7) + 1;
        RequestTime {
            hour,
            weekday,
            epoch,
        }
    }
}

/// What the content guard found in the request body, as policy sees it
/// (`context.content`). Plain data: the gateway fills it from the guard's
/// report, never with a found value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Content<'a> {
    /// Whether the body was scanned (the route's guard is on and the body is text).
    pub scanned: bool,
    /// The prompt-injection score, 0–1 (Cedar `decimal`, four decimals).
    pub injection_score: f32,
    /// Whether the score reached the channel's threshold.
    pub injection_flagged: bool,
    /// The distinct finding types (`aws_access_key`, `prompt_injection`, …).
    pub findings: &'a [&'a str],
}

impl Content<'_> {
    /// A request whose body was not scanned.
    pub const NOT_SCANNED: Content<'static> = Content {
        scanned: false,
        injection_score: 0.0,
        injection_flagged: false,
        findings: &[],
    };

    /// The record `context.content` as Cedar sees it. Unscanned content (most
    /// requests) is built once per process.
    pub(crate) fn expr(&self) -> Result<RestrictedExpression, String> {
        static NOT_SCANNED: LazyLock<Result<RestrictedExpression, String>> =
            LazyLock::new(|| Content::NOT_SCANNED.build());
        if *self == Content::NOT_SCANNED {
            return NOT_SCANNED.clone();
        }
        self.build()
    }

    fn build(&self) -> Result<RestrictedExpression, String> {
        RestrictedExpression::new_record([
            (
                "scanned".to_string(),
                RestrictedExpression::new_bool(self.scanned),
            ),
            (
                "injection_score".to_string(),
                crate::caller::unit_decimal(self.injection_score),
            ),
            (
                "injection_flagged".to_string(),
                RestrictedExpression::new_bool(self.injection_flagged),
            ),
            (
                "findings".to_string(),
                RestrictedExpression::new_set(
                    self.findings
                        .iter()
                        .map(|f| RestrictedExpression::new_string((*f).to_string())),
                ),
            ),
        ])
        .map_err(|e| e.to_string())
    }
}

/// One request to decide.
#[derive(Debug, Clone)]
pub struct AuthzRequest<'a> {
    /// The authenticated agent.
    pub agent: &'a str,
    /// The HTTP method as an action.
    pub action: HttpAction,
    /// The matched route.
    pub route: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The client's address, prepared once per connection.
    pub source_ip: &'a SourceIp,
    /// When the request arrived.
    pub time: RequestTime,
    /// What the content guard found in the body.
    pub content: Content<'a>,
    /// How the caller authenticated, for whom, its posture and risk.
    pub caller: &'a CallerFacts,
}

impl AuthzRequest<'_> {
    /// `context` as Cedar sees it: the method, path, source, time, content
    /// findings and the caller facts.
    pub(crate) fn context(&self) -> Result<Context, String> {
        let time = self.time.expr()?;
        let content = self.content.expr()?;
        let mut pairs = vec![
            (
                "method".to_string(),
                RestrictedExpression::new_string(self.action.as_str().to_string()),
            ),
            (
                "path".to_string(),
                RestrictedExpression::new_string(self.path.to_string()),
            ),
            ("source_ip".to_string(), self.source_ip.expr.clone()),
            ("time".to_string(), time),
            ("content".to_string(), content),
        ];
        pairs.extend(self.caller.context_pairs()?);
        Context::from_pairs(pairs).map_err(|e| e.to_string())
    }
}

/// A client address in the form policy evaluation needs. Building it costs a
/// Cedar parse, so the gateway makes one per connection, not per request.
#[derive(Debug, Clone)]
pub struct SourceIp {
    ip: IpAddr,
    expr: RestrictedExpression,
}

impl SourceIp {
    pub(crate) fn expr(&self) -> &RestrictedExpression {
        &self.expr
    }

    /// Prepares `ip`.
    pub fn new(ip: IpAddr) -> Self {
        SourceIp {
            ip,
            expr: RestrictedExpression::new_ip(ip.to_string()),
        }
    }

    /// The address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// The context attributes of a decision made after routing (`use_secret`,
/// `complete`, `embed`, `egress`): the route taken, the request's method and
/// path, source, time, content findings and the caller facts. An action may
/// add its own (egress adds the host, port and address it decides).
pub(crate) fn routed_pairs(
    route: &str,
    method: &str,
    path: &str,
    source_ip: &SourceIp,
    time: RequestTime,
    content: &Content<'_>,
    caller: &CallerFacts,
) -> Result<Vec<(String, RestrictedExpression)>, String> {
    let mut pairs = vec![
        (
            "route".to_string(),
            RestrictedExpression::new_string(route.to_string()),
        ),
        (
            "method".to_string(),
            RestrictedExpression::new_string(method.to_string()),
        ),
        (
            "path".to_string(),
            RestrictedExpression::new_string(path.to_string()),
        ),
        ("source_ip".to_string(), source_ip.expr().clone()),
        ("time".to_string(), time.expr()?),
        ("content".to_string(), content.expr()?),
    ];
    pairs.extend(caller.context_pairs()?);
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorizer::fixtures::{MTLS_CALLER, authorizer, check};

    #[test]
    fn context_reaches_policies() {
        let a = authorizer(
            "@id(\"office\") permit(principal, action in Action::\"read\", resource)\n\
             when { context.source_ip.isInRange(ip(\"10.0.0.0/8\")) && context.time.weekday == 2 \n\
             && context.time.hour == 22 && context.path == \"/x\" && context.method == \"GET\" };",
        );
        // 1_700_000_000 is Tuesday 2023-11-14 22:13:20 UTC.
        check(&a, "reader-bot", "GET", "demo", "10.9.9.9", "allow office");
        check(
            &a,
            "reader-bot",
            "GET",
            "demo",
            "192.168.1.1",
            "deny default-deny",
        );
    }

    #[test]
    fn content_findings_reach_policies_and_are_never_memoized() {
        let a = authorizer(
            r#"
@id("read") permit(principal in Role::"reader", action == Action::"GET", resource);
@id("no-injection") forbid(principal, action, resource) when { context.content.injection_score.greaterThan(decimal("0.8")) };
@id("no-keys") forbid(principal, action, resource) when { context.content.findings.contains("aws_access_key") };
@id("unscanned") forbid(principal in Role::"writer", action, resource) unless { context.content.scanned };
"#,
        );
        let ip = SourceIp::new("127.0.0.1".parse().unwrap());
        let with = |agent, content| AuthzRequest {
            agent,
            action: HttpAction::Get,
            route: "demo",
            path: "/x",
            source_ip: &ip,
            time: RequestTime::from_epoch(0),
            content,
            caller: &MTLS_CALLER,
        };
        let scanned = |score, findings| Content {
            scanned: true,
            injection_score: score,
            injection_flagged: score > 0.5,
            findings,
        };
        // The same (agent, action, route) decided differently by content, in
        // both orders: a memoized first answer would repeat itself.
        for _ in 0..2 {
            assert!(a.decide(&with("reader-bot", scanned(0.1, &[]))).allowed);
            let d = a.decide(&with("reader-bot", scanned(0.93, &["prompt_injection"])));
            assert_eq!(d.policy_ids, ["no-injection"]);
            let d = a.decide(&with(
                "reader-bot",
                scanned(0.0, &["aws_access_key", "email"]),
            ));
            assert_eq!(d.policy_ids, ["no-keys"]);
            assert!(a.decide(&with("reader-bot", Content::NOT_SCANNED)).allowed);
            let d = a.decide(&with("writer-bot", Content::NOT_SCANNED));
            assert_eq!(d.policy_ids, ["unscanned"]);
        }
        assert_eq!(a.index.memo.len(), 0);
        // Odd scores are clamped into the decimal's range, never an error.
        let d = a.decide(&with("reader-bot", scanned(f32::NAN, &[])));
        assert!(d.errors.is_empty() && !d.allowed);
    }

    #[test]
    fn time_from_epoch() {
        assert_eq!(
            RequestTime::from_epoch(0),
            RequestTime {
                hour: 0,
                weekday: 4,
                epoch: 0
            }
        );
        let t = RequestTime::from_epoch(1_700_000_000);
        assert_eq!((t.hour, t.weekday), (22, 2));
    }

    #[test]
    fn methods() {
        assert_eq!(HttpAction::from_method("PATCH"), Some(HttpAction::Patch));
        assert_eq!(HttpAction::from_method("OPTIONS"), None);
        assert_eq!(HttpAction::from_method("get"), None);
    }

    #[test]
    fn caller_facts_reach_policies() {
        let a = authorizer(
            r#"
@id("read") permit(principal in Role::"reader", action == Action::"GET", resource);
@id("risky") forbid(principal, action, resource) when { context.risk.greaterThan(decimal("0.7")) };
@id("for-users") forbid(principal, action, resource) when { context has delegation && (context.delegation.depth > 1 || context.delegation.user == "mallory") };
@id("attested-tokens") forbid(principal, action, resource) when { context.auth.method == "token" && !(context.posture.attested && context.posture.matches_pin) };
@id("mfa-for-bob") forbid(principal, action, resource) when { context has delegation && context.delegation.chain.contains("bob-agent") && !context.auth.mfa };
@id("no-bearer") forbid(principal, action, resource) when { context.auth.binding == "bearer" };
"#,
        );
        let ip = SourceIp::new("127.0.0.1".parse().unwrap());
        let decide = |caller: &CallerFacts| {
            a.decide(&AuthzRequest {
                agent: "reader-bot",
                action: HttpAction::Get,
                route: "demo",
                path: "/x",
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                content: Content::NOT_SCANNED,
                caller,
            })
        };
        let base = CallerFacts::mtls();
        assert!(decide(&base).allowed);
        let risky = CallerFacts {
            risk: 0.71,
            ..base.clone()
        };
        assert_eq!(decide(&risky).policy_ids, ["risky"]);
        let nan = CallerFacts {
            risk: f32::NAN,
            ..base.clone()
        };
        assert_eq!(decide(&nan).policy_ids, ["risky"]);
        let delegated = |user: &str, depth, mfa| CallerFacts {
            auth: crate::AuthFacts {
                mfa,
                ..base.auth.clone()
            },
            delegation: Some(crate::Delegation {
                user: user.into(),
                depth,
                chain: vec!["bob-agent".into()],
            }),
            ..base.clone()
        };
        assert!(decide(&delegated("alice", 1, true)).allowed);
        assert_eq!(
            decide(&delegated("alice", 2, true)).policy_ids,
            ["for-users"]
        );
        assert_eq!(
            decide(&delegated("mallory", 1, true)).policy_ids,
            ["for-users"]
        );
        assert_eq!(
            decide(&delegated("alice", 1, false)).policy_ids,
            ["mfa-for-bob"]
        );
        let token = |attested, matches_pin| CallerFacts {
            auth: crate::AuthFacts {
                method: crate::AuthMethod::DpopToken,
                mfa: false,
                token_age_secs: 10,
            },
            posture: crate::Posture {
                attested,
                digest: "sha256:00".into(),
                matches_pin,
            },
            ..base.clone()
        };
        assert!(decide(&token(true, true)).allowed);
        assert_eq!(decide(&token(true, false)).policy_ids, ["attested-tokens"]);
        assert_eq!(decide(&token(false, false)).policy_ids, ["attested-tokens"]);
        // `binding`: what a stolen credential would also need. Only the
        // unbound token is refused; a certificate-bound token is a token
        // bound like the certificate it names.
        let bound = |method| CallerFacts {
            auth: crate::AuthFacts {
                method,
                mfa: false,
                token_age_secs: 10,
            },
            posture: crate::Posture {
                attested: true,
                digest: "sha256:00".into(),
                matches_pin: true,
            },
            ..base.clone()
        };
        assert!(decide(&bound(crate::AuthMethod::MtlsToken)).allowed);
        assert!(decide(&bound(crate::AuthMethod::DpopToken)).allowed);
        assert_eq!(
            decide(&bound(crate::AuthMethod::Bearer)).policy_ids,
            ["no-bearer"]
        );
        assert_eq!(
            [
                crate::AuthMethod::Mtls,
                crate::AuthMethod::MtlsToken,
                crate::AuthMethod::DpopToken,
                crate::AuthMethod::Bearer
            ]
            .map(|m| (m.as_str(), m.binding())),
            [
                ("mtls", "mtls"),
                ("token", "mtls"),
                ("token", "dpop"),
                ("bearer", "bearer")
            ]
        );
    }
}
