//! Request facts written by hand — for `policy test` cases and `policy
//! explain` — turned into the same requests the gateway builds: an
//! [`AuthzRequest`] for an HTTP method on a route, an [`McpRequest`] for an
//! MCP action, a [`ModelRequest`] for `complete`/`embed` (and `list_models`,
//! which the gateway decides as `complete` with method `GET` per model of
//! the route), a [`SecretRequest`] for `use_secret`, a [`DatasetRequest`]
//! for `read_data`.
//!
//! The JSON/YAML shape mirrors `context` in the schema: `source_ip`, `time`
//! (RFC 3339 text or epoch seconds; hour and weekday follow the time zone),
//! `path`, `content`, `auth`, `delegation`, `posture`, `risk`, and for the
//! actions whose context has them `args` (MCP), `method` and `route`. Every
//! field is optional; unknown fields are refused so a typo cannot silently
//! test something else, and so are fields the action's context does not have.
//!
//! A resource is written as the gateway names it, with or without its entity
//! type: `payroll` or `Route::"payroll"`, `files/read_file` or
//! `Tool::"files/read_file"`, `llm/gpt-4o` or `Model::"llm/gpt-4o"`, `key` or
//! `Secret::"key"`, `claims` or `Dataset::"claims"`.

use std::net::IpAddr;

use portcullis_policy::{
    AuthFacts, AuthMethod, Authorizer, AuthzRequest, CallerFacts, Content, DatasetRequest,
    Decision, Delegation, Explanation, HttpAction, McpAction, McpRequest, ModelAction,
    ModelRequest, Posture, SecretRequest, SourceIp,
};
use serde::Deserialize;

use crate::config::PolicyTimeZone;

/// `context` as written in a test case or `--context`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFacts {
    /// Client address (default `127.0.0.1`).
    pub source_ip: Option<IpAddr>,
    /// When (default: now).
    pub time: Option<TimeFact>,
    /// Request path (default `/`).
    pub path: Option<String>,
    /// What the content guard found (default: not scanned).
    pub content: Option<ContentFact>,
    /// How the caller authenticated (default: mTLS, no MFA).
    pub auth: Option<AuthFact>,
    /// On whose behalf (default: none).
    pub delegation: Option<DelegationFact>,
    /// Workload posture (default: not attested).
    pub posture: Option<PostureFact>,
    /// Risk score 0–1 (default 0).
    pub risk: Option<f32>,
    /// MCP `call_tool` and `get_prompt`: the call's top-level arguments
    /// (`context.args`, in the gateway's canonical form, with the typed
    /// views `context.argn` and `context.argd`).
    pub args: Option<serde_json::Map<String, serde_json::Value>>,
    /// `context.method` of MCP, model and `use_secret` requests (default:
    /// the JSON-RPC method of the MCP action; `POST` for `complete`/`embed`;
    /// `GET` for `list_models`; `GET` for `use_secret`).
    pub method: Option<String>,
    /// `use_secret` and `read_data`: the route the request took
    /// (`context.route`).
    pub route: Option<String>,
    /// `read_data`: the action the call asked for (`context.action`:
    /// `GET`, `call_tool`, `complete`, …; default `GET`).
    pub action: Option<String>,
    /// `read_data`: the tool, prompt, resource or model (`context.target`;
    /// default "").
    pub target: Option<String>,
    /// `read_data`: the purpose the call declared (`context.purpose`;
    /// default "").
    pub purpose: Option<String>,
}

/// A time: RFC 3339 text (`2026-11-24T10:00:00+01:00`) or epoch seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimeFact {
    /// Seconds since the epoch.
    Epoch(i64),
    /// RFC 3339.
    Text(String),
}

/// `context.content`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentFact {
    /// Whether the body was scanned (default true when `content` is given).
    #[serde(default = "yes")]
    pub scanned: bool,
    /// Injection score.
    #[serde(default)]
    pub injection_score: f32,
    /// Whether the score crossed the threshold.
    #[serde(default)]
    pub injection_flagged: bool,
    /// Finding types.
    #[serde(default)]
    pub findings: Vec<String>,
}

fn yes() -> bool {
    true
}

/// `context.auth`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFact {
    /// `mtls`, `token` or `bearer` (default: from `binding`, else `mtls`).
    pub method: Option<String>,
    /// `dpop`, `mtls` or `bearer` (default: from `method`; a `token` is
    /// DPoP-bound unless this says `mtls`).
    pub binding: Option<String>,
    /// Fresh MFA of the human behind the request.
    #[serde(default)]
    pub mfa: bool,
    /// Token age in seconds.
    #[serde(default)]
    pub token_age: i64,
}

