//! What the benchmarks that drive a real `portcullis serve` share: starting
//! it on ephemeral ports, creating an agent, and the agent's TLS settings.
#![allow(dead_code)]

pub mod load;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The `portcullis` binary cargo built beside the bench.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// The binary the benches run: `$PORTCULLIS_BIN` when set (to compare an
/// older build with this one in the same sitting), else [`BIN`]. Cargo runs
/// a bench in its package's directory, so a relative path that is not
/// there is taken from the directory cargo was started in (`$PWD`).
pub fn bin() -> std::ffi::OsString {
    let Some(given) = std::env::var_os("PORTCULLIS_BIN") else {
        return BIN.into();
    };
    let path = Path::new(&given);
    if path.is_relative()
        && !path.exists()
        && let Some(from) = std::env::var_os("PWD").map(|d| Path::new(&d).join(path))
        && from.exists()
    {
        return from.into_os_string();
    }
    given
}

/// A running `portcullis serve`, stopped with SIGTERM when dropped.
pub struct Serve {
    pub child: Child,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts `portcullis serve --config CONFIG --state-dir STATE` with `env`
/// and waits for the line naming its addresses.
pub fn serve(config: &Path, state: &Path, env: &[(&str, &str)]) -> Serve {
    let mut command = Command::new(bin());
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .env("PORTCULLIS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn portcullis");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let field = |n: usize| -> SocketAddr {
        line.split_whitespace()
            .nth(n)
            .expect("portcullis did not start")
            .trim_start_matches("https://")
            .parse()
            .unwrap()
    };
    Serve {
        gateway: field(2),
        admin: field(4),
        child,
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// `portcullis agent create NAME --role ROLE --out CREDS`.
pub fn create_agent(state: &Path, creds: &Path, name: &str, role: &str) {
    let out = Command::new(bin())
        .args(["agent", "create", name, "--role", role, "--out"])
        .arg(creds)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `reqwest` client trusting the CA in `state`, presenting the client
/// certificate `creds` names (directory, agent) when given; one idle
/// connection per host, so requests reuse one kept-alive connection.
pub fn client(state: &Path, creds: Option<(&Path, &str)>) -> reqwest::Client {
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(state));
    let tls = match creds {
        Some((dir, name)) => {
            let certs = CertificateDer::pem_file_iter(dir.join(format!("{name}.crt")))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

/// `VmRSS` of process `pid` in KiB (0 when it cannot be read).
pub fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The gateway's CA as trust roots.
pub fn roots(state: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(state.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// TLS settings of agent `name`: the gateway's CA and its client certificate.
pub fn agent_tls(state: &Path, creds: &Path, name: &str) -> rustls::ClientConfig {
    let certs = CertificateDer::pem_file_iter(creds.join(format!("{name}.crt")))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(creds.join(format!("{name}.key"))).unwrap();
    rustls::ClientConfig::builder()
        .with_root_certificates(roots(state))
        .with_client_auth_cert(certs, key)
        .unwrap()
}

/// A minimal reverse proxy on its own thread and two-worker runtime (like the
/// gateway's): hyper server in, the pooled hyper-util client out, nothing else.
pub fn start_bare_proxy(upstream: SocketAddr) -> SocketAddr {
    use std::convert::Infallible;

    use hyper::Request;
    use hyper::body::Incoming;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Client<HttpConnector, Incoming> =
                Client::builder(TokioExecutor::new()).build(connector);
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let client = client.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let client = client.clone();
                        async move {
                            let (mut parts, body) = req.into_parts();
                            parts.uri = format!("http://{upstream}{}", parts.uri.path())
                                .parse()
                                .unwrap();
                            let response = client
                                .request(Request::from_parts(parts, body))
                                .await
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}
