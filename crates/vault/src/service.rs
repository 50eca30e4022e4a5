//! [`Vault`]: the secrets, transit keys and captures of one Portcullis
//! process, sealed in the store under the KEK.
//!
//! The request path calls only [`Vault::credential`], which reads an
//! in-memory snapshot of the sealed current versions and a short-TTL cache of
//! decrypted values: no disk, no lock held across IO. Everything else (admin
//! calls, maintenance, the capture writer) writes the store first and then
//! swaps in a new snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use portcullis_store::{
    CaptureRow, RewrapTarget, SealedRow, SecretMeta, SecretVersionRow, Store, StoreError,
    TransitVersionRow,
};
use serde::Serialize;
use tokio::sync::{Mutex, RwLock, mpsc};
use zeroize::Zeroizing;

use crate::cache::{Plain, ValueCache};
use crate::capture::{self, Capture};
use crate::envelope::{self, SealError, Sealed};
use crate::hook::{HookError, RotationHook};
use crate::kek::Kek;
use crate::transit::{self, FernetKey, TransitError};

/// Default lifetime of a decrypted value in the cache.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
/// Default time a superseded version stays decryptable: 24 hours.
pub const DEFAULT_GRACE_PERIOD_S: i64 = 24 * 3600;
/// Largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Captures waiting to be written beyond which new ones are dropped (logged).
pub const CAPTURE_BACKLOG: usize = 10_000;
/// Most captured body bytes held in memory at once (in flight and queued).
/// Past it, bodies are still digested but not kept (the capture is marked
/// truncated), so capture cannot exhaust memory under load.
pub const CAPTURE_MEMORY_BUDGET: usize = 64 * 1024 * 1024;

/// A vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The KEK is not the one the vault was sealed with.
    #[error(
        "the key-encryption key does not match this vault: its fingerprint is `{found}`, the vault was sealed with `{expected}`; nothing was decrypted or changed"
    )]
    WrongKek {
        /// Fingerprint recorded in the database.
        expected: String,
        /// Fingerprint of the key given.
        found: String,
    },
    /// The named object does not exist.
    #[error("`{0}` does not exist")]
    NotFound(String),
    /// The object exists, or a concurrent change won.
    #[error("{0}")]
    Conflict(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// A stored value failed authentication (or is malformed).
    #[error("`{what}` cannot be decrypted: {source}")]
    Corrupt {
        /// Which value.
        what: String,
        /// Why.
        source: SealError,
    },
    /// A rotation hook failed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// A transit token or key was refused.
    #[error(transparent)]
    Transit(#[from] TransitError),
    /// The transit key was not created exportable: it never leaves the vault.
    #[error(
        "transit key `{0}` was not created exportable and never leaves the vault; its data can be decrypted and re-encrypted under a key created with `transit create --exportable`"
    )]
    NotExportable(String),
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => VaultError::NotFound(what),
            StoreError::Conflict(what) => VaultError::Conflict(format!(
                "`{what}` already exists or was changed concurrently"
            )),
            other => VaultError::Store(other),
        }
    }
}

/// Rotation settings of a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretSettings {
    /// Rotate at least this often (seconds).
    pub rotation_period_s: Option<i64>,
    /// Keep superseded versions decryptable this long (seconds); default 24 h.
    pub grace_period_s: Option<i64>,
    /// What produces the next value.
    pub hook: Option<RotationHook>,
}

/// One version as `secret list` shows it: never the value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// Version number.
    pub version: i64,
    /// `current`, `grace` (superseded, still decryptable) or `destroyed`.
    pub status: &'static str,
    /// When it was stored.
    pub created_at: i64,
    /// When it was superseded.
    pub retired_at: Option<i64>,
    /// When its key material is (or was) destroyed.
    pub destroy_at: Option<i64>,
}

/// A secret as `secret list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SecretInfo {
    /// Name.
    pub name: String,
    /// Current version.
    pub version: i64,
    /// When the secret was created.
    pub created_at: i64,
    /// When the current version was stored.
    pub rotated_at: i64,
    /// Rotation period, if any.
    pub rotation_period_s: Option<i64>,
    /// When the next rotation is due, if a period is set.
    pub rotation_due_at: Option<i64>,
    /// Whether the rotation is overdue.
    pub overdue: bool,
    /// Grace period of superseded versions.
    pub grace_period_s: i64,
    /// `command` or `webhook`, if a hook is set.
    pub hook: Option<&'static str>,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
}