impl AuthFact {
    /// The one credential kind `method` and `binding` describe together.
    fn auth_method(&self) -> Result<AuthMethod, String> {
        match (self.method.as_deref(), self.binding.as_deref()) {
            (None | Some("mtls"), None | Some("mtls")) => Ok(AuthMethod::Mtls),
            (Some("token"), None) | (None | Some("token"), Some("dpop")) => {
                Ok(AuthMethod::DpopToken)
            }
            (Some("token"), Some("mtls")) => Ok(AuthMethod::MtlsToken),
            (None | Some("bearer"), Some("bearer")) | (Some("bearer"), None) => {
                Ok(AuthMethod::Bearer)
            }
            (method, binding) => Err(format!(
                "auth.method `{}` with auth.binding `{}`: use method `mtls` (binding `mtls`), `token` (binding `dpop` or `mtls`) or `bearer` (binding `bearer`)",
                method.unwrap_or("mtls"),
                binding.unwrap_or("-")
            )),
        }
    }
}

/// `context.delegation`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationFact {
    /// The user.
    pub user: String,
    /// Chain depth (default 1).
    #[serde(default = "one")]
    pub depth: i64,
    /// The actors.
    #[serde(default)]
    pub chain: Vec<String>,
}

fn one() -> i64 {
    1
}

/// `context.posture`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureFact {
    /// Attested.
    #[serde(default)]
    pub attested: bool,
    /// Digest.
    #[serde(default)]
    pub digest: String,
    /// Matches the pin.
    #[serde(default)]
    pub matches_pin: bool,
}

/// [`RequestFacts`] checked and ready to decide with.
#[derive(Debug, Clone)]
pub struct PreparedFacts {
    source_ip: SourceIp,
    time: portcullis_policy::RequestTime,
    path: String,
    content: Option<ContentFact>,
    caller: CallerFacts,
    args: Option<Vec<portcullis_policy::McpArg>>,
    method: Option<String>,
    route: Option<String>,
    action: Option<String>,
    target: Option<String>,
    purpose: Option<String>,
}

/// Every action policy decides, as `policy explain` and `policy test` name
/// them: the HTTP methods, the MCP actions, the model actions, `list_models`
/// and `use_secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactAction {
    /// An HTTP method on a route.
    Http(HttpAction),
    /// An MCP action on a route's tool, resource or prompt, or on the route.
    Mcp(McpAction),
    /// `complete` or `embed` on a model.
    Model(ModelAction),
    /// `GET /v1/models`: `complete` (method `GET`) on each model of the route.
    ListModels,
    /// `use_secret` on a vault secret.
    UseSecret,
    /// `read_data` on a registered dataset.
    ReadData,
}

/// The action names [`FactAction::parse`] accepts, for error messages.
pub const ACTIONS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, call_tool, list_tools, read_resource, list_resources, get_prompt, list_prompts, mcp_session, notify, reply, open_stream, end_session, complete, embed, list_models, use_secret or read_data";

impl FactAction {
    /// The action named `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(a) = HttpAction::from_method(text) {
            return Ok(FactAction::Http(a));
        }
        if let Some(a) = McpAction::ALL.into_iter().find(|a| a.as_str() == text) {
            return Ok(FactAction::Mcp(a));
        }
        match text {
            "complete" => Ok(FactAction::Model(ModelAction::Complete)),
            "embed" => Ok(FactAction::Model(ModelAction::Embed)),
            "list_models" => Ok(FactAction::ListModels),
            portcullis_policy::USE_SECRET => Ok(FactAction::UseSecret),
            portcullis_policy::READ_DATA => Ok(FactAction::ReadData),
            _ => Err(format!("action `{text}`: use {ACTIONS}")),
        }
    }

    /// The entity type of the resource.
    fn resource_type(self) -> &'static str {
        match self {
            FactAction::Http(_) | FactAction::ListModels => "Route",
            FactAction::Mcp(a) => a.resource_type(),
            FactAction::Model(_) => "Model",
            FactAction::UseSecret => "Secret",
            FactAction::ReadData => "Dataset",
        }
    }
}

/// The JSON-RPC method an MCP action is asked with (`context.method`).
pub fn mcp_method(action: McpAction) -> &'static str {
    match action {
        McpAction::CallTool => "tools/call",
        McpAction::ListTools => "tools/list",
        McpAction::ReadResource => "resources/read",
        McpAction::ListResources => "resources/list",
        McpAction::GetPrompt => "prompts/get",
        McpAction::ListPrompts => "prompts/list",
        McpAction::Session => "initialize",
        McpAction::Notify => "notifications/initialized",
        McpAction::Reply => "",
        McpAction::OpenStream => "GET",
        McpAction::EndSession => "DELETE",
    }
}

