//! Signed checkpoints: every interval, when the log has grown, the tree head is
//! signed with the log's Ed25519 key as a C2SP checkpoint, stored, and exported
//! to places the admin of this host need not control (a file, a webhook).
//!
//! A checkpoint only ever signs a tree the writer has committed
//! ([`AuditSink::head`]), so every record under a signature is durable.
//!
//! Nor does it ever sign over tampering: before each signature the stored log
//! is checked against the last checkpoint ([`Checkpointer::check_latest`]),
//! and on a mismatch, or once the log is halted, nothing is signed and the
//! log is halted ([`Checkpointer::halt`]: the writer stops, an alert is raised).
//!
//! In cluster mode ([`Checkpointer::share`]) one replica at a time signs,
//! the one the cluster elected ([`Checkpointer::elect`]; the election is an
//! advisory lock, `portcullis serve`'s `cluster.rs`), and it signs the shared
//! log's stored head, which holds every replica's committed records, rather
//! than its own writer's. Two signers at once (a leader that lost its
//! database session but has not noticed yet) would be harmless: each size is
//! stored once and every checkpoint of one log verifies.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_audit::checkpoint::{self, Checkpoint};
use portcullis_audit::note::VerifierKey;
use portcullis_store::{Store, StoreError, StoredCheckpoint};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, watch};

use crate::audit_sink::AuditSink;
use crate::config::AuditConfig;

/// Most checkpoints kept for a webhook that is down; older ones are dropped
/// (the newest checkpoint covers everything before it).
const WEBHOOK_BACKLOG: usize = 100;

/// Why a checkpoint could not be made, or the log does not match its last one.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed (an invalid origin).
    #[error("cannot sign checkpoint: {0}")]
    Sign(String),
    /// The log is halted (tampered): nothing is signed over it.
    #[error("the audit log is halted, no checkpoint is signed: {0}")]
    Halted(String),
    /// The stored log is not the one the last checkpoint signed.
    #[error(
        "the audit log does not match its last signed checkpoint (tree size {size}): {detail}; run `portcullis audit verify` to find the first changed record"
    )]
    Mismatch {
        /// The checkpoint's tree size.
        size: u64,
        /// What did not match.
        detail: String,
    },
}

/// The log's signing identity.
#[derive(Debug, Clone)]
pub struct LogSigner {
    key: SigningKey,
    origin: String,
    verifier: VerifierKey,
}

impl LogSigner {
    /// A signer for the log `origin` (also the key name).
    pub fn new(key: SigningKey, origin: &str) -> Result<Self, CheckpointerError> {
        let verifier = VerifierKey::new(origin, key.verifying_key())
            .map_err(|e| CheckpointerError::Sign(e.to_string()))?;
        Ok(LogSigner {
            key,
            origin: origin.to_owned(),
            verifier,
        })
    }