/// A transit key as listed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TransitInfo {
    /// Name.
    pub name: String,
    /// Newest version (the one that encrypts).
    pub latest_version: i64,
    /// All versions (all decrypt).
    pub versions: Vec<i64>,
    /// Whether `transit export` may hand the key out (set at creation only).
    pub exportable: bool,
}

/// What [`Vault::transit_key`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitChange {
    /// Creates the key (version 1); `exportable` is fixed for its life.
    Create {
        /// Whether `transit export` may hand the key out.
        exportable: bool,
    },
    /// Adds the next version of an existing key.
    Rotate,
}

/// One version of an exported transit key.
pub struct ExportedVersion {
    /// The version number.
    pub version: i64,
    /// The key, in Fernet's text form.
    pub key: FernetKey,
}

/// What a maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// Versions whose grace period ended and whose key material was destroyed.
    pub destroyed: Vec<(String, i64)>,
    /// Overdue secrets rotated by their hooks.
    pub rotated: Vec<String>,
    /// Captures past retention that were shredded.
    pub shredded: u64,
    /// Secrets still overdue after the pass (no hook, or the hook failed).
    pub overdue: usize,
}

/// A decrypted capture.
pub struct CaptureView {
    /// The stored row (digests, sizes, times).
    pub row: CaptureRow,
    /// The request body as stored.
    pub request: Zeroizing<Vec<u8>>,
    /// The response body as stored.
    pub response: Zeroizing<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Current {
    version: i64,
    sealed: Sealed,
}

#[derive(Debug, Default)]
struct State {
    /// Current version of each secret.
    secrets: HashMap<String, Current>,
    /// Versions of each transit key, newest first.
    transit: HashMap<String, Vec<(i64, Sealed)>>,
    /// The transit keys created exportable.
    exportable: std::collections::HashSet<String>,
}

/// The vault.
pub struct Vault {
    store: Store,
    kek: ArcSwap<Kek>,
    state: ArcSwap<State>,
    cache: ValueCache,
    // Serialises snapshot rebuilds so an older read never replaces a newer one.
    reload_lock: Mutex<()>,
    // Writers that seal under the current KEK hold it shared; rekey holds it
    // exclusively, so no row is sealed under a KEK that is being replaced.
    sealing: RwLock<()>,
    http: reqwest::Client,
    in_use: ArcSwap<HashSet<String>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("kek", &self.kek.load().fingerprint())
            .finish_non_exhaustive()
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

fn secret_aad(name: &str, version: i64) -> Vec<u8> {
    format!("secret:{name}:v{version}").into_bytes()
}

fn transit_aad(name: &str, version: i64) -> Vec<u8> {
    format!("transit:{name}:v{version}").into_bytes()
}

fn to_row(kek: &Kek, sealed: Sealed) -> SealedRow {
    SealedRow {
        kek_id: kek.fingerprint().to_string(),
        wrapped_key: sealed.wrapped_key,
        ciphertext: sealed.ciphertext,
    }
}

fn from_row(row: &SealedRow) -> Sealed {
    Sealed {
        wrapped_key: row.wrapped_key.clone(),
        ciphertext: row.ciphertext.clone(),
    }
}

/// Checks a name: the rule for agents and routes (1–64 of `a-z 0-9 . _ -`).
fn check_name(kind: &str, name: &str) -> Result<(), VaultError> {
    if portcullis_core::is_valid_name(name) {
        Ok(())
    } else {
        Err(VaultError::Invalid(format!(
            "invalid {kind} name `{name}`: use 1-64 characters of a-z, 0-9, `.`, `_` or `-`"
        )))
    }
}

/// Checks a secret value without ever echoing it.
fn check_value(value: &[u8]) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(VaultError::Invalid("the secret value is empty".into()));
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(VaultError::Invalid(format!(
            "the secret value is longer than {MAX_SECRET_BYTES} bytes"
        )));
    }
    // Values are injected into headers and query strings: bytes that could end
    // a header line or a string are never valid there.
    if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(VaultError::Invalid(
            "the secret value contains CR, LF or NUL (a trailing newline from a file is removed; others are refused)".into(),
        ));
    }
    Ok(())
}