/// A request of any action, as the gateway builds it.
#[derive(Debug, Clone, Copy)]
pub enum AnyRequest<'a> {
    /// An HTTP method on a route.
    Http(&'a AuthzRequest<'a>),
    /// An MCP message.
    Mcp(&'a McpRequest<'a>),
    /// A model request (also each model of `list_models`).
    Model(&'a ModelRequest<'a>),
    /// `use_secret`.
    Secret(&'a SecretRequest<'a>),
    /// `read_data`.
    Dataset(&'a DatasetRequest<'a>),
}

impl AnyRequest<'_> {
    /// The decision, exactly as the gateway makes it.
    pub fn decide(&self, authz: &Authorizer) -> Decision {
        match self {
            AnyRequest::Http(r) => authz.decide(r),
            AnyRequest::Mcp(r) => authz.decide_mcp(r),
            AnyRequest::Model(r) => authz.decide_model(r),
            AnyRequest::Secret(r) => authz.decide_secret(r),
            AnyRequest::Dataset(r) => authz.decide_dataset(r),
        }
    }

    /// The decision and every policy's part in it.
    pub fn explain(&self, authz: &Authorizer) -> Explanation {
        match self {
            AnyRequest::Http(r) => authz.explain(r),
            AnyRequest::Mcp(r) => authz.explain_mcp(r),
            AnyRequest::Model(r) => authz.explain_model(r),
            AnyRequest::Secret(r) => authz.explain_secret(r),
            AnyRequest::Dataset(r) => authz.explain_dataset(r),
        }
    }
}

/// What asking an action gives: one answer, or for `list_models` one per
/// model of the route (in configuration order), the model visible when its
/// answer allows.
#[derive(Debug, Clone)]
pub enum Asked<R> {
    /// The answer to the one request.
    One(R),
    /// `list_models`: each model's name and answer.
    PerModel(Vec<(String, R)>),
}

/// Splits `Type::"id"` (the type must be `expected`) or a bare `id`.
fn resource_id<'r>(text: &'r str, expected: &str) -> Result<&'r str, String> {
    let Some((kind, rest)) = text.split_once("::") else {
        return Ok(text);
    };
    let id = rest
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .ok_or_else(|| format!("resource `{text}`: write `{expected}::\"<id>\"` or the bare id"))?;
    if kind != expected {
        return Err(format!(
            "resource `{text}`: this action's resource is a `{expected}`"
        ));
    }
    Ok(id)
}

/// Splits `<route>/<name>` (route names never hold a `/`).
fn route_and_name<'r>(id: &'r str, what: &str) -> Result<(&'r str, &'r str), String> {
    match id.split_once('/') {
        Some((route, name)) if !route.is_empty() && !name.is_empty() => Ok((route, name)),
        _ => Err(format!("resource `{id}`: write `<route>/<{what}>`")),
    }
}

impl RequestFacts {
    /// Checks the facts; `now` is used when no time is given.
    pub fn prepare(&self, zone: &PolicyTimeZone, now: i64) -> Result<PreparedFacts, String> {
        let epoch = match &self.time {
            None => now,
            Some(TimeFact::Epoch(e)) => *e,
            Some(TimeFact::Text(text)) => text
                .parse::<jiff::Timestamp>()
                .map_err(|e| {
                    format!("time `{text}`: {e} (use RFC 3339, e.g. 2026-11-24T10:00:00+01:00)")
                })?
                .as_second(),
        };
        let auth = match &self.auth {
            None => CallerFacts::mtls().auth,
            Some(a) => AuthFacts {
                method: a.auth_method()?,
                mfa: a.mfa,
                token_age_secs: a.token_age,
            },
        };
        let risk = self.risk.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&risk) {
            return Err(format!("risk {risk}: must be between 0 and 1"));
        }
        // The same canonical form and typed views the gateway gives policy.
        let args = self
            .args
            .as_ref()
            .map(|map| {
                portcullis_policy::canonical_arguments(map)
                    .map(|c| c.args)
                    .map_err(|e| format!("context.args: {e}"))
            })
            .transpose()?;
        Ok(PreparedFacts {
            args,
            method: self.method.clone(),
            route: self.route.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            purpose: self.purpose.clone(),
            source_ip: SourceIp::new(self.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]))),
            time: zone.request_time(epoch),
            path: self.path.clone().unwrap_or_else(|| "/".into()),
            content: self.content.clone(),
            caller: CallerFacts {
                auth,
                delegation: self.delegation.as_ref().map(|d| Delegation {
                    user: d.user.clone(),
                    depth: d.depth,
                    chain: d.chain.clone(),
                }),
                posture: self
                    .posture
                    .as_ref()
                    .map(|p| Posture {
                        attested: p.attested,
                        digest: p.digest.clone(),
                        matches_pin: p.matches_pin,
                    })
                    .unwrap_or_default(),
                risk,
            },
        })
    }
}

