//! The key material `serve` starts with: the CA, the access-token signing
//! key, the audit checkpoint key, the admin MFA sealing key and (with
//! `[audit] pseudonymize`) the pseudonym key.
//!
//! On SQLite, and on PostgreSQL without a KEK, each comes from its file in
//! the state directory, made on first use. In cluster mode with a KEK each is
//! sealed under the KEK in the database (`sealed_keys`,
//! `portcullis_vault::key_material`), so a replica needs only the KEK and the
//! database URL: the first replica seals what its state directory holds (or
//! what it makes), and every other opens the sealed copy. Nothing sealed is
//! written to the state directory. A replica whose KEK is not the one the
//! material is sealed under, or whose own files differ from the sealed ones,
//! refuses to start and says which and what to do (docs/cluster.md).

use std::path::Path;

use anyhow::{Context, Result, bail};
use portcullis_identity::CertificateAuthority;
use portcullis_store::Store;
use portcullis_vault::Kek;
use portcullis_vault::key_material::{self, KeyMaterialError};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::state_dir::{StateDir, write_public, write_secret};

/// The key material a replica runs with.
pub(crate) struct Keys {
    /// The agents' certificate authority.
    pub ca: CertificateAuthority,
    /// Seed of the access-token signing key (Ed25519).
    pub token_seed: [u8; 32],
    /// Seed of the audit checkpoint signing key (Ed25519).
    pub log_seed: [u8; 32],
    /// The key sealing admins' TOTP secrets.
    pub mfa_seed: [u8; 32],
    /// The audit pseudonym key, only when `[audit] pseudonymize` is set.
    pub pseudonym_seed: Option<[u8; 32]>,
    /// Access-token keys retired by rotations, oldest first, each with when
    /// it was retired (epoch seconds): they verify the tokens they signed
    /// before then, until those expire.
    pub token_previous: Vec<([u8; 32], i64)>,
    /// Audit checkpoint keys retired by rotations, oldest first: the
    /// checkpoints they signed still verify with them.
    pub log_previous: Vec<[u8; 32]>,
    /// An online rotation's next access-token key, sealed and announced but
    /// not active yet, with when it activates (epoch seconds).
    pub token_next: Option<([u8; 32], i64)>,
    /// Likewise for the audit checkpoint key.
    pub log_next: Option<([u8; 32], i64)>,
}

impl Keys {
    /// The access-token key the cluster records by fingerprint: the newest
    /// sealed version, even while a rotation has not activated it yet.
    pub fn token_newest(&self) -> &[u8; 32] {
        self.token_next
            .as_ref()
            .map_or(&self.token_seed, |(seed, _)| seed)
    }

    /// Likewise for the audit checkpoint key.
    pub fn log_newest(&self) -> &[u8; 32] {
        self.log_next
            .as_ref()
            .map_or(&self.log_seed, |(seed, _)| seed)
    }
}

/// The sealed versions of one signing key at one moment (online rotation,
/// docs/cluster.md "Rotating the signing keys"): a version whose
/// `sealed_at` is still to come is announced (it verifies, it does not
/// sign); the newest of the others signs; the older ones verify what they
/// signed before the next one began.
pub(crate) struct KeyVersions {
    /// The version that signs now, and its seed.
    pub current: (i64, [u8; 32]),
    /// The versions before it, oldest first, each with when the next one
    /// began to sign (epoch seconds).
    pub previous: Vec<([u8; 32], i64)>,
    /// The announced version, its seed and when it begins to sign.
    pub next: Option<(i64, [u8; 32], i64)>,
}

impl KeyVersions {
    /// When the announced version begins to sign, if one is announced.
    pub fn activates_at(&self) -> Option<i64> {
        self.next.map(|(_, _, at)| at)
    }
}

/// Opens every sealed version of `key` with `kek` and tells, at `now`
/// (epoch seconds), which signs, which verify, and which is announced.
/// `None` when nothing is sealed (files mode). An error when a version
/// does not open: the caller must not go on signing as if nothing had
/// been rotated (fail closed, `signing_keys_unavailable`).
pub(crate) async fn sealed_versions(
    store: &Store,
    kek: &Kek,
    key: RotatedKey,
    now: i64,
) -> Result<Option<KeyVersions>> {
    let item = match key {
        RotatedKey::TokenKey => &TOKEN,
        RotatedKey::AuditKey => &AUDIT,
    };
    let rows = store.sealed_key_versions(item.name).await?;
    let mut opened = Vec::with_capacity(rows.len());
    for row in &rows {
        let material = open_row(kek, item, row)?;
        opened.push((row.version, as_seed(item, &material)?, row.sealed_at));
    }
    Ok(versions_at(&opened, now))
}

