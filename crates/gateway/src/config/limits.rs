//! `[limits]`: request limits, the listeners' connection timeouts (with the
//! caps of `[gateway]`) and the throttle of failed second factors and client
//! assertions.

use std::time::Duration;

use serde::Deserialize;

use super::gateway::{DEFAULT_MAX_CONNECTIONS, RawGateway};
use crate::buffers::DEFAULT_MAX_BUFFERED_BYTES;

/// Default request body limit: 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// Default time to wait for an upstream's response head.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;

/// Default time a response may make no progress (`stall_timeout_ms`).
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 60_000;

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest accepted request body in bytes (default 10 MiB).
    pub max_body_bytes: Option<u64>,
    /// Request bytes the whole process may hold buffered at once, parsed
    /// copies included (default 64 MiB, or twice `max_body_bytes` when
    /// larger; at least twice `max_body_bytes`).
    pub max_buffered_bytes: Option<u64>,
    /// Milliseconds to wait for an upstream's response head (default 30000).
    pub upstream_timeout_ms: Option<u64>,
    /// Milliseconds a response may make no progress (default 60000): an
    /// upstream that sends nothing more of its body for this long (event
    /// streams answering a GET excepted: they may be silent), or a client
    /// that takes nothing of a response for this long, ends the exchange.
    pub stall_timeout_ms: Option<u64>,
    /// Milliseconds a client may take for the TLS handshake (default 10000).
    pub handshake_timeout_ms: Option<u64>,
    /// Milliseconds from the handshake to the first request (default 5000).
    pub first_request_timeout_ms: Option<u64>,
    /// Milliseconds a connection may stay open with nothing in flight
    /// (default 120000).
    pub idle_timeout_ms: Option<u64>,
    /// Milliseconds SIGTERM/SIGINT may take to exit (default 30000): in-flight
    /// requests drain, then queued audit records are written or spilled to
    /// the spool (`docs/signals-and-readiness.md`).
    pub drain_timeout_ms: Option<u64>,
    /// Milliseconds between HTTP/2 keep-alive pings (default 30000).
    pub h2_keepalive_interval_ms: Option<u64>,
    /// Milliseconds an HTTP/2 client has to answer a ping (default 10000).
    pub h2_keepalive_timeout_ms: Option<u64>,
    /// Failed TOTP codes (per admin) or client assertions (per agent) within
    /// `auth_failure_window_ms` that lock the principal out (default 5; a
    /// source address locks after four times as many).
    pub auth_max_failures: Option<u32>,
    /// The window failures are counted in, in milliseconds (default 900000).
    pub auth_failure_window_ms: Option<u64>,
    /// How long a lockout lasts, in milliseconds (default 900000).
    pub auth_lockout_ms: Option<u64>,
    /// Back-off after the second failure in milliseconds, doubled after each
    /// further one (default 1000; 0 = no back-off, only the lockout).
    pub auth_backoff_ms: Option<u64>,
}

/// The listeners' connection limits: the defaults of
/// [`crate::listener::ConnectionLimits::with_max_connections`], overridden
/// key by key (each checked to be non-zero in `parse`).
pub(super) fn connection_limits(
    gateway: &RawGateway,
    limits: &RawLimits,
) -> crate::listener::ConnectionLimits {
    let mut out = crate::listener::ConnectionLimits::with_max_connections(
        gateway.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
    );
    if let Some(n) = gateway.max_unverified_connections {
        out.max_unverified = n.max(1);
    }
    if let Some(n) = gateway.max_unverified_per_source {
        out.max_unverified_per_source = n.max(1);
    }
    let ms =
        |v: Option<u64>, default: Duration| v.map_or(default, |v| Duration::from_millis(v.max(1)));
    out.handshake_timeout = ms(limits.handshake_timeout_ms, out.handshake_timeout);
    out.first_request_timeout = ms(limits.first_request_timeout_ms, out.first_request_timeout);
    out.idle_timeout = ms(limits.idle_timeout_ms, out.idle_timeout);
    out.drain_timeout = ms(limits.drain_timeout_ms, out.drain_timeout);
    out.h2_keepalive_interval = ms(limits.h2_keepalive_interval_ms, out.h2_keepalive_interval);
    out.h2_keepalive_timeout = ms(limits.h2_keepalive_timeout_ms, out.h2_keepalive_timeout);
    out.stall_timeout = stall_timeout(limits);
    out
}

