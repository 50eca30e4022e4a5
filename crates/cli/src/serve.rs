//! `portcullis serve`: bootstraps the state directory and runs the data plane
//! and the admin API on their two listeners until SIGTERM or Ctrl-C.
//!
//! Everything that can be wrong with the configuration is checked before any
//! port is bound: an invalid config or policy set never half-starts.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use portcullis_admin::{AdminState, ClientCertificate, MfaKeys, RemoteAddr, ShuttingDown};
use portcullis_control::local_users::TotpSeal;
use portcullis_gateway::audit_export::Exporters;
use portcullis_gateway::audit_sink::AuditWriter;
use portcullis_gateway::audit_spool;
use portcullis_gateway::checkpointer::{Checkpointer, LogSigner};
use portcullis_gateway::config::{Config, PolicySource, Upstream};
use portcullis_gateway::listener::{self, ConnectionInfo};
use portcullis_gateway::metrics::Metrics;
use portcullis_gateway::policy_versions;
use portcullis_gateway::pseudonym::Pseudonymizer;
use portcullis_gateway::trace::Tracer;
use portcullis_gateway::{Gateway, GatewayParts};
use portcullis_identity::{CertificateAuthority, ClientCertChecker};
use portcullis_policy::{DEFAULT_POLICIES, DEFAULT_SCHEMA, PolicyBundle, PolicySources};
use portcullis_store::Store;
use portcullis_vault::{Kek, Vault};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::state_dir::{StateDir, write_public, write_secret};
use crate::state_lock::StateLock;

