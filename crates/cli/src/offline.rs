//! Offline administration: `secret put` and `agent create` on a state
//! directory no server is running on, or directly on a cluster's shared
//! PostgreSQL store.
//!
//! A route naming a secret that is not in the vault stops `serve`, so the
//! secret must be storable before the first start; an agent's certificate
//! can be issued before the gateway runs. Whether a server runs is decided
//! by the state lock (`state_lock.rs`): when it is free, this process takes
//! it and writes the database directly, and `serve` cannot start meanwhile;
//! when a server holds it, the command goes through its admin API as before.
//! Every change is appended to the audit log like the admin API's.

use anyhow::{Context, Result, bail};
use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_core::AgentName;
use portcullis_identity::CertificateAuthority;
use portcullis_store::{AgentKeyRow, AgentRow, CertificateRow, Change, Store};
use portcullis_vault::{SecretSettings, Vault};
use serde_json::{Value, json};

use crate::AdminArgs;
use crate::state_dir::StateDir;
use crate::state_lock::{LockError, StateLock};

/// The audit log's `credential` for changes made offline: no admin token was
/// presented, only access to the state directory.
const OFFLINE_CREDENTIAL: &str = "offline (state directory lock)";

/// A state directory held by this process, or (cluster mode) a shared
/// PostgreSQL store changed directly.
pub struct Offline {
    state: StateDir,
    store: Store,
    // Held for its lock: released when the command ends. None in cluster
    // mode on a host without a state directory.
    _lock: Option<StateLock>,
}

