//! `portcullis serve --check`: everything `serve` checks before it binds a
//! port, without binding, starting or writing anything.
//!
//! The configuration, the policy directory (or the shipped defaults a first
//! start would write), the CA, the database schema, the KEK against the
//! vault, every route's secrets (present, and opened by the KEK) and the LLM
//! routes' API keys; on PostgreSQL also the key material sealed in the
//! database (opened by the KEK, and the same as the state directory's).
//! The messages are `serve`'s own: the same functions produce them. The
//! database is opened read-only (SQLite's read-only mode, PostgreSQL's
//! read-only sessions), so a check may run next to serving replicas (before
//! a reload) or before the first start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use portcullis_gateway::Gateway;
use portcullis_gateway::config::{Config, PolicySource};
use portcullis_policy::{DEFAULT_POLICIES, DEFAULT_SCHEMA, PolicyBundle, PolicySources};
use portcullis_store::Store;
use portcullis_vault::Vault;

use crate::state_dir::StateDir;

/// Runs the check; prints one `ok:` line per part, or fails with the first
/// problem, as `serve` would.
pub async fn run(config_path: Option<PathBuf>, state_dir: PathBuf) -> Result<()> {
    let config = crate::serve::with_listen_env(match &config_path {
        Some(path) => Config::load(path)?,
        None => Config::quickstart(),
    })?;
    let state = StateDir::new(state_dir);
    let what = config_path.as_ref().map_or_else(
        || "the quickstart".to_string(),
        |p| format!("`{}`", p.display()),
    );
    println!(
        "ok: config {what}: {} routes, gateway {}, admin {}",
        config.routes.len(),
        config.gateway_listen,
        config.admin_listen
    );

    let bundle = policies(&config, &state)?;
    println!("ok: policies: {} policies", bundle.policy_ids().len());

    let store_url = match crate::serve::store_url_env()? {
        Some(url) => Some(url),
        None => config.store_url.clone(),
    };
    let cluster = store_url
        .as_deref()
        .is_some_and(portcullis_store::is_postgres_url);
    match (state.ca_cert().exists(), state.ca_key().exists()) {
        (false, false) if cluster => {
            println!(
                "ok: CA: none in the state directory (sealed in the database, or made at first start)"
            )
        }
        (false, false) => println!("ok: CA: none yet; the first start creates it"),
        // In cluster mode a replica keeps only the certificate when the key
        // is sealed in the database (checked with the store, below).
        (true, false) if cluster => {
            println!("ok: CA certificate `{}`", state.ca_cert().display())
        }
        _ => {
            crate::serve::load_or_create_ca(&state, &config.trust_domain)?;
            println!("ok: CA `{}`", state.ca_cert().display());
        }
    }

    // The store as it is (read-only), or none before the first start.
    let store = match store_url.as_deref() {
        // A shared database: opened with read-only sessions and never
        // migrated (only `serve` migrates a PostgreSQL schema).
        Some(url) if portcullis_store::is_postgres_url(url) => {
            let store = Store::open_postgres_read_only(url)
                .await
                .context("cannot open the PostgreSQL store")?;
            println!("ok: database: PostgreSQL (cluster mode), schema is current");
            Some(store)
        }
        _ => {
            let db = match &store_url {
                Some(url) => PathBuf::from(
                    url.trim_start_matches("sqlite://")
                        .trim_start_matches("sqlite:"),
                ),
                None => state.database(),
            };
            if db.exists() {
                let store = open_read_only(&db).await?;
                println!("ok: database schema is current");
                Some(store)
            } else {
                println!("ok: database: none yet; the first start creates it");
                None
            }
        }
    };
    if let Some(store) = store.as_ref().filter(|s| s.is_postgres()) {
        let kek = crate::serve::load_kek(config_path.is_none(), &state)?;
        for line in crate::cluster_keys::check(&state, store, kek.as_ref()).await? {
            println!("ok: {line}");
        }
    }

    let vault = vault(config_path.is_none(), &state, store.as_ref()).await;
    let result = vault.and_then(|vault| {
        // serve's own check, with serve's messages.
        Gateway::check_vault_routes(&config, &bundle, vault.as_deref(), vault.is_some())?;
        if let Some(vault) = &vault {
            // Present is not enough: the KEK must open each one.
            for route in &config.routes {
                for secret in route.credential.iter().flat_map(|c| &c.secrets) {
                    vault.credential(secret).with_context(|| {
                        format!("route `{}`: secret `{secret}` cannot be opened", route.name)
                    })?;
                }
            }
        }
        Ok(vault.is_some())
    });
    if let Some(store) = store {
        store.close().await;
    }
    match result? {
        true => println!("ok: vault: the KEK opens it, and every route's secrets are there"),
        false => println!("ok: vault off (no KEK set), and no route needs it"),
    }

    if config.routes.iter().any(|r| r.llm.is_some()) {
        crate::serve::check_llm_routes(&config, &bundle)?;
        println!("ok: LLM routes: API keys readable, the schema knows models");
    }
    for (ok, line) in crate::serve::check_sandboxed_routes(&config, false)? {
        println!("{}: {line}", if ok { "ok" } else { "warning" });
    }
    portcullis_gateway::analytics::WebhookKey::load(&config.analytics)
        .context("cannot start behavioral analytics")?;
    println!("ok: {what} would start");
    Ok(())
}

