//! The admin API's OpenAPI 3.1 description, served at
//! `GET /admin/v1/openapi.json` and rendered into `docs/admin-api.md`.
//!
//! One table, [`OPERATIONS`], describes each operation: its method and path,
//! what it does, its query parameters and JSON body fields, and whether it
//! needs a step-up TOTP. [`document`] builds the OpenAPI document from it
//! and [`markdown`] the reference page from the document. A unit test reads
//! the route list out of the router itself (`api_routes`, `probe_routes`)
//! and fails when a route is missing here, or when this table names a route
//! the router does not have; another fails when `docs/admin-api.md` is not
//! what [`markdown`] makes (`PORTCULLIS_WRITE_DOCS=1` rewrites it).
//!
//! A hand-kept table rather than derive macros: the handlers parse their
//! bodies in several ways (typed extractors, `Bytes` and `parse_json`), and
//! one lean table keeps the document honest without a proc-macro
//! dependency.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// A field of a query string or a JSON body.
pub(crate) struct Field {
    name: &'static str,
    /// `string`, `integer`, `boolean`, `object`, `string[]`, `object[]`,
    /// `map` (an object of strings).
    ty: &'static str,
    required: bool,
    doc: &'static str,
}

const fn f(name: &'static str, ty: &'static str, doc: &'static str) -> Field {
    Field {
        name,
        ty,
        required: true,
        doc,
    }
}

const fn opt(name: &'static str, ty: &'static str, doc: &'static str) -> Field {
    Field {
        name,
        ty,
        required: false,
        doc,
    }
}

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// No credential (the probes).
    Public,
    /// The admin bearer token.
    Admin,
    /// The admin token and, once an admin has enrolled, a fresh TOTP
    /// (`X-Portcullis-User`, `X-Portcullis-TOTP`).
    StepUp,
}

/// One operation of the admin API.
pub(crate) struct Operation {
    pub(crate) method: &'static str,
    /// The full path, `{param}` for path parameters.
    pub(crate) path: &'static str,
    tag: &'static str,
    summary: &'static str,
    access: Access,
    query: &'static [Field],
    /// JSON body fields; `None`: no body.
    body: Option<&'static [Field]>,
    /// The success answer's media type.
    answers: &'static str,
    /// The success answer's status.
    status: u16,
    /// The success answer's shape (JSON answers).
    answer: Answer,
}

