//! Test databases of both backends, so every store test runs against SQLite
//! and PostgreSQL (issue 18).
//!
//! A PostgreSQL test database is created fresh for each test on the
//! machine's server (127.0.0.1:5432, trust auth, maintenance database
//! `test`, user `root` or `postgres`, or `PORTCULLIS_TEST_POSTGRES` naming
//! the maintenance database's URL) and dropped when the test ends. Without a
//! reachable server the PostgreSQL half is skipped, and says so on stderr.
//!
//! Test fixtures only (this crate's tests and, with the `testing` feature,
//! other crates' end-to-end tests): a fixture that cannot be set up fails
//! the test, loudly.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;

use crate::Store;

/// Env var: URL of the PostgreSQL maintenance database tests create their
/// databases from.
pub const ENV_TEST_POSTGRES: &str = "PORTCULLIS_TEST_POSTGRES";

/// Maintenance URLs tried in order when [`ENV_TEST_POSTGRES`] is unset.
const DEFAULT_ADMIN_URLS: [&str; 2] = [
    "postgres://root@127.0.0.1:5432/test",
    "postgres://postgres@127.0.0.1:5432/test",
];

/// One test database, dropped with this value.
#[derive(Debug)]
pub enum TestDb {
    /// A SQLite file in a temporary directory.
    Sqlite {
        /// Keeps the directory alive.
        dir: tempfile::TempDir,
        /// The database file.
        path: PathBuf,
    },
    /// A PostgreSQL database of its own.
    Postgres {
        /// The maintenance database it was created from.
        admin_url: String,
        /// Its name.
        name: String,
        /// Its URL.
        url: String,
    },
}

impl TestDb {
    /// A fresh SQLite database.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("db.sqlite");
        TestDb::Sqlite { dir, path }
    }

    /// A fresh PostgreSQL database, or `None` (with a note on stderr) when no
    /// server is reachable.
    pub async fn postgres() -> Option<TestDb> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let candidates: Vec<String> = match std::env::var(ENV_TEST_POSTGRES) {
            Ok(url) => vec![url],
            Err(_) => DEFAULT_ADMIN_URLS.iter().map(|u| u.to_string()).collect(),
        };
        for admin_url in candidates {
            let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await else {
                continue;
            };
            let name = format!(
                "portcullis_t{}_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            );
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create the test database");
            let _ = conn.close().await;
            let (base, _) = admin_url
                .rsplit_once('/')
                .expect("a maintenance URL ends with its database");
            let url = format!("{base}/{name}");
            return Some(TestDb::Postgres {
                admin_url,
                name,
                url,
            });
        }
        eprintln!(
            "SKIPPED the PostgreSQL half: no server at {DEFAULT_ADMIN_URLS:?} (set {ENV_TEST_POSTGRES})"
        );
        None
    }

    /// SQLite, then PostgreSQL when reachable: the backends a store test
    /// runs against.
    pub async fn all() -> Vec<TestDb> {
        let mut all = vec![TestDb::sqlite()];
        all.extend(TestDb::postgres().await);
        all
    }

    /// The store URL of this database.
    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            TestDb::Postgres { url, .. } => url.clone(),
        }
    }

    /// Which backend, for assertion messages.
    pub fn backend(&self) -> &'static str {
        match self {
            TestDb::Sqlite { .. } => "sqlite",
            TestDb::Postgres { .. } => "postgres",
        }
    }

    /// Opens (and migrates) the store; again after `close` to reopen it.
    pub async fn open(&self) -> Store {
        match self {
            TestDb::Sqlite { path, .. } => Store::open_sqlite(path).await,
            TestDb::Postgres { url, .. } => Store::open_postgres(url).await,
        }
        .unwrap_or_else(|e| panic!("open the {} store: {e}", self.backend()))
    }

    /// The directory a test may write files beside the database in.
    pub fn dir(&self) -> Option<&std::path::Path> {
        match self {
            TestDb::Sqlite { dir, .. } => Some(dir.path()),
            TestDb::Postgres { .. } => None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres {
            admin_url, name, ..
        } = self
        else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on:
        // the database is dropped from a thread with a runtime of its own.
        let (admin_url, name) = (admin_url.clone(), name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.url());
        }
    }
}
