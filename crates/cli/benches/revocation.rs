//! Revocation propagation: how long after an admin sends `agent revoke` (or
//! `token revoke`) the agent's next request on an already-open keep-alive
//! connection is refused, against a real `portcullis serve` process.
//!
//! Run: `cargo bench -p portcullis-cli --bench revocation`
//! Knob: `BENCH_REVOCATIONS` (default 30 agents).
//!
//! For each agent a task sends requests back to back on one connection; the
//! bench notes when the revoke call was sent, when it returned, and when the
//! first 401 came back. "Propagation" is sent → first refusal, which includes
//! up to one request round trip of sampling granularity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::var("BENCH_REVOCATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nname = \"demo\"\npath_prefix = \"/demo\"\nupstream = \"builtin:demo\"\nclassification = \"public\"\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let server = support::serve(&config, &state, &[]);
    let (gateway, admin) = (
        format!("https://{}", server.gateway),
        format!("https://{}", server.admin),
    );
    let creds = dir.path().join("creds");
    for i in 0..n {
        support::create_agent(&state, &creds, &format!("rev-{i}"), "reader");
    }
    let token = std::fs::read_to_string(state.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let admin_client = support::client(&state, None);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut acked, mut propagated) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for i in 0..n {
            let name = format!("rev-{i}");
            let agent = support::client(&state, Some((&creds, &name)));
            let url = format!("{gateway}/demo/hello");
            // Warm: the connection is open and the agent is served.
            assert_eq!(agent.get(&url).send().await.unwrap().status(), 200);
            let started = Arc::new(tokio::sync::OnceCell::<Instant>::new());
            let watcher = {
                let (agent, url) = (agent.clone(), url.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        let status = agent.get(&url).send().await.unwrap().status();
                        if status == 401 {
                            return Some(Instant::now());
                        }
                    }
                    None
                })
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
            let sent = Instant::now();
            started.set(sent).unwrap();
            let response = admin_client
                .post(format!("{admin}/admin/v1/agents/{name}/revoke"))
                .bearer_auth(&token)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
            acked.push(sent.elapsed());
            let refused = watcher.await.unwrap().expect("never refused");
            propagated.push(refused.saturating_duration_since(sent));
        }
    });
    drop(server);
    acked.sort();
    propagated.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "revocations: {n} agents, each with requests in flight on a kept-alive mTLS connection"
    );
    println!(
        "  revoke call returned (store + snapshot reload): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(percentile(&acked, 0.5)),
        ms(percentile(&acked, 0.99)),
        ms(*acked.last().unwrap())
    );
    println!(
        "  sent -> first refused request:                 p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (target < 100 ms)",
        ms(percentile(&propagated, 0.5)),
        ms(percentile(&propagated, 0.99)),
        ms(*propagated.last().unwrap())
    );
}