/// How often changed LLM day budgets are written to the store.
const BUDGET_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long shutdown waits for export sinks and the trace collector.
const EXPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the server.
pub async fn run(
    config_path: Option<PathBuf>,
    state_dir: PathBuf,
    accept_tampered_log_from: Option<u64>,
) -> Result<()> {
    let (config, config_text) = match &config_path {
        Some(path) => {
            let (config, text) = crate::reload::read_config(path)?;
            (config, Some(text))
        }
        None => (Config::quickstart(), None),
    };
    let state = StateDir::new(state_dir);
    state.create()?;
    // First, before anything in the directory is read or written: one
    // writer per state directory. Held until `run` returns.
    let state_lock = StateLock::acquire(state.root())?;
    tracing::debug!(file = %state_lock.path().display(), "state directory locked");
    // From here on SIGHUP is a reload request, never the default "terminate".
    let hangups = hangup_signals()?;
    harden_process();

    let (policy_dir, dir_sources) = read_policy_dir(&config, &state)?;
    let config = with_listen_env(config)?;

    let store = match &config.store_url {
        Some(url) => Store::open_url_with(url, config.store_lock_timeout).await,
        None => Store::open_sqlite_with(&state.database(), config.store_lock_timeout).await,
    }
    .context("cannot open the store")?;
    store
        .health()
        .set_max_staleness_ms(config.store_max_staleness.as_millis() as u64);
    // Key material: read (or made) here, before anything else uses the
    // store, so that a replica with keys other than its cluster's stops
    // before it changes anything.
    // In cluster mode with a KEK they are sealed in the database
    // (cluster_keys.rs): the first replica seals its own, the others open them.
    let kek = load_kek(config_path.is_none(), &state)?;
    let keys = crate::cluster_keys::load(
        &state,
        &store,
        kek.as_ref(),
        &config.trust_domain,
        !config.audit.pseudonymize.is_empty(),
    )
    .await?;
    // The newest sealed versions: a rotation records them at once, though
    // an online one signs with them only from its activation.
    let (token_newest, log_newest) = (*keys.token_newest(), *keys.log_newest());
    let ca = Arc::new(keys.ca);
    let token_seed = keys.token_seed;
    let log_key = ed25519_dalek::SigningKey::from_bytes(&keys.log_seed);
    if store.is_postgres() {
        let fingerprints = crate::cluster::ClusterKeys {
            ca: crate::cluster_keys::ca_fingerprint(ca.cert_pem()),
            token: crate::cluster_keys::token_fingerprint(&token_newest),
            audit: crate::cluster_keys::audit_fingerprint(&log_newest),
            kek: kek.as_ref().map(|k| k.fingerprint().to_string()),
        };
        crate::cluster::check_keys(&store, &fingerprints).await?;
    }
    // The store's active policy version decides (pushes and rollbacks outlive
    // restarts); the directory seeds version 1, or wins when it is watched.
    let start_policy = policy_versions::start_policy(&store, &dir_sources, config.policy_watch)
        .await
        .context("cannot load the policy version to start with")?;
    let bundle = start_policy.bundle.clone();
    let credentials = ensure_admin_token(&state, &store).await?;
    let upstream_tls = upstream_tls(ca.cert_pem())?;
    // Cluster mode with sealed keys: signing keys rotate online
    // (key_rotation.rs), opened with the same KEK.
    let rotation_kek = match &kek {
        Some(kek) if store.is_postgres() => Some(
            portcullis_vault::Kek::parse(kek.to_base64().as_bytes(), "the KEK")
                .context("cannot copy the KEK")?,
        ),
        _ => None,
    };
    let vault = match kek {
        Some(kek) => Some(
            Vault::open(
                store.clone(),
                kek,
                upstream_tls.clone(),
                portcullis_vault::DEFAULT_CACHE_TTL,
            )
            .await
            .context("cannot open the vault")?,
        ),
        None => {
            if store.kek_meta().await?.is_some() {
                tracing::warn!(
                    "the database holds a vault but neither {} nor {} is set: secrets, transit and capture are off",
                    crate::ENV_KEK_FILE,
                    crate::ENV_KEK
                );
            }
            None
        }
    };
    // Routes whose credential or capture cannot be served stop start-up here,
    // before any port is bound.
    Gateway::check_vault_routes(&config, &bundle, vault.as_deref(), vault.is_some())?;
    // Likewise routes of kind `llm`: their API keys must be readable and the
    // schema must know models.
    let has_llm_routes = config.routes.iter().any(|r| r.llm.is_some());
    if has_llm_routes {
        check_llm_routes(&config, &bundle)?;
    }
    // And `stdio:` routes whose sandbox needs what this kernel lacks.
    // Undoes what start-up changes in the kernel audit (its rules; the
    // audit itself when `kernel_audit = "enable"` turned it on) when `run`
    // returns, whichever way.
    #[cfg(target_os = "linux")]
    let _kernel_audit = portcullis_sandbox::kernel_audit::RestoreOnDrop;
    for (ok, line) in check_sandboxed_routes(&config, true)? {
        if ok {
            tracing::info!("{line}");
        } else {
            tracing::warn!("{line}");
        }
    }
    sweep_stale_sandboxes(&config);
    let capture_writer = vault.as_ref().map(|v| v.start_capture_writer());
    let webhook_key = portcullis_gateway::analytics::WebhookKey::load(&config.analytics)
        .context("cannot start behavioral analytics")?;

    // Bind both listeners before anything else runs, so a port conflict fails fast.
    let gateway_listener = TcpListener::bind(config.gateway_listen)
        .await
        .with_context(|| format!("cannot listen on {} (gateway)", config.gateway_listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin_listen))?;
    let gateway_addr = gateway_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let mut server_names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for name in &config.server_names {
        if !server_names.contains(name) {
            server_names.push(name.clone());
        }
    }
    for addr in [gateway_addr, admin_addr] {
        let ip = addr.ip().to_string();
        if !addr.ip().is_unspecified() && !server_names.contains(&ip) {
            server_names.push(ip);
        }
    }
    // A fresh server certificate every start: no server key on disk, no expiry to manage.
    let (server_cert, server_key) = ca
        .issue_server(&server_names)
        .context("cannot issue the server certificate")?;
    let checker = ClientCertChecker::new(ca.cert_pem(), &config.trust_domain)?;
    let gateway_tls =
        listener::tls_config(&server_cert, &server_key, Some(checker.tls_verifier()))?;
    // The admin listener asks for a client certificate but does not require
    // one: a bearer token still works, and a certificate authenticates only
    // when it is exactly one an admin certificate credential was issued
    // (`require_admin` looks up its fingerprint). The handshake proves the
    // client holds the certificate's key.
    let admin_tls = listener::tls_config(&server_cert, &server_key, Some(checker.tls_verifier()))?;

    let demo_upstream = if config
        .routes
        .iter()
        .any(|r| r.upstream == Upstream::BuiltinDemo)
    {
        Some(portcullis_gateway::demo_upstream::start().await?)
    } else {
        None
    };

    let metrics = Arc::new(Metrics::new());
    let signer = LogSigner::new(log_key, &config.audit.origin)?;
    write_public(
        &state.audit_verifier_key(),
        format!("{}\n", signer.verifier()).as_bytes(),
    )?;
    // Checkpoints signed before a rotation of the audit key verify with the
    // key they were signed with: trusted from the sealed versions or the
    // state directory, never from the database's rows. `audit verify` on
    // this host reads them from `audit-retired.pub`.
    let retired = keys
        .log_previous
        .iter()
        .map(|seed| {
            let key = ed25519_dalek::SigningKey::from_bytes(seed);
            portcullis_audit::note::VerifierKey::new(&config.audit.origin, key.verifying_key())
                .map_err(|e| anyhow::anyhow!("a retired audit key: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if retired.is_empty() {
        let _ = std::fs::remove_file(state.audit_retired_verifier_keys());
    } else {
        let lines: String = retired.iter().map(|k| format!("{k}\n")).collect();
        write_public(&state.audit_retired_verifier_keys(), lines.as_bytes())?;
    }
    store.trust_retired_audit_keys(retired);
    // Only on an explicit, audited request: set a tampered log aside and begin
    // a new segment linked to the accepted prefix.
    let new_segment = match accept_tampered_log_from {
        Some(accepted) => Some(
            accept_tampered_log(
                &store,
                &signer,
                accepted,
                config.audit.checkpoint_file.as_deref(),
            )
            .await?,
        ),
        None => None,
    };
    // Intents whose record is already in the log need no recovery.
    store
        .forget_recorded_intents()
        .await
        .context("cannot read the audit intent journal")?;
    let appender = store
        .audit_appender()
        .await
        .context("cannot open the audit log")?;
    let pseudonymizer = if config.audit.pseudonymize.is_empty() {
        None
    } else {
        Some(Pseudonymizer::new(
            &keys
                .pseudonym_seed
                .context("the audit pseudonym key was not loaded")?,
            config.audit.pseudonymize.clone(),
            config.audit.personal_data_retention,
        ))
    };
    // Held: nothing is appended until the stored log has been verified
    // against its signed checkpoints (below).
    let (sink, writer) = AuditWriter::start_held(
        appender,
        config.audit.fail_closed_after,
        pseudonymizer,
        metrics.clone(),
    );
    if store.is_postgres() {
        // Cluster mode: a database outage spills to this replica's disk
        // rather than holding records in memory only (audit_sink.rs).
        sink.spill_outages_to(state.root().to_path_buf());
    }
    let log_size = sink.head().size;
    // The new segment's first record: the link to the one set aside.
    let linked = u64::from(new_segment.is_some());
    if let Some(record) = new_segment {
        sink.submit(record);
    }
    // Then what the last shutdown spilled, before anything newer.
    replay_spool(&state, &store, &sink, log_size + linked).await?;
    // Then the calls a crash left forwarded but unrecorded (audit_intent.rs).
    // In cluster mode this replica's lease is taken first: the intents it
    // journals from now on are its own, and no survivor takes them over.
    store
        .register_replica()
        .await
        .context("cannot take this replica's lease in the shared store")?;
    let spooled = audit_spool::read(state.root())
        .context("cannot read the audit spool")?
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    portcullis_gateway::audit_intent::recover(&store, &sink, &spooled)
        .await
        .context("cannot recover the audit intent journal")?;
    if let Some(record) = start_policy.stored {
        sink.submit(record);
    }
    // Personal data past its retention is deleted every minute.
    {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as i64;
                match store.purge_personal(now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(values = n, "deleted personal data past its retention"),
                    Err(e) => tracing::error!(error = %e, "cannot delete expired personal data"),
                }
            }
        });
    }
    if let Some(retention) = config.audit.retention {
        let dir = config
            .audit
            .archive_dir
            .clone()
            .unwrap_or_else(|| state.root().join("audit-archive"));
        tokio::spawn(portcullis_gateway::retention::run(
            store.clone(),
            dir,
            retention,
        ));
    }
    let checkpointer = Arc::new(
        Checkpointer::new(
            store.clone(),
            sink.clone(),
            signer,
            &config.audit,
            upstream_tls.clone(),
        )
        .await?,
    );
    // Refuse to extend a log that no longer matches what was signed: the
    // next checkpoint would otherwise sign over the tampering. The server
    // still starts, halted (no appending, no signing, not ready, data plane
    // 503 `audit_unavailable`), so the operator can see why.
    match checkpointer.check_latest().await {
        Ok(()) => {}
        Err(e @ portcullis_gateway::checkpointer::CheckpointerError::Mismatch { .. }) => {
            checkpointer.halt(&e.to_string()).await;
        }
        Err(e) => return Err(e).context("cannot check the audit log against its last checkpoint"),
    }
    // The cheap check above covers the stored hashes; a full recomputation of
    // every record runs in the background so a large log does not delay start.
    // Until it passes, records queue and nothing is appended. It runs again
    // every `[audit] verify_interval_ms`; any failure halts the log.
    {
        let store = store.clone();
        let checkpointer = checkpointer.clone();
        let sink = sink.clone();
        let interval = config.audit.verify_interval;
        let checkpoint_file = config.audit.checkpoint_file.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let started = std::time::Instant::now();
                let signer = checkpointer.signer();
                // The checkpoints exported to the file count too: deleting the
                // stored ones does not make a rewritten log "unsigned".
                let exported = checkpoint_file
                    .as_deref()
                    .and_then(|path| std::fs::read_to_string(path).ok())
                    .map(|text| portcullis_audit::checkpoint::split_notes(&text))
                    .unwrap_or_default();
                match store
                    .verify_audit_log(signer.verifier(), signer.origin(), &exported)
                    .await
                {
                    Ok(summary) => {
                        tracing::info!(
                            records = summary.size,
                            checkpoints = summary.checkpoints,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "audit log verified"
                        );
                        sink.open();
                    }
                    Err(portcullis_store::AuditVerifyFailure::Unsigned(records)) => {
                        if first {
                            tracing::warn!(
                                records,
                                "no checkpoint covers the audit log yet; the next one will"
                            );
                        }
                        sink.open();
                    }
                    Err(e) => {
                        // Tampering, a bad checkpoint, or a log that cannot be
                        // read back: fail closed.
                        checkpointer
                            .halt(&format!("AUDIT LOG VERIFICATION FAILED: {e}"))
                            .await;
                        return;
                    }
                }
                first = false;
                let Some(interval) = interval else { return };
                tokio::time::sleep(interval).await;
                // Cluster mode: after the check at start, the elected signer
                // verifies the shared log for every replica.
                while !checkpointer.is_elected() {
                    tokio::time::sleep(interval.min(crate::cluster::ELECTION_INTERVAL)).await;
                }
                if sink.halted().is_some() {
                    return;
                }
            }
        });
    }
    let (checkpoint_stop, checkpoint_stopped) = watch::channel(false);
    // Cluster mode: one replica at a time signs, elected by an advisory
    // lock it holds until the final checkpoint is signed.
    let election = store.is_postgres().then(|| {
        crate::cluster::spawn_election(
            store.clone(),
            checkpointer.clone(),
            metrics.clone(),
            checkpoint_stopped.clone(),
        )
    });
    let checkpoint_task = checkpointer
        .clone()
        .spawn(config.audit.checkpoint_interval, checkpoint_stopped);
    // Access tokens: signed with a key kept in the state directory (so tokens
    // survive a restart), issued under the data plane's public URL.
    let token_key = portcullis_identity::Ed25519Key::from_seed(&token_seed);
    let token_issuer = config
        .token_issuer
        .clone()
        .unwrap_or_else(|| format!("https://{gateway_addr}"));
    let oidc = Arc::new(
        portcullis_gateway::oidc::OidcProviders::new(&config.oidc, upstream_tls.clone()).await,
    );
    // Humans log in at the issuers with a `client_id`: on the authorization
    // endpoint's page and on the console, through one relying party.
    let login = portcullis_control::oidc_login::RelyingParty::new(
        &config.oidc,
        Arc::clone(&oidc),
        upstream_tls.clone(),
        store.clone(),
    )
    .map_err(|e| anyhow::anyhow!("invalid `[[identity.oidc]]` login settings: {e}"))?
    .map(Arc::new);
    let mut tokens = portcullis_gateway::tokens::TokenService::new(
        token_issuer_with_previous(token_key, &token_issuer, &keys.token_previous)?,
        config.token_ttl,
        &config.trust_domain,
        Arc::clone(&oidc),
        config.max_delegation_depth,
        match &config.posture_attestor {
            Some(attestor) => Some(
                portcullis_gateway::oidc::OidcProviders::new(
                    std::slice::from_ref(attestor),
                    upstream_tls.clone(),
                )
                .await,
            ),
            None => None,
        },
    );
    tokens.require_dpop_nonce = config.require_dpop_nonce;
    if store.is_postgres() {
        // Cluster mode: a `jti` used on any replica is refused on all.
        tokens.shared_single_use = Some(store.clone());
    }
    // Local users' TOTP secrets, for admin MFA and the authorization
    // endpoint's login page alike.
    let totp_seal = Arc::new(TotpSeal::new(&keys.mfa_seed));
    tokens.local_users = Some(totp_seal.clone());
    tokens.login = login.clone();
    let (tracer, trace_exporter) = match &config.telemetry {
        Some(telemetry) => {
            let (tracer, exporter) =
                Tracer::start(telemetry, metrics.clone(), upstream_tls.clone());
            (Some(tracer), Some(exporter))
        }
        None => (None, None),
    };
    // SIEM export reads only durable records, woken by the writer's tree head.
    let durable_head = sink.watch_head();
    let export_tls = upstream_tls.clone();
    let export_metrics = metrics.clone();
    // Approval tickets, and the chat-ops webhook that hears of each new one.
    let (ticket_tx, approvals_webhook) = match &config.approvals_webhook {
        Some(url) => {
            let (tx, rx) = tokio::sync::mpsc::channel(portcullis_gateway::approvals::WEBHOOK_QUEUE);
            let poster = portcullis_gateway::otlp::Poster::new(upstream_tls.clone());
            let task = tokio::spawn(portcullis_gateway::approvals::webhook(
                rx,
                url.clone(),
                poster,
            ));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let approvals = portcullis_gateway::approvals::Approvals::load(store.clone(), ticket_tx)
        .await
        .context("cannot load approval tickets")?;
    // Behavioral analytics: the saved models and quarantines are loaded before
    // the first request, so a quarantine survives a restart.
    let analytics = if config.analytics.enabled {
        let (analytics, task) = portcullis_gateway::analytics::Analytics::start(
            config.analytics.clone(),
            webhook_key,
            store.clone(),
            sink.clone(),
            &metrics,
            upstream_tls.clone(),
        )
        .await
        .context("cannot start behavioral analytics")?;
        Some((analytics, task))
    } else {
        None
    };
    let gateway = Gateway::new(GatewayParts {
        approvals,
        analytics: analytics.as_ref().map(|(a, _)| a.clone()),
        tokens,
        config: config.clone(),
        bundle: bundle.clone(),
        policy_version: start_policy.version,
        shadow: start_policy.shadow.clone(),
        checker,
        upstream_tls,
        store: store.clone(),
        sink: sink.clone(),
        metrics,
        demo_upstream,
        vault: vault.clone(),
        captures: capture_writer.as_ref().map(|(sink, _)| sink.clone()),
        tracer,
    })
    .await?;
    let maintenance = vault
        .clone()
        .map(|v| tokio::spawn(maintain(v, gateway.metrics().clone())));

    let admin_credentials = Arc::new(credentials);
    let admin = portcullis_admin::router(AdminState {
        store: store.clone(),
        gateway: gateway.clone(),
        ca: ca.clone(),
        credentials: admin_credentials.clone(),
        step_up: Arc::new(portcullis_admin::StepUp::new(
            store.clone(),
            config.admin_step_up,
        )),
        sink: sink.clone(),
        vault: vault.clone(),
        checkpointer: checkpointer.clone(),
        mfa: Arc::new(MfaKeys::new(totp_seal, config.admin_require_mfa)),
        model_keys: Arc::new(config.model_trusted_keys.clone()),
        console_login: login.map(|party| {
            Arc::new(portcullis_admin::ConsoleLogin {
                party,
                roles: config.admin_oidc_roles.clone(),
                step_up: config.admin_oidc_step_up,
            })
        }),
        console_origins: Arc::new(console_origins(
            config.admin_console_origins.as_deref(),
            admin_addr,
        )),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Day budgets are written in the background, never on the request path
    // (also without LLM routes: a reload may add one).
    let budget_saver = {
        let gateway = gateway.clone();
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(BUDGET_SAVE_INTERVAL) => {}
                    _ = stop.changed() => break,
                }
                if let Err(e) = gateway.save_budgets().await {
                    tracing::warn!(error = %e, "cannot save LLM budget counters; retrying");
                }
            }
        })
    };
    let read_probe = crate::store_probe::spawn(
        store.clone(),
        gateway.metrics().readiness.clone(),
        shutdown_rx.clone(),
    );
    let cluster_resync = store.is_postgres().then(|| {
        tracing::info!("cluster mode: the store is PostgreSQL, shared with other replicas");
        // The lease renews in a task of its own: nothing the takeover waits
        // on can delay it (cluster.rs).
        let (lease, held) = crate::cluster::spawn_lease_renewal(
            store.clone(),
            gateway.metrics().readiness.clone(),
            shutdown_rx.clone(),
        );
        (
            crate::cluster::spawn_resync(
                gateway.clone(),
                admin_credentials.clone(),
                store.clone(),
                shutdown_rx.clone(),
            ),
            crate::cluster::spawn_heartbeat(
                gateway.clone(),
                admin_credentials.clone(),
                store.clone(),
                shutdown_rx.clone(),
            ),
            crate::cluster::spawn_budget_sync(gateway.clone(), shutdown_rx.clone()),
            lease,
            crate::cluster::spawn_intent_takeover(
                store.clone(),
                sink.clone(),
                held,
                shutdown_rx.clone(),
            ),
        )
    });
    let key_rotation = rotation_kek.map(|kek| {
        crate::key_rotation::spawn(
            crate::key_rotation::KeyRotation {
                store: store.clone(),
                kek,
                gateway: gateway.clone(),
                checkpointer: checkpointer.clone(),
                state: state.clone(),
                origin: config.audit.origin.clone(),
            },
            shutdown_rx.clone(),
        )
    });
    let policy_watch = config.policy_watch.then(|| {
        tokio::spawn(policy_versions::watch_dir(
            gateway.clone(),
            sink.clone(),
            policy_dir.clone(),
            policy_versions::WATCH_INTERVAL,
            shutdown_rx.clone(),
        ))
    });
    let reloads = spawn_reloads(
        hangups,
        crate::reload::Reloader {
            path: config_path.clone(),
            config: config.clone(),
            text: config_text.unwrap_or_default(),
            policy_dir: policy_dir.clone(),
            gateway: gateway.clone(),
            sink: sink.clone(),
        },
        shutdown_rx.clone(),
    );
    drop(sink);
    let data_plane = tokio::spawn(gateway.clone().serve(
        gateway_listener,
        gateway_tls,
        config.connections.clone(),
        shutdown_rx.clone(),
    ));
    let control_plane = tokio::spawn(listener::serve(
        admin_listener,
        admin_tls,
        config.connections.clone(),
        gateway.metrics().connections("admin"),
        {
            // Long-lived answers (the console's live stream) end when
            // shutdown begins, so they never hold up the drain.
            let stopping = ShuttingDown(shutdown_rx.clone());
            move |info: ConnectionInfo| {
                let admin = admin.clone();
                let remote = RemoteAddr(info.remote);
                let stopping = stopping.clone();
                let certificate = info
                    .peer_certificates
                    .as_ref()
                    .and_then(|chain| chain.first())
                    .map(|der| ClientCertificate(portcullis_admin::hash_bytes(der.as_ref())));
                move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(remote);
                    req.extensions_mut().insert(stopping.clone());
                    if let Some(certificate) = &certificate {
                        req.extensions_mut().insert(certificate.clone());
                    }
                    admin.clone().oneshot(req)
                }
            }
        },
        shutdown_rx,
    ));

    write_public(
        &state.admin_url(),
        format!("https://{admin_addr}\n").as_bytes(),
    )?;
    write_public(
        &state.gateway_url(),
        format!("https://{gateway_addr}\n").as_bytes(),
    )?;
    tracing::info!(
        gateway = %format!("https://{gateway_addr}"),
        admin = %format!("https://{admin_addr}"),
        state_dir = %state.root().display(),
        policies = bundle.policy_ids().len(),
        policy_version = start_policy.version,
        "portcullis is up"
    );
    // A stable line on stdout that scripts and tests can wait for.
    println!("portcullis: gateway https://{gateway_addr} admin https://{admin_addr}");
    // After that line, so a `jsonl` sink on stdout never comes before it.
    let exporters = Exporters::start(
        &config.audit.export,
        store.clone(),
        durable_head,
        &export_metrics,
        export_tls,
    );

    wait_for_signal().await;
    // Everything below ends by `deadline`, however stalled the store is:
    // the listeners drain within most of the drain timeout, the audit writer
    // gets the rest, and what it cannot commit by then is spilled.
    let drain = config.connections.drain_timeout;
    let deadline = tokio::time::Instant::now() + drain;
    let writer_from = tokio::time::Instant::now() + config.connections.listener_drain();
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    let _ = shutdown_tx.send(true);
    let orderly = async {
        let _ = data_plane.await;
        let _ = control_plane.await;
        let _ = budget_saver.await;
        let _ = read_probe.await;
        if let Some((resync, heartbeat, budgets, lease, takeover)) = cluster_resync {
            let _ = resync.await;
            let _ = heartbeat.await;
            let _ = budgets.await;
            let _ = lease.await;
            let _ = takeover.await;
            // The last counts, reported before the budgets are saved.
            if let Err(e) = gateway.sync_budgets().await {
                tracing::warn!(error = %e, "cannot report LLM budget counts at shutdown");
            }
        }
        if let Err(e) = gateway.save_budgets().await {
            tracing::warn!(error = %e, "cannot save LLM budget counters at shutdown");
        }
        if let Some(task) = policy_watch {
            let _ = task.await;
        }
        if let Some(task) = key_rotation {
            let _ = task.await;
        }
        let _ = reloads.await;
        if let Some(task) = approvals_webhook {
            task.abort();
        }
        drop(gateway);
        if let Some(task) = maintenance {
            task.abort();
        }
        // Captures of drained requests are written before the store closes.
        if let Some((capture_sink, task)) = capture_writer {
            drop(capture_sink);
            drop(vault);
            // Bounded: a capture still held by a stuck connection must not stop the exit.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
        // Before the writer: analytics' last alerts go into the log.
        if let Some((_, task)) = analytics {
            task.finish().await;
        }
    };
    if tokio::time::timeout_at(writer_from, orderly).await.is_err() {
        tracing::warn!("drain timeout: shutdown steps before the audit writer cut short");
    }
    // The writer commits what is queued until just before the deadline; the
    // rest goes to the spool, replayed at the next start.
    let spill_at = deadline - drain / 10;
    let left = writer.finish_by(spill_at).await;
    let spilled = spill(state.root(), &left)?;
    // After the writer: the last checkpoint covers every record written.
    let _ = checkpoint_stop.send(true);
    if !spilled {
        let _ = tokio::time::timeout_at(deadline, checkpoint_task).await;
    }
    if let Some(task) = election {
        let _ = tokio::time::timeout_at(deadline, task).await;
    }
    // Exports and spans get a bounded time to go out; what does not is
    // behind the persisted cursor (exports) or dropped and counted (spans).
    let grace = EXPORT_GRACE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
    exporters.finish(grace).await;
    if let Some(exporter) = trace_exporter {
        exporter.finish(grace).await;
    }
    let _ = tokio::time::timeout_at(deadline, store.close()).await;
    // The kernel audit as start-up found it (the guard does the same when
    // `run` fails; here it is said).
    #[cfg(target_os = "linux")]
    {
        let (removed, off) = portcullis_sandbox::kernel_audit::restore();
        if removed > 0 || off {
            tracing::info!(
                rules_removed = removed,
                audit_turned_off = off,
                "kernel audit restored as start-up found it"
            );
        }
    }
    // Last: the next `serve` may start only once this one is done with the directory.
    drop(state_lock);
    tracing::info!("stopped");
    Ok(())
}

