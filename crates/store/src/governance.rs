//! The model and dataset registries (migrations `0019_model_registry.sql`,
//! `0020_dataset_registry.sql` and `0031_dataset_lifecycle.sql`). The store
//! keeps rows and enforces the lifecycle's order in one transaction;
//! verifying signatures and deciding who may change what is the admin API's
//! job.

use std::fmt;
use std::str::FromStr;

use crate::backend::DbRow;
use crate::{Store, StoreError};

/// Where a registered model version or dataset is in its life. Each step
/// is one way: `draft → approved → deprecated → revoked`, and any state but
/// `revoked` may be revoked at once (a compromised artifact, or data whose
/// consent was withdrawn, must not wait for its deprecation). Models and
/// datasets share the states so policy reads one vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    /// Registered, not yet reviewed.
    Draft,
    /// Reviewed and in use.
    Approved,
    /// Still served, to be replaced.
    Deprecated,
    /// Never to be used again.
    Revoked,
}

impl Lifecycle {
    /// Every state, in lifecycle order.
    pub const ALL: [Lifecycle; 4] = [
        Lifecycle::Draft,
        Lifecycle::Approved,
        Lifecycle::Deprecated,
        Lifecycle::Revoked,
    ];

    /// The state's name in the store, the API and policy (`resource.lifecycle`).
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Draft => "draft",
            Lifecycle::Approved => "approved",
            Lifecycle::Deprecated => "deprecated",
            Lifecycle::Revoked => "revoked",
        }
    }

    /// Whether a model in this state may move to `to`.
    pub fn may_become(self, to: Lifecycle) -> bool {
        use Lifecycle::*;
        matches!(
            (self, to),
            (Draft, Approved) | (Approved, Deprecated) | (Draft | Approved | Deprecated, Revoked)
        )
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lifecycle {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lifecycle::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt {
                table: "models or datasets",
                detail: format!("unknown lifecycle `{s}`"),
            })
    }
}

/// One registered model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRow {
    /// The model's registry name (`llama-3-8b`).
    pub name: String,
    /// Its version (`1.2.0`).
    pub version: String,
    /// `sha256:<64 hex>` of the artifact.
    pub digest: String,
    /// Where it is in its life.
    pub lifecycle: Lifecycle,
    /// Whether its signature bundle verified against a pinned key.
    pub verified: bool,
    /// The pinned key that verified it.
    pub verified_key: Option<String>,
    /// The signature bundle as submitted (JSON text).
    pub signature: Option<String>,
    /// The provenance statement (in-toto / SLSA, JSON text).
    pub provenance: Option<String>,
    /// The evaluation report (JSON text).
    pub eval: Option<String>,
    /// Who registered it.
    pub registered_by: String,
    /// When (epoch ms).
    pub registered_ms: i64,
    /// Who made the last lifecycle change (the registrant until one is made).
    pub changed_by: String,
    /// When (epoch ms).
    pub changed_ms: i64,
}

impl ModelRow {
    /// `NAME@VERSION`, how routes and the CLI name a registry entry.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// One registered dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRow {
    /// Its name, `Dataset::"<name>"` in policy.
    pub name: String,
    /// The accountable owner (a team or a person).
    pub owner: String,
    /// `public`, `internal`, `confidential` or `restricted`.
    pub classification: String,
    /// Where the data came from.
    pub source: String,
    /// The licence it is used under.
    pub licence: String,
    /// When it was collected (`YYYY-MM-DD`).
    pub collected: String,
    /// The legal basis for keeping it (`consent`, `contract`, …).
    pub consent_basis: String,
    /// How long data from it may be kept, in days.
    pub retention_days: i64,
    /// What it may be used for.
    pub purposes: Vec<String>,
    /// Where it is in its life (`resource.lifecycle` in policy).
    pub lifecycle: Lifecycle,
    /// Who registered it.
    pub registered_by: String,
    /// When (epoch ms).
    pub registered_ms: i64,
    /// Who made the last lifecycle change (the registrant until one is made).
    pub changed_by: String,
    /// When (epoch ms).
    pub changed_ms: i64,
}

const MODEL_COLUMNS: &str = "name, version, digest, lifecycle, verified, verified_key, signature,
    provenance, eval, registered_by, registered_ms, changed_by, changed_ms";

fn model_row(r: &impl DbRow) -> Result<ModelRow, StoreError> {
    let lifecycle: String = r.col("lifecycle")?;
    Ok(ModelRow {
        name: r.col("name")?,
        version: r.col("version")?,
        digest: r.col("digest")?,
        lifecycle: lifecycle.parse()?,
        verified: r.col::<i64, _>("verified")? != 0,
        verified_key: r.col("verified_key")?,
        signature: r.col("signature")?,
        provenance: r.col("provenance")?,
        eval: r.col("eval")?,
        registered_by: r.col("registered_by")?,
        registered_ms: r.col("registered_ms")?,
        changed_by: r.col("changed_by")?,
        changed_ms: r.col("changed_ms")?,
    })
}

