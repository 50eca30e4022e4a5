//! Ceremonies in progress (migration `0030_pending_ceremonies.sql`): the
//! console's WebAuthn challenges and OIDC logins waiting for the issuer's
//! callback. They are kept here, not in one replica's memory, so the answer
//! may reach any replica of a cluster. A ceremony is single use: taking it
//! is one `DELETE … RETURNING`, so of two concurrent answers (on one
//! replica or two) exactly one gets it. It expires; expired rows are
//! dropped when a new ceremony begins. The key is the caller's hash of the
//! challenge or state, and what the payload holds is the caller's business.

use crate::backend::DbRow;
use crate::{Store, StoreError};

impl Store {
    /// Stores a ceremony of `kind` under `id_sha256`, live until
    /// `expires_ms`; first drops the expired ones. `false` when `max`
    /// ceremonies of this kind are live already (refuse new ones until some
    /// end) or the key is taken.
    pub async fn begin_ceremony(
        &self,
        id_sha256: &str,
        kind: &str,
        payload: &str,
        expires_ms: i64,
        now_ms: i64,
        max: i64,
    ) -> Result<bool, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("DELETE FROM pending_ceremonies WHERE expires_ms <= ?")
                .bind(now_ms)
                .execute(pool)
                .await?;
            // The bound is in the insert itself, so it holds without a
            // transaction (two replicas may both pass a separate count).
            let result = query(
                "INSERT INTO pending_ceremonies (id_sha256, kind, payload, expires_ms)
                 SELECT ?, ?, ?, ?
                 WHERE (SELECT COUNT(*) FROM pending_ceremonies WHERE kind = ?) < ?
                 ON CONFLICT (id_sha256) DO NOTHING",
            )
            .bind(id_sha256)
            .bind(kind)
            .bind(payload)
            .bind(expires_ms)
            .bind(kind)
            .bind(max)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Takes the ceremony of `kind` under `id_sha256` out: its payload if
    /// it was live at `now_ms`. Whatever the answer, the row is gone (single
    /// use), and only one caller ever gets it.
    pub async fn take_ceremony(
        &self,
        id_sha256: &str,
        kind: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
                "DELETE FROM pending_ceremonies WHERE id_sha256 = ? AND kind = ?
                 RETURNING payload, expires_ms",
            )
            .bind(id_sha256)
            .bind(kind)
            .fetch_optional(pool)
            .await?;
            let Some(r) = row else {
                return Ok(None);
            };
            let expires_ms: i64 = r.col("expires_ms")?;
            Ok((expires_ms > now_ms)
                .then(|| r.col("payload"))
                .transpose()?)
        })
    }

    /// The payload of a live ceremony, leaving it in place (to route an
    /// answer before taking it).
    pub async fn peek_ceremony(
        &self,
        id_sha256: &str,
        kind: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
                "SELECT payload FROM pending_ceremonies
                 WHERE id_sha256 = ? AND kind = ? AND expires_ms > ?",
            )
            .bind(id_sha256)
            .bind(kind)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|r| r.col("payload")).transpose()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ceremony_is_taken_once_expires_and_is_bounded_on_both_backends() {
        for db in crate::testing::TestDb::all().await {
            ceremonies_on(db.open().await).await;
        }
    }

    async fn ceremonies_on(store: Store) {
        assert!(
            store
                .begin_ceremony("c1", "webauthn", "{\"a\":1}", 1_000, 100, 10)
                .await
                .unwrap()
        );
        // A taken key is not reused.
        assert!(
            !store
                .begin_ceremony("c1", "webauthn", "{}", 1_000, 100, 10)
                .await
                .unwrap()
        );
        // Another kind does not see it, nor take it.
        assert_eq!(store.take_ceremony("c1", "oidc", 200).await.unwrap(), None);
        assert_eq!(
            store.peek_ceremony("c1", "webauthn", 200).await.unwrap(),
            Some("{\"a\":1}".into())
        );
        assert_eq!(
            store.take_ceremony("c1", "webauthn", 200).await.unwrap(),
            Some("{\"a\":1}".into())
        );
        assert_eq!(
            store.take_ceremony("c1", "webauthn", 200).await.unwrap(),
            None,
            "single use"
        );
        assert_eq!(
            store.peek_ceremony("c1", "webauthn", 200).await.unwrap(),
            None
        );
        // Expired: neither peeked nor taken, and gone afterwards.
        store
            .begin_ceremony("c2", "webauthn", "{}", 1_000, 100, 10)
            .await
            .unwrap();
        assert_eq!(
            store.peek_ceremony("c2", "webauthn", 1_000).await.unwrap(),
            None
        );
        assert_eq!(
            store.take_ceremony("c2", "webauthn", 1_000).await.unwrap(),
            None
        );
        // Concurrent answers to one ceremony (two replicas, say): exactly one
        // gets it.
        for round in 0..5 {
            let key = format!("race{round}");
            store
                .begin_ceremony(&key, "webauthn", "{}", 10_000, 100, 10)
                .await
                .unwrap();
            let takes = (0..8).map(|_| {
                let store = store.clone();
                let key = key.clone();
                tokio::spawn(async move { store.take_ceremony(&key, "webauthn", 200).await })
            });
            let mut won = 0;
            for take in takes.collect::<Vec<_>>() {
                if take.await.unwrap().unwrap().is_some() {
                    won += 1;
                }
            }
            assert_eq!(won, 1, "round {round}");
        }
        // At most `max` live ceremonies of a kind; expired ones make room.
        for i in 0..3 {
            assert!(
                store
                    .begin_ceremony(&format!("b{i}"), "oidc", "{}", 500 + i, 100, 3)
                    .await
                    .unwrap()
            );
        }
        assert!(
            !store
                .begin_ceremony("b3", "oidc", "{}", 900, 100, 3)
                .await
                .unwrap()
        );
        assert!(
            store
                .begin_ceremony("w", "webauthn", "{}", 900, 100, 3)
                .await
                .unwrap()
        );
        assert!(
            store
                .begin_ceremony("b3", "oidc", "{}", 900, 501, 3)
                .await
                .unwrap()
        );
    }
}
