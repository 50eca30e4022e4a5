//! `Action::"egress"` and `Action::"egress_private"` on `Host::"<name>:<port>"`:
//! whether a sandboxed stdio MCP server may reach a network destination
//! through the gateway's egress proxy, on behalf of the agent whose MCP
//! session it serves.
//!
//! The gateway resolves the name itself and asks once per connection, with
//! the address it would connect to in the context. A public address is
//! asked as `egress`; any other (loopback, private, link-local, the cloud
//! metadata address, ...) as `egress_private`, so a policy that opens the
//! internet to a server does not open the gateway's own network to it
//! (SSRF, DNS rebinding): that takes a permit naming `egress_private`.
//! Default deny, as everywhere.
//!
//! A plain HTTP request is scanned by the content guard before it is
//! decided, so `context.content` holds what was found in its URL, headers
//! and body; a `CONNECT` tunnel (`context.tunnel == true`) carries bytes
//! the gateway cannot read, and its content is "not scanned". When the
//! agent acts for a user (a delegated token opened the MCP session), the
//! connection is decided as the user too, like every other call:
//! [`crate::Authorizer::decide_egress_for_user`].

use std::borrow::Cow;
use std::net::IpAddr;

use cedar_policy::{Entities, EntityUid, Request, RestrictedExpression};
use portcullis_core::Decision;

use crate::PolicyBundle;
use crate::caller::CallerFacts;
use crate::candidates::ActionPolicies;
use crate::entities::EntityError;
use crate::facts::{Content, RequestTime, SourceIp};
use crate::resource::{Pairs, ResourceAsk, ResourceDecider};

/// The action for public addresses.
pub const EGRESS: &str = "egress";
/// The action for every other address.
pub const EGRESS_PRIVATE: &str = "egress_private";

/// What kind of address a destination resolved to (`context.address_class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable.
    Public,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918, CGNAT (`100.64.0.0/10`), unique local (`fc00::/7`).
    Private,
    /// `169.254.0.0/16` and `fe80::/10`, except the metadata address.
    LinkLocal,
    /// `169.254.169.254`, `fd00:ec2::254`: cloud instance metadata.
    Metadata,
    /// Unspecified, multicast, broadcast, documentation, reserved.
    Other,
}

impl AddressClass {
    /// Classifies `ip` (IPv4-mapped IPv6 addresses as their IPv4 address).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Self::of_v4(v4);
                }
                let s = v6.segments();
                if v6.is_loopback() {
                    AddressClass::Loopback
                } else if v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                    AddressClass::Metadata
                } else if s[0] & 0xfe00 == 0xfc00 {
                    AddressClass::Private
                } else if s[0] & 0xffc0 == 0xfe80 {
                    AddressClass::LinkLocal
                } else if v6.is_unspecified()
                    || v6.is_multicast()
                    || (s[0] == 0x2001 && s[1] == 0x0db8)
                    // NAT64 and 6to4 can embed any IPv4 address.
                    || (s[0] == 0x64 && s[1] == 0xff9b)
                    || s[0] == 0x2002
                    || s[0] & 0xe000 != 0x2000
                {
                    AddressClass::Other
                } else {
                    AddressClass::Public
                }
            }
        }
    }

    fn of_v4(v4: std::net::Ipv4Addr) -> Self {
        let o = v4.octets();
        if v4.is_loopback() {
            AddressClass::Loopback
        } else if o == [169, 254, 169, 254] {
            AddressClass::Metadata
        } else if v4.is_link_local() {
            AddressClass::LinkLocal
        } else if v4.is_private() || (o[0] == 100 && o[1] & 0xc0 == 64) {
            AddressClass::Private
        } else if v4.is_unspecified()
            || v4.is_broadcast()
            || v4.is_multicast()
            || v4.is_documentation()
            || o[0] == 0
            || o[0] >= 240
            || (o[0] == 192 && o[1] == 0 && o[2] == 0)
            || (o[0] == 198 && o[1] & 0xfe == 18)
        {
            AddressClass::Other
        } else {
            AddressClass::Public
        }
    }

    /// The word in `context.address_class` and in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link_local",
            AddressClass::Metadata => "metadata",
            AddressClass::Other => "other",
        }
    }

    /// The action a connection to such an address is decided as.
    pub fn action(self) -> &'static str {
        match self {
            AddressClass::Public => EGRESS,
            _ => EGRESS_PRIVATE,
        }
    }
}

