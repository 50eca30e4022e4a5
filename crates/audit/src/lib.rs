//! The audit record: what Portcullis remembers about every decision and every
//! administrative change.
//!
//! **API boundary.** The record format is read by auditors and external tools
//! (`audit tail` JSON lines, exports). Fields are only ever added, never renamed.
//! [`AuditRecord::canonical_bytes`] is the exact byte string that will become the
//! record's leaf in the RFC 6962 Merkle log: compact JSON with fields in declaration
//! order, no floats, and optional fields present as `null`, so a record has exactly
//! one encoding.
//!
//! The tamper-evident log is built from pure functions, with no IO:
//! [`merkle`] hashes leaves into an RFC 9162 tree and makes and checks
//! inclusion and consistency proofs, [`note`] signs and opens C2SP signed notes
//! with Ed25519, and [`checkpoint`] signs and verifies the log's tree heads as
//! C2SP checkpoints. [`compact`] is the record's stored form: a lossless
//! binary encoding a store decodes back to the record, and so to its leaf.
//! `docs/audit-format.md` describes the formats.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod compact;
pub mod merkle;
pub mod note;
pub mod verify;

use serde::{Deserialize, Serialize};

/// What kind of event a record describes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A data-plane request.
    #[default]
    Request,
    /// An administrative change (agent created, revoked, certificate issued).
    Admin,
    /// A process the gateway launched (a stdio MCP server): started, exited,
    /// killed by its sandbox. `process` says more.
    Process,
    /// A network connection a sandboxed stdio MCP server asked the gateway's
    /// egress proxy for, allowed or denied: `resource` is the destination
    /// (`host:port`), `process` names the process, its resolved `address`
    /// and the HTTP `method`.
    Egress,
}

/// Whether the thing described was allowed to happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed (by policy for requests; by admin authentication for admin events).
    Allow,
    /// Refused: by policy, by authentication, or by a limit; `error_code` says which.
    #[default]
    Deny,
}

/// One audit record. `Default` is a refused request with every optional field
/// empty, for building records field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, assigned by the store when the record is appended
    /// (`null` until then). It becomes the Merkle leaf index.
    pub seq: Option<u64>,
    /// When the request arrived, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// What kind of event this is.
    pub kind: RecordKind,
    /// The request id (also the `X-Request-Id` header of the response).
    pub request_id: String,
    /// Who acted: the agent's name, or `admin` for admin-API changes. `null` when
    /// authentication failed.
    pub principal: Option<String>,
    /// The credential used: `<spiffe id> serial=<hex>` for agents; for a refused
    /// credential, a description of what was presented (fingerprint, subject).
    pub credential: Option<String>,
    /// The client's IP address.
    pub source_ip: Option<String>,
    /// The action: the HTTP method for requests, e.g. `agent.create` for admin events.
    pub action: String,
    /// The matched route, or the admin object acted on.
    pub resource: Option<String>,
    /// The request path (data plane), without the query string.
    pub path: Option<String>,
    /// Allowed or refused.
    pub outcome: Outcome,
    /// The deciding policy ids (`default-deny` when nothing permitted); empty when
    /// the request was refused before authorization.
    pub policies: Vec<String>,
    /// The stable error code when refused or failed.
    pub error_code: Option<String>,
    /// The HTTP status returned.
    pub status: u16,
    /// Time spent in the gateway, upstream included, in microseconds.
    pub duration_us: u64,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// The data classification of the route (`public`, `internal`,
    /// `confidential`, `restricted`); `null` when no route matched.
    pub classification: Option<String>,
    /// SHA-256 (lowercase hex) of the request body as received from the client
    /// and forwarded; `null` when the body was not read to its end (refused
    /// before forwarding, or abandoned).
    pub request_sha256: Option<String>,
    /// SHA-256 (lowercase hex) of the response body as sent to the client,
    /// after any redaction; `null` when it was not sent to its end.
    pub response_sha256: Option<String>,
    /// SHA-256 of the response body as the upstream sent it, when redaction
    /// changed it; `null` otherwise.
    pub response_sha256_unredacted: Option<String>,
    /// The request was let through while the audit log could not be written,
    /// because its route is configured to fail open.
    pub fail_open: bool,
    /// What the content guard found in the request and response bodies, by
    /// type and position, never the value (at most [`MAX_CONTENT_FINDINGS`]).
    #[serde(default)]
    pub content: Vec<ContentFinding>,
    /// The policy version that decided the request (data plane), or that an
    /// admin change installed or activated (`policy.push`, `policy.rollback`);
    /// `null` when no policy version was involved.
    #[serde(default)]
    pub policy_version: Option<u64>,
    /// The approval ticket a request needed (`approval_required`) or used
    /// (an approved, single-use ticket), or that an `approval.*` admin change
    /// decided; `null` otherwise.
    #[serde(default)]
    pub approval_ticket: Option<String>,
    /// The break-glass grant (`breakglass:<id>`) a request was allowed under,
    /// or that a `breakglass.open` admin change opened; `null` otherwise.
    #[serde(default)]
    pub breakglass: Option<String>,
    /// How many refused unauthenticated requests from `source_ip` this one
    /// summary record stands for (`action` `unauthenticated`, `time_ms` the
    /// start of the minute): beyond a per-source budget they are counted,
    /// not written one by one. Absent from every other record — the one
    /// field left out rather than `null`, so records written before it
    /// existed keep their encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<u64>,
    /// What happened to a launched process (`kind` `process` only; absent
    /// from every other record, like `sampled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessEvent>,
}