/// `stall_timeout_ms` (checked to be non-zero in `parse`).
pub(super) fn stall_timeout(limits: &RawLimits) -> Duration {
    Duration::from_millis(
        limits
            .stall_timeout_ms
            .unwrap_or(DEFAULT_STALL_TIMEOUT_MS)
            .max(1),
    )
}

/// The throttle of failed second factors and client assertions: the
/// defaults, overridden key by key (each checked to be non-zero in `parse`).
pub(super) fn attempt_policy(limits: &RawLimits) -> crate::attempts::AttemptPolicy {
    let mut out = crate::attempts::AttemptPolicy::default();
    if let Some(n) = limits.auth_max_failures {
        out.max_failures = n.max(1);
    }
    let ms =
        |v: Option<u64>, default: Duration| v.map_or(default, |v| Duration::from_millis(v.max(1)));
    out.window = ms(limits.auth_failure_window_ms, out.window);
    out.lockout = ms(limits.auth_lockout_ms, out.lockout);
    // 0 turns the back-off off (the lockout stays).
    if let Some(v) = limits.auth_backoff_ms {
        out.backoff = Duration::from_millis(v);
    }
    out
}

/// Checks that the body limit is non-zero and that the buffer budget holds
/// one body of the largest size and its parsed copy.
pub(super) fn check_max_body(limits: &RawLimits) -> Result<(), String> {
    if limits.max_body_bytes == Some(0) {
        return Err("key `limits.max_body_bytes`: must be greater than 0".into());
    }
    let body = limits.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if let Some(budget) = limits.max_buffered_bytes
        && budget < body.saturating_mul(2)
    {
        return Err(format!(
            "key `limits.max_buffered_bytes`: must be at least twice `limits.max_body_bytes` ({body})"
        ));
    }
    Ok(())
}

/// The process-wide budget of buffered request bytes: the key, else the
/// default or twice the body limit, whichever is larger (checked in
/// `parse`).
pub(super) fn max_buffered_bytes(limits: &RawLimits) -> u64 {
    limits.max_buffered_bytes.unwrap_or_else(|| {
        let body = limits.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        DEFAULT_MAX_BUFFERED_BYTES.max(body.saturating_mul(2))
    })
}

/// Checks that the upstream timeout is non-zero.
pub(super) fn check_upstream_timeout(limits: &RawLimits) -> Result<(), String> {
    if limits.upstream_timeout_ms == Some(0) {
        return Err("key `limits.upstream_timeout_ms`: must be greater than 0".into());
    }
    Ok(())
}

