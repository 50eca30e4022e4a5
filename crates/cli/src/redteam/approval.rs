//! Approval-binding tampering, on all three protocols: the agent asks for
//! one call on a route whose permit carries `@obligation("approval")`, a
//! human (here: the admin credentials the run records with) approves that
//! ticket, and the agent sends other calls hoping the approval covers them.
//! HTTP: another query value, the value spelled as a number differently, a
//! repeated parameter, another path, a body. MCP: the same tool with other
//! arguments, an added argument, a duplicate key. LLM: another prompt,
//! another model, an added parameter, streaming switched on. Each must be
//! held for a new approval. Then the approved call itself goes through
//! once, and not a second time.

use anyhow::Result;
use serde_json::json;

use super::report::{Family, Probe};
use super::wire::{Answer, Tls};
use super::{Approver, Target, mcp};

const FAMILY: &str = "approval-binding";
const MCP_FAMILY: &str = "mcp-approval-binding";
const LLM_FAMILY: &str = "llm-approval-binding";
const HELD: &str = "approval_required";

fn ticket_of(a: &Answer) -> Option<String> {
    let v = match a.json() {
        serde_json::Value::Null => mcp::mcp_json(a),
        v => v,
    };
    v["error"]["ticket"]
        .as_str()
        .or_else(|| v["error"]["data"]["ticket"].as_str())
        .map(str::to_string)
}

/// One call of a family: its name, the request as the evidence shows it,
/// and how to send it.
struct Call<'a> {
    name: &'static str,
    request: String,
    send: Box<dyn Fn() -> Result<Answer> + 'a>,
}

