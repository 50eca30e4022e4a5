//! `POST /oauth2/register`: RFC 7591 dynamic client registration, for MCP
//! hosts that know no other way to get a client id. Off unless
//! `[identity.authorization] dynamic_registration = true`, and then only for
//! registrations the allow-lists admit (`allowed`): the initial access token
//! (RFC 7591 §3), the `software_id`, the hosts of the redirect URIs.
//!
//! Only public clients of the authorization-code flow are registered: no
//! secret is ever made (`token_endpoint_auth_method` is `none`); PKCE and the
//! user's login protect the grant. Limits: redirect URIs https or loopback
//! http only, no fragment or credentials, at most 5 of at most 512 bytes; a
//! name of at most 100 characters; a body of at most 8 KiB; the hourly cap
//! (per clock hour, one count in the store for every replica of a cluster)
//! and the cap on live clients of the configuration. Unknown metadata is
//! ignored (RFC 7591 §2); metadata asking for what is not offered (a secret,
//! another grant or response type) is refused.

use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use portcullis_audit::Outcome;
use portcullis_core::ErrorCode;
use portcullis_store::OAuthClientRow;
use serde::Deserialize;

use sha2::{Digest, Sha256};

use super::config::RegistrationAllowList;
use super::{AuthorizationServer, SCOPE, configured, random_token};
use crate::body::Recorder;
use crate::oauth::json_response;
use crate::pipeline::decode::DecodedRequest;
use crate::respond::{Denial, ResponseBody};
use crate::state::{ConnectionState, Gateway};

const MAX_BODY: usize = 8 * 1024;
const MAX_REDIRECT_URIS: usize = 5;
const MAX_URI_BYTES: usize = 512;
const MAX_NAME_CHARS: usize = 100;

/// The metadata read from a registration (the rest is ignored).
#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    scope: Option<String>,
    software_id: Option<String>,
}

fn metadata_error(message: impl Into<String>) -> Denial {
    Denial::new(ErrorCode::InvalidClientMetadata, message)
}

/// Whether `uri` may receive codes: https anywhere, or http on a loopback
/// address (RFC 8252 §7.3); absolute, no fragment, no user information.
pub(super) fn redirect_uri_ok(uri: &str) -> bool {
    if uri.len() > MAX_URI_BYTES || uri.contains('#') || uri.chars().any(char::is_whitespace) {
        return false;
    }
    let Ok(parsed) = uri.parse::<http::Uri>() else {
        return false;
    };
    let Some(authority) = parsed.authority() else {
        return false;
    };
    if authority.as_str().contains('@') {
        return false;
    }
    let host = authority.host().trim_matches(['[', ']']);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme_str() {
        Some("https") => !host.is_empty(),
        Some("http") => loopback,
        _ => false,
    }
}

/// The initial access token check (RFC 7591 §3): before the body is read,
/// so an unauthorised caller learns nothing about the metadata rules.
fn token_allowed(allow: &RegistrationAllowList, headers: &http::HeaderMap) -> Result<(), Denial> {
    let Some(expected) = &allow.token_sha256 else {
        return Ok(());
    };
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    // Digests compared: the comparison's timing says nothing of the token.
    match presented {
        Some(token) if Sha256::digest(token.as_bytes())[..] == expected[..] => Ok(()),
        _ => Err(Denial::new(
            ErrorCode::InvalidToken,
            "registration needs the gateway's initial access token: `Authorization: Bearer <token>` (RFC 7591 §3)",
        )),
    }
}

