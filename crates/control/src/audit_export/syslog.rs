//! The `syslog` sink: RFC 5424 messages over UDP (RFC 5426, one message per
//! datagram), TCP (RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`), or the
//! same framing inside TLS (RFC 5425).
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [portcullis@32473 seq="…" …] BOM{record}
//! ```
//!
//! PRI is `facility * 8 + severity`: an allowed record is *informational*
//! (6), a refused one a *warning* (4). MSGID is the record kind (`request`,
//! `admin`). The structured data element repeats the fields SIEM rules key
//! on, and MSG is the record's canonical JSON, marked UTF-8 with a BOM as
//! RFC 5424 section 6.4 asks. 32473 is the private enterprise number RFC 5612
//! reserves for documentation and examples.
//!
//! **Delivery guarantees.** Over UDP a datagram that is lost is not noticed:
//! use TCP or TLS when records must arrive. Over a stream a batch counts as delivered
//! once written to the socket; before each batch the sink checks whether the
//! collector closed the connection, and reconnects, so a collector restart
//! loses nothing. A collector host that vanishes without closing can still
//! lose what the kernel had buffered: syslog has no acknowledgements (use the
//! `webhook` or `otlp` sink where that matters).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{DeliveryError, Leaf};
use crate::config::{Facility, SyslogTransport};

/// The SD-ID of the structured data element.
pub const SD_ID: &str = "portcullis@32473";

/// Severity of an allowed record: informational.
const SEVERITY_ALLOW: u8 = 6;
/// Severity of a refused record: warning.
const SEVERITY_DENY: u8 = 4;
/// Severity of a record that cannot be read back (should not happen): notice.
const SEVERITY_UNREADABLE: u8 = 5;

/// The fixed header fields of every message.
#[derive(Debug, Clone)]
pub struct Header {
    /// The facility.
    pub facility: Facility,
    /// HOSTNAME.
    pub hostname: String,
    /// APP-NAME.
    pub app_name: String,
    /// PROCID.
    pub procid: String,
}

/// This host's name for the HOSTNAME field, or `-` (the NILVALUE).
pub fn local_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name = name.trim();
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        "-".into()
    } else {
        name.into()
    }
}

/// Formats one record as an RFC 5424 message (without transport framing).
pub fn format(header: &Header, seq: u64, json: &str) -> String {
    let record = serde_json::from_str::<AuditRecord>(json).ok();
    let severity = match record.as_ref().map(|r| r.outcome) {
        Some(Outcome::Allow) => SEVERITY_ALLOW,
        Some(Outcome::Deny) => SEVERITY_DENY,
        None => SEVERITY_UNREADABLE,
    };
    let pri = header.facility as u8 * 8 + severity;
    let (timestamp, msgid) = match &record {
        Some(r) => (
            rfc3339_millis(r.time_ms),
            match r.kind {
                RecordKind::Request => "request",
                RecordKind::Admin => "admin",
                RecordKind::Process => "process",
                RecordKind::Egress => "egress",
            },
        ),
        None => ("-".to_string(), "audit"),
    };
    let mut sd = format!("[{SD_ID} seq=\"{seq}\"");
    if let Some(r) = &record {
        let mut param = |name: &str, value: &str| {
            sd.push(' ');
            sd.push_str(name);
            sd.push_str("=\"");
            escape_param(value, &mut sd);
            sd.push('"');
        };
        param("request_id", &r.request_id);
        param(
            "outcome",
            match r.outcome {
                Outcome::Allow => "allow",
                Outcome::Deny => "deny",
            },
        );
        param("action", &r.action);
        param("status", &r.status.to_string());
        for (name, value) in [
            ("principal", &r.principal),
            ("resource", &r.resource),
            ("classification", &r.classification),
            ("error_code", &r.error_code),
            ("source_ip", &r.source_ip),
        ] {
            if let Some(value) = value {
                param(name, value);
            }
        }
        if !r.policies.is_empty() {
            param("policies", &r.policies.join(","));
        }
    }
    sd.push(']');
    format!(
        "<{pri}>1 {timestamp} {} {} {} {msgid} {sd} \u{feff}{json}",
        header.hostname, header.app_name, header.procid
    )
}

/// PARAM-VALUE escaping (RFC 5424 section 6.3.3): `"`, `\` and `]`.
fn escape_param(value: &str, out: &mut String) {
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// `2026-11-23T19:15:50.123Z`, or `-` for a time that cannot be shown.
fn rfc3339_millis(ms: i64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return "-".into();
    };
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_else(|_| "-".into())
}

/// A TCP or TLS connection to the collector.
trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + std::fmt::Debug> Stream for T {}

#[derive(Debug)]
pub(super) struct SyslogSink {
    address: String,
    transport: SyslogTransport,
    header: Header,
    tls: Arc<rustls::ClientConfig>,
    tcp: Option<Box<dyn Stream>>,
    udp: Option<UdpSocket>,
}

impl SyslogSink {
    pub(super) fn new(
        address: String,
        transport: SyslogTransport,
        header: Header,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        SyslogSink {
            address,
            transport,
            header,
            tls,
            tcp: None,
            udp: None,
        }
    }

    /// Forgets the connection; the next batch connects (and resolves) anew.
    pub(super) fn reset(&mut self) {
        self.tcp = None;
        self.udp = None;
    }

    pub(super) async fn deliver(&mut self, leaves: &[Leaf]) -> Result<(), DeliveryError> {
        let result = match self.transport {
            SyslogTransport::Udp => self.send_udp(leaves).await,
            SyslogTransport::Tcp | SyslogTransport::Tls => self.send_stream(leaves).await,
        };
        if result.is_err() {
            self.reset();
        }
        result
    }

