//! The HTTP families: path and encoding confusion, header spoofing and
//! request smuggling. Their oracle is the open route's echoing upstream
//! (the quickstart's demo upstream says which method, path, agent and
//! header names it received): an attack holds when the gateway refuses it,
//! or when what reached the upstream is not what the attacker wanted there.

use serde_json::Value;

use super::Target;
use super::report::{Family, Probe};
use super::wire::{Answer, Tls};

/// Marks the path of a request hidden inside another one.
const SMUGGLED: &str = "rt-smuggled";

/// Whether a path, decoded any number of times (also the overlong UTF-8
/// forms of `.`, `/` and `\`), climbs out of where it was sent or names the
/// closed route.
fn escapes(path: &str, closed: &str) -> bool {
    let mut text = path.to_string();
    for _ in 0..4 {
        let lower = text.to_ascii_lowercase();
        let normal = lower
            .replace("%c0%ae", ".")
            .replace("%c0%af", "/")
            .replace("%c1%9c", "/")
            .replace('\\', "/");
        if normal.split(['/', ';']).any(|s| s == "..")
            || normal.contains(&closed.trim_start_matches('/').to_ascii_lowercase())
        {
            return true;
        }
        let decoded = percent_decode(&normal);
        if decoded == normal {
            break;
        }
        text = decoded;
    }
    false
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The upstream's echo of what it received, when the answer is one.
fn echo(answer: &Answer) -> Option<Value> {
    let v = answer.json();
    v.get("path").is_some().then_some(v)
}

/// Path and encoding confusion: requests spelled to be routed (and allowed)
/// as the open route while reaching the closed one.
pub fn path_confusion(t: &Target) -> Family {
    let open = t.routes.open.as_str();
    let closed = t.routes.closed.as_str();
    let c = closed.trim_start_matches('/');
    let upper = closed.to_ascii_uppercase();
    let mixed: String = closed
        .chars()
        .enumerate()
        .map(|(i, ch)| {
            if i % 2 == 1 {
                ch.to_ascii_uppercase()
            } else {
                ch
            }
        })
        .collect();
    let authority = t.wire.host.clone();
    let targets: Vec<(&str, String)> = vec![
        ("dot-dot", format!("{open}/../{c}/rt")),
        ("dot-slash-dot-dot", format!("{open}/./../{c}/rt")),
        ("encoded-dots", format!("{open}/%2e%2e/{c}/rt")),
        ("encoded-dots-upper", format!("{open}/%2E%2E/{c}/rt")),
        ("half-encoded-dots", format!("{open}/.%2e/{c}/rt")),
        ("encoded-slash", format!("{open}/..%2f{c}%2frt")),
        ("encoded-dots-and-slash", format!("{open}/%2e%2e%2f{c}/rt")),
        ("double-encoded-dots", format!("{open}/%252e%252e/{c}/rt")),
        (
            "double-encoded-slash",
            format!("{open}/%252e%252e%252f{c}/rt"),
        ),
        ("overlong-utf8-dots", format!("{open}/%c0%ae%c0%ae/{c}/rt")),
        ("overlong-utf8-slash", format!("{open}/..%c0%af{c}/rt")),
        ("encoded-backslash", format!("{open}/..%5c{c}/rt")),
        ("raw-backslash", format!("{open}/..\\{c}/rt")),
        ("semicolon-dot-dot", format!("{open}/..;/{c}/rt")),
        ("null-byte", format!("{open}/rt%00/../../{c}/rt")),
        ("double-slash", format!("/{closed}/rt")),
        ("upper-case", format!("{upper}/rt")),
        ("mixed-case", format!("{mixed}/rt")),
        (
            "absolute-form",
            format!("https://{authority}{open}/../{c}/rt"),
        ),
        ("encoded-prefix", format!("{}/rt", encode_first(closed))),
    ];
    let probes = targets
        .iter()
        .map(|(name, target)| {
            let request = format!("GET {target} HTTP/1.1");
            match t.wire.request(Tls::Agent, "GET", target, &[], "") {
                Err(e) => Probe::unanswered(name, &request, &e, true),
                Ok(a) => {
                    let (held, evidence) = judge_path(&a, closed);
                    Probe::from_answer(name, &request, &a, held, evidence)
                }
            }
        })
        .collect();
    Family::judged("path-confusion", probes)
}

/// `/payroll` as `/%70ayroll`: the same route, spelled otherwise.
fn encode_first(prefix: &str) -> String {
    let mut chars = prefix.trim_start_matches('/').chars();
    match chars.next() {
        Some(first) => format!("/%{:02x}{}", first as u32 & 0xff, chars.as_str()),
        None => prefix.to_string(),
    }
}

fn judge_path(a: &Answer, closed: &str) -> (bool, String) {
    if a.status >= 300 {
        return (true, format!("refused: HTTP {}", a.status));
    }
    match echo(a) {
        Some(e) => {
            let got = e["path"].as_str().unwrap_or_default();
            if escapes(got, closed) {
                (
                    false,
                    format!("HTTP {} and the upstream received path `{got}`", a.status),
                )
            } else {
                (
                    true,
                    format!("answered by the open route; the upstream received `{got}`"),
                )
            }
        }
        None => (
            false,
            format!(
                "HTTP {} from an upstream that does not say what it received",
                a.status
            ),
        ),
    }
}

/// Says why a spoofed header got through, judging the upstream's echo.
type Check = fn(&Value, &str) -> Option<String>;
/// A spoofing probe: its name, the headers sent, the header whose arrival
/// is judged and how.
type Spoof<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, Check);

