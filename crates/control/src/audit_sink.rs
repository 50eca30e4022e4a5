//! The audit writer: records are handed over without waiting, and one task
//! appends them to the Merkle log in batches (group commit), one transaction
//! per batch.
//!
//! Handing over never blocks the request: the channel is unbounded because the
//! record of a finished response must never be dropped, and a response body's
//! drop (where records are submitted) cannot wait. Overload is bounded instead by
//! admission: the decode stage refuses new requests with 503 while the backlog is
//! above [`MAX_BACKLOG`], so memory stays bounded and nothing is lost.
//!
//! **Durability.** A record is acknowledged (counted in the published
//! [`TreeHead`], shown by the admin API, covered by the next checkpoint) only
//! after the transaction holding it has committed with `synchronous = FULL`,
//! so a crash loses no acknowledged record.
//!
//! **Fail closed.** When a batch has been failing or stalled for longer than
//! the configured limit, [`AuditSink::writable`] turns false and the pipeline
//! refuses data-plane requests with `audit_unavailable` (routes configured to
//! fail open are served, and their records say so). The records of refused
//! requests stay queued and are written once the store recovers.
//!
//! **Never extend a tampered log.** `serve` starts the writer [held]
//! ([`AuditWriter::start_held`]): records queue but nothing is appended until
//! the stored log has been verified against its signed checkpoints
//! ([`AuditSink::open`]). When that verification, or the checkpointer's check
//! before each signature, finds a mismatch, [`AuditSink::halt`] stops the
//! writer for good: nothing more is appended (queued and later records are
//! discarded and counted in `portcullis_audit_records_discarded_total`),
//! [`AuditSink::writable`] is false on every route (fail-open ones included),
//! no checkpoint is signed, and `/readyz` answers 503 (`audit_halted`).
//!
//! **Intents.** Calls whose durability is `before_forward` queue an intent
//! ([`crate::audit_intent`]; the rules are the gateway's); each batch takes every queued intent into its
//! transaction and answers their callers once it commits. An intent wakes
//! the writer, and ends its linger.
//!
//! **Readiness.** A batch that fails, or hangs past the limit, raises
//! `audit_unwritable` (see [`crate::readiness`]) until a batch commits.
//!
//! **Outages of a shared store** (cluster mode, [`AuditSink::spill_outages_to`]).
//! While the store's heartbeat reports the database down, or a batch fails
//! or hangs meanwhile, the batch is spilled to the outage spool
//! ([`crate::audit_spool::OUTAGE_SPOOL_FILE`], appended and fsynced) instead
//! of being retried in memory: a replica killed during the outage loses no
//! record of a request it served. Once the database answers again the writer
//! appends the spool (skipping what an ambiguous commit already stored) before
//! anything newer, and removes it; a spool left by a replica killed during an
//! outage is appended when it starts again. Spilled records are acknowledged
//! only once appended (the published tree head does not move for them).
//!
//! **Fencing** (cluster mode). Each append carries this replica's fencing
//! token (`Store::fencing_token`, read before the batch is filtered) and
//! the store refuses it (`StoreError::Fenced`) once another replica took
//! this one for dead and took over its intents. The writer then fails
//! closed and waits until the lease task has re-registered the replica;
//! the batch, and every later one, drops the records of the calls the
//! survivor took over (`Store::surrendered`): the survivor records them,
//! so no request id is recorded twice.
//!
//! [held]: Gate::Verifying

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_audit::AuditRecord;
use portcullis_store::{AuditAppender, TreeHead};
use tokio::sync::{mpsc, watch};

use crate::audit_intent::{self, IntentQueue};
use crate::metrics::Metrics;
use crate::pseudonym::Pseudonymizer;
use crate::readiness::NotReady;

/// Backlog above which new requests are refused until the writer catches up.
pub const MAX_BACKLOG: usize = 100_000;
/// Largest batch written in one transaction.
const MAX_BATCH: usize = 2_048;
/// How long the writer waits after the first record of a batch for more to
/// arrive. Requests never wait for the writer, so lingering costs no latency; it
/// turns a commit (and fsync) per request under light load into one per few
/// milliseconds, which is most of the writer's cost.
const LINGER: Duration = Duration::from_millis(5);