    async fn resolve(&self) -> std::io::Result<SocketAddr> {
        tokio::net::lookup_host(&self.address)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("`{}` resolves to no address", self.address),
                )
            })
    }

    async fn send_udp(&mut self, leaves: &[Leaf]) -> Result<(), DeliveryError> {
        if self.udp.is_none() {
            let peer = self.resolve().await?;
            let local: SocketAddr = if peer.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let socket = UdpSocket::bind(local).await?;
            // Connected, so an ICMP "port unreachable" surfaces as an error.
            socket.connect(peer).await?;
            self.udp = Some(socket);
        }
        if let Some(socket) = &self.udp {
            for (seq, json) in leaves {
                let message = format(&self.header, *seq, json);
                socket
                    .send(truncate_datagram(&message, *seq).as_bytes())
                    .await?;
            }
        }
        Ok(())
    }

    async fn send_stream(&mut self, leaves: &[Leaf]) -> Result<(), DeliveryError> {
        if let Some(stream) = &mut self.tcp
            && peer_closed(stream).await
        {
            self.tcp = None;
        }
        if self.tcp.is_none() {
            self.tcp = Some(self.connect().await?);
        }
        let mut frames = Vec::new();
        for (seq, json) in leaves {
            let message = format(&self.header, *seq, json);
            frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
            frames.extend_from_slice(message.as_bytes());
        }
        if let Some(stream) = &mut self.tcp {
            stream.write_all(&frames).await?;
            stream.flush().await?;
        }
        Ok(())
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        // Every address the name resolves to, in order (`TcpStream::connect`
        // does that for a `host:port` string).
        let tcp = TcpStream::connect(self.address.as_str()).await?;
        tcp.set_nodelay(true)?;
        if self.transport != SyslogTransport::Tls {
            return Ok(Box::new(tcp));
        }
        // The name the certificate must carry: the host part of `address`.
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        Ok(Box::new(tls))
    }
}

/// A syslog collector never sends application data, so a read that ends
/// at once means it closed the connection (or reset it). Over TLS the read
/// also consumes handshake messages such as session tickets, and a
/// `close_notify` reads as the end.
async fn peer_closed(stream: &mut Box<dyn Stream>) -> bool {
    let mut buf = [0u8; 512];
    // `timeout` polls the read once before looking at the (zero) deadline.
    match tokio::time::timeout(Duration::ZERO, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Largest UDP payload sent. A bigger datagram cannot be sent at all, and
/// retrying it would stall the sink forever, so the message is cut (RFC 5426
/// section 3.2 lets a message be truncated); the full record still reaches
/// every other sink.
const MAX_DATAGRAM: usize = 65_000;

fn truncate_datagram(message: &str, seq: u64) -> &str {
    if message.len() <= MAX_DATAGRAM {
        return message;
    }
    tracing::warn!(
        seq,
        bytes = message.len(),
        "audit record too large for one syslog datagram; truncated"
    );
    let mut end = MAX_DATAGRAM;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str, expect: &str) {
        let header = Header {
            facility: Facility::Local4,
            hostname: "gw1".into(),
            app_name: "portcullis".into(),
            procid: "42".into(),
        };
        assert_eq!(format(&header, 7, json), expect);
    }

    #[test]
    fn oversized_datagrams_are_cut_at_a_character_boundary() {
        let long = format!("a{}", "é".repeat(40_000));
        let cut = truncate_datagram(&long, 1);
        assert!(cut.len() <= MAX_DATAGRAM && cut.len() >= MAX_DATAGRAM - 1);
        assert_eq!(truncate_datagram("short", 1), "short");
    }

    #[test]
    fn rfc5424_messages() {
        let deny = r#"{"seq":7,"time_ms":1700000000123,"kind":"request","request_id":"ab","principal":null,"credential":null,"source_ip":"127.0.0.1","action":"GET","resource":"a\"]\\b","path":"/x","outcome":"deny","policies":["default-deny"],"error_code":"forbidden","status":403,"duration_us":1,"bytes_in":0,"bytes_out":0,"classification":null,"request_sha256":null,"response_sha256":null,"response_sha256_unredacted":null,"fail_open":false}"#;
        // local4 (20) * 8 + warning (4) = 164.
        check(
            deny,
            &format!(
                "<164>1 2023-11-14T22:13:20.123Z gw1 portcullis 42 request [portcullis@32473 seq=\"7\" request_id=\"ab\" outcome=\"deny\" action=\"GET\" status=\"403\" resource=\"a\\\"\\]\\\\b\" error_code=\"forbidden\" source_ip=\"127.0.0.1\" policies=\"default-deny\"] \u{feff}{deny}"
            ),
        );
        let allow = deny
            .replace(r#""outcome":"deny""#, r#""outcome":"allow""#)
            .replace(r#""kind":"request""#, r#""kind":"admin""#);
        assert!(
            format(
                &Header {
                    facility: Facility::Auth,
                    hostname: "-".into(),
                    app_name: "p".into(),
                    procid: "1".into()
                },
                7,
                &allow
            )
            .starts_with("<38>1 2023-11-14T22:13:20.123Z - p 1 admin [")
        );
        // Unreadable: notice, nil timestamp, the text still carried.
        check(
            "not json",
            "<165>1 - gw1 portcullis 42 audit [portcullis@32473 seq=\"7\"] \u{feff}not json",
        );
    }
}