/// Header spoofing: identity, client address, URL-rewrite, method-override
/// and `Host` headers an upstream might believe.
pub fn header_spoofing(t: &Target) -> Family {
    if !t.echo_headers {
        return Family::skipped(
            "header-spoofing",
            "the open route's upstream does not echo the headers it receives",
        );
    }
    let open = t.routes.open.as_str();
    let closed = t.routes.closed.as_str();
    let target = format!("{open}/rt-headers");
    let spoof_agent = "spiffe://portcullis.local/agent/admin";
    let closed_url = format!("{closed}/rt");
    // (name, headers, what must not reach the upstream)
    let cases: Vec<Spoof> = vec![
        (
            "agent-identity",
            vec![("X-Portcullis-Agent", spoof_agent.to_string())],
            "x-portcullis-agent",
            |e, _| {
                (e["agent"].as_str() == Some("spiffe://portcullis.local/agent/admin"))
                    .then(|| "the upstream was told the caller is `admin`".to_string())
            },
        ),
        (
            "agent-identity-underscore",
            vec![("X_Portcullis_Agent", spoof_agent.to_string())],
            "x_portcullis_agent",
            reached_upstream,
        ),
        (
            "x-forwarded-for",
            vec![("X-Forwarded-For", "203.0.113.7".to_string())],
            "x-forwarded-for",
            |e, _| {
                e["forwarded_for"]
                    .as_str()
                    .is_some_and(|v| v.contains("203.0.113.7"))
                    .then(|| "the upstream saw the claimed client address".to_string())
            },
        ),
        (
            "forwarded",
            vec![("Forwarded", "for=203.0.113.7;host=internal".to_string())],
            "forwarded",
            reached_upstream,
        ),
        (
            "x-real-ip",
            vec![("X-Real-IP", "203.0.113.7".to_string())],
            "x-real-ip",
            reached_upstream,
        ),
        (
            "true-client-ip",
            vec![("True-Client-IP", "203.0.113.7".to_string())],
            "true-client-ip",
            reached_upstream,
        ),
        (
            "x-original-url",
            vec![("X-Original-URL", closed_url.clone())],
            "x-original-url",
            reached_upstream,
        ),
        (
            "x-rewrite-url",
            vec![("X-Rewrite-URL", closed_url.clone())],
            "x-rewrite-url",
            reached_upstream,
        ),
        (
            "x-forwarded-host",
            vec![("X-Forwarded-Host", "admin.internal".to_string())],
            "x-forwarded-host",
            reached_upstream,
        ),
        (
            "x-http-method-override",
            vec![("X-HTTP-Method-Override", "DELETE".to_string())],
            "x-http-method-override",
            reached_upstream,
        ),
        (
            "x-http-method",
            vec![("X-HTTP-Method", "DELETE".to_string())],
            "x-http-method",
            reached_upstream,
        ),
        (
            "x-method-override",
            vec![("X-Method-Override", "DELETE".to_string())],
            "x-method-override",
            reached_upstream,
        ),
    ];
    let mut probes = Vec::new();
    for (name, headers, header, check) in cases {
        let sent: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let request = describe("GET", &target, &sent);
        probes.push(
            match t.wire.request(Tls::Agent, "GET", &target, &sent, "") {
                Err(e) => Probe::unanswered(name, &request, &e, true),
                Ok(a) if a.status >= 300 => {
                    let why = format!("refused: HTTP {}", a.status);
                    Probe::from_answer(name, &request, &a, true, why)
                }
                Ok(a) => match echo(&a) {
                    None => Probe::from_answer(
                        name,
                        &request,
                        &a,
                        false,
                        "answered 2xx by an upstream that does not echo".into(),
                    ),
                    Some(e) => match check(&e, header) {
                        Some(why) => Probe::from_answer(name, &request, &a, false, why),
                        None => Probe::from_answer(
                            name,
                            &request,
                            &a,
                            true,
                            format!("`{header}` did not reach the upstream as sent"),
                        ),
                    },
                },
            },
        );
    }
    // A `_method` parameter asks frameworks for another method too.
    let target_q = format!("{open}/rt-headers?_method=DELETE");
    let request = describe("GET", &target_q, &[]);
    probes.push(
        match t.wire.request(Tls::Agent, "GET", &target_q, &[], "") {
            Err(e) => Probe::unanswered("method-parameter", &request, &e, true),
            Ok(a) => {
                let held = a.status >= 300;
                let why = if held {
                    format!("refused: HTTP {}", a.status)
                } else {
                    "the `_method=DELETE` parameter reached the upstream".to_string()
                };
                Probe::from_answer("method-parameter", &request, &a, held, why)
            }
        },
    );
    // Two `Host` headers: which one does each hop believe?
    let raw = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
        t.wire.host
    );
    probes.push(raw_probe(
        t,
        "duplicate-host",
        &raw,
        |answers| match answers.first() {
            Some(a) if a.status == 400 => (true, "refused: HTTP 400".into()),
            Some(a) => (
                false,
                format!(
                    "HTTP {}: a request with two `Host` headers was served",
                    a.status
                ),
            ),
            None => (true, "the connection was closed unanswered".into()),
        },
    ));
    // An absolute-form target naming another host than `Host`.
    let raw = format!(
        "GET https://admin.internal{target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.wire.host
    );
    probes.push(raw_probe(
        t,
        "host-mismatch",
        &raw,
        |answers| match answers.first() {
            Some(a) if a.status >= 300 => (true, format!("refused: HTTP {}", a.status)),
            Some(a) => match echo(a) {
                Some(e)
                    if e["host"]
                        .as_str()
                        .is_some_and(|h| h.contains("admin.internal")) =>
                {
                    (
                        false,
                        "the upstream was told the host `admin.internal`".into(),
                    )
                }
                _ => (true, "served, with the gateway's own upstream host".into()),
            },
            None => (true, "the connection was closed unanswered".into()),
        },
    ));
    Family::judged("header-spoofing", probes)
}

