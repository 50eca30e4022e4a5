//! `portcullis admin …`: admin credentials (`token`: bearer tokens with a
//! role; `cert`: client certificates with a role), human admins (`user`: TOTP), and the caller's own session
//! (`whoami`, `step-up`, `step-down`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::json;

use crate::AdminArgs;
use crate::client::AdminClient;
use crate::output::{self, Kind, col};

/// `portcullis admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Admin credentials: bearer tokens with a role.
    Token {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
    /// Admin credentials bound to a client certificate (mTLS on the admin
    /// listener); listed and revoked with `admin token list|revoke`.
    Cert {
        #[command(subcommand)]
        command: AdminCertCommand,
    },
    /// Human admins who confirm sensitive actions with TOTP.
    User {
        #[command(subcommand)]
        command: AdminUserCommand,
    },
    /// Human admins' passkeys (registered on the console's step-up page).
    Passkey {
        #[command(subcommand)]
        command: AdminPasskeyCommand,
    },
    /// OAuth clients of MCP authorization (`[identity.authorization]`).
    OauthClient {
        #[command(subcommand)]
        command: OauthClientCommand,
    },
    /// Show the credential in use: its name, role, permissions and any open
    /// step-up window.
    Whoami,
    /// Confirm with a TOTP code once and open a step-up window: sensitive
    /// actions of this credential need no new code until it closes
    /// (`[admin] step_up_seconds`, default 300). Asks for the code on a
    /// terminal when --totp is not given.
    StepUp,
    /// Close this credential's step-up window now.
    StepDown,
}

/// `portcullis admin token …`
#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Create a named credential and print its token once.
    Create {
        /// The credential's name (a-z, 0-9, `.`, `_`, `-`); never reused.
        name: String,
        /// What it may do: owner, operator, policy-author, approver, auditor.
        #[arg(long)]
        role: String,
    },
    /// List credentials (never tokens).
    List,
    /// Replace a credential's token and print the new one once; the old one
    /// is refused from the next request.
    Rotate {
        /// The credential's name.
        name: String,
    },
    /// Revoke a credential, effective on its next request (the last owner
    /// cannot be revoked).
    Revoke {
        /// The credential's name.
        name: String,
    },
}

/// `portcullis admin cert …`
#[derive(Debug, Subcommand)]
pub enum AdminCertCommand {
    /// Make a key here, have the Portcullis CA certify it for a new admin
    /// credential, and write NAME.crt, NAME.key (mode 0600) and ca.crt. The
    /// key never leaves this machine; only its CSR is sent.
    Create {
        /// The credential's name (a-z, 0-9, `.`, `_`, `-`); never reused.
        name: String,
        /// What it may do: owner, operator, policy-author, approver, auditor.
        #[arg(long)]
        role: String,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Certificate lifetime: 3600, 90s, 30m, 24h or 7d (at most 365d).
        #[arg(long, default_value = "90d", value_parser = crate::commands::parse_ttl)]
        ttl: Duration,
    },
}

/// `portcullis admin oauth-client …`
#[derive(Debug, Subcommand)]
pub enum OauthClientCommand {
    /// List registered clients, revoked ones too.
    List,
    /// Revoke a client: it can no longer authorize or refresh, and its live
    /// tokens stop working at once (needs a confirmation once an admin enrolled).
    Revoke {
        /// The client id: a registered client's, or the URL of a Client ID
        /// Metadata Document that was granted a token.
        client_id: String,
    },
}

/// `portcullis admin user …`
#[derive(Debug, Subcommand)]
pub enum AdminUserCommand {
    /// Enrol a human admin and print their TOTP secret once (add it to an
    /// authenticator app). After the first, enrolment needs a confirmation.
    Add {
        /// The admin's name (a-z, 0-9, `.`, `_`, `-`).
        name: String,
    },
    /// List enrolled admins.
    List,
    /// Remove an admin (needs a confirmation).
    Remove {
        /// The admin's name.
        name: String,
    },
}

