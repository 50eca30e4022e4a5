//! Just-in-time approvals: a human in the loop for `@obligation("approval")`,
//! and for the writes of an agent whose risk grade is `approve_writes`
//! (behavioral analytics).
//!
//! When the policies that allowed a request all ask for approval and no grant
//! covers it, or analytics holds the agent's writes, the gateway opens a
//! **ticket** bound to the whole exchange: agent, delegating user, action,
//! route, path, the query string as it will be forwarded, the request headers
//! that change what an upstream does ([`BOUND_HEADERS`]), the SHA-256 and size
//! of the body, per protocol the MCP tool (its canonical arguments are the
//! body) or the LLM model, and the policy version; plus a random nonce (the
//! ticket id) and an expiry. A human approves or denies it (`portcullis
//! approvals approve ID`), having seen all of it: `approvals show ID` prints
//! the method, path and query, the bound headers, the body's size and digest
//! and a short preview of a text body (or the tool's arguments), with the
//! values the DLP scanner flags as secrets masked. An approval is single use:
//! the same call made again consumes it, once; a call that differs in any
//! bound field (`?to=mallory&amount=1000000` instead of `?to=alice&amount=10`,
//! `transfer(100000)` instead of `transfer(100)`) matches no approval and
//! opens a ticket of its own.
//!
//! A call is matched by [`CallBinding::key`], a digest over the exact call;
//! the ticket keeps that key and, for humans, the call with its secrets
//! masked. So what is stored and shown never holds a flagged secret, and a
//! restart still matches the exact call.
//!
//! Tickets live in memory (a mutex never held across IO or an await), so the
//! request path never waits on the disk; every change is written to the store
//! in the background so tickets survive a restart and can be listed.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_guard::dlp::{Kind, Scanner, redact::Redactor};
use portcullis_store::{ApprovalRow, Store};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

/// How long a ticket waits for a decision.
pub const PENDING_TTL: Duration = Duration::from_secs(15 * 60);
/// How long an approval may wait to be used.
pub const APPROVED_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest `Prefer: wait=N` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Most live tickets kept; past it, the oldest pending ones lapse first.
const MAX_TICKETS: usize = 10_000;

/// The purpose a call declares (the gateway's `Portcullis-Purpose` header on
/// HTTP and LLM routes, `_meta` on MCP), bound as if it were a header of
/// this name: it is in the key, shown and stored with the call, and a call
/// without one binds exactly as before purposes existed.
pub const PURPOSE_HEADER: &str = "portcullis-purpose";

/// The request headers an approval binds (name and every value, in the order
/// sent): those that change what an upstream does with the same method, path,
/// query and body. Lower case, sorted. Headers that say *who* calls are not
/// here: the gateway asserts the agent itself and removes its
/// `Authorization`, and route credentials come from the vault.
pub const BOUND_HEADERS: &[&str] = &[
    // How the body's bytes decode.
    "content-encoding",
    // Which part of a resource a PUT writes.
    "content-range",
    // How the body is parsed (JSON, a form, XML, …).
    "content-type",
    // WebDAV: how deep COPY, MOVE and DELETE reach.
    "depth",
    // WebDAV: where COPY and MOVE write.
    "destination",
    // Conditional requests: whether a write happens at all.
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    // WebDAV: whether COPY and MOVE replace what is there.
    "overwrite",
    // SOAP: the operation called.
    "soapaction",
    // AWS JSON APIs (DynamoDB, KMS, …): the operation called.
    "x-amz-target",
    // Method overrides (also refused at the edge): the method really meant.
    "x-http-method",
    "x-http-method-override",
    "x-method-override",
    // Path overrides some frameworks honour: the resource really meant.
    "x-original-url",
    "x-rewrite-url",
];

/// The longest body preview a ticket shows, in bytes (before `…`).
const PREVIEW_BYTES: usize = 2048;
/// How much of a body is scanned for secrets before the preview is cut, so a
/// secret that starts inside the preview is found whole.
const PREVIEW_SCAN_BYTES: usize = 16 * 1024;
/// The longest rendering of an MCP tool's arguments in a one-line summary.
const SUMMARY_ARGUMENTS: usize = 200;

/// Who required a human's approval of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredBy {
    /// A policy's `@obligation("approval")`.
    Policy,
    /// Behavioral analytics: the agent's risk grade holds its writes.
    Analytics,
}

impl RequiredBy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequiredBy::Policy => "policy",
            RequiredBy::Analytics => "analytics",
        }
    }

    fn parse(s: &str) -> RequiredBy {
        match s {
            "analytics" => RequiredBy::Analytics,
            _ => RequiredBy::Policy,
        }
    }
}

/// Who is held and why: what every protocol's binding shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The agent.
    pub agent: String,
    /// The delegating user, if any.
    pub user: Option<String>,
    /// The policy version that decided the call.
    pub policy_version: u64,
    /// The policy that asked (for `RequiredBy::Analytics`, the one that
    /// allowed the call).
    pub policy_id: String,
    /// Who required the approval.
    pub required_by: RequiredBy,
}

/// What a bound call is, beyond its method, path, query, headers and body:
/// per protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallKind {
    /// A request on an HTTP route. `preview`: the start of a text body, as
    /// the approver reads it (secrets masked, control characters escaped, at
    /// most 2 KiB); `None` for an empty or binary body.
    Http {
        /// The body preview.
        preview: Option<String>,
    },
    /// An MCP `tools/call`. Its body (digest and size) is the canonical JSON
    /// of the tool's name and arguments.
    McpTool {
        /// The tool.
        tool: String,
        /// The canonical arguments as the approver reads them (secrets
        /// masked, at most 2 KiB).
        arguments: String,
    },
    /// A completion or an embedding on an LLM route.
    Llm {
        /// The model asked for.
        model: String,
    },
}

impl CallKind {
    /// The stored name.
    pub fn protocol(&self) -> &'static str {
        match self {
            CallKind::Http { .. } => "http",
            CallKind::McpTool { .. } => "mcp",
            CallKind::Llm { .. } => "llm",
        }
    }

    /// The MCP tool or the LLM model.
    fn subject(&self) -> Option<&str> {
        match self {
            CallKind::Http { .. } => None,
            CallKind::McpTool { tool, .. } => Some(tool),
            CallKind::Llm { model } => Some(model),
        }
    }

    /// What the approver reads of the body.
    fn preview(&self) -> Option<&str> {
        match self {
            CallKind::Http { preview } => preview.as_deref(),
            CallKind::McpTool { arguments, .. } => Some(arguments),
            CallKind::Llm { .. } => None,
        }
    }

    fn from_stored(protocol: &str, subject: Option<String>, preview: Option<String>) -> CallKind {
        match protocol {
            "mcp" => CallKind::McpTool {
                tool: subject.unwrap_or_default(),
                arguments: preview.unwrap_or_default(),
            },
            "llm" => CallKind::Llm {
                model: subject.unwrap_or_default(),
            },
            _ => CallKind::Http { preview },
        }
    }
}

/// The SHA-256 and size of a body, taken while the bytes are at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDigest {
    /// SHA-256, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