/// The shape of a success answer. Field lists name the top-level fields a
/// client may rely on (more may be added: fields are added, never renamed,
/// so a schema never forbids unknown ones); a field whose type is
/// `ref:Name` is one of the shared [`COMPONENTS`].
#[derive(Clone, Copy)]
pub(crate) enum Answer {
    /// Not described yet: the test that every JSON operation has an answer
    /// schema fails on it.
    Unspecified,
    /// An object with these fields.
    Object(&'static [Field]),
    /// An array of objects with these fields.
    List(&'static [Field]),
    /// One shared component schema.
    Named(&'static str),
    /// A shared component schema with more fields.
    Extends(&'static str, &'static [Field]),
}

const JSON: &str = "application/json";

const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    access: Access,
    summary: &'static str,
) -> Operation {
    Operation {
        method,
        path,
        tag,
        summary,
        access,
        query: &[],
        body: None,
        answers: JSON,
        status: 200,
        answer: Answer::Unspecified,
    }
}

impl Operation {
    const fn query(mut self, query: &'static [Field]) -> Self {
        self.query = query;
        self
    }
    const fn body(mut self, body: &'static [Field]) -> Self {
        self.body = Some(body);
        self
    }
    const fn answers(mut self, media: &'static str) -> Self {
        self.answers = media;
        self
    }
    /// The answer is an object with these fields.
    const fn ok(mut self, fields: &'static [Field]) -> Self {
        self.answer = Answer::Object(fields);
        self
    }
    /// The answer is an array of objects with these fields.
    const fn list(mut self, fields: &'static [Field]) -> Self {
        self.answer = Answer::List(fields);
        self
    }
    /// The answer is the shared component `name`.
    const fn named(mut self, name: &'static str) -> Self {
        self.answer = Answer::Named(name);
        self
    }
    /// The answer is the shared component `name` with more fields.
    const fn extends(mut self, name: &'static str, fields: &'static [Field]) -> Self {
        self.answer = Answer::Extends(name, fields);
        self
    }
    /// The success status is 201 Created.
    const fn created(mut self) -> Self {
        self.status = 201;
        self
    }
}

/// The answers several operations share, by name (`ref:Name` in a field's
/// type, or [`Operation::named`]). Each mirrors a view type of a handler
/// (named in its comment), field for field.
pub(crate) const COMPONENTS: &[(&str, &[Field])] = &[
    // governance_api.rs `model_view` (without its evidence).
    (
        "Model",
        &[
            f("id", "string", "`NAME@VERSION`"),
            f("name", "string", "registry name"),
            f("version", "string", "version"),
            f("digest", "string", "`sha256:<hex>`"),
            f(
                "lifecycle",
                "string",
                "draft, approved, deprecated or revoked",
            ),
            f(
                "verified",
                "boolean",
                "whether its signature verified against a pinned key",
            ),
            f("verified_key", "string?", "the key that verified it"),
            f("has_signature", "boolean", "a signature bundle is kept"),
            f(
                "has_provenance",
                "boolean",
                "a provenance statement is kept",
            ),
            f("has_eval", "boolean", "evaluation evidence is kept"),
            f("registered_by", "string", "who registered it"),
            f("registered_at", "integer", "ms since the epoch"),
            f("changed_by", "string?", "who last moved its lifecycle"),
            f("changed_at", "integer?", "ms since the epoch"),
        ],
    ),
    // governance_api.rs `dataset_view`.
    (
        "Dataset",
        &[
            f("name", "string", "dataset name"),
            f("owner", "string", "accountable owner"),
            f("classification", "string", "its classification"),
            f("provenance", "object", "`source`, `licence`, `collected`"),
            f("consent_basis", "string", "consent basis"),
            f("retention_days", "integer", "retention"),
            f("purposes", "string[]", "allowed purposes"),
            f(
                "lifecycle",
                "string",
                "draft, approved, deprecated or revoked",
            ),
            f("registered_by", "string", "who registered it"),
            f("registered_at", "integer", "ms since the epoch"),
            f("changed_by", "string", "who last moved its lifecycle"),
            f("changed_at", "integer", "ms since the epoch"),
        ],
    ),
    // redteam_api.rs `view`
    (
        "RedteamRun",
        &[
            f("run_id", "string", "the run"),
            f("started_ms", "integer", "start, ms since the epoch"),
            f("finished_ms", "integer", "end, ms since the epoch"),
            f("recorded_ms", "integer", "when the gateway kept it"),
            f("recorded_by", "string", "the admin who posted it"),
            f("agent", "string", "the attacking agent"),
            f("gateway", "string", "the gateway attacked"),
            f("held", "integer", "families held"),
            f("failed", "integer", "families failed"),
            f("skipped", "integer", "families skipped"),
            f("failed_families", "string[]", "the failed families"),
            f(
                "audit_request_id",
                "string",
                "its audit record's request id",
            ),
        ],
    ),
    // `api/agents.rs` `AgentView`.
    (
        "Agent",
        &[
            f("name", "string", "the agent's name"),
            f("roles", "string[]", "its roles"),
            f("spiffe_id", "string", "its SPIFFE ID"),
            f("created_at", "integer", "epoch seconds"),
            f("revoked_at", "integer?", "epoch seconds, when revoked"),
            f(
                "status",
                "string",
                "`active`, `quarantined`, `expired` or `revoked`",
            ),
            f(
                "certificates",
                "ref:Certificate[]",
                "its certificates, revoked ones too",
            ),
            f(
                "signing_keys",
                "string[]",
                "`kid`s of its registered signing keys",
            ),
            f(
                "credential_kinds",
                "string[]",
                "how it can authenticate now: `mtls`, `token`",
            ),
            f(
                "expires_at",
                "integer?",
                "when its newest live certificate expires",
            ),
            f("last_seen", "integer?", "when it last authenticated"),
        ],
    ),
    // `api/agents.rs` `CertificateView`.
    (
        "Certificate",
        &[
            f("serial", "string", "serial number, hex"),
            f("issued_at", "integer", "epoch seconds"),
            f("not_after", "integer", "epoch seconds"),
            f("revoked_at", "integer?", "epoch seconds, when revoked"),
        ],
    ),
    // `api/agents.rs` `IssuedView`.
    (
        "IssuedAgent",
        &[
            f("agent", "ref:Agent", "the agent"),
            f("certificate_pem", "string", "the new certificate, PEM"),
            f("ca_pem", "string", "the Portcullis CA certificate, PEM"),
        ],
    ),
    // `admin_tokens_api.rs` `TokenView`.
    (
        "AdminToken",
        &[
            f("name", "string", "the credential's name"),
            f("role", "string", "its role"),
            f("kind", "string", "`token` or `certificate`"),
            f("not_after", "integer?", "a certificate's end of validity"),
            f("status", "string", "`active` or `revoked`"),
            f(
                "bootstrap",
                "boolean",
                "whether `serve` made it on first start",
            ),
            f("created_at", "integer", "epoch seconds"),
            f("created_by", "string", "the credential that made it"),
            f("rotated_at", "integer?", "epoch seconds"),
            f("revoked_at", "integer?", "epoch seconds"),
        ],
    ),
    // `admin_tokens_api.rs` `session_view`.
    (
        "Session",
        &[
            f("name", "string", "the calling credential"),
            f("role", "string", "its role"),
            f(
                "kind",
                "string",
                "`token`, `certificate` or `oidc` (a console session of an OIDC login)",
            ),
            f("permissions", "string[]", "what the role grants"),
            f(
                "step_up_seconds",
                "integer",
                "how long a step-up window stays open",
            ),
            f(
                "step_up",
                "object?",
                "the open window (`user`, `expires_at`), if any",
            ),
        ],
    ),
    // `approvals.rs` `Ticket::to_json` (portcullis-control).
    (
        "Approval",
        &[
            f("id", "string", "the ticket"),
            f("status", "string", "`pending`, `approved` or `denied`"),
            f("agent", "string", "the agent that made the call"),
            f("delegated_user", "string?", "the user it acted for"),
            f("action", "string", "the Cedar action"),
            f(
                "resource",
                "string",
                "the route (or route/tool, route/model)",
            ),
            f("path", "string", "the request path"),
            f("query", "string?", "the query string"),
            f("headers", "object[]", "the bound headers (`name`, `value`)"),
            f("body_sha256", "string", "SHA-256 of the body"),
            f("body_bytes", "integer", "body length"),
            f("protocol", "string", "`http`, `mcp` or `llm`"),
            f("tool", "string?", "the MCP tool"),
            f("arguments", "any", "the MCP tool's arguments"),
            f("model", "string?", "the LLM model"),
            f("preview", "string?", "the start of a text body"),
            f("summary", "string", "one line for humans"),
            f(
                "policy_version",
                "integer",
                "the policy version that asked for approval",
            ),
            f("policy_id", "string", "the policy that asked"),
            f("required_by", "string", "what required it"),
            f("created_ms", "integer", "ms since the epoch"),
            f("expires_ms", "integer", "ms since the epoch"),
            f("decided_by", "string?", "who decided"),
            f("decided_ms", "integer?", "when"),
            f(
                "grant_id",
                "string?",
                "the grant an approval with `ttl_seconds` made",
            ),
        ],
    ),
    // `approvals_api.rs` `grant_json`.
    (
        "Grant",
        &[
            f("id", "string", "the grant"),
            f("kind", "string", "`grant` or `breakglass`"),
            f("reason", "string?", "why"),
            f("policy_id", "string", "the policy it adds"),
            f("agent", "string", "the agent"),
            f("action", "string?", "the action it allows"),
            f("resource", "string?", "the resource"),
            f("created_ms", "integer", "ms since the epoch"),
            f("expires_ms", "integer", "ms since the epoch"),
            f("created_by", "string", "who"),
            f("ticket", "string?", "the approval it came from"),
        ],
    ),
    // `analytics_api.rs` `view`.
    (
        "Alert",
        &[
            f("id", "string", "the alert"),
            f("agent", "string", "the agent"),
            f("time_ms", "integer", "ms since the epoch"),
            f("grade", "string", "risk grade"),
            f("risk", "number", "risk score"),
            f("status", "string", "`open` or `resolved`"),
            f("reasons", "any", "why"),
            f("features", "any", "the features that stood out"),
            f("request_ids", "any", "the requests involved"),
            f("verdict", "string?", "`benign` or `malicious`"),
            f("resolved_at", "integer?", "when"),
            f("resolved_by", "string?", "who"),
        ],
    ),
    // `audit_api.rs` `CheckpointView`.
    (
        "Checkpoint",
        &[
            f("tree_size", "integer", "records covered"),
            f("time_ms", "integer", "when signed"),
            f("note", "string", "the signed note (C2SP tlog-checkpoint)"),
        ],
    ),
    // `audit_api.rs` `checkpoint_json`.
    (
        "LatestCheckpoint",
        &[
            f("origin", "string", "the log's origin line"),
            f("verifier_key", "string", "the note verifier key"),
            f(
                "verifier_keys",
                "string[]",
                "every verifier key of the log's checkpoints: the current one first, then those a key rotation retired or announced",
            ),
            f(
                "checkpoint",
                "ref:Checkpoint?",
                "the latest checkpoint, if any",
            ),
        ],
    ),
    // `vault` `SecretInfo`.
    (
        "Secret",
        &[
            f("name", "string", "the secret"),
            f("version", "integer", "current version"),
            f("created_at", "integer", "epoch seconds"),
            f("rotated_at", "integer", "epoch seconds"),
            f("rotation_period_s", "integer?", "rotation period"),
            f("rotation_due_at", "integer?", "next rotation"),
            f("overdue", "boolean", "rotation overdue"),
            f("grace_period_s", "integer", "grace period"),
            f("hook", "string?", "`command` or `webhook`"),
            f("versions", "object[]", "every version, oldest first"),
        ],
    ),
    // `vault` `TransitInfo`.
    (
        "TransitKey",
        &[
            f("name", "string", "the key"),
            f("latest_version", "integer", "the version that encrypts"),
            f("versions", "integer[]", "all versions"),
            f("exportable", "boolean", "whether it may be exported"),
        ],
    ),
    // `policy_api.rs` `ChangeView`.
    (
        "PolicyChange",
        &[
            f("version", "integer", "the version now active (or shadowed)"),
            f("hash", "string", "its content hash"),
            f("previous", "integer", "the version active before"),
            f(
                "unchanged",
                "boolean",
                "the same content was already active",
            ),
            f("shadow", "boolean", "evaluated in shadow"),
        ],
    ),
    // `policy_api.rs` `VersionView`.
    (
        "PolicyVersion",
        &[
            f("version", "integer", "the version"),
            f("hash", "string", "content hash"),
            f("author", "string", "who pushed it"),
            f("created_ms", "integer", "ms since the epoch"),
            f("message", "string", "what changed"),
            f("active", "boolean", "whether it decides"),
            f("shadow", "boolean", "whether it runs in shadow"),
            opt("files", "map", "file name to text (one version only)"),
        ],
    ),
    // `tools_api.rs` `view`.
    (
        "Tool",
        &[
            f("route", "string", "the MCP route"),
            f("name", "string", "the tool"),
            f("status", "string", "`approved`, `changed` or `unapproved`"),
            f("digest", "string", "digest of the definition last seen"),
            f(
                "approved_digest",
                "string?",
                "the approved definition's digest",
            ),
            f("definition", "any", "the definition last seen"),
            f("findings", "any", "scan findings"),
            f("first_seen_ms", "integer", "ms since the epoch"),
            f("seen_ms", "integer", "ms since the epoch"),
            f("approved_ms", "integer?", "ms since the epoch"),
            f("approved_by", "string?", "who"),
        ],
    ),
];

use Access::{Admin, Public, StepUp};

const V: &str = "/admin/v1";

macro_rules! p {
    ($path:literal) => {
        concat!("/admin/v1", $path)
    };
}

/// Every operation of the admin API, grouped by tag.
pub(crate) const OPERATIONS: &[Operation] = &[
    // Probes.
    op("get", "/healthz", "probes", Public, "Liveness: the process answers.")
        .ok(&[f("status", "string", "`ok`")]),
    op("get", "/readyz", "probes", Public, "Readiness: `ready`, or `not_ready` with every raised reason (audit halted or unwritable, a refused policy load, an unavailable vault credential).")
        .ok(&[f("status", "string", "`ready`")]),
    op("get", "/metrics", "probes", Public, "Prometheus metrics, in OpenMetrics or (for `Accept: text/plain`) the text format 0.0.4.")
        .answers("application/openmetrics-text"),
    op("get", p!("/openapi.json"), "meta", Admin, "This OpenAPI 3.1 description of the admin API.")
        .ok(&[f("openapi", "string", "`3.1.0`"), f("info", "object", "title, version, description"), f("servers", "object[]", "where it listens by default"), f("security", "object[]", "how callers authenticate"), f("tags", "object[]", "the groups of operations"), f("paths", "object", "every operation"), f("components", "object", "shared schemas and security schemes")]),
    // Agents.
    op("post", p!("/agents"), "agents", Admin, "Create an agent and issue its first certificate from a CSR (and optionally register a signing key for the token endpoint).")
        .body(&[f("name", "string", "the agent's name"), f("roles", "string[]", "its roles (Cedar `Role` entities)"), f("csr_pem", "string", "a PKCS#10 CSR, PEM"), opt("ttl_seconds", "integer", "certificate lifetime"), opt("jwk", "object", "a public JWK for the token endpoint")])
        .named("IssuedAgent").created(),
    op("get", p!("/agents"), "agents", Admin, "List agents with their status, certificates, keys, expiry and last authentication.")
        .ok(&[f("agents", "ref:Agent[]", "every agent")]),
    op("get", p!("/agents/{name}"), "agents", Admin, "One agent, with its analytics (risk, grade, history, quarantines) when analytics is on.")
        .extends("Agent", &[f("analytics", "object?", "risk, grade, history, baseline and quarantines; `null` when analytics is off")]),
    op("post", p!("/agents/{name}/revoke"), "agents", StepUp, "Revoke an agent: its certificates and keys stop authenticating before the call returns.")
        .named("Agent"),
    op("post", p!("/agents/{name}/certificates"), "agents", Admin, "Issue a fresh certificate for an agent from a CSR.")
        .body(&[f("csr_pem", "string", "a PKCS#10 CSR, PEM"), opt("ttl_seconds", "integer", "certificate lifetime")])
        .named("IssuedAgent").created(),
    op("post", p!("/agents/{name}/keys"), "agents", Admin, "Register another signing key (public JWK) for the token endpoint.")
        .body(&[f("jwk", "object", "the public JWK")])
        .ok(&[f("agent", "string", "the agent"), f("kid", "string", "the new key's id")]).created(),
    op("post", p!("/agents/{name}/release"), "agents", StepUp, "Release an agent from quarantine (behavioral analytics).")
        .ok(&[f("agent", "string", "the agent"), f("risk", "number", "its risk now"), f("grade", "string", "its grade now")]),
    op("post", p!("/agents/{name}/posture"), "agents", StepUp, "Pin an agent's workload posture: the digest it must present and the networks it may come from.")
        .body(&[f("digest", "string", "the expected posture digest"), opt("networks", "string[]", "allowed source networks (CIDR)")])
        .ok(&[f("agent", "string", "the agent"), f("digest", "string", "the pinned digest"), f("networks", "string[]", "allowed networks")]),
    // Admin credentials and the caller's session (step-up window).
    op("get", p!("/admin-tokens"), "admin-tokens", Admin, "List admin credentials (name, role, status, history); never their tokens.")
        .ok(&[f("tokens", "ref:AdminToken[]", "every credential, revoked ones too")]),
    op("post", p!("/admin-tokens"), "admin-tokens", StepUp, "Create a named admin credential with a role; the token is returned once.")
        .body(&[f("name", "string", "the credential's unique name"), f("role", "string", "owner, operator, policy-author, approver or auditor")])
        .ok(&[f("name", "string", "the credential"), f("role", "string", "its role"), f("token", "string", "its token, shown once")]).created(),
    op("post", p!("/admin-tokens/{name}/rotate"), "admin-tokens", StepUp, "Replace a credential's token; the old one is refused from the next request. The new token is returned once.")
        .ok(&[f("name", "string", "the credential"), f("role", "string", "its role"), f("token", "string", "the new token, shown once")]),
    op("post", p!("/admin-tokens/{name}/revoke"), "admin-tokens", StepUp, "Revoke a credential (never the last owner); refused from the next request.")
        .ok(&[f("revoked", "string", "the credential")]),
    op("post", p!("/admin-certificates"), "admin-tokens", StepUp, "Create a named admin credential bound to a client certificate: the Portcullis CA signs the CSR's key (`CN=<name>, O=Portcullis admins`) and the certificate is accepted over mTLS on the admin listener with the credential's role. Listed and revoked with the tokens; not rotated (issue a new one).")
        .body(&[f("name", "string", "the credential's unique name"), f("role", "string", "owner, operator, policy-author, approver or auditor"), f("csr", "string", "a PKCS#10 CSR, PEM (only its public key is used)"), opt("ttl_seconds", "integer", "certificate lifetime (default 90 days, at most 365)")])
        .ok(&[f("name", "string", "the credential"), f("role", "string", "its role"), f("kind", "string", "`certificate`"), f("certificate_pem", "string", "the certificate, PEM"), f("ca_pem", "string", "the Portcullis CA certificate, PEM"), f("fingerprint", "string", "SHA-256 of the DER certificate, hex"), f("serial", "string", "serial number, hex"), f("not_after", "integer", "end of validity, epoch seconds")]).created(),
    op("get", p!("/session"), "session", Admin, "Who is calling: the credential's name and role, and the open step-up window if any.")
        .named("Session"),
    op("post", p!("/session/step-up"), "session", Admin, "Open a step-up window with one TOTP confirmation (headers X-Portcullis-User and X-Portcullis-TOTP).")
        .named("Session"),
    op("delete", p!("/session/step-up"), "session", Admin, "Close the caller's step-up window.")
        .named("Session"),
    // Admins.
    op("post", p!("/admins"), "admins", StepUp, "Enrol a human admin: returns their TOTP secret and `otpauth://` URI once.")
        .body(&[f("name", "string", "the admin's name")])
        .ok(&[f("name", "string", "the admin"), f("totp_secret", "string", "base32, shown once"), f("otpauth_uri", "string", "for an authenticator app")]).created(),
    op("get", p!("/admins"), "admins", Admin, "List enrolled admins.")
        .list(&[f("name", "string", "the admin"), f("created_at", "integer", "epoch seconds")]),
    op("delete", p!("/admins/{name}"), "admins", StepUp, "Remove an enrolled admin.")
        .ok(&[f("removed", "string", "the admin")]),
    op("get", p!("/passkeys"), "admins", Admin, "List the human admins' passkeys (registered on the console's step-up page), without their keys.")
        .query(&[opt("admin", "string", "only this admin's")])
        .ok(&[f("passkeys", "object[]", "credential_id, admin, label, rp_id, algorithm, sign_count, created_at, last_used_at (null: never used)")]),
    op("delete", p!("/passkeys/{id}"), "admins", StepUp, "Remove a passkey by its credential id.")
        .ok(&[f("removed", "string", "the credential id"), f("admin", "string", "its admin"), f("label", "string", "its label")]),
    // Audit.
    op("get", p!("/audit"), "audit", Admin, "The newest audit records, oldest first.")
        .query(&[opt("limit", "integer", "how many (1 to 10000, default 20)")])
        .ok(&[f("records", "object[]", "audit records (docs/audit.md), oldest first")]),
    op("get", p!("/audit/checkpoint"), "audit", Admin, "The latest signed checkpoint, with the log's origin and verifier key.")
        .named("LatestCheckpoint"),
    op("post", p!("/audit/checkpoint"), "audit", Admin, "Sign a checkpoint now (if the log grew).")
        .named("LatestCheckpoint"),
    op("get", p!("/audit/checkpoints"), "audit", Admin, "Every stored checkpoint, smallest first.")
        .ok(&[f("checkpoints", "ref:Checkpoint[]", "smallest first")]),
    op("get", p!("/audit/records/{id}"), "audit", Admin, "One record by seq or request id, with its exact leaf bytes and leaf hash.")
        .ok(&[f("seq", "integer", "its position"), f("leaf", "string", "the exact leaf bytes"), f("leaf_hash", "string", "RFC 6962 leaf hash, hex"), f("record", "object", "the record"), f("personal", "object", "its personal fields (unless erased)")]),
    op("get", p!("/audit/proof/inclusion"), "audit", Admin, "The inclusion proof of a record in a signed tree.")
        .query(&[f("id", "string", "the record's seq or request id"), opt("tree_size", "integer", "the checkpoint's tree size (default: the latest)")])
        .ok(&[f("seq", "integer", "the record"), f("tree_size", "integer", "the tree"), f("leaf", "string", "leaf bytes"), f("leaf_hash", "string", "hex"), f("proof", "string[]", "hashes, hex"), f("checkpoint", "ref:Checkpoint", "the signed tree")]),
    op("get", p!("/audit/proof/consistency"), "audit", Admin, "The consistency proof between two signed tree sizes.")
        .query(&[f("from", "integer", "the older tree size"), opt("to", "integer", "the newer tree size (default: the latest checkpoint)")])
        .ok(&[f("from", "integer", "older size"), f("to", "integer", "newer size"), f("from_root", "string", "hex"), f("proof", "string[]", "hashes, hex"), f("from_checkpoint", "ref:Checkpoint?", "the older checkpoint, if stored"), f("to_checkpoint", "ref:Checkpoint", "the newer checkpoint")]),
    op("get", p!("/audit/export"), "audit", Admin, "Export records as JSON lines, streamed.")
        .query(&[opt("from", "integer", "first seq"), opt("to", "integer", "end seq (exclusive)")])
        .answers("application/jsonl"),
    op("get", p!("/inventory"), "audit", Admin, "The data-flow inventory: identities, resources, and who reached what (requests, allowed, denied, highest classification).")
        .query(&[opt("since_ms", "integer", "window start, ms since the epoch")])
        .ok(&[f("since_ms", "integer?", "window start"), f("identities", "object[]", "agents (`name`, `kind`, `roles`, …)"), f("resources", "object[]", "routes (`name`, `kind`, `path_prefix`, `classification`, `datasets`)"), f("edges", "object[]", "who reached what"), f("lineage", "object[]", "route or tool → dataset and route → registry model (`from`, `to`)"), f("flows", "object[]", "agent → route or tool → dataset, from the allowed edges (`agent`, `via`, `dataset`, `allowed`, `last_ms`)")]),
    // Vault.
    op("get", p!("/secrets"), "vault", Admin, "List secrets (names and metadata, never values).")
        .ok(&[f("secrets", "ref:Secret[]", "every secret")]),
    op("post", p!("/secrets"), "vault", Admin, "Store a secret.")
        .body(&[f("name", "string", "the secret's name"), opt("value", "string", "the value as text"), opt("value_base64", "string", "the value as base64"), opt("rotation_period_s", "integer", "rotate every this many seconds"), opt("grace_period_s", "integer", "keep the previous version this long"), opt("hook", "object", "the rotation hook")])
        .named("Secret").created(),
    op("get", p!("/secrets/{name}"), "vault", Admin, "One secret's metadata and versions (never its value).")
        .named("Secret"),
    op("delete", p!("/secrets/{name}"), "vault", Admin, "Delete a secret.")
        .ok(&[f("deleted", "string", "the secret")]),
    op("post", p!("/secrets/{name}/rotate"), "vault", Admin, "Rotate a secret to a new value (or let its hook make one).")
        .body(&[opt("value", "string", "the new value as text"), opt("value_base64", "string", "the new value as base64"), opt("expected_version", "integer", "refuse unless this is the current version")])
        .named("Secret"),
    op("post", p!("/secrets/{name}/settings"), "vault", Admin, "Change a secret's rotation settings.")
        .body(&[opt("rotation_period_s", "integer", "rotation period"), opt("grace_period_s", "integer", "grace period"), opt("hook", "object", "the rotation hook")])
        .named("Secret"),
    op("get", p!("/vault"), "vault", Admin, "The vault's status: key-encryption key, counts, rotation due.")
        .ok(&[f("kek_fingerprint", "string", "the key-encryption key's fingerprint"), f("kek_version", "integer", "its version"), f("secrets", "integer", "how many secrets"), f("overdue", "string[]", "secrets due for rotation"), f("transit_keys", "integer", "how many transit keys")]),
    op("post", p!("/vault/rekey"), "vault", Admin, "Re-seal every value under a new key-encryption key.")
        .body(&[f("new_kek", "string", "the new KEK (base64)")])
        .ok(&[f("previous_kek_fingerprint", "string", "the old key"), f("kek_fingerprint", "string", "the new key"), f("rewrapped", "integer", "values re-sealed")]),
    op("get", p!("/transit/keys"), "vault", Admin, "List transit keys.")
        .ok(&[f("keys", "ref:TransitKey[]", "every transit key")]),
    op("post", p!("/transit/keys"), "vault", Admin, "Create a transit key.")
        .body(&[f("name", "string", "the key's name"), opt("key", "string", "import this key (base64) instead of generating one"), opt("exportable", "boolean", "whether it may be exported")])
        .named("TransitKey").created(),
    op("post", p!("/transit/keys/{name}/rotate"), "vault", Admin, "Rotate a transit key.")
        .body(&[opt("key", "string", "import this key (base64) as the new version")])
        .named("TransitKey"),
    op("post", p!("/transit/keys/{name}/export"), "vault", StepUp, "Export an exportable transit key.")
        .ok(&[f("name", "string", "the key"), f("keys", "object[]", "every version (`version`, `key`)")]),
    op("post", p!("/transit/encrypt"), "vault", Admin, "Encrypt with a transit key (a Fernet token).")
        .body(&[f("key", "string", "the transit key"), f("plaintext", "string", "base64 plaintext")])
        .ok(&[f("token", "string", "the Fernet token"), f("key_version", "integer", "the version used")]),
    op("post", p!("/transit/decrypt"), "vault", Admin, "Decrypt a transit token.")
        .body(&[f("key", "string", "the transit key"), f("token", "string", "the token")])
        .ok(&[f("plaintext", "string", "base64"), f("key_version", "integer", "the version used")]),
    op("post", p!("/transit/rewrap"), "vault", Admin, "Re-encrypt a token under the key's newest version.")
        .body(&[f("key", "string", "the transit key"), f("token", "string", "the token")])
        .ok(&[f("token", "string", "the new token"), f("key_version", "integer", "the newest version")]),
    op("get", p!("/captures/{request_id}"), "vault", Admin, "A captured request/response payload, decrypted.")
        .ok(&[f("request_id", "string", "the request"), f("route", "string", "its route"), f("captured_at", "integer", "epoch seconds"), f("expires_at", "integer", "epoch seconds"), f("request_sha256", "string", "hex"), f("response_sha256", "string", "hex"), f("request_bytes", "integer", "length"), f("response_bytes", "integer", "length"), f("truncated", "boolean", "whether cut at the capture limit"), f("request_base64", "string", "the request body"), f("response_base64", "string", "the response body")]),
    // Analytics.
    op("get", p!("/alerts"), "analytics", Admin, "Behavioral-analytics alerts, newest first.")
        .query(&[opt("open", "boolean", "only unresolved alerts"), opt("limit", "integer", "how many")])
        .ok(&[f("alerts", "ref:Alert[]", "newest first")]),
    op("get", p!("/alerts/{id}"), "analytics", Admin, "One alert with its reasons, features and requests.")
        .named("Alert"),
    op("post", p!("/alerts/{id}/resolve"), "analytics", Admin, "Resolve an alert; a `benign` verdict teaches the model and needs a fresh TOTP once admins have enrolled.")
        .body(&[f("verdict", "string", "`benign` or `malicious`")])
        .named("Alert"),
    // Red team.
    op("post", p!("/redteam/runs"), "redteam", Admin, "Keep a `portcullis redteam` scorecard and audit it (`redteam.held`, or `redteam.failed` naming the failed families).")
        .body(&[f("run_id", "string", "the run's id (1 to 64 of `0-9a-z-`)"), f("agent", "string", "the attacking agent"), f("gateway", "string", "the gateway attacked"), f("started_ms", "integer", "start, ms since the epoch"), f("finished_ms", "integer", "end, ms since the epoch"), f("held", "integer", "families held"), f("failed", "integer", "families failed"), f("skipped", "integer", "families skipped"), f("families", "array", "per family: `family`, `verdict`, `reason`, `probes` with their evidence")])
        .created()
        .ok(&[f("run_id", "string", "the run"), f("request_id", "string", "the audit record's request id"), f("audit_action", "string", "`redteam.held` or `redteam.failed`"), f("failed_families", "string[]", "the failed families")]),
    op("get", p!("/redteam/runs"), "redteam", Admin, "Recorded red-team runs, newest first (without their probes).")
        .query(&[opt("limit", "integer", "how many (1 to 1000, default 20)")])
        .ok(&[f("runs", "ref:RedteamRun[]", "newest first")]),
    op("get", p!("/redteam/runs/{run_id}"), "redteam", Admin, "One red-team run with its whole scorecard.")
        .extends("RedteamRun", &[f("report", "object", "the scorecard as posted")]),
    // Identity.
    op("post", p!("/tokens/revoke"), "identity", StepUp, "Revoke an issued access token by `jti`.")
        .body(&[f("jti", "string", "the token id"), opt("reason", "string", "why")])
        .ok(&[f("revoked", "string", "the `jti`")]),
    op("get", p!("/tokens/revoked"), "identity", Admin, "List revoked tokens.")
        .list(&[f("jti", "string", "the token id"), f("revoked_at", "integer", "epoch seconds"), f("expires_at", "integer", "epoch seconds"), f("reason", "string?", "why")]),
    op("get", p!("/oauth/clients"), "identity", Admin, "OAuth clients of MCP authorization (dynamic registration), revoked ones too.")
        .list(&[f("client_id", "string", "the client"), f("client_name", "string?", "its name"), f("redirect_uris", "string[]", "its redirect URIs"), f("created_at", "integer", "epoch seconds"), f("registered_by", "string?", "who registered it"), f("revoked_at", "integer?", "epoch seconds")]),
    op("post", p!("/oauth/clients/{client_id}/revoke"), "identity", StepUp, "Revoke an OAuth client: it can no longer authorize or refresh, and its live tokens stop working at once.")
        .ok(&[f("revoked", "string", "the client")]),
    op("post", p!("/users/disable"), "identity", StepUp, "Disable a delegating user (by OIDC subject).")
        .body(&[f("subject", "string", "the user's subject"), opt("reason", "string", "why")])
        .ok(&[f("subject", "string", "the user"), f("disabled", "boolean", "`true`")]),
    op("post", p!("/users/enable"), "identity", StepUp, "Enable a disabled user again.")
        .body(&[f("subject", "string", "the user's subject"), opt("reason", "string", "why")])
        .ok(&[f("subject", "string", "the user"), f("disabled", "boolean", "`false`")]),
    op("get", p!("/users/disabled"), "identity", Admin, "List disabled users.")
        .list(&[f("subject", "string", "the user"), f("disabled_at", "integer", "epoch seconds"), f("reason", "string?", "why")]),
    // MCP tools.
    op("get", p!("/tools"), "tools", Admin, "MCP tool pins: each tool's seen and approved definition digests and scan findings.")
        .ok(&[f("tools", "ref:Tool[]", "every pinned tool")]),
    op("post", p!("/tools/approve"), "tools", StepUp, "Approve a tool definition by its full digest (the one reviewed).")
        .body(&[f("route", "string", "the MCP route"), f("name", "string", "the tool"), f("digest", "string", "the full digest of the reviewed definition")])
        .named("Tool"),
    // The model and dataset registries.
    op("get", p!("/models"), "governance", Admin, "Registered model versions with lifecycle, digest and whether their signature verified.")
        .ok(&[f("models", "ref:Model[]", "every version")]),
    op("post", p!("/models"), "governance", Admin, "Register a model version as a draft; a signature bundle must verify against `[[models.trusted_keys]]` and name the digest.")
        .body(&[f("name", "string", "registry name"), f("version", "string", "version"), f("digest", "string", "`sha256:<hex>` of the artifact"), opt("signature", "object", "Sigstore bundle or DSSE envelope over an in-toto statement"), opt("provenance", "object", "in-toto / SLSA provenance statement naming the digest"), opt("eval", "object", "evaluation report, stored as evidence")])
        .created()
        .named("Model"),
    op("get", p!("/models/{name}/{version}"), "governance", Admin, "One model version with its evidence (signature bundle, provenance, eval).")
        .extends("Model", &[f("signature", "object?", "the signature bundle"), f("provenance", "object?", "the provenance statement"), f("eval", "object?", "the evaluation evidence")]),
    op("post", p!("/models/{name}/{version}/{step}"), "governance", StepUp, "Move a model version along its lifecycle: `approve` (a draft), `deprecate` (an approved one) or `revoke` (any, final).")
        .named("Model"),
    op("get", p!("/datasets"), "governance", Admin, "Registered datasets.")
        .ok(&[f("datasets", "ref:Dataset[]", "every dataset")]),
    op("post", p!("/datasets"), "governance", Admin, "Register a dataset as a draft.")
        .body(&[f("name", "string", "dataset name"), f("owner", "string", "accountable owner"), f("classification", "string", "public, internal, confidential or restricted"), f("source", "string", "where the data came from"), f("licence", "string", "licence"), f("collected", "string", "collection date, YYYY-MM-DD"), f("consent_basis", "string", "consent, contract, legal_obligation, vital_interests, public_task, legitimate_interests or none"), f("retention_days", "integer", "how long data may be kept"), opt("purposes", "array", "allowed purposes")])
        .created()
        .named("Dataset"),
    op("get", p!("/datasets/report"), "governance", Admin, "Per dataset: captured payloads and audit personal data of its routes kept past its retention.")
        .ok(&[f("report", "object[]", "per dataset: `dataset`, `retention_days`, `routes`, `overdue` (per route: `route`, `captures`, `personal_records`, `oldest_at`)")]),
    op("get", p!("/datasets/{name}"), "governance", Admin, "One dataset.")
        .named("Dataset"),
    op("post", p!("/datasets/{name}/{step}"), "governance", StepUp, "Move a dataset along its lifecycle: `approve` (a draft), `deprecate` (an approved one) or `revoke` (any, final: nobody reads a revoked dataset).")
        .named("Dataset"),
    // Policies.
    op("get", p!("/policies"), "policies", Admin, "Every stored policy version, and which is active or shadow.")
        .ok(&[f("active", "integer?", "the active version"), f("shadow", "integer?", "the shadow version"), f("versions", "ref:PolicyVersion[]", "every version")]),
    op("post", p!("/policies"), "policies", StepUp, "Push a policy set: validated, stored and activated (or evaluated in shadow).")
        .body(&[f("files", "map", "file name to text, `schema.cedarschema` included"), opt("message", "string", "what changed"), opt("author", "string", "who (the verified admin when step-up applies)"), opt("shadow", "boolean", "evaluate beside the active version instead of activating")])
        .named("PolicyChange"),
    op("post", p!("/policies/rollback"), "policies", StepUp, "Activate an earlier version again.")
        .body(&[opt("version", "integer", "the version (default: the one before the active version)")])
        .named("PolicyChange"),
    op("post", p!("/policies/explain"), "policies", Admin, "Decide a described request with the active version and say why.")
        .body(&[f("agent", "string", "the agent"), f("action", "string", "the action (`GET`, `call_tool`, `complete`, …)"), f("resource", "string", "the route, `route/tool` or `route/model`"), opt("context", "object", "request facts (time, source IP, content, …)")])
        .ok(&[f("policy_version", "integer", "the version that decided"), f("action", "string", "the action asked"), opt("allowed", "boolean", "the decision (one request)"), opt("deciding", "string[]", "the policies that decided"), opt("errors", "string[]", "evaluation errors"), opt("policies", "object[]", "every policy's trace"), opt("models", "object[]", "one explanation per model (an LLM listing)")]),
    op("get", p!("/policies/shadow"), "policies", Admin, "The shadow candidate's disagreements with the active version.")
        .ok(&[f("active", "integer?", "the active version"), f("shadow", "integer?", "the shadow version, if any"), opt("decided", "integer", "requests decided by both"), opt("allow_to_deny", "integer", "allowed now, denied by the candidate"), opt("deny_to_allow", "integer", "denied now, allowed by the candidate"), opt("recent", "object[]", "the latest disagreements")]),
    op("delete", p!("/policies/shadow"), "policies", StepUp, "Stop shadow evaluation.")
        .ok(&[f("stopped", "integer?", "the version that was in shadow")]),
    op("post", p!("/policies/whatif"), "policies", Admin, "Re-decide recorded requests under a candidate set and list the changed ones.")
        .body(&[f("files", "map", "the candidate's files, `schema.cedarschema` included"), f("since_ms", "integer", "replay requests recorded from this time on")])
        .ok(&[f("active", "integer", "the active version compared with"), f("replayed", "integer", "requests re-decided"), f("skipped", "integer", "requests left out"), f("not_replayable", "object", "records that cannot be replayed, by reason"), f("args_unknown", "integer", "MCP calls decided without their arguments"), f("allow_to_deny", "integer", "allowed now, denied by the candidate"), f("deny_to_allow", "integer", "denied now, allowed by the candidate"), f("models_changed", "integer", "model listings that would differ"), f("truncated", "boolean", "more records matched than were replayed"), f("changes", "object[]", "the changed requests")]),
    op("get", p!("/policies/{version}"), "policies", Admin, "One stored version with its files.")
        .named("PolicyVersion"),
    // Approvals.
    op("get", p!("/approvals"), "approvals", Admin, "Live approval tickets (pending, approved-unused, denied), each with the whole bound call.")
        .ok(&[f("approvals", "ref:Approval[]", "live tickets")]),
    op("get", p!("/approvals/{id}"), "approvals", Admin, "One ticket: method, path, query, bound headers, body digest and preview (or tool and arguments, or model).")
        .named("Approval"),
    op("post", p!("/approvals/{id}/approve"), "approvals", StepUp, "Approve this exact call once; with `ttl_seconds`, also grant the agent that action for that long.")
        .body(&[opt("ttl_seconds", "integer", "grant length (1 to 86400)")])
        .named("Approval"),
    op("post", p!("/approvals/{id}/deny"), "approvals", StepUp, "Deny a ticket.")
        .named("Approval"),
    op("get", p!("/grants"), "approvals", Admin, "Live time-boxed grants.")
        .ok(&[f("grants", "ref:Grant[]", "live grants")]),
    op("post", p!("/grants/{id}/revoke"), "approvals", StepUp, "End a grant (or a break-glass) now.")
        .ok(&[f("revoked", "string", "the grant")]),
    op("post", p!("/breakglass"), "approvals", Admin, "Emergency access for one agent for a while: two distinct admins' TOTP codes in the body.")
        .body(&[f("agent", "string", "the agent"), f("reason", "string", "why"), f("ttl_seconds", "integer", "how long"), f("approvers", "object[]", "two `{user, totp}` confirmations")])
        .named("Grant"),
];

/// The OpenAPI 3.1 document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for o in OPERATIONS {
        let entry = paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
        entry[o.method] = operation(o);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portcullis admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The control plane of the Portcullis gateway, on its own TLS listener. \
                Callers authenticate with an admin bearer token or an admin client certificate (mTLS). \
                Errors share one shape: `{\"error\": {\"code\", \"message\", \"request_id\"}}` with the \
                stable codes of docs/errors.md. Every change and every refused call is audited.",
        },
        "servers": [{ "url": "https://127.0.0.1:9443" }],
        "security": [{ "adminToken": [] }, { "adminCertificate": [] }],
        "tags": tags().iter().map(|t| json!({ "name": t })).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token (`admin.token` in the state directory).",
                },
                "adminCertificate": {
                    "type": "mutualTLS",
                    "description": "A client certificate issued by `POST /admin/v1/admin-certificates` (`portcullis admin cert create`), presented in the TLS handshake.",
                },
                "stepUpUser": { "type": "apiKey", "in": "header", "name": crate::mfa::USER_HEADER },
                "stepUpTotp": { "type": "apiKey", "in": "header", "name": crate::mfa::TOTP_HEADER },
            },
            "schemas": schemas(),
        },
    })
}