/// Whether the allow-lists admit the registration's software and redirect
/// URIs (the URIs are already known well-formed).
fn allowed(
    allow: &RegistrationAllowList,
    software_id: Option<&str>,
    redirect_uris: &[String],
) -> Result<(), Denial> {
    if !allow.software_ids.is_empty()
        && !software_id.is_some_and(|id| allow.software_ids.iter().any(|a| a == id))
    {
        return Err(metadata_error(
            "this gateway registers only allow-listed software: `software_id` is missing or not accepted",
        ));
    }
    if !allow.redirect_hosts.is_empty()
        && let Some(bad) = redirect_uris.iter().find(|u| {
            let host = redirect_host(u);
            !allow.redirect_hosts.contains(&host)
        })
    {
        return Err(Denial::new(
            ErrorCode::InvalidRedirectUri,
            format!(
                "redirect URI `{}` refused: its host is not one this gateway registers clients for",
                bad.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// The lowercase host of a checked redirect URI (brackets of IPv6 removed).
pub(super) fn redirect_host(uri: &str) -> String {
    uri.parse::<http::Uri>()
        .ok()
        .and_then(|u| {
            u.host()
                .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
        })
        .unwrap_or_default()
}

/// Checks the metadata: the client's redirect URIs and name.
fn check(metadata: Metadata) -> Result<(Vec<String>, String), Denial> {
    if metadata.redirect_uris.is_empty() || metadata.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(Denial::new(
            ErrorCode::InvalidRedirectUri,
            format!("`redirect_uris` must list 1 to {MAX_REDIRECT_URIS} URIs"),
        ));
    }
    if let Some(bad) = metadata.redirect_uris.iter().find(|u| !redirect_uri_ok(u)) {
        return Err(Denial::new(
            ErrorCode::InvalidRedirectUri,
            format!(
                "redirect URI `{}` refused: use https, or http on a loopback address (127.0.0.1, [::1], localhost), without a fragment or credentials, at most {MAX_URI_BYTES} bytes",
                bad.chars().take(80).collect::<String>()
            ),
        ));
    }
    if metadata
        .token_endpoint_auth_method
        .as_deref()
        .is_some_and(|m| m != "none")
    {
        return Err(metadata_error(
            "only public clients are registered: `token_endpoint_auth_method` must be `none` (PKCE protects the code)",
        ));
    }
    if metadata.grant_types.as_ref().is_some_and(|g| {
        g.iter()
            .any(|g| g != "authorization_code" && g != "refresh_token")
    }) {
        return Err(metadata_error(
            "`grant_types` may only be `authorization_code` and `refresh_token`",
        ));
    }
    if metadata
        .response_types
        .as_ref()
        .is_some_and(|r| r.iter().any(|r| r != "code"))
    {
        return Err(metadata_error("`response_types` may only be `code`"));
    }
    if metadata
        .scope
        .as_deref()
        .is_some_and(|s| s.split(' ').any(|s| !s.is_empty() && s != SCOPE))
    {
        return Err(Denial::new(
            ErrorCode::InvalidScope,
            "the only scope offered is `mcp`",
        ));
    }
    let name: String = metadata
        .client_name
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let name = name.trim();
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(metadata_error(format!(
            "`client_name` must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    let name = if name.is_empty() {
        "unnamed client".to_string()
    } else {
        name.to_string()
    };
    Ok((metadata.redirect_uris, name))
}

/// Serves `POST /oauth2/register`.
pub(crate) async fn serve_register(
    gateway: &Gateway,
    conn: &ConnectionState,
    decoded: DecodedRequest,
    now: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    recorder.record().resource = Some("oauth2_register".into());
    let server: &AuthorizationServer = configured(gateway)?;
    if decoded.parts.method != Method::POST {
        return Err(Denial::new(ErrorCode::MethodNotAllowed, "use POST"));
    }
    if !server.config.dynamic_registration {
        return Err(metadata_error(
            "dynamic client registration is off on this gateway (`[identity.authorization] dynamic_registration`)",
        ));
    }
    if !gateway.sink.writable() {
        return Err(Denial::new(
            ErrorCode::AuditUnavailable,
            "the audit log cannot be written; no client is registered unrecorded",
        ));
    }
    let allow = &server.config.registration;
    token_allowed(allow, &decoded.parts.headers)?;
    let too_large = || metadata_error(format!("the registration must be at most {MAX_BODY} bytes"));
    let mut body = Vec::new();
    let mut stream = decoded.body;
    while let Some(frame) = stream.frame().await {
        let frame = frame.map_err(|_| too_large())?;
        if let Some(data) = frame.data_ref() {
            if body.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            body.extend_from_slice(data);
        }
    }
    let metadata: Metadata = serde_json::from_slice(&body)
        .map_err(|_| metadata_error("the registration must be a JSON object of client metadata"))?;
    let software_id = metadata.software_id.clone();
    let (redirect_uris, client_name) = check(metadata)?;
    allowed(allow, software_id.as_deref(), &redirect_uris)?;
    if !server.admit_registration(&gateway.store, now).await? {
        let mut denial = Denial::new(
            ErrorCode::RateLimited,
            "too many client registrations this hour; retry later",
        );
        denial.detail = Some(crate::respond::DenialDetail::RetryAfter(
            (3600 - now.rem_euclid(3600)).max(1) as u64,
        ));
        return Err(denial);
    }
    let client_id = random_token();
    let row = OAuthClientRow {
        client_id: client_id.clone(),
        client_name: client_name.clone(),
        redirect_uris: redirect_uris.clone(),
        created_at: now,
        registered_by: conn.remote.ip().to_string(),
        revoked_at: None,
    };
    let added = gateway
        .store
        .add_oauth_client(&row, i64::from(server.config.max_clients))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot store an OAuth client");
            Denial::new(
                ErrorCode::Unavailable,
                "the client cannot be registered now; retry shortly",
            )
        })?;
    if !added {
        return Err(metadata_error(
            "the gateway holds as many clients as it accepts (`max_clients`); an admin must revoke some",
        ));
    }
    let record = recorder.record();
    record.outcome = Outcome::Allow;
    record.credential = Some(format!(
        "registered client={client_id} name={client_name:?} redirect_uris={}",
        redirect_uris.join(" ")
    ));
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({
            "client_id": client_id,
            "client_id_issued_at": now,
            "client_name": client_name,
            "redirect_uris": redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "scope": SCOPE,
        }),
        "no-store",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris() {
        for ok in [
            "https://app.example.com/cb",
            "http://127.0.0.1:33418/callback",
            "http://[::1]:8080/cb",
            "http://localhost:3000/cb?x=1",
        ] {
            assert!(redirect_uri_ok(ok), "{ok}");
        }
        for bad in [
            "http://app.example.com/cb",
            "https://app.example.com/cb#frag",
            "https://user:pw@app.example.com/cb",
            "cursor://callback",
            "javascript:alert(1)",
            "/relative",
            "https://",
            "http://127.0.0.1.evil.example/cb",
        ] {
            assert!(!redirect_uri_ok(bad), "{bad}");
        }
        assert!(!redirect_uri_ok(&format!(
            "https://a.example/{}",
            "x".repeat(600)
        )));
    }

    #[test]
    fn allow_lists() {
        let allow = RegistrationAllowList {
            redirect_hosts: vec!["127.0.0.1".into(), "::1".into()],
            software_ids: vec!["host-a".into()],
            token_sha256: Some(Sha256::digest(b"initial-access-token").into()),
        };
        let uris = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = uris(&["http://127.0.0.1:5/cb", "http://[::1]:5/cb"]);
        assert!(allowed(&allow, Some("host-a"), &ok).is_ok());
        let code = |r: Result<(), Denial>| r.unwrap_err().code;
        assert_eq!(
            code(allowed(&allow, Some("host-b"), &ok)),
            ErrorCode::InvalidClientMetadata
        );
        assert_eq!(
            code(allowed(&allow, None, &ok)),
            ErrorCode::InvalidClientMetadata
        );
        assert_eq!(
            code(allowed(
                &allow,
                Some("host-a"),
                &uris(&["http://localhost:5/cb"])
            )),
            ErrorCode::InvalidRedirectUri
        );
        assert!(allowed(&RegistrationAllowList::default(), None, &ok).is_ok());
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            code(token_allowed(&allow, &headers)),
            ErrorCode::InvalidToken
        );
        headers.insert("authorization", "Bearer wrong".parse().unwrap());
        assert_eq!(
            code(token_allowed(&allow, &headers)),
            ErrorCode::InvalidToken
        );
        headers.insert(
            "authorization",
            "bearer initial-access-token".parse().unwrap(),
        );
        assert!(token_allowed(&allow, &headers).is_ok());
    }

    #[test]
    fn metadata() {
        let parse = |v: serde_json::Value| check(serde_json::from_value(v).unwrap());
        let (uris, name) = parse(serde_json::json!({
            "redirect_uris": ["http://127.0.0.1:1/cb"],
            "client_name": "Host\u{7}",
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "logo_uri": "ignored",
        }))
        .unwrap();
        assert_eq!((uris.len(), name.as_str()), (1, "Host"));
        for (bad, code) in [
            (serde_json::json!({}), ErrorCode::InvalidRedirectUri),
            (
                serde_json::json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "client_secret_basic"}),
                ErrorCode::InvalidClientMetadata,
            ),
            (
                serde_json::json!({"redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["client_credentials"]}),
                ErrorCode::InvalidClientMetadata,
            ),
            (
                serde_json::json!({"redirect_uris": ["http://127.0.0.1/cb"], "client_name": "x".repeat(101)}),
                ErrorCode::InvalidClientMetadata,
            ),
            (
                serde_json::json!({"redirect_uris": ["http://127.0.0.1/cb"], "scope": "admin"}),
                ErrorCode::InvalidScope,
            ),
        ] {
            assert_eq!(parse(bad.clone()).unwrap_err().code, code, "{bad}");
        }
    }
}
