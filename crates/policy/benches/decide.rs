//! Policy decision cost: the scope-indexed path the gateway uses against
//! Cedar over the full set, measured in one run. First ~100 policies (the
//! memo, the index); then 10, 100 and 1,000 policies with 1,000 grants
//! (template-linked) and 10,000 entities, p50/p99 over random requests, and
//! replay throughput (decisions/s over a recorded-like stream of requests).
//!
//! Run: `cargo bench -p portcullis-policy --bench decide`
//! (`BENCH_SMALL_ONLY=1`: only the ~100-policy HTTP and MCP cases).
//!
//! Measured on the 2-core development machine (2026-11-23):
//!
//! | path | ns/decision |
//! | --- | --- |
//! | candidates never read `context` (memoized per snapshot) | 116 |
//! | a candidate reads `context` (scope-indexed, evaluated) | 7,020 |
//! | all 100 policies (plain Cedar) | 69,403 |
//!
//! At scale (2026-11-23, measured once while three other builds shared the
//! machine; the 100-policy indexed case ran at 36,078 ns in the same run):
//!
//! | policies + 1,000 grants, ~10k entities | sliced p50 / p99 | full set p50 / p99 | replay |
//! | --- | --- | --- | --- |
//! | 10 | 17.2 / 35.2 µs | 653 / 10,134 µs | 29,278 /s |
//! | 100 | 17.2 / 28.5 µs | 707 / 8,889 µs | 32,777 /s |
//! | 1,000 | 20.6 / 40.9 µs | 1,934 / 15,329 µs | 26,948 /s |
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use portcullis_core::Classification;
use portcullis_policy::{
    AgentEntity, Authorizer, AuthzRequest, DEFAULT_POLICIES, DEFAULT_SCHEMA, GrantEntity,
    GrantScope, HttpAction, McpAction, McpRequest, PolicyBundle, PolicySources, RequestTime,
    RouteEntity, SourceIp,
};

fn main() {
    small();
    if std::env::var_os("BENCH_SMALL_ONLY").is_some() {
        return;
    }
    for policies in [10, 100, 1000] {
        scale(policies);
    }
}

