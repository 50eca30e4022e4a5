//! Persistent state: agents and their certificates, the audit log, admin credentials.
//!
//! SQLite is the embedded default (one file in the state directory, WAL mode,
//! `synchronous = FULL` so a committed audit batch survives a crash or power loss).
//! PostgreSQL is the backend of cluster mode (`[store] url = "postgres://..."`,
//! docs/cluster.md): several gateway replicas share one database. Both sit
//! behind the same methods of [`Store`] (see `backend.rs` for how one body
//! serves both); the rest of Portcullis never sees which one it has.
//!
//! The store is never on the request hot path: the gateway reads agents from an
//! in-memory snapshot and hands audit records to a batching writer.
#![forbid(unsafe_code)]

mod agent_keys;
mod analytics;
mod backend;
mod cluster;
mod health;
mod intent_takeover;
mod shared_models;
pub use intent_takeover::Lease;
pub use shared_models::SharedModel;
mod shared_limits;
pub use cluster::{
    CHANGES_CHANNEL, Candidate, Change, ChangeListener, Heard, KeyCheck, LeaderRole, SingleUseKind,
};
pub use health::StoreHealth;
pub use shared_limits::{CounterDelta, RateLease};
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub use analytics::{AlertRow, QuarantineRow, RiskPoint};
mod identity;
pub use identity::{AdminUserRow, PostureRow, RevokedTokenRow};
mod passkeys;
pub use passkeys::PasskeyRow;
mod admin_tokens;
mod ceremonies;
pub use admin_tokens::{ADMIN_KIND_CERTIFICATE, ADMIN_KIND_TOKEN, AdminTokenRow};
pub use ceremonies::{CeremonyBound, Spend};
mod admissions;
mod console_sessions;
mod step_up;
pub use console_sessions::{ConsoleSessionLogin, ConsoleSessionRow, LiveConsoleSession};
pub use step_up::StepUpWindowRow;
mod oauth_clients;
pub use oauth_clients::{OAuthClientRow, RefreshOutcome, RefreshTokenRow};
mod redteam;
pub use redteam::RedteamRunRow;
mod sealed_keys;
pub use sealed_keys::SealedKeyRow;
mod audit_archive;
mod audit_log;
mod audit_rows;
pub mod backup;
pub mod pg_backup;
pub use audit_archive::{
    ArchiveError, ArchiveOutcome, ArchiveVerifySummary, ArchivedInclusion, SEGMENT_FORMAT, Segment,
    SegmentSeal, archived_inclusion, read_segments,
};
mod governance;
pub use governance::{DatasetRow, HeldPast, Lifecycle, ModelRow};
mod mcp_tools;
pub use agent_keys::AgentKeyRow;
pub use mcp_tools::McpToolRow;
mod inventory;
pub use inventory::InventoryEdge;
mod llm_budget;
pub use llm_budget::BudgetDayRow;
mod approvals;
pub use approvals::{ApprovalRow, GrantRow};
mod policy;
pub use policy::{NewPolicyVersion, PolicySlot, PolicyState, PolicyVersionRow};

pub use audit_log::{
    ArchivedSegment, AuditAppender, AuditIntentRow, AuditVerifyFailure, NODE_MIN_LEVEL,
    PersonalValue, StoredCheckpoint, TreeHead, open_checkpoint,
};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use backend::{DbRow, Pool};

mod vault;
pub use vault::{
    CaptureRow, KekMeta, RewrapTarget, SealedRow, SecretMeta, SecretVersionRow, TransitVersionRow,
};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be migrated.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value does not decode.
    #[error("corrupt stored value in `{table}`: {detail}")]
    Corrupt {
        /// The table holding it.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The object already exists.
    #[error("`{0}` already exists")]
    Conflict(String),
    /// The object does not exist.
    #[error("`{0}` does not exist")]
    NotFound(String),
    /// The request cannot be answered as asked (e.g. a tree size beyond the log).
    #[error("{0}")]
    Invalid(String),
    /// Cluster mode: another replica took this one for dead and took over
    /// its audit intents; it appends nothing until it has re-registered.
    #[error(
        "this replica was taken for dead and fenced off; it must re-register before it appends"
    )]
    Fenced,
}

