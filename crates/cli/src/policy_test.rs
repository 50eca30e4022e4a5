//! `portcullis policy test FILE`: policy unit tests, offline.
//!
//! A case file (YAML) names the policy directory, the agents and routes the
//! cases speak of, and the cases: who does what to which route in which
//! context, and the expected outcome (and optionally the deciding policies).
//! Each case is decided exactly as the gateway would, by the same
//! [`Authorizer`]; failures are reported like a test runner's, and the command
//! exits non-zero when any case fails.
//!
//! ```yaml
//! policies: .            # relative to this file (default: its directory)
//! timezone: Europe/Berlin  # of context.time.hour / weekday (default UTC)
//! agents:
//!   - { name: support-bot, roles: [support] }
//! routes:
//!   - { name: crm, classification: internal, owner: sales, tags: [pii] }
//! cases:
//!   - name: weekday morning is allowed
//!     principal: support-bot
//!     action: GET
//!     resource: crm
//!     context: { time: "2026-11-24T10:00:00+01:00", source_ip: 10.20.1.2 }
//!     expect: allow
//!     policies: [business-hours]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use portcullis_core::Classification;
use portcullis_gateway::config::PolicyTimeZone;
use portcullis_gateway::policy_facts::RequestFacts;
use portcullis_policy::{
    AgentEntity, Authorizer, HttpAction, PolicyBundle, PolicySources, RouteEntity,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    policies: Option<PathBuf>,
    timezone: Option<String>,
    #[serde(default)]
    agents: Vec<AgentFixture>,
    #[serde(default)]
    routes: Vec<RouteFixture>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFixture {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFixture {
    name: String,
    classification: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    principal: String,
    action: String,
    resource: String,
    #[serde(default)]
    context: RequestFacts,
    expect: Expect,
    policies: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// Runs the cases of `file` against `dir` (default: the file's `policies:`).
/// Returns whether every case passed; the report goes to stdout.
pub fn run(file: &Path, dir: Option<PathBuf>) -> Result<bool> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read `{}`", file.display()))?;
    let cases: CaseFile = serde_norway::from_str(&text)
        .with_context(|| format!("`{}` is not a policy test file", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let dir =
        dir.unwrap_or_else(|| base.join(cases.policies.clone().unwrap_or_else(|| ".".into())));
    let sources = PolicySources::read_dir(&dir)?;
    let bundle = Arc::new(PolicyBundle::compile(&sources)?);
    let zone = match &cases.timezone {
        Some(z) => PolicyTimeZone::new(z).map_err(anyhow::Error::msg)?,
        None => PolicyTimeZone::default(),
    };
    let agents: Vec<AgentEntity> = cases
        .agents
        .iter()
        .map(|a| AgentEntity {
            name: a.name.clone(),
            roles: a.roles.clone(),
        })
        .collect();
    let mut routes = Vec::new();
    for r in &cases.routes {
        let classification: Classification = r
            .classification
            .parse()
            .map_err(|e| anyhow::anyhow!("route `{}`: {e}", r.name))?;
        routes.push(RouteEntity {
            name: r.name.clone(),
            classification,
            owner: r.owner.clone(),
            tags: r.tags.clone(),
        });
    }
    let authz = Authorizer::new(bundle.clone(), &agents, &routes)?;

    println!(
        "running {} cases from {} against {} ({} policies)",
        cases.cases.len(),
        file.display(),
        dir.display(),
        bundle.policy_ids().len()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (mut passed, mut failed) = (0, 0);
    for (n, case) in cases.cases.iter().enumerate() {
        let failure = check(&authz, &zone, now, case);
        match &failure {
            None => {
                passed += 1;
                println!("case {} {} ... ok", n + 1, case.name);
            }
            Some(why) => {
                failed += 1;
                println!("case {} {} ... FAILED\n    {why}", n + 1, case.name);
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    Ok(failed == 0)
}

/// `None` when the case passes, else what went wrong.
fn check(authz: &Authorizer, zone: &PolicyTimeZone, now: i64, case: &Case) -> Option<String> {
    let Some(action) = HttpAction::from_method(&case.action) else {
        return Some(format!(
            "action `{}`: use GET, HEAD, POST, PUT, PATCH or DELETE",
            case.action
        ));
    };
    let facts = match case.context.prepare(zone, now) {
        Ok(f) => f,
        Err(e) => return Some(format!("context: {e}")),
    };
    let decision = facts.with_request(&case.principal, action, &case.resource, |r| authz.decide(r));
    let got = if decision.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let describe = |e: Expect| if e == Expect::Allow { "allow" } else { "deny" };
    let mut problems = Vec::new();
    if got != case.expect {
        problems.push(format!(
            "expected {}, got {} [{}]",
            describe(case.expect),
            describe(got),
            decision.policy_ids.join(", ")
        ));
    }
    if let Some(expected) = &case.policies {
        let mut expected = expected.clone();
        expected.sort();
        if expected != decision.policy_ids {
            problems.push(format!(
                "expected deciding policies [{}], got [{}]",
                expected.join(", "),
                decision.policy_ids.join(", ")
            ));
        }
    }
    if !decision.errors.is_empty() {
        problems.push(format!("evaluation errors: {}", decision.errors.join("; ")));
    }
    if problems.is_empty() {
        None
    } else {
        Some(problems.join("\n    "))
    }
}

/// Fails the command (after the report) when a case failed.
pub fn exit_on_failure(all_passed: bool) -> Result<()> {
    if !all_passed {
        bail!("some policy test cases failed");
    }
    Ok(())
}
