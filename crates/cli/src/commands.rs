//! The CLI's admin and policy commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use crate::AdminArgs;
use crate::client::AdminClient;
use crate::output::{self, Kind, col};
use crate::state_dir::{StateDir, write_public, write_secret};

/// `portcullis agent …`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register an agent and write its certificate and key to `--out`.
    Create {
        /// The agent's name (a-z, 0-9, `.`, `_`, `-`).
        name: String,
        /// A role for policy (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Where to write NAME.crt, NAME.key and ca.crt.
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime: 3600, 90s, 30m, 24h or 7d.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Issue a fresh certificate (new key) for an existing agent.
    Renew {
        /// The agent's name.
        name: String,
        /// Where to write NAME.crt and NAME.key.
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// List agents: identity, roles, credential kinds, expiry, last seen, status.
    List {
        /// The same as `-o json` (kept for old scripts).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Show one agent with its certificates.
    Show {
        /// The agent's name.
        name: String,
    },
    /// Pin an agent to a workload digest (and source networks): its token
    /// requests must come from those networks, and policy sees
    /// `context.posture.matches_pin` only for tokens attesting that digest.
    Pin {
        /// The agent's name.
        name: String,
        /// The workload digest, `sha256:<64 hex>` (container image or binary).
        #[arg(long)]
        digest: String,
        /// An allowed source network in CIDR form (repeatable; none = any).
        #[arg(long = "network")]
        networks: Vec<String>,
    },
    /// Revoke an agent and all its certificates, effective on its next request.
    Revoke {
        /// The agent's name.
        name: String,
    },
    /// Lift the quarantine behavioral analytics put on an agent.
    Release {
        /// The agent's name.
        name: String,
    },
    /// Print a fresh access token (client credentials, `private_key_jwt`),
    /// bound to the agent's key (DPoP) or, with --mtls, to its certificate.
    Token {
        /// The agent's name.
        name: String,
        /// The directory `agent create --out` wrote (NAME.jwk, ca.crt; NAME.crt/.key for --mtls).
        #[arg(long)]
        creds: PathBuf,
        /// Data-plane URL (default: read from `<state-dir>/gateway.url`).
        #[arg(long)]
        gateway: Option<String>,
        /// Bind the token to the agent's client certificate instead of DPoP.
        #[arg(long)]
        mtls: bool,
        /// A file holding a workload posture statement (a JWT signed by the
        /// configured posture attestor) to send with the token request.
        #[arg(long, value_name = "STATEMENT_FILE")]
        posture: Option<PathBuf>,
        /// Token exchange (RFC 8693): a file holding the token of the user
        /// the agent acts for (from a configured OIDC issuer, or a delegated
        /// token another agent passed on). The new token's `act` records the chain.
        #[arg(long, value_name = "TOKEN_FILE")]
        on_behalf_of: Option<PathBuf>,
    },
    /// Print a DPoP proof for one request with a DPoP-bound token.
    Dpop {
        /// The agent's name.
        name: String,
        /// The directory holding NAME.jwk.
        #[arg(long)]
        creds: PathBuf,
        /// The request's method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request's URL (as the gateway publishes it; query ignored).
        #[arg(long)]
        url: String,
        /// The access token the proof accompanies (sets `ath`).
        #[arg(long)]
        token: Option<String>,
    },
}

/// `portcullis audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the latest audit records, oldest first: a table, or every
    /// field with `-o json|yaml`.
    Tail {
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 20)]
        n: u32,
    },
    /// Print the latest signed checkpoint (with --sign, sign one now first).
    Checkpoint {
        /// Sign a checkpoint over everything written so far.
        #[arg(long)]
        sign: bool,
    },
    /// Prove that a record is in the signed log, and check the proof here.
    Prove {
        /// The record: its seq, or its request id.
        id: String,
        /// Prove against the checkpoint of this tree size (default: the latest).
        #[arg(long)]
        tree_size: Option<u64>,
        /// The log's verifier key, or a file holding it (default:
        /// `<state-dir>/audit.pub`).
        #[arg(long)]
        key: Option<String>,
        /// Prove an archived record (by seq) from these archive directories,
        /// with no server.
        #[arg(long)]
        archive: Vec<PathBuf>,
    },
    /// Prove that the log of one size is a prefix of a later one.
    Consistency {
        /// The older tree size.
        from: u64,
        /// The newer tree size (default: the latest checkpoint).
        to: Option<u64>,
        /// The log's verifier key, or a file holding it.
        #[arg(long)]
        key: Option<String>,
    },
    /// Write the log's exact leaves (one JSON record per line) to a file, for
    /// offline verification, its checkpoints beside them, and the verifier
    /// key of every audit key version that signed them (`<out>.keys`).
    Export {
        /// Where the records go.
        #[arg(long)]
        out: PathBuf,
        /// Where the signed checkpoints go (default: `<out>.checkpoints`).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
    /// Recompute the whole log and check it against every signed checkpoint;
    /// exits non-zero naming the first bad record. Reads the state directory's
    /// database, or with --export an exported log, offline.
    Verify {
        /// The log's verifier key, or a file holding it, or several, one a
        /// line, for a log spanning rotations of its audit key (default:
        /// `<export>.keys` with --export, else `<state-dir>/audit.pub`; pin
        /// them somewhere the admin cannot change).
        #[arg(long)]
        key: Option<String>,
        /// An exported log (`audit export`) to verify with no server or database.
        #[arg(long)]
        export: Option<PathBuf>,
        /// Files of signed checkpoints to hold the log to, besides the stored
        /// ones (e.g. the `[audit] checkpoint_file` copy).
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// Archive directories (`audit archive --out`) holding the records
        /// pruned from the database; without them a pruned prefix is skipped.
        #[arg(long)]
        archive: Vec<PathBuf>,
    },
    /// Write the signed records older than a cut-off as a sealed segment
    /// (exact leaves, checkpoints, a consistency proof to the latest
    /// checkpoint) and prune them from the database. Works on the state
    /// directory, with or without a running server.
    Archive {
        /// Archive records older than this: a UTC date (`2026-11-01`) or an
        /// age (`90d`).
        #[arg(long, value_parser = crate::archive_cmd::parse_before)]
        before: i64,
        /// The archive directory (created if missing; keep every segment of
        /// a log in one directory).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Parses `3600`, `90s`, `30m`, `24h`, `7d`.
pub(crate) fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration `{s}`"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration `{s}`: use s, m, h or d")),
    };
    let secs = n
        .checked_mul(scale)
        .ok_or_else(|| format!("duration `{s}` is too long"))?;
    if secs == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

