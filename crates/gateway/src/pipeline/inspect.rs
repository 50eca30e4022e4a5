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
//! so the body stays valid JSON. Every string value and every object key is
//! read, at any depth (one generic walk, [`walk_json`], shared with the MCP
//! and LLM adapters). Text bodies are scanned whole. A body the guard cannot
//! read (binary, multipart, compressed, not UTF-8, JSON that does not parse
//! or repeats a key) is refused with `content_unscannable` on a route that
//! blocks (`injection` or `dlp` = `block`) unless the route sets
//! `allow_unscannable`; elsewhere it is forwarded unscanned, with
//! `context.content.scanned == false` for policy to act on (JSON that does
//! not parse is scanned as text).
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

pub(crate) fn is_json(content_type: Option<&HeaderValue>) -> bool {
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
        mut target,
    } = request;
    if settings.dlp != DlpAction::Off || settings.injection != InjectionAction::Off {
        // Answers must come back uncompressed for the redactor and the
        // injection scan (inspect_out.rs) to read them.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    let mut scan = TextScan::new(state, settings, request_id, &route.name, "request");
    // The query and the headers reach the upstream as the body does.
    scan_query(&mut scan, &mut parts, &mut target, audited);
    scan_headers(&mut scan, &mut parts.headers, audited);
    // A body not scanned: what the query and headers held still counts.
    let unscanned = |scan: TextScan<'_>| -> Result<ContentFacts, Denial> {
        let (mut facts, verdict) = scan.settle("request");
        verdict?;
        facts.scanned = false;
        Ok(facts)
    };
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    let empty = http_body::Body::size_hint(&body).exact() == Some(0);
    if encoded || !is_text(content_type.as_ref()) {
        if settings.refuses_unscannable() && !empty {
            return Err(unscannable(if encoded { "compressed" } else { "not text" }));
        }
        let facts = unscanned(scan)?;
        return Ok((
            DecodedRequest {
                parts,
                body,
                target,
            },
            facts,
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
        if settings.refuses_unscannable() {
            return Err(unscannable("not UTF-8"));
        }
        let facts = unscanned(scan)?;
        return Ok((rebuild(parts, bytes, lease), facts));
    };

    let json: Option<serde_json::Value> = if is_json(content_type.as_ref()) && !bytes.is_empty() {
        // The parsed copy is leased too, before it is made.
        lease.grow(buffers::json_cost(&bytes))?;
        match parse_strict(text) {
            Ok(value) => Some(value),
            // Unparsable, or with a key twice (an upstream may read the
            // first where the walk would see the last): refused on a route
            // that blocks, else scanned as one text.
            Err(_) if settings.refuses_unscannable() => {
                return Err(unscannable("JSON that is invalid or repeats a key"));
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let form = is_form(content_type.as_ref());
    let new_body = scan_text_body(&mut scan, text, json, form, audited);
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

pub(crate) fn is_form(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Scans a text body: `json` (its parsed value, when it is JSON) string by
/// string through [`walk_json`], a `form` pair by pair, decoded, and any
/// other text whole. The body rewritten when the route redacts and a
/// redaction changed it. The HTTP pipeline and the egress proxy both read
/// bodies through it.
pub(crate) fn scan_text_body(
    scan: &mut TextScan<'_>,
    text: &str,
    json: Option<serde_json::Value>,
    form: bool,
    audited: &mut Vec<ContentFinding>,
) -> Option<Bytes> {
    let form = form
        .then(|| serde_urlencoded::from_str::<Vec<(String, String)>>(text).ok())
        .flatten();
    match (json, form) {
        (Some(mut value), _) => {
            walk_json(&mut value, &mut String::new(), &mut |pointer, s, _| {
                scan.scan_in_place(s, Channel::Input, pointer, audited)
            });
            scan.changed.then(|| Bytes::from(value.to_string()))
        }
        // A form is read decoded (`%41KIA…` is `AKIA…`), pair by pair.
        (None, Some(mut pairs)) => {
            let before = std::mem::replace(&mut scan.changed, false);
            scan_pairs(scan, &mut pairs, "form", audited);
            let rewritten = scan.changed;
            scan.changed |= before;
            rewritten
                .then(|| serde_urlencoded::to_string(&pairs).ok().map(Bytes::from))
                .flatten()
        }
        (None, None) => {
            let report = scan.scan(text, Channel::Input, "", audited);
            scan.redacted(text, &report).map(Bytes::from)
        }
    }
}

/// The guard on what a request's head carries upstream (its query and its
/// headers) on MCP and LLM routes, whose adapters scan the bodies: [`run`]
/// reads the head of an HTTP request itself. Redaction rewrites both in
/// place; a blocking finding refuses the request.
pub fn scan_head(
    state: Option<&GuardState>,
    route: &RouteConfig,
    request: &mut DecodedRequest,
    request_id: &RequestId,
    audited: &mut Vec<ContentFinding>,
) -> Result<(), Denial> {
    let settings = route.guard;
    let Some(state) = state.filter(|_| settings.scans_requests()) else {
        return Ok(());
    };
    let mut scan = TextScan::new(state, settings, request_id, &route.name, "request");
    scan_query(&mut scan, &mut request.parts, &mut request.target, audited);
    scan_headers(&mut scan, &mut request.parts.headers, audited);
    scan.settle("request").1
}

/// Scans decoded `name=value` pairs (a query or a form), names and values,
/// at pointers `{what}:{i}` (never the name: it may be the secret), and
/// redacts them in place when the route redacts.
fn scan_pairs(
    scan: &mut TextScan<'_>,
    pairs: &mut [(String, String)],
    what: &str,
    audited: &mut Vec<ContentFinding>,
) {
    for (i, (name, value)) in pairs.iter_mut().enumerate() {
        let pointer = format!("{what}:{i}");
        scan.scan_in_place(name, Channel::Input, &pointer, audited);
        scan.scan_in_place(value, Channel::Input, &pointer, audited);
    }
}

/// Scans the query string, decoded; a redaction rewrites the target and
/// the URI that go on.
fn scan_query(
    scan: &mut TextScan<'_>,
    parts: &mut http::request::Parts,
    target: &mut crate::target::CanonicalTarget,
    audited: &mut Vec<ContentFinding>,
) {
    let Some(query) = target.query.as_deref().filter(|q| !q.is_empty()) else {
        return;
    };
    let Some(new) = scan_query_text(scan, query, audited) else {
        return;
    };
    target.query = Some(new);
    if let Ok(uri) = target.path_and_query().parse::<http::Uri>() {
        parts.uri = uri;
    }
}

/// Scans a query string, decoded, pair by pair (pointers `query:{i}`), or
/// whole when it is not `name=value` pairs; the rewritten query when a
/// redaction changed it.
pub(crate) fn scan_query_text(
    scan: &mut TextScan<'_>,
    query: &str,
    audited: &mut Vec<ContentFinding>,
) -> Option<String> {
    let Ok(mut pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) else {
        // Not `name=value` pairs: the whole query as one text.
        let mut text = query.to_string();
        scan.scan_in_place(&mut text, Channel::Input, "query", audited);
        return None;
    };
    let before = std::mem::replace(&mut scan.changed, false);
    scan_pairs(scan, &mut pairs, "query", audited);
    let rewritten = scan.changed;
    scan.changed |= before;
    rewritten
        .then(|| serde_urlencoded::to_string(&pairs).ok())
        .flatten()
}

/// Headers the gateway reads and removes itself before forwarding: the
/// agent's own credentials, not content going upstream.
const CONSUMED_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "dpop",
    crate::pipeline::forward::AGENT_HEADER,
    crate::pipeline::forward::CLIENT_CERT_HEADER,
];

/// Scans every header value going upstream (pointer `header:{name}`), and
/// redacts it in place when the route redacts.
pub(crate) fn scan_headers(
    scan: &mut TextScan<'_>,
    headers: &mut http::HeaderMap,
    audited: &mut Vec<ContentFinding>,
) {
    for (name, value) in headers.iter_mut() {
        if CONSUMED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let Ok(text) = value.to_str() else {
            continue;
        };
        let mut text = text.to_string();
        let before = text.clone();
        scan.scan_in_place(
            &mut text,
            Channel::Input,
            &format!("header:{name}"),
            audited,
        );
        if text != before
            && let Ok(v) = HeaderValue::from_str(&text)
        {
            *value = v;
        }
    }
}

/// The longest string read as an identifier rather than as text.
const IDENTIFIER_MAX: usize = 32;

/// Whether `text` is a short identifier (a key such as `text`, a type tag,
/// a method name): no whitespace, at most [`IDENTIFIER_MAX`] bytes. Every
/// string of a message is scanned since issue 19, keys and type tags too;
/// an injection needs words, and the injection model scores some single
/// words high (`text` scores 0.80 on the input channel), so identifiers get
/// DLP only.
fn is_identifier(text: &str) -> bool {
    text.len() <= IDENTIFIER_MAX && !text.chars().any(char::is_whitespace)
}

/// The refusal of a body the guard cannot read.
fn unscannable(what: &str) -> Denial {
    Denial::new(
        ErrorCode::ContentUnscannable,
        format!(
            "the request body is {what}, so the content guard cannot read it; \
             the route refuses what it cannot scan (`[routes.guard] allow_unscannable`)"
        ),
    )
}

/// Parses JSON as `serde_json` does, but refuses an object with a key
/// twice: `serde_json` keeps the last, another parser the first, so the
/// value the guard scans might not be the one the upstream reads.
pub fn parse_strict(text: &str) -> Result<serde_json::Value, serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Strict;

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = serde_json::Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = serde_json::Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value without repeated keys")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom("a key appears twice"));
            }
            let value = map.next_value_seed(Strict)?;
            out.insert(key, value);
        }
        Ok(serde_json::Value::Object(out))
    }
}

pub(crate) fn is_dlp_kind(kind: &str) -> bool {
    portcullis_guard::dlp::Kind::from_name(kind).is_some()
}

/// Which string of a JSON document a walk visits: a value, or an object key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// A string value.
    Value,
    /// An object's key (the pointer given is the object's).
    Key,
}