/// Whether header `h` reached the upstream, by the names it echoes.
fn reached_upstream(e: &Value, h: &str) -> Option<String> {
    e["headers"]
        .as_array()
        .is_some_and(|names| names.iter().any(|n| n.as_str() == Some(h)))
        .then(|| format!("`{h}` reached the upstream"))
}

fn describe(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut text = format!("{method} {target} HTTP/1.1");
    for (n, v) in headers {
        text.push_str(&format!("\\r\\n{n}: {v}"));
    }
    text
}

/// Sends raw bytes and judges every answer the connection gave.
fn raw_probe(
    t: &Target,
    name: &str,
    raw: &str,
    judge: impl Fn(&[Answer]) -> (bool, String),
) -> Probe {
    let shown = raw.replace("\r\n", "\\r\\n");
    match t.wire.exchange(Tls::Agent, raw.as_bytes()) {
        Err(e) => Probe::unanswered(name, &shown, &e, true),
        Ok(answers) => {
            let (held, evidence) = judge(&answers);
            let statuses: Vec<String> = answers.iter().map(|a| a.status.to_string()).collect();
            let evidence = format!(
                "{evidence} (answers: {})",
                if statuses.is_empty() {
                    "none".into()
                } else {
                    statuses.join(", ")
                }
            );
            match answers.first() {
                Some(first) => {
                    let mut p = Probe::from_answer(name, &shown, first, held, evidence);
                    // A second answer on the connection is a second audit
                    // record: give both ids.
                    if let Some(last) = answers.iter().rev().find_map(|a| a.header("x-request-id"))
                        && p.request_id.as_deref() != Some(last)
                    {
                        p.request_id = Some(
                            format!("{} {last}", p.request_id.unwrap_or_default())
                                .trim()
                                .to_string(),
                        );
                    }
                    p
                }
                None => Probe {
                    name: name.to_string(),
                    request: shown,
                    status: None,
                    code: None,
                    request_id: None,
                    held,
                    evidence,
                },
            }
        }
    }
}

