//! Client ID Metadata Documents (the MCP authorization specification,
//! revision 2025-11-25; draft-ietf-oauth-client-id-metadata-document): a
//! client with no registration uses an https URL as its `client_id`, and the
//! gateway fetches the JSON document at that URL for the client's name and
//! redirect URIs.
//!
//! The gateway fetches a URL an unknown caller names, so every fetch is
//! fenced (draft §6, server-side request forgery):
//! - only hosts of `[identity.authorization] client_metadata_hosts`, https,
//!   with a path and no fragment, credentials or dot segments;
//! - no redirect is followed (a 3xx is a refusal), at most 5 KiB are read,
//!   the whole fetch has 5 s;
//! - the host's addresses must be public (not loopback, private, link-local,
//!   …), checked in the resolver the connection uses, so a name cannot be
//!   re-pointed between the check and the connection; an address literal is
//!   checked the same way, and so are the addresses configured for a host
//!   (`client_metadata_addresses`, used instead of DNS).
//!   `client_metadata_private_addresses` lifts this for deployments whose
//!   clients live on the internal network.
//!
//! The document must name itself (`client_id` equal to the URL, byte for
//! byte), carry `client_name` and `redirect_uris` (each acceptable as for
//! dynamic registration), and ask only for what a public client of the
//! code flow gets. Good documents are cached for their `Cache-Control:
//! max-age` (5 minutes by default, at most an hour; `no-store` not at all);
//! refusals for 30 s, so a broken URL cannot make the gateway hammer it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use portcullis_core::ErrorCode;
use portcullis_store::OAuthClientRow;
use serde::Deserialize;

use super::register::redirect_uri_ok;
use crate::respond::Denial;

/// Most of a document read (the draft suggests 5 KB).
const MAX_DOCUMENT: usize = 5 * 1024;
/// Longest `client_id` URL accepted.
const MAX_URL: usize = 512;
/// The whole fetch: connect, TLS, answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a document is kept without `max-age`.
const DEFAULT_TTL: i64 = 300;
/// Longest a document is kept, whatever `max-age` says.
const MAX_TTL: i64 = 3600;
/// How long a refusal is remembered.
const REFUSAL_TTL: i64 = 30;
/// Documents (and refusals) remembered at most.
const MAX_CACHED: usize = 1000;
/// Redirect URIs of one document at most.
const MAX_REDIRECT_URIS: usize = 10;
/// Longest client name shown.
const MAX_NAME_CHARS: usize = 100;

/// What the gateway reads from a document (the rest is ignored).
#[derive(Debug, Deserialize)]
struct Document {
    client_id: Option<String>,
    client_name: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    client_secret: Option<serde_json::Value>,
}

/// A cached answer for one URL.
#[derive(Debug, Clone)]
struct Cached {
    answer: Result<OAuthClientRow, Denial>,
    until: i64,
}

type FetchClient = Client<HttpsConnector<HttpConnector<PublicResolver>>, Empty<Bytes>>;

/// Fetches, checks and caches metadata documents.
pub(crate) struct ClientMetadata {
    hosts: Vec<String>,
    private_ok: bool,
    client: FetchClient,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for ClientMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMetadata")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// Whether `ip` is a public unicast address (not loopback, private, shared,
/// link-local, unique-local, multicast, unspecified or documentation).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Resolves names for the fetch client, keeping only addresses a document
/// may come from: the check sits in the connection's own resolution.
/// Configured addresses stand in for DNS and pass the same check.
#[derive(Debug, Clone)]
struct PublicResolver {
    private_ok: bool,
    pinned: Arc<BTreeMap<String, Vec<IpAddr>>>,
}

impl PublicResolver {
    /// The addresses `name` may be fetched from: its configured ones or
    /// DNS's, then only the public ones (unless private ones are allowed).
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<SocketAddr>> {
        let name = name.to_ascii_lowercase();
        let found: Vec<SocketAddr> = match self.pinned.get(&name) {
            Some(pinned) => pinned.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
            None => tokio::net::lookup_host((name.as_str(), 0)).await?.collect(),
        };
        let addrs: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| self.private_ok || is_public(a.ip()))
            .collect();
        if addrs.is_empty() {
            return Err(std::io::Error::other(
                "the host resolves to no public address",
            ));
        }
        Ok(addrs)
    }
}

