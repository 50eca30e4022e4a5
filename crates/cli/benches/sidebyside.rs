//! Side by side: one upstream, reached directly, through nginx terminating
//! mTLS, and through a real `portcullis serve` (mTLS, ~100 Cedar policies,
//! audit on), all in one run, with the differences printed.
//!
//! Run: `cargo bench -p portcullis-cli --bench sidebyside`
//! (needs Debian's `nginx-light`: `apt-get install -y nginx-light`; without
//! it the nginx row prints `SKIPPED: nginx` and the rest still runs).
//! Knobs (environment): `BENCH_LATENCY_REQUESTS` (default 5000),
//! `BENCH_THROUGHPUT_SECS` (default 5), `BENCH_CONCURRENCY` (default 32),
//! `BENCH_THROUGHPUT_ROUNDS` (default 2), `NGINX` (the binary, default
//! `nginx` on `PATH`, then `/usr/sbin/nginx`).
//!
//! - The upstream is the gateway bench's: an in-process hyper server on its
//!   own thread and single-threaded runtime answering 1 KiB to a 1 KiB POST.
//! - nginx is started by the bench as a child process with a generated
//!   config in a temp dir: `127.0.0.1` on an ephemeral port, `worker_processes
//!   2`, TLS with a server certificate issued by the same Portcullis CA,
//!   `ssl_verify_client on` against that CA (so nginx verifies the very client
//!   certificate the agent presents to Portcullis), `proxy_http_version 1.1`,
//!   an `upstream` block with `keepalive 32` and `proxy_set_header Connection
//!   ""`, access log off, and `keepalive_requests` raised from its default of
//!   1000 (both sides) so that nginx, like Portcullis, keeps a connection for
//!   the whole run.
//! - Portcullis is the gateway bench's: a route to the upstream, ~100
//!   policies of which 97 do not match the agent, the audit log on, analytics
//!   on (the default).
//! - Latency: one keep-alive connection per path, sequential requests, the
//!   paths taking turns in rounds of 250; p50/p99. "Added" is the path minus
//!   direct at the same percentile.
//! - Throughput: `BENCH_CONCURRENCY` keep-alive connections for
//!   `BENCH_THROUGHPUT_SECS` per path, the paths taking turns for
//!   `BENCH_THROUGHPUT_ROUNDS` rounds; the mean of the rounds is printed.
//! - RSS: `VmRSS` of the Portcullis process at the end (and of nginx's master
//!   plus workers, for comparison).
//! - The load generator (one thread), the upstream, nginx and Portcullis
//!   share the machine's cores; nothing is pinned.
//!
//! Measured on the development machine: 2 shared cores with other
//! engineers' `cargo` builds running at the same time (load average 9–12
//! during runs 1–4, 1–2 during runs 5–6), so every figure carries that
//! noise; the p99 column especially is dominated by scheduling. Main at
//! 959cb87 plus these benches, nginx 1.22.1 (Debian `nginx-light`), six runs
//! of `cargo bench -p portcullis-cli --bench sidebyside` (defaults: 5000
//! requests per latency row, 32 connections × 5 s × 2 rounds):
//!
//! ```text
//! run  direct p50/p99  nginx +p50/+p99   portcullis +p50/+p99  P−N p50  P−N p99   direct rps  nginx rps  portcullis rps  P/N    RSS P / nginx
//! 1    18 / 51 µs      +24 / +5459 µs    +32 / +284 µs         +8 µs    −5175 µs  55042       26509      13734           52 %   76.7 / 25.0 MiB
//! 2    18 / 48 µs      +23 / +109 µs     +32 / +155 µs         +10 µs   +45 µs    60772       25720      13782           54 %   75.7 / 24.7 MiB
//! 3    17 / 67 µs      +23 / +2782 µs    +75 / +4368 µs        +51 µs   +1587 µs  46517       27569      14487           53 %   73.1 / 24.8 MiB
//! 4    18 / 52 µs      +26 / +4243 µs    +34 / +1555 µs        +8 µs    −2688 µs  48187       26549      19668           74 %   82.3 / 25.0 MiB
//! 5    18 / 94 µs      +67 / +46 µs      +81 / +294 µs         +15 µs   +248 µs   136746      51960      32328           62 %   64.8 / 24.7 MiB
//! 6    43 / 107 µs     +41 / +47 µs      +55 / +297 µs         +14 µs   +249 µs   138311      55421      30497           55 %   64.5 / 24.6 MiB
//! ```
//!
//! Against the issue's targets: Portcullis − nginx at p50 was +8, +10, +51,
//! +8, +15 and +14 µs (target ≤ +20 µs: met in five runs of six); at p99
//! it was +248 and +249 µs in the two quiet runs (in the loaded runs the
//! p99 swings by milliseconds in both directions: noise, not a property of
//! either proxy); throughput reached 52–74 % of nginx's (target ≥ 100 %:
//! not met in any run); RSS after the throughput rounds was 64.5–82 MiB
//! (goal ≤ 30 MiB: not met; nginx's master and two workers together:
//! 25 MiB). On the quiet machine every absolute latency is higher and
//! every throughput about twice as high as under load (idle cores sleep
//! deeper and wake later); compare rows within one run only.
//!
//! 2026-12-07, quiet machine, main at the merge of issue 17's durability
//! against the release binary of 9253181 (before this session's merges),
//! alternating old and new twice in one sitting (`BENCH_EXTRA_CONFIG` sets
//! `[audit] durability = "async"` on the new one, as the old one had no
//! journal):
//!
//! ```text
//! binary            portcullis p50/p99  nginx p50  P−N p50  portcullis rps  nginx rps  P/N   RSS P
//! old 9253181       196 / 508 µs        132 µs     +64 µs   18473           45688      40 %  75.0 MiB
//! new, async        209 / 635 µs        130 µs     +79 µs   18235           43566      42 %  76.0 MiB
//! old 9253181       186 / 530 µs        130 µs     +56 µs   18676           44188      42 %  73.7 MiB
//! new, async        198 / 548 µs        130 µs     +68 µs   16981           40093      42 %  75.7 MiB
//! new, default      720 / 1581 µs       119 µs     +601 µs  9027            38745      23 %  44.6 MiB
//! ```
//!
//! The unified path costs about 12 µs at p50 over 9253181 (the process-wide
//! buffer lease, plumbing decided as actions, the control crate's seam);
//! throughput is within the noise. The default `before_forward` durability
//! waits for a group commit (fsync) before every write is forwarded.
//!
//! 2026-12-07 04:05 UTC, main at 7797902 (release), load average 11–14 from
//! other builds, one throughput round (`BENCH_THROUGHPUT_ROUNDS=1`), one run
//! per durability, one after the other:
//!
//! ```text
//! durability       direct p50  nginx p50 (+)  portcullis p50 (+)  P−N p50  direct rps  nginx rps  portcullis rps  P/N   RSS P / nginx
//! async            45 µs       171 (+125)     340 (+295)          +169 µs  30643       14506      5293            36 %  53.8 / 24.6 MiB
//! before_forward   29 µs       105 (+76)      756 (+727)          +651 µs  36821       14201      3544            25 %  43.5 / 24.8 MiB
//! ```
//!
//! What the RSS is made of (`/proc/PID/smaps` of the async run at its end):
//! 27.4 MiB are pages of the `portcullis` executable itself (its text and
//! read-only data: clean, file-backed, shared with any other process running
//! the binary), 23 MiB anonymous memory (glibc's heap and six thread arenas
//! of 2–3 MiB each), 2 MiB shared libraries. So the ≤ 30 MiB goal cannot be
//! met by trimming heap alone: the binary's resident code already takes 27
//! MiB (a smaller binary — LTO, one codegen unit — is the first lever).
//! The `before_forward` run had 11 MiB anonymous.
//! Two knobs tried without rebuilding, `async`, same conditions:
//! `MALLOC_ARENA_MAX=2` left the RSS at 55.1 MiB (the anonymous memory moved
//! from the thread arenas into the main heap, 24.7 MiB in all; P−N p50 +137
//! µs, 44 %), and `TOKIO_WORKER_THREADS=1` gave +175 µs, 41 %, 55.3 MiB: the
//! arenas and the runtime's worker count are not where the gap is.
//! The `before_forward` floor is one WAL fsync per group commit: `fsync` of
//! a 4 KiB append on this disk takes ~300 µs at p50 (Python `os.fsync`
//! loop, 200 samples), and the commit makes six round trips to SQLite's
//! worker thread (BEGIN IMMEDIATE, the seq check, the record, the intent,
//! the closed intents, COMMIT); nginx-mTLS + 20 µs is out of reach for a
//! call that must be durable before it is forwarded.
//!
//! Issue 15's allocation pass, 2026-12-07 07:02 UTC, release binaries of
//! main at cec16f7 (`base`) and of the branch (`new`) run by the same bench
//! binary (`PORTCULLIS_BIN`), alternating, load average 10–16 from other
//! builds, `BENCH_THROUGHPUT_ROUNDS=1 BENCH_LATENCY_REQUESTS=3000`:
//!
//! ```text
//! binary, durability       nginx p50  portcullis p50  P−N p50  portcullis rps  nginx rps  P/N   RSS P
//! base, async              41 µs      52 µs           +11 µs   10284           20067      51 %  69.5 MiB
//! new, async               46 µs      58 µs           +12 µs   10419           19084      55 %  71.6 MiB
//! base, async              100 µs     96 µs           −4 µs    10698           18918      57 %  74.7 MiB
//! new, async               42 µs      53 µs           +11 µs   10958           20080      55 %  71.5 MiB
//! base, before_forward     81 µs      388 µs          +307 µs  2715            19482      14 %  51.7 MiB
//! new, before_forward      46 µs      404 µs          +358 µs  3522            20132      17 %  53.3 MiB
//! ```
//!
//! About 20 fewer allocations per request (49 when Cedar evaluates; see the
//! allocs bench) do not show against this noise: latency and the async
//! throughput ratio are within it, and so is RSS, which the allocations do
//! not drive (27 MiB executable pages, the rest glibc's arenas). The
//! `before_forward` throughput rose by ~30 % in this one pair (an intent
//! batch makes one SQLite round trip fewer), its p50 stays the fsync's.
//! A release profile with `lto = "fat"` and `codegen-units = 1` (the lever
//! for the executable's resident pages) was measured later: see the `dist`
//! profile figures at the end of this doc.
//!
//! 2026-12-07 16:20 UTC, release binary of main at 701d68b (the default
//! release profile), the other engineers' compilers paused (SIGSTOP) for the
//! runs so the machine was quiet (load average falling from 11 to 4), and the
//! same build with `mimalloc` as the global allocator (`new`), alternating,
//! `BENCH_THROUGHPUT_ROUNDS=1 BENCH_LATENCY_REQUESTS=2000`:
//!
//! ```text
//! binary, durability       nginx p50  portcullis p50  P−N p50  portcullis rps  nginx rps  P/N   RSS P
//! base, async              311 µs     459 µs          +148 µs  10556           17453      60 %  81.1 MiB
//! mimalloc, async          336 µs     467 µs          +131 µs  10972           16284      67 %  112.7 MiB
//! base, async              272 µs     407 µs          +135 µs  10666           16717      64 %  80.8 MiB
//! mimalloc, async          300 µs     430 µs          +129 µs  10712           16856      64 %  113.2 MiB
//! base, before_forward     324 µs     986 µs          +661 µs  6651            18362      36 %  70.1 MiB
//! mimalloc, before_forward 304 µs     1011 µs         +707 µs  7207            18141      40 %  98.6 MiB
//! ```
//!
//! mimalloc moves throughput within the noise and costs ~30 MiB of RSS, so
//! glibc's allocator stays. In that idle process 26.7 MiB of the 34.7 MiB
//! text segment and 8.4 MiB of the read-only segment are resident right
//! after start (`/proc/PID/smaps`): start-up touches code of nearly every
//! crate, and each page fault maps its 64 KiB neighbourhood. The
//! executable's size (36 MB of `.text`, 9 MB of it monomorphised `core`
//! generics) is the lever for the RSS goal, not the heap.
//!
//! Where the `before_forward` time goes, by system calls (2026-12-07 18:15
//! UTC, main at 9db7201, the debug binary: counts, not timings, so the
//! build matters little; under `strace` the process runs slower, so
//! commits carry somewhat more intents than at full speed). The gateway
//! bench's config and policies with the default durability, a threaded
//! Python upstream answering 1 KiB, 2,000 1 KiB POSTs from 32 keep-alive
//! mTLS connections (Python `http.client`), `strace -f -c -p PID` for the
//! counts and `strace -f -y -e trace=fsync,fdatasync,ftruncate,pwrite64`
//! for the files (two runs: the fsync and page-write columns are the
//! second's; fcntl, futex and the total the `-c` run's, which had 255 WAL
//! fsyncs, ~7.8 requests per commit):
//!
//! ```text
//! per 2,000 requests   fsync of the WAL  fsync of the db  WAL page writes  db page writes  fcntl (locks)  futex  all syscalls
//! count                316               3                5,629            167             1,741          6,091  29,600
//! per request          0.16              0.0015           2.8              0.08            0.87           3.0    14.8
//! ```
//!
//! So group commit works (about 6.3 requests per commit), SQLite syncs
//! once per commit (`synchronous = FULL` in WAL mode), and its automatic
//! checkpoint (WAL fsync + database fsync) ran 3 times in 2,000 requests:
//! there is no second sync per commit to remove. A commit writes ~18 WAL
//! pages (the record, its intent and the intents it closes, the tree's
//! nodes; `secure_delete` zeroes deleted intents in place). What makes
//! `before_forward` slower is then the wait itself (a call arriving while a
//! commit is in flight waits for it and then for its own: on average about
//! 1.5 fsyncs, an estimate of ~450 µs at this disk's ~300 µs `fsync`, not
//! measured here) and the CPU of the commits on
//! the two shared cores (six statements per commit, each a round trip to
//! sqlx's worker thread: the futex count). A cheaper intent that keeps the
//! guarantee would have to leave SQLite (an append-only intent file with
//! one `fdatasync` per group is still one sync per commit, so it would save
//! the statements' CPU, not the wait); weakening `synchronous` to `NORMAL`
//! would survive `kill -9` but not a power loss, which ARCHITECTURE.md
//! promises, so it was not tried. This VM exposes no hardware counters
//! (`perf stat -e instructions` answers `<not supported>`);
//! `valgrind --tool=callgrind` (installed) is the load-independent
//! instruction count to use instead.
//!
//! The `dist` profile (`cargo build --profile dist -p portcullis-cli`: fat
//! LTO, one codegen unit; 1 h 50 min to build on the two cores shared with
//! seven other builds), main at 9db7201, 2026-12-07 19:48 UTC, nothing
//! else running (load average 0.3), `BENCH_THROUGHPUT_ROUNDS=1
//! BENCH_LATENCY_REQUESTS=2000 PORTCULLIS_BIN=target/dist/portcullis`:
//!
//! ```text
//! durability       nginx p50  portcullis p50  P−N p50  portcullis rps  nginx rps  P/N   RSS P
//! async            431 µs     547 µs          +116 µs  7433            11869      63 %  69.5 MiB
//! before_forward   413 µs     1217 µs         +804 µs  4700            10653      44 %  61.8 MiB
//! ```
//!
//! Against the default release profile (the 16:20 table): `.text` 36 →
//! 29.3 MB, RSS 81 → 69.5 MiB (async) and 70 → 61.8 MiB (before_forward);
//! the latency and throughput ratios to nginx stay where they were (the
//! absolute rates of this pair are lower for all three rows: a different
//! sitting). Fat LTO buys ~11 MiB of resident code, not speed; the 30 MiB
//! goal needs a smaller executable still (fewer monomorphised copies, a
//! separate small `sandbox-exec`), and the speed targets need less work per
//! request, not a different build.
//!
//! What the anonymous memory is (issue 15's RSS pass, 2026-12-07 21:30 UTC,
//! debug binaries, `BENCH_THROUGHPUT_ROUNDS=1 BENCH_LATENCY_REQUESTS=1000`,
//! `/proc/PID/smaps` sampled every second, and `heaptrack -p PID` attached
//! to the `serve` of one run): 7 threads (main, 2 tokio workers, 4
//! sqlx-sqlite workers: no blocking-pool threads, so arenas and stacks are
//! not the lever: 3 thread arenas of 2–2.6 MiB and a 1 MiB main stack).
//! Anonymous memory went from 8.7 MiB to 25 MiB during start-up and then
//! grew only to 30 MiB under the throughput rounds. Heaptrack: heap peak
//! 23 MB, at start-up, of which the MCP tool-poisoning scanner built 12.6
//! MB (its signature regexes 6.4 MB, freed again; the shipped semantic
//! embeddings and tokenizer 5.6 MB, kept in a static for the process's
//! life), and Cedar's validation, SQLite's statement preparation and the
//! rest the remainder; live at the end, 7.2 MB. glibc keeps the start-up
//! peak resident (the freed chunks sit under live ones, so the heap's top
//! is never trimmed). So the scanner is now built only when a route serves
//! MCP (else on its first scan), and the table of decimal-score
//! expressions keeps boxed slots (1.36 MB → 0.16 MB). Same sitting, load
//! average 12–15 (another engineer's builds and a clippy run: the latency
//! and throughput columns are noise here, the debug binary's p50 with
//! `before_forward` was 10 ms), main at b047e04 (`base`) against branch
//! perf15b:
//!
//! ```text
//! binary, durability       portcullis p50  P−N p50    portcullis rps  nginx rps  RSS P     anonymous
//! base, before_forward     10157 µs        +9859 µs   391             3191       92.7 MiB  30.2 MiB
//! perf15b, before_forward  11562 µs        +11265 µs  501             5699       77.6 MiB  15.7 MiB
//! base, async              969 µs          +682 µs    824             4074       92.9 MiB
//! perf15b, async           1050 µs         +732 µs    760             4906       77.3 MiB
//! ```
//!
//! RSS −15 MiB (the heap 14.5 → 2.6 MiB; the executable's read-only pages
//! 16.3 → 12.3 MiB, as the embedded embeddings are no longer read). In a
//! release binary the executable's resident pages are smaller and the same
//! heap saving applies: from the `dist` row's 61.8–69.5 MiB, about 47–55
//! MiB expected, not measured. What is left above 30 MiB is the
//! executable's own resident pages (27 MiB of the release binary's, see
//! above) and ~16 MiB anonymous. Smaller SQLite caches or fewer pool
//! connections were not tried: in heaptrack's record SQLite's page caches
//! held 0.2 MB at the heap's peak and its statement preparation 2 MB
//! (allocations made before heaptrack attached, early in start-up, are
//! not in its record).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::load::{
    Gateway, Target, env_num, latencies, percentile, start_upstream, throughput, us,
};
use support::vm_rss_kib;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let latency_n = env_num("BENCH_LATENCY_REQUESTS", 5000) as usize;
    let secs = env_num("BENCH_THROUGHPUT_SECS", 5);
    let concurrency = env_num("BENCH_CONCURRENCY", 32) as usize;
    let rounds = env_num("BENCH_THROUGHPUT_ROUNDS", 2).max(1);

    let upstream = start_upstream(None);
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(dir.path(), upstream, "");
    let nginx_dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(nginx_dir.path(), &gateway.state, upstream);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let agent_tls = Some(Arc::new(gateway.tls.clone()));
    let direct = Target {
        addr: upstream,
        tls: None,
        path: "/echo",
    };
    let through_nginx = nginx.as_ref().ok().map(|n| Target {
        addr: n.addr,
        tls: agent_tls.clone(),
        path: "/echo",
    });
    let through_portcullis = Target {
        addr: gateway.addr,
        tls: agent_tls,
        path: "/bench/echo",
    };
    rt.block_on(async {
        let mut targets = vec![&direct];
        targets.extend(through_nginx.as_ref());
        targets.push(&through_portcullis);
        // Warm up every path (connection pools, caches, branch predictors).
        let _ = latencies(&targets, 500).await;
        let mut rows = latencies(&targets, latency_n).await;
        let g = rows.pop().unwrap();
        let n = through_nginx.as_ref().map(|_| rows.pop().unwrap());
        let d = rows.pop().unwrap();

        let window = Duration::from_secs(secs);
        let (mut dt, mut nt, mut gt) = (0.0, 0.0, 0.0);
        for _ in 0..rounds {
            dt += throughput(&direct, concurrency, window).await / rounds as f64;
            if let Some(target) = &through_nginx {
                nt += throughput(target, concurrency, window).await / rounds as f64;
            }
            gt += throughput(&through_portcullis, concurrency, window).await / rounds as f64;
        }
        let rss = vm_rss_kib(gateway.server.child.id());
        let nginx_rss = nginx.as_ref().ok().map(|n| n.rss_kib());

        let p50 = |v: &[Duration]| us(percentile(v, 0.5));
        let p99 = |v: &[Duration]| us(percentile(v, 0.99));
        println!();
        println!(
            "side by side: 1 KiB request and response bodies, one upstream, {latency_n} sequential requests per latency row"
        );
        println!(
            "{:<34}{:>9}{:>9}{:>12}{:>12}{:>10}",
            "path", "p50 µs", "p99 µs", "+p50 µs", "+p99 µs", "req/s"
        );
        let row = |name: &str, v: &[Duration], rps: f64| {
            println!(
                "{name:<34}{:>9.0}{:>9.0}{:>12.0}{:>12.0}{:>10.0}",
                p50(v),
                p99(v),
                p50(v) - p50(&d),
                p99(v) - p99(&d),
                rps
            );
        };
        row("direct (http)", &d, dt);
        match (&n, &nginx) {
            (Some(n), _) => row("nginx (mTLS, 2 workers)", n, nt),
            (None, Err(why)) => println!("{:<34}SKIPPED: nginx ({why})", "nginx (mTLS, 2 workers)"),
            (None, Ok(_)) => unreachable!("nginx ran but has no row"),
        }
        row("portcullis (mTLS + Cedar + audit)", &g, gt);
        println!();
        if let Some(n) = &n {
            let diff50 = p50(&g) - p50(n);
            let diff99 = p99(&g) - p99(n);
            println!(
                "portcullis - nginx: p50 {diff50:+.0} µs (target <= +20)  p99 {diff99:+.0} µs"
            );
            println!(
                "throughput portcullis/nginx: {:.0}% (target >= 100%)",
                gt / nt * 100.0
            );
        } else {
            println!("portcullis - nginx: SKIPPED: nginx (install it: apt-get install -y nginx-light)");
        }
        println!(
            "RSS portcullis: {:.1} MiB (goal <= 30 MiB){}",
            rss as f64 / 1024.0,
            match nginx_rss {
                Some(kib) => format!("; nginx master + workers: {:.1} MiB", kib as f64 / 1024.0),
                None => String::new(),
            }
        );
        println!(
            "({concurrency} connections for {secs} s per throughput row, {rounds} rounds, mean; load generator, upstream, nginx and portcullis share the cores)"
        );
    });
    drop(nginx);
    drop(gateway);
}