/// One connection a sandboxed server asks the egress proxy for.
#[derive(Debug, Clone)]
pub struct EgressRequest<'a> {
    /// The agent whose MCP session the server serves.
    pub agent: &'a str,
    /// The stdio route.
    pub route: &'a str,
    /// The server's program (the command's first word).
    pub server: &'a str,
    /// The session (a SHA-256 prefix of its id, as in audit records).
    pub session: &'a str,
    /// `CONNECT` for a tunnel, else the plain HTTP request's method.
    pub method: &'a str,
    /// The plain HTTP request's path without its query; `""` for `CONNECT`.
    pub path: &'a str,
    /// Whether this is a `CONNECT` tunnel (`context.tunnel`), whose bytes
    /// the gateway does not read.
    pub tunnel: bool,
    /// What the content guard found in the plain HTTP request's URL,
    /// headers and body ([`Content::NOT_SCANNED`] for a tunnel).
    pub content: Content<'a>,
    /// The host name (or address literal) the server asked for.
    pub host: &'a str,
    /// The port.
    pub port: u16,
    /// The address the gateway resolved and would connect to.
    pub address: IpAddr,
    /// The agent's address when it opened the session.
    pub source_ip: &'a SourceIp,
    /// When the connection was asked for.
    pub time: RequestTime,
    /// How the agent authenticated when it opened the session.
    pub caller: &'a CallerFacts,
}

impl EgressRequest<'_> {
    /// `Host::"<host>:<port>"`'s id (IPv6 literals in brackets).
    pub fn host_id(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An [`EgressRequest`] as the decider asks it: with `context.tunnel` only
/// when the schema declares it.
struct Ask<'r, 'a> {
    r: &'r EgressRequest<'a>,
    tunnel: bool,
}

impl ResourceAsk for Ask<'_, '_> {
    fn agent(&self) -> &str {
        self.r.agent
    }

    fn resource_id(&self) -> Cow<'_, str> {
        Cow::Owned(self.r.host_id())
    }

    fn context(&self) -> Result<Pairs, String> {
        let r = self.r;
        let mut pairs = crate::facts::routed_pairs(
            r.route,
            r.method,
            r.path,
            r.source_ip,
            r.time,
            &r.content,
            r.caller,
        )?;
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        pairs.extend([
            ("server".to_string(), s(r.server)),
            ("session".to_string(), s(r.session)),
            ("host".to_string(), s(r.host)),
            (
                "port".to_string(),
                RestrictedExpression::new_long(i64::from(r.port)),
            ),
            (
                "address".to_string(),
                RestrictedExpression::new_ip(r.address.to_string()),
            ),
            (
                "address_class".to_string(),
                s(AddressClass::of(r.address).as_str()),
            ),
        ]);
        if self.tunnel {
            pairs.push((
                "tunnel".to_string(),
                RestrictedExpression::new_bool(r.tunnel),
            ));
        }
        Ok(pairs)
    }
}

pub(crate) struct EgressAuthz {
    public: (EntityUid, ActionPolicies),
    private: (EntityUid, ActionPolicies),
    decider: ResourceDecider,
    /// Whether the schema's egress context declares `tunnel`; `false` for
    /// a schema written before it (its requests go without it).
    tunnel: bool,
}

impl EgressAuthz {
    /// `None` when the schema lacks either action or `Host` (a schema written
    /// before egress): every egress is then denied with the reason.
    pub(crate) fn new(
        bundle: &PolicyBundle,
        entities: &Entities,
    ) -> Result<Option<Self>, EntityError> {
        let find = |id: &str| crate::resource::find_action(bundle, id);
        let (Some(public), Some(private)) = (find(EGRESS), find(EGRESS_PRIVATE)) else {
            return Ok(None);
        };
        let mut authz = EgressAuthz {
            public: (
                public.clone(),
                ActionPolicies::for_action(&bundle.policies, entities, &public),
            ),
            private: (
                private.clone(),
                ActionPolicies::for_action(&bundle.policies, entities, &private),
            ),
            decider: ResourceDecider::new("Host")?,
            tunnel: true,
        };
        // The request shape is fixed: prove once that the schema accepts it.
        let ip = SourceIp::new(IpAddr::from([127, 0, 0, 1]));
        for (address, caller) in [[127, 0, 0, 1], [192, 0, 2, 1]]
            .into_iter()
            .flat_map(|a| CallerFacts::shape_samples().map(|c| (a, c)))
        {
            let sample = EgressRequest {
                agent: "shape-check",
                route: "shape-check",
                server: "shape-check",
                session: "shape-check",
                method: "CONNECT",
                path: "",
                tunnel: true,
                content: Content::NOT_SCANNED,
                host: "shape-check",
                port: 443,
                address: IpAddr::from(address),
                source_ip: &ip,
                time: RequestTime::from_epoch(0),
                caller: &caller,
            };
            // A schema written before `context.tunnel` gets requests
            // without it (decided on the first sample).
            if authz.tunnel && authz.request(&sample, Some(&bundle.schema)).is_err() {
                authz.tunnel = false;
            }
            authz
                .request(&sample, Some(&bundle.schema))
                .map_err(|e| crate::decide::schema_refuses_shape(EGRESS, e))?;
        }
        Ok(Some(authz))
    }

