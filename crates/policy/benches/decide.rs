//! Policy decision cost with ~100 policies: the scope-indexed path the gateway
//! uses against Cedar over the full set, measured in one run.
//!
//! Run: `cargo bench -p portcullis-policy --bench decide`
//!
//! Measured on the 2-core development machine (2026-11-23):
//!
//! | path | ns/decision |
//! | --- | --- |
//! | candidates never read `context` (memoized per snapshot) | 116 |
//! | a candidate reads `context` (scope-indexed, evaluated) | 7,020 |
//! | all 100 policies (plain Cedar) | 69,403 |
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use portcullis_core::Classification;
use portcullis_policy::{
    AgentEntity, Authorizer, AuthzRequest, DEFAULT_POLICIES, DEFAULT_SCHEMA, HttpAction,
    PolicyBundle, PolicySources, RequestTime, RouteEntity, SourceIp,
};

fn main() {
    let mut extra = String::new();
    for i in 0..97 {
        extra.push_str(&format!(
            "@id(\"team-{i}\")\npermit(principal in Role::\"team-{i}\", action in Action::\"{}\", resource == Route::\"svc-{i}\")\n  when {{ context.time.hour >= 6 && context.source_ip.isInRange(ip(\"10.{i}.0.0/16\")) }};\n",
            if i % 2 == 0 { "read" } else { "write" }
        ));
    }
    let sources = PolicySources {
        origin: PathBuf::from("bench"),
        schema: DEFAULT_SCHEMA.to_string(),
        files: vec![
            ("quickstart.cedar".into(), DEFAULT_POLICIES.into()),
            ("teams.cedar".into(), extra),
        ],
    };
    let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
    let mut agents = vec![AgentEntity {
        name: "bench-bot".into(),
        roles: vec!["writer".into()],
    }];
    let mut routes = vec![RouteEntity {
        name: "bench".into(),
        classification: Classification::Public,
    }];
    for i in 0..97 {
        agents.push(AgentEntity {
            name: format!("agent-{i}"),
            roles: vec![format!("team-{i}")],
        });
        routes.push(RouteEntity {
            name: format!("svc-{i}"),
            classification: Classification::Internal,
        });
    }
    let authz = Authorizer::new(bundle.clone(), &agents, &routes).unwrap();
    let ip = SourceIp::new("10.4.0.9".parse().unwrap());
    // The benchmark's own request: its candidate policy never reads `context`.
    let static_request = AuthzRequest {
        agent: "bench-bot",
        action: HttpAction::Post,
        route: "bench",
        path: "/bench/echo",
        source_ip: &ip,
        time: RequestTime::from_epoch(1_700_000_000),
        content: portcullis_policy::Content::NOT_SCANNED,
        caller: &portcullis_policy::CallerFacts::mtls(),
    };
    // A team agent: its candidate policy reads time and address on every request.
    let dynamic_request = AuthzRequest {
        agent: "agent-4",
        action: HttpAction::Get,
        route: "svc-4",
        path: "/svc/x",
        source_ip: &ip,
        time: RequestTime::from_epoch(1_700_000_000),
        content: portcullis_policy::Content::NOT_SCANNED,
        caller: &portcullis_policy::CallerFacts::mtls(),
    };
    for request in [&static_request, &dynamic_request] {
        assert_eq!(authz.decide(request), authz.decide_unindexed(request));
        assert!(authz.decide(request).allowed);
    }

    let n = 20_000;
    let time = |f: &dyn Fn() -> bool| {
        for _ in 0..1000 {
            black_box(f());
        }
        let t = Instant::now();
        for _ in 0..n {
            black_box(f());
        }
        t.elapsed().as_secs_f64() * 1e9 / n as f64
    };
    let memoized = time(&|| authz.decide(black_box(&static_request)).allowed);
    let indexed = time(&|| authz.decide(black_box(&dynamic_request)).allowed);
    let full = time(&|| authz.decide_unindexed(black_box(&dynamic_request)).allowed);
    println!(
        "policy decision, {} policies, {} agents, {} routes:",
        bundle.policy_ids().len(),
        agents.len(),
        routes.len()
    );
    println!("  candidates never read context (memoized): {memoized:>8.0} ns/decision");
    println!("  candidate reads context (scope-indexed):  {indexed:>8.0} ns/decision");
    println!("  all policies (plain Cedar):               {full:>8.0} ns/decision");
    println!(
        "  speed-up over plain Cedar: {:.0}x memoized, {:.1}x indexed",
        full / memoized,
        full / indexed
    );
}