fn check_settings(s: &SecretSettings) -> Result<(), VaultError> {
    if s.rotation_period_s.is_some_and(|p| p <= 0) {
        return Err(VaultError::Invalid(
            "rotation period must be positive".into(),
        ));
    }
    if s.grace_period_s.is_some_and(|p| p < 0) {
        return Err(VaultError::Invalid(
            "grace period must not be negative".into(),
        ));
    }
    if let Some(hook) = &s.hook {
        hook.validate()?;
    }
    Ok(())
}

impl Vault {
    /// Opens the vault in `store` with `kek`. The first open records the KEK's
    /// fingerprint; later opens with another KEK fail with
    /// [`VaultError::WrongKek`] before anything is decrypted or written.
    /// `tls` is used for webhook rotation hooks.
    pub async fn open(
        store: Store,
        kek: Kek,
        tls: rustls::ClientConfig,
        cache_ttl: Duration,
    ) -> Result<Arc<Self>, VaultError> {
        match store.kek_meta().await? {
            Some(meta) if meta.kek_id != kek.fingerprint() => {
                return Err(VaultError::WrongKek {
                    expected: meta.kek_id,
                    found: kek.fingerprint().to_string(),
                });
            }
            Some(_) => {}
            None => store.init_kek_meta(kek.fingerprint(), now_s()).await?,
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(crate::hook::HOOK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| VaultError::Invalid(format!("cannot build the webhook client: {e}")))?;
        let vault = Vault {
            store,
            kek: ArcSwap::from_pointee(kek),
            state: ArcSwap::from_pointee(State::default()),
            cache: ValueCache::new(cache_ttl),
            reload_lock: Mutex::new(()),
            sealing: RwLock::new(()),
            http,
            in_use: ArcSwap::from_pointee(HashSet::new()),
        };
        vault.reload().await?;
        Ok(Arc::new(vault))
    }

    /// The fingerprint of the KEK in use.
    pub fn kek_fingerprint(&self) -> String {
        self.kek.load().fingerprint().to_string()
    }

    /// The KEK's version: 1 for the first KEK, incremented by every rekey.
    pub async fn kek_version(&self) -> Result<i64, VaultError> {
        Ok(self.store.kek_meta().await?.map_or(0, |m| m.kek_version))
    }

    /// Names that routes reference: they cannot be deleted while configured.
    pub fn set_in_use(&self, names: HashSet<String>) {
        self.in_use.store(Arc::new(names));
    }

    /// Whether a secret of that name exists (for config checks at start).
    pub fn has_secret(&self, name: &str) -> bool {
        self.state.load().secrets.contains_key(name)
    }

    /// Re-reads the secrets and transit keys from the store and forgets
    /// every decrypted value (cluster mode: a change made through another
    /// replica, announced or found by the periodic resync).
    pub async fn resync(&self) -> Result<(), VaultError> {
        self.reload().await?;
        self.cache.clear();
        Ok(())
    }

    /// Tells the other replicas (cluster mode; nothing on one node) that the
    /// secrets changed. After the commit; a lost notification is caught by
    /// their periodic resync, so it is logged, not returned.
    async fn announce(&self) {
        if let Err(e) = self
            .store
            .notify_change(portcullis_store::Change::Secrets)
            .await
        {
            tracing::warn!(error = %e, "cluster: cannot announce a vault change; other replicas read it at their next resync");
        }
    }

    async fn reload(&self) -> Result<(), VaultError> {
        let _guard = self.reload_lock.lock().await;
        let mut state = State::default();
        for row in self.store.secret_versions(None).await? {
            if row.retired_at.is_some() {
                continue;
            }
            if let Some(sealed) = &row.sealed {
                state.secrets.insert(
                    row.name.clone(),
                    Current {
                        version: row.version,
                        sealed: from_row(sealed),
                    },
                );
            }
        }
        for row in self.store.transit_versions().await? {
            if row.exportable {
                state.exportable.insert(row.name.clone());
            }
            state
                .transit
                .entry(row.name.clone())
                .or_default()
                .insert(0, (row.version, from_row(&row.sealed)));
        }
        self.state.store(Arc::new(state));
        Ok(())
    }

    /// The current value of a secret, for injection into an upstream request.
    /// In memory only: a cache hit is a map lookup; a miss decrypts the sealed
    /// current version held in memory (AES-GCM, about a microsecond).
    pub fn credential(&self, name: &str) -> Result<Arc<Plain>, VaultError> {
        if let Some(plain) = self.cache.get(name) {
            return Ok(plain);
        }
        let state = self.state.load();
        let current = state
            .secrets
            .get(name)
            .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
        let value = envelope::open(
            &self.kek.load(),
            &secret_aad(name, current.version),
            &current.sealed,
        )
        .map_err(|source| {
            tracing::error!(secret = %name, version = current.version, error = %source, "stored secret failed authentication");
            VaultError::Corrupt {
                what: format!("{name} v{}", current.version),
                source,
            }
        })?;
        let plain = Arc::new(Plain {
            version: current.version,
            value,
        });
        self.cache.put(name, plain.clone());
        Ok(plain)
    }

    /// Decrypts any version still within its grace period. Not exposed by the
    /// admin API (values never leave the process that way); used by tests and
    /// by operators' tooling linked against this crate.
    pub async fn decrypt_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let rows = self.store.secret_versions(Some(name)).await?;
        let row = rows
            .iter()
            .find(|r| r.version == version)
            .ok_or_else(|| VaultError::NotFound(format!("{name} v{version}")))?;
        let sealed = row
            .sealed
            .as_ref()
            .ok_or_else(|| VaultError::NotFound(format!("{name} v{version} (destroyed)")))?;
        envelope::open(
            &self.kek.load(),
            &secret_aad(name, version),
            &from_row(sealed),
        )
        .map_err(|source| VaultError::Corrupt {
            what: format!("{name} v{version}"),
            source,
        })
    }

