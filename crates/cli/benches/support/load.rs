//! The HTTP load generator the overhead benchmarks share: keep-alive
//! connections (plain or mTLS), interleaved latency rounds, fixed-time
//! throughput, the 1 KiB in-process upstream, and a `portcullis serve` with
//! ~100 Cedar policies in front of it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Size of every request and response body.
pub const BODY_SIZE: usize = 1024;

/// A number from the environment, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `q` quantile of sorted samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Where requests go: an address, TLS settings when the path is TLS, and the path.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub path: &'static str,
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Target {
    pub async fn connect(&self) -> Sender {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some(tls) => {
                let tls = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
                    .unwrap();
                handshake(TokioIo::new(tls)).await
            }
        }
    }

    pub fn request(&self, body: &Bytes) -> Request<Full<Bytes>> {
        Request::post(self.path)
            .header("host", "localhost")
            .header("content-type", "application/octet-stream")
            .body(Full::new(body.clone()))
            .unwrap()
    }
}

pub async fn handshake<T>(io: TokioIo<T>) -> Sender
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// Connections the server closed under a bench (each reopened once, the
/// request sent again): a bench that counts them prints them.
pub static RECONNECTS: AtomicU64 = AtomicU64::new(0);

/// Sends one request and reads its whole answer, which must be a 200 of
/// [`BODY_SIZE`] bytes. A connection the server closed is reopened and the
/// request sent again, once (counted in [`RECONNECTS`]).
pub async fn send(sender: &mut Sender, target: &Target, body: &Bytes) {
    // Bounded: a request that gets no answer fails the bench, loudly.
    tokio::time::timeout(Duration::from_secs(30), send_once(sender, target, body))
        .await
        .unwrap_or_else(|_| panic!("no answer from {} within 30 s", target.addr));
}

async fn send_once(sender: &mut Sender, target: &Target, body: &Bytes) {
    let response = match sender.send_request(target.request(body)).await {
        Ok(response) => response,
        Err(e) if e.is_canceled() || e.is_closed() => {
            RECONNECTS.fetch_add(1, Ordering::Relaxed);
            *sender = target.connect().await;
            sender.send_request(target.request(body)).await.unwrap()
        }
        Err(e) => panic!("benchmark request failed: {e}"),
    };
    assert_eq!(response.status(), 200, "benchmark request failed");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes.len(), BODY_SIZE);
}

/// Per target, `n` sequential request latencies on one connection each,
/// sorted. The targets take turns in rounds of 250 so that the machine's
/// drift (other work, frequency, idle states) weighs on every row alike.
pub async fn latencies(targets: &[&Target], n: usize) -> Vec<Vec<Duration>> {
    let body = Bytes::from(vec![b'a'; BODY_SIZE]);
    let mut senders = Vec::new();
    for target in targets {
        senders.push(target.connect().await);
    }
    let mut samples = vec![Vec::with_capacity(n); targets.len()];
    while samples[0].len() < n {
        for ((target, sender), samples) in targets.iter().zip(&mut senders).zip(&mut samples) {
            for _ in 0..250.min(n - samples.len()) {
                let t = Instant::now();
                send(sender, target, &body).await;
                samples.push(t.elapsed());
            }
        }
    }
    for s in &mut samples {
        s.sort();
    }
    samples
}

pub async fn throughput(target: &Target, concurrency: usize, duration: Duration) -> f64 {
    let body = Bytes::from(vec![b'a'; BODY_SIZE]);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let target = Arc::new(target.clone());
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        senders.push(target.connect().await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (done, stop, target, body) =
                (done.clone(), stop.clone(), target.clone(), body.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    send(&mut sender, &target, &body).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// A 1 KiB-response upstream on its own thread and single-threaded runtime,
/// speaking plain HTTP, or TLS when `tls` is given.
pub fn start_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    start_upstream_with(tls, || {})
}

/// [`start_upstream`], running `on_thread` first on the upstream's thread
/// (the allocation bench marks the thread there).
pub fn start_upstream_with(tls: Option<Arc<rustls::ServerConfig>>, on_thread: fn()) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        on_thread();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let reply = Bytes::from(vec![b'z'; BODY_SIZE]);
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let reply = reply.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let reply = reply.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(reply)))
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(tls) => {
                            let Ok(tls) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await
                            else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// A `portcullis serve` process with a route to the upstream and ~100 policies.
pub struct Gateway {
    pub server: super::Serve,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The state directory (`ca.crt`, `ca.key`).
    pub state: PathBuf,
    /// The agent's TLS settings (CA roots and the `bench-bot` client certificate).
    pub tls: rustls::ClientConfig,
    pub admin_tls: rustls::ClientConfig,
}

impl Gateway {
    /// `extra_config` is TOML appended to the config (before `BENCH_EXTRA_CONFIG`).
    pub fn start(dir: &Path, upstream: SocketAddr, extra_config: &str) -> Gateway {
        Self::start_with(dir, upstream, extra_config, &[], None)
    }

    /// [`Gateway::start`] with `env` for the process (a cluster replica's
    /// `PORTCULLIS_STORE_URL`). `agent`: the credentials directory of a
    /// `bench-bot` made on another replica of the same cluster (same CA),
    /// used instead of making one.
    pub fn start_with(
        dir: &Path,
        upstream: SocketAddr,
        extra_config: &str,
        env: &[(&str, &str)],
        agent: Option<&Path>,
    ) -> Gateway {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(
            policies.join("schema.cedarschema"),
            portcullis_policy::DEFAULT_SCHEMA,
        )
        .unwrap();
        std::fs::write(
            policies.join("quickstart.cedar"),
            portcullis_policy::DEFAULT_POLICIES,
        )
        .unwrap();
        // 97 more policies that do not match the benchmark agent, as a real
        // deployment would have: Cedar still has to consider them.
        let mut extra = String::new();
        for i in 0..97 {
            extra.push_str(&format!(
                "@id(\"team-{i}\")\npermit(principal in Role::\"team-{i}\", action in Action::\"{}\", resource == Route::\"svc-{i}\")\n  when {{ context.time.hour >= 6 && context.source_ip.isInRange(ip(\"10.{i}.0.0/16\")) }};\n",
                if i % 2 == 0 { "read" } else { "write" }
            ));
        }
        std::fs::write(policies.join("teams.cedar"), extra).unwrap();
        let config = dir.join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[policy]\ndir = \"{}\"\n\
                 [[routes]]\nname = \"bench\"\npath_prefix = \"/bench\"\nupstream = \"http://{upstream}\"\nclassification = \"public\"\n{extra_config}\n{}\n",
                policies.display(),
                // More TOML (e.g. `[telemetry]`, `[[audit.export]]`) to measure
                // what a feature costs the request path.
                std::env::var("BENCH_EXTRA_CONFIG").unwrap_or_default()
            ),
        )
        .unwrap();
        let state = dir.join("state");
        let server = super::serve(&config, &state, env);
        let creds = match agent {
            Some(creds) => creds.to_path_buf(),
            None => {
                let creds = dir.join("creds");
                super::create_agent(&state, &creds, "bench-bot", "writer");
                creds
            }
        };
        let admin_tls = rustls::ClientConfig::builder()
            .with_root_certificates(super::roots(&state))
            .with_no_client_auth();
        Gateway {
            addr: server.gateway,
            admin: server.admin,
            tls: super::agent_tls(&state, &creds, "bench-bot"),
            admin_tls,
            server,
            state,
        }
    }
}
