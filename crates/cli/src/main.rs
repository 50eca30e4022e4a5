//! `portcullis`: the one binary. `serve` runs the gateway and admin API; the other
//! commands talk to a running server's admin API (or, for `policy validate`
//! and `guard scan`, work offline; `backup`, `restore`, `audit archive` and
//! `audit verify` work on the state directory itself).
#![forbid(unsafe_code)]

mod admin_cmd;
mod alerts_cmd;
mod approvals_cmd;
mod archive_cmd;
mod audit_cmd;
mod backup_cmd;
mod bom;
mod check;
mod client;
mod cluster;
mod cluster_keys;
mod commands;
mod governance_cmd;
mod guard_cmd;
mod inventory;
mod key_rotation;
mod offline;
mod output;
mod policy_cmd;
mod policy_test;
mod redteam;
mod reload;
mod sandbox_cmd;
mod scorecard;
mod serve;
mod state_dir;
mod state_lock;
mod store_probe;
mod token_cmd;
mod tools_cmd;
mod vault_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Environment variable naming the state directory.
pub const ENV_STATE_DIR: &str = "PORTCULLIS_STATE_DIR";
/// Environment variable naming the admin API URL.
pub const ENV_ADMIN_URL: &str = "PORTCULLIS_ADMIN_URL";
/// Environment variable holding the admin token itself.
pub const ENV_ADMIN_TOKEN: &str = "PORTCULLIS_ADMIN_TOKEN";
/// Environment variable with the log filter (`info`, `debug`, `portcullis=debug`…).
pub const ENV_LOG: &str = "PORTCULLIS_LOG";
/// Environment variable selecting the log format: `text` (default) or `json`.
pub const ENV_LOG_FORMAT: &str = "PORTCULLIS_LOG_FORMAT";
/// Environment variable naming the vault's key-encryption key file (32 bytes,
/// raw or base64).
pub const ENV_KEK_FILE: &str = "PORTCULLIS_KEK_FILE";
/// Environment variable naming the human admin behind sensitive CLI actions.
pub const ENV_USER: &str = "PORTCULLIS_USER";
/// Environment variable holding the vault's key-encryption key (base64).
pub const ENV_KEK: &str = "PORTCULLIS_KEK";
/// Environment variable overriding the data plane's listen address.
pub const ENV_GATEWAY_LISTEN: &str = "PORTCULLIS_GATEWAY_LISTEN";
/// Environment variable overriding the admin API's listen address.
pub const ENV_ADMIN_LISTEN: &str = "PORTCULLIS_ADMIN_LISTEN";
/// Environment variable overriding `[store] url` (e.g. a `postgres://` URL
/// for cluster mode, kept out of the config file when it holds a password).
pub const ENV_STORE_URL: &str = "PORTCULLIS_STORE_URL";

/// `--version`: the package version, the commit and the build time (from
/// `build.rs`; `unknown` when built outside a git checkout).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PORTCULLIS_GIT_COMMIT"),
    ", built ",
    env!("PORTCULLIS_BUILD_DATE"),
    ")"
);

/// Portcullis: a zero-trust gateway for AI agents.
#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version = VERSION,
    about = "Portcullis: a zero-trust gateway for AI agents",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the state directory is.
#[derive(Debug, Clone, Args)]
pub struct StateDirArg {
    /// State directory (database, CA, admin credential).
    #[arg(long, env = ENV_STATE_DIR, default_value = ".portcullis", global = true)]
    pub state_dir: PathBuf,
}