/// The shared schemas: the error shape and [`COMPONENTS`].
fn schemas() -> Value {
    let mut schemas = Map::new();
    for (name, fields) in COMPONENTS {
        schemas.insert(name.to_string(), object_schema(fields.iter()));
    }
    schemas.insert("Error".to_string(), error_schema());
    Value::Object(schemas)
}

/// `{"error": {"code", "message", "request_id"}}`: `ApiError` in
/// `api/call.rs`, the data plane's shape.
fn error_schema() -> Value {
    json!(
                {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": {
                        "type": "object",
                        "required": ["code", "message", "request_id"],
                        "properties": {
                            "code": { "type": "string", "description": "a stable code of docs/errors.md" },
                            "message": { "type": "string" },
                            "request_id": { "type": "string" },
                            "retry_after": { "type": "integer", "description": "seconds, on throttled calls" },
                        },
                    }},
                }
    )
}

fn tags() -> Vec<&'static str> {
    let mut tags: Vec<&str> = Vec::new();
    for o in OPERATIONS {
        if !tags.contains(&o.tag) {
            tags.push(o.tag);
        }
    }
    tags
}

/// The JSON schema of a field type: `string`, `integer`, `number`,
/// `boolean`, `object`, `any`, `map` (an object of strings), `ref:Name` (a
/// component); `T[]` is an array of `T`, and `T?` also allows `null`.
fn schema(ty: &str) -> Value {
    if let Some(inner) = ty.strip_suffix('?') {
        let inner = schema(inner);
        return match inner["type"].as_str() {
            Some(t) => {
                let mut nullable = inner.clone();
                nullable["type"] = json!([t, "null"]);
                nullable
            }
            None => json!({ "anyOf": [inner, { "type": "null" }] }),
        };
    }
    if let Some(item) = ty.strip_suffix("[]") {
        return json!({ "type": "array", "items": schema(item) });
    }
    if let Some(name) = ty.strip_prefix("ref:") {
        return json!({ "$ref": format!("#/components/schemas/{name}") });
    }
    match ty {
        "map" => json!({ "type": "object", "additionalProperties": { "type": "string" } }),
        "any" => json!({}),
        other => json!({ "type": other }),
    }
}

