//! Passkeys of human admins (migration `0026_admin_passkeys.sql`): WebAuthn
//! credentials, each bound to an enrolled admin (deleted with them) and to
//! the relying party it was made for. The store keeps public keys and
//! counters only; the checks are `portcullis_identity::webauthn`'s.

use crate::backend::DbRow;
use crate::{Store, StoreError};

/// One passkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyRow {
    /// The credential id, base64url without padding.
    pub credential_id: String,
    /// The admin (`admin_users.name`) it belongs to.
    pub admin: String,
    /// A name the admin gave it.
    pub label: String,
    /// The relying party id it was made for (the console's host).
    pub rp_id: String,
    /// Its COSE algorithm (-7 ES256, -8 EdDSA, -257 RS256).
    pub algorithm: i64,
    /// Its COSE public key.
    pub public_key: Vec<u8>,
    /// The signature counter of its last use.
    pub sign_count: i64,
    /// When it was registered (epoch seconds).
    pub created_at: i64,
    /// When it was last used (epoch seconds; 0: never).
    pub last_used_at: i64,
}

impl Store {
    /// Registers a passkey for an enrolled admin; a known credential id is a
    /// conflict, an unknown admin is not found.
    pub async fn add_passkey(&self, row: &PasskeyRow) -> Result<(), StoreError> {
        if self.admin_user(&row.admin).await?.is_none() {
            return Err(StoreError::NotFound(row.admin.clone()));
        }
        crate::backend::with_pool!(&self.pool, |pool| {
            let result = query(
                "INSERT INTO admin_passkeys (credential_id, admin, label, rp_id, algorithm,
                     public_key, sign_count, created_at, last_used_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(credential_id) DO NOTHING",
            )
            .bind(&row.credential_id)
            .bind(&row.admin)
            .bind(&row.label)
            .bind(&row.rp_id)
            .bind(row.algorithm)
            .bind(&row.public_key)
            .bind(row.sign_count)
            .bind(row.created_at)
            .bind(row.last_used_at)
            .execute(pool)
            .await?;
            if result.rows_affected() == 0 {
                return Err(StoreError::Conflict(row.credential_id.clone()));
            }
            Ok(())
        })
    }

    /// One passkey, by credential id.
    pub async fn passkey(&self, credential_id: &str) -> Result<Option<PasskeyRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
                "SELECT credential_id, admin, label, rp_id, algorithm, public_key, sign_count,
                        created_at, last_used_at
                 FROM admin_passkeys WHERE credential_id = ?",
            )
            .bind(credential_id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| passkey_from_row(&r)).transpose()
        })
    }

    /// The passkeys of one admin (`Some`) or of all, oldest first.
    pub async fn passkeys(&self, admin: Option<&str>) -> Result<Vec<PasskeyRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            // An empty name matches no admin (names are never empty).
            let rows = query(
                "SELECT credential_id, admin, label, rp_id, algorithm, public_key, sign_count,
                        created_at, last_used_at
                 FROM admin_passkeys WHERE ? OR admin = ?
                 ORDER BY created_at, credential_id",
            )
            .bind(admin.is_none())
            .bind(admin.unwrap_or_default())
            .fetch_all(pool)
            .await?;
            rows.iter().map(passkey_from_row).collect()
        })
    }

    /// Records a use with its new counter, only if the stored counter is
    /// still `seen_before` (the one the signature was checked against): one
    /// atomic statement, so two concurrent uses of one assertion cannot both
    /// win. `false`: another use got there first.
    pub async fn use_passkey(
        &self,
        credential_id: &str,
        seen_before: i64,
        sign_count: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let result = query(
                "UPDATE admin_passkeys SET sign_count = ?, last_used_at = ?
                 WHERE credential_id = ? AND sign_count = ?",
            )
            .bind(sign_count)
            .bind(now)
            .bind(credential_id)
            .bind(seen_before)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Removes a passkey.
    pub async fn remove_passkey(&self, credential_id: &str) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let result = query("DELETE FROM admin_passkeys WHERE credential_id = ?")
                .bind(credential_id)
                .execute(pool)
                .await?;
            if result.rows_affected() == 0 {
                return Err(StoreError::NotFound(credential_id.to_string()));
            }
            Ok(())
        })
    }
}

fn passkey_from_row(r: &impl DbRow) -> Result<PasskeyRow, StoreError> {
    Ok(PasskeyRow {
        credential_id: r.col("credential_id")?,
        admin: r.col("admin")?,
        label: r.col("label")?,
        rp_id: r.col("rp_id")?,
        algorithm: r.col("algorithm")?,
        public_key: r.col("public_key")?,
        sign_count: r.col("sign_count")?,
        created_at: r.col("created_at")?,
        last_used_at: r.col("last_used_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AdminUserRow;

    #[tokio::test]
    async fn passkeys_belong_to_an_admin_count_up_and_go_with_them() {
        for db in crate::testing::TestDb::all().await {
            passkeys_on(db.open().await).await;
        }
    }

    async fn passkeys_on(store: Store) {
        let key = |id: &str, admin: &str| PasskeyRow {
            credential_id: id.into(),
            admin: admin.into(),
            label: "laptop".into(),
            rp_id: "localhost".into(),
            algorithm: -7,
            public_key: vec![0xa5, 1, 2],
            sign_count: 0,
            created_at: 10,
            last_used_at: 0,
        };
        assert!(matches!(
            store.add_passkey(&key("k1", "alice")).await,
            Err(StoreError::NotFound(_))
        ));
        for name in ["alice", "bob"] {
            store
                .add_admin_user(&AdminUserRow {
                    name: name.into(),
                    totp_sealed: vec![1],
                    created_at: 1,
                    last_step: 0,
                })
                .await
                .unwrap();
        }
        store.add_passkey(&key("k1", "alice")).await.unwrap();
        store.add_passkey(&key("k2", "bob")).await.unwrap();
        assert!(matches!(
            store.add_passkey(&key("k1", "bob")).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.passkey("k1").await.unwrap().unwrap(),
            key("k1", "alice")
        );
        assert_eq!(store.passkeys(None).await.unwrap().len(), 2);
        assert_eq!(
            store.passkeys(Some("bob")).await.unwrap(),
            [key("k2", "bob")]
        );
        // A use records the new counter once; a second use checked against
        // the old counter loses.
        assert!(store.use_passkey("k1", 0, 3, 50).await.unwrap());
        assert!(!store.use_passkey("k1", 0, 3, 51).await.unwrap());
        let used = store.passkey("k1").await.unwrap().unwrap();
        assert_eq!((used.sign_count, used.last_used_at), (3, 50));
        // Removing the admin removes their passkeys.
        store.remove_admin_user("alice").await.unwrap();
        assert!(store.passkey("k1").await.unwrap().is_none());
        store.remove_passkey("k2").await.unwrap();
        assert!(matches!(
            store.remove_passkey("k2").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store.passkeys(None).await.unwrap().is_empty());
    }
}