/// How CLI commands reach the admin API.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The state directory (for the default URL, token and CA).
    #[command(flatten)]
    pub state: StateDirArg,
    /// Admin API base URL (default: read from `<state-dir>/admin.url`).
    #[arg(long, env = ENV_ADMIN_URL, global = true)]
    pub admin_url: Option<String>,
    /// File holding the admin token (default: `<state-dir>/admin.token`).
    #[arg(long, global = true)]
    pub admin_token_file: Option<PathBuf>,
    /// An admin client certificate (`admin cert create`) to authenticate
    /// with over mTLS instead of a token.
    #[arg(long, global = true)]
    pub admin_cert: Option<PathBuf>,
    /// Its private key (default: the certificate's path with `.key`).
    #[arg(long, global = true, requires = "admin_cert")]
    pub admin_key: Option<PathBuf>,
    /// CA certificate to trust for the admin API (default: `<state-dir>/ca.crt`).
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// The human admin confirming a sensitive action with --totp.
    #[arg(long, env = ENV_USER, global = true)]
    pub user: Option<String>,
    /// A current TOTP code of that admin, for sensitive actions (revoke,
    /// enrolment, …) once an admin has enrolled. Without it, on a terminal,
    /// the CLI asks for one when the server needs it.
    #[arg(long, global = true)]
    pub totp: Option<String>,
    /// Output format (`-o table|json|yaml`).
    #[command(flatten)]
    pub out: output::OutputArg,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (data plane) and the admin API.
    Serve {
        /// Configuration file (TOML). Without it, the built-in quickstart runs.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        state: StateDirArg,
        /// Start on an audit log that failed verification: records from index
        /// N on (N at most the first bad index `audit verify` names) are not
        /// vouched for. The whole log is set aside in archive tables, and a new
        /// log segment begins whose first record links to the accepted prefix.
        #[arg(long, value_name = "N")]
        accept_tampered_log_from: Option<u64>,
        /// Check the configuration, policies, CA, database schema, KEK and
        /// every route's secrets as `serve` would, then exit (0 when it
        /// would start) without binding a port or writing anything.
        #[arg(long, conflicts_with = "accept_tampered_log_from")]
        check: bool,
    },
    /// Manage agents.
    Agent {
        #[command(subcommand)]
        command: commands::AgentCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Attack a running gateway with an agent's credentials and print a
    /// scorecard of held and failed attack families (`redteam history`: past runs).
    #[command(args_conflicts_with_subcommands = true)]
    Redteam {
        #[command(subcommand)]
        command: Option<redteam::RedteamCommand>,
        #[command(flatten)]
        run: redteam::RunArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Review behavioral analytics' alerts.
    Alerts {
        #[command(subcommand)]
        command: alerts_cmd::AlertsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke single access tokens.
    Token {
        #[command(subcommand)]
        command: commands::TokenCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Federated users agents act for: disable and enable.
    User {
        #[command(subcommand)]
        command: commands::UserCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show how the gateway sees an agent's credential (its certificate, or
    /// an access token with --token), or why it refuses it.
    Whoami {
        /// The agent's name.
        #[arg(long)]
        name: String,
        /// The directory `agent create --out` wrote.
        #[arg(long)]
        creds: PathBuf,
        /// An access token file to check instead of the certificate.
        #[arg(long)]
        token: Option<PathBuf>,
        /// The token is certificate-bound (send it with the certificate).
        #[arg(long)]
        mtls: bool,
        /// Data-plane URL (default: read from `<state-dir>/gateway.url`).
        #[arg(long)]
        gateway: Option<String>,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Admin credentials (tokens with roles), human admins (TOTP) and the
    /// caller's session (step-up).
    Admin {
        #[command(subcommand)]
        command: admin_cmd::AdminCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        command: commands::AuditCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Manage vault secrets (upstream credentials agents never see).
    Secret {
        #[command(subcommand)]
        command: vault_cmd::SecretCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The vault itself: status and rekey.
    Vault {
        #[command(subcommand)]
        command: vault_cmd::VaultCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Transit encryption (Fernet tokens) with named keys.
    Transit {
        #[command(subcommand)]
        command: vault_cmd::TransitCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Read captured payloads.
    Capture {
        #[command(subcommand)]
        command: vault_cmd::CaptureCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The AI bill of materials as CycloneDX 1.6 JSON: routes and their
    /// upstreams, models, MCP servers and the tools seen, with digests
    /// (offline: the config file and the database: a cluster's PostgreSQL
    /// store from `PORTCULLIS_STORE_URL` or `[store] url`, else the
    /// `--state-dir`'s).
    Bom {
        /// The config file (default: the quickstart's routes).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The state directory whose MCP tools to include (read-only; on a
        /// PostgreSQL store the database is read instead).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Write the BOM here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Every identity and resource, and who touched what (from the audit log).
    Inventory {
        /// Only activity in this window, e.g. `7d`, `24h` (default: all).
        #[arg(long, value_parser = commands::parse_ttl)]
        since: Option<std::time::Duration>,
        /// Output format (`mermaid` for a graph; `-o json|yaml` as everywhere).
        #[arg(long, value_enum, default_value = "table")]
        format: inventory::Format,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Work with policies: validate, push, list, roll back, diff.
    Policy {
        #[command(subcommand)]
        command: policy_cmd::PolicyCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Just-in-time approvals: list, approve (once or with --ttl), deny.
    Approvals {
        #[command(subcommand)]
        command: approvals_cmd::ApprovalsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Time-boxed grants made by approvals with --ttl: list, revoke.
    Grants {
        #[command(subcommand)]
        command: approvals_cmd::GrantsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Emergency access for one agent, opened by two admins.
    Breakglass {
        #[command(subcommand)]
        command: approvals_cmd::BreakGlassCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The model registry: register versions with their digest, signature
    /// and provenance; approve, deprecate, revoke.
    Model {
        #[command(subcommand)]
        command: governance_cmd::ModelCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The dataset registry: provenance, consent, retention, purposes; the
    /// retention report.
    Dataset {
        #[command(subcommand)]
        command: governance_cmd::DatasetCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// MCP tool pins: list tools seen on MCP routes, approve changed definitions.
    Tools {
        #[command(subcommand)]
        command: tools_cmd::ToolsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Copy the state directory (database and files, never the KEK) into
    /// one file, consistently, beside a running server or not.
    Backup {
        /// The backup file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Also copy the CA key (left out by default: keep it in its own custody).
        #[arg(long)]
        include_ca_key: bool,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Restore a backup into a new or empty state directory.
    Restore {
        /// The backup file (`portcullis backup --out`).
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Run the content guard offline (prompt injection, DLP, tool poisoning).
    Guard {
        #[command(subcommand)]
        command: guard_cmd::GuardCommand,
    },
    /// Print a shell completion script (`source <(portcullis completion bash)`).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Internal, started by `serve`: confine this process as a stdio route's
    /// sandbox profile says, then execute its MCP server (`--probe`: say
    /// which mechanisms the kernel offers).
    #[command(hide = true, name = "sandbox-exec")]
    SandboxExec(sandbox_cmd::SandboxExecArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The guard works offline and needs no runtime.
    let cli = match cli.command {
        Command::Guard { command } => {
            return guard_cmd::guard(command).unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            });
        }
        // Confinement needs a single-threaded process: no runtime.
        Command::SandboxExec(args) => return sandbox_cmd::run(args),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "portcullis", &mut script);
            return match output::write_stdout(&script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        command => Cli { command },
    };
    // One crypto provider for the whole process: ring (no aws-lc, no cmake).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `audit verify` tells a log that does not verify (1) from one it could
    // not read (2); every other command fails with 1.
    let verifying = matches!(
        cli.command,
        Command::Audit {
            command: commands::AuditCommand::Verify { .. },
            ..
        }
    );
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                state,
                check: true,
                ..
            } => check::run(config, state.state_dir).await,
            Command::Serve {
                config,
                state,
                accept_tampered_log_from,
                check: false,
            } => {
                init_logging();
                serve::run(config, state.state_dir, accept_tampered_log_from).await
            }
            Command::Agent { command, admin } => commands::agent(command, admin).await,
            Command::Audit { command, admin } => commands::audit(command, admin).await,
            Command::Alerts { command, admin } => alerts_cmd::alerts(command, admin).await,
            Command::Redteam {
                command,
                run,
                admin,
            } => redteam::run(command, run, admin).await,
            Command::Admin { command, admin } => admin_cmd::admin(command, admin).await,
            Command::Token { command, admin } => commands::token(command, admin).await,
            Command::Whoami {
                name,
                creds,
                token,
                mtls,
                gateway,
                state,
            } => {
                token_cmd::whoami(
                    &state_dir::StateDir::new(state.state_dir),
                    &name,
                    &creds,
                    gateway,
                    token.as_deref(),
                    mtls,
                )
                .await
            }
            Command::User { command, admin } => commands::user(command, admin).await,
            Command::Bom {
                config,
                state_dir,
                out,
            } => bom::run(config, state_dir, out).await,
            Command::Inventory {
                since,
                format,
                admin,
            } => inventory::run(admin, since, format).await,
            Command::Policy { command, admin } => policy_cmd::run(command, admin).await,
            Command::Guard { .. } | Command::SandboxExec(_) | Command::Completion { .. } => Ok(()),
            Command::Backup {
                out,
                include_ca_key,
                state,
            } => {
                let state = state_dir::StateDir::new(state.state_dir);
                backup_cmd::backup(&state, &out, include_ca_key).await
            }
            Command::Restore { from, state } => {
                backup_cmd::restore(&state_dir::StateDir::new(state.state_dir), &from).await
            }
            Command::Approvals { command, admin } => approvals_cmd::approvals(command, admin).await,
            Command::Grants { command, admin } => approvals_cmd::grants(command, admin).await,
            Command::Breakglass { command, admin } => {
                approvals_cmd::breakglass(command, admin).await
            }
            Command::Secret { command, admin } => vault_cmd::secret(command, admin).await,
            Command::Vault { command, admin } => vault_cmd::vault(command, admin).await,
            Command::Transit { command, admin } => vault_cmd::transit(command, admin).await,
            Command::Capture { command, admin } => vault_cmd::capture(command, admin).await,
            Command::Tools { command, admin } => tools_cmd::tools(command, admin).await,
            Command::Model { command, admin } => governance_cmd::model(command, admin).await,
            Command::Dataset { command, admin } => governance_cmd::dataset(command, admin).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<redteam::AttacksSucceeded>() {
                return ExitCode::from(redteam::ATTACK_SUCCEEDED);
            }
            if verifying && !e.is::<audit_cmd::VerifyFailed>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var(ENV_LOG_FORMAT).is_ok_and(|v| v == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