/// [`sealed_versions`] on opened rows `(version, seed, sealed_at)`, oldest
/// first. Version 1 always signs until another is active, whatever its
/// `sealed_at` says.
fn versions_at(opened: &[(i64, [u8; 32], i64)], now: i64) -> Option<KeyVersions> {
    let first = opened.first()?;
    let active = opened
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, (_, _, at))| *at <= now)
        .map(|(i, _)| i)
        .next_back()
        .unwrap_or(0);
    let previous = opened
        .windows(2)
        .take(active)
        .map(|pair| (pair[0].1, pair[1].2))
        .collect();
    let current = opened.get(active).unwrap_or(first);
    Some(KeyVersions {
        current: (current.0, current.1),
        previous,
        next: opened
            .get(active + 1)
            .map(|(version, seed, at)| (*version, *seed, *at)),
    })
}

/// One piece of key material: its name in `sealed_keys`, what it is (for
/// messages), its file in the state directory, and the name of its row in
/// `key_fingerprints` (the three a cluster compares by fingerprint).
struct Item {
    name: &'static str,
    what: &'static str,
    file: &'static str,
    fingerprint_name: Option<&'static str>,
}

const CA: Item = Item {
    name: "ca",
    what: "CA certificate and key",
    file: "`ca.crt` and `ca.key`",
    fingerprint_name: Some("ca_certificate"),
};
const TOKEN: Item = Item {
    name: "token_key",
    what: "access-token signing key",
    file: "`token.key`",
    fingerprint_name: Some("token_key"),
};
const AUDIT: Item = Item {
    name: "audit_key",
    what: "audit checkpoint key",
    file: "`audit.key`",
    fingerprint_name: Some("audit_key"),
};
const MFA: Item = Item {
    name: "mfa_key",
    what: "admin MFA sealing key",
    file: "`mfa.key`",
    fingerprint_name: None,
};
const PSEUDONYM: Item = Item {
    name: "audit_pseudonym_key",
    what: "audit pseudonym key",
    file: "`audit-pseudonym.key`",
    fingerprint_name: None,
};

/// The CA as sealed: both halves in one value, so they can never be
/// sealed apart.
#[derive(Serialize, Deserialize)]
struct CaPair {
    certificate: String,
    key: String,
}

/// Where a replica's key material comes from.
enum Source<'a> {
    /// The state directory's files, made on first use.
    Files,
    /// Sealed under the KEK in the shared database.
    Sealed { store: &'a Store, kek: &'a Kek },
}