/// Submits the records spilled at the last shutdown; the spool is removed
/// once the log holds them (`submitted_before` counts what went first).
/// The console's origins, for passkeys: `[admin] console_origins`, else
/// the admin listener's own address (with `localhost` for a loopback one,
/// since browsers refuse WebAuthn at an IP address); none when it listens
/// on every address (which name the browser uses is not known).
fn console_origins(configured: Option<&[String]>, admin: std::net::SocketAddr) -> Vec<String> {
    if let Some(origins) = configured {
        return origins.to_vec();
    }
    if admin.ip().is_unspecified() {
        return Vec::new();
    }
    let mut origins = vec![format!("https://{admin}")];
    if admin.ip().is_loopback() {
        origins.push(format!("https://localhost:{}", admin.port()));
    }
    origins
}

async fn replay_spool(
    state: &StateDir,
    store: &Store,
    sink: &portcullis_gateway::audit_sink::AuditSink,
    submitted_before: u64,
) -> Result<()> {
    if !state.root().join(audit_spool::SPOOL_FILE).exists() {
        return Ok(());
    }
    let replayed = audit_spool::replay(state.root(), store, sink)
        .await
        .context("cannot replay the audit spool")?;
    tokio::spawn(audit_spool::remove_when_durable(
        state.root().to_path_buf(),
        sink.clone(),
        submitted_before + replayed,
    ));
    Ok(())
}

