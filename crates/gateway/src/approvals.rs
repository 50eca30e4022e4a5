//! Just-in-time approvals: a human in the loop for `@obligation("approval")`,
//! and for the writes of an agent whose risk grade is `approve_writes`
//! (behavioral analytics).
//!
//! When the policies that allowed a request all ask for approval and no grant
//! covers it, or analytics holds the agent's writes, the gateway opens a
//! **ticket** bound to the exact call: agent,
//! delegating user, action, route, path, SHA-256 of the body and the policy
//! version, plus a random nonce (the ticket id) and an expiry. A human
//! approves or denies it (`portcullis approvals approve ID`). An approval is
//! single use: the same call made again consumes it, once; a call that
//! differs in any bound field (`transfer(100000)` instead of `transfer(100)`)
//! matches no approval and opens a ticket of its own.
//!
//! Tickets live in memory (a mutex never held across IO or an await), so the
//! request path never waits on the disk; every change is written to the store
//! in the background so tickets survive a restart and can be listed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_store::{ApprovalRow, Store};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

/// How long a ticket waits for a decision.
pub const PENDING_TTL: Duration = Duration::from_secs(15 * 60);
/// How long an approval may wait to be used.
pub const APPROVED_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest `Prefer: wait=N` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Most live tickets kept; past it, the oldest pending ones lapse first.
const MAX_TICKETS: usize = 10_000;

/// Who required a human's approval of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredBy {
    /// A policy's `@obligation("approval")`.
    Policy,
    /// Behavioral analytics: the agent's risk grade holds its writes.
    Analytics,
}

impl RequiredBy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequiredBy::Policy => "policy",
            RequiredBy::Analytics => "analytics",
        }
    }

    fn parse(s: &str) -> RequiredBy {
        match s {
            "analytics" => RequiredBy::Analytics,
            _ => RequiredBy::Policy,
        }
    }
}

/// The call an approval is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallBinding {
    /// The agent.
    pub agent: String,
    /// The delegating user, if any.
    pub user: Option<String>,
    /// The HTTP method (`tools/call` for an MCP tool call).
    pub action: String,
    /// The route (`<route>/<tool>` for an MCP tool call).
    pub resource: String,
    /// The request path.
    pub path: String,
    /// SHA-256 (hex) of the body (of the tool's name and arguments, for an
    /// MCP tool call).
    pub body_sha256: String,
    /// The policy version that decided the call.
    pub policy_version: u64,
    /// The policy that asked (for `RequiredBy::Analytics`, the one that
    /// allowed the call).
    pub policy_id: String,
    /// Who required the approval. Not part of the call: a human who
    /// approved this exact call approved it whoever asked.
    pub required_by: RequiredBy,
}

impl CallBinding {
    /// One digest over every bound field, length-prefixed.
    fn key(&self) -> String {
        let mut h = Sha256::new();
        let version = self.policy_version.to_string();
        for part in [
            self.agent.as_str(),
            self.user.as_deref().unwrap_or("\u{0}"),
            &self.action,
            &self.resource,
            &self.path,
            &self.body_sha256,
            &version,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// A ticket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for a human.
    Pending,
    /// Approved, not used yet.
    Approved,
    /// Denied.
    Denied,
    /// Approved and used by the call it was bound to.
    Used,
    /// Lapsed without a decision, or approved and never used.
    Expired,
}

impl Status {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Used => "used",
            Status::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "used" => Status::Used,
            _ => Status::Expired,
        }
    }
}

/// One ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The id: 128 random bits, hex. Also the approval's nonce.
    pub id: String,
    /// The call.
    pub binding: CallBinding,
    /// Created, ms since the epoch.
    pub created_ms: i64,
    /// Lapses, ms since the epoch.
    pub expires_ms: i64,
    /// State.
    pub status: Status,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_ms: Option<i64>,
    /// The grant an approval with a TTL created.
    pub grant_id: Option<String>,
}