/// Request smuggling: messages whose length two parsers could read
/// differently, each hiding a second request for [`SMUGGLED`]. The defence
/// holds when the hidden request never runs: the gateway refuses the
/// message, or reads it one way and closes the connection.
pub fn smuggling(t: &Target) -> Family {
    let open = t.routes.open.as_str();
    let host = t.wire.host.as_str();
    let hidden = format!("GET {open}/{SMUGGLED} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let chunk = format!("{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len());
    let head = |extra: &str| format!("GET {open}/rt-front HTTP/1.1\r\nHost: {host}\r\n{extra}");
    let cases: Vec<(&str, String)> = vec![
        (
            "cl-te",
            format!(
                "{}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
                head(""),
                5 + hidden.len()
            ),
        ),
        (
            "te-cl",
            format!(
                "{}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunk}",
                head("")
            ),
        ),
        (
            "duplicate-content-length",
            format!(
                "{}Content-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}",
                head(""),
                hidden.len()
            ),
        ),
        (
            "content-length-list",
            format!(
                "{}Content-Length: 0, {}\r\n\r\n{hidden}",
                head(""),
                hidden.len()
            ),
        ),
        (
            "obs-fold-transfer-encoding",
            format!(
                "{}Content-Length: {}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{hidden}",
                head(""),
                5 + hidden.len()
            ),
        ),
        (
            "obs-fold-content-length",
            format!(
                "{}X-Rt: a\r\n Content-Length: {}\r\n\r\n{hidden}",
                head(""),
                hidden.len()
            ),
        ),
        (
            "transfer-encoding-obfuscated",
            format!(
                "{}Content-Length: {}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{hidden}",
                head(""),
                5 + hidden.len()
            ),
        ),
        (
            "transfer-encoding-space",
            format!(
                "{}Content-Length: {}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{hidden}",
                head(""),
                5 + hidden.len()
            ),
        ),
        (
            "chunk-size-overflow",
            format!(
                "{}Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n{hidden}",
                head("")
            ),
        ),
        (
            "bare-lf",
            format!(
                "GET {open}/rt-front HTTP/1.1\nHost: {host}\nContent-Length: {}\n\n{hidden}",
                hidden.len()
            ),
        ),
    ];
    let probes = cases
        .iter()
        .map(|(name, raw)| {
            raw_probe(t, name, raw, |answers| {
                let ran = answers.iter().any(|a| {
                    a.status < 300
                        && echo(a).is_some_and(|e| {
                            e["path"].as_str().is_some_and(|p| p.contains(SMUGGLED))
                        })
                });
                if ran {
                    (false, "the hidden request ran".to_string())
                } else if answers.iter().any(|a| a.status == 400) {
                    (true, "refused: HTTP 400".to_string())
                } else {
                    (true, "the hidden request did not run".to_string())
                }
            })
        })
        .collect();
    Family::judged("smuggling", probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, expect: bool) {
        assert_eq!(escapes(path, "/payroll"), expect, "{path}");
    }

    #[test]
    fn traversal_is_seen_in_every_spelling() {
        check("/hello", false);
        check("/rt-headers", false);
        check("/../payroll/rt", true);
        check("/%2e%2e/x", true);
        check("/%252e%252e/x", true);
        check("/%c0%ae%c0%ae/x", true);
        check("/..;/x", true);
        check("/..%5cx", true);
        check("/a/PAYROLL", true);
        check("/a..b", false);
    }

    #[test]
    fn first_letters_are_encoded() {
        assert_eq!(encode_first("/payroll"), "/%70ayroll");
    }
}