impl BodyDigest {
    /// The digest of `body`.
    pub fn of(body: &[u8]) -> BodyDigest {
        BodyDigest {
            sha256: hex::encode(Sha256::digest(body)),
            bytes: body.len() as u64,
        }
    }
}

/// The call an approval is bound to. Build it with [`CallBinding::http`],
/// [`CallBinding::mcp_tool`] or [`CallBinding::llm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallBinding {
    /// The agent.
    pub agent: String,
    /// The delegating user, if any.
    pub user: Option<String>,
    /// The HTTP method (the JSON-RPC method of an MCP message, `complete`
    /// or `embed` for an LLM call).
    pub action: String,
    /// The route (`<route>/<tool>` for an MCP tool call).
    pub resource: String,
    /// The request path.
    pub path: String,
    /// The query string exactly as the client sent it and the gateway
    /// forwards it, without the `?`; `None` when the URI has none (`Some("")`
    /// for a bare `?`, which is forwarded as such).
    pub query: Option<String>,
    /// The [`BOUND_HEADERS`] the request carries: lower-case name and value,
    /// by name, each name's values in the order sent. A value's bytes outside
    /// printable ASCII, and `%`, are written `%XX`, so the text is exact.
    pub headers: Vec<(String, String)>,
    /// SHA-256 (hex) of the body (of the tool's name and canonical
    /// arguments, for an MCP tool call).
    pub body_sha256: String,
    /// The body's size in bytes.
    pub body_bytes: u64,
    /// Per protocol: the body preview, the MCP tool and arguments, the model.
    pub kind: CallKind,
    /// The policy version that decided the call.
    pub policy_version: u64,
    /// The policy that asked (for `RequiredBy::Analytics`, the one that
    /// allowed the call).
    pub policy_id: String,
    /// Who required the approval. Not part of the call: a human who
    /// approved this exact call approved it whoever asked.
    pub required_by: RequiredBy,
}

impl CallBinding {
    /// A request on an HTTP route: `action` (the method) `path` on `route`,
    /// with the query and bound headers of `request` and its whole `body`.
    pub fn http(
        hold: Hold,
        route: &str,
        action: &str,
        path: &str,
        request: &http::request::Parts,
        body: &[u8],
    ) -> CallBinding {
        let digest = BodyDigest::of(body);
        let preview = body_preview(&request.headers, body);
        CallBinding::new(
            hold,
            action,
            route.to_string(),
            path,
            request,
            digest,
            CallKind::Http { preview },
        )
    }

    /// An MCP `tools/call` of `tool` on `route` with `arguments`; bound to
    /// their canonical JSON (sorted keys), so the JSON-RPC id and key order
    /// do not matter, and to the query and bound headers of the HTTP request
    /// that carried it.
    pub fn mcp_tool(
        hold: Hold,
        route: &str,
        path: &str,
        request: &http::request::Parts,
        tool: &str,
        arguments: &serde_json::Value,
    ) -> CallBinding {
        Self::mcp(hold, route, path, request, "tools/call", tool, arguments)
    }

    /// Any decided MCP message (`method` on `target`: a tool call, a prompt,
    /// a resource), bound to its canonical arguments. A tool call binds
    /// exactly as [`CallBinding::mcp_tool`].
    pub fn mcp(
        hold: Hold,
        route: &str,
        path: &str,
        request: &http::request::Parts,
        method: &str,
        tool: &str,
        arguments: &serde_json::Value,
    ) -> CallBinding {
        let call = if method == "tools/call" {
            serde_json::json!({ "name": tool, "arguments": arguments })
        } else {
            serde_json::json!({ "method": method, "name": tool, "arguments": arguments })
        };
        let digest = BodyDigest::of(crate::json::canonical(&call).as_bytes());
        let arguments = crate::json::canonical(arguments);
        let arguments = mask(&arguments)
            .map(|a| shorten(&escape(&a), PREVIEW_BYTES))
            .unwrap_or_else(|| NOT_SHOWN.to_string());
        let resource = if tool.is_empty() {
            route.to_string()
        } else {
            format!("{route}/{tool}")
        };
        CallBinding::new(
            hold,
            method,
            resource,
            path,
            request,
            digest,
            CallKind::McpTool {
                tool: tool.to_string(),
                arguments,
            },
        )
    }

    /// A completion or embedding (`action`: `complete` or `embed`) of `model` on
    /// the LLM route `route`, bound to the body as the client sent it.
    pub fn llm(
        hold: Hold,
        route: &str,
        action: &str,
        path: &str,
        request: &http::request::Parts,
        model: &str,
        body: BodyDigest,
    ) -> CallBinding {
        CallBinding::new(
            hold,
            action,
            route.to_string(),
            path,
            request,
            body,
            CallKind::Llm {
                model: model.to_string(),
            },
        )
    }

    fn new(
        hold: Hold,
        action: &str,
        resource: String,
        path: &str,
        request: &http::request::Parts,
        body: BodyDigest,
        kind: CallKind,
    ) -> CallBinding {
        CallBinding {
            agent: hold.agent,
            user: hold.user,
            action: action.to_string(),
            resource,
            path: path.to_string(),
            query: request.uri.query().map(str::to_string),
            headers: bound_headers(&request.headers),
            body_sha256: body.sha256,
            body_bytes: body.bytes,
            kind,
            policy_version: hold.policy_version,
            policy_id: hold.policy_id,
            required_by: hold.required_by,
        }
    }

    /// The call with the purpose it declares bound (see [`PURPOSE_HEADER`]);
    /// `""` binds none.
    pub fn with_purpose(mut self, purpose: &str) -> CallBinding {
        self.headers.retain(|(name, _)| name != PURPOSE_HEADER);
        if !purpose.is_empty() {
            let at = self
                .headers
                .partition_point(|(name, _)| name.as_str() < PURPOSE_HEADER);
            self.headers.insert(
                at,
                (PURPOSE_HEADER.to_string(), header_text(purpose.as_bytes())),
            );
        }
        self
    }

