//! SIEM export: one background task per configured `[[audit.export]]` sink
//! streams the durable audit log to a JSON-lines file or stdout, syslog
//! (RFC 5424), an HTTP webhook, or an OTLP logs collector.
//!
//! **Delivery is at-least-once.** Each sink has a cursor in the store (the
//! `seq` of the next record to deliver). A task reads a batch of records after
//! its cursor, delivers it, and only then advances and persists the cursor. A
//! failed delivery is retried with exponential backoff (100 ms doubling to
//! 30 s), forever: a sink never skips a record, it falls behind, and
//! `portcullis_audit_export_lag_records` shows how far. A crash or restart
//! between delivery and the cursor write delivers that batch again, so
//! receivers deduplicate by `seq`.
//!
//! **Off the hot path.** Sinks read only records the writer has made durable
//! (the published tree head wakes them), from the store, never from the
//! request path; a slow or dead receiver costs requests nothing.
//!
//! Records are sent as their canonical JSON (the exact bytes of the Merkle
//! leaf), so a receiver can recompute any record's leaf hash and check it
//! against an inclusion proof.

mod http_sinks;
mod jsonl;
pub mod syslog;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis_store::{Store, TreeHead};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ExportConfig, ExportTarget};
use crate::metrics::{ExportMetrics, Metrics};
use crate::otlp::{PostError, Poster};

pub use http_sinks::log_record;

/// One stored record: its `seq` and canonical JSON.
pub type Leaf = (u64, String);

/// First retry delay after a failed delivery.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a delivery failed. Messages never include header values.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Writing a file or socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An HTTP receiver failed.
    #[error(transparent)]
    Post(#[from] PostError),
    /// The delivery did not finish in time.
    #[error("delivery did not finish within {0} ms")]
    Timeout(u128),
}

/// A configured destination.
#[derive(Debug)]
enum Sink {
    Jsonl(jsonl::JsonlSink),
    Syslog(syslog::SyslogSink),
    Webhook(http_sinks::WebhookSink),
    Otlp(http_sinks::OtlpSink),
}

impl Sink {
    fn new(target: &ExportTarget, poster: &Poster, tls: &Arc<rustls::ClientConfig>) -> Self {
        match target {
            ExportTarget::Jsonl { path } => Sink::Jsonl(jsonl::JsonlSink::new(path.clone())),
            ExportTarget::Syslog {
                address,
                transport,
                facility,
                hostname,
                app_name,
            } => Sink::Syslog(syslog::SyslogSink::new(
                address.clone(),
                *transport,
                syslog::Header {
                    facility: *facility,
                    hostname: hostname.clone().unwrap_or_else(syslog::local_hostname),
                    app_name: app_name.clone(),
                    procid: std::process::id().to_string(),
                },
                tls.clone(),
            )),
            ExportTarget::Webhook {
                url,
                format,
                headers,
            } => Sink::Webhook(http_sinks::WebhookSink {
                poster: poster.clone(),
                url: url.clone(),
                format: *format,
                headers: headers.clone(),
            }),
            ExportTarget::Otlp {
                url,
                headers,
                service_name,
            } => Sink::Otlp(http_sinks::OtlpSink::new(
                poster.clone(),
                url.clone(),
                headers.clone(),
                service_name,
            )),
        }
    }

    async fn deliver(&mut self, leaves: &[Leaf], timeout: Duration) -> Result<(), DeliveryError> {
        let delivery = async {
            match self {
                Sink::Jsonl(s) => s.deliver(leaves).await,
                Sink::Syslog(s) => s.deliver(leaves).await,
                Sink::Webhook(s) => s.deliver(leaves, timeout).await,
                Sink::Otlp(s) => s.deliver(leaves, timeout).await,
            }
        };
        match tokio::time::timeout(timeout, delivery).await {
            Ok(result) => result,
            Err(_) => {
                // A half-written stream is in an unknown state: start afresh.
                if let Sink::Syslog(s) = self {
                    s.reset();
                }
                Err(DeliveryError::Timeout(timeout.as_millis()))
            }
        }
    }
}

