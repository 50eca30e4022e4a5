//! The OAuth 2.0 authorization server on the data plane, for agents that cannot
//! do mTLS:
//!
//! - `POST /oauth2/token`: the client-credentials grant with `private_key_jwt`
//!   client authentication (RFC 7523). The agent signs a short assertion with
//!   its registered Ed25519 key; no shared secret exists. The token is bound to
//!   the DPoP key of the request's `DPoP` proof (RFC 9449), or, without one, to
//!   the agent's client certificate on this connection (RFC 8705). A request
//!   that offers neither gets no token: every token is sender-constrained.
//! - `GET /.well-known/jwks.json`: the gateway's token verification key.
//! - `GET /.well-known/oauth-authorization-server`: metadata (RFC 8414).
//! - `GET /.well-known/oauth-protected-resource/<prefix>`: the RFC 9728
//!   metadata of each `kind = "mcp"` route (the MCP authorization
//!   specification's protected resource), named by the `resource_metadata`
//!   of that route's 401s.
//!
//! - The same endpoint does RFC 8693 token exchange (on-behalf-of): an agent,
//!   authenticated as above, presents a user's token (`subject_token`: from a
//!   configured OIDC issuer, or a delegated token another agent holds) and
//!   gets a token whose `sub` is the user and whose `act` records the chain of
//!   agents, at most `[identity] max_delegation_depth` long. It never outlives
//!   the user's token. Disabled users and revoked subject tokens are refused.
//!
//! These paths need no client certificate. Every call leaves one audit record
//! (resource `oauth2_token`), including refusals, which are answered in RFC
//! 6749 §5.2's shape (`respond::oauth_error_response`).
//!
//! What OAuth libraries send by default is accepted: assertions and DPoP
//! proofs signed `EdDSA`, `Ed25519` or `ES256` (with a registered Ed25519 or
//! P-256 key), `aud` as a string or an array, assertions living up to an hour
//! (their `jti` is kept until they expire), and an `Authorization: Basic`
//! header naming the client with an empty secret. DPoP nonces (RFC 9449 §8)
//! are handed out on every DPoP answer and checked when a proof carries one
//! (required with `[identity] require_dpop_nonce`).

use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use portcullis_audit::Outcome;
use portcullis_core::{AgentName, ErrorCode};
use portcullis_identity::{
    ASSERTION_TYPE, Actor, Confirmation, DPOP_WINDOW, DelegatedUser, PeerCertificate, PublicJwk,
    SpiffeId, TokenError, assertion_client, verify_assertion, verify_dpop_proof,
};
use serde::Deserialize;

use crate::attempts::{AttemptKey, Throttled};
use crate::body::Recorder;
use crate::config::{RouteConfig, RouteKind};
use crate::directory::{AgentDirectory, DirectoryRefusal};
use crate::pipeline::decode::DecodedRequest;
use crate::respond::{Denial, ResponseBody, full};
use crate::route::RouteTable;
use crate::state::{ConnectionState, Gateway};
use crate::tokens::{ClaimRefusal, TokenService, peer_x5t};
use portcullis_store::SingleUseKind;

const TOKEN_PATH: &str = "/oauth2/token";
const JWKS_PATH: &str = "/.well-known/jwks.json";
const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// A token request is a few assertions long; anything bigger is not one.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// Where the RFC 9728 metadata of each `kind = "mcp"` route is published:
/// this, then the route's prefix (RFC 9728 §3.1).
const RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Whether `path` is served here rather than routed.
pub fn is_oauth_path(path: &str) -> bool {
    matches!(
        path,
        TOKEN_PATH
            | JWKS_PATH
            | METADATA_PATH
            | crate::authorization::AUTHORIZE_PATH
            | crate::authorization::CALLBACK_PATH
            | crate::authorization::REGISTER_PATH
    ) || path
        .strip_prefix(RESOURCE_METADATA_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The MCP route `path` falls under, if any: the protected resource of the
/// MCP authorization specification.
fn mcp_route<'a>(routes: &'a RouteTable, path: &str) -> Option<&'a RouteConfig> {
    routes
        .lookup(path)
        .map(|(route, _)| route.as_ref())
        .filter(|route| route.kind == RouteKind::Mcp)
}

