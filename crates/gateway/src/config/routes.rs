//! `[[routes]]`: what the gateway forwards where. A route's kind (`http`,
//! `mcp`, `llm`), its upstream, its content guard (`[routes.guard]`), its
//! vault credential and its payload capture.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{Classification, is_valid_name};
use serde::{Deserialize, Deserializer};

use super::{from_str, parse_duration};

/// The upstream of the quickstart: a demo service Portcullis runs in-process.
pub const BUILTIN_DEMO_UPSTREAM: &str = "builtin:demo";

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique route name; the Cedar resource is `Route::"<name>"`.
    #[serde(deserialize_with = "route_name")]
    pub name: toml::Spanned<String>,
    /// Protocol adapter: `http` (default), `mcp` or `llm`.
    #[serde(default = "default_kind")]
    pub kind: RouteKind,
    /// Requests whose path is this prefix or below it (segment-wise) take this route.
    #[serde(deserialize_with = "path_prefix")]
    pub path_prefix: toml::Spanned<String>,
    /// `http://…` or `https://…` base URL, `builtin:demo`, or (MCP routes)
    /// `stdio:COMMAND ARGS`.
    #[serde(deserialize_with = "from_str")]
    pub upstream: Upstream,
    /// Sensitivity of the data behind the route.
    #[serde(deserialize_with = "from_str")]
    pub classification: Classification,
    /// `[routes.guard]`: what the content guard does on this route.
    #[serde(default)]
    pub guard: RouteGuard,
    /// An upstream credential from the vault, injected after policy allows
    /// both the route and `use_secret` on the secret.
    #[serde(default)]
    pub credential: Option<Credential>,
    /// Encrypted capture of request and response bodies.
    #[serde(default)]
    pub capture: Option<CaptureConfig>,
    /// Serve this route even while the audit log cannot be written (records are
    /// kept in memory, written later and marked `fail_open`). Default false:
    /// fail closed.
    #[serde(default)]
    pub audit_fail_open: bool,
    /// When the record of an allowed call is made durable: `before_forward`
    /// or `async` (default: `[audit] durability`, else by action and
    /// classification; see `crate::audit_intent`).
    #[serde(default)]
    pub durability: Option<super::Durability>,
    /// `[[routes.models]]`: the models of a `kind = "llm"` route.
    #[serde(default)]
    pub models: Vec<crate::llm::config::RawModel>,
    /// `kind = "llm"`: the environment variable holding the upstream API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `kind = "llm"`: the file holding the upstream API key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// `[routes.budget]`: per-agent limits of a `kind = "llm"` route.
    #[serde(default)]
    pub budget: Option<crate::llm::config::BudgetConfig>,
    /// Who owns the data behind the route (`resource.owner`, default "").
    #[serde(default)]
    pub owner: String,
    /// Free-form labels for policy (`resource.tags.contains("pii")`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Registered datasets the route serves: each request is also decided
    /// as `Action::"read_data"` on `Dataset::"<name>"` (docs/governance.md).
    #[serde(default)]
    pub datasets: Vec<String>,
    /// `[routes.tools.<name>]`: per-tool settings of a `kind = "mcp"` route.
    #[serde(default)]
    pub tools: std::collections::BTreeMap<String, RawTool>,
    /// The sandbox a `stdio:` route's server runs in (`[routes.sandbox]`);
    /// absent: the strict default profile.
    #[serde(default)]
    pub sandbox: Option<portcullis_sandbox::Profile>,
}

/// `[routes.tools.<name>]`: one tool of an MCP route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    /// Registered datasets the tool reads: a `tools/call` of it is also
    /// decided as `Action::"read_data"` on each (besides the route's own).
    #[serde(default)]
    pub datasets: Vec<String>,
}