/// Loads (or makes) the key material `serve` runs with. `pseudonymize` says
/// whether the pseudonym key is needed.
pub(crate) async fn load(
    state: &StateDir,
    store: &Store,
    kek: Option<&Kek>,
    trust_domain: &str,
    pseudonymize: bool,
) -> Result<Keys> {
    let source = match kek {
        Some(kek) if store.is_postgres() => Source::Sealed { store, kek },
        _ => {
            if store.is_postgres()
                && let Some(row) = store.sealed_key(CA.name).await?
            {
                bail!(
                    "{}: the cluster's key material is sealed in the database under its vault key-encryption key (KEK fingerprint {}) and this replica has none: set {} or {} to the cluster's KEK",
                    crate::cluster::KEYS_DIFFER,
                    row.kek_id,
                    crate::ENV_KEK_FILE,
                    crate::ENV_KEK
                );
            }
            Source::Files
        }
    };
    let ca = source.ca(state, trust_domain).await?;
    let token_seed = source.seed(&TOKEN, &state.token_key()).await?;
    let log_seed = source.seed(&AUDIT, &state.audit_key()).await?;
    let mfa_seed = source.seed(&MFA, &state.mfa_key()).await?;
    let pseudonym_seed = if pseudonymize {
        Some(
            source
                .seed(&PSEUDONYM, &state.audit_pseudonym_key())
                .await?,
        )
    } else {
        None
    };
    let token_previous = source.previous(&TOKEN, &state.token_key()).await?;
    let log_previous = source
        .previous(&AUDIT, &state.audit_key())
        .await?
        .into_iter()
        .map(|(seed, _)| seed)
        .collect();
    let mut keys = Keys {
        ca,
        token_seed,
        log_seed,
        mfa_seed,
        pseudonym_seed,
        token_previous,
        log_previous,
        token_next: None,
        log_next: None,
    };
    // A rotation in progress (online): the newest sealed version is only
    // announced until its activation, the one before it signs meanwhile.
    if let Source::Sealed { store, kek } = &source {
        let now = now_s();
        if let Some(v) = sealed_versions(store, kek, RotatedKey::TokenKey, now).await? {
            keys.token_seed = v.current.1;
            keys.token_previous = v.previous;
            keys.token_next = v.next.map(|(_, seed, at)| (seed, at));
        }
        if let Some(v) = sealed_versions(store, kek, RotatedKey::AuditKey, now).await? {
            keys.log_seed = v.current.1;
            keys.log_previous = v.previous.into_iter().map(|(seed, _)| seed).collect();
            keys.log_next = v.next.map(|(_, seed, at)| (seed, at));
        }
    }
    Ok(keys)
}

/// A signing key `portcullis vault rotate-key` replaces: the others are not
/// rotated this way (the CA would orphan every agent certificate, the MFA
/// key every enrolled approver, the pseudonym key every pseudonym).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RotatedKey {
    /// The access-token signing key (`token_key`).
    TokenKey,
    /// The audit checkpoint signing key (`audit_key`).
    AuditKey,
}

/// What a rotation did.
pub struct Rotation {
    /// The key's name (`token_key`, `audit_key`).
    pub name: &'static str,
    /// The new version (the old ones are kept).
    pub version: i64,
    /// Whether it was sealed in the database (else written to the file).
    pub sealed: bool,
    /// When it begins to sign (epoch seconds); later than the rotation
    /// when it was made online, while replicas run.
    pub activates_at: i64,
    /// The new key's fingerprint (`key_fingerprints`): of its public half.
    pub fingerprint: String,
}