/// Writes the records the audit writer could not commit by the deadline to
/// the spool; true when there were any.
fn spill(state_dir: &std::path::Path, left: &[portcullis_audit::AuditRecord]) -> Result<bool> {
    if left.is_empty() {
        return Ok(false);
    }
    audit_spool::spill(state_dir, left).with_context(|| {
        format!(
            "cannot spill {} audit records at shutdown; they are lost",
            left.len()
        )
    })?;
    tracing::warn!(
        records = left.len(),
        file = %state_dir.join(audit_spool::SPOOL_FILE).display(),
        "audit records not committed within the drain timeout were spilled; the next start appends them"
    );
    Ok(true)
}

/// `PORTCULLIS_GATEWAY_LISTEN` and `PORTCULLIS_ADMIN_LISTEN` override the
/// listen addresses of the config file or the quickstart (a container
/// listens on `0.0.0.0`; tests run the quickstart on port 0).
pub(crate) fn with_listen_env(mut config: Config) -> Result<Config> {
    for (var, addr) in [
        (crate::ENV_GATEWAY_LISTEN, &mut config.gateway_listen),
        (crate::ENV_ADMIN_LISTEN, &mut config.admin_listen),
    ] {
        if let Some(value) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
            *addr = value
                .trim()
                .parse()
                .with_context(|| format!("`{var}` is not an address (ip:port): `{value}`"))?;
        }
    }
    if let Some(url) = store_url_env()? {
        config.store_url = Some(url);
    }
    Ok(config)
}