/// The RFC 9728 metadata URL of the MCP route that `path` falls under, for
/// the `resource_metadata` of its 401s (MCP authorization: clients discover
/// the authorization server from it). `None` off MCP routes.
pub fn resource_metadata_url(gateway: &Gateway, path: &str) -> Option<String> {
    let snapshot = gateway.snapshot.load();
    mcp_route(&snapshot.routing.routes, path).map(|route| {
        format!(
            "{}{RESOURCE_METADATA_PATH}{}",
            gateway.tokens.issuer_url(),
            route.path_prefix
        )
    })
}

/// The RFC 9728 protected-resource metadata of the MCP route whose prefix is
/// exactly `resource_path`: its URL is the resource (tokens name it in
/// `aud`), the gateway is its authorization server, and tokens are sent in
/// the `Authorization` header, bound by DPoP or a client certificate.
fn resource_metadata(gateway: &Gateway, resource_path: &str) -> Option<serde_json::Value> {
    let snapshot = gateway.snapshot.load();
    let route = mcp_route(&snapshot.routing.routes, resource_path)
        .filter(|route| route.path_prefix == resource_path)?;
    let issuer = gateway.tokens.issuer_url();
    Some(serde_json::json!({
        "resource": format!("{issuer}{}", route.path_prefix),
        "resource_name": route.name,
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": portcullis_identity::CLIENT_SIGNING_ALGS,
        "tls_client_certificate_bound_access_tokens": true,
        "scopes_supported": [crate::authorization::SCOPE],
    }))
}

pub(crate) fn json_response(
    status: StatusCode,
    value: &serde_json::Value,
    cache: &'static str,
) -> Response<ResponseBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// Serves one of the OAuth paths.
pub async fn serve(
    gateway: &Gateway,
    conn: &ConnectionState,
    directory: &AgentDirectory,
    decoded: DecodedRequest,
    now: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    let tokens = &gateway.tokens;
    let path = decoded.parts.uri.path().to_string();
    recorder.record().resource = Some("oauth2_token".into());
    let get_only = |method: &Method| {
        if method == Method::GET || method == Method::HEAD {
            Ok(())
        } else {
            Err(Denial::new(ErrorCode::MethodNotAllowed, "use GET"))
        }
    };
    match path.as_str() {
        JWKS_PATH => {
            get_only(&decoded.parts.method)?;
            recorder.record().outcome = Outcome::Allow;
            Ok(json_response(
                StatusCode::OK,
                &tokens.issuer.jwks(),
                "public, max-age=300",
            ))
        }
        METADATA_PATH => {
            get_only(&decoded.parts.method)?;
            recorder.record().outcome = Outcome::Allow;
            Ok(json_response(
                StatusCode::OK,
                &metadata(tokens, gateway.authorization.as_deref()),
                "public, max-age=300",
            ))
        }
        crate::authorization::AUTHORIZE_PATH => {
            crate::authorization::serve_authorize(gateway, conn, decoded, now, recorder).await
        }
        crate::authorization::CALLBACK_PATH => {
            crate::authorization::serve_callback(gateway, decoded, now, recorder).await
        }
        crate::authorization::REGISTER_PATH => {
            crate::authorization::serve_register(gateway, conn, decoded, now, recorder).await
        }
        _ if path != TOKEN_PATH => {
            get_only(&decoded.parts.method)?;
            let resource = path
                .strip_prefix(RESOURCE_METADATA_PATH)
                .unwrap_or_default();
            let metadata = resource_metadata(gateway, resource).ok_or_else(|| {
                Denial::new(
                    ErrorCode::RouteNotFound,
                    "no MCP route is a protected resource at this path",
                )
            })?;
            recorder.record().outcome = Outcome::Allow;
            Ok(json_response(
                StatusCode::OK,
                &metadata,
                "public, max-age=300",
            ))
        }
        _ => {
            if decoded.parts.method != Method::POST {
                return Err(Denial::new(ErrorCode::MethodNotAllowed, "use POST"));
            }
            // Fail closed, as routes do: no credential is issued unrecorded.
            if !gateway.sink.writable() {
                return Err(Denial::new(
                    ErrorCode::AuditUnavailable,
                    "the audit log cannot be written; no token is issued unrecorded",
                ));
            }
            token(gateway, conn, directory, decoded, now, recorder).await
        }
    }
}

