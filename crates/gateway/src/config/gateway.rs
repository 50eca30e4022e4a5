//! `[gateway]`: the data-plane listener, its connection caps, the extra
//! names of its TLS certificate and the client headers it forwards or drops.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

/// Default data-plane address.
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8443";

/// Default cap on concurrent connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// `[gateway]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Address of the data-plane TLS listener (default `127.0.0.1:8443`).
    pub listen: Option<SocketAddr>,
    /// Maximum concurrent connections (default 10000).
    pub max_connections: Option<usize>,
    /// Maximum concurrent connections without a verified client certificate
    /// (before the handshake, token agents, anonymous clients; default half of
    /// `max_connections`). When full, the oldest idle one is closed.
    pub max_unverified_connections: Option<usize>,
    /// Maximum concurrent connections without a verified client certificate
    /// from one source address (default 256).
    pub max_unverified_per_source: Option<usize>,
    /// Extra DNS names or IP addresses for the TLS server certificate of both
    /// listeners (loopback names and the listen addresses are always included),
    /// so agents that reach the gateway by name can verify it.
    #[serde(default, deserialize_with = "server_names")]
    pub server_names: Vec<String>,
    /// What upstreams get in `X-Forwarded-Client-Cert`: `"sanitize"` (the
    /// default: nothing; the client's is always dropped) or `"set"` (the
    /// verified client certificate's hash and SPIFFE ID).
    #[serde(default)]
    pub forward_client_cert: RawForwardClientCert,
    /// More client request headers to drop before anything reads them, on top
    /// of the built-in list (`docs/configuration.md`), e.g. `["x-debug"]`.
    #[serde(default, deserialize_with = "header_names")]
    pub strip_request_headers: Vec<http::HeaderName>,
}

/// `[gateway] forward_client_cert`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawForwardClientCert {
    /// No `X-Forwarded-Client-Cert` upstream.
    #[default]
    Sanitize,
    /// The verified certificate's `Hash=…;URI=…`.
    Set,
}

fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<http::HeaderName>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|name| {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| serde::de::Error::custom(format!("invalid header name `{name}`")))
        })
        .collect()
}

fn server_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for name in &names {
        let is_ip = name.parse::<std::net::IpAddr>().is_ok();
        let is_dns = !name.is_empty()
            && name.len() <= 253
            && !name.starts_with(['.', '-'])
            && !name.ends_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
        if !is_ip && !is_dns {
            return Err(serde::de::Error::custom(format!(
                "invalid server name `{name}`: use a lowercase DNS name or an IP address"
            )));
        }
    }
    Ok(names)
}

/// Checks the connection caps: each non-zero, and the unverified cap within
/// the total.
pub(super) fn check(gateway: &RawGateway) -> Result<(), String> {
    for (key, value) in [
        ("gateway.max_connections", gateway.max_connections),
        (
            "gateway.max_unverified_connections",
            gateway.max_unverified_connections,
        ),
        (
            "gateway.max_unverified_per_source",
            gateway.max_unverified_per_source,
        ),
    ] {
        if value == Some(0) {
            return Err(format!("key `{key}`: must be greater than 0"));
        }
    }
    if let (Some(unverified), max) = (
        gateway.max_unverified_connections,
        gateway.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
    ) && unverified > max
    {
        return Err(format!(
            "key `gateway.max_unverified_connections`: {unverified} is more than `gateway.max_connections` ({max})"
        ));
    }
    Ok(())
}

/// What upstreams get in `X-Forwarded-Client-Cert`.
pub(super) fn forward_client_cert(
    raw: RawForwardClientCert,
) -> crate::pipeline::forward::ForwardClientCert {
    match raw {
        RawForwardClientCert::Sanitize => crate::pipeline::forward::ForwardClientCert::Sanitize,
        RawForwardClientCert::Set => crate::pipeline::forward::ForwardClientCert::Set,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::config::tests::check;

    #[test]
    fn invalid_gateway_keys() {
        check(
            "[gateway]\nmax_unverified_per_source = 0\n",
            "key `gateway.max_unverified_per_source`: must be greater than 0",
        );
        check(
            "[gateway]\nmax_connections = 10\nmax_unverified_connections = 11\n",
            "is more than `gateway.max_connections` (10)",
        );
        check(
            "[gateway]\nserver_names = [\"gw.example.com\", \"Bad Name\"]\n",
            "invalid server name `Bad Name`",
        );
        check(
            "[gateway]\nserver_names = [\"gw.example.com\", \"10.0.0.5\"]\n",
            "ok ",
        );
        check(
            "[gateway]\nforward_client_cert = \"set\"\nstrip_request_headers = [\"X-Debug\"]\n",
            "ok ",
        );
        check(
            "[gateway]\nforward_client_cert = \"append\"\n",
            "unknown variant `append`",
        );
        check(
            "[gateway]\nstrip_request_headers = [\"bad name\"]\n",
            "invalid header name `bad name`",
        );
        let parsed = Config::parse(
            "[gateway]\nforward_client_cert = \"set\"\nstrip_request_headers = [\"X-Debug\"]\n",
            Path::new("/etc/p/portcullis.toml"),
        )
        .unwrap();
        assert_eq!(
            parsed.forward_client_cert,
            crate::pipeline::forward::ForwardClientCert::Set
        );
        assert_eq!(parsed.strip_request_headers, ["x-debug"]);
    }
}