/// `PORTCULLIS_STORE_URL`, checked like `[store] url`, when set.
pub(crate) fn store_url_env() -> Result<Option<String>> {
    let Some(url) = std::env::var(crate::ENV_STORE_URL)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    portcullis_gateway::config::check_store_url(&url)
        .map_err(|e| anyhow::anyhow!("`{}`: {e}", crate::ENV_STORE_URL))?;
    Ok(Some(url))
}

/// Routes of kind `llm`: their API keys must be readable and the schema
/// must know models.
pub(crate) fn check_llm_routes(config: &Config, bundle: &PolicyBundle) -> Result<()> {
    portcullis_gateway::llm::LlmRoutes::load(config)?;
    if !bundle.supports_models() {
        bail!(
            "routes of kind `llm` need the `Model` entity type and the `complete` and `embed` actions in the policy schema; copy them from the shipped schema (`portcullis policy schema` prints it)"
        );
    }
    Ok(())
}

/// `stdio:` routes: runs `portcullis sandbox-exec --probe` once and refuses
/// a route whose sandbox profile needs a mechanism the kernel lacks and does
/// not allow to be missing. Returns one line per route (profile, loosenings)
/// and what is known of the host, each with whether it is as it should be.
/// `serving`: the gateway starts, so the kernel audit reader starts too.
pub(crate) fn check_sandboxed_routes(
    config: &Config,
    serving: bool,
) -> Result<Vec<(bool, String)>> {
    let sandboxed: Vec<_> = config
        .routes
        .iter()
        .filter_map(|r| r.sandbox.as_ref().map(|p| (r, p)))
        .collect();
    if sandboxed.is_empty() {
        return Ok(Vec::new());
    }
    let support = probe_sandbox()?;
    let mut lines = Vec::new();
    for (route, profile) in sandboxed {
        profile
            .check_support(&support)
            .with_context(|| format!("route `{}` cannot start", route.name))?;
        lines.push((
            true,
            format!("sandbox of route `{}`: {}", route.name, profile.summary()),
        ));
    }
    #[cfg(target_os = "linux")]
    lines.push((
        true,
        format!(
            "memory limit of sandboxed servers: {}",
            portcullis_sandbox::memory::memory_control().describe()
        ),
    ));
    lines.push((
        true,
        format!(
            "sandbox mechanisms of this kernel: landlock ABI {}, seccomp {}, user namespaces {}",
            support.landlock_abi,
            if support.seccomp { "yes" } else { "no" },
            if support.user_namespace { "yes" } else { "no" },
        ),
    ));
    #[cfg(target_os = "linux")]
    lines.push(sandbox_violations(
        config.audit.kernel_audit,
        &support,
        &config
            .routes
            .iter()
            .filter_map(|r| r.sandbox.as_ref().filter(|p| p.enabled).map(|p| p.user))
            .collect::<Vec<_>>(),
        serving,
    ));
    #[cfg(not(target_os = "linux"))]
    let _ = serving;
    Ok(lines)
}

