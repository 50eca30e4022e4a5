//! Stable error codes. Each is documented in `docs/errors.md`; clients may match on
//! them, so a code is never renamed or reused for another meaning.

/// Every error code Portcullis answers with, and the HTTP status it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No client certificate (or other credential) was presented.
    Unauthenticated,
    /// A credential was presented but is not valid: foreign CA, expired, malformed.
    InvalidCredential,
    /// The credential belongs to an agent that is revoked or unknown.
    AgentRevoked,
    /// Policy did not permit the request.
    Forbidden,
    /// The content guard refused the request body (prompt injection or
    /// sensitive data, by the route's guard settings).
    ContentBlocked,
    /// The content guard cannot read a body it must scan (compressed,
    /// binary, multipart, not UTF-8, or unparsable JSON) on a route that
    /// blocks or redacts, and the route does not allow unscannable bodies.
    ContentUnscannable,
    /// No route matches the request path.
    RouteNotFound,
    /// The request body exceeds the configured limit.
    PayloadTooLarge,
    /// The request is malformed (bad header, bad JSON, invalid parameters).
    BadRequest,
    /// The request target is one an upstream might resolve differently from
    /// the gateway (encoded separators, dot or empty segments, `;params`,
    /// double encoding, control characters, a case variant of a route).
    BadPath,
    /// The request carries a method-override header (`X-HTTP-Method-Override`
    /// and the like), which could turn an allowed method into another upstream.
    MethodOverrideRefused,
    /// The upstream could not be reached or answered with a broken response.
    UpstreamUnavailable,
    /// The upstream did not answer within the configured timeout.
    UpstreamTimeout,
    /// An admin-API object does not exist.
    NotFound,
    /// An admin-API object already exists.
    Conflict,
    /// The HTTP method is not supported for this resource.
    MethodNotAllowed,
    /// Something failed inside Portcullis; details are in the server log only.
    Internal,
    /// The server is shutting down or not ready.
    Unavailable,
    /// The vault has no key-encryption key, so secrets, transit and capture are off.
    VaultUnavailable,
    /// A route's upstream credential could not be decrypted or used.
    SecretUnavailable,
    /// A transit token is not valid for any version of the named key.
    InvalidCiphertext,
    /// The audit log cannot be written, so the request is refused rather than
    /// served unrecorded (fail closed).
    AuditUnavailable,
    /// (cluster mode) The shared store (PostgreSQL) has not answered this
    /// replica for longer than `[store] max_staleness_ms`, so the request is
    /// refused rather than decided from state that may be stale.
    StoreUnavailable,
    /// An access token was refused: malformed, wrong algorithm or key, bad
    /// signature, expired, not yet valid, wrong issuer or audience, or not bound
    /// to what the request presents.
    InvalidToken,
    /// A DPoP proof was missing or refused: wrong type or key, bad signature,
    /// another method or URL, stale, replayed, or signed by a key the token is
    /// not bound to.
    InvalidDpopProof,
    /// The DPoP proof carried no server-issued nonce where one is required
    /// (`[identity] require_dpop_nonce`), or a stale or foreign one: retry with
    /// the nonce of the `DPoP-Nonce` response header (RFC 9449 §8, §9).
    UseDpopNonce,
    /// The token endpoint could not authenticate the client: unknown agent, no
    /// registered key, or a refused or replayed client assertion.
    InvalidClient,
    /// The token endpoint was asked for a grant it does not support.
    UnsupportedGrantType,
    /// Behavioral analytics quarantined the agent: every request but the
    /// allow-list is refused until a human releases it.
    Quarantined,
    /// Behavioral analytics made the agent read-only: writes are refused.
    ReadOnly,
    /// Behavioral analytics throttled the agent and it is over its rate.
    Throttled,
    /// A sensitive admin action needs a human admin's fresh TOTP code.
    MfaRequired,
    /// A token exchange was refused: the subject token is not valid, or the
    /// delegation is not allowed (disabled user, chain too long or cyclic).
    InvalidGrant,
    /// An authorization request or token request named a resource (RFC 8707)
    /// that is not one of the gateway's routes, or another than its grant's.
    InvalidTarget,
    /// An authorization request asked for a scope the gateway does not offer.
    InvalidScope,
    /// A client registration (RFC 7591) named a redirect URI that is not
    /// https or loopback http, or an authorization request one the client
    /// did not register.
    InvalidRedirectUri,
    /// A client registration (RFC 7591) was refused: unsupported metadata,
    /// too large, or registration is off.
    InvalidClientMetadata,
    /// The TOTP code (or the admin it names) was refused: wrong, stale, or already used.
    InvalidTotp,
    /// An LLM request names a model its route does not configure.
    ModelNotFound,
    /// The model's route is classified confidential or above and the model
    /// is not verified in the model registry, or its entry is revoked
    /// (`builtin:model-gate`).
    ModelUnverified,
    /// A dataset the route or MCP tool is tagged with may not be read by
    /// the caller (`Action::"read_data"` on `Dataset::"<name>"`).
    DatasetDenied,
    /// The route or MCP tool is tagged with a dataset that is not in the
    /// dataset registry: refused until it is registered (fail closed).
    DatasetUnknown,
    /// The agent's request or token budget on an LLM route is spent for
    /// the current minute or day.
    BudgetExceeded,
    /// A pushed policy set does not compile, validate or fit the gateway's
    /// agents and routes; the running version stays.
    InvalidPolicy,
    /// The deciding policy needs a human's approval for this exact call; the
    /// response names the approval ticket.
    ApprovalRequired,
    /// A human denied the approval ticket for this call.
    ApprovalDenied,
    /// The agent exceeded a policy's `@rate` limit.
    RateLimited,
    /// The deciding policy carries `@obligation("mfa")` and the request does
    /// not come from a delegating user with fresh MFA.
    UserMfaRequired,
    /// (MCP, in a JSON-RPC error's `data.code`) the tool is blocked: its
    /// definition changed since it was approved, it failed the poisoning scan,
    /// or its server never listed it; an admin approves with `portcullis tools approve`.
    ToolBlocked,
    /// (MCP, in a JSON-RPC error's `data.code`) a JSON-RPC method the gateway
    /// does not map to a policy action, or a message without the parameters it needs.
    McpMethodNotAllowed,
    /// (MCP) the `Mcp-Session-Id` is unknown, ended, or belongs to another agent.
    McpSessionNotFound,
    /// The deciding permit carries an obligation (`@obligation("redact")`, …)
    /// that this request cannot be held to, e.g. a response the redactor
    /// cannot read; the request is refused rather than served without it.
    ObligationUnsupported,
    /// (MCP, in a JSON-RPC error's `data.code`) a number in the message's
    /// arguments has no canonical form (more than 4 fraction digits or 15
    /// significant digits, an integer beyond 64 bits, beyond a double like
    /// `1e400`), so policy cannot decide it exactly.
    McpBadArgument,
    /// A response that was streaming was ended because its caller lost the
    /// right to it (agent or certificate revoked, token revoked, user
    /// disabled, agent quarantined). In the audit record, and in the last
    /// event of a cut event stream; never an HTTP status of its own.
    StreamRevoked,
    /// Too many failed TOTP codes or client assertions for this principal or
    /// source: back off (or wait out the lockout) as `Retry-After` says.
    TooManyAttempts,
    /// The gateway's budget of buffered request bodies (`[limits]
    /// max_buffered_bytes`) is spent; the request was refused at once, without
    /// waiting for room, and may be retried shortly.
    ServerBusy,
    /// A config reload (SIGHUP) was refused: the new file does not parse,
    /// or the routes it describes cannot be served (an unknown secret, an
    /// unreadable API key, policies that do not fit its routes). The running
    /// configuration stays. In the `config.reload` audit record.
    InvalidConfig,
    /// A config reload (SIGHUP) was refused because it changes a setting
    /// that only a restart applies (a listen address, the store, TLS, …);
    /// nothing of it was applied. In the `config.reload` audit record.
    RestartRequired,
}