/// The pointer segment standing for a key that holds a secret, so that no
/// pointer logged or recorded below it carries the secret in clear.
pub(crate) const MASKED_KEY: &str = "[REDACTED]";

/// Calls `f` with the JSON pointer, a mutable reference and the [`Part`] of
/// every string in `value`: every string value and every object key, at any
/// depth. This one walk is how the guard reads JSON everywhere (HTTP bodies,
/// MCP messages, LLM requests and answers): it knows no field names, so no
/// field can be left out.
///
/// `f` returns whether the string holds a secret. A key `f` rewrites
/// (redaction) is renamed in its object; a key that holds a secret and is
/// not rewritten appears as [`MASKED_KEY`] in the pointers below it.
pub(crate) fn walk_json(
    value: &mut serde_json::Value,
    pointer: &mut String,
    f: &mut dyn FnMut(&str, &mut String, Part) -> bool,
) {
    match value {
        serde_json::Value::String(s) => {
            f(pointer, s, Part::Value);
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                walk_json(item, pointer, f);
                pointer.truncate(len);
            }
        }
        serde_json::Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let mut scanned = key.clone();
                let secret = f(pointer, &mut scanned, Part::Key);
                if scanned != key
                    && let Some(item) = map.remove(&key)
                {
                    map.insert(scanned.clone(), item);
                }
                let segment = if secret && scanned == key {
                    MASKED_KEY.to_string()
                } else {
                    scanned.replace('~', "~0").replace('/', "~1")
                };
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&segment);
                if let Some(item) = map.get_mut(&scanned) {
                    walk_json(item, pointer, f);
                }
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
    /// Where the highest flagged injection is (its full pointer, see
    /// [`finding_pointer`]), for the refusal.
    injection_at: Option<(f32, String)>,
    /// Whether a text holds a part the guard could not decode
    /// (`undecodable_part`: a MIME part in an unknown encoding, …).
    undecodable: bool,
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
            injection_at: None,
            undecodable: false,
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
        let injection = self.settings.injection != InjectionAction::Off && !is_identifier(text);
        let dlp = self.settings.dlp != DlpAction::Off;
        let report = self.state.guard.scan_with(text, channel, injection, dlp);
        self.facts.injection_score = self.facts.injection_score.max(report.injection_score);
        self.facts.injection_flagged |= report.flagged;
        self.kinds.extend(report.kinds());
        self.dlp_found |= !report.dlp.is_empty();
        self.undecodable |= report.findings.iter().any(|f| f.kind == UNDECODABLE);
        if report.flagged
            && self
                .injection_at
                .as_ref()
                .is_none_or(|(score, _)| report.injection_score > *score)
        {
            let inner = report
                .findings
                .iter()
                .find(|f| f.kind == "prompt_injection")
                .and_then(|f| f.pointer.as_deref());
            self.injection_at = Some((
                report.injection_score,
                finding_pointer(self.state, pointer, inner),
            ));
        }
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

    /// [`Self::scan`], then redacts `text` in place when the route redacts;
    /// true when it holds a secret.
    pub(crate) fn scan_in_place(
        &mut self,
        text: &mut String,
        channel: Channel,
        pointer: &str,
        audited: &mut Vec<ContentFinding>,
    ) -> bool {
        let report = self.scan(text, channel, pointer, audited);
        if let Some(out) = self.redacted(text, &report) {
            *text = out;
        }
        !report.dlp.is_empty()
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
        let mut verdict = settle(
            self.settings,
            &mut facts,
            self.kinds,
            self.dlp_found,
            what,
            self.injection_at.as_ref().map(|(_, p)| p.as_str()),
        );
        if verdict.is_ok() && self.undecodable && self.settings.refuses_unscannable() {
            verdict = Err(Denial::new(
                ErrorCode::ContentUnscannable,
                format!(
                    "the {what} holds a part the content guard cannot decode (an unknown \
                     transfer encoding or charset, or a type that is not text); the route \
                     refuses what it cannot scan (`[routes.guard] allow_unscannable`)"
                ),
            ));
        }
        (facts, verdict)
    }
}