pub(crate) fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub(crate) fn write_credentials(
    out: &Path,
    name: &str,
    key_pem: &str,
    response: &serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create `{}`", out.display()))?;
    let cert = response["certificate_pem"]
        .as_str()
        .context("the server sent no certificate")?;
    let ca = response["ca_pem"]
        .as_str()
        .context("the server sent no CA certificate")?;
    write_secret(&out.join(format!("{name}.key")), key_pem.as_bytes())?;
    write_public(&out.join(format!("{name}.crt")), cert.as_bytes())?;
    write_public(&out.join("ca.crt"), ca.as_bytes())?;
    Ok(())
}

/// The end of `agent create`: the credentials on disk, the agent printed.
fn created(
    out: &Path,
    name: &str,
    key_pem: &str,
    signing_key: &portcullis_identity::Ed25519Key,
    response: &serde_json::Value,
) -> Result<()> {
    write_credentials(out, name, key_pem, response)?;
    write_secret(
        &out.join(format!("{name}.jwk")),
        signing_key.to_private_jwk().as_bytes(),
    )?;
    print_json(&response["agent"]);
    eprintln!(
        "wrote {0}/{1}.crt, {0}/{1}.key, {0}/{1}.jwk (mode 0600) and {0}/ca.crt",
        out.display(),
        name
    );
    Ok(())
}