impl tower::Service<Name> for PublicResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { Ok(resolver.resolve(name.as_str()).await?.into_iter()) })
    }
}

fn refused(message: impl Into<String>) -> Denial {
    Denial::new(ErrorCode::InvalidClient, message)
}

/// Whether `client_id` is meant as a metadata document URL (registered
/// ids are base64url and never contain `:`).
pub(crate) fn is_url_client_id(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// `max-age` of a `Cache-Control` value, clamped; 0 for `no-store`/`no-cache`.
fn ttl_of(cache_control: Option<&str>) -> i64 {
    let Some(value) = cache_control else {
        return DEFAULT_TTL;
    };
    let mut ttl = DEFAULT_TTL;
    for directive in value.split(',').map(str::trim) {
        let directive = directive.to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return 0;
        }
        if let Some(age) = directive.strip_prefix("max-age=") {
            ttl = age.trim_matches('"').parse::<i64>().unwrap_or(DEFAULT_TTL);
        }
    }
    ttl.clamp(0, MAX_TTL)
}

impl ClientMetadata {
    /// The fetcher for `hosts` (lowercase), some with `pinned` addresses,
    /// trusting `tls`.
    pub(crate) fn new(
        hosts: Vec<String>,
        pinned: BTreeMap<String, Vec<IpAddr>>,
        private_ok: bool,
        tls: rustls::ClientConfig,
    ) -> Self {
        let mut http = HttpConnector::new_with_resolver(PublicResolver {
            private_ok,
            pinned: Arc::new(pinned),
        });
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        ClientMetadata {
            hosts,
            private_ok,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
            cache: Mutex::default(),
        }
    }

    /// The client `client_id` names: from the cache or a fetch.
    pub(crate) async fn client(&self, client_id: &str, now: i64) -> Result<OAuthClientRow, Denial> {
        if let Some(hit) = super::lock(&self.cache)
            .get(client_id)
            .filter(|c| c.until > now)
        {
            return hit.answer.clone();
        }
        let (answer, ttl) = match self.fetch(client_id, now).await {
            Ok((row, ttl)) => (Ok(row), ttl),
            Err(denial) => (Err(denial), REFUSAL_TTL),
        };
        if ttl > 0 {
            let mut cache = super::lock(&self.cache);
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, c| c.until > now);
            }
            if cache.len() < MAX_CACHED {
                cache.insert(
                    client_id.to_string(),
                    Cached {
                        answer: answer.clone(),
                        until: now + ttl,
                    },
                );
            }
        }
        answer
    }

    /// Checks the URL against the fence; the URI to fetch.
    fn checked_url(&self, client_id: &str) -> Result<http::Uri, Denial> {
        let shape = || {
            refused(
                "a URL `client_id` must be an https URL with a path and no fragment, credentials or dot segments, at most 512 bytes (a Client ID Metadata Document)",
            )
        };
        if client_id.len() > MAX_URL
            || client_id.contains('#')
            || client_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(shape());
        }
        let uri: http::Uri = client_id.parse().map_err(|_| shape())?;
        let authority = uri.authority().ok_or_else(shape)?;
        if uri.scheme_str() != Some("https") || authority.as_str().contains('@') {
            return Err(shape());
        }
        let path = uri.path();
        if path.is_empty() || path == "/" || path.split('/').any(|s| s == "." || s == "..") {
            return Err(shape());
        }
        let host = authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        if !self.hosts.contains(&host) {
            return Err(refused(format!(
                "`client_id` host `{host}` is not one this gateway accepts metadata documents from (`client_metadata_hosts`)"
            )));
        }
        // An address literal skips the resolver: the same rule here.
        if let Ok(ip) = host.parse::<IpAddr>()
            && !self.private_ok
            && !is_public(ip)
        {
            return Err(refused(
                "`client_id` names a non-public address (`client_metadata_private_addresses` is off)",
            ));
        }
        Ok(uri)
    }

    /// Fetches and checks the document; the client and how long to keep it.
    async fn fetch(&self, client_id: &str, now: i64) -> Result<(OAuthClientRow, i64), Denial> {
        let uri = self.checked_url(client_id)?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|_| refused("the `client_id` URL cannot be requested"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                tracing::info!(client_id, error = %e, "client metadata document: fetch failed");
                refused("the client's metadata document cannot be fetched")
            })?;
            let status = response.status();
            if status != http::StatusCode::OK {
                return Err(refused(format!(
                    "the client's metadata document answered {} (redirects are not followed)",
                    status.as_u16()
                )));
            }
            let ttl = ttl_of(
                response
                    .headers()
                    .get(http::header::CACHE_CONTROL)
                    .and_then(|v| v.to_str().ok()),
            );
            let body = Limited::new(response.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|_| {
                    refused(format!(
                        "the client's metadata document is larger than {MAX_DOCUMENT} bytes or was cut short"
                    ))
                })?
                .to_bytes();
            Ok((body, ttl))
        };
        let (body, ttl) = tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .map_err(|_| refused("the client's metadata document did not arrive within 5 s"))??;
        let row = check_document(client_id, &body, now)?;
        Ok((row, ttl))
    }
}