/// Replaces `key` with a new one and keeps the old: sealed as the next
/// version beside the others (PostgreSQL with a KEK), or written to its file
/// in the state directory, the old file kept as `<file>.retired-<when>`.
/// The server must be stopped (the caller holds the state lock; in cluster
/// mode no replica holds a lease): a running one would go on signing with
/// the old key. At the next start the new key signs and the old ones verify
/// what they signed (docs/cluster.md, "Rotating the signing keys").
pub(crate) async fn rotate(
    state: &StateDir,
    store: &Store,
    kek: Option<&Kek>,
    key: RotatedKey,
    activate_at: i64,
) -> Result<Rotation> {
    let (item, path) = match key {
        RotatedKey::TokenKey => (&TOKEN, state.token_key()),
        RotatedKey::AuditKey => (&AUDIT, state.audit_key()),
    };
    let now = now_s();
    let seed = Zeroizing::new(rand::random::<[u8; 32]>());
    let fingerprint = match key {
        RotatedKey::TokenKey => token_fingerprint(&seed),
        RotatedKey::AuditKey => audit_fingerprint(&seed),
    };
    let retired = retired_path(&path, now);
    if retired.exists() {
        bail!(
            "the {} was rotated less than a second ago; retry",
            item.what
        );
    }
    let (version, sealed) = match kek {
        Some(kek) if store.is_postgres() => {
            let Some(current) = store.sealed_key(item.name).await? else {
                bail!(
                    "the cluster's {} is not sealed in the database yet: start a replica with the KEK once (it seals it), then rotate",
                    item.what
                );
            };
            // Opening the current version proves the KEK is the cluster's.
            open_row(kek, item, &current)?;
            if current.version > 1 && current.sealed_at > now {
                bail!(
                    "version {} of the {} is announced and begins to sign at {} (epoch s); rotate again after that",
                    current.version,
                    item.what,
                    current.sealed_at
                );
            }
            let version = current.version + 1;
            // `sealed_at` of a rotated version is when it begins to sign (and
            // the one before it is retired): later than now when replicas
            // run, so that every one of them verifies it first.
            let row = key_material::seal(
                kek,
                item.name,
                version,
                seed.as_slice(),
                activate_at.max(now),
            );
            if !store.insert_sealed_key(&row).await? {
                bail!(
                    "version {version} of the {} was sealed meanwhile (another rotation); nothing changed",
                    item.what
                );
            }
            // A file of the old key here would make the next start refuse
            // (it is not the sealed one): it is set aside.
            if path.exists() {
                std::fs::rename(&path, &retired)
                    .with_context(|| format!("cannot set `{}` aside", path.display()))?;
            }
            (version, true)
        }
        _ => {
            if store.is_postgres()
                && let Some(row) = store.sealed_key(item.name).await?
            {
                bail!(
                    "the cluster's {} is sealed in the database under the KEK with fingerprint {}: set {} or {}",
                    item.what,
                    row.kek_id,
                    crate::ENV_KEK_FILE,
                    crate::ENV_KEK
                );
            }
            if !path.exists() {
                bail!(
                    "no {} in `{}`: start the server once first (it makes one)",
                    item.file,
                    state.root().display()
                );
            }
            let old = Zeroizing::new(crate::serve::read_seed(&path)?);
            write_secret(&retired, format!("{}\n", hex::encode(*old)).as_bytes())?;
            // The new key replaces the file whole, never half-written.
            let mut fresh = path.as_os_str().to_owned();
            fresh.push(".new");
            let fresh = std::path::PathBuf::from(fresh);
            write_secret(&fresh, format!("{}\n", hex::encode(*seed)).as_bytes())?;
            std::fs::rename(&fresh, &path)
                .with_context(|| format!("cannot replace `{}`", path.display()))?;
            (retired_files(&path)?.len() as i64 + 1, false)
        }
    };
    // The cluster compares each replica's key with this at start.
    if store.is_postgres()
        && let Some(name) = item.fingerprint_name
    {
        store
            .replace_cluster_key(name, &fingerprint, now * 1000)
            .await?;
    }
    Ok(Rotation {
        name: item.name,
        version,
        sealed,
        activates_at: if sealed { activate_at.max(now) } else { now },
        fingerprint,
    })
}

/// Where a key file goes when a rotation retires it.
fn retired_path(path: &Path, now: i64) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".retired-{now}"));
    std::path::PathBuf::from(name)
}

/// The seeds of the files a rotation retired beside `path`
/// (`<file>.retired-<when>`), oldest first, with when.
fn retired_files(path: &Path) -> Result<Vec<([u8; 32], i64)>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.retired-");
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", dir.display())),
    };
    let mut retired = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read `{}`", dir.display()))?;
        let Some(when) = entry
            .file_name()
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|w| w.parse::<i64>().ok())
        else {
            continue;
        };
        retired.push((crate::serve::read_seed(&entry.path())?, when));
    }
    retired.sort_by_key(|(_, when)| *when);
    Ok(retired)
}

/// `serve --check` on PostgreSQL: opens every sealed key with the KEK and
/// compares it with the state directory's own file, writing nothing. One
/// line per finding; an error where `serve` would refuse to start.
pub(crate) async fn check(
    state: &StateDir,
    store: &Store,
    kek: Option<&Kek>,
) -> Result<Vec<String>> {
    let Some(kek) = kek else {
        if let Some(row) = store.sealed_key(CA.name).await? {
            bail!(
                "the cluster's key material is sealed in the database under the KEK with fingerprint {}, and no KEK is set: set {} or {}",
                row.kek_id,
                crate::ENV_KEK_FILE,
                crate::ENV_KEK
            );
        }
        return Ok(vec![
            "key material: from the state directory (no KEK: not sealed in the database)".into(),
        ]);
    };
    let mut sealed = Vec::new();
    let mut unsealed = Vec::new();
    let ca_local = read_ca_files(state)?.0.map(|pair| pair_bytes(&pair));
    let seeds = [
        (&TOKEN, state.token_key()),
        (&AUDIT, state.audit_key()),
        (&MFA, state.mfa_key()),
        (&PSEUDONYM, state.audit_pseudonym_key()),
    ];
    let mut items = vec![(&CA, ca_local)];
    for (item, path) in seeds {
        let local = if path.exists() {
            Some(Zeroizing::new(crate::serve::read_seed(&path)?.to_vec()))
        } else {
            None
        };
        items.push((item, local));
    }
    for (item, local) in items {
        match open_sealed(store, kek, item).await? {
            Some(material) => {
                same_as_local(item, material, local)?;
                sealed.push(item.name);
            }
            None => unsealed.push(item.name),
        }
    }
    let mut lines = Vec::new();
    if !sealed.is_empty() {
        lines.push(format!(
            "key material sealed in the database opens with the KEK ({})",
            sealed.join(", ")
        ));
    }
    if !unsealed.is_empty() {
        lines.push(format!(
            "key material not sealed yet ({}): the next `serve` seals the state directory's, or makes new",
            unsealed.join(", ")
        ));
    }
    Ok(lines)
}