    fn action(&self, r: &EgressRequest<'_>) -> &(EntityUid, ActionPolicies) {
        match AddressClass::of(r.address) {
            AddressClass::Public => &self.public,
            _ => &self.private,
        }
    }

    fn ask<'r, 'a>(&self, r: &'r EgressRequest<'a>) -> Ask<'r, 'a> {
        Ask {
            r,
            tunnel: self.tunnel,
        }
    }

    fn request(
        &self,
        r: &EgressRequest<'_>,
        schema: Option<&cedar_policy::Schema>,
    ) -> Result<Request, String> {
        self.decider
            .request(&self.action(r).0, None, &self.ask(r), schema)
    }

    /// Decides `r` as `user` (an entity the caller added to `entities`)
    /// would: every policy of the action is evaluated (no slice).
    pub(crate) fn decide_as_user(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &EgressRequest<'_>,
        user: EntityUid,
    ) -> Decision {
        let (action, candidates) = self.action(r);
        self.decider
            .decide(cedar, entities, action, Some(user), &self.ask(r), |_| {
                candidates.all()
            })
    }

    /// The Cedar request `r` is decided as, for `policy explain`.
    pub(crate) fn explain_request(&self, r: &EgressRequest<'_>) -> Result<Request, String> {
        self.request(r, None)
    }

