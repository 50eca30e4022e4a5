//! Client ID Metadata Documents served over TLS by a test: an https server
//! on 127.0.0.1 with a certificate of the gateway's CA (made ahead, in the
//! state directory), answering good and bad documents and counting fetches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use super::authorization::CALLBACK;

/// A host name the document server's certificate also carries; a gateway
/// reaches it only through `client_metadata_addresses` (no DNS knows it).
pub const DOCS_NAME: &str = "docs.portcullis.test";

/// The gateway's state directory made ahead, with a CA whose certificates
/// the gateway trusts for its outbound TLS: the document server's comes from it.
pub fn state_with_ca(dir: &Path) -> portcullis_identity::CertificateAuthority {
    let ca = portcullis_identity::CertificateAuthority::generate("portcullis.local").unwrap();
    write_ca(dir, &ca);
    ca
}

/// Puts `ca` where a gateway started in `dir` takes its CA from.
pub fn write_ca(dir: &Path, ca: &portcullis_identity::CertificateAuthority) {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(state.join("ca.key"), ca.key_pem()).unwrap();
}

/// An https server on 127.0.0.1 serving metadata documents, counting the
/// fetches of each path.
pub struct DocServer {
    pub base: String,
    fetches: Arc<HashMap<String, AtomicUsize>>,
}

impl DocServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The URL of `path` by [`DOCS_NAME`] instead of the address.
    pub fn named_url(&self, path: &str) -> String {
        let port = self.base.rsplit(':').next().unwrap();
        format!("https://{DOCS_NAME}:{port}{path}")
    }

    pub fn fetches(&self, path: &str) -> usize {
        self.fetches[path].load(Ordering::SeqCst)
    }

    /// Serves `/client.json` (good, redirecting to [`CALLBACK`]),
    /// `/ts-client.json` (good, for the TypeScript host), `/wrong-id.json`
    /// (names another URL), `/moved.json` (a 302 to the good one),
    /// `/big.json` (8 KiB), `/secret.json` (carries a client secret) and
    /// `/named-client.json` (good, naming itself by [`DOCS_NAME`]).
    pub async fn start(
        ca: &portcullis_identity::CertificateAuthority,
        ts_callback: &str,
    ) -> DocServer {
        let (cert, key) = ca
            .issue_server(&["127.0.0.1".to_string(), DOCS_NAME.to_string()])
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("https://{addr}");
        let doc = |path: &str, name: &str, redirect: &str| {
            json!({
                "client_id": format!("{base}{path}"), "client_name": name,
                "redirect_uris": [redirect], "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"], "token_endpoint_auth_method": "none",
            })
            .to_string()
        };
        let mut wrong = serde_json::from_str::<Value>(&doc("/x", "Wrong", CALLBACK)).unwrap();
        wrong["client_id"] = json!(format!("{base}/client.json"));
        let mut secret =
            serde_json::from_str::<Value>(&doc("/secret.json", "S", CALLBACK)).unwrap();
        secret["client_secret"] = json!("s3cret");
        let mut named =
            serde_json::from_str::<Value>(&doc("/named-client.json", "Named Host", CALLBACK))
                .unwrap();
        named["client_id"] = json!(format!(
            "https://{DOCS_NAME}:{}/named-client.json",
            addr.port()
        ));
        let mut big = serde_json::from_str::<Value>(&doc("/big.json", "Big", CALLBACK)).unwrap();
        big["padding"] = json!("x".repeat(8 * 1024));
        let answers: HashMap<String, (u16, String)> = [
            (
                "/client.json",
                (200, doc("/client.json", "Metadata Host", CALLBACK)),
            ),
            (
                "/ts-client.json",
                (
                    200,
                    doc("/ts-client.json", "TypeScript SDK host (cimd)", ts_callback),
                ),
            ),
            ("/wrong-id.json", (200, wrong.to_string())),
            ("/named-client.json", (200, named.to_string())),
            ("/moved.json", (302, format!("{base}/client.json"))),
            ("/big.json", (200, big.to_string())),
            ("/secret.json", (200, secret.to_string())),
        ]
        .into_iter()
        .map(|(p, a)| (p.to_string(), a))
        .collect();
        let fetches: Arc<HashMap<String, AtomicUsize>> = Arc::new(
            answers
                .keys()
                .map(|p| (p.clone(), AtomicUsize::new(0)))
                .collect(),
        );
        let answers = Arc::new(answers);
        let counted = fetches.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, answers, counted) =
                    (acceptor.clone(), answers.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let path = req.uri().path().to_string();
                        if let Some(n) = counted.get(&path) {
                            n.fetch_add(1, Ordering::SeqCst);
                        }
                        let (status, body) =
                            answers.get(&path).cloned().unwrap_or((404, String::new()));
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        if status == 302 {
                            response
                                .headers_mut()
                                .insert("location", body.parse().unwrap());
                        } else {
                            *response.body_mut() = Full::new(Bytes::from(body));
                            response
                                .headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            response
                                .headers_mut()
                                .insert("cache-control", "max-age=300".parse().unwrap());
                        }
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        DocServer { base, fetches }
    }
}
