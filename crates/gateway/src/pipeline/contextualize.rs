//! Contextualize: what is being done to what, when and from where — the route
//! (Cedar resource), the method (Cedar action), the time (in the configured
//! `[policy] timezone`) and the source address. The path is decode's
//! canonical target, so what is routed is what policy sees and what is
//! forwarded.

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_core::ErrorCode;
use portcullis_policy::{HttpAction, RequestTime};

use crate::config::{PolicyTimeZone, RouteConfig};
use crate::pipeline::decode::DecodedRequest;
use crate::respond::Denial;
use crate::route::RouteTable;

/// The facts authorization decides on.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The matched route.
    pub route: Arc<RouteConfig>,
    /// The path below the route prefix (starts with `/`).
    pub rest_path: String,
    /// The full request path, canonical (decode's [`CanonicalTarget`]).
    ///
    /// [`CanonicalTarget`]: crate::target::CanonicalTarget
    pub path: String,
    /// The canonical query, forwarded as it is (plus a query credential).
    pub query: Option<String>,
    /// The action.
    pub action: HttpAction,
    /// The client address.
    pub source_ip: IpAddr,
    /// When.
    pub time: RequestTime,
    /// The purpose the request declared in `Portcullis-Purpose` (HTTP and
    /// LLM routes; "" when none). An MCP message declares its own.
    pub purpose: String,
}

/// Runs the stage.
pub fn run(
    routes: &RouteTable,
    request: &DecodedRequest,
    source_ip: IpAddr,
    now_epoch: i64,
    timezone: &PolicyTimeZone,
) -> Result<RequestContext, Denial> {
    let path = request.target.path.as_str();
    let (route, rest) = routes.lookup(path).ok_or_else(|| {
        Denial::new(
            ErrorCode::RouteNotFound,
            format!("no route matches `{path}`"),
        )
    })?;
    // An upstream that matches paths without regard to case would take this
    // one for a deeper route's: refuse rather than pick.
    if let Some(other) = routes.case_variant(path, route) {
        return Err(Denial::new(
            ErrorCode::BadPath,
            format!(
                "invalid request target: the path differs only in letter case from route prefix `{}`",
                other.path_prefix
            ),
        ));
    }
    let action = HttpAction::from_method(request.parts.method.as_str()).ok_or_else(|| {
        Denial::new(
            ErrorCode::MethodNotAllowed,
            format!("method `{}` is not supported", request.parts.method),
        )
    })?;
    // An MCP server is one endpoint URL: the route's prefix itself maps to
    // the upstream URL as configured, without a trailing slash added.
    let rest = if route.kind == crate::config::RouteKind::Mcp && rest == "/" && !path.ends_with('/')
    {
        ""
    } else {
        rest
    };
    let purpose = request
        .parts
        .extensions
        .get::<crate::purpose::Declared>()
        .map(|d| d.0.clone())
        .unwrap_or_default();
    // One carrier per protocol: on MCP each message declares its own.
    if route.kind == crate::config::RouteKind::Mcp && !purpose.is_empty() {
        return Err(Denial::new(
            ErrorCode::BadRequest,
            format!(
                "MCP messages declare their purpose in `params._meta[\"{}\"]`, not in the Portcullis-Purpose header",
                crate::purpose::MCP_META_KEY
            ),
        ));
    }
    Ok(RequestContext {
        purpose,
        route: route.clone(),
        rest_path: rest.to_string(),
        path: path.to_string(),
        query: request.target.query.clone(),
        action,
        source_ip,
        time: timezone.request_time(now_epoch),
    })
}