impl Ticket {
    fn row(&self) -> ApprovalRow {
        ApprovalRow {
            id: self.id.clone(),
            agent: self.binding.agent.clone(),
            delegated_user: self.binding.user.clone(),
            action: self.binding.action.clone(),
            resource: self.binding.resource.clone(),
            path: self.binding.path.clone(),
            body_sha256: self.binding.body_sha256.clone(),
            policy_version: self.binding.policy_version,
            policy_id: self.binding.policy_id.clone(),
            required_by: self.binding.required_by.as_str().to_string(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            status: self.status.as_str().to_string(),
            decided_by: self.decided_by.clone(),
            decided_ms: self.decided_ms,
            grant_id: self.grant_id.clone(),
        }
    }

    fn from_row(row: ApprovalRow) -> Ticket {
        Ticket {
            id: row.id,
            binding: CallBinding {
                agent: row.agent,
                user: row.delegated_user,
                action: row.action,
                resource: row.resource,
                path: row.path,
                body_sha256: row.body_sha256,
                policy_version: row.policy_version,
                policy_id: row.policy_id,
                required_by: RequiredBy::parse(&row.required_by),
            },
            created_ms: row.created_ms,
            expires_ms: row.expires_ms,
            status: Status::parse(&row.status),
            decided_by: row.decided_by,
            decided_ms: row.decided_ms,
            grant_id: row.grant_id,
        }
    }
}

/// What the gate says about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// An approval for exactly this call was consumed: proceed.
    Approved(Ticket),
    /// No approval yet: this ticket waits for one (new or already open).
    Pending(Ticket, bool),
    /// A human denied this call.
    Denied(Ticket),
}

/// Why a decision could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    /// No such ticket (or it lapsed).
    #[error("no live approval ticket `{0}`")]
    NotFound(String),
    /// It was decided already.
    #[error("approval ticket `{0}` is already {1}")]
    Decided(String, &'static str),
}

#[derive(Debug, Default)]
struct Tickets {
    by_id: HashMap<String, Ticket>,
    by_key: HashMap<String, String>,
}

