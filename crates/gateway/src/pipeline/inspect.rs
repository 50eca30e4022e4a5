//! Inspect (in): the content guard on request bodies, before authorization.
//!
//! On a route whose `[routes.guard]` turns scanning on, the body is read
//! whole (within `[limits] max_body_bytes`, which the metered body enforces),
//! scanned for prompt injection on the input channel and for secrets and PII,
//! and then, by the route's settings: refused with `content_blocked`,
//! redacted, or forwarded with the findings logged. What was found becomes
//! [`ContentFacts`], which authorize hands to policy as `context.content`.
//!
//! JSON bodies are scanned string by string (each value on its own, so one
//! field cannot dilute another), and redaction rewrites only string values,
//! so the body stays valid JSON. Text bodies are scanned whole. Other bodies
//! (binary, compressed, not UTF-8) are forwarded unscanned, with
//! `context.content.scanned == false` for policy to act on.
//!
//! Findings are logged and put in the audit record by type, position (JSON
//! pointer and byte range) and keyed fingerprint, never by value.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, header};

use portcullis_audit::{ContentFinding, MAX_CONTENT_FINDINGS};
use portcullis_core::{ErrorCode, RequestId};
use portcullis_guard::dlp::redact::{Redactor, fingerprint};
use portcullis_guard::{Channel, Guard, Report};
use portcullis_policy::Content;

use crate::body::BodyMeter;
use crate::buffers;
use crate::config::{DlpAction, InjectionAction, RouteConfig};
use crate::pipeline::decode::{Buffered, DecodedRequest, Limits, read_whole};
use crate::respond::Denial;

/// What the guard found in a request body, for policy and the record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContentFacts {
    /// Whether the body was scanned.
    pub scanned: bool,
    /// Highest prompt-injection score over the body's texts.
    pub injection_score: f32,
    /// Whether that score reached the input channel's threshold.
    pub injection_flagged: bool,
    /// Distinct finding types.
    pub findings: Vec<&'static str>,
}

impl ContentFacts {
    /// The facts as the policy façade takes them.
    pub fn as_policy(&self) -> Content<'_> {
        Content {
            scanned: self.scanned,
            injection_score: self.injection_score,
            injection_flagged: self.injection_flagged,
            findings: &self.findings,
        }
    }
}

/// The guard's shared state: the compiled detectors and the key of the
/// fingerprints and placeholders (random per process).
#[derive(Debug)]
pub struct GuardState {
    /// The detectors.
    pub guard: Guard,
    /// Key for fingerprints and placeholder numbering.
    pub key: [u8; 32],
}

/// Whether a content type is text the guard can read.
pub fn is_text(content_type: Option<&HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        // No type: scanned if it turns out to be UTF-8.
        return true;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime.starts_with("text/")
        || mime == "application/json"
        || mime.ends_with("+json")
        || mime == "application/x-ndjson"
        || mime == "application/x-www-form-urlencoded"
        || mime == "application/xml"
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

/// Runs the stage.
///
/// Findings go to `audited` (for the record) whatever the outcome, so a
/// refused request's record says what refused it.
pub async fn run(
    state: Option<&GuardState>,
    route: &RouteConfig,
    request: DecodedRequest,
    limits: &Limits,
    meter: &Arc<BodyMeter>,
    request_id: &RequestId,
    audited: &mut Vec<ContentFinding>,
) -> Result<(DecodedRequest, ContentFacts), Denial> {
    let settings = route.guard;
    let Some(state) = state.filter(|_| settings.scans_requests()) else {
        return Ok((request, ContentFacts::default()));
    };
    let DecodedRequest {
        mut parts,
        body,
        target,
    } = request;
    if settings.dlp != DlpAction::Off {
        // Responses must come back uncompressed for the redactor to read them.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    if encoded || !is_text(content_type.as_ref()) {
        return Ok((
            DecodedRequest {
                parts,
                body,
                target,
            },
            ContentFacts::default(),
        ));
    }

    let Buffered { bytes, mut lease } = read_whole(body, limits, meter).await?;
    // The body that goes on holds the lease until it is dropped.
    let rebuild = |parts, bytes, lease| DecodedRequest {
        parts,
        body: Buffered::into_body(bytes, lease),
        target,
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok((rebuild(parts, bytes, lease), ContentFacts::default()));
    };

    let json: Option<serde_json::Value> = if is_json(content_type.as_ref()) {
        // The parsed copy is leased too, before it is made.
        lease.grow(buffers::json_cost(&bytes))?;
        serde_json::from_str(text).ok()
    } else {
        None
    };
    let mut scan = TextScan::new(state, settings, request_id, &route.name, "request");
    let new_body = match json {
        Some(mut value) => {
            walk_strings(&mut value, &mut String::new(), &mut |pointer, s| {
                scan.scan_in_place(s, Channel::Input, pointer, audited);
            });
            scan.changed.then(|| Bytes::from(value.to_string()))
        }
        None => {
            let report = scan.scan(text, Channel::Input, "", audited);
            scan.redacted(text, &report).map(Bytes::from)
        }
    };
    let (facts, verdict) = scan.settle("request");
    verdict?;
    let bytes = match new_body {
        Some(b) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            b
        }
        None => bytes,
    };
    // Only the body that goes on stays leased.
    lease.shrink_to(bytes.len() as u64);
    Ok((rebuild(parts, bytes, lease), facts))
}