impl StoreError {
    /// Whether the database did not answer in time or at all: a lock
    /// another session or process holds past the lock timeout, no
    /// connection free in time, a connection lost. A later retry may
    /// succeed; callers answer 503 `store_unavailable`, not an internal
    /// error.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| unavailable_code(&code)),
            _ => false,
        }
    }
}

/// PostgreSQL's SQLSTATEs (five characters) for a lock wait past
/// `lock_timeout`, a cancelled statement, a server shutting down or not
/// yet accepting, too many connections and the connection exceptions
/// (class 08); SQLite's result codes (a number) BUSY and LOCKED, with
/// their extended codes.
fn unavailable_code(code: &str) -> bool {
    if code.len() == 5 {
        return matches!(code, "55P03" | "57014" | "57P01" | "57P03" | "53300")
            || code.starts_with("08");
    }
    code.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
}

/// An agent as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// The agent's name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// A certificate issued to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRow {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The agent it was issued to.
    pub agent: String,
    /// The SPIFFE ID it carries.
    pub spiffe_id: String,
    /// Issue time, seconds since the epoch.
    pub issued_at: i64,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// The audit log's string table as last read (see `audit_rows.rs`).
    strings: audit_rows::StringCache,
    /// Cluster mode: connections with `synchronous_commit = off`, for the
    /// single-use claims DPoP requests wait on (`cluster.rs`).
    relaxed: Option<sqlx::PgPool>,
    /// Cluster mode: one connection of its own for renewing this replica's
    /// lease (`intent_takeover.rs`), so that no request, audit batch or
    /// takeover holding the main pool's connections can delay a renewal
    /// past the lease and get a live replica fenced.
    lease: Option<sqlx::PgPool>,
    /// Whether the database answers, as last reported (`health.rs`).
    health: StoreHealth,
    /// This process's replica id, random per open: the owner of the audit
    /// intents it journals, and its fencing state (`intent_takeover.rs`).
    replica: std::sync::Arc<intent_takeover::Replica>,
    /// Verifier keys of audit signing keys retired by a rotation, trusted
    /// besides the one a verification is given (`audit_log.rs`). Given by
    /// the caller from a source the database cannot forge (the sealed key
    /// versions, the state directory), never read from the database.
    retired_audit_keys: std::sync::Arc<std::sync::RwLock<Vec<portcullis_audit::note::VerifierKey>>>,
    /// How long a statement waits for a lock another session holds
    /// (`[store] lock_timeout_ms`).
    lock_timeout: Duration,
}

/// How long a statement waits by default for a lock another session or
/// process holds before it fails ([`StoreError::is_unavailable`]):
/// PostgreSQL's `lock_timeout`, SQLite's busy timeout.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