/// The approval desk.
#[derive(Debug)]
pub struct Approvals {
    /// Every change, in order, to the one task that writes tickets: writes
    /// must land in the order they happened, or a used approval could be
    /// stored as approved and count again after a restart.
    writes: tokio::sync::mpsc::UnboundedSender<ApprovalRow>,
    tickets: Mutex<Tickets>,
    /// Bumped on every decision, so waiting requests wake up.
    decided: watch::Sender<u64>,
    /// Events for humans (new tickets, break-glass) go here: the webhook
    /// task, when configured.
    notify: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl Approvals {
    /// Loads the live tickets from the store.
    pub async fn load(
        store: Store,
        notify: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
    ) -> Result<Arc<Self>, portcullis_store::StoreError> {
        let mut tickets = Tickets::default();
        for row in store.live_approvals(now_ms()).await? {
            let ticket = Ticket::from_row(row);
            tickets
                .by_key
                .insert(ticket.binding.key(), ticket.id.clone());
            tickets.by_id.insert(ticket.id.clone(), ticket);
        }
        let (writes, mut queue) = tokio::sync::mpsc::unbounded_channel::<ApprovalRow>();
        tokio::spawn(async move {
            while let Some(row) = queue.recv().await {
                if let Err(e) = store.put_approval(&row).await {
                    tracing::error!(ticket = %row.id, error = %e, "cannot store an approval ticket");
                }
            }
        });
        Ok(Arc::new(Approvals {
            writes,
            tickets: Mutex::new(tickets),
            decided: watch::channel(0).0,
            notify,
        }))
    }

    /// Queues the ticket's new state for the writer. Callers hold the tickets
    /// mutex, so changes are queued, and written, in the order they happened.
    fn persist(&self, ticket: &Ticket) {
        let _ = self.writes.send(ticket.row());
    }

    /// The request-path check: consumes a matching approval, or returns the
    /// open (or a new) ticket for the call. No IO.
    pub fn gate(&self, binding: CallBinding) -> Gate {
        let now = now_ms();
        let key = binding.key();
        let gate = {
            let Ok(mut t) = self.tickets.lock() else {
                // A poisoned desk approves nothing.
                return Gate::Denied(new_ticket(binding, now));
            };
            let existing = t.by_key.get(&key).cloned();
            let (gate, changed) = match existing.and_then(|id| t.by_id.get(&id).cloned()) {
                Some(mut ticket) if ticket.expires_ms > now => match ticket.status {
                    Status::Approved => {
                        ticket.status = Status::Used;
                        t.by_key.remove(&key);
                        t.by_id.remove(&ticket.id);
                        (Gate::Approved(ticket.clone()), Some(ticket))
                    }
                    Status::Pending => (Gate::Pending(ticket, false), None),
                    Status::Denied => (Gate::Denied(ticket), None),
                    Status::Used | Status::Expired => {
                        let fresh = new_ticket(binding, now);
                        insert(&mut t, key, fresh.clone());
                        (Gate::Pending(fresh.clone(), true), Some(fresh))
                    }
                },
                _ => {
                    let fresh = new_ticket(binding, now);
                    insert(&mut t, key, fresh.clone());
                    (Gate::Pending(fresh.clone(), true), Some(fresh))
                }
            };
            // Queued under the lock, so the writer sees changes in the order
            // they happened (a send is never IO and never waits).
            if let Some(ticket) = &changed {
                self.persist(ticket);
            }
            gate
        };
        if let Gate::Pending(ticket, true) = &gate {
            self.announce(serde_json::json!({
                "event": "approval.requested",
                "ticket": ticket.to_json(),
            }));
        }
        gate
    }

    /// Waits (up to `wait`) for ticket `id` to be decided; then gates the
    /// call again, so an approval is consumed exactly once.
    pub async fn wait(&self, binding: CallBinding, id: &str, wait: Duration) -> Gate {
        let mut decided = self.decided.subscribe();
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let status = self
                .tickets
                .lock()
                .ok()
                .and_then(|t| t.by_id.get(id).map(|t| t.status));
            if status != Some(Status::Pending) {
                return self.gate(binding);
            }
            if tokio::time::timeout_at(deadline, decided.changed())
                .await
                .is_err()
            {
                return self.gate(binding);
            }
        }
    }

    /// Approves or denies ticket `id`. An approval lasts [`APPROVED_TTL`].
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        grant_id: Option<String>,
    ) -> Result<Ticket, DecideError> {
        let now = now_ms();
        let ticket = {
            let mut t = self
                .tickets
                .lock()
                .map_err(|_| DecideError::NotFound(id.into()))?;
            let ticket = t
                .by_id
                .get_mut(id)
                .filter(|t| t.expires_ms > now)
                .ok_or_else(|| DecideError::NotFound(id.into()))?;
            if ticket.status != Status::Pending {
                return Err(DecideError::Decided(id.into(), ticket.status.as_str()));
            }
            ticket.status = if approve {
                Status::Approved
            } else {
                Status::Denied
            };
            ticket.decided_by = Some(by.to_string());
            ticket.decided_ms = Some(now);
            ticket.grant_id = grant_id;
            if approve {
                ticket.expires_ms = now + APPROVED_TTL.as_millis() as i64;
            }
            let ticket = ticket.clone();
            self.persist(&ticket);
            ticket
        };
        self.decided.send_modify(|n| *n += 1);
        Ok(ticket)
    }

    /// Sends an event to the webhook, if one is configured. A full queue
    /// drops the event (it is in the audit log and the server log anyway),
    /// never blocks the caller.
    pub fn announce(&self, event: serde_json::Value) {
        if let Some(notify) = &self.notify {
            let _ = notify.try_send(event);
        }
    }

    /// A live ticket.
    pub fn get(&self, id: &str) -> Option<Ticket> {
        let now = now_ms();
        self.tickets
            .lock()
            .ok()?
            .by_id
            .get(id)
            .filter(|t| t.expires_ms > now)
            .cloned()
    }

    /// Live tickets, oldest first.
    pub fn list(&self) -> Vec<Ticket> {
        let now = now_ms();
        let Ok(t) = self.tickets.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Ticket> = t
            .by_id
            .values()
            .filter(|t| t.expires_ms > now)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        out
    }
}