/// The running export tasks.
#[derive(Debug)]
pub struct Exporters {
    stop: watch::Sender<Option<Instant>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Exporters {
    /// Starts one task per sink. `head` is the writer's published tree head
    /// (it wakes the tasks when records become durable); `tls` is trusted for
    /// https receivers.
    pub fn start(
        sinks: &[ExportConfig],
        store: Store,
        head: watch::Receiver<TreeHead>,
        metrics: &Arc<Metrics>,
        tls: rustls::ClientConfig,
    ) -> Self {
        let (stop, stopped) = watch::channel(None);
        let tls = Arc::new(tls);
        let poster = Poster::new((*tls).clone());
        for config in sinks {
            if let Some(host) = plaintext_remote_host(&config.target) {
                tracing::warn!(sink = %config.name, %host, "audit records are exported unencrypted to a host that is not loopback; use https or syslog over TLS");
            }
        }
        let tasks = sinks
            .iter()
            .map(|config| {
                let task = Task {
                    name: config.name.clone(),
                    sink: Sink::new(&config.target, &poster, &tls),
                    batch_size: config.batch_size,
                    timeout: config.timeout,
                    store: store.clone(),
                    head: head.clone(),
                    stop: stopped.clone(),
                    metrics: metrics.export_sink(&config.name),
                };
                tokio::spawn(task.run())
            })
            .collect();
        Exporters { stop, tasks }
    }

    /// Stops the tasks after they deliver what is durable, waiting at most
    /// `grace` for receivers. What is not delivered by then stays behind the
    /// persisted cursor and goes out at the next start.
    pub async fn finish(self, grace: Duration) {
        let _ = self.stop.send(Some(Instant::now() + grace));
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The host of a sink that sends records in clear text off this machine.
fn plaintext_remote_host(target: &ExportTarget) -> Option<String> {
    let host = match target {
        ExportTarget::Jsonl { .. } => return None,
        ExportTarget::Syslog {
            address, transport, ..
        } => {
            if *transport == crate::config::SyslogTransport::Tls {
                return None;
            }
            address
                .rsplit_once(':')
                .map_or(address.as_str(), |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }
        ExportTarget::Webhook { url, .. } | ExportTarget::Otlp { url, .. } => {
            if url.scheme_str() == Some("https") {
                return None;
            }
            url.host()?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then_some(host)
}

struct Task {
    name: String,
    sink: Sink,
    batch_size: u32,
    timeout: Duration,
    store: Store,
    head: watch::Receiver<TreeHead>,
    /// `Some(deadline)` once shutdown has begun.
    stop: watch::Receiver<Option<Instant>>,
    metrics: ExportMetrics,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut cursor = loop {
            match self.store.export_cursor(&self.name).await {
                Ok(cursor) => break cursor,
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "cannot read the export cursor; retrying");
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                }
            }
        };
        // Whether the persisted cursor is behind the delivered one.
        let mut unsaved = false;
        loop {
            let deadline = *self.stop.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                if unsaved {
                    self.save(cursor).await;
                }
                return;
            }
            let durable = self.head.borrow_and_update().size;
            self.metrics
                .lag
                .set(durable.saturating_sub(cursor).min(i64::MAX as u64) as i64);
            if cursor >= durable {
                if unsaved {
                    unsaved = !self.save(cursor).await;
                }
                if self.stop.borrow().is_some() {
                    return;
                }
                tokio::select! {
                    changed = self.head.changed() => {
                        if changed.is_err() && self.stop.borrow().is_none() {
                            // The writer is gone: nothing more will arrive.
                            let _ = self.stop.changed().await;
                        }
                    }
                    changed = self.stop.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            let limit = self
                .batch_size
                .min((durable - cursor).min(u32::MAX as u64) as u32);
            let leaves = match self.store.audit_leaves(cursor, limit).await {
                Ok(leaves) if !leaves.is_empty() => leaves,
                Ok(_) => {
                    tracing::error!(sink = %self.name, cursor, durable, "the store has no record at the export cursor");
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(sink = %self.name, error = %e, "cannot read audit records to export; retrying");
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            if leaves[0].0 != cursor {
                tracing::error!(sink = %self.name, expected = cursor, found = leaves[0].0, "the audit log has a gap at the export cursor");
            }
            match self.sink.deliver(&leaves, self.timeout).await {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    let next = leaves.last().map_or(cursor, |(seq, _)| seq + 1);
                    self.metrics.delivered.inc_by((next - cursor).max(1));
                    cursor = next;
                    // Persist at most once per batch; a failure is retried with
                    // the next batch (a restart would only re-deliver).
                    unsaved = !self.save(cursor).await;
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    tracing::warn!(sink = %self.name, error = %e, records = leaves.len(), from_seq = cursor, "audit export delivery failed; will retry");
                    if !self.pause(&mut backoff).await {
                        if unsaved {
                            self.save(cursor).await;
                        }
                        return;
                    }
                }
            }
        }
    }

    async fn save(&self, cursor: u64) -> bool {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        match self
            .store
            .set_export_cursor(&self.name, cursor, now_ms)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(sink = %self.name, error = %e, "cannot persist the export cursor");
                false
            }
        }
    }

    /// Waits `backoff` (then doubles it). False when the shutdown deadline
    /// has passed, so the task should give up.
    async fn pause(&mut self, backoff: &mut Duration) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        let deadline = *self.stop.borrow();
        if let Some(deadline) = deadline {
            let now = Instant::now();
            if now + wait >= deadline {
                tokio::time::sleep_until(deadline.into()).await;
                return false;
            }
            tokio::time::sleep(wait).await;
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            // Shutdown began: re-check against the deadline.
            changed = self.stop.changed() => changed.is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Facility, SecretHeaders, SyslogTransport, WebhookFormat};

    #[test]
    fn clear_text_off_the_host_is_flagged() {
        let syslog = |address: &str, transport| ExportTarget::Syslog {
            address: address.into(),
            transport,
            facility: Facility::Auth,
            hostname: None,
            app_name: "p".into(),
        };
        let hook = |url: &str| ExportTarget::Webhook {
            url: url.parse().unwrap(),
            format: WebhookFormat::Json,
            headers: SecretHeaders::default(),
        };
        let check = |target: ExportTarget, expect: Option<&str>| {
            assert_eq!(
                plaintext_remote_host(&target).as_deref(),
                expect,
                "{target:?}"
            );
        };
        check(
            syslog("siem.example:514", SyslogTransport::Udp),
            Some("siem.example"),
        );
        check(syslog("siem.example:6514", SyslogTransport::Tls), None);
        check(syslog("127.0.0.1:514", SyslogTransport::Tcp), None);
        check(syslog("[::1]:514", SyslogTransport::Tcp), None);
        check(hook("http://10.0.0.9:8088/x"), Some("10.0.0.9"));
        check(hook("https://hec.example/x"), None);
        check(hook("http://localhost:4318/v1/logs"), None);
        check(ExportTarget::Jsonl { path: None }, None);
    }
}