impl Offline {
    /// Takes the state directory when no server holds it. `None` means a
    /// server is running (or the admin API was named with `--admin-url`):
    /// talk to it instead.
    ///
    /// In cluster mode (`PORTCULLIS_STORE_URL` names PostgreSQL) the
    /// replicas share the database, and other hosts' replicas may be
    /// running whatever this state directory's lock says: the change is
    /// made in the database like a replica's admin API makes it (its write
    /// lock, the shared audit log) and announced on the change channel, so
    /// every running replica re-reads it (and within the 5 s resync if the
    /// notification is lost).
    pub async fn open(args: &AdminArgs) -> Result<Option<Offline>> {
        if args.admin_url.is_some() {
            return Ok(None);
        }
        let state = StateDir::new(args.state.state_dir.clone());
        let cluster_url =
            crate::serve::store_url_env()?.filter(|url| portcullis_store::is_postgres_url(url));
        if let Some(url) = cluster_url {
            let lock = if state.root().is_dir() {
                match StateLock::acquire(state.root()) {
                    Ok(lock) => Some(lock),
                    // A replica runs on this state directory: use its API.
                    Err(LockError::Held { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            } else {
                None
            };
            let store = Store::open_postgres(&url)
                .await
                .context("cannot open the PostgreSQL store")?;
            eprintln!(
                "{} names a PostgreSQL store (cluster mode): changing it directly; running replicas are told on the change channel",
                crate::ENV_STORE_URL
            );
            return Ok(Some(Offline {
                state,
                store,
                _lock: lock,
            }));
        }
        if !state.root().is_dir() {
            bail!(
                "state directory `{}` does not exist: start `portcullis serve` once, or create it (mode 0700), or pass --state-dir",
                state.root().display()
            );
        }
        let lock = match StateLock::acquire(state.root()) {
            Ok(lock) => lock,
            Err(LockError::Held { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let store = Store::open_sqlite(&state.database())
            .await
            .context("cannot open the store")?;
        eprintln!(
            "no server is running on `{}` (`{}` was free): changing it directly",
            state.root().display(),
            lock.path().display()
        );
        Ok(Some(Offline {
            state,
            store,
            _lock: Some(lock),
        }))
    }

    /// Cluster mode: tells the running replicas what changed. A lost
    /// notification is made up for by their periodic resync.
    async fn announce(&self, change: Change) {
        if self.store.is_postgres()
            && let Err(e) = self.store.notify_change(change).await
        {
            eprintln!(
                "note: the replicas were not notified ({e}); they re-read the change within their 5 s resync"
            );
        }
    }

    /// `secret put` without a server: sealed under the KEK the server will
    /// use (`PORTCULLIS_KEK_FILE`, `PORTCULLIS_KEK`, or the quickstart's
    /// `vault.kek`).
    pub async fn put_secret(
        &self,
        name: &str,
        value: &[u8],
        settings: &SecretSettings,
    ) -> Result<Value> {
        let kek =
            crate::serve::load_kek(self.state.kek().exists(), &self.state)?.with_context(|| {
                format!(
                    "the vault needs its key-encryption key: set {} or {}",
                    crate::ENV_KEK_FILE,
                    crate::ENV_KEK
                )
            })?;
        let vault = Vault::open(
            self.store.clone(),
            kek,
            crate::serve::upstream_tls("")?,
            portcullis_vault::DEFAULT_CACHE_TTL,
        )
        .await
        .context("cannot open the vault")?;
        let info = vault.put(name, value, settings).await?;
        self.audit("secret.put", name, 201).await?;
        self.announce(Change::Secrets).await;
        Ok(serde_json::to_value(info)?)
    }

    /// `vault rotate-key`: a new signing key, the old one kept to verify
    /// what it signed (`cluster_keys::rotate`). On a cluster with sealed
    /// keys it works while replicas run (an online rotation): the new
    /// version is sealed to begin signing [`crate::key_rotation::WINDOW`]
    /// from now and announced (`keys`), so every live replica verifies it
    /// before any signs with it. Without a KEK (key files on each replica)
    /// it is refused while any replica holds a live lease, since a running
    /// replica would go on signing with the old key and refuse what the
    /// restarted ones sign.
    pub async fn rotate_key(
        &self,
        key: crate::cluster_keys::RotatedKey,
    ) -> Result<crate::cluster_keys::Rotation> {
        let lease_ms = i64::try_from(portcullis_gateway::audit_intent::INTENT_LEASE.as_millis())
            .unwrap_or(i64::MAX);
        let alive = self.store.live_replicas(lease_ms).await?;
        let kek = crate::serve::load_kek(self.state.kek().exists(), &self.state)?;
        let sealed = kek.is_some() && self.store.is_postgres();
        if !alive.is_empty() && !sealed {
            bail!(
                "{} replica(s) of the cluster hold a live lease ({}): without a KEK their keys are files, so stop every replica, and rotate once their leases have lapsed ({lease_ms} ms after they stopped); with sealed keys (a KEK) the rotation runs online",
                alive.len(),
                alive.join(", ")
            );
        }
        let now = now_s();
        let activate_at = if alive.is_empty() {
            now
        } else {
            now + crate::key_rotation::WINDOW.as_secs() as i64
        };
        let rotation =
            crate::cluster_keys::rotate(&self.state, &self.store, kek.as_ref(), key, activate_at)
                .await?;
        self.audit("vault.rotate_key", rotation.name, 200).await?;
        self.announce(Change::Keys).await;
        Ok(rotation)
    }

    /// Cluster mode with a running replica on this state directory: the
    /// shared store, opened directly without the state lock (a signing key
    /// rotates online, [`Self::rotate_key`]). `None` off PostgreSQL.
    pub async fn open_cluster(args: &AdminArgs) -> Result<Option<Offline>> {
        if args.admin_url.is_some() {
            return Ok(None);
        }
        let Some(url) =
            crate::serve::store_url_env()?.filter(|url| portcullis_store::is_postgres_url(url))
        else {
            return Ok(None);
        };
        let store = Store::open_postgres(&url)
            .await
            .context("cannot open the PostgreSQL store")?;
        Ok(Some(Offline {
            state: StateDir::new(args.state.state_dir.clone()),
            store,
            _lock: None,
        }))
    }

    /// `agent create` without a server: the CA in the state directory signs
    /// the CSR; the response has the admin API's shape.
    pub async fn create_agent(
        &self,
        name: &str,
        roles: &[String],
        csr_pem: &str,
        ttl: std::time::Duration,
        jwk: &Value,
    ) -> Result<Value> {
        let agent = AgentName::parse(name)?;
        for role in roles {
            if !portcullis_core::is_valid_name(role) {
                bail!("invalid role `{role}`: use 1-64 characters of a-z, 0-9, `.`, `_` or `-`");
            }
        }
        let ca = self.ca().await?;
        let key = portcullis_identity::PublicJwk::from_json(jwk)?;
        let issued = ca.issue_agent(&agent, csr_pem, ttl)?;
        let now = now_s();
        let row = AgentRow {
            name: name.to_string(),
            roles: roles.to_vec(),
            created_at: now,
            revoked_at: None,
        };
        let cert = CertificateRow {
            serial: issued.serial.clone(),
            agent: name.to_string(),
            spiffe_id: issued.spiffe_id.clone(),
            issued_at: now,
            not_after: issued.not_after,
            revoked_at: None,
        };
        self.store.create_agent(&row, &cert).await?;
        let kid = key.thumbprint();
        self.store
            .add_agent_key(&AgentKeyRow {
                kid: kid.clone(),
                agent: name.to_string(),
                jwk: key.to_json().to_string(),
                created_at: now,
            })
            .await?;
        self.audit("agent.create", name, 201).await?;
        self.announce(Change::Agents).await;
        Ok(json!({
            "agent": {
                "name": name,
                "roles": roles,
                "spiffe_id": issued.spiffe_id,
                "created_at": now,
                "revoked_at": null,
                "status": "active",
                "certificates": [{
                    "serial": issued.serial,
                    "issued_at": now,
                    "not_after": issued.not_after,
                    "revoked_at": null,
                }],
                "signing_keys": [kid],
            },
            "certificate_pem": issued.pem,
            "ca_pem": ca.cert_pem(),
        }))
    }

    /// The CA (in cluster mode the one sealed in the database, when it
    /// is), with the trust domain it was made for.
    async fn ca(&self) -> Result<CertificateAuthority> {
        if self.store.is_postgres() {
            let kek = crate::serve::load_kek(false, &self.state)?;
            if let Some((cert, key)) =
                crate::cluster_keys::sealed_ca(&self.store, kek.as_ref()).await?
            {
                let domain = CertificateAuthority::trust_domain_of(&cert)
                    .context("cannot tell the trust domain of the cluster's sealed CA")?;
                return Ok(CertificateAuthority::from_pem(&domain, &cert, &key)?);
            }
        }
        let (cert_path, key_path) = (self.state.ca_cert(), self.state.ca_key());
        if !cert_path.exists() || !key_path.exists() {
            bail!(
                "`{}` holds no CA yet: start `portcullis serve` once to create it",
                self.state.root().display()
            );
        }
        let cert = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read `{}`", cert_path.display()))?;
        let key = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read `{}`", key_path.display()))?;
        let domain = CertificateAuthority::trust_domain_of(&cert).with_context(|| {
            format!(
                "cannot tell the trust domain of `{}`: start the server and create the agent through it",
                cert_path.display()
            )
        })?;
        Ok(CertificateAuthority::from_pem(&domain, &cert, &key)?)
    }

    /// Appends the change to the audit log, as the admin API would. The
    /// server verifies and signs it at its next start.
    async fn audit(&self, action: &str, resource: &str, status: u16) -> Result<()> {
        let mut appender = self
            .store
            .audit_appender()
            .await
            .context("cannot open the audit log")?;
        let mut record = [AuditRecord {
            time_ms: now_s() * 1000,
            kind: RecordKind::Admin,
            request_id: portcullis_core::RequestId::new().to_string(),
            principal: Some("admin".into()),
            credential: Some(OFFLINE_CREDENTIAL.into()),
            action: action.to_string(),
            resource: Some(resource.to_string()),
            outcome: Outcome::Allow,
            status,
            ..AuditRecord::default()
        }];
        appender
            .append(&mut record)
            .await
            .context("cannot append to the audit log")?;
        Ok(())
    }

    /// Closes the database before the lock is released.
    pub async fn close(self) {
        self.store.close().await;
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}