/// `portcullis admin passkey …`
#[derive(Debug, Subcommand)]
pub enum AdminPasskeyCommand {
    /// List passkeys (never their keys).
    List {
        /// Only this admin's.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Remove a passkey by its credential id (needs a confirmation).
    Remove {
        /// The credential id (`admin passkey list`).
        id: String,
    },
}

/// `admin passkey list`'s columns.
const PASSKEY_COLUMNS: &[output::Column] = &[
    col("ADMIN", "admin", Kind::Text, 16),
    col("LABEL", "label", Kind::Text, 16),
    col("CREDENTIAL ID", "credential_id", Kind::Text, 24),
    col("RP", "rp_id", Kind::Text, 20),
    col("ALG", "algorithm", Kind::Text, 6),
    col("COUNTER", "sign_count", Kind::Text, 8),
    col("REGISTERED", "created_at", Kind::Time, 20),
    col("LAST USED", "last_used_at", Kind::Time, 20),
];

/// `admin token list`'s columns.
const TOKEN_COLUMNS: &[output::Column] = &[
    col("NAME", "name", Kind::Text, 24),
    col("ROLE", "role", Kind::Text, 14),
    col("KIND", "kind", Kind::Text, 11),
    col("STATUS", "status", Kind::Text, 8),
    col("CREATED", "created_at", Kind::Time, 20),
    col("BY", "created_by", Kind::Text, 16),
    col("ROTATED", "rotated_at", Kind::Time, 20),
    col("REVOKED", "revoked_at", Kind::Time, 20),
];

/// `admin oauth-client list`'s columns.
const OAUTH_CLIENT_COLUMNS: &[output::Column] = &[
    col("CLIENT ID", "client_id", Kind::Text, 44),
    col("NAME", "client_name", Kind::Text, 24),
    col("REGISTERED", "created_at", Kind::Time, 20),
    col("STATUS", "status", Kind::Text, 8),
    col("REDIRECT URIS", "redirect_uris", Kind::List, 40),
];

/// Prints a token handed out once, and where it goes.
fn print_issued(v: &serde_json::Value, verb: &str) {
    eprintln!(
        "{verb} admin credential `{}` ({}); its token is shown once:",
        v["name"].as_str().unwrap_or_default(),
        v["role"].as_str().unwrap_or_default()
    );
    println!("{}", v["token"].as_str().unwrap_or_default());
}

/// Runs `portcullis admin …`.
pub async fn admin(command: AdminCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    let format = args.out.format();
    match command {
        AdminCommand::Token { command } => match command {
            AdminTokenCommand::Create { name, role } => {
                let v = client
                    .post("/admin-tokens", &json!({ "name": name, "role": role }))
                    .await?;
                print_issued(&v, "created");
            }
            AdminTokenCommand::List => {
                let v = client.get("/admin-tokens").await?;
                output::emit(format, &v, |v| output::rows(v, "/tokens", TOKEN_COLUMNS))?;
            }
            AdminTokenCommand::Rotate { name } => {
                let v = client
                    .post(&format!("/admin-tokens/{name}/rotate"), &json!({}))
                    .await?;
                print_issued(&v, "rotated");
            }
            AdminTokenCommand::Revoke { name } => {
                client
                    .post(&format!("/admin-tokens/{name}/revoke"), &json!({}))
                    .await?;
                println!("revoked admin credential `{name}`");
            }
        },
        AdminCommand::Cert { command } => match command {
            AdminCertCommand::Create {
                name,
                role,
                out,
                ttl,
            } => {
                let (key_pem, csr_pem) = portcullis_identity::new_agent_key_and_csr()?;
                let v = client
                    .post(
                        "/admin-certificates",
                        &json!({
                            "name": name,
                            "role": role,
                            "csr": csr_pem,
                            "ttl_seconds": ttl.as_secs(),
                        }),
                    )
                    .await?;
                crate::commands::write_credentials(&out, &name, &key_pem, &v)?;
                eprintln!(
                    "created admin credential `{name}` ({}), certificate {}; wrote {}, {} and {}",
                    v["role"].as_str().unwrap_or_default(),
                    v["fingerprint"].as_str().unwrap_or_default(),
                    out.join(format!("{name}.crt")).display(),
                    out.join(format!("{name}.key")).display(),
                    out.join("ca.crt").display(),
                );
            }
        },
        AdminCommand::User { command } => match command {
            AdminUserCommand::Add { name } => {
                let v = client.post("/admins", &json!({ "name": name })).await?;
                println!(
                    "enrolled admin `{}`",
                    v["name"].as_str().unwrap_or_default()
                );
                println!(
                    "TOTP secret (shown once; add it to an authenticator app): {}",
                    v["totp_secret"].as_str().unwrap_or_default()
                );
                println!("{}", v["otpauth_uri"].as_str().unwrap_or_default());
            }
            AdminUserCommand::List => {
                let v = client.get("/admins").await?;
                output::emit(format, &v, |v| {
                    output::rows(
                        v,
                        "",
                        &[
                            col("NAME", "name", Kind::Text, 24),
                            col("ENROLLED", "created_at", Kind::Time, 20),
                        ],
                    )
                })?;
            }
            AdminUserCommand::Remove { name } => {
                client.delete(&format!("/admins/{name}")).await?;
                println!("removed admin `{name}`");
            }
        },
        AdminCommand::Passkey { command } => match command {
            AdminPasskeyCommand::List { admin } => {
                let path = match admin {
                    Some(a) => {
                        format!("/passkeys?{}", serde_urlencoded::to_string([("admin", a)])?)
                    }
                    None => "/passkeys".to_string(),
                };
                let v = client.get(&path).await?;
                output::emit(format, &v, |v| {
                    output::rows(v, "/passkeys", PASSKEY_COLUMNS)
                })?;
            }
            AdminPasskeyCommand::Remove { id } => {
                let v = client.delete(&format!("/passkeys/{id}")).await?;
                println!(
                    "removed passkey `{}` of admin `{}`",
                    v["label"].as_str().unwrap_or_default(),
                    v["admin"].as_str().unwrap_or_default()
                );
            }
        },
        AdminCommand::OauthClient { command } => match command {
            OauthClientCommand::List => {
                let v = client.get("/oauth/clients").await?;
                output::emit(format, &v, |v| {
                    // The table says in a word what `revoked_at` means.
                    let rows: Vec<serde_json::Value> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let mut c = c.clone();
                            c["status"] = json!(if c["revoked_at"].is_null() {
                                "active"
                            } else {
                                "revoked"
                            });
                            c
                        })
                        .collect();
                    output::table(&rows, OAUTH_CLIENT_COLUMNS)
                })?;
            }
            OauthClientCommand::Revoke { client_id } => {
                // A metadata document's client id is a URL: one path segment.
                let segment = portcullis_identity::percent_encode(&client_id);
                client
                    .post(&format!("/oauth/clients/{segment}/revoke"), &json!({}))
                    .await?;
                println!("revoked OAuth client `{client_id}`");
            }
        },
        AdminCommand::Whoami => {
            let v = client.get("/session").await?;
            output::emit(format, &v, output::fields)?;
        }
        AdminCommand::StepUp => {
            let v = client.step_up().await?;
            if v["step_up"].is_null() {
                bail!("the server opened no step-up window");
            }
            output::emit(format, &v, output::fields)?;
        }
        AdminCommand::StepDown => {
            let v = client.delete("/session/step-up").await?;
            output::emit(format, &v, output::fields)?;
        }
    }
    Ok(())
}