/// Whether each access a sandbox refuses becomes an audit record
/// (`portcullis_gateway::mcp::violations`), and if not, why; when
/// `serving`, turns the kernel audit on (`kernel_audit = "enable"`), starts
/// the reader and, under root, adds the kernel audit rules of the sandbox
/// `users` (refusals by file modes, UDP sends, the process limit). What it
/// changes in the kernel audit is undone when `serve` stops
/// (`kernel_audit::RestoreOnDrop`).
#[cfg(target_os = "linux")]
fn sandbox_violations(
    mode: portcullis_gateway::config::KernelAudit,
    support: &portcullis_sandbox::Support,
    users: &[u32],
    serving: bool,
) -> (bool, String) {
    use portcullis_gateway::config::KernelAudit;
    use portcullis_sandbox::kernel_audit::{self, AuditState};
    const NOT: &str = "sandbox violations: NOT audited one by one (only seccomp, CPU, memory and wall-clock kills and egress refusals are; docs/sandbox.md)";
    if mode == KernelAudit::Off {
        return (false, format!("{NOT}: `[audit] kernel_audit = \"off\"`"));
    }
    let mut state = kernel_audit::state();
    let mut enabled_here = "";
    if mode == KernelAudit::Enable && state != AuditState::Enabled {
        if !serving {
            enabled_here = "; `serve` turns the kernel audit on (`kernel_audit = \"enable\"`)";
            state = AuditState::Enabled;
        } else {
            match kernel_audit::enable() {
                Ok(()) => {
                    enabled_here = "; the kernel audit was off and was turned on (`kernel_audit = \"enable\"`, host-wide)";
                    state = AuditState::Enabled;
                }
                Err(e) => return (false, format!("{NOT}: {e}")),
            }
        }
    }
    let readable = if serving {
        portcullis_gateway::mcp::violations::start()
    } else {
        kernel_audit::Reader::open().map(|_| ())
    };
    if let Err(e) = readable {
        return (false, format!("{NOT}: {e}"));
    }
    let landlock = if support.landlock_abi >= 7 {
        "files and TCP ports Landlock refused, system calls seccomp killed for"
    } else {
        "system calls seccomp killed for; not files and TCP ports, as Landlock before ABI 7 logs no denial"
    };
    // Refusals neither Landlock nor seccomp logs: rules of the gateway's,
    // under root only (its servers then run as the sandbox users).
    let rules = if !rustix::process::geteuid().is_root() {
        Err(kernel_audit::AuditError::NotRoot.to_string())
    } else if !serving {
        Ok("`serve` adds kernel audit rules for")
    } else {
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        users
            .iter()
            .try_for_each(|u| kernel_audit::cover_user(*u))
            .map(|()| "kernel audit rules of the gateway's for")
            .map_err(|e| e.to_string())
    };
    let which = match &rules {
        Ok(how) => format!(
            "{landlock}; {how} files the server's user may not open, UDP sends with no route out and forks past the process limit"
        ),
        Err(e) => format!(
            "{landlock}; NOT files the server's user may not open, UDP sends and forks past the process limit: {e}"
        ),
    };
    // Without the rules, refusals by file modes (under root: the state
    // directory, before Landlock is asked), UDP sends and forks past the
    // process limit go unaudited: said as a warning.
    let complete = support.landlock_abi >= 7 && rules.is_ok();
    match state {
        AuditState::Enabled => (
            complete,
            format!(
                "sandbox violations: audited one by one from the kernel audit ({which}){enabled_here}"
            ),
        ),
        AuditState::Disabled => (
            false,
            format!(
                "{NOT}: the kernel audit is off (turn it on with `auditctl -e 1` or `auditd`, or set `[audit] kernel_audit = \"enable\"`)"
            ),
        ),
        AuditState::Unknown => (
            false,
            format!(
                "sandbox violations: audited one by one ({which}) only while the kernel audit is on, which this process cannot tell without CAP_AUDIT_CONTROL (`auditctl -s`)"
            ),
        ),
    }
}