/// An nginx master process (and its workers) terminating mTLS in front of
/// the upstream, stopped with SIGTERM when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx with a config in `dir`, a server certificate from the
    /// Portcullis CA in `state`, and client certificates verified against that
    /// CA. `Err` says why nginx is not running (not installed, did not start).
    fn start(dir: &Path, state: &Path, upstream: SocketAddr) -> Result<Nginx, String> {
        let Some(binary) = nginx_binary() else {
            eprintln!(
                "SKIPPED: nginx is not installed; install it with `apt-get install -y nginx-light`"
            );
            return Err("not installed; apt-get install -y nginx-light".into());
        };
        let ca_cert = std::fs::read_to_string(state.join("ca.crt")).unwrap();
        let ca_key = std::fs::read_to_string(state.join("ca.key")).unwrap();
        let ca = portcullis_identity::CertificateAuthority::from_pem(
            "portcullis.local",
            &ca_cert,
            &ca_key,
        )
        .unwrap();
        let (cert, key) = ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(dir.join("server.crt"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca_cert).unwrap();
        // nginx cannot report an ephemeral port it bound, so one is taken from
        // the kernel and released just before nginx binds it; a lost race is
        // retried with another port.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            std::fs::write(dir.join("nginx.conf"), config(dir, addr, upstream)).unwrap();
            let mut child = Command::new(&binary)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                // Errors go to the bench's stderr, beside its results.
                .arg("-e")
                .arg("stderr")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
            // Bounded wait for the listener: 10 s.
            for _ in 0..200 {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!("nginx exited ({status}), see its errors above");
                    break;
                }
                if std::net::TcpStream::connect(addr).is_ok() {
                    return Ok(Nginx { child, addr });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        eprintln!("SKIPPED: nginx did not start: {last_error}");
        Err(format!("did not start: {last_error}"))
    }

    /// `VmRSS` of the master and its workers, in KiB.
    fn rss_kib(&self) -> u64 {
        let master = self.child.id();
        let mut total = vm_rss_kib(master);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after `)`.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(master) {
                total += vm_rss_kib(pid);
            }
        }
        total
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `$NGINX`, else `nginx` on `PATH`, else `/usr/sbin/nginx` (Debian's place,
/// often not on a non-root `PATH`).
fn nginx_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NGINX") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/nginx");
        sbin.is_file().then_some(sbin)
    })
}

/// The nginx config: mTLS against the Portcullis CA, a keep-alive upstream.
fn config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    # nginx closes a keep-alive connection after 1000 requests by default;
    # the load generator's connections (and Portcullis') live for the run.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream backend {{
        server {upstream};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} ssl;
        ssl_certificate {d}/server.crt;
        ssl_certificate_key {d}/server.key;
        ssl_client_certificate {d}/ca.crt;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}