    /// One digest over every bound field, each length-prefixed (an absent
    /// one marked apart from an empty one). The body preview and the
    /// rendered MCP arguments are not in it: they are cut from the body,
    /// whose digest and size are.
    pub fn key(&self) -> String {
        fn part(h: &mut Sha256, p: &[u8]) {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        fn optional(h: &mut Sha256, p: Option<&str>) {
            match p {
                None => part(h, b"-"),
                Some(p) => {
                    part(h, b"+");
                    part(h, p.as_bytes());
                }
            }
        }
        let mut h = Sha256::new();
        part(&mut h, b"portcullis approval binding v2");
        part(&mut h, self.agent.as_bytes());
        optional(&mut h, self.user.as_deref());
        part(&mut h, self.action.as_bytes());
        part(&mut h, self.resource.as_bytes());
        part(&mut h, self.path.as_bytes());
        optional(&mut h, self.query.as_deref());
        part(&mut h, &(self.headers.len() as u64).to_be_bytes());
        for (name, value) in &self.headers {
            part(&mut h, name.as_bytes());
            part(&mut h, value.as_bytes());
        }
        part(&mut h, self.body_sha256.as_bytes());
        part(&mut h, &self.body_bytes.to_be_bytes());
        part(&mut h, self.kind.protocol().as_bytes());
        optional(&mut h, self.kind.subject());
        part(&mut h, &self.policy_version.to_be_bytes());
        hex::encode(h.finalize())
    }

    /// The call as an approver is shown it, and as it is stored: the query
    /// and header values with their secrets masked. (The preview was masked
    /// when it was cut.)
    fn shown(&self) -> CallBinding {
        let mut shown = self.clone();
        shown.query = self
            .query
            .as_deref()
            .map(|q| mask(q).unwrap_or_else(|| NOT_SHOWN.to_string()));
        for (_, value) in &mut shown.headers {
            *value = mask(value).unwrap_or_else(|| NOT_SHOWN.to_string());
        }
        shown
    }

    /// One line for a human: what the call does, e.g. `POST
    /// /bank/transfer?to=alice&amount=10 (17 B body, sha256 3a7bd3e2360a)`.
    pub fn summary(&self) -> String {
        let target = match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        };
        let body = format!(
            "{} B body, sha256 {}",
            self.body_bytes,
            self.body_sha256.get(..12).unwrap_or(&self.body_sha256)
        );
        match &self.kind {
            CallKind::Http { .. } => format!("{} {target} ({body})", self.action),
            CallKind::McpTool { tool, arguments } => format!(
                "{} {tool} {} (via {target})",
                self.action,
                shorten(arguments, SUMMARY_ARGUMENTS)
            ),
            CallKind::Llm { model } => {
                format!("{} {target} model {model} ({body})", self.action)
            }
        }
    }
}

/// Shown instead of a value that could not be checked for secrets.
const NOT_SHOWN: &str = "[not shown: the DLP scanner is unavailable]";

/// The DLP scanner that masks what a ticket shows. Its patterns are fixed,
/// so it is built once, on the first held call, and never changes after.
static SCANNER: LazyLock<Option<Scanner>> = LazyLock::new(|| match Scanner::new() {
    Ok(scanner) => Some(scanner),
    Err(e) => {
        // A unit test of the guard builds it; should it fail anyway, tickets
        // show no unchecked value (see `NOT_SHOWN`).
        tracing::error!(error = %e, "the DLP scanner does not build: approval tickets show no body or query");
        None
    }
});

/// Whether a ticket masks a value of this kind. An IBAN or an email address
/// stays: it says where a transfer or a message goes, which is what an
/// approver must check. Credentials, card and social security numbers are
/// never needed to decide.
fn masked_kind(kind: Kind) -> bool {
    !matches!(kind, Kind::Iban | Kind::Email)
}

/// `text` with every flagged value replaced by a typed placeholder
/// (`[REDACTED_AWS_ACCESS_KEY_1]`); `None` without a scanner.
fn mask(text: &str) -> Option<String> {
    let scanner = SCANNER.as_ref()?;
    let findings: Vec<_> = scanner
        .scan(text)
        .into_iter()
        .filter(|f| masked_kind(f.kind))
        .collect();
    if findings.is_empty() {
        return Some(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    Redactor::new(&[]).apply(text, &findings, &mut out);
    Some(out)
}

/// Control characters (a terminal escape, a newline that fakes another line)
/// and bidirectional overrides (text shown in another order than it is
/// read) written as escapes, so what the approver sees is what was sent.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let deceptive = c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if deceptive {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` bytes of `text` (on a character boundary), then `…` if cut.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What the approver reads of an HTTP body: the start of a text body, secrets
/// masked; `None` for an empty, compressed or binary one.
fn body_preview(headers: &http::HeaderMap, body: &[u8]) -> Option<String> {
    if body.is_empty() || headers.contains_key(http::header::CONTENT_ENCODING) {
        return None;
    }
    let textual = match headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        // No type: shown if it is text.
        None => true,
        Some(t) => {
            let t = t.to_ascii_lowercase();
            let media = t.split(';').next().unwrap_or_default().trim();
            media.starts_with("text/")
                || media.ends_with("json")
                || media.ends_with("xml")
                || media == "application/x-www-form-urlencoded"
                || media == "application/graphql"
        }
    };
    if !textual {
        return None;
    }
    let window = &body[..body.len().min(PREVIEW_SCAN_BYTES)];
    let text = match std::str::from_utf8(window) {
        Ok(text) => text,
        // The window ends inside a character: its valid start.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&window[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    let shown = match mask(text) {
        Some(masked) => shorten(&escape(&masked), PREVIEW_BYTES),
        None => NOT_SHOWN.to_string(),
    };
    Some(shown)
}

/// The [`BOUND_HEADERS`] of a request, exactly (see [`CallBinding::headers`]).
fn bound_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in BOUND_HEADERS {
        for value in headers.get_all(*name) {
            out.push(((*name).to_string(), header_text(value.as_bytes())));
        }
    }
    out
}

/// A bound header value as text: bytes outside printable ASCII, and `%`,
/// written `%XX`, so the text is exact.
fn header_text(value: &[u8]) -> String {
    let mut text = String::with_capacity(value.len());
    for &b in value {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            text.push(char::from(b));
        } else {
            text.push_str(&format!("%{b:02X}"));
        }
    }
    text
}

/// A ticket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for a human.
    Pending,
    /// Approved, not used yet.
    Approved,
    /// Denied.
    Denied,
    /// Approved and used by the call it was bound to.
    Used,
    /// Lapsed without a decision, or approved and never used.
    Expired,
}

impl Status {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Used => "used",
            Status::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "used" => Status::Used,
            _ => Status::Expired,
        }
    }
}

/// One ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The id: 128 random bits, hex. Also the approval's nonce.
    pub id: String,
    /// The call.
    pub binding: CallBinding,
    /// Created, ms since the epoch.
    pub created_ms: i64,
    /// Lapses, ms since the epoch.
    pub expires_ms: i64,
    /// State.
    pub status: Status,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_ms: Option<i64>,
    /// The grant an approval with a TTL created.
    pub grant_id: Option<String>,
    /// [`CallBinding::key`] of the exact call (`binding` is the call as
    /// shown, its secrets masked); empty for a ticket stored before the key
    /// was, which matches no call.
    key: String,
}

impl Ticket {
    fn row(&self) -> ApprovalRow {
        ApprovalRow {
            id: self.id.clone(),
            agent: self.binding.agent.clone(),
            delegated_user: self.binding.user.clone(),
            action: self.binding.action.clone(),
            resource: self.binding.resource.clone(),
            path: self.binding.path.clone(),
            query: self.binding.query.clone(),
            headers: self.binding.headers.clone(),
            body_sha256: self.binding.body_sha256.clone(),
            body_bytes: self.binding.body_bytes,
            protocol: self.binding.kind.protocol().to_string(),
            subject: self.binding.kind.subject().map(str::to_string),
            preview: self.binding.kind.preview().map(str::to_string),
            binding_key: self.key.clone(),
            policy_version: self.binding.policy_version,
            policy_id: self.binding.policy_id.clone(),
            required_by: self.binding.required_by.as_str().to_string(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            status: self.status.as_str().to_string(),
            decided_by: self.decided_by.clone(),
            decided_ms: self.decided_ms,
            grant_id: self.grant_id.clone(),
        }
    }

    fn from_row(row: ApprovalRow) -> Ticket {
        Ticket {
            id: row.id,
            binding: CallBinding {
                agent: row.agent,
                user: row.delegated_user,
                action: row.action,
                resource: row.resource,
                path: row.path,
                query: row.query,
                headers: row.headers,
                body_sha256: row.body_sha256,
                body_bytes: row.body_bytes,
                kind: CallKind::from_stored(&row.protocol, row.subject, row.preview),
                policy_version: row.policy_version,
                policy_id: row.policy_id,
                required_by: RequiredBy::parse(&row.required_by),
            },
            created_ms: row.created_ms,
            expires_ms: row.expires_ms,
            status: Status::parse(&row.status),
            decided_by: row.decided_by,
            decided_ms: row.decided_ms,
            grant_id: row.grant_id,
            key: row.binding_key,
        }
    }
}

/// What the gate says about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// An approval for exactly this call was consumed: proceed.
    Approved(Ticket),
    /// No approval yet: this ticket waits for one (new or already open).
    Pending(Ticket, bool),
    /// A human denied this call.
    Denied(Ticket),
}

