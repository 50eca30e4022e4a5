//! The two database backends behind one [`crate::Store`]: SQLite (embedded,
//! the default) and PostgreSQL (cluster mode, issue 18).
//!
//! Every store method is written once and compiled once per backend by
//! [`with_pool!`]: the macro matches the pool and expands the same body in
//! each arm, with the arm's [`sqlite`] or [`postgres`] helpers in scope
//! (`Db`, `query`, `query_scalar`, `begin_write`, ...). The SQLite arm is
//! exactly the code that ran before there were two backends (the helpers
//! are `sqlx::query` itself), so the embedded default pays one enum match
//! per call and nothing else. SQL is written in the dialect both engines
//! share (`ON CONFLICT ... DO UPDATE`, `RETURNING`, `?` placeholders); the
//! PostgreSQL helpers rewrite `?`/`?N` into `$N`, and the few statements
//! whose dialects differ pick their text with `IS_POSTGRES`.

use sqlx::{PgPool, SqlitePool};

/// An open pool of one backend.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    pub(crate) async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

/// Expands `$body` once per backend with `$pool` bound to the typed pool and
/// the backend's helpers in scope. `return` and `?` in the body leave the
/// enclosing function, as they would without the macro.
macro_rules! with_pool {
    ($pool_expr:expr, |$pool:ident| $body:block) => {
        match $pool_expr {
            $crate::backend::Pool::Sqlite($pool) => {
                #[allow(unused_imports)]
                use $crate::backend::sqlite::*;
                $body
            }
            $crate::backend::Pool::Postgres($pool) => {
                #[allow(unused_imports)]
                use $crate::backend::postgres::*;
                $body
            }
        }
    };
}
pub(crate) use with_pool;

/// A row of either backend, read by column name or position.
pub(crate) trait DbRow {
    fn col<T: Column, I: Index>(&self, index: I) -> Result<T, sqlx::Error>;
}

/// A value both backends decode.
pub(crate) trait Column:
    for<'r> sqlx::Decode<'r, sqlx::Sqlite>
    + sqlx::Type<sqlx::Sqlite>
    + for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
{
}
impl<T> Column for T where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
{
}

/// A column index both backends accept (a name or a position).
pub(crate) trait Index:
    sqlx::ColumnIndex<sqlx::sqlite::SqliteRow> + sqlx::ColumnIndex<sqlx::postgres::PgRow>
{
}
impl<I> Index for I where
    I: sqlx::ColumnIndex<sqlx::sqlite::SqliteRow> + sqlx::ColumnIndex<sqlx::postgres::PgRow>
{
}

impl DbRow for sqlx::sqlite::SqliteRow {
    fn col<T: Column, I: Index>(&self, index: I) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, index)
    }
}

impl DbRow for sqlx::postgres::PgRow {
    fn col<T: Column, I: Index>(&self, index: I) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, index)
    }
}