/// Whether the writer may append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The stored log is being verified: records queue, nothing is appended.
    Verifying,
    /// The log verified (or is new): records are appended.
    Open,
    /// The log does not match what was signed: nothing is appended again by
    /// this process. The reason is for the operator.
    Halted(String),
}

/// Shared between the sink handles and the writer task.
#[derive(Debug)]
struct Health {
    /// Whether the writer may append; `halted` mirrors `Gate::Halted` for a
    /// lock-free check on the request path.
    gate: watch::Sender<Gate>,
    halted: AtomicBool,
    backlog: AtomicUsize,
    /// When the batch being written was first tried (ms since the epoch), 0
    /// when the writer is idle.
    writing_since_ms: AtomicI64,
    /// The last attempt failed and no attempt has succeeded since.
    failing: AtomicBool,
    fail_closed_after_ms: i64,
    intents: IntentQueue,
    /// Cluster mode: the state directory whose outage spool takes batches
    /// while the shared store does not answer (see the module docs).
    outage_spool: OnceLock<PathBuf>,
}

/// The sending side, cloned into every request.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::UnboundedSender<AuditRecord>,
    health: Arc<Health>,
    head: watch::Receiver<TreeHead>,
    metrics: Arc<Metrics>,
}

impl AuditSink {
    /// Hands a record to the writer.
    pub fn submit(&self, record: AuditRecord) {
        self.health.backlog.fetch_add(1, Ordering::Relaxed);
        self.metrics.audit_queue.inc();
        if self.tx.send(record).is_err() {
            // Only after the writer has stopped, i.e. during process exit.
            tracing::error!("audit writer stopped; record not written");
        }
    }

    /// The intent journal's queue ([`crate::audit_intent`]).
    pub fn intents(&self) -> &IntentQueue {
        &self.health.intents
    }

    /// Cluster mode: from now on, batches the shared store cannot take
    /// (its heartbeat reports it down, or the batch fails or hangs while
    /// it is) are spilled to the outage spool in `state_dir` and appended
    /// once it answers again, rather than retried in memory (module docs).
    /// A spool left there by an earlier run is appended too. Set once.
    pub fn spill_outages_to(&self, state_dir: PathBuf) {
        let _ = self.health.outage_spool.set(state_dir);
    }

    /// Whether the backlog is over the admission limit.
    pub fn overloaded(&self) -> bool {
        self.health.backlog.load(Ordering::Relaxed) > MAX_BACKLOG
    }

    /// Whether the log is being written: false while a batch is failing, or
    /// once one has been stalled for longer than the configured limit. Two relaxed loads; no
    /// clock read unless a write is in progress.
    pub fn writable(&self) -> bool {
        if self.health.halted.load(Ordering::Relaxed) {
            return false;
        }
        let since = self.health.writing_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return true;
        }
        // A write that failed closes at once; one that hangs (a lock held
        // elsewhere, a stuck disk) closes after the limit.
        !self.health.failing.load(Ordering::Relaxed)
            && now_ms() - since <= self.health.fail_closed_after_ms
    }

    /// Why the log was halted, if it was: it does not match its signed
    /// checkpoints, and nothing is appended to it.
    pub fn halted(&self) -> Option<String> {
        if !self.health.halted.load(Ordering::Relaxed) {
            return None;
        }
        match &*self.health.gate.borrow() {
            Gate::Halted(reason) => Some(reason.clone()),
            _ => Some(String::new()),
        }
    }

    /// Whether the stored log has been verified and records are appended
    /// (false while held for verification, and once halted).
    pub fn verified(&self) -> bool {
        *self.health.gate.borrow() == Gate::Open
    }

    /// Lets a held writer append: the stored log verified. No effect once
    /// halted.
    pub fn open(&self) {
        self.health.gate.send_if_modified(|gate| {
            if *gate == Gate::Verifying {
                *gate = Gate::Open;
                true
            } else {
                false
            }
        });
    }

    /// Stops appending for good (see the module docs). The first reason is kept.
    pub fn halt(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let changed = self.health.gate.send_if_modified(|gate| {
            if matches!(gate, Gate::Halted(_)) {
                false
            } else {
                *gate = Gate::Halted(reason.clone());
                true
            }
        });
        if changed {
            self.health.halted.store(true, Ordering::Relaxed);
            self.metrics.audit_log_tampered.set(1);
            self.metrics.readiness.set(NotReady::AuditHalted, true);
            tracing::error!(
                reason = %reason,
                "AUDIT LOG TAMPERED: appending and checkpoint signing stopped; data-plane requests are refused with audit_unavailable; run `portcullis audit verify` to find the first bad index"
            );
        }
    }

    /// The durable tree: every record in it has committed.
    pub fn head(&self) -> TreeHead {
        *self.head.borrow()
    }

    /// A receiver that changes whenever a batch commits.
    pub fn watch_head(&self) -> watch::Receiver<TreeHead> {
        self.head.clone()
    }
}