/// The CA sealed in a cluster's database (certificate and key PEM), opened
/// with `kek`; `None` when none is sealed. Refuses when the database holds
/// one and no KEK is given, rather than falling back to other files.
pub(crate) async fn sealed_ca(
    store: &Store,
    kek: Option<&Kek>,
) -> Result<Option<(String, String)>> {
    let Some(kek) = kek else {
        if let Some(row) = store.sealed_key(CA.name).await? {
            bail!(
                "the cluster's CA is sealed in the database under the KEK with fingerprint {}: set {} or {}",
                row.kek_id,
                crate::ENV_KEK_FILE,
                crate::ENV_KEK
            );
        }
        return Ok(None);
    };
    let Some(material) = open_sealed(store, kek, &CA).await? else {
        return Ok(None);
    };
    let pair = ca_pair(&material)?;
    Ok(Some((pair.certificate, pair.key)))
}

impl Source<'_> {
    async fn ca(&self, state: &StateDir, trust_domain: &str) -> Result<CertificateAuthority> {
        let Source::Sealed { .. } = self else {
            return crate::serve::load_or_create_ca(state, trust_domain);
        };
        let (local, public) = read_ca_files(state)?;
        let fingerprint =
            |bytes: &[u8]| -> Result<String> { Ok(ca_fingerprint(&ca_pair(bytes)?.certificate)) };
        let material = self
            .resolve(
                &CA,
                local.map(|pair| pair_bytes(&pair)),
                fingerprint,
                || {
                    let ca = CertificateAuthority::generate(trust_domain)?;
                    Ok(pair_bytes(&CaPair {
                        certificate: ca.cert_pem().to_string(),
                        key: ca.key_pem().to_string(),
                    }))
                },
            )
            .await?;
        let pair = ca_pair(&material)?;
        match public {
            // The certificate alone (what a replica writes, below): it must
            // be the cluster's.
            Some(cert) if cert.trim() != pair.certificate => bail!(
                "{}: this replica's `ca.crt` is not the CA certificate sealed in the cluster's database; remove it (the replica writes the cluster's)",
                crate::cluster::KEYS_DIFFER
            ),
            Some(_) => {}
            // The public half, for the CLI on this host to trust the admin
            // API; the key stays sealed in the database only.
            None if !state.ca_cert().exists() => {
                write_public(
                    &state.ca_cert(),
                    format!("{}\n", pair.certificate).as_bytes(),
                )?;
            }
            None => {}
        }
        CertificateAuthority::from_pem(trust_domain, &pair.certificate, &pair.key)
            .context("cannot load the cluster's sealed CA")
    }

    async fn seed(&self, item: &Item, path: &Path) -> Result<[u8; 32]> {
        let Source::Sealed { .. } = self else {
            return crate::serve::load_or_create_seed(path, item.what);
        };
        let local = if path.exists() {
            Some(Zeroizing::new(crate::serve::read_seed(path)?.to_vec()))
        } else {
            None
        };
        let fingerprint = |bytes: &[u8]| -> Result<String> {
            let seed = as_seed(item, bytes)?;
            Ok(match item.name {
                "token_key" => token_fingerprint(&seed),
                _ => audit_fingerprint(&seed),
            })
        };
        let material = self
            .resolve(item, local, fingerprint, || {
                Ok(Zeroizing::new(rand::random::<[u8; 32]>().to_vec()))
            })
            .await?;
        as_seed(item, &material)
    }

    /// The versions of `item` retired by rotations, oldest first, each with
    /// when it was retired (epoch seconds): the sealed versions before the
    /// newest (retired when the next was sealed), or the state directory's
    /// `<file>.retired-<when>` files.
    async fn previous(&self, item: &Item, path: &Path) -> Result<Vec<([u8; 32], i64)>> {
        let Source::Sealed { store, kek } = self else {
            return retired_files(path);
        };
        let versions = store.sealed_key_versions(item.name).await?;
        let mut previous = Vec::new();
        for pair in versions.windows(2) {
            let material = open_row(kek, item, &pair[0])?;
            previous.push((as_seed(item, &material)?, pair[1].sealed_at));
        }
        Ok(previous)
    }

    /// The sealed version of `item` if the cluster has one (checked against
    /// this replica's own file, if any); else this replica's file, or new
    /// material, sealed for the others. A replica that loses the race to
    /// seal takes the winner's.
    async fn resolve(
        &self,
        item: &Item,
        local: Option<Zeroizing<Vec<u8>>>,
        fingerprint: impl Fn(&[u8]) -> Result<String>,
        generate: impl FnOnce() -> Result<Zeroizing<Vec<u8>>>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let Source::Sealed { store, kek } = self else {
            bail!("{} is not sealed on this store", item.what);
        };
        if let Some(sealed) = open_sealed(store, kek, item).await? {
            return same_as_local(item, sealed, local);
        }
        // Nothing sealed yet. A cluster that ran before keys were sealed
        // recorded fingerprints: only its own material may be sealed now.
        let (material, from_file) = match local {
            Some(local) => (local, true),
            None => (generate()?, false),
        };
        if let Some(name) = item.fingerprint_name
            && let Some(recorded) = store.cluster_key(name).await?
            && recorded != fingerprint(&material)?
        {
            bail!(
                "{}: the cluster runs with another {} (fingerprint {}) and has not sealed it in the database yet; {}",
                crate::cluster::KEYS_DIFFER,
                item.what,
                short(&recorded),
                if from_file {
                    format!(
                        "copy {} from a running replica, or start one that has them first (it seals them)",
                        item.file
                    )
                } else {
                    format!(
                        "start a replica that has {} first (it seals them), or copy them here",
                        item.file
                    )
                }
            );
        }
        let row = key_material::seal(kek, item.name, 1, &material, now_s());
        if store.insert_sealed_key(&row).await? {
            tracing::info!(
                key = item.name,
                kek = kek.fingerprint(),
                "sealed the {} under the KEK in the database{}",
                item.what,
                if from_file {
                    " (from the state directory)"
                } else {
                    ""
                }
            );
            return Ok(material);
        }
        // Another replica sealed its own first: the cluster's is that one.
        let sealed = open_sealed(store, kek, item)
            .await?
            .with_context(|| format!("the sealed {} vanished", item.what))?;
        same_as_local(item, sealed, from_file.then_some(material))
    }
}