fn migrator() -> Migrator {
    let migration = |version, name: &str, sql: &'static str| {
        Migration::new(
            version,
            name.to_owned().into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(1, "init", include_str!("../migrations/0001_init.sql")),
        migration(
            2,
            "audit_merkle",
            include_str!("../migrations/0002_audit_merkle.sql"),
        ),
        migration(3, "vault", include_str!("../migrations/0003_vault.sql")),
        migration(
            4,
            "audit_personal",
            include_str!("../migrations/0004_audit_personal.sql"),
        ),
        migration(5, "tokens", include_str!("../migrations/0005_tokens.sql")),
        migration(
            6,
            "identity",
            include_str!("../migrations/0006_identity.sql"),
        ),
        migration(7, "policy", include_str!("../migrations/0007_policy.sql")),
        migration(
            8,
            "mcp_tools",
            include_str!("../migrations/0008_mcp_tools.sql"),
        ),
        migration(
            9,
            "analytics",
            include_str!("../migrations/0009_analytics.sql"),
        ),
        migration(
            10,
            "llm_budget",
            include_str!("../migrations/0010_llm_budget.sql"),
        ),
        migration(
            11,
            "approval_reason",
            include_str!("../migrations/0011_approval_reason.sql"),
        ),
        migration(
            12,
            "approval_binding",
            include_str!("../migrations/0012_approval_binding.sql"),
        ),
        migration(
            13,
            "audit_intents",
            include_str!("../migrations/0013_audit_intents.sql"),
        ),
        migration(
            14,
            "audit_compact",
            include_str!("../migrations/0014_audit_compact.sql"),
        ),
        migration(
            15,
            "transit_exportable",
            include_str!("../migrations/0015_transit_exportable.sql"),
        ),
        migration(
            16,
            "admin_roles",
            include_str!("../migrations/0016_admin_roles.sql"),
        ),
        migration(
            17,
            "oauth_authorization",
            include_str!("../migrations/0017_oauth_authorization.sql"),
        ),
        migration(
            19,
            "model_registry",
            include_str!("../migrations/0019_model_registry.sql"),
        ),
        migration(
            20,
            "dataset_registry",
            include_str!("../migrations/0020_dataset_registry.sql"),
        ),
        migration(
            21,
            "console_sessions",
            include_str!("../migrations/0021_console_sessions.sql"),
        ),
        migration(
            22,
            "oauth_federated_users",
            include_str!("../migrations/0022_oauth_federated_users.sql"),
        ),
        migration(
            24,
            "key_fingerprints",
            include_str!("../migrations/0024_key_fingerprints.sql"),
        ),
        migration(
            25,
            "redteam_runs",
            include_str!("../migrations/0025_redteam_runs.sql"),
        ),
        migration(
            26,
            "admin_passkeys",
            include_str!("../migrations/0026_admin_passkeys.sql"),
        ),
        migration(
            27,
            "audit_intent_owner",
            include_str!("../migrations/0027_audit_intent_owner.sql"),
        ),
        migration(
            29,
            "sealed_keys",
            include_str!("../migrations/0029_sealed_keys.sql"),
        ),
        migration(
            30,
            "pending_ceremonies",
            include_str!("../migrations/0030_pending_ceremonies.sql"),
        ),
        migration(
            31,
            "dataset_lifecycle",
            include_str!("../migrations/0031_dataset_lifecycle.sql"),
        ),
        migration(
            34,
            "ceremony_owner",
            include_str!("../migrations/0034_ceremony_owner.sql"),
        ),
        migration(
            35,
            "step_up_windows",
            include_str!("../migrations/0035_step_up_windows.sql"),
        ),
    ])
}

/// Connections per replica to PostgreSQL. The store is off the hot path
/// (snapshots and a batching audit writer), so a few suffice.
const POSTGRES_POOL_SIZE: u32 = 8;