/// The RFC 8414 metadata: only what this endpoint really does. Without
/// `[identity.authorization]` there is no authorization endpoint, so no
/// response type is supported (the member is required, and empty); with it,
/// the code flow with PKCE S256 for public clients, and registration when
/// it is open. The one scope is `mcp` (policy decides permissions).
fn metadata(
    tokens: &TokenService,
    authorization: Option<&crate::authorization::AuthorizationServer>,
) -> serde_json::Value {
    let algs = portcullis_identity::CLIENT_SIGNING_ALGS;
    let issuer = tokens.issuer_url();
    let mut metadata = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": tokens.token_url(),
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "response_types_supported": [],
        "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "dpop_signing_alg_values_supported": algs,
        "tls_client_certificate_bound_access_tokens": true,
    });
    if let Some(server) = authorization {
        metadata["authorization_endpoint"] =
            format!("{issuer}{}", crate::authorization::AUTHORIZE_PATH).into();
        metadata["response_types_supported"] = serde_json::json!(["code"]);
        metadata["response_modes_supported"] = serde_json::json!(["query"]);
        metadata["grant_types_supported"] = serde_json::json!([
            "authorization_code",
            "refresh_token",
            "client_credentials",
            TOKEN_EXCHANGE
        ]);
        metadata["token_endpoint_auth_methods_supported"] =
            serde_json::json!(["none", "private_key_jwt"]);
        metadata["code_challenge_methods_supported"] = serde_json::json!(["S256"]);
        metadata["scopes_supported"] = serde_json::json!([crate::authorization::SCOPE]);
        metadata["authorization_response_iss_parameter_supported"] = true.into();
        if server.config.dynamic_registration {
            metadata["registration_endpoint"] =
                format!("{issuer}{}", crate::authorization::REGISTER_PATH).into();
        }
        // The MCP authorization specification's discovery of Client ID
        // Metadata Documents: only when some host is allow-listed.
        if server.client_metadata_supported() {
            metadata["client_id_metadata_document_supported"] = true.into();
        }
    }
    metadata
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    /// A workload posture statement (JWT from `[identity.posture_attestor]`).
    posture: Option<String>,
}

/// RFC 8693's grant type.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Subject token types accepted (all are JWTs here).
const SUBJECT_TOKEN_TYPES: [&str; 3] = [
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:access_token",
    "urn:ietf:params:oauth:token-type:id_token",
];

/// Who a token exchange acts for, and the chain it extends.
struct Subject {
    user: DelegatedUser,
    earlier_actor: Option<Actor>,
    not_after: i64,
}

/// Verifies a token exchange's subject token.
async fn subject_of(
    tokens: &TokenService,
    form: &TokenRequest,
    agent_spiffe: &str,
    now: i64,
) -> Result<Subject, Denial> {
    let grant = |m: String| Denial::new(ErrorCode::InvalidGrant, m);
    if !form
        .subject_token_type
        .as_deref()
        .is_some_and(|t| SUBJECT_TOKEN_TYPES.contains(&t))
    {
        return Err(Denial::new(
            ErrorCode::BadRequest,
            "token exchange needs `subject_token` and a `subject_token_type` of `urn:ietf:params:oauth:token-type:jwt`, `access_token` or `id_token`",
        ));
    }
    let token = form.subject_token.as_deref().unwrap_or_default();
    let subject = if tokens.issuer.names_own_key(token) {
        // A delegated token another agent holds: extend its chain.
        let claims = tokens
            .issuer
            .verify(token, now)
            .map_err(|e| grant(format!("subject token refused: {e}")))?;
        if tokens.revocations.token_revoked(&claims.jti) {
            return Err(grant("subject token refused: it was revoked".into()));
        }
        let (Some(user), Some(actor)) = (claims.delegated_user(), claims.act.clone()) else {
            return Err(grant(
                "subject token refused: an agent's own token does not stand for a user".into(),
            ));
        };
        if actor.chain().contains(&agent_spiffe) {
            return Err(grant(
                "delegation refused: the agent is already in the chain".into(),
            ));
        }
        Subject {
            user,
            earlier_actor: Some(actor),
            not_after: claims.exp,
        }
    } else {
        if tokens.oidc.is_empty() {
            return Err(grant(
                "subject token refused: no OIDC issuer is configured (`[[identity.oidc]]`)".into(),
            ));
        }
        let user = tokens
            .oidc
            .verify(token, now)
            .await
            .map_err(|e| grant(format!("subject token refused: {e}")))?;
        Subject {
            not_after: user.exp,
            user: DelegatedUser {
                sub: user.sub,
                iss: user.iss,
                groups: user.groups,
                mfa: user.mfa,
            },
            earlier_actor: None,
        }
    };
    if tokens.revocations.user_disabled(&subject.user.sub) {
        return Err(grant(format!(
            "delegation refused: user `{}` is disabled",
            subject.user.sub
        )));
    }
    let depth = subject
        .earlier_actor
        .as_ref()
        .map_or(0, |a| a.chain().len())
        + 1;
    if depth > tokens.max_delegation_depth as usize {
        return Err(grant(format!(
            "delegation refused: the chain would be {depth} agents long, more than `max_delegation_depth` ({})",
            tokens.max_delegation_depth
        )));
    }
    Ok(subject)
}