/// An object schema with `fields` (unknown fields allowed: fields are
/// added, never renamed).
fn object_schema<'a>(fields: impl IntoIterator<Item = &'a Field>) -> Value {
    let fields: Vec<&Field> = fields.into_iter().collect();
    let properties: Map<String, Value> = fields
        .iter()
        .map(|b| {
            let mut s = schema(b.ty);
            if s.get("$ref").is_none() {
                s["description"] = b.doc.into();
            }
            (b.name.to_string(), s)
        })
        .collect();
    let required: Vec<&str> = fields
        .iter()
        .filter(|b| b.required)
        .map(|b| b.name)
        .collect();
    json!({ "type": "object", "required": required, "properties": properties })
}

/// The schema of an operation's success answer.
fn answer_schema(o: &Operation) -> Value {
    if o.answers != JSON {
        return json!({ "type": "string" });
    }
    match o.answer {
        Answer::Unspecified => json!({ "type": "object" }),
        Answer::Object(fields) => object_schema(fields),
        Answer::List(fields) => json!({ "type": "array", "items": object_schema(fields) }),
        Answer::Named(name) => schema(&format!("ref:{name}")),
        // Flattened rather than `allOf`, so the combined object can be
        // checked as closed (the answers test does).
        Answer::Extends(name, fields) => object_schema(
            COMPONENTS
                .iter()
                .filter(|(n, _)| *n == name)
                .flat_map(|(_, base)| base.iter())
                .chain(fields.iter()),
        ),
    }
}