/// The newest sealed version of `item`, opened under `kek`.
async fn open_sealed(store: &Store, kek: &Kek, item: &Item) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let Some(row) = store.sealed_key(item.name).await? else {
        return Ok(None);
    };
    open_row(kek, item, &row).map(Some)
}

/// One sealed version of `item`, opened under `kek`.
fn open_row(
    kek: &Kek,
    item: &Item,
    row: &portcullis_store::SealedKeyRow,
) -> Result<Zeroizing<Vec<u8>>> {
    match key_material::open(kek, row) {
        Ok(material) => Ok(material),
        Err(KeyMaterialError::OtherKek {
            sealed_under,
            given,
            ..
        }) => bail!(
            "{}: the cluster's {} is sealed in the database under another vault key-encryption key (KEK fingerprint {sealed_under}; this replica's is {given}); give this replica the cluster's KEK ({} or {})",
            crate::cluster::KEYS_DIFFER,
            item.what,
            crate::ENV_KEK_FILE,
            crate::ENV_KEK
        ),
        Err(e @ KeyMaterialError::Damaged { .. }) => {
            Err(e).context("cannot open the cluster's sealed key material")
        }
    }
}

/// The sealed material, unless this replica's own file holds another.
fn same_as_local(
    item: &Item,
    sealed: Zeroizing<Vec<u8>>,
    local: Option<Zeroizing<Vec<u8>>>,
) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(local) = local
        && local.as_slice() != sealed.as_slice()
    {
        bail!(
            "{}: this replica's {} ({}) is not the one sealed in the cluster's database; remove {} from the state directory (the replica then uses the sealed one) or copy the cluster's",
            crate::cluster::KEYS_DIFFER,
            item.what,
            item.file,
            item.file
        );
    }
    Ok(sealed)
}