/// `[routes.guard]`: the content guard's actions on one route. Both default
/// to `off`: scanning buffers request bodies and adds latency, so a route
/// opts in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteGuard {
    /// Prompt-injection scan of request bodies (input channel).
    #[serde(default)]
    pub injection: InjectionAction,
    /// Secrets and PII in request and response bodies.
    #[serde(default)]
    pub dlp: DlpAction,
    /// Forward bodies the guard cannot read (compressed, binary, multipart,
    /// not UTF-8, unparsable or duplicate-key JSON) unscanned, with
    /// `context.content.scanned == false`, on a route that blocks. Off by
    /// default: such a body is refused with `content_unscannable`.
    #[serde(default)]
    pub allow_unscannable: bool,
}

impl RouteGuard {
    /// Whether request bodies must be read and scanned before authorization.
    pub fn scans_requests(&self) -> bool {
        self.injection != InjectionAction::Off || self.dlp != DlpAction::Off
    }

    /// Whether a body the guard cannot read is refused with
    /// `content_unscannable`: on a route that blocks (injection or DLP),
    /// unless it allows unscannable bodies.
    pub fn refuses_unscannable(&self) -> bool {
        !self.allow_unscannable
            && (self.injection == InjectionAction::Block || self.dlp == DlpAction::Block)
    }
}

/// What a flagged prompt injection does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectionAction {
    /// Refuse the request with `content_blocked`.
    Block,
    /// Forward it, log the finding, and let policy decide (`context.content`).
    Alert,
    /// Do not scan.
    #[default]
    Off,
}

/// What a DLP finding does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlpAction {
    /// Replace found values in request and response bodies with typed
    /// placeholders (`[REDACTED_AWS_ACCESS_KEY_1]`); responses are redacted
    /// while they stream.
    Redact,
    /// Refuse a request body with findings (`content_blocked`); redact
    /// responses (a streaming response cannot be refused once it started).
    Block,
    /// Forward unchanged and log the findings (type, position, keyed hash).
    Alert,
    /// Do not scan.
    #[default]
    Off,
}

/// `credential = { secret = "…", … }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    secret: Option<String>,
    secrets: Option<Vec<String>>,
    header: Option<String>,
    format: Option<String>,
    query: Option<String>,
    username: Option<String>,
}

/// Where a route's credential goes in the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// A header: `prefix + value + suffix` (from `format`, e.g. `Bearer {}`).
    Header {
        /// The header name.
        name: http::HeaderName,
        /// Text before the value.
        prefix: String,
        /// Text after the value.
        suffix: String,
    },
    /// A query parameter (any client-sent parameter of that name is removed).
    Query(String),
    /// HTTP basic authentication with this user name; the secret is the password.
    Basic(String),
}

/// Most secrets one route may choose between.
pub const MAX_ROUTE_SECRETS: usize = 16;

/// A validated route credential.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCredential")]
pub struct Credential {
    /// The vault secrets' names (each the Cedar resource `Secret::"<name>"`),
    /// in order: a request gets the first one policy lets its agent use, so
    /// agents sharing a route can have different upstream credentials.
    pub secrets: Vec<String>,
    /// Where it goes.
    pub injection: Injection,
}

/// Headers the gateway sets itself or that describe the connection: a
/// credential may not be injected into them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "x-portcullis-agent",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
    "x-forwarded-client-cert",
];

impl TryFrom<RawCredential> for Credential {
    type Error = String;