/// Why a decision could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    /// No such ticket (or it lapsed).
    #[error("no live approval ticket `{0}`")]
    NotFound(String),
    /// It was decided already.
    #[error("approval ticket `{0}` is already {1}")]
    Decided(String, &'static str),
    /// Cluster mode: the shared store did not take the decision.
    #[error("the shared store cannot record the decision on `{0}`; retry")]
    Unavailable(String),
}

#[derive(Debug, Default)]
struct Tickets {
    by_id: HashMap<String, Ticket>,
    by_key: HashMap<String, String>,
}

/// The approval desk.
#[derive(Debug)]
pub struct Approvals {
    /// Every change, in order, to the one task that writes tickets: writes
    /// must land in the order they happened, or a used approval could be
    /// stored as approved and count again after a restart.
    writes: tokio::sync::mpsc::UnboundedSender<ApprovalRow>,
    tickets: Mutex<Tickets>,
    /// Bumped on every decision, so waiting requests wake up.
    decided: watch::Sender<u64>,
    /// Events for humans (new tickets, break-glass) go here: the webhook
    /// task, when configured.
    notify: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
    /// Cluster mode (PostgreSQL): the store other replicas share. Decisions
    /// and uses then move a ticket in the database first (see
    /// [`Approvals::confirm`], [`Approvals::decide_confirmed`]), so a ticket
    /// is decided once and used once across every replica.
    shared: Option<Store>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl Approvals {
    /// Loads the live tickets from the store.
    pub async fn load(
        store: Store,
        notify: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
    ) -> Result<Arc<Self>, portcullis_store::StoreError> {
        let mut tickets = Tickets::default();
        for row in store.live_approvals(now_ms()).await? {
            let ticket = Ticket::from_row(row);
            // A ticket without a key (stored before keys were) is listed
            // until it lapses but matches no call.
            if !ticket.key.is_empty() {
                tickets.by_key.insert(ticket.key.clone(), ticket.id.clone());
            }
            tickets.by_id.insert(ticket.id.clone(), ticket);
        }
        let shared = store.is_postgres().then(|| store.clone());
        let (writes, mut queue) = tokio::sync::mpsc::unbounded_channel::<ApprovalRow>();
        tokio::spawn(async move {
            while let Some(row) = queue.recv().await {
                if let Err(e) = store.put_approval(&row).await {
                    tracing::error!(ticket = %row.id, error = %e, "cannot store an approval ticket");
                }
            }
        });
        Ok(Arc::new(Approvals {
            writes,
            tickets: Mutex::new(tickets),
            decided: watch::channel(0).0,
            notify,
            shared,
        }))
    }

    /// Queues the ticket's new state for the writer. Callers hold the tickets
    /// mutex, so changes are queued, and written, in the order they happened.
    fn persist(&self, ticket: &Ticket) {
        let _ = self.writes.send(ticket.row());
    }

    /// The request-path check: consumes a matching approval, or returns the
    /// open (or a new) ticket for the call. No IO.
    pub fn gate(&self, binding: CallBinding) -> Gate {
        let now = now_ms();
        let key = binding.key();
        let gate = {
            let Ok(mut t) = self.tickets.lock() else {
                // A poisoned desk approves nothing.
                return Gate::Denied(new_ticket(&binding, key, now));
            };
            let existing = t.by_key.get(&key).cloned();
            let (gate, changed) = match existing.and_then(|id| t.by_id.get(&id).cloned()) {
                Some(mut ticket) if ticket.expires_ms > now => match ticket.status {
                    Status::Approved => {
                        ticket.status = Status::Used;
                        t.by_key.remove(&key);
                        t.by_id.remove(&ticket.id);
                        (Gate::Approved(ticket.clone()), Some(ticket))
                    }
                    Status::Pending => (Gate::Pending(ticket, false), None),
                    Status::Denied => (Gate::Denied(ticket), None),
                    Status::Used | Status::Expired => {
                        let fresh = new_ticket(&binding, key.clone(), now);
                        insert(&mut t, key, fresh.clone());
                        (Gate::Pending(fresh.clone(), true), Some(fresh))
                    }
                },
                _ => {
                    let fresh = new_ticket(&binding, key.clone(), now);
                    insert(&mut t, key, fresh.clone());
                    (Gate::Pending(fresh.clone(), true), Some(fresh))
                }
            };
            // Queued under the lock, so the writer sees changes in the order
            // they happened (a send is never IO and never waits). In cluster
            // mode a use is written by `confirm`, conditionally, instead.
            if let Some(ticket) = &changed
                && !(self.shared.is_some() && matches!(gate, Gate::Approved(_)))
            {
                self.persist(ticket);
            }
            gate
        };
        if let Gate::Pending(ticket, true) = &gate {
            self.announce(serde_json::json!({
                "event": "approval.requested",
                "ticket": ticket.to_json(),
            }));
        }
        gate
    }

    /// Waits (up to `wait`) for ticket `id` to be decided; then gates the
    /// call again, so an approval is consumed exactly once.
    pub async fn wait(&self, binding: CallBinding, id: &str, wait: Duration) -> Gate {
        let mut decided = self.decided.subscribe();
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let status = self
                .tickets
                .lock()
                .ok()
                .and_then(|t| t.by_id.get(id).map(|t| t.status));
            if status != Some(Status::Pending) {
                return self.gate(binding);
            }
            if tokio::time::timeout_at(deadline, decided.changed())
                .await
                .is_err()
            {
                return self.gate(binding);
            }
        }
    }