const DATASET_COLUMNS: &str = "name, owner, classification, source, licence, collected,
    consent_basis, retention_days, purposes, lifecycle, registered_by, registered_ms,
    changed_by, changed_ms";

fn dataset_row(r: &impl DbRow) -> Result<DatasetRow, StoreError> {
    let purposes: String = r.col("purposes")?;
    let lifecycle: String = r.col("lifecycle")?;
    Ok(DatasetRow {
        name: r.col("name")?,
        owner: r.col("owner")?,
        classification: r.col("classification")?,
        source: r.col("source")?,
        licence: r.col("licence")?,
        collected: r.col("collected")?,
        consent_basis: r.col("consent_basis")?,
        retention_days: r.col("retention_days")?,
        purposes: serde_json::from_str(&purposes).map_err(|e| StoreError::Corrupt {
            table: "datasets",
            detail: format!("purposes: {e}"),
        })?,
        lifecycle: lifecycle.parse()?,
        registered_by: r.col("registered_by")?,
        registered_ms: r.col("registered_ms")?,
        changed_by: r.col("changed_by")?,
        changed_ms: r.col("changed_ms")?,
    })
}

impl Store {
    /// Registers a model version as a draft. A version is registered once:
    /// its digest never changes (register a new version instead).
    pub async fn register_model(&self, row: &ModelRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let done = query(
                "INSERT INTO models (name, version, digest, lifecycle, verified, verified_key,
                    signature, provenance, eval, registered_by, registered_ms, changed_by, changed_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(name, version) DO NOTHING",
            )
            .bind(&row.name)
            .bind(&row.version)
            .bind(&row.digest)
            .bind(row.lifecycle.as_str())
            .bind(i64::from(row.verified))
            .bind(&row.verified_key)
            .bind(&row.signature)
            .bind(&row.provenance)
            .bind(&row.eval)
            .bind(&row.registered_by)
            .bind(row.registered_ms)
            .bind(&row.changed_by)
            .bind(row.changed_ms)
            .execute(pool)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(row.id()));
            }
            Ok(())
        })
    }

    /// Every registered model version, by name and version.
    pub async fn registry_models(&self) -> Result<Vec<ModelRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query_dyn(format!(
                "SELECT {MODEL_COLUMNS} FROM models ORDER BY name, version"
            ))
            .fetch_all(pool)
            .await?;
            rows.iter().map(model_row).collect()
        })
    }

    /// One model version.
    pub async fn registry_model(&self, name: &str, version: &str) -> Result<ModelRow, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query_dyn(format!(
                "SELECT {MODEL_COLUMNS} FROM models WHERE name = ? AND version = ?"
            ))
            .bind(name)
            .bind(version)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(r) => model_row(&r),
                None => Err(StoreError::NotFound(format!("{name}@{version}"))),
            }
        })
    }

    /// Moves a model version to `to`; refused ([`StoreError::Invalid`]) when
    /// its current state may not become `to`. The check and the change are
    /// one transaction, so two admins racing cannot skip a step.
    pub async fn set_model_lifecycle(
        &self,
        name: &str,
        version: &str,
        to: Lifecycle,
        by: &str,
        at_ms: i64,
    ) -> Result<ModelRow, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let current: Option<String> =
                query("SELECT lifecycle FROM models WHERE name = ? AND version = ?")
                    .bind(name)
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.col("lifecycle"))
                    .transpose()?;
            let Some(current) = current else {
                return Err(StoreError::NotFound(format!("{name}@{version}")));
            };
            let current: Lifecycle = current.parse()?;
            if !current.may_become(to) {
                return Err(StoreError::Invalid(format!(
                    "model `{name}@{version}` is {current}: it cannot become {to}"
                )));
            }
            query(
                "UPDATE models SET lifecycle = ?, changed_by = ?, changed_ms = ?
                 WHERE name = ? AND version = ?",
            )
            .bind(to.as_str())
            .bind(by)
            .bind(at_ms)
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<(), StoreError>(())
        })?;
        self.registry_model(name, version).await
    }

    /// Registers a dataset. A name is registered once.
    pub async fn register_dataset(&self, row: &DatasetRow) -> Result<(), StoreError> {
        let purposes = serde_json::to_string(&row.purposes).map_err(|e| StoreError::Corrupt {
            table: "datasets",
            detail: e.to_string(),
        })?;
        crate::backend::with_pool!(&self.pool, |pool| {
            let done = query(
                "INSERT INTO datasets (name, owner, classification, source, licence, collected,
                    consent_basis, retention_days, purposes, lifecycle, registered_by,
                    registered_ms, changed_by, changed_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(name) DO NOTHING",
            )
            .bind(&row.name)
            .bind(&row.owner)
            .bind(&row.classification)
            .bind(&row.source)
            .bind(&row.licence)
            .bind(&row.collected)
            .bind(&row.consent_basis)
            .bind(row.retention_days)
            .bind(&purposes)
            .bind(row.lifecycle.as_str())
            .bind(&row.registered_by)
            .bind(row.registered_ms)
            .bind(&row.changed_by)
            .bind(row.changed_ms)
            .execute(pool)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(row.name.clone()));
            }
            Ok(())
        })
    }

    /// Every registered dataset, by name.
    pub async fn datasets(&self) -> Result<Vec<DatasetRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query_dyn(format!(
                "SELECT {DATASET_COLUMNS} FROM datasets ORDER BY name"
            ))
            .fetch_all(pool)
            .await?;
            rows.iter().map(dataset_row).collect()
        })
    }

    /// One dataset.
    pub async fn dataset(&self, name: &str) -> Result<DatasetRow, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row = query_dyn(format!(
                "SELECT {DATASET_COLUMNS} FROM datasets WHERE name = ?"
            ))
            .bind(name)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(r) => dataset_row(&r),
                None => Err(StoreError::NotFound(name.to_string())),
            }
        })
    }

    /// Moves a dataset to `to`; refused ([`StoreError::Invalid`]) when its
    /// current state may not become `to`, in one transaction as for models.
    pub async fn set_dataset_lifecycle(
        &self,
        name: &str,
        to: Lifecycle,
        by: &str,
        at_ms: i64,
    ) -> Result<DatasetRow, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let current: Option<String> = query("SELECT lifecycle FROM datasets WHERE name = ?")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.col("lifecycle"))
                .transpose()?;
            let Some(current) = current else {
                return Err(StoreError::NotFound(name.to_string()));
            };
            let current: Lifecycle = current.parse()?;
            if !current.may_become(to) {
                return Err(StoreError::Invalid(format!(
                    "dataset `{name}` is {current}: it cannot become {to}"
                )));
            }
            query(
                "UPDATE datasets SET lifecycle = ?, changed_by = ?, changed_ms = ?
                 WHERE name = ?",
            )
            .bind(to.as_str())
            .bind(by)
            .bind(at_ms)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<(), StoreError>(())
        })?;
        self.dataset(name).await
    }
}