    fn try_from(raw: RawCredential) -> Result<Self, String> {
        let secrets = match (raw.secret, raw.secrets) {
            (Some(one), None) => vec![one],
            (None, Some(many)) if !many.is_empty() && many.len() <= MAX_ROUTE_SECRETS => many,
            (None, Some(_)) => {
                return Err(format!("`secrets` needs 1 to {MAX_ROUTE_SECRETS} names"));
            }
            _ => return Err("a credential needs exactly one of `secret` or `secrets`".into()),
        };
        for (i, name) in secrets.iter().enumerate() {
            if !is_valid_name(name) {
                return Err(format!(
                    "invalid secret name `{name}`: use 1-64 characters of a-z, 0-9, `.`, `_` or `-`"
                ));
            }
            if secrets[..i].contains(name) {
                return Err(format!("secret `{name}` is listed twice"));
            }
        }
        let forms = [
            raw.header.is_some(),
            raw.query.is_some(),
            raw.username.is_some(),
        ];
        if forms.iter().filter(|f| **f).count() != 1 {
            return Err(
                "a credential needs exactly one of `header`, `query` or `username` (basic auth)"
                    .into(),
            );
        }
        if raw.format.is_some() && raw.header.is_none() {
            return Err("`format` applies only to the `header` form".into());
        }
        let injection = if let Some(header) = raw.header {
            let name = http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("invalid header name `{header}`"))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(format!(
                    "header `{header}` is set by the gateway or the connection and cannot carry a credential"
                ));
            }
            let format = raw.format.unwrap_or_else(|| "{}".into());
            let mut parts = format.split("{}");
            let (prefix, suffix) = match (parts.next(), parts.next(), parts.next()) {
                (Some(p), Some(s), None) => (p.to_string(), s.to_string()),
                _ => {
                    return Err(format!(
                        "format `{format}` must contain `{{}}` exactly once, where the secret goes"
                    ));
                }
            };
            if !format.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                return Err(format!("format `{format}` must be printable ASCII"));
            }
            Injection::Header {
                name,
                prefix,
                suffix,
            }
        } else if let Some(query) = raw.query {
            let ok = !query.is_empty()
                && query.len() <= 64
                && query
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(format!(
                    "invalid query parameter `{query}`: use 1-64 characters of A-Z, a-z, 0-9, `_`, `-`, `.`"
                ));
            }
            Injection::Query(query)
        } else {
            let user = raw.username.unwrap_or_default();
            if user.is_empty() || user.contains(':') || !user.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(format!(
                    "invalid basic-auth username `{user}`: printable ASCII without `:` or spaces"
                ));
            }
            Injection::Basic(user)
        };
        Ok(Credential { secrets, injection })
    }
}

/// `capture = { retention = "30d", max_bytes = 1048576 }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    retention: String,
    max_bytes: Option<u64>,
}

/// Default most bytes kept of each captured body.
pub const DEFAULT_CAPTURE_MAX_BYTES: u64 = 1024 * 1024;
/// Largest `capture.max_bytes`.
pub const MAX_CAPTURE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Validated payload capture settings of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCapture")]
pub struct CaptureConfig {
    /// How long captures are kept before they are shredded.
    pub retention: Duration,
    /// Most bytes kept of each body (digests cover the whole body).
    pub max_bytes: u64,
}

impl TryFrom<RawCapture> for CaptureConfig {
    type Error = String;

    fn try_from(raw: RawCapture) -> Result<Self, String> {
        let retention = parse_duration(&raw.retention)?;
        if retention.is_zero() {
            return Err("capture retention must be greater than 0".into());
        }
        let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_CAPTURE_MAX_BYTES);
        if max_bytes == 0 || max_bytes > MAX_CAPTURE_MAX_BYTES {
            return Err(format!(
                "capture max_bytes must be between 1 and {MAX_CAPTURE_MAX_BYTES}"
            ));
        }
        Ok(CaptureConfig {
            retention,
            max_bytes,
        })
    }
}

/// The protocol adapter of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A plain HTTP reverse proxy.
    #[default]
    Http,
    /// An MCP server (Streamable HTTP, or stdio): every JSON-RPC message is
    /// authorized, `tools/list` is filtered and tool definitions are pinned.
    Mcp,
    /// The OpenAI-compatible API: models, budgets, message inspection.
    Llm,
}

fn default_kind() -> RouteKind {
    RouteKind::default()
}

/// Where a route forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A base URL: scheme, authority and an optional base path (no query).
    Url {
        /// `http` or `https`.
        scheme: http::uri::Scheme,
        /// Host and port.
        authority: http::uri::Authority,
        /// Base path without a trailing slash (`""` for the root).
        base_path: String,
    },
    /// The in-process demo upstream.
    BuiltinDemo,
    /// An MCP server the gateway launches itself, one process per session,
    /// speaking JSON-RPC over its stdin and stdout (`kind = "mcp"` only).
    Stdio {
        /// The program (looked up in `PATH`).
        program: String,
        /// Its arguments, split on whitespace (no shell: no quoting, no expansion).
        args: Vec<String>,
    },
}