/// Runs an agent command.
pub async fn agent(command: AgentCommand, args: AdminArgs) -> Result<()> {
    // The token commands talk to the data plane, not the admin API.
    match &command {
        AgentCommand::Token {
            name,
            creds,
            gateway,
            mtls,
            on_behalf_of,
            posture,
        } => {
            let state = StateDir::new(args.state.state_dir.clone());
            return crate::token_cmd::token(
                &state,
                name,
                creds,
                gateway.clone(),
                *mtls,
                on_behalf_of.as_deref(),
                posture.as_deref(),
            )
            .await;
        }
        AgentCommand::Dpop {
            name,
            creds,
            method,
            url,
            token,
        } => return crate::token_cmd::dpop(name, creds, method, url, token.as_deref()),
        _ => {}
    }
    if let AgentCommand::Create {
        name,
        roles,
        out,
        ttl,
    } = &command
        && let Some(offline) = crate::offline::Offline::open(&args).await?
    {
        // No server is running: the state directory's CA signs the CSR.
        let (key_pem, csr_pem) = portcullis_identity::new_agent_key_and_csr()?;
        let signing_key = portcullis_identity::Ed25519Key::generate();
        let response = offline
            .create_agent(name, roles, &csr_pem, *ttl, &signing_key.public().to_json())
            .await;
        offline.close().await;
        return created(out, name, &key_pem, &signing_key, &response?);
    }
    let client = AdminClient::from_args(&args)?;
    match command {
        AgentCommand::Token { .. } | AgentCommand::Dpop { .. } => {}
        AgentCommand::Create {
            name,
            roles,
            out,
            ttl,
        } => {
            // The key is generated here and never sent anywhere: only its CSR is.
            let (key_pem, csr_pem) = portcullis_identity::new_agent_key_and_csr()?;
            // The token endpoint's signing key: only its public half is sent.
            let signing_key = portcullis_identity::Ed25519Key::generate();
            let response = client
                .post(
                    "/agents",
                    &json!({
                        "name": name,
                        "roles": roles,
                        "csr_pem": csr_pem,
                        "ttl_seconds": ttl.as_secs(),
                        "jwk": signing_key.public().to_json(),
                    }),
                )
                .await?;
            created(&out, &name, &key_pem, &signing_key, &response)?;
        }
        AgentCommand::Renew { name, out, ttl } => {
            let (key_pem, csr_pem) = portcullis_identity::new_agent_key_and_csr()?;
            let response = client
                .post(
                    &format!("/agents/{name}/certificates"),
                    &json!({ "csr_pem": csr_pem, "ttl_seconds": ttl.as_secs() }),
                )
                .await?;
            write_credentials(&out, &name, &key_pem, &response)?;
            print_json(&response["agent"]);
        }
        AgentCommand::List { json } => {
            let agents = client.get("/agents").await?;
            output::emit(args.out.or_json(json), &agents, |v| {
                output::rows(v, "/agents", AGENT_COLUMNS)
            })?;
        }
        AgentCommand::Show { name } => {
            let agent = client.get(&format!("/agents/{name}")).await?;
            output::emit(args.out.format(), &agent, output::fields)?;
        }
        AgentCommand::Pin {
            name,
            digest,
            networks,
        } => print_json(
            &client
                .post(
                    &format!("/agents/{name}/posture"),
                    &json!({ "digest": digest, "networks": networks }),
                )
                .await?,
        ),
        AgentCommand::Revoke { name } => print_json(
            &client
                .post(&format!("/agents/{name}/revoke"), &json!({}))
                .await?,
        ),
        AgentCommand::Release { name } => print_json(
            &client
                .post(&format!("/agents/{name}/release"), &json!({}))
                .await?,
        ),
    }
    Ok(())
}

/// `portcullis token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Revoke one access token by its `jti`, effective on its next request.
    Revoke {
        /// The token's `jti` (in its audit record's `credential`).
        jti: String,
        /// Why (recorded).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List revoked tokens that have not expired yet.
    Revoked,
}

/// `portcullis user …` (federated users agents act for)
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Disable a user: every delegated token for them stops working at once
    /// and no new one is exchanged.
    Disable {
        /// The user's `sub` at their identity provider.
        subject: String,
        /// Why (recorded).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// The user's `sub`.
        subject: String,
    },
    /// List disabled users.
    Disabled,
}

/// Runs `portcullis token …`.
pub async fn token(command: TokenCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    match command {
        TokenCommand::Revoke { jti, reason } => {
            client
                .post("/tokens/revoke", &json!({ "jti": jti, "reason": reason }))
                .await?;
            println!("revoked token {jti}");
        }
        TokenCommand::Revoked => {
            let revoked = client.get("/tokens/revoked").await?;
            output::emit(args.out.format(), &revoked, |v| {
                output::rows(
                    v,
                    "",
                    &[
                        col("JTI", "jti", Kind::Text, 40),
                        col("REVOKED", "revoked_at", Kind::Time, 20),
                        col("EXPIRES", "expires_at", Kind::Time, 20),
                        col("REASON", "reason", Kind::Text, 40),
                    ],
                )
            })?;
        }
    }
    Ok(())
}

