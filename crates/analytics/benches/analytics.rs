//! Throughput of the analytics engine: feature update + rules + forest score
//! + risk per event, on one core, with every agent past its learning period.
//!
//! `cargo bench -p portcullis-analytics` prints events/s for two workloads and,
//! measured in the same run, for the least any per-agent analysis must do (one
//! hash-map lookup by agent name and a counter bump), and the ratio:
//!
//! - busy: 200 agents at 5 requests/s each, interleaved (what a busy
//!   gateway sees; the forest scores each agent at most once a second);
//! - sparse: 500 agents at 2 requests/min each, round robin. Every event is
//!   then scored by a forest that is not in cache: the worst case per event.
//!   With the default of one baseline sample per 3 minutes of traffic, each
//!   agent's forest is also retrained every 768 of its events (every 256 at
//!   one sample a minute, the default before).
//!
//! Target: ≥ 200,000 events/s. The warm-up samples once a second with a
//! 10-minute learning period so it takes seconds; the measured engine is
//! restored from its state with the default settings but for that learning
//! period.
//!
//! Measured figures: see README (analytics) and the closing note of issue 8.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use portcullis_analytics::{Config, Engine, Event};

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

/// Warms up `agents` agents with one request every `gap_ms` each for
/// `warm_ms`, then measures `n` more events at the same rhythm.
fn run(label: &str, agents: usize, gap_ms: i64, warm_ms: i64, n: u64) {
    let names: Vec<String> = (0..agents).map(|a| format!("agent-{a}")).collect();
    let mut engine = Engine::new(Config {
        learning_ms: 10 * 60_000,
        sample_every_ms: 1_000,
        ..Config::default()
    });
    let step = (gap_ms / agents as i64).max(1);
    let warm = (warm_ms / step) as u64;
    let at = |i: u64| {
        let a = (i % agents as u64) as usize;
        (a, event(a, i / agents as u64, (i as i64 + 1) * step))
    };
    for i in 0..warm {
        let (a, e) = at(i);
        engine.observe(&names[a], &e);
    }
    // Measured with the default settings (one baseline sample a minute), but
    // for the learning period: the warm-up's baselines carry over, and 20
    // more minutes refill the (unpersisted) windows before measuring.
    let mut engine = Engine::restore(
        Config {
            learning_ms: 10 * 60_000,
            ..Config::default()
        },
        engine.state(),
    );
    let refill = (20 * 60_000 / step) as u64;
    for i in warm..warm + refill {
        let (a, e) = at(i);
        engine.observe(&names[a], &e);
    }
    let warm = warm + refill;
    let events: Vec<(usize, Event)> = (warm..warm + n).map(at).collect();
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
    let mut unusual = 0u64;
    for (a, e) in &events {
        let v = engine.observe(&names[*a], e);
        unusual += u64::from(v.anomaly > 0.7);
    }
    let took = start.elapsed();
    black_box(unusual);

    let rate = n as f64 / took.as_secs_f64();
    let base_rate = n as f64 / base.as_secs_f64();
    println!("{label}: {agents} agents with trained forests, {n} events");
    println!(
        "  engine.observe        {:>12.0} events/s  ({:.2} µs/event)  target ≥ 200,000: {}",
        rate,
        took.as_secs_f64() * 1e6 / n as f64,
        if rate >= 200_000.0 { "met" } else { "NOT met" }
    );
    println!(
        "  baseline map lookup   {:>12.0} events/s  ({:.3} µs/event)",
        base_rate,
        base.as_secs_f64() * 1e6 / n as f64
    );
    println!("  ratio baseline/engine {:>12.1}x", base_rate / rate);
    println!(
        "  events the forest found unusual (> 0.7): {:.2} %",
        100.0 * unusual as f64 / n as f64
    );
}

fn main() {
    run("busy", 200, 200, 30 * 60_000, 2_000_000);
    run("sparse", 500, 30_000, 60 * 60_000, 200_000);
}