    /// The verifier key auditors configure: `<origin>+<hash>+<key>`.
    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Signs, stores and exports checkpoints.
#[derive(Debug)]
pub struct Checkpointer {
    store: Store,
    sink: AuditSink,
    /// Replaced whole by an online rotation of the audit key
    /// ([`Self::replace_signer`]).
    signer: arc_swap::ArcSwap<LogSigner>,
    file: Option<PathBuf>,
    webhook: Option<(WebhookClient, http::Uri)>,
    /// Serialises signing; holds the size last signed and the webhook backlog.
    state: Mutex<State>,
    /// Whether this process signs: always on one node; in cluster mode,
    /// while it is the elected signer.
    elected: AtomicBool,
    /// Cluster mode: sign the stored head of the shared log.
    shared: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    signed: u64,
    webhook_backlog: Vec<String>,
}

impl Checkpointer {
    /// A checkpointer for the log behind `sink`. `tls` is trusted for an https
    /// webhook.
    pub async fn new(
        store: Store,
        sink: AuditSink,
        signer: LogSigner,
        config: &AuditConfig,
        tls: rustls::ClientConfig,
    ) -> Result<Self, CheckpointerError> {
        let webhook = match &config.checkpoint_webhook {
            Some(url) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|_| CheckpointerError::Sign(format!("bad webhook URL `{url}`")))?;
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(Duration::from_secs(5)));
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                Some((Client::builder(TokioExecutor::new()).build(https), uri))
            }
            None => None,
        };
        let signed = store.latest_checkpoint().await?.map_or(0, |c| c.size);
        Ok(Checkpointer {
            store,
            sink,
            signer: arc_swap::ArcSwap::from_pointee(signer),
            file: config.checkpoint_file.clone(),
            webhook,
            state: Mutex::new(State {
                signed,
                webhook_backlog: Vec::new(),
            }),
            elected: AtomicBool::new(true),
            shared: AtomicBool::new(false),
        })
    }

    /// Cluster mode: from now on this checkpointer signs only while elected
    /// ([`Self::elect`]), and signs the shared log's stored head.
    pub fn share(&self) {
        self.shared.store(true, Ordering::Relaxed);
        self.elected.store(false, Ordering::Relaxed);
    }

    /// Cluster mode: this replica was elected signer (true) or lost it.
    pub fn elect(&self, elected: bool) {
        self.elected.store(elected, Ordering::Relaxed);
    }

    /// Whether this process signs checkpoints and runs the periodic full
    /// verification: always on one node; in cluster mode, while elected.
    pub fn is_elected(&self) -> bool {
        self.elected.load(Ordering::Relaxed)
    }

    /// The log's signing identity.
    pub fn signer(&self) -> std::sync::Arc<LogSigner> {
        self.signer.load_full()
    }

    /// An online rotation of the audit key activated `signer` (same
    /// origin): the next checkpoint is signed with it. Taken under the
    /// signing lock, so a checkpoint being signed finishes with the key it
    /// began with.
    pub async fn replace_signer(&self, signer: LogSigner) {
        let _signing = self.state.lock().await;
        self.signer.store(std::sync::Arc::new(signer));
    }

    /// Checks that the stored log still has the tree head its last checkpoint
    /// signed (a cheap check at start-up: O(log n) stored hashes, not a full
    /// verification).
    pub async fn check_latest(&self) -> Result<(), CheckpointerError> {
        let Some(latest) = self.store.latest_checkpoint().await? else {
            return Ok(());
        };
        let signer = self.signer.load();
        let mismatch = |detail: String| CheckpointerError::Mismatch {
            size: latest.size,
            detail,
        };
        // Signed by the current key, or by one a rotation retired.
        let checkpoint = self
            .store
            .open_checkpoint(&latest.note, &signer.verifier, &signer.origin)
            .map_err(|e| mismatch(format!("the checkpoint does not verify: {e}")))?;
        if checkpoint.size != latest.size {
            return Err(mismatch("the checkpoint row names another size".into()));
        }
        let root = match self.store.audit_head(latest.size).await {
            Ok(root) => root,
            Err(StoreError::Invalid(e)) => return Err(mismatch(e)),
            Err(e) => return Err(mismatch(e.to_string())),
        };
        if root != checkpoint.root {
            return Err(mismatch(
                "the stored records hash to another tree head".into(),
            ));
        }
        Ok(())
    }

    /// Halts the log (see [`AuditSink::halt`]) and raises an alert for the
    /// operator, once.
    pub async fn halt(&self, reason: &str) {
        if self.sink.halted().is_some() {
            return;
        }
        self.sink.halt(reason);
        let alert = portcullis_store::AlertRow {
            id: 0,
            agent: "portcullis".into(),
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as i64,
            grade: "audit_tampered".into(),
            risk: 1.0,
            // The shape of analytics alerts' detail, so `alerts list` shows it.
            detail: serde_json::json!({
                "kind": "audit_log_tampered",
                "reasons": [
                    format!("audit_log_tampered: {reason}"),
                    "appending, checkpoint signing and the data plane stopped; run `portcullis audit verify` for the first bad index",
                ],
                "features": [],
            })
            .to_string(),
            request_ids: "[]".into(),
            verdict: None,
            resolved_at: None,
            resolved_by: None,
        };
        if let Err(e) = self.store.add_alert(&alert).await {
            tracing::error!(error = %e, "cannot raise the audit-tampering alert");
        }
    }

    /// Signs the current tree if it grew since the last checkpoint, and
    /// returns the latest checkpoint. Refuses while the log is halted, and
    /// halts it when the stored log no longer matches the last checkpoint.
    pub async fn sign_now(&self) -> Result<Option<StoredCheckpoint>, CheckpointerError> {
        self.sign_if_grown().await?;
        Ok(self.store.latest_checkpoint().await?)
    }

    /// [`Self::sign_now`] without reading the latest checkpoint back: the
    /// timer's tick, which would otherwise query the store every interval
    /// of an idle gateway for nothing.
    async fn sign_if_grown(&self) -> Result<(), CheckpointerError> {
        let mut state = self.state.lock().await;
        if let Some(reason) = self.sink.halted() {
            return Err(CheckpointerError::Halted(reason));
        }
        if !self.is_elected() {
            return Ok(());
        }
        let head = if self.shared.load(Ordering::Relaxed) {
            // What an earlier signer signed (before a failover) is signed.
            if let Some(latest) = self.store.latest_checkpoint().await? {
                state.signed = state.signed.max(latest.size);
            }
            // Every replica's committed records, not only this one's.
            let size = self.store.audit_size().await?;
            if size <= state.signed {
                return Ok(());
            }
            portcullis_store::TreeHead {
                size,
                root: self.store.audit_head(size).await?,
            }
        } else {
            self.sink.head()
        };
        // Nothing is signed before the stored log has been verified: the tree
        // on disk may be one nobody signed (its checkpoints deleted).
        if head.size > state.signed && self.sink.verified() {
            // O(log n) stored hashes: never sign over a tree that was changed
            // under the last signature.
            if let Err(e) = self.check_latest().await {
                if let CheckpointerError::Mismatch { .. } = e {
                    self.halt(&e.to_string()).await;
                    return Err(CheckpointerError::Halted(e.to_string()));
                }
                return Err(e);
            }
            let signer = self.signer.load_full();
            let checkpoint = Checkpoint {
                origin: signer.origin.clone(),
                size: head.size,
                root: head.root,
            };
            let note = checkpoint::sign(&checkpoint, &signer.key, &signer.origin)
                .map_err(|e| CheckpointerError::Sign(e.to_string()))?;
            let stored = StoredCheckpoint {
                size: head.size,
                time_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as i64,
                note,
            };
            self.store.add_checkpoint(&stored).await?;
            state.signed = head.size;
            self.export(&mut state, &stored.note).await;
        }
        Ok(())
    }

    /// Signs every `interval` while the log grows, until `stop` turns true.
    pub fn spawn(
        self: Arc<Self>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => {
                        // A last checkpoint over everything written before exit.
                        match self.sign_if_grown().await {
                            Ok(_) | Err(CheckpointerError::Halted(_)) => {}
                            Err(e) => tracing::error!(error = %e, "final checkpoint failed"),
                        }
                        return;
                    }
                }
                match self.sign_if_grown().await {
                    // Said once, loudly, when the log was halted.
                    Ok(_) | Err(CheckpointerError::Halted(_)) => {}
                    Err(e) => tracing::error!(error = %e, "checkpoint failed"),
                }
                let mut state = self.state.lock().await;
                self.flush_webhook(&mut state).await;
            }
        })
    }

    async fn export(&self, state: &mut State, note: &str) {
        if let Some(path) = &self.file
            && let Err(e) = append_synced(path, note).await
        {
            tracing::error!(error = %e, path = %path.display(), "cannot export checkpoint to file");
        }
        if self.webhook.is_some() {
            state.webhook_backlog.push(note.to_owned());
            let excess = state.webhook_backlog.len().saturating_sub(WEBHOOK_BACKLOG);
            state.webhook_backlog.drain(..excess);
            self.flush_webhook(state).await;
        }
    }

    /// Sends pending checkpoints to the webhook in order, stopping at the
    /// first failure (retried at the next tick).
    async fn flush_webhook(&self, state: &mut State) {
        let Some((client, uri)) = &self.webhook else {
            return;
        };
        while let Some(note) = state.webhook_backlog.first() {
            let request = http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from(note.clone())));
            let Ok(request) = request else {
                state.webhook_backlog.remove(0);
                continue;
            };
            let sent = tokio::time::timeout(Duration::from_secs(5), client.request(request)).await;
            match sent {
                Ok(Ok(response)) if response.status().is_success() => {
                    state.webhook_backlog.remove(0);
                }
                Ok(Ok(response)) => {
                    tracing::warn!(status = %response.status(), "checkpoint webhook refused the checkpoint; will retry");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "checkpoint webhook unreachable; will retry");
                    return;
                }
                Err(_) => {
                    tracing::warn!("checkpoint webhook timed out; will retry");
                    return;
                }
            }
        }
    }
}

async fn append_synced(path: &PathBuf, note: &str) -> std::io::Result<()> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    file.write_all(note.as_bytes()).await?;
    file.sync_data().await
}