pub(crate) fn is_dlp_kind(kind: &str) -> bool {
    portcullis_guard::dlp::Kind::ALL
        .iter()
        .any(|k| k.as_str() == kind)
}

/// Calls `f` with the JSON pointer and a mutable reference of every string
/// value in `value` (object keys are not scanned: they are the schema, not
/// the content).
pub(crate) fn walk_strings(
    value: &mut serde_json::Value,
    pointer: &mut String,
    f: &mut dyn FnMut(&str, &mut String),
) {
    match value {
        serde_json::Value::String(s) => f(pointer, s),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                walk_strings(item, pointer, f);
                pointer.truncate(len);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk_strings(item, pointer, f);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// The scans of one message's texts, gathered as they go: HTTP bodies, LLM
/// messages, MCP arguments and MCP results all scan through it, so each
/// text is scanned, noted for policy, logged for the record and redacted
/// (when the route redacts) the same way.
pub(crate) struct TextScan<'a> {
    state: &'a GuardState,
    settings: crate::config::RouteGuard,
    request_id: &'a RequestId,
    route: &'a str,
    /// "request" or "response", for the record's findings.
    direction: &'static str,
    redactor: Redactor,
    facts: ContentFacts,
    kinds: Vec<&'static str>,
    dlp_found: bool,
    /// Whether a redaction rewrote a text.
    pub changed: bool,
}

impl<'a> TextScan<'a> {
    pub(crate) fn new(
        state: &'a GuardState,
        settings: crate::config::RouteGuard,
        request_id: &'a RequestId,
        route: &'a str,
        direction: &'static str,
    ) -> Self {
        TextScan {
            state,
            settings,
            request_id,
            route,
            direction,
            redactor: Redactor::new(&state.key),
            facts: ContentFacts {
                scanned: true,
                ..ContentFacts::default()
            },
            kinds: Vec::new(),
            dlp_found: false,
            changed: false,
        }
    }

    /// Scans `text` (at JSON `pointer`, "" for a whole body) on `channel`,
    /// notes what it found and adds its findings to `audited`.
    pub(crate) fn scan(
        &mut self,
        text: &str,
        channel: Channel,
        pointer: &str,
        audited: &mut Vec<ContentFinding>,
    ) -> Report {
        let injection = self.settings.injection != InjectionAction::Off;
        let dlp = self.settings.dlp != DlpAction::Off;
        let report = self.state.guard.scan_with(text, channel, injection, dlp);
        self.facts.injection_score = self.facts.injection_score.max(report.injection_score);
        self.facts.injection_flagged |= report.flagged;
        self.kinds.extend(report.kinds());
        self.dlp_found |= !report.dlp.is_empty();
        log_findings(
            &Site {
                state: self.state,
                request_id: self.request_id,
                route: self.route,
                direction: self.direction,
            },
            pointer,
            text,
            &report,
            audited,
        );
        report
    }

    /// [`Self::scan`], then redacts `text` in place when the route redacts.
    pub(crate) fn scan_in_place(
        &mut self,
        text: &mut String,
        channel: Channel,
        pointer: &str,
        audited: &mut Vec<ContentFinding>,
    ) {
        let report = self.scan(text, channel, pointer, audited);
        if let Some(out) = self.redacted(text, &report) {
            *text = out;
        }
    }

    /// `text` with the report's DLP findings redacted, when the route
    /// redacts and there are any.
    pub(crate) fn redacted(&mut self, text: &str, report: &Report) -> Option<String> {
        if self.settings.dlp != DlpAction::Redact || report.dlp.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        self.redactor.apply(text, &report.dlp, &mut out);
        self.changed = true;
        Some(out)
    }

    /// The facts for policy, and the route's verdict on what was found
    /// (`what`: "request" or "answer", for the refusal's message).
    pub(crate) fn settle(self, what: &str) -> (ContentFacts, Result<(), Denial>) {
        let mut facts = self.facts;
        let verdict = settle(self.settings, &mut facts, self.kinds, self.dlp_found, what);
        (facts, verdict)
    }
}

/// Where findings were made: the guard, the request, the route, and
/// `request` or `response`.
pub(crate) struct Site<'a> {
    pub(crate) state: &'a GuardState,
    pub(crate) request_id: &'a RequestId,
    pub(crate) route: &'a str,
    pub(crate) direction: &'static str,
}