/// Checks that the connection timeouts and the throttle's settings are
/// non-zero (`auth_backoff_ms = 0` turns the back-off off).
pub(super) fn check_connections_and_throttle(limits: &RawLimits) -> Result<(), String> {
    for (key, value) in [
        ("limits.handshake_timeout_ms", limits.handshake_timeout_ms),
        (
            "limits.first_request_timeout_ms",
            limits.first_request_timeout_ms,
        ),
        ("limits.idle_timeout_ms", limits.idle_timeout_ms),
        ("limits.stall_timeout_ms", limits.stall_timeout_ms),
        ("limits.drain_timeout_ms", limits.drain_timeout_ms),
        (
            "limits.h2_keepalive_interval_ms",
            limits.h2_keepalive_interval_ms,
        ),
        (
            "limits.h2_keepalive_timeout_ms",
            limits.h2_keepalive_timeout_ms,
        ),
        (
            "limits.auth_max_failures",
            limits.auth_max_failures.map(u64::from),
        ),
        (
            "limits.auth_failure_window_ms",
            limits.auth_failure_window_ms,
        ),
        ("limits.auth_lockout_ms", limits.auth_lockout_ms),
    ] {
        if value == Some(0) {
            return Err(format!("key `{key}`: must be greater than 0"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::Config;
    use crate::config::tests::check;

    #[test]
    fn connection_limits_and_the_auth_throttle_default_and_override() {
        let parse = |text: &str| Config::parse(text, Path::new("/etc/p/portcullis.toml")).unwrap();
        let c = parse("[gateway]\nmax_connections = 40\n");
        assert_eq!(
            c.connections,
            crate::listener::ConnectionLimits::with_max_connections(40)
        );
        assert_eq!(c.connections.max_unverified, 20);
        assert_eq!(c.attempts, crate::attempts::AttemptPolicy::default());
        let c = parse(
            "[gateway]\nmax_unverified_connections = 7\nmax_unverified_per_source = 3\n\
             [limits]\nhandshake_timeout_ms = 100\nfirst_request_timeout_ms = 200\nidle_timeout_ms = 300\n\
             h2_keepalive_interval_ms = 400\nh2_keepalive_timeout_ms = 500\ndrain_timeout_ms = 2000\n\
             auth_max_failures = 2\nauth_failure_window_ms = 600\nauth_lockout_ms = 700\nauth_backoff_ms = 0\n",
        );
        let l = &c.connections;
        assert_eq!((l.max_unverified, l.max_unverified_per_source), (7, 3));
        assert_eq!(
            [
                l.handshake_timeout,
                l.first_request_timeout,
                l.idle_timeout,
                l.h2_keepalive_interval,
                l.h2_keepalive_timeout
            ],
            [100, 200, 300, 400, 500].map(Duration::from_millis)
        );
        // A fifth of the drain (at most 5 s) is kept for the audit writer.
        assert_eq!(l.drain_timeout, Duration::from_secs(2));
        assert_eq!(l.listener_drain(), Duration::from_millis(1_600));
        assert_eq!(
            crate::listener::ConnectionLimits::with_max_connections(1).listener_drain(),
            Duration::from_secs(25)
        );
        let a = &c.attempts;
        assert_eq!(a.max_failures, 2);
        assert_eq!(
            [a.window, a.lockout, a.backoff],
            [600, 700, 0].map(Duration::from_millis)
        );
    }

    #[test]
    fn the_buffer_budget_defaults_to_64_mib_or_one_largest_body() {
        let parse = |text: &str| {
            Config::parse(text, Path::new("/etc/p/portcullis.toml"))
                .unwrap()
                .max_buffered_bytes
        };
        assert_eq!(parse(""), 64 << 20);
        assert_eq!(parse("[limits]\nmax_body_bytes = 67108864\n"), 128 << 20);
        assert_eq!(
            parse("[limits]\nmax_body_bytes = 1024\nmax_buffered_bytes = 4096\n"),
            4096
        );
    }

    #[test]
    fn invalid_limits() {
        check("[limits]\nmax_body_bytes = 0\n", "limits.max_body_bytes");
        check(
            "[limits]\nmax_body_bytes = 2048\nmax_buffered_bytes = 4095\n",
            "key `limits.max_buffered_bytes`: must be at least twice `limits.max_body_bytes` (2048)",
        );
        check(
            "[limits]\nmax_buffered_bytes = 1024\n",
            "must be at least twice `limits.max_body_bytes` (10485760)",
        );
        check(
            "[limits]\nfirst_request_timeout_ms = 0\n",
            "key `limits.first_request_timeout_ms`: must be greater than 0",
        );
        check(
            "[limits]\ndrain_timeout_ms = 0\n",
            "key `limits.drain_timeout_ms`: must be greater than 0",
        );
        check(
            "[limits]\nauth_max_failures = 0\n",
            "key `limits.auth_max_failures`: must be greater than 0",
        );
        check(
            "[limits]\nidle_timeout = 5\n",
            "unknown field `idle_timeout`",
        );
    }
}