impl Ticket {
    /// The JSON shape of the admin API and the webhook.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "status": self.status.as_str(),
            "agent": self.binding.agent,
            "delegated_user": self.binding.user,
            "action": self.binding.action,
            "resource": self.binding.resource,
            "path": self.binding.path,
            "body_sha256": self.binding.body_sha256,
            "policy_version": self.binding.policy_version,
            "policy_id": self.binding.policy_id,
            "required_by": self.binding.required_by.as_str(),
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "decided_by": self.decided_by,
            "decided_ms": self.decided_ms,
            "grant_id": self.grant_id,
        })
    }
}

/// How many new tickets may wait for the webhook.
pub const WEBHOOK_QUEUE: usize = 256;

/// POSTs each event (`approval.requested` with the ticket,
/// `breakglass.opened`) to `url` until the sender side closes. A failed
/// delivery is logged and not retried: the ticket or grant itself is safe in
/// the store and listed by the CLI.
pub async fn webhook(
    mut events: tokio::sync::mpsc::Receiver<serde_json::Value>,
    url: http::Uri,
    poster: crate::otlp::Poster,
) {
    let headers = crate::config::SecretHeaders(Vec::new());
    while let Some(body) = events.recv().await {
        if let Err(e) = poster
            .post(
                &url,
                "application/json",
                &headers,
                bytes::Bytes::from(body.to_string()),
                Duration::from_secs(10),
            )
            .await
        {
            tracing::warn!(event = %body["event"], error = %e, "approvals webhook delivery failed");
        }
    }
}

fn new_ticket(binding: CallBinding, now: i64) -> Ticket {
    Ticket {
        id: hex::encode(rand::random::<[u8; 16]>()),
        binding,
        created_ms: now,
        expires_ms: now + PENDING_TTL.as_millis() as i64,
        status: Status::Pending,
        decided_by: None,
        decided_ms: None,
        grant_id: None,
    }
}

