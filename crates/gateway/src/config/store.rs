//! `[store]`: the database URL (SQLite, or PostgreSQL for cluster mode).

use serde::{Deserialize, Deserializer};

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Database URL, e.g. `sqlite:///var/lib/portcullis/portcullis.db`, or
    /// `postgres://USER@HOST:PORT/DB` for cluster mode (docs/cluster.md).
    /// Default: the SQLite file `portcullis.db` in the state directory.
    #[serde(default, deserialize_with = "opt_store_url")]
    pub url: Option<String>,
    /// Cluster mode: how long, after the shared database last answered, a
    /// replica keeps deciding requests from its in-memory snapshots (its
    /// audit records spilled to the local outage spool meanwhile) before it
    /// refuses them with 503 `store_unavailable`. Default 0: refused as soon
    /// as the database stops answering. A revocation made on another replica
    /// during that window is not seen, so keep it short (docs/cluster.md).
    #[serde(default)]
    pub max_staleness_ms: u64,
    /// How long a statement waits for a lock another session or process
    /// holds (a PostgreSQL `LOCK TABLE`, SQLite's write lock) before it
    /// fails and its admin call or request is answered 503
    /// `store_unavailable`. Default 10000.
    pub lock_timeout_ms: Option<u64>,
}

/// The lock timeout `[store]` asks for (`lock_timeout_ms`, > 0).
pub fn lock_timeout(store: &RawStore) -> Result<std::time::Duration, String> {
    match store.lock_timeout_ms {
        Some(0) => Err("key `store.lock_timeout_ms`: must be greater than 0".into()),
        Some(ms) => Ok(std::time::Duration::from_millis(ms)),
        None => Ok(portcullis_store::DEFAULT_LOCK_TIMEOUT),
    }
}

fn opt_store_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    check_store_url(&s).map_err(serde::de::Error::custom)?;
    Ok(Some(s))
}

/// Checks a store URL names a backend this build has: `sqlite:` or
/// `postgres://` / `postgresql://`. The message never repeats the URL, which
/// may carry a password.
pub fn check_store_url(url: &str) -> Result<(), String> {
    if url.starts_with("sqlite:") || portcullis_store::is_postgres_url(url) {
        Ok(())
    } else {
        Err("unsupported store url: this build supports `sqlite:` and `postgres://` URLs".into())
    }
}