    /// Stores a new secret (version 1).
    pub async fn put(
        &self,
        name: &str,
        value: &[u8],
        settings: &SecretSettings,
    ) -> Result<SecretInfo, VaultError> {
        check_name("secret", name)?;
        check_value(value)?;
        check_settings(settings)?;
        let now = now_s();
        let meta = SecretMeta {
            name: name.to_string(),
            created_at: now,
            rotation_period_s: settings.rotation_period_s,
            grace_period_s: settings.grace_period_s.unwrap_or(DEFAULT_GRACE_PERIOD_S),
            hook: settings
                .hook
                .as_ref()
                .map(|h| serde_json::to_string(h).unwrap_or_default()),
        };
        // Held until the sealed value is stored: a rekey cannot commit in
        // between and leave this row wrapped under the retired KEK.
        let _sealing = self.sealing.read().await;
        let kek = self.kek.load_full();
        let sealed = to_row(&kek, envelope::seal(&kek, &secret_aad(name, 1), value));
        self.store
            .create_secret(&meta, &sealed)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => VaultError::Conflict(format!(
                    "secret `{name}` already exists; use `secret rotate` to store a new version"
                )),
                other => other.into(),
            })?;
        self.reload().await?;
        self.announce().await;
        self.info(name, now).await
    }

    /// Changes a secret's rotation settings (fields left `None` keep their value).
    pub async fn update_settings(
        &self,
        name: &str,
        settings: &SecretSettings,
    ) -> Result<SecretInfo, VaultError> {
        check_settings(settings)?;
        let mut meta = self
            .store
            .secret(name)
            .await?
            .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
        if settings.rotation_period_s.is_some() {
            meta.rotation_period_s = settings.rotation_period_s;
        }
        if let Some(g) = settings.grace_period_s {
            meta.grace_period_s = g;
        }
        if let Some(h) = &settings.hook {
            meta.hook = Some(serde_json::to_string(h).unwrap_or_default());
        }
        self.store.update_secret_settings(&meta).await?;
        self.info(name, now_s()).await
    }

    /// Stores the next version of a secret. Without `value`, the secret's
    /// rotation hook produces it. With `expected_version`, the rotation applies
    /// only if that is still the current version; of two rotations from the
    /// same version exactly one succeeds and the other gets `Conflict`.
    pub async fn rotate(
        &self,
        name: &str,
        value: Option<&[u8]>,
        expected_version: Option<i64>,
    ) -> Result<SecretInfo, VaultError> {
        let meta = self
            .store
            .secret(name)
            .await?
            .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
        let versions = self.store.secret_versions(Some(name)).await?;
        let current = versions.last().map_or(0, |v| v.version);
        let base = expected_version.unwrap_or(current);
        if base != current {
            return Err(VaultError::Conflict(format!(
                "secret `{name}` is at version {current}, not {base}"
            )));
        }
        let next = base + 1;
        let produced;
        let value = match value {
            Some(v) => v,
            None => {
                let hook: RotationHook = meta
                    .hook
                    .as_deref()
                    .and_then(|h| serde_json::from_str(h).ok())
                    .ok_or_else(|| {
                        VaultError::Invalid(format!(
                            "secret `{name}` has no rotation hook: give the new value"
                        ))
                    })?;
                produced = hook.run(&self.http, name, next).await?;
                produced.as_slice()
            }
        };
        check_value(value)?;
        // Held until the sealed value is stored: a rekey cannot commit in
        // between and leave this row wrapped under the retired KEK.
        let _sealing = self.sealing.read().await;
        let kek = self.kek.load_full();
        let sealed = to_row(&kek, envelope::seal(&kek, &secret_aad(name, next), value));
        let now = now_s();
        self.store
            .add_secret_version(name, next, now, &sealed)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => VaultError::Conflict(format!(
                    "secret `{name}` was rotated concurrently; version {next} exists already"
                )),
                other => other.into(),
            })?;
        self.reload().await?;
        self.cache.remove(name);
        self.announce().await;
        self.info(name, now).await
    }

    /// Deletes a secret and all its versions. Refused while a route uses it.
    pub async fn delete(&self, name: &str) -> Result<(), VaultError> {
        if self.in_use.load().contains(name) {
            return Err(VaultError::Conflict(format!(
                "secret `{name}` is used by a configured route; remove the route's credential first"
            )));
        }
        self.store.delete_secret(name).await?;
        self.reload().await?;
        self.cache.remove(name);
        self.announce().await;
        Ok(())
    }

    async fn info(&self, name: &str, now: i64) -> Result<SecretInfo, VaultError> {
        let meta = self
            .store
            .secret(name)
            .await?
            .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
        let versions = self.store.secret_versions(Some(name)).await?;
        Ok(describe(meta, &versions, now))
    }

    /// Every secret with versions and rotation dates; never a value.
    pub async fn list(&self) -> Result<Vec<SecretInfo>, VaultError> {
        let now = now_s();
        let metas = self.store.secrets().await?;
        let versions = self.store.secret_versions(None).await?;
        let mut by_name: HashMap<&str, Vec<SecretVersionRow>> = HashMap::new();
        for v in &versions {
            by_name.entry(v.name.as_str()).or_default().push(v.clone());
        }
        Ok(metas
            .into_iter()
            .map(|m| {
                let v = by_name.remove(m.name.as_str()).unwrap_or_default();
                describe(m, &v, now)
            })
            .collect())
    }

    /// Rewraps every data key under `new` in one transaction, then switches
    /// to it. Requests keep being served throughout: they read the in-memory
    /// snapshot, which stays valid because ciphertexts do not change. If any
    /// key fails to unwrap under the current KEK, nothing is written.
    pub async fn rekey(&self, new: Kek) -> Result<u64, VaultError> {
        let _sealing = self.sealing.write().await;
        let old = self.kek.load_full();
        if old.fingerprint() == new.fingerprint() {
            return Err(VaultError::Invalid(
                "the new key-encryption key is the one in use".into(),
            ));
        }
        let _guard = self.reload_lock.lock().await;
        let result = self
            .store
            .rekey_vault(
                old.fingerprint(),
                new.fingerprint(),
                now_s(),
                |target, wrapped| {
                    let (aad, what) = match target {
                        RewrapTarget::Secret(n, v) => (secret_aad(n, *v), format!("{n} v{v}")),
                        RewrapTarget::Transit(n, v) => {
                            (transit_aad(n, *v), format!("transit key {n} v{v}"))
                        }
                        RewrapTarget::SealedKey(n, v) => (
                            crate::key_material::aad(n, *v),
                            format!("cluster key {n} v{v}"),
                        ),
                        RewrapTarget::Capture(id) => (
                            format!("capture:{id}").into_bytes(),
                            format!("capture {id}"),
                        ),
                    };
                    envelope::rewrap(&old, &new, &aad, wrapped)
                        .map_err(|source| VaultError::Corrupt { what, source })
                },
            )
            .await?;
        let count = result?;
        self.kek.store(Arc::new(new));
        drop(_guard);
        self.reload().await?;
        self.cache.clear();
        Ok(count)
    }

    /// One maintenance pass: destroy versions past their grace period, rotate
    /// overdue secrets that have a hook, shred expired captures, and drop
    /// expired cache entries. Failures of one hook do not stop the others.
    pub async fn maintain(&self) -> Result<Maintenance, VaultError> {
        let now = now_s();
        let mut report = Maintenance {
            destroyed: self.store.destroy_expired_versions(now).await?,
            shredded: self.store.shred_expired_captures(now).await?,
            ..Default::default()
        };
        for info in self.list().await? {
            if !info.overdue {
                continue;
            }
            if info.hook.is_none() {
                report.overdue += 1;
                continue;
            }
            match self.rotate(&info.name, None, Some(info.version)).await {
                Ok(_) => report.rotated.push(info.name),
                Err(e) => {
                    report.overdue += 1;
                    tracing::warn!(secret = %info.name, error = %e, "automatic rotation failed");
                }
            }
        }
        self.cache.purge_expired();
        Ok(report)
    }

    // ---- transit -------------------------------------------------------

    fn transit_keys(&self, name: &str) -> Result<Vec<(i64, FernetKey)>, VaultError> {
        let state = self.state.load();
        let versions = state
            .transit
            .get(name)
            .ok_or_else(|| VaultError::NotFound(format!("transit key {name}")))?;
        let kek = self.kek.load();
        versions
            .iter()
            .map(|(v, sealed)| {
                let key = self
                    .cache
                    .get(&format!("\0transit:{name}:{v}"))
                    .map_or_else(
                        || {
                            let plain = envelope::open(&kek, &transit_aad(name, *v), sealed)
                                .map_err(|source| VaultError::Corrupt {
                                    what: format!("transit key {name} v{v}"),
                                    source,
                                })?;
                            let plain = Arc::new(Plain {
                                version: *v,
                                value: plain,
                            });
                            self.cache
                                .put(&format!("\0transit:{name}:{v}"), plain.clone());
                            Ok::<_, VaultError>(plain)
                        },
                        Ok,
                    )?;
                let text = std::str::from_utf8(&key.value).map_err(|_| VaultError::Corrupt {
                    what: format!("transit key {name} v{v}"),
                    source: SealError::Malformed,
                })?;
                Ok((*v, FernetKey::parse(text)?))
            })
            .collect()
    }

    /// Creates a transit key or adds its next version (`change`), random or
    /// imported from Fernet's text form.
    pub async fn transit_key(
        &self,
        name: &str,
        import: Option<&str>,
        change: TransitChange,
    ) -> Result<TransitInfo, VaultError> {
        check_name("transit key", name)?;
        let key = match import {
            Some(text) => FernetKey::parse(text)?,
            None => FernetKey::generate(),
        };
        let latest = self
            .state
            .load()
            .transit
            .get(name)
            .and_then(|v| v.first().map(|(n, _)| *n));
        let version = match (latest, change) {
            (None, TransitChange::Create { .. }) => 1,
            (Some(_), TransitChange::Create { .. }) => {
                return Err(VaultError::Conflict(format!(
                    "transit key `{name}` already exists; rotate it instead"
                )));
            }
            (None, TransitChange::Rotate) => {
                return Err(VaultError::NotFound(format!("transit key {name}")));
            }
            (Some(n), TransitChange::Rotate) => n + 1,
        };
        // Held until the sealed value is stored: a rekey cannot commit in
        // between and leave this row wrapped under the retired KEK.
        let _sealing = self.sealing.read().await;
        let kek = self.kek.load_full();
        let row = TransitVersionRow {
            name: name.to_string(),
            version,
            created_at: now_s(),
            sealed: to_row(
                &kek,
                envelope::seal(&kek, &transit_aad(name, version), key.as_str().as_bytes()),
            ),
            // Only the creating row sets it; a rotation keeps the key's.
            exportable: change == TransitChange::Create { exportable: true },
        };
        self.store.add_transit_version(&row).await?;
        self.reload().await?;
        self.transit_info(name)
    }

    fn transit_info(&self, name: &str) -> Result<TransitInfo, VaultError> {
        let state = self.state.load();
        let versions = state
            .transit
            .get(name)
            .ok_or_else(|| VaultError::NotFound(format!("transit key {name}")))?;
        let mut numbers: Vec<i64> = versions.iter().map(|(v, _)| *v).collect();
        numbers.sort_unstable();
        Ok(TransitInfo {
            name: name.to_string(),
            latest_version: numbers.last().copied().unwrap_or(0),
            versions: numbers,
            exportable: state.exportable.contains(name),
        })
    }

    /// Every version of a transit key, newest first, in Fernet's text form
    /// (for `MultiFernet`): refused unless the key was created exportable.
    /// The caller decides who may ask (step-up) and audits the export.
    pub fn transit_export(&self, name: &str) -> Result<Vec<ExportedVersion>, VaultError> {
        if !self.state.load().transit.contains_key(name) {
            return Err(VaultError::NotFound(format!("transit key {name}")));
        }
        if !self.state.load().exportable.contains(name) {
            return Err(VaultError::NotExportable(name.to_string()));
        }
        Ok(self
            .transit_keys(name)?
            .into_iter()
            .map(|(version, key)| ExportedVersion { version, key })
            .collect())
    }

    /// Every transit key.
    pub fn transit_list(&self) -> Vec<TransitInfo> {
        let mut names: Vec<String> = self.state.load().transit.keys().cloned().collect();
        names.sort();
        names
            .iter()
            .filter_map(|n| self.transit_info(n).ok())
            .collect()
    }

    /// Encrypts with the newest version: (Fernet token, version).
    pub fn transit_encrypt(
        &self,
        name: &str,
        plaintext: &[u8],
    ) -> Result<(String, i64), VaultError> {
        let keys = self.transit_keys(name)?;
        let (version, key) = keys
            .first()
            .ok_or_else(|| VaultError::NotFound(format!("transit key {name}")))?;
        Ok((transit::encrypt(key, plaintext)?, *version))
    }

    /// Decrypts with whichever version accepts the token: (plaintext, version).
    pub fn transit_decrypt(
        &self,
        name: &str,
        token: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, i64), VaultError> {
        let keys = self.transit_keys(name)?;
        let (plain, i) = transit::decrypt(keys.iter().map(|(_, k)| k), token)?;
        Ok((plain, keys[i].0))
    }

    /// Re-encrypts a token under the newest version: (token, version).
    pub fn transit_rewrap(&self, name: &str, token: &str) -> Result<(String, i64), VaultError> {
        let keys = self.transit_keys(name)?;
        let (version, newest) = keys
            .first()
            .ok_or_else(|| VaultError::NotFound(format!("transit key {name}")))?;
        let token = transit::rewrap(newest, keys.iter().map(|(_, k)| k), token)?;
        Ok((token, *version))
    }

    // ---- payload capture ------------------------------------------------

    /// Seals and stores captures (one data key each).
    pub async fn store_captures(&self, captures: &[Capture]) -> Result<(), VaultError> {
        // Held until the sealed value is stored: a rekey cannot commit in
        // between and leave this row wrapped under the retired KEK.
        let _sealing = self.sealing.read().await;
        let kek = self.kek.load_full();
        let now = now_s();
        let rows: Vec<CaptureRow> = captures
            .iter()
            .map(|c| CaptureRow {
                request_id: c.request_id.clone(),
                route: c.route.clone(),
                captured_at: now,
                expires_at: c.expires_at,
                request_sha256: hex::encode(c.request_sha256),
                response_sha256: hex::encode(c.response_sha256),
                request_bytes: c.request_bytes as i64,
                response_bytes: c.response_bytes as i64,
                truncated: c.truncated,
                sealed: to_row(&kek, capture::seal(&kek, c)),
            })
            .collect();
        self.store.insert_captures(&rows).await?;
        Ok(())
    }

    /// Reads and decrypts one capture by request id.
    pub async fn capture(&self, request_id: &str) -> Result<CaptureView, VaultError> {
        let row = self
            .store
            .capture(request_id)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("capture {request_id}")))?;
        let (request, response) =
            capture::open(&self.kek.load(), request_id, &from_row(&row.sealed)).map_err(
                |source| VaultError::Corrupt {
                    what: format!("capture {request_id}"),
                    source,
                },
            )?;
        Ok(CaptureView {
            row,
            request,
            response,
        })
    }

    /// Starts the capture writer: captures are queued without waiting and
    /// sealed and written in batches off the request path.
    pub fn start_capture_writer(self: &Arc<Self>) -> (CaptureSink, tokio::task::JoinHandle<()>) {
        self.start_capture_writer_with_budget(CAPTURE_MEMORY_BUDGET)
    }

    /// [`Self::start_capture_writer`] with another memory budget (bytes).
    pub fn start_capture_writer_with_budget(
        self: &Arc<Self>,
        budget_bytes: usize,
    ) -> (CaptureSink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Capture>(CAPTURE_BACKLOG);
        let vault = self.clone();
        let budget = Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit: budget_bytes,
        });
        let sink = CaptureSink {
            tx,
            budget: budget.clone(),
        };
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 256).await > 0 {
                let mut delay = Duration::from_millis(50);
                loop {
                    match vault.store_captures(&batch).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, captures = batch.len(), "capture write failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                budget.release(batch.iter().map(Capture::kept_bytes).sum());
                batch.clear();
            }
        });
        (sink, task)
    }
}