fn client(code: ErrorCode, message: impl Into<String>) -> Denial {
    Denial::new(code, message)
}

/// The `kind` of client-assertion failures in the attempt throttle and metrics.
const ATTEMPT_KIND: &str = "client_assertion";

/// The answer to an attempt the throttle refused unchecked.
fn throttled(gateway: &Gateway, t: Throttled) -> Denial {
    gateway.metrics.auth_throttled(ATTEMPT_KIND);
    let mut denial = client(
        ErrorCode::TooManyAttempts,
        if t.locked {
            "too many failed client assertions: locked out; try again later"
        } else {
            "too many failed client assertions: back off before the next attempt"
        },
    );
    denial.detail = Some(crate::respond::DenialDetail::RetryAfter(t.retry_after));
    denial
}

/// Counts a failed client authentication; a lockout it begins raises an alert.
fn assertion_failed(
    gateway: &Gateway,
    keys: &[AttemptKey<'_>],
    claimed: &str,
    conn: &ConnectionState,
) {
    let failure = gateway.attempts.failure(ATTEMPT_KIND, keys);
    gateway
        .metrics
        .auth_failure(ATTEMPT_KIND, failure.locked_now);
    if failure.locked_now {
        let who = if claimed.is_empty() {
            "(unknown client)"
        } else {
            claimed
        };
        tracing::warn!(client = who, source = %conn.remote.ip(), "token endpoint: client locked out after too many failed assertions");
        gateway.raise_lockout_alert(ATTEMPT_KIND, who, conn.remote.ip());
    }
}

/// Who the client is, by its assertion: the steps whose failures the attempt
/// throttle counts.
#[allow(clippy::too_many_arguments)]
fn authenticate_client(
    tokens: &TokenService,
    conn: &ConnectionState,
    directory: &AgentDirectory,
    form: &TokenRequest,
    assertion: &str,
    claimed: &str,
    now: i64,
    recorder: &mut Recorder,
) -> Result<ClientAuthenticated, Denial> {
    if form.client_id.as_deref().is_some_and(|c| c != claimed) {
        return Err(client(
            ErrorCode::InvalidClient,
            "`client_id` does not match the assertion's `iss`",
        ));
    }
    let agent = agent_of(claimed, &tokens.trust_domain)
        .ok_or_else(|| client(ErrorCode::InvalidClient, "unknown client"))?;
    let entry = directory.check_agent(agent.as_str()).map_err(|r| match r {
        DirectoryRefusal::AgentRevoked => {
            client(ErrorCode::AgentRevoked, "the agent has been revoked")
        }
        _ => client(ErrorCode::InvalidClient, "unknown client"),
    })?;
    let spiffe_id = SpiffeId::for_agent(&tokens.trust_domain, &agent).to_string();
    if let Some(pin) = &entry.pin
        && !pin.allows(conn.remote.ip())
    {
        return Err(client(
            ErrorCode::InvalidClient,
            format!(
                "token requests for this agent must come from its pinned networks, not {}",
                conn.remote.ip()
            ),
        ));
    }
    recorder.record().principal = Some(agent.to_string());
    // The key the header names, or else each registered key in turn (an
    // agent has a few; libraries often send no `kid`). A key of another type
    // than the algorithm fails without a signature check.
    let candidates: Vec<&PublicJwk> = match portcullis_identity::assertion_kid(assertion) {
        Some(kid) => entry.keys.get(&kid).into_iter().collect(),
        None => entry.keys.values().collect(),
    };
    if candidates.is_empty() {
        return Err(client(
            ErrorCode::InvalidClient,
            "no registered signing key matches the assertion (register one with `portcullis agent create` or POST /admin/v1/agents/{name}/keys)",
        ));
    }
    let audiences = [tokens.token_url(), tokens.issuer_url()];
    let mut refusal = TokenError::Algorithm;
    let mut verified = None;
    for key in candidates {
        match verify_assertion(assertion, key, claimed, &audiences, now) {
            Ok(claims) => {
                verified = Some((key, claims));
                break;
            }
            // The refusal of a key that fits the algorithm says the most.
            Err(TokenError::Algorithm) => {}
            Err(e) => refusal = e,
        }
    }
    let (key, claims) = verified.ok_or_else(|| {
        client(
            ErrorCode::InvalidClient,
            format!("client assertion refused: {refusal}"),
        )
    })?;
    Ok(ClientAuthenticated {
        thumbprint: key.thumbprint().to_string(),
        agent,
        spiffe_id,
        claims,
    })
}

/// The `Authorization: Basic` some OAuth libraries send by default with any
/// client authentication (requests-oauthlib: the `client_id` and an empty
/// secret). It carries no secret here, so it is accepted only when it names
/// the assertion's client with an empty password; anything else would be a
/// second authentication method (RFC 6749 §2.3) and is refused.
fn basic_client(headers: &http::HeaderMap, claimed: &str) -> Result<(), Denial> {
    use base64::Engine;
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(());
    };
    let refused = || {
        client(
            ErrorCode::InvalidClient,
            "authenticate with `private_key_jwt` only: an `Authorization` header may only be `Basic` with the client's id and an empty secret",
        )
    };
    let credentials = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(refused)?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded.
    let (id, secret) = credentials.split_once(':').ok_or_else(refused)?;
    let id = form_decoded(id).ok_or_else(refused)?;
    if id != claimed || !secret.is_empty() {
        return Err(refused());
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn form_decoded(value: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={value}")).ok()?;
    pairs.into_iter().next().map(|(_, v)| v)
}

/// A client whose assertion verified.
struct ClientAuthenticated {
    agent: AgentName,
    spiffe_id: String,
    claims: portcullis_identity::AssertionClaims,
    /// The thumbprint of the key that signed the assertion.
    thumbprint: String,
}

/// `client_id` (agent name or SPIFFE ID) → agent name.
fn agent_of(client_id: &str, trust_domain: &str) -> Option<AgentName> {
    if client_id.starts_with("spiffe://") {
        SpiffeId::parse_agent(client_id, trust_domain).map(|id| id.agent().clone())
    } else {
        AgentName::parse(client_id).ok()
    }
}

async fn token(
    gateway: &Gateway,
    conn: &ConnectionState,
    directory: &AgentDirectory,
    decoded: DecodedRequest,
    now: i64,
    recorder: &mut Recorder,
) -> Result<Response<ResponseBody>, Denial> {
    let proof_header = dpop_header(&decoded.parts.headers)?;
    let body = read_form(decoded.body, &decoded.parts.headers).await?;
    // The grants of the authorization-code flow (MCP authorization) are
    // public clients' and authenticate by code or refresh token.
    if let Ok(grant) = serde_urlencoded::from_bytes::<GrantType>(&body)
        && matches!(
            grant.grant_type.as_deref(),
            Some("authorization_code" | "refresh_token")
        )
    {
        return crate::authorization::token(
            gateway,
            directory,
            proof_header.as_deref(),
            &body,
            now,
            recorder,
        )
        .await;
    }
    let form: TokenRequest = serde_urlencoded::from_bytes(&body).map_err(|_| {
        client(
            ErrorCode::BadRequest,
            "the token request is not a valid form",
        )
    })?;
    let exchange = match form.grant_type.as_deref() {
        Some("client_credentials") => false,
        Some(TOKEN_EXCHANGE) => true,
        _ => {
            return Err(client(
                ErrorCode::UnsupportedGrantType,
                format!(
                    "`grant_type` must be `client_credentials`, `{TOKEN_EXCHANGE}`, `authorization_code` or `refresh_token`"
                ),
            ));
        }
    };
    if form.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
        return Err(client(
            ErrorCode::InvalidClient,
            format!(
                "client authentication must be `private_key_jwt`: `client_assertion_type={ASSERTION_TYPE}` and a `client_assertion`"
            ),
        ));
    }
    let tokens = &gateway.tokens;
    let analytics = gateway.analytics.as_deref();
    let assertion = form.client_assertion.as_deref().unwrap_or_default();
    // Client authentication under brute force: failures are throttled per
    // agent and per source (see `attempts`); a throttled attempt is not checked.
    let source = AttemptKey::Source(conn.remote.ip());
    if let Err(t) = gateway.attempts.check(ATTEMPT_KIND, &[source]) {
        return Err(throttled(gateway, t));
    }
    let claimed = match assertion_client(assertion) {
        Ok(claimed) => claimed,
        Err(e) => {
            assertion_failed(gateway, &[source], "", conn);
            return Err(client(
                ErrorCode::InvalidClient,
                format!("client assertion refused: {e}"),
            ));
        }
    };
    // One key per agent, however the assertion spells it (name or SPIFFE ID).
    let principal =
        agent_of(&claimed, &tokens.trust_domain).map_or_else(|| claimed.clone(), |a| a.to_string());
    let keys = [AttemptKey::Principal(&principal), source];
    if let Err(t) = gateway.attempts.check(ATTEMPT_KIND, &keys) {
        return Err(throttled(gateway, t));
    }
    let authenticated = basic_client(&decoded.parts.headers, &claimed).and_then(|()| {
        authenticate_client(
            tokens, conn, directory, &form, assertion, &claimed, now, recorder,
        )
    });
    let ClientAuthenticated {
        agent,
        spiffe_id,
        claims,
        thumbprint,
    } = match authenticated {
        Ok(ok) => {
            gateway.attempts.success(ATTEMPT_KIND, &keys);
            ok
        }
        Err(denial) => {
            assertion_failed(gateway, &keys, &principal, conn);
            return Err(denial);
        }
    };
    recorder.record().credential = Some(format!(
        "{spiffe_id} assertion kid={} jti={}",
        thumbprint, claims.jti
    ));
    // A quarantined agent gets no new credential, by either grant (client
    // credentials or token exchange). Checked once the assertion proved who
    // is asking, so nobody else learns that an agent is quarantined.
    if analytics.is_some_and(|a| {
        a.board().risk(agent.as_str()).1 == portcullis_analytics::Grade::Quarantine
    }) {
        return Err(client(
            ErrorCode::Quarantined,
            "the agent is quarantined by behavioral analytics; no token is issued",
        ));
    }

    // The binding is checked before the assertion's `jti` is spent, so a
    // request refused for its proof can be retried with the same assertion.
    let (cnf, token_type, proof_key) = match proof_header {
        Some(proof) => {
            let (jkt, spend) = token_request_proof(tokens, &proof, now)?;
            (
                Confirmation {
                    jkt: Some(jkt),
                    x5t_s256: None,
                },
                "DPoP",
                Some(spend),
            )
        }
        None => {
            let x5t = bound_certificate(conn.peer.as_ref(), directory, &agent, now)?;
            (
                Confirmation {
                    jkt: None,
                    x5t_s256: Some(x5t),
                },
                "Bearer",
                None,
            )
        }
    };
    // The posture statement, when sent, must verify and name this agent.
    let posture_digest = match form.posture.as_deref() {
        None => None,
        Some(statement) => {
            let attestor = tokens.posture_attestor.as_ref().ok_or_else(|| {
                client(
                    ErrorCode::BadRequest,
                    "a posture statement was sent but no `[identity.posture_attestor]` is configured",
                )
            })?;
            let posture = attestor.verify_posture(statement, now).await.map_err(|e| {
                client(
                    ErrorCode::InvalidClient,
                    format!("posture statement refused: {e}"),
                )
            })?;
            if posture.sub != spiffe_id {
                return Err(client(
                    ErrorCode::InvalidClient,
                    "posture statement refused: it attests another workload",
                ));
            }
            Some(posture.digest)
        }
    };
    // The subject is checked before anything single-use is spent, too.
    let subject = if exchange {
        Some(subject_of(tokens, &form, &spiffe_id, now).await?)
    } else {
        None
    };
    replay(
        tokens,
        SingleUseKind::Assertion,
        &format!("{agent}:{}", claims.jti),
        claims.exp,
        now,
        ErrorCode::InvalidClient,
        "client assertion",
    )
    .await?;
    if let Some((key, until)) = proof_key {
        spend_proof(tokens, &key, until, now).await?;
    }
    let issued = match &subject {
        None => tokens
            .issuer
            .issue(agent.as_str(), &spiffe_id, cnf, now, tokens.ttl),
        Some(subject) => tokens.issuer.issue_delegated(
            agent.as_str(),
            Actor {
                sub: spiffe_id.clone(),
                act: subject.earlier_actor.clone().map(Box::new),
            },
            &subject.user,
            cnf,
            now,
            tokens.ttl,
            subject.not_after,
        ),
    };
    let signing_failed = |e: portcullis_identity::TokenError| {
        tracing::error!(error = %e, "cannot sign an access token");
        Denial::new(ErrorCode::Internal, "internal error")
    };
    let (mut token, mut issued) = issued.map_err(signing_failed)?;
    if posture_digest.is_some() {
        issued.posture_digest = posture_digest;
        token = tokens.issuer.sign_access(&issued).map_err(signing_failed)?;
    }
    {
        let record = recorder.record();
        record.outcome = Outcome::Allow;
        record.credential = Some(format!(
            "{spiffe_id} assertion jti={} issued token jti={} cnf={}{}",
            claims.jti,
            issued.jti,
            if token_type == "DPoP" {
                "dpop"
            } else {
                "x5t#S256"
            },
            match &issued.act {
                Some(act) => format!(
                    " on behalf of {} via {}",
                    issued.sub,
                    act.chain().join(" <- ")
                ),
                None => String::new(),
            }
        ));
    }
    let mut answer = serde_json::json!({
        "access_token": token,
        "token_type": token_type,
        "expires_in": issued.exp - issued.iat,
    });
    if exchange {
        answer["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token".into();
    }
    let response = json_response(StatusCode::OK, &answer, "no-store");
    Ok(if token_type == "DPoP" {
        with_next_nonce(tokens, response, now)
    } else {
        response
    })
}

#[allow(clippy::too_many_arguments)]
async fn replay(
    tokens: &crate::tokens::TokenService,
    kind: SingleUseKind,
    key: &str,
    until: i64,
    now: i64,
    code: ErrorCode,
    what: &str,
) -> Result<(), Denial> {
    tokens
        .claim(kind, key, until, now)
        .await
        .map_err(|r| match r {
            ClaimRefusal::Replayed => {
                Denial::new(code, format!("{what} replayed: its `jti` was already used"))
            }
            ClaimRefusal::Full => Denial::new(
                ErrorCode::Unavailable,
                "too many credentials in flight; retry shortly",
            ),
            ClaimRefusal::StoreUnavailable => Denial::new(
                ErrorCode::Unavailable,
                "the shared store cannot confirm the credential is unused; retry shortly",
            ),
        })
}

/// Just the `grant_type` of a token request, to pick the grant's handler.
#[derive(Debug, Deserialize)]
struct GrantType {
    grant_type: Option<String>,
}

/// The request's one `DPoP` proof header, if any (two are refused).
fn dpop_header(headers: &http::HeaderMap) -> Result<Option<String>, Denial> {
    let mut all = headers.get_all("dpop").iter();
    match (all.next(), all.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(v.to_str().unwrap_or_default().to_string())),
        _ => Err(client(
            ErrorCode::InvalidDpopProof,
            "at most one `DPoP` proof header",
        )),
    }
}

/// Reads a form body (`application/x-www-form-urlencoded`) of at most
/// [`MAX_FORM_BYTES`]: token requests, and the login page's answer.
pub(crate) async fn read_form(
    mut body_stream: crate::pipeline::decode::RequestBody,
    headers: &http::HeaderMap,
) -> Result<Vec<u8>, Denial> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(client(
            ErrorCode::BadRequest,
            "the request must be `application/x-www-form-urlencoded`",
        ));
    }
    let too_large = || {
        client(
            ErrorCode::BadRequest,
            format!("the form must be at most {MAX_FORM_BYTES} bytes"),
        )
    };
    let mut body = Vec::new();
    while let Some(frame) = body_stream.frame().await {
        let frame = frame.map_err(|_| too_large())?;
        if let Some(data) = frame.data_ref() {
            if body.len() + data.len() > MAX_FORM_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(data);
        }
    }
    Ok(body)
}

