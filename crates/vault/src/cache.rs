//! A short-lived cache of decrypted values, so the request path does not run
//! AES-GCM on every call. Reads are lock-free (a copy-on-write map behind
//! `ArcSwap`); a miss or an expiry rebuilds one entry. Values are zeroized when
//! the last reference to them is dropped, and expired entries are swept by the
//! vault's maintenance task, so a value does not outlive its TTL by much.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use zeroize::Zeroizing;

/// A decrypted value with the version it came from.
pub struct Plain {
    /// The secret's version.
    pub version: i64,
    /// The value; zeroized on drop.
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plain(v{}, {} bytes)", self.version, self.value.len())
    }
}

struct Entry {
    plain: Arc<Plain>,
    expires: Instant,
}

/// Cache of decrypted values by key.
pub struct ValueCache {
    ttl: Duration,
    map: ArcSwap<HashMap<String, Arc<Entry>>>,
}

impl std::fmt::Debug for ValueCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ValueCache({} entries)", self.map.load().len())
    }
}

impl ValueCache {
    /// An empty cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        ValueCache {
            ttl,
            map: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The cached value, if present and not expired.
    pub fn get(&self, key: &str) -> Option<Arc<Plain>> {
        let map = self.map.load();
        let entry = map.get(key)?;
        (entry.expires > Instant::now()).then(|| entry.plain.clone())
    }

    /// Caches `plain` under `key` for the TTL.
    pub fn put(&self, key: &str, plain: Arc<Plain>) {
        let entry = Arc::new(Entry {
            plain,
            expires: Instant::now() + self.ttl,
        });
        self.map.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(key.to_string(), entry.clone());
            map
        });
    }

    /// Forgets `key` (after a rotation or deletion).
    pub fn remove(&self, key: &str) {
        self.map.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(key);
            map
        });
    }

    /// Drops every expired entry; returns how many are left.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        if self.map.load().values().all(|e| e.expires > now) {
            return self.map.load().len();
        }
        self.map.rcu(|map| {
            map.iter()
                .filter(|(_, e)| e.expires > now)
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect::<HashMap<_, _>>()
        });
        self.map.load().len()
    }

    /// Drops everything (after a rekey).
    pub fn clear(&self) {
        self.map.store(Arc::new(HashMap::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(v: &str) -> Arc<Plain> {
        Arc::new(Plain {
            version: 1,
            value: Zeroizing::new(v.as_bytes().to_vec()),
        })
    }

    #[test]
    fn entries_expire_and_are_swept() {
        // An entry that cannot expire while the test looks at it, however
        // long a loaded machine pauses the thread...
        let cache = ValueCache::new(Duration::from_secs(600));
        cache.put("a", plain("x"));
        assert_eq!(cache.get("a").unwrap().value.as_slice(), b"x");
        assert!(cache.get("b").is_none());
        // ...and one slept past: it has expired, whatever the load.
        let short = ValueCache::new(Duration::from_millis(30));
        short.put("a", plain("x"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(short.get("a").is_none());
        assert_eq!(short.purge_expired(), 0);
        cache.put("c", plain("y"));
        cache.remove("c");
        assert!(cache.get("c").is_none());
        assert!(!format!("{:?}", plain("topsecret")).contains("topsecret"));
    }
}