#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Where the data plane hands finished captures. Never blocks: when the
/// writer is this far behind, the capture is dropped and logged (the audit
/// record of the request is unaffected).
#[derive(Debug, Clone)]
pub struct CaptureSink {
    tx: mpsc::Sender<Capture>,
    budget: Arc<Budget>,
}

impl CaptureSink {
    /// Reserves up to `n` bytes of the capture memory budget; returns how many
    /// may be kept. What is reserved is released once the capture is written
    /// (or dropped).
    pub fn reserve(&self, n: usize) -> usize {
        let mut used = self.budget.used.load(Ordering::Relaxed);
        loop {
            let grant = n.min(self.budget.limit.saturating_sub(used));
            if grant == 0 {
                return 0;
            }
            match self.budget.used.compare_exchange_weak(
                used,
                used + grant,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return grant,
                Err(now) => used = now,
            }
        }
    }

    /// Queues a capture whose kept bytes were reserved with [`Self::reserve`].
    pub fn submit(&self, capture: Capture) {
        if let Err(e) = self.tx.try_send(capture) {
            let c = match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            };
            self.budget.release(c.kept_bytes());
            tracing::warn!(request_id = %c.request_id, "payload capture dropped: the capture writer is behind");
        }
    }
}

fn describe(meta: SecretMeta, versions: &[SecretVersionRow], now: i64) -> SecretInfo {
    let current = versions.iter().rfind(|v| v.retired_at.is_none());
    let rotated_at = current.map_or(meta.created_at, |v| v.created_at);
    let rotation_due_at = meta.rotation_period_s.map(|p| rotated_at + p);
    SecretInfo {
        version: current.map_or(0, |v| v.version),
        created_at: meta.created_at,
        rotated_at,
        rotation_period_s: meta.rotation_period_s,
        rotation_due_at,
        overdue: rotation_due_at.is_some_and(|due| due <= now),
        grace_period_s: meta.grace_period_s,
        hook: meta
            .hook
            .as_deref()
            .and_then(|h| serde_json::from_str::<RotationHook>(h).ok())
            .map(|h| h.kind()),
        versions: versions
            .iter()
            .map(|v| VersionInfo {
                version: v.version,
                status: if v.destroyed_at.is_some() {
                    "destroyed"
                } else if v.retired_at.is_some() {
                    "grace"
                } else {
                    "current"
                },
                created_at: v.created_at,
                retired_at: v.retired_at,
                destroy_at: v
                    .destroyed_at
                    .or(v.retired_at.map(|r| r + meta.grace_period_s)),
            })
            .collect(),
        name: meta.name,
    }
}