/// Checks a token request's DPoP proof (RFC 9449 §4.3 with the nonce of
/// §8): the key to bind the token to, and the replay-cache entry to spend
/// once nothing else can refuse the request.
pub(crate) fn token_request_proof(
    tokens: &TokenService,
    proof: &str,
    now: i64,
) -> Result<(String, (String, i64)), Denial> {
    let proof = verify_dpop_proof(proof, "POST", tokens.token_url(), None, now).map_err(|e| {
        client(
            ErrorCode::InvalidDpopProof,
            format!("DPoP proof refused: {e}"),
        )
    })?;
    tokens
        .check_dpop_nonce(proof.claims.nonce.as_deref(), now)
        .map_err(|m| client(ErrorCode::UseDpopNonce, m))?;
    let key = format!("{}:{}", proof.jkt, proof.claims.jti);
    let until = proof.claims.iat + DPOP_WINDOW;
    Ok((proof.jkt, (key, until)))
}

/// Spends a DPoP proof's `jti` (after every other check passed).
pub(crate) async fn spend_proof(
    tokens: &TokenService,
    key: &str,
    until: i64,
    now: i64,
) -> Result<(), Denial> {
    replay(
        tokens,
        SingleUseKind::DpopProof,
        key,
        until,
        now,
        ErrorCode::InvalidDpopProof,
        "DPoP proof",
    )
    .await
}