fn operation(o: &Operation) -> Value {
    let mut parameters: Vec<Value> = o
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    parameters.extend(o.query.iter().map(|q| {
        json!({ "name": q.name, "in": "query", "required": q.required, "description": q.doc, "schema": schema(q.ty) })
    }));
    let mut value = json!({
        "tags": [o.tag],
        "summary": o.summary,
        "operationId": operation_id(o),
        "responses": {
            o.status.to_string(): { "description": "success", "content": { o.answers: { "schema": answer_schema(o) } } },
            "default": { "description": "an error", "content": { JSON: { "schema": { "$ref": "#/components/schemas/Error" } } } },
        },
    });
    if !parameters.is_empty() {
        value["parameters"] = Value::Array(parameters);
    }
    if let Some(fields) = o.body {
        let properties: Map<String, Value> = fields
            .iter()
            .map(|b| {
                let mut s = schema(b.ty);
                s["description"] = b.doc.into();
                (b.name.to_string(), s)
            })
            .collect();
        let required: Vec<&str> = fields
            .iter()
            .filter(|b| b.required)
            .map(|b| b.name)
            .collect();
        value["requestBody"] = json!({
            "required": !required.is_empty(),
            "content": { JSON: { "schema": {
                "type": "object",
                "additionalProperties": false,
                "required": required,
                "properties": properties,
            }}},
        });
    }
    match o.access {
        Public => value["security"] = json!([]),
        Admin => {}
        StepUp => {
            value["security"] = json!([{ "adminToken": [], "stepUpUser": [], "stepUpTotp": [] }, { "adminToken": [] }, { "adminCertificate": [], "stepUpUser": [], "stepUpTotp": [] }, { "adminCertificate": [] }]);
            value["x-portcullis-step-up"] = json!(true);
            value["description"] = "Sensitive: once any admin has enrolled (or with `[admin] require_mfa`), \
                the call also needs `X-Portcullis-User` and a fresh `X-Portcullis-TOTP`; a code is consumed \
                only when the call succeeds."
                .into();
        }
    }
    value
}