/// What a route left behind that is older than a retention cutoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldPast {
    /// Captured payloads.
    pub captures: u64,
    /// Audit records whose personal data is still held in clear.
    pub personal_records: u64,
    /// The oldest of them (epoch ms); 0 when none.
    pub oldest_ms: i64,
}

/// At most this many audit records with personal data are read per report
/// and route; beyond it the count is a lower bound.
const HELD_PAST_SCAN: i64 = 100_000;

impl Store {
    /// What `route` left behind before `cutoff_ms`: captured payloads and
    /// audit records whose personal data (`audit_personal`) is still held.
    /// A record belongs to the route when its resource is the route or one
    /// of its tools or models (`<route>/…`).
    pub async fn held_past(&self, route: &str, cutoff_ms: i64) -> Result<HeldPast, StoreError> {
        let (captures, oldest_capture_s) = crate::backend::with_pool!(&self.pool, |pool| {
            let row = query(
                "SELECT COUNT(*) AS n, MIN(captured_at) AS oldest FROM payload_captures
                 WHERE route = ? AND captured_at < ?",
            )
            .bind(route)
            .bind(cutoff_ms.div_euclid(1000))
            .fetch_one(pool)
            .await?;
            let n: i64 = row.col("n")?;
            let oldest: Option<i64> = row.col("oldest")?;
            Ok::<_, StoreError>((n as u64, oldest))
        })?;
        let rows = self
            .stored_rows(
                "SELECT {RECORD_COLUMNS} FROM audit_log
                 WHERE time_ms < ? AND seq IN (SELECT seq FROM audit_personal)
                 ORDER BY seq LIMIT ?",
                &[cutoff_ms, HELD_PAST_SCAN],
            )
            .await?;
        let prefix = format!("{route}/");
        let records = self
            .records_of(&rows, |r| {
                r.resource
                    .as_deref()
                    .is_some_and(|x| x == route || x.starts_with(&prefix))
            })
            .await?;
        let oldest = [
            oldest_capture_s.map(|s| s.saturating_mul(1000)),
            records.iter().map(|r| r.time_ms).min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0);
        Ok(HeldPast {
            captures,
            personal_records: records.len() as u64,
            oldest_ms: oldest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(version: &str) -> ModelRow {
        ModelRow {
            name: "llama".into(),
            version: version.into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            lifecycle: Lifecycle::Draft,
            verified: true,
            verified_key: Some("release".into()),
            signature: Some("{}".into()),
            provenance: None,
            eval: None,
            registered_by: "alice".into(),
            registered_ms: 1,
            changed_by: "alice".into(),
            changed_ms: 1,
        }
    }

    #[test]
    fn the_lifecycle_moves_one_way() {
        use Lifecycle::*;
        let allowed: Vec<(Lifecycle, Lifecycle)> = Lifecycle::ALL
            .into_iter()
            .flat_map(|a| Lifecycle::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.may_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Draft, Approved),
                (Draft, Revoked),
                (Approved, Deprecated),
                (Approved, Revoked),
                (Deprecated, Revoked),
            ]
        );
    }

    #[tokio::test]
    async fn models_register_once_and_follow_their_lifecycle() {
        for db in crate::testing::TestDb::all().await {
            models_register_once_and_follow_their_lifecycle_on(db.open().await).await;
        }
    }

    async fn models_register_once_and_follow_their_lifecycle_on(store: Store) {
        store.register_model(&model("1")).await.unwrap();
        let again = store.register_model(&model("1")).await.unwrap_err();
        assert!(matches!(again, StoreError::Conflict(_)), "{again}");
        store.register_model(&model("2")).await.unwrap();
        assert_eq!(
            store.registry_models().await.unwrap(),
            vec![model("1"), model("2")]
        );

        let skip = store
            .set_model_lifecycle("llama", "1", Lifecycle::Deprecated, "bob", 5)
            .await
            .unwrap_err();
        assert!(matches!(skip, StoreError::Invalid(_)), "{skip}");
        let approved = store
            .set_model_lifecycle("llama", "1", Lifecycle::Approved, "bob", 5)
            .await
            .unwrap();
        assert_eq!(approved.lifecycle, Lifecycle::Approved);
        assert_eq!(
            (approved.changed_by.as_str(), approved.changed_ms),
            ("bob", 5)
        );
        store
            .set_model_lifecycle("llama", "1", Lifecycle::Revoked, "bob", 6)
            .await
            .unwrap();
        let back = store
            .set_model_lifecycle("llama", "1", Lifecycle::Approved, "bob", 7)
            .await
            .unwrap_err();
        assert!(matches!(back, StoreError::Invalid(_)), "{back}");
        let missing = store
            .set_model_lifecycle("llama", "9", Lifecycle::Approved, "bob", 7)
            .await
            .unwrap_err();
        assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
        assert_eq!(
            store.registry_model("llama", "2").await.unwrap().lifecycle,
            Lifecycle::Draft
        );
    }

    #[tokio::test]
    async fn datasets_register_once_and_keep_their_purposes() {
        for db in crate::testing::TestDb::all().await {
            let store = db.open().await;
            let row = DatasetRow {
                name: "claims".into(),
                owner: "risk-team".into(),
                classification: "confidential".into(),
                source: "claims-db export".into(),
                licence: "internal".into(),
                collected: "2026-01-31".into(),
                consent_basis: "contract".into(),
                retention_days: 90,
                purposes: vec!["fraud-detection".into(), "support".into()],
                lifecycle: Lifecycle::Draft,
                registered_by: "alice".into(),
                registered_ms: 3,
                changed_by: "alice".into(),
                changed_ms: 3,
            };
            store.register_dataset(&row).await.unwrap();
            let again = store.register_dataset(&row).await.unwrap_err();
            assert!(matches!(again, StoreError::Conflict(_)), "{again}");
            assert_eq!(store.datasets().await.unwrap(), vec![row.clone()]);

            // The lifecycle is the models': one way, revoke from anywhere.
            let skip = store
                .set_dataset_lifecycle("claims", Lifecycle::Deprecated, "bob", 5)
                .await
                .unwrap_err();
            assert!(matches!(skip, StoreError::Invalid(_)), "{skip}");
            let revoked = store
                .set_dataset_lifecycle("claims", Lifecycle::Revoked, "bob", 6)
                .await
                .unwrap();
            assert_eq!(
                (
                    revoked.lifecycle,
                    revoked.changed_by.as_str(),
                    revoked.changed_ms
                ),
                (Lifecycle::Revoked, "bob", 6)
            );
            let back = store
                .set_dataset_lifecycle("claims", Lifecycle::Approved, "bob", 7)
                .await
                .unwrap_err();
            assert!(matches!(back, StoreError::Invalid(_)), "{back}");
            let missing = store
                .set_dataset_lifecycle("other", Lifecycle::Approved, "bob", 7)
                .await
                .unwrap_err();
            assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
            assert_eq!(store.dataset("claims").await.unwrap(), revoked);
        }
    }
}