impl ErrorCode {
    /// The stable, snake_case code string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InvalidCredential => "invalid_credential",
            ErrorCode::AgentRevoked => "agent_revoked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ContentBlocked => "content_blocked",
            ErrorCode::ContentUnscannable => "content_unscannable",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadPath => "bad_path",
            ErrorCode::MethodOverrideRefused => "method_override_refused",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::VaultUnavailable => "vault_unavailable",
            ErrorCode::SecretUnavailable => "secret_unavailable",
            ErrorCode::InvalidCiphertext => "invalid_ciphertext",
            ErrorCode::AuditUnavailable => "audit_unavailable",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvalidDpopProof => "invalid_dpop_proof",
            ErrorCode::UseDpopNonce => "use_dpop_nonce",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::Quarantined => "quarantined",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::Throttled => "throttled",
            ErrorCode::MfaRequired => "mfa_required",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::InvalidTotp => "invalid_totp",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::InvalidRedirectUri => "invalid_redirect_uri",
            ErrorCode::InvalidClientMetadata => "invalid_client_metadata",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::ModelUnverified => "model_unverified",
            ErrorCode::DatasetDenied => "dataset_denied",
            ErrorCode::DatasetUnknown => "dataset_unknown",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::InvalidPolicy => "invalid_policy",
            ErrorCode::ApprovalRequired => "approval_required",
            ErrorCode::ApprovalDenied => "approval_denied",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UserMfaRequired => "user_mfa_required",
            ErrorCode::ToolBlocked => "tool_blocked",
            ErrorCode::McpMethodNotAllowed => "mcp_method_not_allowed",
            ErrorCode::McpBadArgument => "mcp_bad_argument",
            ErrorCode::McpSessionNotFound => "mcp_session_not_found",
            ErrorCode::ObligationUnsupported => "obligation_unsupported",
            ErrorCode::StreamRevoked => "stream_revoked",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::RestartRequired => "restart_required",
        }
    }

    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthenticated
            | ErrorCode::InvalidCredential
            | ErrorCode::AgentRevoked
            | ErrorCode::InvalidToken
            | ErrorCode::InvalidDpopProof
            | ErrorCode::UseDpopNonce
            | ErrorCode::InvalidClient
            | ErrorCode::MfaRequired
            | ErrorCode::InvalidTotp => 401,
            ErrorCode::Forbidden
            | ErrorCode::ContentBlocked
            | ErrorCode::ApprovalRequired
            | ErrorCode::ApprovalDenied
            | ErrorCode::UserMfaRequired
            | ErrorCode::ToolBlocked
            | ErrorCode::ModelUnverified
            | ErrorCode::DatasetDenied
            | ErrorCode::DatasetUnknown
            | ErrorCode::McpMethodNotAllowed
            | ErrorCode::ObligationUnsupported
            | ErrorCode::Quarantined
            | ErrorCode::StreamRevoked
            | ErrorCode::ReadOnly => 403,
            ErrorCode::RateLimited
            | ErrorCode::BudgetExceeded
            | ErrorCode::Throttled
            | ErrorCode::TooManyAttempts => 429,
            ErrorCode::RouteNotFound
            | ErrorCode::NotFound
            | ErrorCode::ModelNotFound
            | ErrorCode::McpSessionNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::ContentUnscannable => 415,
            ErrorCode::Conflict | ErrorCode::RestartRequired => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::BadRequest
            | ErrorCode::McpBadArgument
            | ErrorCode::BadPath
            | ErrorCode::MethodOverrideRefused
            | ErrorCode::InvalidCiphertext
            | ErrorCode::UnsupportedGrantType
            | ErrorCode::InvalidPolicy
            | ErrorCode::InvalidConfig
            | ErrorCode::InvalidGrant
            | ErrorCode::InvalidTarget
            | ErrorCode::InvalidScope
            | ErrorCode::InvalidRedirectUri
            | ErrorCode::InvalidClientMetadata => 400,
            ErrorCode::UpstreamUnavailable => 502,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable
            | ErrorCode::AuditUnavailable
            | ErrorCode::StoreUnavailable
            | ErrorCode::VaultUnavailable
            | ErrorCode::SecretUnavailable
            | ErrorCode::ServerBusy => 503,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_and_errors_are_4xx_or_5xx() {
        let all = [
            ErrorCode::Unauthenticated,
            ErrorCode::InvalidCredential,
            ErrorCode::AgentRevoked,
            ErrorCode::Forbidden,
            ErrorCode::ContentBlocked,
            ErrorCode::ContentUnscannable,
            ErrorCode::RouteNotFound,
            ErrorCode::PayloadTooLarge,
            ErrorCode::BadRequest,
            ErrorCode::BadPath,
            ErrorCode::MethodOverrideRefused,
            ErrorCode::UpstreamUnavailable,
            ErrorCode::UpstreamTimeout,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
            ErrorCode::VaultUnavailable,
            ErrorCode::SecretUnavailable,
            ErrorCode::InvalidCiphertext,
            ErrorCode::AuditUnavailable,
            ErrorCode::StoreUnavailable,
            ErrorCode::InvalidToken,
            ErrorCode::InvalidDpopProof,
            ErrorCode::UseDpopNonce,
            ErrorCode::InvalidClient,
            ErrorCode::UnsupportedGrantType,
            ErrorCode::Quarantined,
            ErrorCode::ReadOnly,
            ErrorCode::Throttled,
            ErrorCode::MfaRequired,
            ErrorCode::InvalidTotp,
            ErrorCode::InvalidGrant,
            ErrorCode::ModelNotFound,
            ErrorCode::ModelUnverified,
            ErrorCode::DatasetDenied,
            ErrorCode::DatasetUnknown,
            ErrorCode::BudgetExceeded,
            ErrorCode::InvalidPolicy,
            ErrorCode::ApprovalRequired,
            ErrorCode::ApprovalDenied,
            ErrorCode::RateLimited,
            ErrorCode::UserMfaRequired,
            ErrorCode::ToolBlocked,
            ErrorCode::McpMethodNotAllowed,
            ErrorCode::McpSessionNotFound,
            ErrorCode::ObligationUnsupported,
            ErrorCode::McpBadArgument,
            ErrorCode::StreamRevoked,
            ErrorCode::TooManyAttempts,
            ErrorCode::ServerBusy,
            ErrorCode::InvalidConfig,
            ErrorCode::RestartRequired,
            ErrorCode::InvalidTarget,
            ErrorCode::InvalidScope,
            ErrorCode::InvalidRedirectUri,
            ErrorCode::InvalidClientMetadata,
        ];
        let docs = include_str!("../../../docs/errors.md");
        for c in all {
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!((400..600).contains(&c.http_status()));
            assert!(
                docs.contains(&format!("`{}`", c.as_str())),
                "{} undocumented",
                c.as_str()
            );
        }
    }
}
