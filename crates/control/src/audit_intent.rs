//! The queue of the intent journal (`[audit] durability = "before_forward"`):
//! a call hands the audit writer its decided record and awaits the commit of
//! the batch that holds it. The rules (which calls wait) and the recovery at
//! start-up are the gateway's `audit_intent`; this is the part the writer
//! ([`crate::audit_sink`]) takes from.

use std::sync::Mutex;
use std::time::Duration;

use portcullis_store::AuditIntentRow;
use tokio::sync::{Notify, oneshot};

/// An intent waiting for the writer's next commit.
#[derive(Debug)]
pub struct Intent {
    row: AuditIntentRow,
    durable: oneshot::Sender<()>,
}

/// Intents handed to the writer, taken whole by each batch it writes.
#[derive(Debug)]
pub struct IntentQueue {
    /// Held only to push or take: never across I/O.
    pending: Mutex<Vec<Intent>>,
    notify: Notify,
    wait_limit: Duration,
}

impl Intent {
    /// An intent; `durable` is answered once its batch committed.
    pub fn new(row: AuditIntentRow, durable: oneshot::Sender<()>) -> Self {
        Intent { row, durable }
    }
}

impl IntentQueue {
    /// An empty queue whose callers wait at most `wait_limit`.
    pub fn new(wait_limit: Duration) -> Self {
        IntentQueue {
            pending: Mutex::new(Vec::new()),
            notify: Notify::new(),
            wait_limit,
        }
    }

    /// Queues an intent and wakes the writer.
    pub fn push(&self, intent: Intent) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.push(intent);
        }
        self.notify.notify_one();
    }

    /// Every queued intent, as rows to write and the senders to answer once
    /// they committed (dropping a sender refuses its call).
    pub fn take(&self) -> (Vec<AuditIntentRow>, Vec<oneshot::Sender<()>>) {
        let taken = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        taken.into_iter().map(|i| (i.row, i.durable)).unzip()
    }

    /// How long a caller waits for its intent's commit.
    pub fn wait_limit(&self) -> Duration {
        self.wait_limit
    }

    /// Resolves when an intent has been queued since the last call.
    pub async fn queued(&self) {
        self.notify.notified().await;
    }
}

/// Tells the callers of a committed batch their intents are durable.
pub fn acknowledge(durable: Vec<oneshot::Sender<()>>) {
    for sender in durable {
        let _ = sender.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn taken_intents_are_answered_or_refused() {
        let queue = IntentQueue::new(Duration::from_secs(1));
        let (tx, rx) = oneshot::channel();
        queue.push(Intent::new(
            AuditIntentRow {
                request_id: "a".into(),
                time_ms: 1,
                record: "{}".into(),
            },
            tx,
        ));
        queue.queued().await;
        let (rows, acks) = queue.take();
        assert_eq!(rows.len(), 1);
        assert!(queue.take().0.is_empty());
        acknowledge(acks);
        assert!(rx.await.is_ok());
    }
}