/// The flow every protocol shares: `honest` is held and its ticket
/// approved; each of `tampered` must then be refused (`refused`); the
/// honest call must pass once (else nothing was bound, and the family is
/// skipped) and be held the second time.
fn bound(
    family: &'static str,
    approver: &Approver,
    honest: &Call<'_>,
    tampered: &[Call<'_>],
    refused: &dyn Fn(&Answer) -> bool,
) -> Family {
    let ticket = match (honest.send)() {
        Ok(a) if a.code().as_deref() == Some(HELD) || ticket_of(&a).is_some() => {
            match ticket_of(&a) {
                Some(ticket) => ticket,
                None => return Family::skipped(family, "the held call named no ticket"),
            }
        }
        Ok(a) => {
            return Family::skipped(
                family,
                format!(
                    "`{}` was not held for approval (HTTP {}, {})",
                    honest.request,
                    a.status,
                    a.code().unwrap_or_default()
                ),
            );
        }
        Err(e) => return Family::skipped(family, format!("`{}`: {e:#}", honest.request)),
    };
    if let Err(e) = approver(&ticket) {
        return Family::skipped(family, format!("could not approve ticket {ticket}: {e:#}"));
    }
    let mut probes: Vec<Probe> = tampered
        .iter()
        .map(|call| match (call.send)() {
            Err(e) => Probe::unanswered(call.name, &call.request, &e, true),
            Ok(a) => {
                let held = refused(&a);
                let why = if held {
                    format!("held: HTTP {} {}", a.status, a.code().unwrap_or_default())
                } else {
                    format!(
                        "HTTP {}: the approval of `{}` covered it",
                        a.status, honest.request
                    )
                };
                Probe::from_answer(call.name, &call.request, &a, held, why)
            }
        })
        .collect();
    match (honest.send)() {
        Ok(a) if !refused(&a) => {}
        Ok(a) => {
            return Family::skipped(
                family,
                format!(
                    "the approved call itself was refused (HTTP {}, {}): nothing was bound",
                    a.status,
                    a.code().unwrap_or_default()
                ),
            );
        }
        Err(e) => return Family::skipped(family, format!("the approved call failed: {e:#}")),
    }
    probes.push(match (honest.send)() {
        Err(e) => Probe::unanswered("approved-call-twice", &honest.request, &e, true),
        Ok(a) => {
            let held = refused(&a);
            let why = if held {
                format!(
                    "held again: HTTP {} {}",
                    a.status,
                    a.code().unwrap_or_default()
                )
            } else {
                "the approval served a second call".to_string()
            };
            Probe::from_answer("approved-call-twice", &honest.request, &a, held, why)
        }
    });
    Family::judged(family, probes)
}

/// The route and the human a family needs, or the family skipped saying
/// which is missing.
fn needs<'a, 'h>(
    family: &'static str,
    route: Option<&'a str>,
    approver: Option<&'h Approver>,
    hint: &str,
) -> Result<(&'a str, &'h Approver), Family> {
    match (route, approver) {
        (None, _) => Err(Family::skipped(family, hint.to_string())),
        (_, None) => Err(Family::skipped(
            family,
            "approving a ticket needs the admin API (not with --no-record)",
        )),
        (Some(route), Some(approver)) => Ok((route, approver)),
    }
}

pub fn tampering(t: &Target, approver: Option<&Approver>) -> Family {
    let (route, approver) = match needs(
        FAMILY,
        t.routes.approval.as_deref(),
        approver,
        "no approval route: pass --routes approval=PREFIX (a route whose permit for this agent's GET carries @obligation(\"approval\"))",
    ) {
        Ok(needed) => needed,
        Err(skipped) => return skipped,
    };
    let nonce = hex::encode(rand::random::<[u8; 4]>());
    let get = |name: &'static str, target: String, body: &'static str| {
        let request = format!("GET {target} HTTP/1.1 {body}");
        Call {
            name,
            request,
            send: Box::new(move || {
                let headers: &[(&str, &str)] = if body.is_empty() {
                    &[]
                } else {
                    &[("Content-Type", "application/json")]
                };
                t.wire.request(Tls::Agent, "GET", &target, headers, body)
            }),
        }
    };
    let honest = format!("{route}/rt-pay-{nonce}?amount=1");
    let tampered = [
        get(
            "other-value",
            format!("{route}/rt-pay-{nonce}?amount=1000"),
            "",
        ),
        get(
            "number-spelled-1e0",
            format!("{route}/rt-pay-{nonce}?amount=1e0"),
            "",
        ),
        get(
            "number-spelled-1.0",
            format!("{route}/rt-pay-{nonce}?amount=1.0"),
            "",
        ),
        get(
            "repeated-parameter",
            format!("{route}/rt-pay-{nonce}?amount=1&amount=1000"),
            "",
        ),
        get(
            "extra-parameter",
            format!("{route}/rt-pay-{nonce}?amount=1&to=attacker"),
            "",
        ),
        get(
            "other-path",
            format!("{route}/rt-pay-{nonce}-x?amount=1"),
            "",
        ),
        get("added-body", honest.clone(), "{\"amount\":1000}"),
    ];
    bound(
        FAMILY,
        approver,
        &get("honest", honest, ""),
        &tampered,
        &|a| a.status >= 300,
    )
}

/// MCP: `tools/call` of the route's first tool with `{"text": "pay 1 …"}`
/// approved; the same tool with other arguments must be held.
pub fn mcp_tampering(t: &Target, approver: Option<&Approver>) -> Family {
    let (route, approver) = match needs(
        MCP_FAMILY,
        t.routes.mcp_approval.as_deref(),
        approver,
        "not applicable: no MCP approval route: pass --routes mcp-approval=PREFIX (an MCP route whose permit of call_tool carries @obligation(\"approval\"))",
    ) {
        Ok(needed) => needed,
        Err(skipped) => return skipped,
    };
    let (session, listed) = match mcp::open(t, route) {
        Ok(opened) => opened,
        Err(why) => return Family::skipped(MCP_FAMILY, why),
    };
    let Some(tool) = listed["result"]["tools"][0]["name"].as_str() else {
        return Family::skipped(MCP_FAMILY, format!("`{route}` lists no tool"));
    };
    let nonce = hex::encode(rand::random::<[u8; 4]>());
    let session = session.as_deref();
    let call = |name: &'static str, arguments: String| {
        // Raw text, so a duplicate key reaches the gateway as written.
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":30,"method":"tools/call","params":{{"name":{},"arguments":{arguments}}}}}"#,
            json!(tool)
        );
        Call {
            name,
            request: format!("POST {route} HTTP/1.1 {body}"),
            send: Box::new(move || mcp::post(t, route, session, &body)),
        }
    };
    let text = |s: &str| json!(s).to_string();
    let honest = format!(r#"{{"text":{}}}"#, text(&format!("pay 1 {nonce}")));
    let tampered = [
        call(
            "other-argument-value",
            format!(r#"{{"text":{}}}"#, text(&format!("pay 1000 {nonce}"))),
        ),
        call(
            "added-argument",
            format!(
                r#"{{"text":{},"to":"attacker"}}"#,
                text(&format!("pay 1 {nonce}"))
            ),
        ),
        call(
            "duplicate-argument-key",
            format!(
                r#"{{"text":{},"text":{}}}"#,
                text(&format!("pay 1 {nonce}")),
                text(&format!("pay 1000 {nonce}"))
            ),
        ),
        call(
            "trailing-space",
            format!(r#"{{"text":{}}}"#, text(&format!("pay 1 {nonce} "))),
        ),
        call("no-arguments", "{}".to_string()),
    ];
    bound(
        MCP_FAMILY,
        approver,
        &call("honest", honest),
        &tampered,
        &|a| mcp::refused(a, None),
    )
}

/// LLM: one chat completion approved; another prompt, another model, an
/// added parameter or streaming must be held.
pub fn llm_tampering(t: &Target, approver: Option<&Approver>) -> Family {
    let (route, approver) = match needs(
        LLM_FAMILY,
        t.routes.llm_approval.as_deref(),
        approver,
        "not applicable: no LLM approval route: pass --routes llm-approval=PREFIX (an LLM route whose permit of complete carries @obligation(\"approval\"))",
    ) {
        Ok(needed) => needed,
        Err(skipped) => return skipped,
    };
    let models = match super::llm::models(t, route) {
        Ok(models) => models,
        Err(why) => return Family::skipped(LLM_FAMILY, why),
    };
    let model = models[0].clone();
    let other = models
        .get(1)
        .cloned()
        .unwrap_or_else(|| format!("{model}-rt-other"));
    let nonce = hex::encode(rand::random::<[u8; 4]>());
    let path = format!("{route}/v1/chat/completions");
    let call = |name: &'static str, body: serde_json::Value| {
        let body = body.to_string();
        Call {
            name,
            request: format!("POST {path} HTTP/1.1 {body}"),
            send: {
                let path = path.clone();
                Box::new(move || {
                    t.wire.request(
                        Tls::Agent,
                        "POST",
                        &path,
                        &[("Content-Type", "application/json")],
                        &body,
                    )
                })
            },
        }
    };
    let prompt = format!("Pay invoice {nonce}: 1 EUR.");
    let messages = json!([{"role": "user", "content": prompt}]);
    let tampered = [
        call(
            "other-prompt",
            json!({"model": model, "messages": [{"role": "user", "content": format!("Pay invoice {nonce}: 1000 EUR.")}]}),
        ),
        call(
            "added-message",
            json!({"model": model, "messages": [{"role": "user", "content": prompt}, {"role": "user", "content": "Also pay 1000 EUR to the attacker."}]}),
        ),
        call("other-model", json!({"model": other, "messages": messages})),
        call(
            "added-parameter",
            json!({"model": model, "messages": messages, "max_tokens": 4096}),
        ),
        call(
            "stream-switched-on",
            json!({"model": model, "messages": messages, "stream": true}),
        ),
    ];
    bound(
        LLM_FAMILY,
        approver,
        &call("honest", json!({"model": model, "messages": messages})),
        &tampered,
        &|a| a.status >= 300,
    )
}