/// Whether a store URL names PostgreSQL (cluster mode) rather than SQLite.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The PostgreSQL twins of [`migrator`]'s migrations, same versions and
/// names (`migrations/postgres/`). A SQLite migration without its twin
/// fails `every_sqlite_migration_has_a_postgres_twin`.
fn postgres_migrator() -> Migrator {
    let migration = |version, name: &str, sql: &'static str| {
        Migration::new(
            version,
            name.to_owned().into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    macro_rules! twin {
        ($v:literal, $name:literal, $file:literal) => {
            migration(
                $v,
                $name,
                include_str!(concat!("../migrations/postgres/", $file)),
            )
        };
    }
    Migrator::with_migrations(vec![
        twin!(1, "init", "0001_init.sql"),
        twin!(2, "audit_merkle", "0002_audit_merkle.sql"),
        twin!(3, "vault", "0003_vault.sql"),
        twin!(4, "audit_personal", "0004_audit_personal.sql"),
        twin!(5, "tokens", "0005_tokens.sql"),
        twin!(6, "identity", "0006_identity.sql"),
        twin!(7, "policy", "0007_policy.sql"),
        twin!(8, "mcp_tools", "0008_mcp_tools.sql"),
        twin!(9, "analytics", "0009_analytics.sql"),
        twin!(10, "llm_budget", "0010_llm_budget.sql"),
        twin!(11, "approval_reason", "0011_approval_reason.sql"),
        twin!(12, "approval_binding", "0012_approval_binding.sql"),
        twin!(13, "audit_intents", "0013_audit_intents.sql"),
        twin!(14, "audit_compact", "0014_audit_compact.sql"),
        twin!(15, "transit_exportable", "0015_transit_exportable.sql"),
        twin!(16, "admin_roles", "0016_admin_roles.sql"),
        twin!(17, "oauth_authorization", "0017_oauth_authorization.sql"),
        twin!(19, "model_registry", "0019_model_registry.sql"),
        twin!(20, "dataset_registry", "0020_dataset_registry.sql"),
        twin!(21, "console_sessions", "0021_console_sessions.sql"),
        twin!(
            22,
            "oauth_federated_users",
            "0022_oauth_federated_users.sql"
        ),
        twin!(24, "key_fingerprints", "0024_key_fingerprints.sql"),
        twin!(25, "redteam_runs", "0025_redteam_runs.sql"),
        twin!(26, "admin_passkeys", "0026_admin_passkeys.sql"),
        twin!(27, "audit_intent_owner", "0027_audit_intent_owner.sql"),
        twin!(29, "sealed_keys", "0029_sealed_keys.sql"),
        twin!(30, "pending_ceremonies", "0030_pending_ceremonies.sql"),
        twin!(31, "dataset_lifecycle", "0031_dataset_lifecycle.sql"),
        twin!(34, "ceremony_owner", "0034_ceremony_owner.sql"),
        twin!(35, "step_up_windows", "0035_step_up_windows.sql"),
    ])
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        Self::open_sqlite_with(path, DEFAULT_LOCK_TIMEOUT).await
    }

    /// [`Store::open_sqlite`] with statements waiting at most `lock_timeout`
    /// for another process's lock (the busy timeout).
    pub async fn open_sqlite_with(path: &Path, lock_timeout: Duration) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Deleted rows are overwritten, not left in free pages: destroyed
            // secret versions and shredded captures must not be recoverable.
            .pragma("secure_delete", "ON")
            .busy_timeout(lock_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A connection that comes back still counted inside a
            // transaction is closed, not reused. SQLite rolls a transaction
            // back itself when its COMMIT fails on a full disk; sqlx's own
            // ROLLBACK then fails ("no transaction is active") and its count
            // stays at one, so every later BEGIN on that connection failed
            // and the audit writer never recovered (tests/faults.rs).
            .after_release(|conn, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            })
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Store {
            pool: Pool::Sqlite(pool),
            strings: Default::default(),
            relaxed: None,
            lease: None,
            health: StoreHealth::default(),
            replica: Default::default(),
            retired_audit_keys: Default::default(),
            lock_timeout,
        })
    }

    /// Opens an existing SQLite database without writing to it (no
    /// migration, no journal-mode change), for checks that must leave the
    /// state as it is. Fails with [`StoreError::Invalid`] when migrations
    /// are pending: only a writer may apply them.
    pub async fn open_sqlite_read_only(path: &Path) -> Result<Self, StoreError> {
        let lock_timeout = DEFAULT_LOCK_TIMEOUT;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .foreign_keys(true)
            .busy_timeout(lock_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await
                .unwrap_or(None);
        let latest = migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let applied = applied.unwrap_or(0);
        if applied < latest {
            pool.close().await;
            return Err(StoreError::Invalid(format!(
                "the database is at schema version {applied} and this binary needs {latest}; `serve` migrates it at start"
            )));
        }
        Ok(Store {
            pool: Pool::Sqlite(pool),
            strings: Default::default(),
            relaxed: None,
            lease: None,
            health: StoreHealth::default(),
            replica: Default::default(),
            retired_audit_keys: Default::default(),
            lock_timeout,
        })
    }

    /// Opens a database from a URL: `sqlite:///var/lib/portcullis/db.sqlite`
    /// or `postgres://USER@HOST:PORT/DB` (cluster mode).
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        Self::open_url_with(url, DEFAULT_LOCK_TIMEOUT).await
    }

    /// [`Store::open_url`] with statements waiting at most `lock_timeout`
    /// for a lock another session or process holds.
    pub async fn open_url_with(url: &str, lock_timeout: Duration) -> Result<Self, StoreError> {
        if is_postgres_url(url) {
            return Self::open_postgres_with(url, lock_timeout).await;
        }
        let options = SqliteConnectOptions::from_str(url)?;
        Self::open_sqlite_with(options.get_filename(), lock_timeout).await
    }

    /// Connects to the PostgreSQL database at `url` and migrates it with the
    /// PostgreSQL twins of the SQLite migrations (`migrations/postgres/`).
    /// Several replicas may do this at once: sqlx serializes migrators with
    /// an advisory lock, and a schema already migrated is left as it is.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        Self::open_postgres_with(url, DEFAULT_LOCK_TIMEOUT).await
    }

    /// [`Store::open_postgres`] with every session's `lock_timeout` set to
    /// `lock_timeout`: a statement that waits longer for a lock another
    /// session holds (`LOCK TABLE`, a long DDL) fails instead of hanging
    /// the request or admin call that made it.
    pub async fn open_postgres_with(url: &str, lock_timeout: Duration) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("portcullis");
        // Migrations wait for another replica's (an advisory lock) as long
        // as those take: on a connection without the lock timeout.
        let migrating = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        postgres_migrator().run(&migrating).await?;
        cluster::cluster_migrator().run(&migrating).await?;
        migrating.close().await;
        let options =
            options.options([("lock_timeout", lock_timeout.as_millis().max(1).to_string())]);
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        let relaxed = PgPoolOptions::new()
            .max_connections(POSTGRES_POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let lease = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.application_name("portcullis lease"));
        Ok(Store {
            pool: Pool::Postgres(pool),
            strings: Default::default(),
            relaxed: Some(relaxed),
            lease: Some(lease),
            health: StoreHealth::default(),
            replica: Default::default(),
            retired_audit_keys: Default::default(),
            lock_timeout,
        })
    }

    /// Connects to the PostgreSQL database at `url` without writing to it:
    /// no migration, and every transaction of its sessions read-only
    /// (`default_transaction_read_only`), for checks that must leave a
    /// shared database as it is. Fails with [`StoreError::Invalid`] when
    /// the schema is not this binary's: only `serve` migrates it.
    pub async fn open_postgres_read_only(url: &str) -> Result<Self, StoreError> {
        let lock_timeout = DEFAULT_LOCK_TIMEOUT;
        let options = PgConnectOptions::from_str(url)?
            .application_name("portcullis check")
            .options([("default_transaction_read_only", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        for (table, latest) in [
            (
                "_sqlx_migrations",
                postgres_migrator().iter().map(|m| m.version).max(),
            ),
            (
                cluster::CLUSTER_MIGRATIONS_TABLE,
                cluster::cluster_migrator().iter().map(|m| m.version).max(),
            ),
        ] {
            let applied: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT MAX(version) FROM {table} WHERE success"
            )))
            .fetch_one(&pool)
            .await
            .unwrap_or(None);
            let (applied, latest) = (applied.unwrap_or(0), latest.unwrap_or(0));
            if applied < latest {
                pool.close().await;
                return Err(StoreError::Invalid(format!(
                    "the database's schema (`{table}`) is at version {applied} and this binary needs {latest}; `serve` migrates it at start"
                )));
            }
        }
        Ok(Store {
            pool: Pool::Postgres(pool),
            strings: Default::default(),
            relaxed: None,
            lease: None,
            health: StoreHealth::default(),
            replica: Default::default(),
            retired_audit_keys: Default::default(),
            lock_timeout,
        })
    }

    /// Whether this store is PostgreSQL (cluster mode), whose state is
    /// shared with other replicas.
    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Whether the database answers, as the background heartbeat last
    /// reported it (cluster mode; always up on SQLite, where nothing reports).
    pub fn health(&self) -> &StoreHealth {
        &self.health
    }

    /// Reads every table of the schema (no rows), waiting at most
    /// `lock_wait` for a lock another session or process holds: whether
    /// requests and admin calls can read the store now (readiness,
    /// `store_stalled`). PostgreSQL takes each table's read lock in one
    /// statement, so an `ACCESS EXCLUSIVE` lock on any table fails it;
    /// SQLite takes the database's read lock.
    pub async fn probe_reads(&self, lock_wait: Duration) -> Result<(), StoreError> {
        let wait_ms = lock_wait.as_millis().max(1);
        match &self.pool {
            Pool::Postgres(pool) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename",
                )
                .fetch_all(pool)
                .await?;
                if tables.is_empty() {
                    return Ok(());
                }
                let reads: Vec<String> = tables
                    .iter()
                    .map(|t| format!("(SELECT 1 FROM \"{}\" LIMIT 0)", t.replace('"', "\"\"")))
                    .collect();
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT set_config('lock_timeout', $1, true)")
                    .bind(wait_ms.to_string())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {}", reads.join(", "))))
                    .execute(&mut *tx)
                    .await?;
                tx.rollback().await?;
            }
            Pool::Sqlite(pool) => {
                // The busy timeout is the connection's: shortened for the
                // probe, then put back whatever the probe found.
                let mut conn = pool.acquire().await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "PRAGMA busy_timeout = {wait_ms}"
                )))
                .execute(&mut *conn)
                .await?;
                let probe = sqlx::query("SELECT count(*) FROM sqlite_master")
                    .execute(&mut *conn)
                    .await;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "PRAGMA busy_timeout = {}",
                    self.lock_timeout.as_millis()
                )))
                .execute(&mut *conn)
                .await?;
                probe?;
            }
        }
        Ok(())
    }

    /// Checks the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    /// Registers an agent with its first certificate, atomically.
    pub async fn create_agent(
        &self,
        agent: &AgentRow,
        certificate: &CertificateRow,
    ) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let roles = serde_json::to_string(&agent.roles).map_err(|e| StoreError::Corrupt {
                table: "agents",
                detail: e.to_string(),
            })?;
            let mut tx = begin_write(pool).await?;
            let exists = query("SELECT 1 FROM agents WHERE name = ?")
                .bind(&agent.name)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                return Err(StoreError::Conflict(agent.name.clone()));
            }
            query("INSERT INTO agents (name, roles, created_at, revoked_at) VALUES (?, ?, ?, ?)")
                .bind(&agent.name)
                .bind(roles)
                .bind(agent.created_at)
                .bind(agent.revoked_at)
                .execute(&mut *tx)
                .await?;
            insert_certificate!(tx, certificate);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records another certificate for an existing, unrevoked agent (renewal).
    pub async fn add_certificate(&self, certificate: &CertificateRow) -> Result<(), StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let active = query("SELECT 1 FROM agents WHERE name = ? AND revoked_at IS NULL")
                .bind(&certificate.agent)
                .fetch_optional(&mut *tx)
                .await?;
            if active.is_none() {
                return Err(StoreError::NotFound(certificate.agent.clone()));
            }
            insert_certificate!(tx, certificate);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Revokes an agent and every certificate it holds. Revoking twice keeps the
    /// first revocation time.
    pub async fn revoke_agent(&self, name: &str, now: i64) -> Result<AgentRow, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let mut tx = begin_write(pool).await?;
            let updated =
                query("UPDATE agents SET revoked_at = COALESCE(revoked_at, ?) WHERE name = ?")
                    .bind(now)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound(name.to_string()));
            }
            query(
            "UPDATE agent_certificates SET revoked_at = ? WHERE agent = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await?;
            tx.commit().await?;
            self.agent(name)
                .await?
                .ok_or_else(|| StoreError::NotFound(name.to_string()))
        })
    }

    /// One agent by name.
    pub async fn agent(&self, name: &str) -> Result<Option<AgentRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let row =
                query("SELECT name, roles, created_at, revoked_at FROM agents WHERE name = ?")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?;
            row.map(|r| agent_from_row(&r)).transpose()
        })
    }

    /// All agents, by name.
    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows =
                query("SELECT name, roles, created_at, revoked_at FROM agents ORDER BY name")
                    .fetch_all(pool)
                    .await?;
            rows.iter().map(agent_from_row).collect()
        })
    }

    /// All certificates, or those of one agent, oldest first.
    pub async fn certificates(
        &self,
        agent: Option<&str>,
    ) -> Result<Vec<CertificateRow>, StoreError> {
        crate::backend::with_pool!(&self.pool, |pool| {
            let rows = query(
                "SELECT serial, agent, spiffe_id, issued_at, not_after, revoked_at
             FROM agent_certificates WHERE (?1 IS NULL OR agent = ?1) ORDER BY issued_at, serial",
            )
            .bind(agent)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(CertificateRow {
                        serial: r.col("serial")?,
                        agent: r.col("agent")?,
                        spiffe_id: r.col("spiffe_id")?,
                        issued_at: r.col("issued_at")?,
                        not_after: r.col("not_after")?,
                        revoked_at: r.col("revoked_at")?,
                    })
                })
                .collect()
        })
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(relaxed) = &self.relaxed {
            relaxed.close().await;
        }
        if let Some(lease) = &self.lease {
            lease.close().await;
        }
    }
}

