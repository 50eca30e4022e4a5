//! Approval-binding tampering: the agent asks for one call on a route whose
//! permit carries `@obligation("approval")`, a human (here: the admin
//! credentials the run records with) approves that ticket, and the agent
//! sends other calls hoping the approval covers them — another query value,
//! the value spelled as a number differently, a repeated parameter, another
//! path, a body. Each must be held for a new approval. Then the approved call
//! itself goes through once, and not a second time.

use super::report::{Family, Probe};
use super::wire::{Answer, Tls};
use super::{Approver, Target};

const FAMILY: &str = "approval-binding";
const HELD: &str = "approval_required";

fn ticket_of(a: &Answer) -> Option<String> {
    let v = a.json();
    v["error"]["ticket"]
        .as_str()
        .or_else(|| v["error"]["data"]["ticket"].as_str())
        .map(str::to_string)
}

pub fn tampering(t: &Target, approver: Option<&Approver>) -> Family {
    let Some(route) = t.routes.approval.as_deref() else {
        return Family::skipped(
            FAMILY,
            "no approval route: pass --routes approval=PREFIX (a route whose permit for this agent's GET carries @obligation(\"approval\"))",
        );
    };
    let Some(approver) = approver else {
        return Family::skipped(
            FAMILY,
            "approving a ticket needs the admin API (not with --no-record)",
        );
    };
    let nonce = hex::encode(rand::random::<[u8; 4]>());
    let honest = format!("{route}/rt-pay-{nonce}?amount=1");
    let ticket = match t.wire.request(Tls::Agent, "GET", &honest, &[], "") {
        Ok(a) if a.code().as_deref() == Some(HELD) => match ticket_of(&a) {
            Some(ticket) => ticket,
            None => return Family::skipped(FAMILY, "the held call named no ticket"),
        },
        Ok(a) => {
            return Family::skipped(
                FAMILY,
                format!(
                    "`GET {honest}` was not held for approval (HTTP {}, {})",
                    a.status,
                    a.code().unwrap_or_default()
                ),
            );
        }
        Err(e) => return Family::skipped(FAMILY, format!("`{route}`: {e:#}")),
    };
    if let Err(e) = approver(&ticket) {
        return Family::skipped(FAMILY, format!("could not approve ticket {ticket}: {e:#}"));
    }
    let tampered: Vec<(&str, &str, String, &str)> = vec![
        (
            "other-value",
            "GET",
            format!("{route}/rt-pay-{nonce}?amount=1000"),
            "",
        ),
        (
            "number-spelled-1e0",
            "GET",
            format!("{route}/rt-pay-{nonce}?amount=1e0"),
            "",
        ),
        (
            "number-spelled-1.0",
            "GET",
            format!("{route}/rt-pay-{nonce}?amount=1.0"),
            "",
        ),
        (
            "repeated-parameter",
            "GET",
            format!("{route}/rt-pay-{nonce}?amount=1&amount=1000"),
            "",
        ),
        (
            "extra-parameter",
            "GET",
            format!("{route}/rt-pay-{nonce}?amount=1&to=attacker"),
            "",
        ),
        (
            "other-path",
            "GET",
            format!("{route}/rt-pay-{nonce}-x?amount=1"),
            "",
        ),
        ("added-body", "GET", honest.clone(), "{\"amount\":1000}"),
    ];
    let mut probes: Vec<Probe> = tampered
        .iter()
        .map(|(name, method, target, body)| {
            let headers: &[(&str, &str)] = if body.is_empty() {
                &[]
            } else {
                &[("Content-Type", "application/json")]
            };
            let request = format!("{method} {target} HTTP/1.1 {body}");
            match t.wire.request(Tls::Agent, method, target, headers, body) {
                Err(e) => Probe::unanswered(name, &request, &e, true),
                Ok(a) => {
                    let held = a.status >= 300;
                    let why = if held {
                        format!("held: HTTP {} {}", a.status, a.code().unwrap_or_default())
                    } else {
                        format!(
                            "HTTP {}: the approval of `GET {honest}` covered it",
                            a.status
                        )
                    };
                    Probe::from_answer(name, &request, &a, held, why)
                }
            }
        })
        .collect();
    // The approved call goes through once: otherwise the refusals above
    // prove nothing about binding.
    let request = format!("GET {honest} HTTP/1.1");
    match t.wire.request(Tls::Agent, "GET", &honest, &[], "") {
        Ok(a) if a.status < 300 => {}
        Ok(a) => {
            return Family::skipped(
                FAMILY,
                format!(
                    "the approved call itself was refused (HTTP {}, {}): nothing was bound",
                    a.status,
                    a.code().unwrap_or_default()
                ),
            );
        }
        Err(e) => return Family::skipped(FAMILY, format!("the approved call failed: {e:#}")),
    }
    probes.push(match t.wire.request(Tls::Agent, "GET", &honest, &[], "") {
        Err(e) => Probe::unanswered("approved-call-twice", &request, &e, true),
        Ok(a) => {
            let held = a.status >= 300;
            let why = if held {
                format!(
                    "held again: HTTP {} {}",
                    a.status,
                    a.code().unwrap_or_default()
                )
            } else {
                "the approval served a second call".to_string()
            };
            Probe::from_answer("approved-call-twice", &request, &a, held, why)
        }
    });
    Family::judged(FAMILY, probes)
}
