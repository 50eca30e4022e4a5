//! `GET /.well-known/portcullis/whoami` on the data plane: how the gateway
//! sees the caller's credential, after the same authentication as any
//! request (certificate or token, binding, revocation). Useful when a request
//! is refused: a credential that fails here fails everywhere, with the same
//! error; one that passes shows the identity, roles and the facts policy
//! receives (`context.auth`, `delegation`, `posture`). Recorded like any call.

use http::{HeaderValue, Response, StatusCode, header};

use crate::directory::AgentDirectory;
use crate::pipeline::authenticate::Identity;
use crate::respond::{ResponseBody, full};

/// The path.
pub const WHOAMI_PATH: &str = "/.well-known/portcullis/whoami";

/// The answer for an authenticated caller.
pub fn respond(identity: &Identity, directory: &AgentDirectory) -> Response<ResponseBody> {
    let caller = &identity.caller;
    let roles = directory
        .check_agent(&identity.agent)
        .map(|e| e.roles.clone())
        .unwrap_or_default();
    let body = serde_json::json!({
        "agent": identity.agent,
        "spiffe_id": identity.spiffe_id,
        "roles": roles,
        "credential": identity.credential,
        "expires_at": identity.expires_at,
        "auth": {
            "method": caller.auth.method.as_str(),
            "binding": caller.auth.method.binding(),
            "mfa": caller.auth.mfa,
            "token_age": caller.auth.token_age_secs,
        },
        "delegation": caller.delegation.as_ref().map(|d| serde_json::json!({
            "user": d.user, "depth": d.depth, "chain": d.chain,
            "groups": identity.delegated.as_ref().map(|u| u.groups.clone()).unwrap_or_default(),
        })),
        "posture": {
            "attested": caller.posture.attested,
            "digest": caller.posture.digest,
            "matches_pin": caller.posture.matches_pin,
        },
        "risk": caller.risk,
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
