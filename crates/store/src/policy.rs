//! Policy versions (migration `0007_policy.sql`): every installed policy
//! directory as an immutable row, and which version is active (and which is
//! the shadow candidate). The store keeps text; the policy crate parses it.

use std::collections::BTreeMap;

use crate::backend::DbRow;

use crate::{Store, StoreError};

/// One stored policy version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersionRow {
    /// The version number, 1, 2, 3… in order of installation.
    pub version: u64,
    /// SHA-256 (hex) of the files' canonical encoding.
    pub hash: String,
    /// Who installed it (as the admin call said, or `policy-watch`).
    pub author: String,
    /// When, milliseconds since the epoch.
    pub created_ms: i64,
    /// Why.
    pub message: String,
    /// The files by name, the schema (`schema.cedarschema`) included.
    pub files: BTreeMap<String, String>,
}

/// What a new version is, before it has a number.
#[derive(Debug, Clone)]
pub struct NewPolicyVersion<'a> {
    /// SHA-256 (hex) of the files' canonical encoding.
    pub hash: &'a str,
    /// Who installs it.
    pub author: &'a str,
    /// When, milliseconds since the epoch.
    pub created_ms: i64,
    /// Why.
    pub message: &'a str,
    /// The files by name.
    pub files: &'a BTreeMap<String, String>,
}

/// Where a new version goes once stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySlot {
    /// It decides live traffic from now on (and any shadow candidate is dropped).
    Active,
    /// It is decided alongside the active version, whose decisions stand.
    Shadow,
}

/// The active and shadow versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyState {
    /// The version deciding live traffic; `None` before the first install.
    pub active: Option<u64>,
    /// The shadow candidate, if any.
    pub shadow: Option<u64>,
}

fn corrupt(detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table: "policy_versions",
        detail: detail.to_string(),
    }
}

impl Store {
    /// Stores a new version and puts it in `slot`, in one transaction.
    /// Returns its number.
    pub async fn add_policy_version(
        &self,
        new: &NewPolicyVersion<'_>,
        slot: PolicySlot,
    ) -> Result<u64, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let files = serde_json::to_string(new.files).map_err(corrupt)?;
            let mut tx = begin_write(pool).await?;
            let row = query(
                "INSERT INTO policy_versions (hash, author, created_ms, message, files)
             VALUES (?, ?, ?, ?, ?) RETURNING version",
            )
            .bind(new.hash)
            .bind(new.author)
            .bind(new.created_ms)
            .bind(new.message)
            .bind(files)
            .fetch_one(&mut *tx)
            .await?;
            let version: i64 = row.col("version")?;
            let sql = match slot {
                PolicySlot::Active => {
                    "UPDATE policy_state SET active = ?, shadow = NULL WHERE id = 1"
                }
                PolicySlot::Shadow => "UPDATE policy_state SET shadow = ? WHERE id = 1",
            };
            query(sql).bind(version).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(version as u64)
        })
    }

    /// Makes an existing version the active one (rollback, promotion). A
    /// shadow candidate equal to it is dropped; another one stays.
    pub async fn set_active_policy(&self, version: u64) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let result = query(
                "UPDATE policy_state SET active = ?1,
                 shadow = CASE WHEN shadow = ?1 THEN NULL ELSE shadow END
             WHERE id = 1 AND EXISTS (SELECT 1 FROM policy_versions WHERE version = ?1)",
            )
            .bind(version as i64)
            .execute(pool)
            .await?;
            if result.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("policy version {version}")));
            }
            Ok(())
        })
    }

    /// Stops shadow evaluation.
    pub async fn clear_shadow_policy(&self) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("UPDATE policy_state SET shadow = NULL WHERE id = 1")
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// The active and shadow versions.
    pub async fn policy_state(&self) -> Result<PolicyState, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query("SELECT active, shadow FROM policy_state WHERE id = 1")
                .fetch_one(pool)
                .await?;
            let active: Option<i64> = row.col("active")?;
            let shadow: Option<i64> = row.col("shadow")?;
            Ok(PolicyState {
                active: active.map(|v| v as u64),
                shadow: shadow.map(|v| v as u64),
            })
        })
    }

    /// Every version, oldest first, without their files.
    pub async fn policy_versions(&self) -> Result<Vec<PolicyVersionRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
            "SELECT version, hash, author, created_ms, message FROM policy_versions ORDER BY version",
        )
        .fetch_all(pool)
        .await?;
            rows.iter()
                .map(|r| {
                    Ok(PolicyVersionRow {
                        version: r.col::<i64, _>("version")? as u64,
                        hash: r.col("hash")?,
                        author: r.col("author")?,
                        created_ms: r.col("created_ms")?,
                        message: r.col("message")?,
                        files: BTreeMap::new(),
                    })
                })
                .collect()
        })
    }

    /// One version with its files.
    pub async fn policy_version(&self, version: u64) -> Result<PolicyVersionRow, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
                "SELECT version, hash, author, created_ms, message, files FROM policy_versions
             WHERE version = ?",
            )
            .bind(version as i64)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("policy version {version}")))?;
            let files: String = row.col("files")?;
            Ok(PolicyVersionRow {
                version: row.col::<i64, _>("version")? as u64,
                hash: row.col("hash")?,
                author: row.col("author")?,
                created_ms: row.col("created_ms")?,
                message: row.col("message")?,
                files: serde_json::from_str(&files).map_err(corrupt)?,
            })
        })
    }
}