/// A deterministic pseudo-random sequence (no `rand` dependency in benches).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `policies` team policies (each reads `context`), 1,000 grants, 5,000
/// agents in `policies` roles and 5,000 routes: 10,000 entities.
fn scale(policies: usize) {
    const AGENTS: usize = 5_000;
    const ROUTES: usize = 5_000;
    const GRANTS: usize = 1_000;
    let mut text = String::new();
    for i in 0..policies {
        text.push_str(&format!(
            "@id(\"team-{i}\")\npermit(principal in Role::\"team-{i}\", action in Action::\"{}\", resource == Route::\"svc-{}\")\n  when {{ context.time.hour >= 6 && context.source_ip.isInRange(ip(\"10.{}.0.0/16\")) }};\n",
            if i % 2 == 0 { "read" } else { "write" },
            i % ROUTES,
            i % 256
        ));
    }
    let sources = PolicySources {
        origin: PathBuf::from("bench"),
        schema: DEFAULT_SCHEMA.to_string(),
        files: vec![("teams.cedar".into(), text)],
    };
    let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
    let agents: Vec<AgentEntity> = (0..AGENTS)
        .map(|a| AgentEntity {
            name: format!("agent-{a}"),
            roles: vec![format!("team-{}", a % policies)],
        })
        .collect();
    let routes: Vec<RouteEntity> = (0..ROUTES)
        .map(|r| RouteEntity {
            name: format!("svc-{r}"),
            classification: Classification::Internal,
            owner: String::new(),
            tags: Vec::new(),
        })
        .collect();
    let mut rng = Lcg(policies as u64);
    let methods = [HttpAction::Get, HttpAction::Post, HttpAction::Delete];
    let grants: Vec<GrantEntity> = (0..GRANTS)
        .map(|g| GrantEntity {
            id: format!("g{g}"),
            agent: format!("agent-{}", rng.next(AGENTS)),
            scope: GrantScope::Call {
                action: methods[rng.next(3)],
                route: format!("svc-{}", rng.next(ROUTES)),
            },
            expires_epoch: 1_800_000_000,
        })
        .collect();
    let built = Instant::now();
    let authz = Authorizer::with_grants(bundle, &agents, &routes, &grants).unwrap();
    let build_ms = built.elapsed().as_secs_f64() * 1e3;
    let ip = SourceIp::new("10.4.0.9".parse().unwrap());
    let caller = portcullis_policy::CallerFacts::mtls();
    // Requests an agent plausibly makes: its team's route, or a granted call.
    let requests: Vec<(String, HttpAction, String)> = (0..2_000usize)
        .map(|n| {
            if n.is_multiple_of(4) {
                let g = &grants[rng.next(GRANTS)];
                let GrantScope::Call { action, route } = &g.scope else {
                    unreachable!("the bench makes call grants only")
                };
                (g.agent.clone(), *action, route.clone())
            } else {
                let a = rng.next(AGENTS);
                let team = a % policies;
                let action = if team.is_multiple_of(2) {
                    HttpAction::Get
                } else {
                    HttpAction::Post
                };
                (
                    format!("agent-{a}"),
                    action,
                    format!("svc-{}", team % ROUTES),
                )
            }
        })
        .collect();
    fn request<'a>(
        (agent, action, route): &'a (String, HttpAction, String),
        ip: &'a SourceIp,
        caller: &'a portcullis_policy::CallerFacts,
    ) -> AuthzRequest<'a> {
        AuthzRequest {
            agent,
            action: *action,
            route,
            path: "/svc/x",
            source_ip: ip,
            time: RequestTime::from_epoch(1_700_000_000),
            content: portcullis_policy::Content::NOT_SCANNED,
            caller,
        }
    }
    let request = |r| request(r, &ip, &caller);
    let mut allowed = 0;
    for r in &requests {
        let d = authz.decide(&request(r));
        assert_eq!(d, authz.decide_unindexed(&request(r)), "{r:?}");
        allowed += usize::from(d.allowed);
    }
    let sample = |full: bool, count: usize| {
        let mut ns: Vec<f64> = requests
            .iter()
            .cycle()
            .take(count)
            .map(|r| {
                let req = request(r);
                let t = Instant::now();
                let d = if full {
                    authz.decide_unindexed(black_box(&req))
                } else {
                    authz.decide(black_box(&req))
                };
                black_box(d.allowed);
                t.elapsed().as_secs_f64() * 1e9
            })
            .collect();
        ns.sort_by(f64::total_cmp);
        ns
    };
    let sliced = sample(false, 20_000);
    // The full set is slow at this size: fewer samples, same requests.
    let full = sample(true, if policies >= 1000 { 500 } else { 2_000 });
    let started = Instant::now();
    let mut replayed = 0u64;
    for r in requests.iter().cycle().take(50_000) {
        replayed += u64::from(authz.decide(&request(r)).allowed);
    }
    let replay_rate = 50_000.0 / started.elapsed().as_secs_f64();
    black_box(replayed);
    println!(
        "\n{policies} policies + {GRANTS} grants, {} entities (snapshot built in {build_ms:.0} ms; {allowed}/{} sample requests allowed):",
        AGENTS + ROUTES + policies,
        requests.len()
    );
    println!(
        "  sliced (gateway): p50 {:>9.1} us  p99 {:>9.1} us",
        percentile(&sliced, 0.5) / 1e3,
        percentile(&sliced, 0.99) / 1e3
    );
    println!(
        "  full set (Cedar): p50 {:>9.1} us  p99 {:>9.1} us   (p50 ratio {:.0}x)",
        percentile(&full, 0.5) / 1e3,
        percentile(&full, 0.99) / 1e3,
        percentile(&full, 0.5) / percentile(&sliced, 0.5)
    );
    println!("  replay: {replay_rate:.0} decisions/s (one core)");
}