/// The finding kind of a part of a structured text the guard could not
/// decode (`portcullis_guard::injection::SignalKind::Undecodable`).
const UNDECODABLE: &str = "undecodable_part";

/// A finding's full pointer: the pointer of the text in its message (a
/// JSON pointer, `query:0`, "" for a whole body) and, when the text is a
/// structured document, `#` and the finding's place inside it (`/2/body`,
/// itself `#`-nested for documents in fields). The inner part is the
/// text's own keys: one that holds a secret is masked as a whole.
pub(crate) fn finding_pointer(state: &GuardState, pointer: &str, inner: Option<&str>) -> String {
    match inner {
        Some(inner) if state.guard.scanner().scan(inner).is_empty() => {
            format!("{pointer}#{inner}")
        }
        Some(_) => format!("{pointer}#{MASKED_KEY}"),
        None => pointer.to_string(),
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
        let at = finding_pointer(state, pointer, f.pointer.as_deref());
        let pointer = at.as_str();
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
    at: Option<&str>,
) -> Result<(), Denial> {
    kinds.sort_unstable();
    kinds.dedup();
    facts.findings = kinds;
    if settings.injection == InjectionAction::Block && facts.injection_flagged {
        let at = match at {
            Some(p) if !p.is_empty() => format!(" at `{p}`"),
            _ => String::new(),
        };
        return Err(Denial::new(
            ErrorCode::ContentBlocked,
            format!(
                "{what} blocked by the content guard: prompt injection (score {:.2}){at}",
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

    /// Issue 19: a text that is JSON records is read record by record on
    /// every protocol, through the one shared scan: an HTTP text body and a
    /// JSON body's field, an MCP tool result, an LLM tool message.
    #[test]
    fn json_records_are_read_record_by_record_on_every_protocol() {
        use crate::llm::api::{Endpoint, for_each_text};
        let state = GuardState {
            guard: Guard::new().unwrap(),
            key: [7; 32],
        };
        let settings = crate::config::RouteGuard {
            injection: InjectionAction::Block,
            dlp: DlpAction::Alert,
            allow_unscannable: false,
        };
        let rid = RequestId::new();
        for (infected, blocked) in [(Some(2), true), (None, false)] {
            let records = portcullis_guard::eval::records_fixture(infected);
            let scan = || TextScan::new(&state, settings, &rid, "r", "request");
            let mut audited = Vec::new();
            // HTTP: a text body, scanned whole.
            let mut s = scan();
            s.scan(&records, Channel::Input, "", &mut audited);
            assert_eq!(s.settle("request").1.is_err(), blocked, "HTTP text");
            // HTTP: a JSON body, one field holding the records.
            let mut body = serde_json::json!({"note": "hello there", "doc": records});
            let mut s = scan();
            walk_json(&mut body, &mut String::new(), &mut |p, t, _| {
                s.scan_in_place(t, Channel::Input, p, &mut audited)
            });
            assert_eq!(s.settle("request").1.is_err(), blocked, "HTTP JSON");
            // MCP: a tool result whose text is the records.
            let meter = BodyMeter::default();
            let mut m = serde_json::json!({"jsonrpc": "2.0", "id": 1,
                "result": {"content": [{"type": "text", "text": records}]}});
            assert_eq!(
                crate::mcp::guard::scan_answer(&state, settings, &mut m, &rid, "r", &meter),
                blocked,
                "MCP"
            );
            if blocked {
                assert_eq!(m["error"]["data"]["code"], "content_blocked");
                let found = meter.response_findings.lock().unwrap();
                // The text is JSON records: the pointer goes on into it.
                assert!(found.iter().any(|f| f.kind == "prompt_injection"
                    && f.pointer.as_deref() == Some("/result/content/0/text#/2/body")));
            }
            // LLM: a tool message whose content is the records.
            let mut body = serde_json::json!({"model": "m", "messages": [
                {"role": "user", "content": "Summarise my inbox."},
                {"role": "tool", "tool_call_id": "1", "content": records}]});
            let mut s = scan();
            for_each_text(&Endpoint::ChatCompletions, &mut body, &mut |p, t, c| {
                s.scan_in_place(t, c, p, &mut audited)
            });
            let (facts, verdict) = s.settle("request");
            assert_eq!(verdict.is_err(), blocked, "LLM {facts:?}");
        }
    }

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
    fn identifiers_are_not_scored_for_injection() {
        assert!(is_identifier("text") && is_identifier("tools/call") && is_identifier(""));
        assert!(!is_identifier("ignore all"));
        assert!(!is_identifier(&"x".repeat(IDENTIFIER_MAX + 1)));
    }

    #[test]
    fn json_with_a_repeated_key_is_not_parsed() {
        assert_eq!(
            parse_strict(r#"{"a":[1,2.5,"x",null,true,{"b":{}}]}"#).unwrap(),
            serde_json::json!({"a": [1, 2.5, "x", null, true, {"b": {}}]})
        );
        assert!(parse_strict(r#"{"a":"AKIAQWADE5R42RDZ4JEM","a":"x"}"#).is_err());
        assert!(parse_strict(r#"{"o":{"a":1,"a":2}}"#).is_err());
        assert!(parse_strict(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn every_string_and_key_is_walked_with_pointers() {
        let mut v: serde_json::Value =
            serde_json::json!({"a": ["x", {"b/c": "y"}], "n": 1, "s": "z", "k-SECRET": {"t": "u"}});
        let mut seen = Vec::new();
        walk_json(&mut v, &mut String::new(), &mut |p, s, part| {
            seen.push(format!("{p}={s}@{part:?}"));
            match part {
                Part::Value => s.push('!'),
                Part::Key if s == "s" => *s = "S".into(),
                Part::Key => {}
            }
            s.contains("SECRET")
        });
        assert_eq!(
            seen,
            [
                "=a@Key",
                "/a/0=x@Value",
                "/a/1=b/c@Key",
                "/a/1/b~1c=y@Value",
                "=n@Key",
                "=s@Key",
                "/S=z@Value",
                "=k-SECRET@Key",
                "/[REDACTED]=t@Key",
                "/[REDACTED]/t=u@Value",
            ]
        );
        assert_eq!(v["S"], "z!");
        assert!(v.get("s").is_none());
    }
}
