//! The red team's own HTTP/1.1 client: bytes written to a TLS socket exactly
//! as given, answers parsed leniently. A normal client (reqwest, the `url`
//! crate) would resolve `..`, re-encode `%2e` and refuse to send two
//! `Content-Length`s: it would attack nothing. Blocking I/O with short
//! timeouts; the scorecard runs on a blocking thread.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How long to wait for more bytes before taking what arrived as the answer.
const QUIET: Duration = Duration::from_millis(1500);
/// The most bytes of answers kept from one connection.
const MAX_READ: usize = 1 << 20;

/// Which credential the TLS handshake presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// The agent's client certificate.
    Agent,
    /// None (token requests, and the anonymous baseline).
    Anonymous,
}

/// A gateway reachable over TLS, with the agent's certificate and without.
pub struct Wire {
    /// `host:port` to connect to.
    addr: String,
    /// The name the certificate is checked for, and the `Host` header.
    pub host: String,
    /// `https://host:port`, for DPoP `htu` claims.
    pub base: String,
    server_name: ServerName<'static>,
    agent: Arc<rustls::ClientConfig>,
    anonymous: Arc<rustls::ClientConfig>,
}

/// One HTTP response parsed from the bytes a connection returned.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body (dechunked), as text.
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The gateway's stable error code, from `{"error":{"code":…}}` or a
    /// JSON-RPC refusal's `error.data.code`, or an OAuth `error`.
    pub fn code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        v["error"]["code"]
            .as_str()
            .or_else(|| v["error"]["data"]["code"].as_str())
            .or_else(|| v["code"].as_str())
            .or_else(|| v["error"].as_str())
            .map(str::to_string)
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Wire {
    /// Connects nothing yet: reads the agent's certificate and key and the CA
    /// from `creds`, and takes host and port from `gateway` (`https://…`).
    pub fn new(gateway: &str, creds: &Path, agent: &str) -> Result<Self> {
        let rest = gateway
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("the gateway URL must start with https://"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>().context("bad port in the gateway URL")?,
            ),
            _ => (authority.to_string(), 443),
        };
        let ca = creds.join("ca.crt");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca)
            .with_context(|| format!("cannot read `{}`", ca.display()))?
        {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = || -> Result<_> {
            Ok(
                rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots.clone()),
            )
        };
        let cert_path = creds.join(format!("{agent}.crt"));
        let key_path = creds.join(format!("{agent}.key"));
        let certs = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("cannot read `{}`", cert_path.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("cannot read `{}`", key_path.display()))?;
        let agent_tls = builder()?.with_client_auth_cert(certs, key)?;
        let anonymous = builder()?.with_no_client_auth();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| anyhow!("`{host}` is not a valid server name"))?;
        let shown = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Wire {
            addr: shown.clone(),
            base: format!("https://{shown}"),
            host: shown,
            server_name,
            agent: Arc::new(agent_tls),
            anonymous: Arc::new(anonymous),
        })
    }

    /// Writes `bytes` on a fresh TLS connection and parses every response
    /// that comes back before the server closes or goes quiet.
    pub fn exchange(&self, tls: Tls, bytes: &[u8]) -> Result<Vec<Answer>> {
        let config = match tls {
            Tls::Agent => self.agent.clone(),
            Tls::Anonymous => self.anonymous.clone(),
        };
        let addr = self
            .addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow!("cannot resolve `{}`", self.addr))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("cannot reach the gateway at {}", self.addr))?;
        tcp.set_read_timeout(Some(QUIET))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        let conn = rustls::ClientConnection::new(config, self.server_name.clone())?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // A server that refuses mid-write (it answered early and closed) is
        // an answer, not an error: read what it said.
        let _ = stream.write_all(bytes).and_then(|()| stream.flush());
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > MAX_READ {
                        break;
                    }
                }
            }
        }
        Ok(parse_answers(&out))
    }

    /// One request with `Connection: close`: `method target`, the given extra
    /// header lines, and `body` with its `Content-Length`.
    pub fn request(
        &self,
        tls: Tls,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Answer> {
        let bytes = self.format(method, target, headers, body);
        let answers = self.exchange(tls, bytes.as_bytes())?;
        answers
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the gateway closed without answering `{method} {target}`"))
    }

    /// The bytes of one well-framed request.
    pub fn format(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> String {
        let mut text = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            text.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        text.push_str("Connection: close\r\n\r\n");
        text.push_str(body);
        text
    }
}

/// Splits what a connection returned into responses: status line, headers,
/// then a body framed by `Content-Length`, chunked, or (without either) the
/// rest of the bytes.
pub fn parse_answers(bytes: &[u8]) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut rest = bytes;
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok());
        let Some(status) = status else { break };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut after = &rest[end + 4..];
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let Some(line_end) = find(after, b"\r\n") else {
                    after = &[];
                    break;
                };
                let size_text = String::from_utf8_lossy(&after[..line_end]);
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .unwrap_or(0);
                after = &after[line_end + 2..];
                if size == 0 {
                    after = after.get(2..).unwrap_or(&[]);
                    break;
                }
                let take = size.min(after.len());
                body.extend_from_slice(&after[..take]);
                after = after.get(take + 2..).unwrap_or(&[]);
            }
            body
        } else if let Some(length) = length {
            let take = length.min(after.len());
            let body = after[..take].to_vec();
            after = &after[take..];
            body
        } else if status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else {
            let body = after.to_vec();
            after = &[];
            body
        };
        answers.push(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        rest = after;
    }
    answers
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &str, expect: &[(u16, &str)]) {
        let got: Vec<(u16, String)> = parse_answers(bytes.as_bytes())
            .into_iter()
            .map(|a| (a.status, a.body))
            .collect();
        let expect: Vec<(u16, String)> = expect.iter().map(|(s, b)| (*s, b.to_string())).collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn responses_are_split_by_their_framing() {
        check(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
            &[(200, "hi")],
        );
        check(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n",
            &[(200, "a"), (403, "")],
        );
        check(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\nHTTP/1.1 400 Bad Request\r\n\r\nx",
            &[(200, "abc"), (400, "x")],
        );
        check("garbage", &[]);
    }
}