/// The writer task's handle: [`AuditWriter::finish`] writes what is queued and stops.
#[derive(Debug)]
pub struct AuditWriter {
    task: tokio::task::JoinHandle<Vec<AuditRecord>>,
    stop: watch::Sender<bool>,
    abandon: watch::Sender<bool>,
}

impl AuditWriter {
    /// Starts the writer over `appender`, the only one appending to the log.
    pub fn start(
        appender: AuditAppender,
        fail_closed_after: Duration,
        pseudonymizer: Option<Pseudonymizer>,
        metrics: Arc<Metrics>,
    ) -> (AuditSink, AuditWriter) {
        Self::start_gated(
            appender,
            fail_closed_after,
            pseudonymizer,
            metrics,
            Gate::Open,
        )
    }

    /// [`AuditWriter::start`], but holding every record until
    /// [`AuditSink::open`] (or discarding them after [`AuditSink::halt`]).
    pub fn start_held(
        appender: AuditAppender,
        fail_closed_after: Duration,
        pseudonymizer: Option<Pseudonymizer>,
        metrics: Arc<Metrics>,
    ) -> (AuditSink, AuditWriter) {
        Self::start_gated(
            appender,
            fail_closed_after,
            pseudonymizer,
            metrics,
            Gate::Verifying,
        )
    }

    fn start_gated(
        appender: AuditAppender,
        fail_closed_after: Duration,
        pseudonymizer: Option<Pseudonymizer>,
        metrics: Arc<Metrics>,
        gate: Gate,
    ) -> (AuditSink, AuditWriter) {
        let (tx, rx) = mpsc::unbounded_channel();
        let health = Arc::new(Health {
            gate: watch::Sender::new(gate),
            halted: AtomicBool::new(false),
            backlog: AtomicUsize::new(0),
            writing_since_ms: AtomicI64::new(0),
            failing: AtomicBool::new(false),
            fail_closed_after_ms: fail_closed_after.as_millis() as i64,
            intents: IntentQueue::new(fail_closed_after),
            outage_spool: OnceLock::new(),
        });
        let (head_tx, head_rx) = watch::channel(appender.head());
        let (stop, stopped) = watch::channel(false);
        let (abandon, abandoned) = watch::channel(false);
        let task = tokio::spawn(run(
            appender,
            pseudonymizer,
            rx,
            Control {
                stop: stopped,
                abandon: abandoned,
            },
            health.clone(),
            head_tx,
            metrics.clone(),
        ));
        (
            AuditSink {
                tx,
                health,
                head: head_rx,
                metrics,
            },
            AuditWriter {
                task,
                stop,
                abandon,
            },
        )
    }

    /// Writes every record submitted so far, then stops the writer. Call it after
    /// the listeners have drained.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let left = self.task.await.unwrap_or_default();
        if !left.is_empty() {
            tracing::error!(
                records = left.len(),
                "audit records not written: the audit log was not verified before shutdown"
            );
        }
    }

    /// Writes what is queued until `deadline`, then stops, and returns what
    /// was not committed by then: the batch being written (its transaction
    /// abandoned) and everything queued behind it, or, when the stored log
    /// was still being verified, everything queued. The caller spills them
    /// (`crate::audit_spool`) so shutdown is bounded and nothing is lost.
    ///
    /// An abandoned transaction is rolled back, unless its commit had already
    /// reached SQLite; then its records are both in the log and returned, and
    /// the replay skips them ([`crate::audit_spool::replay`]).
    pub async fn finish_by(self, deadline: tokio::time::Instant) -> Vec<AuditRecord> {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if let Ok(joined) = tokio::time::timeout_at(deadline, &mut task).await {
            return joined.unwrap_or_default();
        }
        let _ = self.abandon.send(true);
        task.await.unwrap_or_default()
    }
}