fn insert(t: &mut Tickets, key: String, ticket: Ticket) {
    let now = now_ms();
    if t.by_id.len() >= MAX_TICKETS {
        // Lapsed tickets go first; if none, the oldest.
        t.by_id.retain(|_, v| v.expires_ms > now);
        if t.by_id.len() >= MAX_TICKETS
            && let Some(oldest) = t
                .by_id
                .values()
                .min_by_key(|v| v.created_ms)
                .map(|v| v.id.clone())
        {
            t.by_id.remove(&oldest);
        }
        let live: std::collections::HashSet<&String> = t.by_id.keys().collect();
        let keep: HashMap<String, String> = t
            .by_key
            .iter()
            .filter(|(_, id)| live.contains(id))
            .map(|(k, id)| (k.clone(), id.clone()))
            .collect();
        t.by_key = keep;
    }
    t.by_key.insert(key, ticket.id.clone());
    t.by_id.insert(ticket.id.clone(), ticket);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: &str) -> CallBinding {
        CallBinding {
            agent: "pay-bot".into(),
            user: Some("alice".into()),
            action: "POST".into(),
            resource: "bank".into(),
            path: "/bank/transfer".into(),
            body_sha256: hex::encode(Sha256::digest(body)),
            policy_version: 1,
            policy_id: "transfers".into(),
            required_by: RequiredBy::Policy,
        }
    }

    #[tokio::test]
    async fn an_approval_is_bound_to_its_call_and_used_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let desk = Approvals::load(store.clone(), None).await.unwrap();
        let Gate::Pending(ticket, true) = desk.gate(call("amount=100")) else {
            panic!("a new ticket was expected")
        };
        // Asking again finds the same open ticket.
        assert_eq!(
            desk.gate(call("amount=100")),
            Gate::Pending(ticket.clone(), false)
        );
        desk.decide(&ticket.id, true, "bob", None).unwrap();
        assert_eq!(
            desk.decide(&ticket.id, false, "eve", None),
            Err(DecideError::Decided(ticket.id.clone(), "approved"))
        );
        // Another amount matches nothing and opens its own ticket.
        let Gate::Pending(other, true) = desk.gate(call("amount=100000")) else {
            panic!("a different call must not use the approval")
        };
        assert_ne!(other.id, ticket.id);
        // The approved call proceeds once; the second time it needs a new ticket.
        let Gate::Approved(used) = desk.gate(call("amount=100")) else {
            panic!("the approved call was expected to proceed")
        };
        assert_eq!(
            (used.id.as_str(), used.status),
            (ticket.id.as_str(), Status::Used)
        );
        assert!(
            matches!(desk.gate(call("amount=100")), Gate::Pending(t, true) if t.id != ticket.id)
        );
        // A denial is final for its call.
        desk.decide(&other.id, false, "bob", None).unwrap();
        assert!(matches!(desk.gate(call("amount=100000")), Gate::Denied(_)));
        // A different policy version is a different call.
        let mut newer = call("amount=100000");
        newer.policy_version = 2;
        assert!(matches!(desk.gate(newer), Gate::Pending(_, true)));

        // The store caught up in the background, in order: the used and the
        // denied tickets are not live, and a restart reloads only the two
        // pending ones (never the used approval).
        let mut live = Vec::new();
        for _ in 0..100 {
            live = store.live_approvals(now_ms()).await.unwrap();
            let settled = live.len() == 2
                && live
                    .iter()
                    .all(|t| t.status == "pending" && t.id != ticket.id);
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            live.iter()
                .all(|t| t.status == "pending" && t.id != ticket.id),
            "{live:?}"
        );
        let reloaded = Approvals::load(store, None).await.unwrap();
        assert_eq!(reloaded.list().len(), 2, "{:?}", reloaded.list());
        assert!(
            matches!(reloaded.gate(call("amount=100")), Gate::Pending(t, false) if t.id != ticket.id)
        );
    }

    #[tokio::test]
    async fn a_waiting_call_wakes_on_the_decision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let desk = Approvals::load(store, None).await.unwrap();
        let Gate::Pending(ticket, _) = desk.gate(call("x")) else {
            panic!()
        };
        let waiter = {
            let desk = desk.clone();
            let id = ticket.id.clone();
            tokio::spawn(async move { desk.wait(call("x"), &id, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        desk.decide(&ticket.id, true, "bob", None).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(waiter.await.unwrap(), Gate::Approved(_)));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Nobody decides: the wait ends at its limit, still pending.
        let Gate::Pending(t2, _) = desk.gate(call("y")) else {
            panic!()
        };
        let gate = desk
            .wait(call("y"), &t2.id, Duration::from_millis(100))
            .await;
        assert!(matches!(gate, Gate::Pending(t, false) if t.id == t2.id));
    }

    #[tokio::test]
    async fn a_ticket_says_who_required_it_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("db")).await.unwrap();
        let desk = Approvals::load(store.clone(), None).await.unwrap();
        let mut held = call("x");
        held.required_by = RequiredBy::Analytics;
        let Gate::Pending(ticket, true) = desk.gate(held.clone()) else {
            panic!("a new ticket was expected")
        };
        assert_eq!(ticket.to_json()["required_by"], "analytics");
        // The same call asked for by a policy finds the same ticket: a
        // human approves a call, whoever asked.
        assert!(matches!(desk.gate(call("x")), Gate::Pending(t, false) if t.id == ticket.id));
        let mut reloaded = Vec::new();
        for _ in 0..100 {
            reloaded = Approvals::load(store.clone(), None).await.unwrap().list();
            if !reloaded.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(reloaded.len(), 1);
        assert_eq!(reloaded[0].binding.required_by, RequiredBy::Analytics);
        assert_eq!(reloaded[0].binding, held);
    }
}
