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
}

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
    op("get", "/healthz", "probes", Public, "Liveness: the process answers."),
    op("get", "/readyz", "probes", Public, "Readiness: `ready`, or `not_ready` with every raised reason (audit halted or unwritable, a refused policy load, an unavailable vault credential)."),
    op("get", "/metrics", "probes", Public, "Prometheus metrics, in OpenMetrics or (for `Accept: text/plain`) the text format 0.0.4.")
        .answers("application/openmetrics-text"),
    op("get", p!("/openapi.json"), "meta", Admin, "This OpenAPI 3.1 description of the admin API."),
    // Agents.
    op("post", p!("/agents"), "agents", Admin, "Create an agent and issue its first certificate from a CSR (and optionally register a signing key for the token endpoint).")
        .body(&[f("name", "string", "the agent's name"), f("roles", "string[]", "its roles (Cedar `Role` entities)"), f("csr_pem", "string", "a PKCS#10 CSR, PEM"), opt("ttl_seconds", "integer", "certificate lifetime"), opt("jwk", "object", "a public JWK for the token endpoint")]),
    op("get", p!("/agents"), "agents", Admin, "List agents with their status, certificates, keys, expiry and last authentication."),
    op("get", p!("/agents/{name}"), "agents", Admin, "One agent, with its analytics (risk, grade, history, quarantines) when analytics is on."),
    op("post", p!("/agents/{name}/revoke"), "agents", StepUp, "Revoke an agent: its certificates and keys stop authenticating before the call returns."),
    op("post", p!("/agents/{name}/certificates"), "agents", Admin, "Issue a fresh certificate for an agent from a CSR.")
        .body(&[f("csr_pem", "string", "a PKCS#10 CSR, PEM"), opt("ttl_seconds", "integer", "certificate lifetime")]),
    op("post", p!("/agents/{name}/keys"), "agents", Admin, "Register another signing key (public JWK) for the token endpoint.")
        .body(&[f("jwk", "object", "the public JWK")]),
    op("post", p!("/agents/{name}/release"), "agents", StepUp, "Release an agent from quarantine (behavioral analytics)."),
    op("post", p!("/agents/{name}/posture"), "agents", StepUp, "Pin an agent's workload posture: the digest it must present and the networks it may come from.")
        .body(&[f("digest", "string", "the expected posture digest"), opt("networks", "string[]", "allowed source networks (CIDR)")]),
    // Admin credentials and the caller's session (step-up window).
    op("get", p!("/admin-tokens"), "admin-tokens", Admin, "List admin credentials (name, role, status, history); never their tokens."),
    op("post", p!("/admin-tokens"), "admin-tokens", StepUp, "Create a named admin credential with a role; the token is returned once.")
        .body(&[f("name", "string", "the credential's unique name"), f("role", "string", "owner, operator, policy-author, approver or auditor")]),
    op("post", p!("/admin-tokens/{name}/rotate"), "admin-tokens", StepUp, "Replace a credential's token; the old one is refused from the next request. The new token is returned once."),
    op("post", p!("/admin-tokens/{name}/revoke"), "admin-tokens", StepUp, "Revoke a credential (never the last owner); refused from the next request."),
    op("get", p!("/session"), "session", Admin, "Who is calling: the credential's name and role, and the open step-up window if any."),
    op("post", p!("/session/step-up"), "session", Admin, "Open a step-up window with one TOTP confirmation (headers X-Portcullis-User and X-Portcullis-TOTP)."),
    op("delete", p!("/session/step-up"), "session", Admin, "Close the caller's step-up window."),
    // Admins.
    op("post", p!("/admins"), "admins", StepUp, "Enrol a human admin: returns their TOTP secret and `otpauth://` URI once.")
        .body(&[f("name", "string", "the admin's name")]),
    op("get", p!("/admins"), "admins", Admin, "List enrolled admins."),
    op("delete", p!("/admins/{name}"), "admins", StepUp, "Remove an enrolled admin."),
    // Audit.
    op("get", p!("/audit"), "audit", Admin, "The newest audit records, oldest first.")
        .query(&[opt("limit", "integer", "how many (1 to 10000, default 20)")]),
    op("get", p!("/audit/checkpoint"), "audit", Admin, "The latest signed checkpoint, with the log's origin and verifier key."),
    op("post", p!("/audit/checkpoint"), "audit", Admin, "Sign a checkpoint now (if the log grew)."),
    op("get", p!("/audit/checkpoints"), "audit", Admin, "Every stored checkpoint, smallest first."),
    op("get", p!("/audit/records/{id}"), "audit", Admin, "One record by seq or request id, with its exact leaf bytes and leaf hash."),
    op("get", p!("/audit/proof/inclusion"), "audit", Admin, "The inclusion proof of a record in a signed tree.")
        .query(&[f("id", "string", "the record's seq or request id"), opt("tree_size", "integer", "the checkpoint's tree size (default: the latest)")]),
    op("get", p!("/audit/proof/consistency"), "audit", Admin, "The consistency proof between two signed tree sizes.")
        .query(&[f("from", "integer", "the older tree size"), opt("to", "integer", "the newer tree size (default: the latest checkpoint)")]),
    op("get", p!("/audit/export"), "audit", Admin, "Export records as JSON lines, streamed.")
        .query(&[opt("from", "integer", "first seq"), opt("to", "integer", "end seq (exclusive)")])
        .answers("application/jsonl"),
    op("get", p!("/inventory"), "audit", Admin, "The data-flow inventory: identities, resources, and who reached what (requests, allowed, denied, highest classification).")
        .query(&[opt("since_ms", "integer", "window start, ms since the epoch")]),
    // Vault.
    op("get", p!("/secrets"), "vault", Admin, "List secrets (names and metadata, never values)."),
    op("post", p!("/secrets"), "vault", Admin, "Store a secret.")
        .body(&[f("name", "string", "the secret's name"), opt("value", "string", "the value as text"), opt("value_base64", "string", "the value as base64"), opt("rotation_period_s", "integer", "rotate every this many seconds"), opt("grace_period_s", "integer", "keep the previous version this long"), opt("hook", "object", "the rotation hook")]),
    op("get", p!("/secrets/{name}"), "vault", Admin, "One secret's metadata and versions (never its value)."),
    op("delete", p!("/secrets/{name}"), "vault", Admin, "Delete a secret."),
    op("post", p!("/secrets/{name}/rotate"), "vault", Admin, "Rotate a secret to a new value (or let its hook make one).")
        .body(&[opt("value", "string", "the new value as text"), opt("value_base64", "string", "the new value as base64"), opt("expected_version", "integer", "refuse unless this is the current version")]),
    op("post", p!("/secrets/{name}/settings"), "vault", Admin, "Change a secret's rotation settings.")
        .body(&[opt("rotation_period_s", "integer", "rotation period"), opt("grace_period_s", "integer", "grace period"), opt("hook", "object", "the rotation hook")]),
    op("get", p!("/vault"), "vault", Admin, "The vault's status: key-encryption key, counts, rotation due."),
    op("post", p!("/vault/rekey"), "vault", Admin, "Re-seal every value under a new key-encryption key.")
        .body(&[f("new_kek", "string", "the new KEK (base64)")]),
    op("get", p!("/transit/keys"), "vault", Admin, "List transit keys."),
    op("post", p!("/transit/keys"), "vault", Admin, "Create a transit key.")
        .body(&[f("name", "string", "the key's name"), opt("key", "string", "import this key (base64) instead of generating one"), opt("exportable", "boolean", "whether it may be exported")]),
    op("post", p!("/transit/keys/{name}/rotate"), "vault", Admin, "Rotate a transit key.")
        .body(&[opt("key", "string", "import this key (base64) as the new version")]),
    op("post", p!("/transit/keys/{name}/export"), "vault", StepUp, "Export an exportable transit key."),
    op("post", p!("/transit/encrypt"), "vault", Admin, "Encrypt with a transit key (a Fernet token).")
        .body(&[f("key", "string", "the transit key"), f("plaintext", "string", "base64 plaintext")]),
    op("post", p!("/transit/decrypt"), "vault", Admin, "Decrypt a transit token.")
        .body(&[f("key", "string", "the transit key"), f("token", "string", "the token")]),
    op("post", p!("/transit/rewrap"), "vault", Admin, "Re-encrypt a token under the key's newest version.")
        .body(&[f("key", "string", "the transit key"), f("token", "string", "the token")]),
    op("get", p!("/captures/{request_id}"), "vault", Admin, "A captured request/response payload, decrypted."),
    // Analytics.
    op("get", p!("/alerts"), "analytics", Admin, "Behavioral-analytics alerts, newest first.")
        .query(&[opt("open", "boolean", "only unresolved alerts"), opt("limit", "integer", "how many")]),
    op("get", p!("/alerts/{id}"), "analytics", Admin, "One alert with its reasons, features and requests."),
    op("post", p!("/alerts/{id}/resolve"), "analytics", Admin, "Resolve an alert; a `benign` verdict teaches the model and needs a fresh TOTP once admins have enrolled.")
        .body(&[f("verdict", "string", "`benign` or `malicious`")]),
    // Identity.
    op("post", p!("/tokens/revoke"), "identity", StepUp, "Revoke an issued access token by `jti`.")
        .body(&[f("jti", "string", "the token id"), opt("reason", "string", "why")]),
    op("get", p!("/tokens/revoked"), "identity", Admin, "List revoked tokens."),
    op("get", p!("/oauth/clients"), "identity", Admin, "OAuth clients of MCP authorization (dynamic registration), revoked ones too."),
    op("post", p!("/oauth/clients/{client_id}/revoke"), "identity", StepUp, "Revoke an OAuth client: it can no longer authorize or refresh, and its live tokens stop working at once."),
    op("post", p!("/users/disable"), "identity", StepUp, "Disable a delegating user (by OIDC subject).")
        .body(&[f("subject", "string", "the user's subject"), opt("reason", "string", "why")]),
    op("post", p!("/users/enable"), "identity", StepUp, "Enable a disabled user again.")
        .body(&[f("subject", "string", "the user's subject"), opt("reason", "string", "why")]),
    op("get", p!("/users/disabled"), "identity", Admin, "List disabled users."),
    // MCP tools.
    op("get", p!("/tools"), "tools", Admin, "MCP tool pins: each tool's seen and approved definition digests and scan findings."),
    op("post", p!("/tools/approve"), "tools", StepUp, "Approve a tool definition by its full digest (the one reviewed).")
        .body(&[f("route", "string", "the MCP route"), f("name", "string", "the tool"), f("digest", "string", "the full digest of the reviewed definition")]),
    // The model and dataset registries.
    op("get", p!("/models"), "governance", Admin, "Registered model versions with lifecycle, digest and whether their signature verified."),
    op("post", p!("/models"), "governance", Admin, "Register a model version as a draft; a signature bundle must verify against `[[models.trusted_keys]]` and name the digest.")
        .body(&[f("name", "string", "registry name"), f("version", "string", "version"), f("digest", "string", "`sha256:<hex>` of the artifact"), opt("signature", "object", "Sigstore bundle or DSSE envelope over an in-toto statement"), opt("provenance", "object", "in-toto / SLSA provenance statement naming the digest"), opt("eval", "object", "evaluation report, stored as evidence")]),
    op("get", p!("/models/{name}/{version}"), "governance", Admin, "One model version with its evidence (signature bundle, provenance, eval)."),
    op("post", p!("/models/{name}/{version}/{step}"), "governance", StepUp, "Move a model version along its lifecycle: `approve` (a draft), `deprecate` (an approved one) or `revoke` (any, final)."),
    op("get", p!("/datasets"), "governance", Admin, "Registered datasets."),
    op("post", p!("/datasets"), "governance", Admin, "Register a dataset.")
        .body(&[f("name", "string", "dataset name"), f("owner", "string", "accountable owner"), f("classification", "string", "public, internal, confidential or restricted"), f("source", "string", "where the data came from"), f("licence", "string", "licence"), f("collected", "string", "collection date, YYYY-MM-DD"), f("consent_basis", "string", "consent, contract, legal_obligation, vital_interests, public_task, legitimate_interests or none"), f("retention_days", "integer", "how long data may be kept"), opt("purposes", "array", "allowed purposes")]),
    op("get", p!("/datasets/report"), "governance", Admin, "Per dataset: captured payloads and audit personal data of its routes kept past its retention."),
    op("get", p!("/datasets/{name}"), "governance", Admin, "One dataset."),
    // Policies.
    op("get", p!("/policies"), "policies", Admin, "Every stored policy version, and which is active or shadow."),
    op("post", p!("/policies"), "policies", StepUp, "Push a policy set: validated, stored and activated (or evaluated in shadow).")
        .body(&[f("files", "map", "file name to text, `schema.cedarschema` included"), opt("message", "string", "what changed"), opt("author", "string", "who (the verified admin when step-up applies)"), opt("shadow", "boolean", "evaluate beside the active version instead of activating")]),
    op("post", p!("/policies/rollback"), "policies", StepUp, "Activate an earlier version again.")
        .body(&[opt("version", "integer", "the version (default: the one before the active version)")]),
    op("post", p!("/policies/explain"), "policies", Admin, "Decide a described request with the active version and say why.")
        .body(&[f("agent", "string", "the agent"), f("action", "string", "the action (`GET`, `call_tool`, `complete`, …)"), f("resource", "string", "the route, `route/tool` or `route/model`"), opt("context", "object", "request facts (time, source IP, content, …)")]),
    op("get", p!("/policies/shadow"), "policies", Admin, "The shadow candidate's disagreements with the active version."),
    op("delete", p!("/policies/shadow"), "policies", StepUp, "Stop shadow evaluation."),
    op("post", p!("/policies/whatif"), "policies", Admin, "Re-decide recorded requests under a candidate set and list the changed ones.")
        .body(&[f("files", "map", "the candidate's files, `schema.cedarschema` included"), f("since_ms", "integer", "replay requests recorded from this time on")]),
    op("get", p!("/policies/{version}"), "policies", Admin, "One stored version with its files."),
    // Approvals.
    op("get", p!("/approvals"), "approvals", Admin, "Live approval tickets (pending, approved-unused, denied), each with the whole bound call."),
    op("get", p!("/approvals/{id}"), "approvals", Admin, "One ticket: method, path, query, bound headers, body digest and preview (or tool and arguments, or model)."),
    op("post", p!("/approvals/{id}/approve"), "approvals", StepUp, "Approve this exact call once; with `ttl_seconds`, also grant the agent that action for that long.")
        .body(&[opt("ttl_seconds", "integer", "grant length (1 to 86400)")]),
    op("post", p!("/approvals/{id}/deny"), "approvals", StepUp, "Deny a ticket."),
    op("get", p!("/grants"), "approvals", Admin, "Live time-boxed grants."),
    op("post", p!("/grants/{id}/revoke"), "approvals", StepUp, "End a grant (or a break-glass) now."),
    op("post", p!("/breakglass"), "approvals", Admin, "Emergency access for one agent for a while: two distinct admins' TOTP codes in the body.")
        .body(&[f("agent", "string", "the agent"), f("reason", "string", "why"), f("ttl_seconds", "integer", "how long"), f("approvers", "object[]", "two `{user, totp}` confirmations")]),
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
                Errors share one shape: `{\"error\": {\"code\", \"message\", \"request_id\"}}` with the \
                stable codes of docs/errors.md. Every change and every refused call is audited.",
        },
        "servers": [{ "url": "https://127.0.0.1:9443" }],
        "security": [{ "adminToken": [] }],
        "tags": tags().iter().map(|t| json!({ "name": t })).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token (`admin.token` in the state directory).",
                },
                "stepUpUser": { "type": "apiKey", "in": "header", "name": crate::mfa::USER_HEADER },
                "stepUpTotp": { "type": "apiKey", "in": "header", "name": crate::mfa::TOTP_HEADER },
            },
            "schemas": {
                "Error": {
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
                },
            },
        },
    })
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

fn schema(ty: &str) -> Value {
    match ty {
        "string[]" => json!({ "type": "array", "items": { "type": "string" } }),
        "object[]" => json!({ "type": "array", "items": { "type": "object" } }),
        "map" => json!({ "type": "object", "additionalProperties": { "type": "string" } }),
        other => json!({ "type": other }),
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
            "200": { "description": "success", "content": { o.answers: { "schema": if o.answers == JSON { json!({ "type": "object" }) } else { json!({ "type": "string" }) } } } },
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
            value["security"] = json!([{ "adminToken": [], "stepUpUser": [], "stepUpTotp": [] }, { "adminToken": [] }]);
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
         Every call except the probes needs `Authorization: Bearer <admin token>`. \
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
                if params.is_empty() && fields.is_empty() {
                    continue;
                }
                details.push_str(&format!("\n`{} {path}`\n", method.to_uppercase()));
                for p in params {
                    details.push_str(&format!("- query {p}\n"));
                }
                for b in fields {
                    details.push_str(&format!("- body {b}\n"));
                }
            }
        }
        out.push_str(&details);
    }
    out
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