async fn open_read_only(path: &Path) -> Result<Store> {
    Store::open_sqlite_read_only(path)
        .await
        .with_context(|| format!("cannot open the store `{}`", path.display()))
}

/// The policies `serve` would compile: the directory, or the shipped
/// defaults it would write into `<state-dir>/policies` on first start.
fn policies(config: &Config, state: &StateDir) -> Result<PolicyBundle> {
    let dir = match &config.policy {
        PolicySource::Dir(dir) => dir.clone(),
        PolicySource::StateDir => state.policies(),
    };
    let sources = if !dir.exists() && matches!(config.policy, PolicySource::StateDir) {
        let files = BTreeMap::from([
            (
                portcullis_policy::SCHEMA_FILE.to_string(),
                DEFAULT_SCHEMA.to_string(),
            ),
            ("quickstart.cedar".to_string(), DEFAULT_POLICIES.to_string()),
        ]);
        PolicySources::from_files(dir, &files)?
    } else {
        PolicySources::read_dir(&dir)?
    };
    Ok(PolicyBundle::compile(&sources)?)
}

/// The vault as `serve` would open it, without writing: `None` when no KEK
/// is set. A KEK with no vault in the store yet opens an empty one in a
/// scratch database, so routes naming secrets fail as they would at start.
async fn vault(
    quickstart: bool,
    state: &StateDir,
    store: Option<&Store>,
) -> Result<Option<std::sync::Arc<Vault>>> {
    // The quickstart generates its KEK at first start: nothing is stored
    // under it yet, so any KEK is as good for the check.
    let kek = if quickstart && !state.kek().exists() && no_kek_in_env() {
        Some(portcullis_vault::Kek::generate())
    } else {
        crate::serve::load_kek(quickstart, state)?
    };
    let Some(kek) = kek else {
        return Ok(None);
    };
    let tls = crate::serve::upstream_tls("")?;
    let ttl = portcullis_vault::DEFAULT_CACHE_TTL;
    if let Some(store) = store
        && store.kek_meta().await?.is_some()
    {
        let vault = Vault::open(store.clone(), kek, tls, ttl)
            .await
            .context("cannot open the vault")?;
        return Ok(Some(vault));
    }
    let scratch = Scratch::new()?;
    let store = Store::open_sqlite(&scratch.0.join("check.db")).await?;
    let vault = Vault::open(store, kek, tls, ttl)
        .await
        .context("cannot open the vault")?;
    Ok(Some(vault))
}

fn no_kek_in_env() -> bool {
    [crate::ENV_KEK_FILE, crate::ENV_KEK]
        .iter()
        .all(|v| std::env::var(v).map_or(true, |v| v.trim().is_empty()))
}

/// A private temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-check-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let state = StateDir::new(dir.clone());
        if dir.exists() {
            bail!("`{}` exists", dir.display());
        }
        state.create()?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