/// `get_agents_name_revoke` for `POST /admin/v1/agents/{name}/revoke`.
fn operation_id(o: &Operation) -> String {
    let path = o.path.strip_prefix(V).unwrap_or(o.path);
    let mut id = o.method.to_string();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            seg.chars()
                .filter(|c| !matches!(c, '{' | '}'))
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

/// The reference page, `docs/admin-api.md`, made from the document (by the
/// test that keeps the committed file current).
#[cfg(test)]
pub(crate) fn markdown(doc: &Value) -> String {
    let mut out = String::from(
        "# Admin API reference\n\n\
         <!-- Generated from the OpenAPI document (crates/admin/src/openapi.rs); do not edit. \
         Regenerate: PORTCULLIS_WRITE_DOCS=1 cargo test -p portcullis-admin openapi -->\n\n\
         The admin API listens on its own TLS listener (`[admin] listen`, default `127.0.0.1:9443`). \
         The machine-readable description is served at `GET /admin/v1/openapi.json` (OpenAPI 3.1). \
         Every call except the probes needs `Authorization: Bearer <admin token>`, or an admin client \
         certificate (`portcullis admin cert create`) presented over mTLS. \
         Calls marked **step-up** also need `X-Portcullis-User` and a fresh `X-Portcullis-TOTP` once \
         any admin has enrolled. Errors: `{\"error\": {\"code\", \"message\", \"request_id\"}}` with the \
         codes of [errors.md](errors.md).\n",
    );
    let empty = Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    for tag in doc["tags"].as_array().into_iter().flatten() {
        let tag = tag["name"].as_str().unwrap_or_default();
        out.push_str(&format!(
            "\n## {tag}\n\n| method | path | what |\n| --- | --- | --- |\n"
        ));
        let mut details = String::new();
        for (path, ops) in paths {
            for (method, o) in ops.as_object().unwrap_or(&empty) {
                if o["tags"][0] != tag {
                    continue;
                }
                let step_up = if o["x-portcullis-step-up"] == true {
                    " **step-up**"
                } else {
                    ""
                };
                let public = if o["security"] == json!([]) {
                    " (no token)"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "| `{}` | `{path}` | {}{step_up}{public} |\n",
                    method.to_uppercase(),
                    o["summary"]
                        .as_str()
                        .unwrap_or_default()
                        .replace('|', "\\|")
                ));
                let params: Vec<String> = o["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "query")
                    .map(|p| {
                        format!(
                            "`{}` ({}{}): {}",
                            p["name"].as_str().unwrap_or_default(),
                            p["schema"]["type"].as_str().unwrap_or_default(),
                            if p["required"] == true {
                                ", required"
                            } else {
                                ""
                            },
                            p["description"].as_str().unwrap_or_default()
                        )
                    })
                    .collect();
                let body = &o["requestBody"]["content"][JSON]["schema"];
                let required: Vec<&str> = body["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let fields: Vec<String> = body["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, s)| {
                        format!(
                            "`{name}` ({}{}): {}",
                            s["type"].as_str().unwrap_or_default(),
                            if required.contains(&name.as_str()) {
                                ", required"
                            } else {
                                ""
                            },
                            s["description"].as_str().unwrap_or_default()
                        )
                    })
                    .collect();
                details.push_str(&format!("\n`{} {path}`\n", method.to_uppercase()));
                for p in params {
                    details.push_str(&format!("- query {p}\n"));
                }
                for b in fields {
                    details.push_str(&format!("- body {b}\n"));
                }
                for (status, r) in o["responses"].as_object().into_iter().flatten() {
                    if status == "default" {
                        continue;
                    }
                    for (media, c) in r["content"].as_object().into_iter().flatten() {
                        details.push_str(&format!(
                            "- answers {status} `{media}`: {}\n",
                            describe(&c["schema"])
                        ));
                    }
                }
            }
        }
        out.push_str(&details);
    }
    out.push_str(
        "\n## Answer schemas\n\nShared by several operations (`components/schemas` of the document). \
         Fields may be added to any answer, never renamed: clients ignore fields they do not know.\n",
    );
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("\n`{name}`: {}\n", describe(schema)));
    }
    out
}