/// Removes what sandboxed servers of a gateway killed without warning left
/// behind (`portcullis_sandbox::sweep`).
fn sweep_stale_sandboxes(config: &Config) {
    #[cfg(target_os = "linux")]
    {
        let users: Vec<u32> = config
            .routes
            .iter()
            .filter_map(|r| r.sandbox.as_ref().map(|p| p.user))
            .collect();
        if users.is_empty() {
            return;
        }
        let (dirs, cgroups) = portcullis_sandbox::sweep::at_start(&users);
        if dirs + cgroups > 0 {
            tracing::info!(
                work_dirs = dirs,
                cgroups,
                "removed what the sandboxed servers of an earlier run left behind"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = config;
}

fn probe_sandbox() -> Result<portcullis_sandbox::Support> {
    let exe = std::env::current_exe().context("cannot find the portcullis executable")?;
    let out = std::process::Command::new(exe)
        .args(["sandbox-exec", "--probe"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .context("cannot probe the kernel's sandbox mechanisms")?;
    // A probe that died (seccomp refused) reports nothing: nothing is offered.
    Ok(serde_json::from_slice(&out.stdout).unwrap_or_default())
}

/// How often the vault destroys versions past their grace period, rotates
/// overdue secrets that have a hook, and shreds expired captures.
const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

async fn maintain(vault: Arc<Vault>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tick.tick().await;
        match vault.maintain().await {
            Ok(report) => {
                for (name, version) in &report.destroyed {
                    tracing::info!(secret = %name, version, "grace period over: secret version destroyed");
                }
                for name in &report.rotated {
                    tracing::info!(secret = %name, "overdue secret rotated by its hook");
                }
                metrics.secrets_overdue.set(report.overdue as i64);
                if report.shredded > 0 {
                    tracing::info!(
                        captures = report.shredded,
                        "expired payload captures shredded"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "vault maintenance failed"),
        }
    }
}

/// The key-encryption key: `PORTCULLIS_KEK_FILE`, else `PORTCULLIS_KEK`, else
/// (quickstart only) `<state-dir>/vault.kek`, generated on first start.
///
/// The quickstart file is acceptable only there: it keeps the KEK out of the
/// database (a copied or backed-up `portcullis.db` does not decrypt), but
/// anyone who can read the state directory can read both. Production
/// deployments put the KEK elsewhere (a secrets mount, a separate volume, an
/// environment injected by the supervisor).
pub(crate) fn load_kek(quickstart: bool, state: &StateDir) -> Result<Option<Kek>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match (var(crate::ENV_KEK_FILE), var(crate::ENV_KEK)) {
        (Some(_), Some(_)) => bail!(
            "set only one of {} and {}",
            crate::ENV_KEK_FILE,
            crate::ENV_KEK
        ),
        (Some(path), None) => Ok(Some(Kek::read_file(std::path::Path::new(&path))?)),
        (None, Some(b64)) => Ok(Some(Kek::parse(
            b64.as_bytes(),
            &format!("`{}`", crate::ENV_KEK),
        )?)),
        (None, None) if quickstart => {
            let path = state.kek();
            if path.exists() {
                return Ok(Some(Kek::read_file(&path)?));
            }
            let kek = Kek::generate();
            write_secret(&path, format!("{}\n", kek.to_base64().as_str()).as_bytes())?;
            tracing::warn!(
                file = %path.display(),
                "QUICKSTART ONLY: generated the vault's key-encryption key next to the database. \
                 Anyone who can read the state directory can decrypt every secret. \
                 In production set {} (or {}) to a key kept elsewhere.",
                crate::ENV_KEK_FILE,
                crate::ENV_KEK
            );
            Ok(Some(kek))
        }
        (None, None) => {
            tracing::info!(
                "vault off: neither {} nor {} is set",
                crate::ENV_KEK_FILE,
                crate::ENV_KEK
            );
            Ok(None)
        }
    }
}

/// Keeps secrets out of core dumps (and out of same-user ptrace) where the
/// platform allows it without unsafe code.
fn harden_process() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, Rlimit, setrlimit};
        if let Err(e) = setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        ) {
            tracing::warn!(error = %e, "cannot disable core dumps");
        }
        if let Err(e) =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        {
            tracing::warn!(error = %e, "cannot mark the process non-dumpable");
        }
    }
}

/// SIGHUP, caught (on Unix).
#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

fn hangup_signals() -> Result<Hangups> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")
    }
    #[cfg(not(unix))]
    Ok(())
}

/// Runs a reload per SIGHUP until shutdown; one at a time, so reloads never
/// interleave.
fn spawn_reloads(
    hangups: Hangups,
    reloader: crate::reload::Reloader,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    {
        let (mut hangups, mut reloader) = (hangups, reloader);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = hangups.recv() => {
                        if got.is_none() {
                            return;
                        }
                        reloader.reload().await;
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (hangups, reloader);
        tokio::spawn(async move {
            let _ = shutdown.changed().await;
        })
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reads the policy directory (seeding `<state-dir>/policies` with the
/// shipped defaults on first use) and checks that it compiles.
fn read_policy_dir(config: &Config, state: &StateDir) -> Result<(PathBuf, PolicySources)> {
    let dir = match &config.policy {
        PolicySource::Dir(dir) => dir.clone(),
        PolicySource::StateDir => {
            let dir = state.policies();
            if !dir.exists() {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create `{}`", dir.display()))?;
                write_public(&dir.join("schema.cedarschema"), DEFAULT_SCHEMA.as_bytes())?;
                write_public(&dir.join("quickstart.cedar"), DEFAULT_POLICIES.as_bytes())?;
                tracing::info!(dir = %dir.display(), "wrote the quickstart schema and policies");
            }
            dir
        }
    };
    let sources = PolicySources::read_dir(&dir)?;
    PolicyBundle::compile(&sources)?;
    Ok((dir, sources))
}

pub(crate) fn load_or_create_ca(
    state: &StateDir,
    trust_domain: &str,
) -> Result<CertificateAuthority> {
    let (cert_path, key_path) = (state.ca_cert(), state.ca_key());
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = std::fs::read_to_string(&cert_path)
                .with_context(|| format!("cannot read `{}`", cert_path.display()))?;
            let key = std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read `{}`", key_path.display()))?;
            CertificateAuthority::from_pem(trust_domain, &cert, &key)
                .with_context(|| format!("cannot load the CA from `{}`", state.root().display()))
        }
        (false, false) => {
            let ca = CertificateAuthority::generate(trust_domain)?;
            write_secret(&key_path, ca.key_pem().as_bytes())?;
            write_public(&cert_path, ca.cert_pem().as_bytes())?;
            tracing::info!(ca = %cert_path.display(), %trust_domain, "generated a new certificate authority");
            Ok(ca)
        }
        _ => bail!(
            "`{}` holds only one of ca.crt and ca.key; restore the other or remove both to generate a new CA",
            state.root().display()
        ),
    }
}

/// On first start (no admin credential in the store), creates the bootstrap
/// owner credential and writes its token into the state directory. Never
/// afterwards: a revoked bootstrap credential stays revoked, and a deleted
/// token file is not replaced by a new owner (named credentials are made
/// with `portcullis admin token create`).
async fn ensure_admin_token(
    state: &StateDir,
    store: &Store,
) -> Result<portcullis_admin::AdminCredentials> {
    let path = state.admin_token();
    if let Some(token) = portcullis_admin::ensure_bootstrap(store).await? {
        write_secret(&path, format!("{token}\n").as_bytes())?;
        tracing::info!(file = %path.display(), credential = portcullis_admin::BOOTSTRAP_NAME, "wrote the bootstrap owner credential; create named credentials and revoke it");
    }
    let credentials = portcullis_admin::AdminCredentials::load(store).await?;
    if credentials.is_empty() {
        tracing::warn!("no live admin credential: the admin API refuses every call");
    }
    Ok(credentials)
}

/// 32 random bytes, hex, in a file only the owner can read; created on
/// first use. The audit checkpoint key among them: losing it does not break
/// the log (old checkpoints still verify with the published key), but a new
/// key needs auditors to trust it anew.
pub(crate) fn load_or_create_seed(path: &std::path::Path, what: &str) -> Result<[u8; 32]> {
    if path.exists() {
        return read_seed(path);
    }
    let seed: [u8; 32] = rand::random();
    write_secret(path, format!("{}\n", hex::encode(seed)).as_bytes())?;
    tracing::info!(file = %path.display(), "generated {what}");
    Ok(seed)
}

/// A seed file as `load_or_create_seed` writes it: 32 bytes, hex.
pub(crate) fn read_seed(path: &std::path::Path) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("`{}` is not 32 bytes of hex", path.display()))
}

