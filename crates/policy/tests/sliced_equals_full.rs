//! Property: for random policy sets, grants and requests, the decision of the
//! scope-indexed, memoized path (the slice) equals Cedar's over the full set:
//! same outcome, same deciding policies, same errors.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;

use portcullis_core::Classification;
use portcullis_policy::{
    AgentEntity, Authorizer, AuthzRequest, CallerFacts, Content, DEFAULT_SCHEMA, GrantEntity,
    GrantScope, HttpAction, PolicyBundle, PolicySources, RequestTime, RouteEntity, SourceIp,
};
use proptest::prelude::*;

const AGENTS: usize = 6;
const ROLES: usize = 3;
const ROUTES: usize = 4;
const METHODS: [HttpAction; 6] = [
    HttpAction::Get,
    HttpAction::Head,
    HttpAction::Post,
    HttpAction::Put,
    HttpAction::Patch,
    HttpAction::Delete,
];

fn principal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("principal".to_string()),
        (0..AGENTS).prop_map(|a| format!("principal == Agent::\"a{a}\"")),
        (0..ROLES).prop_map(|r| format!("principal in Role::\"r{r}\"")),
        (0..ROLES).prop_map(|r| format!("principal is Agent in Role::\"r{r}\"")),
    ]
}

fn action() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..6usize).prop_map(|m| format!("action == Action::\"{}\"", METHODS[m].as_str())),
        Just("action in Action::\"read\"".to_string()),
        Just("action in Action::\"write\"".to_string()),
        Just("action in [Action::\"GET\", Action::\"DELETE\"]".to_string()),
    ]
}

fn resource() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("resource is Route".to_string()),
        (0..ROUTES).prop_map(|r| format!("resource == Route::\"s{r}\"")),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (0..24i64).prop_map(|h| format!(" when {{ context.time.hour < {h} }}")),
        (0..4i64).prop_map(|l| format!(" when {{ resource.classification_level <= {l} }}")),
        Just(" unless { context.source_ip.isLoopback() }".to_string()),
        Just(" when { resource.tags.contains(\"pii\") }".to_string()),
        Just(" when { context.risk.greaterThan(decimal(\"0.5\")) }".to_string()),
        // Errors at evaluation (overflow): must be reported identically.
        Just(" when { context.time.epoch * 9223372036854775807 > 0 }".to_string()),
    ]
}

fn policy() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        principal(),
        action(),
        resource(),
        condition(),
    )
        .prop_map(|(permit, p, a, r, c)| {
            format!(
                "{}({p}, {a}, {r}){c};",
                if permit { "permit" } else { "forbid" }
            )
        })
}

fn grant() -> impl Strategy<Value = (usize, usize, usize, i64)> {
    (0..AGENTS, 0..6usize, 0..ROUTES, 0..2_000i64)
}