    /// Approves or denies ticket `id`. An approval lasts [`APPROVED_TTL`].
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        grant_id: Option<String>,
    ) -> Result<Ticket, DecideError> {
        let now = now_ms();
        let ticket = {
            let mut t = self
                .tickets
                .lock()
                .map_err(|_| DecideError::NotFound(id.into()))?;
            let ticket = t
                .by_id
                .get_mut(id)
                .filter(|t| t.expires_ms > now)
                .ok_or_else(|| DecideError::NotFound(id.into()))?;
            if ticket.status != Status::Pending {
                return Err(DecideError::Decided(id.into(), ticket.status.as_str()));
            }
            ticket.status = if approve {
                Status::Approved
            } else {
                Status::Denied
            };
            ticket.decided_by = Some(by.to_string());
            ticket.decided_ms = Some(now);
            ticket.grant_id = grant_id;
            if approve {
                ticket.expires_ms = now + APPROVED_TTL.as_millis() as i64;
            }
            let ticket = ticket.clone();
            self.persist(&ticket);
            ticket
        };
        self.decided.send_modify(|n| *n += 1);
        Ok(ticket)
    }

    /// Cluster mode: makes an approval the gate consumed count once across
    /// every replica. The ticket moves from approved to used in the shared
    /// store; if another replica used it first (or the store does not
    /// answer) this call does not go through: it gets a fresh ticket, as a
    /// call after a used approval does on one node. One node: `gate` as is.
    pub async fn confirm(&self, gate: Gate, binding: CallBinding) -> Gate {
        let (Some(store), Gate::Approved(ticket)) = (&self.shared, &gate) else {
            return gate;
        };
        match store
            .transition_approval(&ticket.row(), Status::Approved.as_str(), now_ms())
            .await
        {
            Ok(true) => gate,
            Ok(false) => {
                tracing::info!(ticket = %ticket.id, "approval already used on another replica");
                self.gate(binding)
            }
            Err(e) => {
                tracing::warn!(ticket = %ticket.id, error = %e, "cannot use an approval in the shared store");
                self.gate(binding)
            }
        }
    }

    /// [`decide`](Self::decide), recorded in the shared store first in
    /// cluster mode: the ticket moves from pending only if no replica decided
    /// it already. A ticket another replica opened is read first.
    pub async fn decide_confirmed(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        grant_id: Option<String>,
    ) -> Result<Ticket, DecideError> {
        let Some(store) = &self.shared else {
            return self.decide(id, approve, by, grant_id);
        };
        if self.get(id).is_none() {
            let _ = self.resync().await;
        }
        let now = now_ms();
        let mut decided = self
            .get(id)
            .filter(|t| t.expires_ms > now)
            .ok_or_else(|| DecideError::NotFound(id.into()))?;
        if decided.status != Status::Pending {
            return Err(DecideError::Decided(id.into(), decided.status.as_str()));
        }
        decided.status = if approve {
            Status::Approved
        } else {
            Status::Denied
        };
        decided.decided_by = Some(by.to_string());
        decided.decided_ms = Some(now);
        decided.grant_id = grant_id;
        if approve {
            decided.expires_ms = now + APPROVED_TTL.as_millis() as i64;
        }
        match store
            .transition_approval(&decided.row(), Status::Pending.as_str(), now)
            .await
        {
            Ok(true) => {
                // The other replicas take the decision now, not at their
                // next resync (a lost notification costs only that wait).
                if let Err(e) = store
                    .notify_change(portcullis_store::Change::Approvals)
                    .await
                {
                    tracing::warn!(ticket = %id, error = %e, "cannot announce a decision to the other replicas");
                }
            }
            Ok(false) => {
                let _ = self.resync().await;
                let status = self.get(id).map_or(Status::Expired, |t| t.status);
                return Err(DecideError::Decided(id.into(), status.as_str()));
            }
            Err(e) => {
                tracing::warn!(ticket = %id, error = %e, "cannot record a decision in the shared store");
                return Err(DecideError::Unavailable(id.into()));
            }
        }
        self.apply(vec![decided.clone()]);
        Ok(decided)
    }

    /// Cluster mode: reads the tickets other replicas opened or decided
    /// (every unexpired one) and takes their state; wakes waiting calls when
    /// something changed. One node: nothing to read.
    pub async fn resync(&self) -> Result<(), portcullis_store::StoreError> {
        let Some(store) = &self.shared else {
            return Ok(());
        };
        let rows = store.unexpired_approvals(now_ms()).await?;
        self.apply(rows.into_iter().map(Ticket::from_row).collect());
        Ok(())
    }

    /// Takes the stored state of `tickets` into memory (no write back).
    fn apply(&self, tickets: Vec<Ticket>) {
        let mut changed = false;
        {
            let Ok(mut t) = self.tickets.lock() else {
                return;
            };
            for ticket in tickets {
                let known = t.by_id.get(&ticket.id).map(|k| k.status);
                if known == Some(ticket.status) {
                    continue;
                }
                match ticket.status {
                    Status::Used | Status::Expired => {
                        if known.is_some() {
                            if t.by_key.get(&ticket.key) == Some(&ticket.id) {
                                t.by_key.remove(&ticket.key);
                            }
                            t.by_id.remove(&ticket.id);
                            changed = true;
                        }
                    }
                    Status::Pending | Status::Approved | Status::Denied => {
                        // A replica never moves a ticket back to pending.
                        if known.is_some() && ticket.status == Status::Pending {
                            continue;
                        }
                        // Two replicas may each open a ticket for one call;
                        // the call follows the one approved, else the first.
                        let take_key = ticket.status == Status::Approved
                            || !t.by_key.contains_key(&ticket.key);
                        if !ticket.key.is_empty() && take_key {
                            t.by_key.insert(ticket.key.clone(), ticket.id.clone());
                        }
                        t.by_id.insert(ticket.id.clone(), ticket);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.decided.send_modify(|n| *n += 1);
        }
    }

    /// Sends an event to the webhook, if one is configured. A full queue
    /// drops the event (it is in the audit log and the server log anyway),
    /// never blocks the caller.
    pub fn announce(&self, event: serde_json::Value) {
        if let Some(notify) = &self.notify {
            let _ = notify.try_send(event);
        }
    }

    /// A live ticket.
    pub fn get(&self, id: &str) -> Option<Ticket> {
        let now = now_ms();
        self.tickets
            .lock()
            .ok()?
            .by_id
            .get(id)
            .filter(|t| t.expires_ms > now)
            .cloned()
    }

    /// Live tickets, oldest first.
    pub fn list(&self) -> Vec<Ticket> {
        let now = now_ms();
        let Ok(t) = self.tickets.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Ticket> = t
            .by_id
            .values()
            .filter(|t| t.expires_ms > now)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        out
    }
}

impl Ticket {
    /// The JSON shape of the admin API and the webhook.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "status": self.status.as_str(),
            "agent": self.binding.agent,
            "delegated_user": self.binding.user,
            "action": self.binding.action,
            "resource": self.binding.resource,
            "path": self.binding.path,
            "query": self.binding.query,
            "headers": self
                .binding
                .headers
                .iter()
                .map(|(name, value)| serde_json::json!({ "name": name, "value": value }))
                .collect::<Vec<_>>(),
            "body_sha256": self.binding.body_sha256,
            "body_bytes": self.binding.body_bytes,
            "protocol": self.binding.kind.protocol(),
            "tool": match &self.binding.kind {
                CallKind::McpTool { tool, .. } => Some(tool),
                _ => None,
            },
            "arguments": match &self.binding.kind {
                CallKind::McpTool { arguments, .. } => Some(arguments),
                _ => None,
            },
            "model": match &self.binding.kind {
                CallKind::Llm { model } => Some(model),
                _ => None,
            },
            "preview": match &self.binding.kind {
                CallKind::Http { preview } => preview.as_deref(),
                _ => None,
            },
            "summary": self.binding.summary(),
            "policy_version": self.binding.policy_version,
            "policy_id": self.binding.policy_id,
            "required_by": self.binding.required_by.as_str(),
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "decided_by": self.decided_by,
            "decided_ms": self.decided_ms,
            "grant_id": self.grant_id,
        })
    }
}

