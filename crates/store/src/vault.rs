//! The vault's tables: sealed secret versions, transit keys, payload captures and
//! the fingerprint of the key-encryption key (migration `0003_vault.sql`).
//!
//! The store only moves opaque sealed bytes. Encryption, the KEK and every
//! plaintext stay in `portcullis-vault`; nothing here can decrypt anything.

use crate::backend::DbRow;

use crate::{Store, StoreError};

/// Which KEK wraps the vault's data keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekMeta {
    /// Fingerprint of the KEK (never the key).
    pub kek_id: String,
    /// Incremented by every rekey.
    pub kek_version: i64,
    /// When the KEK was recorded or last replaced.
    pub updated_at: i64,
}

/// A value sealed with envelope encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRow {
    /// Fingerprint of the KEK that wraps `wrapped_key`.
    pub kek_id: String,
    /// The data key, sealed under the KEK.
    pub wrapped_key: Vec<u8>,
    /// The value, sealed under the data key.
    pub ciphertext: Vec<u8>,
}

/// A secret's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    /// The secret's name.
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub created_at: i64,
    /// Rotate at least this often, if set.
    pub rotation_period_s: Option<i64>,
    /// How long a superseded version stays decryptable.
    pub grace_period_s: i64,
    /// Rotation hook as JSON, if any.
    pub hook: Option<String>,
}

/// One version of a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersionRow {
    /// The secret's name.
    pub name: String,
    /// Version, from 1.
    pub version: i64,
    /// When it was stored.
    pub created_at: i64,
    /// When a newer version replaced it.
    pub retired_at: Option<i64>,
    /// When its key material was destroyed.
    pub destroyed_at: Option<i64>,
    /// The sealed value; `None` once destroyed.
    pub sealed: Option<SealedRow>,
}

/// One version of a transit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitVersionRow {
    /// The key's name.
    pub name: String,
    /// Version, from 1.
    pub version: i64,
    /// When it was created.
    pub created_at: i64,
    /// The sealed Fernet key.
    pub sealed: SealedRow,
    /// Whether the key may leave the vault (`transit_keys.exportable`): set
    /// by the row that creates the key (version 1), the key's for every
    /// version read back.
    pub exportable: bool,
}

/// A captured request/response pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRow {
    /// The audit record's request id.
    pub request_id: String,
    /// The route it went through.
    pub route: String,
    /// When it was captured, seconds since the epoch.
    pub captured_at: i64,
    /// When it is shredded.
    pub expires_at: i64,
    /// SHA-256 (hex) of the whole request body as received.
    pub request_sha256: String,
    /// SHA-256 (hex) of the whole response body as sent.
    pub response_sha256: String,
    /// Request body length.
    pub request_bytes: i64,
    /// Response body length.
    pub response_bytes: i64,
    /// Whether the stored bodies were cut at the capture limit.
    pub truncated: bool,
    /// Both bodies, sealed together.
    pub sealed: SealedRow,
}

/// What a rekey rewraps: identifies one wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewrapTarget {
    /// `secret_versions(name, version)`.
    Secret(String, i64),
    /// `transit_key_versions(name, version)`.
    Transit(String, i64),
    /// `payload_captures(request_id)`.
    Capture(String),
    /// `sealed_keys(name, version)`: a cluster's key material.
    SealedKey(String, i64),
}

fn sealed_from(r: &impl DbRow) -> Result<Option<SealedRow>, StoreError> {
    let wrapped: Option<Vec<u8>> = r.col("wrapped_key")?;
    let ciphertext: Option<Vec<u8>> = r.col("ciphertext")?;
    Ok(match (wrapped, ciphertext) {
        (Some(wrapped_key), Some(ciphertext)) => Some(SealedRow {
            kek_id: r.col("kek_id")?,
            wrapped_key,
            ciphertext,
        }),
        _ => None,
    })
}

