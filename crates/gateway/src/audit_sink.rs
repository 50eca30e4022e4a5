//! The audit writer: records are handed over without waiting, and one task writes
//! them in batches (group commit), one transaction per batch.
//!
//! Handing over never blocks the request: the channel is unbounded because the
//! record of a finished response must never be dropped, and a response body's
//! drop (where records are submitted) cannot wait. Overload is bounded instead by
//! admission: the decode stage refuses new requests with 503 while the backlog is
//! above [`MAX_BACKLOG`], so memory stays bounded and nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis_audit::AuditRecord;
use portcullis_store::Store;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Backlog above which new requests are refused until the writer catches up.
pub const MAX_BACKLOG: usize = 100_000;
/// Largest batch written in one transaction.
const MAX_BATCH: usize = 2_048;
/// How long the writer waits after the first record of a batch for more to
/// arrive. Requests never wait for the writer, so lingering costs no latency; it
/// turns a commit (and fsync) per request under light load into one per few
/// milliseconds, which is most of the writer's cost.
const LINGER: Duration = Duration::from_millis(5);

/// The sending side, cloned into every request.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::UnboundedSender<AuditRecord>,
    backlog: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl AuditSink {
    /// Hands a record to the writer.
    pub fn submit(&self, record: AuditRecord) {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        self.metrics.audit_queue.inc();
        if self.tx.send(record).is_err() {
            // Only after the writer has stopped, i.e. during process exit.
            tracing::error!("audit writer stopped; record not written");
        }
    }

    /// Whether the backlog is over the admission limit.
    pub fn overloaded(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) > MAX_BACKLOG
    }
}

/// The writer task's handle: [`AuditWriter::finish`] writes what is queued and stops.
#[derive(Debug)]
pub struct AuditWriter {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl AuditWriter {
    /// Starts the writer.
    pub fn start(store: Store, metrics: Arc<Metrics>) -> (AuditSink, AuditWriter) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(store, rx, stopped, backlog.clone(), metrics.clone()));
        (
            AuditSink {
                tx,
                backlog,
                metrics,
            },
            AuditWriter { task, stop },
        )
    }

    /// Writes every record submitted so far, then stops the writer. Call it after
    /// the listeners have drained.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<AuditRecord>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    backlog: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // Whatever arrived while the previous batch was committing forms the next batch.
        let mut stopping = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n == 0,
            _ = stop.changed() => true,
        };
        if !stopping && batch.len() < MAX_BATCH {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = stop.changed() => stopping = true,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
        }
        if stopping {
            while let Ok(record) = rx.try_recv() {
                batch.push(record);
            }
        }
        write(&store, &mut batch, &backlog, &metrics).await;
        if stopping {
            return;
        }
    }
}

async fn write(
    store: &Store,
    batch: &mut Vec<AuditRecord>,
    backlog: &AtomicUsize,
    metrics: &Metrics,
) {
    let n = batch.len();
    if n == 0 {
        return;
    }
    {
        let mut delay = Duration::from_millis(10);
        // A failed write is retried until it succeeds: dropping records is not an
        // option, and requests are refused meanwhile once the backlog is full.
        while let Err(e) = store.append_audit(batch).await {
            metrics.audit_failures.inc();
            tracing::error!(error = %e, records = n, "audit batch write failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        backlog.fetch_sub(n, Ordering::Relaxed);
        metrics.audit_queue.dec_by(n as i64);
        metrics.audit_written.inc_by(n as u64);
        batch.clear();
    }
}