/// The prefix of an upstream the gateway launches: `stdio:COMMAND ARGS`.
pub const STDIO_UPSTREAM_PREFIX: &str = "stdio:";

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == BUILTIN_DEMO_UPSTREAM {
            return Ok(Upstream::BuiltinDemo);
        }
        if let Some(command) = s.strip_prefix(STDIO_UPSTREAM_PREFIX) {
            let mut words = command.split_whitespace().map(str::to_string);
            let program = words
                .next()
                .ok_or_else(|| format!("upstream `{s}` names no command"))?;
            return Ok(Upstream::Stdio {
                program,
                args: words.collect(),
            });
        }
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("invalid upstream URL `{s}`: {e}"))?;
        let scheme = uri
            .scheme()
            .filter(|s| **s == http::uri::Scheme::HTTP || **s == http::uri::Scheme::HTTPS)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "upstream `{s}` must be an http:// or https:// URL, `{BUILTIN_DEMO_UPSTREAM}`, or `{STDIO_UPSTREAM_PREFIX}COMMAND ARGS` (MCP routes)"
                )
            })?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("upstream `{s}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "upstream `{s}` must not carry credentials in the URL"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("upstream `{s}` must not have a query string"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Upstream::Url {
            scheme,
            authority,
            base_path,
        })
    }
}

fn route_name<'de, D: Deserializer<'de>>(d: D) -> Result<toml::Spanned<String>, D::Error> {
    let s = toml::Spanned::<String>::deserialize(d)?;
    if !is_valid_name(s.get_ref()) {
        return Err(serde::de::Error::custom(format!(
            "invalid route name `{}`: use 1-64 characters of a-z, 0-9, `.`, `_` or `-`",
            s.get_ref()
        )));
    }
    Ok(s)
}

fn path_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<toml::Spanned<String>, D::Error> {
    let s = toml::Spanned::<String>::deserialize(d)?;
    let p = s.get_ref();
    // Canonical, and of unreserved characters only: then a canonical request
    // path matches the prefix exactly when its percent-decoding does
    // (target.rs).
    let ok = crate::target::is_route_prefix(p)
        && (p == "/" || !p.ends_with('/'))
        && crate::target::CanonicalTarget::parse(p, None).is_ok_and(|t| t.path == *p);
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "invalid path_prefix `{p}`: must start with `/`, have no trailing `/`, `//`, dot segments or segments ending in `.`, and hold only letters, digits, `-`, `.`, `_`, `~` and `/`"
        )));
    }
    Ok(s)
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique name.
    pub name: String,
    /// Protocol adapter.
    pub kind: RouteKind,
    /// Path prefix (segment-wise match).
    pub path_prefix: String,
    /// Where to forward.
    pub upstream: Upstream,
    /// Data classification.
    pub classification: Classification,
    /// Content guard actions.
    pub guard: RouteGuard,
    /// Upstream credential injected from the vault.
    pub credential: Option<Credential>,
    /// Encrypted payload capture.
    pub capture: Option<CaptureConfig>,
    /// Serve while the audit log cannot be written.
    pub audit_fail_open: bool,
    /// The route's durability, or `[audit] durability`; `None`: by action
    /// and classification (`crate::audit_intent::durability`).
    pub durability: Option<super::Durability>,
    /// Models, API key and budget of a `kind = "llm"` route.
    pub llm: Option<Arc<crate::llm::config::LlmConfig>>,
    /// `resource.owner`.
    pub owner: String,
    /// `resource.tags`.
    pub tags: Vec<String>,
    /// The registered datasets the route serves (`read_data`).
    pub datasets: Vec<String>,
    /// The registered datasets each tool of an MCP route reads
    /// (`[routes.tools.<name>] datasets`), by tool name.
    pub tool_datasets: std::collections::BTreeMap<String, Vec<String>>,
    /// The sandbox profile of a `stdio:` route (the strict default unless
    /// `[routes.sandbox]` loosens it); `None` for every other route.
    pub sandbox: Option<Arc<portcullis_sandbox::Profile>>,
}

