//! The overview's live decisions: a server-sent event stream of the audit
//! records as they commit. It waits on the audit writer's tree head (a watch
//! channel: no polling), reads what the batch added, and ends when the
//! session does or shutdown begins (so an open console never holds up the
//! drain).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};

use super::pages::decision_fields;
use super::session::Permission;
use super::{Console, viewer};
use crate::api::{AdminState, ShuttingDown};

/// The most records one batch sends (a burst larger than this shows its
/// newest records; the audit page has them all).
const MAX_BATCH: u64 = 50;

pub(super) async fn events(
    State(state): State<AdminState>,
    Extension(console): Extension<Arc<Console>>,
    stopping: Option<Extension<ShuttingDown>>,
    headers: HeaderMap,
) -> Response {
    let session = match viewer(&console, &headers, Permission::View).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let head = state.sink.watch_head();
    let seen = head.borrow().size;
    // Without the listener's signal (an in-process router), a channel that
    // never fires.
    let (_, idle) = tokio::sync::watch::channel(false);
    let stopping = stopping.map(|Extension(s)| s.0).unwrap_or(idle);
    let stream = decisions(state, console, session, head, seen, stopping);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn decisions(
    state: AdminState,
    console: Arc<Console>,
    session: super::session::SessionView,
    head: tokio::sync::watch::Receiver<portcullis_store::TreeHead>,
    seen: u64,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(
        (head, seen, stopping),
        move |(mut head, seen, mut stopping)| {
            let state = state.clone();
            let console = console.clone();
            let session = session.clone();
            async move {
                // Wake at least every 30 s to notice an ended session, and at
                // once when shutdown begins.
                tokio::select! {
                    changed = tokio::time::timeout(Duration::from_secs(30), head.changed()) => {
                        if matches!(changed, Ok(Err(_))) {
                            return None;
                        }
                    }
                    () = shutdown_begins(&mut stopping) => return None,
                }
                if !console.sessions.alive(&session).await {
                    return None;
                }
                let size = head.borrow_and_update().size;
                let added = size.saturating_sub(seen).min(MAX_BATCH) as u32;
                let mut events = Vec::new();
                if added > 0
                    && let Ok(records) = state.store.audit_tail(added).await
                {
                    for record in records {
                        let value = serde_json::to_value(&record).unwrap_or_default();
                        let data =
                            serde_json::json!({ "fields": decision_fields(&value) }).to_string();
                        events.push(Ok(Event::default().event("decision").data(data)));
                    }
                }
                Some((stream::iter(events), (head, size.max(seen), stopping)))
            }
        },
    )
    .flatten()
}

/// Returns once the shutdown signal is `true`; never when its sender is gone
/// without sending it.
async fn shutdown_begins(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        if stopping.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