    pub(crate) fn decide(
        &self,
        cedar: &cedar_policy::Authorizer,
        entities: &Entities,
        r: &EgressRequest<'_>,
    ) -> Decision {
        let (action, candidates) = self.action(r);
        self.decider
            .decide(cedar, entities, action, None, &self.ask(r), |req| {
                candidates.for_request(entities, req)
            })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::PathBuf;
    use std::sync::Arc;

    use portcullis_core::Classification;

    use super::AddressClass;
    use crate::{
        AgentEntity, Authorizer, CallerFacts, Content, DEFAULT_SCHEMA, EgressRequest, PolicyBundle,
        PolicySources, RequestTime, RouteEntity, SourceIp,
    };

    fn authorizer(schema: &str, policies: &str) -> Authorizer {
        let sources = PolicySources {
            origin: PathBuf::from("/t"),
            schema: schema.to_string(),
            files: vec![("t.cedar".to_string(), policies.to_string())],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        Authorizer::new(
            bundle,
            &[AgentEntity {
                name: "alice".into(),
                roles: vec!["dev".into()],
            }],
            &[RouteEntity {
                name: "fetch".into(),
                classification: Classification::Internal,
                owner: String::new(),
                tags: Vec::new(),
            }],
        )
        .unwrap()
    }

    fn check(authz: &Authorizer, host: &str, port: u16, address: &str, method: &str) -> String {
        check_with(authz, host, port, address, method, &[], None)
    }

    /// [`check`] with the content guard's findings and, for `user`, as the
    /// user the agent acts for.
    fn check_with(
        authz: &Authorizer,
        host: &str,
        port: u16,
        address: &str,
        method: &str,
        findings: &[&str],
        user: Option<(&str, &[String])>,
    ) -> String {
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let tunnel = method == "CONNECT";
        let request = EgressRequest {
            agent: "alice",
            route: "fetch",
            server: "/usr/bin/python3",
            session: "0011",
            method,
            path: if tunnel { "" } else { "/x" },
            tunnel,
            content: if tunnel {
                Content::NOT_SCANNED
            } else {
                Content {
                    scanned: true,
                    injection_score: 0.0,
                    injection_flagged: false,
                    findings,
                }
            },
            host,
            port,
            address: address.parse().unwrap(),
            source_ip: &ip,
            time: RequestTime::from_epoch(0),
            caller: &CallerFacts::mtls(),
        };
        let d = match user {
            None => authz.decide_egress(&request),
            Some((user, groups)) => authz.decide_egress_for_user(&request, user, groups),
        };
        format!(
            "{} {:?}",
            if d.allowed { "allow" } else { "deny" },
            d.policy_ids
        )
    }

    #[test]
    fn tunnels_content_and_the_delegating_user_are_decided() {
        let authz = authorizer(
            DEFAULT_SCHEMA,
            r#"
@id("web") permit(principal in Role::"dev", action == Action::"egress", resource);
@id("no-tunnels") forbid(principal, action == Action::"egress", resource == Host::"paste.example:443")
  when { context.tunnel };
@id("no-pii-out") forbid(principal, action == Action::"egress", resource)
  when { context.content.scanned && context.content.findings.contains("us_ssn") };
@id("users-web") permit(principal in Role::"staff", action == Action::"egress", resource == Host::"api.example:443");
"#,
        );
        let public = "93.184.215.14";
        assert_eq!(
            check(&authz, "paste.example", 443, public, "CONNECT"),
            r#"deny ["no-tunnels"]"#
        );
        assert_eq!(
            check(&authz, "paste.example", 443, public, "POST"),
            r#"allow ["web"]"#
        );
        assert_eq!(
            check_with(
                &authz,
                "paste.example",
                443,
                public,
                "POST",
                &["us_ssn"],
                None
            ),
            r#"deny ["no-pii-out"]"#
        );
        // As the user: only what the user's own permits allow.
        let staff = ["staff".to_string()];
        assert_eq!(
            check_with(
                &authz,
                "api.example",
                443,
                public,
                "CONNECT",
                &[],
                Some(("bob", &staff))
            ),
            r#"allow ["users-web"]"#
        );
        assert_eq!(
            check_with(
                &authz,
                "other.example",
                443,
                public,
                "CONNECT",
                &[],
                Some(("bob", &staff))
            ),
            r#"deny ["default-deny"]"#
        );
    }

    #[test]
    fn private_addresses_need_their_own_permit() {
        let authz = authorizer(
            DEFAULT_SCHEMA,
            r#"
@id("web") permit(principal in Role::"dev", action == Action::"egress", resource)
  when { context.route == "fetch" && context.port == 443 };
@id("intranet") permit(principal, action == Action::"egress_private", resource == Host::"wiki.corp:80")
  when { context.address.isInRange(ip("10.0.0.0/8")) && context.method == "GET" };
"#,
        );
        assert!(authz.supports_egress());
        assert_eq!(
            check(&authz, "example.com", 443, "93.184.215.14", "CONNECT"),
            r#"allow ["web"]"#
        );
        assert_eq!(
            check(&authz, "example.com", 80, "93.184.215.14", "GET"),
            r#"deny ["default-deny"]"#
        );
        // The same name resolving to the metadata address or loopback: the
        // broad `egress` permit does not cover it.
        for addr in [
            "169.254.169.254",
            "127.0.0.1",
            "10.1.2.3",
            "::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(
                check(&authz, "example.com", 443, addr, "CONNECT"),
                r#"deny ["default-deny"]"#,
                "{addr}"
            );
        }
        assert_eq!(
            check(&authz, "wiki.corp", 80, "10.9.9.9", "GET"),
            r#"allow ["intranet"]"#
        );
        assert_eq!(
            check(&authz, "wiki.corp", 80, "10.9.9.9", "POST"),
            r#"deny ["default-deny"]"#
        );
    }

    #[test]
    fn address_classes() {
        for (ip, want) in [
            ("8.8.8.8", "public"),
            ("127.0.0.53", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("169.254.169.254", "metadata"),
            ("169.254.1.1", "link_local"),
            ("0.0.0.0", "other"),
            ("255.255.255.255", "other"),
            ("224.0.0.1", "other"),
            ("2606:4700::1111", "public"),
            ("::1", "loopback"),
            ("fd00:ec2::254", "metadata"),
            ("fd12::1", "private"),
            ("fe80::1", "link_local"),
            ("::", "other"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "other"),
            ("2002:a00:1::", "other"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(AddressClass::of(ip).as_str(), want, "{ip}");
        }
    }

    #[test]
    fn a_schema_without_egress_denies_with_a_reason() {
        let old_schema = DEFAULT_SCHEMA.split("// Egress").next().unwrap();
        let authz = authorizer(
            old_schema,
            r#"permit(principal, action in Action::"read", resource);"#,
        );
        assert!(!authz.supports_egress());
        let got = check(&authz, "example.com", 443, "93.184.215.14", "CONNECT");
        assert_eq!(got, r#"deny ["default-deny"]"#);
    }
}