/// The LLM settings of each route, in file order (`None` unless `kind =
/// "llm"`), after checking each route's kind against its upstream and keys
/// and that names and path prefixes are unique. Errors name the line.
pub(super) fn validate(
    routes: &[RawRoute],
    text: &str,
    base: &Path,
) -> Result<Vec<Option<Arc<crate::llm::config::LlmConfig>>>, String> {
    let line_of = |span: std::ops::Range<usize>| super::line_of(text, span);
    let mut names = std::collections::HashSet::new();
    let mut prefixes = std::collections::HashSet::new();
    let mut llm = Vec::with_capacity(routes.len());
    for route in routes {
        let line = line_of(route.name.span());
        if let Some(profile) = &route.sandbox {
            if !matches!(route.upstream, Upstream::Stdio { .. }) {
                return Err(format!(
                    "line {line}, route `{}`: `[routes.sandbox]` is for `{STDIO_UPSTREAM_PREFIX}` upstreams, which the gateway launches",
                    route.name.get_ref()
                ));
            }
            profile.check().map_err(|e| {
                format!(
                    "line {line}, route `{}`: `[routes.sandbox]`: {e}",
                    route.name.get_ref()
                )
            })?;
        }
        match route.kind {
            RouteKind::Http | RouteKind::Llm => {
                if matches!(route.upstream, Upstream::Stdio { .. }) {
                    return Err(format!(
                        "line {line}, key `routes.upstream`: route `{}`: `{STDIO_UPSTREAM_PREFIX}` upstreams are for `kind = \"mcp\"` routes",
                        route.name.get_ref()
                    ));
                }
            }
            RouteKind::Mcp => {
                if route.upstream == Upstream::BuiltinDemo {
                    return Err(format!(
                        "line {line}, key `routes.upstream`: route `{}`: an MCP route needs an http(s) MCP server URL, not `{BUILTIN_DEMO_UPSTREAM}`",
                        route.name.get_ref()
                    ));
                }
                // A stdio server gets no HTTP request to carry a credential
                // or to capture.
                if matches!(route.upstream, Upstream::Stdio { .. })
                    && (route.capture.is_some() || route.credential.is_some())
                {
                    return Err(format!(
                        "line {line}, route `{}`: `[routes.capture]` and `[routes.credential]` need an http(s) MCP server, not a `stdio:` one",
                        route.name.get_ref()
                    ));
                }
            }
        }
        if !names.insert(route.name.get_ref().clone()) {
            return Err(format!(
                "line {}, key `routes.name`: duplicate route name `{}`",
                line_of(route.name.span()),
                route.name.get_ref()
            ));
        }
        if !prefixes.insert(route.path_prefix.get_ref().clone()) {
            return Err(format!(
                "line {}, key `routes.path_prefix`: duplicate path_prefix `{}`",
                line_of(route.path_prefix.span()),
                route.path_prefix.get_ref()
            ));
        }
        let at = |what: String| {
            format!(
                "line {}, route `{}`: {what}",
                line_of(route.name.span()),
                route.name.get_ref()
            )
        };
        if !route.tools.is_empty() && route.kind != RouteKind::Mcp {
            return Err(at(
                "`[routes.tools.<name>]` belongs to routes of kind `mcp`".into(),
            ));
        }
        let has_llm_keys = !route.models.is_empty()
            || route.api_key_env.is_some()
            || route.api_key_file.is_some()
            || route.budget.is_some();
        match route.kind {
            RouteKind::Http | RouteKind::Mcp if has_llm_keys => {
                return Err(at("`models`, `api_key_env`, `api_key_file` and `budget` belong to routes of kind `llm`".into()));
            }
            RouteKind::Llm if route.upstream == Upstream::BuiltinDemo => {
                return Err(at(format!(
                    "a route of kind `llm` needs an OpenAI-compatible upstream URL, not `{BUILTIN_DEMO_UPSTREAM}`"
                )));
            }
            _ => {}
        }
        llm.push(if route.kind == RouteKind::Llm {
            Some(Arc::new(
                crate::llm::config::validate(
                    route.models.clone(),
                    route.api_key_env.clone(),
                    route.api_key_file.clone(),
                    route.budget,
                    route.classification,
                    base,
                )
                .map_err(at)?,
            ))
        } else {
            None
        });
    }
    Ok(llm)
}