/// A launched process's event (`action` `process.spawn`, `process.violation` or
/// `process.exit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEvent {
    /// The command as the route configures it (program and arguments).
    pub command: String,
    /// SHA-256 of the sandbox profile it runs under; `null` when the route's
    /// sandbox is disabled.
    pub profile_sha256: Option<String>,
    /// SHA-256 prefix (16 hex digits) of the MCP session id the process serves.
    pub session: String,
    /// The process id.
    pub pid: Option<u32>,
    /// How it ended (`process.exit` only): `exited`, `ended` (the session
    /// ended), `wall_clock` (killed at its lifetime limit),
    /// `seccomp_violation`, `cpu_limit`, `sandbox_setup_failed`, `signaled`.
    pub cause: Option<String>,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Terminating signal, when one ended it.
    pub signal: Option<i32>,
    /// How long it ran, in milliseconds (`process.exit` only).
    pub ran_ms: Option<u64>,
    /// The address the egress proxy resolved the destination to (`kind`
    /// `egress` only; left out of other records so their encoding stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `CONNECT`, or the method of a plain HTTP request (`kind` `egress`
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The user the agent acted for when a delegated token opened the MCP
    /// session (the `sub` of the user's token; `kind` `process` and
    /// `egress`); left out otherwise, so other records' encoding stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the kernel refused the process (`process.violation` only; left
    /// out of other records, so their encoding stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
    /// How many refusals the kernel reported for the process, each one a
    /// `process.violation` record up to a bound (`process.exit` only, and
    /// only when there were some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violations: Option<u64>,
}

/// One access the kernel refused a sandboxed process, as its audit
/// subsystem reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// `landlock` (a file, a TCP port, a scope) or `seccomp` (a system call,
    /// which killed the process).
    pub mechanism: String,
    /// What was refused: Landlock's access rights (`fs.read_file`,
    /// `fs.write_file,fs.make_reg`, `net.connect_tcp`, `scope.signal`, …),
    /// or `syscall`.
    pub denied: String,
    /// The file, for a filesystem refusal.
    pub path: Option<String>,
    /// `address:port`, for a TCP refusal.
    pub address: Option<String>,
    /// The system call's number (x86-64 numbering on x86-64).
    pub syscall: Option<u32>,
    /// The process that tried (its pid on the host).
    pub pid: Option<u32>,
}

/// Most content findings kept in one record; the rest are counted in the
/// server log only, so a body full of email addresses cannot bloat the log.
pub const MAX_CONTENT_FINDINGS: usize = 64;

/// One content-guard finding in a body: where and what, and for secrets and
/// PII a keyed fingerprint so equal values can be correlated, never the value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentFinding {
    /// `request` or `response`.
    pub direction: String,
    /// The finding type: `prompt_injection`, `aws_access_key`, `email`, …
    pub kind: String,
    /// For JSON request bodies, the JSON pointer of the string holding it.
    pub pointer: Option<String>,
    /// Byte offset of the first byte (in the string at `pointer`, or in the body).
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Keyed hash of the value (16 hex digits) for DLP findings, else `null`.
    pub fingerprint: Option<String>,
}

impl AuditRecord {
    /// The canonical encoding (see the crate docs). `seq` is part of it.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings, integers and enums cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditRecord {
        AuditRecord {
            seq: Some(7),
            time_ms: 1_700_000_000_123,
            kind: RecordKind::Request,
            request_id: "abc".into(),
            principal: Some("bot".into()),
            credential: Some("spiffe://portcullis.local/agent/bot serial=01".into()),
            source_ip: Some("127.0.0.1".into()),
            action: "GET".into(),
            resource: Some("demo".into()),
            path: Some("/demo/hello".into()),
            outcome: Outcome::Allow,
            policies: vec!["readers-read-low".into()],
            error_code: None,
            status: 200,
            duration_us: 42,
            bytes_in: 0,
            bytes_out: 12,
            classification: Some("public".into()),
            request_sha256: Some(
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            ),
            response_sha256: Some(
                "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447".into(),
            ),
            response_sha256_unredacted: None,
            fail_open: false,
            content: vec![ContentFinding {
                direction: "request".into(),
                kind: "aws_access_key".into(),
                pointer: Some("/note".into()),
                start: 10,
                end: 30,
                fingerprint: Some("3f2a9c1d4b5e6f70".into()),
            }],
            policy_version: Some(3),
            approval_ticket: None,
            breakglass: None,
            sampled: None,
            process: None,
        }
    }

    #[test]
    fn canonical_encoding_is_stable() {
        let bytes = sample().canonical_bytes();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"seq":7,"time_ms":1700000000123,"kind":"request","request_id":"abc","principal":"bot","credential":"spiffe://portcullis.local/agent/bot serial=01","source_ip":"127.0.0.1","action":"GET","resource":"demo","path":"/demo/hello","outcome":"allow","policies":["readers-read-low"],"error_code":null,"status":200,"duration_us":42,"bytes_in":0,"bytes_out":12,"classification":"public","request_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","response_sha256":"a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447","response_sha256_unredacted":null,"fail_open":false,"content":[{"direction":"request","kind":"aws_access_key","pointer":"/note","start":10,"end":30,"fingerprint":"3f2a9c1d4b5e6f70"}],"policy_version":3,"approval_ticket":null,"breakglass":null}"#
        );
        let back: AuditRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn leaf_hash_matches_docs() {
        // The worked example in docs/audit-format.md.
        let hash = merkle::leaf_hash(&sample().canonical_bytes());
        assert_eq!(
            hex::encode(hash),
            "a411027c3c410103712a12505a44d7882ce9aa7639327710bcacfea5395e8bea"
        );
    }
}