fn version_from(r: &impl DbRow) -> Result<SecretVersionRow, StoreError> {
    Ok(SecretVersionRow {
        name: r.col("name")?,
        version: r.col("version")?,
        created_at: r.col("created_at")?,
        retired_at: r.col("retired_at")?,
        destroyed_at: r.col("destroyed_at")?,
        sealed: sealed_from(r)?,
    })
}

fn meta_from(r: &impl DbRow) -> Result<SecretMeta, StoreError> {
    Ok(SecretMeta {
        name: r.col("name")?,
        created_at: r.col("created_at")?,
        rotation_period_s: r.col("rotation_period_s")?,
        grace_period_s: r.col("grace_period_s")?,
        hook: r.col("hook")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

const VERSION_COLUMNS: &str =
    "name, version, created_at, retired_at, destroyed_at, kek_id, wrapped_key, ciphertext";

impl Store {
    /// The recorded KEK fingerprint, if the vault was ever used.
    pub async fn kek_meta(&self) -> Result<Option<KekMeta>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query("SELECT kek_id, kek_version, updated_at FROM vault_meta WHERE id = 1")
                .fetch_optional(pool)
                .await?;
            row.map(|r| {
                Ok(KekMeta {
                    kek_id: r.col("kek_id")?,
                    kek_version: r.col("kek_version")?,
                    updated_at: r.col("updated_at")?,
                })
            })
            .transpose()
        })
    }

    /// Records the first KEK's fingerprint. Fails with `Conflict` if one is
    /// already recorded (the caller compares fingerprints first).
    pub async fn init_kek_meta(&self, kek_id: &str, now: i64) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query(
                "INSERT INTO vault_meta (id, kek_id, kek_version, updated_at) VALUES (1, ?, 1, ?)",
            )
            .bind(kek_id)
            .bind(now)
            .execute(pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict("vault key-encryption key".into())
                } else {
                    e.into()
                }
            })?;
            Ok(())
        })
    }

    /// Creates a secret with its first version. `Conflict` if the name exists.
    pub async fn create_secret(
        &self,
        meta: &SecretMeta,
        sealed: &SealedRow,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let inserted = query(
                "INSERT INTO secrets (name, created_at, rotation_period_s, grace_period_s, hook)
             VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&meta.name)
            .bind(meta.created_at)
            .bind(meta.rotation_period_s)
            .bind(meta.grace_period_s)
            .bind(&meta.hook)
            .execute(&mut *tx)
            .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(meta.name.clone()));
                }
                other => other?,
            };
            query(
            "INSERT INTO secret_versions (name, version, created_at, kek_id, wrapped_key, ciphertext)
             VALUES (?, 1, ?, ?, ?, ?)",
        )
        .bind(&meta.name)
        .bind(meta.created_at)
        .bind(&sealed.kek_id)
        .bind(&sealed.wrapped_key)
        .bind(&sealed.ciphertext)
        .execute(&mut *tx)
        .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Changes a secret's rotation settings.
    pub async fn update_secret_settings(&self, meta: &SecretMeta) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let updated = query(
            "UPDATE secrets SET rotation_period_s = ?, grace_period_s = ?, hook = ? WHERE name = ?",
        )
        .bind(meta.rotation_period_s)
        .bind(meta.grace_period_s)
        .bind(&meta.hook)
        .bind(&meta.name)
        .execute(pool)
        .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound(meta.name.clone()));
            }
            Ok(())
        })
    }

    /// Adds version `version` of a secret, which must be exactly one more than
    /// the current version, and retires the current one. When two rotations
    /// race from the same current version, the primary key lets exactly one
    /// insert; the other gets `Conflict` and no version is lost or overwritten.
    pub async fn add_secret_version(
        &self,
        name: &str,
        version: i64,
        now: i64,
        sealed: &SealedRow,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let inserted = query(
            "INSERT INTO secret_versions (name, version, created_at, kek_id, wrapped_key, ciphertext)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(version)
        .bind(now)
        .bind(&sealed.kek_id)
        .bind(&sealed.wrapped_key)
        .bind(&sealed.ciphertext)
        .execute(&mut *tx)
        .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(format!("{name} version {version}")));
                }
                Err(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => {
                    return Err(StoreError::NotFound(name.to_string()));
                }
                other => other?,
            };
            // Versions are contiguous: version - 1 must exist (it is the one retired).
            let retired = query(
            "UPDATE secret_versions SET retired_at = ? WHERE name = ? AND version = ? AND retired_at IS NULL",
        )
        .bind(now)
        .bind(name)
        .bind(version - 1)
        .execute(&mut *tx)
        .await?;
            if retired.rows_affected() != 1 {
                return Err(StoreError::Conflict(format!("{name} version {version}")));
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// One secret's settings.
    pub async fn secret(&self, name: &str) -> Result<Option<SecretMeta>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
            "SELECT name, created_at, rotation_period_s, grace_period_s, hook FROM secrets WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(pool)
        .await?;
            row.as_ref().map(meta_from).transpose()
        })
    }

    /// Every secret's settings, by name.
    pub async fn secrets(&self) -> Result<Vec<SecretMeta>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
            "SELECT name, created_at, rotation_period_s, grace_period_s, hook FROM secrets ORDER BY name",
        )
        .fetch_all(pool)
        .await?;
            rows.iter().map(meta_from).collect()
        })
    }

    /// Versions of one secret (or of all), by name then version.
    pub async fn secret_versions(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<SecretVersionRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query_dyn(format!(
            "SELECT {VERSION_COLUMNS} FROM secret_versions WHERE (?1 IS NULL OR name = ?1) ORDER BY name, version"
        ))
        .bind(name)
        .fetch_all(pool)
        .await?;
            rows.iter().map(version_from).collect()
        })
    }

    /// Deletes a secret and every version of it.
    pub async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            query("DELETE FROM secret_versions WHERE name = ?")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let deleted = query("DELETE FROM secrets WHERE name = ?")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            if deleted.rows_affected() == 0 {
                return Err(StoreError::NotFound(name.to_string()));
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Destroys the key material of versions retired before their secret's
    /// grace period ended (`retired_at + grace_period_s <= now`). Returns the
    /// (name, version) pairs destroyed.
    pub async fn destroy_expired_versions(
        &self,
        now: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let rows = query(
                "SELECT v.name, v.version FROM secret_versions v JOIN secrets s ON s.name = v.name
             WHERE v.destroyed_at IS NULL AND v.retired_at IS NOT NULL
               AND v.retired_at + s.grace_period_s <= ?",
            )
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            let mut destroyed = Vec::with_capacity(rows.len());
            for r in &rows {
                let (name, version): (String, i64) = (r.col("name")?, r.col("version")?);
                query(
                "UPDATE secret_versions SET destroyed_at = ?, wrapped_key = NULL, ciphertext = NULL
                 WHERE name = ? AND version = ?",
            )
            .bind(now)
            .bind(&name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
                destroyed.push((name, version));
            }
            tx.commit().await?;
            Ok(destroyed)
        })
    }

    /// Creates a transit key with its first version, or adds the next version
    /// of an existing one (`version` = current + 1; a race gets `Conflict`).
    pub async fn add_transit_version(&self, row: &TransitVersionRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            if row.version == 1 {
                let created = query(
                    "INSERT INTO transit_keys (name, created_at, exportable) VALUES (?, ?, ?)",
                )
                .bind(&row.name)
                .bind(row.created_at)
                .bind(row.exportable)
                .execute(&mut *tx)
                .await;
                match created {
                    Err(e) if is_unique_violation(&e) => {
                        return Err(StoreError::Conflict(row.name.clone()));
                    }
                    other => other?,
                };
            }
            let inserted = query(
            "INSERT INTO transit_key_versions (name, version, created_at, kek_id, wrapped_key, ciphertext)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.name)
        .bind(row.version)
        .bind(row.created_at)
        .bind(&row.sealed.kek_id)
        .bind(&row.sealed.wrapped_key)
        .bind(&row.sealed.ciphertext)
        .execute(&mut *tx)
        .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(format!(
                        "{} version {}",
                        row.name, row.version
                    )));
                }
                Err(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => {
                    return Err(StoreError::NotFound(row.name.clone()));
                }
                other => other?,
            };
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every version of every transit key, by name then version.
    pub async fn transit_versions(&self) -> Result<Vec<TransitVersionRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT v.name, v.version, v.created_at, v.kek_id, v.wrapped_key, v.ciphertext,
                    k.exportable
             FROM transit_key_versions v JOIN transit_keys k ON k.name = v.name
             ORDER BY v.name, v.version",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(TransitVersionRow {
                        name: r.col("name")?,
                        version: r.col("version")?,
                        created_at: r.col("created_at")?,
                        sealed: sealed_from(r)?.ok_or_else(|| StoreError::Corrupt {
                            table: "transit_key_versions",
                            detail: "missing key material".into(),
                        })?,
                        exportable: r.col("exportable")?,
                    })
                })
                .collect()
        })
    }

    /// Stores a batch of captures in one transaction.
    pub async fn insert_captures(&self, captures: &[CaptureRow]) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            for c in captures {
                query(
                    "INSERT INTO payload_captures (request_id, route, captured_at, expires_at,
                   request_sha256, response_sha256, request_bytes, response_bytes, truncated,
                   kek_id, wrapped_key, ciphertext)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (request_id) DO UPDATE SET route = excluded.route,
                   captured_at = excluded.captured_at, expires_at = excluded.expires_at,
                   request_sha256 = excluded.request_sha256,
                   response_sha256 = excluded.response_sha256,
                   request_bytes = excluded.request_bytes, response_bytes = excluded.response_bytes,
                   truncated = excluded.truncated, kek_id = excluded.kek_id,
                   wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext",
                )
                .bind(&c.request_id)
                .bind(&c.route)
                .bind(c.captured_at)
                .bind(c.expires_at)
                .bind(&c.request_sha256)
                .bind(&c.response_sha256)
                .bind(c.request_bytes)
                .bind(c.response_bytes)
                .bind(c.truncated)
                .bind(&c.sealed.kek_id)
                .bind(&c.sealed.wrapped_key)
                .bind(&c.sealed.ciphertext)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// One capture by the audit record's request id.
    pub async fn capture(&self, request_id: &str) -> Result<Option<CaptureRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
            "SELECT request_id, route, captured_at, expires_at, request_sha256, response_sha256,
                    request_bytes, response_bytes, truncated, kek_id, wrapped_key, ciphertext
             FROM payload_captures WHERE request_id = ?",
        )
        .bind(request_id)
        .fetch_optional(pool)
        .await?;
            row.map(|r| {
                Ok(CaptureRow {
                    request_id: r.col("request_id")?,
                    route: r.col("route")?,
                    captured_at: r.col("captured_at")?,
                    expires_at: r.col("expires_at")?,
                    request_sha256: r.col("request_sha256")?,
                    response_sha256: r.col("response_sha256")?,
                    request_bytes: r.col("request_bytes")?,
                    response_bytes: r.col("response_bytes")?,
                    truncated: r.col("truncated")?,
                    sealed: sealed_from(&r)?.ok_or_else(|| StoreError::Corrupt {
                        table: "payload_captures",
                        detail: "missing key material".into(),
                    })?,
                })
            })
            .transpose()
        })
    }

    /// Deletes captures whose retention has passed (crypto-shredding: the row
    /// holds the only copy of its data key). Returns how many were deleted.
    pub async fn shred_expired_captures(&self, now: i64) -> Result<u64, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let deleted = query("DELETE FROM payload_captures WHERE expires_at <= ?")
                .bind(now)
                .execute(pool)
                .await?;
            Ok(deleted.rows_affected())
        })
    }

    /// Replaces the KEK: in one transaction, checks that `old_kek_id` is still
    /// the recorded KEK, passes every wrapped data key to `rewrap`, writes the
    /// results and records `new_kek_id`. If `rewrap` fails for any key, nothing
    /// is written. Returns the number of keys rewrapped.
    pub async fn rekey_vault<E>(
        &self,
        old_kek_id: &str,
        new_kek_id: &str,
        now: i64,
        mut rewrap: impl FnMut(&RewrapTarget, &[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Result<u64, E>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let current: Option<String> =
                query_scalar("SELECT kek_id FROM vault_meta WHERE id = 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            if current.as_deref() != Some(old_kek_id) {
                return Err(StoreError::Conflict("vault key-encryption key".into()));
            }
            let mut work: Vec<(RewrapTarget, Vec<u8>)> = Vec::new();
            for r in query(
            "SELECT name, version, wrapped_key FROM secret_versions WHERE wrapped_key IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            work.push((
                RewrapTarget::Secret(r.col("name")?, r.col("version")?),
                r.col("wrapped_key")?,
            ));
        }
            for r in query("SELECT name, version, wrapped_key FROM transit_key_versions")
                .fetch_all(&mut *tx)
                .await?
            {
                work.push((
                    RewrapTarget::Transit(r.col("name")?, r.col("version")?),
                    r.col("wrapped_key")?,
                ));
            }
            for r in query("SELECT request_id, wrapped_key FROM payload_captures")
                .fetch_all(&mut *tx)
                .await?
            {
                work.push((
                    RewrapTarget::Capture(r.col("request_id")?),
                    r.col("wrapped_key")?,
                ));
            }
            for r in query("SELECT name, version, wrapped_key FROM sealed_keys")
                .fetch_all(&mut *tx)
                .await?
            {
                work.push((
                    RewrapTarget::SealedKey(r.col("name")?, r.col("version")?),
                    r.col("wrapped_key")?,
                ));
            }
            let mut count = 0u64;
            for (target, wrapped) in &work {
                let new = match rewrap(target, wrapped) {
                    Ok(new) => new,
                    // Dropping `tx` rolls back: nothing was overwritten.
                    Err(e) => return Ok(Err(e)),
                };
                let query = match target {
                RewrapTarget::Secret(name, version) => query(
                    "UPDATE secret_versions SET wrapped_key = ?, kek_id = ? WHERE name = ? AND version = ?",
                )
                .bind(new)
                .bind(new_kek_id)
                .bind(name)
                .bind(*version),
                RewrapTarget::Transit(name, version) => query(
                    "UPDATE transit_key_versions SET wrapped_key = ?, kek_id = ? WHERE name = ? AND version = ?",
                )
                .bind(new)
                .bind(new_kek_id)
                .bind(name)
                .bind(*version),
                RewrapTarget::Capture(id) => query(
                    "UPDATE payload_captures SET wrapped_key = ?, kek_id = ? WHERE request_id = ?",
                )
                .bind(new)
                .bind(new_kek_id)
                .bind(id),
                RewrapTarget::SealedKey(name, version) => query(
                    "UPDATE sealed_keys SET wrapped_key = ?, kek_id = ? WHERE name = ? AND version = ?",
                )
                .bind(new)
                .bind(new_kek_id)
                .bind(name)
                .bind(*version),
            };
                query.execute(&mut *tx).await?;
                count += 1;
            }
            // Cluster mode: the replicas compare their KEK with this check
            // value at start; after a rekey the new KEK is the cluster's.
            query(
                "UPDATE key_fingerprints SET fingerprint = ?, recorded_at = ? WHERE name = 'kek'",
            )
            .bind(new_kek_id)
            .bind(now.saturating_mul(1000))
            .execute(&mut *tx)
            .await?;
            query(
            "UPDATE vault_meta SET kek_id = ?, kek_version = kek_version + 1, updated_at = ? WHERE id = 1",
        )
        .bind(new_kek_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
            tx.commit().await?;
            Ok(Ok(count))
        })
    }
}