/// Runs `portcullis user …`.
pub async fn user(command: UserCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    match command {
        UserCommand::Disable { subject, reason } => {
            client
                .post(
                    "/users/disable",
                    &json!({ "subject": subject, "reason": reason }),
                )
                .await?;
            println!("disabled user `{subject}`");
        }
        UserCommand::Enable { subject } => {
            client
                .post("/users/enable", &json!({ "subject": subject }))
                .await?;
            println!("enabled user `{subject}`");
        }
        UserCommand::Disabled => {
            let disabled = client.get("/users/disabled").await?;
            output::emit(args.out.format(), &disabled, |v| {
                let rows: Vec<serde_json::Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| {
                        if u.is_string() {
                            json!({ "subject": u })
                        } else {
                            u.clone()
                        }
                    })
                    .collect();
                output::table(&rows, &[col("SUBJECT", "subject", Kind::Text, 60)])
            })?;
        }
    }
    Ok(())
}

/// `audit tail`'s columns.
const AUDIT_COLUMNS: &[output::Column] = &[
    col("SEQ", "seq", Kind::Text, 7),
    col("TIME", "time_ms", Kind::Time, 24),
    col("KIND", "kind", Kind::Text, 8),
    col("PRINCIPAL", "principal", Kind::Text, 20),
    col("ACTION", "action", Kind::Text, 22),
    col("RESOURCE", "resource", Kind::Text, 24),
    col("OUTCOME", "outcome", Kind::Text, 7),
    col("STATUS", "status", Kind::Text, 6),
    col("CODE", "error_code", Kind::Text, 20),
];

/// `agent list`'s columns.
const AGENT_COLUMNS: &[output::Column] = &[
    col("NAME", "name", Kind::Text, 24),
    col("ROLES", "roles", Kind::List, 24),
    col("CREDENTIALS", "credential_kinds", Kind::List, 14),
    col("CERT EXPIRES", "expires_at", Kind::Time, 20),
    col("LAST SEEN", "last_seen", Kind::Time, 20),
    col("STATUS", "status", Kind::Text, 12),
];

/// Runs an audit command.
pub async fn audit(command: AuditCommand, args: AdminArgs) -> Result<()> {
    match command {
        AuditCommand::Verify {
            key,
            export,
            checkpoint,
            archive,
        } => crate::audit_cmd::verify(&args.state, key, export, &checkpoint, &archive).await,
        AuditCommand::Archive { before, out } => {
            let state = crate::state_dir::StateDir::new(args.state.state_dir.clone());
            crate::archive_cmd::archive(&state, before, &out).await
        }
        AuditCommand::Prove {
            id, key, archive, ..
        } if !archive.is_empty() => {
            let key = crate::audit_cmd::verifier_key(&args.state, key)?;
            crate::archive_cmd::prove_archived(&archive, &id, &key)
        }
        command => audit_online(command, args).await,
    }
}

/// The audit commands that go through the admin API.
async fn audit_online(command: AuditCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    match command {
        AuditCommand::Tail { n } => {
            let response = client.get(&format!("/audit?limit={n}")).await?;
            output::emit(args.out.format(), &response, |v| {
                output::rows(v, "/records", AUDIT_COLUMNS)
            })?;
        }
        AuditCommand::Checkpoint { sign } => crate::audit_cmd::checkpoint(&client, sign).await?,
        AuditCommand::Prove {
            id, tree_size, key, ..
        } => crate::audit_cmd::prove(&client, &args.state, &id, tree_size, key).await?,
        AuditCommand::Consistency { from, to, key } => {
            crate::audit_cmd::consistency(&client, &args.state, from, to, key).await?
        }
        AuditCommand::Export { out, checkpoints } => {
            crate::audit_cmd::export(&client, &out, checkpoints).await?
        }
        AuditCommand::Verify { .. } | AuditCommand::Archive { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604800)));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("5y").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("99999999999999999d").is_err());
    }
}