/// How many new tickets may wait for the webhook.
pub const WEBHOOK_QUEUE: usize = 256;

/// POSTs each event (`approval.requested` with the ticket,
/// `breakglass.opened`) to `url` until the sender side closes. A failed
/// delivery is logged and not retried: the ticket or grant itself is safe in
/// the store and listed by the CLI.
pub async fn webhook(
    mut events: tokio::sync::mpsc::Receiver<serde_json::Value>,
    url: http::Uri,
    poster: crate::otlp::Poster,
) {
    let headers = crate::config::SecretHeaders(Vec::new());
    while let Some(body) = events.recv().await {
        if let Err(e) = poster
            .post(
                &url,
                "application/json",
                &headers,
                bytes::Bytes::from(body.to_string()),
                Duration::from_secs(10),
            )
            .await
        {
            tracing::warn!(event = %body["event"], error = %e, "approvals webhook delivery failed");
        }
    }
}

fn new_ticket(binding: &CallBinding, key: String, now: i64) -> Ticket {
    Ticket {
        id: hex::encode(rand::random::<[u8; 16]>()),
        binding: binding.shown(),
        key,
        created_ms: now,
        expires_ms: now + PENDING_TTL.as_millis() as i64,
        status: Status::Pending,
        decided_by: None,
        decided_ms: None,
        grant_id: None,
    }
}