/// What [`AuditWriter`] tells the task: stop once the queue is written, or
/// abandon the batch being written now.
struct Control {
    stop: watch::Receiver<bool>,
    abandon: watch::Receiver<bool>,
}

async fn run(
    mut appender: AuditAppender,
    pseudonymizer: Option<Pseudonymizer>,
    mut rx: mpsc::UnboundedReceiver<AuditRecord>,
    control: Control,
    health: Arc<Health>,
    head: watch::Sender<TreeHead>,
    metrics: Arc<Metrics>,
) -> Vec<AuditRecord> {
    let Control {
        mut stop,
        mut abandon,
    } = control;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut gate = health.gate.subscribe();
    // Whether the outage spool may hold records: at first, whatever an
    // earlier run left there.
    let mut spilled = true;
    loop {
        // The outage spool goes first once the store answers (and the log
        // is open), so its records are not behind newer ones for long.
        if spilled && let Some(dir) = health.outage_spool.get() {
            spilled = !(*gate.borrow() == Gate::Open
                && !appender.store().health().is_down()
                && append_outage_spool(
                    &mut appender,
                    pseudonymizer.as_ref(),
                    dir,
                    &head,
                    &metrics,
                )
                .await);
        }
        // Whatever arrived while the previous batch was committing forms the next batch.
        let mut intent = false;
        let retry_spool = async {
            if spilled && health.outage_spool.get().is_some() {
                tokio::time::sleep(OUTAGE_RETRY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let mut stopping = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n == 0,
            () = health.intents.queued() => { intent = true; false }
            _ = stop.changed() => true,
            () = retry_spool => continue,
        };
        if !stopping && batch.len() < MAX_BATCH {
            // A caller waits on an intent: no linger, or not past the
            // intent's arrival (what queues meanwhile forms the next batch).
            if !intent {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    () = health.intents.queued() => {}
                    _ = stop.changed() => stopping = true,
                }
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
        // Held while the log is verified; on a stop before the verdict, the
        // queue is handed back (to be spilled) rather than appended to a log
        // not known good.
        let open = loop {
            match &*gate.borrow_and_update() {
                Gate::Open => break true,
                Gate::Halted(_) => break false,
                Gate::Verifying if stopping => {
                    return take_rest(&mut batch, &mut rx, &health, &metrics);
                }
                Gate::Verifying => {}
            }
            tokio::select! {
                r = gate.changed() => if r.is_err() { break false },
                _ = stop.changed() => stopping = true,
            }
            // Records that arrived meanwhile join the batch, within its cap.
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
        };
        if !open {
            discard(&mut batch, &health, &metrics);
            if stopping {
                while let Ok(record) = rx.try_recv() {
                    batch.push(record);
                }
                discard(&mut batch, &health, &metrics);
                return Vec::new();
            }
            continue;
        }
        let written = write(
            &mut appender,
            pseudonymizer.as_ref(),
            &mut batch,
            &health,
            &head,
            &metrics,
            &mut abandon,
        )
        .await;
        match written {
            Written::Committed => {}
            Written::Spilled => spilled = true,
            Written::Abandoned => return take_rest(&mut batch, &mut rx, &health, &metrics),
        }
        if stopping {
            return Vec::new();
        }
    }
}

/// The batch and everything still queued, handed back uncommitted.
fn take_rest(
    batch: &mut Vec<AuditRecord>,
    rx: &mut mpsc::UnboundedReceiver<AuditRecord>,
    health: &Health,
    metrics: &Metrics,
) -> Vec<AuditRecord> {
    while let Ok(record) = rx.try_recv() {
        batch.push(record);
    }
    let n = batch.len();
    health.backlog.fetch_sub(n, Ordering::Relaxed);
    metrics.audit_queue.dec_by(n as i64);
    std::mem::take(batch)
}

/// Resolves once the writer is told to abandon its batch; never if the
/// handle is gone without saying so.
async fn abandoned(abandon: &mut watch::Receiver<bool>) {
    if abandon.wait_for(|a| *a).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What became of a batch.
enum Written {
    /// It committed (or was discarded: the log is halted).
    Committed,
    /// The shared store did not take it; it is in the outage spool.
    Spilled,
    /// The writer was told to abandon it; it is left as it is.
    Abandoned,
}

/// How often the writer tries the outage spool again while it holds records
/// and nothing else wakes the writer.
const OUTAGE_RETRY: Duration = Duration::from_millis(500);

/// How often a batch's attempt checks the store's heartbeat, to give up on
/// a database that went away and spill instead.
const OUTAGE_POLL: Duration = Duration::from_millis(100);

/// How far back into the log the outage spool's append looks for records an
/// ambiguous commit (one that reached the database but whose answer was
/// lost) already stored, beyond the spool's own length: other replicas
/// append meanwhile.
const OUTAGE_OVERLAP: u32 = 4_096;

/// Appends `batch`, retrying until it commits or the writer is told to
/// abandon it; in cluster mode, spills it while the shared store does not
/// answer (see the module docs).
async fn write(
    appender: &mut AuditAppender,
    pseudonymizer: Option<&Pseudonymizer>,
    batch: &mut Vec<AuditRecord>,
    health: &Health,
    head: &watch::Sender<TreeHead>,
    metrics: &Metrics,
    abandon: &mut watch::Receiver<bool>,
) -> Written {
    // Dropped uncommitted (abandoned, halted, spilled), their callers are refused.
    let (intents, durable) = health.intents.take();
    // Cluster mode: the token is read before the batch is filtered, so an
    // append at it has dropped every record a survivor took over.
    let store = appender.store().clone();
    let mut token = store.fencing_token();
    if token.is_some() {
        drop_surrendered(batch, &store, health, metrics);
    }
    appender.fence_at(token);
    let mut n = batch.len();
    if n == 0 && intents.is_empty() {
        return Written::Committed;
    }
    let outage_spool = health.outage_spool.get();
    let store_health = appender.store().health().clone();
    if let Some(dir) = outage_spool
        && store_health.is_down()
        && spill_outage(dir, batch, health, metrics)
    {
        return Written::Spilled;
    }
    health.writing_since_ms.store(now_ms(), Ordering::Relaxed);
    // Spilled records are kept as submitted: the pseudonymizer applies when
    // they are appended.
    // Kept too while this replica may be fenced: the batch is filtered
    // again then, before it is pseudonymized again.
    let mut raw = ((outage_spool.is_some() || token.is_some()) && pseudonymizer.is_some())
        .then(|| batch.clone());
    // Once per batch, before the first attempt: a retry appends the same leaves.
    let mut personal = pseudonymizer.map_or_else(Vec::new, |p| p.apply(batch, now_ms()));
    let spill =
        |batch: &mut Vec<AuditRecord>, raw: &Option<Vec<AuditRecord>>| match (outage_spool, raw) {
            (Some(dir), Some(raw)) => {
                let mut raw = raw.clone();
                let spilled = spill_outage(dir, &mut raw, health, metrics);
                if spilled {
                    batch.clear();
                }
                spilled
            }
            (Some(dir), None) => spill_outage(dir, batch, health, metrics),
            (None, _) => false,
        };
    let mut delay = Duration::from_millis(10);
    // A failed write is retried until it succeeds: dropping records is not an
    // option. Meanwhile requests are refused (fail closed) once the failure has
    // lasted longer than the limit, and on every route once the backlog is full.
    let stall_limit = Duration::from_millis(health.fail_closed_after_ms.max(0) as u64);
    let new_head = loop {
        // An attempt that hangs (a lock held elsewhere, a stuck disk) makes
        // the process not ready once it outlasts the limit, as it makes the
        // log unwritable for the pipeline; it is not abandoned.
        let result = {
            let attempt = appender.append_batch(batch, &personal, &intents);
            tokio::pin!(attempt);
            let stall = tokio::time::sleep(stall_limit);
            tokio::pin!(stall);
            let mut stalled = false;
            let mut poll = tokio::time::interval(OUTAGE_POLL);
            loop {
                tokio::select! {
                    // A finished attempt wins over a timer that fired with it.
                    biased;
                    result = &mut attempt => break result,
                    _ = &mut stall, if !stalled => {
                        stalled = true;
                        metrics.readiness.set(NotReady::AuditUnwritable, true);
                    }
                    _ = abandoned(abandon) => return Written::Abandoned,
                    // The database went away under the attempt: give it up
                    // (dropped, its transaction is rolled back, or, if its
                    // commit got through, the spool's append skips it).
                    _ = poll.tick(), if outage_spool.is_some() => {
                        if store_health.is_down() {
                            break Err(portcullis_store::StoreError::Invalid(
                                "the shared store does not answer".into(),
                            ));
                        }
                    }
                }
            }
        };
        match result {
            Ok(new_head) => break new_head,
            Err(_) if health.halted.load(Ordering::Relaxed) => {
                health.failing.store(false, Ordering::Relaxed);
                health.writing_since_ms.store(0, Ordering::Relaxed);
                discard(batch, health, metrics);
                return Written::Committed;
            }
            Err(portcullis_store::StoreError::Fenced) => {
                // Taken for dead while alive: nothing is appended (and the
                // data plane refuses, failing closed) until the lease task
                // has re-registered this replica; then the batch is
                // filtered again at the new token.
                health.failing.store(true, Ordering::Relaxed);
                metrics.readiness.set(NotReady::AuditUnwritable, true);
                tracing::warn!(
                    records = n,
                    "audit batch refused: this replica was fenced off (taken for dead); waiting to re-register"
                );
                while store.fencing_token() == token {
                    tokio::select! {
                        _ = tokio::time::sleep(FENCE_POLL) => {}
                        _ = abandoned(abandon) => return Written::Abandoned,
                    }
                }
                token = store.fencing_token();
                if let Some(raw) = &raw {
                    batch.clone_from(raw);
                }
                drop_surrendered(batch, &store, health, metrics);
                n = batch.len();
                raw = raw.is_some().then(|| batch.clone());
                personal = pseudonymizer.map_or_else(Vec::new, |p| p.apply(batch, now_ms()));
                appender.fence_at(token);
            }
            Err(e) if spill(batch, &raw) => {
                tracing::warn!(error = %e, records = n, "audit batch not taken by the shared store; spilled to the outage spool");
                return Written::Spilled;
            }
            Err(e) => {
                health.failing.store(true, Ordering::Relaxed);
                metrics.readiness.set(NotReady::AuditUnwritable, true);
                metrics.audit_failures.inc();
                tracing::error!(error = %e, records = n, "audit batch write failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = abandoned(abandon) => return Written::Abandoned,
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    };
    health.failing.store(false, Ordering::Relaxed);
    health.writing_since_ms.store(0, Ordering::Relaxed);
    metrics.readiness.set(NotReady::AuditUnwritable, false);
    health.backlog.fetch_sub(n, Ordering::Relaxed);
    head.send_replace(new_head);
    audit_intent::acknowledge(durable);
    metrics.audit_queue.dec_by(n as i64);
    metrics.audit_written.inc_by(n as u64);
    batch.clear();
    Written::Committed
}

/// How often a fenced writer checks whether its replica has re-registered.
const FENCE_POLL: Duration = Duration::from_millis(50);

/// Cluster mode: drops the records of calls whose intent a survivor took
/// over when it took this replica for dead (the survivor records them), so
/// no request id is recorded twice; counts them out of the backlog.
fn drop_surrendered(
    batch: &mut Vec<AuditRecord>,
    store: &portcullis_store::Store,
    health: &Health,
    metrics: &Metrics,
) {
    let before = batch.len();
    batch.retain(|r| !store.surrendered(&r.request_id));
    let dropped = before - batch.len();
    if dropped > 0 {
        health.backlog.fetch_sub(dropped, Ordering::Relaxed);
        metrics.audit_queue.dec_by(dropped as i64);
        tracing::warn!(
            records = dropped,
            "audit records dropped: another replica took their calls over while this one was taken for dead, and recorded them"
        );
    }
}

/// Spills `batch` to the outage spool in `dir`; false (the batch kept, to be
/// retried in memory) when the spool cannot be written either.
fn spill_outage(
    dir: &std::path::Path,
    batch: &mut Vec<AuditRecord>,
    health: &Health,
    metrics: &Metrics,
) -> bool {
    if let Err(e) = crate::audit_spool::spill_to(dir, crate::audit_spool::OUTAGE_SPOOL_FILE, batch)
    {
        tracing::error!(error = %e, records = batch.len(), "cannot spill audit records to the outage spool; retrying them in memory");
        return false;
    }
    let n = batch.len();
    health.failing.store(false, Ordering::Relaxed);
    health.writing_since_ms.store(0, Ordering::Relaxed);
    // The records are durable on this replica's disk: the log is not
    // unwritable, its database is away (`store_unavailable` says so).
    metrics.readiness.set(NotReady::AuditUnwritable, false);
    health.backlog.fetch_sub(n, Ordering::Relaxed);
    metrics.audit_queue.dec_by(n as i64);
    batch.clear();
    true
}

/// Appends what the outage spool in `dir` holds, oldest first, skipping
/// records already at the end of the log, then removes it. True when the
/// spool is empty afterwards; false (kept, retried later) when the store
/// failed again.
async fn append_outage_spool(
    appender: &mut AuditAppender,
    pseudonymizer: Option<&Pseudonymizer>,
    dir: &std::path::Path,
    head: &watch::Sender<TreeHead>,
    metrics: &Metrics,
) -> bool {
    use crate::audit_spool::{OUTAGE_SPOOL_FILE, read_from};
    let mut records = match read_from(dir, OUTAGE_SPOOL_FILE) {
        Ok(records) => records,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the audit outage spool; retrying");
            return false;
        }
    };
    if !records.is_empty() {
        let overlap = u32::try_from(records.len())
            .unwrap_or(u32::MAX)
            .saturating_add(OUTAGE_OVERLAP);
        let present: std::collections::HashSet<(String, i64)> = match appender
            .store()
            .audit_tail(overlap)
            .await
        {
            Ok(tail) => tail
                .into_iter()
                .map(|r| (r.request_id, r.time_ms))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the audit log to append the outage spool; retrying");
                return false;
            }
        };
        // The token before the filter (see `write`).
        let store = appender.store().clone();
        appender.fence_at(store.fencing_token());
        records.retain(|r| {
            !present.contains(&(r.request_id.clone(), r.time_ms))
                && !store.surrendered(&r.request_id)
        });
        let total = records.len();
        for chunk in records.chunks_mut(MAX_BATCH) {
            let personal = pseudonymizer.map_or_else(Vec::new, |p| p.apply(chunk, now_ms()));
            match appender.append_batch(chunk, &personal, &[]).await {
                Ok(new_head) => {
                    head.send_replace(new_head);
                    metrics.audit_written.inc_by(chunk.len() as u64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot append the audit outage spool yet; retrying");
                    return false;
                }
            }
        }
        tracing::info!(
            records = total,
            "audit records spilled during a store outage appended to the log"
        );
    }
    let path = dir.join(OUTAGE_SPOOL_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            // Appended already: a retry skips them as present.
            tracing::error!(file = %path.display(), error = %e, "cannot remove the appended audit outage spool");
            false
        }
    }
}

/// Drops records the writer will not append (the log is halted, or was never
/// verified before shutdown), counting them.
fn discard(batch: &mut Vec<AuditRecord>, health: &Health, metrics: &Metrics) {
    let n = batch.len();
    if n == 0 {
        return;
    }
    health.backlog.fetch_sub(n, Ordering::Relaxed);
    metrics.audit_queue.dec_by(n as i64);
    metrics.audit_discarded.inc_by(n as u64);
    tracing::error!(
        records = n,
        "audit records not written: the audit log is halted (or was not verified before shutdown)"
    );
    batch.clear();
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}