/// Adds the nonce for the next proof (RFC 9449 §8.2) to a DPoP answer.
pub(crate) fn with_next_nonce(
    tokens: &TokenService,
    mut response: Response<ResponseBody>,
    now: i64,
) -> Response<ResponseBody> {
    if let Ok(nonce) = HeaderValue::from_str(&tokens.nonces.current(now)) {
        response
            .headers_mut()
            .insert(crate::respond::DPOP_NONCE_HEADER, nonce);
    }
    response
}

/// Without a DPoP proof, the token is bound to the connection's client
/// certificate, which must be a live certificate of the same agent.
fn bound_certificate(
    peer: Option<&Result<PeerCertificate, portcullis_identity::CertRejection>>,
    directory: &AgentDirectory,
    agent: &AgentName,
    now: i64,
) -> Result<String, Denial> {
    let Some(Ok(peer)) = peer else {
        return Err(Denial::new(
            ErrorCode::BadRequest,
            "tokens are always sender-constrained: send a `DPoP` proof header, or connect with the agent's client certificate",
        ));
    };
    if peer.agent != *agent {
        return Err(Denial::new(
            ErrorCode::InvalidClient,
            "the client certificate belongs to another agent than the assertion",
        ));
    }
    if peer.not_after <= now || directory.check(agent.as_str(), &peer.serial).is_err() {
        return Err(Denial::new(
            ErrorCode::InvalidCredential,
            "the client certificate is expired or revoked",
        ));
    }
    peer_x5t(peer).ok_or_else(|| Denial::new(ErrorCode::Internal, "internal error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_and_paths() {
        let name = |c: &str| agent_of(c, "t.example").map(|a| a.to_string());
        assert_eq!(name("bot").as_deref(), Some("bot"));
        assert_eq!(name("spiffe://t.example/agent/bot").as_deref(), Some("bot"));
        // Another trust domain, or not an agent ID, names nobody.
        assert_eq!(name("spiffe://other/agent/bot"), None);
        assert_eq!(name("spiffe://t.example/user/bot"), None);
        assert_eq!(name("Not A Name"), None);
        assert!(is_oauth_path("/oauth2/token"));
        assert!(is_oauth_path("/.well-known/jwks.json"));
        assert!(!is_oauth_path("/oauth2/token/x"));
        assert!(is_oauth_path("/.well-known/oauth-protected-resource/mcp/x"));
        assert!(!is_oauth_path("/.well-known/oauth-protected-resourcex"));
    }
}