/// A route checked by `validate`, without its LLM settings (which `parse`
/// sets from what `validate` returned).
pub(super) fn route_config(r: RawRoute) -> RouteConfig {
    RouteConfig {
        // Set by `parse`, which reports what is wrong with it.
        llm: None,
        name: r.name.into_inner(),
        kind: r.kind,
        path_prefix: r.path_prefix.into_inner(),
        classification: r.classification,
        guard: r.guard,
        credential: r.credential,
        capture: r.capture,
        audit_fail_open: r.audit_fail_open,
        durability: r.durability,
        owner: r.owner,
        tags: r.tags,
        datasets: r.datasets,
        tool_datasets: r
            .tools
            .into_iter()
            .filter(|(_, t)| !t.datasets.is_empty())
            .map(|(name, t)| (name, t.datasets))
            .collect(),
        sandbox: match r.upstream {
            Upstream::Stdio { .. } => Some(Arc::new(r.sandbox.unwrap_or_default())),
            _ => None,
        },
        upstream: r.upstream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::check;

    #[test]
    fn invalid_routes() {
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"secret\"\n",
            "unknown classification `secret`",
        );
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"ftp://x\"\nclassification = \"public\"\n",
            "line 4",
        );
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"a/\"\nupstream = \"http://x\"\nclassification = \"public\"\n",
            "invalid path_prefix",
        );
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"public\"\nkind = \"grpc\"\n",
            "unknown variant `grpc`",
        );
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"public\"\n\
             [[routes]]\nname = \"a\"\npath_prefix = \"/b\"\nupstream = \"http://x\"\nclassification = \"public\"\n",
            "line 7, key `routes.name`: duplicate route name `a`",
        );
        for prefix in ["/a!b", "/a;b", "/a:b", "/a.", "/a/./b", "/a%41"] {
            check(
                &format!(
                    "[[routes]]\nname = \"a\"\npath_prefix = \"{prefix}\"\nupstream = \"http://x\"\nclassification = \"public\"\n"
                ),
                "invalid path_prefix",
            );
        }
        check(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://user:pw@x\"\nclassification = \"public\"\n",
            "must not carry credentials",
        );
    }

    #[test]
    fn route_guard() {
        let route = "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"public\"\n";
        check(
            &format!("{route}[routes.guard]\ninjection = \"block\"\ndlp = \"redact\"\n"),
            "routes=a:/a:public:Block/Redact",
        );
        check(
            &format!("{route}[routes.guard]\ndlp = \"alert\"\n"),
            "routes=a:/a:public:Off/Alert",
        );
        check(route, "routes=a:/a:public");
        check(
            &format!("{route}[routes.guard]\ninjection = \"deny\"\n"),
            "unknown variant `deny`",
        );
        check(
            &format!("{route}[routes.guard]\ninjecton = \"block\"\n"),
            "unknown field `injecton`",
        );
    }

    #[test]
    fn credentials_and_capture() {
        let route = |extra: &str| {
            format!(
                "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://x\"\nclassification = \"public\"\n{extra}\n"
            )
        };
        let ok = |extra: &str| {
            Config::parse(&route(extra), Path::new("/c.toml"))
                .unwrap()
                .routes
                .remove(0)
        };
        let r = ok(
            r#"credential = { secret = "openai-key", header = "Authorization", format = "Bearer {}" }"#,
        );
        assert_eq!(
            r.credential.unwrap().injection,
            Injection::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
                suffix: String::new()
            }
        );
        let r = ok(r#"credential = { secrets = ["team-a", "team-b"], query = "key" }"#);
        assert_eq!(r.credential.as_ref().unwrap().secrets, ["team-a", "team-b"]);
        let r = ok(r#"credential = { secret = "maps", query = "key" }"#);
        assert_eq!(
            r.credential.unwrap().injection,
            Injection::Query("key".into())
        );
        let r = ok(r#"credential = { secret = "jira", username = "bot@example.com" }"#);
        assert_eq!(
            r.credential.unwrap().injection,
            Injection::Basic("bot@example.com".into())
        );
        let r = ok(r#"capture = { retention = "7d" }"#);
        assert_eq!(
            r.capture.unwrap(),
            CaptureConfig {
                retention: Duration::from_secs(7 * 86_400),
                max_bytes: DEFAULT_CAPTURE_MAX_BYTES
            }
        );
        for (extra, expect) in [
            (r#"credential = { secret = "k" }"#, "exactly one of"),
            (r#"credential = { header = "x" }"#, "`secret` or `secrets`"),
            (
                r#"credential = { secret = "k", secrets = ["j"], header = "x" }"#,
                "`secret` or `secrets`",
            ),
            (
                r#"credential = { secrets = [], header = "x" }"#,
                "needs 1 to 16",
            ),
            (
                r#"credential = { secrets = ["a", "a"], header = "x" }"#,
                "listed twice",
            ),
            (
                r#"credential = { secret = "k", header = "x", query = "y" }"#,
                "exactly one of",
            ),
            (
                r#"credential = { secret = "K!", header = "x" }"#,
                "invalid secret name",
            ),
            (
                r#"credential = { secret = "k", header = "Host" }"#,
                "cannot carry a credential",
            ),
            (
                r#"credential = { secret = "k", header = "x", format = "Bearer" }"#,
                "exactly once",
            ),
            (
                r#"credential = { secret = "k", header = "x", format = "{}{}" }"#,
                "exactly once",
            ),
            (
                r#"credential = { secret = "k", query = "a b" }"#,
                "invalid query parameter",
            ),
            (
                r#"credential = { secret = "k", query = "a", format = "x{}" }"#,
                "only to the `header`",
            ),
            (
                r#"credential = { secret = "k", username = "a:b" }"#,
                "invalid basic-auth",
            ),
            (
                r#"credential = { secret = "k", header = "x", value = "leak" }"#,
                "unknown field `value`",
            ),
            (r#"capture = { retention = "0d" }"#, "greater than 0"),
            (r#"capture = { retention = "7w" }"#, "invalid duration"),
            (
                r#"capture = { retention = "1d", max_bytes = 0 }"#,
                "max_bytes",
            ),
        ] {
            check(&route(extra), expect);
            check(&route(extra), "line 6");
        }
    }

    #[test]
    fn upstream_urls() {
        let u: Upstream = "https://api.example:8443/v1/".parse().unwrap();
        assert_eq!(
            u,
            Upstream::Url {
                scheme: http::uri::Scheme::HTTPS,
                authority: "api.example:8443".parse().unwrap(),
                base_path: "/v1".into()
            }
        );
        assert_eq!(
            "builtin:demo".parse::<Upstream>(),
            Ok(Upstream::BuiltinDemo)
        );
        assert!("http://x/?q=1".parse::<Upstream>().is_err());
        assert!("/relative".parse::<Upstream>().is_err());
        assert_eq!(
            "stdio:node  server.js --port 0".parse::<Upstream>(),
            Ok(Upstream::Stdio {
                program: "node".into(),
                args: vec!["server.js".into(), "--port".into(), "0".into()]
            })
        );
        assert!("stdio:  ".parse::<Upstream>().is_err());
    }

    #[test]
    fn mcp_routes() {
        let route = |kind: &str, upstream: &str, extra: &str| {
            format!(
                "[[routes]]\nname = \"m\"\nkind = \"{kind}\"\npath_prefix = \"/m\"\nupstream = \"{upstream}\"\nclassification = \"internal\"\n{extra}"
            )
        };
        check(&route("mcp", "http://127.0.0.1:3001/mcp", ""), "ok ");
        check(&route("mcp", "stdio:node server.js", ""), "ok ");
        check(
            &route("http", "stdio:node server.js", ""),
            "line 2, key `routes.upstream`: route `m`: `stdio:` upstreams are for `kind = \"mcp\"` routes",
        );
        check(
            &route("mcp", "builtin:demo", ""),
            "an MCP route needs an http(s) MCP server URL",
        );
        check(
            &route(
                "mcp",
                "http://x/mcp",
                "[routes.guard]\ninjection = \"block\"\ndlp = \"redact\"\n",
            ),
            "m:/m:internal:Block/Redact",
        );
        let capture = "[routes.capture]\nretention = \"1d\"\nmax_bytes = 1024\n";
        let credential = "credential = { secret = \"k\", header = \"Authorization\" }\n";
        for extra in [capture, credential] {
            check(&route("mcp", "http://x/mcp", extra), "ok ");
            check(
                &route("mcp", "stdio:node server.js", extra),
                "need an http(s) MCP server, not a `stdio:` one",
            );
        }
        check(
            &route("llm", "stdio:node server.js", ""),
            "`stdio:` upstreams are for `kind = \"mcp\"` routes",
        );
    }

    #[test]
    fn stdio_routes_get_the_strict_sandbox_unless_they_loosen_it() {
        let route = |upstream: &str, extra: &str| {
            format!(
                "[[routes]]\nname = \"m\"\nkind = \"mcp\"\npath_prefix = \"/m\"\nupstream = \"{upstream}\"\nclassification = \"internal\"\n{extra}"
            )
        };
        let sandbox = |text: &str| {
            Config::parse(text, Path::new("/etc/p/portcullis.toml"))
                .map(|c| c.routes[0].sandbox.as_deref().cloned())
        };
        assert_eq!(
            sandbox(&route("stdio:node server.js", "")).unwrap(),
            Some(portcullis_sandbox::Profile::default())
        );
        assert_eq!(sandbox(&route("http://x/mcp", "")).unwrap(), None);
        let loose = sandbox(&route(
            "stdio:node server.js",
            "[routes.sandbox]\nnetwork = \"host\"\nenv = [\"NODE_OPTIONS\"]\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(loose.network, portcullis_sandbox::Network::Host);
        assert_eq!(loose.env, ["NODE_OPTIONS"]);
        check(
            &route("http://x/mcp", "[routes.sandbox]\nnetwork = \"none\"\n"),
            "line 2, route `m`: `[routes.sandbox]` is for `stdio:` upstreams",
        );
        check(
            &route(
                "stdio:node server.js",
                "[routes.sandbox]\nread = [\"relative/dir\"]\n",
            ),
            "line 2, route `m`: `[routes.sandbox]`: `read` path `relative/dir` must be absolute",
        );
        check(
            &route(
                "stdio:node server.js",
                "[routes.sandbox]\nnetwrok = \"host\"\n",
            ),
            "unknown field `netwrok`",
        );
    }

    #[test]
    fn mcp_tools_carry_their_own_datasets() {
        let route = |kind: &str, upstream: &str, extra: &str| {
            format!(
                "[[routes]]\nname = \"m\"\nkind = \"{kind}\"\npath_prefix = \"/m\"\nupstream = \"{upstream}\"\nclassification = \"internal\"\ndatasets = [\"catalogue\"]\n{extra}"
            )
        };
        let tools = "[routes.tools.export]\ndatasets = [\"claims\", \"notes\"]\n[routes.tools.\"fs.read\"]\ndatasets = [\"files\"]\n[routes.tools.ping]\n";
        let c = Config::parse(
            &route("mcp", "http://x/mcp", tools),
            Path::new("/etc/p/portcullis.toml"),
        )
        .unwrap();
        let got: Vec<(&str, Vec<&str>)> = c.routes[0]
            .tool_datasets
            .iter()
            .map(|(t, d)| (t.as_str(), d.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            got,
            [
                ("export", vec!["claims", "notes"]),
                ("fs.read", vec!["files"])
            ]
        );
        assert_eq!(c.routes[0].datasets, ["catalogue"]);
        check(
            &route("http", "http://x", tools),
            "`[routes.tools.<name>]` belongs to routes of kind `mcp`",
        );
        check(
            &route(
                "mcp",
                "http://x/mcp",
                "[routes.tools.t]\ndataset = [\"x\"]\n",
            ),
            "unknown field `dataset`",
        );
    }
}
