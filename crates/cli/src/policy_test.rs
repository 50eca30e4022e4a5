//! `portcullis policy test FILE`: policy unit tests, offline.
//!
//! A case file (YAML) names the policy directory, the agents and routes the
//! cases speak of (with the models of `kind = "llm"` routes), and the cases:
//! who does what to which resource in which context, and the expected
//! outcome (and optionally the deciding policies). Every action the gateway
//! decides can be tested, with the resource as the gateway names it: an HTTP
//! method on a route, an MCP action on `<route>/<tool>` (with `args` in the
//! context) or on the route, `complete`/`embed` on `<route>/<model>`,
//! `use_secret` on a secret (with `route` in the context), `read_data` on a
//! dataset of the file's `datasets` (with `route`, `action`, `target` and
//! `purpose` in the context), and
//! `list_models` on a route, whose case gives the visible `models` instead
//! of `expect`.
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
//!   - name: llm
//!     classification: internal
//!     models: [{ name: gpt-4o, status: approved }]
//! datasets:
//!   - { name: claims, classification: internal, purposes: [support] }
//! cases:
//!   - name: weekday morning is allowed
//!     principal: support-bot
//!     action: GET
//!     resource: crm
//!     context: { time: "2026-11-24T10:00:00+01:00", source_ip: 10.20.1.2 }
//!     expect: allow
//!     policies: [business-hours]
//!   - name: tools in /tmp only
//!     principal: support-bot
//!     action: call_tool
//!     resource: files/read_file
//!     context: { args: { path: /etc/passwd } }
//!     expect: deny
//!   - name: the models support sees
//!     principal: support-bot
//!     action: list_models
//!     resource: llm
//!     models: [gpt-4o]
//!   - name: claims are read for support only
//!     principal: support-bot
//!     action: read_data
//!     resource: claims
//!     context: { route: crm, purpose: marketing }
//!     expect: deny
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use portcullis_control::config::PolicyTimeZone;
use portcullis_control::policy_facts::{Asked, FactAction, RequestFacts};
use portcullis_core::Classification;
use portcullis_policy::{
    AgentEntity, Authorizer, DatasetEntity, ModelEntity, PolicyBundle, PolicySources, RouteEntity,
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
    /// Registered datasets, for `read_data` cases.
    #[serde(default)]
    datasets: Vec<DatasetFixture>,
    cases: Vec<Case>,
}

/// A registered dataset; what a case does not read may be left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetFixture {
    name: String,
    classification: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    licence: String,
    #[serde(default)]
    collected: String,
    #[serde(default = "no_basis")]
    consent_basis: String,
    #[serde(default)]
    retention_days: i64,
    #[serde(default)]
    purposes: Vec<String>,
    #[serde(default = "approved")]
    lifecycle: String,
}

fn no_basis() -> String {
    "none".into()
}

fn approved() -> String {
    "approved".into()
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
    /// The models of a `kind = "llm"` route.
    #[serde(default)]
    models: Vec<ModelFixture>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFixture {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    status: String,
    /// Default: the route's.
    classification: Option<String>,
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
    /// Every action but `list_models`.
    expect: Option<Expect>,
    policies: Option<Vec<String>>,
    /// `list_models`: the models the agent sees, in configuration order.
    models: Option<Vec<String>>,
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
    let mut models = Vec::new();
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
        for m in &r.models {
            let classification = match &m.classification {
                None => classification,
                Some(c) => c
                    .parse()
                    .map_err(|e| anyhow::anyhow!("model `{}/{}`: {e}", r.name, m.name))?,
            };
            models.push(ModelEntity {
                route: r.name.clone(),
                name: m.name.clone(),
                version: m.version.clone(),
                status: m.status.clone(),
                classification,
                registry: Default::default(),
            });
        }
    }
    let datasets = cases
        .datasets
        .iter()
        .map(|d| {
            Ok(DatasetEntity {
                name: d.name.clone(),
                owner: d.owner.clone(),
                classification: d
                    .classification
                    .parse()
                    .map_err(|e| anyhow::anyhow!("dataset `{}`: {e}", d.name))?,
                source: d.source.clone(),
                licence: d.licence.clone(),
                collected: d.collected.clone(),
                consent_basis: d.consent_basis.clone(),
                retention_days: d.retention_days,
                purposes: d.purposes.clone(),
                lifecycle: d.lifecycle.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let authz = Authorizer::new(bundle.clone(), &agents, &routes)?
        .with_models(&models)?
        .with_datasets(&datasets)?;

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
    let action = match FactAction::parse(&case.action) {
        Ok(a) => a,
        Err(e) => return Some(e),
    };
    let facts = match case.context.prepare(zone, now) {
        Ok(f) => f,
        Err(e) => return Some(format!("context: {e}")),
    };
    let asked = facts.ask(authz, &case.principal, action, &case.resource, |r| {
        r.decide(authz)
    });
    let (decision, expect) = match (asked, case.expect, &case.models) {
        (Err(e), _, _) => return Some(e),
        (Ok(Asked::One(decision)), Some(expect), None) => (decision, expect),
        (Ok(Asked::PerModel(decided)), None, Some(expected)) => {
            let visible: Vec<&str> = decided
                .iter()
                .filter(|(_, d)| d.allowed)
                .map(|(m, _)| m.as_str())
                .collect();
            let errors: Vec<&String> = decided.iter().flat_map(|(_, d)| &d.errors).collect();
            let mut problems = Vec::new();
            if visible != *expected {
                problems.push(format!(
                    "expected models [{}], got [{}]",
                    expected.join(", "),
                    visible.join(", ")
                ));
            }
            if !errors.is_empty() {
                problems.push(format!(
                    "evaluation errors: {}",
                    errors
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            return (!problems.is_empty()).then(|| problems.join("\n    "));
        }
        (Ok(Asked::PerModel(_)), _, _) => {
            return Some(
                "a `list_models` case gives the visible `models: [...]`, not `expect`".into(),
            );
        }
        (Ok(Asked::One(_)), _, _) => {
            return Some("give `expect: allow` or `expect: deny` (and no `models`)".into());
        }
    };
    let got = if decision.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let describe = |e: Expect| if e == Expect::Allow { "allow" } else { "deny" };
    let mut problems = Vec::new();
    if got != expect {
        problems.push(format!(
            "expected {}, got {} [{}]",
            describe(expect),
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
