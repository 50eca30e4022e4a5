//! Key material sealed in the database (migration `0029_sealed_keys.sql`):
//! in cluster mode the CA, the access-token, audit, MFA and pseudonym keys
//! live here, sealed under the vault KEK by the caller (`portcullis serve`),
//! so that a replica needs only the KEK and the database URL. The store
//! never sees a key in clear: it keeps and returns sealed bytes.
//!
//! A version is written once: the first replica to insert one wins, and
//! every other reads it back (two replicas starting at once agree). A
//! rotation (`portcullis vault rotate-key`) seals the next version beside
//! the old ones, which are kept: the newest signs, the older ones verify.

use crate::backend::DbRow;
use crate::{Store, StoreError};

/// One version of one sealed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKeyRow {
    /// What the key is (`ca`, `token_key`, …).
    pub name: String,
    /// Its version, from 1.
    pub version: i64,
    /// The fingerprint of the KEK the data key is wrapped under.
    pub kek_id: String,
    /// The data key, sealed under the KEK.
    pub wrapped_key: Vec<u8>,
    /// The key material, sealed under the data key.
    pub ciphertext: Vec<u8>,
    /// When it was sealed (seconds since the epoch).
    pub sealed_at: i64,
}

fn sealed_key_row(r: &impl DbRow) -> Result<SealedKeyRow, StoreError> {
    Ok(SealedKeyRow {
        name: r.col("name")?,
        version: r.col("version")?,
        kek_id: r.col("kek_id")?,
        wrapped_key: r.col("wrapped_key")?,
        ciphertext: r.col("ciphertext")?,
        sealed_at: r.col("sealed_at")?,
    })
}

impl Store {
    /// The newest version of the key sealed under `name`, if any.
    pub async fn sealed_key(&self, name: &str) -> Result<Option<SealedKeyRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row =
                query("SELECT * FROM sealed_keys WHERE name = ? ORDER BY version DESC LIMIT 1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?;
            row.as_ref().map(sealed_key_row).transpose()
        })
    }

    /// Every version of the key sealed under `name`, oldest first. A
    /// rotation seals a new version beside the old ones: the newest signs,
    /// the older ones still verify what they signed (docs/cluster.md).
    pub async fn sealed_key_versions(&self, name: &str) -> Result<Vec<SealedKeyRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query("SELECT * FROM sealed_keys WHERE name = ? ORDER BY version")
                .bind(name)
                .fetch_all(pool)
                .await?;
            rows.iter().map(sealed_key_row).collect()
        })
    }

    /// Every sealed key, every version, by name and version.
    pub async fn sealed_keys(&self) -> Result<Vec<SealedKeyRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query("SELECT * FROM sealed_keys ORDER BY name, version")
                .fetch_all(pool)
                .await?;
            rows.iter().map(sealed_key_row).collect()
        })
    }

    /// Stores `row` unless its (name, version) is taken; whether it was.
    /// The caller reads the version back when it was not: another replica
    /// sealed its own first, and that one is the cluster's.
    pub async fn insert_sealed_key(&self, row: &SealedKeyRow) -> Result<bool, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let inserted = query(
                "INSERT INTO sealed_keys (name, version, kek_id, wrapped_key, ciphertext, sealed_at)
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (name, version) DO NOTHING",
            )
            .bind(&row.name)
            .bind(row.version)
            .bind(&row.kek_id)
            .bind(&row.wrapped_key)
            .bind(&row.ciphertext)
            .bind(row.sealed_at)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(inserted == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, version: i64, kek_id: &str) -> SealedKeyRow {
        SealedKeyRow {
            name: name.into(),
            version,
            kek_id: kek_id.into(),
            wrapped_key: vec![1, 2, 3],
            ciphertext: vec![4, 5, version as u8],
            sealed_at: 100 + version,
        }
    }

    #[tokio::test]
    async fn a_version_is_written_once_every_version_is_kept_and_the_newest_is_read() {
        for db in crate::testing::TestDb::all().await {
            let store = db.open().await;
            assert_eq!(store.sealed_key("ca").await.unwrap(), None);
            assert!(store.insert_sealed_key(&row("ca", 1, "k1")).await.unwrap());
            // A second replica's version 1 loses: the first one stays.
            assert!(!store.insert_sealed_key(&row("ca", 1, "k2")).await.unwrap());
            assert_eq!(
                store.sealed_key("ca").await.unwrap(),
                Some(row("ca", 1, "k1"))
            );
            assert!(store.insert_sealed_key(&row("ca", 2, "k1")).await.unwrap());
            assert!(
                store
                    .insert_sealed_key(&row("token_key", 1, "k1"))
                    .await
                    .unwrap()
            );
            assert_eq!(
                store.sealed_key("ca").await.unwrap(),
                Some(row("ca", 2, "k1"))
            );
            assert_eq!(
                store.sealed_keys().await.unwrap(),
                vec![
                    row("ca", 1, "k1"),
                    row("ca", 2, "k1"),
                    row("token_key", 1, "k1")
                ]
            );
            // A rotation seals the next version beside the old ones: every
            // version is kept, the newest is the one in use.
            assert!(
                store
                    .insert_sealed_key(&row("token_key", 2, "k1"))
                    .await
                    .unwrap()
            );
            assert_eq!(
                store.sealed_key_versions("token_key").await.unwrap(),
                vec![row("token_key", 1, "k1"), row("token_key", 2, "k1")]
            );
            assert_eq!(
                store.sealed_key("token_key").await.unwrap(),
                Some(row("token_key", 2, "k1"))
            );
            assert!(
                store
                    .sealed_key_versions("audit_key")
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