/// Logs each finding by type and position, and adds it to `audited` (up to
/// the record's cap); DLP findings carry the keyed fingerprint of the value
/// so equal values can be correlated. `direction` is `request` or `response`.
pub(crate) fn log_findings(
    site: &Site<'_>,
    pointer: &str,
    text: &str,
    report: &Report,
    audited: &mut Vec<ContentFinding>,
) {
    let Site {
        state,
        request_id,
        route,
        direction,
    } = *site;
    for f in &report.findings {
        let fp = report
            .dlp
            .iter()
            .find(|d| d.start == f.start && d.end == f.end && d.kind.as_str() == f.kind)
            .and_then(|d| {
                text.get(d.start..d.end)
                    .map(|v| fingerprint(&state.key, d.kind, v))
            });
        if audited.len() < MAX_CONTENT_FINDINGS {
            audited.push(ContentFinding {
                direction: direction.into(),
                kind: f.kind.into(),
                pointer: (!pointer.is_empty()).then(|| pointer.to_string()),
                start: f.start as u64,
                end: f.end as u64,
                fingerprint: fp.clone(),
            });
        }
        tracing::warn!(
            request_id = %request_id,
            route,
            direction,
            kind = f.kind,
            pointer,
            start = f.start,
            end = f.end,
            detail = f.detail.as_deref().unwrap_or(""),
            fingerprint = fp.as_deref().unwrap_or(""),
            "content guard finding"
        );
    }
}

/// Sets `facts.findings` from the kinds found, and refuses when the route
/// blocks what was found (`what`: "request" or "answer", for the message).
pub(crate) fn settle(
    settings: crate::config::RouteGuard,
    facts: &mut ContentFacts,
    mut kinds: Vec<&'static str>,
    dlp_found: bool,
    what: &str,
) -> Result<(), Denial> {
    kinds.sort_unstable();
    kinds.dedup();
    facts.findings = kinds;
    if settings.injection == InjectionAction::Block && facts.injection_flagged {
        return Err(Denial::new(
            ErrorCode::ContentBlocked,
            format!(
                "{what} blocked by the content guard: prompt injection (score {:.2})",
                facts.injection_score
            ),
        ));
    }
    if settings.dlp == DlpAction::Block && dlp_found {
        let dlp_kinds: Vec<&str> = facts
            .findings
            .iter()
            .copied()
            .filter(|k| is_dlp_kind(k))
            .collect();
        return Err(Denial::new(
            ErrorCode::ContentBlocked,
            format!(
                "{what} blocked by the content guard: sensitive data ({})",
                dlp_kinds.join(", ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_types() {
        let t = |s: &str| is_text(Some(&HeaderValue::from_str(s).unwrap()));
        assert!(t("application/json; charset=utf-8"));
        assert!(t("text/plain"));
        assert!(t("application/vnd.api+json"));
        assert!(!t("application/octet-stream"));
        assert!(!t("multipart/form-data; boundary=x"));
        assert!(is_text(None));
    }

    #[test]
    fn json_strings_are_walked_with_pointers() {
        let mut v: serde_json::Value =
            serde_json::json!({"a": ["x", {"b/c": "y"}], "n": 1, "s": "z"});
        let mut seen = Vec::new();
        walk_strings(&mut v, &mut String::new(), &mut |p, s| {
            seen.push(format!("{p}={s}"));
            s.push('!');
        });
        assert_eq!(seen, ["/a/0=x", "/a/1/b~1c=y", "/s=z"]);
        assert_eq!(v["s"], "z!");
    }
}
