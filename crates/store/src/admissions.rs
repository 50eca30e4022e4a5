//! Admission counters shared by every replica (migration
//! `0035_step_up_windows.sql`, table `admission_windows`): a fixed window
//! (say, one clock hour) admits at most `max` of something, counted by one
//! conditional upsert, so N replicas admit `max` together, not N times it.
//! For rare, deliberate requests only (the data plane's dynamic client
//! registrations, `registrations_per_hour`): each admission is one round
//! trip. Past windows of a key are dropped as its next one is counted, so
//! the table holds one row per key.

use crate::{Store, StoreError};

impl Store {
    /// Counts one admission of `key` in window number `win`: `true` when
    /// fewer than `max` were admitted in it before (by any replica), and
    /// then this one is counted; `false` (nothing counted) when full.
    pub async fn admit_in_window(&self, key: &str, win: i64, max: i64) -> Result<bool, StoreError> {
        if max <= 0 {
            return Ok(false);
        }
        let admitted: Option<i64> = crate::backend::with_pool!(&self.pool, |pool| {
            query("DELETE FROM admission_windows WHERE key = ? AND win < ?")
                .bind(key)
                .bind(win)
                .execute(pool)
                .await?;
            query_scalar(
                "INSERT INTO admission_windows (key, win, used) VALUES (?, ?, 1)
                 ON CONFLICT (key, win) DO UPDATE SET used = admission_windows.used + 1
                 WHERE admission_windows.used < ?
                 RETURNING used",
            )
            .bind(key)
            .bind(win)
            .bind(max)
            .fetch_optional(pool)
            .await?
        });
        Ok(admitted.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_window_admits_max_across_handles_on_both_backends() {
        for db in crate::testing::TestDb::all().await {
            admissions_on(db.open().await, db.open().await).await;
        }
    }

    async fn admissions_on(a: Store, b: Store) {
        // Two handles (two replicas) share the count…
        assert!(a.admit_in_window("reg", 7, 3).await.unwrap());
        assert!(b.admit_in_window("reg", 7, 3).await.unwrap());
        assert!(a.admit_in_window("reg", 7, 3).await.unwrap());
        assert!(!b.admit_in_window("reg", 7, 3).await.unwrap());
        assert!(!a.admit_in_window("reg", 7, 3).await.unwrap());
        // …other keys count apart, a new window starts afresh…
        assert!(b.admit_in_window("other", 7, 1).await.unwrap());
        assert!(b.admit_in_window("reg", 8, 3).await.unwrap());
        // …and a zero limit admits nothing.
        assert!(!a.admit_in_window("none", 8, 0).await.unwrap());

        // Concurrent admissions through both handles: exactly `max` pass.
        let tries = (0..40).map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            async move { s.admit_in_window("race", 1, 10).await.unwrap() }
        });
        let admitted = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        assert_eq!(admitted, 10);
    }
}