/// A schema in a few words, for the reference page: a component's name, a
/// type, or an object's fields (`?` when optional).
#[cfg(test)]
fn describe(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        return format!("`{}`", r.rsplit('/').next().unwrap_or(r));
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().map(describe).collect::<Vec<_>>().join(" and ");
    }
    if let Some(any) = schema["anyOf"].as_array() {
        return any.iter().map(describe).collect::<Vec<_>>().join(" or ");
    }
    let ty = match &schema["type"] {
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        Value::String(t) => t.clone(),
        _ => "any".to_string(),
    };
    if ty == "array" {
        return format!("array of {}", describe(&schema["items"]));
    }
    let Some(properties) = schema["properties"].as_object() else {
        return ty;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let fields: Vec<String> = properties
        .iter()
        .map(|(name, s)| {
            let optional = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            format!("`{name}`{optional} ({})", describe(s))
        })
        .collect();
    format!("object with {}", fields.join(", "))
}

/// `GET /admin/v1/openapi.json`.
pub(crate) async fn serve() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON)],
        document().to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The (method, path) pairs a router serves, read from the router
    /// itself: axum's `Debug` lists each route's path (`paths: {RouteId(n):
    /// "/x"}`) and its method router's `Allow` header (`allow_header:
    /// Bytes(b"GET,HEAD,POST")`), keyed by the same route id.
    fn served(
        router: &axum::Router<crate::api::AdminState>,
        prefix: &str,
    ) -> BTreeSet<(String, String)> {
        let whole = format!("{router:?}");
        // The fallback router has route ids of its own: read only the routes.
        let debug = whole.split("fallback_router").next().unwrap_or_default();
        let mut allow = std::collections::HashMap::new();
        let mut paths = std::collections::HashMap::new();
        let mut rest = debug;
        while let Some(at) = rest.find("RouteId(") {
            rest = &rest[at + "RouteId(".len()..];
            let Some(close) = rest.find(')') else { break };
            let id = rest[..close].to_string();
            let after = &rest[close + 1..];
            if let Some(path) = after.strip_prefix(": \"") {
                paths.insert(id, path[..path.find('"').unwrap()].to_string());
            } else if after.starts_with(": MethodRouter") {
                let methods = after
                    .find("allow_header: Bytes(b\"")
                    .map(|i| &after[i + "allow_header: Bytes(b\"".len()..])
                    .map(|s| s[..s.find('"').unwrap()].to_string())
                    .expect("a method router's allow header");
                allow.insert(id, methods);
            }
        }
        assert!(!paths.is_empty(), "axum's Debug output changed: {debug}");
        let mut served = BTreeSet::new();
        for (id, path) in paths {
            let methods = allow
                .get(&id)
                .unwrap_or_else(|| panic!("no methods for {path}"));
            for m in methods.split(',').filter(|m| *m != "HEAD") {
                served.insert((m.to_ascii_lowercase(), format!("{prefix}{path}")));
            }
        }
        served
    }

    #[test]
    fn every_route_of_the_router_is_in_the_document_and_no_other() {
        let mut routes = served(&crate::api::api_routes(), V);
        routes.extend(served(&crate::api::probe_routes(), ""));
        assert!(routes.len() > 50, "{routes:?}");
        let documented: BTreeSet<(String, String)> = OPERATIONS
            .iter()
            .map(|o| (o.method.to_string(), o.path.to_string()))
            .collect();
        let missing: Vec<_> = routes.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document (openapi.rs OPERATIONS): {missing:?}"
        );
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(
            extra.is_empty(),
            "documented operations the router does not serve: {extra:?}"
        );
        assert_eq!(
            documented.len(),
            OPERATIONS.len(),
            "an operation is listed twice"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_unique_operation_ids() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, o) in ops.as_object().unwrap() {
                assert!(
                    ids.insert(o["operationId"].as_str().unwrap().to_string()),
                    "{method} {path}"
                );
                // Every `{param}` of the path is declared.
                for seg in path.split('/').filter(|s| s.starts_with('{')) {
                    let name = seg.trim_matches(|c| c == '{' || c == '}');
                    assert!(
                        o["parameters"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p["name"] == name && p["in"] == "path"),
                        "{method} {path}: {name}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_json_answer_has_a_schema_and_every_reference_resolves() {
        let unspecified: Vec<String> = OPERATIONS
            .iter()
            .filter(|o| o.answers == JSON && matches!(o.answer, Answer::Unspecified))
            .map(|o| format!("{} {}", o.method, o.path))
            .collect();
        assert!(
            unspecified.is_empty(),
            "operations without an answer schema (openapi.rs `.ok`, `.list`, `.named`): {unspecified:?}"
        );
        let doc = document();
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let name = reference
                .split('"')
                .next()
                .unwrap()
                .trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "`{name}` is referenced but not a component"
            );
        }
        // The success status is the one the handler answers with.
        assert!(doc["paths"]["/admin/v1/admin-tokens"]["post"]["responses"]["201"].is_object());
        assert!(doc["paths"]["/admin/v1/agents"]["get"]["responses"]["200"].is_object());
    }

    #[test]
    fn docs_admin_api_md_is_generated_from_the_document() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/admin-api.md");
        let want = markdown(&document());
        if std::env::var_os("PORTCULLIS_WRITE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/admin-api.md is not current: run `PORTCULLIS_WRITE_DOCS=1 cargo test -p portcullis-admin openapi`"
        );
    }
}