fn insert(t: &mut Tickets, key: String, ticket: Ticket) {
    let now = now_ms();
    if t.by_id.len() >= MAX_TICKETS {
        // Lapsed tickets go first; if none, the oldest.
        t.by_id.retain(|_, v| v.expires_ms > now);
        if t.by_id.len() >= MAX_TICKETS
            && let Some(oldest) = t
                .by_id
                .values()
                .min_by_key(|v| v.created_ms)
                .map(|v| v.id.clone())
        {
            t.by_id.remove(&oldest);
        }
        let live: std::collections::HashSet<&String> = t.by_id.keys().collect();
        let keep: HashMap<String, String> = t
            .by_key
            .iter()
            .filter(|(_, id)| live.contains(id))
            .map(|(k, id)| (k.clone(), id.clone()))
            .collect();
        t.by_key = keep;
    }
    t.by_key.insert(key, ticket.id.clone());
    t.by_id.insert(ticket.id.clone(), ticket);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITHUB_TOKEN: &str = "ghp_aB3dE5gH7jK9mN1pQ3rS5tU7vW9xY1zA2bC4";

    fn hold() -> Hold {
        Hold {
            agent: "pay-bot".into(),
            user: Some("alice".into()),
            policy_version: 1,
            policy_id: "transfers".into(),
            required_by: RequiredBy::Policy,
        }
    }

    /// The request head of `uri` with `headers`.
    fn head(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut request = http::Request::builder().method("POST").uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    /// `POST` of `body` to `uri` on the `bank` route.
    fn http_call(uri: &str, headers: &[(&str, &str)], body: &str) -> CallBinding {
        let request = head(uri, headers);
        let path = request.uri.path().to_string();
        CallBinding::http(hold(), "bank", "POST", &path, &request, body.as_bytes())
    }

    fn call(body: &str) -> CallBinding {
        http_call("/bank/transfer", &[], body)
    }

    fn tool(arguments: serde_json::Value) -> CallBinding {
        let request = head("/files/mcp", &[("content-type", "application/json")]);
        CallBinding::mcp_tool(hold(), "files", "/files/mcp", &request, "write", &arguments)
    }

    fn llm(model: &str, body: &str) -> CallBinding {
        let request = head("/llm/v1/chat/completions", &[]);
        let digest = BodyDigest::of(body.as_bytes());
        CallBinding::llm(
            hold(),
            "llm",
            "POST",
            "/llm/v1/chat/completions",
            &request,
            model,
            digest,
        )
    }

    /// The declared purpose is bound on every protocol: another purpose is
    /// another call; none binds as before purposes existed; it is shown
    /// among the headers, in their sorted place.
    #[test]
    fn the_purpose_is_bound() {
        let bound = |b: CallBinding| b.with_purpose("fraud-detection");
        let bases: [fn() -> CallBinding; 3] = [
            || call("{}"),
            || tool(serde_json::json!({"path": "/tmp/a"})),
            || llm("gpt", "{}"),
        ];
        for base in bases {
            assert_eq!(base().with_purpose("").key(), base().key());
            assert_eq!(bound(base()).key(), bound(base()).key());
            assert_ne!(bound(base()).key(), base().key());
            assert_ne!(bound(base()).key(), base().with_purpose("marketing").key());
            // Bound once, whatever was bound before.
            assert_eq!(
                bound(base().with_purpose("marketing")).key(),
                bound(base()).key()
            );
        }
        let shown = bound(http_call(
            "/bank/transfer",
            &[("content-type", "application/json"), ("soapaction", "x")],
            "{}",
        ));
        let names: Vec<&str> = shown.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", PURPOSE_HEADER, "soapaction"]);
    }

    #[test]
    fn every_bound_part_of_the_exchange_changes_the_key() {
        let base = || {
            http_call(
                "/bank/transfer?to=alice&amount=10",
                &[("content-type", "application/json"), ("user-agent", "a")],
                r#"{"memo":"rent"}"#,
            )
        };
        assert_eq!(base().key(), base().key(), "the same call, the same key");
        // A header that does not change what the call does is not bound.
        let other_agent = http_call(
            "/bank/transfer?to=alice&amount=10",
            &[("content-type", "application/json"), ("user-agent", "b")],
            r#"{"memo":"rent"}"#,
        );
        assert_eq!(other_agent.key(), base().key());
        let different = [
            (
                "the query",
                http_call(
                    "/bank/transfer?to=mallory&amount=1000000",
                    &[("content-type", "application/json")],
                    r#"{"memo":"rent"}"#,
                ),
            ),
            (
                "no query",
                http_call(
                    "/bank/transfer",
                    &[("content-type", "application/json")],
                    r#"{"memo":"rent"}"#,
                ),
            ),
            (
                "an empty query",
                http_call(
                    "/bank/transfer?",
                    &[("content-type", "application/json")],
                    r#"{"memo":"rent"}"#,
                ),
            ),
            (
                "a bound header",
                http_call(
                    "/bank/transfer?to=alice&amount=10",
                    &[("content-type", "application/x-www-form-urlencoded")],
                    r#"{"memo":"rent"}"#,
                ),
            ),
            (
                "a method override",
                http_call(
                    "/bank/transfer?to=alice&amount=10",
                    &[
                        ("content-type", "application/json"),
                        ("x-http-method-override", "DELETE"),
                    ],
                    r#"{"memo":"rent"}"#,
                ),
            ),
            (
                "the body",
                http_call(
                    "/bank/transfer?to=alice&amount=10",
                    &[("content-type", "application/json")],
                    r#"{"memo":"rant"}"#,
                ),
            ),
            (
                "the path",
                http_call(
                    "/bank/transfers?to=alice&amount=10",
                    &[("content-type", "application/json")],
                    r#"{"memo":"rent"}"#,
                ),
            ),
        ];
        for (what, call) in different {
            assert_ne!(call.key(), base().key(), "{what}");
        }
        // A query is bound as it is forwarded: re-encoding it is another call.
        assert_ne!(
            http_call("/x?to=al%69ce", &[], "").key(),
            http_call("/x?to=alice", &[], "").key()
        );

        // MCP: the tool's arguments, canonical (key order does not matter).
        let a = tool(serde_json::json!({"path": "a.txt", "text": "hi"}));
        let same = tool(serde_json::json!({"text": "hi", "path": "a.txt"}));
        let b = tool(serde_json::json!({"path": "b.txt", "text": "hi"}));
        assert_eq!(a.key(), same.key());
        assert_ne!(a.key(), b.key());
        assert_eq!(
            a.kind,
            CallKind::McpTool {
                tool: "write".into(),
                arguments: r#"{"path":"a.txt","text":"hi"}"#.into()
            }
        );
        // LLM: the model and the body.
        let body = r#"{"model":"m","messages":[]}"#;
        assert_eq!(llm("m", body).key(), llm("m", body).key());
        assert_ne!(llm("m", body).key(), llm("n", body).key());
        assert_ne!(llm("m", body).key(), llm("m", "{}").key());
        // Another protocol with the same path and body is another call.
        assert_ne!(
            http_call("/llm/v1/chat/completions", &[], body).key(),
            llm("m", body).key()
        );
    }

    #[test]
    fn bound_headers_are_lower_case_sorted_and_exact() {
        let mut sorted = BOUND_HEADERS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, BOUND_HEADERS);
        assert!(BOUND_HEADERS.iter().all(|h| h.to_ascii_lowercase() == *h));
        let mut headers = http::HeaderMap::new();
        headers.append("X-Amz-Target", "DynamoDB_20120810.PutItem".parse().unwrap());
        headers.append("content-type", "text/plain".parse().unwrap());
        headers.append("content-type", "application/json".parse().unwrap());
        headers.append(
            "soapaction",
            http::HeaderValue::from_bytes(b"50%\xff").unwrap(),
        );
        headers.append("accept", "*/*".parse().unwrap());
        assert_eq!(
            bound_headers(&headers),
            [
                ("content-type", "text/plain"),
                ("content-type", "application/json"),
                ("soapaction", "50%25%FF"),
                ("x-amz-target", "DynamoDB_20120810.PutItem"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        let raw = http::HeaderValue::from_bytes(&[b'a', 0xff]).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.append("destination", raw);
        assert_eq!(bound_headers(&headers)[0].1, "a%FF");
    }

    #[test]
    fn the_approver_sees_the_call_without_its_secrets() {
        assert!(SCANNER.is_some(), "the DLP scanner builds");
        let call = http_call(
            &format!("/bank/transfer?to=DE89370400440532013000&token={GITHUB_TOKEN}"),
            &[("content-type", "application/json")],
            &format!(r#"{{"memo":"rent\u001b[2K","note":"\u202e","key":"{GITHUB_TOKEN}"}}"#),
        );
        let shown = call.shown();
        let query = shown.query.as_deref().unwrap();
        // An IBAN says where the money goes: the approver must see it.
        assert!(
            query.starts_with("to=DE89370400440532013000&token="),
            "{query}"
        );
        assert!(query.contains("[REDACTED_GITHUB_TOKEN_1]") && !query.contains(GITHUB_TOKEN));
        let CallKind::Http {
            preview: Some(preview),
        } = &shown.kind
        else {
            panic!("a JSON body has a preview: {shown:?}")
        };
        assert!(!preview.contains(GITHUB_TOKEN), "{preview}");
        assert!(preview.contains("[REDACTED_GITHUB_TOKEN_1]"), "{preview}");
        // The body as sent (JSON escapes stay escapes).
        assert!(
            preview.starts_with(r#"{"memo":"rent\u001b[2K""#),
            "{preview}"
        );
        // The summary has the method, the path with the query, the size and digest.
        let summary = shown.summary();
        assert!(
            summary.starts_with(
                "POST /bank/transfer?to=DE89370400440532013000&token=[REDACTED_GITHUB_TOKEN_1] ("
            ) && summary.contains(&format!(
                "{} B body, sha256 {}",
                call.body_bytes,
                &call.body_sha256[..12]
            )),
            "{summary}"
        );

        // Raw control characters and bidi overrides are escaped; a long body is cut.
        let long = format!("line one\nline\u{1b}[2K two \u{202e}{}", "x".repeat(5000));
        let CallKind::Http {
            preview: Some(preview),
        } = call_with_body("text/plain", &long).kind
        else {
            panic!()
        };
        assert!(
            preview.starts_with(r"line one\nline\u{1b}[2K two \u{202e}xxx"),
            "{preview}"
        );
        assert!(preview.ends_with('…') && preview.len() <= PREVIEW_BYTES + '…'.len_utf8());
        // Binary and compressed bodies get no preview, only size and digest.
        assert_eq!(
            call_with_body("application/octet-stream", "abc").kind,
            CallKind::Http { preview: None }
        );
        let gzip = http_call("/x", &[("content-encoding", "gzip")], "abc");
        assert_eq!(gzip.kind, CallKind::Http { preview: None });
        // MCP arguments are masked the same way.
        let CallKind::McpTool { arguments, .. } =
            tool(serde_json::json!({ "token": GITHUB_TOKEN }))
                .shown()
                .kind
        else {
            panic!()
        };
        assert_eq!(arguments, r#"{"token":"[REDACTED_GITHUB_TOKEN_1]"}"#);
    }

    fn call_with_body(content_type: &str, body: &str) -> CallBinding {
        http_call("/x", &[("content-type", content_type)], body)
    }

    #[tokio::test]
    async fn a_ticket_shows_the_masked_call_and_still_matches_the_exact_one_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let desk = Approvals::load(store.clone(), None).await.unwrap();
        let secret = || {
            http_call(
                &format!("/bank/transfer?to=alice&amount=10&token={GITHUB_TOKEN}"),
                &[("content-type", "application/json")],
                r#"{"memo":"rent"}"#,
            )
        };
        let Gate::Pending(ticket, true) = desk.gate(secret()) else {
            panic!("a new ticket was expected")
        };
        let json = ticket.to_json();
        assert_eq!(
            json["query"],
            "to=alice&amount=10&token=[REDACTED_GITHUB_TOKEN_1]"
        );
        assert_eq!(
            json["headers"],
            serde_json::json!([{ "name": "content-type", "value": "application/json" }])
        );
        assert_eq!(json["preview"], r#"{"memo":"rent"}"#);
        assert_eq!(json["body_bytes"], 15);
        assert_eq!(json["protocol"], "http");
        assert!(!json.to_string().contains(GITHUB_TOKEN), "{json}");
        desk.decide(&ticket.id, true, "bob", None).unwrap();
        // After a restart (once the writer caught up), the approval is
        // still there and matches the exact call, not the masked one.
        let mut reloaded = None;
        // Bounded at 10 s: the writer's commit, on a loaded machine.
        for _ in 0..500 {
            let desk = Approvals::load(store.clone(), None).await.unwrap();
            if desk.list().first().map(|t| t.status) == Some(Status::Approved) {
                reloaded = Some(desk);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reloaded = reloaded.expect("the approval was stored");
        assert_eq!(reloaded.list()[0].to_json()["query"], json["query"]);
        let mut masked = secret();
        masked.query = ticket.binding.query.clone();
        assert!(matches!(reloaded.gate(masked), Gate::Pending(t, true) if t.id != ticket.id));
        assert!(matches!(reloaded.gate(secret()), Gate::Approved(t) if t.id == ticket.id));
    }

    #[tokio::test]
    async fn an_approval_is_bound_to_its_call_and_used_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let desk = Approvals::load(store.clone(), None).await.unwrap();
        let Gate::Pending(ticket, true) = desk.gate(call("amount=100")) else {
            panic!("a new ticket was expected")
        };
        // Asking again finds the same open ticket.
        assert_eq!(
            desk.gate(call("amount=100")),
            Gate::Pending(ticket.clone(), false)
        );
        desk.decide(&ticket.id, true, "bob", None).unwrap();
        assert_eq!(
            desk.decide(&ticket.id, false, "eve", None),
            Err(DecideError::Decided(ticket.id.clone(), "approved"))
        );
        // Another amount matches nothing and opens its own ticket.
        let Gate::Pending(other, true) = desk.gate(call("amount=100000")) else {
            panic!("a different call must not use the approval")
        };
        assert_ne!(other.id, ticket.id);
        // The approved call proceeds once; the second time it needs a new ticket.
        let Gate::Approved(used) = desk.gate(call("amount=100")) else {
            panic!("the approved call was expected to proceed")
        };
        assert_eq!(
            (used.id.as_str(), used.status),
            (ticket.id.as_str(), Status::Used)
        );
        assert!(
            matches!(desk.gate(call("amount=100")), Gate::Pending(t, true) if t.id != ticket.id)
        );
        // A denial is final for its call.
        desk.decide(&other.id, false, "bob", None).unwrap();
        assert!(matches!(desk.gate(call("amount=100000")), Gate::Denied(_)));
        // A different policy version is a different call.
        let mut newer = call("amount=100000");
        newer.policy_version = 2;
        assert!(matches!(desk.gate(newer), Gate::Pending(_, true)));

        // The store caught up in the background, in order: the used and the
        // denied tickets are not live, and a restart reloads only the two
        // pending ones (never the used approval).
        let mut live = Vec::new();
        // Bounded at 10 s: the writer's commit, on a loaded machine.
        for _ in 0..500 {
            live = store.live_approvals(now_ms()).await.unwrap();
            let settled = live.len() == 2
                && live
                    .iter()
                    .all(|t| t.status == "pending" && t.id != ticket.id);
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            live.iter()
                .all(|t| t.status == "pending" && t.id != ticket.id),
            "{live:?}"
        );
        let reloaded = Approvals::load(store, None).await.unwrap();
        assert_eq!(reloaded.list().len(), 2, "{:?}", reloaded.list());
        assert!(
            matches!(reloaded.gate(call("amount=100")), Gate::Pending(t, false) if t.id != ticket.id)
        );
    }

    #[tokio::test]
    async fn a_waiting_call_wakes_on_the_decision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let desk = Approvals::load(store, None).await.unwrap();
        let Gate::Pending(ticket, _) = desk.gate(call("x")) else {
            panic!()
        };
        let waiter = {
            let desk = desk.clone();
            let id = ticket.id.clone();
            tokio::spawn(async move { desk.wait(call("x"), &id, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        desk.decide(&ticket.id, true, "bob", None).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(waiter.await.unwrap(), Gate::Approved(_)));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Nobody decides: the wait ends at its limit, still pending.
        let Gate::Pending(t2, _) = desk.gate(call("y")) else {
            panic!()
        };
        let gate = desk
            .wait(call("y"), &t2.id, Duration::from_millis(100))
            .await;
        assert!(matches!(gate, Gate::Pending(t, false) if t.id == t2.id));
    }

    #[tokio::test]
    async fn a_ticket_says_who_required_it_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let desk = Approvals::load(store.clone(), None).await.unwrap();
        let mut held = call("x");
        held.required_by = RequiredBy::Analytics;
        let Gate::Pending(ticket, true) = desk.gate(held.clone()) else {
            panic!("a new ticket was expected")
        };
        assert_eq!(ticket.to_json()["required_by"], "analytics");
        // The same call asked for by a policy finds the same ticket: a
        // human approves a call, whoever asked.
        assert!(matches!(desk.gate(call("x")), Gate::Pending(t, false) if t.id == ticket.id));
        let mut reloaded = Vec::new();
        // Bounded at 10 s: the writer's commit, on a loaded machine.
        for _ in 0..500 {
            reloaded = Approvals::load(store.clone(), None).await.unwrap().list();
            if !reloaded.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(reloaded.len(), 1);
        assert_eq!(reloaded[0].binding.required_by, RequiredBy::Analytics);
        assert_eq!(reloaded[0].binding, held);
    }

    /// Cluster mode: desks of two replicas on one PostgreSQL store. A ticket
    /// opened on one is decided on the other, once, and the approved call
    /// passes on exactly one of them however many see it approved.
    #[tokio::test]
    async fn replicas_decide_once_and_use_an_approval_once() {
        let Some(db) = portcullis_store::testing::TestDb::postgres().await else {
            return;
        };
        let (a, b) = (
            Approvals::load(db.open().await, None).await.unwrap(),
            Approvals::load(db.open().await, None).await.unwrap(),
        );
        let Gate::Pending(ticket, true) = a.gate(call("amount=7")) else {
            panic!("a new ticket was expected")
        };
        // Written behind: B finds it once it is stored.
        let mut found = false;
        // Bounded at 10 s: the writer's commit, on a loaded machine.
        for _ in 0..500 {
            b.resync().await.unwrap();
            if b.get(&ticket.id).is_some() {
                found = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(found, "B never read the ticket A opened");
        a.resync().await.unwrap();
        // Both approve at once: one decision is recorded, the other conflicts.
        let (on_a, on_b) = tokio::join!(
            a.decide_confirmed(&ticket.id, true, "alice", None),
            b.decide_confirmed(&ticket.id, true, "bob", None)
        );
        assert_eq!(
            usize::from(on_a.is_ok()) + usize::from(on_b.is_ok()),
            1,
            "{on_a:?} {on_b:?}"
        );
        a.resync().await.unwrap();
        b.resync().await.unwrap();
        // Both hold the approval; the call is let through once.
        let gates = [a.gate(call("amount=7")), b.gate(call("amount=7"))];
        assert!(gates.iter().all(|g| matches!(g, Gate::Approved(_))));
        let [ga, gb] = gates;
        let (ga, gb) = tokio::join!(
            a.confirm(ga, call("amount=7")),
            b.confirm(gb, call("amount=7"))
        );
        let passed = [&ga, &gb]
            .iter()
            .filter(|g| matches!(g, Gate::Approved(_)))
            .count();
        assert_eq!(passed, 1, "{ga:?} {gb:?}");
    }
}
