//! The process-wide budget of buffered request bytes (`[limits]
//! max_buffered_bytes`).
//!
//! `max_body_bytes` bounds one request; this bounds them all together. Every
//! stage that holds a whole request body (the guard's inspection, an approval's
//! body digest, the MCP and LLM adapters) takes a [`Lease`] on the budget
//! before buffering, grows it as bytes arrive and as the body is parsed, and
//! gives it back when the buffered body is dropped ([`LeasedBody`]). A lease
//! that cannot grow fails at once with 503 `server_busy`: nothing ever waits
//! for budget, so a crowd of large bodies is refused quickly instead of
//! making the process buffer N × `max_body_bytes`.
//!
//! An atomic counter rather than a semaphore: leases grow frame by frame and
//! shrink once a parsed copy is dropped, byte-exact, which permits of a fixed
//! size would round.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_core::ErrorCode;

use crate::respond::{Denial, DenialDetail};

/// Default budget: 64 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 64 * 1024 * 1024;

/// What one node of a parsed JSON value is charged, beyond its text: the
/// `serde_json::Value` (32 bytes), its slot in a `Vec` that may have doubled,
/// or its key and slot in a half-full B-tree node, and an allocation's
/// overhead. An over-estimate on purpose: the budget must not be beaten by a
/// body of many tiny values (`[0,0,0,…]` parses to ~30× its size).
pub const JSON_NODE_COST: u64 = 128;

/// The budget shared by every request of the process.
#[derive(Debug)]
pub struct BufferBudget {
    used: AtomicU64,
    /// Changed in place by a config reload, so bytes leased before it still
    /// count against the one budget.
    max: AtomicU64,
}

impl Default for BufferBudget {
    fn default() -> Self {
        BufferBudget {
            used: AtomicU64::new(0),
            max: AtomicU64::new(DEFAULT_MAX_BUFFERED_BYTES),
        }
    }
}

impl BufferBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(BufferBudget {
            used: AtomicU64::new(0),
            max: AtomicU64::new(max),
        })
    }

    /// An empty lease on the budget.
    pub fn lease(self: &Arc<Self>) -> Lease {
        Lease {
            budget: self.clone(),
            held: 0,
        }
    }

    /// Bytes leased now, for `/metrics` and tests.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget's size.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// Resizes the budget (a config reload); leases already held stay.
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }
}

/// A share of the [`BufferBudget`], given back when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<BufferBudget>,
    held: u64,
}

impl Lease {
    /// Takes `n` more bytes, or refuses at once when the budget has not got
    /// them: `payload_too_large` when no request could ever have them (the
    /// lease alone would pass the whole budget), else `server_busy`.
    pub fn grow(&mut self, n: u64) -> Result<(), Denial> {
        let max = self.budget.max();
        let wanted = self.held.saturating_add(n);
        if wanted > max {
            return Err(Denial::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body would take more than the {max} bytes the gateway buffers"
                ),
            ));
        }
        self.budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= max)
            })
            .map_err(|_| busy())?;
        self.held = wanted;
        Ok(())
    }

    /// Gives back what is held beyond `n` bytes (a parsed copy was dropped).
    pub fn shrink_to(&mut self, n: u64) {
        if n < self.held {
            self.budget.used.fetch_sub(self.held - n, Ordering::AcqRel);
            self.held = n;
        }
    }

    /// Bytes held.
    pub fn held(&self) -> u64 {
        self.held
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

/// The refusal when the budget is spent: transient, so the client is told
/// to retry shortly.
fn busy() -> Denial {
    Denial {
        code: ErrorCode::ServerBusy,
        message: "the gateway is buffering too many request bodies; retry later".into(),
        policies: Vec::new(),
        detail: Some(DenialDetail::RetryAfter(1)),
    }
}

/// An upper estimate of the memory `serde_json` takes to hold `text` parsed:
/// the text again plus [`JSON_NODE_COST`] per value. Values are counted from
/// the separators outside strings (each array element or object member after
/// the first follows a `,`, each first one an opening bracket), so one pass
/// over the bytes, no allocation.
pub fn json_cost(text: &[u8]) -> u64 {
    let mut nodes = 1u64;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => nodes += 1,
                _ => {}
            }
        }
    }
    text.len() as u64 + nodes.saturating_mul(JSON_NODE_COST)
}

/// A request body that holds its [`Lease`] until it is dropped (the
/// forwarder has sent it, or the request ended).
#[derive(Debug)]
pub struct LeasedBody<B> {
    inner: B,
    _lease: Lease,
}

impl<B> LeasedBody<B> {
    /// `inner`, holding `lease`.
    pub fn new(inner: B, lease: Lease) -> Self {
        LeasedBody {
            inner,
            _lease: lease,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for LeasedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_grow_within_the_budget_and_give_back_on_drop() {
        let budget = BufferBudget::new(100);
        let mut a = budget.lease();
        a.grow(60).unwrap();
        let mut b = budget.lease();
        assert_eq!(b.grow(50).unwrap_err().code, ErrorCode::ServerBusy);
        // A refused grow takes nothing.
        assert_eq!(budget.in_use(), 60);
        b.grow(40).unwrap();
        assert_eq!(budget.in_use(), 100);
        // More than the whole budget can never fit: too large, not busy.
        let mut c = budget.lease();
        assert_eq!(c.grow(101).unwrap_err().code, ErrorCode::PayloadTooLarge);
        a.shrink_to(10);
        assert_eq!(budget.in_use(), 50);
        c.grow(50).unwrap();
        drop((a, b, c));
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn json_cost_counts_values_outside_strings() {
        let check = |text: &str, nodes: u64| {
            assert_eq!(
                json_cost(text.as_bytes()),
                text.len() as u64 + nodes * JSON_NODE_COST,
                "{text}"
            );
        };
        check("1", 1);
        check("[]", 2);
        check("[0,0,0]", 4);
        check(r#"{"a":1,"b":[2,3]}"#, 5);
        // Separators inside strings, escaped quotes included, are text.
        check(r#"{"a":"x,[{\",y"}"#, 2);
        check(r#"["\\",1]"#, 3);
    }

    #[test]
    fn the_estimate_covers_what_serde_json_takes_for_tiny_values() {
        // 100,000 zeros: each Value is 32 bytes in a Vec that may have doubled.
        let text = format!("[{}0]", "0,".repeat(100_000));
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let items = parsed.as_array().unwrap();
        let held = (items.capacity() * std::mem::size_of::<serde_json::Value>()) as u64;
        assert!(json_cost(text.as_bytes()) >= held + text.len() as u64);
    }
}