/// The state directory's CA: both halves, or (in cluster mode) the
/// certificate alone, as a replica whose key is sealed writes it.
fn read_ca_files(state: &StateDir) -> Result<(Option<CaPair>, Option<String>)> {
    let (cert_path, key_path) = (state.ca_cert(), state.ca_key());
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
    };
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => Ok((None, None)),
        (true, true) => Ok((
            Some(CaPair {
                certificate: read(&cert_path)?,
                key: read(&key_path)?,
            }),
            None,
        )),
        (true, false) => Ok((None, Some(read(&cert_path)?))),
        (false, true) => bail!(
            "`{}` holds `ca.key` without `ca.crt`; restore the certificate, or remove the key to use the CA sealed in the cluster's database",
            state.root().display()
        ),
    }
}

/// The pair as sealed: JSON, PEM trimmed so a trailing newline in a copied
/// file does not make it "another" CA.
fn pair_bytes(pair: &CaPair) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        serde_json::to_vec(&CaPair {
            certificate: pair.certificate.trim().to_string(),
            key: pair.key.trim().to_string(),
        })
        .unwrap_or_default(),
    )
}

fn ca_pair(bytes: &[u8]) -> Result<CaPair> {
    serde_json::from_slice(bytes).context("the sealed CA is not a certificate and key pair")
}

fn as_seed(item: &Item, bytes: &[u8]) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .ok()
        .with_context(|| format!("the sealed {} is not 32 bytes", item.what))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// The cluster's fingerprint of a CA (`key_fingerprints.ca_certificate`).
pub(crate) fn ca_fingerprint(cert_pem: &str) -> String {
    sha256_hex(cert_pem.trim().as_bytes())
}

/// The cluster's fingerprint of the access-token key: of its public `kid`.
pub(crate) fn token_fingerprint(seed: &[u8; 32]) -> String {
    sha256_hex(
        portcullis_identity::Ed25519Key::from_seed(seed)
            .kid()
            .as_bytes(),
    )
}

/// The cluster's fingerprint of the audit key: of its verifier (public) key.
pub(crate) fn audit_fingerprint(seed: &[u8; 32]) -> String {
    sha256_hex(
        ed25519_dalek::SigningKey::from_bytes(seed)
            .verifying_key()
            .as_bytes(),
    )
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_version_verifies_and_signs_only_from_its_activation() {
        let rows = [(1, [1; 32], 100), (2, [2; 32], 200), (3, [3; 32], 300)];
        // Before version 2 activates: 1 signs, 2 is announced.
        let v = versions_at(&rows[..2], 150).unwrap();
        assert_eq!(v.current, (1, [1; 32]));
        assert!(v.previous.is_empty());
        assert_eq!(v.next, Some((2, [2; 32], 200)));
        assert_eq!(v.activates_at(), Some(200));
        // From its activation: 2 signs, 1 verifies what it signed before.
        let v = versions_at(&rows[..2], 200).unwrap();
        assert_eq!(v.current, (2, [2; 32]));
        assert_eq!(v.previous, vec![([1; 32], 200)]);
        assert_eq!(v.next, None);
        // Three versions, the third announced.
        let v = versions_at(&rows, 250).unwrap();
        assert_eq!(v.current, (2, [2; 32]));
        assert_eq!(v.previous, vec![([1; 32], 200)]);
        assert_eq!(v.next.map(|n| n.0), Some(3));
        // Version 1 signs even when its clock ran ahead of this one.
        let v = versions_at(&rows[..1], 50).unwrap();
        assert_eq!(v.current, (1, [1; 32]));
        assert!(versions_at(&[], 0).is_none());
    }
}
