//! Ceremonies in progress (migration `0030_pending_ceremonies.sql`): the
//! console's WebAuthn challenges and OIDC logins waiting for the issuer's
//! callback. They are kept here, not in one replica's memory, so the answer
//! may reach any replica of a cluster. A ceremony is single use: taking it
//! is one `DELETE … RETURNING`, so of two concurrent answers (on one
//! replica or two) exactly one gets it. It expires; expired rows are
//! dropped when a new ceremony begins. The key is the caller's hash of the
//! challenge or state, and what the payload holds is the caller's business.
//!
//! The data plane's authorization endpoint keeps its login pages and
//! authorization codes here too (migration 0034): those are bounded per
//! OAuth client (`owner`) as well as per kind, and a code is spent rather
//! than taken ([`Store::spend_ceremony`]), so a second redemption is seen
//! as reuse until the code expires.

use crate::backend::DbRow;
use crate::{Store, StoreError};

/// The bounds on live ceremonies a new one must fit in.
#[derive(Debug, Clone, Copy)]
pub struct CeremonyBound<'a> {
    /// Who the ceremony is started for (an OAuth client id); `""`: nobody
    /// in particular.
    pub owner: &'a str,
    /// Live ceremonies of the kind at most.
    pub max: i64,
    /// Live ceremonies of the kind for one owner at most.
    pub max_per_owner: i64,
}

/// What spending a ceremony found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spend {
    /// First spent now: its payload.
    Fresh(String),
    /// Spent before, with this marker.
    Reused(String),
    /// Unknown or expired.
    Unknown,
}

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
        let bound = CeremonyBound {
            owner: "",
            max,
            max_per_owner: max,
        };
        self.begin_owned_ceremony(id_sha256, kind, payload, expires_ms, now_ms, bound)
            .await
    }

    /// [`Store::begin_ceremony`] for a ceremony started for `bound.owner`
    /// (an OAuth client, say): `false` as well when that owner has
    /// `bound.max_per_owner` live ceremonies of this kind, so one owner
    /// cannot take every place.
    pub async fn begin_owned_ceremony(
        &self,
        id_sha256: &str,
        kind: &str,
        payload: &str,
        expires_ms: i64,
        now_ms: i64,
        bound: CeremonyBound<'_>,
    ) -> Result<bool, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("DELETE FROM pending_ceremonies WHERE expires_ms <= ?")
                .bind(now_ms)
                .execute(pool)
                .await?;
            // The bounds are in the insert itself, so no transaction is
            // needed (two replicas may both pass a separate count). On
            // PostgreSQL concurrent inserts may still each miss the other's
            // row: a bound can be overshot by the inserts in flight at
            // once, never more.
            let result = query(
                "INSERT INTO pending_ceremonies (id_sha256, kind, payload, expires_ms, owner)
                 SELECT ?, ?, ?, ?, ?
                 WHERE (SELECT COUNT(*) FROM pending_ceremonies WHERE kind = ?) < ?
                   AND (SELECT COUNT(*) FROM pending_ceremonies
                        WHERE kind = ? AND owner = ?) < ?
                 ON CONFLICT (id_sha256) DO NOTHING",
            )
            .bind(id_sha256)
            .bind(kind)
            .bind(payload)
            .bind(expires_ms)
            .bind(bound.owner)
            .bind(kind)
            .bind(bound.max)
            .bind(kind)
            .bind(bound.owner)
            .bind(bound.max_per_owner)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Spends the ceremony of `kind` under `id_sha256` (an authorization
    /// code), marking it with `marker`, but leaves the row until it expires
    /// so a second attempt is told apart from an unknown key. One atomic
    /// `UPDATE … WHERE spent IS NULL … RETURNING`: of concurrent attempts
    /// (on one replica or several) exactly one gets [`Spend::Fresh`].
    pub async fn spend_ceremony(
        &self,
        id_sha256: &str,
        kind: &str,
        marker: &str,
        now_ms: i64,
    ) -> Result<Spend, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let fresh = query(
                "UPDATE pending_ceremonies SET spent = ?
                 WHERE id_sha256 = ? AND kind = ? AND spent IS NULL AND expires_ms > ?
                 RETURNING payload",
            )
            .bind(marker)
            .bind(id_sha256)
            .bind(kind)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?;
            if let Some(r) = fresh {
                return Ok(Spend::Fresh(r.col("payload")?));
            }
            let earlier = query(
                "SELECT spent FROM pending_ceremonies
                 WHERE id_sha256 = ? AND kind = ? AND expires_ms > ?",
            )
            .bind(id_sha256)
            .bind(kind)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?;
            let marker: Option<String> = match earlier {
                Some(r) => r.col("spent")?,
                None => None,
            };
            Ok(marker.map_or(Spend::Unknown, Spend::Reused))
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
        spent_and_owned_on(&store).await;
    }

    async fn spent_and_owned_on(store: &Store) {
        let bound = |owner| CeremonyBound {
            owner,
            max: 3,
            max_per_owner: 2,
        };
        // Per owner: two each, and three of the kind in all.
        for (id, owner, fits) in [
            ("o1", "client-a", true),
            ("o2", "client-a", true),
            ("o3", "client-a", false),
            ("o4", "client-b", true),
            ("o5", "client-c", false),
        ] {
            let begun = store
                .begin_owned_ceremony(id, "code", "p", 10_000, 1_000, bound(owner))
                .await
                .unwrap();
            assert_eq!(begun, fits, "{id}");
        }
        // Spent once; the second attempt sees the first's marker.
        assert_eq!(
            store
                .spend_ceremony("o1", "code", "f1", 2_000)
                .await
                .unwrap(),
            Spend::Fresh("p".into())
        );
        assert_eq!(
            store
                .spend_ceremony("o1", "code", "f2", 2_000)
                .await
                .unwrap(),
            Spend::Reused("f1".into())
        );
        assert_eq!(
            store
                .spend_ceremony("o1", "other", "f", 2_000)
                .await
                .unwrap(),
            Spend::Unknown
        );
        assert_eq!(
            store
                .spend_ceremony("nope", "code", "f", 2_000)
                .await
                .unwrap(),
            Spend::Unknown
        );
        // Expired: unknown, spent or not.
        assert_eq!(
            store
                .spend_ceremony("o1", "code", "f3", 10_000)
                .await
                .unwrap(),
            Spend::Unknown
        );
        assert_eq!(
            store
                .spend_ceremony("o2", "code", "f3", 10_000)
                .await
                .unwrap(),
            Spend::Unknown
        );
        // Concurrent redemptions of one code: exactly one is fresh, and
        // every other sees the winner's marker.
        store
            .begin_owned_ceremony("race", "code", "p", 90_000, 20_000, bound("client-z"))
            .await
            .unwrap();
        let spends = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .spend_ceremony("race", "code", &format!("m{i}"), 20_001)
                    .await
            })
        });
        let mut fresh = 0;
        let mut markers = std::collections::HashSet::new();
        for spend in spends.collect::<Vec<_>>() {
            match spend.await.unwrap().unwrap() {
                Spend::Fresh(_) => fresh += 1,
                Spend::Reused(m) => {
                    markers.insert(m);
                }
                Spend::Unknown => panic!("a live code seen as unknown"),
            }
        }
        assert_eq!((fresh, markers.len()), (1, 1));
    }
}