#[cfg(test)]
impl Store {
    /// The SQLite pool, for tests that tamper with rows as an attacker with
    /// the file would.
    pub(crate) fn sqlite_pool(&self) -> &sqlx::SqlitePool {
        match &self.pool {
            Pool::Sqlite(pool) => pool,
            Pool::Postgres(_) => panic!("a SQLite-only test opened PostgreSQL"),
        }
    }
}

/// Inserts a certificate row in the write transaction `$tx` (a macro so the
/// one statement serves both backends).
macro_rules! insert_certificate {
    ($tx:expr, $c:expr) => {{
    let c: &CertificateRow = $c;
    query(
        "INSERT INTO agent_certificates (serial, agent, spiffe_id, issued_at, not_after, revoked_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&c.serial)
    .bind(&c.agent)
    .bind(&c.spiffe_id)
    .bind(c.issued_at)
    .bind(c.not_after)
    .bind(c.revoked_at)
    .execute(&mut *$tx)
    .await?;
    }};
}
use insert_certificate;

fn agent_from_row(r: &impl DbRow) -> Result<AgentRow, StoreError> {
    let roles: String = r.col("roles")?;
    Ok(AgentRow {
        name: r.col("name")?,
        roles: serde_json::from_str(&roles).map_err(|e| StoreError::Corrupt {
            table: "agents",
            detail: e.to_string(),
        })?,
        created_at: r.col("created_at")?,
        revoked_at: r.col("revoked_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_audit::AuditRecord;

    #[test]
    fn lock_waits_and_lost_connections_are_unavailability_not_internal_errors() {
        // PostgreSQL: lock_timeout, cancelled, shutting down, connection lost.
        for code in ["55P03", "57014", "57P01", "08006", "08001", "53300"] {
            assert!(unavailable_code(code), "{code}");
        }
        // Constraint violations and syntax errors are not.
        for code in ["23505", "42601", "40001", "22P02"] {
            assert!(!unavailable_code(code), "{code}");
        }
        // SQLite: BUSY, LOCKED and their extended codes; not CONSTRAINT or FULL.
        for code in ["5", "6", "261", "517", "262"] {
            assert!(unavailable_code(code), "{code}");
        }
        for code in ["19", "2067", "13", "1"] {
            assert!(!unavailable_code(code), "{code}");
        }
        assert!(StoreError::Database(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!StoreError::NotFound("x".into()).is_unavailable());
        assert!(!StoreError::Database(sqlx::Error::RowNotFound).is_unavailable());
    }

    #[tokio::test]
    async fn the_read_probe_reads_every_table() {
        for db in crate::testing::TestDb::all().await {
            let store = db.open().await;
            store
                .probe_reads(Duration::from_millis(200))
                .await
                .expect("an idle store's tables can be read");
        }
    }

    fn record(id: &str) -> AuditRecord {
        AuditRecord {
            time_ms: 1,
            request_id: id.into(),
            action: "GET".into(),
            error_code: Some("unauthenticated".into()),
            status: 401,
            duration_us: 1,
            ..Default::default()
        }
    }

    fn cert(serial: &str, agent: &str) -> CertificateRow {
        CertificateRow {
            serial: serial.into(),
            agent: agent.into(),
            spiffe_id: format!("spiffe://t/agent/{agent}"),
            issued_at: 10,
            not_after: 20,
            revoked_at: None,
        }
    }

    #[tokio::test]
    async fn agents_certificates_and_revocation() {
        for db in testing::TestDb::all().await {
            agents_certificates_and_revocation_on(db.open().await).await;
        }
    }

    async fn agents_certificates_and_revocation_on(store: Store) {
        let bot = AgentRow {
            name: "bot".into(),
            roles: vec!["reader".into()],
            created_at: 10,
            revoked_at: None,
        };
        store.create_agent(&bot, &cert("01", "bot")).await.unwrap();
        assert!(matches!(
            store.create_agent(&bot, &cert("02", "bot")).await,
            Err(StoreError::Conflict(_))
        ));
        store.add_certificate(&cert("03", "bot")).await.unwrap();
        assert!(matches!(
            store.add_certificate(&cert("04", "ghost")).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.agents().await.unwrap(), vec![bot.clone()]);

        let revoked = store.revoke_agent("bot", 15).await.unwrap();
        assert_eq!(revoked.revoked_at, Some(15));
        assert_eq!(
            store.revoke_agent("bot", 99).await.unwrap().revoked_at,
            Some(15)
        );
        let certs = store.certificates(Some("bot")).await.unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs.iter().all(|c| c.revoked_at == Some(15)));
        assert!(matches!(
            store.add_certificate(&cert("05", "bot")).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.revoke_agent("ghost", 1).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn audit_batches_get_consecutive_seqs_and_survive_reopen() {
        for db in testing::TestDb::all().await {
            audit_batches_on(&db).await;
        }
    }

    async fn audit_batches_on(db: &testing::TestDb) {
        let store = db.open().await;
        let mut log = store.audit_appender().await.unwrap();
        let mut batch = vec![record("a"), record("b")];
        log.append(&mut batch).await.unwrap();
        let mut batch2 = vec![record("c")];
        log.append(&mut batch2).await.unwrap();
        assert_eq!(batch2[0].seq, Some(2));
        store.close().await;

        let store = db.open().await;
        let tail = store.audit_tail(2).await.unwrap();
        let ids: Vec<_> = tail
            .iter()
            .map(|r| (r.seq, r.request_id.as_str()))
            .collect();
        assert_eq!(ids, [(Some(1), "b"), (Some(2), "c")]);

        // A batch larger than one INSERT statement keeps order and numbering.
        let mut log = store.audit_appender().await.unwrap();
        let mut big: Vec<_> = (0..600).map(|i| record(&format!("r{i}"))).collect();
        log.append(&mut big).await.unwrap();
        let tail = store.audit_tail(601).await.unwrap();
        assert_eq!(tail.len(), 601);
        for (i, r) in tail.iter().enumerate() {
            assert_eq!(r.seq, Some(i as u64 + 2));
            if i > 0 {
                assert_eq!(r.request_id, format!("r{}", i - 1));
            }
        }
    }

    /// The SQLite and PostgreSQL migration sets are kept in step: every
    /// SQLite migration has its PostgreSQL twin, same version and name.
    #[test]
    fn every_sqlite_migration_has_a_postgres_twin() {
        let listed = |m: &Migrator| -> Vec<(i64, String)> {
            m.iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect()
        };
        let (sqlite, postgres) = (listed(&migrator()), listed(&postgres_migrator()));
        for (version, name) in &sqlite {
            assert!(
                postgres.contains(&(*version, name.clone())),
                "SQLite migration {version:04}_{name}.sql has no PostgreSQL twin: write \
                 crates/store/migrations/postgres/{version:04}_{name}.sql (the same change in \
                 PostgreSQL's dialect) and list it in `postgres_migrator()`"
            );
        }
        assert_eq!(
            sqlite, postgres,
            "the PostgreSQL migrations list versions the SQLite ones do not"
        );
        // The files on disk too: a SQLite migration written but not yet
        // listed in `migrator()` still needs its twin.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let files = |dir: &std::path::Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            names.sort();
            names
        };
        let twins = files(&dir.join("postgres"));
        for file in files(&dir) {
            assert!(
                twins.contains(&file),
                "crates/store/migrations/{file} has no PostgreSQL twin: write \
                 crates/store/migrations/postgres/{file} and list it in `postgres_migrator()`"
            );
        }
    }

    /// The twins build the same schema: every table and column SQLite has,
    /// PostgreSQL has, and no other (the cluster-only tables, `cluster_*`,
    /// come from their own migration set and have no SQLite twin).
    #[tokio::test]
    async fn both_backends_migrate_to_the_same_tables_and_columns() {
        let Some(pg) = testing::TestDb::postgres().await else {
            return;
        };
        let sqlite = testing::TestDb::sqlite();
        let (pg_store, sqlite_store) = (pg.open().await, sqlite.open().await);
        let Pool::Sqlite(lite) = &sqlite_store.pool else {
            unreachable!()
        };
        let Pool::Postgres(postgres) = &pg_store.pool else {
            unreachable!()
        };
        let mut in_sqlite: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT IN ('_sqlx_migrations', 'sqlite_sequence')",
        )
        .fetch_all(lite)
        .await
        .unwrap();
        let mut in_postgres: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name NOT IN ('_sqlx_migrations', '_portcullis_cluster_migrations')
             AND table_name NOT LIKE 'cluster\\_%'",
        )
        .fetch_all(postgres)
        .await
        .unwrap();
        in_sqlite.sort();
        in_postgres.sort();
        assert_eq!(in_sqlite, in_postgres);
    }
}
