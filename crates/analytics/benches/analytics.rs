//! Throughput of the analytics engine: feature update + rules + forest score
//! + risk per event, on one core, with every agent past its learning period.
//!
//! `cargo bench -p portcullis-analytics` prints events/s for the engine and,
//! measured in the same run, for the least any per-agent analysis must do (one
//! hash-map lookup by agent name and a counter bump), and their ratio.
//! Target: ≥ 200,000 events/s.
//!
//! Measured (2 cores shared with three other builds, so noisy): see the
//! closing note of issue 8 and README's analytics section.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use portcullis_analytics::{Config, Engine, Event};

const AGENTS: usize = 500;

fn event(agent: usize, i: u64, t: i64) -> Event {
    Event {
        time_ms: t,
        resource: (agent as u64) * 100 + i % 7,
        operation: (agent as u64) * 100 + (i * 3) % 5,
        write: i.is_multiple_of(4),
        denied: i.is_multiple_of(50),
        error: false,
        bytes_in: 200,
        bytes_out: 2_000 + (i % 13) * 100,
        classification: (i % 3) as u8,
        source_ip: agent as u64,
        content_hits: 0,
    }
}

fn main() {
    let names: Vec<String> = (0..AGENTS).map(|a| format!("agent-{a}")).collect();
    let mut engine = Engine::new(Config::default());
    // Warm up: 26 hours at one request per agent per 30 s, so every agent has
    // its own forest.
    let mut t = 0i64;
    let step = 30_000 / AGENTS as i64;
    let warm = 26 * 120 * AGENTS as u64;
    for i in 0..warm {
        let a = (i % AGENTS as u64) as usize;
        t += step.max(1);
        engine.observe(&names[a], &event(a, i / AGENTS as u64, t));
    }
    let n: u64 = 1_000_000;
    // Measured traffic: 1 ms apart overall (2 requests/s per agent).
    let events: Vec<(usize, Event)> = (0..n)
        .map(|i| {
            let a = (i % AGENTS as u64) as usize;
            (a, event(a, i / AGENTS as u64, t + i as i64))
        })
        .collect();

    let mut counts: HashMap<String, u64> = names.iter().map(|n| (n.clone(), 0)).collect();
    let start = Instant::now();
    for (a, e) in &events {
        if let Some(c) = counts.get_mut(names[*a].as_str()) {
            *c += e.bytes_out;
        }
    }
    black_box(&counts);
    let base = start.elapsed();

    let start = Instant::now();
    let mut quarantined = 0u64;
    for (a, e) in &events {
        let v = engine.observe(&names[*a], e);
        quarantined += u64::from(v.grade == portcullis_analytics::Grade::Quarantine);
    }
    let took = start.elapsed();
    black_box(quarantined);

    let rate = n as f64 / took.as_secs_f64();
    let base_rate = n as f64 / base.as_secs_f64();
    println!("analytics engine, {AGENTS} agents with trained forests, {n} events");
    println!(
        "  engine.observe        {:>12.0} events/s  ({:.2} µs/event)",
        rate,
        took.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "  baseline map lookup   {:>12.0} events/s  ({:.3} µs/event)",
        base_rate,
        base.as_secs_f64() * 1e6 / n as f64
    );
    println!("  ratio baseline/engine {:>12.1}x", base_rate / rate);
    println!(
        "  target ≥ 200,000 events/s: {}",
        if rate >= 200_000.0 { "met" } else { "NOT met" }
    );
}