fn small() {
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
        owner: String::new(),
        tags: Vec::new(),
    }];
    for i in 0..97 {
        agents.push(AgentEntity {
            name: format!("agent-{i}"),
            roles: vec![format!("team-{i}")],
        });
        routes.push(RouteEntity {
            name: format!("svc-{i}"),
            classification: Classification::Internal,
            owner: String::new(),
            tags: Vec::new(),
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
    mcp(&time);
}

/// An MCP `tools/call` among ~100 policies, 49 of them on `call_tool` (one
/// per team's tool, one reading `context.args` for every agent): the scope
/// slice against Cedar over every `call_tool` policy, in the same run.
fn mcp(time: &dyn Fn(&dyn Fn() -> bool) -> f64) {
    let mut text = String::from(
        "@id(\"mcp-dev\") permit(principal in Role::\"dev\", action in [Action::\"call_tool\", Action::\"list_tools\"], resource in Route::\"bench\");\n\
         @id(\"mcp-no-etc\") forbid(principal, action == Action::\"call_tool\", resource)\n  when { context.args.hasTag(\"path\") && context.args.getTag(\"path\") like \"/etc/*\" };\n",
    );
    for i in 0..48 {
        text.push_str(&format!(
            "@id(\"team-{i}\")\npermit(principal in Role::\"team-{i}\", action in Action::\"{}\", resource == Route::\"svc-{i}\")\n  when {{ context.time.hour >= 6 }};\n\
             @id(\"tools-{i}\")\npermit(principal in Role::\"team-{i}\", action == Action::\"call_tool\", resource == Tool::\"svc-{i}/tool\")\n  when {{ context.time.hour >= 6 }};\n",
            if i % 2 == 0 { "read" } else { "write" }
        ));
    }
    let sources = PolicySources {
        origin: PathBuf::from("bench"),
        schema: DEFAULT_SCHEMA.to_string(),
        files: vec![
            ("quickstart.cedar".into(), DEFAULT_POLICIES.into()),
            ("teams.cedar".into(), text),
        ],
    };
    let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
    let mut agents = vec![AgentEntity {
        name: "bench-bot".into(),
        roles: vec!["dev".into()],
    }];
    let mut routes = vec![RouteEntity {
        name: "bench".into(),
        classification: Classification::Internal,
        owner: String::new(),
        tags: Vec::new(),
    }];
    for i in 0..48 {
        agents.push(AgentEntity {
            name: format!("agent-{i}"),
            roles: vec![format!("team-{i}")],
        });
        routes.push(RouteEntity {
            name: format!("svc-{i}"),
            classification: Classification::Internal,
            owner: String::new(),
            tags: Vec::new(),
        });
    }
    let authz = Authorizer::new(bundle.clone(), &agents, &routes).unwrap();
    let ip = SourceIp::new("127.0.0.1".parse().unwrap());
    let args = vec![portcullis_policy::McpArg::string("message", "hello")];
    let caller = portcullis_policy::CallerFacts::mtls();
    let request = McpRequest {
        agent: "bench-bot",
        action: McpAction::CallTool,
        route: "bench",
        classification: Classification::Internal,
        method: "tools/call",
        revision: "",
        target: "echo",
        args: &args,
        path: "/mcp/bench",
        content: portcullis_policy::Content::NOT_SCANNED,
        source_ip: &ip,
        time: RequestTime::from_epoch(1_700_000_000),
        caller: &caller,
    };
    assert_eq!(
        authz.decide_mcp(&request),
        authz.decide_mcp_unsliced(&request)
    );
    assert!(authz.decide_mcp(&request).allowed);
    let sliced = time(&|| authz.decide_mcp(black_box(&request)).allowed);
    let full = time(&|| authz.decide_mcp_unsliced(black_box(&request)).allowed);
    println!(
        "MCP tools/call, {} policies ({} on call_tool), one reading context.args:",
        bundle.policy_ids().len(),
        48 + 2
    );
    println!("  scope-sliced:                             {sliced:>8.0} ns/decision");
    println!("  every call_tool policy (plain Cedar):     {full:>8.0} ns/decision");
    println!("  speed-up: {:.1}x", full / sliced);
}