fn request() -> impl Strategy<Value = (usize, usize, usize, bool, i64, u8)> {
    // One agent and one route beyond the known ones: unknown names too.
    (
        0..AGENTS + 1,
        0..6usize,
        0..ROUTES + 1,
        any::<bool>(),
        0..2_000i64,
        0..10u8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn sliced_decisions_equal_full_set_decisions(
        policies in prop::collection::vec(policy(), 1..24),
        grants in prop::collection::vec(grant(), 0..8),
        requests in prop::collection::vec(request(), 1..40),
    ) {
        let text: String = policies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("@id(\"p{i}\") {p}\n"))
            .collect();
        let sources = PolicySources {
            origin: PathBuf::from("/prop"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![("p.cedar".into(), text)],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let agents: Vec<AgentEntity> = (0..AGENTS)
            .map(|a| AgentEntity {
                name: format!("a{a}"),
                roles: vec![format!("r{}", a % ROLES)],
            })
            .collect();
        let levels = [
            Classification::Public,
            Classification::Internal,
            Classification::Confidential,
            Classification::Restricted,
        ];
        let routes: Vec<RouteEntity> = (0..ROUTES)
            .map(|r| RouteEntity {
                name: format!("s{r}"),
                classification: levels[r % 4],
                owner: String::new(),
                tags: if r % 2 == 0 { vec!["pii".into()] } else { Vec::new() },
            })
            .collect();
        let grants: Vec<GrantEntity> = grants
            .iter()
            .enumerate()
            .map(|(i, (a, m, r, expires))| GrantEntity {
                id: format!("g{i}"),
                agent: format!("a{a}"),
                // One in seven is a break-glass grant (every action, every route).
                scope: if i % 7 == 6 {
                    GrantScope::BreakGlass
                } else {
                    GrantScope::Call {
                        action: METHODS[*m],
                        route: format!("s{r}"),
                    }
                },
                expires_epoch: 1_700_000_000 + expires,
            })
            .collect();
        let authz = Authorizer::with_grants(bundle, &agents, &routes, &grants).unwrap();
        let loopback = SourceIp::new([127, 0, 0, 1].into());
        let remote = SourceIp::new([10, 1, 2, 3].into());
        // Twice: the second pass is answered from the memo where it applies.
        for _ in 0..2 {
            for (a, m, r, local, at, risk) in &requests {
                let caller = CallerFacts {
                    risk: f32::from(*risk) / 10.0,
                    ..CallerFacts::mtls()
                };
                let agent = format!("a{a}");
                let route = format!("s{r}");
                let request = AuthzRequest {
                    agent: &agent,
                    action: METHODS[*m],
                    route: &route,
                    path: "/x",
                    source_ip: if *local { &loopback } else { &remote },
                    time: RequestTime::from_epoch(1_700_000_000 + at),
                    content: Content::NOT_SCANNED,
                    caller: &caller,
                };
                prop_assert_eq!(authz.decide(&request), authz.decide_unindexed(&request));
            }
        }
    }
}

const TOOLS: usize = 3;

fn protocol_policy() -> impl Strategy<Value = String> {
    let resource = prop_oneof![
        Just("resource".to_string()),
        (0..ROUTES).prop_map(|r| format!("resource in Route::\"s{r}\"")),
        (0..TOOLS).prop_map(|t| format!("resource == Tool::\"s0/t{t}\"")),
        (0..TOOLS).prop_map(|t| format!("resource == Model::\"s1/m{t}\"")),
    ];
    let action = prop_oneof![
        Just("action == Action::\"call_tool\"".to_string()),
        Just("action == Action::\"complete\"".to_string()),
        Just("action in [Action::\"complete\", Action::\"embed\"]".to_string()),
    ];
    (any::<bool>(), principal(), action, resource, condition()).prop_map(|(permit, p, a, r, c)| {
        // `resource` conditions only where every resource has the attribute.
        let c = if c.contains("resource.tags") {
            String::new()
        } else {
            c
        };
        format!(
            "{}({p}, {a}, {r}){c};",
            if permit { "permit" } else { "forbid" }
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The same for MCP tool calls and model calls, whose candidate slices
    /// hold the grants' static twins: a tool or a model granted, or
    /// break-glass.
    #[test]
    fn sliced_tool_and_model_decisions_equal_full_set_decisions(
        policies in prop::collection::vec(protocol_policy(), 1..16),
        grants in prop::collection::vec((0..AGENTS, 0..3usize, 0..TOOLS, 0..2_000i64), 0..8),
        requests in prop::collection::vec((0..AGENTS + 1, any::<bool>(), 0..TOOLS + 1, 0..2_000i64), 1..30),
    ) {
        use portcullis_policy::{McpAction, McpRequest, ModelAction, ModelEntity, ModelRequest};
        let text: String = policies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("@id(\"p{i}\") {p}\n"))
            .collect();
        let sources = PolicySources {
            origin: PathBuf::from("/prop"),
            schema: DEFAULT_SCHEMA.to_string(),
            files: vec![("p.cedar".into(), text)],
        };
        let bundle = Arc::new(PolicyBundle::compile(&sources).unwrap());
        let agents: Vec<AgentEntity> = (0..AGENTS)
            .map(|a| AgentEntity {
                name: format!("a{a}"),
                roles: vec![format!("r{}", a % ROLES)],
            })
            .collect();
        let routes: Vec<RouteEntity> = (0..ROUTES)
            .map(|r| RouteEntity {
                name: format!("s{r}"),
                classification: Classification::Internal,
                owner: String::new(),
                tags: Vec::new(),
            })
            .collect();
        let grants: Vec<GrantEntity> = grants
            .iter()
            .enumerate()
            .map(|(i, (a, kind, t, expires))| GrantEntity {
                id: format!("g{i}"),
                agent: format!("a{a}"),
                scope: match kind {
                    0 => GrantScope::parse("call_tool", &format!("s0/t{t}")).unwrap(),
                    1 => GrantScope::parse("complete", &format!("s1/m{t}")).unwrap(),
                    _ => GrantScope::BreakGlass,
                },
                expires_epoch: 1_700_000_000 + expires,
            })
            .collect();
        let models: Vec<ModelEntity> = (0..TOOLS)
            .map(|m| ModelEntity {
                route: "s1".into(),
                name: format!("m{m}"),
                version: String::new(),
                status: String::new(),
                classification: Classification::Internal,
                registry: Default::default(),
            })
            .collect();
        let authz = Authorizer::with_grants(bundle, &agents, &routes, &grants)
            .unwrap()
            .with_models(&models)
            .unwrap();
        let ip = SourceIp::new([127, 0, 0, 1].into());
        let caller = CallerFacts::mtls();
        for _ in 0..2 {
            for (a, tool, t, at) in &requests {
                let agent = format!("a{a}");
                let time = RequestTime::from_epoch(1_700_000_000 + at);
                if *tool {
                    let target = format!("t{t}");
                    let r = McpRequest {
                        agent: &agent,
                        action: McpAction::CallTool,
                        route: "s0",
                        classification: Classification::Internal,
                        method: "tools/call",
                        revision: "",
                        target: &target,
                        args: &[],
                        path: "/x",
                        content: Content::NOT_SCANNED,
                        source_ip: &ip,
                        time,
                        caller: &caller,
                    };
                    prop_assert_eq!(authz.decide_mcp(&r), authz.decide_mcp_unsliced(&r));
                } else {
                    let model = format!("m{t}");
                    let r = ModelRequest {
                        agent: &agent,
                        action: ModelAction::Complete,
                        route: "s1",
                        model: &model,
                        method: HttpAction::Post,
                        path: "/x",
                        source_ip: &ip,
                        time,
                        content: Content::NOT_SCANNED,
                        caller: &caller,
                    };
                    prop_assert_eq!(authz.decide_model(&r), authz.decide_model_unsliced(&r));
                }
            }
        }
    }
}