pub(crate) fn upstream_tls(ca_pem: &str) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    // Upstreams may also present certificates from the Portcullis CA.
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

/// The access-token issuer signing with `key`, also verifying the tokens
/// the keys retired by rotations signed, while those may still be valid.
fn token_issuer_with_previous(
    key: portcullis_identity::Ed25519Key,
    issuer: &str,
    previous: &[([u8; 32], i64)],
) -> Result<portcullis_identity::TokenIssuer> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let mut tokens = portcullis_identity::TokenIssuer::new(key, issuer)
        .context("cannot load the access-token signing key")?;
    for (seed, retired_at) in previous {
        if portcullis_identity::TokenIssuer::previous_key_verifies(*retired_at, now) {
            tokens = tokens
                .with_previous(
                    &portcullis_identity::Ed25519Key::from_seed(seed),
                    *retired_at,
                )
                .context("cannot load a retired access-token key")?;
        }
    }
    Ok(tokens)
}

/// `serve --accept-tampered-log-from N`: verifies the stored log, refuses
/// unless it fails verification and `N` is at most its first bad index, sets
/// it aside and returns the first record of the new segment, which names the
/// archive, the accepted prefix and its recomputed tree head.
async fn accept_tampered_log(
    store: &Store,
    signer: &LogSigner,
    accepted: u64,
    checkpoint_file: Option<&std::path::Path>,
) -> Result<portcullis_audit::AuditRecord> {
    use portcullis_store::AuditVerifyFailure;
    let exported = checkpoint_file
        .and_then(|path| std::fs::read_to_string(path).ok())
        .map(|text| portcullis_audit::checkpoint::split_notes(&text))
        .unwrap_or_default();
    let first_bad = match store
        .verify_audit_log(signer.verifier(), signer.origin(), &exported)
        .await
    {
        Ok(_) | Err(AuditVerifyFailure::Unsigned(_)) => {
            bail!("--accept-tampered-log-from: the audit log verifies; it is not set aside")
        }
        Err(AuditVerifyFailure::Tampered(e)) => e.first_bad_index(),
        // A checkpoint that does not verify vouches for nothing.
        Err(AuditVerifyFailure::BadCheckpoint { .. }) => 0,
        Err(AuditVerifyFailure::Store(e)) => {
            return Err(e).context("cannot verify the audit log");
        }
        // No archive is read here.
        Err(e @ AuditVerifyFailure::Archive(_)) => {
            return Err(e).context("cannot verify the audit log");
        }
    };
    if accepted > first_bad {
        anyhow::bail!(
            "--accept-tampered-log-from {accepted}: the audit log is bad from index {first_bad}; accept at most {first_bad}"
        );
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    // In cluster mode the log is every replica's: refused while another
    // one holds a live lease (the lease the intent takeover judges by).
    let lease_ms = i64::try_from(portcullis_gateway::audit_intent::INTENT_LEASE.as_millis())
        .unwrap_or(i64::MAX);
    let archived = store
        .archive_audit_segment(accepted, now_ms, lease_ms)
        .await
        .context("cannot set the tampered audit log aside")?;
    // The exported checkpoints belong to the old segment: set aside too.
    if let Some(path) = checkpoint_file
        && path.exists()
    {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".{}", archived.suffix));
        std::fs::rename(path, &aside).with_context(|| {
            format!("cannot set the checkpoint file `{}` aside", path.display())
        })?;
    }
    tracing::warn!(
        archive = %archived.suffix,
        records = archived.size,
        accepted = archived.accepted,
        first_bad,
        "TAMPERED AUDIT LOG SET ASIDE: a new log segment begins"
    );
    Ok(portcullis_audit::AuditRecord {
        time_ms: now_ms,
        kind: portcullis_audit::RecordKind::Admin,
        request_id: format!("segment-{now_ms}"),
        principal: Some("operator".into()),
        credential: Some("serve --accept-tampered-log-from".into()),
        action: "audit.accept_tampered_log".into(),
        resource: Some("audit".into()),
        // The link: where the old segment went, how much of it is accepted
        // and the tree head those records hash to.
        path: Some(format!(
            "/audit/segments/{}?size={}&accepted={}&first_bad={}&accepted_root={}",
            archived.suffix,
            archived.size,
            archived.accepted,
            first_bad,
            hex::encode(archived.accepted_root)
        )),
        outcome: portcullis_audit::Outcome::Allow,
        status: 200,
        ..Default::default()
    })
}