/// Rewrites SQLite placeholders (`?`, `?N`) into PostgreSQL's (`$N`). A bare
/// `?` takes the number after the largest used so far, as SQLite numbers it.
/// Text in single quotes, double quotes or comments is left as it is.
pub(crate) fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut largest = 0u32;
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '-' if chars.peek() == Some(&'-') => {
                // A line comment: copy it to the end of the line.
                out.push(c);
                for c in chars.by_ref() {
                    out.push(c);
                    if c == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = if digits.is_empty() {
                    largest + 1
                } else {
                    digits.parse().unwrap_or(u32::MAX)
                };
                largest = largest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

/// The SQLite arm of [`with_pool!`]: sqlx's own functions, unchanged.
pub(crate) mod sqlite {
    pub(crate) type Db = sqlx::Sqlite;
    pub(crate) const IS_POSTGRES: bool = false;
    pub(crate) type Args = <Db as sqlx::Database>::Arguments;

    pub(crate) fn query(sql: &'static str) -> sqlx::query::Query<'static, Db, Args> {
        sqlx::query(sql)
    }

    pub(crate) fn query_scalar<O>(
        sql: &'static str,
    ) -> sqlx::query::QueryScalar<'static, Db, O, Args>
    where
        (O,): for<'r> sqlx::FromRow<'r, <Db as sqlx::Database>::Row>,
    {
        sqlx::query_scalar(sql)
    }

    pub(crate) fn query_dyn(sql: String) -> sqlx::query::Query<'static, Db, Args> {
        sqlx::query(sqlx::AssertSqlSafe(sql))
    }

    /// A transaction that holds the database's one write lock from its
    /// first statement, so what it reads stays true until it commits.
    pub(crate) async fn begin_write(
        pool: &sqlx::Pool<Db>,
    ) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// The audit appender's transaction: SQLite has one write lock.
    pub(crate) async fn begin_audit_write(
        pool: &sqlx::Pool<Db>,
    ) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
        begin_write(pool).await
    }
}

/// The PostgreSQL arm of [`with_pool!`].
///
/// Audit appends take their own lock ([`postgres::AUDIT_LOCK`]): they touch
/// only the audit tables, which no other write transaction reads to decide.
pub(crate) mod postgres {
    use super::postgres_placeholders;

    pub(crate) type Db = sqlx::Postgres;
    pub(crate) const IS_POSTGRES: bool = true;
    pub(crate) type Args = <Db as sqlx::Database>::Arguments;

    /// The advisory lock key every write transaction takes (see
    /// [`begin_write`]); "PCWR" in ASCII.
    pub(crate) const WRITE_LOCK: i64 = 0x5043_5752;

    /// The advisory lock key of audit appends ("PCAU"): held from reading
    /// the log's size to commit, so two replicas can never give out one seq.
    pub(crate) const AUDIT_LOCK: i64 = 0x5043_4155;

    pub(crate) fn query(sql: &'static str) -> sqlx::query::Query<'static, Db, Args> {
        sqlx::query(sqlx::AssertSqlSafe(postgres_placeholders(sql)))
    }

    pub(crate) fn query_scalar<O>(
        sql: &'static str,
    ) -> sqlx::query::QueryScalar<'static, Db, O, Args>
    where
        (O,): for<'r> sqlx::FromRow<'r, <Db as sqlx::Database>::Row>,
    {
        sqlx::query_scalar(sqlx::AssertSqlSafe(postgres_placeholders(sql)))
    }

    pub(crate) fn query_dyn(sql: String) -> sqlx::query::Query<'static, Db, Args> {
        sqlx::query(sqlx::AssertSqlSafe(postgres_placeholders(&sql)))
    }

    /// The same guarantee as SQLite's `BEGIN IMMEDIATE`, across every
    /// replica: write transactions take one transaction-scoped advisory lock
    /// first, so they run one at a time and what one reads stays true until
    /// it commits (check-then-write store methods keep their one-node
    /// meaning). Released at commit or rollback, also when a replica dies
    /// (the server ends its session).
    pub(crate) async fn begin_write(
        pool: &sqlx::Pool<Db>,
    ) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
        locked(pool, WRITE_LOCK).await
    }

    /// The audit appender's transaction: see [`AUDIT_LOCK`].
    pub(crate) async fn begin_audit_write(
        pool: &sqlx::Pool<Db>,
    ) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
        locked(pool, AUDIT_LOCK).await
    }

    /// `BEGIN` and the lock in one simple query: one round trip, not two,
    /// on every write (an audit batch is a handful of round trips, and a
    /// `before_forward` call waits for one). The lock is still taken inside
    /// the transaction, before any of its statements reads: each statement
    /// after it sees every commit made before the lock was granted. A lock
    /// that fails (the session ends) fails the begin, and the transaction
    /// is rolled back as a failed `BEGIN` is.
    async fn locked(
        pool: &sqlx::Pool<Db>,
        key: i64,
    ) -> Result<sqlx::Transaction<'static, Db>, sqlx::Error> {
        // `key` is one of this module's constants, never input.
        pool.begin_with(sqlx::AssertSqlSafe(format!(
            "BEGIN; SELECT pg_advisory_xact_lock({key})"
        )))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::postgres_placeholders as check;

    #[test]
    fn placeholders_are_numbered_as_sqlite_numbers_them() {
        assert_eq!(check("a = ? AND b = ?"), "a = $1 AND b = $2");
        assert_eq!(check("?1 IS NULL OR x = ?1"), "$1 IS NULL OR x = $1");
        assert_eq!(check("x = ?2 AND y = ?"), "x = $2 AND y = $3");
        assert_eq!(check("x = '?' AND y = ?"), "x = '?' AND y = $1");
        assert_eq!(check("-- why?\nx = ?"), "-- why?\nx = $1");
    }
}