impl PreparedFacts {
    /// Builds the request `agent` does `action` on `route` and hands it to `f`.
    pub fn with_request<R>(
        &self,
        agent: &str,
        action: HttpAction,
        route: &str,
        f: impl FnOnce(&AuthzRequest<'_>) -> R,
    ) -> R {
        let findings: Vec<&str> = self
            .content
            .iter()
            .flat_map(|c| c.findings.iter().map(String::as_str))
            .collect();
        let content = match &self.content {
            None => Content::NOT_SCANNED,
            Some(c) => Content {
                scanned: c.scanned,
                injection_score: c.injection_score,
                injection_flagged: c.injection_flagged,
                findings: &findings,
            },
        };
        f(&AuthzRequest {
            agent,
            action,
            route,
            path: &self.path,
            source_ip: &self.source_ip,
            time: self.time,
            content,
            caller: &self.caller,
        })
    }
}

impl PreparedFacts {
    /// Builds the request(s) `agent` doing `action` on `resource` makes, as
    /// the gateway would, and hands each to `f`. `authz` knows the routes'
    /// classifications (which MCP targets inherit) and models.
    pub fn ask<R>(
        &self,
        authz: &Authorizer,
        agent: &str,
        action: FactAction,
        resource: &str,
        mut f: impl FnMut(AnyRequest<'_>) -> R,
    ) -> Result<Asked<R>, String> {
        let id = resource_id(resource, action.resource_type())?;
        let takes_args = matches!(
            action,
            FactAction::Mcp(McpAction::CallTool | McpAction::GetPrompt)
        );
        if self.args.is_some() && !takes_args {
            return Err("context.args: only `call_tool` and `get_prompt` have arguments".into());
        }
        if self.route.is_some() && !matches!(action, FactAction::UseSecret | FactAction::ReadData) {
            return Err(
                "context.route: only `use_secret` and `read_data` take it (other actions name their route in the resource)"
                    .into(),
            );
        }
        if action != FactAction::ReadData
            && (self.action.is_some() || self.target.is_some() || self.purpose.is_some())
        {
            return Err(
                "context.action, context.target and context.purpose: only `read_data` takes them"
                    .into(),
            );
        }
        if let (FactAction::Http(a), Some(m)) = (action, &self.method)
            && m != a.as_str()
        {
            return Err(format!(
                "context.method `{m}`: an HTTP request's method is its action"
            ));
        }
        let findings: Vec<&str> = self
            .content
            .iter()
            .flat_map(|c| c.findings.iter().map(String::as_str))
            .collect();
        let content = match &self.content {
            None => Content::NOT_SCANNED,
            Some(c) => Content {
                scanned: c.scanned,
                injection_score: c.injection_score,
                injection_flagged: c.injection_flagged,
                findings: &findings,
            },
        };
        let http_method = |default: HttpAction| -> Result<HttpAction, String> {
            match &self.method {
                None => Ok(default),
                Some(m) => HttpAction::from_method(m)
                    .ok_or_else(|| format!("context.method `{m}`: use an HTTP method")),
            }
        };
        let model_request = |action, route, model, method| ModelRequest {
            agent,
            action,
            route,
            model,
            method,
            path: &self.path,
            source_ip: &self.source_ip,
            time: self.time,
            content,
            caller: &self.caller,
        };
        Ok(match action {
            FactAction::Http(action) => Asked::One(f(AnyRequest::Http(&AuthzRequest {
                agent,
                action,
                route: id,
                path: &self.path,
                source_ip: &self.source_ip,
                time: self.time,
                content,
                caller: &self.caller,
            }))),
            FactAction::Mcp(mcp) => {
                let (route, target) = if action.resource_type() == "Route" {
                    (id, "")
                } else {
                    let what = match mcp {
                        McpAction::CallTool => "tool",
                        McpAction::GetPrompt => "prompt",
                        _ => "uri",
                    };
                    route_and_name(id, what)?
                };
                let classification = authz
                    .route_classification(route)
                    .ok_or_else(|| format!("route `{route}` is not configured"))?;
                let args = self.args.as_deref().unwrap_or_default();
                Asked::One(f(AnyRequest::Mcp(&McpRequest {
                    agent,
                    action: mcp,
                    route,
                    classification,
                    method: self.method.as_deref().unwrap_or(mcp_method(mcp)),
                    revision: "",
                    target,
                    args,
                    path: &self.path,
                    content,
                    source_ip: &self.source_ip,
                    time: self.time,
                    caller: &self.caller,
                })))
            }
            FactAction::Model(model_action) => {
                let (route, model) = route_and_name(id, "model")?;
                let method = http_method(HttpAction::Post)?;
                Asked::One(f(AnyRequest::Model(&model_request(
                    model_action,
                    route,
                    model,
                    method,
                ))))
            }
            FactAction::ListModels => {
                let method = http_method(HttpAction::Get)?;
                let models = authz.route_models(id);
                if models.is_empty() {
                    return Err(format!("route `{id}` serves no models"));
                }
                Asked::PerModel(
                    models
                        .into_iter()
                        .map(|model| {
                            let r = model_request(ModelAction::Complete, id, model, method);
                            (model.to_string(), f(AnyRequest::Model(&r)))
                        })
                        .collect(),
                )
            }
            FactAction::UseSecret => {
                let method = http_method(HttpAction::Get)?;
                Asked::One(f(AnyRequest::Secret(&SecretRequest {
                    agent,
                    secret: id,
                    route: self.route.as_deref().unwrap_or_default(),
                    method,
                    path: &self.path,
                    source_ip: &self.source_ip,
                    time: self.time,
                    content,
                    caller: &self.caller,
                })))
            }
            FactAction::ReadData => {
                let method = http_method(HttpAction::Get)?;
                Asked::One(f(AnyRequest::Dataset(&DatasetRequest {
                    agent,
                    dataset: id,
                    route: self.route.as_deref().unwrap_or_default(),
                    action: self.action.as_deref().unwrap_or(method.as_str()),
                    target: self.target.as_deref().unwrap_or_default(),
                    purpose: self.purpose.as_deref().unwrap_or_default(),
                    method,
                    path: &self.path,
                    source_ip: &self.source_ip,
                    time: self.time,
                    content,
                    caller: &self.caller,
                })))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_method_and_binding() {
        let fact = |method: Option<&str>, binding: Option<&str>| {
            AuthFact {
                method: method.map(str::to_string),
                binding: binding.map(str::to_string),
                mfa: false,
                token_age: 0,
            }
            .auth_method()
        };
        for (method, binding, expect) in [
            (None, None, AuthMethod::Mtls),
            (Some("mtls"), Some("mtls"), AuthMethod::Mtls),
            (Some("token"), None, AuthMethod::DpopToken),
            (None, Some("dpop"), AuthMethod::DpopToken),
            (Some("token"), Some("mtls"), AuthMethod::MtlsToken),
            (Some("bearer"), None, AuthMethod::Bearer),
            (None, Some("bearer"), AuthMethod::Bearer),
        ] {
            assert_eq!(fact(method, binding), Ok(expect), "{method:?} {binding:?}");
        }
        for (method, binding) in [
            (Some("mtls"), Some("dpop")),
            (Some("bearer"), Some("dpop")),
            (Some("token"), Some("bearer")),
            (Some("password"), None),
        ] {
            assert!(fact(method, binding).is_err(), "{method:?} {binding:?}");
        }
    }

    #[test]
    fn actions_and_resource_forms() {
        assert_eq!(
            FactAction::parse("call_tool"),
            Ok(FactAction::Mcp(McpAction::CallTool))
        );
        assert_eq!(
            FactAction::parse("PATCH"),
            Ok(FactAction::Http(HttpAction::Patch))
        );
        assert_eq!(FactAction::parse("list_models"), Ok(FactAction::ListModels));
        assert!(FactAction::parse("get").unwrap_err().contains("use_secret"));
        let tool = FactAction::Mcp(McpAction::CallTool).resource_type();
        assert_eq!(resource_id(r#"Tool::"files/a/b""#, tool), Ok("files/a/b"));
        assert_eq!(resource_id("files/a", tool), Ok("files/a"));
        assert!(resource_id(r#"Model::"llm/x""#, tool).is_err());
        assert!(resource_id(r#"Tool::files"#, tool).is_err());
        // A resource URI keeps its slashes: only the route is split off.
        assert_eq!(
            route_and_name("files/file:///etc/hosts", "uri"),
            Ok(("files", "file:///etc/hosts"))
        );
        assert!(route_and_name("files", "tool").is_err());
        assert!(route_and_name("files/", "tool").is_err());
    }
}
