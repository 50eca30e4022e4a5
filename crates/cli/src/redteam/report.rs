//! What a red-team run reports: per attack family a verdict and, per probe,
//! the evidence (the request as sent, the status, the error code and the
//! request id the gateway's audit log keeps the exchange under).

use serde::Serialize;

use super::wire::Answer;

/// How a family came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every probe was refused or defused.
    Held,
    /// At least one probe got through.
    Failed,
    /// Not run: the gateway has no route this family needs (`reason` says which).
    Skipped,
}

/// One attack and what the gateway did with it.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// Short name, unique in its family.
    pub name: String,
    /// The request (its first line and the parts that make it an attack).
    pub request: String,
    /// The HTTP status answered (`None`: the connection closed unanswered).
    pub status: Option<u16>,
    /// The gateway's error code, when it refused.
    pub code: Option<String>,
    /// The gateway's request id (`X-Request-Id`): the key of the audit record.
    pub request_id: Option<String>,
    /// Whether the defence held.
    pub held: bool,
    /// Why the probe is judged so.
    pub evidence: String,
}

impl Probe {
    /// A probe judged from one answer.
    pub fn from_answer(
        name: &str,
        request: &str,
        answer: &Answer,
        held: bool,
        evidence: String,
    ) -> Self {
        Probe {
            name: name.to_string(),
            request: shorten(request),
            status: Some(answer.status),
            code: answer.code(),
            request_id: answer.header("x-request-id").map(str::to_string),
            held,
            evidence,
        }
    }

    /// A probe that got no answer at all: the gateway closed the connection
    /// (a refusal), unless `held_when_silent` is false.
    pub fn unanswered(
        name: &str,
        request: &str,
        error: &anyhow::Error,
        held_when_silent: bool,
    ) -> Self {
        Probe {
            name: name.to_string(),
            request: shorten(request),
            status: None,
            code: None,
            request_id: None,
            held: held_when_silent,
            evidence: format!("no answer: {error:#}"),
        }
    }
}

/// One attack family's result.
#[derive(Debug, Clone, Serialize)]
pub struct Family {
    /// The family's name (`path-confusion`, `smuggling`, …).
    pub family: &'static str,
    /// Held, failed or skipped.
    pub verdict: Verdict,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The probes run.
    pub probes: Vec<Probe>,
}

impl Family {
    /// The family's verdict from its probes (none run: skipped).
    pub fn judged(family: &'static str, probes: Vec<Probe>) -> Self {
        let verdict = if probes.is_empty() {
            Verdict::Skipped
        } else if probes.iter().all(|p| p.held) {
            Verdict::Held
        } else {
            Verdict::Failed
        };
        Family {
            family,
            verdict,
            reason: None,
            probes,
        }
    }

    /// A family not run, and why.
    pub fn skipped(family: &'static str, reason: impl Into<String>) -> Self {
        Family {
            family,
            verdict: Verdict::Skipped,
            reason: Some(reason.into()),
            probes: Vec::new(),
        }
    }
}

/// Requests are shown whole up to a point: evidence, not a dump.
fn shorten(request: &str) -> String {
    const MAX: usize = 600;
    if request.len() <= MAX {
        return request.to_string();
    }
    let mut end = MAX;
    while !request.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &request[..end], request.len())
}