impl Store {
    /// Up to `limit` data-plane request records from `since_ms` on, oldest
    /// first, for `policy whatif`. The second value says whether more were
    /// left out.
    pub async fn audit_requests_since(
        &self,
        since_ms: i64,
        limit: u32,
    ) -> Result<(Vec<portcullis_audit::AuditRecord>, bool), StoreError> {
        // Pages of rows until `limit + 1` requests are found: admin records
        // are told apart only once decoded.
        const PAGE: i64 = 4_096;
        let mut records = Vec::new();
        let mut from = 0;
        while records.len() <= limit as usize {
            let rows = self
                .stored_rows(
                    "SELECT {RECORD_COLUMNS} FROM audit_log WHERE seq >= ? AND time_ms >= ? ORDER BY seq LIMIT ?",
                    &[from, since_ms, PAGE],
                )
                .await?;
            let Some(last) = rows.last() else {
                break;
            };
            from = last.seq as i64 + 1;
            records.extend(
                self.records_of(&rows, |r| r.kind == portcullis_audit::RecordKind::Request)
                    .await?,
            );
        }
        let more = records.len() > limit as usize;
        records.truncate(limit as usize);
        Ok((records, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_are_numbered_immutable_and_switch_slots() {
        for db in crate::testing::TestDb::all().await {
            versions_are_numbered_immutable_and_switch_slots_on(db.open().await).await;
        }
    }

    async fn versions_are_numbered_immutable_and_switch_slots_on(store: Store) {
        assert_eq!(store.policy_state().await.unwrap(), PolicyState::default());
        let files = BTreeMap::from([(
            "a.cedar".to_string(),
            "permit(principal, action, resource);".to_string(),
        )]);
        let new = |hash| NewPolicyVersion {
            hash,
            author: "alice",
            created_ms: 1,
            message: "first",
            files: &files,
        };
        assert_eq!(
            store
                .add_policy_version(&new("h1"), PolicySlot::Active)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .add_policy_version(&new("h2"), PolicySlot::Shadow)
                .await
                .unwrap(),
            2
        );
        let state = store.policy_state().await.unwrap();
        assert_eq!((state.active, state.shadow), (Some(1), Some(2)));
        // Promoting the candidate drops it from the shadow slot.
        store.set_active_policy(2).await.unwrap();
        let state = store.policy_state().await.unwrap();
        assert_eq!((state.active, state.shadow), (Some(2), None));
        assert!(matches!(
            store.set_active_policy(9).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.policy_state().await.unwrap().active, Some(2));

        let v1 = store.policy_version(1).await.unwrap();
        assert_eq!((v1.hash.as_str(), v1.files.clone()), ("h1", files.clone()));
        assert_eq!(store.policy_versions().await.unwrap().len(), 2);
        // The database itself refuses to change or drop a version.
        for sql in [
            "UPDATE policy_versions SET message = 'x' WHERE version = 1",
            "DELETE FROM policy_versions WHERE version = 1",
        ] {
            let err = crate::backend::with_pool!(&store.pool, |pool| {
                query(sql).execute(pool).await.unwrap_err()
            });
            assert!(err.to_string().contains("immutable"), "{err}");
        }
    }
}