/// Checks a fetched document for `client_id`.
fn check_document(client_id: &str, body: &[u8], now: i64) -> Result<OAuthClientRow, Denial> {
    let document: Document = serde_json::from_slice(body).map_err(|_| {
        refused("the client's metadata document is not a JSON object of client metadata")
    })?;
    if document.client_id.as_deref() != Some(client_id) {
        return Err(refused(
            "the metadata document's `client_id` is not the URL it was fetched from",
        ));
    }
    if document.client_secret.is_some() {
        return Err(refused(
            "a metadata document must not carry a `client_secret`",
        ));
    }
    if document
        .token_endpoint_auth_method
        .as_deref()
        .is_some_and(|m| m != "none")
    {
        return Err(refused(
            "only public clients use metadata documents here: `token_endpoint_auth_method` must be `none`",
        ));
    }
    if document.grant_types.as_ref().is_some_and(|g| {
        g.iter()
            .any(|g| g != "authorization_code" && g != "refresh_token")
    }) || document
        .response_types
        .as_ref()
        .is_some_and(|r| r.iter().any(|r| r != "code"))
    {
        return Err(refused(
            "the metadata document asks for grant or response types other than the code flow's",
        ));
    }
    if document.redirect_uris.is_empty()
        || document.redirect_uris.len() > MAX_REDIRECT_URIS
        || !document.redirect_uris.iter().all(|u| redirect_uri_ok(u))
    {
        return Err(refused(format!(
            "the metadata document must list 1 to {MAX_REDIRECT_URIS} `redirect_uris`, each https or loopback http without fragment or credentials"
        )));
    }
    let name: String = document
        .client_name
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    if name.trim().is_empty() {
        return Err(refused("the metadata document must have a `client_name`"));
    }
    Ok(OAuthClientRow {
        client_id: client_id.to_string(),
        client_name: name.trim().to_string(),
        redirect_uris: document.redirect_uris,
        created_at: now,
        registered_by: "client metadata document".into(),
        revoked_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://apps.example.com/mcp/client.json";

    fn check(doc: serde_json::Value) -> Result<OAuthClientRow, ErrorCode> {
        check_document(URL, doc.to_string().as_bytes(), 1).map_err(|d| d.code)
    }

    #[test]
    fn documents() {
        let good = serde_json::json!({
            "client_id": URL, "client_name": "Host\u{7}",
            "redirect_uris": ["http://127.0.0.1:3000/callback"],
            "grant_types": ["authorization_code"], "response_types": ["code"],
            "token_endpoint_auth_method": "none", "logo_uri": "ignored",
        });
        let row = check(good.clone()).unwrap();
        assert_eq!(
            (row.client_name.as_str(), row.redirect_uris.len()),
            ("Host", 1)
        );
        let with = |key: &str, value: serde_json::Value| {
            let mut doc = good.clone();
            doc[key] = value;
            doc
        };
        for bad in [
            with("client_id", "https://apps.example.com/other.json".into()),
            with("client_id", serde_json::Value::Null),
            with("client_name", "".into()),
            with("redirect_uris", serde_json::json!([])),
            with(
                "redirect_uris",
                serde_json::json!(["http://evil.example/cb"]),
            ),
            with("token_endpoint_auth_method", "private_key_jwt".into()),
            with("grant_types", serde_json::json!(["client_credentials"])),
            with("client_secret", "s".into()),
            serde_json::json!([1, 2]),
        ] {
            assert_eq!(
                check(bad.clone()).unwrap_err(),
                ErrorCode::InvalidClient,
                "{bad}"
            );
        }
    }

    #[test]
    fn urls_and_addresses() {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let fence = ClientMetadata::new(
            vec!["apps.example.com".into(), "127.0.0.1".into()],
            BTreeMap::new(),
            false,
            tls,
        );
        assert!(fence.checked_url(URL).is_ok());
        assert!(fence.checked_url("https://APPS.example.com/c.json").is_ok());
        for bad in [
            "http://apps.example.com/c.json",
            "https://apps.example.com",
            "https://apps.example.com/",
            "https://apps.example.com/a/../c.json",
            "https://apps.example.com/c.json#x",
            "https://u:p@apps.example.com/c.json",
            "https://other.example/c.json",
            "https://127.0.0.1/c.json",
        ] {
            assert!(fence.checked_url(bad).is_err(), "{bad}");
        }
        for (ip, public) in [
            ("8.8.8.8", true),
            ("2606:4700::1", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("::1", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("::ffff:10.0.0.1", false),
        ] {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
        assert_eq!(ttl_of(None), DEFAULT_TTL);
        assert_eq!(ttl_of(Some("public, max-age=60")), 60);
        assert_eq!(ttl_of(Some("max-age=999999")), MAX_TTL);
        assert_eq!(ttl_of(Some("no-store")), 0);
        assert!(is_url_client_id(URL) && !is_url_client_id("abc_DEF-123"));
    }

    /// The resolver the fetch connects through, on names whose addresses
    /// are configured (no DNS involved): a name is fetched from its public
    /// addresses only, and one with none is not fetched at all, unless
    /// private addresses are allowed.
    #[tokio::test]
    async fn names_resolve_to_their_public_addresses_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let pinned: BTreeMap<String, Vec<IpAddr>> = [
            ("public.example", vec![ip("8.8.8.8"), ip("2606:4700::1")]),
            ("mixed.example", vec![ip("10.0.0.5"), ip("1.1.1.1")]),
            (
                "internal.example",
                vec![ip("10.0.0.5"), ip("169.254.169.254")],
            ),
            ("loopback.example", vec![ip("127.0.0.1"), ip("::1")]),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
        let resolver = |private_ok| PublicResolver {
            private_ok,
            pinned: Arc::new(pinned.clone()),
        };
        let ips = |r: std::io::Result<Vec<SocketAddr>>| -> Option<Vec<IpAddr>> {
            r.ok().map(|a| a.iter().map(SocketAddr::ip).collect())
        };
        let fenced = resolver(false);
        assert_eq!(
            ips(fenced.resolve("Public.Example").await),
            Some(vec![ip("8.8.8.8"), ip("2606:4700::1")])
        );
        assert_eq!(
            ips(fenced.resolve("mixed.example").await),
            Some(vec![ip("1.1.1.1")])
        );
        for name in ["internal.example", "loopback.example", "localhost"] {
            let refused = fenced.resolve(name).await.unwrap_err();
            assert!(refused.to_string().contains("no public address"), "{name}");
        }
        let open = resolver(true);
        assert_eq!(
            ips(open.resolve("internal.example").await),
            Some(vec![ip("10.0.0.5"), ip("169.254.169.254")])
        );
        assert!(
            ips(open.resolve("localhost").await)
                .unwrap()
                .iter()
                .all(|a| a.is_loopback())
        );
    }
}
